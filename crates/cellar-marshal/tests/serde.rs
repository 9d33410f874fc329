//! serde `to_vec` / `from_slice` through marshal, checked against CPython's view of the bytes.

mod common;

use std::collections::BTreeMap;

use cellar_marshal::{from_slice, loads, to_vec};
use cellar_value::repr;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    tags: (String, String),
    score: f64,
    friends: Vec<u32>,
    extra: Option<BTreeMap<String, i64>>,
    kind: Kind,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Kind {
    Admin,
    Guest { until: i64 },
}

#[test]
fn structs_round_trip_and_look_like_python_dicts() {
    let u = User {
        id: 7,
        name: "ada".into(),
        tags: ("a".into(), "b".into()),
        score: 1.5,
        friends: vec![1, 2],
        extra: None,
        kind: Kind::Guest { until: -1 },
    };
    let bytes = to_vec(&u).expect("to_vec");
    assert_eq!(
        repr(&loads(&bytes).expect("loads")),
        "{'id': 7, 'name': 'ada', 'tags': ('a', 'b'), 'score': 1.5, 'friends': [1, 2], 'extra': None, 'kind': {'Guest': {'until': -1}}}"
    );
    assert_eq!(from_slice::<User>(&bytes).expect("from_slice"), u);
    let admin = to_vec(&Kind::Admin).expect("unit variant");
    assert_eq!(from_slice::<Kind>(&admin).expect("back"), Kind::Admin);
}

#[test]
fn errors_are_clear() {
    let bytes = to_vec(&300u32).expect("int");
    let e = from_slice::<u8>(&bytes).unwrap_err();
    assert!(
        e.to_string().contains("integer 300 out of range for u8"),
        "{e}"
    );
    let e = from_slice::<u8>(b"i\x01").unwrap_err();
    assert!(e.to_string().starts_with("EOFError"), "{e}");
}
