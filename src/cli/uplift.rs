//! `pretext uplift`: the conversion rate of treated and holdout triggers and
//! the uplift between them, per trigger type and in total, read from the
//! JSON Lines a replay writes (or dumps of the triggers, holdout and
//! conversions topics).
//!
//! The unit of analysis is the trigger: a trigger converted or it did not.
//! Each rate carries a Wilson score interval, the absolute uplift Newcombe's
//! hybrid score interval and the relative uplift the Katz log interval (see
//! `stats`); docs/experiments.md explains how to read them.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use crate::trigger::TriggerKind;

/// The flags of `pretext uplift`.
#[derive(Args, Debug)]
pub struct UpliftArgs {
    /// Treated triggers (JSON Lines, .gz too): a replay's --output, or a
    /// dump of the triggers topic.
    #[arg(long, value_name = "FILE")]
    pub triggers: PathBuf,
    /// Holdout triggers: a replay's --holdout, or a dump of the holdout topic.
    #[arg(long, value_name = "FILE")]
    pub holdout: PathBuf,
    /// Conversion records: a replay's --conversions, or a dump of the
    /// conversions topic.
    #[arg(long, value_name = "FILE")]
    pub conversions: PathBuf,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum UpliftError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path} line {line}: cannot read: {source}")]
    Read {
        path: String,
        line: u64,
        source: io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Record {
        path: String,
        line: u64,
        message: String,
    },
    #[error("cannot write the report: {0}")]
    Write(io::Error),
}

/// Reads the three files and prints the report on stdout.
pub fn run(args: &UpliftArgs) -> Result<(), UpliftError> {
    let report = Report::from_files(&args.triggers, &args.holdout, &args.conversions)?;
    let text = match args.format {
        Format::Text => report.render_text(),
        Format::Json => report.render_json(),
    };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(UpliftError::Write)
}

/// The statistics, as pure functions of counts.
pub mod stats {
    /// The 0.975 quantile of the standard normal distribution.
    pub const Z95: f64 = 1.959_963_984_540_054;

    /// Below this expected count the normal approximations behind the
    /// intervals are not to be trusted (Cochran's rule for 2×2 tables).
    pub const MIN_EXPECTED: f64 = 5.0;

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Interval {
        pub low: f64,
        pub high: f64,
    }

