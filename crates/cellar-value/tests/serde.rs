//! The serde bridge: Rust types <-> `Value` (docs/serde.md).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cellar_value::{from_value, parse, repr, to_value, BigInt, PyStr, SerdeError, Value};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// `to_value`, checking the Python repr, then back, checking the round trip.
fn check<T>(x: &T, expected_repr: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let v = to_value(x).unwrap();
    assert_eq!(repr(&v), expected_repr, "value for {x:?}");
    let back: T = from_value(&v).unwrap();
    assert_eq!(&back, x, "round trip through {expected_repr}");
}

fn err<T: DeserializeOwned + std::fmt::Debug>(v: Value) -> String {
    from_value::<T>(v).unwrap_err().to_string()
}

fn pow2(n: u32) -> Value {
    Value::bigint(BigInt::from(2).pow(n))
}

fn py(text: &str) -> Value {
    parse(text).unwrap()
}

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Point {
    x: i32,
    y: f64,
    name: String,
}

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Pair(u8, String);

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Meters(f64);

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Marker;

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
enum Shape {
    Empty,
    Circle(f64),
    Rect(u32, u32),
    Poly { sides: u8, closed: bool },
}

#[test]
fn struct_is_a_dict_with_str_keys_in_field_order() {
    let p = Point {
        x: 1,
        y: 2.5,
        name: "p".into(),
    };
    let v = to_value(&p).unwrap();
    let Value::Dict(d) = &v else {
        panic!("expected a dict, got {v:?}")
    };
    let keys: Vec<&str> = d
        .keys()
        .map(|k| match k {
            Value::Str(s) => s.as_str().unwrap(),
            other => panic!("non-str key {other:?}"),
        })
        .collect();
    assert_eq!(keys, ["x", "y", "name"]);
    check(&p, "{'x': 1, 'y': 2.5, 'name': 'p'}");
}

#[test]
fn tuple_newtype_and_unit_structs() {
    let v = to_value(&Pair(7, "seven".into())).unwrap();
    assert!(
        matches!(v, Value::Tuple(_)),
        "tuple struct -> tuple, got {v:?}"
    );
    check(&Pair(7, "seven".into()), "(7, 'seven')");
    check(&Meters(1.5), "1.5");
    check(&Marker, "None");
    check(&(), "None");
    check(&(1u8, "a".to_string(), true), "(1, 'a', True)");
}

#[test]
fn enum_variants_of_every_kind() {
    check(&Shape::Empty, "'Empty'");
    check(&Shape::Circle(2.0), "{'Circle': 2.0}");
    check(&Shape::Rect(3, 4), "{'Rect': (3, 4)}");
    check(
        &Shape::Poly {
            sides: 5,
            closed: true,
        },
        "{'Poly': {'sides': 5, 'closed': True}}",
    );
    check(
        &vec![Shape::Empty, Shape::Circle(1.0)],
        "['Empty', {'Circle': 1.0}]",
    );
    // A unit variant may also be written {'Empty': None}, and a struct variant's content as a
    // tuple in field order.
    assert_eq!(
        from_value::<Shape>(py("{'Empty': None}")).unwrap(),
        Shape::Empty
    );
    assert_eq!(
        from_value::<Shape>(py("{'Poly': (3, False)}")).unwrap(),
        Shape::Poly {
            sides: 3,
            closed: false
        }
    );
}

#[test]
fn enum_errors() {
    assert_eq!(
        err::<Shape>(py("'Hexagon'")),
        "unknown variant `Hexagon`, expected one of `Empty`, `Circle`, `Rect`, `Poly`"
    );
    assert_eq!(
        err::<Shape>(py("{'Circle': 1.0, 'Rect': (1, 2)}")),
        "cannot deserialize a Python dict with 2 entries into enum Shape: an enum is a str \
         (unit variant) or a one-entry dict {variant: content}"
    );
    assert_eq!(
        err::<Shape>(py("'Circle'")),
        "enum variant `Circle` is a newtype variant and needs content: expected a one-entry \
         dict {'Circle': ...}, got the str 'Circle'"
    );
    assert_eq!(
        err::<Shape>(py("{'Empty': 1}")),
        "enum variant `Empty` is a unit variant and takes no content, got a Python int"
    );
    assert_eq!(
        err::<Shape>(py("{'Rect': (1, -2)}")),
        "integer -2 out of range for u32 (at .Rect[1])"
    );
    assert_eq!(
        err::<Shape>(py("[1]")),
        "cannot deserialize a Python list into enum Shape"
    );
}

