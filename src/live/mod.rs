//! Live mode: the input topics through the engine, triggers and dead letters
//! out, in batches whose state changes and next input offsets are committed
//! together in one RocksDB write batch.
//!
//! Delivery: state is applied exactly once (on assignment the consumer
//! starts at the offsets stored with the state); triggers are at least once
//! (a batch killed after producing but before committing is produced again,
//! with the same deterministic `trigger_id`s).
//!
//! The pipeline runs on a thread of its own (RocksDB and librdkafka calls
//! are synchronous); the async runtime serves HTTP and waits for signals.
//! Rebalance callbacks run inside the pipeline's `poll`: a revoke ends the
//! batch being collected, which is committed before the partitions are
//! handed over (see `source`).

mod sink;
mod source;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::CommitMode;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::Config;
use crate::deadletter::DeadLetter;
use crate::decode::{decode, Reason};
use crate::engine::{Engine, EngineError, Outputs, SourceOffset};
use crate::event::Millis;
use crate::http::{self, Health};
use crate::metrics::{Metrics, MetricsError};
use crate::trigger::Group;

use sink::Sink;
pub use source::InputMessage;
use source::{Positions, Source};

/// A too-large message's payload is cut to this in its dead letter, which
/// must itself fit in a Kafka message; topic, partition and offset locate
/// the original.
const DEAD_LETTER_PAYLOAD_MAX: usize = 64 * 1024;
/// While idle, how often the watermark follows the wall clock.
const IDLE_ADVANCE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("kafka: cannot {what}: {source}")]
    Kafka {
        what: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot produce to {topic}: {source}")]
    Produce {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("{failed} produced messages were not delivered; the batch will be read again")]
    Delivery { failed: u64 },
    #[error("cannot listen on {addr}: {source}")]
    Http {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
    #[error("the pipeline thread failed: {0}")]
    Worker(String),
}

/// Runs live mode until `shutdown` resolves (then finishes the batch,
/// flushes, commits and returns) or a fatal error.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), LiveError> {
    let health = Health {
        metrics: Arc::new(Metrics::new()?),
        state_open: Arc::new(AtomicBool::new(false)),
        assigned: Arc::new(AtomicBool::new(false)),
    };
    let addr = config.http.listen.clone();
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| LiveError::Http {
            addr: addr.clone(),
            source,
        })?;
    info!(addr = %addr, "serving http");
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, health.clone(), async {
        let _ = http_stopped.await;
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = config.kafka.shutdown_timeout.std();
    // A thread of its own rather than `spawn_blocking`: dropping the runtime
    // waits for blocking tasks, so a pipeline stuck past the shutdown
    // deadline (a broker gone mid-flush) would keep the process alive.
    let (done, worker) = tokio::sync::oneshot::channel();
    {
        let (stop, health) = (stop.clone(), health.clone());
        // The caller's span goes along, so the pipeline's logs carry its fields.
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("pretext-pipeline".into())
            .spawn(move || {
                let _entered = span.enter();
                let _ = done.send(Pipeline::open(config, health).and_then(|p| p.run(&stop)));
            })
            .map_err(|e| LiveError::Worker(e.to_string()))?;
    }
    tokio::pin!(worker);
    tokio::pin!(shutdown);
    let joined = tokio::select! {
        joined = &mut worker => joined,
        () = &mut shutdown => {
            info!("shutdown requested: finishing the batch");
            stop.store(true, Ordering::Release);
            tokio::time::timeout(deadline, &mut worker)
                .await
                .map_err(|_| LiveError::ShutdownTimeout(deadline))?
        }
    };
    let _ = http_stop.send(());
    if let Ok(Err(e)) = server.await {
        warn!(error = %e, "http server failed");
    }
    // A dropped sender means the pipeline thread panicked.
    let result = joined.map_err(|_| LiveError::Worker("it panicked".into()))?;
    if result.is_ok() {
        info!("stopped cleanly");
    }
    result
}

struct Pipeline {
    config: Config,
    engine: Engine,
    source: Source,
    sink: Sink,
    health: Health,
    positions: Positions,
}

/// The output of a batch, produced before its offsets are stored.
#[derive(Default)]
struct Output {
    engine: Outputs,
    dead_letters: Vec<(Option<Vec<u8>>, String)>,
}

impl Pipeline {
    fn open(config: Config, health: Health) -> Result<Pipeline, LiveError> {
        let engine = Engine::open(&config.state.dir, &config)?;
        let stored = engine.stored_offsets()?;
        info!(partitions = stored.len(), "state open");
        let positions: Positions = Arc::new(Mutex::new(
            stored
                .into_iter()
                .map(|o| ((o.topic, o.partition), o.next_offset))
                .collect::<HashMap<_, _>>(),
        ));
        health.state_open.store(true, Ordering::Release);
        let metrics = health.metrics.clone();
        let source = Source::new(
            &config,
            positions.clone(),
            health.assigned.clone(),
            metrics.clone(),
        )?;
        let sink = Sink::new(&config, metrics)?;
        Ok(Pipeline {
            config,
            engine,
            source,
            sink,
            health,
            positions,
        })
    }

