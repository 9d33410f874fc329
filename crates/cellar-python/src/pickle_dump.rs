//! Python objects -> pickle bytes: `cellar.pickle.dumps`.
//!
//! Writes what CPython's `pickle.py` Pickler writes for the same objects (protocols 0-5):
//! framing at 4+ (frames closed at the first object boundary after 64 KiB), a memo for every
//! str, bytes, container and global (so shared and recursive structures survive), APPENDS /
//! SETITEMS / ADDITEMS in batches of 1000, the globals CPython writes for complex, set,
//! frozenset, bytes and bytearray at each protocol (with `_compat_pickle`'s Python 2 names at
//! 0-2), classes and functions by name, `cellar.pickle.Inert` objects written back the way they
//! were read, and anything `cellar.copyreg` registers through its reduce function.

// Issue 12: every unsafe block documented, no unsafe operation without its own block (the
// crate-level attribute waits for the marshal modules).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::collections::HashMap;

use pyo3::exceptions::{PyRecursionError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet,
    PyString, PyTuple, PyType,
};

use cellar_pickle::ops as op;

use crate::util::PtrBuild;

/// pickle.py's `_FRAME_SIZE_TARGET`.
const FRAME_TARGET: usize = 64 * 1024;
/// pickle.py's `_BATCHSIZE`.
const BATCH: usize = 1000;
/// Nesting deeper than this is refused as CPython's recursion limit would.
const MAX_DEPTH: u32 = 1500;

static PICKLING_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn perr(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    match PICKLING_ERROR.import(py, "pickle", "PicklingError") {
        Ok(t) => PyErr::from_type(t.clone(), msg.into()),
        Err(e) => e,
    }
}

struct Writer<'py> {
    py: Python<'py>,
    out: Vec<u8>,
    proto: u8,
    fix_imports: bool,
    /// Where the current frame's 9-byte header was reserved (protocol 4+).
    frame: Option<usize>,
    /// Object pointer -> memo index; the object is kept alive so its address cannot be reused.
    memo: HashMap<usize, (u32, Bound<'py, PyAny>), PtrBuild>,
    /// Globals written by name (basic types' REDUCE targets, inert objects' classes):
    /// `(module, name)` -> memo index, so a second use is a GET as in CPython (which memoizes
    /// the class or function object).
    globals_memo: HashMap<(String, String), u32>,
    /// One str object per module name (protocol 4+), so STACK_GLOBAL's module string is
    /// memoized once and fetched after, as CPython's `__module__` strings are.
    module_strs: HashMap<String, Bound<'py, PyString>>,
    inert: Bound<'py, PyType>,
    reducer: Bound<'py, PyAny>,
    depth: u32,
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
    let mut w = Writer {
        py,
        out: Vec::with_capacity(256),
        proto,
        fix_imports,
        frame: None,
        memo: HashMap::with_capacity_and_hasher(64, PtrBuild::default()),
        globals_memo: HashMap::new(),
        module_strs: HashMap::new(),
        inert,
        reducer,
        depth: 0,
    };
    if proto >= 2 {
        w.out.extend_from_slice(&[op::PROTO, proto]);
    }
    if proto >= 4 {
        w.start_frame();
    }
    w.save(obj)?;
    w.out.push(op::STOP);
    w.end_frame();
    Ok(PyBytes::new(py, &w.out))
}

impl<'py> Writer<'py> {
    // ---- framing ----

    fn start_frame(&mut self) {
        self.frame = Some(self.out.len());
        self.out.extend_from_slice(&[0; 9]);
    }

    /// Close the current frame: write its header, or drop the reserved bytes for a frame under
    /// 4 bytes (pickle.py's `_FRAME_SIZE_MIN`).
    fn end_frame(&mut self) {
        if let Some(start) = self.frame.take() {
            let len = self.out.len() - start - 9;
            if len >= 4 {
                self.out[start] = op::FRAME;
                self.out[start + 1..start + 9].copy_from_slice(&(len as u64).to_le_bytes());
            } else {
                self.out.drain(start..start + 9);
            }
        }
    }

