//! Pickle bytes -> Python objects, safely: `cellar.pickle.loads`.
//!
//! A flat opcode loop (no recursion) that mirrors CPython 3.11's C unpickler (`Modules/_pickle.c`)
//! for every opcode of protocols 0-5, with one difference that is the point of it: **nothing is
//! imported and nothing is called by name.** A global (GLOBAL, STACK_GLOBAL, INST, EXT1/2/4)
//! resolves only to
//! - an object the caller allowed (`allow=`, or registered with `cellar.copyreg`): the table
//!   `allowed` maps `(module, qualname)` to it, and only those objects (plus the `cls.__new__`
//!   and `functools.partial` objects derived from them, see below) may be called;
//! - one of the globals CPython writes for basic types (`builtins.complex`, `set`, `frozenset`,
//!   `bytearray`, `bytes`, `slice`, `range`, `Ellipsis`, `StopIteration`, `NotImplemented`,
//!   `_codecs.encode`), each called
//!   only with the argument shapes CPython writes (so `bytearray(10**12)` is refused);
//! - a pattern marker (`copyreg._reconstructor`, `copyreg.__newobj__`, `copyreg.__newobj_ex__`,
//!   `builtins.getattr`, `functools.partial`, and the reconstructor bases `builtins.object`,
//!   `list`, `dict`, ...) that only shapes objects of allowed classes: `getattr(cls, '__new__')`
//!   and `partial(cls.__new__, cls, ...)` are how CPython writes `__getnewargs_ex__` at protocols
//!   2-3;
//! - with `inert=True`, an inert object (`cellar.pickle.Inert`): the global, and what the pickle
//!   does with it (REDUCE/NEWOBJ arguments, BUILD state, appended items), kept as data;
//! - otherwise `UnpicklingError: global 'os.system' is forbidden ...`, with the message from
//!   `cellar_pickle::policy::refusal` (class or function, the `(module, qualname, obj)` form).
//!
//! The default globals come from the one table `cellar_pickle::policy::DEFAULT_GLOBALS`; they go
//! on the stack as stand-ins (never the real stdlib objects), so BUILD, SETITEM or an allowed
//! callable can never reach copyreg's or functools' functions, and a stand-in the result still
//! references at STOP is refused. BUILD acts only on objects this load created through an
//! allowed class or callable (fresh: nobody else held them); `__setstate__` comes from the
//! class's MRO, never from the instance. APPEND/SETITEM/ADDITEMS on anything but an exact
//! container, an inert object or a created instance is refused, and containers an allowed
//! callable returned while others hold them are never mutated.
//!
//! Bounds for hostile input: every length is checked against the bytes present before anything
//! is allocated, MARK nesting and the nesting of the result are limited by `max_depth`, the bytes
//! the result may occupy by `max_bytes` (charged for payloads and for the copies the basic-type
//! constructors make), and nothing panics.

// Issue 12: every unsafe block documented, no unsafe operation without its own block (the
// crate-level attribute waits for the marshal modules).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::collections::{HashMap, HashSet};

use pyo3::exceptions::{PyEOFError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyIterator, PyList, PySet,
    PyString, PyTuple, PyType,
};

use cellar_pickle::ops as op;
use cellar_pickle::policy::Known as Policy;

/// The default `max_depth`: nesting of MARKs and of the result.
pub(crate) const DEFAULT_MAX_DEPTH: u32 = 2000;

/// Dense memo slots are kept for indices below this; others go to a map, so a hostile
/// `LONG_BINPUT 0xffffffff` never sizes a table.
const DENSE_MEMO: u64 = 1 << 20;

static UNPICKLING_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `pickle.UnpicklingError`, the stdlib's own class (so `except pickle.UnpicklingError` works).
fn unpickling_error(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    UNPICKLING_ERROR.import(py, "pickle", "UnpicklingError")
}

/// Build an `UnpicklingError(msg)`.
fn uerr(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    match unpickling_error(py) {
        Ok(t) => PyErr::from_type(t.clone(), msg.into()),
        Err(e) => e,
    }
}

/// The stdlib objects the decoder recognises by identity.
struct Known {
    complex: Py<PyAny>,
    set: Py<PyAny>,
    frozenset: Py<PyAny>,
    bytearray: Py<PyAny>,
    bytes: Py<PyAny>,
    slice: Py<PyAny>,
    range: Py<PyAny>,
    stop_iteration: Py<PyAny>,
    codecs_encode: Py<PyAny>,
    reconstructor: Py<PyAny>,
    newobj: Py<PyAny>,
    newobj_ex: Py<PyAny>,
    getattr: Py<PyAny>,
    partial: Py<PyAny>,
    /// `types.MethodType` (bound methods, compared by value in `may_call`).
    method_type: Py<PyAny>,
    /// `(module, name)` -> object, for every global above plus the reconstructor bases and
    /// the constants (`Ellipsis`, `NotImplemented`).
    by_name: HashMap<(String, String), Py<PyAny>>,
    /// Types `copyreg._reconstructor` may use as its `base` argument.
    bases: HashSet<usize>,
    /// The default globals that are plain values (Ellipsis, StopIteration, NotImplemented).
    constants: HashSet<(String, String)>,
    /// `builtins.object`, to make stand-ins.
    object: Py<PyAny>,
}

static KNOWN: PyOnceLock<Known> = PyOnceLock::new();

fn known(py: Python<'_>) -> PyResult<&Known> {
    KNOWN.get_or_try_init(py, || {
        let builtins = py.import("builtins")?;
        let copyreg = py.import("copyreg")?;
        let b = |n: &str| -> PyResult<Py<PyAny>> { Ok(builtins.getattr(n)?.unbind()) };
        let mut by_name = HashMap::new();
        let mut bases = HashSet::new();
        // The one table of default globals (cellar_pickle::policy): the Rust decoder, the CLI
        // and this one resolve exactly the same names.
        let mut constants = HashSet::new();
        for &(m, n, k) in cellar_pickle::policy::DEFAULT_GLOBALS {
            let o = py.import(m)?.getattr(n)?.unbind();
            if matches!(
                k,
                Policy::Ellipsis | Policy::StopIteration | Policy::NotImplemented
            ) {
                constants.insert((m.to_owned(), n.to_owned()));
            }
            if matches!(k, Policy::Base)
                || matches!(
                    k,
                    Policy::Bytes
                        | Policy::Set
                        | Policy::FrozenSet
                        | Policy::ByteArray
                        | Policy::Complex
                )
            {
                bases.insert(o.as_ptr() as usize);
            }
            by_name.insert((m.to_owned(), n.to_owned()), o);
        }
        let codecs_encode = py.import("_codecs")?.getattr("encode")?.unbind();
        let reconstructor = copyreg.getattr("_reconstructor")?.unbind();
        let newobj = copyreg.getattr("__newobj__")?.unbind();
        let newobj_ex = copyreg.getattr("__newobj_ex__")?.unbind();
        let partial = py.import("functools")?.getattr("partial")?.unbind();
        Ok(Known {
            complex: b("complex")?,
            set: b("set")?,
            frozenset: b("frozenset")?,
            bytearray: b("bytearray")?,
            bytes: b("bytes")?,
            slice: b("slice")?,
            range: b("range")?,
            stop_iteration: b("StopIteration")?,
            getattr: b("getattr")?,
            codecs_encode,
            reconstructor,
            newobj,
            newobj_ex,
            partial,
            method_type: py.import("types")?.getattr("MethodType")?.unbind(),
            by_name,
            bases,
            constants,
            object: b("object")?,
        })
    })
}

/// Everything a load is configured with (built by `cellar.pickle` from its keyword arguments).
pub(crate) struct Config<'py> {
    /// `(module, qualname)` -> allowed object.
    pub allowed: HashMap<(String, String), Bound<'py, PyAny>>,
    /// Parents of allowed nested classes (`Outer` for `Outer.Inner`): values, never called;
    /// only `getattr(Outer, 'Inner')` of an allowed class may use them.
    pub namespaces: HashMap<(String, String), Bound<'py, PyAny>>,
    /// The `cellar.pickle.Inert` class when `inert=True`.
    pub inert: Option<Bound<'py, PyType>>,
    pub fix_imports: bool,
    /// Python 2 `str` decoding: `None` for `encoding='bytes'`.
    pub encoding: Option<String>,
    pub errors: String,
    pub buffers: Option<Bound<'py, PyIterator>>,
    pub persistent_load: Option<Bound<'py, PyAny>>,
    /// copyreg's `_inverted_registry` role: extension code -> (module, name).
    pub extensions: Option<Bound<'py, PyDict>>,
    pub max_depth: u32,
    pub max_bytes: usize,
}

type Res<T> = PyResult<T>;

/// One stack slot: the object and the nesting depth of what it holds (0 for scalars).
type Slot<'py> = (Bound<'py, PyAny>, u32);

