//! The bad-input corpus (CONTRACT sections 2 and 6): a table of malformed
//! messages, each with the `reason` the contract gives it, run through the
//! decoder and through the real binary on one replay file where every bad line
//! sits between good events with known triggers.
//!
//! What the table pins where the contract leaves a choice (each is also
//! documented in docs/reliability.md):
//! - JSON that is valid but not an object is `invalid_json` (README);
//! - a UTF-8 byte order mark is not JSON whitespace: `invalid_json`;
//! - a number beyond `f64` (`1e400`) and nesting deeper than 128 levels in a
//!   field pretext reads exceed the JSON parser's limits, which RFC 8259
//!   section 9 allows: `invalid_json`; in an unknown field, which is only
//!   checked for syntax, neither is a fault;
//! - of duplicate keys the last wins, as the decoder documents;
//! - a quantity must be a JSON integer: `2.0` is `invalid_value`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use pretext::decode::{decode, Reason};
use serde_json::Value;

/// The default `input.max_message_bytes`.
const MAX: usize = 1 << 20;
/// 2026-11-22T10:00:00Z.
const T0: i64 = 1_795_341_600_000;

/// One bad message and the contract's reason for it.
struct Bad {
    /// What kind of fault it is, for messages; unique in the table.
    name: String,
    line: Vec<u8>,
    reason: Reason,
}

/// A JSON object from keys and raw JSON values, in the given order.
fn obj(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

fn s(v: &str) -> String {
    format!("\"{v}\"")
}

/// A valid message of each type with every optional field set, so that one
/// change makes exactly one fault.
fn base(kind: &str, n: usize) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("type", s(kind)),
        ("event_id", s(&format!("bad-{n}"))),
        ("ts", s("2026-11-22T09:00:00Z")),
    ];
    let more: Vec<(&'static str, String)> = match kind {
        "product_view" => vec![
            ("cookie_id", s("ck-x")),
            ("product_id", s("P-x")),
            ("category", s("coats")),
            ("price", "9.5".into()),
            ("crm_id", s("C-x")),
        ],
        "add_to_cart" => vec![
            ("cookie_id", s("ck-x")),
            ("product_id", s("P-x")),
            ("category", s("coats")),
            ("price", "9.5".into()),
            ("crm_id", s("C-x")),
            ("quantity", "2".into()),
        ],
        "identify" => vec![
            ("cookie_id", s("ck-x")),
            ("crm_id", s("C-x")),
            ("source", s("login")),
        ],
        "purchase" => vec![
            ("order_id", s("o-x")),
            ("channel", s("web")),
            (
                "items",
                r#"[{"product_id":"P-x","quantity":1,"price":3.5}]"#.into(),
            ),
            ("crm_id", s("C-x")),
            ("cookie_id", s("ck-x")),
            ("total", "3.5".into()),
        ],
        "promotion" => vec![
            ("product_id", s("P-x")),
            ("discount_pct", "20".into()),
            ("promo_price", "9.99".into()),
            ("valid_until", s("2026-12-01T00:00:00+01:00")),
        ],
        "consent" => vec![
            ("crm_id", s("C-x")),
            ("email", "true".into()),
            ("sms", "false".into()),
            ("ads", "true".into()),
        ],
        "erase" => vec![("crm_id", s("C-x"))],
        other => panic!("no base for {other}"),
    };
    f.extend(more);
    f
}

use pretext::event::EVENT_TYPES as TYPES;

/// The contract's required fields of each type (beyond the common ones).
fn required(kind: &str) -> &'static [&'static str] {
    match kind {
        "product_view" | "add_to_cart" => &["cookie_id", "product_id"],
        "identify" => &["cookie_id", "crm_id"],
        "purchase" => &["order_id", "channel", "items"],
        "promotion" => &["product_id"],
        _ => &["crm_id"],
    }
}

