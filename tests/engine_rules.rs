//! Engine tests on replay files: one scenario per rule of CONTRACT section 3,
//! run through `pretext::replay` exactly as `pretext replay` runs them.

use std::io::Write;
use std::path::PathBuf;

use pretext::config::Config;
use pretext::engine::Outputs;
use pretext::replay::{replay, ReplayOptions, Summary};
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
const MIN: i64 = 60_000;
/// 2026-11-22T10:00:00Z
const T0: i64 = 1_795_341_600_000;

/// Event time as epoch milliseconds, offset from T0.
fn at(offset: i64) -> i64 {
    T0 + offset
}

fn iso(ms: i64) -> String {
    pretext::time::format_ts(ms)
}

struct Run {
    triggers: Vec<Value>,
    holdout: Vec<Value>,
    conversions: Vec<Value>,
    dead: Vec<Value>,
    summary: Summary,
    raw: String,
}

/// Writes `events` to a replay file and replays it.
fn run_with(config: &Config, events: &[Value], flush: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for e in events {
        writeln!(f, "{e}").unwrap();
    }
    drop(f);
    run_file(config, input, flush, &dir)
}

fn run_file(config: &Config, input: PathBuf, flush: bool, dir: &tempfile::TempDir) -> Run {
    let output = dir.path().join("out.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let holdout = dir.path().join("holdout.jsonl");
    let conversions = dir.path().join("conversions.jsonl");
    let opts = ReplayOptions {
        inputs: vec![input],
        output: Some(output.clone()),
        dead_letter: Some(dead.clone()),
        holdout: Some(holdout.clone()),
        conversions: Some(conversions.clone()),
        flush,
        ..ReplayOptions::default()
    };
    let summary = replay(config, &opts).unwrap();
    let raw = std::fs::read_to_string(&output).unwrap();
    let parse = |s: String| -> Vec<Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    Run {
        triggers: parse(raw.clone()),
        holdout: parse(std::fs::read_to_string(&holdout).unwrap()),
        conversions: parse(std::fs::read_to_string(&conversions).unwrap()),
        dead: parse(std::fs::read_to_string(&dead).unwrap()),
        summary,
        raw,
    }
}

fn run(events: &[Value], flush: bool) -> Run {
    run_with(&Config::default(), events, flush)
}

fn view(id: &str, ts: i64, cookie: &str, crm: Option<&str>, product: &str) -> Value {
    let mut v = json!({"type": "product_view", "event_id": id, "ts": ts,
        "cookie_id": cookie, "product_id": product, "category": "coats"});
    if let Some(c) = crm {
        v["crm_id"] = json!(c);
    }
    v
}

fn cart(id: &str, ts: i64, cookie: &str, crm: Option<&str>, product: &str) -> Value {
    let mut v = view(id, ts, cookie, crm, product);
    v["type"] = json!("add_to_cart");
    v["quantity"] = json!(1);
    v
}

fn purchase(
    id: &str,
    ts: i64,
    channel: &str,
    crm: Option<&str>,
    cookie: Option<&str>,
    products: &[&str],
) -> Value {
    let items: Vec<Value> = products.iter().map(|p| json!({"product_id": p})).collect();
    let mut v = json!({"type": "purchase", "event_id": id, "ts": ts,
        "order_id": format!("o-{id}"), "channel": channel, "items": items});
    if let Some(c) = crm {
        v["crm_id"] = json!(c);
    }
    if let Some(k) = cookie {
        v["cookie_id"] = json!(k);
    }
    v
}

fn identify(id: &str, ts: i64, cookie: &str, crm: &str) -> Value {
    json!({"type": "identify", "event_id": id, "ts": ts, "cookie_id": cookie,
        "crm_id": crm, "source": "login"})
}

fn promotion(id: &str, ts: i64, product: &str) -> Value {
    json!({"type": "promotion", "event_id": id, "ts": ts, "product_id": product,
        "discount_pct": 20})
}

/// An unrelated event that moves the watermark to `ts` − 5 min.
fn tick(id: &str, ts: i64) -> Value {
    view(id, ts, "ck_tick", Some("C_TICK"), "P_TICK")
}

fn of_type<'a>(r: &'a Run, kind: &str) -> Vec<&'a Value> {
    r.triggers
        .iter()
        .filter(|t| t["type"] == kind && t["crm_id"] != "C_TICK")
        .collect()
}

#[test]
fn a_single_view_fires_viewed_not_bought_after_the_delay() {
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            tick("e2", at(HOUR + 5 * MIN)),
        ],
        false,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb.len(), 1, "{}", r.raw);
    let t = vnb[0];
    assert_eq!(t["crm_id"], "C1");
    assert_eq!(t["product_id"], "P1");
    assert_eq!(t["category"], "coats");
    assert_eq!(t["fired_at"], iso(at(HOUR)));
    assert_eq!(t["last_viewed_at"], iso(at(0)));
    assert_eq!(t["view_count"], 1);
    // 1.0 × 2^(−1h/72h) = 0.9904…
    assert_eq!(t["intent_score"], 0.99);
    assert_eq!(t["cookie_ids"], json!(["ck1"]));
    assert_eq!(t["channels"], json!(["ads"]));
    assert_eq!(t["promotion"], Value::Null);
    assert_eq!(t["trigger_id"].as_str().unwrap().len(), 16);
}

#[test]
fn a_check_waits_for_the_watermark_and_flush_fires_it() {
    // The replay ends with W = 10:58, the highest ts: the 11:00 check waits.
    let events = [
        view("e1", at(0), "ck1", Some("C1"), "P1"),
        tick("e2", at(HOUR - 2 * MIN)),
    ];
    let r = run(&events, false);
    assert!(of_type(&r, "viewed_not_bought").is_empty(), "{}", r.raw);
    let r = run(&events, true);
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb.len(), 1);
    assert_eq!(
        vnb[0]["fired_at"],
        iso(at(HOUR)),
        "fired as of its own check time"
    );
}

