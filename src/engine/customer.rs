//! The customer stage, keyed by CRM id: views, purchases, sessions and their
//! checks, cooldowns, consent and erase. It sees customers only through
//! `Resolved` events and never reads identity state.

use sha2::{Digest, Sha256};

use crate::event::{Channel, Millis, Promotion};
use crate::state::keys::{pair_key, prefix_end, read_pair, str_key};
use crate::state::{Cf, StateError, Store};
use crate::trigger::{round2, trigger_id, Conversion, PromotionInfo, Trigger, TriggerKind};

use super::identity::Resolved;
use super::params::Params;
use super::records::{
    decode, encode, in_cooldown, insert_sorted, load, Customer, Interest, KindCode, OpenTrigger,
    Pending,
};
use super::stats::{EngineStats, Suppressed};
use super::timers::Timers;
use super::TriggerSink;

/// How many viewers a promotion fan-out holds in memory at once.
const FAN_OUT_CHUNK: usize = 256;
/// At most this many cookies are named in a trigger.
const TRIGGER_COOKIES: usize = 5;

pub struct CustomerStage<'a> {
    pub store: &'a mut Store,
    pub params: &'a Params,
    pub stats: &'a mut EngineStats,
    pub sink: &'a mut dyn TriggerSink,
    /// The highest applied event time: the reference for pruning.
    pub max_ts: Millis,
    pub timers: &'a mut Timers,
}

