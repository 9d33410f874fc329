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
//!   `bytearray`, `bytes`, `slice`, `range`, `Ellipsis`, `StopIteration`, `_codecs.encode`), each called
//!   only with the argument shapes CPython writes (so `bytearray(10**12)` is refused);
//! - a pattern marker (`copyreg._reconstructor`, `copyreg.__newobj__`, `copyreg.__newobj_ex__`,
//!   `builtins.getattr`, `functools.partial`, and the reconstructor bases `builtins.object`,
//!   `list`, `dict`, ...) that only shapes objects of allowed classes: `getattr(cls, '__new__')`
//!   and `partial(cls.__new__, cls, ...)` are how CPython writes `__getnewargs_ex__` at protocols
//!   2-3;
//! - with `inert=True`, an inert object (`cellar.pickle.Inert`): the global, and what the pickle
//!   does with it (REDUCE/NEWOBJ arguments, BUILD state, appended items), kept as data;
//! - otherwise `UnpicklingError: global 'os.system' is forbidden ...`.
//!
//! Bounds for hostile input: every length is checked against the bytes present before anything
//! is allocated, MARK nesting and the nesting of the result are limited by `max_depth`, the bytes
//! the result may occupy by `max_bytes` (charged for payloads and for the copies the basic-type
//! constructors make), and nothing panics.

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
}

static KNOWN: PyOnceLock<Known> = PyOnceLock::new();

