//! Changelogs on Kafka (docs/scale-out.md, "State per partition"): a stage
//! partition's committed writes produced to its stores' compacted topics,
//! and a partition's state restored from them. `state::changelog` holds
//! what a change is and the checkpoint; this is the broker's side.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::SyncSender;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::config::Config;
use crate::engine::partitioned::{partition_dir, Partitioned};
use crate::engine::routing::Stage;
use crate::engine::EngineError;
use crate::state::changelog::{Checkpoint, CheckpointError};
use crate::state::{Cf, Change, StateError, Store};

use super::topology::Topology;
use super::{consumer_config, producer_config};

/// Restored bytes written to RocksDB at a time, so that a large restore
/// holds a bounded batch in memory.
const RESTORE_CHUNK_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("kafka: cannot {what}: {source}")]
    Kafka {
        what: &'static str,
        source: KafkaError,
    },
    #[error("changelog {topic}[{partition}]: {error}")]
    Delivery {
        topic: String,
        partition: i32,
        error: KafkaError,
    },
    #[error(
        "changelogs of {stage} partition {partition}: not read to their end within {timeout:?}"
    )]
    TimedOut {
        stage: &'static str,
        partition: i32,
        timeout: Duration,
    },
    /// The state holds more than the changelog does: the changelog was
    /// deleted and created again (or truncated), so the state is not the
    /// changelog's any more. Remove the partition's state directory and
    /// restore it from nothing.
    #[error(
        "changelog {topic}[{partition}] ends at offset {end}, but the state's checkpoint \
         says it holds up to {held}: the changelog was re-created or truncated; remove the \
         partition's state directory to restore it from the changelog"
    )]
    AheadOfChangelog {
        topic: String,
        partition: i32,
        held: i64,
        end: i64,
    },
    #[error("changelog {topic}[{partition}] has a record of another store's kind: {detail}")]
    Foreign {
        topic: String,
        partition: i32,
        detail: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> ChangelogError {
    move |source| ChangelogError::Kafka { what, source }
}

/// What the deliveries of a batch of changes said: the first failure,
/// and the next offset after the last record acknowledged per changelog.
#[derive(Default)]
struct Acks {
    first_failure: Mutex<Option<ChangelogError>>,
    next: Mutex<BTreeMap<String, i64>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
                let at = next.entry(m.topic().to_string()).or_insert(0);
                *at = (*at).max(m.offset() + 1);
            }
            Err((error, m)) => {
                let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| ChangelogError::Delivery {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    error: error.clone(),
                });
            }
        }
    }
}

/// Produces a stage partition's changes to its changelogs: idempotent, each
/// batch acknowledged by all in-sync replicas before `send` returns, so the
/// state may commit it.
pub struct ChangelogWriter {
    producer: BaseProducer<Acks>,
    /// Each store's changelog name, made once.
    topics: BTreeMap<(Stage, Cf), String>,
}

impl ChangelogWriter {
    pub fn new(config: &Config) -> Result<ChangelogWriter, ChangelogError> {
        let mut cc = producer_config(config, &[]);
        cc.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5");
        let producer = cc
            .create_with_context(Acks::default())
            .map_err(kafka("create the changelog producer"))?;
        let topology = Topology::from_config(config);
        let topics = Stage::ALL
            .into_iter()
            .flat_map(|stage| stage.stores().iter().map(move |&cf| (stage, cf)))
            .map(|(stage, cf)| ((stage, cf), topology.changelog_topic(stage, cf)))
            .collect();
        Ok(ChangelogWriter { producer, topics })
    }

    /// Sends `changes` of `stage`'s partition `partition` and waits until
    /// every one is acknowledged (or `timeout`); returns, for each
    /// changelog written, the offset after its last record.
    pub fn send(
        &self,
        stage: Stage,
        partition: i32,
        changes: &[Change],
        timeout: Duration,
    ) -> Result<BTreeMap<String, i64>, ChangelogError> {
        for change in changes {
            let topic = &self.topics[&(stage, change.cf)];
            let mut record = BaseRecord::to(topic)
                .partition(partition)
                .key(change.key.as_slice());
            if let Some(value) = &change.value {
                record = record.payload(value.as_slice());
            }
            self.enqueue(record)?;
        }
        self.producer
            .flush(timeout)
            .map_err(kafka("flush the changelog producer"))?;
        let acks = self.producer.context();
        let failed = acks.first_failure.lock().map(|mut f| f.take());
        if let Some(error) = failed.unwrap_or_else(|p| p.into_inner().take()) {
            return Err(error);
        }
        let next = acks.next.lock().map(|mut n| std::mem::take(&mut *n));
        Ok(next.unwrap_or_else(|p| std::mem::take(&mut *p.into_inner())))
    }

    fn enqueue(&self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), ChangelogError> {
        enqueue(&self.producer, record).map_err(kafka("enqueue a changelog record"))
    }
}

