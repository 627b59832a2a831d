//! Event-id deduplication (contract section 3) and its horizon.
//!
//! Ids are kept hashed (xxh3-128: a collision across a day of events is
//! negligible, and no id, which may embed a customer id, is stored) with
//! the times of the applied events that carried them. Ids expire without an
//! index: once per hour of event time the horizon moves to the highest
//! event time − `state.retention` − dedup window (by default retention is
//! infinite and the horizon never moves: an exact retry of an event, however
//! late it arrives, is a duplicate as the contract says); times below it no longer
//! count, and a compaction filter drops entries whose times all lie below
//! it. Readers ignore those times already, so when compaction runs never
//! changes a result, and a replay forgets exactly as live mode does.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::event::Millis;
use crate::state::keys::Key;
use crate::state::store::Expired;
use crate::state::{Cf, StateError, Store};

use super::meta::{self, Num};
use super::records::{decode, encode, load};

const HOUR: Millis = 3_600_000;

pub struct Dedup {
    window: Millis,
    late_bound: Millis,
    horizon: Millis,
    gc_hour: Millis,
    /// The horizon as the compaction filter sees it.
    published: Arc<AtomicI64>,
}

/// An event id looked up: its key and the times that still count.
pub struct Seen {
    key: Key,
    times: Vec<Millis>,
}

impl Dedup {
    /// The horizon shared with the store's compaction filter, which must
    /// exist before the store opens.
    pub fn shared_horizon() -> Arc<AtomicI64> {
        Arc::new(AtomicI64::new(Millis::MIN))
    }

    /// The compaction filter of `Dedup`, reading `horizon`.
    pub fn expiry(horizon: &Arc<AtomicI64>) -> (Cf, Expired) {
        let horizon = Arc::clone(horizon);
        let expired = move |value: &[u8]| entry_dead(value, horizon.load(Ordering::Relaxed));
        (Cf::Dedup, Box::new(expired))
    }

    /// Restores the horizon stored in `store`.
    pub fn open(
        store: &Store,
        window: Millis,
        late_bound: Millis,
        published: Arc<AtomicI64>,
    ) -> Result<Dedup, StateError> {
        let horizon = meta::get(store, Num::DedupHorizon)?.unwrap_or(Millis::MIN);
        published.store(horizon, Ordering::Relaxed);
        Ok(Dedup {
            window,
            late_bound,
            horizon,
            gc_hour: meta::get(store, Num::GcHour)?.unwrap_or(Millis::MIN),
            published,
        })
    }

    /// Looks the id up: `None` when the event is a duplicate.
    pub fn check(
        &self,
        store: &Store,
        event_id: &str,
        ts: Millis,
    ) -> Result<Option<Seen>, StateError> {
        let key = key(event_id);
        let mut times: Vec<Millis> = load(store, Cf::Dedup, &key)?.unwrap_or_default();
        times.retain(|&t| t >= self.horizon);
        if times.iter().any(|&t| t.abs_diff(ts) <= self.window as u64) {
            return Ok(None);
        }
        Ok(Some(Seen { key, times }))
    }

    /// Records an applied event's id and time.
    pub fn record(&self, store: &mut Store, mut seen: Seen, ts: Millis) {
        seen.times.push(ts);
        store.put(Cf::Dedup, seen.key, encode(&seen.times));
    }

    /// Once per hour of event time, moves the horizon: ids that no event
    /// at most `late_bound` behind the highest can duplicate any more stop counting.
    pub fn advance(&mut self, max_ts: Millis) {
        let hour = max_ts.div_euclid(HOUR);
        if hour <= self.gc_hour {
            return;
        }
        self.gc_hour = hour;
        self.horizon = max_ts
            .saturating_sub(self.late_bound)
            .saturating_sub(self.window);
        self.published.store(self.horizon, Ordering::Relaxed);
    }

    /// Stages the horizon for the next commit.
    pub fn save(&self, store: &mut Store) {
        meta::put(store, Num::GcHour, self.gc_hour);
        meta::put(store, Num::DedupHorizon, self.horizon);
    }
}

/// A `Dedup` value whose times all lie below `horizon`: no reader counts
/// it. An undecodable value is kept (and reported by the reader).
pub fn entry_dead(value: &[u8], horizon: Millis) -> bool {
    decode::<Vec<Millis>>(Cf::Dedup.name(), value).is_ok_and(|t| t.iter().all(|&t| t < horizon))
}

/// The stored horizon of a state, for comparing states as readers see them.
pub fn stored_horizon(store: &Store) -> Result<Millis, StateError> {
    Ok(meta::get(store, Num::DedupHorizon)?.unwrap_or(Millis::MIN))
}

pub(super) fn key(event_id: &str) -> Key {
    Key::from_slice(&xxhash_rust::xxh3::xxh3_128(event_id.as_bytes()).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_within_the_window_either_way_until_the_horizon_passes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut d = Dedup::open(&store, 10 * HOUR, 0, Dedup::shared_horizon()).unwrap();
        let seen = d.check(&store, "e1", 100 * HOUR).unwrap().unwrap();
        d.record(&mut store, seen, 100 * HOUR);
        assert!(d.check(&store, "e1", 110 * HOUR).unwrap().is_none());
        assert!(d.check(&store, "e1", 90 * HOUR).unwrap().is_none());
        assert!(d.check(&store, "e1", 110 * HOUR + 1).unwrap().is_some());
        assert!(d.check(&store, "e2", 100 * HOUR).unwrap().is_some());
        d.advance(111 * HOUR); // horizon 101h: the 100h time stops counting
        assert!(d.check(&store, "e1", 100 * HOUR).unwrap().is_some());
    }

    #[test]
    fn the_horizon_moves_once_per_hour_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let horizon = Dedup::shared_horizon();
        {
            let mut store = Store::open(dir.path()).unwrap();
            let mut d = Dedup::open(&store, HOUR, 0, horizon.clone()).unwrap();
            d.advance(5 * HOUR + 10);
            d.advance(5 * HOUR + 20); // same hour: stays
            assert_eq!(horizon.load(Ordering::Relaxed), 4 * HOUR + 10);
            d.save(&mut store);
            store.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let fresh = Dedup::shared_horizon();
        Dedup::open(&store, HOUR, 0, fresh.clone()).unwrap();
        assert_eq!(fresh.load(Ordering::Relaxed), 4 * HOUR + 10);
        assert_eq!(stored_horizon(&store).unwrap(), 4 * HOUR + 10);
        assert!(entry_dead(&encode(&vec![1, 2]), 3));
        assert!(!entry_dead(&encode(&vec![1, 5]), 3));
    }
}
