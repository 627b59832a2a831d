//! Live mode: the input topics through the engine, triggers and dead letters
//! out, in batches whose state changes and next input offsets are committed
//! together in one RocksDB write batch.
//!
//! Delivery: state is applied exactly once (on assignment the consumer
//! starts at the offsets stored with the state); triggers are at least once
//! (a batch killed after producing but before committing is produced again,
//! with the same deterministic `trigger_id`s).
//!
//! The pipeline (`pipeline`) runs on a thread of its own (RocksDB and
//! librdkafka calls are synchronous); the async runtime serves HTTP and
//! waits for signals. Rebalance callbacks run inside the pipeline's `poll`:
//! a revoke ends the batch being collected, which is committed before the
//! partitions are handed over (see `source`). `offsets` owns the next
//! offset to read, `idle` the idle advance, `events` the operational
//! events (each logs and counts), `topics` the output topics' check.
//!
//! Scale-out (docs/scale-out.md): `topology` holds the stages, the
//! internal topics and the router, `internal_topics` creates and checks
//! those topics, `changelog` ships and restores a stage partition's state,
//! `standby` keeps warm copies. With `scale.partitions > 1`, `run` checks
//! the internal topics and runs one instance of the scaled-out topology
//! (`scaled`) instead of the pipeline.

pub mod changelog;
pub mod events;
pub mod idle;
pub mod internal_topics;
pub mod offsets;
pub mod pipeline;
mod priority;
mod scaled;
mod sink;
mod source;
pub mod standby;
mod topics;
pub mod topology;
pub mod txn;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::http::{self, Health};
use crate::metrics::{Metrics, MetricsError};

use internal_topics::InternalTopicError;

use offsets::Offsets;
use pipeline::{Pipeline, Stop, SystemClock};
use sink::Sink;
pub use source::InputMessage;
use source::Source;

/// A producer's (or an admin client's) librdkafka configuration:
/// `defaults`, then the pass-through settings (`kafka.client`, then
/// `kafka.producer`), which override them, then the brokers. What the
/// caller sets after this overrides everything.
fn producer_config(config: &Config, defaults: &[(&str, &str)]) -> rdkafka::ClientConfig {
    client_config(
        defaults,
        config.kafka.producer_settings(),
        &config.kafka.brokers,
    )
}

/// As `producer_config`, for a consumer (`kafka.client`, then
/// `kafka.consumer`).
fn consumer_config(config: &Config, defaults: &[(&str, &str)]) -> rdkafka::ClientConfig {
    client_config(
        defaults,
        config.kafka.consumer_settings(),
        &config.kafka.brokers,
    )
}

