//! The CPU cost of a query without HTTP: `Queries::answer` on a state
//! directory, for random customers `C000000`..`C{n-1}`, one at a time.
//!
//! `cargo run --release --example query_cost -- STATE_DIR CUSTOMERS QUERIES`
//! (e.g. after `pretext replay --state-dir STATE_DIR --input EVENTS`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pretext::config::Config;
use pretext::engine::query::{Queries, Subject};
use pretext::state::Reader;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("STATE_DIR"));
    let customers: u64 = args
        .next()
        .map_or(100_000, |a| a.parse().expect("CUSTOMERS"));
    let n: usize = args.next().map_or(10_000, |a| a.parse().expect("QUERIES"));
    let scratch = tempfile::tempdir().expect("scratch dir");
    let reader = Reader::open_secondary(&dir, scratch.path()).expect("open the state");
    let queries = Queries::from_config(&Config::default());
    let mut times = Vec::with_capacity(n);
    let (mut found, mut products) = (0usize, 0usize);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let subject = Subject::Customer(format!("C{:06}", x % customers));
        let start = Instant::now();
        let answer = queries
            .answer(&reader.snapshot(), &subject, 20)
            .expect("query");
        times.push(start.elapsed());
        if let Some(a) = answer {
            found += 1;
            products += a.products.len();
        }
    }
    times.sort();
    let at = |q: f64| times[((n as f64 * q) as usize).min(n - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{n} queries, {found} found ({:.1} products each): p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
        products as f64 / found.max(1) as f64,
        us(at(0.5)),
        us(at(0.9)),
        us(at(0.99)),
        us(times[n - 1]),
    );
}
