//! Bytes → a validated `Event`, or a `Rejection` with one of the contract's
//! eight reasons (CONTRACT sections 2 and 6). The only place input is judged.

use serde_json::{Map, Number, Value};

use crate::event::{
    Body, Channel, Consent, Erase, Event, Identify, Item, Millis, Promotion, Purchase, View,
    ViewKind,
};
use crate::time::parse_rfc3339;

/// Why a message was rejected; the dead-letter `reason` and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidUtf8,
    InvalidJson,
    TooLarge,
    MissingField,
    WrongType,
    UnknownType,
    BadTs,
    InvalidValue,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::TooLarge,
        Reason::MissingField,
        Reason::WrongType,
        Reason::UnknownType,
        Reason::BadTs,
        Reason::InvalidValue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::TooLarge => "too_large",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::UnknownType => "unknown_type",
            Reason::BadTs => "bad_ts",
            Reason::InvalidValue => "invalid_value",
        }
    }
}

/// A rejected message: the reason and a lowercase message naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct Rejection {
    pub reason: Reason,
    pub error: String,
}

fn reject(reason: Reason, error: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        error: error.into(),
    }
}

/// The longest id, in characters.
const MAX_ID_CHARS: usize = 128;

/// Decodes one message (a replay line without its newline).
pub fn decode(payload: &[u8], max_bytes: usize) -> Result<Event, Rejection> {
    if payload.len() > max_bytes {
        return Err(reject(
            Reason::TooLarge,
            format!(
                "message is {} bytes, over the limit of {max_bytes}",
                payload.len()
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        reject(
            Reason::InvalidUtf8,
            format!("invalid utf-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| reject(Reason::InvalidJson, format!("invalid json: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(reject(Reason::InvalidJson, "expected a json object"));
    };
    let kind = match obj.get("type") {
        None | Some(Value::Null) => return Err(missing("type")),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(wrong_type("type", "a string")),
    };
    let mut f = Fields(&mut obj);
    let event_id = f.id_required("event_id")?;
    let ts = f.ts_required("ts")?;
    let body = match kind.as_str() {
        "product_view" => Body::View(view(&mut f, ViewKind::ProductView)?),
        "add_to_cart" => Body::View(view(&mut f, ViewKind::AddToCart)?),
        "identify" => Body::Identify(Identify {
            cookie_id: f.id_required("cookie_id")?,
            crm_id: f.id_required("crm_id")?,
            source: f.string("source")?,
        }),
        "purchase" => Body::Purchase(purchase(&mut f)?),
        "promotion" => Body::Promotion(promotion(&mut f)?),
        "consent" => Body::Consent(Consent {
            crm_id: f.id_required("crm_id")?,
            email: f.boolean("email")?,
            sms: f.boolean("sms")?,
            ads: f.boolean("ads")?,
        }),
        "erase" => Body::Erase(Erase {
            crm_id: f.id_required("crm_id")?,
        }),
        other => {
            return Err(reject(
                Reason::UnknownType,
                format!("unknown type `{}`", truncate(other, 64)),
            ))
        }
    };
    Ok(Event { event_id, ts, body })
}

fn view(f: &mut Fields<'_>, kind: ViewKind) -> Result<View, Rejection> {
    Ok(View {
        kind,
        cookie_id: f.id_required("cookie_id")?,
        product_id: f.id_required("product_id")?,
        category: f.string("category")?,
        price: f.number("price")?,
        crm_id: f.id("crm_id")?,
        quantity: match kind {
            ViewKind::AddToCart => f.quantity("quantity", "quantity")?,
            ViewKind::ProductView => None,
        },
    })
}

fn purchase(f: &mut Fields<'_>) -> Result<Purchase, Rejection> {
    let order_id = f.id_required("order_id")?;
    let channel = match f.take("channel") {
        None => return Err(missing("channel")),
        Some(Value::String(s)) if s == "web" => Channel::Web,
        Some(Value::String(s)) if s == "store" => Channel::Store,
        Some(Value::String(_)) => {
            return Err(reject(
                Reason::InvalidValue,
                "field `channel` must be \"web\" or \"store\"",
            ))
        }
        Some(_) => return Err(wrong_type("channel", "a string")),
    };
    let items = match f.take("items") {
        None => return Err(missing("items")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(reject(
                Reason::InvalidValue,
                "field `items` must not be empty",
            ))
        }
        Some(Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| item(i, v))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(wrong_type("items", "an array")),
    };
    let crm_id = f.id("crm_id")?;
    let cookie_id = f.id("cookie_id")?;
    if crm_id.is_none() && cookie_id.is_none() {
        return Err(reject(
            Reason::MissingField,
            "missing field `crm_id` or `cookie_id`",
        ));
    }
    Ok(Purchase {
        order_id,
        channel,
        items,
        crm_id,
        cookie_id,
        total: f.number("total")?,
    })
}

fn item(index: usize, value: Value) -> Result<Item, Rejection> {
    let name = |field: &str| format!("items[{index}].{field}");
    let Value::Object(mut obj) = value else {
        return Err(wrong_type(&format!("items[{index}]"), "an object"));
    };
    let mut f = Fields(&mut obj);
    Ok(Item {
        product_id: f
            .id_named("product_id", &name("product_id"))?
            .ok_or_else(|| missing(&name("product_id")))?,
        quantity: f.quantity("quantity", &name("quantity"))?,
        price: f.number_named("price", &name("price"))?,
    })
}

fn promotion(f: &mut Fields<'_>) -> Result<Promotion, Rejection> {
    let product_id = f.id_required("product_id")?;
    let discount_pct = f.raw_number("discount_pct")?;
    if let Some(d) = &discount_pct {
        let x = d.as_f64().unwrap_or(f64::NAN);
        if !(x > 0.0 && x <= 100.0) {
            return Err(reject(
                Reason::InvalidValue,
                "field `discount_pct` must be greater than 0 and at most 100",
            ));
        }
    }
    Ok(Promotion {
        product_id,
        discount_pct,
        promo_price: f.raw_number("promo_price")?,
        valid_until: f.ts("valid_until")?,
    })
}

fn missing(field: &str) -> Rejection {
    reject(Reason::MissingField, format!("missing field `{field}`"))
}

fn wrong_type(field: &str, expected: &str) -> Rejection {
    reject(
        Reason::WrongType,
        format!("field `{field}` must be {expected}"),
    )
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The fields of one JSON object, taken out by name; `null` means absent.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn take(&mut self, field: &str) -> Option<Value> {
        match self.0.remove(field) {
            None | Some(Value::Null) => None,
            v => v,
        }
    }

    fn id(&mut self, field: &str) -> Result<Option<String>, Rejection> {
        self.id_named(field, field)
    }

    /// An id: a string of 1 to 128 characters.
    fn id_named(&mut self, field: &str, name: &str) -> Result<Option<String>, Rejection> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => {
                let chars = s.chars().count();
                if chars == 0 || chars > MAX_ID_CHARS {
                    return Err(reject(
                        Reason::InvalidValue,
                        format!("field `{name}` must be 1 to {MAX_ID_CHARS} characters"),
                    ));
                }
                Ok(Some(s))
            }
            Some(_) => Err(wrong_type(name, "a string")),
        }
    }

    fn id_required(&mut self, field: &str) -> Result<String, Rejection> {
        self.id(field)?.ok_or_else(|| missing(field))
    }

    fn string(&mut self, field: &str) -> Result<Option<String>, Rejection> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(field, "a string")),
        }
    }

    fn boolean(&mut self, field: &str) -> Result<Option<bool>, Rejection> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(wrong_type(field, "a boolean")),
        }
    }

    fn raw_number(&mut self, field: &str) -> Result<Option<Number>, Rejection> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n)),
            Some(_) => Err(wrong_type(field, "a number")),
        }
    }

    fn number(&mut self, field: &str) -> Result<Option<f64>, Rejection> {
        self.number_named(field, field)
    }

    fn number_named(&mut self, field: &str, name: &str) -> Result<Option<f64>, Rejection> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(_) => Err(wrong_type(name, "a number")),
        }
    }

    /// A quantity: a JSON integer (a fractional number is out of range).
    fn quantity(&mut self, field: &str, name: &str) -> Result<Option<i64>, Rejection> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(q) => Ok(Some(q)),
                None => Err(reject(
                    Reason::InvalidValue,
                    format!("field `{name}` must be an integer"),
                )),
            },
            Some(_) => Err(wrong_type(name, "an integer")),
        }
    }

    fn ts_required(&mut self, field: &str) -> Result<Millis, Rejection> {
        self.ts(field)?.ok_or_else(|| missing(field))
    }

    /// A time: an RFC 3339 string with offset, or integer epoch milliseconds.
    fn ts(&mut self, field: &str) -> Result<Option<Millis>, Rejection> {
        let bad = || {
            reject(
                Reason::BadTs,
                format!(
                    "field `{field}` is not an RFC 3339 time with offset or epoch milliseconds"
                ),
            )
        };
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => parse_rfc3339(&s).map(Some).ok_or_else(bad),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(ms) if chrono::DateTime::from_timestamp_millis(ms).is_some() => Ok(Some(ms)),
                _ => Err(bad()),
            },
            Some(_) => Err(wrong_type(field, "a string or an integer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn ok(line: &str) -> Event {
        decode(line.as_bytes(), MAX).unwrap_or_else(|r| panic!("{line}: {r:?}"))
    }

    fn reason(line: &[u8]) -> Reason {
        match decode(line, MAX) {
            Ok(e) => panic!("accepted {}: {e:?}", String::from_utf8_lossy(line)),
            Err(r) => r.reason,
        }
    }

    fn err(line: &str) -> Rejection {
        decode(line.as_bytes(), MAX).unwrap_err()
    }

    #[test]
    fn every_type_decodes_with_both_ts_forms() {
        let e = ok(
            r#"{"type":"product_view","event_id":"e1","ts":"2026-11-22T11:15:00+01:00","cookie_id":"ck","product_id":"P","category":"coats","price":9.5,"crm_id":"C","extra":{"x":1}}"#,
        );
        assert_eq!(e.ts, 1_795_342_500_000);
        let Body::View(v) = e.body else { panic!() };
        assert_eq!(
            (v.kind, v.crm_id.as_deref(), v.price),
            (ViewKind::ProductView, Some("C"), Some(9.5))
        );
        let e = ok(
            r#"{"type":"add_to_cart","event_id":"e2","ts":1795342500000,"cookie_id":"ck","product_id":"P","quantity":2}"#,
        );
        assert!(matches!(
            e.body,
            Body::View(View {
                kind: ViewKind::AddToCart,
                quantity: Some(2),
                ..
            })
        ));
        let e = ok(
            r#"{"type":"identify","event_id":"e3","ts":0,"cookie_id":"ck","crm_id":"C","source":"login"}"#,
        );
        assert!(matches!(e.body, Body::Identify(_)));
        let e = ok(
            r#"{"type":"purchase","event_id":"e4","ts":0,"order_id":"o","channel":"store","crm_id":"C","items":[{"product_id":"P","quantity":1,"price":3}],"total":3}"#,
        );
        let Body::Purchase(p) = e.body else { panic!() };
        assert_eq!(
            (p.channel, p.items.len(), p.cookie_id),
            (Channel::Store, 1, None)
        );
        let e = ok(
            r#"{"type":"purchase","event_id":"e5","ts":0,"order_id":"o","channel":"web","cookie_id":"ck","items":[{"product_id":"P"}]}"#,
        );
        assert!(matches!(
            e.body,
            Body::Purchase(Purchase {
                channel: Channel::Web,
                ..
            })
        ));
        let e = ok(
            r#"{"type":"promotion","event_id":"e6","ts":0,"product_id":"P","discount_pct":100,"promo_price":9.99,"valid_until":"2026-12-01T00:00:00Z"}"#,
        );
        let Body::Promotion(p) = e.body else { panic!() };
        assert_eq!(p.discount_pct, Some(Number::from(100)));
        assert_eq!(p.valid_until, Some(1_796_083_200_000));
        let e = ok(
            r#"{"type":"consent","event_id":"e7","ts":0,"crm_id":"C","email":true,"ads":false}"#,
        );
        assert!(matches!(
            e.body,
            Body::Consent(Consent {
                email: Some(true),
                sms: None,
                ads: Some(false),
                ..
            })
        ));
        let e = ok(r#"{"type":"erase","event_id":"e8","ts":0,"crm_id":"C"}"#);
        assert!(matches!(e.body, Body::Erase(_)));
    }

    #[test]
    fn null_on_an_optional_field_means_absent() {
        let e = ok(
            r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"ck","product_id":"P","category":null,"price":null,"crm_id":null}"#,
        );
        assert!(matches!(
            e.body,
            Body::View(View {
                category: None,
                price: None,
                crm_id: None,
                ..
            })
        ));
    }

    #[test]
    fn size_is_checked_first_and_the_limit_itself_is_accepted() {
        let line = r#"{"type":"erase","event_id":"e","ts":0,"crm_id":"C"}"#;
        assert!(decode(line.as_bytes(), line.len()).is_ok());
        let r = decode(line.as_bytes(), line.len() - 1).unwrap_err();
        assert_eq!(r.reason, Reason::TooLarge);
        let big = vec![b'x'; MAX + 1];
        assert_eq!(reason(&big), Reason::TooLarge);
    }

    #[test]
    fn invalid_utf8_and_invalid_json() {
        assert_eq!(
            reason(b"{\"type\":\"erase\",\"crm_id\":\"\xc3\x28\"}"),
            Reason::InvalidUtf8
        );
        for bad in [
            &b""[..],
            b" ",
            b"{",
            b"{\"type\":",
            b"[1,2]",
            b"42",
            b"\"x\"",
            b"null",
            b"{} trailing",
            b"\xef\xbb\xbf{}",
        ] {
            assert_eq!(
                reason(bad),
                Reason::InvalidJson,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_type_field() {
        assert_eq!(reason(br#"{"event_id":"e","ts":0}"#), Reason::MissingField);
        assert_eq!(
            reason(br#"{"type":null,"event_id":"e","ts":0}"#),
            Reason::MissingField
        );
        assert_eq!(
            reason(br#"{"type":7,"event_id":"e","ts":0}"#),
            Reason::WrongType
        );
        let r = err(r#"{"type":"page_view","event_id":"e","ts":0}"#);
        assert_eq!(
            (r.reason, r.error.as_str()),
            (Reason::UnknownType, "unknown type `page_view`")
        );
    }

    #[test]
    fn each_required_field_missing_names_it() {
        let cases = [
            (
                r#"{"type":"product_view","ts":0,"cookie_id":"c","product_id":"p"}"#,
                "event_id",
            ),
            (
                r#"{"type":"product_view","event_id":"e","cookie_id":"c","product_id":"p"}"#,
                "ts",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":0,"product_id":"p"}"#,
                "cookie_id",
            ),
            (
                r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c"}"#,
                "product_id",
            ),
            (
                r#"{"type":"identify","event_id":"e","ts":0,"cookie_id":"c"}"#,
                "crm_id",
            ),
            (
                r#"{"type":"identify","event_id":"e","ts":0,"crm_id":"c"}"#,
                "cookie_id",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"channel":"web","crm_id":"C","items":[{"product_id":"p"}]}"#,
                "order_id",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","crm_id":"C","items":[{"product_id":"p"}]}"#,
                "channel",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C"}"#,
                "items",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"price":1}]}"#,
                "items[0].product_id",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","items":[{"product_id":"p"}]}"#,
                "crm_id` or `cookie_id",
            ),
            (
                r#"{"type":"promotion","event_id":"e","ts":0}"#,
                "product_id",
            ),
            (
                r#"{"type":"consent","event_id":"e","ts":0,"email":true}"#,
                "crm_id",
            ),
            (
                r#"{"type":"erase","event_id":"e","ts":0,"crm_id":null}"#,
                "crm_id",
            ),
        ];
        for (line, field) in cases {
            let r = err(line);
            assert_eq!(r.reason, Reason::MissingField, "{line}");
            assert_eq!(r.error, format!("missing field `{field}`"), "{line}");
        }
    }

    #[test]
    fn wrong_types_are_rejected_on_required_and_optional_fields() {
        let cases = [
            r#"{"type":"product_view","event_id":1,"ts":0,"cookie_id":"c","product_id":"p"}"#,
            r#"{"type":"product_view","event_id":"e","ts":true,"cookie_id":"c","product_id":"p"}"#,
            r#"{"type":"product_view","event_id":"e","ts":[0],"cookie_id":"c","product_id":"p"}"#,
            r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":5,"product_id":"p"}"#,
            r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","category":3}"#,
            r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","price":"9"}"#,
            r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","crm_id":{}}"#,
            r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":"2"}"#,
            r#"{"type":"identify","event_id":"e","ts":0,"cookie_id":"c","crm_id":"C","source":false}"#,
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":1,"crm_id":"C","items":[{"product_id":"p"}]}"#,
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":{"product_id":"p"}}"#,
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":["p"]}"#,
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":"p","price":"1"}]}"#,
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":"p"}],"total":"1"}"#,
            r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":"10"}"#,
            r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","promo_price":[1]}"#,
            r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","valid_until":false}"#,
            r#"{"type":"consent","event_id":"e","ts":0,"crm_id":"C","sms":"yes"}"#,
            r#"{"type":"consent","event_id":"e","ts":0,"crm_id":"C","ads":1}"#,
        ];
        for line in cases {
            assert_eq!(reason(line.as_bytes()), Reason::WrongType, "{line}");
        }
    }

    #[test]
    fn unparseable_times_are_bad_ts() {
        for ts in [
            r#""2026-11-22T10:15:00""#,
            r#""yesterday""#,
            "1.5e12",
            "1795342500000.0",
            "99999999999999999999",
            "9223372036854775807",
        ] {
            let line = format!(r#"{{"type":"erase","event_id":"e","ts":{ts},"crm_id":"C"}}"#);
            assert_eq!(reason(line.as_bytes()), Reason::BadTs, "{ts}");
        }
        let line =
            r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","valid_until":"soon"}"#;
        assert_eq!(reason(line.as_bytes()), Reason::BadTs);
    }

    #[test]
    fn out_of_range_values_are_invalid_value() {
        let long = "x".repeat(129);
        let exactly = "é".repeat(128);
        assert!(decode(
            format!(r#"{{"type":"erase","event_id":"e","ts":0,"crm_id":"{exactly}"}}"#).as_bytes(),
            MAX
        )
        .is_ok());
        let cases = [
            r#"{"type":"erase","event_id":"","ts":0,"crm_id":"C"}"#.to_string(),
            format!(r#"{{"type":"erase","event_id":"{long}","ts":0,"crm_id":"C"}}"#),
            r#"{"type":"erase","event_id":"e","ts":0,"crm_id":""}"#.to_string(),
            format!(r#"{{"type":"identify","event_id":"e","ts":0,"cookie_id":"{long}","crm_id":"C"}}"#),
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"phone","crm_id":"C","items":[{"product_id":"p"}]}"#.to_string(),
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[]}"#.to_string(),
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":"p","quantity":2.5}]}"#.to_string(),
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"","channel":"web","crm_id":"C","items":[{"product_id":"p"}]}"#.to_string(),
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":""}]}"#.to_string(),
            r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":1.0}"#.to_string(),
            r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":0}"#.to_string(),
            r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":100.5}"#.to_string(),
            r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":-5}"#.to_string(),
        ];
        for line in &cases {
            assert_eq!(reason(line.as_bytes()), Reason::InvalidValue, "{line}");
        }
    }

    #[test]
    fn product_view_ignores_quantity_and_extra_fields() {
        let e = ok(
            r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":"lots","session":{"a":[1]}}"#,
        );
        assert!(matches!(e.body, Body::View(View { quantity: None, .. })));
    }
}
