//! Decoded records held across batches, written back at commit.
//!
//! The customer and identity stages read, change and rewrite the same few
//! records event after event (a customer's interest in a product gains a
//! view per view; its customer record is touched by each). Through the
//! store alone each of those is a RocksDB or overlay read, a decode and an
//! encode. Here the decoded record stays in memory: a change is made to it
//! in place of the copy, and it is encoded once, when the batch commits
//! (`write_back` hands the changed records to the store's overlay just
//! before its atomic write batch). So the state on disk is still, at any
//! moment, the state as of a committed batch; only the copy in memory runs
//! ahead. Absent records are cached too (a cookie with no link is looked up
//! on each of its views).
//!
//! After a commit every entry is clean; `trim` then bounds memory by
//! dropping what the last batch did not touch, or everything.

use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::{Cf, StateError, Store};

use super::records::{encode, load, Customer, Interest, KeptEvents, Link};

/// What an entry costs besides its record: the key's hash slot, its
/// allocation and the slot's fields.
const SLOT_OVERHEAD: usize = 80;

/// Approximate heap bytes of a decoded record, for the memory bound.
pub trait Weigh {
    fn weight(&self) -> usize;
}

struct Slot<T> {
    /// `None`: absent (or deleted, when dirty).
    value: Option<T>,
    weight: usize,
    dirty: bool,
    /// The batch that last used it.
    used: u32,
}

/// The records of one column family (see the module doc).
pub struct Cached<T> {
    cf: Cf,
    slots: FxHashMap<Vec<u8>, Slot<T>>,
    weight: usize,
    dirty_weight: usize,
    batch: u32,
}

impl<T: Clone + Serialize + DeserializeOwned + Weigh> Cached<T> {
    pub fn new(cf: Cf) -> Cached<T> {
        Cached {
            cf,
            slots: FxHashMap::default(),
            weight: 0,
            dirty_weight: 0,
            batch: 0,
        }
    }

    /// The record at `key`, as of every change so far.
    pub fn get(&mut self, store: &Store, key: &[u8]) -> Result<Option<T>, StateError> {
        self.with(store, key, |v| v.cloned())
    }

    /// `f` of the record at `key`, without a copy.
    pub fn with<R>(
        &mut self,
        store: &Store,
        key: &[u8],
        f: impl FnOnce(Option<&T>) -> R,
    ) -> Result<R, StateError> {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.used = self.batch;
            return Ok(f(slot.value.as_ref()));
        }
        let value: Option<T> = load(store, self.cf, key)?;
        let result = f(value.as_ref());
        self.insert(key.to_vec(), value, false);
        Ok(result)
    }

    /// Changes the record at `key` in place: `f` gets `None` when it is
    /// absent, and may set it (or set `None` to delete it).
    pub fn update<R>(
        &mut self,
        store: &Store,
        key: &[u8],
        f: impl FnOnce(&mut Option<T>) -> R,
    ) -> Result<R, StateError> {
        if !self.slots.contains_key(key) {
            let value: Option<T> = load(store, self.cf, key)?;
            self.insert(key.to_vec(), value, false);
        }
        let Some(slot) = self.slots.get_mut(key) else {
            unreachable!("the slot was inserted above");
        };
        let result = f(&mut slot.value);
        let weight = SLOT_OVERHEAD + key.len() + slot.value.as_ref().map_or(0, Weigh::weight);
        self.weight = self.weight - slot.weight + weight;
        if slot.dirty {
            self.dirty_weight -= slot.weight;
        }
        self.dirty_weight += weight;
        slot.weight = weight;
        slot.dirty = true;
        slot.used = self.batch;
        Ok(result)
    }

    pub fn put(&mut self, key: Vec<u8>, value: T) {
        self.insert(key, Some(value), true);
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.insert(key, None, true);
    }

    fn insert(&mut self, key: Vec<u8>, value: Option<T>, dirty: bool) {
        let weight = SLOT_OVERHEAD + key.len() + value.as_ref().map_or(0, Weigh::weight);
        let slot = Slot {
            value,
            weight,
            dirty,
            used: self.batch,
        };
        self.weight += weight;
        if dirty {
            self.dirty_weight += weight;
        }
        if let Some(old) = self.slots.insert(key, slot) {
            self.weight -= old.weight;
            if old.dirty {
                self.dirty_weight -= old.weight;
            }
        }
    }

    /// Bytes of changed records not yet handed to the store.
    pub fn dirty_bytes(&self) -> usize {
        self.dirty_weight
    }

    /// Hands every changed record to the store's overlay, encoded; they are
    /// clean from then on.
    pub fn write_back(&mut self, store: &mut Store) {
        if self.dirty_weight == 0 {
            return;
        }
        for (key, slot) in self.slots.iter_mut().filter(|(_, s)| s.dirty) {
            slot.dirty = false;
            match &slot.value {
                Some(v) => store.put(self.cf, key.clone(), encode(v)),
                None => store.delete(self.cf, key.clone()),
            }
        }
        self.dirty_weight = 0;
    }

    /// Ends a batch (after `write_back` and the commit): beyond `budget`
    /// bytes, keeps only what this batch used, and if that is still too
    /// much, nothing.
    pub fn trim(&mut self, budget: usize) {
        debug_assert_eq!(self.dirty_weight, 0, "trim before write_back");
        if self.weight > budget {
            let batch = self.batch;
            self.slots.retain(|_, s| s.used == batch);
            self.weight = self.slots.values().map(|s| s.weight).sum();
        }
        if self.weight > budget {
            self.slots.clear();
            self.weight = 0;
        }
        self.batch = self.batch.wrapping_add(1);
    }
}