#[test]
fn a_check_past_the_year_9999_falls_at_its_last_instant() {
    // 9999-12-31T23:30Z is an input time; its check an hour later could not
    // be written in RFC 3339, so it falls at 9999-12-31T23:59:59.999Z.
    let last = pretext::time::MAX_MILLIS;
    let r = run(
        &[view("e1", last - 30 * MIN, "ck1", Some("C1"), "P1")],
        true,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb.len(), 1, "{}", r.raw);
    assert_eq!(vnb[0]["fired_at"], "9999-12-31T23:59:59.999Z");
    assert_eq!(vnb[0]["last_viewed_at"], "9999-12-31T23:29:59.999Z");
}

#[test]
fn a_delay_too_long_for_the_clock_does_not_wrap_around() {
    // t + delay would overflow i64: the check waits at the last instant
    // instead of wrapping to a time long past and firing at once.
    let mut config = Config::default();
    config.triggers.viewed_not_bought.delay = pretext::config::Dur(i64::MAX);
    // Some eight thousand years of decay leave no score.
    config.triggers.viewed_not_bought.min_score = 0.0;
    let events = [
        view("e1", at(0), "ck1", Some("C1"), "P1"),
        tick("e2", at(DAY)),
    ];
    assert!(of_type(&run_with(&config, &events, false), "viewed_not_bought").is_empty());
    let r = run_with(&config, &events, true);
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb.len(), 1, "{}", r.raw);
    assert_eq!(vnb[0]["fired_at"], "9999-12-31T23:59:59.999Z");
}

#[test]
fn a_score_with_no_view_in_its_window_is_written_as_zero() {
    // The lookback ends before the check time, so no view counts.
    let mut config = Config::default();
    config.scoring.lookback = pretext::config::Dur(30 * MIN);
    config.triggers.viewed_not_bought.min_score = 0.0;
    let r = run_with(&config, &[view("e1", at(0), "ck1", Some("C1"), "P1")], true);
    assert_eq!(of_type(&r, "viewed_not_bought").len(), 1, "{}", r.raw);
    assert!(r.raw.contains(r#""intent_score":0.0,"#), "{}", r.raw);
}

#[test]
fn during_the_stream_the_watermark_lags_by_the_allowed_lateness() {
    // At 11:04 W is 10:59: C1's 11:00 check is not due yet, so the late
    // purchase at 10:30 that arrives next still suppresses it.
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            tick("e2", at(HOUR + 4 * MIN)),
            purchase("e3", at(30 * MIN), "store", Some("C1"), None, &["P1"]),
        ],
        false,
    );
    assert!(of_type(&r, "viewed_not_bought").is_empty(), "{}", r.raw);
}

#[test]
fn a_replay_ends_with_the_watermark_at_the_highest_ts() {
    // W at the end is 11:00 exactly (no lateness), so the 11:00 check fires.
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            tick("e2", at(HOUR)),
        ],
        false,
    );
    assert_eq!(of_type(&r, "viewed_not_bought").len(), 1, "{}", r.raw);
}

#[test]
fn a_purchase_stamped_after_the_check_but_applied_before_it_fires_suppresses_it() {
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            view("e2", at(0), "ck2", Some("C2"), "P1"),
            // Stamped 11:30, after the 11:00 check; applying it moves W to
            // 11:25, so the check fires right after, with the purchase in.
            purchase("e3", at(90 * MIN), "web", Some("C1"), None, &["P1"]),
        ],
        false,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb.len(), 1, "{}", r.raw);
    assert_eq!(vnb[0]["crm_id"], "C2");
    assert_eq!(
        r.summary
            .engine
            .suppressed_of(pretext::engine::Suppressed::Purchased),
        1
    );
}

#[test]
fn a_store_purchase_by_crm_id_suppresses_a_web_view() {
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            purchase("e2", at(30 * MIN), "store", Some("C1"), None, &["P1"]),
            tick("e3", at(2 * HOUR)),
        ],
        true,
    );
    assert!(of_type(&r, "viewed_not_bought").is_empty(), "{}", r.raw);
}

#[test]
fn a_purchase_of_another_product_does_not_suppress() {
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            purchase("e2", at(30 * MIN), "store", Some("C1"), None, &["P2"]),
        ],
        true,
    );
    assert_eq!(of_type(&r, "viewed_not_bought").len(), 1);
}

#[test]
fn a_purchase_before_the_session_only_resets_the_score() {
    // Bought at 09:00, viewed at 10:00: the purchase is before the session's
    // first view, so the check fires; the score counts only the later view.
    let r = run(
        &[
            cart("e0", at(-2 * HOUR), "ck1", Some("C1"), "P1"),
            purchase("e1", at(-HOUR), "web", Some("C1"), None, &["P1"]),
            view("e2", at(0), "ck1", Some("C1"), "P1"),
        ],
        true,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    // The 08:00 session's check at 09:00 is suppressed by the 09:00 purchase.
    assert_eq!(vnb.len(), 1, "{}", r.raw);
    assert_eq!(vnb[0]["fired_at"], iso(at(HOUR)));
    assert_eq!(vnb[0]["intent_score"], 0.99);
    assert_eq!(vnb[0]["view_count"], 2, "view_count ignores purchases");
}

#[test]
fn views_within_a_session_join_it_and_move_the_check() {
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            cart("e2", at(40 * MIN), "ck1", Some("C1"), "P1"),
        ],
        true,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb.len(), 1, "{}", r.raw);
    assert_eq!(vnb[0]["fired_at"], iso(at(100 * MIN)));
    assert_eq!(vnb[0]["view_count"], 2);
    let expected = 2f64.powf(-100.0 / (72.0 * 60.0)) + 3.0 * 2f64.powf(-60.0 / (72.0 * 60.0));
    assert_eq!(vnb[0]["intent_score"], (expected * 100.0).round() / 100.0);
}

#[test]
fn a_view_after_the_pending_check_fires_it_early_then_starts_a_new_session() {
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            // 11:02 > 11:00 while W is 10:57: the 11:00 check fires first.
            view("e2", at(62 * MIN), "ck1", Some("C1"), "P1"),
        ],
        true,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb.len(), 1, "the 12:02 check is in cooldown: {}", r.raw);
    assert_eq!(vnb[0]["fired_at"], iso(at(HOUR)));
    assert_eq!(vnb[0]["view_count"], 1, "the 11:02 view is after the check");
    assert_eq!(vnb[0]["last_viewed_at"], iso(at(0)));
    assert_eq!(
        r.summary
            .engine
            .suppressed_of(pretext::engine::Suppressed::Cooldown),
        1
    );
}

