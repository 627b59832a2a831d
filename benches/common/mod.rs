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
