//! Static checks of the operations deliverables: the Helm chart, the Grafana
//! dashboard, the JSON Schemas and the AsyncAPI document.
//!
//! The helm CLI cannot be installed where CI runs, so the chart is checked
//! as text: every `.Values` path a template reads exists in values.yaml, the
//! rendered TOML covers every key of config/default.toml, the required kinds,
//! probes and security settings are present, and every metric named by the
//! dashboard or the alerts is one pretext exports. The schemas are compiled
//! with `jsonschema` and checked against hand-written events, the example
//! triggers, and the bundled sample (against the decoder itself as well).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use jsonschema::{Draft, Resource, Validator};
use serde_json::{json, Value};

#[path = "common/metric_names.rs"]
mod metric_names;

use metric_names::metric_names;
/// Every metric pretext exports (a unit test in src/metrics.rs holds the
/// list to what the registry renders).
use pretext::metrics::NAMES as METRICS;

use pretext::event::EVENT_TYPES;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn chart() -> PathBuf {
    root().join("helm/pretext")
}

/// Every template of the chart, by file name, in name order.
fn templates() -> BTreeMap<String, String> {
    let dir = chart().join("templates");
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        out.insert(name, fs::read_to_string(&path).unwrap());
    }
    assert!(!out.is_empty(), "no templates in {}", dir.display());
    out
}

fn values() -> serde_yaml::Value {
    serde_yaml::from_str(&read("helm/pretext/values.yaml")).expect("values.yaml parses as YAML")
}

/// The longest run of `[A-Za-z0-9_.]` at the start of `s`, without a
/// trailing dot: the path after `.Values.` or `$alias.`.
fn path_prefix(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(s.len());
    s[..end].trim_end_matches('.')
}

/// The value at a dotted path, if every step exists.
fn lookup<'a>(v: &'a serde_yaml::Value, path: &str) -> Option<&'a serde_yaml::Value> {
    path.split('.')
        .filter(|p| !p.is_empty())
        .try_fold(v, |node, key| node.as_mapping()?.get(key))
}

/// The `.Values` paths a template reads, resolving `$alias := .Values.x`
/// so that `$alias.y` counts as `x.y`.
fn values_paths(template: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    for (i, _) in template.match_indices(":= .Values.") {
        let before = template[..i].trim_end();
        let name_start = before.rfind('$').expect("an alias starts with $");
        let name = before[name_start..].to_string();
        let path = path_prefix(&template[i + ":= .Values.".len()..]).to_string();
        aliases.insert(name, path);
    }
    for (i, _) in template.match_indices(".Values.") {
        paths.insert(path_prefix(&template[i + ".Values.".len()..]).to_string());
    }
    for (alias, base) in &aliases {
        let needle = format!("{alias}.");
        for (i, _) in template.match_indices(&needle) {
            // `$c.` must not be the tail of a longer name such as `$cx.`.
            let rest = path_prefix(&template[i + needle.len()..]);
            if !rest.is_empty() {
                paths.insert(format!("{base}.{rest}"));
            }
        }
    }
    paths
}

#[test]
fn chart_and_values_parse_as_yaml() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&read("helm/pretext/Chart.yaml")).expect("Chart.yaml parses");
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("pretext"));
    assert!(
        chart["version"].as_str().is_some(),
        "Chart.yaml has a version"
    );
    assert!(
        chart["appVersion"].as_str().is_some(),
        "Chart.yaml has an appVersion"
    );
    assert!(values().as_mapping().is_some(), "values.yaml is a mapping");
}

