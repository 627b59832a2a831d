//! The foundation of scale-out (docs/scale-out.md) on a real Apache Kafka
//! broker: the internal topics created with their partitions and cleanup
//! policies, or refused with an error naming the topic when they exist with
//! other settings (exit 2 from `pretext run`), and the router's partitions
//! as a client independent of pretext sees them, against librdkafka's
//! Java-compatible partitioner.

#[path = "common/broker.rs"]
mod broker;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use std::io::Write;
use std::process::{Command, Stdio};

use broker::{generated, kafka_classpath, unique, write_config, Broker, Pretext, Topics};
use pretext::config::Config;
use pretext::live::internal_topics::{ensure, Ensured, InternalTopicError};
use pretext::live::topology::{Stage, TopicKind, Topology};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A config on `broker` for a fresh group with `partitions` partitions.
fn config(broker: &Broker, partitions: u32) -> Config {
    let mut c = Config::default();
    c.kafka.brokers = broker.addr.clone();
    c.kafka.group_id = unique("scale");
    c.scale.partitions = partitions;
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    broker.client().create().unwrap()
}

/// Creates one topic with settings of the test's choosing, as an operator
/// (or an older deployment) might have.
fn create_topic(broker: &Broker, name: &str, partitions: i32, policy: &str) {
    let topic =
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)).set("cleanup.policy", policy);
    let results = runtime()
        .block_on(admin(broker).create_topics([&topic], &AdminOptions::new()))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// What the broker says of a topic: (partitions, cleanup.policy), read
/// without pretext's code.
fn described(broker: &Broker, name: &str) -> (usize, String) {
    let consumer: BaseConsumer = broker.client().create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(name), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len();
    let results = runtime()
        .block_on(
            admin(broker).describe_configs([&ResourceSpecifier::Topic(name)], &AdminOptions::new()),
        )
        .unwrap();
    let resource = results.into_iter().next().unwrap().unwrap();
    let policy = resource
        .get("cleanup.policy")
        .and_then(|e| e.value.clone())
        .unwrap();
    (partitions, policy)
}

#[test]
fn the_internal_topics_are_created_with_their_partitions_and_policies_once() {
    let broker = Broker::start();
    let c = config(&broker, 3);
    let wanted = Topology::from_config(&c).internal_topics();
    assert_eq!(wanted.len(), 14);

    let first = ensure(&c, TIMEOUT).unwrap();
    let mut created = first.created.clone();
    created.sort();
    let mut names: Vec<String> = wanted.iter().map(|t| t.name.clone()).collect();
    names.sort();
    assert_eq!(created, names, "every internal topic is created");
    assert!(first.existing.is_empty());

    for topic in &wanted {
        let (partitions, policy) = described(&broker, &topic.name);
        assert_eq!(partitions, 3, "{}", topic.name);
        let want = match topic.kind {
            TopicKind::Repartition(_) => "delete",
            TopicKind::Changelog(..) => "compact",
        };
        assert_eq!(policy, want, "{}", topic.name);
    }
    let group = &c.kafka.group_id;
    assert_eq!(
        described(&broker, &format!("{group}.customer-interest-changelog")).1,
        "compact"
    );

    // A second start (another instance, a restart) finds them all right.
    let again = ensure(&c, TIMEOUT).unwrap();
    assert!(again.created.is_empty(), "{again:?}");
    assert_eq!(again.existing.len(), 14);
}

