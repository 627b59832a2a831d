#!/usr/bin/env python3
"""Reference model of the pretext contract v2 (sections 2, 3, 4, 6 and 8).

Written from /work/shared/CONTRACT.md alone (plus the project's documented
choices where the contract is silent: README "Where the contract is silent",
docs/architecture.md, docs/reliability.md), never from src/engine, so that it
can catch the engine's bugs. It is slow on purpose: every decision is
recomputed from the full kept history, which is never pruned.

usage: contract_model.py CONFIG.toml OUT_DIR [--flush] INPUT.jsonl...
writes OUT_DIR/triggers.jsonl, holdout.jsonl, conversions.jsonl,
dead-letter.jsonl and summary.txt (the counting lines of the replay
summary). trigger_id is written as null (the contract fixes only what it
depends on; tests/model.rs checks that), and a dead letter's `error` text
as null (free text).
"""

import base64
import gzip
import hashlib
import json
import math
import re
import sys
try:
    import tomllib
except ImportError:  # Python < 3.11: the flat subset the tests write
    tomllib = None
from datetime import datetime, timezone

import validate

UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return int(m.group(1)) * UNITS[m.group(2)]


class Config:
    def __init__(self, path):
        with open(path, "rb") as f:
            raw = tomllib.load(f) if tomllib else parse_toml(f.read().decode())

        def get(section, key, default):
            node = raw
            for part in section.split("."):
                node = node.get(part, {})
            return node.get(key, default)

        self.dedup_window = duration(get("input", "dedup_window", "24h"))
        self.lateness = duration(get("watermark", "allowed_lateness", "5m"))
        self.buffer = int(get("identity", "anonymous_buffer", 50))
        self.half_life = duration(get("scoring", "half_life", "72h"))
        self.lookback = duration(get("scoring", "lookback", "30d"))
        self.weights = {
            "product_view": float(get("scoring.weights", "product_view", 1.0)),
            "add_to_cart": float(get("scoring.weights", "add_to_cart", 3.0)),
        }
        self.delay = duration(get("triggers.viewed_not_bought", "delay", "1h"))
        self.min_score = float(get("triggers.viewed_not_bought", "min_score", 0.5))
        self.cooldown = {
            "viewed_not_bought": duration(get("triggers.viewed_not_bought", "cooldown", "7d")),
            "promo_on_viewed_item": duration(
                get("triggers.promo_on_viewed_item", "cooldown", "7d")
            ),
        }
        self.holdout_percent = float(get("holdout", "percent", 0))
        self.salt = get("holdout", "salt", "pretext")
        self.max_triggers = int(get("pressure", "max_triggers", 0))
        self.pressure_window = duration(get("pressure", "window", "24h"))
        self.attribution = duration(get("measurement", "attribution_window", "7d"))
        self.max_bytes = int(get("input", "max_message_bytes", 1048576))


def parse_toml(text):
    """[a.b] tables of `key = "string" | number | bool` lines."""
    raw, node = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            node = raw
            for part in line.strip("[]").split("."):
                node = node.setdefault(part, {})
            continue
        key, value = (x.strip() for x in line.split("=", 1))
        node[key] = json.loads(value) if value not in ("true", "false") else value == "true"
    return raw


EXP2 = getattr(math, "exp2", lambda x: 2.0 ** x)


def parse_ts(value):
    return validate.parse_time(value)


# The last instant an output time can name (RFC 3339 has four-digit years):
# a check that would fall later falls here (README, "Where the contract is
# silent").
MAX_MS = 253_402_300_799_999


def check_time(t, delay):
    return min(t + delay, MAX_MS)


def fmt_ts(ms):
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"


def round2(x):
    """Half away from zero to 2 decimals of the f64 x * 100."""
    y = abs(x * 100)
    f = math.floor(y)
    r = (f + 1 if y - f >= 0.5 else f) / 100
    return math.copysign(r, x) if r else 0.0


class Customer:
    def __init__(self):
        self.views = []  # (product, ts, weight)
        self.purchases = []  # (product, ts)
        self.channels = {"ads": True, "email": False, "sms": False}
        self.activity = {}  # cookie -> latest ts of its events applied to C
        self.fired = []  # dicts: type, product, fired_at, group, converted


