//! The engine split into partitions (`pretext replay --partitions N`,
//! docs/scale-out.md) against the one engine, on the same generated file
//! in the same run: events per CPU-second for 1, 2, 3 and 6 partitions,
//! and their ratio to one partition. It is the engine's share of the
//! repartition overhead (more RocksDB instances, every record between the
//! stages encoded and decoded, a dedup entry per record): no broker, no
//! network. Only ratios are meaningful on a shared machine; each count runs
//! twice and the cheaper run counts.
//!
//! `cargo bench --bench partitioned -- [EVENTS] [CUSTOMERS]` (defaults
//! 1,000,000 and 100,000).

use std::path::Path;

mod common;

fn main() {
    let mut argv = common::numbers().into_iter();
    let events = argv.next().unwrap_or(1_000_000);
    let customers = argv.next().unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = common::generate(dir.path(), events, customers, 2);
    println!("{events} events of {customers} customers; best of 2 per count");
    let mut one = None;
    for partitions in [1, 2, 3, 6] {
        let (wall, cpu) = (0..2)
            .map(|round| replay(dir.path(), &input, partitions, round))
            .fold((f64::MAX, f64::MAX), |(w, c), (w2, c2)| {
                (w.min(w2), c.min(c2))
            });
        let per_cpu_s = events as f64 / cpu;
        let base = *one.get_or_insert(per_cpu_s);
        println!(
            "{partitions} partition(s): {wall:.2} s wall, {cpu:.2} CPU-s, \
             {per_cpu_s:.0} events per CPU-second, {:.2} of 1 partition",
            per_cpu_s / base
        );
    }
}

/// Wall and CPU seconds of one `pretext replay --flush` into a fresh state.
fn replay(dir: &Path, input: &Path, partitions: u32, round: u32) -> (f64, f64) {
    let state = dir.join(format!("state-{partitions}-{round}"));
    let n = partitions.to_string();
    common::timed_replay(input, &state, &["--quiet", "--flush", "--partitions", &n])
}
