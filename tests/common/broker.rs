//! Test support for end-to-end tests: a real Apache Kafka broker process
//! (scripts/kafka.sh), random topic and group names, produce/consume
//! helpers, and `pretext run` as a child process with its own config.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
/// A unique name per call, so tests never share topics or groups.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The broker's installer and launcher, kept in the repository.
pub const KAFKA_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");

/// The Kafka jars (`DIR/*`, a Java class path) that scripts/kafka.sh
/// installed, installing them first if needed: the broker, its tools and
/// the Java client.
pub fn kafka_classpath() -> String {
    static CP: OnceLock<String> = OnceLock::new();
    CP.get_or_init(|| {
        let out = Command::new("bash")
            .args([KAFKA_SH, "classpath"])
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {KAFKA_SH}: {e}"));
        assert!(out.status.success(), "{KAFKA_SH} classpath failed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
    .clone()
}

/// An Apache Kafka broker (one KRaft broker+controller on loopback) for a
/// test. `Broker::start` hands out the one broker this test process
/// shares (or the broker `PRETEXT_TEST_BROKER` names); `Broker::start_own`
/// starts one for a single test, which may pause, stop and restart it, and
/// which is killed on drop.
pub struct Broker {
    pub addr: String,
    own: Option<Own>,
}

/// A broker process of one test's own: its ports and data stay across a
/// stop and a start.
struct Own {
    child: Option<Child>,
    port: u16,
    controller_port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    /// The broker shared by the tests of this process (random topic and
    /// group names keep them apart), started on first use; it stops, and
    /// its data goes, when the process exits (scripts/kafka.sh --owner).
    pub fn start() -> Broker {
        // The process is held, never waited for: statics are not dropped,
        // and the launcher's watcher stops it once this process is gone.
        static SHARED: OnceLock<(String, Option<std::sync::Mutex<Child>>)> = OnceLock::new();
        let (addr, _) = SHARED.get_or_init(|| {
            if let Ok(addr) = std::env::var("PRETEXT_TEST_BROKER") {
                return (addr, None);
            }
            let dir = tempfile::Builder::new()
                .prefix("pretext-kafka-")
                .tempdir()
                .unwrap()
                .keep();
            let port = free_port();
            let child = spawn_kafka(&dir, port, free_port());
            (
                format!("127.0.0.1:{port}"),
                Some(std::sync::Mutex::new(child)),
            )
        });
        Broker {
            addr: addr.clone(),
            own: None,
        }
    }

    /// A broker process of this test's own, whatever `PRETEXT_TEST_BROKER`
    /// says: fault tests pause, stop and restart it.
    pub fn start_own() -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("pretext-kafka-")
            .tempdir()
            .unwrap();
        let (port, controller_port) = (free_port(), free_port());
        let child = spawn_kafka(dir.path(), port, controller_port);
        Broker {
            addr: format!("127.0.0.1:{port}"),
            own: Some(Own {
                child: Some(child),
                port,
                controller_port,
                dir,
            }),
        }
    }

    fn own(&mut self) -> &mut Own {
        self.own
            .as_mut()
            .expect("a fault test needs a broker of its own (Broker::start_own)")
    }

    /// The broker process id (`None` for a shared broker).
    pub fn pid(&self) -> Option<u32> {
        self.own.as_ref()?.child.as_ref().map(Child::id)
    }

    fn own_pid(&self) -> String {
        self.pid()
            .expect("a fault test needs a running broker of its own (Broker::start_own)")
            .to_string()
    }

    /// SIGSTOP: the broker stops answering, its connections stay open.
    pub fn pause(&self) {
        signal("-STOP", &self.own_pid());
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        signal("-CONT", &self.own_pid());
    }

    /// Stops the broker with SIGTERM (Kafka's clean shutdown) and waits for
    /// it: the time it took. A broker still running after 60 s fails the
    /// test (it is killed first).
    pub fn stop(&mut self) -> Duration {
        let mut child = self.own().child.take().expect("the broker is not running");
        signal("-TERM", &child.id().to_string());
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("Kafka did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// Starts a stopped broker again on the same ports and data directory:
    /// the topics, messages and committed offsets are still there.
    pub fn start_again(&mut self) {
        let own = self.own();
        assert!(own.child.is_none(), "the broker is still running");
        let child = spawn_kafka(own.dir.path(), own.port, own.controller_port);
        own.child = Some(child);
    }

    /// `stop`, then `start_again`.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    pub fn create_topics(&self, names: &[&str], partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = rt
            .block_on(admin.create_topics(&topics, &AdminOptions::new()))
            .unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
        }
    }

    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.addr);
        c
    }

    /// Produces (key, payload) pairs to partition 0, in order, and waits for them.
    pub fn produce(&self, topic: &str, messages: &[(Option<&str>, &[u8])]) {
        self.produce_to(topic, 0, messages);
    }

    /// Produces (key, payload) pairs to `partition`, in order, and waits for them.
    pub fn produce_to(&self, topic: &str, partition: i32, messages: &[(Option<&str>, &[u8])]) {
        produce_at(&self.addr, topic, partition, messages);
    }

    /// Every message of `topic` (all its partitions) read within `timeout`
    /// once at least `min` have arrived: (key, payload) pairs.
    pub fn consume(
        &self,
        topic: &str,
        min: usize,
        timeout: Duration,
    ) -> Vec<(Option<String>, String)> {
        consume_at(&self.addr, topic, min, timeout)
    }
}

