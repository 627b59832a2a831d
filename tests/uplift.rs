//! `pretext uplift` as users run it: the built binary on trigger, holdout
//! and conversion files written the way a replay writes them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn pretext() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pretext"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PRETEXT__") {
            c.env_remove(k);
        }
    }
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A trigger record as CONTRACT section 4 shows it.
fn trigger(id: &str, kind: &str, group: &str, crm_id: &str) -> Value {
    json!({
        "trigger_id": id, "type": kind, "crm_id": crm_id,
        "product_id": "SKU-1", "category": "coats", "intent_score": 3.71,
        "view_count": 3, "last_viewed_at": "2026-11-22T10:15:00Z",
        "fired_at": "2026-11-22T11:15:00Z", "cookie_ids": ["ck_9"],
        "channels": ["email"], "promotion": null, "group": group
    })
}

/// A conversion record as CONTRACT section 8 shows it.
fn conversion(id: &str, kind: &str, group: &str, crm_id: &str) -> Value {
    json!({
        "trigger_id": id, "type": kind, "group": group, "crm_id": crm_id,
        "product_id": "SKU-1", "fired_at": "2026-11-22T11:15:00Z",
        "order_id": format!("O-{id}"), "channel": "store",
        "converted_at": "2026-11-23T17:02:00Z"
    })
}

const VNB: &str = "viewed_not_bought";
const PROMO: &str = "promo_on_viewed_item";

/// `n` triggers of (kind, group), the first `x` of them converted: the
/// trigger records and the conversion records. Two triggers per customer,
/// customers 0, 1, ... of the group whatever the type.
fn arm(kind: &str, group: &str, n: usize, x: usize) -> (Vec<Value>, Vec<Value>) {
    let ids: Vec<(String, String)> = (0..n)
        .map(|i| (format!("{kind}-{group}-{i}"), format!("{group}-C{}", i / 2)))
        .collect();
    let triggers = ids
        .iter()
        .map(|(id, crm)| trigger(id, kind, group, crm))
        .collect();
    let conversions = ids[..x]
        .iter()
        .map(|(id, crm)| conversion(id, kind, group, crm))
        .collect();
    (triggers, conversions)
}

