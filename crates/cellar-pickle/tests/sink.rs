//! The decoder core driven through the public [`Sink`] trait by a sink that is not the `Value`
//! one: a log of every call, with handles that are plain numbers. Checks what the core owns
//! (opcodes, memo of handles, marks, limits, the policy) independently of the `Value` sink,
//! and that pattern markers and basic-type globals never reach a sink as values.

use cellar_pickle::policy::Known;
use cellar_pickle::{
    decode, loads, Buffer, Construct, DecodeErrors, DecodeOptions, ErrorKind, GlobalRef,
    LoadOptions, Registry, Shape, Sink, StringEncoding, UnpicklingError,
};
use cellar_value::PyStr;

/// What the log sink made: enough to answer the core's shape questions.
#[derive(Clone, Debug)]
enum Made {
    Scalar(Shape),
    Str(PyStr),
    Bytes(Vec<u8>),
    Seq(Shape, Vec<u32>),
    Other,
}

#[derive(Default)]
struct LogSink {
    made: Vec<Made>,
    log: Vec<String>,
    allow: Vec<(String, String)>,
}

impl LogSink {
    fn make(&mut self, m: Made, what: String) -> Result<u32, UnpicklingError> {
        self.made.push(m);
        self.log.push(what);
        Ok(self.made.len() as u32 - 1)
    }
}

type R<T> = Result<T, UnpicklingError>;

impl Sink for LogSink {
    type Handle = u32;
    type Global = ();
    type Output = Vec<String>;
    type Error = UnpicklingError;

