//! `cellar.dbm.sqlite3` on the running interpreter's own SQLite.
//!
//! cellar-dbm's sqlite backend links its own copy of SQLite. Inside a Python process that copy
//! would sit beside the one CPython's `sqlite3` module uses, and two SQLite libraries in one
//! process fight over the same file: POSIX advisory locks belong to the process, so when the
//! interpreter's library closes its descriptor of the file (a `sqlite3.connect(...)` or
//! `dbm.sqlite3.open(...)` opened and closed), the locks of cellar's copy vanish, and that
//! library, believing itself the last user, deletes the `-wal` and `-shm` files under cellar's
//! open connection: cellar's later writes went to an unlinked WAL, invisible to other processes
//! and lost when the process dies. One SQLite library per process coordinates its own
//! connections (it shares one lock state per file), so this backend sends the same SQL as
//! cellar-dbm's (`cellar_dbm::sqlite::STORE_KV` and the rest) through the interpreter's `sqlite3`
//! module: whichever SQLite the interpreter was built with, cellar uses that one.
//!
//! The connection is opened by `cellar.dbm.sqlite3._connect` (Python: the URI, modes and pragmas
//! as CPython's dbm.sqlite3, plus `synchronous=NORMAL`), after the file steps of
//! `cellar_dbm::sqlite::prepare_files`. Each operation runs with the GIL held (the work is
//! Python calls; `sqlite3` itself releases the GIL around SQLite) under the connection's mutex,
//! which a thread only ever waits for with the GIL released (see `PySqliteDb::with`). Python exceptions travel inside `DbmError::External` and are
//! re-raised unchanged by `dbm::to_py`; `sqlite3.Error`s become `cellar.dbm.error` with SQLite's
//! message, as CPython's dbm.sqlite3 raises them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};

use cellar_dbm::sqlite::{DELETE_KEY, GET_SIZE, ITER_ITEMS, ITER_KEYS, LOOKUP_KEY, STORE_KV};
use cellar_dbm::{Backend, Batch, Database, DbmError, Flag, Info, ItemFn, Result};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString, PyTuple};

static SQLITE_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `sqlite3.Error` of the running interpreter.
fn sqlite_error(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    SQLITE_ERROR
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("sqlite3")?.getattr("Error")?.unbind())
        })
        .map(|e| e.bind(py))
}

/// A Python exception as a `DbmError`: `sqlite3.Error` becomes `cellar.dbm.error(str(exc))`
/// (CPython's dbm.sqlite3 does the same); anything else (OverflowError for an int SQLite
/// cannot bind, UnicodeEncodeError...) travels unchanged.
pub(crate) fn external(py: Python<'_>, what: &str, e: PyErr) -> DbmError {
    let e = match sqlite_error(py) {
        Ok(cls) if e.is_instance(py, cls) => {
            let msg = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
            let new = crate::dbm::dbm_error(msg);
            new.set_cause(py, Some(e));
            new
        }
        Ok(_) => e,
        Err(other) => other,
    };
    DbmError::External {
        context: what.to_string(),
        source: Box::new(e),
    }
}

/// A dbm.sqlite3 database on the interpreter's `sqlite3` module.
/// Clones share the connection (`cellar.dbm`'s database object keeps one to coerce keys).
#[derive(Debug, Clone)]
pub(crate) struct PySqliteDb {
    path: PathBuf,
    read_only: bool,
    conn: Arc<Conn>,
}

/// A cursor of the connection (re-used by every statement: a third faster than
/// `Connection.execute`'s new cursor per call); the connection is closed when the last handle goes (a database dropped without `close()`,
/// as the other backends close theirs, rather than leaving it to the `sqlite3.Connection`'s
/// own finalizer and its ResourceWarning).
#[derive(Debug)]
struct Conn(Mutex<Option<Py<PyAny>>>);

impl Drop for Conn {
    fn drop(&mut self) {
        let conn = self.0.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = conn {
            Python::attach(|py| {
                // Nothing to report to at this point; the data is already committed.
                let _ = c
                    .bind(py)
                    .getattr("connection")
                    .and_then(|cx| cx.call_method0("close"));
            });
        }
    }
}

/// The bytes of a column: BLOB as dbm.sqlite3 writes it; TEXT (another writer's) as UTF-8.
fn column_bytes(v: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes().to_vec());
    }
    Ok(v.str()?.to_str()?.as_bytes().to_vec())
}

