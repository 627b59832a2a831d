//! The deterministic core: validated events in, triggers out.
//!
//! `Engine::apply` and `Engine::advance_watermark` read and write RocksDB
//! state and hand triggers to a sink; nothing in here knows about Kafka,
//! files or the wall clock, so live mode and replay make the same decisions
//! from the same log. Inside, two stages talk by messages: the identity stage
//! (`identity`, keyed by cookie) resolves navigation to CRM ids, and the
//! customer stage (`customer`, keyed by CRM id) keeps scores, sessions,
//! checks, cooldowns and consent.

pub mod ahead;
mod customer;
mod dedup;
mod identity;
pub mod meta;
pub mod params;
pub mod partitioned;
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
use crate::state::prefetch::{Hint, Prefetcher};
use crate::state::store::{Entries, Gate};
use crate::state::{Cf, Change, StateError, StateSize, Store};
use crate::trigger::{Conversion, Trigger};
use routing::{Route, Stage};
use wire::{CustomerRecord, Forget, Origin};

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

/// Pads the dedup id of a resolved record past the longest event id
/// (`decode::MAX_ID_CHARS`, checked by a test below).
const RECORD_ID_PAD: &str = concat!(
    "................................................................",
    "................................................................",
    "."
);

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
        if let Some(refused) = self.admit(&event.event_id, event.ts, event.body.crm_id())? {
            return Ok(refused);
        }
        self.stats.count_event(event.body.type_name());
        self.route(event, sink)?;
        self.settle(sink)?;
        Ok(Outcome::Applied)
    }

    /// Scaled out, on a partition of the identity stage: applies an event
    /// routed there by cookie and returns what it resolved to, for the
    /// customer stage's partitions. Erased customers are the customer
    /// stage's to recognise.
    pub fn apply_at_identity(
        &mut self,
        event: &Event,
    ) -> Result<(Outcome, Vec<CustomerRecord>), EngineError> {
        if let Some(refused) = self.admit(&event.event_id, event.ts, None)? {
            return Ok((refused, Vec::new()));
        }
        self.stats.count_event(event.body.type_name());
        let resolution = self.resolve(event)?;
        let mut records: Vec<CustomerRecord> = resolution
            .msgs
            .into_iter()
            .enumerate()
            .map(|(seq, resolved)| CustomerRecord {
                origin: Origin::of(event, seq),
                resolved,
                category: None,
            })
            .collect();
        if let (true, Body::View(v), Some(last)) =
            (resolution.itself, &event.body, records.last_mut())
        {
            last.category.clone_from(&v.category);
        }
        self.settle(&mut Outputs::default())?;
        Ok((Outcome::Applied, records))
    }

    /// Scaled out, on a partition of the customer stage: applies an event
    /// routed there by CRM id (or a promotion, which every partition
    /// applies), and returns the cookies an erase leaves for the identity
    /// stage to forget.
    pub fn apply_at_customer(
        &mut self,
        event: &Event,
        sink: &mut dyn TriggerSink,
    ) -> Result<(Outcome, Vec<Forget>), EngineError> {
        if let Some(refused) = self.admit(&event.event_id, event.ts, event.body.crm_id())? {
            return Ok((refused, Vec::new()));
        }
        self.stats.count_event(event.body.type_name());
        let cookies = self.at_customer(event, sink)?;
        self.settle(sink)?;
        let forgets = match &event.body {
            Body::Erase(e) => cookies
                .into_iter()
                .enumerate()
                .map(|(seq, cookie_id)| Forget {
                    origin: Origin::of(event, seq),
                    cookie_id,
                    crm_id: e.crm_id.clone(),
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok((Outcome::Applied, forgets))
    }

    /// Scaled out, on a partition of the customer stage: applies what the
    /// identity stage resolved. A record read twice (its input event was
    /// read again after a crash) is dropped by its origin; one stamped at
    /// or before its customer's erase is ignored, as the event would be.
    ///
    /// Fires nothing: call `settle` once the records of one input event
    /// are in (reading them from a topic: before a record of another
    /// origin, or at the end of a batch), as the one engine fires after
    /// the whole event. An identify that stitches two kept views of a
    /// product must not fire the first view's check before the second is
    /// counted.
    pub fn apply_resolved(
        &mut self,
        record: &CustomerRecord,
        sink: &mut dyn TriggerSink,
    ) -> Result<Outcome, EngineError> {
        let origin = &record.origin;
        // Longer than any event id the decoder lets in (at most 128
        // characters), so that no event's id is a record's.
        let id = format!("{}\0{}\0{RECORD_ID_PAD}", origin.event_id, origin.seq);
        let crm_id = record.resolved.crm_id();
        if let Some(refused) = self.admit(&id, origin.event_ts, Some(crm_id))? {
            return Ok(refused);
        }
        self.deliver(vec![record.resolved.clone()], sink)?;
        if let (Resolved::View { product_id, .. }, Some(category)) =
            (&record.resolved, &record.category)
        {
            self.record_category(product_id, category);
        }
        Ok(Outcome::Applied)
    }

    /// Scaled out, on a partition of the identity stage: erase's request to
    /// forget a cookie.
    pub fn apply_forget(&mut self, forget: &Forget) -> Result<(), EngineError> {
        self.identity().forget(&forget.cookie_id, &forget.crm_id)?;
        Ok(())
    }

    /// Admits an event (by its id, its time and the customer it names) or
    /// says why not: a duplicate within the dedup window, or stamped at or
    /// before its customer's erase. An admitted event is recorded and moves
    /// the highest event time.
    fn admit(
        &mut self,
        id: &str,
        ts: Millis,
        crm_id: Option<&str>,
    ) -> Result<Option<Outcome>, StateError> {
        let Some(seen) = self.dedup.check(&self.store, id, ts)? else {
            self.stats.duplicates += 1;
            return Ok(Some(Outcome::Duplicate));
        };
        if let Some(crm_id) = crm_id {
            if customer::erased_at(&self.store, crm_id)?.is_some_and(|e| ts <= e) {
                self.stats.ignored_erased += 1;
                return Ok(Some(Outcome::IgnoredErased));
            }
        }
        self.dedup.record(&mut self.store, seen, ts);
        self.max_ts = Some(self.max_ts.map_or(ts, |m| m.max(ts)));
        Ok(None)
    }

    /// After an applied event: fires what is due at the new watermark and
    /// lets the dedup horizon follow the highest event time.
    pub fn settle(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError> {
        self.fire_due(self.watermark(), sink)?;
        if let Some(max_ts) = self.max_ts {
            self.dedup.advance(max_ts);
        }
        Ok(())
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

    /// A reader of the state for the thread that decodes events to read
    /// ahead with (`ahead::ReadAhead`).
    pub fn prefetcher(&self) -> Prefetcher {
        self.store.prefetcher()
    }

    /// `apply`, using what was read ahead for this event.
    pub fn apply_read_ahead(
        &mut self,
        event: &Event,
        hints: Vec<Hint>,
        sink: &mut dyn TriggerSink,
    ) -> Result<Outcome, EngineError> {
        self.store.hint(hints);
        let applied = self.apply(event, sink);
        self.store.hint(Vec::new());
        applied
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

    /// The first half of `commit`, for a caller that ships the batch
    /// elsewhere before it lands (a changelog): adds the offsets and the
    /// engine's meta to the batch and returns every change in it.
    pub fn prepare_commit(&mut self, offsets: &[SourceOffset]) -> Vec<Change> {
        self.stage_commit(offsets);
        self.store.pending_changes()
    }

    /// The second half: writes the prepared batch.
    pub fn commit_prepared(&mut self) -> Result<(), EngineError> {
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

    /// One event through both stages, along the seam `routing::route`
    /// draws: what carries a cookie is resolved by the identity stage and
    /// delivered to its customer; the rest is the customer stage's, and an
    /// erase's cookies go back to be forgotten.
    fn route(&mut self, event: &Event, sink: &mut dyn TriggerSink) -> Result<(), StateError> {
        match routing::route(&event.body) {
            Route::Keyed {
                stage: Stage::Identity,
                ..
            } => {
                let resolution = self.resolve(event)?;
                self.deliver(resolution.msgs, sink)?;
                // Recorded after the view itself, so a check the view fires
                // early still names the category as it was before the view.
                if let Body::View(View {
                    product_id,
                    category: Some(category),
                    ..
                }) = &event.body
                {
                    self.record_category(product_id, category);
                }
                Ok(())
            }
            Route::Keyed { .. } | Route::Broadcast { .. } => {
                let cookies = self.at_customer(event, sink)?;
                if let Body::Erase(e) = &event.body {
                    for cookie in cookies {
                        self.identity().forget(&cookie, &e.crm_id)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// The identity stage's part of an event that carries a cookie.
    fn resolve(&mut self, event: &Event) -> Result<Resolution, StateError> {
        let ts = event.ts;
        match &event.body {
            Body::View(v) => {
                let kept = Kept::View {
                    kind: v.kind.into(),
                    product_id: v.product_id.clone(),
                    ts,
                };
                self.navigate(&v.cookie_id, v.crm_id.as_deref(), ts, kept)
            }
            Body::Identify(i) => {
                let mut msgs = Vec::new();
                self.identity()
                    .link_cookie(&i.cookie_id, &i.crm_id, ts, &mut msgs)?;
                msgs.push(Resolved::Seen {
                    crm_id: i.crm_id.clone(),
                    cookie_id: i.cookie_id.clone(),
                    ts,
                });
                Ok(Resolution { msgs, itself: true })
            }
            Body::Purchase(
                p @ Purchase {
                    cookie_id: Some(cookie),
                    ..
                },
            ) => {
                let kept = Kept::Purchase {
                    product_ids: product_ids(p),
                    ts,
                    order_id: p.order_id.clone(),
                    channel: p.channel,
                };
                self.navigate(cookie, p.crm_id.as_deref(), ts, kept)
            }
            // `routing::route` sends nothing else to the identity stage.
            _ => Ok(Resolution::default()),
        }
    }

    /// The customer stage's part of an event that names only a customer,
    /// or of a promotion. Returns the cookies an erase leaves to forget.
    fn at_customer(
        &mut self,
        event: &Event,
        sink: &mut dyn TriggerSink,
    ) -> Result<Vec<String>, StateError> {
        let ts = event.ts;
        match &event.body {
            Body::Promotion(p) => self.customers(sink).on_promotion(p, ts)?,
            Body::Consent(c) => self.customers(sink).on_consent(c)?,
            Body::Erase(e) => return self.customers(sink).on_erase(&e.crm_id, ts),
            Body::Purchase(p) => {
                let purchase = Resolved::Purchase {
                    crm_id: p.crm_id.clone().unwrap_or_default(),
                    cookie_id: None,
                    product_ids: product_ids(p),
                    ts,
                    order_id: p.order_id.clone(),
                    channel: p.channel,
                };
                self.deliver(vec![purchase], sink)?;
            }
            // `routing::route` sends these to the identity stage.
            Body::View(_) | Body::Identify(_) => {}
        }
        Ok(Vec::new())
    }

    fn record_category(&mut self, product_id: &str, category: &str) {
        self.store.put(
            Cf::Products,
            str_key(product_id),
            category.as_bytes().to_vec(),
        );
    }

    /// Resolves an event of a cookie (that may also name its customer) to
    /// the customer's messages; keeps it while the cookie has no customer.
    fn navigate(
        &mut self,
        cookie_id: &str,
        crm_id: Option<&str>,
        ts: Millis,
        event: Kept,
    ) -> Result<Resolution, StateError> {
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
            return Ok(Resolution {
                msgs,
                itself: false,
            });
        };
        msgs.push(identity::resolve_kept(event, &crm_id, cookie_id));
        Ok(Resolution { msgs, itself: true })
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

/// What the identity stage made of a cookie's event: the customer's
/// messages in order, the event's own last when `itself` (false: it is
/// kept for a cookie with no customer yet).
#[derive(Default)]
struct Resolution {
    msgs: Vec<Resolved>,
    itself: bool,
}

fn product_ids(p: &Purchase) -> Vec<String> {
    p.items.iter().map(|i| i.product_id.clone()).collect()
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_resolved_records_dedup_id_is_longer_than_any_event_id() {
        assert!(super::RECORD_ID_PAD.chars().count() > crate::decode::MAX_ID_CHARS);
    }
}
