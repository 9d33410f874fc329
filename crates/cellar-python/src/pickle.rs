//! The Python face of cellar's pickle codec: `cellar._cellar._PickleLoader` (a configured safe
//! unpickler: the one decoder `cellar_pickle::decode` driving the Python-objects sink,
//! [`crate::pickle_sink`]) and `_pickle_dumps` ([`crate::pickle_dump`]). The public module is
//! `python/cellar/pickle.py`, which builds loaders from `allow=` and cellar.copyreg.

// Issue 12: every unsafe block documented, no unsafe operation without its own block (the
// crate-level attribute waits for the marshal modules).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::collections::HashMap;

use cellar_pickle::{DecodeErrors, DecodeOptions, StringEncoding};
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyIterator, PyString, PyTuple, PyType};

use crate::pickle_sink::{GcPause, PySink};

/// A safe unpickler configuration: the allowed globals, inert mode, Python 2 string decoding,
/// the extension registry and the limits. `loads` may be called any number of times.
#[pyclass(module = "cellar._cellar", name = "_PickleLoader", frozen)]
pub(crate) struct PickleLoader {
    /// `(module, qualname)` -> allowed object.
    pub(crate) allowed: HashMap<(String, String), Py<PyAny>>,
    /// Parents of allowed nested classes (`Outer` for `Outer.Inner`): values, never called.
    pub(crate) namespaces: HashMap<(String, String), Py<PyAny>>,
    /// The `cellar.pickle.Inert` class when `inert=True`.
    pub(crate) inert: Option<Py<PyType>>,
    fix_imports: bool,
    /// Python 2 `str` decoding: `None` for `encoding='bytes'`.
    pub(crate) encoding: Option<String>,
    pub(crate) errors: String,
    /// copyreg's `_inverted_registry` role: extension code -> (module, name).
    pub(crate) extensions: Option<Py<PyDict>>,
    max_depth: usize,
    max_bytes: Option<usize>,
}

