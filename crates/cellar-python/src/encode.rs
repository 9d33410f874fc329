//! Python objects -> marshal bytes, straight (no intermediate tree).
//!
//! Mirrors CPython 3.11's `w_object` (Python/marshal.c): the same type checks in the same order
//! (exact types only, then anything with the buffer protocol as bytes), the same reference rule
//! (at version >= 3, an object whose reference count is above one gets FLAG_REF the first time and
//! an `r` back-reference afterwards), sets written in the order of their items' standalone marshal
//! bytes, and slices at version 5.
//!
//! Output goes straight into a `bytes` object that is pre-sized from the value and grown in place
//! (`_PyBytes_Resize`), so the result is never copied.

use crate::code311;
use crate::util::{_PyBytes_Resize, check, raise, value_error, Fail, PResult, PtrBuild};
use pyo3::ffi::{self, PyObject, Py_ssize_t};
use std::collections::HashMap;
use std::os::raw::{c_int, c_long};

/// CPython's `MAX_MARSHAL_STACK_DEPTH`.
const MAX_DEPTH: u32 = 2000;
const FLAG_REF: u8 = 0x80;
const SIZE32_MAX: usize = 0x7FFF_FFFF;
const CO_FAST_LOCAL: u8 = 0x20;
const CO_FAST_CELL: u8 = 0x40;
const CO_FAST_FREE: u8 = 0x80;

/// Why a dump failed (mapped to CPython's messages once, at the end).
#[derive(Clone, Copy, PartialEq, Eq)]
enum WErr {
    Unmarshallable,
    TooDeep,
    CodeNotAllowed,
    /// A Python exception is already set (e.g. MemoryError).
    Set,
}

type WResult = Result<(), WErr>;

impl From<Fail> for WErr {
    fn from(_: Fail) -> Self {
        WErr::Set
    }
}

/// The growing output: a `bytes` object with exactly one reference, written through a raw cursor.
struct Out {
    obj: *mut PyObject,
    len: usize,
    cap: usize,
}

impl Out {
    unsafe fn new(cap: usize) -> PResult<Out> {
        let cap = cap.max(16);
        let obj = check(ffi::PyBytes_FromStringAndSize(
            std::ptr::null(),
            cap as Py_ssize_t,
        ))?;
        Ok(Out { obj, len: 0, cap })
    }

