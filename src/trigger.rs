//! The output trigger (CONTRACT section 4), the conversion record
//! (section 8) and their wire forms.

use serde::Serialize;
use serde_json::Number;

use crate::event::Millis;
use crate::time::format_ts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TriggerKind {
    ViewedNotBought,
    PromoOnViewedItem,
}

impl TriggerKind {
    pub const ALL: [TriggerKind; 2] =
        [TriggerKind::ViewedNotBought, TriggerKind::PromoOnViewedItem];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::ViewedNotBought => "viewed_not_bought",
            TriggerKind::PromoOnViewedItem => "promo_on_viewed_item",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whether a trigger's customer is contacted (`Treated`) or kept apart as
/// the control group (`Holdout`, contract section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Treated,
    Holdout,
}

impl Group {
    pub const ALL: [Group; 2] = [Group::Treated, Group::Holdout];

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Treated => "treated",
            Group::Holdout => "holdout",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The promotion a `promo_on_viewed_item` passes on, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct PromotionInfo {
    pub discount_pct: Option<Number>,
    pub promo_price: Option<Number>,
    pub valid_until: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub trigger_id: String,
    pub kind: TriggerKind,
    pub crm_id: String,
    pub product_id: String,
    pub category: Option<String>,
    /// Already rounded to two decimals.
    pub intent_score: f64,
    pub view_count: u32,
    pub last_viewed_at: Option<Millis>,
    pub fired_at: Millis,
    pub cookie_ids: Vec<String>,
    pub channels: Vec<&'static str>,
    pub promotion: Option<PromotionInfo>,
    pub group: Group,
}

/// The wire form: field order and names exactly as the contract shows them.
#[derive(Serialize)]
struct Wire<'a> {
    trigger_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    crm_id: &'a str,
    product_id: &'a str,
    category: Option<&'a str>,
    intent_score: f64,
    view_count: u32,
    last_viewed_at: Option<String>,
    fired_at: String,
    cookie_ids: &'a [String],
    channels: &'a [&'static str],
    promotion: Option<WirePromotion<'a>>,
    group: &'static str,
}

#[derive(Serialize)]
struct WirePromotion<'a> {
    discount_pct: Option<&'a Number>,
    promo_price: Option<&'a Number>,
    valid_until: Option<String>,
}

impl Trigger {
    /// One JSON object, no trailing newline.
    pub fn to_json(&self) -> String {
        let wire = Wire {
            trigger_id: &self.trigger_id,
            kind: self.kind.as_str(),
            crm_id: &self.crm_id,
            product_id: &self.product_id,
            category: self.category.as_deref(),
            intent_score: self.intent_score,
            view_count: self.view_count,
            last_viewed_at: self.last_viewed_at.map(format_ts),
            fired_at: format_ts(self.fired_at),
            cookie_ids: &self.cookie_ids,
            channels: &self.channels,
            promotion: self.promotion.as_ref().map(|p| WirePromotion {
                discount_pct: p.discount_pct.as_ref(),
                promo_price: p.promo_price.as_ref(),
                valid_until: p.valid_until.map(format_ts),
            }),
            group: self.group.as_str(),
        };
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

/// A purchase attributed to a trigger it followed within the attribution
/// window (contract section 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    pub trigger_id: String,
    pub kind: TriggerKind,
    pub group: Group,
    pub crm_id: String,
    pub product_id: String,
    pub fired_at: Millis,
    pub order_id: String,
    /// `"web"` or `"store"`; empty for a purchase kept by a state written
    /// before conversions existed.
    pub channel: String,
    pub converted_at: Millis,
}

#[derive(Serialize)]
struct WireConversion<'a> {
    trigger_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    group: &'static str,
    crm_id: &'a str,
    product_id: &'a str,
    fired_at: String,
    order_id: &'a str,
    channel: &'a str,
    converted_at: String,
}

impl Conversion {
    /// One JSON object, no trailing newline, fields in the contract's order.
    pub fn to_json(&self) -> String {
        let wire = WireConversion {
            trigger_id: &self.trigger_id,
            kind: self.kind.as_str(),
            group: self.group.as_str(),
            crm_id: &self.crm_id,
            product_id: &self.product_id,
            fired_at: format_ts(self.fired_at),
            order_id: &self.order_id,
            channel: &self.channel,
            converted_at: format_ts(self.converted_at),
        };
        // Serializing plain strings cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

/// The deterministic id: the same (type, crm, product, firing time) always
/// gives the same 16 hex digits, so subscribers can drop redelivered triggers.
pub fn trigger_id(kind: TriggerKind, crm_id: &str, product_id: &str, fired_at: Millis) -> String {
    let mut buf = Vec::with_capacity(crm_id.len() + product_id.len() + 40);
    buf.extend_from_slice(kind.as_str().as_bytes());
    buf.push(0);
    buf.extend_from_slice(crm_id.as_bytes());
    buf.push(0);
    buf.extend_from_slice(product_id.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&fired_at.to_be_bytes());
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&buf))
}

