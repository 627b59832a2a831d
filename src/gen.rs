//! A seeded generator of realistic contract events, as JSON Lines.
//!
//! Customers have 1–3 cookies, about 30% of cookies get identified (some
//! after anonymous browsing, so stitching happens), product popularity is
//! Zipf-like, sessions mix views and cart adds, purchases happen on the web
//! and in store, promotions come a few times a day, with consent changes, a
//! few erasures, producer retries (duplicates), late events and a small
//! share of bad lines. The same arguments always give the same bytes: the
//! PRNG is written here, not borrowed from a crate that may change.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use crate::event::Millis;
use crate::time::{format_ts, parse_rfc3339};

const CATEGORIES: [&str; 10] = [
    "coats",
    "shoes",
    "knitwear",
    "jeans",
    "bags",
    "dresses",
    "shirts",
    "accessories",
    "sportswear",
    "lingerie",
];
const HOUR: Millis = 3_600_000;
const MINUTE: Millis = 60_000;

#[derive(clap::Args, Debug, Clone)]
pub struct GenArgs {
    /// Lines to write (bad and duplicate lines included).
    #[arg(long, default_value_t = 4000)]
    pub events: u64,
    #[arg(long, default_value_t = 300)]
    pub customers: u64,
    #[arg(long, default_value_t = 200)]
    pub products: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Event time of the first event (RFC 3339).
    #[arg(long, default_value = "2026-11-20T08:00:00Z")]
    pub start: String,
    /// Days of event time the events spread over.
    #[arg(long, default_value_t = 2)]
    pub days: u64,
    /// Share of deliberately bad lines.
    #[arg(long, default_value_t = 0.001)]
    pub bad_ratio: f64,
    /// Output file, or - for stdout.
    #[arg(long, default_value = "-")]
    pub output: PathBuf,
}

/// Lines written, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenStats {
    pub lines: u64,
    pub by_type: std::collections::BTreeMap<&'static str, u64>,
    pub duplicates: u64,
    pub bad: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("--start {0:?} is not an RFC 3339 time with offset")]
    Start(String),
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// Runs `pretext gen`: generates to the `--output` file or stdout.
pub fn run(args: &GenArgs) -> Result<GenStats, GenError> {
    validate(args)?;
    let path = args.output.display().to_string();
    let write_err = |source| GenError::Write {
        path: path.clone(),
        source,
    };
    if args.output.as_os_str() == "-" {
        let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
        let stats = generate(args, &mut out).map_err(write_err)?;
        out.flush().map_err(write_err)?;
        Ok(stats)
    } else {
        let mut out =
            BufWriter::with_capacity(1 << 20, File::create(&args.output).map_err(write_err)?);
        let stats = generate(args, &mut out).map_err(write_err)?;
        out.flush().map_err(write_err)?;
        Ok(stats)
    }
}

fn validate(args: &GenArgs) -> Result<(), GenError> {
    for (name, v) in [
        ("customers", args.customers),
        ("products", args.products),
        ("days", args.days),
    ] {
        if v == 0 {
            return Err(GenError::Zero(name));
        }
    }
    parse_rfc3339(&args.start)
        .map(|_| ())
        .ok_or_else(|| GenError::Start(args.start.clone()))
}

/// Writes `cfg.events` lines to `out`.
pub fn generate(cfg: &GenArgs, out: &mut dyn Write) -> io::Result<GenStats> {
    validate(cfg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut g = World::new(cfg);
    while g.stats.lines < cfg.events {
        g.step(out)?;
    }
    Ok(g.stats)
}

/// xoshiro256** seeded through splitmix64.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Exponentially distributed with the given mean.
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }
}

struct World<'a> {
    cfg: &'a GenArgs,
    rng: Rng,
    /// Cumulative Zipf(1.1) weights of products by popularity rank.
    popularity: Vec<f64>,
    /// Per customer: number of cookies (1–3).
    cookies: Vec<u8>,
    /// Per cookie (customer × 3 + j): identified yet.
    identified: Vec<bool>,
    now: Millis,
    mean_gap: f64,
    next_promotion: Millis,
    seq: u64,
    stats: GenStats,
}

