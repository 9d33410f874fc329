//! `cellar.dbm`'s native half: a Python database object over `cellar_dbm`'s `Box<dyn Database>`.
//!
//! Keys and values are bytes; `str` is encoded as UTF-8 (as CPython's dbm modules do), and any
//! other bytes-like object is copied (the sqlite backend also stores ints and floats as
//! dbm.sqlite3 does). Every call into a native or dumb store releases the GIL
//! (`Python::detach`), but for a native store's point reads (`PyDatabase::get_bytes`); the
//! sqlite backend runs on the interpreter's own `sqlite3` module
//! (`sqlite_py`), which releases it around SQLite. The database object is `Send + Sync` and all
//! its methods take `&self`, so one object may be used from many threads at once. Errors map as `DbmError::py_kind()` says:
//! `ValueError` for bad flags, `OSError` (with errno, so `FileNotFoundError` etc.) for OS errors,
//! `cellar.dbm.error` (an `OSError` subclass) otherwise; a corrupt dbm.dumb index raises a class
//! that is both `cellar.dbm.error` and `ValueError` (CPython's `literal_eval` raises `ValueError`).

use cellar_dbm::{Backend, Batch, Database, DbmError, PyErrorKind, ValueEncoding};
use pyo3::exceptions::{PyKeyError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple, PyType};
use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::sqlite_py::PySqliteDb;

/// The exception class `cellar.dbm.error` (named like CPython's `dbm.error`).
#[allow(non_camel_case_types)]
mod exc {
    pyo3::create_exception!(
        cellar.dbm,
        error,
        pyo3::exceptions::PyOSError,
        "A dbm failure (a subclass of OSError)."
    );
}
use exc::error as DbmError_;

/// `cellar.dbm.error` and `ValueError` at once: a dbm.dumb index that does not parse.
static CORRUPT: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn corrupt_class(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    CORRUPT
        .get_or_try_init(py, || -> PyResult<Py<PyType>> {
            let bases = PyTuple::new(
                py,
                [
                    py.get_type::<DbmError_>().into_any(),
                    py.get_type::<PyValueError>().into_any(),
                ],
            )?;
            let ns = PyDict::new(py);
            ns.set_item("__module__", "cellar.dbm")?;
            let cls = py
                .get_type::<PyType>()
                .call1(("CorruptError", bases, ns))?
                .cast_into::<PyType>()?;
            Ok(cls.unbind())
        })
        .map(|c| c.bind(py))
}

/// `cellar.dbm.ServerConnectionError` (also a `ConnectionError`) and
/// `cellar.dbm.ServerTimeoutError` (also a `TimeoutError`): a server store that cannot be
/// reached, dropped its connection or is failing over; or did not answer in time. The next
/// call reconnects.
static SERVER_CONN: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SERVER_TIMEOUT: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn mixed_class<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    other: Bound<'py, PyType>,
) -> PyResult<&'py Bound<'py, PyType>> {
    cell.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(
            py,
            [py.get_type::<DbmError_>().into_any(), other.into_any()],
        )?;
        let ns = PyDict::new(py);
        ns.set_item("__module__", "cellar.dbm")?;
        let cls = py
            .get_type::<PyType>()
            .call1((name, bases, ns))?
            .cast_into::<PyType>()?;
        Ok(cls.unbind())
    })
    .map(|c| c.bind(py))
}

fn server_conn_class(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    mixed_class(
        py,
        &SERVER_CONN,
        "ServerConnectionError",
        py.get_type::<pyo3::exceptions::PyConnectionError>(),
    )
}

fn server_timeout_class(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    mixed_class(
        py,
        &SERVER_TIMEOUT,
        "ServerTimeoutError",
        py.get_type::<pyo3::exceptions::PyTimeoutError>(),
    )
}

/// `cellar.dbm.error(msg)`.
pub(crate) fn dbm_error(msg: String) -> PyErr {
    DbmError_::new_err(msg)
}

/// The Python exception for a `DbmError`.
pub(crate) fn to_py(py: Python<'_>, e: DbmError) -> PyErr {
    let e = match e {
        // A Python exception raised inside a backend (sqlite_py): re-raised as it is.
        DbmError::External { context, source } => match source.downcast::<PyErr>() {
            Ok(err) => return *err,
            Err(source) => DbmError::External { context, source },
        },
        e => e,
    };
    let msg = e.to_string();
    if let Some(kind) = e.server_kind() {
        use cellar_dbm::ServerErrorKind as K;
        let cls = match kind {
            K::Timeout => Some(server_timeout_class(py)),
            K::Unavailable | K::ConnectionLost | K::Failover => Some(server_conn_class(py)),
            _ => None,
        };
        if let Some(cls) = cls {
            return match cls {
                Ok(cls) => PyErr::from_type(cls.clone(), msg),
                Err(err) => err,
            };
        }
    }
    if matches!(e, DbmError::Corrupt { .. }) {
        return match corrupt_class(py) {
            Ok(cls) => PyErr::from_type(cls.clone(), msg),
            Err(err) => err,
        };
    }
    match (e.py_kind(), e.raw_os_error()) {
        (PyErrorKind::Value, _) => PyValueError::new_err(msg),
        // OSError(errno, msg) picks the errno subclass (FileNotFoundError, IsADirectoryError...).
        (PyErrorKind::Os, Some(errno)) => PyOSError::new_err((errno, msg)),
        (PyErrorKind::Os, None) => PyOSError::new_err(msg),
        (_, Some(errno)) => DbmError_::new_err((errno, msg)),
        (_, None) => DbmError_::new_err(msg),
    }
}

