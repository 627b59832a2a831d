//! The producer of a scaled-out instance: one for everything a batch
//! writes (routed events, the stages' records to each other, changelog
//! writes, triggers, conversions, dead letters). Under `kafka.exactly_once`
//! it is transactional and a batch is one transaction with the input
//! offsets; otherwise it is idempotent and a batch ends with every message
//! acknowledged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::ClientContext;
use tracing::{info, warn};

use crate::config::Config;
use crate::engine::wire::{RecordKind, RECORD_HEADER};
use crate::metrics::Metrics;

use super::super::changelog::enqueue;
use super::super::events::DeliveryFailed;
use super::super::producer_config;
use super::super::LiveError;

/// How long a transactional call or a batch's acknowledgement may take.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at aborting a transaction (librdkafka lets a timed-out abort
/// be called again).
const ABORT_ATTEMPTS: u32 = 3;

/// Delivery reports: the first failure, and the offset after the last
/// record delivered to each partition (the changelogs' checkpoints).
/// Every failure is counted, as a single instance's are.
pub struct Reports {
    failed: Mutex<Option<(String, KafkaError)>>,
    next: Mutex<BTreeMap<(String, i32), i64>>,
    metrics: Arc<Metrics>,
}

impl ClientContext for Reports {
    /// Statistics are not logged (librdkafka's default logs each at info).
    fn stats(&self, _: rdkafka::statistics::Statistics) {}
}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                if let Ok(mut next) = self.next.lock() {
                    let at = next
                        .entry((m.topic().to_string(), m.partition()))
                        .or_default();
                    *at = (*at).max(m.offset() + 1);
                }
            }
            Err((e, m)) => {
                DeliveryFailed {
                    topic: m.topic(),
                    error: e,
                }
                .emit(&self.metrics);
                if let Ok(mut failed) = self.failed.lock() {
                    failed.get_or_insert_with(|| (m.topic().to_string(), e.clone()));
                }
            }
        }
    }
}

pub struct ScaledProducer {
    producer: BaseProducer<Reports>,
    transactional_id: Option<String>,
    in_txn: bool,
    /// Fault injection for tests (`PRETEXT_ABORT_TXN_EVERY=N`): every Nth
    /// transaction is aborted instead of committed, as a rebalance under
    /// it would have it.
    abort_every: Option<u64>,
    txns: u64,
}

