//! End-to-end: `pretext run` against a real Apache Kafka broker process
//! (one per test binary, scripts/kafka.sh), with random topic and group
//! names per test.

#[path = "common/broker.rs"]
mod broker;
#[path = "common/metric_names.rs"]
mod metric_names;

use std::collections::BTreeSet;
use std::time::Duration;

use broker::{
    assert_same_state, by_customer, free_port, generated, http_get, keyed, metric_sum, replay_with,
    t0, trigger_ids, unique, wait_for, without_ansi, write_config, Broker, Interloper, Pretext,
    Topics, EXACT,
};
use serde_json::{json, Value};

const MIN: i64 = 60_000;
/// No idle advance within a test: the watermark moves with the event
/// times only, in live mode as in a replay.
const NO_IDLE: [(&str, &str); 1] = [("PRETEXT__WATERMARK__IDLE_TIMEOUT", "1h")];
const HOUR: i64 = 3_600_000;

fn view(id: &str, ts: i64, cookie: &str, crm: &str, product: &str) -> String {
    json!({"type":"product_view","event_id":id,"ts":ts,"cookie_id":cookie,"crm_id":crm,
           "product_id":product,"category":"coats"})
    .to_string()
}

#[test]
fn triggers_arrive_as_a_replay_of_the_same_input_gives_them() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let t = t0();
    let lines = vec![
        view("e1", t, "ck1", "C1", "P1"),
        view("e2", t, "ck2", "C2", "P1"),
        json!({"type":"purchase","event_id":"e3","ts":t + 10 * MIN,"order_id":"o1","channel":"store",
               "crm_id":"C2","items":[{"product_id":"P1"}]})
        .to_string(),
        json!({"type":"promotion","event_id":"e4","ts":t + 30 * MIN,"product_id":"P1","discount_pct":25}).to_string(),
        view("e5", t + 3 * HOUR, "ck3", "C3", "P9"),
        // Moves the watermark past C3's check (no idle advance here).
        view("e6", t + 5 * HOUR, "ck4", "C4", "P9"),
    ];
    let expected = replay_with(&lines, dir.path(), None, false, &NO_IDLE);
    assert_eq!(expected.len(), 3, "vnb C1, promo C1, vnb C3: {expected:?}");
    broker.produce(&topics.input, &keyed(&lines));

    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let log = dir.path().join("pretext.log");
    let pretext = Pretext::start_with_env(&config, &state, &log, &NO_IDLE);
    pretext.wait_ready();
    let got = broker.consume(&topics.triggers, expected.len(), Duration::from_secs(60));
    let payloads: Vec<String> = got.iter().map(|(_, p)| p.clone()).collect();
    // The triggers topic has several partitions (keyed by crm_id): the
    // order holds per customer, not across them.
    assert_eq!(
        by_customer(&payloads),
        by_customer(&expected),
        "live and replay agree byte for byte"
    );
    // C1 viewed P1 and bought nothing: a viewed_not_bought an hour later,
    // with the id a replay gives (checked byte for byte above).
    let vnb: Value = payloads
        .iter()
        .map(|p| serde_json::from_str::<Value>(p).unwrap())
        .find(|t| t["type"] == "viewed_not_bought")
        .expect("a viewed_not_bought");
    assert_eq!(
        (&vnb["crm_id"], &vnb["product_id"]),
        (&json!("C1"), &json!("P1"))
    );
    assert_eq!(vnb["fired_at"], pretext::time::format_ts(t + HOUR).as_str());
    assert_eq!(vnb["trigger_id"].as_str().map(str::len), Some(16));
    for (key, payload) in &got {
        let v: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(
            key.as_deref(),
            v["crm_id"].as_str(),
            "the key is the crm_id"
        );
    }

    let metrics = pretext.metrics().expect("/metrics answers");
    assert_eq!(
        metric_sum(&metrics, "pretext_events_total"),
        lines.len() as f64
    );
    assert_eq!(metric_sum(&metrics, "pretext_triggers_total"), 3.0);
    for name in [
        "pretext_batch_duration_seconds_count",
        "pretext_watermark_seconds",
        "pretext_state_keys",
        "pretext_ready 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert_eq!(http_get(&pretext.http, "/healthz").map(|r| r.0), Some(200));
    // Lag comes from the consumer's statistics (every second in tests).
    let metrics = wait_for("consumer lag on /metrics", Duration::from_secs(20), || {
        let m = pretext.metrics()?;
        m.contains("pretext_consumer_lag_messages{").then_some(m)
    });
    assert_eq!(metric_sum(&metrics, "pretext_consumer_lag_messages"), 0.0);
    // What the dashboard and the alerts query, the running binary exports.
    for name in metric_names::used_by_dashboard_and_alerts() {
        let typed = format!("# TYPE {name} ");
        assert!(metrics.contains(&typed), "{name} missing:\n{metrics}");
    }
    let status = pretext.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

/// Before any partition is assigned (here: no broker listens at all) the
/// process is healthy, not ready, and exports every series it can at 0;
/// SIGTERM still exits 0. Needs no broker.
#[test]
fn http_answers_before_assignment_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let (config, state) = write_config(dir.path(), &nowhere, &Topics::named(), &unique("group"));
    let pretext = Pretext::start(&config, &state, &dir.path().join("pretext.log"));
    wait_for("/healthz 200", Duration::from_secs(30), || {
        (http_get(&pretext.http, "/healthz")?.0 == 200).then_some(())
    });
    assert_eq!(http_get(&pretext.http, "/readyz").map(|r| r.0), Some(503));
    let metrics = pretext.metrics().unwrap();
    // Lag series appear per assigned partition, so not yet; the watermark
    // and event-time lag gauges only once an event was applied.
    let names = metric_names::used_by_dashboard_and_alerts();
    assert!(names.len() >= 12, "the dashboard and alerts name {names:?}");
    let all = pretext::metrics::NAMES.iter().map(|n| n.to_string());
    let later = |n: &String| {
        n.contains("consumer_lag") || pretext::metrics::AFTER_FIRST_EVENT.contains(&n.as_str())
    };
    for name in all.chain(names).filter(|n| !later(n)) {
        let typed = format!("# TYPE {name} ");
        assert!(metrics.contains(&typed), "{name} missing:\n{metrics}");
    }
    for name in pretext::metrics::AFTER_FIRST_EVENT {
        assert!(
            !metrics.contains(&format!("\n{name} ")),
            "{name} before any event:\n{metrics}"
        );
    }
    for series in [
        "pretext_ready 0",
        "pretext_events_total{type=\"product_view\"} 0",
        "pretext_events_rejected_total{reason=\"too_large\"} 0",
        "pretext_suppressed_total{reason=\"low_score\"} 0",
        "pretext_triggers_total{group=\"treated\",type=\"viewed_not_bought\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    assert_eq!(http_get(&pretext.http, "/nope").map(|r| r.0), Some(404));
    let status = pretext.terminate();
    assert!(
        status.success(),
        "SIGTERM exits 0 without a broker: {status:?}"
    );
}

#[test]
fn a_bad_message_is_dead_lettered_while_later_messages_flow() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let t = t0();
    let good1 = view("e1", t, "ck1", "C1", "P1");
    let good2 = view("e2", t + MIN, "ck2", "C2", "P2");
    // Moves the watermark past the checks of C1 and C2.
    let good3 = view("e3", t + 2 * HOUR, "ck3", "C3", "P3");
    // Over the 100 kB limit set below; 65536 falls inside a two-byte 'é'.
    let big = format!("x{}", "é".repeat(75_000));
    broker.produce(
        &topics.input,
        &[
            (Some("ck1"), good1.as_bytes()),
            (Some("bad-key"), b"{not json"),
            (None, big.as_bytes()),
            (Some("ck2"), good2.as_bytes()),
            (Some("ck3"), good3.as_bytes()),
        ],
    );
    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    // This test also runs the cooperative rebalance protocol.
    use_cooperative_protocol(&config);
    let limit = [("PRETEXT__INPUT__MAX_MESSAGE_BYTES", "100000"), NO_IDLE[0]];
    let log = dir.path().join("pretext.log");
    let pretext = Pretext::start_with_env(&config, &state, &log, &limit);

    let dead = broker.consume(&topics.dead_letter, 2, Duration::from_secs(60));
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(
        dead[0].0.as_deref(),
        Some("bad-key"),
        "keyed by the input key"
    );
    let letter: Value = serde_json::from_str(&dead[0].1).unwrap();
    assert_eq!(letter["reason"], "invalid_json");
    assert_eq!(letter["topic"], topics.input.as_str());
    assert_eq!(letter["partition"], 0);
    assert_eq!(letter["offset"], 1);
    assert_eq!(letter["payload"], "{not json");
    // Too large: cut to 64 KiB, back to a character boundary so it stays text.
    assert_eq!(dead[1].0, None, "no input key, no dead-letter key");
    let letter: Value = serde_json::from_str(&dead[1].1).unwrap();
    assert_eq!(letter["reason"], "too_large");
    assert_eq!(letter["offset"], 2);
    let cut = letter["payload"].as_str().expect("a text payload");
    assert_eq!(cut.len(), 65_535);
    assert!(big.starts_with(cut));

    let triggers = broker.consume(&topics.triggers, 2, Duration::from_secs(60));
    let mut crms: Vec<Value> = triggers
        .iter()
        .map(|(_, p)| serde_json::from_str::<Value>(p).unwrap()["crm_id"].clone())
        .collect();
    crms.sort_by_key(|c| c.to_string());
    assert_eq!(crms, vec![json!("C1"), json!("C2")]);
    let metrics = pretext.metrics().unwrap();
    let text = without_ansi(&std::fs::read_to_string(&log).unwrap());
    assert!(
        text.contains("partitions assigned partitions=1 cooperative=true"),
        "not assigned by the cooperative protocol:\n{text}"
    );
    assert_eq!(metric_sum(&metrics, "pretext_events_rejected_total"), 2.0);
    assert_eq!(metric_sum(&metrics, "pretext_dead_letters_total"), 2.0);
    assert!(pretext.terminate().success());
}

