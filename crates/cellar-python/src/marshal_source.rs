//! The Python-object source of the one marshal encoder (`cellar_marshal::write`): Python objects
//! -> marshal bytes, read directly (no intermediate tree).
//!
//! The encoder core chooses codes, writes them, sorts sets and enforces the nesting limit; this
//! module only says what each object is, like CPython's `w_object` (exact types only, then
//! anything with the buffer protocol as bytes), and which objects are shared.
//!
//! FLAG_REF as the running CPython sets it (so the bytes equal `marshal.dumps`): CPython's
//! `w_ref` flags an object (other than None/True/False/Ellipsis/StopIteration) whose reference
//! count is not 1, and every interned str. `extra` tells how many references the source holds
//! on an object that CPython would not hold at that point, and is subtracted:
//! - container items, dict keys/values: 0 (borrowed, as CPython borrows them);
//! - code attributes read with getattr, slice fields, set items: 1 (a new reference);
//! - `co_code` from `PyCode_GetCode`: 0 (CPython also holds the new reference it returns);
//! - the code object's own fields (`marshal_code::LOCALSPLUS` verified): 0 (borrowed);
//! - the rebuilt `co_localsplusnames` tuple and kinds bytes: 0 (they stand for the code
//!   object's own); the names inside: 1 (our rebuilt tuple);
//! - set items: written once standalone for the sort key (CPython 3.11/3.12 borrow the item
//!   there, 3.13 holds a reference) and then for real (CPython holds a (dump, item) pair);
//! - an object promoted before an escape (below): one more per promotion, whichever handle
//!   reaches it later.
//!
//! Borrowing and escapes: like CPython's `w_object`, the encoder borrows container items (no
//! reference count traffic on the common path: every object is touched once, and not dirtied).
//! That is sound while no foreign code runs, because then nothing can change or free what the
//! encoder has pending. Only the uncommon objects can run code or trigger the garbage collector
//! (whose finalizers run arbitrary Python code): the buffer-protocol fallback (3.12+
//! `__buffer__`/`__release_buffer__`), big ints, sets, slices, and code objects read through
//! their public attributes (they allocate objects and call methods). A code object whose
//! layout the import-time probe verified is read straight from its struct instead, and its
//! only allocation is `co_code`, CPython's cached bytes (not tracked by the GC, so making it
//! runs no collection): it does not escape. For the others `node` answers [`Node::Escape`]:
//! the encoder first hands every handle it holds to [`Source::promote`], which takes a strong
//! reference kept until the dump ends, and only then is the object described (`node_escaped`).
//! Every reference the source takes (promotions, new objects from getattr, flagged objects) is
//! released only after the dump, so no deallocation (and no finalizer) runs in the middle of it
//! either.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::borrow::Cow;
use std::cell::Cell;
use std::marker::PhantomData;

use cellar_marshal::write::{IdMap, IdSet, Node, Source, StrData};
use cellar_marshal::{DumpOptions, EncodeError};
use pyo3::exceptions::PyValueError;
use pyo3::ffi::{self, Py_ssize_t};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFrozenSet, PyList, PySet, PyString};
use pyo3::Borrowed;

/// One object pending in the encoder, with the `extra` its children get. A borrowed pointer:
/// the object is kept alive by its container (nothing runs that could change it, see the
/// module docs) or by the source's `keep` list, except for a clone, which owns one reference.
pub(crate) struct PyObj<'py> {
    /// Never null.
    ptr: *mut ffi::PyObject,
    /// The `extra` of this object's children (see the module docs).
    kids_extra: u32,
    /// Promoted before an escape: the source holds one more reference on it.
    promoted: Cell<bool>,
    /// A clone: this handle owns one reference, released when it is dropped.
    owned: bool,
    /// Only made while the GIL is held (`Python<'py>` is neither Send nor Sync).
    _py: PhantomData<Python<'py>>,
}

impl<'py> PyObj<'py> {
    /// A handle on `ptr`, which must stay alive while the encoder holds it (borrowed from a
    /// pending container, or kept by the source).
    #[inline(always)]
    fn borrowed(ptr: *mut ffi::PyObject, kids_extra: u32) -> Option<PyObj<'py>> {
        if ptr.is_null() {
            return None;
        }
        Some(PyObj {
            ptr,
            kids_extra,
            promoted: Cell::new(false),
            owned: false,
            _py: PhantomData,
        })
    }

    #[inline(always)]
    fn as_ptr(&self) -> *mut ffi::PyObject {
        self.ptr
    }

    /// The object as a borrowed pyo3 handle.
    fn bound<'a>(&'a self, py: Python<'py>) -> Borrowed<'a, 'py, PyAny> {
        // SAFETY: GIL held (`py`); the object is alive while this handle is (see the type docs).
        unsafe { Borrowed::from_ptr(py, self.as_ptr()) }
    }
}

/// Set items are written twice (standalone for the sort key, then for real) through a second
/// handle, which owns a reference as CPython's does (the encoder counts it in `extra`).
impl Clone for PyObj<'_> {
    fn clone(&self) -> Self {
        // SAFETY: GIL held (a PyObj only exists during a dump, see `_py`); the object is alive
        // (held by `self`).
        unsafe { ffi::Py_INCREF(self.as_ptr()) };
        PyObj {
            ptr: self.ptr,
            kids_extra: self.kids_extra,
            promoted: self.promoted.clone(),
            owned: true,
            _py: PhantomData,
        }
    }
}

