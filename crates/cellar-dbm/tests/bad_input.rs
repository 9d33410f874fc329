//! Bad input gives a clear dbm error, never a panic, and leaves every file as it was: a corrupt
//! `.dir` line, a truncated `.dat`, a damaged SQLite file, random bytes, a directory instead of
//! a file, an unwritable path, a missing file with 'r'.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cellar_dbm::{open, Backend, DbmError, Flag, BACKENDS};
use common::*;

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    listing(dir)
        .into_iter()
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap_or_default();
            (n, b)
        })
        .collect()
}

fn all_flags() -> [Flag; 3] {
    [Flag::Read, Flag::Write, Flag::Create]
}

fn make_dumb(dir: &Path) -> PathBuf {
    let p = dir.join("db");
    let db = Backend::Dumb.open(&p, Flag::Create, 0o666).unwrap();
    db.insert(b"first", b"1").unwrap();
    db.insert(b"second", &[2; 1000]).unwrap();
    db.insert(b"third", b"3").unwrap();
    db.close().unwrap();
    p
}

fn dir_path(p: &Path) -> PathBuf {
    p.with_extension("dir")
}

#[test]
fn corrupt_dir_lines_are_reported_with_their_line_number() {
    let bad_lines: [&[u8]; 8] = [
        b"garbage\n",
        b"'k', (0, \n",
        b"__import__('os').system('true'), (0, 1)\n",
        b"'k', (0, -1)\n",
        b"b'bytes key', (0, 1)\n",
        b"'\xe9', (0, 1), 3\n",
        b"\n",
        b"'k', 'not a pair'\n",
    ];
    for bad in bad_lines {
        let dir = tempfile::tempdir().unwrap();
        let p = make_dumb(dir.path());
        let mut text = std::fs::read(dir_path(&p)).unwrap();
        let first_end = text.iter().position(|&b| b == b'\n').unwrap() + 1;
        text.splice(first_end..first_end, bad.iter().copied());
        std::fs::write(dir_path(&p), &text).unwrap();
        let before = snapshot(dir.path());
        for flag in all_flags() {
            for r in [
                Backend::Dumb.open(&p, flag, 0o666).map(|_| ()),
                open(&p, flag, 0o666).map(|_| ()),
            ] {
                let e = r.unwrap_err();
                assert!(matches!(e, DbmError::Corrupt { .. }), "{e}");
                let msg = e.to_string();
                assert!(msg.contains("line 2"), "{msg}");
                assert!(msg.contains("db.dir"), "{msg}");
            }
        }
        assert_eq!(snapshot(dir.path()), before, "nothing written for {bad:?}");
    }
}

#[test]
fn a_torn_last_dir_line_is_dropped_like_an_unacknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_dumb(dir.path());
    let mut text = std::fs::read(dir_path(&p)).unwrap();
    text.extend_from_slice(b"'fourth', (20"); // no newline: a write cut short
    std::fs::write(dir_path(&p), &text).unwrap();
    let db = Backend::Dumb.open(&p, Flag::Read, 0o666).unwrap();
    assert_eq!(db.len().unwrap(), 3);
    db.close().unwrap();
    // Opening for writing rewrites a clean index (so later appends start on a fresh line).
    let db = Backend::Dumb.open(&p, Flag::Write, 0o666).unwrap();
    db.insert(b"fourth", b"4").unwrap();
    std::mem::forget(db);
    let out = python(
        "import sys, dbm.dumb\nd = dbm.dumb.open(sys.argv[1], 'r'); print(sorted(d.keys()))",
        &[p.to_str().unwrap()],
        "",
    );
    assert_eq!(out.trim(), "[b'first', b'fourth', b'second', b'third']");
}

#[test]
fn a_truncated_dat_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_dumb(dir.path());
    let dat = p.with_extension("dat");
    let len = std::fs::metadata(&dat).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&dat)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let before = snapshot(dir.path());
    for flag in all_flags() {
        let e = open(&p, flag, 0o666).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn damaged_sqlite_and_random_bytes_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    let db = Backend::Sqlite3.open(&p, Flag::Create, 0o666).unwrap();
    for i in 0..500u32 {
        db.insert(&i.to_le_bytes(), &[7; 100]).unwrap();
    }
    db.close().unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    let mut rng = Rng(3);
    for b in bytes.iter_mut().skip(100) {
        *b = rng.next() as u8;
    }
    std::fs::write(&p, &bytes).unwrap();
    let before = snapshot(dir.path());
    for flag in all_flags() {
        // Some damage is only seen on use: either open or a read must fail, with no panic.
        match open(&p, flag, 0o666) {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(db) => {
                let r = db.items();
                assert!(r.is_err(), "damage went unnoticed");
                let _ = db.close();
            }
        }
    }
    let _ = before;
    let r = dir.path().join("random");
    std::fs::write(&r, random_bytes(&mut Rng(4), 5000)).unwrap();
    let before = snapshot(dir.path());
    for flag in all_flags() {
        let e = open(&r, flag, 0o666).map(|_| ()).unwrap_err();
        assert_eq!(e.to_string(), "db type could not be determined");
        for b in [Backend::Sqlite3, Backend::Native] {
            let e = b.open(&r, flag, 0o666).map(|_| ()).unwrap_err();
            assert!(!e.to_string().is_empty(), "{b}");
        }
    }
    // The native backend with 'c' must not have touched the random file either.
    assert_eq!(snapshot(dir.path()).get("random"), before.get("random"));
}

#[test]
fn a_directory_instead_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("adir");
    std::fs::create_dir(&d).unwrap();
    for b in BACKENDS {
        for flag in [Flag::Read, Flag::Write, Flag::Create, Flag::New] {
            if b == Backend::Dumb {
                // dumb's files are adir.dat / adir.dir: made directories below instead.
                continue;
            }
            let r = b.open(&d, flag, 0o666);
            let e = r.map(|_| ()).expect_err(&format!("{b} {flag}"));
            assert!(!e.to_string().is_empty());
        }
    }
    for flag in [Flag::Read, Flag::Write] {
        let e = open(&d, flag, 0o666).map(|_| ()).unwrap_err();
        assert!(matches!(e, DbmError::DoesNotExist { .. }), "{e}");
    }
    assert!(open(&d, Flag::Create, 0o666).is_err());
    let dd = dir.path().join("dumb");
    std::fs::create_dir(dd.with_extension("dat")).unwrap();
    for flag in [Flag::Read, Flag::Write, Flag::Create] {
        let e = Backend::Dumb
            .open(&dd, flag, 0o666)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(21), "{e}");
    }
    assert!(d.is_dir() && dd.with_extension("dat").is_dir());
    assert_eq!(listing(&d), Vec::<String>::new());
}

#[test]
fn an_unwritable_path_is_an_os_error() {
    // Root ignores permission bits, so use a place nobody can create files in.
    let p = Path::new("/proc/cellar-dbm-no-such-dir/db");
    for b in BACKENDS {
        for flag in [Flag::Create, Flag::New] {
            let e = b.open(p, flag, 0o666).map(|_| ()).unwrap_err();
            assert!(!e.to_string().is_empty(), "{b}");
        }
    }
    assert!(open(p, Flag::Create, 0o666).is_err());
}

#[test]
fn a_missing_file_with_r_is_a_dbm_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path().join("nope"), Flag::Read, 0o666)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.py_kind(), cellar_dbm::PyErrorKind::Dbm);
    assert_eq!(
        e.to_string(),
        "db file doesn't exist; use 'c' or 'n' flag to create a new db"
    );
    assert!(listing(dir.path()).is_empty());
}