#[test]
fn one_partition_has_no_internal_topics_and_asks_no_broker() {
    let mut c = Config::default();
    // Nothing listens here: a request would time out, not return at once.
    c.kafka.brokers = format!("127.0.0.1:{}", broker::free_port());
    let started = std::time::Instant::now();
    assert_eq!(ensure(&c, TIMEOUT).unwrap(), Ensured::default());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn an_internal_topic_with_other_partitions_is_refused_naming_it() {
    let broker = Broker::start();
    let c = config(&broker, 3);
    let topic = format!("{}.by-customer", c.kafka.group_id);
    create_topic(&broker, &topic, 2, "delete");

    let e = ensure(&c, TIMEOUT).unwrap_err();
    match &e {
        InternalTopicError::Partitions {
            topic: t,
            expected,
            actual,
        } => assert_eq!((t, *expected, *actual), (&topic, 3, 2)),
        other => panic!("not a partition error: {other}"),
    }
    assert_eq!(e.exit_code(), 2);
    let message = e.to_string();
    assert!(
        message.contains(&topic) && message.contains("has 2 partitions, expected 3"),
        "{message}"
    );
    // Never altered.
    assert_eq!(described(&broker, &topic).0, 2);
}

#[test]
fn a_changelog_that_is_not_compacted_is_refused_naming_it() {
    let broker = Broker::start();
    let c = config(&broker, 3);
    let topic = format!("{}.customer-interest-changelog", c.kafka.group_id);
    create_topic(&broker, &topic, 3, "compact,delete");

    let e = ensure(&c, TIMEOUT).unwrap_err();
    match &e {
        InternalTopicError::CleanupPolicy {
            topic: t,
            expected,
            actual,
        } => assert_eq!(
            (t, *expected, actual.as_str()),
            (&topic, "compact", "compact,delete")
        ),
        other => panic!("not a policy error: {other}"),
    }
    assert_eq!(e.exit_code(), 2);

    // A repartition topic that compacts would keep one event per key.
    let c = config(&broker, 3);
    let topic = format!("{}.by-cookie", c.kafka.group_id);
    create_topic(&broker, &topic, 3, "compact");
    let e = ensure(&c, TIMEOUT).unwrap_err();
    assert!(
        matches!(&e, InternalTopicError::CleanupPolicy { topic: t, expected: "delete", .. } if *t == topic),
        "{e}"
    );
}

#[test]
fn pretext_run_exits_2_naming_a_wrong_internal_topic() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let group = unique("scale-run");
    create_topic(&broker, &format!("{group}.by-cookie"), 4, "delete");
    let dir = tempfile::tempdir().unwrap();
    let (config, state_dir) = write_config(dir.path(), &broker.addr, &topics, &group);
    let log = dir.path().join("pretext.log");
    let mut p = Pretext::start_with_env(
        &config,
        &state_dir,
        &log,
        &[("PRETEXT__SCALE__PARTITIONS", "3")],
    );
    let status = p.exit_within(TIMEOUT).expect("pretext exits");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "internal topic \"{group}.by-cookie\" has 4 partitions, expected 3"
        )),
        "{text}"
    );
    assert!(!state_dir.exists(), "a refused start opens no state");
}

#[test]
fn pretext_run_creates_the_internal_topics_then_runs_partitioned() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let group = unique("scale-run");
    let dir = tempfile::tempdir().unwrap();
    let (config, state_dir) = write_config(dir.path(), &broker.addr, &topics, &group);
    let log = dir.path().join("pretext.log");
    let p = Pretext::start_with_env(
        &config,
        &state_dir,
        &log,
        &[("PRETEXT__SCALE__PARTITIONS", "2")],
    );
    p.wait_ready();
    assert_eq!(
        described(&broker, &format!("{group}.customer-timers-changelog")),
        (2, "compact".to_string())
    );
    assert_eq!(
        described(&broker, &format!("{group}.by-cookie")),
        (2, "delete".to_string())
    );
    let status = p.terminate();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
}

/// Every message of `topic`: (key, partition, payload), read by a plain
/// consumer assigned every partition.
fn read_all(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    count: usize,
) -> Vec<(String, i32, String)> {
    let consumer: BaseConsumer = broker
        .client()
        .set("group.id", unique("reader"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    while out.len() < count && start.elapsed() < TIMEOUT {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            out.push((
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                m.partition(),
                String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
            ));
        }
    }
    assert_eq!(out.len(), count, "messages of {topic}");
    out
}

fn send(producer: &BaseProducer, mut record: BaseRecord<'_, str, str>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((e, r)) => {
                assert!(
                    matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ),
                    "{e}"
                );
                record = r;
                producer.poll(Duration::from_millis(50));
            }
        }
    }
}

