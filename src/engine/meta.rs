//! The engine's own entries in the `Meta` family, and their one codec:
//! numbers (watermark inputs, counters, horizons) as 8 bytes big-endian,
//! the configuration fingerprint as text, and the next input offset of each
//! partition under `offset/<topic><partition>`.

use crate::state::keys::{prefix_end, push_str, read_str, Key};
use crate::state::{Cf, StateError, Store};

/// A number the engine keeps across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    /// The highest applied event time (m of the contract).
    MaxTs,
    /// The watermark as the idle advance left it.
    IdleWatermark,
    /// Checks pending now.
    PendingChecks,
    /// The hour of event time the dedup horizon last moved in.
    GcHour,
    /// Applied event times below this no longer make a duplicate.
    DedupHorizon,
}

impl Num {
    pub fn key(self) -> &'static [u8] {
        match self {
            Num::MaxTs => b"max_ts",
            Num::IdleWatermark => b"idle_watermark",
            Num::PendingChecks => b"pending_checks",
            Num::GcHour => b"gc_hour",
            Num::DedupHorizon => b"dedup_horizon",
        }
    }
}

const FINGERPRINT: &[u8] = b"fingerprint";
const OFFSET_PREFIX: &[u8] = b"offset/";

/// The next offset to read of one input partition, stored with the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOffset {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

pub fn get(store: &Store, num: Num) -> Result<Option<i64>, StateError> {
    let Some(b) = store.get(Cf::Meta, num.key())? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = b.as_slice().try_into().map_err(|_| {
        corrupt(format!(
            "{} is {} bytes, expected 8",
            String::from_utf8_lossy(num.key()),
            b.len()
        ))
    })?;
    Ok(Some(i64::from_be_bytes(bytes)))
}

pub fn put(store: &mut Store, num: Num, value: i64) {
    store.put(Cf::Meta, num.key().to_vec(), value.to_be_bytes().to_vec());
}

pub fn fingerprint(store: &Store) -> Result<Option<Vec<u8>>, StateError> {
    store.get(Cf::Meta, FINGERPRINT)
}

pub fn put_fingerprint(store: &mut Store, fingerprint: &str) {
    store.put(
        Cf::Meta,
        FINGERPRINT.to_vec(),
        fingerprint.as_bytes().to_vec(),
    );
}

pub fn put_offset(store: &mut Store, o: &SourceOffset) {
    let mut key = Key::from_slice(OFFSET_PREFIX);
    push_str(&mut key, &o.topic);
    key.extend_from_slice(&o.partition.to_be_bytes());
    store.put(Cf::Meta, key, o.next_offset.to_be_bytes().to_vec());
}

/// Every input offset stored.
pub fn offsets(store: &Store) -> Result<Vec<SourceOffset>, StateError> {
    let end = prefix_end(OFFSET_PREFIX);
    let entries = store.scan(Cf::Meta, OFFSET_PREFIX, end.as_deref(), usize::MAX)?;
    entries
        .iter()
        .map(|(key, value)| parse_offset(key, value))
        .collect()
}

fn parse_offset(key: &[u8], value: &[u8]) -> Result<SourceOffset, StateError> {
    let bad = || corrupt("undecodable offset entry".into());
    let rest = &key[OFFSET_PREFIX.len()..];
    let (topic, rest) = read_str(rest).ok_or_else(bad)?;
    let partition = i32::from_be_bytes(rest.try_into().map_err(|_| bad())?);
    let next_offset = i64::from_be_bytes(value.try_into().map_err(|_| bad())?);
    Ok(SourceOffset {
        topic,
        partition,
        next_offset,
    })
}

fn corrupt(detail: String) -> StateError {
    StateError::Corrupt {
        cf: Cf::Meta.name(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_fingerprint_and_offsets_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(get(&store, Num::MaxTs).unwrap(), None);
        put(&mut store, Num::MaxTs, -5);
        put(&mut store, Num::GcHour, 7);
        put_fingerprint(&mut store, "inputs=a;group_id=g");
        let a = SourceOffset {
            topic: "a.b".into(),
            partition: 3,
            next_offset: 1813,
        };
        let b = SourceOffset {
            topic: "a".into(),
            partition: 0,
            next_offset: 0,
        };
        put_offset(&mut store, &a);
        put_offset(&mut store, &b);
        store.commit().unwrap();
        assert_eq!(get(&store, Num::MaxTs).unwrap(), Some(-5));
        assert_eq!(get(&store, Num::GcHour).unwrap(), Some(7));
        assert_eq!(
            fingerprint(&store).unwrap().as_deref(),
            Some(&b"inputs=a;group_id=g"[..])
        );
        let mut got = offsets(&store).unwrap();
        got.sort_by(|x, y| x.topic.cmp(&y.topic));
        assert_eq!(got, vec![b, a]);
    }
}
