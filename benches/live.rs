//! Live-mode throughput on Apache Kafka, in one run on the same events:
//! a raw rdkafka consumer of the topic (the broker's and the client's
//! limit here), `pretext replay` of the same events from a file (the
//! engine's limit), and `pretext run` reading the topic from offset 0 with
//! a fresh state (the engine plus the live edge: consume, produce, commit).
//! Only ratios are meaningful on a shared, noisy machine: each round runs
//! every reader once; the fastest run of each counts, and run/replay is
//! also given round by round (the two run back to back, so a drift of the
//! machine's speed moves both) with the median of those ratios, which one
//! disturbed run does not move. Two rounds, or `PRETEXT_BENCH_ROUNDS`.
//!
//! `cargo bench --bench live -- [EVENTS] [CUSTOMERS] [BATCH...]` (defaults
//! 500,000, 100,000 and the configured default batch): two `pretext run`s
//! per BATCH (`kafka.batch_max_messages`), `kafka.exactly_once` off and on,
//! each with its own group and state.
//! The broker is a Kafka of the bench's own (scripts/kafka.sh), warmed by
//! one uncounted round; every reader starts at offset 0 and stops on
//! message counts.

#[path = "../tests/common/broker.rs"]
mod broker;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use broker::{metric_sum, unique, write_config, Broker, Pretext, Topics};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

fn main() {
    let rounds = rounds();
    let mut argv = common::numbers().into_iter();
    let events = argv.next().unwrap_or(500_000);
    let customers = argv.next().unwrap_or(100_000);
    let default_batch = pretext::config::Config::default().kafka.batch_max_messages as u64;
    let mut batches: Vec<u64> = argv.collect();
    if batches.is_empty() {
        batches.push(default_batch);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let input = common::generate(dir.path(), events, customers, 2);
    let text = std::fs::read_to_string(&input).expect("read events");
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();

    let started = Instant::now();
    let broker = Broker::start_own();
    println!(
        "Apache Kafka started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let topics = Topics::create(&broker);
    let start = Instant::now();
    let keyed: Vec<(Option<&str>, &[u8])> = lines.iter().map(|l| (None, l.as_bytes())).collect();
    broker.produce(&topics.input, &keyed);
    let produce_s = start.elapsed().as_secs_f64();
    println!(
        "produced {n} events in {produce_s:.1} s ({:.0}/s); broker RSS {} MiB",
        n as f64 / produce_s,
        broker.pid().map_or(0, rss_mib)
    );

    // A round whose times are not counted: the broker's JVM compiles its
    // fetch and produce paths during its first minute (its C1/C2 compiler
    // threads took 7-18% of a core through the first measured round, on
    // the two cores pretext shares with it), which a long-running
    // production broker did long ago.
    println!("warm-up round (not counted):");
    raw_consumer(&broker.addr, &topics.input, n);
    for eos in [false, true] {
        pretext_run(dir.path(), &broker, &topics, n, default_batch, eos);
    }
    // Each reader once per round; the fastest of its runs is the least
    // disturbed by the machine's other jobs.
    println!("measured rounds:");
    let (mut raw_s, mut replay_s) = (Vec::new(), Vec::new());
    let mut run_s: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; batches.len()];
    for _ in 0..rounds {
        raw_s.push(raw_consumer(&broker.addr, &topics.input, n));
        replay_s.push(replay(&input, dir.path()));
        for (i, &b) in batches.iter().enumerate() {
            for eos in [false, true] {
                run_s[i][usize::from(eos)].push(pretext_run(
                    dir.path(),
                    &broker,
                    &topics,
                    n,
                    b,
                    eos,
                ));
            }
        }
    }
    println!(
        "broker RSS after the runs: {} MiB",
        broker.pid().map_or(0, rss_mib)
    );

    let best = |runs: &[f64]| runs.iter().copied().fold(f64::INFINITY, f64::min);
    let shown = |runs: &[f64]| {
        let v: Vec<String> = runs.iter().map(|s| format!("{s:.2}")).collect();
        v.join(", ")
    };
    let raw = n as f64 / best(&raw_s);
    let engine = n as f64 / best(&replay_s);
    println!(
        "raw rdkafka consumer: {raw:>10.0} events/s (best of {} s)",
        shown(&raw_s)
    );
    println!(
        "pretext replay:       {engine:>10.0} events/s (best of {} s)",
        shown(&replay_s)
    );
    for (batch, [off, on]) in batches.iter().zip(&run_s) {
        let live = n as f64 / best(off);
        println!(
            "pretext run, batch {batch:>6}: {live:>10.0} events/s (best of {} s); run/replay {:.3}, run/raw {:.3}",
            shown(off),
            live / engine,
            live / raw
        );
        let by_round: Vec<f64> = off.iter().zip(&replay_s).map(|(r, p)| p / r).collect();
        let v: Vec<String> = by_round.iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "  run/replay by round: {}; median {:.3}",
            v.join(", "),
            median(by_round)
        );
        let eos = n as f64 / best(on);
        println!(
            "  exactly-once:       {eos:>10.0} events/s (best of {} s); on/off {:.3}",
            shown(on),
            eos / live
        );
    }
}

