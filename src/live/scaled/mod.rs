//! Live mode scaled out (`scale.partitions > 1`, docs/scale-out.md): each
//! instance is a member of the group that reads the input topics and both
//! repartition topics. Each batch, in one pass over its messages:
//!
//! - input messages are routed (`topology::destinations`) to their stage's
//!   repartition topic, unchanged, or dead-lettered;
//! - `<group>.by-cookie` partitions feed identity-stage partitions, whose
//!   resolved records go to `<group>.by-customer`;
//! - `<group>.by-customer` partitions feed customer-stage partitions,
//!   which fire triggers and conversions, and send erase's forgets back to
//!   `<group>.by-cookie`.
//!
//! Then the batch is committed: each stage partition's state changes go to
//! its changelogs, and with everything the batch produced and the input
//! offsets they make one Kafka transaction (`kafka.exactly_once`), or are
//! acknowledged before the offsets are committed (at least once); the
//! local RocksDB state follows. A partition assigned to this instance is
//! restored from its changelogs before anything of it is applied, which
//! reads nothing when the local state is current.

mod directory;
mod group;
mod producer;
mod purge;
mod stage;
mod standbys;
mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::decode::decode;
use crate::engine::wire::RecordKind;
use crate::engine::{EngineStats, SourceOffset};
use crate::http::placement::Placement;
use crate::http::Health;
use crate::state::Cf;

use super::events::{DeadLettered, SkippedRun};
use super::pipeline::{Clock, Produced, Stop, SystemClock};
use super::topology::{Stage, Topology};
use super::LiveError;

use directory::Directory;
use group::{Group, Polled};
use producer::ScaledProducer;
use purge::Purger;
use stage::{at_message, dead_letter_out, StageOut};
use standbys::Standbys;
use tasks::{Task, Tasks};

/// Runs an instance of the scaled-out topology until `stop`.
pub fn run(config: Config, health: Health, stop: &Stop) -> Result<(), LiveError> {
    if config.scale.standby_replicas > 0 && directory::advertised(&config).is_none() {
        warn!(
            "scale.standby_replicas: this instance advertises no address (scale.advertised_http), \
             so it has no place on the ring of standbys and keeps no copy"
        );
    }
    let placement = Arc::new(Placement::new(config.scale.partitions));
    health.queries.place(placement.clone());
    let _directory = Directory::start(&config, placement.clone())?;
    let group = Group::new(&config, health.assigned.clone(), health.metrics.clone())?;
    let producer = ScaledProducer::new(&config, health.metrics.clone())?;
    health.state_open.store(true, Ordering::Release);
    let parts = Parts {
        group,
        producer,
        tasks: Tasks::new(placement.clone()),
        standbys: Standbys::new(&config),
        placement,
        purger: Purger::new(&config)?,
    };
    let mut scaled = Scaled::new(config, parts, SystemClock::new(), health);
    let result = scaled.run(stop);
    scaled.close();
    result
}

/// What an instance runs with besides its configuration.
struct Parts {
    group: Group,
    producer: ScaledProducer,
    tasks: Tasks,
    standbys: Standbys,
    placement: Arc<Placement>,
    purger: Purger,
}

struct Scaled<C> {
    config: Config,
    topology: Topology,
    inputs: BTreeSet<String>,
    changelogs: BTreeMap<(Stage, Cf), String>,
    group: Group,
    producer: ScaledProducer,
    tasks: Tasks,
    standbys: Standbys,
    placement: Arc<Placement>,
    purger: Purger,
    clock: C,
    health: Health,
    /// Events as the router read them (each once, a promotion too).
    routed: EngineStats,
    /// Partition directories not held, since when (`Tasks::clean`).
    unheld: BTreeMap<PathBuf, Duration>,
    last_clean: Option<Duration>,
}

/// How long a partition's state may stay on disk once another instance
/// holds it (a previous run's, or one that could not be deleted at the
/// hand-over): long enough for a restart to find its partitions again,
/// short enough that an erased customer's data does not linger.
const CLEANUP_DELAY: Duration = Duration::from_secs(600);
/// How long closing the consumer may wait for a rebalance in flight.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Aborted transactions in a row read again before the instance gives up.
const MAX_ABORTS_IN_A_ROW: u32 = 3;
/// How often the state directory is scanned for such partitions.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// What one batch makes besides its records to the stages.
#[derive(Default)]
struct BatchOut {
    produced: Produced,
    /// The next offset of each partition read.
    next: BTreeMap<(String, i32), i64>,
    /// Messages below a stage partition's stored position: the first
    /// offset and the count, per partition.
    skipped: BTreeMap<(String, i32), (i64, u64)>,
}

