//! The engine split the way a scaled-out deployment splits it
//! (docs/scale-out.md), in one process: `scale.partitions` partitions of
//! each stage, each with its own state directory, its own clock and its
//! own watermark; what one stage sends the other goes through the wire
//! form the repartition topics carry, to the partition of its key.
//!
//! It is what N instances compute when every record crosses its
//! repartition topic at once: a replay of a log through it shows, offline
//! and exactly, what partitioning changes in the triggers (the differences
//! docs/scale-out.md lists), with no broker and no timing in the way.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::event::{Event, Millis};

use super::routing::{partition_for, route, Route, Stage};
use super::wire::{CustomerRecord, Forget};
use super::{Engine, EngineError, EngineStats, Outcome, TriggerSink};

/// Both stages, `partitions` partitions each.
pub struct Partitioned {
    identity: Vec<Engine>,
    customer: Vec<Engine>,
    /// Counts of the events as the router saw them: a promotion applied
    /// by every customer partition is one event.
    routed: EngineStats,
}

impl Partitioned {
    /// Opens (or creates) the state of every partition under `dir`:
    /// `identity-<p>` and `customer-<p>`, as an instance keeps the
    /// partitions assigned to it.
    pub fn open(dir: &Path, config: &Config, partitions: u32) -> Result<Partitioned, EngineError> {
        let open = |stage: Stage| {
            (0..partitions.max(1))
                .map(|p| Engine::open(&partition_dir(dir, stage, p), config))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Partitioned {
            identity: open(Stage::Identity)?,
            customer: open(Stage::Customer)?,
            routed: EngineStats::default(),
        })
    }

    /// Routes an event to its stage's partition and follows what it
    /// becomes to the other stage, until nothing is left in flight.
    pub fn apply(
        &mut self,
        event: &Event,
        sink: &mut dyn TriggerSink,
    ) -> Result<Outcome, EngineError> {
        let outcome = match route(&event.body) {
            Route::Keyed {
                stage: Stage::Identity,
                key,
            } => {
                let p = self.partition_of(key);
                let (outcome, records) = self.identity[p].apply_at_identity(event)?;
                let mut touched = Vec::with_capacity(2);
                for record in records {
                    let q = self.deliver(&record, sink)?;
                    if !touched.contains(&q) {
                        touched.push(q);
                    }
                }
                // Each partition fires once it has all of the event's records.
                for q in touched {
                    self.customer[q].settle(sink)?;
                }
                outcome
            }
            Route::Keyed {
                stage: Stage::Customer,
                key,
            } => {
                let p = self.partition_of(key);
                let (outcome, forgets) = self.customer[p].apply_at_customer(event, sink)?;
                for forget in forgets {
                    self.forget(&forget)?;
                }
                outcome
            }
            Route::Broadcast { .. } => {
                let mut outcomes = Vec::with_capacity(self.customer.len());
                for engine in &mut self.customer {
                    outcomes.push(engine.apply_at_customer(event, sink)?.0);
                }
                // Every partition saw the same id and time: one verdict.
                outcomes[0]
            }
        };
        self.count(event, outcome);
        Ok(outcome)
    }

    /// The end of a replay: every partition's watermark becomes the
    /// highest event time of the whole input, as one engine's would (the
    /// customer partitions fire what is then due; the identity partitions
    /// answer queries as of it).
    pub fn end_of_input(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError> {
        let Some(max) = self.max_event_ts() else {
            return Ok(());
        };
        for engine in self.customer.iter_mut().chain(&mut self.identity) {
            engine.advance_watermark(max, sink)?;
        }
        Ok(())
    }

    /// Fires every pending check of every partition.
    pub fn flush(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError> {
        for engine in &mut self.customer {
            engine.flush(sink)?;
        }
        Ok(())
    }

    /// Commits every partition's state.
    pub fn commit(&mut self) -> Result<(), EngineError> {
        for engine in self.engines_mut() {
            engine.commit(&[])?;
        }
        Ok(())
    }

    /// The highest applied event time of any partition.
    pub fn max_event_ts(&self) -> Option<Millis> {
        self.engines().filter_map(Engine::max_event_ts).max()
    }

    pub fn uncommitted_bytes(&self) -> usize {
        self.engines().map(Engine::uncommitted_bytes).sum()
    }

    /// Events as routed (each once), and what the customer partitions
    /// decided (triggers, conversions, suppressions, pending checks).
    pub fn stats(&self) -> EngineStats {
        let mut stats = self.routed.clone();
        for engine in &self.customer {
            stats.add_decisions(engine.stats());
        }
        stats
    }

    /// The partitions of a stage, for audits and tests.
    pub fn partitions(&self, stage: Stage) -> &[Engine] {
        match stage {
            Stage::Identity => &self.identity,
            Stage::Customer => &self.customer,
        }
    }

    /// A resolved record, through its wire form, to its customer's
    /// partition; returns the partition.
    fn deliver(
        &mut self,
        record: &CustomerRecord,
        sink: &mut dyn TriggerSink,
    ) -> Result<usize, EngineError> {
        let record = CustomerRecord::from_json(&record.to_json())
            .expect("a record written by this build reads back");
        let p = self.partition_of(record.key());
        self.customer[p].apply_resolved(&record, sink)?;
        Ok(p)
    }

    /// Erase's request, through its wire form, to the cookie's partition.
    fn forget(&mut self, forget: &Forget) -> Result<(), EngineError> {
        let forget = Forget::from_json(&forget.to_json())
            .expect("a record written by this build reads back");
        let p = self.partition_of(forget.key());
        self.identity[p].apply_forget(&forget)
    }

    fn partition_of(&self, key: &str) -> usize {
        // The count is at least 1 and at most `scale.partitions`' bound.
        partition_for(key.as_bytes(), self.customer.len() as i32) as usize
    }

    fn count(&mut self, event: &Event, outcome: Outcome) {
        let stats = &mut self.routed;
        match outcome {
            Outcome::Applied => stats.count_event(event.body.type_name()),
            Outcome::Duplicate => stats.duplicates += 1,
            Outcome::IgnoredErased => stats.ignored_erased += 1,
        }
    }

    /// Every partition's engine, with its stage and number: for a caller
    /// that commits each its own way (its changelog first).
    pub fn each_partition(&mut self) -> impl Iterator<Item = (Stage, u32, &mut Engine)> {
        let identity = self.identity.iter_mut().enumerate();
        let customer = self.customer.iter_mut().enumerate();
        let identity = identity.map(|(p, e)| (Stage::Identity, p as u32, e));
        identity.chain(customer.map(|(p, e)| (Stage::Customer, p as u32, e)))
    }

    fn engines(&self) -> impl Iterator<Item = &Engine> {
        self.identity.iter().chain(&self.customer)
    }

    fn engines_mut(&mut self) -> impl Iterator<Item = &mut Engine> {
        self.identity.iter_mut().chain(&mut self.customer)
    }
}

/// Where a stage's partition keeps its state under a state directory.
pub fn partition_dir(dir: &Path, stage: Stage, partition: u32) -> PathBuf {
    dir.join(format!("{}-{partition}", stage.name()))
}