struct Loader<'a, 'py> {
    py: Python<'py>,
    data: &'a [u8],
    pos: usize,
    /// End of the current frame (protocol 4+), if any.
    frame_end: Option<usize>,
    stack: Vec<Slot<'py>>,
    marks: Vec<usize>,
    memo: Vec<Option<Slot<'py>>>,
    memo_sparse: HashMap<u64, Slot<'py>>,
    proto: u8,
    cfg: &'a Config<'py>,
    known: &'py Known,
    /// Pointers of objects that may be called: the allowed ones, plus `cls.__new__` and
    /// partials derived from them.
    callable: HashSet<usize>,
    /// Keeps derived callables and created instances alive while their pointers are in
    /// `callable` / `created`.
    derived: Vec<Bound<'py, PyAny>>,
    /// Objects this load created through an allowed class or callable (fresh: nobody else held
    /// a reference when they were made): the only targets BUILD may act on.
    created: HashSet<usize>,
    /// Exact containers an allowed callable returned that someone else also references: never
    /// mutated (kept alive in `derived`).
    foreign: HashSet<usize>,
    /// Set by `reduce` / `newobj` / `instantiate` when the object they return was made by an
    /// allowed class or callable (so it may become a BUILD target if it is fresh).
    made: bool,
    /// `type -> __setstate__` found along the type's MRO (never in the instance), per load.
    setstate_cache: HashMap<usize, Option<Bound<'py, PyAny>>>,
    /// Stand-ins for the default globals that are not plain values (basic types and pattern
    /// markers): a fresh `object()` (an inert `Inert` global with inert=True) goes on the
    /// stack instead of the real stdlib object, so nothing the pickle does can reach it (BUILD,
    /// storing, passing it to an allowed callable). `real_of` maps a stand-in back to the real
    /// object for the REDUCE patterns; a stand-in still referenced by the result at STOP is an
    /// UnpicklingError (a marker never becomes a value), as in the Rust decoder.
    stand_ins: HashMap<(String, String), Bound<'py, PyAny>>,
    real_of: HashMap<usize, (Bound<'py, PyAny>, String)>,
    /// A container reached through the memo or DUP may be mutated after it was nested, which
    /// the per-slot depths cannot see: then the result's depth is measured exactly at the end.
    shared: bool,
    budget: usize,
}

/// Decode the first pickle in `data`; returns the object and the bytes used (through STOP).
pub(crate) fn load<'py>(
    py: Python<'py>,
    data: &[u8],
    cfg: &Config<'py>,
) -> Res<(Bound<'py, PyAny>, usize)> {
    let known = known(py)?;
    let mut callable = HashSet::with_capacity(cfg.allowed.len());
    for v in cfg.allowed.values() {
        callable.insert(v.as_ptr() as usize);
    }
    let mut l = Loader {
        py,
        data,
        pos: 0,
        frame_end: None,
        stack: Vec::with_capacity(16),
        marks: Vec::new(),
        memo: Vec::new(),
        memo_sparse: HashMap::new(),
        proto: 0,
        cfg,
        known,
        callable,
        derived: Vec::new(),
        created: HashSet::new(),
        foreign: HashSet::new(),
        made: false,
        setstate_cache: HashMap::new(),
        stand_ins: HashMap::new(),
        real_of: HashMap::new(),
        shared: false,
        budget: cfg.max_bytes,
    };
    // The decoder creates no garbage cycles, and a collection pass over the half-built result
    // costs time for nothing: pause the cyclic GC while decoding (restored on every exit).
    let _gc = GcPause::new();
    let v = l.run()?;
    if l.shared {
        check_depth(py, &v, cfg.max_depth)?;
    }
    Ok((v, l.pos))
}

/// Pauses CPython's cyclic garbage collector for its lifetime (if it was enabled).
struct GcPause(bool);

impl GcPause {
    fn new() -> Self {
        // SAFETY: called with the GIL held (inside a pyfunction).
        GcPause(unsafe { ffi::PyGC_Disable() } != 0)
    }
}

impl Drop for GcPause {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: still under the GIL (the guard lives inside the load call).
            unsafe { ffi::PyGC_Enable() };
        }
    }
}

