//! Configuration: TOML (`--config FILE`, a partial file keeps the defaults)
//! with every key overridable by an environment variable
//! `PRETEXT__SECTION__KEY`. Strict: an unknown key or a bad value is an
//! error that names the key. `config/default.toml` documents every key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

const ENV_PREFIX: &str = "PRETEXT__";

/// A duration in milliseconds, written `"250ms"`, `"90s"`, `"5m"`, `"1h"`, `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub i64);

impl Dur {
    pub const fn secs(s: i64) -> Dur {
        Dur(s * 1000)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }

    /// Parses a whole number and one unit.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let bad = || {
            format!(
                "invalid duration {s:?} (expected a whole number and a unit: ms, s, m, h, d, e.g. \"90s\", \"7d\")"
            )
        };
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

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub input: Input,
    pub watermark: Watermark,
    pub identity: Identity,
    pub scoring: Scoring,
    pub triggers: Triggers,
    pub kafka: Kafka,
    pub topics: Topics,
    pub state: State,
    pub http: Http,
    pub log: Log,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Input {
    /// Messages larger than this are rejected as `too_large`.
    pub max_message_bytes: usize,
    /// An event whose id was applied within this time of its own is a duplicate.
    pub dedup_window: Dur,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            max_message_bytes: 1 << 20,
            dedup_window: Dur(24 * 3_600_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Watermark {
    /// W = the highest applied event time minus this.
    pub allowed_lateness: Dur,
    /// Live mode: with no input for this long (wall clock), W follows the clock.
    pub idle_timeout: Dur,
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark {
            allowed_lateness: Dur(5 * 60_000),
            idle_timeout: Dur::secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Identity {
    /// Events kept per cookie that has no CRM link yet.
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
    pub weights: Weights,
}

impl Default for Scoring {
    fn default() -> Self {
        Scoring {
            half_life: Dur(72 * 3_600_000),
            lookback: Dur(30 * 86_400_000),
            weights: Weights::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    pub product_view: f64,
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
    pub viewed_not_bought: ViewedNotBought,
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
            delay: Dur(3_600_000),
            min_score: 0.5,
            cooldown: Dur(7 * 86_400_000),
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
            cooldown: Dur(7 * 86_400_000),
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
    /// before the settings pretext relies on.
    pub client: BTreeMap<String, String>,
    /// A batch ends after this many messages…
    pub batch_max_messages: usize,
    /// …or after this long, whichever comes first.
    pub batch_max_wait: Dur,
    /// Produced messages not yet acknowledged, at most.
    pub producer_max_in_flight: usize,
    /// On SIGTERM, the time allowed to finish the batch and commit.
    pub shutdown_timeout: Dur,
}

impl Default for Kafka {
    fn default() -> Self {
        Kafka {
            brokers: "127.0.0.1:9092".into(),
            group_id: "pretext".into(),
            client: BTreeMap::new(),
            batch_max_messages: 5000,
            batch_max_wait: Dur(100),
            producer_max_in_flight: 10_000,
            shutdown_timeout: Dur::secs(20),
        }
    }
}

/// Keys of `kafka.client` whose values are secrets.
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "key"].iter().any(|s| k.contains(s))
}

impl fmt::Debug for Kafka {
    /// Masks secret client settings: configuration is logged, secrets never.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client: BTreeMap<&str, &str> = self
            .client
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("Kafka")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("client", &client)
            .field("batch_max_messages", &self.batch_max_messages)
            .field("batch_max_wait", &self.batch_max_wait)
            .field("producer_max_in_flight", &self.producer_max_in_flight)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub inputs: Vec<String>,
    pub triggers: String,
    pub dead_letter: String,
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct State {
    /// The RocksDB directory (state and input offsets).
    pub dir: PathBuf,
}

impl Default for State {
    fn default() -> Self {
        State {
            dir: PathBuf::from("./data"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// `/metrics`, `/healthz` and `/readyz` listen here.
    pub listen: String,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// The dotted key at fault, when the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

impl Config {
    /// Reads `path` (if any), applies `PRETEXT__…` variables from `env`,
    /// and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(p) => read_table(p)?,
            None => toml::Table::new(),
        };
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                apply_env(&mut table, &name, rest, &value)?;
            }
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let message = e.inner().to_string();
                unknown_key_error(&key, &message).unwrap_or_else(|| invalid(&key, message))
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &str, d: Dur| {
            if d.0 > 0 {
                Ok(())
            } else {
                Err(invalid(key, "must be greater than zero"))
            }
        };
        positive("scoring.half_life", self.scoring.half_life)?;
        positive("scoring.lookback", self.scoring.lookback)?;
        positive("kafka.batch_max_wait", self.kafka.batch_max_wait)?;
        let non_negative = |key: &str, x: f64| {
            if x.is_finite() && x >= 0.0 {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("must be a finite number >= 0, got {x}"),
                ))
            }
        };
        non_negative(
            "scoring.weights.product_view",
            self.scoring.weights.product_view,
        )?;
        non_negative(
            "scoring.weights.add_to_cart",
            self.scoring.weights.add_to_cart,
        )?;
        non_negative(
            "triggers.viewed_not_bought.min_score",
            self.triggers.viewed_not_bought.min_score,
        )?;
        let at_least_one = |key: &str, n: usize| {
            if n >= 1 {
                Ok(())
            } else {
                Err(invalid(key, "must be at least 1"))
            }
        };
        at_least_one("input.max_message_bytes", self.input.max_message_bytes)?;
        at_least_one("kafka.batch_max_messages", self.kafka.batch_max_messages)?;
        at_least_one(
            "kafka.producer_max_in_flight",
            self.kafka.producer_max_in_flight,
        )?;
        if self.topics.inputs.is_empty() {
            return Err(invalid("topics.inputs", "must name at least one topic"));
        }
        let names = self.topics.inputs.iter().map(|t| ("topics.inputs", t));
        let names = names.chain([
            ("topics.triggers", &self.topics.triggers),
            ("topics.dead_letter", &self.topics.dead_letter),
            ("kafka.brokers", &self.kafka.brokers),
            ("kafka.group_id", &self.kafka.group_id),
        ]);
        for (key, name) in names {
            if name.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        self.http.listen.parse::<SocketAddr>().map_err(|e| {
            invalid(
                "http.listen",
                format!("{:?} is not a socket address: {e}", self.http.listen),
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

    /// The settings that make stored state belong to one deployment: input
    /// offsets are stored per topic for one consumer group, so a state
    /// directory must not be reused under other names.
    pub fn fingerprint(&self) -> String {
        format!(
            "group={};inputs={}",
            self.kafka.group_id,
            self.topics.inputs.join(",")
        )
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

/// Sets the key a `PRETEXT__A__B__C` variable names. Under `kafka.client`
/// the rest of the name is one librdkafka key, its parts joined with dots.
fn apply_env(
    table: &mut toml::Table,
    var: &str,
    rest: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let mut path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if path.len() > 2 && path[0] == "kafka" && path[1] == "client" {
        let key = path.split_off(2).join(".");
        path.push(key);
    }
    let key = path.join(".");
    if path.iter().any(|p| p.is_empty()) {
        return Err(invalid(
            &key,
            format!("environment variable {var} does not name a key"),
        ));
    }
    let mut node = table;
    for part in &path[..path.len() - 1] {
        let entry = node
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(invalid(
                    &key,
                    format!("environment variable {var}: `{part}` is not a section"),
                ))
            }
        };
    }
    node.insert(path[path.len() - 1].clone(), env_value(value));
    Ok(())
}

/// A variable's value as TOML when it is one (numbers, booleans, arrays),
/// else as a plain string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
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

    fn key_of(r: Result<Config, ConfigError>) -> String {
        r.unwrap_err().key().unwrap_or("<none>").to_string()
    }

    #[test]
    fn default_toml_documents_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        assert_eq!(
            Config::load(Some(&path), env(&[])).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn a_partial_file_keeps_the_defaults() {
        let c = load_str("[scoring]\nhalf_life = \"24h\"\n", &[]).unwrap();
        assert_eq!(c.scoring.half_life, Dur(86_400_000));
        assert_eq!(c.scoring.lookback, Config::default().scoring.lookback);
        assert_eq!(c.kafka, Config::default().kafka);
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
            "1w",
            "1 h",
            "99999999999999999d",
        ] {
            assert!(Dur::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_overrides_set_any_key() {
        let c = Config::load(
            None,
            env(&[
                ("PRETEXT__KAFKA__BROKERS", "b1:9092,b2:9092"),
                ("PRETEXT__SCORING__WEIGHTS__ADD_TO_CART", "2.5"),
                ("PRETEXT__TRIGGERS__VIEWED_NOT_BOUGHT__DELAY", "30m"),
                ("PRETEXT__TOPICS__INPUTS", "[\"a\", \"b\"]"),
                ("PRETEXT__KAFKA__CLIENT__SASL__MECHANISM", "PLAIN"),
                ("PRETEXT__INPUT__MAX_MESSAGE_BYTES", "2048"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "b1:9092,b2:9092");
        assert_eq!(c.scoring.weights.add_to_cart, 2.5);
        assert_eq!(c.triggers.viewed_not_bought.delay, Dur(1_800_000));
        assert_eq!(c.topics.inputs, vec!["a", "b"]);
        assert_eq!(
            c.kafka.client.get("sasl.mechanism").map(String::as_str),
            Some("PLAIN")
        );
        assert_eq!(c.input.max_message_bytes, 2048);
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let c = load_str(
            "[kafka]\ngroup_id = \"file\"\n",
            &[("PRETEXT__KAFKA__GROUP_ID", "env")],
        )
        .unwrap();
        assert_eq!(c.kafka.group_id, "env");
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            key_of(load_str("[scoring]\nhalf_lief = \"1h\"\n", &[])),
            "scoring.half_lief"
        );
        assert_eq!(key_of(load_str("surprise = 1\n", &[])), "surprise");
        assert_eq!(
            key_of(load_str("[scoring]\nhalf_life = \"3x\"\n", &[])),
            "scoring.half_life"
        );
        assert_eq!(
            key_of(load_str("[scoring.weights]\nproduct_view = \"1\"\n", &[])),
            "scoring.weights.product_view"
        );
        assert_eq!(
            key_of(load_str("[scoring]\nhalf_life = \"0s\"\n", &[])),
            "scoring.half_life"
        );
        assert_eq!(
            key_of(load_str("[http]\nlisten = \"nowhere\"\n", &[])),
            "http.listen"
        );
        assert_eq!(
            key_of(load_str("[log]\nformat = \"xml\"\n", &[])),
            "log.format"
        );
        assert_eq!(
            key_of(load_str("[topics]\ninputs = []\n", &[])),
            "topics.inputs"
        );
        assert_eq!(
            key_of(load_str(
                "[triggers.viewed_not_bought]\nmin_score = -1.0\n",
                &[]
            )),
            "triggers.viewed_not_bought.min_score"
        );
        assert_eq!(
            key_of(Config::load(
                None,
                env(&[("PRETEXT__SCORING__HALF_LIFE", "3x")])
            )),
            "scoring.half_life"
        );
        assert_eq!(
            key_of(Config::load(None, env(&[("PRETEXT__SCORING__NOPE", "1")]))),
            "scoring.nope"
        );
        let e = load_str("[scoring]\nhalf_lief = \"1h\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`scoring.half_lief`"), "{e}");
    }

    #[test]
    fn unreadable_and_malformed_files_name_the_path() {
        let e = Config::load(Some(Path::new("/nonexistent/p.toml")), env(&[])).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/p.toml"));
        assert!(matches!(
            load_str("[scoring\n", &[]),
            Err(ConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn secrets_are_masked_in_debug_output() {
        let c = Config::load(
            None,
            env(&[
                ("PRETEXT__KAFKA__CLIENT__SASL__PASSWORD", "hunter2"),
                ("PRETEXT__KAFKA__CLIENT__SSL__KEY__PASSWORD", "s3cret"),
                ("PRETEXT__KAFKA__CLIENT__SASL__USERNAME", "svc"),
            ]),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("svc"));
        assert_eq!(c.kafka.client["sasl.password"], "hunter2");
    }

    #[test]
    fn the_fingerprint_follows_topics_and_group() {
        let a = Config::default();
        let mut b = Config::default();
        b.triggers.viewed_not_bought.delay = Dur(1);
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.topics.inputs.push("more".into());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
