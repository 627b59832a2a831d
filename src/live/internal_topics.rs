//! The internal topics of scale-out (`topology::Topology::internal_topics`),
//! created with the partition count and cleanup policy the topology needs,
//! or checked when they exist.
//!
//! An existing topic with other settings is a configuration error, never
//! altered: fewer partitions would leave keys without an owner, more would
//! move keys away from the state that holds them, and a changelog with
//! `delete` loses state older than its retention. Which fix is right (a new
//! group, or deleting the topics and the instances' state) is the
//! operator's call.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{info, warn};

use crate::config::Config;

use super::producer_config;
use super::topology::{InternalTopic, Topology};

/// One metadata request's timeout, repeated until the overall deadline.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum InternalTopicError {
    #[error(
        "internal topic {topic:?} has {actual} partitions, expected {expected} \
         (scale.partitions): set scale.partitions = {actual}, or start over under another \
         kafka.group_id (or delete the group's internal topics and the instances' state); \
         pretext never changes a partition count, which would move keys away from their state"
    )]
    Partitions {
        topic: String,
        expected: i32,
        actual: i32,
    },
    #[error(
        "internal topic {topic:?} has cleanup.policy={actual:?}, expected {expected:?}: \
         alter the topic's cleanup.policy, or delete it so that pretext creates it"
    )]
    CleanupPolicy {
        topic: String,
        expected: &'static str,
        actual: String,
    },
    #[error("kafka: cannot {what}: {source}")]
    Kafka {
        what: &'static str,
        source: KafkaError,
    },
    #[error("cannot {what} internal topic {topic:?}: {error}")]
    Topic {
        what: &'static str,
        topic: String,
        error: String,
    },
    #[error("cannot start the admin client's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the brokers {brokers} did not {what} within {timeout:?}")]
    Timeout {
        brokers: String,
        what: &'static str,
        timeout: Duration,
    },
}

impl InternalTopicError {
    /// 2 for what the configuration (or the topics) must fix, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            InternalTopicError::Partitions { .. } | InternalTopicError::CleanupPolicy { .. } => 2,
            _ => 1,
        }
    }
}

/// What `ensure` found: the topics it created and those that were there
/// with the right settings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ensured {
    pub created: Vec<String>,
    pub existing: Vec<String>,
}

/// Creates the missing internal topics of `config`'s topology and checks
/// every one, giving up after `timeout`. With `scale.partitions = 1` there
/// are none, and the broker is not asked.
pub fn ensure(config: &Config, timeout: Duration) -> Result<Ensured, InternalTopicError> {
    if !config.scale.is_partitioned() {
        return Ok(Ensured::default());
    }
    let deadline = Instant::now() + timeout;
    let wanted = Topology::from_config(config).internal_topics();
    let admin = Admin::new(config, deadline)?;
    let before = admin.partition_counts(&[])?;
    let missing: Vec<&InternalTopic> = wanted
        .iter()
        .filter(|t| !before.contains_key(&t.name))
        .collect();
    let created = admin.create(&missing, config.topics.create_replication_factor)?;
    // A topic just created may take a moment to show in the metadata.
    let names: Vec<&str> = wanted.iter().map(|t| t.name.as_str()).collect();
    let counts = admin.partition_counts(&names)?;
    for topic in &wanted {
        let actual = counts[&topic.name];
        if actual != topic.partitions {
            return Err(InternalTopicError::Partitions {
                topic: topic.name.clone(),
                expected: topic.partitions,
                actual,
            });
        }
    }
    admin.check_policies(&wanted)?;
    let existing = names
        .iter()
        .filter(|n| !created.iter().any(|c| c == *n))
        .map(|n| n.to_string())
        .collect();
    Ok(Ensured { created, existing })
}

struct Admin {
    client: AdminClient<DefaultClientContext>,
    brokers: String,
    deadline: Instant,
    timeout: Duration,
    // The admin API is asynchronous; callers are on threads of their own.
    runtime: tokio::runtime::Runtime,
}

