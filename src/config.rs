//! Configuration: TOML (`--config FILE`, a partial file keeps the defaults)
//! with every key overridable by an environment variable
//! `PRETEXT__SECTION__KEY`. Strict: an unknown key or a bad value is an
//! error that names the key (and the variable, when one set it).
//! `config/default.toml` documents every key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

use crate::trigger::Group;

const ENV_PREFIX: &str = "PRETEXT__";

const DURATION_FORMS: &str = "a whole number and a unit: ms, s, m, h, d, e.g. \"90s\", \"7d\"";

/// A non-negative duration in milliseconds, written `"250ms"`, `"90s"`,
/// `"5m"`, `"1h"` or `"7d"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub i64);

impl Dur {
    /// A duration of `s` seconds.
    pub const fn secs(s: i64) -> Dur {
        Dur(s * 1000)
    }

    /// The duration in milliseconds.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// The duration for timers and timeouts (a negative one counts as zero).
    pub fn std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }

    /// Parses a whole number and one unit, nothing else: no sign, no
    /// fraction, no space, no compound (`"1h30m"`).
    pub fn parse(s: &str) -> Result<Dur, String> {
        let bad = || format!("invalid duration {s:?} (expected {DURATION_FORMS})");
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = s.split_at(split);
        let n: i64 = digits.parse().map_err(|_| bad())?;
        let scale = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        n.checked_mul(scale).map(Dur).ok_or_else(bad)
    }
}

impl fmt::Display for Dur {
    /// Writes the duration in the largest unit that divides it, as it
    /// would be configured (`"7d"`, `"90s"`, `"250ms"`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        let units = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ];
        match units.iter().find(|(scale, _)| ms != 0 && ms % scale == 0) {
            Some((scale, unit)) => write!(f, "{}{unit}", ms / scale),
            None if ms == 0 => f.write_str("0s"),
            None => write!(f, "{ms}ms"),
        }
    }
}

impl fmt::Debug for Dur {
    /// Readable in a logged configuration: `Dur(72h)`, not `Dur(259200000)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dur({self})")
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        struct DurVisitor;
        impl Visitor<'_> for DurVisitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a duration string: {DURATION_FORMS}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                Dur::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(DurVisitor)
    }
}

