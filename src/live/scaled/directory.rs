//! Which instance holds which stage partition, for forwarding queries:
//! the group coordinator's description of the group (DescribeGroups), in
//! which each member's assignment is its own and its `client.id` carries
//! the HTTP address it advertises (`pretext@host:port`, set by `group`).
//! Kafka is the only source of the truth: no registry of pretext's own.
//! A thread refreshes it every few seconds; during a rebalance it may be a
//! step behind, and a query forwarded to a former owner answers 503.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::groups::GroupList;
use tracing::debug;

use crate::config::Config;
use crate::http::placement::Placement;

use super::super::consumer_config;
use super::super::topology::{Stage, Topology};
use super::super::LiveError;

/// How often the group is described.
const REFRESH_EVERY: Duration = Duration::from_secs(2);
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The prefix of the `client.id` that advertises an HTTP address.
pub const CLIENT_ID_PREFIX: &str = "pretext@";

/// The address other instances reach this one's HTTP server at, if any:
/// `scale.advertised_http`, else `http.listen` unless it listens on every
/// interface.
pub fn advertised(config: &Config) -> Option<String> {
    let advertised = config.scale.advertised_http.trim();
    if !advertised.is_empty() {
        return Some(advertised.to_string());
    }
    let listen = config.http.listen.trim();
    let host = listen.rsplit_once(':').map_or("", |(h, _)| h);
    let anywhere = matches!(host, "" | "0.0.0.0" | "[::]" | "::");
    (!anywhere).then(|| listen.to_string())
}

/// The refreshing thread; stops when dropped.
pub struct Directory {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Directory {
    pub fn start(config: &Config, placement: Arc<Placement>) -> Result<Directory, LiveError> {
        let mut cc = consumer_config(config, &[]);
        // It only describes the group: no statistics to log.
        cc.set("statistics.interval.ms", "0");
        let client: BaseConsumer = cc.create().map_err(|source| LiveError::Kafka {
            what: "create the client that describes the group",
            source,
        })?;
        let group = config.kafka.group_id.clone();
        let topology = Topology::from_config(config);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pretext-directory".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    match client.fetch_group_list(Some(&group), DESCRIBE_TIMEOUT) {
                        Ok(list) => placement.set_owners(owners(&list, &topology), members(&list)),
                        Err(e) => debug!(error = %e, "cannot describe the group"),
                    }
                    let mut slept = Duration::ZERO;
                    while slept < REFRESH_EVERY && !stopped.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(100));
                        slept += Duration::from_millis(100);
                    }
                }
            })
            .map_err(|e| LiveError::Worker(e.to_string()))?;
        Ok(Directory {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The addresses the group's members advertise.
fn members(list: &GroupList) -> Vec<String> {
    list.groups()
        .iter()
        .flat_map(|g| g.members())
        .filter_map(|m| m.client_id().strip_prefix(CLIENT_ID_PREFIX))
        .map(String::from)
        .collect()
}

/// The stage partitions each advertising member holds.
fn owners(list: &GroupList, topology: &Topology) -> BTreeMap<(Stage, i32), String> {
    let mut owners = BTreeMap::new();
    for member in list.groups().iter().flat_map(|g| g.members()) {
        let Some(addr) = member.client_id().strip_prefix(CLIENT_ID_PREFIX) else {
            continue;
        };
        let assigned = member.assignment().and_then(assigned_partitions);
        for (topic, partitions) in assigned.unwrap_or_default() {
            let Some(stage) = Stage::ALL
                .into_iter()
                .find(|&s| topology.repartition_topic(s) == topic)
            else {
                continue;
            };
            for p in partitions {
                owners.insert((stage, p), addr.to_string());
            }
        }
    }
    owners
}

/// The topic partitions of a consumer protocol assignment (Kafka's
/// `ConsumerProtocolAssignment`, any version: they all begin with the
/// version, then the partitions by topic), big-endian.
fn assigned_partitions(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut r = Bytes(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let topic = String::from_utf8(r.take(len)?.to_vec()).ok()?;
        let count = r.i32()?;
        let partitions = (0..count.max(0))
            .map(|_| r.i32())
            .collect::<Option<Vec<_>>>()?;
        out.push((topic, partitions));
    }
    Some(out)
}

struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_reads_back_and_a_cut_one_does_not() {
        let mut bytes = vec![0, 1, 0, 0, 0, 1];
        bytes.extend([0, 5]);
        bytes.extend(b"g.by-");
        bytes.extend([0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 5]);
        bytes.extend([0xff, 0xff, 0xff, 0xff]); // no user data
        assert_eq!(
            assigned_partitions(&bytes),
            Some(vec![("g.by-".to_string(), vec![3, 5])])
        );
        assert_eq!(assigned_partitions(&bytes[..9]), None);
    }

    #[test]
    fn an_address_is_advertised_unless_it_is_every_interface() {
        let mut c = Config::default();
        c.http.listen = "10.1.2.3:9464".into();
        assert_eq!(advertised(&c).as_deref(), Some("10.1.2.3:9464"));
        c.http.listen = "0.0.0.0:9464".into();
        assert_eq!(advertised(&c), None);
        c.scale.advertised_http = "pretext-1.pretext:9464".into();
        assert_eq!(advertised(&c).as_deref(), Some("pretext-1.pretext:9464"));
    }
}