/// Measured rounds: `PRETEXT_BENCH_ROUNDS`, 2 when unset.
fn rounds() -> usize {
    match broker::env_number("PRETEXT_BENCH_ROUNDS") {
        None => 2,
        Some(0) => panic!("PRETEXT_BENCH_ROUNDS: a count of rounds, 1 or more"),
        Some(r) => r as usize,
    }
}

/// How long to wait before asking `pretext run` for its counts again:
/// half the time the rest should take at the rate so far, between 10 ms
/// and 250 ms. Each look renders all of pretext's metrics (~0.25 ms of its
/// CPU, and the bench's own parse, on the two cores pretext shares): a look
/// every 10 ms took 2-3% of a run's CPU, which a production scrape every
/// 15 s does not. The end is still seen at most 10 ms late (<0.5% of a
/// run), with ~10 looks a run instead of ~300.
fn next_look(handled: f64, n: f64, elapsed: Duration) -> Duration {
    let (least, most) = (Duration::from_millis(10), Duration::from_millis(250));
    if handled <= 0.0 {
        return Duration::from_millis(50);
    }
    let rest = elapsed.mul_f64((n - handled).max(0.0) / handled);
    (rest / 2).clamp(least, most)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 0 {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

/// The resident set of a process, MiB.
fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib / 1024)
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

/// Seconds for `pretext replay` of the events file into a fresh state on
/// disk (as live mode keeps one), triggers to /dev/null, from process start
/// to exit.
fn replay(input: &Path, dir: &Path) -> f64 {
    let state = dir.join(unique("replay-state"));
    let (secs, cpu) = common::timed_replay(input, &state, &[]);
    println!(
        "pretext replay: {secs:.2} s, CPU {cpu:.2} s ({:.2} cores)",
        cpu / secs
    );
    secs
}

/// Seconds from `pretext run` (fresh state, so it reads from offset 0)
/// being assigned its partition (/readyz answers 200: the group join, which
/// the raw consumer's plain assign does not pay, is left out) until its
/// metrics count `n` input messages handled.
fn pretext_run(
    dir: &Path,
    broker: &Broker,
    topics: &Topics,
    n: usize,
    batch: u64,
    eos: bool,
) -> f64 {
    let sub = dir.join(unique("run"));
    std::fs::create_dir_all(&sub).expect("run dir");
    let mine = Topics {
        input: topics.input.clone(),
        ..Topics::named()
    };
    broker.create_topics(
        &[
            &mine.triggers,
            &mine.dead_letter,
            &mine.holdout,
            &mine.conversions,
        ],
        1,
    );
    let (config, state) = write_config(&sub, &broker.addr, &mine, &unique("group"));
    let batch = batch.to_string();
    let env = [
        ("PRETEXT__KAFKA__BATCH_MAX_MESSAGES", batch.as_str()),
        ("PRETEXT__LOG__LEVEL", "warn"),
        (
            "PRETEXT__KAFKA__EXACTLY_ONCE",
            if eos { "true" } else { "false" },
        ),
    ];
    let pretext = Pretext::start_with_env(&config, &state, &sub.join("pretext.log"), &env);
    let launched = Instant::now();
    while broker::http_get(&pretext.http, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            launched.elapsed() < Duration::from_secs(120),
            "pretext never ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = pretext.child.id().to_string();
    let broker_pid = broker.pid().map(|p| p.to_string());
    let cpu_at = || {
        let broker = broker_pid.as_deref().map_or(0.0, |p| common::cpu_s(p).0);
        (common::cpu_s(&pid).0, broker)
    };
    let cpu_before = cpu_at();
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
        std::thread::sleep(next_look(handled, n as f64, start.elapsed()));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = cpu_at();
    let (own, theirs) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    println!(
        "pretext run, exactly-once {eos}: {elapsed:.2} s, CPU {own:.2} s ({:.2} cores), broker CPU {theirs:.2} s ({:.2} cores)",
        own / elapsed,
        theirs / elapsed
    );
    // Time inside batches (apply, produce, commit) against the whole run:
    // the rest is waiting for input.
    if let Some(m) = pretext.metrics() {
        let busy = metric_sum(&m, "pretext_batch_duration_seconds_sum");
        let batches = metric_sum(&m, "pretext_batch_duration_seconds_count");
        println!("pretext run, batch {batch:>6}, exactly-once {eos}: in batches {busy:.2} s of {elapsed:.2} s ({batches} batches)");
    }
    assert!(pretext.terminate().success(), "pretext exits 0 on SIGTERM");
    let _ = std::fs::remove_dir_all(&sub);
    elapsed
}
