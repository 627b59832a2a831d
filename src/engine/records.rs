//! The records the engine keeps, and their compact binary form.
//!
//! Values are postcard (varint-packed serde) behind a one-byte version, so a
//! future layout can be told apart from this one. Version 2 added the open
//! triggers, the fired times of the frequency cap and the order of a kept
//! purchase (contract v2); a version 1 state is refused, not misread.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::event::{Channel, Millis, ViewKind};
use crate::state::{Cf, StateError, Store};
use crate::trigger::TriggerKind;

const VERSION: u8 = 2;

/// The record's version byte and postcard body, in a vector of exactly
/// its length. Serialised into a scratch buffer kept by the thread, then
/// copied once: a vector grown as it is written reallocates at each
/// doubling and keeps up to half its capacity unused, and the overlay
/// holds such vectors by the hundred thousand until they are committed.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut buf = std::mem::take(scratch);
        buf.clear();
        buf.push(VERSION);
        // Serializing these plain structs into a Vec cannot fail.
        let Ok(buf) = postcard::serialize_with_flavor(value, Behind(buf)) else {
            return vec![VERSION];
        };
        let out = buf.to_vec();
        if buf.capacity() <= SCRATCH_KEPT {
            *scratch = buf;
        }
        out
    })
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A scratch buffer grown past this by an unusually long record is freed.
const SCRATCH_KEPT: usize = 64 << 10;

/// A postcard output written behind what the vector already holds (the
/// version byte), so the body is not serialised apart and then copied.
struct Behind(Vec<u8>);

impl postcard::ser_flavors::Flavor for Behind {
    type Output = Vec<u8>;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

pub fn decode<T: DeserializeOwned>(cf: &'static str, bytes: &[u8]) -> Result<T, StateError> {
    let corrupt = |detail: String| StateError::Corrupt { cf, detail };
    match bytes.split_first() {
        Some((&VERSION, body)) => postcard::from_bytes(body).map_err(|e| corrupt(e.to_string())),
        Some((1, _)) => Err(corrupt(
            "record of state format 1, written by a pretext before v2: replay into a new state directory"
                .into(),
        )),
        Some((v, _)) => Err(corrupt(format!("unknown record version {v}"))),
        None => Err(corrupt("empty record".into())),
    }
}

/// The record at `key` of `cf`, decoded in place.
pub fn load<T: DeserializeOwned>(
    store: &Store,
    cf: Cf,
    key: &[u8],
) -> Result<Option<T>, StateError> {
    store.read(cf, key, |bytes| decode(cf.name(), bytes))
}

/// A cookie's link to a customer: the one with the greatest `ts` wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub crm_id: String,
    pub ts: Millis,
}

/// An event of a cookie with no link yet, kept for retroactive stitching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Kept {
    View {
        kind: KindCode,
        product_id: String,
        ts: Millis,
    },
    Purchase {
        product_ids: Vec<String>,
        ts: Millis,
        order_id: String,
        channel: Channel,
    },
}

impl Kept {
    pub fn ts(&self) -> Millis {
        match self {
            Kept::View { ts, .. } | Kept::Purchase { ts, .. } => *ts,
        }
    }
}

/// The anonymous events of one cookie, in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeptEvents {
    pub events: Vec<Kept>,
}

impl KeptEvents {
    /// `encoded` (a `KeptEvents` as `encode` wrote it) with `event`
    /// appended, as `encode` would write the longer list, when that list
    /// holds at most `cap` events; `None` when it would hold more, or the
    /// bytes are not a list this version wrote (the caller then decodes,
    /// which evicts, or reports the corruption). A cookie's events are
    /// kept one at a time, so this spares decoding the list on each.
    pub fn append_encoded(encoded: &[u8], event: &Kept, cap: usize) -> Option<Vec<u8>> {
        let (&VERSION, body) = encoded.split_first()? else {
            return None;
        };
        let (len, items) = read_varint(body)?;
        if len.checked_add(1)? > cap {
            return None;
        }
        let mut out = Vec::with_capacity(encoded.len() + 32);
        out.push(VERSION);
        write_varint(&mut out, len + 1);
        out.extend_from_slice(items);
        out.extend_from_slice(&postcard::to_allocvec(event).ok()?);
        Some(out)
    }
}

