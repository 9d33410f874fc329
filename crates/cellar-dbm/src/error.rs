//! The dbm layer's error type. Every variant has a Display text that says what happened; the
//! texts CPython's `dbm` prints are reproduced word for word where a caller may match on them.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Result alias of the dbm layer.
pub type Result<T, E = DbmError> = std::result::Result<T, E>;

/// Which Python exception a [`DbmError`] corresponds to (for the Python bindings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyErrorKind {
    /// `dbm.error` (the backend's error class; `dbm.error[0]` at the top level).
    Dbm,
    /// `ValueError` (a bad flag, an operation on a closed database where CPython raises it).
    Value,
    /// `OSError` (or the errno subclass: see [`DbmError::raw_os_error`]).
    Os,
}

/// Everything the dbm layer can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum DbmError {
    /// `open` with `'r'` or `'w'` and no database at the path.
    DoesNotExist { path: PathBuf },
    /// `whichdb` found a file but not a format it knows.
    Undetermined { path: PathBuf },
    /// A known format that cellar cannot open.
    Unavailable { path: PathBuf, kind: &'static str },
    /// A write, or an open for writing, of a legacy (`dbm.gnu` / `dbm.ndbm`) database, which
    /// cellar reads only.
    LegacyReadOnly { path: PathBuf, kind: &'static str },
    /// A legacy file that cannot be read (damaged, or a variant cellar refuses).
    Legacy {
        path: PathBuf,
        source: cellar_legacy::Error,
    },
    /// A flag string or modifier the backend does not accept (Python: `ValueError`).
    BadFlag { flag: String, message: String },
    /// A mutation on a database opened with `'r'`.
    ReadOnly,
    /// Any operation after `close()`.
    Closed,
    /// An operation the backend does not have.
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
    /// An operating-system error, with what was being done.
    Io { context: String, source: io::Error },
    /// A dbm.dumb file that cannot be read as CPython writes it.
    Corrupt { path: PathBuf, message: String },
    /// The native engine failed.
    Engine(cellar_engine::Error),
    /// SQLite failed.
    Sqlite {
        context: String,
        source: rusqlite::Error,
    },
    /// A server backend (Redis, Redis Cluster, PostgreSQL) failed. `target` is the URL with
    /// any password replaced by `***`; `kind` says what kind of failure it is. After
    /// [`ServerErrorKind::ConnectionLost`], [`ServerErrorKind::Timeout`] or
    /// [`ServerErrorKind::Failover`] the next call reconnects.
    Server {
        backend: &'static str,
        kind: crate::server::ServerErrorKind,
        target: String,
        message: String,
    },
    /// A backend implemented outside this crate failed (the Python package's sqlite backend,
    /// which runs on the interpreter's own `sqlite3` module, reports the Python exception
    /// here so that the bindings re-raise it unchanged).
    External {
        context: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DbmError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> DbmError {
        DbmError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn legacy(path: &std::path::Path, source: cellar_legacy::Error) -> DbmError {
        match source {
            cellar_legacy::Error::Io { path, source } => DbmError::Io {
                context: format!("reading {}", path.display()),
                source,
            },
            source => DbmError::Legacy {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    pub(crate) fn sqlite(context: impl Into<String>, source: rusqlite::Error) -> DbmError {
        DbmError::Sqlite {
            context: context.into(),
            source,
        }
    }

    /// The OS error code behind this error, if any (`ENOENT` -> Python's `FileNotFoundError`).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            DbmError::Io { source, .. } => source.raw_os_error(),
            DbmError::Engine(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// The kind of a server failure, if this is one.
    pub fn server_kind(&self) -> Option<crate::server::ServerErrorKind> {
        match self {
            DbmError::Server { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// The Python exception class the bindings should raise.
    pub fn py_kind(&self) -> PyErrorKind {
        match self {
            DbmError::BadFlag { .. } => PyErrorKind::Value,
            DbmError::Io { .. } => PyErrorKind::Os,
            _ => PyErrorKind::Dbm,
        }
    }
}

impl fmt::Display for DbmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbmError::DoesNotExist { .. } => {
                write!(
                    f,
                    "db file doesn't exist; use 'c' or 'n' flag to create a new db"
                )
            }
            DbmError::Undetermined { .. } => write!(f, "db type could not be determined"),
            DbmError::Unavailable { path, kind } => write!(
                f,
                "db type is {kind}, but the module is not available ({})",
                path.display()
            ),
            DbmError::LegacyReadOnly { path, kind } => write!(
                f,
                "{kind} files are read-only in cellar (open them with flag 'r'); \
                 `cellar convert {} NEW` migrates it to cellar's native format",
                path.display()
            ),
            DbmError::Legacy { path, source } => write!(f, "{}: {source}", path.display()),
            DbmError::BadFlag { message, .. } => f.write_str(message),
            DbmError::ReadOnly => write!(f, "The database is opened for reading only"),
            DbmError::Closed => write!(f, "DBM object has already been closed"),
            DbmError::Unsupported { backend, what } => {
                write!(f, "{backend} does not support {what}")
            }
            DbmError::Io { context, source } => write!(f, "{source} (while {context})"),
            DbmError::Corrupt { path, message } => {
                write!(f, "{}: {message}", path.display())
            }
            DbmError::Engine(e) => write!(f, "{e}"),
            DbmError::Sqlite { context, source } => write!(f, "{source} (while {context})"),
            DbmError::External { context, source } => write!(f, "{source} (while {context})"),
            DbmError::Server {
                backend,
                kind,
                target,
                message,
            } => write!(f, "{backend} at {target}: {kind}: {message}"),
        }
    }
}

impl std::error::Error for DbmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbmError::Io { source, .. } => Some(source),
            DbmError::Engine(e) => Some(e),
            DbmError::Sqlite { source, .. } => Some(source),
            DbmError::External { source, .. } => Some(&**source),
            DbmError::Legacy { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<cellar_engine::Error> for DbmError {
    fn from(e: cellar_engine::Error) -> DbmError {
        match e {
            cellar_engine::Error::ReadOnly => DbmError::ReadOnly,
            cellar_engine::Error::Closed => DbmError::Closed,
            e => DbmError::Engine(e),
        }
    }
}