/// The bytes of a key or value: bytes-like objects as they are, `str` as UTF-8. bytes and str
/// are borrowed (both are immutable, and `obj` keeps them alive while the GIL is released
/// around the store's call); other buffers are copied.
fn as_bytes<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Cow::Borrowed(s.to_str()?.as_bytes()));
    }
    if let Ok(buf) = pyo3::buffer::PyBuffer::<u8>::get(obj) {
        return Ok(Cow::Owned(buf.to_vec(obj.py())?));
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be bytes or strings, not {}",
        obj.get_type().name()?
    )))
}

fn path_of<'a>(path: &'a Bound<'_, PyBytes>) -> &'a Path {
    Path::new(OsStr::from_bytes(path.as_bytes()))
}

fn backend_of(name: &str) -> PyResult<Backend> {
    cellar_dbm::BACKENDS
        .into_iter()
        .chain([Backend::Gnu, Backend::Ndbm])
        .find(|b| b.name() == name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown dbm backend {name:?}")))
}

/// The value encoding a `("pickle", protocol)` / `("marshal", version)` / `("raw", 0)` tuple
/// names.
fn encoding_of(value_encoding: Option<(String, u8)>) -> PyResult<ValueEncoding> {
    Ok(match value_encoding {
        None => ValueEncoding::Raw,
        Some((kind, v)) => match kind.as_str() {
            "pickle" => ValueEncoding::Pickle { protocol: v },
            "marshal" => ValueEncoding::Marshal { version: v },
            "raw" => ValueEncoding::Raw,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "value_encoding must be ('pickle', protocol), ('marshal', version) or \
                     ('raw', 0), not ({kind:?}, {v})"
                )))
            }
        },
    })
}

/// `_dbm_open(path: bytes, backend: str, flag: str, mode: int, value_encoding=None)`: opens
/// `path` with one backend (`"dbm.native"`, `"dbm.sqlite3"`, `"dbm.dumb"`, or read-only
/// `"dbm.gnu"`, `"dbm.ndbm"`), checking `flag` as
/// that backend does. `value_encoding` (`("pickle", protocol)` or `("marshal", version)`) is
/// recorded in the header of a native store this call creates (how `cellar.shelve` marks it).
/// `timeout` (seconds a commit waits for its turn at the write lock, default 5) and
/// `exclusive` (one writer handle for the store's life) apply to the native backend, as does
/// `cache_bytes` (the block cache of a compact-form store, default 128 MiB).
#[pyfunction]
#[pyo3(signature = (path, backend, flag, mode, value_encoding = None, timeout = None, exclusive = false, cache_bytes = None))]
#[allow(clippy::too_many_arguments)]
fn _dbm_open(
    py: Python<'_>,
    path: &Bound<'_, PyBytes>,
    backend: &str,
    flag: &str,
    mode: u32,
    value_encoding: Option<(String, u8)>,
    timeout: Option<f64>,
    exclusive: bool,
    cache_bytes: Option<i64>,
) -> PyResult<PyDatabase> {
    let writers = writer_options(timeout, exclusive, cache_bytes)?;
    let backend = backend_of(backend)?;
    let flag = backend.parse_flag(flag).map_err(|e| to_py(py, e))?;
    let encoding = encoding_of(value_encoding)?;
    let path = path_of(path).to_path_buf();
    if backend == Backend::Sqlite3 {
        // The interpreter's own SQLite, never a second copy in the process: see sqlite_py.
        let sq = PySqliteDb::open(py, &path, flag, mode)?;
        return Ok(PyDatabase::new(Box::new(sq.clone()), Some(sq)));
    }
    let db = py
        .detach(|| backend.open_writers(&path, flag, mode, encoding, writers))
        .map_err(|e| to_py(py, e))?;
    Ok(PyDatabase::new(db, None))
}

