//! The Kafka side of output: an idempotent producer for triggers and dead
//! letters, bounded in flight, every message of a batch acknowledged before
//! the batch's offsets are stored (counted per batch, so one batch is
//! acknowledged while the next is applied). With `kafka.exactly_once` it is
//! a transactional producer: a batch's output and input offsets are
//! committed in one transaction (see `txn`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::Metrics;

use super::events::DeliveryFailed;
use super::pipeline::{Acknowledgement, Output, Stop};
use super::producer_config;
use super::txn::{GroupMetadata, TxnOffset};
use super::LiveError;

/// How long a batch's output may take to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a flush sleeps when a poll served no delivery report.
const FLUSH_POLL: Duration = Duration::from_millis(1);
/// How long the transactional calls may take: finding the coordinator and
/// fencing the previous producer of the id (init), committing (which
/// flushes the batch's output first).
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// Retriable commit errors (a coordinator moving) are retried this often.
const COMMIT_ATTEMPTS: u32 = 5;

/// Producer settings of pretext's choosing that `kafka.producer` may
/// override. After a broker restart a librdkafka producer can keep a stale
/// partition leader (logged as "new leader-1 not found in cache") until its
/// next periodic metadata refresh, 5 minutes by default (librdkafka issues
/// #3009, #4976), while a batch waits at most 2 minutes for its
/// acknowledgements: seen once in the broker-restart fault test under
/// load. A refresh every 30 s keeps such a stall well inside that wait.
const PRODUCER_DEFAULTS: [(&str, &str); 1] = [("topic.metadata.refresh.interval.ms", "30000")];

pub struct SinkContext {
    ledger: Ledger,
    metrics: Arc<Metrics>,
}

/// Per output batch (numbered by the sink): messages sent and not yet
/// acknowledged, and those that failed. The delivery callback runs on
/// whichever thread polls the producer.
#[derive(Default)]
struct Ledger {
    tallies: Mutex<BTreeMap<u64, Tally>>,
    /// Delivery reports served so far: whether a poll served any.
    reports: AtomicU64,
}

#[derive(Default)]
struct Tally {
    outstanding: u64,
    failed: u64,
}

impl Ledger {
    fn tallies(&self) -> MutexGuard<'_, BTreeMap<u64, Tally>> {
        // A panic elsewhere cannot leave a tally half-updated.
        self.tallies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sent(&self, batch: u64) {
        self.tallies().entry(batch).or_default().outstanding += 1;
    }

    /// A message counted by `sent` that the producer refused.
    fn unsent(&self, batch: u64) {
        self.delivered(batch, true);
    }

    fn delivered(&self, batch: u64, ok: bool) {
        self.reports.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.tallies().get_mut(&batch) {
            t.outstanding = t.outstanding.saturating_sub(1);
            t.failed += u64::from(!ok);
        }
    }

    /// `None` while messages of `batch` are outstanding; then how many
    /// failed, and the batch is forgotten.
    fn settled(&self, batch: u64) -> Option<u64> {
        let mut tallies = self.tallies();
        match tallies.get(&batch) {
            None => Some(0),
            Some(t) if t.outstanding == 0 => tallies.remove(&batch).map(|t| t.failed),
            Some(_) => None,
        }
    }

    /// Exactly-once accounts by transaction: what an earlier one left is
    /// the transaction's business.
    fn forget_all(&self) {
        self.tallies().clear();
    }
}

impl ClientContext for SinkContext {
    /// The consumer reports lag; the producer's statistics (enabled when
    /// `statistics.interval.ms` is passed through) are not logged.
    fn stats(&self, _: rdkafka::statistics::Statistics) {}
}

impl ProducerContext for SinkContext {
    /// The number of the message's batch.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: usize) {
        self.ledger.delivered(batch as u64, result.is_ok());
        if let Err((error, m)) = result {
            DeliveryFailed {
                topic: m.topic(),
                error,
            }
            .emit(&self.metrics);
        }
    }
}

/// The Kafka producer as the pipeline's `Output`.
pub struct Sink {
    /// Shared with the acknowledgements, which poll it for delivery
    /// reports on the state writer's thread.
    producer: Arc<BaseProducer<SinkContext>>,
    /// Waiting for room or acknowledgements ends when the stop is
    /// abandoned (the shutdown deadline passed).
    stop: Arc<Stop>,
    /// The transactional id, under exactly-once.
    transactional_id: Option<String>,
    /// The number of the batch being sent.
    batch: u64,
}

