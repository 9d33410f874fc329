//! The marshal decoder: bytes in, [`Value`] out, for every type code of versions 0-5.
//!
//! It never recurses: open containers live on an explicit stack, so the nesting limit (2000,
//! as CPython's `MAX_MARSHAL_STACK_DEPTH`) is checked, not discovered by a stack overflow.
//! Memory is bounded by the input: a claimed count or length is never used to allocate more
//! than the bytes that remain could fill, and a value built through back-references can be
//! no deeper than the limit either (so dropping or printing it is always safe).

use std::sync::Arc;

use cellar_value::{validate_surrogatepass, BigInt, Code, Dict, Int, PyStr, Set, Slice, Value};
use num_bigint::{BigUint, Sign};

use crate::error::{DecodeError, ErrorKind};
use crate::types::*;

/// Options for [`crate::loads_with`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Accept code objects (`c`); when false they fail with ValueError as in CPython 3.13.
    pub allow_code: bool,
    /// Maximum nesting (CPython: 2000). Values nested deeper, in the stream or through
    /// back-references, fail with "recursion limit exceeded".
    pub max_depth: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            allow_code: true,
            max_depth: MAX_DEPTH,
        }
    }
}

/// One slot of the back-reference table.
enum Slot {
    /// A container still being read: a reference to it would make a cycle.
    Open { mutable: bool },
    /// A finished object and its nesting height.
    Done(Value, u32),
}

enum SeqKind {
    Tuple,
    List,
}

enum Frame {
    Seq {
        kind: SeqKind,
        items: Vec<Value>,
        left: usize,
        slot: Option<usize>,
        height: u32,
        reserved: usize,
    },
    Set {
        set: Set,
        frozen: bool,
        left: usize,
        slot: Option<usize>,
        height: u32,
    },
    Dict {
        dict: Dict,
        key: Option<Value>,
        slot: Option<usize>,
        height: u32,
    },
    Code {
        ints: [i32; 5],
        objs: Vec<Value>,
        firstlineno: i32,
        slot: Option<usize>,
        height: u32,
    },
    Slice {
        parts: Vec<Value>,
        slot: Option<usize>,
        height: u32,
    },
}

/// What reading one object's head produced.
enum Head {
    /// A complete object (None = the NULL marker `0`) and its height.
    Done(Option<Value>, u32),
    /// A container was opened on the stack.
    Opened,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    refs: Vec<Slot>,
    opts: &'a LoadOptions,
    /// Item slots pre-allocated by the open sequences; kept below the bytes that remain, so
    /// nested claims cannot add up to more memory than the input could fill.
    reserved: usize,
}

/// Decodes one object from the start of `data`; returns it and the number of bytes used.
pub(crate) fn read_object(data: &[u8], opts: &LoadOptions) -> Result<(Value, usize), DecodeError> {
    let mut r = Reader {
        data,
        pos: 0,
        refs: Vec::new(),
        opts,
        reserved: 0,
    };
    let v = r.run()?;
    Ok((v, r.pos))
}