impl<C: Clock> Scaled<C> {
    fn new(config: Config, parts: Parts, clock: C, health: Health) -> Scaled<C> {
        let topology = Topology::from_config(&config);
        let changelogs = Stage::ALL
            .into_iter()
            .flat_map(|stage| stage.stores().iter().map(move |&cf| (stage, cf)))
            .map(|(stage, cf)| ((stage, cf), topology.changelog_topic(stage, cf)))
            .collect();
        Scaled {
            inputs: config.topics.inputs.iter().cloned().collect(),
            topology,
            changelogs,
            group: parts.group,
            producer: parts.producer,
            tasks: parts.tasks,
            standbys: parts.standbys,
            placement: parts.placement,
            purger: parts.purger,
            clock,
            health,
            routed: EngineStats::default(),
            unheld: BTreeMap::new(),
            last_clean: None,
            config,
        }
    }

    /// Closes the parts in order, each step logged: the consumer (which
    /// leaves the group, or, a static member, only disconnects), the
    /// standby copies, the producer, then the partitions' states.
    fn close(self) {
        let Scaled {
            group,
            producer,
            tasks,
            standbys,
            ..
        } = self;
        group.close(CLOSE_TIMEOUT);
        info!("consumer closed");
        drop(standbys);
        drop(producer);
        info!("producer closed");
        drop(tasks);
        info!("partition states closed");
    }

    fn run(&mut self, stop: &Stop) -> Result<(), LiveError> {
        let (max, wait) = (
            self.config.kafka.batch_max_messages,
            self.config.kafka.batch_max_wait.std(),
        );
        let mut aborted_in_a_row = 0;
        while !stop.is_requested() {
            self.open_assigned()?;
            let batch = self.group.next_batch(max, wait, stop)?;
            match self.process(&batch) {
                Err(e @ LiveError::TxnAborted { .. }) if aborted_in_a_row < MAX_ABORTS_IN_A_ROW => {
                    aborted_in_a_row += 1;
                    self.read_again(&batch, &e)?;
                }
                Err(e) => return Err(e),
                Ok(()) => aborted_in_a_row = 0,
            }
            self.hand_over_revoked();
            self.refresh_standbys()?;
            self.clean();
            self.purge();
        }
        info!("stopping: the last batch is committed");
        Ok(())
    }

    /// After an aborted transaction (the group rebalanced under it, most
    /// often: its offsets carried a generation that had moved on): the
    /// batch left nothing visible, so its partitions' states go back to
    /// their last commit (closed; reopened from disk when next needed) and
    /// the batch is read again from its first offsets.
    fn read_again(&mut self, batch: &[Polled], cause: &LiveError) -> Result<(), LiveError> {
        warn!(error = %cause, "the batch is read again from its first offsets");
        self.producer.discard_reports();
        self.tasks.close_all();
        let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in batch {
            first
                .entry((m.topic.clone(), m.partition))
                .or_insert(m.offset);
        }
        self.group.rewind(&first)
    }

    /// Opens (restoring what the local state lacks) every stage partition
    /// assigned since the last batch.
    fn open_assigned(&mut self) -> Result<(), LiveError> {
        for (topic, partition) in self.group.take_assigned() {
            if let Some(stage) = self.stage_of(&topic) {
                self.standbys.release(stage, partition);
                self.tasks
                    .open(&self.config, stage, partition, &self.clock)?;
            }
        }
        Ok(())
    }

    fn hand_over_revoked(&mut self) {
        let revoked = self.group.pending_revoke();
        if revoked.is_empty() {
            return;
        }
        for (topic, partition) in revoked {
            if let Some(stage) = self.stage_of(&topic) {
                self.tasks.close(stage, partition);
            }
        }
        self.group.finish_revoke();
    }

    fn clean(&mut self) {
        let now = self.clock.mono();
        if self
            .last_clean
            .is_some_and(|t| now.saturating_sub(t) < CLEANUP_EVERY)
        {
            return;
        }
        self.last_clean = Some(now);
        let dir = &self.config.state.dir;
        let copies = self.standbys.dirs(dir);
        self.tasks
            .clean(dir, &copies, &mut self.unheld, now, CLEANUP_DELAY);
    }

