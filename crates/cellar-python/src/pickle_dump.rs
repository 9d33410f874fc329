//! Python objects as a source of cellar-pickle's one encoder: `cellar.pickle.dumps`.
//!
//! The encoder (`cellar_pickle::encode`: opcodes per protocol, framing, memo, batching, depth
//! limit, messages) is shared with the Rust API; this module only says what each Python object
//! is ([`Node`]), hands out its items, and gives every str, bytes, container and reduced object
//! its address as memo identity (`memo_all`, as CPython's pickler memoizes by `id()`), keeping
//! memoized objects alive until the dump ends. Objects other than basic types are written from
//! a reduce value: `cellar.pickle.Inert` objects the way they were read, classes and functions
//! by name, slices and ranges by `__reduce_ex__`, anything `cellar.copyreg` registers through
//! its reduce function. bytes below protocol 3 and bytearray below 5 are presented as the
//! reduce values CPython builds for them (real str/bytes objects, so CPython's cached
//! one-character objects are memoized by identity exactly as it does).

// Issue 12: every unsafe block documented, no unsafe operation without its own block (the
// crate-level attribute waits for the marshal modules).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::borrow::Cow;

use cellar_pickle::encode::{
    self, Args, Call, Callee, Ident, Node, Options, Reduction, Scalar, Source,
};
use cellar_pickle::PicklingError;
use pyo3::exceptions::{PyRecursionError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet,
    PyString, PyTuple, PyType,
};

/// Nesting deeper than this is refused as CPython's recursion limit would.
const MAX_DEPTH: usize = 1500;

static PICKLING_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn perr(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    match PICKLING_ERROR.import(py, "pickle", "PicklingError") {
        Ok(t) => PyErr::from_type(t.clone(), msg.into()),
        Err(e) => e,
    }
}

/// The source's error: a Python exception (the encoder's own errors become
/// `pickle.PicklingError`).
pub(crate) struct DumpError(PyErr);

impl From<PyErr> for DumpError {
    fn from(e: PyErr) -> Self {
        DumpError(e)
    }
}

impl From<PicklingError> for DumpError {
    fn from(e: PicklingError) -> Self {
        DumpError(Python::attach(|py| perr(py, e.message)))
    }
}

/// Items of a tuple or list (read by index, as `_pickle.c` does, so a list that changes while
/// it is written is never read out of bounds), or collected ones (sets, frozensets).
pub(crate) enum PyItems<'py> {
    List(pyo3::types::list::BoundListIterator<'py>),
    Tuple(pyo3::types::tuple::BoundTupleIterator<'py>),
    Vec(std::vec::IntoIter<Bound<'py, PyAny>>),
}

impl<'py> Iterator for PyItems<'py> {
    type Item = Result<Bound<'py, PyAny>, DumpError>;
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            PyItems::List(it) => it.next().map(Ok),
            PyItems::Tuple(it) => it.next().map(Ok),
            PyItems::Vec(v) => v.next().map(Ok),
        }
    }
}

type Pair<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

/// A dict's items, collected before any is written (as the previous encoder did).
pub(crate) type PyPairs<'py> =
    std::iter::Map<std::vec::IntoIter<Pair<'py>>, fn(Pair<'py>) -> Result<Pair<'py>, DumpError>>;

struct PySource<'py> {
    py: Python<'py>,
    inert: Bound<'py, PyType>,
    reducer: Bound<'py, PyAny>,
    /// Memoized objects, alive until the dump ends so their addresses are not reused.
    keep: Vec<Bound<'py, PyAny>>,
}

/// `dumps(obj, protocol, fix_imports, Inert, reducer)`.
pub(crate) fn dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    proto: u8,
    fix_imports: bool,
    inert: Bound<'py, PyType>,
    reducer: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut src = PySource {
        py,
        inert,
        reducer,
        keep: Vec::with_capacity(64),
    };
    let opts = Options {
        protocol: proto,
        fix_imports,
        memo_all: true,
        nested_getattr: true,
        registry: None,
    };
    let out = encode::encode(&mut src, obj, opts).map_err(|e| e.0)?;
    Ok(PyBytes::new(py, &out))
}

