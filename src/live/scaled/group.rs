//! The consumer of a scaled-out instance: one member of `kafka.group_id`
//! reading the input topics (for the router) and both repartition topics
//! (for the stages), with cooperative-sticky assignment and, when
//! `scale.instance_id` is set, static membership, so that a restart
//! within the session timeout moves no partition.
//!
//! It starts each partition at the group's committed offset: the state of
//! a stage partition may be ahead of it (at least once), never behind
//! (its changelog is written before the offsets are committed), and the
//! stage skips what its state has applied. A revoke ends the batch being
//! collected; the partitions are handed over once it is committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tracing::{info, warn};

use crate::config::{Config, StartFrom};
use crate::engine::wire::{RecordKind, RECORD_HEADER};
use crate::metrics::Metrics;

use super::super::consumer_config;
use super::super::events::{classify, CommitFailed, ConsumerError, Rebalance};
use super::super::pipeline::Stop;
use super::super::source::{start_offset, times_list, OFFSETS_FOR_TIMES_TIMEOUT};
use super::super::topology::{Stage, Topology};
use super::super::LiveError;
use super::directory::{advertised, CLIENT_ID_PREFIX};

/// How long reading the group's committed offsets may take.
const GROUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One message, owned, with the kind its `pretext.record` header names
/// (repartition topics only).
#[derive(Debug, Clone)]
pub struct Polled {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub kind: Option<RecordKind>,
}

/// What the rebalance callback leaves for the loop: it runs inside `poll`.
pub struct GroupContext {
    inputs: BTreeSet<String>,
    start_from: StartFrom,
    assigned_flag: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// Set on revoke: the batch being collected ends at once.
    revoked: AtomicBool,
    /// Revoked partitions still ours until the batch is committed.
    pending_revoke: Mutex<Option<TopicPartitionList>>,
    /// Assigned since the loop last asked: their stage partitions are
    /// opened (restored if need be) before anything else is applied.
    assigned: Mutex<Vec<(String, i32)>>,
    /// The assignment was lost (the session expired): under exactly-once
    /// another instance may own it now, so this one stops.
    lost: AtomicBool,
    /// A callback could not go on (no start offset for a partition).
    fatal: Mutex<Option<String>>,
    closing: AtomicBool,
}

impl ClientContext for GroupContext {
    /// Lag per assigned partition (`statistics.interval.ms`): its last
    /// stable offset minus the group's committed offset, the records the
    /// group has yet to apply (the partition's beginning when it has
    /// committed none). Not logged: librdkafka's default would log each.
    fn stats(&self, stats: rdkafka::statistics::Statistics) {
        for (topic, t) in &stats.topics {
            for (&partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition; offsets are -1
                // until a fetch reports them.
                if partition < 0 || !p.desired || p.ls_offset < 0 {
                    continue;
                }
                let from = if p.committed_offset >= 0 {
                    p.committed_offset
                } else {
                    p.lo_offset.max(0)
                };
                self.metrics
                    .consumer_lag
                    .with_label_values(&[topic.as_str(), &partition.to_string()])
                    .set((p.ls_offset - from).max(0));
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if consumer.assignment_lost() {
                    self.lost.store(true, Ordering::Release);
                }
                Rebalance {
                    assigned: false,
                    partitions: tpl.count(),
                    cooperative: true,
                }
                .emit(&self.metrics);
                for e in tpl.elements() {
                    // Soon not ours: no stale lag series.
                    let partition = e.partition().to_string();
                    let lag = &self.metrics.consumer_lag;
                    let _ = lag.remove_label_values(&[e.topic(), &partition]);
                }
                if self.closing.load(Ordering::Acquire) {
                    unassign(consumer, tpl);
                } else if let Ok(mut pending) = self.pending_revoke.lock() {
                    // librdkafka holds the rebalance until the unassign.
                    *pending = Some(tpl.clone());
                    self.revoked.store(true, Ordering::Release);
                    return;
                }
            }
            other => warn!(error = ?other, "rebalance error"),
        }
        update_assigned(consumer, &self.assigned_flag);
    }
}

