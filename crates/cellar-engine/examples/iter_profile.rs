//! Times whole-store iteration (benchmark (d)) on a 1M-key store of 16-byte keys and 100-byte
//! values, for profiling: `cargo run --release -p cellar-engine --example iter_profile [DIR]
//! [compact|compact-cold|auto]`. With `compact`, the store is in the compact form and compacted
//! before the walks, so they read zstd blocks (the compact tier) instead of the log; with
//! `compact-cold`, each walk goes through a freshly opened handle (an empty block cache), as
//! benchmark (d) does; with `auto`, the compact form with background compaction on (what dbm
//! and shelve stores get), walked as the load left it.

use std::time::Instant;

use cellar_engine::{Batch, Options, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join("cellar-iter-profile.db");
    let _ = std::fs::remove_file(&path);
    let mode = std::env::args().nth(2).unwrap_or_default();
    let compact = mode.starts_with("compact") || mode == "auto";
    let cold = mode == "compact-cold";
    let opts = Options {
        compact_form: compact,
        auto_compact: mode == "auto",
        block_cache_bytes: std::env::var("CACHE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Options::default().block_cache_bytes),
        ..Options::default()
    };
    let mut s = Store::open(&path, opts.clone())?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..1000 {
        let mut b = Batch::new();
        for _ in 0..1000 {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&next().to_le_bytes());
            k[8..].copy_from_slice(&next().to_le_bytes());
            let v: Vec<u8> = (0..13)
                .flat_map(|_| next().to_le_bytes())
                .take(100)
                .collect();
            b.put(k.to_vec(), v);
        }
        s.batch(&b)?;
    }
    if compact && mode != "auto" {
        let t = Instant::now();
        s.compact()?;
        println!("compacted in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    for round in 0..7 {
        if cold {
            s.close()?;
            s = Store::open(&path, opts.clone())?;
        }
        let t = Instant::now();
        let mut n = 0u64;
        let mut sum = 0u64;
        s.for_each(|k, v| {
            n += 1;
            sum = sum.wrapping_add(k[0] as u64 + v.len() as u64);
        })?;
        let dt = t.elapsed();
        println!(
            "round {round}: {n} items in {:.1} ms = {:.0} k items/s (checksum {sum})",
            dt.as_secs_f64() * 1e3,
            n as f64 / dt.as_secs_f64() / 1e3
        );
    }
    s.close()?;
    std::fs::remove_file(&path)?;
    Ok(())
}
