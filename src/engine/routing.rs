//! Which stage of the engine an event goes to, and which partition of a
//! stage a key belongs to: the engine's own seam between its two stages
//! (the identity stage keyed by cookie, the customer stage keyed by CRM
//! id). Scaled out, the same seam is where the repartition topics cut
//! (`live::topology`); in one process, `partitioned` splits the state
//! along it.

use crate::event::Body;
use crate::state::Cf;

/// The two stages of the engine, each keyed by its own id, each a Kafka
/// sub-topology with its own repartition topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Keyed by cookie: links and the events of unlinked cookies. Turns
    /// navigation into events resolved to a CRM id.
    Identity,
    /// Keyed by CRM id: everything known about a customer, the checks and
    /// the promotion fan-out over the partition's customers.
    Customer,
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::Identity, Stage::Customer];

    /// The name in topic names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Identity => "identity",
            Stage::Customer => "customer",
        }
    }

    /// The suffix of the stage's repartition topic, after the group.
    pub fn repartition_suffix(self) -> &'static str {
        match self {
            Stage::Identity => "by-cookie",
            Stage::Customer => "by-customer",
        }
    }

    /// The state each partition of the stage holds, one changelog each.
    /// Meta (watermark, offsets) and dedup (event ids) belong to both: each
    /// stage has its own inputs to remember. The customer stage never reads
    /// identity state: erase's "forget these cookies" travels back through
    /// the cookie topic.
    pub fn stores(self) -> &'static [Cf] {
        match self {
            Stage::Identity => &[Cf::Meta, Cf::Dedup, Cf::Links, Cf::Anon],
            Stage::Customer => &[
                Cf::Meta,
                Cf::Dedup,
                Cf::Customers,
                Cf::CustomerProducts,
                Cf::Interest,
                Cf::Timers,
                Cf::Products,
                Cf::Tombstones,
            ],
        }
    }
}

