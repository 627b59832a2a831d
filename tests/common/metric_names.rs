//! The metric names a dashboard or an alert rule uses, read from its text.
//! Shared by the static ops checks and the end-to-end check against a
//! running pretext's /metrics.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeSet;

/// Histograms, whose series carry a `_bucket`, `_sum` or `_count` suffix.
const HISTOGRAMS: &[&str] = &["pretext_batch_duration_seconds"];

/// Every `pretext_[a-z_]+` word in a text, histogram suffixes stripped.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("pretext_") {
        // A match inside a longer identifier (`xpretext_`) is not a name.
        if text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let end = text[i..]
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .map_or(text.len(), |e| i + e);
        names.insert(strip_histogram_suffix(text[i..end].trim_end_matches('_')));
    }
    names
}

fn strip_histogram_suffix(name: &str) -> String {
    for h in HISTOGRAMS {
        for suffix in ["_bucket", "_sum", "_count"] {
            if name.strip_suffix(suffix) == Some(h) {
                return h.to_string();
            }
        }
    }
    name.to_string()
}

/// The metric names the Grafana dashboard and the Prometheus rules use,
/// read from the files in the repository.
pub fn used_by_dashboard_and_alerts() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = BTreeSet::new();
    for rel in [
        "dashboards/pretext.json",
        "helm/pretext/templates/prometheusrule.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(rel)).expect(rel);
        names.extend(metric_names(&text));
    }
    names
}
