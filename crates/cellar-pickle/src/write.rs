//! The encoder: pickle.py's `Pickler.save` for cellar values, protocols 0-5, with framing at
//! protocol 4+ (64 KiB frames, large str/bytes written outside frames), memoization of shared
//! objects, CPython's globals for complex/set/frozenset/bytearray/bytes at each protocol,
//! inert objects, registered reducers and extension codes.

use std::collections::HashMap;

use cellar_value::{float_repr, Int, PyStr, Value};

use crate::compat;
use crate::error::PicklingError;
use crate::inert::{Construct, Inert};
use crate::ops::*;
use crate::registry::Registry;
use crate::text;

/// pickle.py's `_FRAME_SIZE_TARGET`.
const FRAME_TARGET: usize = 64 * 1024;
/// pickle.py's `_FRAME_SIZE_MIN`.
const FRAME_MIN: usize = 4;
/// pickle.py's `_BATCHSIZE`.
const BATCH: usize = 1000;
/// Nesting limit of the encoder (CPython's pickler stops near 1000 with RecursionError).
pub const MAX_DUMP_DEPTH: usize = 1500;

type Res<T> = Result<T, PicklingError>;

/// Memo keys are allocation addresses chosen by our own allocator, not by the input, so a
/// multiplicative hash is enough (std's SipHash showed up in profiles).
#[derive(Default)]
struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = ((n as u64) >> 3)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

type AddrMap = HashMap<usize, u32, std::hash::BuildHasherDefault<AddrHasher>>;

pub(crate) struct Writer<'r> {
    out: Vec<u8>,
    proto: u8,
    reg: &'r Registry,
    memo: AddrMap,
    glob_memo: HashMap<(String, String), u32>,
    memo_len: u32,
    frame_start: Option<usize>,
    depth: usize,
    /// Values created during the dump (reducer results, inert encodings) kept alive so their
    /// addresses are not reused while they are memo keys.
    keep: Vec<Value>,
}

pub(crate) fn dumps(value: &Value, protocol: u8, reg: &Registry) -> Res<Vec<u8>> {
    if protocol > 5 {
        return Err(PicklingError::new(format!(
            "pickle protocol must be <= 5 (got {protocol})"
        )));
    }
    let mut w = Writer {
        out: Vec::with_capacity(256),
        proto: protocol,
        reg,
        memo: AddrMap::default(),
        glob_memo: HashMap::new(),
        memo_len: 0,
        frame_start: None,
        depth: 0,
        keep: Vec::new(),
    };
    if protocol >= 2 {
        w.out.push(PROTO);
        w.out.push(protocol);
    }
    w.start_frame();
    w.save(value)?;
    w.out.push(STOP);
    w.end_frame();
    Ok(w.out)
}