    /// A point estimate with its interval; `value` None when the estimate is
    /// undefined, `ci` None when the method gives no interval, `note` why.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Figure {
        pub value: Option<f64>,
        pub ci: Option<Interval>,
        pub note: Option<&'static str>,
    }

    impl Figure {
        fn undefined(note: &'static str) -> Figure {
            Figure {
                value: None,
                ci: None,
                note: Some(note),
            }
        }
    }

    /// Wilson's score interval for x successes in n trials; None for n = 0.
    /// Unlike the Wald interval it stays inside [0, 1] and keeps its
    /// coverage near 0 and 1, where conversion rates live.
    pub fn wilson(x: u64, n: u64, z: f64) -> Option<Interval> {
        if n == 0 || x > n {
            return None;
        }
        let (x, n) = (x as f64, n as f64);
        let z2 = z * z;
        let centre = (x + z2 / 2.0) / (n + z2);
        let half = z / (n + z2) * (x * (n - x) / n + z2 / 4.0).sqrt();
        // The bounds are exactly 0 and 1 at x = 0 and x = n; rounding must
        // not push them past.
        let low = if x == 0.0 { 0.0 } else { centre - half };
        let high = if x == n { 1.0 } else { centre + half };
        Some(Interval {
            low: low.max(0.0),
            high: high.min(1.0),
        })
    }

    /// p1 − p2 with Newcombe's hybrid score interval (Newcombe 1998,
    /// method 10): the Wilson intervals of the two rates combined. Defined
    /// whenever both groups have a trial, zero counts included.
    pub fn newcombe_difference(x1: u64, n1: u64, x2: u64, n2: u64, z: f64) -> Figure {
        let (Some(w1), Some(w2)) = (wilson(x1, n1, z), wilson(x2, n2, z)) else {
            return Figure::undefined(no_trials(n1));
        };
        let p1 = x1 as f64 / n1 as f64;
        let p2 = x2 as f64 / n2 as f64;
        let d = p1 - p2;
        let below = ((p1 - w1.low).powi(2) + (w2.high - p2).powi(2)).sqrt();
        let above = ((w1.high - p1).powi(2) + (p2 - w2.low).powi(2)).sqrt();
        Figure {
            value: Some(d),
            ci: Some(Interval {
                low: (d - below).max(-1.0),
                high: (d + above).min(1.0),
            }),
            note: None,
        }
    }

    /// p1 / p2 − 1 with the Katz log interval of the ratio (Katz et al.
    /// 1978): ln(p1/p2) ± z·sqrt(1/x1 − 1/n1 + 1/x2 − 1/n2), shifted by −1.
    /// Undefined when p2 = 0; without an interval when x1 = 0 (the log of a
    /// zero ratio has none) or when either rate is 1 (its group would add
    /// no variance).
    pub fn katz_relative(x1: u64, n1: u64, x2: u64, n2: u64, z: f64) -> Figure {
        if n1 == 0 || n2 == 0 || x1 > n1 || x2 > n2 {
            return Figure::undefined(no_trials(n1));
        }
        if x2 == 0 {
            return Figure::undefined("undefined: the holdout rate is 0");
        }
        let ratio = (x1 as f64 / n1 as f64) / (x2 as f64 / n2 as f64);
        if x1 == 0 {
            return Figure {
                value: Some(-1.0),
                ci: None,
                note: Some("no interval: no treated conversions"),
            };
        }
        if x1 == n1 || x2 == n2 {
            // A rate of 1 adds nothing to the log ratio's variance, as if
            // it were known exactly: the interval would be too narrow.
            return Figure {
                value: Some(ratio - 1.0),
                ci: None,
                note: Some("no interval: a rate of 1"),
            };
        }
        let (x1, n1, x2, n2) = (x1 as f64, n1 as f64, x2 as f64, n2 as f64);
        let se = (1.0 / x1 - 1.0 / n1 + 1.0 / x2 - 1.0 / n2).sqrt();
        let log = ratio.ln();
        Figure {
            value: Some(ratio - 1.0),
            ci: Some(Interval {
                low: (log - z * se).exp() - 1.0,
                high: (log + z * se).exp() - 1.0,
            }),
            note: None,
        }
    }

    /// A rate Σx/Σn over customers and the variance of that ratio estimator
    /// with customers as clusters (the delta method; the CR0 sandwich of a
    /// regression on the group): Σ_c (x_c − R·n_c)² / N². `cells` are each
    /// customer's (triggers, conversions), sorted so that the float sum is
    /// the same whatever order the customers came in. None when N = 0.
    pub fn clustered_rate(cells: &[(u64, u64)]) -> Option<(f64, f64)> {
        let n: u64 = cells.iter().map(|c| c.0).sum();
        let x: u64 = cells.iter().map(|c| c.1).sum();
        if n == 0 {
            return None;
        }
        let r = x as f64 / n as f64;
        let ss: f64 = cells
            .iter()
            .map(|&(ni, xi)| (xi as f64 - r * ni as f64).powi(2))
            .sum();
        Some((r, ss / (n as f64 * n as f64)))
    }

    /// How much the clustering inflates the variance of a rate: the
    /// clustered variance over the binomial one, R(1 − R)/N. None at a rate
    /// of 0 or 1, where the binomial variance is 0.
    pub fn design_effect(rate: f64, variance: f64, n: u64) -> Option<f64> {
        let binomial = rate * (1.0 - rate) / n as f64;
        (binomial > 0.0).then(|| variance / binomial)
    }

    /// R1 − R2 with a Wald interval on the clustered variances (rate,
    /// variance pairs of `clustered_rate`). Without an interval when either
    /// rate is 0 or 1: its clustered variance is 0 there, and a Wald
    /// interval would pretend certainty.
    pub fn clustered_difference(a: (f64, f64), b: (f64, f64), z: f64) -> Figure {
        let ((r1, v1), (r2, v2)) = (a, b);
        let d = r1 - r2;
        if !inside(r1) || !inside(r2) {
            return Figure {
                value: Some(d),
                ci: None,
                note: Some("no interval: a rate of 0 or 1"),
            };
        }
        let half = z * (v1 + v2).sqrt();
        Figure {
            value: Some(d),
            ci: Some(Interval {
                low: (d - half).max(-1.0),
                high: (d + half).min(1.0),
            }),
            note: None,
        }
    }

    /// R1 / R2 − 1 with a Wald interval on the log ratio, its variance by
    /// the delta method: V1/R1² + V2/R2².
    pub fn clustered_relative(a: (f64, f64), b: (f64, f64), z: f64) -> Figure {
        let ((r1, v1), (r2, v2)) = (a, b);
        if r2 == 0.0 {
            return Figure::undefined("undefined: the holdout rate is 0");
        }
        if !inside(r1) || !inside(r2) {
            return Figure {
                value: Some(r1 / r2 - 1.0),
                ci: None,
                note: Some("no interval: a rate of 0 or 1"),
            };
        }
        let log = (r1 / r2).ln();
        let half = z * (v1 / (r1 * r1) + v2 / (r2 * r2)).sqrt();
        Figure {
            value: Some(r1 / r2 - 1.0),
            ci: Some(Interval {
                low: (log - half).exp() - 1.0,
                high: (log + half).exp() - 1.0,
            }),
            note: None,
        }
    }

    fn inside(r: f64) -> bool {
        r > 0.0 && r < 1.0
    }

    fn no_trials(n1: u64) -> &'static str {
        if n1 == 0 {
            "undefined: no treated triggers"
        } else {
            "undefined: no holdout triggers"
        }
    }

    /// The smallest expected cell of the 2×2 table (group × converted) if
    /// both groups had the pooled rate, and where it is: (count, group 0 or
    /// 1, true for conversions, false for non-conversions). None when there
    /// are no trials at all.
    pub fn min_expected(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<(f64, usize, bool)> {
        let total = n1 + n2;
        if total == 0 {
            return None;
        }
        let pooled = (x1 + x2) as f64 / total as f64;
        let mut min: Option<(f64, usize, bool)> = None;
        for (group, n) in [(0, n1), (1, n2)] {
            for (conv, share) in [(true, pooled), (false, 1.0 - pooled)] {
                let e = n as f64 * share;
                if min.is_none_or(|(m, _, _)| e < m) {
                    min = Some((e, group, conv));
                }
            }
        }
        min
    }
}

use stats::{Figure, Interval, Z95};

/// The two arms of the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Treated,
    Holdout,
}

impl Arm {
    fn parse(s: &str) -> Result<Arm, String> {
        match s {
            "treated" => Ok(Arm::Treated),
            "holdout" => Ok(Arm::Holdout),
            other => Err(format!("unknown group {other:?}")),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Arm::Treated => "treated",
            Arm::Holdout => "holdout",
        }
    }
}

fn parse_kind(s: &str) -> Result<TriggerKind, String> {
    TriggerKind::ALL
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| format!("unknown trigger type {s:?}"))
}

/// The fields of a trigger record (CONTRACT section 4) and of a conversion
/// record (section 8) that the report needs; the others are not checked.
#[derive(Deserialize)]
struct Record {
    trigger_id: String,
    crm_id: String,
    #[serde(rename = "type")]
    kind: String,
    group: String,
}

/// A conversion record: a trigger's fields and the order's. The order's
/// are required so that a trigger file given as `--conversions` is an
/// error, not every trigger converted.
#[derive(Deserialize)]
struct ConversionRecord {
    #[serde(flatten)]
    trigger: Record,
    #[serde(rename = "order_id")]
    _order_id: serde::de::IgnoredAny,
    #[serde(rename = "converted_at")]
    _converted_at: serde::de::IgnoredAny,
}

struct Seen {
    kind: TriggerKind,
    arm: Arm,
    customer: u32,
    converted: bool,
}

/// Each customer's (triggers, conversions), by customer number.
type Cells = HashMap<u32, (u64, u64)>;

