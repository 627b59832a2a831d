//! Progress of a long replay on stderr, for the data engineer watching a
//! backfill: bytes and events read, events/s, and an ETA when the input
//! sizes are known.
//!
//! On a terminal one line is redrawn in place a few times a second; piped
//! to a file, a plain line is written every `PLAIN_EVERY`, so a log holds no
//! control codes. The reporter runs on a thread of its own, tied to the
//! `Progress` guard: dropping it stops the thread.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const REDRAW_EVERY: Duration = Duration::from_millis(250);
const PLAIN_EVERY: Duration = Duration::from_secs(30);

/// What the replay has done so far, shared with the reporter.
#[derive(Debug, Default)]
pub struct Counters {
    /// Input bytes read (compressed bytes for `.gz` files).
    pub bytes: AtomicU64,
    /// Messages (lines) handed to the engine.
    pub messages: AtomicU64,
}

/// The running reporter; stops and clears its line when dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting on stderr; `total_bytes` is the sum of the input
    /// sizes when every one is known.
    pub fn start(counters: Arc<Counters>, total_bytes: Option<u64>) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let tty = std::io::stderr().is_terminal();
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("replay-progress".into())
            .spawn(move || report(&counters, total_bytes, tty, &flag))
            .ok();
        Progress { stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn report(counters: &Counters, total: Option<u64>, tty: bool, stop: &AtomicBool) {
    let started = Instant::now();
    let every = if tty { REDRAW_EVERY } else { PLAIN_EVERY };
    let mut drawn = false;
    loop {
        std::thread::park_timeout(every);
        if stop.load(Ordering::Acquire) {
            break;
        }
        let line = describe(counters, total, started.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        drawn = tty;
    }
    if drawn {
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
}

/// One progress line, e.g. `12.5 MiB of 160.0 MiB (8%), 75000 events,
/// 60000 events/s, ETA 3m 10s`.
pub fn describe(counters: &Counters, total: Option<u64>, elapsed: Duration) -> String {
    let bytes = counters.bytes.load(Ordering::Relaxed);
    let messages = counters.messages.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mut line = match total {
        Some(t) if t > 0 => format!(
            "{} of {} ({:.0}%)",
            mib(bytes),
            mib(t),
            100.0 * bytes as f64 / t as f64
        ),
        _ => mib(bytes),
    };
    line.push_str(&format!(
        ", {messages} events, {:.0} events/s",
        messages as f64 / secs
    ));
    if let Some(t) = total.filter(|&t| bytes > 0 && t >= bytes) {
        let left = secs * (t - bytes) as f64 / bytes as f64;
        line.push_str(&format!(", ETA {}", duration(left)));
    }
    line
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// Counts the bytes read through it.
pub struct Counting<R> {
    pub inner: R,
    pub counters: Arc<Counters>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_bytes_events_rate_and_eta() {
        let c = Counters::default();
        c.bytes.store(10 << 20, Ordering::Relaxed);
        c.messages.store(50_000, Ordering::Relaxed);
        let line = describe(&c, Some(40 << 20), Duration::from_secs(10));
        assert_eq!(
            line,
            "10.0 MiB of 40.0 MiB (25%), 50000 events, 5000 events/s, ETA 30s"
        );
        let line = describe(&c, None, Duration::from_secs(10));
        assert_eq!(line, "10.0 MiB, 50000 events, 5000 events/s");
    }

    #[test]
    fn durations_read_as_hours_minutes_seconds() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(190.0), "3m 10s");
        assert_eq!(duration(7_500.0), "2h 5m");
    }

    #[test]
    fn dropping_the_guard_stops_the_reporter() {
        let p = Progress::start(Arc::new(Counters::default()), None);
        let started = Instant::now();
        drop(p);
        assert!(started.elapsed() < PLAIN_EVERY);
    }
}
