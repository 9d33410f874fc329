//! The [`Value`] sink and source: the Rust value model plugged into the one decoder
//! ([`crate::read`]) and the one encoder ([`crate::write`]).
//!
//! `Value` is an immutable tree with shared sub-objects (`Arc`), so it cannot hold a cycle: a
//! reference to a list, dict or set that is still being read is refused (the decoder then fails
//! with "recursive reference"). Dict keys and set items are hashed by `cellar_value`, which
//! never recurses without bound: everything the decoder delivers is at most `max_depth` deep.

use std::sync::Arc;

use cellar_value::{validate_surrogatepass, BigInt, Code, Dict, Int, PyStr, Set, Slice, Value};
use num_bigint::{BigUint, Sign};

use crate::error::{DecodeError, EncodeError, ErrorKind};
use crate::read::{CodeFields, InputFailed, Sink};
use crate::write::{Node, Source, StrData};

impl From<InputFailed> for DecodeError {
    fn from(_: InputFailed) -> DecodeError {
        DecodeError::new(
            ErrorKind::Value,
            "the input failed while reading marshal data",
            0,
        )
    }
}

/// Builds [`Value`]s.
#[derive(Debug, Default)]
pub struct ValueSink;

/// A list or tuple being read.
pub struct SeqBuilder {
    items: Vec<Value>,
    list: bool,
}

/// A set or frozenset being read.
pub struct SetBuilder {
    set: Set,
    frozen: bool,
}

fn hash_err(e: impl std::fmt::Display, at: usize) -> DecodeError {
    DecodeError::new(ErrorKind::Type, e.to_string(), at)
}

impl Sink for ValueSink {
    type Value = Value;
    type Seq = SeqBuilder;
    type Dict = Dict;
    type Set = SetBuilder;
    type Error = DecodeError;

    #[inline]
    fn none(&mut self) -> Result<Value, DecodeError> {
        Ok(Value::None)
    }
    #[inline]
    fn bool(&mut self, v: bool) -> Result<Value, DecodeError> {
        Ok(Value::Bool(v))
    }
    #[inline]
    fn stop_iteration(&mut self) -> Result<Value, DecodeError> {
        Ok(Value::StopIteration)
    }
    #[inline]
    fn ellipsis(&mut self) -> Result<Value, DecodeError> {
        Ok(Value::Ellipsis)
    }
    #[inline]
    fn int(&mut self, v: i64) -> Result<Value, DecodeError> {
        Ok(Value::int(v))
    }
    fn big_int(&mut self, negative: bool, magnitude_le: &[u8]) -> Result<Value, DecodeError> {
        let sign = if negative { Sign::Minus } else { Sign::Plus };
        Ok(Value::Int(Int::from_bigint(BigInt::from_biguint(
            sign,
            BigUint::from_bytes_le(magnitude_le),
        ))))
    }
    #[inline]
    fn float(&mut self, v: f64) -> Result<Value, DecodeError> {
        Ok(Value::Float(v))
    }
    #[inline]
    fn complex(&mut self, re: f64, im: f64) -> Result<Value, DecodeError> {
        Ok(Value::Complex(re, im))
    }
    #[inline]
    fn bytes(&mut self, b: &[u8]) -> Result<Value, DecodeError> {
        Ok(Value::Bytes(b.into()))
    }
    fn str_utf8(&mut self, raw: &[u8], interned: bool, at: usize) -> Result<Value, DecodeError> {
        let unicode = |e: cellar_value::Utf8Error| {
            DecodeError::new(ErrorKind::UnicodeDecode, e.to_string(), at + e.start)
        };
        validate_surrogatepass(raw).map_err(unicode)?;
        let s = PyStr::from_utf8_surrogatepass(raw)
            .map_err(unicode)?
            .with_interned(interned);
        Ok(Value::Str(Arc::new(s)))
    }
    #[inline]
    fn str_latin1(&mut self, raw: &[u8], interned: bool) -> Result<Value, DecodeError> {
        Ok(Value::Str(Arc::new(
            PyStr::from_latin1(raw).with_interned(interned),
        )))
    }
    #[inline]
    fn share(&mut self, v: &Value) -> Value {
        v.clone()
    }

