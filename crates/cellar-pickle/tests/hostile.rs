//! Malicious and malformed pickles: nothing is ever resolved outside the registry, every failure
//! is a typed error (UnpicklingError unless CPython raises something else for the same bytes),
//! never a panic, a stack overflow or a large allocation, and it comes fast; plus a
//! fixed-budget random-input run.

mod common;

use std::time::{Duration, Instant};

use cellar_pickle::{dumps, loads, ErrorKind, Inert, LoadOptions, Registry, UnpicklingError};
use cellar_value::{repr, Value};
use common::{Gen, Rng};

fn strict(data: &[u8]) -> Result<Value, UnpicklingError> {
    loads(data, &Registry::default(), &LoadOptions::default())
}

fn inert(data: &[u8]) -> Result<Value, UnpicklingError> {
    let opts = LoadOptions {
        inert: true,
        ..LoadOptions::default()
    };
    loads(data, &Registry::default(), &opts)
}

fn err(data: &[u8]) -> UnpicklingError {
    let t = Instant::now();
    let r = strict(data);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "slow failure on {:?}",
        short(data)
    );
    match r {
        Ok(v) => panic!("{:?} loaded as {}", short(data), repr(&v)),
        Err(e) => e,
    }
}

/// The random-input budget: 3 s (2 s for the fuzz property), or CELLAR_PICKLE_FUZZ_SECS.
fn budget(default: u64) -> Duration {
    let secs = std::env::var("CELLAR_PICKLE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

fn short(data: &[u8]) -> String {
    format!("{:?}", &data[..data.len().min(80)])
}

fn check(data: &[u8], kind: ErrorKind, msg: &str) {
    let e = err(data);
    assert!(
        e.kind == kind && e.message.contains(msg),
        "{}: got {e}, want {kind:?} containing {msg:?}",
        short(data)
    );
}

/// The malicious corpus: (what, pickle, the global that must be named in the refusal).
fn corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut v: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "GLOBAL os.system REDUCE",
            b"cos\nsystem\n(S'echo pwned'\ntR.".to_vec(),
            "os.system",
        ),
        (
            "posix.system",
            b"cposix\nsystem\n(S'id'\ntR.".to_vec(),
            "posix.system",
        ),
        (
            "subprocess.check_output",
            b"csubprocess\ncheck_output\n((S'ls'\nltR.".to_vec(),
            "subprocess.check_output",
        ),
        (
            "subprocess.Popen",
            b"\x80\x02csubprocess\nPopen\nX\x02\x00\x00\x00ls\x85R.".to_vec(),
            "subprocess.Popen",
        ),
        (
            "eval (py2 name)",
            b"c__builtin__\neval\n(S'1+1'\ntR.".to_vec(),
            "builtins.eval",
        ),
        (
            "exec",
            b"\x80\x03cbuiltins\nexec\nX\x08\x00\x00\x00import os\x85R.".to_vec(),
            "builtins.exec",
        ),
        (
            "__import__",
            b"cbuiltins\n__import__\n(S'os'\ntR.".to_vec(),
            "builtins.__import__",
        ),
        (
            "getattr(os, 'system')",
            b"cbuiltins\ngetattr\n(cos\nsystem\nS'x'\ntR.".to_vec(),
            "os.system",
        ),
        (
            "STACK_GLOBAL os.system",
            b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x02id\x85R.".to_vec(),
            "os.system",
        ),
        (
            "INST os.system",
            b"(S'ls'\nios\nsystem\n.".to_vec(),
            "os.system",
        ),
        (
            "OBJ os.system",
            b"(cos\nsystem\nS'ls'\no.".to_vec(),
            "os.system",
        ),
        (
            "NEWOBJ os.system",
            b"\x80\x02cos\nsystem\n)\x81.".to_vec(),
            "os.system",
        ),
        (
            "NEWOBJ_EX subprocess.Popen",
            b"\x80\x04\x8c\nsubprocess\x8c\x05Popen\x93)}\x92.".to_vec(),
            "subprocess.Popen",
        ),
        (
            "BUILD __setstate__ = os.system",
            b"\x80\x02c__main__\nC\n)\x81}X\x0c\x00\x00\x00__setstate__cos\nsystem\nsb.".to_vec(),
            "__main__.C",
        ),
        (
            "BUILD with a malicious state",
            b"\x80\x02cbuiltins\nset\n)R}X\x01\x00\x00\x00acos\nsystem\nsb.".to_vec(),
            "os.system",
        ),
        (
            "copyreg._reconstructor(os.system)",
            b"ccopy_reg\n_reconstructor\n(cos\nsystem\nc__builtin__\nobject\nNtR.".to_vec(),
            "os.system",
        ),
        (
            "functools.partial(os.system)",
            b"\x80\x02cfunctools\npartial\ncos\nsystem\n\x85R.".to_vec(),
            "os.system",
        ),
        (
            "pickle.loads",
            b"cpickle\nloads\n(C\x01.tR.".to_vec(),
            "pickle.loads",
        ),
        (
            "nt.system",
            b"cnt\nsystem\n(S'dir'\ntR.".to_vec(),
            "nt.system",
        ),
    ];
    // A memo trick: the callable hidden behind PUT/GET.
    v.push((
        "memo-hidden os.system",
        b"cos\nsystem\np0\n0g0\n(S'ls'\ntR.".to_vec(),
        "os.system",
    ));
    v
}