    fn purge(&mut self) {
        let repartition = Stage::ALL.map(|s| self.topology.repartition_topic(s));
        let now = self.clock.mono();
        self.purger.purge(self.group.committed(), &repartition, now);
    }

    fn refresh_standbys(&mut self) -> Result<(), LiveError> {
        let held = self.tasks.held();
        let now = self.clock.mono();
        self.standbys
            .refresh(&self.config, &self.placement, &held, now)
    }

    fn stage_of(&self, topic: &str) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .find(|&s| self.topology.repartition_topic(s) == topic)
    }

    /// Applies a batch and commits it (with what idle partitions fired).
    fn process(&mut self, batch: &[Polled]) -> Result<(), LiveError> {
        let started = self.clock.mono();
        let mut out = BatchOut::default();
        for m in batch {
            out.next
                .insert((m.topic.clone(), m.partition), m.offset + 1);
            if self.inputs.contains(&m.topic) {
                self.route(m, &mut out.produced)?;
            } else if let Some(stage) = self.stage_of(&m.topic) {
                if !self.apply(stage, m, &mut out.produced)? {
                    let run = out.skipped.entry((m.topic.clone(), m.partition));
                    run.or_insert((m.offset, 0)).1 += 1;
                }
            }
        }
        self.settle_and_advance(&mut out.produced)?;
        self.send_output(&out.produced)?;
        self.commit(&out.next)?;
        let metrics = &self.health.metrics;
        for ((topic, partition), (first, count)) in &out.skipped {
            SkippedRun {
                topic,
                partition: *partition,
                first: *first,
                count: *count,
            }
            .emit(metrics);
        }
        for d in &out.produced.dead_letters {
            DeadLettered {
                reason: d.reason,
                topic: &d.topic,
                partition: d.partition,
                offset: d.offset,
            }
            .emit(metrics);
        }
        if !batch.is_empty() {
            let took = self.clock.mono().saturating_sub(started);
            metrics.batch_duration.observe(took.as_secs_f64());
        }
        self.observe();
        Ok(())
    }

    /// The router: an input event to its stage's partition (every customer
    /// partition for a promotion), as it arrived; a bad one to the dead
    /// letters.
    fn route(&mut self, m: &Polled, produced: &mut Produced) -> Result<(), LiveError> {
        let event = match decode(&m.payload, self.config.input.max_message_bytes) {
            Ok(event) => event,
            Err(rejection) => {
                produced
                    .dead_letters
                    .push(dead_letter_out(m, rejection.reason, &rejection.error));
                return Ok(());
            }
        };
        self.routed.count_event(event.body.type_name());
        let to = self.topology.destinations(&event);
        for p in to.partitions {
            self.producer.send(
                to.topic,
                Some(p),
                Some(to.key.as_bytes()),
                Some(&m.payload),
                Some(RecordKind::Event),
            )?;
        }
        Ok(())
    }

    /// A record of a stage's repartition topic, to its partition; false if
    /// the partition's state had applied it already.
    fn apply(
        &mut self,
        stage: Stage,
        m: &Polled,
        produced: &mut Produced,
    ) -> Result<bool, LiveError> {
        let (mono, wall) = (self.clock.mono(), self.clock.wall_ms());
        let max_bytes = self.config.input.max_message_bytes;
        self.standbys.release(stage, m.partition);
        let task = self
            .tasks
            .open(&self.config, stage, m.partition, &self.clock)?;
        task.idle.input_at(mono);
        if task.already_applied(m.offset) {
            return Ok(false);
        }
        task.next = m.offset + 1;
        task.touched = true;
        let mut stage_out = StageOut {
            producer: &mut self.producer,
            topology: &self.topology,
            produced,
        };
        let applied = stage_out
            .apply(task, m, max_bytes)
            .map_err(|e| at_message(m, e))?;
        if applied {
            if let Some(ts) = task.engine.max_event_ts() {
                task.idle.applied(ts, wall);
            }
        }
        Ok(true)
    }

    /// Fires what each customer partition has due: after the records of an
    /// event are all in, and the idle advance.
    fn settle_and_advance(&mut self, produced: &mut Produced) -> Result<(), LiveError> {
        let (mono, wall) = (self.clock.mono(), self.clock.wall_ms());
        for task in self.tasks.iter_mut() {
            if task.unsettled.take().is_some() {
                task.engine.settle(produced)?;
            }
            // Both stages: the customer partitions fire what is due, the
            // identity partitions answer their cookies as of the clock.
            if let Some(to) = task.idle.target(mono, wall) {
                task.engine.advance_watermark(to, produced)?;
                task.touched = true;
            }
        }
        Ok(())
    }

    fn send_output(&mut self, produced: &Produced) -> Result<(), LiveError> {
        let topics = &self.config.topics;
        for t in &produced.triggers {
            let topic = topics.of_trigger(t.group);
            let json = t.to_json();
            let key = Some(t.crm_id.as_bytes());
            self.producer
                .send(topic, None, key, Some(json.as_bytes()), None)?;
        }
        for c in &produced.conversions {
            let json = c.to_json();
            let key = Some(c.crm_id.as_bytes());
            self.producer
                .send(&topics.conversions, None, key, Some(json.as_bytes()), None)?;
        }
        for d in &produced.dead_letters {
            let payload = Some(d.json.as_bytes());
            self.producer
                .send(&topics.dead_letter, None, d.key.as_deref(), payload, None)?;
        }
        Ok(())
    }

    /// Ships each touched partition's changes to its changelogs, ends the
    /// batch (its transaction, or every acknowledgement), then writes the
    /// local states and their checkpoints, and (at least once) commits the
    /// offsets to the group.
    fn commit(&mut self, next: &BTreeMap<(String, i32), i64>) -> Result<(), LiveError> {
        let offsets = self.group.offsets_after(next)?;
        // Nothing read, nothing changed: no batch to end.
        if offsets.count() == 0 && self.tasks.iter().all(|t| !t.touched) {
            return Ok(());
        }
        for task in self.tasks.iter_mut().filter(|t| t.touched) {
            let position = SourceOffset {
                topic: self.topology.repartition_topic(task.stage).to_string(),
                partition: task.partition,
                next_offset: task.next,
            };
            for change in task.engine.prepare_commit(&[position]) {
                let topic = &self.changelogs[&(task.stage, change.cf)];
                let key = Some(change.key.as_slice());
                self.producer.send(
                    topic,
                    Some(task.partition),
                    key,
                    change.value.as_deref(),
                    None,
                )?;
            }
        }
        let group = self.group.group_metadata();
        let delivered = self.producer.finish(&offsets, group.as_ref())?;
        for task in self.tasks.iter_mut().filter(|t| t.touched) {
            task.engine.commit_prepared()?;
            task.touched = false;
            let dir = task.engine.store().path().to_path_buf();
            tasks::checkpoint(&dir, shipped_of(&self.changelogs, task, &delivered))?;
        }
        let committed = self.config.kafka.exactly_once || self.group.commit(&offsets)?;
        if committed {
            self.group.mark_committed(&offsets);
        }
        Ok(())
    }

    fn observe(&self) {
        let m = &self.health.metrics;
        let mut stats = self.routed.clone();
        stats.add_decisions(&self.tasks.decisions());
        m.observe_engine(&stats);
        m.ready.set(i64::from(self.health.is_ready()));
        // The clocks of the stage partitions held: the one furthest behind
        // is what an alert on a stalled watermark must see.
        let held: Vec<&Task> = self.tasks.iter().collect();
        if let Some(w) = held.iter().filter_map(|t| t.engine.watermark()).min() {
            m.watermark.set(w as f64 / 1000.0);
        }
        if let Some(ts) = held.iter().filter_map(|t| t.engine.max_event_ts()).min() {
            let lag = self.clock.wall_ms().saturating_sub(ts);
            m.event_time_lag.set(lag as f64 / 1000.0);
        }
        let (bytes, keys) = self.tasks.iter().fold((0, 0), |(b, k), t| {
            let size = t.engine.state_size();
            (b + size.bytes, k + size.keys)
        });
        m.state_size_bytes.set(bytes as i64);
        m.state_keys.set(keys as i64);
    }
}

/// The changelog offsets `delivered` holds of `task`'s partition.
fn shipped_of(
    changelogs: &BTreeMap<(Stage, Cf), String>,
    task: &Task,
    delivered: &BTreeMap<(String, i32), i64>,
) -> BTreeMap<String, i64> {
    task.stage
        .stores()
        .iter()
        .filter_map(|cf| {
            let topic = &changelogs[&(task.stage, *cf)];
            let next = delivered.get(&(topic.clone(), task.partition))?;
            Some((topic.clone(), *next))
        })
        .collect()
}
