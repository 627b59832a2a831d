//! Scaled-out live mode on a real Apache Kafka broker (docs/scale-out.md):
//! several `pretext run` processes in one group with `scale.partitions =
//! 6`, at least once and exactly once, give the triggers of a single-instance replay,
//! and their changelogs hold the state of a partitioned replay (every
//! input applied once), through an instance added mid-stream and one
//! killed with SIGKILL mid-stream.
//!
//! The stream is built so that the order in which the stages' records
//! interleave cannot change a decision (docs/scale-out.md, "What equals
//! the single instance"): the customers' day of activity (no promotion, no
//! erase) with a check delay longer than that day, so that nothing is due
//! until a last promotion, produced once everything else is applied,
//! carries every partition's watermark past every check.

#[path = "common/broker.rs"]
mod broker;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use broker::{keyed, trigger_ids, unique, wait_for, write_config, Broker, Pretext, Topics};
use pretext::config::Config;
use pretext::engine::partitioned::partition_dir;
use pretext::engine::routing::Stage;
use pretext::live::changelog::restore_partitions;
use pretext::state::{Cf, Store};
use rdkafka::consumer::{BaseConsumer, Consumer};

const PARTITIONS: u32 = 6;
const DAY: i64 = 86_400_000;

/// What every instance and the replays share: no lateness, no idle
/// advance, a check three days after its view.
const SETTINGS: [(&str, &str); 3] = [
    ("PRETEXT__WATERMARK__ALLOWED_LATENESS", "0s"),
    ("PRETEXT__WATERMARK__IDLE_TIMEOUT", "1h"),
    ("PRETEXT__TRIGGERS__VIEWED_NOT_BOUGHT__DELAY", "3d"),
];
const TOKEN: &str = "scale-e2e-query-token-0123456789";
const EXACTLY_ONCE: (&str, &str) = ("PRETEXT__KAFKA__EXACTLY_ONCE", "true");

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A day of 500 customers' activity that began ten days ago, without
/// promotions and erases, then one promotion five days after its start.
fn stream(dir: &Path, events: usize, seed: u64) -> (Vec<String>, String) {
    let start = (now_ms() - 10 * DAY) / 60_000 * 60_000;
    let out = dir.join("gen.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["gen", "--customers", "500", "--days", "1", "--start"])
        .arg(pretext::time::format_ts(start))
        .args(["--events", &events.to_string(), "--seed", &seed.to_string()])
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let day: Vec<String> = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .filter(|l| !l.contains(r#""type":"promotion""#) && !l.contains(r#""type":"erase""#))
        .map(String::from)
        .collect();
    let promotion = format!(
        r#"{{"type":"promotion","event_id":"last-promotion","ts":{},"product_id":"P00001","discount_pct":20}}"#,
        start + 5 * DAY
    );
    (day, promotion)
}

/// `pretext replay` of `lines` with the shared settings (and
/// `--partitions` if given) into `state`: the trigger lines.
fn replay(dir: &Path, lines: &[String], state: &Path, partitions: Option<u32>) -> Vec<String> {
    let n = partitions.unwrap_or(1).to_string();
    broker::replay_args(
        lines,
        dir,
        Some(state),
        false,
        &SETTINGS,
        &["--partitions", &n],
    )
}

/// One deployment: its config file and its instances' directories.
struct Deployment {
    /// `PRETEXT__…` settings of this test's instances beside `SETTINGS`.
    extra: Vec<(&'static str, &'static str)>,
    broker: Broker,
    topics: Topics,
    group: String,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Deployment {
    fn new(extra: &[(&'static str, &'static str)]) -> Deployment {
        let broker = Broker::start();
        let topics = Topics::create(&broker);
        let group = unique("scale");
        let dir = tempfile::tempdir().unwrap();
        let (config, _) = write_config(dir.path(), &broker.addr, &topics, &group);
        // A killed instance's open transaction is aborted this soon, so
        // that its partitions' next owner can read past it.
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "[kafka.producer]\n\"transaction.timeout.ms\" = \"10000\"\n[scale]\npartitions = {PARTITIONS}\n"
        ));
        std::fs::write(&config, text).unwrap();
        Deployment {
            extra: extra.to_vec(),
            broker,
            topics,
            group,
            dir,
            config,
        }
    }

    fn state(&self, instance: usize) -> PathBuf {
        self.dir.path().join(format!("state-{instance}"))
    }

    /// Starts instance `i`: its own state, its static member id.
    fn start(&self, i: usize) -> Pretext {
        let state = self.state(i);
        let id = format!("pretext-{i}");
        let mut env = SETTINGS.to_vec();
        env.extend(self.extra.iter().copied());
        let state_text = state.display().to_string();
        env.push(("PRETEXT__STATE__DIR", &state_text));
        env.push(("PRETEXT__SCALE__INSTANCE_ID", &id));
        env.push(("PRETEXT__HTTP__QUERY_TOKEN", TOKEN));
        let log = self.dir.path().join(format!("pretext-{i}.log"));
        let p = Pretext::start_with_env(&self.config, &state, &log, &env);
        let deadline = Instant::now() + Duration::from_secs(90);
        while broker::http_get(&p.http, "/readyz").map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "instance {i} not ready within 90 s:\n{}",
                tail(&self.log(i), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// SIGTERM to instance `i`, which must finish its batch and exit 0.
    fn stop(&self, p: Pretext, i: usize) {
        let status = p.terminate();
        assert!(
            status.success(),
            "instance {i}: {status:?}\n{}",
            tail(&self.log(i), 30)
        );
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("pretext-{i}.log")))
            .unwrap_or_default()
    }

    fn produce(&self, lines: &[String]) {
        self.broker.produce(&self.topics.input, &keyed(lines));
    }

    fn internal_topics(&self) -> [(String, i32); 3] {
        [
            (self.topics.input.clone(), 1),
            (format!("{}.by-cookie", self.group), PARTITIONS as i32),
            (format!("{}.by-customer", self.group), PARTITIONS as i32),
        ]
    }

    fn reader(&self) -> BaseConsumer {
        self.broker
            .client()
            .set("group.id", &self.group)
            .set("isolation.level", "read_committed")
            .create()
            .unwrap()
    }

    /// What the group has not committed of its input and repartition
    /// topics.
    fn lag(&self) -> i64 {
        broker::group_lag(&self.reader(), &self.internal_topics())
    }

    /// Waits until the group has committed everything of the input and
    /// repartition topics (nothing left to route or apply).
    fn wait_drained(&self, instances: &[usize]) {
        let topics = self.internal_topics();
        let reader = self.reader();
        let mut last_lag = i64::MAX;
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let lag = broker::group_lag(&reader, &topics);
            if lag == 0 {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = instances.iter().map(|&i| tail(&self.log(i), 20)).collect();
                panic!("the group still lags by {lag}:\n{}", logs.join("\n----\n"));
            }
            if lag != last_lag {
                eprintln!("group lag {lag}");
                last_lag = lag;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The trigger ids on the triggers topic, once `expected` many arrived
    /// (or a minute passed).
    fn trigger_ids(&self, expected: usize) -> BTreeSet<String> {
        let lines: Vec<String> = self
            .broker
            .consume(&self.topics.triggers, expected, Duration::from_secs(60))
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        trigger_ids(&lines)
    }

    /// The settings that name the group's internal topics.
    fn group_config(&self) -> Config {
        let mut config = Config::default();
        config.kafka.brokers = self.broker.addr.clone();
        config.kafka.group_id = self.group.clone();
        config.scale.partitions = PARTITIONS;
        config
    }

    /// Every partition restored from the changelogs into a fresh
    /// directory: the state the group committed.
    fn restored(&self) -> PathBuf {
        let config = self.group_config();
        let dir = self.dir.path().join("restored");
        restore_partitions(&config, &dir, PARTITIONS, Duration::from_secs(60)).unwrap();
        dir
    }
}

/// The most records any partition's restore read, from the logs.
fn most_restored(logs: &str) -> u64 {
    broker::without_ansi(logs)
        .lines()
        .filter_map(|l| l.split("restored_records=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Each stage partition's committed state (its changelogs', restored)
/// equals the partitioned replay's, store by store; `meta` aside (offsets
/// and positions differ by design).
fn assert_same_partition_states(restored: &Path, replayed: &Path) {
    for stage in Stage::ALL {
        for p in 0..PARTITIONS {
            let live = Store::open(&partition_dir(restored, stage, p)).unwrap();
            let want = Store::open(&partition_dir(replayed, stage, p)).unwrap();
            for &cf in stage.stores().iter().filter(|&&cf| cf != Cf::Meta) {
                let comparable =
                    |s| order_free(cf, pretext::engine::comparable_entries(s, cf).unwrap());
                let (a, b) = (comparable(&live), comparable(&want));
                assert!(
                    a == b,
                    "{} partition {p}, {}: {} entries from the changelogs, {} replayed",
                    stage.name(),
                    cf.name(),
                    a.len(),
                    b.len()
                );
            }
        }
    }
}

/// A customer's cookies and a customer's views of a product are lists in
/// the order their records arrived, which across identity partitions is
/// the order of nobody's choosing: those values are compared as multisets
/// of bytes, which a reordering keeps and a lost or doubled element
/// changes.
fn order_free(cf: Cf, mut entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    if matches!(cf, Cf::Customers | Cf::Interest) {
        entries.iter_mut().for_each(|(_, v)| v.sort_unstable());
    }
    entries
}

/// Every instance answers a question about any customer or cookie (from
/// the partitions it holds, or forwarded to their owners) as `pretext
/// inspect` answers it from the partitioned replay's state.
fn assert_every_instance_answers(instances: &[Pretext], day: &[String], split_state: &Path) {
    let mut subjects = Vec::new();
    for line in day.iter().step_by(97).take(12) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        for (field, kind) in [("crm_id", "customer"), ("cookie_id", "cookie")] {
            if let Some(id) = v[field].as_str() {
                subjects.push((kind, id.to_string()));
            }
        }
    }
    subjects.push(("customer", "nobody".to_string()));
    let mut forwarded = 0;
    for (kind, id) in &subjects {
        let out = Command::new(env!("CARGO_BIN_EXE_pretext"))
            .envs(SETTINGS)
            .args([
                "inspect",
                "--partitions",
                &PARTITIONS.to_string(),
                "--state-dir",
            ])
            .arg(split_state)
            .args([format!("--{kind}"), id.clone()])
            .output()
            .unwrap();
        let want: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        for (i, p) in instances.iter().enumerate() {
            let path = format!("/v1/{kind}s/{id}");
            let (status, body) = authorized_get(&p.http, &path);
            let got: serde_json::Value = serde_json::from_str(&body).unwrap();
            match &want {
                Some(want) if out.status.success() => {
                    assert_eq!(status, 200, "instance {i} on {path}: {body}");
                    assert_eq!(timeless(&got), timeless(want), "instance {i} on {path}");
                }
                _ => assert_eq!(status, 404, "instance {i} on {path}: {body}"),
            }
        }
        forwarded += 1;
    }
    assert!(forwarded > 10, "asked about {forwarded} subjects");
}

/// An unlinked cookie's answer is as of its identity partition's clock,
/// which follows that partition's events only (docs/scale-out.md,
/// "Questions"), where a replay's end moves every partition to the last
/// event's time: for those, `as_of` and the scores that decay to it are
/// left out of the comparison. Every other answer is compared whole.
fn timeless(answer: &serde_json::Value) -> serde_json::Value {
    let mut a = answer.clone();
    if a["crm_id"].is_null() {
        a["as_of"] = serde_json::Value::Null;
        for p in a["products"].as_array_mut().into_iter().flatten() {
            p["intent_score"] = serde_json::Value::Null;
        }
    }
    a
}

/// A GET with the query token: (status, body).
fn authorized_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The replays the group must match: (trigger ids of one engine, the
/// partitioned replay's state directory).
fn expected(d: &Deployment, all: &[String]) -> (BTreeSet<String>, PathBuf) {
    let one = trigger_ids(&replay(
        d.dir.path(),
        all,
        &d.dir.path().join("replay-one"),
        None,
    ));
    let split_state = d.dir.path().join("replay-split");
    let split = trigger_ids(&replay(d.dir.path(), all, &split_state, Some(PARTITIONS)));
    assert_eq!(
        one, split,
        "the stream is one where partitioning changes nothing"
    );
    assert!(one.len() > 50, "a stream that fires: {}", one.len());
    (one, split_state)
}

#[test]
fn three_instances_give_the_triggers_and_state_of_one_replay() {
    // At least once: with no failure, as exact as exactly-once.
    let d = Deployment::new(&[]);
    let (day, promotion) = stream(d.dir.path(), 4000, 7);
    let mut all = day.clone();
    all.push(promotion.clone());
    let (want, split_state) = expected(&d, &all);

    let instances: Vec<Pretext> = (0..3).map(|i| d.start(i)).collect();
    d.produce(&day);
    d.wait_drained(&[0, 1, 2]);
    d.produce(std::slice::from_ref(&promotion));
    d.wait_drained(&[0, 1, 2]);
    let got = d.trigger_ids(want.len());
    assert_eq!(got, want, "the trigger ids of a single-instance replay");
    assert_every_instance_answers(&instances, &day, &split_state);
    // What an SRE watches, per instance: its partitions' lag, the clock of
    // its partitions, its state.
    for (i, p) in instances.iter().enumerate() {
        let shown = |name: &str| {
            p.metrics()
                .is_some_and(|m| m.lines().any(|l| l.starts_with(name)))
        };
        let all = [
            "pretext_consumer_lag_messages{",
            "pretext_watermark_seconds ",
            "pretext_state_keys ",
        ];
        wait_for(
            &format!("instance {i}'s gauges"),
            Duration::from_secs(30),
            || {
                let missing: Vec<&&str> = all.iter().filter(|n| !shown(n)).collect();
                if !missing.is_empty() {
                    eprintln!("instance {i} does not show {missing:?} yet");
                }
                missing.is_empty().then_some(())
            },
        );
    }
    // What the group committed of the repartition topics is deleted.
    for suffix in ["by-cookie", "by-customer"] {
        let topic = format!("{}.{suffix}", d.group);
        wait_for(&format!("{topic} purged"), Duration::from_secs(60), || {
            let reader = d.reader();
            let purged = (0..PARTITIONS as i32).filter(|&p| {
                let w = reader.fetch_watermarks(&topic, p, Duration::from_secs(5));
                w.is_ok_and(|(low, _)| low > 0)
            });
            (purged.count() > 0).then_some(())
        });
    }
    for (i, p) in instances.into_iter().enumerate() {
        d.stop(p, i);
    }
    assert_same_partition_states(&d.restored(), &split_state);
    // Every instance held some partitions.
    for i in 0..3 {
        let held = std::fs::read_dir(d.state(i)).map_or(0, |r| r.count());
        assert!(
            held > 0,
            "instance {i} held no partition:\n{}",
            tail(&d.log(i), 20)
        );
    }
}

#[test]
fn an_instance_added_and_one_killed_mid_stream_change_nothing() {
    // Small batches (a transaction each): the stream takes long enough
    // to be joined and killed in the middle of.
    let d = Deployment::new(&[EXACTLY_ONCE, ("PRETEXT__KAFKA__BATCH_MAX_MESSAGES", "20")]);
    let (day, promotion) = stream(d.dir.path(), 6000, 8);
    let mut all = day.clone();
    all.push(promotion.clone());
    let (want, split_state) = expected(&d, &all);

    let (first, rest) = day.split_at(day.len() / 3);
    let a = d.start(0);
    let b = d.start(1);
    d.produce(first);
    // Added while the first third flows: it takes partitions over.
    wait_for("the group to route some", Duration::from_secs(60), || {
        let routed: f64 = [&a, &b]
            .iter()
            .filter_map(|p| p.metrics())
            .map(|m| broker::metric_sum(&m, "pretext_events_total"))
            .sum();
        (routed > 0.0).then_some(())
    });
    let c = d.start(2);
    let lag = d.lag();
    eprintln!("instance 2 ready with the group {lag} records behind");
    assert!(
        lag > 0,
        "added after everything was applied: not mid-stream"
    );
    d.produce(rest);
    std::thread::sleep(Duration::from_secs(1));
    let lag = d.lag();
    b.kill9();
    eprintln!("instance 1 killed with the group {lag} records behind");
    assert!(
        lag > 0,
        "killed after everything was applied: not mid-stream"
    );
    d.wait_drained(&[0, 2]);
    d.produce(std::slice::from_ref(&promotion));
    d.wait_drained(&[0, 2]);
    let got = d.trigger_ids(want.len());
    assert_eq!(got, want, "the trigger ids of a single-instance replay");
    d.stop(a, 0);
    d.stop(c, 2);
    assert_same_partition_states(&d.restored(), &split_state);
    // The killed instance's partitions went on elsewhere, from their
    // changelogs.
    let restored = most_restored(&(d.log(0) + &d.log(2)));
    assert!(
        restored > 0,
        "no partition was restored from its changelogs"
    );
    let taken = std::fs::read_dir(d.state(2)).map_or(0, |r| r.count());
    assert!(
        taken > 0,
        "the added instance took no partition:\n{}",
        tail(&d.log(2), 20)
    );
}

/// An erased customer whose cookies hash to several identity partitions,
/// held by other instances than its customer partition: once the erase is
/// applied, no instance's state and no changelog's latest value (what
/// compaction keeps, what a restore rebuilds) names the customer or its
/// cookies.
#[test]
fn an_erase_leaves_nothing_of_the_customer_on_any_instance_or_changelog() {
    let d = Deployment::new(&[EXACTLY_ONCE]);
    let cookies: Vec<String> = (0..10).map(|i| format!("ck-erased-{i}")).collect();
    let spread: BTreeSet<i32> = cookies
        .iter()
        .map(|c| pretext::engine::routing::partition_for(c.as_bytes(), PARTITIONS as i32))
        .collect();
    assert!(spread.len() > 2, "cookies in several identity partitions");
    let t0 = now_ms() - DAY;
    let mut lines = Vec::new();
    for (i, cookie) in cookies.iter().enumerate() {
        let ts = t0 + i as i64 * 60_000;
        lines.push(format!(
            r#"{{"type":"identify","event_id":"i{i}","ts":{ts},"cookie_id":"{cookie}","crm_id":"CUST-ERASED"}}"#
        ));
        lines.push(format!(
            r#"{{"type":"add_to_cart","event_id":"v{i}","ts":{},"cookie_id":"{cookie}","product_id":"P{i}","category":"bags"}}"#,
            ts + 1
        ));
    }
    lines.push(format!(
        r#"{{"type":"consent","event_id":"c","ts":{},"crm_id":"CUST-ERASED","email":true}}"#,
        t0 + 11 * 60_000
    ));
    let instances: Vec<Pretext> = (0..2).map(|i| d.start(i)).collect();
    d.produce(&lines);
    d.wait_drained(&[0, 1]);
    let config = d.group_config();
    let names = |(_, k, v): &(String, Vec<u8>, Vec<u8>)| {
        broker::holds(k, b"CUST-ERASED") || broker::holds(v, b"CUST-ERASED")
    };
    assert!(
        broker::changelog_latest_values(&config).iter().any(names),
        "the customer is in the changelogs before the erase"
    );

    d.produce(&[format!(
        r#"{{"type":"erase","event_id":"x","ts":{},"crm_id":"CUST-ERASED"}}"#,
        t0 + 12 * 60_000
    )]);
    d.wait_drained(&[0, 1]);
    for (i, p) in instances.into_iter().enumerate() {
        d.stop(p, i);
    }
    let needles = [&b"CUST-ERASED"[..], b"ck-erased"];
    for (topic, key, value) in broker::changelog_latest_values(&config) {
        for needle in needles {
            assert!(
                !broker::holds(&key, needle) && !broker::holds(&value, needle),
                "{topic} still names {}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    for i in 0..2 {
        for dir in std::fs::read_dir(d.state(i)).unwrap() {
            let dir = dir.unwrap().path();
            let store = Store::open(&dir).unwrap();
            for cf in Cf::ALL {
                for (key, value) in store.committed(cf).unwrap() {
                    for needle in needles {
                        assert!(
                            !broker::holds(&key, needle) && !broker::holds(&value, needle),
                            "{} {} still names {}",
                            dir.display(),
                            cf.name(),
                            String::from_utf8_lossy(needle)
                        );
                    }
                }
            }
        }
    }
}

/// A restart within the session timeout moves no partition (static
/// membership): the other instance sees no rebalance, and the restarted
/// one resumes every partition from its own disk, restoring nothing.
#[test]
fn a_restart_within_the_session_timeout_moves_no_partition() {
    // A session long enough for a stop and a start on a loaded machine.
    let d = Deployment::new(&[("PRETEXT__KAFKA__CONSUMER__SESSION__TIMEOUT__MS", "30000")]);
    let (day, _) = stream(d.dir.path(), 2000, 9);
    let (first, rest) = day.split_at(day.len() / 2);
    let a = d.start(0);
    let b = d.start(1);
    d.produce(first);
    d.wait_drained(&[0, 1]);
    let rebalances = |i: usize| {
        broker::without_ansi(&d.log(i))
            .lines()
            .filter(|l| l.contains("partitions assigned") || l.contains("partitions revoked"))
            .count()
    };
    let seen_by_b = rebalances(1);
    let before_restart = broker::without_ansi(&d.log(0)).len();
    d.stop(a, 0);
    let a = d.start(0);
    d.produce(rest);
    d.wait_drained(&[0, 1]);
    assert_eq!(
        rebalances(1),
        seen_by_b,
        "the other instance saw a rebalance:\n{}",
        tail(&d.log(1), 20)
    );
    let second_run = broker::without_ansi(&d.log(0))[before_restart..].to_string();
    let opened = second_run
        .lines()
        .filter(|l| l.contains("stage partition open"))
        .count();
    assert!(
        opened > 0,
        "the restarted instance opened no partition:\n{second_run}"
    );
    assert_eq!(
        most_restored(&second_run),
        0,
        "a partition was restored:\n{second_run}"
    );
    d.stop(a, 0);
    d.stop(b, 1);
}

/// Each partition's idle advance: a customer's view, then no more input;
/// its partition's watermark follows the clock from the view's time and
/// the check fires, with no later event to move it.
#[test]
fn an_idle_partition_fires_its_due_check() {
    let d = Deployment::new(&[
        ("PRETEXT__WATERMARK__IDLE_TIMEOUT", "1s"),
        ("PRETEXT__TRIGGERS__VIEWED_NOT_BOUGHT__DELAY", "3s"),
    ]);
    let instances: Vec<Pretext> = (0..2).map(|i| d.start(i)).collect();
    let ts = now_ms() - DAY;
    d.produce(&[format!(
        r#"{{"type":"product_view","event_id":"v1","ts":{ts},"cookie_id":"ck-idle","crm_id":"C-IDLE","product_id":"P1","category":"coats"}}"#
    )]);
    let got = d
        .broker
        .consume(&d.topics.triggers, 1, Duration::from_secs(60));
    assert_eq!(got.len(), 1, "one trigger, fired by the idle advance");
    let trigger: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(trigger["crm_id"], "C-IDLE");
    assert_eq!(trigger["type"], "viewed_not_bought");
    for (i, p) in instances.into_iter().enumerate() {
        d.stop(p, i);
    }
}

/// Standby replicas: with one copy of each partition, the instance that
/// takes a killed instance's partitions over already has them, tailed from
/// their changelogs, and restores nothing.
#[test]
fn a_standby_copy_makes_a_takeover_restore_nothing() {
    let d = Deployment::new(&[EXACTLY_ONCE, ("PRETEXT__SCALE__STANDBY_REPLICAS", "1")]);
    let (day, _) = stream(d.dir.path(), 2000, 10);
    let a = d.start(0);
    let b = d.start(1);
    d.produce(&day);
    d.wait_drained(&[0, 1]);
    // Each instance holds its partitions and a copy of every other one.
    wait_for(
        "a copy of every partition on instance 1",
        Duration::from_secs(60),
        || {
            let dirs = std::fs::read_dir(d.state(1)).ok()?.count();
            (dirs == 2 * PARTITIONS as usize).then_some(())
        },
    );
    // The copies' last round has read everything committed.
    std::thread::sleep(Duration::from_secs(3));
    let before_kill = broker::without_ansi(&d.log(1)).len();
    a.kill9();
    d.produce(&[format!(
        r#"{{"type":"consent","event_id":"after-kill","ts":{},"crm_id":"C-AFTER","email":true}}"#,
        now_ms() - DAY
    )]);
    d.wait_drained(&[1]);
    let takeover = broker::without_ansi(&d.log(1))[before_kill..].to_string();
    let opened = takeover
        .lines()
        .filter(|l| l.contains("stage partition open"))
        .count();
    assert!(opened > 0, "instance 1 took nothing over:\n{takeover}");
    assert_eq!(
        most_restored(&takeover),
        0,
        "a takeover restored records:\n{takeover}"
    );
    d.stop(b, 1);
}

/// A transaction aborted under a batch (as a rebalance does to one whose
/// offsets carry a generation that moved on; injected here, every 5th)
/// leaves nothing visible: the instance reads the batch again from its
/// partitions' last commit, and the triggers and the state are a replay's.
#[test]
fn aborted_transactions_are_read_again_and_change_nothing() {
    let d = Deployment::new(&[
        EXACTLY_ONCE,
        ("PRETEXT__KAFKA__BATCH_MAX_MESSAGES", "100"),
        ("PRETEXT_ABORT_TXN_EVERY", "5"),
    ]);
    let (day, promotion) = stream(d.dir.path(), 3000, 11);
    let mut all = day.clone();
    all.push(promotion.clone());
    let (want, split_state) = expected(&d, &all);
    let instances: Vec<Pretext> = (0..2).map(|i| d.start(i)).collect();
    d.produce(&day);
    d.wait_drained(&[0, 1]);
    d.produce(std::slice::from_ref(&promotion));
    d.wait_drained(&[0, 1]);
    let got = d.trigger_ids(want.len());
    assert_eq!(got, want, "the trigger ids of a single-instance replay");
    let aborted = (0..2)
        .map(|i| d.log(i).matches("the batch is read again").count())
        .sum::<usize>();
    assert!(
        aborted > 2,
        "transactions were aborted and read again: {aborted}"
    );
    for (i, p) in instances.into_iter().enumerate() {
        d.stop(p, i);
    }
    assert_same_partition_states(&d.restored(), &split_state);
}
