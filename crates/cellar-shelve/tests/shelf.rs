//! Shelf behaviour on every writable backend, the codec recorded in the native header, writeback
//! that writes back only changed entries, safe decoding, and interop with CPython's own shelve
//! (stdlib `shelve` on `dbm.dumb`, both directions, every pickle protocol).

use std::collections::BTreeMap;

use cellar_dbm::{Backend, Flag};
use cellar_pickle::Registry;
use cellar_shelve::{Codec, Options, Shelf, ShelfError};
use cellar_testkit::{get_record, put_record, run_python, Gen};
use cellar_value::{repr_sorted, Value};
use serde::{Deserialize, Serialize};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/cpython_shelf.py"
);

fn opts(backend: Backend) -> Options {
    Options {
        backend: Some(backend),
        ..Options::default()
    }
}

fn s(x: &str) -> Value {
    Value::str(x)
}

#[test]
fn basic_operations_on_every_backend() {
    for backend in cellar_dbm::BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.shelve");
        let mut db: Shelf = Shelf::open_with(&path, opts(backend)).unwrap();
        assert_eq!(db.database().backend(), backend);
        db.insert("test key", &s("test data")).unwrap();
        let tup = Value::tuple(vec![Value::int(1), s("two"), Value::Float(3.5)]);
        db.insert("t", &tup).unwrap();
        db.insert("é", &Value::None).unwrap();
        assert_eq!(db.get("test key").unwrap(), Some(s("test data")));
        assert!(db.get("t").unwrap().unwrap().same(&tup));
        assert_eq!(db.get("missing").unwrap(), None);
        assert!(db.contains("é").unwrap());
        assert_eq!(db.len().unwrap(), 3);
        assert!(db.remove("é").unwrap());
        assert!(!db.remove("é").unwrap());
        let mut keys = db.keys().unwrap();
        keys.sort();
        assert_eq!(keys, vec!["t".to_string(), "test key".to_string()]);
        let items: BTreeMap<String, String> = db
            .items()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, repr_sorted(&v)))
            .collect();
        assert_eq!(items["t"], "(1, 'two', 3.5)");
        db.close().unwrap();

        let db: Shelf = Shelf::open_with(
            &path,
            Options {
                flag: Flag::Read,
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(
            db.get("test key").unwrap(),
            Some(s("test data")),
            "{backend}"
        );
        assert_eq!(db.len().unwrap(), 2);
    }
}

#[test]
fn codec_is_recorded_in_the_native_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.shelve");
    let marshal = Codec::Marshal { version: 4 };
    let mut db: Shelf = Shelf::open_with(
        &path,
        Options {
            codec: Some(marshal),
            ..Options::default()
        },
    )
    .unwrap();
    db.insert("k", &Value::list(vec![Value::int(7)])).unwrap();
    db.close().unwrap();
    // Opened without saying which codec: the header says marshal.
    let db: Shelf = Shelf::open(&path).unwrap();
    assert_eq!(db.codec(), marshal);
    assert_eq!(repr_sorted(&db.get("k").unwrap().unwrap()), "[7]");
    assert_eq!(
        db.database().value_encoding(),
        Some(cellar_dbm::ValueEncoding::Marshal { version: 4 })
    );
    drop(db);
    // Asking for pickle contradicts the header.
    let err = Shelf::<Value>::open_with(
        &path,
        Options {
            codec: Some(Codec::Pickle { protocol: 5 }),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, ShelfError::Codec(_)), "{err}");
    assert!(err.to_string().contains("holds marshal"), "{err}");

    // A pickle shelf records its protocol.
    let p = dir.path().join("p.shelve");
    let db: Shelf = Shelf::open(&p).unwrap();
    assert_eq!(
        db.database().value_encoding(),
        Some(cellar_dbm::ValueEncoding::Pickle { protocol: 4 })
    );
}

#[test]
fn marshal_needs_the_native_backend() {
    for backend in [Backend::Dumb, Backend::Sqlite3] {
        let dir = tempfile::tempdir().unwrap();
        let err = Shelf::<Value>::open_with(
            dir.path().join("x"),
            Options {
                codec: Some(Codec::Marshal { version: 4 }),
                backend: Some(backend),
                ..Options::default()
            },
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("needs the native backend"),
            "{err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let err = Shelf::<Value>::open_with(
        dir.path().join("x"),
        Options {
            codec: Some(Codec::Pickle { protocol: 6 }),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("protocol must be <= 5"), "{err}");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    tags: (String, String),
    score: f64,
}

#[test]
fn typed_shelves_for_both_codecs() {
    for codec in [Codec::Pickle { protocol: 5 }, Codec::Marshal { version: 4 }] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let mut db: Shelf<User> = Shelf::open_with(
            &path,
            Options {
                codec: Some(codec),
                ..Options::default()
            },
        )
        .unwrap();
        let users: Vec<User> = (0..50)
            .map(|i| User {
                id: i,
                name: format!("user{i}"),
                tags: ("a".into(), "b".into()),
                score: 1.5,
            })
            .collect();
        db.batch(|b| {
            for u in &users {
                b.insert(&u.name, u)?;
            }
            Ok(())
        })
        .unwrap();
        db.close().unwrap();
        let db: Shelf<User> = Shelf::open(&path).unwrap();
        assert_eq!(db.len().unwrap(), 50);
        assert_eq!(db.get("user7").unwrap().unwrap(), users[7]);
        // The same bytes read as plain values: a dict with str keys.
        drop(db);
        let v: Shelf = Shelf::open(&path).unwrap();
        assert_eq!(
            repr_sorted(&v.get("user1").unwrap().unwrap()),
            "{'id': 1, 'name': 'user1', 'tags': ('a', 'b'), 'score': 1.5}"
        );
    }
}

#[test]
fn a_failed_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut db: Shelf = Shelf::open(dir.path().join("b")).unwrap();
    let r = db.batch(|b| {
        b.insert("a", &Value::int(1))?;
        Err(ShelfError::Codec("stop".into()))
    });
    assert!(r.is_err());
    assert_eq!(db.len().unwrap(), 0);
}

