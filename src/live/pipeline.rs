//! The live pipeline in two steps, each batch:
//!
//! 1. `apply_batch`, the pure step: decoded messages through the engine,
//!    giving the batch's output (triggers, dead letters) and the next input
//!    offsets. It changes the state in memory only; nothing is committed.
//! 2. The effectful step, in this order: send the output; once every
//!    message of it is acknowledged, commit the state with the offsets
//!    (one RocksDB write batch); then tell the source (Kafka's committed
//!    offsets, for monitoring). The acknowledgement and the write happen on
//!    the state writer's thread while the next batch is polled and applied.
//!    A failure before the write leaves the state and offsets as they were:
//!    the batch is read again.
//!
//! With `kafka.exactly_once` the effectful step is one Kafka transaction
//! (the output and the next input offsets) committed before the RocksDB
//! batch, and on assignment what the state lacks of committed transactions
//! is re-applied with the output muted (`eos`, and `txn` for the argument).
//!
//! The input and the output are behind two small traits, `BatchSource` and
//! `Output`, and time behind `Clock`, so the pipeline runs in tests with no
//! broker (tests/pipeline.rs).

mod encode;
mod eos;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Topics};
use crate::deadletter::DeadLetter;
use crate::decode::{decode, Reason, Rejection};
use crate::engine::ahead::ReadAhead;
use crate::engine::{Engine, EngineError, Outcome, SourceOffset, TriggerSink};
use crate::event::{Event, Millis};
use crate::http::Health;
use crate::state::prefetch::Hint;
use crate::state::store::{open_gate, Gate, GateError};
use crate::state::StateError;
use crate::threads::spawn_named;
use crate::trigger::{Conversion, Trigger};

use super::events::{DeadLettered, SkippedBelowPosition};
use super::idle::Idle;
use super::offsets::{Offsets, Positions};
use super::source::InputMessage;
use super::txn::{GroupMetadata, GroupPosition, Recovery, TxnOffset};
use super::{priority, LiveError};
use encode::{encode_all, BatchSink, EncodedTrigger};

/// A too-large message's payload is cut to this in its dead letter, which
/// must itself fit in a Kafka message; topic, partition and offset locate
/// the original.
const DEAD_LETTER_PAYLOAD_MAX: usize = 64 * 1024;

/// Where the batches come from (Kafka in production). `Send`: the next
/// batch may be polled on a thread of its own while one is applied.
pub trait BatchSource: Send {
    /// Up to `max` messages within `max_wait`; ends early on a revoke (so
    /// the batch is committed before more is read) or a stop. An error is
    /// fatal: the pipeline stops.
    fn next_batch(
        &mut self,
        max: usize,
        max_wait: Duration,
        stop: &Stop,
    ) -> Result<Vec<InputMessage>, LiveError>;

    /// Whether any input partition is ours now.
    fn is_assigned(&self) -> bool;

    /// These offsets are now stored with the state.
    fn committed(&mut self, offsets: &[SourceOffset]);

    /// Whether partitions were revoked while the last batch was collected
    /// (`finish_revoke` has work to do).
    fn revoke_pending(&self) -> bool;

    /// Hands over partitions revoked while the last batch was collected,
    /// now that it is committed; `offsets` are the stored positions.
    fn finish_revoke(&mut self, offsets: &Offsets);

    /// Exactly-once: the group's committed offsets of the partitions
    /// assigned since the last call.
    fn take_group_positions(&mut self) -> Vec<GroupPosition>;

    /// Exactly-once: the consumer's group metadata now, which a
    /// transaction commits its offsets under.
    fn group_metadata(&self) -> Option<GroupMetadata>;

    /// The input partitions assigned now.
    fn assignment(&self) -> Vec<(String, i32)>;

    /// Reads these partitions again from these offsets (what was read past
    /// them is dropped).
    fn rewind(&mut self, to: &[SourceOffset]) -> Result<(), LiveError>;

    /// Whether the next batch may be polled while one is applied. The
    /// pipeline asks only at least once (exactly-once rewinds the source
    /// between batches).
    fn polls_ahead(&self) -> bool {
        false
    }
}

/// Where the output goes (Kafka in production).
pub trait Output {
    /// Queues one message.
    fn send(&mut self, topic: &str, key: Option<&[u8]>, payload: &[u8]) -> Result<(), LiveError>;