    #[inline(always)]
    unsafe fn reserve(&mut self, n: usize) -> PResult<()> {
        if self.cap - self.len < n {
            self.grow(n)?;
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    unsafe fn grow(&mut self, n: usize) -> PResult<()> {
        let need = self.len.checked_add(n).ok_or(Fail)?;
        let new_cap = need.max(self.cap.saturating_mul(2)).max(64);
        if _PyBytes_Resize(&mut self.obj, new_cap as Py_ssize_t) < 0 {
            // _PyBytes_Resize freed the object and set MemoryError.
            self.obj = std::ptr::null_mut();
            self.cap = 0;
            self.len = 0;
            return Err(Fail);
        }
        self.cap = new_cap;
        Ok(())
    }

    #[inline(always)]
    unsafe fn ptr(&mut self) -> *mut u8 {
        (ffi::PyBytes_AS_STRING(self.obj) as *mut u8).add(self.len)
    }

    /// Append bytes; `reserve` must have made room.
    #[inline(always)]
    unsafe fn put_unchecked(&mut self, b: &[u8]) {
        // SAFETY: caller reserved room; the source never aliases our private bytes object.
        std::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr(), b.len());
        self.len += b.len();
    }

    #[inline(always)]
    unsafe fn put(&mut self, b: &[u8]) -> PResult<()> {
        self.reserve(b.len())?;
        self.put_unchecked(b);
        Ok(())
    }

    #[inline(always)]
    unsafe fn byte(&mut self, b: u8) -> PResult<()> {
        self.reserve(1)?;
        *self.ptr() = b;
        self.len += 1;
        Ok(())
    }

    #[inline(always)]
    unsafe fn code_u32(&mut self, code: u8, x: u32) -> PResult<()> {
        self.reserve(5)?;
        let p = self.ptr();
        *p = code;
        // SAFETY: 5 bytes reserved.
        std::ptr::copy_nonoverlapping(x.to_le_bytes().as_ptr(), p.add(1), 4);
        self.len += 5;
        Ok(())
    }

    /// Shrink to the written length and hand over the bytes object.
    unsafe fn finish(mut self) -> *mut PyObject {
        if self.obj.is_null() {
            return std::ptr::null_mut();
        }
        if self.len != self.cap && _PyBytes_Resize(&mut self.obj, self.len as Py_ssize_t) < 0 {
            self.obj = std::ptr::null_mut();
            return std::ptr::null_mut();
        }
        let o = self.obj;
        self.obj = std::ptr::null_mut();
        o
    }

    /// A placeholder holding nothing (for `mem::replace`).
    fn empty() -> Out {
        Out {
            obj: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        if !self.obj.is_null() {
            // SAFETY: we own the only reference; encoders only live under the GIL.
            unsafe { ffi::Py_DECREF(self.obj) };
        }
    }
}

const CODE_ATTRS: [&std::ffi::CStr; 15] = [
    c"co_argcount",
    c"co_posonlyargcount",
    c"co_kwonlyargcount",
    c"co_stacksize",
    c"co_flags",
    c"co_code",
    c"co_consts",
    c"co_names",
    c"co_varnames",
    c"co_cellvars",
    c"co_freevars",
    c"co_filename",
    c"co_name",
    c"co_qualname",
    c"co_firstlineno",
];
const LINETABLE_ATTR: &std::ffi::CStr = c"co_linetable";
const EXCTABLE_ATTR: &std::ffi::CStr = c"co_exceptiontable";

struct Encoder {
    out: Out,
    version: i32,
    depth: u32,
    allow_code: bool,
    /// Objects given FLAG_REF so far -> their reference index (strong references, released in
    /// `Drop`). `None` below version 3.
    refs: Option<Box<Refs>>,
    /// See `util::stack_floor`.
    stack_floor: usize,
}

/// The reference table, on the heap so that an `Encoder` (one per nested set level) stays small.
struct Refs {
    map: RefMap,
    /// Direct-mapped cache in front of `map` (pointer -> index). Entries stay valid for the whole
    /// dump: every flagged object is kept alive by the table's strong reference.
    hot: [(usize, u32); HOT_SLOTS],
}

type RefMap = HashMap<usize, u32, PtrBuild>;

const HOT_SLOTS: usize = 64;

/// Largest reference table kept for reuse (clearing costs time proportional to capacity).
const SPARE_REFS_MAX: usize = 1 << 12;

std::thread_local! {
    /// One spare reference table per thread, so small dumps do not allocate one each call.
    static SPARE_REFS: std::cell::Cell<Option<Box<Refs>>> = const { std::cell::Cell::new(None) };
}

impl Drop for Encoder {
    fn drop(&mut self) {
        if let Some(mut refs) = self.refs.take() {
            for &p in refs.map.keys() {
                // SAFETY: each key holds one strong reference taken in `w_ref`; GIL held.
                unsafe { ffi::Py_DECREF(p as *mut PyObject) };
            }
            if refs.map.capacity() <= SPARE_REFS_MAX {
                refs.map.clear();
                refs.hot = [(0, 0); HOT_SLOTS];
                SPARE_REFS.with(|c| c.set(Some(refs)));
            }
        }
    }
}

/// A first guess at the output size, so most dumps never resize.
unsafe fn size_hint(v: *mut PyObject) -> usize {
    if ffi::PyUnicode_CheckExact(v) != 0 {
        let n = ffi::PyUnicode_GET_LENGTH(v).max(0) as usize;
        // The widest UTF-8 the str's kind can need, so `w_str` never has to grow the buffer.
        let k = if ffi::PyUnicode_IS_ASCII(v) != 0 {
            1
        } else {
            match ffi::PyUnicode_KIND(v) {
                1 => 2,
                2 => 3,
                _ => 4,
            }
        };
        // Type code + 4-byte length + data: exact for a long ASCII str, so `finish` need not
        // shrink (a realloc of the whole buffer) on this memory-bound path.
        n.saturating_mul(k) + 5
    } else if ffi::PyBytes_CheckExact(v) != 0 {
        ffi::Py_SIZE(v).max(0) as usize + 5
    } else if ffi::PyList_CheckExact(v) != 0 {
        (ffi::PyList_GET_SIZE(v).max(0) as usize).saturating_mul(32) + 64
    } else if ffi::PyTuple_CheckExact(v) != 0 {
        (ffi::PyTuple_GET_SIZE(v).max(0) as usize).saturating_mul(16) + 64
    } else if ffi::PyDict_CheckExact(v) != 0 {
        (ffi::PyDict_Size(v).max(0) as usize).saturating_mul(32) + 64
    } else {
        256
    }
}

/// Encode `v`; returns a new `bytes` reference or NULL with an exception set.
///
/// # Safety
/// GIL held; `v` is a live object.
pub(crate) unsafe fn dumps(v: *mut PyObject, version: i32, allow_code: bool) -> *mut PyObject {
    let mut e = match Encoder::new(size_hint(v), version, allow_code, 0) {
        Ok(e) => e,
        Err(_) => return std::ptr::null_mut(),
    };
    match e.w_object(v, 0) {
        Ok(()) => {
            let out = std::mem::replace(&mut e.out, Out::empty());
            out.finish()
        }
        Err(err) => {
            set_error(err);
            std::ptr::null_mut()
        }
    }
}

#[cold]
unsafe fn set_error(err: WErr) {
    match err {
        WErr::Unmarshallable => {
            value_error(c"unmarshallable object");
        }
        WErr::TooDeep => {
            value_error(c"object too deeply nested to marshal");
        }
        WErr::CodeNotAllowed => {
            value_error(c"marshalling code objects is disallowed");
        }
        WErr::Set => {
            if ffi::PyErr_Occurred().is_null() {
                raise(ffi::PyExc_MemoryError, c"out of memory while marshalling");
            }
        }
    }
}

impl Encoder {
    unsafe fn new(cap: usize, version: i32, allow_code: bool, depth: u32) -> PResult<Encoder> {
        Ok(Encoder {
            out: Out::new(cap)?,
            version,
            depth,
            allow_code,
            stack_floor: crate::util::stack_floor(),
            refs: if version >= 3 {
                Some(SPARE_REFS.with(|c| c.take()).unwrap_or_else(|| {
                    Box::new(Refs {
                        map: HashMap::with_capacity_and_hasher(64, PtrBuild::default()),
                        hot: [(0, 0); HOT_SLOTS],
                    })
                }))
            } else {
                None
            },
        })
    }

    /// `extra` = references to `v` held by this encoder itself (e.g. a fetched attribute), which do
    /// not count towards "shared".
    unsafe fn w_object(&mut self, v: *mut PyObject, extra: isize) -> WResult {
        self.depth += 1;
        let r = if self.depth > MAX_DEPTH || crate::util::stack_here() < self.stack_floor {
            Err(WErr::TooDeep)
        } else {
            self.w_dispatch(v, extra)
        };
        self.depth -= 1;
        r
    }

    #[inline(always)]
    unsafe fn w_dispatch(&mut self, v: *mut PyObject, extra: isize) -> WResult {
        if v == ffi::Py_None() {
            return Ok(self.out.byte(b'N')?);
        }
        if v == ffi::Py_True() {
            return Ok(self.out.byte(b'T')?);
        }
        if v == ffi::Py_False() {
            return Ok(self.out.byte(b'F')?);
        }
        if v == ffi::PyExc_StopIteration {
            return Ok(self.out.byte(b'S')?);
        }
        if v == ffi::Py_Ellipsis() {
            return Ok(self.out.byte(b'.')?);
        }
        let mut flag = 0u8;
        if let Some(refs) = self.refs.as_mut() {
            if ffi::Py_REFCNT(v) - extra > 1 {
                // Recently referenced objects first: one load and compare, no hashing.
                let slot = ((v as usize) >> 4) & (HOT_SLOTS - 1);
                if let Some(&(p, idx)) = refs.hot.get(slot) {
                    if p == v as usize {
                        self.out.code_u32(b'r', idx)?;
                        return Ok(());
                    }
                }
                let next = refs.map.len();
                match refs.map.entry(v as usize) {
                    std::collections::hash_map::Entry::Occupied(e) => {
                        let idx = *e.get();
                        if let Some(h) = refs.hot.get_mut(slot) {
                            *h = (v as usize, idx);
                        }
                        self.out.code_u32(b'r', idx)?;
                        return Ok(());
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        if next >= SIZE32_MAX {
                            return Err(WErr::Unmarshallable);
                        }
                        ffi::Py_INCREF(v);
                        e.insert(next as u32);
                        flag = FLAG_REF;
                    }
                }
            }
        }
        self.w_complex(v, flag)
    }

    unsafe fn w_complex(&mut self, v: *mut PyObject, flag: u8) -> WResult {
        let tp = ffi::Py_TYPE(v);
        if tp == &raw mut ffi::PyLong_Type {
            let mut overflow: c_int = 0;
            let x = ffi::PyLong_AsLongLongAndOverflow(v, &mut overflow);
            if overflow != 0 {
                return self.w_big_long(v, flag);
            }
            if x == -1 && !ffi::PyErr_Occurred().is_null() {
                return Err(WErr::Set);
            }
            if let Ok(x32) = i32::try_from(x) {
                self.out.code_u32(b'i' | flag, x32 as u32)?;
            } else {
                self.w_long_i64(x, flag)?;
            }
            return Ok(());
        }
        if tp == &raw mut ffi::PyUnicode_Type {
            return self.w_str(v, flag);
        }
        if tp == &raw mut ffi::PyTuple_Type {
            let n = ffi::PyTuple_GET_SIZE(v) as usize;
            if self.version >= 4 && n < 256 {
                self.out.reserve(2)?;
                self.out.put_unchecked(&[b')' | flag, n as u8]);
            } else {
                self.w_size(b'(' | flag, n)?;
            }
            for i in 0..n {
                self.w_object(ffi::PyTuple_GET_ITEM(v, i as Py_ssize_t), 0)?;
            }
            return Ok(());
        }
        if tp == &raw mut ffi::PyFloat_Type {
            let x = ffi::PyFloat_AS_DOUBLE(v);
            if self.version > 1 {
                self.out.reserve(9)?;
                self.out.put_unchecked(&[b'g' | flag]);
                self.out.put_unchecked(&x.to_le_bytes());
            } else {
                self.out.byte(b'f' | flag)?;
                self.w_float_str(x)?;
            }
            return Ok(());
        }
        if tp == &raw mut ffi::PyDict_Type {
            self.out.byte(b'{' | flag)?;
            let mut pos: Py_ssize_t = 0;
            let mut k: *mut PyObject = std::ptr::null_mut();
            let mut val: *mut PyObject = std::ptr::null_mut();
            while ffi::PyDict_Next(v, &mut pos, &mut k, &mut val) != 0 {
                self.w_object(k, 0)?;
                self.w_object(val, 0)?;
            }
            self.out.byte(b'0')?;
            return Ok(());
        }
        if tp == &raw mut ffi::PyList_Type {
            let n = ffi::PyList_GET_SIZE(v) as usize;
            self.w_size(b'[' | flag, n)?;
            for i in 0..n {
                // Re-check the size: never read past the end even if the list changed.
                if i as Py_ssize_t >= ffi::PyList_GET_SIZE(v) {
                    return Err(WErr::Unmarshallable);
                }
                self.w_object(ffi::PyList_GET_ITEM(v, i as Py_ssize_t), 0)?;
            }
            return Ok(());
        }
        if tp == &raw mut ffi::PyBytes_Type {
            let n = ffi::Py_SIZE(v) as usize;
            let data = std::slice::from_raw_parts(ffi::PyBytes_AS_STRING(v) as *const u8, n);
            self.w_size(b's' | flag, n)?;
            self.out.put(data)?;
            return Ok(());
        }
        if tp == &raw mut ffi::PyComplex_Type {
            let re = ffi::PyComplex_RealAsDouble(v);
            let im = ffi::PyComplex_ImagAsDouble(v);
            if self.version > 1 {
                self.out.reserve(17)?;
                self.out.put_unchecked(&[b'y' | flag]);
                self.out.put_unchecked(&re.to_le_bytes());
                self.out.put_unchecked(&im.to_le_bytes());
            } else {
                self.out.byte(b'x' | flag)?;
                self.w_float_str(re)?;
                self.w_float_str(im)?;
            }
            return Ok(());
        }
        if tp == &raw mut ffi::PySet_Type || tp == &raw mut ffi::PyFrozenSet_Type {
            return self.w_set(v, flag, tp == &raw mut ffi::PyFrozenSet_Type);
        }
        if ffi::PyCode_Check(v) != 0 {
            return self.w_code(v, flag);
        }
        if tp == &raw mut ffi::PySlice_Type {
            if self.version < 5 {
                self.out.byte(b'?')?;
                return Err(WErr::Unmarshallable);
            }
            let s = v as *mut ffi::PySliceObject;
            self.out.byte(b':' | flag)?;
            self.w_object((*s).start, 0)?;
            self.w_object((*s).stop, 0)?;
            self.w_object((*s).step, 0)?;
            return Ok(());
        }
        if ffi::PyObject_CheckBuffer(v) != 0 {
            let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::zeroed();
            if ffi::PyObject_GetBuffer(v, view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
                ffi::PyErr_Clear();
                return Err(WErr::Unmarshallable);
            }
            // SAFETY: GetBuffer succeeded.
            let mut view = view.assume_init();
            let n = view.len.max(0) as usize;
            let r = (|| -> WResult {
                self.w_size(b's' | flag, n)?;
                if n > 0 && !view.buf.is_null() {
                    // SAFETY: a simple view is `len` contiguous readable bytes until released.
                    self.out
                        .put(std::slice::from_raw_parts(view.buf as *const u8, n))?;
                }
                Ok(())
            })();
            ffi::PyBuffer_Release(&mut view);
            return r;
        }
        self.out.byte(b'?')?;
        Err(WErr::Unmarshallable)
    }

    #[inline(always)]
    unsafe fn w_size(&mut self, code: u8, n: usize) -> WResult {
        if n > SIZE32_MAX {
            return Err(WErr::Unmarshallable);
        }
        self.out.code_u32(code, n as u32)?;
        Ok(())
    }

    /// Text float (versions 0/1): 1-byte length + repr with 17 significant digits.
    #[inline(never)]
    unsafe fn w_float_str(&mut self, x: f64) -> WResult {
        let p = ffi::PyOS_double_to_string(x, b'g' as _, 17, 0, std::ptr::null_mut());
        if p.is_null() {
            return Err(WErr::Set);
        }
        let s = std::ffi::CStr::from_ptr(p).to_bytes();
        let n = s.len().min(255);
        let r = self.out.byte(n as u8).and_then(|_| self.out.put(&s[..n]));
        ffi::PyMem_Free(p as *mut _);
        Ok(r?)
    }

    /// `l` for an int that fits in i64 but not i32.
    #[inline(never)]
    unsafe fn w_long_i64(&mut self, x: i64, flag: u8) -> PResult<()> {
        let mut mag = x.unsigned_abs();
        let mut digits = [0u16; 5];
        let mut n = 0;
        while mag != 0 {
            digits[n] = (mag & 0x7fff) as u16;
            mag >>= 15;
            n += 1;
        }
        let count = if x < 0 { -(n as i32) } else { n as i32 };
        self.out.code_u32(b'l' | flag, count as u32)?;
        self.out.reserve(n * 2)?;
        for d in &digits[..n] {
            self.out.put_unchecked(&d.to_le_bytes());
        }
        Ok(())
    }

    /// `l` for an int beyond i64: magnitude bytes via `abs(v).to_bytes(n, "little")`.
    #[cold]
    #[inline(never)]
    unsafe fn w_big_long(&mut self, v: *mut PyObject, flag: u8) -> WResult {
        let negative = ffi::PyObject_RichCompareBool(v, zero()?, ffi::Py_LT);
        if negative < 0 {
            return Err(WErr::Set);
        }
        let a = check(ffi::PyNumber_Absolute(v))?;
        let bits = call_method0(a, c"bit_length");
        let nbits = match bits {
            Ok(b) => {
                let n = ffi::PyLong_AsSsize_t(b);
                ffi::Py_DECREF(b);
                n
            }
            Err(_) => -1,
        };
        if nbits < 0 {
            ffi::Py_DECREF(a);
            return Err(WErr::Set);
        }
        let nbytes = (nbits as usize).div_ceil(8);
        let bytes = to_bytes_little(a, nbytes);
        ffi::Py_DECREF(a);
        let bytes = bytes?;
        let data = std::slice::from_raw_parts(ffi::PyBytes_AS_STRING(bytes) as *const u8, nbytes);
        let ndigits = (nbits as usize).div_ceil(15);
        if ndigits > SIZE32_MAX {
            ffi::Py_DECREF(bytes);
            return Err(WErr::Unmarshallable);
        }
        let count = if negative == 1 {
            -(ndigits as i64)
        } else {
            ndigits as i64
        };
        let r = (|| -> PResult<()> {
            self.out.code_u32(b'l' | flag, count as i32 as u32)?;
            self.out.reserve(ndigits * 2)?;
            let mut acc: u32 = 0;
            let mut have = 0u32;
            let mut it = data.iter();
            for _ in 0..ndigits {
                while have < 15 {
                    acc |= u32::from(it.next().copied().unwrap_or(0)) << have;
                    have += 8;
                }
                let d = (acc & 0x7fff) as u16;
                acc >>= 15;
                have -= 15;
                self.out.put_unchecked(&d.to_le_bytes());
            }
            Ok(())
        })();
        ffi::Py_DECREF(bytes);
        Ok(r?)
    }

    unsafe fn w_str(&mut self, v: *mut PyObject, flag: u8) -> WResult {
        let n = ffi::PyUnicode_GET_LENGTH(v) as usize;
        let interned = (*(v as *mut ffi::PyASCIIObject)).interned() != 0;
        if ffi::PyUnicode_IS_ASCII(v) != 0 {
            let data = std::slice::from_raw_parts(ffi::PyUnicode_1BYTE_DATA(v), n);
            if self.version >= 4 {
                if n < 256 {
                    let code = if interned { b'Z' } else { b'z' };
                    self.out.reserve(2 + n)?;
                    self.out.put_unchecked(&[code | flag, n as u8]);
                    self.out.put_unchecked(data);
                } else {
                    let code = if interned { b'A' } else { b'a' };
                    self.w_size(code | flag, n)?;
                    self.out.put(data)?;
                }
                return Ok(());
            }
            let code = if self.version >= 3 && interned {
                b't'
            } else {
                b'u'
            };
            self.w_size(code | flag, n)?;
            self.out.put(data)?;
            return Ok(());
        }
        let code = if self.version >= 3 && interned {
            b't'
        } else {
            b'u'
        };
        // UTF-8 with surrogatepass, encoded straight into the output; length patched after.
        let kind = ffi::PyUnicode_KIND(v);
        let per = match kind {
            1 => 2,
            2 => 3,
            _ => 4,
        };
        let max = n.saturating_mul(per);
        self.out.reserve(5usize.saturating_add(max))?;
        let start = self.out.len;
        self.out.put_unchecked(&[code | flag, 0, 0, 0, 0]);
        let base = ffi::PyBytes_AS_STRING(self.out.obj) as *mut u8;
        let mut w = self.out.len;
        let data = ffi::PyUnicode_DATA(v);
        // SAFETY (all three arms): `data` holds `n` code units of the str's kind, and `max` bytes
        // after `w` were reserved, enough for the widest encoding of every code unit.
        match kind {
            1 => {
                let s = std::slice::from_raw_parts(data as *const u8, n);
                // Blocks of 8: an all-ASCII block is copied as is, others char by char.
                let mut blocks = s.chunks_exact(8);
                for block in &mut blocks {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(block);
                    if u64::from_ne_bytes(b) & 0x8080_8080_8080_8080 == 0 {
                        std::ptr::copy_nonoverlapping(b.as_ptr(), base.add(w), 8);
                        w += 8;
                    } else {
                        for &c in block {
                            w += put_utf8(base.add(w), u32::from(c));
                        }
                    }
                }
                for &c in blocks.remainder() {
                    w += put_utf8(base.add(w), u32::from(c));
                }
            }
            2 => {
                let s = std::slice::from_raw_parts(data as *const u16, n);
                // Blocks of 4: an all-ASCII block is narrowed at once, others char by char.
                let mut blocks = s.chunks_exact(4);
                for block in &mut blocks {
                    if let &[a, b, c, d] = block {
                        if (a | b | c | d) < 0x80 {
                            let out = [a as u8, b as u8, c as u8, d as u8];
                            std::ptr::copy_nonoverlapping(out.as_ptr(), base.add(w), 4);
                            w += 4;
                            continue;
                        }
                    }
                    for &c in block {
                        w += put_utf8(base.add(w), u32::from(c));
                    }
                }
                for &c in blocks.remainder() {
                    w += put_utf8(base.add(w), u32::from(c));
                }
            }
            _ => {
                let s = std::slice::from_raw_parts(data as *const u32, n);
                for &c in s {
                    w += put_utf8(base.add(w), c);
                }
            }
        }
        let nbytes = w - start - 5;
        if nbytes > SIZE32_MAX {
            return Err(WErr::Unmarshallable);
        }
        // SAFETY: bytes start+1..start+5 were written above as the length placeholder.
        std::ptr::copy_nonoverlapping(
            (nbytes as u32).to_le_bytes().as_ptr(),
            base.add(start + 1),
            4,
        );
        self.out.len = w;
        Ok(())
    }

    #[inline(never)]
    unsafe fn w_set(&mut self, v: *mut PyObject, flag: u8, frozen: bool) -> WResult {
        let n = ffi::PySet_Size(v);
        if n < 0 {
            return Err(WErr::Set);
        }
        self.w_size(if frozen { b'>' } else { b'<' } | flag, n as usize)?;
        // Deterministic order (CPython 3.11+): sorted by each item's standalone marshal bytes.
        let it = check(ffi::PyObject_GetIter(v))?;
        // (standalone dump as a bytes object, item): both owned references.
        let mut items: Vec<(*mut PyObject, *mut PyObject)> = Vec::with_capacity(n as usize);
        let mut result: WResult = Ok(());
        loop {
            let item = ffi::PyIter_Next(it);
            if item.is_null() {
                if !ffi::PyErr_Occurred().is_null() {
                    result = Err(WErr::Set);
                }
                break;
            }
            if n <= 1 {
                // A single item needs no ordering: skip its standalone dump (which, for nested
                // one-item sets, would cost time exponential in the depth).
                items.push((std::ptr::null_mut(), item));
                continue;
            }
            // Sub-encoders inherit the depth so nested sets still bound the Rust stack, and live
            // on the heap so each nesting level costs only a small stack frame.
            let mut sub =
                match Encoder::new(size_hint(item), self.version, self.allow_code, self.depth)
                    .map(Box::new)
                {
                    Ok(s) => s,
                    Err(_) => {
                        ffi::Py_DECREF(item);
                        result = Err(WErr::Set);
                        break;
                    }
                };
            // The iterator's reference to `item` is ours, not the caller's.
            if let Err(e) = sub.w_object(item, 1) {
                ffi::Py_DECREF(item);
                result = Err(e);
                break;
            }
            let out = std::mem::replace(&mut sub.out, Out::empty());
            let b = out.finish();
            if b.is_null() {
                ffi::Py_DECREF(item);
                result = Err(WErr::Set);
                break;
            }
            items.push((b, item));
        }
        ffi::Py_DECREF(it);
        if result.is_ok() {
            // SAFETY: every first element is a live bytes object.
            if items.len() > 1 {
                items.sort_by(|a, b| bytes_slice(a.0).cmp(bytes_slice(b.0)));
            }
            for &(_, item) in &items {
                result = self.w_object(item, 1);
                if result.is_err() {
                    break;
                }
            }
        }
        for (b, item) in items {
            if !b.is_null() {
                ffi::Py_DECREF(b);
            }
            ffi::Py_DECREF(item);
        }
        result
    }

    #[inline(never)]
    unsafe fn w_code(&mut self, v: *mut PyObject, flag: u8) -> WResult {
        if !self.allow_code {
            return Err(WErr::CodeNotAllowed);
        }
        if code311::fast().is_some() {
            return self.w_code311(v, flag);
        }
        let mut a: Vec<*mut PyObject> = Vec::with_capacity(17);
        let r = (|| -> WResult {
            for name in CODE_ATTRS
                .iter()
                .chain([LINETABLE_ATTR, EXCTABLE_ATTR].iter())
            {
                a.push(check(ffi::PyObject_GetAttrString(v, name.as_ptr()))?);
            }
            // a: 0 argcount 1 posonly 2 kwonly 3 stacksize 4 flags 5 code 6 consts 7 names
            //    8 varnames 9 cellvars 10 freevars 11 filename 12 name 13 qualname 14 firstlineno
            //    15 linetable 16 exceptiontable
            let mut ints = [0i32; 6];
            for (slot, &i) in ints.iter_mut().zip([0usize, 1, 2, 3, 4, 14].iter()) {
                let x = ffi::PyLong_AsLong(a[i]);
                if x == -1 && !ffi::PyErr_Occurred().is_null() {
                    return Err(WErr::Set);
                }
                *slot = x as i32;
            }
            let (lnames, lkinds) = localsplus(a[8], a[9], a[10])?;
            let r = (|| -> WResult {
                self.out.reserve(21)?;
                self.out.put_unchecked(&[b'c' | flag]);
                for x in &ints[..5] {
                    self.out.put_unchecked(&x.to_le_bytes());
                }
                self.w_object(a[5], 1)?;
                self.w_object(a[6], 1)?;
                self.w_object(a[7], 1)?;
                self.w_object(lnames, 1)?;
                self.w_object(lkinds, 1)?;
                self.w_object(a[11], 1)?;
                self.w_object(a[12], 1)?;
                self.w_object(a[13], 1)?;
                self.out.put(&ints[5].to_le_bytes())?;
                self.w_object(a[15], 1)?;
                self.w_object(a[16], 1)?;
                Ok(())
            })();
            ffi::Py_DECREF(lnames);
            ffi::Py_DECREF(lkinds);
            r
        })();
        for p in a {
            ffi::Py_DECREF(p);
        }
        r
    }
}

impl Encoder {
    /// CPython 3.11 layout, read straight from the (verified) struct, as CPython's marshal does.
    #[inline(never)]
    unsafe fn w_code311(&mut self, v: *mut PyObject, flag: u8) -> WResult {
        // SAFETY: `code311::fast()` is only set after the struct layout was verified on this
        // interpreter, and `v` is a code object.
        let c = &*(v as *const code311::Code311);
        let code = check(code311::PyCode_GetCode(v))?;
        let r = (|| -> WResult {
            self.out.reserve(21)?;
            self.out.put_unchecked(&[b'c' | flag]);
            for x in [
                c.co_argcount,
                c.co_posonlyargcount,
                c.co_kwonlyargcount,
                c.co_stacksize,
                c.co_flags,
            ] {
                self.out.put_unchecked(&x.to_le_bytes());
            }
            self.w_object(code, 1)?;
            self.w_object(c.co_consts, 0)?;
            self.w_object(c.co_names, 0)?;
            self.w_object(c.co_localsplusnames, 0)?;
            self.w_object(c.co_localspluskinds, 0)?;
            self.w_object(c.co_filename, 0)?;
            self.w_object(c.co_name, 0)?;
            self.w_object(c.co_qualname, 0)?;
            self.out.put(&c.co_firstlineno.to_le_bytes())?;
            self.w_object(c.co_linetable, 0)?;
            self.w_object(c.co_exceptiontable, 0)?;
            Ok(())
        })();
        ffi::Py_DECREF(code);
        r
    }
}

/// Rebuild 3.11's `co_localsplusnames` / `co_localspluskinds` from the public attributes, the way
/// `types.CodeType()` does: locals first (a local that is also a cell is marked LOCAL|CELL in
/// place), then the remaining cells, then the free variables.
unsafe fn localsplus(
    varnames: *mut PyObject,
    cellvars: *mut PyObject,
    freevars: *mut PyObject,
) -> PResult<(*mut PyObject, *mut PyObject)> {
    for t in [varnames, cellvars, freevars] {
        if ffi::PyTuple_Check(t) == 0 {
            return Err(raise(
                ffi::PyExc_TypeError,
                c"code object name fields must be tuples",
            ));
        }
    }
    let mut names: Vec<*mut PyObject> = Vec::new();
    let mut kinds: Vec<u8> = Vec::new();
    for i in 0..ffi::PyTuple_GET_SIZE(varnames) {
        names.push(ffi::PyTuple_GET_ITEM(varnames, i));
        kinds.push(CO_FAST_LOCAL);
    }
    let nlocals = names.len();
    for i in 0..ffi::PyTuple_GET_SIZE(cellvars) {
        let c = ffi::PyTuple_GET_ITEM(cellvars, i);
        let mut found = None;
        for (j, &nm) in names.iter().enumerate().take(nlocals) {
            let eq = ffi::PyObject_RichCompareBool(nm, c, ffi::Py_EQ);
            if eq < 0 {
                return Err(Fail);
            }
            if eq == 1 {
                found = Some(j);
                break;
            }
        }
        match found {
            Some(j) => kinds[j] |= CO_FAST_CELL,
            None => {
                names.push(c);
                kinds.push(CO_FAST_CELL);
            }
        }
    }
    for i in 0..ffi::PyTuple_GET_SIZE(freevars) {
        names.push(ffi::PyTuple_GET_ITEM(freevars, i));
        kinds.push(CO_FAST_FREE);
    }
    let t = check(ffi::PyTuple_New(names.len() as Py_ssize_t))?;
    for (i, &p) in names.iter().enumerate() {
        ffi::Py_INCREF(p);
        ffi::PyTuple_SET_ITEM(t, i as Py_ssize_t, p);
    }
    let k = ffi::PyBytes_FromStringAndSize(kinds.as_ptr() as *const _, kinds.len() as Py_ssize_t);
    if k.is_null() {
        ffi::Py_DECREF(t);
        return Err(Fail);
    }
    Ok((t, k))
}

/// Encode one code point as UTF-8, lone surrogates included (surrogatepass); returns its length.
///
/// # Safety
/// `p` must have room for 4 bytes (or fewer, matching the code point's encoded size).
#[inline(always)]
unsafe fn put_utf8(p: *mut u8, c: u32) -> usize {
    if c < 0x80 {
        *p = c as u8;
        1
    } else if c < 0x800 {
        *p = 0xC0 | (c >> 6) as u8;
        *p.add(1) = 0x80 | (c & 0x3F) as u8;
        2
    } else if c < 0x10000 {
        *p = 0xE0 | (c >> 12) as u8;
        *p.add(1) = 0x80 | ((c >> 6) & 0x3F) as u8;
        *p.add(2) = 0x80 | (c & 0x3F) as u8;
        3
    } else {
        *p = 0xF0 | (c >> 18) as u8;
        *p.add(1) = 0x80 | ((c >> 12) & 0x3F) as u8;
        *p.add(2) = 0x80 | ((c >> 6) & 0x3F) as u8;
        *p.add(3) = 0x80 | (c & 0x3F) as u8;
        4
    }
}

unsafe fn zero() -> PResult<*mut PyObject> {
    // Small ints are cached by CPython; the borrowed pointer stays valid.
    let z = check(ffi::PyLong_FromLong(0 as c_long))?;
    ffi::Py_DECREF(z);
    Ok(z)
}

unsafe fn call_method0(o: *mut PyObject, name: &std::ffi::CStr) -> PResult<*mut PyObject> {
    check(ffi::PyObject_CallMethod(o, name.as_ptr(), std::ptr::null()))
}

unsafe fn to_bytes_little(a: *mut PyObject, nbytes: usize) -> PResult<*mut PyObject> {
    let n = check(ffi::PyLong_FromSize_t(nbytes))?;
    let little = ffi::PyUnicode_FromString(c"little".as_ptr());
    if little.is_null() {
        ffi::Py_DECREF(n);
        return Err(Fail);
    }
    let meth = ffi::PyUnicode_FromString(c"to_bytes".as_ptr());
    let r = if meth.is_null() {
        std::ptr::null_mut()
    } else {
        let args = [a, n, little];
        let r = ffi::PyObject_VectorcallMethod(
            meth,
            args.as_ptr(),
            3 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
            std::ptr::null_mut(),
        );
        ffi::Py_DECREF(meth);
        r
    };
    ffi::Py_DECREF(n);
    ffi::Py_DECREF(little);
    check(r)
}

/// The contents of a bytes object.
///
/// # Safety
/// `b` is a live exact bytes object; the slice must not outlive it.
unsafe fn bytes_slice<'a>(b: *mut PyObject) -> &'a [u8] {
    std::slice::from_raw_parts(
        ffi::PyBytes_AS_STRING(b) as *const u8,
        ffi::Py_SIZE(b).max(0) as usize,
    )
}
