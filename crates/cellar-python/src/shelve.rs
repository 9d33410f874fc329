//! `cellar.shelve`'s native half: `_ShelfBase`, the base class of `cellar.shelve.Shelf`, and
//! `_ShelfBatch`.
//!
//! `Shelf` is written in Python with exactly the stdlib's semantics (any backing mapping,
//! writeback, custom key encodings). Its state (`dict`, `writeback`, `_protocol`,
//! `keyencoding`, `serializer`, `deserializer`, `cache`, `_codec`) lives in this base class, so
//! `shelf[key]`, `shelf[key] = value`, `del shelf[key]` and `key in shelf` can run here without
//! a Python frame when the common case holds: the backing mapping is a cellar database, the key
//! is a `str`, the key encoding is UTF-8, writeback is off and the cache is empty. Any other
//! case calls the Python implementations (`_getitem`, `_setitem`, `_delitem`, `_contains`), so
//! behaviour never depends on which path ran. The marshal codec encodes and decodes here
//! directly; the pickle codecs call the serializer/deserializer (C functions) with no frame.

use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::dbm::{PyBatch, PyDatabase, PyItemIter};
use crate::pickle::PickleLoader;
use crate::{marshal_sink, marshal_source};

/// The marshal version `codec="marshal"` shelves write (`cellar.shelve.MARSHAL_VERSION`).
const MARSHAL_VERSION: i32 = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pickle,
    Marshal,
    Custom,
}

/// Base class of `cellar.shelve.Shelf`: holds the shelf's state and runs the fast paths.
#[pyclass(subclass, dict, weakref, module = "cellar.shelve", name = "_ShelfBase")]
pub struct ShelfBase {
    dict: Py<PyAny>,
    /// `dict` when it is a cellar database.
    db: Option<Py<PyDatabase>>,
    writeback: bool,
    protocol: Py<PyAny>,
    keyencoding: Py<PyAny>,
    /// `keyencoding` names UTF-8, the encoding cellar's databases use for `str` keys.
    utf8: bool,
    serializer: Py<PyAny>,
    deserializer: Py<PyAny>,
    kind: Kind,
    cache: Py<PyAny>,
}

/// What a fast-path call needs, copied out so no borrow of the shelf is held while Python code
/// (a serializer) runs.
struct Fast {
    db: Py<PyDatabase>,
    kind: Kind,
    serializer: Py<PyAny>,
    deserializer: Py<PyAny>,
    protocol: Py<PyAny>,
}

impl ShelfBase {
    fn fast(&self, py: Python<'_>) -> Option<Fast> {
        if self.writeback || !self.utf8 {
            return None;
        }
        let db = self.db.as_ref()?;
        match self.cache.bind(py).cast::<PyDict>() {
            Ok(c) if c.is_empty() => {}
            _ => return None,
        }
        Some(Fast {
            db: db.clone_ref(py),
            kind: self.kind,
            serializer: self.serializer.clone_ref(py),
            deserializer: self.deserializer.clone_ref(py),
            protocol: self.protocol.clone_ref(py),
        })
    }
}

fn is_utf8(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().replace('_', "-").as_str(),
        "utf-8" | "utf8" | "u8" | "utf"
    )
}

fn fast_for(slf: &Bound<'_, ShelfBase>, key: &Bound<'_, PyAny>) -> Option<Fast> {
    if !key.is_exact_instance_of::<PyString>() {
        return None;
    }
    slf.borrow().fast(slf.py())
}

impl Fast {
    fn encode<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.kind {
            Kind::Marshal => {
                Ok(marshal_source::dumps(py, value, MARSHAL_VERSION, false)?.into_any())
            }
            Kind::Pickle | Kind::Custom => self
                .serializer
                .bind(py)
                .call1((value, self.protocol.bind(py))),
        }
    }

    fn decode<'py>(
        &self,
        py: Python<'py>,
        value: Bound<'py, PyBytes>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = value.as_bytes();
        if let Ok(loader) = self.deserializer.bind(py).cast::<PickleLoader>() {
            // safe=True: cellar's decoder straight from the stored bytes.
            return loader
                .get()
                .load_slice(py, data, None, None, None)
                .map(|(obj, _)| obj);
        }
        match self.kind {
            // The same `marshal.loads` audit event as the Python path (`cellar.marshal.loads`).
            Kind::Marshal => {
                marshal_sink::audit_loads(py, data)?;
                marshal_sink::loads_slice(py, data, false)
            }
            Kind::Pickle | Kind::Custom => self.deserializer.bind(py).call1((value,)),
        }
    }
}

fn store<'py>(
    py: Python<'py>,
    db: &Py<PyDatabase>,
    key: &[u8],
    data: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let db = db.get();
    if let Ok(b) = data.cast::<PyBytes>() {
        return db.put(py, key, b.as_bytes());
    }
    // Any other bytes-like result of a custom serializer (or str, as dbm accepts).
    let v: Vec<u8> = if let Ok(s) = data.cast::<PyString>() {
        s.to_str()?.as_bytes().to_vec()
    } else if let Ok(buf) = pyo3::buffer::PyBuffer::<u8>::get(data) {
        buf.to_vec(py)?
    } else {
        return Err(PyTypeError::new_err(format!(
            "values must be bytes or strings, not {}",
            data.get_type().name()?
        )));
    };
    db.put(py, key, &v)
}

