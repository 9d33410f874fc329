//! The crash-and-damage matrix (issue 13; the outcomes are the policy of docs/engine-format.md
//! section 4): for each way a store can be left behind ({clean close, writer killed with
//! SIGKILL, power cut simulated through the storage trait}) and each kind of damage (a bit flip
//! in every region: magic, header, checkpoint slot, index, record header, key, value, an old
//! record before the checkpoint, the tail; a truncation in every region; appended garbage), the
//! store is opened in every mode ('r', 'w', 'c', 'n'), read with get and iteration, checked
//! with `check_file` and repaired, and each outcome is asserted:
//!
//! * open either fails with an error that names the damage and `cellar repair` (the file is
//!   left as it was), or succeeds and shows exactly the intact, committed records (never a
//!   silent prefix of a cleanly closed store, never a prefix cut at damage that intact records
//!   follow);
//! * a damaged record that open cannot see (written before the checkpoint) is reported by
//!   `get` and by iteration (one error item, the walk goes on);
//! * `check_file` reports every case except a torn tail of a store whose writer died;
//! * `repair` recovers every intact record of every commit that a later intact commit end
//!   proves complete (the oracle below computes that set from the bytes independently).
//!
//! The matrix runs twice: on plain stores, and on compact-form stores (docs/engine-format.md
//! section 10), whose first 400 records were compacted into zstd blocks with a trained
//! dictionary before 100 more (before the checkpoint) and the phase-2 records were written to
//! the log tier. The compact form adds three regions of its own: a BLOCK (a flipped bit inside the compressed bytes is
//! reported by `get` of a key in that block, by iteration as one error, and by `check`;
//! every other block's records read and are repaired), the BLOCKINDEX (rebuilt at open) and
//! the first DICT (its copy is used); a cut in any of them is refused.
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(clippy::manual_is_multiple_of)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use cellar_engine::{check_file, repair, Batch, Crash, Error, MemStorage, Options, Store};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

const BATCHES: u32 = 40;
const SINGLES: u32 = 20;

fn batch_key(i: u32, j: u32) -> Vec<u8> {
    format!("batch-{i:03}-{j}").into_bytes()
}

fn batch_val(i: u32, j: u32) -> Vec<u8> {
    let n = 20 + ((i * 37 + j * 11) % 280) as usize;
    (0..n).map(|x| (x as u32 * 13 + i + j) as u8).collect()
}

fn single_key(i: u32) -> Vec<u8> {
    format!("single-{i:03}").into_bytes()
}

fn single_val(i: u32) -> Vec<u8> {
    format!("value of single {i}").into_bytes()
}

fn phase1_opts() -> Options {
    Options {
        auto_compact: false,
        checkpoint_bytes: 16 << 10,
        ..Options::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Plain,
    Compact,
}

/// Compact form: batches written to the log tier after the compaction (records before the
/// checkpoint that close writes, like plain stores' phase 1).
const AFTER: u32 = 10;

fn after_key(i: u32, j: u32) -> Vec<u8> {
    format!("after-{i:02}-{j}").into_bytes()
}

/// Phase 1 in a fresh store at `path`, then (compact form) a compaction into blocks and
/// `AFTER` more batches, then a clean close.
fn phase1_store(path: &Path, form: Form) {
    let s = Store::open(
        path,
        Options {
            compact_form: form == Form::Compact,
            ..phase1_opts()
        },
    )
    .unwrap();
    phase1(&s);
    if form == Form::Compact {
        s.compact().unwrap();
        for i in 0..AFTER {
            let mut b = Batch::new();
            for j in 0..10 {
                b.put(after_key(i, j), batch_val(i + 100, j));
            }
            s.batch(&b).unwrap();
        }
    }
    s.close().unwrap();
}

fn phase2_opts() -> Options {
    Options {
        auto_compact: false,
        checkpoint_bytes: 1 << 30,
        ..Options::default()
    }
}

fn phase1(s: &Store) {
    for i in 0..BATCHES {
        let mut b = Batch::new();
        for j in 0..10 {
            b.put(batch_key(i, j), batch_val(i, j));
        }
        s.batch(&b).unwrap();
    }
}

fn phase2(s: &Store, n: u32) {
    for i in 0..n {
        s.put(&single_key(i), &single_val(i)).unwrap();
    }
}

/// Child process: phase 1, clean close, phase 2 without a close; then waits to be killed.
#[test]
fn matrix_killed_writer_child() {
    let Ok(path) = std::env::var("CELLAR_MATRIX_PATH") else {
        return;
    };
    let form = if std::env::var_os("CELLAR_MATRIX_COMPACT").is_some() {
        Form::Compact
    } else {
        Form::Plain
    };
    phase1_store(Path::new(&path), form);
    let s = Store::open(&path, phase2_opts()).unwrap();
    phase2(&s, SINGLES);
    let mut out = std::io::stdout().lock();
    writeln!(out, "DONE").unwrap();
    out.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(600));
    drop(s);
}

