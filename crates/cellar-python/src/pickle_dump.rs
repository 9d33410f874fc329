//! Python objects as a [`Source`] of cellar-pickle's encoder core: `cellar.pickle.dumps`.
//!
//! The core (`cellar_pickle::encode`) decides every byte: opcodes per protocol, framing, memo,
//! batching, globals, nesting limit and messages. This module only says what a Python object
//! is (exact basic types by `cast_exact`, str as UTF-8 with surrogatepass), hands out items,
//! keys the memo on object identity (every object gets a memo slot, as in CPython, and is kept
//! alive while memoized), and writes what is not a basic type through the core's reduce
//! primitives: `cellar.pickle.Inert` objects written back the way they were read, anything
//! `cellar.copyreg` registers through its reduce function, slices and ranges by
//! `__reduce_ex__`, classes and functions by name.

use std::borrow::Cow;

use pyo3::exceptions::{PyRecursionError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet,
    PyString, PyTuple, PyType,
};

use cellar_pickle::encode::{self, BigIntRepr, Encoder, Kind, Source, DEPTH_MESSAGE};
use cellar_pickle::ops as op;

static PICKLING_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn perr(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    match PICKLING_ERROR.import(py, "pickle", "PicklingError") {
        Ok(t) => PyErr::from_type(t.clone(), msg.into()),
        Err(e) => e,
    }
}

/// The Python object source.
struct PySource<'py> {
    py: Python<'py>,
    /// Memoized objects, kept alive so their addresses cannot be reused during the dump.
    keep: Vec<Bound<'py, PyAny>>,
    inert: Bound<'py, PyType>,
    reducer: Bound<'py, PyAny>,
    /// The current thread's stack floor (0: unknown).
    stack_floor: usize,
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
    let src = PySource {
        py,
        keep: Vec::with_capacity(64),
        inert,
        reducer,
        stack_floor: crate::util::stack_floor(),
    };
    let out = encode::encode(src, obj, proto, fix_imports)?;
    Ok(PyBytes::new(py, &out))
}

type Items<'py> = std::vec::IntoIter<Bound<'py, PyAny>>;

impl<'py> Source for PySource<'py> {
    type Obj = Bound<'py, PyAny>;
    type Seq = Items<'py>;
    type Pairs = std::vec::IntoIter<(Bound<'py, PyAny>, Bound<'py, PyAny>)>;
    type Error = PyErr;
    const CPYTHON_MEMO: bool = true;

    #[inline(always)]
    fn kind(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<Kind> {
        if obj.is_none() {
            return Ok(Kind::None);
        }
        if let Ok(b) = obj.cast_exact::<PyBool>() {
            return Ok(Kind::Bool(b.is_true()));
        }
        if obj.is_exact_instance_of::<PyInt>() {
            return Ok(match obj.extract::<i64>() {
                Ok(v) => Kind::Int(v),
                Err(_) => Kind::BigInt,
            });
        }
        if let Ok(f) = obj.cast_exact::<PyFloat>() {
            return Ok(Kind::Float(f.value()));
        }
        if obj.is_exact_instance_of::<PyString>() {
            return Ok(Kind::Str);
        }
        if obj.is_exact_instance_of::<PyBytes>() {
            return Ok(Kind::Bytes);
        }
        if let Ok(t) = obj.cast_exact::<PyTuple>() {
            return Ok(Kind::Tuple(t.len()));
        }
        if obj.is_exact_instance_of::<PyList>() {
            return Ok(Kind::List);
        }
        if obj.is_exact_instance_of::<PyDict>() {
            return Ok(Kind::Dict);
        }
        if obj.is_exact_instance_of::<PySet>() {
            return Ok(Kind::Set);
        }
        if obj.is_exact_instance_of::<PyFrozenSet>() {
            return Ok(Kind::FrozenSet);
        }
        if obj.is_exact_instance_of::<PyByteArray>() {
            return Ok(Kind::ByteArray);
        }
        if let Ok(c) = obj.cast_exact::<PyComplex>() {
            return Ok(Kind::Complex(c.real(), c.imag()));
        }
        Ok(Kind::Object)
    }

    #[inline]
    fn data<'a>(&mut self, obj: &'a Bound<'py, PyAny>) -> PyResult<Cow<'a, [u8]>> {
        if let Ok(s) = obj.cast_exact::<PyString>() {
            return str_utf8(s);
        }
        if let Ok(b) = obj.cast_exact::<PyBytes>() {
            return Ok(Cow::Borrowed(b.as_bytes()));
        }
        Ok(Cow::Owned(obj.cast::<PyByteArray>()?.to_vec()))
    }

    #[inline(always)]
    fn memo_id(&self, obj: &Bound<'py, PyAny>) -> Option<usize> {
        Some(obj.as_ptr() as usize)
    }

    #[inline]
    fn retain(&mut self, obj: &Bound<'py, PyAny>) {
        self.keep.push(obj.clone());
    }

    fn items(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<Items<'py>> {
        let v: Vec<_> = if let Ok(t) = obj.cast_exact::<PyTuple>() {
            t.iter().collect()
        } else if let Ok(l) = obj.cast_exact::<PyList>() {
            l.iter().collect()
        } else if let Ok(s) = obj.cast_exact::<PySet>() {
            s.iter().collect()
        } else if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
            s.iter().collect()
        } else {
            obj.try_iter()?.collect::<PyResult<_>>()?
        };
        Ok(v.into_iter())
    }

