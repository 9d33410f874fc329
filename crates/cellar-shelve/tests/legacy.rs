//! A shelf written by the stdlib's shelve on dbm.gnu (Debian's /usr/bin/python3 and libgdbm),
//! opened read-only by cellar's Rust `Shelf`: values are the stdlib's pickles, decoded safely.

#[path = "../../cellar-legacy/tests/common/mod.rs"]
mod common;

use cellar_dbm::Flag;
use cellar_shelve::{Options, Shelf};
use cellar_value::{repr, Value};

#[test]
fn stdlib_shelf_on_dbm_gnu_reads_read_only() {
    let Some(f) = common::fixture("gnu_shelf") else {
        return;
    };
    let opts = Options {
        flag: Flag::Read,
        ..Options::default()
    };
    let sh: Shelf<Value> = Shelf::open_with(&f.base, opts).unwrap();
    let mut keys = sh.keys().unwrap();
    keys.sort();
    assert_eq!(keys, ["dict", "list", "test key"]);
    assert_eq!(repr(&sh.get("test key").unwrap().unwrap()), "'test data'");
    assert_eq!(
        repr(&sh.get("list").unwrap().unwrap()),
        "[1, 2.5, 'three', (4, None)]"
    );
    assert_eq!(
        repr(&sh.get("dict").unwrap().unwrap()),
        "{'a': b'bytes', 'n': 1000000000000000000000000000000}"
    );
    // Creating over it is refused with the migration hint.
    let e = match Shelf::<Value>::open_with(&f.base, Options::default()) {
        Ok(_) => panic!("opening a legacy shelf with 'c' must fail"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("cellar convert"), "{e}");
}
