//! Where a new state starts reading (`kafka.start_from`, contract v2
//! section 7) and the backfill-then-live procedure of docs/operations.md,
//! end to end on a real Apache Kafka broker.

#[path = "common/broker.rs"]
mod broker;

use std::path::Path;
use std::time::Duration;

use broker::{
    assert_same_state, by_customer, metric_sum, replay_with, t0, unique, wait_for, write_config,
    Broker, Pretext, Topics,
};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

const HOUR: i64 = 3_600_000;
/// No idle advance: the live run must fire exactly what a replay without
/// `--flush` fires.
const NO_IDLE: (&str, &str) = ("PRETEXT__WATERMARK__IDLE_TIMEOUT", "1h");

/// The event time of a line, epoch ms (the generator writes RFC 3339).
fn ts_of(line: &str) -> Option<i64> {
    let v: Value = serde_json::from_str(line).ok()?;
    pretext::time::parse_rfc3339(v["ts"].as_str()?)
}

/// Two days of generated events that ended a day ago, in time order (late
/// and unreadable lines dropped), so that a seek by record timestamp cuts
/// the stream in two clean halves.
fn two_days(dir: &Path) -> Vec<(i64, String)> {
    let start = pretext::time::format_ts(t0() - 48 * HOUR);
    let out = dir.join("gen.jsonl");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args([
            "gen",
            "--customers",
            "300",
            "--days",
            "2",
            "--start",
            &start,
        ])
        .args(["--events", "6000", "--seed", "7", "--output"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let mut high = i64::MIN;
    let mut lines = Vec::new();
    for line in std::fs::read_to_string(out).unwrap().lines() {
        if let Some(ts) = ts_of(line).filter(|&ts| ts >= high) {
            high = ts;
            lines.push((ts, line.to_string()));
        }
    }
    // A last view two hours on: live, W trails the highest ts by the
    // allowed lateness, while a replay ends with W at the highest ts; this
    // moves both past every check of the two days, and fires none itself.
    let tick = high + 2 * HOUR;
    let line = serde_json::json!({"type": "product_view", "event_id": "tick", "ts": tick,
        "cookie_id": "ck_tick", "crm_id": "C_TICK", "product_id": "P_TICK"});
    lines.push((tick, line.to_string()));
    lines
}

/// Produces each line to partition 0 with its event time as the Kafka
/// record timestamp (CreateTime), in order.
fn produce_stamped(broker: &Broker, topic: &str, lines: &[(i64, String)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("queue.buffering.max.messages", "100000")
        .create()
        .unwrap();
    for (ts, line) in lines {
        let rec = BaseRecord::<str, str>::to(topic)
            .partition(0)
            .key("k")
            .payload(line.as_str())
            .timestamp(*ts);
        producer.send(rec).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

fn texts(lines: &[(i64, String)]) -> Vec<String> {
    lines.iter().map(|(_, l)| l.clone()).collect()
}

/// Input messages pretext has read: applied, duplicate, ignored or rejected.
fn messages_read(metrics: &str) -> f64 {
    [
        "pretext_events_total",
        "pretext_events_duplicate_total",
        "pretext_events_ignored_erased_total",
        "pretext_events_rejected_total",
    ]
    .iter()
    .map(|name| metric_sum(metrics, name))
    .sum()
}

/// The same triggers per customer, or a panic naming the counts and the
/// first few triggers only one side has.
fn assert_same_triggers(got: &[String], expected: &[String]) {
    if by_customer(got) == by_customer(expected) {
        return;
    }
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .filter(|l| !b.contains(l))
            .take(3)
            .cloned()
            .collect()
    };
    panic!(
        "{} triggers, {} expected; only got: {:#?}; only expected: {:#?}",
        got.len(),
        expected.len(),
        only(got, expected),
        only(expected, got)
    );
}

/// Runs pretext with `config` and `start_from` until it has applied
/// `count` input messages, then stops it; the triggers it produced.
fn run_until_applied(
    broker: &Broker,
    topics: &Topics,
    config: &Path,
    start_from: &str,
    count: usize,
) -> Vec<String> {
    let state = config.with_file_name("state");
    let log = config.with_file_name("pretext.log");
    let env = [NO_IDLE, ("PRETEXT__KAFKA__START_FROM", start_from)];
    let pretext = Pretext::start_with_env(config, &state, &log, &env);
    pretext.wait_ready();
    wait_for("every event applied", Duration::from_secs(120), || {
        let m = pretext.metrics()?;
        (messages_read(&m) >= count as f64).then_some(())
    });
    let m = pretext.metrics().unwrap();
    assert_eq!(messages_read(&m), count as f64);
    assert!(pretext.terminate().success());
    consume_all(broker, &topics.triggers)
}

/// Two days of events produced to a fresh broker's input topic, and the
/// seam at the middle line's time: `from` is the first line stamped at or
/// after it.
struct TwoDaysProduced {
    broker: Broker,
    topics: Topics,
    dir: tempfile::TempDir,
    lines: Vec<(i64, String)>,
    seam: i64,
    from: usize,
}

fn two_days_produced() -> TwoDaysProduced {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let lines = two_days(dir.path());
    produce_stamped(&broker, &topics.input, &lines);
    let seam = lines[lines.len() / 2].0;
    let from = lines.iter().position(|(ts, _)| *ts >= seam).unwrap();
    TwoDaysProduced {
        broker,
        topics,
        dir,
        lines,
        seam,
        from,
    }
}

/// Every message now on `topic`: what pretext produced before it stopped.
fn consume_all(broker: &Broker, topic: &str) -> Vec<String> {
    broker
        .consume(topic, 0, Duration::from_secs(10))
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn a_fresh_state_started_at_a_time_sees_only_the_records_from_it() {
    let TwoDaysProduced {
        broker,
        topics,
        dir,
        lines,
        seam,
        from,
    } = two_days_produced();
    let tail = &lines[from..];
    let expected = replay_with(&texts(tail), dir.path(), None, false, &[NO_IDLE]);
    assert!(!expected.is_empty(), "the second day fires triggers");

    let (config, _) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let seam_text = pretext::time::format_ts(seam);
    let got = run_until_applied(&broker, &topics, &config, &seam_text, tail.len());
    assert_same_triggers(&got, &expected);
}

#[test]
fn a_time_after_every_record_starts_at_the_end() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let lines = two_days(dir.path());
    let (old, new) = lines.split_at(lines.len() - 200);
    produce_stamped(&broker, &topics.input, old);
    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let log = dir.path().join("pretext.log");
    // A time later than every record already in the topic: no offset
    // matches it, so the partition starts at its end.
    let after = pretext::time::format_ts(old.last().unwrap().0 + 1);
    let env = [NO_IDLE, ("PRETEXT__KAFKA__START_FROM", after.as_str())];
    let pretext = Pretext::start_with_env(&config, &state, &log, &env);
    pretext.wait_ready();
    // Whether the partition's position is set before or after these
    // arrive, they are read (stamped after `after`) and none of the old
    // records is.
    produce_stamped(&broker, &topics.input, new);
    wait_for("the new events applied", Duration::from_secs(60), || {
        let m = pretext.metrics()?;
        (messages_read(&m) >= new.len() as f64).then_some(())
    });
    let m = pretext.metrics().unwrap();
    assert_eq!(messages_read(&m), new.len() as f64);
    assert!(pretext.terminate().success());
}

#[test]
fn backfill_then_live_equals_a_replay_of_the_whole_log() {
    // The topic holds the whole log (a retention longer than the seam's
    // age); the files run six hours past the seam, as an export cut
    // carelessly would: live mode reads those records again and ignores
    // them as duplicates.
    let TwoDaysProduced {
        broker,
        topics,
        dir,
        lines,
        seam,
        from: cut,
    } = two_days_produced();
    let files_end = lines
        .iter()
        .position(|(ts, _)| *ts >= seam + 6 * HOUR)
        .unwrap();

    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let history = dir.path().join("history.jsonl");
    std::fs::write(&history, texts(&lines[..files_end]).join("\n") + "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["replay", "--quiet", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .arg("--input")
        .arg(&history)
        .env(NO_IDLE.0, NO_IDLE.1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();

    let seam_text = pretext::time::format_ts(seam);
    let live = run_until_applied(&broker, &topics, &config, &seam_text, lines.len() - cut);
    all.extend(live);
    let whole = dir.path().join("whole");
    let expected = replay_with(&texts(&lines), dir.path(), Some(&whole), false, &[NO_IDLE]);
    assert_same_triggers(&all, &expected);
    assert_same_state(&state, &whole);
}

/// Scaled out (`scale.partitions > 1`), an instance's router starts a
/// fresh input partition at the time too: it reads the records stamped
/// from it on, and none before.
#[test]
fn a_scaled_out_instance_started_at_a_time_reads_only_the_records_from_it() {
    let TwoDaysProduced {
        broker,
        topics,
        dir,
        lines,
        seam,
        from,
    } = two_days_produced();
    let tail = lines.len() - from;
    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let log = dir.path().join("pretext.log");
    let seam_text = pretext::time::format_ts(seam);
    let env = [
        NO_IDLE,
        ("PRETEXT__KAFKA__START_FROM", seam_text.as_str()),
        ("PRETEXT__SCALE__PARTITIONS", "3"),
    ];
    let pretext = Pretext::start_with_env(&config, &state, &log, &env);
    wait_for("the second day read", Duration::from_secs(60), || {
        let m = pretext.metrics()?;
        (messages_read(&m) >= tail as f64).then_some(())
    });
    // Time for anything read beyond it to show.
    std::thread::sleep(Duration::from_secs(2));
    let m = pretext.metrics().unwrap();
    assert_eq!(
        messages_read(&m),
        tail as f64,
        "read from the time on, and only that"
    );
    assert!(pretext.terminate().success());
}