/// Where the router sends one input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'e> {
    /// To one stage, keyed (so to one partition of its topic).
    Keyed { stage: Stage, key: &'e str },
    /// A promotion: to every partition of the customer stage, since every
    /// partition has viewers of the product to fan out over. Keyed by the
    /// product for readers of the topic.
    Broadcast { key: &'e str },
}

/// The route of an event: the identity stage for whatever carries a cookie
/// (the cookie's link decides the customer), the customer stage for what
/// names only a customer, every customer partition for a promotion.
pub fn route(body: &Body) -> Route<'_> {
    fn keyed(stage: Stage, key: &str) -> Route<'_> {
        Route::Keyed { stage, key }
    }
    match body {
        Body::View(v) => keyed(Stage::Identity, &v.cookie_id),
        Body::Identify(i) => keyed(Stage::Identity, &i.cookie_id),
        Body::Purchase(p) => match (&p.cookie_id, &p.crm_id) {
            (Some(cookie), _) => keyed(Stage::Identity, cookie),
            (None, Some(crm)) => keyed(Stage::Customer, crm),
            // The decoder rejects a purchase with neither; were one to get
            // here, its order id keeps it somewhere deterministic.
            (None, None) => keyed(Stage::Customer, &p.order_id),
        },
        Body::Consent(c) => keyed(Stage::Customer, &c.crm_id),
        Body::Erase(e) => keyed(Stage::Customer, &e.crm_id),
        Body::Promotion(p) => Route::Broadcast { key: &p.product_id },
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`): the
/// hash of the Java client's default partitioner and of librdkafka's
/// `murmur2` partitioners, as a Java `int`. Producers in any language that
/// key a topic with it agree with pretext on the partition of a key.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        // Java's switch falls through: the third byte, the second, the first.
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a key among `partitions`, as the Java client's default
/// partitioner picks it: `toPositive(murmur2(key)) % partitions`, where
/// `toPositive` masks the sign bit (not `abs`, which differs at
/// `i32::MIN`).
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::ViewKind;
    use crate::event::{Channel, Consent, Erase, Identify, Item, Purchase, View};

    /// The vectors of Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_gives_the_java_clients_values() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn the_partition_masks_the_sign_bit_and_stays_in_range() {
        // murmur2("21") is negative: masked, not negated.
        let masked = -973_932_308_i32 & 0x7fff_ffff;
        assert_eq!(partition_for(b"21", 7), masked % 7);
        assert_ne!(masked, 973_932_308);
        for n in [1, 2, 3, 6, 12, 100] {
            for i in 0..500 {
                let key = format!("C{i}");
                let p = partition_for(key.as_bytes(), n);
                assert!((0..n).contains(&p), "{key} of {n}: {p}");
            }
        }
        assert_eq!(partition_for(b"anything", 1), 0);
    }

    #[test]
    fn keys_spread_over_every_partition() {
        let n = 6;
        let mut counts = vec![0; n as usize];
        for i in 0..6000 {
            counts[partition_for(format!("ck_{i}").as_bytes(), n) as usize] += 1;
        }
        // Uniform would be 1000 each.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    pub(crate) fn view(cookie: &str, crm: Option<&str>) -> Body {
        Body::View(View {
            kind: ViewKind::ProductView,
            cookie_id: cookie.into(),
            product_id: "P1".into(),
            category: None,
            price: None,
            crm_id: crm.map(String::from),
            quantity: None,
        })
    }

    pub(crate) fn purchase(cookie: Option<&str>, crm: Option<&str>) -> Body {
        Body::Purchase(Purchase {
            order_id: "O1".into(),
            channel: Channel::Web,
            items: vec![Item {
                product_id: "P1".into(),
                quantity: None,
                price: None,
            }],
            crm_id: crm.map(String::from),
            cookie_id: cookie.map(String::from),
            total: None,
        })
    }

    #[test]
    fn whatever_carries_a_cookie_goes_to_the_identity_stage_by_cookie() {
        let identity = |key| Route::Keyed {
            stage: Stage::Identity,
            key,
        };
        assert_eq!(route(&view("ck1", None)), identity("ck1"));
        // A view naming its customer still goes by cookie: it links them.
        assert_eq!(route(&view("ck1", Some("C1"))), identity("ck1"));
        let identify = Body::Identify(Identify {
            cookie_id: "ck2".into(),
            crm_id: "C2".into(),
            source: None,
        });
        assert_eq!(route(&identify), identity("ck2"));
        assert_eq!(route(&purchase(Some("ck3"), None)), identity("ck3"));
        assert_eq!(route(&purchase(Some("ck3"), Some("C3"))), identity("ck3"));
    }

    #[test]
    fn what_names_only_a_customer_goes_to_the_customer_stage_by_crm_id() {
        let customer = |key| Route::Keyed {
            stage: Stage::Customer,
            key,
        };
        assert_eq!(route(&purchase(None, Some("C3"))), customer("C3"));
        let consent = Body::Consent(Consent {
            crm_id: "C4".into(),
            email: Some(true),
            sms: None,
            ads: None,
        });
        assert_eq!(route(&consent), customer("C4"));
        let erase = Body::Erase(Erase {
            crm_id: "C5".into(),
        });
        assert_eq!(route(&erase), customer("C5"));
    }

    #[test]
    fn every_store_has_an_owner_and_only_meta_and_dedup_have_two() {
        for cf in Cf::ALL {
            let owners: Vec<Stage> = Stage::ALL
                .into_iter()
                .filter(|s| s.stores().contains(&cf))
                .collect();
            let want = if matches!(cf, Cf::Meta | Cf::Dedup) {
                2
            } else {
                1
            };
            assert_eq!(owners.len(), want, "{} is owned by {owners:?}", cf.name());
        }
        // The seam: the customer stage never holds cookie state.
        for cf in [Cf::Links, Cf::Anon] {
            assert!(!Stage::Customer.stores().contains(&cf));
        }
    }
}