#[test]
fn malicious_globals_are_refused_and_named() {
    for (what, data, name) in corpus() {
        let e = err(&data);
        assert_eq!(e.kind, ErrorKind::Unpickling, "{what}: {e}");
        assert!(e.message.contains(&format!("'{name}'")), "{what}: {e}");
    }
}

#[test]
fn inert_mode_describes_calls_without_resolving_them() {
    // os.system('echo pwned') becomes data naming the call.
    let v = inert(b"cos\nsystem\n(S'echo pwned'\ntR.").unwrap();
    let o = Inert::from_value(&v).unwrap();
    assert_eq!((o.module.as_str(), o.name.as_str()), ("os", "system"));
    assert_eq!(repr(&o.args), "('echo pwned',)");
    // Every corpus entry either decodes to inert data or fails cleanly.
    for (what, data, _) in corpus() {
        match inert(&data) {
            Ok(v) => assert!(!repr(&v).is_empty(), "{what}"),
            Err(e) => assert!(
                matches!(
                    e.kind,
                    ErrorKind::Unpickling | ErrorKind::Value | ErrorKind::Type
                ),
                "{what}: {e}"
            ),
        }
    }
    // getattr only ever serves getattr(cls, '__new__') of an allowed class and
    // getattr(Outer, 'Inner'), the global `Outer.Inner` (how protocols 0-3 name nested classes,
    // which needs its own consent); inert mode keeps the latter as that inert global and any
    // other use as a description, never resolving it.
    let v = inert(b"cbuiltins\ngetattr\n(cos\nsystem\nS'x'\ntR.").unwrap();
    assert_eq!(repr(&v), "os.system.x");
    let v = inert(b"cbuiltins\ngetattr\n(cbuiltins\ndict\nS'fromkeys'\ntR.").unwrap();
    assert_eq!(repr(&v), "builtins.getattr(builtins.dict, 'fromkeys')");
    let v = inert(b"cbuiltins\ngetattr\n(cos\nsystem\nS'no such'\ntR.").unwrap();
    assert_eq!(repr(&v), "builtins.getattr(os.system, 'no such')");
    // Calling what it returns is an inert call of that description.
    let v = inert(b"cbuiltins\ngetattr\n(cos\nsystem\nS'x'\ntR(S'id'\ntR.").unwrap();
    assert_eq!(repr(&v), "os.system.x('id')");
    // Not allowed, it is refused by its nested name.
    let e = loads(
        b"cbuiltins\ngetattr\n(cos\nsystem\nS'x'\ntR.",
        &Registry::default(),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.message.contains("forbidden"), "{e}");
    let e = loads(
        b"cbuiltins\ngetattr\n(cbuiltins\ndict\nS'fromkeys'\ntR.",
        &Registry::default(),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.message.contains("getattr"), "{e}");
}

