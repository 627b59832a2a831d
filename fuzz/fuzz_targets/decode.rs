//! Fuzzes `decode::decode`, the one place pretext judges input bytes.
//!
//! The decoder is compiled from its own source files (`src/decode.rs` and the
//! two modules it uses, `src/event.rs` and `src/time.rs`) rather than through
//! the `pretext` crate: the crate links RocksDB and librdkafka, whose C and
//! C++ builds would cost the fuzz build most of an hour and add nothing the
//! decoder reaches. The modules are mounted at the crate root under their own
//! names, so their `crate::event` and `crate::time` paths resolve as in
//! pretext; if the decoder ever uses another module, this build fails rather
//! than fuzzing something else.
//!
//! Invariants checked for every input:
//! - `decode` never panics (libFuzzer reports a panic as a crash);
//! - the size limit is the only use of `max_bytes`: any limit at or above the
//!   input's length gives the same result, and one byte less is `too_large`;
//! - `invalid_utf8` exactly when the bytes are not UTF-8;
//! - every rejection carries a non-empty error text;
//! - every accepted event obeys the contract's ranges (ids 1–128 characters,
//!   times in years 0000–9999, a non-empty purchase with a crm or cookie id,
//!   `discount_pct` in (0, 100]);
//! - an accepted event written back as JSON decodes to the same event, with
//!   `ts` both as epoch milliseconds and as the RFC 3339 text pretext writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Number, Value};

#[allow(dead_code)]
#[path = "../../src/event.rs"]
mod event;

#[allow(dead_code)]
#[path = "../../src/time.rs"]
mod time;

#[allow(dead_code)]
#[path = "../../src/decode.rs"]
mod decode;

use decode::{decode, Reason, Rejection};
use event::{Body, Channel, Event, Millis};
use time::{format_ts, parse_rfc3339, MAX_MILLIS, MIN_MILLIS};

/// The default `input.max_message_bytes`.
const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let result = decode(data, MAX);
    if data.len() <= MAX {
        // The limit only gates the size.
        assert_eq!(decode(data, data.len()), result, "limit at the length");
        if let Some(less) = data.len().checked_sub(1) {
            let r = decode(data, less).expect_err("one byte over the limit");
            assert_eq!(r.reason, Reason::TooLarge, "{r:?}");
        }
    }
    match result {
        Err(r) => check_rejection(data, &r),
        Ok(event) => {
            check_ranges(&event);
            round_trip(&event);
        }
    }
});

fn check_rejection(data: &[u8], r: &Rejection) {
    assert!(!r.error.is_empty(), "empty error for {r:?}");
    assert_eq!(r.reason == Reason::TooLarge, data.len() > MAX, "{r:?}");
    if data.len() <= MAX {
        let utf8 = std::str::from_utf8(data).is_ok();
        assert_eq!(r.reason == Reason::InvalidUtf8, !utf8, "{r:?}");
    }
}

fn check_id(name: &str, id: &str) {
    let chars = id.chars().count();
    assert!((1..=128).contains(&chars), "{name} of {chars} characters");
}

fn check_time(name: &str, t: Millis) {
    assert!(
        (MIN_MILLIS..=MAX_MILLIS).contains(&t),
        "{name} {t} out of range"
    );
    // Every accepted time is written back and read again unchanged.
    assert_eq!(parse_rfc3339(&format_ts(t)), Some(t), "{name} {t}");
}

fn check_ranges(e: &Event) {
    check_id("event_id", &e.event_id);
    check_time("ts", e.ts);
    match &e.body {
        Body::View(v) => {
            check_id("cookie_id", &v.cookie_id);
            check_id("product_id", &v.product_id);
            if let Some(c) = &v.crm_id {
                check_id("crm_id", c);
            }
        }
        Body::Identify(i) => {
            check_id("cookie_id", &i.cookie_id);
            check_id("crm_id", &i.crm_id);
        }
        Body::Purchase(p) => {
            check_id("order_id", &p.order_id);
            assert!(!p.items.is_empty(), "a purchase without items");
            for item in &p.items {
                check_id("items[].product_id", &item.product_id);
            }
            assert!(p.crm_id.is_some() || p.cookie_id.is_some(), "no customer");
            for id in p.crm_id.iter().chain(&p.cookie_id) {
                check_id("crm_id or cookie_id", id);
            }
        }
        Body::Promotion(p) => {
            check_id("product_id", &p.product_id);
            if let Some(d) = p.discount_pct.as_ref().and_then(Number::as_f64) {
                assert!(d > 0.0 && d <= 100.0, "discount_pct {d}");
            }
            if let Some(t) = p.valid_until {
                check_time("valid_until", t);
            }
        }
        Body::Consent(c) => check_id("crm_id", &c.crm_id),
        Body::Erase(e) => check_id("crm_id", &e.crm_id),
    }
}

