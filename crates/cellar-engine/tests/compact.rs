//! The compact form (docs/engine-format.md section 10): compaction into zstd blocks with a
//! trained dictionary, reads and writes on top of it, a model-based property test, a crash in
//! the middle of writing blocks, a flipped bit inside a compressed block, and a store in the
//! previous format converted by compaction.
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(clippy::manual_is_multiple_of)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cellar_engine::{check_file, repair, Batch, Compression, Error, Options, Store};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn opts() -> Options {
    Options {
        compact_form: true,
        auto_compact: false,
        ..Options::default()
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i}").into_bytes()
}

/// A small pickled-dict-like value (issue 14's workload shape).
fn value(i: u32, gen: u32) -> Vec<u8> {
    format!(
        "\u{80}\u{4}}}\u{94}(\u{8c}\u{2}id\u{94}J{i}\u{8c}\u{4}name\u{94}\u{8c}user{i}\u{94}\
         \u{8c}\u{4}tags\u{94}\u{8c}\u{1}a\u{8c}\u{1}b\u{86}\u{8c}\u{5}score\u{94}G{gen}u."
    )
    .into_bytes()
}

fn contents(s: &Store) -> Model {
    let mut m = Model::new();
    for item in s.iter().unwrap() {
        let (k, v) = item.unwrap();
        assert!(m.insert(k, v).is_none(), "a key came twice from iter");
    }
    let mut fe = Model::new();
    s.for_each(|k, v| {
        fe.insert(k.to_vec(), v.to_vec());
    })
    .unwrap();
    assert_eq!(fe, m, "for_each and iter disagree");
    let mut keys = s.keys().unwrap();
    keys.sort();
    assert_eq!(keys, m.keys().cloned().collect::<Vec<_>>());
    assert_eq!(s.len().unwrap(), m.len() as u64);
    m
}

fn assert_reads(s: &Store, model: &Model, absent: impl Iterator<Item = Vec<u8>>) {
    for (k, v) in model {
        assert_eq!(s.get(k).unwrap().as_ref(), Some(v), "key {k:?}");
        assert!(s.contains(k).unwrap());
    }
    for k in absent {
        if !model.contains_key(&k) {
            assert_eq!(s.get(&k).unwrap(), None);
            assert!(!s.contains(&k).unwrap());
        }
    }
    assert_eq!(&contents(s), model);
}

#[test]
fn compaction_writes_blocks_and_everything_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let s = Store::open(&path, opts()).unwrap();
    let mut model = Model::new();
    for chunk in (0..20_000u32).collect::<Vec<_>>().chunks(1000) {
        let mut b = Batch::new();
        for &i in chunk {
            b.put(key(i), value(i, 0));
            model.insert(key(i), value(i, 0));
        }
        s.batch(&b).unwrap();
    }
    for i in (0..20_000).step_by(7) {
        s.delete(&key(i)).unwrap();
        model.remove(&key(i));
    }
    let before = s.stats().unwrap().file_bytes;
    s.compact().unwrap();
    let st = s.stats().unwrap();
    assert!(st.compact_blocks > 0);
    assert!(st.dictionary_bytes > 0, "{st:?}");
    assert!(
        st.file_bytes * 8 < before,
        "compact file {} vs {before}",
        st.file_bytes
    );
    assert_reads(&s, &model, (20_000..20_100).map(key));
    let st = s.stats().unwrap();
    assert!(
        st.block_cache_hits > 0 && st.block_cache_misses > 0,
        "{st:?}"
    );

    // Writes on top of the compact section: overwrite, delete, re-add, new keys.
    for i in (1..20_000).step_by(5) {
        s.put(&key(i), &value(i, 1)).unwrap();
        model.insert(key(i), value(i, 1));
    }
    for i in (2..20_000).step_by(11) {
        let was = model.remove(&key(i)).is_some();
        assert_eq!(s.delete(&key(i)).unwrap(), was, "delete {i}");
        assert!(!s.delete(&key(i)).unwrap());
    }
    for i in (2..20_000).step_by(33) {
        s.put(&key(i), &value(i, 2)).unwrap();
        model.insert(key(i), value(i, 2));
    }
    for i in 30_000..30_500 {
        s.put(&key(i), &value(i, 3)).unwrap();
        model.insert(key(i), value(i, 3));
    }
    assert_reads(&s, &model, (20_000..20_100).map(key));
    s.close().unwrap();

    // Reopened (checkpoint + replay of DELETE shadows), then read-only, then compacted again.
    let s = Store::open(&path, opts()).unwrap();
    assert_reads(&s, &model, (20_000..20_100).map(key));
    drop(s);
    let r = Store::open(
        &path,
        Options {
            read_only: true,
            ..opts()
        },
    )
    .unwrap();
    assert_reads(&r, &model, std::iter::empty());
    drop(r);
    let s = Store::open(&path, opts()).unwrap();
    s.compact().unwrap();
    assert_reads(&s, &model, (20_000..20_100).map(key));
    s.close().unwrap();
    assert!(check_file(&path).unwrap().is_ok());
    let s = Store::open(&path, opts()).unwrap();
    assert_reads(&s, &model, std::iter::empty());
}