/// Produces one record per key (value `-`) to `topic` with Kafka's own
/// console producer: the Java client and its default partitioner, not
/// librdkafka.
fn java_produce_keys(broker: &Broker, topic: &str, keys: &BTreeSet<String>) {
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(kafka_classpath())
        .arg("org.apache.kafka.tools.ConsoleProducer")
        .args(["--bootstrap-server", &broker.addr, "--topic", topic])
        .args(["--reader-property", "parse.key=true"])
        .args(["--reader-property", "key.separator=\t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run java");
    {
        let mut stdin = child.stdin.take().unwrap();
        for key in keys {
            writeln!(stdin, "{key}\t-").unwrap();
        }
    } // closed: the producer sends what it read, then exits
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "console producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_router_partitions_agree_with_the_java_partitioner_seen_by_an_independent_consumer() {
    let broker = Broker::start();
    let partitions = 6;
    let c = config(&broker, partitions as u32);
    ensure(&c, TIMEOUT).unwrap();
    let topology = Topology::from_config(&c);
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(dir.path(), 3000, 17);

    // The router's records, with the partitions it picks; and every key
    // also to a mirror topic, partitioned by librdkafka's Java-compatible
    // murmur2 (`murmur2_random`: murmur2 for a key) instead.
    let mirror = unique("mirror");
    broker.create_topics(&[mirror.as_str()], partitions);
    let routed: BaseProducer = broker.client().create().unwrap();
    let java: BaseProducer = broker
        .client()
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    let mut promotions = 0;
    for line in &lines {
        // Bad lines are dead letters at the router: never routed.
        let Ok(event) = pretext::decode::decode(line.as_bytes(), 1 << 20) else {
            continue;
        };
        let d = topology.destinations(&event);
        if d.partitions.len() > 1 {
            promotions += 1;
        }
        for p in d.partitions.clone() {
            send(
                &routed,
                BaseRecord::to(d.topic)
                    .key(d.key)
                    .payload(line.as_str())
                    .partition(p),
            );
            *expected.entry(d.topic.to_string()).or_default() += 1;
        }
        if keys.insert(d.key.to_string()) {
            send(&java, BaseRecord::to(&mirror).key(d.key).payload(""));
        }
    }
    routed.flush(TIMEOUT).unwrap();
    java.flush(TIMEOUT).unwrap();
    assert!(promotions > 0, "the generator makes promotions");

    let java_partition: BTreeMap<String, i32> = read_all(&broker, &mirror, partitions, keys.len())
        .into_iter()
        .map(|(k, p, _)| (k, p))
        .collect();
    // And the Java client itself, on its own topic.
    let java_mirror = unique("java-mirror");
    broker.create_topics(&[java_mirror.as_str()], partitions);
    java_produce_keys(&broker, &java_mirror, &keys);
    let java_client: BTreeMap<String, i32> =
        read_all(&broker, &java_mirror, partitions, keys.len())
            .into_iter()
            .map(|(k, p, _)| (k, p))
            .collect();
    assert_eq!(
        java_client, java_partition,
        "librdkafka's murmur2 and the Java client's default partitioner agree"
    );
    let by_cookie = topology.repartition_topic(Stage::Identity);
    let by_customer = topology.repartition_topic(Stage::Customer);
    let cookie_messages = read_all(&broker, by_cookie, partitions, expected[by_cookie]);
    let customer_messages = read_all(&broker, by_customer, partitions, expected[by_customer]);

    let mut used = BTreeSet::new();
    for (key, partition, payload) in &cookie_messages {
        assert_eq!(
            Some(partition),
            java_partition.get(key),
            "by-cookie key {key}"
        );
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(v["cookie_id"].as_str(), Some(key.as_str()), "{payload}");
        used.insert(*partition);
    }
    assert_eq!(
        used.len(),
        partitions as usize,
        "cookies spread over every partition"
    );
    let mut promotion_partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (key, partition, payload) in &customer_messages {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        if v["type"] == "promotion" {
            let id = v["event_id"].as_str().unwrap().to_string();
            promotion_partitions
                .entry(id)
                .or_default()
                .insert(*partition);
            continue;
        }
        assert_eq!(
            Some(partition),
            java_partition.get(key),
            "by-customer key {key}"
        );
        assert_eq!(v["crm_id"].as_str(), Some(key.as_str()), "{payload}");
        assert!(
            v["cookie_id"].is_null(),
            "a cookie goes by cookie: {payload}"
        );
    }
    assert!(!promotion_partitions.is_empty());
    for (id, seen) in promotion_partitions {
        assert_eq!(
            seen.len(),
            partitions as usize,
            "promotion {id} on every partition"
        );
    }
}