#[test]
fn an_early_fire_sees_the_link_the_view_carries() {
    // ck2's first event is the 11:02 view that links it to C1; it is
    // applied before the early fire, so the trigger names ck2 first.
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            view("e2", at(62 * MIN), "ck2", Some("C1"), "P1"),
        ],
        false,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb.len(), 1);
    assert_eq!(vnb[0]["cookie_ids"], json!(["ck2", "ck1"]));
}

#[test]
fn cooldown_suppresses_a_second_trigger_within_seven_days_only() {
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            view("e2", at(2 * DAY), "ck1", Some("C1"), "P1"),
            view("e3", at(8 * DAY), "ck1", Some("C1"), "P1"),
        ],
        true,
    );
    let fired: Vec<&Value> = of_type(&r, "viewed_not_bought")
        .iter()
        .map(|t| &t["fired_at"])
        .collect();
    assert_eq!(
        fired,
        vec![&json!(iso(at(HOUR))), &json!(iso(at(8 * DAY + HOUR)))]
    );
}

#[test]
fn min_score_suppresses_weak_interest() {
    let mut config = Config::default();
    config.triggers.viewed_not_bought.min_score = 1.5;
    let weak = [view("e1", at(0), "ck1", Some("C1"), "P1")];
    assert!(of_type(&run_with(&config, &weak, true), "viewed_not_bought").is_empty());
    let strong = [cart("e1", at(0), "ck1", Some("C1"), "P1")];
    assert_eq!(
        of_type(&run_with(&config, &strong, true), "viewed_not_bought").len(),
        1
    );
}

#[test]
fn a_late_view_is_applied_and_its_overdue_check_fires_at_once() {
    let r = run(
        &[
            tick("e1", at(5 * HOUR)),
            // W is 14:55; a view stamped 10:00 schedules 11:00: already due.
            view("e2", at(0), "ck1", Some("C1"), "P1"),
            tick("e3", at(5 * HOUR + MIN)),
        ],
        false,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb.len(), 1, "{}", r.raw);
    assert_eq!(vnb[0]["fired_at"], iso(at(HOUR)), "fired_at in the past");
    // It fired while applying e2, before e3 was read.
    let pos = r.triggers.iter().position(|t| t["crm_id"] == "C1").unwrap();
    assert_eq!(pos, 0);
}

