//! The state an event will read, read ahead on the thread that decodes it
//! (`state::prefetch`): its id's dedup entry, its cookie's link (and, when
//! the link names a customer, that customer's records) or kept events, its
//! customer's record and the interest records of the products it names.
//! A guess costs only the read: the engine uses an answer only when it
//! asks for that very key and the answer is still true.

use crate::event::{Body, Event};
use crate::state::keys::{pair_key, str_key, Key};
use crate::state::prefetch::{Hint, Prefetcher};
use crate::state::Cf;
use rustc_hash::FxHashSet;

use super::dedup;
use super::records::{decode, Link};

/// Products of one purchase read ahead, at most: a large basket's other
/// records are read when applied.
const ITEMS_AHEAD: usize = 8;

/// Reads ahead for one thread, skipping what the engine will find in its
/// overlay anyway: a record the engine writes whenever it reads it (a
/// customer's, an interest, a cookie's kept events), once read ahead since
/// the state last changed behind the overlay, is in the overlay by the
/// time a later event reads it.
pub struct ReadAhead {
    prefetcher: Prefetcher,
    /// Hashes of (family, key) read ahead at `version`; a collision only
    /// skips a read.
    fetched: FxHashSet<u64>,
    version: u64,
}

impl ReadAhead {
    pub fn new(prefetcher: Prefetcher) -> ReadAhead {
        ReadAhead {
            version: prefetcher.version(),
            prefetcher,
            fetched: FxHashSet::default(),
        }
    }

    /// Reads ahead what applying `event` will read from RocksDB, as it
    /// stands.
    pub fn read(&mut self, event: &Event) -> Vec<Hint> {
        let version = self.prefetcher.version();
        if version != self.version {
            self.fetched.clear();
            self.version = version;
        }
        let mut hints = Vec::with_capacity(4);
        self.fetch(&mut hints, Cf::Dedup, dedup::key(&event.event_id));
        let (cookie, crm, products) = names(event);
        let mut crm = crm.map(str::to_string);
        if let Some(cookie) = cookie {
            let link = self.fetch(&mut hints, Cf::Links, str_key(cookie));
            if crm.is_none() {
                // The customer a cookie-only event will be applied to.
                crm = link
                    .and_then(Hint::value)
                    .and_then(|b| decode::<Link>(Cf::Links.name(), b).ok())
                    .map(|l| l.crm_id);
            }
            if crm.is_none() || matches!(event.body, Body::Identify(_)) {
                self.fetch(&mut hints, Cf::Anon, str_key(cookie));
            }
        }
        if let Some(crm) = crm {
            self.fetch(&mut hints, Cf::Customers, str_key(&crm));
            for product in products {
                self.fetch(&mut hints, Cf::Interest, pair_key(product, &crm));
            }
        }
        hints
    }

    /// Reads `key` ahead into `hints` (unless the overlay will hold it),
    /// and returns what was read.
    fn fetch<'h>(&mut self, hints: &'h mut Vec<Hint>, cf: Cf, key: Key) -> Option<&'h Hint> {
        if written_when_read(cf) && !self.fetched.insert(fingerprint(cf, &key)) {
            return None;
        }
        hints.push(self.prefetcher.fetch(cf, key)?);
        hints.last()
    }
}

/// The cookie, the customer and the products an event names.
fn names(event: &Event) -> (Option<&str>, Option<&str>, Vec<&str>) {
    match &event.body {
        Body::View(v) => (
            Some(&v.cookie_id),
            v.crm_id.as_deref(),
            vec![v.product_id.as_str()],
        ),
        Body::Identify(i) => (Some(&i.cookie_id), Some(&i.crm_id), Vec::new()),
        Body::Purchase(p) => (
            p.cookie_id.as_deref(),
            p.crm_id.as_deref(),
            p.items
                .iter()
                .take(ITEMS_AHEAD)
                .map(|i| i.product_id.as_str())
                .collect(),
        ),
        Body::Consent(c) => (None, Some(&c.crm_id), Vec::new()),
        Body::Promotion(_) | Body::Erase(_) => (None, None, Vec::new()),
    }
}

/// Families whose records the engine writes back whenever it reads them.
fn written_when_read(cf: Cf) -> bool {
    matches!(cf, Cf::Customers | Cf::Interest | Cf::Anon)
}

fn fingerprint(cf: Cf, key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, cf as u64)
}
