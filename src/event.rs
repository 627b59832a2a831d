//! Input events after decoding and validation: the engine's only input.
//!
//! Every id is an owned `String` here; the decoder (`decode`) is the one place
//! that turns bytes into these types, and the only place that rejects input.

use serde_json::Number;

/// Event time and all engine times: Unix epoch milliseconds, UTC.
pub type Millis = i64;

/// A validated input event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub ts: Millis,
    pub body: Body,
}

/// What kind of view a navigation event is; each kind has its own score weight.
/// Its serde form is the contract's `type` string.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ViewKind {
    ProductView,
    AddToCart,
}

impl ViewKind {
    /// The contract's `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ViewKind::ProductView => "product_view",
            ViewKind::AddToCart => "add_to_cart",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Channel {
    Web,
    Store,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::Store => "store",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub kind: ViewKind,
    pub cookie_id: String,
    pub product_id: String,
    pub category: Option<String>,
    pub price: Option<f64>,
    pub crm_id: Option<String>,
    /// Only `add_to_cart` carries a quantity.
    pub quantity: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Identify {
    pub cookie_id: String,
    pub crm_id: String,
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub product_id: String,
    pub quantity: Option<i64>,
    pub price: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Purchase {
    pub order_id: String,
    pub channel: Channel,
    /// Never empty.
    pub items: Vec<Item>,
    /// At least one of `crm_id` and `cookie_id` is present.
    pub crm_id: Option<String>,
    pub cookie_id: Option<String>,
    pub total: Option<f64>,
}

/// A catalog promotion. The optional fields are passed on to the trigger as
/// received: numbers keep their JSON form, `valid_until` is a parsed time.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    pub product_id: String,
    pub discount_pct: Option<Number>,
    pub promo_price: Option<Number>,
    pub valid_until: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Consent {
    pub crm_id: String,
    pub email: Option<bool>,
    pub sms: Option<bool>,
    pub ads: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Erase {
    pub crm_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// `product_view` or `add_to_cart`, told apart by `View::kind`.
    View(View),
    Identify(Identify),
    Purchase(Purchase),
    Promotion(Promotion),
    Consent(Consent),
    Erase(Erase),
}

impl Body {
    /// The contract's `type` string, also the metric label for events in.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::View(v) => v.kind.as_str(),
            Body::Identify(_) => "identify",
            Body::Purchase(_) => "purchase",
            Body::Promotion(_) => "promotion",
            Body::Consent(_) => "consent",
            Body::Erase(_) => "erase",
        }
    }

    /// The CRM id the event names, if any (a promotion names none).
    pub fn crm_id(&self) -> Option<&str> {
        match self {
            Body::View(v) => v.crm_id.as_deref(),
            Body::Identify(i) => Some(&i.crm_id),
            Body::Purchase(p) => p.crm_id.as_deref(),
            Body::Promotion(_) => None,
            Body::Consent(c) => Some(&c.crm_id),
            Body::Erase(e) => Some(&e.crm_id),
        }
    }
}

/// Every event type, in a fixed order, for metrics and summaries.
pub const EVENT_TYPES: [&str; 7] = [
    "product_view",
    "add_to_cart",
    "identify",
    "purchase",
    "promotion",
    "consent",
    "erase",
];
