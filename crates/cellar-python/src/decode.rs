//! Marshal bytes -> Python objects, straight (no intermediate tree).
//!
//! The decoder mirrors CPython 3.11's `r_object` (Python/marshal.c) rule for rule, with three
//! hardenings for hostile input:
//! - every read is bounds-checked ([`Source`]); nothing is ever indexed out of range;
//! - a container is pre-allocated only after its claimed item count has been checked against the
//!   bytes that remain (each item takes at least one byte); from a file, where the remainder is
//!   unknown, big containers grow as items actually arrive;
//! - a reference to a tuple or list that is still being filled first fills its empty slots with
//!   `None`, so no half-built object ever exposes a NULL slot (CPython can crash there).
//!
//! Nesting is limited by a strict counter (2000, CPython's `MAX_MARSHAL_STACK_DEPTH`); each level
//! costs one small Rust frame, so the limit bounds stack use.

use crate::code311;
use crate::util::{check, raise, too_short, value_error, Fail, PResult};
use pyo3::ffi::{self, PyObject, Py_ssize_t};
use std::os::raw::{c_char, c_long};
use std::sync::{Mutex, MutexGuard};

/// CPython's `MAX_MARSHAL_STACK_DEPTH`.
const MAX_DEPTH: u32 = 2000;
/// Type-code bit: remember this object for later `r` references.
const FLAG_REF: u8 = 0x80;
/// From a file (remaining size unknown), containers claiming more items than this grow
/// incrementally instead of being pre-allocated.
const FILE_PREALLOC_MAX: usize = 1 << 12;
/// CPython's code-object "kinds" bits for `co_localspluskinds`.
const CO_FAST_LOCAL: u8 = 0x20;
const CO_FAST_CELL: u8 = 0x40;
const CO_FAST_FREE: u8 = 0x80;

/// Where the decoder's bytes come from.
pub(crate) trait Source {
    /// The next byte, or `None` at the end of the input.
    fn byte(&mut self) -> PResult<Option<u8>>;
    /// Exactly `n` bytes, or `EOFError` if fewer remain.
    fn take(&mut self, n: usize) -> PResult<&[u8]>;
    /// How many bytes remain, when known (in memory); `None` for a file.
    fn remaining(&self) -> Option<usize>;
    /// The next two bytes without consuming them, when cheap (in memory); `None` otherwise.
    fn peek2(&self) -> Option<(u8, u8)>;
    /// Consume `n` bytes already seen through `peek2`.
    fn skip(&mut self, n: usize);
    /// Exactly 4 bytes (a little-endian i32).
    #[inline(always)]
    fn take4(&mut self) -> PResult<[u8; 4]> {
        let b = self.take(4)?;
        let mut w = [0u8; 4];
        w.copy_from_slice(b.get(..4).unwrap_or(&[0; 4]));
        Ok(w)
    }
}

/// An in-memory input.
struct SliceSource<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Source for SliceSource<'_> {
    #[inline(always)]
    fn byte(&mut self) -> PResult<Option<u8>> {
        match self.data.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(Some(b))
            }
            None => Ok(None),
        }
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> PResult<&[u8]> {
        let end = self.pos.saturating_add(n);
        match self.data.get(self.pos..end) {
            Some(s) => {
                self.pos = end;
                Ok(s)
            }
            // SAFETY: the decoder only runs with the GIL held.
            None => Err(unsafe { too_short() }),
        }
    }

    #[inline(always)]
    fn remaining(&self) -> Option<usize> {
        Some(self.data.len().saturating_sub(self.pos))
    }

    #[inline(always)]
    fn peek2(&self) -> Option<(u8, u8)> {
        match self.data.get(self.pos..self.pos.saturating_add(2)) {
            Some(&[a, b]) => Some((a, b)),
            _ => None,
        }
    }

    #[inline(always)]
    fn skip(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.data.len());
    }

    #[inline(always)]
    fn take4(&mut self) -> PResult<[u8; 4]> {
        let w: Option<[u8; 4]> = self
            .data
            .get(self.pos..self.pos.wrapping_add(4))
            .and_then(|s| s.try_into().ok());
        match w {
            Some(w) => {
                self.pos += 4;
                Ok(w)
            }
            // SAFETY: the decoder only runs with the GIL held.
            None => Err(unsafe { too_short() }),
        }
    }
}

/// A binary file read through `file.readinto(buffer)`, exactly as many bytes as each step needs.
struct FileSource {
    file: *mut PyObject,
    readinto: *mut PyObject,
    buf: Vec<u8>,
}

