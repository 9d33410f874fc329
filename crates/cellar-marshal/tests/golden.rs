//! Version 5 (slices) against hand-built golden fixtures (see fixtures/v5/README.md).

use cellar_marshal::{dumps, loads, ErrorKind};
use cellar_value::repr;

#[test]
fn version_5_fixtures() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v5");
    let manifest = std::fs::read_to_string(format!("{dir}/manifest.txt")).expect("manifest");
    let mut checked = 0;
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, expect) = line.split_once('\t').expect("tab-separated");
        let data = std::fs::read(format!("{dir}/{name}")).expect("fixture");
        match loads(&data) {
            Ok(v) => {
                assert_eq!(repr(&v), expect, "{name}");
                // cellar writes it back at version 5 and reads the same value.
                let again = dumps(&v, 5).expect("dumps v5");
                assert!(loads(&again).expect("reload").same(&v), "{name} round trip");
                // ... and refuses slices below version 5.
                assert_eq!(
                    dumps(&v, 4).unwrap_err().message,
                    "unmarshallable object",
                    "{name}"
                );
            }
            Err(e) => {
                assert_eq!(
                    format!("{}: {}", e.kind.python_name(), e.message),
                    expect,
                    "{name}"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn shared_slice_is_one_object() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v5");
    let v =
        loads(&std::fs::read(format!("{dir}/slice_shared.bin")).expect("fixture")).expect("loads");
    let cellar_value::Value::Tuple(t) = &v else {
        panic!("tuple expected")
    };
    assert_eq!(
        t[0].ptr_id(),
        t[1].ptr_id(),
        "the reference resolves to the same slice"
    );
    // Written back, the second occurrence is a reference again.
    let again = dumps(&v, 5).expect("dumps");
    assert!(again.contains(&b'r'), "{again:02x?}");
    let _ = ErrorKind::Value;
}
