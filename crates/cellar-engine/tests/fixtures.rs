//! Golden fixtures (tests/fixtures/*.cellar, format version 1), including deliberately damaged
//! files. Each is recovered or reported exactly as docs/engine-format.md section 4 says.
//! Regenerate (only when the format version changes, keeping the old files!) with
//! `CELLAR_WRITE_FIXTURES=1 cargo test --release -p cellar-engine --test fixtures -- --ignored`.
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(clippy::manual_is_multiple_of)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cellar_engine::{repair, Batch, Compression, Error, Options, Store, ValueEncoding};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A private copy of a fixture (opening as a writer may truncate a torn tail).
fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(name);
    std::fs::copy(fixture(name), &p).unwrap();
    (d, p)
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:03}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-")
        .repeat(i as usize % 5 + 1)
        .into_bytes()
}

/// The operations every base fixture was built with.
fn populate(s: &Store) {
    for i in 0..50 {
        s.put(&key(i), &value(i)).unwrap();
    }
    s.delete(&key(3)).unwrap();
    let mut b = Batch::new();
    b.put(key(100), value(100))
        .put(key(101), value(101))
        .delete(key(4));
    s.batch(&b).unwrap();
}

fn expected() -> Map {
    let mut m: Map = (0..50).map(|i| (key(i), value(i))).collect();
    m.remove(&key(3));
    m.remove(&key(4));
    m.insert(key(100), value(100));
    m.insert(key(101), value(101));
    m
}

fn contents(s: &Store) -> Map {
    s.iter().unwrap().map(|r| r.unwrap()).collect()
}

