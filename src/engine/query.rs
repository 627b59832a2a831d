//! The queries of contract section 9: what the state holds about a customer
//! or a cookie, as of the watermark W, read from a committed snapshot (never
//! the engine's uncommitted overlay) so that an answer never shows half a
//! batch and a query never waits for the pipeline.

use serde::Serialize;

use crate::config::Config;
use crate::event::Millis;
use crate::state::keys::{prefix_end, read_pair, str_key};
use crate::state::{Cf, Snapshot, StateError};
use crate::time::format_ts;
use crate::trigger::round2;

use super::meta::Num;
use super::params::Params;
use super::pressure::Holdout;
use super::records::{decode, insert_sorted, Customer, Interest, Kept, KeptEvents, Link};

/// The default and the bounds of `limit`.
pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 1000;
/// At most this many cookies are named, as in a trigger.
const ANSWER_COOKIES: usize = 5;
/// How many of a customer's product keys a scan holds at once.
const SCAN_CHUNK: usize = 256;

/// Which id a query names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Customer(String),
    Cookie(String),
}

/// The answer to a query, in the contract's field order; absent fields are
/// those the contract leaves out of that kind of answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_id: Option<String>,
    /// Null for a cookie with no link.
    pub crm_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'static str>,
    pub as_of: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_ids: Option<Vec<String>>,
    pub products: Vec<ProductAnswer>,
}

/// What a cookie's identity partition makes of a question about it.
#[derive(Debug, Clone, PartialEq)]
pub enum CookieHop {
    /// Linked: the customer's partition answers.
    Customer(String),
    /// Not linked: the answer from its kept events, or nothing known.
    Answered(Option<Answer>),
}

impl Answer {
    /// A customer's answer, as asked about one of its cookies.
    fn for_cookie(self, cookie_id: &str) -> Answer {
        Answer {
            cookie_id: Some(cookie_id.to_string()),
            ..self
        }
    }

    pub fn to_json(&self) -> String {
        // Plain strings and finite numbers: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductAnswer {
    pub product_id: String,
    pub category: Option<String>,
    /// `score` rounded to 2 decimals, as section 4 writes a score.
    pub intent_score: f64,
    /// The score of contract section 3 at W: what products are ranked by.
    #[serde(skip)]
    pub score: f64,
    pub view_count: u32,
    pub last_viewed_at: Option<String>,
    pub pending_check_at: Option<String>,
}

/// Answers queries with the semantic settings of one configuration.
#[derive(Debug, Clone)]
pub struct Queries {
    params: Params,
    holdout: Holdout,
}

impl Queries {
    pub fn from_config(config: &Config) -> Queries {
        Queries {
            params: Params::from_config(config),
            holdout: Holdout::from_config(config),
        }
    }

    /// The answer for `subject` in `state`, with at most `limit` products;
    /// `None` when the state holds nothing about it (never seen, or erased).
    pub fn answer(
        &self,
        state: &Snapshot<'_>,
        subject: &Subject,
        limit: usize,
    ) -> Result<Option<Answer>, StateError> {
        let Some(w) = watermark(state, &self.params)? else {
            return Ok(None); // nothing was ever applied
        };
        match subject {
            Subject::Customer(crm_id) => self.customer(state, crm_id, w, limit),
            Subject::Cookie(cookie_id) => self.cookie(state, cookie_id, w, limit),
        }
    }

    fn customer(
        &self,
        state: &Snapshot<'_>,
        crm_id: &str,
        w: Millis,
        limit: usize,
    ) -> Result<Option<Answer>, StateError> {
        let customer: Option<Customer> = load(state, Cf::Customers, &str_key(crm_id))?;
        let interests = customer_interests(state, crm_id)?;
        if customer.is_none() && interests.is_empty() {
            return Ok(None);
        }
        let customer = customer.unwrap_or_default();
        let mut products = Vec::new();
        for (product_id, interest) in interests {
            if let Some(p) = self.product(state, product_id, &interest, w, true)? {
                products.push(p);
            }
        }
        Ok(Some(Answer {
            cookie_id: None,
            crm_id: Some(crm_id.to_string()),
            group: Some(self.holdout.group_of(crm_id).as_str()),
            as_of: format_ts(w),
            channels: Some(customer.consent.channels()),
            cookie_ids: Some(customer.top_cookies(ANSWER_COOKIES)),
            products: top(products, limit),
        }))
    }

    fn cookie(
        &self,
        state: &Snapshot<'_>,
        cookie_id: &str,
        w: Millis,
        limit: usize,
    ) -> Result<Option<Answer>, StateError> {
        match self.resolve_cookie(state, cookie_id, w, limit)? {
            CookieHop::Customer(crm_id) => {
                let answer = self.customer(state, &crm_id, w, limit)?;
                Ok(answer.map(|a| a.for_cookie(cookie_id)))
            }
            CookieHop::Answered(answer) => Ok(answer),
        }
    }