impl PySqliteDb {
    /// Opens `path` like `dbm.sqlite3.open(path, flag, mode)`.
    pub(crate) fn open(py: Python<'_>, path: &Path, flag: Flag, mode: u32) -> PyResult<PySqliteDb> {
        if path.as_os_str().is_empty() {
            // CPython's dbm.sqlite3 ends up asking SQLite to open the current directory.
            return Err(crate::dbm::dbm_error(
                "unable to open database file (empty filename)".to_string(),
            ));
        }
        let p = path.to_path_buf();
        py.detach(|| cellar_dbm::sqlite::prepare_files(&p, flag, mode))
            .map_err(|e| crate::dbm::to_py(py, e))?;
        let access = match flag.access() {
            cellar_dbm::Access::Read => "r",
            cellar_dbm::Access::Write => "w",
            cellar_dbm::Access::Create | cellar_dbm::Access::New => "c",
        };
        let conn = py
            .import("cellar.dbm.sqlite3")?
            .getattr("_connect")?
            .call1((
                PyBytes::new(py, path.as_os_str().as_encoded_bytes()),
                access,
            ))?;
        let cursor = conn.call_method0("cursor")?;
        Ok(PySqliteDb {
            path: p,
            read_only: access == "r",
            conn: Arc::new(Conn(Mutex::new(Some(cursor.unbind())))),
        })
    }

    /// Runs `f` on the open connection, holding the connection's mutex for the whole call (a
    /// batch's BEGIN..COMMIT must not interleave with another thread's statements). Called with
    /// or without the GIL. The mutex is taken with `try_lock` while holding the GIL; when
    /// another thread has it (that thread is inside `sqlite3`, which released the GIL), this
    /// thread waits for it with the GIL released, so the holder can take the GIL back: no
    /// thread ever blocks on the mutex while holding the GIL.
    fn with<T>(
        &self,
        what: &str,
        f: impl for<'py> FnOnce(Python<'py>, &Bound<'py, PyAny>) -> PyResult<T>,
    ) -> Result<T> {
        Python::attach(|py| {
            let g = loop {
                match self.conn.0.try_lock() {
                    Ok(g) => break g,
                    Err(TryLockError::Poisoned(e)) => break e.into_inner(),
                    Err(TryLockError::WouldBlock) => py.detach(|| {
                        drop(self.conn.0.lock());
                    }),
                }
            };
            match g.as_ref() {
                Some(c) => f(py, c.bind(py)).map_err(|e| external(py, what, e)),
                None => Err(DbmError::Closed),
            }
        })
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(DbmError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// `CAST(? AS BLOB)` of any object SQLite can bind (how dbm.sqlite3 stores an int or a
    /// float: 42 -> b'42', 1.5 -> b'1.5', True -> b'1'); `None` for NULL.
    pub(crate) fn coerce(&self, obj: Py<PyAny>) -> Result<Option<Vec<u8>>> {
        self.with("converting a key or value", |py, c| {
            let row = c
                .call_method1("execute", ("SELECT CAST(? AS BLOB)", (obj.bind(py),)))?
                .call_method0("fetchone")?;
            let v = row.get_item(0)?;
            if v.is_none() {
                Ok(None)
            } else {
                column_bytes(&v).map(Some)
            }
        })
    }
}

fn args1<'py>(py: Python<'py>, k: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, [PyBytes::new(py, k)])
}

