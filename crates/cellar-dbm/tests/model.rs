//! Model-based test: random operations on each backend against a BTreeMap, with sync,
//! close/reopen (and, for dumb, reopen without closing, as after a crash).

use std::collections::BTreeMap;

use cellar_dbm::{Backend, Batch, Database, Flag, BACKENDS};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Sync,
    Reopen,
    Abandon,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(vec![
            b"".to_vec(), b"a".to_vec(), b"'".to_vec(), b"\"\n".to_vec(), vec![0xff, 0],
            "\u{e9}".as_bytes().to_vec(),
        ]),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..40),
        1 => (0usize..1500, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (key(), value()).prop_map(|(k, v)| Op::Insert(k, v)),
        3 => key().prop_map(Op::Remove),
        2 => prop::collection::vec((key(), prop::option::of(value())), 0..6).prop_map(Op::Batch),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Abandon),
    ]
}

fn check(db: &dyn Database, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    assert_eq!(db.len().unwrap(), model.len());
    let items: BTreeMap<_, _> = db.items().unwrap().into_iter().collect();
    assert_eq!(&items, model);
    let mut keys = db.keys().unwrap();
    keys.sort();
    assert_eq!(keys, model.keys().cloned().collect::<Vec<_>>());
}

fn run(b: Backend, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut db = b.open(&path, Flag::New, 0o666).unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Insert(k, v) => {
                db.insert(&k, &v).unwrap();
                model.insert(k.clone(), v.clone());
                assert_eq!(db.get(&k).unwrap(), Some(v));
            }
            Op::Remove(k) => {
                assert_eq!(db.remove(&k).unwrap(), model.remove(&k).is_some());
                assert!(!db.contains(&k).unwrap());
            }
            Op::Batch(ops) => {
                let mut batch = Batch::new();
                for (k, v) in ops {
                    match v {
                        Some(v) => {
                            batch.insert(k.clone(), v.clone());
                            model.insert(k, v);
                        }
                        None => {
                            batch.remove(k.clone());
                            model.remove(&k);
                        }
                    }
                }
                db.batch(&batch).unwrap();
            }
            Op::Sync => db.sync().unwrap(),
            Op::Reopen => {
                db.close().unwrap();
                db = b.open(&path, Flag::Write, 0o666).unwrap();
                check(&*db, &model);
            }
            Op::Abandon => {
                // Drop without close (dumb then commits in Drop; native/sqlite close too).
                // For dumb, also leak one handle to test reading appended-only indexes.
                if b == Backend::Dumb {
                    std::mem::forget(db);
                } else {
                    drop(db);
                }
                db = b.open(&path, Flag::Write, 0o666).unwrap();
                check(&*db, &model);
            }
        }
    }
    check(&*db, &model);
    db.close().unwrap();
    let db = b.open(&path, Flag::Read, 0o666).unwrap();
    check(&*db, &model);
    db.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn native_matches_a_btreemap(ops in prop::collection::vec(op(), 1..80)) {
        run(BACKENDS[0], ops);
    }

    #[test]
    fn sqlite_matches_a_btreemap(ops in prop::collection::vec(op(), 1..80)) {
        run(BACKENDS[1], ops);
    }

    #[test]
    fn dumb_matches_a_btreemap(ops in prop::collection::vec(op(), 1..80)) {
        run(BACKENDS[2], ops);
    }
}
