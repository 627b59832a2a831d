#!/usr/bin/env python3
"""Reference model of the pretext contract v2 (sections 2, 3, 4 and 8).

Written from /work/shared/CONTRACT.md alone (plus the documented choices
where the contract is silent), never from src/engine, so that it can catch
the engine's bugs. It is slow on purpose: every decision is recomputed from
the full kept history.

usage: contract_model.py INPUT.jsonl CONFIG.toml [--flush] OUT_DIR
writes OUT_DIR/triggers.jsonl, OUT_DIR/holdout.jsonl, OUT_DIR/conversions.jsonl
with the fields pretext writes, except trigger_id (xxh3 is not in the
stdlib): it is written as null.

Input must hold valid events only.
"""

import hashlib
import json
import math
import re
import sys
import tomllib
from datetime import datetime, timezone

UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    if not m:
        raise ValueError(f"bad duration {text!r}")
    return int(m.group(1)) * UNITS[m.group(2)]


class Config:
    def __init__(self, path):
        with open(path, "rb") as f:
            raw = tomllib.load(f)

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


def parse_ts(value):
    if isinstance(value, int):
        return value
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return round(dt.timestamp() * 1000)


def fmt_ts(ms):
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"


def round2(x):
    """Half away from zero to 2 decimals, as f64 arithmetic does it."""
    r = math.floor(abs(x) * 100 + 0.5) / 100
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
        for p, ts, w in c.views:
            if p != product or not (t - self.cfg.lookback <= ts <= t):
                continue
            if after is not None and ts <= after:
                continue
            total += w * 2 ** (-(t - ts) / self.cfg.half_life)
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
        if ttype == "viewed_not_bought":
            if any(p == product and ts >= first_view for p, ts in c.purchases):
                return
            if self.score(c, product, t) < cfg.min_score:
                return
        cd = cfg.cooldown[ttype]
        if any(f["type"] == ttype and f["product"] == product and abs(t - f["fired_at"]) < cd
               for f in c.fired):
            return
        if cfg.max_triggers > 0:
            near = sum(1 for f in c.fired if abs(t - f["fired_at"]) < cfg.pressure_window)
            if near >= cfg.max_triggers:
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
                self.pending[key] = [max(check_at, t + self.cfg.delay), min(first_view, t)]
                return
            self.fire_check(key)
        self.pending[key] = [t + self.cfg.delay, t]

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
        ev["_ts"] = parse_ts(ev["ts"])
        if self.is_duplicate(ev) or self.erased(ev):
            return
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


def main(argv):
    args = [a for a in argv if a != "--flush"]
    flush = "--flush" in argv
    if len(args) != 3:
        sys.exit(__doc__)
    input_path, config_path, out_dir = args
    model = Model(Config(config_path))
    with open(input_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                model.apply(json.loads(line))
    if model.max_ts is not None:
        model.fire_due(model.max_ts)
        if flush:
            model.fire_due(float("inf"))
    for name, rows in (("triggers", model.triggers), ("holdout", model.holdout),
                       ("conversions", model.conversions)):
        with open(f"{out_dir}/{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
