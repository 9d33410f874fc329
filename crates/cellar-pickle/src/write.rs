//! The Rust [`Value`] as a [`Source`] of the encoder core (`crate::encode`): `cellar_pickle::dumps`.
//!
//! A value tree shares explicitly (`Arc`), so only values held more than once get a memo slot
//! (`CPYTHON_MEMO = false`). Inert objects are written back in the form they record
//! ([`Construct`]); registered reducers turn a value into an inert object first; extension codes
//! come from the [`Registry`].

use std::borrow::Cow;
use std::sync::Arc;

use cellar_value::{Int, Value};

use crate::encode::{self, BigIntRepr, Encoder, Kind, Source};
use crate::error::PicklingError;
use crate::inert::{Construct, Inert};
use crate::ops::*;
use crate::registry::Registry;

pub use crate::encode::MAX_DUMP_DEPTH;

type Res<T> = Result<T, PicklingError>;

/// A value in the tree being written (`B`), or one the dump made (a reducer's result and its
/// parts, `O`: holding it adds one to its share count).
#[derive(Clone)]
pub(crate) enum VRef<'v> {
    B(&'v Value),
    O(Value),
}

impl VRef<'_> {
    fn get(&self) -> &Value {
        match self {
            VRef::B(v) => v,
            VRef::O(v) => v,
        }
    }
}

/// Items of a container, borrowed or owned.
pub(crate) enum Seq<'v> {
    B(std::slice::Iter<'v, Value>),
    O(std::vec::IntoIter<Value>),
}

impl<'v> Iterator for Seq<'v> {
    type Item = VRef<'v>;
    #[inline]
    fn next(&mut self) -> Option<VRef<'v>> {
        match self {
            Seq::B(it) => it.next().map(VRef::B),
            Seq::O(it) => it.next().map(VRef::O),
        }
    }
    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Seq::B(it) => it.size_hint(),
            Seq::O(it) => it.size_hint(),
        }
    }
}

impl ExactSizeIterator for Seq<'_> {}

/// Pairs of a dict, borrowed or owned.
pub(crate) enum Pairs<'v> {
    B(&'v cellar_value::Dict, usize),
    O(std::vec::IntoIter<(Value, Value)>),
}

impl<'v> Iterator for Pairs<'v> {
    type Item = (VRef<'v>, VRef<'v>);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Pairs::B(d, i) => {
                let (k, v) = d.get_index(*i)?;
                *i += 1;
                Some((VRef::B(k), VRef::B(v)))
            }
            Pairs::O(it) => it.next().map(|(k, v)| (VRef::O(k), VRef::O(v))),
        }
    }
    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Pairs::B(d, i) => (d.len() - *i, Some(d.len() - *i)),
            Pairs::O(it) => it.size_hint(),
        }
    }
}

impl ExactSizeIterator for Pairs<'_> {}

struct ValueSource<'r, 'v> {
    reg: &'r Registry,
    tree: std::marker::PhantomData<&'v Value>,
    /// Originals replaced by a reducer's result, kept so their addresses stay memo keys.
    keep: Vec<Value>,
    /// The next `kind` call skips the reducers (none applied to that value).
    bypass: bool,
}

pub(crate) fn dumps(value: &Value, protocol: u8, reg: &Registry) -> Res<Vec<u8>> {
    let src = ValueSource {
        reg,
        tree: std::marker::PhantomData,
        keep: Vec::new(),
        bypass: false,
    };
    encode::encode(src, &VRef::B(value), protocol, true)
}