#[test]
fn extension_codes_go_through_the_registry() {
    // unregistered code: ValueError as in CPython
    check(
        b"\x80\x02\x82\x01)R.",
        ErrorKind::Value,
        "unregistered extension code 1",
    );
    check(
        b"\x80\x02\x84\x00\x00\x00\x00.",
        ErrorKind::Unpickling,
        "EXT specifies code <= 0",
    );
    check(
        b"\x80\x02\x84\xff\xff\xff\xff.",
        ErrorKind::Unpickling,
        "EXT specifies code <= 0",
    );
    // a code registered for os.system is still refused by name
    let mut reg = Registry::default();
    reg.add_extension("os", "system", 1).unwrap();
    reg.add_extension("builtins", "complex", 0x1234).unwrap();
    let e = loads(
        b"\x80\x02\x82\x01(S'id'\ntR.",
        &reg,
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.message.contains("'os.system'"), "{e}");
    let v = loads(
        b"\x80\x02\x83\x34\x12G?\xf0\x00\x00\x00\x00\x00\x00K\x02\x86R.",
        &reg,
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(repr(&v), "(1+2j)");
}

#[test]
fn memo_and_stack_tricks() {
    use ErrorKind::*;
    check(b"h\x05.", Unpickling, "Memo value not found at index 5");
    check(b"g7\n.", Unpickling, "Memo value not found at index 7");
    check(b"j\xff\xff\xff\xff.", Unpickling, "Memo value not found");
    check(b"q\x00.", Unpickling, "unpickling stack underflow");
    check(b"(q\x00.", Unpickling, "unpickling stack underflow");
    check(b"p-1\n.", Value, "negative PUT argument");
    check(
        b"K\x01r\xff\xff\xff\xffj\xff\xff\xff\xff0j\x00\x00\x00\x00.",
        Unpickling,
        "Memo value not found at index 0",
    );
    check(b"a.", Unpickling, "unpickling stack underflow");
    check(
        b"K\x01K\x02a.",
        Unpickling,
        "APPEND/APPENDS target is not a list",
    );
    check(b"(.", Unpickling, "unpickling stack underflow");
    check(b"K\x01(\x85.", Unpickling, "unpickling stack underflow");
    check(b"}(K\x01u.", Unpickling, "odd number of items for SETITEMS");
    check(b"(K\x01d.", Unpickling, "odd number of items for DICT");
    check(b"e.", Unpickling, "could not find MARK");
    check(b"0.", Unpickling, "unpickling stack underflow");
    check(b"K\x01K\x02b.", Unpickling, "BUILD target is not an object");
    // recursive structures: refused clearly
    check(b"]q\x00h\x00a.", Unpickling, "recursive");
    check(b"}q\x00K\x01h\x00s.", Unpickling, "recursive");
    check(b"]q\x00h\x00\x85q\x01a.", Unpickling, "recursive");
    // unhashable keys
    check(b"}]K\x01s.", Type, "unhashable type: 'list'");
    check(b"\x8f(]\x90.", Type, "unhashable type: 'list'");
    check(b"](}]K\x01se0N.", Type, "unhashable type: 'list'");
    check(b"](}]K\x01se.", Type, "unhashable type: 'list'");
    // a list shared (not recursive) is fine and stays shared
    let v = strict(b"]q\x00h\x00h\x00\x86.").unwrap();
    let cellar_value::Value::Tuple(t) = &v else {
        panic!()
    };
    assert_eq!(t[0].ptr_id(), t[1].ptr_id());
    // mutation through the memo after use is seen everywhere, as in CPython
    let v = strict(b"]q\x00\x85h\x00K\x07a0.").unwrap();
    assert_eq!(repr(&v), "([7],)");
}

#[test]
fn lying_frames_and_lengths() {
    use ErrorKind::*;
    // frame longer than the data
    check(
        b"\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00N.",
        Unpickling,
        "pickle data was truncated",
    );
    check(
        b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xffN.",
        Unpickling,
        "pickle data was truncated",
    );
    // an opcode argument straddling the frame end (pickle.py rejects it)
    check(
        b"\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00J\x01\x00\x00\x00.",
        Unpickling,
        "pickle exhausted before end of frame",
    );
    check(
        b"\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00\x8c\x05abcde.",
        Unpickling,
        "pickle exhausted before end of frame",
    );
    // a text line straddling the frame end
    check(
        b"\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00I12\n.",
        Unpickling,
        "pickle exhausted before end of frame",
    );
    // a new frame before the end of the current one
    check(
        b"\x80\x04\x95\x0a\x00\x00\x00\x00\x00\x00\x00\x95\x01\x00\x00\x00\x00\x00\x00\x00N.",
        Unpickling,
        "beginning of a new frame before end of current frame",
    );
    // a frame that ends exactly at an opcode boundary is fine, and so is reading past it
    let v = strict(b"\x80\x04\x95\x01\x00\x00\x00\x00\x00\x00\x00N.").unwrap();
    assert!(matches!(v, cellar_value::Value::None));
    // huge claimed lengths fail at once, without allocating
    check(
        b"\x8b\xff\xff\xff\x7f\x00.",
        Unpickling,
        "pickle data was truncated",
    );
    check(
        b"\x8b\xff\xff\xff\xff.",
        Unpickling,
        "LONG pickle has negative byte count",
    );
    check(
        b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f.",
        Unpickling,
        "pickle data was truncated",
    );
    check(
        b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff.",
        Unpickling,
        "pickle data was truncated",
    );
    check(
        b"\x8d\xff\xff\xff\xff\xff\xff\xff\x7f.",
        Unpickling,
        "pickle data was truncated",
    );
    check(
        b"\x96\x00\x00\x00\x00\x01\x00\x00\x00.",
        Unpickling,
        "pickle data was truncated",
    );
    check(
        b"X\xff\xff\xff\xff.",
        Unpickling,
        "pickle data was truncated",
    );
    check(
        b"B\xff\xff\xff\xff.",
        Unpickling,
        "pickle data was truncated",
    );
    check(
        b"T\xff\xff\xff\xff.",
        Unpickling,
        "BINSTRING pickle has negative byte count",
    );
    check(
        b"T\xff\xff\xff\x7f.",
        Unpickling,
        "pickle data was truncated",
    );
}

#[test]
fn depth_and_mark_bombs_fail_fast() {
    // 10^6 MARKs
    let mut d = vec![b'('; 1_000_000];
    d.push(b'.');
    let t = Instant::now();
    check(&d, ErrorKind::Unpickling, "too many nested MARKs");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // 10^6 MARK / POP_MARK pairs: no nesting, finishes quickly
    let mut d = b"(1".repeat(1_000_000);
    d.extend_from_slice(b"N.");
    let t = Instant::now();
    assert!(matches!(strict(&d).unwrap(), Value::None));
    assert!(t.elapsed() < Duration::from_secs(1));
    // 10^6 nested tuples via TUPLE1
    let mut d = b"\x80\x02N".to_vec();
    d.resize(d.len() + 1_000_000, 0x85);
    d.push(b'.');
    check(&d, ErrorKind::Unpickling, "maximum nesting depth exceeded");
    // 10^6 nested lists via EMPTY_LIST ... APPEND
    let mut d = vec![b']'; 1_000_000];
    d.resize(d.len() + 999_999, b'a');
    d.push(b'.');
    let t = Instant::now();
    check(&d, ErrorKind::Unpickling, "maximum nesting depth exceeded");
    assert!(t.elapsed() < Duration::from_secs(2));
    // within the limit it loads (and drops) fine
    let mut d = vec![b']'; 1500];
    d.resize(d.len() + 1499, b'a');
    d.push(b'.');
    strict(&d).unwrap();
}

#[test]
fn amplification_is_bounded_by_max_bytes() {
    // A 10,000-item list copied into a new set 20,000 times (4 bytes each).
    let mut d = b"\x80\x04]\x94(".to_vec();
    for i in 0..10_000u32 {
        d.push(b'J');
        d.extend_from_slice(&i.to_le_bytes());
    }
    d.extend_from_slice(b"e\x8c\x08builtins\x8c\x03set\x93\x94");
    for _ in 0..20_000 {
        d.extend_from_slice(b"h\x01h\x00\x85R0");
    }
    d.extend_from_slice(b"N.");
    let t = Instant::now();
    check(&d, ErrorKind::Unpickling, "memory limit");
    assert!(t.elapsed() < Duration::from_secs(2));
    // an explicit max_bytes applies to plain payloads too
    let big = dumps(&Value::bytes(&vec![7u8; 100_000]), 5, &Registry::default()).unwrap();
    let opts = LoadOptions {
        max_bytes: Some(50_000),
        ..LoadOptions::default()
    };
    let e = loads(&big, &Registry::default(), &opts).unwrap_err();
    assert!(e.message.contains("max_bytes = 50000"), "{e}");
}

#[test]
fn malformed_input_errors() {
    use ErrorKind::*;
    let e = err(b"");
    assert_eq!((e.kind, e.message.as_str()), (Eof, "Ran out of input"));
    check(b"\x80\x06N.", Value, "unsupported pickle protocol: 6");
    // No opcode where one is expected: EOFError, as CPython raises it.
    check(b"N", ErrorKind::Eof, "Ran out of input");
    check(b"J\x01\x00", Unpickling, "pickle data was truncated");
    check(b"I12", Unpickling, "pickle data was truncated");
    check(b"\xff", Unpickling, "invalid load key, '\\xff'.");
    check(b"z", Unpickling, "invalid load key, 'z'.");
    check(b"Iabc\n.", Value, "invalid literal for int()");
    check(b"Fx\n.", Value, "could not convert string to float");
    check(
        b"Sabc\n.",
        Unpickling,
        "the STRING opcode argument must be quoted",
    );
    check(b"S'\\x4'\n.", Value, "invalid \\x escape");
    check(b"X\x01\x00\x00\x00\xff.", UnicodeDecode, "utf-8");
    check(b"V\\u12\n.", UnicodeDecode, "truncated");
    check(
        b"U\x01\xe9.",
        UnicodeDecode,
        "'ascii' codec can't decode byte 0xe9",
    );
    let digits = "9".repeat(4301);
    check(
        format!("L{digits}L\n.").as_bytes(),
        Value,
        "Exceeds the limit (4300 digits)",
    );
    check(b"\x80\x04\x8c\x01a\x8c\x01b\x93.", Unpickling, "'a.b'");
    check(
        b"\x80\x04K\x01\x8c\x01b\x93.",
        Unpickling,
        "STACK_GLOBAL requires str",
    );
    check(
        b"P1\n.",
        Unpickling,
        "no persistent_load function was specified",
    );
    check(
        b"NQ.",
        Unpickling,
        "no persistent_load function was specified",
    );
    check(
        b"\x80\x05\x97.",
        Unpickling,
        "no *buffers* argument was given",
    );
    check(
        b"cbuiltins\ngetattr\n.",
        Unpickling,
        "cannot be loaded as a value",
    );
    check(
        b"cbuiltins\nEllipsis\n)R.",
        Unpickling,
        "calling builtins.Ellipsis is forbidden",
    );
    check(
        b"cbuiltins\ncomplex\n(S'1+2j'\ntR.",
        Unpickling,
        "unsupported arguments for builtins.complex",
    );
    check(
        b"c_codecs\nencode\n(V\\u0100\nVlatin1\ntR.",
        Unpickling,
        "unsupported arguments",
    );
}

/// Mutations of valid pickles and raw random bytes: every outcome is a value or a typed
/// error; a fixed time budget.
#[test]
fn random_inputs_never_panic() {
    let mut gen = Gen::new(0xBAD_F00D);
    let mut rng = Rng(0x0123_4567);
    let reg = Registry::default();
    let inert_opts = LoadOptions {
        inert: true,
        ..LoadOptions::default()
    };
    let start = Instant::now();
    let mut runs = 0u64;
    let limit = budget(3);
    while start.elapsed() < limit {
        let v = gen.value(3);
        let proto = rng.below(6) as u8;
        let mut data = dumps(&v, proto, &reg).expect("dumps");
        match rng.below(5) {
            0 => {
                let n = rng.below(data.len() as u64) as usize;
                data.truncate(n);
            }
            1 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(data.len() as u64) as usize;
                    data[i] = rng.next() as u8;
                }
            }
            2 => {
                let i = rng.below(data.len() as u64) as usize;
                let op = [
                    b'(', b'0', b'1', b'2', b'a', b'e', b's', b'u', b'b', b'R', b'\x81', b'\x85',
                    b'\x94', b'h', b'\x95', b'\x90', b'\x91', b't',
                ][rng.below(18) as usize];
                data.insert(i, op);
            }
            3 => {
                data = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            }
            _ => {
                let i = rng.below(data.len() as u64) as usize;
                let j = rng.below(data.len() as u64) as usize;
                let (a, b) = (i.min(j), i.max(j));
                let chunk = data[a..b].to_vec();
                data.splice(a..a, chunk);
            }
        }
        let _ = loads(&data, &reg, &LoadOptions::default());
        let _ = loads(&data, &reg, &inert_opts);
        runs += 1;
    }
    eprintln!("{runs} random inputs in {limit:?}");
    assert!(runs > 100);
}

