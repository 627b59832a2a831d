//! The command line as users run it: the built `pretext` binary, real files.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

fn pretext() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pretext"));
    // Keep the developer's environment from leaking config into the tests.
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn lines(text: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(text)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

const VIEW: &str = r#"{"type":"product_view","event_id":"v1","ts":"2026-11-22T10:00:00Z","cookie_id":"ck1","crm_id":"C1","product_id":"P1"}"#;
const VIEW2: &str = r#"{"type":"product_view","event_id":"v2","ts":"2026-11-22T10:00:00Z","cookie_id":"ck2","crm_id":"C2","product_id":"P1"}"#;

#[test]
fn replay_without_input_replays_the_bundled_sample() {
    let o = run(pretext().args(["replay", "--flush"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let triggers = lines(&o.stdout);
    assert!(triggers.len() > 10, "the sample yields triggers");
    let err = stderr(&o);
    assert!(err.contains("triggers: viewed_not_bought"), "{err}");
    assert!(err.contains("applied"), "{err}");
}

#[test]
fn every_rejection_reason_is_dead_lettered_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    let big = format!(
        r#"{{"type":"product_view","event_id":"big","ts":0,"cookie_id":"c","product_id":"{}"}}"#,
        "x".repeat(300)
    );
    let cases: Vec<(&[u8], &str)> = vec![
        (VIEW.as_bytes(), ""),
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"{\"type\":\"identify\",\"event_id\":\"\xff\xfe\"}", "invalid_utf8"),
        (big.as_bytes(), "too_large"),
        (br#"{"type":"product_view","event_id":"a","ts":0,"cookie_id":"c"}"#, "missing_field"),
        (br#"{"type":"product_view","event_id":"a","ts":0,"cookie_id":"c","product_id":"p","price":"9"}"#, "wrong_type"),
        (br#"{"type":"page_view","event_id":"a","ts":0}"#, "unknown_type"),
        (br#"{"type":"erase","event_id":"a","ts":"2026-11-22T10:00:00","crm_id":"C"}"#, "bad_ts"),
        (br#"{"type":"purchase","event_id":"a","ts":0,"order_id":"o","channel":"phone","crm_id":"C","items":[{"product_id":"p"}]}"#, "invalid_value"),
        (VIEW2.as_bytes(), ""),
    ];
    let mut bytes = Vec::new();
    for (line, _) in &cases {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    write(&input, &bytes);
    let dead = dir.path().join("dead.jsonl");
    let o = run(pretext()
        .env("PRETEXT__INPUT__MAX_MESSAGE_BYTES", "256")
        .args(["replay", "--flush", "--input"])
        .arg(&input)
        .arg("--dead-letter")
        .arg(&dead));
    assert!(o.status.success(), "{}", stderr(&o));
    let letters = lines(&std::fs::read(&dead).unwrap());
    let expected: Vec<(usize, &str)> = cases
        .iter()
        .enumerate()
        .filter(|(_, (_, r))| !r.is_empty())
        .map(|(i, (_, r))| (i + 1, *r))
        .collect();
    assert_eq!(
        letters.len(),
        expected.len(),
        "one dead letter per bad line, none for the final newline"
    );
    for (letter, (line_no, reason)) in letters.iter().zip(&expected) {
        assert_eq!(letter["reason"], *reason, "{letter}");
        assert_eq!(letter["topic"], input.display().to_string());
        assert_eq!(letter["partition"], 0);
        assert_eq!(letter["offset"], *line_no as i64);
        assert!(!letter["error"].as_str().unwrap().is_empty());
        let original = cases[line_no - 1].0;
        match std::str::from_utf8(original) {
            Ok(text) => assert_eq!(letter["payload"], text),
            Err(_) => {
                assert!(letter.get("payload").is_none_or(|p| p.is_null()));
                assert!(letter["payload_b64"].is_string());
            }
        }
    }
    // The good lines around the bad ones were applied.
    let triggers = lines(&o.stdout);
    let crms: Vec<&Value> = triggers.iter().map(|t| &t["crm_id"]).collect();
    assert_eq!(crms, vec![&json!("C1"), &json!("C2")]);
    assert!(stderr(&o).contains("9 rejected"), "{}", stderr(&o));
}

#[test]
fn a_last_line_without_newline_is_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write(&input, format!("{VIEW}\n{VIEW2}").as_bytes());
    let o = run(pretext().args(["replay", "--flush", "--input"]).arg(&input));
    assert!(o.status.success());
    assert_eq!(lines(&o.stdout).len(), 2);
}

#[test]
fn gzip_and_plain_inputs_replay_alike_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("a.jsonl");
    write(&plain, format!("{VIEW}\n").as_bytes());
    let gz = dir.path().join("b.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(format!("{VIEW2}\n").as_bytes()).unwrap();
    write(&gz, &enc.finish().unwrap());
    let out = dir.path().join("out.jsonl");
    let o = run(pretext()
        .args(["replay", "--flush", "--input"])
        .arg(&plain)
        .arg(&gz)
        .arg("--output")
        .arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "--output FILE keeps stdout clean");
    let triggers = lines(&std::fs::read(&out).unwrap());
    assert_eq!(triggers.len(), 2);
}

#[test]
fn a_state_dir_persists_between_replays() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write(&input, format!("{VIEW}\n").as_bytes());
    let state = dir.path().join("state");
    let first = run(pretext()
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--state-dir")
        .arg(&state));
    assert!(first.status.success(), "{}", stderr(&first));
    let second = run(pretext()
        .args(["replay", "--flush", "--input"])
        .arg(&input)
        .arg("--state-dir")
        .arg(&state));
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("1 duplicate"),
        "{}",
        stderr(&second)
    );
    // The first replay's pending check survived and fires on flush.
    assert_eq!(lines(&second.stdout).len(), 1);
}

#[test]
fn an_unknown_config_key_exits_2_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    write(&cfg, b"[scoring]\nhalf_lief = \"1h\"\n");
    let o = run(pretext().args(["replay", "--config"]).arg(&cfg));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("scoring.half_lief"), "{}", stderr(&o));
}

#[test]
fn a_bad_config_value_exits_2_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    write(&cfg, b"[triggers.viewed_not_bought]\ndelay = \"soon\"\n");
    let o = run(pretext().args(["replay", "--config"]).arg(&cfg));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("triggers.viewed_not_bought.delay"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_bad_environment_override_exits_2_and_names_the_key() {
    let o = run(pretext()
        .env("PRETEXT__SCORING__HALF_LIFE", "3x")
        .args(["replay"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("scoring.half_life"), "{}", stderr(&o));
}

#[test]
fn an_unknown_flag_exits_2_and_names_it() {
    let o = run(pretext().args(["replay", "--flsuh"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--flsuh"), "{}", stderr(&o));
}

#[test]
fn partitions_out_of_range_exit_2_and_name_the_flag() {
    for bad in ["0", "4097", "two"] {
        let o = run(pretext().args(["replay", "--partitions", bad]));
        assert_eq!(o.status.code(), Some(2), "--partitions {bad}");
        assert!(stderr(&o).contains("--partitions"), "{}", stderr(&o));
    }
}

/// The bundled sample split in 3 partitions: the same trigger ids and the
/// same counts (on this sample no event falls between a check and a
/// partition's clock), each partition's state in its own directory.
#[test]
fn a_partitioned_replay_of_the_sample_fires_the_same_triggers() {
    let dir = tempfile::tempdir().unwrap();
    let one = run(pretext().args(["replay", "--flush"]));
    let state = dir.path().join("state");
    let split = run(pretext()
        .args(["replay", "--flush", "--partitions", "3", "--state-dir"])
        .arg(&state));
    assert!(split.status.success(), "{}", stderr(&split));
    let ids = |o: &Output| {
        let mut ids: Vec<String> = lines(&o.stdout)
            .iter()
            .map(|t| t["trigger_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert!(!ids(&one).is_empty());
    assert_eq!(ids(&one), ids(&split));
    let counts = |o: &Output| {
        stderr(o)
            .lines()
            .filter(|l| !l.contains("/s"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(counts(&one), counts(&split));
    for dir in ["identity-0", "identity-2", "customer-0", "customer-2"] {
        assert!(state.join(dir).is_dir(), "{dir}");
    }
}

#[test]
fn a_missing_input_file_exits_1_and_names_it() {
    let o = run(pretext().args(["replay", "--input", "/nonexistent/events.jsonl"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/events.jsonl"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_same_log_replayed_twice_by_the_binary_is_byte_identical() {
    let a = run(pretext().args(["replay", "--flush"]));
    let b = run(pretext().args(["replay", "--flush"]));
    assert!(a.status.success() && b.status.success());
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn piped_stderr_gets_plain_summary_lines_with_the_rate_and_quiet_drops_the_rate() {
    let o = run(pretext().args(["replay", "--flush", "--output", "/dev/null"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    let rate = err
        .lines()
        .find(|l| l.starts_with("time: "))
        .expect("a rate line");
    assert!(rate.ends_with(" events/s"), "{rate}");
    for line in [
        "suppressed: purchased ",
        "conversions: viewed_not_bought (treated ",
    ] {
        assert!(err.contains(line), "{line} missing from {err}");
    }
    let o = run(pretext().args(["replay", "--flush", "--quiet", "--output", "/dev/null"]));
    assert!(o.status.success());
    assert!(!stderr(&o).contains("time: "), "{}", stderr(&o));
}

#[test]
fn holdout_triggers_and_conversions_go_to_their_files_or_are_only_counted() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // C100 is in a 10% holdout under the default salt (hash mod 10000 = 994).
    let events = [
        r#"{"type":"product_view","event_id":"v1","ts":"2026-11-22T10:00:00Z","cookie_id":"ck1","crm_id":"C100","product_id":"P1"}"#,
        r#"{"type":"product_view","event_id":"v2","ts":"2026-11-22T10:00:00Z","cookie_id":"ck2","crm_id":"C1","product_id":"P1"}"#,
        r#"{"type":"product_view","event_id":"v3","ts":"2026-11-22T12:00:00Z","cookie_id":"ck3","crm_id":"C3","product_id":"P3"}"#,
        r#"{"type":"purchase","event_id":"b1","ts":"2026-11-22T13:00:00Z","order_id":"O1","channel":"store","crm_id":"C100","items":[{"product_id":"P1"}]}"#,
    ];
    write(&input, (events.join("\n") + "\n").as_bytes());
    let config = dir.path().join("c.toml");
    write(&config, b"[holdout]\npercent = 10\n");
    let (hold, conv) = (dir.path().join("h.jsonl"), dir.path().join("c.jsonl"));
    let o = run(pretext()
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--config")
        .arg(&config)
        .arg("--holdout")
        .arg(&hold)
        .arg("--conversions")
        .arg(&conv));
    assert!(o.status.success(), "{}", stderr(&o));
    let treated = lines(&o.stdout);
    let held = lines(&std::fs::read(&hold).unwrap());
    let converted = lines(&std::fs::read(&conv).unwrap());
    assert!(treated
        .iter()
        .all(|t| t["group"] == "treated" && t["crm_id"] != "C100"));
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0]["crm_id"].as_str(), held[0]["group"].as_str()),
        (Some("C100"), Some("holdout"))
    );
    assert_eq!(converted.len(), 1);
    assert_eq!(converted[0]["trigger_id"], held[0]["trigger_id"]);
    assert_eq!(converted[0]["order_id"], "O1");
    // Without the flags: the same stdout, the others only counted.
    let o2 = run(pretext()
        .args(["replay", "--input"])
        .arg(&input)
        .arg("--config")
        .arg(&config));
    assert_eq!(o2.stdout, o.stdout);
    assert!(
        stderr(&o2).contains("conversions: viewed_not_bought (treated 0, holdout 1)"),
        "{}",
        stderr(&o2)
    );
}

/// Triggers, holdout triggers and conversions are written on a thread of
/// their own: a write that fails still ends the replay with an error that
/// names the output, never a silent success.
#[test]
fn an_output_that_cannot_be_written_fails_the_replay_and_names_it() {
    if !Path::new("/dev/full").exists() {
        panic!("this test needs /dev/full (Linux)");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("holdout.toml");
    // Every customer held out: the bundled sample's triggers all go to
    // the holdout output.
    write(&config, b"[holdout]\npercent = 100\n");
    let mut to_output = pretext();
    to_output.args(["replay", "--flush", "--quiet", "--output", "/dev/full"]);
    let mut to_holdout = pretext();
    to_holdout
        .args(["replay", "--flush", "--quiet", "--config"])
        .arg(&config)
        .args(["--holdout", "/dev/full"]);
    for cmd in [&mut to_output, &mut to_holdout] {
        let o = run(cmd);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("cannot write /dev/full"), "{err}");
    }
}

/// `pretext gen` events in `dir`.
fn generated(dir: &Path, events: u32) -> std::path::PathBuf {
    let input = dir.join("events.jsonl");
    let o = run(pretext()
        .args([
            "gen",
            "--events",
            &events.to_string(),
            "--seed",
            "7",
            "--output",
        ])
        .arg(&input));
    assert!(o.status.success(), "{}", stderr(&o));
    input
}

/// Starts `cmd`, sends it SIGTERM once `ready` holds, and returns what it
/// printed; it must say it was interrupted and exit 1.
fn interrupted(cmd: &mut Command, ready: impl Fn() -> bool) -> Output {
    let child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while !ready() {
        assert!(started.elapsed().as_secs() < 60, "never ready to interrupt");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kill = run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    assert!(kill.status.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("interrupted by a signal"),
        "{}",
        stderr(&o)
    );
    o
}

#[test]
fn a_replay_stopped_by_sigterm_removes_its_temporary_state_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let input = generated(dir.path(), 500_000);
    // The temporary state goes where TMPDIR says: a directory of its own.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut replay = pretext();
    replay
        .env("TMPDIR", &tmp)
        .args(["replay", "--quiet", "--output", "/dev/null"])
        .args(["--dead-letter", "/dev/null", "--input"])
        .arg(&input);
    interrupted(&mut replay, || {
        std::fs::read_dir(&tmp).unwrap().next().is_some()
    });
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "temporary state left behind: {left:?}");
}

#[test]
fn an_interrupted_replay_into_a_state_dir_resumes_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let input = generated(dir.path(), 500_000);
    let replay = |state: &str, output: &str| {
        let mut cmd = pretext();
        cmd.args(["replay", "--quiet", "--dead-letter", "/dev/null", "--input"])
            .arg(&input)
            .arg("--state-dir")
            .arg(dir.path().join(state))
            .arg("--output")
            .arg(dir.path().join(output));
        cmd
    };
    let whole = run(&mut replay("whole", "whole.jsonl"));
    assert!(whole.status.success(), "{}", stderr(&whole));
    // Stopped half way (the whole output is ~19 MB), past the first commit
    // (at ~107,000 events: where its 16 MiB of changes fall, not a time),
    // then run again.
    let first = dir.path().join("first.jsonl");
    let size = || std::fs::metadata(&first).map_or(0, |m| m.len());
    interrupted(&mut replay("state", "first.jsonl"), || size() > 10 << 20);
    let again = run(&mut replay("state", "again.jsonl"));
    assert!(again.status.success(), "{}", stderr(&again));
    let duplicates = |o: &Output| -> u64 {
        let err = stderr(o);
        let (before, _) = err.split_once(" duplicate").expect("a summary");
        before.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        duplicates(&again) > duplicates(&whole) + 100_000,
        "the committed events are skipped: {}",
        stderr(&again)
    );

    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let (whole, first, again) = (
        read("whole.jsonl"),
        read("first.jsonl"),
        read("again.jsonl"),
    );
    // The rerun skips what the stopped one committed, as duplicates, and
    // fires from there exactly what the whole replay fired.
    assert!(!again.is_empty() && whole.ends_with(&again));
    // Together they hold every trigger of the whole replay: what the
    // stopped run fired after its last commit twice, with the same ids.
    let ids = |text: &str| -> std::collections::BTreeSet<String> {
        lines(text.as_bytes())
            .iter()
            .map(|t| t["trigger_id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut both = ids(&first);
    both.extend(ids(&again));
    assert_eq!(both, ids(&whole));
}

#[test]
fn a_closed_stderr_or_stdout_gives_an_exit_status_not_a_panic() {
    use std::process::Stdio;
    // The reading end of each pipe is closed at once: every write gets EPIPE.
    let mut replay = pretext()
        .args(["replay", "--flush", "--output", "/dev/null"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(replay.stderr.take());
    assert_eq!(
        replay.wait().unwrap().code(),
        Some(0),
        "the summary has nowhere to go"
    );

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write(&input, VIEW.as_bytes());
    let state = dir.path().join("state");
    let o = run(pretext()
        .args(["replay", "--output", "/dev/null", "--input"])
        .arg(&input)
        .arg("--state-dir")
        .arg(&state));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut inspect = pretext()
        .args(["inspect", "--customer", "C1", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(inspect.stdout.take());
    let o = inspect.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot write stdout"), "{}", stderr(&o));
}
