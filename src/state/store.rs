//! RocksDB with a write-back overlay.
//!
//! Reads go to the overlay first, then to RocksDB; writes stay in the overlay
//! until `commit`, which writes them all in one atomic write batch. That gives
//! the engine the two things it needs: a batch of events (and, in live mode,
//! the input offsets that go with it) lands all or nothing, and hot keys read
//! and written many times in a batch cost one RocksDB write.
//!
//! In live mode a batch's write can land on another thread while the next
//! batch is applied (`commit_in_background`): until it has, reads look
//! through the current overlay, then the landing one, then RocksDB.
//!
//! The overlay is a hash map (point lookups dominate: one per event and
//! family); only the families the engine scans also keep their written keys
//! in order, and those scanned one leading string at a time (a product's
//! viewers, a customer's products) only per string, sorted when scanned.
//! The timer and tombstone families are small and read after
//! every event, so they are resident: held whole in memory, read from disk
//! once at open, and written through at commit like the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use rocksdb::compaction_filter::Decision as CompactionDecision;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode,
    Options, ReadOptions, SliceTransform, WriteBatch, WriteOptions, DB,
};
use rustc_hash::{FxHashMap, FxHashSet};

use super::keys::{first_str_len, prefix_end, Key};
use super::prefetch::{Hint, Prefetcher, Version};

/// The kinds of state, one column family each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Watermark, counters, input offsets, configuration fingerprint.
    Meta,
    /// Applied event ids (hashed) → their event times.
    Dedup,
    /// cookie → its CRM link.
    Links,
    /// cookie → events kept while it has no link.
    Anon,
    /// crm → consent and cookies.
    Customers,
    /// (crm, product) → (): the products a customer touched, for erase.
    CustomerProducts,
    /// (product, crm) → views, purchases, pending check, cooldowns.
    Interest,
    /// (due time, crm, product) → (): pending checks by due time.
    Timers,
    /// product → category of its latest view that named one.
    Products,
    /// sha-256(crm) → erase time.
    Tombstones,
}