/// What the files hold, counted.
#[derive(Default)]
struct Tally {
    seen: HashMap<String, Seen>,
    /// crm_id → customer number, so that cells key on a number.
    customer_no: HashMap<String, u32>,
    /// Per customer: [type index][0 treated, 1 holdout], and per group over
    /// all types.
    cells: [[Cells; 2]; TriggerKind::ALL.len()],
    all_cells: [Cells; 2],
    duplicate_triggers: u64,
    duplicate_conversions: u64,
    unmatched_conversions: u64,
}

impl Tally {
    /// A trigger read from the file of `expected`'s group. The same
    /// trigger_id twice (a redelivered message in a topic dump) counts once.
    fn add_trigger(&mut self, rec: Record, expected: Arm) -> Result<(), String> {
        let kind = parse_kind(&rec.kind)?;
        let arm = Arm::parse(&rec.group)?;
        if arm != expected {
            return Err(format!(
                "a {} trigger in the {} file (were the files swapped?)",
                arm.as_str(),
                expected.as_str()
            ));
        }
        match self.seen.entry(rec.trigger_id) {
            Entry::Occupied(e) => {
                let s = e.get();
                if s.kind != kind || s.arm != arm {
                    return Err(format!(
                        "trigger_id {} was read before as a {} {} trigger",
                        e.key(),
                        s.arm.as_str(),
                        s.kind.as_str()
                    ));
                }
                self.duplicate_triggers += 1;
            }
            Entry::Vacant(v) => {
                let next = self.customer_no.len() as u32;
                let customer = *self.customer_no.entry(rec.crm_id).or_insert(next);
                v.insert(Seen {
                    kind,
                    arm,
                    customer,
                    converted: false,
                });
                self.bump(kind, arm, customer, (1, 0));
            }
        }
        Ok(())
    }

    /// A conversion counts for the trigger it names, at most once.
    fn add_conversion(&mut self, rec: Record) -> Result<(), String> {
        let kind = parse_kind(&rec.kind)?;
        let arm = Arm::parse(&rec.group)?;
        let Some(seen) = self.seen.get_mut(&rec.trigger_id) else {
            self.unmatched_conversions += 1;
            return Ok(());
        };
        if self.customer_no.get(&rec.crm_id) != Some(&seen.customer) {
            return Err(format!(
                "a conversion for customer {}, but trigger {} was fired for another",
                rec.crm_id, rec.trigger_id
            ));
        }
        if seen.kind != kind || seen.arm != arm {
            return Err(format!(
                "a conversion of a {} {} trigger, but trigger {} is a {} {} trigger",
                arm.as_str(),
                kind.as_str(),
                rec.trigger_id,
                seen.arm.as_str(),
                seen.kind.as_str()
            ));
        }
        if seen.converted {
            self.duplicate_conversions += 1;
        } else {
            seen.converted = true;
            let customer = seen.customer;
            self.bump(kind, arm, customer, (0, 1));
        }
        Ok(())
    }

    fn bump(&mut self, kind: TriggerKind, arm: Arm, customer: u32, by: (u64, u64)) {
        for cells in [
            &mut self.cells[kind.index()][arm as usize],
            &mut self.all_cells[arm as usize],
        ] {
            let c = cells.entry(customer).or_default();
            c.0 += by.0;
            c.1 += by.1;
        }
    }
}

/// A group's per-customer cells, sorted: the input of `clustered_rate`.
fn sorted_cells(cells: &Cells) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = cells.values().copied().collect();
    v.sort_unstable();
    v
}

/// Calls `f` with each non-blank line of a JSON Lines file (gzip when it
/// ends in .gz); `f`'s error message is located at that line's 1-based
/// number.
fn each_line(
    path: &Path,
    mut f: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), UpliftError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| UpliftError::Open {
        path: name.clone(),
        source,
    })?;
    let raw: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = BufReader::with_capacity(1 << 16, raw);
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        line.clear();
        line_no += 1;
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| UpliftError::Read {
                path: name.clone(),
                line: line_no,
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // Without its line end, a line cut short is faulted at its last
        // column, not at column 0 of a line after it.
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        f(text).map_err(|message| UpliftError::Record {
            path: name.clone(),
            line: line_no,
            message,
        })?;
    }
}

fn parse_record<R: serde::de::DeserializeOwned>(line: &[u8], what: &str) -> Result<R, String> {
    serde_json::from_slice(line).map_err(|e| {
        // serde_json places its message at "line 1" of our one line: give
        // the column alone.
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let msg = text.strip_suffix(&suffix).unwrap_or(&text);
        format!("not a {what} record: {msg} (column {})", e.column())
    })
}

/// One row of the report: a trigger type, or the total.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: &'static str,
    pub treated: GroupRate,
    pub holdout: GroupRate,
    pub absolute: Figure,
    pub relative: Figure,
    /// The same uplifts with customers as clusters.
    pub clustered: Clustered,
    pub warnings: Vec<String>,
}

/// The uplifts with the variance of customers as clusters, and the design
/// effect of each group (None at a rate of 0 or 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Clustered {
    pub design_effect: [Option<f64>; 2],
    pub absolute: Figure,
    pub relative: Figure,
}

/// A group's counts, rate and the rate's Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupRate {
    pub triggers: u64,
    /// Distinct customers among the triggers: how clustered they are.
    pub customers: u64,
    pub conversions: u64,
    pub rate: Option<f64>,
    pub rate_ci: Option<Interval>,
}

impl GroupRate {
    fn of(cells: &[(u64, u64)]) -> GroupRate {
        let triggers = cells.iter().map(|c| c.0).sum();
        let conversions = cells.iter().map(|c| c.1).sum();
        GroupRate {
            triggers,
            customers: cells.len() as u64,
            conversions,
            rate: (triggers > 0).then(|| conversions as f64 / triggers as f64),
            rate_ci: stats::wilson(conversions, triggers, Z95),
        }
    }
}

