//! Faults, end to end: `pretext run` killed with SIGKILL at random moments,
//! the broker paused past the session timeout and restarted, request errors
//! and a broker down injected with librdkafka's mock cluster, and the state
//! directory unwritable, full or written by another configuration.
//!
//! Each test that recovers checks the same two things at the end: the set
//! of `trigger_id`s received equals an uninterrupted `pretext replay` of the
//! same input (nothing lost, nothing invented), and every column family of
//! the RocksDB state but `meta` equals the replay's (no input applied twice
//! or lost). `docs/faults.md` describes each fault and what was measured.

#[path = "common/broker.rs"]
mod broker;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker::{
    assert_same_state, consume_at, env_number, free_port, generated, http_get, keyed, metric_sum,
    produce_at, replay_with, t0, trigger_ids, unique, wait_for, write_config, Broker, Pretext, Rng,
    Topics, EXACT,
};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// `EXACT` plus `PRETEXT__KAFKA__BATCH_MAX_MESSAGES`.
fn exact_with_batch(batch: &str) -> Vec<(&str, &str)> {
    let mut env: Vec<(&str, &str)> = EXACT.to_vec();
    env.push(("PRETEXT__KAFKA__BATCH_MAX_MESSAGES", batch));
    env
}

/// What an uninterrupted replay of the input gives.
struct Expected {
    ids: BTreeSet<String>,
    state: PathBuf,
}

fn expected(lines: &[String], dir: &Path) -> Expected {
    let state = dir.join("replay-state");
    let ids = trigger_ids(&replay_with(lines, dir, Some(&state), false, &EXACT));
    assert!(
        ids.len() > 50,
        "too few triggers to mean much: {}",
        ids.len()
    );
    Expected { ids, state }
}

/// Events applied by this run of the process, from its /metrics.
fn applied(p: &Pretext) -> Option<f64> {
    Some(metric_sum(&p.metrics()?, "pretext_events_total"))
}

fn wait_applying(p: &Pretext) {
    wait_for("pretext to apply events", Duration::from_secs(90), || {
        (applied(p)? > 0.0).then_some(())
    });
}

/// Consumes the triggers topic until every expected trigger id is there
/// (or `timeout` passes: a panic listing what is missing, with the log).
fn await_triggers(
    bootstrap: &str,
    topic: &str,
    expected: &BTreeSet<String>,
    timeout: Duration,
    log: &Path,
) -> BTreeSet<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = trigger_ids(
            &consume_at(bootstrap, topic, expected.len(), Duration::from_secs(5))
                .into_iter()
                .map(|(_, p)| p)
                .collect::<Vec<_>>(),
        );
        if expected.is_subset(&got) {
            return got;
        }
        if Instant::now() >= deadline {
            Watch::new(log).check();
        }
        if Instant::now() >= deadline && std::env::var("PRETEXT_FAULT_DEBUG").is_ok() {
            let keep = format!("/tmp/pretext-fault-{}.log", std::process::id());
            let _ = std::fs::copy(log, &keep);
            eprintln!("log kept in {keep}");
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} expected triggers missing ({} received); log tail:\n{}",
            expected.difference(&got).count(),
            expected.len(),
            got.len(),
            log_tail(log, 40)
        );
    }
}

/// Waits until the consumer lag is 0 on two statistics reports in a row:
/// every input message is applied and committed to the state.
fn wait_caught_up(p: &Pretext) {
    let mut zero_since: Option<Instant> = None;
    wait_for("consumer lag 0", Duration::from_secs(120), || {
        let m = p.metrics()?;
        let lag = "pretext_consumer_lag_messages";
        if m.contains(&format!("{lag}{{")) && metric_sum(&m, lag) == 0.0 {
            let since = *zero_since.get_or_insert_with(Instant::now);
            (since.elapsed() > Duration::from_millis(2500)).then_some(())
        } else {
            zero_since = None;
            None
        }
    });
}