    /// At an object boundary: start a new frame once the current one is big enough.
    #[inline(always)]
    fn boundary(&mut self) {
        if let Some(start) = self.frame {
            // The frame's content only (CPython's frame_len excludes the 9-byte header).
            if self.out.len() - start - 9 >= FRAME_TARGET {
                self.end_frame();
                self.start_frame();
            }
        }
    }

    /// An opcode with a payload. A payload of 64 KiB or more goes outside frames, as CPython
    /// writes it (`_Pickler_write_bytes`): the current frame is committed first, the opcode
    /// and payload follow unframed, and a new frame starts after them.
    #[inline(always)]
    fn write_payload(&mut self, header: &[u8], data: &[u8]) {
        if self.frame.is_some() && data.len() >= FRAME_TARGET {
            self.end_frame();
            self.out.extend_from_slice(header);
            self.out.extend_from_slice(data);
            self.start_frame();
        } else {
            self.out.extend_from_slice(header);
            self.out.extend_from_slice(data);
        }
    }

    // ---- memo ----

    fn memoize(&mut self, obj: &Bound<'py, PyAny>) {
        let idx = self.memo_len();
        self.memo.insert(obj.as_ptr() as usize, (idx, obj.clone()));
        self.write_memoize(idx);
    }

    fn memo_len(&self) -> u32 {
        (self.memo.len() + self.globals_memo.len()) as u32
    }

    fn write_memoize(&mut self, idx: u32) {
        if self.proto >= 4 {
            self.out.push(op::MEMOIZE);
        } else if self.proto >= 1 {
            if idx < 256 {
                self.out.extend_from_slice(&[op::BINPUT, idx as u8]);
            } else {
                self.out.push(op::LONG_BINPUT);
                self.out.extend_from_slice(&idx.to_le_bytes());
            }
        } else {
            self.out.push(op::PUT);
            self.out.extend_from_slice(format!("{idx}\n").as_bytes());
        }
    }

    fn get(&mut self, idx: u32) {
        if self.proto >= 1 {
            if idx < 256 {
                self.out.extend_from_slice(&[op::BINGET, idx as u8]);
            } else {
                self.out.push(op::LONG_BINGET);
                self.out.extend_from_slice(&idx.to_le_bytes());
            }
        } else {
            self.out.push(op::GET);
            self.out.extend_from_slice(format!("{idx}\n").as_bytes());
        }
    }

    #[inline(always)]
    fn memo_get(&self, obj: &Bound<'py, PyAny>) -> Option<u32> {
        self.memo.get(&(obj.as_ptr() as usize)).map(|(i, _)| *i)
    }

    // ---- objects ----

