//! The Kafka side of input: a consumer in the group, seeking to the offsets
//! stored with the state, handing out owned messages in bounded batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tracing::{info, warn};

use crate::config::Config;
use crate::engine::SourceOffset;
use crate::metrics::Metrics;

use super::LiveError;

/// The next offset to read per (topic, partition): what the state holds.
pub type Positions = Arc<Mutex<HashMap<(String, i32), i64>>>;

/// One input message, owned: library types stay at the edge.
#[derive(Debug, Clone)]
pub struct InputMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Rebalance and statistics callbacks. They run inside `poll`, on the
/// pipeline's own thread, so they are short and only touch shared state.
pub struct SourceContext {
    positions: Positions,
    assigned: Arc<AtomicBool>,
    /// Set on revoke: the pipeline ends the batch it is collecting at once.
    revoked: AtomicBool,
    /// Revoked partitions still assigned until the batch that was being
    /// collected is committed (`Source::finish_revoke`).
    pending_revoke: Mutex<Option<TopicPartitionList>>,
    /// Set while the consumer closes: nothing is left to finish, so a revoke
    /// is unassigned at once (closing waits for it).
    closing: AtomicBool,
    metrics: Arc<Metrics>,
}

impl ClientContext for SourceContext {
    /// Lag per assigned partition: the partition's end (high watermark)
    /// minus the next offset stored with the state, so it counts what is
    /// not yet committed where it matters (Kafka's committed offsets are
    /// for monitoring and may trail).
    fn stats(&self, stats: Statistics) {
        let Ok(positions) = self.positions.lock() else {
            return;
        };
        for (topic, t) in &stats.topics {
            for (&partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition; `desired` marks the
                // assigned ones; offsets are -1 until a fetch reports them.
                if partition < 0 || !p.desired || p.hi_offset < 0 {
                    continue;
                }
                let lag = match positions.get(&(topic.clone(), partition)) {
                    Some(&next) => p.hi_offset - next,
                    None if p.lo_offset >= 0 => p.hi_offset - p.lo_offset,
                    None => continue,
                };
                self.metrics
                    .consumer_lag
                    .with_label_values(&[topic.as_str(), &partition.to_string()])
                    .set(lag.max(0));
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    /// Assigns at the offsets stored with the state (so input is applied
    /// exactly once across restarts, whatever Kafka's committed offsets say),
    /// or at the beginning of a partition the state has never read. Both
    /// rebalance protocols work: `partition.assignment.strategy` may be set
    /// to `cooperative-sticky` through `kafka.client`, and then changes go
    /// through the incremental calls (librdkafka refuses the eager ones).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.start_at_stored_offsets(tpl);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match assigned {
                    Ok(()) => info!(partitions = tpl.count(), cooperative, "partitions assigned"),
                    Err(e) => warn!(error = %e, "failed to assign partitions"),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                info!(partitions = tpl.count(), cooperative, "partitions revoked");
                for e in tpl.elements() {
                    let partition = e.partition().to_string();
                    // Soon not ours: no stale lag series.
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[e.topic(), &partition]);
                }
                if self.closing.load(Ordering::Acquire) {
                    self.unassign(consumer, tpl);
                } else if let Ok(mut pending) = self.pending_revoke.lock() {
                    // librdkafka holds the rebalance until the unassign
                    // call, so the pipeline ends the batch it is collecting,
                    // commits it while the partitions are still ours, and
                    // only then hands them over (`Source::finish_revoke`).
                    *pending = Some(tpl.clone());
                    self.revoked.store(true, Ordering::Release);
                    return;
                }
            }
            other => warn!(error = ?other, "rebalance error"),
        }
        self.update_assigned(consumer);
    }
}

impl SourceContext {
    fn unassign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let unassigned = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = unassigned {
            warn!(error = %e, "failed to unassign partitions");
        }
    }

    /// Ready while any partition is ours; an empty assignment is not.
    fn update_assigned(&self, consumer: &BaseConsumer<Self>) {
        let any = consumer.assignment().is_ok_and(|a| a.count() > 0);
        self.assigned.store(any, Ordering::Release);
    }

    fn start_at_stored_offsets(&self, tpl: &mut TopicPartitionList) {
        let Ok(positions) = self.positions.lock() else {
            return;
        };
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        for (topic, partition) in parts {
            let offset = match positions.get(&(topic.clone(), partition)) {
                Some(&next) => Offset::Offset(next),
                None => Offset::Beginning,
            };
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                warn!(error = %e, partition, "cannot set the start offset");
            }
        }
    }
}

