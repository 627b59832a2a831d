//! Micro-benchmarks: decoding, the engine per event type, promotion fan-out
//! per 10k viewers, and the state records' binary form.
//!
//! `cargo bench --bench engine`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pretext::config::Config;
use pretext::decode::decode;
use pretext::engine::records::{decode as decode_record, encode, Interest, KindCode, Pending};
use pretext::engine::{Engine, Outputs};
use pretext::event::Event;

// The allocator the binary uses, so per-event costs match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_795_341_600_000;

fn event(line: &str) -> Event {
    decode(line.as_bytes(), 1 << 20).expect("valid bench event")
}

fn view_line(i: u64, crm: bool) -> String {
    let crm = if crm {
        format!(r#","crm_id":"C{}""#, i % 50_000)
    } else {
        String::new()
    };
    format!(
        r#"{{"type":"product_view","event_id":"v{i}","ts":{},"cookie_id":"ck{}","product_id":"P{}","category":"coats","price":79.9{crm}}}"#,
        T0 + i as i64 * 10,
        i % 80_000,
        i % 5_000
    )
}

fn bench_decode(c: &mut Criterion) {
    let lines = [
        ("product_view", view_line(1, true)),
        (
            "purchase",
            r#"{"type":"purchase","event_id":"o1","ts":"2026-11-22T10:15:00Z","order_id":"o1","channel":"store","crm_id":"C1","items":[{"product_id":"P1","quantity":1,"price":10.5},{"product_id":"P2"}],"total":10.5}"#.to_string(),
        ),
        (
            "promotion",
            format!(r#"{{"type":"promotion","event_id":"p1","ts":{T0},"product_id":"P1","discount_pct":20,"valid_until":"2026-12-01T00:00:00+01:00"}}"#),
        ),
    ];
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (name, line) in &lines {
        g.bench_function(*name, |b| {
            b.iter(|| decode(std::hint::black_box(line.as_bytes()), 1 << 20))
        });
    }
    g.finish();
}

fn bench_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = Engine::open(dir.path(), &Config::default()).expect("engine");
    let mut sink = Outputs::default();
    // Warm state: 50k customers with some history.
    for i in 0..200_000 {
        engine
            .apply(&event(&view_line(i, i % 3 == 0)), &mut sink)
            .expect("apply");
        if i % 20_000 == 0 {
            engine.commit(&[]).expect("commit");
        }
    }
    engine.commit(&[]).expect("commit");
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(1));
    let mut i = 1_000_000u64;
    g.bench_function("product_view_linked", |b| {
        b.iter_batched(
            || {
                i += 1;
                event(&view_line(i, true))
            },
            |e| engine.apply(&e, &mut sink).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("product_view_anonymous", |b| {
        b.iter_batched(
            || {
                i += 1;
                event(&view_line(i + 7_000_000, false).replace("\"ck", "\"anon"))
            },
            |e| engine.apply(&e, &mut sink).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("purchase", |b| {
        b.iter_batched(
            || {
                i += 1;
                event(&format!(
                    r#"{{"type":"purchase","event_id":"o{i}","ts":{},"order_id":"o{i}","channel":"store","crm_id":"C{}","items":[{{"product_id":"P{}"}}]}}"#,
                    T0 + 2_000_000_000 + i as i64,
                    i % 50_000,
                    i % 5_000
                ))
            },
            |e| engine.apply(&e, &mut sink).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("identify", |b| {
        b.iter_batched(
            || {
                i += 1;
                event(&format!(
                    r#"{{"type":"identify","event_id":"i{i}","ts":{},"cookie_id":"ck{}","crm_id":"C{}"}}"#,
                    T0 + 2_000_000_000 + i as i64,
                    i % 80_000,
                    i % 50_000
                ))
            },
            |e| engine.apply(&e, &mut sink).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("consent", |b| {
        b.iter_batched(
            || {
                i += 1;
                event(&format!(
                    r#"{{"type":"consent","event_id":"c{i}","ts":{},"crm_id":"C{}","email":true}}"#,
                    T0 + 2_000_000_000 + i as i64,
                    i % 50_000
                ))
            },
            |e| engine.apply(&e, &mut sink).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    drop(sink);
}

fn bench_fan_out(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    // No promotion cooldown, so every iteration fires for every viewer.
    let env = [(
        "PRETEXT__TRIGGERS__PROMO_ON_VIEWED_ITEM__COOLDOWN".to_string(),
        "0s".to_string(),
    )];
    let config = Config::load(None, env).expect("config");
    let mut engine = Engine::open(dir.path(), &config).expect("engine");
    let mut sink = Outputs::default();
    for i in 0..10_000u64 {
        let line = format!(
            r#"{{"type":"product_view","event_id":"v{i}","ts":{T0},"cookie_id":"ck{i}","crm_id":"C{i}","product_id":"HOT"}}"#
        );
        engine.apply(&event(&line), &mut sink).expect("apply");
    }
    engine.commit(&[]).expect("commit");
    let mut g = c.benchmark_group("promotion_fan_out");
    g.throughput(Throughput::Elements(10_000));
    g.sample_size(10);
    let mut n = 0i64;
    g.bench_function("10k_viewers", |b| {
        b.iter(|| {
            n += 1;
            let line = format!(
                r#"{{"type":"promotion","event_id":"p{n}","ts":{},"product_id":"HOT","discount_pct":10}}"#,
                T0 + 3_600_000 + n
            );
            sink = Outputs::default();
            engine.apply(&event(&line), &mut sink).expect("apply");
            assert_eq!(sink.triggers.len(), 10_000);
            if n % 4 == 0 {
                engine.commit(&[]).expect("commit");
            }
        })
    });
    g.finish();
}

fn bench_records(c: &mut Criterion) {
    let mut interest = Interest::default();
    for i in 0..8 {
        interest.add_view(T0 + i * 60_000, KindCode::ProductView);
    }
    interest.pending = Some(Pending {
        check_at: T0 + 3_600_000,
        first_view: T0,
    });
    let bytes = encode(&interest);
    let mut g = c.benchmark_group("records");
    g.bench_function("interest_encode", |b| {
        b.iter(|| encode(std::hint::black_box(&interest)))
    });
    g.bench_function("interest_decode", |b| {
        b.iter(|| decode_record::<Interest>("interest", std::hint::black_box(&bytes)))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_apply,
    bench_fan_out,
    bench_records
);
criterion_main!(benches);