impl Drop for PyObj<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: GIL held (see `_py`); this handle's own reference. Only set items are
            // cloned, and the source keeps every set item until the dump ends, so this never
            // frees the object (no finalizer runs mid-dump).
            unsafe { ffi::Py_DECREF(self.as_ptr()) };
        }
    }
}

/// Why a dump failed.
pub(crate) enum Fail {
    Core(EncodeError),
    Py(PyErr),
}

impl From<EncodeError> for Fail {
    #[cold]
    fn from(e: EncodeError) -> Fail {
        Fail::Core(e)
    }
}

impl From<PyErr> for Fail {
    #[cold]
    fn from(e: PyErr) -> Fail {
        Fail::Py(e)
    }
}

/// The references a source holds until its dump ends, released when it is dropped. Their
/// buffer is reused per thread: a small dump (a shelf value) would otherwise allocate and
/// regrow it every call.
struct Kept<'py> {
    /// Owned references, one each.
    ptrs: Vec<*mut ffi::PyObject>,
    _py: PhantomData<Python<'py>>,
}

/// The largest buffer of [`Kept`] kept for reuse (pointers).
const KEPT_SPARE_MAX: usize = 1 << 16;

std::thread_local! {
    static KEPT_SPARE: Cell<Vec<*mut ffi::PyObject>> = const { Cell::new(Vec::new()) };
}

impl<'py> Kept<'py> {
    fn new(_py: Python<'py>) -> Kept<'py> {
        Kept {
            ptrs: KEPT_SPARE.with(|c| c.take()),
            _py: PhantomData,
        }
    }

    #[inline(always)]
    fn push(&mut self, o: Bound<'py, PyAny>) {
        self.ptrs.push(o.into_ptr());
    }
}

impl Drop for Kept<'_> {
    fn drop(&mut self) {
        // Taken out first: a finalizer run by a release below may start a dump of its own,
        // which then finds no spare buffer and makes one.
        let mut ptrs = std::mem::take(&mut self.ptrs);
        for p in ptrs.drain(..) {
            // SAFETY: the GIL is held while `'py` lives; each pointer is one reference this
            // list owns (from `into_ptr`), released once.
            unsafe { ffi::Py_DECREF(p) };
        }
        if ptrs.capacity() <= KEPT_SPARE_MAX {
            KEPT_SPARE.with(|c| c.set(ptrs));
        }
    }
}

/// Reads Python objects for the core encoder.
pub(crate) struct PySource<'py> {
    py: Python<'py>,
    /// Every reference the source takes, released when the dump ends: flagged objects (their
    /// addresses are the identities), promoted handles, and objects it made or read by
    /// attribute.
    keep: Kept<'py>,
    /// The compilation unit of the first code object met (see [`Unit`]).
    unit: Option<Unit<'py>>,
    /// The code object `node` just described from the struct (see
    /// [`crate::marshal_code::code_fields`]): `code_field` then reads its fields without
    /// checking again. Null otherwise (reset when used and by `node_escaped`).
    fast_code: *mut ffi::PyObject,
    /// References taken by promotions, per object (not per handle): an object promoted during
    /// a set item's standalone dump is written again later through a new handle, which must
    /// count them too (CPython releases everything its standalone dump held). `None` in a
    /// dump without escapes, which then pays one branch per object (boxed: the source's other
    /// fields keep their places; inline, the map made (a) dumps ~5% slower for the same
    /// instructions).
    promoted_at: Option<Box<IdMap<u32>>>,
}

/// `co_localsplusnames` as CPython's compiler shares it. The compiler merges every tuple of
/// constants and names of one compilation unit by value (`merge_const_one`): a code object's
/// `co_localsplusnames` IS the `co_names` or constant tuple of equal value when there is one,
/// and otherwise one tuple shared by all code objects with those local names. No public API
/// returns that tuple, so it is found again by value: the real tuple of equal value met in the
/// unit, else one rebuilt tuple per value, flagged as CPython's would be (its reference count
/// is the number of code objects sharing it).
struct Unit<'py> {
    /// value (tuple of str) -> the object that stands for it.
    reps: Bound<'py, PyDict>,
    /// Stand-in (by address) -> how many code objects of the unit have these local names.
    uses: IdMap<usize>,
    /// Per code object address, what the scan already read: the stand-in for its
    /// `co_localsplusnames` (resolved through `reps`), the rebuilt `co_localspluskinds`, and
    /// `co_names` and `co_consts`.
    rebuilt: IdMap<Scanned<'py>>,
    /// Rebuilt tuples standing for a value.
    synthetic: IdSet,
    /// Real tuples held (twice: as key and value) by `reps`: two more references than CPython.
    held: IdSet,
    /// The lengths of the unit's local-name tuples (index: length): only real tuples of those
    /// lengths can stand for one, so only those enter `reps` at once.
    lens: Vec<bool>,
    /// The other real tuples of str, in the order met; entered into `reps` only if a local-name
    /// tuple of another length (from a code object outside the unit) is resolved. Addresses,
    /// not references (a reference would change the counts FLAG_REF is decided on): they are
    /// alive for the whole dump, reachable through immutable tuples and code objects from the
    /// unit's root code object, which the source keeps (code objects are promoted).
    deferred: Vec<usize>,
}

/// What [`scan_unit`] read from one code object: the localsplusnames stand-in,
/// localspluskinds, co_names, co_consts.
type Scanned<'py> = [Bound<'py, PyAny>; 4];

