//! The live pipeline in process, with no broker: a real engine on a real
//! RocksDB in a temporary directory, a scripted batch source, a recording
//! output and a clock the test moves. What Kafka adds on top (rebalance
//! callbacks, the producer) is tested end to end in tests/live_e2e.rs.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pretext::config::{Config, Dur};
use pretext::engine::{Engine, SourceOffset};
use pretext::event::Millis;
use pretext::http::Health;
use pretext::live::offsets::Offsets;
use pretext::live::pipeline::{Acknowledgement, BatchSource, Clock, Output, Pipeline, Stop};
use pretext::live::txn::{GroupMetadata, GroupPosition, TxnOffset};
use pretext::live::{InputMessage, LiveError};
use pretext::metrics::Metrics;
use serde_json::{json, Value};

const HOUR: i64 = 3_600_000;
const MIN: i64 = 60_000;
/// 2026-11-22T10:00:00Z
const T0: i64 = 1_795_341_600_000;
const TOPIC: &str = "in";

/// What the fakes saw, in the order they saw it.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Sent {
        topic: String,
        payload: Value,
    },
    Flushed,
    Committed(Vec<SourceOffset>),
    HandedOver(Vec<SourceOffset>),
    /// Exactly-once: a transaction opened.
    Begun,
    /// Exactly-once: what was sent since `Begun` and these offsets became
    /// visible together.
    TxnCommitted(Vec<TxnOffset>),
    /// Exactly-once: what was sent since `Begun` was dropped.
    Aborted,
    Rewound(Vec<SourceOffset>),
}

/// Shared with the acknowledgements, which are waited for on the state
/// writer's thread.
type Log = Arc<Mutex<Vec<Seen>>>;

#[derive(Clone)]
struct FakeClock {
    /// Monotonic and wall time; the source, which advances them, may be
    /// polled on a second thread.
    now: Arc<Mutex<(Duration, Millis)>>,
}

impl FakeClock {
    fn at(wall: Millis) -> FakeClock {
        FakeClock {
            now: Arc::new(Mutex::new((Duration::ZERO, wall))),
        }
    }

    fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap();
        now.0 += d;
        now.1 += d.as_millis() as Millis;
    }
}

impl Clock for FakeClock {
    fn mono(&self) -> Duration {
        self.now.lock().unwrap().0
    }

    fn wall_ms(&self) -> Millis {
        self.now.lock().unwrap().1
    }
}

/// One call of `next_batch`.
enum Step {
    Batch(Vec<InputMessage>),
    /// A batch during which these partitions were revoked.
    Revoke(Vec<InputMessage>, Vec<i32>),
    /// A batch during which SIGTERM arrived.
    StopDuring(Vec<InputMessage>),
    /// A batch during which the shutdown deadline passed.
    AbandonDuring(Vec<InputMessage>),
    /// Nothing arrives for this long.
    Quiet(Duration),
}

struct FakeSource {
    steps: VecDeque<Step>,
    clock: FakeClock,
    log: Log,
    pending_revoke: Vec<i32>,
    assigned: bool,
    /// Handed out on the first call of `take_group_positions`.
    positions: Vec<GroupPosition>,
    /// Whether the pipeline may poll the next batch while it applies one
    /// (as the Kafka source does at least once).
    ahead: bool,
}

impl BatchSource for FakeSource {
    fn next_batch(
        &mut self,
        _max: usize,
        max_wait: Duration,
        stop: &Stop,
    ) -> Result<Vec<InputMessage>, LiveError> {
        let Some(step) = self.steps.pop_front() else {
            stop.request();
            return Ok(Vec::new());
        };
        Ok(match step {
            Step::Batch(b) => b,
            Step::Revoke(b, partitions) => {
                self.pending_revoke = partitions;
                b
            }
            Step::StopDuring(b) => {
                stop.request();
                b
            }
            Step::AbandonDuring(b) => {
                stop.abandon();
                b
            }
            Step::Quiet(d) => {
                // One empty poll per second of quiet, as the pipeline sees
                // a consumer with nothing to hand out.
                let step = d.min(max_wait.max(Duration::from_secs(1)));
                self.clock.advance(step);
                if d > step {
                    self.steps.push_front(Step::Quiet(d - step));
                }
                Vec::new()
            }
        })
    }

    fn is_assigned(&self) -> bool {
        self.assigned
    }

    fn committed(&mut self, offsets: &[SourceOffset]) {
        if !offsets.is_empty() {
            self.log
                .lock()
                .unwrap()
                .push(Seen::Committed(offsets.to_vec()));
        }
    }

    fn revoke_pending(&self) -> bool {
        !self.pending_revoke.is_empty()
    }

    fn finish_revoke(&mut self, offsets: &Offsets) {
        if self.pending_revoke.is_empty() {
            return;
        }
        let parts: Vec<(&str, i32)> = self.pending_revoke.iter().map(|&p| (TOPIC, p)).collect();
        self.log
            .lock()
            .unwrap()
            .push(Seen::HandedOver(offsets.of(parts)));
        self.pending_revoke.clear();
    }

    fn take_group_positions(&mut self) -> Vec<GroupPosition> {
        std::mem::take(&mut self.positions)
    }

    fn group_metadata(&self) -> Option<GroupMetadata> {
        None
    }

