//! Changelogs on a real Apache Kafka broker (docs/scale-out.md, "State
//! per partition"): each stage partition's state, produced to its
//! compacted changelog topics, restores into an empty directory as the
//! same state; a state that holds its changelogs resumes from its
//! checkpoint and applies only what came after, deletions included.

#[path = "common/broker.rs"]
mod broker;

use std::path::Path;
use std::time::Duration;

use broker::{generated, unique, Broker};
use pretext::config::Config;
use pretext::engine::partitioned::partition_dir;
use pretext::engine::partitioned::Partitioned;
use pretext::engine::routing::Stage;
use pretext::engine::Engine;
use pretext::engine::Outputs;
use pretext::event::Event;
use pretext::live::changelog::{commit_shipped, restore, restore_partitions, ChangelogWriter};
use pretext::live::internal_topics::ensure;
use pretext::live::standby::Standby;
use pretext::replay::{replay, ReplayOptions};
use pretext::state::changelog::{snapshot, Checkpoint};
use pretext::state::{Cf, Change, Store};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh group on `broker` with `partitions` partitions, its internal
/// topics created.
fn config(broker: &Broker, partitions: u32) -> Config {
    let mut c = Config::default();
    c.kafka.brokers = broker.addr.clone();
    c.kafka.group_id = unique("changelog");
    c.scale.partitions = partitions;
    ensure(&c, TIMEOUT).unwrap();
    c
}

/// A partitioned replay of a generated stream: the states to ship.
fn replayed(config: &Config, dir: &Path, partitions: u32) -> std::path::PathBuf {
    let input = dir.join("events.jsonl");
    let lines = generated(dir, 6000, 11);
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let state = dir.join("replayed");
    let opts = ReplayOptions {
        inputs: vec![input],
        output: Some(dir.join("triggers.jsonl")),
        state_dir: Some(state.clone()),
        quiet: true,
        partitions,
        ..ReplayOptions::default()
    };
    replay(config, &opts).unwrap();
    state
}

#[test]
fn every_partition_restored_from_its_changelogs_is_the_state_that_wrote_them() {
    let broker = Broker::start();
    let partitions = 2;
    let config = config(&broker, partitions);
    let dir = tempfile::tempdir().unwrap();
    let state = replayed(&config, dir.path(), partitions);
    let writer = ChangelogWriter::new(&config).unwrap();
    for stage in Stage::ALL {
        for p in 0..partitions {
            let what = format!("{} partition {p}", stage.name());
            let source = Engine::open(&partition_dir(&state, stage, p), &config).unwrap();
            let changes = snapshot(source.store(), stage.stores()).unwrap();
            assert!(changes.len() > 100, "{what}: a state worth shipping");
            writer.send(stage, p as i32, &changes, TIMEOUT).unwrap();

            let target = dir.path().join(format!("restored-{}-{p}", stage.name()));
            let mut store = Store::open(&target).unwrap();
            let restored = restore(&config, stage, p as i32, &mut store, &target, TIMEOUT).unwrap();
            assert_eq!(restored.records, changes.len() as u64, "{what}");
            for &cf in stage.stores() {
                assert!(
                    store.committed(cf).unwrap() == source.store().committed(cf).unwrap(),
                    "{what}: {} differs",
                    cf.name()
                );
            }
            // Everything held: a second restore applies nothing.
            let again = restore(&config, stage, p as i32, &mut store, &target, TIMEOUT).unwrap();
            assert_eq!(again.records, 0, "{what}: resumed at its checkpoint");
        }
    }
}

fn link(i: usize, value: &str) -> Change {
    Change {
        cf: Cf::Links,
        key: format!("ck-{i:04}").into_bytes(),
        value: Some(value.as_bytes().to_vec()),
    }
}