    /// Scaled out, on the partition of the cookie's identity stage: where
    /// the question goes next (the customer the cookie is linked to, whose
    /// partition answers), or the answer from its kept events.
    pub fn cookie_hop(
        &self,
        state: &Snapshot<'_>,
        cookie_id: &str,
        limit: usize,
    ) -> Result<CookieHop, StateError> {
        match watermark(state, &self.params)? {
            Some(w) => self.resolve_cookie(state, cookie_id, w, limit),
            None => Ok(CookieHop::Answered(None)),
        }
    }

    /// Scaled out, on the partition of the customer's stage: the answer
    /// about `crm_id`, as of that partition's watermark; asked about a
    /// cookie linked to it, `via_cookie` names the cookie.
    pub fn customer_answer(
        &self,
        state: &Snapshot<'_>,
        crm_id: &str,
        via_cookie: Option<&str>,
        limit: usize,
    ) -> Result<Option<Answer>, StateError> {
        let Some(w) = watermark(state, &self.params)? else {
            return Ok(None);
        };
        let answer = self.customer(state, crm_id, w, limit)?;
        Ok(answer.map(|a| match via_cookie {
            Some(cookie_id) => a.for_cookie(cookie_id),
            None => a,
        }))
    }

    fn resolve_cookie(
        &self,
        state: &Snapshot<'_>,
        cookie_id: &str,
        w: Millis,
        limit: usize,
    ) -> Result<CookieHop, StateError> {
        let key = str_key(cookie_id);
        if let Some(link) = load::<Link>(state, Cf::Links, &key)? {
            return Ok(CookieHop::Customer(link.crm_id));
        }
        let Some(kept) = load::<KeptEvents>(state, Cf::Anon, &key)? else {
            return Ok(CookieHop::Answered(None));
        };
        if kept.events.is_empty() {
            return Ok(CookieHop::Answered(None));
        }
        let mut products = Vec::new();
        for (product_id, interest) in kept_interests(&kept) {
            if let Some(p) = self.product(state, product_id, &interest, w, false)? {
                products.push(p);
            }
        }
        Ok(CookieHop::Answered(Some(Answer {
            cookie_id: Some(cookie_id.to_string()),
            crm_id: None,
            group: None,
            as_of: format_ts(w),
            channels: None,
            cookie_ids: None,
            products: top(products, limit),
        })))
    }