    fn assignment(&self) -> Vec<(String, i32)> {
        if self.assigned {
            vec![(TOPIC.to_string(), 0), (TOPIC.to_string(), 1)]
        } else {
            Vec::new()
        }
    }

    fn rewind(&mut self, to: &[SourceOffset]) -> Result<(), LiveError> {
        self.log.lock().unwrap().push(Seen::Rewound(to.to_vec()));
        Ok(())
    }

    fn polls_ahead(&self) -> bool {
        self.ahead
    }
}

struct RecordingOutput {
    log: Log,
    queued: Vec<Seen>,
    fail_flush: bool,
}

impl Output for RecordingOutput {
    fn send(&mut self, topic: &str, key: Option<&[u8]>, payload: &[u8]) -> Result<(), LiveError> {
        let payload: Value = serde_json::from_slice(payload).unwrap();
        if topic != "dead" {
            assert_eq!(key, payload["crm_id"].as_str().map(str::as_bytes));
        }
        self.queued.push(Seen::Sent {
            topic: topic.into(),
            payload,
        });
        Ok(())
    }

    fn seal(&mut self) -> Box<dyn Acknowledgement> {
        Box::new(RecordedAck {
            log: self.log.clone(),
            sent: std::mem::take(&mut self.queued),
            fail: self.fail_flush,
        })
    }

    fn begin(&mut self) -> Result<(), LiveError> {
        assert!(
            self.queued.is_empty(),
            "nothing is sent between transactions"
        );
        self.log.lock().unwrap().push(Seen::Begun);
        Ok(())
    }

    /// `fail_flush` fails the commit as a failed delivery does: aborted.
    fn commit_txn(
        &mut self,
        offsets: &[TxnOffset],
        _group: Option<&GroupMetadata>,
    ) -> Result<(), LiveError> {
        if self.fail_flush {
            self.abort_txn();
            return Err(LiveError::TxnAborted {
                what: "commit the transaction",
                source: rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed,
                ),
            });
        }
        let mut log = self.log.lock().unwrap();
        log.append(&mut self.queued);
        log.push(Seen::TxnCommitted(offsets.to_vec()));
        Ok(())
    }

    fn abort_txn(&mut self) {
        self.queued.clear();
        self.log.lock().unwrap().push(Seen::Aborted);
    }
}

/// A sealed batch: logged as sent and flushed once waited for, or failed.
struct RecordedAck {
    log: Log,
    sent: Vec<Seen>,
    fail: bool,
}

impl Acknowledgement for RecordedAck {
    fn wait(mut self: Box<Self>) -> Result<(), LiveError> {
        if self.fail {
            let failed = self.sent.len() as u64;
            return Err(LiveError::Delivery { failed });
        }
        let mut log = self.log.lock().unwrap();
        log.append(&mut self.sent);
        log.push(Seen::Flushed);
        Ok(())
    }
}

struct Harness {
    config: Config,
    clock: FakeClock,
    log: Log,
    metrics: Arc<Metrics>,
    /// The source lets the next batch be polled during an apply.
    polls_ahead: bool,
}

impl Harness {
    fn new(dir: &Path, wall: Millis) -> Harness {
        let mut config = Config::default();
        config.state.dir = dir.to_path_buf();
        config.topics.inputs = vec![TOPIC.into()];
        config.topics.triggers = "triggers".into();
        config.topics.dead_letter = "dead".into();
        config.topics.holdout = "holdout".into();
        config.topics.conversions = "conversions".into();
        config.watermark.idle_timeout = Dur::secs(10);
        // Every batch stored: the tests below follow each one.
        config.kafka.commit_interval = Dur(0);
        Harness {
            config,
            clock: FakeClock::at(wall),
            log: Arc::new(Mutex::new(Vec::new())),
            metrics: Arc::new(Metrics::new().unwrap()),
            polls_ahead: false,
        }
    }

    /// Runs the pipeline on a state opened from the directory, through
    /// `steps`; then stops (the source requests it once out of steps).
    fn run(&self, steps: Vec<Step>, fail_flush: bool) -> (Result<(), LiveError>, Engine) {
        self.run_with(steps, Vec::new(), fail_flush)
    }

