//! Exactly-once output (`kafka.exactly_once`; docs/exactly-once.md has the
//! whole argument, crash point by crash point).
//!
//! Each batch's output and its next input offsets go in one Kafka
//! transaction; the RocksDB batch with the same offsets is committed after
//! it. So the state may trail the group's committed offsets, by the one
//! batch whose transaction committed when the process died before its
//! RocksDB write. On assignment the consumer reads the group's committed
//! offsets (`GroupPosition`), and the range between the state's offsets and
//! them is re-applied with its output muted (`Recovery`): the engine is
//! deterministic, so it gives the state the transaction's output came from.
//!
//! Two things make that re-application exact:
//! - the order of a batch: under exactly-once each batch is applied in
//!   `canonical_order` (by topic and partition, each partition in offset
//!   order), a function of the set of messages alone, so the batch the
//!   transaction committed is applied again in the same order;
//! - what is not in the log: the idle advance of the watermark follows the
//!   wall clock. Each transaction records the watermark it left in the
//!   metadata of its offsets (`TxnRecord`), and the recovery advances to
//!   it, muted, so the checks it fired are fired (and muted) again instead
//!   of firing a second time later.

use std::collections::BTreeMap;

use rdkafka::consumer::ConsumerGroupMetadata;

use crate::engine::SourceOffset;
use crate::event::Millis;

use super::offsets::Offsets;
use super::source::InputMessage;
use super::LiveError;

/// What every offset a transaction commits carries, in its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnRecord {
    /// The watermark the transaction's batch (or idle advance) left.
    pub watermark: Option<Millis>,
    /// The first offset of this partition the batch read (its next offset
    /// for a partition it did not read): where a new state that starts
    /// from the group's position re-applies the last batch from.
    pub start: i64,
}

/// Names the format, so that metadata committed by anything else (another
/// tool, pretext without exactly-once) is never taken for a record.
const RECORD_TAG: &str = "pretext-eos/1";

impl TxnRecord {
    pub fn encode(&self) -> String {
        let w = self.watermark.map_or("-".to_string(), |w| w.to_string());
        format!("{RECORD_TAG} w={w} s={}", self.start)
    }

    /// The record in an offset's metadata; `None` for anything else.
    pub fn decode(metadata: &str) -> Option<TxnRecord> {
        let mut parts = metadata.split(' ');
        if parts.next()? != RECORD_TAG {
            return None;
        }
        let w = parts.next()?.strip_prefix("w=")?;
        let s = parts.next()?.strip_prefix("s=")?;
        if parts.next().is_some() {
            return None;
        }
        let watermark = match w {
            "-" => None,
            w => Some(w.parse().ok()?),
        };
        Some(TxnRecord {
            watermark,
            start: s.parse().ok()?,
        })
    }
}

/// A next input offset committed in a transaction, with its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOffset {
    pub offset: SourceOffset,
    pub record: TxnRecord,
}

/// A partition's committed offset in the group, as found on assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPosition {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub record: Option<TxnRecord>,
}

/// The consumer's group metadata (member, generation), which a transaction
/// commits offsets under: a member fenced out of the group by a rebalance
/// cannot commit a batch it no longer owns (KIP-447).
pub struct GroupMetadata(pub(crate) ConsumerGroupMetadata);

/// Under exactly-once, the order a batch is applied in: by topic and
/// partition, each partition in the order read (offset order). It depends
/// on the set of messages only, not on how the fetches interleaved, so a
/// batch re-applied after a crash is applied exactly as the first time.
pub fn canonical_order(batch: &mut [InputMessage]) {
    // Stable: a partition's messages keep their offset order.
    batch.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
}

/// The first offset of each partition in a batch, not yet applied.
pub fn batch_starts(batch: &[InputMessage], offsets: &Offsets) -> BTreeMap<(String, i32), i64> {
    let mut starts = BTreeMap::new();
    for m in batch.iter().filter(|m| !offsets.already_applied(m)) {
        starts
            .entry((m.topic.clone(), m.partition))
            .or_insert(m.offset);
    }
    starts
}

