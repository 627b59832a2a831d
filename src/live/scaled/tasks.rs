//! The stage partitions an instance holds now: each its own engine over
//! `<state.dir>/<stage>-<p>`, brought up to its changelogs' end when it is
//! assigned (nothing to read when the local state is current), with its
//! own position in its repartition topic, its own watermark and its own
//! idle advance.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::engine::partitioned::partition_dir;
use crate::engine::{Engine, EngineStats};
use crate::http::placement::Placement;
use crate::state::changelog::Checkpoint;
use crate::state::Store;

use super::super::changelog::{restore, ChangelogError};
use super::super::idle::Idle;
use super::super::pipeline::Clock;
use super::super::topology::{Stage, Topology};
use super::super::LiveError;

/// How long a partition's restore may take. Kafka's default
/// `max.poll.interval.ms` (5 minutes) bounds it in practice: the restore
/// runs between two polls.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// One stage partition held by this instance.
pub struct Task {
    pub stage: Stage,
    pub partition: i32,
    pub engine: Engine,
    /// The next offset of its repartition partition the state has not
    /// applied (what is below was applied before a crash or a move).
    pub next: i64,
    pub idle: Idle,
    /// The origin (event id) of the resolved records applied since the
    /// last settle: the partition fires once an event's records are in.
    pub unsettled: Option<String>,
    /// Applied something since the last commit.
    pub touched: bool,
}

impl Task {
    pub fn already_applied(&self, offset: i64) -> bool {
        offset < self.next
    }
}

pub struct Tasks {
    held: BTreeMap<(Stage, i32), Task>,
    /// What queries read: the partitions held, as they are opened and
    /// given up.
    placement: Arc<Placement>,
    /// The decisions of the tasks given up, so the counters never go back.
    closed: EngineStats,
}

impl Tasks {
    pub fn new(placement: Arc<Placement>) -> Tasks {
        Tasks {
            held: BTreeMap::new(),
            placement,
            closed: EngineStats::default(),
        }
    }

    /// The task of a stage partition, opened (and restored) if need be.
    pub fn open(
        &mut self,
        config: &Config,
        stage: Stage,
        partition: i32,
        clock: &dyn Clock,
    ) -> Result<&mut Task, LiveError> {
        match self.held.entry((stage, partition)) {
            Entry::Occupied(held) => Ok(held.into_mut()),
            Entry::Vacant(vacant) => {
                let task = open_task(config, stage, partition, clock)?;
                self.placement
                    .hold(stage, partition, task.engine.store().reader());
                Ok(vacant.insert(task))
            }
        }
    }