#[test]
fn maps_with_tuple_keys() {
    let mut m = BTreeMap::new();
    m.insert((1, "a".to_string()), vec![1u8, 2]);
    m.insert((2, "b".to_string()), vec![]);
    check(&m, "{(1, 'a'): [1, 2], (2, 'b'): []}");

    let mut h: HashMap<(u8, u8), String> = HashMap::new();
    h.insert((0, 1), "x".into());
    let v = to_value(&h).unwrap();
    assert_eq!(repr(&v), "{(0, 1): 'x'}");
    assert_eq!(from_value::<HashMap<(u8, u8), String>>(v).unwrap(), h);

    let mut ints = BTreeMap::new();
    ints.insert(-1i64, Some(Shape::Empty));
    ints.insert(u32::MAX as i64, None);
    check(&ints, "{-1: 'Empty', 4294967295: None}");
}

#[test]
fn unhashable_and_colliding_keys_are_errors() {
    let mut m = HashMap::new();
    m.insert(vec![1, 2], 3);
    let e = to_value(&m).unwrap_err();
    assert_eq!(
        e.to_string(),
        "dict key of unhashable type 'list' (Rust sequences become lists; a tuple or tuple \
         struct is hashable)"
    );

    let mut s = BTreeMap::new();
    s.insert(Point::default_for_key(), 1);
    assert!(to_value(&s)
        .unwrap_err()
        .to_string()
        .starts_with("dict key of unhashable type 'dict'"));

    // 1 and 1.0 are one dict key in Python: refusing beats silently dropping an entry.
    struct Colliding;
    impl Serialize for Colliding {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map([(Value::int(1), "int"), (Value::Float(1.0), "float")])
        }
    }
    assert_eq!(
        to_value(&Colliding).unwrap_err().to_string(),
        "dict key 1.0 equals an earlier key in Python (1, 1.0 and True are one key), so the \
         map cannot be represented as a dict without losing an entry"
    );
}

