//! Random replay inputs for tests/model.rs: valid events of every type with
//! the timing patterns the contract's rules meet on (late, equal, far-late,
//! on a 5-minute grid), retries, id reuse, stitching, erases, and bad lines
//! of every rejection reason, each with one fault.

use serde_json::{json, Value};

/// 2026-11-22T00:00:00Z
pub const T0: i64 = 1_795_305_600_000;
pub const SEC: i64 = 1_000;
pub const MIN: i64 = 60 * SEC;
pub const HOUR: i64 = 60 * MIN;
pub const DAY: i64 = 24 * HOUR;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x1234_5678)
    }
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize].clone()
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How a profile's streams are made; percentages are of events.
pub struct Mix {
    /// typical gap between events
    pub unit: i64,
    pub lateness: i64,
    pub dedup: i64,
    /// late events reach up to this far behind the newest ts
    pub far: i64,
    pub late: u64,
    pub erase: u64,
    pub dup: u64,
    /// views of a fresh cookie (stitched when an identify links it)
    pub anon: u64,
    pub bad: u64,
    /// `input.max_message_bytes` when the profile lowers it
    pub max_bytes: Option<usize>,
}

fn long_id() -> String {
    format!("C{}", "é".repeat(127))
}

const PRODUCTS: &[&str] = &["P1", "P2", "P3"];
const CATEGORIES: &[&str] = &["coats", "shoes"];

pub struct Gen<'a> {
    rng: Rng,
    m: &'a Mix,
    now: i64,
    next_id: u64,
    /// valid events made so far, for retries, with their event time
    made: Vec<(Value, i64)>,
    cookies: Vec<String>,
    crms: Vec<String>,
    grid: bool,
}