fn client_config<'a>(
    defaults: &[(&str, &str)],
    settings: impl Iterator<Item = (&'a str, &'a str)>,
    brokers: &str,
) -> rdkafka::ClientConfig {
    let mut cc = rdkafka::ClientConfig::new();
    for (k, v) in defaults {
        cc.set(*k, *v);
    }
    for (k, v) in settings {
        cc.set(k, v);
    }
    cc.set("bootstrap.servers", brokers);
    cc
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("applying {topic}[{partition}] offset {offset}: {source}")]
    Apply {
        topic: String,
        partition: i32,
        offset: i64,
        source: EngineError,
    },
    #[error("kafka: cannot {what}: {source}")]
    Kafka {
        what: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka: {error}: {fix}")]
    Fatal { error: String, fix: String },
    #[error(
        "output topic {topic:?} ({key}) does not exist: create it, name another in {key}, \
         or set topics.create = true"
    )]
    MissingTopic { topic: String, key: &'static str },
    #[error("cannot create output topic {topic:?}: {error}")]
    CreateTopic { topic: String, error: String },
    #[error("cannot produce to {topic}: {source}")]
    Produce {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("{failed} produced messages were not delivered; the batch will be read again")]
    Delivery { failed: u64 },
    #[error("gave up the batch at the shutdown deadline; it will be read again")]
    Abandoned,
    #[error(
        "fenced: another process took over transactional.id {transactional_id:?} \
         (kafka.group_id and kafka.instance_id); this one stops, and nothing it has not \
         committed becomes visible ({source})"
    )]
    Fenced {
        transactional_id: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "transaction aborted: cannot {what}: {source}; nothing of the batch is visible to \
         read_committed consumers, and it will be read again on restart"
    )]
    TxnAborted {
        what: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "cannot re-apply {topic}[{partition}] below the group's committed offset \
         {committed}: the first offset left is {offset} (deleted by retention?); \
         the state cannot be made to match the output: start from an empty state.dir \
         with kafka.start_from = \"latest\", or restore the state from a backup"
    )]
    GapLost {
        topic: String,
        partition: i32,
        committed: i64,
        offset: i64,
    },
    #[error(transparent)]
    InternalTopics(#[from] InternalTopicError),
    #[error(transparent)]
    Changelog(Box<changelog::ChangelogError>),
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

impl LiveError {
    /// The process exit status: 2 for what the configuration must fix
    /// (the contract's "bad configuration"), 1 for any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            LiveError::MissingTopic { .. } => 2,
            LiveError::InternalTopics(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// Tells the pipeline thread to give up when dropped: every way out of
/// `run` (an error, the shutdown deadline) stops it.
struct AbandonOnDrop(Arc<Stop>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// Stops the HTTP server when dropped.
struct HttpServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl HttpServer {
    async fn start(addr: &str, health: Health) -> Result<HttpServer, LiveError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| LiveError::Http {
                addr: addr.to_string(),
                source,
            })?;
        info!(addr = %addr, "serving http");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(http::serve(listener, health, async {
            let _ = stopped.await;
        }));
        Ok(HttpServer {
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops serving and waits for the server to end.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Ok(Err(e)) = task.await {
                warn!(error = %e, "http server failed");
            }
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Runs live mode until `shutdown` resolves (then finishes the batch,
/// flushes, commits and returns) or a fatal error.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), LiveError> {
    let health = Health {
        metrics: Arc::new(Metrics::new()?),
        state_open: Arc::new(AtomicBool::new(false)),
        assigned: Arc::new(AtomicBool::new(false)),
        queries: http::query::QueryState::from_config(&config),
    };
    let server = HttpServer::start(&config.http.listen, health.clone()).await?;
    let stop = Arc::new(Stop::default());
    let _abandon = AbandonOnDrop(stop.clone());
    let deadline = config.kafka.shutdown_timeout.std();
    let worker = spawn_pipeline(config, health, stop.clone())?;
    tokio::pin!(worker);
    tokio::pin!(shutdown);
    let joined = tokio::select! {
        joined = &mut worker => joined,
        () = &mut shutdown => {
            info!("shutdown requested: finishing the batch");
            stop.request();
            tokio::time::timeout(deadline, &mut worker)
                .await
                .map_err(|_| LiveError::ShutdownTimeout(deadline))?
        }
    };
    server.stop().await;
    // A dropped sender means the pipeline thread panicked.
    let result = joined.map_err(|_| LiveError::Worker("it panicked".into()))?;
    if result.is_ok() {
        info!("stopped cleanly");
    }
    result
}

/// The pipeline on a thread of its own rather than `spawn_blocking`:
/// dropping the runtime waits for blocking tasks, so a pipeline stuck past
/// the shutdown deadline (a broker gone mid-flush) would keep the process
/// alive.
fn spawn_pipeline(
    config: Config,
    health: Health,
    stop: Arc<Stop>,
) -> Result<tokio::sync::oneshot::Receiver<Result<(), LiveError>>, LiveError> {
    let (done, worker) = tokio::sync::oneshot::channel();
    // The caller's span goes along, so the pipeline's logs carry its fields.
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("pretext-pipeline".into())
        .spawn(move || {
            let _entered = span.enter();
            let _ = done.send(run_pipeline(config, health, &stop));
        })
        .map_err(|e| LiveError::Worker(e.to_string()))?;
    Ok(worker)
}

/// How long the internal topics may take to be listed, created and
/// checked at start.
const INTERNAL_TOPICS_TIMEOUT: Duration = Duration::from_secs(60);

fn run_pipeline(config: Config, health: Health, stop: &Arc<Stop>) -> Result<(), LiveError> {
    if config.scale.is_partitioned() {
        // Before the state opens: a refused start leaves no state behind.
        let ensured = internal_topics::ensure(&config, INTERNAL_TOPICS_TIMEOUT)?;
        info!(
            created = ensured.created.len(),
            existing = ensured.existing.len(),
            "internal topics ready"
        );
        if !topics::ensure_output_topics(&config, stop)? {
            return Ok(());
        }
        return scaled::run(config, health, stop);
    }
    let engine = Engine::open(&config.state.dir, &config)?;
    health.queries.open(engine.store().reader());
    let offsets = Offsets::from_stored(engine.stored_offsets()?);
    info!(partitions = offsets.len(), "state open");
    if !topics::ensure_output_topics(&config, stop)? {
        return Ok(());
    }
    let metrics = health.metrics.clone();
    let source = Source::new(
        &config,
        offsets.view(),
        health.assigned.clone(),
        metrics.clone(),
    )?;
    let sink = Sink::new(&config, metrics, stop.clone())?;
    let mut pipeline = Pipeline::new(
        config,
        engine,
        offsets,
        source,
        sink,
        SystemClock::new(),
        health,
    );
    pipeline.run(stop)
}
