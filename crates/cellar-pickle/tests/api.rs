//! The public API: load options (Python 2 strings with encoding/errors, fix_imports, buffers,
//! persistent ids), the registry (constructors, reducers, copyreg's extension rules, EXT1/2/4
//! on dump), framing and large objects checked against CPython, serde.

mod common;

use std::sync::Arc;

use cellar_pickle::{
    dumps, from_slice, from_slice_with, loads, loads_with, to_vec, to_vec_with, Construct,
    DecodeErrors, ErrorKind, Inert, LoadOptions, Registry, StringEncoding,
};
use cellar_value::{parse, repr, Value};
use common::{get_record, put_record, run_python};

fn load(data: &[u8], opts: &LoadOptions) -> Result<Value, cellar_pickle::UnpicklingError> {
    loads(data, &Registry::default(), opts)
}

fn py(code: &str) -> Vec<u8> {
    let out = std::process::Command::new(common::python())
        .args(["-c", code])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn python2_strings_with_encoding_and_errors() {
    // Python 2's pickle of 'caf\xe9' (a byte string) at protocols 0, 1 and 2.
    let cases: [&[u8]; 3] = [
        b"S'caf\\xe9'\np0\n.",
        b"U\x04caf\xe9q\x00.",
        b"\x80\x02T\x04\x00\x00\x00caf\xe9q\x00.",
    ];
    for data in cases {
        let e = load(data, &LoadOptions::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnicodeDecode, "{e}");
        let latin1 = LoadOptions {
            encoding: StringEncoding::Latin1,
            ..LoadOptions::default()
        };
        assert_eq!(repr(&load(data, &latin1).unwrap()), "'café'");
        let bytes = LoadOptions {
            encoding: StringEncoding::from_name("bytes").unwrap(),
            ..LoadOptions::default()
        };
        assert_eq!(repr(&load(data, &bytes).unwrap()), "b'caf\\xe9'");
        let replace = LoadOptions {
            errors: DecodeErrors::from_name("replace").unwrap(),
            ..LoadOptions::default()
        };
        assert_eq!(repr(&load(data, &replace).unwrap()), "'caf\u{fffd}'");
        let esc = LoadOptions {
            encoding: StringEncoding::Utf8,
            errors: DecodeErrors::SurrogateEscape,
            ..LoadOptions::default()
        };
        assert_eq!(repr(&load(data, &esc).unwrap()), "'caf\\udce9'");
    }
    assert_eq!(
        StringEncoding::from_name("Latin-1"),
        Some(StringEncoding::Latin1)
    );
    assert_eq!(StringEncoding::from_name("koi8-r"), None);
    // escapes of protocol 0 strings
    let v = load(b"S'a\\'b\\n\\x00\\\\'\n.", &LoadOptions::default()).unwrap();
    assert_eq!(repr(&v), "\"a'b\\n\\x00\\\\\"");
}

#[test]
fn fix_imports_maps_python2_names() {
    // A Python 2 pickle naming __builtin__.set and copy_reg: loads only with fix_imports.
    let data = b"c__builtin__\nset\np0\n((lp1\nI1\natp2\nRp3\n.";
    assert_eq!(repr(&load(data, &LoadOptions::default()).unwrap()), "{1}");
    let no_fix = LoadOptions {
        fix_imports: false,
        ..LoadOptions::default()
    };
    let e = load(data, &no_fix).unwrap_err();
    assert!(e.message.contains("'__builtin__.set'"), "{e}");
    // not applied at protocol 3+
    let e = load(b"\x80\x03c__builtin__\nset\n)R.", &LoadOptions::default()).unwrap_err();
    assert!(e.message.contains("'__builtin__.set'"), "{e}");
    // exceptions.StopIteration (what CPython writes at 0-2) maps to the StopIteration value
    assert_eq!(
        repr(&load(b"cexceptions\nStopIteration\n.", &LoadOptions::default()).unwrap()),
        "<class 'StopIteration'>"
    );
}

#[test]
fn out_of_band_buffers_and_persistent_ids() {
    // CPython's protocol 5 out-of-band pickle of [bytearray(b'ab'), PickleBuffer(bytes)]
    let data = py("import pickle,sys; sys.stdout.buffer.write(pickle.dumps([pickle.PickleBuffer(bytearray(b'ab')), pickle.PickleBuffer(b'cd')], 5, buffer_callback=lambda b: None))");
    let bufs = [
        Value::ByteArray(Arc::new(b"ab".to_vec())),
        Value::bytes(b"cd"),
    ];
    let opts = LoadOptions {
        buffers: Some(&bufs),
        ..LoadOptions::default()
    };
    assert_eq!(
        repr(&load(&data, &opts).unwrap()),
        "[bytearray(b'ab'), b'cd']"
    );
    let one = LoadOptions {
        buffers: Some(&bufs[..1]),
        ..LoadOptions::default()
    };
    assert!(load(&data, &one)
        .unwrap_err()
        .message
        .contains("not enough out-of-band buffers"));
    // READONLY_BUFFER over a bytearray gives an immutable view: bytes here
    let data = b"\x80\x05\x97\x98.";
    assert_eq!(repr(&load(data, &opts).unwrap()), "b'ab'");

    // persistent ids
    let f = |pid: Value| -> Result<Value, String> {
        match repr(&pid).as_str() {
            "'users/7'" | "('users', 7)" => Ok(Value::str("loaded")),
            other => Err(format!("unknown persistent id {other}")),
        }
    };
    let opts = LoadOptions {
        persistent_load: Some(&f),
        ..LoadOptions::default()
    };
    assert_eq!(
        repr(&load(b"(Pusers/7\nI1\nl.", &opts).unwrap()),
        "['loaded', 1]"
    );
    assert_eq!(
        repr(&load(b"\x80\x02X\x05\x00\x00\x00usersK\x07\x86Q.", &opts).unwrap()),
        "'loaded'"
    );
    let e = load(b"Pnope\n.", &opts).unwrap_err();
    assert!(e.message.contains("unknown persistent id 'nope'"), "{e}");
}

#[test]
fn extension_registry_follows_copyreg() {
    let mut reg = Registry::default();
    for bad in [0i64, -1, 0x8000_0000] {
        assert_eq!(
            reg.add_extension("m", "n", bad).unwrap_err().message,
            "code out of range"
        );
    }
    reg.add_extension("mod", "A", 0xff).unwrap();
    reg.add_extension("mod", "A", 0xff).unwrap(); // the same pair again is fine
    reg.add_extension("mod", "B", 0xffff).unwrap();
    reg.add_extension("mod", "C", 0x1_0000).unwrap();
    assert!(reg
        .add_extension("mod", "A", 5)
        .unwrap_err()
        .message
        .contains("already registered with code 255"));
    assert!(reg
        .add_extension("mod", "Z", 0xff)
        .unwrap_err()
        .message
        .contains("already in use"));
    assert!(reg.remove_extension("mod", "A", 5).is_err());
    assert_eq!(reg.extension(0xffff), Some(("mod", "B")));
    // dumps writes EXT1/EXT2/EXT4 by code size at protocol 2+, GLOBAL below
    for (name, op) in [("A", 0x82u8), ("B", 0x83), ("C", 0x84)] {
        reg.allow("mod", name);
        let v = Inert::global("mod", name).to_value();
        let b = dumps(&v, 2, &reg).unwrap();
        assert_eq!(b[2], op, "{name}: {b:?}");
        let back = loads(&b, &reg, &LoadOptions::default()).unwrap();
        assert_eq!(Inert::from_value(&back).unwrap().name, name);
        let b1 = dumps(&v, 1, &reg).unwrap();
        assert_eq!(b1[0], b'c');
    }
    reg.remove_extension("mod", "A", 0xff).unwrap();
    assert_eq!(reg.extension_code("mod", "A"), None);
    let e = loads(b"\x80\x02\x82\xff.", &reg, &LoadOptions::default()).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::Value, "unregistered extension code 255")
    );
    reg.clear_extensions();
    assert_eq!(reg.extension(0xffff), None);
}

