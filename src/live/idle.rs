//! The idle advance of the watermark (contract v2, section 3): when no
//! input arrives for `idle_timeout`, W advances to
//! min(m + (now − a), now) − allowed_lateness, m the highest applied event
//! time and a the wall-clock time the last event was applied. Event time
//! then runs on from where the stream left it at the speed of the clock,
//! never ahead of the clock: a backlog of old events read after a quiet
//! spell is not made late by it, and a real-time stream still has its
//! checks fire in quiet hours. None before any event.
//!
//! The engine keeps m and the idle W it reached across restarts (both are
//! stored with the state); a is not stored: a restarted process counts
//! from when it opened the state, and from the stored W (as if the last
//! event had been stamped W + lateness), so event time resumes where it
//! stood, at the clock's speed, rather than jumping by the downtime or
//! waiting it out again.

use std::time::Duration;

use crate::config::Config;
use crate::event::Millis;

use super::pipeline::Clock;

/// While idle, how often the watermark follows the wall clock.
pub const ADVANCE_EVERY: Duration = Duration::from_secs(1);

/// The watermark the idle advance moves to, from m, a and now (ms).
pub fn idle_target(m: Millis, a: Millis, now: Millis, lateness: Millis) -> Millis {
    let since = now.saturating_sub(a).max(0);
    m.saturating_add(since).min(now).saturating_sub(lateness)
}

/// When input last arrived and an event was last applied.
pub struct Idle {
    timeout: Duration,
    lateness: Millis,
    /// Monotonic time of the last input (or of an unassigned spell).
    last_input: Duration,
    last_advance: Option<Duration>,
    /// m and a, once an event is applied (or the state had one).
    last_applied: Option<(Millis, Millis)>,
}

impl Idle {
    /// `max_ts` and `watermark`: the highest event time the state has
    /// applied and its watermark, if any.
    pub fn new(
        config: &Config,
        max_ts: Option<Millis>,
        watermark: Option<Millis>,
        clock: &dyn Clock,
    ) -> Idle {
        let lateness = config.watermark.allowed_lateness.millis();
        let resumed = watermark.map(|w| w.saturating_add(lateness));
        Idle {
            timeout: config.watermark.idle_timeout.std(),
            lateness,
            last_input: clock.mono(),
            last_advance: None,
            last_applied: max_ts.map(|m| (m.max(resumed.unwrap_or(m)), clock.wall_ms())),
        }
    }

    /// Input arrived (or none can: no partition is assigned).
    pub fn input_at(&mut self, mono: Duration) {
        self.last_input = mono;
    }

    /// A batch applied events; `m` is the highest applied event time now.
    pub fn applied(&mut self, m: Millis, wall: Millis) {
        self.last_applied = Some((m, wall));
    }

    /// The watermark to advance to now, if the idle advance is due.
    pub fn target(&mut self, mono: Duration, wall: Millis) -> Option<Millis> {
        let (m, a) = self.last_applied?;
        if mono.saturating_sub(self.last_input) < self.timeout {
            return None;
        }
        if self
            .last_advance
            .is_some_and(|t| mono.saturating_sub(t) < ADVANCE_EVERY)
        {
            return None;
        }
        self.last_advance = Some(mono);
        Some(idle_target(m, a, wall, self.lateness))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Millis = 300_000;

    #[test]
    fn the_target_follows_the_clock_from_the_last_event() {
        let now = 1_800_000_000_000;
        // A real-time stream: m ≈ a, so W ≈ now − L.
        assert_eq!(idle_target(now - 20_000, now - 20_000, now, L), now - L);
        // A historical log read into an idle process: W runs on from m.
        let m = now - 86_400_000;
        assert_eq!(idle_target(m, now - 15_000, now, L), m + 15_000 - L);
        // Events stamped in the future never pull W past the clock.
        assert_eq!(idle_target(now + 60_000, now - 1_000, now, L), now - L);
        // A wall clock that stepped back counts as no time elapsed.
        assert_eq!(idle_target(m, now + 5_000, now, L), m - L);
    }
}
