//! Exactly-once output (`kafka.exactly_once = true`) end to end, on Apache
//! Kafka (and librdkafka's mock cluster for injected errors): a consumer
//! with `isolation.level = read_committed`, running for the whole test,
//! reads every output topic. Whatever is done to pretext (kill -9 at seeded
//! moments, an abort between the transaction and the state commit, a
//! second instance with the same identity, produce errors), that consumer
//! sees every trigger, holdout trigger, conversion and dead letter of an
//! uninterrupted `pretext replay` of the same input exactly once, and the
//! RocksDB state equals the replay's. docs/exactly-once.md has the argument.

#[path = "common/broker.rs"]
mod broker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker::{
    assert_same_state, env_number, generated, keyed, metric_sum, produce_at, replay_outputs,
    send_signal, unique, wait_for, write_config, Broker, CommittedReader, Pretext, ReplayOutputs,
    Rng, Topics, EXACT,
};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

/// `EXACT` (no lateness, no idle advance: live equals a replay), a holdout
/// group (so the holdout topic carries triggers too) and exactly-once.
fn eos_env() -> Env {
    with(
        replay_env(),
        &[("PRETEXT__KAFKA__EXACTLY_ONCE", "true".to_string())],
    )
}

/// `PRETEXT__…` overrides, owned.
type Env = Vec<(&'static str, String)>;

fn refs(env: &Env) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The replay's environment: the same semantic settings.
fn replay_env() -> Env {
    let mut env: Env = EXACT.iter().map(|(k, v)| (*k, v.to_string())).collect();
    env.push(("PRETEXT__HOLDOUT__PERCENT", "20".into()));
    env
}

fn with(mut env: Env, more: &[(&'static str, String)]) -> Env {
    env.extend_from_slice(more);
    env
}

/// How many times each value occurs.
fn counted<I: IntoIterator<Item = String>>(items: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

fn field(line: &str, name: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap();
    match &v[name] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A dead letter's identity: its reason and where its message was. Live
/// mode names the Kafka offset, a replay the 1-based line; the input is
/// one partition produced in order, so line = offset + 1.
fn dead_letter_key(line: &str, live: bool) -> String {
    let offset: i64 = field(line, "offset").parse().unwrap();
    let line_no = if live { offset + 1 } else { offset };
    format!("{} at line {line_no}", field(line, "reason"))
}

/// What an uninterrupted replay gives, and its state.
struct Expected {
    out: ReplayOutputs,
    state: PathBuf,
}

fn expected(lines: &[String], dir: &Path) -> Expected {
    let state = dir.join("replay-state");
    let out = replay_outputs(lines, dir, &state, &refs(&replay_env()));
    assert!(
        out.triggers.len() > 50,
        "too few triggers: {}",
        out.triggers.len()
    );
    assert!(!out.holdout.is_empty(), "no holdout trigger to check");
    assert!(!out.dead_letters.is_empty(), "no dead letter to check");
    Expected { out, state }
}

/// Waits until the read_committed consumer has every expected trigger,
/// then until it has been quiet for a while (a duplicate would come
/// late), and checks each output topic against the replay: each output
/// exactly once.
fn check_outputs(reader: &CommittedReader, topics: &Topics, exp: &Expected, log: &Path) {
    let want = exp.out.triggers.len();
    let deadline = Instant::now() + Duration::from_secs(180);
    while reader.of(&topics.triggers).len() < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} triggers visible; log tail:\n{}",
            reader.of(&topics.triggers).len(),
            log_tail(log, 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    reader.settle(Duration::from_secs(3), Duration::from_secs(30));
    let ids = |lines: Vec<String>| counted(lines.iter().map(|l| field(l, "trigger_id")));
    assert_eq!(
        ids(reader.of(&topics.triggers)),
        ids(exp.out.triggers.clone()),
        "every trigger id exactly once"
    );
    assert_eq!(
        ids(reader.of(&topics.holdout)),
        ids(exp.out.holdout.clone()),
        "every holdout trigger exactly once"
    );
    assert_eq!(
        counted(reader.of(&topics.conversions)),
        counted(exp.out.conversions.clone()),
        "every conversion exactly once"
    );
    let dead = |lines: Vec<String>, live| counted(lines.iter().map(|l| dead_letter_key(l, live)));
    assert_eq!(
        dead(reader.of(&topics.dead_letter), true),
        dead(exp.out.dead_letters.clone(), false),
        "every dead letter exactly once"
    );
}

fn reader_for(bootstrap: &str, topics: &Topics) -> CommittedReader {
    CommittedReader::start(
        bootstrap,
        &[
            &topics.triggers,
            &topics.holdout,
            &topics.conversions,
            &topics.dead_letter,
        ],
    )
}

fn applied(p: &Pretext) -> Option<f64> {
    Some(metric_sum(&p.metrics()?, "pretext_events_total"))
}

fn wait_applying(p: &Pretext) {
    wait_for("pretext to apply events", Duration::from_secs(90), || {
        (applied(p)? > 0.0).then_some(())
    });
}

/// Consumer lag 0 on two statistics reports in a row.
fn wait_caught_up(p: &Pretext) {
    let mut zero_since: Option<Instant> = None;
    wait_for("consumer lag 0", Duration::from_secs(180), || {
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

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn log_tail(log: &Path, n: usize) -> String {
    let text = log_text(log);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn finish(p: Pretext, log: &Path) {
    let status = p.terminate();
    assert!(
        status.success(),
        "SIGTERM exits 0: {status:?}\n{}",
        log_tail(log, 30)
    );
}

/// One run of the crash loop, killed at a moment drawn from `rng`: any
/// moment of its first 8 s, a moment once it applies, or right after one of
/// its first transactions commits and before its state does (the process
/// aborts itself there: `PRETEXT_CRASH_AFTER_TXN`). What the moment was.
fn run_and_kill(rng: &mut Rng, config: &Path, state: &Path, log: &Path) -> String {
    let batch = ["5", "20", "50", "200"][rng.below(4) as usize];
    let env = with(
        eos_env(),
        &[("PRETEXT__KAFKA__BATCH_MAX_MESSAGES", batch.into())],
    );
    let env_refs = refs(&env);
    match rng.below(3) {
        0 => {
            let p = Pretext::start_with_env(config, state, log, &env_refs);
            let ms = rng.below(8000);
            std::thread::sleep(Duration::from_millis(ms));
            p.kill9();
            format!("batch {batch}, kill -9 {ms} ms after the start")
        }
        1 => {
            let p = Pretext::start_with_env(config, state, log, &env_refs);
            wait_applying(&p);
            let ms = rng.below(1500);
            std::thread::sleep(Duration::from_millis(ms));
            p.kill9();
            format!("batch {batch}, kill -9 {ms} ms after it began applying")
        }
        _ => {
            let n = (1 + rng.below(10)).to_string();
            let env = with(env.clone(), &[("PRETEXT_CRASH_AFTER_TXN", n.clone())]);
            let mut p = Pretext::start_with_env(config, state, log, &refs(&env));
            let aborted = p.exit_within(Duration::from_secs(60));
            let how = match aborted {
                Some(status) => format!("aborted itself ({status})"),
                None => {
                    p.kill9();
                    "had fewer transactions: kill -9 after 60 s".to_string()
                }
            };
            format!("batch {batch}, after transaction {n} before its state commit: {how}")
        }
    }
}

/// kill -9 at seeded moments (5, `PRETEXT_CRASH_KILLS` for more: 20 in
/// `scripts/crash-loop.sh --exactly-once`; `PRETEXT_CRASH_SEED` repeats a
/// run), a third of them right between a transaction's commit and its
/// state's. The input is produced in as many chunks as there are runs.
#[test]
fn kill9_at_seeded_moments_every_output_exactly_once() {
    let kills = env_number("PRETEXT_CRASH_KILLS").unwrap_or(5).max(1) as usize;
    let seed = env_number("PRETEXT_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!("exactly-once crash loop: {kills} kills, seed {seed} (PRETEXT_CRASH_SEED={seed} repeats it)");
    let started = Instant::now();
    let mut rng = Rng(seed);
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(dir.path(), 3000 * (kills + 1), seed % 1000);
    let exp = expected(&lines, dir.path());
    let reader = reader_for(&broker.addr, &topics);
    let chunk = lines.len().div_ceil(kills + 1);
    let mut chunks = lines.chunks(chunk);
    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let log = dir.path().join("pretext.log");
    for k in 1..=kills {
        broker.produce(&topics.input, &keyed(chunks.next().unwrap_or_default()));
        let moment = run_and_kill(&mut rng, &config, &state, &log);
        eprintln!("kill {k}/{kills}: {moment}");
    }
    for rest in chunks {
        broker.produce(&topics.input, &keyed(rest));
    }
    let pretext = Pretext::start_with_env(&config, &state, &log, &refs(&eos_env()));
    check_outputs(&reader, &topics, &exp, &log);
    wait_caught_up(&pretext);
    finish(pretext, &log);
    assert_same_state(&state, &exp.state);
    let text = log_text(&log);
    eprintln!(
        "exactly-once crash loop: {kills} kills, {} recoveries of a committed batch, {} triggers, \
         {} holdout, {} conversions, {} dead letters, {} events, {:.0} s",
        text.matches("re-applied input whose output a committed transaction holds")
            .count(),
        exp.out.triggers.len(),
        exp.out.holdout.len(),
        exp.out.conversions.len(),
        exp.out.dead_letters.len(),
        lines.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A second process with the same group and instance id (so the same
/// transactional.id) started while the first is frozen (SIGSTOP): it
/// fences the first, takes the partitions once the first's session
/// expires, builds its own state from the log (output muted up to the
/// group's committed offsets) and goes on. Resumed, the first exits 1, and
/// nothing it produced after the freeze is visible: every output is seen
/// exactly once.
#[test]
fn a_second_instance_with_the_same_identity_fences_the_first() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(dir.path(), 8000, 23);
    let exp = expected(&lines, dir.path());
    let reader = reader_for(&broker.addr, &topics);
    let (first, rest) = lines.split_at(lines.len() / 2);
    broker.produce(&topics.input, &keyed(first));
    let (config, state_a) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let env = with(
        eos_env(),
        &[("PRETEXT__KAFKA__BATCH_MAX_MESSAGES", "20".into())],
    );
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = Pretext::start_with_env(&config, &state_a, &log_a, &refs(&env));
    wait_applying(&a);
    std::thread::sleep(Duration::from_millis(700));
    send_signal("-STOP", a.pid());
    let frozen_at = reader.count();
    broker.produce(&topics.input, &keyed(rest));

    let state_b = dir.path().join("state-b");
    let env_b = with(
        env.clone(),
        &[(
            "PRETEXT__STATE__DIR",
            state_b.to_string_lossy().into_owned(),
        )],
    );
    let b = Pretext::start_with_env(&config, &state_b, &log_b, &refs(&env_b));
    check_outputs(&reader, &topics, &exp, &log_b);
    wait_caught_up(&b);

    send_signal("-CONT", a.pid());
    // Resumed, the first may sit in a transactional call made before the
    // freeze until it times out, then in the abort that follows: each may
    // take pretext's 60 s transaction timeout (src/live/sink.rs). Once,
    // in CI, it was still in them 90 s after the resume.
    let status = a.exit_within(Duration::from_secs(180)).unwrap_or_else(|| {
        panic!(
            "the first instance still runs; log tail:\n{}",
            log_tail(&log_a, 30)
        )
    });
    assert_eq!(status.code(), Some(1), "{}", log_tail(&log_a, 30));
    // Fenced on its next transactional call; or its frozen call timed out
    // and the transaction was aborted; or its partitions were lost.
    let reasons = ["fenced", "transaction aborted", "lost its partitions"];
    let text = log_text(&log_a);
    let said = text
        .lines()
        .rev()
        .find(|l| reasons.iter().any(|r| l.contains(r)))
        .unwrap_or_else(|| panic!("the first says why it exits:\n{}", log_tail(&log_a, 30)))
        .to_string();
    // Whatever the first had in flight is not visible: still exactly once.
    check_outputs(&reader, &topics, &exp, &log_b);
    finish(b, &log_b);
    assert_same_state(&state_b, &exp.state);
    eprintln!(
        "fencing: {} outputs visible when the first froze, {} at the end; the first said: {said}",
        frozen_at,
        reader.count(),
    );
}

/// librdkafka's mock cluster, with the test's topics and input.
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
    fn new(events: usize) -> Mock {
        let cluster = MockCluster::new(1).unwrap();
        let addr = cluster.bootstrap_servers();
        let topics = Topics::named();
        for t in [&topics.input, &topics.dead_letter] {
            cluster.create_topic(t, 1, 1).unwrap();
        }
        for t in [&topics.triggers, &topics.holdout, &topics.conversions] {
            cluster.create_topic(t, 3, 1).unwrap();
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
        let env = with(
            eos_env(),
            &[("PRETEXT__KAFKA__BATCH_MAX_MESSAGES", "20".into())],
        );
        Pretext::start_with_env(&self.config, &self.state, &self.log, &refs(&env))
    }
}

/// A produce error that is not retriable fails the batch's transaction:
/// pretext aborts it, exits 1 saying that nothing of the batch is visible,
/// and a restart produces everything exactly once.
#[test]
fn mock_produce_error_aborts_the_transaction_and_a_restart_produces_it_once() {
    let mock = Mock::new(3000);
    let reader = reader_for(&mock.addr, &mock.topics);
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
        text.contains("transaction aborted") && text.contains("nothing of the batch is visible"),
        "the exit says the batch was aborted:\n{}",
        log_tail(&mock.log, 40)
    );
    drop(pretext);
    let pretext = mock.start();
    check_outputs(&reader, &mock.topics, &mock.exp, &mock.log);
    wait_caught_up(&pretext);
    finish(pretext, &mock.log);
    assert_same_state(&mock.state, &mock.exp.state);
}

/// Retriable errors on the transactional requests (a coordinator moving,
/// concurrent transactions) are retried: pretext keeps running and the
/// output is exactly once.
#[test]
fn mock_retriable_transaction_errors_are_retried() {
    let mock = Mock::new(3000);
    let reader = reader_for(&mock.addr, &mock.topics);
    use RDKafkaRespErr::*;
    for key in [
        RDKafkaApiKey::AddPartitionsToTxn,
        RDKafkaApiKey::AddOffsetsToTxn,
        RDKafkaApiKey::TxnOffsetCommit,
        RDKafkaApiKey::EndTxn,
    ] {
        mock.cluster.request_errors(
            key,
            &[
                RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
                RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
            ],
        );
    }
    let mut pretext = mock.start();
    wait_applying(&pretext);
    let pid = pretext.pid();
    check_outputs(&reader, &mock.topics, &mock.exp, &mock.log);
    assert!(pretext.running(), "{}", log_tail(&mock.log, 40));
    assert_eq!(pretext.pid(), pid);
    wait_caught_up(&pretext);
    finish(pretext, &mock.log);
    assert_same_state(&mock.state, &mock.exp.state);
}