#[test]
fn a_flipped_bit_in_a_block_is_reported_and_repair_salvages_every_other_block() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let s = Store::open(&path, opts()).unwrap();
    let mut b = Batch::new();
    for i in 0..5000u32 {
        b.put(key(i), value(i, 0));
    }
    s.batch(&b).unwrap();
    s.compact().unwrap();
    let blocks = s.stats().unwrap().compact_blocks;
    assert!(blocks >= 3);
    s.close().unwrap();
    // The first BLOCK record follows the DICT record at 4096: flip a bit in the middle of
    // the second block's bytes. Find it by scanning for record kind 6 after the dictionary.
    let mut bytes = std::fs::read(&path).unwrap();
    let dict_len = {
        // DICT record: crc 4, kind 1, flags 1, key_len varint (0), val_len varint.
        let mut v = 0usize;
        let mut shift = 0;
        let mut i = 4096 + 7;
        loop {
            let b = bytes[i];
            v |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        i - 4096 + v
    };
    let first_block = 4096 + dict_len;
    assert_eq!(
        bytes[first_block + 4],
        6,
        "a BLOCK record follows the dictionary"
    );
    let flip = first_block + 100;
    bytes[flip] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let s = Store::open(&path, opts()).unwrap();
    let mut damaged = 0;
    let mut intact = 0;
    for i in 0..5000u32 {
        match s.get(&key(i)) {
            Ok(Some(v)) => {
                assert_eq!(v, value(i, 0));
                intact += 1;
            }
            Err(Error::Corrupt { offset, reason }) => {
                assert_eq!(offset as usize, first_block, "{reason}");
                assert!(reason.contains("repair"), "{reason}");
                damaged += 1;
            }
            other => panic!("key {i}: {other:?}"),
        }
    }
    assert!(damaged > 0 && intact > 0, "{damaged} {intact}");
    // Walks report the block and go on.
    let errors = s.iter().unwrap().filter(|r| r.is_err()).count();
    assert_eq!(errors, 1);
    assert!(s.keys().is_err());
    let report = check_file(&path).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.damage.len(), 1);
    assert_eq!(report.damage[0].offset as usize, first_block);
    drop(s);
    let out = dir.path().join("repaired.db");
    let rep = repair(&path, &out, Options::default()).unwrap();
    assert_eq!(rep.keys, intact as u64, "{rep:?}");
    let r = Store::open(&out, Options::default()).unwrap();
    for i in 0..5000u32 {
        if let Some(v) = r.get(&key(i)).unwrap() {
            assert_eq!(v, value(i, 0));
        }
    }
    assert_eq!(r.len().unwrap(), intact as u64);
}

#[test]
fn a_store_in_the_previous_format_converts_and_reads_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let old_opts = Options {
        compression: Compression::Zstd { level: 3 },
        auto_compact: false,
        ..Options::default()
    };
    let s = Store::open(&path, old_opts.clone()).unwrap();
    for i in 0..3000u32 {
        s.put(&key(i), &value(i, 0).repeat(1 + i as usize % 3))
            .unwrap();
    }
    for i in (0..3000).step_by(9) {
        s.delete(&key(i)).unwrap();
    }
    // One value too large for a block stays a log record.
    s.put(b"big", &vec![7u8; (1 << 20) + 10]).unwrap();
    s.close().unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[8..12], &2u32.to_le_bytes());
    let s = Store::open(&path, old_opts).unwrap();
    let model = contents(&s);
    s.close().unwrap();

    let s = Store::open(&path, opts()).unwrap();
    s.compact().unwrap();
    assert!(s.stats().unwrap().compact_blocks > 0);
    assert_reads(&s, &model, (5000..5010).map(key));
    s.close().unwrap();
    let head = std::fs::read(&path).unwrap();
    assert_eq!(&head[8..12], &3u32.to_le_bytes(), "format version 3");
    assert_eq!(&head[12..16], &1u32.to_le_bytes(), "incompat flag COMPACT");
    let s = Store::open(&path, opts()).unwrap();
    assert_reads(&s, &model, std::iter::empty());
    assert_eq!(s.compression(), Compression::Zstd { level: 3 });
}

/// The child of `kill_during_block_writing`: compacts the store again and again.
#[test]
fn compact_child() {
    let Ok(path) = std::env::var("CELLAR_COMPACT_CHILD") else {
        return;
    };
    let s = Store::open(&path, opts()).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "OPEN").unwrap();
    out.flush().unwrap();
    for round in 0u32.. {
        s.put(b"round", &round.to_le_bytes()).unwrap();
        s.compact().unwrap();
    }
}

fn big_model(path: &Path) -> Model {
    let s = Store::open(path, opts()).unwrap();
    let mut model = Model::new();
    for chunk in (0..60_000u32).collect::<Vec<_>>().chunks(5000) {
        let mut b = Batch::new();
        for &i in chunk {
            b.put(key(i), value(i, 0));
            model.insert(key(i), value(i, 0));
        }
        s.batch(&b).unwrap();
    }
    s.compact().unwrap();
    for i in (0..60_000).step_by(13) {
        s.delete(&key(i)).unwrap();
        model.remove(&key(i));
    }
    s.close().unwrap();
    model
}

#[test]
fn kill_during_block_writing_leaves_the_store_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let model = big_model(&path);
    let exe = std::env::current_exe().unwrap();
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut saw_leftover = 0;
    for round in 0..12 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "compact_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CELLAR_COMPACT_CHILD", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(l)) = lines.next() {
            if l.ends_with("OPEN") {
                break;
            }
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(rng % 150_000));
        child.kill().unwrap();
        let _ = child.wait();
        let leftover = dir.path().join("k.db.compact");
        if leftover.exists() {
            saw_leftover += 1;
        }
        let s = Store::open(&path, opts()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            !leftover.exists(),
            "the writer removes a half-written compaction"
        );
        let mut m = contents(&s);
        m.remove(&b"round"[..]);
        assert_eq!(m, model, "round {round}");
        drop(s);
        assert!(check_file(&path).unwrap().is_ok() || round > 0);
    }
    // The kills must have landed inside compactions at least sometimes.
    assert!(saw_leftover > 0, "no kill landed inside a compaction");
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Batch(Vec<(u8, Option<u8>)>),
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => any::<u8>().prop_map(Op::Delete),
        2 => proptest::collection::vec((any::<u8>(), proptest::option::of(any::<u8>())), 1..20)
            .prop_map(Op::Batch),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

