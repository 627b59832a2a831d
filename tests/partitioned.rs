//! The engine split into partitions (`replay --partitions N`, the
//! computation of N-partition scale-out in one process) against the one
//! engine, on generated streams whose late events stay within the allowed
//! lateness: the same triggers, holdout triggers and conversions (a
//! trigger's `category` aside, docs/scale-out.md difference 3), the same
//! counts, and a state whose partitions add up to the one engine's state,
//! so that every input was applied once. Then the cases that showed what
//! splitting breaks if done carelessly.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use pretext::config::Config;
use pretext::engine::partitioned::partition_dir;
use pretext::engine::routing::Stage;
use pretext::engine::Engine;
use pretext::gen::{generate, GenArgs};
use pretext::replay::{replay, ReplayOptions, Summary};
use pretext::state::Cf;
use serde_json::{json, Value};

const MIN: i64 = 60_000;

struct Run {
    triggers: BTreeMap<String, Value>,
    holdout: BTreeMap<String, Value>,
    conversions: BTreeSet<String>,
    summary: Summary,
    state: PathBuf,
}

fn replay_with(config: &Config, input: &Path, partitions: u32, dir: &Path) -> Run {
    let file = |name: &str| dir.join(format!("{name}-{partitions}.jsonl"));
    let state = dir.join(format!("state-{partitions}"));
    let opts = ReplayOptions {
        inputs: vec![input.to_path_buf()],
        output: Some(file("triggers")),
        holdout: Some(file("holdout")),
        conversions: Some(file("conversions")),
        dead_letter: Some(file("dead")),
        state_dir: Some(state.clone()),
        flush: true,
        quiet: true,
        partitions,
        ..ReplayOptions::default()
    };
    let summary = replay(config, &opts).unwrap();
    let lines = |name: &str| std::fs::read_to_string(file(name)).unwrap();
    let by_id = |name: &str| {
        lines(name)
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["trigger_id"].as_str().unwrap().to_string(), v)
            })
            .collect()
    };
    Run {
        triggers: by_id("triggers"),
        holdout: by_id("holdout"),
        conversions: lines("conversions").lines().map(String::from).collect(),
        summary,
        state,
    }
}