    /// As `run`, the source handing out the group's `positions` first.
    fn run_with(
        &self,
        steps: Vec<Step>,
        positions: Vec<GroupPosition>,
        fail_flush: bool,
    ) -> (Result<(), LiveError>, Engine) {
        let engine = Engine::open(&self.config.state.dir, &self.config).unwrap();
        let offsets = Offsets::from_stored(engine.stored_offsets().unwrap());
        let source = FakeSource {
            steps: steps.into(),
            clock: self.clock.clone(),
            log: self.log.clone(),
            pending_revoke: Vec::new(),
            assigned: true,
            positions,
            ahead: self.polls_ahead,
        };
        let output = RecordingOutput {
            log: self.log.clone(),
            queued: Vec::new(),
            fail_flush,
        };
        let health = Health {
            metrics: self.metrics.clone(),
            state_open: Arc::new(AtomicBool::new(false)),
            assigned: Arc::new(AtomicBool::new(true)),
            queries: pretext::http::query::QueryState::from_config(&self.config),
        };
        let mut p = Pipeline::new(
            self.config.clone(),
            engine,
            offsets,
            source,
            output,
            self.clock.clone(),
            health,
        );
        let result = p.run(&Stop::default());
        let (engine, _, _) = p.into_parts();
        (result, engine)
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    fn reopen(&self) -> Engine {
        Engine::open(&self.config.state.dir, &self.config).unwrap()
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        let text = self.metrics.render();
        let line = text.lines().find(|l| l.starts_with(&format!("{name} ")))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn counter(&self, name: &str) -> f64 {
        self.gauge(name).unwrap_or(f64::NAN)
    }
}

fn view(id: &str, crm: &str, product: &str, ts: i64) -> Value {
    json!({"type": "product_view", "event_id": id, "ts": ts,
           "cookie_id": format!("ck-{crm}"), "crm_id": crm, "product_id": product})
}

fn msg(partition: i32, offset: i64, payload: &Value) -> InputMessage {
    raw(partition, offset, payload.to_string().as_bytes())
}

fn raw(partition: i32, offset: i64, payload: &[u8]) -> InputMessage {
    InputMessage {
        topic: TOPIC.into(),
        partition,
        offset,
        key: Some(b"k".to_vec()),
        payload: payload.to_vec(),
    }
}

fn offset(partition: i32, next_offset: i64) -> SourceOffset {
    SourceOffset {
        topic: TOPIC.into(),
        partition,
        next_offset,
    }
}

fn sent_to<'a>(seen: &'a [Seen], topic: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Sent { topic: t, payload } if t == topic => Some(payload),
            _ => None,
        })
        .collect()
}

#[test]
fn outputs_go_out_in_firing_order_and_are_flushed_before_the_offsets_are_committed() {
    outputs_in_order_flushed_before_commit(false);
}

#[test]
fn polled_ahead_outputs_go_out_in_order_and_are_flushed_before_the_offsets_are_committed() {
    outputs_in_order_flushed_before_commit(true);
}

fn outputs_in_order_flushed_before_commit(polls_ahead: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    h.polls_ahead = polls_ahead;
    let steps = vec![
        Step::Batch(vec![
            msg(0, 0, &view("e1", "C2", "P2", T0 + MIN)),
            raw(0, 1, b"{not json"),
            msg(1, 0, &view("e2", "C1", "P1", T0)),
        ]),
        // Past both checks: they fire by check time, C1's first.
        Step::Batch(vec![msg(1, 1, &view("e3", "C3", "P3", T0 + 2 * HOUR))]),
    ];
    let (result, engine) = h.run(steps, false);
    result.unwrap();
    let seen = h.seen();
    let dead = json!({"error": "", "reason": "invalid_json"});
    assert!(
        matches!(&seen[0], Seen::Sent { topic, payload }
        if topic == "dead" && payload["reason"] == dead["reason"] && payload["offset"] == 1),
        "{seen:?}"
    );
    assert_eq!(seen[1], Seen::Flushed);
    // The source hears of a batch's offsets once its output is
    // acknowledged and its state has landed, which the next batch's store
    // waits for, and of the last at the end. (The fake logs a message once
    // acknowledged, which may be before or after the first batch's
    // offsets are heard of.)
    let first = Seen::Committed(vec![offset(0, 2), offset(1, 1)]);
    let rest: Vec<Seen> = seen[2..].iter().filter(|s| **s != first).cloned().collect();
    assert_eq!(seen.iter().filter(|s| **s == first).count(), 1, "{seen:?}");
    let triggers = sent_to(&rest[..2], "triggers");
    let crms: Vec<&str> = triggers
        .iter()
        .map(|t| t["crm_id"].as_str().unwrap())
        .collect();
    assert_eq!(crms, ["C1", "C2"]);
    assert_eq!(
        rest[2..],
        [Seen::Flushed, Seen::Committed(vec![offset(1, 2)])]
    );
    drop(engine);
    assert_eq!(
        h.reopen().stored_offsets().unwrap(),
        vec![offset(0, 2), offset(1, 2)]
    );
    assert_eq!(h.counter("pretext_dead_letters_total"), 1.0);
}

#[test]
fn messages_below_the_stored_position_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    let first: Vec<InputMessage> = (0..3)
        .map(|i| {
            msg(
                0,
                i,
                &view(&format!("e{i}"), "C1", &format!("P{i}"), T0 + i),
            )
        })
        .collect();
    let (result, engine) = h.run(vec![Step::Batch(first)], false);
    result.unwrap();
    assert_eq!(engine.stats().applied(), 3);
    drop(engine);
    // An offset reset (a recreated topic) hands out offsets 0.. again; the
    // events differ, so applying them twice would show.
    let again: Vec<InputMessage> = (0..5)
        .map(|i| {
            msg(
                0,
                i,
                &view(&format!("x{i}"), "C9", &format!("Q{i}"), T0 + i),
            )
        })
        .collect();
    let (result, engine) = h.run(vec![Step::Batch(again)], false);
    result.unwrap();
    assert_eq!(
        engine.stats().applied(),
        2,
        "only offsets 3 and 4 are applied"
    );
    assert_eq!(engine.stored_offsets().unwrap(), vec![offset(0, 5)]);
    assert_eq!(h.counter("pretext_skipped_below_position_total"), 3.0);
}

