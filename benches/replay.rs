//! End-to-end replay throughput against a parse-only baseline, measured in
//! the same run on the same file (these machines are shared and noisy, so
//! only the ratio is meaningful across runs).
//!
//! `cargo bench --bench replay -- [EVENTS] [CUSTOMERS...]` (defaults
//! 1,000,000 events and 100,000 customers). For each customer count: a file
//! is generated, parsed (serde_json into a `Value`, nothing else), then
//! replayed by the release binary (`pretext replay --flush` with a state
//! directory) in a child process, whose peak RSS is sampled from /proc.
//! Several customer counts give the cost curve as the state grows.
//!
//! Each file is replayed twice: with the default configuration, and with
//! the measurement settings of contract section 8 on (holdout 10%, a cap of
//! 3 triggers per 24 h, holdout triggers and conversions written to files),
//! whose ratio to the default run is printed as `vs default`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

struct Run {
    customers: u64,
    lines: u64,
    baseline_s: f64,
    replay_s: f64,
    peak_rss_mib: u64,
}

/// The section 8 settings the second replay of each file runs with.
const PRESSURE_CONFIG: &str =
    "[holdout]\npercent = 10\n[pressure]\nmax_triggers = 3\nwindow = \"24h\"\n";

fn main() {
    let mut argv = common::numbers().into_iter();
    let events = argv.next().unwrap_or(1_000_000);
    let mut customers: Vec<u64> = argv.collect();
    if customers.is_empty() {
        customers.push(100_000);
    }
    println!(
        "{:>10} {:>10} {:>9} {:>14} {:>14} {:>7} {:>10} {:>9}",
        "events",
        "customers",
        "config",
        "baseline ev/s",
        "pretext ev/s",
        "ratio",
        "vs default",
        "peak RSS"
    );
    for c in customers {
        let [plain, pressure] = measure(events, c);
        let base = plain.lines as f64 / plain.baseline_s;
        for (name, r) in [("default", &plain), ("section8", &pressure)] {
            let rate = r.lines as f64 / r.replay_s;
            println!(
                "{:>10} {:>10} {:>9} {:>14.0} {:>14.0} {:>7.3} {:>10.3} {:>5} MiB",
                r.lines,
                r.customers,
                name,
                base,
                rate,
                rate / base,
                plain.replay_s / r.replay_s,
                r.peak_rss_mib
            );
        }
    }
}

/// Generates a file, parses it once for the baseline, and replays it with
/// the default configuration and with `PRESSURE_CONFIG`.
fn measure(events: u64, customers: u64) -> [Run; 2] {
    let dir = tempfile::tempdir().expect("temp dir");
    // Two days at least, ~500k events a day beyond that.
    let input = common::generate(dir.path(), events, customers, (events / 500_000).max(2));
    let (lines, baseline_s) = parse_only(&input);
    let config = dir.path().join("pressure.toml");
    std::fs::write(&config, PRESSURE_CONFIG).expect("write config");
    let plain = replay(dir.path(), "plain", &input, None);
    let pressure = replay(dir.path(), "pressure", &input, Some(&config));
    [plain, pressure].map(|(replay_s, peak_rss_mib)| Run {
        customers,
        lines,
        baseline_s,
        replay_s,
        peak_rss_mib,
    })
}

/// Replays `input` in a child process into a fresh state under `dir`:
/// (seconds, peak RSS in MiB).
fn replay(dir: &Path, name: &str, input: &Path, config: Option<&Path>) -> (f64, u64) {
    let out = |what: &str| dir.join(format!("{name}-{what}.jsonl"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pretext"));
    cmd.arg("replay");
    if let Some(c) = config {
        cmd.arg("--config")
            .arg(c)
            .arg("--holdout")
            .arg(out("holdout"))
            .arg("--conversions")
            .arg(out("conversions"));
    }
    let start = Instant::now();
    let mut child = cmd
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(out("triggers"))
        .arg("--dead-letter")
        .arg(out("dead"))
        .arg("--state-dir")
        .arg(dir.join(format!("{name}-state")))
        .arg("--flush")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pretext replay");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for pretext") {
            break s;
        }
        peak_kib = peak_kib.max(vm_hwm_kib(&status_path).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    };
    let replay_s = start.elapsed().as_secs_f64();
    let mut summary = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut summary);
    }
    assert!(status.success(), "pretext replay failed: {summary}");
    eprint!("{summary}");
    (replay_s, peak_kib / 1024)
}

/// serde_json decode of every line into a `Value`, and nothing else.
fn parse_only(path: &Path) -> (u64, f64) {
    let start = Instant::now();
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path).expect("input"));
    let mut line = Vec::new();
    let mut n = 0u64;
    let mut ok = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).expect("read") == 0 {
            break;
        }
        n += 1;
        if serde_json::from_slice::<serde_json::Value>(&line).is_ok() {
            ok += 1;
        }
    }
    std::hint::black_box(ok);
    (n, start.elapsed().as_secs_f64())
}

/// The peak resident set (VmHWM) of a running process, in KiB.
fn vm_hwm_kib(status_path: &str) -> Option<u64> {
    std::fs::read_to_string(status_path)
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