impl Sink {
    pub fn new(config: &Config, metrics: Arc<Metrics>, stop: Arc<Stop>) -> Result<Sink, LiveError> {
        let mut cc = producer_config(config, &PRODUCER_DEFAULTS);
        cc.set("enable.idempotence", "true").set("acks", "all").set(
            "queue.buffering.max.messages",
            config.kafka.producer_max_in_flight.to_string(),
        );
        let context = SinkContext {
            ledger: Ledger::default(),
            metrics,
        };
        let transactional_id = config
            .kafka
            .exactly_once
            .then(|| config.kafka.transactional_id());
        if let Some(id) = &transactional_id {
            cc.set("transactional.id", id);
        }
        let producer: BaseProducer<SinkContext> =
            cc.create_with_context(context)
                .map_err(|source| LiveError::Kafka {
                    what: "create the producer",
                    source,
                })?;
        let sink = Sink {
            producer: Arc::new(producer),
            stop,
            transactional_id,
            batch: 0,
        };
        if let Some(id) = &sink.transactional_id {
            // Fences any earlier producer of the id (a previous run, a
            // zombie) and aborts the transaction it left open.
            sink.producer
                .init_transactions(TXN_TIMEOUT)
                .map_err(|e| sink.txn_error("initialize transactions", e))?;
            info!(transactional_id = %id, "transactional producer ready");
        }
        Ok(sink)
    }

    /// Serves delivery reports until every queued message is acknowledged
    /// (or failed), the stop is abandoned, or the flush timeout passes.
    fn wait_acknowledged(&self) -> Result<(), LiveError> {
        serve_reports(&self.producer, &self.stop, || {
            (self.producer.in_flight_count() == 0).then_some(())
        })
    }

    /// A transactional call failed: fenced (another producer took the id:
    /// fatal), or anything else, after which the transaction is aborted so
    /// nothing of it ever becomes visible.
    fn txn_error(&self, what: &'static str, source: KafkaError) -> LiveError {
        let id = self.transactional_id.clone().unwrap_or_default();
        if is_fenced(&source) {
            return LiveError::Fenced {
                transactional_id: id,
                source,
            };
        }
        let fatal = matches!(&source, KafkaError::Transaction(e) if e.is_fatal());
        if !fatal {
            if let Err(e) = self.producer.abort_transaction(TXN_TIMEOUT) {
                warn!(error = %e, "failed to abort the transaction");
                if is_fenced(&e) {
                    return LiveError::Fenced {
                        transactional_id: id,
                        source: e,
                    };
                }
            }
        }
        LiveError::TxnAborted { what, source }
    }

