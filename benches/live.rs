//! Live-mode throughput: `pretext run` against a tansu broker with memory
//! storage, reading a topic from offset 0, against a raw rdkafka consumer
//! reading the same topic in the same run (only the ratio is meaningful on
//! a shared, noisy machine).
//!
//! `cargo bench --bench live -- [EVENTS] [CUSTOMERS]` (defaults 500,000 and
//! 100,000). Needs tansu 0.6.0 (scripts/install-tansu.sh). tansu's memory
//! storage mishandles fetches that start inside a record batch and reports
//! wrong end offsets (DESIGN.md), so both readers start at offset 0 and stop
//! on message counts.

#[path = "../tests/common/broker.rs"]
mod broker;
mod common;

use std::time::{Duration, Instant};

use broker::{metric_sum, unique, write_config, Broker, Pretext, Topics};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

fn main() {
    let mut argv = common::numbers().into_iter();
    let events = argv.next().unwrap_or(500_000);
    let customers = argv.next().unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = common::generate(dir.path(), events, customers, 2);
    let text = std::fs::read_to_string(input).expect("read events");
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();

    let broker = Broker::start_own();
    let topics = Topics::create(&broker);
    let start = Instant::now();
    let keyed: Vec<(Option<&str>, &[u8])> = lines.iter().map(|l| (None, l.as_bytes())).collect();
    broker.produce(&topics.input, &keyed);
    let produce_s = start.elapsed().as_secs_f64();
    println!(
        "produced {n} events in {produce_s:.1} s ({:.0}/s)",
        n as f64 / produce_s
    );

    let raw_s = raw_consumer(&broker.addr, &topics.input, n);
    let pretext_s = pretext_run(dir.path(), &broker, &topics, n);
    let raw_again_s = raw_consumer(&broker.addr, &topics.input, n);
    let raw = n as f64 / ((raw_s + raw_again_s) / 2.0);
    let live = n as f64 / pretext_s;
    println!("raw rdkafka consumer: {raw:>10.0} events/s (runs of {raw_s:.2} s and {raw_again_s:.2} s, before and after)");
    println!("pretext run:          {live:>10.0} events/s ({pretext_s:.2} s from start to the last event applied)");
    println!("ratio pretext/raw:    {:.3}", live / raw);
}

/// Seconds for a plain consumer to read `n` messages from offset 0,
/// touching every payload.
fn raw_consumer(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let start = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("raw"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let (mut got, mut bytes) = (0usize, 0usize);
    while got < n {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "raw consumer stalled at {got}"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            bytes += m.payload().map_or(0, <[u8]>::len);
            got += 1;
        }
    }
    std::hint::black_box(bytes);
    start.elapsed().as_secs_f64()
}

/// Seconds from `pretext run` (fresh state, so it reads from offset 0)
/// being assigned its partition (/readyz answers 200: the group join, a few
/// seconds that the raw consumer's plain assign does not pay, is left out)
/// until its metrics count `n` input messages handled.
fn pretext_run(dir: &std::path::Path, broker: &Broker, topics: &Topics, n: usize) -> f64 {
    let (config, state) = write_config(dir, &broker.addr, topics, &unique("group"));
    // The test harness's config uses small batches; the bench runs
    // pretext's default batch bounds.
    let batch = pretext::config::Config::default()
        .kafka
        .batch_max_messages
        .to_string();
    let env = [
        ("PRETEXT__KAFKA__BATCH_MAX_MESSAGES", batch.as_str()),
        ("PRETEXT__LOG__LEVEL", "warn"),
    ];
    let pretext = Pretext::start_with_env(&config, &state, &dir.join("pretext.log"), &env);
    let launched = Instant::now();
    while broker::http_get(&pretext.http, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            launched.elapsed() < Duration::from_secs(120),
            "pretext never ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let start = Instant::now();
    loop {
        let handled = pretext.metrics().map_or(0.0, |m| {
            [
                "pretext_events_total",
                "pretext_events_rejected_total",
                "pretext_events_duplicate_total",
                "pretext_events_ignored_erased_total",
            ]
            .iter()
            .map(|name| metric_sum(&m, name))
            .sum()
        });
        if handled >= n as f64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "pretext stalled at {handled} of {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Time inside batches (apply, produce, commit) against the whole run:
    // the rest is waiting for input.
    if let Some(m) = pretext.metrics() {
        let busy = metric_sum(&m, "pretext_batch_duration_seconds_sum");
        let batches = metric_sum(&m, "pretext_batch_duration_seconds_count");
        println!("pretext in batches:   {busy:.2} s of {elapsed:.2} s ({batches} batches)");
    }
    assert!(pretext.terminate().success(), "pretext exits 0 on SIGTERM");
    elapsed
}