impl GroupContext {
    /// Input partitions the group has no offset for start where
    /// `kafka.start_from` says; everything else at the committed offset
    /// (or the beginning of an internal topic).
    fn on_assign(&self, consumer: &BaseConsumer<GroupContext>, tpl: &mut TopicPartitionList) {
        if self.start_from != StartFrom::Earliest {
            self.start_new_inputs(consumer, tpl);
        }
        if let Err(e) = consumer.incremental_assign(tpl) {
            warn!(error = %e, "failed to assign partitions");
            return;
        }
        Rebalance {
            assigned: true,
            partitions: tpl.count(),
            cooperative: true,
        }
        .emit(&self.metrics);
        if let Ok(mut assigned) = self.assigned.lock() {
            for e in tpl.elements() {
                assigned.push((e.topic().to_string(), e.partition()));
            }
        }
    }

    /// Input partitions the group has no offset for start at the end
    /// (`latest`) or at the first record stamped at or after the time; if
    /// the broker cannot tell, the instance stops (a guess would skip or
    /// repeat history).
    fn start_new_inputs(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        tpl: &mut TopicPartitionList,
    ) {
        let fresh: Vec<(String, i32)> = match consumer.committed_offsets(tpl.clone(), GROUP_TIMEOUT)
        {
            Ok(committed) => committed
                .elements()
                .iter()
                .filter(|e| !matches!(e.offset(), Offset::Offset(_)))
                .filter(|e| self.inputs.contains(e.topic()))
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect(),
            Err(e) => return self.fail(format!("cannot read the group's offsets: {e}")),
        };
        let found = match self.start_from {
            StartFrom::Time(t) if !fresh.is_empty() => match times_list(&fresh, t) {
                Ok(query) => consumer.offsets_for_times(query, OFFSETS_FOR_TIMES_TIMEOUT),
                Err(e) => Err(e),
            },
            _ => Ok(TopicPartitionList::new()),
        };
        for (topic, partition) in &fresh {
            let offset = match (&self.start_from, &found) {
                (StartFrom::Time(_), Ok(found)) => start_offset(found, topic, *partition),
                (StartFrom::Time(_), Err(_)) => None,
                _ => Some(Offset::End),
            };
            let Some(offset) = offset else {
                return self.fail(format!(
                    "cannot find the offset of {topic}[{partition}] at kafka.start_from"
                ));
            };
            let _ = tpl.set_partition_offset(topic, *partition, offset);
        }
    }

    fn fail(&self, error: String) {
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(error);
        }
    }
}

fn unassign(consumer: &BaseConsumer<GroupContext>, tpl: &TopicPartitionList) {
    if let Err(e) = consumer.incremental_unassign(tpl) {
        warn!(error = %e, "failed to unassign partitions");
    }
}

fn update_assigned(consumer: &BaseConsumer<GroupContext>, flag: &AtomicBool) {
    let any = consumer.assignment().is_ok_and(|a| a.count() > 0);
    flag.store(any, Ordering::Release);
}

/// The instance's group member.
pub struct Group {
    consumer: BaseConsumer<GroupContext>,
    metrics: Arc<Metrics>,
    /// The offsets this member last committed, so that it commits only
    /// what moved.
    committed: BTreeMap<(String, i32), i64>,
}

