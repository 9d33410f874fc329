//! Criterion benchmarks of the Rust pickle codec (bytes <-> cellar Value) on the issue's
//! workload: a list of 100,000 small dicts at protocol 5. CPython's C pickle on the same data
//! for comparison: see docs/pickle.md (measured with python3 -m timeit).
//!
//! `cargo bench -p cellar-pickle --bench pickle`

use std::hint::black_box;

use cellar_pickle::{dumps, loads, LoadOptions, Registry};
use cellar_value::Value;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// `[{"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5} for i in range(n)]`,
/// keys and the tags tuple shared as CPython shares its constants.
fn users(n: i64) -> Value {
    let (k_id, k_name, k_tags, k_score) = (
        Value::str("id"),
        Value::str("name"),
        Value::str("tags"),
        Value::str("score"),
    );
    let tags = Value::tuple(vec![Value::str("a"), Value::str("b")]);
    Value::list(
        (0..n)
            .map(|i| {
                Value::dict([
                    (k_id.clone(), Value::int(i)),
                    (k_name.clone(), Value::from(format!("user{i}"))),
                    (k_tags.clone(), tags.clone()),
                    (k_score.clone(), Value::Float(1.5)),
                ])
                .expect("hashable keys")
            })
            .collect(),
    )
}

fn bench(c: &mut Criterion) {
    let reg = Registry::default();
    let v = users(100_000);
    let bytes = dumps(&v, 5, &reg).expect("dumps");
    let mut g = c.benchmark_group("a_100k_dicts_p5");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("dumps", |b| {
        b.iter(|| dumps(black_box(&v), 5, &reg).expect("dumps"))
    });
    g.bench_function("loads", |b| {
        b.iter(|| loads(black_box(&bytes), &reg, &LoadOptions::default()).expect("loads"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