/// The native backend's open options from `timeout=` (seconds, `None`: 5), `exclusive=` and
/// `cache_bytes=` (`None`: 128 MiB).
fn writer_options(
    timeout: Option<f64>,
    exclusive: bool,
    cache_bytes: Option<i64>,
) -> PyResult<cellar_dbm::WriterOptions> {
    let block_cache_bytes = match cache_bytes {
        None => None,
        Some(b) if b >= 0 => Some(usize::try_from(b).unwrap_or(usize::MAX)),
        Some(b) => {
            return Err(PyValueError::new_err(format!(
                "cache_bytes must be a number of bytes >= 0, not {b}"
            )))
        }
    };
    let lock_timeout = match timeout {
        None => None,
        Some(t) if (0.0..=1e9).contains(&t) => Some(std::time::Duration::from_secs_f64(t)),
        Some(t) => {
            return Err(PyValueError::new_err(format!(
                "timeout must be a number of seconds >= 0, not {t}"
            )))
        }
    };
    Ok(cellar_dbm::WriterOptions {
        exclusive,
        lock_timeout,
        block_cache_bytes,
    })
}

/// `_dbm_open_url(url: str, flag: str, value_encoding=None)`: opens a store on a server
/// (`redis://`, `redis+cluster://`, `postgresql://`): the scheme names the backend, the flag is
/// `r`, `w`, `c` or `n` ('n' empties only that namespace). `value_encoding` is recorded in the
/// metadata of a store this call creates, as for native files.
#[pyfunction]
#[pyo3(signature = (url, flag, value_encoding = None))]
fn _dbm_open_url(
    py: Python<'_>,
    url: &str,
    flag: &str,
    value_encoding: Option<(String, u8)>,
) -> PyResult<PyDatabase> {
    let flag = cellar_dbm::Flag::parse(flag).map_err(|e| to_py(py, e))?;
    let encoding = encoding_of(value_encoding)?;
    let url = url.to_string();
    let db = py
        .detach(|| cellar_dbm::open_with(&url, flag, cellar_dbm::DEFAULT_MODE, encoding))
        .map_err(|e| to_py(py, e))?;
    Ok(PyDatabase::new(db, None))
}

/// `_dbm_is_url(s: str)`: whether `s` is a server URL cellar opens.
#[pyfunction]
fn _dbm_is_url(s: &str) -> bool {
    cellar_dbm::is_server_url(s)
}

/// `_dbm_whichdb(path: bytes)`: CPython's answer (`None`, `""`, or `"dbm.x"`).
#[pyfunction]
fn _dbm_whichdb(py: Python<'_>, path: &Bound<'_, PyBytes>) -> Option<&'static str> {
    let path = path_of(path).to_path_buf();
    py.detach(|| cellar_dbm::whichdb(&path).as_python())
}

/// An open dbm database (what `cellar.dbm.open` returns).
#[pyclass(frozen, module = "cellar.dbm", name = "Database")]
pub struct PyDatabase {
    pub(crate) db: Box<dyn Database>,
    /// The sqlite backend's connection, for coercing keys and values as dbm.sqlite3 does.
    sqlite: Option<PySqliteDb>,
    /// Set by `close()`: key iterators stop with `error` once it is.
    closed: AtomicBool,
    /// dbm.gnu's `firstkey()`/`nextkey()` walk: the key snapshot `firstkey()` took and each
    /// key's position in it.
    cursor: Mutex<Option<KeyCursor>>,
    /// The writes of the `with db.batch():` block open on this handle, if any: every write
    /// made through the handle (`db[k] = v`, `del db[k]`, `setdefault`, `clear`, a shelf's
    /// writes) joins it until the outermost block exits.
    open_batch: Mutex<Option<Pending>>,
    /// The backend is the native engine (see [`get_bytes`](Self::get_bytes)).
    native: bool,
}

/// The writes of an open batch block, shared by its `Batch` objects and its database handle.
type Pending = Arc<Mutex<Batch>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct KeyCursor {
    keys: Vec<Vec<u8>>,
    pos: std::collections::HashMap<Vec<u8>, usize>,
}

impl KeyCursor {
    fn new(keys: Vec<Vec<u8>>) -> KeyCursor {
        let pos = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        KeyCursor { keys, pos }
    }
}

impl PyDatabase {
    /// An open database (and the sqlite backend's connection, when that is the backend).
    fn new(db: Box<dyn Database>, sqlite: Option<PySqliteDb>) -> PyDatabase {
        PyDatabase {
            native: db.backend() == Backend::Native,
            db,
            sqlite,
            closed: AtomicBool::new(false),
            cursor: Mutex::new(None),
            open_batch: Mutex::new(None),
        }
    }

    /// The batch a `with db.batch():` block has open on this handle.
    fn pending(&self) -> Option<Pending> {
        lock(&self.open_batch).clone()
    }

