//! The Kafka side of input: a consumer in the group, seeking to the offsets
//! stored with the state (or, for a partition the state has never read, to
//! where `kafka.start_from` says), handing out owned messages in bounded
//! batches. Consumer errors are classified: fatal ones end the pipeline,
//! transient ones are counted and logged rate-limited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tracing::{info, warn};

use crate::config::{Config, StartFrom};
use crate::engine::SourceOffset;
use crate::metrics::{KafkaErrorKind, Metrics};

use super::consumer_config;
use super::events::{classify, CommitFailed, ConsumerError, ConsumerFatal, Rebalance};
use super::offsets::{Offsets, OffsetsView};
use super::pipeline::{BatchSource, Stop};
use super::txn::{GroupMetadata, GroupPosition, TxnRecord};
use super::LiveError;

/// How long the start of a new partition may wait for offsets-for-times.
pub(super) const OFFSETS_FOR_TIMES_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a metadata request (to tell which input topic is unknown) may
/// take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an input topic may be missing before that is fatal: time for
/// a deployment that creates its topics beside pretext to do so.
const UNKNOWN_TOPIC_GRACE: Duration = Duration::from_secs(30);
/// How long reading the group's committed offsets (exactly-once, on
/// assignment) or seeking may take.
const GROUP_TIMEOUT: Duration = Duration::from_secs(30);
const START_FROM_FIX: &str =
    "check that the broker answers and kafka.start_from is a time the input topics can look up";

/// Consumer settings of pretext's choosing that `kafka.consumer` may
/// override. Statistics feed the lag gauge. The fetcher keeps ahead of the
/// pipeline: fetches of up to 8 MiB per partition (librdkafka's default is
/// 1 MiB, ~4,000 events) and a prefetch of up to a million messages
/// (default 100,000), both still bounded by `queued.max.messages.kbytes`
/// (64 MiB): with librdkafka's defaults the fetcher fell behind on a busy
/// broker and batches ended on `batch_max_wait` part full (BENCHMARKS.md,
/// "Live mode").
const CONSUMER_DEFAULTS: [(&str, &str); 3] = [
    ("statistics.interval.ms", "5000"),
    ("max.partition.fetch.bytes", "8388608"),
    ("queued.min.messages", "1000000"),
];

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
    positions: OffsetsView,
    start_from: StartFrom,
    /// A callback found it cannot go on (no start offset for a partition):
    /// the pipeline stops with this.
    fatal: Mutex<Option<(String, &'static str)>>,
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
    /// `kafka.exactly_once`: assignments read the group's committed offsets.
    eos: bool,
    /// Exactly-once: the group's positions of the partitions assigned since
    /// the pipeline last took them.
    group_positions: Mutex<Vec<GroupPosition>>,
}

impl ClientContext for SourceContext {
    /// Lag per assigned partition: the partition's end (high watermark)
    /// minus the next offset stored with the state, so it counts what is
    /// not yet committed where it matters (Kafka's committed offsets are
    /// for monitoring and may trail).
    fn stats(&self, stats: Statistics) {
        let positions = &self.positions;
        for (topic, t) in &stats.topics {
            for (&partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition; `desired` marks the
                // assigned ones; offsets are -1 until a fetch reports them.
                if partition < 0 || !p.desired || p.hi_offset < 0 {
                    continue;
                }
                let lag = match positions.next(topic, partition) {
                    Some(next) => p.hi_offset - next,
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
                self.on_assign(consumer, tpl, cooperative)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if !self.on_revoke(consumer, tpl, cooperative) {
                    return;
                }
            }
            other => warn!(error = ?other, "rebalance error"),
        }
        self.update_assigned(consumer);
    }
}

impl SourceContext {
    /// Positions the assigned partitions (see `rebalance`) and takes them.
    fn on_assign(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        tpl: &mut TopicPartitionList,
        cooperative: bool,
    ) {
        let group = self.read_group_positions(consumer, tpl);
        self.set_start_offsets(consumer, tpl, &group);
        if let Ok(mut positions) = self.group_positions.lock() {
            positions.extend(group);
        }
        let assigned = if cooperative {
            consumer.incremental_assign(tpl)
        } else {
            consumer.assign(tpl)
        };
        match assigned {
            Ok(()) => Rebalance {
                assigned: true,
                partitions: tpl.count(),
                cooperative,
            }
            .emit(&self.metrics),
            Err(e) => warn!(error = %e, "failed to assign partitions"),
        }
    }

