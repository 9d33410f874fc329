//! Python objects as a [`Sink`] of the one pickle decoder (`cellar_pickle::decode`): the sink
//! behind `cellar.pickle.loads` / `load` / `Unpickler` and safe shelves.
//!
//! The opcode loop, the limits, the policy (what a global may be and do) and every format error
//! live in `cellar-pickle`'s `read.rs`; this sink only makes objects:
//! - scalars, strings (BINUNICODE with `surrogatepass`, Python 2 strings under the caller's
//!   `encoding` / `errors`, `'bytes'` keeping them as bytes) and containers;
//! - the values of globals the caller allowed (`allow=`, `cellar.copyreg`): the allowed object
//!   itself, or a namespace (the parent of an allowed nested class, a value that is never
//!   called); with `inert=True`, `cellar.pickle.Inert` objects for everything else;
//! - objects of allowed classes: `cls(*args)` (REDUCE, and INST / OBJ as pickle's
//!   `_instantiate`), `cls.__new__(cls, *args, **kwargs)` through the type's `tp_new` (NEWOBJ,
//!   NEWOBJ_EX, `__newobj__`, the `functools.partial` form), `copyreg._reconstructor(cls, base,
//!   state)`;
//! - BUILD only on what it created itself through an allowed class or callable (fresh objects:
//!   nobody else held a reference) and on inert objects, with `__setstate__` looked up on the
//!   class's MRO (never in the instance) or the default `__dict__` / slots update;
//!   APPEND / SETITEM / ADDITEMS on exact containers (never on one an allowed callable returned
//!   while others hold it), on inert objects and on created list/dict/set subclasses.
//!
//! The loop's per-slot depths cannot see a container that grows after it was nested (through
//! the memo): when a mutable container is pushed again ([`Sink::reused`]) the result's depth is
//! measured exactly at STOP. The cyclic GC is paused while decoding (the decoder creates no
//! garbage cycles and a collection over the half-built result is wasted time).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::exceptions::{
    PyEOFError, PyRecursionError, PyTypeError, PyUnicodeDecodeError, PyValueError,
};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyIterator,
    PyList, PySet, PyString, PyTuple, PyType,
};

use cellar_pickle::policy::Known;
use cellar_pickle::{
    Buffer, Construct, DecodeErrors, ErrorKind, GlobalRef, Items, Lookup, Shape, Sink,
    StringEncoding, UnpicklingError,
};
use cellar_value::PyStr;

use crate::pickle::PickleLoader;

/// A Python object the sink made (an owned reference).
type Obj<'py> = Bound<'py, PyAny>;

static UNPICKLING_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `pickle.UnpicklingError`, the stdlib's own class (so `except pickle.UnpicklingError` works).
fn unpickling_error(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    UNPICKLING_ERROR.import(py, "pickle", "UnpicklingError")
}

/// An `UnpicklingError(msg)`.
#[cold]
pub(crate) fn uerr(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    match unpickling_error(py) {
        Ok(t) => PyErr::from_type(t.clone(), msg.into()),
        Err(e) => e,
    }
}

/// An AttributeError from applying APPEND, SETITEMS, ADDITEMS or BUILD to an object of an
/// allowed class that lacks what the opcode needs (`append`, `add`, `__dict__`, a slot) is the
/// data's fault, not the class's: an UnpicklingError naming the opcode, the AttributeError as
/// its cause (CPython's unpickler lets the AttributeError through). Other exceptions (the
/// class's own `__setstate__`, `extend`, ... raising) pass unchanged.
#[cold]
fn data_error(py: Python<'_>, op: &str, e: PyErr) -> PyErr {
    if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) {
        let u = uerr(py, format!("{op}: {}", e.value(py)));
        u.set_cause(py, Some(e));
        u
    } else {
        e
    }
}

/// A failure of a load: the loop's own error or a Python exception.
pub(crate) enum LoadError {
    /// An error of the decoder loop (format, policy, limits).
    Core(UnpicklingError),
    /// A Python exception (raised by an allowed class, a codec, a hash, ...).
    Py(PyErr),
}

impl From<UnpicklingError> for LoadError {
    #[cold]
    fn from(e: UnpicklingError) -> Self {
        LoadError::Core(e)
    }
}

impl From<PyErr> for LoadError {
    #[cold]
    fn from(e: PyErr) -> Self {
        LoadError::Py(e)
    }
}

impl LoadError {
    /// The Python exception CPython raises for it.
    #[cold]
    pub(crate) fn into_pyerr(self, py: Python<'_>) -> PyErr {
        match self {
            LoadError::Py(e) => e,
            LoadError::Core(e) => match e.kind {
                ErrorKind::Unpickling => uerr(py, e.message),
                ErrorKind::Eof => PyEOFError::new_err(e.message),
                ErrorKind::Value => PyValueError::new_err(e.message),
                ErrorKind::Type => PyTypeError::new_err(e.message),
                ErrorKind::UnicodeDecode => PyUnicodeDecodeError::new_err((
                    "utf-8",
                    PyBytes::new(py, b"").unbind(),
                    0usize,
                    0usize,
                    e.message,
                )),
            },
        }
    }
}

type Res<T> = Result<T, LoadError>;

