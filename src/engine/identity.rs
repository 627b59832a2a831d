//! The identity stage, keyed by cookie: links and the anonymous buffer.
//!
//! It turns navigation into events resolved to a CRM id (`Resolved`). It
//! never reads customer state; the customer stage never reads this one. Today
//! the two talk by function call; scaled out, `Resolved` is what crosses
//! the repartition topic keyed by CRM id (its wire form: `wire`).

use serde::{Deserialize, Serialize};

use crate::event::{Channel, Millis, ViewKind};
use crate::state::keys::str_key;
use crate::state::{Cf, StateError, Store};

use super::records::{encode, load, Kept, KeptEvents, Link};

/// An event of a customer, as the identity stage hands it on. Its serde
/// form is the body of a `resolved` record (`wire`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "resolved", rename_all = "snake_case")]
pub enum Resolved {
    /// The cookie is linked to this customer now.
    Linked { crm_id: String, cookie_id: String },
    /// The cookie moved to another customer.
    Unlinked { crm_id: String, cookie_id: String },
    /// An event of the cookie applied to the customer (an `identify`).
    Seen {
        crm_id: String,
        cookie_id: String,
        ts: Millis,
    },
    View {
        crm_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cookie_id: Option<String>,
        product_id: String,
        kind: ViewKind,
        ts: Millis,
    },
    Purchase {
        crm_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cookie_id: Option<String>,
        product_ids: Vec<String>,
        ts: Millis,
        order_id: String,
        #[serde(with = "super::wire::channel_name")]
        channel: Channel,
    },
}

impl Resolved {
    /// The customer the event is for: its key on `<group>.by-customer`.
    pub fn crm_id(&self) -> &str {
        match self {
            Resolved::Linked { crm_id, .. }
            | Resolved::Unlinked { crm_id, .. }
            | Resolved::Seen { crm_id, .. }
            | Resolved::View { crm_id, .. }
            | Resolved::Purchase { crm_id, .. } => crm_id,
        }
    }
}

pub struct Identity<'a> {
    pub store: &'a mut Store,
    pub lookback: Millis,
    pub buffer_cap: usize,
}

impl Identity<'_> {
    /// The customer a cookie belongs to now, if any.
    pub fn owner(&self, cookie_id: &str) -> Result<Option<String>, StateError> {
        Ok(self.link(cookie_id)?.map(|l| l.crm_id))
    }

    fn link(&self, cookie_id: &str) -> Result<Option<Link>, StateError> {
        load(self.store, Cf::Links, &str_key(cookie_id))
    }

    /// Applies a link carried by an event stamped `ts`. The link with the
    /// greatest `ts` wins; on equal times the later-arriving one does.
    /// A cookie's first link stitches its kept events to the customer.
    pub fn link_cookie(
        &mut self,
        cookie_id: &str,
        crm_id: &str,
        ts: Millis,
        out: &mut Vec<Resolved>,
    ) -> Result<(), StateError> {
        let existing = self.link(cookie_id)?;
        if existing.as_ref().is_some_and(|l| l.ts > ts) {
            return Ok(());
        }
        let link = Link {
            crm_id: crm_id.to_string(),
            ts,
        };
        self.store.put(Cf::Links, str_key(cookie_id), encode(&link));
        match existing {
            Some(old) if old.crm_id == crm_id => {}
            Some(old) => {
                out.push(Resolved::Unlinked {
                    crm_id: old.crm_id,
                    cookie_id: cookie_id.to_string(),
                });
                out.push(linked(crm_id, cookie_id));
            }
            None => {
                out.push(linked(crm_id, cookie_id));
                self.stitch(cookie_id, crm_id, ts, out)?;
            }
        }
        Ok(())
    }

    /// Hands the kept events of a newly linked cookie to its customer, in
    /// arrival order, dropping those older than the link's lookback.
    fn stitch(
        &mut self,
        cookie_id: &str,
        crm_id: &str,
        link_ts: Millis,
        out: &mut Vec<Resolved>,
    ) -> Result<(), StateError> {
        let key = str_key(cookie_id);
        let Some(kept) = load::<KeptEvents>(self.store, Cf::Anon, &key)? else {
            return Ok(());
        };
        self.store.delete(Cf::Anon, key);
        let from = link_ts.saturating_sub(self.lookback);
        for ev in kept.events.into_iter().filter(|e| e.ts() >= from) {
            out.push(resolve_kept(ev, crm_id, cookie_id));
        }
        Ok(())
    }

    /// Keeps an event of a cookie with no link, evicting the oldest (by
    /// event time, then arrival) beyond the buffer's capacity.
    pub fn keep(&mut self, cookie_id: &str, event: Kept) -> Result<(), StateError> {
        let key = str_key(cookie_id);
        let cap = self.buffer_cap;
        // Appended in the encoded form while the buffer has room; decoded
        // only to evict (or to report a record this version cannot read).
        let append = |bytes: &[u8]| KeptEvents::append_encoded(bytes, &event, cap);
        let appended = match self.store.read(Cf::Anon, &key, |b| Ok(append(b)))? {
            Some(appended) => appended,
            None => append(&encode(&KeptEvents::default())),
        };
        if let Some(bytes) = appended {
            self.store.put(Cf::Anon, key, bytes);
            return Ok(());
        }
        let mut kept: KeptEvents = load(self.store, Cf::Anon, &key)?.unwrap_or_default();
        kept.events.push(event);
        while kept.events.len() > self.buffer_cap {
            let oldest = kept
                .events
                .iter()
                .enumerate()
                .min_by_key(|(i, e)| (e.ts(), *i))
                .map(|(i, _)| i)
                .unwrap_or(0);
            kept.events.remove(oldest);
        }
        if kept.events.is_empty() {
            self.store.delete(Cf::Anon, key);
        } else {
            self.store.put(Cf::Anon, key, encode(&kept));
        }
        Ok(())
    }

    /// Forgets a cookie of an erased customer: its link (when it still points
    /// to that customer) and anything kept for it.
    pub fn forget(&mut self, cookie_id: &str, crm_id: &str) -> Result<(), StateError> {
        if self.owner(cookie_id)?.as_deref() == Some(crm_id) {
            self.store.delete(Cf::Links, str_key(cookie_id));
            self.store.delete(Cf::Anon, str_key(cookie_id));
        }
        Ok(())
    }
}

fn linked(crm_id: &str, cookie_id: &str) -> Resolved {
    Resolved::Linked {
        crm_id: crm_id.to_string(),
        cookie_id: cookie_id.to_string(),
    }
}

/// The customer's message for a cookie's event.
pub fn resolve_kept(ev: Kept, crm_id: &str, cookie_id: &str) -> Resolved {
    match ev {
        Kept::View {
            kind,
            product_id,
            ts,
        } => Resolved::View {
            crm_id: crm_id.to_string(),
            cookie_id: Some(cookie_id.to_string()),
            product_id,
            kind: kind.into(),
            ts,
        },
        Kept::Purchase {
            product_ids,
            ts,
            order_id,
            channel,
        } => Resolved::Purchase {
            crm_id: crm_id.to_string(),
            cookie_id: Some(cookie_id.to_string()),
            product_ids,
            ts,
            order_id,
            channel,
        },
    }
}