/// The fuzz target's property (fuzz/fuzz_targets/pickle_loads.rs) on mutated inputs, so it
/// runs in the ordinary test suite too.
#[test]
fn fuzz_property_on_mutations() {
    let mut gen = Gen::new(0xF022);
    let mut rng = Rng(0xFEED);
    let reg = Registry::default();
    let inert_opts = LoadOptions {
        inert: true,
        ..LoadOptions::default()
    };
    let start = Instant::now();
    let mut loaded = 0;
    let limit = budget(2);
    while start.elapsed() < limit {
        let v = gen.value(3);
        let mut data = dumps(&v, rng.below(6) as u8, &reg).expect("dumps");
        let i = rng.below(data.len() as u64) as usize;
        data[i] = rng.next() as u8;
        let strict = loads(&data, &reg, &LoadOptions::default());
        let loose = loads(&data, &reg, &inert_opts);
        if let Ok(v) = &strict {
            assert!(loose.as_ref().expect("inert accepts").same(v));
        }
        if let Ok(v) = loose {
            loaded += 1;
            // (see the fuzz target: fix_imports maps inert Python 2 names below protocol 3)
            let has_inert = repr(&v).contains("cellar.pickle.Inert");
            for protocol in 0..=5u8 {
                if let Ok(bytes) = dumps(&v, protocol, &reg) {
                    let exact = protocol >= 3 || !has_inert;
                    match loads(&bytes, &reg, &inert_opts) {
                        Ok(back) => {
                            if exact && protocol >= 1 {
                                assert!(
                                    back.same(&v),
                                    "p{protocol}: {} vs {}",
                                    repr(&back),
                                    repr(&v)
                                );
                            }
                        }
                        Err(e) => assert!(!exact, "p{protocol}: own output refused: {e}"),
                    }
                }
            }
        }
    }
    assert!(loaded > 10, "{loaded}");
}