/// A batch of partition 1, then one of partitions 0 and 1 during which
/// `revoked` were revoked.
fn a_batch_then_a_revoke(revoked: Vec<i32>) -> Vec<Step> {
    vec![
        Step::Batch(vec![msg(1, 6, &view("e0", "C0", "P0", T0))]),
        Step::Revoke(
            vec![
                msg(0, 4, &view("e1", "C1", "P1", T0)),
                msg(1, 7, &view("e2", "C2", "P2", T0)),
            ],
            revoked,
        ),
    ]
}

#[test]
fn a_batch_polled_ahead_that_a_revoke_ended_is_committed_before_the_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    h.polls_ahead = true;
    // The batch that the revoke ends is polled while the first is applied.
    let mut steps = a_batch_then_a_revoke(vec![1]);
    // Polled only once the revoke is handed over.
    steps.push(Step::Batch(vec![msg(0, 5, &view("e3", "C3", "P3", T0))]));
    let (result, engine) = h.run(steps, false);
    result.unwrap();
    assert_eq!(engine.stats().applied(), 4);
    let seen: Vec<Seen> = h
        .seen()
        .into_iter()
        .filter(|s| matches!(s, Seen::Committed(_) | Seen::HandedOver(_)))
        .collect();
    assert_eq!(
        seen,
        [
            Seen::Committed(vec![offset(1, 7)]),
            Seen::Committed(vec![offset(0, 5), offset(1, 8)]),
            Seen::HandedOver(vec![offset(1, 8)]),
            Seen::Committed(vec![offset(0, 6)]),
        ]
    );
}

#[test]
fn batches_within_the_commit_interval_are_stored_together_after_all_their_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    h.config.kafka.commit_interval = Dur::secs(3600);
    let (first, second) = one_trigger_then_one_view();
    let steps = vec![
        Step::Batch(first),
        Step::Batch(second),
        Step::Batch(vec![msg(1, 0, &view("e9", "C9", "P9", T0))]),
    ];
    let (result, engine) = h.run(steps, false);
    result.unwrap();
    let seen = h.seen();
    let commits: Vec<&Seen> = seen
        .iter()
        .filter(|s| matches!(s, Seen::Committed(_)))
        .collect();
    // One store at the stop, with each partition's latest offset, after
    // every batch's output was acknowledged.
    assert_eq!(commits.len(), 1, "{seen:?}");
    let last = seen.len() - 1;
    assert!(matches!(&seen[last], Seen::Committed(_)));
    assert!(seen[..last].contains(&Seen::Flushed));
    drop(engine);
    assert_eq!(
        h.reopen().stored_offsets().unwrap(),
        vec![offset(0, 3), offset(1, 1)]
    );
}

#[test]
fn a_failed_output_withholds_every_batch_stored_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    h.config.kafka.commit_interval = Dur::secs(3600);
    let (first, second) = one_trigger_then_one_view();
    let (result, engine) = h.run(vec![Step::Batch(first), Step::Batch(second)], true);
    assert_one_failed(&result);
    drop(engine);
    assert!(h.reopen().stored_offsets().unwrap().is_empty());
}

#[test]
fn revoked_partitions_are_handed_over_after_their_batch_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    let (result, _engine) = h.run(a_batch_then_a_revoke(vec![1, 2]), false);
    result.unwrap();
    let seen = h.seen();
    let committed = seen
        .iter()
        .position(|s| *s == Seen::Committed(vec![offset(0, 5), offset(1, 8)]))
        .expect("the batch is committed");
    // Partition 2 was never read: nothing stored, nothing to hand over.
    assert_eq!(
        seen[committed + 1..],
        [Seen::HandedOver(vec![offset(1, 8)])]
    );
}

#[test]
fn a_failed_publish_commits_nothing_and_the_batch_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    let batch = || {
        vec![
            msg(0, 0, &view("e1", "C1", "P1", T0)),
            msg(0, 1, &view("e2", "C1", "P1", T0 + 2 * HOUR)),
            raw(0, 2, b"\xff"),
        ]
    };
    let (result, engine) = h.run(vec![Step::Batch(batch())], true);
    assert!(
        matches!(result, Err(LiveError::Delivery { failed: 2 })),
        "{result:?}"
    );
    drop(engine);
    assert!(h.seen().is_empty(), "nothing flushed, nothing committed");
    let reopened = h.reopen();
    assert_eq!(reopened.stored_offsets().unwrap(), vec![]);
    assert_eq!(reopened.max_event_ts(), None, "no state change was stored");
    drop(reopened);
    // Read again: the same output, then the commit.
    let (result, _engine) = h.run(vec![Step::Batch(batch())], false);
    result.unwrap();
    let seen = h.seen();
    assert_eq!(sent_to(&seen, "triggers").len(), 1);
    assert_eq!(sent_to(&seen, "dead").len(), 1);
    assert_eq!(seen.last(), Some(&Seen::Committed(vec![offset(0, 3)])));
}

/// Two views of one product two hours apart (the second fires the first's
/// check: one trigger), and a view of another customer an hour later.
fn one_trigger_then_one_view() -> (Vec<InputMessage>, Vec<InputMessage>) {
    let first = vec![
        msg(0, 0, &view("e1", "C1", "P1", T0)),
        msg(0, 1, &view("e2", "C1", "P1", T0 + 2 * HOUR)),
    ];
    let later = vec![msg(0, 2, &view("e3", "C2", "P2", T0 + 3 * HOUR))];
    (first, later)
}

