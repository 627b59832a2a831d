//! Every metric pretext exports, defined once, in one registry.
//!
//! Labelled children are resolved when the metrics are created, never per
//! message, and label values come from bounded sets (event types, reasons,
//! trigger types, assigned partitions). Engine-derived counters are advanced
//! from `EngineStats` deltas once per batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::decode::Reason;
use crate::engine::stats::ByKindGroup;
use crate::engine::{EngineStats, Suppressed};
use crate::event::EVENT_TYPES;
use crate::trigger::{Group, TriggerKind};

/// One exported metric: its name and help text. Labels and buckets are
/// where it is built, in `Metrics::new`.
#[derive(Clone, Copy)]
pub struct Def {
    pub name: &'static str,
    pub help: &'static str,
}

const fn def(name: &'static str, help: &'static str) -> Def {
    Def { name, help }
}

/// Every metric pretext exports, defined once.
pub const DEFS: [Def; 20] = [
    def("pretext_events_total", "Events applied, by type"),
    def(
        "pretext_events_rejected_total",
        "Input messages rejected (dead-lettered), by reason",
    ),
    def(
        "pretext_events_duplicate_total",
        "Events ignored as duplicates of an applied event_id",
    ),
    def(
        "pretext_events_ignored_erased_total",
        "Events of an erased customer stamped at or before the erase, ignored",
    ),
    def(
        "pretext_triggers_total",
        "Triggers fired, by type and group (treated or holdout)",
    ),
    def(
        "pretext_conversions_total",
        "Triggers converted by a purchase within the attribution window, by type and group",
    ),
    def(
        "pretext_suppressed_total",
        "Triggers considered that did not fire, by reason",
    ),
    def(
        "pretext_batch_duration_seconds",
        "Time to apply a batch and send its output, and to commit it (at least once, its acknowledgement and state write land while later batches are applied, every kafka.commit_interval)",
    ),
    def(
        "pretext_event_time_lag_seconds",
        "Wall clock minus the highest applied event time; absent before the first event",
    ),
    def(
        "pretext_watermark_seconds",
        "The event-time watermark, Unix seconds; absent before the first event",
    ),
    def("pretext_pending_checks", "viewed_not_bought checks pending"),
    def(
        "pretext_consumer_lag_messages",
        "Messages behind the partition's end",
    ),
    def(
        "pretext_state_size_bytes",
        "RocksDB size on disk and in memtables, approximate",
    ),
    def("pretext_state_keys", "RocksDB keys, approximate"),
    def("pretext_dead_letters_total", "Dead letters produced"),
    def(
        "pretext_ready",
        "1 when partitions are assigned and the state is open",
    ),
    def(
        "pretext_produce_errors_total",
        "Produced messages that failed delivery",
    ),
    def(
        "pretext_kafka_errors_total",
        "Kafka client errors, by kind (fatal ones stop the process)",
    ),
    def(
        "pretext_rebalances_total",
        "Partition assignments and revocations, by kind",
    ),
    def(
        "pretext_skipped_below_position_total",
        "Input messages below the position stored with the state, skipped (after an offset reset)",
    ),
];

/// The name of every metric pretext exports: what dashboards and alerts may
/// use (tests/ops_static.rs and tests/live_e2e.rs hold them to it).
pub const NAMES: [&str; DEFS.len()] = names();

/// The metrics shown only once they have a value: a watermark or a lag
/// before the first event would be a number with no meaning.
pub const AFTER_FIRST_EVENT: [&str; 2] = [
    "pretext_event_time_lag_seconds",
    "pretext_watermark_seconds",
];

const fn names() -> [&'static str; DEFS.len()] {
    let mut out = [""; DEFS.len()];
    let mut i = 0;
    while i < DEFS.len() {
        out[i] = DEFS[i].name;
        i += 1;
    }
    out
}

fn help(name: &str) -> &'static str {
    DEFS.iter().find(|d| d.name == name).map_or("", |d| d.help)
}

fn opts(name: &str) -> Opts {
    Opts::new(name, help(name))
}

