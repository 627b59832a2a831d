"""Input validation of the contract (sections 2 and 6), for the model.

Written from CONTRACT.md, with the project's documented choices where the
contract leaves one (docs/reliability.md, "Where the contract leaves a
choice"): valid JSON that is not an object is `invalid_json`; `null` on a
required field is `missing_field`; a quantity must be a JSON integer (`2.0`
is `invalid_value`); a `valid_until` that cannot be parsed is `bad_ts`; a
number beyond f64 or a lone surrogate escape in a field pretext reads is
`invalid_json`; of duplicate keys the last wins.

`check(raw_bytes, max_bytes)` returns (event, None) or (None, reason).
"""

import json
import math
import re
from datetime import datetime, timedelta, timezone

I64 = 2**63

RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+-])(\d{2}):(\d{2}))"
)

REQUIRED = {
    "product_view": ("cookie_id", "product_id"),
    "add_to_cart": ("cookie_id", "product_id"),
    "identify": ("cookie_id", "crm_id"),
    "purchase": ("order_id", "channel", "items"),
    "promotion": ("product_id",),
    "consent": ("crm_id",),
    "erase": ("crm_id",),
}

# optional fields and their kind; every other field is unknown, ignored
OPTIONAL = {
    "product_view": {"category": "str", "price": "num", "crm_id": "id"},
    "add_to_cart": {"category": "str", "price": "num", "crm_id": "id", "quantity": "qty"},
    "identify": {"source": "str"},
    "purchase": {"crm_id": "id", "cookie_id": "id", "total": "num"},
    "promotion": {"discount_pct": "pct", "promo_price": "num", "valid_until": "time"},
    "consent": {"email": "bool", "sms": "bool", "ads": "bool"},
    "erase": {},
}

REQUIRED_KIND = {"channel": "channel", "items": "items"}


class Reject(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def parse_rfc3339(text):
    m = RFC3339.fullmatch(text)
    if not m:
        raise Reject("bad_ts")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    frac = m.group(7)
    try:
        dt = datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc)
    except ValueError:
        raise Reject("bad_ts") from None
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise Reject("bad_ts")
        off = timedelta(hours=oh, minutes=om)
        dt = dt - off if m.group(9) == "+" else dt + off
    ms = (frac[1:] + "000")[:3] if frac else "000"
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (dt - epoch) // timedelta(seconds=1) * 1000 + int(ms)


def parse_time(value):
    """A `ts` or `valid_until` value: epoch ms integer or RFC 3339 string."""
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise Reject("wrong_type")
    if isinstance(value, int):
        if not -I64 <= value < I64:
            raise Reject("bad_ts")
        return value
    if isinstance(value, float):
        raise Reject("bad_ts")
    return parse_rfc3339(value)


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_id(v):
    if not isinstance(v, str):
        raise Reject("wrong_type")
    if not 1 <= len(v) <= 128:
        raise Reject("invalid_value")


def check_kind(kind, v):
    if kind == "id":
        check_id(v)
    elif kind == "str":
        if not isinstance(v, str):
            raise Reject("wrong_type")
    elif kind == "num":
        if not is_num(v):
            raise Reject("wrong_type")
    elif kind == "bool":
        if not isinstance(v, bool):
            raise Reject("wrong_type")
    elif kind == "qty":
        if not is_num(v):
            raise Reject("wrong_type")
        if isinstance(v, float) or not -I64 <= v < I64:
            raise Reject("invalid_value")
    elif kind == "pct":
        if not is_num(v):
            raise Reject("wrong_type")
        if not 0 < v <= 100:
            raise Reject("invalid_value")
    elif kind == "time":
        parse_time(v)
    elif kind == "channel":
        if not isinstance(v, str):
            raise Reject("wrong_type")
        if v not in ("web", "store"):
            raise Reject("invalid_value")
    elif kind == "items":
        check_items(v)


def check_items(items):
    if not isinstance(items, list):
        raise Reject("wrong_type")
    if not items:
        raise Reject("invalid_value")
    for item in items:
        if not isinstance(item, dict):
            raise Reject("wrong_type")
        if item.get("product_id") is None:
            raise Reject("missing_field")
        check_id(item["product_id"])
        for key, kind in (("quantity", "qty"), ("price", "num")):
            if item.get(key) is not None:
                check_kind(kind, item[key])


def reject_constant(name):
    raise Reject("invalid_json")


def unreadable(v):
    """What the JSON parser of a read field refuses: a lone surrogate
    escape, a number beyond f64."""
    if isinstance(v, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in v)
    if isinstance(v, float):
        return math.isinf(v)
    if isinstance(v, list):
        return any(unreadable(x) for x in v)
    if isinstance(v, dict):
        return any(unreadable(x) for x in v.values())
    return False


def read_fields(ev):
    kind = ev["type"]
    names = ("type", "event_id", "ts") + REQUIRED[kind] + tuple(OPTIONAL[kind])
    return [ev[n] for n in names if n in ev]


def validate(ev):
    if ev.get("type") is None:
        raise Reject("missing_field")
    if not isinstance(ev["type"], str):
        raise Reject("wrong_type")
    if ev["type"] not in REQUIRED:
        raise Reject("unknown_type")
    if any(unreadable(v) for v in read_fields(ev)):
        raise Reject("invalid_json")
    kind = ev["type"]
    for name in ("event_id", "ts") + REQUIRED[kind]:
        if ev.get(name) is None:
            raise Reject("missing_field")
    if not isinstance(ev["event_id"], str):
        raise Reject("wrong_type")
    if not 1 <= len(ev["event_id"]) <= 128:
        raise Reject("invalid_value")
    ev["_ts"] = parse_time(ev["ts"])
    for name in REQUIRED[kind]:
        check_kind(REQUIRED_KIND.get(name, "id"), ev[name])
    for name, k in OPTIONAL[kind].items():
        if ev.get(name) is not None:
            check_kind(k, ev[name])
    if kind == "purchase" and ev.get("crm_id") is None and ev.get("cookie_id") is None:
        raise Reject("missing_field")
    # null on an optional field means absent
    for name in OPTIONAL[kind]:
        if name in ev and ev[name] is None:
            del ev[name]


def check(raw, max_bytes):
    if len(raw) > max_bytes:
        return None, "too_large"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    try:
        ev = json.loads(text, parse_constant=reject_constant)
    except Reject as r:
        return None, r.reason
    except (ValueError, RecursionError):
        return None, "invalid_json"
    if not isinstance(ev, dict):
        return None, "invalid_json"
    try:
        validate(ev)
    except Reject as r:
        return None, r.reason
    return ev, None
