//! Criterion benchmarks of the Rust marshal codec (bytes <-> cellar Value) on the three
//! workloads of the foundation issue. The Python-facing comparison with CPython's C marshal
//! (cellar.marshal straight to Python objects) is bench/python/marshal_bench.py.
//!
//! `cargo bench -p cellar-marshal --bench marshal`

use std::hint::black_box;

use cellar_marshal::{dumps, loads};
use cellar_value::{PyStr, Value};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod workload;

fn big_str() -> Value {
    Value::from(PyStr::new(&"x".repeat(1 << 20)))
}

fn module_code() -> Option<Value> {
    // The stdlib's largest module, compiled by the machine's python3 (skipped if absent).
    let out = std::process::Command::new("python3")
        .args(["-c", "import marshal,sys,sysconfig,os; p=os.path.join(sysconfig.get_paths()['stdlib'],'typing.py'); sys.stdout.buffer.write(marshal.dumps(compile(open(p).read(),p,'exec')))"])
        .output()
        .ok()?;
    loads(&out.stdout).ok()
}

fn bench(c: &mut Criterion) {
    let mut cases = vec![
        ("a_100k_dicts", workload::users(100_000)),
        ("b_1mb_str", big_str()),
    ];
    if let Some(code) = module_code() {
        cases.push(("c_module_code", code));
    }
    for (name, v) in &cases {
        let bytes = dumps(v, 4).expect("dumps");
        let mut g = c.benchmark_group(*name);
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function("dumps", |b| {
            b.iter(|| dumps(black_box(v), 4).expect("dumps"))
        });
        g.bench_function("loads", |b| {
            b.iter(|| loads(black_box(&bytes)).expect("loads"))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