/// Produces (key, payload) pairs to `partition` of `topic` on the cluster
/// at `bootstrap` (a Kafka broker or a mock cluster), in order, and waits
/// for them.
pub fn produce_at(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    messages: &[(Option<&str>, &[u8])],
) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for (key, payload) in messages {
        let mut rec: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(topic).payload(*payload).partition(partition);
        if let Some(k) = key {
            rec = rec.key(*k);
        }
        // A full local queue is served, not fatal: large inputs fill it.
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "produce to {topic}: {e}"
                    );
                    rec = r;
                    producer.poll(Duration::from_millis(50));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Every message of `topic` (all its partitions, each in order, the
/// partitions interleaved as they arrive) on the cluster at `bootstrap`
/// read within `timeout` once at least `min` have arrived: (key, payload)
/// pairs.
pub fn consume_at(
    bootstrap: &str,
    topic: &str,
    min: usize,
    timeout: Duration,
) -> Vec<(Option<String>, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partition_count(&consumer, topic) {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    let mut quiet_since = Instant::now();
    while start.elapsed() < timeout {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push((
                    m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                ));
                quiet_since = Instant::now();
            }
            // Transient (a broker restarting, an injected fault): go on.
            Some(Err(e)) => eprintln!("consume {topic}: {e}"),
            None if out.len() >= min && quiet_since.elapsed() > Duration::from_secs(2) => break,
            None => {}
        }
    }
    out
}