fn pkey(k: u8) -> Vec<u8> {
    let mut v = format!("k{}", k % 97).into_bytes();
    if k % 7 == 0 {
        v.extend(std::iter::repeat_n(k, 40));
    }
    v
}

fn pval(k: u8, v: u8) -> Vec<u8> {
    format!("{k}:{v}:")
        .repeat(1 + (v % 9) as usize)
        .into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn model_with_compactions(ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut s = Store::open(&path, opts()).unwrap();
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    s.put(&pkey(k), &pval(k, v)).unwrap();
                    model.insert(pkey(k), pval(k, v));
                }
                Op::Delete(k) => {
                    let was = model.remove(&pkey(k)).is_some();
                    prop_assert_eq!(s.delete(&pkey(k)).unwrap(), was);
                }
                Op::Batch(ops) => {
                    let mut b = Batch::new();
                    for (k, v) in ops {
                        match v {
                            Some(v) => {
                                b.put(pkey(k), pval(k, v));
                                model.insert(pkey(k), pval(k, v));
                            }
                            None => {
                                b.delete(pkey(k));
                                model.remove(&pkey(k));
                            }
                        }
                    }
                    s.batch(&b).unwrap();
                }
                Op::Compact => s.compact().unwrap(),
                Op::Reopen => {
                    s.close().unwrap();
                    s = Store::open(&path, opts()).unwrap();
                }
            }
            prop_assert_eq!(s.len().unwrap(), model.len() as u64);
        }
        for k in 0..=255u8 {
            prop_assert_eq!(s.get(&pkey(k)).unwrap(), model.get(&pkey(k)).cloned());
        }
        prop_assert_eq!(&contents(&s), &model);
        s.close().unwrap();
        prop_assert!(check_file(&path).unwrap().is_ok());
    }
}

/// The records of a store file, from offset 4096: (offset, kind, total length).
fn records(bytes: &[u8]) -> Vec<(usize, u8, usize)> {
    fn varint(b: &[u8], i: &mut usize) -> usize {
        let (mut v, mut shift) = (0usize, 0);
        loop {
            let x = b[*i];
            *i += 1;
            v |= ((x & 0x7f) as usize) << shift;
            shift += 7;
            if x & 0x80 == 0 {
                return v;
            }
        }
    }
    let mut out = Vec::new();
    let mut at = 4096;
    while at + 8 <= bytes.len() && bytes[at + 4] != 0 {
        let mut i = at + 6;
        let k = varint(bytes, &mut i);
        let v = varint(bytes, &mut i);
        let total = i - at + k + v;
        out.push((at, bytes[at + 4], total));
        at += total;
    }
    out
}

fn compacted_store(dir: &Path) -> (std::path::PathBuf, Model) {
    let path = dir.join("d.db");
    let s = Store::open(&path, opts()).unwrap();
    let mut model = Model::new();
    let mut b = Batch::new();
    for i in 0..4000u32 {
        b.put(key(i), value(i, 0));
        model.insert(key(i), value(i, 0));
    }
    s.batch(&b).unwrap();
    s.compact().unwrap();
    // Some log-tier records after the compact section.
    for i in (0..4000).step_by(10) {
        s.put(&key(i), &value(i, 1)).unwrap();
        model.insert(key(i), value(i, 1));
    }
    s.delete(&key(3)).unwrap();
    model.remove(&key(3));
    s.close().unwrap();
    (path, model)
}

#[test]
fn a_damaged_dictionary_is_replaced_by_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = compacted_store(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let recs = records(&bytes);
    let dicts: Vec<_> = recs.iter().filter(|r| r.1 == 4).collect();
    assert_eq!(dicts.len(), 2, "the dictionary is stored twice");
    assert_eq!(dicts[0].0, 4096);
    bytes[4096 + dicts[0].2 / 2] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let s = Store::open(
        &path,
        Options {
            read_only: true,
            ..opts()
        },
    )
    .unwrap();
    assert_reads(&s, &model, std::iter::empty());
    drop(s);
    let report = check_file(&path).unwrap();
    assert_eq!(report.damage.len(), 1);
    assert_eq!(report.damage[0].offset, 4096);
    let out = dir.path().join("r.db");
    let rep = repair(&path, &out, Options::default()).unwrap();
    assert_eq!(rep.keys, model.len() as u64);
    let r = Store::open(&out, Options::default()).unwrap();
    assert_eq!(&contents(&r), &model);
}

