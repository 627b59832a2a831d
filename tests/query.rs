//! The queries of contract section 9: `pretext inspect` on a state made by
//! `pretext replay --state-dir`, the HTTP routes of the library's real
//! server on the same state (answers equal, auth, errors), the snapshot
//! consistency of a reader beside a writing engine, `pretext run` on a
//! real Kafka broker serving the queries while inspect reads its state, and
//! schemathesis against docs/openapi.yaml.

#[path = "common/broker.rs"]
mod broker;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use pretext::config::Config;
use pretext::engine::query::{Queries, Subject};
use pretext::engine::Engine;
use pretext::http::query::QueryState;
use pretext::http::Health;
use pretext::metrics::Metrics;
use pretext::state::{Reader, Store};
use serde_json::{json, Value};

const TOKEN: &str = "test-token-0123456789";

/// At the end of the replay W = 11:00, the last event's time.
const EVENTS: &[&str] = &[
    // C1: a view that fires at 11:00, a cart with its check pending at 11:30,
    // a second cookie (identify) and email consent.
    r#"{"type":"product_view","event_id":"e1","ts":"2026-11-22T10:00:00Z","cookie_id":"ck1","crm_id":"C1","product_id":"P1","category":"coats"}"#,
    r#"{"type":"add_to_cart","event_id":"e2","ts":"2026-11-22T10:30:00Z","cookie_id":"ck1","product_id":"P2","category":"knitwear"}"#,
    r#"{"type":"identify","event_id":"e3","ts":"2026-11-22T10:40:00Z","cookie_id":"ck9","crm_id":"C1"}"#,
    r#"{"type":"consent","event_id":"e4","ts":"2026-11-22T10:41:00Z","crm_id":"C1","email":true}"#,
    // C2: a purchase after the view of P1 resets its score; P3 pending.
    r#"{"type":"product_view","event_id":"e5","ts":"2026-11-22T09:00:00Z","cookie_id":"ck2","crm_id":"C2","product_id":"P1"}"#,
    r#"{"type":"purchase","event_id":"e6","ts":"2026-11-22T09:30:00Z","crm_id":"C2","order_id":"O1","channel":"store","items":[{"product_id":"P1"}]}"#,
    r#"{"type":"product_view","event_id":"e7","ts":"2026-11-22T10:45:00Z","cookie_id":"ck2","product_id":"P3"}"#,
    // An anonymous cookie: a view and a cookie-only purchase of P4, a cart of P5.
    r#"{"type":"product_view","event_id":"e8","ts":"2026-11-22T10:50:00Z","cookie_id":"ck_anon","product_id":"P4","category":"shoes"}"#,
    r#"{"type":"add_to_cart","event_id":"e9","ts":"2026-11-22T10:55:00Z","cookie_id":"ck_anon","product_id":"P5"}"#,
    r#"{"type":"purchase","event_id":"e10","ts":"2026-11-22T10:56:00Z","cookie_id":"ck_anon","order_id":"O2","channel":"web","items":[{"product_id":"P4"}]}"#,
    // C3 is erased, with its cookie.
    r#"{"type":"product_view","event_id":"e11","ts":"2026-11-22T10:00:00Z","cookie_id":"ck3","crm_id":"C3","product_id":"P1"}"#,
    r#"{"type":"erase","event_id":"e12","ts":"2026-11-22T10:10:00Z","crm_id":"C3"}"#,
    // An id that needs percent-encoding in a path.
    r#"{"type":"consent","event_id":"e13","ts":"2026-11-22T10:20:00Z","crm_id":"C 5/é","sms":true}"#,
    r#"{"type":"product_view","event_id":"e14","ts":"2026-11-22T11:00:00Z","cookie_id":"ck4","crm_id":"C4","product_id":"P6"}"#,
];

fn pretext() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pretext"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PRETEXT__") {
            c.env_remove(k);
        }
    }
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the pretext binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Replays `EVENTS` into a state directory under `dir`.
fn replayed_state(dir: &Path) -> PathBuf {
    replayed(dir, EVENTS)
}

