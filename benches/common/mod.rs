//! What the end-to-end benches share: their numeric arguments and the
//! generated input.

use std::path::{Path, PathBuf};

use clap::Parser;
use pretext::gen::GenArgs;

#[derive(Parser)]
struct Gen {
    #[command(flatten)]
    args: GenArgs,
}

/// The numeric command-line arguments, in order (`1_000_000` allowed);
/// cargo's own `--bench` flag and other options are skipped.
pub fn numbers() -> Vec<u64> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| a.replace('_', "").parse().ok())
        .collect()
}

/// Writes `pretext gen` events to `dir/events.jsonl`: `events` events of
/// `customers` customers over `days` days, 5,000 products, seed 42.
pub fn generate(dir: &Path, events: u64, customers: u64, days: u64) -> PathBuf {
    let input = dir.join("events.jsonl");
    let gen = Gen::parse_from([
        "gen",
        "--events",
        &events.to_string(),
        "--customers",
        &customers.to_string(),
        "--products",
        "5000",
        "--days",
        &days.to_string(),
        "--output",
        input.to_str().expect("utf-8 path"),
    ]);
    pretext::gen::run(&gen.args).expect("generate events");
    input
}

/// CPU seconds (user + system) a process has used, and those of its
/// waited-for children, from /proc (clock ticks of 1/100 s, Linux's
/// `USER_HZ`). Where the two cores go is what bounds run/replay here.
// Each bench compiles its own copy of this module; not all measure CPU.
#[allow(dead_code)]
pub fn cpu_s(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is the
    // 3rd field, utime the 14th, stime 15th, cutime 16th, cstime 17th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse().ok())
        .collect();
    if f.len() < 4 {
        return (0.0, 0.0);
    }
    ((f[0] + f[1]) / 100.0, (f[2] + f[3]) / 100.0)
}

/// Wall and CPU seconds of one `pretext replay` child process of `input`
/// into the fresh state directory `state` (removed after), triggers to
/// /dev/null, with `args` added, from process start to exit.
#[allow(dead_code)]
pub fn timed_replay(input: &Path, state: &Path, args: &[&str]) -> (f64, f64) {
    let children_before = cpu_s("self").1;
    let start = std::time::Instant::now();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["replay", "--output", "/dev/null"])
        .args(args)
        .arg("--input")
        .arg(input)
        .arg("--state-dir")
        .arg(state)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run pretext replay");
    let secs = start.elapsed().as_secs_f64();
    assert!(status.success(), "pretext replay {args:?} failed");
    let cpu = cpu_s("self").1 - children_before;
    let _ = std::fs::remove_dir_all(state);
    (secs, cpu)
}
