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
mod identity;
pub mod params;
pub mod query;
pub mod records;
pub mod stats;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::event::{Body, Event, Millis};
use crate::state::keys::{push_str, push_ts, read_timer, str_key};
use crate::state::store::{Entries, Expired};
use crate::state::{Cf, StateError, StateSize, Store};
use crate::trigger::Trigger;

use customer::CustomerStage;
use identity::{Identity, Resolved};
use params::Params;
use records::{decode, encode, load, Kept};
pub use stats::{EngineStats, Suppressed};

/// Where the engine hands the triggers it fires, in firing order.
pub trait TriggerSink {
    fn emit(&mut self, trigger: Trigger);
}

impl TriggerSink for Vec<Trigger> {
    fn emit(&mut self, trigger: Trigger) {
        self.push(trigger);
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

/// The next offset to read of one input partition, stored with the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOffset {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
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

/// How many timers or keys a scan holds in memory at once.
const SCAN_CHUNK: usize = 256;
const HOUR: Millis = 3_600_000;

const META_MAX_TS: &[u8] = b"max_ts";
const META_IDLE_WM: &[u8] = b"idle_watermark";
const META_PENDING: &[u8] = b"pending_checks";
const META_GC_HOUR: &[u8] = b"gc_hour";
const META_DEDUP_HORIZON: &[u8] = b"dedup_horizon";
const META_FINGERPRINT: &[u8] = b"fingerprint";
const META_OFFSET_PREFIX: &[u8] = b"offset/";

pub struct Engine {
    store: Store,
    params: Params,
    stats: EngineStats,
    max_ts: Option<Millis>,
    /// The watermark as advanced by the wall clock in quiet hours.
    idle_watermark: Option<Millis>,
    gc_hour: Millis,
    /// A lower bound of the pending checks' due times. Timer scans start
    /// here: below it lie only deleted timers, which a scan from the start
    /// would step over again and again (quadratic in fired checks).
    earliest_due: Millis,
    /// Every check due before this has been handled: timer scans never
    /// start below it. A check scheduled below it (a late or stitched view)
    /// goes to `overdue` instead, and fires first, in order.
    swept_to: Millis,
    overdue: Vec<(Millis, String, String)>,
    /// Applied event times below this no longer make a duplicate. Moved
    /// once per hour of event time, so live mode and replay agree; shared
    /// with the compaction filter that drops what lies wholly below it.
    dedup_horizon: Millis,
    published_horizon: Arc<AtomicI64>,
}

impl Engine {
    /// Opens the state at `dir`, creating it when absent. A state written
    /// under another configuration fingerprint is refused.
    pub fn open(dir: &Path, config: &Config) -> Result<Engine, EngineError> {
        let published_horizon = Arc::new(AtomicI64::new(Millis::MIN));
        let mut store = Store::open_with_expiry(dir, Some(dedup_expiry(&published_horizon)))?;
        let current = config.fingerprint();
        match store.get(Cf::Meta, META_FINGERPRINT)? {
            Some(stored) if stored != current.as_bytes() => {
                return Err(EngineError::ForeignState {
                    dir: dir.display().to_string(),
                    stored: String::from_utf8_lossy(&stored).into_owned(),
                    current,
                })
            }
            Some(_) => {}
            None => {
                store.put(Cf::Meta, META_FINGERPRINT.to_vec(), current.into_bytes());
                store.commit()?;
            }
        }
        let read = |key: &[u8]| meta_i64(&store, key);
        let stats = EngineStats {
            pending_checks: read(META_PENDING)?.unwrap_or(0),
            ..EngineStats::default()
        };
        let earliest_due = first_timer_at_or_after(&store, Millis::MIN)?;
        let dedup_horizon = read(META_DEDUP_HORIZON)?.unwrap_or(Millis::MIN);
        published_horizon.store(dedup_horizon, Ordering::Relaxed);
        Ok(Engine {
            max_ts: read(META_MAX_TS)?,
            idle_watermark: read(META_IDLE_WM)?,
            gc_hour: read(META_GC_HOUR)?.unwrap_or(Millis::MIN),
            params: Params::from_config(config),
            stats,
            store,
            earliest_due,
            swept_to: Millis::MIN,
            overdue: Vec::new(),
            dedup_horizon,
            published_horizon,
        })
    }

    /// Applies one event, then fires every check due at the new watermark.
    pub fn apply(
        &mut self,
        event: &Event,
        sink: &mut dyn TriggerSink,
    ) -> Result<Outcome, EngineError> {
        let id_key = dedup_key(&event.event_id);
        let seen = self.dedup_times(&id_key)?;
        let window = self.params.dedup_window;
        if seen.iter().any(|&t| t.abs_diff(event.ts) <= window as u64) {
            self.stats.duplicates += 1;
            return Ok(Outcome::Duplicate);
        }
        if let Some(crm_id) = event.body.crm_id() {
            if customer::erased_at(&self.store, crm_id)?.is_some_and(|e| event.ts <= e) {
                self.stats.ignored_erased += 1;
                return Ok(Outcome::IgnoredErased);
            }
        }
        self.record_dedup(id_key, seen, event.ts);
        self.max_ts = Some(self.max_ts.map_or(event.ts, |m| m.max(event.ts)));
        self.stats.count_event(event.body.type_name());
        self.route(event, sink)?;
        self.fire_due(self.watermark(), sink)?;
        self.collect_garbage();
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

    /// The underlying store, for audits and tests.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Writes the state changes so far and the next input offsets in one
    /// atomic RocksDB write batch.
    pub fn commit(&mut self, offsets: &[SourceOffset]) -> Result<(), EngineError> {
        for o in offsets {
            self.store.put(
                Cf::Meta,
                offset_key(&o.topic, o.partition),
                o.next_offset.to_be_bytes().to_vec(),
            );
        }
        let mut put = |key: &[u8], v: Option<Millis>| {
            if let Some(v) = v {
                self.store
                    .put(Cf::Meta, key.to_vec(), v.to_be_bytes().to_vec());
            }
        };
        put(META_MAX_TS, self.max_ts);
        put(META_IDLE_WM, self.idle_watermark);
        put(META_PENDING, Some(self.stats.pending_checks));
        put(META_GC_HOUR, Some(self.gc_hour));
        put(META_DEDUP_HORIZON, Some(self.dedup_horizon));
        self.store.commit()?;
        Ok(())
    }

    /// Every input offset stored by `commit`.
    pub fn stored_offsets(&self) -> Result<Vec<SourceOffset>, EngineError> {
        let end = crate::state::keys::prefix_end(META_OFFSET_PREFIX);
        let entries = self
            .store
            .scan(Cf::Meta, META_OFFSET_PREFIX, end.as_deref(), usize::MAX)?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            out.push(parse_offset(&key, &value)?);
        }
        Ok(out)
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
            earliest_due: &mut self.earliest_due,
            swept_to: self.swept_to,
            overdue: &mut self.overdue,
        }
    }

    fn route(&mut self, event: &Event, sink: &mut dyn TriggerSink) -> Result<(), StateError> {
        let ts = event.ts;
        match &event.body {
            Body::View(v) => {
                let kept = Kept::View {
                    kind: v.kind.into(),
                    product_id: v.product_id.clone(),
                    ts,
                };
                let msgs = self.navigate(&v.cookie_id, v.crm_id.as_deref(), ts, kept)?;
                self.deliver(msgs, sink)?;
                // Applied after the view itself, so a check the view fires
                // early still names the category as it was before the view.
                if let Some(category) = &v.category {
                    let key = str_key(&v.product_id);
                    self.store
                        .put(Cf::Products, key, category.as_bytes().to_vec());
                }
                Ok(())
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
                self.deliver(msgs, sink)
            }
            Body::Purchase(p) => {
                let product_ids: Vec<String> =
                    p.items.iter().map(|i| i.product_id.clone()).collect();
                let msgs = match &p.cookie_id {
                    Some(cookie) => {
                        let kept = Kept::Purchase { product_ids, ts };
                        self.navigate(cookie, p.crm_id.as_deref(), ts, kept)?
                    }
                    None => vec![Resolved::Purchase {
                        crm_id: p.crm_id.clone().unwrap_or_default(),
                        cookie_id: None,
                        product_ids,
                        ts,
                    }],
                };
                self.deliver(msgs, sink)
            }
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
    /// (check time, crm_id, product_id): the timer index's key order.
    fn fire_due(
        &mut self,
        watermark: Option<Millis>,
        sink: &mut dyn TriggerSink,
    ) -> Result<(), EngineError> {
        let Some(w) = watermark else { return Ok(()) };
        self.fire_overdue(sink)?;
        if w < self.earliest_due {
            return Ok(());
        }
        let upper = w.checked_add(1).map(ts_key);
        loop {
            let lower = ts_key(self.earliest_due);
            let due = self
                .store
                .scan(Cf::Timers, &lower, upper.as_deref(), SCAN_CHUNK)?;
            let Some((last, _)) = due.last() else { break };
            let mut resume_at = timer_time(last)?;
            let mut stage = self.customers(sink);
            for (key, _) in &due {
                let (at, crm_id, product_id) = read_timer(key).ok_or_else(corrupt_timer)?;
                // A timer re-filed before the rest of this chunk must fire
                // in its place in the order: scan again from here.
                if let Some(refiled) = stage.fire_due(at, &crm_id, &product_id)? {
                    if refiled <= resume_at {
                        resume_at = at;
                        break;
                    }
                }
            }
            // Firing never files a timer before the one being handled, so
            // nothing lands before `resume_at`.
            self.earliest_due = resume_at;
        }
        self.swept_to = w.saturating_add(1);
        self.earliest_due = first_timer_at_or_after(&self.store, self.swept_to)?;
        Ok(())
    }

    /// Fires the checks scheduled below the swept region, in the contract's
    /// order; they all come before anything the timer scan finds.
    fn fire_overdue(&mut self, sink: &mut dyn TriggerSink) -> Result<(), EngineError> {
        while !self.overdue.is_empty() {
            self.overdue.sort_unstable_by(|a, b| b.cmp(a)); // smallest last
            let Some((at, crm_id, product_id)) = self.overdue.pop() else {
                break;
            };
            let swept_to = self.swept_to;
            let mut stage = self.customers(sink);
            match stage.fire_due(at, &crm_id, &product_id)? {
                Some(refiled) if refiled < swept_to => {
                    self.overdue.push((refiled, crm_id, product_id))
                }
                Some(refiled) => self.earliest_due = self.earliest_due.min(refiled),
                None => {}
            }
        }
        Ok(())
    }

    /// The times of applied events with this id that can still make a
    /// duplicate.
    fn dedup_times(&self, key: &[u8]) -> Result<Vec<Millis>, StateError> {
        let Some(mut times) = load::<Vec<Millis>>(&self.store, Cf::Dedup, key)? else {
            return Ok(Vec::new());
        };
        times.retain(|&t| t >= self.dedup_horizon);
        Ok(times)
    }

    fn record_dedup(&mut self, key: Vec<u8>, mut times: Vec<Millis>, ts: Millis) {
        times.push(ts);
        self.store.put(Cf::Dedup, key, encode(&times));
    }

    /// Once per hour of event time, moves the dedup horizon: event ids that
    /// no event within the allowed lateness can duplicate any more stop
    /// counting, and compaction drops them. Driven by event time only, so
    /// a replay forgets exactly as live mode does.
    fn collect_garbage(&mut self) {
        let Some(max_ts) = self.max_ts else { return };
        let hour = max_ts.div_euclid(HOUR);
        if hour <= self.gc_hour {
            return;
        }
        self.gc_hour = hour;
        self.dedup_horizon = max_ts
            .saturating_sub(self.params.allowed_lateness)
            .saturating_sub(self.params.dedup_window);
        self.published_horizon
            .store(self.dedup_horizon, Ordering::Relaxed);
    }
}

/// The committed entries of `cf` that can affect a result, for comparing
/// two states (a live run against a replay): every entry, except `Dedup`
/// entries whose times all lie below the stored dedup horizon, which no
/// reader sees and compaction drops at a time of RocksDB's choosing.
pub fn comparable_entries(store: &Store, cf: Cf) -> Result<Entries, StateError> {
    let mut entries = store.committed(cf)?;
    if cf == Cf::Dedup {
        let horizon = meta_i64(store, META_DEDUP_HORIZON)?.unwrap_or(Millis::MIN);
        entries.retain(|(_, v)| !dedup_entry_dead(v, horizon));
    }
    Ok(entries)
}

/// The compaction filter of `Dedup`: an entry is dead once all its times
/// lie below the published horizon (readers ignore those times already).
fn dedup_expiry(horizon: &Arc<AtomicI64>) -> (Cf, Expired) {
    let horizon = Arc::clone(horizon);
    let expired = move |value: &[u8]| dedup_entry_dead(value, horizon.load(Ordering::Relaxed));
    (Cf::Dedup, Box::new(expired))
}

/// A `Dedup` value whose times all lie below `horizon`: no reader counts
/// it. An undecodable value is kept (and reported by the reader).
fn dedup_entry_dead(value: &[u8], horizon: Millis) -> bool {
    decode::<Vec<Millis>>(Cf::Dedup.name(), value).is_ok_and(|t| t.iter().all(|&t| t < horizon))
}

/// Event ids are kept hashed: 128 bits make a collision across a day of
/// events negligible, and no id (which may embed a customer id) is stored.
fn dedup_key(event_id: &str) -> Vec<u8> {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
        .to_be_bytes()
        .to_vec()
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = META_OFFSET_PREFIX.to_vec();
    push_str(&mut k, topic);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn parse_offset(key: &[u8], value: &[u8]) -> Result<SourceOffset, StateError> {
    let corrupt = || StateError::Corrupt {
        cf: Cf::Meta.name(),
        detail: "undecodable offset entry".into(),
    };
    let rest = &key[META_OFFSET_PREFIX.len()..];
    let (topic, rest) = crate::state::keys::read_str(rest).ok_or_else(corrupt)?;
    let partition = i32::from_be_bytes(rest.try_into().map_err(|_| corrupt())?);
    let next_offset = i64::from_be_bytes(value.try_into().map_err(|_| corrupt())?);
    Ok(SourceOffset {
        topic,
        partition,
        next_offset,
    })
}

fn ts_key(ts: Millis) -> Vec<u8> {
    let mut k = Vec::with_capacity(8);
    push_ts(&mut k, ts);
    k
}

fn corrupt_timer() -> StateError {
    StateError::Corrupt {
        cf: Cf::Timers.name(),
        detail: "undecodable timer key".into(),
    }
}

fn timer_time(key: &[u8]) -> Result<Millis, StateError> {
    read_timer(key)
        .map(|(at, _, _)| at)
        .ok_or_else(corrupt_timer)
}

/// The due time of the first pending check at or after `from`, or
/// `Millis::MAX` when there is none.
fn first_timer_at_or_after(store: &Store, from: Millis) -> Result<Millis, StateError> {
    match store.scan(Cf::Timers, &ts_key(from), None, 1)?.first() {
        Some((key, _)) => timer_time(key),
        None => Ok(Millis::MAX),
    }
}

fn meta_i64(store: &Store, key: &[u8]) -> Result<Option<Millis>, StateError> {
    let Some(b) = store.get(Cf::Meta, key)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = b.as_slice().try_into().map_err(|_| StateError::Corrupt {
        cf: Cf::Meta.name(),
        detail: format!(
            "{} is {} bytes, expected 8",
            String::from_utf8_lossy(key),
            b.len()
        ),
    })?;
    Ok(Some(i64::from_be_bytes(bytes)))
}