#[test]
fn anonymous_views_are_stitched_when_the_cookie_is_first_linked() {
    let r = run(
        &[
            view("e1", at(0), "ck1", None, "P1"),
            view("e2", at(10 * MIN), "ck1", None, "P2"),
            identify("e3", at(30 * MIN), "ck1", "C1"),
        ],
        true,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    let products: Vec<&Value> = vnb.iter().map(|t| &t["product_id"]).collect();
    assert_eq!(products, vec!["P1", "P2"], "{}", r.raw);
    assert!(vnb.iter().all(|t| t["crm_id"] == "C1"));
    assert_eq!(vnb[0]["fired_at"], iso(at(HOUR)), "each at its own ts");
}

#[test]
fn stitching_drops_kept_events_older_than_the_lookback() {
    let r = run(
        &[
            view("e1", at(0), "ck1", None, "OLD"),
            view("e2", at(25 * DAY), "ck1", None, "NEW"),
            identify("e3", at(31 * DAY), "ck1", "C1"),
        ],
        true,
    );
    let products: Vec<&Value> = of_type(&r, "viewed_not_bought")
        .iter()
        .map(|t| &t["product_id"])
        .collect();
    assert_eq!(products, vec!["NEW"], "{}", r.raw);
}

#[test]
fn the_anonymous_buffer_keeps_the_latest_events_per_cookie() {
    let mut config = Config::default();
    config.identity.anonymous_buffer = 2;
    let r = run_with(
        &config,
        &[
            view("e1", at(0), "ck1", None, "P1"),
            view("e2", at(MIN), "ck1", None, "P2"),
            view("e3", at(2 * MIN), "ck1", None, "P3"),
            identify("e4", at(3 * MIN), "ck1", "C1"),
        ],
        true,
    );
    let products: Vec<&Value> = of_type(&r, "viewed_not_bought")
        .iter()
        .map(|t| &t["product_id"])
        .collect();
    assert_eq!(products, vec!["P2", "P3"]);
}

#[test]
fn a_cookie_only_purchase_is_stitched_and_suppresses() {
    let r = run(
        &[
            view("e1", at(0), "ck1", None, "P1"),
            purchase("e2", at(10 * MIN), "web", None, Some("ck1"), &["P1"]),
            identify("e3", at(20 * MIN), "ck1", "C1"),
        ],
        true,
    );
    assert!(of_type(&r, "viewed_not_bought").is_empty(), "{}", r.raw);
}

#[test]
fn the_link_with_the_greatest_ts_wins_and_a_late_older_link_does_not_override() {
    let r = run(
        &[
            identify("e1", at(0), "ck1", "A"),
            identify("e2", at(-HOUR), "ck1", "B"),
            view("e3", at(MIN), "ck1", None, "P1"),
        ],
        true,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb.len(), 1);
    assert_eq!(vnb[0]["crm_id"], "A");
}

#[test]
fn a_cookie_moved_to_another_customer_leaves_the_first_ones_cookie_list() {
    let r = run(
        &[
            identify("e1", at(0), "ck1", "A"),
            identify("e2", at(0), "ck2", "A"),
            identify("e3", at(MIN), "ck1", "B"),
            view("e4", at(2 * MIN), "ck2", None, "P1"),
        ],
        true,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(vnb[0]["crm_id"], "A");
    assert_eq!(vnb[0]["cookie_ids"], json!(["ck2"]));
}

#[test]
fn cookie_ids_are_the_five_most_recently_active_linked_cookies() {
    let mut events: Vec<Value> = (0..7)
        .map(|i| identify(&format!("i{i}"), at(i * MIN), &format!("ck{i}"), "C1"))
        .collect();
    // Activity: ck1 10 min (its view), ck3 and ck6 tie at 6 min (ck3's
    // second identify), then ck5, ck4, ck2, ck0.
    events.push(identify("i3b", at(6 * MIN), "ck3", "C1"));
    events.push(view("v1", at(10 * MIN), "ck1", None, "P1"));
    let r = run(&events, true);
    let vnb = of_type(&r, "viewed_not_bought");
    assert_eq!(
        vnb[0]["cookie_ids"],
        json!(["ck1", "ck3", "ck6", "ck5", "ck4"])
    );
}

#[test]
fn consent_sets_channels_and_an_absent_field_keeps_its_value() {
    let r = run(
        &[
            json!({"type":"consent","event_id":"c1","ts":at(-HOUR),"crm_id":"C1","email":true,"sms":true}),
            json!({"type":"consent","event_id":"c2","ts":at(-HOUR),"crm_id":"C1","ads":false,"sms":null}),
            view("e1", at(0), "ck1", Some("C1"), "P1"),
        ],
        true,
    );
    assert_eq!(
        of_type(&r, "viewed_not_bought")[0]["channels"],
        json!(["email", "sms"])
    );
}

#[test]
fn the_category_is_the_latest_applied_view_naming_one() {
    let mut other = view("e2", at(MIN), "ck2", Some("C2"), "P1");
    other["category"] = json!("jackets");
    let mut nameless = view("e3", at(2 * MIN), "ck2", Some("C2"), "P1");
    nameless.as_object_mut().unwrap().remove("category");
    let r = run(
        &[view("e1", at(0), "ck1", Some("C1"), "P1"), other, nameless],
        true,
    );
    let c1 = of_type(&r, "viewed_not_bought")
        .into_iter()
        .find(|t| t["crm_id"] == "C1")
        .unwrap();
    assert_eq!(c1["category"], "jackets");
}

#[test]
fn a_promotion_reaches_viewers_but_not_buyers_nor_those_outside_the_lookback() {
    let r = run(
        &[
            view("e1", at(-40 * DAY), "ckD", Some("D"), "P1"),
            view("e2", at(0), "ckA", Some("A"), "P1"),
            view("e3", at(0), "ckB", Some("B"), "P1"),
            view("e4", at(MIN), "ckC", Some("C"), "P1"),
            purchase("e5", at(2 * MIN), "store", Some("B"), None, &["P1"]),
            view("e6", at(MIN), "ckE", Some("E"), "P2"),
            json!({"type":"promotion","event_id":"p1","ts":at(30 * MIN),"product_id":"P1",
                   "discount_pct":20,"promo_price":79.5,"valid_until":"2026-11-01T00:00:00+01:00"}),
        ],
        false,
    );
    let promo = of_type(&r, "promo_on_viewed_item");
    let who: Vec<&Value> = promo.iter().map(|t| &t["crm_id"]).collect();
    assert_eq!(who, vec!["A", "C"], "{}", r.raw);
    let t = promo[0];
    assert_eq!(t["fired_at"], iso(at(30 * MIN)));
    assert_eq!(t["view_count"], 1);
    assert_eq!(
        t["promotion"],
        json!({"discount_pct": 20, "promo_price": 79.5, "valid_until": "2026-10-31T23:00:00Z"}),
        "an expired valid_until is passed on"
    );
}

#[test]
fn a_promotion_respects_its_cooldown_and_a_later_purchase() {
    let r = run(
        &[
            view("e1", at(0), "ckA", Some("A"), "P1"),
            promotion("p1", at(HOUR), "P1"),
            promotion("p2", at(2 * HOUR), "P1"),
            promotion("p3", at(8 * DAY), "P1"),
        ],
        false,
    );
    let fired: Vec<&Value> = of_type(&r, "promo_on_viewed_item")
        .iter()
        .map(|t| &t["fired_at"])
        .collect();
    // p3 is 8 days later, but the view is still within the 30-day lookback.
    assert_eq!(fired, vec![&json!(iso(at(HOUR))), &json!(iso(at(8 * DAY)))]);
}

#[test]
fn a_promotion_fans_out_over_many_viewers_in_crm_order() {
    let mut events: Vec<Value> = (0..1000)
        .map(|i| {
            view(
                &format!("v{i}"),
                at(i),
                &format!("ck{i}"),
                Some(&format!("C{i:04}")),
                "P1",
            )
        })
        .collect();
    events.push(promotion("p", at(HOUR), "P1"));
    let r = run(&events, false);
    let promo = of_type(&r, "promo_on_viewed_item");
    assert_eq!(promo.len(), 1000);
    let crms: Vec<&str> = promo
        .iter()
        .map(|t| t["crm_id"].as_str().unwrap())
        .collect();
    let mut sorted = crms.clone();
    sorted.sort();
    assert_eq!(crms, sorted);
}

#[test]
fn erase_forgets_the_customer_and_a_late_event_of_theirs_is_ignored() {
    let r = run(
        &[
            json!({"type":"consent","event_id":"c1","ts":at(-HOUR),"crm_id":"C1","email":true}),
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            json!({"type":"erase","event_id":"x1","ts":at(10 * MIN),"crm_id":"C1"}),
            // Stamped before the erase, arriving after it: ignored.
            view("e2", at(5 * MIN), "ck9", Some("C1"), "P2"),
            // The erased customer's old cookie is anonymous again: kept.
            view("e3", at(11 * MIN), "ck1", None, "P3"),
            // After the erase: a new customer with default consent.
            view("e4", at(20 * MIN), "ck2", Some("C1"), "P4"),
        ],
        true,
    );
    let vnb = of_type(&r, "viewed_not_bought");
    let products: Vec<&Value> = vnb.iter().map(|t| &t["product_id"]).collect();
    assert_eq!(products, vec!["P4"], "{}", r.raw);
    assert_eq!(vnb[0]["channels"], json!(["ads"]));
    assert_eq!(vnb[0]["cookie_ids"], json!(["ck2"]));
    assert_eq!(r.summary.engine.ignored_erased, 1);
    assert!(r.dead.is_empty(), "ignored, not dead-lettered");
}

#[test]
fn duplicates_within_the_window_are_ignored_and_later_reuse_is_applied() {
    let r = run(
        &[
            view("same", at(0), "ck1", Some("C1"), "P1"),
            view("same", at(HOUR), "ck1", Some("C1"), "P2"),
            view("same", at(2 * DAY), "ck1", Some("C1"), "P3"),
        ],
        true,
    );
    assert_eq!(r.summary.engine.duplicates, 1);
    let products: Vec<&Value> = of_type(&r, "viewed_not_bought")
        .iter()
        .map(|t| &t["product_id"])
        .collect();
    assert_eq!(products, vec!["P1", "P3"]);
}

#[test]
fn duplicates_and_rejects_do_not_move_the_watermark() {
    // The duplicate and the bad line are stamped far later; W must stay put.
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            view("e1", at(3 * HOUR), "ck1", Some("C1"), "P9"),
            json!({"type":"product_view","event_id":"bad","ts":at(5 * HOUR),"cookie_id":"ck1"}),
        ],
        false,
    );
    assert!(of_type(&r, "viewed_not_bought").is_empty(), "{}", r.raw);
    assert_eq!(r.dead.len(), 1);
}