#[test]
fn kill_9_and_sigterm_mid_stream_then_restart_apply_every_input_once() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(dir.path(), 20_000, 42);
    let replay_state = dir.path().join("replay-state");
    let expected = trigger_ids(&replay_with(
        &lines,
        dir.path(),
        Some(&replay_state),
        false,
        &EXACT,
    ));
    assert!(expected.len() > 100);

    let (first, rest) = lines.split_at(lines.len() * 6 / 10);
    broker.produce(&topics.input, &keyed(first));
    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let log = dir.path().join("pretext.log");
    // Small batches for the first run, so the kill lands mid-stream: some
    // batches committed, one likely half applied, the rest not read.
    let mut small = EXACT.to_vec();
    small.push(("PRETEXT__KAFKA__BATCH_MAX_MESSAGES", "10"));
    let pretext = Pretext::start_with_env(&config, &state, &log, &small);
    let applied = wait_for("pretext to start applying", Duration::from_secs(60), || {
        let n = metric_sum(&pretext.metrics()?, "pretext_events_total");
        (n > 0.0).then_some(n)
    });
    pretext.kill9();
    assert!(
        applied < first.len() as f64,
        "killed after all {} messages were applied: not mid-stream",
        first.len()
    );
    eprintln!("killed with {applied} of {} events applied", first.len());
    broker.produce(&topics.input, &keyed(rest));

    // SIGTERM mid-stream: the batch is finished and committed, exit 0.
    let pretext = Pretext::start_with_env(&config, &state, &log, &small);
    let applied = wait_for("the second run to apply", Duration::from_secs(60), || {
        let n = metric_sum(&pretext.metrics()?, "pretext_events_total");
        (n > 0.0).then_some(n)
    });
    let status = pretext.terminate();
    assert!(status.success(), "SIGTERM mid-stream exits 0: {status:?}");
    eprintln!("terminated with {applied} more events applied");

    let pretext = Pretext::start_with_env(&config, &state, &log, &EXACT);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let got = loop {
        let got: BTreeSet<String> = trigger_ids(
            &broker
                .consume(&topics.triggers, expected.len(), Duration::from_secs(5))
                .into_iter()
                .map(|(_, p)| p)
                .collect::<Vec<_>>(),
        );
        if expected.is_subset(&got) {
            break got;
        }
        if std::time::Instant::now() > deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            panic!(
                "{} of {} expected triggers missing ({} received); metrics:\n{}\nlog tail:\n{}",
                expected.difference(&got).count(),
                expected.len(),
                got.len(),
                pretext
                    .metrics()
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.starts_with("pretext_events")
                        || l.starts_with("pretext_triggers")
                        || l.starts_with("pretext_watermark")
                        || l.starts_with("pretext_pending"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    };
    assert_eq!(got, expected, "no trigger that a replay would not give");
    assert!(pretext.terminate().success());

    // Every input applied exactly once: the state equals the replay's.
    assert_same_state(&state, &replay_state);
}

/// Another group member takes a partition away and gives it back: pretext
/// finishes and commits on revoke, keeps the partition it still holds, and
/// resumes the returned one at the offset stored with its state, so every
/// input is applied once and every trigger a replay gives arrives.
#[test]
fn a_rebalance_takes_a_partition_away_and_gives_it_back() {
    rebalance_round_trip(false);
}

#[test]
fn a_cooperative_rebalance_takes_a_partition_away_and_gives_it_back() {
    rebalance_round_trip(true);
}

fn rebalance_round_trip(cooperative: bool) {
    let broker = Broker::start();
    let topics = Topics::named();
    broker.create_topics(&[&topics.input], 2);
    broker.create_topics(
        &[
            &topics.triggers,
            &topics.dead_letter,
            &topics.holdout,
            &topics.conversions,
        ],
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let t = t0();
    // One customer per (partition, phase); the second phase two hours
    // later, past the first phase's checks, which fire whatever the order
    // the partitions are read in.
    let line = |n: usize, at: i64| {
        view(
            &format!("e{n}"),
            at,
            &format!("ck{n}"),
            &format!("C{n}"),
            "P1",
        )
    };
    let (a0, a1) = (line(1, t + MIN), line(2, t + 2 * MIN));
    let (b0, b1) = (line(3, t + 2 * HOUR), line(4, t + 2 * HOUR + MIN));
    let expected = trigger_ids(&replay_with(
        &[a0.clone(), a1.clone(), b0.clone(), b1.clone()],
        dir.path(),
        None,
        false,
        &EXACT,
    ));
    assert_eq!(expected.len(), 2, "the first phase's checks");

    broker.produce_to(&topics.input, 0, &[(Some("k"), a0.as_bytes())]);
    broker.produce_to(&topics.input, 1, &[(Some("k"), a1.as_bytes())]);
    let group = unique("group");
    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &group);
    if cooperative {
        use_cooperative_protocol(&config);
    }
    let log = dir.path().join("pretext.log");
    let pretext = Pretext::start_with_env(&config, &state, &log, &EXACT);
    pretext.wait_ready();
    wait_for("both partitions applied", Duration::from_secs(60), || {
        (metric_sum(&pretext.metrics()?, "pretext_events_total") == 2.0).then_some(())
    });

    // A second member: each gets one partition.
    let other = Interloper::join(&broker, &group, &topics.input, cooperative);
    wait_for(
        "the interloper to get a partition",
        Duration::from_secs(60),
        || (other.partitions() == 1).then_some(()),
    );
    broker.produce_to(&topics.input, 0, &[(Some("k"), b0.as_bytes())]);
    broker.produce_to(&topics.input, 1, &[(Some("k"), b1.as_bytes())]);
    // pretext applies the new message of the partition it kept, only.
    wait_for(
        "the kept partition applied",
        Duration::from_secs(60),
        || (metric_sum(&pretext.metrics()?, "pretext_events_total") == 3.0).then_some(()),
    );
    assert_eq!(http_get(&pretext.http, "/readyz").map(|r| r.0), Some(200));
    let text = without_ansi(&std::fs::read_to_string(&log).unwrap());
    assert!(text.contains("revoked partitions handed over"), "{text}");

    // It leaves: pretext gets the partition back and resumes it.
    drop(other);
    wait_for(
        "the returned partition applied",
        Duration::from_secs(90),
        || (metric_sum(&pretext.metrics()?, "pretext_events_total") >= 4.0).then_some(()),
    );
    let got = every_trigger(&broker, &topics.triggers, &expected);
    assert_eq!(got, expected);
    let metrics = pretext.metrics().unwrap();
    assert_eq!(
        metric_sum(&metrics, "pretext_events_total"),
        4.0,
        "each input once"
    );
    assert_eq!(metric_sum(&metrics, "pretext_events_duplicate_total"), 0.0);
    assert!(pretext.terminate().success());
}

/// A second member joins the group while events flow into both partitions
/// of the input, takes one (cooperative-sticky: pretext keeps the other and
/// goes on applying it), and leaves while events still flow: pretext gets
/// the partition back and resumes it at the offset stored with its state.
/// Every input applied once, every trigger a replay gives. One view per
/// customer, so the triggers do not depend on how the two partitions
/// interleave.
#[test]
fn a_member_joins_and_leaves_while_events_flow_cooperatively() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let broker = Broker::start();
    let topics = Topics::named();
    broker.create_topics(&[&topics.input], 2);
    broker.create_topics(&[&topics.triggers], 3);
    broker.create_topics(
        &[&topics.dead_letter, &topics.holdout, &topics.conversions],
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let t = t0();
    let n = 450;
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let (ck, crm) = (format!("ck{i}"), format!("C{i}"));
            view(&format!("e{i}"), t + i as i64 * 20_000, &ck, &crm, "P1")
        })
        .collect();
    // 2.5 hours of views: the checks of the first 1.5 come due.
    let expected = trigger_ids(&replay_with(&lines, dir.path(), None, false, &EXACT));
    assert!(expected.len() > n / 2, "{} triggers", expected.len());

    let group = unique("group");
    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &group);
    use_cooperative_protocol(&config);
    let log = dir.path().join("pretext.log");
    let pretext = Pretext::start_with_env(&config, &state, &log, &EXACT);
    pretext.wait_ready();

    // Paced, alternating partitions; the last third waits until the
    // second member has left, so events flow before, during and after.
    let (sent, left) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let producer = {
        let (addr, topic, sent, left) = (
            broker.addr.clone(),
            topics.input.clone(),
            sent.clone(),
            left.clone(),
        );
        let lines = lines.clone();
        std::thread::spawn(move || {
            use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
            let producer: BaseProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .create()
                .unwrap();
            for (i, line) in lines.iter().enumerate() {
                while i >= 2 * n / 3 && !left.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let rec = BaseRecord::to(&topic)
                    .payload(line.as_str())
                    .key("k")
                    .partition((i % 2) as i32);
                producer.send(rec).map_err(|(e, _)| e).unwrap();
                producer.flush(Duration::from_secs(30)).unwrap();
                sent.store(i + 1, Ordering::Release);
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    let applied = || {
        metric_sum(
            &pretext.metrics().unwrap_or_default(),
            "pretext_events_total",
        )
    };
    wait_for(
        "pretext to apply 30 events",
        Duration::from_secs(60),
        || (applied() >= 30.0).then_some(()),
    );
    let other = Interloper::join(&broker, &group, &topics.input, true);
    wait_for(
        "the second member to get a partition",
        Duration::from_secs(60),
        || (other.partitions() == 1).then_some(()),
    );
    let (sent_at_join, applied_at_join) = (sent.load(Ordering::Acquire), applied());
    // pretext goes on with the partition it kept.
    wait_for(
        "the kept partition to go on",
        Duration::from_secs(60),
        || (applied() >= applied_at_join + 20.0).then_some(()),
    );
    drop(other);
    let sent_at_leave = sent.load(Ordering::Acquire);
    left.store(true, Ordering::Release);
    assert!(
        sent_at_join < sent_at_leave && sent_at_leave < n,
        "events flowed while the second member held a partition ({sent_at_join} sent when it \
         joined, {sent_at_leave} when it left, of {n})"
    );
    producer.join().unwrap();

    let got = every_trigger(&broker, &topics.triggers, &expected);
    assert_eq!(got, expected);
    let metrics = pretext.metrics().unwrap();
    assert_eq!(
        metric_sum(&metrics, "pretext_events_total"),
        n as f64,
        "each input once"
    );
    assert_eq!(metric_sum(&metrics, "pretext_events_duplicate_total"), 0.0);
    let text = without_ansi(&std::fs::read_to_string(&log).unwrap());
    assert!(text.contains("cooperative=true"), "{text}");
    assert!(text.contains("revoked partitions handed over"), "{text}");
    eprintln!(
        "second member joined at {sent_at_join} and left at {sent_at_leave} of {n} events sent; \
         partitions assigned {} times",
        text.matches("partitions assigned").count()
    );
    assert!(pretext.terminate().success());
}

/// Sets `partition.assignment.strategy = "cooperative-sticky"` in a config
/// written by `write_config` (the default is the eager protocol).
fn use_cooperative_protocol(config: &std::path::Path) {
    let text = std::fs::read_to_string(config).unwrap().replace(
        "[kafka.client]\n",
        "[kafka.client]\n\"partition.assignment.strategy\" = \"cooperative-sticky\"\n",
    );
    std::fs::write(config, text).unwrap();
}

/// The trap of contract v1, against the broker: pretext idles on empty
/// topics past `idle_timeout` (no idle advance before any event), then a
/// historical log arrives; its triggers are a replay's, id and body. Then
/// the watermark gauge moves with the idle advance in the quiet after it.
#[test]
fn idle_on_empty_topics_then_a_historical_log_gives_the_replays_triggers() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let mut lines = generated(dir.path(), 3000, 11);
    // Two hours after the log: moves a replay's final watermark and the
    // live one (which trails by the allowed lateness) past every check.
    let tick = t0() + 2 * 60 * MIN;
    lines.push(view("tick", tick, "ck_tick", "C_TICK", "P_TICK"));
    let expected = replay_with(&lines, dir.path(), None, false, &[]);
    assert!(expected.len() > 100, "the log fires triggers");

    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let log = dir.path().join("pretext.log");
    let pretext = Pretext::start(&config, &state, &log); // idle_timeout 2 s
    pretext.wait_ready();
    std::thread::sleep(Duration::from_secs(5));
    let idle = pretext.metrics().unwrap();
    assert!(!idle.contains("\npretext_watermark_seconds "), "{idle}");
    broker.produce(&topics.input, &keyed(&lines));
    let got = broker.consume(&topics.triggers, expected.len(), Duration::from_secs(90));
    let payloads: Vec<String> = got.into_iter().map(|(_, p)| p).collect();
    assert_eq!(by_customer(&payloads), by_customer(&expected));

    let watermark = |p: &Pretext| metric_sum(&p.metrics().unwrap(), "pretext_watermark_seconds");
    let first = watermark(&pretext);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        watermark(&pretext) > first,
        "the watermark gauge moves with the idle advance"
    );
    assert!(pretext.terminate().success());
}

/// The trigger ids on `topic` once every id of `expected` is there (at
/// most 90 s).
fn every_trigger(broker: &Broker, topic: &str, expected: &BTreeSet<String>) -> BTreeSet<String> {
    wait_for("every trigger", Duration::from_secs(90), || {
        let got = trigger_ids(
            &broker
                .consume(topic, expected.len(), Duration::from_secs(3))
                .into_iter()
                .map(|(_, p)| p)
                .collect::<Vec<_>>(),
        );
        expected.is_subset(&got).then_some(got)
    })
}