class Model:
    def __init__(self, cfg):
        self.cfg = cfg
        self.max_ts = None
        self.seen_ids = {}  # event_id -> [ts of applied events]
        self.tombstones = {}  # crm -> erase ts
        self.links = {}  # cookie -> (crm, ts)
        self.kept = {}  # cookie -> [(ts, seq, event)]
        self.customers = {}
        self.pending = {}  # (crm, product) -> [check_at, first_view]
        self.category = {}
        self.seq = 0
        self.triggers = []
        self.holdout = []
        self.conversions = []
        self.count = {"applied": 0, "duplicate": 0, "ignored": 0}
        self.suppressed = dict.fromkeys(
            ("purchased", "low_score", "cooldown", "frequency_cap"), 0)

    # ---- helpers
    def watermark(self):
        return self.max_ts - self.cfg.lateness

    def cust(self, crm):
        if crm not in self.customers:
            self.customers[crm] = Customer()
        return self.customers[crm]

    def in_holdout(self, crm):
        x = self.cfg.holdout_percent
        if x <= 0:
            return False
        digest = hashlib.sha256(f"{self.cfg.salt}:{crm}".encode()).digest()
        h = int.from_bytes(digest[:8], "big")
        return h % 10000 < math.floor(100 * x + 0.5)

    def score(self, c, product, t):
        bought = [ts for p, ts in c.purchases if p == product and ts <= t]
        after = max(bought) if bought else None
        total = 0.0
        # summed in ts order (ties: arrival), exp2 as the f64 libm has it, so
        # that a score on a rounding or min_score edge is the same float
        for p, ts, w in sorted(c.views, key=lambda v: v[1]):
            if p != product or not (t - self.cfg.lookback <= ts <= t):
                continue
            if after is not None and ts <= after:
                continue
            total += w * EXP2(-(t - ts) / self.cfg.half_life)
        return total

    def views_in(self, c, product, t):
        return [ts for p, ts, _ in c.views if p == product and t - self.cfg.lookback <= ts <= t]

    def cookie_ids(self, crm, c):
        linked = [k for k, (owner, _) in self.links.items() if owner == crm]
        linked.sort(key=lambda k: (-c.activity.get(k, -(10**18)), k))
        return linked[:5]

    # ---- firing
    def decide(self, crm, ttype, product, t, first_view, promotion):
        """Apply purchase/score/cooldown/cap in order; fire if all pass."""
        c = self.cust(crm)
        cfg = self.cfg
        reason = self.suppression(c, ttype, product, t, first_view)
        if reason is not None:
            self.suppressed[reason] += 1
            return
        views = self.views_in(c, product, t)
        group = "holdout" if self.in_holdout(crm) else "treated"
        out = {
            "trigger_id": None,
            "type": ttype,
            "crm_id": crm,
            "product_id": product,
            "category": self.category.get(product),
            "intent_score": round2(self.score(c, product, t)),
            "view_count": len(views),
            "last_viewed_at": fmt_ts(max(views)) if views else None,
            "fired_at": fmt_ts(t),
            "cookie_ids": self.cookie_ids(crm, c),
            "channels": [ch for ch in ("ads", "email", "sms") if c.channels[ch]],
            "promotion": promotion,
            "group": group,
        }
        (self.holdout if group == "holdout" else self.triggers).append(out)
        c.fired.append({"type": ttype, "product": product, "fired_at": t,
                        "group": group, "converted": False})

    def suppression(self, c, ttype, product, t, first_view):
        cfg = self.cfg
        if ttype == "viewed_not_bought":
            if any(p == product and ts >= first_view for p, ts in c.purchases):
                return "purchased"
            if self.score(c, product, t) < cfg.min_score:
                return "low_score"
        cd = cfg.cooldown[ttype]
        if any(f["type"] == ttype and f["product"] == product and abs(t - f["fired_at"]) < cd
               for f in c.fired):
            return "cooldown"
        if cfg.max_triggers > 0:
            near = sum(1 for f in c.fired if abs(t - f["fired_at"]) < cfg.pressure_window)
            if near >= cfg.max_triggers:
                return "frequency_cap"
        return None

    def fire_check(self, key):
        check_at, first_view = self.pending.pop(key)
        crm, product = key
        self.decide(crm, "viewed_not_bought", product, check_at, first_view, None)

    def fire_due(self, limit):
        due = sorted((v[0], k[0], k[1]) for k, v in self.pending.items() if v[0] <= limit)
        for _, crm, product in due:
            self.fire_check((crm, product))

    # ---- applying to a customer
    def apply_view(self, crm, ev):
        c = self.cust(crm)
        t, product = ev["_ts"], ev["product_id"]
        c.views.append((product, t, self.cfg.weights[ev["type"]]))
        key = (crm, product)
        if key in self.pending:
            check_at, first_view = self.pending[key]
            if t <= check_at:
                self.pending[key] = [max(check_at, check_time(t, self.cfg.delay)), min(first_view, t)]
                return
            self.fire_check(key)
        self.pending[key] = [check_time(t, self.cfg.delay), t]

    def apply_purchase(self, crm, ev):
        c = self.cust(crm)
        t = ev["_ts"]
        products = []
        for item in ev["items"]:
            if item["product_id"] not in products:
                products.append(item["product_id"])
        for p in products:
            c.purchases.append((p, t))
        for p in products:
            for f in c.fired:
                if f["converted"] or f["product"] != p:
                    continue
                if f["fired_at"] < t <= f["fired_at"] + self.cfg.attribution:
                    f["converted"] = True
                    self.conversions.append({
                        "trigger_id": None, "type": f["type"], "group": f["group"],
                        "crm_id": crm, "product_id": p, "fired_at": fmt_ts(f["fired_at"]),
                        "order_id": ev["order_id"], "channel": ev["channel"],
                        "converted_at": fmt_ts(t),
                    })

    def apply_to_customer(self, crm, ev):
        """An event of a cookie (or a crm) applied to customer crm."""
        c = self.cust(crm)
        cookie = ev.get("cookie_id")
        if cookie is not None:
            c.activity[cookie] = max(c.activity.get(cookie, ev["_ts"]), ev["_ts"])
        if ev["type"] in ("product_view", "add_to_cart"):
            self.apply_view(crm, ev)
        elif ev["type"] == "purchase":
            self.apply_purchase(crm, ev)

    def keep(self, cookie, ev):
        self.seq += 1
        kept = self.kept.setdefault(cookie, [])
        kept.append((ev["_ts"], self.seq, ev))
        if len(kept) > self.cfg.buffer:
            # drop the oldest (ts, then earliest arrival)
            kept.remove(min(kept, key=lambda e: (e[0], e[1])))

    def link(self, cookie, crm, t):
        """Returns the kept events to stitch (first link only)."""
        current = self.links.get(cookie)
        if current is None:
            self.links[cookie] = (crm, t)
            kept = self.kept.pop(cookie, [])
            kept.sort(key=lambda e: e[1])
            return [e for ts, _, e in kept if ts >= t - self.cfg.lookback]
        if t >= current[1]:
            self.links[cookie] = (crm, t)
        return []

    def erase(self, crm, t):
        self.tombstones[crm] = max(self.tombstones.get(crm, t), t)
        self.customers.pop(crm, None)
        for key in [k for k in self.pending if k[0] == crm]:
            del self.pending[key]
        for cookie in [k for k, (owner, _) in self.links.items() if owner == crm]:
            del self.links[cookie]
            self.kept.pop(cookie, None)

    def promotion(self, ev):
        t, product = ev["_ts"], ev["product_id"]
        promo = {
            "discount_pct": ev.get("discount_pct"),
            "promo_price": ev.get("promo_price"),
            "valid_until": fmt_ts(parse_ts(ev["valid_until"]))
            if ev.get("valid_until") is not None else None,
        }
        for crm in sorted(self.customers):
            c = self.customers[crm]
            views = self.views_in(c, product, t)
            if not views:
                continue
            latest = max(views)
            if any(p == product and ts >= latest for p, ts in c.purchases):
                continue
            self.decide(crm, "promo_on_viewed_item", product, t, None, dict(promo))

    # ---- one input event
    def is_duplicate(self, ev):
        return any(abs(ev["_ts"] - ts) <= self.cfg.dedup_window
                   for ts in self.seen_ids.get(ev["event_id"], []))

    def erased(self, ev):
        crm = ev.get("crm_id")
        return crm is not None and crm in self.tombstones and ev["_ts"] <= self.tombstones[crm]

    def apply(self, ev):
        if self.is_duplicate(ev):
            self.count["duplicate"] += 1
            return
        if self.erased(ev):
            self.count["ignored"] += 1
            return
        self.count["applied"] += 1
        self.seen_ids.setdefault(ev["event_id"], []).append(ev["_ts"])
        t = ev["_ts"]
        self.max_ts = t if self.max_ts is None else max(self.max_ts, t)
        kind = ev["type"]
        if kind == "promotion":
            self.promotion(ev)
        elif kind == "consent":
            c = self.cust(ev["crm_id"])
            for ch in ("ads", "email", "sms"):
                if ev.get(ch) is not None:
                    c.channels[ch] = ev[ch]
        elif kind == "erase":
            self.erase(ev["crm_id"], t)
        else:
            self.apply_identity_event(ev)
        # after the early fire: only the view's identity effects precede it
        if kind in ("product_view", "add_to_cart") and ev.get("category") is not None:
            self.category[ev["product_id"]] = ev["category"]
        self.fire_due(self.watermark())

    def apply_identity_event(self, ev):
        cookie, crm = ev.get("cookie_id"), ev.get("crm_id")
        if cookie is not None and crm is not None:
            for old in self.link(cookie, crm, ev["_ts"]):
                self.apply_to_customer(crm, old)
            self.apply_to_customer(crm, ev)
        elif crm is not None:
            self.apply_to_customer(crm, ev)
        elif cookie in self.links:
            self.apply_to_customer(self.links[cookie][0], ev)
        else:
            self.keep(cookie, ev)