#[test]
fn a_damaged_block_index_is_rebuilt_from_the_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = compacted_store(dir.path());
    let clean = std::fs::read(&path).unwrap();
    let recs = records(&clean);
    let &(at, _, len) = recs.iter().find(|r| r.1 == 7).expect("a BLOCKINDEX record");
    let mut bytes = clean.clone();
    bytes[at + len / 2] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    for o in [
        Options {
            read_only: true,
            ..opts()
        },
        opts(),
    ] {
        let s = Store::open(&path, o).unwrap();
        assert_reads(&s, &model, (5000..5010).map(key));
        let report = s.check().unwrap();
        assert!(
            report.checkpoint.iter().any(|m| m.contains("block index")),
            "{report:?}"
        );
    }
    assert!(!check_file(&path).unwrap().is_ok());
    let out = dir.path().join("r.db");
    let rep = repair(&path, &out, Options::default()).unwrap();
    assert_eq!(rep.keys, model.len() as u64, "{rep:?}");
    let r = Store::open(&out, Options::default()).unwrap();
    assert_eq!(&contents(&r), &model);
    drop(r);

    // The first dictionary damaged too: the copy after the block index is found by scanning.
    let mut both = bytes.clone();
    both[4096 + recs[0].2 / 2] ^= 0x02;
    std::fs::write(&path, &both).unwrap();
    let s = Store::open(&path, opts()).unwrap();
    assert_reads(&s, &model, std::iter::empty());
    drop(s);

    // A block damaged as well: its keys could not be placed, so every open mode refuses.
    let block = recs.iter().find(|r| r.1 == 6).unwrap();
    let mut worse = bytes.clone();
    worse[block.0 + block.2 / 2] ^= 0x08;
    std::fs::write(&path, &worse).unwrap();
    for o in [
        opts(),
        Options {
            read_only: true,
            ..opts()
        },
    ] {
        match Store::open(&path, o) {
            Err(Error::Corrupt { offset, reason }) => {
                assert_eq!(offset as usize, at);
                assert!(reason.contains("block index") && reason.contains("repair"));
            }
            other => panic!("{other:?}"),
        }
    }
    let rep = repair(&path, dir.path().join("r2.db"), Options::default()).unwrap();
    assert!(rep.keys > 0 && rep.keys < model.len() as u64, "{rep:?}");
}

#[test]
fn a_compacted_store_cut_inside_its_blocks_is_refused_and_repair_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = compacted_store(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let recs = records(&bytes);
    let blocks: Vec<_> = recs.iter().filter(|r| r.1 == 6).collect();
    assert!(blocks.len() >= 3);
    let cut = blocks[2].0 + 10;
    std::fs::write(&path, &bytes[..cut]).unwrap();
    assert!(matches!(
        Store::open(&path, opts()),
        Err(Error::Corrupt { .. })
    ));
    assert!(!check_file(&path).unwrap().is_ok());
    let out = dir.path().join("r.db");
    let rep = repair(&path, &out, Options::default()).unwrap();
    let r = Store::open(&out, Options::default()).unwrap();
    let got = contents(&r);
    assert_eq!(rep.keys, got.len() as u64);
    // The entries of the two blocks before the cut survive, as compacted (the later log
    // records went with the tail); the cut block is reported, not salvaged.
    assert!(!got.is_empty() && got.len() < model.len(), "{}", got.len());
    assert_eq!(rep.dropped_partial_records, 0);
    for (k, v) in &got {
        let i: u32 = std::str::from_utf8(&k[3..]).unwrap().parse().unwrap();
        assert_eq!(v, &value(i, 0), "key {k:?}");
    }
}

#[test]
fn a_store_created_compact_form_keeps_it_and_compacts_its_log_tier_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    // Created compact-form: the header says so (a compatible hint, the file stays version 2
    // until it has a compact section).
    let s = Store::open(&path, opts()).unwrap();
    s.put(b"a", b"1").unwrap();
    s.close().unwrap();
    let head = std::fs::read(&path).unwrap();
    assert_eq!(&head[8..12], &2u32.to_le_bytes());
    assert_eq!(head[21], 1, "header byte 21: compact form");
    // Reopened with default options (compact_form off), background compaction is triggered
    // by the log tier alone (no dead bytes at all) and writes blocks.
    let bg = Options {
        auto_compact: true,
        compact_log_bytes: 64 << 10,
        ..Options::default()
    };
    let s = Store::open(&path, bg.clone()).unwrap();
    let mut model = Model::new();
    model.insert(b"a".to_vec(), b"1".to_vec());
    for i in 0..4000u32 {
        s.put(&key(i), &value(i, 1)).unwrap();
        model.insert(key(i), value(i, 1));
    }
    s.close().unwrap();
    let s = Store::open(&path, bg).unwrap();
    let st = s.stats().unwrap();
    assert!(
        st.compact_blocks > 0,
        "background compaction wrote no blocks: {st:?}"
    );
    // How much of the log tier the background has folded in by close depends on the thread's
    // timing (a loaded machine may leave most of it); an explicit compaction folds it all.
    s.compact().unwrap();
    let st = s.stats().unwrap();
    assert!(st.compression_ratio > 1.5, "{st:?}");
    assert_reads(&s, &model, (5000..5010).map(key));
    let st = s.stats().unwrap();
    assert!(
        st.block_cache_hits > 0 && st.block_cache_misses > 0,
        "{st:?}"
    );
    assert_eq!(
        st.block_cache_capacity,
        Options::default().block_cache_bytes as u64
    );
    s.close().unwrap();

    // A store created without it stays in the previous format through compactions.
    let plain = dir.path().join("p.db");
    let s = Store::open(&plain, Options::default()).unwrap();
    for i in 0..2000u32 {
        s.put(&key(i), &value(i, 1)).unwrap();
    }
    s.compact().unwrap();
    assert_eq!(s.stats().unwrap().compact_blocks, 0);
    s.close().unwrap();
    let head = std::fs::read(&plain).unwrap();
    assert_eq!(&head[8..12], &2u32.to_le_bytes());
    assert_eq!(head[21], 0);
}