fn assert_one_failed(result: &Result<(), LiveError>) {
    assert!(
        matches!(result, Err(LiveError::Delivery { failed: 1 })),
        "{result:?}"
    );
}

#[test]
fn a_batch_whose_output_fails_while_the_next_is_applied_stores_neither() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    let (first, second) = one_trigger_then_one_view();
    let steps = vec![Step::Batch(first), Step::Batch(second)];
    let (result, engine) = h.run(steps, true);
    // The first batch's trigger failed while the second was applied: its
    // error ends the run at the second's commit.
    assert_one_failed(&result);
    drop(engine);
    assert!(h.seen().is_empty(), "nothing flushed, nothing committed");
    let reopened = h.reopen();
    assert_eq!(reopened.stored_offsets().unwrap(), vec![]);
    assert_eq!(reopened.max_event_ts(), None, "neither batch was stored");
}

#[test]
fn a_failed_output_ends_the_run_at_the_next_empty_poll() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    let (first, later) = one_trigger_then_one_view();
    let steps = vec![
        Step::Batch(first),
        Step::Quiet(Duration::from_secs(1)),
        Step::Batch(later),
    ];
    let (result, engine) = h.run(steps, true);
    assert_one_failed(&result);
    // With no input to overlap, the acknowledgement is waited for at once:
    // the batch after the quiet spell is never applied.
    assert_eq!(engine.max_event_ts(), Some(T0 + 2 * HOUR));
    drop(engine);
    assert!(h.seen().is_empty(), "nothing flushed, nothing committed");
}

#[test]
fn a_stop_during_a_batch_finishes_and_commits_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    let steps = vec![
        Step::StopDuring(vec![
            msg(0, 0, &view("e1", "C1", "P1", T0)),
            msg(0, 1, &view("e2", "C1", "P1", T0 + 2 * HOUR)),
        ]),
        Step::Batch(vec![msg(0, 2, &view("e3", "C1", "P1", T0 + 3 * HOUR))]),
    ];
    let (result, engine) = h.run(steps, false);
    result.unwrap();
    assert_eq!(engine.stored_offsets().unwrap(), vec![offset(0, 2)]);
    let seen = h.seen();
    assert_eq!(sent_to(&seen, "triggers").len(), 1);
    assert_eq!(seen.last(), Some(&Seen::Committed(vec![offset(0, 2)])));
}

#[test]
fn past_the_shutdown_deadline_the_batch_is_abandoned_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    let steps = vec![
        Step::Batch(vec![msg(0, 0, &view("e1", "C1", "P1", T0))]),
        Step::AbandonDuring(vec![msg(0, 1, &view("e2", "C1", "P1", T0 + 2 * HOUR))]),
    ];
    let (result, engine) = h.run(steps, false);
    result.unwrap();
    drop(engine);
    assert_eq!(h.reopen().stored_offsets().unwrap(), vec![offset(0, 1)]);
    assert!(sent_to(&h.seen(), "triggers").is_empty());
}

#[test]
fn no_idle_advance_before_the_first_event_and_no_gauges() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(dir.path(), T0);
    let (result, engine) = h.run(vec![Step::Quiet(Duration::from_secs(3600))], false);
    result.unwrap();
    assert_eq!(engine.watermark(), None);
    assert_eq!(h.gauge("pretext_watermark_seconds"), None);
    assert_eq!(h.gauge("pretext_event_time_lag_seconds"), None);
    assert!(!h.metrics.render().contains("NaN"));
}

/// The trap of contract v1: a process idle on empty topics, then a
/// historical log produced into them. Event time must run on from the
/// log, not jump to the wall clock, or every check would fire at once.
#[test]
fn idle_advance_runs_on_from_the_last_event_not_from_the_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let wall = T0 + 30 * 24 * HOUR;
    let h = Harness::new(dir.path(), wall);
    let lateness = h.config.watermark.allowed_lateness.millis();
    let steps = vec![
        Step::Quiet(Duration::from_secs(60)),
        Step::Batch(vec![msg(0, 0, &view("e1", "C1", "P1", T0))]),
        Step::Quiet(Duration::from_secs(30)),
    ];
    let (result, engine) = h.run(steps, false);
    result.unwrap();
    // The batch was applied at wall + 60 s; 30 s of quiet later W is
    // m + 30 s − lateness, within the idle cadence.
    let w = engine.watermark().unwrap();
    assert!(
        w <= T0 + 30_000 - lateness && w >= T0 + 18_000 - lateness,
        "{w}"
    );
    assert!(
        sent_to(&h.seen(), "triggers").is_empty(),
        "the check is an hour away"
    );
    let gauge = h.gauge("pretext_watermark_seconds").unwrap();
    assert_eq!(
        gauge,
        w as f64 / 1000.0,
        "the gauge moves with the idle advance"
    );
    let lag = h.gauge("pretext_event_time_lag_seconds").unwrap();
    assert_eq!(lag, (h.clock.wall_ms() - T0) as f64 / 1000.0);
    drop(engine);
    // A restart keeps m and the idle W.
    assert_eq!(h.reopen().watermark(), Some(w));
}