impl Group {
    pub fn new(
        config: &Config,
        assigned: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Result<Group, LiveError> {
        let mut cc = consumer_config(config, &[("max.partition.fetch.bytes", "8388608")]);
        cc.set("group.id", &config.kafka.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Never an aborted record of a stage, nor one of an open
            // transaction: what the stages read is what was committed.
            .set("isolation.level", "read_committed");
        if !config.scale.instance_id.is_empty() {
            cc.set("group.instance.id", &config.scale.instance_id);
        }
        // The other instances find this one's HTTP server in the group's
        // description (`directory`).
        if let Some(addr) = advertised(config) {
            cc.set("client.id", format!("{CLIENT_ID_PREFIX}{addr}"));
        }
        let context = GroupContext {
            inputs: config.topics.inputs.iter().cloned().collect(),
            start_from: config.kafka.start_from,
            assigned_flag: assigned,
            metrics: metrics.clone(),
            revoked: AtomicBool::new(false),
            pending_revoke: Mutex::new(None),
            assigned: Mutex::new(Vec::new()),
            lost: AtomicBool::new(false),
            fatal: Mutex::new(None),
            closing: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<GroupContext> =
            cc.create_with_context(context)
                .map_err(|source| LiveError::Kafka {
                    what: "create the consumer",
                    source,
                })?;
        let topology = Topology::from_config(config);
        let mut topics: Vec<&str> = config.topics.inputs.iter().map(String::as_str).collect();
        topics.extend(Stage::ALL.map(|s| topology.repartition_topic(s)));
        consumer
            .subscribe(&topics)
            .map_err(|source| LiveError::Kafka {
                what: "subscribe to the input and repartition topics",
                source,
            })?;
        Ok(Group {
            consumer,
            metrics,
            committed: BTreeMap::new(),
        })
    }

    /// Up to `max` messages within `max_wait`; ends early on a revoke or a
    /// stop.
    pub fn next_batch(
        &mut self,
        max: usize,
        max_wait: Duration,
        stop: &Stop,
    ) -> Result<Vec<Polled>, LiveError> {
        let deadline = Instant::now() + max_wait;
        let mut batch = Vec::new();
        while batch.len() < max && !stop.is_requested() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left.min(Duration::from_millis(100))) {
                Some(Ok(m)) => batch.push(polled(&m)),
                Some(Err(e)) => self.on_error(&e),
                None => {}
            }
            self.check_lost()?;
            let context = self.consumer.context();
            if context.revoked.swap(false, Ordering::AcqRel) {
                break;
            }
            // A new partition is opened (restored) before more is read.
            if context.assigned.lock().is_ok_and(|a| !a.is_empty()) {
                break;
            }
        }
        Ok(batch)
    }

    fn on_error(&self, e: &KafkaError) {
        ConsumerError {
            kind: classify(e).0,
            error: e,
        }
        .emit(&self.metrics);
    }

    fn check_lost(&self) -> Result<(), LiveError> {
        let fatal = self
            .consumer
            .context()
            .fatal
            .lock()
            .ok()
            .and_then(|mut f| f.take());
        if let Some(error) = fatal {
            return Err(LiveError::Fatal {
                error,
                fix: "check that the broker answers and kafka.start_from is a time the input \
                      topics can look up"
                    .into(),
            });
        }
        if self.consumer.context().lost.load(Ordering::Acquire) {
            return Err(LiveError::Fatal {
                error: "the consumer lost its partitions: its session expired".into(),
                fix: "another instance may own them now: exiting; a restart rejoins the group \
                      and restores what it is assigned"
                    .into(),
            });
        }
        Ok(())
    }

    /// Partitions assigned since the last call.
    pub fn take_assigned(&self) -> Vec<(String, i32)> {
        let context = self.consumer.context();
        context
            .assigned
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default()
    }

    /// Revoked partitions waiting for the batch to be committed.
    pub fn pending_revoke(&self) -> Vec<(String, i32)> {
        let context = self.consumer.context();
        let pending = context.pending_revoke.lock();
        pending.map_or(Vec::new(), |p| {
            p.as_ref().map_or(Vec::new(), |tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect()
            })
        })
    }

    /// Hands the revoked partitions over (their batch is committed).
    pub fn finish_revoke(&mut self) {
        let context = self.consumer.context();
        let Some(tpl) = context
            .pending_revoke
            .lock()
            .ok()
            .and_then(|mut p| p.take())
        else {
            return;
        };
        unassign(&self.consumer, &tpl);
        update_assigned(&self.consumer, &context.assigned_flag);
        info!(partitions = tpl.count(), "revoked partitions handed over");
    }