impl ScaledProducer {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<ScaledProducer, LiveError> {
        let mut cc = producer_config(config, &[("linger.ms", "5")]);
        cc.set("enable.idempotence", "true").set("acks", "all").set(
            "queue.buffering.max.messages",
            config.kafka.producer_max_in_flight.to_string(),
        );
        let transactional_id = config.kafka.exactly_once.then(|| transactional_id(config));
        if let Some(id) = &transactional_id {
            cc.set("transactional.id", id);
        }
        let producer: BaseProducer<Reports> = cc
            .create_with_context(Reports {
                failed: Mutex::default(),
                next: Mutex::default(),
                metrics,
            })
            .map_err(|source| LiveError::Kafka {
                what: "create the producer",
                source,
            })?;
        let p = ScaledProducer {
            producer,
            transactional_id,
            in_txn: false,
            abort_every: std::env::var("PRETEXT_ABORT_TXN_EVERY")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0),
            txns: 0,
        };
        if let Some(id) = &p.transactional_id {
            // Fences an earlier run of this instance and aborts what it
            // left open, so its partitions' next owner reads past it.
            p.producer
                .init_transactions(TIMEOUT)
                .map_err(|e| p.txn_error("initialize transactions", e))?;
            info!(transactional_id = %id, "transactional producer ready");
        }
        Ok(p)
    }

    /// Queues one message (in the batch's transaction, opened by the first
    /// message).
    pub fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        kind: Option<RecordKind>,
    ) -> Result<(), LiveError> {
        self.begin()?;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = payload {
            record = record.payload(v);
        }
        if let Some(kind) = kind {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: RECORD_HEADER,
                value: Some(kind.as_str()),
            }));
        }
        enqueue(&self.producer, record).map_err(|source| LiveError::Produce {
            topic: topic.to_string(),
            source,
        })
    }

    /// Drops what the delivery reports say of an aborted batch (its
    /// messages are reported failed once purged).
    pub fn discard_reports(&mut self) {
        self.producer.poll(Duration::ZERO);
        let reports = self.producer.context();
        if let Ok(mut failed) = reports.failed.lock() {
            failed.take();
        }
        if let Ok(mut next) = reports.next.lock() {
            next.clear();
        }
    }

    /// Exactly-once: opens the batch's transaction if it is not open.
    pub fn begin(&mut self) -> Result<(), LiveError> {
        if self.transactional_id.is_none() || self.in_txn {
            return Ok(());
        }
        self.producer
            .begin_transaction()
            .map_err(|e| self.txn_error("begin a transaction", e))?;
        self.in_txn = true;
        Ok(())
    }

    /// Ends a batch: commits its transaction with the input `offsets`
    /// (exactly-once), or waits for every message's acknowledgement.
    /// Returns the offset after the last record delivered to each
    /// partition written.
    pub fn finish(
        &mut self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<BTreeMap<(String, i32), i64>, LiveError> {
        if self.transactional_id.is_some() {
            self.commit_txn(offsets, group)?;
        } else {
            self.producer
                .flush(TIMEOUT)
                .map_err(|source| LiveError::Kafka {
                    what: "flush the producer",
                    source,
                })?;
        }
        // Reports of a committed transaction are all in: commit flushes.
        self.producer.poll(Duration::ZERO);
        let failed = self.producer.context().failed.lock().map(|mut f| f.take());
        if let Some((topic, source)) = failed.unwrap_or_else(|p| p.into_inner().take()) {
            return Err(LiveError::Produce { topic, source });
        }
        let next = self
            .producer
            .context()
            .next
            .lock()
            .map(|mut n| std::mem::take(&mut *n));
        Ok(next.unwrap_or_else(|p| std::mem::take(&mut *p.into_inner())))
    }

    fn commit_txn(
        &mut self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), LiveError> {
        if offsets.count() > 0 {
            self.begin()?;
        }
        if !self.in_txn {
            return Ok(());
        }
        self.txns += 1;
        if self.abort_every.is_some_and(|n| self.txns % n == 0) {
            warn!(
                transactions = self.txns,
                "PRETEXT_ABORT_TXN_EVERY: aborting the transaction"
            );
            self.in_txn = false;
            let what = "commit the transaction (PRETEXT_ABORT_TXN_EVERY)";
            return Err(self.txn_error(what, KafkaError::Canceled));
        }
        // Committed, or aborted by `txn_error`: closed either way.
        let ended = self.end_txn(offsets, group);
        self.in_txn = false;
        ended
    }

    fn end_txn(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), LiveError> {
        if offsets.count() > 0 {
            let group = group.ok_or_else(|| LiveError::Fatal {
                error: "the consumer has no group metadata to commit offsets under".into(),
                fix: "check the consumer joined its group".into(),
            })?;
            self.producer
                .send_offsets_to_transaction(offsets, group, TIMEOUT)
                .map_err(|e| self.txn_error("add the offsets to the transaction", e))?;
        }
        self.producer
            .commit_transaction(TIMEOUT)
            .map_err(|e| self.txn_error("commit the transaction", e))
    }

    /// A transactional call failed: fenced (the instance stops), or anything
    /// else, after which the transaction is aborted and its batch read
    /// again (nothing of it became visible).
    fn txn_error(&self, what: &'static str, source: KafkaError) -> LiveError {
        let id = self.transactional_id.clone().unwrap_or_default();
        let fenced = matches!(
            source.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        );
        if fenced {
            return LiveError::Fenced {
                transactional_id: id,
                source,
            };
        }
        if matches!(&source, KafkaError::Transaction(e) if e.is_fatal()) {
            // The producer cannot go on: the instance stops.
            return LiveError::Kafka { what, source };
        }
        // Aborting waits for the messages in flight, whose delivery reports
        // must be served meanwhile: librdkafka's abort does not.
        let _ = self.producer.flush(TIMEOUT);
        for attempt in 1..=ABORT_ATTEMPTS {
            match self.producer.abort_transaction(TIMEOUT) {
                Ok(()) => break,
                Err(e) => warn!(error = %e, attempt, "failed to abort the transaction"),
            }
        }
        LiveError::TxnAborted { what, source }
    }
}

/// `<group_id>.<member>`: the member is `scale.instance_id` (each instance
/// its own, stable across restarts), else `kafka.instance_id`.
pub fn transactional_id(config: &Config) -> String {
    match config.scale.instance_id.trim() {
        "" => config.kafka.transactional_id(),
        member => format!("{}.{member}", config.kafka.group_id),
    }
}