fn clean_image(dir: &Path, form: Form) -> Vec<u8> {
    let p = dir.join("clean");
    phase1_store(&p, form);
    let s = Store::open(&p, phase2_opts()).unwrap();
    phase2(&s, SINGLES);
    s.close().unwrap();
    std::fs::read(&p).unwrap()
}

fn killed_image(dir: &Path, form: Form) -> Vec<u8> {
    let p = dir.join("killed");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    if form == Form::Compact {
        cmd.env("CELLAR_MATRIX_COMPACT", "1");
    }
    let mut child = cmd
        .args([
            "--exact",
            "matrix_killed_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CELLAR_MATRIX_PATH", &p)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let done = BufReader::new(out)
        .lines()
        .map_while(|l| l.ok())
        .any(|l| l.ends_with("DONE"));
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    assert!(done, "the writer child did not finish its writes");
    std::fs::read(&p).unwrap()
}

fn power_image(dir: &Path, form: Form) -> Vec<u8> {
    let mem = match form {
        Form::Plain => {
            let mem = Arc::new(MemStorage::new());
            let s = Store::open_storage(mem.clone(), phase1_opts()).unwrap();
            phase1(&s);
            s.close().unwrap();
            mem
        }
        // Compaction needs a file (it writes a second one and renames it): phase 1 is made on
        // disk, the power cut happens through the storage trait on top of it.
        Form::Compact => {
            let p = dir.join("power-phase1");
            phase1_store(&p, form);
            Arc::new(MemStorage::from_bytes(std::fs::read(&p).unwrap()))
        }
    };
    let s = Store::open_storage(mem.clone(), phase2_opts()).unwrap();
    phase2(&s, SINGLES - 2);
    s.sync().unwrap();
    s.put(&single_key(SINGLES - 2), &single_val(SINGLES - 2))
        .unwrap();
    s.put(&single_key(SINGLES - 1), &single_val(SINGLES - 1))
        .unwrap();
    // Power lost: the synced image, the new superblock, 7 bytes of the unsynced writes.
    let img = mem.crash_image(Crash::Power {
        keep: 7,
        old_superblock: false,
    });
    drop(s);
    img
}

// ---- an independent reading of the format (docs/engine-format.md section 3) ----

#[derive(Debug, Clone, Copy)]
struct Rec {
    off: usize,
    len: usize,
    kind: u8,
    flags: u8,
    hlen: usize,
    klen: usize,
}

fn varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for (i, &x) in b.iter().enumerate().take(10) {
        v |= ((x & 0x7f) as usize) << (7 * i);
        if x & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The records of an undamaged image, in order (stops at zeros or a torn record).
fn records(img: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut off = 4096;
    while off + 8 <= img.len() {
        let kind = img[off + 4];
        if kind == 0 {
            break;
        }
        let Some((klen, n1)) = varint(&img[off + 6..]) else {
            break;
        };
        let Some((vlen, n2)) = varint(&img[off + 6 + n1..]) else {
            break;
        };
        let hlen = 6 + n1 + n2;
        let len = hlen + klen + vlen;
        if off + len > img.len() {
            break;
        }
        let crc = u32::from_le_bytes(img[off..off + 4].try_into().unwrap());
        if crc32c::crc32c(&img[off + 4..off + len]) != crc {
            break;
        }
        out.push(Rec {
            off,
            len,
            kind,
            flags: img[off + 5],
            hlen,
            klen,
        });
        off += len;
    }
    out
}

/// The newest valid checkpoint slot: (index_offset, covers_end).
fn newest_slot(img: &[u8]) -> (usize, usize) {
    let mut best = (0u64, 0usize, 0usize);
    for at in [64usize, 128] {
        let b = &img[at..at + 64];
        let crc = u32::from_le_bytes(b[60..64].try_into().unwrap());
        if crc32c::crc32c(&b[..60]) != crc {
            continue;
        }
        let seq = u64::from_le_bytes(b[0..8].try_into().unwrap());
        if seq > best.0 {
            best = (
                seq,
                u64::from_le_bytes(b[8..16].try_into().unwrap()) as usize,
                u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize,
            );
        }
    }
    (best.1, best.2)
}

/// The entries of a BLOCK record of `img` (section 10.2: `u32 entries, u32 raw_len`, a zstd
/// frame made with the dictionary of the file's first DICT record, if any; decompressed:
/// `varint key_len, varint value_len, key, value` per entry).
fn block_entries(img: &[u8], recs: &[Rec], r: &Rec) -> Vec<(Vec<u8>, Vec<u8>)> {
    let body = &img[r.off + r.hlen + r.klen..r.off + r.len];
    let n = u32::from_le_bytes(body[0..4].try_into().unwrap()) as usize;
    let raw_len = u32::from_le_bytes(body[4..8].try_into().unwrap()) as usize;
    let raw = match recs.iter().find(|d| d.kind == 4) {
        Some(d) => {
            let dict = &img[d.off + d.hlen + d.klen..d.off + d.len];
            zstd::bulk::Decompressor::with_dictionary(dict)
                .unwrap()
                .decompress(&body[8..], raw_len)
                .unwrap()
        }
        None => zstd::bulk::decompress(&body[8..], raw_len).unwrap(),
    };
    assert_eq!(raw.len(), raw_len);
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    while at < raw.len() {
        let (kl, a) = varint(&raw[at..]).unwrap();
        let (vl, b) = varint(&raw[at + a..]).unwrap();
        let k0 = at + a + b;
        out.push((
            raw[k0..k0 + kl].to_vec(),
            raw[k0 + kl..k0 + kl + vl].to_vec(),
        ));
        at = k0 + kl + vl;
    }
    assert_eq!(out.len(), n);
    out
}

/// Every entry of a BLOCK record that is byte-for-byte intact in `damaged` (a block is whole
/// by construction), then every PUT record that is intact and followed (at or after it) by an
/// intact record that ends a commit: what repair must recover, and what an open that
/// succeeds must show.
fn oracle(orig: &[u8], recs: &[Rec], damaged: &[u8]) -> Map {
    let intact = |r: &Rec| {
        r.off + r.len <= damaged.len()
            && damaged[r.off..r.off + r.len] == orig[r.off..r.off + r.len]
    };
    let last_end = recs
        .iter()
        .filter(|r| intact(r) && r.flags & 1 == 0 && r.kind != 5)
        .map(|r| r.off)
        .max();
    let mut m = Map::new();
    for r in recs.iter().filter(|r| r.kind == 6 && intact(r)) {
        m.extend(block_entries(orig, recs, r));
    }
    for r in recs {
        if r.kind == 1 && intact(r) && last_end.is_some_and(|e| r.off <= e) {
            let k0 = r.off + r.hlen;
            m.insert(
                orig[k0..k0 + r.klen].to_vec(),
                orig[k0 + r.klen..r.off + r.len].to_vec(),
            );
        }
    }
    m
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Clean,
    Killed,
    Power,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Magic,
    Header,
    Checkpoint,
    Index,
    RecordHeader,
    Key,
    Value,
    OldValue,
    Tail,
    /// Compact form: inside the compressed bytes of a BLOCK (not the first or last one).
    Block,
    /// Compact form: the BLOCKINDEX record.
    BlockIndex,
    /// Compact form: the first DICT record.
    Dict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    Flip(Region),
    Cut(Region),
    Garbage,
}

/// The documented outcome: does open succeed, does check say ok, how many damaged records
/// does iteration report.
struct Outcome {
    opens: bool,
    check_ok: bool,
    iter_errors: usize,
}

fn expected(state: State, d: Damage) -> Outcome {
    use Region::*;
    let crashed = state != State::Clean;
    let (opens, check_ok, iter_errors) = match d {
        Damage::Flip(Magic | Header) => (false, false, 0),
        // Redundant metadata: open falls back (other slot / older checkpoint / full scan);
        // check reports it.
        Damage::Flip(Checkpoint | Index) => (true, false, 0),
        // Followed by intact records: damage, in every state.
        Damage::Flip(RecordHeader | Key | Value) => (false, false, 0),
        // Before the checkpoint: open does not rescan; reads and check report it. A damaged
        // block likewise: open reads no block; its keys' reads, the walk (one error for the
        // block) and check report it.
        Damage::Flip(OldValue | Block) => (true, false, 1),
        // Redundant: the block index is rebuilt from the blocks, the DICT's copy is used.
        Damage::Flip(BlockIndex | Dict) => (true, false, 0),
        Damage::Cut(Block | BlockIndex | Dict) => (false, false, 0),
        // The last record: damage after a clean close; a torn tail if the writer died.
        Damage::Flip(Tail) => (crashed, crashed, 0),
        Damage::Cut(Magic | Header | Checkpoint | Index) => (false, false, 0),
        Damage::Cut(OldValue) => (false, false, 0),
        // Cut after the newest checkpoint: a cleanly closed store reports it; a store whose
        // writer died cannot tell it from a torn tail.
        Damage::Cut(RecordHeader | Key | Value | Tail) => (crashed, crashed, 0),
        Damage::Garbage => (crashed, crashed, 0),
    };
    Outcome {
        opens,
        check_ok,
        iter_errors,
    }
}

fn damage(img: &[u8], d: Damage) -> (Vec<u8>, Option<Vec<u8>>) {
    let recs = records(img);
    let (index_off, covers_end) = newest_slot(img);
    let puts_after: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.kind == 1 && r.off >= covers_end)
        .collect();
    assert!(puts_after.len() >= 3, "need records after the checkpoint");
    let mid = *puts_after[puts_after.len() / 2];
    let last = *recs.last().unwrap();
    let old = || {
        *recs
            .iter()
            .find(|r| r.kind == 1 && r.off + r.len < index_off && r.off > 8192)
            .unwrap()
    };
    let blocks: Vec<&Rec> = recs.iter().filter(|r| r.kind == 6).collect();
    let kind_rec = |kind: u8| *recs.iter().find(|r| r.kind == kind).unwrap();
    let block = || *blocks[blocks.len() / 2];
    let key_of = |r: &Rec| img[r.off + r.hlen..r.off + r.hlen + r.klen].to_vec();
    let index_rec = *recs.iter().find(|r| r.off == index_off).unwrap();
    assert_eq!(index_rec.kind, 3);
    let at = |r: Region| -> usize {
        match r {
            Region::Magic => 3,
            Region::Header => 17,
            Region::Checkpoint => {
                // The newest slot's covers_end field.
                let a = u64::from_le_bytes(img[64..72].try_into().unwrap());
                let b = u64::from_le_bytes(img[128..136].try_into().unwrap());
                if a > b {
                    64 + 20
                } else {
                    128 + 20
                }
            }
            Region::Index => index_rec.off + index_rec.hlen + index_rec.len / 2,
            Region::RecordHeader => mid.off + 6,
            Region::Key => mid.off + mid.hlen + 2,
            Region::Value => mid.off + mid.hlen + mid.klen + 3,
            Region::OldValue => old().off + old().hlen + old().klen + 5,
            Region::Tail => last.off + last.len - 2,
            Region::Block => block().off + block().len / 2,
            Region::BlockIndex => kind_rec(7).off + kind_rec(7).len / 2,
            Region::Dict => kind_rec(4).off + kind_rec(4).len / 2,
        }
    };
    let mut out = img.to_vec();
    let mut bad_key = None;
    match d {
        Damage::Flip(r) => {
            let p = at(r);
            out[p] ^= if r == Region::RecordHeader {
                0x01
            } else {
                0x10
            };
            if r == Region::OldValue {
                bad_key = Some(key_of(&old()));
            }
            if r == Region::Block {
                bad_key = Some(block_entries(img, &recs, &block())[3].0.clone());
            }
        }
        Damage::Cut(r) => {
            let p = match r {
                Region::Magic => 5,
                Region::Header => 40,
                Region::Checkpoint => 100,
                Region::OldValue => old().off + old().len - 3,
                r => at(r),
            };
            out.truncate(p);
        }
        Damage::Garbage => {
            let mut x = 0x2545_f491_4f6c_dd1du64;
            for _ in 0..777 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push(x as u8);
            }
        }
    }
    (out, bad_key)
}