impl Row {
    fn new(label: &'static str, treated: &Cells, holdout: &Cells) -> Row {
        let (t, h) = (sorted_cells(treated), sorted_cells(holdout));
        let (tr, ho) = (GroupRate::of(&t), GroupRate::of(&h));
        let (x1, n1) = (tr.conversions, tr.triggers);
        let (x2, n2) = (ho.conversions, ho.triggers);
        let clustered = Clustered::of(&t, &h);
        let mut warnings: Vec<String> = small_sample_warning(x1, n1, x2, n2).into_iter().collect();
        warnings.extend(cluster_warning(&clustered));
        warnings.extend(few_customers_warning(tr.customers, ho.customers));
        Row {
            label,
            treated: tr,
            holdout: ho,
            absolute: stats::newcombe_difference(x1, n1, x2, n2, Z95),
            relative: stats::katz_relative(x1, n1, x2, n2, Z95),
            clustered,
            warnings,
        }
    }
}

impl Clustered {
    fn of(treated: &[(u64, u64)], holdout: &[(u64, u64)]) -> Clustered {
        let (t, h) = (
            stats::clustered_rate(treated),
            stats::clustered_rate(holdout),
        );
        // One customer is one cluster: its variance around its own rate is
        // 0 by construction, which says nothing of the group's uncertainty.
        let measurable = |cells: &[(u64, u64)]| cells.len() >= 2;
        let deff = |g: Option<(f64, f64)>, cells: &[(u64, u64)]| {
            let n = cells.iter().map(|c| c.0).sum();
            g.filter(|_| measurable(cells))
                .and_then(|(r, v)| stats::design_effect(r, v, n))
        };
        let design_effect = [deff(t, treated), deff(h, holdout)];
        let (absolute, relative) = match (t, h) {
            (Some(t), Some(h)) if !measurable(treated) || !measurable(holdout) => {
                let note = Some("no interval: a group of one customer");
                let only = |f: Figure| match f.ci {
                    Some(_) => Figure {
                        ci: None,
                        note,
                        ..f
                    },
                    None => f,
                };
                (
                    only(stats::clustered_difference(t, h, Z95)),
                    only(stats::clustered_relative(t, h, Z95)),
                )
            }
            (Some(t), Some(h)) => (
                stats::clustered_difference(t, h, Z95),
                stats::clustered_relative(t, h, Z95),
            ),
            _ => {
                let none = Figure {
                    value: None,
                    ci: None,
                    note: Some("undefined: a group has no triggers"),
                };
                (none.clone(), none)
            }
        };
        Clustered {
            design_effect,
            absolute,
            relative,
        }
    }
}

/// Above this design effect the intervals that count triggers as
/// independent are too narrow by more than a fifth (√1.5 ≈ 1.22).
pub const MAX_DESIGN_EFFECT: f64 = 1.5;

pub const CLUSTER_RULE: &str = "a group whose design effect (the clustered \
     variance of its rate over the binomial one) is 1.5 or more";

fn cluster_warning(c: &Clustered) -> Option<String> {
    let (name, deff) = [
        ("treated group", c.design_effect[0]),
        ("holdout", c.design_effect[1]),
    ]
    .into_iter()
    .filter_map(|(name, d)| d.map(|d| (name, d)))
    .max_by(|a, b| a.1.total_cmp(&b.1))?;
    (deff >= MAX_DESIGN_EFFECT).then(|| {
        format!(
            "triggers cluster by customer (design effect {deff:.2} in the {name}): the \
             intervals that count triggers as independent are too narrow; read the \
             clustered ones"
        )
    })
}

/// Below this many customers in a group the clustered intervals are too
/// narrow: the sandwich variance behind them is a large-sample estimate in
/// the number of clusters, not of triggers (Cameron and Miller 2015 put the
/// bound at 20–50 clusters).
pub const MIN_CLUSTERS: u64 = 30;

pub const FEW_CUSTOMERS_RULE: &str = "a group with triggers for fewer than 30 \
     customers (the clustered intervals need many customers, not many triggers)";

fn few_customers_warning(treated: u64, holdout: u64) -> Option<String> {
    let (name, n) = [("treated group", treated), ("holdout", holdout)]
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .min_by_key(|&(_, n)| n)?;
    (n < MIN_CLUSTERS).then(|| {
        format!(
            "few customers for the clustered intervals ({n} in the {name}, fewer \
             than {MIN_CLUSTERS}): they are too narrow"
        )
    })
}

/// The rule, as the report states it.
pub const SMALL_SAMPLE_RULE: &str = "a group whose expected conversions or \
     non-conversions at the pooled rate is below 5 (Cochran's rule)";

fn small_sample_warning(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<String> {
    if n1 == 0 && n2 == 0 {
        return Some("no triggers".to_string());
    }
    if n2 == 0 {
        return Some("no holdout triggers: nothing to compare with".to_string());
    }
    if n1 == 0 {
        return Some("no treated triggers: nothing to compare with".to_string());
    }
    let (e, group, conv) = stats::min_expected(x1, n1, x2, n2)?;
    if e >= stats::MIN_EXPECTED {
        return None;
    }
    let group = if group == 0 {
        "treated group"
    } else {
        "holdout"
    };
    let cell = if conv {
        "conversions"
    } else {
        "non-conversions"
    };
    Some(format!(
        "too small for the intervals to mean much: at the pooled rate the {group} \
         would expect {e:.1} {cell} (fewer than 5)"
    ))
}

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// One row per trigger type, in the contract's order.
    pub by_type: Vec<Row>,
    pub total: Row,
    pub unmatched_conversions: u64,
    pub duplicate_triggers: u64,
    pub duplicate_conversions: u64,
    /// Customers with triggers in both groups: membership changed during
    /// the run (a new salt or percent), which contaminates the comparison.
    pub customers_in_both: u64,
}

impl Report {
    pub fn from_files(
        triggers: &Path,
        holdout: &Path,
        conversions: &Path,
    ) -> Result<Report, UpliftError> {
        let mut tally = Tally::default();
        for (path, arm) in [(triggers, Arm::Treated), (holdout, Arm::Holdout)] {
            each_line(path, |line| {
                tally.add_trigger(parse_record(line, "trigger")?, arm)
            })?;
        }
        each_line(conversions, |line| {
            let rec: ConversionRecord = parse_record(line, "conversion")?;
            tally.add_conversion(rec.trigger)
        })?;
        Ok(Report::of(&tally))
    }