fn type_err(msg: &str, at: usize) -> DecodeError {
    DecodeError::new(ErrorKind::Type, msg, at)
}
fn value_err(msg: impl Into<String>, at: usize) -> DecodeError {
    DecodeError::new(ErrorKind::Value, msg, at)
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        match self.data.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(DecodeError::new(
                ErrorKind::Eof,
                "EOF read where object expected",
                self.pos,
            )),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::new(
                ErrorKind::Eof,
                "marshal data too short",
                self.pos,
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    /// A 32-bit size: negative is "size out of range" for `what`.
    fn size(&mut self, what: &str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.i32()?;
        if n < 0 {
            return Err(value_err(
                format!("bad marshal data ({what} size out of range)"),
                at,
            ));
        }
        Ok(n as usize)
    }

    fn text_float(&mut self) -> Result<f64, DecodeError> {
        let n = self.byte()? as usize;
        let at = self.pos;
        let s = self.take(n)?;
        let text = std::str::from_utf8(s).ok();
        text.and_then(cellar_value::parse_float_text)
            .ok_or_else(|| {
                value_err(
                    format!(
                        "could not convert string to float: {}",
                        cellar_value::bytes_repr(s)
                    ),
                    at,
                )
            })
    }

    /// A container claiming more items than bytes remain cannot be complete.
    fn check_count(&self, n: usize) -> Result<(), DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::new(
                ErrorKind::Eof,
                "marshal data too short",
                self.pos,
            ));
        }
        Ok(())
    }

    fn reserve(&mut self, flag: bool, mutable: bool) -> Option<usize> {
        if !flag {
            return None;
        }
        self.refs.push(Slot::Open { mutable });
        Some(self.refs.len() - 1)
    }

    fn register(&mut self, flag: bool, v: &Value, h: u32) {
        if flag {
            self.refs.push(Slot::Done(v.clone(), h));
        }
    }

    fn check_height(&self, h: u32, at: usize) -> Result<(), DecodeError> {
        if h as usize > self.opts.max_depth {
            return Err(value_err(
                "recursion limit exceeded (value nested too deeply through back-references)",
                at,
            ));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Value, DecodeError> {
        let mut stack: Vec<Frame> = Vec::new();
        loop {
            let at = self.pos;
            if stack.len() + 1 > self.opts.max_depth {
                return Err(value_err("recursion limit exceeded", at));
            }
            let (mut item, mut height) = match self.head(&mut stack)? {
                Head::Done(v, h) => (v, h),
                Head::Opened => continue,
            };
            // Deliver the finished object to the open containers, closing those it completes.
            loop {
                let Some(top) = stack.last_mut() else {
                    return item
                        .ok_or_else(|| type_err("NULL object in marshal data for object", at));
                };
                if !self.accept(top, item, height, at)? {
                    break;
                }
                let Some(frame) = stack.pop() else { break };
                let (v, h) = self.finish(frame, at)?;
                item = Some(v);
                height = h;
            }
        }
    }

    /// Hands `item` to the innermost open container; true when that container is complete.
    fn accept(
        &mut self,
        top: &mut Frame,
        item: Option<Value>,
        h: u32,
        at: usize,
    ) -> Result<bool, DecodeError> {
        match top {
            Frame::Seq {
                kind,
                items,
                left,
                height,
                ..
            } => {
                let Some(v) = item else {
                    let what = match kind {
                        SeqKind::Tuple => "tuple",
                        SeqKind::List => "list",
                    };
                    return Err(type_err(
                        &format!("NULL object in marshal data for {what}"),
                        at,
                    ));
                };
                items.push(v);
                *height = (*height).max(h + 1);
                *left -= 1;
                Ok(*left == 0)
            }
            Frame::Set {
                set, left, height, ..
            } => {
                let Some(v) = item else {
                    return Err(type_err("NULL object in marshal data for set", at));
                };
                set.insert(v).map_err(|e| type_err(&e.to_string(), at))?;
                *height = (*height).max(h + 1);
                *left -= 1;
                Ok(*left == 0)
            }
            Frame::Dict {
                dict, key, height, ..
            } => {
                let Some(v) = item else {
                    // NULL ends the dict, whether in key or value position (a pending key is dropped).
                    *key = None;
                    return Ok(true);
                };
                *height = (*height).max(h + 1);
                match key.take() {
                    None => *key = Some(v),
                    Some(k) => {
                        dict.insert(k, v)
                            .map_err(|e| type_err(&e.to_string(), at))?;
                    }
                }
                Ok(false)
            }
            Frame::Code {
                objs,
                firstlineno,
                height,
                ..
            } => {
                let Some(v) = item else {
                    return Err(type_err("NULL object in marshal data for object", at));
                };
                objs.push(v);
                *height = (*height).max(h + 1);
                if objs.len() == 8 {
                    // co_firstlineno sits between co_qualname and co_linetable.
                    *firstlineno = self.i32()?;
                }
                Ok(objs.len() == 10)
            }
            Frame::Slice { parts, height, .. } => {
                let Some(v) = item else {
                    return Err(type_err("NULL object in marshal data for object", at));
                };
                parts.push(v);
                *height = (*height).max(h + 1);
                Ok(parts.len() == 3)
            }
        }
    }

    fn fill(&mut self, slot: Option<usize>, v: &Value, h: u32) {
        if let Some(i) = slot {
            self.refs[i] = Slot::Done(v.clone(), h);
        }
    }

    fn finish(&mut self, frame: Frame, at: usize) -> Result<(Value, u32), DecodeError> {
        let (v, slot, h) = match frame {
            Frame::Seq {
                kind,
                items,
                slot,
                height,
                reserved,
                ..
            } => {
                self.reserved -= reserved;
                let v = match kind {
                    SeqKind::Tuple => Value::Tuple(Arc::new(items)),
                    SeqKind::List => Value::List(Arc::new(items)),
                };
                (v, slot, height)
            }
            Frame::Set {
                set,
                frozen,
                slot,
                height,
                ..
            } => {
                let v = if frozen {
                    Value::FrozenSet(Arc::new(set))
                } else {
                    Value::Set(Arc::new(set))
                };
                (v, slot, height)
            }
            Frame::Dict {
                dict, slot, height, ..
            } => (Value::Dict(Arc::new(dict)), slot, height.max(1)),
            Frame::Code {
                ints,
                objs,
                firstlineno,
                slot,
                height,
            } => {
                let code = build_code(ints, objs, firstlineno).map_err(|m| value_err(m, at))?;
                (Value::Code(Arc::new(code)), slot, height)
            }
            Frame::Slice {
                parts,
                slot,
                height,
            } => {
                let mut it = parts.into_iter();
                let mut next = || it.next().unwrap_or(Value::None);
                let s = Slice {
                    start: next(),
                    stop: next(),
                    step: next(),
                };
                (Value::Slice(Arc::new(s)), slot, height)
            }
        };
        self.check_height(h, at)?;
        self.fill(slot, &v, h);
        Ok((v, h))
    }

    /// Reads one type code and either a whole scalar or the head of a container.
    fn head(&mut self, stack: &mut Vec<Frame>) -> Result<Head, DecodeError> {
        let at = self.pos;
        let code = self.byte()?;
        let flag = code & FLAG_REF != 0;
        let t = code & !FLAG_REF;
        let done = |v: Value| Ok(Head::Done(Some(v), 1));
        match t {
            TYPE_NULL => Ok(Head::Done(None, 0)),
            TYPE_NONE => done(Value::None),
            TYPE_FALSE => done(Value::Bool(false)),
            TYPE_TRUE => done(Value::Bool(true)),
            TYPE_STOPITER => done(Value::StopIteration),
            TYPE_ELLIPSIS => done(Value::Ellipsis),
            TYPE_INT => {
                let v = Value::int(self.i32()? as i64);
                self.register(flag, &v, 1);
                done(v)
            }
            TYPE_INT64 => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let v = Value::int(i64::from_le_bytes(a));
                self.register(flag, &v, 1);
                done(v)
            }
            TYPE_LONG => {
                let v = self.long(at)?;
                self.register(flag, &v, 1);
                done(v)
            }
            TYPE_FLOAT => {
                let v = Value::Float(self.text_float()?);
                self.register(flag, &v, 1);
                done(v)
            }
            TYPE_BINARY_FLOAT => {
                let v = Value::Float(self.f64()?);
                self.register(flag, &v, 1);
                done(v)
            }
            TYPE_COMPLEX => {
                let re = self.text_float()?;
                let im = self.text_float()?;
                let v = Value::Complex(re, im);
                self.register(flag, &v, 1);
                done(v)
            }
            TYPE_BINARY_COMPLEX => {
                let re = self.f64()?;
                let im = self.f64()?;
                let v = Value::Complex(re, im);
                self.register(flag, &v, 1);
                done(v)
            }
            TYPE_STRING => {
                let n = self.size("bytes object")?;
                let v = Value::Bytes(self.take(n)?.into());
                self.register(flag, &v, 1);
                done(v)
            }
            TYPE_UNICODE | TYPE_INTERNED => {
                let n = self.size("string")?;
                let start = self.pos;
                let raw = self.take(n)?;
                if let Err(e) = validate_surrogatepass(raw) {
                    return Err(DecodeError::new(
                        ErrorKind::UnicodeDecode,
                        e.to_string(),
                        start + e.start,
                    ));
                }
                let s = PyStr::from_utf8_surrogatepass(raw)
                    .map_err(|e| {
                        DecodeError::new(ErrorKind::UnicodeDecode, e.to_string(), start + e.start)
                    })?
                    .with_interned(t == TYPE_INTERNED);
                let v = Value::Str(Arc::new(s));
                self.register(flag, &v, 1);
                done(v)
            }
            TYPE_ASCII | TYPE_ASCII_INTERNED | TYPE_SHORT_ASCII | TYPE_SHORT_ASCII_INTERNED => {
                let n = if t == TYPE_ASCII || t == TYPE_ASCII_INTERNED {
                    self.size("string")?
                } else {
                    match self.byte() {
                        Ok(b) => b as usize,
                        Err(_) => {
                            return Err(DecodeError::new(
                                ErrorKind::Eof,
                                "EOF read where object expected",
                                self.pos,
                            ))
                        }
                    }
                };
                let raw = self.take(n)?;
                let interned = t == TYPE_ASCII_INTERNED || t == TYPE_SHORT_ASCII_INTERNED;
                let v = Value::Str(Arc::new(PyStr::from_latin1(raw).with_interned(interned)));
                self.register(flag, &v, 1);
                done(v)
            }
            TYPE_TUPLE | TYPE_SMALL_TUPLE | TYPE_LIST => {
                let n = match t {
                    TYPE_SMALL_TUPLE => self.byte()? as usize,
                    TYPE_TUPLE => self.size("tuple")?,
                    _ => self.size("list")?,
                };
                let slot = self.reserve(flag, true);
                let kind = if t == TYPE_LIST {
                    SeqKind::List
                } else {
                    SeqKind::Tuple
                };
                if n == 0 {
                    let v = match kind {
                        SeqKind::Tuple => Value::tuple(Vec::new()),
                        SeqKind::List => Value::list(Vec::new()),
                    };
                    self.fill(slot, &v, 1);
                    return done(v);
                }
                // Each item takes at least one byte: a count beyond the bytes left is truncated
                // data, and pre-allocation stays within what the input could fill.
                self.check_count(n)?;
                let reserved = n.min(self.remaining().saturating_sub(self.reserved));
                self.reserved += reserved;
                let items = Vec::with_capacity(reserved);
                stack.push(Frame::Seq {
                    kind,
                    items,
                    left: n,
                    slot,
                    height: 1,
                    reserved,
                });
                Ok(Head::Opened)
            }
            TYPE_DICT => {
                let slot = self.reserve(flag, true);
                stack.push(Frame::Dict {
                    dict: Dict::new(),
                    key: None,
                    slot,
                    height: 1,
                });
                Ok(Head::Opened)
            }
            TYPE_SET | TYPE_FROZENSET => {
                let n = self.size("set")?;
                let frozen = t == TYPE_FROZENSET;
                let slot = self.reserve(flag, !frozen);
                if n == 0 {
                    let v = if frozen {
                        Value::FrozenSet(Default::default())
                    } else {
                        Value::Set(Default::default())
                    };
                    self.fill(slot, &v, 1);
                    return done(v);
                }
                self.check_count(n)?;
                stack.push(Frame::Set {
                    set: Set::new(),
                    frozen,
                    left: n,
                    slot,
                    height: 1,
                });
                Ok(Head::Opened)
            }
            TYPE_CODE => {
                if !self.opts.allow_code {
                    return Err(value_err("unmarshalling code objects is disallowed", at));
                }
                let slot = self.reserve(flag, false);
                let mut ints = [0i32; 5];
                for x in ints.iter_mut() {
                    *x = self.i32()?;
                }
                stack.push(Frame::Code {
                    ints,
                    objs: Vec::with_capacity(10),
                    firstlineno: 0,
                    slot,
                    height: 1,
                });
                Ok(Head::Opened)
            }
            TYPE_SLICE => {
                let slot = self.reserve(flag, false);
                stack.push(Frame::Slice {
                    parts: Vec::with_capacity(3),
                    slot,
                    height: 1,
                });
                Ok(Head::Opened)
            }
            TYPE_REF => {
                let n = self.i32()?;
                match usize::try_from(n).ok().and_then(|i| self.refs.get(i)) {
                    Some(Slot::Done(v, h)) => Ok(Head::Done(Some(v.clone()), *h)),
                    Some(Slot::Open { mutable: true }) => Err(value_err(
                        "bad marshal data (recursive reference: a container that contains itself \
                         cannot be represented as a cellar Value)",
                        at,
                    )),
                    _ => Err(value_err("bad marshal data (invalid reference)", at)),
                }
            }
            _ => Err(value_err("bad marshal data (unknown type code)", at)),
        }
    }

    /// `l`: a signed digit count, then base-2^15 digits, least significant first.
    fn long(&mut self, at: usize) -> Result<Value, DecodeError> {
        let n = self.i32()?;
        if n == 0 {
            return Ok(Value::int(0));
        }
        if n == i32::MIN {
            return Err(value_err("bad marshal data (long size out of range)", at));
        }
        let count = n.unsigned_abs() as usize;
        let raw = self.take(count * 2)?;
        let mut words: Vec<u32> = Vec::with_capacity(count * 15 / 32 + 1);
        let (mut acc, mut bits) = (0u64, 0u32);
        let mut small: u64 = 0;
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            let d = u16::from_le_bytes([pair[0], pair[1]]);
            if d > 0x7FFF {
                return Err(value_err(
                    "bad marshal data (digit out of range in long)",
                    at,
                ));
            }
            if i + 1 == count && d == 0 {
                return Err(value_err("bad marshal data (unnormalized long data)", at));
            }
            if count <= 4 {
                small |= (d as u64) << (15 * i);
            }
            acc |= (d as u64) << bits;
            bits += 15;
            while bits >= 32 {
                words.push(acc as u32);
                acc >>= 32;
                bits -= 32;
            }
        }
        if count <= 4 && small <= i64::MAX as u64 {
            let v = small as i64;
            return Ok(Value::int(if n < 0 { -v } else { v }));
        }
        if bits > 0 {
            words.push(acc as u32);
        }
        let sign = if n < 0 { Sign::Minus } else { Sign::Plus };
        Ok(Value::Int(Int::from_bigint(BigInt::from_biguint(
            sign,
            BigUint::new(words),
        ))))
    }
}

