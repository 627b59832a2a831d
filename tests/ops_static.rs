//! Static checks of the operations deliverables that no tool makes: every
//! chart value documented, the Dockerfile (no Docker engine where pretext is
//! built: it is read, never built), every metric named by the dashboard or
//! the alerts one pretext exports, the AsyncAPI document, and the JSON
//! Schemas compiled with `jsonschema` and checked against hand-written
//! events, the example triggers and the decoder.
//!
//! The chart itself is rendered and checked by the real tools (helm,
//! kubernetes-validate, promtool, yamllint, check-jsonschema) in
//! tests/deploy.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

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
        "pretext_conversions_total",
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

/// A heading's anchor as GitHub makes it: lowercase, punctuation other
/// than `-` and `_` dropped, each space a `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_runbook_link_lands_on_a_heading() {
    let ops = read("docs/operations.md");
    let anchors: BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let mut links = 0;
    for file in [
        read("helm/pretext/templates/prometheusrule.yaml"),
        read("tests/data/alerts.test.yaml"),
    ] {
        let link = "docs/operations.md#";
        for (at, _) in file.match_indices(link) {
            let target: String = file[at + link.len()..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect();
            assert!(anchors.contains(&target), "no heading for #{target}");
            links += 1;
        }
    }
    assert!(links >= 6, "{links} runbook links found");
    assert_eq!(
        anchor("PretextNotReady / PretextAbsent"),
        "pretextnotready--pretextabsent"
    );
}

#[test]
fn the_asyncapi_document_names_every_topic_and_existing_schemas() {
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
        "pretext.holdout",
        "pretext.conversions",
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

/// The base URI the `jsonschema` crate gives a schema without `$id`.
const BASE: &str = "json-schema:///";

/// Compiles `name` with every sibling registered where a relative `$ref`
/// resolves from it: the schemas have no `$id`, so a `$ref` to
/// `common.json` means the sibling file (check-jsonschema resolves it from
/// the file's own location; tests/deploy.rs runs it).
fn compile(name: &str) -> Validator {
    let files = schema_files();
    let mut opts = jsonschema::options();
    opts.with_draft(Draft::Draft202012);
    for (file, schema) in &files {
        opts.with_resource(
            format!("{BASE}{file}"),
            Resource::from_contents(schema.clone()).unwrap(),
        );
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
    expected.extend(
        [
            "event.json",
            "trigger.json",
            "dead-letter.json",
            "conversion.json",
        ]
        .map(String::from),
    );
    let present: BTreeSet<String> = files.keys().cloned().collect();
    let absent: Vec<_> = expected.difference(&present).collect();
    assert!(absent.is_empty(), "schemas missing: {absent:?}");
    for (name, schema) in &files {
        assert_eq!(
            schema["$schema"].as_str(),
            Some("https://json-schema.org/draft/2020-12/schema"),
            "{name} declares draft 2020-12"
        );
        // An absolute $id would make validators fetch the siblings from
        // its host instead of reading the files (issue 11).
        assert!(
            schema.get("$id").is_none(),
            "{name}: no $id, so that each $ref resolves to a sibling file"
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
    for field in ["promotion", "group"] {
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove(field);
        assert!(!trigger.is_valid(&missing), "{field} is always present");
    }
    let groups: BTreeSet<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["group"].to_string())
        .collect();
    assert_eq!(groups.len(), 2, "both groups are exemplified");
    assert!(!trigger.is_valid(&broken("group", json!("control"))));
}

#[test]
fn the_conversion_schema_accepts_the_contract_example() {
    let conversion = compile("conversion.json");
    let example = json!({"trigger_id": "5f0c9d1e2b7a4c18", "type": "viewed_not_bought",
        "group": "treated", "crm_id": "C42", "product_id": "SKU-1",
        "fired_at": "2026-11-22T11:15:00Z", "order_id": "O-981",
        "channel": "store", "converted_at": "2026-11-23T17:02:00Z"});
    assert!(
        conversion.is_valid(&example),
        "{:?}",
        errors(&conversion, &example)
    );
    let broken = |field: &str, value: Value| {
        let mut c = example.clone();
        c[field] = value;
        c
    };
    for (why, c) in [
        ("unknown group", broken("group", json!("control"))),
        ("unknown channel", broken("channel", json!("app"))),
        (
            "offset time",
            broken("converted_at", json!("2026-11-23T18:02:00+01:00")),
        ),
        ("empty order", broken("order_id", json!(""))),
        ("extra field", broken("revenue", json!(89.9))),
    ] {
        assert!(!conversion.is_valid(&c), "accepted ({why}): {c}");
    }
    for field in example.as_object().unwrap().keys() {
        let mut c = example.clone();
        c.as_object_mut().unwrap().remove(field);
        assert!(!conversion.is_valid(&c), "{field} is always present");
    }
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
fn the_scanner_finds_what_it_checks() {
    // Guards the metric-name scanner against silently finding nothing.
    let names = metric_names(
        "rate(pretext_batch_duration_seconds_bucket{x=\"1\"}[5m]) pretext_ready==0 xpretext_no",
    );
    let want: BTreeSet<String> = ["pretext_batch_duration_seconds", "pretext_ready"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}