/// The exact nesting of `root` (longest chain of containers; a cycle counts once), refused past
/// `max`. Iterative: the result may be deeper than the Rust stack could recurse.
fn check_depth<'py>(py: Python<'py>, root: &Bound<'py, PyAny>, max: u32) -> Res<()> {
    let mut height: HashMap<usize, u32> = HashMap::new();
    let mut on_path: HashSet<usize> = HashSet::new();
    // (object, children, next child index, best child height)
    type Frame<'py> = (Bound<'py, PyAny>, Vec<Bound<'py, PyAny>>, usize, u32);
    let mut todo: Vec<Frame<'py>> = Vec::new();
    let children = |o: &Bound<'py, PyAny>| -> Res<Option<Vec<Bound<'py, PyAny>>>> {
        Ok(if let Ok(l) = o.cast::<PyList>() {
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
        })
    };
    match children(root)? {
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
            if let Some(c) = children(&child)? {
                if todo.len() as u32 >= max {
                    return Err(uerr(
                        py,
                        format!("pickle data nests deeper than max_depth={max}"),
                    ));
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

fn is_exact<T: pyo3::type_object::PyTypeInfo>(o: &Bound<'_, PyAny>) -> bool {
    o.is_exact_instance_of::<T>()
}

impl<'a, 'py> Loader<'a, 'py> {
    // ---- input ----

    #[cold]
    fn truncated(&self) -> PyErr {
        if self.pos >= self.data.len() && self.pos == 0 {
            PyEOFError::new_err("Ran out of input")
        } else {
            uerr(self.py, "pickle data was truncated")
        }
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = match self.pos.checked_add(n) {
            Some(e) if e <= self.data.len() => e,
            _ => return Err(self.truncated()),
        };
        if let Some(fe) = self.frame_end {
            if end > fe {
                if self.pos >= fe {
                    // The frame is used up: continue outside it.
                    self.frame_end = None;
                } else {
                    return Err(uerr(self.py, "pickle exhausted before end of frame"));
                }
            }
        }
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    #[inline(always)]
    fn byte(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Res<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    #[inline(always)]
    fn u32(&mut self) -> Res<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Res<u64> {
        let b = self.take(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }

    /// A length-prefixed payload: the length is checked against the input before anything else.
    #[inline(always)]
    fn take_len(&mut self, n: u64) -> Res<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| self.truncated())?;
        self.charge(n)?;
        self.take(n)
    }

    /// A payload behind a signed 4-byte length (LONG4, BINSTRING): negative is refused as
    /// CPython refuses it.
    fn take_signed_len(&mut self, what: &str) -> Res<&'a [u8]> {
        let n = self.u32()? as i32;
        if n < 0 {
            return Err(uerr(
                self.py,
                format!("{what} pickle has negative byte count"),
            ));
        }
        self.take_len(n as u64)
    }

    /// A text line without its `\n`.
    fn line(&mut self) -> Res<&'a [u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&c| c == b'\n') {
            Some(i) => {
                let s = self.take(i + 1)?;
                Ok(&s[..i])
            }
            None => Err(uerr(self.py, "pickle data was truncated")),
        }
    }

    fn charge(&mut self, n: usize) -> Res<()> {
        match self.budget.checked_sub(n) {
            Some(b) => {
                self.budget = b;
                Ok(())
            }
            None => Err(uerr(
                self.py,
                format!(
                    "pickle data would need more than max_bytes={} bytes",
                    self.cfg.max_bytes
                ),
            )),
        }
    }

    // ---- stack ----

    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    #[cold]
    fn underflow(&self) -> PyErr {
        uerr(
            self.py,
            if self.marks.is_empty() {
                "unpickling stack underflow"
            } else {
                "unexpected MARK found"
            },
        )
    }

    #[inline(always)]
    fn push(&mut self, o: Bound<'py, PyAny>, depth: u32) {
        self.stack.push((o, depth));
    }

    #[inline(always)]
    fn push_owned(&mut self, p: *mut ffi::PyObject) -> Res<()> {
        // SAFETY: `p` is a new reference (or NULL with an exception set) from the C API.
        let o = unsafe { Bound::from_owned_ptr_or_err(self.py, p)? };
        self.stack.push((o, 0));
        Ok(())
    }

    #[inline(always)]
    fn pop(&mut self) -> Res<Slot<'py>> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        self.stack.pop().ok_or_else(|| self.underflow())
    }

    #[inline(always)]
    fn top(&self) -> Res<&Slot<'py>> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        self.stack.last().ok_or_else(|| self.underflow())
    }

    /// Pop the topmost mark and everything above it.
    fn pop_mark(&mut self) -> Res<Vec<Slot<'py>>> {
        let m = self.pop_mark_index()?;
        Ok(self.stack.split_off(m))
    }

    /// Pop the topmost mark; the items above it are `self.stack[m..]`.
    #[inline(always)]
    fn pop_mark_index(&mut self) -> Res<usize> {
        match self.marks.pop() {
            Some(m) => Ok(m.min(self.stack.len())),
            None => Err(uerr(self.py, "could not find MARK")),
        }
    }

    /// The deepest item in `self.stack[from..]`, plus one (0 if there are none).
    #[inline(always)]
    fn items_depth(&self, from: usize) -> Res<u32> {
        let items = &self.stack[from..];
        if items.is_empty() {
            return Ok(0);
        }
        let mut d = 0;
        for (_, id) in items {
            d = d.max(*id);
        }
        self.deeper(d)
    }

    /// TUPLE / TUPLE1-3: the items `self.stack[from..]` become one tuple.
    fn tuple_from(&mut self, from: usize) -> Res<()> {
        let d = self.items_depth(from)?;
        let n = self.stack.len() - from;
        // SAFETY: GIL held; PyTuple_New(n) has n empty slots, each filled exactly once below
        // with a reference we own (into_ptr), before the tuple is exposed.
        unsafe {
            let t = ffi::PyTuple_New(n as ffi::Py_ssize_t);
            if t.is_null() {
                return Err(PyErr::fetch(self.py));
            }
            for (i, (o, _)) in self.stack.drain(from..).enumerate() {
                ffi::PyTuple_SET_ITEM(t, i as ffi::Py_ssize_t, o.into_ptr());
            }
            self.stack.push((Bound::from_owned_ptr(self.py, t), d));
        }
        Ok(())
    }

    /// APPENDS onto an exact list, in place (no temporary vector). `false`: not a list, the
    /// caller takes the general path.
    #[inline(always)]
    fn appends_fast(&mut self, m: usize) -> Res<bool> {
        if m == 0 || m <= self.fence() {
            return Err(self.underflow());
        }
        let d = self.items_depth(m)?;
        let (head, items) = self.stack.split_at_mut(m);
        let slot = &mut head[m - 1];
        if !is_exact::<PyList>(&slot.0)
            || (!self.foreign.is_empty() && self.foreign.contains(&(slot.0.as_ptr() as usize)))
        {
            return Ok(false);
        }
        slot.1 = slot.1.max(d);
        let l = slot.0.as_ptr();
        for (o, _) in items.iter() {
            // SAFETY: GIL held; `l` is a live list, `o` a live object.
            if unsafe { ffi::PyList_Append(l, o.as_ptr()) } < 0 {
                return Err(PyErr::fetch(self.py));
            }
        }
        self.stack.truncate(m);
        Ok(true)
    }

    /// SETITEMS onto an exact dict, in place. `false`: not a dict.
    #[inline(always)]
    fn setitems_fast(&mut self, m: usize) -> Res<bool> {
        if m == 0 || m <= self.fence() {
            return Err(self.underflow());
        }
        let d = self.items_depth(m)?;
        let (head, items) = self.stack.split_at_mut(m);
        let slot = &mut head[m - 1];
        if !is_exact::<PyDict>(&slot.0)
            || (!self.foreign.is_empty() && self.foreign.contains(&(slot.0.as_ptr() as usize)))
        {
            return Ok(false);
        }
        slot.1 = slot.1.max(d);
        let dict = slot.0.as_ptr();
        for pair in items.chunks_exact(2) {
            // SAFETY: GIL held; all three are live objects.
            if unsafe { ffi::PyDict_SetItem(dict, pair[0].0.as_ptr(), pair[1].0.as_ptr()) } < 0 {
                return Err(PyErr::fetch(self.py));
            }
        }
        self.stack.truncate(m);
        Ok(true)
    }

    fn deeper(&self, d: u32) -> Res<u32> {
        let d = d + 1;
        if d > self.cfg.max_depth {
            return Err(uerr(
                self.py,
                format!(
                    "pickle data nests deeper than max_depth={}",
                    self.cfg.max_depth
                ),
            ));
        }
        Ok(d)
    }

    // ---- memo ----

    /// PUT / BINPUT / LONG_BINPUT / MEMOIZE. The dense table only grows by one slot at a time
    /// (so `LONG_BINPUT 0x000fffff` never sizes a table from one index); every new slot is
    /// charged to `max_bytes` (16 bytes dense, 48 sparse), like the Rust decoder.
    fn memo_put(&mut self, idx: u64, s: Slot<'py>) -> Res<()> {
        let i = idx as usize;
        if idx < DENSE_MEMO && i < self.memo.len() {
            self.memo[i] = Some(s);
        } else if idx < DENSE_MEMO && i == self.memo.len() {
            self.charge(16)?;
            self.memo.push(Some(s));
        } else {
            if !self.memo_sparse.contains_key(&idx) {
                self.charge(48)?;
            }
            self.memo_sparse.insert(idx, s);
        }
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Res<()> {
        let got = match self.memo.get(idx as usize) {
            Some(Some(s)) if idx < DENSE_MEMO => Some(s),
            _ => self.memo_sparse.get(&idx),
        };
        match got {
            Some((o, d)) => {
                let (o, d) = (o.clone(), *d);
                if !settled(&o, d) {
                    self.shared = true;
                }
                self.push(o, d);
                Ok(())
            }
            None => Err(uerr(
                self.py,
                format!("Memo value not found at index {idx}"),
            )),
        }
    }

    fn put_top(&mut self, idx: u64) -> Res<()> {
        let s = self.top()?.clone();
        self.memo_put(idx, s)
    }

    fn memo_len(&self) -> u64 {
        (self.memo.len() + self.memo_sparse.len()) as u64
    }

    // ---- the loop ----

    fn run(&mut self) -> Res<Bound<'py, PyAny>> {
        let py = self.py;
        loop {
            let code = match self.data.get(self.pos) {
                Some(_) => self.byte()?,
                None => return Err(PyEOFError::new_err("Ran out of input")),
            };
            match code {
                op::STOP => {
                    let (v, _) = self.pop()?;
                    self.check_stand_ins()?;
                    return Ok(v);
                }
                op::PROTO => {
                    let p = self.byte()?;
                    if p > 5 {
                        return Err(PyValueError::new_err(format!(
                            "unsupported pickle protocol: {p}"
                        )));
                    }
                    self.proto = p;
                }
                op::FRAME => {
                    let n = self.u64()?;
                    if let Some(fe) = self.frame_end {
                        if self.pos < fe {
                            return Err(uerr(
                                py,
                                "beginning of a new frame before end of current frame",
                            ));
                        }
                    }
                    let n = usize::try_from(n).map_err(|_| self.truncated())?;
                    match self.pos.checked_add(n) {
                        Some(e) if e <= self.data.len() => self.frame_end = Some(e),
                        _ => return Err(uerr(py, "pickle data was truncated")),
                    }
                }
                op::MARK => {
                    if self.marks.len() as u32 >= self.cfg.max_depth {
                        return Err(uerr(
                            py,
                            format!(
                                "pickle data nests deeper than max_depth={} (MARK)",
                                self.cfg.max_depth
                            ),
                        ));
                    }
                    self.marks.push(self.stack.len());
                }
                op::POP => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let (o, d) = self.top()?.clone();
                    if !settled(&o, d) {
                        self.shared = true;
                    }
                    self.push(o, d);
                }
                // ---- scalars ----
                op::NONE => self.push(py.None().into_bound(py), 0),
                op::NEWTRUE => self.push(PyBool::new(py, true).to_owned().into_any(), 0),
                op::NEWFALSE => self.push(PyBool::new(py, false).to_owned().into_any(), 0),
                op::BININT => {
                    let v = self.u32()? as i32;
                    // SAFETY: GIL held.
                    self.push_owned(unsafe { ffi::PyLong_FromLong(v.into()) })?;
                }
                op::BININT1 => {
                    let v = self.byte()?;
                    // SAFETY: GIL held.
                    self.push_owned(unsafe { ffi::PyLong_FromLong(v.into()) })?;
                }
                op::BININT2 => {
                    let v = self.u16()?;
                    // SAFETY: GIL held.
                    self.push_owned(unsafe { ffi::PyLong_FromLong(v.into()) })?;
                }
                op::LONG1 => {
                    let n = self.byte()?;
                    let b = self.take_len(n.into())?;
                    self.push_long_le(b)?;
                }
                op::LONG4 => {
                    let b = self.take_signed_len("LONG")?;
                    self.push_long_le(b)?;
                }
                op::INT => {
                    let line = self.line()?;
                    let v = match line {
                        b"01" => PyBool::new(py, true).to_owned().into_any(),
                        b"00" => PyBool::new(py, false).to_owned().into_any(),
                        _ => self.parse_int(line, false)?,
                    };
                    self.push(v, 0);
                }
                op::LONG => {
                    let line = self.line()?;
                    let v = self.parse_int(line, true)?;
                    self.push(v, 0);
                }
                op::FLOAT => {
                    let line = self.line()?;
                    let s = std::str::from_utf8(line)
                        .ok()
                        .map(str::trim)
                        .and_then(|s| s.parse::<f64>().ok())
                        .ok_or_else(|| {
                            PyValueError::new_err(format!(
                                "could not convert string to float: {}",
                                String::from_utf8_lossy(line)
                            ))
                        })?;
                    self.push(PyFloat::new(py, s).into_any(), 0);
                }
                op::BINFLOAT => {
                    let b = self.take(8)?;
                    let mut w = [0u8; 8];
                    w.copy_from_slice(b);
                    // SAFETY: GIL held.
                    self.push_owned(unsafe { ffi::PyFloat_FromDouble(f64::from_be_bytes(w)) })?;
                }
                // ---- strings ----
                op::SHORT_BINUNICODE => {
                    let n = self.byte()?;
                    let b = self.take_len(n.into())?;
                    self.push_utf8(b)?;
                }
                op::BINUNICODE => {
                    let n = self.u32()?;
                    let b = self.take_len(n.into())?;
                    self.push_utf8(b)?;
                }
                op::BINUNICODE8 => {
                    let n = self.u64()?;
                    let b = self.take_len(n)?;
                    self.push_utf8(b)?;
                }
                op::UNICODE => {
                    let b = self.line()?;
                    // SAFETY: GIL held; pointer and length describe `b`.
                    self.push_owned(unsafe {
                        ffi::PyUnicode_DecodeRawUnicodeEscape(
                            b.as_ptr().cast(),
                            b.len() as ffi::Py_ssize_t,
                            std::ptr::null(),
                        )
                    })?;
                }
                op::SHORT_BINBYTES => {
                    let n = self.byte()?;
                    let b = self.take_len(n.into())?;
                    self.push(PyBytes::new(py, b).into_any(), 0);
                }
                op::BINBYTES => {
                    let n = self.u32()?;
                    let b = self.take_len(n.into())?;
                    self.push(PyBytes::new(py, b).into_any(), 0);
                }
                op::BINBYTES8 => {
                    let n = self.u64()?;
                    let b = self.take_len(n)?;
                    self.push(PyBytes::new(py, b).into_any(), 0);
                }
                op::BYTEARRAY8 => {
                    let n = self.u64()?;
                    let b = self.take_len(n)?;
                    self.push(PyByteArray::new(py, b).into_any(), 0);
                }
                op::SHORT_BINSTRING => {
                    let n = self.byte()?;
                    let b = self.take_len(n.into())?;
                    self.push_py2_str(b)?;
                }
                op::BINSTRING => {
                    let b = self.take_signed_len("BINSTRING")?;
                    self.push_py2_str(b)?;
                }
                op::STRING => {
                    let line = self.line()?;
                    let inner = match line {
                        [q @ (b'"' | b'\''), mid @ .., last] if last == q && !line.is_empty() => {
                            if line.len() < 2 {
                                return Err(uerr(py, "the STRING opcode argument must be quoted"));
                            }
                            mid
                        }
                        _ => {
                            return Err(uerr(py, "the STRING opcode argument must be quoted"));
                        }
                    };
                    let raw = py
                        .import(intern!(py, "codecs"))?
                        .call_method1(intern!(py, "escape_decode"), (PyBytes::new(py, inner),))?
                        .get_item(0)?;
                    let raw = raw.cast::<PyBytes>()?.as_bytes().to_vec();
                    self.push_py2_str(&raw)?;
                }
                // ---- containers ----
                op::EMPTY_TUPLE => self.push(PyTuple::empty(py).into_any(), 0),
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = (code - op::TUPLE1 + 1) as usize;
                    if self.stack.len() < self.fence() + n {
                        return Err(self.underflow());
                    }
                    self.tuple_from(self.stack.len() - n)?;
                }
                op::TUPLE => {
                    let m = self.pop_mark_index()?;
                    self.tuple_from(m)?;
                }
                op::EMPTY_LIST => {
                    // SAFETY: GIL held.
                    self.push_owned(unsafe { ffi::PyList_New(0) })?;
                }
                op::LIST => {
                    let items = self.pop_mark()?;
                    let mut d = 0;
                    for (_, id) in &items {
                        d = d.max(*id);
                    }
                    let d = if items.is_empty() { 0 } else { self.deeper(d)? };
                    let l = PyList::new(py, items.into_iter().map(|(o, _)| o))?;
                    self.push(l.into_any(), d);
                }
                op::EMPTY_DICT => {
                    // SAFETY: GIL held.
                    self.push_owned(unsafe { ffi::PyDict_New() })?;
                }
                op::DICT => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(uerr(py, "odd number of items for DICT"));
                    }
                    let dict = PyDict::new(py);
                    let mut d = 0;
                    let mut it = items.into_iter();
                    while let (Some((k, kd)), Some((v, vd))) = (it.next(), it.next()) {
                        d = d.max(kd).max(vd);
                        dict.set_item(k, v)?;
                    }
                    let d = if dict.is_empty() { 0 } else { self.deeper(d)? };
                    self.push(dict.into_any(), d);
                }
                op::EMPTY_SET => self.push(PySet::empty(py)?.into_any(), 0),
                op::FROZENSET => {
                    let items = self.pop_mark()?;
                    let mut d = 0;
                    for (_, id) in &items {
                        d = d.max(*id);
                    }
                    let d = if items.is_empty() { 0 } else { self.deeper(d)? };
                    let s = PyFrozenSet::new(py, items.iter().map(|(o, _)| o))?;
                    self.push(s.into_any(), d);
                }
                op::APPEND => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                op::APPENDS => {
                    let m = self.pop_mark_index()?;
                    if !self.appends_fast(m)? {
                        let items = self.stack.split_off(m);
                        self.extend_list(items)?;
                    }
                }
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                op::SETITEMS => {
                    let m = self.pop_mark_index()?;
                    if (self.stack.len() - m) % 2 != 0 {
                        return Err(uerr(py, "odd number of items for SETITEMS"));
                    }
                    if !self.setitems_fast(m)? {
                        let items = self.stack.split_off(m);
                        self.set_items(items)?;
                    }
                }
                op::ADDITEMS => {
                    let items = self.pop_mark()?;
                    self.add_items(items)?;
                }
                // ---- memo ----
                op::PUT => {
                    let line = self.line()?;
                    let idx = parse_index(line)
                        .ok_or_else(|| PyValueError::new_err("invalid literal for PUT index"))?;
                    if idx < 0 {
                        return Err(PyValueError::new_err("negative PUT argument"));
                    }
                    self.put_top(idx as u64)?;
                }
                op::BINPUT => {
                    let idx = self.byte()?;
                    self.put_top(idx.into())?;
                }
                op::LONG_BINPUT => {
                    // Unsigned, as pickle.py reads it (`<I`); a huge index goes to the sparse,
                    // charged part of the memo.
                    let idx = self.u32()?;
                    self.put_top(idx.into())?;
                }
                op::MEMOIZE => {
                    let idx = self.memo_len();
                    self.put_top(idx)?;
                }
                op::GET => {
                    let line = self.line()?;
                    let idx = parse_index(line)
                        .ok_or_else(|| PyValueError::new_err("invalid literal for GET index"))?;
                    if idx < 0 {
                        return Err(uerr(py, format!("Memo value not found at index {idx}")));
                    }
                    self.memo_get(idx as u64)?;
                }
                op::BINGET => {
                    let idx = self.byte()?;
                    self.memo_get(idx.into())?;
                }
                op::LONG_BINGET => {
                    let idx = self.u32()?;
                    self.memo_get(idx.into())?;
                }
                // ---- globals and objects ----
                op::GLOBAL => {
                    let m = self.line()?;
                    let n = self.line()?;
                    let (m, n) = (self.utf8_name(m)?, self.utf8_name(n)?);
                    let g = self.find_class(&m, &n)?;
                    self.push(g, 0);
                }
                op::STACK_GLOBAL => {
                    let (n, _) = self.pop()?;
                    let (m, _) = self.pop()?;
                    let (Ok(m), Ok(n)) = (m.cast::<PyString>(), n.cast::<PyString>()) else {
                        return Err(uerr(py, "STACK_GLOBAL requires str"));
                    };
                    let (m, n) = (m.to_str()?.to_owned(), n.to_str()?.to_owned());
                    let g = self.find_class(&m, &n)?;
                    self.push(g, 0);
                }
                op::EXT1 | op::EXT2 | op::EXT4 => {
                    let code = match code {
                        op::EXT1 => i64::from(self.byte()?),
                        op::EXT2 => i64::from(self.u16()?),
                        _ => i64::from(self.u32()? as i32),
                    };
                    if code <= 0 {
                        return Err(uerr(py, "EXT specifies code <= 0"));
                    }
                    let key = self
                        .cfg
                        .extensions
                        .as_ref()
                        .map(|d| d.get_item(code))
                        .transpose()?
                        .flatten();
                    let Some(key) = key else {
                        return Err(PyValueError::new_err(format!(
                            "unregistered extension code {code}"
                        )));
                    };
                    let (m, n): (String, String) = key.extract().map_err(|_| {
                        uerr(
                            py,
                            format!("extension code {code} is not a (module, name) pair"),
                        )
                    })?;
                    let g = self.find_class_raw(&m, &n)?;
                    self.push(g, 0);
                }
                op::REDUCE => {
                    let (args, ad) = self.pop()?;
                    let (f, _) = self.pop()?;
                    let r = self.reduce(&f, &args)?;
                    self.note_made(&r);
                    let d = self.deeper(ad)?;
                    self.push(r, d);
                }
                op::NEWOBJ => {
                    let (args, ad) = self.pop()?;
                    let (cls, _) = self.pop()?;
                    let r = self.newobj(&cls, &args, None)?;
                    self.note_made(&r);
                    let d = self.deeper(ad)?;
                    self.push(r, d);
                }
                op::NEWOBJ_EX => {
                    let (kwargs, kd) = self.pop()?;
                    let (args, ad) = self.pop()?;
                    let (cls, _) = self.pop()?;
                    let r = self.newobj(&cls, &args, Some(&kwargs))?;
                    self.note_made(&r);
                    let d = self.deeper(ad.max(kd))?;
                    self.push(r, d);
                }
                op::INST => {
                    let m = self.line()?;
                    let n = self.line()?;
                    let (m, n) = (self.utf8_name(m)?, self.utf8_name(n)?);
                    let items = self.pop_mark()?;
                    let cls = self.find_class(&m, &n)?;
                    let (r, d) = self.instantiate(&cls, items)?;
                    self.note_made(&r);
                    self.push(r, d);
                }
                op::OBJ => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(uerr(py, "unpickling stack underflow"));
                    }
                    let (cls, _) = items.remove(0);
                    let (r, d) = self.instantiate(&cls, items)?;
                    self.note_made(&r);
                    self.push(r, d);
                }
                op::BUILD => {
                    let (state, sd) = self.pop()?;
                    let (inst, idp) = self.top()?.clone();
                    self.build(&inst, &state)?;
                    let d = self.deeper(idp.max(sd))?;
                    if let Some(s) = self.stack.last_mut() {
                        s.1 = d;
                    }
                }
                op::PERSID => {
                    let line = self.line()?;
                    let pid = std::str::from_utf8(line)
                        .ok()
                        .filter(|s| s.is_ascii())
                        .ok_or_else(|| {
                            uerr(py, "persistent IDs in protocol 0 must be ASCII strings")
                        })?;
                    let pid = PyString::new(py, pid).into_any();
                    let r = self.persistent(pid)?;
                    self.push(r, 0);
                }
                op::BINPERSID => {
                    let (pid, _) = self.pop()?;
                    let r = self.persistent(pid)?;
                    self.push(r, 0);
                }
                op::NEXT_BUFFER => {
                    let Some(it) = self.cfg.buffers.as_ref() else {
                        return Err(uerr(
                            py,
                            "pickle stream refers to out-of-band data but no *buffers* argument was given",
                        ));
                    };
                    match it.clone().next() {
                        Some(b) => self.push(b?, 0),
                        None => return Err(uerr(py, "not enough out-of-band buffers")),
                    }
                }
                op::READONLY_BUFFER => {
                    let (b, _) = self.pop()?;
                    let mv = py
                        .import(intern!(py, "builtins"))?
                        .getattr(intern!(py, "memoryview"))?
                        .call1((b,))?;
                    let ro: bool = mv.getattr(intern!(py, "readonly"))?.extract()?;
                    let mv = if ro {
                        mv
                    } else {
                        mv.call_method0(intern!(py, "toreadonly"))?
                    };
                    self.push(mv, 0);
                }
                other => {
                    let shown = if other.is_ascii_graphic() || other == b' ' {
                        format!("'{}'", other as char)
                    } else {
                        format!("'\\x{other:02x}'")
                    };
                    return Err(uerr(py, format!("invalid load key, {shown}.")));
                }
            }
        }
    }

    // ---- scalar helpers ----

    #[inline(always)]
    fn push_utf8(&mut self, b: &[u8]) -> Res<()> {
        // SAFETY: GIL held; pointer and length describe `b`.
        self.push_owned(unsafe {
            ffi::PyUnicode_DecodeUTF8(
                b.as_ptr().cast(),
                b.len() as ffi::Py_ssize_t,
                c"surrogatepass".as_ptr(),
            )
        })
    }

    /// LONG1 / LONG4 payload (little-endian two's complement). Public API only: Rust for up
    /// to 8 bytes, `int.from_bytes(b, 'little', signed=True)` beyond (no `_PyLong_FromByteArray`,
    /// which 3.13 no longer exports).
    fn push_long_le(&mut self, b: &[u8]) -> Res<()> {
        if b.len() <= 8 {
            let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut w = [fill; 8];
            w[..b.len()].copy_from_slice(b);
            let v = i64::from_le_bytes(w);
            // SAFETY: GIL held; PyLong_FromLongLong returns a new reference or NULL.
            return self.push_owned(unsafe { ffi::PyLong_FromLongLong(v) });
        }
        let py = self.py;
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "signed"), true)?;
        let v = py.get_type::<PyInt>().call_method(
            intern!(py, "from_bytes"),
            (PyBytes::new(py, b), intern!(py, "little")),
            Some(&kwargs),
        )?;
        self.push(v, 0);
        Ok(())
    }

    fn parse_int(&self, line: &[u8], long: bool) -> Res<Bound<'py, PyAny>> {
        let mut s = line;
        if long {
            if let [rest @ .., b'L'] = s {
                s = rest;
            }
        }
        let text = std::str::from_utf8(s)
            .map_err(|_| PyValueError::new_err("invalid literal for int() with base 10"))?;
        if let Ok(v) = text.trim().parse::<i64>() {
            return Ok(PyInt::new(self.py, v).into_any());
        }
        // Big or unusual: Python's own int() (which enforces 3.11's 4300-digit limit).
        self.py
            .import(intern!(self.py, "builtins"))?
            .getattr(intern!(self.py, "int"))?
            .call1((text,))
    }

    fn push_py2_str(&mut self, b: &[u8]) -> Res<()> {
        let py = self.py;
        match &self.cfg.encoding {
            None => self.push(PyBytes::new(py, b).into_any(), 0),
            Some(enc) => {
                let enc = std::ffi::CString::new(enc.as_str())
                    .map_err(|_| PyValueError::new_err("encoding contains NUL"))?;
                let errors = std::ffi::CString::new(self.cfg.errors.as_str())
                    .map_err(|_| PyValueError::new_err("errors contains NUL"))?;
                // SAFETY: GIL held; pointers are valid C strings / the payload.
                self.push_owned(unsafe {
                    ffi::PyUnicode_Decode(
                        b.as_ptr().cast(),
                        b.len() as ffi::Py_ssize_t,
                        enc.as_ptr(),
                        errors.as_ptr(),
                    )
                })?;
            }
        }
        Ok(())
    }

    fn utf8_name(&self, b: &[u8]) -> Res<String> {
        // UnicodeDecodeError, as CPython raises it (pickle decodes the names as UTF-8).
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(PyErr::from_value(
                pyo3::exceptions::PyUnicodeDecodeError::new_utf8(self.py, b, e)?.into_any(),
            )),
        }
    }

    // ---- container helpers ----

    /// The container the next APPENDS/SETITEMS/ADDITEMS targets (just below the mark, already
    /// popped), with its depth raised for the new items.
    fn target(&mut self, items: &[Slot<'py>]) -> Res<Bound<'py, PyAny>> {
        let mut d = 0;
        for (_, id) in items {
            d = d.max(*id);
        }
        let fence = self.fence();
        if self.stack.len() <= fence {
            return Err(self.underflow());
        }
        let deeper = if items.is_empty() { 0 } else { self.deeper(d)? };
        match self.stack.last_mut() {
            Some(slot) => {
                slot.1 = slot.1.max(deeper);
                Ok(slot.0.clone())
            }
            None => Err(self.underflow()),
        }
    }

    fn extend_list(&mut self, items: Vec<Slot<'py>>) -> Res<()> {
        let py = self.py;
        let target = self.target(&items)?;
        if let Ok(l) = target.cast_exact::<PyList>() {
            self.not_foreign(&target)?;
            for (o, _) in items {
                // SAFETY: GIL held; both are live objects.
                if unsafe { ffi::PyList_Append(l.as_ptr(), o.as_ptr()) } < 0 {
                    return Err(PyErr::fetch(py));
                }
            }
            return Ok(());
        }
        if self.is_inert(&target) {
            self.not_inert_global(&target)?;
            let li = target.getattr(intern!(py, "listitems"))?;
            for (o, _) in items {
                li.call_method1(intern!(py, "append"), (o,))?;
            }
            return Ok(());
        }
        // A list subclass the decoder created through an allowed class, as the C unpickler
        // does; anything else (a stand-in, a class, an object it did not create) is refused.
        self.mutable_target(&target, "APPEND/APPENDS target is not a list")?;
        if let Ok(ext) = target.getattr(intern!(py, "extend")) {
            let l = PyList::new(py, items.into_iter().map(|(o, _)| o))?;
            ext.call1((l,))?;
        } else {
            let app = target.getattr(intern!(py, "append"))?;
            for (o, _) in items {
                app.call1((o,))?;
            }
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Slot<'py>>) -> Res<()> {
        let py = self.py;
        let target = self.target(&items)?;
        if let Ok(d) = target.cast_exact::<PyDict>() {
            self.not_foreign(&target)?;
            let mut it = items.into_iter();
            while let (Some((k, _)), Some((v, _))) = (it.next(), it.next()) {
                // SAFETY: GIL held; all three are live objects.
                if unsafe { ffi::PyDict_SetItem(d.as_ptr(), k.as_ptr(), v.as_ptr()) } < 0 {
                    return Err(PyErr::fetch(py));
                }
            }
            return Ok(());
        }
        if self.is_inert(&target) {
            self.not_inert_global(&target)?;
            let di = target.getattr(intern!(py, "dictitems"))?;
            let mut it = items.into_iter();
            while let (Some((k, _)), Some((v, _))) = (it.next(), it.next()) {
                di.call_method1(intern!(py, "append"), ((k, v),))?;
            }
            return Ok(());
        }
        self.mutable_target(&target, "SETITEM/SETITEMS target is not a dict")?;
        let mut it = items.into_iter();
        while let (Some((k, _)), Some((v, _))) = (it.next(), it.next()) {
            target.set_item(k, v)?;
        }
        Ok(())
    }

    fn add_items(&mut self, items: Vec<Slot<'py>>) -> Res<()> {
        let py = self.py;
        let target = self.target(&items)?;
        if let Ok(s) = target.cast_exact::<PySet>() {
            self.not_foreign(&target)?;
            for (o, _) in items {
                s.add(o)?;
            }
            return Ok(());
        }
        if self.is_inert(&target) {
            self.not_inert_global(&target)?;
            let li = target.getattr(intern!(py, "listitems"))?;
            for (o, _) in items {
                li.call_method1(intern!(py, "append"), (o,))?;
            }
            return Ok(());
        }
        self.mutable_target(&target, "ADDITEMS target is not a set")?;
        let add = target.getattr(intern!(py, "add"))?;
        for (o, _) in items {
            add.call1((o,))?;
        }
        Ok(())
    }

    /// An inert global (a class or function named by the pickle) takes no items, as in Rust.
    fn not_inert_global(&self, target: &Bound<'py, PyAny>) -> Res<()> {
        let construct = target.getattr(intern!(self.py, "construct"))?;
        if construct.cast::<PyString>()?.to_str()? == "global" {
            return Err(uerr(
                self.py,
                format!("items added to the global {} itself", self.name_of(target)),
            ));
        }
        Ok(())
    }

    /// APPEND(S) / SETITEM(S) / ADDITEMS on something that is not an exact container: only an
    /// instance the decoder created through an allowed class (a list/dict/set subclass).
    fn mutable_target(&self, target: &Bound<'py, PyAny>, msg: &str) -> Res<()> {
        if self.created.contains(&(target.as_ptr() as usize)) {
            return Ok(());
        }
        Err(uerr(self.py, msg))
    }

    /// An exact container an allowed callable returned while something else still held it
    /// (a module-level list or dict): never mutated.
    fn not_foreign(&self, target: &Bound<'py, PyAny>) -> Res<()> {
        if !self.foreign.is_empty() && self.foreign.contains(&(target.as_ptr() as usize)) {
            return Err(uerr(
                self.py,
                "the target is a container an allowed callable returned but did not create: \
                 cellar.pickle never mutates it",
            ));
        }
        Ok(())
    }

    // ---- globals ----

    fn is_inert(&self, o: &Bound<'py, PyAny>) -> bool {
        match &self.cfg.inert {
            Some(t) => o.get_type().is(t),
            None => false,
        }
    }

    /// GLOBAL / STACK_GLOBAL / INST: `find_class` with the protocol 0-2 name mapping.
    fn find_class(&mut self, module: &str, name: &str) -> Res<Bound<'py, PyAny>> {
        if self.proto < 3 && self.cfg.fix_imports {
            let (m, n) = cellar_pickle::fix_imports_name(module, name);
            let (m, n) = (m.to_owned(), n.to_owned());
            return self.find_class_raw(&m, &n);
        }
        self.find_class_raw(module, name)
    }

    fn find_class_raw(&mut self, module: &str, name: &str) -> Res<Bound<'py, PyAny>> {
        let py = self.py;
        let key = (module.to_owned(), name.to_owned());
        if let Some(o) = self.cfg.allowed.get(&key) {
            return Ok(o.clone());
        }
        if let Some(o) = self.known.by_name.get(&key) {
            if self.known.constants.contains(&key) {
                return Ok(o.bind(py).clone());
            }
            if let Some(s) = self.stand_ins.get(&key) {
                return Ok(s.clone());
            }
            let stand_in = match &self.cfg.inert {
                Some(t) => t.call1((module, name))?,
                None => self.known.object.bind(py).call0()?,
            };
            self.real_of.insert(
                stand_in.as_ptr() as usize,
                (o.bind(py).clone(), format!("{module}.{name}")),
            );
            self.stand_ins.insert(key, stand_in.clone());
            return Ok(stand_in);
        }
        if let Some(o) = self.cfg.namespaces.get(&key) {
            return Ok(o.clone());
        }
        if let Some(t) = &self.cfg.inert {
            return t.call1((module, name));
        }
        // Error path only: scan the pickle to say whether it uses the global as a class or a
        // function (the same scan as cellar.pickle.globals_of).
        let report = cellar_pickle::globals_of(
            self.data,
            &cellar_pickle::Registry::default(),
            self.cfg.fix_imports,
        );
        let need = report
            .globals
            .iter()
            .find(|g| g.module == module && g.name == name)
            .map(|g| g.need());
        Err(uerr(py, cellar_pickle::policy::refusal(module, name, need)))
    }

    fn name_of(&self, o: &Bound<'py, PyAny>) -> String {
        let py = self.py;
        let m = o
            .getattr(intern!(py, "__module__"))
            .and_then(|m| m.extract::<String>())
            .unwrap_or_else(|_| "?".to_owned());
        let n = o
            .getattr(intern!(py, "__qualname__"))
            .and_then(|m| m.extract::<String>())
            .unwrap_or_else(|_| {
                o.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            });
        format!("{m}.{n}")
    }

    fn inert_new(
        &self,
        of: &Bound<'py, PyAny>,
        construct: &str,
        args: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyAny>>,
    ) -> Res<Bound<'py, PyAny>> {
        let py = self.py;
        let t = self
            .cfg
            .inert
            .as_ref()
            .ok_or_else(|| uerr(py, "internal: inert object without inert=True"))?;
        t.call_method1(
            intern!(py, "_made"),
            (
                of,
                construct,
                args,
                kwargs.cloned().unwrap_or(py.None().into_bound(py)),
            ),
        )
    }

    fn forbidden_call(&self, f: &Bound<'py, PyAny>) -> PyErr {
        uerr(
            self.py,
            format!(
                "REDUCE: calling {} is forbidden: cellar.pickle only calls what allow= or \
                 cellar.copyreg names",
                self.name_of(f)
            ),
        )
    }

    /// REDUCE: `f(*args)` when `f` may be called (see the module docs).
    fn reduce(
        &mut self,
        f: &Bound<'py, PyAny>,
        args: &Bound<'py, PyAny>,
    ) -> Res<Bound<'py, PyAny>> {
        let py = self.py;
        let f = &self.real(f);
        if self.is_inert(f) {
            return self.inert_new(f, "reduce", args, None);
        }
        if !f.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "'{}' object is not callable",
                f.get_type().name()?
            )));
        }
        let Ok(t) = args.cast::<PyTuple>() else {
            return Err(PyTypeError::new_err(format!(
                "{} argument after * must be an iterable, not {}",
                self.name_of(f),
                args.get_type().name()?
            )));
        };
        let k = self.known;
        let user_ok = self.may_call(f)?;
        // getattr and partial keep their pattern rules (which register the derived callables)
        // even when allowed outright; everything else the caller allowed is simply called.
        let pattern = f.is(k.getattr.bind(py)) || f.is(k.partial.bind(py));
        if user_ok && !pattern {
            self.made = true;
            return f.call1(t.clone());
        }
        let n = t.len();
        let item = |i: usize| t.get_item(i);
        if f.is(k.complex.bind(py)) {
            if n <= 2
                && t.iter()
                    .all(|a| a.is_instance_of::<PyInt>() || a.is_instance_of::<PyFloat>())
            {
                return f.call1(t.clone());
            }
        } else if f.is(k.set.bind(py)) || f.is(k.frozenset.bind(py)) {
            if n == 0 {
                return f.call0();
            }
            if n == 1 {
                let a = item(0)?;
                if is_exact::<PyList>(&a)
                    || is_exact::<PyTuple>(&a)
                    || is_exact::<PySet>(&a)
                    || is_exact::<PyFrozenSet>(&a)
                {
                    self.charge(a.len()?.saturating_mul(16))?;
                    return f.call1(t.clone());
                }
            }
        } else if f.is(k.bytearray.bind(py)) || f.is(k.bytes.bind(py)) {
            if n == 0 {
                return f.call0();
            }
            let a = item(0)?;
            if n == 1 && (is_exact::<PyBytes>(&a) || is_exact::<PyByteArray>(&a)) {
                self.charge(a.len()?)?;
                return f.call1(t.clone());
            }
            if n == 2 && is_exact::<PyString>(&a) && is_text_codec(&item(1)?) {
                self.charge(a.len()?.saturating_mul(4))?;
                return f.call1(t.clone());
            }
        } else if f.is(k.codecs_encode.bind(py)) {
            if n == 2 && is_exact::<PyString>(&item(0)?) && is_text_codec(&item(1)?) {
                self.charge(item(0)?.len()?.saturating_mul(4))?;
                return f.call1(t.clone());
            }
        } else if f.is(k.range.bind(py)) {
            if (1..=3).contains(&n) && t.iter().all(|a| a.is_exact_instance_of::<PyInt>()) {
                return f.call1(t.clone());
            }
        } else if f.is(k.slice.bind(py)) || f.is(k.stop_iteration.bind(py)) {
            if n <= 3 {
                return f.call1(t.clone());
            }
        } else if f.is(k.reconstructor.bind(py)) {
            if n == 3 {
                let (cls, base, state) = (item(0)?, self.real(&item(1)?), item(2)?);
                if self.is_inert(&cls) {
                    let a = PyTuple::new(py, [base, state])?;
                    return self.inert_new(&cls, "reconstructor", a.as_any(), None);
                }
                let base_ok = self.known.bases.contains(&(base.as_ptr() as usize))
                    || self.callable.contains(&(base.as_ptr() as usize));
                if self.allowed_type(&cls) && base_ok {
                    self.made = true;
                    return f.call1((cls, base, state));
                }
                return Err(self.forbidden_call(&cls));
            }
        } else if f.is(k.newobj.bind(py)) {
            if n >= 1 {
                let cls = item(0)?;
                let rest = t.get_slice(1, n);
                return self.newobj(&cls, rest.as_any(), None);
            }
        } else if f.is(k.newobj_ex.bind(py)) {
            if n == 3 {
                return self.newobj(&item(0)?, &item(1)?, Some(&item(2)?));
            }
        } else if f.is(k.getattr.bind(py)) {
            if n == 2 {
                let (obj, name) = (item(0)?, item(1)?);
                if self.is_inert(&obj) {
                    return self.inert_new(f, "reduce", args, None);
                }
                if let Ok(name) = name.cast::<PyString>() {
                    let p = obj.as_ptr() as usize;
                    let namespace = self.cfg.namespaces.values().any(|v| v.is(&obj));
                    if (self.callable.contains(&p) || namespace) && obj.is_instance_of::<PyType>() {
                        // Never a real getattr on the allowed object (no descriptors, no
                        // metaclass __getattr__ run by the pickle): `__new__` through the type,
                        // anything else only from the class's own __dict__ (nested classes).
                        let found = if name.to_str()? == "__new__" {
                            Some(obj.getattr(name)?)
                        } else {
                            obj.getattr(intern!(py, "__dict__"))?.get_item(name).ok()
                        };
                        let Some(r) = found else {
                            return Err(uerr(
                                py,
                                format!(
                                    "REDUCE: getattr({}, {}): no such attribute in the class",
                                    self.name_of(&obj),
                                    name.repr()?
                                ),
                            ));
                        };
                        let rp = r.as_ptr() as usize;
                        if name.to_str()? == "__new__"
                            && obj.is_instance_of::<PyType>()
                            && self.callable.contains(&p)
                        {
                            self.callable.insert(rp);
                            self.derived.push(r.clone());
                            return Ok(r);
                        }
                        if self.callable.contains(&rp) {
                            return Ok(r);
                        }
                    }
                }
                if user_ok {
                    return f.call1(t.clone());
                }
                return Err(uerr(
                    py,
                    "REDUCE: builtins.getattr is only allowed as getattr(allowed_class, '__new__') \
                     or for an attribute that is itself allowed",
                ));
            }
        } else if f.is(k.partial.bind(py)) {
            if n >= 1 {
                let func = item(0)?;
                if self.is_inert(&func) {
                    return self.inert_new(f, "reduce", args, None);
                }
                if self.callable.contains(&(func.as_ptr() as usize)) {
                    let r = f.call1(t.clone())?;
                    self.callable.insert(r.as_ptr() as usize);
                    // A partial the decoder made around an allowed callable: its BUILD (the
                    // partial's own state) is checked in `build`.
                    self.created.insert(r.as_ptr() as usize);
                    self.derived.push(r.clone());
                    return Ok(r);
                }
                if user_ok {
                    self.made = true;
                    return f.call1(t.clone());
                }
                return Err(self.forbidden_call(&func));
            }
        } else if self.cfg.inert.is_some() && self.known.by_name.values().any(|v| f.is(v.bind(py)))
        {
            // A known global used in a way the patterns do not cover: keep it inert.
            return self.inert_new(f, "reduce", args, None);
        } else {
            return Err(self.forbidden_call(f));
        }
        if self.cfg.inert.is_some() {
            return self.inert_new(f, "reduce", args, None);
        }
        Err(uerr(
            py,
            format!(
                "REDUCE: {} called with arguments CPython never writes for it",
                self.name_of(f)
            ),
        ))
    }

    /// Whether REDUCE may call `f`: an allowed (or derived) object, or a bound method equal to
    /// an allowed one (`Cls.method` of a classmethod is a new object on every access).
    fn may_call(&self, f: &Bound<'py, PyAny>) -> Res<bool> {
        if self.callable.contains(&(f.as_ptr() as usize)) {
            return Ok(true);
        }
        if f.get_type().is(self.known.method_type.bind(self.py)) {
            for v in self.cfg.allowed.values() {
                if v.get_type().is(f.get_type()) && v.eq(f)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn allowed_type(&self, cls: &Bound<'py, PyAny>) -> bool {
        cls.is_instance_of::<PyType>() && self.callable.contains(&(cls.as_ptr() as usize))
    }

    /// NEWOBJ / NEWOBJ_EX: `cls.__new__(cls, *args, **kwargs)` for an allowed class.
    fn newobj(
        &mut self,
        cls: &Bound<'py, PyAny>,
        args: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyAny>>,
    ) -> Res<Bound<'py, PyAny>> {
        let py = self.py;
        let cls = &self.real(cls);
        let Ok(args) = args.cast::<PyTuple>() else {
            return Err(uerr(py, "NEWOBJ expected an arg tuple."));
        };
        let kwargs = match kwargs {
            Some(k) => match k.cast::<PyDict>() {
                Ok(d) => Some(d.clone()),
                Err(_) => return Err(uerr(py, "NEWOBJ_EX kwargs argument must be a dict")),
            },
            None => None,
        };
        if self.is_inert(cls) {
            let construct = if kwargs.is_some() {
                "newobj_ex"
            } else {
                "newobj"
            };
            return self.inert_new(
                cls,
                construct,
                args.as_any(),
                kwargs.as_ref().map(|k| k.as_any()),
            );
        }
        let Ok(t) = cls.cast::<PyType>() else {
            return Err(uerr(py, "NEWOBJ class argument isn't a type object"));
        };
        if !self.callable.contains(&(cls.as_ptr() as usize)) {
            return Err(uerr(
                py,
                format!(
                    "NEWOBJ: creating {} is forbidden: pass the class in allow= or register it \
                     with cellar.copyreg",
                    self.name_of(cls)
                ),
            ));
        }
        self.made = true;
        // cls->tp_new(cls, args, kwargs), as the C unpickler does.
        // SAFETY: GIL held; `t` is a live type object, `args` a tuple, kwargs a dict or NULL.
        unsafe {
            let tp = t.as_ptr().cast::<ffi::PyTypeObject>();
            let Some(tp_new) = (*tp).tp_new else {
                return Err(uerr(py, "NEWOBJ class argument has NULL tp_new"));
            };
            let kw = kwargs.as_ref().map_or(std::ptr::null_mut(), |k| k.as_ptr());
            Bound::from_owned_ptr_or_err(py, tp_new(tp, args.as_ptr(), kw))
        }
    }

    /// INST / OBJ: `cls(*args)`, or `cls.__new__(cls)` when there are no arguments (pickle's
    /// `_instantiate`).
    fn instantiate(
        &mut self,
        cls: &Bound<'py, PyAny>,
        items: Vec<Slot<'py>>,
    ) -> Res<(Bound<'py, PyAny>, u32)> {
        let py = self.py;
        let cls = &self.real(cls);
        let mut d = 0;
        for (_, id) in &items {
            d = d.max(*id);
        }
        let d = self.deeper(d)?;
        let args = PyTuple::new(py, items.into_iter().map(|(o, _)| o))?;
        if self.is_inert(cls) {
            return Ok((self.inert_new(cls, "reduce", args.as_any(), None)?, d));
        }
        if !self.callable.contains(&(cls.as_ptr() as usize)) {
            return Err(self.forbidden_call(cls));
        }
        self.made = true;
        let is_type = cls.is_instance_of::<PyType>();
        if !args.is_empty() || !is_type || cls.hasattr(intern!(py, "__getinitargs__"))? {
            return Ok((cls.call1(args)?, d));
        }
        Ok((cls.call_method1(intern!(py, "__new__"), (cls,))?, d))
    }

    /// BUILD: `inst.__setstate__(state)`, or the default: update `__dict__` (keys interned) and
    /// set the slots of a `(dict, slots)` state.
    fn build(&mut self, inst: &Bound<'py, PyAny>, state: &Bound<'py, PyAny>) -> Res<()> {
        let py = self.py;
        if self.is_inert(inst) {
            let construct = inst.getattr(intern!(py, "construct"))?;
            if construct.cast::<PyString>()?.to_str()? == "global" {
                return Err(uerr(
                    py,
                    format!(
                        "BUILD target is not an object: the global {} itself",
                        self.name_of(inst)
                    ),
                ));
            }
            return inst.setattr(intern!(py, "state"), state);
        }
        if let Some((_, name)) = self.real_of.get(&(inst.as_ptr() as usize)) {
            return Err(uerr(
                py,
                format!(
                    "BUILD target is not an object: the global {name} (a basic type or pattern \
                     marker)"
                ),
            ));
        }
        if !self.created.contains(&(inst.as_ptr() as usize)) {
            // A class, a function, a pattern marker, a basic-type global or anything else the
            // decoder did not itself create through an allowed class: never mutated.
            let what = if inst.is_instance_of::<PyType>() {
                "a class"
            } else if inst.is_callable() {
                "a function"
            } else {
                "an object the decoder did not create through an allowed class"
            };
            return Err(uerr(
                py,
                format!(
                    "BUILD target is not an object: {what} ({}); cellar.pickle only sets the \
                     state of instances it created",
                    self.name_of(inst)
                ),
            ));
        }
        if self.derived_partial(inst) {
            // functools.partial's state is (func, args, kwds, dict): the new func must itself
            // be callable.
            let func_ok = state
                .cast::<PyTuple>()
                .ok()
                .and_then(|t| t.get_item(0).ok())
                .is_some_and(|f| self.callable.contains(&(f.as_ptr() as usize)));
            if !func_ok {
                return Err(uerr(
                    py,
                    "BUILD: a functools.partial may only wrap an allowed callable",
                ));
            }
        }
        if let Some(setstate) = self.class_setstate(inst)? {
            setstate.call1((state,))?;
            return Ok(());
        }
        let (st, slots) = match state.cast::<PyTuple>() {
            Ok(t) if t.len() == 2 => (t.get_item(0)?, Some(t.get_item(1)?)),
            _ => (state.clone(), None),
        };
        if !st.is_none() {
            let Ok(sd) = st.cast::<PyDict>() else {
                return Err(uerr(py, "state is not a dictionary"));
            };
            let dict = inst.getattr(intern!(py, "__dict__"))?;
            for (k, v) in sd.iter() {
                let k = if is_exact::<PyString>(&k) {
                    let mut p = k.into_ptr();
                    // SAFETY: GIL held; `p` is an owned reference to an exact str, replaced in
                    // place by its interned twin (still owned).
                    unsafe {
                        ffi::PyUnicode_InternInPlace(&mut p);
                        Bound::from_owned_ptr(py, p)
                    }
                } else {
                    k
                };
                dict.set_item(k, v)?;
            }
        }
        if let Some(slots) = slots {
            if !slots.is_none() {
                let Ok(sd) = slots.cast::<PyDict>() else {
                    return Err(uerr(py, "slot state is not a dictionary"));
                };
                for (k, v) in sd.iter() {
                    if k.cast::<PyString>().is_ok_and(|k| {
                        k.to_str()
                            .is_ok_and(|k| k == "__class__" || k == "__dict__")
                    }) {
                        return Err(uerr(
                            py,
                            "BUILD: slot state may not set __class__ or __dict__",
                        ));
                    }
                    inst.setattr(
                        k.cast_into::<PyString>().map_err(|_| {
                            PyErr::new::<pyo3::exceptions::PyTypeError, _>(
                                "slot name must be a string",
                            )
                        })?,
                        v,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The real object behind a stand-in (see `stand_ins`), or `o` itself.
    fn real(&self, o: &Bound<'py, PyAny>) -> Bound<'py, PyAny> {
        match self.real_of.get(&(o.as_ptr() as usize)) {
            Some((r, _)) => r.clone(),
            None => o.clone(),
        }
    }

    /// At STOP, with the stack and memo dropped: a stand-in referenced by anything but our own
    /// table is part of the result (or of an object an allowed callable kept).
    fn check_stand_ins(&mut self) -> Res<()> {
        if self.stand_ins.is_empty() || self.cfg.inert.is_some() {
            return Ok(());
        }
        self.stack.clear();
        self.memo.clear();
        self.memo_sparse.clear();
        for s in self.stand_ins.values() {
            // SAFETY: GIL held; `s` is a live object (Py_REFCNT only reads its header).
            if unsafe { ffi::Py_REFCNT(s.as_ptr()) } > 1 {
                let name = self
                    .real_of
                    .get(&(s.as_ptr() as usize))
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default();
                return Err(uerr(
                    self.py,
                    format!(
                        "global '{name}' cannot be loaded as a value (load with inert=True to \
                         inspect it)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// After REDUCE / NEWOBJ / INST / OBJ: an object made by an allowed class or callable that
    /// nobody else references (refcount 1: not a cached or shared object) becomes a BUILD target.
    fn note_made(&mut self, r: &Bound<'py, PyAny>) {
        // SAFETY: GIL held; `r` is a live object (Py_REFCNT only reads its header).
        let fresh = unsafe { ffi::Py_REFCNT(r.as_ptr()) } == 1;
        let made = std::mem::take(&mut self.made);
        if made && fresh && !r.is_instance_of::<PyType>() {
            self.created.insert(r.as_ptr() as usize);
            self.derived.push(r.clone());
        } else if made
            && !fresh
            && (r.is_exact_instance_of::<PyList>()
                || r.is_exact_instance_of::<PyDict>()
                || r.is_exact_instance_of::<PySet>())
        {
            self.foreign.insert(r.as_ptr() as usize);
            self.derived.push(r.clone());
        }
    }

    /// `__setstate__` bound to `inst`, looked up on its class's MRO (each class's own
    /// `__dict__`), never in the instance's state: a pickle cannot plant one with BUILD.
    fn class_setstate(&mut self, inst: &Bound<'py, PyAny>) -> Res<Option<Bound<'py, PyAny>>> {
        let py = self.py;
        let tp = inst.get_type();
        let key = tp.as_ptr() as usize;
        let descr = match self.setstate_cache.get(&key) {
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
                self.setstate_cache.insert(key, found.clone());
                self.derived.push(tp.into_any());
                found
            }
        };
        let Some(descr) = descr else {
            return Ok(None);
        };
        if descr.hasattr(intern!(py, "__get__"))? {
            return Ok(Some(
                descr.call_method1(intern!(py, "__get__"), (inst, inst.get_type()))?,
            ));
        }
        Ok(Some(descr))
    }

    fn derived_partial(&self, o: &Bound<'py, PyAny>) -> bool {
        o.get_type().is(self.known.partial.bind(self.py))
    }

    fn persistent(&mut self, pid: Bound<'py, PyAny>) -> Res<Bound<'py, PyAny>> {
        match &self.cfg.persistent_load {
            Some(f) => f.call1((pid,)),
            None => Err(uerr(
                self.py,
                "A load persistent id instruction was encountered, but no persistent_load \
                 function was specified.",
            )),
        }
    }
}

/// Whether sharing `o` (DUP/GET) cannot hide nesting: scalars, and tuples/frozensets of
/// scalars (immutable, so their recorded depth stays exact). A mutable container may be filled
/// after it was nested somewhere, which the per-slot depths cannot see.
#[inline(always)]
fn settled(o: &Bound<'_, PyAny>, depth: u32) -> bool {
    if depth == 0 {
        return is_scalar(o) || is_exact::<PyTuple>(o) || is_exact::<PyFrozenSet>(o);
    }
    depth == 1 && (is_exact::<PyTuple>(o) || is_exact::<PyFrozenSet>(o))
}

/// Scalars can be shared freely.
#[inline(always)]
fn is_scalar(o: &Bound<'_, PyAny>) -> bool {
    o.is_none()
        || is_exact::<PyString>(o)
        || is_exact::<PyInt>(o)
        || is_exact::<PyFloat>(o)
        || is_exact::<PyBytes>(o)
        || is_exact::<PyBool>(o)
}

/// The encodings CPython writes with `_codecs.encode` / `bytearray(str, enc)`.
fn is_text_codec(o: &Bound<'_, PyAny>) -> bool {
    o.cast::<PyString>()
        .ok()
        .and_then(|s| s.to_str().ok().map(|s| s.to_ascii_lowercase()))
        .is_some_and(|s| {
            matches!(
                s.as_str(),
                "latin1" | "latin-1" | "latin_1" | "iso-8859-1" | "ascii" | "utf-8" | "utf8"
            )
        })
}

/// A decimal memo index (PUT/GET), as `int()` parses it.
fn parse_index(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}