impl Cf {
    pub const ALL: [Cf; 10] = [
        Cf::Meta,
        Cf::Dedup,
        Cf::Links,
        Cf::Anon,
        Cf::Customers,
        Cf::CustomerProducts,
        Cf::Interest,
        Cf::Timers,
        Cf::Products,
        Cf::Tombstones,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Dedup => "dedup",
            Cf::Links => "links",
            Cf::Anon => "anon",
            Cf::Customers => "customers",
            Cf::CustomerProducts => "customer_products",
            Cf::Interest => "interest",
            Cf::Timers => "timers",
            Cf::Products => "products",
            Cf::Tombstones => "tombstones",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Families the engine range-scans (besides the resident timers): their
    /// uncommitted keys are also kept in order.
    fn scanned(self) -> bool {
        matches!(self, Cf::Meta | Cf::CustomerProducts | Cf::Interest)
    }

    /// Families scanned one leading string (product, customer) at a time.
    fn scanned_by_first_string(self) -> bool {
        matches!(self, Cf::CustomerProducts | Cf::Interest)
    }

    /// Families whose point reads reach RocksDB on most events: read
    /// ahead for each event, or read when the overlay misses.
    fn point_read(self) -> bool {
        matches!(
            self,
            Cf::Dedup | Cf::Links | Cf::Anon | Cf::Customers | Cf::Interest
        )
    }

    /// Families held whole in memory: small ones read on every event.
    /// Timers: one key per pending check, scanned after each event.
    /// Tombstones: one key per erased customer, looked up for each event
    /// naming a customer (almost always absent).
    pub(crate) fn resident(self) -> bool {
        matches!(self, Cf::Timers | Cf::Tombstones)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open state at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("state read failed in {cf}: {source}")]
    Read {
        cf: &'static str,
        source: rocksdb::Error,
    },
    /// Most often the disk is full or the directory became unwritable.
    #[error("cannot write state at {path} (disk full or not writable?): {source}")]
    Write {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("corrupt state record in {cf}: {detail}")]
    Corrupt { cf: &'static str, detail: String },
    #[error("cannot start the state writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The gate of a background commit said no: the batch was not written.
    #[error("the batch's state was not written: {0}")]
    Withheld(#[source] GateError),
}

/// Why a background commit's gate held its batch back.
pub type GateError = Box<dyn std::error::Error + Send + Sync>;

/// What a batch committed in the background waits for, on the writer
/// thread, before it is written (live mode: the acknowledgement of the
/// batch's output). An error withholds the batch.
pub type Gate = Box<dyn FnOnce() -> Result<(), GateError> + Send>;

/// The gate of a batch with nothing to wait for.
pub fn open_gate() -> Gate {
    Box::new(|| Ok(()))
}

/// The approximate size of the state, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    pub bytes: u64,
    pub keys: u64,
}

/// What an overlay entry costs besides its bytes (hash slot, vector headers,
/// allocator rounding), so that `uncommitted_bytes` tracks memory.
const ENTRY_OVERHEAD: usize = 64;

/// One family's uncommitted writes; `None` is a deletion.
struct Overlay {
    writes: FxHashMap<Key, Option<Vec<u8>>>,
    /// The keys of `writes` in order, for scanned families only.
    order: Order,
}

/// How an overlay keeps its keys in order for the scans of its family.
enum Order {
    /// Never scanned: sorted once, at commit.
    Unordered,
    /// Scanned over any range (the small meta family).
    Whole(BTreeSet<Vec<u8>>),
    /// Scanned one leading string at a time (a product's viewers, a
    /// customer's products), and rarely (a promotion, an erase): each
    /// leading string's keys, sorted only when a scan needs them. A tree
    /// over all keys cost ~17 `memcmp`s and their cache misses on every
    /// insert (8% of the engine thread's time in a replay) for scans that
    /// come a few times in a million events.
    ByFirstString(FxHashMap<Vec<u8>, Mutex<Group>>),
}

/// The keys of one leading string.
#[derive(Default)]
struct Group {
    keys: Vec<Vec<u8>>,
    /// A key came in below the last one since the keys were last sorted.
    unsorted: bool,
}

impl Group {
    /// The keys in order, sorted now if need be.
    fn sorted(&mut self) -> &[Vec<u8>] {
        if self.unsorted {
            // A stable sort finds runs: a sorted group with keys appended
            // (a promotion's fan-out saving its viewers' interest, chunk by
            // chunk) is sorted by one merge, not from scratch.
            self.keys.sort();
            self.unsorted = false;
        }
        &self.keys
    }
}

impl Order {
    fn for_cf(cf: Cf) -> Order {
        if cf.scanned_by_first_string() {
            Order::ByFirstString(FxHashMap::default())
        } else if cf.scanned() {
            Order::Whole(BTreeSet::new())
        } else {
            Order::Unordered
        }
    }

    fn is_kept(&self) -> bool {
        !matches!(self, Order::Unordered)
    }

    /// Adds a key not yet held.
    fn insert(&mut self, key: &[u8]) {
        match self {
            Order::Unordered => {}
            Order::Whole(set) => {
                set.insert(key.to_vec());
            }
            Order::ByFirstString(groups) => {
                let first = first_string(key);
                let group = match groups.get_mut(first) {
                    Some(group) => group,
                    None => groups.entry(first.to_vec()).or_default(),
                };
                let group = group.get_mut().unwrap_or_else(PoisonError::into_inner);
                // Still in order if it comes last: the common case of a
                // product's first scan after its keys were written in order.
                group.unsorted |= group.keys.last().is_some_and(|last| last.as_slice() > key);
                group.keys.push(key.to_vec());
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        match self {
            Order::Unordered => {}
            Order::Whole(set) => {
                set.remove(key);
            }
            Order::ByFirstString(groups) => {
                let first = first_string(key);
                let Some(group) = groups.get_mut(first) else {
                    return;
                };
                let group = group.get_mut().unwrap_or_else(PoisonError::into_inner);
                // Removing keeps the order of the rest.
                group.keys.retain(|k| k.as_slice() != key);
                if group.keys.is_empty() {
                    groups.remove(first);
                }
            }
        }
    }

    /// Every key in order, where kept in a tree; `None` otherwise.
    fn keys(&self) -> Option<std::collections::btree_set::Iter<'_, Vec<u8>>> {
        match self {
            Order::Whole(set) => Some(set.iter()),
            Order::Unordered | Order::ByFirstString(_) => None,
        }
    }

    /// The keys with `lower <= key < upper`, in order, each copied only
    /// when the scan reads it (a promotion's fan-out reads a chunk of a
    /// product's keys at a time, and stops there).
    fn range<'a>(
        &'a self,
        lower: &'a [u8],
        upper: Option<&'a [u8]>,
    ) -> Box<dyn Iterator<Item = Vec<u8>> + 'a> {
        let within = move |k: &Vec<u8>| upper.is_none_or(|u| k.as_slice() < u);
        match self {
            Order::Unordered => Box::new(std::iter::empty()),
            Order::Whole(set) => {
                let upper = upper.map_or(Bound::Unbounded, Bound::Excluded);
                Box::new(
                    set.range::<[u8], _>((Bound::Included(lower), upper))
                        .cloned(),
                )
            }
            Order::ByFirstString(groups) => {
                let first = first_string(lower);
                let group_end = prefix_end(first);
                let in_one_group = has_first_string(lower)
                    && upper.is_some_and(|u| group_end.as_deref().is_some_and(|e| u <= e));
                if !in_one_group {
                    // No scan of the engine's crosses a leading string;
                    // this is for completeness, not speed.
                    let mut keys: Vec<Vec<u8>> = groups
                        .values()
                        .flat_map(|g| lock(g).keys.clone())
                        .filter(|k| k.as_slice() >= lower && within(k))
                        .collect();
                    keys.sort_unstable();
                    return Box::new(keys.into_iter());
                }
                let Some(group) = groups.get(first) else {
                    return Box::new(std::iter::empty());
                };
                let mut group = lock(group);
                let at = group.sorted().partition_point(|k| k.as_slice() < lower);
                // The group stays locked while the scan reads it: only
                // this thread's scans take the lock, one group at a time.
                let mut at = at..;
                Box::new(std::iter::from_fn(move || {
                    let key = group.keys.get(at.next()?)?;
                    within(key).then(|| key.clone())
                }))
            }
        }
    }
}

/// A group's keys, whoever panicked holding them: a sort cannot leave
/// them half-changed.
fn lock(group: &Mutex<Group>) -> MutexGuard<'_, Group> {
    group.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Overlay {
    fn for_cf(cf: Cf) -> Overlay {
        Overlay {
            writes: FxHashMap::default(),
            order: Order::for_cf(cf),
        }
    }

    /// An empty overlay sized for as many keys as `self` holds: the next
    /// batch writes about as many, and a map grown from empty rehashes
    /// every entry at each doubling (7% of the engine thread's time).
    fn next_of(&self, cf: Cf) -> Overlay {
        let capacity = self.writes.len();
        Overlay {
            writes: FxHashMap::with_capacity_and_hasher(capacity, Default::default()),
            order: Order::for_cf(cf),
        }
    }

    /// Records a write; returns the change in the bytes held.
    fn write(&mut self, key: Key, value: Option<Vec<u8>>) -> isize {
        let added = value.as_ref().map_or(0, Vec::len) as isize;
        if self.order.is_kept() && !self.writes.contains_key(key.as_slice()) {
            self.order.insert(&key);
        }
        let key_cost = self.key_cost(key.len());
        match self.writes.insert(key, value) {
            Some(old) => added - old.map_or(0, |v| v.len()) as isize,
            None => added + key_cost,
        }
    }

    /// Drops the uncommitted write of `key`; returns the change in bytes.
    fn forget(&mut self, key: &[u8]) -> isize {
        self.order.remove(key);
        match self.writes.remove(key) {
            Some(v) => -(self.key_cost(key.len()) + v.map_or(0, |v| v.len()) as isize),
            None => 0,
        }
    }

    /// What an entry costs besides its value: the key, once more when it is
    /// also kept in order, and the per-entry overhead.
    fn key_cost(&self, key_len: usize) -> isize {
        (key_len * (1 + self.order.is_kept() as usize) + ENTRY_OVERHEAD) as isize
    }

    /// Every write, in key order. The memtable is a skip list: keys
    /// inserted in order reuse the previous insert's search path, in
    /// random order each pays a full search with its cache misses.
    fn in_key_order(&self) -> Vec<(&[u8], &Option<Vec<u8>>)> {
        if let Some(keys) = self.order.keys() {
            return keys
                .map(|k| (k.as_slice(), &self.writes[k.as_slice()]))
                .collect();
        }
        // Sorted on the keys' first 16 bytes as a number, which orders as
        // the bytes do, and on the whole key only where those tie: most
        // comparisons are then one of two integers, not a `memcmp`.
        let mut writes: Vec<_> = self
            .writes
            .iter()
            .map(|(k, v)| (leading_bytes(k), k.as_slice(), v))
            .collect();
        writes.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        writes.into_iter().map(|(_, k, v)| (k, v)).collect()
    }

    /// The entries with `lower <= key < upper`, in key order.
    fn range<'a>(
        &'a self,
        lower: &'a [u8],
        upper: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        self.order.range(lower, upper).filter_map(|k| {
            let (k, v) = self.writes.get_key_value(k.as_slice())?;
            Some((k.as_slice(), v.as_deref()))
        })
    }
}

