//! Bytes → a validated `Event`, or a `Rejection` with one of the contract's
//! eight reasons (CONTRACT sections 2 and 6). The only place input is judged.
//!
//! A message is parsed once, by serde_json, straight into one slot per field
//! the contract names: other fields are checked for JSON syntax only and
//! skipped without being built (serde_json skips them without recursion, and
//! does not judge the escapes of a skipped string), and strings without
//! escapes stay borrowed from the message until the one copy into the event.
//! Of duplicate keys the last wins, as in `serde_json::Map`. Validation then reads the
//! slots in a fixed order — size, UTF-8, JSON, `type`, `event_id`, `ts`,
//! then the type's fields in the contract's order — and reports the first
//! fault.

use std::borrow::Cow;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::Number;

use crate::event::{
    Body, Channel, Consent, Erase, Event, Identify, Item, Millis, Promotion, Purchase, View,
    ViewKind,
};
use crate::time::{parse_rfc3339, MAX_MILLIS, MIN_MILLIS};

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
    /// Every reason, in the contract's order.
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

    /// The contract's `reason` string.
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

/// The longest id, in characters (Unicode scalar values), not bytes.
pub(crate) const MAX_ID_CHARS: usize = 128;

/// Decodes one message (a replay line without its newline) of at most
/// `max_bytes` bytes.
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
    let mut m = Message::parse(text)?;
    let kind = kind(&mut m)?;
    let event_id = m.field(F::EventId, required_id)?;
    let ts = m.field(F::Ts, |v| time(v)?.ok_or(Fault::Missing))?;
    let body = body(kind, &mut m)?;
    Ok(Event { event_id, ts, body })
}

/// The `type` field, read before any other.
fn kind(m: &mut Message<'_>) -> Result<Kind, Rejection> {
    let kind = m.field(F::Type, |v| match v {
        None => Err(Fault::Missing),
        Some(Val::Str(s)) => Ok(s),
        Some(_) => Err(Fault::WrongType("a string")),
    })?;
    Kind::of(&kind).ok_or_else(|| {
        reject(
            Reason::UnknownType,
            format!("unknown type `{}`", truncate(&kind, 64)),
        )
    })
}

/// The fields of each type, in the order the contract lists them.
fn body(kind: Kind, m: &mut Message<'_>) -> Result<Body, Rejection> {
    Ok(match kind {
        Kind::View(kind) => Body::View(View {
            kind,
            cookie_id: m.field(F::CookieId, required_id)?,
            product_id: m.field(F::ProductId, required_id)?,
            category: m.field(F::Category, string)?,
            price: m.field(F::Price, number)?,
            crm_id: m.field(F::CrmId, id)?,
            quantity: match kind {
                ViewKind::AddToCart => m.field(F::Quantity, quantity)?,
                ViewKind::ProductView => None,
            },
        }),
        Kind::Identify => Body::Identify(Identify {
            cookie_id: m.field(F::CookieId, required_id)?,
            crm_id: m.field(F::CrmId, required_id)?,
            source: m.field(F::Source, string)?,
        }),
        Kind::Purchase => Body::Purchase(purchase(m)?),
        Kind::Promotion => Body::Promotion(Promotion {
            product_id: m.field(F::ProductId, required_id)?,
            discount_pct: m.field(F::DiscountPct, discount_pct)?,
            promo_price: m.field(F::PromoPrice, raw_number)?,
            valid_until: m.field(F::ValidUntil, time)?,
        }),
        Kind::Consent => Body::Consent(Consent {
            crm_id: m.field(F::CrmId, required_id)?,
            email: m.field(F::Email, boolean)?,
            sms: m.field(F::Sms, boolean)?,
            ads: m.field(F::Ads, boolean)?,
        }),
        Kind::Erase => Body::Erase(Erase {
            crm_id: m.field(F::CrmId, required_id)?,
        }),
    })
}

/// The input types, resolved before any other field is read.
enum Kind {
    View(ViewKind),
    Identify,
    Purchase,
    Promotion,
    Consent,
    Erase,
}

/// The fields every type reads.
const COMMON: [F; 3] = [F::Type, F::EventId, F::Ts];

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        Some(match name {
            "product_view" => Kind::View(ViewKind::ProductView),
            "add_to_cart" => Kind::View(ViewKind::AddToCart),
            "identify" => Kind::Identify,
            "purchase" => Kind::Purchase,
            "promotion" => Kind::Promotion,
            "consent" => Kind::Consent,
            "erase" => Kind::Erase,
            _ => return None,
        })
    }

    /// The fields `body` reads for this type, besides `COMMON`.
    fn fields(&self) -> &'static [F] {
        use F::*;
        match self {
            Kind::View(ViewKind::ProductView) => &[CookieId, ProductId, Category, Price, CrmId],
            Kind::View(ViewKind::AddToCart) => {
                &[CookieId, ProductId, Category, Price, CrmId, Quantity]
            }
            Kind::Identify => &[CookieId, CrmId, Source],
            Kind::Purchase => &[OrderId, Channel, Items, CrmId, CookieId, Total],
            Kind::Promotion => &[ProductId, DiscountPct, PromoPrice, ValidUntil],
            Kind::Consent => &[CrmId, Email, Sms, Ads],
            Kind::Erase => &[CrmId],
        }
    }
}

fn purchase(m: &mut Message<'_>) -> Result<Purchase, Rejection> {
    let order_id = m.field(F::OrderId, required_id)?;
    let channel = m.field(F::Channel, |v| match v {
        None => Err(Fault::Missing),
        Some(Val::Str(s)) => match &*s {
            "web" => Ok(Channel::Web),
            "store" => Ok(Channel::Store),
            _ => Err(Fault::Invalid("must be \"web\" or \"store\"")),
        },
        Some(_) => Err(Fault::WrongType("a string")),
    })?;
    let items = m.field(F::Items, |v| match v {
        None => Err(Fault::Missing),
        Some(Val::Arr(a)) if a.is_empty() => Err(Fault::Invalid("must not be empty")),
        Some(Val::Arr(a)) => Ok(a),
        Some(_) => Err(Fault::WrongType("an array")),
    })?;
    let items = items
        .into_iter()
        .enumerate()
        .map(|(index, v)| item(index, v))
        .collect::<Result<Vec<_>, _>>()?;
    let crm_id = m.field(F::CrmId, id)?;
    let cookie_id = m.field(F::CookieId, id)?;
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
        total: m.field(F::Total, number)?,
    })
}