#[test]
fn checks_fire_in_order_of_time_then_crm_then_product() {
    let r = run(
        &[
            view("e1", at(0), "ckb", Some("B"), "P2"),
            view("e2", at(0), "ckb", Some("B"), "P10"),
            view("e3", at(0), "cka", Some("A"), "P3"),
            view("e4", at(-MIN), "ckz", Some("Z"), "P1"),
        ],
        true,
    );
    let order: Vec<(String, String)> = of_type(&r, "viewed_not_bought")
        .iter()
        .map(|t| {
            (
                t["crm_id"].as_str().unwrap().into(),
                t["product_id"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [("Z", "P1"), ("A", "P3"), ("B", "P10"), ("B", "P2")];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(order, expected);
}

#[test]
fn the_idle_advance_fires_checks_in_quiet_hours() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = pretext::engine::Engine::open(dir.path(), &Config::default()).unwrap();
    let mut out = Outputs::default();
    let line = view("e1", at(0), "ck1", Some("C1"), "P1").to_string();
    let event = pretext::decode::decode(line.as_bytes(), 1 << 20).unwrap();
    engine.apply(&event, &mut out).unwrap();
    assert!(out.triggers.is_empty());
    engine.advance_watermark(at(HOUR - 1), &mut out).unwrap();
    assert!(out.triggers.is_empty());
    engine.advance_watermark(at(HOUR), &mut out).unwrap();
    assert_eq!(out.triggers.len(), 1);
    // The watermark never moves back.
    engine.advance_watermark(at(0), &mut out).unwrap();
    assert_eq!(engine.watermark(), Some(at(HOUR)));
}

#[test]
fn state_and_offsets_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default();
    let line = view("e1", at(0), "ck1", Some("C1"), "P1").to_string();
    let event = pretext::decode::decode(line.as_bytes(), 1 << 20).unwrap();
    let offsets = vec![pretext::engine::SourceOffset {
        topic: "pretext.web-events".into(),
        partition: 3,
        next_offset: 1813,
    }];
    {
        let mut engine = pretext::engine::Engine::open(dir.path(), &config).unwrap();
        engine.apply(&event, &mut Outputs::default()).unwrap();
        engine.commit(&offsets).unwrap();
    }
    let mut engine = pretext::engine::Engine::open(dir.path(), &config).unwrap();
    assert_eq!(engine.stored_offsets().unwrap(), offsets);
    assert_eq!(engine.stats().pending_checks, 1);
    assert_eq!(
        engine.apply(&event, &mut Outputs::default()).unwrap(),
        pretext::engine::Outcome::Duplicate
    );
    let mut out = Outputs::default();
    engine.flush(&mut out).unwrap();
    assert_eq!(out.triggers.len(), 1);
}

#[test]
fn erase_leaves_no_key_that_names_the_customer_or_their_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = pretext::engine::Engine::open(dir.path(), &Config::default()).unwrap();
    let events = [
        view("e1", at(0), "cookie-of-alice", Some("alice-42"), "P1"),
        identify("e2", at(MIN), "second-cookie-of-alice", "alice-42"),
        purchase("e3", at(2 * MIN), "store", Some("alice-42"), None, &["P2"]),
        json!({"type":"consent","event_id":"c1","ts":at(3 * MIN),"crm_id":"alice-42","email":true}),
        json!({"type":"erase","event_id":"x1","ts":at(10 * MIN),"crm_id":"alice-42"}),
    ];
    for e in &events {
        let ev = pretext::decode::decode(e.to_string().as_bytes(), 1 << 20).unwrap();
        engine.apply(&ev, &mut Outputs::default()).unwrap();
    }
    engine.commit(&[]).unwrap();
    for cf in pretext::state::Cf::ALL {
        for key in engine.store().committed_keys(cf).unwrap() {
            let text = String::from_utf8_lossy(&key);
            assert!(
                !text.contains("alice"),
                "{} key {text:?} survives the erase",
                cf.name()
            );
        }
    }
    assert_eq!(engine.stats().pending_checks, 0);
}

#[test]
fn the_same_log_replayed_twice_gives_byte_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/sample.jsonl");
    let a = run_file(&Config::default(), sample.clone(), true, &dir);
    let b = run_file(&Config::default(), sample, true, &dir);
    assert!(!a.raw.is_empty());
    assert_eq!(a.raw, b.raw);
    assert!(of_type(&a, "viewed_not_bought").len() > 10);
    assert!(!of_type(&a, "promo_on_viewed_item").is_empty());
}

// ---- Contract section 8: holdout, frequency cap, conversions ----

fn config_with(toml: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(Some(&path), Vec::<(String, String)>::new()).unwrap()
}

/// SHA-256("pretext:<crm>") first 8 bytes mod 10000, from python3 hashlib:
/// C100 → 994, C1 → 6369, C42 → 5633.
const HELD_AT_10: &str = "C100";
const TREATED_AT_10: &str = "C1";