#[pymethods]
impl PickleLoader {
    /// `allowed`: `{(module, qualname): object}`; `inert`: the `Inert` class or None;
    /// `encoding='bytes'` keeps Python 2 strings as bytes.
    #[new]
    #[pyo3(signature = (allowed, namespaces, inert=None, fix_imports=true, encoding="ASCII", errors="strict", extensions=None, max_depth=None, max_bytes=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        allowed: &Bound<'_, PyDict>,
        namespaces: &Bound<'_, PyDict>,
        inert: Option<Bound<'_, PyType>>,
        fix_imports: bool,
        encoding: &str,
        errors: &str,
        extensions: Option<Bound<'_, PyDict>>,
        max_depth: Option<usize>,
        max_bytes: Option<usize>,
    ) -> PyResult<Self> {
        Ok(PickleLoader {
            allowed: name_table(allowed)?,
            namespaces: name_table(namespaces)?,
            inert: inert.map(Bound::unbind),
            fix_imports,
            encoding: (encoding != "bytes").then(|| encoding.to_owned()),
            errors: errors.to_owned(),
            extensions: extensions.map(Bound::unbind),
            max_depth: max_depth.unwrap_or(cellar_pickle::DEFAULT_MAX_DEPTH),
            max_bytes,
        })
    }

    /// `loader(data)`: the object only (no buffers, no persistent ids): the fast path a shelf
    /// with `safe=True` calls for every value.
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = self.loads(py, data, None, None, None)?;
        t.get_item(0)
    }

    /// Decode the first pickle in `data` (any bytes-like object). Returns `(object, bytes used)`.
    /// `find_class`: an `Unpickler.find_class` override, asked for every global the pickle
    /// names (see [`crate::pickle_sink`]'s `lookup`).
    #[pyo3(signature = (data, buffers=None, persistent_load=None, find_class=None))]
    fn loads<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        buffers: Option<Bound<'py, PyAny>>,
        persistent_load: Option<Bound<'py, PyAny>>,
        find_class: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let buffers = match buffers {
            Some(b) if !b.is_none() => Some(PyIterator::from_object(&b)?),
            _ => None,
        };
        let persistent_load = persistent_load.filter(|p| !p.is_none());
        let find_class = find_class.filter(|p| !p.is_none());
        let mut owned = Vec::new();
        let bytes = bytes_like(py, data, &mut owned)?;
        self.load_slice(py, bytes, buffers, persistent_load, find_class)
            .and_then(|(obj, used)| PyTuple::new(py, [obj, used.into_pyobject(py)?.into_any()]))
    }

    /// The base `Unpickler.find_class(module, name)`: the policy as a lookup, nothing imported.
    /// Returns the allowed object (an `allow=` entry, a cellar.copyreg registration, the parent
    /// of an allowed nested class), the stdlib object behind a default global (the decoder
    /// keeps applying that global's rules to it), or with `inert=True` an inert global;
    /// otherwise raises `refusals[kind](message)` with kind 0 (nothing allowed in that
    /// module: also a ModuleNotFoundError), 1 (not this name: also an AttributeError) or 2
    /// (empty module name: also a ValueError). `proto` and `loading` as pickle's: names map
    /// through fix_imports below protocol 3; outside a load, a dotted name needs protocol 4.
    fn find_class<'py>(
        &self,
        py: Python<'py>,
        module: &Bound<'py, PyAny>,
        name: &Bound<'py, PyAny>,
        proto: u8,
        loading: bool,
        refusals: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (Ok(module), Ok(name)) = (module.cast::<PyString>(), name.cast::<PyString>()) else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "find_class: module and name must be str",
            ));
        };
        let (module, name) = (module.to_cow()?, name.to_cow()?);
        let (m, n) = if proto < 3 && self.fix_imports {
            cellar_pickle::fix_imports_name(&module, &name)
        } else {
            (&*module, &*name)
        };
        let refuse = |kind: usize, msg: String| -> PyResult<Bound<'py, PyAny>> {
            Err(PyErr::from_value(refusals.get_item(kind)?.call1((msg,))?))
        };
        if m.is_empty() {
            return refuse(2, "Empty module name".to_owned());
        }
        if !loading && proto < 4 && n.contains('.') {
            return refuse(
                1,
                format!(
                    "Can't get attribute '{n}' on module '{m}': a dotted name needs protocol \
                     4 (this unpickler's protocol is {proto})"
                ),
            );
        }
        let key = (m.to_owned(), n.to_owned());
        if let Some(o) = self.allowed.get(&key).or_else(|| self.namespaces.get(&key)) {
            return Ok(o.bind(py).clone());
        }
        if let Some(o) = crate::pickle_sink::default_object(py, m, n)? {
            return Ok(o);
        }
        if let Some(t) = &self.inert {
            return t.bind(py).call1((m, n));
        }
        let known_module = self
            .allowed
            .keys()
            .chain(self.namespaces.keys())
            .any(|(km, _)| km == m)
            || cellar_pickle::policy::DEFAULT_GLOBALS
                .iter()
                .any(|(km, _, _)| *km == m);
        refuse(
            usize::from(known_module),
            cellar_pickle::policy::refusal(m, n, None),
        )
    }
}

impl PickleLoader {
    /// Decode the first pickle in `bytes`: `(object, bytes used)`.
    pub(crate) fn load_slice<'py>(
        &self,
        py: Python<'py>,
        bytes: &[u8],
        buffers: Option<Bound<'py, PyIterator>>,
        persistent_load: Option<Bound<'py, PyAny>>,
        find_class: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, usize)> {
        let encoding = match &self.encoding {
            None => StringEncoding::Bytes,
            Some(e) => StringEncoding::from_name(e).unwrap_or(StringEncoding::Ascii),
        };
        let opts = DecodeOptions {
            inert: self.inert.is_some(),
            fix_imports: self.fix_imports,
            encoding,
            errors: DecodeErrors::Strict,
            max_depth: self.max_depth,
            max_bytes: self.max_bytes,
        };
        let mut sink = PySink::new(
            py,
            self,
            buffers,
            persistent_load,
            find_class,
            self.max_depth,
        );
        // The decoder makes no garbage cycles: no collection passes over the half-built result.
        let _gc = GcPause::new(py);
        cellar_pickle::decode(bytes, &mut sink, &opts).map_err(|e| e.into_pyerr(py))
    }
}

