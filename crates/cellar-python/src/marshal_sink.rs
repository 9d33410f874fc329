//! The Python-object sink of the one marshal decoder (`cellar_marshal::read`): marshal bytes ->
//! Python objects, built directly (no intermediate tree), plus the file input of
//! `marshal.load`.
//!
//! Every rule (type codes, sizes, references, the nesting limit, the pre-allocation bound,
//! code-object field validation, error messages) is the core's; this module only creates
//! objects. What it adds is Python-specific:
//! - a reference to a list, dict or set still being read returns the object itself (a cycle, as
//!   in CPython); a list pre-allocated for its claimed size first gets `None` in its empty slots,
//!   so no half-built list ever exposes a NULL slot;
//! - tuples are only ever seen complete (the core refuses a reference to an open tuple), so a
//!   tuple is filled in place, or collected first when the input did not allow pre-allocating it;
//! - code objects are built through the public constructor (`PyCode_NewWithPosOnlyArgs`, named
//!   `PyUnstable_Code_NewWithPosOnlyArgs` from 3.12);
//! - a small cache of interned short ASCII strings shared by every `loads`.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::os::raw::c_char;
use std::sync::Mutex;

use cellar_marshal::read::{CodeFields, Input, InputFailed, Sink};
use cellar_marshal::{DecodeError, ErrorKind, LoadOptions};
use pyo3::exceptions::{PyEOFError, PyTypeError, PyUnicodeDecodeError, PyValueError};
use pyo3::ffi::{self, Py_ssize_t};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString, PyTuple};

/// Why a decode failed: a core error (mapped to CPython's exception once, at the end), a
/// Python exception raised by the sink, or one raised by the input (a file's `readinto`).
pub(crate) enum Fail {
    Core(DecodeError),
    Py(PyErr),
    Input,
}

impl From<DecodeError> for Fail {
    #[cold]
    fn from(e: DecodeError) -> Fail {
        Fail::Core(e)
    }
}

impl From<InputFailed> for Fail {
    #[cold]
    fn from(_: InputFailed) -> Fail {
        Fail::Input
    }
}

impl From<PyErr> for Fail {
    #[cold]
    fn from(e: PyErr) -> Fail {
        Fail::Py(e)
    }
}

/// The Python exception CPython raises for a core error.
#[cold]
pub(crate) fn core_error(e: DecodeError) -> PyErr {
    match e.kind {
        ErrorKind::Eof => PyEOFError::new_err(e.message),
        ErrorKind::Value => PyValueError::new_err(e.message),
        ErrorKind::Type => PyTypeError::new_err(e.message),
        ErrorKind::UnicodeDecode => PyUnicodeDecodeError::new_err(e.message),
    }
}

/// Direct-mapped cache of interned short ASCII strings, shared by every `loads` call (taken
/// with `try_lock`, so a re-entrant or concurrent load simply runs without it).
struct InternCache {
    slots: Vec<Option<(u64, Py<PyString>)>>,
}

const INTERN_SLOTS: usize = 4096;
const INTERN_MAX_LEN: usize = 40;

static INTERN_CACHE: Mutex<InternCache> = Mutex::new(InternCache { slots: Vec::new() });

#[inline(always)]
fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    for &x in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(x)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    h ^ (h >> 32)
}

/// Builds Python objects for the core decoder.
pub(crate) struct PySink<'py, 'c> {
    py: Python<'py>,
    cache: Option<std::sync::MutexGuard<'c, InternCache>>,
}

