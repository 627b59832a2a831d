//! The deterministic core: validated events in, triggers out.
//!
//! `Engine::apply` and `Engine::advance_watermark` read and write RocksDB
//! state and hand triggers to a sink; nothing in here knows about Kafka,
//! files or the wall clock, so live mode and replay make the same decisions
//! from the same log. Inside, two stages talk by messages: the identity stage
//! (`identity`, keyed by cookie) resolves navigation to CRM ids, and the
//! customer stage (`customer`, keyed by CRM id) keeps scores, sessions,
//! checks, cooldowns and consent.

mod customer;
mod dedup;
mod identity;
pub mod meta;
pub mod params;
pub mod pressure;
pub mod query;
pub mod records;
pub mod routing;
pub mod stats;
pub mod timers;
pub mod wire;

use std::path::Path;

use crate::config::Config;
use crate::event::{Body, Event, Millis, Purchase, View};
use crate::state::keys::str_key;
use crate::state::store::{Entries, Gate};
use crate::state::{Cf, StateError, StateSize, Store};
use crate::trigger::{Conversion, Trigger};

use customer::CustomerStage;
use dedup::Dedup;
use identity::Identity;
pub use identity::Resolved;
use meta::Num;
pub use meta::SourceOffset;
use params::Params;
use records::Kept;
pub use stats::{EngineStats, Suppressed};
use timers::Timers;

/// Where the engine hands what it decides, in the order it decides it:
/// triggers of both groups (the sink routes them by `group`) and
/// conversions.
pub trait TriggerSink {
    fn emit(&mut self, trigger: Trigger);
    fn convert(&mut self, conversion: Conversion);
}

/// Everything an engine step produced, in order: for tests and for
/// callers that route outputs after the step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outputs {
    pub triggers: Vec<Trigger>,
    pub conversions: Vec<Conversion>,
}

impl TriggerSink for Outputs {
    fn emit(&mut self, trigger: Trigger) {
        self.triggers.push(trigger);
    }

    fn convert(&mut self, conversion: Conversion) {
        self.conversions.push(conversion);
    }
}

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Its `event_id` was applied already within the dedup window.
    Duplicate,
    /// It names an erased customer and is stamped at or before the erase.
    IgnoredErased,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "state directory {dir} was written by another configuration ({stored}), \
         not this one ({current}): point state.dir elsewhere or remove it"
    )]
    ForeignState {
        dir: String,
        stored: String,
        current: String,
    },
}

pub struct Engine {
    store: Store,
    params: Params,
    stats: EngineStats,
    max_ts: Option<Millis>,
    /// The watermark as advanced by the wall clock in quiet hours.
    idle_watermark: Option<Millis>,
    timers: Timers,
    dedup: Dedup,
}

impl Engine {
    /// Opens the state at `dir`, creating it when absent. A state written
    /// under another configuration fingerprint is refused.
    pub fn open(dir: &Path, config: &Config) -> Result<Engine, EngineError> {
        let horizon = Dedup::shared_horizon();
        let mut store = Store::open_with_expiry(dir, Some(Dedup::expiry(&horizon)))?;
        check_fingerprint(&mut store, dir, &config.fingerprint())?;
        let params = Params::from_config(config);
        let stats = EngineStats {
            pending_checks: meta::get(&store, Num::PendingChecks)?.unwrap_or(0),
            ..EngineStats::default()
        };
        Ok(Engine {
            max_ts: meta::get(&store, Num::MaxTs)?,
            idle_watermark: meta::get(&store, Num::IdleWatermark)?,
            timers: Timers::open(&store)?,
            dedup: Dedup::open(&store, params.dedup_window, params.late_bound, horizon)?,
            params,
            stats,
            store,
        })
    }

    /// Applies one event, then fires every check due at the new watermark.
    pub fn apply(
        &mut self,
        event: &Event,
        sink: &mut dyn TriggerSink,
    ) -> Result<Outcome, EngineError> {
        let Some(seen) = self.dedup.check(&self.store, &event.event_id, event.ts)? else {
            self.stats.duplicates += 1;
            return Ok(Outcome::Duplicate);
        };
        if let Some(crm_id) = event.body.crm_id() {
            if customer::erased_at(&self.store, crm_id)?.is_some_and(|e| event.ts <= e) {
                self.stats.ignored_erased += 1;
                return Ok(Outcome::IgnoredErased);
            }
        }
        self.dedup.record(&mut self.store, seen, event.ts);
        let max_ts = self.max_ts.map_or(event.ts, |m| m.max(event.ts));
        self.max_ts = Some(max_ts);
        self.stats.count_event(event.body.type_name());
        self.route(event, sink)?;
        self.fire_due(self.watermark(), sink)?;
        self.dedup.advance(max_ts);
        Ok(Outcome::Applied)
    }

