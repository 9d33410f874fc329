//! Model-based property test: random operations against a `BTreeMap`, with close/reopen,
//! compaction (file-backed) and simulated crashes (process kill and power loss with torn
//! tails, on the in-memory storage). After a power loss the recovered contents must equal the
//! model after some commit at or after the last sync (acknowledged + synced writes survive, a
//! batch is all or nothing); after a process kill every acknowledged write must survive.
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(clippy::manual_is_multiple_of)]

use std::collections::BTreeMap;
use std::sync::Arc;

use cellar_engine::{Batch, Compression, Crash, MemStorage, Options, Store};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u16, u8),
    Delete(u8),
    Batch(Vec<(u8, Option<(u16, u8)>)>),
    Get(u8),
    Sync,
    Reopen,
    Compact,
    CrashProcess,
    CrashPower(u16, bool),
}

fn key(k: u8) -> Vec<u8> {
    // Variable-length keys, some long.
    let mut v = vec![b'k', k];
    if k % 5 == 0 {
        v.extend(std::iter::repeat_n(k, 70 + k as usize));
    }
    v
}

fn value(len: u16, seed: u8) -> Vec<u8> {
    (0..len as usize)
        .map(|i| {
            if seed % 2 == 0 {
                b"abcab"[i % 5]
            } else {
                (i as u8).wrapping_mul(seed) ^ 0x5a
            }
        })
        .collect()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..24, 0u16..400, any::<u8>()).prop_map(|(k, l, s)| Op::Put(k, l, s)),
        2 => (0u8..24).prop_map(Op::Delete),
        2 => prop::collection::vec(
            (0u8..24, prop::option::weighted(0.8, (0u16..300, any::<u8>()))),
            1..12
        )
        .prop_map(Op::Batch),
        3 => (0u8..24).prop_map(Op::Get),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
        1 => Just(Op::CrashProcess),
        1 => (any::<u16>(), any::<bool>()).prop_map(|(k, o)| Op::CrashPower(k, o)),
    ]
}

fn contents(s: &Store) -> Model {
    s.iter().unwrap().map(|r| r.unwrap()).collect()
}

fn opts(compressed: bool) -> Options {
    Options {
        compression: if compressed {
            Compression::Zstd { level: 1 }
        } else {
            Compression::None
        },
        checkpoint_bytes: 1500,
        auto_compact: false,
        ..Options::default()
    }
}

/// Applies a mutation to the store and the model.
fn mutate(s: &Store, model: &mut Model, op: &Op) {
    match op {
        Op::Put(k, l, sd) => {
            s.put(&key(*k), &value(*l, *sd)).unwrap();
            model.insert(key(*k), value(*l, *sd));
        }
        Op::Delete(k) => {
            let had = s.delete(&key(*k)).unwrap();
            assert_eq!(had, model.remove(&key(*k)).is_some());
        }
        Op::Batch(ops) => {
            let mut b = Batch::new();
            for (k, v) in ops {
                match v {
                    Some((l, sd)) => {
                        b.put(key(*k), value(*l, *sd));
                        model.insert(key(*k), value(*l, *sd));
                    }
                    None => {
                        b.delete(key(*k));
                        model.remove(&key(*k));
                    }
                }
            }
            s.batch(&b).unwrap();
        }
        _ => unreachable!(),
    }
}

fn run_mem(ops: Vec<Op>, compressed: bool) {
    let mut mem = Arc::new(MemStorage::new());
    let mut s = Store::open_storage(mem.clone(), opts(compressed)).unwrap();
    let mut model = Model::new();
    let mut history = vec![model.clone()];
    for op in &ops {
        match op {
            Op::Put(..) | Op::Delete(_) | Op::Batch(_) => {
                mutate(&s, &mut model, op);
                history.push(model.clone());
            }
            Op::Get(k) => assert_eq!(s.get(&key(*k)).unwrap(), model.get(&key(*k)).cloned()),
            Op::Sync => {
                s.sync().unwrap();
                history = vec![model.clone()];
            }
            Op::Reopen | Op::Compact => {
                s.close().unwrap();
                s = Store::open_storage(mem.clone(), opts(compressed)).unwrap();
                history = vec![model.clone()];
            }
            Op::CrashProcess => {
                let img = mem.crash_image(Crash::Process);
                drop(s);
                mem = Arc::new(MemStorage::from_bytes(img));
                s = Store::open_storage(mem.clone(), opts(compressed)).unwrap();
                assert_eq!(contents(&s), model, "kill -9 lost acknowledged writes");
                history = vec![model.clone()];
            }
            Op::CrashPower(keep, old_sb) => {
                let img = mem.crash_image(Crash::Power {
                    keep: *keep as usize % 3000,
                    old_superblock: *old_sb,
                });
                drop(s);
                mem = Arc::new(MemStorage::from_bytes(img));
                s = Store::open_storage(mem.clone(), opts(compressed)).unwrap();
                let got = contents(&s);
                assert!(
                    history.contains(&got),
                    "power loss recovered a state that is not a commit prefix after the last sync"
                );
                model = got;
                history = vec![model.clone()];
            }
        }
        assert_eq!(s.len().unwrap(), model.len() as u64);
    }
    assert_eq!(contents(&s), model);
    let report = s.check().unwrap();
    assert!(report.is_ok(), "{report:?}");
}

