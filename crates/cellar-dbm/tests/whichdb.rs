//! `whichdb` against CPython's `dbm.whichdb` on every file kind CPython knows. Debian's
//! /usr/bin/python3 has dbm.ndbm (Berkeley DB); it makes the ndbm file when present.

mod common;

use std::path::{Path, PathBuf};

use cellar_dbm::{whichdb, Backend, Flag};
use common::*;

const PY_WHICH: &str = r#"
import sys, dbm
for p in sys.argv[1:]:
    print(repr(dbm.whichdb(p)))
"#;

fn python_exe() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn has_ndbm() -> bool {
    std::process::Command::new(python_exe())
        .args(["-c", "import dbm.ndbm"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn ours(p: &Path) -> String {
    match whichdb(p).as_python() {
        None => "None".to_string(),
        Some(s) => format!("'{s}'"),
    }
}

#[test]
fn whichdb_agrees_with_cpython() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cases: Vec<PathBuf> = Vec::new();
    let mk = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    cases.push(d.join("missing"));
    cases.push(mk("empty", b""));
    cases.push(mk("three", b"abc"));
    cases.push(mk("text", b"hello, world, not a database"));
    let mut rng = Rng(5);
    cases.push(mk("random", &random_bytes(&mut rng, 4096)));
    cases.push(mk("gnu1", &0x13579aceu32.to_ne_bytes()));
    cases.push(mk(
        "gnu2",
        &[&0x13579acdu32.to_ne_bytes()[..], &[0u8; 60]].concat(),
    ));
    cases.push(mk(
        "gnu3",
        &[&0x13579acfu32.to_ne_bytes()[..], &[1u8; 60]].concat(),
    ));
    std::fs::create_dir(d.join("adir")).unwrap();
    cases.push(d.join("adir"));
    // dbm.dumb by CPython, by cellar, empty, and a .dat with a .dir not starting with a quote.
    python(
        "import sys, dbm.dumb\nd = dbm.dumb.open(sys.argv[1], 'c'); d[b'k'] = b'v'; d.close()",
        &[d.join("pydumb").to_str().unwrap()],
        "",
    );
    cases.push(d.join("pydumb"));
    let db = Backend::Dumb
        .open(d.join("rsdumb"), Flag::Create, 0o666)
        .unwrap();
    db.insert(b"\"quoted'", b"v").unwrap();
    db.close().unwrap();
    cases.push(d.join("rsdumb"));
    let db = Backend::Dumb
        .open(d.join("emptydumb"), Flag::Create, 0o666)
        .unwrap();
    db.close().unwrap();
    cases.push(d.join("emptydumb"));
    mk("notdumb.dat", b"");
    mk("notdumb.dir", b"x, (0, 1)\n");
    cases.push(d.join("notdumb"));
    mk("onlydat.dat", b"");
    cases.push(d.join("onlydat"));
    // ndbm: .pag + .dir, and a Berkeley DB .db made by the real module.
    mk("pagdir.pag", b"");
    mk("pagdir.dir", b"");
    cases.push(d.join("pagdir"));
    mk("fakedb.db", &[0u8; 64]);
    cases.push(d.join("fakedb"));
    if has_ndbm() {
        python_with(
            python_exe(),
            "import sys, dbm.ndbm\nd = dbm.ndbm.open(sys.argv[1], 'c'); d[b'k'] = b'v'; d.close()",
            &[d.join("realndbm").to_str().unwrap()],
            "",
        );
        cases.push(d.join("realndbm"));
    } else {
        eprintln!(
            "skipping the real ndbm file: {} has no dbm.ndbm",
            python_exe()
        );
    }
    let args: Vec<&str> = cases.iter().map(|p| p.to_str().unwrap()).collect();
    let theirs = python_with(python_exe(), PY_WHICH, &args, "");
    let theirs: Vec<&str> = theirs.lines().collect();
    assert_eq!(theirs.len(), cases.len());
    for (p, t) in cases.iter().zip(theirs) {
        assert_eq!(ours(p), t, "whichdb({}) differs from CPython", p.display());
    }
    if has_ndbm() {
        assert_eq!(ours(&d.join("realndbm")), "'dbm.ndbm'");
    }
}

#[test]
fn whichdb_names_sqlite_and_native_where_cpython_311_says_unknown() {
    // CPython 3.11 predates dbm.sqlite3 and knows no native format: both are "" there.
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s");
    Backend::Sqlite3
        .open(&s, Flag::Create, 0o666)
        .unwrap()
        .close()
        .unwrap();
    let n = dir.path().join("n");
    Backend::Native
        .open(&n, Flag::Create, 0o666)
        .unwrap()
        .close()
        .unwrap();
    assert_eq!(ours(&s), "'dbm.sqlite3'");
    assert_eq!(ours(&n), "'dbm.native'");
    let theirs = python_with(
        python_exe(),
        PY_WHICH,
        &[s.to_str().unwrap(), n.to_str().unwrap()],
        "",
    );
    assert_eq!(theirs, "''\n''\n");
    // 16 bytes that are almost the SQLite magic are not SQLite.
    let p = dir.path().join("almost");
    std::fs::write(&p, b"SQLite format 3\x01rest").unwrap();
    assert_eq!(ours(&p), "''");
}

#[test]
fn whichdb_names_legacy_variants_cpython_does_not() {
    // Foreign byte order and numsync GDBM files, a Berkeley DB file named with its .db, and a
    // Berkeley DB 1.85 .db: CPython 3.11 says "" (or fails) for these; cellar names them so
    // open can read them (this bare 1.85 header is too short: a precise error).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mk = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let swapped = mk("gnu_swapped", &0x13579acfu32.swap_bytes().to_ne_bytes());
    assert_eq!(ours(&swapped), "'dbm.gnu'");
    let numsync = mk("gnu_numsync", &0x13579ad1u32.to_ne_bytes());
    assert_eq!(ours(&numsync), "'dbm.gnu'");
    let mut bdb = vec![0u8; 64];
    bdb[12..16].copy_from_slice(&0x061561u32.to_le_bytes());
    let named = mk("x.db", &bdb);
    assert_eq!(ours(&named), "'dbm.ndbm'");
    assert_eq!(ours(&d.join("x")), "'dbm.ndbm'");
    let mut old = vec![0u8; 64];
    old[..4].copy_from_slice(&0x061561u32.to_be_bytes());
    old[4..8].copy_from_slice(&2u32.to_be_bytes());
    mk("mac.db", &old);
    assert_eq!(ours(&d.join("mac")), "'dbm.ndbm'");
    let e = cellar_dbm::open(d.join("mac"), Flag::Read, 0o666)
        .unwrap_err()
        .to_string();
    assert!(e.contains("damaged Berkeley DB 1.85 hash file"), "{e}");
}
