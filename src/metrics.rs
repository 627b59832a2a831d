//! Every metric pretext exports, defined once, in one registry.
//!
//! Labelled children are resolved when the metrics are created, never per
//! message, and label values come from bounded sets (event types, reasons,
//! trigger types, assigned partitions). Engine-derived counters are advanced
//! from `EngineStats` deltas once per batch.

use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::engine::stats::ByKindGroup;

use crate::decode::Reason;
use crate::engine::{EngineStats, Suppressed};
use crate::event::EVENT_TYPES;
use crate::trigger::{Group, TriggerKind};

/// The name of every metric pretext exports: what dashboards and alerts may
/// use (tests/ops_static.rs and tests/live_e2e.rs hold them to it).
pub const NAMES: [&str; 17] = [
    "pretext_events_total",
    "pretext_events_rejected_total",
    "pretext_events_duplicate_total",
    "pretext_events_ignored_erased_total",
    "pretext_triggers_total",
    "pretext_conversions_total",
    "pretext_suppressed_total",
    "pretext_batch_duration_seconds",
    "pretext_event_time_lag_seconds",
    "pretext_watermark_seconds",
    "pretext_pending_checks",
    "pretext_consumer_lag_messages",
    "pretext_state_size_bytes",
    "pretext_state_keys",
    "pretext_dead_letters_total",
    "pretext_ready",
    "pretext_produce_errors_total",
];

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
    pub batch_duration: Histogram,
    pub event_time_lag: Gauge,
    pub watermark: Gauge,
    pub pending_checks: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub state_size_bytes: IntGauge,
    pub state_keys: IntGauge,
    pub dead_letters: IntCounter,
    pub ready: IntGauge,
    pub produce_errors: IntCounter,
    /// The engine counts already exported.
    last: Mutex<EngineStats>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot register metric: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, label: &str, values: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(vec.clone()))?;
            // Resolve every child now, so each series shows (at 0) from the start.
            Ok::<_, prometheus::Error>(
                values
                    .iter()
                    .map(|v| vec.with_label_values(&[v]))
                    .collect::<Vec<_>>(),
            )
        };
        let by_kind_group = |name: &str, help: &str| {
            let vec = IntCounterVec::new(Opts::new(name, help), &["type", "group"])?;
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
        let m = Metrics {
            events: counter_vec(
                "pretext_events_total",
                "Events applied, by type",
                "type",
                &EVENT_TYPES,
            )?,
            rejected: counter_vec(
                "pretext_events_rejected_total",
                "Input messages rejected (dead-lettered), by reason",
                "reason",
                &reasons,
            )?,
            triggers: by_kind_group(
                "pretext_triggers_total",
                "Triggers fired, by type and group (treated or holdout)",
            )?,
            conversions: by_kind_group(
                "pretext_conversions_total",
                "Triggers converted by a purchase within the attribution window, by type and group",
            )?,
            suppressed: counter_vec(
                "pretext_suppressed_total",
                "Triggers considered that did not fire, by reason",
                "reason",
                &suppressed,
            )?,
            duplicates: IntCounter::new(
                "pretext_events_duplicate_total",
                "Events ignored as duplicates of an applied event_id",
            )?,
            ignored_erased: IntCounter::new(
                "pretext_events_ignored_erased_total",
                "Events of an erased customer stamped at or before the erase, ignored",
            )?,
            batch_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "pretext_batch_duration_seconds",
                    "Time to apply a batch, produce its output and commit",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            event_time_lag: Gauge::new(
                "pretext_event_time_lag_seconds",
                "Wall clock minus the highest applied event time",
            )?,
            watermark: Gauge::new(
                "pretext_watermark_seconds",
                "The event-time watermark, Unix seconds",
            )?,
            pending_checks: IntGauge::new(
                "pretext_pending_checks",
                "viewed_not_bought checks pending",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "pretext_consumer_lag_messages",
                    "Messages behind the partition's end",
                ),
                &["topic", "partition"],
            )?,
            state_size_bytes: IntGauge::new(
                "pretext_state_size_bytes",
                "RocksDB size on disk and in memtables, approximate",
            )?,
            state_keys: IntGauge::new("pretext_state_keys", "RocksDB keys, approximate")?,
            dead_letters: IntCounter::new("pretext_dead_letters_total", "Dead letters produced")?,
            ready: IntGauge::new(
                "pretext_ready",
                "1 when partitions are assigned and the state is open",
            )?,
            produce_errors: IntCounter::new(
                "pretext_produce_errors_total",
                "Produced messages that failed delivery",
            )?,
            last: Mutex::new(EngineStats::default()),
            registry,
        };
        let others: [Box<dyn Collector>; 12] = [
            Box::new(m.duplicates.clone()),
            Box::new(m.ignored_erased.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.produce_errors.clone()),
            Box::new(m.batch_duration.clone()),
            Box::new(m.event_time_lag.clone()),
            Box::new(m.watermark.clone()),
            Box::new(m.pending_checks.clone()),
            Box::new(m.state_size_bytes.clone()),
            Box::new(m.state_keys.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.consumer_lag.clone()),
        ];
        for c in others {
            m.registry.register(c)?;
        }
        Ok(m)
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
        // Lag series exist per assigned partition; make one.
        m.consumer_lag.with_label_values(&["t", "0"]).set(0);
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
