//! Standby replicas (`scale.standby_replicas`, docs/scale-out.md): warm
//! copies of stage partitions that another instance owns, kept by tailing
//! their changelogs, so that an instance taking one over restores only what
//! was written since its last read instead of the whole state.
//!
//! A `Standby` owns one thread, which restores each of its partitions from
//! its checkpoint every `every`; dropping it (or `stop`) ends the thread
//! after the round in progress. Which instance stands by for which
//! partitions is the assignment's to say (not built: see scale-out.md).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::partitioned::partition_dir;
use crate::engine::routing::Stage;
use crate::state::Store;

use super::changelog::{restore, ChangelogError, Restored};

/// How long one restore of a standby may take before it gives up (the
/// next round goes on from the checkpoint).
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Standby {
    stop: Arc<AtomicBool>,
    /// Records applied so far, all copies together.
    records: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<Restored, ChangelogError>>>,
}

impl Standby {
    /// Starts tailing the changelogs of `partitions`, each copy kept under
    /// `dir` as `Partitioned` lays a state out.
    pub fn start(
        config: &Config,
        dir: &Path,
        partitions: Vec<(Stage, u32)>,
        every: Duration,
    ) -> Result<Standby, ChangelogError> {
        let stop = Arc::new(AtomicBool::new(false));
        let copies = partitions
            .into_iter()
            .map(|(stage, p)| {
                let pdir = partition_dir(dir, stage, p);
                Ok(Copy {
                    stage,
                    partition: p,
                    store: Store::open(&pdir)?,
                    dir: pdir,
                })
            })
            .collect::<Result<Vec<_>, ChangelogError>>()?;
        let records = Arc::new(AtomicU64::new(0));
        let (config, flag, count) = (config.clone(), Arc::clone(&stop), Arc::clone(&records));
        let thread = std::thread::Builder::new()
            .name("pretext-standby".into())
            .spawn(move || tail(&config, copies, every, &flag, &count))
            .map_err(|e| ChangelogError::State(crate::state::StateError::Spawn(e)))?;
        Ok(Standby {
            stop,
            records,
            thread: Some(thread),
        })
    }

    /// Records applied so far, all copies together.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Stops tailing after the round in progress; returns what the standby
    /// restored in all, or the error that ended it.
    pub fn stop(mut self) -> Result<Restored, ChangelogError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Ok(Restored::default()),
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // An error or a panic of the standby's own ends with it: the
            // copies stay as their last checkpoint says.
            let _ = thread.join();
        }
    }
}

/// A standby copy of one stage partition.
struct Copy {
    stage: Stage,
    partition: u32,
    store: Store,
    dir: PathBuf,
}

/// Restores every copy from its checkpoint, every `every`, until `stop`.
fn tail(
    config: &Config,
    mut copies: Vec<Copy>,
    every: Duration,
    stop: &AtomicBool,
    records: &AtomicU64,
) -> Result<Restored, ChangelogError> {
    let mut total = Restored::default();
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for c in &mut copies {
            let p = c.partition as i32;
            let r = restore(config, c.stage, p, &mut c.store, &c.dir, ROUND_TIMEOUT)?;
            total.records += r.records;
            total.bytes += r.bytes;
            total.elapsed += r.elapsed;
            records.fetch_add(r.records, Ordering::Relaxed);
        }
        // Sleeps in short steps, so that a stop is seen soon.
        while round.elapsed() < every && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(every));
        }
    }
    Ok(total)
}