/// Writes the event back as a contract message and decodes it again.
fn round_trip(e: &Event) {
    for ts_as_text in [false, true] {
        let bytes = encode(e, ts_as_text);
        let again = decode(&bytes, usize::MAX).unwrap_or_else(|r| {
            panic!(
                "re-encoded event rejected: {r:?}\n{}\nfrom {e:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert_same(e, &again);
    }
}

fn encode(e: &Event, ts_as_text: bool) -> Vec<u8> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("type", json!(e.body.type_name()));
    put("event_id", json!(e.event_id));
    put(
        "ts",
        if ts_as_text {
            json!(format_ts(e.ts))
        } else {
            json!(e.ts)
        },
    );
    match &e.body {
        Body::View(v) => {
            put("cookie_id", json!(v.cookie_id));
            put("product_id", json!(v.product_id));
            put("category", json!(v.category));
            put("price", json!(v.price));
            put("crm_id", json!(v.crm_id));
            put("quantity", json!(v.quantity));
        }
        Body::Identify(i) => {
            put("cookie_id", json!(i.cookie_id));
            put("crm_id", json!(i.crm_id));
            put("source", json!(i.source));
        }
        Body::Purchase(p) => {
            put("order_id", json!(p.order_id));
            let channel = match p.channel {
                Channel::Web => "web",
                Channel::Store => "store",
            };
            put("channel", json!(channel));
            let items: Vec<Value> = p
                .items
                .iter()
                .map(|i| json!({"product_id": i.product_id, "quantity": i.quantity, "price": i.price}))
                .collect();
            put("items", Value::Array(items));
            put("crm_id", json!(p.crm_id));
            put("cookie_id", json!(p.cookie_id));
            put("total", json!(p.total));
        }
        Body::Promotion(p) => {
            put("product_id", json!(p.product_id));
            put("discount_pct", json!(p.discount_pct));
            put("promo_price", json!(p.promo_price));
            put("valid_until", json!(p.valid_until.map(format_ts)));
        }
        Body::Consent(c) => {
            put("crm_id", json!(c.crm_id));
            put("email", json!(c.email));
            put("sms", json!(c.sms));
            put("ads", json!(c.ads));
        }
        Body::Erase(x) => put("crm_id", json!(x.crm_id)),
    }
    serde_json::to_vec(&Value::Object(m)).expect("a json value serializes")
}

/// Equal events, but for floats: serde_json (without its `float_roundtrip`
/// feature, as pretext builds it) parses a float to within a few ULP, so a
/// number written back may read as a neighbouring `f64`.
fn assert_same(a: &Event, b: &Event) {
    let (mut a, mut b) = (a.clone(), b.clone());
    match (&mut a.body, &mut b.body) {
        (Body::View(x), Body::View(y)) => near(&mut x.price, &mut y.price),
        (Body::Purchase(x), Body::Purchase(y)) => {
            near(&mut x.total, &mut y.total);
            for (i, j) in x.items.iter_mut().zip(&mut y.items) {
                near(&mut i.price, &mut j.price);
            }
        }
        (Body::Promotion(x), Body::Promotion(y)) => {
            near_number(&mut x.discount_pct, &mut y.discount_pct);
            near_number(&mut x.promo_price, &mut y.promo_price);
        }
        _ => {}
    }
    assert_eq!(a, b, "an event changed through its JSON form");
}

/// Checks two floats are within a few ULP, then makes them equal.
fn near(a: &mut Option<f64>, b: &mut Option<f64>) {
    if let (Some(x), Some(y)) = (*a, *b) {
        let ulps = x.to_bits().abs_diff(y.to_bits());
        assert!(
            x.signum() == y.signum() && ulps <= 4,
            "{x} read back as {y}"
        );
        *b = *a;
    }
}

fn near_number(a: &mut Option<Number>, b: &mut Option<Number>) {
    match (a.as_ref(), b.as_ref()) {
        (Some(x), Some(y)) if x.is_f64() || y.is_f64() => {
            let (mut fx, mut fy) = (x.as_f64(), y.as_f64());
            near(&mut fx, &mut fy);
            *b = a.clone();
        }
        _ => {}
    }
}