fn known(py: Python<'_>) -> PyResult<&Known> {
    KNOWN.get_or_try_init(py, || {
        let builtins = py.import("builtins")?;
        let copyreg = py.import("copyreg")?;
        let b = |n: &str| -> PyResult<Py<PyAny>> { Ok(builtins.getattr(n)?.unbind()) };
        let mut by_name = HashMap::new();
        let mut bases = HashSet::new();
        for n in [
            "complex",
            "set",
            "frozenset",
            "bytearray",
            "bytes",
            "slice",
            "range",
            "Ellipsis",
            "NotImplemented",
            "StopIteration",
            "getattr",
            "object",
            "list",
            "dict",
            "int",
            "float",
            "str",
            "tuple",
            "bool",
        ] {
            let o = b(n)?;
            if matches!(
                n,
                "object"
                    | "list"
                    | "dict"
                    | "int"
                    | "float"
                    | "str"
                    | "tuple"
                    | "bytes"
                    | "set"
                    | "frozenset"
                    | "bytearray"
                    | "complex"
            ) {
                bases.insert(o.as_ptr() as usize);
            }
            by_name.insert(("builtins".to_owned(), n.to_owned()), o);
        }
        let codecs_encode = py.import("_codecs")?.getattr("encode")?.unbind();
        by_name.insert(
            ("_codecs".to_owned(), "encode".to_owned()),
            codecs_encode.clone_ref(py),
        );
        let reconstructor = copyreg.getattr("_reconstructor")?.unbind();
        let newobj = copyreg.getattr("__newobj__")?.unbind();
        let newobj_ex = copyreg.getattr("__newobj_ex__")?.unbind();
        for (n, o) in [
            ("_reconstructor", &reconstructor),
            ("__newobj__", &newobj),
            ("__newobj_ex__", &newobj_ex),
        ] {
            by_name.insert(("copyreg".to_owned(), n.to_owned()), o.clone_ref(py));
        }
        let partial = py.import("functools")?.getattr("partial")?.unbind();
        by_name.insert(
            ("functools".to_owned(), "partial".to_owned()),
            partial.clone_ref(py),
        );
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
    /// Keeps derived callables alive while their pointers are in `callable`.
    derived: Vec<Bound<'py, PyAny>>,
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
        if !is_exact::<PyList>(&slot.0) {
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
        if !is_exact::<PyDict>(&slot.0) {
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

    fn memo_put(&mut self, idx: u64, s: Slot<'py>) {
        if idx < DENSE_MEMO {
            let i = idx as usize;
            if i >= self.memo.len() {
                self.memo.resize_with(i + 1, || None);
            }
            self.memo[i] = Some(s);
        } else {
            self.memo_sparse.insert(idx, s);
        }
    }

    fn memo_get(&mut self, idx: u64) -> Res<()> {
        let got = if idx < DENSE_MEMO {
            self.memo.get(idx as usize).and_then(|s| s.as_ref())
        } else {
            self.memo_sparse.get(&idx)
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
        self.memo_put(idx, s);
        Ok(())
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
                    let idx = self.u32()? as i32;
                    if idx < 0 {
                        return Err(PyValueError::new_err("negative LONG_BINPUT argument"));
                    }
                    self.put_top(idx as u64)?;
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
                    let d = self.deeper(ad)?;
                    self.push(r, d);
                }
                op::NEWOBJ => {
                    let (args, ad) = self.pop()?;
                    let (cls, _) = self.pop()?;
                    let r = self.newobj(&cls, &args, None)?;
                    let d = self.deeper(ad)?;
                    self.push(r, d);
                }
                op::NEWOBJ_EX => {
                    let (kwargs, kd) = self.pop()?;
                    let (args, ad) = self.pop()?;
                    let (cls, _) = self.pop()?;
                    let r = self.newobj(&cls, &args, Some(&kwargs))?;
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
                    self.push(r, d);
                }
                op::OBJ => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(uerr(py, "unpickling stack underflow"));
                    }
                    let (cls, _) = items.remove(0);
                    let (r, d) = self.instantiate(&cls, items)?;
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

    fn push_long_le(&mut self, b: &[u8]) -> Res<()> {
        // SAFETY: GIL held; little-endian, signed, pointer and length describe `b`.
        self.push_owned(unsafe { ffi::_PyLong_FromByteArray(b.as_ptr(), b.len(), 1, 1) })
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
        String::from_utf8(b.to_vec()).map_err(|_| uerr(self.py, "global name is not valid UTF-8"))
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
            for (o, _) in items {
                // SAFETY: GIL held; both are live objects.
                if unsafe { ffi::PyList_Append(l.as_ptr(), o.as_ptr()) } < 0 {
                    return Err(PyErr::fetch(py));
                }
            }
            return Ok(());
        }
        if self.is_inert(&target) {
            let li = target.getattr(intern!(py, "listitems"))?;
            for (o, _) in items {
                li.call_method1(intern!(py, "append"), (o,))?;
            }
            return Ok(());
        }
        // A list subclass (or anything with extend/append), as the C unpickler does.
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
            let di = target.getattr(intern!(py, "dictitems"))?;
            let mut it = items.into_iter();
            while let (Some((k, _)), Some((v, _))) = (it.next(), it.next()) {
                di.call_method1(intern!(py, "append"), ((k, v),))?;
            }
            return Ok(());
        }
        let mut it = items.into_iter();
        while let (Some((k, _)), Some((v, _))) = (it.next(), it.next()) {
            target.set_item(k, v)?;
        }
        Ok(())
    }

    fn add_items(&mut self, items: Vec<Slot<'py>>) -> Res<()> {
        let py = self.py;
        let target = self.target(&items)?;
        if let Ok(s) = target.cast::<PySet>() {
            for (o, _) in items {
                s.add(o)?;
            }
            return Ok(());
        }
        if self.is_inert(&target) {
            let li = target.getattr(intern!(py, "listitems"))?;
            for (o, _) in items {
                li.call_method1(intern!(py, "append"), (o,))?;
            }
            return Ok(());
        }
        let add = target.getattr(intern!(py, "add"))?;
        for (o, _) in items {
            add.call1((o,))?;
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
            return Ok(o.bind(py).clone());
        }
        if let Some(o) = self.cfg.namespaces.get(&key) {
            return Ok(o.clone());
        }
        if let Some(t) = &self.cfg.inert {
            return t.call1((module, name));
        }
        Err(uerr(
            py,
            format!(
                "global '{module}.{name}' is forbidden: cellar.pickle never imports; pass the \
                 class in allow=, register it with cellar.copyreg, or load with inert=True"
            ),
        ))
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
                let (cls, base, state) = (item(0)?, item(1)?, item(2)?);
                if self.is_inert(&cls) {
                    let a = PyTuple::new(py, [base, state])?;
                    return self.inert_new(&cls, "reconstructor", a.as_any(), None);
                }
                let base_ok = self.known.bases.contains(&(base.as_ptr() as usize))
                    || self.callable.contains(&(base.as_ptr() as usize));
                if self.allowed_type(&cls) && base_ok {
                    return f.call1(t.clone());
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
                    if self.callable.contains(&p) || namespace {
                        let r = obj.getattr(name)?;
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
                    self.derived.push(r.clone());
                    return Ok(r);
                }
                if user_ok {
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
            return inst.setattr(intern!(py, "state"), state);
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
        let (setstate, inst_dict) = lookup_setstate(inst)?;
        if let Some(setstate) = setstate {
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
            let dict = match inst_dict {
                Some(d) => d,
                None => inst.getattr(intern!(py, "__dict__"))?,
            };
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

extern "C" {
    /// Look `name` up along `type`'s MRO without invoking descriptors; borrowed or NULL, never
    /// raises (public in every CPython 3; not declared by pyo3-ffi).
    fn _PyType_Lookup(t: *mut ffi::PyTypeObject, name: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// `getattr(inst, '__setstate__', None)` without raising and catching an AttributeError in the
/// common case (an instance with the generic getattr, no `__setstate__` in its class or its
/// `__dict__`). Also returns the instance `__dict__` when it was fetched on the way.
#[allow(clippy::type_complexity)]
fn lookup_setstate<'py>(
    inst: &Bound<'py, PyAny>,
) -> PyResult<(Option<Bound<'py, PyAny>>, Option<Bound<'py, PyAny>>)> {
    let py = inst.py();
    let name = intern!(py, "__setstate__");
    // SAFETY: GIL held; `inst` is live; the type pointer is borrowed from it.
    unsafe {
        let tp = ffi::Py_TYPE(inst.as_ptr());
        let generic = (*tp).tp_getattro.map(|f| f as *const () as usize)
            == Some(ffi::PyObject_GenericGetAttr as *const () as usize);
        if generic && _PyType_Lookup(tp, name.as_ptr()).is_null() {
            if (*tp).tp_dictoffset == 0 {
                return Ok((None, None));
            }
            let d = ffi::PyObject_GenericGetDict(inst.as_ptr(), std::ptr::null_mut());
            let d = Bound::from_owned_ptr_or_err(py, d)?;
            if d.cast::<PyDict>()
                .map_or(true, |dd| !dd.contains(name).unwrap_or(true))
            {
                return Ok((None, Some(d)));
            }
        }
    }
    Ok((inst.getattr_opt(name)?, None))
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
