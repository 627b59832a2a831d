//! Reads of RocksDB made ahead, on another thread, for the store to use
//! instead of reading again (`Store::hint`).
//!
//! Replay's engine thread is its bound, and a fifth of its work was
//! RocksDB point reads, mostly of keys the event itself names (its id, its
//! cookie, its customer). The decoding thread knows those keys first, so
//! it reads them, and the engine thread finds the answers waiting. An
//! answer is only used while it is still true: the store counts every
//! change of what RocksDB holds or of the batch landing in front of it
//! (`Version`), and an answer read under an older count is ignored. Keys
//! written since are found in the overlay first, as always.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{ReadOptions, DB};

use super::keys::Key;
use super::store::{cf_handle, Cf};

/// The count of changes to what a read that misses the overlay finds
/// (RocksDB's content, the landing batch). Only the store moves it.
#[derive(Clone, Default)]
pub struct Version(Arc<AtomicU64>);

impl Version {
    pub(super) fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Called before the change: a read that began earlier and ends after
    /// it is then counted as older.
    pub(super) fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A value as RocksDB held it at `version`; `None`: absent.
pub struct Hint {
    pub(super) cf: Cf,
    pub(super) key: Key,
    pub(super) version: u64,
    pub(super) value: Option<Vec<u8>>,
}

/// Reads RocksDB ahead of the store's owner, from another thread.
pub struct Prefetcher {
    pub(super) db: Arc<DB>,
    pub(super) version: Version,
    /// Made once, as the store's own point reads are.
    pub(super) read: ReadOptions,
}

impl Prefetcher {
    /// The store's count of changes now (see `Version`).
    pub fn version(&self) -> u64 {
        self.version.now()
    }

    /// What a read of `key` that misses the overlay would find now, or
    /// `None` when RocksDB cannot say (the store's own read will report
    /// the error). Resident families are in memory: never read ahead.
    pub fn fetch(&self, cf: Cf, key: impl Into<Key>) -> Option<Hint> {
        let key = key.into();
        if cf.resident() {
            return None;
        }
        // The version first: a change that lands during the read then
        // makes the answer older than the store's count.
        let version = self.version.now();
        let value = self
            .db
            .get_pinned_cf_opt(cf_handle(&self.db, cf), &key, &self.read)
            .ok()?
            .map(|v| v.to_vec());
        Some(Hint {
            cf,
            key,
            version,
            value,
        })
    }
}

impl Hint {
    /// The value read; `None`: absent.
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }

    /// The value this answers for `(cf, key)`, if it does and is still
    /// true at `version`: `Some(None)` is "absent".
    pub(super) fn answer(&self, cf: Cf, key: &[u8], version: u64) -> Option<Option<&[u8]>> {
        (self.cf == cf && self.version == version && self.key.as_slice() == key)
            .then_some(self.value.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use crate::state::store::open_gate;
    use crate::state::{Cf, Store};

    fn value(store: &Store, key: &[u8]) -> Option<Vec<u8>> {
        store.get(Cf::Links, key).unwrap()
    }

    #[test]
    fn an_answer_read_ahead_is_used_only_while_it_is_true() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.put(Cf::Links, b"k".to_vec(), b"disk".to_vec());
        store.commit().unwrap();
        let ahead = store.prefetcher();

        // True: RocksDB holds what was read. A forged answer shows the
        // store uses it rather than reading again.
        let mut hint = ahead.fetch(Cf::Links, b"k".to_vec()).unwrap();
        assert_eq!(hint.value(), Some(&b"disk"[..]));
        hint.value = Some(b"read ahead".to_vec());
        store.hint(vec![hint]);
        assert_eq!(value(&store, b"k").as_deref(), Some(&b"read ahead"[..]));
        // Only for its own key and family.
        assert_eq!(value(&store, b"other"), None);
        assert_eq!(store.get(Cf::Customers, b"k").unwrap(), None);

        // The overlay comes first.
        store.put(Cf::Links, b"k".to_vec(), b"new".to_vec());
        assert_eq!(value(&store, b"k").as_deref(), Some(&b"new"[..]));

        // A commit, in place or in the background, makes earlier answers
        // older than the state: read again.
        for background in [false, true] {
            let mut stale = ahead.fetch(Cf::Links, b"k".to_vec()).unwrap();
            stale.value = Some(b"stale".to_vec());
            store.put(Cf::Links, b"k".to_vec(), b"newer".to_vec());
            if background {
                store.commit_in_background(open_gate()).unwrap();
            } else {
                store.commit().unwrap();
            }
            store.hint(vec![stale]);
            assert_eq!(value(&store, b"k").as_deref(), Some(&b"newer"[..]));
            store.wait_landed().unwrap();
            assert_eq!(value(&store, b"k").as_deref(), Some(&b"newer"[..]));
        }

        // Read while a batch lands, used after it landed: read again.
        store.put(Cf::Links, b"gone".to_vec(), b"x".to_vec());
        store.commit_in_background(open_gate()).unwrap();
        let mut during = ahead.fetch(Cf::Links, b"gone".to_vec()).unwrap();
        during.value = None;
        store.wait_landed().unwrap();
        store.hint(vec![during]);
        assert_eq!(value(&store, b"gone").as_deref(), Some(&b"x"[..]));

        // Resident families are never read ahead.
        assert!(ahead.fetch(Cf::Timers, b"t".to_vec()).is_none());
    }
}