#[test]
fn constructors_and_reducers() {
    // A constructor rebuilds decimal.Decimal('1.5') (REDUCE with a str) as a float.
    let mut reg = Registry::default();
    reg.constructor("decimal", "Decimal", |o: &Inert| {
        let Value::Tuple(args) = &o.args else {
            return Err("bad args".into());
        };
        match args.first() {
            Some(Value::Str(s)) => s
                .as_str()
                .and_then(|t| t.parse::<f64>().ok())
                .map(Value::Float)
                .ok_or_else(|| "bad decimal".to_string()),
            _ => Err("bad decimal".into()),
        }
    });
    for proto in 0..=5 {
        let data = py(&format!("import pickle,sys,decimal; sys.stdout.buffer.write(pickle.dumps([decimal.Decimal('1.5')], {proto}))"));
        let v = loads(&data, &reg, &LoadOptions::default()).unwrap();
        assert_eq!(repr(&v), "[1.5]", "p{proto}");
        // without the registration: refused, naming the class
        let e = loads(&data, &Registry::default(), &LoadOptions::default()).unwrap_err();
        assert!(e.message.contains("'decimal.Decimal'"), "{e}");
    }
    // A reducer writes every float as decimal.Decimal(repr): CPython loads Decimals.
    let mut reg = Registry::default();
    reg.reducer(|v: &Value| match v {
        Value::Float(f) => Some(Inert::new(
            "decimal",
            "Decimal",
            Construct::Reduce,
            Value::tuple(vec![Value::from(cellar_value::float_repr(*f))]),
        )),
        _ => None,
    });
    let v = parse("[1.5, 'x', (2.25,)]").unwrap();
    let mut input = Vec::new();
    for proto in 0..=5u8 {
        input.push(proto);
        put_record(&mut input, &dumps(&v, proto, &reg).unwrap());
    }
    let out = run_python(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/differential.py"),
        &[],
        input,
    );
    let mut pos = 0;
    for proto in 0..=5 {
        let text = String::from_utf8_lossy(get_record(&out, &mut pos)).into_owned();
        let _ = get_record(&out, &mut pos);
        assert_eq!(
            text, "[Decimal('1.5'), 'x', (Decimal('2.25'),)]",
            "p{proto}"
        );
    }
}