/// `{(module, name): object}` -> a Rust map.
fn name_table(d: &Bound<'_, PyDict>) -> PyResult<HashMap<(String, String), Py<PyAny>>> {
    let mut map = HashMap::with_capacity(d.len());
    for (k, v) in d.iter() {
        let (m, n): (String, String) = k.extract()?;
        map.insert((m, n), v.unbind());
    }
    Ok(map)
}

/// `_pickle_dumps(obj, protocol, fix_imports, Inert, reducer)`: the bytes `cellar.pickle.dumps`
/// returns (`reducer(obj)` is cellar.copyreg's dispatch-table lookup).
#[pyfunction]
pub(crate) fn _pickle_dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    protocol: u8,
    fix_imports: bool,
    inert: Bound<'py, PyType>,
    reducer: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    if protocol > cellar_pickle::HIGHEST_PROTOCOL {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "pickle protocol must be <= {}",
            cellar_pickle::HIGHEST_PROTOCOL
        )));
    }
    crate::pickle_dump::dumps(py, obj, protocol, fix_imports, inert, reducer)
}

/// One row of `_pickle_globals_of`: module, name, need ("class" / "function" / "value"), the
/// default-policy description (None: needs `allow=`), called, instantiated, built, BUILD on the
/// global itself, extension code, one-line description.
type GlobalRow = (
    String,
    String,
    &'static str,
    Option<&'static str>,
    bool,
    bool,
    bool,
    bool,
    Option<i32>,
    String,
);

/// `_pickle_globals_of(data, fix_imports, extensions)`: every global the pickle names and how
/// it uses it (cellar_pickle::globals_of), plus the message of the error that stopped the scan
/// early, if any. `extensions` is copyreg's `_inverted_registry` (code -> (module, name)).
#[pyfunction]
#[pyo3(signature = (data, fix_imports=true, extensions=None))]
pub(crate) fn _pickle_globals_of(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    fix_imports: bool,
    extensions: Option<Bound<'_, PyDict>>,
) -> PyResult<(Vec<GlobalRow>, Option<String>)> {
    let mut owned = Vec::new();
    let bytes = bytes_like(py, data, &mut owned)?;
    let mut reg = cellar_pickle::Registry::default();
    if let Some(ext) = extensions {
        for (code, key) in ext.iter() {
            let (Ok(code), Ok((m, n))) = (code.extract::<i64>(), key.extract::<(String, String)>())
            else {
                continue;
            };
            // A code cellar_pickle's registry refuses cannot appear in a valid pickle anyway.
            let _ = reg.add_extension(&m, &n, code);
        }
    }
    let report = cellar_pickle::globals_of(bytes, &reg, fix_imports);
    let rows = report
        .globals
        .iter()
        .map(|g| {
            (
                g.module.clone(),
                g.name.clone(),
                g.need().as_str(),
                g.default.map(|k| k.describe()),
                g.called,
                g.instantiated,
                g.built,
                g.built_itself,
                g.extension,
                g.describe(),
            )
        })
        .collect();
    Ok((rows, report.error.map(|e| e.to_string())))
}

/// The bytes of a bytes-like object without a copy for `bytes` (others are copied into `owned`);
/// `str` is a TypeError, as for CPython's `pickle.loads`.
fn bytes_like<'a>(
    py: Python<'_>,
    data: &'a Bound<'_, PyAny>,
    owned: &'a mut Vec<u8>,
) -> PyResult<&'a [u8]> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    if data.is_instance_of::<PyString>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "a bytes-like object is required, not 'str'",
        ));
    }
    *owned = PyBuffer::<u8>::get(data)?.to_vec(py)?;
    Ok(owned)
}