class Replay:
    """The driver: lines of the input files in order, each applied or
    rejected (a blank line is a message, a final newline is not)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.model = Model(cfg)
        self.messages = 0
        self.dead = []
        self.rejected = {}

    def read(self, path):
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for number, raw in enumerate(lines, start=1):
            self.message(path, number, raw)

    def message(self, path, number, raw):
        self.messages += 1
        ev, reason = validate.check(raw, self.cfg.max_bytes)
        if ev is not None:
            self.model.apply(ev)
            return
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        letter = {"error": None, "reason": reason, "topic": path, "partition": 0,
                  "offset": number}
        try:
            letter["payload"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            letter["payload_b64"] = base64.b64encode(raw).decode()
        self.dead.append(letter)

    def finish(self, flush):
        m = self.model
        if m.max_ts is not None:
            m.fire_due(m.max_ts)
            if flush:
                m.fire_due(float("inf"))

    def summary(self):
        m = self.model
        rejected_total = sum(self.rejected.values())
        lines = [f"replayed {self.messages} messages: {m.count['applied']} applied, "
                 f"{m.count['duplicate']} duplicate, {m.count['ignored']} ignored "
                 f"(erased customer), {rejected_total} rejected"]
        for what, rows in (("triggers", m.triggers + m.holdout), ("conversions", m.conversions)):
            parts = []
            for ttype in ("viewed_not_bought", "promo_on_viewed_item"):
                n = {g: sum(1 for r in rows if r["type"] == ttype and r["group"] == g)
                     for g in ("treated", "holdout")}
                parts.append(f"{ttype} (treated {n['treated']}, holdout {n['holdout']})")
            lines.append(f"{what}: " + ", ".join(parts))
        lines.append("suppressed: " + ", ".join(f"{k} {v}" for k, v in m.suppressed.items()))
        if rejected_total:
            lines.append("rejected: " + ", ".join(
                f"{r} {self.rejected[r]}" for r in REASONS if self.rejected.get(r)))
        return "\n".join(lines) + "\n"


REASONS = ("invalid_utf8", "invalid_json", "too_large", "missing_field", "wrong_type",
           "unknown_type", "bad_ts", "invalid_value")


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")


def main(argv):
    flush = "--flush" in argv
    args = [a for a in argv if a != "--flush"]
    if len(args) < 3:
        sys.exit(__doc__)
    config_path, out_dir, inputs = args[0], args[1], args[2:]
    replay = Replay(Config(config_path))
    for path in inputs:
        replay.read(path)
    replay.finish(flush)
    m = replay.model
    for name, rows in (("triggers", m.triggers), ("holdout", m.holdout),
                       ("conversions", m.conversions), ("dead-letter", replay.dead)):
        write_jsonl(f"{out_dir}/{name}.jsonl", rows)
    with open(f"{out_dir}/summary.txt", "w", encoding="utf-8") as f:
        f.write(replay.summary())


if __name__ == "__main__":
    main(sys.argv[1:])