#[test]
fn consent_for_a_basic_type_or_marker_serves_what_its_rules_refuse() {
    // builtins.set as a value: refused by default, the inert global with the caller's consent.
    let data = b"\x80\x02cbuiltins\nset\n.";
    assert!(strict(data).is_err());
    let mut reg = Registry::default();
    reg.allow("builtins", "set");
    let v = loads(data, &reg, &LoadOptions::default()).unwrap();
    assert_eq!(repr(&v), "builtins.set");
    // Its own rules still come first: set([1]) is a set, with or without the consent.
    let data = b"\x80\x02cbuiltins\nset\n]K\x01a\x85R.";
    assert_eq!(
        repr(&loads(data, &reg, &LoadOptions::default()).unwrap()),
        "{1}"
    );
}

#[test]
fn getattr_of_an_allowed_class_names_its_nested_global() {
    // getattr(m.Outer, 'Inner')() at protocol 2: the global m.Outer.Inner, which needs its own
    // consent (Outer's is not enough).
    let data = b"\x80\x02cbuiltins\ngetattr\ncm\nOuter\nX\x05\x00\x00\x00Inner\x86R)R.";
    let mut reg = Registry::default();
    reg.allow("m", "Outer");
    let e = loads(data, &reg, &LoadOptions::default()).unwrap_err();
    assert!(e.message.contains("'m.Outer.Inner' is forbidden"), "{e}");
    reg.allow("m", "Outer.Inner");
    let v = loads(data, &reg, &LoadOptions::default()).unwrap();
    let o = Inert::from_value(&v).unwrap();
    assert_eq!((o.module.as_str(), o.name.as_str()), ("m", "Outer.Inner"));
}

#[test]
fn reduce_on_a_non_callable_or_with_non_tuple_args_is_a_type_error() {
    // CPython: TypeError (test_bad_reduce).
    assert_eq!(err(b"N)R.").kind, ErrorKind::Type);
    assert_eq!(inert(b"N)R.").unwrap_err().kind, ErrorKind::Type);
    let mut reg = Registry::default();
    reg.allow("builtins", "int");
    let e = loads(b"cbuiltins\nint\nNR.", &reg, &LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Type, "{e}");
}
