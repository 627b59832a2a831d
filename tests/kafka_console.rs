//! End-to-end: a client not built on librdkafka reads pretext's output.
//! Kafka's own console consumer (the Java client, from the same Maven
//! download as the broker) reads the triggers topic: every key is the
//! trigger's `crm_id`, every value validates against schemas/trigger.json,
//! and together they are the triggers a replay of the same input gives.

#[path = "common/broker.rs"]
mod broker;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Instant;

use broker::{
    generated, kafka_classpath, keyed, replay_with, trigger_ids, unique, write_config, Broker,
    Pretext, Topics, EXACT,
};
use jsonschema::{Draft, Resource, Validator};
use serde_json::Value;

/// schemas/trigger.json with its siblings registered where its relative
/// `$ref`s (`common.json#/...`) point: under the base URI the `jsonschema`
/// crate gives a schema without `$id`, as tests/ops_static.rs does.
fn trigger_schema() -> Validator {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut opts = jsonschema::options();
    opts.with_draft(Draft::Draft202012);
    let mut trigger = None;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if name == "trigger.json" {
            trigger = Some(schema.clone());
        }
        let uri = format!("json-schema:///{name}");
        opts.with_resource(uri, Resource::from_contents(schema).unwrap());
    }
    opts.build(&trigger.expect("schemas/trigger.json")).unwrap()
}

#[test]
fn the_java_console_consumer_reads_triggers_keyed_by_crm_id_that_match_the_schema() {
    let broker = Broker::start();
    let topics = Topics::create(&broker);
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(dir.path(), 4000, 21);
    let expected = replay_with(&lines, dir.path(), None, false, &EXACT);
    assert!(expected.len() > 50, "{} triggers", expected.len());
    broker.produce(&topics.input, &keyed(&lines));
    let (config, state) = write_config(dir.path(), &broker.addr, &topics, &unique("group"));
    let log = dir.path().join("pretext.log");
    let pretext = Pretext::start_with_env(&config, &state, &log, &EXACT);

    // It stops after the expected count, or after 120 s without a message.
    let started = Instant::now();
    let out = Command::new("java")
        .arg("-cp")
        .arg(kafka_classpath())
        .arg("org.apache.kafka.tools.consumer.ConsoleConsumer")
        .args([
            "--bootstrap-server",
            &broker.addr,
            "--topic",
            &topics.triggers,
        ])
        .args(["--from-beginning", "--group", &unique("console")])
        .args(["--max-messages", &expected.len().to_string()])
        .args(["--timeout-ms", "120000"])
        .args([
            "--formatter-property",
            "print.key=true",
            "--formatter-property",
            "key.separator=\t",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run java");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "console consumer: {:.1} s, {:?}",
        started.elapsed().as_secs_f64(),
        out.status
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let records: Vec<(&str, &str)> = text
        .lines()
        .map(|l| {
            l.split_once('\t')
                .unwrap_or_else(|| panic!("no key separator: {l}"))
        })
        .collect();
    assert_eq!(
        records.len(),
        expected.len(),
        "every trigger read ({:?}); stderr:\n{stderr}",
        out.status
    );

    let schema = trigger_schema();
    for (key, value) in &records {
        let v: Value = serde_json::from_str(value).unwrap_or_else(|e| panic!("{e}: {value}"));
        let errors: Vec<String> = schema
            .iter_errors(&v)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{value}: {errors:?}");
        assert_eq!(
            Some(*key),
            v["crm_id"].as_str(),
            "the key is the crm_id: {value}"
        );
    }
    let values: Vec<String> = records.iter().map(|(_, v)| v.to_string()).collect();
    assert_eq!(trigger_ids(&values), trigger_ids(&expected));
    let count = |ls: &[String]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for l in ls {
            *m.entry(l.clone()).or_default() += 1;
        }
        m
    };
    assert_eq!(
        count(&values),
        count(&expected),
        "byte for byte a replay's triggers"
    );
    assert!(pretext.terminate().success());
}
