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

fn main() {
    let mut argv = common::numbers().into_iter();
    let events = argv.next().unwrap_or(1_000_000);
    let mut customers: Vec<u64> = argv.collect();
    if customers.is_empty() {
        customers.push(100_000);
    }
    println!(
        "{:>10} {:>10} {:>14} {:>14} {:>7} {:>9}",
        "events", "customers", "baseline ev/s", "pretext ev/s", "ratio", "peak RSS"
    );
    for c in customers {
        let r = measure(events, c);
        let base = r.lines as f64 / r.baseline_s;
        let rate = r.lines as f64 / r.replay_s;
        println!(
            "{:>10} {:>10} {:>14.0} {:>14.0} {:>7.3} {:>5} MiB",
            r.lines,
            r.customers,
            base,
            rate,
            rate / base,
            r.peak_rss_mib
        );
    }
}

fn measure(events: u64, customers: u64) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    // Two days at least, ~500k events a day beyond that.
    let input = common::generate(dir.path(), events, customers, (events / 500_000).max(2));
    let (lines, baseline_s) = parse_only(&input);
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .arg("replay")
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("triggers.jsonl"))
        .arg("--dead-letter")
        .arg(dir.path().join("dead.jsonl"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
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
    Run {
        customers,
        lines,
        baseline_s,
        replay_s,
        peak_rss_mib: peak_kib / 1024,
    }
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