    fn of(tally: &Tally) -> Report {
        let by_type = TriggerKind::ALL
            .into_iter()
            .map(|kind| {
                let [t, h] = &tally.cells[kind.index()];
                Row::new(kind.as_str(), t, h)
            })
            .collect();
        let [t, h] = &tally.all_cells;
        Report {
            by_type,
            total: Row::new("total", t, h),
            unmatched_conversions: tally.unmatched_conversions,
            duplicate_triggers: tally.duplicate_triggers,
            duplicate_conversions: tally.duplicate_conversions,
            customers_in_both: t.keys().filter(|c| h.contains_key(c)).count() as u64,
        }
    }

    /// Warnings about the files as a whole.
    fn file_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.unmatched_conversions > 0 {
            w.push(format!(
                "{} unmatched conversion{}: their trigger_id is in neither trigger file, \
                 so they count for no group (a trigger file cut short, or from another run?)",
                self.unmatched_conversions,
                plural(self.unmatched_conversions)
            ));
        }
        if self.duplicate_triggers > 0 {
            w.push(format!(
                "{} duplicate trigger{} (a trigger_id read again) counted once",
                self.duplicate_triggers,
                plural(self.duplicate_triggers)
            ));
        }
        if self.duplicate_conversions > 0 {
            w.push(format!(
                "{} duplicate conversion{} (a trigger converted again) counted once",
                self.duplicate_conversions,
                plural(self.duplicate_conversions)
            ));
        }
        if self.customers_in_both > 0 {
            w.push(format!(
                "{} customer{} with triggers in both groups: the holdout changed during \
                 the run (holdout.salt or holdout.percent), and the comparison is \
                 contaminated",
                self.customers_in_both,
                plural(self.customers_in_both)
            ));
        }
        w
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

const METHOD_RATE: &str = "Wilson score interval";
const METHOD_ABSOLUTE: &str = "Newcombe's hybrid score interval (Newcombe 1998, method 10)";
const METHOD_RELATIVE: &str = "Katz log interval of the rate ratio";
const METHOD_CLUSTERED: &str = "Wald intervals (the relative one on the log ratio) \
     with the cluster-robust delta-method variance, customers as clusters";

impl Report {
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "uplift of treated over holdout triggers, 95% confidence intervals\n\
             rate = conversions / triggers: {METHOD_RATE}\n\
             absolute uplift = rate_treated - rate_holdout, in percentage points (pp): \
             {METHOD_ABSOLUTE}\n\
             relative uplift = rate_treated / rate_holdout - 1: {METHOD_RELATIVE}\n\
             clustered by customer: {METHOD_CLUSTERED}\n\
             small-sample warning: {SMALL_SAMPLE_RULE}\n\
             clustering warning: {CLUSTER_RULE}\n\
             few-customers warning: {FEW_CUSTOMERS_RULE}"
        );
        for row in self.by_type.iter().chain(std::iter::once(&self.total)) {
            s.push('\n');
            text_row(&mut s, row);
        }
        s.push('\n');
        let _ = writeln!(s, "unmatched conversions: {}", self.unmatched_conversions);
        for w in self.file_warnings() {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}

fn text_row(s: &mut String, row: &Row) {
    let _ = writeln!(s, "{}", row.label);
    let _ = writeln!(
        s,
        "  {:<8} {:>10} {:>10} {:>12} {:>9}  95% CI",
        "group", "triggers", "customers", "conversions", "rate"
    );
    for (name, g) in [("treated", &row.treated), ("holdout", &row.holdout)] {
        let (rate, ci) = match (g.rate, g.rate_ci) {
            (Some(r), Some(ci)) => (
                format!("{}%", pct(r)),
                format!("{}% to {}%", pct(ci.low), pct(ci.high)),
            ),
            _ => ("-".to_string(), "-".to_string()),
        };
        let _ = writeln!(
            s,
            "  {name:<8} {:>10} {:>10} {:>12} {rate:>9}  {ci}",
            g.triggers, g.customers, g.conversions
        );
    }
    let _ = writeln!(
        s,
        "  absolute uplift  {}",
        text_figure(&row.absolute, " pp")
    );
    let _ = writeln!(s, "  relative uplift  {}", text_figure(&row.relative, "%"));
    let deff = |d: Option<f64>| d.map_or("-".to_string(), |d| format!("{d:.2}"));
    let c = &row.clustered;
    let _ = writeln!(
        s,
        "  clustered by customer (design effect: treated {}, holdout {})",
        deff(c.design_effect[0]),
        deff(c.design_effect[1])
    );
    let _ = writeln!(
        s,
        "    absolute uplift  {}",
        text_figure(&c.absolute, " pp")
    );
    let _ = writeln!(s, "    relative uplift  {}", text_figure(&c.relative, "%"));
    for w in &row.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
}

/// A figure in percent (or percentage points), signed: "+1.00 pp (95% CI
/// -0.47 to +2.15 pp)".
fn text_figure(f: &Figure, unit: &str) -> String {
    match (f.value, f.ci) {
        (Some(v), Some(ci)) => format!(
            "{}{unit} (95% CI {}{unit} to {}{unit})",
            signed_pct(v),
            signed_pct(ci.low),
            signed_pct(ci.high)
        ),
        (Some(v), None) => format!(
            "{}{unit} ({})",
            signed_pct(v),
            f.note.unwrap_or("no interval")
        ),
        (None, _) => f.note.unwrap_or("undefined").to_string(),
    }
}

/// 100·x to two decimals, never "-0.00".
fn pct(x: f64) -> String {
    let v = (x * 100.0 * 100.0).round() / 100.0;
    format!("{:.2}", if v == 0.0 { 0.0 } else { v })
}

fn signed_pct(x: f64) -> String {
    let p = pct(x);
    if p.starts_with('-') {
        p
    } else {
        format!("+{p}")
    }
}

// The JSON document: the same figures as fractions (0.05 for 5%), rounded
// to 6 decimals so that the last bits of a libm do not show.

#[derive(Serialize)]
struct JsonReport<'a> {
    confidence: f64,
    methods: JsonMethods,
    small_sample_rule: &'static str,
    cluster_rule: &'static str,
    few_customers_rule: &'static str,
    by_type: Vec<JsonRow<'a>>,
    total: JsonRow<'a>,
    unmatched_conversions: u64,
    duplicate_triggers: u64,
    duplicate_conversions: u64,
    customers_in_both: u64,
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct JsonMethods {
    rate: &'static str,
    absolute_uplift: &'static str,
    relative_uplift: &'static str,
    clustered: &'static str,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(rename = "type")]
    label: &'static str,
    treated: JsonGroup,
    holdout: JsonGroup,
    absolute_uplift: JsonFigure,
    relative_uplift: JsonFigure,
    clustered: JsonClustered,
    warnings: &'a [String],
}

#[derive(Serialize)]
struct JsonClustered {
    design_effect: JsonDesignEffect,
    absolute_uplift: JsonFigure,
    relative_uplift: JsonFigure,
}

#[derive(Serialize)]
struct JsonDesignEffect {
    treated: Option<f64>,
    holdout: Option<f64>,
}

#[derive(Serialize)]
struct JsonGroup {
    triggers: u64,
    customers: u64,
    conversions: u64,
    rate: Option<f64>,
    rate_ci: Option<[f64; 2]>,
}

#[derive(Serialize)]
struct JsonFigure {
    estimate: Option<f64>,
    ci: Option<[f64; 2]>,
    note: Option<&'static str>,
}

fn round6(x: f64) -> f64 {
    let v = (x * 1e6).round() / 1e6;
    if v == 0.0 {
        0.0
    } else {
        v
    }
}

fn json_ci(ci: Option<Interval>) -> Option<[f64; 2]> {
    ci.map(|c| [round6(c.low), round6(c.high)])
}

fn json_group(g: &GroupRate) -> JsonGroup {
    JsonGroup {
        triggers: g.triggers,
        customers: g.customers,
        conversions: g.conversions,
        rate: g.rate.map(round6),
        rate_ci: json_ci(g.rate_ci),
    }
}

fn json_figure(f: &Figure) -> JsonFigure {
    JsonFigure {
        estimate: f.value.map(round6),
        ci: json_ci(f.ci),
        note: f.note,
    }
}

fn json_row(r: &Row) -> JsonRow<'_> {
    JsonRow {
        label: r.label,
        treated: json_group(&r.treated),
        holdout: json_group(&r.holdout),
        absolute_uplift: json_figure(&r.absolute),
        relative_uplift: json_figure(&r.relative),
        clustered: JsonClustered {
            design_effect: JsonDesignEffect {
                treated: r.clustered.design_effect[0].map(round6),
                holdout: r.clustered.design_effect[1].map(round6),
            },
            absolute_uplift: json_figure(&r.clustered.absolute),
            relative_uplift: json_figure(&r.clustered.relative),
        },
        warnings: &r.warnings,
    }
}

