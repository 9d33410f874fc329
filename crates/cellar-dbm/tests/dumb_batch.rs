//! A dbm.dumb batch whose index cannot be written leaves the database as it was (in memory and
//! on disk): put-only batches undo their own keys, batches with deletes restore the index.

use std::fs;
use std::path::{Path, PathBuf};

use cellar_dbm::{Backend, Batch, Database, Flag};

fn suffixed(p: &Path, s: &str) -> PathBuf {
    let mut o = p.as_os_str().to_owned();
    o.push(s);
    PathBuf::from(o)
}

fn items(db: &dyn Database) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = db.items().unwrap();
    v.sort();
    v
}

#[test]
fn a_failed_batch_changes_nothing() {
    for with_delete in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        let db = Backend::Dumb.open(&p, Flag::Create, 0o644).unwrap();
        for i in 0..20u8 {
            db.insert(&[b'k', i], &vec![i; 100 + i as usize]).unwrap();
        }
        db.close().unwrap();
        let db = Backend::Dumb.open(&p, Flag::Write, 0o644).unwrap();
        let before = items(db.as_ref());
        let keys_before = db.keys().unwrap();
        // The index file becomes a directory: appending to it and renaming over it both fail.
        let index = suffixed(&p, ".dir");
        let aside = suffixed(&p, ".dir.aside");
        fs::rename(&index, &aside).unwrap();
        fs::create_dir(&index).unwrap();
        let mut b = Batch::new();
        b.insert(vec![b'k', 3], b"overwritten")
            .insert(b"new1", b"x")
            .insert(vec![b'k', 7], vec![7; 5000])
            .insert(b"new2", b"y");
        if with_delete {
            b.remove(vec![b'k', 0]);
        }
        assert!(db.batch(&b).is_err(), "with_delete={with_delete}");
        assert_eq!(items(db.as_ref()), before, "with_delete={with_delete}");
        assert_eq!(
            db.keys().unwrap(),
            keys_before,
            "order, with_delete={with_delete}"
        );
        fs::remove_dir(&index).unwrap();
        fs::rename(&aside, &index).unwrap();
        // The handle goes on working, and what it commits is the old contents.
        db.insert(b"after", b"1").unwrap();
        db.close().unwrap();
        let db = Backend::Dumb.open(&p, Flag::Read, 0o644).unwrap();
        let mut want = before.clone();
        want.push((b"after".to_vec(), b"1".to_vec()));
        want.sort();
        assert_eq!(items(db.as_ref()), want, "with_delete={with_delete}");
    }
}