    /// What a write made inside a batch block would fail with now, if anything (it is
    /// checked when made, not only when the block applies the batch).
    fn check_writable(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(to_py(py, DbmError::Closed));
        }
        if self.db.is_read_only() {
            return Err(to_py(py, DbmError::ReadOnly));
        }
        Ok(())
    }

    /// Stores `value` under `key`: into the open batch if a block has one, else at once.
    pub(crate) fn put(&self, py: Python<'_>, key: &[u8], value: &[u8]) -> PyResult<()> {
        if let Some(ops) = self.pending() {
            self.check_writable(py)?;
            lock(&ops).insert(key, value);
            return Ok(());
        }
        self.run(py, |db| db.insert(key, value))
    }

    /// Deletes `key`: recorded in the open batch if a block has one (no error for a key that
    /// is missing, as `del b[key]`), else at once; `false` when there was no such key.
    pub(crate) fn delete(&self, py: Python<'_>, key: &[u8]) -> PyResult<bool> {
        if let Some(ops) = self.pending() {
            self.check_writable(py)?;
            lock(&ops).remove(key);
            return Ok(true);
        }
        self.run(py, |db| db.remove(key))
    }

    pub(crate) fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&dyn Database) -> cellar_dbm::Result<T> + Send,
    ) -> PyResult<T> {
        let db: &dyn Database = &*self.db;
        if self.sqlite.is_some() {
            // The sqlite backend is Python calls into the interpreter's sqlite3 module, which
            // releases the GIL around SQLite itself: releasing it here too would only cost a
            // GIL round trip per call.
            return f(db).map_err(|e| to_py(py, e));
        }
        py.detach(|| f(db)).map_err(|e| to_py(py, e))
    }

    /// Whether `key` is stored. On a native store this runs with the GIL held, as
    /// [`get_bytes`](Self::get_bytes) does.
    pub(crate) fn has(&self, py: Python<'_>, key: &[u8]) -> PyResult<bool> {
        if self.native {
            if let Some(found) = self
                .db
                .get_into_now(key, &mut |_| ())
                .map_err(|e| to_py(py, e))?
            {
                return Ok(found);
            }
        }
        self.run(py, |db| db.contains(key))
    }

    /// The value stored under `key`, as a bytes object. On a native store the value goes
    /// from where it lies (mapped file, cached block) straight into the bytes object, with the
    /// GIL held: the read never waits for a lock that a thread could hold while it waits for
    /// the GIL (the engine's locks are taken with the GIL released and no engine code calls
    /// Python; a `close()` running in another thread makes it wait without the GIL instead),
    /// and giving the GIL up and taking it back costs more than the read (a cached block or
    /// the mapped log: a few hundred ns). Nothing but the bytes allocation runs in between.
    pub(crate) fn get_bytes<'py>(
        &self,
        py: Python<'py>,
        key: &[u8],
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        if self.native {
            let mut out = None;
            let done = self
                .db
                .get_into_now(key, &mut |v| out = Some(PyBytes::new(py, v)))
                .map_err(|e| to_py(py, e))?;
            if done.is_some() {
                return Ok(out);
            }
            // Another thread is closing the store: wait for it without the GIL.
        }
        Ok(self
            .run(py, |db| db.get(key))?
            .map(|v| PyBytes::new(py, &v)))
    }

    /// The bytes of a key or value. bytes-like objects as they are and `str` as UTF-8 on every
    /// backend; on the sqlite backend any other object SQLite can bind is stored as
    /// `CAST(? AS BLOB)` makes it, as CPython 3.13's dbm.sqlite3 does (42 -> b'42',
    /// 1.5 -> b'1.5', True -> b'1'), and `None` (SQL NULL) gives `Ok(None)`.
    fn coerced<'a>(
        &self,
        obj: &'a Bound<'_, PyAny>,
        what: &str,
    ) -> PyResult<Option<Cow<'a, [u8]>>> {
        match (as_bytes(obj, what), &self.sqlite) {
            (Ok(b), _) => Ok(Some(b)),
            (Err(e), Some(sq)) if e.is_instance_of::<PyTypeError>(obj.py()) => {
                let py = obj.py();
                Ok(sq
                    .coerce(obj.clone().unbind())
                    .map_err(|e| to_py(py, e))?
                    .map(Cow::Owned))
            }
            (Err(e), _) => Err(e),
        }
    }

    /// A key or value to store: NULL is refused as SQLite refuses it in dbm.sqlite3's table.
    fn stored<'a>(
        &self,
        obj: &'a Bound<'_, PyAny>,
        what: &str,
        column: &str,
    ) -> PyResult<Cow<'a, [u8]>> {
        self.coerced(obj, what)?
            .ok_or_else(|| DbmError_::new_err(format!("NOT NULL constraint failed: Dict.{column}")))
    }
}