    /// Gives the revoked partitions up, or leaves them to the pipeline to
    /// hand over after its batch (returns false then).
    fn on_revoke(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        tpl: &TopicPartitionList,
        cooperative: bool,
    ) -> bool {
        if self.eos && consumer.assignment_lost() {
            // Another member may own them now and have fenced this
            // producer; an idle process would never find out.
            self.set_fatal(
                "the consumer lost its partitions: its session expired (the process was \
                 paused, or cut off from the broker)"
                    .into(),
                "under exactly-once another instance may have taken them over: exiting; \
                 a restart recovers from the group's committed offsets",
            );
        }
        Rebalance {
            assigned: false,
            partitions: tpl.count(),
            cooperative,
        }
        .emit(&self.metrics);
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
            return false;
        }
        true
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

    /// Exactly-once: the group's committed offsets of `tpl`, with their
    /// records. If the group cannot tell, the pipeline stops: without them
    /// a restart could produce a batch twice.
    fn read_group_positions(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> Vec<GroupPosition> {
        if !self.eos || tpl.count() == 0 {
            return Vec::new();
        }
        let committed = match consumer.committed_offsets(tpl.clone(), GROUP_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                self.set_fatal(
                    format!("cannot read the group's committed offsets: {e}"),
                    "check that the broker answers (exactly-once needs the group's offsets on assignment)",
                );
                return Vec::new();
            }
        };
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(GroupPosition {
                    topic: e.topic().to_string(),
                    partition: e.partition(),
                    committed: o,
                    record: TxnRecord::decode(e.metadata()),
                }),
                _ => None,
            })
            .collect()
    }

    /// Each partition starts at the offset stored with the state; one the
    /// state has never read starts where `kafka.start_from` says, except
    /// under exactly-once with `latest` or a time when the group has
    /// committed it: then where the group's last transaction started, so a
    /// new state is built from what that output came from.
    fn set_start_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        group: &[GroupPosition],
    ) {
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let mut new = Vec::new();
        for (topic, partition) in parts {
            let grouped = group
                .iter()
                .find(|g| g.topic == topic && g.partition == partition)
                .filter(|_| self.start_from != StartFrom::Earliest);
            let offset = match (self.positions.next(&topic, partition), grouped) {
                (Some(next), _) => Offset::Offset(next),
                (None, Some(g)) => Offset::Offset(g.record.map_or(g.committed, |r| r.start)),
                (None, None) => match self.start_from {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                    StartFrom::Time(_) => {
                        new.push((topic, partition));
                        continue;
                    }
                },
            };
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                warn!(error = %e, partition, "cannot set the start offset");
            }
        }
        if let (StartFrom::Time(t), false) = (self.start_from, new.is_empty()) {
            self.start_at_time(consumer, tpl, &new, t);
        }
    }

    /// The first offset whose Kafka timestamp is at or after `t`, per
    /// partition; the end of a partition with none. If the broker cannot
    /// tell, the pipeline stops (a guess would skip or repeat history).
    fn start_at_time(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        new: &[(String, i32)],
        t: i64,
    ) {
        let found = match times_list(new, t) {
            Ok(query) => consumer.offsets_for_times(query, OFFSETS_FOR_TIMES_TIMEOUT),
            Err(e) => Err(e),
        };
        for (topic, partition) in new {
            let offset = match &found {
                Ok(found) => start_offset(found, topic, *partition),
                Err(_) => None,
            };
            let offset = offset.unwrap_or_else(|| {
                self.set_fatal(
                    format!(
                        "cannot find the offset of {topic}[{partition}] at kafka.start_from: {}",
                        found
                            .as_ref()
                            .err()
                            .map_or("no answer".to_string(), |e| e.to_string())
                    ),
                    START_FROM_FIX,
                );
                Offset::End
            });
            if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                warn!(error = %e, partition, "cannot set the start offset");
            }
        }
    }

    fn set_fatal(&self, message: String, fix: &'static str) {
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert((message, fix));
        }
    }

    fn take_fatal(&self) -> Option<(String, &'static str)> {
        self.fatal.lock().ok().and_then(|mut f| f.take())
    }
}

pub(super) fn times_list(
    parts: &[(String, i32)],
    t: i64,
) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in parts {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(t))?;
    }
    Ok(tpl)
}

