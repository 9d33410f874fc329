//! Times loads and drop separately on the 100,000-dicts workload (a profiling driver:
//! `cargo run --release --example profile_loads`, or under perf / callgrind).
use std::time::Instant;

use cellar_marshal::{dumps, loads};
use cellar_value::Value;

fn main() {
    let (k_id, k_name, k_tags, k_score) = (
        Value::str("id"),
        Value::str("name"),
        Value::str("tags"),
        Value::str("score"),
    );
    let tags = Value::tuple(vec![Value::str("a"), Value::str("b")]);
    let items = (0..100_000)
        .map(|i| {
            Value::dict([
                (k_id.clone(), Value::int(i)),
                (k_name.clone(), Value::from(format!("user{i}"))),
                (k_tags.clone(), tags.clone()),
                (k_score.clone(), Value::Float(1.5)),
            ])
            .expect("hashable")
        })
        .collect();
    let v = Value::list(items);
    let bytes = dumps(&v, 4).expect("dumps");
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    for _ in 0..rounds {
        let t = Instant::now();
        let x = loads(&bytes).expect("loads");
        let t1 = t.elapsed();
        drop(x);
        let t2 = t.elapsed();
        let t3 = Instant::now();
        let _ = dumps(&v, 4).expect("dumps");
        println!(
            "loads {:?}  drop {:?}  dumps {:?}",
            t1,
            t2 - t1,
            t3.elapsed()
        );
    }
}