fn jsonl(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        out.extend_from_slice(v.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn write_gz(path: &Path, bytes: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap();
}

struct Files {
    /// The directory that holds the files, when they own it.
    _dir: Option<tempfile::TempDir>,
    triggers: PathBuf,
    holdout: PathBuf,
    conversions: PathBuf,
}

impl Files {
    fn args(&self, format: &str) -> Vec<String> {
        [
            "uplift",
            "--triggers",
            self.triggers.to_str().unwrap(),
            "--holdout",
            self.holdout.to_str().unwrap(),
            "--conversions",
            self.conversions.to_str().unwrap(),
            "--format",
            format,
        ]
        .map(String::from)
        .to_vec()
    }

    fn run(&self, format: &str) -> Output {
        pretext().args(self.args(format)).output().unwrap()
    }
}

/// 56/70 vs 48/80 viewed_not_bought (Newcombe's example (a)) and 9/10 vs
/// 3/10 promos (example (b)); the holdout file gzipped.
fn newcombe_examples() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let (mut treated, mut conv) = arm(VNB, "treated", 70, 56);
    let (mut holdout, c) = arm(VNB, "holdout", 80, 48);
    conv.extend(c);
    for (kind, group, n, x) in [(PROMO, "treated", 10, 9), (PROMO, "holdout", 10, 3)] {
        let (t, c) = arm(kind, group, n, x);
        if group == "treated" {
            treated.extend(t);
        } else {
            holdout.extend(t);
        }
        conv.extend(c);
    }
    // Conversions arrive in no particular order relative to the groups.
    conv.reverse();
    let files = Files {
        triggers: dir.path().join("triggers.jsonl"),
        holdout: dir.path().join("holdout.jsonl.gz"),
        conversions: dir.path().join("conversions.jsonl"),
        _dir: Some(dir),
    };
    write(&files.triggers, &jsonl(&treated));
    write_gz(&files.holdout, &jsonl(&holdout));
    write(&files.conversions, &jsonl(&conv));
    files
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn assert_close(v: &Value, expected: f64) {
    assert!((num(v) - expected).abs() <= 1e-6, "{v} vs {expected}");
}

fn assert_ci(v: &Value, low: f64, high: f64) {
    assert_close(&v[0], low);
    assert_close(&v[1], high);
}

/// The figures: counts, rates and intervals against Newcombe (1998) table
/// II and statsmodels 0.15 (`confint_proportions_2indep`, methods "newcomb"
/// and "log"; `proportion_confint`, method "wilson").
#[test]
fn figures_per_type_and_total_match_independent_calculations() {
    let files = newcombe_examples();
    let o = files.run("json");
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();

    let vnb = &doc["by_type"][0];
    assert_eq!(vnb["type"], VNB);
    assert_eq!(vnb["treated"]["triggers"], 70);
    assert_eq!(vnb["treated"]["conversions"], 56);
    assert_eq!(vnb["holdout"]["triggers"], 80);
    assert_eq!(vnb["treated"]["customers"], 35);
    assert_eq!(vnb["holdout"]["customers"], 40);
    assert_eq!(vnb["holdout"]["conversions"], 48);
    assert_close(&vnb["treated"]["rate"], 0.8);
    assert_ci(&vnb["treated"]["rate_ci"], 0.691_834, 0.876_953);
    assert_ci(&vnb["holdout"]["rate_ci"], 0.490_455, 0.700_382);
    assert_close(&vnb["absolute_uplift"]["estimate"], 0.2);
    assert_ci(&vnb["absolute_uplift"]["ci"], 0.052_431, 0.333_873);
    assert_close(&vnb["relative_uplift"]["estimate"], 1.0 / 3.0);
    assert_ci(&vnb["relative_uplift"]["ci"], 0.076_626, 0.651_249);
    // Two triggers per customer, both converted or neither: the variance
    // doubles (design effect 2), and the clustered intervals widen.
    let c = &vnb["clustered"];
    assert_close(&c["design_effect"]["treated"], 2.0);
    assert_close(&c["design_effect"]["holdout"], 2.0);
    assert_ci(&c["absolute_uplift"]["ci"], -0.001_519, 0.401_519);
    assert_ci(&c["relative_uplift"]["ci"], -0.014_639, 0.804_189);
    let w = vnb["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 1, "no small-sample warning: {w:?}");
    assert!(
        w[0].as_str().unwrap().contains("design effect 2.00"),
        "{w:?}"
    );

    let promo = &doc["by_type"][1];
    assert_eq!(promo["type"], PROMO);
    assert_ci(&promo["absolute_uplift"]["ci"], 0.170_523, 0.809_018);
    assert_close(&promo["relative_uplift"]["estimate"], 2.0);
    assert_ci(&promo["relative_uplift"]["ci"], 0.138_350, 6.906_178);
    // Pooled 12/20: each group of 10 expects 4 non-conversions.
    let w = promo["warnings"][0].as_str().unwrap();
    assert!(w.contains("expect 4.0 non-conversions"), "{w}");

    let total = &doc["total"];
    assert_eq!(total["treated"]["triggers"], 80);
    assert_eq!(total["treated"]["conversions"], 65);
    assert_eq!(total["holdout"]["triggers"], 90);
    assert_eq!(total["holdout"]["conversions"], 51);
    // The promo customers are among the viewed_not_bought ones.
    assert_eq!(total["treated"]["customers"], 35);
    assert_eq!(total["holdout"]["customers"], 40);
    assert_eq!(doc["by_type"][1]["holdout"]["customers"], 5);
    assert_ci(&total["absolute_uplift"]["ci"], 0.106_776, 0.370_641);
    assert_ci(&total["relative_uplift"]["ci"], 0.163_286, 0.767_278);
    assert_ci(
        &total["clustered"]["absolute_uplift"]["ci"],
        0.064_947,
        0.426_720,
    );
    assert_eq!(doc["unmatched_conversions"], 0);
    assert!(doc["methods"]["absolute_uplift"]
        .as_str()
        .unwrap()
        .contains("Newcombe"));

    let o = files.run("text");
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for line in [
        "  treated          70         35           56    80.00%  69.18% to 87.70%",
        "  holdout          80         40           48    60.00%  49.05% to 70.04%",
        "  absolute uplift  +20.00 pp (95% CI +5.24 pp to +33.39 pp)",
        "  relative uplift  +33.33% (95% CI +7.66% to +65.12%)",
        "  relative uplift  +200.00% (95% CI +13.84% to +690.62%)",
        "  absolute uplift  +24.58 pp (95% CI +10.68 pp to +37.06 pp)",
        "  clustered by customer (design effect: treated 2.00, holdout 2.00)",
        "    absolute uplift  +20.00 pp (95% CI -0.15 pp to +40.15 pp)",
        "    relative uplift  +33.33% (95% CI -1.46% to +80.42%)",
        "unmatched conversions: 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    }
    assert!(text.contains("Katz log interval"), "{text}");
}

#[test]
fn the_same_files_give_the_same_bytes() {
    let files = newcombe_examples();
    for format in ["text", "json"] {
        let a = files.run(format);
        let b = files.run(format);
        assert!(a.status.success(), "{}", stderr(&a));
        assert!(!a.stdout.is_empty());
        assert_eq!(a.stdout, b.stdout, "{format}");
    }
}

/// A holdout of 2 triggers and no conversions; three conversions naming
/// triggers in neither file, and one conversion delivered twice.
#[test]
fn a_small_holdout_warns_and_unmatched_conversions_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (treated, mut conv) = arm(VNB, "treated", 40, 4);
    let (holdout, _) = arm(VNB, "holdout", 2, 0);
    conv.push(conv[0].clone());
    for id in ["gone-1", "gone-2"] {
        conv.push(conversion(id, VNB, "treated", "C-gone"));
    }
    conv.push(conversion("gone-3", PROMO, "holdout", "C-gone"));
    let files = Files {
        triggers: dir.path().join("t.jsonl"),
        holdout: dir.path().join("h.jsonl"),
        conversions: dir.path().join("c.jsonl"),
        _dir: Some(dir),
    };
    write(&files.triggers, &jsonl(&treated));
    write(&files.holdout, &jsonl(&holdout));
    write(&files.conversions, &jsonl(&conv));

    let o = files.run("text");
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(!text.to_lowercase().contains("nan"), "{text}");
    assert!(text.contains("unmatched conversions: 3\n"), "{text}");
    assert!(
        text.contains("warning: 3 unmatched conversions: their trigger_id is in neither"),
        "{text}"
    );
    // 4/42 pooled over a holdout of 2: 0.19 expected conversions.
    assert!(
        text.contains("warning: too small for the intervals to mean much: at the pooled rate the holdout would expect 0.2 conversions (fewer than 5)"),
        "{text}"
    );
    assert!(
        text.contains("  relative uplift  undefined: the holdout rate is 0\n"),
        "{text}"
    );
    assert!(
        text.contains("  absolute uplift  +10.00 pp (95% CI -56.04 pp to +23.05 pp)"),
        "{text}"
    );
    // The type with no trigger at all says so.
    assert!(text.contains("  warning: no triggers\n"), "{text}");

    let o = files.run("json");
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["unmatched_conversions"], 3);
    assert_eq!(doc["duplicate_conversions"], 1);
    assert_eq!(doc["total"]["treated"]["conversions"], 4);
    let rel = &doc["total"]["relative_uplift"];
    assert_eq!(rel["estimate"], Value::Null);
    assert_eq!(rel["note"], "undefined: the holdout rate is 0");
    assert!(doc["total"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("too small"));
    let c = &doc["total"]["clustered"];
    assert_eq!(c["design_effect"]["holdout"], Value::Null);
    assert_eq!(
        c["absolute_uplift"]["note"],
        "no interval: a rate of 0 or 1"
    );
    assert_eq!(c["relative_uplift"]["estimate"], Value::Null);
    assert_eq!(doc["warnings"].as_array().unwrap().len(), 2);
}

#[test]
fn a_bad_line_is_named_by_file_and_line_and_exits_1() {
    let files = newcombe_examples();
    let mut bytes = jsonl(&[conversion("x", VNB, "treated", "C1")]);
    bytes.extend_from_slice(b"\n{\"trigger_id\": \"y\", \"type\": \n");
    write(&files.conversions, &bytes);
    let o = files.run("text");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let name = files.conversions.display().to_string();
    assert!(
        err.contains(&format!("{name} line 3: not a conversion record")),
        "{err}"
    );
    // The line is cut after `"type": `: faulted there, not at column 0.
    assert!(err.contains("(column 28)"), "{err}");
    assert!(o.stdout.is_empty());

    // A trigger file given as the conversions: not every trigger converted.
    write(
        &files.conversions,
        &jsonl(&[trigger("x", VNB, "treated", "C1")]),
    );
    let o = files.run("text");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "{name} line 1: not a conversion record: missing field `order_id`"
        )),
        "{}",
        stderr(&o)
    );

    // A treated trigger in the holdout file: the files were swapped.
    write(&files.conversions, b"");
    // A holdout file named .gz that is not gzip.
    write(
        &files.holdout,
        &jsonl(&[trigger("t", VNB, "holdout", "C1")]),
    );
    let o = files.run("text");
    assert_eq!(o.status.code(), Some(1));
    let name = files.holdout.display().to_string();
    assert!(
        stderr(&o).contains(&format!("{name} line 1: cannot read: invalid gzip header")),
        "{}",
        stderr(&o)
    );

    write_gz(
        &files.holdout,
        &jsonl(&[trigger("t", VNB, "treated", "C1")]),
    );
    let o = files.run("text");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("line 1: a treated trigger in the holdout file"),
        "{}",
        stderr(&o)
    );

    std::fs::remove_file(&files.triggers).unwrap();
    let o = files.run("text");
    assert_eq!(o.status.code(), Some(1));
    let name = files.triggers.display().to_string();
    assert!(
        stderr(&o).contains(&format!("cannot open {name}")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_arguments_exit_2() {
    let files = newcombe_examples();
    let o = files.run("xml");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = pretext()
        .args(["uplift", "--triggers", "a", "--conversions", "c"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--holdout"), "{}", stderr(&o));
}

/// The whole path: generated events replayed with a 30% holdout, the
/// three files read back. The report's counts are the replay's own, and the
/// files' recounted.
#[test]
fn a_replay_with_a_holdout_reads_back_in_uplift() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let events = p("events.jsonl");
    let gen = pretext()
        .args([
            "gen",
            "--events",
            "20000",
            "--customers",
            "400",
            "--days",
            "3",
        ])
        .arg("--output")
        .arg(&events)
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", stderr(&gen));
    write(
        &p("experiment.toml"),
        b"[holdout]\npercent = 30\nsalt = \"uplift-test\"\n",
    );
    let replay = pretext()
        .args(["replay", "--flush", "--input"])
        .arg(&events)
        .arg("--config")
        .arg(p("experiment.toml"))
        .arg("--output")
        .arg(p("t.jsonl"))
        .arg("--holdout")
        .arg(p("h.jsonl"))
        .arg("--conversions")
        .arg(p("c.jsonl"))
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", stderr(&replay));
    let files = Files {
        triggers: p("t.jsonl"),
        holdout: p("h.jsonl"),
        conversions: p("c.jsonl"),
        _dir: None, // `dir` holds them
    };
    let o = files.run("json");
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(doc["unmatched_conversions"], 0);
    assert_eq!(doc["duplicate_triggers"], 0);

    let summary = stderr(&replay);
    for what in ["triggers", "conversions"] {
        let rows: Vec<String> = doc["by_type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} (treated {}, holdout {})",
                    r["type"].as_str().unwrap(),
                    r["treated"][what],
                    r["holdout"][what]
                )
            })
            .collect();
        let line = format!("{what}: {}\n", rows.join(", "));
        assert!(summary.contains(&line), "no {line:?} in\n{summary}");
    }
    let read = |path: PathBuf| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let total = &doc["total"];
    assert_eq!(total["treated"]["triggers"], read(p("t.jsonl")).len());
    assert_eq!(total["holdout"]["triggers"], read(p("h.jsonl")).len());
    let conversions = read(p("c.jsonl"));
    for group in ["treated", "holdout"] {
        let n = conversions.iter().filter(|c| c["group"] == group).count();
        assert!(n > 0, "{group} triggers convert in the generated data");
        assert_eq!(total[group]["conversions"], n);
    }
    // 30% of customers held out, give or take chance.
    let held = num(&total["holdout"]["customers"]);
    let share = held / (held + num(&total["treated"]["customers"]));
    assert!((0.2..0.4).contains(&share), "holdout share {share}");
}