    fn pairs(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<Self::Pairs> {
        let d = obj.cast::<PyDict>()?;
        Ok(d.iter().collect::<Vec<_>>().into_iter())
    }

    fn big_int(&mut self, obj: &Bound<'py, PyAny>, le: bool) -> PyResult<BigIntRepr> {
        if le {
            return long_bytes(obj).map(BigIntRepr::Le);
        }
        Ok(BigIntRepr::Decimal(obj.repr()?.to_str()?.to_owned()))
    }

    fn save_object(enc: &mut Encoder<Self>, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let py = enc.source().py;
        if obj.is_instance(&enc.source().inert)? {
            return save_inert(enc, obj);
        }
        if obj.is(py.Ellipsis()) {
            return enc.save_global_as(obj, "builtins", "Ellipsis");
        }
        if obj.is(py.NotImplemented()) {
            return enc.save_global_as(obj, "builtins", "NotImplemented");
        }
        // copyreg's dispatch table comes before the built-in reductions below, as in pickle.
        let rv = enc.source().reducer.call1((obj,))?;
        if !rv.is_none() {
            return save_reduce_value(enc, obj, &rv);
        }
        if obj.is_exact_instance_of::<pyo3::types::PySlice>()
            || obj.is_exact_instance_of::<pyo3::types::PyRange>()
        {
            let rv = obj.call_method1(intern!(py, "__reduce_ex__"), (enc.protocol(),))?;
            return save_reduce_value(enc, obj, &rv);
        }
        if obj.is_instance_of::<PyType>()
            || obj.is_instance_of::<pyo3::types::PyCFunction>()
            || obj.is_instance_of::<pyo3::types::PyFunction>()
        {
            let (m, n) = global_names(obj)?;
            return enc.save_global_as(obj, &m, &n);
        }
        Err(perr(
            py,
            format!(
                "cellar.pickle cannot pickle '{}' object: register its type with \
                 cellar.copyreg.pickle(), or use the stdlib's pickle",
                obj.get_type().name()?
            ),
        ))
    }

    fn make_str(&mut self, text: &str, interned: bool) -> Option<Bound<'py, PyAny>> {
        Some(if interned {
            PyString::intern(self.py, text).into_any()
        } else {
            PyString::new(self.py, text).into_any()
        })
    }

    #[inline]
    fn stack_ok(&self) -> bool {
        crate::util::stack_here() >= self.stack_floor
    }

    fn error(&self, msg: String) -> PyErr {
        perr(self.py, msg)
    }

    fn depth_error(&self) -> PyErr {
        PyRecursionError::new_err(DEPTH_MESSAGE)
    }
}