fn ids(v: &[Value]) -> Vec<String> {
    v.iter()
        .map(|t| t["trigger_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_trigger_carries_its_group_and_holdout_triggers_stay_off_the_triggers_output() {
    let events = [
        view("e1", at(0), "ck1", Some(HELD_AT_10), "P1"),
        view("e2", at(0), "ck2", Some(TREATED_AT_10), "P1"),
        promotion("p1", at(3 * HOUR), "P1"),
    ];
    let r = run_with(&config_with("[holdout]\npercent = 10\n"), &events, true);
    assert!(
        r.triggers.iter().all(|t| t["group"] == "treated"),
        "{}",
        r.raw
    );
    assert!(r.triggers.iter().all(|t| t["crm_id"] != HELD_AT_10));
    assert_eq!(r.triggers.len(), 2, "{}", r.raw);
    assert_eq!(r.holdout.len(), 2);
    assert!(r
        .holdout
        .iter()
        .all(|t| t["group"] == "holdout" && t["crm_id"] == HELD_AT_10));
    let e = &r.summary.engine;
    use pretext::trigger::{Group, TriggerKind};
    assert_eq!(
        e.triggers_in(TriggerKind::ViewedNotBought, Group::Holdout),
        1
    );
    assert_eq!(
        e.triggers_in(TriggerKind::PromoOnViewedItem, Group::Treated),
        1
    );
    // Decided exactly like the others: the same triggers without a holdout.
    let plain = run(&events, true);
    let mut all = ids(&r.triggers);
    all.extend(ids(&r.holdout));
    all.sort();
    let mut expected = ids(&plain.triggers);
    expected.sort();
    assert_eq!(all, expected);
    assert!(plain.triggers.iter().all(|t| t["group"] == "treated"));
}

#[test]
fn the_holdout_splits_customers_by_the_salted_hash() {
    let events: Vec<Value> = (0..400)
        .map(|i| {
            view(
                &format!("e{i}"),
                at(0),
                &format!("ck{i}"),
                Some(&format!("C{i}")),
                "P1",
            )
        })
        .collect();
    let r = run_with(
        &config_with("[holdout]\npercent = 25\nsalt = \"exp-7\"\n"),
        &events,
        true,
    );
    let holdout = pretext::engine::pressure::Holdout::new("exp-7", 2500);
    for t in &r.holdout {
        assert_eq!(
            holdout.group_of(t["crm_id"].as_str().unwrap()),
            pretext::trigger::Group::Holdout
        );
    }
    for t in &r.triggers {
        assert_eq!(
            holdout.group_of(t["crm_id"].as_str().unwrap()),
            pretext::trigger::Group::Treated
        );
    }
    assert_eq!(r.holdout.len() + r.triggers.len(), 400);
    assert!((60..140).contains(&r.holdout.len()), "{}", r.holdout.len());
}

#[test]
fn the_cap_counts_both_types_within_the_window_and_frees_up_beyond_it() {
    let cfg = config_with("[pressure]\nmax_triggers = 2\nwindow = \"24h\"\n");
    let r = run_with(
        &cfg,
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),   // vnb at 1h
            view("e2", at(MIN), "ck1", Some("C1"), "P2"), // vnb at 1h01
            tick("t1", at(HOUR + 10 * MIN)),              // both fire
            promotion("p1", at(2 * HOUR), "P1"),          // capped: 2 within 24h
            view("e3", at(3 * HOUR), "ck1", Some("C1"), "P3"), // vnb at 4h: capped
            // vnb at 26h: 25h and 24h59 from the two fired, beyond 24h.
            view("e4", at(25 * HOUR), "ck1", Some("C1"), "P4"),
        ],
        true,
    );
    let fired: Vec<(&str, &str)> = r
        .triggers
        .iter()
        .filter(|t| t["crm_id"] == "C1")
        .map(|t| {
            (
                t["type"].as_str().unwrap(),
                t["product_id"].as_str().unwrap(),
            )
        })
        .collect();
    let vnb = "viewed_not_bought";
    assert_eq!(
        fired,
        vec![(vnb, "P1"), (vnb, "P2"), (vnb, "P4")],
        "{}",
        r.raw
    );
    let capped = r
        .summary
        .engine
        .suppressed_of(pretext::engine::Suppressed::FrequencyCap);
    assert_eq!(capped, 2);
}

#[test]
fn a_capped_trigger_starts_no_cooldown_counts_toward_no_cap_and_cannot_convert() {
    let cfg = config_with("[pressure]\nmax_triggers = 1\nwindow = \"2h\"\n");
    let r = run_with(
        &cfg,
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"), // vnb P1 at 1h: fires
            view("e2", at(30 * MIN), "ck1", Some("C1"), "P2"), // vnb P2 at 1h30: capped
            tick("t1", at(HOUR + 40 * MIN)),
            // Would convert the capped P2 trigger, had it fired.
            purchase("b1", at(HOUR + 35 * MIN), "web", Some("C1"), None, &["P2"]),
            // A new P2 session checked at 3h15: no cooldown from the capped
            // one, and 1h45 from it (within 2h) yet not capped by it, while
            // 2h15 from the fired P1 (beyond 2h).
            view("e3", at(2 * HOUR + 15 * MIN), "ck1", Some("C1"), "P2"),
            // Checked at 3h30, 15 min after the P2 that fired: capped.
            view("e4", at(2 * HOUR + 30 * MIN), "ck1", Some("C1"), "P3"),
        ],
        true,
    );
    let fired: Vec<(&str, &str)> = r
        .triggers
        .iter()
        .filter(|t| t["crm_id"] == "C1")
        .map(|t| {
            (
                t["product_id"].as_str().unwrap(),
                t["fired_at"].as_str().unwrap(),
            )
        })
        .collect();
    let (one, two) = (iso(at(HOUR)), iso(at(3 * HOUR + 15 * MIN)));
    assert_eq!(
        fired,
        vec![("P1", one.as_str()), ("P2", two.as_str())],
        "{}",
        r.raw
    );
    let capped = r
        .summary
        .engine
        .suppressed_of(pretext::engine::Suppressed::FrequencyCap);
    assert_eq!(capped, 2);
    assert!(r.conversions.is_empty(), "{:?}", r.conversions);
}