    fn resolve(&mut self, module: &str, name: &str) -> R<Option<()>> {
        Ok(self
            .allow
            .iter()
            .any(|(m, n)| m == module && n == name)
            .then_some(()))
    }
    fn extension(&self, _code: i32) -> Option<(String, String)> {
        None
    }
    fn none(&mut self) -> R<u32> {
        self.make(Made::Scalar(Shape::None), "None".into())
    }
    fn bool(&mut self, v: bool) -> R<u32> {
        self.make(Made::Scalar(Shape::Bool(v)), format!("{v}"))
    }
    fn int(&mut self, v: i64) -> R<u32> {
        self.make(Made::Scalar(Shape::Int(Some(v as f64))), format!("int {v}"))
    }
    fn big_int(&mut self, le: &[u8]) -> R<u32> {
        self.make(Made::Scalar(Shape::Int(None)), format!("bigint {le:?}"))
    }
    fn float(&mut self, v: f64) -> R<u32> {
        self.make(Made::Scalar(Shape::Float(v)), format!("float {v}"))
    }
    fn complex(&mut self, re: f64, im: f64) -> R<u32> {
        self.make(Made::Other, format!("complex {re} {im}"))
    }
    fn str_utf8(&mut self, b: &[u8]) -> R<u32> {
        let s = PyStr::from_utf8_surrogatepass(b).map_err(|e| UnpicklingError {
            kind: ErrorKind::UnicodeDecode,
            message: e.to_string(),
            offset: 0,
        })?;
        self.str(s)
    }
    fn str(&mut self, s: PyStr) -> R<u32> {
        let what = format!("str {}", s.as_str().unwrap_or("?"));
        self.make(Made::Str(s), what)
    }
    fn py2_string(&mut self, raw: &[u8], _: StringEncoding, _: DecodeErrors) -> R<u32> {
        self.bytes(raw)
    }
    fn bytes(&mut self, b: &[u8]) -> R<u32> {
        self.make(Made::Bytes(b.to_vec()), format!("bytes {b:?}"))
    }
    fn bytearray(&mut self, b: &[u8]) -> R<u32> {
        self.make(Made::Bytes(b.to_vec()), format!("bytearray {b:?}"))
    }
    fn constant(&mut self, which: Known) -> R<u32> {
        self.make(Made::Other, format!("constant {which:?}"))
    }
    fn slice(&mut self, a: u32, b: u32, c: u32) -> R<u32> {
        self.make(Made::Other, format!("slice {a} {b} {c}"))
    }
    fn tuple(&mut self, items: Vec<u32>) -> R<u32> {
        let what = format!("tuple {items:?}");
        self.make(Made::Seq(Shape::Tuple(items.len()), items), what)
    }
    fn list(&mut self, items: Vec<u32>) -> R<u32> {
        let what = format!("list {items:?}");
        self.make(Made::Seq(Shape::List, items), what)
    }
    fn dict(&mut self, kv: Vec<u32>) -> R<u32> {
        let what = format!("dict {kv:?}");
        self.make(Made::Seq(Shape::Dict(kv.len() / 2), kv), what)
    }
    fn set(&mut self, items: Vec<u32>) -> R<u32> {
        let what = format!("set {items:?}");
        self.make(Made::Seq(Shape::Set, items), what)
    }
    fn frozenset(&mut self, items: Vec<u32>) -> R<u32> {
        let what = format!("frozenset {items:?}");
        self.make(Made::Seq(Shape::FrozenSet, items), what)
    }
    fn append(&mut self, target: &u32, items: &mut Vec<u32>) -> R<bool> {
        self.log.push(format!("append {target} {items:?}"));
        Ok(matches!(
            &self.made[*target as usize],
            Made::Seq(Shape::List, _)
        ))
    }
    fn set_items(&mut self, target: &u32, kv: &mut Vec<u32>) -> R<bool> {
        self.log.push(format!("set_items {target} {kv:?}"));
        Ok(matches!(
            &self.made[*target as usize],
            Made::Seq(Shape::Dict(_), _)
        ))
    }
    fn add_items(&mut self, target: &u32, items: &mut Vec<u32>) -> R<bool> {
        self.log.push(format!("add_items {target} {items:?}"));
        Ok(matches!(
            &self.made[*target as usize],
            Made::Seq(Shape::Set, _)
        ))
    }
    fn shape(&self, h: &u32) -> Shape {
        match &self.made[*h as usize] {
            Made::Scalar(s) | Made::Seq(s, _) => *s,
            Made::Str(_) => Shape::Str,
            Made::Bytes(_) => Shape::Bytes,
            Made::Other => Shape::Other,
        }
    }
    fn items(&self, h: &u32) -> Option<Vec<u32>> {
        match &self.made[*h as usize] {
            Made::Seq(_, items) => Some(items.clone()),
            _ => None,
        }
    }
    fn text(&self, h: &u32) -> Option<PyStr> {
        match &self.made[*h as usize] {
            Made::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn data(&self, h: &u32) -> Option<Vec<u8>> {
        match &self.made[*h as usize] {
            Made::Bytes(b) => Some(b.clone()),
            _ => None,
        }
    }
    fn inert_name(&self, _h: &u32) -> Option<(String, String)> {
        None
    }
    fn global(&mut self, g: GlobalRef<'_, ()>) -> R<u32> {
        let what = format!(
            "global {}.{} allowed={}",
            g.module,
            g.name,
            g.allowed.is_some()
        );
        self.make(Made::Other, what)
    }
    fn object(
        &mut self,
        cls: GlobalRef<'_, ()>,
        construct: Construct,
        args: Vec<u32>,
        kwargs: Option<u32>,
    ) -> R<u32> {
        let what = format!(
            "object {}.{} {} {args:?} {kwargs:?}",
            cls.module,
            cls.name,
            construct.as_str()
        );
        self.make(Made::Other, what)
    }
    fn reconstruct(
        &mut self,
        cls: GlobalRef<'_, ()>,
        base: GlobalRef<'_, ()>,
        state: u32,
    ) -> R<u32> {
        let what = format!(
            "reconstruct {}.{} {}.{} {state}",
            cls.module, cls.name, base.module, base.name
        );
        self.make(Made::Other, what)
    }
    fn range(&mut self, _g: GlobalRef<'_, ()>, args: Vec<u32>) -> R<u32> {
        self.make(Made::Other, format!("range {args:?}"))
    }
    fn inert_call(&mut self, _g: GlobalRef<'_, ()>, callee: u32, args: Vec<u32>) -> R<u32> {
        self.make(Made::Other, format!("call {callee} {args:?}"))
    }
    fn build(&mut self, target: &u32, state: u32) -> R<bool> {
        self.log.push(format!("build {target} {state}"));
        Ok(matches!(&self.made[*target as usize], Made::Other))
    }
    fn persistent_load(&mut self, _pid: u32) -> R<Option<u32>> {
        Ok(None)
    }
    fn next_buffer(&mut self) -> R<Buffer<u32>> {
        Ok(Buffer::NotGiven)
    }
    fn readonly(&mut self, h: u32) -> R<u32> {
        Ok(h)
    }
    fn finish(&mut self, root: u32) -> R<Vec<String>> {
        self.log.push(format!("finish {root}"));
        Ok(std::mem::take(&mut self.log))
    }
}

fn run(data: &[u8], allow: &[(&str, &str)]) -> Result<Vec<String>, UnpicklingError> {
    let mut sink = LogSink {
        allow: allow
            .iter()
            .map(|(m, n)| (m.to_string(), n.to_string()))
            .collect(),
        ..LogSink::default()
    };
    decode(data, &mut sink, &DecodeOptions::default()).map(|(log, _)| log)
}

#[test]
fn memo_holds_sink_handles_and_items_reach_memoized_containers() {
    // l = []; l is memo 0; [1, l] then APPEND 2 onto l through the memo.
    let data = b"\x80\x02]q\x00(K\x01h\x00eh\x00K\x02a.";
    let log = run(data, &[]).expect("decodes");
    assert_eq!(
        log,
        [
            "list []",
            "int 1",
            "append 0 [1, 0]",
            "int 2",
            "append 0 [2]",
            "finish 0"
        ]
    );
}

#[test]
fn dict_of_scalars() {
    let v = cellar_value::parse("{'a': 1, 'b': (2, 3.5)}").expect("literal");
    let data = cellar_pickle::dumps(&v, 4, &Registry::default()).expect("dumps");
    let log = run(&data, &[]).expect("decodes");
    assert!(log.iter().any(|l| l.starts_with("set_items")), "{log:?}");
    assert!(log.iter().any(|l| l == "float 3.5"), "{log:?}");
}

#[test]
fn allowed_class_newobj_and_build_go_to_the_sink() {
    let data = b"\x80\x02cm\nPoint\nq\x00)\x81}X\x01\x00\x00\x00xK\x01sb.";
    let log = run(data, &[("m", "Point")]).expect("decodes");
    assert_eq!(log[0], "tuple []");
    assert_eq!(log[1], "object m.Point newobj [] None");
    assert!(log.contains(&"build 1 2".to_string()), "{log:?}");
    // Not allowed: refused by the core with the policy's message, the sink never asked to
    // make anything for it.
    let err = run(data, &[]).unwrap_err();
    assert!(
        err.message.contains("global 'm.Point' is forbidden"),
        "{err}"
    );
}

#[test]
fn markers_and_basic_globals_never_reach_the_sink_as_values() {
    for (data, what) in [
        (&b"ccopyreg\n__newobj__\n."[..], "copyreg.__newobj__"),
        (b"]cbuiltins\ngetattr\na.", "builtins.getattr"),
        (b"\x80\x02cbuiltins\nbytearray\n\x85.", "builtins.bytearray"),
        (b"cfunctools\npartial\n}b.", "functools.partial"),
    ] {
        let err = run(data, &[]).unwrap_err();
        assert!(
            err.message.contains(what) || err.message.contains("BUILD target is not an object"),
            "{what}: {err}"
        );
    }
    // BUILD on a global (the class itself) is refused by the core before any sink call.
    let err = run(b"\x80\x02cm\nPoint\n}b.", &[("m", "Point")]).unwrap_err();
    assert_eq!(err.message, "BUILD target is not an object");
}

#[test]
fn limits_are_the_cores() {
    // max_bytes charged for memo slots whatever the sink: a sparse memo index costs 48 bytes.
    let data = b"\x80\x02Nr\xff\xff\x0f\x00.";
    let mut sink = LogSink::default();
    let opts = DecodeOptions {
        max_bytes: Some(40),
        ..DecodeOptions::default()
    };
    let err = decode(data, &mut sink, &opts).map(|_| ()).unwrap_err();
    assert!(err.message.contains("max_bytes"), "{err}");
    // Nesting: 3 levels with max_depth 2.
    let mut sink = LogSink::default();
    let opts = DecodeOptions {
        max_depth: 2,
        ..DecodeOptions::default()
    };
    let err = decode(b"]]]aa.", &mut sink, &opts).map(|_| ()).unwrap_err();
    assert!(err.message.contains("max_depth = 2"), "{err}");
}

#[test]
fn self_containing_values_as_keys_are_clear_errors() {
    let reg = Registry::default();
    let opts = LoadOptions::default();
    // l = []; l.append(l); {l: 1}: a list as a key, even one that contains itself.
    let e = loads(b"\x80\x02]q\x00h\x00a}h\x00K\x01s.", &reg, &opts).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Type, "{e}");
    // t = (l,) with l containing t; {t} through a set: never a recursive hash.
    let e = loads(
        b"\x80\x04]q\x00h\x00\x85q\x01h\x00h\x01a\x8f(h\x01\x90.",
        &reg,
        &opts,
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Type, "{e}");
    assert!(e.message.contains("unhashable"), "{e}");
    // A self-containing list as a value is refused (cellar values cannot contain themselves).
    let e = loads(b"\x80\x02]q\x00h\x00a.", &reg, &opts).unwrap_err();
    assert!(e.message.contains("recursive structure"), "{e}");
}