/// A postcard sequence length: LEB128, at most 10 bytes.
fn read_varint(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((usize::try_from(value).ok()?, &bytes[i + 1..]));
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `ViewKind` as stored (serde-friendly, one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KindCode {
    ProductView,
    AddToCart,
}

impl From<ViewKind> for KindCode {
    fn from(k: ViewKind) -> Self {
        match k {
            ViewKind::ProductView => KindCode::ProductView,
            ViewKind::AddToCart => KindCode::AddToCart,
        }
    }
}

impl From<KindCode> for ViewKind {
    fn from(k: KindCode) -> Self {
        match k {
            KindCode::ProductView => ViewKind::ProductView,
            KindCode::AddToCart => ViewKind::AddToCart,
        }
    }
}

/// A customer's channels; absent until told, as the contract's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub ads: bool,
    pub email: bool,
    pub sms: bool,
}

impl Default for Consent {
    fn default() -> Self {
        Consent {
            ads: true,
            email: false,
            sms: false,
        }
    }
}

impl Consent {
    /// Opted-in channels in the contract's order.
    pub fn channels(&self) -> Vec<&'static str> {
        [(self.ads, "ads"), (self.email, "email"), (self.sms, "sms")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect()
    }
}

/// A cookie as the customer stage knows it: latest activity, and whether it
/// is linked to this customer now (a cookie can move to another customer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CookieMark {
    pub cookie_id: String,
    pub last_ts: Millis,
    pub linked: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub consent: Consent,
    pub cookies: Vec<CookieMark>,
    /// `fired_at` of the customer's fired triggers (both types, both
    /// groups), sorted; kept only while the frequency cap is on.
    pub fired: Vec<Millis>,
}

impl Customer {
    /// Up to `n` linked cookies, most recently active first, ties by id.
    pub fn top_cookies(&self, n: usize) -> Vec<String> {
        let mut linked: Vec<&CookieMark> = self.cookies.iter().filter(|c| c.linked).collect();
        linked.sort_by(|a, b| {
            b.last_ts
                .cmp(&a.last_ts)
                .then_with(|| a.cookie_id.cmp(&b.cookie_id))
        });
        linked
            .into_iter()
            .take(n)
            .map(|c| c.cookie_id.clone())
            .collect()
    }

    pub fn mark(&mut self, cookie_id: &str) -> &mut CookieMark {
        let pos = match self.cookies.iter().position(|c| c.cookie_id == cookie_id) {
            Some(p) => p,
            None => {
                self.cookies.push(CookieMark {
                    cookie_id: cookie_id.to_string(),
                    last_ts: Millis::MIN,
                    linked: false,
                });
                self.cookies.len() - 1
            }
        };
        &mut self.cookies[pos]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewMark {
    pub ts: Millis,
    pub kind: KindCode,
}

/// The pending `viewed_not_bought` check of a (customer, product) session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub check_at: Millis,
    pub first_view: Millis,
}

/// Everything about one customer's interest in one product.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interest {
    /// Sorted by time; equal times keep arrival order.
    pub views: Vec<ViewMark>,
    /// Purchase times, sorted.
    pub purchases: Vec<Millis>,
    pub pending: Option<Pending>,
    /// `fired_at` of past `viewed_not_bought` triggers, sorted.
    pub vnb_fired: Vec<Millis>,
    /// `fired_at` of past `promo_on_viewed_item` triggers, sorted.
    pub promo_fired: Vec<Millis>,
    /// Fired triggers not yet converted, in firing order.
    pub open: Vec<OpenTrigger>,
}

/// A fired trigger a purchase may still convert (contract section 8). Its
/// id and group follow from these and the (customer, product) key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTrigger {
    pub kind: KindOfTrigger,
    pub fired_at: Millis,
}

/// `TriggerKind` as stored (serde-friendly, one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KindOfTrigger {
    ViewedNotBought,
    PromoOnViewedItem,
}