/// The last `n` lines of a log.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Ends a run that must have caught up: SIGTERM exits 0.
fn finish(p: Pretext) {
    let status = p.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

// ---------------------------------------------------------------------------
// Crash safety

/// SIGKILL at random moments (seeded: the seed is printed, and
/// `PRETEXT_CRASH_SEED` repeats it), at least 5 (`PRETEXT_CRASH_KILLS`, 20 in
/// `scripts/crash-loop.sh`), restarting each time: the input is produced in
/// as many chunks as there are runs, one before each, and each run gets a
/// random batch size. A quarter of the kills land at any moment in the 8 s
/// after the process starts (opening the state, joining the group, the
/// first fetch, applying, or idle once its chunk is done), the others at a
/// random moment once the run is applying. Each run starts at once after
/// the kill: its join waits for the broker to expire the killed member.
/// At the end the trigger ids and the state equal an uninterrupted replay's.
#[test]
fn sigkill_at_random_moments_loses_nothing_and_applies_nothing_twice() {
    let kills = env_number("PRETEXT_CRASH_KILLS").unwrap_or(5).max(1) as usize;
    let seed = env_number("PRETEXT_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!("crash loop: {kills} kills, seed {seed} (PRETEXT_CRASH_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(dir.path(), 3000 * (kills + 1), seed % 1000);
    let exp = expected(&lines, dir.path());
    let chunk = lines.len().div_ceil(kills + 1);
    let mut chunks = lines.chunks(chunk);

    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let log = dir.path().join("pretext.log");
    let mut applying_when_killed = 0;
    for k in 1..=kills {
        broker.produce(&topics.input, &keyed(chunks.next().unwrap_or_default()));
        let batch = ["5", "20", "50", "200"][rng.below(4) as usize];
        let run_start = Instant::now();
        let pretext = Pretext::start_with_env(&config, &state, &log, &exact_with_batch(batch));
        let moment = if rng.below(4) == 0 {
            let ms = rng.below(8000);
            std::thread::sleep(Duration::from_millis(ms));
            format!("{ms} ms after it started")
        } else {
            wait_applying(&pretext);
            let ms = rng.below(1500);
            std::thread::sleep(Duration::from_millis(ms));
            format!("{ms} ms after it began applying")
        };
        let n = applied(&pretext);
        pretext.kill9();
        if n.is_some_and(|n| n > 0.0) {
            applying_when_killed += 1;
        }
        eprintln!(
            "kill {k}/{kills}: batch {batch}, {moment} ({:.1} s in), {} events applied by this run",
            run_start.elapsed().as_secs_f64(),
            n.map_or("no /metrics yet".into(), |n| n.to_string())
        );
    }
    for rest in chunks {
        broker.produce(&topics.input, &keyed(rest));
    }
    let pretext = Pretext::start_with_env(&config, &state, &log, &EXACT);
    let got = await_triggers(
        &broker.addr,
        &topics.triggers,
        &exp.ids,
        Duration::from_secs(120),
        &log,
    );
    wait_caught_up(&pretext);
    finish(pretext);
    assert_eq!(got, exp.ids, "no trigger that a replay would not give");
    assert_same_state(&state, &exp.state);
    assert!(
        applying_when_killed * 2 >= kills,
        "only {applying_when_killed} of {kills} kills landed while applying"
    );
    eprintln!(
        "crash loop: {kills} kills ({applying_when_killed} while applying), {} triggers, {} events, \
         {:.0} s",
        got.len(),
        lines.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// Broker faults on a real Kafka process

/// A broker fault injected mid-stream while pretext runs: it must recover
/// on its own (same process, never exited), and nothing may be lost.
fn survives_a_broker_fault(fault: impl FnOnce(&mut Broker, &mut Pretext)) {
    let mut broker = Broker::start_own();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(dir.path(), 10_000, 11);
    let exp = expected(&lines, dir.path());
    let (first, rest) = lines.split_at(lines.len() / 2);
    broker.produce(&topics.input, &keyed(first));
    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let mut env = exact_with_batch("20");
    if debug_kafka(&config) {
        env.push(("PRETEXT__LOG__LEVEL", "info,librdkafka=debug,rdkafka=debug"));
    }
    let log = dir.path().join("pretext.log");
    let mut pretext = Pretext::start_with_env(&config, &state, &log, &env);
    let pid = pretext.pid();
    wait_applying(&pretext);

    fault(&mut broker, &mut pretext);

    assert!(
        pretext.running(),
        "pretext exited during the fault; log tail:\n{}",
        log_tail(&log, 40)
    );
    let watch = Watch::new(&log);
    broker.produce(&topics.input, &keyed(rest));
    let got = await_triggers(
        &broker.addr,
        &topics.triggers,
        &exp.ids,
        Duration::from_secs(env_number("PRETEXT_FAULT_RECOVERY_SECS").unwrap_or(180)),
        &log,
    );
    wait_caught_up(&pretext);
    watch.check();
    assert!(pretext.running(), "pretext recovers without a restart");
    assert_eq!(pretext.pid(), pid);
    let assigned = log_text(&log).matches("partitions assigned").count();
    eprintln!("recovered; partitions were assigned {assigned} times");
    finish(pretext);
    assert_eq!(got, exp.ids);
    assert_same_state(&state, &exp.state);
}

/// With `PRETEXT_FAULT_DEBUG=cgrp,...`, librdkafka's debug contexts go
/// into the config's `kafka.client` (and so into pretext's log), and the
/// log is kept in `/tmp/pretext-fault-<pid>.log`.
fn debug_kafka(config: &Path) -> bool {
    let Ok(contexts) = std::env::var("PRETEXT_FAULT_DEBUG") else {
        return false;
    };
    let text = std::fs::read_to_string(config).unwrap().replace(
        "[kafka.client]\n",
        &format!("[kafka.client]\n\"debug\" = \"{contexts}\"\n"),
    );
    std::fs::write(config, text).unwrap();
    true
}

/// SIGSTOP for longer than `session.timeout.ms` (6 s in the tests' config),
/// then SIGCONT: the connections stay open but nothing answers, so the
/// group session lapses while pretext waits on fetches and deliveries.
/// librdkafka revokes on the session timeout, the batch is committed, the
/// partitions are handed over, and the consumer rejoins as a new member
/// once the broker answers again; it resumes at the offsets stored with
/// its state. The broker's own session with its controller is 30 s
/// (scripts/kafka.sh): at Kafka's 9 s the pause also fenced the only
/// broker, and once, in CI, its partitions stayed unavailable past
/// pretext's two-minute wait for a batch's acknowledgements.
#[test]
fn broker_paused_past_the_session_timeout_then_resumed() {
    survives_a_broker_pause(Duration::from_secs(10));
    // `survives_a_broker_fault` printed how often partitions were assigned.
}

/// SIGSTOP for 4 s, within the session timeout, then SIGCONT: requests
/// stall, the session holds, pretext goes on.
#[test]
fn broker_paused_within_the_session_timeout_then_resumed() {
    survives_a_broker_pause(Duration::from_secs(4));
}

/// SIGSTOP for `pause`, then SIGCONT; pretext must live through it.
fn survives_a_broker_pause(pause: Duration) {
    survives_a_broker_fault(|broker, pretext| {
        broker.pause();
        std::thread::sleep(pause);
        let alive = pretext.running();
        broker.resume();
        assert!(alive, "pretext exited while the broker was paused");
    });
}

/// The broker stopped with SIGTERM mid-stream (Kafka's clean shutdown:
/// the connections close, requests in flight are answered or dropped) and
/// started again at once on the same ports and data directory: the down
/// time is its shutdown and its start, seconds. The producer's requests
/// wait and are retried (idempotently), the consumer reconnects.
#[test]
fn broker_stopped_with_sigterm_mid_stream_then_restarted() {
    survives_a_broker_fault(|broker, pretext| {
        let stopping = broker.stop();
        let down = Instant::now();
        let alive = pretext.running();
        broker.start_again();
        eprintln!(
            "broker: SIGTERM to exit {:.1} s, down {:.1} s until it served again",
            stopping.as_secs_f64(),
            down.elapsed().as_secs_f64()
        );
        assert!(alive, "pretext exited while the broker was down");
    });
}

/// Tells a failed delivery from a recovery failure when a run exits: a
/// delivery that fails makes pretext exit 1, as designed; in a fault it
/// must recover from, that is the failure to report.
struct Watch<'a> {
    log: &'a Path,
}

impl<'a> Watch<'a> {
    fn new(log: &'a Path) -> Watch<'a> {
        Watch { log }
    }

    fn check(&self) {
        let text = log_text(self.log);
        if text.contains("not delivered") {
            panic!(
                "pretext exited on a failed delivery; log tail:\n{}",
                log_tail(self.log, 40)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Request errors and a broker down: librdkafka's mock cluster
//
// The mock cluster lives in the test process but listens on real loopback
// ports, so `pretext run` (a separate process) uses it as its bootstrap
// servers like any broker: idempotent producer, consumer group, offset
// commits. Errors pushed for an API key fail the next requests of that key
// from any client, in order.

struct Mock {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    addr: String,
    topics: Topics,
    /// Holds the config, the state and the replay's state.
    _dir: tempfile::TempDir,
    exp: Expected,
    config: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Mock {
    /// A one-broker mock cluster with the test's topics and `events`
    /// generated events produced to the input topic.
    fn new(events: usize) -> Mock {
        let cluster = MockCluster::new(1).unwrap();
        let addr = cluster.bootstrap_servers();
        let topics = Topics::named();
        // pretext refuses to start without every output topic.
        let outputs = [&topics.triggers, &topics.dead_letter, &topics.holdout];
        for t in [&topics.input, &topics.conversions]
            .into_iter()
            .chain(outputs)
        {
            cluster.create_topic(t, 1, 1).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let lines = generated(dir.path(), events, 5);
        let exp = expected(&lines, dir.path());
        produce_at(&addr, &topics.input, 0, &keyed(&lines));
        let (config, state) = write_config(dir.path(), &addr, &topics, &unique("group"));
        let log = dir.path().join("pretext.log");
        Mock {
            cluster,
            addr,
            topics,
            _dir: dir,
            exp,
            config,
            state,
            log,
        }
    }

    fn start(&self) -> Pretext {
        Pretext::start_with_env(
            &self.config,
            &self.state,
            &self.log,
            &exact_with_batch("20"),
        )
    }

    /// Waits for every trigger and for the run to catch up, stops it, and
    /// compares with the replay.
    fn check(&self, pretext: Pretext) {
        let got = await_triggers(
            &self.addr,
            &self.topics.triggers,
            &self.exp.ids,
            Duration::from_secs(180),
            &self.log,
        );
        wait_caught_up(&pretext);
        finish(pretext);
        assert_eq!(got, self.exp.ids);
        assert_same_state(&self.state, &self.exp.state);
    }
}

/// Retriable produce errors: librdkafka's idempotent producer retries them
/// itself; pretext neither fails nor duplicates.
#[test]
fn mock_retriable_produce_errors_are_retried() {
    let mock = Mock::new(4000);
    use RDKafkaRespErr::*;
    mock.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ],
    );
    let mut pretext = mock.start();
    wait_applying(&pretext);
    let pid = pretext.pid();
    std::thread::sleep(Duration::from_secs(3));
    assert!(pretext.running(), "{}", log_tail(&mock.log, 40));
    let metrics = pretext.metrics().unwrap();
    assert_eq!(
        metric_sum(&metrics, "pretext_produce_errors_total"),
        0.0,
        "retried inside librdkafka, not failed"
    );
    assert_eq!(pretext.pid(), pid);
    mock.check(pretext);
}

/// A produce error that is not retriable fails the delivery: pretext exits
/// 1 before storing the batch's offsets, says so, and a restart produces
/// the batch again; nothing is lost.
#[test]
fn mock_fatal_produce_error_exits_and_a_restart_loses_nothing() {
    let mock = Mock::new(4000);
    mock.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let mut pretext = mock.start();
    let status = pretext
        .exit_within(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("still running; log:\n{}", log_tail(&mock.log, 40)));
    assert_eq!(status.code(), Some(1), "{}", log_tail(&mock.log, 40));
    let text = log_text(&mock.log);
    assert!(
        text.contains("not delivered") || text.contains("cannot produce"),
        "the exit names the failed delivery:\n{}",
        log_tail(&mock.log, 40)
    );
    drop(pretext);
    let pretext = mock.start();
    mock.check(pretext);
}

/// Offset commits to Kafka fail (they are for monitoring only: the offsets
/// that count are in the state) and fetches fail, the last with
/// OFFSET_OUT_OF_RANGE. Were that to reset the consumer to the earliest
/// offset, pretext would skip what it already applied; in the runs so far
/// librdkafka retried the fetch at its position instead (the test prints
/// whether a reset was seen).
#[test]
fn mock_commit_and_fetch_errors_lose_nothing_and_apply_nothing_twice() {
    let mock = Mock::new(6000);
    use RDKafkaRespErr::*;
    let mut pretext = mock.start();
    wait_applying(&pretext);
    let pid = pretext.pid();
    mock.cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED,
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        ],
    );
    mock.cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
            RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE,
        ],
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(pretext.running(), "{}", log_tail(&mock.log, 40));
    assert_eq!(pretext.pid(), pid);
    let reset = log_text(&mock.log).contains("skipping a message below the position");
    eprintln!("offset reset seen (messages below the stored position skipped): {reset}");
    mock.check(pretext);
}

/// Every mock broker down (connections dropped, new ones refused) for 10 s,
/// past the session timeout, then up again.
#[test]
fn mock_broker_down_past_the_session_timeout_then_up() {
    let mock = Mock::new(6000);
    let mut pretext = mock.start();
    wait_applying(&pretext);
    let pid = pretext.pid();
    mock.cluster.broker_down(-1).unwrap();
    std::thread::sleep(Duration::from_secs(10));
    let alive = pretext.running();
    mock.cluster.broker_up(-1).unwrap();
    assert!(
        alive,
        "exited while the broker was down:\n{}",
        log_tail(&mock.log, 40)
    );
    assert!(pretext.running());
    assert_eq!(pretext.pid(), pid);
    mock.check(pretext);
}

/// The mock broker answers nothing for 10 s (every response delayed), past
/// the session timeout: the closest the mock comes to a SIGSTOP'd broker.
/// The session lapses, pretext hands its partitions over, rejoins and
/// resumes at the offsets stored with its state, without a restart.
#[test]
fn mock_broker_unresponsive_past_the_session_timeout() {
    let mock = Mock::new(6000);
    let mut pretext = mock.start();
    wait_applying(&pretext);
    let pid = pretext.pid();
    mock.cluster
        .broker_round_trip_time(1, Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_secs(10));
    mock.cluster
        .broker_round_trip_time(1, Duration::ZERO)
        .unwrap();
    assert!(pretext.running(), "{}", log_tail(&mock.log, 40));
    assert_eq!(pretext.pid(), pid);
    mock.check(pretext);
    let text = log_text(&mock.log);
    eprintln!(
        "session lapsed: {}; partitions assigned {} times",
        text.contains("SESSTMOUT"),
        text.matches("partitions assigned").count()
    );
}

// ---------------------------------------------------------------------------
// Disk and state faults

/// Runs `pretext replay` on `lines` with its state at `state_dir`: the exit
/// status and stderr.
fn replay_into(
    lines: &[String],
    dir: &Path,
    state_dir: &Path,
    config: Option<&Path>,
) -> (ExitStatus, String) {
    let input = dir.join("fault-replay-input.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pretext"));
    cmd.args(["replay", "--output", "/dev/null", "--input"])
        .arg(&input)
        .arg("--state-dir")
        .arg(state_dir);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A live run that must fail on its state: it exits 1 within a minute, and
/// its last words name `state_dir`. The log text.
fn run_refused(config: &Path, state_dir: &Path, log: &Path, env: &[(&str, &str)]) -> String {
    let mut p = Pretext::start_with_env(config, state_dir, log, env);
    let status = p
        .exit_within(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("pretext kept running; log:\n{}", log_tail(log, 30)));
    assert_eq!(status.code(), Some(1), "{}", log_tail(log, 30));
    let text = log_text(log);
    let last = text.lines().last().unwrap_or_default().to_string();
    assert!(
        last.contains(&state_dir.display().to_string()),
        "the message names the state dir {}: {last}",
        state_dir.display()
    );
    text
}

/// A state directory whose parent is a regular file cannot be created, even
/// by root: `run` and `replay` exit 1 naming it; once the file is gone, a
/// run starts there and applies everything.
#[test]
fn state_dir_that_cannot_be_created_is_refused_then_used_once_cleared() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(dir.path(), 3000, 3);
    let exp = expected(&lines, dir.path());
    broker.produce(&topics.input, &keyed(&lines));
    let (config, _) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "a file").unwrap();
    let state = blocker.join("state");
    let state_env = state.display().to_string();
    let mut env: Vec<(&str, &str)> = EXACT.to_vec();
    env.push(("PRETEXT__STATE__DIR", &state_env));
    let log = dir.path().join("pretext.log");

    let text = run_refused(&config, &state, &log, &env);
    eprintln!("run: {}", text.lines().last().unwrap_or_default());
    let (status, stderr) = replay_into(&lines, dir.path(), &state, None);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&state_env), "{stderr}");
    eprintln!("replay: {}", stderr.trim());

    std::fs::remove_file(&blocker).unwrap();
    let pretext = Pretext::start_with_env(&config, &state, &log, &env);
    let got = await_triggers(
        &broker.addr,
        &topics.triggers,
        &exp.ids,
        Duration::from_secs(120),
        &log,
    );
    wait_caught_up(&pretext);
    finish(pretext);
    assert_eq!(got, exp.ids);
    assert_same_state(&state, &exp.state);
}

/// A tmpfs mounted for one test (root only); unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Fails the test where mounting is not allowed (not root, or a
    /// container without CAP_SYS_ADMIN): a fault test that cannot inject its
    /// fault must not pass. Run these as root, as CI does.
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs for this fault test (it needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount {options}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A read-only file system is unwritable for root too: `run` and `replay`
/// exit 1 naming the state dir; after a remount read-write a run resumes
/// from the state written before and loses nothing.
#[test]
fn state_on_a_read_only_mount_is_refused_then_resumed() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("fs"), "256m");
    let lines = generated(dir.path(), 6000, 4);
    let exp = expected(&lines, dir.path());
    let (first, rest) = lines.split_at(lines.len() / 2);
    broker.produce(&topics.input, &keyed(first));
    let (config, _) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let state = fs.path.join("state");
    let state_env = state.display().to_string();
    let mut env: Vec<(&str, &str)> = EXACT.to_vec();
    env.push(("PRETEXT__STATE__DIR", &state_env));
    let log = dir.path().join("pretext.log");

    // Half the input applied and committed, then stopped.
    let pretext = Pretext::start_with_env(&config, &state, &log, &env);
    wait_caught_up(&pretext);
    finish(pretext);
    broker.produce(&topics.input, &keyed(rest));

    fs.remount("ro");
    let text = run_refused(&config, &state, &log, &env);
    eprintln!("run: {}", text.lines().last().unwrap_or_default());
    let (status, stderr) = replay_into(&lines, dir.path(), &state, None);
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&state_env), "{stderr}");
    eprintln!("replay: {}", stderr.trim());

    fs.remount("rw");
    let pretext = Pretext::start_with_env(&config, &state, &log, &env);
    let got = await_triggers(
        &broker.addr,
        &topics.triggers,
        &exp.ids,
        Duration::from_secs(120),
        &log,
    );
    wait_caught_up(&pretext);
    finish(pretext);
    assert_eq!(got, exp.ids);
    assert_same_state(&state, &exp.state);
}