    /// A product's figures at `w`, or `None` without a view in the lookback.
    fn product(
        &self,
        state: &Snapshot<'_>,
        product_id: String,
        interest: &Interest,
        w: Millis,
        with_pending: bool,
    ) -> Result<Option<ProductAnswer>, StateError> {
        let window = interest.views_in(w.saturating_sub(self.params.lookback), w);
        let Some(last) = window.last() else {
            return Ok(None);
        };
        let pending = interest.pending.filter(|_| with_pending);
        let score = intent_score(&self.params, interest, w);
        Ok(Some(ProductAnswer {
            category: category(state, &product_id)?,
            intent_score: round2(score),
            score,
            view_count: window.len() as u32,
            last_viewed_at: Some(format_ts(last.ts)),
            pending_check_at: pending.map(|p| format_ts(p.check_at)),
            product_id,
        }))
    }
}

/// The intent score of `interest` at `t` (contract section 3), as the
/// customer stage decides with it.
pub fn intent_score(params: &Params, interest: &Interest, t: Millis) -> f64 {
    interest.intent_score(params, t)
}

/// W as the engine computes it (`Engine::watermark`), from what the last
/// commit stored.
fn watermark(state: &Snapshot<'_>, params: &Params) -> Result<Option<Millis>, StateError> {
    let max_ts = meta_i64(state, Num::MaxTs)?;
    let idle = meta_i64(state, Num::IdleWatermark)?;
    let from_events = max_ts.map(|m| m.saturating_sub(params.allowed_lateness));
    Ok(from_events.max(idle))
}

/// A number of `meta`, in its codec (8 bytes, big-endian).
fn meta_i64(state: &Snapshot<'_>, num: Num) -> Result<Option<Millis>, StateError> {
    let key = num.key();
    state.read(Cf::Meta, key, |b| {
        let bytes: [u8; 8] = b.try_into().map_err(|_| StateError::Corrupt {
            cf: Cf::Meta.name(),
            detail: format!(
                "{} is {} bytes, expected 8",
                String::from_utf8_lossy(key),
                b.len()
            ),
        })?;
        Ok(i64::from_be_bytes(bytes))
    })
}

fn load<T: serde::de::DeserializeOwned>(
    state: &Snapshot<'_>,
    cf: Cf,
    key: &[u8],
) -> Result<Option<T>, StateError> {
    state.read(cf, key, |b| decode(cf.name(), b))
}

/// Every interest record of a customer, by product id, through the
/// customer's product index (the one erase walks).
fn customer_interests(
    state: &Snapshot<'_>,
    crm_id: &str,
) -> Result<Vec<(String, Interest)>, StateError> {
    let prefix = str_key(crm_id);
    let end = prefix_end(&prefix);
    let mut cursor = prefix.to_vec();
    let mut out = Vec::new();
    loop {
        let chunk = state.scan(Cf::CustomerProducts, &cursor, end.as_deref(), SCAN_CHUNK)?;
        for (key, _) in &chunk {
            let Some((_, product_id)) = read_pair(key) else {
                continue;
            };
            let interest_key = crate::state::keys::pair_key(&product_id, crm_id);
            if let Some(i) = load::<Interest>(state, Cf::Interest, &interest_key)? {
                out.push((product_id, i));
            }
        }
        match chunk.last() {
            Some((last, _)) if chunk.len() == SCAN_CHUNK => {
                cursor = last.clone();
                cursor.push(0); // the next key after `last`
            }
            _ => return Ok(out),
        }
    }
}

/// A cookie's kept events as interest records (views and purchases per
/// product), so that they are scored by the very rules of a customer's.
fn kept_interests(kept: &KeptEvents) -> Vec<(String, Interest)> {
    let mut by_product: std::collections::BTreeMap<String, Interest> = Default::default();
    for event in &kept.events {
        match event {
            Kept::View {
                kind,
                product_id,
                ts,
            } => by_product
                .entry(product_id.clone())
                .or_default()
                .add_view(*ts, *kind),
            Kept::Purchase {
                product_ids, ts, ..
            } => {
                for p in product_ids {
                    insert_sorted(&mut by_product.entry(p.clone()).or_default().purchases, *ts);
                }
            }
        }
    }
    by_product.into_iter().collect()
}

fn category(state: &Snapshot<'_>, product_id: &str) -> Result<Option<String>, StateError> {
    state.read(Cf::Products, &str_key(product_id), |b| {
        String::from_utf8(b.to_vec()).map_err(|e| StateError::Corrupt {
            cf: Cf::Products.name(),
            detail: e.to_string(),
        })
    })
}

/// The `limit` products with the highest score, ties by product id. The
/// score of section 3, not its rounding: two products that both show 1.0
/// are still told apart by their views (the newer one first).
fn top(mut products: Vec<ProductAnswer>, limit: usize) -> Vec<ProductAnswer> {
    products.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.product_id.cmp(&b.product_id))
    });
    products.truncate(limit);
    products
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::records::KindCode;

    fn params() -> Params {
        Params::from_config(&Config::default())
    }

    const H: Millis = 3_600_000;

    #[test]
    fn the_score_counts_views_after_the_latest_purchase_until_t() {
        let p = params();
        let mut i = Interest::default();
        i.add_view(0, KindCode::ProductView);
        i.add_view(10 * H, KindCode::AddToCart);
        assert!((intent_score(&p, &i, 10 * H) - (3.0 + 2f64.powf(-10.0 / 72.0))).abs() < 1e-12);
        insert_sorted(&mut i.purchases, 5 * H);
        assert!((intent_score(&p, &i, 10 * H) - 3.0).abs() < 1e-12);
        // A purchase stamped after t does not reset the score at t.
        insert_sorted(&mut i.purchases, 20 * H);
        assert!((intent_score(&p, &i, 10 * H) - 3.0).abs() < 1e-12);
        let none = intent_score(&p, &i, 20 * H);
        assert_eq!(none, 0.0);
        assert!(none.is_sign_positive(), "an empty score is 0.0, not -0.0");
    }

    #[test]
    fn kept_events_become_interests_per_product() {
        let kept = KeptEvents {
            events: vec![
                Kept::View {
                    kind: KindCode::ProductView,
                    product_id: "B".into(),
                    ts: 5,
                },
                Kept::Purchase {
                    product_ids: vec!["B".into(), "A".into()],
                    ts: 7,
                    order_id: "O1".into(),
                    channel: crate::event::Channel::Web,
                },
                Kept::View {
                    kind: KindCode::AddToCart,
                    product_id: "B".into(),
                    ts: 3,
                },
            ],
        };
        let got = kept_interests(&kept);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "A");
        assert_eq!(got[0].1.purchases, vec![7]);
        assert_eq!(got[1].0, "B");
        let ts: Vec<_> = got[1].1.views.iter().map(|v| v.ts).collect();
        assert_eq!(ts, vec![3, 5]);
    }

    #[test]
    fn top_orders_by_score_then_id_and_cuts_at_the_limit() {
        let p = |id: &str, s: f64| ProductAnswer {
            product_id: id.into(),
            category: None,
            intent_score: round2(s),
            score: s,
            view_count: 1,
            last_viewed_at: None,
            pending_check_at: None,
        };
        let got = top(vec![p("b", 1.0), p("c", 2.0), p("a", 1.0), p("d", 0.5)], 3);
        let ids: Vec<_> = got.iter().map(|p| p.product_id.as_str()).collect();
        assert_eq!(ids, vec!["c", "a", "b"]);
        // Both show 1.0; the higher score comes first and survives the cut.
        let got = top(vec![p("a", 0.9961), p("b", 0.9999)], 1);
        assert_eq!(
            (got[0].product_id.as_str(), got[0].intent_score),
            ("b", 1.0)
        );
    }
}