impl FileSource {
    /// Read exactly `want` bytes into `self.buf[start..]`. Returns how many arrived (fewer only at
    /// end of file, when `eof_ok`).
    ///
    /// # Safety
    /// GIL held; `self.file` and `self.readinto` are live.
    unsafe fn fill(&mut self, start: usize, want: usize, eof_ok: bool) -> PResult<usize> {
        let ba = check(ffi::PyByteArray_FromStringAndSize(
            std::ptr::null(),
            want as Py_ssize_t,
        ))?;
        let args = [self.file, ba];
        let res = ffi::PyObject_VectorcallMethod(
            self.readinto,
            args.as_ptr(),
            2 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
            std::ptr::null_mut(),
        );
        if res.is_null() {
            ffi::Py_DECREF(ba);
            return Err(Fail);
        }
        let got = ffi::PyNumber_AsSsize_t(res, ffi::PyExc_ValueError);
        ffi::Py_DECREF(res);
        if got == -1 && !ffi::PyErr_Occurred().is_null() {
            ffi::Py_DECREF(ba);
            return Err(Fail);
        }
        if got < 0 || got as usize > want {
            ffi::Py_DECREF(ba);
            let msg =
                format!("read() returned too much data: {want} bytes requested, {got} returned\0");
            let msg = std::ffi::CStr::from_bytes_with_nul(msg.as_bytes())
                .unwrap_or(c"read() returned too much data");
            return Err(value_error(msg));
        }
        let got = got as usize;
        // The bytearray may have been resized by the callee; copy no more than it holds.
        let avail = (ffi::PyByteArray_Size(ba).max(0) as usize).min(got);
        let p = ffi::PyByteArray_AsString(ba) as *const u8;
        self.buf.truncate(start);
        if avail > 0 && !p.is_null() {
            // SAFETY: `p` points at the bytearray's `avail` (<= its size) initialized bytes.
            self.buf
                .extend_from_slice(std::slice::from_raw_parts(p, avail));
        }
        ffi::Py_DECREF(ba);
        if avail < want && !eof_ok {
            return Err(raise(ffi::PyExc_EOFError, c"EOF read where not expected"));
        }
        Ok(avail)
    }
}

impl Source for FileSource {
    fn byte(&mut self) -> PResult<Option<u8>> {
        // SAFETY: GIL held by every caller of the decoder; the file is live for the call.
        let got = unsafe { self.fill(0, 1, true)? };
        Ok(if got == 1 {
            self.buf.first().copied()
        } else {
            None
        })
    }

    fn take(&mut self, n: usize) -> PResult<&[u8]> {
        self.buf.clear();
        let mut got = 0;
        while got < n {
            // Grow geometrically so memory tracks the bytes that really arrived.
            let chunk = (n - got).min(got.max(1 << 16));
            // SAFETY: as in `byte`.
            unsafe { self.fill(got, chunk, false)? };
            got += chunk;
        }
        Ok(&self.buf[..n.min(self.buf.len())])
    }

    fn remaining(&self) -> Option<usize> {
        None
    }

    fn peek2(&self) -> Option<(u8, u8)> {
        None
    }

    fn skip(&mut self, _n: usize) {}
}

/// A slot in the reference table. `obj` is a strong reference, or NULL while an immutable
/// container (frozenset, code, slice, big tuple from a file) is still being read.
#[derive(Clone, Copy)]
struct Ref {
    obj: *mut PyObject,
    /// A tuple or list that is still being filled (it may hold NULL slots).
    building: bool,
}

/// Direct-mapped cache of interned short ASCII strings, shared by every `loads` call (guarded by a
/// mutex taken with `try_lock`, so a re-entrant load simply runs without it).
struct InternCache {
    slots: Vec<(u64, *mut PyObject)>,
}

// SAFETY: the cached pointers are only touched with the GIL held (every decoder runs under it).
unsafe impl Send for InternCache {}

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

struct Decoder<'c, S: Source> {
    src: S,
    refs: Vec<Ref>,
    depth: u32,
    allow_code: bool,
    cache: Option<MutexGuard<'c, InternCache>>,
    /// See `util::stack_floor`.
    stack_floor: usize,
}

impl<S: Source> Drop for Decoder<'_, S> {
    fn drop(&mut self) {
        for r in &self.refs {
            if !r.obj.is_null() {
                // SAFETY: each non-NULL slot owns one strong reference; the GIL is held (decoders
                // live only inside the GIL-holding entry points).
                unsafe { ffi::Py_DECREF(r.obj) };
            }
        }
    }
}

#[inline(always)]
unsafe fn newref(p: *mut PyObject) -> *mut PyObject {
    ffi::Py_INCREF(p);
    p
}

/// Decode one value from an in-memory bytes-like object.
///
/// # Safety
/// GIL held; `data` is a live object.
pub(crate) unsafe fn loads(data: *mut PyObject, allow_code: bool) -> *mut PyObject {
    if ffi::PyBytes_CheckExact(data) != 0 {
        let len = ffi::Py_SIZE(data).max(0) as usize;
        // SAFETY: an exact bytes object's buffer holds `len` bytes and is immutable; `data` stays
        // alive (borrowed by the caller) for the whole decode.
        let slice = std::slice::from_raw_parts(ffi::PyBytes_AS_STRING(data) as *const u8, len);
        if !audit_loads(slice) {
            return std::ptr::null_mut();
        }
        return run(
            SliceSource {
                data: slice,
                pos: 0,
            },
            allow_code,
        );
    }
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::zeroed();
    if ffi::PyObject_GetBuffer(data, view.as_mut_ptr(), ffi::PyBUF_SIMPLE) != 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: PyObject_GetBuffer succeeded, so the view is initialized.
    let mut view = view.assume_init();
    let slice = if view.buf.is_null() || view.len <= 0 {
        &[][..]
    } else {
        // SAFETY: a PyBUF_SIMPLE view is `len` contiguous bytes, exported (so not resized) until
        // PyBuffer_Release below.
        std::slice::from_raw_parts(view.buf as *const u8, view.len as usize)
    };
    let r = if audit_loads(slice) {
        run(
            SliceSource {
                data: slice,
                pos: 0,
            },
            allow_code,
        )
    } else {
        std::ptr::null_mut()
    };
    ffi::PyBuffer_Release(&mut view);
    r
}