impl Admin {
    fn new(config: &Config, deadline: Instant) -> Result<Admin, InternalTopicError> {
        let client =
            producer_config(config, &[])
                .create()
                .map_err(|source| InternalTopicError::Kafka {
                    what: "create the admin client",
                    source,
                })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(InternalTopicError::Runtime)?;
        Ok(Admin {
            client,
            brokers: config.kafka.brokers.clone(),
            deadline,
            timeout: deadline.saturating_duration_since(Instant::now()),
            runtime,
        })
    }

    fn timed_out(&self, what: &'static str) -> InternalTopicError {
        InternalTopicError::Timeout {
            brokers: self.brokers.clone(),
            what,
            timeout: self.timeout,
        }
    }

    fn options(&self) -> AdminOptions {
        let left = self.deadline.saturating_duration_since(Instant::now());
        AdminOptions::new()
            .request_timeout(Some(left.max(Duration::from_secs(1))))
            .operation_timeout(Some(left.max(Duration::from_secs(1))))
    }

    /// The partition count of every topic of the cluster, once the
    /// metadata holds each of `required`. Asks for every topic, never for
    /// one by name: a request naming a topic may create it
    /// (`auto.create.topics.enable`), with the broker's defaults.
    fn partition_counts(
        &self,
        required: &[&str],
    ) -> Result<BTreeMap<String, i32>, InternalTopicError> {
        let mut logged = false;
        loop {
            match self.client.inner().fetch_metadata(None, METADATA_TIMEOUT) {
                Ok(m) => {
                    let counts: BTreeMap<String, i32> = m
                        .topics()
                        .iter()
                        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                        .collect();
                    if required.iter().all(|r| counts.contains_key(*r)) {
                        return Ok(counts);
                    }
                }
                Err(e) => {
                    if !logged {
                        warn!(error = %e, "the broker does not answer yet; internal topics not checked");
                        logged = true;
                    }
                }
            }
            if Instant::now() >= self.deadline {
                return Err(self.timed_out("list the internal topics"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates `missing`; returns the names created. One created meanwhile
    /// by another instance is not an error: the checks that follow decide.
    fn create(
        &self,
        missing: &[&InternalTopic],
        replication: i32,
    ) -> Result<Vec<String>, InternalTopicError> {
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(replication))
                    .set("cleanup.policy", t.kind.cleanup_policy())
            })
            .collect();
        let results = self
            .runtime
            .block_on(self.client.create_topics(&new, &self.options()))
            .map_err(|source| InternalTopicError::Kafka {
                what: "create the internal topics",
                source,
            })?;
        let mut created = Vec::new();
        for result in results {
            match result {
                Ok(name) => {
                    info!(topic = %name, "created internal topic");
                    created.push(name);
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(InternalTopicError::Topic {
                        what: "create",
                        topic,
                        error: code.to_string(),
                    })
                }
            }
        }
        Ok(created)
    }

    /// Every topic's `cleanup.policy` is exactly its kind's: `compact,delete`
    /// on a changelog would still delete state past retention.
    fn check_policies(&self, wanted: &[InternalTopic]) -> Result<(), InternalTopicError> {
        let specs: Vec<ResourceSpecifier<'_>> = wanted
            .iter()
            .map(|t| ResourceSpecifier::Topic(&t.name))
            .collect();
        let results = self
            .runtime
            .block_on(self.client.describe_configs(&specs, &self.options()))
            .map_err(|source| InternalTopicError::Kafka {
                what: "describe the internal topics",
                source,
            })?;
        for (topic, result) in wanted.iter().zip(results) {
            let resource = result.map_err(|code| InternalTopicError::Topic {
                what: "describe",
                topic: topic.name.clone(),
                error: code.to_string(),
            })?;
            let actual = resource
                .get("cleanup.policy")
                .and_then(|e| e.value.clone())
                .unwrap_or_default();
            let expected = topic.kind.cleanup_policy();
            let mut policies: Vec<&str> = actual.split(',').map(str::trim).collect();
            policies.sort_unstable();
            policies.dedup();
            if policies != [expected] {
                return Err(InternalTopicError::CleanupPolicy {
                    topic: topic.name.clone(),
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }
}