    /// Ends a batch's output: the acknowledgement of every message sent
    /// since the last seal, to wait for before the batch's offsets are
    /// stored.
    fn seal(&mut self) -> Box<dyn Acknowledgement>;

    /// Exactly-once: opens the transaction of one batch's output.
    fn begin(&mut self) -> Result<(), LiveError>;

    /// Exactly-once: commits what was sent since `begin` together with the
    /// input `offsets`, under the consumer's `group` metadata: all of it
    /// becomes visible to read_committed consumers, or none. On an error
    /// the transaction is aborted (or the producer was fenced).
    fn commit_txn(
        &mut self,
        offsets: &[TxnOffset],
        group: Option<&GroupMetadata>,
    ) -> Result<(), LiveError>;

    /// Exactly-once: aborts the open transaction (a send failed).
    fn abort_txn(&mut self);
}

/// One batch's output on its way to the broker. Waited for on the state
/// writer's thread, so the broker acknowledges a batch while the next one
/// is applied.
pub trait Acknowledgement: Send {
    /// Returns once every message of the batch is acknowledged; an error
    /// if any was not (the batch's state and offsets are then not stored).
    fn wait(self: Box<Self>) -> Result<(), LiveError>;
}

/// The two clocks the pipeline reads: a monotonic one for timeouts, the
/// wall clock for the idle advance.
pub trait Clock {
    /// Monotonic time since some fixed origin.
    fn mono(&self) -> Duration;
    /// Unix epoch milliseconds.
    fn wall_ms(&self) -> Millis;
}

pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn mono(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis)
    }
}

/// How the pipeline is told to stop. `request`: finish the batch being
/// collected, publish it, commit it, return. `abandon`: the shutdown
/// deadline passed (or the process is leaving on an error): give up at
/// once, committing nothing more; the uncommitted batch is read again.
#[derive(Default)]
pub struct Stop {
    requested: AtomicBool,
    abandoned: AtomicBool,
}

impl Stop {
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
    }

    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.request();
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    pub fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }
}

/// A dead letter ready to produce, with what locates its message.
pub struct DeadLetterOut {
    pub key: Option<Vec<u8>>,
    pub json: String,
    pub reason: Reason,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What a batch makes, in the order the engine made it, produced before
/// its offsets are stored: triggers of either group (each goes to its
/// group's topic), conversions, dead letters.
#[derive(Default)]
pub struct Produced {
    /// Triggers made into JSON while the batch was applied (`encode`);
    /// they came before `triggers`.
    pub encoded: Vec<EncodedTrigger>,
    pub triggers: Vec<Trigger>,
    pub conversions: Vec<Conversion>,
    pub dead_letters: Vec<DeadLetterOut>,
}

impl Produced {
    pub fn is_empty(&self) -> bool {
        self.trigger_count() == 0 && self.conversions.is_empty() && self.dead_letters.is_empty()
    }

    pub fn trigger_count(&self) -> usize {
        self.encoded.len() + self.triggers.len()
    }
}

impl TriggerSink for Produced {
    fn emit(&mut self, trigger: Trigger) {
        self.triggers.push(trigger);
    }

    fn convert(&mut self, conversion: Conversion) {
        self.conversions.push(conversion);
    }
}

/// The result of the pure step.
#[derive(Default)]
pub struct Applied {
    pub produced: Produced,
    /// The next offset to read of each partition the batch touched.
    pub next: Vec<SourceOffset>,
    /// Messages below the stored position, skipped: (topic, partition, offset).
    pub skipped: Vec<(String, i32, i64)>,
    /// Whether the engine applied any event (duplicates and ignored ones
    /// are not applied).
    pub applied_any: bool,
}

/// The pure step: applies `batch` to the engine, in order. The state
/// changes stay uncommitted. An engine error names the message. Messages
/// are decoded a chunk ahead on a thread of their own, as in replay, and
/// triggers made into JSON on another (`encode`).
pub fn apply_batch(
    engine: &mut Engine,
    offsets: &Offsets,
    batch: &[InputMessage],
    max_bytes: usize,
) -> Result<Applied, LiveError> {
    if batch.len() <= DECODE_CHUNK {
        return apply_small(engine, offsets, batch, max_bytes);
    }
    // The decoding thread also reads ahead the state each event will
    // read (`engine::ahead`), as replay's does.
    let mut ahead = ReadAhead::new(engine.prefetcher());
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(DECODE_CHUNKS_AHEAD);
        spawn_named(scope, "pretext-decode", move || {
            for chunk in decode_chunks(batch) {
                if tx.send(decode_ahead(chunk, &mut ahead, max_bytes)).is_err() {
                    return; // the applier stopped on an error
                }
            }
        });
        let decoded = rx.into_iter().flatten();
        let (to_encoder, chunks) = std::sync::mpsc::channel();
        let encoding = spawn_named(scope, "pretext-encode", move || encode_all(chunks));
        let applied = apply_decoded(engine, offsets, batch.iter().zip(decoded), Some(to_encoder));
        let encoded = joined(encoding);
        applied.map(|mut out| {
            out.produced.encoded = encoded;
            out
        })
    })
}

