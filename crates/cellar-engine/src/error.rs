//! Errors of the engine. Every variant has a Display text that says what happened and, where it
//! helps, where in the file and what to do next.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error, with what the engine was doing.
    Io { context: String, source: io::Error },
    /// Another handle (possibly in another process) holds the writer lock for its whole life:
    /// an exclusive writer (`Options::exclusive`), or, for an exclusive open (`shared` false),
    /// any writer.
    Locked {
        path: PathBuf,
        pid: Option<u32>,
        /// The refused open was a shared-mode one (it waited for an exclusive writer).
        shared: bool,
    },
    /// Shared mode: another writer held the store's write lock (one commit at a time) for
    /// longer than the handle's lock timeout.
    Busy {
        path: PathBuf,
        pid: Option<u32>,
        waited: std::time::Duration,
    },
    /// The file does not start with a valid cellar header.
    BadHeader { path: PathBuf, reason: String },
    /// The file was written by a newer, incompatible format version.
    UnsupportedVersion { version: u32, flags: u32 },
    /// A record failed its checksum or could not be parsed.
    Corrupt { offset: u64, reason: String },
    /// The path names something other than a regular file (a FIFO, socket, device, directory).
    NotAFile { path: PathBuf, kind: &'static str },
    /// The store does not exist and `create` was not set.
    NotFound { path: PathBuf },
    /// A mutation on a read-only handle.
    ReadOnly,
    /// A mutation through a writer handle inherited across `fork()`.
    Forked { owner_pid: u32, pid: u32 },
    /// An earlier I/O failure left this handle unable to guarantee the log's state.
    Poisoned { reason: String },
    /// A key or value exceeds the engine's limits.
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// An operation that this storage backend cannot do (e.g. compaction on in-memory storage).
    Unsupported(&'static str),
    /// The handle was closed.
    Closed,
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corrupt(offset: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            offset,
            reason: reason.into(),
        }
    }

    /// The raw OS error code, when this is an I/O error (e.g. `ENOSPC`).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "I/O error while {context}: {source}"),
            Error::Locked {
                path,
                pid: Some(pid),
                shared: false,
            } => write!(
                f,
                "store {} is locked for writing by process {pid}; an exclusive writer needs \
                 the store to itself (open it read-only, close the other writer, or open \
                 without exclusive so that writers take turns per commit)",
                path.display()
            ),
            Error::Locked {
                path,
                pid: Some(pid),
                shared: true,
            } => write!(
                f,
                "store {} is locked for writing by process {pid}, an exclusive writer; \
                 shared writers wait for it to close (open it read-only, or raise the timeout)",
                path.display()
            ),
            Error::Locked {
                path, pid: None, ..
            } => write!(
                f,
                "store {} is locked for writing by another handle (holder pid unknown)",
                path.display()
            ),
            Error::Busy { path, pid, waited } => {
                write!(
                    f,
                    "timed out after {:.3} s waiting for the write lock of store {}",
                    waited.as_secs_f64(),
                    path.display()
                )?;
                match pid {
                    Some(pid) => write!(f, ", held by process {pid}")?,
                    None => write!(f, ", held by another writer")?,
                }
                write!(
                    f,
                    " (writers take turns per commit; raise the timeout, or make that \
                     process commit in smaller pieces)"
                )
            }
            Error::BadHeader { path, reason } => write!(
                f,
                "{} is not a readable cellar store: {reason} (`cellar repair PATH NEW` salvages \
                 its records)",
                path.display()
            ),
            Error::UnsupportedVersion { version, flags } => write!(
                f,
                "store uses format version {version} (flags {flags:#x}); this build reads versions 1 \
                 to {}",
                crate::format::FORMAT_VERSION
            ),
            Error::Corrupt { offset, reason } => write!(
                f,
                "store is damaged at byte offset {offset}: {reason} (`cellar check PATH` \
                 reports the damage, `cellar repair PATH NEW` copies every intact record into a \
                 new store)"
            ),
            Error::NotAFile { path, kind } => write!(
                f,
                "{} is a {kind}, not a regular file; a store is always a regular file",
                path.display()
            ),
            Error::NotFound { path } => write!(
                f,
                "store {} does not exist (open with create to make one)",
                path.display()
            ),
            Error::ReadOnly => write!(f, "store was opened read-only; mutations are refused"),
            Error::Forked { owner_pid, pid } => write!(
                f,
                "this writer handle was opened by process {owner_pid} and inherited by process \
                 {pid} through fork(); a forked child must open its own handle (reopen the \
                 store in the child: many processes may write to one store)"
            ),
            Error::Poisoned { reason } => write!(
                f,
                "store handle refuses writes after an earlier I/O failure ({reason}); close and \
                 reopen it to recover"
            ),
            Error::TooLarge { what, len, max } => {
                write!(f, "{what} of {len} bytes exceeds the limit of {max} bytes")
            }
            Error::Unsupported(what) => write!(f, "{what} is not supported by this storage"),
            Error::Closed => write!(f, "store handle is closed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