/// A tuple or list being filled.
pub(crate) enum SeqB<'py> {
    /// A tuple of exactly its claimed size, filled in place (`next` items so far).
    Tuple { obj: Bound<'py, PyAny>, next: usize },
    /// A tuple whose claimed size could not be pre-allocated: items collected first.
    TupleVec(Vec<Bound<'py, PyAny>>),
    /// A list of its claimed size (`prealloc`, filled in place) or grown by appends.
    List {
        obj: Bound<'py, PyAny>,
        next: usize,
        prealloc: bool,
    },
}

/// A Python object handed around by the sink (an owned reference).
type Obj<'py> = Bound<'py, PyAny>;

impl<'py> PySink<'py, '_> {
    /// `p` is a new reference returned by the C API, or NULL with an exception set.
    #[inline(always)]
    fn own(&self, p: *mut ffi::PyObject) -> Result<Obj<'py>, Fail> {
        // SAFETY: callers pass the result of a C API call that returns a new reference or NULL
        // with an exception set; the GIL is held (`self.py`).
        unsafe { Bound::from_owned_ptr_or_err(self.py, p) }.map_err(Fail::Py)
    }

    /// A str from Latin-1 bytes (ASCII fast path: one allocation and a copy).
    #[inline(always)]
    fn latin1(&self, b: &[u8]) -> Result<Obj<'py>, Fail> {
        if b.is_ascii() {
            // SAFETY: GIL held; PyUnicode_New returns a new reference or NULL.
            let v = self.own(unsafe { ffi::PyUnicode_New(b.len() as Py_ssize_t, 127) })?;
            // SAFETY: a fresh compact ASCII str of length len has len writable data bytes, not
            // yet visible to anyone else.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    b.as_ptr(),
                    ffi::PyUnicode_1BYTE_DATA(v.as_ptr()),
                    b.len(),
                )
            };
            Ok(v)
        } else {
            // SAFETY: GIL held; the pointer and length describe `b`.
            self.own(unsafe {
                ffi::PyUnicode_DecodeLatin1(
                    b.as_ptr() as *const c_char,
                    b.len() as Py_ssize_t,
                    std::ptr::null(),
                )
            })
        }
    }

    #[inline(always)]
    fn intern(&self, v: Obj<'py>) -> Obj<'py> {
        let mut p = v.into_ptr();
        // SAFETY: GIL held; `p` is an owned reference to an exact str, replaced in place by
        // the interned one (the reference stays owned).
        unsafe {
            ffi::PyUnicode_InternInPlace(&mut p);
            Bound::from_owned_ptr(self.py, p)
        }
    }
}

