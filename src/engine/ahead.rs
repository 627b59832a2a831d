//! The state an event will read, read ahead on the thread that decodes it
//! (`state::prefetch`): its id's dedup entry, its cookie's link (and, when
//! the link names a customer, that customer's records) or kept events, its
//! customer's record and the interest records of the products it names.
//! A guess costs only the read: the engine uses an answer only when it
//! asks for that very key and the answer is still true.

use crate::event::{Body, Event};
use crate::state::keys::{pair_key, str_key};
use crate::state::prefetch::{Hint, Prefetcher};
use crate::state::Cf;

use super::dedup;
use super::records::{decode, Link};

/// Products of one purchase read ahead, at most: a large basket's other
/// records are read when applied.
const ITEMS_AHEAD: usize = 8;

/// Reads ahead what applying `event` will read from RocksDB, as it stands.
pub fn read_ahead(prefetcher: &Prefetcher, event: &Event) -> Vec<Hint> {
    let mut hints = Vec::with_capacity(4);
    let mut fetch = |cf: Cf, key: Vec<u8>| {
        let hint = prefetcher.fetch(cf, key);
        let value = hint.as_ref().and_then(|h| h.value().map(<[u8]>::to_vec));
        hints.extend(hint);
        value
    };
    fetch(Cf::Dedup, dedup::key(&event.event_id));
    let (cookie, crm, products): (Option<&str>, Option<&str>, Vec<&str>) = match &event.body {
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
        Body::Promotion(_) | Body::Erase(_) => return hints,
    };
    let mut crm = crm.map(str::to_string);
    if let Some(cookie) = cookie {
        let link = fetch(Cf::Links, str_key(cookie));
        if crm.is_none() {
            crm = link
                .and_then(|b| decode::<Link>(Cf::Links.name(), &b).ok())
                .map(|l| l.crm_id);
        }
        if crm.is_none() || matches!(event.body, Body::Identify(_)) {
            fetch(Cf::Anon, str_key(cookie));
        }
    }
    if let Some(crm) = crm {
        fetch(Cf::Customers, str_key(&crm));
        for product in products {
            fetch(Cf::Interest, pair_key(product, &crm));
        }
    }
    hints
}