/// Decode one value from a binary file, reading exactly its bytes.
///
/// # Safety
/// GIL held; `file` is a live object.
pub(crate) unsafe fn load(file: *mut PyObject, allow_code: bool) -> *mut PyObject {
    let name = ffi::PyUnicode_InternFromString(c"readinto".as_ptr());
    if name.is_null() {
        return name;
    }
    let src = FileSource {
        file,
        readinto: name,
        buf: Vec::new(),
    };
    let r = run(src, allow_code);
    ffi::Py_DECREF(name);
    r
}

/// CPython's `marshal.loads` audit event, with the input bytes; false if a hook raised.
unsafe fn audit_loads(data: &[u8]) -> bool {
    crate::util::PySys_Audit(
        c"marshal.loads".as_ptr(),
        c"y#".as_ptr(),
        data.as_ptr() as *const c_char,
        data.len() as Py_ssize_t,
    ) >= 0
}

unsafe fn run<S: Source>(src: S, allow_code: bool) -> *mut PyObject {
    let cache = match INTERN_CACHE.try_lock() {
        Ok(mut g) => {
            if g.slots.is_empty() {
                g.slots = vec![(0, std::ptr::null_mut()); INTERN_SLOTS];
            }
            Some(g)
        }
        Err(_) => None,
    };
    let mut d = Decoder {
        src,
        refs: Vec::new(),
        depth: 0,
        allow_code,
        cache,
        stack_floor: crate::util::stack_floor(),
    };
    match d.r_object() {
        Ok(p) if !p.is_null() => p,
        Ok(_) => {
            raise(
                ffi::PyExc_TypeError,
                c"NULL object in marshal data for object",
            );
            std::ptr::null_mut()
        }
        Err(Fail) => std::ptr::null_mut(),
    }
}