#[pymethods]
impl ShelfBase {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Self {
        ShelfBase {
            dict: py.None(),
            db: None,
            writeback: false,
            protocol: py.None(),
            keyencoding: PyString::new(py, "utf-8").into_any().unbind(),
            utf8: true,
            serializer: py.None(),
            deserializer: py.None(),
            kind: Kind::Custom,
            cache: PyDict::new(py).into_any().unbind(),
        }
    }

    /// The backing mapping (bytes keys to bytes values).
    #[getter]
    fn get_dict(&self, py: Python<'_>) -> Py<PyAny> {
        self.dict.clone_ref(py)
    }

    #[setter]
    fn set_dict(&mut self, value: &Bound<'_, PyAny>) {
        self.db = value.cast::<PyDatabase>().ok().map(|d| d.clone().unbind());
        self.dict = value.clone().unbind();
    }

    #[getter]
    fn get_writeback(&self) -> bool {
        self.writeback
    }

    #[setter]
    fn set_writeback(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.writeback = value.is_truthy()?;
        Ok(())
    }

    #[getter(_protocol)]
    fn get_protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.protocol.clone_ref(py)
    }

    #[setter(_protocol)]
    fn set_protocol(&mut self, value: Py<PyAny>) {
        self.protocol = value;
    }

    #[getter]
    fn get_keyencoding(&self, py: Python<'_>) -> Py<PyAny> {
        self.keyencoding.clone_ref(py)
    }

    #[setter]
    fn set_keyencoding(&mut self, value: &Bound<'_, PyAny>) {
        self.utf8 = value
            .cast::<PyString>()
            .ok()
            .and_then(|s| s.to_str().ok().map(is_utf8))
            .unwrap_or(false);
        self.keyencoding = value.clone().unbind();
    }

    #[getter]
    fn get_serializer(&self, py: Python<'_>) -> Py<PyAny> {
        self.serializer.clone_ref(py)
    }

    #[setter]
    fn set_serializer(&mut self, value: Py<PyAny>) {
        self.serializer = value;
    }

    #[getter]
    fn get_deserializer(&self, py: Python<'_>) -> Py<PyAny> {
        self.deserializer.clone_ref(py)
    }

    #[setter]
    fn set_deserializer(&mut self, value: Py<PyAny>) {
        self.deserializer = value;
    }

    /// The writeback cache (key to object).
    #[getter]
    fn get_cache(&self, py: Python<'_>) -> Py<PyAny> {
        self.cache.clone_ref(py)
    }

    #[setter]
    fn set_cache(&mut self, value: Py<PyAny>) {
        self.cache = value;
    }

    /// `"pickle"`, `"marshal"` or `"custom"`: which codec the serializer pair is.
    #[getter(_codec)]
    fn get_codec(&self) -> &'static str {
        match self.kind {
            Kind::Pickle => "pickle",
            Kind::Marshal => "marshal",
            Kind::Custom => "custom",
        }
    }

    #[setter(_codec)]
    fn set_codec(&mut self, value: &str) -> PyResult<()> {
        self.kind = match value {
            "pickle" => Kind::Pickle,
            "marshal" => Kind::Marshal,
            "custom" => Kind::Custom,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "_codec must be 'pickle', 'marshal' or 'custom', not {other:?}"
                )))
            }
        };
        Ok(())
    }

    fn __getitem__<'py>(
        slf: &Bound<'py, Self>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let Some(f) = fast_for(slf, key) else {
            return slf.call_method1(intern!(py, "_getitem"), (key,));
        };
        let k = key.cast::<PyString>()?.to_str()?.as_bytes();
        match f.db.get().get_bytes(py, k)? {
            Some(data) => f.decode(py, data),
            None => Err(PyKeyError::new_err(PyBytes::new(py, k).unbind())),
        }
    }

    fn __setitem__<'py>(
        slf: &Bound<'py, Self>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let Some(f) = fast_for(slf, key) else {
            slf.call_method1(intern!(py, "_setitem"), (key, value))?;
            return Ok(());
        };
        let k = key.cast::<PyString>()?.to_str()?.as_bytes();
        let data = f.encode(py, value)?;
        store(py, &f.db, k, &data)
    }

    fn __delitem__<'py>(slf: &Bound<'py, Self>, key: &Bound<'py, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let Some(f) = fast_for(slf, key) else {
            slf.call_method1(intern!(py, "_delitem"), (key,))?;
            return Ok(());
        };
        let k = key.cast::<PyString>()?.to_str()?.as_bytes();
        if f.db.get().delete(py, k)? {
            Ok(())
        } else {
            Err(PyKeyError::new_err(PyBytes::new(py, k).unbind()))
        }
    }

    fn __contains__<'py>(slf: &Bound<'py, Self>, key: &Bound<'py, PyAny>) -> PyResult<bool> {
        let py = slf.py();
        let fast = if key.is_exact_instance_of::<PyString>() && slf.borrow().utf8 {
            slf.borrow().db.as_ref().map(|d| d.clone_ref(py))
        } else {
            None
        };
        let Some(db) = fast else {
            return slf
                .call_method1(intern!(py, "_contains"), (key,))?
                .is_truthy();
        };
        let k = key.cast::<PyString>()?.to_str()?.as_bytes();
        db.get().has(py, k)
    }

    fn __len__(slf: &Bound<'_, Self>) -> PyResult<usize> {
        let d = slf.borrow().dict.clone_ref(slf.py());
        d.bind(slf.py()).len()
    }

    /// `items()` on a server store, for the fast case (`None` otherwise): an iterator of
    /// `(str, value)` pairs decoded here, from pages of pairs fetched one round trip each.
    fn _paged_items(slf: &Bound<'_, Self>) -> PyResult<Option<ShelfItems>> {
        let py = slf.py();
        let Some(fast) = slf.borrow().fast(py) else {
            return Ok(None);
        };
        let pairs = PyDatabase::iteritems(fast.db.bind(py))?;
        Ok(Some(ShelfItems {
            pairs: Py::new(py, pairs)?,
            fast,
        }))
    }

    /// A native batch for the fast case (`None` otherwise): `b[key] = value` serializes at
    /// once into the database's batch (`db.batch()`), which also gathers the shelf's own
    /// writes while the block is open and commits them together when it exits cleanly.
    fn _native_batch(slf: &Bound<'_, Self>) -> PyResult<Option<ShelfBatch>> {
        let py = slf.py();
        let Some(f) = slf.borrow().fast(py) else {
            return Ok(None);
        };
        let batch = Py::new(py, PyBatch::new(f.db.clone_ref(py)))?;
        Ok(Some(ShelfBatch { fast: f, batch }))
    }
}