/// A str's UTF-8 bytes (lone surrogates with surrogatepass, as pickle writes them).
#[inline]
fn str_utf8<'a>(s: &'a Bound<'_, PyString>) -> PyResult<Cow<'a, [u8]>> {
    let mut size: ffi::Py_ssize_t = 0;
    // SAFETY: the GIL is held (`s` is a Bound) and `s` is a live str object.
    let p = unsafe { ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut size) };
    if p.is_null() {
        // Lone surrogates: UTF-8 with surrogatepass, as pickle does.
        // SAFETY: the GIL is held; the pending UnicodeEncodeError is replaced by the retry.
        unsafe { ffi::PyErr_Clear() };
        let b = s.call_method1(intern!(s.py(), "encode"), ("utf-8", "surrogatepass"))?;
        return Ok(Cow::Owned(b.cast::<PyBytes>()?.as_bytes().to_vec()));
    }
    // SAFETY: `p` points to `size` bytes of UTF-8 cached in the str object, which lives as long
    // as the borrow of `s` ('a) and is immutable.
    Ok(Cow::Borrowed(unsafe {
        std::slice::from_raw_parts(p.cast::<u8>(), size as usize)
    }))
}

type Enc<'py> = Encoder<PySource<'py>>;

/// A reduce value (a string naming a global, or a 2-6 tuple), as pickle's `save_reduce`.
fn save_reduce_value<'py>(
    enc: &mut Enc<'py>,
    obj: &Bound<'py, PyAny>,
    rv: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let py = obj.py();
    if let Ok(s) = rv.cast::<PyString>() {
        let m: String = obj
            .getattr(intern!(py, "__module__"))
            .and_then(|m| m.extract())
            .map_err(|_| perr(py, "can't pickle a global without a __module__"))?;
        return enc.save_global_as(obj, &m, s.to_str()?);
    }
    let Ok(t) = rv.cast::<PyTuple>() else {
        return Err(perr(py, "__reduce__ must return a string or tuple"));
    };
    if !(2..=6).contains(&t.len()) {
        return Err(perr(
            py,
            "tuple returned by __reduce__ must contain 2 through 6 elements",
        ));
    }
    let get =
        |i: usize| -> Option<Bound<'py, PyAny>> { t.get_item(i).ok().filter(|o| !o.is_none()) };
    let func = t.get_item(0)?;
    let args = t.get_item(1)?;
    let Ok(args) = args.cast::<PyTuple>() else {
        return Err(perr(
            py,
            "second item of the tuple returned by __reduce__ must be a tuple",
        ));
    };
    let fname: Option<String> = func
        .getattr(intern!(py, "__name__"))
        .ok()
        .and_then(|n| n.extract().ok());
    let proto = enc.protocol();
    if proto >= 2 && fname.as_deref() == Some("__newobj__") && !args.is_empty() {
        enc.save(&args.get_item(0)?)?;
        enc.save(args.get_slice(1, args.len()).as_any())?;
        enc.op(op::NEWOBJ);
    } else if proto >= 4 && fname.as_deref() == Some("__newobj_ex__") && args.len() == 3 {
        enc.save(&args.get_item(0)?)?;
        enc.save(&args.get_item(1)?)?;
        enc.save(&args.get_item(2)?)?;
        enc.op(op::NEWOBJ_EX);
    } else {
        enc.save(&func)?;
        enc.save(args.as_any())?;
        enc.op(op::REDUCE);
    }
    enc.end_reduce(obj);
    let listitems = get(3)
        .map(|l| l.try_iter().and_then(|i| i.collect::<PyResult<Vec<_>>>()))
        .transpose()?;
    let dictitems = get(4)
        .map(|d| {
            d.try_iter().and_then(|i| {
                i.map(|p| p.and_then(|p| p.extract::<(Bound<'py, PyAny>, Bound<'py, PyAny>)>()))
                    .collect::<PyResult<Vec<_>>>()
            })
        })
        .transpose()?;
    finish_reduce(enc, listitems, dictitems, get(2))
}

