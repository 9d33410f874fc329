//! The compact form against the plain log on issue 14's record shape (a small pickled dict
//! `{"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5}` under `key%d`): file
//! size after compaction, random reads (block cache warm and cold), iteration, and writes on
//! top of a compacted store.
//! `cargo run --release -p cellar-engine --example compact_profile [N] [DIR]` (N = 100000).

use std::time::Instant;

use cellar_engine::{Batch, Options, Store};

fn value(i: u64) -> Vec<u8> {
    // pickle.dumps({"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5}, 4)
    let mut v = b"\x80\x04\x95".to_vec();
    v.extend_from_slice(&[0x37, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(b"}\x94(\x8c\x02id\x94J");
    v.extend_from_slice(&(i as u32).to_le_bytes());
    v.extend_from_slice(b"\x8c\x04name\x94\x8c");
    let name = format!("user{i}");
    v.push(name.len() as u8);
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(b"\x94\x8c\x04tags\x94\x8c\x01a\x94\x8c\x01b\x94\x86\x94\x8c\x05score\x94G?\xf8\x00\x00\x00\x00\x00\x00u.");
    v
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = match args.next() {
        Some(a) => a.parse()?,
        None => 100_000,
    };
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let mut order: Vec<u64> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for compact_form in [false, true] {
        let path = dir.join(format!("cellar-compact-profile-{compact_form}.db"));
        let _ = std::fs::remove_file(&path);
        let opts = Options {
            compact_form,
            auto_compact: false,
            ..Options::default()
        };
        let s = Store::open(&path, opts.clone())?;
        let t = Instant::now();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let mut b = Batch::new();
            for &i in chunk {
                b.put(format!("key{i}").into_bytes(), value(i));
            }
            s.batch(&b)?;
        }
        let load = t.elapsed();
        let t = Instant::now();
        s.compact()?;
        let compact = t.elapsed();
        s.close()?;
        let size = std::fs::metadata(&path)?.len();
        let s = Store::open(&path, opts.clone())?;
        let mut rates = Vec::new();
        for _round in 0..3 {
            let t = Instant::now();
            for &i in &order {
                let v = s.get(format!("key{i}").as_bytes())?;
                assert!(v.is_some());
            }
            rates.push(n as f64 / t.elapsed().as_secs_f64() / 1e3);
        }
        let t = Instant::now();
        let mut items = 0u64;
        s.for_each(|_, _| items += 1)?;
        let iter = t.elapsed();
        assert_eq!(items, n);
        let t = Instant::now();
        for chunk in (n..n + n / 10).collect::<Vec<_>>().chunks(1000) {
            let mut b = Batch::new();
            for &i in chunk {
                b.put(format!("key{i}").into_bytes(), value(i));
            }
            s.batch(&b)?;
        }
        let more = t.elapsed();
        let st = s.stats()?;
        println!(
            "compact_form={compact_form}: {n} records, file {:.2} MB ({:.1} B/record) after \
             compact; load {:.0} k/s, compact {:.2} s; reads {:.0}/{:.0}/{:.0} k/s (3 rounds); \
             iteration {:.0} k/s; {} new keys on top {:.0} k/s; blocks {} dict {} B cache \
             hits {} misses {}",
            size as f64 / 1e6,
            size as f64 / n as f64,
            n as f64 / load.as_secs_f64() / 1e3,
            compact.as_secs_f64(),
            rates[0],
            rates[1],
            rates[2],
            n as f64 / iter.as_secs_f64() / 1e3,
            n / 10,
            (n / 10) as f64 / more.as_secs_f64() / 1e3,
            st.compact_blocks,
            st.dictionary_bytes,
            st.block_cache_hits,
            st.block_cache_misses,
        );
        s.close()?;
        std::fs::remove_file(&path)?;
    }
    Ok(())
}
