//! Standby replicas in live mode (`scale.standby_replicas`): this
//! instance's share of the warm copies, kept by a `Standby` tailing their
//! changelogs into the directories the partitions would be opened from,
//! so that taking one over restores only the tail it had not read.
//!
//! Which partitions: `Placement::standby_of`, from the group's
//! description (each partition's copies on the members that follow its
//! owner in the sorted ring of advertised addresses). The set is checked
//! every few seconds; when it changes, the standby restarts with the new
//! one (a round in progress finishes first). A copy is released before its
//! partition is opened here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::info;

use crate::config::Config;
use crate::engine::partitioned::partition_dir;
use crate::http::placement::Placement;

use super::super::standby::Standby;
use super::super::topology::Stage;
use super::super::LiveError;
use super::directory::advertised;

/// How often the copies read their changelogs' tails.
const TAIL_EVERY: Duration = Duration::from_secs(1);
/// How often the placement is checked for a new share.
const CHECK_EVERY: Duration = Duration::from_secs(3);

pub struct Standbys {
    replicas: u32,
    /// This instance's place on the ring; none: it keeps no copy.
    me: Option<String>,
    current: Option<(BTreeSet<(Stage, i32)>, Standby)>,
    last_check: Option<Duration>,
}

impl Standbys {
    pub fn new(config: &Config) -> Standbys {
        Standbys {
            replicas: config.scale.standby_replicas,
            me: advertised(config),
            current: None,
            last_check: None,
        }
    }

    /// Starts, restarts or stops the standby to keep this instance's share
    /// of copies, less the partitions it holds.
    pub fn refresh(
        &mut self,
        config: &Config,
        placement: &Placement,
        held: &BTreeSet<(Stage, i32)>,
        now: Duration,
    ) -> Result<(), LiveError> {
        let Some(me) = self.me.as_deref().filter(|_| self.replicas > 0) else {
            return Ok(());
        };
        if self
            .last_check
            .is_some_and(|t| now.saturating_sub(t) < CHECK_EVERY)
        {
            return Ok(());
        }
        self.last_check = Some(now);
        let want: BTreeSet<(Stage, i32)> = placement
            .standby_of(me, self.replicas)
            .difference(held)
            .copied()
            .collect();
        if self.current.as_ref().map(|(set, _)| set) == Some(&want) {
            return Ok(());
        }
        self.current = None;
        if want.is_empty() {
            return Ok(());
        }
        let partitions = want.iter().map(|&(s, p)| (s, p as u32)).collect();
        let standby = Standby::start(config, &config.state.dir, partitions, TAIL_EVERY)
            .map_err(|e| LiveError::Changelog(Box::new(e)))?;
        info!(partitions = want.len(), "keeping standby copies");
        self.current = Some((want, standby));
        Ok(())
    }

    /// Stops the standby if it keeps a copy of this partition, which is
    /// about to be opened here (the next check restarts it for the rest).
    pub fn release(&mut self, stage: Stage, partition: i32) {
        if self
            .current
            .as_ref()
            .is_some_and(|(set, _)| set.contains(&(stage, partition)))
        {
            self.current = None;
            self.last_check = None;
        }
    }

    /// The directories of the copies, which the cleaner leaves alone.
    pub fn dirs(&self, state_dir: &Path) -> BTreeSet<PathBuf> {
        let copies = self.current.iter().flat_map(|(set, _)| set.iter());
        copies
            .map(|&(stage, p)| partition_dir(state_dir, stage, p as u32))
            .collect()
    }
}
