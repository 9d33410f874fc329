//! Berkeley DB 1.85 hash files written by libdb1 (glibc's db1, the code under macOS/BSD ndbm),
//! kept in tests/fixtures/db185 with the tool and script that made them; cellar must read
//! exactly the pairs libdb1 read back.

mod common;

use std::path::Path;

use cellar_legacy::bdb185::Bdb185;
use cellar_legacy::{ByteOrder, LegacyDb};
use common::unhex;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/db185")
}

fn pairs(name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let text = std::fs::read_to_string(dir().join(format!("db185-{name}.pairs"))).unwrap();
    let mut v: Vec<_> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (unhex(k), unhex(v))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn libdb1_files_read_exactly() {
    for name in ["small", "binary", "big"] {
        let want = pairs(name);
        for (order, bo) in [("le", ByteOrder::Little), ("be", ByteOrder::Big)] {
            let file = dir().join(format!("db185-{order}-{name}.db"));
            let label = format!("{order}-{name}");
            let db = match LegacyDb::open(&file).unwrap_or_else(|e| panic!("{label}: {e}")) {
                LegacyDb::Bdb185(d) => d,
                other => panic!("{label}: opened as {other:?}"),
            };
            assert_eq!(db.describe().byte_order, bo, "{label}");
            assert_eq!(db.describe().version, 2);
            let mut got = Vec::new();
            db.try_for_each(|k, v| -> cellar_legacy::Result<()> {
                got.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            got.sort();
            assert_eq!(got.len(), want.len(), "{label}: count");
            assert!(got == want, "{label}: pairs differ from libdb1's");
            assert_eq!(db.len().unwrap(), want.len());
            for (k, v) in &want {
                assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "{label}: get");
            }
            assert_eq!(db.get(b"not a key").unwrap(), None);
            let r = db.check();
            assert!(r.is_ok(), "{label}: {:?}", r.problems);
            assert_eq!(r.readable as usize, want.len());
            // Positioned reads give the same.
            let db2 = Bdb185::open_with_limit(&file, 0).unwrap();
            assert_eq!(db2.len().unwrap(), want.len());
        }
    }
}

#[test]
fn big_items_are_present() {
    let want = pairs("big");
    assert!(want.iter().any(|(k, _)| k.len() == 9000));
    assert!(want.iter().any(|(_, v)| v.len() >= 14_000));
}

#[test]
fn damaged_185_files_never_panic() {
    let good = std::fs::read(dir().join("db185-le-big.db")).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..300 {
        let mut bytes = good.clone();
        for _ in 0..1 + next() % 12 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        if let Ok(db) = Bdb185::from_bytes(bytes) {
            let _ = db.len();
            let _ = db.keys();
            let _ = db.get(b"small1");
            let _ = db.check();
        }
    }
    for cut in (0..good.len()).step_by(good.len() / 50) {
        if let Ok(db) = Bdb185::from_bytes(good[..cut].to_vec()) {
            let r = db.check();
            assert!(!r.is_ok() || db.len().unwrap() < pairs("big").len() || cut >= good.len());
        }
    }
}
