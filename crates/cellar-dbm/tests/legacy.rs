//! dbm.gnu and dbm.ndbm files written by the C libraries (through Debian's /usr/bin/python3),
//! opened through cellar-dbm's `open`: read-only, every pair as the C library reads it, and
//! writes refused with a message naming `cellar convert`.

#[path = "../../cellar-legacy/tests/common/mod.rs"]
mod common;

use cellar_dbm::{open, open_str, whichdb, Backend, DbKind, DbmError, Flag};
use common::{fixture, fixtures};

#[test]
fn open_reads_legacy_fixtures_read_only() {
    let Some(list) = fixtures() else { return };
    for f in list {
        if f.name == "gnu_large" || f.name == "ndbm_large" {
            continue; // covered by cellar-legacy's own tests; keep this one quick
        }
        let want_kind = if f.kind == "gnu" && f.name != "compat_pair" {
            DbKind::Gnu
        } else {
            DbKind::Ndbm
        };
        assert_eq!(whichdb(&f.base).kind(), Some(want_kind), "{}", f.name);
        let db = open(&f.base, Flag::Read, 0o666).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert!(db.is_read_only());
        assert_eq!(db.backend().kind(), want_kind);
        let mut got = db.items().unwrap();
        got.sort();
        assert!(got == f.pairs(), "{}: pairs", f.name);
        assert_eq!(db.len().unwrap(), f.count);
        if let Some((k, v)) = f.pairs().first() {
            assert_eq!(db.get(k).unwrap().as_ref(), Some(v));
            assert!(db.contains(k).unwrap());
            let e = db.insert(k, b"x").unwrap_err();
            assert!(matches!(e, DbmError::LegacyReadOnly { .. }), "{e}");
            assert!(e.to_string().contains("cellar convert"), "{e}");
            assert!(db.remove(k).is_err());
        }
        let info = db.info().unwrap();
        assert_eq!(info.keys as usize, f.count);
        assert!(db.compact().is_err());
        db.sync().unwrap();
        db.close().unwrap();
        assert!(matches!(db.len(), Err(DbmError::Closed)));
    }
}

#[test]
fn writing_flags_on_legacy_files_name_cellar_convert() {
    for name in ["gnu_small", "ndbm_small", "compat_pair"] {
        let Some(f) = fixture(name) else { return };
        let before = std::fs::read(&f.file).unwrap();
        for flag in ["w", "c", "n", "cf"] {
            if name != "gnu_small" && flag == "cf" {
                continue;
            }
            let e = open_str(&f.base, flag, 0o666).unwrap_err();
            assert!(
                matches!(e, DbmError::LegacyReadOnly { .. }),
                "{name} {flag}: {e}"
            );
            let text = e.to_string();
            assert!(text.contains("read-only in cellar"), "{text}");
            assert!(text.contains("cellar convert"), "{text}");
        }
        assert_eq!(std::fs::read(&f.file).unwrap(), before, "{name} unchanged");
        // Backend-level opens behave the same.
        let b = if name == "gnu_small" {
            Backend::Gnu
        } else {
            Backend::Ndbm
        };
        assert!(b.open(&f.base, Flag::Create, 0o666).is_err());
        let db = b.open(&f.base, Flag::Read, 0o666).unwrap();
        assert_eq!(db.len().unwrap(), f.count);
    }
}

#[test]
fn ndbm_opens_by_its_db_name_too() {
    let Some(f) = fixture("ndbm_small") else {
        return;
    };
    let db = open(&f.file, Flag::Read, 0o666).unwrap();
    assert_eq!(db.backend(), Backend::Ndbm);
    assert_eq!(db.len().unwrap(), f.count);
}

#[test]
fn missing_legacy_file_is_an_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = Backend::Gnu
        .open(dir.path().join("nope"), Flag::Read, 0o666)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(2), "{e}");
}

#[test]
fn macos_style_ndbm_185_file_opens_read_only() {
    // A Berkeley DB 1.85 hash NAME.db, as macOS/BSD dbm.ndbm writes it (made by libdb1).
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cellar-legacy/tests/fixtures/db185/db185-le-small.db");
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("mac");
    std::fs::copy(&src, dir.path().join("mac.db")).unwrap();
    assert_eq!(whichdb(&base).kind(), Some(DbKind::Ndbm));
    let db = open(&base, Flag::Read, 0o666).unwrap();
    assert_eq!(db.len().unwrap(), 21);
    assert_eq!(
        db.get(b"test key").unwrap().as_deref(),
        Some(&b"test data"[..])
    );
    let e = open(&base, Flag::Write, 0o666).unwrap_err();
    assert!(e.to_string().contains("cellar convert"), "{e}");
    // Given by its own name, as in `cellar convert old.db new.cellar`.
    let named = dir.path().join("mac.db");
    assert_eq!(whichdb(&named).kind(), Some(DbKind::Ndbm));
    let db = open(&named, Flag::Read, 0o666).unwrap();
    assert_eq!(db.len().unwrap(), 21);
}
