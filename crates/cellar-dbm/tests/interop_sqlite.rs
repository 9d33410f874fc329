//! dbm.sqlite3 interop with a plain python3 `sqlite3` reader/writer that follows CPython
//! 3.13's dbm.sqlite3 schema and statements (3.11 has no dbm.sqlite3 module).

mod common;

use std::collections::BTreeMap;

use cellar_dbm::{open, whichdb, Backend, Batch, Flag};
use common::*;

const PY_READ: &str = r#"
import sys, sqlite3
cx = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
assert cx.execute("SELECT sql FROM sqlite_master WHERE name = 'Dict'").fetchone()[0] == \
    "CREATE TABLE Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)"
for k, v in cx.execute("SELECT key, value FROM Dict"):
    assert type(k) is bytes and type(v) is bytes
    print(k.hex(), v.hex())
cx.close()
"#;

// What dbm.sqlite3 does on open('c') and __setitem__, autocommit and WAL.
const PY_WRITE: &str = r#"
import sys, sqlite3
cx = sqlite3.connect(f"file:{sys.argv[1]}?mode=rwc", uri=True, isolation_level=None)
try:
    cx.execute("PRAGMA journal_mode = wal")
except sqlite3.OperationalError:
    pass
cx.execute("CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
for line in sys.stdin:
    k, v = line.split()
    cx.execute("REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))",
               (bytes.fromhex(k[1:]), bytes.fromhex(v[1:])))
# dbm.sqlite3 coerces non-bytes through CAST: 42 -> b'42', a str -> its UTF-8.
cx.execute("REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))", (42, "é"))
cx.close()
"#;

fn data(seed: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut rng = Rng(seed);
    let mut m = BTreeMap::new();
    for (i, k) in edge_bytes().into_iter().enumerate() {
        m.insert(k, edge_bytes()[(i * 5 + 1) % edge_bytes().len()].clone());
    }
    for _ in 0..300 {
        m.insert(random_bytes(&mut rng, 30), random_bytes(&mut rng, 3000));
    }
    m
}

#[test]
fn cpython_sqlite3_reads_a_cellar_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let mut model = data(1);
    let db = open(&path, Flag::New, 0o666).unwrap();
    assert_eq!(db.backend(), Backend::Native); // 'n' makes the default (native) store
    db.close().unwrap();
    let db = Backend::Sqlite3.open(&path, Flag::New, 0o666).unwrap();
    let mut it = model.iter();
    for (k, v) in it.by_ref().take(100) {
        db.insert(k, v).unwrap();
    }
    let mut b = Batch::new();
    for (k, v) in it {
        b.insert(k.clone(), v.clone());
    }
    db.batch(&b).unwrap();
    db.insert(b"later", b"x").unwrap();
    db.remove(b"later").unwrap();
    model.remove(b"later".as_slice());
    // Not closed: a plain reader must already see every acknowledged write (WAL).
    let got: BTreeMap<_, _> = parse_pairs(&python(PY_READ, &[path.to_str().unwrap()], ""))
        .into_iter()
        .collect();
    assert_eq!(got, model);
    db.close().unwrap();
    assert_eq!(whichdb(&path).as_python(), Some("dbm.sqlite3"));
    let got: BTreeMap<_, _> = parse_pairs(&python(PY_READ, &[path.to_str().unwrap()], ""))
        .into_iter()
        .collect();
    assert_eq!(got, model);
}

#[test]
fn cellar_reads_a_store_written_like_dbm_sqlite3() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut model = data(2);
    let input: String = model
        .iter()
        .map(|(k, v)| format!("x{} x{}\n", hex(k), hex(v)))
        .collect();
    python(PY_WRITE, &[path.to_str().unwrap()], &input);
    model.insert(b"42".to_vec(), "é".as_bytes().to_vec());
    assert_eq!(whichdb(&path).as_python(), Some("dbm.sqlite3"));
    // Through dbm's open: whichdb routes it to the sqlite backend.
    let db = open(&path, Flag::Read, 0o666).unwrap();
    assert_eq!(db.backend(), Backend::Sqlite3);
    assert_eq!(db.len().unwrap(), model.len());
    let items: BTreeMap<_, _> = db.items().unwrap().into_iter().collect();
    assert_eq!(items, model);
    for (k, v) in &model {
        assert_eq!(db.get(k).unwrap().as_ref(), Some(v));
    }
    let mut keys = db.keys().unwrap();
    keys.sort();
    assert_eq!(keys, model.keys().cloned().collect::<Vec<_>>());
    assert!(matches!(
        db.insert(b"a", b"b"),
        Err(cellar_dbm::DbmError::ReadOnly)
    ));
    db.close().unwrap();
    // And writes through 'w'.
    let db = open(&path, Flag::Write, 0o666).unwrap();
    db.insert(b"new", b"value").unwrap();
    db.close().unwrap();
    let got: BTreeMap<_, _> = parse_pairs(&python(PY_READ, &[path.to_str().unwrap()], ""))
        .into_iter()
        .collect();
    model.insert(b"new".to_vec(), b"value".to_vec());
    assert_eq!(got, model);
}

#[test]
fn sqlite_is_safe_from_several_threads() {
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(
        Backend::Sqlite3
            .open(dir.path().join("db"), Flag::Create, 0o666)
            .unwrap(),
    );
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    let k = format!("{t}-{i}");
                    db.insert(k.as_bytes(), &[t; 10]).unwrap();
                    assert_eq!(db.get(k.as_bytes()).unwrap(), Some(vec![t; 10]));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(db.len().unwrap(), 800);
    db.close().unwrap();
}