impl<'py> Sink for PySink<'py, '_> {
    type Value = Obj<'py>;
    type Seq = SeqB<'py>;
    type Dict = Obj<'py>;
    type Set = Obj<'py>;
    type Error = Fail;
    const DEEP_VALUES: bool = true;

    #[inline(always)]
    fn none(&mut self) -> Result<Obj<'py>, Fail> {
        Ok(self.py.None().into_bound(self.py))
    }
    #[inline(always)]
    fn bool(&mut self, v: bool) -> Result<Obj<'py>, Fail> {
        Ok(pyo3::types::PyBool::new(self.py, v).to_owned().into_any())
    }
    fn stop_iteration(&mut self) -> Result<Obj<'py>, Fail> {
        Ok(self
            .py
            .get_type::<pyo3::exceptions::PyStopIteration>()
            .into_any())
    }
    fn ellipsis(&mut self) -> Result<Obj<'py>, Fail> {
        Ok(self.py.Ellipsis().into_bound(self.py))
    }
    #[inline(always)]
    fn int(&mut self, v: i64) -> Result<Obj<'py>, Fail> {
        // SAFETY: GIL held; returns a new reference or NULL.
        self.own(unsafe { ffi::PyLong_FromLongLong(v) })
    }
    fn big_int(&mut self, negative: bool, magnitude_le: &[u8]) -> Result<Obj<'py>, Fail> {
        let py = self.py;
        let b = PyBytes::new(py, magnitude_le);
        let v = py.get_type::<pyo3::types::PyInt>().call_method1(
            pyo3::intern!(py, "from_bytes"),
            (b, pyo3::intern!(py, "little")),
        )?;
        Ok(if negative { v.neg()? } else { v })
    }
    #[inline(always)]
    fn float(&mut self, v: f64) -> Result<Obj<'py>, Fail> {
        // SAFETY: GIL held; returns a new reference or NULL.
        self.own(unsafe { ffi::PyFloat_FromDouble(v) })
    }
    fn complex(&mut self, re: f64, im: f64) -> Result<Obj<'py>, Fail> {
        // SAFETY: GIL held; returns a new reference or NULL.
        self.own(unsafe { ffi::PyComplex_FromDoubles(re, im) })
    }
    #[inline(always)]
    fn bytes(&mut self, b: &[u8]) -> Result<Obj<'py>, Fail> {
        // SAFETY: GIL held; the pointer and length describe `b`.
        self.own(unsafe {
            ffi::PyBytes_FromStringAndSize(b.as_ptr() as *const c_char, b.len() as Py_ssize_t)
        })
    }
    #[inline(always)]
    fn str_utf8(&mut self, raw: &[u8], interned: bool, _at: usize) -> Result<Obj<'py>, Fail> {
        // SAFETY: GIL held; the pointer and length describe `raw`; the error handler name is a
        // NUL-terminated literal. CPython's decoder raises UnicodeDecodeError itself.
        let v = self.own(unsafe {
            ffi::PyUnicode_DecodeUTF8(
                raw.as_ptr() as *const c_char,
                raw.len() as Py_ssize_t,
                c"surrogatepass".as_ptr(),
            )
        })?;
        Ok(if interned { self.intern(v) } else { v })
    }
    #[inline(always)]
    fn str_latin1(&mut self, raw: &[u8], interned: bool) -> Result<Obj<'py>, Fail> {
        if !interned {
            return self.latin1(raw);
        }
        let n = raw.len();
        if n <= INTERN_MAX_LEN {
            let h = hash_bytes(raw);
            let i = (h as usize) & (INTERN_SLOTS - 1);
            let py = self.py;
            if let Some(slot) = self.cache.as_mut().and_then(|c| c.slots.get_mut(i)) {
                if let Some((sh, s)) = slot {
                    let s = s.bind(py);
                    // SAFETY: only ASCII strs enter the cache (checked below); for those
                    // PyUnicode_1BYTE_DATA is their `len` bytes, alive while `s` is.
                    let same = *sh == h
                        && unsafe {
                            ffi::PyUnicode_GET_LENGTH(s.as_ptr()) == n as Py_ssize_t
                                && std::slice::from_raw_parts(
                                    ffi::PyUnicode_1BYTE_DATA(s.as_ptr()),
                                    n,
                                ) == raw
                        };
                    if same {
                        return Ok(s.clone().into_any());
                    }
                }
                let v = self.latin1(raw)?;
                let v = self.intern(v);
                if raw.is_ascii() {
                    if let Ok(s) = v.cast::<PyString>() {
                        let entry = Some((h, s.clone().unbind()));
                        if let Some(slot) = self.cache.as_mut().and_then(|c| c.slots.get_mut(i)) {
                            *slot = entry;
                        }
                    }
                }
                return Ok(v);
            }
        }
        let v = self.latin1(raw)?;
        Ok(self.intern(v))
    }
    #[inline(always)]
    fn share(&mut self, v: &Obj<'py>) -> Obj<'py> {
        v.clone()
    }

    #[inline(always)]
    fn seq_open(&mut self, list: bool, len: usize, capacity: usize) -> Result<SeqB<'py>, Fail> {
        let prealloc = capacity == len;
        if list {
            let n = if prealloc { len } else { 0 };
            // SAFETY: GIL held; returns a new reference (NULL slots until filled) or NULL.
            let obj = self.own(unsafe { ffi::PyList_New(n as Py_ssize_t) })?;
            Ok(SeqB::List {
                obj,
                next: 0,
                prealloc,
            })
        } else if prealloc {
            // SAFETY: GIL held; returns a new reference (NULL slots until filled) or NULL.
            let obj = self.own(unsafe { ffi::PyTuple_New(len as Py_ssize_t) })?;
            Ok(SeqB::Tuple { obj, next: 0 })
        } else {
            Ok(SeqB::TupleVec(Vec::with_capacity(capacity)))
        }
    }
    #[inline(always)]
    fn seq_push(&mut self, seq: &mut SeqB<'py>, item: Obj<'py>) -> Result<(), Fail> {
        match seq {
            SeqB::Tuple { obj, next } => {
                // SAFETY: the core pushes exactly the claimed number of items, so `next` is below
                // the size; the tuple is ours alone (a reference to an open tuple is refused), so
                // its slot is still NULL; SET_ITEM steals the item's reference.
                unsafe {
                    ffi::PyTuple_SET_ITEM(obj.as_ptr(), *next as Py_ssize_t, item.into_ptr())
                };
                *next += 1;
            }
            SeqB::TupleVec(v) => v.push(item),
            SeqB::List {
                obj,
                next,
                prealloc,
            } => {
                if *prealloc {
                    let l = obj.as_ptr();
                    let i = *next as Py_ssize_t;
                    // SAFETY: `i` is below the list's pre-allocated size (the core pushes exactly
                    // the claimed count); the list may have been exposed through a reference,
                    // which first filled its empty slots with None: release that one.
                    unsafe {
                        let old = ffi::PyList_GET_ITEM(l, i);
                        ffi::PyList_SET_ITEM(l, i, item.into_ptr());
                        if !old.is_null() {
                            ffi::Py_DECREF(old);
                        }
                    }
                    *next += 1;
                } else {
                    // SAFETY: GIL held; `obj` is a list; Append takes its own reference.
                    if unsafe { ffi::PyList_Append(obj.as_ptr(), item.as_ptr()) } < 0 {
                        return Err(Fail::Py(PyErr::fetch(self.py)));
                    }
                }
            }
        }
        Ok(())
    }
    #[inline(always)]
    fn seq_close(&mut self, seq: SeqB<'py>) -> Result<Obj<'py>, Fail> {
        match seq {
            SeqB::Tuple { obj, .. } | SeqB::List { obj, .. } => Ok(obj),
            SeqB::TupleVec(items) => Ok(PyTuple::new(self.py, items)?.into_any()),
        }
    }
    fn seq_ref(&mut self, seq: &mut SeqB<'py>) -> Option<Obj<'py>> {
        match seq {
            SeqB::List {
                obj,
                next,
                prealloc,
            } => {
                if *prealloc {
                    let l = obj.as_ptr();
                    // SAFETY: GIL held; slots from `next` on are NULL or None (a previous
                    // reference); NULL ones get a new reference to None.
                    unsafe {
                        for i in *next as Py_ssize_t..ffi::PyList_GET_SIZE(l) {
                            if ffi::PyList_GET_ITEM(l, i).is_null() {
                                ffi::PyList_SET_ITEM(l, i, self.py.None().into_ptr());
                            }
                        }
                    }
                }
                Some(obj.clone())
            }
            // The core never asks for an open tuple.
            SeqB::Tuple { .. } | SeqB::TupleVec(_) => None,
        }
    }

    fn dict_open(&mut self) -> Result<Obj<'py>, Fail> {
        // SAFETY: GIL held; returns a new reference or NULL.
        self.own(unsafe { ffi::PyDict_New() })
    }
    #[inline(always)]
    fn dict_set(
        &mut self,
        d: &mut Obj<'py>,
        k: Obj<'py>,
        v: Obj<'py>,
        _at: usize,
    ) -> Result<(), Fail> {
        // SAFETY: GIL held; `d` is a dict; SetItem takes its own references.
        if unsafe { ffi::PyDict_SetItem(d.as_ptr(), k.as_ptr(), v.as_ptr()) } < 0 {
            return Err(Fail::Py(PyErr::fetch(self.py)));
        }
        Ok(())
    }
    #[inline(always)]
    fn dict_close(&mut self, d: Obj<'py>) -> Result<Obj<'py>, Fail> {
        Ok(d)
    }
    fn dict_ref(&mut self, d: &mut Obj<'py>) -> Option<Obj<'py>> {
        Some(d.clone())
    }

    fn set_open(&mut self, frozen: bool, _len: usize) -> Result<Obj<'py>, Fail> {
        // SAFETY: GIL held; returns a new reference or NULL.
        self.own(unsafe {
            if frozen {
                ffi::PyFrozenSet_New(std::ptr::null_mut())
            } else {
                ffi::PySet_New(std::ptr::null_mut())
            }
        })
    }
    fn set_add(&mut self, s: &mut Obj<'py>, item: Obj<'py>, _at: usize) -> Result<(), Fail> {
        // SAFETY: GIL held; `s` is a set, or a frozenset only this decoder holds (its reference
        // slot stays reserved until it is complete), which PySet_Add accepts.
        if unsafe { ffi::PySet_Add(s.as_ptr(), item.as_ptr()) } < 0 {
            return Err(Fail::Py(PyErr::fetch(self.py)));
        }
        Ok(())
    }
    fn set_close(&mut self, s: Obj<'py>) -> Result<Obj<'py>, Fail> {
        Ok(s)
    }
    fn set_ref(&mut self, s: &mut Obj<'py>) -> Option<Obj<'py>> {
        Some(s.clone())
    }

    fn slice(&mut self, start: Obj<'py>, stop: Obj<'py>, step: Obj<'py>) -> Result<Obj<'py>, Fail> {
        // SAFETY: GIL held; PySlice_New takes its own references.
        self.own(unsafe { ffi::PySlice_New(start.as_ptr(), stop.as_ptr(), step.as_ptr()) })
    }

    fn code(&mut self, f: CodeFields<Obj<'py>>, _at: usize) -> Result<Obj<'py>, Fail> {
        crate::marshal_code::build(self.py, f).map_err(Fail::Py)
    }
}

/// `marshal.load`'s input: a binary file read through `file.readinto(buffer)`, exactly as many
/// bytes as each step needs (so `file.tell()` is right afterwards).
pub(crate) struct FileInput<'py> {
    file: Bound<'py, PyAny>,
    buf: Vec<u8>,
    pos: usize,
    /// The exception `readinto` raised (or the error it caused), reported after the decode.
    pub(crate) error: Option<PyErr>,
}

impl<'py> FileInput<'py> {
    pub(crate) fn new(file: Bound<'py, PyAny>) -> FileInput<'py> {
        FileInput {
            file,
            buf: Vec::new(),
            pos: 0,
            error: None,
        }
    }

    /// Reads up to `want` bytes, appended to `self.buf`; returns how many arrived.
    fn fill(&mut self, want: usize) -> Result<usize, InputFailed> {
        let py = self.file.py();
        let r = (|| -> PyResult<usize> {
            let ba = PyByteArray::new(py, &vec![0u8; want]);
            let got = self
                .file
                .call_method1(pyo3::intern!(py, "readinto"), (&ba,))?;
            let got: isize = if got.is_none() { 0 } else { got.extract()? };
            if got < 0 || got as usize > want {
                return Err(PyValueError::new_err(format!(
                    "read() returned too much data: {want} bytes requested, {got} returned"
                )));
            }
            let data = ba.to_vec();
            let got = (got as usize).min(data.len());
            self.buf.extend_from_slice(&data[..got]);
            Ok(got)
        })();
        r.map_err(|e| {
            self.error = Some(e);
            InputFailed
        })
    }
}

impl Input for FileInput<'_> {
    fn byte(&mut self) -> Result<Option<u8>, InputFailed> {
        self.buf.clear();
        let got = self.fill(1)?;
        if got == 1 {
            self.pos += 1;
        }
        Ok(self.buf.first().copied().filter(|_| got == 1))
    }
    fn take(&mut self, n: usize) -> Result<Option<&[u8]>, InputFailed> {
        self.buf.clear();
        let mut got = 0;
        while got < n {
            // Grow geometrically so memory tracks the bytes that really arrived.
            let chunk = (n - got).min(got.max(1 << 16));
            let g = self.fill(chunk)?;
            got += g;
            if g < chunk {
                self.pos += got;
                // CPython: a short read inside an object is "EOF read where not expected".
                self.error = Some(PyEOFError::new_err("EOF read where not expected"));
                return Err(InputFailed);
            }
        }
        self.pos += n;
        Ok(Some(&self.buf[..n]))
    }
    fn remaining(&self) -> Option<usize> {
        None
    }
    fn position(&self) -> usize {
        self.pos
    }
}

fn sink(py: Python<'_>) -> PySink<'_, 'static> {
    let cache = match INTERN_CACHE.try_lock() {
        Ok(mut g) => {
            if g.slots.is_empty() {
                g.slots = (0..INTERN_SLOTS).map(|_| None).collect();
            }
            Some(g)
        }
        Err(_) => None,
    };
    PySink { py, cache }
}

fn finish<'py>(r: Result<Obj<'py>, Fail>, input_error: Option<PyErr>) -> PyResult<Obj<'py>> {
    match r {
        Ok(v) => Ok(v),
        Err(Fail::Core(e)) => Err(core_error(e)),
        Err(Fail::Py(e)) => Err(e),
        Err(Fail::Input) => Err(input_error.unwrap_or_else(|| {
            PyValueError::new_err("the input failed while reading marshal data")
        })),
    }
}

/// Decodes one value from the start of `data` (trailing bytes ignored, as in CPython).
pub(crate) fn loads_slice<'py>(
    py: Python<'py>,
    data: &[u8],
    allow_code: bool,
) -> PyResult<Obj<'py>> {
    let opts = LoadOptions {
        allow_code,
        ..LoadOptions::default()
    };
    let mut input = cellar_marshal::SliceInput::new(data);
    let mut s = sink(py);
    let r = cellar_marshal::decode(&mut input, &mut s, &opts);
    drop(s);
    finish(r, None)
}