/// `Shelf.items()` on a server store: `(key, value)` pairs with the key decoded from UTF-8 and
/// the value by the shelf's codec, exactly as `Shelf.__getitem__` would.
#[pyclass(module = "cellar.shelve", name = "_ShelfItems")]
pub struct ShelfItems {
    pairs: Py<PyItemIter>,
    fast: Fast,
}

#[pymethods]
impl ShelfItems {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some((k, v)) = self.pairs.get().next_pair(py)? else {
            return Ok(None);
        };
        let key = match std::str::from_utf8(&k) {
            Ok(s) => PyString::new(py, s).into_any(),
            // The same UnicodeDecodeError as `key.decode("utf-8")`.
            Err(_) => PyBytes::new(py, &k).call_method1(intern!(py, "decode"), ("utf-8",))?,
        };
        let value = self.fast.decode(py, PyBytes::new(py, &v))?;
        Ok(Some(PyTuple::new(py, [key, value])?))
    }
}

/// `shelf.batch()` on a cellar database: writes serialized as they are made into the
/// database's batch, committed as one on a clean exit (dropped if the block raises).
#[pyclass(module = "cellar.shelve", name = "_ShelfBatch")]
pub struct ShelfBatch {
    fast: Fast,
    batch: Py<PyBatch>,
}

fn key_bytes<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    match key.cast::<PyString>() {
        Ok(s) => Ok(s.to_str()?.as_bytes()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "shelf keys must be str, not {}",
            key.get_type().name()?
        ))),
    }
}

#[pymethods]
impl ShelfBatch {
    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = key.py();
        let k = key_bytes(key)?;
        let data = self.fast.encode(py, value)?;
        // Copied once, into the batch's buffer (a bytes result is borrowed for it).
        if let Ok(b) = data.cast::<PyBytes>() {
            return self.batch.get().with(|ops| {
                ops.insert(k, b.as_bytes());
            });
        }
        let Ok(buf) = pyo3::buffer::PyBuffer::<u8>::get(&data) else {
            return Err(PyTypeError::new_err(format!(
                "the serializer must return bytes, not {}",
                data.get_type().name()?
            )));
        };
        let v = buf.to_vec(py)?;
        self.batch.get().with(|ops| {
            ops.insert(k, v);
        })
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let k = key_bytes(key)?;
        self.batch.get().with(|b| {
            b.remove(k);
        })
    }

    fn __len__(&self) -> PyResult<usize> {
        self.batch.get().with(|b| b.len())
    }

    fn __enter__(slf: Py<Self>, py: Python<'_>) -> PyResult<Py<Self>> {
        slf.borrow(py).batch.get().enter()?;
        Ok(slf)
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.batch.get().exit(py, exc_type.is_none())?;
        Ok(false)
    }
}

/// Adds the shelve classes to `cellar._cellar`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ShelfBase>()?;
    m.add_class::<ShelfBatch>()?;
    m.add_class::<ShelfItems>()?;
    Ok(())
}