/// Power loss (through the storage trait) while a store with a compact section writes its
/// log tier on top, at every cut of the unsynced bytes: every synced write reads, the compact
/// tier is intact, and no acknowledged-but-unsynced state is half-applied.
#[test]
fn power_loss_on_top_of_a_compact_section_keeps_every_synced_write() {
    use cellar_engine::{Crash, MemStorage};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (path, mut model) = compacted_store(dir.path());
    let image = std::fs::read(&path).unwrap();
    let mem_opts = Options {
        auto_compact: false,
        ..Options::default()
    };
    let mem = Arc::new(MemStorage::from_bytes(image));
    let s = Store::open_storage(mem.clone(), mem_opts.clone()).unwrap();
    // Synced: overwrite and delete compact keys, add new ones.
    let keys: Vec<Vec<u8>> = model.keys().take(40).cloned().collect();
    for (n, k) in keys.iter().enumerate() {
        if n % 2 == 0 {
            s.delete(k).unwrap();
            model.remove(k);
        } else {
            s.put(k, b"new").unwrap();
            model.insert(k.clone(), b"new".to_vec());
        }
    }
    s.put(b"fresh", b"v").unwrap();
    model.insert(b"fresh".to_vec(), b"v".to_vec());
    s.sync().unwrap();
    // Unsynced: a batch that deletes a compact key and writes another.
    let victim = model.keys().nth(100).cloned().unwrap();
    let mut b = Batch::new();
    b.delete(victim.clone());
    b.put(b"late".to_vec(), b"x".to_vec());
    s.batch(&b).unwrap();
    let full = mem.bytes().len();
    let synced = mem.crash_image(Crash::Power {
        keep: 0,
        old_superblock: false,
    });
    let unsynced = full.saturating_sub(synced.len()).max(1);
    for keep in (0..=unsynced).step_by((unsynced / 16).max(1)) {
        for old_superblock in [false, true] {
            let img = mem.crash_image(Crash::Power {
                keep,
                old_superblock,
            });
            let r = Store::open_storage(Arc::new(MemStorage::from_bytes(img)), mem_opts.clone())
                .unwrap();
            let got = contents(&r);
            let mut with_batch = model.clone();
            with_batch.remove(&victim);
            with_batch.insert(b"late".to_vec(), b"x".to_vec());
            assert!(
                got == model || got == with_batch,
                "keep {keep}: neither the synced state nor the synced state plus the whole batch"
            );
        }
    }
}

/// The last writer to close a compact-form store folds a sizeable log tier into the compact
/// section (docs/engine-format.md section 10.6, step 5): the closed file holds every entry in
/// blocks and is a fraction of its size without the fold; a few writes to a large store are
/// not worth a rewrite (the file keeps its compact section and the new records in the log);
/// a writer that closes while another still has the store open leaves the fold to the last.
#[test]
fn the_last_writer_to_close_folds_the_log_tier_into_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let auto = Options {
        compact_form: true,
        auto_compact: true,
        ..Options::default()
    };
    let fill = |s: &Store, gen: u32, range: std::ops::Range<u32>, model: &mut Model| {
        for i in range {
            s.put(&key(i), &value(i, gen)).unwrap();
            model.insert(key(i), value(i, gen));
        }
    };
    // Folded at close.
    let path = dir.path().join("fold.db");
    let mut model = Model::new();
    let s = Store::open(&path, auto.clone()).unwrap();
    fill(&s, 1, 0..20_000, &mut model);
    s.close().unwrap();
    let folded = std::fs::metadata(&path).unwrap().len();
    let s = Store::open(&path, auto.clone()).unwrap();
    let st = s.stats().unwrap();
    assert_eq!(st.compact_entries, 20_000, "{st:?}");
    assert_reads(&s, &model, (30_000..30_010).map(key));
    // A few more writes: below an eighth of the section, no rewrite at close.
    fill(&s, 2, 0..20, &mut model);
    s.close().unwrap();
    let s = Store::open(&path, auto.clone()).unwrap();
    let st = s.stats().unwrap();
    assert_eq!(st.compact_entries, 20_000, "{st:?}");
    assert!(st.file_bytes < folded + (8 << 10), "{st:?}");
    assert_reads(&s, &model, (30_000..30_010).map(key));
    s.close().unwrap();

    // The same writes without the fold (auto_compact off): much larger.
    let plain = dir.path().join("nofold.db");
    let s = Store::open(&plain, opts()).unwrap();
    fill(&s, 1, 0..20_000, &mut Model::new());
    s.close().unwrap();
    let unfolded = std::fs::metadata(&plain).unwrap().len();
    assert!(
        folded * 2 < unfolded,
        "folded {folded} bytes vs {unfolded} without the fold"
    );

    // Two writers: the first to close leaves the log tier; the last one folds it.
    let shared = dir.path().join("shared.db");
    let mut model = Model::new();
    let a = Store::open(&shared, auto.clone()).unwrap();
    let b = Store::open(&shared, auto.clone()).unwrap();
    fill(&a, 1, 0..10_000, &mut model);
    fill(&b, 1, 10_000..20_000, &mut model);
    a.close().unwrap();
    let r = Store::open(
        &shared,
        Options {
            read_only: true,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(r.stats().unwrap().compact_entries < 20_000);
    drop(r);
    b.close().unwrap();
    let s = Store::open(&shared, auto).unwrap();
    assert_eq!(s.stats().unwrap().compact_entries, 20_000);
    assert_reads(&s, &model, (30_000..30_010).map(key));
}

fn fold_opts() -> Options {
    Options {
        compact_form: true,
        // No background compaction: only close folds.
        compact_log_bytes: u64::MAX,
        ..Options::default()
    }
}

#[test]
fn close_does_not_fold_when_told_not_to_or_when_the_store_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    for (name, o, folds) in [
        // The control: the same writes with the defaults are folded.
        ("default", fold_opts(), true),
        (
            "off",
            Options {
                close_fold_max_bytes: 0,
                ..fold_opts()
            },
            false,
        ),
        (
            "small-bound",
            Options {
                close_fold_max_bytes: 64 << 10,
                ..fold_opts()
            },
            false,
        ),
        (
            "no-auto",
            Options {
                auto_compact: false,
                ..fold_opts()
            },
            false,
        ),
    ] {
        let path = dir.path().join(name);
        let s = Store::open(&path, o.clone()).unwrap();
        for i in 0..5000u32 {
            s.put(&key(i), &value(i, 0)).unwrap();
        }
        s.close().unwrap();
        let s = Store::open(&path, o).unwrap();
        let folded = if folds { 5000 } else { 0 };
        assert_eq!(s.stats().unwrap().compact_entries, folded, "{name}");
        assert_eq!(s.len().unwrap(), 5000, "{name}");
    }
}

