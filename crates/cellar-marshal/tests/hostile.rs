//! Hostile and malformed input: every failure is a typed error with CPython's message, never a
//! panic, a stack overflow or a large allocation; plus a fixed-budget random-input run.

mod common;

use cellar_marshal::{dumps, loads, loads_with, DecodeError, ErrorKind, LoadOptions};
use cellar_value::{parse, repr, Value};
use common::Rng;

fn err(data: &[u8]) -> DecodeError {
    match loads(data) {
        Ok(v) => panic!("{data:02x?} loaded as {}", repr(&v)),
        Err(e) => e,
    }
}

fn check(data: &[u8], kind: ErrorKind, msg: &str) {
    let e = err(data);
    assert_eq!((e.kind, e.message.as_str()), (kind, msg), "{data:02x?}");
}

#[test]
fn cpython_error_types_and_messages() {
    use ErrorKind::*;
    check(b"", Eof, "EOF read where object expected");
    check(b"i\x01\x00", Eof, "marshal data too short");
    check(b"s\x05\x00\x00\x00ab", Eof, "marshal data too short");
    check(b"Q", Value, "bad marshal data (unknown type code)");
    check(b"?", Value, "bad marshal data (unknown type code)");
    check(
        b"r\x00\x00\x00\x00",
        Value,
        "bad marshal data (invalid reference)",
    );
    check(
        b"r\xff\xff\xff\xff",
        Value,
        "bad marshal data (invalid reference)",
    );
    check(b"0", Type, "NULL object in marshal data for object");
    check(b")\x010", Type, "NULL object in marshal data for tuple");
    check(
        b"[\x01\x00\x00\x000",
        Type,
        "NULL object in marshal data for list",
    );
    check(
        b"<\x01\x00\x00\x000",
        Type,
        "NULL object in marshal data for set",
    );
    check(
        b"(\xff\xff\xff\xff",
        Value,
        "bad marshal data (tuple size out of range)",
    );
    check(
        b"[\xff\xff\xff\xff",
        Value,
        "bad marshal data (list size out of range)",
    );
    check(
        b"<\xff\xff\xff\xff",
        Value,
        "bad marshal data (set size out of range)",
    );
    check(
        b"s\xff\xff\xff\xff",
        Value,
        "bad marshal data (bytes object size out of range)",
    );
    check(
        b"u\xff\xff\xff\xff",
        Value,
        "bad marshal data (string size out of range)",
    );
    check(
        b"l\x01\x00\x00\x00\x00\x80",
        Value,
        "bad marshal data (digit out of range in long)",
    );
    check(
        b"l\x02\x00\x00\x00\x01\x00\x00\x00",
        Value,
        "bad marshal data (unnormalized long data)",
    );
    check(b"{[\x00\x00\x00\x00N0", Type, "unhashable type: 'list'");
    check(b"<\x01\x00\x00\x00{0", Type, "unhashable type: 'dict'");
    assert_eq!(err(b"u\x01\x00\x00\x00\xff").kind, UnicodeDecode);
    assert_eq!(
        err(b"f\x03abc").message,
        "could not convert string to float: 'abc'"
    );
    // Self-references: immutable containers are invalid references, mutable ones are cycles
    // that cellar's value model refuses.
    check(
        b"\xbe\x01\x00\x00\x00r\x00\x00\x00\x00",
        Value,
        "bad marshal data (invalid reference)",
    );
    assert!(err(b"\xdb\x01\x00\x00\x00r\x00\x00\x00\x00")
        .message
        .contains("recursive reference"));
}

#[test]
fn cpython_quirks() {
    assert_eq!(repr(&loads(b"{N0").expect("dict")), "{}");
    assert_eq!(repr(&loads(b"z\x01\xe9").expect("latin-1")), "'é'");
    assert_eq!(
        repr(&loads(b"I\x00\x00\x00\x00\x01\x00\x00\x00").expect("int64")),
        "4294967296"
    );
    assert_eq!(
        repr(&loads(b"N trailing bytes").expect("trailing ignored")),
        "None"
    );
    let (_, used) = loads_with(b"i\x01\x00\x00\x00rest", &LoadOptions::default()).expect("ok");
    assert_eq!(used, 5);
}

#[test]
fn ten_bytes_claiming_two_billion_items() {
    for code in [b'[', b'(', b'<', b'>'] {
        let mut data = vec![code, 0xff, 0xff, 0xff, 0x7f];
        data.extend_from_slice(b"NNNNN");
        assert_eq!(data.len(), 10);
        assert_eq!(err(&data).kind, ErrorKind::Eof);
    }
    check(
        b"s\xff\xff\xff\x7fabcde",
        ErrorKind::Eof,
        "marshal data too short",
    );
    check(
        b"l\xff\xff\xff\x7fabcde",
        ErrorKind::Eof,
        "marshal data too short",
    );
}