#[pymethods]
impl PyDatabase {
    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let Some(k) = self.coerced(key, "keys")? else {
            return Err(PyKeyError::new_err(key.clone().unbind()));
        };
        match self.get_bytes(py, &k)? {
            Some(v) => Ok(v),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let k = self.stored(key, "keys", "key")?;
        let v = self.stored(value, "values", "value")?;
        self.put(py, &k, &v)
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(k) = self.coerced(key, "keys")? else {
            return Err(PyKeyError::new_err(key.clone().unbind()));
        };
        if self.delete(py, &k)? {
            Ok(())
        } else {
            Err(PyKeyError::new_err(key.clone().unbind()))
        }
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let k = match self.coerced(key, "keys") {
            Ok(Some(k)) => k,
            Ok(None) => return Ok(false),
            Err(e) => {
                // A closed database reports that first, as CPython's dumb does.
                self.run(py, |db| db.len())?;
                return Err(e);
            }
        };
        self.has(py, &k)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.run(py, |db| db.len())
    }

    /// All keys, as a list of bytes.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let keys = self.run(py, |db| db.keys())?;
        PyList::new(py, keys.iter().map(|k| PyBytes::new(py, k)))
    }

    /// All values, as a list of bytes (in `keys()` order).
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self.run(py, |db| db.items())?;
        PyList::new(py, items.iter().map(|(_, v)| PyBytes::new(py, v)))
    }

    /// All `(key, value)` pairs, as a list of tuples of bytes.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self.run(py, |db| db.items())?;
        let out = PyList::empty(py);
        for (k, v) in &items {
            out.append((PyBytes::new(py, k), PyBytes::new(py, v)))?;
        }
        Ok(out)
    }

    /// An iterator over a snapshot of the keys; once the database is closed it raises
    /// `error` (as dbm.sqlite3's iterators do) instead of yielding the rest.
    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<PyKeyIter> {
        let py = slf.py();
        if slf.get().db.backend().kind().is_server() {
            // Server stores: a page of keys at a time (the Redis key index, PostgreSQL keyset
            // pages), never the whole namespace in memory.
            return Ok(PyKeyIter {
                db: slf.clone().unbind(),
                keys: Vec::new(),
                next: AtomicUsize::new(0),
                damage: std::sync::Mutex::new(None),
                pages: Some(Mutex::new(Pages {
                    buf: std::collections::VecDeque::new(),
                    cursor: Some(Vec::new()),
                })),
            });
        }
        // A damaged record does not hide the intact ones: they are yielded, then the damage is
        // raised (cellar.dbm.error naming its offset and `cellar repair`).
        let (keys, damage) = slf.get().run(py, |db| db.keys_and_damage())?;
        Ok(PyKeyIter {
            db: slf.clone().unbind(),
            keys,
            next: AtomicUsize::new(0),
            damage: std::sync::Mutex::new(damage),
            pages: None,
        })
    }

    /// An iterator over `(key, value)` pairs: on a server store a page at a time (one or two
    /// round trips per page, never the whole namespace in memory); on a file store over a
    /// snapshot of `items()`.
    pub(crate) fn iteritems(slf: &Bound<'_, Self>) -> PyResult<PyItemIter> {
        let py = slf.py();
        let db = slf.get();
        if db.db.backend().kind().is_server() {
            return Ok(PyItemIter {
                db: slf.clone().unbind(),
                state: Mutex::new((std::collections::VecDeque::new(), Some(Vec::new()))),
            });
        }
        let items = db.run(py, |d| d.items())?;
        Ok(PyItemIter {
            db: slf.clone().unbind(),
            state: Mutex::new((items.into_iter().collect(), None)),
        })
    }

    /// dbm.dumb's `iterkeys()`: an iterator over the keys.
    fn iterkeys(slf: &Bound<'_, Self>) -> PyResult<PyKeyIter> {
        Self::__iter__(slf)
    }

    /// Removes every key, as one commit (dbm.gnu/ndbm's and MutableMapping's `clear()`, in
    /// CPython 3.13's test_dbm for every backend; dbm.dumb has it on every version).
    /// Inside a batch block the removals join the batch (with those of the keys the block
    /// has set so far).
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(ops) = self.pending() {
            self.check_writable(py)?;
            let keys = self.run(py, |db| db.keys())?;
            let mut b = lock(&ops);
            let set: Vec<Vec<u8>> = b
                .ops()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k.to_vec())
                .collect();
            for k in keys.into_iter().chain(set) {
                b.remove(k);
            }
            return Ok(());
        }
        self.run(py, |db| {
            if db.is_read_only() {
                return Err(DbmError::ReadOnly);
            }
            let keys = db.keys()?;
            if keys.is_empty() {
                return Ok(());
            }
            let mut b = Batch::new();
            for k in keys {
                b.remove(k);
            }
            db.batch(&b)
        })
    }

    /// The object is initialised once, by `open`: dbm.sqlite3 refuses re-initialisation.
    #[pyo3(name = "__init__", signature = (*_args, **_kwargs))]
    fn reinit(
        &self,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        Err(DbmError_::new_err(
            "DBM object does not support reinitialization",
        ))
    }

    #[pyo3(signature = (key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(k) = self.coerced(key, "keys")? else {
            return Ok(default.unwrap_or_else(|| py.None().into_bound(py)));
        };
        Ok(match self.get_bytes(py, &k)? {
            Some(v) => v.into_any(),
            None => default.unwrap_or_else(|| py.None().into_bound(py)),
        })
    }

    #[pyo3(signature = (key, default = None))]
    fn setdefault<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let k = self.stored(key, "keys", "key")?;
        if let Some(v) = self.get_bytes(py, &k)? {
            return Ok(v.into_any());
        }
        let default = default.unwrap_or_else(|| PyBytes::new(py, b"").into_any());
        let v = self.stored(&default, "values", "value")?;
        self.put(py, &k, &v)?;
        Ok(default)
    }

    /// Makes everything written so far durable.
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        self.run(py, |db| db.sync())
    }

    /// Syncs and closes; closing twice is fine.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.closed.store(true, Ordering::SeqCst);
        self.run(py, |db| db.close())
    }

    /// Reclaims dead space (native: compaction; sqlite3: VACUUM; dumb: rewrites the .dat).
    fn compact(&self, py: Python<'_>) -> PyResult<()> {
        self.run(py, |db| db.compact())
    }

    /// dbm.gnu's `firstkey()`: the first key of a fresh snapshot of the keys, or `None`.
    fn firstkey<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let keys = self.run(py, |db| db.keys())?;
        let first = keys.first().map(|k| PyBytes::new(py, k));
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner()) = Some(KeyCursor::new(keys));
        Ok(first)
    }

    /// dbm.gnu's `nextkey(key)`: the key after `key` in the snapshot `firstkey()` took (a new
    /// snapshot if there is none or `key` is not in it), or `None` at the end.
    fn nextkey<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = as_bytes(key, "keys")?;
        let mut guard = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let known = guard.as_ref().is_some_and(|c| c.pos.contains_key(&*key));
        if !known {
            drop(guard);
            let keys = self.run(py, |db| db.keys())?;
            guard = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
            *guard = Some(KeyCursor::new(keys));
        }
        Ok(guard.as_ref().and_then(|c| {
            let i = *c.pos.get(&*key)?;
            c.keys.get(i + 1).map(|k| PyBytes::new(py, k))
        }))
    }

    /// CPython 3.15's name for [`compact`](Self::compact) (and dbm.gnu's).
    fn reorganize(&self, py: Python<'_>) -> PyResult<()> {
        self.compact(py)
    }

    /// `{'backend': 'dbm.native', 'keys': n, 'file_bytes': n, 'live_bytes': n, 'path': ...}`;
    /// a native store adds its engine figures: `compression_ratio`, `dictionary_bytes`,
    /// `compact_blocks`, `compact_entries`, `block_cache_hits`, `block_cache_misses`,
    /// `block_cache_bytes`, `block_cache_capacity`, `generation`, `dead_bytes`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (info, engine) = self.run(py, |db| Ok((db.info()?, db.engine_stats()?)))?;
        let d = PyDict::new(py);
        d.set_item("backend", info.backend.name())?;
        d.set_item("keys", info.keys)?;
        d.set_item("file_bytes", info.file_bytes)?;
        d.set_item("live_bytes", info.live_bytes)?;
        d.set_item("path", self.db.path())?;
        d.set_item("read_only", self.db.is_read_only())?;
        if let Some(st) = engine {
            d.set_item("compression_ratio", st.compression_ratio)?;
            d.set_item("dictionary_bytes", st.dictionary_bytes)?;
            d.set_item("compact_blocks", st.compact_blocks)?;
            d.set_item("compact_entries", st.compact_entries)?;
            d.set_item("block_cache_hits", st.block_cache_hits)?;
            d.set_item("block_cache_misses", st.block_cache_misses)?;
            d.set_item("block_cache_bytes", st.block_cache_bytes)?;
            d.set_item("block_cache_capacity", st.block_cache_capacity)?;
            d.set_item("generation", st.generation)?;
            d.set_item("dead_bytes", st.dead_bytes)?;
        }
        Ok(d)
    }

    /// A context manager collecting writes that are applied as one atomic commit when the
    /// block exits without an exception (and dropped otherwise): `b[key] = value` and
    /// `del b[key]` on the object it returns, and every write made through this handle while
    /// the block is open (`db[key] = value`, `del db[key]`, `setdefault`, `clear`). Reads see
    /// the store as committed, without the block's writes. A block opened inside another on the
    /// same handle joins the outer one: its writes commit with the outer block, and are
    /// dropped alone if the inner block raises.
    fn batch(slf: Py<Self>) -> PyBatch {
        PyBatch::new(slf)
    }

    /// The backend's stdlib-style module name (`"dbm.native"`, `"dbm.sqlite3"`, `"dbm.dumb"`).
    #[getter]
    fn backend(&self) -> &'static str {
        self.db.backend().name()
    }

    /// How values are encoded, as recorded in a native store's header: `("raw", 0)`,
    /// `("pickle", protocol)`, `("marshal", version)` or `("other", kind)`; `None` for formats
    /// with no header to record it (dumb, sqlite3) and for a closed database.
    #[getter]
    fn value_encoding(&self) -> Option<(&'static str, u8)> {
        self.db.value_encoding().map(|e| match e {
            ValueEncoding::Raw => ("raw", 0),
            ValueEncoding::Pickle { protocol } => ("pickle", protocol),
            ValueEncoding::Marshal { version } => ("marshal", version),
            ValueEncoding::Other { kind, .. } => ("other", kind),
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.close(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "<cellar.dbm.Database {} {:?}>",
            self.db.backend().name(),
            self.db.path()
        )
    }
}

/// `iter(db)`: a snapshot of the keys, checked against `close()` at every step.
#[pyclass(frozen, module = "cellar.dbm", name = "KeyIterator")]
pub struct PyKeyIter {
    db: Py<PyDatabase>,
    keys: Vec<Vec<u8>>,
    next: AtomicUsize,
    /// Raised once, after the last intact key.
    damage: std::sync::Mutex<Option<DbmError>>,
    /// Server stores: keys fetched a page at a time instead of `keys`.
    pages: Option<Mutex<Pages>>,
}

/// The paging state of a server store's key iterator.
struct Pages {
    /// Keys of the current page not yet yielded.
    buf: std::collections::VecDeque<Vec<u8>>,
    /// The cursor of the next page (empty: the first); `None` once the last page is fetched.
    cursor: Option<Vec<u8>>,
}

#[pymethods]
impl PyKeyIter {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        if self.db.get().closed.load(Ordering::SeqCst) {
            return Err(to_py(py, DbmError::Closed));
        }
        if let Some(pages) = &self.pages {
            loop {
                // The lock is never held while the GIL is released (no deadlock with a
                // thread waiting for the GIL).
                let cursor = {
                    let mut p = pages.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(k) = p.buf.pop_front() {
                        return Ok(Some(PyBytes::new(py, &k)));
                    }
                    match p.cursor.take() {
                        Some(c) => c,
                        None => return Ok(None),
                    }
                };
                let page = self.db.get().run(py, |db| db.key_page(&cursor))?;
                let mut p = pages.lock().unwrap_or_else(|e| e.into_inner());
                match page {
                    Some((keys, next)) => {
                        p.buf.extend(keys);
                        p.cursor = next;
                    }
                    None => p.cursor = None,
                }
            }
        }
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        if let Some(k) = self.keys.get(i) {
            return Ok(Some(PyBytes::new(py, k)));
        }
        let damage = self.damage.lock().unwrap_or_else(|e| e.into_inner()).take();
        match damage {
            Some(e) => Err(to_py(py, e)),
            None => Ok(None),
        }
    }
}