/// Power lost in the middle of a compaction into the compact form (the close-time fold is
/// one): the compacted file is written beside the store as `<path>.compact` and made durable
/// before the rename publishes it, so what a power cut can leave is the store as it was plus
/// any prefix of `.compact` (cut at every record boundary of the section and inside blocks),
/// or, after the SUPERSEDED mark reached the old file but the rename did not reach the
/// directory, the old file with that mark plus the whole `.compact`. Each reopens with every
/// committed record, and the leftover `.compact` is removed.
#[test]
fn power_cut_in_the_middle_of_writing_compressed_blocks_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let s = Store::open(&path, opts()).unwrap();
    let mut model = Model::new();
    for chunk in (0..4000u32).collect::<Vec<_>>().chunks(500) {
        let mut b = Batch::new();
        for &i in chunk {
            b.put(key(i), value(i, 0));
            model.insert(key(i), value(i, 0));
        }
        s.batch(&b).unwrap();
    }
    for i in (0..4000u32).step_by(9) {
        s.delete(&key(i)).unwrap();
        model.remove(&key(i));
    }
    s.sync().unwrap();
    let before = std::fs::read(&path).unwrap();
    let old = dir.path().join("old-inode");
    std::fs::hard_link(&path, &old).unwrap();
    s.compact().unwrap();
    // The compacted file as the rename published it (synced), and the old file with its mark.
    let new = std::fs::read(&path).unwrap();
    let marked = std::fs::read(&old).unwrap();
    drop(s);
    // (`before` ends in the writer's preallocated zeros; the mark was written over them.)
    assert_eq!(
        records(&marked).last().map(|r| r.1),
        Some(5),
        "no SUPERSEDED mark"
    );
    let recs = records(&new);
    assert!(
        recs.iter().filter(|r| r.1 == 6).count() >= 4,
        "too few blocks"
    );
    let mut cuts: Vec<usize> = vec![0, 100, 4096];
    for &(off, _, len) in &recs {
        cuts.extend([off, off + 1, off + len / 2, off + len - 1]);
    }
    cuts.push(new.len() - 1);
    let tmp = dir.path().join("p.db.compact");
    let check = |what: &str, store: &[u8], compact: &[u8]| {
        std::fs::write(&path, store).unwrap();
        std::fs::write(&tmp, compact).unwrap();
        let s = Store::open(&path, opts()).unwrap();
        assert_eq!(contents(&s), model, "{what}");
        s.close().unwrap();
        assert!(
            !tmp.exists(),
            "{what}: the leftover .compact was not removed"
        );
        let s = Store::open(&path, Options::from_dbm_flag("r").unwrap()).unwrap();
        assert_eq!(contents(&s), model, "{what}: reopened");
        assert!(s.check().unwrap().is_ok(), "{what}");
    };
    for cut in cuts {
        check(
            &format!("cut at {cut}"),
            &before,
            &new[..cut.min(new.len())],
        );
    }
    check("marked, rename lost", &marked, &new);
}

/// The DICT records of a file (the dictionary and its copy), as bytes.
fn dict_records(path: &std::path::Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    records(&bytes)
        .into_iter()
        .filter(|r| r.1 == 4)
        .map(|(off, _, len)| bytes[off..off + len].to_vec())
        .collect()
}

/// A compaction keeps the section's dictionary while the log tier it folds in is at most as
/// large as the section decompressed (training costs more than writing the blocks), and
/// trains a new one when the new data outweighs what the dictionary was made for; either way
/// every record reads back and the file checks clean.
#[test]
fn compaction_keeps_the_dictionary_until_the_new_data_outweighs_the_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let s = Store::open(&path, opts()).unwrap();
    let mut model = Model::new();
    let mut put = |s: &Store, range: std::ops::Range<u32>, gen: u32| {
        for i in range {
            s.put(&key(i), &value(i, gen)).unwrap();
            model.insert(key(i), value(i, gen));
        }
    };
    put(&s, 0..5000, 0);
    s.compact().unwrap();
    let first = dict_records(&path);
    assert_eq!(first.len(), 2, "the dictionary and its copy");
    // A fifth more: kept.
    put(&s, 5000..6000, 0);
    s.compact().unwrap();
    assert_eq!(
        dict_records(&path),
        first,
        "a small fold trained a new dictionary"
    );
    // Three times the section again, with other values: trained afresh.
    put(&s, 6000..24_000, 7);
    s.compact().unwrap();
    assert_ne!(
        dict_records(&path),
        first,
        "the dictionary was never retrained"
    );
    assert_eq!(s.stats().unwrap().compact_entries, 24_000);
    assert_reads(&s, &model, (30_000..30_010).map(key));
    s.close().unwrap();
    assert!(check_file(&path).unwrap().is_ok());
}

