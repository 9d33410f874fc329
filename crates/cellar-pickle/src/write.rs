//! The `Value` source of the encoder ([`crate::encode`]): [`crate::dumps`] presents a cellar
//! [`Value`] tree to the one pickle encoder. Only values whose `Arc` is held more than once get
//! a memo identity (a tree's values cannot be met twice), registered reducers are applied to
//! every non-inert value, and inert objects are written back the way they were read.

use std::borrow::Cow;

use cellar_value::{Int, Value};

use crate::encode::{self, Args, Call, Callee, Ident, Node, Options, Reduction, Scalar, Source};
use crate::error::PicklingError;
use crate::inert::{Construct, Inert};
use crate::registry::Registry;

pub use crate::encode::MAX_DUMP_DEPTH;

/// A value being written: borrowed from the caller's tree, or owned (made by a reducer).
#[derive(Clone)]
pub(crate) enum VObj<'a> {
    Ref(&'a Value),
    Own(Value),
}

impl VObj<'_> {
    #[inline(always)]
    fn v(&self) -> &Value {
        match self {
            VObj::Ref(v) => v,
            VObj::Own(v) => v,
        }
    }
}

/// Items of a tuple, list, set or frozenset.
pub(crate) enum VItems<'a> {
    Slice(std::slice::Iter<'a, Value>),
    Refs(std::vec::IntoIter<&'a Value>),
    Own(std::vec::IntoIter<Value>),
}

impl<'a> Iterator for VItems<'a> {
    type Item = Result<VObj<'a>, PicklingError>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            VItems::Slice(it) => it.next().map(|v| Ok(VObj::Ref(v))),
            VItems::Refs(it) => it.next().map(|v| Ok(VObj::Ref(v))),
            VItems::Own(it) => it.next().map(|v| Ok(VObj::Own(v))),
        }
    }
}

/// Pairs of a dict.
pub(crate) enum VPairs<'a> {
    Dict(&'a cellar_value::Dict, usize),
    Own(std::vec::IntoIter<(Value, Value)>),
}

impl<'a> Iterator for VPairs<'a> {
    type Item = Result<(VObj<'a>, VObj<'a>), PicklingError>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            VPairs::Dict(d, i) => {
                let (k, v) = d.get_index(*i)?;
                *i += 1;
                Some(Ok((VObj::Ref(k), VObj::Ref(v))))
            }
            VPairs::Own(it) => it.next().map(|(k, v)| Ok((VObj::Own(k), VObj::Own(v)))),
        }
    }
}

struct ValueSource<'r, 'a> {
    reg: &'r Registry,
    _tree: std::marker::PhantomData<&'a Value>,
}

pub(crate) fn dumps(value: &Value, protocol: u8, reg: &Registry) -> Result<Vec<u8>, PicklingError> {
    let mut src = ValueSource {
        reg,
        _tree: std::marker::PhantomData,
    };
    let opts = Options {
        protocol,
        fix_imports: true,
        memo_all: false,
        nested_getattr: false,
        registry: Some(reg),
    };
    encode::encode(&mut src, &VObj::Ref(value), opts)
}