fn ro() -> Options {
    Options::from_dbm_flag("r").unwrap()
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
#[ignore]
fn generate_fixtures() {
    if std::env::var("CELLAR_WRITE_FIXTURES").is_err() {
        return;
    }
    let dir = fixture("");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options {
        value_encoding: ValueEncoding::Pickle { protocol: 4 },
        ..Options::default()
    };
    // Clean store.
    let clean = tmp.path().join("clean");
    let s = Store::open(&clean, opts.clone()).unwrap();
    populate(&s);
    s.close().unwrap();
    let clean_bytes = std::fs::read(&clean).unwrap();
    std::fs::write(dir.join("v1-clean.cellar"), &clean_bytes).unwrap();
    // Never closed: no checkpoint, a zero-filled preallocated tail (as kill -9 leaves it).
    let open = tmp.path().join("open");
    let s = Store::open(&open, opts.clone()).unwrap();
    populate(&s);
    let end = s.stats().unwrap().file_bytes as usize;
    let mut b = std::fs::read(&open).unwrap();
    b.truncate(end + 300);
    b.resize(end + 300, 0);
    std::fs::write(dir.join("v1-no-checkpoint.cellar"), &b).unwrap();
    drop(s);
    // Torn tail: the first 10 bytes of a record.
    let extra = tmp.path().join("extra");
    std::fs::copy(&clean, &extra).unwrap();
    let s = Store::open(&extra, opts.clone()).unwrap();
    let start = s.stats().unwrap().file_bytes as usize;
    let mut b = Batch::new();
    b.put(b"torn-1".to_vec(), b"a".repeat(40))
        .put(b"torn-2".to_vec(), b"b".repeat(40))
        .put(b"torn-3".to_vec(), b"c".repeat(40));
    s.batch(&b).unwrap();
    s.put(b"after-1", b"x").unwrap();
    s.put(b"after-2", b"y").unwrap();
    let end = s.stats().unwrap().file_bytes as usize;
    let full = std::fs::read(&extra).unwrap()[..end].to_vec();
    drop(s);
    let batch_len = find(&full[start..], b"after-1") - 8;
    let mut torn = clean_bytes.clone();
    torn.extend_from_slice(&full[start..start + 10]);
    std::fs::write(dir.join("v1-torn-tail.cellar"), &torn).unwrap();
    // Torn batch: a 3-record batch missing its last 5 bytes.
    let mut tb = clean_bytes.clone();
    tb.extend_from_slice(&full[start..start + batch_len - 5]);
    std::fs::write(dir.join("v1-torn-batch.cellar"), &tb).unwrap();
    // Bit flip after the checkpoint, followed by intact records.
    let mut bf = clean_bytes.clone();
    bf.extend_from_slice(&full[start..]);
    let pos = start + find(&full[start..], b"torn-2") + 10;
    bf[pos] ^= 0x10;
    std::fs::write(dir.join("v1-bitflip-tail.cellar"), &bf).unwrap();
    // Bit flip in the middle (before the checkpoint), in key-010's value.
    let mut bm = clean_bytes.clone();
    let pos = find(&bm, b"key-010") + 7 + 3;
    bm[pos] ^= 0x01;
    std::fs::write(dir.join("v1-bitflip-middle.cellar"), &bm).unwrap();
    // Truncated header.
    std::fs::write(dir.join("v1-truncated-header.cellar"), &clean_bytes[..40]).unwrap();
    // Damaged header checksum.
    let mut bh = clean_bytes.clone();
    bh[44] ^= 0xff;
    std::fs::write(dir.join("v1-bad-header.cellar"), &bh).unwrap();
    // Compressed with a trained dictionary.
    let z = tmp.path().join("z");
    let s = Store::open(
        &z,
        Options {
            compression: Compression::ZstdDict { level: 3 },
            auto_compact: false,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..300u32 {
        s.put(&key(i), &dict_value(i)).unwrap();
    }
    s.compact().unwrap();
    s.close().unwrap();
    std::fs::copy(&z, dir.join("v1-zstd-dict.cellar")).unwrap();
}

fn dict_value(i: u32) -> Vec<u8> {
    format!(
        "{{'id': {i}, 'user': 'name{i}', 'mail': 'name{i}@example.org', 'roles': ['reader', 'writer'], 'active': {}}}",
        i % 2 == 0
    )
    .into_bytes()
}

#[test]
fn clean_store_reads_and_reports_its_header() {
    let s = Store::open(fixture("v1-clean.cellar"), ro()).unwrap();
    assert_eq!(contents(&s), expected());
    assert_eq!(s.value_encoding(), ValueEncoding::Pickle { protocol: 4 });
    assert_eq!(s.compression(), Compression::None);
    assert!(s.check().unwrap().is_ok());
}

#[test]
fn never_closed_store_replays_the_log_and_drops_the_zero_tail() {
    let (_d, p) = copy_of("v1-no-checkpoint.cellar");
    let s = Store::open(&p, ro()).unwrap();
    assert_eq!(contents(&s), expected());
    drop(s);
    let s = Store::open(&p, Options::default()).unwrap();
    assert_eq!(contents(&s), expected());
    assert_eq!(s.stats().unwrap().recovered_tail_bytes, 300);
}

#[test]
fn torn_tail_is_dropped() {
    let (_d, p) = copy_of("v1-torn-tail.cellar");
    let len = std::fs::metadata(&p).unwrap().len();
    let s = Store::open(&p, ro()).unwrap();
    assert_eq!(contents(&s), expected());
    drop(s);
    let s = Store::open(&p, Options::default()).unwrap();
    assert_eq!(s.stats().unwrap().recovered_tail_bytes, 10);
    assert_eq!(contents(&s), expected());
    s.close().unwrap();
    assert!(std::fs::metadata(&p).unwrap().len() < len + 4096 * 4);
}

#[test]
fn torn_batch_is_dropped_whole() {
    let (_d, p) = copy_of("v1-torn-batch.cellar");
    let s = Store::open(&p, Options::default()).unwrap();
    assert_eq!(contents(&s), expected());
    assert!(s.get(b"torn-1").unwrap().is_none());
    assert!(s.stats().unwrap().recovered_tail_bytes > 0);
}

#[test]
fn bit_flip_followed_by_intact_records_is_reported_not_truncated() {
    let (_d, p) = copy_of("v1-bitflip-tail.cellar");
    let before = std::fs::read(&p).unwrap();
    // The flipped byte is in the batch's second record ("torn-2").
    let clean_len = (find(&before, b"torn-2") - 8) as u64;
    match Store::open(&p, Options::default()) {
        Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, clean_len),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Only the writer-pid field (bytes 192..196) may change; the log is not truncated.
    let after = std::fs::read(&p).unwrap();
    assert!(
        after.len() == before.len() && after[4096..] == before[4096..],
        "open modified the log"
    );
    let out = p.with_extension("repaired");
    let r = repair(&p, &out, Options::default()).unwrap();
    assert_eq!(r.damage.len(), 1);
    assert_eq!(r.damage[0].offset, clean_len);
    // The damaged record belonged to a committed batch (a commit end follows it): every
    // intact record of that batch is kept, only the damaged one is lost.
    assert_eq!(r.dropped_partial_records, 0, "{r:?}");
    let s = Store::open(&out, ro()).unwrap();
    let mut want = expected();
    want.insert(b"torn-1".to_vec(), b"a".repeat(40));
    want.insert(b"torn-3".to_vec(), b"c".repeat(40));
    want.insert(b"after-1".to_vec(), b"x".to_vec());
    want.insert(b"after-2".to_vec(), b"y".to_vec());
    assert_eq!(contents(&s), want);
}

#[test]
fn bit_flip_in_the_middle_is_never_served() {
    let (_d, p) = copy_of("v1-bitflip-middle.cellar");
    let bytes = std::fs::read(&p).unwrap();
    let rec = (find(&bytes, b"key-010") - 8) as u64;
    let s = Store::open(&p, Options::default()).unwrap();
    match s.get(&key(10)) {
        Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, rec),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(s.get(&key(11)).unwrap().unwrap(), value(11));
    let report = s.check().unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert_eq!(report.damage[0].offset, rec);
    assert_eq!(report.index_errors.len(), 1);
    drop(s);
    let out = p.with_extension("repaired");
    let r = repair(&p, &out, Options::default()).unwrap();
    let mut want = expected();
    want.remove(&key(10));
    assert_eq!(r.keys, want.len() as u64);
    let s = Store::open(&out, ro()).unwrap();
    assert_eq!(contents(&s), want);
    assert_eq!(s.value_encoding(), ValueEncoding::Pickle { protocol: 4 });
}

#[test]
fn truncated_header_is_reported() {
    let (_d, p) = copy_of("v1-truncated-header.cellar");
    match Store::open(&p, Options::default()) {
        Err(e @ Error::BadHeader { .. }) => assert!(e.to_string().contains("truncated"), "{e}"),
        other => panic!("expected BadHeader, got {other:?}"),
    }
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 40);
    let r = repair(&p, p.with_extension("repaired"), Options::default()).unwrap();
    assert!(r.header_damaged);
    assert_eq!(r.keys, 0);
}

#[test]
fn damaged_header_is_reported_and_repair_salvages_everything() {
    let (_d, p) = copy_of("v1-bad-header.cellar");
    match Store::open(&p, ro()) {
        Err(e @ Error::BadHeader { .. }) => assert!(e.to_string().contains("checksum"), "{e}"),
        other => panic!("expected BadHeader, got {other:?}"),
    }
    let out = p.with_extension("repaired");
    let r = repair(
        &p,
        &out,
        Options {
            value_encoding: ValueEncoding::Pickle { protocol: 4 },
            ..Options::default()
        },
    )
    .unwrap();
    assert!(r.header_damaged);
    assert!(r.damage.is_empty(), "{r:?}");
    let s = Store::open(&out, ro()).unwrap();
    assert_eq!(contents(&s), expected());
    assert_eq!(s.value_encoding(), ValueEncoding::Pickle { protocol: 4 });
}

#[test]
fn dictionary_compressed_store_reads() {
    let s = Store::open(fixture("v1-zstd-dict.cellar"), ro()).unwrap();
    let st = s.stats().unwrap();
    assert!(st.has_dictionary);
    assert!(st.compression_ratio > 1.5, "{st:?}");
    for i in 0..300 {
        assert_eq!(s.get(&key(i)).unwrap().unwrap(), dict_value(i));
    }
}