/// Compactions while another thread keeps writing (puts, overwrites, deletes, in batches):
/// what is committed while the snapshot is copied is copied too, first without the commit
/// lock, then the last commits under it; afterwards (and after a reopen) the store holds
/// exactly the model, in the compact form and in the plain log form.
#[test]
fn compaction_copies_every_commit_made_while_it_runs() {
    for compact_form in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.cellar");
        let o = Options {
            compact_form,
            ..opts()
        };
        let s = std::sync::Arc::new(Store::open(&path, o.clone()).unwrap());
        let mut b = Batch::new();
        for i in 0..60_000u32 {
            b.put(key(i), value(i, 0));
        }
        s.batch(&b).unwrap();
        s.compact().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (s, stop) = (std::sync::Arc::clone(&s), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut model: Model = (0..60_000u32).map(|i| (key(i), value(i, 0))).collect();
                let mut round = 1u32;
                while !stop.load(std::sync::atomic::Ordering::Acquire) || round < 40 {
                    let mut b = Batch::new();
                    for j in 0..500u32 {
                        let i = (round * 7919 + j * 131) % 80_000;
                        if j % 5 == 0 {
                            b.delete(key(i));
                            model.remove(&key(i));
                        } else {
                            b.put(key(i), value(i, round));
                            model.insert(key(i), value(i, round));
                        }
                    }
                    s.batch(&b).unwrap();
                    round += 1;
                }
                (model, round)
            })
        };
        for _ in 0..4 {
            s.compact().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        let (model, rounds) = writer.join().unwrap();
        assert!(rounds >= 40);
        assert_eq!(contents(&s), model);
        s.compact().unwrap();
        assert_eq!(contents(&s), model);
        std::sync::Arc::try_unwrap(s).unwrap().close().unwrap();
        assert!(check_file(&path).unwrap().is_ok());
        let s = Store::open(&path, o).unwrap();
        assert_eq!(contents(&s), model);
        assert_reads(&s, &model, (80_000..80_010).map(key));
    }
}

/// A compaction reads every log record it copies through its checksum (from the mapped file):
/// a damaged one stops it with `Error::Corrupt`, and the store stays as it was (every other
/// record reads, the damaged one is reported, no temporary file is left). For a plain log, a
/// log tier merged with a compact section, and values compressed one by one.
#[test]
fn a_damaged_log_record_stops_compaction_and_leaves_the_store_as_it_was() {
    for (compression, with_section) in [
        (Compression::None, false),
        (Compression::None, true),
        (Compression::Zstd { level: 3 }, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let o = Options {
            compression,
            ..opts()
        };
        let val = |i: u32| value(i, 0).repeat(4);
        {
            let s = Store::open(&path, o.clone()).unwrap();
            if with_section {
                for i in 0..1000 {
                    s.put(&key(i), &val(i)).unwrap();
                }
                s.compact().unwrap();
            }
            let mut b = Batch::new();
            for i in 1000..3000 {
                b.put(key(i), val(i));
            }
            s.batch(&b).unwrap();
            s.close().unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let k = key(1500);
        let pos = bytes
            .windows(k.len())
            .position(|w| w == k.as_slice())
            .expect("the key is in the log");
        bytes[pos + k.len() + 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let s = Store::open(&path, o.clone()).unwrap();
        match s.compact() {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("{compression:?}, section {with_section}: {other:?}"),
        }
        for i in (0..if with_section { 1000 } else { 0 })
            .chain(1000..3000)
            .filter(|&i| i != 1500)
        {
            assert_eq!(s.get(&key(i)).unwrap(), Some(val(i)), "key {i}");
        }
        assert!(matches!(s.get(&key(1500)), Err(Error::Corrupt { .. })));
        assert!(!dir.path().join("d.db.compact").exists());
    }
}

/// Writers that open the store while another handle compacts it again and again never take
/// the running compaction's `<path>.compact` for a leftover (an opener that deleted it without
/// the compaction lock fails this at once). The narrower race this guards against (checking
/// that no lock was held, then deleting, while a compaction of the next file started in
/// between) needs a preemption in a window of microseconds: the multi-process stress test met
/// it once; this test does not reproduce it on demand.
#[test]
fn openers_never_delete_a_running_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let s = Store::open(&path, opts()).unwrap();
    let mut b = Batch::new();
    for i in 0..3000 {
        b.put(key(i), value(i, 0));
    }
    s.batch(&b).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let o = Store::open(&path, opts()).unwrap();
                    o.close().unwrap();
                }
            });
        }
        // The openers stop when this scope ends, also by a panic below.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        for round in 0..150u32 {
            s.put(&key(round % 3000), &value(round, 1)).unwrap();
            s.compact()
                .unwrap_or_else(|e| panic!("compaction {round}: {e}"));
        }
    });
    assert_eq!(s.get(&key(149)).unwrap(), Some(value(149, 1)));
}

/// `compact()` and the close-time fold redo what a running background compaction is doing:
/// that compaction stops at its next block and deletes its unfinished file, instead of being
/// waited for and then rewritten. Nothing is lost either way, no temporary file is left, and
/// the store reopens with every record. (An abandoned background compaction never switches
/// files: `compact()` then moves the generation by one, where a background compaction that
/// finished first would have moved it by two.)
#[test]
fn a_compaction_the_caller_waits_for_abandons_the_background_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let tmp = dir.path().join("a.db.compact");
    let o = Options {
        compact_form: true,
        auto_compact: true,
        compact_log_bytes: 1 << 20,
        ..Options::default()
    };
    let mut model = Model::new();
    let mut abandoned = 0;
    for round in 0..12u32 {
        let s = Store::open(&path, o.clone()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut j = 0u32;
        // Overwrites of 20,000 keys (plus a few deletes) until a background compaction has
        // created its file.
        while !tmp.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "no background compaction"
            );
            let mut b = Batch::new();
            for _ in 0..1000 {
                let i = (j * 7919) % 20_000;
                if j % 97 == 0 {
                    b.delete(key(i));
                    model.remove(&key(i));
                } else {
                    b.put(key(i), value(i, round));
                    model.insert(key(i), value(i, round));
                }
                j += 1;
            }
            s.batch(&b).unwrap();
        }
        if round % 2 == 0 {
            let before = s.stats().unwrap().generation;
            s.compact().unwrap();
            if s.stats().unwrap().generation == before + 1 {
                abandoned += 1;
            }
            assert!(!tmp.exists(), "round {round}");
            assert_eq!(contents(&s), model, "round {round}");
        }
        s.close().unwrap();
        assert!(!tmp.exists(), "round {round}");
        assert!(check_file(&path).unwrap().is_ok(), "round {round}");
        let s = Store::open(&path, o.clone()).unwrap();
        assert_eq!(contents(&s), model, "round {round}");
        assert!(s.stats().unwrap().compact_blocks > 0, "round {round}");
        s.close().unwrap();
    }
    assert!(
        abandoned > 0,
        "compact() never found a background compaction to abandon"
    );
}