#[test]
fn frames_batches_and_large_objects_agree_with_cpython() {
    // Large str/bytes go outside frames; > 1000 items cross batches; > 64 KiB of small items
    // spans several frames; > 256 memoized objects use LONG_BINPUT/LONG_BINGET.
    let big_str = "é".repeat(70_000);
    let shared: Vec<Value> = (0..300).map(|i| Value::from(format!("s{i}"))).collect();
    let mut items: Vec<Value> = (0..5000)
        .map(|i| Value::from(format!("item number {i}")))
        .collect();
    items.extend(shared.iter().cloned());
    items.extend(shared.iter().cloned());
    let v = Value::tuple(vec![
        Value::from(big_str.as_str()),
        Value::bytes(&vec![0xAB; 70_000]),
        Value::ByteArray(Arc::new(vec![1; 70_000])),
        Value::list(items),
        Value::set((0..2500).map(Value::int)).unwrap(),
        Value::frozenset((0..1500).map(Value::int)).unwrap(),
        Value::dict((0..2500).map(|i| (Value::int(i), Value::Float(i as f64)))).unwrap(),
    ]);
    let mut input = Vec::new();
    for proto in 0..=5u8 {
        let b = dumps(&v, proto, &Registry::default()).unwrap();
        if proto >= 4 {
            assert!(
                b.windows(2).filter(|w| w[0] == 0x95).count() >= 3,
                "p{proto}: frames"
            );
        }
        input.push(proto);
        put_record(&mut input, &b);
    }
    let out = run_python(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/differential.py"),
        &["--pure"],
        input,
    );
    let mut pos = 0;
    let want = cellar_value::repr_sorted(&v);
    for proto in 0..=5 {
        let text = String::from_utf8_lossy(get_record(&out, &mut pos)).into_owned();
        let theirs = get_record(&out, &mut pos);
        assert!(
            text == want,
            "p{proto}: CPython loaded something else: {}",
            &text[..text.len().min(300)]
        );
        let back = loads(theirs, &Registry::default(), &LoadOptions::default()).unwrap();
        assert!(
            back.same(&v),
            "p{proto}: cellar's load of CPython's bytes differs"
        );
    }
}

