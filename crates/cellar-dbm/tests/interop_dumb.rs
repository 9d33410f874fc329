//! dbm.dumb interop with the machine's CPython, both ways, for awkward byte keys and values:
//! the same operations give byte-identical `.dat` and `.dir` files, each side reads the
//! other's stores, and CPython reads a cellar store that was never committed (index lines
//! appended only).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use cellar_dbm::{Backend, Database, Flag, Placement};
use common::*;

const PY_APPLY: &str = r#"
import sys, dbm.dumb
db = dbm.dumb.open(sys.argv[1], 'c')
for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    if parts[0] == 'S':
        db[bytes.fromhex(parts[1][1:])] = bytes.fromhex(parts[2][1:])
    else:
        del db[bytes.fromhex(parts[1][1:])]
db.close()
"#;

const PY_DUMP: &str = r#"
import sys, dbm.dumb
db = dbm.dumb.open(sys.argv[1], 'r')
for k in db.keys():
    print(k.hex(), db[k].hex())
db.close()
"#;

enum Op {
    Set(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
}

fn ops(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = Rng(seed);
    let edges = edge_bytes();
    let mut keys: Vec<Vec<u8>> = edges.clone();
    for _ in 0..40 {
        keys.push(random_bytes(&mut rng, 24));
    }
    let mut out = Vec::new();
    // Every edge key with every kind of value first.
    for (i, k) in edges.iter().enumerate() {
        out.push(Op::Set(k.clone(), edges[(i * 7 + 3) % edges.len()].clone()));
    }
    for _ in 0..n {
        let k = keys[rng.below(keys.len() as u64) as usize].clone();
        match rng.below(10) {
            0 | 1 => out.push(Op::Del(k)),
            2 => out.push(Op::Set(k, random_bytes(&mut rng, 1500))),
            3 => out.push(Op::Set(
                k,
                edges[rng.below(edges.len() as u64) as usize].clone(),
            )),
            _ => out.push(Op::Set(k, random_bytes(&mut rng, 40))),
        }
    }
    out
}

/// Applies ops to a model, dropping deletes of missing keys (CPython would raise KeyError).
fn normalise(ops: Vec<Op>) -> (Vec<Op>, BTreeMap<Vec<u8>, Vec<u8>>) {
    let mut model = BTreeMap::new();
    let mut kept = Vec::new();
    for op in ops {
        match op {
            Op::Set(k, v) => {
                model.insert(k.clone(), v.clone());
                kept.push(Op::Set(k, v));
            }
            Op::Del(k) => {
                if model.remove(&k).is_some() {
                    kept.push(Op::Del(k));
                }
            }
        }
    }
    (kept, model)
}

fn script(ops: &[Op]) -> String {
    let mut s = String::new();
    for op in ops {
        match op {
            Op::Set(k, v) => s.push_str(&format!("S x{} x{}\n", hex(k), hex(v))),
            Op::Del(k) => s.push_str(&format!("D x{}\n", hex(k))),
        }
    }
    s
}

fn apply(db: &dyn Database, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Set(k, v) => db.insert(k, v).unwrap(),
            Op::Del(k) => assert!(db.remove(k).unwrap()),
        }
    }
}

fn cellar_items(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let db = Backend::Dumb.open(path, Flag::Read, 0o666).unwrap();
    let items: BTreeMap<_, _> = db.items().unwrap().into_iter().collect();
    assert_eq!(items.len(), db.len().unwrap());
    for (k, v) in &items {
        assert_eq!(db.get(k).unwrap().as_ref(), Some(v));
    }
    db.close().unwrap();
    items
}

fn python_items(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    parse_pairs(&python(PY_DUMP, &[path.to_str().unwrap()], ""))
        .into_iter()
        .collect()
}

#[test]
fn same_operations_give_byte_identical_files() {
    for seed in [1u64, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let (ops, model) = normalise(ops(seed, 400));
        let py = dir.path().join("py");
        let rs = dir.path().join("rs");
        python(PY_APPLY, &[py.to_str().unwrap()], &script(&ops));
        let db = cellar_dbm::open_dumb(&rs, Flag::Create, 0o666, Placement::CPython).unwrap();
        apply(&*db, &ops);
        db.close().unwrap();
        // The default (safe) placement differs only in where overwrites go.
        let safe = dir.path().join("safe");
        let db = Backend::Dumb.open(&safe, Flag::Create, 0o666).unwrap();
        apply(&*db, &ops);
        db.close().unwrap();
        assert_eq!(
            python_items(&safe),
            model,
            "CPython reading cellar's safe store"
        );
        assert_eq!(cellar_items(&safe), model);
        for ext in [".dat", ".dir"] {
            let a = std::fs::read(format!("{}{ext}", py.display())).unwrap();
            let b = std::fs::read(format!("{}{ext}", rs.display())).unwrap();
            assert!(a == b, "seed {seed}: {ext} differs from CPython's");
        }
        assert_eq!(cellar_items(&py), model, "cellar reading CPython's store");
        assert_eq!(python_items(&rs), model, "CPython reading cellar's store");
    }
}

#[test]
fn cpython_reads_an_uncommitted_cellar_store() {
    // No close, no sync: only the appended index lines describe the writes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut model = BTreeMap::new();
    let db = Backend::Dumb.open(&path, Flag::Create, 0o666).unwrap();
    let mut rng = Rng(99);
    let edges = edge_bytes();
    for i in 0..600 {
        let k = edges[i % edges.len()].clone();
        let v = random_bytes(&mut rng, 1200);
        db.insert(&k, &v).unwrap();
        model.insert(k, v);
    }
    std::mem::forget(db);
    assert_eq!(python_items(&path), model);
    assert_eq!(cellar_items(&path), model);
}

#[test]
fn cellar_continues_a_cpython_store_and_cpython_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (ops1, mut model) = normalise(ops(7, 200));
    python(PY_APPLY, &[path.to_str().unwrap()], &script(&ops1));
    let db = Backend::Dumb.open(&path, Flag::Write, 0o666).unwrap();
    let mut rng = Rng(8);
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    for (i, k) in keys.iter().enumerate() {
        match i % 3 {
            0 => {
                db.remove(k).unwrap();
                model.remove(k);
            }
            1 => {
                let v = random_bytes(&mut rng, 2000);
                db.insert(k, &v).unwrap();
                model.insert(k.clone(), v);
            }
            _ => {}
        }
    }
    let mut b = cellar_dbm::Batch::new();
    for i in 0..50u32 {
        let k = format!("batch-{i}\n'").into_bytes();
        let v = vec![i as u8; i as usize * 30];
        b.insert(k.clone(), v.clone());
        model.insert(k, v);
    }
    db.batch(&b).unwrap();
    db.close().unwrap();
    assert_eq!(python_items(&path), model);
    // And CPython keeps writing to it.
    python(PY_APPLY, &[path.to_str().unwrap()], "S x6b x76\n");
    model.insert(b"k".to_vec(), b"v".to_vec());
    assert_eq!(cellar_items(&path), model);
}