#[test]
fn a_restore_resumes_from_its_checkpoint_and_applies_deletions() {
    let broker = Broker::start();
    let config = config(&broker, 3);
    let writer = ChangelogWriter::new(&config).unwrap();
    let first: Vec<Change> = (0..100).map(|i| link(i, "C1")).collect();
    writer.send(Stage::Identity, 1, &first, TIMEOUT).unwrap();
    // Another partition's changes are not this partition's state.
    writer
        .send(Stage::Identity, 2, &[link(500, "C9")], TIMEOUT)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("p1");
    let mut store = Store::open(&target).unwrap();
    let r = restore(&config, Stage::Identity, 1, &mut store, &target, TIMEOUT).unwrap();
    assert_eq!(r.records, 100);
    assert!(
        r.bytes >= 100 * (7 + 2),
        "keys and values counted: {}",
        r.bytes
    );

    let mut second: Vec<Change> = (0..10)
        .map(|i| Change {
            value: None,
            ..link(i, "")
        })
        .collect();
    second.push(link(10, "C2"));
    writer.send(Stage::Identity, 1, &second, TIMEOUT).unwrap();
    let r = restore(&config, Stage::Identity, 1, &mut store, &target, TIMEOUT).unwrap();
    assert_eq!(r.records, 11, "only what came after the checkpoint");

    let expected: Vec<(Vec<u8>, Vec<u8>)> = (10..100)
        .map(|i| {
            let c = link(i, if i == 10 { "C2" } else { "C1" });
            (c.key, c.value.unwrap())
        })
        .collect();
    assert_eq!(store.committed(Cf::Links).unwrap(), expected);

    // A checkpoint past the changelog's end (the topic re-created) is
    // refused, naming the changelog, and the state is left as it was.
    let topic = format!("{}.identity-links-changelog", config.kafka.group_id);
    let mut ahead = Checkpoint::read(&target).unwrap();
    ahead.next.insert(topic.clone(), 1_000);
    ahead.write(&target).unwrap();
    let err = restore(&config, Stage::Identity, 1, &mut store, &target, TIMEOUT).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("{topic}[1]")) && text.contains("1000"),
        "{text}"
    );
    assert_eq!(store.committed(Cf::Links).unwrap(), expected);

    // From scratch, the whole history gives the same state.
    let fresh_dir = dir.path().join("fresh");
    let mut fresh = Store::open(&fresh_dir).unwrap();
    restore(&config, Stage::Identity, 1, &mut fresh, &fresh_dir, TIMEOUT).unwrap();
    assert_eq!(fresh.committed(Cf::Links).unwrap(), expected);
}

fn events(dir: &Path) -> Vec<Event> {
    generated(dir, 8000, 12)
        .iter()
        .filter_map(|l| pretext::decode::decode(l.as_bytes(), usize::MAX).ok())
        .collect()
}

/// Applies `events`, then ends the input and fires what is pending.
fn run(engine: &mut Partitioned, events: &[Event], end: bool) -> Outputs {
    let mut out = Outputs::default();
    for e in events {
        engine.apply(e, &mut out).unwrap();
    }
    if end {
        engine.end_of_input(&mut out).unwrap();
        engine.flush(&mut out).unwrap();
    }
    out
}

/// An instance runs the first half of a stream, shipping each commit to
/// the changelogs, and is gone (its disk with it); another, on an empty
/// disk, restores every partition from the changelogs and runs the second
/// half. Together they fire what one instance that never moved fires, and
/// leave its state. A third, on the first one's disk, resumes from its
/// checkpoints: nothing to restore.
#[test]
fn partitions_moved_to_an_empty_instance_restore_and_go_on_as_if_never_moved() {
    let broker = Broker::start();
    let partitions = 3;
    let config = config(&broker, partitions);
    let dir = tempfile::tempdir().unwrap();
    let events = events(dir.path());
    let (first, second) = events.split_at(events.len() / 2);
    let writer = ChangelogWriter::new(&config).unwrap();

    let gone = dir.path().join("gone");
    let mut a = Partitioned::open(&gone, &config, partitions).unwrap();
    let mut fired = run(&mut a, first, false);
    commit_shipped(&writer, &mut a, TIMEOUT).unwrap();
    drop(a);

    let moved = dir.path().join("moved");
    let restored = restore_partitions(&config, &moved, partitions, TIMEOUT).unwrap();
    assert!(restored.records > 1000, "restored {restored:?}");
    let mut b = Partitioned::open(&moved, &config, partitions).unwrap();
    let after = run(&mut b, second, true);
    fired.triggers.extend(after.triggers);
    fired.conversions.extend(after.conversions);
    b.commit().unwrap();

    let never = dir.path().join("never-moved");
    let mut c = Partitioned::open(&never, &config, partitions).unwrap();
    let whole = run(&mut c, &events, true);
    c.commit().unwrap();
    assert!(whole.triggers.len() > 50, "a stream that fires");
    assert_eq!(fired, whole, "the triggers and conversions of a move");
    for stage in Stage::ALL {
        for (p, (moved, never)) in b
            .partitions(stage)
            .iter()
            .zip(c.partitions(stage))
            .enumerate()
        {
            for &cf in stage.stores() {
                let (m, n) = (
                    moved.store().committed(cf).unwrap(),
                    never.store().committed(cf).unwrap(),
                );
                assert!(
                    m == n,
                    "{} {p} {}: the moved state differs",
                    stage.name(),
                    cf.name()
                );
            }
        }
    }

    let resumed = restore_partitions(&config, &gone, partitions, TIMEOUT).unwrap();
    assert_eq!(resumed.records, 0, "the first disk holds what it shipped");
}

/// Every partition of every stage, for a standby of them all.
fn all_partitions(partitions: u32) -> Vec<(Stage, u32)> {
    Stage::ALL
        .into_iter()
        .flat_map(|s| (0..partitions).map(move |p| (s, p)))
        .collect()
}