impl<'py> PySource<'py> {
    /// The references promotions took on `v` (out of line: most dumps have none).
    #[cold]
    #[inline(never)]
    fn promotions_of(&self, v: *mut ffi::PyObject) -> u32 {
        self.promoted_at
            .as_ref()
            .and_then(|m| m.get(&(v as usize)).copied())
            .unwrap_or(0)
    }

    /// A handle on `o`, which is kept until the dump ends; its children get `kids_extra`.
    fn own(&mut self, o: Bound<'py, PyAny>, kids_extra: u32) -> PyObj<'py> {
        let ptr = o.as_ptr();
        self.keep.push(o);
        PyObj {
            ptr,
            kids_extra,
            promoted: Cell::new(false),
            owned: false,
            _py: PhantomData,
        }
    }

    fn obj(&mut self, o: Bound<'py, PyAny>) -> PyObj<'py> {
        self.own(o, 0)
    }
}

/// Python 3.13 holds a reference on a set item while dumping it standalone for the sort key.
const SET_STANDALONE_HELD: u32 = if cfg!(Py_3_13) { 1 } else { 0 };

impl<'py> Source for PySource<'py> {
    type Obj = PyObj<'py>;
    type Error = Fail;

    /// The common exact types (nothing here runs code or allocates); the rest escape.
    #[inline(always)]
    fn node<'n>(&mut self, o: &'n PyObj<'py>) -> Result<Node<'n, PyObj<'py>>, Fail> {
        let v = o.as_ptr();
        let py = self.py;
        // SAFETY: (whole block) GIL held; `v` is alive as long as `o` (held by a pending
        // container or the source, and no code runs while the returned node borrows it); every
        // type check comes before the accessor that relies on it; str and bytes objects are
        // immutable, so the slices stay valid while `o` lives.
        unsafe {
            let tp = ffi::Py_TYPE(v);
            if tp == &raw mut ffi::PyLong_Type {
                let mut overflow: std::os::raw::c_int = 0;
                let x = ffi::PyLong_AsLongLongAndOverflow(v, &mut overflow);
                if overflow == 0 {
                    if x == -1 && !ffi::PyErr_Occurred().is_null() {
                        return Err(Fail::Py(PyErr::fetch(py)));
                    }
                    return Ok(Node::Int(x));
                }
                // A big int: its methods are called (allocations).
                return Ok(Node::Escape);
            }
            if tp == &raw mut ffi::PyUnicode_Type {
                let n = ffi::PyUnicode_GET_LENGTH(v) as usize;
                let interned = (*(v as *mut ffi::PyASCIIObject)).interned() != 0;
                let data = if ffi::PyUnicode_IS_ASCII(v) != 0 {
                    StrData::Ascii(std::slice::from_raw_parts(ffi::PyUnicode_1BYTE_DATA(v), n))
                } else if let Some(utf8) = cached_utf8(v) {
                    StrData::Utf8(utf8)
                } else {
                    match ffi::PyUnicode_KIND(v) {
                        ffi::PyUnicode_1BYTE_KIND => StrData::Ucs1(std::slice::from_raw_parts(
                            ffi::PyUnicode_1BYTE_DATA(v),
                            n,
                        )),
                        ffi::PyUnicode_2BYTE_KIND => StrData::Ucs2(std::slice::from_raw_parts(
                            ffi::PyUnicode_2BYTE_DATA(v),
                            n,
                        )),
                        _ => StrData::Ucs4(std::slice::from_raw_parts(
                            ffi::PyUnicode_4BYTE_DATA(v),
                            n,
                        )),
                    }
                };
                return Ok(Node::Str { data, interned });
            }
            if tp == &raw mut ffi::PyTuple_Type {
                return Ok(Node::Tuple(ffi::PyTuple_GET_SIZE(v) as usize));
            }
            if tp == &raw mut ffi::PyFloat_Type {
                return Ok(Node::Float(ffi::PyFloat_AS_DOUBLE(v)));
            }
            if tp == &raw mut ffi::PyDict_Type {
                return Ok(Node::Dict);
            }
            if tp == &raw mut ffi::PyList_Type {
                return Ok(Node::List(ffi::PyList_GET_SIZE(v) as usize));
            }
            if tp == &raw mut ffi::PyBytes_Type {
                let n = ffi::Py_SIZE(v).max(0) as usize;
                let p = ffi::PyBytes_AS_STRING(v) as *const u8;
                return Ok(Node::Bytes(Cow::Borrowed(std::slice::from_raw_parts(p, n))));
            }
            // The singletons (their types are none of the above).
            if v == ffi::Py_None() {
                return Ok(Node::None);
            }
            if v == ffi::Py_True() {
                return Ok(Node::Bool(true));
            }
            if v == ffi::Py_False() {
                return Ok(Node::Bool(false));
            }
            if v == ffi::PyExc_StopIteration {
                return Ok(Node::StopIteration);
            }
            if v == ffi::Py_Ellipsis() {
                return Ok(Node::Ellipsis);
            }
            if tp == &raw mut ffi::PyComplex_Type {
                return Ok(Node::Complex(
                    ffi::PyComplex_RealAsDouble(v),
                    ffi::PyComplex_ImagAsDouble(v),
                ));
            }
            if ffi::PyCode_Check(v) != 0 {
                // Read straight from the struct when its layout is verified: `children` then
                // only adds `co_code`, which CPython caches on the code object (made once, a
                // bytes object: not tracked by the cyclic GC, so making it runs no collection
                // and no finalizer). Nothing foreign runs, so nothing needs promoting.
                if let Some(ints) = crate::marshal_code::code_fields(v) {
                    self.fast_code = v;
                    return Ok(Node::Code { ints });
                }
            }
        }
        Ok(Node::Escape)
    }

    /// Everything else, once every pending handle is promoted (see the module docs): this may
    /// run Python code.
    #[inline(never)]
    fn node_escaped<'n>(&mut self, o: &'n PyObj<'py>) -> Result<Node<'n, PyObj<'py>>, Fail> {
        let v = o.as_ptr();
        self.fast_code = std::ptr::null_mut();
        // SAFETY: (whole block) GIL held; `v` is alive (`o` was promoted: the source holds a
        // reference until the dump ends); every type check comes before the accessor that
        // relies on it.
        unsafe {
            let tp = ffi::Py_TYPE(v);
            if tp == &raw mut ffi::PyLong_Type {
                return big_int(&o.bound(self.py));
            }
            if tp == &raw mut ffi::PySet_Type || tp == &raw mut ffi::PyFrozenSet_Type {
                return Ok(Node::Set {
                    frozen: tp == &raw mut ffi::PyFrozenSet_Type,
                    len: ffi::PySet_Size(v).max(0) as usize,
                });
            }
            if ffi::PyCode_Check(v) != 0 {
                let ints = code_ints(&o.bound(self.py))?;
                return Ok(Node::Code { ints });
            }
            if tp == &raw mut ffi::PySlice_Type {
                return Ok(Node::Slice);
            }
            if ffi::PyObject_CheckBuffer(v) != 0 {
                // Anything else with the buffer protocol is written as bytes (copied, so the
                // view is released before any other object is looked at).
                let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::zeroed();
                if ffi::PyObject_GetBuffer(v, view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
                    ffi::PyErr_Clear();
                    return Ok(Node::Unmarshallable);
                }
                let mut view = view.assume_init();
                let n = view.len.max(0) as usize;
                let data = if n > 0 && !view.buf.is_null() {
                    std::slice::from_raw_parts(view.buf as *const u8, n).to_vec()
                } else {
                    Vec::new()
                };
                ffi::PyBuffer_Release(&mut view);
                return Ok(Node::Bytes(Cow::Owned(data)));
            }
        }
        Ok(Node::Unmarshallable)
    }

