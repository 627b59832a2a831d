//! The output topics, checked before anything is consumed: a missing one
//! would otherwise be found a batch late, as thousands of failed deliveries.
//! With `topics.create = true` the missing ones are created instead.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use tracing::{info, warn};

use crate::config::Config;

use super::pipeline::Stop;
use super::producer_config;
use super::LiveError;

/// One metadata request's timeout; requests repeat until the broker
/// answers or the process stops.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits for the cluster's metadata, then checks (or creates) every output
/// topic. `Ok(false)`: stopped before the broker answered.
pub fn ensure_output_topics(config: &Config, stop: &Stop) -> Result<bool, LiveError> {
    let admin = admin_client(config)?;
    let Some(existing) = existing_topics(&admin, stop) else {
        return Ok(false);
    };
    let missing: Vec<(&str, &str)> = config
        .topics
        .outputs()
        .into_iter()
        .filter(|(_, name)| !existing.iter().any(|e| e == name))
        .collect();
    match missing.first() {
        None => Ok(true),
        Some(&(key, topic)) if !config.topics.create => Err(LiveError::MissingTopic {
            topic: topic.to_string(),
            key,
        }),
        Some(_) => {
            create(&admin, config, &missing)?;
            Ok(true)
        }
    }
}

fn admin_client(config: &Config) -> Result<AdminClient<DefaultClientContext>, LiveError> {
    producer_config(config, &[])
        .create()
        .map_err(|source| LiveError::Kafka {
            what: "create the admin client",
            source,
        })
}

/// The names of the topics the cluster has, once it answers; `None` if the
/// process stops first. Asks for every topic, never for one by name: a
/// request naming a topic may create it (`auto.create.topics.enable`).
fn existing_topics(admin: &AdminClient<DefaultClientContext>, stop: &Stop) -> Option<Vec<String>> {
    let mut logged = false;
    while !stop.is_requested() {
        match admin.inner().fetch_metadata(None, METADATA_TIMEOUT) {
            Ok(m) => {
                return Some(
                    m.topics()
                        .iter()
                        .filter(|t| t.error().is_none())
                        .map(|t| t.name().to_string())
                        .collect(),
                )
            }
            Err(e) => {
                if !logged {
                    warn!(error = %e, "the broker does not answer yet; output topics not checked");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    None
}

fn create(
    admin: &AdminClient<DefaultClientContext>,
    config: &Config,
    missing: &[(&str, &str)],
) -> Result<(), LiveError> {
    let t = &config.topics;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(_, name)| {
            NewTopic::new(
                name,
                t.create_partitions,
                TopicReplication::Fixed(t.create_replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    // The admin API is asynchronous; this thread is not the runtime's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LiveError::Worker(e.to_string()))?;
    let results = runtime
        .block_on(admin.create_topics(&new, &opts))
        .map_err(|source| LiveError::Kafka {
            what: "create the output topics",
            source,
        })?;
    for result in results {
        match result {
            Ok(name) => info!(topic = %name, "created output topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(LiveError::CreateTopic {
                    topic,
                    error: code.to_string(),
                })
            }
        }
    }
    Ok(())
}