fn reduction<'py>(call: Call<Bound<'py, PyAny>>) -> Node<'static, Bound<'py, PyAny>> {
    Node::Reduce(Box::new(Reduction {
        call,
        listitems: Vec::new(),
        dictitems: Vec::new(),
        state: None,
    }))
}

fn named<O>(module: &str, name: &str) -> Callee<O> {
    Callee::Named(module.to_owned(), name.to_owned())
}

impl<'py> PySource<'py> {
    /// The node of an object that is not a basic type.
    fn object_node<'n>(
        &mut self,
        obj: &'n Bound<'py, PyAny>,
        proto: u8,
    ) -> Result<Node<'n, Bound<'py, PyAny>>, DumpError> {
        let py = self.py;
        if obj.is_instance(&self.inert)? {
            return self.inert_node(obj);
        }
        if obj.is(py.Ellipsis()) {
            return Ok(global("builtins", "Ellipsis"));
        }
        if obj.is(py.NotImplemented()) {
            return Ok(global("builtins", "NotImplemented"));
        }
        // copyreg's dispatch table comes before the built-in reductions below, as in pickle.
        let rv = self.reducer.call1((obj,))?;
        if !rv.is_none() {
            return self.reduce_value(obj, &rv, proto);
        }
        if obj.is_exact_instance_of::<pyo3::types::PySlice>()
            || obj.is_exact_instance_of::<pyo3::types::PyRange>()
        {
            let rv = obj.call_method1(intern!(py, "__reduce_ex__"), (proto,))?;
            return self.reduce_value(obj, &rv, proto);
        }
        if obj.is_instance_of::<PyType>()
            || obj.is_instance_of::<pyo3::types::PyCFunction>()
            || obj.is_instance_of::<pyo3::types::PyFunction>()
        {
            let (m, n) = global_names(obj)?;
            return Ok(Node::Global {
                module: Cow::Owned(m),
                name: Cow::Owned(n),
            });
        }
        Err(perr(
            py,
            format!(
                "cellar.pickle cannot pickle '{}' object: register its type with \
                 cellar.copyreg.pickle(), or use the stdlib's pickle",
                obj.get_type().name()?
            ),
        )
        .into())
    }

    /// A reduce value (a string naming a global, or a 2-6 tuple), as pickle's `save_reduce`
    /// reads it.
    fn reduce_value<'n>(
        &mut self,
        obj: &Bound<'py, PyAny>,
        rv: &Bound<'py, PyAny>,
        proto: u8,
    ) -> Result<Node<'n, Bound<'py, PyAny>>, DumpError> {
        let py = self.py;
        if let Ok(s) = rv.cast::<PyString>() {
            let m: String = obj
                .getattr(intern!(py, "__module__"))
                .and_then(|m| m.extract())
                .map_err(|_| perr(py, "can't pickle a global without a __module__"))?;
            return Ok(Node::Global {
                module: Cow::Owned(m),
                name: Cow::Owned(s.to_str()?.to_owned()),
            });
        }
        let Ok(t) = rv.cast::<PyTuple>() else {
            return Err(perr(py, "__reduce__ must return a string or tuple").into());
        };
        if !(2..=6).contains(&t.len()) {
            return Err(perr(
                py,
                "tuple returned by __reduce__ must contain 2 through 6 elements",
            )
            .into());
        }
        let get =
            |i: usize| -> Option<Bound<'py, PyAny>> { t.get_item(i).ok().filter(|o| !o.is_none()) };
        let func = t.get_item(0)?;
        let args = t.get_item(1)?;
        let Ok(args) = args.cast_into::<PyTuple>() else {
            return Err(perr(
                py,
                "second item of the tuple returned by __reduce__ must be a tuple",
            )
            .into());
        };
        let fname: Option<String> = func
            .getattr(intern!(py, "__name__"))
            .ok()
            .and_then(|n| n.extract().ok());
        let call = if proto >= 2 && fname.as_deref() == Some("__newobj__") && !args.is_empty() {
            let items: Vec<_> = args.iter().collect();
            Call::NewObj {
                cls: Callee::Obj(items[0].clone()),
                args: Args::Items(items[1..].to_vec()),
            }
        } else if proto >= 4 && fname.as_deref() == Some("__newobj_ex__") && args.len() == 3 {
            Call::NewObjEx {
                cls: Callee::Obj(args.get_item(0)?),
                args: Args::Obj(args.get_item(1)?),
                kwargs: Some(args.get_item(2)?),
            }
        } else {
            Call::Reduce {
                func: Callee::Obj(func),
                args: Args::Obj(args.into_any()),
            }
        };
        let listitems = match get(3) {
            Some(l) => l.try_iter()?.collect::<PyResult<Vec<_>>>()?,
            None => Vec::new(),
        };
        let dictitems = match get(4) {
            Some(d) => d
                .try_iter()?
                .map(|p| p.and_then(|p| p.extract::<Pair<'py>>()))
                .collect::<PyResult<Vec<_>>>()?,
            None => Vec::new(),
        };
        Ok(Node::Reduce(Box::new(Reduction {
            call,
            listitems,
            dictitems,
            state: get(2),
        })))
    }

    /// A `cellar.pickle.Inert` object, written back the way it was read.
    fn inert_node<'n>(
        &mut self,
        obj: &Bound<'py, PyAny>,
    ) -> Result<Node<'n, Bound<'py, PyAny>>, DumpError> {
        let py = self.py;
        let module: String = obj.getattr(intern!(py, "module"))?.extract()?;
        let name: String = obj.getattr(intern!(py, "name"))?.extract()?;
        let construct: String = obj.getattr(intern!(py, "construct"))?.extract()?;
        let args: Vec<Bound<'py, PyAny>> = obj
            .getattr(intern!(py, "args"))?
            .try_iter()?
            .collect::<PyResult<_>>()?;
        let kwargs = obj.getattr(intern!(py, "kwargs"))?;
        let cls = || Callee::Named(module.clone(), name.clone());
        let call = match construct.as_str() {
            "global" => {
                return Ok(Node::Global {
                    module: Cow::Owned(module),
                    name: Cow::Owned(name),
                })
            }
            "reduce" => Call::Reduce {
                func: cls(),
                args: Args::Items(args),
            },
            "call" => Call::Reduce {
                func: Callee::Obj(obj.getattr(intern!(py, "func"))?),
                args: Args::Items(args),
            },
            "newobj" => Call::NewObj {
                cls: cls(),
                args: Args::Items(args),
            },
            "newobj_ex" => Call::NewObjEx {
                cls: cls(),
                args: Args::Items(args),
                kwargs: (!kwargs.is_none()).then_some(kwargs),
            },
            "reconstructor" => Call::Reconstructor { cls: cls(), args },
            other => {
                return Err(PyValueError::new_err(format!(
                    "Inert.construct must be global, reduce, call, newobj, newobj_ex or \
                     reconstructor, not {other:?}"
                ))
                .into())
            }
        };
        let listitems: Vec<_> = obj
            .getattr(intern!(py, "listitems"))?
            .try_iter()?
            .collect::<PyResult<_>>()?;
        let dictitems: Vec<Pair<'py>> = obj
            .getattr(intern!(py, "dictitems"))?
            .try_iter()?
            .map(|p| p.and_then(|p| p.extract()))
            .collect::<PyResult<_>>()?;
        let state = obj.getattr(intern!(py, "state"))?;
        Ok(Node::Reduce(Box::new(Reduction {
            call,
            listitems,
            dictitems,
            state: (!state.is_none()).then_some(state),
        })))
    }
}