impl<'v> Source for ValueSource<'_, 'v> {
    type Obj = VRef<'v>;
    type Seq = Seq<'v>;
    type Pairs = Pairs<'v>;
    type Error = PicklingError;
    const CPYTHON_MEMO: bool = false;

    #[inline]
    fn kind(&mut self, obj: &VRef<'v>) -> Res<Kind> {
        let v = obj.get();
        if !self.reg.reducers.is_empty() && !std::mem::take(&mut self.bypass) && !Inert::is_inert(v)
        {
            return Ok(Kind::Object);
        }
        Ok(match v {
            Value::None => Kind::None,
            Value::Bool(b) => Kind::Bool(*b),
            Value::Int(Int::Small(i)) => Kind::Int(*i),
            Value::Int(Int::Big(_)) => Kind::BigInt,
            Value::Float(f) => Kind::Float(*f),
            Value::Complex(re, im) => Kind::Complex(*re, *im),
            Value::Str(_) => Kind::Str,
            Value::Bytes(_) => Kind::Bytes,
            Value::ByteArray(_) => Kind::ByteArray,
            Value::Tuple(t) => Kind::Tuple(t.len()),
            Value::List(_) => Kind::List,
            Value::Dict(_) => Kind::Dict,
            Value::Set(_) => Kind::Set,
            Value::FrozenSet(_) => Kind::FrozenSet,
            Value::Ellipsis | Value::StopIteration | Value::Slice(_) | Value::Object(_) => {
                Kind::Object
            }
            Value::Code(_) => return Err(PicklingError::new("cannot pickle 'code' object")),
        })
    }

    #[inline]
    fn data<'a>(&mut self, obj: &'a VRef<'v>) -> Res<Cow<'a, [u8]>> {
        match obj.get() {
            Value::Str(s) => Ok(Cow::Borrowed(s.as_bytes())),
            Value::Bytes(b) => Ok(Cow::Borrowed(&b[..])),
            Value::ByteArray(b) => Ok(Cow::Borrowed(&b[..])),
            _ => Err(PicklingError::new("not a str, bytes or bytearray")),
        }
    }

    #[inline]
    fn memo_id(&self, obj: &VRef<'v>) -> Option<usize> {
        // Only a value held more than once can recur; our own handle on an owned one counts.
        let held = match obj {
            VRef::B(_) => 1,
            VRef::O(_) => 2,
        };
        fn id<T: ?Sized>(a: &Arc<T>) -> (usize, usize) {
            (Arc::strong_count(a), Arc::as_ptr(a) as *const u8 as usize)
        }
        let (count, ptr) = match obj.get() {
            Value::Str(a) => id(a),
            Value::Bytes(a) => id(a),
            Value::ByteArray(a) => id(a),
            Value::Tuple(a) | Value::List(a) => id(a),
            Value::Dict(a) => id(a),
            Value::Set(a) | Value::FrozenSet(a) => id(a),
            Value::Slice(a) => id(a),
            Value::Object(a) => id(a),
            _ => return None,
        };
        (count > held).then_some(ptr)
    }

    fn items(&mut self, obj: &VRef<'v>) -> Res<Seq<'v>> {
        match obj {
            VRef::B(v) => match v {
                Value::Tuple(t) | Value::List(t) => Ok(Seq::B(t.iter())),
                Value::Set(s) | Value::FrozenSet(s) => {
                    Ok(Seq::O(s.iter().cloned().collect::<Vec<_>>().into_iter()))
                }
                _ => Err(PicklingError::new("not a container")),
            },
            VRef::O(v) => match v {
                #[allow(clippy::unnecessary_to_owned)] // Seq::O owns its items
                Value::Tuple(t) | Value::List(t) => Ok(Seq::O(t.to_vec().into_iter())),
                Value::Set(s) | Value::FrozenSet(s) => {
                    Ok(Seq::O(s.iter().cloned().collect::<Vec<_>>().into_iter()))
                }
                _ => Err(PicklingError::new("not a container")),
            },
        }
    }

    fn pairs(&mut self, obj: &VRef<'v>) -> Res<Pairs<'v>> {
        match obj {
            VRef::B(Value::Dict(d)) => Ok(Pairs::B(d, 0)),
            VRef::O(Value::Dict(d)) => Ok(Pairs::O(
                d.iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
                    .into_iter(),
            )),
            _ => Err(PicklingError::new("not a dict")),
        }
    }

    fn big_int(&mut self, obj: &VRef<'v>, le: bool) -> Res<BigIntRepr> {
        let Value::Int(i) = obj.get() else {
            return Err(PicklingError::new("not an int"));
        };
        let b = i.to_bigint();
        if le {
            let bytes = if b == 0.into() {
                Vec::new()
            } else {
                b.to_signed_bytes_le()
            };
            return Ok(BigIntRepr::Le(bytes));
        }
        let s = b.to_string();
        let digits = s.trim_start_matches('-').len();
        if digits > 4300 {
            return Err(PicklingError::new(format!(
                "Exceeds the limit (4300 digits) for integer string conversion; use sys.set_int_max_str_digits() to increase the limit (value has {digits} digits)"
            )));
        }
        Ok(BigIntRepr::Decimal(s))
    }

    fn save_object(enc: &mut Encoder<Self>, obj: &VRef<'v>) -> Res<()> {
        let v = obj.get();
        let src = enc.source();
        if !src.reg.reducers.is_empty() && !Inert::is_inert(v) {
            let reducers = src.reg.reducers.clone();
            for r in &reducers {
                if let Some(o) = r(v) {
                    enc.source().keep.push(v.clone());
                    save_inert(enc, None, &o)?;
                    // memoize the original value as this object
                    enc.memoize(obj);
                    return Ok(());
                }
            }
            // No reducer: the value as it is.
            return save_plain(enc, obj);
        }
        save_plain(enc, obj)
    }

    fn extension_code(&self, module: &str, name: &str) -> Option<i32> {
        self.reg.extension_code(module, name)
    }

    fn error(&self, msg: String) -> PicklingError {
        PicklingError::new(msg)
    }
}

/// A value the core hands back as [`Kind::Object`] with no reducer applying.
fn save_plain<'v>(enc: &mut Encoder<ValueSource<'_, 'v>>, obj: &VRef<'v>) -> Res<()> {
    match obj.get() {
        Value::Ellipsis => enc.save_global("builtins", "Ellipsis"),
        Value::StopIteration => enc.save_global("builtins", "StopIteration"),
        Value::Slice(s) => {
            enc.save_global("builtins", "slice")?;
            let parts = [s.start.clone(), s.stop.clone(), s.step.clone()].map(VRef::O);
            enc.save_tuple_of(&parts)?;
            enc.op(REDUCE);
            enc.memoize(obj);
            Ok(())
        }
        Value::Object(o) => {
            let o = o.clone();
            save_inert(enc, Some(obj), &o)
        }
        _ => {
            // Basic types reach here only when reducers are registered and none applied: write
            // them by kind, the reducers out of the way for this one value.
            enc.source().bypass = true;
            enc.save(obj)
        }
    }
}