/// `db.iteritems()`: `(key, value)` pairs, a page at a time on a server store.
#[pyclass(frozen, module = "cellar.dbm", name = "ItemIterator")]
pub struct PyItemIter {
    db: Py<PyDatabase>,
    /// Pairs of the current page not yet yielded, and the cursor of the next page (`None`
    /// once the last page is fetched).
    #[allow(clippy::type_complexity)]
    state: Mutex<(
        std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
        Option<Vec<u8>>,
    )>,
}

#[pymethods]
impl PyItemIter {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
        Ok(self
            .next_pair(py)?
            .map(|(k, v)| (PyBytes::new(py, &k), PyBytes::new(py, &v))))
    }
}

impl PyItemIter {
    /// The next pair, fetching the next page when the current one is used up.
    pub(crate) fn next_pair(&self, py: Python<'_>) -> PyResult<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            if self.db.get().closed.load(Ordering::SeqCst) {
                return Err(to_py(py, DbmError::Closed));
            }
            // The lock is never held while the GIL is released.
            let cursor = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(pair) = st.0.pop_front() {
                    return Ok(Some(pair));
                }
                match st.1.take() {
                    Some(c) => c,
                    None => return Ok(None),
                }
            };
            let page = self.db.get().run(py, |db| db.item_page(&cursor))?;
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((items, next)) = page {
                st.0.extend(items);
                st.1 = next;
            }
        }
    }
}

