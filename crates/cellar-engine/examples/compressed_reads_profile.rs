//! Benchmark (f2)'s read path for profiling: 100k random reads of 4 KiB compressible text
//! values stored with zstd level 1, and the same reads with compression off for comparison.
//! `cargo run --release -p cellar-engine --example compressed_reads_profile [DIR]`.

use std::time::Instant;

use cellar_engine::{Batch, Compression, Options, Store};

const WORDS: &[&str] = &[
    "the",
    "store",
    "value",
    "record",
    "python",
    "pickle",
    "shelve",
    "engine",
    "commit",
    "index",
    "durable",
    "offset",
    "header",
    "checksum",
    "batch",
    "reader",
    "writer",
    "compaction",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut x: u64 = 7;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut pairs = Vec::new();
    for _ in 0..100_000 {
        let key = next().to_le_bytes().repeat(2);
        let mut v = String::new();
        while v.len() < 4096 {
            v.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
            v.push(if next() % 12 == 0 { '\n' } else { ' ' });
        }
        v.truncate(4096);
        pairs.push((key, v.into_bytes()));
    }
    for (name, compression) in [
        ("zstd level 1", Compression::Zstd { level: 1 }),
        ("none", Compression::None),
    ] {
        let path = dir.join("cellar-f2-profile.db");
        let _ = std::fs::remove_file(&path);
        let s = Store::open(
            &path,
            Options {
                compression,
                auto_compact: false,
                ..Options::default()
            },
        )?;
        for chunk in pairs.chunks(1000) {
            let mut b = Batch::new();
            for (k, v) in chunk {
                b.put(k.clone(), v.clone());
            }
            s.batch(&b)?;
        }
        let size = std::fs::metadata(&path)?.len();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            for i in 0..pairs.len() {
                let j = (i * 7919) % pairs.len();
                let v = s.get(&pairs[j].0)?.ok_or("missing")?;
                assert_eq!(v.len(), 4096);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name}: {:.0} k reads/s, file {:.1} MB",
            pairs.len() as f64 / best / 1e3,
            size as f64 / 1e6
        );
        s.close()?;
        std::fs::remove_file(&path)?;
    }
    Ok(())
}