/// Quiet hours on a real-time stream: the check fires on the wall clock.
#[test]
fn idle_advance_fires_checks_in_quiet_hours() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(dir.path(), T0);
    let lateness = h.config.watermark.allowed_lateness.millis();
    let steps = vec![
        Step::Batch(vec![msg(0, 0, &view("e1", "C1", "P1", T0))]),
        Step::Quiet(Duration::from_secs(3600)),
    ];
    let (result, engine) = h.run(steps, false);
    result.unwrap();
    assert!(
        sent_to(&h.seen(), "triggers").is_empty(),
        "W is 5 min short"
    );
    drop(engine);
    let steps = vec![Step::Quiet(Duration::from_secs(6 * 60))];
    let (result, engine) = h.run(steps, false);
    result.unwrap();
    let seen = h.seen();
    let triggers = sent_to(&seen, "triggers");
    assert_eq!(triggers.len(), 1);
    assert_eq!(triggers[0]["fired_at"], pretext::time::format_ts(T0 + HOUR));
    // After the restart, a counts from the reopening: W resumed from the
    // idle W it had stored, not from m − lateness.
    let w = engine.watermark().unwrap();
    assert!(w >= T0 + HOUR && w <= h.clock.wall_ms() - lateness, "{w}");
}

fn purchase(id: &str, crm: &str, product: &str, ts: i64) -> Value {
    json!({"type": "purchase", "event_id": id, "ts": ts, "order_id": format!("O-{id}"),
           "channel": "web", "items": [{"product_id": product}], "crm_id": crm})
}

/// Holdout triggers go to the holdout topic, never to the triggers topic,
/// and conversions to theirs, each produced with its batch before the
/// batch's offsets are committed.
#[test]
fn holdout_triggers_and_conversions_go_to_their_topics_before_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    h.config.holdout.percent = 100.0;
    let steps = vec![
        Step::Batch(vec![msg(0, 0, &view("e1", "C1", "P1", T0))]),
        Step::Batch(vec![msg(0, 1, &view("e2", "C2", "P2", T0 + 2 * HOUR))]),
        Step::Batch(vec![msg(0, 2, &purchase("b1", "C1", "P1", T0 + 3 * HOUR))]),
    ];
    let (result, _engine) = h.run(steps, false);
    result.unwrap();
    let seen = h.seen();
    assert!(sent_to(&seen, "triggers").is_empty(), "{seen:?}");
    let holdout = sent_to(&seen, "holdout");
    assert_eq!(holdout.len(), 1);
    assert_eq!(holdout[0]["group"], "holdout");
    assert_eq!(holdout[0]["crm_id"], "C1");
    let conversions = sent_to(&seen, "conversions");
    assert_eq!(conversions.len(), 1);
    assert_eq!(conversions[0]["trigger_id"], holdout[0]["trigger_id"]);
    assert_eq!(conversions[0]["order_id"], "O-b1");
    // The second batch's offsets are heard of once the holdout trigger is
    // acknowledged (the conversion may be sent before or after).
    let second = Seen::Committed(vec![offset(0, 2)]);
    let at = seen.iter().position(|s| *s == second).expect("stored");
    assert!(seen[..at].contains(&Seen::Flushed), "{seen:?}");
    let rest: Vec<Seen> = seen.iter().filter(|s| **s != second).cloned().collect();
    let tail = &rest[rest.len() - 3..];
    assert!(matches!(&tail[0], Seen::Sent { topic, .. } if topic == "conversions"));
    assert_eq!(
        tail[1..],
        [Seen::Flushed, Seen::Committed(vec![offset(0, 3)])]
    );
    let text = h.metrics.render();
    for series in [
        "pretext_triggers_total{group=\"holdout\",type=\"viewed_not_bought\"} 1",
        "pretext_triggers_total{group=\"treated\",type=\"viewed_not_bought\"} 0",
        "pretext_conversions_total{group=\"holdout\",type=\"viewed_not_bought\"} 1",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}

/// Views of 300 customers a minute apart over ten hours, each customer's
/// checks falling due within the stream: triggers fire inside the batches.
fn many_views() -> Vec<InputMessage> {
    (0..3_000i64)
        .map(|i| {
            let crm = format!("C{}", i % 300);
            let product = format!("P{}", i % 7);
            msg(
                0,
                i,
                &view(&format!("e{i}"), &crm, &product, T0 + i * MIN / 5),
            )
        })
        .collect()
}

/// The triggers of both groups, in the order they were sent.
fn triggers_sent(seen: &[Seen]) -> Vec<Value> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Sent { topic, payload } if topic == "triggers" || topic == "holdout" => {
                Some(payload.clone())
            }
            _ => None,
        })
        .collect()
}

/// Large batches make their triggers' JSON on a thread of their own while
/// they are applied; small ones on the pipeline thread after. Both send
/// the same triggers in the same order.
#[test]
fn triggers_made_into_json_during_a_large_batch_go_out_as_from_small_ones() {
    let run = |batch: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
        h.config.holdout.percent = 50.0;
        let steps = many_views()
            .chunks(batch)
            .map(|c| Step::Batch(c.to_vec()))
            .collect();
        let (result, _engine) = h.run(steps, false);
        result.unwrap();
        triggers_sent(&h.seen())
    };
    let large = run(3_000);
    let small = run(100);
    assert!(large.len() > 100, "{} triggers", large.len());
    let groups: Vec<&str> = large.iter().filter_map(|t| t["group"].as_str()).collect();
    assert!(groups.contains(&"holdout") && groups.contains(&"treated"));
    assert_eq!(large.len(), small.len());
    assert_eq!(large, small);
}