/// The start offset offsets-for-times found: an offset, or the end when no
/// record is stamped at or after the time (librdkafka answers -1, `End`).
pub(super) fn start_offset(
    found: &TopicPartitionList,
    topic: &str,
    partition: i32,
) -> Option<Offset> {
    let e = found.find_partition(topic, partition)?;
    if e.error().is_err() {
        return None;
    }
    match e.offset() {
        Offset::Offset(o) if o >= 0 => Some(Offset::Offset(o)),
        Offset::End | Offset::Offset(_) => Some(Offset::End),
        _ => None,
    }
}

/// The Kafka consumer as the pipeline's `BatchSource`.
pub struct Source {
    consumer: BaseConsumer<SourceContext>,
    inputs: Vec<String>,
    metrics: Arc<Metrics>,
    /// Since when an input topic has been reported unknown, if one is.
    unknown_since: Option<Instant>,
    /// `kafka.exactly_once`: offsets reach Kafka in transactions only.
    eos: bool,
}

impl Source {
    pub fn new(
        config: &Config,
        positions: OffsetsView,
        assigned: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Result<Source, LiveError> {
        // Pass-through settings over the defaults: the ones below keep us
        // safe and win.
        let mut cc = consumer_config(config, &CONSUMER_DEFAULTS);
        cc.set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        if config.kafka.exactly_once {
            // librdkafka's default, made explicit: a recovery must read the
            // same input as the run it repeats, never an aborted record.
            cc.set("isolation.level", "read_committed");
        }
        let context = SourceContext {
            positions,
            start_from: config.kafka.start_from,
            fatal: Mutex::new(None),
            assigned,
            revoked: AtomicBool::new(false),
            pending_revoke: Mutex::new(None),
            closing: AtomicBool::new(false),
            metrics: metrics.clone(),
            eos: config.kafka.exactly_once,
            group_positions: Mutex::new(Vec::new()),
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
        Ok(Source {
            consumer,
            inputs: config.topics.inputs.clone(),
            metrics,
            unknown_since: None,
            eos: config.kafka.exactly_once,
        })
    }

    /// A consumer error: counted and logged if librdkafka recovers from it,
    /// else the fatal error that stops the pipeline.
    fn on_error(&mut self, e: &KafkaError) -> Result<(), LiveError> {
        let (kind, fix) = classify(e);
        let fix = match (kind, fix) {
            (_, Some(fix)) => Some(fix.to_string()),
            (KafkaErrorKind::UnknownTopic, None) => {
                self.unknown_since.get_or_insert_with(Instant::now);
                None
            }
            _ => None,
        };
        let Some(fix) = fix else {
            ConsumerError { kind, error: e }.emit(&self.metrics);
            return Ok(());
        };
        self.fatal(kind, e, fix)
    }

    /// An input topic reported unknown and still missing from the
    /// cluster's metadata past the grace is fatal; one that appeared is
    /// forgotten.
    fn check_unknown(&mut self) -> Result<(), LiveError> {
        let Some(since) = self.unknown_since else {
            return Ok(());
        };
        if since.elapsed() < UNKNOWN_TOPIC_GRACE {
            return Ok(());
        }
        self.unknown_since = None;
        match self.missing_input() {
            None => Ok(()),
            Some(fix) => {
                let e = KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition);
                self.fatal(KafkaErrorKind::UnknownTopic, &e, fix)
            }
        }
    }

    fn fatal(&self, kind: KafkaErrorKind, e: &KafkaError, fix: String) -> Result<(), LiveError> {
        ConsumerFatal {
            kind,
            error: e,
            fix: &fix,
        }
        .emit(&self.metrics);
        self.consumer
            .context()
            .assigned
            .store(false, Ordering::Release);
        Err(LiveError::Fatal {
            error: e.to_string(),
            fix,
        })
    }

    /// The fix to print when an input topic is missing from the cluster's
    /// metadata, or `None` when every input topic exists.
    fn missing_input(&self) -> Option<String> {
        let metadata = self.consumer.fetch_metadata(None, METADATA_TIMEOUT).ok()?;
        let known: Vec<&str> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name())
            .collect();
        let (i, name) = self
            .inputs
            .iter()
            .enumerate()
            .find(|(_, name)| !known.contains(&name.as_str()))?;
        Some(format!(
            "input topic {name:?} does not exist: create it, or remove it from topics.inputs (topics.inputs[{i}])"
        ))
    }