/// `db.batch()`: writes gathered in memory, applied together on a clean exit.
#[pyclass(frozen, module = "cellar.dbm", name = "Batch")]
pub struct PyBatch {
    db: Py<PyDatabase>,
    state: Mutex<BatchState>,
}

/// Where a [`PyBatch`] is in its life.
enum BatchState {
    /// Not entered yet: `b[key] = value` gathers here, and joins the block's batch on entry.
    Idle(Batch),
    /// Inside its block: writes go to the handle's open batch. `outer`: this block opened it
    /// and applies it on exit; otherwise it joined an enclosing block's batch holding `mark`
    /// operations then, and drops what it added if it raises.
    Open {
        ops: Pending,
        outer: bool,
        mark: usize,
    },
    /// Exited (applied or dropped).
    Done,
}

impl PyBatch {
    pub(crate) fn new(db: Py<PyDatabase>) -> PyBatch {
        PyBatch {
            db,
            state: Mutex::new(BatchState::Idle(Batch::new())),
        }
    }

    /// Runs `f` on the operations this batch adds to.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Batch) -> T) -> PyResult<T> {
        match &mut *lock(&self.state) {
            BatchState::Idle(b) => Ok(f(b)),
            BatchState::Open { ops, .. } => Ok(f(&mut lock(ops))),
            BatchState::Done => Err(DbmError_::new_err("the batch has already been applied")),
        }
    }

    /// Opens the block: makes this batch the handle's open batch, or joins the one an
    /// enclosing block has open.
    pub(crate) fn enter(&self) -> PyResult<()> {
        let mut st = lock(&self.state);
        let BatchState::Idle(mine) = &mut *st else {
            return Err(DbmError_::new_err("a batch block can be entered only once"));
        };
        let mine = std::mem::take(mine);
        let mut open = lock(&self.db.get().open_batch);
        *st = match &*open {
            Some(ops) => {
                let mut b = lock(ops);
                let mark = b.len();
                for (k, v) in mine.ops() {
                    match v {
                        Some(v) => b.insert(k, v),
                        None => b.remove(k),
                    };
                }
                BatchState::Open {
                    ops: Arc::clone(ops),
                    outer: false,
                    mark,
                }
            }
            None => {
                let ops = Arc::new(Mutex::new(mine));
                *open = Some(Arc::clone(&ops));
                BatchState::Open {
                    ops,
                    outer: true,
                    mark: 0,
                }
            }
        };
        Ok(())
    }

    /// Closes the block: the outermost applies the batch when `ok` (the block raised
    /// nothing) and drops it otherwise; an inner one drops only its own writes when not `ok`.
    pub(crate) fn exit(&self, py: Python<'_>, ok: bool) -> PyResult<()> {
        let st = std::mem::replace(&mut *lock(&self.state), BatchState::Done);
        let BatchState::Open { ops, outer, mark } = st else {
            // Never entered: what a plain `b = db.batch()` gathered is dropped.
            return Ok(());
        };
        if !outer {
            if !ok {
                lock(&ops).truncate(mark);
            }
            return Ok(());
        }
        let db = self.db.get();
        {
            let mut open = lock(&db.open_batch);
            if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, &ops)) {
                *open = None;
            }
        }
        let b = std::mem::take(&mut *lock(&ops));
        if ok && !b.is_empty() {
            db.run(py, |d| d.batch(&b))?;
        }
        Ok(())
    }
}