/// How a test fills the state's disk mid-stream.
enum Full {
    /// A tmpfs too small for the state (ENOSPC); cleared by growing it.
    Tmpfs(Tmpfs),
    /// RLIMIT_FSIZE on the process, SIGXFSZ ignored, so writes past the
    /// limit fail with EFBIG; cleared by running without the limit.
    FileSizeLimit(u64),
}

/// Runs until the state's disk is full: pretext must exit 1 naming the
/// state dir; a restart once the fault is cleared must lose nothing.
fn disk_full_mid_stream(full: Full, dir: &Path, state: PathBuf) {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let lines = generated(dir, 20_000, 9);
    let exp = expected(&lines, dir);
    broker.produce(&topics.input, &keyed(&lines));
    let (config, _) = write_config(dir, &broker.addr, &topics, &unique("group"));
    let state_env = state.display().to_string();
    let mut env = exact_with_batch("50");
    env.push(("PRETEXT__STATE__DIR", &state_env));
    // Every batch stored: stores a second apart write so much less (a
    // record written many times reaches RocksDB once) that this input fits.
    env.push(("PRETEXT__KAFKA__COMMIT_INTERVAL", "0s"));
    let log = dir.join("pretext.log");

    let wrapper: Vec<String> = match &full {
        Full::Tmpfs(_) => Vec::new(),
        Full::FileSizeLimit(bytes) => vec![
            "sh".into(),
            "-c".into(),
            format!("trap '' XFSZ; exec prlimit --fsize={bytes} -- \"$@\""),
            "sh".into(),
        ],
    };
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut p = Pretext::start_wrapped(&config, &state, &log, &env, &wrapper);
    let status = p.exit_within(Duration::from_secs(120)).unwrap_or_else(|| {
        panic!(
            "pretext kept running on a full disk; log:\n{}",
            log_tail(&log, 30)
        )
    });
    drop(p);
    let text = log_text(&log);
    let last = text.lines().last().unwrap_or_default().to_string();
    eprintln!("full disk: {status:?}: {last}");
    assert_eq!(status.code(), Some(1), "{}", log_tail(&log, 30));
    assert!(
        text.contains("state open"),
        "the disk filled up mid-stream, not at open:\n{}",
        log_tail(&log, 30)
    );
    assert!(
        last.contains(&state_env),
        "the message names the state dir {state_env}: {last}"
    );

    if let Full::Tmpfs(fs) = &full {
        // A replay into a new state on the full disk fails the same way.
        let replay_state = fs.path.join("replay-state");
        let (status, stderr) = replay_into(&lines, dir, &replay_state, None);
        assert_ne!(status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains(&replay_state.display().to_string()),
            "{stderr}"
        );
        eprintln!("replay on the full disk: {}", stderr.trim());
        let _ = std::fs::remove_dir_all(&replay_state);
        fs.remount("size=512m");
    }
    let pretext = Pretext::start_with_env(&config, &state, &log, &env);
    let got = await_triggers(
        &broker.addr,
        &topics.triggers,
        &exp.ids,
        Duration::from_secs(180),
        &log,
    );
    wait_caught_up(&pretext);
    finish(pretext);
    assert_eq!(got, exp.ids);
    assert_same_state(&state, &exp.state);
}