/// A batch decoded as it is applied: too small to gain from a thread.
fn apply_small(
    engine: &mut Engine,
    offsets: &Offsets,
    batch: &[InputMessage],
    max_bytes: usize,
) -> Result<Applied, LiveError> {
    let decoded = batch
        .iter()
        .map(|m| decode(&m.payload, max_bytes).map(|e| (e, Vec::new())));
    apply_decoded(engine, offsets, batch.iter().zip(decoded), None)
}

fn joined<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A batch in the chunks it is decoded in: a small first one, so the
/// engine starts on the batch soon after the decoding thread does (with
/// 512 it waited ~3 ms at each batch's start, 3% of a live run).
fn decode_chunks(batch: &[InputMessage]) -> impl Iterator<Item = &[InputMessage]> {
    let (first, rest) = batch.split_at(FIRST_DECODE_CHUNK.min(batch.len()));
    std::iter::once(first).chain(rest.chunks(DECODE_CHUNK))
}

/// Decodes `messages` and reads ahead what each event will read.
fn decode_ahead(
    messages: &[InputMessage],
    ahead: &mut ReadAhead,
    max_bytes: usize,
) -> Vec<Result<(Event, Vec<Hint>), Rejection>> {
    messages
        .iter()
        .map(|m| {
            decode(&m.payload, max_bytes).map(|e| {
                let hints = ahead.read(&e);
                (e, hints)
            })
        })
        .collect()
}

/// At least once, uncommitted state beyond this is stored whatever
/// `kafka.commit_interval` says: it bounds the memory of the overlay.
const COMMIT_MAX_BYTES: usize = 32 << 20;

/// Messages per chunk decoded ahead, and chunks that may wait.
const DECODE_CHUNK: usize = 512;
const FIRST_DECODE_CHUNK: usize = 64;
const DECODE_CHUNKS_AHEAD: usize = 8;

/// Applies decoded messages in order; triggers go to `encoder` (then to
/// `Produced::encoded`, once it is joined) when there is one.
fn apply_decoded<'m>(
    engine: &mut Engine,
    offsets: &Offsets,
    decoded: impl Iterator<Item = (&'m InputMessage, Result<(Event, Vec<Hint>), Rejection>)>,
    encoder: Option<Sender<Vec<Trigger>>>,
) -> Result<Applied, LiveError> {
    let mut out = Applied::default();
    let mut sink = BatchSink::new(&mut out.produced, encoder);
    let mut positions = Positions::default();
    for (m, event) in decoded {
        if positions.already_applied(offsets, m) {
            out.skipped.push((m.topic.clone(), m.partition, m.offset));
            continue;
        }
        match event {
            Ok((event, hints)) => {
                let outcome =
                    engine
                        .apply_read_ahead(&event, hints, &mut sink)
                        .map_err(|source| LiveError::Apply {
                            topic: m.topic.clone(),
                            partition: m.partition,
                            offset: m.offset,
                            source,
                        })?;
                out.applied_any |= outcome == Outcome::Applied;
            }
            Err(rejection) => sink.produced.dead_letters.push(DeadLetterOut {
                key: m.key.clone(),
                json: dead_letter(
                    &m.topic,
                    m.partition,
                    m.offset,
                    &m.payload,
                    rejection.reason,
                    &rejection.error,
                ),
                reason: rejection.reason,
                topic: m.topic.clone(),
                partition: m.partition,
                offset: m.offset,
            }),
        }
        positions.read(m);
    }
    sink.finish();
    out.next = positions.into_next();
    Ok(out)
}