/// An inert object's node; `wrap` makes a handle of one of its parts.
fn inert_node<'n, 'b, 'a>(
    o: &'b Inert,
    wrap: &dyn Fn(&'b Value) -> VObj<'a>,
    name: impl Fn(&'b str) -> Cow<'n, str>,
) -> Result<Node<'n, VObj<'a>>, PicklingError> {
    let args: Vec<&'b Value> = match &o.args {
        Value::Tuple(t) => t.iter().collect(),
        Value::None => Vec::new(),
        _ => return Err(PicklingError::new("inert object args must be a tuple")),
    };
    let named = || Callee::Named(o.module.clone(), o.name.clone());
    let items = |a: &[&'b Value]| a.iter().map(|v| wrap(v)).collect::<Vec<_>>();
    let call = match o.construct {
        Construct::Global => {
            return Ok(Node::Global {
                module: name(&o.module),
                name: name(&o.name),
            })
        }
        Construct::Reduce => Call::Reduce {
            func: named(),
            args: Args::Items(items(&args)),
        },
        Construct::NewObj => Call::NewObj {
            cls: named(),
            args: Args::Items(items(&args)),
        },
        Construct::NewObjEx => Call::NewObjEx {
            cls: named(),
            args: Args::Items(items(&args)),
            kwargs: match &o.kwargs {
                Value::None => None,
                k => Some(wrap(k)),
            },
        },
        Construct::Call => {
            // args = (callee, *call_args): the callee (an inert object), then REDUCE.
            let Some((f, rest)) = args.split_first() else {
                return Err(PicklingError::new("an inert call without its callee"));
            };
            Call::Reduce {
                func: Callee::Obj(wrap(f)),
                args: Args::Items(items(rest)),
            }
        }
        Construct::Reconstructor => Call::Reconstructor {
            cls: named(),
            args: items(&args),
        },
    };
    Ok(Node::Reduce(Box::new(Reduction {
        call,
        listitems: o.listitems.iter().map(wrap).collect(),
        dictitems: o
            .dictitems
            .iter()
            .map(|(k, v)| (wrap(k), wrap(v)))
            .collect(),
        state: match &o.state {
            Value::None => None,
            s => Some(wrap(s)),
        },
    })))
}

impl<'a> Source for ValueSource<'_, 'a> {
    type Obj = VObj<'a>;
    type Error = PicklingError;
    type Items = VItems<'a>;
    type Pairs = VPairs<'a>;

    #[inline]
    fn node<'n>(
        &mut self,
        o: &'n VObj<'a>,
        _proto: u8,
    ) -> Result<Node<'n, VObj<'a>>, PicklingError> {
        let v = o.v();
        if !self.reg.reducers.is_empty() && !Inert::is_inert(v) {
            for r in &self.reg.reducers {
                if let Some(obj) = r(v) {
                    return inert_node(&obj, &|x: &Value| VObj::Own(x.clone()), |s: &str| {
                        Cow::Owned(s.to_owned())
                    });
                }
            }
        }
        Ok(match v {
            Value::None => Node::None,
            Value::Bool(b) => Node::Bool(*b),
            Value::Int(Int::Small(i)) => Node::Int(*i),
            Value::Int(Int::Big(b)) => Node::BigInt(Cow::Owned(b.to_signed_bytes_le())),
            Value::Float(f) => Node::Float(*f),
            Value::Complex(re, im) => Node::Complex(*re, *im),
            Value::Str(s) => Node::Str(Cow::Borrowed(s.as_bytes())),
            Value::Bytes(b) => Node::Bytes(Cow::Borrowed(b)),
            Value::ByteArray(b) => Node::ByteArray(Cow::Borrowed(b)),
            Value::Tuple(t) => Node::Tuple(t.len()),
            Value::List(t) => Node::List(t.len()),
            Value::Dict(d) => Node::Dict(d.len()),
            Value::Set(s) => Node::Set(s.len()),
            Value::FrozenSet(s) => Node::FrozenSet(s.len()),
            Value::Ellipsis => Node::Global {
                module: Cow::Borrowed("builtins"),
                name: Cow::Borrowed("Ellipsis"),
            },
            Value::StopIteration => Node::Global {
                module: Cow::Borrowed("builtins"),
                name: Cow::Borrowed("StopIteration"),
            },
            Value::Slice(s) => {
                let parts = [&s.start, &s.stop, &s.step];
                let args = match o {
                    VObj::Ref(Value::Slice(s)) => {
                        vec![VObj::Ref(&s.start), VObj::Ref(&s.stop), VObj::Ref(&s.step)]
                    }
                    _ => parts.iter().map(|p| VObj::Own((*p).clone())).collect(),
                };
                Node::Reduce(Box::new(Reduction {
                    call: Call::Reduce {
                        func: Callee::Named("builtins".into(), "slice".into()),
                        args: Args::Items(args),
                    },
                    listitems: Vec::new(),
                    dictitems: Vec::new(),
                    state: None,
                }))
            }
            Value::Code(_) => return Err(PicklingError::new("cannot pickle 'code' object")),
            Value::Object(obj) => match o {
                VObj::Ref(Value::Object(obj)) => inert_node(
                    obj,
                    &|x: &'a Value| VObj::Ref(x),
                    |s: &'a str| -> Cow<'n, str> { Cow::Borrowed(s) },
                )?,
                _ => inert_node(obj, &|x: &Value| VObj::Own(x.clone()), |s: &str| {
                    Cow::Owned(s.to_owned())
                })?,
            },
        })
    }

    #[inline]
    fn id(&self, o: &VObj<'a>) -> Ident {
        let v = o.v();
        if self.reg.reducers.is_empty() {
            match v {
                Value::None => return Ident::Scalar(Scalar::None),
                Value::Bool(b) => return Ident::Scalar(Scalar::Bool(*b)),
                Value::Int(Int::Small(i)) => return Ident::Scalar(Scalar::Int(*i)),
                Value::Float(f) => return Ident::Scalar(Scalar::Float(*f)),
                _ => {}
            }
        }
        Ident::Obj(match o {
            VObj::Ref(v) => shared_id(v),
            VObj::Own(_) => None,
        })
    }

    fn items(&mut self, o: &VObj<'a>) -> Result<VItems<'a>, PicklingError> {
        Ok(match o {
            VObj::Ref(v) => match v {
                Value::Tuple(t) | Value::List(t) => VItems::Slice(t.iter()),
                Value::Set(s) | Value::FrozenSet(s) => {
                    VItems::Refs(s.iter().collect::<Vec<_>>().into_iter())
                }
                _ => VItems::Own(Vec::new().into_iter()),
            },
            VObj::Own(v) => VItems::Own(
                match v {
                    Value::Tuple(t) | Value::List(t) => t.to_vec(),
                    Value::Set(s) | Value::FrozenSet(s) => s.iter().cloned().collect(),
                    _ => Vec::new(),
                }
                .into_iter(),
            ),
        })
    }

    fn pairs(&mut self, o: &VObj<'a>) -> Result<VPairs<'a>, PicklingError> {
        Ok(match o {
            VObj::Ref(Value::Dict(d)) => VPairs::Dict(d, 0),
            VObj::Own(Value::Dict(d)) => VPairs::Own(
                d.iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
                    .into_iter(),
            ),
            _ => VPairs::Own(Vec::new().into_iter()),
        })
    }

    fn int_decimal(&mut self, o: &VObj<'a>) -> Result<String, PicklingError> {
        let Value::Int(i) = o.v() else {
            return Err(PicklingError::new("int_decimal of a non-int"));
        };
        match i {
            Int::Small(v) => Ok(v.to_string()),
            Int::Big(b) => {
                let s = b.to_string();
                if b.bits() > 14_300 {
                    let digits = s.trim_start_matches('-').len();
                    if digits > 4300 {
                        return Err(PicklingError::new(format!(
                            "Exceeds the limit (4300 digits) for integer string conversion; use sys.set_int_max_str_digits() to increase the limit (value has {digits} digits)"
                        )));
                    }
                }
                Ok(s)
            }
        }
    }
}

/// The identity of a value that may appear more than once in the tree (a shared `Arc`); values
/// held by a single handle cannot recur, so they are never memoized.
#[inline]
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