    /// At least once: the batch's offsets to the group, once its state and
    /// output are acknowledged. Synchronous: a revoke follows. A commit the
    /// group refuses because it is rebalancing (the member's generation
    /// moved on) is not an error: the state holds the batch, and whoever
    /// reads the partitions next skips what their states applied. Returns
    /// whether the offsets were committed.
    pub fn commit(&self, offsets: &TopicPartitionList) -> Result<bool, LiveError> {
        if offsets.count() == 0 {
            return Ok(true);
        }
        match self.consumer.commit(offsets, CommitMode::Sync) {
            Ok(()) => Ok(true),
            Err(error) if is_rebalancing(&error) => {
                CommitFailed { error: &error }.emit(&self.metrics);
                Ok(false)
            }
            Err(source) => Err(LiveError::Kafka {
                what: "commit offsets",
                source,
            }),
        }
    }

    /// The offsets a batch commits: the next of each partition it read,
    /// or the consumer's position where that is further (past a
    /// transaction's commit marker, which is never handed out: without it
    /// the group would lag by one forever and re-read the marker).
    pub fn offsets_after(
        &self,
        next: &BTreeMap<(String, i32), i64>,
    ) -> Result<TopicPartitionList, LiveError> {
        let mut after = next.clone();
        if let Ok(positions) = self.consumer.position() {
            for e in positions.elements() {
                if let Offset::Offset(at) = e.offset() {
                    let o = after
                        .entry((e.topic().to_string(), e.partition()))
                        .or_insert(at);
                    *o = (*o).max(at);
                }
            }
        }
        // Only what moved: an idle instance commits nothing.
        after.retain(|k, o| self.committed.get(k) != Some(o));
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), &offset) in &after {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(offset))
                .map_err(|source| LiveError::Kafka {
                    what: "list the batch's offsets",
                    source,
                })?;
        }
        Ok(tpl)
    }

    /// These offsets are committed (by the batch's transaction or
    /// `commit`).
    pub fn mark_committed(&mut self, offsets: &TopicPartitionList) {
        for e in offsets.elements() {
            if let Offset::Offset(o) = e.offset() {
                self.committed
                    .insert((e.topic().to_string(), e.partition()), o);
            }
        }
    }

    /// Reads these partitions again from these offsets.
    pub fn rewind(&mut self, to: &BTreeMap<(String, i32), i64>) -> Result<(), LiveError> {
        for ((topic, partition), &offset) in to {
            self.consumer
                .seek(topic, *partition, Offset::Offset(offset), GROUP_TIMEOUT)
                .map_err(|source| LiveError::Kafka {
                    what: "seek back to the batch read again",
                    source,
                })?;
        }
        Ok(())
    }

    /// The offsets this member committed, by partition.
    pub fn committed(&self) -> &BTreeMap<(String, i32), i64> {
        &self.committed
    }

    pub fn group_metadata(&self) -> Option<rdkafka::consumer::ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }
}

impl Group {
    /// Leaves (a static member: only disconnects), waiting at most
    /// `timeout`: librdkafka's close waits for a rebalance in flight to
    /// end, which can take the group's rebalance timeout. Every batch is
    /// committed by then, so an instance may go without waiting: the
    /// consumer then ends with the process.
    pub fn close(self, timeout: Duration) {
        let (closed, waited) = std::sync::mpsc::channel();
        let closing = std::thread::Builder::new()
            .name("pretext-close".into())
            .spawn(move || {
                drop(self);
                let _ = closed.send(());
            });
        if closing.is_ok() && waited.recv_timeout(timeout).is_err() {
            warn!(
                ?timeout,
                "the consumer did not close in time (a rebalance in flight): leaving it"
            );
        }
    }
}

impl Drop for Group {
    /// Closing revokes what is assigned: unassigned at once from now on.
    fn drop(&mut self) {
        self.consumer
            .context()
            .closing
            .store(true, Ordering::Release);
        self.finish_revoke();
    }
}

/// The group refused a commit because it is rebalancing.
fn is_rebalancing(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{
        IllegalGeneration, RebalanceInProgress, UnknownMemberId,
    };
    matches!(
        e.rdkafka_error_code(),
        Some(IllegalGeneration | RebalanceInProgress | UnknownMemberId)
    )
}

fn polled(m: &rdkafka::message::BorrowedMessage<'_>) -> Polled {
    let kind = m.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == RECORD_HEADER)
            .and_then(|h| h.value.and_then(RecordKind::from_header))
    });
    Polled {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        kind,
    }
}