#[test]
fn consecutive_pickles_and_trailing_bytes() {
    let reg = Registry::default();
    let mut data = dumps(&Value::int(1), 2, &reg).unwrap();
    let first = data.len();
    data.extend(dumps(&Value::str("two"), 4, &reg).unwrap());
    let (v, used) = loads_with(&data, &reg, &LoadOptions::default()).unwrap();
    assert_eq!((repr(&v), used), ("1".to_string(), first));
    let (v, _) = loads_with(&data[used..], &reg, &LoadOptions::default()).unwrap();
    assert_eq!(repr(&v), "'two'");
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Plain {
    a: i64,
    b: String,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Config {
    name: String,
    sizes: Vec<u32>,
    pair: (i32, bool),
}

#[test]
fn serde_round_trips_and_registered_types_are_classes() {
    let c = Config {
        name: "x".into(),
        sizes: vec![1, 2],
        pair: (-3, true),
    };
    let b = to_vec(&c).unwrap();
    assert_eq!(from_slice::<Config>(&b).unwrap(), c);
    // A registered type is written as an instance of its Python class...
    let mut reg = Registry::default();
    reg.register_type::<Plain>("cellar_classes", "Plain");
    let p = Plain {
        a: 1,
        b: "x".into(),
    };
    let mut input = Vec::new();
    for proto in 0..=5u8 {
        let b = to_vec_with(&p, proto, &reg).unwrap();
        // ... that cellar loads back into the struct ...
        assert_eq!(from_slice_with::<Plain>(&b, &reg).unwrap(), p, "p{proto}");
        put_record(&mut input, b"plain");
        input.push(proto);
        put_record(&mut input, &b);
    }
    // ... and CPython rebuilds as cellar_classes.Plain(1, 'x').
    let out = run_python(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/classes.py"),
        &["check"],
        input,
    );
    let mut pos = 0;
    for proto in 0..=5 {
        assert_eq!(
            String::from_utf8_lossy(get_record(&out, &mut pos)),
            "OK",
            "p{proto}"
        );
    }
    // CPython's own pickles of the class load into the struct at every protocol.
    for proto in 0..=5 {
        let data = py(&format!("import sys; sys.path.insert(0, '{}/tests/support'); import pickle, cellar_classes; sys.stdout.buffer.write(pickle.dumps(cellar_classes.Plain(1, 'x'), {proto}))", env!("CARGO_MANIFEST_DIR")));
        assert_eq!(
            from_slice_with::<Plain>(&data, &reg).unwrap(),
            p,
            "p{proto}"
        );
        assert!(from_slice::<Plain>(&data).is_err());
    }
}

#[test]
fn dumps_refuses_what_cpython_cannot_load() {
    let reg = Registry::default();
    assert!(dumps(&Value::None, 6, &reg).is_err());
    let empty = Value::bytes(b"");
    let none = Value::tuple(Vec::new());
    let code = Value::Code(std::sync::Arc::new(cellar_value::Code {
        argcount: 0,
        posonlyargcount: 0,
        kwonlyargcount: 0,
        stacksize: 0,
        flags: 0,
        code: empty.clone(),
        consts: none.clone(),
        names: none.clone(),
        localsplusnames: none,
        localspluskinds: empty.clone(),
        filename: Value::str("f.py"),
        name: Value::str("f"),
        qualname: Value::str("f"),
        firstlineno: 1,
        linetable: empty.clone(),
        exceptiontable: empty,
    }));
    let e = dumps(&code, 4, &reg).unwrap_err();
    assert_eq!(e.message, "cannot pickle 'code' object");
    let huge = Value::bigint(cellar_value::BigInt::from(10).pow(5000));
    assert!(dumps(&huge, 0, &reg)
        .unwrap_err()
        .message
        .contains("4300 digits"));
    assert!(dumps(&huge, 2, &reg).is_ok());
    let mut deep = Value::None;
    for _ in 0..100_000 {
        deep = Value::list(vec![deep]);
    }
    assert!(dumps(&deep, 4, &reg)
        .unwrap_err()
        .message
        .contains("recursion"));
}