#[test]
fn the_cap_spans_both_groups() {
    let cfg = config_with("[holdout]\npercent = 100\n[pressure]\nmax_triggers = 1\n");
    let r = run_with(
        &cfg,
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            view("e2", at(MIN), "ck1", Some("C1"), "P2"),
        ],
        true,
    );
    assert!(r.triggers.is_empty());
    assert_eq!(r.holdout.len(), 1, "{:?}", r.holdout);
    assert_eq!(
        r.summary
            .engine
            .suppressed_of(pretext::engine::Suppressed::FrequencyCap),
        1
    );
}

#[test]
fn one_purchase_converts_a_viewed_not_bought_and_a_promo_of_the_same_product() {
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            tick("t1", at(HOUR + 10 * MIN)), // vnb fires at 1h
            promotion("p1", at(2 * HOUR), "P1"),
            purchase("b1", at(DAY), "store", Some("C1"), None, &["P1", "P1"]),
            purchase("b2", at(DAY + HOUR), "web", Some("C1"), None, &["P1"]),
        ],
        true,
    );
    let fired = of_type(&r, "viewed_not_bought");
    let promo = of_type(&r, "promo_on_viewed_item");
    assert_eq!((fired.len(), promo.len()), (1, 1), "{}", r.raw);
    let conv: Vec<&Value> = r
        .conversions
        .iter()
        .filter(|c| c["crm_id"] == "C1")
        .collect();
    assert_eq!(conv.len(), 2, "{:?}", r.conversions);
    // In the order they fired, each converted once, by the first purchase.
    assert_eq!(conv[0]["trigger_id"], fired[0]["trigger_id"]);
    assert_eq!(conv[1]["trigger_id"], promo[0]["trigger_id"]);
    for c in &conv {
        assert_eq!(c["order_id"], "o-b1");
        assert_eq!(c["channel"], "store");
        assert_eq!(c["group"], "treated");
        assert_eq!(c["product_id"], "P1");
        assert_eq!(c["converted_at"], iso(at(DAY)));
    }
    assert_eq!(conv[0]["fired_at"], iso(at(HOUR)));
    assert_eq!(conv[1]["type"], "promo_on_viewed_item");
}

#[test]
fn a_purchase_outside_the_window_or_of_another_product_converts_nothing() {
    let cfg = config_with("[measurement]\nattribution_window = \"2d\"\n");
    let r = run_with(
        &cfg,
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            view("e2", at(0), "ck2", Some("C2"), "P1"),
            tick("t1", at(HOUR + 10 * MIN)),
            purchase("b0", at(DAY), "web", Some("C1"), None, &["P9"]),
            // Exactly fired_at + window: inside (the interval is closed there).
            purchase("b1", at(HOUR + 2 * DAY), "web", Some("C1"), None, &["P1"]),
            // One millisecond beyond: outside.
            purchase(
                "b2",
                at(HOUR + 2 * DAY + 1),
                "web",
                Some("C2"),
                None,
                &["P1"],
            ),
        ],
        true,
    );
    let conv: Vec<&str> = r
        .conversions
        .iter()
        .map(|c| c["crm_id"].as_str().unwrap())
        .collect();
    assert_eq!(conv, vec!["C1"], "{:?}", r.conversions);
}

#[test]
fn a_stitched_cookie_only_purchase_converts_when_stitched() {
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            tick("t1", at(HOUR + 10 * MIN)), // vnb of C1 fires at 1h
            // An anonymous cookie buys P1: kept, not yet anyone's.
            purchase("b1", at(2 * HOUR), "web", None, Some("ck7"), &["P1"]),
            tick("t2", at(3 * HOUR)),
        ],
        false,
    );
    assert_eq!(of_type(&r, "viewed_not_bought").len(), 1);
    assert!(r.conversions.is_empty());
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            tick("t1", at(HOUR + 10 * MIN)),
            purchase("b1", at(2 * HOUR), "web", None, Some("ck7"), &["P1"]),
            identify("i1", at(3 * HOUR), "ck7", "C1"),
        ],
        false,
    );
    assert_eq!(r.conversions.len(), 1, "{}", r.raw);
    assert_eq!(r.conversions[0]["order_id"], "o-b1");
    assert_eq!(r.conversions[0]["converted_at"], iso(at(2 * HOUR)));
}

#[test]
fn a_late_trigger_converts_only_on_purchases_stamped_after_it_and_applied_after_it() {
    let r = run(
        &[
            tick("t0", at(10 * HOUR)),
            // Purchase stamped at 3h arrives first; a view stamped at 0 comes
            // late: its check (1h) is overdue and fires at once, in the past.
            purchase("b1", at(3 * HOUR), "web", Some("C1"), None, &["P2"]),
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            // Stamped before the late trigger's fired_at: not a conversion.
            purchase("b2", at(30 * MIN), "web", Some("C1"), None, &["P1"]),
            // Stamped after it: converts, though stamped before the watermark.
            purchase("b3", at(2 * HOUR), "store", Some("C1"), None, &["P1"]),
        ],
        false,
    );
    let fired = of_type(&r, "viewed_not_bought");
    assert_eq!(fired.len(), 1, "{}", r.raw);
    assert_eq!(fired[0]["fired_at"], iso(at(HOUR)));
    assert_eq!(r.conversions.len(), 1, "{:?}", r.conversions);
    assert_eq!(r.conversions[0]["order_id"], "o-b3");
}

#[test]
fn a_purchase_applied_before_the_trigger_fired_does_not_convert_it() {
    // The purchase is stamped after the check time but applied before the
    // check fires: the check is suppressed (purchased), and nothing converts.
    let r = run(
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            purchase("b1", at(HOUR + MIN), "web", Some("C1"), None, &["P1"]),
        ],
        true,
    );
    assert!(of_type(&r, "viewed_not_bought").is_empty());
    assert!(r.conversions.is_empty());
}

