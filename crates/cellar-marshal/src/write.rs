//! The marshal encoder: [`Value`] in, bytes out, choosing codes as CPython 3.11+ does for the
//! requested version (binary floats from 2, references and interned strings from 3, ASCII
//! codes and small tuples from 4, slices at 5; sets sorted by each item's own marshal bytes).
//!
//! Like the decoder it walks the value with an explicit stack; the nesting limit is CPython's.
//! Objects whose allocation is shared (an `Arc` with more than one handle, CPython's
//! "refcount > 1") are written once and then referenced with `r`, from version 3.

use std::collections::HashMap;

use cellar_value::{float_g17, Code, Int, Value};
use num_bigint::Sign;

use crate::error::EncodeError;
use crate::types::*;

/// Options for [`crate::dumps_with`].
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Format version 0-5; larger values mean the newest ([`CURRENT_VERSION`]).
    pub version: u32,
    /// Write code objects; when false they fail with ValueError as in CPython 3.13.
    pub allow_code: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            version: DEFAULT_VERSION,
            allow_code: true,
        }
    }
}

enum Task<'a> {
    Obj(&'a Value),
    Null,
    I32(i32),
    Exit,
}

pub(crate) struct Writer<'o> {
    out: Vec<u8>,
    version: u32,
    opts: &'o DumpOptions,
    refs: HashMap<usize, u32>,
    depth: usize,
}

fn unmarshallable() -> EncodeError {
    EncodeError {
        message: "unmarshallable object".into(),
    }
}
fn too_deep() -> EncodeError {
    EncodeError {
        message: "object too deeply nested to marshal".into(),
    }
}

pub(crate) fn write_value(v: &Value, opts: &DumpOptions) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::new(opts, 0);
    w.write(v)?;
    Ok(w.out)
}

