//! Damaged files: truncated, random bytes, a loop in a page chain, lying lengths. Every case
//! must end with an error or a partial read, never a panic, a hang or a huge allocation, and
//! `check` must say what is readable.

mod common;

use cellar_legacy::bdb::Bdb;
use cellar_legacy::gdbm::Gdbm;
use cellar_legacy::{Error, Report};
use common::fixture;

/// Everything a reader offers, on bytes that may be damaged.
fn exercise_gdbm(bytes: Vec<u8>) -> Option<Report> {
    let db = Gdbm::from_bytes(bytes).ok()?;
    let _ = db.len();
    let _ = db.keys();
    for (k, _) in db.iter().map_while(Result::ok).take(50) {
        let _ = db.get(&k);
    }
    let _ = db.get(b"key1");
    Some(db.check())
}

fn exercise_bdb(bytes: Vec<u8>) -> Option<Report> {
    let db = Bdb::from_bytes(bytes).ok()?;
    let _ = db.len();
    let mut keys = Vec::new();
    let _ = db.try_for_each(|k, _| -> cellar_legacy::Result<()> {
        if keys.len() < 50 {
            keys.push(k.to_vec());
        }
        Ok(())
    });
    for k in &keys {
        let _ = db.get(k);
    }
    let _ = db.keys();
    Some(db.check())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn truncated_files_fail_cleanly() {
    for (name, gdbm) in [
        ("gnu_churn", true),
        ("gnu_bigval", true),
        ("ndbm_churn", false),
        ("ndbm_bigval", false),
    ] {
        let Some(f) = fixture(name) else { return };
        let full = std::fs::read(&f.file).unwrap();
        let mut cut = 0;
        let step = (full.len() / 97).max(1);
        while cut < full.len() {
            let bytes = full[..cut].to_vec();
            let report = if gdbm {
                exercise_gdbm(bytes)
            } else {
                exercise_bdb(bytes)
            };
            if let Some(r) = report {
                // Either check names the damage, or every pair really is intact (the cut fell
                // in free space past the last record).
                if r.is_ok() {
                    let mut got = if gdbm {
                        Gdbm::from_bytes(full[..cut].to_vec())
                            .unwrap()
                            .iter()
                            .collect::<Result<Vec<_>, _>>()
                            .unwrap()
                    } else {
                        Bdb::from_bytes(full[..cut].to_vec())
                            .unwrap()
                            .items_vec()
                            .unwrap()
                    };
                    got.sort();
                    assert!(
                        got == f.pairs(),
                        "{name} cut at {cut}: check is silent on a loss"
                    );
                }
            }
            cut += step;
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (name, gdbm) in [
        ("gnu_binary", true),
        ("ndbm_binary", false),
        ("gnu_small", true),
    ] {
        let Some(f) = fixture(name) else { return };
        let full = std::fs::read(&f.file).unwrap();
        for round in 0..300 {
            let mut bytes = full.clone();
            let hits = 1 + rng.next() % 16;
            for _ in 0..hits {
                let at = (rng.next() % bytes.len() as u64) as usize;
                bytes[at] = rng.next() as u8;
            }
            let _ = round;
            if gdbm {
                exercise_gdbm(bytes);
            } else {
                exercise_bdb(bytes);
            }
        }
    }
}

fn gdbm_first_bucket(bytes: &[u8]) -> usize {
    let dir = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    u64::from_le_bytes(bytes[dir..dir + 8].try_into().unwrap()) as usize
}

#[test]
fn gdbm_lying_lengths_are_refused() {
    let Some(f) = fixture("gnu_small") else {
        return;
    };
    let good = std::fs::read(&f.file).unwrap();
    let b = gdbm_first_bucket(&good);
    // The first used slot of the first bucket.
    let slot = (0..166)
        .map(|i| b + 112 + 24 * i)
        .find(|&e| good[e..e + 4] != [0xff; 4])
        .unwrap();
    for (field, value) in [(20usize, 0x7fff_ffffu32), (16, 0x7fff_fff0)] {
        let mut bytes = good.clone();
        bytes[slot + field..slot + field + 4].copy_from_slice(&value.to_le_bytes());
        let db = Gdbm::from_bytes(bytes).unwrap();
        let e = db.iter().find_map(|r| r.err()).expect("an error");
        assert!(e.is_corrupt(), "{e}");
        assert!(e.to_string().contains("past the end of the file"), "{e}");
        let r = db.check();
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(r.readable as usize, f.count - 1);
    }
    // A header whose directory claims 2^31 entries.
    let mut bytes = good.clone();
    bytes[20..24].copy_from_slice(&31u32.to_le_bytes());
    let e = Gdbm::from_bytes(bytes).unwrap_err();
    assert!(e.to_string().contains("dir_size"), "{e}");
    // A bucket count that the slots do not match.
    let mut bytes = good.clone();
    bytes[b + 108..b + 112].copy_from_slice(&100_000u32.to_le_bytes());
    let e = Gdbm::from_bytes(bytes).unwrap().len().unwrap_err();
    assert!(e.to_string().contains("bucket count"), "{e}");
    // Not GDBM at all.
    let e = Gdbm::from_bytes(b"hello world, not a database".to_vec()).unwrap_err();
    assert!(matches!(e, Error::NotRecognised { .. }), "{e}");
}

/// Page numbers of the pages of type `t` in a little-endian Berkeley DB file.
fn bdb_pages_of_type(bytes: &[u8], t: u8) -> Vec<usize> {
    let ps = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    (1..bytes.len() / ps)
        .filter(|p| bytes[p * ps + 25] == t)
        .collect()
}

#[test]
fn bdb_overflow_chain_loop_is_an_error() {
    let Some(f) = fixture("ndbm_bigval") else {
        return;
    };
    let good = std::fs::read(&f.file).unwrap();
    let ps = 4096;
    let ov = bdb_pages_of_type(&good, 7);
    assert!(ov.len() > 100, "big values live on overflow pages");
    // Point the first overflow page of a chain at itself.
    let first = ov
        .iter()
        .copied()
        .find(|&p| good[p * ps + 12..p * ps + 16] == [0; 4])
        .unwrap();
    let mut bytes = good.clone();
    bytes[first * ps + 16..first * ps + 20].copy_from_slice(&(first as u32).to_le_bytes());
    let db = Bdb::from_bytes(bytes).unwrap();
    let e = db.items_vec().unwrap_err();
    assert!(e.to_string().contains("loops"), "{e}");
    let r = db.check();
    assert!(!r.is_ok());
    assert!(r.readable >= 2, "the small pairs stay readable: {r:?}");
}

#[test]
fn bdb_bucket_chain_loop_and_lying_lengths() {
    let Some(f) = fixture("ndbm_churn") else {
        return;
    };
    let good = std::fs::read(&f.file).unwrap();
    let ps = 4096;
    // Bucket 0 lives on page 1; make its chain come back to itself.
    let mut bytes = good.clone();
    bytes[ps + 16..ps + 20].copy_from_slice(&1u32.to_le_bytes());
    let e = Bdb::from_bytes(bytes).unwrap().len().unwrap_err();
    assert!(e.to_string().contains("reached twice"), "{e}");

    // An off-page item claiming 4 GiB.
    let Some(big) = fixture("ndbm_bigval") else {
        return;
    };
    let mut bytes = std::fs::read(&big.file).unwrap();
    let pos = (0..bytes.len() / ps)
        .filter(|p| bytes[p * ps + 25] == 13)
        .flat_map(|p| {
            let n = u16::from_le_bytes([bytes[p * ps + 20], bytes[p * ps + 21]]) as usize;
            (0..n).map(move |i| (p, i))
        })
        .map(|(p, i)| {
            let off = u16::from_le_bytes([bytes[p * ps + 26 + 2 * i], bytes[p * ps + 27 + 2 * i]]);
            p * ps + off as usize
        })
        .find(|&at| bytes[at] == 3)
        .expect("an off-page item");
    bytes[pos + 8..pos + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = Bdb::from_bytes(bytes).unwrap().items_vec().unwrap_err();
    assert!(e.to_string().contains("more than the file can hold"), "{e}");

    // Item offsets pointing outside the page.
    let mut bytes = good.clone();
    bytes[ps + 26..ps + 28].copy_from_slice(&5u16.to_le_bytes());
    let e = Bdb::from_bytes(bytes).unwrap().len().unwrap_err();
    assert!(e.to_string().contains("offset 5"), "{e}");

    // A page size that is not a power of two.
    let mut bytes = good.clone();
    bytes[20..24].copy_from_slice(&1000u32.to_le_bytes());
    let e = Bdb::from_bytes(bytes).unwrap_err();
    assert!(e.to_string().contains("page size"), "{e}");

    // A max_bucket of 2^32 - 1: scans stop at the first bucket past the end of the file
    // instead of walking four billion buckets.
    let mut bytes = good.clone();
    bytes[72..76].copy_from_slice(&u32::MAX.to_le_bytes());
    let db = Bdb::from_bytes(bytes).unwrap();
    let e = db.len().unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    let r = db.check();
    assert_eq!(
        r.readable as usize, f.count,
        "every real bucket is still read"
    );
    assert!(
        r.problems.iter().any(|p| p.contains("lie past the end")),
        "{r:?}"
    );
    let _ = f;
}

#[test]
fn salvage_of_a_truncated_file_returns_only_true_pairs() {
    for name in ["gnu_churn", "ndbm_churn", "ndbm_bigval"] {
        let Some(f) = fixture(name) else { return };
        let full = std::fs::read(&f.file).unwrap();
        let want: std::collections::HashSet<(Vec<u8>, Vec<u8>)> = f.pairs().into_iter().collect();
        for frac in [2, 3, 5] {
            let cut = full.len() - full.len() / frac;
            let path = f.dir.join(format!("{name}-cut{frac}"));
            std::fs::write(&path, &full[..cut]).unwrap();
            let db = cellar_legacy::LegacyDb::open(&path).unwrap();
            let mut got = Vec::new();
            let r = db.salvage(&mut |k, v| got.push((k.to_vec(), v.to_vec())));
            std::fs::remove_file(&path).unwrap();
            assert_eq!(r.readable as usize, got.len());
            assert!(!got.is_empty(), "{name} cut {frac}: nothing salvaged");
            for p in &got {
                assert!(
                    want.contains(p),
                    "{name} cut {frac}: salvaged a pair that was never stored"
                );
            }
            if got.len() < want.len() {
                assert!(!r.is_ok(), "{name} cut {frac}: lost pairs without a report");
            }
        }
    }
}