#[test]
fn writeback_writes_back_only_changed_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wb");
    let mut db: Shelf = Shelf::open_with(
        &path,
        Options {
            writeback: true,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..20 {
        db.insert(&format!("k{i}"), &Value::list(vec![Value::int(i)]))
            .unwrap();
    }
    db.sync().unwrap();
    let size = |db: &Shelf| db.database().info().unwrap().file_bytes;
    // Read every entry through the cache, change none: sync writes nothing.
    for i in 0..20 {
        assert!(db.get_mut(&format!("k{i}")).unwrap().is_some());
    }
    let before = size(&db);
    db.sync().unwrap();
    assert_eq!(size(&db), before, "unchanged entries were rewritten");
    // Change one: only it is written.
    if let Some(Value::List(_)) = db.get_mut("k3").unwrap() {
        let v = db.get_mut("k3").unwrap().unwrap();
        *v = Value::list(vec![Value::int(3), Value::int(33)]);
    }
    assert_eq!(repr_sorted(&db.get("k3").unwrap().unwrap()), "[3, 33]");
    db.sync().unwrap();
    let after = size(&db);
    assert!(after > before);
    assert!(
        after - before < 200,
        "more than one entry rewritten: {}",
        after - before
    );
    // Pending changes are written back when the shelf is dropped.
    *db.get_mut("k4").unwrap().unwrap() = s("changed");
    drop(db);
    let db: Shelf = Shelf::open(&path).unwrap();
    assert_eq!(db.get("k4").unwrap(), Some(s("changed")));
    assert_eq!(repr_sorted(&db.get("k3").unwrap().unwrap()), "[3, 33]");
    // Without writeback, get_mut is refused (the classic lost-mutation trap).
    let mut db = db;
    assert!(matches!(db.get_mut("k4"), Err(ShelfError::NotWriteback)));
}

#[test]
fn decoding_is_safe_and_inert_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil");
    let db = cellar_dbm::open(&path, Flag::Create, 0o666).unwrap();
    // pickle.dumps of an object whose __reduce__ is (os.system, ('echo pwned',)), protocol 2.
    let evil = b"\x80\x02cposix\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
    db.insert(b"evil", evil).unwrap();
    db.insert(&[0xff, 0xfe][..], b"\x80\x04N.").unwrap();
    db.close().unwrap();
    let shelf: Shelf = Shelf::open(&path).unwrap();
    let err = shelf.get("evil").unwrap_err();
    assert!(err.to_string().contains("posix.system"), "{err}");
    assert!(matches!(shelf.keys(), Err(ShelfError::Key { .. })));
    drop(shelf);
    let shelf: Shelf = Shelf::open_with(
        &path,
        Options {
            inert: true,
            ..Options::default()
        },
    )
    .unwrap();
    let v = shelf.get("evil").unwrap().unwrap();
    assert!(repr_sorted(&v).contains("system"), "{}", repr_sorted(&v));
}

/// Random values written through cellar's Shelf on dbm.dumb read back by CPython's stdlib
/// shelve, and values written by CPython's stdlib shelve (every protocol) read by cellar.
#[test]
fn cpython_shelve_interop_on_dbm_dumb() {
    let mut gen = Gen::pickle(0x5E1F);
    let values: Vec<(String, Value)> = (0..600)
        .map(|i| {
            (
                format!("key {i} \u{e9}'\"\n"),
                gen.value(1 + (i % 3) as u32),
            )
        })
        .collect();

    // cellar writes, CPython reads.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours");
    let mut db: Shelf = Shelf::open_with(&path, opts(Backend::Dumb)).unwrap();
    for (k, v) in &values {
        db.insert(k, v).unwrap();
    }
    db.close().unwrap();
    let out = run_python(SCRIPT, &["read", path.to_str().unwrap()], Vec::new());
    let mut want: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (k.clone(), repr_sorted(v)))
        .collect();
    want.sort();
    let mut pos = 0;
    for (k, r) in &want {
        let key = String::from_utf8_lossy(get_record(&out, &mut pos)).into_owned();
        let got = String::from_utf8_lossy(get_record(&out, &mut pos)).into_owned();
        assert_eq!(&key, k);
        assert_eq!(&got, r, "key {k:?}");
    }
    assert_eq!(pos, out.len());

    // CPython writes (each protocol), cellar reads.
    for protocol in 0..=5u8 {
        let path = dir.path().join(format!("theirs{protocol}"));
        let mut input = Vec::new();
        for (k, v) in &values {
            put_record(&mut input, k.as_bytes());
            put_record(
                &mut input,
                &cellar_pickle::dumps(v, 5, &Registry::default()).unwrap(),
            );
        }
        run_python(
            SCRIPT,
            &["write", path.to_str().unwrap(), &protocol.to_string()],
            input,
        );
        let db: Shelf = Shelf::open_with(
            &path,
            Options {
                flag: Flag::Read,
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(db.database().backend(), Backend::Dumb);
        assert_eq!(db.len().unwrap(), values.len());
        for (k, v) in &values {
            let got = db.get(k).unwrap().unwrap();
            // Protocol 0 writes floats as text (no NaN payload or sign): compare by repr there.
            assert!(
                got.same(v) || (protocol == 0 && repr_sorted(&got) == repr_sorted(v)),
                "p{protocol} {k:?}: {} != {}",
                repr_sorted(&got),
                repr_sorted(v)
            );
        }
    }
}