/// The state on a 3 MiB tmpfs: RocksDB's log fills it mid-stream (ENOSPC).
#[test]
fn state_disk_full_exits_then_resumes_once_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("fs"), "3m");
    let state = fs.path.join("state");
    disk_full_mid_stream(Full::Tmpfs(fs), dir.path(), state);
}

/// Without mount rights, the same with a file size limit (EFBIG).
#[test]
fn state_file_size_limit_exits_then_resumes_once_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    disk_full_mid_stream(Full::FileSizeLimit(2 << 20), dir.path(), state);
}

/// A state directory written under another configuration (other input
/// topics, or another group: its offsets belong to those) is refused by
/// `run` and by `replay`, naming the dir, rather than silently reused; the
/// configuration that wrote it still opens it. No broker needed: the state
/// is opened before Kafka is touched.
#[test]
fn state_of_another_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let state = dir.path().join("shared-state");
    let state_env = state.display().to_string();
    let group = unique("group");
    let config_in = |name: &str, topics: &Topics, group: &str| {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let (config, _) = write_config(&sub, &nowhere, topics, group);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace(&sub.join("state").display().to_string(), &state_env);
        std::fs::write(&config, text).unwrap();
        config
    };
    let topics_a = Topics::named();
    let config_a = config_in("a", &topics_a, &group);
    let config_b = config_in("b", &Topics::named(), &group);
    let config_c = config_in("c", &topics_a, &unique("other-group"));

    // A replay under config a writes the state (and its fingerprint).
    let lines = generated(dir.path(), 500, 1);
    let (status, stderr) = replay_into(&lines, dir.path(), &state, Some(&config_a));
    assert!(status.success(), "{stderr}");

    for (name, config) in [
        ("other input topics", &config_b),
        ("another group", &config_c),
    ] {
        let log = dir
            .path()
            .join(format!("refused-{}.log", name.replace(' ', "-")));
        let text = run_refused(config, &state, &log, &[]);
        let last = text.lines().last().unwrap_or_default();
        assert!(last.contains("another configuration"), "{name}: {last}");
        eprintln!("run, {name}: {last}");
        let (status, stderr) = replay_into(&lines, dir.path(), &state, Some(config));
        assert_eq!(status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&state_env) && stderr.contains("another configuration"),
            "{name}: {stderr}"
        );
    }
    // A replay without --config (the default topics) is refused too.
    let (status, stderr) = replay_into(&lines, dir.path(), &state, None);
    assert_eq!(status.code(), Some(1), "{stderr}");

    // The configuration that wrote it opens it: healthy, waiting for a broker.
    let log = dir.path().join("same.log");
    let mut p = Pretext::start_with_env(&config_a, &state, &log, &[]);
    wait_for("/healthz 200", Duration::from_secs(30), || {
        (http_get(&p.http, "/healthz")?.0 == 200).then_some(())
    });
    assert!(
        p.exit_within(Duration::from_secs(3)).is_none(),
        "{}",
        log_tail(&log, 20)
    );
    wait_for("the state to open", Duration::from_secs(30), || {
        log_text(&log).contains("state open").then_some(())
    });
    finish(p);
}