    fn save(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        self.boundary();
        // Scalars first: never memoized.
        if obj.is_none() {
            self.out.push(op::NONE);
            return Ok(());
        }
        if let Ok(b) = obj.cast_exact::<PyBool>() {
            let v = b.is_true();
            if self.proto >= 2 {
                self.out.push(if v { op::NEWTRUE } else { op::NEWFALSE });
            } else {
                self.out
                    .extend_from_slice(if v { b"I01\n" } else { b"I00\n" });
            }
            return Ok(());
        }
        if obj.is_exact_instance_of::<PyInt>() {
            return self.save_int(obj);
        }
        if let Ok(f) = obj.cast_exact::<PyFloat>() {
            let v = f.value();
            if self.proto >= 1 {
                self.out.push(op::BINFLOAT);
                self.out.extend_from_slice(&v.to_be_bytes());
            } else {
                self.out.push(op::FLOAT);
                self.out.extend_from_slice(obj.repr()?.to_str()?.as_bytes());
                self.out.push(b'\n');
            }
            return Ok(());
        }
        if let Some(idx) = self.memo_get(obj) {
            self.get(idx);
            return Ok(());
        }
        if let Ok(s) = obj.cast_exact::<PyString>() {
            self.save_str(s)?;
            self.memoize(obj);
            return Ok(());
        }
        if let Ok(b) = obj.cast_exact::<PyBytes>() {
            return self.save_bytes(obj, b.as_bytes());
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH || crate::util::stack_here() < crate::util::stack_floor() {
            return Err(PyRecursionError::new_err(
                "maximum recursion depth exceeded while pickling an object",
            ));
        }
        let r = self.save_compound(obj);
        self.depth -= 1;
        r
    }

    fn save_compound(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let py = self.py;
        if let Ok(t) = obj.cast_exact::<PyTuple>() {
            return self.save_tuple(obj, t);
        }
        if let Ok(l) = obj.cast_exact::<PyList>() {
            self.open_container(obj, op::EMPTY_LIST, op::LIST);
            let items: Vec<_> = l.iter().collect();
            return self.batch_list_exact(items);
        }
        if let Ok(d) = obj.cast_exact::<PyDict>() {
            self.open_container(obj, op::EMPTY_DICT, op::DICT);
            let items: Vec<_> = d.iter().collect();
            return self.batch_dict_exact(items);
        }
        if let Ok(s) = obj.cast_exact::<PySet>() {
            let items: Vec<_> = s.iter().collect();
            if self.proto < 4 {
                let list = PyList::new(py, items)?;
                let args = PyTuple::new(py, [list])?;
                return self.save_reduce_global("builtins", "set", &args, Some(obj));
            }
            self.out.push(op::EMPTY_SET);
            self.memoize(obj);
            // CPython's save_set: batches of 1000 while the last one was full (so a size that
            // is a multiple of 1000 ends with an empty MARK ADDITEMS).
            if items.is_empty() {
                return Ok(());
            }
            let mut rest = &items[..];
            loop {
                let n = rest.len().min(BATCH);
                self.out.push(op::MARK);
                for it in &rest[..n] {
                    self.save(it)?;
                }
                self.out.push(op::ADDITEMS);
                rest = &rest[n..];
                if n < BATCH {
                    break;
                }
            }
            return Ok(());
        }
        if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
            let items: Vec<_> = s.iter().collect();
            if self.proto < 4 {
                let list = PyList::new(py, items)?;
                let args = PyTuple::new(py, [list])?;
                return self.save_reduce_global("builtins", "frozenset", &args, Some(obj));
            }
            self.out.push(op::MARK);
            for it in &items {
                self.save(it)?;
            }
            if let Some(idx) = self.memo_get(obj) {
                // Recursive: the frozenset was written while writing its items.
                self.out.push(op::POP_MARK);
                self.get(idx);
                return Ok(());
            }
            self.out.push(op::FROZENSET);
            self.memoize(obj);
            return Ok(());
        }
        if let Ok(b) = obj.cast_exact::<PyByteArray>() {
            let data = b.to_vec();
            if self.proto >= 5 {
                let mut header = [op::BYTEARRAY8, 0, 0, 0, 0, 0, 0, 0, 0];
                header[1..].copy_from_slice(&(data.len() as u64).to_le_bytes());
                self.write_payload(&header, &data);
                self.memoize(obj);
                return Ok(());
            }
            let args = if data.is_empty() {
                PyTuple::empty(py)
            } else {
                PyTuple::new(py, [PyBytes::new(py, &data)])?
            };
            return self.save_reduce_global("builtins", "bytearray", &args, Some(obj));
        }
        if let Ok(c) = obj.cast_exact::<PyComplex>() {
            let args = PyTuple::new(py, [PyFloat::new(py, c.real()), PyFloat::new(py, c.imag())])?;
            return self.save_reduce_global("builtins", "complex", &args, Some(obj));
        }
        if obj.is_instance(&self.inert)? {
            return self.save_inert(obj);
        }
        if obj.is(py.Ellipsis()) {
            return self.save_global_named("builtins", "Ellipsis", Some(obj));
        }
        if obj.is(py.NotImplemented()) {
            return self.save_global_named("builtins", "NotImplemented", Some(obj));
        }
        // copyreg's dispatch table comes before the built-in reductions below, as in pickle.
        let rv = self.reducer.call1((obj,))?;
        if !rv.is_none() {
            return self.save_reduce_value(obj, &rv);
        }
        if obj.is_exact_instance_of::<pyo3::types::PySlice>()
            || obj.is_exact_instance_of::<pyo3::types::PyRange>()
        {
            let rv = obj.call_method1(intern!(py, "__reduce_ex__"), (self.proto,))?;
            return self.save_reduce_value(obj, &rv);
        }
        if obj.is_instance_of::<PyType>()
            || obj.is_instance_of::<pyo3::types::PyCFunction>()
            || obj.is_instance_of::<pyo3::types::PyFunction>()
        {
            let (m, n) = global_names(obj)?;
            return self.save_global_named(&m, &n, Some(obj));
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

    /// An empty list/dict (EMPTY_* at 1+, MARK + LIST/DICT at 0), memoized before its items so
    /// recursive references find it.
    fn open_container(&mut self, obj: &Bound<'py, PyAny>, empty: u8, from_mark: u8) {
        if self.proto >= 1 {
            self.out.push(empty);
        } else {
            self.out.extend_from_slice(&[op::MARK, from_mark]);
        }
        self.memoize(obj);
    }

    fn save_int(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let v: Option<i64> = obj.extract().ok();
        if self.proto >= 1 {
            if let Some(v) = v {
                if (0..256).contains(&v) {
                    self.out.extend_from_slice(&[op::BININT1, v as u8]);
                    return Ok(());
                }
                if (0..65536).contains(&v) {
                    self.out.push(op::BININT2);
                    self.out.extend_from_slice(&(v as u16).to_le_bytes());
                    return Ok(());
                }
                if i32::try_from(v).is_ok() {
                    self.out.push(op::BININT);
                    self.out.extend_from_slice(&(v as i32).to_le_bytes());
                    return Ok(());
                }
            }
        }
        if self.proto >= 2 {
            let bytes = long_bytes(obj)?;
            if bytes.len() < 256 {
                self.out.extend_from_slice(&[op::LONG1, bytes.len() as u8]);
            } else {
                self.out.push(op::LONG4);
                let n = i32::try_from(bytes.len())
                    .map_err(|_| perr(self.py, "long too large to pickle"))?;
                self.out.extend_from_slice(&n.to_le_bytes());
            }
            self.out.extend_from_slice(&bytes);
            return Ok(());
        }
        let text = obj.repr()?;
        if v.is_some_and(|v| i32::try_from(v).is_ok()) {
            self.out.push(op::INT);
            self.out.extend_from_slice(text.to_str()?.as_bytes());
            self.out.push(b'\n');
        } else {
            self.out.push(op::LONG);
            self.out.extend_from_slice(text.to_str()?.as_bytes());
            self.out.extend_from_slice(b"L\n");
        }
        Ok(())
    }

    fn save_str(&mut self, s: &Bound<'py, PyString>) -> PyResult<()> {
        if self.proto == 0 {
            // pickle.py: escape \\, NUL, \n, \r and ^Z in the str, then raw-unicode-escape.
            let py = self.py;
            let mut t = s.clone().into_any();
            for (from, to) in [
                ("\\", "\\u005c"),
                ("\0", "\\u0000"),
                ("\n", "\\u000a"),
                ("\r", "\\u000d"),
                ("\x1a", "\\u001a"),
            ] {
                t = t.call_method1(intern!(py, "replace"), (from, to))?;
            }
            let raw = t.call_method1(intern!(py, "encode"), ("raw-unicode-escape",))?;
            self.out.push(op::UNICODE);
            self.out
                .extend_from_slice(raw.cast::<PyBytes>()?.as_bytes());
            self.out.push(b'\n');
            return Ok(());
        }
        let mut size: ffi::Py_ssize_t = 0;
        // SAFETY: GIL held; `s` is a live str; the returned buffer lives as long as `s`.
        let p = unsafe { ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut size) };
        let owned;
        let data: &[u8] = if p.is_null() {
            // Lone surrogates: UTF-8 with surrogatepass, as pickle does.
            // SAFETY: GIL held; the pending UnicodeEncodeError is replaced by the retry.
            unsafe { ffi::PyErr_Clear() };
            let b = s.call_method1(intern!(self.py, "encode"), ("utf-8", "surrogatepass"))?;
            owned = b.cast::<PyBytes>()?.as_bytes().to_vec();
            &owned
        } else {
            // SAFETY: UTF-8 buffer of `size` bytes owned by `s`, which outlives this use.
            unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size as usize) }
        };
        let n = data.len();
        let mut header = [0u8; 9];
        let hlen = if n < 256 && self.proto >= 4 {
            header[..2].copy_from_slice(&[op::SHORT_BINUNICODE, n as u8]);
            2
        } else if n > u32::MAX as usize && self.proto >= 4 {
            header[0] = op::BINUNICODE8;
            header[1..9].copy_from_slice(&(n as u64).to_le_bytes());
            9
        } else {
            let n32 = u32::try_from(n).map_err(|_| {
                perr(
                    self.py,
                    "serializing a string larger than 4 GiB requires pickle protocol 4 or higher",
                )
            })?;
            header[0] = op::BINUNICODE;
            header[1..5].copy_from_slice(&n32.to_le_bytes());
            5
        };
        self.write_payload(&header[..hlen], data);
        Ok(())
    }

    fn save_bytes(&mut self, obj: &Bound<'py, PyAny>, data: &[u8]) -> PyResult<()> {
        let py = self.py;
        if self.proto < 3 {
            if data.is_empty() {
                return self.save_reduce_global(
                    "builtins",
                    "bytes",
                    &PyTuple::empty(py),
                    Some(obj),
                );
            }
            let text: String = data.iter().map(|&b| b as char).collect();
            let args = PyTuple::new(
                py,
                [PyString::new(py, &text), intern!(py, "latin1").clone()],
            )?;
            return self.save_reduce_global("_codecs", "encode", &args, Some(obj));
        }
        let n = data.len();
        let mut header = [0u8; 9];
        let hlen = if n < 256 {
            header[..2].copy_from_slice(&[op::SHORT_BINBYTES, n as u8]);
            2
        } else if n > u32::MAX as usize && self.proto >= 4 {
            header[0] = op::BINBYTES8;
            header[1..9].copy_from_slice(&(n as u64).to_le_bytes());
            9
        } else {
            let n32 = u32::try_from(n)
                .map_err(|_| perr(py, "serializing a bytes object larger than 4 GiB requires pickle protocol 4 or higher"))?;
            header[0] = op::BINBYTES;
            header[1..5].copy_from_slice(&n32.to_le_bytes());
            5
        };
        self.write_payload(&header[..hlen], data);
        self.memoize(obj);
        Ok(())
    }

    fn save_tuple(&mut self, obj: &Bound<'py, PyAny>, t: &Bound<'py, PyTuple>) -> PyResult<()> {
        let n = t.len();
        if n == 0 {
            if self.proto >= 1 {
                self.out.push(op::EMPTY_TUPLE);
            } else {
                self.out.extend_from_slice(&[op::MARK, op::TUPLE]);
            }
            return Ok(());
        }
        let short = n <= 3 && self.proto >= 2;
        if !short {
            self.out.push(op::MARK);
        }
        for it in t.iter() {
            self.save(&it)?;
        }
        if let Some(idx) = self.memo_get(obj) {
            // The tuple was written while writing its items (recursion through a list/dict).
            if short {
                for _ in 0..n {
                    self.out.push(op::POP);
                }
            } else if self.proto >= 1 {
                self.out.push(op::POP_MARK);
            } else {
                for _ in 0..=n {
                    self.out.push(op::POP);
                }
            }
            self.get(idx);
            return Ok(());
        }
        if short {
            self.out.push(op::TUPLE1 + (n as u8) - 1);
        } else {
            self.out.push(op::TUPLE);
        }
        self.memoize(obj);
        Ok(())
    }

    /// An exact list's items as CPython's `batch_list_exact` writes them: one item alone is
    /// APPEND; otherwise MARK ... APPENDS batches of 1000 (a last batch of one item included).
    fn batch_list_exact(&mut self, items: Vec<Bound<'py, PyAny>>) -> PyResult<()> {
        if self.proto == 0 || items.len() <= 1 {
            return self.batch_appends(items);
        }
        for chunk in items.chunks(BATCH) {
            self.out.push(op::MARK);
            for it in chunk {
                self.save(it)?;
            }
            self.out.push(op::APPENDS);
        }
        Ok(())
    }

    /// An exact dict's items as CPython's `batch_dict_exact` writes them: one item alone is
    /// SETITEM; otherwise MARK ... SETITEMS batches of 1000, repeated while the last batch was
    /// full (so a size that is a multiple of 1000 ends with an empty MARK SETITEMS).
    fn batch_dict_exact(
        &mut self,
        items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    ) -> PyResult<()> {
        if self.proto == 0 || items.len() <= 1 {
            return self.batch_setitems(items);
        }
        let mut rest = &items[..];
        loop {
            let n = rest.len().min(BATCH);
            self.out.push(op::MARK);
            for (k, v) in &rest[..n] {
                self.save(k)?;
                self.save(v)?;
            }
            self.out.push(op::SETITEMS);
            rest = &rest[n..];
            if n < BATCH {
                break;
            }
        }
        Ok(())
    }

    /// Items of a list subclass (pickle's generic `_batch_appends` over an iterator).
    fn batch_appends(&mut self, items: Vec<Bound<'py, PyAny>>) -> PyResult<()> {
        if self.proto == 0 {
            for it in &items {
                self.save(it)?;
                self.out.push(op::APPEND);
            }
            return Ok(());
        }
        for chunk in items.chunks(BATCH) {
            if chunk.len() == 1 {
                self.save(&chunk[0])?;
                self.out.push(op::APPEND);
            } else {
                self.out.push(op::MARK);
                for it in chunk {
                    self.save(it)?;
                }
                self.out.push(op::APPENDS);
            }
        }
        Ok(())
    }

    fn batch_setitems(
        &mut self,
        items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    ) -> PyResult<()> {
        if self.proto == 0 {
            for (k, v) in &items {
                self.save(k)?;
                self.save(v)?;
                self.out.push(op::SETITEM);
            }
            return Ok(());
        }
        for chunk in items.chunks(BATCH) {
            if chunk.len() == 1 {
                self.save(&chunk[0].0)?;
                self.save(&chunk[0].1)?;
                self.out.push(op::SETITEM);
            } else {
                self.out.push(op::MARK);
                for (k, v) in chunk {
                    self.save(k)?;
                    self.save(v)?;
                }
                self.out.push(op::SETITEMS);
            }
        }
        Ok(())
    }

    // ---- globals and reductions ----

    /// A global by name (`module.name`); nested names at protocols 0-3 as
    /// `getattr(parent, last)`, as pickle.py writes them.
    fn save_global_named(
        &mut self,
        module: &str,
        name: &str,
        obj: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        if obj.is_none() {
            if let Some(&idx) = self.globals_memo.get(&(module.to_owned(), name.to_owned())) {
                self.get(idx);
                return Ok(());
            }
        }
        if self.proto >= 4 {
            let m = match self.module_strs.get(module) {
                Some(m) => m.clone(),
                None => {
                    let m = PyString::new(self.py, module);
                    self.module_strs.insert(module.to_owned(), m.clone());
                    m
                }
            };
            let n = PyString::new(self.py, name);
            self.save(m.as_any())?;
            self.save(n.as_any())?;
            self.out.push(op::STACK_GLOBAL);
        } else if let Some((parent, last)) = name.rsplit_once('.') {
            self.save_global_named("builtins", "getattr", None)?;
            self.write_mark_or_none();
            self.save_global_named(module, parent, None)?;
            self.save(PyString::new(self.py, last).as_any())?;
            self.write_tuple_end(2);
            self.out.push(op::REDUCE);
        } else {
            let (m, n) = if self.proto < 3 && self.fix_imports {
                cellar_pickle::py2_global_name(module, name)
            } else {
                (module, name)
            };
            for part in [m, n] {
                if part.contains('\n') {
                    return Err(perr(
                        self.py,
                        format!("can't pickle global name {part:?} containing a newline"),
                    ));
                }
            }
            self.out.push(op::GLOBAL);
            self.out.extend_from_slice(m.as_bytes());
            self.out.push(b'\n');
            self.out.extend_from_slice(n.as_bytes());
            self.out.push(b'\n');
        }
        match obj {
            Some(o) => self.memoize(o),
            None => {
                let idx = self.memo_len();
                self.globals_memo
                    .insert((module.to_owned(), name.to_owned()), idx);
                self.write_memoize(idx);
            }
        }
        Ok(())
    }

    /// MARK before a tuple's items when the protocol has no TUPLE1-3 for them.
    fn write_mark_or_none(&mut self) {
        if self.proto < 2 {
            self.out.push(op::MARK);
        }
    }

    fn write_tuple_end(&mut self, n: usize) {
        if self.proto >= 2 && (1..=3).contains(&n) {
            self.out.push(op::TUPLE1 + (n as u8) - 1);
        } else {
            self.out.push(op::TUPLE);
        }
    }

    /// `module.name(*args)` then memoize `obj`.
    fn save_reduce_global(
        &mut self,
        module: &str,
        name: &str,
        args: &Bound<'py, PyTuple>,
        obj: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        self.save_global_named(module, name, None)?;
        self.save(args.as_any())?;
        self.out.push(op::REDUCE);
        if let Some(o) = obj {
            self.memoize(o);
        }
        Ok(())
    }

    /// A reduce value (a string naming a global, or a 2-5 tuple), as pickle's `save_reduce`.
    fn save_reduce_value(
        &mut self,
        obj: &Bound<'py, PyAny>,
        rv: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        let py = self.py;
        if let Ok(s) = rv.cast::<PyString>() {
            let m: String = obj
                .getattr(intern!(py, "__module__"))
                .and_then(|m| m.extract())
                .map_err(|_| perr(py, "can't pickle a global without a __module__"))?;
            return self.save_global_named(&m, s.to_str()?, Some(obj));
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
        if self.proto >= 2 && fname.as_deref() == Some("__newobj__") && !args.is_empty() {
            let cls = args.get_item(0)?;
            self.save(&cls)?;
            self.save(args.get_slice(1, args.len()).as_any())?;
            self.out.push(op::NEWOBJ);
        } else if self.proto >= 4 && fname.as_deref() == Some("__newobj_ex__") && args.len() == 3 {
            self.save(&args.get_item(0)?)?;
            self.save(&args.get_item(1)?)?;
            self.save(&args.get_item(2)?)?;
            self.out.push(op::NEWOBJ_EX);
        } else {
            self.save(&func)?;
            self.save(args.as_any())?;
            self.out.push(op::REDUCE);
        }
        if let Some(idx) = self.memo_get(obj) {
            // Written while writing its own arguments: use that one.
            self.out.push(op::POP);
            self.get(idx);
        } else {
            self.memoize(obj);
        }
        self.finish_reduce(
            get(3)
                .map(|l| l.try_iter().and_then(|i| i.collect::<PyResult<Vec<_>>>()))
                .transpose()?,
            get(4)
                .map(|d| {
                    d.try_iter().and_then(|i| {
                        i.map(|p| {
                            p.and_then(|p| p.extract::<(Bound<'py, PyAny>, Bound<'py, PyAny>)>())
                        })
                        .collect::<PyResult<Vec<_>>>()
                    })
                })
                .transpose()?,
            get(2),
        )
    }

    fn finish_reduce(
        &mut self,
        listitems: Option<Vec<Bound<'py, PyAny>>>,
        dictitems: Option<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>>,
        state: Option<Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        if let Some(items) = listitems {
            if !items.is_empty() {
                self.batch_appends(items)?;
            }
        }
        if let Some(items) = dictitems {
            if !items.is_empty() {
                self.batch_setitems(items)?;
            }
        }
        if let Some(state) = state {
            self.save(&state)?;
            self.out.push(op::BUILD);
        }
        Ok(())
    }

    /// An inert object, written back the way it was read.
    fn save_inert(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let py = self.py;
        let module: String = obj.getattr(intern!(py, "module"))?.extract()?;
        let name: String = obj.getattr(intern!(py, "name"))?.extract()?;
        let construct: String = obj.getattr(intern!(py, "construct"))?.extract()?;
        let args = obj.getattr(intern!(py, "args"))?;
        let args = PyTuple::new(py, args.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
        let kwargs = obj.getattr(intern!(py, "kwargs"))?;
        match construct.as_str() {
            "global" => return self.save_global_named(&module, &name, Some(obj)),
            "reduce" => {
                self.save_global_named(&module, &name, None)?;
                self.save(args.as_any())?;
                self.out.push(op::REDUCE);
            }
            "call" => {
                let func = obj.getattr(intern!(py, "func"))?;
                self.save(&func)?;
                self.save(args.as_any())?;
                self.out.push(op::REDUCE);
            }
            "newobj" => {
                if self.proto >= 2 {
                    self.save_global_named(&module, &name, None)?;
                    self.save(args.as_any())?;
                    self.out.push(op::NEWOBJ);
                } else {
                    self.save_global_named("copyreg", "__newobj__", None)?;
                    self.out.push(op::MARK);
                    self.save_global_named(&module, &name, None)?;
                    for a in args.iter() {
                        self.save(&a)?;
                    }
                    self.out.push(op::TUPLE);
                    self.out.push(op::REDUCE);
                }
            }
            "newobj_ex" => {
                let kwargs = if kwargs.is_none() {
                    PyDict::new(py).into_any()
                } else {
                    kwargs
                };
                if self.proto >= 4 {
                    self.save_global_named(&module, &name, None)?;
                    self.save(args.as_any())?;
                    self.save(&kwargs)?;
                    self.out.push(op::NEWOBJ_EX);
                } else {
                    self.save_global_named("copyreg", "__newobj_ex__", None)?;
                    self.write_mark_or_none();
                    self.save_global_named(&module, &name, None)?;
                    self.save(args.as_any())?;
                    self.save(&kwargs)?;
                    self.write_tuple_end(3);
                    self.out.push(op::REDUCE);
                }
            }
            "reconstructor" => {
                self.save_global_named("copyreg", "_reconstructor", None)?;
                self.out.push(op::MARK);
                self.save_global_named(&module, &name, None)?;
                for a in args.iter() {
                    self.save(&a)?;
                }
                self.out.push(op::TUPLE);
                self.out.push(op::REDUCE);
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "Inert.construct must be global, reduce, call, newobj, newobj_ex or \
                     reconstructor, not {other:?}"
                )))
            }
        }
        if let Some(idx) = self.memo_get(obj) {
            self.out.push(op::POP);
            self.get(idx);
        } else {
            self.memoize(obj);
        }
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
        self.finish_reduce(
            Some(listitems),
            Some(dictitems),
            (!state.is_none()).then_some(state),
        )
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