/// Kinds of Kafka client errors: the bounded label set of
/// `pretext_kafka_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaErrorKind {
    Transport = 0,
    AllBrokersDown = 1,
    Timeout = 2,
    Auth = 3,
    UnknownTopic = 4,
    Fatal = 5,
    Commit = 6,
    Delivery = 7,
    Other = 8,
}

impl KafkaErrorKind {
    pub const ALL: [KafkaErrorKind; 9] = [
        KafkaErrorKind::Transport,
        KafkaErrorKind::AllBrokersDown,
        KafkaErrorKind::Timeout,
        KafkaErrorKind::Auth,
        KafkaErrorKind::UnknownTopic,
        KafkaErrorKind::Fatal,
        KafkaErrorKind::Commit,
        KafkaErrorKind::Delivery,
        KafkaErrorKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KafkaErrorKind::Transport => "transport",
            KafkaErrorKind::AllBrokersDown => "all_brokers_down",
            KafkaErrorKind::Timeout => "timeout",
            KafkaErrorKind::Auth => "auth",
            KafkaErrorKind::UnknownTopic => "unknown_topic",
            KafkaErrorKind::Fatal => "fatal",
            KafkaErrorKind::Commit => "commit",
            KafkaErrorKind::Delivery => "delivery",
            KafkaErrorKind::Other => "other",
        }
    }
}

/// A gauge that exports nothing until it is first set.
#[derive(Clone)]
pub struct LateGauge {
    gauge: Gauge,
    set: Arc<AtomicBool>,
}

impl LateGauge {
    fn new(name: &str) -> Result<LateGauge, prometheus::Error> {
        Ok(LateGauge {
            gauge: Gauge::with_opts(opts(name))?,
            set: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn set(&self, v: f64) {
        self.gauge.set(v);
        self.set.store(true, Ordering::Release);
    }

    pub fn get(&self) -> Option<f64> {
        self.set.load(Ordering::Acquire).then(|| self.gauge.get())
    }
}

impl Collector for LateGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if self.set.load(Ordering::Acquire) {
            self.gauge.collect()
        } else {
            Vec::new()
        }
    }
}

/// When each kind of error was last logged, and how many went unlogged.
struct LogLimit {
    last: Mutex<[Option<Instant>; KafkaErrorKind::ALL.len()]>,
    unlogged: [AtomicU64; KafkaErrorKind::ALL.len()],
}

pub struct Metrics {
    registry: Registry,
    events: Vec<IntCounter>,
    rejected: Vec<IntCounter>,
    duplicates: IntCounter,
    ignored_erased: IntCounter,
    /// By `TriggerKind::index`, then `Group::index`.
    triggers: Vec<Vec<IntCounter>>,
    conversions: Vec<Vec<IntCounter>>,
    suppressed: Vec<IntCounter>,
    kafka_errors: Vec<IntCounter>,
    /// Assignments, then revocations.
    rebalances: [IntCounter; 2],
    pub batch_duration: Histogram,
    pub event_time_lag: LateGauge,
    pub watermark: LateGauge,
    pub pending_checks: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub state_size_bytes: IntGauge,
    pub state_keys: IntGauge,
    pub dead_letters: IntCounter,
    pub ready: IntGauge,
    pub produce_errors: IntCounter,
    pub skipped_below_position: IntCounter,
    /// The engine counts already exported.
    last: Mutex<EngineStats>,
    log_limit: LogLimit,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot register metric: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let counter_vec = |name: &str, label: &str, values: &[&str]| {
            let vec = IntCounterVec::new(opts(name), &[label])?;
            registry.register(Box::new(vec.clone()))?;
            // Resolve every child now, so each series shows (at 0) from the start.
            Ok::<_, prometheus::Error>(
                values
                    .iter()
                    .map(|v| vec.with_label_values(&[v]))
                    .collect::<Vec<_>>(),
            )
        };
        let by_kind_group = |name: &str| {
            let vec = IntCounterVec::new(opts(name), &["type", "group"])?;
            registry.register(Box::new(vec.clone()))?;
            let children = TriggerKind::ALL.iter().map(|k| {
                Group::ALL
                    .iter()
                    .map(|g| vec.with_label_values(&[k.as_str(), g.as_str()]))
                    .collect::<Vec<_>>()
            });
            Ok::<_, prometheus::Error>(children.collect::<Vec<_>>())
        };
        let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let suppressed: Vec<&str> = Suppressed::ALL.iter().map(|s| s.as_str()).collect();
        let errors: Vec<&str> = KafkaErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        let rebalances = counter_vec("pretext_rebalances_total", "kind", &["assign", "revoke"])?;
        let counter = |name: &str| IntCounter::with_opts(opts(name));
        let gauge = |name: &str| IntGauge::with_opts(opts(name));
        let m = Metrics {
            events: counter_vec("pretext_events_total", "type", &EVENT_TYPES)?,
            rejected: counter_vec("pretext_events_rejected_total", "reason", &reasons)?,
            triggers: by_kind_group("pretext_triggers_total")?,
            conversions: by_kind_group("pretext_conversions_total")?,
            suppressed: counter_vec("pretext_suppressed_total", "reason", &suppressed)?,
            kafka_errors: counter_vec("pretext_kafka_errors_total", "kind", &errors)?,
            rebalances: [rebalances[0].clone(), rebalances[1].clone()],
            duplicates: counter("pretext_events_duplicate_total")?,
            ignored_erased: counter("pretext_events_ignored_erased_total")?,
            batch_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "pretext_batch_duration_seconds",
                    help("pretext_batch_duration_seconds"),
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            event_time_lag: LateGauge::new("pretext_event_time_lag_seconds")?,
            watermark: LateGauge::new("pretext_watermark_seconds")?,
            pending_checks: gauge("pretext_pending_checks")?,
            consumer_lag: IntGaugeVec::new(
                opts("pretext_consumer_lag_messages"),
                &["topic", "partition"],
            )?,
            state_size_bytes: gauge("pretext_state_size_bytes")?,
            state_keys: gauge("pretext_state_keys")?,
            dead_letters: counter("pretext_dead_letters_total")?,
            ready: gauge("pretext_ready")?,
            produce_errors: counter("pretext_produce_errors_total")?,
            skipped_below_position: counter("pretext_skipped_below_position_total")?,
            last: Mutex::new(EngineStats::default()),
            log_limit: LogLimit {
                last: Mutex::new([None; KafkaErrorKind::ALL.len()]),
                unlogged: Default::default(),
            },
            registry,
        };
        m.register_plain()?;
        Ok(m)
    }

