//! The dead-letter record (CONTRACT section 6): a rejected message with its
//! reason, where it came from, and its original bytes.

use base64::Engine as _;
use serde::Serialize;

use crate::decode::Reason;

/// A rejected input message, borrowed from where it was read.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub error: &'a str,
    pub reason: Reason,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub payload: &'a [u8],
}

#[derive(Serialize)]
struct Wire<'a> {
    error: &'a str,
    reason: &'static str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
}

impl DeadLetter<'_> {
    /// One JSON object in the contract's key order; the payload as a string,
    /// or as standard base64 in `payload_b64` when it is not UTF-8.
    pub fn to_json(&self) -> String {
        let text = std::str::from_utf8(self.payload).ok();
        let wire = Wire {
            error: self.error,
            reason: self.reason.as_str(),
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            payload: text,
            payload_b64: match text {
                Some(_) => None,
                None => Some(base64::engine::general_purpose::STANDARD.encode(self.payload)),
            },
        };
        // Strings and integers always serialize.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(payload: &[u8]) -> String {
        DeadLetter {
            error: "missing field `product_id`",
            reason: Reason::MissingField,
            topic: "pretext.web-events",
            partition: 3,
            offset: 1812,
            payload,
        }
        .to_json()
    }

    #[test]
    fn utf8_payloads_are_strings_in_contract_order() {
        assert_eq!(
            letter(br#"{"type":"product_view"}"#),
            r#"{"error":"missing field `product_id`","reason":"missing_field","topic":"pretext.web-events","partition":3,"offset":1812,"payload":"{\"type\":\"product_view\"}"}"#
        );
    }

    #[test]
    fn other_payloads_are_base64_in_payload_b64() {
        assert_eq!(
            letter(&[0xff, 0xfe, b'a']),
            r#"{"error":"missing field `product_id`","reason":"missing_field","topic":"pretext.web-events","partition":3,"offset":1812,"payload_b64":"//5h"}"#
        );
        // Standard alphabet with padding; a UTF-8 prefix does not matter.
        let v: serde_json::Value = serde_json::from_str(&letter(b"{\"a\":\"\xc3\x28\"}")).unwrap();
        assert!(v.get("payload").is_none());
        assert_eq!(v["payload_b64"], "eyJhIjoiwygifQ==");
    }

    #[test]
    fn an_empty_payload_is_an_empty_string() {
        assert!(letter(b"").ends_with(r#","payload":""}"#));
    }

    #[test]
    fn strings_are_escaped() {
        let payload = "{\"name\":\"a\\\"b\"}\r\t\u{1}\u{7f} é😀 \u{2028}";
        let line = DeadLetter {
            error: "invalid json: expected `:` at line 1 column 9 \"quoted\" \\",
            reason: Reason::InvalidJson,
            topic: "in/\"odd\" name\n.jsonl",
            partition: 0,
            offset: 1,
            payload: payload.as_bytes(),
        }
        .to_json();
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(
            line.contains(r#""payload":"{\"name\":\"a\\\"b\"}\r\t\u0001"#),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["payload"], payload);
        assert_eq!(v["topic"], "in/\"odd\" name\n.jsonl");
        assert_eq!(
            v["error"],
            "invalid json: expected `:` at line 1 column 9 \"quoted\" \\"
        );
        assert_eq!(
            (v["partition"].as_i64(), v["offset"].as_i64()),
            (Some(0), Some(1))
        );
    }

    #[test]
    fn every_reason_is_written_by_its_contract_name() {
        for reason in Reason::ALL {
            let line = DeadLetter {
                error: "e",
                reason,
                topic: "t",
                partition: 0,
                offset: 1,
                payload: b"x",
            }
            .to_json();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["reason"], reason.as_str());
        }
    }
}