impl Point {
    fn default_for_key() -> PointKey {
        PointKey { x: 0 }
    }
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct PointKey {
    x: i32,
}

#[test]
fn options() {
    check(&Some(3u8), "3");
    check(&None::<u8>, "None");
    check(&vec![Some(1), None], "[1, None]");
    // Lossy, documented: Some(None) and None are both Python None.
    let v = to_value(&Some(None::<u8>)).unwrap();
    assert_eq!(repr(&v), "None");
    assert_eq!(from_value::<Option<Option<u8>>>(v).unwrap(), None);
    // Some(()) likewise.
    assert_eq!(from_value::<Option<()>>(Value::None).unwrap(), None);
}

#[test]
fn bytes() {
    check(&ByteBuf::from(vec![0u8, 1, 255]), "b'\\x00\\x01\\xff'");
    // Without serde_bytes, Vec<u8> is a sequence: a list of ints.
    check(&vec![0u8, 1, 255], "[0, 1, 255]");
    // Either way, bytes and bytearray are accepted back.
    assert_eq!(from_value::<Vec<u8>>(py("b'ab'")).unwrap(), b"ab".to_vec());
    assert_eq!(
        from_value::<ByteBuf>(py("bytearray(b'ab')")).unwrap(),
        ByteBuf::from(b"ab".to_vec())
    );
    assert_eq!(
        from_value::<ByteBuf>(py("[97, 98]")).unwrap(),
        ByteBuf::from(b"ab".to_vec())
    );
    assert_eq!(
        err::<ByteBuf>(py("'ab'")),
        "cannot deserialize a Python str into byte array"
    );
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Blob {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }
    check(
        &Blob {
            data: b"hi".to_vec(),
        },
        "{'data': b'hi'}",
    );
}

#[test]
fn big_integers() {
    check(&u128::MAX, "340282366920938463463374607431768211455");
    check(&i128::MIN, "-170141183460469231731687303715884105728");
    check(&u64::MAX, "18446744073709551615");
    check(&i64::MIN, "-9223372036854775808");
    check(&i64::MAX, "9223372036854775807");
    check(&(u64::MAX as i128 + 1), "18446744073709551616");
    assert!(to_value(&u64::MAX)
        .unwrap()
        .same(&Value::bigint(BigInt::from(u64::MAX))));
    assert!(
        to_value(&5u128).unwrap().same(&Value::int(5)),
        "canonical small form"
    );
}

#[test]
fn integer_range_errors() {
    assert_eq!(
        err::<u8>(Value::int(300)),
        "integer 300 out of range for u8"
    );
    assert_eq!(
        err::<u64>(Value::int(-1)),
        "integer -1 out of range for u64"
    );
    assert_eq!(
        err::<i8>(Value::int(-129)),
        "integer -129 out of range for i8"
    );
    assert_eq!(
        err::<i64>(Value::from(u64::MAX)),
        "integer 18446744073709551615 out of range for i64"
    );
    assert_eq!(err::<u128>(py("-1")), "integer -1 out of range for u128");
    assert_eq!(
        err::<i128>(pow2(127)),
        "integer 170141183460469231731687303715884105728 out of range for i128"
    );
    assert_eq!(
        err::<u128>(pow2(128)),
        "integer 340282366920938463463374607431768211456 out of range for u128"
    );
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Rgb {
        name: String,
        channels: Vec<u8>,
    }
    let e = from_value::<Rgb>(py("{'name': 'x', 'channels': [1, 300]}")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "integer 300 out of range for u8 (at .channels[1])"
    );
    assert_eq!(e.message(), "integer 300 out of range for u8");
    assert_eq!(e.path(), ".channels[1]");
    let e = from_value::<HashMap<String, Vec<i8>>>(py("{'k': [0, 0, 1000]}")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "integer 1000 out of range for i8 (at ['k'][2])"
    );
}

#[test]
fn wrong_type_errors() {
    assert_eq!(
        err::<String>(Value::int(1)),
        "cannot deserialize a Python int into a string"
    );
    // bool is an int subclass in Python, but only a Rust bool accepts it.
    assert_eq!(
        err::<i64>(Value::Bool(true)),
        "cannot deserialize a Python bool into i64"
    );
    assert_eq!(
        err::<bool>(Value::int(1)),
        "cannot deserialize a Python int into a boolean"
    );
    assert_eq!(
        err::<f64>(py("1j")),
        "cannot deserialize a Python complex into f64"
    );
    assert_eq!(
        err::<Vec<u8>>(py("{1: 2}")),
        "cannot deserialize a Python dict into a sequence"
    );
    assert_eq!(
        err::<Point>(Value::int(3)),
        "cannot deserialize a Python int into struct Point"
    );
    assert_eq!(
        err::<HashMap<String, u8>>(py("[1]")),
        "cannot deserialize a Python list into a map"
    );
    assert_eq!(
        err::<()>(Value::int(0)),
        "cannot deserialize a Python int into unit"
    );
    assert_eq!(
        err::<(u8, u8)>(py("{1, 2}")),
        "cannot deserialize a Python set into a tuple of size 2"
    );
    // deserialize_any sees the Python-only types too.
    assert_eq!(
        err::<serde_json::Value>(py("...")),
        "cannot deserialize a Python ellipsis into any valid JSON value"
    );
    assert_eq!(
        err::<serde_json::Value>(py("[1, slice(1, 2, None)]")),
        "cannot deserialize a Python slice into any valid JSON value (at [1])"
    );
    // A str with a lone surrogate has no Rust String form.
    let lone = Value::Str(std::sync::Arc::new(
        PyStr::from_utf8_surrogatepass(b"a\xed\xa0\x80").unwrap(),
    ));
    assert_eq!(
        err::<String>(lone.clone()),
        "cannot deserialize a Python str containing lone surrogates into a string: it has no \
         Rust string form"
    );
    assert!(err::<serde_json::Value>(lone).contains("lone surrogates"));
    // Errors carry the path through structs, lists and enum variants.
    assert_eq!(
        err::<Vec<Point>>(py(
            "[{'x': 1, 'y': 2, 'name': 'a'}, {'x': 1, 'y': 'no', 'name': 'b'}]"
        )),
        "cannot deserialize a Python str into f64 (at [1].y)"
    );
    assert_eq!(
        err::<Point>(py("{'x': 1, 'name': 'a'}")),
        "missing field `y`"
    );
}

#[test]
fn chars_strings_and_floats() {
    check(&'é', "'é'");
    check(&"text".to_string(), "'text'");
    assert_eq!(
        err::<char>(py("'ab'")),
        "cannot deserialize a Python str of length 2 into a char: it needs exactly one character"
    );
    // float fields accept ints, as Python's float(int) does.
    assert_eq!(from_value::<f64>(Value::int(3)).unwrap(), 3.0);
    assert_eq!(from_value::<f32>(pow2(24)).unwrap(), 16_777_216.0);
    assert_eq!(from_value::<f64>(pow2(64)).unwrap(), 2f64.powi(64));
    assert_eq!(
        err::<f64>(Value::bigint(BigInt::from(10).pow(400))),
        "int too large to convert to float"
    );
    check(&1.5f32, "1.5");
    check(&f64::INFINITY, "inf");
    let nan: f64 = from_value(to_value(&f64::NAN).unwrap()).unwrap();
    assert!(nan.is_nan());
    check(&-0.0f64, "-0.0");
}

#[test]
fn sequences_sets_and_structs_from_tuples() {
    let s: BTreeSet<i32> = [3, 1, 2].into_iter().collect();
    check(&s, "[1, 2, 3]");
    let h: HashSet<String> = from_value(py("{'a', 'b'}")).unwrap();
    assert_eq!(h.len(), 2);
    let f: BTreeSet<u8> = from_value(py("frozenset({1, 2})")).unwrap();
    assert_eq!(f.into_iter().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(from_value::<Vec<i32>>(py("(1, 2)")).unwrap(), [1, 2]);
    assert_eq!(from_value::<(i32, i32)>(py("[1, 2]")).unwrap(), (1, 2));
    assert_eq!(
        err::<(i32, i32)>(py("(1, 2, 3)")),
        "invalid length 3, expected 2 elements in sequence"
    );
    assert_eq!(
        err::<(i32, i32, i32)>(py("(1, 2)")),
        "invalid length 2, expected a tuple of size 3"
    );
    // A struct accepts a tuple or list in field order, and ignores unknown dict keys.
    assert_eq!(
        from_value::<Point>(py("(1, 2.0, 'p')")).unwrap(),
        Point {
            x: 1,
            y: 2.0,
            name: "p".into()
        }
    );
    assert_eq!(
        from_value::<Point>(py("{'name': 'p', 'extra': 1j, 'y': 2, 'x': 1}")).unwrap(),
        Point {
            x: 1,
            y: 2.0,
            name: "p".into()
        }
    );
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        a: u8,
    }
    assert_eq!(
        err::<Strict>(py("{'a': 1, 'b': 2}")),
        "unknown field `b`, expected `a`"
    );
}

#[test]
fn arrays_are_tuples_and_unit_enums_make_str_keys() {
    check(&[1u8, 2, 3], "(1, 2, 3)");
    let mut m = BTreeMap::new();
    m.insert([0i32, 0], "origin".to_string());
    check(&m, "{(0, 0): 'origin'}");

    #[derive(Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
    #[serde(rename_all = "lowercase")]
    enum Color {
        Red,
        Green,
    }
    let mut c = BTreeMap::new();
    c.insert(Color::Red, 1u8);
    c.insert(Color::Green, 2);
    check(&c, "{'red': 1, 'green': 2}");
}

#[test]
fn std_types_use_their_human_readable_forms() {
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    check(&ip, "'127.0.0.1'");
    check(
        &std::time::Duration::from_millis(1500),
        "{'secs': 1, 'nanos': 500000000}",
    );
}

#[test]
fn serde_attributes_that_buffer_content() {
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    #[serde(tag = "type")]
    enum Tagged {
        A { n: u32 },
        B,
    }
    check(&Tagged::A { n: 1 }, "{'type': 'A', 'n': 1}");
    check(&Tagged::B, "{'type': 'B'}");

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    #[serde(untagged)]
    enum Loose {
        Num(i64),
        Text(String),
        Pair((u8, u8)),
    }
    check(&vec![Loose::Num(-1), Loose::Text("t".into())], "[-1, 't']");
    check(&Loose::Pair((1, 2)), "(1, 2)");

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Outer {
        id: u8,
        #[serde(flatten)]
        rest: BTreeMap<String, i32>,
    }
    let mut rest = BTreeMap::new();
    rest.insert("z".to_string(), 26);
    check(&Outer { id: 1, rest }, "{'id': 1, 'z': 26}");

    // Buffered content takes the natural mapping: a Value inside sees lists, and Python-only
    // values cannot be buffered at all.
    #[derive(Deserialize, Debug)]
    #[serde(untagged)]
    enum AnyOf {
        V(Value),
    }
    let AnyOf::V(v) = from_value::<AnyOf>(py("(1, {2})")).unwrap();
    assert_eq!(repr(&v), "[1, [2]]");
    assert_eq!(
        err::<AnyOf>(py("[1j]")),
        "cannot deserialize a Python complex into any value (at [0])"
    );

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Renamed {
        #[serde(rename = "class")]
        class_: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        note: Option<String>,
    }
    check(
        &Renamed {
            class_: "c".into(),
            note: None,
        },
        "{'class': 'c'}",
    );
}

// ---------------------------------------------------------------------------------------------
// Value inside serde types

#[test]
fn values_pass_through_unchanged() {
    let v = py(
        "{(1, 2): {1, 2}, 'f': frozenset({b'x'}), 'c': (1+2j), 'e': ..., \
         'ba': bytearray(b'z'), 'big': 1606938044258990275541962092341162602522202993782792835301376, 'nan': float('nan'), 't': ()}",
    );
    assert!(to_value(&v).unwrap().same(&v));
    assert!(from_value::<Value>(&v).unwrap().same(&v));

    #[derive(Serialize, Deserialize)]
    struct Envelope {
        id: u32,
        payload: Value,
        more: Vec<Value>,
        maybe: Option<Value>,
    }
    let env = Envelope {
        id: 9,
        payload: v.clone(),
        more: vec![py("(1j, 2j)"), Value::StopIteration],
        maybe: Some(py("{1}")),
    };
    let ev = to_value(&env).unwrap();
    assert_eq!(
        repr(&ev).split(", 'more'").nth(1).unwrap(),
        ": [(1j, 2j), <class 'StopIteration'>], 'maybe': {1}}"
    );
    let back: Envelope = from_value(&ev).unwrap();
    assert_eq!(back.id, 9);
    assert!(back.payload.same(&v));
    assert!(back.more[0].same(&py("(1j, 2j)")));
    assert!(back.more[1].same(&Value::StopIteration));
    assert!(back.maybe.unwrap().same(&py("{1}")));
}

#[test]
fn deep_values_pass_through_without_recursion() {
    let mut deep = Value::None;
    for _ in 0..100_000 {
        deep = Value::list(vec![deep]);
    }
    let wrapped = to_value(&vec![deep.clone()]).unwrap();
    let back: Vec<Value> = from_value(&wrapped).unwrap();
    assert_eq!(back[0].ptr_id(), deep.ptr_id(), "shared, not copied");
}

#[test]
fn other_formats_see_the_natural_mapping() {
    let v = py("{'a': (1, 2), 'b': None, 'c': [1.5, True], 'd': 1180591620717411303424, 's': {3}}");
    assert_eq!(
        serde_json::to_string(&v).unwrap(),
        r#"{"a":[1,2],"b":null,"c":[1.5,true],"d":1180591620717411303424,"s":[3]}"#
    );
    // The hand-over stash never leaks into a later conversion.
    assert!(to_value(&(v.clone(), 5u8))
        .unwrap()
        .same(&Value::tuple(vec![v.clone(), Value::int(5)])));
    let e = serde_json::to_string(&py("[1j]")).unwrap_err().to_string();
    assert_eq!(
        e,
        "cannot serialize a Python complex with serde (only cellar's own codecs can carry it)"
    );
    let back: Value =
        serde_json::from_str(r#"{"a":[1,{"b":null}],"n":-5,"u":18446744073709551615}"#).unwrap();
    assert!(back.same(&py(
        "{'a': [1, {'b': None}], 'n': -5, 'u': 18446744073709551615}"
    )));
    // Rust types go through JSON and Value alike.
    let p = Point {
        x: 1,
        y: 2.0,
        name: "n".into(),
    };
    let via_json: Value = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert!(via_json.py_eq(&to_value(&p).unwrap()));
}

#[test]
fn serde_error_is_a_std_error() {
    fn takes(_: &dyn std::error::Error) {}
    let e: SerdeError = from_value::<u8>(Value::None).unwrap_err();
    takes(&e);
    assert_eq!(
        e.to_string(),
        "cannot deserialize a Python NoneType into u8"
    );
    assert_eq!(
        format!("{e:?}"),
        "SerdeError(\"cannot deserialize a Python NoneType into u8\")"
    );
}

// ---------------------------------------------------------------------------------------------
// property: any value of a rich Rust type round-trips

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
enum Node {
    Leaf,
    Num(i128),
    Text(String),
    Pair(Box<Node>, Box<Node>),
    Branch { label: char, kids: Vec<Node> },
}

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Wide(u64, i8);

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Record {
    a: u8,
    b: i16,
    c: u32,
    d: i64,
    e: u128,
    f: f64,
    g: f32,
    flag: bool,
    text: String,
    bytes: ByteBuf,
    raw: Vec<u8>,
    opt: Option<u16>,
    wide: Wide,
    tuple: (i32, String, Option<bool>),
    map: BTreeMap<(i32, String), Vec<Node>>,
    hmap: HashMap<String, Option<i64>>,
    set: BTreeSet<u16>,
    tree: Node,
    unit: (),
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        Just(Node::Leaf),
        any::<i128>().prop_map(Node::Num),
        ".{0,8}".prop_map(Node::Text),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Node::Pair(Box::new(a), Box::new(b))),
            (any::<char>(), prop::collection::vec(inner, 0..4))
                .prop_map(|(label, kids)| Node::Branch { label, kids }),
        ]
    })
}

