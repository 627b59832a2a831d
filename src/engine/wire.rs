//! What the two stages send each other across the repartition topics when
//! scaled out (docs/scale-out.md, "Wire format"): the identity stage's
//! `Resolved` events on `<group>.by-customer`, keyed by `crm_id`, and
//! erase's "forget this cookie" on `<group>.by-cookie`, keyed by
//! `cookie_id`. Input events routed to a stage travel as they arrived; a
//! record's kind is in its `pretext.record` header, never guessed from its
//! body (a contract event may carry any extra member).
//!
//! The body is one JSON object, readable with any Kafka tool. Each record
//! names the input event it came from and its place among that event's
//! records (`event_id`, `seq`): the identity stage resolves an event read
//! again after a crash to the same records, so the receiving stage drops
//! them as duplicates by that pair. Readers ignore members they do not
//! know, so a newer writer may add some.

use serde::{Deserialize, Serialize};

use super::identity::Resolved;
use crate::event::{Event, Millis};

/// The header that tells a repartition record's kind.
pub const RECORD_HEADER: &str = "pretext.record";

/// The kinds of record on the repartition topics, as `RECORD_HEADER` names
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An input event, routed as it arrived (either topic).
    Event,
    /// A `CustomerRecord` (`<group>.by-customer`).
    Resolved,
    /// A `Forget` (`<group>.by-cookie`).
    Forget,
}

impl RecordKind {
    pub const ALL: [RecordKind; 3] = [RecordKind::Event, RecordKind::Resolved, RecordKind::Forget];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Event => "event",
            RecordKind::Resolved => "resolved",
            RecordKind::Forget => "forget",
        }
    }

    /// The kind a header value names; `None` for anything else.
    pub fn from_header(value: &[u8]) -> Option<RecordKind> {
        RecordKind::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes() == value)
    }
}

/// Which input event a record came from, and its place among that event's
/// records: the receiving stage's deduplication key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub event_id: String,
    pub seq: u32,
    /// The input event's `ts`: the record's time in the receiving stage,
    /// which moves that partition's watermark (Kafka Streams' record
    /// timestamp, inherited from the input).
    pub event_ts: Millis,
}

impl Origin {
    /// The `seq`th record made of `event`.
    pub fn of(event: &Event, seq: usize) -> Origin {
        Origin {
            event_id: event.event_id.clone(),
            // An event makes a handful of records (an identify stitching
            // kept views: at most the anonymous buffer's cap and two more).
            seq: u32::try_from(seq).unwrap_or(u32::MAX),
            event_ts: event.ts,
        }
    }
}

/// A resolved event for the customer stage: the origin's members, then
/// `resolved` naming the variant and its members, then `category`, which
/// rides along with a view that named one (the customer partition records
/// it, contract difference 3 in docs/scale-out.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerRecord {
    #[serde(flatten)]
    pub origin: Origin,
    #[serde(flatten)]
    pub resolved: Resolved,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// Erase's request to the identity stage: drop the cookie's link and
/// buffer if the cookie still belongs to `crm_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forget {
    #[serde(flatten)]
    pub origin: Origin,
    pub cookie_id: String,
    pub crm_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid {kind} record: {source}")]
pub struct WireError {
    kind: &'static str,
    #[source]
    source: serde_json::Error,
}

impl CustomerRecord {
    /// The record's key on `<group>.by-customer`.
    pub fn key(&self) -> &str {
        self.resolved.crm_id()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record of strings and integers serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<CustomerRecord, WireError> {
        serde_json::from_slice(bytes).map_err(|source| WireError {
            kind: "resolved",
            source,
        })
    }
}

impl Forget {
    /// The record's key on `<group>.by-cookie`.
    pub fn key(&self) -> &str {
        &self.cookie_id
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record of strings and integers serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Forget, WireError> {
        serde_json::from_slice(bytes).map_err(|source| WireError {
            kind: "forget",
            source,
        })
    }
}

/// A channel by its contract name (`Channel`'s own serde form is the
/// state records' binary one, by variant index).
pub(super) mod channel_name {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::event::Channel;

