//! `cellar._cellar`: the native half of the Python package `cellar`.
//!
//! marshal: the one codec core (`cellar_marshal::{decode, encode}`, safe Rust, no PyO3) is
//! plugged into Python objects here: [`marshal_sink`] builds Python objects as the core decodes
//! (no intermediate value tree), [`marshal_source`] tells the core encoder what each Python object
//! is, [`marshal_code`] builds and reads code objects through CPython's public API. These three
//! modules are the only marshal code that touches the C API.
//!
//! The pure-Python package (`python/cellar/marshal.py`) re-exports these functions as the drop-in
//! module `cellar.marshal`.
//!
//! Safety posture: the hot paths use pyo3's raw `ffi` (measured to matter: see
//! `bench/python/marshal_bench.py`). Every function that touches raw object pointers requires the
//! GIL to be held, which the `#[pyfunction]` entry points guarantee; each `unsafe` block says why
//! it is sound. Hostile input never panics: every read is bounds-checked, nesting is limited to
//! 2000 levels by a strict counter, and allocations are bounded by the bytes actually present.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod dbm;
mod marshal_code;
mod marshal_sink;
mod marshal_source;
mod pickle;
mod pickle_dump;
mod pickle_sink;
mod shelve;
mod sqlite_py;
mod util;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The marshal format version `dumps` writes by default (CPython 3.11's `marshal.version`).
pub const DEFAULT_VERSION: i32 = 4;

/// `dumps(value, version=4, /, *, allow_code=True)`: the bytes `marshal.dump(value, f)` would write.
#[pyfunction]
#[pyo3(signature = (value, version = DEFAULT_VERSION, /, *, allow_code = true), text_signature = "(value, version=4, /, *, allow_code=True)")]
fn dumps<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
    version: i32,
    allow_code: bool,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: GIL held; the format matches the arguments (an object and a C int), as CPython's
    // own `marshal.dumps` audit event.
    if unsafe {
        util::PySys_Audit(
            c"marshal.dumps".as_ptr(),
            c"Oi".as_ptr(),
            value.as_ptr(),
            version,
        )
    } < 0
    {
        return Err(PyErr::fetch(py));
    }
    Ok(marshal_source::dumps(py, value, version, allow_code)?.into_any())
}

/// `loads(bytes, /, *, allow_code=True)`: the value encoded at the start of a bytes-like object.
/// Trailing bytes are ignored, as CPython does.
#[pyfunction]
#[pyo3(signature = (bytes, /, *, allow_code = true))]
fn loads<'py>(
    py: Python<'py>,
    bytes: &Bound<'py, PyAny>,
    allow_code: bool,
) -> PyResult<Bound<'py, PyAny>> {
    marshal_sink::loads(py, bytes, allow_code)
}

/// `dump(value, file, version=4, /, *, allow_code=True)`: write `dumps(value, version)` to `file`.
#[pyfunction]
#[pyo3(signature = (value, file, version = DEFAULT_VERSION, /, *, allow_code = true), text_signature = "(value, file, version=4, /, *, allow_code=True)")]
fn dump<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
    file: &Bound<'py, PyAny>,
    version: i32,
    allow_code: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let data = dumps(py, value, version, allow_code)?;
    file.call_method1(pyo3::intern!(py, "write"), (data,))?;
    Ok(py.None().into_bound(py))
}

/// `load(file, /, *, allow_code=True)`: read one value from a binary file, consuming exactly its
/// bytes (through `file.readinto`), so `file.tell()` points just past it afterwards.
#[pyfunction]
#[pyo3(signature = (file, /, *, allow_code = true))]
fn load<'py>(
    py: Python<'py>,
    file: &Bound<'py, PyAny>,
    allow_code: bool,
) -> PyResult<Bound<'py, PyAny>> {
    // Like CPython: a zero-length read first, so a text file is refused before anything is consumed.
    let probe = file.call_method1(pyo3::intern!(py, "read"), (0,))?;
    if !probe.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(format!(
            "file.read() returned not bytes but {}",
            probe.get_type().name()?
        )));
    }
    // SAFETY: GIL held; a NULL format means no arguments, as CPython's `marshal.load` event.
    if unsafe { util::PySys_Audit(c"marshal.load".as_ptr(), std::ptr::null()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    marshal_sink::load(py, file, allow_code)
}

/// `_marshal_code_fields(on)`: for tests, turns reading code objects' localsplus fields on or
/// off (off: the public-attribute path); returns whether this interpreter has them.
#[pyfunction]
fn _marshal_code_fields(on: bool) -> bool {
    marshal_code::set_localsplus_fields(on)
}

/// The extension module `cellar._cellar`.
#[pymodule]
fn _cellar(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dumps, m)?)?;
    m.add_class::<pickle::PickleLoader>()?;
    m.add_function(wrap_pyfunction!(pickle::_pickle_dumps, m)?)?;
    m.add_function(wrap_pyfunction!(pickle::_pickle_globals_of, m)?)?;
    m.add_function(wrap_pyfunction!(loads, m)?)?;
    m.add_function(wrap_pyfunction!(dump, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(_marshal_code_fields, m)?)?;
    m.add("version", DEFAULT_VERSION)?;
    marshal_code::init(m.py())?;
    dbm::register(m)?;
    shelve::register(m)?;
    Ok(())
}