/// One element of a purchase's `items`, named `items[i].field` in errors.
fn item(index: usize, v: Val<'_>) -> Result<Item, Rejection> {
    let Val::Obj(mut slots) = v else {
        return Err(Fault::WrongType("an object").at(format_args!("items[{index}]")));
    };
    let name = |i: usize| move |f: Fault| f.at(format_args!("items[{index}].{}", ITEM_FIELDS[i]));
    Ok(Item {
        product_id: required_id(take(&mut slots[0])).map_err(name(0))?,
        quantity: quantity(take(&mut slots[1])).map_err(name(1))?,
        price: number(take(&mut slots[2])).map_err(name(2))?,
    })
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------
// Field values: each reader turns one slot (`None` when absent or null) into
// a value or a `Fault`, which the caller names.

/// What is wrong with a field's value, before the field is named.
enum Fault {
    Missing,
    /// What the field must be: "a string".
    WrongType(&'static str),
    /// The rule the value breaks: "must not be empty".
    Invalid(&'static str),
    BadTs,
}

impl Fault {
    fn at(self, name: impl fmt::Display) -> Rejection {
        match self {
            Fault::Missing => reject(Reason::MissingField, format!("missing field `{name}`")),
            Fault::WrongType(expected) => reject(
                Reason::WrongType,
                format!("field `{name}` must be {expected}"),
            ),
            Fault::Invalid(rule) => reject(Reason::InvalidValue, format!("field `{name}` {rule}")),
            Fault::BadTs => reject(
                Reason::BadTs,
                format!("field `{name}` is not an RFC 3339 time with offset or epoch milliseconds"),
            ),
        }
    }
}

/// An id: a string of 1 to 128 characters.
fn id(v: Option<Val<'_>>) -> Result<Option<String>, Fault> {
    match v {
        None => Ok(None),
        Some(Val::Str(s)) => {
            // A character is at most 4 bytes: a short string needs no count.
            let fits =
                !s.is_empty() && (s.len() <= MAX_ID_CHARS || s.chars().count() <= MAX_ID_CHARS);
            if fits {
                Ok(Some(s.into_owned()))
            } else {
                Err(Fault::Invalid("must be 1 to 128 characters"))
            }
        }
        Some(_) => Err(Fault::WrongType("a string")),
    }
}

fn required_id(v: Option<Val<'_>>) -> Result<String, Fault> {
    id(v)?.ok_or(Fault::Missing)
}

fn string(v: Option<Val<'_>>) -> Result<Option<String>, Fault> {
    match v {
        None => Ok(None),
        Some(Val::Str(s)) => Ok(Some(s.into_owned())),
        Some(_) => Err(Fault::WrongType("a string")),
    }
}

fn boolean(v: Option<Val<'_>>) -> Result<Option<bool>, Fault> {
    match v {
        None => Ok(None),
        Some(Val::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(Fault::WrongType("a boolean")),
    }
}

/// A number as received (its JSON integer or float form).
fn raw_number(v: Option<Val<'_>>) -> Result<Option<Number>, Fault> {
    match v {
        None => Ok(None),
        Some(Val::Num(n)) => Ok(Some(n)),
        Some(_) => Err(Fault::WrongType("a number")),
    }
}

fn number(v: Option<Val<'_>>) -> Result<Option<f64>, Fault> {
    // Without serde_json's `arbitrary_precision`, every number is an f64.
    Ok(raw_number(v)?.and_then(|n| n.as_f64()))
}

/// A quantity: a JSON integer; a number with a fraction (even `2.0`) is out
/// of range, since the contract's quantities count units.
fn quantity(v: Option<Val<'_>>) -> Result<Option<i64>, Fault> {
    match v {
        None => Ok(None),
        Some(Val::Num(n)) => n
            .as_i64()
            .map(Some)
            .ok_or(Fault::Invalid("must be an integer")),
        Some(_) => Err(Fault::WrongType("an integer")),
    }
}

/// A percentage in (0, 100], kept as received.
fn discount_pct(v: Option<Val<'_>>) -> Result<Option<Number>, Fault> {
    let n = raw_number(v)?;
    if let Some(x) = n.as_ref().and_then(Number::as_f64) {
        if !(x > 0.0 && x <= 100.0) {
            return Err(Fault::Invalid("must be greater than 0 and at most 100"));
        }
    }
    Ok(n)
}

/// A time: an RFC 3339 string with offset, or an integer of epoch
/// milliseconds; either must fall in years 0000–9999, the times RFC 3339
/// can write back (and far from `i64` overflow in the engine's arithmetic).
fn time(v: Option<Val<'_>>) -> Result<Option<Millis>, Fault> {
    let ms = match v {
        None => return Ok(None),
        Some(Val::Str(s)) => parse_rfc3339(&s),
        // A float (even `1.7e12`) or an integer beyond `i64` is `None`.
        Some(Val::Num(n)) => n.as_i64(),
        Some(_) => return Err(Fault::WrongType("a string or an integer")),
    };
    match ms {
        Some(ms) if (MIN_MILLIS..=MAX_MILLIS).contains(&ms) => Ok(Some(ms)),
        _ => Err(Fault::BadTs),
    }
}

// ---------------------------------------------------------------------------
// Parsing: one pass of serde_json into slots.

/// The top-level fields any type reads, indexing `FIELDS`.
#[derive(Clone, Copy)]
enum F {
    Type,
    EventId,
    Ts,
    CookieId,
    ProductId,
    Category,
    Price,
    CrmId,
    Quantity,
    Source,
    OrderId,
    Channel,
    Items,
    Total,
    DiscountPct,
    PromoPrice,
    ValidUntil,
    Email,
    Sms,
    Ads,
}

/// The names of `F`'s fields, in its order.
const FIELDS: [&str; 20] = [
    "type",
    "event_id",
    "ts",
    "cookie_id",
    "product_id",
    "category",
    "price",
    "crm_id",
    "quantity",
    "source",
    "order_id",
    "channel",
    "items",
    "total",
    "discount_pct",
    "promo_price",
    "valid_until",
    "email",
    "sms",
    "ads",
];

fn top_field(key: &str) -> Option<usize> {
    let f = match key {
        "type" => F::Type,
        "event_id" => F::EventId,
        "ts" => F::Ts,
        "cookie_id" => F::CookieId,
        "product_id" => F::ProductId,
        "category" => F::Category,
        "price" => F::Price,
        "crm_id" => F::CrmId,
        "quantity" => F::Quantity,
        "source" => F::Source,
        "order_id" => F::OrderId,
        "channel" => F::Channel,
        "items" => F::Items,
        "total" => F::Total,
        "discount_pct" => F::DiscountPct,
        "promo_price" => F::PromoPrice,
        "valid_until" => F::ValidUntil,
        "email" => F::Email,
        "sms" => F::Sms,
        "ads" => F::Ads,
        _ => return None,
    };
    Some(f as usize)
}

/// The fields of a purchase item, in `Item`'s order.
const ITEM_FIELDS: [&str; 3] = ["product_id", "quantity", "price"];

fn item_field(key: &str) -> Option<usize> {
    ITEM_FIELDS.iter().position(|f| *f == key)
}

/// A JSON value of a field pretext reads, borrowing unescaped strings.
enum Val<'a> {
    Null,
    Bool(bool),
    Num(Number),
    Str(Cow<'a, str>),
    Arr(Vec<Val<'a>>),
    /// An object keeps only an item's fields: objects are read only as the
    /// elements of `items`; anywhere else they are the wrong type.
    Obj(Box<ItemSlots<'a>>),
}

type ItemSlots<'a> = [Option<Val<'a>>; ITEM_FIELDS.len()];

/// Takes a slot's value; JSON `null` is absent.
fn take<'a>(slot: &mut Option<Val<'a>>) -> Option<Val<'a>> {
    match slot.take() {
        Some(Val::Null) | None => None,
        v => v,
    }
}

/// A parsed message: the value of each field in `F`, if present.
struct Message<'a> {
    slots: [Option<Val<'a>>; FIELDS.len()],
}

impl<'a> Message<'a> {
    /// Parses a whole message, which must be one JSON object (blanks around
    /// it allowed, nothing else).
    fn parse(text: &'a str) -> Result<Message<'a>, Rejection> {
        Self::parse_keeping(text, ALL_SLOTS).or_else(|e| {
            // A value serde_json cannot build (a number beyond f64, a lone
            // surrogate escape, nesting past 128) fails the whole parse,
            // even in a field of another type: for this message an unknown
            // extra field, which the contract ignores. So the message is
            // parsed again keeping only its type's fields; should that fail
            // too, the first error stands.
            Self::type_fields(text)
                .and_then(|keep| Self::parse_keeping(text, keep).ok())
                .ok_or_else(|| reject(Reason::InvalidJson, format!("invalid json: {e}")))
        })
    }

    /// Parses the message, building the fields whose slot bit is in `keep`
    /// and skipping the others.
    fn parse_keeping(text: &'a str, keep: u32) -> Result<Message<'a>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let slots = de
            .deserialize_map(SlotsVisitor {
                index: top_field,
                keep,
                expecting: "a json object",
            })
            .and_then(|slots| de.end().map(|()| slots))?;
        Ok(Message { slots })
    }

    /// The slots of the fields the message's type reads, when `type`
    /// names one.
    fn type_fields(text: &'a str) -> Option<u32> {
        let mut m = Self::parse_keeping(text, slot_bit(F::Type)).ok()?;
        let Some(Val::Str(name)) = take(&mut m.slots[F::Type as usize]) else {
            return None;
        };
        let kind = Kind::of(&name)?;
        Some(
            COMMON
                .iter()
                .chain(kind.fields())
                .fold(0, |keep, &f| keep | slot_bit(f)),
        )
    }

    /// Reads field `f` with `read`, naming it in a fault.
    fn field<T>(
        &mut self,
        f: F,
        read: impl FnOnce(Option<Val<'a>>) -> Result<T, Fault>,
    ) -> Result<T, Rejection> {
        read(take(&mut self.slots[f as usize])).map_err(|fault| fault.at(FIELDS[f as usize]))
    }
}

/// Every slot kept: the message parsed whatever its type.
const ALL_SLOTS: u32 = u32::MAX;

fn slot_bit(f: F) -> u32 {
    1 << f as u32
}

/// Reads a JSON object into `N` slots by key; later duplicates win, as in
/// `serde_json::Map`. Other keys, and those whose slot bit is not in
/// `keep`, are skipped.
struct SlotsVisitor {
    index: fn(&str) -> Option<usize>,
    keep: u32,
    expecting: &'static str,
}

impl SlotsVisitor {
    fn read<'de, A: MapAccess<'de>, const N: usize>(
        self,
        mut map: A,
    ) -> Result<[Option<Val<'de>>; N], A::Error> {
        let mut slots: [Option<Val<'de>>; N] = std::array::from_fn(|_| None);
        while let Some(key) = map.next_key_seed(KeySeed(self.index))? {
            match key {
                Some(i) if self.keep & (1 << i) != 0 => slots[i] = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(slots)
    }
}

impl<'de> Visitor<'de> for SlotsVisitor {
    type Value = [Option<Val<'de>>; FIELDS.len()];

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.read(map)
    }
}

/// A key, resolved to its slot without being copied.
struct KeySeed(fn(&str) -> Option<usize>);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok((self.0)(key))
    }
}

impl<'de> de::Deserialize<'de> for Val<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a json value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(Val::Num(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(Val::Num(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Val<'de>, E> {
        // serde_json never yields a non-finite number; refuse one anyway.
        Number::from_f64(v)
            .map(Val::Num)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Val::Arr(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Val<'de>, A::Error> {
        let visitor = SlotsVisitor {
            index: item_field,
            keep: ALL_SLOTS,
            expecting: "an object",
        };
        Ok(Val::Obj(Box::new(visitor.read(map)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;
    const T: Millis = 1_795_342_500_000; // 2026-11-22T10:15:00Z

    fn ok(line: &str) -> Event {
        decode(line.as_bytes(), MAX).unwrap_or_else(|r| panic!("{line}: {r:?}"))
    }

    fn err(line: &[u8]) -> Rejection {
        match decode(line, MAX) {
            Ok(e) => panic!("accepted {}: {e:?}", String::from_utf8_lossy(line)),
            Err(r) => r,
        }
    }

    fn reason(line: &str) -> Reason {
        err(line.as_bytes()).reason
    }

    /// Asserts each line is rejected with `expected`, and its text.
    fn rejects(expected: Reason, cases: &[(&str, &str)]) {
        for (line, text) in cases {
            let r = err(line.as_bytes());
            assert_eq!((r.reason, r.error.as_str()), (expected, *text), "{line}");
        }
    }

    #[test]
    fn reasons_have_the_contract_strings() {
        let names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "invalid_utf8",
                "invalid_json",
                "too_large",
                "missing_field",
                "wrong_type",
                "unknown_type",
                "bad_ts",
                "invalid_value"
            ]
        );
    }

    #[test]
    fn field_names_and_slots_agree() {
        for (i, name) in FIELDS.iter().enumerate() {
            assert_eq!(top_field(name), Some(i), "{name}");
        }
        for (i, name) in ITEM_FIELDS.iter().enumerate() {
            assert_eq!(item_field(name), Some(i), "{name}");
        }
        assert_eq!(top_field("Type"), None);
    }

    #[test]
    fn product_view_with_an_rfc3339_ts() {
        let e = ok(
            r#"{"type":"product_view","event_id":"e1","ts":"2026-11-22T11:15:00+01:00","cookie_id":"ck","product_id":"P","category":"coats","price":9.5,"crm_id":"C"}"#,
        );
        assert_eq!(
            e,
            Event {
                event_id: "e1".into(),
                ts: T,
                body: Body::View(View {
                    kind: ViewKind::ProductView,
                    cookie_id: "ck".into(),
                    product_id: "P".into(),
                    category: Some("coats".into()),
                    price: Some(9.5),
                    crm_id: Some("C".into()),
                    quantity: None,
                }),
            }
        );
    }

    #[test]
    fn add_to_cart_with_an_epoch_ts() {
        let e = ok(
            r#"{"type":"add_to_cart","event_id":"e2","ts":1795342500000,"cookie_id":"ck","product_id":"P","quantity":2}"#,
        );
        assert_eq!(
            e,
            Event {
                event_id: "e2".into(),
                ts: T,
                body: Body::View(View {
                    kind: ViewKind::AddToCart,
                    cookie_id: "ck".into(),
                    product_id: "P".into(),
                    category: None,
                    price: None,
                    crm_id: None,
                    quantity: Some(2),
                }),
            }
        );
    }

    #[test]
    fn identify_in_both_ts_forms() {
        for ts in [r#""2026-11-22T10:15:00Z""#, "1795342500000"] {
            let e = ok(&format!(
                r#"{{"type":"identify","event_id":"e3","ts":{ts},"cookie_id":"ck","crm_id":"C","source":"login"}}"#
            ));
            assert_eq!(e.ts, T);
            assert_eq!(
                e.body,
                Body::Identify(Identify {
                    cookie_id: "ck".into(),
                    crm_id: "C".into(),
                    source: Some("login".into()),
                })
            );
        }
    }

    #[test]
    fn purchase_with_crm_id_or_cookie_id() {
        let e = ok(
            r#"{"type":"purchase","event_id":"e4","ts":"2026-11-22T10:15:00.250Z","order_id":"o","channel":"store","crm_id":"C","items":[{"product_id":"P","quantity":1,"price":3},{"product_id":"Q"}],"total":3.5}"#,
        );
        assert_eq!(e.ts, T + 250);
        assert_eq!(
            e.body,
            Body::Purchase(Purchase {
                order_id: "o".into(),
                channel: Channel::Store,
                items: vec![
                    Item {
                        product_id: "P".into(),
                        quantity: Some(1),
                        price: Some(3.0),
                    },
                    Item {
                        product_id: "Q".into(),
                        quantity: None,
                        price: None,
                    },
                ],
                crm_id: Some("C".into()),
                cookie_id: None,
                total: Some(3.5),
            })
        );
        let e = ok(
            r#"{"type":"purchase","event_id":"e5","ts":0,"order_id":"o","channel":"web","cookie_id":"ck","items":[{"product_id":"P"}]}"#,
        );
        let Body::Purchase(p) = e.body else {
            panic!("{e:?}")
        };
        assert_eq!(
            (p.channel, p.crm_id, p.cookie_id.as_deref(), p.total),
            (Channel::Web, None, Some("ck"), None)
        );
    }

    #[test]
    fn promotion_keeps_its_numbers_as_received() {
        let e = ok(
            r#"{"type":"promotion","event_id":"e6","ts":1795342500000,"product_id":"P","discount_pct":100,"promo_price":9.99,"valid_until":"2026-12-01T01:00:00+01:00"}"#,
        );
        assert_eq!(
            e.body,
            Body::Promotion(Promotion {
                product_id: "P".into(),
                discount_pct: Some(Number::from(100)),
                promo_price: Number::from_f64(9.99),
                valid_until: Some(1_796_083_200_000),
            })
        );
        let e = ok(
            r#"{"type":"promotion","event_id":"e6","ts":"2026-11-22T10:15:00Z","product_id":"P","discount_pct":12.5,"valid_until":1796083200000}"#,
        );
        let Body::Promotion(p) = e.body else {
            panic!("{e:?}")
        };
        assert_eq!(p.discount_pct.map(|n| n.to_string()), Some("12.5".into()));
        assert_eq!(
            (p.promo_price, p.valid_until),
            (None, Some(1_796_083_200_000))
        );
        let e = ok(r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"P"}"#);
        assert_eq!(
            e.body,
            Body::Promotion(Promotion {
                product_id: "P".into(),
                discount_pct: None,
                promo_price: None,
                valid_until: None,
            })
        );
    }

    #[test]
    fn consent_and_erase() {
        let e = ok(
            r#"{"type":"consent","event_id":"e7","ts":"2026-11-22T10:15:00Z","crm_id":"C","email":true,"ads":false}"#,
        );
        assert_eq!(
            e.body,
            Body::Consent(Consent {
                crm_id: "C".into(),
                email: Some(true),
                sms: None,
                ads: Some(false),
            })
        );
        let e = ok(r#"{"type":"erase","event_id":"e8","ts":1795342500000,"crm_id":"C"}"#);
        assert_eq!(
            (e.ts, e.body),
            (T, Body::Erase(Erase { crm_id: "C".into() }))
        );
        let e = ok(r#"{"type":"erase","event_id":"e8","ts":"2026-11-22T10:15:00Z","crm_id":"C"}"#);
        assert_eq!(e.ts, T);
    }

    #[test]
    fn null_on_an_optional_field_means_absent() {
        let e = ok(
            r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"ck","product_id":"P","category":null,"price":null,"crm_id":null,"quantity":null}"#,
        );
        let Body::View(v) = e.body else {
            panic!("{e:?}")
        };
        assert_eq!(
            (v.category, v.price, v.crm_id, v.quantity),
            (None, None, None, None)
        );
        let e = ok(
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","cookie_id":null,"total":null,"items":[{"product_id":"P","quantity":null,"price":null}]}"#,
        );
        let Body::Purchase(p) = e.body else {
            panic!("{e:?}")
        };
        assert_eq!(
            (p.cookie_id, p.total, p.items[0].quantity),
            (None, None, None)
        );
        let e = ok(
            r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"P","discount_pct":null,"promo_price":null,"valid_until":null}"#,
        );
        assert!(matches!(
            e.body,
            Body::Promotion(Promotion {
                discount_pct: None,
                promo_price: None,
                valid_until: None,
                ..
            })
        ));
        let e = ok(
            r#"{"type":"consent","event_id":"e","ts":0,"crm_id":"C","email":null,"sms":null,"ads":null}"#,
        );
        assert!(matches!(
            e.body,
            Body::Consent(Consent {
                email: None,
                sms: None,
                ads: None,
                ..
            })
        ));
        let e = ok(
            r#"{"type":"identify","event_id":"e","ts":0,"cookie_id":"c","crm_id":"C","source":null}"#,
        );
        assert!(matches!(
            e.body,
            Body::Identify(Identify { source: None, .. })
        ));
    }

    #[test]
    fn extra_fields_are_ignored_whatever_they_hold() {
        let e = ok(
            r#"{"extra":{"a":[1,{"b":null}]},"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":"lots","items":7,"email":"x","valid_until":"never","session":[[]],"n":1e300}"#,
        );
        assert!(matches!(e.body, Body::View(View { quantity: None, .. })));
        // A purchase item's unknown fields too.
        ok(
            r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":"P","sku":{"x":[]},"type":1}]}"#,
        );
        // Fields of other types are extras: an erase ignores a view's fields.
        ok(r#"{"type":"erase","event_id":"e","ts":0,"crm_id":"C","cookie_id":5,"price":"x"}"#);
    }

    #[test]
    fn escaped_strings_and_keys_decode() {
        let e = ok(
            r#"{"\u0074ype":"identify","event_id":"e\"1","ts":0,"cookie_id":"c\\k\u00e9","crm_id":"\ud83d\ude00"}"#,
        );
        assert_eq!(e.event_id, "e\"1");
        assert_eq!(
            e.body,
            Body::Identify(Identify {
                cookie_id: "c\\ké".into(),
                crm_id: "😀".into(),
                source: None,
            })
        );
    }

    #[test]
    fn the_last_of_duplicate_keys_wins() {
        let e =
            ok(r#"{"type":"erase","event_id":"a","event_id":"b","ts":5,"crm_id":7,"crm_id":"C"}"#);
        assert_eq!((e.event_id.as_str(), e.ts), ("b", 5));
    }

    #[test]
    fn blanks_around_the_object_are_allowed() {
        // A CRLF replay file leaves a `\r` at the end of each line.
        let e = ok(" \t{\"type\":\"erase\",\"event_id\":\"e\",\"ts\":0,\"crm_id\":\"C\"}\r");
        assert_eq!(e.event_id, "e");
    }

    #[test]
    fn too_large_is_checked_first_and_the_limit_itself_is_accepted() {
        let line = r#"{"type":"erase","event_id":"e","ts":0,"crm_id":"C"}"#;
        assert!(decode(line.as_bytes(), line.len()).is_ok());
        let r = decode(line.as_bytes(), line.len() - 1).unwrap_err();
        assert_eq!(r.reason, Reason::TooLarge);

        // Exactly 1 MiB, padded with blanks, is accepted; one byte more is not.
        let mut big = line.as_bytes().to_vec();
        big.resize(MAX, b' ');
        assert!(decode(&big, MAX).is_ok());
        big.push(b' ');
        let r = err(&big);
        assert_eq!(
            (r.reason, r.error.as_str()),
            (
                Reason::TooLarge,
                "message is 1048577 bytes, over the limit of 1048576"
            )
        );
        // Size comes before UTF-8 and JSON.
        assert_eq!(err(&vec![0xff; MAX + 1]).reason, Reason::TooLarge);
    }

    #[test]
    fn invalid_utf8_names_the_byte() {
        let r = err(b"{\"type\":\"erase\",\"crm_id\":\"\xc3\x28\"}");
        assert_eq!(
            (r.reason, r.error.as_str()),
            (Reason::InvalidUtf8, "invalid utf-8 at byte 26")
        );
        for bad in [
            &b"\xff"[..],
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"{\"a\":\"\xe2\x82\"}",
        ] {
            assert_eq!(err(bad).reason, Reason::InvalidUtf8);
        }
        // Latin-1 text is not UTF-8.
        assert_eq!(
            err(b"{\"category\":\"caf\xe9\"}").reason,
            Reason::InvalidUtf8
        );
    }

    #[test]
    fn invalid_json() {
        for bad in [
            &b""[..],
            b" ",
            b"\t\r",
            b"{",
            b"}",
            b"{\"type\":",
            b"{\"type\":\"erase\",}",
            b"{'type':'erase'}",
            b"{type:\"erase\"}",
            b"[1,2]",
            b"[{\"type\":\"erase\",\"event_id\":\"e\",\"ts\":0,\"crm_id\":\"C\"}]",
            b"42",
            b"\"x\"",
            b"null",
            b"true",
            b"{} trailing",
            b"{}{}",
            b"{\"type\":\"erase\",\"event_id\":\"e\",\"ts\":0,\"crm_id\":\"C\"} x",
            b"\xef\xbb\xbf{\"type\":\"erase\",\"event_id\":\"e\",\"ts\":0,\"crm_id\":\"C\"}",
            b"{\"type\":\"erase\",\"event_id\":\"e\",\"ts\":NaN,\"crm_id\":\"C\"}",
            b"{\"type\":\"erase\",\"event_id\":\"e\",\"ts\":1e400,\"crm_id\":\"C\"}",
            b"{\"type\":\"erase\",\"event_id\":\"e\x01\",\"ts\":0,\"crm_id\":\"C\"}",
            b"{\"type\":\"erase\",\"event_id\":\"\\ud800\",\"ts\":0,\"crm_id\":\"C\"}",
        ] {
            let r = err(bad);
            assert_eq!(
                r.reason,
                Reason::InvalidJson,
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(r.error.starts_with("invalid json: "), "{}", r.error);
        }
        assert_eq!(
            err(b"").error,
            "invalid json: EOF while parsing a value at line 1 column 0"
        );
        // JSON syntax is checked before any field, even in skipped fields.
        assert_eq!(
            reason(r#"{"type":"nope","extra":[1,}"#),
            Reason::InvalidJson
        );
    }

    #[test]
    fn deep_nesting_never_crashes() {
        // A skipped field is only checked for syntax, without recursion.
        let deep = format!(
            r#"{{"type":"erase","event_id":"e","ts":0,"crm_id":"C","x":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(decode(deep.as_bytes(), MAX).is_ok());
        // A read field is built, within serde_json's recursion limit.
        let deep = format!(
            r#"{{"type":"erase","event_id":"e","ts":0,"crm_id":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(reason(&deep), Reason::InvalidJson);
        let shallow = r#"{"type":"erase","event_id":"e","ts":0,"crm_id":[[[1]]]}"#;
        assert_eq!(reason(shallow), Reason::WrongType);
    }

    #[test]
    fn the_type_field() {
        rejects(
            Reason::MissingField,
            &[
                (r#"{"event_id":"e","ts":0}"#, "missing field `type`"),
                (
                    r#"{"type":null,"event_id":"e","ts":0}"#,
                    "missing field `type`",
                ),
                (r#"{}"#, "missing field `type`"),
                (r#"{"Type":"erase"}"#, "missing field `type`"),
            ],
        );
        rejects(
            Reason::WrongType,
            &[
                (
                    r#"{"type":7,"event_id":"e","ts":0}"#,
                    "field `type` must be a string",
                ),
                (r#"{"type":["erase"]}"#, "field `type` must be a string"),
                (r#"{"type":{"erase":1}}"#, "field `type` must be a string"),
            ],
        );
        let long = "x".repeat(100);
        let long_line = format!(r#"{{"type":"{long}"}}"#);
        let long_text = format!("unknown type `{}`", &long[..64]);
        rejects(
            Reason::UnknownType,
            &[
                (
                    r#"{"type":"page_view","event_id":"e","ts":0}"#,
                    "unknown type `page_view`",
                ),
                (
                    r#"{"type":"Product_View","event_id":"e","ts":0}"#,
                    "unknown type `Product_View`",
                ),
                (r#"{"type":"","event_id":"e","ts":0}"#, "unknown type ``"),
                // The type is judged before `event_id` and `ts`.
                (r#"{"type":"foo"}"#, "unknown type `foo`"),
                (&long_line, &long_text),
            ],
        );
    }

    #[test]
    fn fields_are_checked_in_order() {
        // event_id before ts before the type's fields.
        rejects(
            Reason::MissingField,
            &[
                (r#"{"type":"erase","ts":"bad"}"#, "missing field `event_id`"),
                (
                    r#"{"type":"erase","event_id":"e","crm_id":5}"#,
                    "missing field `ts`",
                ),
            ],
        );
        assert_eq!(
            reason(r#"{"type":"erase","event_id":"e","ts":"bad"}"#),
            Reason::BadTs
        );
        // Required before optional, in the contract's order.
        assert_eq!(
            err(br#"{"type":"product_view","event_id":"e","ts":0,"product_id":"","price":"x"}"#)
                .error,
            "missing field `cookie_id`"
        );
        assert_eq!(
            err(br#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","items":[{"product_id":""}]}"#).error,
            "field `items[0].product_id` must be 1 to 128 characters"
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
                r#"{"type":"product_view","event_id":null,"ts":0,"cookie_id":"c","product_id":"p"}"#,
                "event_id",
            ),
            (
                r#"{"type":"product_view","event_id":"e","cookie_id":"c","product_id":"p"}"#,
                "ts",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":null,"cookie_id":"c","product_id":"p"}"#,
                "ts",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":0,"product_id":"p"}"#,
                "cookie_id",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c"}"#,
                "product_id",
            ),
            (
                r#"{"type":"add_to_cart","event_id":"e","ts":0,"product_id":"p","crm_id":"C"}"#,
                "cookie_id",
            ),
            (
                r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":null}"#,
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
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":null,"crm_id":"C","items":[{"product_id":"p"}]}"#,
                "channel",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C"}"#,
                "items",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":null}"#,
                "items",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"price":1}]}"#,
                "items[0].product_id",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":"p"},{"product_id":null}]}"#,
                "items[1].product_id",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","items":[{"product_id":"p"}]}"#,
                "crm_id` or `cookie_id",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":null,"cookie_id":null,"items":[{"product_id":"p"}]}"#,
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
            let r = err(line.as_bytes());
            assert_eq!(
                (r.reason, r.error),
                (Reason::MissingField, format!("missing field `{field}`")),
                "{line}"
            );
        }
    }

    #[test]
    fn wrong_types_are_rejected_on_required_and_optional_fields() {
        let cases = [
            (
                r#"{"type":"product_view","event_id":1,"ts":0,"cookie_id":"c","product_id":"p"}"#,
                "field `event_id` must be a string",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":true,"cookie_id":"c","product_id":"p"}"#,
                "field `ts` must be a string or an integer",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":[0],"cookie_id":"c","product_id":"p"}"#,
                "field `ts` must be a string or an integer",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":{},"cookie_id":"c","product_id":"p"}"#,
                "field `ts` must be a string or an integer",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":5,"product_id":"p"}"#,
                "field `cookie_id` must be a string",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":["p"]}"#,
                "field `product_id` must be a string",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","category":3}"#,
                "field `category` must be a string",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","price":"9"}"#,
                "field `price` must be a number",
            ),
            (
                r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","crm_id":{}}"#,
                "field `crm_id` must be a string",
            ),
            (
                r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":"2"}"#,
                "field `quantity` must be an integer",
            ),
            (
                r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":true}"#,
                "field `quantity` must be an integer",
            ),
            (
                r#"{"type":"identify","event_id":"e","ts":0,"cookie_id":"c","crm_id":"C","source":false}"#,
                "field `source` must be a string",
            ),
            (
                r#"{"type":"identify","event_id":"e","ts":0,"cookie_id":"c","crm_id":1}"#,
                "field `crm_id` must be a string",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":1,"channel":"web","crm_id":"C","items":[{"product_id":"p"}]}"#,
                "field `order_id` must be a string",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":1,"crm_id":"C","items":[{"product_id":"p"}]}"#,
                "field `channel` must be a string",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":{"product_id":"p"}}"#,
                "field `items` must be an array",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":"p"}"#,
                "field `items` must be an array",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":["p"]}"#,
                "field `items[0]` must be an object",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":"p"},null]}"#,
                "field `items[1]` must be an object",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":5}]}"#,
                "field `items[0].product_id` must be a string",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":"p","quantity":"1"}]}"#,
                "field `items[0].quantity` must be an integer",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":"p"},{"product_id":"q","price":"1"}]}"#,
                "field `items[1].price` must be a number",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":"p"}],"total":"1"}"#,
                "field `total` must be a number",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":5,"items":[{"product_id":"p"}]}"#,
                "field `crm_id` must be a string",
            ),
            (
                r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","cookie_id":[],"items":[{"product_id":"p"}]}"#,
                "field `cookie_id` must be a string",
            ),
            (
                r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":"10"}"#,
                "field `discount_pct` must be a number",
            ),
            (
                r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","promo_price":[1]}"#,
                "field `promo_price` must be a number",
            ),
            (
                r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","valid_until":false}"#,
                "field `valid_until` must be a string or an integer",
            ),
            (
                r#"{"type":"consent","event_id":"e","ts":0,"crm_id":"C","email":"true"}"#,
                "field `email` must be a boolean",
            ),
            (
                r#"{"type":"consent","event_id":"e","ts":0,"crm_id":"C","sms":"yes"}"#,
                "field `sms` must be a boolean",
            ),
            (
                r#"{"type":"consent","event_id":"e","ts":0,"crm_id":"C","ads":1}"#,
                "field `ads` must be a boolean",
            ),
            (
                r#"{"type":"erase","event_id":"e","ts":0,"crm_id":true}"#,
                "field `crm_id` must be a string",
            ),
        ];
        rejects(Reason::WrongType, &cases);
    }

    #[test]
    fn unparseable_times_are_bad_ts() {
        let text = "field `ts` is not an RFC 3339 time with offset or epoch milliseconds";
        for ts in [
            r#""2026-11-22T10:15:00""#,
            r#""2026-11-22 10:15:00Z""#,
            r#""2026-11-22""#,
            r#""yesterday""#,
            r#""""#,
            r#""1795342500000""#,
            "1.5e12",
            "1795342500000.0",
            "1795342500000.5",
            "-1.0",
            // serde_json reads `-0` as the float -0.0, like `-0.0`.
            "-0",
            "99999999999999999999",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            // Years beyond 9999 and before 0000.
            "253402300800000",
            "-62167219200001",
            r#""0000-01-01T00:00:00+00:01""#,
        ] {
            let line = format!(r#"{{"type":"erase","event_id":"e","ts":{ts},"crm_id":"C"}}"#);
            let r = err(line.as_bytes());
            assert_eq!((r.reason, r.error.as_str()), (Reason::BadTs, text), "{ts}");
        }
        let r = err(
            br#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","valid_until":"soon"}"#,
        );
        assert_eq!(
            (r.reason, r.error.as_str()),
            (
                Reason::BadTs,
                "field `valid_until` is not an RFC 3339 time with offset or epoch milliseconds"
            )
        );
        let r = err(
            br#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","valid_until":1e3}"#,
        );
        assert_eq!(r.reason, Reason::BadTs);
    }

    #[test]
    fn times_at_the_edges_of_the_range_are_accepted() {
        for (ts, ms) in [
            ("-1", -1),
            ("-86400000", -86_400_000),
            ("253402300799999", 253_402_300_799_999),
            ("-62167219200000", -62_167_219_200_000),
            (r#""1969-07-20T20:17:40Z""#, -14_182_940_000),
            (r#""9999-12-31T23:59:59.999Z""#, 253_402_300_799_999),
            (r#""0000-01-01T00:00:00Z""#, -62_167_219_200_000),
        ] {
            let e = ok(&format!(
                r#"{{"type":"erase","event_id":"e","ts":{ts},"crm_id":"C"}}"#
            ));
            assert_eq!(e.ts, ms, "{ts}");
        }
    }

    #[test]
    fn out_of_range_values_are_invalid_value() {
        let long = "x".repeat(129);
        let long_chars = "é".repeat(129);
        let cases = [
            (r#"{"type":"erase","event_id":"","ts":0,"crm_id":"C"}"#.to_string(), "field `event_id` must be 1 to 128 characters"),
            (format!(r#"{{"type":"erase","event_id":"{long}","ts":0,"crm_id":"C"}}"#), "field `event_id` must be 1 to 128 characters"),
            (r#"{"type":"erase","event_id":"e","ts":0,"crm_id":""}"#.to_string(), "field `crm_id` must be 1 to 128 characters"),
            (format!(r#"{{"type":"erase","event_id":"e","ts":0,"crm_id":"{long_chars}"}}"#), "field `crm_id` must be 1 to 128 characters"),
            (format!(r#"{{"type":"identify","event_id":"e","ts":0,"cookie_id":"{long}","crm_id":"C"}}"#), "field `cookie_id` must be 1 to 128 characters"),
            (r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":""}"#.to_string(), "field `product_id` must be 1 to 128 characters"),
            (r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","crm_id":""}"#.to_string(), "field `crm_id` must be 1 to 128 characters"),
            (r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"phone","crm_id":"C","items":[{"product_id":"p"}]}"#.to_string(), "field `channel` must be \"web\" or \"store\""),
            (r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"Web","crm_id":"C","items":[{"product_id":"p"}]}"#.to_string(), "field `channel` must be \"web\" or \"store\""),
            (r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"","crm_id":"C","items":[{"product_id":"p"}]}"#.to_string(), "field `channel` must be \"web\" or \"store\""),
            (r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[]}"#.to_string(), "field `items` must not be empty"),
            (r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":"p","quantity":2.5}]}"#.to_string(), "field `items[0].quantity` must be an integer"),
            (r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"","channel":"web","crm_id":"C","items":[{"product_id":"p"}]}"#.to_string(), "field `order_id` must be 1 to 128 characters"),
            (r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","crm_id":"C","items":[{"product_id":""}]}"#.to_string(), "field `items[0].product_id` must be 1 to 128 characters"),
            (r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","cookie_id":"","items":[{"product_id":"p"}]}"#.to_string(), "field `cookie_id` must be 1 to 128 characters"),
            (r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":2.0}"#.to_string(), "field `quantity` must be an integer"),
            (r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":2.5}"#.to_string(), "field `quantity` must be an integer"),
            (r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":1e2}"#.to_string(), "field `quantity` must be an integer"),
            (r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":18446744073709551615}"#.to_string(), "field `quantity` must be an integer"),
            (r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":0}"#.to_string(), "field `discount_pct` must be greater than 0 and at most 100"),
            (r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":0.0}"#.to_string(), "field `discount_pct` must be greater than 0 and at most 100"),
            (r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":100.5}"#.to_string(), "field `discount_pct` must be greater than 0 and at most 100"),
            (r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":101}"#.to_string(), "field `discount_pct` must be greater than 0 and at most 100"),
            // The double nearest to it is above 100 (serde_json's
            // `float_roundtrip`: its default parse could land on 100.0).
            (r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":100.00000000000001}"#.to_string(), "field `discount_pct` must be greater than 0 and at most 100"),
            (r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":-5}"#.to_string(), "field `discount_pct` must be greater than 0 and at most 100"),
        ];
        for (line, text) in &cases {
            let r = err(line.as_bytes());
            assert_eq!(
                (r.reason, r.error.as_str()),
                (Reason::InvalidValue, *text),
                "{line}"
            );
        }
    }

    #[test]
    fn values_at_the_edges_of_their_range_are_accepted() {
        // 128 characters of two bytes each: ids count characters, not bytes.
        let exactly = "é".repeat(128);
        let e = ok(&format!(
            r#"{{"type":"erase","event_id":"{}","ts":0,"crm_id":"{exactly}"}}"#,
            "x".repeat(128)
        ));
        assert_eq!(e.body.crm_id(), Some(exactly.as_str()));
        // Escapes count as the characters they stand for.
        let escaped = r"\u00e9".repeat(128);
        ok(&format!(
            r#"{{"type":"erase","event_id":"e","ts":0,"crm_id":"{escaped}"}}"#
        ));
        for pct in ["100", "100.0", "1e2", "0.001", "5e-324"] {
            ok(&format!(
                r#"{{"type":"promotion","event_id":"e","ts":0,"product_id":"p","discount_pct":{pct}}}"#
            ));
        }
        for q in ["0", "-1", "9223372036854775807"] {
            ok(&format!(
                r#"{{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"c","product_id":"p","quantity":{q}}}"#
            ));
        }
    }

    #[test]
    fn one_example_of_each_reason() {
        let cases: [(&[u8], Reason); 8] = [
            (b"\xff", Reason::InvalidUtf8),
            (b"", Reason::InvalidJson),
            (&[b' '; MAX + 1], Reason::TooLarge),
            (
                br#"{"type":"erase","event_id":"e","ts":0}"#,
                Reason::MissingField,
            ),
            (
                br#"{"type":"erase","event_id":"e","ts":0,"crm_id":1}"#,
                Reason::WrongType,
            ),
            (
                br#"{"type":"delete","event_id":"e","ts":0,"crm_id":"C"}"#,
                Reason::UnknownType,
            ),
            (
                br#"{"type":"erase","event_id":"e","ts":1.5,"crm_id":"C"}"#,
                Reason::BadTs,
            ),
            (
                br#"{"type":"erase","event_id":"e","ts":0,"crm_id":""}"#,
                Reason::InvalidValue,
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(err(line).reason, expected);
        }
        let seen: std::collections::HashSet<_> = cases.iter().map(|c| c.1).collect();
        assert_eq!(seen.len(), Reason::ALL.len());
    }

    /// A valid message of each type.
    const EACH_TYPE: [&str; 7] = [
        r#"{"type":"product_view","event_id":"e","ts":0,"cookie_id":"k","product_id":"p"}"#,
        r#"{"type":"add_to_cart","event_id":"e","ts":0,"cookie_id":"k","product_id":"p"}"#,
        r#"{"type":"identify","event_id":"e","ts":0,"cookie_id":"k","crm_id":"C"}"#,
        r#"{"type":"purchase","event_id":"e","ts":0,"order_id":"o","channel":"web","items":[{"product_id":"p"}],"crm_id":"C"}"#,
        r#"{"type":"promotion","event_id":"e","ts":0,"product_id":"p"}"#,
        r#"{"type":"consent","event_id":"e","ts":0,"crm_id":"C"}"#,
        r#"{"type":"erase","event_id":"e","ts":0,"crm_id":"C"}"#,
    ];

    /// `message` with `"field":value` appended (the last duplicate wins).
    fn with(message: &str, field: &str, value: &str) -> String {
        format!("{},\"{field}\":{value}}}", &message[..message.len() - 1])
    }

    #[test]
    fn another_types_field_holding_what_serde_json_cannot_build_is_ignored() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let unbuildable = ["1e400", r#""\ud800""#, deep.as_str()];
        for message in EACH_TYPE {
            let mut m = Message::parse(message).unwrap();
            let kind = kind(&mut m).unwrap();
            let reads = |i: usize| COMMON.iter().chain(kind.fields()).any(|r| *r as usize == i);
            for (i, field) in FIELDS.iter().enumerate() {
                assert_eq!(top_field(field), Some(i));
                for junk in unbuildable {
                    let line = with(message, field, junk);
                    if reads(i) {
                        assert_eq!(reason(&line), Reason::InvalidJson, "{line}");
                    } else {
                        ok(&line);
                    }
                }
                // A field the type does not read is never read: `Kind::fields`
                // lists every field `body` reads.
                if !reads(i) {
                    ok(&with(message, field, r#"{"x":[1]}"#));
                }
            }
        }
    }
}