    #[inline(always)]
    fn promote(&mut self, o: &PyObj<'py>) -> bool {
        if o.promoted.get() {
            return false;
        }
        o.promoted.set(true);
        // SAFETY: GIL held; `o` is alive (borrowed from a pending container or kept);
        // from_borrowed_ptr takes a new reference, kept until the dump ends.
        self.keep
            .push(unsafe { Bound::from_borrowed_ptr(self.py, o.as_ptr()) });
        *self
            .promoted_at
            .get_or_insert_with(Default::default)
            .entry(o.as_ptr() as usize)
            .or_insert(0) += 1;
        true
    }

    #[inline(always)]
    fn shared_id(&mut self, o: &PyObj<'py>, extra: u32) -> Option<usize> {
        let v = o.as_ptr();
        let mut extra = extra;
        if self.promoted_at.is_some() {
            extra += self.promotions_of(v);
        }
        if let Some(u) = &self.unit {
            // Only tuples are ever held (see `Unit::held`).
            // SAFETY: GIL held; a type check on a live object.
            let tuple = unsafe { ffi::PyTuple_CheckExact(v) } != 0;
            if tuple && !u.held.is_empty() && u.held.contains(&(v as usize)) {
                extra += 2;
            }
        }
        // SAFETY: GIL held; `v` is a live object (held by `o`).
        let (refcnt, interned) = unsafe {
            (
                ffi::Py_REFCNT(v),
                ffi::PyUnicode_CheckExact(v) != 0
                    && (*(v as *mut ffi::PyASCIIObject)).interned() != 0,
            )
        };
        // CPython's w_ref: "if it has only one reference, it definitely isn't shared", except
        // interned strs, always flagged.
        if refcnt - extra as Py_ssize_t <= 1 && !interned {
            return None;
        }
        Some(v as usize)
    }

    #[inline(always)]
    fn retain(&mut self, o: &PyObj<'py>) {
        // SAFETY: GIL held; `o` is alive; from_borrowed_ptr takes a new reference (CPython's
        // w_ref holds one on every recorded object too).
        self.keep
            .push(unsafe { Bound::from_borrowed_ptr(self.py, o.as_ptr()) });
    }

    /// One `PyDict_Next` per entry (CPython's `w_object` does the same); key and value are
    /// borrowed, as in CPython.
    #[inline(always)]
    fn dict_item(
        &mut self,
        o: &PyObj<'py>,
        cursor: &mut usize,
    ) -> Result<Option<((PyObj<'py>, u32), (PyObj<'py>, u32))>, Fail> {
        let v = o.as_ptr();
        let e = o.kids_extra;
        let mut pos = *cursor as Py_ssize_t;
        let mut k: *mut ffi::PyObject = std::ptr::null_mut();
        let mut x: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: GIL held; `v` is a live dict (the encoder only asks dicts for entries);
        // PyDict_Next checks `pos` against the dict's current size and yields borrowed
        // references, alive while the dict holds them (no code runs before they are written,
        // or they are promoted first).
        if unsafe { ffi::PyDict_Next(v, &mut pos, &mut k, &mut x) } == 0 {
            return Ok(None);
        }
        *cursor = pos as usize;
        match (PyObj::borrowed(k, 0), PyObj::borrowed(x, 0)) {
            (Some(k), Some(x)) => Ok(Some(((k, e), (x, e)))),
            _ => Ok(None),
        }
    }