/// Replays `events` into a state directory under `dir`.
fn replayed(dir: &Path, events: &[impl AsRef<str>]) -> PathBuf {
    let lines: Vec<&str> = events.iter().map(AsRef::as_ref).collect();
    let input = dir.join("events.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let state = dir.join("state");
    let o = run(pretext()
        .args(["replay", "--output", "-", "--state-dir"])
        .arg(&state)
        .arg("--input")
        .arg(&input));
    assert!(o.status.success(), "replay: {}", text(&o.stderr));
    state
}

fn inspect(state: &Path, args: &[&str]) -> Output {
    run(pretext()
        .arg("inspect")
        .arg("--state-dir")
        .arg(state)
        .args(args))
}

fn inspect_json(state: &Path, args: &[&str]) -> Value {
    let o = inspect(state, args);
    assert!(o.status.success(), "inspect {args:?}: {}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn c1() -> Value {
    json!({
        "crm_id": "C1", "group": "treated", "as_of": "2026-11-22T11:00:00Z",
        "channels": ["ads", "email"], "cookie_ids": ["ck9", "ck1"],
        "products": [
            // 3 × 2^(−0.5h/72h) = 2.9856
            {"product_id": "P2", "category": "knitwear", "intent_score": 2.99,
             "view_count": 1, "last_viewed_at": "2026-11-22T10:30:00Z",
             "pending_check_at": "2026-11-22T11:30:00Z"},
            // 2^(−1h/72h) = 0.9904; its check fired at 11:00 = W.
            {"product_id": "P1", "category": "coats", "intent_score": 0.99,
             "view_count": 1, "last_viewed_at": "2026-11-22T10:00:00Z",
             "pending_check_at": null}
        ]
    })
}

#[test]
fn a_limit_keeps_the_highest_scores_when_they_show_alike() {
    // 25 views a minute apart: every score shows 1.0 at W = 10:24, and the
    // newest views score highest (section 3), so they are the ones kept.
    let events: Vec<String> = (0..25)
        .map(|i| {
            format!(
                r#"{{"type":"product_view","event_id":"v{i}","ts":"2026-11-22T10:{i:02}:00Z","cookie_id":"ck7","crm_id":"C7","product_id":"P{i:02}"}}"#
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let state = replayed(dir.path(), &events);
    let answer = inspect_json(&state, &["--customer", "C7", "--limit", "3"]);
    let shown: Vec<(&str, f64)> = answer["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["product_id"].as_str().unwrap(),
                p["intent_score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, vec![("P24", 1.0), ("P23", 1.0), ("P22", 1.0)]);
}

#[test]
fn inspect_answers_as_the_contract_says() {
    let dir = tempfile::tempdir().unwrap();
    let state = replayed_state(dir.path());

    assert_eq!(inspect_json(&state, &["--customer", "C1"]), c1());
    let mut limited = c1();
    limited["products"].as_array_mut().unwrap().truncate(1);
    assert_eq!(
        inspect_json(&state, &["--customer", "C1", "--limit", "1"]),
        limited
    );

    // The purchase at 09:30 came after the only view of P1: score 0, the
    // view still counted; the check of P3 (10:45 + 1 h) pending.
    let c2 = json!({
        "crm_id": "C2", "group": "treated", "as_of": "2026-11-22T11:00:00Z",
        "channels": ["ads"], "cookie_ids": ["ck2"],
        "products": [
            {"product_id": "P3", "category": null, "intent_score": 1.0,
             "view_count": 1, "last_viewed_at": "2026-11-22T10:45:00Z",
             "pending_check_at": "2026-11-22T11:45:00Z"},
            {"product_id": "P1", "category": "coats", "intent_score": 0.0,
             "view_count": 1, "last_viewed_at": "2026-11-22T09:00:00Z",
             "pending_check_at": null}
        ]
    });
    assert_eq!(inspect_json(&state, &["--customer", "C2"]), c2);

    // A linked cookie: its customer's answer plus the cookie.
    let mut ck9 = json!({"cookie_id": "ck9"});
    ck9.as_object_mut()
        .unwrap()
        .extend(c1().as_object().unwrap().clone());
    assert_eq!(inspect_json(&state, &["--cookie", "ck9"]), ck9);

    // An anonymous cookie, scored from its kept events.
    let anon = json!({
        "cookie_id": "ck_anon", "crm_id": null, "as_of": "2026-11-22T11:00:00Z",
        "products": [
            // 3 × 2^(−5min/72h) = 2.9976
            {"product_id": "P5", "category": null, "intent_score": 3.0,
             "view_count": 1, "last_viewed_at": "2026-11-22T10:55:00Z",
             "pending_check_at": null},
            {"product_id": "P4", "category": "shoes", "intent_score": 0.0,
             "view_count": 1, "last_viewed_at": "2026-11-22T10:50:00Z",
             "pending_check_at": null}
        ]
    });
    assert_eq!(inspect_json(&state, &["--cookie", "ck_anon"]), anon);

    // Erased (with its cookie) or never seen: a message, exit 1.
    for args in [
        ["--customer", "C3"],
        ["--cookie", "ck3"],
        ["--customer", "nobody"],
        ["--cookie", "nobody"],
    ] {
        let o = inspect(&state, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(o.stdout.is_empty());
        assert!(
            text(&o.stderr).contains("no state for"),
            "{}",
            text(&o.stderr)
        );
    }
}

#[test]
fn the_group_follows_the_holdout_of_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let state = replayed_state(dir.path());
    let all = dir.path().join("holdout.toml");
    std::fs::write(&all, "[holdout]\npercent = 100\n").unwrap();
    let path = all.to_str().unwrap();
    let c1 = inspect_json(&state, &["--config", path, "--customer", "C1"]);
    assert_eq!(c1["group"], "holdout");
    let ck9 = inspect_json(&state, &["--config", path, "--cookie", "ck9"]);
    assert_eq!(ck9["group"], "holdout");
    // An anonymous cookie has no group.
    let anon = inspect_json(&state, &["--config", path, "--cookie", "ck_anon"]);
    assert!(anon.get("group").is_none());
}

#[test]
fn inspect_rejects_bad_arguments_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let state = replayed_state(dir.path());
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--customer", "C1", "--cookie", "ck1"],
        vec!["--customer", "C1", "--limit", "0"],
        vec!["--customer", "C1", "--limit", "1001"],
        vec!["--customer", "C1", "--limit", "x"],
    ];
    for args in cases {
        let o = inspect(&state, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
    }
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = inspect(&empty, &["--customer", "C1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--state-dir"),
        "{}",
        text(&o.stderr)
    );
}

/// The library's HTTP server, on its own runtime, serving `reader`.
struct Server {
    addr: SocketAddr,
    // Held: dropping it stops the server.
    _runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    fn start(config: &Config, reader: Option<Reader>) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let queries = QueryState::from_config(config);
        if let Some(r) = reader {
            queries.open(r);
        }
        let health = Health {
            metrics: Arc::new(Metrics::new().unwrap()),
            state_open: Arc::new(AtomicBool::new(true)),
            assigned: Arc::new(AtomicBool::new(true)),
            queries,
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(pretext::http::serve(listener, health, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            _runtime: runtime,
            stop: Some(stop),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn config_with_token() -> Config {
    Config::load(
        None,
        [("PRETEXT__HTTP__QUERY_TOKEN".to_string(), TOKEN.to_string())],
    )
    .unwrap()
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A raw HTTP/1.1 request; `auth` is the whole Authorization value.
fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, Some(&format!("Bearer {TOKEN}")))
}

#[test]
fn http_answers_equal_inspect_on_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = replayed_state(dir.path());
    let store = Store::open(&state).unwrap();
    let server = Server::start(&config_with_token(), Some(store.reader()));
    let cases: &[(&str, &[&str])] = &[
        ("/v1/customers/C1", &["--customer", "C1"]),
        (
            "/v1/customers/C1?limit=1",
            &["--customer", "C1", "--limit", "1"],
        ),
        ("/v1/customers/C2?limit=1000", &["--customer", "C2"]),
        ("/v1/cookies/ck9", &["--cookie", "ck9"]),
        (
            "/v1/cookies/ck_anon?other=x&limit=2",
            &["--cookie", "ck_anon"],
        ),
        // Percent-decoded: "C 5/é".
        ("/v1/customers/C%205%2F%C3%A9", &["--customer", "C 5/é"]),
    ];
    drop(store); // the server's reader keeps the state open
    for (path, args) in cases {
        let reply = get(server.addr, path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(reply.json(), inspect_json(&state, args), "{path}");
    }
    let odd = get(server.addr, "/v1/customers/C%205%2F%C3%A9").json();
    assert_eq!(odd["crm_id"], "C 5/é");
    assert_eq!(odd["channels"], json!(["ads", "sms"]));
}

#[test]
fn http_errors_401_400_404_405() {
    let dir = tempfile::tempdir().unwrap();
    let state = replayed_state(dir.path());
    let store = Store::open(&state).unwrap();
    let server = Server::start(&config_with_token(), Some(store.reader()));
    let addr = server.addr;

    // 401, with no detail, whatever is wrong with the credentials; also
    // before a 404 or a 405, so that nothing is learnt without the token.
    let wrong = [
        None,
        Some("Bearer wrong-token-0123456789".to_string()),
        Some(TOKEN.to_string()),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer {TOKEN}x")),
    ];
    for auth in &wrong {
        for (method, path) in [
            ("GET", "/v1/customers/C1"),
            ("GET", "/v1/cookies/nobody"),
            ("DELETE", "/v1/customers/C1"),
        ] {
            let r = request(addr, method, path, auth.as_deref());
            assert_eq!(r.status, 401, "{method} {path} {auth:?}");
            assert_eq!(r.json(), json!({"error": "unauthorized"}));
            assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
            assert!(!r.head.contains(TOKEN) && !r.body.contains(TOKEN));
        }
    }
    // The scheme is case-insensitive.
    let r = request(
        addr,
        "GET",
        "/v1/customers/C1",
        Some(&format!("bearer {TOKEN}")),
    );
    assert_eq!(r.status, 200);

    for limit in ["0", "1001", "", "ten", "-1", "1.5", "20&limit=20"] {
        let r = get(addr, &format!("/v1/customers/C1?limit={limit}"));
        assert_eq!(r.status, 400, "limit={limit}");
        assert!(r.json()["error"].as_str().unwrap().contains("limit"));
    }
    let r = get(addr, "/v1/customers/%FF");
    assert_eq!(r.status, 400, "not UTF-8 once decoded");

    for path in [
        "/v1/customers/C3",
        "/v1/cookies/ck3",
        "/v1/customers/nobody",
        "/v1/cookies/nobody",
        "/v1/customers/",
        "/v1/elsewhere",
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 404, "{path}");
        assert!(r.json()["error"].is_string());
    }

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = request(
            addr,
            method,
            "/v1/cookies/ck9",
            Some(&format!("Bearer {TOKEN}")),
        );
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
        assert!(r.json()["error"].is_string());
    }

    // The probes stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(request(addr, "GET", path, None).status, 200, "{path}");
    }
    drop(store);
}

#[test]
fn without_a_token_there_are_no_query_routes() {
    let dir = tempfile::tempdir().unwrap();
    let state = replayed_state(dir.path());
    let store = Store::open(&state).unwrap();
    let server = Server::start(&Config::default(), Some(store.reader()));
    let r = request(
        server.addr,
        "GET",
        "/v1/customers/C1",
        Some(&format!("Bearer {TOKEN}")),
    );
    assert_eq!(r.status, 404);
    assert_eq!(request(server.addr, "GET", "/healthz", None).status, 200);
}

#[test]
fn before_the_state_is_open_queries_answer_503() {
    let server = Server::start(&config_with_token(), None);
    let r = get(server.addr, "/v1/customers/C1");
    assert_eq!(r.status, 503);
    assert!(r.json()["error"].is_string());
}

/// W = the highest event time, so that a view counts as soon as it is applied.
const NO_LATENESS: &str = "[watermark]\nallowed_lateness = \"0s\"\n";

fn no_lateness(dir: &Path) -> (PathBuf, Config) {
    let path = dir.join("no-lateness.toml");
    std::fs::write(&path, NO_LATENESS).unwrap();
    let config = Config::load(Some(&path), Vec::new()).unwrap();
    (path, config)
}

fn event(id: &str, ts: i64, crm: &str, product: &str) -> pretext::event::Event {
    let line = format!(
        r#"{{"type":"product_view","event_id":"{id}","ts":{ts},"cookie_id":"ck-{crm}","crm_id":"{crm}","product_id":"{product}"}}"#
    );
    pretext::decode::decode(line.as_bytes(), 1 << 20).unwrap()
}

/// A reader beside a writing engine sees each commit whole and nothing
/// uncommitted: the views applied in a batch appear together, at commit.
#[test]
fn a_reader_sees_committed_batches_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_, config) = no_lateness(dir.path());
    let mut engine = Engine::open(&dir.path().join("state"), &config).unwrap();
    let reader = engine.store().reader();
    let queries = Queries::from_config(&config);
    let c = Subject::Customer("C1".into());
    let count = |r: &Reader| {
        queries
            .answer(&r.snapshot(), &c, 1000)
            .unwrap()
            .map_or(0, |a| a.products.len())
    };
    let mut sink = pretext::engine::Outputs::default();
    let t0 = 1_795_000_000_000;
    for batch in 0..5 {
        for i in 0..10 {
            let n = batch * 10 + i;
            let e = event(&format!("e{n}"), t0 + n, "C1", &format!("P{n}"));
            engine.apply(&e, &mut sink).unwrap();
            assert_eq!(
                count(&reader),
                batch as usize * 10,
                "uncommitted writes are unseen"
            );
        }
        let before = reader.snapshot();
        engine.commit(&[]).unwrap();
        assert_eq!(count(&reader), (batch as usize + 1) * 10);
        // A snapshot taken before the commit still shows the state before it.
        let old = queries.answer(&before, &c, 1000).unwrap();
        assert_eq!(old.map_or(0, |a| a.products.len()), batch as usize * 10);
    }
}

/// The state of a running writer can be inspected: a secondary reader of
/// the same directory while the engine holds it open, seeing its commits.
#[test]
fn inspect_reads_the_state_of_a_running_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (config_file, config) = no_lateness(dir.path());
    let state = dir.path().join("state");
    let mut engine = Engine::open(&state, &config).unwrap();
    let config_arg = config_file.to_str().unwrap();
    let mut sink = pretext::engine::Outputs::default();
    let t0 = 1_795_000_000_000;
    engine
        .apply(&event("a", t0, "C7", "P1"), &mut sink)
        .unwrap();
    engine.commit(&[]).unwrap();
    engine
        .apply(&event("b", t0 + 1, "C7", "P2"), &mut sink)
        .unwrap();
    // P2 is not committed: inspect shows P1 only.
    let answer = inspect_json(&state, &["--config", config_arg, "--customer", "C7"]);
    let products: Vec<&str> = answer["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product_id"].as_str().unwrap())
        .collect();
    assert_eq!(products, vec!["P1"]);
    engine.commit(&[]).unwrap();
    let answer = inspect_json(&state, &["--config", config_arg, "--customer", "C7"]);
    assert_eq!(answer["products"].as_array().unwrap().len(), 2);
    // The writer was not disturbed: it goes on committing.
    engine
        .apply(&event("c", t0 + 2, "C7", "P3"), &mut sink)
        .unwrap();
    engine.commit(&[]).unwrap();
}

/// Live mode: `pretext run` on a real broker answers the queries over HTTP
/// as a replay's state does, and `pretext inspect` reads the state the
/// running process holds, with the same answers.
#[test]
fn live_mode_serves_the_queries_and_inspect_reads_its_running_state() {
    let b = broker::Broker::start();
    let topics = broker::Topics::create(&b);
    let dir = tempfile::tempdir().unwrap();
    let group = broker::unique("query");
    let (config, state) = broker::write_config(dir.path(), &b.addr, &topics, &group);
    let mut env = broker::EXACT.to_vec();
    env.push(("PRETEXT__HTTP__QUERY_TOKEN", TOKEN));
    // The holdout and conversions topics of the defaults.
    env.push(("PRETEXT__TOPICS__CREATE", "true"));
    let log = dir.path().join("pretext.log");
    let p = broker::Pretext::start_with_env(&config, &state, &log, &env);
    p.wait_ready();
    let messages: Vec<(Option<&str>, &[u8])> =
        EVENTS.iter().map(|l| (None, l.as_bytes())).collect();
    b.produce(&topics.input, &messages);
    broker::wait_for("every event applied", Duration::from_secs(60), || {
        let m = p.metrics()?;
        (broker::metric_sum(&m, "pretext_events_total") as usize == EVENTS.len()).then_some(())
    });
    let addr: SocketAddr = p.http.parse().unwrap();
    // With no lateness W = 11:00, the highest event time, as in the replay.
    assert_eq!(get(addr, "/v1/customers/C1").json(), c1());
    assert_eq!(get(addr, "/v1/customers/C3").status, 404);
    assert_eq!(request(addr, "GET", "/v1/customers/C1", None).status, 401);
    let inspect_live = |args: &[&str]| {
        let o = run(pretext()
            .envs(broker::EXACT)
            .arg("inspect")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(args));
        assert!(o.status.success(), "inspect {args:?}: {}", text(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    for (path, args) in [
        ("/v1/customers/C2", ["--customer", "C2"]),
        ("/v1/cookies/ck9", ["--cookie", "ck9"]),
        ("/v1/cookies/ck_anon", ["--cookie", "ck_anon"]),
    ] {
        assert_eq!(get(addr, path).json(), inspect_live(&args), "{path}");
    }
    assert_eq!(inspect_live(&["--customer", "C1"]), c1());
    let status = p.terminate();
    assert!(
        status.success(),
        "pretext run exits cleanly after inspect: {status}"
    );
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// schemathesis (installed by scripts/install-schemathesis.sh) against the
/// real server with docs/openapi.yaml: every check, the spec's examples
/// (ids of this state) and generated requests, with and without the token.
#[test]
fn schemathesis_finds_the_server_true_to_its_openapi_document() {
    let install = run(Command::new("bash").arg(repo("scripts/install-schemathesis.sh")));
    assert!(
        install.status.success(),
        "installing schemathesis failed: {}",
        text(&install.stderr)
    );
    let st = text(&install.stdout).trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = replayed_state(dir.path());
    let store = Store::open(&state).unwrap();
    let server = Server::start(&config_with_token(), Some(store.reader()));
    let o = run(Command::new(&st)
        .arg("run")
        .arg(repo("docs/openapi.yaml"))
        .arg(format!("--url=http://{}", server.addr))
        .arg(format!("--header=Authorization: Bearer {TOKEN}"))
        .args(["--checks=all", "--max-examples=60", "--seed=1"])
        .args(["--mode=all", "--no-color", "--generation-database=none"])
        .current_dir(dir.path()));
    let out = format!("{}\n{}", text(&o.stdout), text(&o.stderr));
    eprintln!("{out}");
    assert!(o.status.success(), "schemathesis failed:\n{out}");
    assert!(out.contains("No issues found"), "{out}");
    drop(store);
}