/// Assembles a code object, checking field types as CPython's `_PyCode_Validate` does.
fn build_code(ints: [i32; 5], objs: Vec<Value>, firstlineno: i32) -> Result<Code, String> {
    let mut it = objs.into_iter();
    let mut next = || it.next().unwrap_or(Value::None);
    let c = Code {
        argcount: ints[0],
        posonlyargcount: ints[1],
        kwonlyargcount: ints[2],
        stacksize: ints[3],
        flags: ints[4],
        code: next(),
        consts: next(),
        names: next(),
        localsplusnames: next(),
        localspluskinds: next(),
        filename: next(),
        name: next(),
        qualname: next(),
        firstlineno,
        linetable: next(),
        exceptiontable: next(),
    };
    let bad = |what: &str| Err(format!("bad marshal data (invalid code object: {what})"));
    let is_bytes = |v: &Value| matches!(v, Value::Bytes(_));
    let is_str = |v: &Value| matches!(v, Value::Str(_));
    let str_tuple =
        |v: &Value| matches!(v, Value::Tuple(t) if t.iter().all(|x| matches!(x, Value::Str(_))));
    if !is_bytes(&c.code) {
        return bad("co_code is not bytes");
    }
    if !matches!(c.consts, Value::Tuple(_)) {
        return bad("co_consts is not a tuple");
    }
    if !str_tuple(&c.names) || !str_tuple(&c.localsplusnames) {
        return bad("co_names/co_localsplusnames is not a tuple of str");
    }
    if !is_bytes(&c.localspluskinds) || !is_bytes(&c.linetable) || !is_bytes(&c.exceptiontable) {
        return bad("co_localspluskinds/co_linetable/co_exceptiontable is not bytes");
    }
    if !is_str(&c.filename) || !is_str(&c.name) || !is_str(&c.qualname) {
        return bad("co_filename/co_name/co_qualname is not str");
    }
    if let (Value::Tuple(n), Value::Bytes(k)) = (&c.localsplusnames, &c.localspluskinds) {
        if n.len() != k.len() {
            return bad("co_localsplusnames and co_localspluskinds differ in length");
        }
    }
    if let Value::Bytes(b) = &c.code {
        if b.len() % 2 != 0 {
            return bad("co_code length is odd");
        }
    }
    if c.argcount < c.posonlyargcount
        || c.posonlyargcount < 0
        || c.kwonlyargcount < 0
        || c.stacksize < 0
    {
        return bad("argument counts out of range");
    }
    Ok(c)
}