    #[inline]
    fn seq_open(
        &mut self,
        list: bool,
        _len: usize,
        capacity: usize,
    ) -> Result<SeqBuilder, DecodeError> {
        Ok(SeqBuilder {
            items: Vec::with_capacity(capacity),
            list,
        })
    }
    #[inline]
    fn seq_push(&mut self, seq: &mut SeqBuilder, item: Value) -> Result<(), DecodeError> {
        seq.items.push(item);
        Ok(())
    }
    #[inline]
    fn seq_close(&mut self, seq: SeqBuilder) -> Result<Value, DecodeError> {
        Ok(if seq.list {
            Value::List(Arc::new(seq.items))
        } else {
            Value::Tuple(Arc::new(seq.items))
        })
    }
    fn seq_ref(&mut self, _seq: &mut SeqBuilder) -> Option<Value> {
        None
    }

    fn dict_open(&mut self) -> Result<Dict, DecodeError> {
        Ok(Dict::new())
    }
    fn dict_set(
        &mut self,
        d: &mut Dict,
        key: Value,
        value: Value,
        at: usize,
    ) -> Result<(), DecodeError> {
        d.insert(key, value).map_err(|e| hash_err(e, at))?;
        Ok(())
    }
    fn dict_close(&mut self, d: Dict) -> Result<Value, DecodeError> {
        Ok(Value::Dict(Arc::new(d)))
    }
    fn dict_ref(&mut self, _d: &mut Dict) -> Option<Value> {
        None
    }

    fn set_open(&mut self, frozen: bool, _len: usize) -> Result<SetBuilder, DecodeError> {
        Ok(SetBuilder {
            set: Set::new(),
            frozen,
        })
    }
    fn set_add(&mut self, s: &mut SetBuilder, item: Value, at: usize) -> Result<(), DecodeError> {
        s.set.insert(item).map_err(|e| hash_err(e, at))?;
        Ok(())
    }
    fn set_close(&mut self, s: SetBuilder) -> Result<Value, DecodeError> {
        Ok(if s.frozen {
            Value::FrozenSet(Arc::new(s.set))
        } else {
            Value::Set(Arc::new(s.set))
        })
    }
    fn set_ref(&mut self, _s: &mut SetBuilder) -> Option<Value> {
        None
    }

    fn slice(&mut self, start: Value, stop: Value, step: Value) -> Result<Value, DecodeError> {
        Ok(Value::Slice(Arc::new(Slice { start, stop, step })))
    }

    fn code(&mut self, f: CodeFields<Value>, _at: usize) -> Result<Value, DecodeError> {
        let [code, consts, names, localsplusnames, localspluskinds, filename, name, qualname, linetable, exceptiontable] =
            f.objects;
        Ok(Value::Code(Arc::new(Code {
            argcount: f.argcount,
            posonlyargcount: f.posonlyargcount,
            kwonlyargcount: f.kwonlyargcount,
            stacksize: f.stacksize,
            flags: f.flags,
            code,
            consts,
            names,
            localsplusnames,
            localspluskinds,
            filename,
            name,
            qualname,
            firstlineno: f.firstlineno,
            linetable,
            exceptiontable,
        })))
    }
}

/// Walks [`Value`]s for the encoder. A value is "shared" (gets FLAG_REF, from version 3) when
/// its allocation has more than one handle (`Arc` strong count > 1): the Rust counterpart of
/// CPython's "reference count above one".
#[derive(Debug, Default)]
pub struct ValueSource<'a>(std::marker::PhantomData<&'a Value>);

impl<'a> Source for ValueSource<'a> {
    type Obj = &'a Value;
    type Error = EncodeError;