    #[inline(always)]
    fn child(
        &mut self,
        o: &PyObj<'py>,
        cursor: &mut usize,
    ) -> Result<Option<(PyObj<'py>, u32)>, Fail> {
        let v = o.as_ptr();
        let e = o.kids_extra;
        let i = *cursor as Py_ssize_t;
        // SAFETY: (whole block) GIL held; `v` is alive (see `PyObj`); every index is checked
        // against the container's CURRENT size (a list changed by Python code run after an
        // escape can never hand out a dangling pointer), and the item is alive while the
        // container holds it (no code runs before it is written, or it is promoted first).
        let item = unsafe {
            let tp = ffi::Py_TYPE(v);
            let (items, n) = if tp == &raw mut ffi::PyTuple_Type {
                (
                    (*(v as *mut ffi::PyTupleObject)).ob_item.as_ptr(),
                    ffi::PyTuple_GET_SIZE(v),
                )
            } else if tp == &raw mut ffi::PyList_Type {
                (
                    (*(v as *mut ffi::PyListObject)).ob_item as *const *mut ffi::PyObject,
                    ffi::PyList_GET_SIZE(v),
                )
            } else {
                return Ok(None);
            };
            *cursor += 1;
            if i >= n {
                return Ok(None);
            }
            // The next item's header is read right after this one is written: start loading
            // it now (a first touch of each object is a cache miss CPython's recursion hides).
            if i + 1 < n {
                prefetch(*items.add(i as usize + 1));
            }
            *items.add(i as usize)
        };
        Ok(PyObj::borrowed(item, 0).map(|x| (x, e)))
    }

    /// The code object `node` just described from the struct (the encoder asks right after).
    #[inline(always)]
    fn code_by_field(&mut self, o: &PyObj<'py>) -> bool {
        std::mem::replace(&mut self.fast_code, std::ptr::null_mut()) == o.as_ptr()
    }

    /// The fields of a code object `code_by_field` accepted, one at a time (see
    /// [`crate::marshal_code::code_fields`]).
    #[inline(always)]
    fn code_field(&mut self, o: &PyObj<'py>, i: usize) -> Result<Option<(PyObj<'py>, u32)>, Fail> {
        let co = o.as_ptr();
        if i == 0 {
            let code = crate::marshal_code::co_code(&o.bound(self.py))?;
            return Ok(Some((self.obj(code), 0)));
        }
        // Borrowed: alive while the code object is (its fields never change), which its
        // container or the stack holds; promoted like any pending handle before an escape.
        // (`None`, which `code_fields` ruled out, is the encoder's "unmarshallable object".)
        Ok(crate::marshal_code::code_field_ptr(co, i)
            .and_then(|p| PyObj::borrowed(p, 0))
            .map(|x| (x, 0)))
    }

    fn children(&mut self, o: &PyObj<'py>, out: &mut Vec<(PyObj<'py>, u32)>) -> Result<(), Fail> {
        let v = o.bound(self.py);
        if is_code(&v) {
            // The common case (a module's code objects) first.
            return self.code_children_public(&v, out);
        }
        if let Ok(s) = v.cast::<PySet>() {
            for x in s.iter() {
                let x = self.obj(x);
                out.push((x, 1));
            }
        } else if let Ok(s) = v.cast::<PyFrozenSet>() {
            for x in s.iter() {
                let x = self.obj(x);
                out.push((x, 1));
            }
        } else if let Ok(s) = v.cast::<pyo3::types::PySlice>() {
            let py = self.py;
            for name in [
                pyo3::intern!(py, "start"),
                pyo3::intern!(py, "stop"),
                pyo3::intern!(py, "step"),
            ] {
                out.push((self.obj(s.getattr(name)?), 1));
            }
        }
        Ok(())
    }

    fn set_item_extra(&self, held: u32, standalone: bool) -> u32 {
        if standalone {
            held.saturating_sub(SET_STANDALONE_HELD)
        } else {
            held.saturating_sub(1)
        }
    }
}

fn is_code(v: &Bound<'_, PyAny>) -> bool {
    // SAFETY: GIL held; a type check on a live object.
    unsafe { ffi::PyCode_Check(v.as_ptr()) != 0 }
}