fn generated(dir: &Path, seed: u64) -> PathBuf {
    let args = GenArgs {
        events: 20_000,
        customers: 400,
        products: 60,
        seed,
        start: "2026-11-20T08:00:00Z".into(),
        days: 2,
        bad_ratio: 0.001,
        output: PathBuf::from("-"),
    };
    let path = dir.join(format!("events-{seed}.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    generate(&args, &mut f).unwrap();
    f.flush().unwrap();
    path
}

/// The allowed lateness of every configuration here (the default).
const LATENESS: i64 = 5 * MIN;

/// A generated stream, read as the partitioned engine reads it, to tell
/// where the clocks of the one engine and of each customer partition pass
/// a time. `gen` names customer C000011's cookies `ck_000011_<n>`.
struct Clocks {
    /// For each customer, the arrival indexes of its events.
    arrivals: BTreeMap<String, Vec<usize>>,
    /// The arrival indexes of promotions, which fire at once for every
    /// viewer of their product.
    promotions: Vec<usize>,
    /// The highest event time after each arrival: of the whole input, and
    /// of what reached each customer partition.
    global: Vec<i64>,
    partition: Vec<Vec<i64>>,
    partitions: i32,
}

impl Clocks {
    fn read(input: &Path, partitions: i32) -> Clocks {
        use pretext::engine::routing::{partition_for, route, Route, Stage};
        let mut clocks = Clocks {
            arrivals: BTreeMap::new(),
            promotions: Vec::new(),
            global: Vec::new(),
            partition: vec![Vec::new(); partitions as usize],
            partitions,
        };
        let mut linked: BTreeSet<String> = BTreeSet::new();
        let (mut global, mut parts) = (i64::MIN, vec![i64::MIN; partitions as usize]);
        let text = std::fs::read_to_string(input).unwrap();
        for line in text.lines() {
            let Ok(event) = pretext::decode::decode(line.as_bytes(), usize::MAX) else {
                continue;
            };
            let crm = event.body.crm_id().map(String::from);
            let reached: Vec<usize> = match route(&event.body) {
                Route::Broadcast { .. } => (0..partitions as usize).collect(),
                Route::Keyed {
                    stage: Stage::Customer,
                    key,
                } => vec![partition_for(key.as_bytes(), partitions) as usize],
                Route::Keyed { key: cookie, .. } => {
                    let owner = crm.clone().or_else(|| {
                        linked
                            .contains(cookie)
                            .then(|| format!("C{}", &cookie[3..9]))
                    });
                    if crm.is_some() {
                        linked.insert(cookie.to_string());
                    }
                    let of = |c: String| partition_for(c.as_bytes(), partitions) as usize;
                    owner.map(of).into_iter().collect()
                }
            };
            if let pretext::event::Body::Erase(e) = &event.body {
                linked.retain(|c| format!("C{}", &c[3..9]) != e.crm_id);
            }
            let i = clocks.global.len();
            if matches!(event.body, pretext::event::Body::Promotion(_)) {
                clocks.promotions.push(i);
            }
            let customer = crm.or_else(|| {
                let v: Value = serde_json::from_str(line).unwrap();
                v["cookie_id"].as_str().map(|c| format!("C{}", &c[3..9]))
            });
            if let Some(c) = customer {
                clocks.arrivals.entry(c).or_default().push(i);
            }
            global = global.max(event.ts);
            clocks.global.push(global);
            for p in reached {
                parts[p] = parts[p].max(event.ts);
            }
            for (p, clock) in clocks.partition.iter_mut().enumerate() {
                clock.push(parts[p]);
            }
        }
        clocks
    }

    /// Whether the one engine and the customer's partition may have
    /// applied an event of the customer on different sides of the check
    /// at `t`: one arrives between the two clocks passing t + lateness, or
    /// a promotion does (its triggers count toward the cap at once).
    fn may_differ(&self, crm: &str, t: i64) -> bool {
        use pretext::engine::routing::partition_for;
        let p = partition_for(crm.as_bytes(), self.partitions) as usize;
        let passed = |clock: &[i64]| clock.partition_point(|&m| m < t + LATENESS);
        let (a, b) = (passed(&self.global), passed(&self.partition[p]));
        let (from, to) = (a.min(b), a.max(b));
        let between = |ix: &[usize]| ix.iter().any(|&i| from <= i && i <= to);
        self.arrivals.get(crm).is_some_and(|ix| between(ix)) || between(&self.promotions)
    }
}

/// The same trigger ids, but where DESIGN.md and docs/scale-out.md
/// (difference 1) say they may differ: a check at T fires when its own
/// partition's clock passes T + lateness, so an event of the customer
/// (a purchase stamped after T counts when applied) may be applied before
/// the check in one run and after it in the other. Every trigger only one
/// run has must be that case, or follow from one (a trigger lost frees
/// the cooldown or the cap for a later one of the customer).
fn assert_same_ids(
    one: &BTreeMap<String, Value>,
    split: &BTreeMap<String, Value>,
    clocks: &Clocks,
    what: &str,
) {
    let only = |a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>| -> Vec<Value> {
        a.iter()
            .filter(|(id, _)| !b.contains_key(*id))
            .map(|(_, t)| t.clone())
            .collect()
    };
    let (lost, gained) = (only(one, split), only(split, one));
    let explained = |t: &Value| {
        let fired = pretext::time::parse_rfc3339(t["fired_at"].as_str().unwrap()).unwrap();
        clocks.may_differ(t["crm_id"].as_str().unwrap(), fired)
    };
    // A trigger lost or gained changes what the customer's cooldowns and
    // frequency cap allow next.
    let same_customer = |a: &Value, b: &Value| a["crm_id"] == b["crm_id"];
    for t in &lost {
        let follows = gained.iter().any(|g| same_customer(g, t));
        assert!(follows || explained(t), "{what}: lost {t}");
    }
    for t in &gained {
        let follows = lost.iter().any(|l| same_customer(l, t));
        assert!(follows || explained(t), "{what}: gained {t}");
    }
    let differing = lost.len() + gained.len();
    assert!(
        differing * 100 <= one.len(),
        "{what}: {differing} of {} triggers differ",
        one.len()
    );
}

/// The triggers both runs fired are equal but where docs/scale-out.md
/// lets them differ: a partitioned trigger may lack the `category` (only
/// its partition's customers' views name it there, difference 3); and a
/// check that may have fired on the other side of an event of its
/// customer (`Clocks::may_differ`) is evaluated with that event applied in
/// one run and not in the other (its score, its views, its channels).
fn assert_same_triggers(
    one: &BTreeMap<String, Value>,
    split: &BTreeMap<String, Value>,
    clocks: &Clocks,
    what: &str,
) {
    let mut differing = 0;
    for (id, a) in one {
        let Some(b) = split.get(id) else { continue };
        let mut b_filled = b.clone();
        if b["category"].is_null() {
            b_filled["category"] = a["category"].clone();
        }
        if a != &b_filled {
            let fired = pretext::time::parse_rfc3339(a["fired_at"].as_str().unwrap()).unwrap();
            let may = clocks.may_differ(a["crm_id"].as_str().unwrap(), fired);
            assert!(may, "{what}: trigger {id}:\n{a}\n{b}");
        }
        differing += usize::from(a != b);
    }
    assert!(
        differing * 20 <= one.len().max(20),
        "{what}: {differing} of {} triggers differ",
        one.len()
    );
}

/// The configurations the streams run under.
fn configs() -> [(&'static str, Config); 2] {
    let capped = "[holdout]\npercent = 30\n[pressure]\nmax_triggers = 2\nwindow = \"6h\"\n\
                  [triggers.viewed_not_bought]\ncooldown = \"2h\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capped.toml");
    std::fs::write(&path, capped).unwrap();
    let capped = Config::load(Some(&path), []).unwrap();
    [("default", Config::default()), ("holdout and cap", capped)]
}

#[test]
fn every_partition_count_decides_what_one_engine_decides() {
    let dir = tempfile::tempdir().unwrap();
    for seed in [7, 8] {
        let input = generated(dir.path(), seed);
        for (name, config) in configs() {
            let run_dir = dir
                .path()
                .join(format!("{seed}-{}", name.replace(' ', "-")));
            std::fs::create_dir_all(&run_dir).unwrap();
            let one = replay_with(&config, &input, 1, &run_dir);
            assert!(one.triggers.len() > 100, "a stream that fires");
            for partitions in [2, 3, 6] {
                let what = format!("seed {seed}, {name}, {partitions} partitions");
                let clocks = Clocks::read(&input, partitions as i32);
                let split = replay_with(&config, &input, partitions, &run_dir);
                let mut changed = BTreeSet::new();
                for (a, b) in [
                    (&one.triggers, &split.triggers),
                    (&one.holdout, &split.holdout),
                ] {
                    assert_same_ids(a, b, &clocks, &what);
                    assert_same_triggers(a, b, &clocks, &what);
                    changed.extend(a.keys().filter(|id| !b.contains_key(*id)).cloned());
                    changed.extend(b.keys().filter(|id| !a.contains_key(*id)).cloned());
                }
                // Conversions differ only for triggers one run lacks.
                for c in one.conversions.symmetric_difference(&split.conversions) {
                    let v: Value = serde_json::from_str(c).unwrap();
                    let id = v["trigger_id"].as_str().unwrap();
                    assert!(changed.contains(id), "{what}: conversion {c}");
                }
                assert_same_counts(&one.summary, &split.summary, &what);
                assert_state_adds_up(&config, &one.state, &split.state, partitions, &what);
            }
            if name != "default" {
                assert!(!one.holdout.is_empty(), "the holdout fires too");
            }
        }
    }
}

/// What the router counts is the same: messages, rejections, events
/// applied by type, duplicates.
fn assert_same_counts(one: &Summary, split: &Summary, what: &str) {
    assert_eq!(one.messages, split.messages, "{what}: messages");
    assert_eq!(one.rejected, split.rejected, "{what}: rejected");
    assert_eq!(one.engine.events, split.engine.events, "{what}: events");
    assert_eq!(
        one.engine.duplicates, split.engine.duplicates,
        "{what}: duplicates"
    );
}

/// The stores whose content does not depend on when a check fires, and
/// which are not per partition by design (meta and dedup: each partition
/// its own clock and ids; products: categories seen by the partition's
/// customers only). Interest and customer records hold what fired (and
/// prune history behind their partition's own clock): their keys are
/// compared, not their values.
const IDENTITY_STORES: [Cf; 2] = [Cf::Links, Cf::Anon];
const CUSTOMER_STORES: [Cf; 5] = [
    Cf::Customers,
    Cf::CustomerProducts,
    Cf::Interest,
    Cf::Timers,
    Cf::Tombstones,
];

/// Every key of the one engine's state lives in exactly one partition,
/// and no partition holds anything else: each input was applied once, in
/// the partition that owns its key.
fn assert_state_adds_up(config: &Config, one: &Path, split: &Path, partitions: u32, what: &str) {
    let single = Engine::open(one, config).unwrap();
    for (stage, stores) in [
        (Stage::Identity, &IDENTITY_STORES[..]),
        (Stage::Customer, &CUSTOMER_STORES[..]),
    ] {
        let engines: Vec<Engine> = (0..partitions)
            .map(|p| Engine::open(&partition_dir(split, stage, p), config).unwrap())
            .collect();
        for &cf in stores {
            let mut union = Vec::new();
            for e in &engines {
                union.extend(e.store().committed(cf).unwrap());
            }
            union.sort();
            let mut whole = single.store().committed(cf).unwrap();
            if matches!(cf, Cf::Interest | Cf::Customers) {
                union.iter_mut().for_each(|(_, v)| v.clear());
                whole.iter_mut().for_each(|(_, v)| v.clear());
            }
            assert_eq!(union.len(), whole.len(), "{what}: {} entries", cf.name());
            assert!(union == whole, "{what}: {} differs", cf.name());
        }
        for e in &engines {
            let others = Stage::ALL.iter().filter(|&&s| s != stage);
            for &cf in others.flat_map(|s| s.stores()) {
                if !matches!(cf, Cf::Meta | Cf::Dedup) {
                    let held = e.store().committed(cf).unwrap();
                    assert!(held.is_empty(), "{what}: {stage:?} holds {}", cf.name());
                }
            }
        }
    }
}

fn lines(events: &[Value]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

const T0: i64 = 1_795_341_600_000;

/// Two views kept for an anonymous cookie, stitched by one identify: one
/// engine counts both before the first view's check fires (it fires after
/// the whole event). A partition that fired after each record fired the
/// first view's check alone, with one view.
#[test]
fn an_identify_stitching_two_views_fires_once_with_both() {
    let view = |id: &str, ts: i64| {
        json!({"type": "product_view", "event_id": id, "ts": ts,
               "cookie_id": "ck", "product_id": "P1"})
    };
    let events = [
        view("v1", T0),
        view("v2", T0 + 1000),
        json!({"type": "identify", "event_id": "i1", "ts": T0 + 3 * 60 * MIN,
               "cookie_id": "ck", "crm_id": "C1"}),
    ];
    let (dir, input) = lines(&events);
    for partitions in [1, 4] {
        let run = replay_with(&Config::default(), &input, partitions, dir.path());
        let counts: Vec<&Value> = run.triggers.values().map(|t| &t["view_count"]).collect();
        assert_eq!(
            counts,
            [&json!(2)],
            "{partitions} partitions: one trigger, both views"
        );
    }
}

/// The customer's cookies hash to several identity partitions; erase,
/// routed to the customer's partition, reaches every one of them through
/// its forget records: no partition keeps a link or a kept event of
/// theirs, and the customer partition keeps only the tombstone.
#[test]
fn erase_reaches_the_cookies_in_every_identity_partition() {
    let partitions = 4;
    let cookies: Vec<String> = (0..12).map(|i| format!("ck-{i}")).collect();
    let owners: BTreeSet<i32> = cookies
        .iter()
        .map(|c| pretext::engine::routing::partition_for(c.as_bytes(), partitions as i32))
        .collect();
    assert!(owners.len() >= 3, "cookies spread: {owners:?}");
    let mut events = Vec::new();
    for (i, c) in cookies.iter().enumerate() {
        let ts = T0 + i as i64 * MIN;
        events.push(
            json!({"type": "identify", "event_id": format!("i{i}"), "ts": ts,
                           "cookie_id": c, "crm_id": "C1"}),
        );
        events.push(
            json!({"type": "add_to_cart", "event_id": format!("v{i}"), "ts": ts + 1,
                           "cookie_id": c, "product_id": format!("P{i}")}),
        );
    }
    events.push(json!({"type": "erase", "event_id": "x", "ts": T0 + 20 * MIN, "crm_id": "C1"}));
    let (dir, input) = lines(&events);
    let config = Config::default();
    let run = replay_with(&config, &input, partitions, dir.path());
    assert!(
        run.triggers.is_empty(),
        "erased before any check: {:?}",
        run.triggers
    );
    for stage in Stage::ALL {
        for p in 0..partitions {
            let engine = Engine::open(&partition_dir(&run.state, stage, p), &config).unwrap();
            for cf in stage
                .stores()
                .iter()
                .filter(|cf| !matches!(cf, Cf::Meta | Cf::Dedup))
            {
                let held = engine.store().committed(*cf).unwrap();
                let want = usize::from(*cf == Cf::Tombstones && p == partition_of_c1(partitions));
                assert_eq!(held.len(), want, "{stage:?} {p} {}: {held:?}", cf.name());
            }
        }
    }
}

fn partition_of_c1(partitions: u32) -> u32 {
    pretext::engine::routing::partition_for(b"C1", partitions as i32) as u32
}

/// What `inspect` answers about a subject of a replayed state.
fn inspect(
    state: &Path,
    partitions: u32,
    customer: Option<&str>,
    cookie: Option<&str>,
) -> Option<Value> {
    let args = pretext::cli::inspect::InspectArgs {
        state_dir: state.to_path_buf(),
        config: None,
        customer: customer.map(String::from),
        cookie: cookie.map(String::from),
        limit: 20,
        partitions,
    };
    pretext::cli::inspect::inspect(&args)
        .ok()
        .map(|json| serde_json::from_str(&json).unwrap())
}

/// Questions about a partitioned state go to the partition that owns the
/// subject (a cookie: its identity partition, then, linked, its customer's
/// partition), as scale-out forwards them; the answers are the one
/// engine's, but for a category only another partition's views named.
#[test]
fn questions_to_a_partitioned_state_get_the_one_engines_answers() {
    let dir = tempfile::tempdir().unwrap();
    let input = generated(dir.path(), 9);
    let config = Config::default();
    let one = replay_with(&config, &input, 1, dir.path());
    let split = replay_with(&config, &input, 3, dir.path());
    let (mut customers, mut linked, mut anonymous) = (0, 0, 0);
    for c in 0..60 {
        let crm = format!("C{c:06}");
        let cookies = (0..3).map(|j| format!("ck_{c:06}_{j}"));
        let questions =
            std::iter::once((Some(crm.clone()), None)).chain(cookies.map(|k| (None, Some(k))));
        for (customer, cookie) in questions {
            let ask = |state: &Path, n| inspect(state, n, customer.as_deref(), cookie.as_deref());
            let (a, b) = (ask(&one.state, 1), ask(&split.state, 3));
            let what = format!("{customer:?} {cookie:?}");
            assert_eq!(
                a.is_some(),
                b.is_some(),
                "{what}: known to one, not the other"
            );
            let (Some(a), Some(mut b)) = (a, b) else {
                continue;
            };
            for (pa, pb) in a["products"]
                .as_array()
                .unwrap()
                .iter()
                .zip(b["products"].as_array_mut().unwrap())
            {
                if pb["category"].is_null() {
                    pb["category"] = pa["category"].clone();
                }
            }
            assert_eq!(a, b, "{what}");
            match (&customer, a["crm_id"].is_null()) {
                (Some(_), _) => customers += 1,
                (None, false) => linked += 1,
                (None, true) => anonymous += 1,
            }
        }
    }
    assert!(
        customers > 10 && linked > 10 && anonymous > 5,
        "{customers} {linked} {anonymous}"
    );
}