pub struct Source {
    consumer: BaseConsumer<SourceContext>,
}

impl Source {
    pub fn new(
        config: &Config,
        positions: Positions,
        assigned: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Result<Source, LiveError> {
        let mut cc = ClientConfig::new();
        // Pass-through settings first: the ones below keep us safe and win.
        for (k, v) in &config.kafka.client {
            cc.set(k, v);
        }
        cc.set("bootstrap.servers", &config.kafka.brokers)
            .set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        if !config.kafka.client.contains_key("statistics.interval.ms") {
            cc.set("statistics.interval.ms", "5000");
        }
        let context = SourceContext {
            positions,
            assigned,
            revoked: AtomicBool::new(false),
            pending_revoke: Mutex::new(None),
            closing: AtomicBool::new(false),
            metrics,
        };
        let consumer: BaseConsumer<SourceContext> =
            cc.create_with_context(context)
                .map_err(|source| LiveError::Kafka {
                    what: "create the consumer",
                    source,
                })?;
        let topics: Vec<&str> = config.topics.inputs.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| LiveError::Kafka {
                what: "subscribe to the input topics",
                source,
            })?;
        Ok(Source { consumer })
    }

    /// Up to `max` messages, within `max_wait` of the call. Ends early on a
    /// revoke (so the batch is committed before more is read) or a stop.
    pub fn next_batch(
        &self,
        max: usize,
        max_wait: Duration,
        stop: &AtomicBool,
    ) -> Vec<InputMessage> {
        let deadline = Instant::now() + max_wait;
        let mut batch = Vec::new();
        while batch.len() < max && !stop.load(Ordering::Acquire) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left.min(Duration::from_millis(100))) {
                Some(Ok(m)) => batch.push(InputMessage {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                }),
                Some(Err(e)) => warn!(error = %e, "consumer error"),
                None => {}
            }
            if self
                .consumer
                .context()
                .revoked
                .swap(false, Ordering::AcqRel)
            {
                break;
            }
        }
        batch
    }

    /// Commits the offsets to Kafka too, asynchronously: for lag monitoring
    /// only; the offsets that count are stored with the state.
    pub fn commit_to_kafka(&self, offsets: &[SourceOffset], mode: CommitMode) {
        // An empty list must not reach librdkafka (rust-rdkafka #681).
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for o in offsets {
            if let Err(e) =
                tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.next_offset))
            {
                warn!(error = %e, "cannot build the offset commit");
                return;
            }
        }
        match self.consumer.commit(&tpl, mode) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => warn!(error = %e, "failed to commit offsets to kafka"),
        }
    }
}

impl Source {
    /// Hands over partitions revoked while a batch was being collected, now
    /// that it is committed to the state: first their offsets go to Kafka,
    /// synchronously, while the partitions are still ours, then they are
    /// unassigned and the rebalance goes on.
    pub fn finish_revoke(&self) {
        let context = self.consumer.context();
        let Some(tpl) = context
            .pending_revoke
            .lock()
            .ok()
            .and_then(|mut p| p.take())
        else {
            return;
        };
        let offsets: Vec<SourceOffset> = match context.positions.lock() {
            Ok(positions) => tpl
                .elements()
                .iter()
                .filter_map(|e| {
                    let key = (e.topic().to_string(), e.partition());
                    positions.get(&key).map(|&next_offset| SourceOffset {
                        topic: key.0,
                        partition: key.1,
                        next_offset,
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        self.commit_to_kafka(&offsets, CommitMode::Sync);
        context.unassign(&self.consumer, &tpl);
        context.update_assigned(&self.consumer);
        info!(partitions = tpl.count(), "revoked partitions handed over");
    }
}

impl Drop for Source {
    /// Closing the consumer (when it drops) revokes what is assigned and
    /// waits for the unassign: from now on revokes are unassigned at once,
    /// and one still pending (an error ended the pipeline) is done now.
    fn drop(&mut self) {
        let context = self.consumer.context();
        context.closing.store(true, Ordering::Release);
        if let Some(tpl) = context
            .pending_revoke
            .lock()
            .ok()
            .and_then(|mut p| p.take())
        {
            context.unassign(&self.consumer, &tpl);
        }
    }
}