impl From<TriggerKind> for KindOfTrigger {
    fn from(k: TriggerKind) -> Self {
        match k {
            TriggerKind::ViewedNotBought => KindOfTrigger::ViewedNotBought,
            TriggerKind::PromoOnViewedItem => KindOfTrigger::PromoOnViewedItem,
        }
    }
}

impl From<KindOfTrigger> for TriggerKind {
    fn from(k: KindOfTrigger) -> Self {
        match k {
            KindOfTrigger::ViewedNotBought => TriggerKind::ViewedNotBought,
            KindOfTrigger::PromoOnViewedItem => TriggerKind::PromoOnViewedItem,
        }
    }
}

/// Inserts `ts` keeping `v` sorted (after equal elements).
pub fn insert_sorted(v: &mut Vec<Millis>, ts: Millis) {
    let at = v.partition_point(|&x| x <= ts);
    v.insert(at, ts);
}

impl Interest {
    pub fn add_view(&mut self, ts: Millis, kind: KindCode) {
        let at = self.views.partition_point(|v| v.ts <= ts);
        self.views.insert(at, ViewMark { ts, kind });
    }

    /// Views with `from <= ts <= to`.
    pub fn views_in(&self, from: Millis, to: Millis) -> &[ViewMark] {
        let lo = self.views.partition_point(|v| v.ts < from);
        let hi = self.views.partition_point(|v| v.ts <= to);
        &self.views[lo..hi.max(lo)]
    }

    /// The latest purchase stamped at or before `t`.
    pub fn latest_purchase_until(&self, t: Millis) -> Option<Millis> {
        let hi = self.purchases.partition_point(|&p| p <= t);
        hi.checked_sub(1).map(|i| self.purchases[i])
    }

    /// The intent score at `t` (contract section 3): the decayed weights of
    /// the views in the lookback made after the latest purchase stamped at
    /// or before `t`.
    pub fn intent_score(&self, params: &super::params::Params, t: Millis) -> f64 {
        let from = t.saturating_sub(params.lookback);
        let after = self.latest_purchase_until(t);
        let half_life = params.half_life as f64;
        self.views_in(from, t)
            .iter()
            .filter(|v| after.is_none_or(|p| v.ts > p))
            .map(|v| {
                let w = match v.kind {
                    KindCode::ProductView => params.weight_view,
                    KindCode::AddToCart => params.weight_cart,
                };
                w * (-((t - v.ts) as f64) / half_life).exp2()
            })
            // From +0.0: `sum()` starts at −0.0, and a window with no view
            // would be written `-0.0`.
            .fold(0.0, |sum, s| sum + s)
    }

    /// Whether a purchase is stamped at or after `t`.
    pub fn purchased_since(&self, t: Millis) -> bool {
        self.purchases.last().is_some_and(|&p| p >= t)
    }

    /// Drops what no check within the retention horizon can need, and the
    /// open triggers whose attribution window closed before `open_horizon`.
    pub fn prune(
        &mut self,
        horizon: Millis,
        cooldown_horizon: Millis,
        open_horizon: (Millis, Millis),
    ) {
        self.views.retain(|v| v.ts >= horizon);
        self.purchases.retain(|&p| p >= horizon);
        self.vnb_fired.retain(|&f| f >= cooldown_horizon);
        self.promo_fired.retain(|&f| f >= cooldown_horizon);
        let (before, window) = open_horizon;
        self.open
            .retain(|o| o.fired_at.saturating_add(window) >= before);
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
            && self.purchases.is_empty()
            && self.pending.is_none()
            && self.vnb_fired.is_empty()
            && self.promo_fired.is_empty()
            && self.open.is_empty()
    }
}