/// An inert object: pickle.py's `save_reduce` with the creation form the object records;
/// memoized as `as_value` after it is created.
fn save_inert<'v>(
    enc: &mut Encoder<ValueSource<'_, 'v>>,
    as_value: Option<&VRef<'v>>,
    o: &Inert,
) -> Res<()> {
    let args: Vec<VRef<'v>> = match &o.args {
        Value::Tuple(t) => t.iter().cloned().map(VRef::O).collect(),
        Value::None => Vec::new(),
        _ => return Err(PicklingError::new("inert object args must be a tuple")),
    };
    let class = || VRef::O(Inert::global(&o.module, &o.name).to_value());
    match o.construct {
        Construct::Global => return enc.save_global(&o.module, &o.name),
        Construct::Reduce => {
            enc.save_global(&o.module, &o.name)?;
            enc.save_tuple_of(&args)?;
            enc.op(REDUCE);
        }
        Construct::NewObj => {
            if enc.protocol() >= 2 {
                enc.save_global(&o.module, &o.name)?;
                enc.save_tuple_of(&args)?;
                enc.op(NEWOBJ);
            } else {
                enc.save_global("copyreg", "__newobj__")?;
                let mut full = vec![class()];
                full.extend(args);
                enc.save_tuple_of(&full)?;
                enc.op(REDUCE);
            }
        }
        Construct::NewObjEx => {
            let kwargs = VRef::O(match &o.kwargs {
                Value::None => Value::dict([]).unwrap_or(Value::None),
                k => k.clone(),
            });
            if enc.protocol() >= 4 {
                enc.save_global(&o.module, &o.name)?;
                enc.save_tuple_of(&args)?;
                enc.save(&kwargs)?;
                enc.op(NEWOBJ_EX);
            } else {
                enc.save_global("copyreg", "__newobj_ex__")?;
                let args = VRef::O(Value::tuple(args.iter().map(|a| a.get().clone()).collect()));
                enc.save_tuple_of(&[class(), args, kwargs])?;
                enc.op(REDUCE);
            }
        }
        Construct::Call => {
            // args = (callee, *call_args): the callee (an inert object), then REDUCE.
            let Some((callee, rest)) = args.split_first() else {
                return Err(PicklingError::new("an inert call without its callee"));
            };
            enc.save(callee)?;
            enc.save_tuple_of(rest)?;
            enc.op(REDUCE);
        }
        Construct::Reconstructor => {
            enc.save_global("copyreg", "_reconstructor")?;
            let mut full = vec![class()];
            full.extend(args);
            enc.save_tuple_of(&full)?;
            enc.op(REDUCE);
        }
    }
    if let Some(v) = as_value {
        enc.memoize(v);
    }
    if !o.listitems.is_empty() {
        enc.appends(o.listitems.iter().cloned().map(VRef::O))?;
    }
    if !o.dictitems.is_empty() {
        enc.setitems(
            o.dictitems
                .iter()
                .map(|(k, v)| (VRef::O(k.clone()), VRef::O(v.clone()))),
        )?;
    }
    if !matches!(o.state, Value::None) {
        enc.save(&VRef::O(o.state.clone()))?;
        enc.op(BUILD);
    }
    Ok(())
}
