//! Restore speed of a partition's state from its changelogs, on Apache
//! Kafka (issue 17): how fast an instance that takes over a partition it
//! lacks can start processing it.
//!
//! `cargo bench --bench changelog -- [EVENTS] [CUSTOMERS]` (defaults
//! 3,000,000 and 1,000,000): `pretext gen` events of that many customers
//! (2 days, 5,000 products) are replayed into one state, whose every entry
//! is then shipped to the changelogs of partition 0 of both stages (as a
//! one-partition deployment's changelogs would hold it). Timed, on the same
//! records, in one run: reading the state from RocksDB (the local
//! baseline); producing the changelogs; a raw rdkafka consumer reading
//! them to their end without applying anything (the broker's and the
//! client's limit here: the baseline of the restore); `restore` into an
//! empty state, twice (the fastest counts). Only ratios are meaningful on a
//! shared, noisy machine.

#[path = "../tests/common/broker.rs"]
mod broker;
mod common;

use std::time::{Duration, Instant};

use broker::{unique, Broker};
use pretext::config::Config;
use pretext::engine::routing::Stage;
use pretext::engine::Engine;
use pretext::live::changelog::{restore, ChangelogWriter};
use pretext::live::internal_topics::ensure;
use pretext::live::topology::Topology;
use pretext::replay::{replay, ReplayOptions};
use pretext::state::changelog::snapshot;
use pretext::state::{Cf, Change, Store};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(600);

fn main() {
    let mut argv = common::numbers().into_iter();
    let events = argv.next().unwrap_or(3_000_000);
    let customers = argv.next().unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = common::generate(dir.path(), events, customers, 2);

    let broker = Broker::start_own();
    let mut config = Config::default();
    config.kafka.brokers = broker.addr.clone();
    config.kafka.group_id = unique("bench-changelog");
    // Two partitions, so that the internal topics exist; partition 0 holds
    // the whole state, as one instance's would.
    config.scale.partitions = 2;
    ensure(&config, TIMEOUT).expect("internal topics");

    let state = dir.path().join("state");
    let started = Instant::now();
    let opts = ReplayOptions {
        inputs: vec![input],
        output: Some("/dev/null".into()),
        state_dir: Some(state.clone()),
        quiet: true,
        ..ReplayOptions::default()
    };
    let summary = replay(&config, &opts).expect("replay");
    println!(
        "replayed {} events of {customers} customers in {:.1} s",
        summary.engine.applied(),
        started.elapsed().as_secs_f64()
    );

    let engine = Engine::open(&state, &config).expect("open the state");
    let customers_held = engine.store().committed_keys(Cf::Customers).unwrap().len();
    let writer = ChangelogWriter::new(&config).expect("producer");
    let mut total = Volume::default();
    for stage in Stage::ALL {
        let t = Instant::now();
        let changes = snapshot(engine.store(), stage.stores()).expect("read the state");
        let local = t.elapsed();
        let volume = Volume::of(&changes);
        let t = Instant::now();
        writer.send(stage, 0, &changes, TIMEOUT).expect("produce");
        let produced = t.elapsed();
        drop(changes);
        println!(
            "{} stage: {} records, {:.1} MB; read from RocksDB {}; produced {}",
            stage.name(),
            volume.records,
            volume.mb(),
            volume.rate(local),
            volume.rate(produced)
        );
        total.add(volume);
    }
    drop(engine);
    println!(
        "state: {customers_held} customers, {} records, {:.1} MB",
        total.records,
        total.mb()
    );

    for round in 1..=2 {
        let t = Instant::now();
        let consumed = raw_consume(&config);
        let raw = t.elapsed();
        assert_eq!(consumed.records, total.records, "raw consumer read all");
        let mut restored_s = Duration::ZERO;
        for stage in Stage::ALL {
            let target = dir.path().join(format!("restore-{round}-{}", stage.name()));
            let mut store = Store::open(&target).expect("open");
            let r = restore(&config, stage, 0, &mut store, &target, TIMEOUT).expect("restore");
            restored_s += r.elapsed;
        }
        println!(
            "round {round}: raw consumer {}; restore {}; restore / raw = {:.2}",
            total.rate(raw),
            total.rate(restored_s),
            raw.as_secs_f64() / restored_s.as_secs_f64()
        );
    }
}

/// Records and their bytes (keys and values).
#[derive(Default, Clone, Copy)]
struct Volume {
    records: u64,
    bytes: u64,
}

impl Volume {
    fn of(changes: &[Change]) -> Volume {
        Volume {
            records: changes.len() as u64,
            bytes: changes
                .iter()
                .map(|c| (c.key.len() + c.value.as_ref().map_or(0, Vec::len)) as u64)
                .sum(),
        }
    }

    fn add(&mut self, other: Volume) {
        self.records += other.records;
        self.bytes += other.bytes;
    }

    fn mb(&self) -> f64 {
        self.bytes as f64 / 1e6
    }

    fn rate(&self, took: Duration) -> String {
        let s = took.as_secs_f64();
        format!(
            "in {s:.2} s ({:.0} records/s, {:.1} MB/s)",
            self.records as f64 / s,
            self.mb() / s
        )
    }
}

/// Reads partition 0 of every changelog to its end, applying nothing.
fn raw_consume(config: &Config) -> Volume {
    let topology = Topology::from_config(config);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", unique("bench-raw"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut left = 0;
    for stage in Stage::ALL {
        for &cf in stage.stores() {
            let topic = topology.changelog_topic(stage, cf);
            let (_, high) = consumer.fetch_watermarks(&topic, 0, TIMEOUT).unwrap();
            left += high;
            tpl.add_partition_offset(&topic, 0, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut volume = Volume::default();
    while (volume.records as i64) < left {
        if let Some(m) = consumer.poll(Duration::from_secs(10)) {
            let m = m.expect("read");
            volume.records += 1;
            volume.bytes +=
                (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
        }
    }
    volume
}
