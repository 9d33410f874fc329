//! Fast access to CPython 3.11 code objects, the layout marshal writes.
//!
//! CPython's own marshal reads `co_localsplusnames` / `co_localspluskinds` straight from the code
//! object and builds code objects with `_PyCode_New`. Python code cannot see those fields, and going
//! through attributes and `types.CodeType(...)` costs several times more than the rest of the work
//! (measured: dumps of `_pydecimal`'s code 5x slower). So on CPython 3.11 exactly, and only after a
//! probe at import time has checked the struct layout against the public attributes of a real code
//! object, this module reads the fields directly and calls `_PyCode_Validate` + `_PyCode_New`
//! (looked up with `dlsym`, so the extension still loads where they do not exist). Everywhere else
//! the encoder and decoder use the public attributes and `types.CodeType`.

use pyo3::ffi::{self, PyObject, PyVarObject};
use pyo3::prelude::*;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::OnceLock;

/// The leading fields of `PyCodeObject` in CPython 3.11 (Include/cpython/code.h).
#[repr(C)]
pub(crate) struct Code311 {
    pub ob_base: PyVarObject,
    pub co_consts: *mut PyObject,
    pub co_names: *mut PyObject,
    pub co_exceptiontable: *mut PyObject,
    pub co_flags: c_int,
    pub co_warmup: i16,
    pub co_linearray_entry_size: i16,
    pub co_argcount: c_int,
    pub co_posonlyargcount: c_int,
    pub co_kwonlyargcount: c_int,
    pub co_stacksize: c_int,
    pub co_firstlineno: c_int,
    pub co_nlocalsplus: c_int,
    pub co_nlocals: c_int,
    pub co_nplaincellvars: c_int,
    pub co_ncellvars: c_int,
    pub co_nfreevars: c_int,
    pub co_localsplusnames: *mut PyObject,
    pub co_localspluskinds: *mut PyObject,
    pub co_filename: *mut PyObject,
    pub co_name: *mut PyObject,
    pub co_qualname: *mut PyObject,
    pub co_linetable: *mut PyObject,
}

/// `struct _PyCodeConstructor` in CPython 3.11 (Include/internal/pycore_code.h).
#[repr(C)]
pub(crate) struct Constructor311 {
    pub filename: *mut PyObject,
    pub name: *mut PyObject,
    pub qualname: *mut PyObject,
    pub flags: c_int,
    pub code: *mut PyObject,
    pub firstlineno: c_int,
    pub linetable: *mut PyObject,
    pub consts: *mut PyObject,
    pub names: *mut PyObject,
    pub localsplusnames: *mut PyObject,
    pub localspluskinds: *mut PyObject,
    pub argcount: c_int,
    pub posonlyargcount: c_int,
    pub kwonlyargcount: c_int,
    pub stacksize: c_int,
    pub exceptiontable: *mut PyObject,
}

type ValidateFn = unsafe extern "C" fn(*mut Constructor311) -> c_int;
type NewFn = unsafe extern "C" fn(*mut Constructor311) -> *mut PyObject;

/// The 3.11 fast path, when it is available and verified.
pub(crate) struct Fast {
    pub validate: ValidateFn,
    pub new: NewFn,
}

static FAST: OnceLock<Option<Fast>> = OnceLock::new();

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    /// Public since 3.11: a new reference to `co_code`.
    pub(crate) fn PyCode_GetCode(co: *mut PyObject) -> *mut PyObject;
}

#[cfg(target_os = "macos")]
const RTLD_DEFAULT: *mut c_void = -2isize as *mut c_void;
#[cfg(not(target_os = "macos"))]
const RTLD_DEFAULT: *mut c_void = std::ptr::null_mut();

/// The fast path, if `init` found it usable.
#[inline(always)]
pub(crate) fn fast() -> Option<&'static Fast> {
    FAST.get().and_then(|f| f.as_ref())
}

/// Decide once, at import time, whether the 3.11 fast path is usable.
pub(crate) fn init(py: Python<'_>) {
    let _ = FAST.get_or_init(|| probe(py).unwrap_or(None));
}