/// `marshal.loads(data)` for any bytes-like object, with CPython's audit event.
pub(crate) fn loads<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    allow_code: bool,
) -> PyResult<Obj<'py>> {
    if let Ok(b) = data.cast::<PyBytes>() {
        let slice = b.as_bytes();
        audit_loads(py, slice)?;
        return loads_slice(py, slice, allow_code);
    }
    if data.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "a bytes-like object is required, not '{}'",
            data.get_type().name()?
        )));
    }
    // Any other bytes-like object: a contiguous byte view held for the whole decode (an
    // exporter cannot be resized while the view exists).
    let view = SimpleView::new(data)?;
    let slice = view.bytes();
    audit_loads(py, slice)?;
    loads_slice(py, slice, allow_code)
}

/// A `PyBUF_SIMPLE` buffer view (any format, as CPython's `y*`), released on drop.
struct SimpleView<'py> {
    view: Box<ffi::Py_buffer>,
    _py: Python<'py>,
}

impl<'py> SimpleView<'py> {
    fn new(obj: &Bound<'py, PyAny>) -> PyResult<SimpleView<'py>> {
        // SAFETY: Py_buffer is a plain C struct for which all-zero is a valid "empty" value.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: GIL held; `obj` is live; on success the view must be released (Drop).
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) } != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(SimpleView {
            view,
            _py: obj.py(),
        })
    }

    fn bytes(&self) -> &[u8] {
        if self.view.buf.is_null() || self.view.len <= 0 {
            return &[];
        }
        // SAFETY: a PyBUF_SIMPLE view is `len` contiguous bytes, exported (so neither freed nor
        // resized) until PyBuffer_Release in Drop; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }
}

