//! Counters the engine keeps as it decides; the live edge exports them.

use crate::event::EVENT_TYPES;
use crate::trigger::{Group, TriggerKind};

/// Why a trigger that was considered did not fire: a due
/// `viewed_not_bought` check (purchase, score, cooldown, cap), or a
/// promotion's viewer (cooldown, cap; a viewer who bought since is not
/// considered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    Purchased = 0,
    LowScore = 1,
    Cooldown = 2,
    FrequencyCap = 3,
}

impl Suppressed {
    pub const ALL: [Suppressed; 4] = [
        Suppressed::Purchased,
        Suppressed::LowScore,
        Suppressed::Cooldown,
        Suppressed::FrequencyCap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Suppressed::Purchased => "purchased",
            Suppressed::LowScore => "low_score",
            Suppressed::Cooldown => "cooldown",
            Suppressed::FrequencyCap => "frequency_cap",
        }
    }
}

/// Counts by trigger type and group.
pub type ByKindGroup = [[u64; Group::ALL.len()]; TriggerKind::ALL.len()];

/// Cumulative counts since the engine was opened, except `pending_checks`,
/// which is the number of checks pending in the state now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Applied events, indexed like `EVENT_TYPES`.
    pub events: [u64; EVENT_TYPES.len()],
    pub duplicates: u64,
    pub ignored_erased: u64,
    /// Fired triggers, by `TriggerKind::index` then `Group::index`.
    pub triggers: ByKindGroup,
    /// Conversion records, by `TriggerKind::index` then `Group::index`.
    pub conversions: ByKindGroup,
    /// Suppressed checks, indexed by `Suppressed as usize`.
    pub suppressed: [u64; Suppressed::ALL.len()],
    pub pending_checks: i64,
}

impl EngineStats {
    pub fn count_event(&mut self, type_name: &str) {
        if let Some(i) = EVENT_TYPES.iter().position(|t| *t == type_name) {
            self.events[i] += 1;
        }
    }

    pub fn applied(&self) -> u64 {
        self.events.iter().sum()
    }

    pub fn events_of(&self, type_name: &str) -> u64 {
        EVENT_TYPES
            .iter()
            .position(|t| *t == type_name)
            .map_or(0, |i| self.events[i])
    }

    /// Fired triggers of a type, both groups.
    pub fn triggers_of(&self, kind: TriggerKind) -> u64 {
        self.triggers[kind.index()].iter().sum()
    }

    pub fn triggers_in(&self, kind: TriggerKind, group: Group) -> u64 {
        self.triggers[kind.index()][group.index()]
    }

    pub fn conversions_in(&self, kind: TriggerKind, group: Group) -> u64 {
        self.conversions[kind.index()][group.index()]
    }

    pub fn suppressed_of(&self, reason: Suppressed) -> u64 {
        self.suppressed[reason as usize]
    }

    /// Adds what another engine decided (triggers, conversions,
    /// suppressions, pending checks), not the events it applied: those of
    /// a partitioned engine are counted once, where they were routed.
    pub fn add_decisions(&mut self, other: &EngineStats) {
        let add = |a: &mut ByKindGroup, b: &ByKindGroup| {
            for (ra, rb) in a.iter_mut().zip(b) {
                for (x, y) in ra.iter_mut().zip(rb) {
                    *x += y;
                }
            }
        };
        add(&mut self.triggers, &other.triggers);
        add(&mut self.conversions, &other.conversions);
        for (x, y) in self.suppressed.iter_mut().zip(&other.suppressed) {
            *x += y;
        }
        self.pending_checks += other.pending_checks;
    }
}
