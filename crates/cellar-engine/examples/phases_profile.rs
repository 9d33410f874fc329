//! The hot paths of bench/engine's workloads (a) durable batches, (c) random reads and (d)
//! iteration, each in its own never-inlined function so that an instruction-count profile
//! (`valgrind --tool=callgrind`, then `callgrind_annotate --inclusive=yes`) gives the cost of
//! each phase on its own, repeatably on a loaded machine:
//!
//! ```sh
//! cargo build --release -p cellar-engine --example phases_profile
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/examples/phases_profile 100000 DIR
//! callgrind_annotate --inclusive=yes cg.out | grep phase_
//! ```
//!
//! Arguments: number of keys (default 100000, 16-byte keys, 100-byte values, batches of 1000,
//! each followed by `sync`), and the directory for the store (default: the temp dir).

use std::time::Instant;

use cellar_engine::{Batch, Options, Store};

type Kv = (Vec<u8>, Vec<u8>);

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[inline(never)]
fn phase_load(s: &Store, data: &[Kv]) -> Result<(), cellar_engine::Error> {
    for chunk in data.chunks(1000) {
        let mut b = Batch::new();
        for (k, v) in chunk {
            b.put(k.clone(), v.clone());
        }
        s.batch(&b)?;
        s.sync()?;
    }
    Ok(())
}

#[inline(never)]
fn phase_reads(s: &Store, data: &[Kv], order: &[usize]) -> Result<usize, cellar_engine::Error> {
    let mut found = 0;
    for &i in order {
        if s.get(&data[i].0)?.is_some() {
            found += 1;
        }
    }
    Ok(found)
}

#[inline(never)]
fn phase_iter(s: &Store) -> Result<(usize, usize), cellar_engine::Error> {
    let (mut n, mut b) = (0, 0);
    s.for_each(|k, v| {
        n += 1;
        b += k.len() + v.len();
    })?;
    Ok((n, b))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = match args.next() {
        Some(a) => a.parse()?,
        None => 100_000,
    };
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join("cellar-phases-profile.db");
    let _ = std::fs::remove_file(&path);
    let mut next = rng(0x9E37_79B9_7F4A_7C15);
    let data: Vec<Kv> = (0..n)
        .map(|_| {
            let k: Vec<u8> = (0..2).flat_map(|_| next().to_le_bytes()).collect();
            let v: Vec<u8> = (0..13)
                .flat_map(|_| next().to_le_bytes())
                .take(100)
                .collect();
            (k, v)
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let opts = Options {
        auto_compact: false,
        ..Options::default()
    };
    let s = Store::open(&path, opts)?;
    let t = Instant::now();
    phase_load(&s, &data)?;
    let load = t.elapsed();
    let t = Instant::now();
    let found = phase_reads(&s, &data, &order)?;
    let reads = t.elapsed();
    assert_eq!(found, n);
    let t = Instant::now();
    let (items, _) = phase_iter(&s)?;
    let iter = t.elapsed();
    assert_eq!(items, n);
    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64() / 1e3;
    println!(
        "(a) {:.0} k ops/s  (c) {:.0} k ops/s  (d) {:.0} k items/s",
        rate(load),
        rate(reads),
        rate(iter)
    );
    s.close()?;
    std::fs::remove_file(&path)?;
    Ok(())
}
