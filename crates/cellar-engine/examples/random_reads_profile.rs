//! Benchmark (c)'s read path for profiling: 500k random 16-byte keys with random 100-byte
//! values written in durable batches of 1,000 through a default (shared-mode) handle, then
//! 1M random point reads through the same handle, timed alone (so `perf record` of this
//! program is mostly the reads: the load takes about a tenth of the time).
//! `cargo run --release -p cellar-engine --example random_reads_profile [DIR] [blocks]`:
//! with `blocks`, the store is opened as dbm and shelve stores are (compact form, background
//! compaction) and compacted before the reads, so every read is served from a block; with
//! `reopen`, opened the same way but closed after the load (the close-time fold compacts it)
//! and reopened, as bench/engine does, so round 0 starts with a cold block cache.

use std::time::Instant;

use cellar_engine::{Batch, Options, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut x: u64 = 42;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 500_000usize;
    let mut keys = Vec::with_capacity(n);
    let mode = std::env::args().nth(2).unwrap_or_default();
    let reopen = mode == "reopen";
    let blocks = mode == "blocks" || reopen;
    let path = dir.join("cellar-c-profile.db");
    let _ = std::fs::remove_file(&path);
    let opts = if blocks {
        Options {
            compact_form: true,
            auto_compact: true,
            ..Options::default()
        }
    } else {
        Options::default()
    };
    let mut s = Store::open(&path, opts.clone())?;
    for _ in 0..n / 1000 {
        let mut b = Batch::new();
        for _ in 0..1000 {
            let k = [next().to_le_bytes(), next().to_le_bytes()].concat();
            let v: Vec<u8> = (0..13)
                .flat_map(|_| next().to_le_bytes())
                .take(100)
                .collect();
            keys.push(k.clone());
            b.put(k, v);
        }
        s.batch(&b)?;
        s.sync()?;
    }
    if reopen {
        s.close()?;
        s = Store::open(&path, opts)?;
    } else if blocks {
        s.compact()?;
    }
    // `once` (a third argument): every key read once, in a shuffled order, as bench/engine (c).
    let order: Vec<usize> = if std::env::args().nth(3).as_deref() == Some("once") {
        let mut o: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            o.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        o
    } else {
        (0..2 * n).map(|_| (next() % n as u64) as usize).collect()
    };
    for round in 0..4 {
        // Even rounds read with `get` (an owned copy), odd ones with `get_with` (the value
        // where it lies), as bench/engine does since its run 10.
        let t = Instant::now();
        let mut found = 0usize;
        for &i in &order {
            let hit = if round % 2 == 0 {
                s.get(&keys[i])?.is_some()
            } else {
                s.get_with(&keys[i], <[u8]>::len)?.is_some()
            };
            found += usize::from(hit);
        }
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(found, order.len());
        println!(
            "round {round} ({}): {:.0} k reads/s ({:.0} ns a read)",
            if round % 2 == 0 { "get" } else { "get_with" },
            order.len() as f64 / dt / 1e3,
            dt * 1e9 / order.len() as f64
        );
    }
    s.close()?;
    std::fs::remove_file(&path)?;
    Ok(())
}