#[test]
fn capped_triggers_are_not_produced_and_are_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(dir.path(), T0 + 30 * 24 * HOUR);
    h.config.pressure.max_triggers = 1;
    let steps = vec![
        Step::Batch(vec![
            msg(0, 0, &view("e1", "C1", "P1", T0)),
            msg(0, 1, &view("e2", "C1", "P2", T0 + MIN)),
        ]),
        Step::Batch(vec![msg(0, 2, &view("e3", "C9", "P9", T0 + 2 * HOUR))]),
    ];
    let (result, _engine) = h.run(steps, false);
    result.unwrap();
    let seen = h.seen();
    let triggers = sent_to(&seen, "triggers");
    assert_eq!(triggers.len(), 1, "{seen:?}");
    assert_eq!(triggers[0]["product_id"], "P1");
    assert_eq!(
        h.gauge("pretext_suppressed_total{reason=\"frequency_cap\"}"),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------
// Exactly-once (kafka.exactly_once): transactions and the recovery

fn eos_harness(dir: &Path) -> Harness {
    let mut h = Harness::new(dir, T0 + 30 * 24 * HOUR);
    h.config.kafka.exactly_once = true;
    h
}

/// Checks due a minute after a view, no lateness: an idle advance fires
/// one after a minute or so of quiet (each second of which commits one).
fn eos_idle_harness(dir: &Path) -> Harness {
    let mut h = eos_harness(dir);
    h.config.watermark.allowed_lateness = Dur::secs(0);
    h.config.triggers.viewed_not_bought.delay = Dur::secs(60);
    h
}

/// The offsets of every committed transaction, in order.
fn transactions(seen: &[Seen]) -> Vec<Vec<TxnOffset>> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::TxnCommitted(o) => Some(o.clone()),
            _ => None,
        })
        .collect()
}

fn trigger_keys(seen: &[Seen]) -> Vec<String> {
    sent_to(seen, "triggers")
        .iter()
        .map(|t| t["trigger_id"].as_str().unwrap().to_string())
        .collect()
}

/// Three batches; the second fires C1's check, the third C2's and C9's.
fn three_batches() -> [Vec<InputMessage>; 3] {
    [
        vec![msg(0, 0, &view("a1", "C1", "P1", T0)), raw(0, 1, b"{bad")],
        vec![
            msg(1, 0, &view("b1", "C2", "P2", T0 + 2 * HOUR)),
            msg(0, 2, &view("b2", "C9", "P9", T0 + 2 * HOUR)),
        ],
        vec![msg(0, 3, &view("c1", "C3", "P3", T0 + 4 * HOUR))],
    ]
}

fn assert_same_state(a: &Engine, b: &Engine) {
    for cf in pretext::state::Cf::ALL {
        if cf == pretext::state::Cf::Meta {
            continue;
        }
        let entries = |e: &Engine| pretext::engine::comparable_entries(e.store(), cf).unwrap();
        assert_eq!(entries(a), entries(b), "column family {}", cf.name());
    }
    assert_eq!(a.watermark(), b.watermark());
    assert_eq!(a.stored_offsets().unwrap(), b.stored_offsets().unwrap());
}

#[test]
fn exactly_once_puts_each_batch_and_its_offsets_in_one_transaction_before_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let h = eos_harness(dir.path());
    let steps = three_batches().map(Step::Batch).into_iter().collect();
    let (result, engine) = h.run(steps, false);
    result.unwrap();
    let seen = h.seen();
    assert_eq!(seen[0], Seen::Begun);
    assert!(
        !seen.contains(&Seen::Flushed),
        "a transaction's commit is its flush"
    );
    let txns = transactions(&seen);
    assert_eq!(txns.len(), 3, "one per batch");
    // The second batch: partitions in canonical order, each offset with
    // the batch's start and the watermark it left.
    let second: Vec<(i32, i64, i64)> = txns[1]
        .iter()
        .map(|o| (o.offset.partition, o.offset.next_offset, o.record.start))
        .collect();
    assert_eq!(second, [(0, 3, 2), (1, 1, 0)]);
    let lateness = h.config.watermark.allowed_lateness.millis();
    assert_eq!(txns[1][0].record.watermark, Some(T0 + 2 * HOUR - lateness));
    // Each batch's output inside its transaction: C1's trigger between the
    // second Begun and the second commit.
    let second_begun = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == Seen::Begun)
        .nth(1)
        .unwrap()
        .0;
    let second_commit = seen
        .iter()
        .position(|s| *s == Seen::TxnCommitted(txns[1].clone()))
        .unwrap();
    assert_eq!(trigger_keys(&seen[second_begun..second_commit]).len(), 1);
    assert_eq!(
        engine.stored_offsets().unwrap(),
        vec![offset(0, 4), offset(1, 1)]
    );
}

