//! Scale-out on Apache Kafka (docs/scale-out.md): events per CPU-second of
//! live mode as one instance (`scale.partitions = 1`) and of a deployment
//! with `scale.partitions = 6` run as 1, 2 and 3 instances, in one run, on
//! one broker and the same events. The machine has two shared cores, so
//! CPU efficiency is measured, not wall-clock speed-up: the scaled
//! deployment's events per CPU-second (every instance's CPU summed)
//! against one instance's is the repartition overhead, and 2 and 3
//! instances against 1 the cost of sharing the work.
//!
//! `cargo bench --bench scale -- [EVENTS] [CUSTOMERS] [ROUNDS]` (defaults
//! 200,000, 20,000 and 2). Each round runs every configuration once, each
//! with a fresh group and state; the run with the least CPU counts, one
//! without a crash if there is one. An instance that exits mid-run (it
//! has happened: a commit refused with `IllegalGeneration` during a
//! rebalance) is started again and counted, its CPU kept in the run's.
//!
//! The input topic has one partition, produced once: the events reach
//! every configuration as one ordered stream, as a replay of the file
//! sees them, so none is rejected as late because partitions interleave
//! differently from one run to the next. In the scaled runs the instance
//! holding that partition routes every event; the others apply what the
//! repartition topics bring them. The CPU summed is the same either way.
//!
//! A run's CPU is each process's user + system time from its own first
//! `/readyz` 200 (partitions assigned, state open) until the group has
//! committed everything of the input and of both repartition topics: the
//! start-up before it (config, RocksDB, topic checks) is shown apart. The
//! wall time runs from the first instance ready to the drain.

#[path = "../tests/common/broker.rs"]
mod broker;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use broker::{metric_sum, unique, write_config, Broker, Pretext, Topics};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// `scale.partitions` of the scaled runs: the most instances, 3, each
/// hold two partitions of each stage.
const PARTITIONS: u32 = 6;

/// What every run shares beside the test config of `write_config`: the
/// default batch, quiet logs, and no idle advance (with `watermark.
/// idle_timeout` short, a stage partition waiting on a rebalance would
/// fire, on the wall clock, checks the one instance fires later or not at
/// all within the run).
const SETTINGS: [(&str, &str); 4] = [
    ("PRETEXT__KAFKA__BATCH_MAX_MESSAGES", "20000"),
    ("PRETEXT__LOG__LEVEL", "warn"),
    ("PRETEXT__LOG__FORMAT", "json"),
    ("PRETEXT__WATERMARK__IDLE_TIMEOUT", "1h"),
];

/// What one configuration's run measured.
#[derive(Clone)]
struct Run {
    wall_s: f64,
    /// Summed over the instances, from each one's readiness to the drain.
    cpu_s: f64,
    /// Each instance's share of `cpu_s`.
    per_instance: Vec<f64>,
    /// Summed over the instances, from process start to readiness.
    startup_cpu_s: f64,
    broker_cpu_s: f64,
    /// Instances that exited mid-run and were started again.
    crashes: usize,
}