/// Hashes object addresses (distinct while the objects are kept alive, 16-byte aligned): one
/// multiply instead of SipHash, for the per-object bookkeeping of BUILD targets.
#[derive(Default, Clone, Copy)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    #[inline(always)]
    fn write_usize(&mut self, n: usize) {
        self.0 = ((n as u64) >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A set of object addresses.
type AddrSet = HashSet<usize, BuildHasherDefault<AddrHasher>>;
/// A map keyed by object address.
type AddrMap<V> = HashMap<usize, V, BuildHasherDefault<AddrHasher>>;

/// What an allowed global resolved to.
#[derive(Clone)]
pub(crate) enum PyGlobal<'py> {
    /// An object the caller allowed (`allow=`, `cellar.copyreg`).
    Allowed(Obj<'py>),
    /// The parent of an allowed nested class (`Outer` for `Outer.Inner`): a value, and the
    /// owner `getattr(Outer, 'Inner')` names, never called.
    Namespace(Obj<'py>),
}

/// The stdlib objects behind the default globals, by name (`builtins.object`, `range`, ...),
/// plus `copyreg._reconstructor` and `functools.partial`; taken once from modules that are
/// already imported.
struct Defaults {
    by_name: HashMap<(&'static str, &'static str), Py<PyAny>>,
    /// The same objects by address: what a `find_class` override returned is one of them?
    by_addr: HashMap<usize, Known>,
    reconstructor: Py<PyAny>,
    partial: Py<PyAny>,
}

static DEFAULTS: PyOnceLock<Defaults> = PyOnceLock::new();

fn defaults(py: Python<'_>) -> PyResult<&Defaults> {
    DEFAULTS.get_or_try_init(py, || {
        let mut by_name = HashMap::new();
        let mut by_addr = HashMap::new();
        for &(m, n, k) in cellar_pickle::policy::DEFAULT_GLOBALS {
            let o = py.import(m)?.getattr(n)?.unbind();
            by_addr.insert(o.as_ptr() as usize, k);
            by_name.insert((m, n), o);
        }
        Ok(Defaults {
            by_name,
            by_addr,
            reconstructor: py.import("copyreg")?.getattr("_reconstructor")?.unbind(),
            partial: py.import("functools")?.getattr("partial")?.unbind(),
        })
    })
}

/// The stdlib object behind the default global `module.name` (a basic type, a constant or a
/// pattern marker), if it is one: what the base `Unpickler.find_class` returns for it (the
/// decoder recognizes it by identity and keeps applying that global's rules).
pub(crate) fn default_object<'py>(
    py: Python<'py>,
    module: &str,
    name: &str,
) -> PyResult<Option<Obj<'py>>> {
    let d = defaults(py)?;
    Ok(cellar_pickle::policy::DEFAULT_GLOBALS
        .iter()
        .find(|(m, n, _)| *m == module && *n == name)
        .and_then(|&(m, n, _)| d.by_name.get(&(m, n)))
        .map(|o| o.bind(py).clone()))
}

/// Pauses CPython's cyclic garbage collector for its lifetime (if it was enabled).
pub(crate) struct GcPause(bool);

impl GcPause {
    /// Pauses the collector (the caller holds the GIL: it has a `Python` token).
    pub(crate) fn new(_py: Python<'_>) -> Self {
        // SAFETY: the GIL is held (the caller passed a `Python` token).
        GcPause(unsafe { ffi::PyGC_Disable() } != 0)
    }
}

impl Drop for GcPause {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: still under the GIL (the guard lives inside the load call, which holds
            // it).
            unsafe { ffi::PyGC_Enable() };
        }
    }
}

/// The configuration of one load and what the sink learned while building.
pub(crate) struct PySink<'py, 'c> {
    py: Python<'py>,
    loader: &'c PickleLoader,
    inert: Option<Bound<'py, PyType>>,
    buffers: Option<Bound<'py, PyIterator>>,
    persistent_load: Option<Obj<'py>>,
    /// A `find_class` override (`Unpickler` subclass or attribute): asked for every global.
    find_class: Option<Obj<'py>>,
    /// Objects this load created through an allowed class or callable (fresh: nobody else held
    /// a reference when they were made): the only BUILD targets besides inert objects.
    created: AddrSet,
    /// Exact containers an allowed callable returned while someone else also references them:
    /// never mutated.
    foreign: AddrSet,
    /// Keeps the objects in `created` / `foreign` alive while their addresses are there.
    keep: Vec<Obj<'py>>,
    /// `type -> __setstate__` found along the type's MRO (never in the instance).
    setstate: AddrMap<Option<Obj<'py>>>,
    /// State keys BUILD interned: `str -> its interned twin` (both kept alive here).
    interned: AddrMap<(Obj<'py>, Obj<'py>)>,
    /// A mutable container was pushed again from the memo: measure the result at STOP.
    shared: bool,
    max_depth: usize,
}

impl<'py, 'c> PySink<'py, 'c> {
    /// A sink for one load with `loader`'s configuration.
    pub(crate) fn new(
        py: Python<'py>,
        loader: &'c PickleLoader,
        buffers: Option<Bound<'py, PyIterator>>,
        persistent_load: Option<Obj<'py>>,
        find_class: Option<Obj<'py>>,
        max_depth: usize,
    ) -> Self {
        PySink {
            py,
            loader,
            inert: loader.inert.as_ref().map(|t| t.bind(py).clone()),
            buffers,
            persistent_load,
            find_class,
            created: AddrSet::default(),
            foreign: AddrSet::default(),
            keep: Vec::new(),
            setstate: AddrMap::default(),
            interned: AddrMap::default(),
            shared: false,
            max_depth,
        }
    }

