//! The semantic settings the engine decides with, in milliseconds.

use crate::config::Config;
use crate::event::Millis;
use crate::time::MAX_MILLIS;

use super::pressure::{Cap, Holdout};

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub allowed_lateness: Millis,
    pub dedup_window: Millis,
    pub anonymous_buffer: usize,
    pub half_life: Millis,
    pub lookback: Millis,
    pub weight_view: f64,
    pub weight_cart: f64,
    pub delay: Millis,
    pub min_score: f64,
    pub vnb_cooldown: Millis,
    pub promo_cooldown: Millis,
    pub holdout: Holdout,
    pub cap: Cap,
    pub attribution_window: Millis,
    /// `state.retention`: how far behind the highest event time an event
    /// still sees exact history; `Millis::MAX` for ever.
    pub late_bound: Millis,
}

impl Params {
    pub fn from_config(c: &Config) -> Params {
        Params {
            allowed_lateness: c.watermark.allowed_lateness.millis(),
            dedup_window: c.input.dedup_window.millis(),
            anonymous_buffer: c.identity.anonymous_buffer,
            half_life: c.scoring.half_life.millis(),
            lookback: c.scoring.lookback.millis(),
            weight_view: c.scoring.weights.product_view,
            weight_cart: c.scoring.weights.add_to_cart,
            delay: c.triggers.viewed_not_bought.delay.millis(),
            min_score: c.triggers.viewed_not_bought.min_score,
            vnb_cooldown: c.triggers.viewed_not_bought.cooldown.millis(),
            promo_cooldown: c.triggers.promo_on_viewed_item.cooldown.millis(),
            holdout: Holdout::from_config(c),
            cap: Cap {
                max: c.pressure.max_triggers,
                window: c.pressure.window.millis(),
            },
            attribution_window: c.measurement.attribution_window.millis(),
            late_bound: c.state.retention.millis(),
        }
    }

    /// The check time of a session whose latest view is at `t`: `t + delay`,
    /// but never after the last instant an output time can name
    /// (`9999-12-31T23:59:59.999Z`: RFC 3339 has four-digit years), nor
    /// past `Millis::MAX` for an absurd `delay`.
    pub fn check_time(&self, t: Millis) -> Millis {
        t.saturating_add(self.delay).min(MAX_MILLIS)
    }

    /// How far behind the highest event time views and purchases are kept.
    /// Any event at most `late_bound` behind it still sees every view its
    /// check's lookback window covers (a stitched event counts at its own
    /// time); by default the bound is infinite and nothing is pruned.
    pub fn retention(&self) -> Millis {
        self.lookback
            .saturating_add(self.delay)
            .saturating_add(self.late_bound)
    }

    /// How far behind the highest event time firing times are kept.
    pub fn cooldown_retention(&self) -> Millis {
        self.retention()
            .saturating_add(self.vnb_cooldown.max(self.promo_cooldown))
    }

    /// How far behind the highest event time the frequency cap keeps fired
    /// times: a trigger decided for an event within the bound fires no
    /// earlier than the retention horizon.
    pub fn cap_retention(&self) -> Millis {
        self.retention().saturating_add(self.cap.window)
    }
}