/// A standby tails the changelogs while the active instance commits; when
/// the active one is gone, taking over restores only what the standby had
/// not read yet (at most the last commit), far less than a restore from
/// nothing, and goes on exactly as the instance that never failed.
#[test]
fn a_standby_takes_over_restoring_only_the_tail() {
    let broker = Broker::start();
    let partitions = 2;
    let config = config(&broker, partitions);
    let dir = tempfile::tempdir().unwrap();
    let events = events(dir.path());
    let third = events.len() / 3;
    let writer = ChangelogWriter::new(&config).unwrap();

    let warm = dir.path().join("standby");
    let standby = Standby::start(
        &config,
        &warm,
        all_partitions(partitions),
        Duration::from_millis(100),
    )
    .unwrap();
    let mut active = Partitioned::open(&dir.path().join("active"), &config, partitions).unwrap();
    let mut fired = run(&mut active, &events[..third], false);
    let first = commit_shipped(&writer, &mut active, TIMEOUT).unwrap();
    let out = run(&mut active, &events[third..2 * third], false);
    fired.triggers.extend(out.triggers);
    fired.conversions.extend(out.conversions);
    // The standby has read the first commit before the second is made.
    broker::wait_for("the standby to read the first commit", TIMEOUT, || {
        (standby.records() >= first).then_some(())
    });
    let second = commit_shipped(&writer, &mut active, TIMEOUT).unwrap();
    drop(active);
    let tailed = standby.stop().unwrap();
    assert!(tailed.records > 1000, "the standby tailed: {tailed:?}");

    let cold = dir.path().join("cold");
    let full = restore_partitions(&config, &cold, partitions, TIMEOUT).unwrap();
    let tail = restore_partitions(&config, &warm, partitions, TIMEOUT).unwrap();
    assert_eq!(full.records, first + second, "from nothing: every commit");
    assert!(
        tail.records <= second && tail.records < full.records,
        "taking over restores at most the last commit ({second} records): {} of {}",
        tail.records,
        full.records
    );

    let mut taken_over = Partitioned::open(&warm, &config, partitions).unwrap();
    let out = run(&mut taken_over, &events[2 * third..], true);
    fired.triggers.extend(out.triggers);
    fired.conversions.extend(out.conversions);
    let mut never =
        Partitioned::open(&dir.path().join("never-failed"), &config, partitions).unwrap();
    assert_eq!(fired, run(&mut never, &events, true));
}

/// An erased customer whose cookies hash to several identity partitions:
/// once the erase's commit is shipped, no changelog's latest value (what
/// compaction keeps, what a restore rebuilds) names the customer or its
/// cookies, in its key or its value; only the tombstone's entry remains,
/// keyed by the customer's hash.
#[test]
fn an_erase_leaves_nothing_of_the_customer_in_any_changelog() {
    let broker = Broker::start();
    let partitions = 4;
    let config = config(&broker, partitions);
    let dir = tempfile::tempdir().unwrap();
    let writer = ChangelogWriter::new(&config).unwrap();
    let mut engine = Partitioned::open(&dir.path().join("state"), &config, partitions).unwrap();
    let t0 = 1_795_341_600_000_i64;
    let event = |json: String| pretext::decode::decode(json.as_bytes(), usize::MAX).unwrap();
    let mut events = Vec::new();
    for i in 0..10 {
        let ts = t0 + i * 60_000;
        events.push(event(format!(
            r#"{{"type":"identify","event_id":"i{i}","ts":{ts},"cookie_id":"ck-erased-{i}","crm_id":"CUST-ERASED"}}"#
        )));
        events.push(event(format!(
            r#"{{"type":"add_to_cart","event_id":"v{i}","ts":{},"cookie_id":"ck-erased-{i}","product_id":"P{i}","category":"bags"}}"#,
            ts + 1
        )));
    }
    events.push(event(format!(
        r#"{{"type":"consent","event_id":"c","ts":{},"crm_id":"CUST-ERASED","email":true}}"#,
        t0 + 11 * 60_000
    )));
    run(&mut engine, &events, false);
    commit_shipped(&writer, &mut engine, TIMEOUT).unwrap();
    let before = broker::changelog_latest_values(&config);
    assert!(
        before
            .iter()
            .any(|(_, k, v)| broker::holds(k, b"CUST-ERASED") || broker::holds(v, b"CUST-ERASED")),
        "the customer is in the changelogs before the erase"
    );

    let erase = event(format!(
        r#"{{"type":"erase","event_id":"x","ts":{},"crm_id":"CUST-ERASED"}}"#,
        t0 + 12 * 60_000
    ));
    run(&mut engine, &[erase], false);
    commit_shipped(&writer, &mut engine, TIMEOUT).unwrap();
    for (topic, key, value) in broker::changelog_latest_values(&config) {
        for needle in [&b"CUST-ERASED"[..], b"ck-erased"] {
            assert!(
                !broker::holds(&key, needle) && !broker::holds(&value, needle),
                "{topic} still names {}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}