impl Drop for PyBatch {
    /// A block that was entered and never exited (its object dropped): the handle stops
    /// gathering writes into it, so later writes are not held back forever; what it gathered
    /// is dropped, as on an exception.
    fn drop(&mut self) {
        let st = std::mem::replace(&mut *lock(&self.state), BatchState::Done);
        if let BatchState::Open {
            ops, outer: true, ..
        } = st
        {
            let mut open = lock(&self.db.get().open_batch);
            if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, &ops)) {
                *open = None;
            }
        }
    }
}

#[pymethods]
impl PyBatch {
    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let k = as_bytes(key, "keys")?;
        let v = as_bytes(value, "values")?;
        self.with(|b| {
            b.insert(k, v);
        })
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let k = as_bytes(key, "keys")?;
        self.with(|b| {
            b.remove(k);
        })
    }

    /// The number of operations gathered (by the whole block, when it is open).
    fn __len__(&self) -> PyResult<usize> {
        self.with(|b| b.len())
    }

    fn __enter__(slf: Py<Self>) -> PyResult<Py<Self>> {
        slf.get().enter()?;
        Ok(slf)
    }

    /// Applies the batch if the block raised nothing; otherwise drops it.
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.exit(py, exc_type.is_none())?;
        Ok(false)
    }
}

/// Adds the dbm functions and classes to `cellar._cellar`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_dbm_open, m)?)?;
    m.add_function(wrap_pyfunction!(_dbm_whichdb, m)?)?;
    m.add_function(wrap_pyfunction!(_dbm_open_url, m)?)?;
    m.add_function(wrap_pyfunction!(_dbm_is_url, m)?)?;
    m.add_class::<PyDatabase>()?;
    m.add_class::<PyBatch>()?;
    m.add_class::<PyKeyIter>()?;
    m.add_class::<PyItemIter>()?;
    m.add("DbmError", m.py().get_type::<DbmError_>())?;
    m.add("DbmCorruptError", corrupt_class(m.py())?)?;
    m.add("DbmServerConnectionError", server_conn_class(m.py())?)?;
    m.add("DbmServerTimeoutError", server_timeout_class(m.py())?)?;
    Ok(())
}