fn mode(flag: &str) -> Options {
    Options {
        auto_compact: false,
        ..Options::from_dbm_flag(flag).unwrap()
    }
}

fn run_case(dir: &Path, state: State, orig: &[u8], d: Damage) {
    let what = format!("{state:?} x {d:?}");
    let (img, bad_key) = damage(orig, d);
    let want = oracle(orig, &records(orig), &img);
    let out = expected(state, d);
    let p = dir.join("case");
    // Open in every mode, each on a fresh copy.
    for flag in ["r", "w", "c", "n"] {
        std::fs::write(&p, &img).unwrap();
        match Store::open(&p, mode(flag)) {
            Ok(s) => {
                assert!(out.opens, "{what}: '{flag}' opened a store it must refuse");
                if flag == "n" {
                    assert_eq!(s.len().unwrap(), 0, "{what}: 'n'");
                    continue;
                }
                let mut got = Map::new();
                let mut errors = 0;
                for item in s.iter().unwrap() {
                    match item {
                        Ok((k, v)) => {
                            got.insert(k, v);
                        }
                        Err(e) => {
                            errors += 1;
                            let msg = e.to_string();
                            assert!(msg.contains("cellar repair"), "{what}: {msg}");
                        }
                    }
                }
                assert_eq!(errors, out.iter_errors, "{what}: '{flag}' iteration errors");
                assert!(
                    got == want,
                    "{what}: '{flag}' shows {} of {} intact records",
                    got.len(),
                    want.len()
                );
                for (k, v) in want.iter().step_by(7) {
                    assert_eq!(s.get(k).unwrap().as_ref(), Some(v), "{what}: '{flag}' get");
                }
                if let Some(k) = &bad_key {
                    let e = s.get(k).unwrap_err();
                    assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e}");
                    assert!(s.keys().is_err(), "{what}: keys() hides the damage");
                }
                s.close().unwrap();
            }
            Err(e) => {
                assert!(!out.opens, "{what}: '{flag}' refused: {e}");
                let msg = e.to_string();
                assert!(
                    msg.contains("cellar repair")
                        && matches!(e, Error::Corrupt { .. } | Error::BadHeader { .. }),
                    "{what}: '{flag}': {msg}"
                );
                if let Error::Corrupt { reason, .. } = &e {
                    if matches!(
                        d,
                        Damage::Flip(Region::RecordHeader | Region::Key | Region::Value)
                    ) {
                        assert!(reason.contains("intact record"), "{what}: {reason}");
                    }
                }
                let after = std::fs::read(&p).unwrap();
                // Only the writer-pid field (192..196) may change.
                let mut a = after.clone();
                let mut b = img.clone();
                for x in [&mut a, &mut b] {
                    if x.len() >= 196 {
                        x[192..196].fill(0);
                    }
                }
                assert!(a == b, "{what}: '{flag}' modified a store it refused");
            }
        }
    }
    // check.
    std::fs::write(&p, &img).unwrap();
    let report = check_file(&p).unwrap();
    assert_eq!(report.is_ok(), out.check_ok, "{what}: check {report:?}");
    // repair recovers every intact record.
    let fixed = dir.join("fixed");
    let _ = std::fs::remove_file(&fixed);
    let r = repair(&p, &fixed, Options::default()).unwrap();
    let s = Store::open(&fixed, mode("r")).unwrap();
    let got: Map = s.iter().unwrap().map(|x| x.unwrap()).collect();
    assert!(
        got == want,
        "{what}: repair recovered {} of {} intact records ({r:?})",
        got.len(),
        want.len()
    );
    assert!(s.check().unwrap().is_ok());
}