/// The offsets of a transaction: `next` (the batch's next offsets, or the
/// stored positions for an idle advance), each with its record.
pub fn txn_offsets(
    next: &[SourceOffset],
    starts: &BTreeMap<(String, i32), i64>,
    watermark: Option<Millis>,
) -> Vec<TxnOffset> {
    next.iter()
        .map(|o| TxnOffset {
            record: TxnRecord {
                watermark,
                start: starts
                    .get(&(o.topic.clone(), o.partition))
                    .copied()
                    .unwrap_or(o.next_offset),
            },
            offset: o.clone(),
        })
        .collect()
}

/// One partition the state trails the group on.
#[derive(Debug)]
struct Gap {
    /// The group's committed offset: output below it is already visible.
    committed: i64,
    /// Every message below `committed` has been collected.
    complete: bool,
}

/// Re-applying what committed transactions hold and the state lacks, with
/// the output muted. Fed with the group's positions on each assignment,
/// then with the batches read until every gap is collected.
#[derive(Debug, Default)]
pub struct Recovery {
    gaps: BTreeMap<(String, i32), Gap>,
    /// The highest watermark a committed transaction recorded.
    watermark: Option<Millis>,
    /// Collected messages of the gaps, not applied yet.
    pending: Vec<InputMessage>,
    /// Partitions whose messages were dropped while the gaps were being
    /// collected, with the first offset dropped: read again from there.
    rewind: BTreeMap<(String, i32), i64>,
    /// A gap trails by more than a transaction's batch: it is applied in
    /// batches as it comes (the original boundaries are unknown anyway).
    /// Otherwise the gaps are one batch of an earlier run, which fitted in
    /// memory then: collected whole, whatever `kafka.batch_max_messages`
    /// says now, and applied in one go, as then.
    behind: bool,
}

/// What is left to do once every gap is re-applied.
pub struct Finish {
    /// Advance the watermark to this, muted (an idle advance whose
    /// transaction committed before its state did).
    pub watermark: Option<Millis>,
    /// Seek these partitions back to these offsets.
    pub rewind: Vec<SourceOffset>,
}

impl Recovery {
    /// Takes in the group's positions of newly assigned partitions. A
    /// partition whose committed offset is past the state's (or which the
    /// state has never read) is a gap. Returns the partitions whose state
    /// trails by more than the one batch of a transaction (a state that was
    /// lost or restored from a backup): re-applied too, but not necessarily
    /// in the batches the transactions had (docs/exactly-once.md).
    pub fn note(&mut self, positions: Vec<GroupPosition>, offsets: &Offsets) -> Vec<GroupPosition> {
        let mut behind = Vec::new();
        for p in positions {
            if let Some(w) = p.record.and_then(|r| r.watermark) {
                self.watermark = Some(self.watermark.map_or(w, |x| x.max(w)));
            }
            let stored = offsets.view().next(&p.topic, p.partition);
            if stored.is_some_and(|s| s >= p.committed) {
                continue;
            }
            let start = p.record.map(|r| r.start);
            if stored.is_none_or(|s| start.is_none_or(|start| start != s)) {
                self.behind = true;
                behind.push(p.clone());
            }
            self.gaps.insert(
                (p.topic, p.partition),
                Gap {
                    committed: p.committed,
                    complete: false,
                },
            );
        }
        behind
    }

    /// Whether messages are still being collected.
    pub fn collecting(&self) -> bool {
        !self.gaps.is_empty()
    }

    /// Keeps a batch's messages that belong to a gap; drops the others
    /// (noting their partitions to read again). A gap whose messages cannot
    /// all be read any more (deleted by retention) is fatal: re-applying
    /// only part of it would give another state than the output's.
    pub fn take(&mut self, batch: Vec<InputMessage>) -> Result<(), LiveError> {
        for m in batch {
            let key = (m.topic.clone(), m.partition);
            let Some(gap) = self.gaps.get_mut(&key) else {
                self.rewind.entry(key).or_insert(m.offset);
                continue;
            };
            if m.offset < gap.committed {
                gap.complete |= m.offset + 1 >= gap.committed;
                self.pending.push(m);
            } else if gap.complete {
                self.rewind.entry(key).or_insert(m.offset);
            } else {
                return Err(LiveError::GapLost {
                    topic: m.topic,
                    partition: m.partition,
                    committed: gap.committed,
                    offset: m.offset,
                });
            }
        }
        Ok(())
    }

    /// Whether the collected messages are to be applied now: every gap is
    /// complete, or (a state further behind, applied in batches) `max` are
    /// collected.
    pub fn ready(&self, max: usize) -> bool {
        !self.pending.is_empty()
            && ((self.behind && self.pending.len() >= max)
                || self.gaps.values().all(|g| g.complete))
    }