    /// Advances the watermark to at least `to` (the idle advance of live
    /// mode) and fires what is due. The watermark never moves back.
    pub fn advance_watermark(
        &mut self,
        to: Millis,
        sink: &mut dyn TriggerSink,
    ) -> Result<(), EngineError> {
        self.idle_watermark = Some(self.idle_watermark.map_or(to, |w| w.max(to)));
        self.fire_due(self.watermark(), sink)
    }

    /// The end of a replay: the watermark becomes the highest event time.
    pub fn end_of_input(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError> {
        match self.max_ts {
            Some(m) => self.advance_watermark(m, sink),
            None => Ok(()),
        }
    }

    /// Fires every pending check, each as of its own check time.
    pub fn flush(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError> {
        self.fire_due(Some(Millis::MAX), sink)
    }

    /// W: the highest applied event time minus the allowed lateness, or the
    /// idle advance if that is later. `None` before any event.
    pub fn watermark(&self) -> Option<Millis> {
        let from_events = self
            .max_ts
            .map(|m| m.saturating_sub(self.params.allowed_lateness));
        from_events.max(self.idle_watermark)
    }

    pub fn max_event_ts(&self) -> Option<Millis> {
        self.max_ts
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn state_size(&self) -> StateSize {
        self.store.size()
    }

    /// Bytes of state changes not yet committed.
    pub fn uncommitted_bytes(&self) -> usize {
        self.store.uncommitted_bytes()
    }

    /// Commits wait for the disk (see `Store::set_sync`).
    pub fn set_sync(&mut self, sync: bool) {
        self.store.set_sync(sync);
    }

    /// The underlying store, for audits and tests.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Writes the state changes so far and the next input offsets in one
    /// atomic RocksDB write batch.
    pub fn commit(&mut self, offsets: &[SourceOffset]) -> Result<(), EngineError> {
        self.stage_commit(offsets);
        self.store.commit()?;
        Ok(())
    }

    /// As `commit`, with the RocksDB write left to another thread while the
    /// caller goes on, once `gate` has passed there; the engine reads the
    /// batch at once. `wait_committed` tells when it is on disk (the next
    /// commit waits for it too).
    pub fn commit_in_background(
        &mut self,
        offsets: &[SourceOffset],
        gate: Gate,
    ) -> Result<(), EngineError> {
        self.stage_commit(offsets);
        self.store.commit_in_background(gate)?;
        Ok(())
    }

    /// Waits for the write of `commit_in_background`.
    pub fn wait_committed(&mut self) -> Result<(), EngineError> {
        self.store.wait_landed()?;
        Ok(())
    }

    /// Adds the next input offsets and the engine's own meta to the batch.
    fn stage_commit(&mut self, offsets: &[SourceOffset]) {
        let store = &mut self.store;
        for o in offsets {
            meta::put_offset(store, o);
        }
        if let Some(m) = self.max_ts {
            meta::put(store, Num::MaxTs, m);
        }
        if let Some(w) = self.idle_watermark {
            meta::put(store, Num::IdleWatermark, w);
        }
        meta::put(store, Num::PendingChecks, self.stats.pending_checks);
        self.dedup.save(store);
    }

    /// Every input offset stored by `commit`.
    pub fn stored_offsets(&self) -> Result<Vec<SourceOffset>, EngineError> {
        Ok(meta::offsets(&self.store)?)
    }

    fn identity(&mut self) -> Identity<'_> {
        Identity {
            store: &mut self.store,
            lookback: self.params.lookback,
            buffer_cap: self.params.anonymous_buffer,
        }
    }

    fn customers<'a>(&'a mut self, sink: &'a mut dyn TriggerSink) -> CustomerStage<'a> {
        CustomerStage {
            store: &mut self.store,
            params: &self.params,
            stats: &mut self.stats,
            sink,
            max_ts: self.max_ts.unwrap_or(Millis::MIN),
            timers: &mut self.timers,
        }
    }

    fn route(&mut self, event: &Event, sink: &mut dyn TriggerSink) -> Result<(), StateError> {
        let ts = event.ts;
        match &event.body {
            Body::View(v) => self.on_view(v, ts, sink),
            Body::Identify(i) => {
                let mut msgs = Vec::new();
                self.identity()
                    .link_cookie(&i.cookie_id, &i.crm_id, ts, &mut msgs)?;
                msgs.push(Resolved::Seen {
                    crm_id: i.crm_id.clone(),
                    cookie_id: i.cookie_id.clone(),
                    ts,
                });
                self.deliver(msgs, sink)
            }
            Body::Purchase(p) => self.on_purchase(p, ts, sink),
            Body::Promotion(p) => self.customers(sink).on_promotion(p, ts),
            Body::Consent(c) => self.customers(sink).on_consent(c),
            Body::Erase(e) => {
                let cookies = self.customers(sink).on_erase(&e.crm_id, ts)?;
                for cookie in cookies {
                    self.identity().forget(&cookie, &e.crm_id)?;
                }
                Ok(())
            }
        }
    }

    fn on_view(
        &mut self,
        v: &View,
        ts: Millis,
        sink: &mut dyn TriggerSink,
    ) -> Result<(), StateError> {
        let kept = Kept::View {
            kind: v.kind.into(),
            product_id: v.product_id.clone(),
            ts,
        };
        let msgs = self.navigate(&v.cookie_id, v.crm_id.as_deref(), ts, kept)?;
        self.deliver(msgs, sink)?;
        // Applied after the view itself, so a check the view fires early
        // still names the category as it was before the view.
        if let Some(category) = &v.category {
            let key = str_key(&v.product_id);
            self.store
                .put(Cf::Products, key, category.as_bytes().to_vec());
        }
        Ok(())
    }

    /// A purchase with a cookie goes through the identity stage (it may be
    /// kept for an unlinked cookie); one with only a crm_id goes straight
    /// to the customer.
    fn on_purchase(
        &mut self,
        p: &Purchase,
        ts: Millis,
        sink: &mut dyn TriggerSink,
    ) -> Result<(), StateError> {
        let product_ids: Vec<String> = p.items.iter().map(|i| i.product_id.clone()).collect();
        let msgs = match &p.cookie_id {
            Some(cookie) => {
                let kept = Kept::Purchase {
                    product_ids,
                    ts,
                    order_id: p.order_id.clone(),
                    channel: p.channel,
                };
                self.navigate(cookie, p.crm_id.as_deref(), ts, kept)?
            }
            None => vec![Resolved::Purchase {
                crm_id: p.crm_id.clone().unwrap_or_default(),
                cookie_id: None,
                product_ids,
                ts,
                order_id: p.order_id.clone(),
                channel: p.channel,
            }],
        };
        self.deliver(msgs, sink)
    }

    /// Resolves an event of a cookie (that may also name its customer) to
    /// the customer's messages; keeps it while the cookie has no customer.
    fn navigate(
        &mut self,
        cookie_id: &str,
        crm_id: Option<&str>,
        ts: Millis,
        event: Kept,
    ) -> Result<Vec<Resolved>, StateError> {
        let mut msgs = Vec::new();
        let owner = match crm_id {
            Some(crm) => {
                self.identity().link_cookie(cookie_id, crm, ts, &mut msgs)?;
                Some(crm.to_string())
            }
            None => self.identity().owner(cookie_id)?,
        };
        let Some(crm_id) = owner else {
            self.identity().keep(cookie_id, event)?;
            return Ok(msgs);
        };
        msgs.push(identity::resolve_kept(event, &crm_id, cookie_id));
        Ok(msgs)
    }

    fn deliver(
        &mut self,
        msgs: Vec<Resolved>,
        sink: &mut dyn TriggerSink,
    ) -> Result<(), StateError> {
        let mut stage = self.customers(sink);
        for msg in msgs {
            stage.handle(msg)?;
        }
        Ok(())
    }

    /// Fires every pending check due at or before `watermark`, in order of
    /// (check time, crm_id, product_id): the timers' order.
    fn fire_due(
        &mut self,
        watermark: Option<Millis>,
        sink: &mut dyn TriggerSink,
    ) -> Result<(), EngineError> {
        let Some(w) = watermark else { return Ok(()) };
        while let Some((at, crm_id, product_id)) = self.timers.due_until(&self.store, w)? {
            self.customers(sink).fire_due(at, &crm_id, &product_id)?;
        }
        self.timers.swept(&self.store, w)?;
        Ok(())
    }
}

/// The committed entries of `cf` that can affect a result, for comparing
/// two states (a live run against a replay): every entry, except `Dedup`
/// entries whose times all lie below the stored dedup horizon, which no
/// reader sees and compaction drops at a time of RocksDB's choosing.
pub fn comparable_entries(store: &Store, cf: Cf) -> Result<Entries, StateError> {
    let mut entries = store.committed(cf)?;
    if cf == Cf::Dedup {
        let horizon = dedup::stored_horizon(store)?;
        entries.retain(|(_, v)| !dedup::entry_dead(v, horizon));
    }
    Ok(entries)
}

/// Refuses a state written under another configuration fingerprint, and
/// stamps a new one.
fn check_fingerprint(store: &mut Store, dir: &Path, current: &str) -> Result<(), EngineError> {
    match meta::fingerprint(store)? {
        Some(stored) if stored != current.as_bytes() => Err(EngineError::ForeignState {
            dir: dir.display().to_string(),
            stored: String::from_utf8_lossy(&stored).into_owned(),
            current: current.to_string(),
        }),
        Some(_) => Ok(()),
        None => {
            meta::put_fingerprint(store, current);
            store.commit()?;
            Ok(())
        }
    }
}