impl<'py> PySource<'py> {
    /// A code object's fields through the public attributes only (see [`Unit`]), when the
    /// struct's layout is not verified (`code_by_field` declines it).
    fn code_children_public(
        &mut self,
        co: &Bound<'py, PyAny>,
        out: &mut Vec<(PyObj<'py>, u32)>,
    ) -> Result<(), Fail> {
        if self.unit.is_none() {
            self.unit = Some(scan_unit(co)?);
        }
        use crate::marshal_code::code_obj;
        let code = crate::marshal_code::co_code(co)?;
        let filename = code_obj(co, 8)?;
        let name = code_obj(co, 9)?;
        let qualname = code_obj(co, 10)?;
        let linetable = code_obj(co, 11)?;
        let exctable = code_obj(co, 12)?;
        let ([lnames, lkinds, names, consts], resolved) = match self
            .unit
            .as_mut()
            .and_then(|u| u.rebuilt.remove(&(co.as_ptr() as usize)))
        {
            Some(scanned) => (scanned, true),
            None => {
                let (a, b) = crate::marshal_code::localsplus(co)?;
                let names = code_obj(co, 7)?;
                let consts = code_obj(co, 6)?;
                ([a.into_any(), b.into_any(), names, consts], false)
            }
        };
        let lnames = self.stand_in(lnames, resolved)?;
        out.push((self.obj(code), 0));
        out.push((self.obj(consts), 1));
        out.push((self.obj(names), 1));
        out.push(lnames);
        out.push((self.obj(lkinds), 0));
        for x in [filename, name, qualname, linetable, exctable] {
            out.push((self.obj(x), 1));
        }
        Ok(())
    }

    /// The object CPython's code object holds as `co_localsplusnames` for the value `lnames`,
    /// with its `extra` (see [`Unit`]); `resolved`: `lnames` is already the stand-in.
    fn stand_in(
        &mut self,
        lnames: Bound<'py, PyAny>,
        resolved: bool,
    ) -> Result<(PyObj<'py>, u32), Fail> {
        let Some(unit) = self.unit.as_mut() else {
            return Ok((self.obj(lnames), 0));
        };
        if lnames.len()? == 0 {
            // The empty tuple is a singleton everywhere.
            return Ok((self.obj(lnames), 0));
        }
        let rep = if resolved {
            lnames
        } else {
            unit.resolve(lnames)?
        };
        if !unit.synthetic.contains(&(rep.as_ptr() as usize)) {
            // The real tuple of equal value: it IS the code object's, reference count included.
            return Ok((self.own(rep, 0), 1));
        }
        let uses = unit
            .uses
            .get(&(rep.as_ptr() as usize))
            .copied()
            .unwrap_or(1);
        // SAFETY: GIL held; `rep` is a live object.
        let refcnt = unsafe { ffi::Py_REFCNT(rep.as_ptr()) }.max(1) as u32;
        // Flagged exactly when CPython's shared tuple has more than one holder; `+ 1` for the
        // handle pushed below. The names inside are held by it and by the real (hidden) tuple.
        let extra = if uses >= 2 { 0 } else { refcnt };
        Ok((self.own(rep, 1), extra))
    }
}

/// Scans the code objects reachable from `root` through `co_consts`: the real tuples of str
/// (names, constants) by value, and how many code objects have each `co_localsplusnames` value.
fn scan_unit<'py>(root: &Bound<'py, PyAny>) -> PyResult<Unit<'py>> {
    let py = root.py();
    let reps = PyDict::new(py);
    let mut rebuilt: IdMap<Scanned<'py>> = IdMap::default();
    let mut order = Vec::new();
    let mut stack = vec![root.clone()];
    // Code objects met (tuples of constants are trees: they are walked again if shared).
    let mut seen = IdSet::default();
    // Tuples of str in the order met, and the lengths of the local-name tuples.
    let mut cands: Vec<Bound<'py, PyAny>> = Vec::new();
    let mut lens: Vec<bool> = Vec::new();
    // Only containers that can hold code objects or tuples of str are walked.
    let walkable = |x: &Bound<'py, PyAny>| {
        let tp = x.get_type_ptr();
        // SAFETY: GIL held; comparing a live object's type pointer with the static types.
        unsafe {
            tp == &raw mut ffi::PyTuple_Type
                || tp == &raw mut ffi::PyFrozenSet_Type
                || ffi::PyCode_Check(x.as_ptr()) != 0
        }
    };
    while let Some(o) = stack.pop() {
        if is_code(&o) {
            if !seen.insert(o.as_ptr() as usize) {
                continue;
            }
            let names = crate::marshal_code::code_obj(&o, 7)?;
            if let Ok(t) = names.cast::<pyo3::types::PyTuple>() {
                if !t.is_empty() && t.iter().all(|x| x.is_exact_instance_of::<PyString>()) {
                    cands.push(names.clone());
                }
            }
            let (ln, lk) = crate::marshal_code::localsplus(&o)?;
            let n = ln.len();
            if n > 0 {
                if lens.len() <= n {
                    lens.resize(n + 1, false);
                }
                lens[n] = true;
            }
            order.push(o.as_ptr() as usize);
            let consts = crate::marshal_code::code_obj(&o, 6)?;
            stack.push(consts.clone());
            rebuilt.insert(
                o.as_ptr() as usize,
                [ln.into_any(), lk.into_any(), names, consts],
            );
        } else if let Ok(t) = o.cast::<pyo3::types::PyTuple>() {
            // One pass: is it a tuple of str (a merge candidate), and which items to walk.
            let mut all_str = !t.is_empty();
            for x in t.iter_borrowed() {
                if x.is_exact_instance_of::<PyString>() {
                    continue;
                }
                all_str = false;
                if walkable(&x) {
                    stack.push(x.to_owned());
                }
            }
            if all_str {
                cands.push(o);
            }
        } else if let Ok(f) = o.cast::<PyFrozenSet>() {
            stack.extend(f.iter().filter(|x| walkable(x)));
        }
    }
    let mut deferred = Vec::new();
    for c in cands {
        // SAFETY: GIL held; every candidate is a tuple.
        let n = unsafe { ffi::PyTuple_GET_SIZE(c.as_ptr()) } as usize;
        if lens.get(n) == Some(&true) {
            set_default(&reps, &c)?;
        } else {
            deferred.push(c.as_ptr() as usize);
        }
    }
    let mut held = IdSet::default();
    for (_, v) in reps.iter() {
        held.insert(v.as_ptr() as usize);
    }
    let mut unit = Unit {
        reps,
        uses: IdMap::default(),
        rebuilt: IdMap::default(),
        synthetic: IdSet::default(),
        held,
        lens,
        deferred,
    };
    // Now that every real tuple is known: each code object's local names resolved to their
    // stand-in once (one lookup by value per code object), and the uses counted per stand-in.
    for id in order {
        let Some(mut scanned) = rebuilt.remove(&id) else {
            continue;
        };
        if !scanned[0].is_empty()? {
            let rep = unit.resolve(scanned[0].clone())?;
            *unit.uses.entry(rep.as_ptr() as usize).or_insert(0) += 1;
            scanned[0] = rep;
        }
        unit.rebuilt.insert(id, scanned);
    }
    Ok(unit)
}