    /// `p`: a new reference returned by the C API, or NULL with an exception set.
    #[inline(always)]
    fn owned(&self, p: *mut ffi::PyObject) -> Res<Obj<'py>> {
        // SAFETY: the GIL is held (`self.py`); `p` is a new reference or NULL with an
        // exception set, which `from_owned_ptr_or_err` turns into the PyErr.
        Ok(unsafe { Bound::from_owned_ptr_or_err(self.py, p) }?)
    }

    /// UTF-8 with lone surrogates allowed, as CPython decodes BINUNICODE.
    #[inline(always)]
    fn utf8(&self, b: &[u8]) -> Res<Obj<'py>> {
        let n =
            ffi::Py_ssize_t::try_from(b.len()).map_err(|_| uerr(self.py, "string too large"))?;
        if b.len() <= 64 && b.is_ascii() {
            // Short ASCII (dict keys, names): a compact ASCII str filled directly, without the
            // codec machinery (what PyUnicode_DecodeUTF8's ASCII path ends up making).
            // SAFETY: the GIL is held; PyUnicode_New(n, 127) returns a new compact ASCII str
            // of n one-byte code points (or NULL with an exception set); it is not shared
            // yet, so filling its n data bytes from `b` (n bytes, ASCII) before anyone sees
            // it is how CPython builds strings. n == 0 gives the empty-string singleton, into
            // which nothing is copied.
            unsafe {
                let p = ffi::PyUnicode_New(n, 127);
                if !p.is_null() && n > 0 {
                    std::ptr::copy_nonoverlapping(
                        b.as_ptr(),
                        ffi::PyUnicode_DATA(p).cast::<u8>(),
                        b.len(),
                    );
                }
                return self.owned(p);
            }
        }
        // SAFETY: the GIL is held; pointer and length describe `b`, the error handler name is
        // a NUL-terminated literal.
        let p =
            unsafe { ffi::PyUnicode_DecodeUTF8(b.as_ptr().cast(), n, c"surrogatepass".as_ptr()) };
        self.owned(p)
    }

    fn is_inert(&self, o: &Obj<'py>) -> bool {
        match &self.inert {
            Some(t) => o.get_type().is(t),
            None => false,
        }
    }

    /// An inert object of an inert `o` whose `construct` is `'global'` (the class or function
    /// itself): it takes no items and no state.
    fn is_inert_global(&self, o: &Obj<'py>) -> PyResult<bool> {
        let c = o.getattr(intern!(self.py, "construct"))?;
        Ok(c.cast::<PyString>()
            .is_ok_and(|s| s.to_str().is_ok_and(|s| s == "global")))
    }

    fn inert_type(&self) -> Res<&Bound<'py, PyType>> {
        self.inert.as_ref().ok_or_else(|| {
            uerr(
                self.py,
                "internal error: an inert object without inert=True",
            )
            .into()
        })
    }

    /// `Inert(module, name, construct, args, kwargs)`.
    fn inert_obj(
        &self,
        module: &str,
        name: &str,
        construct: &str,
        args: Vec<Obj<'py>>,
        kwargs: Option<Obj<'py>>,
    ) -> Res<Obj<'py>> {
        let py = self.py;
        let t = self.inert_type()?;
        let args = PyTuple::new(py, args)?;
        let kwargs = kwargs.unwrap_or_else(|| py.None().into_bound(py));
        Ok(t.call1((module, name, construct, args, kwargs))?)
    }

    /// After an allowed class or callable made `r`: a fresh object (nobody else references it)
    /// becomes a BUILD / item target; an exact container somebody else holds is never mutated.
    fn note_made(&mut self, r: &Obj<'py>) {
        // SAFETY: the GIL is held; `r` is a live object (Py_REFCNT only reads its header).
        let fresh = unsafe { ffi::Py_REFCNT(r.as_ptr()) } == 1;
        if fresh && !r.is_instance_of::<PyType>() {
            self.created.insert(r.as_ptr() as usize);
            self.keep.push(r.clone());
        } else if !fresh
            && (r.is_exact_instance_of::<PyList>()
                || r.is_exact_instance_of::<PyDict>()
                || r.is_exact_instance_of::<PySet>())
        {
            self.foreign.insert(r.as_ptr() as usize);
            self.keep.push(r.clone());
        }
    }

    fn not_foreign(&self, target: &Obj<'py>) -> Res<()> {
        if !self.foreign.is_empty() && self.foreign.contains(&(target.as_ptr() as usize)) {
            return Err(uerr(
                self.py,
                "the target is a container an allowed callable returned but did not create: \
                 cellar.pickle never mutates it",
            )
            .into());
        }
        Ok(())
    }

    #[cold]
    fn forbidden(&self, module: &str, name: &str, why: &str) -> LoadError {
        uerr(
            self.py,
            format!(
                "calling {module}.{name} is forbidden: {why}; cellar.pickle only calls what \
                 allow= or cellar.copyreg names"
            ),
        )
        .into()
    }

    /// A hash failure while filling a dict or set: a value that contains itself recursed
    /// without end, which is a malformed pickle, not a crash.
    #[cold]
    fn hash_failed(&self, e: PyErr) -> LoadError {
        if e.is_instance_of::<PyRecursionError>(self.py) {
            return uerr(
                self.py,
                "recursive structure: a dict key or set item contains itself (hashing it does \
                 not terminate)",
            )
            .into();
        }
        e.into()
    }

    /// The object a default global or an allowed one stands for (`_reconstructor`'s base).
    fn object_of(&mut self, g: &GlobalRef<'_, PyGlobal<'py>>) -> Res<Obj<'py>> {
        match g.allowed {
            Some(PyGlobal::Allowed(o) | PyGlobal::Namespace(o)) => Ok(o.clone()),
            None => match defaults(self.py)?.by_name.get(&(g.module, g.name)) {
                Some(o) => Ok(o.bind(self.py).clone()),
                None => self.global(GlobalRef { ..*g }),
            },
        }
    }

    /// `cls.__new__(cls, *args, **kwargs)` through the type's `tp_new`, as the C unpickler does.
    fn newobj(
        &mut self,
        cls: &Obj<'py>,
        args: Vec<Obj<'py>>,
        kwargs: Option<Obj<'py>>,
    ) -> Res<Obj<'py>> {
        let py = self.py;
        let Ok(t) = cls.cast::<PyType>() else {
            return Err(uerr(py, "NEWOBJ class argument isn't a type object").into());
        };
        let kwargs = match kwargs {
            Some(k) => match k.cast_into::<PyDict>() {
                Ok(d) => Some(d),
                Err(_) => return Err(uerr(py, "NEWOBJ_EX kwargs argument must be a dict").into()),
            },
            None => None,
        };
        let args = PyTuple::new(py, args)?;
        let tp = t.as_ptr().cast::<ffi::PyTypeObject>();
        // SAFETY: the GIL is held; `tp` is a live type object (`t` holds a reference), reading
        // its tp_new slot is what `type.__call__` does.
        let Some(tp_new) = (unsafe { (*tp).tp_new }) else {
            return Err(uerr(py, "NEWOBJ class argument has NULL tp_new").into());
        };
        let kw = kwargs.as_ref().map_or(std::ptr::null_mut(), |k| k.as_ptr());
        // SAFETY: the GIL is held; `tp` is the live type, `args` a tuple, `kw` a dict or NULL,
        // as tp_new expects; it returns a new reference or NULL with an exception set.
        let p = unsafe { tp_new(tp, args.as_ptr(), kw) };
        let r = self.owned(p)?;
        self.note_made(&r);
        Ok(r)
    }

    /// `__setstate__` bound to `inst`, looked up on its class's MRO (each class's own
    /// `__dict__`), never in the instance's state: a pickle cannot plant one with BUILD.
    fn class_setstate(&mut self, inst: &Obj<'py>) -> Res<Option<Obj<'py>>> {
        let py = self.py;
        let tp = inst.get_type();
        let key = tp.as_ptr() as usize;
        let descr = match self.setstate.get(&key) {
            Some(d) => d.clone(),
            None => {
                let name = intern!(py, "__setstate__");
                let mut found = None;
                for klass in tp.mro().iter() {
                    let d = klass.getattr(intern!(py, "__dict__"))?;
                    if let Ok(v) = d.get_item(name) {
                        found = Some(v);
                        break;
                    }
                }
                self.setstate.insert(key, found.clone());
                self.keep.push(tp.clone().into_any());
                found
            }
        };
        let Some(descr) = descr else {
            return Ok(None);
        };
        if descr.hasattr(intern!(py, "__get__"))? {
            return Ok(Some(
                descr.call_method1(intern!(py, "__get__"), (inst, tp))?,
            ));
        }
        Ok(Some(descr))
    }

    /// The default BUILD: update `__dict__` (str keys interned) and set the slots of a
    /// `(dict, slots)` state.
    fn default_build(&mut self, inst: &Obj<'py>, state: &Obj<'py>) -> Res<()> {
        let py = self.py;
        let (st, slots) = match state.cast::<PyTuple>() {
            Ok(t) if t.len() == 2 => (t.get_item(0)?, Some(t.get_item(1)?)),
            _ => (state.clone(), None),
        };
        if !st.is_none() {
            let Ok(sd) = st.cast::<PyDict>() else {
                return Err(uerr(py, "state is not a dictionary").into());
            };
            let dict = inst
                .getattr(intern!(py, "__dict__"))
                .map_err(|e| data_error(py, "BUILD", e))?;
            let exact = dict.is_exact_instance_of::<PyDict>();
            for (k, v) in sd.iter() {
                let k = if k.is_exact_instance_of::<PyString>() {
                    self.interned_key(k)
                } else {
                    k
                };
                if exact {
                    // SAFETY: the GIL is held; `dict` is an exact dict, key and value are live
                    // objects (PyDict_SetItem takes its own references).
                    if unsafe { ffi::PyDict_SetItem(dict.as_ptr(), k.as_ptr(), v.as_ptr()) } < 0 {
                        return Err(PyErr::fetch(py).into());
                    }
                } else {
                    dict.set_item(k, v)?;
                }
            }
        }
        if let Some(slots) = slots {
            if !slots.is_none() {
                let Ok(sd) = slots.cast::<PyDict>() else {
                    return Err(uerr(py, "slot state is not a dictionary").into());
                };
                for (k, v) in sd.iter() {
                    let Ok(k) = k.cast_into::<PyString>() else {
                        return Err(PyTypeError::new_err("slot name must be a string").into());
                    };
                    if k.to_str()
                        .is_ok_and(|k| k == "__class__" || k == "__dict__")
                    {
                        return Err(uerr(
                            py,
                            "BUILD: slot state may not set __class__ or __dict__",
                        )
                        .into());
                    }
                    inst.setattr(k, v).map_err(|e| data_error(py, "BUILD", e))?;
                }
            }
        }
        Ok(())
    }

    /// The interned twin of the exact str `k` (as pickle interns `__dict__` keys), remembered
    /// per key object: the same memoized key is interned once per load, not once per BUILD.
    fn interned_key(&mut self, k: Obj<'py>) -> Obj<'py> {
        let addr = k.as_ptr() as usize;
        if let Some((_, i)) = self.interned.get(&addr) {
            return i.clone();
        }
        let mut p = k.clone().into_ptr();
        // SAFETY: the GIL is held; `p` is an owned reference to an exact str, which
        // PyUnicode_InternInPlace replaces with its interned twin (still owned).
        let i = unsafe {
            ffi::PyUnicode_InternInPlace(&mut p);
            Bound::from_owned_ptr(self.py, p)
        };
        // (the map keeps `k` alive, so its address is not reused during the load)
        self.interned.insert(addr, (k, i.clone()));
        i
    }

    /// A functools.partial the load made around an allowed callable keeps wrapping an allowed
    /// callable after BUILD (its state is `(func, args, kwds, dict)`).
    fn partial_state_ok(&self, inst: &Obj<'py>, state: &Obj<'py>) -> Res<bool> {
        let partial = defaults(self.py)?.partial.bind(self.py);
        if !inst.get_type().is(partial) {
            return Ok(true);
        }
        let func = state
            .cast::<PyTuple>()
            .ok()
            .and_then(|t| t.get_item(0).ok());
        Ok(func.is_some_and(|f| self.loader.allowed.values().any(|a| a.bind(self.py).is(&f))))
    }
}

/// Whether sharing `o` (DUP/GET) cannot hide nesting: scalars, and tuples/frozensets of
/// scalars (immutable, so their recorded depth stays exact).
#[inline(always)]
fn settled(o: &Obj<'_>, depth: u32) -> bool {
    if depth == 0 {
        return true;
    }
    depth == 1 && (o.is_exact_instance_of::<PyTuple>() || o.is_exact_instance_of::<PyFrozenSet>())
}

/// The exact nesting of `root` (longest chain of containers; a cycle counts once), refused past
/// `max`. Iterative: the result may be deeper than the Rust stack could recurse.
fn check_depth<'py>(py: Python<'py>, root: &Obj<'py>, max: usize) -> Res<()> {
    let mut height: HashMap<usize, usize> = HashMap::new();
    let mut on_path: HashSet<usize> = HashSet::new();
    // (object, children, next child index, best child height)
    type Frame<'py> = (Obj<'py>, Vec<Obj<'py>>, usize, usize);
    let mut todo: Vec<Frame<'py>> = Vec::new();
    let children = |o: &Obj<'py>| -> Option<Vec<Obj<'py>>> {
        if let Ok(l) = o.cast::<PyList>() {
            Some(l.iter().collect())
        } else if let Ok(t) = o.cast::<PyTuple>() {
            Some(t.iter().collect())
        } else if let Ok(d) = o.cast::<PyDict>() {
            Some(d.iter().flat_map(|(k, v)| [k, v]).collect())
        } else if let Ok(s) = o.cast::<PySet>() {
            Some(s.iter().collect())
        } else if let Ok(s) = o.cast::<PyFrozenSet>() {
            Some(s.iter().collect())
        } else {
            None
        }
    };
    let too_deep = || -> LoadError {
        uerr(
            py,
            format!("maximum nesting depth exceeded (max_depth = {max})"),
        )
        .into()
    };
    match children(root) {
        None => return Ok(()),
        Some(c) => {
            on_path.insert(root.as_ptr() as usize);
            todo.push((root.clone(), c, 0, 0));
        }
    }
    while let Some(top) = todo.last_mut() {
        if top.2 < top.1.len() {
            let child = top.1[top.2].clone();
            top.2 += 1;
            let p = child.as_ptr() as usize;
            if on_path.contains(&p) {
                continue;
            }
            if let Some(&h) = height.get(&p) {
                top.3 = top.3.max(h);
                continue;
            }
            if let Some(c) = children(&child) {
                if todo.len() >= max {
                    return Err(too_deep());
                }
                on_path.insert(p);
                todo.push((child, c, 0, 0));
            }
        } else if let Some((o, _, _, best)) = todo.pop() {
            let p = o.as_ptr() as usize;
            on_path.remove(&p);
            height.insert(p, best + 1);
            if let Some(parent) = todo.last_mut() {
                parent.3 = parent.3.max(best + 1);
            }
        }
    }
    Ok(())
}