/// listitems, dictitems and state after a reduction.
fn finish_reduce<'py>(
    enc: &mut Enc<'py>,
    listitems: Option<Vec<Bound<'py, PyAny>>>,
    dictitems: Option<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>>,
    state: Option<Bound<'py, PyAny>>,
) -> PyResult<()> {
    if let Some(items) = listitems {
        enc.appends(items.into_iter())?;
    }
    if let Some(items) = dictitems {
        enc.setitems(items.into_iter())?;
    }
    if let Some(state) = state {
        enc.save(&state)?;
        enc.op(op::BUILD);
    }
    Ok(())
}

/// An inert object, written back the way it was read.
fn save_inert<'py>(enc: &mut Enc<'py>, obj: &Bound<'py, PyAny>) -> PyResult<()> {
    let py = obj.py();
    let module: String = obj.getattr(intern!(py, "module"))?.extract()?;
    let name: String = obj.getattr(intern!(py, "name"))?.extract()?;
    let construct: String = obj.getattr(intern!(py, "construct"))?.extract()?;
    let args = obj.getattr(intern!(py, "args"))?;
    let args = PyTuple::new(py, args.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
    let kwargs = obj.getattr(intern!(py, "kwargs"))?;
    let proto = enc.protocol();
    match construct.as_str() {
        "global" => return enc.save_global_as(obj, &module, &name),
        "reduce" => {
            enc.save_global(&module, &name)?;
            enc.save(args.as_any())?;
            enc.op(op::REDUCE);
        }
        "call" => {
            let func = obj.getattr(intern!(py, "func"))?;
            enc.save(&func)?;
            enc.save(args.as_any())?;
            enc.op(op::REDUCE);
        }
        "newobj" => {
            if proto >= 2 {
                enc.save_global(&module, &name)?;
                enc.save(args.as_any())?;
                enc.op(op::NEWOBJ);
            } else {
                enc.save_global("copyreg", "__newobj__")?;
                enc.op(op::MARK);
                enc.save_global(&module, &name)?;
                for a in args.iter() {
                    enc.save(&a)?;
                }
                enc.op(op::TUPLE);
                enc.op(op::REDUCE);
            }
        }
        "newobj_ex" => {
            let kwargs = if kwargs.is_none() {
                PyDict::new(py).into_any()
            } else {
                kwargs
            };
            if proto >= 4 {
                enc.save_global(&module, &name)?;
                enc.save(args.as_any())?;
                enc.save(&kwargs)?;
                enc.op(op::NEWOBJ_EX);
            } else {
                enc.save_global("copyreg", "__newobj_ex__")?;
                enc.tuple_start(3);
                enc.save_global(&module, &name)?;
                enc.save(args.as_any())?;
                enc.save(&kwargs)?;
                enc.tuple_end(3);
                enc.op(op::REDUCE);
            }
        }
        "reconstructor" => {
            enc.save_global("copyreg", "_reconstructor")?;
            enc.op(op::MARK);
            enc.save_global(&module, &name)?;
            for a in args.iter() {
                enc.save(&a)?;
            }
            enc.op(op::TUPLE);
            enc.op(op::REDUCE);
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "Inert.construct must be global, reduce, call, newobj, newobj_ex or \
                 reconstructor, not {other:?}"
            )))
        }
    }
    enc.end_reduce(obj);
    let listitems: Vec<_> = obj
        .getattr(intern!(py, "listitems"))?
        .try_iter()?
        .collect::<PyResult<_>>()?;
    let dictitems: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = obj
        .getattr(intern!(py, "dictitems"))?
        .try_iter()?
        .map(|p| p.and_then(|p| p.extract()))
        .collect::<PyResult<_>>()?;
    let state = obj.getattr(intern!(py, "state"))?;
    finish_reduce(
        enc,
        Some(listitems),
        Some(dictitems),
        (!state.is_none()).then_some(state),
    )
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

/// pickle's `encode_long`: minimal little-endian two's complement (b'' for 0). Public API only
/// (no `_PyLong_AsByteArray`, whose signature changed in 3.13): Rust arithmetic for ints that fit
/// an i64, else `int.bit_length()` and `int.to_bytes(n, 'little', signed=True)`.
fn long_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let py = obj.py();
    if let Ok(v) = obj.extract::<i64>() {
        return Ok(encode::encode_long_i64(v));
    }
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