fn main() {
    let mut argv = common::numbers().into_iter();
    let events = argv.next().unwrap_or(200_000);
    let customers = argv.next().unwrap_or(20_000);
    let rounds = argv.next().unwrap_or(2).max(1);
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
    println!(
        "produced {n} events ({customers} customers) to one partition in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // (label, scale.partitions, instances)
    let configs: [(&str, u32, usize); 4] = [
        ("single instance", 1, 1),
        ("scaled, 1 instance", PARTITIONS, 1),
        ("scaled, 2 instances", PARTITIONS, 2),
        ("scaled, 3 instances", PARTITIONS, 3),
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
    for round in 1..=rounds {
        for (i, &(label, partitions, instances)) in configs.iter().enumerate() {
            let run = run(dir.path(), &broker, &topics, partitions, instances);
            let shares: Vec<String> = run.per_instance.iter().map(|c| format!("{c:.2}")).collect();
            println!(
                "round {round}, {label}: {:.2} s, CPU {:.2} s ({}; {:.0} events per CPU-second), \
                 start-up CPU {:.2} s, broker CPU {:.2} s, {} crash(es)",
                run.wall_s,
                run.cpu_s,
                shares.join(" + "),
                n as f64 / run.cpu_s,
                run.startup_cpu_s,
                run.broker_cpu_s,
                run.crashes
            );
            runs[i].push(run);
        }
    }

    // The least CPU of each configuration's runs without a crash (of all
    // its runs if each had one): the least disturbed by the machine's
    // other jobs, and by restarts.
    let best: Vec<Run> = runs
        .iter()
        .map(|r| {
            let clean: Vec<&Run> = r.iter().filter(|run| run.crashes == 0).collect();
            let pool = if clean.is_empty() {
                r.iter().collect()
            } else {
                clean
            };
            (*pool
                .into_iter()
                .min_by(|a, b| a.cpu_s.total_cmp(&b.cpu_s))
                .expect("a run"))
            .clone()
        })
        .collect();
    let per_cpu = |r: &Run| n as f64 / r.cpu_s;
    let (single, scaled_one) = (per_cpu(&best[0]), per_cpu(&best[1]));
    println!();
    println!("{n} events, the least-CPU run of {rounds} per configuration (crash-free if any):");
    println!(
        "| configuration | wall s | pretext CPU-s | events per CPU-second | vs single | vs scaled 1 | start-up CPU-s | broker CPU-s | crashes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((label, _, _), r) in configs.iter().zip(&best) {
        println!(
            "| {label} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.wall_s,
            r.cpu_s,
            per_cpu(r),
            per_cpu(r) / single,
            per_cpu(r) / scaled_one,
            r.startup_cpu_s,
            r.broker_cpu_s,
            r.crashes
        );
    }
    println!(
        "repartition overhead: scaled 1 / single {:.2}; scaled 2 / scaled 1 {:.2}; \
         scaled 3 / scaled 1 {:.2} (target >= 0.70: {})",
        scaled_one / single,
        per_cpu(&best[2]) / scaled_one,
        per_cpu(&best[3]) / scaled_one,
        if per_cpu(&best[3]) / scaled_one >= 0.70 {
            "met"
        } else {
            "missed"
        }
    );
}

/// Runs `instances` instances of a deployment with `scale.partitions =
/// partitions` (a fresh group, fresh states) on the input until the group
/// has drained it, then stops them and deletes the group's internal
/// topics, so that no run pays for an earlier one's partitions.
fn run(dir: &Path, broker: &Broker, topics: &Topics, partitions: u32, instances: usize) -> Run {
    let sub = dir.join(unique("run"));
    std::fs::create_dir_all(&sub).expect("run dir");
    let group = unique("bench");
    let (config, _) = write_config(&sub, &broker.addr, topics, &group);
    if partitions > 1 {
        let mut text = std::fs::read_to_string(&config).expect("read config");
        text.push_str(&format!("[scale]\npartitions = {partitions}\n"));
        std::fs::write(&config, text).expect("write config");
    }
    let start_instance = |i: usize| {
        let state = sub.join(format!("state-{i}"));
        let state_text = state.display().to_string();
        let id = format!("bench-{i}");
        let mut env = SETTINGS.to_vec();
        env.push(("PRETEXT__STATE__DIR", &state_text));
        if partitions > 1 {
            env.push(("PRETEXT__SCALE__INSTANCE_ID", &id));
        }
        let log = sub.join(format!("pretext-{i}.log"));
        Pretext::start_with_env(&config, &state, &log, &env)
    };
    let mut pretexts: Vec<Pretext> = (0..instances).map(start_instance).collect();
    let broker_pid = broker.pid().map(|p| p.to_string());
    let broker_cpu = || broker_pid.as_deref().map_or(0.0, |p| common::cpu_s(p).0);

    // Each instance's CPU when it first answers /readyz 200; the clock and
    // the broker's CPU from the first one.
    let mut ready_cpu: Vec<Option<f64>> = vec![None; instances];
    let mut first: Option<(Instant, f64)> = None;
    let launched = Instant::now();
    let mut restarts = 0;
    while ready_cpu.iter().any(Option::is_none) {
        for i in 0..instances {
            if ready_cpu[i].is_some() {
                continue;
            }
            // An instance that stops before it is ready (a start-up race
            // with the broker) is started again, at most twice a run: what
            // is measured begins at readiness.
            if !pretexts[i].running() {
                println!(
                    "  instance {i} exited before it was ready; started again:\n{}",
                    logs(&sub, instances)
                );
                restarts += 1;
                assert!(restarts <= 2, "instances keep exiting before ready");
                pretexts[i] = start_instance(i);
                continue;
            }
            if broker::http_get(&pretexts[i].http, "/readyz").map(|r| r.0) == Some(200) {
                ready_cpu[i] = Some(common::cpu_s(&pretexts[i].pid().to_string()).0);
                first.get_or_insert_with(|| (Instant::now(), broker_cpu()));
            }
        }
        assert!(
            launched.elapsed() < Duration::from_secs(120),
            "instances not ready within 120 s:\n{}",
            logs(&sub, instances)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (start, broker_before) = first.expect("an instance ready");
    // Each instance's CPU before the measured window (its start-up), and
    // that of its processes which exited within it.
    let ready: Vec<f64> = ready_cpu
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let mut base = ready.clone();
    let mut spent = vec![0.0; instances];
    let mut crashes = 0;

    let mut drained = vec![(topics.input.clone(), 1)];
    if partitions > 1 {
        for suffix in ["by-cookie", "by-customer"] {
            drained.push((format!("{group}.{suffix}"), partitions as i32));
        }
    }
    let reader: BaseConsumer = broker
        .client()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets reader");
    loop {
        if broker::group_lag(&reader, &drained) == 0 {
            break;
        }
        // An instance that exits mid-run is started again, as its
        // orchestrator would, and counted: its CPU until then (read from
        // the bench's waited-for children) stays in the run's, and the
        // new process's counts from its start.
        for i in 0..instances {
            let children_before = common::cpu_s("self").1;
            if pretexts[i].running() {
                continue;
            }
            spent[i] += common::cpu_s("self").1 - children_before - base[i];
            base[i] = 0.0;
            crashes += 1;
            println!(
                "  instance {i} exited mid-run, {:.1} s in; started again:\n{}",
                start.elapsed().as_secs_f64(),
                logs(&sub, instances)
            );
            assert!(crashes <= 10, "instances keep exiting");
            pretexts[i] = start_instance(i);
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "the group has not drained in 900 s:\n{}",
            logs(&sub, instances)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall_s = start.elapsed().as_secs_f64();
    let per_instance: Vec<f64> = pretexts
        .iter()
        .enumerate()
        .map(|(i, p)| spent[i] + common::cpu_s(&p.pid().to_string()).0 - base[i])
        .collect();
    let broker_cpu_s = broker_cpu() - broker_before;

    let metrics: Vec<String> = pretexts.iter().filter_map(Pretext::metrics).collect();
    let sum = |name: &str| -> f64 { metrics.iter().map(|m| metric_sum(m, name)).sum() };
    println!(
        "  partitions {partitions}, {instances} instance(s): events {} (rejected {}, duplicate {}), \
         triggers {}, dead letters {}, rebalances {}",
        sum("pretext_events_total"),
        sum("pretext_events_rejected_total"),
        sum("pretext_events_duplicate_total"),
        sum("pretext_triggers_total"),
        sum("pretext_dead_letters_total"),
        sum("pretext_rebalances_total"),
    );
    // Where each process's CPU went, its whole life (start-up included),
    // by thread; threads that ended are in the total only.
    for (i, p) in pretexts.iter().enumerate() {
        let total = common::cpu_s(&p.pid().to_string()).0;
        let shown: Vec<String> = threads_cpu(p.pid())
            .into_iter()
            .take(8)
            .map(|(name, cpu)| format!("{name} {cpu:.2}"))
            .collect();
        println!(
            "  instance {i} threads (CPU-s of {total:.2}): {}",
            shown.join(", ")
        );
    }
    for (i, p) in pretexts.into_iter().enumerate() {
        let status = p.terminate();
        if !status.success() {
            println!("  instance {i} exited with {status} on SIGTERM");
        }
    }
    let noted = logs(&sub, instances);
    if !noted.trim().is_empty() {
        println!("  warnings and errors logged:\n{noted}");
    }
    if partitions > 1 {
        println!(
            "  records on the internal topics: {}",
            internal_records(&reader, &group)
        );
        delete_internal_topics(broker, &reader, &group);
    }
    let _ = std::fs::remove_dir_all(&sub);
    Run {
        wall_s,
        cpu_s: per_instance.iter().sum(),
        per_instance,
        startup_cpu_s: ready.iter().sum(),
        broker_cpu_s,
        crashes,
    }
}

/// The records written to the group's repartition topics and to its
/// changelogs (the sum of their partitions' high watermarks: the topics
/// are new, and scaled mode purges the repartition topics below the
/// committed offsets, so the low watermarks say nothing): what the
/// scaled deployment makes the broker store beside the input.
fn internal_records(reader: &BaseConsumer, group: &str) -> String {
    let Ok(metadata) = reader.fetch_metadata(None, Duration::from_secs(10)) else {
        return "unknown".to_string();
    };
    let (mut by_cookie, mut by_customer, mut changelogs) = (0, 0, 0);
    for t in metadata.topics() {
        let Some(rest) = t.name().strip_prefix(&format!("{group}.")) else {
            continue;
        };
        let records: i64 = t
            .partitions()
            .iter()
            .filter_map(|p| {
                reader
                    .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
                    .ok()
            })
            .map(|(_, high)| high)
            .sum();
        match rest {
            "by-cookie" => by_cookie += records,
            "by-customer" => by_customer += records,
            _ => changelogs += records,
        }
    }
    format!("by-cookie {by_cookie}, by-customer {by_customer}, changelogs {changelogs}")
}

/// Deletes the topics named `<group>.…` (repartition and changelogs).
fn delete_internal_topics(broker: &Broker, reader: &BaseConsumer, group: &str) {
    let prefix = format!("{group}.");
    let Ok(metadata) = reader.fetch_metadata(None, Duration::from_secs(10)) else {
        println!("  could not list the topics of {group}");
        return;
    };
    let names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|t| t.starts_with(&prefix))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let admin: AdminClient<DefaultClientContext> = broker.client().create().expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(admin.delete_topics(&refs, &AdminOptions::new())) {
        println!("  could not delete the topics of {group}: {e}");
    }
}

/// The instances' log lines (warnings and errors at the bench's log
/// level) counted by level, target and message, fields left out: one
/// line per distinct message with its count, per instance.
fn logs(dir: &Path, instances: usize) -> String {
    (0..instances)
        .filter_map(|i| {
            let text = std::fs::read_to_string(dir.join(format!("pretext-{i}.log"))).ok()?;
            let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let key = match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(v) => format!(
                        "{} {}: {}",
                        v["level"].as_str().unwrap_or("?"),
                        v["target"].as_str().unwrap_or("?"),
                        v["fields"]["message"].as_str().unwrap_or("?")
                    ),
                    // What main prints on exit is not a log record.
                    Err(_) => line.to_string(),
                };
                *counts.entry(key).or_default() += 1;
            }
            if counts.is_empty() {
                return None;
            }
            let shown: Vec<String> = counts
                .iter()
                .map(|(k, n)| format!("    {n} x {}", k.chars().take(300).collect::<String>()))
                .collect();
            Some(format!("  instance {i}:\n{}", shown.join("\n")))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// CPU seconds of a process's live threads by name (digits dropped, so
/// `rdk:broker1` and `rdk:broker-1` count together), most first.
fn threads_cpu(pid: u32) -> Vec<(String, f64)> {
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let name: String = name
            .trim()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        let name = name.trim_end_matches(['-', ':', '#']).to_string();
        *by.entry(name).or_default() += common::cpu_s(&format!("{pid}/task/{tid}")).0;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}