/// Wrong-typed values for a field, by what the field must be; the table
/// takes them in turn so that every JSON type appears in the wrong place.
fn wrong_values(field: &str) -> &'static [&'static str] {
    match field {
        "ts" | "valid_until" => &["true", "[1795341600000]", r#"{"ms":0}"#],
        "price" | "total" | "discount_pct" | "promo_price" => &[r#""9.5""#, "true", "[9.5]", "{}"],
        "quantity" => &[r#""2""#, "false", "[2]"],
        "email" | "sms" | "ads" => &[r#""true""#, "1", "[]", r#"{"on":true}"#],
        "items" => &[r#"{"product_id":"P-x"}"#, r#""P-x""#, "3"],
        // Strings: type, event_id, the ids, category, source, channel.
        _ => &["42", "true", r#"["x"]"#, r#"{"s":"x"}"#, "-1.5"],
    }
}

fn with(mut f: Vec<(&'static str, String)>, key: &str, value: &str) -> String {
    let slot = f.iter_mut().find(|(k, _)| *k == key).expect("field");
    slot.1 = value.to_string();
    obj(&f)
}

fn without(f: Vec<(&'static str, String)>, keys: &[&str]) -> String {
    let kept: Vec<_> = f.into_iter().filter(|(k, _)| !keys.contains(k)).collect();
    obj(&kept)
}

/// `object` padded with an unknown field to exactly `len` bytes.
fn pad_to(object: &str, len: usize) -> Vec<u8> {
    // `{...}` becomes `{...,"pad":"xxx"}`.
    let head = &object[..object.len() - 1];
    let fixed = head.len() + r#","pad":""}"#.len();
    let line = format!("{head},\"pad\":\"{}\"}}", "x".repeat(len - fixed));
    assert_eq!(line.len(), len);
    line.into_bytes()
}

/// A valid product view padded to exactly `len` bytes, or one without its
/// `product_id` (missing_field).
fn padded_view(n: usize, len: usize, drop_product: bool) -> Vec<u8> {
    let mut f = base("product_view", n);
    if drop_product {
        f.retain(|(k, _)| *k != "product_id");
    }
    pad_to(&obj(&f), len)
}

/// The corpus: hand-written kinds, then one case per field of every type
/// for wrong types, missing fields and empty ids.
fn bad_cases() -> Vec<Bad> {
    use Reason::*;
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    let view = |n: usize| obj(&base("product_view", n));
    let mut t: Vec<Bad> = Vec::new();
    let mut add = |name: &str, line: Vec<u8>, reason: Reason| {
        t.push(Bad {
            name: name.to_string(),
            line,
            reason,
        })
    };

    // Truncated and malformed JSON.
    let v = view(next());
    add(
        "truncated after a key",
        br#"{"type":"product_view","event_id":"t","ts":"#.to_vec(),
        InvalidJson,
    );
    add(
        "truncated inside a string",
        v.as_bytes()[..30].to_vec(),
        InvalidJson,
    );
    add(
        "truncated before the closing brace",
        v.as_bytes()[..v.len() - 1].to_vec(),
        InvalidJson,
    );
    add("an opening brace alone", b"{".to_vec(), InvalidJson);
    add(
        "a trailing comma",
        br#"{"type":"erase","event_id":"e","ts":0,"crm_id":"C",}"#.to_vec(),
        InvalidJson,
    );
    add(
        "single quotes",
        br#"{'type':'erase','event_id':'e','ts':0,'crm_id':'C'}"#.to_vec(),
        InvalidJson,
    );
    add(
        "unquoted keys",
        br#"{type:"erase",event_id:"e",ts:0,crm_id:"C"}"#.to_vec(),
        InvalidJson,
    );
    add(
        "two objects on one line",
        format!("{}{}", view(next()), view(next())).into_bytes(),
        InvalidJson,
    );
    add(
        "garbage after the object",
        format!("{} ok", view(next())).into_bytes(),
        InvalidJson,
    );
    add(
        "a comment",
        format!("{} // note", view(next())).into_bytes(),
        InvalidJson,
    );
    add(
        "NaN as ts",
        with(base("erase", next()), "ts", "NaN").into_bytes(),
        InvalidJson,
    );
    add(
        "a hex number as price",
        with(base("product_view", next()), "price", "0x10").into_bytes(),
        InvalidJson,
    );
    add(
        "a leading plus on price",
        with(base("product_view", next()), "price", "+9").into_bytes(),
        InvalidJson,
    );
    add(
        "an invalid escape in a read string",
        with(base("erase", next()), "crm_id", r#""C\x41""#).into_bytes(),
        InvalidJson,
    );
    add(
        "an escaped lone surrogate in a read string",
        with(base("erase", next()), "crm_id", r#""C\ud800""#).into_bytes(),
        InvalidJson,
    );

    // Deep nesting.
    add(
        "10k unclosed arrays",
        "[".repeat(10_000).into_bytes(),
        InvalidJson,
    );
    add(
        "10k nested arrays, closed",
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        InvalidJson,
    );
    add(
        "10k unclosed objects",
        r#"{"a":"#.repeat(10_000).into_bytes(),
        InvalidJson,
    );
    add(
        "10k nested arrays in a read field",
        with(
            base("erase", next()),
            "crm_id",
            &format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        )
        .into_bytes(),
        InvalidJson,
    );
    add(
        "10k unclosed arrays in an unknown field",
        format!(
            "{},\"x\":{}}}",
            without(base("erase", next()), &[]).trim_end_matches('}'),
            "[".repeat(10_000)
        )
        .into_bytes(),
        InvalidJson,
    );

    // Not an object.
    for (name, line) in [
        ("an empty line", ""),
        ("a blank line", " \t "),
        ("a JSON array", "[]"),
        ("a JSON string", r#""product_view""#),
        ("a JSON number", "42"),
        ("JSON null", "null"),
        ("JSON true", "true"),
    ] {
        add(name, line.as_bytes().to_vec(), InvalidJson);
    }
    add(
        "an event inside an array",
        format!("[{}]", view(next())).into_bytes(),
        InvalidJson,
    );

    // Bytes that are not JSON text.
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice(view(next()).as_bytes());
    add("a UTF-8 byte order mark", bom, InvalidJson);
    add(
        "a raw NUL in a string",
        with(base("product_view", next()), "category", "\"co\0ats\"").into_bytes(),
        InvalidJson,
    );
    add(
        "a NUL after the object",
        format!("{}\0", view(next())).into_bytes(),
        InvalidJson,
    );
    add(
        "a NUL before the object",
        format!("\0{}", view(next())).into_bytes(),
        InvalidJson,
    );
    add("only NULs", vec![0; 64], InvalidJson);
    for (name, c) in [
        ("a raw SOH in a string", '\u{1}'),
        ("a raw tab in a string", '\t'),
        ("a raw carriage return in a string", '\r'),
        ("a raw escape character in a string", '\u{1b}'),
        ("a raw unit separator in a string", '\u{1f}'),
    ] {
        let value = format!("\"co{c}ats\"");
        add(
            name,
            with(base("product_view", next()), "category", &value).into_bytes(),
            InvalidJson,
        );
    }
    add(
        "a form feed between tokens",
        format!("{}\x0c", view(next())).into_bytes(),
        InvalidJson,
    );

    // Invalid UTF-8, in a read field unless said otherwise.
    for (name, bytes) in [
        ("a lone continuation byte", &b"\x80"[..]),
        ("an overlong two-byte slash", b"\xc0\xaf"),
        ("an overlong three-byte slash", b"\xe0\x80\xaf"),
        ("a UTF-16 surrogate in UTF-8", b"\xed\xa0\x80"),
        ("a truncated four-byte sequence", b"\xf0\x9f\x98"),
        ("a code point above U+10FFFF", b"\xf4\x90\x80\x80"),
        ("the byte 0xFF", b"\xff"),
        ("Latin-1 text", b"caf\xe9"),
    ] {
        let mut line = br#"{"type":"erase","event_id":"u","ts":0,"crm_id":"C"#.to_vec();
        line.extend_from_slice(bytes);
        line.extend_from_slice(b"\"}");
        add(name, line, InvalidUtf8);
    }
    let mut line = view(next()).into_bytes();
    line.truncate(line.len() - 1);
    line.extend_from_slice(b",\"x\":\"\xfe\"}");
    add("invalid UTF-8 in an unknown field", line, InvalidUtf8);
    let mut line = view(next()).into_bytes();
    line.push(0x80);
    add("invalid UTF-8 after the object", line, InvalidUtf8);

    // The size limit: checked first, on the line without its newline.
    add(
        "exactly max_message_bytes + 1, otherwise valid",
        padded_view(next(), MAX + 1, false),
        TooLarge,
    );
    add(
        "a 2 MiB string",
        with(
            base("product_view", next()),
            "category",
            &s(&"c".repeat(2 << 20)),
        )
        .into_bytes(),
        TooLarge,
    );
    add(
        "max_message_bytes + 1 of invalid UTF-8",
        vec![0xff; MAX + 1],
        TooLarge,
    );
    add(
        "exactly max_message_bytes, without product_id",
        padded_view(next(), MAX, true),
        MissingField,
    );

    // Huge and out-of-range strings.
    add(
        "a 900k-character product_id",
        with(
            base("product_view", next()),
            "product_id",
            &s(&"p".repeat(900_000)),
        )
        .into_bytes(),
        InvalidValue,
    );
    add(
        "a 129-character event_id",
        with(base("erase", next()), "event_id", &s(&"e".repeat(129))).into_bytes(),
        InvalidValue,
    );
    add(
        "a 129-character crm_id of two-byte characters",
        with(base("erase", next()), "crm_id", &s(&"é".repeat(129))).into_bytes(),
        InvalidValue,
    );
    add(
        "a 129-character id of escapes",
        with(base("erase", next()), "crm_id", &s(&r"\u00e9".repeat(129))).into_bytes(),
        InvalidValue,
    );

    // Numbers out of range.
    for (name, field, value, reason) in [
        ("ts of 1e400", "ts", "1e400", InvalidJson),
        ("price of 1e400", "price", "1e400", InvalidJson),
        ("price of -1e400", "price", "-1e400", InvalidJson),
        ("ts of 2^63", "ts", "9223372036854775808", BadTs),
        ("ts of 2^64", "ts", "18446744073709551616", BadTs),
        ("ts below -2^63", "ts", "-9223372036854775809", BadTs),
        ("ts in the year 10000", "ts", "253402300800000", BadTs),
        ("ts before the year 0", "ts", "-62167219200001", BadTs),
        (
            "quantity of 2^63",
            "quantity",
            "9223372036854775808",
            InvalidValue,
        ),
        ("quantity of 2.5", "quantity", "2.5", InvalidValue),
        ("quantity of 2.0", "quantity", "2.0", InvalidValue),
        ("quantity of 1e2", "quantity", "1e2", InvalidValue),
    ] {
        add(
            name,
            with(base("add_to_cart", next()), field, value).into_bytes(),
            reason,
        );
    }
    for (name, value) in [
        ("discount_pct of 0", "0"),
        ("discount_pct of -10", "-10"),
        ("discount_pct of 100.5", "100.5"),
        ("discount_pct of 1e308", "1e308"),
    ] {
        add(
            name,
            with(base("promotion", next()), "discount_pct", value).into_bytes(),
            InvalidValue,
        );
    }
    add(
        "an item quantity of 1.5",
        with(
            base("purchase", next()),
            "items",
            r#"[{"product_id":"P-x","quantity":1.5}]"#,
        )
        .into_bytes(),
        InvalidValue,
    );

    // Times.
    for (name, value) in [
        ("ts without a UTC offset", r#""2026-11-22T10:00:00""#),
        ("ts as a float", "1795341600000.5"),
        ("ts as a float without fraction", "1795341600000.0"),
        ("ts in float exponent form", "1.7953416e12"),
        ("ts as a string of epoch digits", r#""1795341600000""#),
        ("ts with a space separator", r#""2026-11-22 10:00:00Z""#),
        ("ts as a date only", r#""2026-11-22""#),
        ("ts on February 30", r#""2026-02-30T10:00:00Z""#),
        ("ts at hour 24", r#""2026-11-22T24:00:00Z""#),
        (
            "ts with an offset without colon",
            r#""2026-11-22T10:00:00+0100""#,
        ),
        ("ts with surrounding blanks", r#"" 2026-11-22T10:00:00Z ""#),
        ("ts as an empty string", r#""""#),
        ("ts with a named zone", r#""2026-11-22T10:00:00 UTC""#),
    ] {
        add(
            name,
            with(base("identify", next()), "ts", value).into_bytes(),
            BadTs,
        );
    }
    add(
        "valid_until without a UTC offset",
        with(
            base("promotion", next()),
            "valid_until",
            r#""2026-12-01T00:00:00""#,
        )
        .into_bytes(),
        BadTs,
    );
    add(
        "valid_until as a float",
        with(base("promotion", next()), "valid_until", "1795341600000.5").into_bytes(),
        BadTs,
    );

    // The type field.
    add("an empty object", b"{}".to_vec(), MissingField);
    add(
        "no type",
        without(base("erase", next()), &["type"]).into_bytes(),
        MissingField,
    );
    add(
        "type null",
        with(base("erase", next()), "type", "null").into_bytes(),
        MissingField,
    );
    for (name, value, reason) in [
        ("type as a number", "42", WrongType),
        ("type as an array", r#"["product_view"]"#, WrongType),
        ("type as an object", r#"{"name":"product_view"}"#, WrongType),
        ("type as a boolean", "true", WrongType),
        ("an unknown type", r#""page_view""#, UnknownType),
        ("type in capitals", r#""PRODUCT_VIEW""#, UnknownType),
        ("an empty type", r#""""#, UnknownType),
        ("type with a blank", r#"" product_view""#, UnknownType),
        (
            "type with an escaped NUL",
            r#""product_view\u0000""#,
            UnknownType,
        ),
    ] {
        add(
            name,
            with(base("product_view", next()), "type", value).into_bytes(),
            reason,
        );
    }

    // Duplicate keys: the last wins.
    let line = format!(
        "{},\"crm_id\":7}}",
        obj(&base("erase", next())).trim_end_matches('}')
    );
    add(
        "a duplicate key, the last wrong-typed",
        line.into_bytes(),
        WrongType,
    );
    let line = format!(
        "{},\"type\":\"nope\"}}",
        obj(&base("erase", next())).trim_end_matches('}')
    );
    add(
        "a duplicate type, the last unknown",
        line.into_bytes(),
        UnknownType,
    );

    // Purchase values and items.
    for (name, field, value, reason) in [
        (
            "channel not web or store",
            "channel",
            r#""phone""#,
            InvalidValue,
        ),
        ("channel in capitals", "channel", r#""WEB""#, InvalidValue),
        ("empty items", "items", "[]", InvalidValue),
        ("an item that is a string", "items", r#"["P-x"]"#, WrongType),
        ("an item that is null", "items", "[null]", WrongType),
        (
            "an item without product_id",
            "items",
            r#"[{"quantity":1}]"#,
            MissingField,
        ),
        (
            "an item product_id null",
            "items",
            r#"[{"product_id":null}]"#,
            MissingField,
        ),
        (
            "an item product_id number",
            "items",
            r#"[{"product_id":7}]"#,
            WrongType,
        ),
        (
            "an empty item product_id",
            "items",
            r#"[{"product_id":""}]"#,
            InvalidValue,
        ),
        (
            "an item quantity string",
            "items",
            r#"[{"product_id":"P","quantity":"1"}]"#,
            WrongType,
        ),
        (
            "an item price string",
            "items",
            r#"[{"product_id":"P","price":"3"}]"#,
            WrongType,
        ),
        (
            "a bad second item",
            "items",
            r#"[{"product_id":"P"},{"price":1}]"#,
            MissingField,
        ),
    ] {
        add(
            name,
            with(base("purchase", next()), field, value).into_bytes(),
            reason,
        );
    }
    add(
        "a purchase with neither crm_id nor cookie_id",
        without(base("purchase", next()), &["crm_id", "cookie_id"]).into_bytes(),
        MissingField,
    );
    add(
        "a purchase with both ids null",
        obj(&{
            let mut f = base("purchase", next());
            for (k, v) in f.iter_mut() {
                if *k == "crm_id" || *k == "cookie_id" {
                    *v = "null".into();
                }
            }
            f
        })
        .into_bytes(),
        MissingField,
    );

    // Generated: for every type, every field wrong-typed, every required
    // field missing or null, every id empty.
    let mut turn = 0;
    for kind in TYPES {
        for (field, _) in base(kind, 0) {
            if field == "type" {
                continue;
            }
            let values = wrong_values(field);
            let value = values[turn % values.len()];
            turn += 1;
            add(
                &format!("{kind}: {field} wrong-typed as {value}"),
                with(base(kind, next()), field, value).into_bytes(),
                WrongType,
            );
        }
        for field in ["event_id", "ts"].iter().chain(required(kind)) {
            add(
                &format!("{kind}: {field} missing"),
                without(base(kind, next()), &[field]).into_bytes(),
                MissingField,
            );
            add(
                &format!("{kind}: {field} null"),
                with(base(kind, next()), field, "null").into_bytes(),
                MissingField,
            );
        }
        for (field, _) in base(kind, 0) {
            let is_id = field == "event_id" || field.ends_with("_id");
            if is_id {
                add(
                    &format!("{kind}: {field} empty"),
                    with(base(kind, next()), field, r#""""#).into_bytes(),
                    InvalidValue,
                );
            }
        }
    }
    t
}

/// A good event of the interleaved stream and the trigger it leads to, if any.
struct Good {
    line: Vec<u8>,
    trigger: Option<(&'static str, String, String)>,
}

fn vnb(crm: &str, product: &str) -> Option<(&'static str, String, String)> {
    Some(("viewed_not_bought", crm.to_string(), product.to_string()))
}

/// The good stream: every event type, the edge cases the contract accepts,
/// then plain views, one customer each, up to `len` events 30 s apart.
fn good_events(len: usize) -> Vec<Good> {
    let mut g: Vec<Good> = Vec::new();
    let ts = |i: usize| (T0 + i as i64 * 30_000).to_string();
    let mut push = |line: String, trigger| {
        g.push(Good {
            line: line.into_bytes(),
            trigger,
        })
    };
    let view = |i: usize, crm: &str, product: &str| {
        format!(
            r#"{{"type":"product_view","event_id":"g{i}","ts":{},"cookie_id":"ck-{crm}","crm_id":"{crm}","product_id":"{product}"}}"#,
            ts(i)
        )
    };
    push(
        format!(
            r#"{{"type":"consent","event_id":"g0","ts":{},"crm_id":"C1","email":true,"sms":false}}"#,
            ts(0)
        ),
        None,
    );
    push(
        r#"{"type":"product_view","event_id":"g1","ts":"2026-11-22T10:00:30Z","cookie_id":"ck1","crm_id":"C1","product_id":"P1","category":"coats","price":120}"#
            .to_string(),
        vnb("C1", "P1"),
    );
    push(
        format!(
            r#"{{"type":"add_to_cart","event_id":"g2","ts":{},"cookie_id":"ck2","crm_id":"C2","product_id":"P2","quantity":1,"price":null}}"#,
            ts(2)
        ),
        None,
    );
    push(
        format!(
            r#"{{"type":"purchase","event_id":"g3","ts":{},"order_id":"o2","channel":"web","crm_id":"C2","items":[{{"product_id":"P2","quantity":1,"price":40}}],"total":40}}"#,
            ts(3)
        ),
        None,
    );
    push(
        format!(
            r#"{{"type":"identify","event_id":"g4","ts":{},"cookie_id":"ck3","crm_id":"C3","source":"login"}}"#,
            ts(4)
        ),
        None,
    );
    push(
        format!(
            r#"{{"type":"product_view","event_id":"g5","ts":{},"cookie_id":"ck3","product_id":"P3"}}"#,
            ts(5)
        ),
        vnb("C3", "P3"),
    );
    push(
        format!(
            r#"{{"type":"promotion","event_id":"g6","ts":{},"product_id":"P1","discount_pct":20,"promo_price":96.0,"valid_until":"2026-12-01T00:00:00+01:00"}}"#,
            ts(6)
        ),
        Some(("promo_on_viewed_item", "C1".into(), "P1".into())),
    );
    push(view(7, "C4", "P4"), None);
    push(
        format!(
            r#"{{"type":"erase","event_id":"g8","ts":{},"crm_id":"C4"}}"#,
            ts(8)
        ),
        None,
    );
    // Accepted edge cases.
    let exact = pad_to(&view(9, "C5", "P5"), MAX);
    g.push(Good {
        line: exact,
        trigger: vnb("C5", "P5"),
    });
    let mut push = |line: String, trigger| {
        g.push(Good {
            line: line.into_bytes(),
            trigger,
        })
    };
    push(
        format!(
            r#"{{"type":"product_view","event_id":"g10","ts":{},"cookie_id":"ck6","crm_id":"C6","product_id":"P6","category":"{}"}}"#,
            ts(10),
            "c".repeat(500_000)
        ),
        vnb("C6", "P6"),
    );
    let long_product = "é".repeat(128);
    push(view(11, "C7", &long_product), vnb("C7", &long_product));
    push(
        format!(
            r#"{{"type":"product_view","event_id":"g12","ts":{},"cookie_id":"ck8","crm_id":"C8","product_id":"P8","quantity":"two"}}"#,
            ts(12)
        ),
        vnb("C8", "P8"),
    );
    push(
        format!(
            r#"{{"type":"product_view","event_id":"g13","ts":{},"cookie_id":"ck9","crm_id":7,"product_id":"P9","crm_id":"C9"}}"#,
            ts(13)
        ),
        vnb("C9", "P9"),
    );
    push(
        format!(
            r#"{{"type":"product_view","event_id":"g14","ts":{},"cookie_id":"ck10","crm_id":"C10","product_id":"P10","category":null,"price":null}}"#,
            ts(14)
        ),
        vnb("C10", "P10"),
    );
    push(format!("{}\r", view(15, "C11", "P11")), vnb("C11", "P11"));
    push(
        format!(
            r#"{{"type":"product_view","event_id":"g16","ts":{},"cookie_id":"ck12","crm_id":"C12","product_id":"P12","x":{}1{}}}"#,
            ts(16),
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
        vnb("C12", "P12"),
    );
    push(
        format!(
            "{{\"type\":\"product_view\",\"event_id\":\"g17\",\"ts\":{},\"cookie_id\":\"ck13\",\"crm_id\":\"C13\",\"product_id\":\"P13\",\"category\":\"del\x7f nul\\u0000\"}}",
            ts(17)
        ),
        vnb("C13", "P13"),
    );
    push(format!(" \t{} ", view(18, "C14", "P14")), vnb("C14", "P14"));
    push(
        r#"{"type":"product_view","event_id":"g19","ts":"2026-11-22t10:09:30z","cookie_id":"ck15","crm_id":"C15","product_id":"P15"}"#.to_string(),
        vnb("C15", "P15"),
    );
    push(
        r#"{"type":"product_view","event_id":"g20","ts":"2026-11-22T11:10:00.5+01:00","cookie_id":"ck16","crm_id":"C16","product_id":"P16"}"#.to_string(),
        vnb("C16", "P16"),
    );
    push(
        format!(
            r#"{{"type":"product_view","event_id":"g21","ts":{},"cookie_id":"ck17","crm_id":"C17","product_id":"P17","extra":{{"a":[1e400,"\ud800",{{"b":null}}],"n":-0.0}}}}"#,
            ts(21)
        ),
        vnb("C17", "P17"),
    );
    let mut i = g.len();
    while g.len() < len {
        let crm = format!("C{}", 100 + i);
        let product = format!("P{}", 100 + i);
        g.push(Good {
            line: view(i, &crm, &product).into_bytes(),
            trigger: vnb(&crm, &product),
        });
        i += 1;
    }
    g
}

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

/// Replays `input` with every output to files under `dir/name.*`.
fn replay(dir: &Path, name: &str, input: &Path) -> (Output, Vec<u8>, Vec<Value>) {
    let output = dir.join(format!("{name}.triggers.jsonl"));
    let dead = dir.join(format!("{name}.dead.jsonl"));
    let o = pretext()
        .args(["replay", "--flush", "--input"])
        .arg(input)
        .arg("--output")
        .arg(&output)
        .arg("--dead-letter")
        .arg(&dead)
        .arg("--state-dir")
        .arg(dir.join(format!("{name}.state")))
        .output()
        .expect("the pretext binary runs");
    assert!(
        o.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let triggers = std::fs::read(&output).unwrap();
    let letters = String::from_utf8(std::fs::read(&dead).unwrap())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (o, triggers, letters)
}

fn write(path: &Path, lines: &[&[u8]]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for line in lines {
        f.write_all(line).unwrap();
        f.write_all(b"\n").unwrap();
    }
    f.flush().unwrap();
}

#[test]
fn the_corpus_is_well_formed() {
    let cases = bad_cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    for reason in Reason::ALL {
        assert!(
            cases.iter().any(|c| c.reason == reason),
            "no case for {}",
            reason.as_str()
        );
    }
    for c in &cases {
        // A newline would split the case into two replay lines.
        assert!(!c.line.contains(&b'\n'), "{}", c.name);
    }
    // Every base message is valid, so each case has exactly its one fault.
    for kind in TYPES {
        let line = obj(&base(kind, 0));
        assert!(decode(line.as_bytes(), MAX).is_ok(), "{line}");
    }
}

#[test]
fn the_decoder_gives_each_bad_message_its_reason() {
    let mut wrong = Vec::new();
    for c in bad_cases() {
        match decode(&c.line, MAX) {
            Ok(e) => wrong.push(format!("{}: accepted as {e:?}", c.name)),
            Err(r) if r.reason != c.reason => wrong.push(format!(
                "{}: {} ({}), expected {}",
                c.name,
                r.reason.as_str(),
                r.error,
                c.reason.as_str()
            )),
            Err(r) => assert!(!r.error.is_empty(), "{}: an empty error", c.name),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for g in good_events(40) {
        if let Err(r) = decode(&g.line, MAX) {
            panic!(
                "{}: {r:?}",
                String::from_utf8_lossy(&g.line[..g.line.len().min(200)])
            );
        }
    }
}

#[test]
fn every_bad_line_is_dead_lettered_once_and_the_stream_around_it_is_applied() {
    let cases = bad_cases();
    let good = good_events(cases.len() + 1);
    let dir = tempfile::tempdir().unwrap();

    // Good, bad, good, bad, ..., good: each bad line between two good ones.
    let mut dirty: Vec<&[u8]> = Vec::new();
    let mut expected_letters: Vec<(i64, &Bad)> = Vec::new();
    for (i, g) in good.iter().enumerate() {
        dirty.push(&g.line);
        if let Some(c) = cases.get(i) {
            dirty.push(&c.line);
            expected_letters.push((dirty.len() as i64, c));
        }
    }
    let clean: Vec<&[u8]> = good.iter().map(|g| g.line.as_slice()).collect();
    let dirty_path = dir.path().join("dirty.jsonl");
    let clean_path = dir.path().join("clean.jsonl");
    write(&dirty_path, &dirty);
    write(&clean_path, &clean);

    let (clean_run, clean_triggers, clean_letters) = replay(dir.path(), "clean", &clean_path);
    let (dirty_run, dirty_triggers, letters) = replay(dir.path(), "dirty", &dirty_path);

    // The clean stream gives exactly the triggers its events call for.
    assert!(clean_letters.is_empty(), "{clean_letters:?}");
    let fired: BTreeSet<(String, String, String)> = String::from_utf8(clean_triggers.clone())
        .unwrap()
        .lines()
        .map(|l| {
            let t: Value = serde_json::from_str(l).unwrap();
            let field = |k: &str| t[k].as_str().unwrap().to_string();
            (field("type"), field("crm_id"), field("product_id"))
        })
        .collect();
    let wanted: BTreeSet<(String, String, String)> = good
        .iter()
        .filter_map(|g| g.trigger.clone())
        .map(|(k, c, p)| (k.to_string(), c, p))
        .collect();
    assert_eq!(fired, wanted);
    assert_eq!(
        clean_triggers.iter().filter(|b| **b == b'\n').count(),
        wanted.len(),
        "one trigger each"
    );

    // The bad lines change nothing: the same triggers, byte for byte.
    assert!(
        dirty_triggers == clean_triggers,
        "the bad lines changed the triggers"
    );

    // Every bad line is dead-lettered exactly once, in order, at its line.
    assert_eq!(letters.len(), cases.len(), "one dead letter per bad line");
    let topic = dirty_path.display().to_string();
    for (letter, (line_no, case)) in letters.iter().zip(&expected_letters) {
        let at = format!("{} (line {line_no})", case.name);
        assert_eq!(
            letter["reason"],
            case.reason.as_str(),
            "{at}: {}",
            letter["error"]
        );
        assert_eq!(letter["offset"], *line_no, "{at}");
        assert_eq!(letter["partition"], 0, "{at}");
        assert_eq!(letter["topic"], topic.as_str(), "{at}");
        assert!(
            !letter["error"].as_str().unwrap_or("").is_empty(),
            "{at}: an error text"
        );
        let original = match std::str::from_utf8(&case.line) {
            Ok(text) => {
                assert!(letter.get("payload_b64").is_none(), "{at}");
                letter["payload"].as_str().map(|p| p == text)
            }
            Err(_) => {
                assert!(letter.get("payload").is_none(), "{at}");
                letter["payload_b64"]
                    .as_str()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .map(|p| p == case.line)
            }
        };
        assert_eq!(original, Some(true), "{at}: the original bytes");
    }

    // Nothing lost: every message is applied or rejected, and counted.
    let summary = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let (n_good, n_bad) = (good.len(), cases.len());
    let line = format!(
        "replayed {} messages: {n_good} applied, 0 duplicate, 0 ignored (erased customer), {n_bad} rejected",
        n_good + n_bad
    );
    assert!(
        summary(&dirty_run).contains(&line),
        "{}",
        summary(&dirty_run)
    );
    let by_reason: Vec<String> = Reason::ALL
        .iter()
        .map(|r| (r, cases.iter().filter(|c| c.reason == *r).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{} {n}", r.as_str()))
        .collect();
    let rejected = format!("rejected: {}\n", by_reason.join(", "));
    assert!(
        summary(&dirty_run).contains(&rejected),
        "{}",
        summary(&dirty_run)
    );
    let line = format!(
        "replayed {n_good} messages: {n_good} applied, 0 duplicate, 0 ignored (erased customer), 0 rejected"
    );
    assert!(
        summary(&clean_run).contains(&line),
        "{}",
        summary(&clean_run)
    );
}