impl Database for PySqliteDb {
    fn backend(&self) -> Backend {
        Backend::Sqlite3
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with("reading a key", |py, c| {
            let row = c
                .call_method1("execute", (LOOKUP_KEY, args1(py, key)?))?
                .call_method0("fetchone")?;
            if row.is_none() {
                Ok(None)
            } else {
                column_bytes(&row.get_item(0)?).map(Some)
            }
        })
    }
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.with("writing a key", |_, _| Ok(()))?;
        self.writable()?;
        self.with("writing a key", |py, c| {
            let args = PyTuple::new(py, [PyBytes::new(py, key), PyBytes::new(py, value)])?;
            c.call_method1("execute", (STORE_KV, args))?;
            Ok(())
        })
    }
    fn remove(&self, key: &[u8]) -> Result<bool> {
        self.with("deleting a key", |_, _| Ok(()))?;
        self.writable()?;
        self.with("deleting a key", |py, c| {
            let cur = c.call_method1("execute", (DELETE_KEY, args1(py, key)?))?;
            Ok(cur.getattr("rowcount")?.extract::<i64>()? > 0)
        })
    }
    fn len(&self) -> Result<usize> {
        self.with("counting keys", |_, c| {
            c.call_method1("execute", (GET_SIZE,))?
                .call_method0("fetchone")?
                .get_item(0)?
                .extract::<usize>()
        })
    }
    fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.with("listing keys", |_, c| {
            let mut out = Vec::new();
            for row in c.call_method1("execute", (ITER_KEYS,))?.try_iter()? {
                out.push(column_bytes(&row?.get_item(0)?)?);
            }
            Ok(out)
        })
    }
    fn for_each(&self, f: &mut ItemFn<'_>) -> Result<()> {
        let mut err = None;
        self.with("reading items", |_, c| {
            for row in c.call_method1("execute", (ITER_ITEMS,))?.try_iter()? {
                let row = row?;
                let k = column_bytes(&row.get_item(0)?)?;
                let v = column_bytes(&row.get_item(1)?)?;
                if let Err(e) = f(&k, &v) {
                    err = Some(e);
                    break;
                }
            }
            Ok(())
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    fn batch(&self, batch: &Batch) -> Result<()> {
        self.with("writing a batch", |_, _| Ok(()))?;
        self.writable()?;
        self.with("writing a batch", |py, c| {
            c.call_method1("execute", ("BEGIN IMMEDIATE",))?;
            let run = || -> PyResult<()> {
                for (k, v) in batch.ops() {
                    match v {
                        Some(v) => {
                            let args =
                                PyTuple::new(py, [PyBytes::new(py, k), PyBytes::new(py, v)])?;
                            c.call_method1("execute", (STORE_KV, args))?
                        }
                        None => c.call_method1("execute", (DELETE_KEY, args1(py, k)?))?,
                    };
                }
                c.call_method1("execute", ("COMMIT",))?;
                Ok(())
            };
            run().inspect_err(|_| {
                // The batch's own error is the one to report.
                let _ = c.call_method1("execute", ("ROLLBACK",));
            })
        })
    }
    fn sync(&self) -> Result<()> {
        self.with("syncing", |_, _| Ok(()))?;
        if self.read_only {
            return Ok(());
        }
        self.with("syncing", |_, c| {
            // Copies the WAL into the database with fsyncs; harmless in rollback-journal mode.
            c.call_method1("execute", ("PRAGMA wal_checkpoint(FULL)",))?
                .call_method0("fetchall")?;
            Ok(())
        })
    }
    fn close(&self) -> Result<()> {
        let closed = self.with("closing", |_, c| {
            c.getattr("connection")?.call_method0("close")?;
            Ok(())
        });
        match closed {
            Ok(()) | Err(DbmError::Closed) => {}
            Err(e) => return Err(e),
        }
        // Only now (the mutex is free again): later calls see a closed database.
        Python::attach(|py| {
            let taken = loop {
                match self.conn.0.try_lock() {
                    Ok(mut g) => break g.take(),
                    Err(TryLockError::Poisoned(e)) => break e.into_inner().take(),
                    Err(TryLockError::WouldBlock) => py.detach(|| {
                        drop(self.conn.0.lock());
                    }),
                }
            };
            drop(taken);
        });
        Ok(())
    }
    fn compact(&self) -> Result<()> {
        self.with("compacting", |_, _| Ok(()))?;
        self.writable()?;
        self.with("compacting (VACUUM)", |_, c| {
            c.call_method1("execute", ("VACUUM",))?;
            Ok(())
        })
    }
    fn info(&self) -> Result<Info> {
        let (keys, live) = self.with("measuring", |_, c| {
            c.call_method1(
                "execute",
                ("SELECT COUNT(*), COALESCE(SUM(LENGTH(key) + LENGTH(value)), 0) FROM Dict",),
            )?
            .call_method0("fetchone")?
            .extract::<(u64, u64)>()
        })?;
        let mut file_bytes = 0;
        for suffix in ["", "-wal"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            if let Ok(md) = std::fs::metadata(&p) {
                file_bytes += md.len();
            }
        }
        Ok(Info {
            backend: Backend::Sqlite3,
            keys,
            file_bytes,
            live_bytes: live,
        })
    }
}