#[test]
fn every_values_path_used_in_templates_exists() {
    let values = values();
    let mut missing = Vec::new();
    let mut used = 0;
    for (name, text) in templates() {
        for path in values_paths(&text) {
            used += 1;
            if lookup(&values, &path).is_none() {
                missing.push(format!("{name}: .Values.{path}"));
            }
        }
    }
    assert!(
        used > 50,
        "only {used} .Values paths found: is the scanner broken?"
    );
    assert!(
        missing.is_empty(),
        "not in values.yaml:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_value_is_commented() {
    // A key is documented by a comment on the line above it, or by a
    // `# --` comment on a key it is nested in (a default object such as
    // `resources`); a key that only opens a section needs none.
    let text = read("helm/pretext/values.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let mut stack: Vec<(usize, bool)> = Vec::new(); // (indent, documents its children)
    let mut uncommented = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((_, rest)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        while stack.last().is_some_and(|&(ind, _)| ind >= indent) {
            stack.pop();
        }
        // The block of comment lines right above the key.
        let comment: Vec<&str> = lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim_start())
            .take_while(|l| l.starts_with('#'))
            .collect();
        let inherited = stack.iter().any(|&(_, d)| d);
        let opens_section = rest.trim().is_empty();
        if comment.is_empty() && !inherited && !opens_section {
            uncommented.push(format!("values.yaml:{}: {}", i + 1, line));
        }
        stack.push((
            indent,
            inherited || comment.iter().any(|c| c.starts_with("# --")),
        ));
    }
    assert!(
        uncommented.is_empty(),
        "values without a comment:\n{}",
        uncommented.join("\n")
    );
}

/// `section.key` of every line `key = ...` in a TOML-like text, tracking
/// `[section]` headers; quoted keys (the kafka.client map) are skipped.
fn toml_keys_in_template(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = h.to_string();
        } else if let Some((k, _)) = t.split_once(" = ") {
            if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !section.is_empty() {
                keys.insert(format!("{section}.{k}"));
            }
        }
    }
    keys
}

fn flatten_toml(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) if key != "kafka.client" => flatten_toml(&key, inner, out),
            _ => {
                out.insert(key, v.clone());
            }
        }
    }
}

fn default_config() -> BTreeMap<String, toml::Value> {
    let table: toml::Table = read("config/default.toml")
        .parse()
        .expect("config/default.toml parses");
    let mut flat = BTreeMap::new();
    flatten_toml("", &table, &mut flat);
    flat
}

#[test]
fn the_configmap_renders_every_configuration_key() {
    let configmap = templates()
        .remove("configmap.yaml")
        .expect("templates/configmap.yaml");
    let rendered = toml_keys_in_template(&configmap);
    let defaults = default_config();
    let missing: Vec<_> = defaults
        .keys()
        .filter(|k| *k != "kafka.client" && !rendered.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys of config/default.toml the chart's ConfigMap does not render \
         (add them to values.yaml `config` and templates/configmap.yaml): {missing:?}"
    );
    assert!(
        configmap.contains("[kafka.client]"),
        "the pass-through map is rendered"
    );
    let unknown: Vec<_> = rendered
        .iter()
        .filter(|k| !defaults.contains_key(*k))
        .collect();
    assert!(
        unknown.is_empty(),
        "rendered keys pretext does not know: {unknown:?}"
    );
}