impl<S: Source> Decoder<'_, S> {
    #[inline(always)]
    unsafe fn r_i32(&mut self) -> PResult<i32> {
        Ok(i32::from_le_bytes(self.src.take4()?))
    }

    #[inline(always)]
    unsafe fn r_byte_or_eof(&mut self) -> PResult<u8> {
        match self.src.byte()? {
            Some(b) => Ok(b),
            None => Err(raise(
                ffi::PyExc_EOFError,
                c"EOF read where object expected",
            )),
        }
    }

    /// Remember `v` if the type code carried FLAG_REF.
    #[inline(always)]
    unsafe fn reg(&mut self, flag: bool, v: *mut PyObject) {
        if flag {
            ffi::Py_INCREF(v);
            self.refs.push(Ref {
                obj: v,
                building: false,
            });
        }
    }

    /// Reserve a slot for an object that can only be registered once complete.
    #[inline(always)]
    fn reserve(&mut self, flag: bool) -> Option<usize> {
        if flag {
            self.refs.push(Ref {
                obj: std::ptr::null_mut(),
                building: false,
            });
            Some(self.refs.len() - 1)
        } else {
            None
        }
    }

    #[inline(always)]
    unsafe fn fill_reserved(&mut self, idx: Option<usize>, v: *mut PyObject) {
        if let Some(i) = idx {
            if let Some(slot) = self.refs.get_mut(i) {
                ffi::Py_INCREF(v);
                slot.obj = v;
            }
        }
    }

    /// Refuse a claimed item count that cannot fit in the remaining input (each item is at least
    /// `min_item` bytes). Returns whether pre-allocating `n` slots is safe.
    #[inline(always)]
    unsafe fn may_prealloc(&self, n: usize, min_item: usize) -> PResult<bool> {
        match self.src.remaining() {
            Some(rem) => {
                if n.saturating_mul(min_item) > rem {
                    Err(too_short())
                } else {
                    Ok(true)
                }
            }
            None => Ok(n <= FILE_PREALLOC_MAX),
        }
    }

    /// A container item: the commonest leaves (`r`, short ASCII, small int) decoded inline, the
    /// rest through `r_object`. Same depth rule: a leaf at depth 2001 still fails (slow path).
    #[inline(always)]
    unsafe fn r_item(&mut self) -> PResult<*mut PyObject> {
        if self.depth < MAX_DEPTH {
            if let Some((code, b1)) = self.src.peek2() {
                match code {
                    b'r' | 0xF2 => {
                        self.src.skip(1);
                        return self.r_ref();
                    }
                    b'z' | b'Z' | 0xFA | 0xDA => {
                        self.src.skip(2);
                        let v = self.r_ascii(b1 as usize, code & 0x7F == b'Z')?;
                        self.reg(code & FLAG_REF != 0, v);
                        return Ok(v);
                    }
                    b'i' | 0xE9 => {
                        self.src.skip(1);
                        let x = self.r_i32()?;
                        let v = check(ffi::PyLong_FromLong(x as c_long))?;
                        self.reg(code & FLAG_REF != 0, v);
                        return Ok(v);
                    }
                    _ => {}
                }
            }
        }
        self.r_object()
    }

    #[inline(always)]
    unsafe fn r_ref(&mut self) -> PResult<*mut PyObject> {
        let n = self.r_i32()?;
        let slot = if n < 0 {
            None
        } else {
            self.refs.get(n as usize).copied()
        };
        match slot {
            Some(r) if !r.obj.is_null() => {
                if r.building {
                    fill_empty_slots(r.obj);
                    self.refs[n as usize].building = false;
                }
                Ok(newref(r.obj))
            }
            _ => Err(value_error(c"bad marshal data (invalid reference)")),
        }
    }

    unsafe fn r_object(&mut self) -> PResult<*mut PyObject> {
        let code = self.r_byte_or_eof()?;
        self.depth += 1;
        if self.depth > MAX_DEPTH || crate::util::stack_here() < self.stack_floor {
            self.depth -= 1;
            return Err(value_error(c"recursion limit exceeded"));
        }
        let r = self.r_code(code);
        self.depth -= 1;
        r
    }

    unsafe fn r_code(&mut self, code: u8) -> PResult<*mut PyObject> {
        let flag = code & FLAG_REF != 0;
        match code & !FLAG_REF {
            b'0' => Ok(std::ptr::null_mut()),
            b'N' => Ok(newref(ffi::Py_None())),
            b'F' => Ok(newref(ffi::Py_False())),
            b'T' => Ok(newref(ffi::Py_True())),
            b'S' => Ok(newref(ffi::PyExc_StopIteration)),
            b'.' => Ok(newref(ffi::Py_Ellipsis())),
            b'i' => {
                let x = self.r_i32()?;
                let v = check(ffi::PyLong_FromLong(x as c_long))?;
                self.reg(flag, v);
                Ok(v)
            }
            b'I' => {
                let b = self.src.take(8)?;
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                let v = check(ffi::PyLong_FromLongLong(i64::from_le_bytes(w)))?;
                self.reg(flag, v);
                Ok(v)
            }
            b'l' => {
                let v = self.r_long()?;
                self.reg(flag, v);
                Ok(v)
            }
            b'g' => {
                let x = self.r_f64()?;
                let v = check(ffi::PyFloat_FromDouble(x))?;
                self.reg(flag, v);
                Ok(v)
            }
            b'f' => {
                let x = self.r_float_str()?;
                let v = check(ffi::PyFloat_FromDouble(x))?;
                self.reg(flag, v);
                Ok(v)
            }
            b'y' => {
                let re = self.r_f64()?;
                let im = self.r_f64()?;
                let v = check(ffi::PyComplex_FromDoubles(re, im))?;
                self.reg(flag, v);
                Ok(v)
            }
            b'x' => {
                let re = self.r_float_str()?;
                let im = self.r_float_str()?;
                let v = check(ffi::PyComplex_FromDoubles(re, im))?;
                self.reg(flag, v);
                Ok(v)
            }
            b's' => {
                let n = self.r_i32()?;
                if n < 0 {
                    return Err(value_error(
                        c"bad marshal data (bytes object size out of range)",
                    ));
                }
                let b = self.src.take(n as usize)?;
                let v = check(ffi::PyBytes_FromStringAndSize(
                    b.as_ptr() as *const c_char,
                    b.len() as Py_ssize_t,
                ))?;
                self.reg(flag, v);
                Ok(v)
            }
            t @ (b'u' | b't') => {
                let n = self.r_i32()?;
                if n < 0 {
                    return Err(value_error(c"bad marshal data (string size out of range)"));
                }
                let b = self.src.take(n as usize)?;
                let mut v = check(ffi::PyUnicode_DecodeUTF8(
                    b.as_ptr() as *const c_char,
                    b.len() as Py_ssize_t,
                    c"surrogatepass".as_ptr(),
                ))?;
                if t == b't' {
                    ffi::PyUnicode_InternInPlace(&mut v);
                }
                self.reg(flag, v);
                Ok(v)
            }
            t @ (b'a' | b'A') => {
                let n = self.r_i32()?;
                if n < 0 {
                    return Err(value_error(c"bad marshal data (string size out of range)"));
                }
                let v = self.r_ascii(n as usize, t == b'A')?;
                self.reg(flag, v);
                Ok(v)
            }
            t @ (b'z' | b'Z') => {
                let n = self.r_byte_or_eof()?;
                let v = self.r_ascii(n as usize, t == b'Z')?;
                self.reg(flag, v);
                Ok(v)
            }
            b')' => {
                let n = self.r_byte_or_eof()? as usize;
                self.r_tuple(n, flag)
            }
            b'(' => {
                let n = self.r_i32()?;
                if n < 0 {
                    return Err(value_error(c"bad marshal data (tuple size out of range)"));
                }
                self.r_tuple(n as usize, flag)
            }
            b'[' => {
                let n = self.r_i32()?;
                if n < 0 {
                    return Err(value_error(c"bad marshal data (list size out of range)"));
                }
                self.r_list(n as usize, flag)
            }
            b'{' => self.r_dict(flag),
            t @ (b'<' | b'>') => {
                let n = self.r_i32()?;
                if n < 0 {
                    return Err(value_error(c"bad marshal data (set size out of range)"));
                }
                self.r_set(n as usize, t == b'>', flag)
            }
            b'r' => self.r_ref(),
            b'c' => self.r_codeobj(flag),
            b':' => self.r_slice(flag),
            _ => Err(value_error(c"bad marshal data (unknown type code)")),
        }
    }

    #[inline(always)]
    unsafe fn r_f64(&mut self) -> PResult<f64> {
        let b = self.src.take(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(f64::from_le_bytes(w))
    }

    /// A text float (versions 0/1): 1-byte length, then ASCII parsed as CPython does.
    #[inline(never)]
    unsafe fn r_float_str(&mut self) -> PResult<f64> {
        let n = self.r_byte_or_eof()? as usize;
        let b = self.src.take(n)?;
        // CPython copies into a NUL-terminated buffer: text after an embedded NUL is ignored.
        let mut buf = [0u8; 257];
        buf[..b.len()].copy_from_slice(b);
        let x = ffi::PyOS_string_to_double(
            buf.as_ptr() as *const c_char,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        if x == -1.0 && !ffi::PyErr_Occurred().is_null() {
            return Err(Fail);
        }
        Ok(x)
    }

    /// `a`/`z` payloads: Latin-1, unchecked (CPython decodes any byte), interned if asked.
    #[inline(always)]
    unsafe fn r_ascii(&mut self, n: usize, interned: bool) -> PResult<*mut PyObject> {
        let b = self.src.take(n)?;
        if interned && n <= INTERN_MAX_LEN {
            if let Some(cache) = self.cache.as_mut() {
                let h = hash_bytes(b);
                let i = (h as usize) & (INTERN_SLOTS - 1);
                if let Some(slot) = cache.slots.get_mut(i) {
                    let (sh, sp) = *slot;
                    if !sp.is_null()
                        && sh == h
                        && ffi::PyUnicode_GET_LENGTH(sp) == n as Py_ssize_t
                        && std::slice::from_raw_parts(ffi::PyUnicode_1BYTE_DATA(sp), n) == b
                    {
                        return Ok(newref(sp));
                    }
                    let mut v = make_latin1(b)?;
                    ffi::PyUnicode_InternInPlace(&mut v);
                    if ffi::PyUnicode_IS_ASCII(v) != 0 {
                        ffi::Py_INCREF(v);
                        if !sp.is_null() {
                            ffi::Py_DECREF(sp);
                        }
                        *slot = (h, v);
                    }
                    return Ok(v);
                }
            }
        }
        let mut v = make_latin1(b)?;
        if interned {
            ffi::PyUnicode_InternInPlace(&mut v);
        }
        Ok(v)
    }

    unsafe fn r_tuple(&mut self, n: usize, flag: bool) -> PResult<*mut PyObject> {
        if !self.may_prealloc(n, 1)? {
            return self.r_tuple_incremental(n, flag);
        }
        let t = check(ffi::PyTuple_New(n as Py_ssize_t))?;
        let idx = if flag {
            ffi::Py_INCREF(t);
            self.refs.push(Ref {
                obj: t,
                building: true,
            });
            Some(self.refs.len() - 1)
        } else {
            None
        };
        for i in 0..n {
            match self.r_item() {
                Ok(item) if !item.is_null() => {
                    let old = ffi::PyTuple_GET_ITEM(t, i as Py_ssize_t);
                    if !old.is_null() {
                        ffi::Py_DECREF(old);
                    }
                    ffi::PyTuple_SET_ITEM(t, i as Py_ssize_t, item);
                }
                Ok(_) => {
                    ffi::Py_DECREF(t);
                    return Err(raise(
                        ffi::PyExc_TypeError,
                        c"NULL object in marshal data for tuple",
                    ));
                }
                Err(e) => {
                    ffi::Py_DECREF(t);
                    return Err(e);
                }
            }
        }
        if let Some(i) = idx {
            if let Some(r) = self.refs.get_mut(i) {
                r.building = false;
            }
        }
        Ok(t)
    }

    /// A tuple from a file claiming many items: collect them first (memory follows the bytes that
    /// arrive), register the tuple when complete.
    #[cold]
    unsafe fn r_tuple_incremental(&mut self, n: usize, flag: bool) -> PResult<*mut PyObject> {
        let idx = self.reserve(flag);
        let mut items: Vec<*mut PyObject> = Vec::new();
        let fail = |items: &mut Vec<*mut PyObject>| {
            for &p in items.iter() {
                ffi::Py_DECREF(p);
            }
        };
        for _ in 0..n {
            match self.r_object() {
                Ok(p) if !p.is_null() => items.push(p),
                Ok(_) => {
                    fail(&mut items);
                    return Err(raise(
                        ffi::PyExc_TypeError,
                        c"NULL object in marshal data for tuple",
                    ));
                }
                Err(e) => {
                    fail(&mut items);
                    return Err(e);
                }
            }
        }
        let t = ffi::PyTuple_New(items.len() as Py_ssize_t);
        if t.is_null() {
            fail(&mut items);
            return Err(Fail);
        }
        for (i, p) in items.into_iter().enumerate() {
            ffi::PyTuple_SET_ITEM(t, i as Py_ssize_t, p);
        }
        self.fill_reserved(idx, t);
        Ok(t)
    }

    unsafe fn r_list(&mut self, n: usize, flag: bool) -> PResult<*mut PyObject> {
        let prealloc = self.may_prealloc(n, 1)?;
        let l = check(ffi::PyList_New(if prealloc { n as Py_ssize_t } else { 0 }))?;
        let idx = if flag {
            ffi::Py_INCREF(l);
            self.refs.push(Ref {
                obj: l,
                building: prealloc,
            });
            Some(self.refs.len() - 1)
        } else {
            None
        };
        for i in 0..n {
            match self.r_item() {
                Ok(item) if !item.is_null() => {
                    if prealloc {
                        let old = ffi::PyList_GET_ITEM(l, i as Py_ssize_t);
                        if !old.is_null() {
                            ffi::Py_DECREF(old);
                        }
                        ffi::PyList_SET_ITEM(l, i as Py_ssize_t, item);
                    } else {
                        let r = ffi::PyList_Append(l, item);
                        ffi::Py_DECREF(item);
                        if r < 0 {
                            ffi::Py_DECREF(l);
                            return Err(Fail);
                        }
                    }
                }
                Ok(_) => {
                    ffi::Py_DECREF(l);
                    return Err(raise(
                        ffi::PyExc_TypeError,
                        c"NULL object in marshal data for list",
                    ));
                }
                Err(e) => {
                    ffi::Py_DECREF(l);
                    return Err(e);
                }
            }
        }
        if let Some(i) = idx {
            if let Some(r) = self.refs.get_mut(i) {
                r.building = false;
            }
        }
        Ok(l)
    }

    unsafe fn r_dict(&mut self, flag: bool) -> PResult<*mut PyObject> {
        let d = check(ffi::PyDict_New())?;
        self.reg(flag, d);
        loop {
            let k = match self.r_item() {
                Ok(k) => k,
                Err(e) => {
                    ffi::Py_DECREF(d);
                    return Err(e);
                }
            };
            if k.is_null() {
                break;
            }
            let v = match self.r_item() {
                Ok(v) => v,
                Err(e) => {
                    ffi::Py_DECREF(k);
                    ffi::Py_DECREF(d);
                    return Err(e);
                }
            };
            if v.is_null() {
                // CPython: a NULL value also ends the dict (the key is dropped).
                ffi::Py_DECREF(k);
                break;
            }
            let r = ffi::PyDict_SetItem(d, k, v);
            ffi::Py_DECREF(k);
            ffi::Py_DECREF(v);
            if r < 0 {
                ffi::Py_DECREF(d);
                return Err(Fail);
            }
        }
        Ok(d)
    }

    #[inline(never)]
    unsafe fn r_set(&mut self, n: usize, frozen: bool, flag: bool) -> PResult<*mut PyObject> {
        let (s, idx) = if frozen {
            let s = check(ffi::PyFrozenSet_New(std::ptr::null_mut()))?;
            if n == 0 {
                self.reg(flag, s);
                return Ok(s);
            }
            // Registered only once complete: a frozenset must not be seen half-built.
            (s, self.reserve(flag))
        } else {
            let s = check(ffi::PySet_New(std::ptr::null_mut()))?;
            self.reg(flag, s);
            (s, None)
        };
        for _ in 0..n {
            match self.r_item() {
                Ok(item) if !item.is_null() => {
                    let r = ffi::PySet_Add(s, item);
                    ffi::Py_DECREF(item);
                    if r < 0 {
                        ffi::Py_DECREF(s);
                        return Err(Fail);
                    }
                }
                Ok(_) => {
                    ffi::Py_DECREF(s);
                    return Err(raise(
                        ffi::PyExc_TypeError,
                        c"NULL object in marshal data for set",
                    ));
                }
                Err(e) => {
                    ffi::Py_DECREF(s);
                    return Err(e);
                }
            }
        }
        self.fill_reserved(idx, s);
        Ok(s)
    }

    /// Read `count` objects into `out` (owned references). `Ok(false)` if one was NULL (no
    /// exception set, CPython's behaviour: the NULL propagates to the enclosing container).
    #[inline(never)]
    unsafe fn r_fields(&mut self, out: &mut Vec<*mut PyObject>, count: usize) -> PResult<bool> {
        for _ in 0..count {
            let p = self.r_object()?;
            if p.is_null() {
                return Ok(false);
            }
            out.push(p);
        }
        Ok(true)
    }

    #[inline(never)]
    unsafe fn r_slice(&mut self, flag: bool) -> PResult<*mut PyObject> {
        let idx = self.reserve(flag);
        let mut f: Vec<*mut PyObject> = Vec::with_capacity(3);
        let r = self.r_fields(&mut f, 3);
        let out = match r {
            Ok(true) => {
                let s = ffi::PySlice_New(f[0], f[1], f[2]);
                if s.is_null() {
                    Err(Fail)
                } else {
                    self.fill_reserved(idx, s);
                    Ok(s)
                }
            }
            Ok(false) => Ok(std::ptr::null_mut()),
            Err(e) => Err(e),
        };
        for p in f {
            ffi::Py_DECREF(p);
        }
        out
    }

    #[inline(never)]
    unsafe fn r_codeobj(&mut self, flag: bool) -> PResult<*mut PyObject> {
        if !self.allow_code {
            return Err(value_error(c"unmarshalling code objects is disallowed"));
        }
        let idx = self.reserve(flag);
        let mut ints = [0i32; 6];
        for x in ints.iter_mut().take(5) {
            *x = self.r_i32()?;
        }
        // code, consts, names, localsplusnames, localspluskinds, filename, name, qualname,
        // (firstlineno), linetable, exceptiontable
        let mut f: Vec<*mut PyObject> = Vec::with_capacity(10);
        let out = (|| -> PResult<*mut PyObject> {
            if !self.r_fields(&mut f, 8)? {
                return Ok(std::ptr::null_mut());
            }
            ints[5] = self.r_i32()?;
            if !self.r_fields(&mut f, 2)? {
                return Ok(std::ptr::null_mut());
            }
            let co = build_code(&ints, &f)?;
            self.fill_reserved(idx, co);
            Ok(co)
        })();
        for p in f {
            ffi::Py_DECREF(p);
        }
        out
    }

    /// `l`: digit count (sign = sign of the number), then base-2**15 digits, least significant
    /// first.
    #[inline(never)]
    unsafe fn r_long(&mut self) -> PResult<*mut PyObject> {
        let n = self.r_i32()?;
        if n == 0 {
            return check(ffi::PyLong_FromLong(0));
        }
        if n == i32::MIN {
            return Err(value_error(c"bad marshal data (long size out of range)"));
        }
        let negative = n < 0;
        let size = n.unsigned_abs() as usize;
        let b = self.src.take(size * 2)?;
        let mut digits: Vec<u16> = Vec::with_capacity(size);
        for c in b.chunks_exact(2) {
            let d = u16::from_le_bytes([c[0], c[1]]);
            if d > 0x7fff {
                return Err(value_error(
                    c"bad marshal data (digit out of range in long)",
                ));
            }
            digits.push(d);
        }
        if digits.last().copied() == Some(0) {
            return Err(value_error(c"bad marshal data (unnormalized long data)"));
        }
        long_from_digits(&digits, negative)
    }
}

/// Fill the NULL slots of a half-built tuple or list with `None` (see the module docs).
unsafe fn fill_empty_slots(o: *mut PyObject) {
    if ffi::PyTuple_CheckExact(o) != 0 {
        for i in 0..ffi::PyTuple_GET_SIZE(o) {
            if ffi::PyTuple_GET_ITEM(o, i).is_null() {
                ffi::PyTuple_SET_ITEM(o, i, newref(ffi::Py_None()));
            }
        }
    } else if ffi::PyList_CheckExact(o) != 0 {
        for i in 0..ffi::PyList_GET_SIZE(o) {
            if ffi::PyList_GET_ITEM(o, i).is_null() {
                ffi::PyList_SET_ITEM(o, i, newref(ffi::Py_None()));
            }
        }
    }
}

/// A str from Latin-1 bytes (ASCII fast path: one allocation and a copy).
#[inline(always)]
unsafe fn make_latin1(b: &[u8]) -> PResult<*mut PyObject> {
    if b.is_ascii() {
        let v = check(ffi::PyUnicode_New(b.len() as Py_ssize_t, 127))?;
        // SAFETY: a fresh compact ASCII str of length len has len writable data bytes.
        std::ptr::copy_nonoverlapping(b.as_ptr(), ffi::PyUnicode_1BYTE_DATA(v), b.len());
        Ok(v)
    } else {
        check(ffi::PyUnicode_DecodeLatin1(
            b.as_ptr() as *const c_char,
            b.len() as Py_ssize_t,
            std::ptr::null(),
        ))
    }
}

/// An int from base-2**15 magnitude digits (least significant first).
unsafe fn long_from_digits(digits: &[u16], negative: bool) -> PResult<*mut PyObject> {
    if digits.len() <= 8 {
        let mut mag: u128 = 0;
        for &d in digits.iter().rev() {
            mag = (mag << 15) | u128::from(d);
        }
        if let Ok(m) = i64::try_from(mag) {
            return check(ffi::PyLong_FromLongLong(if negative { -m } else { m }));
        }
        if !negative {
            if let Ok(m) = u64::try_from(mag) {
                return check(ffi::PyLong_FromUnsignedLongLong(m));
            }
        }
    }
    // General case: little-endian magnitude bytes, then int.from_bytes(b, "little").
    let mut bytes: Vec<u8> = Vec::with_capacity(digits.len() * 15 / 8 + 2);
    let mut acc: u32 = 0;
    let mut nbits = 0;
    for &d in digits {
        acc |= u32::from(d) << nbits;
        nbits += 15;
        while nbits >= 8 {
            bytes.push(acc as u8);
            acc >>= 8;
            nbits -= 8;
        }
    }
    if nbits > 0 {
        bytes.push(acc as u8);
    }
    let b = check(ffi::PyBytes_FromStringAndSize(
        bytes.as_ptr() as *const c_char,
        bytes.len() as Py_ssize_t,
    ))?;
    let little = ffi::PyUnicode_InternFromString(c"little".as_ptr());
    let meth = ffi::PyUnicode_InternFromString(c"from_bytes".as_ptr());
    let mut v = std::ptr::null_mut();
    if !little.is_null() && !meth.is_null() {
        let int_type = (&raw mut ffi::PyLong_Type) as *mut PyObject;
        let args = [int_type, b, little];
        v = ffi::PyObject_VectorcallMethod(
            meth,
            args.as_ptr(),
            3 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
            std::ptr::null_mut(),
        );
    }
    for p in [little, meth, b] {
        if !p.is_null() {
            ffi::Py_DECREF(p);
        }
    }
    let v = check(v)?;
    if negative {
        let n = ffi::PyNumber_Negative(v);
        ffi::Py_DECREF(v);
        return check(n);
    }
    Ok(v)
}

/// Build a code object from the 3.11 marshal fields through `types.CodeType(...)`:
/// `co_varnames`, `co_cellvars` and `co_freevars` are derived from localsplusnames/kinds.
///
/// `ints` = argcount, posonlyargcount, kwonlyargcount, stacksize, flags, firstlineno;
/// `f` = code, consts, names, localsplusnames, localspluskinds, filename, name, qualname,
/// linetable, exceptiontable.
unsafe fn build_code(ints: &[i32; 6], f: &[*mut PyObject]) -> PResult<*mut PyObject> {
    if f.len() != 10 {
        return Err(value_error(c"bad marshal data (invalid code object)"));
    }
    if let Some(fast) = code311::fast() {
        // Exactly what CPython 3.11's marshal does: validate, then _PyCode_New.
        let mut con = code311::Constructor311 {
            filename: f[5],
            name: f[6],
            qualname: f[7],
            flags: ints[4],
            code: f[0],
            firstlineno: ints[5],
            linetable: f[8],
            consts: f[1],
            names: f[2],
            localsplusnames: f[3],
            localspluskinds: f[4],
            argcount: ints[0],
            posonlyargcount: ints[1],
            kwonlyargcount: ints[2],
            stacksize: ints[3],
            exceptiontable: f[9],
        };
        if (fast.validate)(&mut con) < 0 {
            return Err(Fail);
        }
        return check((fast.new)(&mut con));
    }
    let (names, kinds) = (f[3], f[4]);
    if ffi::PyTuple_CheckExact(names) == 0 || ffi::PyBytes_CheckExact(kinds) == 0 {
        return Err(raise(
            ffi::PyExc_SystemError,
            c"bad marshal data (code object localsplus fields have the wrong types)",
        ));
    }
    let n = ffi::PyTuple_GET_SIZE(names);
    if ffi::Py_SIZE(kinds) != n {
        return Err(raise(
            ffi::PyExc_SystemError,
            c"bad marshal data (code object localsplus fields differ in length)",
        ));
    }
    // SAFETY: `kinds` is an exact bytes object of length n.
    let kinds = std::slice::from_raw_parts(ffi::PyBytes_AS_STRING(kinds) as *const u8, n as usize);
    let mut groups: [Vec<*mut PyObject>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for (i, &k) in kinds.iter().enumerate() {
        let name = ffi::PyTuple_GET_ITEM(names, i as Py_ssize_t);
        if k & CO_FAST_LOCAL != 0 {
            groups[0].push(name);
        }
        if k & CO_FAST_CELL != 0 {
            groups[1].push(name);
        }
        if k & CO_FAST_FREE != 0 {
            groups[2].push(name);
        }
    }
    let mut tuples = [std::ptr::null_mut::<PyObject>(); 3];
    for (g, t) in groups.iter().zip(tuples.iter_mut()) {
        let tup = ffi::PyTuple_New(g.len() as Py_ssize_t);
        if tup.is_null() {
            for p in tuples.iter().filter(|p| !p.is_null()) {
                ffi::Py_DECREF(*p);
            }
            return Err(Fail);
        }
        for (i, &p) in g.iter().enumerate() {
            ffi::PyTuple_SET_ITEM(tup, i as Py_ssize_t, newref(p));
        }
        *t = tup;
    }
    let [varnames, cellvars, freevars] = tuples;
    let mut ints_obj = [std::ptr::null_mut::<PyObject>(); 7];
    let int_vals = [
        ints[0],
        ints[1],
        ints[2],
        ffi::PyTuple_GET_SIZE(varnames) as i32,
        ints[3],
        ints[4],
        ints[5],
    ];
    let mut ok = true;
    for (o, &v) in ints_obj.iter_mut().zip(int_vals.iter()) {
        *o = ffi::PyLong_FromLong(v as c_long);
        ok &= !o.is_null();
    }
    let mut result = std::ptr::null_mut();
    if ok {
        // code(argcount, posonlyargcount, kwonlyargcount, nlocals, stacksize, flags, codestring,
        //      constants, names, varnames, filename, name, qualname, firstlineno, linetable,
        //      exceptiontable, freevars, cellvars)
        let args = [
            ints_obj[0],
            ints_obj[1],
            ints_obj[2],
            ints_obj[3],
            ints_obj[4],
            ints_obj[5],
            f[0],
            f[1],
            f[2],
            varnames,
            f[5],
            f[6],
            f[7],
            ints_obj[6],
            f[8],
            f[9],
            freevars,
            cellvars,
        ];
        result = ffi::PyObject_Vectorcall(
            (&raw mut ffi::PyCode_Type) as *mut PyObject,
            args.as_ptr(),
            args.len(),
            std::ptr::null_mut(),
        );
    }
    for p in ints_obj.iter().chain([varnames, cellvars, freevars].iter()) {
        if !p.is_null() {
            ffi::Py_DECREF(*p);
        }
    }
    check(result)
}