fn probe(py: Python<'_>) -> PyResult<Option<Fast>> {
    if !cfg!(unix) {
        return Ok(None);
    }
    let info = py.version_info();
    if (info.major, info.minor) != (3, 11) {
        return Ok(None);
    }
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names only looks symbols up.
    let (v, n) = unsafe {
        (
            dlsym(RTLD_DEFAULT, c"_PyCode_Validate".as_ptr()),
            dlsym(RTLD_DEFAULT, c"_PyCode_New".as_ptr()),
        )
    };
    if v.is_null() || n.is_null() {
        return Ok(None);
    }
    // SAFETY: the symbols have exactly these signatures in CPython 3.11 (checked above).
    let fast = unsafe {
        Fast {
            validate: std::mem::transmute::<*mut c_void, ValidateFn>(v),
            new: std::mem::transmute::<*mut c_void, NewFn>(n),
        }
    };
    // A code object with arguments, a cell that is an argument, a plain cell and a free variable.
    let src =
        "def f(a, b, *c, d=1, **e):\n    x = 1\n    def g():\n        return a + x\n    return g\n";
    let module =
        py.import("builtins")?
            .getattr("compile")?
            .call1((src, "<cellar-probe>", "exec"))?;
    // The module, f, and g (found among the constants).
    let mut codes = vec![module.clone()];
    let mut i = 0;
    while i < codes.len() {
        for c in codes[i].getattr("co_consts")?.try_iter()? {
            let c = c?;
            if c.is_instance_of::<pyo3::types::PyCode>() {
                codes.push(c);
            }
        }
        i += 1;
    }
    if codes.len() != 3 {
        return Ok(None);
    }
    for co in &codes {
        if !layout_matches(co)? {
            return Ok(None);
        }
        // Round trip through _PyCode_New must give an equal code object.
        // SAFETY: layout verified just above for this object; GIL held.
        let rebuilt = unsafe {
            let c = &*(co.as_ptr() as *const Code311);
            let code = PyCode_GetCode(co.as_ptr());
            if code.is_null() {
                return Err(PyErr::fetch(py));
            }
            let mut con = Constructor311 {
                filename: c.co_filename,
                name: c.co_name,
                qualname: c.co_qualname,
                flags: c.co_flags,
                code,
                firstlineno: c.co_firstlineno,
                linetable: c.co_linetable,
                consts: c.co_consts,
                names: c.co_names,
                localsplusnames: c.co_localsplusnames,
                localspluskinds: c.co_localspluskinds,
                argcount: c.co_argcount,
                posonlyargcount: c.co_posonlyargcount,
                kwonlyargcount: c.co_kwonlyargcount,
                stacksize: c.co_stacksize,
                exceptiontable: c.co_exceptiontable,
            };
            let r = if (fast.validate)(&mut con) < 0 {
                std::ptr::null_mut()
            } else {
                (fast.new)(&mut con)
            };
            ffi::Py_DECREF(code);
            Bound::from_owned_ptr_or_err(py, r)?
        };
        if !rebuilt.eq(co)? {
            return Ok(None);
        }
    }
    Ok(Some(fast))
}

/// Compare the 3.11 struct view of `co` with its public attributes.
fn layout_matches(co: &Bound<'_, PyAny>) -> PyResult<bool> {
    if !co.is_instance_of::<pyo3::types::PyCode>() {
        return Ok(false);
    }
    // SAFETY: `co` is a live code object; on 3.11 its allocation is at least this struct's size
    // (the struct is a prefix of PyCodeObject). Reads only; verified field by field below.
    let c = unsafe { &*(co.as_ptr() as *const Code311) };
    let same =
        |attr: &str, p: *mut PyObject| -> PyResult<bool> { Ok(co.getattr(attr)?.as_ptr() == p) };
    let int = |attr: &str, x: c_int| -> PyResult<bool> {
        Ok(co.getattr(attr)?.extract::<i64>()? == i64::from(x))
    };
    let ok = same("co_consts", c.co_consts)?
        && same("co_names", c.co_names)?
        && same("co_exceptiontable", c.co_exceptiontable)?
        && same("co_filename", c.co_filename)?
        && same("co_name", c.co_name)?
        && same("co_qualname", c.co_qualname)?
        && same("co_linetable", c.co_linetable)?
        && int("co_flags", c.co_flags)?
        && int("co_argcount", c.co_argcount)?
        && int("co_posonlyargcount", c.co_posonlyargcount)?
        && int("co_kwonlyargcount", c.co_kwonlyargcount)?
        && int("co_stacksize", c.co_stacksize)?
        && int("co_firstlineno", c.co_firstlineno)?
        && int("co_nlocals", c.co_nlocals)?;
    if !ok {
        return Ok(false);
    }
    // SAFETY: GIL held; pointers checked non-NULL and type-checked before use.
    unsafe {
        let names = c.co_localsplusnames;
        let kinds = c.co_localspluskinds;
        if names.is_null()
            || kinds.is_null()
            || ffi::PyTuple_CheckExact(names) == 0
            || ffi::PyBytes_CheckExact(kinds) == 0
            || ffi::PyTuple_GET_SIZE(names) != ffi::Py_SIZE(kinds)
            || ffi::PyTuple_GET_SIZE(names) != c.co_nlocalsplus as isize
        {
            return Ok(false);
        }
        // Every name must appear in co_varnames, co_cellvars or co_freevars per its kind.
        let varnames = co.getattr("co_varnames")?;
        let cellvars = co.getattr("co_cellvars")?;
        let freevars = co.getattr("co_freevars")?;
        let kb = std::slice::from_raw_parts(
            ffi::PyBytes_AS_STRING(kinds) as *const u8,
            ffi::Py_SIZE(kinds) as usize,
        );
        let (mut nv, mut nc, mut nf) = (0, 0, 0);
        for (i, &k) in kb.iter().enumerate() {
            let name = Bound::from_borrowed_ptr(co.py(), ffi::PyTuple_GET_ITEM(names, i as isize));
            if k & 0x20 != 0 {
                if !varnames.get_item(nv)?.eq(&name)? {
                    return Ok(false);
                }
                nv += 1;
            }
            if k & 0x40 != 0 {
                if !cellvars.get_item(nc)?.eq(&name)? {
                    return Ok(false);
                }
                nc += 1;
            }
            if k & 0x80 != 0 {
                if !freevars.get_item(nf)?.eq(&name)? {
                    return Ok(false);
                }
                nf += 1;
            }
        }
        Ok(nv == varnames.len()? && nc == cellvars.len()? && nf == freevars.len()?)
    }
}