    /// Gives a partition up (revoked: another instance owns it now) and
    /// deletes its state here: the owner's copy is the partition's, and an
    /// erase applied there must not survive in a stale copy here. Should
    /// the partition come back, it is restored from its changelogs.
    pub fn close(&mut self, stage: Stage, partition: i32) {
        let Some(task) = self.held.remove(&(stage, partition)) else {
            return;
        };
        self.placement.release(stage, partition);
        self.closed.add_decisions(task.engine.stats());
        let dir = task.engine.store().path().to_path_buf();
        drop(task);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => info!(
                stage = stage.name(),
                partition, "stage partition handed over"
            ),
            Err(e) => warn!(
                stage = stage.name(),
                partition,
                dir = %dir.display(),
                error = %e,
                "stage partition handed over; its local state could not be deleted"
            ),
        }
    }

    /// Closes every partition, its uncommitted changes dropped: its state on
    /// disk is its last commit, reopened when next needed.
    pub fn close_all(&mut self) {
        for ((stage, partition), task) in std::mem::take(&mut self.held) {
            self.closed.add_decisions(task.engine.stats());
            self.placement.release(stage, partition);
        }
    }

    /// Deletes the state directories of stage partitions this instance
    /// has not held for `after` (a previous run's, moved elsewhere since);
    /// `unheld` remembers since when each was seen unheld.
    pub fn clean(
        &self,
        state_dir: &Path,
        keep: &BTreeSet<PathBuf>,
        unheld: &mut BTreeMap<PathBuf, Duration>,
        now: Duration,
        after: Duration,
    ) {
        let Ok(entries) = std::fs::read_dir(state_dir) else {
            return;
        };
        let held: BTreeSet<PathBuf> = self
            .held
            .values()
            .map(|t| t.engine.store().path().to_path_buf())
            .collect();
        let mut seen = BTreeMap::new();
        for dir in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            if held.contains(&dir) || keep.contains(&dir) || !is_partition_dir(&dir) {
                continue;
            }
            let since = unheld.get(&dir).copied().unwrap_or(now);
            if now.saturating_sub(since) < after {
                seen.insert(dir, since);
            } else if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!(dir = %dir.display(), error = %e, "cannot delete an unheld partition's state");
            } else {
                info!(dir = %dir.display(), "deleted the state of a partition held elsewhere");
            }
        }
        *unheld = seen;
    }

    /// The stage partitions held.
    pub fn held(&self) -> BTreeSet<(Stage, i32)> {
        self.held.keys().copied().collect()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Task> {
        self.held.values_mut()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Task> {
        self.held.values()
    }

    /// Triggers, conversions and suppressions of every customer partition
    /// this instance held, and the pending checks of those it holds.
    pub fn decisions(&self) -> EngineStats {
        let mut stats = self.closed.clone();
        stats.pending_checks = 0;
        for t in self.held.values().filter(|t| t.stage == Stage::Customer) {
            stats.add_decisions(t.engine.stats());
        }
        stats
    }
}

/// `identity-<p>` or `customer-<p>`, as `partition_dir` names them.
fn is_partition_dir(dir: &Path) -> bool {
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    Stage::ALL.iter().any(|s| {
        name.strip_prefix(s.name())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|p| p.parse::<u32>().is_ok())
    })
}

fn open_task(
    config: &Config,
    stage: Stage,
    partition: i32,
    clock: &dyn Clock,
) -> Result<Task, LiveError> {
    let dir = partition_dir(&config.state.dir, stage, partition as u32);
    let restored = restore_dir(config, stage, partition, &dir)?;
    let engine = Engine::open(&dir, config)?;
    let topic = Topology::from_config(config)
        .repartition_topic(stage)
        .to_string();
    let next = engine
        .stored_offsets()?
        .into_iter()
        .find(|o| o.topic == topic && o.partition == partition)
        .map_or(0, |o| o.next_offset);
    info!(
        stage = stage.name(),
        partition,
        restored_records = restored.records,
        restored_bytes = restored.bytes,
        elapsed_ms = restored.elapsed.as_millis() as u64,
        next_offset = next,
        "stage partition open"
    );
    let idle = Idle::new(config, engine.max_event_ts(), engine.watermark(), clock);
    Ok(Task {
        stage,
        partition,
        engine,
        next,
        idle,
        unsettled: None,
        touched: false,
    })
}

fn restore_dir(
    config: &Config,
    stage: Stage,
    partition: i32,
    dir: &Path,
) -> Result<super::super::changelog::Restored, LiveError> {
    let mut store = Store::open(dir).map_err(|e| LiveError::Engine(e.into()))?;
    restore(config, stage, partition, &mut store, dir, RESTORE_TIMEOUT).map_err(changelog_error)
}

/// The state of a partition now holds its changelogs up to `shipped`.
pub fn checkpoint(dir: &Path, shipped: BTreeMap<String, i64>) -> Result<(), LiveError> {
    let mut checkpoint = Checkpoint::read(dir).map_err(|e| changelog_error(e.into()))?;
    checkpoint.next.extend(shipped);
    checkpoint.write(dir).map_err(|e| changelog_error(e.into()))
}

fn changelog_error(e: ChangelogError) -> LiveError {
    LiveError::Changelog(Box::new(e))
}