/// Rounds half away from zero to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trigger {
        Trigger {
            trigger_id: trigger_id(TriggerKind::ViewedNotBought, "C42", "SKU-1", 0),
            kind: TriggerKind::ViewedNotBought,
            crm_id: "C42".into(),
            product_id: "SKU-1".into(),
            category: Some("coats".into()),
            intent_score: 3.71,
            view_count: 3,
            last_viewed_at: Some(1_763_806_500_000),
            fired_at: 1_763_810_100_000,
            cookie_ids: vec!["ck_9".into(), "ck_1".into()],
            channels: vec!["ads", "email"],
            promotion: None,
            group: Group::Treated,
        }
    }

    #[test]
    fn wire_form_matches_the_contract_example() {
        let t = sample();
        let expected = format!(
            "{{\"trigger_id\":\"{}\",\"type\":\"viewed_not_bought\",\"crm_id\":\"C42\",\
             \"product_id\":\"SKU-1\",\"category\":\"coats\",\"intent_score\":3.71,\
             \"view_count\":3,\"last_viewed_at\":\"2025-11-22T10:15:00Z\",\
             \"fired_at\":\"2025-11-22T11:15:00Z\",\"cookie_ids\":[\"ck_9\",\"ck_1\"],\
             \"channels\":[\"ads\",\"email\"],\"promotion\":null,\"group\":\"treated\"}}",
            t.trigger_id
        );
        assert_eq!(t.to_json(), expected);
    }

    #[test]
    fn promotion_fields_pass_through_with_nulls() {
        let mut t = sample();
        t.kind = TriggerKind::PromoOnViewedItem;
        t.category = None;
        t.promotion = Some(PromotionInfo {
            discount_pct: Some(Number::from(20)),
            promo_price: None,
            valid_until: Some(1_763_810_100_250),
        });
        let v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        assert_eq!(v["category"], serde_json::Value::Null);
        assert_eq!(v["promotion"]["discount_pct"], 20);
        assert_eq!(v["promotion"]["promo_price"], serde_json::Value::Null);
        assert_eq!(v["promotion"]["valid_until"], "2025-11-22T11:15:00.250Z");
    }

    #[test]
    fn conversion_wire_form_matches_the_contract_example() {
        let c = Conversion {
            trigger_id: "5f0c9d1e2b7a4c18".into(),
            kind: TriggerKind::ViewedNotBought,
            group: Group::Treated,
            crm_id: "C42".into(),
            product_id: "SKU-1".into(),
            fired_at: 1_763_810_100_000,
            order_id: "O-981".into(),
            channel: "store".into(),
            converted_at: 1_763_917_320_000,
        };
        assert_eq!(
            c.to_json(),
            "{\"trigger_id\":\"5f0c9d1e2b7a4c18\",\"type\":\"viewed_not_bought\",\
             \"group\":\"treated\",\"crm_id\":\"C42\",\"product_id\":\"SKU-1\",\
             \"fired_at\":\"2025-11-22T11:15:00Z\",\"order_id\":\"O-981\",\
             \"channel\":\"store\",\"converted_at\":\"2025-11-23T17:02:00Z\"}"
        );
    }

    #[test]
    fn trigger_ids_are_deterministic_and_distinct() {
        let a = trigger_id(TriggerKind::ViewedNotBought, "C1", "P1", 10);
        assert_eq!(a, trigger_id(TriggerKind::ViewedNotBought, "C1", "P1", 10));
        assert_eq!(a.len(), 16);
        assert_ne!(
            a,
            trigger_id(TriggerKind::PromoOnViewedItem, "C1", "P1", 10)
        );
        assert_ne!(a, trigger_id(TriggerKind::ViewedNotBought, "C1", "P1", 11));
        // The separator keeps ("C1","P1") and ("C1P","1") apart.
        assert_ne!(a, trigger_id(TriggerKind::ViewedNotBought, "C1P", "1", 10));
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round2(0.125), 0.13);
        assert_eq!(round2(2.5), 2.5);
        assert_eq!(round2(0.994), 0.99);
        assert_eq!(round2(0.996), 1.0);
    }
}