impl<'py> Unit<'py> {
    /// The object standing for the value of `lnames`: the real tuple of equal value, else the
    /// first rebuilt tuple of that value (registered as synthetic).
    fn resolve(&mut self, lnames: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if !self.deferred.is_empty() && self.lens.get(lnames.len()?) != Some(&true) {
            // A length no tuple of the unit was entered for: the rest enter now, in the order
            // met (none of their lengths has an entry yet, so the outcome is as if they had
            // entered during the scan).
            for d in std::mem::take(&mut self.deferred) {
                // SAFETY: GIL held; `d` is alive (see `deferred`); a new reference.
                let d = unsafe { Bound::from_borrowed_ptr(lnames.py(), d as *mut ffi::PyObject) };
                let r = set_default(&self.reps, &d)?;
                if r.is(&d) {
                    self.held.insert(d.as_ptr() as usize);
                }
            }
        }
        let rep = set_default(&self.reps, &lnames)?;
        if rep.is(&lnames) {
            self.synthetic.insert(lnames.as_ptr() as usize);
        }
        Ok(rep)
    }
}

/// `d.setdefault(key, key)` in one lookup: the value now stored under `key`.
fn set_default<'py>(
    d: &Bound<'py, PyDict>,
    key: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: GIL held; `d` is a dict and `key` a live object; PyDict_SetDefault returns a
    // borrowed reference (or NULL with an exception set), turned into an owned one at once.
    unsafe {
        let r = ffi::PyDict_SetDefault(d.as_ptr(), key.as_ptr(), key.as_ptr());
        if r.is_null() {
            return Err(PyErr::fetch(d.py()));
        }
        Ok(Bound::from_borrowed_ptr(d.py(), r))
    }
}

/// argcount, posonlyargcount, kwonlyargcount, stacksize, flags, firstlineno.
fn code_ints(co: &Bound<'_, PyAny>) -> Result<[i32; 6], Fail> {
    let mut ints = [0i32; 6];
    for (i, slot) in ints.iter_mut().enumerate() {
        *slot = crate::marshal_code::code_int(co, i)?;
    }
    Ok(ints)
}

/// An int beyond 64 bits: sign and magnitude through the public `int` methods.
#[cold]
fn big_int<'n, O>(v: &Bound<'_, PyAny>) -> Result<Node<'n, O>, Fail> {
    let py = v.py();
    let negative = v.lt(0)?;
    let a = v.abs()?;
    let nbits: usize = a.call_method0(pyo3::intern!(py, "bit_length"))?.extract()?;
    let nbytes = nbits.div_ceil(8);
    let b = a.call_method1(
        pyo3::intern!(py, "to_bytes"),
        (nbytes, pyo3::intern!(py, "little")),
    )?;
    let b = b.cast::<PyBytes>().map_err(PyErr::from)?;
    Ok(Node::BigInt {
        negative,
        magnitude_le: Cow::Owned(b.as_bytes().to_vec()),
    })
}

/// `marshal.dumps(value, version, allow_code=...)` (no audit event: the caller raises it).
pub(crate) fn dumps<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
    version: i32,
    allow_code: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let opts = DumpOptions {
        version: version.max(0) as u32,
        allow_code,
    };
    if let Some(b) = dumps_flat(py, value, opts.version)? {
        return Ok(b);
    }
    let mut src = PySource {
        py,
        keep: Kept::new(py),
        unit: None,
        fast_code: std::ptr::null_mut(),
        promoted_at: None,
    };
    // The buffer of this thread's last dump, reused: no regrowing from a guess and no fresh
    // pages to fault in for repeated dumps (taken out of the slot while in use, so a dump
    // started by Python code run during this one gets its own).
    // Its whole length is scratch the encoder overwrites (kept at its grown length: no
    // zero-filling again).
    let mut out = SPARE.with(|c| c.take());
    let hint = size_hint(value);
    if out.len() < hint {
        out.resize(hint, 0);
    }
    // The root: the caller's argument, borrowed as in CPython.
    let Some(root) = PyObj::borrowed(value.as_ptr(), 0) else {
        return Err(PyValueError::new_err("unmarshallable object"));
    };
    let r = cellar_marshal::encode_reusing(&mut src, root, 0, &opts, &mut out);
    drop(src);
    let r = match r {
        Ok(n) => Ok(PyBytes::new(py, &out[..n.min(out.len())])),
        Err(Fail::Core(e)) => Err(PyValueError::new_err(e.message)),
        Err(Fail::Py(e)) => Err(e),
    };
    if out.len() <= SPARE_MAX {
        SPARE.with(|c| c.set(out));
    }
    r
}