#[test]
fn erase_closes_open_triggers_and_forgets_fired_times() {
    let cfg = config_with("[pressure]\nmax_triggers = 1\n");
    let r = run_with(
        &cfg,
        &[
            view("e1", at(0), "ck1", Some("C1"), "P1"),
            tick("t1", at(HOUR + 10 * MIN)),
            json!({"type":"erase","event_id":"x1","ts":at(2 * HOUR),"crm_id":"C1"}),
            // A new customer after the erase: its purchase converts nothing
            // and the cap starts afresh.
            purchase("b1", at(3 * HOUR), "web", Some("C1"), None, &["P1"]),
            view("e2", at(4 * HOUR), "ck2", Some("C1"), "P2"),
        ],
        true,
    );
    let fired: Vec<&str> = of_type(&r, "viewed_not_bought")
        .iter()
        .map(|t| t["product_id"].as_str().unwrap())
        .collect();
    assert_eq!(fired, vec!["P1", "P2"], "{}", r.raw);
    assert!(
        r.conversions.iter().all(|c| c["crm_id"] != "C1"),
        "{:?}",
        r.conversions
    );
}

#[test]
fn duplicates_convert_nothing_and_holdout_conversions_are_counted_apart() {
    let cfg = config_with("[holdout]\npercent = 10\n");
    let r = run_with(
        &cfg,
        &[
            view("e1", at(0), "ck1", Some(HELD_AT_10), "P1"),
            tick("t1", at(HOUR + 10 * MIN)),
            purchase("b1", at(2 * HOUR), "web", Some(HELD_AT_10), None, &["P1"]),
            // The same event again: a duplicate, ignored.
            purchase("b1", at(2 * HOUR), "web", Some(HELD_AT_10), None, &["P1"]),
        ],
        true,
    );
    assert_eq!(r.holdout.len(), 1);
    assert_eq!(r.conversions.len(), 1);
    assert_eq!(r.conversions[0]["group"], "holdout");
    assert_eq!(r.conversions[0]["trigger_id"], r.holdout[0]["trigger_id"]);
    use pretext::trigger::{Group, TriggerKind};
    assert_eq!(
        r.summary
            .engine
            .conversions_in(TriggerKind::ViewedNotBought, Group::Holdout),
        1
    );
    assert!(r
        .summary
        .render()
        .contains("conversions: viewed_not_bought (treated 0, holdout 1)"));
}

// State retention (`state.retention`): by default nothing is forgotten, so
// an event however late is decided as the contract says; a bound trades
// exactness for a bounded state only for events later than it.

/// An exact retry of a view, arriving after the stream moved 25 h on.
fn late_retry() -> Vec<Value> {
    let v1 = view("v1", at(0), "k1", None, "P1");
    vec![
        identify("i1", at(0), "k1", "C1"),
        v1.clone(),
        identify("i2", at(25 * HOUR), "k2", "C2"),
        v1,
        promotion("p1", at(30 * MIN), "P1"),
    ]
}

#[test]
fn a_retry_is_a_duplicate_however_late_it_arrives() {
    let r = run(&late_retry(), false);
    assert_eq!(r.summary.engine.duplicates, 1, "{}", r.raw);
    let promo = of_type(&r, "promo_on_viewed_item");
    assert_eq!(promo.len(), 1, "{}", r.raw);
    assert_eq!(promo[0]["view_count"], 1);
}

#[test]
fn a_bounded_retention_forgets_ids_behind_it() {
    let mut config = Config::default();
    config.state.retention = pretext::config::Retention::Within(pretext::config::Dur(5 * MIN));
    let r = run_with(&config, &late_retry(), false);
    assert_eq!(r.summary.engine.duplicates, 0, "{}", r.raw);
    assert_eq!(of_type(&r, "promo_on_viewed_item")[0]["view_count"], 2);
}

#[test]
fn a_late_check_counts_views_older_than_the_lookback_behind_the_stream() {
    let mut config = Config::default();
    config.scoring.lookback = pretext::config::Dur(6 * HOUR);
    config.triggers.viewed_not_bought.cooldown = pretext::config::Dur(HOUR);
    let events = [
        identify("i1", at(0), "k1", "C1"),
        view("v1", at(30 * MIN), "k1", None, "P1"),
        view("v2", at(8 * HOUR), "k1", None, "P2"),
        // Late: its check (06:00) is already due and fires at once; its
        // window [00:00, 06:00] holds v1 although v1 is 7.5 h behind.
        view("v3", at(5 * HOUR), "k1", None, "P1"),
    ];
    let r = run_with(&config, &events, false);
    let late: Vec<_> = of_type(&r, "viewed_not_bought")
        .into_iter()
        .filter(|t| t["fired_at"] == iso(at(6 * HOUR)))
        .collect();
    assert_eq!(late.len(), 1, "{}", r.raw);
    assert_eq!(late[0]["view_count"], 2, "{}", r.raw);
}

#[test]
fn a_stitched_view_checks_with_the_customers_older_views() {
    let mut config = Config::default();
    config.scoring.lookback = pretext::config::Dur(HOUR);
    config.watermark.allowed_lateness = pretext::config::Dur(0);
    config.triggers.viewed_not_bought.delay = pretext::config::Dur(5 * MIN);
    config.triggers.viewed_not_bought.cooldown = pretext::config::Dur(10 * MIN);
    let events = [
        identify("i1", at(0), "k1", "C1"),
        view("v1", at(0), "k1", None, "P1"),
        view("v2", at(50 * MIN), "k2", None, "P1"),
        // k2's first link: v2 is stitched at 10:50, its check (10:55) is
        // due at once and counts v1 (10:00) in [09:55, 10:55].
        identify("i2", at(100 * MIN), "k2", "C1"),
    ];
    let r = run_with(&config, &events, false);
    let stitched: Vec<_> = of_type(&r, "viewed_not_bought")
        .into_iter()
        .filter(|t| t["fired_at"] == iso(at(55 * MIN)))
        .collect();
    assert_eq!(stitched.len(), 1, "{}", r.raw);
    assert_eq!(stitched[0]["view_count"], 2, "{}", r.raw);
}