/// A key's first 16 bytes (zero-padded) as a big-endian number: where
/// two keys' numbers differ, they order as the keys do.
fn leading_bytes(key: &[u8]) -> u128 {
    let mut first = [0u8; 16];
    let n = key.len().min(16);
    first[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(first)
}

/// One write of a family: a value, or `None` for a deletion; as a
/// changelog record carries it (the key as the record's key, the value or
/// a tombstone as its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub cf: Cf,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Key-value pairs, as scans return them.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

pub struct Store {
    /// Shared with the `Reader`s of queries, which see committed data only.
    db: Arc<DB>,
    overlays: Vec<Overlay>,
    overlay_bytes: usize,
    /// Every live entry of the resident families, committed or not (by
    /// family index; empty for the others).
    resident: Vec<BTreeMap<Key, Vec<u8>>>,
    /// Resident keys first written in this batch and absent from disk: a
    /// deletion of one just drops the write (a timer that comes and goes
    /// within a batch never reaches RocksDB).
    fresh: Vec<FxHashSet<Key>>,
    path: PathBuf,
    /// Whether a commit waits for the WAL to reach the disk.
    sync: bool,
    /// The last batch committed in the background, until it has landed.
    landing: Option<Landing>,
    /// The options of every point read, made once: a default made per
    /// read costs an allocation and a free, for each of an event's reads.
    point_read: ReadOptions,
    /// Counts the changes behind the overlay, for reads made ahead.
    version: Version,
    /// Reads made ahead for the event being applied (`hint`).
    hints: Vec<Hint>,
}

/// A committed batch being written to RocksDB by its own thread.
struct Landing {
    overlays: Arc<Vec<Overlay>>,
    writer: JoinHandle<Result<(), Unwritten>>,
}

/// Why a landing batch did not reach RocksDB.
enum Unwritten {
    Withheld(GateError),
    Write(rocksdb::Error),
}

/// Tells from a value of the expiring family whether it is dead: compaction
/// drops such entries. It must only ever drop what readers ignore already,
/// since when compaction runs is up to RocksDB.
pub type Expired = Box<dyn Fn(&[u8]) -> bool + Send>;

impl Store {
    /// Opens (creating when absent) the state at `dir`.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        Store::open_with_expiry(dir, None)
    }

    /// As `open`, with entries of `expiry`'s family that its test calls dead
    /// dropped whenever RocksDB compacts them.
    pub fn open_with_expiry(
        dir: &Path,
        expiry: Option<(Cf, Expired)>,
    ) -> Result<Store, StateError> {
        let open_err = |source| StateError::Open {
            path: dir.to_path_buf(),
            source,
        };
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // One budget for the memtables of every family, so memory does not
        // grow with the number of families.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut expiry = expiry;
        let cfs: Vec<_> = Cf::ALL
            .iter()
            .map(|&cf| {
                let mut opts = cf_options(cf, &cache);
                if let Some((_, expired)) = expiry.take_if(|(e, _)| *e == cf) {
                    opts.set_compaction_filter("pretext.expiry", move |_, _: &[u8], v: &[u8]| {
                        if expired(v) {
                            CompactionDecision::Remove
                        } else {
                            CompactionDecision::Keep
                        }
                    });
                }
                ColumnFamilyDescriptor::new(cf.name(), opts)
            })
            .collect();
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(open_err)?;
        let mut store = Store {
            db: Arc::new(db),
            overlays: Cf::ALL.iter().map(|&cf| Overlay::for_cf(cf)).collect(),
            overlay_bytes: 0,
            resident: vec![BTreeMap::new(); Cf::ALL.len()],
            fresh: vec![FxHashSet::default(); Cf::ALL.len()],
            path: dir.to_path_buf(),
            sync: false,
            landing: None,
            point_read: ReadOptions::default(),
            version: Version::default(),
            hints: Vec::new(),
        };
        for cf in Cf::ALL.into_iter().filter(|cf| cf.resident()) {
            let entries = store.committed(cf)?;
            store.resident[cf.index()].extend(entries.into_iter().map(|(k, v)| (Key::from(k), v)));
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every commit wait for its WAL write to reach the disk (an
    /// fsync per commit). Exactly-once needs it: the state may then trail
    /// Kafka's committed transactions by at most the one batch being
    /// committed, even across a power loss (docs/exactly-once.md).
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    fn handle(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        cf_handle(&self.db, cf)
    }

    /// A read-only view of the committed state that other threads can
    /// query while this store keeps writing.
    pub fn reader(&self) -> Reader {
        Reader {
            db: Arc::clone(&self.db),
            secondary: false,
        }
    }

    /// A reader of RocksDB for another thread to read ahead with; what it
    /// reads is handed back through `hint`.
    pub fn prefetcher(&self) -> Prefetcher {
        Prefetcher {
            db: Arc::clone(&self.db),
            version: self.version.clone(),
            read: ReadOptions::default(),
        }
    }

    /// Reads made ahead, used by the reads that miss the overlay until the
    /// next `hint` (those no longer true are ignored).
    pub fn hint(&mut self, hints: Vec<Hint>) {
        self.hints = hints;
    }

    /// The value at `key`, as of every write so far (committed or not).
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.read(cf, key, |v| Ok(v.to_vec()))
    }

    /// `f` of the value at `key`, as `get` sees it, read in place: no copy
    /// of the value is made, from the overlay or from RocksDB.
    pub fn read<T>(
        &self,
        cf: Cf,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> Result<T, StateError>,
    ) -> Result<Option<T>, StateError> {
        if cf.resident() {
            return self.resident[cf.index()].get(key).map(|v| f(v)).transpose();
        }
        let landing = self.landing.as_ref().map(|l| &l.overlays[cf.index()]);
        for overlay in std::iter::once(&self.overlays[cf.index()]).chain(landing) {
            if let Some(v) = overlay.writes.get(key) {
                return v.as_deref().map(f).transpose();
            }
        }
        let version = self.version.now();
        if let Some(value) = self.hints.iter().find_map(|h| h.answer(cf, key, version)) {
            return value.map(f).transpose();
        }
        let pinned = self
            .db
            .get_pinned_cf_opt(self.handle(cf), key, &self.point_read)
            .map_err(|source| StateError::Read {
                cf: cf.name(),
                source,
            })?;
        pinned.as_deref().map(f).transpose()
    }

    /// Whether a resident family holds no entry at all (committed or
    /// not): its lookups can then be skipped, and the keys not built.
    pub fn resident_is_empty(&self, cf: Cf) -> bool {
        cf.resident() && self.resident[cf.index()].is_empty()
    }

    pub fn put(&mut self, cf: Cf, key: impl Into<Key>, value: Vec<u8>) {
        let key = key.into();
        if cf.resident() {
            let i = cf.index();
            // Neither live nor deleted in this batch: absent from disk too.
            // (The insert answers the first half: one search of the tree,
            // not two, for each of the timers every view schedules.)
            let live = self.resident[i]
                .insert(key.clone(), value.clone())
                .is_some();
            if !live && !self.overlays[i].writes.contains_key(key.as_slice()) {
                self.fresh[i].insert(key.clone());
            }
        }
        self.write(cf, key, Some(value));
    }

    pub fn delete(&mut self, cf: Cf, key: impl Into<Key>) {
        let key = key.into();
        if cf.resident() {
            self.resident[cf.index()].remove(&key);
            if self.fresh[cf.index()].remove(&key) {
                let delta = self.overlays[cf.index()].forget(&key);
                self.overlay_bytes = self.overlay_bytes.saturating_add_signed(delta);
                return;
            }
        }
        self.write(cf, key, None);
    }

    fn write(&mut self, cf: Cf, key: Key, value: Option<Vec<u8>>) {
        let delta = self.overlays[cf.index()].write(key, value);
        self.overlay_bytes = self.overlay_bytes.saturating_add_signed(delta);
    }

    /// Up to `limit` live entries with `lower <= key < upper` (no upper bound
    /// when `None`), in key order, merging uncommitted writes over RocksDB.
    pub fn scan(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StateError> {
        if cf.resident() {
            let upper = upper.map_or(Bound::Unbounded, Bound::Excluded);
            return Ok(self.resident[cf.index()]
                .range::<[u8], _>((Bound::Included(lower), upper))
                .take(limit)
                .map(|(k, v)| (k.to_vec(), v.clone()))
                .collect());
        }
        debug_assert!(cf.scanned(), "{} is not a scanned family", cf.name());
        let mut opts = ReadOptions::default();
        if let Some(u) = upper {
            opts.set_iterate_upper_bound(u.to_vec());
        }
        let disk = self.db.iterator_cf_opt(
            self.handle(cf),
            opts,
            IteratorMode::From(lower, Direction::Forward),
        );
        let overlay = self.overlays[cf.index()].range(lower, upper);
        let landing = self
            .landing
            .iter()
            .flat_map(|l| l.overlays[cf.index()].range(lower, upper));
        merge(cf, disk, layered(overlay, landing), limit)
    }

    /// Every uncommitted write, by family then key: what the next commit
    /// writes, and so what a changelog must carry for it (a value, or
    /// `None` for a deletion). A resident key put and deleted within the
    /// batch never reaches disk, nor this.
    pub fn pending_changes(&self) -> Vec<Change> {
        let mut changes = Vec::new();
        for (cf, overlay) in Cf::ALL.into_iter().zip(&self.overlays) {
            let mut keys: Vec<&[u8]> = overlay.writes.keys().map(Key::as_slice).collect();
            keys.sort();
            changes.extend(keys.into_iter().map(|key| Change {
                cf,
                key: key.to_vec(),
                value: overlay.writes[key].clone(),
            }));
        }
        changes
    }

    /// Bulk-loads `changes` straight into RocksDB in one write batch,
    /// after committing what is pending: a restore's path, which neither
    /// reads back nor needs the overlay. In order per key (the last write
    /// of a key wins), sorted otherwise, as the memtable likes. Without the
    /// WAL, as RocksDB advises for bulk loads: what was loaded is durable
    /// only once `flush` returns (a restore flushes before it writes its
    /// checkpoint; a crash before that restores again).
    pub fn load_changes(&mut self, mut changes: Vec<Change>) -> Result<(), StateError> {
        self.commit()?;
        // Stable: two writes of one key keep their order.
        changes.sort_by(|a, b| (a.cf.index(), &a.key).cmp(&(b.cf.index(), &b.key)));
        let mut batch = WriteBatch::default();
        for Change { cf, key, value } in changes {
            let handle = self.handle(cf);
            match &value {
                Some(v) => batch.put_cf(handle, &key, v),
                None => batch.delete_cf(handle, &key),
            }
            if cf.resident() {
                let resident = &mut self.resident[cf.index()];
                match value {
                    Some(v) => resident.insert(Key::from(key), v),
                    None => resident.remove(key.as_slice()),
                };
            }
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        let written = self.db.write_opt(batch, &wo);
        self.version.bump();
        written.map_err(|e| self.write_error(e))
    }

    /// Flushes every family's memtable to disk: what `load_changes` wrote
    /// is durable once this returns.
    pub fn flush(&mut self) -> Result<(), StateError> {
        self.wait_landed()?;
        let handles: Vec<_> = Cf::ALL.iter().map(|&cf| self.handle(cf)).collect();
        self.db
            .flush_cfs_opt(&handles, &rocksdb::FlushOptions::default())
            .map_err(|e| self.write_error(e))
    }

    /// Bytes of uncommitted writes, so callers can bound a batch.
    pub fn uncommitted_bytes(&self) -> usize {
        self.overlay_bytes
    }

    /// Writes every uncommitted change in one atomic write batch.
    pub fn commit(&mut self) -> Result<(), StateError> {
        self.wait_landed()?;
        let overlays = self.take_overlays();
        let written = write_overlays(&self.db, &overlays, self.sync);
        // After the write: a read made ahead during it may predate it.
        self.version.bump();
        written.map_err(|e| self.write_error(e))
    }

    /// As `commit`, but the write runs on its own thread while the caller
    /// goes on (and reads see the batch at once), once `gate` has passed;
    /// `wait_landed` waits for it. One batch lands at a time: this waits
    /// for the previous one. A withheld batch is dropped, and with it every
    /// later change read through it: the caller must give up the store.
    pub fn commit_in_background(&mut self, gate: Gate) -> Result<(), StateError> {
        self.wait_landed()?;
        let overlays = Arc::new(self.take_overlays());
        // Before: reads of the batch's keys see the landing batch first
        // from now on, and reads made ahead before now are older.
        self.version.bump();
        let (db, batch, sync) = (Arc::clone(&self.db), Arc::clone(&overlays), self.sync);
        let writer = std::thread::Builder::new()
            .name("pretext-state-writer".into())
            .spawn(move || {
                gate().map_err(Unwritten::Withheld)?;
                write_overlays(&db, &batch, sync).map_err(Unwritten::Write)
            })
            .map_err(StateError::Spawn)?;
        self.landing = Some(Landing { overlays, writer });
        Ok(())
    }

    /// Waits until the batch committed in the background is in RocksDB.
    pub fn wait_landed(&mut self) -> Result<(), StateError> {
        let Some(landing) = self.landing.take() else {
            return Ok(());
        };
        let landed = landing.writer.join();
        // Its keys are read from RocksDB from now on, as the write left it.
        self.version.bump();
        match landed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Unwritten::Withheld(e))) => Err(StateError::Withheld(e)),
            Ok(Err(Unwritten::Write(e))) => Err(self.write_error(e)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn write_error(&self, source: rocksdb::Error) -> StateError {
        StateError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// The uncommitted writes, leaving empty overlays in their place.
    fn take_overlays(&mut self) -> Vec<Overlay> {
        let empty = Cf::ALL
            .iter()
            .zip(&self.overlays)
            .map(|(&cf, overlay)| overlay.next_of(cf))
            .collect();
        self.fresh.iter_mut().for_each(FxHashSet::clear);
        self.overlay_bytes = 0;
        std::mem::replace(&mut self.overlays, empty)
    }

    /// Size and key count estimates from RocksDB (committed data only).
    pub fn size(&self) -> StateSize {
        let mut size = StateSize::default();
        for cf in Cf::ALL {
            let h = self.handle(cf);
            let prop = |name: &str| {
                self.db
                    .property_int_value_cf(h, name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            size.bytes +=
                prop("rocksdb.total-sst-files-size") + prop("rocksdb.size-all-mem-tables");
            size.keys += prop("rocksdb.estimate-num-keys");
        }
        size
    }

    /// Every committed key of a column family, for tests and audits.
    pub fn committed_keys(&self, cf: Cf) -> Result<Vec<Vec<u8>>, StateError> {
        Ok(self.committed(cf)?.into_iter().map(|(k, _)| k).collect())
    }

    /// Every committed entry of a column family, for tests and audits.
    pub fn committed(&self, cf: Cf) -> Result<Entries, StateError> {
        let mut opts = ReadOptions::default();
        // Across every prefix, not within the first key's.
        opts.set_total_order_seek(true);
        self.db
            .iterator_cf_opt(self.handle(cf), opts, IteratorMode::Start)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|source| StateError::Read {
                        cf: cf.name(),
                        source,
                    })
            })
            .collect()
    }
}

impl Drop for Store {
    /// A batch still landing is written before RocksDB closes.
    fn drop(&mut self) {
        let Some(landing) = self.landing.take() else {
            return;
        };
        // Logged, not raised: a panic here could abort an unwinding thread.
        match landing.writer.join() {
            Ok(Ok(())) => {}
            Ok(Err(Unwritten::Withheld(error))) => {
                tracing::warn!(%error, "the last batch's state was not written")
            }
            Ok(Err(Unwritten::Write(error))) => {
                tracing::error!(%error, "the last state write failed")
            }
            Err(_) => tracing::error!("the state writer thread panicked"),
        }
    }
}

/// The overlays' writes in one atomic write batch.
fn write_overlays(db: &DB, overlays: &[Overlay], sync: bool) -> Result<(), rocksdb::Error> {
    let mut batch = WriteBatch::default();
    for (cf, overlay) in Cf::ALL.into_iter().zip(overlays) {
        let handle = cf_handle(db, cf);
        for (k, v) in overlay.in_key_order() {
            match v {
                Some(v) => batch.put_cf(handle, k, v),
                None => batch.delete_cf(handle, k),
            }
        }
    }
    let mut wo = WriteOptions::default();
    // The WAL stays on: a killed process must find state and offsets
    // from the same batch. Syncing each batch is left to the OS, unless
    // exactly-once asked for it (`set_sync`).
    wo.set_sync(sync);
    db.write_opt(batch, &wo)
}

pub(super) fn cf_handle(db: &DB, cf: Cf) -> &rocksdb::ColumnFamily {
    // Every `Cf` is created at open, so the handle always exists.
    match db.cf_handle(cf.name()) {
        Some(h) => h,
        None => unreachable!("column family {} is created at open", cf.name()),
    }
}

/// A read-only view of committed state, for queries. Every commit is one
/// atomic write batch, and a `Snapshot` of the store's own handle is a
/// RocksDB snapshot: it sees the batches committed before it was taken,
/// never part of one, and never the store's uncommitted overlay. Reading
/// takes no lock the writer waits on.
#[derive(Clone)]
pub struct Reader {
    db: Arc<DB>,
    /// A secondary instance takes no snapshots (RocksDB does not support
    /// them there); its view moves only on a catch-up, which it does once,
    /// at open, so its reads are consistent without one.
    secondary: bool,
}

impl Reader {
    /// Opens the state at `dir` as a RocksDB secondary instance, keeping its
    /// own info log in `scratch` (which must outlive the reader): it reads
    /// the files of a state that another process may be writing, without
    /// locking or changing them, as of the last batch that process wrote.
    pub fn open_secondary(dir: &Path, scratch: &Path) -> Result<Reader, StateError> {
        let open_err = |source| StateError::Open {
            path: dir.to_path_buf(),
            source,
        };
        let mut opts = Options::default();
        // A secondary keeps every file open: the primary may delete one.
        opts.set_max_open_files(-1);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = Cf::ALL
            .iter()
            .map(|&cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(cf, &cache)));
        let db =
            DB::open_cf_descriptors_as_secondary(&opts, dir, scratch, cfs).map_err(open_err)?;
        db.try_catch_up_with_primary().map_err(open_err)?;
        Ok(Reader {
            db: Arc::new(db),
            secondary: true,
        })
    }

    /// The committed state as of now, consistent across every read of it.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            db: &self.db,
            snap: (!self.secondary).then(|| self.db.snapshot()),
        }
    }
}

/// The committed state at one moment (see `Reader`).
pub struct Snapshot<'a> {
    db: &'a DB,
    /// `None` on a secondary instance (see `Reader`).
    snap: Option<rocksdb::Snapshot<'a>>,
}