impl Writer<'_> {
    // -----------------------------------------------------------------------------------------
    // framing

    fn start_frame(&mut self) {
        if self.proto >= 4 {
            self.frame_start = Some(self.out.len());
            self.out.extend_from_slice(&[0u8; 9]);
        }
    }

    fn end_frame(&mut self) {
        if let Some(s) = self.frame_start.take() {
            let len = self.out.len() - s - 9;
            if len >= FRAME_MIN {
                self.out[s] = FRAME;
                self.out[s + 1..s + 9].copy_from_slice(&(len as u64).to_le_bytes());
            } else {
                self.out.drain(s..s + 9);
            }
        }
    }

    fn maybe_commit(&mut self) {
        if let Some(s) = self.frame_start {
            if self.out.len() - s - 9 >= FRAME_TARGET {
                self.end_frame();
                self.start_frame();
            }
        }
    }

    /// pickle.py's `_write_large_bytes`: outside any frame.
    fn write_large(&mut self, header: &[u8], payload: &[u8]) {
        let framing = self.frame_start.is_some();
        if framing {
            self.end_frame();
        }
        self.out.extend_from_slice(header);
        self.out.extend_from_slice(payload);
        if framing {
            self.start_frame();
        }
    }

    // -----------------------------------------------------------------------------------------
    // memo

    fn put(&mut self) -> u32 {
        let idx = self.memo_len;
        self.memo_len += 1;
        if self.proto >= 4 {
            self.out.push(MEMOIZE);
        } else if self.proto >= 1 {
            if idx < 256 {
                self.out.extend_from_slice(&[BINPUT, idx as u8]);
            } else {
                self.out.push(LONG_BINPUT);
                self.out.extend_from_slice(&idx.to_le_bytes());
            }
        } else {
            self.out.extend_from_slice(format!("p{idx}\n").as_bytes());
        }
        idx
    }

    fn get(&mut self, idx: u32) {
        if self.proto >= 1 {
            if idx < 256 {
                self.out.extend_from_slice(&[BINGET, idx as u8]);
            } else {
                self.out.push(LONG_BINGET);
                self.out.extend_from_slice(&idx.to_le_bytes());
            }
        } else {
            self.out.extend_from_slice(format!("g{idx}\n").as_bytes());
        }
    }

    fn memoize(&mut self, v: &Value) {
        if let Some(id) = shared_id(v) {
            let idx = self.put();
            self.memo.insert(id, idx);
        }
    }

    // -----------------------------------------------------------------------------------------
    // save

    fn save(&mut self, v: &Value) -> Res<()> {
        self.maybe_commit();
        if let Some(id) = shared_id(v) {
            if let Some(&idx) = self.memo.get(&id) {
                self.get(idx);
                return Ok(());
            }
        }
        if !self.reg.reducers.is_empty() && !Inert::is_inert(v) {
            let reducers = self.reg.reducers.clone();
            for r in &reducers {
                if let Some(obj) = r(v) {
                    let ov = obj.to_value();
                    self.keep.push(ov.clone());
                    self.keep.push(v.clone());
                    self.enter()?;
                    self.save_inert(&obj, None)?;
                    self.depth -= 1;
                    // memoize the original value as this object
                    if let Some(id) = shared_id(v) {
                        let idx = self.put();
                        self.memo.insert(id, idx);
                    }
                    return Ok(());
                }
            }
        }
        match v {
            Value::None => self.out.push(NONE),
            Value::Bool(b) => {
                if self.proto >= 2 {
                    self.out.push(if *b { NEWTRUE } else { NEWFALSE });
                } else {
                    self.out
                        .extend_from_slice(if *b { b"I01\n" } else { b"I00\n" });
                }
            }
            Value::Int(i) => self.save_int(i)?,
            Value::Float(f) => {
                if self.proto >= 1 {
                    self.out.push(BINFLOAT);
                    self.out.extend_from_slice(&f.to_be_bytes());
                } else {
                    self.out.push(FLOAT);
                    self.out.extend_from_slice(float_repr(*f).as_bytes());
                    self.out.push(b'\n');
                }
            }
            Value::Complex(re, im) => {
                self.save_global("builtins", "complex")?;
                self.save_tuple_of(&[Value::Float(*re), Value::Float(*im)])?;
                self.out.push(REDUCE);
            }
            Value::Str(s) => {
                self.save_str(s);
                self.memoize(v);
            }
            Value::Bytes(b) => self.save_bytes(v, b)?,
            Value::ByteArray(b) => {
                if self.proto >= 5 {
                    let mut h = vec![BYTEARRAY8];
                    h.extend_from_slice(&(b.len() as u64).to_le_bytes());
                    if b.len() >= FRAME_TARGET {
                        self.write_large(&h, b);
                    } else {
                        self.out.extend_from_slice(&h);
                        self.out.extend_from_slice(b);
                    }
                } else {
                    self.save_global("builtins", "bytearray")?;
                    if b.is_empty() {
                        self.save_tuple_of(&[])?;
                    } else {
                        self.save_tuple_of(&[Value::Bytes(b[..].into())])?;
                    }
                    self.out.push(REDUCE);
                }
                self.memoize(v);
            }
            Value::Object(obj) => {
                self.enter()?;
                self.save_inert(obj, Some(v))?;
                self.depth -= 1;
            }
            Value::Tuple(t) => {
                self.enter()?;
                self.save_tuple_of(t)?;
                self.depth -= 1;
                if !t.is_empty() {
                    self.memoize(v);
                }
            }
            Value::List(items) => {
                self.enter()?;
                if self.proto >= 1 {
                    self.out.push(EMPTY_LIST);
                } else {
                    self.out.extend_from_slice(&[MARK, LIST]);
                }
                self.memoize(v);
                self.appends(items)?;
                self.depth -= 1;
            }
            Value::Dict(d) => {
                self.enter()?;
                if self.proto >= 1 {
                    self.out.push(EMPTY_DICT);
                } else {
                    self.out.extend_from_slice(&[MARK, DICT]);
                }
                self.memoize(v);
                let pairs: Vec<(&Value, &Value)> = d.iter().collect();
                self.setitems(&pairs)?;
                self.depth -= 1;
            }
            Value::Set(s) => {
                self.enter()?;
                if self.proto < 4 {
                    self.save_global("builtins", "set")?;
                    let items: Vec<Value> = s.iter().cloned().collect();
                    self.save_tuple_of(&[Value::list(items)])?;
                    self.out.push(REDUCE);
                    self.memoize(v);
                } else {
                    self.out.push(EMPTY_SET);
                    self.memoize(v);
                    let items: Vec<&Value> = s.iter().collect();
                    for chunk in items.chunks(BATCH) {
                        self.out.push(MARK);
                        for it in chunk {
                            self.save(it)?;
                        }
                        self.out.push(ADDITEMS);
                    }
                }
                self.depth -= 1;
            }
            Value::FrozenSet(s) => {
                self.enter()?;
                if self.proto < 4 {
                    self.save_global("builtins", "frozenset")?;
                    let items: Vec<Value> = s.iter().cloned().collect();
                    self.save_tuple_of(&[Value::list(items)])?;
                    self.out.push(REDUCE);
                } else {
                    self.out.push(MARK);
                    for it in s.iter() {
                        self.save(it)?;
                    }
                    self.out.push(FROZENSET);
                }
                self.memoize(v);
                self.depth -= 1;
            }
            Value::Ellipsis => self.save_global("builtins", "Ellipsis")?,
            Value::StopIteration => self.save_global("builtins", "StopIteration")?,
            Value::Slice(s) => {
                self.enter()?;
                self.save_global("builtins", "slice")?;
                self.save_tuple_of(&[s.start.clone(), s.stop.clone(), s.step.clone()])?;
                self.out.push(REDUCE);
                self.memoize(v);
                self.depth -= 1;
            }
            Value::Code(_) => return Err(PicklingError::new("cannot pickle 'code' object")),
        }
        Ok(())
    }

    fn enter(&mut self) -> Res<()> {
        self.depth += 1;
        if self.depth > MAX_DUMP_DEPTH {
            return Err(PicklingError::new(
                "maximum recursion depth exceeded while pickling an object",
            ));
        }
        Ok(())
    }

    fn save_int(&mut self, i: &Int) -> Res<()> {
        if self.proto >= 1 {
            if let Int::Small(v) = i {
                let v = *v;
                if (0..=0xff).contains(&v) {
                    self.out.extend_from_slice(&[BININT1, v as u8]);
                    return Ok(());
                }
                if (0..=0xffff).contains(&v) {
                    self.out.push(BININT2);
                    self.out.extend_from_slice(&(v as u16).to_le_bytes());
                    return Ok(());
                }
                if (-0x8000_0000..=0x7fff_ffff).contains(&v) {
                    self.out.push(BININT);
                    self.out.extend_from_slice(&(v as i32).to_le_bytes());
                    return Ok(());
                }
            }
        }
        if self.proto >= 2 {
            let b = i.to_bigint();
            let bytes = if b == 0.into() {
                Vec::new()
            } else {
                b.to_signed_bytes_le()
            };
            if bytes.len() < 256 {
                self.out.extend_from_slice(&[LONG1, bytes.len() as u8]);
            } else {
                self.out.push(LONG4);
                let n = u32::try_from(bytes.len())
                    .map_err(|_| PicklingError::new("int too large to pickle"))?;
                self.out.extend_from_slice(&n.to_le_bytes());
            }
            self.out.extend_from_slice(&bytes);
            return Ok(());
        }
        let text = match i {
            Int::Small(v) => v.to_string(),
            Int::Big(b) => {
                if b.bits() > 14_300 {
                    let s = b.to_string();
                    let digits = s.trim_start_matches('-').len();
                    if digits > 4300 {
                        return Err(PicklingError::new(format!(
                            "Exceeds the limit (4300 digits) for integer string conversion; use sys.set_int_max_str_digits() to increase the limit (value has {digits} digits)"
                        )));
                    }
                    s
                } else {
                    b.to_string()
                }
            }
        };
        let small = matches!(i, Int::Small(v) if (-0x8000_0000..=0x7fff_ffff).contains(v));
        if small {
            self.out.push(INT);
            self.out.extend_from_slice(text.as_bytes());
            self.out.push(b'\n');
        } else {
            self.out.push(LONG);
            self.out.extend_from_slice(text.as_bytes());
            self.out.extend_from_slice(b"L\n");
        }
        Ok(())
    }

    fn save_str(&mut self, s: &PyStr) {
        if self.proto == 0 {
            self.out.push(UNICODE);
            text::raw_unicode_escape_encode(s, &mut self.out);
            self.out.push(b'\n');
            return;
        }
        let b = s.as_bytes();
        let n = b.len();
        if n <= 0xff && self.proto >= 4 {
            self.out.extend_from_slice(&[SHORT_BINUNICODE, n as u8]);
            self.out.extend_from_slice(b);
        } else if n > 0xffff_ffff && self.proto >= 4 {
            let mut h = vec![BINUNICODE8];
            h.extend_from_slice(&(n as u64).to_le_bytes());
            self.write_large(&h, b);
        } else {
            let mut h = vec![BINUNICODE];
            h.extend_from_slice(&(n as u32).to_le_bytes());
            if n >= FRAME_TARGET {
                self.write_large(&h, b);
            } else {
                self.out.extend_from_slice(&h);
                self.out.extend_from_slice(b);
            }
        }
    }

    fn save_bytes(&mut self, v: &Value, b: &[u8]) -> Res<()> {
        if self.proto < 3 {
            if b.is_empty() {
                self.save_global("builtins", "bytes")?;
                self.save_tuple_of(&[])?;
            } else {
                self.save_global("_codecs", "encode")?;
                let latin1 = PyStr::from_latin1(b);
                self.save_tuple_of(&[Value::from(latin1), Value::str("latin1")])?;
            }
            self.out.push(REDUCE);
            self.memoize(v);
            return Ok(());
        }
        let n = b.len();
        if n <= 0xff {
            self.out.extend_from_slice(&[SHORT_BINBYTES, n as u8]);
            self.out.extend_from_slice(b);
        } else if n > 0xffff_ffff && self.proto >= 4 {
            let mut h = vec![BINBYTES8];
            h.extend_from_slice(&(n as u64).to_le_bytes());
            self.write_large(&h, b);
        } else {
            let mut h = vec![BINBYTES];
            h.extend_from_slice(&(n as u32).to_le_bytes());
            if n >= FRAME_TARGET {
                self.write_large(&h, b);
            } else {
                self.out.extend_from_slice(&h);
                self.out.extend_from_slice(b);
            }
        }
        self.memoize(v);
        Ok(())
    }

    /// A tuple's opcodes (without memoizing the tuple itself).
    fn save_tuple_of(&mut self, items: &[Value]) -> Res<()> {
        if items.is_empty() {
            if self.proto >= 1 {
                self.out.push(EMPTY_TUPLE);
            } else {
                self.out.extend_from_slice(&[MARK, TUPLE]);
            }
            return Ok(());
        }
        if items.len() <= 3 && self.proto >= 2 {
            for it in items {
                self.save(it)?;
            }
            self.out.push(TUPLE1 + items.len() as u8 - 1);
            return Ok(());
        }
        self.out.push(MARK);
        for it in items {
            self.save(it)?;
        }
        self.out.push(TUPLE);
        Ok(())
    }

    fn appends(&mut self, items: &[Value]) -> Res<()> {
        if self.proto == 0 {
            for it in items {
                self.save(it)?;
                self.out.push(APPEND);
            }
            return Ok(());
        }
        for chunk in items.chunks(BATCH) {
            if chunk.len() == 1 {
                self.save(&chunk[0])?;
                self.out.push(APPEND);
            } else {
                self.out.push(MARK);
                for it in chunk {
                    self.save(it)?;
                }
                self.out.push(APPENDS);
            }
        }
        Ok(())
    }

    fn setitems(&mut self, pairs: &[(&Value, &Value)]) -> Res<()> {
        if self.proto == 0 {
            for (k, v) in pairs {
                self.save(k)?;
                self.save(v)?;
                self.out.push(SETITEM);
            }
            return Ok(());
        }
        for chunk in pairs.chunks(BATCH) {
            if chunk.len() == 1 {
                self.save(chunk[0].0)?;
                self.save(chunk[0].1)?;
                self.out.push(SETITEM);
            } else {
                self.out.push(MARK);
                for (k, v) in chunk {
                    self.save(k)?;
                    self.save(v)?;
                }
                self.out.push(SETITEMS);
            }
        }
        Ok(())
    }

    /// pickle.py's `save_global` for `module.name`.
    fn save_global(&mut self, module: &str, name: &str) -> Res<()> {
        let key = (module.to_owned(), name.to_owned());
        if let Some(&idx) = self.glob_memo.get(&key) {
            self.get(idx);
            return Ok(());
        }
        if self.proto >= 2 {
            if let Some(code) = self.reg.extension_code(module, name) {
                if code <= 0xff {
                    self.out.extend_from_slice(&[EXT1, code as u8]);
                } else if code <= 0xffff {
                    self.out.push(EXT2);
                    self.out.extend_from_slice(&(code as u16).to_le_bytes());
                } else {
                    self.out.push(EXT4);
                    self.out.extend_from_slice(&code.to_le_bytes());
                }
                return Ok(());
            }
        }
        if self.proto >= 4 {
            self.save_str(&PyStr::new(module));
            self.save_str(&PyStr::new(name));
            self.out.push(STACK_GLOBAL);
        } else {
            let (m, n) = if self.proto < 3 {
                compat::py3_to_py2(module, name)
            } else {
                (module, name)
            };
            if m.contains('\n') || n.contains('\n') {
                return Err(PicklingError::new(format!(
                    "can't pickle global identifier '{module}.{name}' using pickle protocol {}",
                    self.proto
                )));
            }
            self.out.push(GLOBAL);
            self.out.extend_from_slice(m.as_bytes());
            self.out.push(b'\n');
            self.out.extend_from_slice(n.as_bytes());
            self.out.push(b'\n');
        }
        let idx = self.put();
        self.glob_memo.insert(key, idx);
        Ok(())
    }

    /// An object: pickle.py's `save_reduce` with the creation form recorded in the inert value.
    fn save_inert(&mut self, o: &Inert, as_value: Option<&Value>) -> Res<()> {
        let args: Vec<Value> = match &o.args {
            Value::Tuple(t) => t.to_vec(),
            Value::None => Vec::new(),
            _ => return Err(PicklingError::new("inert object args must be a tuple")),
        };
        match o.construct {
            Construct::Global => {
                self.save_global(&o.module, &o.name)?;
                return Ok(());
            }
            Construct::Reduce => {
                self.save_global(&o.module, &o.name)?;
                self.save_tuple_of(&args)?;
                self.out.push(REDUCE);
            }
            Construct::NewObj => {
                if self.proto >= 2 {
                    self.save_global(&o.module, &o.name)?;
                    self.save_tuple_of(&args)?;
                    self.out.push(NEWOBJ);
                } else {
                    self.save_global("copyreg", "__newobj__")?;
                    let mut full = vec![Inert::global(&o.module, &o.name).to_value()];
                    full.extend(args);
                    self.keep.push(full[0].clone());
                    self.save_tuple_of(&full)?;
                    self.out.push(REDUCE);
                }
            }
            Construct::NewObjEx => {
                let kwargs = match &o.kwargs {
                    Value::None => Value::dict([]).unwrap_or(Value::None),
                    k => k.clone(),
                };
                if self.proto >= 4 {
                    self.save_global(&o.module, &o.name)?;
                    self.save_tuple_of(&args)?;
                    self.save(&kwargs)?;
                    self.out.push(NEWOBJ_EX);
                } else {
                    self.save_global("copyreg", "__newobj_ex__")?;
                    let cls = Inert::global(&o.module, &o.name).to_value();
                    self.keep.push(cls.clone());
                    self.save_tuple_of(&[cls, Value::tuple(args), kwargs])?;
                    self.out.push(REDUCE);
                }
            }
            Construct::Call => {
                // args = (callee, *call_args): the callee (an inert object), then REDUCE.
                let (callee, rest) = match args.split_first() {
                    Some((f, rest)) => (f.clone(), rest.to_vec()),
                    None => return Err(PicklingError::new("an inert call without its callee")),
                };
                self.save(&callee)?;
                self.save_tuple_of(&rest)?;
                self.out.push(REDUCE);
            }
            Construct::Reconstructor => {
                self.save_global("copyreg", "_reconstructor")?;
                let cls = Inert::global(&o.module, &o.name).to_value();
                self.keep.push(cls.clone());
                let mut full = vec![cls];
                full.extend(args);
                self.save_tuple_of(&full)?;
                self.out.push(REDUCE);
            }
        }
        if let Some(v) = as_value {
            self.memoize(v);
        }
        if !o.listitems.is_empty() {
            self.appends(&o.listitems)?;
        }
        if !o.dictitems.is_empty() {
            let pairs: Vec<(&Value, &Value)> = o.dictitems.iter().map(|(k, v)| (k, v)).collect();
            self.setitems(&pairs)?;
        }
        if !matches!(o.state, Value::None) {
            self.save(&o.state)?;
            self.out.push(BUILD);
        }
        Ok(())
    }
}

/// The identity of a value that may appear more than once in the tree (a shared `Arc`); values
/// held by a single handle cannot recur, so they are never memoized.
fn shared_id(v: &Value) -> Option<usize> {
    match v {
        Value::Str(_)
        | Value::Bytes(_)
        | Value::ByteArray(_)
        | Value::Tuple(_)
        | Value::List(_)
        | Value::Dict(_)
        | Value::Set(_)
        | Value::FrozenSet(_)
        | Value::Slice(_)
        | Value::Object(_)
            if v.share_count() > 1 =>
        {
            v.ptr_id()
        }
        _ => None,
    }
}