impl<'o> Writer<'o> {
    fn new(opts: &'o DumpOptions, depth: usize) -> Writer<'o> {
        Writer {
            out: Vec::with_capacity(64),
            version: opts.version.min(CURRENT_VERSION),
            opts,
            refs: HashMap::new(),
            depth,
        }
    }

    fn i32(&mut self, v: i32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn size(&mut self, n: usize) -> Result<(), EncodeError> {
        if n > SIZE32_MAX {
            return Err(unmarshallable());
        }
        self.i32(n as i32);
        Ok(())
    }

    fn write(&mut self, root: &Value) -> Result<(), EncodeError> {
        let mut stack = vec![Task::Obj(root)];
        while let Some(task) = stack.pop() {
            let v = match task {
                Task::Null => {
                    self.out.push(TYPE_NULL);
                    continue;
                }
                Task::I32(x) => {
                    self.i32(x);
                    continue;
                }
                Task::Exit => {
                    self.depth -= 1;
                    continue;
                }
                Task::Obj(v) => v,
            };
            if self.depth + 1 > MAX_DEPTH {
                return Err(too_deep());
            }
            let single = match v {
                Value::None => Some(TYPE_NONE),
                Value::Bool(false) => Some(TYPE_FALSE),
                Value::Bool(true) => Some(TYPE_TRUE),
                Value::StopIteration => Some(TYPE_STOPITER),
                Value::Ellipsis => Some(TYPE_ELLIPSIS),
                _ => None,
            };
            if let Some(b) = single {
                self.out.push(b);
                continue;
            }
            let mut flag = 0u8;
            if self.version >= 3 && v.share_count() > 1 {
                if let Some(id) = v.ptr_id() {
                    if let Some(&idx) = self.refs.get(&id) {
                        self.out.push(TYPE_REF);
                        self.i32(idx as i32);
                        continue;
                    }
                    let idx = self.refs.len();
                    if idx > SIZE32_MAX {
                        return Err(unmarshallable());
                    }
                    self.refs.insert(id, idx as u32);
                    flag = FLAG_REF;
                }
            }
            self.complex(v, flag, &mut stack)?;
        }
        Ok(())
    }

    fn complex<'a>(
        &mut self,
        v: &'a Value,
        flag: u8,
        stack: &mut Vec<Task<'a>>,
    ) -> Result<(), EncodeError> {
        match v {
            // An inert pickle object has no marshal form (CPython: "unmarshallable object").
            Value::Object(_) => return Err(unmarshallable()),
            Value::Int(Int::Small(i)) => match i32::try_from(*i) {
                Ok(x) => {
                    self.out.push(TYPE_INT | flag);
                    self.i32(x);
                }
                Err(_) => {
                    self.out.push(TYPE_LONG | flag);
                    self.long_digits(i.unsigned_abs().to_le_bytes().as_slice(), *i < 0)?;
                }
            },
            Value::Int(Int::Big(b)) => {
                self.out.push(TYPE_LONG | flag);
                let (sign, mag) = b.to_bytes_le();
                self.long_digits(&mag, sign == Sign::Minus)?;
            }
            Value::Float(f) => {
                if self.version > 1 {
                    self.out.push(TYPE_BINARY_FLOAT | flag);
                    self.out.extend_from_slice(&f.to_le_bytes());
                } else {
                    self.out.push(TYPE_FLOAT | flag);
                    self.text_float(*f);
                }
            }
            Value::Complex(re, im) => {
                if self.version > 1 {
                    self.out.push(TYPE_BINARY_COMPLEX | flag);
                    self.out.extend_from_slice(&re.to_le_bytes());
                    self.out.extend_from_slice(&im.to_le_bytes());
                } else {
                    self.out.push(TYPE_COMPLEX | flag);
                    self.text_float(*re);
                    self.text_float(*im);
                }
            }
            Value::Bytes(b) => self.bytes(b, flag)?,
            Value::ByteArray(b) => self.bytes(b, flag)?,
            Value::Str(s) => {
                let raw = s.as_bytes();
                if self.version >= 4 && s.is_ascii() {
                    let short = raw.len() < 256;
                    let code = match (short, s.is_interned()) {
                        (true, true) => TYPE_SHORT_ASCII_INTERNED,
                        (true, false) => TYPE_SHORT_ASCII,
                        (false, true) => TYPE_ASCII_INTERNED,
                        (false, false) => TYPE_ASCII,
                    };
                    self.out.push(code | flag);
                    if short {
                        self.out.push(raw.len() as u8);
                    } else {
                        self.size(raw.len())?;
                    }
                } else {
                    let code = if self.version >= 3 && s.is_interned() {
                        TYPE_INTERNED
                    } else {
                        TYPE_UNICODE
                    };
                    self.out.push(code | flag);
                    self.size(raw.len())?;
                }
                self.out.extend_from_slice(raw);
            }
            Value::Tuple(items) => {
                if self.version >= 4 && items.len() < 256 {
                    self.out.push(TYPE_SMALL_TUPLE | flag);
                    self.out.push(items.len() as u8);
                } else {
                    self.out.push(TYPE_TUPLE | flag);
                    self.size(items.len())?;
                }
                self.open(stack);
                stack.extend(items.iter().rev().map(Task::Obj));
            }
            Value::List(items) => {
                self.out.push(TYPE_LIST | flag);
                self.size(items.len())?;
                self.open(stack);
                stack.extend(items.iter().rev().map(Task::Obj));
            }
            Value::Dict(d) => {
                self.out.push(TYPE_DICT | flag);
                self.open(stack);
                stack.push(Task::Null);
                for (k, val) in d.iter().rev() {
                    stack.push(Task::Obj(val));
                    stack.push(Task::Obj(k));
                }
            }
            Value::Set(s) | Value::FrozenSet(s) => {
                let code = if matches!(v, Value::Set(_)) {
                    TYPE_SET
                } else {
                    TYPE_FROZENSET
                };
                self.out.push(code | flag);
                self.size(s.len())?;
                // Deterministic order (bpo-37596): sorted by each item's standalone marshal bytes.
                let mut keyed = Vec::with_capacity(s.len());
                for item in s.iter() {
                    let mut sub = Writer::new(self.opts, self.depth + 1);
                    sub.write(item)?;
                    keyed.push((sub.out, item));
                }
                keyed.sort_by(|a, b| a.0.cmp(&b.0));
                self.open(stack);
                stack.extend(keyed.into_iter().rev().map(|(_, item)| Task::Obj(item)));
            }
            Value::Slice(s) => {
                if self.version < 5 {
                    return Err(unmarshallable());
                }
                self.out.push(TYPE_SLICE | flag);
                self.open(stack);
                stack.push(Task::Obj(&s.step));
                stack.push(Task::Obj(&s.stop));
                stack.push(Task::Obj(&s.start));
            }
            Value::Code(c) => {
                if !self.opts.allow_code {
                    return Err(EncodeError {
                        message: "marshalling code objects is disallowed".into(),
                    });
                }
                self.out.push(TYPE_CODE | flag);
                self.code(c, stack);
            }
            Value::None | Value::Bool(_) | Value::StopIteration | Value::Ellipsis => {}
        }
        Ok(())
    }

    fn open(&mut self, stack: &mut Vec<Task<'_>>) {
        self.depth += 1;
        stack.push(Task::Exit);
    }

    fn code<'a>(&mut self, c: &'a Code, stack: &mut Vec<Task<'a>>) {
        for x in [
            c.argcount,
            c.posonlyargcount,
            c.kwonlyargcount,
            c.stacksize,
            c.flags,
        ] {
            self.i32(x);
        }
        self.open(stack);
        stack.push(Task::Obj(&c.exceptiontable));
        stack.push(Task::Obj(&c.linetable));
        stack.push(Task::I32(c.firstlineno));
        for v in [
            &c.qualname,
            &c.name,
            &c.filename,
            &c.localspluskinds,
            &c.localsplusnames,
            &c.names,
            &c.consts,
            &c.code,
        ] {
            stack.push(Task::Obj(v));
        }
    }

    fn bytes(&mut self, b: &[u8], flag: u8) -> Result<(), EncodeError> {
        self.out.push(TYPE_STRING | flag);
        self.size(b.len())?;
        self.out.extend_from_slice(b);
        Ok(())
    }

    fn text_float(&mut self, f: f64) {
        let s = float_g17(f);
        self.out.push(s.len() as u8);
        self.out.extend_from_slice(s.as_bytes());
    }

    /// Writes a magnitude (little-endian bytes) as a signed count of base-2^15 digits.
    fn long_digits(&mut self, mag: &[u8], negative: bool) -> Result<(), EncodeError> {
        let mut digits: Vec<u16> = Vec::with_capacity(mag.len() * 8 / 15 + 1);
        let (mut acc, mut bits) = (0u32, 0u32);
        for &byte in mag {
            acc |= (byte as u32) << bits;
            bits += 8;
            while bits >= 15 {
                digits.push((acc & 0x7FFF) as u16);
                acc >>= 15;
                bits -= 15;
            }
        }
        if bits > 0 {
            digits.push((acc & 0x7FFF) as u16);
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.len() > SIZE32_MAX {
            return Err(unmarshallable());
        }
        let n = digits.len() as i32;
        self.i32(if negative { -n } else { n });
        for d in digits {
            self.out.extend_from_slice(&d.to_le_bytes());
        }
        Ok(())
    }
}