    /// The collected messages, in canonical order; complete gaps are done.
    pub fn drain(&mut self) -> Vec<InputMessage> {
        self.gaps.retain(|_, g| !g.complete);
        let mut chunk = std::mem::take(&mut self.pending);
        canonical_order(&mut chunk);
        chunk
    }

    /// Once no gap is left: what remains to do (once).
    pub fn finish(&mut self) -> Finish {
        self.behind = false;
        Finish {
            watermark: self.watermark.take(),
            rewind: std::mem::take(&mut self.rewind)
                .into_iter()
                .map(|((topic, partition), next_offset)| SourceOffset {
                    topic,
                    partition,
                    next_offset,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(partition: i32, offset: i64) -> InputMessage {
        InputMessage {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            payload: Vec::new(),
        }
    }

    fn position(partition: i32, committed: i64, start: i64) -> GroupPosition {
        GroupPosition {
            topic: "t".into(),
            partition,
            committed,
            record: Some(TxnRecord {
                watermark: Some(7),
                start,
            }),
        }
    }

    #[test]
    fn records_round_trip_and_foreign_metadata_is_not_one() {
        for r in [
            TxnRecord {
                watermark: Some(1_795_341_600_000),
                start: 42,
            },
            TxnRecord {
                watermark: None,
                start: 0,
            },
        ] {
            assert_eq!(TxnRecord::decode(&r.encode()), Some(r));
        }
        for foreign in [
            "",
            "w=1 s=2",
            "pretext-eos/1 w=x s=2",
            "pretext-eos/1 w=1 s=2 z",
        ] {
            assert_eq!(TxnRecord::decode(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn canonical_order_depends_on_the_set_only() {
        let mut a = vec![msg(1, 5), msg(0, 3), msg(1, 6), msg(0, 4)];
        let mut b = vec![msg(0, 3), msg(1, 5), msg(0, 4), msg(1, 6)];
        canonical_order(&mut a);
        canonical_order(&mut b);
        let key = |v: &[InputMessage]| {
            v.iter()
                .map(|m| (m.partition, m.offset))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), vec![(0, 3), (0, 4), (1, 5), (1, 6)]);
        assert_eq!(key(&a), key(&b));
    }

    #[test]
    fn a_gap_is_collected_whole_and_what_follows_is_read_again() {
        let offsets = Offsets::from_stored(vec![
            SourceOffset {
                topic: "t".into(),
                partition: 0,
                next_offset: 10,
            },
            SourceOffset {
                topic: "t".into(),
                partition: 1,
                next_offset: 4,
            },
        ]);
        let mut r = Recovery::default();
        // Partition 0 trails by one batch [10, 13); partition 1 is level.
        let behind = r.note(vec![position(0, 13, 10), position(1, 4, 2)], &offsets);
        assert!(behind.is_empty(), "one batch behind is the expected case");
        assert!(r.collecting());
        r.take(vec![msg(1, 4), msg(0, 10), msg(0, 11)]).unwrap();
        assert!(!r.ready(100), "offset 12 is still to come");
        assert!(
            !r.ready(2),
            "one batch is applied whole, whatever the batch size now"
        );
        r.take(vec![msg(0, 12), msg(0, 13)]).unwrap();
        assert!(r.ready(100));
        let chunk = r.drain();
        assert_eq!(
            chunk.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert!(!r.collecting());
        let finish = r.finish();
        assert_eq!(finish.watermark, Some(7));
        let rewind: Vec<_> = finish
            .rewind
            .iter()
            .map(|o| (o.partition, o.next_offset))
            .collect();
        assert_eq!(rewind, [(0, 13), (1, 4)], "from the first message dropped");
    }

    #[test]
    fn a_state_further_behind_is_reported_and_a_lost_gap_is_fatal() {
        let offsets = Offsets::from_stored(Vec::new());
        let mut r = Recovery::default();
        let behind = r.note(vec![position(0, 50, 40)], &offsets);
        assert_eq!(behind.len(), 1, "a new state trails by more than a batch");
        // Retention deleted the start of the gap: the first message read is
        // already past it.
        assert!(matches!(
            r.take(vec![msg(0, 60)]),
            Err(LiveError::GapLost { committed: 50, .. })
        ));
    }
}