impl<'a> Gen<'a> {
    pub fn new(m: &'a Mix, seed: u64) -> Gen<'a> {
        let cookies = (1..=6).map(|i| format!("k{i}")).collect();
        let mut crms: Vec<String> = ["C1", "C2", "C3", "Zoë-4"].map(String::from).to_vec();
        if seed % 5 == 2 {
            crms.push(long_id());
        }
        Gen {
            rng: Rng::new(seed),
            m,
            now: T0,
            next_id: 0,
            made: Vec::new(),
            cookies,
            crms,
            grid: seed % 3 == 0,
        }
    }

    /// The event time of the next event.
    fn ts(&mut self) -> i64 {
        let t = self.raw_ts();
        if self.grid {
            // on a 5-minute grid, checks, cooldowns and windows meet exactly
            t - (t - T0).rem_euclid(5 * MIN)
        } else if self.rng.chance(10) {
            t + 1 + self.rng.below(999) as i64
        } else {
            t
        }
    }

    fn raw_ts(&mut self) -> i64 {
        let u = self.m.unit;
        if self.rng.chance(self.m.late) {
            let back = self.rng.below(self.m.far.max(1) as u64) as i64;
            return self.now - self.m.lateness - back;
        }
        match self.rng.below(20) {
            0..=2 => self.now,
            3 => self.now - self.rng.below(self.m.lateness.max(1) as u64 + 1) as i64,
            4 => {
                self.now += u * (5 + self.rng.below(40) as i64);
                self.now
            }
            _ => {
                self.now += self.rng.below(2 * u as u64 / SEC as u64) as i64 * SEC;
                self.now
            }
        }
    }

    fn ts_value(&mut self, ms: i64) -> Value {
        let text = |ms: i64| pretext::time::format_ts(ms);
        match self.rng.below(10) {
            0 => json!(text(ms)),
            1 => json!(text(ms + HOUR).replace('Z', "+01:00")),
            2 => json!(text(ms - 5 * HOUR - 30 * MIN).replace('Z', "-05:30")),
            3 => json!(text(ms).replace('T', "t").replace('Z', "z")),
            _ => json!(ms),
        }
    }

    fn base(&mut self, kind: &str) -> (Value, i64) {
        self.next_id += 1;
        let ts = self.ts();
        let tv = self.ts_value(ts);
        let e = json!({"type": kind, "event_id": format!("e{}", self.next_id), "ts": tv});
        (e, ts)
    }

    fn cookie(&mut self) -> String {
        self.rng.pick(&self.cookies)
    }

    fn crm(&mut self) -> String {
        self.rng.pick(&self.crms)
    }

    fn view(&mut self, kind: &str) -> (Value, i64) {
        let (mut e, ts) = self.base(kind);
        let cookie = if self.rng.chance(self.m.anon) {
            let fresh = format!("n{}", self.next_id);
            self.cookies.push(fresh.clone());
            fresh
        } else {
            self.cookie()
        };
        e["cookie_id"] = json!(cookie);
        e["product_id"] = json!(self.rng.pick(PRODUCTS));
        match self.rng.below(10) {
            0..=4 => e["category"] = json!(self.rng.pick(CATEGORIES)),
            5 => e["category"] = Value::Null,
            _ => {}
        }
        match self.rng.below(20) {
            0..=2 => e["crm_id"] = json!(self.crm()),
            3 => e["crm_id"] = Value::Null,
            _ => {}
        }
        if self.rng.chance(30) {
            e["price"] = json!(19.5);
        }
        if kind == "add_to_cart" && self.rng.chance(30) {
            e["quantity"] = json!(2);
        }
        (e, ts)
    }

    fn identify(&mut self) -> (Value, i64) {
        let (mut e, ts) = self.base("identify");
        e["cookie_id"] = json!(self.cookie());
        e["crm_id"] = json!(self.crm());
        if self.rng.chance(50) {
            e["source"] = json!("login");
        }
        (e, ts)
    }

    fn purchase(&mut self) -> (Value, i64) {
        let (mut e, ts) = self.base("purchase");
        e["order_id"] = json!(format!("O{}", self.next_id));
        let store = self.rng.chance(30);
        e["channel"] = json!(if store { "store" } else { "web" });
        match self.rng.below(3) {
            0 => e["crm_id"] = json!(self.crm()),
            1 => e["cookie_id"] = json!(self.cookie()),
            _ => {
                e["crm_id"] = json!(self.crm());
                e["cookie_id"] = json!(self.cookie());
            }
        }
        let first = self.rng.pick(PRODUCTS);
        let mut items = vec![json!({"product_id": first, "quantity": 1})];
        match self.rng.below(8) {
            0 | 1 => items.push(json!({"product_id": self.rng.pick(PRODUCTS), "price": 5.0})),
            2 => items.push(json!({"product_id": first})),
            _ => {}
        }
        e["items"] = json!(items);
        if self.rng.chance(30) {
            e["total"] = json!(24.5);
        }
        (e, ts)
    }

    fn promotion(&mut self) -> (Value, i64) {
        let (mut e, ts) = self.base("promotion");
        e["product_id"] = json!(self.rng.pick(PRODUCTS));
        match self.rng.below(5) {
            0 => e["discount_pct"] = json!(15),
            1 => e["discount_pct"] = json!(12.5),
            2 => e["discount_pct"] = json!(100),
            _ => {}
        }
        if self.rng.chance(40) {
            e["promo_price"] = json!(9.99);
        }
        if self.rng.chance(50) {
            // sometimes already expired: the fan-out passes it on
            let until = ts + DAY - self.rng.below(2) as i64 * 2 * DAY;
            e["valid_until"] = self.ts_value(until);
        }
        (e, ts)
    }

    fn consent(&mut self) -> (Value, i64) {
        let (mut e, ts) = self.base("consent");
        e["crm_id"] = json!(self.crm());
        for ch in ["email", "sms", "ads"] {
            match self.rng.below(5) {
                0 | 1 => e[ch] = json!(self.rng.chance(50)),
                2 => e[ch] = Value::Null,
                _ => {}
            }
        }
        (e, ts)
    }

    /// A retry of an earlier event (the same line, at any age), or an
    /// earlier id on a new event: within the dedup window of the first
    /// (ignored), exactly at its edge (ignored: "within"), or beyond it.
    fn retry(&mut self) -> Option<(Value, i64)> {
        if self.made.is_empty() {
            return None;
        }
        let (old, old_ts) = self.rng.pick(&self.made);
        let (mut e, ts) = match self.rng.below(6) {
            0..=2 => return Some((old, old_ts)),
            3 => self.view("product_view"),
            4 => {
                let (e, _) = self.view("add_to_cart");
                let sign = if self.rng.chance(50) { 1 } else { -1 };
                let edge = old_ts + sign * (self.m.dedup + self.rng.below(2) as i64);
                let mut e = e;
                e["ts"] = json!(edge);
                (e, edge)
            }
            _ => {
                self.now = self.now.max(old_ts + self.m.dedup + self.m.unit * 3);
                let (mut e, _) = self.identify();
                e["ts"] = json!(self.now);
                (e, self.now)
            }
        };
        e["event_id"] = old["event_id"].clone();
        Some((e, ts))
    }

    fn event(&mut self) -> Option<(Value, i64)> {
        if self.rng.chance(self.m.erase) {
            let (mut e, ts) = self.base("erase");
            e["crm_id"] = json!(self.crm());
            return Some((e, ts));
        }
        if self.rng.chance(self.m.dup) {
            return self.retry();
        }
        Some(match self.rng.below(100) {
            0..=34 => self.view("product_view"),
            35..=46 => self.view("add_to_cart"),
            47..=62 => self.identify(),
            63..=74 => self.purchase(),
            75..=86 => self.promotion(),
            _ => self.consent(),
        })
    }

    /// The stream: each line's bytes (no newline).
    pub fn lines(mut self) -> Vec<Vec<u8>> {
        let n = 20 + self.rng.below(181);
        let mut out = Vec::new();
        while (out.len() as u64) < n {
            let Some((e, ts)) = self.event() else {
                continue;
            };
            if self.rng.chance(self.m.bad) {
                out.push(self.bad_line(e));
                continue;
            }
            self.made.push((e.clone(), ts));
            out.push(self.good_line(e));
        }
        out
    }

    /// A valid event, sometimes in an accepted odd form.
    fn good_line(&mut self, mut e: Value) -> Vec<u8> {
        match self.rng.below(30) {
            0 => e["x_unknown"] = json!({"nested": [1, 2, {"a": null}], "big": 1e300}),
            1 => e["quantity"] = json!("two"), // not a field of most types: ignored
            2 => return format!("  {e}\t").into_bytes(),
            3 => return format!("{e}\r").into_bytes(),
            4 => {
                if let Some(max) = self.m.max_bytes {
                    return pad_to(e, max);
                }
            }
            _ => {}
        }
        e.to_string().into_bytes()
    }
}

/// `e` padded with an unknown field to exactly `size` bytes (or as is when
/// it is already longer).
fn pad_to(mut e: Value, size: usize) -> Vec<u8> {
    e["pad"] = json!("");
    let len = e.to_string().len();
    if len < size {
        e["pad"] = json!("p".repeat(size - len));
    }
    e.to_string().into_bytes()
}

impl Gen<'_> {
    /// One fault in an event (section 6): the line is rejected.
    fn bad_line(&mut self, mut e: Value) -> Vec<u8> {
        let kind = e["type"].as_str().unwrap_or_default().to_string();
        let field = self.rng.pick(required(&kind));
        let text = e.to_string();
        match self.rng.below(12) {
            0 => {
                return if self.rng.chance(50) {
                    vec![]
                } else {
                    b"  ".to_vec()
                }
            }
            1 => return text.as_bytes()[..text.len() / 2].to_vec(),
            2 => {
                let mut b = br#"{"junk":""#.to_vec();
                b.push(0xFF);
                b.extend_from_slice(br#"","#);
                b.extend_from_slice(&text.as_bytes()[1..]);
                return b;
            }
            3 => return format!("[{text}]").into_bytes(),
            4 => {
                e.as_object_mut().unwrap().remove(field);
            }
            5 => e[field] = Value::Null,
            6 => e[field] = self.wrong_type(field),
            7 => e["type"] = json!(self.rng.pick(&["page_view", "PRODUCT_VIEW", ""])),
            8 => {
                let bad = [
                    "2026-11-22 10:00:00Z",
                    "2026-02-30T00:00:00Z",
                    "2026-11-22T10:00:00",
                ];
                e["ts"] = if self.rng.chance(25) {
                    json!(1_795_305_600_000.5)
                } else {
                    json!(self.rng.pick(&bad))
                };
            }
            9 => self.invalid_value(&mut e, &kind),
            10 => {
                if let Some(max) = self.m.max_bytes {
                    return pad_to(e, max + 1);
                }
                e["type"] = json!(7);
            }
            _ => self.bad_optional(&mut e, &kind),
        }
        e.to_string().into_bytes()
    }

    fn wrong_type(&mut self, field: &str) -> Value {
        match field {
            "items" => json!({"product_id": "P1"}),
            "ts" => json!(self.rng.pick(&[json!(true), json!([1]), json!({"ms": 1})])),
            _ => json!(self
                .rng
                .pick(&[json!(5), json!(false), json!(["x"]), json!({})])),
        }
    }

    fn invalid_value(&mut self, e: &mut Value, kind: &str) {
        match (kind, self.rng.below(3)) {
            ("purchase", 0) => e["channel"] = json!(self.rng.pick(&["phone", "WEB"])),
            ("purchase", 1) => e["items"] = json!([]),
            ("purchase", _) => e["items"][0]["quantity"] = json!(1.5),
            ("promotion", 0 | 1) => e["discount_pct"] = json!(self.rng.pick(&[0.0, -10.0, 100.5])),
            ("add_to_cart", 0) => e["quantity"] = json!(2.0),
            (_, 0) => e["event_id"] = json!("e".repeat(129)),
            _ => {
                let field = self.rng.pick(required(kind));
                if field == "ts" || field == "channel" || field == "items" {
                    e["event_id"] = json!("");
                } else {
                    e[field] = json!(if self.rng.chance(50) {
                        String::new()
                    } else {
                        "é".repeat(129)
                    });
                }
            }
        }
    }

    /// A wrong-typed optional field, or a broken item.
    fn bad_optional(&mut self, e: &mut Value, kind: &str) {
        match kind {
            "product_view" | "add_to_cart" => e["price"] = json!("19.5"),
            "identify" => e["source"] = json!(1),
            "purchase" => match self.rng.below(3) {
                0 => e["items"] = json!([{"quantity": 1}]),
                1 => e["items"] = json!(["P1"]),
                _ => {
                    let o = e.as_object_mut().unwrap();
                    o.remove("crm_id");
                    o.insert("cookie_id".into(), Value::Null);
                }
            },
            "promotion" => e["valid_until"] = json!("2026-11-23"),
            "consent" => e["email"] = json!("yes"),
            _ => e["crm_id"] = json!(42),
        }
    }
}

fn required(kind: &str) -> &'static [&'static str] {
    match kind {
        "product_view" | "add_to_cart" => &["event_id", "ts", "type", "cookie_id", "product_id"],
        "identify" => &["event_id", "ts", "type", "cookie_id", "crm_id"],
        "purchase" => &["event_id", "ts", "order_id", "channel", "items"],
        "promotion" => &["event_id", "ts", "product_id"],
        _ => &["event_id", "ts", "crm_id"],
    }
}