    #[inline]
    fn node<'n>(&mut self, v: &'n &'a Value) -> Result<Node<'n, &'a Value>, EncodeError> {
        let v: &'a Value = v;
        Ok(match v {
            Value::None => Node::None,
            Value::Bool(b) => Node::Bool(*b),
            Value::StopIteration => Node::StopIteration,
            Value::Ellipsis => Node::Ellipsis,
            Value::Int(Int::Small(i)) => Node::Int(*i),
            Value::Int(Int::Big(b)) => {
                let (sign, mag) = b.to_bytes_le();
                Node::BigInt {
                    negative: sign == Sign::Minus,
                    magnitude_le: mag.into(),
                }
            }
            Value::Float(f) => Node::Float(*f),
            Value::Complex(re, im) => Node::Complex(*re, *im),
            Value::Bytes(b) => Node::Bytes(b[..].into()),
            Value::ByteArray(b) => Node::Bytes(b[..].into()),
            Value::Str(s) => Node::Str {
                data: if s.is_ascii() {
                    StrData::Ascii(s.as_bytes())
                } else {
                    StrData::Utf8(s.as_bytes())
                },
                interned: s.is_interned(),
            },
            Value::Tuple(items) => Node::Tuple(items.len()),
            Value::List(items) => Node::List(items.len()),
            Value::Dict(_) => Node::Dict,
            Value::Set(s) => Node::Set {
                frozen: false,
                len: s.len(),
            },
            Value::FrozenSet(s) => Node::Set {
                frozen: true,
                len: s.len(),
            },
            Value::Slice(_) => Node::Slice,
            Value::Code(c) => Node::Code {
                ints: [
                    c.argcount,
                    c.posonlyargcount,
                    c.kwonlyargcount,
                    c.stacksize,
                    c.flags,
                    c.firstlineno,
                ],
            },
            // An inert pickle object has no marshal form (CPython: "unmarshallable object").
            Value::Object(_) => Node::Unmarshallable,
        })
    }

    #[inline]
    fn shared_id(&mut self, v: &&'a Value, _extra: u32) -> Option<usize> {
        if v.share_count() > 1 {
            v.ptr_id()
        } else {
            None
        }
    }

    #[inline]
    fn child(
        &mut self,
        v: &&'a Value,
        cursor: &mut usize,
    ) -> Result<Option<(&'a Value, u32)>, EncodeError> {
        let v: &'a Value = v;
        let i = *cursor;
        let c = match v {
            Value::Tuple(items) | Value::List(items) => items.get(i),
            Value::Dict(d) => d
                .get_index(i / 2)
                .map(|(k, x)| if i & 1 == 0 { k } else { x }),
            _ => None,
        };
        *cursor = i + 1;
        Ok(c.map(|c| (c, 0)))
    }

    fn children(
        &mut self,
        v: &&'a Value,
        out: &mut Vec<(&'a Value, u32)>,
    ) -> Result<(), EncodeError> {
        let v: &'a Value = v;
        match v {
            Value::Tuple(items) | Value::List(items) => out.extend(items.iter().map(|x| (x, 0))),
            Value::Dict(d) => {
                out.reserve(d.len() * 2);
                for (k, x) in d.iter() {
                    out.push((k, 0));
                    out.push((x, 0));
                }
            }
            Value::Set(s) | Value::FrozenSet(s) => out.extend(s.iter().map(|x| (x, 0))),
            Value::Slice(s) => out.extend([(&s.start, 0), (&s.stop, 0), (&s.step, 0)]),
            Value::Code(c) => out.extend(
                [
                    &c.code,
                    &c.consts,
                    &c.names,
                    &c.localsplusnames,
                    &c.localspluskinds,
                    &c.filename,
                    &c.name,
                    &c.qualname,
                    &c.linetable,
                    &c.exceptiontable,
                ]
                .into_iter()
                .map(|x| (x, 0)),
            ),
            _ => {}
        }
        Ok(())
    }
}