    pub fn serialize<S: Serializer>(c: &Channel, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Channel, D::Error> {
        let name = String::deserialize(d)?;
        [Channel::Web, Channel::Store]
            .into_iter()
            .find(|c| c.as_str() == name)
            .ok_or_else(|| {
                D::Error::custom(format!("unknown channel {name:?}, expected web or store"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Channel, ViewKind};
    use serde_json::{json, Value};

    fn origin(seq: u32) -> Origin {
        Origin {
            event_id: "e-1".into(),
            seq,
            event_ts: 1_795_341_700_000,
        }
    }

    fn record(resolved: Resolved, category: Option<&str>) -> CustomerRecord {
        CustomerRecord {
            origin: origin(2),
            resolved,
            category: category.map(str::to_string),
        }
    }

    fn body(r: &CustomerRecord) -> Value {
        serde_json::from_slice(&r.to_json()).unwrap()
    }

    #[test]
    fn the_view_record_is_this_json() {
        let view = record(
            Resolved::View {
                crm_id: "C1".into(),
                cookie_id: Some("K1".into()),
                product_id: "P1".into(),
                kind: ViewKind::AddToCart,
                ts: 1_795_341_600_000,
            },
            Some("shoes"),
        );
        assert_eq!(
            body(&view),
            json!({"resolved": "view", "event_id": "e-1", "seq": 2,
                   "event_ts": 1_795_341_700_000_i64, "crm_id": "C1",
                   "cookie_id": "K1", "product_id": "P1", "kind": "add_to_cart",
                   "ts": 1_795_341_600_000_i64, "category": "shoes"})
        );
        assert_eq!(view.key(), "C1");
        let forget = Forget {
            origin: origin(0),
            cookie_id: "K1".into(),
            crm_id: "C1".into(),
        };
        let value: Value = serde_json::from_slice(&forget.to_json()).unwrap();
        assert_eq!(
            value,
            json!({"event_id": "e-1", "seq": 0, "event_ts": 1_795_341_700_000_i64,
                   "cookie_id": "K1", "crm_id": "C1"})
        );
        assert_eq!(forget.key(), "K1");
        assert_eq!(Forget::from_json(&forget.to_json()).unwrap(), forget);
    }

    /// Strings that JSON must escape, non-ASCII, empty.
    const STRINGS: [&str; 5] = [
        "C1",
        "",
        "quote \" and \\ back",
        "ünï\u{1F600}",
        "tab\tnl\n",
    ];

    fn every_variant(s: &str, ts: Millis) -> Vec<CustomerRecord> {
        let (crm, cookie) = (format!("crm-{s}"), format!("cookie-{s}"));
        let mut out = vec![
            record(
                Resolved::Linked {
                    crm_id: crm.clone(),
                    cookie_id: cookie.clone(),
                },
                None,
            ),
            record(
                Resolved::Unlinked {
                    crm_id: crm.clone(),
                    cookie_id: cookie.clone(),
                },
                None,
            ),
            record(
                Resolved::Seen {
                    crm_id: crm.clone(),
                    cookie_id: cookie.clone(),
                    ts,
                },
                None,
            ),
        ];
        for (cookie_id, category) in [(None, None), (Some(cookie.clone()), Some(s))] {
            out.push(record(
                Resolved::View {
                    crm_id: crm.clone(),
                    cookie_id: cookie_id.clone(),
                    product_id: s.to_string(),
                    kind: ViewKind::ProductView,
                    ts,
                },
                category,
            ));
            out.push(record(
                Resolved::Purchase {
                    crm_id: crm.clone(),
                    cookie_id,
                    product_ids: vec![s.to_string(), "P2".into()],
                    ts,
                    order_id: format!("O-{s}"),
                    channel: Channel::Store,
                },
                None,
            ));
        }
        out
    }

    #[test]
    fn every_record_reads_back_as_written() {
        for (i, s) in STRINGS.iter().enumerate() {
            let ts = [0, -1, Millis::MAX, Millis::MIN, 1_795_341_600_123][i];
            for r in every_variant(s, ts) {
                let back = CustomerRecord::from_json(&r.to_json()).unwrap();
                assert_eq!(back, r);
            }
        }
    }

    #[test]
    fn unknown_members_are_ignored_and_bad_ones_named() {
        let with_extra =
            br#"{"resolved":"linked","event_id":"e","seq":0,"event_ts":5,"crm_id":"C","cookie_id":"K","new":1}"#;
        assert!(CustomerRecord::from_json(with_extra).is_ok());
        let cases: [(&[u8], &str); 5] = [
            (b"not json", "invalid resolved record"),
            (br#"{"resolved":"moved","event_id":"e","seq":0,"event_ts":5}"#, "moved"),
            (br#"{"resolved":"linked","event_id":"e","seq":0,"event_ts":5,"crm_id":"C"}"#, "cookie_id"),
            (
                br#"{"resolved":"view","event_id":"e","seq":0,"event_ts":5,"crm_id":"C","product_id":"P","kind":"click","ts":1}"#,
                "unknown variant `click`, expected `product_view` or `add_to_cart`",
            ),
            (
                br#"{"resolved":"purchase","event_id":"e","seq":0,"event_ts":5,"crm_id":"C","product_ids":[],"ts":1,"order_id":"O","channel":"phone"}"#,
                "unknown channel \"phone\", expected web or store",
            ),
        ];
        for (bytes, expected) in cases {
            let err = CustomerRecord::from_json(bytes).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should name {expected}");
        }
        let err = Forget::from_json(br#"{"event_id":"e","seq":0,"event_ts":5,"crm_id":"C"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("invalid forget record"), "{err}");
        assert!(err.to_string().contains("cookie_id"), "{err}");
    }

    #[test]
    fn view_kinds_and_channels_go_by_their_contract_names() {
        for kind in [ViewKind::ProductView, ViewKind::AddToCart] {
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.as_str()));
        }
        let purchase = record(
            Resolved::Purchase {
                crm_id: "C".into(),
                cookie_id: None,
                product_ids: vec![],
                ts: 1,
                order_id: "O".into(),
                channel: Channel::Web,
            },
            None,
        );
        assert_eq!(body(&purchase)["channel"], "web");
        assert!(
            body(&purchase).get("cookie_id").is_none(),
            "absent, not null"
        );
    }

    #[test]
    fn the_header_names_each_kind_and_nothing_else() {
        for kind in RecordKind::ALL {
            assert_eq!(
                RecordKind::from_header(kind.as_str().as_bytes()),
                Some(kind)
            );
        }
        assert_eq!(RecordKind::from_header(b"Event"), None);
        assert_eq!(RecordKind::from_header(b""), None);
    }
}