/// Enqueues a record, serving delivery reports while the producer's queue
/// is full.
pub(super) fn enqueue<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// What a restore applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    pub records: u64,
    /// Keys and values.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Brings the state of `stage`'s partition `partition` (the store opened
/// at `dir`) up to the end of its changelogs as they are now: from the
/// checkpoint's positions (from the start without one), record by record,
/// then writes the new checkpoint. A state that holds everything applies
/// nothing.
pub fn restore(
    config: &Config,
    stage: Stage,
    partition: i32,
    store: &mut Store,
    dir: &Path,
    timeout: Duration,
) -> Result<Restored, ChangelogError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let topology = Topology::from_config(config);
    let consumer = restore_consumer(config)?;
    let mut checkpoint = Checkpoint::read(dir)?;
    // Each changelog to read: its store and the offset it ends at now. A
    // checkpoint past a changelog's end is refused, not trusted.
    let mut reading: BTreeMap<String, (Cf, i64)> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &cf in stage.stores() {
        let topic = topology.changelog_topic(stage, cf);
        let (low, high) = watermarks(&consumer, &topic, partition, deadline)?;
        let held = checkpoint.next_of(&topic);
        if held > high {
            return Err(ChangelogError::AheadOfChangelog {
                topic,
                partition,
                held,
                end: high,
            });
        }
        let from = held.max(low);
        if from < high {
            assignment
                .add_partition_offset(&topic, partition, Offset::Offset(from))
                .map_err(kafka("assign a changelog"))?;
            reading.insert(topic, (cf, high));
        } else {
            checkpoint.next.insert(topic, from.max(high));
        }
    }
    let mut restored = Restored::default();
    if !reading.is_empty() {
        consumer
            .assign(&assignment)
            .map_err(kafka("assign the changelogs"))?;
        read_to_end(
            &consumer,
            partition,
            store,
            &mut reading,
            &mut checkpoint,
            &mut restored,
            deadline,
        )
        .map_err(|e| match e {
            ReadError::TimedOut => ChangelogError::TimedOut {
                stage: stage.name(),
                partition,
                timeout,
            },
            ReadError::Other(e) => e,
        })?;
    }
    // Loaded without the WAL: on disk before the checkpoint says so.
    store.flush()?;
    checkpoint.write(dir)?;
    restored.elapsed = started.elapsed();
    Ok(restored)
}

/// A changelog partition's low and high (last stable) offsets, asked
/// again while the broker says it cannot tell yet (a topic just created
/// has no leader for a moment) until `deadline`.
fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    deadline: Instant,
) -> Result<(i64, i64), ChangelogError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match consumer.fetch_watermarks(topic, partition, left.max(Duration::from_millis(100))) {
            Ok(offsets) => return Ok(offsets),
            Err(e) if is_transient(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(kafka("read a changelog's offsets")(e)),
        }
    }
}

/// An error the broker stops giving once leadership settles.
fn is_transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::{LeaderNotAvailable, NotLeaderForPartition, UnknownTopicOrPartition};
    matches!(
        e.rdkafka_error_code(),
        Some(LeaderNotAvailable | NotLeaderForPartition | UnknownTopicOrPartition)
    )
}

enum ReadError {
    TimedOut,
    Other(ChangelogError),
}

impl From<ChangelogError> for ReadError {
    fn from(e: ChangelogError) -> ReadError {
        ReadError::Other(e)
    }
}

/// Applies records until every changelog in `reading` is read up to the
/// offset it ended at: this thread consumes, a second one loads the
/// chunks into RocksDB meanwhile.
fn read_to_end(
    consumer: &BaseConsumer,
    partition: i32,
    store: &mut Store,
    reading: &mut BTreeMap<String, (Cf, i64)>,
    checkpoint: &mut Checkpoint,
    restored: &mut Restored,
    deadline: Instant,
) -> Result<(), ReadError> {
    std::thread::scope(|scope| {
        // One chunk loading, one filling: a bounded restore.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Change>>(1);
        let loader = std::thread::Builder::new()
            .name("pretext-restore".into())
            .spawn_scoped(scope, move || -> Result<(), StateError> {
                for chunk in rx {
                    store.load_changes(chunk)?;
                }
                Ok(())
            })
            .map_err(|e| ChangelogError::State(StateError::Spawn(e)))?;
        let read = consume(
            consumer, partition, reading, checkpoint, restored, deadline, &tx,
        );
        drop(tx);
        let loaded = loader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        // A loader that failed hung up: its error is the cause.
        loaded.map_err(ChangelogError::State)?;
        read
    })
}

