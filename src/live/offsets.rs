//! The next offset to read of each input partition: one owner.
//!
//! The durable copy is in the state (`Engine::commit` writes it in the same
//! RocksDB write batch as the state changes); `Offsets` is the copy in
//! memory, and only the pipeline moves it, right after that commit. The
//! consumer's callbacks (assignment, statistics) read it through an
//! `OffsetsView`, which cannot write.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use crate::engine::SourceOffset;

use super::source::InputMessage;

/// Topic, then partition: a lookup by `&str` needs no allocation (it runs
/// once per input message).
type Map = HashMap<String, HashMap<i32, i64>>;

/// The pipeline's offsets: read them, and advance them after a commit.
pub struct Offsets {
    shared: Arc<RwLock<Map>>,
}

/// A read-only handle on the offsets, for the consumer's callbacks.
#[derive(Clone)]
pub struct OffsetsView {
    shared: Arc<RwLock<Map>>,
}

impl Offsets {
    /// The offsets stored with the state.
    pub fn from_stored(stored: Vec<SourceOffset>) -> Offsets {
        let mut map = Map::new();
        for o in stored {
            map.entry(o.topic)
                .or_default()
                .insert(o.partition, o.next_offset);
        }
        Offsets {
            shared: Arc::new(RwLock::new(map)),
        }
    }

    pub fn view(&self) -> OffsetsView {
        OffsetsView {
            shared: self.shared.clone(),
        }
    }

    /// A message before the stored position was applied by an earlier run.
    /// Assignment starts every partition at its stored position, so this
    /// takes an offset reset (a recreated topic) to happen.
    pub fn already_applied(&self, m: &InputMessage) -> bool {
        next_of(&self.read(), &m.topic, m.partition).is_some_and(|next| m.offset < next)
    }

    /// The stored position of one partition: its next offset to read.
    fn stored(&self, topic: &str, partition: i32) -> Option<i64> {
        next_of(&self.read(), topic, partition)
    }

    /// Called with the offsets `Engine::commit` has just stored, never
    /// before: memory never runs ahead of the state.
    pub fn advance(&mut self, committed: &[SourceOffset]) {
        let mut map = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        for o in committed {
            let partitions = match map.get_mut(&o.topic) {
                Some(p) => p,
                None => map.entry(o.topic.clone()).or_default(),
            };
            partitions.insert(o.partition, o.next_offset);
        }
    }

    /// The stored offsets of those `partitions` the state has read.
    pub fn of<'a>(
        &self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<SourceOffset> {
        let view = self.view();
        partitions
            .into_iter()
            .filter_map(|(topic, partition)| {
                view.next(topic, partition).map(|next_offset| SourceOffset {
                    topic: topic.to_string(),
                    partition,
                    next_offset,
                })
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        self.shared.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.read().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl OffsetsView {
    /// The next offset to read of a partition, if the state has read it.
    pub fn next(&self, topic: &str, partition: i32) -> Option<i64> {
        let map = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        next_of(&map, topic, partition)
    }
}

/// A batch's partitions as its messages come, in runs of one partition:
/// each one's stored position is looked up, and its next offset kept,
/// once a run rather than once a message.
#[derive(Default)]
pub struct Positions<'m> {
    /// The partition of the current run and its stored position.
    run: Option<((&'m str, i32), Option<i64>)>,
    /// The last message read of the current run.
    last: Option<((&'m str, i32), i64)>,
    /// The next offset of each partition of the runs before.
    next: BTreeMap<(&'m str, i32), i64>,
}

impl<'m> Positions<'m> {
    /// Whether `m` is below its partition's stored position.
    pub fn already_applied(&mut self, offsets: &Offsets, m: &'m InputMessage) -> bool {
        let partition = (m.topic.as_str(), m.partition);
        let stored = match self.run {
            Some((p, stored)) if p == partition => stored,
            _ => {
                self.run
                    .insert((partition, offsets.stored(&m.topic, m.partition)))
                    .1
            }
        };
        stored.is_some_and(|next| m.offset < next)
    }

    /// `m` is applied (or dead-lettered): its partition reads on after it.
    pub fn read(&mut self, m: &'m InputMessage) {
        let partition = (m.topic.as_str(), m.partition);
        match &mut self.last {
            Some((p, offset)) if *p == partition => *offset = m.offset,
            _ => {
                if let Some((p, offset)) = self.last.replace((partition, m.offset)) {
                    self.next.insert(p, offset + 1);
                }
            }
        }
    }

    pub fn into_next(mut self) -> Vec<SourceOffset> {
        if let Some((p, offset)) = self.last {
            self.next.insert(p, offset + 1);
        }
        self.next
            .into_iter()
            .map(|((topic, partition), next_offset)| SourceOffset {
                topic: topic.to_string(),
                partition,
                next_offset,
            })
            .collect()
    }
}

fn next_of(map: &Map, topic: &str, partition: i32) -> Option<i64> {
    map.get(topic)?.get(&partition).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(topic: &str, partition: i32, next_offset: i64) -> SourceOffset {
        SourceOffset {
            topic: topic.into(),
            partition,
            next_offset,
        }
    }

    fn message(topic: &str, partition: i32, offset: i64) -> InputMessage {
        InputMessage {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            payload: Vec::new(),
        }
    }

    #[test]
    fn views_see_what_the_owner_advances() {
        let mut offsets = Offsets::from_stored(vec![offset("a", 0, 5)]);
        let view = offsets.view();
        assert_eq!(view.next("a", 0), Some(5));
        assert_eq!(view.next("a", 1), None);
        assert!(offsets.already_applied(&message("a", 0, 4)));
        assert!(!offsets.already_applied(&message("a", 0, 5)));
        assert!(!offsets.already_applied(&message("a", 1, 0)));
        offsets.advance(&[offset("a", 0, 9), offset("a", 1, 2)]);
        assert_eq!(view.next("a", 0), Some(9));
        assert_eq!(
            offsets.of([("a", 1), ("b", 0)]),
            vec![offset("a", 1, 2)],
            "only partitions the state has read"
        );
        assert_eq!(offsets.len(), 2);
    }

    #[test]
    fn positions_follow_interleaved_runs_of_partitions() {
        let offsets = Offsets::from_stored(vec![offset("a", 0, 2), offset("b", 1, 7)]);
        let batch = [
            message("a", 0, 1),
            message("a", 0, 2),
            message("b", 0, 5),
            message("a", 0, 3),
            message("b", 1, 6),
            message("b", 1, 7),
            message("b", 0, 6),
        ];
        let mut positions = Positions::default();
        let mut skipped = Vec::new();
        for m in &batch {
            if positions.already_applied(&offsets, m) {
                skipped.push((m.topic.as_str(), m.partition, m.offset));
            } else {
                positions.read(m);
            }
        }
        assert_eq!(skipped, [("a", 0, 1), ("b", 1, 6)]);
        assert_eq!(
            positions.into_next(),
            [offset("a", 0, 4), offset("b", 0, 7), offset("b", 1, 8)]
        );
    }
}