impl Drop for SimpleView<'_> {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released once;
        // the GIL is held (`_py`).
        unsafe { ffi::PyBuffer_Release(&mut *self.view) };
    }
}

/// CPython's `marshal.loads` audit event, with the input bytes.
pub(crate) fn audit_loads(py: Python<'_>, data: &[u8]) -> PyResult<()> {
    // SAFETY: GIL held; the format "y#" takes a char pointer and a Py_ssize_t length that
    // describe `data`.
    let r = unsafe {
        crate::util::PySys_Audit(
            c"marshal.loads".as_ptr(),
            c"y#".as_ptr(),
            data.as_ptr() as *const c_char,
            data.len() as Py_ssize_t,
        )
    };
    if r < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(())
}

/// `marshal.load(file)`: reads exactly one value's bytes from a binary file.
pub(crate) fn load<'py>(
    py: Python<'py>,
    file: &Bound<'py, PyAny>,
    allow_code: bool,
) -> PyResult<Obj<'py>> {
    let opts = LoadOptions {
        allow_code,
        ..LoadOptions::default()
    };
    let mut input = FileInput::new(file.clone());
    let mut s = sink(py);
    let r = cellar_marshal::decode(&mut input, &mut s, &opts);
    drop(s);
    finish(r, input.error.take())
}