/// pickle's `encode_long`: minimal little-endian two's complement (b'' for 0). Public API only
/// (no `_PyLong_AsByteArray`, whose signature changed in 3.13): Rust arithmetic for ints that fit
/// an i64, else `int.bit_length()` and `int.to_bytes(n, 'little', signed=True)`.
fn long_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let py = obj.py();
    if let Ok(v) = obj.extract::<i64>() {
        return Ok(encode_long_i64(v));
    }
    let bits: usize = obj.call_method0(intern!(py, "bit_length"))?.extract()?;
    let n = (bits >> 3) + 1;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item(intern!(py, "signed"), true)?;
    let b = obj.call_method(
        intern!(py, "to_bytes"),
        (n, intern!(py, "little")),
        Some(&kwargs),
    )?;
    let mut buf = b.cast::<PyBytes>()?.as_bytes().to_vec();
    trim_sign_byte(&mut buf);
    Ok(buf)
}

/// `encode_long` of an i64 (the same bytes as `int.to_bytes((bit_length >> 3) + 1, ...)` after
/// the sign-byte trim).
fn encode_long_i64(v: i64) -> Vec<u8> {
    if v == 0 {
        return Vec::new();
    }
    let bits = 64 - v.unsigned_abs().leading_zeros() as usize;
    let n = ((bits >> 3) + 1).min(8);
    let mut buf = v.to_le_bytes()[..n].to_vec();
    if n == 8 && bits == 64 {
        // |i64::MIN| needs 9 bytes by pickle's rule: (64 >> 3) + 1.
        buf.push(0xff);
    }
    trim_sign_byte(&mut buf);
    buf
}

/// Negative numbers: drop a redundant sign byte, as pickle.py does.
fn trim_sign_byte(buf: &mut Vec<u8>) {
    let n = buf.len();
    if n > 1 && buf[n - 1] == 0xff && buf[n - 2] & 0x80 != 0 {
        buf.pop();
    }
}
