//! cellar's readers against the pairs the C libraries read from the same files.

mod common;

use cellar_legacy::bdb::Bdb;
use cellar_legacy::gdbm::Gdbm;
use cellar_legacy::{ByteOrder, LegacyDb};
use common::{fixture, fixtures, Fixture};

fn check_fixture(f: &Fixture) {
    let want = f.pairs();
    assert_eq!(want.len(), f.count, "{}: pairs file", f.name);
    let db = LegacyDb::open(&f.file).unwrap_or_else(|e| panic!("{}: {e}", f.name));
    let mut got = Vec::new();
    db.try_for_each(|k, v| -> cellar_legacy::Result<()> {
        got.push((k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{}: {e}", f.name));
    got.sort();
    assert_eq!(got.len(), want.len(), "{}: number of pairs", f.name);
    assert!(got == want, "{}: pairs differ from the C library's", f.name);
    assert_eq!(db.len().unwrap(), f.count, "{}: len", f.name);
    let mut keys = db.keys().unwrap();
    keys.sort();
    assert!(
        keys.iter().eq(want.iter().map(|(k, _)| k)),
        "{}: keys",
        f.name
    );
    for (k, v) in &want {
        let got = db.get(k).unwrap_or_else(|e| panic!("{}: get: {e}", f.name));
        assert_eq!(got.as_ref(), Some(v), "{}: get({k:02x?})", f.name);
    }
    assert_eq!(db.get(b"surely not a key \xff").unwrap(), None);
    let report = db.check();
    assert!(report.is_ok(), "{}: check: {:?}", f.name, report.problems);
    assert_eq!(report.readable as usize, f.count);
}

fn run(prefix: &str) {
    let Some(list) = fixtures() else { return };
    let mut n = 0;
    for f in list.iter().filter(|f| f.name.starts_with(prefix)) {
        check_fixture(f);
        n += 1;
    }
    assert!(n > 0, "no fixtures named {prefix}*");
}

#[test]
fn gdbm_fixtures_match_libgdbm() {
    run("gnu_");
}

#[test]
fn gdbm_compat_pag_matches() {
    run("compat_pair");
}

#[test]
fn bdb_fixtures_match_libdb() {
    run("ndbm_");
}

#[test]
fn positioned_reads_give_the_same_pairs() {
    // Files above the in-memory limit are read with pread: force that path on every fixture.
    let Some(list) = fixtures() else { return };
    for f in list.iter().filter(|f| !f.name.ends_with("large")) {
        let db = LegacyDb::open_with_limit(&f.file, 0).unwrap();
        let mut got = Vec::new();
        db.try_for_each(|k, v| -> cellar_legacy::Result<()> {
            got.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        got.sort();
        let want = f.pairs();
        assert!(got == want, "{}", f.name);
        for (k, v) in want.iter().take(200) {
            assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "{}", f.name);
        }
        assert!(db.check().is_ok());
    }
}

#[test]
fn gdbm_iter_matches_for_each() {
    let Some(f) = fixture("gnu_churn") else {
        return;
    };
    let db = Gdbm::open(&f.file).unwrap();
    let mut a = Vec::new();
    db.try_for_each(|k, v| -> cellar_legacy::Result<()> {
        a.push((k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap();
    let b: Vec<_> = db.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(a, b);
}

#[test]
fn variants_are_described() {
    let Some(list) = fixtures() else { return };
    for f in list {
        match LegacyDb::open(&f.file).unwrap() {
            LegacyDb::Gdbm(g) => {
                let i = g.describe();
                assert_eq!(i.offset_bits, 64);
                assert_eq!(i.byte_order, ByteOrder::NATIVE);
                assert_eq!(
                    i.numsync.is_some(),
                    f.name.contains("numsync"),
                    "{}",
                    f.name
                );
            }
            LegacyDb::Bdb(b) => {
                let i = b.describe();
                let want = if f.name.starts_with("ndbm_be_") {
                    ByteOrder::Big
                } else {
                    ByteOrder::Little
                };
                assert_eq!(i.byte_order, want, "{}", f.name);
                assert_eq!(i.version, 9, "{}", f.name);
            }
            LegacyDb::Bdb185(_) => panic!("{}: no 1.85 file is generated at test time", f.name),
        }
    }
}

#[test]
fn bdb_big_endian_fixtures_exist() {
    let Some(list) = fixtures() else { return };
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(
            list.iter().any(|f| f.name.starts_with("ndbm_be_")),
            "CI=true but no big-endian Berkeley DB fixtures (db5.3-util missing?)"
        );
        assert!(list.iter().any(|f| f.name.starts_with("gnu_numsync")));
    }
    let _ = Bdb::sniff(&[]);
}

#[test]
fn bdb_fixtures_use_the_default_hash() {
    // h_charkey at offset 92 is the file's hash of "%$sniglet^&\0": cellar's hash must agree,
    // or lookups fall back to full scans.
    let Some(f) = fixture("ndbm_small") else {
        return;
    };
    let bytes = std::fs::read(&f.file).unwrap();
    let charkey = u32::from_le_bytes([bytes[92], bytes[93], bytes[94], bytes[95]]);
    assert_eq!(charkey, cellar_legacy::bdb::bdb_hash(b"%$sniglet^&\0"));
}
