//! Where each stage partition's state is, for the queries of a scaled-out
//! instance (docs/scale-out.md, "Questions"): the readers of the
//! partitions it holds, and the HTTP address of the instance that holds
//! each other one, as the group's assignment says (refreshed by
//! `live::scaled::directory`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use crate::engine::routing::{partition_for, Stage};
use crate::state::Reader;

pub struct Placement {
    partitions: i32,
    local: RwLock<BTreeMap<(Stage, i32), Reader>>,
    owners: RwLock<BTreeMap<(Stage, i32), String>>,
    /// The addresses of the group's members, sorted: the ring standbys are
    /// placed on.
    members: RwLock<Vec<String>>,
}

impl Placement {
    pub fn new(partitions: u32) -> Placement {
        Placement {
            partitions: partitions.clamp(1, i32::MAX as u32) as i32,
            local: RwLock::new(BTreeMap::new()),
            owners: RwLock::new(BTreeMap::new()),
            members: RwLock::new(Vec::new()),
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

    /// The group's assignment and members as last described.
    pub fn set_owners(&self, owners: BTreeMap<(Stage, i32), String>, mut members: Vec<String>) {
        members.sort();
        members.dedup();
        if let Ok(mut o) = self.owners.write() {
            *o = owners;
        }
        if let Ok(mut m) = self.members.write() {
            *m = members;
        }
    }

    /// The partitions the member at `me` keeps standby copies of, with
    /// `replicas` copies of each: a partition's copies are on the members
    /// that follow its owner in the sorted ring of members, so each member
    /// decides its share alone, and the same way as every other.
    pub fn standby_of(&self, me: &str, replicas: u32) -> BTreeSet<(Stage, i32)> {
        let (Ok(owners), Ok(members)) = (self.owners.read(), self.members.read()) else {
            return BTreeSet::new();
        };
        let mut mine = BTreeSet::new();
        for (&partition, owner) in owners.iter() {
            let Some(at) = members.iter().position(|m| m == owner) else {
                continue;
            };
            let copies = (replicas as usize).min(members.len().saturating_sub(1));
            let holds = (1..=copies).any(|j| members[(at + j) % members.len()] == me);
            if holds {
                mine.insert(partition);
            }
        }
        mine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standbys_follow_their_owner_on_the_ring_and_never_are_it() {
        let placement = Placement::new(4);
        let owners = [(0, "a"), (1, "b"), (2, "c"), (3, "a")]
            .into_iter()
            .map(|(p, m)| ((Stage::Customer, p), m.to_string()))
            .collect();
        placement.set_owners(owners, vec!["c".into(), "a".into(), "b".into()]);
        let of = |me, n| -> Vec<i32> {
            placement
                .standby_of(me, n)
                .into_iter()
                .map(|(_, p)| p)
                .collect()
        };
        assert_eq!(of("b", 1), vec![0, 3]);
        assert_eq!(of("c", 1), vec![1]);
        assert_eq!(of("a", 1), vec![2]);
        // More copies than other members: each other member has one.
        assert_eq!(of("a", 5), vec![1, 2]);
    }
}
