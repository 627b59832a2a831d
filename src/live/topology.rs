//! The scale-out topology (docs/scale-out.md): which stage owns which
//! state, the internal topics named after the consumer group, the
//! partitioner they are keyed with, and the router from input events to
//! the stages.
//!
//! ```text
//!  inputs ──► router ──► <group>.by-cookie   (key cookie_id) ──► identity stage ─┐ resolved
//!                 └────► <group>.by-customer (key crm_id)    ◄───────────────────┘
//!                                  └──► customer stage ──► triggers
//!  promotions ──► every partition of <group>.by-customer (broadcast)
//! ```
//!
//! Everything here is pure: no broker, no state. `internal_topics` creates
//! the topics; live mode does not route through them yet.

use std::ops::Range;

use crate::config::Config;
pub use crate::engine::routing::{murmur2, partition_for, route, Route, Stage};
use crate::event::Event;
use crate::state::Cf;

/// What an internal topic is for, which decides its cleanup policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// Work for a stage, keyed by its id. `delete`: compaction would keep
    /// only a cookie's or a customer's latest event and lose the others.
    Repartition(Stage),
    /// A store's writes of one stage, the latest value per key is the
    /// state. `compact`: `delete` would lose state older than retention.
    Changelog(Stage, Cf),
}

impl TopicKind {
    /// The `cleanup.policy` the topic must have.
    pub fn cleanup_policy(self) -> &'static str {
        match self {
            TopicKind::Repartition(_) => "delete",
            TopicKind::Changelog(..) => "compact",
        }
    }
}

/// An internal topic: its name, its kind and its partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalTopic {
    pub name: String,
    pub kind: TopicKind,
    pub partitions: i32,
}

/// The records an event becomes: one topic, a key, and the partitions
/// (one for a keyed route, all for a broadcast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub partitions: Range<i32>,
}

/// The internal topics of one deployment (one consumer group) and the
/// partitioner that keys them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    group: String,
    partitions: i32,
    by_cookie: String,
    by_customer: String,
}

impl Topology {
    /// The topology of a group with `partitions` partitions (at least 1).
    pub fn new(group_id: &str, partitions: u32) -> Topology {
        let topic = |stage: Stage| format!("{group_id}.{}", stage.repartition_suffix());
        Topology {
            group: group_id.to_string(),
            // Config validation bounds it far below i32::MAX.
            partitions: partitions.clamp(1, i32::MAX as u32) as i32,
            by_cookie: topic(Stage::Identity),
            by_customer: topic(Stage::Customer),
        }
    }

    pub fn from_config(config: &Config) -> Topology {
        Topology::new(&config.kafka.group_id, config.scale.partitions)
    }

    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// `<group>.by-cookie` or `<group>.by-customer`.
    pub fn repartition_topic(&self, stage: Stage) -> &str {
        match stage {
            Stage::Identity => &self.by_cookie,
            Stage::Customer => &self.by_customer,
        }
    }

    /// `<group>.<stage>-<store>-changelog`; the store's name with `-` for
    /// `_`, since Kafka warns of topics that mix `.` and `_` (their metric
    /// names collide).
    pub fn changelog_topic(&self, stage: Stage, store: Cf) -> String {
        format!(
            "{}.{}-{}-changelog",
            self.group,
            stage.name(),
            store.name().replace('_', "-")
        )
    }

    /// Every internal topic: the two repartition topics, then each stage's
    /// changelogs; all with the same partition count, since partition N of
    /// a stage's input owns the state of partition N of its changelogs.
    pub fn internal_topics(&self) -> Vec<InternalTopic> {
        let repartition = Stage::ALL.into_iter().map(|stage| InternalTopic {
            name: self.repartition_topic(stage).to_string(),
            kind: TopicKind::Repartition(stage),
            partitions: self.partitions,
        });
        let changelogs = Stage::ALL.into_iter().flat_map(|stage| {
            stage.stores().iter().map(move |&store| InternalTopic {
                name: self.changelog_topic(stage, store),
                kind: TopicKind::Changelog(stage, store),
                partitions: self.partitions,
            })
        });
        repartition.chain(changelogs).collect()
    }

    /// The partition of `key` in an internal topic.
    pub fn partition_of(&self, key: &str) -> i32 {
        partition_for(key.as_bytes(), self.partitions)
    }

    /// Where the router writes `event`: its stage's topic, the key, and
    /// the partitions (the key's, or all of them for a broadcast).
    pub fn destinations<'a>(&'a self, event: &'a Event) -> Routed<'a> {
        match route(&event.body) {
            Route::Keyed { stage, key } => {
                let p = self.partition_of(key);
                Routed {
                    topic: self.repartition_topic(stage),
                    key,
                    partitions: p..p + 1,
                }
            }
            Route::Broadcast { key } => Routed {
                topic: self.repartition_topic(Stage::Customer),
                key,
                partitions: 0..self.partitions,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::routing::tests::{purchase, view};
    use crate::event::{Body, Promotion};

    fn event(body: Body) -> Event {
        Event {
            event_id: "e1".into(),
            ts: 0,
            body,
        }
    }

    #[test]
    fn a_promotion_goes_to_every_customer_partition() {
        let t = Topology::new("shop", 6);
        let promo = event(Body::Promotion(Promotion {
            product_id: "P9".into(),
            discount_pct: None,
            promo_price: None,
            valid_until: None,
        }));
        assert_eq!(
            t.destinations(&promo),
            Routed {
                topic: "shop.by-customer",
                key: "P9",
                partitions: 0..6,
            }
        );
    }

    #[test]
    fn a_keyed_event_goes_to_the_partition_of_its_key() {
        let t = Topology::new("shop", 6);
        let e = event(view("ck_42", Some("C1")));
        let p = partition_for(b"ck_42", 6);
        assert_eq!(
            t.destinations(&e),
            Routed {
                topic: "shop.by-cookie",
                key: "ck_42",
                partitions: p..p + 1,
            }
        );
        let e = event(purchase(None, Some("C7")));
        let d = t.destinations(&e);
        assert_eq!((d.topic, d.key), ("shop.by-customer", "C7"));
        assert_eq!(d.partitions.len(), 1);
        assert_eq!(d.partitions.start, t.partition_of("C7"));
    }

    #[test]
    fn internal_topics_are_named_after_the_group() {
        let t = Topology::new("crm", 4);
        let names: Vec<String> = t.internal_topics().into_iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "crm.by-cookie",
                "crm.by-customer",
                "crm.identity-meta-changelog",
                "crm.identity-dedup-changelog",
                "crm.identity-links-changelog",
                "crm.identity-anon-changelog",
                "crm.customer-meta-changelog",
                "crm.customer-dedup-changelog",
                "crm.customer-customers-changelog",
                "crm.customer-customer-products-changelog",
                "crm.customer-interest-changelog",
                "crm.customer-timers-changelog",
                "crm.customer-products-changelog",
                "crm.customer-tombstones-changelog",
            ]
        );
        for topic in t.internal_topics() {
            assert_eq!(topic.partitions, 4, "{}", topic.name);
            let want = if topic.name.ends_with("-changelog") {
                "compact"
            } else {
                "delete"
            };
            assert_eq!(topic.kind.cleanup_policy(), want, "{}", topic.name);
        }
    }
}