impl Snapshot<'_> {
    fn options(&self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        if let Some(snap) = &self.snap {
            opts.set_snapshot(snap);
        }
        opts
    }

    /// `f` of the value at `key`, read in place.
    pub fn read<T>(
        &self,
        cf: Cf,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> Result<T, StateError>,
    ) -> Result<Option<T>, StateError> {
        let opts = self.options();
        let pinned = self
            .db
            .get_pinned_cf_opt(cf_handle(self.db, cf), key, &opts)
            .map_err(|source| StateError::Read {
                cf: cf.name(),
                source,
            })?;
        pinned.as_deref().map(f).transpose()
    }

    /// Up to `limit` entries with `lower <= key < upper`, in key order.
    /// For the families scanned by a leading string, `lower` and `upper`
    /// must share it (a prefix seek).
    pub fn scan(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StateError> {
        let mut opts = self.options();
        if let Some(u) = upper {
            opts.set_iterate_upper_bound(u.to_vec());
        }
        let mode = IteratorMode::From(lower, Direction::Forward);
        self.db
            .iterator_cf_opt(cf_handle(self.db, cf), opts, mode)
            .take(limit)
            .map(|r| {
                r.map(|(k, v)| (k.into_vec(), v.into_vec()))
                    .map_err(|source| StateError::Read {
                        cf: cf.name(),
                        source,
                    })
            })
            .collect()
    }
}

