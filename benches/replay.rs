//! End-to-end replay throughput against a parse-only baseline, measured in
//! the same run on the same file (these machines are shared and noisy, so
//! only the ratio is meaningful across runs).
//!
//! `cargo bench --bench replay -- [EVENTS] [CUSTOMERS]` (defaults 1,000,000
//! and 100,000). Prints events/s for both and the ratio, and the peak RSS.

use std::io::{BufRead, BufReader, Write};
use std::time::Instant;

use clap::Parser;
use pretext::config::Config;
use pretext::gen::GenArgs;
use pretext::replay::{replay, ReplayOptions};

#[derive(Parser)]
struct Gen {
    #[command(flatten)]
    args: GenArgs,
}

fn main() {
    let mut argv = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let events: u64 = argv
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let customers: u64 = argv.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("events.jsonl");
    let days = (events / 500_000).max(2).to_string();
    let gen = Gen::parse_from([
        "gen",
        "--events",
        &events.to_string(),
        "--customers",
        &customers.to_string(),
        "--products",
        "5000",
        "--days",
        &days,
        "--output",
        input.to_str().expect("utf-8 path"),
    ]);
    pretext::gen::run(&gen.args).expect("generate events");
    let bytes = std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "input: {events} events, {customers} customers, {} MiB",
        bytes >> 20
    );

    let (lines, baseline) = parse_only(&input);
    let opts = ReplayOptions {
        inputs: vec![input.clone()],
        output: Some(dir.path().join("triggers.jsonl")),
        dead_letter: Some(dir.path().join("dead.jsonl")),
        state_dir: Some(dir.path().join("state")),
        flush: true,
    };
    let start = Instant::now();
    let summary = replay(&Config::default(), &opts).expect("replay");
    let elapsed = start.elapsed().as_secs_f64();
    let rate = lines as f64 / elapsed;
    let base_rate = lines as f64 / baseline;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "parse-only baseline: {base_rate:>12.0} events/s ({baseline:.2} s)"
    );
    let _ = writeln!(
        out,
        "pretext replay:      {rate:>12.0} events/s ({elapsed:.2} s)"
    );
    let _ = writeln!(
        out,
        "ratio replay/baseline: {:.3} (baseline is {:.2}x faster)",
        rate / base_rate,
        base_rate / rate
    );
    let _ = writeln!(out, "peak RSS: {} MiB", peak_rss_mib());
    let _ = write!(out, "{}", summary.render());
}

/// serde_json decode of every line into a `Value`, and nothing else.
fn parse_only(path: &std::path::Path) -> (u64, f64) {
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

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