impl<'a> World<'a> {
    fn new(cfg: &'a GenArgs) -> World<'a> {
        let mut rng = Rng::new(cfg.seed);
        let mut acc = 0.0;
        let popularity = (1..=cfg.products)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(1.1);
                acc
            })
            .collect();
        let cookies: Vec<u8> = (0..cfg.customers).map(|_| 1 + rng.below(3) as u8).collect();
        let start = parse_rfc3339(&cfg.start).unwrap_or(0);
        let span = (cfg.days * 24 * HOUR as u64) as f64;
        World {
            cfg,
            rng,
            popularity,
            identified: vec![false; cookies.len() * 3],
            cookies,
            now: start,
            mean_gap: span / cfg.events.max(1) as f64,
            next_promotion: start + 2 * HOUR,
            seq: 0,
            stats: GenStats::default(),
        }
    }

    fn product(&mut self) -> u64 {
        let total = self.popularity.last().copied().unwrap_or(1.0);
        let x = self.rng.f64() * total;
        self.popularity.partition_point(|&c| c < x) as u64
    }

    fn tick(&mut self) -> Millis {
        self.now += self.rng.exp(self.mean_gap).max(1.0) as Millis;
        // A few events arrive late, stamped up to 4 minutes before now.
        if self.rng.chance(0.02) {
            self.now - self.rng.below(4 * MINUTE as u64) as Millis
        } else {
            self.now
        }
    }

    /// `ts` as producers send it: mostly UTC, some with an offset, some epoch ms.
    fn ts(&mut self, t: Millis) -> String {
        match self.rng.below(10) {
            0..=6 => format!("\"{}\"", format_ts(t)),
            7 => {
                let local = format_ts(t + HOUR);
                format!("\"{}+01:00\"", &local[..local.len() - 1])
            }
            _ => t.to_string(),
        }
    }

    fn event_id(&mut self) -> String {
        self.seq += 1;
        format!("e{:08}", self.seq)
    }

    fn emit(&mut self, out: &mut dyn Write, kind: &'static str, line: String) -> io::Result<()> {
        if self.stats.lines >= self.cfg.events {
            return Ok(());
        }
        if self.rng.chance(self.cfg.bad_ratio) {
            let bad = self.corrupt(&line);
            self.stats.bad += 1;
            return self.write(out, &bad);
        }
        *self.stats.by_type.entry(kind).or_default() += 1;
        self.write(out, &line)?;
        if self.rng.chance(0.005) && self.stats.lines < self.cfg.events {
            self.stats.duplicates += 1;
            self.write(out, &line)?;
        }
        Ok(())
    }

    fn write(&mut self, out: &mut dyn Write, line: &str) -> io::Result<()> {
        self.stats.lines += 1;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")
    }

    /// A deliberately bad version of a line, one contract reason each.
    fn corrupt(&mut self, line: &str) -> String {
        match self.rng.below(6) {
            0 => line[..line.len() / 2].to_string(),
            1 => line.replacen("\"event_id\"", "\"evt_id\"", 1),
            2 => line.replacen("\"type\":\"", "\"type\":\"x_", 1),
            3 => line.replacen("{", "{\"ts\":\"yesterday\",", 1).replacen(
                ",\"ts\":",
                ",\"ts_orig\":",
                1,
            ),
            4 => line
                .replacen("\"event_id\":\"", "\"event_id\":[\"", 1)
                .replacen("\",\"ts\"", "\"],\"ts\"", 1),
            _ => line.replacen("\"event_id\":\"", "\"event_id\":\"\",\"x\":\"", 1),
        }
    }

    fn step(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if self.now >= self.next_promotion {
            self.promotion(out)?;
            self.next_promotion += 6 * HOUR + self.rng.below(2 * HOUR as u64) as Millis;
        }
        let c = self.rng.below(self.cfg.customers);
        let roll = self.rng.f64();
        if roll < 0.80 {
            self.session(out, c)
        } else if roll < 0.92 {
            self.store_purchase(out, c)
        } else if roll < 0.995 {
            self.consent(out, c)
        } else {
            self.erase(out, c)
        }
    }

    fn crm(c: u64) -> String {
        format!("C{c:06}")
    }

    fn cookie(c: u64, j: u64) -> String {
        format!("ck_{c:06}_{j}")
    }

    /// Browsing on one cookie: views, maybe a cart add, maybe a login, maybe
    /// a web purchase of something viewed.
    fn session(&mut self, out: &mut dyn Write, c: u64) -> io::Result<()> {
        let j = self.rng.below(u64::from(self.cookies[c as usize]));
        let slot = (c * 3 + j) as usize;
        let cookie = Self::cookie(c, j);
        let views = 1 + self.rng.below(5);
        let mut seen = Vec::new();
        // Some cookies log in during the session: ~30% of cookies overall.
        let login_at =
            (!self.identified[slot] && self.rng.chance(0.3)).then(|| self.rng.below(views + 1));
        for v in 0..views {
            if login_at == Some(v) {
                self.identify(out, c, &cookie, slot)?;
            }
            let p = self.product();
            seen.push(p);
            let kind = if self.rng.chance(0.2) {
                "add_to_cart"
            } else {
                "product_view"
            };
            self.view(out, c, &cookie, slot, p, kind)?;
        }
        if login_at == Some(views) {
            self.identify(out, c, &cookie, slot)?;
        }
        if self.rng.chance(0.12) {
            let p = seen[self.rng.below(seen.len() as u64) as usize];
            let crm = self.identified[slot].then(|| Self::crm(c));
            self.purchase(out, "web", crm, Some(cookie), p)?;
        }
        Ok(())
    }

    fn identify(
        &mut self,
        out: &mut dyn Write,
        c: u64,
        cookie: &str,
        slot: usize,
    ) -> io::Result<()> {
        self.identified[slot] = true;
        let source = ["login", "newsletter", "checkout"][self.rng.below(3) as usize];
        let (id, t) = (self.event_id(), self.tick());
        let ts = self.ts(t);
        let line = format!(
            r#"{{"type":"identify","event_id":"{id}","ts":{ts},"cookie_id":"{cookie}","crm_id":"{}","source":"{source}"}}"#,
            Self::crm(c)
        );
        self.emit(out, "identify", line)
    }

    fn view(
        &mut self,
        out: &mut dyn Write,
        c: u64,
        cookie: &str,
        slot: usize,
        p: u64,
        kind: &'static str,
    ) -> io::Result<()> {
        let (id, t) = (self.event_id(), self.tick());
        let ts = self.ts(t);
        let category = CATEGORIES[(p * 7 % CATEGORIES.len() as u64) as usize];
        let price = 9.9 + (p * 37 % 200) as f64;
        let crm = if self.identified[slot] && self.rng.chance(0.6) {
            format!(r#","crm_id":"{}""#, Self::crm(c))
        } else {
            String::new()
        };
        let quantity = if kind == "add_to_cart" {
            format!(r#","quantity":{}"#, 1 + self.rng.below(2))
        } else {
            String::new()
        };
        let line = format!(
            r#"{{"type":"{kind}","event_id":"{id}","ts":{ts},"cookie_id":"{cookie}","product_id":"P{p:05}","category":"{category}","price":{price:.2}{crm}{quantity}}}"#
        );
        self.emit(out, kind, line)
    }

    fn purchase(
        &mut self,
        out: &mut dyn Write,
        channel: &str,
        crm: Option<String>,
        cookie: Option<String>,
        p: u64,
    ) -> io::Result<()> {
        let (id, t) = (self.event_id(), self.tick());
        let ts = self.ts(t);
        let price = 9.9 + (p * 37 % 200) as f64;
        let who: String = [
            crm.map(|c| format!(r#","crm_id":"{c}""#)),
            cookie.map(|k| format!(r#","cookie_id":"{k}""#)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let line = format!(
            r#"{{"type":"purchase","event_id":"{id}","ts":{ts},"order_id":"o{}","channel":"{channel}"{who},"items":[{{"product_id":"P{p:05}","quantity":1,"price":{price:.2}}}],"total":{price:.2}}}"#,
            self.seq
        );
        self.emit(out, "purchase", line)
    }

    fn store_purchase(&mut self, out: &mut dyn Write, c: u64) -> io::Result<()> {
        let p = self.product();
        self.purchase(out, "store", Some(Self::crm(c)), None, p)
    }

    fn promotion(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let p = self.rng.below(self.cfg.products.min(20));
        let (id, t) = (self.event_id(), self.tick());
        let ts = self.ts(t);
        let discount = [10, 15, 20, 30, 50][self.rng.below(5) as usize];
        let price = if self.rng.chance(0.5) {
            format!(
                r#","promo_price":{:.2}"#,
                (9.9 + (p * 37 % 200) as f64) * (100 - discount) as f64 / 100.0
            )
        } else {
            String::new()
        };
        let until = format_ts(t + 3 * 24 * HOUR);
        let line = format!(
            r#"{{"type":"promotion","event_id":"{id}","ts":{ts},"product_id":"P{p:05}","discount_pct":{discount}{price},"valid_until":"{until}"}}"#
        );
        self.emit(out, "promotion", line)
    }

    fn consent(&mut self, out: &mut dyn Write, c: u64) -> io::Result<()> {
        let (id, t) = (self.event_id(), self.tick());
        let ts = self.ts(t);
        let mut fields = String::new();
        for ch in ["email", "sms", "ads"] {
            if self.rng.chance(0.5) {
                let on = if ch == "ads" {
                    self.rng.chance(0.3)
                } else {
                    self.rng.chance(0.7)
                };
                fields.push_str(&format!(r#","{ch}":{on}"#));
            }
        }
        let line = format!(
            r#"{{"type":"consent","event_id":"{id}","ts":{ts},"crm_id":"{}"{fields}}}"#,
            Self::crm(c)
        );
        self.emit(out, "consent", line)
    }

    fn erase(&mut self, out: &mut dyn Write, c: u64) -> io::Result<()> {
        // Rare: most draws that land here do nothing.
        if !self.rng.chance(0.1) {
            return Ok(());
        }
        for j in 0..3 {
            self.identified[(c * 3 + j) as usize] = false;
        }
        let (id, t) = (self.event_id(), self.tick());
        let ts = self.ts(t);
        let line = format!(
            r#"{{"type":"erase","event_id":"{id}","ts":{ts},"crm_id":"{}"}}"#,
            Self::crm(c)
        );
        self.emit(out, "erase", line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GenArgs,
    }

    fn args(extra: &[&str]) -> GenArgs {
        let mut argv = vec!["gen"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    fn bytes(a: &GenArgs) -> (Vec<u8>, GenStats) {
        let mut out = Vec::new();
        let stats = generate(a, &mut out).unwrap();
        (out, stats)
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let a = args(&[]);
        assert_eq!(bytes(&a).0, bytes(&a).0);
        assert_ne!(bytes(&a).0, bytes(&args(&["--seed", "7"])).0);
    }

    #[test]
    fn the_mix_is_realistic_and_good_lines_decode() {
        let a = args(&[
            "--events",
            "20000",
            "--customers",
            "2000",
            "--bad-ratio",
            "0.01",
        ]);
        let (out, stats) = bytes(&a);
        assert_eq!(stats.lines, 20_000);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 20_000);
        for t in crate::event::EVENT_TYPES {
            assert!(
                stats.by_type.get(t).copied().unwrap_or(0) > 0,
                "no {t} in {stats:?}"
            );
        }
        let mut rejected = 0;
        for line in text.lines() {
            if crate::decode::decode(line.as_bytes(), 1 << 20).is_err() {
                rejected += 1;
            }
        }
        assert_eq!(
            rejected, stats.bad,
            "exactly the deliberately bad lines are rejected"
        );
        assert!((100..=300).contains(&stats.bad), "{}", stats.bad);
    }

    #[test]
    fn the_bundled_sample_is_what_the_defaults_generate() {
        let sample = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/sample.jsonl"
        ))
        .unwrap();
        assert_eq!(
            sample,
            bytes(&args(&[])).0,
            "regenerate with: cargo run --release -- gen --output examples/sample.jsonl"
        );
    }
}