fn global<O>(module: &'static str, name: &'static str) -> Node<'static, O> {
    Node::Global {
        module: Cow::Borrowed(module),
        name: Cow::Borrowed(name),
    }
}

impl<'py> Source for PySource<'py> {
    type Obj = Bound<'py, PyAny>;
    type Error = DumpError;
    type Items = PyItems<'py>;
    type Pairs = PyPairs<'py>;

    fn node<'n>(
        &mut self,
        obj: &'n Bound<'py, PyAny>,
        proto: u8,
    ) -> Result<Node<'n, Bound<'py, PyAny>>, DumpError> {
        let py = self.py;
        if obj.is_none() {
            return Ok(Node::None);
        }
        if let Ok(f) = obj.cast_exact::<PyFloat>() {
            return Ok(Node::Float(f.value()));
        }
        if let Ok(b) = obj.cast_exact::<PyBool>() {
            return Ok(Node::Bool(b.is_true()));
        }
        if obj.is_exact_instance_of::<PyInt>() {
            return Ok(match obj.extract::<i64>() {
                Ok(v) => Node::Int(v),
                Err(_) => Node::BigInt(Cow::Owned(long_bytes(obj)?)),
            });
        }
        if let Ok(s) = obj.cast_exact::<PyString>() {
            return Ok(Node::Str(match s.to_str() {
                Ok(t) => Cow::Borrowed(t.as_bytes()),
                Err(_) => {
                    // Lone surrogates: UTF-8 with surrogatepass, as pickle does.
                    let b = s.call_method1(intern!(py, "encode"), ("utf-8", "surrogatepass"))?;
                    Cow::Owned(
                        b.cast::<PyBytes>()
                            .map_err(PyErr::from)?
                            .as_bytes()
                            .to_vec(),
                    )
                }
            }));
        }
        if let Ok(b) = obj.cast_exact::<PyBytes>() {
            let data = b.as_bytes();
            if proto < 3 && !data.is_empty() {
                // CPython's save_bytes: _codecs.encode(str(obj, 'latin1'), 'latin1').
                let text: String = data.iter().map(|&c| c as char).collect();
                return Ok(reduction(Call::Reduce {
                    func: named("_codecs", "encode"),
                    args: Args::Items(vec![
                        PyString::new(py, &text).into_any(),
                        intern!(py, "latin1").clone().into_any(),
                    ]),
                }));
            }
            return Ok(Node::Bytes(Cow::Borrowed(data)));
        }
        if let Ok(t) = obj.cast_exact::<PyTuple>() {
            return Ok(Node::Tuple(t.len()));
        }
        if let Ok(l) = obj.cast_exact::<PyList>() {
            return Ok(Node::List(l.len()));
        }
        if let Ok(d) = obj.cast_exact::<PyDict>() {
            return Ok(Node::Dict(d.len()));
        }
        if let Ok(s) = obj.cast_exact::<PySet>() {
            return Ok(Node::Set(s.len()));
        }
        if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
            return Ok(Node::FrozenSet(s.len()));
        }
        if let Ok(b) = obj.cast_exact::<PyByteArray>() {
            let data = b.to_vec();
            if proto >= 5 {
                return Ok(Node::ByteArray(Cow::Owned(data)));
            }
            let args = if data.is_empty() {
                Vec::new()
            } else {
                vec![PyBytes::new(py, &data).into_any()]
            };
            return Ok(reduction(Call::Reduce {
                func: named("builtins", "bytearray"),
                args: Args::Items(args),
            }));
        }
        if let Ok(c) = obj.cast_exact::<PyComplex>() {
            return Ok(Node::Complex(c.real(), c.imag()));
        }
        self.object_node(obj, proto)
    }

    #[inline]
    fn id(&self, obj: &Bound<'py, PyAny>) -> Ident {
        // Written first and never memoized (as in CPython's save): None, bools, ints, floats.
        if obj.is_none() {
            return Ident::Scalar(Scalar::None);
        }
        if let Ok(f) = obj.cast_exact::<PyFloat>() {
            return Ident::Scalar(Scalar::Float(f.value()));
        }
        if let Ok(b) = obj.cast_exact::<PyBool>() {
            return Ident::Scalar(Scalar::Bool(b.is_true()));
        }
        if obj.is_exact_instance_of::<PyInt>() {
            return match obj.extract::<i64>() {
                Ok(v) => Ident::Scalar(Scalar::Int(v)),
                Err(_) => Ident::Obj(None),
            };
        }
        Ident::Obj(Some(obj.as_ptr() as usize))
    }

    #[inline]
    fn retain(&mut self, obj: &Bound<'py, PyAny>) {
        self.keep.push(obj.clone());
    }

    fn items(&mut self, obj: &Bound<'py, PyAny>) -> Result<PyItems<'py>, DumpError> {
        if let Ok(l) = obj.cast_exact::<PyList>() {
            return Ok(PyItems::List(l.clone().into_iter()));
        }
        if let Ok(t) = obj.cast_exact::<PyTuple>() {
            return Ok(PyItems::Tuple(t.clone().into_iter()));
        }
        let items: Vec<_> = obj.try_iter()?.collect::<PyResult<_>>()?;
        Ok(PyItems::Vec(items.into_iter()))
    }

    fn pairs(&mut self, obj: &Bound<'py, PyAny>) -> Result<PyPairs<'py>, DumpError> {
        let d = obj.cast::<PyDict>().map_err(PyErr::from)?;
        let pairs: Vec<Pair<'py>> = d.iter().collect();
        Ok(pairs.into_iter().map(Ok))
    }

    fn int_decimal(&mut self, obj: &Bound<'py, PyAny>) -> Result<String, DumpError> {
        Ok(obj.repr()?.to_str()?.to_owned())
    }

    #[inline]
    fn enter(&mut self, depth: usize) -> Result<(), DumpError> {
        if depth > MAX_DEPTH || crate::util::stack_here() < crate::util::stack_floor() {
            return Err(PyRecursionError::new_err(encode::DEPTH_MESSAGE).into());
        }
        Ok(())
    }
}

/// `__module__` and `__qualname__` of a class or function.
fn global_names(obj: &Bound<'_, PyAny>) -> PyResult<(String, String)> {
    let py = obj.py();
    let m: String = obj
        .getattr(intern!(py, "__module__"))
        .and_then(|m| m.extract())
        .map_err(|_| perr(py, "can't pickle a global without a __module__"))?;
    let n: String = obj
        .getattr(intern!(py, "__qualname__"))
        .and_then(|m| m.extract())
        .map_err(|_| perr(py, "can't pickle a global without a __qualname__"))?;
    if n.contains("<locals>") {
        return Err(perr(py, format!("Can't pickle local object {m}.{n}")));
    }
    Ok((m, n))
}

/// pickle's `encode_long` of an int beyond i64: `int.bit_length()` and
/// `int.to_bytes(n, 'little', signed=True)` (public API only; `_PyLong_AsByteArray` changed
/// its signature in 3.13).
fn long_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let py = obj.py();
    let bits: usize = obj.call_method0(intern!(py, "bit_length"))?.extract()?;
    let n = (bits >> 3) + 1;
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "signed"), true)?;
    let b = obj.call_method(
        intern!(py, "to_bytes"),
        (n, intern!(py, "little")),
        Some(&kwargs),
    )?;
    let mut buf = b.cast::<PyBytes>()?.as_bytes().to_vec();
    encode::trim_sign_byte(&mut buf);
    Ok(buf)
}