fn all_damage(form: Form) -> Vec<Damage> {
    use Region::*;
    let mut v = Vec::new();
    let mut regions = vec![
        Magic,
        Header,
        Checkpoint,
        Index,
        RecordHeader,
        Key,
        Value,
        OldValue,
        Tail,
    ];
    if form == Form::Compact {
        regions.extend([Block, BlockIndex, Dict]);
    }
    for r in regions {
        v.push(Damage::Flip(r));
        v.push(Damage::Cut(r));
    }
    v.push(Damage::Garbage);
    v
}

fn matrix(form: Form) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let images = [
        (State::Clean, clean_image(dir.path(), form)),
        (State::Killed, killed_image(dir.path(), form)),
        (State::Power, power_image(dir.path(), form)),
    ];
    let mut cases = 0;
    for (state, img) in &images {
        let recs = records(img);
        if form == Form::Compact {
            // Phase 1 is in blocks (at least three, and a dictionary), phase 2 in the log.
            assert!(
                recs.iter().filter(|r| r.kind == 6).count() >= 3,
                "{state:?}"
            );
            assert_eq!(recs.iter().filter(|r| r.kind == 4).count(), 2, "{state:?}");
            assert!(!recs
                .iter()
                .any(|r| r.kind == 1 && img[r.off + r.hlen] == b'b'));
        }
        let after = if form == Form::Compact {
            AFTER as usize * 10
        } else {
            0
        };
        // The undamaged image opens with every record.
        let full = oracle(img, &recs, img);
        let n = BATCHES as usize * 10 + after + SINGLES as usize
            - if *state == State::Power { 2 } else { 0 };
        assert_eq!(full.len(), n, "{state:?}");
        let s =
            Store::open_storage(Arc::new(MemStorage::from_bytes(img.clone())), mode("r")).unwrap();
        let got: Map = s.iter().unwrap().map(|x| x.unwrap()).collect();
        assert!(got == full, "{form:?} {state:?}: the undamaged image");
        drop(s);
        for d in all_damage(form) {
            run_case(dir.path(), *state, img, d);
            cases += 1;
        }
    }
    cases
}

#[test]
fn crash_and_damage_matrix() {
    assert_eq!(matrix(Form::Plain), 3 * 19);
}

#[test]
fn crash_and_damage_matrix_compact_form() {
    assert_eq!(matrix(Form::Compact), 3 * 25);
}
