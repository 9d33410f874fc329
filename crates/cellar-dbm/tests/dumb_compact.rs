//! dbm.dumb compaction: live values packed, CPython reads the result, and a compaction
//! interrupted at any point leaves a store that opens with every acknowledged value (finished
//! if it was committed, discarded if not).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use cellar_dbm::{Backend, Flag};
use common::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// A store with dead space (moved and deleted values) and its expected contents.
fn make(dir: &Path, name: &str) -> (PathBuf, Model) {
    let p = dir.join(name);
    let db = Backend::Dumb.open(&p, Flag::Create, 0o644).unwrap();
    let mut model = Model::new();
    let mut rng = Rng(11);
    for i in 0..200u32 {
        let k = format!("key{i}").into_bytes();
        db.insert(&k, &random_bytes(&mut rng, 300)).unwrap();
        let v = random_bytes(&mut rng, 1500);
        db.insert(&k, &v).unwrap();
        model.insert(k, v);
    }
    for i in (0..200u32).step_by(4) {
        let k = format!("key{i}").into_bytes();
        db.remove(&k).unwrap();
        model.remove(&k);
    }
    db.close().unwrap();
    (p, model)
}

fn contents(p: &Path, flag: Flag) -> Model {
    let db = Backend::Dumb.open(p, flag, 0o644).unwrap();
    let m = db.items().unwrap().into_iter().collect();
    db.close().unwrap();
    m
}

fn suffixed(p: &Path, s: &str) -> PathBuf {
    let mut o = p.as_os_str().to_owned();
    o.push(s);
    PathBuf::from(o)
}

fn size(p: &Path) -> u64 {
    fs::metadata(suffixed(p, ".dat")).unwrap().len()
}

#[test]
fn compaction_packs_live_values_and_cpython_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let (p, model) = make(dir.path(), "db");
    let before = size(&p);
    let db = Backend::Dumb.open(&p, Flag::Write, 0o644).unwrap();
    db.compact().unwrap();
    let live: u64 = model
        .values()
        .map(|v| (v.len() as u64).div_ceil(512) * 512)
        .sum();
    assert!(size(&p) <= live, "{} > {live}", size(&p));
    assert!(size(&p) < before / 2);
    // The handle goes on working on the compacted files.
    db.insert(b"new", b"value").unwrap();
    db.close().unwrap();
    let mut want = model.clone();
    want.insert(b"new".to_vec(), b"value".to_vec());
    assert_eq!(contents(&p, Flag::Read), want);
    let names = listing(dir.path());
    assert!(
        names.iter().all(|n| !n.contains("compact")),
        "leftovers: {names:?}"
    );
    let out = python(
        "import sys, dbm.dumb\nd = dbm.dumb.open(sys.argv[1], 'r')\n\
         for k in sorted(d.keys()): print(k.hex(), d[k].hex())",
        &[p.to_str().unwrap()],
        "",
    );
    let got: Model = out
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (unhex(k), unhex(v))
        })
        .collect();
    assert_eq!(got, want);
    // Permissions are kept.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(suffixed(&p, ".dat"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode & 0o600, 0o600);
}

/// The files a compaction of `p` would produce, made in a copy so `p` itself is untouched.
fn compacted_files(dir: &Path, p: &Path) -> (Vec<u8>, Vec<u8>) {
    let copy = dir.join("copy");
    for s in [".dat", ".dir"] {
        fs::copy(suffixed(p, s), suffixed(&copy, s)).unwrap();
    }
    let db = Backend::Dumb.open(&copy, Flag::Write, 0o644).unwrap();
    db.compact().unwrap();
    db.close().unwrap();
    let out = (
        fs::read(suffixed(&copy, ".dat")).unwrap(),
        fs::read(suffixed(&copy, ".dir")).unwrap(),
    );
    for s in [".dat", ".dir", ".bak"] {
        let _ = fs::remove_file(suffixed(&copy, s));
    }
    out
}

#[test]
fn an_uncommitted_compaction_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let (p, model) = make(dir.path(), "db");
    let (dat, dir_text) = compacted_files(dir.path(), &p);
    // Crash before the commit point: the index is still the temporary file (maybe partial).
    fs::write(suffixed(&p, ".dat.compact"), &dat[..dat.len() / 2]).unwrap();
    fs::write(
        suffixed(&p, ".dir.compact.tmp"),
        &dir_text[..dir_text.len() / 3],
    )
    .unwrap();
    // A read-only open ignores the unfinished files and leaves them alone.
    assert_eq!(contents(&p, Flag::Read), model);
    assert!(suffixed(&p, ".dir.compact.tmp").exists());
    // A writable open removes them.
    assert_eq!(contents(&p, Flag::Write), model);
    assert!(!suffixed(&p, ".dir.compact.tmp").exists());
    assert!(!suffixed(&p, ".dat.compact").exists());
    assert_eq!(contents(&p, Flag::Read), model);
}

#[test]
fn a_committed_compaction_is_finished_by_the_next_open() {
    for renamed_dat in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (p, model) = make(dir.path(), "db");
        let (dat, dir_text) = compacted_files(dir.path(), &p);
        // Crash after the commit point (`.dir.compact` complete), before (or between) the
        // renames.
        if renamed_dat {
            fs::write(suffixed(&p, ".dat"), &dat).unwrap();
        } else {
            fs::write(suffixed(&p, ".dat.compact"), &dat).unwrap();
        }
        fs::write(suffixed(&p, ".dir.compact"), &dir_text).unwrap();
        // A read-only open reads the compacted pair where it lies and changes nothing.
        assert_eq!(contents(&p, Flag::Read), model, "renamed_dat={renamed_dat}");
        assert!(suffixed(&p, ".dir.compact").exists());
        // A writable open finishes the renames.
        assert_eq!(
            contents(&p, Flag::Write),
            model,
            "renamed_dat={renamed_dat}"
        );
        assert!(!suffixed(&p, ".dir.compact").exists());
        assert!(!suffixed(&p, ".dat.compact").exists());
        assert_eq!(fs::read(suffixed(&p, ".dat")).unwrap(), dat);
        assert_eq!(fs::read(suffixed(&p, ".dir")).unwrap(), dir_text);
        // 'n' discards everything, leftovers included.
        let db = Backend::Dumb.open(&p, Flag::New, 0o644).unwrap();
        assert_eq!(db.len().unwrap(), 0);
        db.close().unwrap();
    }
}

#[test]
fn compaction_on_a_read_only_or_closed_handle_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = make(dir.path(), "db");
    let db = Backend::Dumb.open(&p, Flag::Read, 0o644).unwrap();
    assert!(matches!(db.compact(), Err(cellar_dbm::DbmError::ReadOnly)));
    db.close().unwrap();
    assert!(matches!(db.compact(), Err(cellar_dbm::DbmError::Closed)));
}