#[test]
fn the_chart_defaults_are_pretexts_defaults() {
    // values.yaml `config` mirrors config/default.toml; the chart itself sets
    // state.dir and http.listen for the pod, and points at a broker named
    // `kafka` rather than localhost.
    let values = values();
    let pod_specific = ["state.dir", "http.listen", "kafka.brokers", "kafka.client"];
    let mut differ = Vec::new();
    for (key, default) in default_config() {
        if pod_specific.contains(&key.as_str()) {
            continue;
        }
        let Some(v) = lookup(&values["config"], &key) else {
            differ.push(format!("config.{key} missing"));
            continue;
        };
        let chart: Value = serde_json::to_value(v).unwrap();
        let want: Value = serde_json::to_value(&default).unwrap();
        let same = match (chart.as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => chart == want,
        };
        if !same {
            differ.push(format!("config.{key}: chart {chart}, pretext {want}"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

#[test]
fn the_required_kinds_are_templated() {
    let kinds: BTreeSet<String> = templates()
        .values()
        .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|l| l.strip_prefix("kind: ").map(|k| k.trim().to_string()))
        .collect();
    for kind in [
        "StatefulSet",
        "ConfigMap",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
    ] {
        assert!(
            kinds.contains(kind),
            "no template of kind {kind}: {kinds:?}"
        );
    }
    let all = templates();
    assert!(all["servicemonitor.yaml"].contains("monitoring.coreos.com/v1"));
    assert!(all["servicemonitor.yaml"].contains("if .Values.serviceMonitor.enabled"));
    assert!(all["prometheusrule.yaml"].contains("monitoring.coreos.com/v1"));
    assert!(all["prometheusrule.yaml"].contains("if .Values.prometheusRule.enabled"));
    assert!(all.contains_key("_helpers.tpl") && all.contains_key("NOTES.txt"));
}

/// The text of a YAML block: the lines after the one containing `key:`
/// that are indented deeper than it.
fn block<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("no `{key}` in the template"));
    let indent = lines[start].len() - lines[start].trim_start().len();
    lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .copied()
        .collect()
}

#[test]
fn the_statefulset_probes_secures_and_persists() {
    let sts = templates().remove("statefulset.yaml").unwrap();
    let probe_path = |probe: &str| {
        block(&sts, probe)
            .iter()
            .find_map(|l| l.trim().strip_prefix("path: ").map(str::to_owned))
            .unwrap_or_else(|| panic!("{probe} has no path"))
    };
    assert_eq!(probe_path("livenessProbe:"), "/healthz");
    assert_eq!(probe_path("readinessProbe:"), "/readyz");
    assert!(sts.contains("volumeClaimTemplates:"), "state on a PVC");
    assert!(sts.contains("mountPath: {{ .Values.persistence.mountPath }}"));
    assert!(
        sts.contains("name: PRETEXT__KAFKA__GROUP_ID"),
        "one group for every ordinal"
    );
    assert!(sts.contains("securityContext:\n            {{- toYaml .Values.securityContext"));
    assert!(sts.contains("{{- toYaml .Values.podSecurityContext"));
    assert!(
        sts.contains("- name: tmp\n              mountPath: /tmp"),
        "a writable /tmp"
    );
    assert!(
        sts.contains("- name: tmp\n          emptyDir:"),
        "/tmp is an emptyDir"
    );
    assert!(
        sts.contains("terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}")
    );
    for secret_env in [
        "PRETEXT__KAFKA__CLIENT__SASL__USERNAME",
        "PRETEXT__KAFKA__CLIENT__SASL__PASSWORD",
    ] {
        let at = sts
            .find(secret_env)
            .unwrap_or_else(|| panic!("{secret_env}"));
        assert!(
            sts[at..].trim_start_matches(secret_env).trim_start()[..200].contains("secretKeyRef"),
            "{secret_env} comes from a Secret"
        );
    }

    let values = values();
    let sc = &values["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    let drop: Vec<_> = sc["capabilities"]["drop"]
        .as_sequence()
        .expect("capabilities.drop")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(drop, ["ALL"]);
    assert_eq!(
        values["podSecurityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert_eq!(
        sc["runAsUser"].as_u64(),
        Some(10001),
        "the Dockerfile's user"
    );

    // The grace period outlasts kafka.shutdown_timeout (whole seconds here).
    let grace = values["terminationGracePeriodSeconds"].as_u64().unwrap();
    let shutdown = values["config"]["kafka"]["shutdown_timeout"]
        .as_str()
        .unwrap();
    let secs: u64 = shutdown
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(
        grace > secs,
        "terminationGracePeriodSeconds {grace} <= shutdown_timeout {shutdown}"
    );
}

#[test]
fn the_configmap_sets_pod_addresses_and_keeps_secrets_out() {
    let cm = templates().remove("configmap.yaml").unwrap();
    assert!(
        cm.contains("listen = {{ printf \"0.0.0.0:%d\""),
        "listens on every interface in a pod"
    );
    assert!(cm.contains("dir = {{ printf \"%s/state\" .Values.persistence.mountPath"));
    for secret in ["sasl.password", "sasl.username", "ssl.key.password"] {
        assert!(
            !cm.contains(secret),
            "{secret} must not be written to the ConfigMap"
        );
    }
}

#[test]
fn the_dockerfile_builds_and_runs_as_the_charts_user() {
    let df = read("Dockerfile");
    assert!(df.contains("FROM rust:1-bookworm AS builder"));
    assert!(df.contains("libclang-dev"));
    assert!(df.contains("cargo build --release --locked"));
    assert!(df.contains("FROM debian:bookworm-slim"));
    assert!(df.contains("ca-certificates"));
    assert!(df.contains("USER 10001"));
    assert!(df.contains(r#"ENTRYPOINT ["/usr/local/bin/pretext"]"#));
    assert!(df.contains(r#"CMD ["run", "--config", "/etc/pretext/pretext.toml"]"#));
    // Everything the build reads must be in the context.
    let ignore = read(".dockerignore");
    for needed in [
        "src",
        "config",
        "examples",
        "benches",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        assert!(
            df.lines()
                .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
                .any(|l| l
                    .split_whitespace()
                    .any(|w| w.trim_end_matches('/') == needed)),
            "the builder copies {needed}"
        );
        assert!(
            !ignore.lines().any(|l| l.trim_end_matches('/') == needed),
            ".dockerignore excludes {needed}"
        );
    }
}

#[test]
fn the_dashboard_and_alerts_use_only_exported_metrics() {
    let listed: BTreeSet<&str> = METRICS.iter().copied().collect();
    let dashboard = read("dashboards/pretext.json");
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let rules = templates().remove("prometheusrule.yaml").unwrap();
    for (what, text) in [
        ("dashboards/pretext.json", &dashboard),
        ("prometheusrule.yaml", &rules),
    ] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{what} names no metric");
        let unknown: Vec<_> = used
            .iter()
            .filter(|m| !listed.contains(m.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{what} uses metrics pretext does not export: {unknown:?}"
        );
    }
    let on_dashboard = metric_names(&dashboard);
    for wanted in [
        "pretext_events_total",
        "pretext_events_rejected_total",
        "pretext_triggers_total",
        "pretext_suppressed_total",
        "pretext_batch_duration_seconds",
        "pretext_event_time_lag_seconds",
        "pretext_watermark_seconds",
        "pretext_consumer_lag_messages",
        "pretext_pending_checks",
        "pretext_state_size_bytes",
        "pretext_state_keys",
        "pretext_ready",
    ] {
        assert!(
            on_dashboard.contains(wanted),
            "the dashboard has no panel on {wanted}"
        );
    }
    assert!(
        dashboard.contains("histogram_quantile(0.5")
            && dashboard.contains("histogram_quantile(0.99")
    );
    let on_alerts = metric_names(&rules);
    for wanted in [
        "pretext_consumer_lag_messages",
        "pretext_dead_letters_total",
        "pretext_triggers_total",
        "pretext_events_total",
        "pretext_ready",
    ] {
        assert!(on_alerts.contains(wanted), "no alert on {wanted}");
    }
}

#[test]
fn the_asyncapi_document_names_six_topics_and_existing_schemas() {
    let text = read("docs/asyncapi.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("asyncapi.yaml parses");
    assert!(doc["asyncapi"]
        .as_str()
        .is_some_and(|v| v.starts_with('3') || v.starts_with("2.6")));
    for topic in [
        "pretext.web-events",
        "pretext.transactions",
        "pretext.promotions",
        "pretext.customers",
        "pretext.triggers",
        "pretext.dead-letter",
    ] {
        assert!(
            text.contains(&format!("address: {topic}")),
            "no channel for {topic}"
        );
    }
    // Every `$ref` to a file under schemas/ names a file that exists.
    let mut refs = 0;
    for (i, _) in text.match_indices("../schemas/") {
        let rest = &text[i + "../schemas/".len()..];
        let file = &rest[..rest
            .find(|c: char| c == '\'' || c == '"' || c == '#' || c.is_whitespace())
            .unwrap()];
        assert!(
            root().join("schemas").join(file).is_file(),
            "asyncapi.yaml refers to a missing schemas/{file}"
        );
        refs += 1;
    }
    assert!(refs >= 3, "asyncapi.yaml refers to the schemas");
}

// ---------------------------------------------------------------- schemas

fn schema_files() -> BTreeMap<String, Value> {
    let dir = root().join("schemas");
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(&dir).expect("schemas/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = fs::read_to_string(&path).unwrap();
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            out.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                value,
            );
        }
    }
    out
}

/// Compiles `name` with every sibling registered under its `$id`, as a tool
/// that loads the directory would (no network: the ids are not fetchable).
fn compile(name: &str) -> Validator {
    let files = schema_files();
    let mut opts = jsonschema::options();
    opts.with_draft(Draft::Draft202012);
    for schema in files.values() {
        let id = schema["$id"]
            .as_str()
            .expect("every schema has an $id")
            .to_string();
        opts.with_resource(id, Resource::from_contents(schema.clone()).unwrap());
    }
    let schema = files
        .get(name)
        .unwrap_or_else(|| panic!("no schemas/{name}"));
    opts.build(schema)
        .unwrap_or_else(|e| panic!("schemas/{name} does not compile: {e}"))
}

fn errors(v: &Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn every_schema_parses_and_compiles() {
    let files = schema_files();
    let mut expected: BTreeSet<String> = EVENT_TYPES.iter().map(|t| format!("{t}.json")).collect();
    expected.extend(["event.json", "trigger.json", "dead-letter.json"].map(String::from));
    let present: BTreeSet<String> = files.keys().cloned().collect();
    let absent: Vec<_> = expected.difference(&present).collect();
    assert!(absent.is_empty(), "schemas missing: {absent:?}");
    for (name, schema) in &files {
        assert_eq!(
            schema["$schema"].as_str(),
            Some("https://json-schema.org/draft/2020-12/schema"),
            "{name} declares draft 2020-12"
        );
        assert!(
            schema["$id"]
                .as_str()
                .is_some_and(|id| id.ends_with(&format!("/{name}"))),
            "{name}: $id ends with its file name"
        );
        compile(name);
    }
}

fn valid_events() -> Vec<Value> {
    vec![
        json!({"type":"product_view","event_id":"e1","ts":"2026-11-22T10:15:00Z","cookie_id":"ck_1","product_id":"SKU-1","category":"coats","price":89.9,"crm_id":"C42","referrer":{"any":"extra"}}),
        json!({"type":"product_view","event_id":"e1b","ts":1795342500000i64,"cookie_id":"ck_1","product_id":"SKU-1","category":null,"price":null,"crm_id":null}),
        json!({"type":"add_to_cart","event_id":"e2","ts":"2026-11-22T11:15:00.250+01:00","cookie_id":"ck_1","product_id":"SKU-1","quantity":2,"price":89}),
        json!({"type":"identify","event_id":"e3","ts":0,"cookie_id":"ck_1","crm_id":"C42","source":"login"}),
        json!({"type":"purchase","event_id":"e4","ts":"2026-11-22T12:00:00Z","order_id":"o-1","channel":"store","crm_id":"C42","items":[{"product_id":"SKU-1","quantity":1,"price":89.9},{"product_id":"SKU-2"}],"total":120.5}),
        json!({"type":"purchase","event_id":"e4b","ts":"2026-11-22T12:00:00Z","order_id":"o-2","channel":"web","cookie_id":"ck_1","crm_id":null,"items":[{"product_id":"SKU-1"}]}),
        json!({"type":"promotion","event_id":"e5","ts":"2026-11-22T09:00:00Z","product_id":"SKU-1","discount_pct":100,"promo_price":0.5,"valid_until":"2026-12-01T00:00:00Z"}),
        json!({"type":"promotion","event_id":"e5b","ts":"2026-11-22T09:00:00Z","product_id":"SKU-1","discount_pct":0.01,"valid_until":1796083200000i64}),
        json!({"type":"promotion","event_id":"e5c","ts":"2026-11-22T09:00:00Z","product_id":"SKU-1"}),
        json!({"type":"consent","event_id":"e6","ts":"2026-11-22T09:00:00-05:00","crm_id":"C42","email":true,"sms":false,"ads":null}),
        json!({"type":"erase","event_id":"e7","ts":"2026-11-22T09:00:00Z","crm_id":"C42"}),
        json!({"type":"erase","event_id":"x".repeat(128),"ts":"2026-11-22T09:00:00Z","crm_id":"é".repeat(128)}),
    ]
}

fn invalid_events() -> Vec<(&'static str, Value)> {
    vec![
        (
            "unknown type",
            json!({"type":"page_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p"}),
        ),
        ("type not a string", json!({"type":1,"event_id":"e","ts":0})),
        ("no type", json!({"event_id":"e","ts":0,"crm_id":"C"})),
        (
            "missing product_id",
            json!({"type":"product_view","event_id":"e","ts":0,"cookie_id":"c"}),
        ),
        (
            "null required field",
            json!({"type":"product_view","event_id":"e","ts":0,"cookie_id":null,"product_id":"p"}),
        ),
        (
            "missing event_id",
            json!({"type":"erase","ts":0,"crm_id":"C"}),
        ),
        (
            "missing ts",
            json!({"type":"erase","event_id":"e","crm_id":"C"}),
        ),
        (
            "empty id",
            json!({"type":"erase","event_id":"e","ts":0,"crm_id":""}),
        ),
        (
            "id over 128 chars",
            json!({"type":"erase","event_id":"e","ts":0,"crm_id":"x".repeat(129)}),
        ),
        (
            "ts without offset",
            json!({"type":"erase","event_id":"e","ts":"2026-11-22T10:15:00","crm_id":"C"}),
        ),
        (
            "ts a date only",
            json!({"type":"erase","event_id":"e","ts":"2026-11-22","crm_id":"C"}),
        ),
        (
            "ts fractional number",
            json!({"type":"erase","event_id":"e","ts":1.5,"crm_id":"C"}),
        ),
        (
            "ts a boolean",
            json!({"type":"erase","event_id":"e","ts":true,"crm_id":"C"}),
        ),
        (
            "price a string",
            json!({"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","price":"9"}),
        ),
        (
            "quantity fractional",
            json!({"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":2.5}),
        ),
        (
            "source not a string",
            json!({"type":"identify","event_id":"e","ts":0,"cookie_id":"c","crm_id":"C","source":false}),
        ),
        (
            "channel not web/store",
            json!({"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"app","crm_id":"C","items":[{"product_id":"p"}]}),
        ),
        (
            "empty items",
            json!({"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[]}),
        ),
        (
            "item without product_id",
            json!({"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"price":1}]}),
        ),
        (
            "purchase with no customer",
            json!({"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","items":[{"product_id":"p"}]}),
        ),
        (
            "purchase with null customer",
            json!({"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":null,"cookie_id":null,"items":[{"product_id":"p"}]}),
        ),
        (
            "discount 0",
            json!({"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":0}),
        ),
        (
            "discount over 100",
            json!({"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":100.5}),
        ),
        (
            "valid_until not a time",
            json!({"type":"promotion","event_id":"e","ts":0,"product_id":"p","valid_until":"soon"}),
        ),
        (
            "consent not a boolean",
            json!({"type":"consent","event_id":"e","ts":0,"crm_id":"C","email":"yes"}),
        ),
        ("not an object", json!(["product_view"])),
    ]
}

#[test]
fn the_event_schema_accepts_each_type_and_rejects_bad_events() {
    let event = compile("event.json");
    let valid = valid_events();
    let covered: BTreeSet<&str> = valid.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(covered, EVENT_TYPES.iter().copied().collect());
    for e in &valid {
        assert!(event.is_valid(e), "rejected {e}: {:?}", errors(&event, e));
        // The per-type schema accepts it on its own too.
        let own = compile(&format!("{}.json", e["type"].as_str().unwrap()));
        assert!(own.is_valid(e), "{} rejected {e}", e["type"]);
    }
    for (why, e) in invalid_events() {
        assert!(!event.is_valid(&e), "accepted ({why}): {e}");
    }
}

#[test]
fn the_schemas_agree_with_the_decoder() {
    // The decoder is the contract's implementation: on every hand-written
    // event, the schema's verdict is the decoder's.
    let event = compile("event.json");
    let mut cases: Vec<Value> = valid_events();
    cases.extend(invalid_events().into_iter().map(|(_, e)| e));
    for e in cases {
        let bytes = serde_json::to_vec(&e).unwrap();
        let decoded = pretext::decode::decode(&bytes, 1 << 20);
        assert_eq!(
            event.is_valid(&e),
            decoded.is_ok(),
            "schema and decoder disagree on {e}: decoder says {:?}",
            decoded.err().map(|r| r.error)
        );
    }
}

#[test]
fn the_trigger_schema_accepts_the_example_triggers() {
    let trigger = compile("trigger.json");
    let text = read("tests/data/triggers-example.jsonl");
    let mut kinds = BTreeSet::new();
    let (mut null_category, mut promotion_with_null) = (false, false);
    for (n, line) in text.lines().enumerate() {
        let t: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        assert!(
            trigger.is_valid(&t),
            "line {}: {:?}",
            n + 1,
            errors(&trigger, &t)
        );
        kinds.insert(t["type"].as_str().unwrap().to_string());
        null_category |= t["category"].is_null();
        promotion_with_null |= t["promotion"]
            .as_object()
            .is_some_and(|p| p.values().any(Value::is_null));
    }
    assert_eq!(kinds.len(), 2, "both trigger types are exemplified");
    assert!(null_category && promotion_with_null);

    let good: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let broken = |field: &str, value: Value| {
        let mut t = good.clone();
        t[field] = value;
        t
    };
    for (why, t) in [
        (
            "offset instead of Z",
            broken("fired_at", json!("2026-11-22T11:15:00+01:00")),
        ),
        (
            "zero milliseconds written",
            broken("fired_at", json!("2026-11-22T10:15:00.000Z")),
        ),
        ("epoch number", broken("fired_at", json!(1795342500000i64))),
        ("unknown type", broken("type", json!("abandoned_cart"))),
        ("unknown channel", broken("channels", json!(["push"]))),
        (
            "six cookies",
            broken("cookie_ids", json!(["a", "b", "c", "d", "e", "f"])),
        ),
        ("short id", broken("trigger_id", json!("5f0c9d1e"))),
        ("viewed_not_bought with promotion", {
            let mut t = broken("type", json!("viewed_not_bought"));
            t["promotion"] = json!({"discount_pct":null,"promo_price":null,"valid_until":null});
            t
        }),
    ] {
        assert!(!trigger.is_valid(&t), "accepted ({why}): {t}");
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("promotion");
    assert!(!trigger.is_valid(&missing), "promotion is always present");
}

#[test]
fn the_dead_letter_schema_accepts_the_contract_example() {
    let dl = compile("dead-letter.json");
    let example = json!({"error": "missing field `product_id`", "reason": "missing_field",
        "topic": "pretext.web-events", "partition": 3, "offset": 1812,
        "payload": "{\"type\":\"product_view\"}"});
    assert!(dl.is_valid(&example), "{:?}", errors(&dl, &example));
    let b64 = json!({"error": "invalid utf-8 at byte 0", "reason": "invalid_utf8",
        "topic": "in.jsonl", "partition": 0, "offset": 7, "payload_b64": "/w=="});
    assert!(dl.is_valid(&b64));
    let mut none = example.clone();
    none.as_object_mut().unwrap().remove("payload");
    assert!(!dl.is_valid(&none), "a dead letter carries its payload");
    let mut bad_reason = example.clone();
    bad_reason["reason"] = json!("oops");
    assert!(!dl.is_valid(&bad_reason));
    // The real writer's output validates.
    let written: Value = serde_json::from_str(
        &pretext::deadletter::DeadLetter {
            error: "unknown type `x`",
            reason: pretext::decode::Reason::UnknownType,
            topic: "t",
            partition: 1,
            offset: 2,
            payload: b"\xff\xfe",
        }
        .to_json(),
    )
    .unwrap();
    assert!(dl.is_valid(&written), "{written}");
}

#[test]
fn the_bundled_sample_validates_against_the_event_schema() {
    let path: &Path = &root().join("examples/sample.jsonl");
    let text = fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): the ops test checks the bundled sample against schemas/event.json",
            path.display()
        )
    });
    let event = compile("event.json");
    let (mut total, mut invalid, mut disagree) = (0usize, 0usize, Vec::new());
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if n > 0 && line.is_empty() && n == text.split(|&b| b == b'\n').count() - 1 {
            break; // the final newline ends the last line; it is not a message
        }
        total += 1;
        let schema_ok = serde_json::from_slice::<Value>(line).is_ok_and(|v| event.is_valid(&v));
        if !schema_ok {
            invalid += 1;
        }
        let decoder_ok = pretext::decode::decode(line, 1 << 20).is_ok();
        if schema_ok != decoder_ok && disagree.len() < 10 {
            disagree.push(format!(
                "line {}: schema {schema_ok}, decoder {decoder_ok}",
                n + 1
            ));
        }
    }
    assert!(total >= 1000, "the sample has only {total} lines");
    assert!(
        invalid * 100 < total,
        "{invalid} of {total} sample lines fail schemas/event.json (at most 1% are deliberately bad)"
    );
    assert!(
        disagree.is_empty(),
        "schema and decoder disagree:\n{}",
        disagree.join("\n")
    );
}

#[test]
fn the_scanners_find_what_they_check() {
    // Guards the text scanners above against silently finding nothing.
    let t = "{{- $c := .Values.config }}{{ $c.kafka.brokers }} {{ .Values.a.b_c }}. {{ $cx.y }}";
    let found = values_paths(t);
    let want: BTreeSet<String> = ["config", "config.kafka.brokers", "a.b_c"]
        .map(String::from)
        .into();
    assert_eq!(found, want);
    let names = metric_names(
        "rate(pretext_batch_duration_seconds_bucket{x=\"1\"}[5m]) pretext_ready==0 xpretext_no",
    );
    let want: BTreeSet<String> = ["pretext_batch_duration_seconds", "pretext_ready"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}
