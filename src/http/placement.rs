//! Where each stage partition's state is, for the queries of a scaled-out
//! instance (docs/scale-out.md, "Questions"): the readers of the
//! partitions it holds, and the HTTP address of the instance that holds
//! each other one, as the group's assignment says (refreshed by
//! `live::scaled::directory`).

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::engine::routing::{partition_for, Stage};
use crate::state::Reader;

pub struct Placement {
    partitions: i32,
    local: RwLock<BTreeMap<(Stage, i32), Reader>>,
    owners: RwLock<BTreeMap<(Stage, i32), String>>,
}

impl Placement {
    pub fn new(partitions: u32) -> Placement {
        Placement {
            partitions: partitions.clamp(1, i32::MAX as u32) as i32,
            local: RwLock::new(BTreeMap::new()),
            owners: RwLock::new(BTreeMap::new()),
        }
    }

    /// The partition of `key` in each stage.
    pub fn partition_of(&self, key: &str) -> i32 {
        partition_for(key.as_bytes(), self.partitions)
    }

    /// This instance holds the partition now: queries read it here.
    pub fn hold(&self, stage: Stage, partition: i32, reader: Reader) {
        if let Ok(mut local) = self.local.write() {
            local.insert((stage, partition), reader);
        }
    }

    /// This instance no longer holds the partition.
    pub fn release(&self, stage: Stage, partition: i32) {
        if let Ok(mut local) = self.local.write() {
            local.remove(&(stage, partition));
        }
    }

    pub fn local(&self, stage: Stage, partition: i32) -> Option<Reader> {
        self.local.read().ok()?.get(&(stage, partition)).cloned()
    }

    /// The HTTP address (`host:port`) of the instance the group assigned
    /// the partition to, if it advertises one.
    pub fn owner(&self, stage: Stage, partition: i32) -> Option<String> {
        self.owners.read().ok()?.get(&(stage, partition)).cloned()
    }

    /// The group's assignment as last described.
    pub fn set_owners(&self, owners: BTreeMap<(Stage, i32), String>) {
        if let Ok(mut o) = self.owners.write() {
            *o = owners;
        }
    }
}
