//! Times loads and drop separately on the 100,000-dicts workload (a profiling driver:
//! `cargo run --release -p cellar-marshal --example profile_marshal_loads`, or under perf / callgrind).
use std::time::Instant;

use cellar_marshal::{dumps, loads};

#[path = "../benches/workload.rs"]
mod workload;

fn main() {
    let v = workload::users(100_000);
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