    fn fatal_from_callback(&self) -> Result<(), LiveError> {
        match self.consumer.context().take_fatal() {
            None => Ok(()),
            Some((error, fix)) => {
                self.consumer
                    .context()
                    .assigned
                    .store(false, Ordering::Release);
                Err(LiveError::Fatal {
                    error,
                    fix: fix.into(),
                })
            }
        }
    }

    /// Commits the offsets to Kafka too: for lag monitoring only; the
    /// offsets that count are stored with the state.
    fn commit_to_kafka(&self, offsets: &[SourceOffset], mode: CommitMode) {
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
            Err(error) => CommitFailed { error: &error }.emit(&self.metrics),
        }
    }
}

impl BatchSource for Source {
    fn next_batch(
        &mut self,
        max: usize,
        max_wait: Duration,
        stop: &Stop,
    ) -> Result<Vec<InputMessage>, LiveError> {
        self.check_unknown()?;
        let deadline = Instant::now() + max_wait;
        let mut batch = Vec::new();
        while batch.len() < max && !stop.is_requested() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let polled = self.consumer.poll(left.min(Duration::from_millis(100)));
            // A rebalance callback ran inside the poll and could not go on.
            self.fatal_from_callback()?;
            let error = match polled {
                Some(Ok(m)) => {
                    batch.push(InputMessage {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    });
                    None
                }
                Some(Err(e)) => Some(e),
                None => None,
            };
            if let Some(e) = error {
                self.on_error(&e)?;
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
        Ok(batch)
    }

    fn is_assigned(&self) -> bool {
        self.consumer.context().assigned.load(Ordering::Acquire)
    }

    fn committed(&mut self, offsets: &[SourceOffset]) {
        // Under exactly-once the batch's transaction committed them, with
        // their records; a plain commit would overwrite those.
        if !self.eos {
            self.commit_to_kafka(offsets, CommitMode::Async);
        }
    }

    fn take_group_positions(&mut self) -> Vec<GroupPosition> {
        self.consumer
            .context()
            .group_positions
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    fn group_metadata(&self) -> Option<GroupMetadata> {
        self.consumer.group_metadata().map(GroupMetadata)
    }

    fn assignment(&self) -> Vec<(String, i32)> {
        self.consumer.assignment().map_or(Vec::new(), |a| {
            a.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        })
    }

    fn rewind(&mut self, to: &[SourceOffset]) -> Result<(), LiveError> {
        for o in to {
            self.consumer
                .seek(
                    &o.topic,
                    o.partition,
                    Offset::Offset(o.next_offset),
                    GROUP_TIMEOUT,
                )
                .map_err(|source| LiveError::Kafka {
                    what: "seek back to what the recovery dropped",
                    source,
                })?;
        }
        Ok(())
    }

    fn polls_ahead(&self) -> bool {
        true
    }

    fn revoke_pending(&self) -> bool {
        self.consumer
            .context()
            .pending_revoke
            .lock()
            .is_ok_and(|p| p.is_some())
    }

    /// Hands over partitions revoked while a batch was being collected, now
    /// that it is committed to the state: first their offsets go to Kafka,
    /// synchronously, while the partitions are still ours, then they are
    /// unassigned and the rebalance goes on.
    fn finish_revoke(&mut self, offsets: &Offsets) {
        let context = self.consumer.context();
        let Some(tpl) = context
            .pending_revoke
            .lock()
            .ok()
            .and_then(|mut p| p.take())
        else {
            return;
        };
        if !self.eos {
            let revoked = offsets.of(tpl.elements().iter().map(|e| (e.topic(), e.partition())));
            self.commit_to_kafka(&revoked, CommitMode::Sync);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_with_no_record_that_late_starts_at_the_end() {
        let mut found = TopicPartitionList::new();
        found
            .add_partition_offset("t", 0, Offset::Offset(42))
            .unwrap();
        found.add_partition_offset("t", 1, Offset::End).unwrap();
        found
            .add_partition_offset("t", 2, Offset::Beginning)
            .unwrap();
        assert_eq!(start_offset(&found, "t", 0), Some(Offset::Offset(42)));
        assert_eq!(start_offset(&found, "t", 1), Some(Offset::End));
        assert_eq!(start_offset(&found, "t", 2), None, "not an answer");
        assert_eq!(start_offset(&found, "t", 3), None, "not asked");
        let query = times_list(&[("t".into(), 0), ("u".into(), 5)], 1_795_341_600_000).unwrap();
        assert_eq!(
            query.find_partition("u", 5).map(|e| e.offset()),
            Some(Offset::Offset(1_795_341_600_000))
        );
    }
}