impl Report {
    /// One pretty-printed JSON document and a newline.
    pub fn render_json(&self) -> String {
        let doc = JsonReport {
            confidence: 0.95,
            methods: JsonMethods {
                rate: METHOD_RATE,
                absolute_uplift: METHOD_ABSOLUTE,
                relative_uplift: METHOD_RELATIVE,
                clustered: METHOD_CLUSTERED,
            },
            small_sample_rule: SMALL_SAMPLE_RULE,
            cluster_rule: CLUSTER_RULE,
            few_customers_rule: FEW_CUSTOMERS_RULE,
            by_type: self.by_type.iter().map(json_row).collect(),
            total: json_row(&self.total),
            unmatched_conversions: self.unmatched_conversions,
            duplicate_triggers: self.duplicate_triggers,
            duplicate_conversions: self.duplicate_conversions,
            customers_in_both: self.customers_in_both,
            warnings: self.file_warnings(),
        };
        // Plain numbers, strings and options cannot fail to serialize.
        let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::stats::*;
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn ci(f: &Figure) -> Interval {
        f.ci.unwrap()
    }

    /// Newcombe (1998), Stat Med 17:873-890, table II, method 10, to the
    /// four decimals published; the full digits are statsmodels 0.15
    /// `confint_proportions_2indep(method="newcomb")`, an independent
    /// implementation of the same formula.
    #[test]
    fn newcombe_matches_the_published_examples() {
        // x1, n1, x2, n2, difference, published low and high, low in full.
        type Case = (u64, u64, u64, u64, f64, f64, f64, f64);
        let cases: [Case; 5] = [
            (
                56,
                70,
                48,
                80,
                0.2,
                0.0524,
                0.3339,
                0.052_431_472_402_364_98,
            ),
            (9, 10, 3, 10, 0.6, 0.1705, 0.8090, 0.170_522_723_934_502_9),
            (5, 56, 0, 29, 5.0 / 56.0, -0.0381, 0.1926, -0.038_137_147_9),
            (0, 10, 0, 20, 0.0, -0.1611, 0.2775, -0.161_125_158_052_819_4),
            (10, 10, 0, 20, 1.0, 0.6791, 1.0, 0.679_086_037_1),
        ];
        for (x1, n1, x2, n2, d, lo4, hi4, lo_full) in cases {
            let f = newcombe_difference(x1, n1, x2, n2, Z95);
            let i = ci(&f);
            assert!(close(f.value.unwrap(), d, 1e-12), "{x1}/{n1} vs {x2}/{n2}");
            assert!(close(i.low, lo4, 5e-5), "{x1}/{n1} vs {x2}/{n2}: {i:?}");
            assert!(close(i.high, hi4, 5e-5), "{x1}/{n1} vs {x2}/{n2}: {i:?}");
            assert!(close(i.low, lo_full, 1e-9), "{i:?}");
        }
        let i = ci(&newcombe_difference(56, 70, 48, 80, Z95));
        assert!(close(i.high, 0.333_872_654_036_906_14, 1e-12), "{i:?}");
    }

    /// statsmodels 0.15 `proportion_confint(method="wilson")`.
    #[test]
    fn wilson_matches_an_independent_implementation() {
        let cases = [
            (56, 70, 0.691_833_555_037_469_5, 0.876_952_607_516_370_5),
            (48, 80, 0.490_454_650_051_603_8, 0.700_381_724_041_290_6),
            (1, 29, 0.006_113_214_292_762_667, 0.171_755_218_793_202_94),
            (0, 10, 0.0, 0.277_532_799_862_889_26),
            (10, 10, 0.722_467_200_137_110_6, 1.0),
        ];
        for (x, n, lo, hi) in cases {
            let i = wilson(x, n, Z95).unwrap();
            assert!(
                close(i.low, lo, 1e-12) && close(i.high, hi, 1e-12),
                "{x}/{n}: {i:?}"
            );
        }
        assert_eq!(wilson(0, 0, Z95), None);
    }

    /// statsmodels 0.15 `confint_proportions_2indep(compare="ratio",
    /// method="log")` gives the Katz interval of the ratio; ours is that
    /// minus 1. Also checked by hand for 56/70 vs 48/80: ratio 4/3,
    /// se = sqrt(1/56 - 1/70 + 1/48 - 1/80) = 0.10954, 4/3·e^(±1.96·0.10954).
    #[test]
    fn katz_matches_an_independent_implementation() {
        let cases = [
            (
                56,
                70,
                48,
                80,
                1.076_626_422_763_192_8,
                1.651_248_511_266_387_3,
            ),
            (9, 10, 3, 10, 1.138_350_357_447_669_9, 7.906_177_514_784_793),
            (
                450,
                9000,
                40,
                1000,
                0.910_678_172_074_601_7,
                1.715_754_311_361_711,
            ),
            (
                30,
                200,
                12,
                100,
                0.669_117_836_281_910_2,
                2.335_164_174_792_216,
            ),
        ];
        for (x1, n1, x2, n2, lo, hi) in cases {
            let f = katz_relative(x1, n1, x2, n2, Z95);
            let ratio = (x1 as f64 / n1 as f64) / (x2 as f64 / n2 as f64);
            assert!(close(f.value.unwrap(), ratio - 1.0, 1e-12));
            let i = ci(&f);
            assert!(
                close(i.low, lo - 1.0, 1e-9),
                "{x1}/{n1} vs {x2}/{n2}: {i:?}"
            );
            assert!(
                close(i.high, hi - 1.0, 1e-9),
                "{x1}/{n1} vs {x2}/{n2}: {i:?}"
            );
        }
    }

    #[test]
    fn zero_counts_are_undefined_or_intervalless_never_nan() {
        let f = katz_relative(5, 56, 0, 29, Z95);
        assert_eq!(f.value, None);
        assert_eq!(f.note, Some("undefined: the holdout rate is 0"));
        let f = katz_relative(0, 50, 3, 50, Z95);
        assert_eq!(f.value, Some(-1.0));
        assert_eq!(f.ci, None);
        assert_eq!(
            newcombe_difference(3, 10, 0, 0, Z95).note,
            Some("undefined: no holdout triggers")
        );
        assert_eq!(
            katz_relative(0, 0, 1, 10, Z95).note,
            Some("undefined: no treated triggers")
        );
        // Both rates 0 still give a finite difference interval.
        let i = ci(&newcombe_difference(0, 10, 0, 10, Z95));
        assert!(close(i.low, -0.277_532_799_9, 1e-9) && close(i.high, 0.277_532_799_9, 1e-9));
    }

    /// The clustered difference is the group coefficient of an OLS of
    /// "converted" on the group with cluster-robust (CR0) errors by
    /// customer: statsmodels 0.15 `OLS(...).fit(cov_type="cluster",
    /// cov_kwds={"groups": customer, "use_correction": False})` gives
    /// 0.071428571 ± 1.96 × 0.123530097 for these customers. The relative
    /// interval is the delta-method formula computed in Python.
    #[test]
    fn clustered_intervals_match_a_cluster_robust_regression() {
        let treated = [
            (3, 1),
            (1, 0),
            (4, 2),
            (2, 0),
            (5, 1),
            (1, 1),
            (2, 0),
            (3, 0),
        ];
        let holdout = [(2, 1), (4, 0), (1, 0), (3, 1), (2, 0)];
        let (t, h) = (
            clustered_rate(&treated).unwrap(),
            clustered_rate(&holdout).unwrap(),
        );
        assert!(close(t.0, 5.0 / 21.0, 1e-15) && close(h.0, 2.0 / 12.0, 1e-15));
        assert!(close(t.1, 0.006_386_227_960_571_983, 1e-15), "{t:?}");
        assert!(close(h.1, 0.008_873_456_790_123_458, 1e-15), "{h:?}");
        let d = clustered_difference(t, h, Z95);
        assert!(close(d.value.unwrap(), 0.071_428_571_428_571_24, 1e-12));
        let i = ci(&d);
        assert!(close(i.low, -0.170_685_968_792_726_96, 1e-9), "{i:?}");
        assert!(close(i.high, 0.313_543_111_649_869_4, 1e-9), "{i:?}");
        let r = clustered_relative(t, h, Z95);
        let i = ci(&r);
        assert!(close(r.value.unwrap(), 3.0 / 7.0, 1e-12));
        assert!(close(i.low, -0.606_112_605_703_743_4, 1e-9), "{i:?}");
        assert!(close(i.high, 4.181_217_668_000_927, 1e-9), "{i:?}");
        let deff = design_effect(t.0, t.1, 21).unwrap();
        assert!(close(deff, 0.739_285_714_285_714_3, 1e-12), "{deff}");
        // A rate of 0 has no clustered interval, and no design effect.
        let zero = clustered_rate(&[(3, 0), (2, 0)]).unwrap();
        assert_eq!(clustered_difference(t, zero, Z95).ci, None);
        assert_eq!(clustered_relative(t, zero, Z95).value, None);
        assert_eq!(design_effect(zero.0, zero.1, 5), None);
        assert_eq!(clustered_rate(&[]), None);
    }

    #[test]
    fn the_expected_count_rule_finds_the_smallest_cell() {
        // Pooled 490/10000 = 4.9%: the holdout of 1000 expects 49.
        let (e, g, conv) = min_expected(450, 9000, 40, 1000).unwrap();
        assert!(close(e, 49.0, 1e-9) && g == 1 && conv);
        assert_eq!(small_sample_warning(450, 9000, 40, 1000), None);
        // Pooled 4.9% over a holdout of 40: 1.96 expected conversions.
        let w = small_sample_warning(488, 9960, 2, 40).unwrap();
        assert!(w.contains("holdout would expect 2.0 conversions"), "{w}");
        // A rate near 1: the non-conversions are the small cell.
        let (_, _, conv) = min_expected(99, 100, 9, 10).unwrap();
        assert!(!conv);
        assert_eq!(min_expected(0, 0, 0, 0), None);
    }

    fn record(id: &str, kind: &str, group: &str) -> Record {
        Record {
            trigger_id: id.into(),
            crm_id: format!("C-{id}"),
            kind: kind.into(),
            group: group.into(),
        }
    }

    #[test]
    fn the_tally_counts_duplicates_once_and_rejects_contradictions() {
        let mut t = Tally::default();
        let vnb = "viewed_not_bought";
        t.add_trigger(record("a", vnb, "treated"), Arm::Treated)
            .unwrap();
        t.add_trigger(record("a", vnb, "treated"), Arm::Treated)
            .unwrap();
        let e = t
            .add_trigger(record("b", vnb, "treated"), Arm::Holdout)
            .unwrap_err();
        assert!(e.contains("a treated trigger in the holdout file"), "{e}");
        let e = t
            .add_trigger(record("a", "promo_on_viewed_item", "treated"), Arm::Treated)
            .unwrap_err();
        assert!(e.contains("trigger_id a was read before"), "{e}");
        assert!(t
            .add_trigger(record("c", "other", "treated"), Arm::Treated)
            .is_err());
        t.add_conversion(record("a", vnb, "treated")).unwrap();
        t.add_conversion(record("a", vnb, "treated")).unwrap();
        let mut other = record("a", vnb, "treated");
        other.crm_id = "C-someone-else".into();
        let e = t.add_conversion(other).unwrap_err();
        assert!(e.contains("trigger a was fired for another"), "{e}");
        t.add_conversion(record("zz", vnb, "holdout")).unwrap();
        assert!(t.add_conversion(record("a", vnb, "holdout")).is_err());
        let c = &t.cells[TriggerKind::ViewedNotBought.index()][0];
        assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![(1, 1)]);
        assert_eq!(
            (
                t.duplicate_triggers,
                t.duplicate_conversions,
                t.unmatched_conversions
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn percentages_never_print_negative_zero() {
        assert_eq!(signed_pct(-0.000_01), "+0.00");
        assert_eq!(signed_pct(0.012_345), "+1.23");
        assert_eq!(signed_pct(-0.25), "-25.00");
        assert_eq!(round6(-1e-9), 0.0);
    }

    #[test]
    fn a_bad_line_names_its_column() {
        let e = parse_record::<Record>(
            br#"{"trigger_id":"a","crm_id":"C1","type":"viewed_not_bought"}"#,
            "trigger",
        )
        .err()
        .unwrap();
        assert!(
            e.starts_with("not a trigger record: missing field `group`"),
            "{e}"
        );
        assert!(e.contains("(column"), "{e}");
    }

    #[test]
    fn a_customer_in_both_groups_is_counted_and_warned_about() {
        let mut t = Tally::default();
        let vnb = "viewed_not_bought";
        let mut moved = record("h", vnb, "holdout");
        moved.crm_id = "C-t".into();
        t.add_trigger(record("t", vnb, "treated"), Arm::Treated)
            .unwrap();
        t.add_trigger(moved, Arm::Holdout).unwrap();
        t.add_trigger(record("h2", vnb, "holdout"), Arm::Holdout)
            .unwrap();
        let report = Report::of(&t);
        assert_eq!(report.customers_in_both, 1);
        let warnings = report.file_warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("1 customer with triggers in both groups")),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_trigger_is_not_a_conversion() {
        let trigger =
            br#"{"trigger_id":"a","crm_id":"C1","type":"viewed_not_bought","group":"treated"}"#;
        let e = parse_record::<ConversionRecord>(trigger, "conversion")
            .err()
            .unwrap();
        assert!(e.contains("missing field `order_id`"), "{e}");
        let conversion = br#"{"trigger_id":"a","crm_id":"C1","type":"viewed_not_bought","group":"treated","order_id":"O1","converted_at":"2026-11-22T10:00:00Z"}"#;
        let rec = parse_record::<ConversionRecord>(conversion, "conversion").unwrap();
        assert_eq!(rec.trigger.trigger_id, "a");
    }

    #[test]
    fn a_rate_of_1_gives_the_relative_uplift_no_interval() {
        for (x1, n1, x2, n2) in [(40, 40, 40, 40), (500, 1000, 40, 40), (40, 40, 20, 40)] {
            let f = stats::katz_relative(x1, n1, x2, n2, Z95);
            assert!(
                f.value.is_some() && f.ci.is_none(),
                "{x1}/{n1} {x2}/{n2}: {f:?}"
            );
            assert_eq!(f.note, Some("no interval: a rate of 1"));
        }
    }

    #[test]
    fn a_group_of_one_customer_gives_no_clustered_interval() {
        // 32 holdout triggers of one customer, 8 converted.
        let one = [(32, 8)];
        let many = [(10, 3), (12, 2), (9, 4), (11, 1)];
        let c = Clustered::of(&many, &one);
        assert_eq!(c.design_effect[1], None);
        for f in [&c.absolute, &c.relative] {
            assert!(f.value.is_some() && f.ci.is_none(), "{f:?}");
            assert_eq!(f.note, Some("no interval: a group of one customer"));
        }
        assert!(Clustered::of(&many, &many[..2]).absolute.ci.is_some());
        let w = few_customers_warning(4, 1).unwrap();
        assert!(w.contains("1 in the holdout"), "{w}");
        assert_eq!(few_customers_warning(30, 30), None);
    }
}