fn construct_name(c: Construct) -> &'static str {
    match c {
        Construct::Global => "global",
        Construct::Reduce => "reduce",
        Construct::NewObj => "newobj",
        Construct::NewObjEx => "newobj_ex",
        Construct::Reconstructor => "reconstructor",
        Construct::Call => "call",
    }
}

impl<'py> Sink for PySink<'py, '_> {
    type Handle = Obj<'py>;
    type Global = PyGlobal<'py>;
    type Output = Obj<'py>;
    type Error = LoadError;

    // ---- globals ------------------------------------------------------------------------

    fn resolve(&mut self, module: &str, name: &str) -> Res<Option<PyGlobal<'py>>> {
        let key = (module.to_owned(), name.to_owned());
        if let Some(o) = self.loader.allowed.get(&key) {
            return Ok(Some(PyGlobal::Allowed(o.bind(self.py).clone())));
        }
        if let Some(o) = self.loader.namespaces.get(&key) {
            return Ok(Some(PyGlobal::Namespace(o.bind(self.py).clone())));
        }
        Ok(None)
    }

    fn lookup(
        &mut self,
        raw: (&str, &str),
        module: &str,
        name: &str,
    ) -> Res<Lookup<PyGlobal<'py>>> {
        let Some(fc) = &self.find_class else {
            return Ok(Lookup::ByName);
        };
        let py = self.py;
        // As the stdlib's unpickler: the override gets the names as the data spells them (the
        // base find_class applies fix_imports itself). A refusal is whatever it raises.
        let r = fc.call1(raw)?;
        // The object behind a default global (whatever name it came under) keeps that global's
        // rules: an override cannot turn a pattern marker or a basic-type constructor into a
        // value or a free callable. The caller's own consent to that object still counts.
        if let Some(&k) = defaults(py)?.by_addr.get(&(r.as_ptr() as usize)) {
            let consented = self.loader.allowed.values().any(|a| a.bind(py).is(&r));
            return Ok(Lookup::Default(
                k,
                consented.then(|| PyGlobal::Allowed(r.clone())),
            ));
        }
        // The base find_class's inert answer (inert=True): the decoder's own inert global.
        if self.is_inert(&r) && self.is_inert_global(&r)? {
            return Ok(Lookup::Unresolved);
        }
        // The parent of an allowed nested class stays a namespace (a value, never called).
        let key = (module.to_owned(), name.to_owned());
        if !self.loader.allowed.contains_key(&key) {
            if let Some(o) = self.loader.namespaces.get(&key) {
                if o.bind(py).is(&r) {
                    return Ok(Lookup::Allowed(PyGlobal::Namespace(r)));
                }
            }
        }
        // Anything else the override returned is the caller's explicit choice, as an allow=
        // entry `(module, name, r)` would be: the same REDUCE / NEWOBJ / BUILD rules apply
        // (BUILD only on instances this load creates through it, never on `r` itself).
        Ok(Lookup::Allowed(PyGlobal::Allowed(r)))
    }

    fn extension(&self, code: i32) -> Option<(String, String)> {
        let ext = self.loader.extensions.as_ref()?.bind(self.py);
        ext.get_item(code).ok().flatten()?.extract().ok()
    }

    // ---- scalars ------------------------------------------------------------------------

    #[inline]
    fn none(&mut self) -> Res<Obj<'py>> {
        Ok(self.py.None().into_bound(self.py))
    }
    #[inline]
    fn bool(&mut self, v: bool) -> Res<Obj<'py>> {
        Ok(PyBool::new(self.py, v).to_owned().into_any())
    }
    #[inline(always)]
    fn int(&mut self, v: i64) -> Res<Obj<'py>> {
        // SAFETY: GIL held; returns a new reference or NULL with an exception set.
        self.owned(unsafe { ffi::PyLong_FromLongLong(v) })
    }
    fn big_int(&mut self, le: &[u8]) -> Res<Obj<'py>> {
        let py = self.py;
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "signed"), true)?;
        Ok(py.get_type::<PyInt>().call_method(
            intern!(py, "from_bytes"),
            (PyBytes::new(py, le), intern!(py, "little")),
            Some(&kwargs),
        )?)
    }
    #[inline(always)]
    fn float(&mut self, v: f64) -> Res<Obj<'py>> {
        // SAFETY: GIL held; returns a new reference or NULL with an exception set (pyo3's
        // `PyFloat::new` is the same call, but out of line: a call per float).
        self.owned(unsafe { ffi::PyFloat_FromDouble(v) })
    }
    fn complex(&mut self, re: f64, im: f64) -> Res<Obj<'py>> {
        Ok(PyComplex::from_doubles(self.py, re, im).into_any())
    }
    #[inline]
    fn str_utf8(&mut self, b: &[u8]) -> Res<Obj<'py>> {
        self.utf8(b)
    }
    fn str(&mut self, s: PyStr) -> Res<Obj<'py>> {
        match s.as_str() {
            Some(t) => Ok(PyString::new(self.py, t).into_any()),
            None => self.utf8(s.as_bytes()),
        }
    }
    fn py2_string(
        &mut self,
        raw: &[u8],
        _encoding: StringEncoding,
        _errors: DecodeErrors,
    ) -> Res<Obj<'py>> {
        let py = self.py;
        let b = PyBytes::new(py, raw);
        match &self.loader.encoding {
            None => Ok(b.into_any()),
            Some(enc) => Ok(b.call_method1(
                intern!(py, "decode"),
                (enc.as_str(), self.loader.errors.as_str()),
            )?),
        }
    }
    #[inline]
    fn bytes(&mut self, b: &[u8]) -> Res<Obj<'py>> {
        Ok(PyBytes::new(self.py, b).into_any())
    }
    fn bytearray(&mut self, b: &[u8]) -> Res<Obj<'py>> {
        Ok(PyByteArray::new(self.py, b).into_any())
    }
    fn constant(&mut self, which: Known) -> Res<Obj<'py>> {
        let py = self.py;
        Ok(match which {
            Known::Ellipsis => py.Ellipsis().into_bound(py),
            Known::NotImplemented => py.NotImplemented().into_bound(py),
            _ => py
                .get_type::<pyo3::exceptions::PyStopIteration>()
                .into_any(),
        })
    }
    fn slice(&mut self, start: Obj<'py>, stop: Obj<'py>, step: Obj<'py>) -> Res<Obj<'py>> {
        let py = self.py;
        Ok(py
            .get_type::<pyo3::types::PySlice>()
            .call1((start, stop, step))?)
    }

    // ---- containers ---------------------------------------------------------------------

    #[inline]
    fn tuple(&mut self, items: Vec<Obj<'py>>) -> Res<Obj<'py>> {
        Ok(PyTuple::new(self.py, items)?.into_any())
    }
    #[inline]
    fn list(&mut self, items: Vec<Obj<'py>>) -> Res<Obj<'py>> {
        Ok(PyList::new(self.py, items)?.into_any())
    }
    fn dict(&mut self, kv: Vec<Obj<'py>>) -> Res<Obj<'py>> {
        let d = PyDict::new(self.py);
        for pair in kv.chunks_exact(2) {
            // SAFETY: the GIL is held; the dict, key and value are live objects
            // (PyDict_SetItem takes its own references).
            if unsafe { ffi::PyDict_SetItem(d.as_ptr(), pair[0].as_ptr(), pair[1].as_ptr()) } < 0 {
                let e = PyErr::fetch(self.py);
                return Err(self.hash_failed(e));
            }
        }
        Ok(d.into_any())
    }
    fn set(&mut self, items: Vec<Obj<'py>>) -> Res<Obj<'py>> {
        let s = PySet::empty(self.py)?;
        for o in items {
            s.add(o).map_err(|e| self.hash_failed(e))?;
        }
        Ok(s.into_any())
    }
    fn frozenset(&mut self, items: Vec<Obj<'py>>) -> Res<Obj<'py>> {
        match PyFrozenSet::new(self.py, items) {
            Ok(s) => Ok(s.into_any()),
            Err(e) => Err(self.hash_failed(e)),
        }
    }

    fn append(&mut self, target: &Obj<'py>, items: &mut Vec<Obj<'py>>) -> Res<bool> {
        let py = self.py;
        if let Ok(l) = target.cast_exact::<PyList>() {
            self.not_foreign(target)?;
            for o in items.drain(..) {
                // SAFETY: the GIL is held; `l` and `o` are live objects (PyList_Append takes
                // its own reference to `o`).
                if unsafe { ffi::PyList_Append(l.as_ptr(), o.as_ptr()) } < 0 {
                    return Err(PyErr::fetch(py).into());
                }
            }
            return Ok(true);
        }
        if self.is_inert(target) {
            if self.is_inert_global(target)? {
                return Ok(false);
            }
            let li = target.getattr(intern!(py, "listitems"))?;
            for o in items.drain(..) {
                li.call_method1(intern!(py, "append"), (o,))?;
            }
            return Ok(true);
        }
        // A list subclass the load created through an allowed class, as the C unpickler
        // does: its own extend (or append).
        if !self.created.contains(&(target.as_ptr() as usize)) {
            return Ok(false);
        }
        if let Ok(ext) = target.getattr(intern!(py, "extend")) {
            ext.call1((PyList::new(py, items.drain(..))?,))?;
        } else {
            let app = target
                .getattr(intern!(py, "append"))
                .map_err(|e| data_error(py, "APPEND", e))?;
            for o in items.drain(..) {
                app.call1((o,))?;
            }
        }
        Ok(true)
    }

    #[inline(always)]
    fn append_in_place(
        &mut self,
        target: &Obj<'py>,
        items: Items<'_, Obj<'py>>,
    ) -> Res<Option<bool>> {
        let Ok(l) = target.cast_exact::<PyList>() else {
            return Ok(None);
        };
        self.not_foreign(target)?;
        for o in items.iter() {
            // SAFETY: the GIL is held; `l` and `o` are live objects (PyList_Append takes its
            // own reference to `o`).
            if unsafe { ffi::PyList_Append(l.as_ptr(), o.as_ptr()) } < 0 {
                return Err(PyErr::fetch(self.py).into());
            }
        }
        Ok(Some(true))
    }

    #[inline(always)]
    fn set_items_in_place(
        &mut self,
        target: &Obj<'py>,
        kv: Items<'_, Obj<'py>>,
    ) -> Res<Option<bool>> {
        let Ok(d) = target.cast_exact::<PyDict>() else {
            return Ok(None);
        };
        self.not_foreign(target)?;
        for (k, v) in kv.pairs() {
            // SAFETY: the GIL is held; the dict, key and value are live objects
            // (PyDict_SetItem takes its own references).
            if unsafe { ffi::PyDict_SetItem(d.as_ptr(), k.as_ptr(), v.as_ptr()) } < 0 {
                let e = PyErr::fetch(self.py);
                return Err(self.hash_failed(e));
            }
        }
        Ok(Some(true))
    }

    #[inline(always)]
    fn add_items_in_place(
        &mut self,
        target: &Obj<'py>,
        items: Items<'_, Obj<'py>>,
    ) -> Res<Option<bool>> {
        let Ok(s) = target.cast_exact::<PySet>() else {
            return Ok(None);
        };
        self.not_foreign(target)?;
        for o in items.iter() {
            // SAFETY: the GIL is held; the set and the item are live objects (PySet_Add takes
            // its own reference).
            if unsafe { ffi::PySet_Add(s.as_ptr(), o.as_ptr()) } < 0 {
                let e = PyErr::fetch(self.py);
                return Err(self.hash_failed(e));
            }
        }
        Ok(Some(true))
    }

    fn set_items(&mut self, target: &Obj<'py>, kv: &mut Vec<Obj<'py>>) -> Res<bool> {
        let py = self.py;
        if let Ok(d) = target.cast_exact::<PyDict>() {
            self.not_foreign(target)?;
            for pair in kv.chunks_exact(2) {
                // SAFETY: the GIL is held; the dict, key and value are live objects
                // (PyDict_SetItem takes its own references).
                if unsafe { ffi::PyDict_SetItem(d.as_ptr(), pair[0].as_ptr(), pair[1].as_ptr()) }
                    < 0
                {
                    let e = PyErr::fetch(py);
                    return Err(self.hash_failed(e));
                }
            }
            kv.clear();
            return Ok(true);
        }
        if self.is_inert(target) {
            if self.is_inert_global(target)? {
                return Ok(false);
            }
            let di = target.getattr(intern!(py, "dictitems"))?;
            let mut it = kv.drain(..);
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                di.call_method1(intern!(py, "append"), ((k, v),))?;
            }
            return Ok(true);
        }
        if !self.created.contains(&(target.as_ptr() as usize)) {
            return Ok(false);
        }
        let mut it = kv.drain(..);
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            target.set_item(k, v)?;
        }
        Ok(true)
    }

    fn add_items(&mut self, target: &Obj<'py>, items: &mut Vec<Obj<'py>>) -> Res<bool> {
        let py = self.py;
        if let Ok(s) = target.cast_exact::<PySet>() {
            self.not_foreign(target)?;
            for o in items.drain(..) {
                if let Err(e) = s.add(o) {
                    return Err(self.hash_failed(e));
                }
            }
            return Ok(true);
        }
        if self.is_inert(target) {
            if self.is_inert_global(target)? {
                return Ok(false);
            }
            let li = target.getattr(intern!(py, "listitems"))?;
            for o in items.drain(..) {
                li.call_method1(intern!(py, "append"), (o,))?;
            }
            return Ok(true);
        }
        if !self.created.contains(&(target.as_ptr() as usize)) {
            return Ok(false);
        }
        let add = target
            .getattr(intern!(py, "add"))
            .map_err(|e| data_error(py, "ADDITEMS", e))?;
        for o in items.drain(..) {
            add.call1((o,))?;
        }
        Ok(true)
    }

    // ---- questions about what the sink made -----------------------------------------------

    fn shape(&self, h: &Obj<'py>) -> Shape {
        if h.is_none() {
            Shape::None
        } else if let Ok(b) = h.cast_exact::<PyBool>() {
            Shape::Bool(b.is_true())
        } else if h.is_exact_instance_of::<PyInt>() {
            Shape::Int(
                h.extract::<i64>()
                    .map(|v| v as f64)
                    .ok()
                    .or_else(|| h.extract::<f64>().ok().filter(|f| f.is_finite())),
            )
        } else if let Ok(f) = h.cast_exact::<PyFloat>() {
            Shape::Float(f.value())
        } else if h.is_exact_instance_of::<PyString>() {
            Shape::Str
        } else if h.is_exact_instance_of::<PyBytes>() {
            Shape::Bytes
        } else if h.is_exact_instance_of::<PyByteArray>() {
            Shape::ByteArray
        } else if let Ok(t) = h.cast_exact::<PyTuple>() {
            Shape::Tuple(t.len())
        } else if h.is_exact_instance_of::<PyList>() {
            Shape::List
        } else if let Ok(d) = h.cast_exact::<PyDict>() {
            Shape::Dict(d.len())
        } else if h.is_exact_instance_of::<PySet>() {
            Shape::Set
        } else if h.is_exact_instance_of::<PyFrozenSet>() {
            Shape::FrozenSet
        } else {
            Shape::Other
        }
    }

    fn items(&self, h: &Obj<'py>) -> Option<Vec<Obj<'py>>> {
        if let Ok(t) = h.cast_exact::<PyTuple>() {
            Some(t.iter().collect())
        } else if let Ok(l) = h.cast_exact::<PyList>() {
            Some(l.iter().collect())
        } else if let Ok(s) = h.cast_exact::<PySet>() {
            Some(s.iter().collect())
        } else if let Ok(s) = h.cast_exact::<PyFrozenSet>() {
            Some(s.iter().collect())
        } else {
            None
        }
    }

    fn text(&self, h: &Obj<'py>) -> Option<PyStr> {
        let s = h.cast_exact::<PyString>().ok()?;
        if let Ok(t) = s.to_str() {
            return Some(PyStr::from(t));
        }
        // Lone surrogates: their surrogatepass bytes.
        let b = s
            .call_method1(intern!(self.py, "encode"), ("utf-8", "surrogatepass"))
            .ok()?;
        let b = b.cast::<PyBytes>().ok()?;
        PyStr::from_utf8_surrogatepass(b.as_bytes()).ok()
    }

    fn data(&self, h: &Obj<'py>) -> Option<Vec<u8>> {
        if let Ok(b) = h.cast_exact::<PyBytes>() {
            Some(b.as_bytes().to_vec())
        } else if let Ok(b) = h.cast_exact::<PyByteArray>() {
            Some(b.to_vec())
        } else {
            None
        }
    }

    fn inert_name(&self, h: &Obj<'py>) -> Option<(String, String)> {
        if !self.is_inert(h) {
            return None;
        }
        let m = h.getattr(intern!(self.py, "module")).ok()?.extract().ok()?;
        let n = h.getattr(intern!(self.py, "name")).ok()?.extract().ok()?;
        Some((m, n))
    }

    // ---- globals and objects ------------------------------------------------------------

    fn global(&mut self, g: GlobalRef<'_, PyGlobal<'py>>) -> Res<Obj<'py>> {
        match g.allowed {
            Some(PyGlobal::Allowed(o) | PyGlobal::Namespace(o)) => Ok(o.clone()),
            None => Ok(self.inert_type()?.call1((g.module, g.name))?),
        }
    }

    fn object(
        &mut self,
        cls: GlobalRef<'_, PyGlobal<'py>>,
        construct: Construct,
        args: Vec<Obj<'py>>,
        kwargs: Option<Obj<'py>>,
    ) -> Res<Obj<'py>> {
        let py = self.py;
        match cls.allowed {
            None => {
                let kwargs = match (construct, kwargs) {
                    (Construct::NewObjEx, None) => Some(PyDict::new(py).into_any()),
                    (_, k) => k,
                };
                self.inert_obj(
                    cls.module,
                    cls.name,
                    construct_name(construct),
                    args,
                    kwargs,
                )
            }
            Some(PyGlobal::Namespace(_)) => Err(self.forbidden(
                cls.module,
                cls.name,
                "it is only the namespace of an allowed nested class",
            )),
            Some(PyGlobal::Allowed(f)) => match construct {
                Construct::NewObj | Construct::NewObjEx => {
                    let f = f.clone();
                    self.newobj(&f, args, kwargs)
                }
                _ => {
                    let r = f.call1(PyTuple::new(py, args)?)?;
                    self.note_made(&r);
                    Ok(r)
                }
            },
        }
    }

    fn instantiate(
        &mut self,
        cls: GlobalRef<'_, PyGlobal<'py>>,
        args: Vec<Obj<'py>>,
    ) -> Res<Obj<'py>> {
        let py = self.py;
        let f = match cls.allowed {
            Some(PyGlobal::Allowed(f)) => f.clone(),
            _ => return self.object(cls, Construct::Reduce, args, None),
        };
        // pickle's _instantiate: cls.__new__(cls) when there is nothing to pass __init__.
        let r = if !args.is_empty()
            || !f.is_instance_of::<PyType>()
            || f.hasattr(intern!(py, "__getinitargs__"))?
        {
            f.call1(PyTuple::new(py, args)?)?
        } else {
            f.call_method1(intern!(py, "__new__"), (&f,))?
        };
        self.note_made(&r);
        Ok(r)
    }

    fn reconstruct(
        &mut self,
        cls: GlobalRef<'_, PyGlobal<'py>>,
        base: GlobalRef<'_, PyGlobal<'py>>,
        state: Obj<'py>,
    ) -> Res<Obj<'py>> {
        let base_obj = self.object_of(&base)?;
        let c = match cls.allowed {
            None => {
                return self.inert_obj(
                    cls.module,
                    cls.name,
                    "reconstructor",
                    vec![base_obj, state],
                    None,
                )
            }
            Some(PyGlobal::Namespace(_)) => {
                return Err(self.forbidden(
                    cls.module,
                    cls.name,
                    "it is only the namespace of an allowed nested class",
                ))
            }
            Some(PyGlobal::Allowed(c)) => c.clone(),
        };
        let base_ok = matches!(base.allowed, Some(PyGlobal::Allowed(_)))
            || matches!(
                cellar_pickle::policy::default_global(base.module, base.name),
                Some(
                    Known::Base
                        | Known::Bytes
                        | Known::Set
                        | Known::FrozenSet
                        | Known::ByteArray
                        | Known::Complex
                )
            );
        if !c.is_instance_of::<PyType>() || !base_ok {
            return Err(self.forbidden(
                cls.module,
                cls.name,
                "copyreg._reconstructor needs an allowed class and a basic base type",
            ));
        }
        let f = defaults(self.py)?.reconstructor.bind(self.py).clone();
        let r = f.call1((c, base_obj, state))?;
        self.note_made(&r);
        Ok(r)
    }

    fn range(&mut self, g: GlobalRef<'_, PyGlobal<'py>>, args: Vec<Obj<'py>>) -> Res<Obj<'py>> {
        let py = self.py;
        let r = match g.allowed {
            Some(PyGlobal::Allowed(f)) => f.clone(),
            _ => py.get_type::<pyo3::types::PyRange>().into_any(),
        };
        Ok(r.call1(PyTuple::new(py, args)?)?)
    }

    fn inert_call(
        &mut self,
        g: GlobalRef<'_, PyGlobal<'py>>,
        callee: Obj<'py>,
        args: Vec<Obj<'py>>,
    ) -> Res<Obj<'py>> {
        let py = self.py;
        let t = self.inert_type()?;
        let kw = PyDict::new(py);
        kw.set_item(intern!(py, "func"), callee)?;
        Ok(t.call(
            (g.module, g.name, "call", PyTuple::new(py, args)?),
            Some(&kw),
        )?)
    }

    fn build(&mut self, target: &Obj<'py>, state: Obj<'py>) -> Res<bool> {
        let py = self.py;
        if self.is_inert(target) {
            if self.is_inert_global(target)? {
                return Ok(false);
            }
            target.setattr(intern!(py, "state"), state)?;
            return Ok(true);
        }
        if !self.created.contains(&(target.as_ptr() as usize)) {
            // A class, a function, a value an allowed callable shared, anything the load did
            // not itself create through an allowed class: never mutated.
            return Ok(false);
        }
        if !self.partial_state_ok(target, &state)? {
            return Err(uerr(
                py,
                "BUILD: a functools.partial may only wrap an allowed callable",
            )
            .into());
        }
        if let Some(setstate) = self.class_setstate(target)? {
            setstate.call1((state,))?;
            return Ok(true);
        }
        self.default_build(target, &state)?;
        Ok(true)
    }

    // ---- the outside world ----------------------------------------------------------------

    fn persistent_load(&mut self, pid: Obj<'py>) -> Res<Option<Obj<'py>>> {
        match &self.persistent_load {
            Some(f) => Ok(Some(f.call1((pid,))?)),
            None => Ok(None),
        }
    }

    fn next_buffer(&mut self) -> Res<Buffer<Obj<'py>>> {
        let Some(it) = self.buffers.as_mut() else {
            return Ok(Buffer::NotGiven);
        };
        match it.next() {
            Some(b) => Ok(Buffer::Next(b?)),
            None => Ok(Buffer::Exhausted),
        }
    }

    fn readonly(&mut self, h: Obj<'py>) -> Res<Obj<'py>> {
        let py = self.py;
        let mv = pyo3::types::PyMemoryView::from(&h)?.into_any();
        let ro: bool = mv.getattr(intern!(py, "readonly"))?.extract()?;
        if ro {
            Ok(mv)
        } else {
            Ok(mv.call_method0(intern!(py, "toreadonly"))?)
        }
    }

    #[inline]
    fn reused(&mut self, h: &Obj<'py>, depth: u32) {
        if !self.shared && !settled(h, depth) {
            self.shared = true;
        }
    }

    fn finish(&mut self, root: Obj<'py>) -> Res<Obj<'py>> {
        if self.shared {
            check_depth(self.py, &root, self.max_depth)?;
        }
        Ok(root)
    }
}