/// Whether any time in sorted `fired` is less than `cooldown` away from `t`.
pub fn in_cooldown(fired: &[Millis], t: Millis, cooldown: Millis) -> bool {
    let lo = fired.partition_point(|&f| f <= t.saturating_sub(cooldown));
    fired[lo..]
        .first()
        .is_some_and(|&f| f < t.saturating_add(cooldown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_binary_form() {
        let mut i = Interest::default();
        i.add_view(5, KindCode::AddToCart);
        i.add_view(3, KindCode::ProductView);
        i.pending = Some(Pending {
            check_at: 10,
            first_view: 3,
        });
        let bytes = encode(&i);
        assert_eq!(decode::<Interest>("interest", &bytes).unwrap(), i);
        assert!(decode::<Interest>("interest", &[9, 1]).is_err());
        assert!(decode::<Interest>("interest", &[]).is_err());
    }

    #[test]
    fn an_appended_kept_event_encodes_as_the_longer_list() {
        let view = |ts| Kept::View {
            kind: KindCode::ProductView,
            product_id: format!("P{ts}"),
            ts,
        };
        let purchase = Kept::Purchase {
            product_ids: vec!["P1".into(), "P2".into()],
            ts: 7,
            order_id: "O1".into(),
            channel: Channel::Web,
        };
        // 200 events: the length crosses the one-byte varint at 128.
        let mut kept = KeptEvents::default();
        let mut bytes = encode(&kept);
        for i in 0..200 {
            let event = if i % 7 == 3 {
                purchase.clone()
            } else {
                view(i)
            };
            bytes = KeptEvents::append_encoded(&bytes, &event, 500).unwrap();
            kept.events.push(event);
            assert_eq!(bytes, encode(&kept));
        }
        assert_eq!(decode::<KeptEvents>("anon", &bytes).unwrap(), kept);
        // Full, or not a list of this version: left to the caller.
        assert_eq!(KeptEvents::append_encoded(&bytes, &view(1), 200), None);
        assert_eq!(KeptEvents::append_encoded(&[1, 0], &view(1), 9), None);
        assert_eq!(KeptEvents::append_encoded(&[], &view(1), 9), None);
        assert_eq!(
            KeptEvents::append_encoded(&[VERSION, 0x80], &view(1), 9),
            None
        );
    }

    #[test]
    fn views_stay_sorted_and_windows_are_inclusive() {
        let mut i = Interest::default();
        for ts in [5, 1, 3, 3, 9] {
            i.add_view(ts, KindCode::ProductView);
        }
        let ts: Vec<_> = i.views.iter().map(|v| v.ts).collect();
        assert_eq!(ts, vec![1, 3, 3, 5, 9]);
        assert_eq!(i.views_in(3, 5).len(), 3);
        assert_eq!(i.views_in(6, 8).len(), 0);
        assert_eq!(i.views_in(10, 2).len(), 0);
    }

    #[test]
    fn purchase_queries() {
        let mut i = Interest::default();
        insert_sorted(&mut i.purchases, 10);
        insert_sorted(&mut i.purchases, 4);
        assert_eq!(i.latest_purchase_until(9), Some(4));
        assert_eq!(i.latest_purchase_until(10), Some(10));
        assert_eq!(i.latest_purchase_until(3), None);
        assert!(i.purchased_since(10));
        assert!(!i.purchased_since(11));
    }

    #[test]
    fn cooldown_is_strictly_less_than_the_distance_both_ways() {
        let fired = vec![100];
        assert!(in_cooldown(&fired, 100, 10));
        assert!(in_cooldown(&fired, 109, 10));
        assert!(!in_cooldown(&fired, 110, 10));
        assert!(in_cooldown(&fired, 91, 10));
        assert!(!in_cooldown(&fired, 90, 10));
        assert!(!in_cooldown(&[], 90, 10));
    }

    #[test]
    fn top_cookies_order_by_activity_then_id_and_skip_unlinked() {
        let mut c = Customer::default();
        for (id, ts, linked) in [
            ("b", 5, true),
            ("a", 5, true),
            ("c", 9, false),
            ("d", 1, true),
        ] {
            let m = c.mark(id);
            m.last_ts = ts;
            m.linked = linked;
        }
        assert_eq!(c.top_cookies(5), vec!["a", "b", "d"]);
        assert_eq!(c.top_cookies(1), vec!["a"]);
    }

    #[test]
    fn default_channels_are_ads_only() {
        assert_eq!(Consent::default().channels(), vec!["ads"]);
        let all = Consent {
            ads: true,
            email: true,
            sms: true,
        };
        assert_eq!(all.channels(), vec!["ads", "email", "sms"]);
    }
}