    fn commit_with_retries(&self) -> Result<(), KafkaError> {
        let mut attempt = 1;
        loop {
            match self.producer.commit_transaction(TXN_TIMEOUT) {
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && !e.txn_requires_abort() && attempt < COMMIT_ATTEMPTS =>
                {
                    warn!(error = %e, attempt, "retrying the transaction commit");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Polls the producer for delivery reports until `done` says so, the stop
/// is abandoned, or the flush timeout passes. Short polls: between its
/// checks `BaseProducer::flush` polls for up to 100 ms, and its last poll
/// often waits that long after the last acknowledgement (a tenth of a
/// second per batch, measured).
fn serve_reports<T>(
    producer: &BaseProducer<SinkContext>,
    stop: &Stop,
    mut done: impl FnMut() -> Option<T>,
) -> Result<T, LiveError> {
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    loop {
        if let Some(t) = done() {
            return Ok(t);
        }
        if stop.is_abandoned() {
            return Err(LiveError::Abandoned);
        }
        if Instant::now() >= deadline {
            return Err(LiveError::Kafka {
                what: "flush the producer",
                source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
            });
        }
        // rust-rdkafka's `poll(timeout)` keeps polling until the timeout
        // ends and, below a millisecond left, does so without blocking:
        // a busy wait of up to 1 ms per call, which took a few percent of
        // a core while batches were acknowledged. One non-blocking poll,
        // again at once while it serves reports, else a real sleep.
        let served = producer.context().ledger.reports.load(Ordering::Relaxed);
        producer.poll(Duration::ZERO);
        if producer.context().ledger.reports.load(Ordering::Relaxed) == served {
            std::thread::sleep(FLUSH_POLL);
        }
    }
}

/// One batch's output, acknowledged once the ledger has no message of it
/// outstanding.
struct SinkAck {
    producer: Arc<BaseProducer<SinkContext>>,
    stop: Arc<Stop>,
    batch: u64,
}

impl Acknowledgement for SinkAck {
    /// An error if any message of the batch failed, so its offsets are not
    /// stored and it is read again.
    fn wait(self: Box<Self>) -> Result<(), LiveError> {
        let ledger = &self.producer.context().ledger;
        match serve_reports(&self.producer, &self.stop, || ledger.settled(self.batch))? {
            0 => Ok(()),
            failed => Err(LiveError::Delivery { failed }),
        }
    }
}

/// Whether the producer was fenced: another producer initialized the same
/// transactional id (librdkafka reports `_FENCED`, the broker
/// `PRODUCER_FENCED` or `INVALID_PRODUCER_EPOCH`).
fn is_fenced(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::{Fenced, InvalidProducerEpoch, ProducerFenced};
    matches!(
        e.rdkafka_error_code(),
        Some(Fenced | ProducerFenced | InvalidProducerEpoch)
    )
}

fn offsets_list(offsets: &[TxnOffset]) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for o in offsets {
        let o_ = &o.offset;
        tpl.add_partition_offset(&o_.topic, o_.partition, Offset::Offset(o_.next_offset))?;
        if let Some(mut e) = tpl.find_partition(&o_.topic, o_.partition) {
            e.set_metadata(o.record.encode());
        }
    }
    Ok(tpl)
}

impl Output for Sink {
    /// Queues one message; when the in-flight bound is reached, serves
    /// delivery reports until there is room (or the stop is abandoned).
    fn send(&mut self, topic: &str, key: Option<&[u8]>, payload: &[u8]) -> Result<(), LiveError> {
        let ledger = &self.producer.context().ledger;
        // Counted first: its report may be served before `send` returns.
        ledger.sent(self.batch);
        loop {
            let mut record =
                BaseRecord::with_opaque_to(topic, self.batch as usize).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            let refused = match self.producer.send::<[u8], [u8]>(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if !self.stop.is_abandoned() =>
                {
                    self.producer.poll(Duration::from_millis(50));
                    continue;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    LiveError::Abandoned
                }
                Err((source, _)) => LiveError::Produce {
                    topic: topic.to_string(),
                    source,
                },
            };
            ledger.unsent(self.batch);
            return Err(refused);
        }
    }

    fn seal(&mut self) -> Box<dyn Acknowledgement> {
        let ack = SinkAck {
            producer: Arc::clone(&self.producer),
            stop: Arc::clone(&self.stop),
            batch: self.batch,
        };
        self.batch += 1;
        Box::new(ack)
    }

    fn begin(&mut self) -> Result<(), LiveError> {
        self.producer.context().ledger.forget_all();
        self.producer
            .begin_transaction()
            .map_err(|e| self.txn_error("begin a transaction", e))
    }

    /// The offsets (with their records) under the group's metadata, then
    /// the commit, which flushes the batch's output first. A failed
    /// delivery fails the commit, which aborts the transaction.
    fn commit_txn(
        &mut self,
        offsets: &[TxnOffset],
        group: Option<&GroupMetadata>,
    ) -> Result<(), LiveError> {
        // An empty list must not reach librdkafka (it is an error there).
        if !offsets.is_empty() {
            let Some(group) = group else {
                self.abort_txn();
                return Err(LiveError::Fatal {
                    error: "the consumer has no group metadata to commit the batch's offsets under"
                        .into(),
                    fix: "a bug: please report it; nothing of the batch is visible".into(),
                });
            };
            let tpl = offsets_list(offsets).map_err(|e| self.txn_error("list the offsets", e))?;
            self.producer
                .send_offsets_to_transaction(&tpl, &group.0, TXN_TIMEOUT)
                .map_err(|e| self.txn_error("send the offsets to the transaction", e))?;
        }
        // Acknowledged first with short polls: the commit's own flush polls
        // 100 ms at a time, a tenth of a second per batch (measured:
        // BENCHMARKS.md). A failed delivery then fails the commit.
        if let Err(e) = self.wait_acknowledged() {
            self.abort_txn();
            return Err(e);
        }
        self.commit_with_retries()
            .map_err(|e| self.txn_error("commit the transaction", e))
    }

    fn abort_txn(&mut self) {
        if let Err(e) = self.producer.abort_transaction(TXN_TIMEOUT) {
            warn!(error = %e, "failed to abort the transaction");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ledger;

    #[test]
    fn a_batch_settles_once_its_own_messages_are_reported() {
        let ledger = Ledger::default();
        ledger.sent(0);
        ledger.sent(0);
        ledger.sent(1);
        assert_eq!(ledger.settled(0), None, "two outstanding");
        // Reports come in any order across batches.
        ledger.delivered(1, true);
        assert_eq!(ledger.settled(1), Some(0), "batch 1 is done");
        ledger.delivered(0, false);
        assert_eq!(ledger.settled(0), None);
        ledger.delivered(0, true);
        assert_eq!(ledger.settled(0), Some(1), "one of batch 0 failed");
        assert_eq!(ledger.settled(0), Some(0), "then forgotten");
        assert_eq!(
            ledger.settled(7),
            Some(0),
            "nothing sent: nothing to wait for"
        );
    }

    #[test]
    fn refused_messages_and_late_reports_do_not_count() {
        let ledger = Ledger::default();
        ledger.sent(3);
        ledger.unsent(3);
        assert_eq!(ledger.settled(3), Some(0), "refused by the producer");
        ledger.sent(4);
        ledger.forget_all();
        ledger.delivered(4, false);
        assert_eq!(ledger.settled(4), Some(0), "a report after forget_all");
    }
}
