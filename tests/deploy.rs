//! The deployment checked by the tools an SRE's pipeline runs: `helm lint`
//! and `helm template` on the chart, the rendered manifests validated
//! against the Kubernetes schemas (kubernetes-validate, which ships them:
//! nothing is fetched), `promtool` on the alerts, the dashboard's queries and
//! the metrics exposition, `yamllint`, and `check-jsonschema` on the
//! schemas with real pretext input and output.
//!
//! scripts/install-tools.sh installs the tools into ~/.cache/pretext/bin
//! (`PRETEXT_TOOLS` overrides the directory) and scripts/test.sh runs it
//! before the tests: a missing tool fails the test that needs it.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use pretext::config::Config;
use pretext::engine::EngineStats;

#[path = "common/broker.rs"]
mod broker;

/// The Kubernetes version the manifests are rendered for and validated
/// against: the newest kubernetes-validate 1.37 ships, and the one helm
/// 3.22 is built for.
const KUBE_VERSION: &str = "1.37.0";
const RELEASE: &str = "pretext";
const NAMESPACE: &str = "crm";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("helm/pretext")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A tool installed by scripts/install-tools.sh; its absence fails the test.
fn tool(name: &str) -> Command {
    let dir = std::env::var_os("PRETEXT_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/pretext")
        })
        .join("bin");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{name} is not installed at {}: run scripts/install-tools.sh (scripts/test.sh does)",
        path.display()
    );
    Command::new(path)
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd`, fails the test unless it exits 0; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} exited {}:\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The pretext binary, with no `PRETEXT__` variable of the caller leaking in.
fn pretext() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pretext"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PRETEXT__") {
            cmd.env_remove(name);
        }
    }
    cmd
}

// ------------------------------------------------------------- value sets

/// A named set of `--set` values the chart is rendered with.
struct Case {
    name: &'static str,
    sets: &'static [&'static str],
}

static DEFAULT: Case = Case {
    name: "default",
    sets: &[],
};

/// A pod listening on another port with its volume elsewhere (issue 11: the
/// image used to override both).
static MOVED: Case = Case {
    name: "non-default port and mount path",
    sets: &[
        "http.port=9500",
        "service.port=80",
        "persistence.mountPath=/data/pretext",
    ],
};

static MONITORED: Case = Case {
    name: "ServiceMonitor and PrometheusRule",
    sets: &[
        "serviceMonitor.enabled=true",
        "serviceMonitor.labels.release=prom",
        "prometheusRule.enabled=true",
        "prometheusRule.alertLabels.team=crm",
    ],
};

/// The PrometheusRule with its default thresholds, as the promtool unit
/// tests expect them.
static ALERTS: Case = Case {
    name: "default alerts",
    sets: &["prometheusRule.enabled=true"],
};

/// Exactly-once scaled out to as many pods as partitions: the most the
/// chart allows.
static REPLICATED: Case = Case {
    name: "exactly-once, 3 replicas over 3 partitions",
    sets: &[
        "replicaCount=3",
        "config.scale.partitions=3",
        "config.kafka.exactly_once=true",
    ],
};

static SECURED: Case = Case {
    name: "SASL and mutual TLS from Secrets",
    sets: &[
        "security.protocol=SASL_SSL",
        "security.sasl.enabled=true",
        "security.sasl.existingSecret=kafka-user",
        "security.tls.enabled=true",
        "security.tls.existingSecret=kafka-tls",
        "security.tls.certKey=tls.crt",
        "security.tls.keyKey=tls.key",
        "security.tls.keyPasswordSecret=kafka-key",
    ],
};

/// A holdout experiment with a frequency cap, and the queries served with a
/// token from a Secret (CONTRACT sections 8 and 9).
static EXPERIMENT: Case = Case {
    name: "holdout, frequency cap and query token",
    sets: &[
        "config.holdout.percent=12.5",
        "config.holdout.salt=xmas-2026",
        "config.pressure.max_triggers=3",
        "config.pressure.window=12h",
        "config.measurement.attribution_window=3d",
        "config.topics.holdout=crm.holdout",
        "config.topics.conversions=crm.conversions",
        "http.queryToken.existingSecret=pretext-query",
    ],
};

/// Scale-out: internal topics with 6 partitions, a standby, 3 pods with
/// static membership (docs/scale-out.md).
static SCALED: Case = Case {
    name: "scale-out: 6 partitions, a standby, 3 replicas",
    sets: &[
        "replicaCount=3",
        "config.scale.partitions=6",
        "config.scale.standby_replicas=1",
    ],
};

fn cases() -> [&'static Case; 7] {
    [
        &DEFAULT,
        &MOVED,
        &MONITORED,
        &REPLICATED,
        &SECURED,
        &EXPERIMENT,
        &SCALED,
    ]
}

fn with_sets(cmd: &mut Command, case: &Case) {
    for set in case.sets {
        cmd.arg("--set").arg(set);
    }
}

/// `helm template` of the chart, as helm prints it.
fn render_text(case: &Case) -> String {
    let mut cmd = tool("helm");
    cmd.args(["template", RELEASE]).arg(chart()).args([
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ]);
    with_sets(&mut cmd, case);
    run(&mut cmd)
}

fn parse_manifests(case: &Case, text: &str) -> Vec<Yaml> {
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(text)
        .map(|d| Yaml::deserialize(d).unwrap_or_else(|e| panic!("{}: bad YAML: {e}", case.name)))
        .filter(|d| !d.is_null())
        .collect();
    assert!(
        docs.len() >= 5,
        "{}: only {} documents",
        case.name,
        docs.len()
    );
    docs
}

/// `helm template` of the chart: the manifests, as YAML documents.
fn render(case: &Case) -> Vec<Yaml> {
    parse_manifests(case, &render_text(case))
}

fn kind_of(doc: &Yaml) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name_of(doc: &Yaml) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn the<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let mut found = docs.iter().filter(|d| kind_of(d) == kind);
    let doc = found.next().unwrap_or_else(|| panic!("no {kind} rendered"));
    assert!(found.next().is_none(), "more than one {kind}");
    doc
}

fn container(docs: &[Yaml]) -> &Yaml {
    let containers = the(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn seq(v: &Yaml) -> &[Yaml] {
    v.as_sequence().map_or(&[], |s| s.as_slice())
}

/// The rendered ConfigMap's pretext.toml, loaded by pretext's own loader.
fn rendered_config(docs: &[Yaml]) -> (String, Config) {
    let toml = the(docs, "ConfigMap")["data"]["pretext.toml"]
        .as_str()
        .expect("the ConfigMap holds pretext.toml")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pretext.toml");
    fs::write(&path, &toml).unwrap();
    let config = Config::load(Some(&path), std::iter::empty())
        .unwrap_or_else(|e| panic!("pretext rejects the rendered ConfigMap: {e}\n{toml}"));
    (toml, config)
}

// ------------------------------------------------------------------- helm

#[test]
fn helm_lint_is_clean_with_every_value_set() {
    for case in cases() {
        let mut cmd = tool("helm");
        cmd.args(["lint", "--strict", "--kube-version", KUBE_VERSION])
            .arg(chart());
        with_sets(&mut cmd, case);
        let out = run(&mut cmd);
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{}: {out}",
            case.name
        );
        let problems: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("[WARNING]") || l.contains("[ERROR]"))
            .collect();
        assert!(problems.is_empty(), "{}: {problems:?}", case.name);
    }
}

#[test]
fn helm_lint_strict_catches_a_value_the_chart_lacks() {
    // Guards the lint above: --strict fails on a template reading a value
    // that values.yaml does not define.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pretext");
    copy_dir(&chart(), &copy);
    fs::write(
        copy.join("templates/broken.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n  a: {{ .Values.nowhere.to.be.found | quote }}\n",
    )
    .unwrap();
    let out = output(
        tool("helm")
            .args(["lint", "--strict", "--kube-version", KUBE_VERSION])
            .arg(&copy),
    );
    assert!(
        !out.status.success(),
        "lint passed a missing value: {}",
        text(&out.stdout)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_chart_refuses_unsafe_values() {
    for (sets, says) in [
        // Unpartitioned, each pod would see part of the customers' events.
        (
            &["replicaCount=3"][..],
            "replicaCount=3 needs config.scale.partitions > 1",
        ),
        // A partition is held by one pod: a seventh would have none.
        (
            &["replicaCount=7", "config.scale.partitions=6"][..],
            "replicaCount=7 is more than config.scale.partitions=6",
        ),
        (
            &["terminationGracePeriodSeconds=20"][..],
            "must be larger than config.kafka.shutdown_timeout",
        ),
        (&["security.sasl.enabled=true"][..], "existingSecret"),
        (&["security.tls.enabled=true"][..], "existingSecret"),
    ] {
        let mut cmd = tool("helm");
        cmd.args(["template", RELEASE]).arg(chart());
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        let out = output(&mut cmd);
        assert!(!out.status.success(), "{sets:?} rendered");
        assert!(
            text(&out.stderr).contains(says),
            "{sets:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn each_value_set_renders_the_expected_resources() {
    for case in cases() {
        let docs = render(case);
        let kinds: BTreeSet<(String, String)> = docs
            .iter()
            .map(|d| (kind_of(d).to_string(), name_of(d).to_string()))
            .collect();
        let mut want: BTreeSet<(String, String)> = [
            ("ConfigMap", "pretext"),
            ("PodDisruptionBudget", "pretext"),
            ("Service", "pretext"),
            ("Service", "pretext-headless"),
            ("ServiceAccount", "pretext"),
            ("StatefulSet", "pretext"),
        ]
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .into();
        if std::ptr::eq(case, &MONITORED) {
            want.insert(("ServiceMonitor".into(), "pretext".into()));
            want.insert(("PrometheusRule".into(), "pretext".into()));
        }
        assert_eq!(kinds, want, "{}", case.name);
        // Kubernetes keeps the last of two variables of one name: never two.
        let env: Vec<&str> = seq(&container(&docs)["env"])
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        let unique: BTreeSet<&str> = env.iter().copied().collect();
        assert_eq!(unique.len(), env.len(), "{}: {env:?}", case.name);
        for doc in &docs {
            assert_eq!(
                doc["metadata"]["labels"]["app.kubernetes.io/instance"].as_str(),
                Some(RELEASE),
                "{}: {} {} carries the release label",
                case.name,
                kind_of(doc),
                name_of(doc)
            );
        }
    }
}

// ---------------------------------------------------- Kubernetes schemas

/// kubernetes-validate --strict on a manifests file, as helm wrote it (not
/// re-serialized: kubernetes-validate reads YAML 1.1, like Kubernetes);
/// returns whether it passed and its report lines.
fn kubernetes_validate(manifests: &str) -> (bool, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifests.yaml");
    fs::write(&path, manifests).unwrap();
    let out = output(
        tool("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", KUBE_VERSION])
            .arg(&path),
    );
    let lines = text(&out.stdout)
        .lines()
        .chain(text(&out.stderr).lines())
        .map(str::to_owned)
        .collect();
    (out.status.success(), lines)
}

fn is_prometheus_operator(doc: &Yaml) -> bool {
    doc["apiVersion"].as_str() == Some("monitoring.coreos.com/v1")
}

#[test]
fn every_rendered_set_validates_against_the_kubernetes_schemas() {
    let minor = KUBE_VERSION.rsplit_once('.').unwrap().0;
    for case in cases() {
        let manifests = render_text(case);
        let docs = parse_manifests(case, &manifests);
        let (ok, report) = kubernetes_validate(&manifests);
        assert!(ok, "{}:\n{}", case.name, report.join("\n"));
        for doc in &docs {
            let resource = format!("{}/{}", kind_of(doc).to_lowercase(), name_of(doc));
            // kubernetes-validate only warns on a kind it has no schema
            // for: require a pass for each core kind, by name.
            let passed = format!("passed for resource {resource} against version {minor}");
            if is_prometheus_operator(doc) {
                check_prometheus_operator_resource(doc, &docs);
            } else {
                assert!(
                    report.iter().any(|l| l.contains(&passed)),
                    "{}: {resource} was not validated:\n{}",
                    case.name,
                    report.join("\n")
                );
            }
        }
    }
}

#[test]
fn the_schema_validator_rejects_a_broken_manifest() {
    // Guards the validation above against a validator that passes anything.
    let docs = render(&DEFAULT);
    let mut broken: Vec<Yaml> = docs
        .iter()
        .filter(|d| kind_of(d) == "StatefulSet")
        .cloned()
        .collect();
    let c = &mut broken[0]["spec"]["template"]["spec"]["containers"][0];
    c["ports"][0]["containerPort"] = Yaml::from("ninety");
    c["livenessProbe"]["httpGet"]["pathh"] = Yaml::from("/healthz");
    let (ok, report) = kubernetes_validate(&serde_yaml::to_string(&broken[0]).unwrap());
    assert!(!ok, "a broken StatefulSet passed:\n{}", report.join("\n"));
    assert!(report.iter().any(|l| l.starts_with("ERROR")), "{report:?}");
}

/// The Prometheus operator's kinds have no schema in kubernetes-validate:
/// their fields are checked one by one against what the operator reads
/// (monitoring.coreos.com/v1), and the rules themselves by promtool below.
fn check_prometheus_operator_resource(doc: &Yaml, docs: &[Yaml]) {
    let keys = |v: &Yaml| -> BTreeSet<String> {
        v.as_mapping()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let top: BTreeSet<String> = ["apiVersion", "kind", "metadata", "spec"]
        .map(String::from)
        .into();
    assert_eq!(keys(doc), top, "{}", kind_of(doc));
    match kind_of(doc) {
        "ServiceMonitor" => check_service_monitor(doc, docs),
        "PrometheusRule" => {
            let want: BTreeSet<String> = ["groups".to_string()].into();
            assert_eq!(keys(&doc["spec"]), want);
            for group in seq(&doc["spec"]["groups"]) {
                assert!(group["name"].as_str().is_some_and(|n| !n.is_empty()));
                assert!(!seq(&group["rules"]).is_empty());
            }
        }
        other => panic!("unexpected kind {other}"),
    }
}

fn check_service_monitor(sm: &Yaml, docs: &[Yaml]) {
    let spec = &sm["spec"];
    let service = docs
        .iter()
        .find(|d| kind_of(d) == "Service" && name_of(d) == "pretext")
        .expect("the ClusterIP Service");
    // The selector picks the ClusterIP Service and not the headless one.
    for (k, v) in spec["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(&service["metadata"]["labels"][k.as_str().unwrap()], v);
    }
    let expr = &seq(&spec["selector"]["matchExpressions"])[0];
    assert_eq!(expr["key"].as_str(), Some("pretext/headless"));
    assert_eq!(expr["operator"].as_str(), Some("DoesNotExist"));
    assert_eq!(
        seq(&spec["namespaceSelector"]["matchNames"]),
        [Yaml::from(NAMESPACE)]
    );
    let ports: Vec<&str> = seq(&service["spec"]["ports"])
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let duration = |v: &Yaml| {
        v.as_str().is_some_and(|s| {
            let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit())
                && ["ms", "s", "m", "h"].contains(&&s[digits.len()..])
        })
    };
    for ep in seq(&spec["endpoints"]) {
        assert!(
            ports.contains(&ep["port"].as_str().unwrap()),
            "{ep:?} names a Service port"
        );
        assert_eq!(ep["path"].as_str(), Some("/metrics"));
        assert!(
            duration(&ep["interval"]) && duration(&ep["scrapeTimeout"]),
            "{ep:?}"
        );
    }
}

// ------------------------------------------------- the image and the chart

/// `ENV`, `CMD` and the config-writing `sed` of the Dockerfile's runtime stage.
struct Image {
    env: Vec<String>,
    cmd: Vec<String>,
    /// The `sed` that writes the image's configuration file, if any.
    sed: Option<String>,
    expose: u16,
}

fn dockerfile() -> Image {
    let df = read("Dockerfile");
    // Join continuation lines, as Docker reads them.
    let joined = df.replace("\\\n", " ");
    let runtime = &joined[joined.find("AS runtime").expect("a runtime stage")..];
    let instruction = |name: &str| -> Vec<String> {
        runtime
            .lines()
            .filter_map(|l| l.strip_prefix(name).map(|r| r.trim().to_string()))
            .collect()
    };
    let cmd: Vec<String> = serde_json::from_str(&instruction("CMD ")[0]).expect("CMD in exec form");
    let sed = runtime
        .split("&&")
        .map(str::trim)
        .find(|part| part.starts_with("sed "))
        .map(str::to_owned);
    let expose = instruction("EXPOSE ")[0].parse().expect("EXPOSE a port");
    Image {
        env: instruction("ENV "),
        cmd,
        sed,
        expose,
    }
}

/// Runs the Dockerfile's sed on the repository's config/default.toml, as the
/// image build does, and loads the image's configuration with pretext.
fn image_config(image: &Image) -> Config {
    let sed = image
        .sed
        .as_deref()
        .expect("the runtime stage writes its configuration file with sed");
    let (script, target) = sed.split_once('>').expect("sed ... >FILE");
    assert_eq!(
        target.trim(),
        image_config_path(image),
        "sed writes the file CMD names"
    );
    let script = script.replace(
        "/tmp/default.toml",
        &root().join("config/default.toml").to_string_lossy(),
    );
    let out = run(Command::new("sh").arg("-c").arg(&script));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pretext.toml");
    fs::write(&path, &out).unwrap();
    let changed = out
        .lines()
        .zip(read("config/default.toml").lines())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        changed, 2,
        "the sed changes exactly http.listen and state.dir:\n{out}"
    );
    Config::load(Some(&path), std::iter::empty()).expect("pretext loads the image's configuration")
}

fn image_config_path(image: &Image) -> &str {
    let at = image
        .cmd
        .iter()
        .position(|a| a == "--config")
        .expect("CMD names --config");
    &image.cmd[at + 1]
}

fn port_of(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .expect("host:port")
        .1
        .parse()
        .expect("a port")
}

#[test]
fn the_image_configures_pretext_with_a_file_not_the_environment() {
    let image = dockerfile();
    // PRETEXT__ variables win over the file, so an ENV in the image would
    // override the chart's ConfigMap (issue 11).
    let pretext_env: Vec<&String> = image
        .env
        .iter()
        .filter(|e| e.contains("PRETEXT__"))
        .collect();
    assert!(pretext_env.is_empty(), "the image sets {pretext_env:?}");
    assert_eq!(image.cmd[0], "run");
    let config = image_config(&image);
    assert_eq!(config.http.listen, format!("0.0.0.0:{}", image.expose));
    assert_eq!(config.state.dir, PathBuf::from("/var/lib/pretext/state"));
    let df = read("Dockerfile");
    assert!(
        df.contains(r#"VOLUME ["/var/lib/pretext"]"#),
        "the state is on the image's volume"
    );
    assert!(df.contains("USER 10001:10001"));
}

#[test]
fn the_probes_and_the_state_follow_the_chart_values() {
    let image = dockerfile();
    for case in [&DEFAULT, &MOVED] {
        let docs = render(case);
        let (_, config) = rendered_config(&docs);
        let c = container(&docs);
        // No variable overrides what the ConfigMap says.
        for env in seq(&c["env"]) {
            let name = env["name"].as_str().unwrap();
            assert!(
                !name.starts_with("PRETEXT__HTTP__") && !name.starts_with("PRETEXT__STATE__"),
                "{}: {name} overrides the ConfigMap",
                case.name
            );
        }
        assert!(
            c["args"].is_null(),
            "the image's CMD runs: run --config FILE"
        );
        check_config_mount(case, &docs, image_config_path(&image));
        check_probe_ports(case, &docs, port_of(&config.http.listen));
        check_state_on_the_claim(case, &docs, &config.state.dir);
    }
}

/// The ConfigMap is mounted at the path the image's CMD reads.
fn check_config_mount(case: &Case, docs: &[Yaml], image_path: &str) {
    let mount = seq(&container(docs)["volumeMounts"])
        .iter()
        .find(|m| m["name"].as_str() == Some("config"))
        .expect("the config volume is mounted");
    assert_eq!(
        mount["mountPath"].as_str(),
        Some(image_path),
        "{}",
        case.name
    );
    assert_eq!(mount["subPath"].as_str(), Some("pretext.toml"));
}

fn check_probe_ports(case: &Case, docs: &[Yaml], listen_port: u16) {
    let c = container(docs);
    let http = seq(&c["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .expect("a port named http");
    assert_eq!(
        http["containerPort"].as_u64(),
        Some(u64::from(listen_port)),
        "{}: pretext listens where the container port is",
        case.name
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let port = &c[probe]["httpGet"]["port"];
        assert!(
            port.as_str() == Some("http") || port.as_u64() == Some(u64::from(listen_port)),
            "{}: {probe} probes {port:?}, pretext listens on {listen_port}",
            case.name
        );
    }
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    for svc in docs.iter().filter(|d| kind_of(d) == "Service") {
        let target = &seq(&svc["spec"]["ports"])[0]["targetPort"];
        assert_eq!(
            target.as_str(),
            Some("http"),
            "{}: {}",
            case.name,
            name_of(svc)
        );
    }
}

/// state.dir is on the volume claimed per pod, not the read-only root.
fn check_state_on_the_claim(case: &Case, docs: &[Yaml], state_dir: &Path) {
    let sts = the(docs, "StatefulSet");
    let claims: Vec<&str> = seq(&sts["spec"]["volumeClaimTemplates"])
        .iter()
        .filter_map(|t| t["metadata"]["name"].as_str())
        .collect();
    let c = container(docs);
    let on_claim = seq(&c["volumeMounts"]).iter().any(|m| {
        claims.contains(&m["name"].as_str().unwrap_or(""))
            && state_dir.starts_with(m["mountPath"].as_str().unwrap_or("/nowhere"))
    });
    assert!(
        on_claim,
        "{}: state.dir {} is not under a mounted claim ({claims:?})",
        case.name,
        state_dir.display()
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
}

// ------------------------------------------------------- the ConfigMap

#[test]
fn pretext_accepts_the_rendered_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.jsonl");
    fs::write(&empty, "").unwrap();
    for case in cases() {
        let (toml, _) = rendered_config(&render(case));
        let path = dir.path().join("pretext.toml");
        fs::write(&path, &toml).unwrap();
        // The binary, as the pod runs it; replay so that no broker is needed.
        run(pretext()
            .args(["replay", "--config"])
            .arg(&path)
            .arg("--input")
            .arg(&empty)
            .args(["--output", "-"]));
    }
}

#[test]
fn the_chart_defaults_are_pretexts_defaults() {
    // The default values render config/default.toml, except what the pod
    // needs: every interface, the state on the volume, a broker named kafka.
    let (_, chart) = rendered_config(&render(&DEFAULT));
    let mut want = Config::load(
        Some(&root().join("config/default.toml")),
        std::iter::empty(),
    )
    .expect("config/default.toml loads");
    want.http.listen = "0.0.0.0:9464".into();
    want.state.dir = PathBuf::from("/var/lib/pretext/state");
    want.kafka.brokers = "kafka:9092".into();
    assert_eq!(chart, want);
}

#[test]
fn the_rendered_configuration_follows_the_values() {
    let (_, moved) = rendered_config(&render(&MOVED));
    assert_eq!(moved.http.listen, "0.0.0.0:9500");
    assert_eq!(moved.state.dir, PathBuf::from("/data/pretext/state"));

    let docs = render(&SECURED);
    let (toml, secured) = rendered_config(&docs);
    let client = &secured.kafka.client;
    let get = |k: &str| client.get(k).map(String::as_str);
    assert_eq!(get("security.protocol"), Some("SASL_SSL"));
    assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    assert_eq!(get("ssl.ca.location"), Some("/etc/pretext/tls/ca.crt"));
    assert_eq!(
        get("ssl.certificate.location"),
        Some("/etc/pretext/tls/tls.crt")
    );
    assert_eq!(get("ssl.key.location"), Some("/etc/pretext/tls/tls.key"));
    for secret in ["sasl.username", "sasl.password", "ssl.key.password"] {
        assert!(!toml.contains(secret), "{secret} is in the ConfigMap");
    }
    // The secrets come from Secrets, as variables.
    let env = seq(&container(&docs)["env"]);
    for (var, secret, key) in [
        (
            "PRETEXT__KAFKA__CLIENT__SASL__USERNAME",
            "kafka-user",
            "username",
        ),
        (
            "PRETEXT__KAFKA__CLIENT__SASL__PASSWORD",
            "kafka-user",
            "password",
        ),
        (
            "PRETEXT__KAFKA__CLIENT__SSL__KEY__PASSWORD",
            "kafka-key",
            "password",
        ),
    ] {
        let e = env
            .iter()
            .find(|e| e["name"].as_str() == Some(var))
            .unwrap_or_else(|| panic!("no {var}"));
        let r = &e["valueFrom"]["secretKeyRef"];
        assert_eq!(
            (r["name"].as_str(), r["key"].as_str()),
            (Some(secret), Some(key)),
            "{var}"
        );
        assert!(e["value"].is_null(), "{var} has no literal value");
    }
}

// -------------------------------------------------------------- promtool

/// The rendered PrometheusRule's spec, written as a Prometheus rule file.
fn rule_file(dir: &Path) -> PathBuf {
    let docs = render(&ALERTS);
    let rule = the(&docs, "PrometheusRule");
    let path = dir.join("pretext-rules.yaml");
    fs::write(&path, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    path
}

fn alert_names(rules: &Path) -> BTreeSet<String> {
    let spec: Yaml = serde_yaml::from_str(&fs::read_to_string(rules).unwrap()).unwrap();
    seq(&spec["groups"])
        .iter()
        .flat_map(|g| seq(&g["rules"]))
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

#[test]
fn promtool_checks_the_rendered_alert_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rule_file(dir.path());
    let n = alert_names(&rules).len();
    assert!(n >= 6, "only {n} alerts");
    let out = run(tool("promtool").args(["check", "rules"]).arg(&rules));
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
    // prometheusRule.alertLabels reach every alert, beside its severity.
    let docs = render(&MONITORED);
    let groups = seq(&the(&docs, "PrometheusRule")["spec"]["groups"]);
    for rule in groups.iter().flat_map(|g| seq(&g["rules"])) {
        assert_eq!(rule["labels"]["team"].as_str(), Some("crm"), "{rule:?}");
        assert!(rule["labels"]["severity"].is_string(), "{rule:?}");
    }
}

#[test]
fn promtool_unit_tests_fire_each_alert_and_only_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rule_file(dir.path());
    let tests = dir.path().join("alerts.test.yaml");
    fs::copy(root().join("tests/data/alerts.test.yaml"), &tests).unwrap();
    let out = run(tool("promtool").args(["test", "rules"]).arg(&tests));
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert has a case where it fires and one where it does not.
    let file: Yaml = serde_yaml::from_str(&read("tests/data/alerts.test.yaml")).unwrap();
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for test in seq(&file["tests"]) {
        for case in seq(&test["alert_rule_test"]) {
            let name = case["alertname"].as_str().unwrap().to_string();
            if seq(&case["exp_alerts"]).is_empty() {
                quiet.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    let alerts = alert_names(&rules);
    assert_eq!(fires, alerts, "alerts with a firing case");
    assert_eq!(quiet, alerts, "alerts with a quiet case");
}

/// Every `expr` of a dashboard panel, by panel title, Grafana's variables
/// replaced by the values given.
fn dashboard_queries_for(
    namespace: &str,
    pod: &str,
    rate_interval: &str,
    range: &str,
) -> Vec<(String, String)> {
    let dashboard: Json = serde_json::from_str(&read("dashboards/pretext.json")).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"]
            .as_array()
            .map_or(&[][..], |t| t.as_slice())
        {
            let expr = target["expr"].as_str().expect("a PromQL target");
            let expr = expr
                .replace("$__rate_interval", rate_interval)
                .replace("$__range", range)
                .replace("$namespace", namespace)
                .replace("$pod", pod);
            assert!(!expr.contains('$'), "an unknown variable in {expr}");
            out.push((panel["title"].as_str().unwrap_or("").to_string(), expr));
        }
    }
    out
}

fn dashboard_queries() -> Vec<(String, String)> {
    dashboard_queries_for(".*", ".*", "5m", "1h")
}

#[test]
fn promtool_parses_every_dashboard_query() {
    // A recording rule per panel query: promtool parses each expression.
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "only {} queries", queries.len());
    let rules: Vec<Json> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yaml");
    fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let out = run(tool("promtool").args(["check", "rules"]).arg(&path));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
}

/// `promtool check metrics` on an exposition: whether it passed, and what
/// it said (nothing when clean).
fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    let mut child = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn promtool_check_metrics_accepts_the_exposition() {
    // The registry's exposition as /metrics serves it, with a lag series
    // per partition as in live mode.
    let metrics = pretext::metrics::Metrics::new().unwrap();
    metrics
        .consumer_lag
        .with_label_values(&["pretext.web-events", "0"])
        .set(12);
    metrics.batch_duration.observe(0.02);
    metrics.ready.set(1);
    let exposition = metrics.render();
    assert!(
        exposition
            .lines()
            .filter(|l| l.starts_with("# TYPE"))
            .count()
            >= 16
    );
    let (ok, said) = promtool_check_metrics(&exposition);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

#[test]
fn promtool_check_metrics_reports_a_lint_problem() {
    // Guards the checks above: promtool flags a counter not named *_total.
    let bad = "# HELP pretext_things A counter.\n# TYPE pretext_things counter\npretext_things 1\n";
    let (ok, said) = promtool_check_metrics(bad);
    assert!(!ok, "promtool accepted a bad counter name");
    assert!(said.contains("_total"), "{said}");
}

// -------------------------------------------------------------- yamllint

#[test]
fn yamllint_is_clean_on_the_chart_the_alert_tests_and_asyncapi() {
    // --strict: warnings (a missing document start) fail too.
    let out = run(tool("yamllint")
        .args(["--strict", "--format", "parsable"])
        .arg(chart().join("Chart.yaml"))
        .arg(chart().join("values.yaml"))
        .arg(root().join("tests/data/alerts.test.yaml"))
        .arg(root().join("docs/asyncapi.yaml")));
    assert!(out.trim().is_empty(), "{out}");
}

// ------------------------------------------------------ check-jsonschema

/// Writes each JSON line as its own file (check-jsonschema reads one JSON
/// document per file); returns the files in line order.
fn one_file_per_line(dir: &Path, prefix: &str, lines: &[&[u8]]) -> Vec<PathBuf> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let path = dir.join(format!("{prefix}-{i:05}.json"));
            fs::write(&path, line).unwrap();
            path
        })
        .collect()
}

/// check-jsonschema of `files` against schemas/`schema`: the files it fails.
fn check_jsonschema(schema: &str, files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let out = output(
        tool("check-jsonschema")
            .arg("--schemafile")
            .arg(root().join("schemas").join(schema))
            .args(["--output-format", "json"])
            .args(files),
    );
    let report: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check-jsonschema said no JSON ({e}): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    let failed: BTreeSet<PathBuf> = ["errors", "parse_errors"]
        .iter()
        .flat_map(|k| report[k].as_array().cloned().unwrap_or_default())
        .map(|e| PathBuf::from(e["filename"].as_str().expect("a filename")))
        .collect();
    // A schema that does not resolve is an error of the run, not of a file.
    assert!(
        !text(&out.stdout).contains("Unresolvable") && !text(&out.stderr).contains("Unresolvable"),
        "{schema} does not resolve: {}",
        text(&out.stderr)
    );
    assert_eq!(
        out.status.success(),
        failed.is_empty(),
        "check-jsonschema exit {} with {} failures: {}",
        out.status,
        failed.len(),
        text(&out.stderr)
    );
    failed
}

fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn check_jsonschema_agrees_with_the_decoder_on_the_sample() {
    let sample = fs::read(root().join("examples/sample.jsonl")).expect("examples/sample.jsonl");
    let events = lines(&sample);
    let dir = tempfile::tempdir().unwrap();
    let files = one_file_per_line(dir.path(), "event", &events);
    let failed = check_jsonschema("event.json", &files);
    let rejected: BTreeSet<PathBuf> = events
        .iter()
        .zip(&files)
        .filter(|(line, _)| pretext::decode::decode(line, 1 << 20).is_err())
        .map(|(_, f)| f.clone())
        .collect();
    assert!(
        !rejected.is_empty(),
        "the sample has deliberately bad lines"
    );
    assert!(
        rejected.len() * 100 < events.len(),
        "{} bad lines",
        rejected.len()
    );
    assert_eq!(
        failed, rejected,
        "check-jsonschema and pretext's decoder disagree"
    );
}

/// What `pretext replay --flush` of the bundled sample writes, with a 30%
/// holdout so that every output has records.
struct Written {
    triggers: Vec<u8>,
    holdout: Vec<u8>,
    conversions: Vec<u8>,
    dead_letters: Vec<u8>,
}

fn replay_sample(dir: &Path) -> Written {
    let config = dir.join("holdout.toml");
    fs::write(&config, "[holdout]\npercent = 30\n").unwrap();
    let path = |name: &str| dir.join(name);
    run(pretext()
        .args(["replay", "--flush", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(path("triggers.jsonl"))
        .arg("--holdout")
        .arg(path("holdout.jsonl"))
        .arg("--conversions")
        .arg(path("conversions.jsonl"))
        .arg("--dead-letter")
        .arg(path("dead-letter.jsonl")));
    let read = |name: &str| fs::read(path(name)).unwrap();
    Written {
        triggers: read("triggers.jsonl"),
        holdout: read("holdout.jsonl"),
        conversions: read("conversions.jsonl"),
        dead_letters: read("dead-letter.jsonl"),
    }
}

#[test]
fn check_jsonschema_accepts_what_pretext_writes() {
    let dir = tempfile::tempdir().unwrap();
    let w = replay_sample(dir.path());
    for (schema, prefix, written) in [
        ("trigger.json", "trigger", lines(&w.triggers)),
        ("trigger.json", "holdout", lines(&w.holdout)),
        ("conversion.json", "conversion", lines(&w.conversions)),
        ("dead-letter.json", "dead", lines(&w.dead_letters)),
    ] {
        assert!(!written.is_empty(), "the sample replay wrote no {prefix}");
        let files = one_file_per_line(dir.path(), prefix, &written);
        let failed = check_jsonschema(schema, &files);
        assert!(
            failed.is_empty(),
            "{schema} rejects {} of pretext's own {prefix} records: {failed:?}",
            failed.len()
        );
    }
    // Each output carries its own group.
    for (written, group) in [(&w.triggers, "treated"), (&w.holdout, "holdout")] {
        for line in lines(written) {
            let t: Json = serde_json::from_slice(line).unwrap();
            assert_eq!(t["group"], group, "{t}");
        }
    }
    let triggers = w.triggers;
    // And rejects a trigger with a field out of the contract.
    let mut bad: Json = serde_json::from_slice(lines(&triggers)[0]).unwrap();
    bad["fired_at"] = Json::from("2026-11-22T11:15:00+01:00");
    let bad = serde_json::to_vec(&bad).unwrap();
    let files = one_file_per_line(dir.path(), "bad", &[bad.as_slice()]);
    assert_eq!(check_jsonschema("trigger.json", &files).len(), 1);
}

/// librdkafka pass-through maps: free-form, each one key of the configuration.
const PASS_THROUGH: [&str; 3] = ["kafka.client", "kafka.consumer", "kafka.producer"];

/// The dotted keys of a TOML table, each pass-through map as one key.
fn toml_keys(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) if !PASS_THROUGH.contains(&key.as_str()) => {
                toml_keys(&key, inner, out)
            }
            _ => {
                out.insert(key);
            }
        }
    }
}

fn keys_of(toml_text: &str) -> BTreeSet<String> {
    let table: toml::Table = toml_text.parse().expect("TOML");
    let mut keys = BTreeSet::new();
    toml_keys("", &table, &mut keys);
    keys
}

#[test]
fn the_configmap_sets_every_key_of_the_default_configuration() {
    // Loading fills a missing key with its default, so the keys are
    // compared too: each is the chart's to set.
    let want = keys_of(&read("config/default.toml"));
    for case in cases() {
        let (toml, _) = rendered_config(&render(case));
        assert_eq!(keys_of(&toml), want, "{}", case.name);
    }
}

#[test]
fn the_pod_runs_unprivileged_and_stops_in_time() {
    let docs = render(&DEFAULT);
    let (_, config) = rendered_config(&docs);
    let sts = the(&docs, "StatefulSet");
    let pod = &sts["spec"]["template"]["spec"];
    let c = container(&docs);
    let sc = &c["securityContext"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(seq(&sc["capabilities"]["drop"]), [Yaml::from("ALL")]);
    assert!(
        read("Dockerfile").contains(&format!(
            "USER {0}:{0}",
            sc["runAsUser"].as_u64().expect("runAsUser")
        )),
        "the container runs as the image's user"
    );
    // A writable /tmp on a read-only root.
    let tmp = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some("tmp"))
        .expect("tmp");
    assert!(tmp["emptyDir"].is_mapping());
    assert!(seq(&c["volumeMounts"])
        .iter()
        .any(|m| m["mountPath"].as_str() == Some("/tmp")));
    // SIGTERM leaves the batch time to commit.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace period");
    assert!(
        grace * 1000 > config.kafka.shutdown_timeout.0,
        "grace {grace}s"
    );
    // Every ordinal joins the group the ConfigMap names.
    let group = seq(&c["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some("PRETEXT__KAFKA__GROUP_ID"))
        .and_then(|e| e["value"].as_str());
    assert_eq!(group, Some(config.kafka.group_id.as_str()));
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
}

#[test]
fn exactly_once_reaches_pretext_and_each_pod_has_its_own_identity() {
    assert!(!rendered_config(&render(&DEFAULT)).1.kafka.exactly_once);
    let docs = render(&REPLICATED);
    let (toml, config) = rendered_config(&docs);
    assert!(config.kafka.exactly_once, "{toml}");
    assert_eq!(config.kafka.instance_id, "", "the pod sets it");
    // The pod name, stable per ordinal: the producer's transactional.id
    // is <group>.<pod name>, so pods never fence each other and a
    // rescheduled pod fences its zombie.
    let instance = seq(&container(&docs)["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some("PRETEXT__KAFKA__INSTANCE_ID"))
        .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str());
    assert_eq!(instance, Some(Some("metadata.name")));
}

/// The value source of an environment variable of the container, if set.
fn env_var<'a>(docs: &'a [Yaml], name: &str) -> Option<&'a Yaml> {
    seq(&container(docs)["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
}

#[test]
fn the_scale_values_reach_pretext_and_only_partitioned_pods_are_static_members() {
    let docs = render(&DEFAULT);
    let (_, config) = rendered_config(&docs);
    assert_eq!(config.scale, pretext::config::Scale::default());
    // One partition keeps dynamic membership, as before scale-out.
    assert!(env_var(&docs, "PRETEXT__SCALE__INSTANCE_ID").is_none());

    let docs = render(&SCALED);
    let (toml, config) = rendered_config(&docs);
    assert_eq!(config.scale.partitions, 6, "{toml}");
    assert_eq!(config.scale.standby_replicas, 1, "{toml}");
    assert_eq!(config.scale.instance_id, "", "the pod sets it");
    let static_id = env_var(&docs, "PRETEXT__SCALE__INSTANCE_ID")
        .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str());
    assert_eq!(static_id, Some(Some("metadata.name")));
    assert_eq!(
        the(&docs, "StatefulSet")["spec"]["replicas"].as_u64(),
        Some(3)
    );
}

#[test]
fn each_scaled_pod_advertises_its_own_address_to_the_others() {
    // Unpartitioned, no query is forwarded: nothing to advertise.
    let docs = render(&DEFAULT);
    assert!(env_var(&docs, "PRETEXT__SCALE__ADVERTISED_HTTP").is_none());
    assert!(env_var(&docs, "POD_NAME").is_none());

    let docs = render(&SCALED);
    let sts = the(&docs, "StatefulSet");
    assert_eq!(sts["spec"]["replicas"].as_u64(), Some(3));
    let from_pod_name =
        |name: &str| env_var(&docs, name).map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str());
    assert_eq!(
        from_pod_name("PRETEXT__SCALE__INSTANCE_ID"),
        Some(Some("metadata.name"))
    );
    assert_eq!(from_pod_name("POD_NAME"), Some(Some("metadata.name")));
    // The pod's DNS name under the Service that governs the StatefulSet, so
    // it resolves to this pod alone, and the container's port: that name
    // bypasses the Service's port mapping.
    let headless = sts["spec"]["serviceName"].as_str().expect("serviceName");
    assert!(docs
        .iter()
        .any(|d| kind_of(d) == "Service" && name_of(d) == headless));
    let port = seq(&container(&docs)["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .and_then(|p| p["containerPort"].as_u64())
        .expect("the http port");
    let advertised = env_var(&docs, "PRETEXT__SCALE__ADVERTISED_HTTP")
        .and_then(|e| e["value"].as_str())
        .expect("PRETEXT__SCALE__ADVERTISED_HTTP has a value");
    assert_eq!(
        advertised,
        format!("$(POD_NAME).{headless}.{NAMESPACE}.svc:{port}")
    );
    // Kubernetes expands $(POD_NAME) only from a variable listed earlier.
    let names: Vec<&str> = seq(&container(&docs)["env"])
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    let at = |name: &str| names.iter().position(|n| *n == name);
    assert!(
        at("POD_NAME") < at("PRETEXT__SCALE__ADVERTISED_HTTP"),
        "{names:?}"
    );
    assert_advertised_address_loads(&docs, &advertised.replace("$(POD_NAME)", "pretext-2"));
}

#[test]
fn a_scaled_release_loses_one_pod_at_a_time() {
    // A drain or a rolling restart moves the partitions of one pod, restored
    // from their changelogs by the others, never of several at once.
    let docs = render(&SCALED);
    let pdb = &the(&docs, "PodDisruptionBudget")["spec"];
    assert_eq!(pdb["maxUnavailable"].as_u64(), Some(1));
    let sts = &the(&docs, "StatefulSet")["spec"];
    assert_eq!(pdb["selector"], sts["selector"]);
    assert_eq!(
        sts["updateStrategy"]["type"].as_str(),
        Some("RollingUpdate")
    );
    // Kubernetes' default for a RollingUpdate: one pod at a time.
    assert!(sts["updateStrategy"]["rollingUpdate"]["maxUnavailable"].is_null());
}

/// pretext accepts the rendered ConfigMap with the address a pod gets from
/// its environment, and that address wins over the file's empty one.
fn assert_advertised_address_loads(docs: &[Yaml], address: &str) {
    let (toml, file) = rendered_config(docs);
    assert_eq!(file.scale.advertised_http, "", "the pod sets it: {toml}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pretext.toml");
    fs::write(&path, &toml).unwrap();
    let env = [(
        "PRETEXT__SCALE__ADVERTISED_HTTP".to_string(),
        address.to_string(),
    )];
    let config = Config::load(Some(&path), env)
        .unwrap_or_else(|e| panic!("pretext rejects {address:?}: {e}"));
    assert_eq!(config.scale.advertised_http, address);
}

#[test]
fn the_experiment_values_reach_pretext_and_the_token_stays_secret() {
    let docs = render(&EXPERIMENT);
    let (toml, config) = rendered_config(&docs);
    assert_eq!(config.holdout.percent, 12.5);
    assert_eq!(config.holdout.salt, "xmas-2026");
    assert_eq!(config.pressure.max_triggers, 3);
    assert_eq!(config.pressure.window.0, 12 * 3_600_000);
    assert_eq!(config.measurement.attribution_window.0, 3 * 86_400_000);
    assert_eq!(config.topics.holdout, "crm.holdout");
    assert_eq!(config.topics.conversions, "crm.conversions");
    assert!(
        !keys_of(&toml).contains("http.query_token"),
        "the token is not in the ConfigMap"
    );
    let env = seq(&container(&docs)["env"]);
    let token = env
        .iter()
        .find(|e| e["name"].as_str() == Some("PRETEXT__HTTP__QUERY_TOKEN"))
        .expect("the query token variable");
    let r = &token["valueFrom"]["secretKeyRef"];
    assert_eq!(
        (r["name"].as_str(), r["key"].as_str()),
        (Some("pretext-query"), Some("token"))
    );
    assert!(token["value"].is_null());
    // Without a Secret, no token and no variable: the queries are off.
    let docs = render(&DEFAULT);
    assert!(!seq(&container(&docs)["env"])
        .iter()
        .any(|e| e["name"].as_str() == Some("PRETEXT__HTTP__QUERY_TOKEN")));
}

// ------------------------------------------------ a real Prometheus server

/// Serves the registry's exposition as /metrics on loopback, as pretext's
/// HTTP endpoint does, until dropped.
struct Exporter {
    port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Exporter {
    fn start(metrics: Arc<pretext::metrics::Metrics>) -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (s1, s2) = (stop.clone(), stop.clone());
        let m1 = metrics.clone();
        let serve = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => answer(conn, &m1.render()),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        // Traffic: every type and group fires and converts, the cap holds
        // some back, events arrive, batches take time.
        let traffic = std::thread::spawn(move || {
            let mut stats = EngineStats::default();
            while !s2.load(Ordering::Relaxed) {
                advance(&mut stats);
                metrics.observe_engine(&stats);
                metrics.batch_duration.observe(0.015);
                metrics.dead_letters.inc();
                metrics.ready.set(1);
                metrics.watermark.set(1.795e9);
                metrics.event_time_lag.set(2.5);
                metrics.state_size_bytes.set(1 << 20);
                metrics.state_keys.set(5000);
                metrics
                    .consumer_lag
                    .with_label_values(&["pretext.web-events", "0"])
                    .set(40);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Exporter {
            port,
            stop,
            threads: vec![serve, traffic],
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn advance(stats: &mut EngineStats) {
    for (k, by_group) in stats.triggers.iter_mut().enumerate() {
        for (g, n) in by_group.iter_mut().enumerate() {
            *n += 10 + 3 * k as u64 + g as u64;
        }
    }
    for (k, by_group) in stats.conversions.iter_mut().enumerate() {
        for (g, n) in by_group.iter_mut().enumerate() {
            // The treated group converts more often than the holdout.
            *n += 3 - g as u64 + k as u64;
        }
    }
    for (i, n) in stats.suppressed.iter_mut().enumerate() {
        *n += 1 + i as u64;
    }
    for (i, n) in stats.events.iter_mut().enumerate() {
        *n += 100 + i as u64;
    }
    stats.duplicates += 2;
    stats.ignored_erased += 1;
    stats.pending_checks = 1200;
}

fn answer(mut conn: TcpStream, body: &str) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body.as_bytes());
}

/// A `prometheus` server on loopback scraping `target` every second, with
/// the labels the chart's ServiceMonitor gives; killed when dropped.
struct Prometheus {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: pretext\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target}']\n        labels: {{namespace: {NAMESPACE}, service: pretext, pod: pretext-0}}\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            port,
            child,
            _dir: dir,
        }
    }

    /// An instant query through the HTTP API: the result vector.
    fn query(&self, promql: &str) -> Result<Vec<Json>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (_, body) = http_get(self.port, &path)?;
        let v: Json = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{promql}: {v}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// A GET on loopback: the status code and the body.
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // HTTP/1.0: the server closes the connection after a plain body.
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head}"))?;
    Ok((status, body.to_string()))
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls until Prometheus has `samples` scrapes of the target, at most 60 s.
fn wait_for_scrapes(prom: &Prometheus, samples: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = prom
            .query("count_over_time(pretext_ready[5m])")
            .ok()
            .and_then(|r| {
                r.first()
                    .and_then(|s| s["value"][1].as_str()?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        if n >= samples {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus scraped {n} times in 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_real_prometheus_answers_every_dashboard_query_with_data() {
    // Prometheus 2.42 (Debian's package) scrapes the registry's exposition
    // under traffic; every panel query must return finite numbers.
    let metrics = Arc::new(pretext::metrics::Metrics::new().unwrap());
    let exporter = Exporter::start(metrics);
    let prom = Prometheus::start(exporter.port);
    wait_for_scrapes(&prom, 12);
    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries_for(NAMESPACE, "pretext-0", "5s", "1m") {
        let result = prom.query(&expr).unwrap_or_else(|e| panic!("{title}: {e}"));
        let values: Vec<f64> = result
            .iter()
            .filter_map(|s| s["value"][1].as_str()?.parse().ok())
            .collect();
        if values.is_empty() || values.iter().any(|v: &f64| !v.is_finite()) {
            empty.push(format!("{title}: {expr} -> {result:?}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    // The uplift panels see the treated group convert more than the holdout.
    let uplift = dashboard_queries_for(NAMESPACE, "pretext-0", "5s", "1m")
        .into_iter()
        .find(|(t, _)| t == "Uplift (relative)")
        .expect("an uplift panel");
    let v: f64 = prom.query(&uplift.1).unwrap()[0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(v > 0.0, "relative uplift {v}");
}

/// A port on loopback that nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `pretext run` with no broker to reach: it serves HTTP while it waits for
/// one. Killed when dropped.
struct Live {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Live {
    fn start() -> Live {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("pretext.toml");
        fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = \"127.0.0.1:{}\"\n[state]\ndir = {:?}\n[http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"error\"\n",
                free_port(),
                dir.path().join("state").display().to_string(),
            ),
        )
        .unwrap();
        let child = pretext()
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pretext run starts");
        Live {
            child,
            port,
            _dir: dir,
        }
    }

    /// GET `path`, retried until pretext serves HTTP (at most 30 s).
    fn get(&mut self, path: &str) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(answer) = http_get(self.port, path) {
                return answer;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pretext run exited {status} before serving HTTP");
            }
            assert!(
                Instant::now() < deadline,
                "pretext serves no HTTP after 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn promtool_check_metrics_accepts_a_live_pretexts_metrics() {
    // The real binary's /metrics, before any broker answers: every metric
    // but the per-partition lag (no partition assigned) and the gauges that
    // wait for a first event is there.
    let mut live = Live::start();
    let (status, exposition) = live.get("/metrics");
    assert_eq!(status, 200, "{exposition}");
    assert_eq!(live.get("/readyz").0, 503, "not ready without a broker");
    let later = |name: &str| {
        name == "pretext_consumer_lag_messages"
            || pretext::metrics::AFTER_FIRST_EVENT.contains(&name)
    };
    for name in pretext::metrics::NAMES {
        if !later(name) {
            assert!(
                exposition.contains(&format!("# TYPE {name} ")),
                "{name} missing from /metrics"
            );
        }
    }
    let (ok, said) = promtool_check_metrics(&exposition);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics on /metrics: {said}"
    );
}

/// One number of an instant query's first series, if any.
fn scalar(prom: &Prometheus, promql: &str) -> Option<f64> {
    let result = prom.query(promql).ok()?;
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Dashboard panels whose value divides by the holdout's conversions.
const OVER_HOLDOUT_CONVERSIONS: [&str; 2] = ["Uplift (relative)", "Relative uplift by type (7d)"];

#[test]
fn a_real_prometheus_scraping_a_live_pretext_answers_the_dashboard_after_traffic() {
    // pretext run on a real Kafka broker, a 30% holdout and a cap of 3 a
    // day; Prometheus scrapes it from before the traffic (the bundled
    // sample) until after it, as the chart's ServiceMonitor would.
    let kafka = broker::Broker::start();
    let topics = broker::Topics::create(&kafka);
    let (holdout, conversions) = (broker::unique("holdout"), broker::unique("conversions"));
    kafka.create_topics(&[&holdout, &conversions], 1);
    let dir = tempfile::tempdir().unwrap();
    let group = broker::unique("group");
    let (config, state) = broker::write_config(dir.path(), &kafka.addr, &topics, &group);
    let env = [
        ("PRETEXT__HOLDOUT__PERCENT", "30"),
        ("PRETEXT__PRESSURE__MAX_TRIGGERS", "3"),
        ("PRETEXT__TOPICS__HOLDOUT", holdout.as_str()),
        ("PRETEXT__TOPICS__CONVERSIONS", conversions.as_str()),
    ];
    let log = dir.path().join("pretext.log");
    let live = broker::Pretext::start_with_env(&config, &state, &log, &env);
    live.wait_ready();
    let port: u16 = live.http.rsplit_once(':').unwrap().1.parse().unwrap();
    let prom = Prometheus::start(port);
    wait_for_scrapes(&prom, 3);

    let sample = fs::read(root().join("examples/sample.jsonl")).unwrap();
    let messages: Vec<(Option<&str>, &[u8])> =
        lines(&sample).into_iter().map(|l| (None, l)).collect();
    kafka.produce(&topics.input, &messages);
    // Applied, duplicate or rejected: every message counted, then scraped.
    let counted = "sum(pretext_events_total) + sum(pretext_events_duplicate_total) \
                   + sum(pretext_events_rejected_total)";
    broker::wait_for(
        "prometheus to see the sample applied",
        Duration::from_secs(120),
        || (scalar(&prom, counted)? >= messages.len() as f64).then_some(()),
    );
    broker::wait_for(
        "triggers and conversions scraped",
        Duration::from_secs(60),
        || {
            let fired = scalar(&prom, "sum(pretext_triggers_total)")?;
            let converted = scalar(&prom, "sum(pretext_conversions_total)")?;
            (fired > 0.0 && converted > 0.0).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));

    let holdout_converted =
        scalar(&prom, r#"sum(pretext_conversions_total{group="holdout"})"#).unwrap_or(0.0);
    // The experiment is visible: about 30% of the triggers in the holdout,
    // some held back by the cap.
    let share = scalar(
        &prom,
        r#"sum(pretext_triggers_total{group="holdout"}) / sum(pretext_triggers_total)"#,
    )
    .unwrap_or(0.0);
    let capped = scalar(
        &prom,
        r#"sum(pretext_suppressed_total{reason="frequency_cap"})"#,
    )
    .unwrap_or(0.0);
    eprintln!("holdout share {share:.3}, capped {capped}, holdout conversions {holdout_converted}");
    assert!((0.15..0.45).contains(&share), "holdout share {share}");
    assert!(capped > 0.0, "the cap held nothing back");
    // And its /metrics after traffic, every series present (the lag of the
    // assigned partition too), passes promtool's lint.
    let exposition = live.metrics().expect("/metrics answers");
    assert!(
        exposition.contains("pretext_consumer_lag_messages{"),
        "{exposition}"
    );
    let (ok, said) = promtool_check_metrics(&exposition);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
    let mut failed = Vec::new();
    for (title, expr) in dashboard_queries_for(NAMESPACE, "pretext-0", "1m", "10m") {
        let result = prom.query(&expr).unwrap_or_else(|e| panic!("{title}: {e}"));
        let values: Vec<f64> = result
            .iter()
            .filter_map(|s| s["value"][1].as_str()?.parse().ok())
            .collect();
        // A ratio over a group with no conversion yet is not a number:
        // only where the holdout has none may such a panel show none.
        let may_be_undefined =
            holdout_converted == 0.0 && OVER_HOLDOUT_CONVERSIONS.contains(&title.as_str());
        if values.is_empty() || !(may_be_undefined || values.iter().any(|v| v.is_finite())) {
            failed.push(format!("{title}: {expr} -> {result:?}"));
        }
    }
    assert!(
        failed.is_empty(),
        "dashboard queries without data after traffic:\n{}\npretext log: {}",
        failed.join("\n"),
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
