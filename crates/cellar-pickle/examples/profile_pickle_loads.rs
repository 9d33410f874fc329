//! Profiling harness for loads on the benchmark workload (100,000 small dicts, protocol 5):
//! `cargo run --release -p cellar-pickle --example profile_pickle_loads` under perf.
use cellar_pickle::{dumps, loads, LoadOptions, Registry};
use cellar_value::Value;

fn main() {
    let (k_id, k_name, k_tags, k_score) = (
        Value::str("id"),
        Value::str("name"),
        Value::str("tags"),
        Value::str("score"),
    );
    let tags = Value::tuple(vec![Value::str("a"), Value::str("b")]);
    let v = Value::list(
        (0..100_000)
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
    );
    let reg = Registry::default();
    let bytes = dumps(&v, 5, &reg).expect("dumps");
    let t = std::time::Instant::now();
    for _ in 0..10 {
        let v = loads(&bytes, &reg, &LoadOptions::default()).expect("loads");
        drop(v);
    }
    println!("loads: {:?} per run", t.elapsed() / 10);
    let t = std::time::Instant::now();
    let mut keep = Vec::new();
    for _ in 0..10 {
        keep.push(loads(&bytes, &reg, &LoadOptions::default()).expect("loads"));
    }
    println!("loads without drop: {:?} per run", t.elapsed() / 10);
    drop(keep);
    if std::env::args().any(|a| a == "--loads-only") {
        return;
    }
    let t = std::time::Instant::now();
    for _ in 0..10 {
        let b = dumps(&v, 5, &reg).expect("dumps");
        drop(b);
    }
    println!("dumps: {:?} per run", t.elapsed() / 10);
}