/// Sends a batch's output; the gate of its state write waits for every
/// acknowledgement.
fn publish(output: &mut dyn Output, topics: &Topics, out: &Produced) -> Result<Gate, LiveError> {
    if out.is_empty() {
        return Ok(open_gate());
    }
    send_all(output, topics, out)?;
    let ack = output.seal();
    Ok(Box::new(move || ack.wait().map_err(GateError::from)))
}

/// Queues a batch's output, in the order the engine made it.
fn send_all(output: &mut dyn Output, topics: &Topics, out: &Produced) -> Result<(), LiveError> {
    for e in &out.encoded {
        let topic = topics.of_trigger(e.group);
        output.send(topic, Some(e.crm_id.as_bytes()), e.json.as_bytes())?;
    }
    for t in &out.triggers {
        output.send(
            topics.of_trigger(t.group),
            Some(t.crm_id.as_bytes()),
            t.to_json().as_bytes(),
        )?;
    }
    for c in &out.conversions {
        output.send(
            &topics.conversions,
            Some(c.crm_id.as_bytes()),
            c.to_json().as_bytes(),
        )?;
    }
    for d in &out.dead_letters {
        output.send(&topics.dead_letter, d.key.as_deref(), d.json.as_bytes())?;
    }
    Ok(())
}

pub struct Pipeline<S, O, C> {
    config: Config,
    engine: Engine,
    offsets: Offsets,
    source: S,
    output: O,
    clock: C,
    health: Health,
    idle: Idle,
    /// `kafka.exactly_once`.
    eos: bool,
    /// Exactly-once: what committed transactions hold and the state lacks.
    recovery: Recovery,
    crash: eos::CrashPoint,
    /// At least once: the offsets of the batch whose state is still being
    /// written (`Engine::commit_in_background`), told to the source once
    /// it has landed.
    landing: Option<Vec<SourceOffset>>,
    /// The next batch, polled while the last one was applied.
    ahead: Option<Result<Vec<InputMessage>, LiveError>>,
    /// At least once: batches applied and sent but not yet stored, their
    /// next offsets merged and their output acknowledgements in order.
    unstored: Unstored,
}

/// Batches whose state waits to be written together (`kafka.commit_interval`).
#[derive(Default)]
struct Unstored {
    next: BTreeMap<(String, i32), i64>,
    /// The batches' gates, passing (or not) on threads of their own from
    /// the moment each batch is sent: waiting for an acknowledgement serves
    /// the producer's delivery reports, which frees room for the next
    /// batches.
    acks: Vec<Acks>,
    /// Told when the last gate has been waited for: each waits for the one
    /// before, across stores, so batches are acknowledged in order.
    last_acked: Option<Receiver<()>>,
    /// When the last store began (monotonic).
    since: Duration,
}

impl Unstored {
    fn add_next(&mut self, next: &[SourceOffset]) {
        for o in next {
            self.next
                .insert((o.topic.clone(), o.partition), o.next_offset);
        }
    }

    fn add_gate(&mut self, gate: Gate) -> Result<(), LiveError> {
        let (acked, last_acked) = std::sync::mpsc::sync_channel(1);
        let before = self.last_acked.replace(last_acked);
        let waiting = std::thread::Builder::new()
            .name("pretext-ack".into())
            .spawn(move || {
                // Dropped unsent when the waiter before ended on a panic.
                let _ = before.map(|b| b.recv());
                let passed = gate();
                let _ = acked.send(());
                passed
            })
            .map_err(|e| LiveError::from(EngineError::State(StateError::Spawn(e))))?;
        self.acks.push(waiting);
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.next.is_empty()
    }