/// Consumes records into chunks for the loader until every changelog in
/// `reading` is read to its end. A compacted changelog has gaps, so the
/// end is told by the consumer's position, not by the last offset seen.
fn consume(
    consumer: &BaseConsumer,
    partition: i32,
    reading: &mut BTreeMap<String, (Cf, i64)>,
    checkpoint: &mut Checkpoint,
    restored: &mut Restored,
    deadline: Instant,
    loader: &SyncSender<Vec<Change>>,
) -> Result<(), ReadError> {
    let mut chunk = Chunk::default();
    while !reading.is_empty() {
        if Instant::now() >= deadline {
            return Err(ReadError::TimedOut);
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            finish_read(consumer, partition, reading, checkpoint)?;
            continue;
        };
        let m = m.map_err(kafka("read a changelog"))?;
        let Some(&(cf, end)) = reading.get(m.topic()) else {
            continue;
        };
        let key = m.key().ok_or_else(|| ChangelogError::Foreign {
            topic: m.topic().to_string(),
            partition,
            detail: format!("offset {} has no key", m.offset()),
        })?;
        chunk.push(cf, key, m.payload(), restored);
        let next = m.offset() + 1;
        if chunk.bytes > RESTORE_CHUNK_BYTES && !chunk.send(loader) {
            return Ok(()); // the loader failed: its error is reported
        }
        // Asking the position is a lock per call: only at a changelog's
        // end or now and then (a compacted end has no record; the idle
        // poll above finds it).
        if next >= end || restored.records % 8192 == 0 {
            finish_read(consumer, partition, reading, checkpoint)?;
        }
    }
    chunk.send(loader);
    Ok(())
}

/// Restored changes not yet handed to the loader.
#[derive(Default)]
struct Chunk {
    changes: Vec<Change>,
    bytes: usize,
}

impl Chunk {
    fn push(&mut self, cf: Cf, key: &[u8], value: Option<&[u8]>, restored: &mut Restored) {
        let size = key.len() + value.map_or(0, <[u8]>::len);
        restored.records += 1;
        restored.bytes += size as u64;
        self.bytes += size;
        self.changes.push(Change {
            cf,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        });
    }

    /// Hands the chunk to the loader; false when the loader is gone.
    fn send(&mut self, loader: &SyncSender<Vec<Change>>) -> bool {
        self.bytes = 0;
        loader.send(std::mem::take(&mut self.changes)).is_ok()
    }
}

/// Drops from `reading` the changelogs whose position has reached their
/// end, which the checkpoint then holds.
fn finish_read(
    consumer: &BaseConsumer,
    partition: i32,
    reading: &mut BTreeMap<String, (Cf, i64)>,
    checkpoint: &mut Checkpoint,
) -> Result<(), ChangelogError> {
    let positions = consumer
        .position()
        .map_err(kafka("read the restore consumer's position"))?;
    reading.retain(|topic, &mut (_, end)| {
        let at = positions
            .find_partition(topic, partition)
            .and_then(|p| p.offset().to_raw())
            .unwrap_or(-1);
        if at >= end {
            checkpoint.next.insert(topic.clone(), end);
        }
        at < end
    });
    Ok(())
}

/// A consumer that reads assigned changelogs and commits nothing.
fn restore_consumer(config: &Config) -> Result<BaseConsumer, ChangelogError> {
    let mut cc = consumer_config(config, &[]);
    // Never joined nor committed: assignment is by hand.
    cc.set("group.id", format!("{}.restore", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed");
    cc.create().map_err(kafka("create the restore consumer"))
}

/// Commits every partition of `partitioned`, each batch's changes shipped
/// to its changelogs (and acknowledged) before its state writes them, then
/// its checkpoint. Returns the number of changes shipped.
pub fn commit_shipped(
    writer: &ChangelogWriter,
    partitioned: &mut Partitioned,
    timeout: Duration,
) -> Result<u64, ChangelogError> {
    let mut shipped_changes = 0;
    for (stage, p, engine) in partitioned.each_partition() {
        let changes = engine.prepare_commit(&[]);
        shipped_changes += changes.len() as u64;
        let shipped = writer.send(stage, p as i32, &changes, timeout)?;
        engine.commit_prepared()?;
        // The state now holds the changelogs up to what was shipped.
        let dir = engine.store().path();
        let mut checkpoint = Checkpoint::read(dir)?;
        checkpoint.next.extend(shipped);
        checkpoint.write(dir)?;
    }
    Ok(shipped_changes)
}

/// Restores every stage partition's state under `dir` (laid out as
/// `Partitioned` lays it out) from its changelogs: what an instance does
/// for the partitions it is assigned, before processing them.
pub fn restore_partitions(
    config: &Config,
    dir: &Path,
    partitions: u32,
    timeout: Duration,
) -> Result<Restored, ChangelogError> {
    let mut total = Restored::default();
    for stage in Stage::ALL {
        for p in 0..partitions {
            let pdir = partition_dir(dir, stage, p);
            let mut store = Store::open(&pdir)?;
            let r = restore(config, stage, p as i32, &mut store, &pdir, timeout)?;
            total.records += r.records;
            total.bytes += r.bytes;
            total.elapsed += r.elapsed;
        }
    }
    Ok(total)
}