/// A root that is one bytes or ASCII str object (case (b) of the benchmark): header and payload
/// written straight into the result, one copy as in CPython (the general path writes into a
/// buffer, then copies that into the bytes object). `None` for any other root.
fn dumps_flat<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
    version: u32,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    use cellar_marshal::write::{flat_header, Flat};
    let v = value.as_ptr();
    // SAFETY: (whole block) GIL held; `v` is alive (the caller's argument); type checks come
    // before the accessors; str and bytes are immutable and nothing runs while `data` is used.
    let (kind, data, shared) = unsafe {
        let tp = ffi::Py_TYPE(v);
        // CPython's w_ref for the root: flagged when its reference count is not 1 (the
        // argument is borrowed there as here), or an interned str.
        let many = ffi::Py_REFCNT(v) > 1;
        if tp == &raw mut ffi::PyUnicode_Type {
            if ffi::PyUnicode_IS_ASCII(v) == 0 {
                return Ok(None);
            }
            let interned = (*(v as *mut ffi::PyASCIIObject)).interned() != 0;
            let n = ffi::PyUnicode_GET_LENGTH(v).max(0) as usize;
            (
                Flat::Ascii { interned },
                std::slice::from_raw_parts(ffi::PyUnicode_1BYTE_DATA(v), n),
                many || interned,
            )
        } else if tp == &raw mut ffi::PyBytes_Type {
            let n = ffi::Py_SIZE(v).max(0) as usize;
            (
                Flat::Bytes,
                std::slice::from_raw_parts(ffi::PyBytes_AS_STRING(v) as *const u8, n),
                many,
            )
        } else {
            return Ok(None);
        }
    };
    let Some(head) = flat_header(kind, data.len(), shared, version) else {
        return Ok(None);
    };
    let total = head.len() + data.len();
    // SAFETY: GIL held; a NULL source makes an uninitialised bytes object of `total` bytes
    // (or NULL with an exception set), filled completely below before anyone can see it.
    unsafe {
        let b = ffi::PyBytes_FromStringAndSize(std::ptr::null(), total as Py_ssize_t);
        if b.is_null() {
            return Err(PyErr::fetch(py));
        }
        let dst = ffi::PyBytes_AS_STRING(b) as *mut u8;
        std::ptr::copy_nonoverlapping(head.as_ptr(), dst, head.len());
        std::ptr::copy_nonoverlapping(data.as_ptr(), dst.add(head.len()), data.len());
        Ok(Some(Bound::from_owned_ptr(py, b).cast_into_unchecked()))
    }
}

/// The UTF-8 copy CPython caches on a str that is not ASCII (made by `PyUnicode_AsUTF8` and
/// friends; only for strs without lone surrogates, so it equals the surrogatepass encoding),
/// if there is one: read, never created.
///
/// # Safety
/// GIL held; `v` is a live str that is not ASCII (its struct is at least a
/// `PyCompactUnicodeObject`); the slice lives as long as `v`.
#[inline(always)]
unsafe fn cached_utf8<'a>(v: *mut ffi::PyObject) -> Option<&'a [u8]> {
    // SAFETY: per the contract; the cache, once set, is immutable for the str's lifetime.
    unsafe {
        let c = &*(v as *const ffi::PyCompactUnicodeObject);
        if c.utf8.is_null() {
            return None;
        }
        Some(std::slice::from_raw_parts(
            c.utf8 as *const u8,
            c.utf8_length.max(0) as usize,
        ))
    }
}

/// The largest output buffer kept for reuse per thread.
const SPARE_MAX: usize = 8 << 20;

std::thread_local! {
    /// The output buffer of this thread's last `dumps` (empty while a dump runs).
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A first guess at the output size, so most dumps never grow the buffer.
fn size_hint(v: &Bound<'_, PyAny>) -> usize {
    if let Ok(s) = v.cast::<pyo3::types::PyString>() {
        // SAFETY: GIL held; `s` is a live str.
        let n = unsafe { ffi::PyUnicode_GET_LENGTH(s.as_ptr()) }.max(0) as usize;
        n.saturating_mul(if s.is_ascii_hint() { 1 } else { 3 }) + 5
    } else if let Ok(b) = v.cast::<PyBytes>() {
        b.as_bytes().len() + 5
    } else if let Ok(l) = v.cast::<PyList>() {
        l.len().saturating_mul(32) + 64
    } else if let Ok(d) = v.cast::<PyDict>() {
        d.len().saturating_mul(32) + 64
    } else if is_code(v) {
        // A module's code object: tens of KiB, written without regrowing from 256 bytes.
        16 * 1024
    } else {
        256
    }
}

trait AsciiHint {
    fn is_ascii_hint(&self) -> bool;
}

impl AsciiHint for Bound<'_, pyo3::types::PyString> {
    fn is_ascii_hint(&self) -> bool {
        // SAFETY: GIL held; `self` is a live str.
        unsafe { ffi::PyUnicode_IS_ASCII(self.as_ptr()) != 0 }
    }
}

/// Starts loading the object at `p` into the cache (a hint: any address is allowed).
#[inline(always)]
fn prefetch(p: *const ffi::PyObject) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