// ---------------------------------------------------------------------------
// The soak's feeder

/// Not a test: the event feeder of `scripts/soak.sh`. Produces `pretext gen`
/// events to `PRETEXT_SOAK_TOPIC` on `PRETEXT_SOAK_BROKER` at
/// `PRETEXT_SOAK_RATE` events/s for `PRETEXT_SOAK_SECONDS`, the event times
/// spread over the day before now (so checks fire as the stream goes).
#[test]
#[ignore = "the soak feeder, run by scripts/soak.sh"]
fn soak_feed() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::io::BufRead;
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let broker = var("PRETEXT_SOAK_BROKER");
    let topic = var("PRETEXT_SOAK_TOPIC");
    let rate: u64 = var("PRETEXT_SOAK_RATE").parse().unwrap();
    let seconds: u64 = var("PRETEXT_SOAK_SECONDS").parse().unwrap();
    let customers = std::env::var("PRETEXT_SOAK_CUSTOMERS").unwrap_or_else(|_| "50000".into());
    let total = rate * seconds;
    let start = pretext::time::format_ts(t0());
    let mut gen = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args([
            "gen",
            "--customers",
            &customers,
            "--products",
            "2000",
            "--days",
            "1",
        ])
        .args([
            "--start",
            &start,
            "--events",
            &total.to_string(),
            "--output",
            "-",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(gen.stdout.take().unwrap()).lines();
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let began = Instant::now();
    let mut sent: u64 = 0;
    for line in lines {
        let line = line.unwrap();
        // Pace: never ahead of rate × elapsed.
        while sent >= (began.elapsed().as_secs_f64() * rate as f64) as u64 {
            producer.poll(Duration::from_millis(5));
        }
        let mut rec: BaseRecord<'_, str, str> =
            BaseRecord::to(&topic).payload(line.as_str()).key("k");
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, r)) => {
                    eprintln!("soak feed: {e}, retrying");
                    rec = r;
                    producer.poll(Duration::from_millis(100));
                }
            }
        }
        sent += 1;
        if sent % (rate * 60) == 0 {
            eprintln!(
                "soak feed: {sent} events in {:.0} s",
                began.elapsed().as_secs_f64()
            );
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let _ = gen.wait();
    eprintln!(
        "soak feed: done, {sent} events in {:.0} s",
        began.elapsed().as_secs_f64()
    );
}