#[test]
fn exactly_once_a_failed_commit_aborts_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = eos_harness(dir.path());
    let [first, second, _] = three_batches();
    let (result, engine) = h.run(vec![Step::Batch(first.clone()), Step::Batch(second)], true);
    assert!(
        matches!(result, Err(LiveError::TxnAborted { .. })),
        "{result:?}"
    );
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("nothing of the batch is visible"),
        "the message says what became of the batch"
    );
    drop(engine);
    let seen = h.seen();
    assert_eq!(
        seen,
        [Seen::Begun, Seen::Aborted],
        "nothing sent is visible"
    );
    let reopened = h.reopen();
    assert_eq!(reopened.stored_offsets().unwrap(), vec![]);
    assert_eq!(reopened.max_event_ts(), None, "no state change was stored");
}

/// The crash the recovery exists for: the second batch's transaction
/// committed, the process died before its RocksDB write. The next run
/// re-applies that batch with its output muted, then goes on: the output
/// of both runs is the uninterrupted run's, each trigger once, and the
/// state is the same.
#[test]
fn exactly_once_a_batch_committed_in_kafka_but_not_in_the_state_is_reapplied_muted() {
    let whole = tempfile::tempdir().unwrap();
    let u = eos_harness(whole.path());
    let steps = three_batches().map(Step::Batch).into_iter().collect();
    let (result, uninterrupted) = u.run(steps, false);
    result.unwrap();
    let useen = u.seen();
    let txns = transactions(&useen);
    let all = trigger_keys(&useen);
    assert_eq!(all.len(), 3, "C1's check, then C2's and C9's");

    let dir = tempfile::tempdir().unwrap();
    let h = eos_harness(dir.path());
    let [first, second, third] = three_batches();
    let (result, engine) = h.run(vec![Step::Batch(first)], false);
    result.unwrap();
    drop(engine);
    let before = trigger_keys(&h.seen());
    // The group holds the second transaction's offsets; the state does not.
    let positions = txns[1]
        .iter()
        .map(|o| GroupPosition {
            topic: o.offset.topic.clone(),
            partition: o.offset.partition,
            committed: o.offset.next_offset,
            record: Some(o.record),
        })
        .collect();
    // Fetches interleave otherwise this time, and the third batch's message
    // arrives along with the gap: dropped, then read again.
    let mut mixed = second.clone();
    mixed.reverse();
    mixed.push(third[0].clone());
    let log_start = h.seen().len();
    let steps = vec![Step::Batch(mixed), Step::Batch(third)];
    let (result, engine) = h.run_with(steps, positions, false);
    result.unwrap();
    let seen = h.seen()[log_start..].to_vec();
    // The gap re-applied and stored (nothing sent), then the dropped
    // message's partition read again.
    assert_eq!(
        seen[..2],
        [
            Seen::Committed(vec![offset(0, 3), offset(1, 1)]),
            Seen::Rewound(vec![offset(0, 3)])
        ]
    );
    let after = trigger_keys(&seen);
    // What the second transaction made visible before the crash.
    let commits: Vec<usize> = (0..useen.len())
        .filter(|&i| matches!(useen[i], Seen::TxnCommitted(_)))
        .collect();
    let committed = trigger_keys(&useen[commits[0]..commits[1]]);
    assert_eq!(committed.len(), 1, "C1's");
    let mut both = [before, committed, after.clone()].concat();
    both.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(both, want, "each trigger once across the crash");
    assert_eq!(
        after.len(),
        2,
        "the second batch's trigger is not produced again"
    );
    assert_same_state(&engine, &uninterrupted);
}

/// An idle advance under exactly-once records its watermark in its
/// transaction; one that committed in Kafka but not in the state is
/// re-applied muted, so its checks do not fire a second time later.
#[test]
fn exactly_once_the_idle_advance_is_recorded_and_recovered() {
    let whole = tempfile::tempdir().unwrap();
    let u = eos_idle_harness(whole.path());
    let first = vec![msg(0, 0, &view("a1", "C1", "P1", T0))];
    let steps = vec![
        Step::Batch(first.clone()),
        Step::Quiet(Duration::from_secs(90)),
    ];
    let (result, uninterrupted) = u.run(steps, false);
    result.unwrap();
    let useen = u.seen();
    let txns = transactions(&useen);
    let idle = txns.last().unwrap();
    assert_eq!(
        idle.iter().map(|o| o.offset.clone()).collect::<Vec<_>>(),
        vec![offset(0, 1)],
        "the stored position of the assigned partition carries it"
    );
    let fired = trigger_keys(&useen);
    assert_eq!(fired.len(), 1, "the idle advance fired C1's check");

    let dir = tempfile::tempdir().unwrap();
    let h = eos_idle_harness(dir.path());
    h.run(vec![Step::Batch(first)], false).0.unwrap();
    let positions = vec![GroupPosition {
        topic: TOPIC.into(),
        partition: 0,
        committed: 1,
        record: Some(idle[0].record),
    }];
    let log_start = h.seen().len();
    let (result, engine) = h.run_with(vec![Step::Batch(Vec::new())], positions, false);
    result.unwrap();
    assert!(
        trigger_keys(&h.seen()[log_start..]).is_empty(),
        "fired again, muted"
    );
    assert_same_state(&engine, &uninterrupted);
}