/// The memtables of all families together, at most. 64 MiB rather than
/// 96: a replay of 1M events of 10k customers peaked at 318 MiB with 96
/// (the 300 MiB bound of BENCHMARKS.md), and ran no faster.
const MEMTABLE_BUDGET: usize = 64 << 20;
/// A memtable's bloom filter, as a fraction of the family's write buffer
/// size. RocksDB sizes the filter from that (64 MiB by default, the
/// budget all families share), not from what the memtable holds: at 0.05
/// each family's filter took 3.2 MiB, allocated and zeroed for each new
/// memtable, ~30 MiB over the ten. 0.01 is 5.4 Mbit: 10 bits a key up to
/// ~500,000 keys (a memtable of ~30 MiB of dedup ids), about 1% false
/// hits. Peak RSS fell 12–20 MiB a replay, speed within the noise
/// (BENCHMARKS.md, "Memtable filters sized to their use").
const MEMTABLE_BLOOM_RATIO: f64 = 0.01;
/// Data, index and filter blocks cached, shared by all families.
const BLOCK_CACHE_BYTES: usize = 32 << 20;
/// The size of one partition of an SST file's filter or index.
const METADATA_BLOCK_BYTES: usize = 4 << 10;

fn cf_options(cf: Cf, cache: &Cache) -> Options {
    let mut opts = Options::default();
    if cf.scanned_by_first_string() {
        // Fan-out and erase seek one product's or one customer's keys: a
        // prefix bloom filter lets those seeks skip files without them.
        opts.set_prefix_extractor(SliceTransform::create(
            "pretext.first_string",
            first_string,
            Some(has_first_string),
        ));
    }
    if cf.point_read() {
        // A bloom filter over the memtable's keys answers most point
        // lookups of absent keys without searching the memtable. The other
        // families (read from memory, scanned, or rarely read) get none.
        opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
        opts.set_memtable_whole_key_filtering(true);
    }
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Index and filter blocks count against the cache rather than growing
    // with the state; L0's stay pinned, since every lookup reads them.
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Point lookups of absent keys (new cookies, unseen event ids, customers
    // without a tombstone) dominate; a bloom filter answers them from memory.
    table.set_bloom_filter(10.0, false);
    // Filters and indexes cut into small partitions under a pinned top
    // level. A whole-file filter of a large SST outgrows a shard of the
    // block cache, so it was evicted as soon as it was read: every lookup
    // then re-read it from the file and verified its checksum, and lookups
    // slowed as the state grew. A partition is one block, so it stays.
    table.set_partition_filters(true);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_metadata_block_size(METADATA_BLOCK_BYTES);
    table.set_pin_top_level_index_and_filter(true);
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts
}

fn first_string(key: &[u8]) -> &[u8] {
    first_str_len(key).map_or(key, |n| &key[..n])
}

fn has_first_string(key: &[u8]) -> bool {
    first_str_len(key).is_some()
}

/// Two overlays' ranges as one, in key order; `top` wins on equal keys.
fn layered<'a>(
    top: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    below: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
    let (mut top, mut below) = (top.peekable(), below.peekable());
    std::iter::from_fn(move || {
        let order = match (top.peek(), below.peek()) {
            (None, None) => return None,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(t), Some(b)) => t.0.cmp(b.0),
        };
        match order {
            std::cmp::Ordering::Less => top.next(),
            std::cmp::Ordering::Greater => below.next(),
            std::cmp::Ordering::Equal => {
                below.next();
                top.next()
            }
        }
    })
}