    /// Registers the metrics that are not labelled vectors (those register
    /// as they are built).
    fn register_plain(&self) -> Result<(), prometheus::Error> {
        let plain: [Box<dyn Collector>; 13] = [
            Box::new(self.duplicates.clone()),
            Box::new(self.ignored_erased.clone()),
            Box::new(self.dead_letters.clone()),
            Box::new(self.produce_errors.clone()),
            Box::new(self.skipped_below_position.clone()),
            Box::new(self.batch_duration.clone()),
            Box::new(self.event_time_lag.clone()),
            Box::new(self.watermark.clone()),
            Box::new(self.pending_checks.clone()),
            Box::new(self.state_size_bytes.clone()),
            Box::new(self.state_keys.clone()),
            Box::new(self.ready.clone()),
            Box::new(self.consumer_lag.clone()),
        ];
        for c in plain {
            self.registry.register(c)?;
        }
        Ok(())
    }

    /// Advances the engine-derived counters to `stats`.
    pub fn observe_engine(&self, stats: &EngineStats) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let add = |c: &IntCounter, now: u64, before: u64| c.inc_by(now.saturating_sub(before));
        for (i, c) in self.events.iter().enumerate() {
            add(c, stats.events[i], last.events[i]);
        }
        let add_all = |cs: &[Vec<IntCounter>], now: &ByKindGroup, before: &ByKindGroup| {
            for (k, row) in cs.iter().enumerate() {
                for (g, c) in row.iter().enumerate() {
                    add(c, now[k][g], before[k][g]);
                }
            }
        };
        add_all(&self.triggers, &stats.triggers, &last.triggers);
        add_all(&self.conversions, &stats.conversions, &last.conversions);
        for (i, c) in self.suppressed.iter().enumerate() {
            add(c, stats.suppressed[i], last.suppressed[i]);
        }
        add(&self.duplicates, stats.duplicates, last.duplicates);
        add(
            &self.ignored_erased,
            stats.ignored_erased,
            last.ignored_erased,
        );
        self.pending_checks.set(stats.pending_checks);
        *last = stats.clone();
    }

    pub fn reject(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.rejected[i].inc();
        }
    }

    pub fn kafka_error(&self, kind: KafkaErrorKind) {
        self.kafka_errors[kind as usize].inc();
    }

    pub fn rebalance(&self, assigned: bool) {
        self.rebalances[usize::from(!assigned)].inc();
    }

    /// Whether an error of `kind` may be logged now (none was in the last
    /// `every`): then the number not logged since the last one, else `None`
    /// (and it counts as not logged).
    pub fn may_log(&self, kind: KafkaErrorKind, every: Duration) -> Option<u64> {
        let i = kind as usize;
        let now = Instant::now();
        let mut last = self.log_limit.last.lock().ok()?;
        if last[i].is_some_and(|t| now.duration_since(t) < every) {
            self.log_limit.unlogged[i].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        last[i] = Some(now);
        Some(self.log_limit.unlogged[i].swap(0, Ordering::Relaxed))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding registered, well-formed metrics into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_shows_from_the_start() {
        let m = Metrics::new().unwrap();
        let text = m.render();
        for name in [
            "pretext_events_total{type=\"erase\"} 0",
            "pretext_events_rejected_total{reason=\"bad_ts\"} 0",
            "pretext_triggers_total{group=\"holdout\",type=\"promo_on_viewed_item\"} 0",
            "pretext_conversions_total{group=\"treated\",type=\"viewed_not_bought\"} 0",
            "pretext_suppressed_total{reason=\"frequency_cap\"} 0",
            "pretext_kafka_errors_total{kind=\"all_brokers_down\"} 0",
            "pretext_events_duplicate_total 0",
            "pretext_batch_duration_seconds_count 0",
            "pretext_ready 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn names_lists_exactly_the_exported_metrics() {
        let m = Metrics::new().unwrap();
        // Lag series exist per assigned partition; make one. The watermark
        // and the event-time lag show from the first event.
        m.consumer_lag.with_label_values(&["t", "0"]).set(0);
        m.watermark.set(1.0);
        m.event_time_lag.set(1.0);
        let text = m.render();
        let mut typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        typed.sort_unstable();
        let mut names = NAMES.to_vec();
        names.sort_unstable();
        assert_eq!(typed, names);
    }

    #[test]
    fn the_watermark_and_lag_are_absent_until_set() {
        let m = Metrics::new().unwrap();
        let text = m.render();
        for name in AFTER_FIRST_EVENT {
            assert!(!text.contains(name), "{name} shown before it has a value");
        }
        m.watermark.set(1_700_000_000.0);
        let text = m.render();
        assert!(
            text.contains("pretext_watermark_seconds 1700000000"),
            "{text}"
        );
        assert!(!text.contains("pretext_event_time_lag_seconds"));
        assert!(!text.contains("NaN"));
    }

    #[test]
    fn engine_counters_advance_by_deltas() {
        let m = Metrics::new().unwrap();
        let mut s = EngineStats::default();
        s.events[0] = 5;
        s.triggers[0][1] = 2;
        s.conversions[1][0] = 1;
        s.pending_checks = 3;
        m.observe_engine(&s);
        s.events[0] = 7;
        m.observe_engine(&s);
        let text = m.render();
        assert!(
            text.contains("pretext_events_total{type=\"product_view\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("pretext_triggers_total{group=\"holdout\",type=\"viewed_not_bought\"} 2")
        );
        assert!(text.contains(
            "pretext_conversions_total{group=\"treated\",type=\"promo_on_viewed_item\"} 1"
        ));
        assert!(text.contains("pretext_pending_checks 3"));
    }
}
