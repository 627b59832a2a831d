//! Purging the repartition topics: once the group has committed past a
//! record of `<group>.by-cookie` or `<group>.by-customer`, no instance
//! will read it again (a partition that moves starts at the committed
//! offset, its state restored from the changelogs), so it is deleted
//! (DeleteRecords), as Kafka Streams does, rather than kept for the
//! broker's retention. Every `PURGE_EVERY`, the partitions this instance
//! consumed, up to what it committed.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use crate::config::Config;

use super::super::producer_config;
use super::super::LiveError;

const PURGE_EVERY: Duration = Duration::from_secs(30);
const PURGE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Purger {
    admin: AdminClient<DefaultClientContext>,
    // The admin API is asynchronous; the pipeline is a thread of its own.
    runtime: tokio::runtime::Runtime,
    /// What was deleted below, per partition.
    purged: BTreeMap<(String, i32), i64>,
    last: Option<Duration>,
}

impl Purger {
    pub fn new(config: &Config) -> Result<Purger, LiveError> {
        let mut cc = producer_config(config, &[]);
        cc.set("statistics.interval.ms", "0");
        let admin = cc.create().map_err(|source| LiveError::Kafka {
            what: "create the admin client that purges the repartition topics",
            source,
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LiveError::Worker(e.to_string()))?;
        Ok(Purger {
            admin,
            runtime,
            purged: BTreeMap::new(),
            last: None,
        })
    }

    /// Deletes what lies below `committed` in the partitions of the
    /// `repartition` topics, if it is time to. A failure is logged: the
    /// records stay until the next round, or the broker's retention.
    pub fn purge(
        &mut self,
        committed: &BTreeMap<(String, i32), i64>,
        repartition: &[&str],
        now: Duration,
    ) {
        if self
            .last
            .is_some_and(|t| now.saturating_sub(t) < PURGE_EVERY)
        {
            return;
        }
        self.last = Some(now);
        let mut tpl = TopicPartitionList::new();
        let mut due = Vec::new();
        for ((topic, partition), &offset) in committed {
            let moved = self.purged.get(&(topic.clone(), *partition)) < Some(&offset);
            if moved && repartition.contains(&topic.as_str()) {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(offset));
                due.push(((topic.clone(), *partition), offset));
            }
        }
        if due.is_empty() {
            return;
        }
        self.last = Some(now);
        let opts = AdminOptions::new().request_timeout(Some(PURGE_TIMEOUT));
        let deleting = self.admin.delete_records(&tpl, &opts);
        match self
            .runtime
            .block_on(async { tokio::time::timeout(PURGE_TIMEOUT, deleting).await })
        {
            Ok(Ok(_)) => {
                debug!(partitions = due.len(), "purged the repartition topics");
                self.purged.extend(due);
            }
            Ok(Err(e)) => warn!(error = %e, "cannot purge the repartition topics"),
            Err(_) => warn!("purging the repartition topics timed out"),
        }
    }
}