/// The whole configuration; each section is a table in the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Limits and deduplication of input messages.
    pub input: Input,
    /// When pending checks become due.
    pub watermark: Watermark,
    /// Cookie-to-customer stitching.
    pub identity: Identity,
    /// The intent score of a customer for a product.
    pub scoring: Scoring,
    /// The rules that fire triggers.
    pub triggers: Triggers,
    /// The holdout (control) group, whose triggers are kept apart.
    pub holdout: Holdout,
    /// The frequency cap: triggers per customer per window.
    pub pressure: Pressure,
    /// How conversions are attributed to triggers.
    pub measurement: Measurement,
    /// The Kafka client (live mode).
    pub kafka: Kafka,
    /// Topic names, in and out.
    pub topics: Topics,
    /// Where the state lives.
    pub state: State,
    /// The metrics and probes endpoint (live mode).
    pub http: Http,
    /// Log output.
    pub log: Log,
    /// Several instances in one consumer group (docs/scale-out.md).
    pub scale: Scale,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Input {
    /// Messages (replay lines) larger than this many bytes are rejected as
    /// `too_large`.
    pub max_message_bytes: usize,
    /// An event whose id was applied within this time of its own is a
    /// duplicate.
    pub dedup_window: Dur,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            max_message_bytes: 1 << 20,
            dedup_window: Dur::secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Watermark {
    /// W = the highest applied event time minus this.
    pub allowed_lateness: Dur,
    /// Live mode: with no input for this long (wall clock), W follows the
    /// clock.
    pub idle_timeout: Dur,
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark {
            allowed_lateness: Dur::secs(5 * 60),
            idle_timeout: Dur::secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Identity {
    /// Events kept per cookie that has no CRM link yet (the latest ones).
    pub anonymous_buffer: usize,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            anonymous_buffer: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scoring {
    /// A view's weight halves every `half_life`.
    pub half_life: Dur,
    /// Views older than this count for nothing.
    pub lookback: Dur,
    /// The weight of one view of each kind.
    pub weights: Weights,
}

impl Default for Scoring {
    fn default() -> Self {
        Scoring {
            half_life: Dur::secs(72 * 3600),
            lookback: Dur::secs(30 * 86_400),
            weights: Weights::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    /// Weight of a `product_view`.
    pub product_view: f64,
    /// Weight of an `add_to_cart`.
    pub add_to_cart: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            product_view: 1.0,
            add_to_cart: 3.0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Triggers {
    /// Viewed, then not bought within the delay.
    pub viewed_not_bought: ViewedNotBought,
    /// A promotion of a product the customer viewed.
    pub promo_on_viewed_item: PromoOnViewedItem,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ViewedNotBought {
    /// The check runs this long after a session's latest view.
    pub delay: Dur,
    /// Below this intent score the check does not fire.
    pub min_score: f64,
    /// No second trigger for the same customer and product within this.
    pub cooldown: Dur,
}

impl Default for ViewedNotBought {
    fn default() -> Self {
        ViewedNotBought {
            delay: Dur::secs(3600),
            min_score: 0.5,
            cooldown: Dur::secs(7 * 86_400),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromoOnViewedItem {
    /// No second trigger for the same customer and product within this.
    pub cooldown: Dur,
}

impl Default for PromoOnViewedItem {
    fn default() -> Self {
        PromoOnViewedItem {
            cooldown: Dur::secs(7 * 86_400),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Holdout {
    /// Percent of customers (0 to 100, in steps of 0.01) in the holdout.
    pub percent: f64,
    /// Salt of the membership hash: change it to draw a new holdout.
    pub salt: String,
}

impl Default for Holdout {
    fn default() -> Self {
        Holdout {
            percent: 0.0,
            salt: "pretext".into(),
        }
    }
}

impl Holdout {
    /// The percent in hundredths (x in 0–100 → round(100·x) in 0–10000).
    pub fn hundredths(&self) -> u32 {
        (self.percent * 100.0).round() as u32
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let x = self.percent;
        if !(x.is_finite() && (0.0..=100.0).contains(&x)) {
            return Err(invalid(
                "holdout.percent",
                format!("must be a number from 0 to 100, got {x}"),
            ));
        }
        if ((x * 100.0).round() - x * 100.0).abs() > 1e-6 {
            return Err(invalid(
                "holdout.percent",
                format!("must be in steps of 0.01, got {x}"),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pressure {
    /// At most this many triggers per customer within `window`; 0: no cap.
    pub max_triggers: u32,
    /// The window of the cap, either side of a trigger's `fired_at`.
    pub window: Dur,
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure {
            max_triggers: 0,
            window: Dur::secs(86_400),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Measurement {
    /// A purchase stamped within this after a trigger's `fired_at` converts it.
    pub attribution_window: Dur,
}

impl Default for Measurement {
    fn default() -> Self {
        Measurement {
            attribution_window: Dur::secs(7 * 86_400),
        }
    }
}

#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kafka {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// The consumer group; instances sharing it share the partitions.
    pub group_id: String,
    /// librdkafka settings passed through (security, timeouts), applied
    /// before the settings pretext relies on. Numbers and booleans in the
    /// file are taken as their text.
    #[serde(deserialize_with = "client_settings")]
    pub client: BTreeMap<String, String>,
    /// librdkafka settings for the consumer only, applied over `client`.
    #[serde(deserialize_with = "client_settings")]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for the producer only, applied over `client`.
    #[serde(deserialize_with = "client_settings")]
    pub producer: BTreeMap<String, String>,
    /// Where a partition with no offset stored in the state starts.
    pub start_from: StartFrom,
    /// A batch ends after this many messages…
    pub batch_max_messages: usize,
    /// …or after this long, whichever comes first.
    pub batch_max_wait: Dur,
    /// At least once: how often the state and the input offsets are
    /// stored (batches in between are written together, as Kafka Streams'
    /// `commit.interval.ms`); 0 stores every batch. A crash reads at most
    /// this much input again; queries see the state as of the last store.
    pub commit_interval: Dur,
    /// Produced messages not yet acknowledged, at most.
    pub producer_max_in_flight: usize,
    /// On SIGTERM, the time allowed to finish the batch and commit.
    pub shutdown_timeout: Dur,
    /// Each batch's output and input offsets in one Kafka transaction
    /// (docs/exactly-once.md).
    pub exactly_once: bool,
    /// This instance's name within the group, stable across restarts (the
    /// pod name of a StatefulSet); empty means `0`, the group's single
    /// instance. With `exactly_once` it names the transactional producer.
    pub instance_id: String,
}

impl Default for Kafka {
    fn default() -> Self {
        Kafka {
            brokers: "127.0.0.1:9092".into(),
            group_id: "pretext".into(),
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
            start_from: StartFrom::Earliest,
            batch_max_messages: 20000,
            batch_max_wait: Dur(100),
            commit_interval: Dur(1000),
            producer_max_in_flight: 10_000,
            shutdown_timeout: Dur::secs(20),
            exactly_once: false,
            instance_id: String::new(),
        }
    }
}

/// Whether a `kafka.client` setting holds a secret: shown as `***`.
/// Errs on the side of masking (`ssl.keystore.location` is masked too).
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "key", "token", "oauthbearer.config"]
        .iter()
        .any(|s| k.contains(s))
}

impl Kafka {
    /// This instance's name: `instance_id`, or `0` when it is empty.
    pub fn instance(&self) -> &str {
        match self.instance_id.trim() {
            "" => "0",
            id => id,
        }
    }

    /// The transactional id of the exactly-once producer:
    /// `<group_id>.<instance>`. The same on every restart of the instance,
    /// so a restarted (or duplicated) instance fences the one before it;
    /// another per instance of the group, so instances never fence each
    /// other; the group in it keeps two deployments on one cluster apart.
    pub fn transactional_id(&self) -> String {
        format!("{}.{}", self.group_id, self.instance())
    }

    /// `client` with secret values replaced by `***`, for display.
    pub fn redacted_client(&self) -> BTreeMap<&str, &str> {
        redacted(&self.client)
    }

    /// The pass-through settings of the consumer: `client`, then
    /// `consumer` (which wins on a key both set).
    pub fn consumer_settings(&self) -> impl Iterator<Item = (&str, &str)> {
        merged(&self.client, &self.consumer)
    }

    /// The pass-through settings of the producer (and the admin client):
    /// `client`, then `producer`.
    pub fn producer_settings(&self) -> impl Iterator<Item = (&str, &str)> {
        merged(&self.client, &self.producer)
    }
}

fn redacted(settings: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    settings
        .iter()
        .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
        .collect()
}

fn merged<'a>(
    common: &'a BTreeMap<String, String>,
    own: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    common
        .iter()
        .filter(|(k, _)| !own.contains_key(*k))
        .chain(own)
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Where a partition the state has never read starts (`kafka.start_from`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The partition's first offset.
    #[default]
    Earliest,
    /// The partition's end: only what is produced from now on.
    Latest,
    /// The first offset whose Kafka record timestamp is at or after this
    /// time (Unix ms); the end when there is none.
    Time(i64),
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StartFrom, D::Error> {
        struct StartVisitor;
        impl Visitor<'_> for StartVisitor {
            type Value = StartFrom;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"earliest\", \"latest\" or an RFC 3339 time")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StartFrom, E> {
                match s {
                    "earliest" => Ok(StartFrom::Earliest),
                    "latest" => Ok(StartFrom::Latest),
                    _ => crate::time::parse_rfc3339(s).map(StartFrom::Time).ok_or_else(|| {
                        E::custom(format!(
                            "{s:?} is not \"earliest\", \"latest\" or an RFC 3339 time with an offset (e.g. \"2026-11-22T10:00:00Z\")"
                        ))
                    }),
                }
            }
        }
        d.deserialize_str(StartVisitor)
    }
}

impl fmt::Debug for Kafka {
    /// Masks secret client settings: configuration is logged, secrets never.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kafka")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("client", &self.redacted_client())
            .field("consumer", &redacted(&self.consumer))
            .field("producer", &redacted(&self.producer))
            .field("start_from", &self.start_from)
            .field("batch_max_messages", &self.batch_max_messages)
            .field("batch_max_wait", &self.batch_max_wait)
            .field("commit_interval", &self.commit_interval)
            .field("producer_max_in_flight", &self.producer_max_in_flight)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("exactly_once", &self.exactly_once)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

/// Client settings pretext sets itself, after the pass-through ones: a
/// value given here would be silently overridden, so it is refused, with
/// the key to use instead when there is one.
const RESERVED_CLIENT_SETTINGS: &[(&str, Option<&str>)] = &[
    ("bootstrap.servers", Some("kafka.brokers")),
    ("metadata.broker.list", Some("kafka.brokers")),
    ("group.id", Some("kafka.group_id")),
    (
        "queue.buffering.max.messages",
        Some("kafka.producer_max_in_flight"),
    ),
    ("enable.auto.commit", None),
    ("enable.auto.offset.store", None),
    ("auto.offset.reset", None),
    ("enable.partition.eof", None),
    ("enable.idempotence", None),
    ("transactional.id", Some("kafka.instance_id")),
    ("acks", None),
    ("request.required.acks", None),
    ("group.instance.id", Some("scale.instance_id")),
];

impl Kafka {
    /// No pass-through map may set what pretext sets itself.
    fn check_reserved(&self) -> Result<(), ConfigError> {
        let maps = [
            ("client", &self.client),
            ("consumer", &self.consumer),
            ("producer", &self.producer),
        ];
        for (map, settings) in maps {
            for (name, instead) in RESERVED_CLIENT_SETTINGS {
                if settings.contains_key(*name) {
                    let message = match instead {
                        Some(key) => format!("set by pretext; use `{key}`"),
                        None => "set by pretext, which relies on its value".to_string(),
                    };
                    return Err(invalid(&format!("kafka.{map}.{name}"), message));
                }
            }
        }
        Ok(())
    }
}

/// A librdkafka setting as text: librdkafka takes every value as a string,
/// but a TOML file naturally writes `"session.timeout.ms" = 6000`.
struct Setting(String);

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Setting, D::Error> {
        struct SettingVisitor;
        impl Visitor<'_> for SettingVisitor {
            type Value = Setting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a librdkafka setting: a string, a number or a boolean")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Setting, E> {
                Ok(Setting(s.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Setting, E> {
                Ok(Setting(n.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Setting, E> {
                Ok(Setting(n.to_string()))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Setting, E> {
                Ok(Setting(x.to_string()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Setting, E> {
                Ok(Setting(b.to_string()))
            }
        }
        d.deserialize_any(SettingVisitor)
    }
}

fn client_settings<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let settings = BTreeMap::<String, Setting>::deserialize(d)?;
    Ok(settings.into_iter().map(|(k, v)| (k, v.0)).collect())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    /// Input topics; any event type may arrive on any of them.
    pub inputs: Vec<String>,
    /// Where triggers are produced (key = `crm_id`).
    pub triggers: String,
    /// Where rejected input is produced (key = the input key).
    pub dead_letter: String,
    /// Where triggers of holdout customers are produced (key = `crm_id`).
    pub holdout: String,
    /// Where conversion records are produced (key = `crm_id`).
    pub conversions: String,
    /// Create missing output topics at start (else a missing one is a
    /// configuration error, exit 2).
    pub create: bool,
    /// Partitions of a created topic; -1: the broker's `num.partitions`.
    pub create_partitions: i32,
    /// Replication factor of a created topic; -1: the broker's
    /// `default.replication.factor`.
    pub create_replication_factor: i32,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            inputs: [
                "pretext.web-events",
                "pretext.transactions",
                "pretext.promotions",
                "pretext.customers",
            ]
            .map(String::from)
            .to_vec(),
            triggers: "pretext.triggers".into(),
            dead_letter: "pretext.dead-letter".into(),
            holdout: "pretext.holdout".into(),
            conversions: "pretext.conversions".into(),
            create: false,
            create_partitions: -1,
            create_replication_factor: -1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct State {
    /// The RocksDB directory (state and input offsets).
    pub dir: PathBuf,
    /// How late an event may arrive (behind the highest event time) and
    /// still see exactly the history the contract gives it.
    pub retention: Retention,
}

impl Default for State {
    fn default() -> Self {
        State {
            dir: PathBuf::from("./data"),
            retention: Retention::Forever,
        }
    }
}

/// `state.retention`: `"forever"` keeps every view, purchase, firing time
/// and event id, so that any late event is decided exactly as the contract
/// says; a duration bounds the state, exact only for events at most that
/// far behind the highest event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Forever,
    Within(Dur),
}

impl Retention {
    /// The bound in milliseconds; `Millis::MAX` for ever (every horizon
    /// computed from it saturates to "keep all").
    pub fn millis(self) -> i64 {
        match self {
            Retention::Forever => i64::MAX,
            Retention::Within(d) => d.millis(),
        }
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Retention, D::Error> {
        struct RetentionVisitor;
        impl Visitor<'_> for RetentionVisitor {
            type Value = Retention;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "\"forever\" or a duration string: {DURATION_FORMS}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Retention, E> {
                if s == "forever" {
                    return Ok(Retention::Forever);
                }
                Dur::parse(s)
                    .map(Retention::Within)
                    .map_err(|e| E::custom(format!("{e}, or \"forever\"")))
            }
        }
        d.deserialize_str(RetentionVisitor)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// `/metrics`, `/healthz` and `/readyz` listen here: an IP address and
    /// a port.
    pub listen: String,
    /// The bearer token of the query routes (`/v1/...`); empty: no query
    /// routes at all.
    pub query_token: QueryToken,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: "127.0.0.1:9464".into(),
            query_token: QueryToken::default(),
        }
    }
}

/// The shortest query token accepted: a guessable one is no protection.
pub const QUERY_TOKEN_MIN_LEN: usize = 16;

/// `http.query_token`: a secret that never shows, in `Debug` output or in
/// a configuration error (which names the key only).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct QueryToken(String);

impl QueryToken {
    /// The token, for the one comparison that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
}

impl fmt::Debug for QueryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.is_set() { "***" } else { "" };
        write!(f, "QueryToken({shown:?})")
    }
}

impl<'de> Deserialize<'de> for QueryToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<QueryToken, D::Error> {
        struct TokenVisitor;
        // serde's own type errors quote the value: these do not. They start
        // as serde's do, so that an environment value read as a number is
        // retried as the text it was written as.
        fn not_text<E: de::Error>() -> E {
            E::custom("invalid type: not a string, expected the token as a string")
        }
        impl Visitor<'_> for TokenVisitor {
            type Value = QueryToken;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the token as a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<QueryToken, E> {
                let visible = s.bytes().all(|b| b.is_ascii_graphic());
                if s.is_empty() || (visible && s.len() >= QUERY_TOKEN_MIN_LEN) {
                    return Ok(QueryToken(s.to_string()));
                }
                Err(E::custom(format!(
                    "must be empty (no query routes) or at least {QUERY_TOKEN_MIN_LEN} \
                     characters of visible ASCII, without spaces"
                )))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<QueryToken, E> {
                Err(not_text())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<QueryToken, E> {
                Err(not_text())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<QueryToken, E> {
                Err(not_text())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<QueryToken, E> {
                Err(not_text())
            }
        }
        d.deserialize_str(TokenVisitor)
    }
}

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `json` or `text`.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `pretext=debug,rdkafka=warn`.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// The most partitions `scale.partitions` takes: a guard against a typo,
/// since each partition is a task with its own state and one partition in
/// every internal topic.
pub const MAX_SCALE_PARTITIONS: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scale {
    /// Partitions of the internal topics (repartition and changelog): the
    /// most instances that share the work. 1: one instance, no internal
    /// topics, today's single-instance behaviour.
    pub partitions: u32,
    /// Instances that keep a warm copy of each partition's state by
    /// tailing its changelogs, for a fast failover. Needs `partitions > 1`.
    pub standby_replicas: u32,
    /// Static membership: this instance's `group.instance.id`, stable
    /// across restarts (the pod name); empty: dynamic membership. Read
    /// only when `partitions > 1`.
    pub instance_id: String,
    /// `host:port` at which the other instances reach this one's HTTP
    /// server, to forward it the queries about the partitions it holds
    /// (the Kafka Streams `application.server`). Empty: `http.listen`,
    /// unless that listens on every interface (0.0.0.0, [::]), which is no
    /// address to reach: then queries about partitions held elsewhere
    /// answer 503.
    pub advertised_http: String,
}

impl Default for Scale {
    fn default() -> Self {
        Scale {
            partitions: 1,
            standby_replicas: 0,
            instance_id: String::new(),
            advertised_http: String::new(),
        }
    }
}

impl Scale {
    /// Whether the internal topics and the two-stage topology are in use.
    pub fn is_partitioned(&self) -> bool {
        self.partitions > 1
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_SCALE_PARTITIONS).contains(&self.partitions) {
            return Err(invalid(
                "scale.partitions",
                format!(
                    "must be from 1 to {MAX_SCALE_PARTITIONS}, got {}",
                    self.partitions
                ),
            ));
        }
        if self.standby_replicas > 0 && !self.is_partitioned() {
            return Err(invalid(
                "scale.standby_replicas",
                "needs scale.partitions > 1: a single partition has no changelog to tail",
            ));
        }
        let advertised = self.advertised_http.trim();
        let port = advertised.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !advertised.is_empty() && !matches!(port, Some(Ok(p)) if p > 0) {
            return Err(invalid(
                "scale.advertised_http",
                format!("expected host:port, got {advertised:?}"),
            ));
        }
        // Kafka checks a group.instance.id as it checks a topic name; an
        // illegal one would only fail at the first JoinGroup.
        let id = &self.instance_id;
        let legal = id.len() <= 249
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !legal {
            return Err(invalid(
                "scale.instance_id",
                format!(
                    "invalid group.instance.id {id:?} (expected at most 249 characters among \
                     a-z, A-Z, 0-9, '.', '_', '-'; empty for dynamic membership)"
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A key with a bad value, or an unknown key; `var` is the environment
    /// variable that set it, if one did.
    #[error("config key `{key}`: {message}{}", from_var(.var))]
    Invalid {
        key: String,
        message: String,
        var: Option<String>,
    },
    /// A `PRETEXT__…` variable whose name is not a key path.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

fn from_var(var: &Option<String>) -> String {
    match var {
        Some(var) => format!(" (from environment variable {var})"),
        None => String::new(),
    }
}

impl ConfigError {
    /// The dotted key at fault, when the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The environment variable at fault, when one set the bad value.
    pub fn var(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { var, .. } => var.as_deref(),
            ConfigError::Env { var, .. } => Some(var),
            _ => None,
        }
    }
}

fn positive(key: &str, d: Dur) -> Result<(), ConfigError> {
    if d.0 > 0 {
        Ok(())
    } else {
        Err(invalid(key, "must be greater than zero"))
    }
}

fn non_negative(key: &str, x: f64) -> Result<(), ConfigError> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be a finite number >= 0, got {x}"),
        ))
    }
}

fn at_least_one(key: &str, n: usize) -> Result<(), ConfigError> {
    if n >= 1 {
        Ok(())
    } else {
        Err(invalid(key, "must be at least 1"))
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
        var: None,
    }
}

/// A key set by an environment variable, remembered so that an error about
/// the key names the variable too.
#[derive(Debug)]
struct Override {
    var: String,
    path: Vec<String>,
    raw: String,
    /// The value was read as a TOML number, boolean, array or table rather
    /// than as text.
    typed: bool,
}

/// Overrides by dotted key.
type Overrides = BTreeMap<String, Override>;

/// Adds the variable that set `e`'s key, or a table or array holding it;
/// else one that set a key under it (an unknown section it created).
fn attribute(overrides: &Overrides, e: ConfigError) -> ConfigError {
    let ConfigError::Invalid {
        key,
        message,
        var: None,
    } = e
    else {
        return e;
    };
    let holds = |outer: &str, inner: &str| {
        outer == inner
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    let var = overrides
        .iter()
        .filter(|(k, _)| holds(k, &key))
        .max_by_key(|(k, _)| k.len())
        .or_else(|| overrides.iter().find(|(k, _)| holds(&key, k)))
        .map(|(_, o)| o.var.clone());
    ConfigError::Invalid { key, message, var }
}

impl Config {
    /// Reads `path` (if any), applies the `PRETEXT__…` variables of `env`
    /// (others are ignored), and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(p) => read_table(p)?,
            None => toml::Table::new(),
        };
        // Sorted, so that two variables naming one key resolve the same
        // way whatever order the process environment lists them in.
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        let mut overrides = Overrides::new();
        for (var, raw) in vars {
            apply_env(&mut table, &mut overrides, var, raw)?;
        }
        let config = deserialize(table, &mut overrides)?;
        config.validate().map_err(|e| attribute(&overrides, e))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_numbers()?;
        for (key, value) in [
            ("kafka.brokers", &self.kafka.brokers),
            ("kafka.group_id", &self.kafka.group_id),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        self.kafka.check_reserved()?;
        self.topics.validate()?;
        self.holdout.validate()?;
        self.scale.validate()?;
        self.check_internal_topic_names()?;
        positive("pressure.window", self.pressure.window)?;
        self.http.listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "http.listen",
                format!(
                    "{:?} is not a socket address (expected an IP address and a port, e.g. \"0.0.0.0:9464\")",
                    self.http.listen
                ),
            )
        })?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            invalid(
                "log.level",
                format!("{:?} is not a log filter: {e}", self.log.level),
            )
        })?;
        Ok(())
    }

    /// The durations, weights and counts that must be in range.
    fn validate_numbers(&self) -> Result<(), ConfigError> {
        positive("scoring.half_life", self.scoring.half_life)?;
        positive("scoring.lookback", self.scoring.lookback)?;
        positive("watermark.idle_timeout", self.watermark.idle_timeout)?;
        positive("kafka.batch_max_wait", self.kafka.batch_max_wait)?;
        positive("kafka.shutdown_timeout", self.kafka.shutdown_timeout)?;
        let weights = &self.scoring.weights;
        non_negative("scoring.weights.product_view", weights.product_view)?;
        non_negative("scoring.weights.add_to_cart", weights.add_to_cart)?;
        non_negative(
            "triggers.viewed_not_bought.min_score",
            self.triggers.viewed_not_bought.min_score,
        )?;
        at_least_one("input.max_message_bytes", self.input.max_message_bytes)?;
        at_least_one("kafka.batch_max_messages", self.kafka.batch_max_messages)?;
        at_least_one(
            "kafka.producer_max_in_flight",
            self.kafka.producer_max_in_flight,
        )
    }

    /// With several partitions the internal topics are named after the
    /// group (`crate::live::topology`): a group id that makes an illegal
    /// topic name is refused here, naming the group id, rather than by the
    /// broker at start.
    fn check_internal_topic_names(&self) -> Result<(), ConfigError> {
        if !self.scale.is_partitioned() {
            return Ok(());
        }
        let topology = crate::live::topology::Topology::from_config(self);
        for topic in topology.internal_topics() {
            check_topic_name("kafka.group_id", &topic.name)?;
            let clash = self
                .topics
                .inputs
                .iter()
                .map(|t| ("topics.inputs", t.as_str()));
            let outputs = self.topics.outputs().into_iter();
            if let Some((key, _)) = clash.chain(outputs).find(|(_, t)| *t == topic.name) {
                return Err(invalid(
                    key,
                    format!("topic {:?} is an internal topic of scale-out", topic.name),
                ));
            }
        }
        Ok(())
    }

    /// The settings that make stored state belong to one deployment: input
    /// offsets are stored per input topic for one consumer group, so a state
    /// directory must not be reused under another group or other input
    /// topics. The order of `topics.inputs` does not matter, and neither do
    /// the output topics (moving triggers elsewhere leaves the state valid)
    /// nor the semantic settings.
    pub fn fingerprint(&self) -> String {
        let mut inputs: Vec<&str> = self.topics.inputs.iter().map(String::as_str).collect();
        inputs.sort_unstable();
        inputs.dedup();
        // Topic names cannot hold `,` or `;`, and the group id comes last:
        // the string is unambiguous.
        format!(
            "inputs={};group_id={}",
            inputs.join(","),
            self.kafka.group_id
        )
    }
}

impl Topics {
    /// Where a trigger of `group` is produced: holdout triggers never
    /// reach the triggers topic.
    pub fn of_trigger(&self, group: Group) -> &str {
        match group {
            Group::Treated => &self.triggers,
            Group::Holdout => &self.holdout,
        }
    }

    /// The output topics with the keys that name them.
    pub fn outputs(&self) -> [(&'static str, &str); 4] {
        [
            ("topics.triggers", self.triggers.as_str()),
            ("topics.dead_letter", self.dead_letter.as_str()),
            ("topics.holdout", self.holdout.as_str()),
            ("topics.conversions", self.conversions.as_str()),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.inputs.is_empty() {
            return Err(invalid("topics.inputs", "must name at least one topic"));
        }
        for (i, name) in self.inputs.iter().enumerate() {
            let key = format!("topics.inputs[{i}]");
            check_topic_name(&key, name)?;
            if let Some(j) = self.inputs[..i].iter().position(|t| t == name) {
                return Err(invalid(
                    &key,
                    format!("topic {name:?} is already topics.inputs[{j}]"),
                ));
            }
        }
        let outputs = self.outputs();
        for (key, name) in outputs {
            check_topic_name(key, name)?;
        }
        // Reading our own output would feed triggers or dead letters back as
        // input; a dead letter read back would be rejected again, forever.
        for (key, name) in outputs {
            if self.inputs.iter().any(|t| t == name) {
                return Err(invalid(
                    key,
                    format!("topic {name:?} is also an input topic"),
                ));
            }
        }
        for (key, n) in [
            ("topics.create_partitions", self.create_partitions),
            (
                "topics.create_replication_factor",
                self.create_replication_factor,
            ),
        ] {
            if n == 0 || n < -1 {
                return Err(invalid(
                    key,
                    format!("must be -1 (the broker's default) or at least 1, got {n}"),
                ));
            }
        }
        // Outputs kept apart: holdout triggers must never reach the
        // subscribers of the triggers topic.
        for (i, (key, name)) in outputs.iter().enumerate() {
            if let Some((other, _)) = outputs[..i].iter().find(|(_, n)| n == name) {
                return Err(invalid(key, format!("topic {name:?} is also {other}")));
            }
        }
        Ok(())
    }
}

/// Kafka's rule for topic names, checked here so that a typo is a
/// configuration error naming the key rather than a broker error later.
fn check_topic_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let legal = (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if legal {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "invalid topic name {name:?} (expected 1 to 249 characters among a-z, A-Z, 0-9, '.', '_', '-')"
            ),
        ))
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Deserializes the merged table, reporting the dotted key of a failure.
fn deserialize(mut table: toml::Table, overrides: &mut Overrides) -> Result<Config, ConfigError> {
    loop {
        let e = match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
            Ok(config) => return Ok(config),
            Err(e) => e,
        };
        let key = e.path().to_string();
        // toml's own text would repeat the key ("in `scoring.half_life`").
        let message = e.inner().message().to_string();
        // An environment value that reads as a TOML number or boolean where
        // the key takes text (`PRETEXT__KAFKA__GROUP_ID=2024`) is the text
        // it was written as. Each override is retried at most once.
        if message.starts_with("invalid type:") {
            if let Some(o) = overrides.get_mut(&key).filter(|o| o.typed) {
                o.typed = false;
                let text = toml::Value::String(o.raw.clone());
                set_path(&mut table, &o.path, text).map_err(|part| not_a_section(&key, &part))?;
                continue;
            }
        }
        let e = unknown_key_error(&key, &message).unwrap_or_else(|| invalid(&key, message));
        return Err(attribute(overrides, e));
    }
}

/// An unknown field is reported as "unknown key", at its full path.
fn unknown_key_error(path: &str, message: &str) -> Option<ConfigError> {
    let rest = message.strip_prefix("unknown field `")?;
    let field = &rest[..rest.find('`')?];
    let key = if path.is_empty() || path == "." {
        field.to_string()
    } else if path == field || path.ends_with(&format!(".{field}")) {
        path.to_string()
    } else {
        format!("{path}.{field}")
    };
    Some(invalid(&key, "unknown key"))
}

fn not_a_section(key: &str, part: &str) -> ConfigError {
    invalid(key, format!("`{part}` is not a section"))
}

/// The librdkafka pass-through maps, whose keys contain dots.
const SETTING_MAPS: [&str; 3] = ["client", "consumer", "producer"];

/// Sets the key a `PRETEXT__A__B__C` variable names. Under `kafka.client`,
/// `kafka.consumer` and `kafka.producer` the rest of the name is one
/// librdkafka key: a double underscore is a dot, a single one stays an
/// underscore (`PRETEXT__KAFKA__CONSUMER__SESSION__TIMEOUT__MS` sets
/// `session.timeout.ms`; `…__SSL__KEY__PASSWORD`, `ssl.key.password`).
fn apply_env(
    table: &mut toml::Table,
    overrides: &mut Overrides,
    var: String,
    raw: String,
) -> Result<(), ConfigError> {
    let mut path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var,
            message: "does not name a config key (expected PRETEXT__SECTION__KEY, e.g. PRETEXT__KAFKA__BROKERS)".into(),
        });
    }
    let under_client =
        path.len() > 2 && path[0] == "kafka" && SETTING_MAPS.contains(&path[1].as_str());
    if under_client {
        let setting = path.split_off(2).join(".");
        path.push(setting);
    }
    let key = path.join(".");
    // librdkafka takes text, and a secret such as `0x1F` or `"x"` must reach
    // it exactly as written, not as TOML would read it.
    let (value, typed) = if under_client {
        (toml::Value::String(raw.clone()), false)
    } else {
        env_value(&raw)
    };
    set_path(table, &path, value).map_err(|part| ConfigError::Invalid {
        key: key.clone(),
        message: format!("`{part}` is not a section"),
        var: Some(var.clone()),
    })?;
    overrides.insert(
        key,
        Override {
            var,
            path,
            raw,
            typed,
        },
    );
    Ok(())
}

/// Sets `value` at `path`, creating tables on the way. On failure, returns
/// the dotted prefix that holds something other than a table.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err(String::new());
    };
    let mut node = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = node
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(path[..=i].join(".")),
        };
    }
    node.insert(last.clone(), value);
    Ok(())
}

/// A variable's value as TOML when it is one value (numbers, booleans,
/// arrays, quoted strings), else as plain text; and whether it was read as
/// something other than text.
fn env_value(raw: &str) -> (toml::Value, bool) {
    let parsed = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"));
    match parsed {
        Some(v) => {
            let typed = !v.is_str();
            (v, typed)
        }
        None => (toml::Value::String(raw.to_string()), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_str(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load(Some(&path), env(vars))
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(None, env(vars))
    }

    fn repo_file(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
    }

    #[test]
    fn default_toml_documents_exactly_the_defaults() {
        let c = Config::load(Some(&repo_file("config/default.toml")), env(&[])).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn the_defaults_are_the_contract_values() {
        let c = Config::default();
        assert_eq!(c.input.max_message_bytes, 1_048_576);
        assert_eq!(c.input.dedup_window, Dur::parse("24h").unwrap());
        assert_eq!(c.watermark.allowed_lateness, Dur(300_000));
        assert_eq!(c.watermark.idle_timeout, Dur(10_000));
        assert_eq!(c.identity.anonymous_buffer, 50);
        assert_eq!(c.scoring.half_life, Dur(72 * 3_600_000));
        assert_eq!(c.scoring.lookback, Dur(30 * 86_400_000));
        assert_eq!(c.scoring.weights.product_view, 1.0);
        assert_eq!(c.scoring.weights.add_to_cart, 3.0);
        assert_eq!(c.triggers.viewed_not_bought.delay, Dur(3_600_000));
        assert_eq!(c.triggers.viewed_not_bought.min_score, 0.5);
        assert_eq!(c.triggers.viewed_not_bought.cooldown, Dur(7 * 86_400_000));
        assert_eq!(
            c.triggers.promo_on_viewed_item.cooldown,
            Dur(7 * 86_400_000)
        );
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.kafka.group_id, "pretext");
        assert!(c.kafka.client.is_empty());
        assert_eq!(c.kafka.batch_max_messages, 20000);
        assert_eq!(c.kafka.batch_max_wait, Dur(100));
        assert_eq!(c.kafka.commit_interval, Dur(1000));
        assert_eq!(c.kafka.producer_max_in_flight, 10_000);
        assert_eq!(c.kafka.shutdown_timeout, Dur(20_000));
        assert_eq!(
            c.topics.inputs,
            [
                "pretext.web-events",
                "pretext.transactions",
                "pretext.promotions",
                "pretext.customers"
            ]
        );
        assert_eq!(c.topics.triggers, "pretext.triggers");
        assert_eq!(c.topics.dead_letter, "pretext.dead-letter");
        assert_eq!(c.state.dir, PathBuf::from("./data"));
        assert_eq!(c.http.listen, "127.0.0.1:9464");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "info");
        assert_eq!(Config::load(None, env(&[])).unwrap(), c);
    }

    #[test]
    fn live_local_toml_is_a_partial_file_for_a_local_broker() {
        let c = Config::load(Some(&repo_file("config/live-local.toml")), env(&[])).unwrap();
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.state.dir, PathBuf::from("./data"));
        assert_eq!(c.scoring, Config::default().scoring);
    }

    #[test]
    fn a_partial_file_keeps_the_defaults() {
        let c = load_str("[scoring]\nhalf_life = \"24h\"\n", &[]).unwrap();
        assert_eq!(c.scoring.half_life, Dur(86_400_000));
        assert_eq!(c.scoring.lookback, Config::default().scoring.lookback);
        assert_eq!(c.scoring.weights, Weights::default());
        assert_eq!(c.kafka, Config::default().kafka);
        let c = load_str("[scoring.weights]\nadd_to_cart = 2\n", &[]).unwrap();
        assert_eq!(c.scoring.weights.add_to_cart, 2.0);
        assert_eq!(c.scoring.weights.product_view, 1.0);
        assert_eq!(c.scoring.half_life, Config::default().scoring.half_life);
        assert_eq!(load_str("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("250ms"), Ok(Dur(250)));
        assert_eq!(Dur::parse("90s"), Ok(Dur(90_000)));
        assert_eq!(Dur::parse("5m"), Ok(Dur(300_000)));
        assert_eq!(Dur::parse("1h"), Ok(Dur(3_600_000)));
        assert_eq!(Dur::parse("7d"), Ok(Dur(604_800_000)));
        assert_eq!(Dur::parse("0s"), Ok(Dur(0)));
        for bad in [
            "",
            "5",
            "h",
            "1.5h",
            "-1h",
            "+1h",
            "1w",
            "1 h",
            " 1h",
            "1h ",
            "1H",
            "1h30m",
            "99999999999999999d",
        ] {
            let e = Dur::parse(bad).unwrap_err();
            assert!(e.contains("ms, s, m, h, d"), "{bad}: {e}");
        }
        assert_eq!(Dur(90_000).millis(), 90_000);
        assert_eq!(Dur(250).std(), std::time::Duration::from_millis(250));
        for (ms, text) in [
            (0, "0s"),
            (250, "250ms"),
            (90_000, "90s"),
            (604_800_000, "7d"),
        ] {
            assert_eq!(Dur(ms).to_string(), text);
            assert_eq!(Dur::parse(text), Ok(Dur(ms)));
        }
        assert_eq!(format!("{:?}", Dur(3_600_000)), "Dur(1h)");
    }

    #[test]
    fn every_duration_form_loads_from_a_file() {
        let c = load_str(
            r#"
[input]
dedup_window = "2d"
[watermark]
allowed_lateness = "90s"
idle_timeout = "250ms"
[triggers.viewed_not_bought]
delay = "30m"
cooldown = "12h"
"#,
            &[],
        )
        .unwrap();
        assert_eq!(c.input.dedup_window, Dur(2 * 86_400_000));
        assert_eq!(c.watermark.allowed_lateness, Dur(90_000));
        assert_eq!(c.watermark.idle_timeout, Dur(250));
        assert_eq!(c.triggers.viewed_not_bought.delay, Dur(1_800_000));
        assert_eq!(c.triggers.viewed_not_bought.cooldown, Dur(12 * 3_600_000));
    }

    #[test]
    fn environment_overrides_set_any_key() {
        let c = load_env(&[
            ("PRETEXT__KAFKA__BROKERS", "b1:9092,b2:9092"),
            ("PRETEXT__SCORING__WEIGHTS__ADD_TO_CART", "2.5"),
            ("PRETEXT__TRIGGERS__VIEWED_NOT_BOUGHT__DELAY", "30m"),
            ("PRETEXT__TOPICS__INPUTS", "[\"a\", \"b\"]"),
            ("PRETEXT__KAFKA__CLIENT__SASL__MECHANISM", "PLAIN"),
            ("PRETEXT__INPUT__MAX_MESSAGE_BYTES", "2048"),
            ("PRETEXT__LOG__FORMAT", "text"),
            ("PRETEXT__STATE__DIR", "/var/lib/pretext"),
            ("HOME", "/root"),
            ("PRETEXT_KAFKA__BROKERS", "ignored:1"),
        ])
        .unwrap();
        assert_eq!(c.kafka.brokers, "b1:9092,b2:9092");
        assert_eq!(c.scoring.weights.add_to_cart, 2.5);
        assert_eq!(c.triggers.viewed_not_bought.delay, Dur(1_800_000));
        assert_eq!(c.topics.inputs, vec!["a", "b"]);
        assert_eq!(c.kafka.client["sasl.mechanism"], "PLAIN");
        assert_eq!(c.input.max_message_bytes, 2048);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.state.dir, PathBuf::from("/var/lib/pretext"));
    }

    #[test]
    fn environment_values_that_read_as_numbers_stay_text_where_text_is_expected() {
        let c = load_env(&[
            ("PRETEXT__KAFKA__GROUP_ID", "2024"),
            ("PRETEXT__TOPICS__TRIGGERS", "true"),
            ("PRETEXT__KAFKA__CLIENT__SESSION__TIMEOUT__MS", "6000"),
            ("PRETEXT__KAFKA__CLIENT__SASL__PASSWORD", "\"0x1F\""),
        ])
        .unwrap();
        assert_eq!(c.kafka.group_id, "2024");
        assert_eq!(c.topics.triggers, "true");
        assert_eq!(c.kafka.client["session.timeout.ms"], "6000");
        // Passed through verbatim: TOML would have dropped the quotes.
        assert_eq!(c.kafka.client["sasl.password"], "\"0x1F\"");
        // A quoted value is a TOML string, so it can carry what looks like a number.
        let c = load_env(&[("PRETEXT__KAFKA__GROUP_ID", "\"007\"")]).unwrap();
        assert_eq!(c.kafka.group_id, "007");
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let c = load_str(
            "[kafka]\ngroup_id = \"file\"\nbrokers = \"file:9092\"\n",
            &[("PRETEXT__KAFKA__GROUP_ID", "env")],
        )
        .unwrap();
        assert_eq!(c.kafka.group_id, "env");
        assert_eq!(c.kafka.brokers, "file:9092");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[scoring]\nhalf_lief = \"1h\"\n", "scoring.half_lief"),
            ("surprise = 1\n", "surprise"),
            ("[surprise]\nx = 1\n", "surprise"),
            (
                "[triggers.viewed_not_bought]\ndelai = \"1h\"\n",
                "triggers.viewed_not_bought.delai",
            ),
            ("[scoring.weights]\nview = 1.0\n", "scoring.weights.view"),
            ("[kafka]\nclients = {}\n", "kafka.clients"),
            ("[scoring]\nhalf_life = \"3x\"\n", "scoring.half_life"),
            ("[scoring]\nhalf_life = 3600\n", "scoring.half_life"),
            ("[scoring]\nhalf_life = \"0s\"\n", "scoring.half_life"),
            ("[scoring]\nlookback = \"0d\"\n", "scoring.lookback"),
            (
                "[scoring.weights]\nproduct_view = \"1\"\n",
                "scoring.weights.product_view",
            ),
            (
                "[scoring.weights]\nadd_to_cart = -3.0\n",
                "scoring.weights.add_to_cart",
            ),
            (
                "[scoring.weights]\nadd_to_cart = inf\n",
                "scoring.weights.add_to_cart",
            ),
            (
                "[triggers.viewed_not_bought]\nmin_score = -1.0\n",
                "triggers.viewed_not_bought.min_score",
            ),
            (
                "[triggers.viewed_not_bought]\nmin_score = nan\n",
                "triggers.viewed_not_bought.min_score",
            ),
            (
                "[input]\nmax_message_bytes = 0\n",
                "input.max_message_bytes",
            ),
            (
                "[input]\nmax_message_bytes = -1\n",
                "input.max_message_bytes",
            ),
            (
                "[identity]\nanonymous_buffer = \"50\"\n",
                "identity.anonymous_buffer",
            ),
            (
                "[watermark]\nidle_timeout = \"0s\"\n",
                "watermark.idle_timeout",
            ),
            ("[kafka]\nbrokers = \" \"\n", "kafka.brokers"),
            ("[kafka]\ngroup_id = \"\"\n", "kafka.group_id"),
            (
                "[kafka]\nbatch_max_messages = 0\n",
                "kafka.batch_max_messages",
            ),
            (
                "[kafka]\nproducer_max_in_flight = 0\n",
                "kafka.producer_max_in_flight",
            ),
            (
                "[kafka]\nshutdown_timeout = \"0s\"\n",
                "kafka.shutdown_timeout",
            ),
            (
                "[kafka.client]\n\"sasl.username\" = [\"x\"]\n",
                "kafka.client.sasl.username",
            ),
            (
                "[kafka.client]\n\"group.id\" = \"g\"\n",
                "kafka.client.group.id",
            ),
            (
                "[kafka.client]\n\"enable.auto.commit\" = true\n",
                "kafka.client.enable.auto.commit",
            ),
            ("[http]\nlisten = \"nowhere\"\n", "http.listen"),
            ("[http]\nlisten = \"127.0.0.1\"\n", "http.listen"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            ("[log]\nlevel = \"[\"\n", "log.level"),
            ("[topics]\ninputs = []\n", "topics.inputs"),
            ("[topics]\ninputs = \"a\"\n", "topics.inputs"),
            ("[topics]\ninputs = [\"a\", \"\"]\n", "topics.inputs[1]"),
            ("[topics]\ninputs = [\"a\", \"b c\"]\n", "topics.inputs[1]"),
            (
                "[topics]\ninputs = [\"a\", \"b\", \"a\"]\n",
                "topics.inputs[2]",
            ),
            ("[topics]\ninputs = [\"a\", 2]\n", "topics.inputs[1]"),
            ("[topics]\ntriggers = \"\"\n", "topics.triggers"),
            (
                "[topics]\ntriggers = \"pretext.web-events\"\n",
                "topics.triggers",
            ),
            (
                "[topics]\ndead_letter = \"pretext.customers\"\n",
                "topics.dead_letter",
            ),
            (
                "[topics]\ndead_letter = \"pretext.triggers\"\n",
                "topics.dead_letter",
            ),
            ("[state]\ndir = 1\n", "state.dir"),
            ("scoring = 1\n", "scoring"),
            (
                "[kafka]\ncommit_interval = \"-1s\"\n",
                "kafka.commit_interval",
            ),
        ];
        for (file, key) in cases {
            let r = load_str(file, &[]);
            let e = match r {
                Ok(_) => panic!("{file:?} loaded"),
                Err(e) => e,
            };
            assert_eq!(e.key(), Some(*key), "{file:?}: {e}");
            assert!(
                e.to_string().starts_with(&format!("config key `{key}`: ")),
                "{e}"
            );
            assert_eq!(e.var(), None);
        }
    }

    #[test]
    fn retention_is_forever_unless_a_duration_bounds_it() {
        assert_eq!(Config::default().state.retention, Retention::Forever);
        assert_eq!(Retention::Forever.millis(), i64::MAX);
        let c = load_str("[state]\nretention = \"7d\"\n", &[]).unwrap();
        assert_eq!(c.state.retention, Retention::Within(Dur(7 * 86_400_000)));
        let c = load_str("[state]\nretention = \"forever\"\n", &[]).unwrap();
        assert_eq!(c.state.retention, Retention::Forever);
        let e = load_str("[state]\nretention = \"always\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config key `state.retention`: invalid duration"),
            "{e}"
        );
        assert!(e.contains("or \"forever\""), "{e}");
    }

    #[test]
    fn error_messages_read_as_documented() {
        let text = |file: &str| load_str(file, &[]).unwrap_err().to_string();
        assert_eq!(
            text("[scoring]\nhalf_life = \"3x\"\n"),
            "config key `scoring.half_life`: invalid duration \"3x\" (expected a whole number and a unit: ms, s, m, h, d, e.g. \"90s\", \"7d\")"
        );
        assert_eq!(
            text("[scoring]\nhalf_lief = \"1h\"\n"),
            "config key `scoring.half_lief`: unknown key"
        );
        let e = text("[scoring]\nhalf_life = 3600\n");
        assert!(e.contains("expected a duration string"), "{e}");
        let e = text("[log]\nformat = \"xml\"\n");
        assert!(e.contains("`json`") && e.contains("`text`"), "{e}");
        let e = text("[kafka.client]\n\"bootstrap.servers\" = \"x:1\"\n");
        assert!(e.contains("use `kafka.brokers`"), "{e}");
    }

    #[test]
    fn bad_environment_values_name_the_key_and_the_variable() {
        let cases: &[(&str, &str, &str)] = &[
            ("PRETEXT__SCORING__HALF_LIFE", "3x", "scoring.half_life"),
            ("PRETEXT__SCORING__HALF_LIFE", "3600", "scoring.half_life"),
            (
                "PRETEXT__SCORING__WEIGHTS__PRODUCT_VIEW",
                "heavy",
                "scoring.weights.product_view",
            ),
            (
                "PRETEXT__SCORING__WEIGHTS__PRODUCT_VIEW",
                "-1",
                "scoring.weights.product_view",
            ),
            (
                "PRETEXT__INPUT__MAX_MESSAGE_BYTES",
                "1MiB",
                "input.max_message_bytes",
            ),
            ("PRETEXT__TOPICS__INPUTS", "a,b", "topics.inputs"),
            ("PRETEXT__TOPICS__INPUTS", "[\"a\", 1]", "topics.inputs[1]"),
            ("PRETEXT__TOPICS__INPUTS", "[]", "topics.inputs"),
            ("PRETEXT__SCORING__NOPE", "1", "scoring.nope"),
            ("PRETEXT__NOPE__X", "1", "nope"),
            ("PRETEXT__KAFKA__BROKERS__HOST", "x", "kafka.brokers"),
            ("PRETEXT__HTTP__LISTEN", "localhost", "http.listen"),
            (
                "PRETEXT__KAFKA__CLIENT__GROUP__ID",
                "g",
                "kafka.client.group.id",
            ),
        ];
        for (var, value, key) in cases {
            let e = load_env(&[(var, value)]).unwrap_err();
            assert_eq!(e.key(), Some(*key), "{var}={value}: {e}");
            assert_eq!(e.var(), Some(*var), "{var}={value}: {e}");
            assert!(e.to_string().contains(var), "{e}");
        }
        assert_eq!(
            load_env(&[("PRETEXT__SCORING__NOPE", "1")]).unwrap_err().to_string(),
            "config key `scoring.nope`: unknown key (from environment variable PRETEXT__SCORING__NOPE)"
        );
        // A variable that goes through a key the file set to a value.
        let e = load_str(
            "[kafka]\nbrokers = \"b:9092\"\n",
            &[("PRETEXT__KAFKA__BROKERS__HOST", "x")],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config key `kafka.brokers.host`: `kafka.brokers` is not a section (from environment variable PRETEXT__KAFKA__BROKERS__HOST)"
        );
        // A bad value in the file is not blamed on an unrelated variable.
        let e = load_str(
            "[scoring]\nhalf_life = \"3x\"\n",
            &[("PRETEXT__SCORING__LOOKBACK", "10d")],
        )
        .unwrap_err();
        assert_eq!((e.key(), e.var()), (Some("scoring.half_life"), None));
    }

    #[test]
    fn a_variable_that_names_no_key_is_an_error() {
        for var in ["PRETEXT__", "PRETEXT__KAFKA____BROKERS", "PRETEXT__KAFKA__"] {
            let e = load_env(&[(var, "x")]).unwrap_err();
            assert!(matches!(e, ConfigError::Env { .. }), "{var}: {e}");
            assert_eq!(e.var(), Some(var));
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn unreadable_and_malformed_files_name_the_path() {
        let e = Config::load(Some(Path::new("/nonexistent/p.toml")), env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/p.toml"), "{e}");
        assert_eq!(e.key(), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, "[scoring\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }));
        let text = e.to_string();
        assert!(
            text.contains("broken.toml") && text.contains("line 1"),
            "{text}"
        );
    }

    #[test]
    fn client_settings_pass_through_as_text() {
        let c = load_str(
            r#"
[kafka.client]
"security.protocol" = "SASL_SSL"
"session.timeout.ms" = 6000
"enable.ssl.certificate.verification" = false
"#,
            &[],
        )
        .unwrap();
        assert_eq!(c.kafka.client["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka.client["session.timeout.ms"], "6000");
        assert_eq!(
            c.kafka.client["enable.ssl.certificate.verification"],
            "false"
        );
    }

    #[test]
    fn consumer_and_producer_settings_go_to_their_client_only() {
        let c = load_str(
            r#"
[kafka.client]
"security.protocol" = "SSL"
"client.id" = "both"
[kafka.consumer]
"session.timeout.ms" = 45000
"client.id" = "consumer"
[kafka.producer]
"linger.ms" = 5
"#,
            &[
                ("PRETEXT__KAFKA__CONSUMER__FETCH__MAX__BYTES", "1048576"),
                ("PRETEXT__KAFKA__PRODUCER__LOG_LEVEL", "7"),
            ],
        )
        .unwrap();
        let consumer: BTreeMap<&str, &str> = c.kafka.consumer_settings().collect();
        let producer: BTreeMap<&str, &str> = c.kafka.producer_settings().collect();
        assert_eq!(
            consumer,
            BTreeMap::from([
                ("client.id", "consumer"),
                ("fetch.max.bytes", "1048576"),
                ("security.protocol", "SSL"),
                ("session.timeout.ms", "45000"),
            ])
        );
        assert_eq!(
            producer,
            BTreeMap::from([
                ("client.id", "both"),
                ("linger.ms", "5"),
                ("log_level", "7"),
                ("security.protocol", "SSL"),
            ])
        );
        let e = load_str("[kafka.producer]\nacks = \"1\"\n", &[]).unwrap_err();
        assert_eq!(e.key(), Some("kafka.producer.acks"));
        let e = load_env(&[("PRETEXT__KAFKA__CONSUMER__GROUP__ID", "x")]).unwrap_err();
        assert_eq!(e.key(), Some("kafka.consumer.group.id"));
        assert!(e.to_string().contains("kafka.group_id"), "{e}");
    }

    #[test]
    fn start_from_is_earliest_latest_or_a_time() {
        assert_eq!(Config::default().kafka.start_from, StartFrom::Earliest);
        let at = |v: &str| load_env(&[("PRETEXT__KAFKA__START_FROM", v)]);
        assert_eq!(at("latest").unwrap().kafka.start_from, StartFrom::Latest);
        assert_eq!(
            at("earliest").unwrap().kafka.start_from,
            StartFrom::Earliest
        );
        assert_eq!(
            at("2026-11-22T11:00:00+01:00").unwrap().kafka.start_from,
            StartFrom::Time(1_795_341_600_000)
        );
        for bad in ["yesterday", "2026-11-22", "2026-11-22T10:00:00", "Earliest"] {
            let e = at(bad).unwrap_err();
            assert_eq!(e.key(), Some("kafka.start_from"), "{bad}: {e}");
            assert_eq!(e.var(), Some("PRETEXT__KAFKA__START_FROM"));
            assert!(e.to_string().contains("RFC 3339"), "{e}");
        }
        let e = load_str("[kafka]\nstart_from = 5\n", &[]).unwrap_err();
        assert_eq!(e.key(), Some("kafka.start_from"));
    }

    #[test]
    fn created_topics_take_a_partition_count_and_replication_factor() {
        let c = load_str("[topics]\ncreate = true\ncreate_partitions = 6\n", &[]).unwrap();
        assert!(c.topics.create);
        assert_eq!(c.topics.create_partitions, 6);
        assert_eq!(c.topics.create_replication_factor, -1);
        for (key, v) in [("create_partitions", 0), ("create_replication_factor", -2)] {
            let e = load_str(&format!("[topics]\n{key} = {v}\n"), &[]).unwrap_err();
            assert_eq!(e.key(), Some(format!("topics.{key}").as_str()), "{e}");
        }
    }

    #[test]
    fn secrets_are_masked_in_debug_output() {
        let c = load_str(
            "[kafka.client]\n\"ssl.key.pem\" = \"-----BEGIN PRIVATE KEY-----abc\"\n",
            &[
                ("PRETEXT__KAFKA__CLIENT__SASL__PASSWORD", "hunter2"),
                ("PRETEXT__KAFKA__CLIENT__SSL__KEY__PASSWORD", "s3cret"),
                (
                    "PRETEXT__KAFKA__CLIENT__SASL__OAUTHBEARER__CLIENT__SECRET",
                    "oauth-secret",
                ),
                ("PRETEXT__KAFKA__CLIENT__SASL__USERNAME", "svc"),
            ],
        )
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["hunter2", "s3cret", "PRIVATE KEY", "oauth-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for masked in [
            "\"sasl.password\": \"***\"",
            "\"ssl.key.password\": \"***\"",
            "\"ssl.key.pem\": \"***\"",
        ] {
            assert!(shown.contains(masked), "{masked} not in {shown}");
        }
        assert!(shown.contains("\"sasl.username\": \"svc\""), "{shown}");
        assert!(format!("{:#?}", c.kafka).contains("***"));
        // Masked for display only: the client gets the real values.
        assert_eq!(c.kafka.client["sasl.password"], "hunter2");
        assert_eq!(c.kafka.redacted_client()["ssl.key.password"], "***");
    }

    #[test]
    fn the_query_token_never_shows_and_must_be_long_enough() {
        let token = "tok-0123456789abcdef";
        let c = load_env(&[("PRETEXT__HTTP__QUERY_TOKEN", token)]).unwrap();
        assert_eq!(c.http.query_token.expose(), token);
        assert!(!format!("{c:?}").contains(token));
        assert!(format!("{:?}", c.http).contains("QueryToken(\"***\")"));
        // Digits only: read as a number first, then as the text it is.
        let digits = "12345678901234567890";
        let c = load_env(&[("PRETEXT__HTTP__QUERY_TOKEN", digits)]).unwrap();
        assert_eq!(c.http.query_token.expose(), digits);
        assert!(!Config::default().http.query_token.is_set());
        for (file, secret) in [
            ("[http]\nquery_token = \"short\"\n", "short"),
            (
                "[http]\nquery_token = \"with a space 0123456789\"\n",
                "with a space",
            ),
            ("[http]\nquery_token = 987654321\n", "987654321"),
        ] {
            let e = load_str(file, &[]).unwrap_err();
            assert_eq!(e.key(), Some("http.query_token"), "{e}");
            assert!(!e.to_string().contains(secret), "{e}");
        }
    }

    #[test]
    fn the_fingerprint_follows_input_topics_and_group() {
        let a = Config::default();
        assert_eq!(
            a.fingerprint(),
            "inputs=pretext.customers,pretext.promotions,pretext.transactions,pretext.web-events;group_id=pretext"
        );
        let mut b = Config::default();
        b.triggers.viewed_not_bought.delay = Dur(1);
        b.scoring.half_life = Dur(1);
        b.topics.triggers = "elsewhere".into();
        b.topics.inputs.reverse();
        b.kafka.brokers = "other:9092".into();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.topics.inputs.push("more".into());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = Config::default();
        c.kafka.group_id = "other".into();
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn scale_defaults_to_one_partition_and_accepts_a_partitioned_setup() {
        let c = Config::default();
        assert_eq!(
            (
                c.scale.partitions,
                c.scale.standby_replicas,
                c.scale.instance_id.as_str()
            ),
            (1, 0, "")
        );
        assert!(!c.scale.is_partitioned());
        let c = load_env(&[
            ("PRETEXT__SCALE__PARTITIONS", "6"),
            ("PRETEXT__SCALE__STANDBY_REPLICAS", "1"),
            ("PRETEXT__SCALE__INSTANCE_ID", "pretext-2"),
        ])
        .unwrap();
        assert_eq!(c.scale.partitions, 6);
        assert_eq!(c.scale.standby_replicas, 1);
        assert_eq!(c.scale.instance_id, "pretext-2");
        assert!(c.scale.is_partitioned());
    }

    #[test]
    fn a_bad_scale_value_names_its_key() {
        let cases: [(&str, &str); 6] = [
            ("[scale]\npartitions = 0", "scale.partitions"),
            ("[scale]\npartitions = 5000", "scale.partitions"),
            ("[scale]\npartitions = -2", "scale.partitions"),
            ("[scale]\nstandby_replicas = 1", "scale.standby_replicas"),
            ("[scale]\ninstance_id = \"pod 0\"", "scale.instance_id"),
            ("[scale]\nshards = 3", "scale.shards"),
        ];
        for (toml, key) in cases {
            let e = load_str(toml, &[]).unwrap_err();
            assert_eq!(e.key(), Some(key), "{toml}: {e}");
        }
        let e = load_env(&[("PRETEXT__SCALE__PARTITIONS", "0")]).unwrap_err();
        assert_eq!(e.key(), Some("scale.partitions"));
        assert_eq!(e.var(), Some("PRETEXT__SCALE__PARTITIONS"));
        assert!(e.to_string().contains("from 1 to 4096"), "{e}");
    }

    #[test]
    fn static_membership_is_set_by_scale_instance_id_not_the_pass_through() {
        let e = load_str("[kafka.consumer]\n\"group.instance.id\" = \"a\"", &[]).unwrap_err();
        assert_eq!(e.key(), Some("kafka.consumer.group.instance.id"));
        assert!(e.to_string().contains("scale.instance_id"), "{e}");
    }

    #[test]
    fn a_group_id_that_makes_an_illegal_internal_topic_is_refused_when_partitioned() {
        let long = "g".repeat(240);
        // One partition: no internal topics, any legal group id goes.
        let vars = [("PRETEXT__KAFKA__GROUP_ID", long.as_str())];
        assert!(load_env(&vars).is_ok());
        let vars = [
            ("PRETEXT__KAFKA__GROUP_ID", long.as_str()),
            ("PRETEXT__SCALE__PARTITIONS", "3"),
        ];
        let e = load_env(&vars).unwrap_err();
        assert_eq!(e.key(), Some("kafka.group_id"), "{e}");
        let e = load_env(&[
            ("PRETEXT__KAFKA__GROUP_ID", "shop"),
            ("PRETEXT__SCALE__PARTITIONS", "3"),
            ("PRETEXT__TOPICS__TRIGGERS", "shop.by-customer"),
        ])
        .unwrap_err();
        assert_eq!(e.key(), Some("topics.triggers"), "{e}");
    }
}