    fn run(mut self, stop: &AtomicBool) -> Result<(), LiveError> {
        let max = self.config.kafka.batch_max_messages;
        let wait = self.config.kafka.batch_max_wait.std();
        let idle_timeout = self.config.watermark.idle_timeout.std();
        let mut last_input = Instant::now();
        let mut last_advance = Instant::now();
        self.observe();
        while !stop.load(Ordering::Acquire) {
            let batch = self.source.next_batch(max, wait, stop);
            // Idle means no input while partitions are assigned: before an
            // assignment (a group still rebalancing) nothing can arrive, and
            // following the clock then would make the backlog late.
            if !self.health.assigned.load(Ordering::Acquire) {
                last_input = Instant::now();
            }
            if batch.is_empty() {
                if last_input.elapsed() >= idle_timeout
                    && last_advance.elapsed() >= IDLE_ADVANCE_EVERY
                {
                    self.idle_advance()?;
                    last_advance = Instant::now();
                }
            } else {
                last_input = Instant::now();
                self.process(batch)?;
            }
            // A revoke ended the batch: it is committed, hand the partitions over.
            self.source.finish_revoke();
        }
        Ok(())
    }

    /// Applies a batch, produces its output, then stores state and offsets.
    fn process(&mut self, batch: Vec<InputMessage>) -> Result<(), LiveError> {
        let started = Instant::now();
        let mut out = Output::default();
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let max_bytes = self.config.input.max_message_bytes;
        for m in &batch {
            if self.already_applied(m) {
                // Only after an offset reset (the stored position was out of
                // range: a recreated topic): applying would apply twice.
                warn!(
                    topic = %m.topic,
                    partition = m.partition,
                    offset = m.offset,
                    "skipping a message below the position stored with the state"
                );
                continue;
            }
            match decode(&m.payload, max_bytes) {
                Ok(event) => {
                    self.engine.apply(&event, &mut out.engine)?;
                }
                Err(rejection) => {
                    self.health.metrics.reject(rejection.reason);
                    out.dead_letters.push((
                        m.key.clone(),
                        dead_letter(m, rejection.reason, &rejection.error),
                    ));
                }
            }
            next.insert((m.topic.clone(), m.partition), m.offset + 1);
        }
        self.publish(&out)?;
        let offsets: Vec<SourceOffset> = next
            .into_iter()
            .map(|((topic, partition), next_offset)| SourceOffset {
                topic,
                partition,
                next_offset,
            })
            .collect();
        self.engine.commit(&offsets)?;
        self.remember(&offsets);
        self.source.commit_to_kafka(&offsets, CommitMode::Async);
        self.health
            .metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        self.observe();
        Ok(())
    }

    /// A message before the stored position was applied by an earlier run:
    /// skip it. Assignment starts every partition at its stored position,
    /// so this takes an offset reset (a recreated topic) to happen.
    fn already_applied(&self, m: &InputMessage) -> bool {
        let Ok(positions) = self.positions.lock() else {
            return false;
        };
        positions
            .get(&(m.topic.clone(), m.partition))
            .is_some_and(|&next| m.offset < next)
    }

    fn remember(&self, offsets: &[SourceOffset]) {
        if let Ok(mut positions) = self.positions.lock() {
            for o in offsets {
                positions.insert((o.topic.clone(), o.partition), o.next_offset);
            }
        }
    }

    fn publish(&self, out: &Output) -> Result<(), LiveError> {
        let topics = &self.config.topics;
        for t in &out.engine.triggers {
            // Holdout triggers never reach the triggers topic.
            let topic = match t.group {
                Group::Treated => &topics.triggers,
                Group::Holdout => &topics.holdout,
            };
            self.sink
                .send(topic, Some(t.crm_id.as_bytes()), t.to_json().as_bytes())?;
        }
        for c in &out.engine.conversions {
            self.sink.send(
                &topics.conversions,
                Some(c.crm_id.as_bytes()),
                c.to_json().as_bytes(),
            )?;
        }
        for (key, letter) in &out.dead_letters {
            self.sink
                .send(&topics.dead_letter, key.as_deref(), letter.as_bytes())?;
        }
        if out.engine.triggers.is_empty()
            && out.engine.conversions.is_empty()
            && out.dead_letters.is_empty()
        {
            return Ok(());
        }
        self.sink.flush()?;
        self.health
            .metrics
            .dead_letters
            .inc_by(out.dead_letters.len() as u64);
        Ok(())
    }

    /// No input for a while: the watermark follows the wall clock, so checks
    /// fire in quiet hours.
    fn idle_advance(&mut self) -> Result<(), LiveError> {
        let mut out = Output::default();
        let to = wall_clock_ms().saturating_sub(self.config.watermark.allowed_lateness.millis());
        self.engine.advance_watermark(to, &mut out.engine)?;
        if out.engine.triggers.is_empty() {
            return Ok(());
        }
        info!(
            triggers = out.engine.triggers.len(),
            "idle watermark advance fired checks"
        );
        self.publish(&out)?;
        self.engine.commit(&[])?;
        self.observe();
        Ok(())
    }

    fn observe(&self) {
        let m = &self.health.metrics;
        m.observe_engine(self.engine.stats());
        if let Some(w) = self.engine.watermark() {
            m.watermark.set(w as f64 / 1000.0);
        }
        if let Some(ts) = self.engine.max_event_ts() {
            m.event_time_lag.set((wall_clock_ms() - ts) as f64 / 1000.0);
        }
        let size = self.engine.state_size();
        m.state_size_bytes.set(size.bytes as i64);
        m.state_keys.set(size.keys as i64);
        m.ready.set(i64::from(self.health.is_ready()));
    }
}

fn dead_letter(m: &InputMessage, reason: Reason, error: &str) -> String {
    let payload = truncated(&m.payload, DEAD_LETTER_PAYLOAD_MAX);
    DeadLetter {
        error,
        reason,
        topic: &m.topic,
        partition: m.partition,
        offset: m.offset,
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

fn wall_clock_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
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
