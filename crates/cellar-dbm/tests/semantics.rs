//! Flags and modes as CPython's dbm: r/w need an existing database and create nothing, c
//! creates, n truncates, created files get `mode & ~umask`; each backend validates flags like
//! its CPython counterpart; closed and read-only databases refuse with CPython's texts.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cellar_dbm::{open, open_str, Backend, DbmError, Flag, BACKENDS};
use common::listing;

fn umask() -> u32 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(l["Umask:".len()..].trim(), 8).unwrap()
}

fn files_of(b: Backend, base: &Path) -> Vec<std::path::PathBuf> {
    match b {
        Backend::Dumb => vec![base.with_extension("dat"), base.with_extension("dir")],
        _ => vec![base.to_path_buf()],
    }
}

#[test]
fn r_and_w_on_a_missing_database_fail_and_create_nothing() {
    for b in BACKENDS {
        for flag in [Flag::Read, Flag::Write] {
            let dir = tempfile::tempdir().unwrap();
            let e = b.open(dir.path().join("db"), flag, 0o666).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(2), "{b} {flag}: {e}");
            assert!(listing(dir.path()).is_empty(), "{b} {flag} created files");
            let e = open(dir.path().join("db"), flag, 0o666).unwrap_err();
            assert!(matches!(e, DbmError::DoesNotExist { .. }));
            assert_eq!(
                e.to_string(),
                "db file doesn't exist; use 'c' or 'n' flag to create a new db"
            );
            assert!(listing(dir.path()).is_empty());
        }
    }
}

#[test]
fn c_creates_with_mode_and_umask_and_n_truncates() {
    let um = umask();
    for b in BACKENDS {
        for mode in [0o666u32, 0o640, 0o600, 0o751] {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().join("db");
            let db = b.open(&base, Flag::Create, mode).unwrap();
            db.insert(b"k", b"v").unwrap();
            db.close().unwrap();
            for f in files_of(b, &base) {
                let got = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
                assert_eq!(got, mode & !um, "{b} {} mode {mode:o}", f.display());
            }
            let db = b.open(&base, Flag::Create, 0o600).unwrap();
            assert_eq!(
                db.get(b"k").unwrap().as_deref(),
                Some(&b"v"[..]),
                "{b} c keeps"
            );
            db.close().unwrap();
            let db = b.open(&base, Flag::New, mode).unwrap();
            assert_eq!(db.len().unwrap(), 0, "{b}: n truncates");
            db.insert(b"x", b"y").unwrap();
            db.close().unwrap();
            let db = b.open(&base, Flag::Write, mode).unwrap();
            assert_eq!(db.keys().unwrap(), vec![b"x".to_vec()]);
            db.close().unwrap();
        }
    }
}

#[test]
fn open_creates_the_native_default_and_routes_by_whichdb() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    let db = open(&p, Flag::Create, 0o666).unwrap();
    assert_eq!(db.backend(), Backend::Native);
    db.insert(b"a", b"1").unwrap();
    db.close().unwrap();
    for b in BACKENDS {
        let q = dir.path().join(b.name());
        b.open(&q, Flag::Create, 0o666).unwrap().close().unwrap();
        let db = open(&q, Flag::Write, 0o666).unwrap();
        assert_eq!(db.backend(), b);
        db.close().unwrap();
        let db = open_str(&q, "r", 0o666).unwrap();
        assert!(db.is_read_only());
        db.close().unwrap();
    }
}

#[test]
fn flags_are_validated_like_cpython() {
    let dumb_msg = "Flag must be one of 'r', 'w', 'c', or 'n'";
    for s in ["rf", "cs", "nu", "x", "", "cc"] {
        let e = Backend::Dumb.parse_flag(s).unwrap_err();
        assert_eq!(e.to_string(), dumb_msg, "{s:?}");
        assert_eq!(e.py_kind(), cellar_dbm::PyErrorKind::Value);
    }
    assert_eq!(
        Backend::Sqlite3.parse_flag("cf").unwrap_err().to_string(),
        "Flag must be one of 'r', 'w', 'c', or 'n', not 'cf'"
    );
    for s in ["r", "w", "c", "n"] {
        for b in BACKENDS {
            assert_eq!(b.parse_flag(s).unwrap().to_string(), s);
        }
    }
    for s in ["cf", "rs", "wu", "nfsu", "cu"] {
        assert_eq!(Backend::Native.parse_flag(s).unwrap().to_string(), s);
    }
    assert!(Backend::Native.parse_flag("cx").is_err());
    assert!(Backend::Native.parse_flag("q").is_err());
    assert_eq!(Flag::parse("cf").unwrap(), Flag::Create.fast());
    // A typed flag with modifiers reaches the dumb backend through open: refused, nothing made.
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path().join("db"), Flag::Create.fast(), 0o666);
    assert!(e.is_ok(), "native accepts 'cf'");
    e.unwrap().close().unwrap();
    let e = Backend::Dumb
        .open(dir.path().join("d"), Flag::Create.fast(), 0o666)
        .unwrap_err();
    assert_eq!(e.to_string(), dumb_msg);
    assert_eq!(listing(dir.path()), vec!["db".to_string()]);
    let db = Backend::Dumb
        .open(dir.path().join("d"), Flag::Create, 0o666)
        .unwrap();
    db.close().unwrap();
    let e = open_str(dir.path().join("d"), "rf", 0o666).unwrap_err();
    assert_eq!(e.to_string(), dumb_msg);
}