/// Merges a RocksDB iterator with the overlay's range: the overlay wins on
/// equal keys and its deletions hide the disk entry.
fn merge<'a, D, O>(cf: Cf, mut disk: D, mut overlay: O, limit: usize) -> Result<Entries, StateError>
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    fn keys(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<&[u8]> {
        entries.iter().map(|(k, _)| k.as_slice()).collect()
    }

    #[test]
    fn reads_see_uncommitted_writes_and_deletes() {
        let (_d, mut s) = store();
        s.put(Cf::Links, b"a".to_vec(), b"1".to_vec());
        s.commit().unwrap();
        s.put(Cf::Links, b"b".to_vec(), b"2".to_vec());
        s.delete(Cf::Links, b"a".to_vec());
        assert_eq!(s.get(Cf::Links, b"a").unwrap(), None);
        assert_eq!(s.get(Cf::Links, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(s.get(Cf::Anon, b"b").unwrap(), None);
    }

    #[test]
    fn scans_merge_overlay_over_disk_in_key_order() {
        let (_d, mut s) = store();
        for k in [b"a", b"c", b"e", b"g"] {
            s.put(Cf::Timers, k.to_vec(), vec![]);
        }
        s.commit().unwrap();
        s.put(Cf::Timers, b"b".to_vec(), vec![]);
        s.delete(Cf::Timers, b"c".to_vec());
        s.put(Cf::Timers, b"e".to_vec(), b"new".to_vec());
        s.put(Cf::Timers, b"h".to_vec(), vec![]);
        let all = s.scan(Cf::Timers, b"", None, 100).unwrap();
        assert_eq!(keys(&all), vec![&b"a"[..], b"b", b"e", b"g", b"h"]);
        assert_eq!(all[2].1, b"new".to_vec());
        let bounded = s.scan(Cf::Timers, b"b", Some(b"g"), 100).unwrap();
        assert_eq!(keys(&bounded), vec![&b"b"[..], b"e"]);
        let limited = s.scan(Cf::Timers, b"", None, 2).unwrap();
        assert_eq!(keys(&limited), vec![&b"a"[..], b"b"]);
    }

    /// A family scanned one leading string at a time keeps each string's
    /// uncommitted keys apart: a scan within one string sees only its own,
    /// in order and merged over disk; one across strings sees them all;
    /// a commit writes them all, in order.
    #[test]
    fn scans_by_leading_string_see_that_strings_keys_only() {
        use crate::state::keys::{pair_key, prefix_end, str_key};
        let (_d, mut s) = store();
        let key = |a: &str, b: &str| pair_key(a, b);
        s.put(Cf::Interest, key("p1", "c2"), b"disk".to_vec());
        s.put(Cf::Interest, key("p2", "c1"), b"disk".to_vec());
        s.commit().unwrap();
        for (p, c) in [
            ("p1", "c3"),
            ("p1", "c1"),
            ("p10", "c1"),
            ("p2", "c0"),
            ("p0", "c9"),
        ] {
            s.put(Cf::Interest, key(p, c), b"new".to_vec());
        }
        s.delete(Cf::Interest, key("p1", "c3"));
        let p1 = str_key("p1");
        let end = prefix_end(&p1).unwrap();
        let scanned = s.scan(Cf::Interest, &p1, Some(&end), 100).unwrap();
        assert_eq!(keys(&scanned), vec![&key("p1", "c1")[..], &key("p1", "c2")]);
        let mut after = key("p1", "c1");
        after.push(0);
        let rest = s.scan(Cf::Interest, &after, Some(&end), 100).unwrap();
        assert_eq!(keys(&rest), vec![&key("p1", "c2")[..]]);
        let all = s.scan(Cf::Interest, b"", None, 100).unwrap();
        let mut expected = [
            key("p0", "c9"),
            key("p1", "c1"),
            key("p1", "c2"),
            key("p10", "c1"),
            key("p2", "c0"),
            key("p2", "c1"),
        ];
        expected.sort();
        assert_eq!(
            keys(&all),
            expected.iter().map(|k| k.as_slice()).collect::<Vec<_>>()
        );
        s.commit().unwrap();
        let committed = s.committed_keys(Cf::Interest).unwrap();
        let expected: Vec<Vec<u8>> = expected.iter().map(|k| k.to_vec()).collect();
        assert_eq!(committed, expected);
    }

    fn entries(pairs: &[(&[u8], &[u8])]) -> Entries {
        pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn a_limited_scan_sees_every_deletion_before_its_last_entry() {
        use crate::state::keys::{pair_key, prefix_end, str_key};
        let p = str_key("p");
        let end = prefix_end(&p).unwrap();
        let families: [(Cf, Vec<u8>, Option<Vec<u8>>); 2] = [
            (Cf::Interest, p.to_vec(), Some(end)),
            (Cf::Meta, p.to_vec(), None),
        ];
        for (cf, lower, upper) in families {
            let (_d, mut s) = store();
            let key = |c: &str| pair_key("p", c);
            for c in ["c5", "c6", "c7"] {
                s.put(cf, key(c), b"disk".to_vec());
            }
            s.commit().unwrap();
            // Landing: three new entries and a deletion of one on disk;
            // above it, the three new entries deleted again.
            for c in ["c1", "c2", "c3"] {
                s.put(cf, key(c), b"landing".to_vec());
            }
            s.delete(cf, key("c5"));
            s.commit_in_background(open_gate()).unwrap();
            for c in ["c1", "c2", "c3", "c6"] {
                s.delete(cf, key(c));
            }
            s.put(cf, key("c4"), b"now".to_vec());
            let scanned = s.scan(cf, &lower, upper.as_deref(), 2).unwrap();
            let expected = entries(&[(&key("c4"), b"now"), (&key("c7"), b"disk")]);
            assert_eq!(scanned, expected, "{}", cf.name());
            let one = s.scan(cf, &lower, upper.as_deref(), 1).unwrap();
            assert_eq!(one, expected[..1], "{}", cf.name());
            s.wait_landed().unwrap();
        }
    }

    #[test]
    fn a_batch_landing_in_the_background_is_read_through_until_it_has_landed() {
        let (dir, mut s) = store();
        for k in [b"a", b"c", b"e"] {
            s.put(Cf::Meta, k.to_vec(), b"disk".to_vec());
        }
        s.commit().unwrap();
        s.put(Cf::Meta, b"b".to_vec(), b"landing".to_vec());
        s.delete(Cf::Meta, b"c".to_vec());
        s.put(Cf::Meta, b"e".to_vec(), b"landing".to_vec());
        s.commit_in_background(open_gate()).unwrap();
        // The current batch over the landing one: "b" deleted again, "c"
        // back, "e" rewritten.
        s.delete(Cf::Meta, b"b".to_vec());
        s.put(Cf::Meta, b"c".to_vec(), b"now".to_vec());
        assert_eq!(s.get(Cf::Meta, b"e").unwrap(), Some(b"landing".to_vec()));
        assert_eq!(s.get(Cf::Meta, b"b").unwrap(), None);
        let all = s.scan(Cf::Meta, b"", None, 100).unwrap();
        let expected = entries(&[(b"a", b"disk"), (b"c", b"now"), (b"e", b"landing")]);
        assert_eq!(all, expected);
        s.wait_landed().unwrap();
        assert_eq!(s.scan(Cf::Meta, b"", None, 100).unwrap(), expected);
        let on_disk = entries(&[(b"a", b"disk"), (b"b", b"landing"), (b"e", b"landing")]);
        assert_eq!(s.committed(Cf::Meta).unwrap(), on_disk);
        s.commit_in_background(open_gate()).unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.committed(Cf::Meta).unwrap(),
            expected,
            "dropping waits for the write"
        );
    }

    #[test]
    fn a_background_commit_is_written_only_once_its_gate_passes() {
        let (dir, mut s) = store();
        let (open, opened) = std::sync::mpsc::channel::<()>();
        s.put(Cf::Meta, b"a".to_vec(), b"gated".to_vec());
        s.commit_in_background(Box::new(move || opened.recv().map_err(|e| e.into())))
            .unwrap();
        assert!(
            s.committed(Cf::Meta).unwrap().is_empty(),
            "not before the gate"
        );
        assert_eq!(s.get(Cf::Meta, b"a").unwrap(), Some(b"gated".to_vec()));
        open.send(()).unwrap();
        s.wait_landed().unwrap();
        assert_eq!(s.committed(Cf::Meta).unwrap(), entries(&[(b"a", b"gated")]));

        s.put(Cf::Meta, b"b".to_vec(), b"withheld".to_vec());
        s.commit_in_background(Box::new(|| Err("not acknowledged".into())))
            .unwrap();
        let err = s.wait_landed().unwrap_err();
        assert!(matches!(err, StateError::Withheld(_)), "{err}");
        assert!(err.to_string().contains("not acknowledged"), "{err}");
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.committed(Cf::Meta).unwrap(), entries(&[(b"a", b"gated")]));
    }

    #[test]
    fn a_resident_key_put_and_deleted_in_one_batch_never_reaches_disk() {
        let (_d, mut s) = store();
        s.put(Cf::Timers, b"kept".to_vec(), vec![]);
        s.put(Cf::Timers, b"gone".to_vec(), vec![]);
        s.commit().unwrap();
        let before = s.uncommitted_bytes();
        s.put(Cf::Timers, b"brief".to_vec(), vec![]);
        s.delete(Cf::Timers, b"brief".to_vec());
        assert_eq!(s.uncommitted_bytes(), before, "nothing left to write");
        s.delete(Cf::Timers, b"gone".to_vec());
        s.put(Cf::Timers, b"gone".to_vec(), vec![]);
        s.delete(Cf::Timers, b"gone".to_vec());
        s.commit().unwrap();
        assert_eq!(
            s.committed_keys(Cf::Timers).unwrap(),
            vec![b"kept".to_vec()]
        );
        let all = s.scan(Cf::Timers, b"", None, 10).unwrap();
        assert_eq!(keys(&all), vec![&b"kept"[..]]);
    }

    #[test]
    fn compaction_drops_what_the_expiry_calls_dead() {
        let dir = tempfile::tempdir().unwrap();
        let expired: Expired = Box::new(|v: &[u8]| v == b"dead");
        let mut s = Store::open_with_expiry(dir.path(), Some((Cf::Dedup, expired))).unwrap();
        s.put(Cf::Dedup, b"a".to_vec(), b"dead".to_vec());
        s.put(Cf::Dedup, b"b".to_vec(), b"live".to_vec());
        s.put(Cf::Links, b"c".to_vec(), b"dead".to_vec());
        s.commit().unwrap();
        for cf in [Cf::Dedup, Cf::Links] {
            s.db.compact_range_cf(s.handle(cf), None::<&[u8]>, None::<&[u8]>);
        }
        assert_eq!(s.committed_keys(Cf::Dedup).unwrap(), vec![b"b".to_vec()]);
        assert_eq!(s.committed_keys(Cf::Links).unwrap(), vec![b"c".to_vec()]);
    }

    #[test]
    fn committed_state_survives_reopen_and_uncommitted_does_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.put(Cf::Meta, b"k".to_vec(), b"v".to_vec());
            s.commit().unwrap();
            s.put(Cf::Meta, b"lost".to_vec(), b"v".to_vec());
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get(Cf::Meta, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(s.get(Cf::Meta, b"lost").unwrap(), None);
    }
}