#[test]
fn point_reads_that_keep_missing_warm_the_block_cache_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.db");
    let s = Store::open(&path, opts()).unwrap();
    let mut b = Batch::new();
    for i in 0..20_000u32 {
        b.put(key(i), value(i, 0));
    }
    s.batch(&b).unwrap();
    s.compact().unwrap();
    let blocks = s.stats().unwrap().compact_blocks;
    assert!(blocks >= 16, "{blocks} blocks");
    s.close().unwrap();
    // Keys spread over the whole store: each of the first reads loads a block of its own.
    let spread = |n: u32| (0..n).map(move |j| key(j * 20_000 / n));
    for warm in [true, false] {
        let s = Store::open(
            &path,
            Options {
                read_only: true,
                warm_block_cache: warm,
                ..opts()
            },
        )
        .unwrap();
        for k in spread(12) {
            assert!(s.get(&k).unwrap().is_some());
        }
        // Give a warming thread time to load every block (misses count its loads too).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while warm
            && s.stats().unwrap().block_cache_misses < blocks
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let before = s.stats().unwrap();
        for i in 0..20_000u32 {
            assert_eq!(s.get(&key(i)).unwrap(), Some(value(i, 0)));
        }
        let after = s.stats().unwrap();
        if warm {
            assert_eq!(
                after.block_cache_misses, before.block_cache_misses,
                "every block was loaded ahead: {before:?} {after:?}"
            );
        } else {
            // Only the reads load blocks: each one once.
            assert!(before.block_cache_misses <= 12, "{before:?}");
            assert_eq!(after.block_cache_misses, blocks, "{after:?}");
        }
    }
    // A handle dropped while its warming thread runs: nothing hangs, the file is intact.
    for _ in 0..5 {
        let s = Store::open(
            &path,
            Options {
                read_only: true,
                ..opts()
            },
        )
        .unwrap();
        for k in spread(40) {
            s.get(&k).unwrap();
        }
        drop(s);
    }
    assert!(check_file(&path).unwrap().is_ok());
    // A cache too small for the whole section is not warmed (warming would only evict).
    let s = Store::open(
        &path,
        Options {
            read_only: true,
            block_cache_bytes: 256 << 10,
            ..opts()
        },
    )
    .unwrap();
    for k in spread(40) {
        s.get(&k).unwrap();
    }
    let misses = s.stats().unwrap().block_cache_misses;
    assert!(misses >= 8, "{misses}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.stats().unwrap().block_cache_misses, misses);
}

/// A walk reads the blocks it does not find cached without caching them (filling the cache
/// cost a cold walk three times its decoding), hits the ones point reads cached, and every
/// entry comes out; point reads still fill the cache.
#[test]
fn a_walk_reads_blocks_without_filling_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walk.db");
    let s = Store::open(&path, opts()).unwrap();
    let mut b = Batch::new();
    let mut model = Model::new();
    for i in 0..5000 {
        b.put(key(i), value(i, 0));
        model.insert(key(i), value(i, 0));
    }
    s.batch(&b).unwrap();
    s.compact().unwrap();
    s.close().unwrap();

    let s = Store::open(&path, opts()).unwrap();
    assert!(s.stats().unwrap().compact_blocks > 1);
    assert_eq!(contents(&s), model);
    let st = s.stats().unwrap();
    assert!(st.block_cache_misses > 0, "{st:?}");
    assert_eq!(st.block_cache_bytes, 0, "a walk filled the cache: {st:?}");
    // A point read caches its block; the next walk finds that one cached (a hit).
    assert_eq!(s.get(&key(42)).unwrap(), Some(value(42, 0)));
    let st = s.stats().unwrap();
    assert!(st.block_cache_bytes > 0, "{st:?}");
    assert_eq!(contents(&s), model);
    let after = s.stats().unwrap();
    assert!(after.block_cache_hits > st.block_cache_hits, "{after:?}");
    assert_eq!(after.block_cache_bytes, st.block_cache_bytes, "{after:?}");

    // With a log tier on top (overwrites, deletes, new keys): every live pair once, and
    // `keys()` in the order `for_each` gives the pairs (dbm's keys() and items() agree).
    for i in (0..5000).step_by(3) {
        s.put(&key(i), &value(i, 1)).unwrap();
        model.insert(key(i), value(i, 1));
    }
    for i in (1..5000).step_by(7) {
        s.delete(&key(i)).unwrap();
        model.remove(&key(i));
    }
    for i in 5000..6000 {
        s.put(&key(i), &value(i, 2)).unwrap();
        model.insert(key(i), value(i, 2));
    }
    assert_eq!(contents(&s), model);
    let mut order = Vec::new();
    s.for_each(|k, _| order.push(k.to_vec())).unwrap();
    assert_eq!(s.keys().unwrap(), order);
}
