//! Small shared pieces: the "a Python exception is set" error marker, exception helpers, the few
//! CPython symbols pyo3-ffi does not declare, and a pointer-keyed hasher.

use pyo3::ffi;
use std::ffi::CStr;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::raw::c_int;

/// Marker error: a Python exception has been set (C-API convention). Carries no data so that
/// `Result<T, Fail>` stays as small as `T`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fail;

pub(crate) type PResult<T> = Result<T, Fail>;

/// Set `exc(msg)` as the current Python exception and return the marker.
///
/// # Safety
/// The GIL must be held and `exc` must be an exception type.
#[cold]
pub(crate) unsafe fn raise(exc: *mut ffi::PyObject, msg: &CStr) -> Fail {
    ffi::PyErr_SetString(exc, msg.as_ptr());
    Fail
}

/// `EOFError("marshal data too short")`, what CPython raises when a read runs off the end.
///
/// # Safety
/// The GIL must be held.
#[cold]
pub(crate) unsafe fn too_short() -> Fail {
    raise(ffi::PyExc_EOFError, c"marshal data too short")
}

/// `ValueError(msg)`.
///
/// # Safety
/// The GIL must be held.
#[cold]
pub(crate) unsafe fn value_error(msg: &CStr) -> Fail {
    raise(ffi::PyExc_ValueError, msg)
}

/// Turn a NULL-on-error pointer from the C API into a `PResult`.
#[inline(always)]
pub(crate) fn check(p: *mut ffi::PyObject) -> PResult<*mut ffi::PyObject> {
    if p.is_null() {
        Err(Fail)
    } else {
        Ok(p)
    }
}

extern "C" {
    /// Raise an auditing event (public C API since 3.8; variadic, so not declared by pyo3-ffi).
    pub(crate) fn PySys_Audit(
        event: *const std::os::raw::c_char,
        format: *const std::os::raw::c_char,
        ...
    ) -> c_int;
    /// Resize a bytes object that has exactly one reference (stable since Python 2; not declared
    /// publicly by pyo3-ffi).
    pub(crate) fn _PyBytes_Resize(
        bytes: *mut *mut ffi::PyObject,
        newsize: ffi::Py_ssize_t,
    ) -> c_int;
}

/// A fast hasher for pointer keys (multiply and fold; see `write_usize`).
#[derive(Default, Clone, Copy)]
pub(crate) struct PtrHasher(u64);

impl Hasher for PtrHasher {
    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    #[inline(always)]
    fn write_usize(&mut self, n: usize) {
        // Heap pointers are 16-byte aligned: drop the dead low bits, multiply to spread them up,
        // then fold the well-mixed high half back down (hashbrown indexes with the low bits).
        let x = (n as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 32);
    }
}

pub(crate) type PtrBuild = BuildHasherDefault<PtrHasher>;