impl CustomerStage<'_> {
    pub fn handle(&mut self, msg: Resolved) -> Result<(), StateError> {
        match msg {
            Resolved::Linked { crm_id, cookie_id } => {
                self.update_customer(&crm_id, |c| c.mark(&cookie_id).linked = true)
            }
            Resolved::Unlinked { crm_id, cookie_id } => {
                self.update_customer(&crm_id, |c| c.mark(&cookie_id).linked = false)
            }
            Resolved::Seen {
                crm_id,
                cookie_id,
                ts,
            } => self.update_customer(&crm_id, |c| touch(c, &cookie_id, ts)),
            Resolved::View {
                crm_id,
                cookie_id,
                product_id,
                kind,
                ts,
            } => {
                self.touch_cookie(&crm_id, cookie_id.as_deref(), ts)?;
                self.on_view(&crm_id, &product_id, kind.into(), ts)
            }
            Resolved::Purchase {
                crm_id,
                cookie_id,
                product_ids,
                ts,
                order_id,
                channel,
            } => {
                self.touch_cookie(&crm_id, cookie_id.as_deref(), ts)?;
                let order = Order {
                    order_id: &order_id,
                    channel,
                    ts,
                };
                self.on_purchase(&crm_id, &product_ids, &order)
            }
        }
    }

    fn load_customer(&self, crm_id: &str) -> Result<Customer, StateError> {
        Ok(load(self.store, Cf::Customers, &str_key(crm_id))?.unwrap_or_default())
    }

    fn update_customer(
        &mut self,
        crm_id: &str,
        f: impl FnOnce(&mut Customer),
    ) -> Result<(), StateError> {
        let mut c = self.load_customer(crm_id)?;
        f(&mut c);
        self.store.put(Cf::Customers, str_key(crm_id), encode(&c));
        Ok(())
    }

    fn touch_cookie(
        &mut self,
        crm_id: &str,
        cookie_id: Option<&str>,
        ts: Millis,
    ) -> Result<(), StateError> {
        match cookie_id {
            Some(k) => self.update_customer(crm_id, |c| touch(c, k, ts)),
            None => Ok(()),
        }
    }

    fn load_interest(
        &self,
        crm_id: &str,
        product_id: &str,
    ) -> Result<Option<Interest>, StateError> {
        load(self.store, Cf::Interest, &pair_key(product_id, crm_id))
    }

    /// Loads the interest record, registering a new one in the customer's
    /// product index (which erase walks).
    fn interest_or_new(&mut self, crm_id: &str, product_id: &str) -> Result<Interest, StateError> {
        match self.load_interest(crm_id, product_id)? {
            Some(i) => Ok(i),
            None => {
                self.store.put(
                    Cf::CustomerProducts,
                    pair_key(crm_id, product_id),
                    Vec::new(),
                );
                Ok(Interest::default())
            }
        }
    }

    fn save_interest(&mut self, crm_id: &str, product_id: &str, mut interest: Interest) {
        let horizon = self.max_ts.saturating_sub(self.params.retention());
        let view_horizon = interest
            .pending
            .map_or(horizon, |p| horizon.min(p.first_view));
        let fired_horizon = self.max_ts.saturating_sub(self.params.cooldown_retention());
        let open_horizon = (horizon, self.params.attribution_window);
        interest.prune(view_horizon, fired_horizon, open_horizon);
        self.store.put(
            Cf::Interest,
            pair_key(product_id, crm_id),
            encode(&interest),
        );
    }

    /// A view joins the pending session or starts one (section 3 of the
    /// contract); a view after the pending check first fires that check.
    fn on_view(
        &mut self,
        crm_id: &str,
        product_id: &str,
        kind: KindCode,
        t: Millis,
    ) -> Result<(), StateError> {
        let mut interest = self.interest_or_new(crm_id, product_id)?;
        let check_at = self.params.check_time(t);
        match interest.pending {
            None => self.schedule(crm_id, product_id, &mut interest, check_at, t),
            Some(p) if t <= p.check_at => {
                // The timer stays where it is; when it comes due it is
                // re-filed at the moved check time (see `fire_due`). Moving
                // it here would leave a deletion for every join, which
                // timer scans would have to step over.
                interest.pending = Some(Pending {
                    check_at: p.check_at.max(check_at),
                    first_view: p.first_view.min(t),
                });
            }
            Some(p) => {
                self.fire_check(crm_id, product_id, &mut interest, p)?;
                self.schedule(crm_id, product_id, &mut interest, check_at, t);
            }
        }
        interest.add_view(t, kind);
        self.save_interest(crm_id, product_id, interest);
        Ok(())
    }

    fn schedule(
        &mut self,
        crm_id: &str,
        product_id: &str,
        interest: &mut Interest,
        check_at: Millis,
        first_view: Millis,
    ) {
        interest.pending = Some(Pending {
            check_at,
            first_view,
        });
        self.timers
            .schedule(self.store, check_at, crm_id, product_id);
        self.stats.pending_checks += 1;
    }

    fn on_purchase(
        &mut self,
        crm_id: &str,
        product_ids: &[String],
        order: &Order<'_>,
    ) -> Result<(), StateError> {
        let mut seen: Vec<&str> = Vec::with_capacity(product_ids.len());
        for p in product_ids {
            if seen.contains(&p.as_str()) {
                continue;
            }
            seen.push(p);
            let mut interest = self.interest_or_new(crm_id, p)?;
            insert_sorted(&mut interest.purchases, order.ts);
            self.convert(crm_id, p, &mut interest, order);
            self.save_interest(crm_id, p, interest);
        }
        Ok(())
    }

    /// Converts every open trigger of (customer, product) that the order
    /// qualifies for — stamped in (fired_at, fired_at + window] — in the
    /// order they fired; each converts once, then is closed.
    fn convert(&mut self, crm_id: &str, product_id: &str, interest: &mut Interest, o: &Order<'_>) {
        let window = self.params.attribution_window;
        let qualifies =
            |t: &OpenTrigger| t.fired_at < o.ts && o.ts <= t.fired_at.saturating_add(window);
        let group = self.params.holdout.group_of(crm_id);
        for open in interest.open.iter().filter(|t| qualifies(t)) {
            let kind: TriggerKind = open.kind.into();
            self.stats.conversions[kind.index()][group.index()] += 1;
            self.sink.convert(Conversion {
                trigger_id: trigger_id(kind, crm_id, product_id, open.fired_at),
                kind,
                group,
                crm_id: crm_id.to_string(),
                product_id: product_id.to_string(),
                fired_at: open.fired_at,
                order_id: o.order_id.to_string(),
                channel: o.channel.as_str().to_string(),
                converted_at: o.ts,
            });
        }
        interest.open.retain(|t| !qualifies(t));
    }

    /// Why a trigger of either type at `t` is held back, if it is: its
    /// type's cooldown (`fired` its firing times), then the frequency cap.
    fn held_back(
        &mut self,
        crm_id: &str,
        fired: &[Millis],
        cooldown: Millis,
        t: Millis,
    ) -> Result<Option<Suppressed>, StateError> {
        if in_cooldown(fired, t, cooldown) {
            Ok(Some(Suppressed::Cooldown))
        } else if !self.pass_cap(crm_id, t)? {
            Ok(Some(Suppressed::FrequencyCap))
        } else {
            Ok(None)
        }
    }

    /// Fires (or suppresses) the pending check `p` as of its check time and
    /// clears it. The caller saves `interest`.
    fn fire_check(
        &mut self,
        crm_id: &str,
        product_id: &str,
        interest: &mut Interest,
        p: Pending,
    ) -> Result<(), StateError> {
        interest.pending = None;
        self.timers
            .cancel(self.store, p.check_at, crm_id, product_id);
        self.stats.pending_checks -= 1;
        let t = p.check_at;
        let score = self.score(interest, t);
        let verdict = if interest.purchased_since(p.first_view) {
            Some(Suppressed::Purchased)
        } else if score < self.params.min_score {
            Some(Suppressed::LowScore)
        } else {
            self.held_back(crm_id, &interest.vnb_fired, self.params.vnb_cooldown, t)?
        };
        if let Some(reason) = verdict {
            self.stats.suppressed[reason as usize] += 1;
            return Ok(());
        }
        insert_sorted(&mut interest.vnb_fired, t);
        self.fire(
            TriggerKind::ViewedNotBought,
            crm_id,
            product_id,
            interest,
            t,
            None,
        )
    }

    /// The frequency cap, checked last (contract section 8): false when the
    /// customer's fired triggers near `t` reach the cap; otherwise `t`
    /// counts from now on.
    fn pass_cap(&mut self, crm_id: &str, t: Millis) -> Result<bool, StateError> {
        let cap = self.params.cap;
        if !cap.is_on() {
            return Ok(true);
        }
        let mut customer = self.load_customer(crm_id)?;
        if cap.reached(&customer.fired, t) {
            return Ok(false);
        }
        insert_sorted(&mut customer.fired, t);
        let horizon = self.max_ts.saturating_sub(self.params.cap_retention());
        customer.fired.retain(|&f| f >= horizon);
        self.store
            .put(Cf::Customers, str_key(crm_id), encode(&customer));
        Ok(true)
    }

    /// Fires a decided trigger: opens it for conversion and hands it on.
    fn fire(
        &mut self,
        kind: TriggerKind,
        crm_id: &str,
        product_id: &str,
        interest: &mut Interest,
        t: Millis,
        promotion: Option<PromotionInfo>,
    ) -> Result<(), StateError> {
        let trigger = self.build(kind, crm_id, product_id, interest, t, promotion)?;
        interest.open.push(OpenTrigger {
            kind: kind.into(),
            fired_at: t,
        });
        self.stats.triggers[kind.index()][trigger.group.index()] += 1;
        self.sink.emit(trigger);
        Ok(())
    }

    /// Handles the timer (due, crm, product) found due: fires the
    /// session's check when it is due at `due`, or re-files the timer at
    /// the session's moved check time.
    pub fn fire_due(
        &mut self,
        due: Millis,
        crm_id: &str,
        product_id: &str,
    ) -> Result<(), StateError> {
        let mut interest = self.load_interest(crm_id, product_id)?.unwrap_or_default();
        match interest.pending {
            Some(p) if p.check_at == due => {
                self.fire_check(crm_id, product_id, &mut interest, p)?;
                self.save_interest(crm_id, product_id, interest);
            }
            Some(p) if p.check_at > due => {
                self.timers
                    .refile(self.store, due, p.check_at, crm_id, product_id);
            }
            // The session fired early or was erased: the timer is stale.
            _ => self.timers.cancel(self.store, due, crm_id, product_id),
        }
        Ok(())
    }

    /// The intent score of `interest` at `t` (contract section 3).
    fn score(&self, interest: &Interest, t: Millis) -> f64 {
        interest.intent_score(self.params, t)
    }

    fn build(
        &self,
        kind: TriggerKind,
        crm_id: &str,
        product_id: &str,
        interest: &Interest,
        t: Millis,
        promotion: Option<PromotionInfo>,
    ) -> Result<Trigger, StateError> {
        let customer = self.load_customer(crm_id)?;
        let window = interest.views_in(t.saturating_sub(self.params.lookback), t);
        Ok(Trigger {
            trigger_id: trigger_id(kind, crm_id, product_id, t),
            kind,
            crm_id: crm_id.to_string(),
            product_id: product_id.to_string(),
            category: self.category(product_id)?,
            intent_score: round2(self.score(interest, t)),
            view_count: window.len() as u32,
            last_viewed_at: window.last().map(|v| v.ts),
            fired_at: t,
            cookie_ids: customer.top_cookies(TRIGGER_COOKIES),
            channels: customer.consent.channels(),
            promotion,
            group: self.params.holdout.group_of(crm_id),
        })
    }

    fn category(&self, product_id: &str) -> Result<Option<String>, StateError> {
        self.store
            .get(Cf::Products, &str_key(product_id))?
            .map(|b| {
                String::from_utf8(b).map_err(|e| StateError::Corrupt {
                    cf: Cf::Products.name(),
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    /// Fans a promotion out to the product's viewers, streaming over the
    /// product's key prefix a chunk at a time (never all viewers in memory).
    pub fn on_promotion(&mut self, promo: &Promotion, t: Millis) -> Result<(), StateError> {
        let prefix = str_key(&promo.product_id);
        let end = prefix_end(&prefix);
        let mut cursor = prefix.to_vec();
        loop {
            let chunk = self
                .store
                .scan(Cf::Interest, &cursor, end.as_deref(), FAN_OUT_CHUNK)?;
            let Some((last, _)) = chunk.last() else { break };
            cursor = last.clone();
            cursor.push(0); // the next key after `last`
            let full = chunk.len() == FAN_OUT_CHUNK;
            for (key, bytes) in chunk {
                let Some((_, crm_id)) = read_pair(&key) else {
                    continue;
                };
                let interest: Interest = decode(Cf::Interest.name(), &bytes)?;
                self.offer_promotion(&crm_id, promo, interest, t)?;
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    fn offer_promotion(
        &mut self,
        crm_id: &str,
        promo: &Promotion,
        mut interest: Interest,
        t: Millis,
    ) -> Result<(), StateError> {
        let window = interest.views_in(t.saturating_sub(self.params.lookback), t);
        let Some(latest) = window.last().map(|v| v.ts) else {
            return Ok(());
        };
        // A viewer who bought since is not a candidate; the others are
        // decided by cooldown, then the cap.
        if interest.purchased_since(latest) {
            return Ok(());
        }
        let verdict =
            self.held_back(crm_id, &interest.promo_fired, self.params.promo_cooldown, t)?;
        if let Some(reason) = verdict {
            self.stats.suppressed[reason as usize] += 1;
            return Ok(());
        }
        insert_sorted(&mut interest.promo_fired, t);
        let info = PromotionInfo {
            discount_pct: promo.discount_pct.clone(),
            promo_price: promo.promo_price.clone(),
            valid_until: promo.valid_until,
        };
        let kind = TriggerKind::PromoOnViewedItem;
        self.fire(
            kind,
            crm_id,
            &promo.product_id,
            &mut interest,
            t,
            Some(info),
        )?;
        self.save_interest(crm_id, &promo.product_id, interest);
        Ok(())
    }

    pub fn on_consent(&mut self, c: &crate::event::Consent) -> Result<(), StateError> {
        self.update_customer(&c.crm_id, |cust| {
            let consent = &mut cust.consent;
            consent.ads = c.ads.unwrap_or(consent.ads);
            consent.email = c.email.unwrap_or(consent.email);
            consent.sms = c.sms.unwrap_or(consent.sms);
        })
    }

    /// Removes everything kept about a customer and leaves a tombstone.
    /// Returns the cookies linked to the customer, for the identity stage
    /// to forget.
    pub fn on_erase(&mut self, crm_id: &str, t: Millis) -> Result<Vec<String>, StateError> {
        let prefix = str_key(crm_id);
        let end = prefix_end(&prefix);
        // A cursor, not a rescan from the prefix: the deleted keys of the
        // chunks before would be stepped over again and again.
        let mut cursor = prefix.to_vec();
        loop {
            let chunk =
                self.store
                    .scan(Cf::CustomerProducts, &cursor, end.as_deref(), FAN_OUT_CHUNK)?;
            let Some((last, _)) = chunk.last() else { break };
            cursor = last.clone();
            cursor.push(0); // the next key after `last`
            let full = chunk.len() == FAN_OUT_CHUNK;
            for (key, _) in chunk {
                let Some((_, product_id)) = read_pair(&key) else {
                    continue;
                };
                self.forget_interest(crm_id, &product_id)?;
                self.store.delete(Cf::CustomerProducts, key);
            }
            if !full {
                break;
            }
        }
        let customer = self.load_customer(crm_id)?;
        self.store.delete(Cf::Customers, str_key(crm_id));
        let key = tombstone_key(crm_id);
        let since = self.erased_at(crm_id)?.map_or(t, |e| e.max(t));
        self.store
            .put(Cf::Tombstones, key, since.to_be_bytes().to_vec());
        Ok(customer
            .cookies
            .into_iter()
            .filter(|c| c.linked)
            .map(|c| c.cookie_id)
            .collect())
    }

    fn forget_interest(&mut self, crm_id: &str, product_id: &str) -> Result<(), StateError> {
        if let Some(interest) = self.load_interest(crm_id, product_id)? {
            if let Some(p) = interest.pending {
                self.timers
                    .cancel(self.store, p.check_at, crm_id, product_id);
                self.stats.pending_checks -= 1;
            }
        }
        self.store
            .delete(Cf::Interest, pair_key(product_id, crm_id));
        Ok(())
    }

    /// The time of the customer's latest erase, if any.
    pub fn erased_at(&self, crm_id: &str) -> Result<Option<Millis>, StateError> {
        erased_at(self.store, crm_id)
    }
}

/// The time of the customer's latest erase, if any.
pub fn erased_at(store: &Store, crm_id: &str) -> Result<Option<Millis>, StateError> {
    // Most states hold no erase: spare each event's key hash.
    if store.resident_is_empty(Cf::Tombstones) {
        return Ok(None);
    }
    let Some(b) = store.get(Cf::Tombstones, &tombstone_key(crm_id))? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = b.as_slice().try_into().map_err(|_| StateError::Corrupt {
        cf: Cf::Tombstones.name(),
        detail: format!("{} bytes, expected 8", b.len()),
    })?;
    Ok(Some(i64::from_be_bytes(bytes)))
}

/// The parts of a purchase a conversion record names.
struct Order<'a> {
    order_id: &'a str,
    channel: Channel,
    ts: Millis,
}

/// A one-way hash of the CRM id: the tombstone must not name the customer.
fn tombstone_key(crm_id: &str) -> Vec<u8> {
    Sha256::digest(crm_id.as_bytes()).to_vec()
}

fn touch(c: &mut Customer, cookie_id: &str, ts: Millis) {
    let m = c.mark(cookie_id);
    m.last_ts = m.last_ts.max(ts);
}
