//! Marketing pressure (contract section 8): who is in the holdout group, and
//! the frequency cap on the triggers a customer gets.

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::event::Millis;
use crate::trigger::Group;

/// Holdout membership: a pure function of the salt and the crm_id, so every
/// instance, every restart and every replay draws the same group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdout {
    salt: String,
    /// round(100 · percent): customers whose hash mod 10000 is below it.
    hundredths: u32,
}

impl Holdout {
    pub fn new(salt: &str, hundredths: u32) -> Holdout {
        Holdout {
            salt: salt.to_string(),
            hundredths,
        }
    }

    pub fn from_config(config: &Config) -> Holdout {
        Holdout::new(&config.holdout.salt, config.holdout.hundredths())
    }

    /// The first 8 bytes, big-endian, of SHA-256("<salt>:<crm_id>").
    pub fn hash(&self, crm_id: &str) -> u64 {
        let mut h = Sha256::new();
        h.update(self.salt.as_bytes());
        h.update(b":");
        h.update(crm_id.as_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    pub fn group_of(&self, crm_id: &str) -> Group {
        // No hashing at all without a holdout: the default costs nothing.
        if self.hundredths == 0 || self.hash(crm_id) % 10_000 >= u64::from(self.hundredths) {
            Group::Treated
        } else {
            Group::Holdout
        }
    }
}

/// The frequency cap: at most `max` fired triggers of a customer whose
/// `fired_at` lies less than `window` away from a new one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// 0: no cap.
    pub max: u32,
    pub window: Millis,
}

impl Cap {
    pub fn is_on(&self) -> bool {
        self.max > 0
    }

    /// Whether a trigger at `t` is capped by the customer's sorted `fired`
    /// times (both types, both groups).
    pub fn reached(&self, fired: &[Millis], t: Millis) -> bool {
        if !self.is_on() {
            return false;
        }
        // |t − f| < window  ⇔  t − window < f < t + window
        let lo = fired.partition_point(|&f| f <= t.saturating_sub(self.window));
        let hi = fired.partition_point(|&f| f < t.saturating_add(self.window));
        hi.saturating_sub(lo) >= self.max as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_example_hashes_pretext_c42() {
        // SHA-256("pretext:C42"), first 8 bytes, computed independently
        // (`printf 'pretext:C42' | sha256sum`).
        let h = Holdout::new("pretext", 1000);
        assert_eq!(h.hash("C42"), 0x89b4_4535_4783_2541_u64);
        // Known values (python3 hashlib, same rule): hash mod 10000.
        for (crm, m) in [
            ("C1", 6369),
            ("C2", 7005),
            ("C3", 9703),
            ("C42", 5633),
            ("C100", 994),
        ] {
            assert_eq!(h.hash(crm) % 10_000, m, "{crm}");
        }
        // At 10% (threshold 1000) only C100 is held out.
        assert_eq!(h.group_of("C100"), Group::Holdout);
        assert_eq!(h.group_of("C42"), Group::Treated);
        assert_eq!(
            Holdout::new("pretext", 5634).group_of("C42"),
            Group::Holdout
        );
    }

    #[test]
    fn membership_follows_the_hash_mod_10000() {
        for crm in ["C1", "C2", "C42", "C1000", "ü-crm"] {
            let h = Holdout::new("pretext", 0).hash(crm) % 10_000;
            // Just below and at the threshold decide the two groups.
            let below = Holdout::new("pretext", h as u32 + 1);
            let at = Holdout::new("pretext", h as u32);
            assert_eq!(below.group_of(crm), Group::Holdout, "{crm}");
            assert_eq!(at.group_of(crm), Group::Treated, "{crm}");
        }
        assert_eq!(Holdout::new("pretext", 0).group_of("C42"), Group::Treated);
        assert_eq!(
            Holdout::new("pretext", 10_000).group_of("C42"),
            Group::Holdout
        );
    }

    #[test]
    fn the_salt_draws_another_group() {
        let a = Holdout::new("a", 5000);
        let b = Holdout::new("b", 5000);
        let differ = (0..200)
            .filter(|i| a.group_of(&format!("C{i}")) != b.group_of(&format!("C{i}")))
            .count();
        assert!(differ > 50, "{differ} of 200 differ");
    }

    #[test]
    fn a_tenth_of_many_customers_land_in_a_10_percent_holdout() {
        let h = Holdout::new("pretext", 1000);
        let n = (0..20_000)
            .filter(|i| h.group_of(&format!("C{i}")) == Group::Holdout)
            .count();
        assert!((1800..2200).contains(&n), "{n}");
    }

    #[test]
    fn the_cap_counts_fired_times_strictly_within_the_window_both_ways() {
        let cap = Cap { max: 2, window: 10 };
        assert!(!cap.reached(&[100], 105));
        assert!(cap.reached(&[100, 104], 105));
        assert!(cap.reached(&[100, 109], 100)); // a later one counts too
        assert!(!cap.reached(&[90, 110], 100)); // exactly window away: not within
        assert!(cap.reached(&[91, 109], 100));
        assert!(!Cap { max: 0, window: 10 }.reached(&[100, 100, 100], 100));
    }
}
