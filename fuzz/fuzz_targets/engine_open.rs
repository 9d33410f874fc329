//! Fuzz the native engine's file reader: a store image (either raw fuzz bytes, or a valid store
//! built from the input and then damaged at input-chosen positions) is opened, read in every
//! way, checked, written to and reopened. Any outcome but a panic, a hang or a huge allocation
//! is fine: damage must surface as an error. Bit 1 of the first byte builds the valid store in
//! the compact form (docs/engine-format.md section 10: zstd BLOCKs, a BLOCKINDEX with its
//! filter, two DICT copies) by compacting it in a temporary file, so the damage lands in
//! compressed blocks, the block index and the dictionary too.
#![no_main]

use std::sync::Arc;

use cellar_engine::{Batch, MemStorage, Options, Store};
use libfuzzer_sys::fuzz_target;

fn exercise(image: Vec<u8>) {
    // Read-only first: damage must surface as an error, never a panic; iteration goes on
    // after a damaged record.
    if let Ok(r) = Store::open_storage(
        Arc::new(MemStorage::from_bytes(image.clone())),
        Options::from_dbm_flag("r").unwrap_or_default(),
    ) {
        // Point reads of every key a walk finds, and of near misses: lookups through the
        // blocks' hash tables (and the cache-warming thread they may start).
        if let Ok(keys) = r.keys() {
            for k in keys.iter().take(2_000) {
                let _ = r.get(k);
                let _ = r.get(&[k.as_slice(), b"\0"].concat());
            }
        }
        if let Ok(it) = r.iter() {
            for item in it.take(10_000) {
                let _ = item;
            }
        }
        let _ = r.check();
    }
    let mem = Arc::new(MemStorage::from_bytes(image));
    let Ok(s) = Store::open_storage(mem.clone(), Options::default()) else {
        return;
    };
    let _ = s.len();
    let _ = s.keys();
    let _ = s.for_each(|_, _| {});
    if let Ok(it) = s.iter() {
        for item in it.take(10_000) {
            let _ = item;
        }
    }
    let _ = s.get(b"k");
    let _ = s.check();
    let _ = s.stats();
    let _ = s.put(b"k", b"after");
    let mut b = Batch::new();
    b.put(b"x".to_vec(), b"y".to_vec()).delete(b"k".to_vec());
    let _ = s.batch(&b);
    let _ = s.close();
    // What the store left behind must reopen (or fail cleanly) too.
    if let Ok(s2) = Store::open_storage(
        Arc::new(MemStorage::from_bytes(mem.bytes())),
        Options::default(),
    ) {
        let _ = s2.for_each(|_, _| {});
        let _ = s2.check();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        exercise(rest.to_vec());
        return;
    }
    // A valid store made from the input, then damaged where the input says.
    let (ops, damage) = rest.split_at(rest.len() / 2);
    let compact = mode & 2 != 0;
    // Compaction needs a real file (it writes `<path>.compact` and renames it).
    let file = std::env::temp_dir().join(format!("cellar-fuzz-{}.db", std::process::id()));
    let mem = Arc::new(MemStorage::new());
    let opened = if compact {
        let _ = std::fs::remove_file(&file);
        let opts = Options {
            compact_form: true,
            auto_compact: false,
            ..Options::default()
        };
        Store::open(&file, opts)
    } else {
        Store::open_storage(mem.clone(), Options::default())
    };
    let Ok(s) = opened else {
        return;
    };
    for chunk in ops.chunks(6) {
        let key = &chunk[..chunk.len().min(2)];
        match chunk[0] % 4 {
            0 => {
                let _ = s.delete(key);
            }
            1 => {
                let mut b = Batch::new();
                b.put(key.to_vec(), chunk.repeat(20));
                b.put(chunk.to_vec(), key.to_vec());
                let _ = s.batch(&b);
            }
            _ => {
                let _ = s.put(key, chunk);
            }
        }
    }
    if compact {
        let _ = s.compact();
    }
    let _ = s.close();
    let mut image = if compact {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        bytes
    } else {
        mem.bytes()
    };
    if !image.is_empty() {
        for pair in damage.chunks(3) {
            if pair.len() == 3 {
                let pos = u16::from_le_bytes([pair[0], pair[1]]) as usize % image.len();
                image[pos] ^= pair[2] | 1;
            } else if let Some(&cut) = pair.first() {
                let keep = image.len().saturating_sub(cut as usize);
                image.truncate(keep);
            }
        }
    }
    exercise(image);
});