prop_compose! {
    fn record()(
        (a, b, c, d, e) in (any::<u8>(), any::<i16>(), any::<u32>(), any::<i64>(), any::<u128>()),
        (f, g, flag) in (any::<f64>().prop_filter("NaN != NaN", |f| !f.is_nan()),
                         any::<f32>().prop_filter("NaN != NaN", |f| !f.is_nan()),
                         any::<bool>()),
        text in ".{0,12}",
        (bytes, raw) in (prop::collection::vec(any::<u8>(), 0..16), prop::collection::vec(any::<u8>(), 0..4)),
        opt in any::<Option<u16>>(),
        wide in (any::<u64>(), any::<i8>()).prop_map(|(x, y)| Wide(x, y)),
        tuple in (any::<i32>(), ".{0,4}", any::<Option<bool>>()),
        map in prop::collection::btree_map((any::<i32>(), ".{0,3}"), prop::collection::vec(node(), 0..3), 0..4),
        hmap in prop::collection::hash_map(".{0,5}", any::<Option<i64>>(), 0..4),
        set in prop::collection::btree_set(any::<u16>(), 0..5),
        tree in node(),
    ) -> Record {
        Record { a, b, c, d, e, f, g, flag, text, bytes: ByteBuf::from(bytes), raw, opt, wide, tuple, map, hmap, set, tree, unit: () }
    }
}

proptest! {
    #[test]
    fn rust_values_round_trip(r in record()) {
        let v = to_value(&r).unwrap();
        let back: Record = from_value(&v).unwrap();
        prop_assert_eq!(&back, &r);
        // And the Value is the documented shape.
        let Value::Dict(d) = &v else { panic!("struct -> dict") };
        prop_assert_eq!(d.len(), 19);
        prop_assert!(matches!(d.get(&Value::str("wide")).unwrap(), Some(Value::Tuple(_))));
        prop_assert!(matches!(d.get(&Value::str("bytes")).unwrap(), Some(Value::Bytes(_))));
        prop_assert!(matches!(d.get(&Value::str("raw")).unwrap(), Some(Value::List(_))));
        prop_assert!(matches!(d.get(&Value::str("unit")).unwrap(), Some(Value::None)));
        // A Value copy of the tree round-trips through Value itself too.
        let tree_v = to_value(&r.tree).unwrap();
        let again: Value = from_value(&tree_v).unwrap();
        prop_assert!(again.same(&tree_v));
        prop_assert_eq!(from_value::<Node>(again).unwrap(), r.tree.clone());
    }
}