/// How many partitions `topic` has (1 while the metadata cannot be had:
/// a broker restarting, an injected fault).
fn partition_count(consumer: &BaseConsumer, topic: &str) -> i32 {
    match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(m) => m
            .topics()
            .first()
            .map_or(1, |t| (t.partitions().len() as i32).max(1)),
        Err(e) => {
            eprintln!("metadata of {topic}: {e}");
            1
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A failed test's broker log goes with its data directory: what the
        // broker said last is the one clue to a fault it did not recover from.
        if std::thread::panicking() {
            if let Some(own) = &self.own {
                eprintln!("{}", broker_log_tail(own.dir.path(), 40));
            }
        }
        if let Some(c) = self.own.as_mut().and_then(|o| o.child.as_mut()) {
            // SIGKILL ends a stopped (SIGSTOP) process too; the data dir goes
            // with the TempDir.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` warnings, errors and fencing lines of a broker's log.
fn broker_log_tail(data: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(data.join("server.log")).unwrap_or_default();
    let notable: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("] WARN ")
                || l.contains("] ERROR ")
                || l.contains("Fenc")
                || l.contains("fenc")
        })
        .collect();
    format!(
        "the broker's last warnings, errors and fencing ({}):\n{}",
        data.display(),
        notable[notable.len().saturating_sub(n)..].join("\n")
    )
}

fn signal(sig: &str, pid: &str) {
    let status = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// Starts Kafka with its data in `data` on `port` (and its controller on
/// `controller_port`) and waits until it serves requests: the launcher
/// prints a ready line (into `data/broker.out`) once the broker logs that
/// it started.
fn spawn_kafka(data: &Path, port: u16, controller_port: u16) -> Child {
    let out_path = data.join("broker.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new("bash")
        .arg(KAFKA_SH)
        .arg("start")
        .arg("--dir")
        .arg(data)
        .args(["--port", &port.to_string()])
        .args(["--controller-port", &controller_port.to_string()])
        .args(["--owner", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {KAFKA_SH}: {e}"));
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("kafka: ready")) {
            return child;
        }
        let exited = child.try_wait().unwrap();
        // Minutes, not seconds: the first start in a fresh CI installs Kafka.
        if exited.is_some() || start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(data.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "Kafka did not start on 127.0.0.1:{port} (exit: {exited:?}); its output:\n{text}\n\
                 the end of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Live mode and a replay end in the same place without `--flush` when the
/// watermark is the highest applied event time in both (no allowed
/// lateness) and the wall clock never moves it (an idle timeout longer than
/// any test). The end-to-end tests that compare with a replay run under
/// these: a quiet period (a paused broker, a restart, a rebalance, the end
/// of the input) would otherwise let the idle advance fire checks that a
/// replay fires only with `--flush`, or not yet.
pub const EXACT: [(&str, &str); 2] = [
    ("PRETEXT__WATERMARK__ALLOWED_LATENESS", "0s"),
    ("PRETEXT__WATERMARK__IDLE_TIMEOUT", "1h"),
];

/// The partitions of a triggers topic made by `Topics::create`.
pub const TRIGGER_PARTITIONS: i32 = 3;

/// Topic names of one test.
pub struct Topics {
    pub input: String,
    pub triggers: String,
    pub dead_letter: String,
    pub holdout: String,
    pub conversions: String,
}

impl Topics {
    /// Fresh names, not created anywhere.
    pub fn named() -> Topics {
        Topics {
            input: unique("in"),
            triggers: unique("triggers"),
            dead_letter: unique("dead"),
            holdout: unique("holdout"),
            conversions: unique("conversions"),
        }
    }

    /// Fresh names, created on `broker`: the input with one partition (a
    /// replay of a file is one ordered stream, and the tests compare with
    /// one), the triggers with three (keyed by `crm_id`, so spread over
    /// them, like the holdout triggers and the conversions), the dead
    /// letters with one. pretext refuses to start without its outputs.
    pub fn create(broker: &Broker) -> Topics {
        let t = Topics::named();
        broker.create_topics(&[&t.input, &t.dead_letter], 1);
        broker.create_topics(
            &[&t.triggers, &t.holdout, &t.conversions],
            TRIGGER_PARTITIONS,
        );
        t
    }
}

/// `pretext run` as a child process, with a config written for the test.
pub struct Pretext {
    pub child: Child,
    pub http: String,
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

/// A config file for `pretext run` in `dir` (state under `dir/state`):
/// (config path, state dir). `brokers` is a bootstrap address list.
pub fn write_config(dir: &Path, brokers: &str, topics: &Topics, group: &str) -> (PathBuf, PathBuf) {
    let state_dir = dir.join("state");
    let config = dir.join("pretext.toml");
    let text = format!(
        r#"
[watermark]
idle_timeout = "2s"
[kafka]
brokers = "{broker}"
group_id = "{group}"
batch_max_messages = 200
[kafka.client]
"statistics.interval.ms" = "1000"
[kafka.consumer]
"session.timeout.ms" = "6000"
[topics]
inputs = ["{input}"]
triggers = "{triggers}"
dead_letter = "{dead}"
holdout = "{holdout}"
conversions = "{conversions}"
[state]
dir = "{state}"
[log]
format = "text"
level = "info"
"#,
        broker = brokers,
        input = topics.input,
        triggers = topics.triggers,
        dead = topics.dead_letter,
        holdout = topics.holdout,
        conversions = topics.conversions,
        state = state_dir.display(),
    );
    std::fs::write(&config, text).unwrap();
    (config, state_dir)
}

impl Pretext {
    pub fn start(config: &Path, state_dir: &Path, log: &Path) -> Pretext {
        Pretext::start_with_env(config, state_dir, log, &[])
    }

    /// As `start`, with `PRETEXT__…` overrides of the config file.
    pub fn start_with_env(
        config: &Path,
        state_dir: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Pretext {
        Pretext::start_wrapped(config, state_dir, log, env, &[])
    }

    /// As `start_with_env`, through a wrapper command (`wrapper[0]` runs
    /// with `wrapper[1..]`, then the pretext binary and its arguments), e.g.
    /// `prlimit --fsize=N --`.
    pub fn start_wrapped(
        config: &Path,
        state_dir: &Path,
        log: &Path,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Pretext {
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let bin = env!("CARGO_BIN_EXE_pretext");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(config)
            .env("PRETEXT__HTTP__LISTEN", &http)
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Pretext {
            child,
            http,
            config: config.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        }
    }

    pub fn wait_ready(&self) {
        wait_for("pretext /readyz 200", Duration::from_secs(60), || {
            (http_get(&self.http, "/readyz")?.0 == 200).then_some(())
        });
    }

    pub fn metrics(&self) -> Option<String> {
        http_get(&self.http, "/metrics").map(|(_, body)| body)
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        wait_for("pretext to exit", Duration::from_secs(30), || {
            self.child.try_wait().unwrap()
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited within `timeout`.
    pub fn exit_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn kill9(mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Pretext {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The sum of a metric's samples in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Replays `lines` with `pretext replay --flush`; the trigger lines.
pub fn replay(lines: &[String], dir: &Path, state_dir: Option<&Path>) -> Vec<String> {
    replay_with(lines, dir, state_dir, true, &[])
}

/// Replays `lines` with `pretext replay` (`--flush` when `flush`), with
/// `PRETEXT__…` overrides in `env`; the trigger lines.
pub fn replay_with(
    lines: &[String],
    dir: &Path,
    state_dir: Option<&Path>,
    flush: bool,
    env: &[(&str, &str)],
) -> Vec<String> {
    replay_args(lines, dir, state_dir, flush, env, &[])
}

/// As `replay_with`, with more arguments to `pretext replay`.
pub fn replay_args(
    lines: &[String],
    dir: &Path,
    state_dir: Option<&Path>,
    flush: bool,
    env: &[(&str, &str)],
    args: &[&str],
) -> Vec<String> {
    let input = dir.join("replay-input.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pretext"));
    cmd.arg("replay").envs(env.iter().copied()).args(args);
    if flush {
        cmd.arg("--flush");
    }
    cmd.arg("--input").arg(&input);
    if let Some(s) = state_dir {
        cmd.arg("--state-dir").arg(s);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Another member of a consumer group, polling on its own thread so that it
/// takes part in rebalances (it reads nothing and commits nothing). It
/// leaves the group when dropped.
pub struct Interloper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    partitions: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Interloper {
    /// Joins `group` on `topic`, with the cooperative rebalance protocol or
    /// the eager one (members of a group must agree).
    pub fn join(broker: &Broker, group: &str, topic: &str, cooperative: bool) -> Interloper {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        use std::sync::Arc;
        let strategy = if cooperative {
            "cooperative-sticky"
        } else {
            "range,roundrobin"
        };
        let consumer: BaseConsumer = broker
            .client()
            .set("group.id", group)
            .set("session.timeout.ms", "6000")
            .set("enable.auto.commit", "false")
            .set("partition.assignment.strategy", strategy)
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let partitions = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, partitions) = (stop.clone(), partitions.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let _ = consumer.poll(Duration::from_millis(100));
                    let n = consumer.assignment().map_or(0, |a| a.count());
                    partitions.store(n, Ordering::Release);
                }
                // Dropping the consumer closes it: it leaves the group.
            })
        };
        Interloper {
            stop,
            partitions,
            thread: Some(thread),
        }
    }

    /// Partitions assigned to it now.
    pub fn partitions(&self) -> usize {
        self.partitions.load(Ordering::Acquire)
    }
}

impl Drop for Interloper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every column family but `meta` (offsets and the idle watermark differ
/// by design) equals the replay's: each input applied exactly once.
pub fn assert_same_state(live: &Path, replayed: &Path) {
    let live = pretext::state::Store::open(live).unwrap();
    let replayed = pretext::state::Store::open(replayed).unwrap();
    for cf in pretext::state::Cf::ALL {
        if cf == pretext::state::Cf::Meta {
            continue;
        }
        // As readers see it: dead dedup entries go whenever RocksDB
        // compacts, which a state restarted many times does sooner.
        let comparable = |s| pretext::engine::comparable_entries(s, cf).unwrap();
        let (a, b) = (comparable(&live), comparable(&replayed));
        if a != b {
            let first = a
                .iter()
                .zip(&b)
                .position(|(x, y)| x != y)
                .unwrap_or(a.len().min(b.len()));
            panic!(
                "column family {} differs from an uninterrupted replay: {} entries live, {} \
                 replayed, first difference at entry {first}",
                cf.name(),
                a.len(),
                b.len()
            );
        }
    }
}

/// The `trigger_id` of each trigger line.
pub fn trigger_ids(lines: &[String]) -> std::collections::BTreeSet<String> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["trigger_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Lines as (key, payload) pairs to produce, all with the key "k".
pub fn keyed(lines: &[String]) -> Vec<(Option<&str>, &[u8])> {
    lines.iter().map(|l| (Some("k"), l.as_bytes())).collect()
}

/// A day before now, on a whole minute: event times of the past, as a
/// backlog has, and within the broker's retention.
pub fn t0() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (hour, min) = (3_600_000, 60_000);
    (now - 24 * hour) / min * min
}

/// `pretext gen` events of 500 customers (bad lines, duplicates and late
/// events included) spread over a day that ended a day ago.
pub fn generated(dir: &Path, events: usize, seed: u64) -> Vec<String> {
    let start = pretext::time::format_ts(t0() - 24 * 3_600_000);
    let out = dir.join("gen.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args([
            "gen",
            "--customers",
            "500",
            "--days",
            "1",
            "--start",
            &start,
        ])
        .args(["--events", &events.to_string(), "--seed", &seed.to_string()])
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// What `pretext replay` writes: every output, one JSON line each.
pub struct ReplayOutputs {
    pub triggers: Vec<String>,
    pub dead_letters: Vec<String>,
    pub holdout: Vec<String>,
    pub conversions: Vec<String>,
}

/// Replays `lines` (no `--flush`, as live mode never flushes) into
/// `state_dir`, with `PRETEXT__…` overrides in `env`, writing every output
/// to a file: what live mode's outputs must equal.
pub fn replay_outputs(
    lines: &[String],
    dir: &Path,
    state_dir: &Path,
    env: &[(&str, &str)],
) -> ReplayOutputs {
    let input = dir.join("replay-input.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let file = |name: &str| dir.join(format!("replay-{name}.jsonl"));
    let out = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .arg("replay")
        .envs(env.iter().copied())
        .arg("--input")
        .arg(&input)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--output")
        .arg(file("triggers"))
        .arg("--dead-letter")
        .arg(file("dead"))
        .arg("--holdout")
        .arg(file("holdout"))
        .arg("--conversions")
        .arg(file("conversions"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| -> Vec<String> {
        std::fs::read_to_string(file(name))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    ReplayOutputs {
        triggers: read("triggers"),
        dead_letters: read("dead"),
        holdout: read("holdout"),
        conversions: read("conversions"),
    }
}

/// A consumer with `isolation.level = read_committed` reading every
/// partition of some topics from the beginning, on its own thread, for the
/// whole test: what a subscriber of pretext's outputs sees, aborted
/// transactions excluded. Stops when dropped.
pub struct CommittedReader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CommittedReader {
    pub fn start(bootstrap: &str, topics: &[&str]) -> CommittedReader {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", unique("committed-reader"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            for p in 0..partition_count(&consumer, topic) {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&tpl).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => seen.lock().unwrap().push((
                            m.topic().to_string(),
                            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                        )),
                        Some(Err(e)) => eprintln!("committed reader: {e}"),
                        None => {}
                    }
                }
            })
        };
        CommittedReader {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// The payloads read so far from `topic`, in the order read.
    pub fn of(&self, topic: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Messages read so far, of every topic.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until nothing new has arrived for `quiet` (at most `timeout`).
    pub fn settle(&self, quiet: Duration, timeout: Duration) {
        let start = Instant::now();
        let mut last = (self.count(), Instant::now());
        while start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(200));
            let n = self.count();
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return;
            }
        }
    }
}

impl Drop for CommittedReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `sig` (e.g. "-STOP", "-CONT") to a process.
pub fn send_signal(sig: &str, pid: u32) {
    signal(sig, &pid.to_string());
}

/// Trigger lines grouped by `crm_id`, each customer's in their order: the
/// triggers topic has several partitions keyed by crm_id, so order holds
/// per customer only.
pub fn by_customer(lines: &[String]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let crm = v["crm_id"].as_str().unwrap_or_default().to_string();
        out.entry(crm).or_default().push(l.clone());
    }
    out
}

/// splitmix64: a seeded, dependency-free RNG for the kill moments.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A number from the environment, if set (a test's seed or count).
pub fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// Log text without terminal colour codes.
pub fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every changelog of every partition of `config`'s group, compacted as
/// Kafka will compact it: the latest committed value of each key,
/// tombstones dropped. (topic, key, value).
pub fn changelog_latest_values(
    config: &pretext::config::Config,
) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    use pretext::engine::routing::Stage;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let timeout = Duration::from_secs(30);
    let topology = pretext::live::topology::Topology::from_config(config);
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", unique("latest"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for stage in Stage::ALL {
        for &cf in stage.stores() {
            let topic = topology.changelog_topic(stage, cf);
            for p in 0..config.scale.partitions as i32 {
                let (_, end) = consumer.fetch_watermarks(&topic, p, timeout).unwrap();
                ends.insert((topic.clone(), p), end);
                tpl.add_partition_offset(&topic, p, Offset::Beginning)
                    .unwrap();
            }
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut latest = std::collections::BTreeMap::new();
    // To each partition's end by position: transaction markers take
    // offsets no message is handed out at.
    let read_all = |consumer: &BaseConsumer| {
        let positions = consumer.position().unwrap();
        positions.elements().iter().all(|e| {
            let end = ends[&(e.topic().to_string(), e.partition())];
            end == 0 || matches!(e.offset(), Offset::Offset(o) if o >= end)
        })
    };
    let deadline = Instant::now() + timeout;
    while !read_all(&consumer) {
        assert!(
            Instant::now() < deadline,
            "changelogs not read to their end"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let key = (
                m.topic().to_string(),
                m.partition(),
                m.key().unwrap().to_vec(),
            );
            latest.insert(key, m.payload().map(<[u8]>::to_vec));
        }
    }
    latest
        .into_iter()
        .filter_map(|((topic, _, key), value)| Some((topic, key, value?)))
        .collect()
}

/// Whether `needle` occurs in `bytes`.
pub fn holds(bytes: &[u8], needle: &[u8]) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// The records a consumer group has not committed: the sum over `topics`
/// (name, partitions) of each partition's end, as `reader` sees it (the
/// last stable offset with `isolation.level = read_committed`), minus the
/// group's committed offset; `i64::MAX` while a topic cannot be read (an
/// internal topic before an instance creates it).
pub fn group_lag(reader: &rdkafka::consumer::BaseConsumer, topics: &[(String, i32)]) -> i64 {
    use rdkafka::consumer::Consumer;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let mut tpl = TopicPartitionList::new();
    for (topic, partitions) in topics {
        for p in 0..*partitions {
            tpl.add_partition(topic, p);
        }
    }
    let Ok(committed) = reader.committed_offsets(tpl, Duration::from_secs(10)) else {
        return i64::MAX;
    };
    let mut lag = 0;
    for e in committed.elements() {
        let Ok((_, high)) =
            reader.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
        else {
            return i64::MAX;
        };
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        lag += (high - at).max(0);
    }
    lag
}