    /// The merged offsets, and one gate that passes once each batch's has,
    /// in order.
    fn take(&mut self, now: Duration) -> (Vec<SourceOffset>, Gate) {
        self.since = now;
        let next = std::mem::take(&mut self.next)
            .into_iter()
            .map(|((topic, partition), next_offset)| SourceOffset {
                topic,
                partition,
                next_offset,
            })
            .collect();
        let acks = std::mem::take(&mut self.acks);
        let gate: Gate = Box::new(move || {
            acks.into_iter().try_for_each(|a| {
                a.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        });
        (next, gate)
    }
}

/// Waiters not yet handed to a store (the pipeline ended on an error, which
/// abandons the stop and so ends their wait) are joined, not left behind.
impl Drop for Unstored {
    fn drop(&mut self) {
        for a in self.acks.drain(..) {
            let _ = a.join();
        }
    }
}

type Acks = std::thread::JoinHandle<Result<(), GateError>>;

impl<S: BatchSource, O: Output, C: Clock> Pipeline<S, O, C> {
    /// `offsets` must be those stored in `engine`'s state (the source was
    /// given their view).
    pub fn new(
        config: Config,
        engine: Engine,
        offsets: Offsets,
        source: S,
        output: O,
        clock: C,
        health: Health,
    ) -> Pipeline<S, O, C> {
        let idle = Idle::new(&config, engine.max_event_ts(), engine.watermark(), &clock);
        health.state_open.store(true, Ordering::Release);
        let eos = config.kafka.exactly_once;
        let mut engine = engine;
        // The state may trail the transactions by one batch, never more.
        engine.set_sync(eos);
        Pipeline {
            eos,
            recovery: Recovery::default(),
            crash: eos::CrashPoint::from_env(),
            landing: None,
            ahead: None,
            unstored: Unstored::default(),
            config,
            engine,
            offsets,
            source,
            output,
            clock,
            health,
            idle,
        }
    }

    /// Runs until `stop` is requested (the batch being collected is then
    /// finished and committed) or an error. On an error the state is no
    /// longer served: readiness goes false.
    pub fn run(&mut self, stop: &Stop) -> Result<(), LiveError> {
        let result = self.run_loop(stop).and_then(|()| self.store_all());
        if result.is_err() {
            // The batch still waiting for acknowledgements is given up
            // (read again on restart) rather than waited for.
            stop.abandon();
            self.health.state_open.store(false, Ordering::Release);
            self.observe();
        }
        result
    }

    fn run_loop(&mut self, stop: &Stop) -> Result<(), LiveError> {
        let max = self.config.kafka.batch_max_messages;
        let wait = self.config.kafka.batch_max_wait.std();
        self.observe();
        while !stop.is_requested() {
            let mut batch = match self.ahead.take() {
                Some(polled) => polled?,
                None => self.source.next_batch(max, wait, stop)?,
            };
            if stop.is_abandoned() {
                break;
            }
            if self.eos {
                match self.recover(batch)? {
                    Some(b) => batch = b,
                    None => {
                        self.source.finish_revoke(&self.offsets);
                        continue;
                    }
                }
            }
            let now = self.clock.mono();
            // Idle means no input while partitions are assigned: before an
            // assignment (a group still rebalancing) nothing can arrive, and
            // following the clock then would make the backlog late.
            if !batch.is_empty() || !self.source.is_assigned() {
                self.idle.input_at(now);
            }
            if batch.is_empty() {
                // Nothing to overlap the last batch's acknowledgement and
                // write with: have them now, so its offsets (and any
                // failure of its output) do not wait for the next batch.
                self.store_all()?;
                self.idle_advance()?;
            } else {
                self.process(&batch, stop)?;
            }
            // A revoke ended the batch: once it is stored, hand the
            // partitions over. A batch polled ahead ended at the revoke:
            // it is applied first, its messages being ours.
            if self.ahead.is_none() {
                if self.source.revoke_pending() {
                    self.store_all()?;
                }
                self.source.finish_revoke(&self.offsets);
            }
        }
        Ok(())
    }

    /// Applies a batch, produces its output, then stores state and offsets.
    fn process(&mut self, batch: &[InputMessage], stop: &Stop) -> Result<(), LiveError> {
        let started = self.clock.mono();
        let applied = self.apply_polling_ahead(batch, stop)?;
        let metrics = self.health.metrics.clone();
        for (topic, partition, offset) in &applied.skipped {
            SkippedBelowPosition {
                topic,
                partition: *partition,
                offset: *offset,
            }
            .emit(&metrics);
        }
        if let (true, Some(m)) = (applied.applied_any, self.engine.max_event_ts()) {
            self.idle.applied(m, self.clock.wall_ms());
        }
        let gate = self.deliver(&applied.produced, &applied.next, batch)?;
        for d in &applied.produced.dead_letters {
            DeadLettered {
                reason: d.reason,
                topic: &d.topic,
                partition: d.partition,
                offset: d.offset,
            }
            .emit(&metrics);
        }
        self.commit(&applied.next, gate)?;
        metrics
            .batch_duration
            .observe((self.clock.mono().saturating_sub(started)).as_secs_f64());
        self.observe();
        Ok(())
    }

    /// Applies `batch`; meanwhile the next one is polled on a second thread
    /// when the source allows it and no revoke or stop is pending (the
    /// consumer's copying and waiting then overlap the engine). That thread
    /// runs at a lower priority: the engine waits for this batch's
    /// decoding now, for the next batch only at its end. Nothing else
    /// touches the source until both are done.
    fn apply_polling_ahead(
        &mut self,
        batch: &[InputMessage],
        stop: &Stop,
    ) -> Result<Applied, LiveError> {
        let max_bytes = self.config.input.max_message_bytes;
        let (engine, offsets) = (&mut self.engine, &self.offsets);
        let ahead = !self.eos
            && self.source.polls_ahead()
            && !self.source.revoke_pending()
            && !stop.is_requested();
        if !ahead {
            return apply_batch(engine, offsets, batch, max_bytes);
        }
        let (max, wait) = (
            self.config.kafka.batch_max_messages,
            self.config.kafka.batch_max_wait.std(),
        );
        let source = &mut self.source;
        let (applied, next) = std::thread::scope(|scope| {
            let polling = spawn_named(scope, "pretext-poll", || {
                priority::lower_this_thread();
                source.next_batch(max, wait, stop)
            });
            let applied = apply_batch(engine, offsets, batch, max_bytes);
            (applied, joined(polling))
        });
        self.ahead = Some(next);
        applied
    }

    /// State and offsets in one write batch; then memory and Kafka follow.
    /// At least once, the batches of a `kafka.commit_interval` are stored
    /// together, once every one's output is acknowledged (`gate`), while
    /// the next batches are polled and applied: a crash before the write
    /// lands reads them again, as a crash before the write did.
    /// Exactly-once stores each batch and waits for it: the next
    /// transaction must not begin before the state holds this one.
    fn commit(&mut self, next: &[SourceOffset], gate: Gate) -> Result<(), LiveError> {
        if self.eos {
            self.settle()?;
            return self.store(next.to_vec(), gate).and_then(|()| self.settle());
        }
        self.unstored.add_next(next);
        self.unstored.add_gate(gate)?;
        self.store_if_due()
    }

    /// At least once: stores what is pending once `kafka.commit_interval`
    /// has passed since the last store, or the changes outgrow their bound.
    fn store_if_due(&mut self) -> Result<(), LiveError> {
        let interval = self.config.kafka.commit_interval.std();
        let now = self.clock.mono();
        if now.saturating_sub(self.unstored.since) >= interval
            || self.engine.uncommitted_bytes() >= COMMIT_MAX_BYTES
        {
            self.store_unstored()?;
        }
        Ok(())
    }

    /// Writes the batches not yet stored in the background (after the
    /// previous write has landed).
    fn store_unstored(&mut self) -> Result<(), LiveError> {
        if self.unstored.is_empty() {
            return Ok(());
        }
        self.settle()?;
        let (next, gate) = self.unstored.take(self.clock.mono());
        self.store(next, gate)
    }

    fn store(&mut self, next: Vec<SourceOffset>, gate: Gate) -> Result<(), LiveError> {
        self.engine.commit_in_background(&next, gate)?;
        self.offsets.advance(&next);
        self.landing = Some(next);
        Ok(())
    }

    /// Every batch applied so far stored, and the source told.
    fn store_all(&mut self) -> Result<(), LiveError> {
        self.store_unstored()?;
        self.settle()
    }

    /// Waits for the state write in flight, then tells the source its
    /// offsets are stored. A batch withheld for its output is that
    /// output's error.
    fn settle(&mut self) -> Result<(), LiveError> {
        self.engine.wait_committed().map_err(unwithheld)?;
        if let Some(next) = self.landing.take() {
            self.source.committed(&next);
        }
        Ok(())
    }

    /// No input for `idle_timeout`: the watermark follows the wall clock
    /// from the last applied event (contract section 3), so checks fire in
    /// quiet hours; fired checks are published, then the state committed
    /// (it keeps the idle watermark across restarts).
    fn idle_advance(&mut self) -> Result<(), LiveError> {
        let Some(to) = self.idle.target(self.clock.mono(), self.clock.wall_ms()) else {
            return Ok(());
        };
        // Exactly-once records the advance on assigned partitions' offsets:
        // with none to carry it, the checks wait for input.
        let carriers = self.idle_carriers();
        if self.eos && carriers.is_empty() {
            return Ok(());
        }
        let before = self.engine.watermark();
        let mut out = Produced::default();
        self.engine.advance_watermark(to, &mut out)?;
        if self.engine.watermark() == before {
            self.observe_clock();
            return Ok(());
        }
        if !out.triggers.is_empty() {
            tracing::info!(
                triggers = out.trigger_count(),
                "idle watermark advance fired checks"
            );
        }
        let gate = self.deliver(&out, &carriers, &[])?;
        self.commit(&[], gate)?;
        self.observe();
        Ok(())
    }

    /// A batch's output out: sent, with the gate that waits for its
    /// acknowledgement (at least once), or committed in a transaction with
    /// `next` (exactly once; `batch` tells where each partition started).
    fn deliver(
        &mut self,
        out: &Produced,
        next: &[SourceOffset],
        batch: &[InputMessage],
    ) -> Result<Gate, LiveError> {
        if self.eos {
            self.deliver_txn(out, next, batch)?;
            Ok(open_gate())
        } else {
            publish(&mut self.output, &self.config.topics, out)
        }
    }

    fn observe(&self) {
        let m = &self.health.metrics;
        m.observe_engine(self.engine.stats());
        self.observe_clock();
        let size = self.engine.state_size();
        m.state_size_bytes.set(size.bytes as i64);
        m.state_keys.set(size.keys as i64);
        m.ready.set(i64::from(self.health.is_ready()));
    }

    /// The gauges that move with the clock even when nothing else does.
    fn observe_clock(&self) {
        let m = &self.health.metrics;
        if let Some(w) = self.engine.watermark() {
            m.watermark.set(w as f64 / 1000.0);
        }
        if let Some(ts) = self.engine.max_event_ts() {
            let lag = self.clock.wall_ms().saturating_sub(ts);
            m.event_time_lag.set(lag as f64 / 1000.0);
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    pub fn output(&self) -> &O {
        &self.output
    }

    /// Gives the parts back (tests reopen the state from them).
    pub fn into_parts(self) -> (Engine, S, O) {
        (self.engine, self.source, self.output)
    }
}

/// An output's error that withheld a batch's state, as that error.
fn unwithheld(e: EngineError) -> LiveError {
    match e {
        EngineError::State(StateError::Withheld(gate)) => match gate.downcast::<LiveError>() {
            Ok(e) => *e,
            Err(other) => LiveError::from(EngineError::State(StateError::Withheld(other))),
        },
        e => e.into(),
    }
}

/// The dead letter of the message at `topic`, `partition`, `offset`.
pub(super) fn dead_letter(
    topic: &str,
    partition: i32,
    offset: i64,
    payload: &[u8],
    reason: Reason,
    error: &str,
) -> String {
    let payload = truncated(payload, DEAD_LETTER_PAYLOAD_MAX);
    DeadLetter {
        error,
        reason,
        topic,
        partition,
        offset,
        payload,
    }
    .to_json()
}

/// At most `max` bytes of `payload`; a cut inside a UTF-8 character moves
/// back to its start, so a text payload stays text (`payload`, not
/// `payload_b64`) in the dead letter.
fn truncated(payload: &[u8], max: usize) -> &[u8] {
    if payload.len() <= max {
        return payload;
    }
    let cut = &payload[..max];
    match std::str::from_utf8(cut) {
        // An incomplete character at the end, after valid text.
        Err(e) if e.error_len().is_none() => &cut[..e.valid_up_to()],
        _ => cut,
    }
}

#[cfg(test)]
mod tests {
    use super::truncated;

    #[test]
    fn truncation_keeps_text_whole_characters() {
        assert_eq!(truncated(b"short", 10), b"short");
        let text = "xé".as_bytes(); // 3 bytes, 'é' in two
        assert_eq!(truncated(text, 2), b"x");
        assert_eq!(truncated(text, 1), b"x");
        // Not UTF-8 anyway: a plain cut (the dead letter uses base64).
        assert_eq!(truncated(&[0xff, 0xfe, 0xfd], 2), &[0xff, 0xfe]);
    }
}