/// The cached families of the engine.
pub struct Records {
    pub customers: Cached<Customer>,
    pub interest: Cached<Interest>,
    pub links: Cached<Link>,
    pub anon: Cached<KeptEvents>,
}

/// Decoded records kept across batches, at most, split between the families
/// in `trim`: interest records are the largest and the most reused.
const CACHE_BYTES: usize = 48 << 20;

impl Default for Records {
    fn default() -> Self {
        Records {
            customers: Cached::new(Cf::Customers),
            interest: Cached::new(Cf::Interest),
            links: Cached::new(Cf::Links),
            anon: Cached::new(Cf::Anon),
        }
    }
}

impl Records {
    pub fn dirty_bytes(&self) -> usize {
        self.customers.dirty_bytes()
            + self.interest.dirty_bytes()
            + self.links.dirty_bytes()
            + self.anon.dirty_bytes()
    }

    pub fn write_back(&mut self, store: &mut Store) {
        self.customers.write_back(store);
        self.interest.write_back(store);
        self.links.write_back(store);
        self.anon.write_back(store);
    }

    pub fn trim(&mut self) {
        self.customers.trim(CACHE_BYTES / 4);
        self.interest.trim(CACHE_BYTES / 2);
        self.links.trim(CACHE_BYTES / 8);
        self.anon.trim(CACHE_BYTES / 8);
    }
}

impl Weigh for Customer {
    fn weight(&self) -> usize {
        64 + self
            .cookies
            .iter()
            .map(|c| c.cookie_id.len() + 48)
            .sum::<usize>()
            + 8 * self.fired.len()
    }
}

impl Weigh for Interest {
    fn weight(&self) -> usize {
        160 + 16 * self.views.len()
            + 8 * (self.purchases.len() + self.vnb_fired.len() + self.promo_fired.len())
            + 16 * self.open.len()
    }
}

impl Weigh for Link {
    fn weight(&self) -> usize {
        40 + self.crm_id.len()
    }
}

impl Weigh for KeptEvents {
    fn weight(&self) -> usize {
        24 + self
            .events
            .iter()
            .map(|e| match e {
                super::records::Kept::View { product_id, .. } => 64 + product_id.len(),
                super::records::Kept::Purchase {
                    product_ids,
                    order_id,
                    ..
                } => 64 + order_id.len() + product_ids.iter().map(|p| p.len() + 24).sum::<usize>(),
            })
            .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(crm: &str) -> Link {
        Link {
            crm_id: crm.into(),
            ts: 1,
        }
    }

    #[test]
    fn changes_reach_the_store_only_at_write_back_and_survive_a_trim() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut c: Cached<Link> = Cached::new(Cf::Links);
        assert_eq!(c.get(&store, b"k").unwrap(), None);
        c.put(b"k".to_vec(), link("A"));
        assert_eq!(c.get(&store, b"k").unwrap(), Some(link("A")));
        assert_eq!(store.get(Cf::Links, b"k").unwrap(), None);
        assert!(c.dirty_bytes() > 0);
        c.write_back(&mut store);
        store.commit().unwrap();
        assert_eq!(c.dirty_bytes(), 0);
        c.trim(0); // drops everything
        assert_eq!(c.get(&store, b"k").unwrap(), Some(link("A")));
        c.update(&store, b"k", |v| v.as_mut().map(|l| l.ts = 2))
            .unwrap();
        assert_eq!(c.get(&store, b"k").unwrap().map(|l| l.ts), Some(2));
        c.delete(b"k".to_vec());
        assert_eq!(c.get(&store, b"k").unwrap(), None);
        c.write_back(&mut store);
        store.commit().unwrap();
        c.trim(0);
        assert_eq!(c.get(&store, b"k").unwrap(), None);
        assert!(store.committed_keys(Cf::Links).unwrap().is_empty());
    }

    #[test]
    fn a_trim_keeps_what_the_last_batch_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut c: Cached<Link> = Cached::new(Cf::Links);
        c.get(&store, b"old").unwrap();
        c.trim(usize::MAX); // next batch
        c.get(&store, b"new").unwrap();
        let both = c.weight;
        c.trim(both - 1);
        assert_eq!(c.slots.len(), 1);
        assert!(c.slots.contains_key(&b"new"[..]));
    }
}
