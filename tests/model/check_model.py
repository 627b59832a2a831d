#!/usr/bin/env python3
"""The model on hand-made streams whose outcome CONTRACT.md fixes, worked
out by hand (the findings' repros among them): a guard against a model that
agrees with pretext by being equally wrong. Run by tests/model.rs; exits 1
with the failed cases."""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def ev(kind, eid, ts, **fields):
    return json.dumps({"type": kind, "event_id": eid, "ts": f"2026-11-22T{ts}:00Z", **fields})


def run(lines, config="", flush=False):
    with tempfile.TemporaryDirectory() as d:
        inp, cfg = f"{d}/in.jsonl", f"{d}/c.toml"
        with open(inp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(config)
        args = [sys.executable, f"{HERE}/contract_model.py", cfg, d] + (["--flush"] if flush else [])
        subprocess.run(args + [inp], check=True)
        out = {}
        for name in ("triggers", "holdout", "conversions", "dead-letter"):
            with open(f"{d}/{name}.jsonl", encoding="utf-8") as f:
                out[name] = [json.loads(line) for line in f]
        with open(f"{d}/summary.txt", encoding="utf-8") as f:
            out["summary"] = f.read()
        return out


def repro(name, flush=False):
    base = f"{HERE}/repro/{name}"
    with open(base + ".jsonl", encoding="utf-8") as f:
        lines = f.read().splitlines()
    config = ""
    if os.path.exists(base + ".toml"):
        with open(base + ".toml", encoding="utf-8") as f:
            config = f.read()
    return run(lines, config, flush)


def picked(rows, *fields):
    return [tuple(r[f] for f in fields) for r in rows]


CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def f1_a_retry_of_an_old_event_is_a_duplicate():
    out = repro("F1-dedup-forgotten")
    promo = [t for t in out["triggers"] if t["type"] == "promo_on_viewed_item"]
    return picked(promo, "view_count", "intent_score") == [(1, 1.0)]


@case
def f2_a_late_check_sees_its_whole_lookback():
    # check at 06:00 over [00:00, 06:00]: 2^-(5.5/72) + 2^-(1/72) = 1.9388
    out = repro("F2-history-pruned")
    late = [t for t in out["triggers"] if t["fired_at"] == "2026-11-22T06:00:00Z"]
    return picked(late, "view_count", "intent_score") == [(2, 1.94)]


@case
def f2b_a_stitched_check_sees_its_whole_lookback():
    out = repro("F2b-stitched-history-pruned")
    late = [t for t in out["triggers"] if t["fired_at"] == "2026-11-22T10:55:00Z"]
    return picked(late, "view_count", "intent_score") == [(2, 1.99)]


@case
def an_early_fire_sees_the_link_the_view_carries_but_not_the_view():
    out = run([
        ev("identify", "i1", "10:00", cookie_id="k1", crm_id="C1"),
        ev("product_view", "v1", "10:00", cookie_id="k1", product_id="P1"),
        ev("product_view", "v2", "11:30", cookie_id="k2", product_id="P1", crm_id="C1"),
    ], '[watermark]\nallowed_lateness = "3h"\n')
    return picked(out["triggers"], "fired_at", "view_count", "intent_score", "cookie_ids") == [
        ("2026-11-22T11:00:00Z", 1, 0.99, ["k2", "k1"])]


@case
def a_purchase_stamped_after_the_check_already_applied_suppresses_it():
    out = run([
        ev("product_view", "v1", "10:00", cookie_id="k1", product_id="P1", crm_id="C1"),
        ev("purchase", "o1", "11:30", order_id="O1", channel="store", crm_id="C1",
           items=[{"product_id": "P1"}]),
    ], '[watermark]\nallowed_lateness = "3h"\n', flush=True)
    return out["triggers"] == [] and "purchased 1," in out["summary"]


@case
def erase_ignores_older_events_and_a_newer_one_starts_afresh():
    out = run([
        ev("product_view", "v1", "10:00", cookie_id="k1", product_id="P1", crm_id="C1"),
        ev("erase", "x1", "10:30", crm_id="C1"),
        ev("product_view", "v2", "10:10", cookie_id="k2", product_id="P2", crm_id="C1"),
        ev("product_view", "v3", "10:20", cookie_id="k1", product_id="P3"),
        ev("identify", "i1", "10:40", cookie_id="k1", crm_id="C1"),
    ], flush=True)
    # v2 ignored; v3 kept for k1 (anonymous again), stitched by i1
    return (picked(out["triggers"], "product_id", "fired_at", "cookie_ids", "channels") == [
        ("P3", "2026-11-22T11:20:00Z", ["k1"], ["ads"])]
        and "1 ignored" in out["summary"])


@case
def bad_lines_are_dead_lettered_with_their_line_number():
    out = run(["", "{", ev("identify", "i1", "10:00", cookie_id="k1"), "[]",
               ev("promotion", "p1", "10:00", product_id="P1", discount_pct=0)])
    return (picked(out["dead-letter"], "reason", "offset") == [
        ("invalid_json", 1), ("invalid_json", 2), ("missing_field", 3),
        ("invalid_json", 4), ("invalid_value", 5)]
        and out["summary"].startswith("replayed 5 messages: 0 applied"))


@case
def the_holdout_hash_is_the_contracts():
    # SHA-256("pretext:C42") first 8 bytes mod 10000 = 5633
    lines = [ev("product_view", "v1", "10:00", cookie_id="k1", product_id="P1", crm_id="C42")]
    inside = run(lines, "[holdout]\npercent = 56.34\n", flush=True)
    outside = run(lines, "[holdout]\npercent = 56.33\n", flush=True)
    return (picked(inside["holdout"], "group") == [("holdout",)] and inside["triggers"] == []
            and picked(outside["triggers"], "group") == [("treated",)])


@case
def a_purchase_converts_the_open_triggers_of_its_product_once():
    out = run([
        ev("product_view", "v1", "10:00", cookie_id="k1", product_id="P1", crm_id="C1"),
        ev("promotion", "p1", "10:30", product_id="P1"),
        ev("product_view", "v2", "12:00", cookie_id="k1", product_id="P2"),
        ev("purchase", "o1", "12:10", order_id="O1", channel="web", cookie_id="k1",
           items=[{"product_id": "P1"}, {"product_id": "P1"}]),
        ev("purchase", "o2", "12:20", order_id="O2", channel="web", crm_id="C1",
           items=[{"product_id": "P1"}]),
    ])
    return picked(out["conversions"], "type", "fired_at", "order_id") == [
        ("promo_on_viewed_item", "2026-11-22T10:30:00Z", "O1"),
        ("viewed_not_bought", "2026-11-22T11:00:00Z", "O1")]


@case
def of_two_links_with_the_same_ts_the_later_arriving_wins():
    out = run([
        ev("identify", "i1", "10:00", cookie_id="k1", crm_id="C1"),
        ev("identify", "i2", "10:00", cookie_id="k1", crm_id="C2"),
        ev("identify", "i3", "09:00", cookie_id="k1", crm_id="C3"),  # older: loses
        ev("product_view", "v1", "10:05", cookie_id="k1", product_id="P1"),
    ], flush=True)
    return picked(out["triggers"], "crm_id", "cookie_ids") == [("C2", ["k1"])]


@case
def the_buffer_keeps_the_latest_by_ts_and_drops_beyond_the_lookback():
    out = run([
        ev("product_view", "v1", "10:30", cookie_id="k1", product_id="P1"),
        ev("product_view", "v2", "10:00", cookie_id="k1", product_id="P2"),  # oldest: evicted
        ev("product_view", "v3", "10:40", cookie_id="k1", product_id="P3"),
        ev("identify", "i1", "12:35", cookie_id="k1", crm_id="C1"),  # lookback 2h: v1 dropped
    ], '[identity]\nanonymous_buffer = 2\n[scoring]\nlookback = "2h"\n', flush=True)
    return picked(out["triggers"], "product_id", "fired_at") == [("P3", "2026-11-22T11:40:00Z")]


@case
def a_cooldown_looks_both_ways_and_the_cap_counts_fired_triggers():
    out = run([
        ev("product_view", "v1", "12:00", cookie_id="k1", product_id="P1", crm_id="C1"),
        ev("product_view", "v2", "12:00", cookie_id="k1", product_id="P2", crm_id="C1"),
        ev("product_view", "v3", "14:00", cookie_id="k1", product_id="P3", crm_id="C1"),
        ev("product_view", "v4", "10:30", cookie_id="k1", product_id="P1", crm_id="C1"),
    ], '[pressure]\nmax_triggers = 1\nwindow = "1h"\n'
       '[triggers.viewed_not_bought]\ncooldown = "2h"\n', flush=True)
    # 13:00 P1 fires, P2 capped; v4's late check at 11:30 is 1.5 h before
    # the P1 fired at 13:00: cooldown; 15:00 P3 is 2 h from P1: fires
    return (picked(out["triggers"], "product_id", "fired_at") == [
        ("P1", "2026-11-22T13:00:00Z"), ("P3", "2026-11-22T15:00:00Z")]
        and "cooldown 1, frequency_cap 1" in out["summary"])


@case
def a_promotion_skips_a_buyer_and_passes_an_expired_valid_until_on():
    out = run([
        ev("product_view", "v1", "10:00", cookie_id="k1", product_id="P1", crm_id="C1"),
        ev("product_view", "v2", "10:00", cookie_id="k2", product_id="P1", crm_id="C2"),
        ev("purchase", "o1", "10:00", order_id="O1", channel="store", crm_id="C2",
           items=[{"product_id": "P1"}]),
        ev("promotion", "p1", "10:20", product_id="P1", valid_until="2026-11-21T00:00:00+01:00",
           discount_pct=10),
    ])
    return picked(out["triggers"], "crm_id", "promotion") == [
        ("C1", {"discount_pct": 10, "promo_price": None, "valid_until": "2026-11-20T23:00:00Z"})]


def main():
    failed = [name for name, fn in CASES.items() if not fn()]
    for name in failed:
        print(f"model case failed: {name}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
