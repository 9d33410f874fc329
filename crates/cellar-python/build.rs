//! Exposes pyo3's interpreter-version cfgs (`Py_3_12`, `Py_3_13`, ...) to this crate: the
//! public code-object constructor has another name from 3.12, and set items are referenced
//! differently by CPython 3.13's marshal (src/marshal_code.rs, src/marshal_source.rs).
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
