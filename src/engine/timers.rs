//! The pending `viewed_not_bought` checks, by due time: everything about the
//! `Timers` column family lives here.
//!
//! A timer key is (check time, crm_id, product_id), so the key order is the
//! contract's firing order. The store holds the family resident in memory,
//! so finding the next due timer is a map lookup, not a disk scan.
//!
//! Two regions: at or above `swept_to` the timers wait in the store, and
//! `earliest_due` bounds them from below (scans start there, never stepping
//! over the deleted keys of fired checks again). Below `swept_to` every
//! check due has been handled; a check scheduled there (a late or stitched
//! view) is *overdue*: it goes on a heap too, and fires before anything the
//! store holds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::event::Millis;
use crate::state::keys::{push_ts, read_timer, timer_key, Key};
use crate::state::{Cf, StateError, Store};

/// A pending check: (due time, crm_id, product_id), ordered as it fires.
pub type Due = (Millis, String, String);

#[derive(Debug)]
pub struct Timers {
    /// No timer at or above `swept_to` is due before this; lowered by every
    /// timer scheduled there, raised as due timers are handled.
    earliest_due: Millis,
    /// Every check due before this has been handled.
    swept_to: Millis,
    /// Timers scheduled below `swept_to`, smallest first.
    overdue: BinaryHeap<Reverse<Due>>,
}

impl Timers {
    /// Reads where the first pending timer is.
    pub fn open(store: &Store) -> Result<Timers, StateError> {
        Ok(Timers {
            earliest_due: first_at_or_after(store, Millis::MIN)?,
            swept_to: Millis::MIN,
            overdue: BinaryHeap::new(),
        })
    }

    /// Files a timer due at `at`.
    pub fn schedule(&mut self, store: &mut Store, at: Millis, crm_id: &str, product_id: &str) {
        store.put(Cf::Timers, timer_key(at, crm_id, product_id), Vec::new());
        if at < self.swept_to {
            self.overdue
                .push(Reverse((at, crm_id.to_string(), product_id.to_string())));
        } else {
            self.earliest_due = self.earliest_due.min(at);
        }
    }

    /// Removes the timer due at `at` (absent is fine: a stale timer of a
    /// session that moved has already gone).
    pub fn cancel(&mut self, store: &mut Store, at: Millis, crm_id: &str, product_id: &str) {
        store.delete(Cf::Timers, timer_key(at, crm_id, product_id));
    }

    /// Moves a timer from `from` to a later `to` (a session whose check
    /// moved while its timer waited).
    pub fn refile(
        &mut self,
        store: &mut Store,
        from: Millis,
        to: Millis,
        crm_id: &str,
        product_id: &str,
    ) {
        self.cancel(store, from, crm_id, product_id);
        self.schedule(store, to, crm_id, product_id);
    }

    /// The next timer due at or before `watermark`, in the contract's order
    /// (overdue ones first: they all lie below the rest); `None` when none
    /// is left. The caller handles each (fires, refiles or cancels it)
    /// before asking again, then calls `swept`.
    pub fn due_until(
        &mut self,
        store: &Store,
        watermark: Millis,
    ) -> Result<Option<Due>, StateError> {
        if let Some(Reverse(due)) = self.overdue.pop() {
            return Ok(Some(due));
        }
        if watermark < self.earliest_due {
            return Ok(None);
        }
        let upper = watermark.checked_add(1).map(ts_key);
        let first = store.scan(Cf::Timers, &ts_key(self.earliest_due), upper.as_deref(), 1)?;
        let Some((key, _)) = first.first() else {
            return Ok(None);
        };
        let due = read_timer(key).ok_or_else(corrupt)?;
        // Below the timer handed out there is nothing left to find.
        self.earliest_due = due.0;
        Ok(Some(due))
    }

    /// Records that every timer up to `watermark` was handled.
    pub fn swept(&mut self, store: &Store, watermark: Millis) -> Result<(), StateError> {
        self.swept_to = self.swept_to.max(watermark.saturating_add(1));
        // Still a lower bound when above the swept region: no lookup.
        if self.earliest_due < self.swept_to {
            self.earliest_due = first_at_or_after(store, self.swept_to)?;
        }
        Ok(())
    }
}

fn ts_key(ts: Millis) -> Key {
    let mut k = Key::new();
    push_ts(&mut k, ts);
    k
}

fn corrupt() -> StateError {
    StateError::Corrupt {
        cf: Cf::Timers.name(),
        detail: "undecodable timer key".into(),
    }
}

/// The due time of the first timer at or after `from`, or `Millis::MAX`.
fn first_at_or_after(store: &Store, from: Millis) -> Result<Millis, StateError> {
    match store.scan(Cf::Timers, &ts_key(from), None, 1)?.first() {
        Some((key, _)) => read_timer(key).map(|d| d.0).ok_or_else(corrupt),
        None => Ok(Millis::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(t: &mut Timers, store: &mut Store, w: Millis) -> Vec<Due> {
        let mut out = Vec::new();
        while let Some(due) = t.due_until(store, w).unwrap() {
            t.cancel(store, due.0, &due.1, &due.2);
            out.push(due);
        }
        t.swept(store, w).unwrap();
        out
    }

    fn d(at: Millis, c: &str, p: &str) -> Due {
        (at, c.into(), p.into())
    }

    #[test]
    fn due_timers_come_in_time_then_crm_then_product_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut t = Timers::open(&store).unwrap();
        t.schedule(&mut store, 20, "B", "P1");
        t.schedule(&mut store, 10, "B", "P2");
        t.schedule(&mut store, 20, "A", "P9");
        t.schedule(&mut store, 30, "A", "P1");
        let got = drain(&mut t, &mut store, 25);
        assert_eq!(
            got,
            vec![d(10, "B", "P2"), d(20, "A", "P9"), d(20, "B", "P1")]
        );
        assert_eq!(drain(&mut t, &mut store, 30), vec![d(30, "A", "P1")]);
        assert!(drain(&mut t, &mut store, 1000).is_empty());
    }

    #[test]
    fn a_timer_scheduled_below_the_swept_region_is_overdue_and_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut t = Timers::open(&store).unwrap();
        t.schedule(&mut store, 100, "A", "P");
        assert!(drain(&mut t, &mut store, 50).is_empty());
        t.schedule(&mut store, 40, "Z", "P");
        t.schedule(&mut store, 30, "Y", "P");
        let got = drain(&mut t, &mut store, 100);
        assert_eq!(
            got,
            vec![d(30, "Y", "P"), d(40, "Z", "P"), d(100, "A", "P")]
        );
    }

    #[test]
    fn a_refiled_timer_fires_in_its_new_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut t = Timers::open(&store).unwrap();
        t.schedule(&mut store, 10, "A", "P");
        t.schedule(&mut store, 15, "B", "P");
        let first = t.due_until(&store, 100).unwrap().unwrap();
        assert_eq!(first, d(10, "A", "P"));
        t.refile(&mut store, 10, 20, "A", "P");
        let rest = drain(&mut t, &mut store, 100);
        assert_eq!(rest, vec![d(15, "B", "P"), d(20, "A", "P")]);
    }

    #[test]
    fn pending_timers_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = Store::open(dir.path()).unwrap();
            let mut t = Timers::open(&store).unwrap();
            t.schedule(&mut store, 7, "A", "P");
            store.commit().unwrap();
        }
        let mut store = Store::open(dir.path()).unwrap();
        let mut t = Timers::open(&store).unwrap();
        assert_eq!(drain(&mut t, &mut store, 7), vec![d(7, "A", "P")]);
    }
}