fn run_file(ops: Vec<Op>, compressed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut s = Store::open(&path, opts(compressed)).unwrap();
    let mut model = Model::new();
    for op in &ops {
        match op {
            Op::Put(..) | Op::Delete(_) | Op::Batch(_) => mutate(&s, &mut model, op),
            Op::Get(k) => assert_eq!(s.get(&key(*k)).unwrap(), model.get(&key(*k)).cloned()),
            Op::Sync => s.sync().unwrap(),
            Op::Compact => s.compact().unwrap(),
            Op::Reopen => {
                s.close().unwrap();
                s = Store::open(&path, opts(compressed)).unwrap();
            }
            Op::CrashProcess | Op::CrashPower(..) => {
                // What kill -9 leaves: the file as the OS has it, no close().
                let copy = dir.path().join("copy");
                std::fs::copy(&path, &copy).unwrap();
                drop(s);
                std::fs::rename(&copy, &path).unwrap();
                s = Store::open(&path, opts(compressed)).unwrap();
                assert_eq!(contents(&s), model, "kill -9 lost acknowledged writes");
            }
        }
        assert_eq!(s.len().unwrap(), model.len() as u64);
    }
    assert_eq!(contents(&s), model);
    assert!(s.check().unwrap().is_ok());
}

/// Several writer handles on one file (shared mode, as several processes would have), the
/// operations interleaved among them: every handle must see every other's commits (reads,
/// deletes that report presence, lengths), also across compactions by any of them and
/// reopens of some of them; at the end every handle holds the model and the file checks clean.
/// Without `eager_reads` no handle reads between the operations except where an operation
/// reads: writers then append after commits they have not indexed yet (section 1.1 of
/// docs/engine-format.md) for many operations in a row.
fn run_writers(ops: Vec<(usize, Op)>, compressed: bool, eager_reads: bool) {
    const N: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut hs: Vec<Store> = (0..N)
        .map(|_| Store::open(&path, opts(compressed)).unwrap())
        .collect();
    let mut model = Model::new();
    for (w, op) in &ops {
        let w = *w % N;
        match op {
            Op::Put(..) | Op::Delete(_) | Op::Batch(_) => mutate(&hs[w], &mut model, op),
            Op::Get(k) => assert_eq!(hs[w].get(&key(*k)).unwrap(), model.get(&key(*k)).cloned()),
            Op::Sync => hs[w].sync().unwrap(),
            Op::Compact => hs[w].compact().unwrap(),
            Op::Reopen | Op::CrashProcess | Op::CrashPower(..) => {
                let old =
                    std::mem::replace(&mut hs[w], Store::open(&path, opts(compressed)).unwrap());
                old.close().unwrap();
            }
        }
        if eager_reads {
            let other = (w + 1) % N;
            assert_eq!(
                hs[other].len().unwrap(),
                model.len() as u64,
                "after {op:?} by {w}"
            );
        }
    }
    for h in &hs {
        assert_eq!(contents(h), model);
        let report = h.check().unwrap();
        assert!(report.is_ok(), "{report:?}");
    }
    for h in hs {
        h.close().unwrap();
    }
    let r = Store::open(&path, Options::from_dbm_flag("r").unwrap()).unwrap();
    assert_eq!(contents(&r), model);
    assert!(
        r.check().unwrap().closed_cleanly,
        "the last writer to close marks the store"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn model_several_writers_interleaved(
        ops in prop::collection::vec((0usize..3, op()), 1..80),
        c in any::<bool>(),
        eager in any::<bool>(),
    ) {
        run_writers(ops, c, eager);
    }

    #[test]
    fn model_in_memory_with_crashes(ops in prop::collection::vec(op(), 1..120), c in any::<bool>()) {
        run_mem(ops, c);
    }

    #[test]
    fn model_file_with_compaction_and_kills(ops in prop::collection::vec(op(), 1..60), c in any::<bool>()) {
        run_file(ops, c);
    }
}