#[test]
fn closed_and_read_only_databases_refuse() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        let db = b.open(&p, Flag::Create, 0o666).unwrap();
        db.insert(b"k", b"v").unwrap();
        db.close().unwrap();
        db.close().unwrap();
        let e = db.get(b"k").unwrap_err();
        assert_eq!(e.to_string(), "DBM object has already been closed", "{b}");
        assert!(matches!(db.insert(b"a", b"b"), Err(DbmError::Closed)));
        assert!(matches!(db.len(), Err(DbmError::Closed)));
        let db = b.open(&p, Flag::Read, 0o666).unwrap();
        assert!(
            matches!(db.insert(b"a", b"b"), Err(DbmError::ReadOnly)),
            "{b}"
        );
        assert!(matches!(db.remove(b"k"), Err(DbmError::ReadOnly)), "{b}");
        let mut batch = cellar_dbm::Batch::new();
        batch.insert(b"a", b"b");
        assert!(matches!(db.batch(&batch), Err(DbmError::ReadOnly)), "{b}");
        db.sync().unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert!(db.contains(b"k").unwrap());
        assert!(!db.contains(b"nope").unwrap());
        db.close().unwrap();
    }
}

#[test]
fn legacy_and_unknown_formats_give_cpythons_messages() {
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("gnu");
    std::fs::write(&g, [&0x13579aceu32.to_ne_bytes()[..], &[0; 60]].concat()).unwrap();
    // A bare magic: read-only opening reads it and finds it damaged...
    let e = open(&g, Flag::Read, 0o666).unwrap_err().to_string();
    assert!(e.contains("damaged GDBM file"), "{e}");
    // ...and every flag that could write is refused, naming the migration path.
    for flag in [Flag::Write, Flag::Create, Flag::New] {
        let e = open(&g, flag, 0o666).unwrap_err().to_string();
        assert!(e.contains("dbm.gnu files are read-only in cellar"), "{e}");
        assert!(e.contains("cellar convert"), "{e}");
    }
    assert_eq!(
        std::fs::metadata(&g).unwrap().len(),
        64,
        "'n' must not replace it"
    );
    let u = dir.path().join("unknown");
    std::fs::write(&u, b"just some text").unwrap();
    let e = open(&u, Flag::Create, 0o666).unwrap_err();
    assert_eq!(e.to_string(), "db type could not be determined");
    // 'n' replaces only an empty file or a recognised database (issue 13: an unrecognisable
    // file may be a damaged store, or not a database at all); CPython's dbm.gnu would truncate
    // it.
    let e = open(&u, Flag::New, 0o666).map(|_| ()).unwrap_err();
    assert_eq!(e.to_string(), "db type could not be determined");
    assert_eq!(std::fs::read(&u).unwrap(), b"just some text");
    std::fs::write(&u, b"").unwrap();
    let db = open(&u, Flag::New, 0o666).unwrap();
    assert_eq!(db.backend(), Backend::Native);
    assert_eq!(db.len().unwrap(), 0);
    db.close().unwrap();
    assert_eq!(cellar_dbm::whichdb(&u).as_python(), Some("dbm.native"));
}

#[test]
fn every_backend_implements_the_whole_trait() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let db = b.open(dir.path().join("db"), Flag::Create, 0o666).unwrap();
        let mut batch = cellar_dbm::Batch::new();
        batch
            .insert(b"a", b"1")
            .insert(b"b", b"2")
            .remove(b"a")
            .insert(b"c", vec![9; 2000]);
        db.batch(&batch).unwrap();
        assert_eq!(db.len().unwrap(), 2);
        assert!(!db.is_empty().unwrap());
        assert!(!db.remove(b"zz").unwrap());
        let mut items = db.items().unwrap();
        items.sort();
        assert_eq!(
            items,
            vec![
                (b"b".to_vec(), b"2".to_vec()),
                (b"c".to_vec(), vec![9; 2000])
            ]
        );
        db.sync().unwrap();
        let info = db.info().unwrap();
        assert_eq!(info.backend, b);
        assert_eq!(info.keys, 2);
        assert!(info.file_bytes > 0);
        db.compact().unwrap();
        assert_eq!(db.len().unwrap(), 2);
        db.close().unwrap();
    }
}

#[test]
fn every_backend_is_safe_from_several_threads() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(b.open(dir.path().join("db"), Flag::Create, 0o666).unwrap());
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let db = db.clone();
                std::thread::spawn(move || {
                    for i in 0..150u32 {
                        let k = format!("{t}-{i}");
                        let v = vec![t; (i as usize * 13) % 700];
                        db.insert(k.as_bytes(), &v).unwrap();
                        assert_eq!(db.get(k.as_bytes()).unwrap(), Some(v));
                        if i % 10 == 0 {
                            assert!(db.remove(k.as_bytes()).unwrap());
                        }
                        let _ = db.len().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(db.len().unwrap(), 4 * 135, "{b}");
        db.close().unwrap();
        let db = b.open(dir.path().join("db"), Flag::Read, 0o666).unwrap();
        assert_eq!(db.len().unwrap(), 4 * 135, "{b}");
        db.close().unwrap();
    }
}