#[test]
fn nesting_limit_is_2000_and_never_overflows() {
    // CPython's test_loads_recursion shapes at 2^20 levels.
    let n = 1 << 20;
    let shapes: Vec<Vec<u8>> = vec![
        [b")\x01".repeat(n), b"N".to_vec()].concat(),
        [b"(\x01\x00\x00\x00".repeat(n), b"N".to_vec()].concat(),
        [b"[\x01\x00\x00\x00".repeat(n), b"N".to_vec()].concat(),
        [b"{N".repeat(n), b"N".to_vec(), b"0".repeat(n)].concat(),
        [b">\x01\x00\x00\x00".repeat(n), b"N".to_vec()].concat(),
    ];
    for s in &shapes {
        check(s, ErrorKind::Value, "recursion limit exceeded");
    }
    // 1999 nested lists plus a leaf load; 2000 fail.
    let ok = [b"[\x01\x00\x00\x00".repeat(1999), b"N".to_vec()].concat();
    assert!(loads(&ok).is_ok());
    let bad = [b"[\x01\x00\x00\x00".repeat(2000), b"N".to_vec()].concat();
    check(&bad, ErrorKind::Value, "recursion limit exceeded");
    // The encoder agrees: CPython's test_recursion_limit shape.
    let mut v = Value::int(0);
    for _ in 0..1999 {
        v = Value::list(vec![v]);
    }
    let data = dumps(&v, 4).expect("1999 levels dump");
    assert!(loads(&data).is_ok());
    let deeper = Value::list(vec![v]);
    assert_eq!(
        dumps(&deeper, 4).unwrap_err().message,
        "object too deeply nested to marshal"
    );
}

#[test]
fn long_reference_chains_are_refused() {
    // A flat list whose items each hold a reference to the previous one: the stream is
    // shallow, but the value would be 100,000 levels deep.
    let n: i32 = 100_000;
    let mut data = b"[".to_vec();
    data.extend_from_slice(&n.to_le_bytes());
    for i in 0..n {
        data.push(b'[' | 0x80);
        data.extend_from_slice(&1i32.to_le_bytes());
        if i == 0 {
            data.push(b'N');
        } else {
            data.push(b'r');
            data.extend_from_slice(&(i - 1).to_le_bytes());
        }
    }
    let e = err(&data);
    assert_eq!(e.kind, ErrorKind::Value);
    assert!(
        e.message.starts_with("recursion limit exceeded"),
        "{}",
        e.message
    );
    // A long chain of references to one shared object is fine (wide, not deep).
    let mut wide = b"[".to_vec();
    wide.extend_from_slice(&n.to_le_bytes());
    wide.extend_from_slice(b"\xe9\x07\x00\x00\x00");
    for _ in 1..n {
        wide.extend_from_slice(b"r\x00\x00\x00\x00");
    }
    let Value::List(items) = &loads(&wide).expect("wide") else {
        panic!("list")
    };
    assert_eq!(items.len(), n as usize);
}

#[test]
fn allow_code_false_refuses_code_objects() {
    let opts = LoadOptions {
        allow_code: false,
        ..LoadOptions::default()
    };
    let e = loads_with(b"c\x00\x00\x00\x00", &opts).unwrap_err();
    assert_eq!(e.message, "unmarshalling code objects is disallowed");
}

#[test]
fn every_truncation_of_valid_data_fails_cleanly() {
    let v = parse("{'a': [1, 2.5, (3, 'xyz', -0.0, 1j)], b'k': frozenset({1, 2}), 'big': 123456789012345678901234567890, 'é': None}").expect("literal");
    for version in 0..=4 {
        let data = dumps(&v, version).expect("dumps");
        assert!(loads(&data).expect("full").same(&v));
        for cut in 0..data.len() {
            let e = err(&data[..cut]);
            assert_eq!(e.kind, ErrorKind::Eof, "v{version} cut at {cut}: {e}");
        }
    }
}

#[test]
fn fixed_budget_random_inputs_never_panic() {
    let mut rng = Rng(42);
    let seeds: Vec<Vec<u8>> = [
        "[1, (2, 'a'), {3: b'x'}]",
        "{frozenset({1}): 2.5, 'k': [None, True]}",
        "(1j, 1000000000000000000000000000000, 'é', set())",
    ]
    .iter()
    .map(|s| dumps(&parse(s).expect("literal"), 4).expect("dumps"))
    .collect();
    let codes = b"0NFTS.iIfgxylstr([{cu<>aAz)Z:?";
    for round in 0..200_000u32 {
        let data: Vec<u8> = if round % 2 == 0 {
            // Random bytes biased towards type codes and small/huge lengths.
            let len = rng.below(48) as usize;
            (0..len)
                .map(|_| match rng.below(4) {
                    0 => {
                        codes[rng.below(codes.len() as u64) as usize]
                            | if rng.chance(20) { 0x80 } else { 0 }
                    }
                    1 => [0x00, 0x01, 0x02, 0xff, 0x7f][rng.below(5) as usize],
                    _ => rng.next() as u8,
                })
                .collect()
        } else {
            // Mutations of valid streams.
            let mut d = seeds[rng.below(seeds.len() as u64) as usize].clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(d.len() as u64) as usize;
                d[i] = rng.next() as u8;
            }
            d
        };
        if let Ok(v) = loads(&data) {
            // Whatever loads must print and re-encode without trouble.
            let _ = repr(&v);
            let _ = dumps(&v, 4);
        }
    }
}
