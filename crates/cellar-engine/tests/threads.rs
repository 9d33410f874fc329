//! Multi-thread stress: readers never see a torn or foreign value while a writer overwrites,
//! deletes, batches and compacts; concurrent sync() calls are grouped.
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(clippy::manual_is_multiple_of)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cellar_engine::{Batch, Options, Store};

fn val(k: u32, gen: u32) -> Vec<u8> {
    let mut v = format!("{k}:{gen}:").into_bytes();
    v.resize(20 + (k as usize * 13 + gen as usize) % 300, b'.');
    v
}

fn check(k: u32, v: &[u8]) -> u32 {
    let s = std::str::from_utf8(v).unwrap();
    let mut parts = s.split(':');
    assert_eq!(
        parts.next().unwrap().parse::<u32>().unwrap(),
        k,
        "value of another key"
    );
    let gen: u32 = parts.next().unwrap().parse().unwrap();
    assert_eq!(v, val(k, gen).as_slice(), "torn value");
    gen
}

#[test]
fn readers_and_writers_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(
        Store::open(
            dir.path().join("db"),
            Options {
                compact_min_bytes: 256 << 10,
                compact_ratio: 0.4,
                ..Options::default()
            },
        )
        .unwrap(),
    );
    const KEYS: u32 = 500;
    let mut b = Batch::new();
    for k in 0..KEYS {
        b.put(k.to_le_bytes().to_vec(), val(k, 0));
    }
    s.batch(&b).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..3u32 {
        let s = Arc::clone(&s);
        let stop = Arc::clone(&stop);
        readers.push(std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut last = vec![0u32; KEYS as usize];
            let mut k = t;
            while !stop.load(Ordering::Relaxed) || reads < 1000 {
                k = (k * 7 + 13) % KEYS;
                if let Some(v) = s.get(&k.to_le_bytes()).unwrap() {
                    let gen = check(k, &v);
                    // A single reader never sees a key go back in time.
                    assert!(
                        gen >= last[k as usize],
                        "key {k} went from {} to {gen}",
                        last[k as usize]
                    );
                    last[k as usize] = gen;
                }
                reads += 1;
                if reads % 5000 == 0 {
                    for item in s.iter().unwrap() {
                        let (kb, v) = item.unwrap();
                        check(u32::from_le_bytes(kb.as_slice().try_into().unwrap()), &v);
                    }
                }
            }
            reads
        }));
    }
    let syncers: Vec<_> = (0..2)
        .map(|_| {
            let s = Arc::clone(&s);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    s.sync().unwrap();
                }
            })
        })
        .collect();
    for gen in 1..=60u32 {
        let mut b = Batch::new();
        for k in (0..KEYS).filter(|k| (k + gen) % 3 != 0) {
            b.put(k.to_le_bytes().to_vec(), val(k, gen));
        }
        s.batch(&b).unwrap();
        for k in (0..KEYS).step_by(7) {
            s.put(&k.to_le_bytes(), &val(k, gen)).unwrap();
        }
        if gen % 20 == 0 {
            s.compact().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() >= 1000);
    }
    for h in syncers {
        h.join().unwrap();
    }
    assert_eq!(s.len().unwrap(), KEYS as u64);
    assert!(s.stats().unwrap().generation >= 4);
    assert!(s.check().unwrap().is_ok());
}
