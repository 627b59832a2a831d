//! The uncommitted writes of a batch, and how they reach RocksDB.
//!
//! A batch's writes are one `Overlay` per family. A commit hands them to
//! RocksDB as one atomic write batch, in key order; while a batch committed
//! in the background is being written, its overlays stay readable
//! (`Inflight`), so a read never depends on when the write finishes.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use rocksdb::{WriteBatch, WriteOptions, DB};
use rustc_hash::FxHashMap;

use super::store::{cf_handle, Cf, Entries, StateError};

/// What an overlay entry costs besides its bytes (hash slot, vector headers,
/// allocator rounding), so that `uncommitted_bytes` tracks memory.
const ENTRY_OVERHEAD: usize = 64;

/// One family's uncommitted writes; `None` is a deletion.
pub(super) struct Overlay {
    pub(super) writes: FxHashMap<Vec<u8>, Option<Vec<u8>>>,
    /// The keys of `writes` in order, for scanned families only.
    order: Option<BTreeSet<Vec<u8>>>,
}

impl Overlay {
    pub(super) fn for_cf(cf: Cf) -> Overlay {
        Overlay {
            writes: FxHashMap::default(),
            order: cf.scanned().then(BTreeSet::new),
        }
    }

    /// Records a write; returns the change in the bytes held.
    pub(super) fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> isize {
        let added = value.as_ref().map_or(0, Vec::len) as isize;
        if let Some(order) = &mut self.order {
            if !self.writes.contains_key(&key) {
                order.insert(key.clone());
            }
        }
        let key_cost = self.key_cost(key.len());
        match self.writes.insert(key, value) {
            Some(old) => added - old.map_or(0, |v| v.len()) as isize,
            None => added + key_cost,
        }
    }

    /// Drops the uncommitted write of `key`; returns the change in bytes.
    pub(super) fn forget(&mut self, key: &[u8]) -> isize {
        if let Some(order) = &mut self.order {
            order.remove(key);
        }
        match self.writes.remove(key) {
            Some(v) => -(self.key_cost(key.len()) + v.map_or(0, |v| v.len()) as isize),
            None => 0,
        }
    }

    /// What an entry costs besides its value: the key, once more when it is
    /// also kept in order, and the per-entry overhead.
    fn key_cost(&self, key_len: usize) -> isize {
        (key_len * (1 + self.order.is_some() as usize) + ENTRY_OVERHEAD) as isize
    }

    /// Entries with `lower <= key < upper`, in key order.
    pub(super) fn range<'a>(
        &'a self,
        lower: &'a [u8],
        upper: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let upper = upper.map_or(Bound::Unbounded, Bound::Excluded);
        self.order
            .iter()
            .flat_map(move |o| o.range::<[u8], _>((Bound::Included(lower), upper)))
            .map(|k| {
                let v = self.writes.get(k).and_then(|v| v.as_deref());
                (k.as_slice(), v)
            })
    }
}

/// Merges a RocksDB iterator with the overlay's range: the overlay wins on
/// equal keys and its deletions hide the disk entry.
pub(super) fn merge<'a, D, O>(
    cf: Cf,
    mut disk: D,
    mut overlay: O,
    limit: usize,
) -> Result<Entries, StateError>
where
    D: Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
    O: Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
{
    let mut next_disk = || {
        disk.next().transpose().map_err(|source| StateError::Read {
            cf: cf.name(),
            source,
        })
    };
    let mut d = next_disk()?;
    let mut o = overlay.next();
    let mut out = Vec::new();
    while out.len() < limit {
        let order = match (&d, &o) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((dk, _)), Some((ok, _))) => (**dk).cmp(*ok),
        };
        if order == std::cmp::Ordering::Less {
            if let Some((k, v)) = d.take() {
                out.push((k.into_vec(), v.into_vec()));
            }
            d = next_disk()?;
            continue;
        }
        if order == std::cmp::Ordering::Equal {
            d = next_disk()?;
        }
        if let Some((k, Some(v))) = o {
            out.push((k.to_vec(), v.to_vec()));
        }
        o = overlay.next();
    }
    Ok(out)
}

/// A batch handed to a thread that writes it, not yet known to be written.
pub(super) struct Inflight {
    pub(super) overlays: Arc<Vec<Overlay>>,
    writer: JoinHandle<Result<(), StateError>>,
}

impl Inflight {
    /// Starts writing `overlays` on a thread of their own.
    pub(super) fn start(
        db: &Arc<DB>,
        path: &Path,
        overlays: Vec<Overlay>,
    ) -> Result<Inflight, StateError> {
        let overlays = Arc::new(overlays);
        let (db, dir, batch) = (Arc::clone(db), path.to_path_buf(), Arc::clone(&overlays));
        let writer = std::thread::Builder::new()
            .name("state-commit".into())
            .spawn(move || write(&db, &dir, &batch))
            .map_err(|e| StateError::Commit {
                path: path.to_path_buf(),
                detail: format!("cannot start the commit thread: {e}"),
            })?;
        Ok(Inflight { overlays, writer })
    }

    /// Waits for the write; its error, if it failed.
    pub(super) fn finish(self) -> Result<(), StateError> {
        match self.writer.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Writes every overlay in one atomic write batch.
pub(super) fn write(db: &DB, path: &Path, overlays: &[Overlay]) -> Result<(), StateError> {
    let mut batch = WriteBatch::default();
    for (cf, overlay) in Cf::ALL.into_iter().zip(overlays) {
        let handle = cf_handle(db, cf);
        let mut writes: Vec<_> = overlay.writes.iter().collect();
        // The memtable is a skip list: keys inserted in order reuse the
        // previous insert's search path, in random order each pays a
        // full search with its cache misses.
        writes.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in writes {
            match v {
                Some(v) => batch.put_cf(handle, k, v),
                None => batch.delete_cf(handle, k),
            }
        }
    }
    let mut wo = WriteOptions::default();
    // The WAL stays on: a killed process must find state and offsets
    // from the same batch. Syncing each batch is left to the OS.
    wo.set_sync(false);
    db.write_opt(batch, &wo)
        .map_err(|source| StateError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Two ordered runs of writes as one: `top`'s win on equal keys.
pub(super) fn over<'a>(
    top: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    below: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
    let mut top = top.peekable();
    let mut below = below.peekable();
    std::iter::from_fn(move || {
        let order = match (top.peek(), below.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(t), Some(b)) => t.0.cmp(b.0),
        };
        match order {
            Ordering::Less => top.next(),
            Ordering::Greater => below.next(),
            Ordering::Equal => {
                below.next();
                top.next()
            }
        }
    })
}
