//! cellar's dbm layer: one small [`Database`] trait over every store, CPython's
//! `dbm.open(path, flag, mode)` semantics ([`open`]) and `dbm.whichdb` ([`whichdb`]).
//!
//! Backends:
//! * [`Backend::Native`] — cellar's engine (`cellar-engine`), the default for new stores: one
//!   file at exactly the given path.
//! * [`Backend::Sqlite3`] — file-compatible with CPython 3.13's `dbm.sqlite3`, without its
//!   one-fsync-per-write cost; a batch is one transaction.
//! * [`Backend::Dumb`] — file-compatible with `dbm.dumb` (`.dat`/`.dir`/`.bak`), made crash
//!   safe: every acknowledged write survives `kill -9`.
//!
//! * [`Backend::Gnu`] / [`Backend::Ndbm`] — legacy `dbm.gnu` (GDBM) and `dbm.ndbm` (Berkeley DB
//!   hash `NAME.db` from libdb 3-6 or 1.85, or gdbm_compat's `NAME.pag`/`NAME.dir`) files,
//!   read-only and without any C
//!   library (`cellar-legacy`). Opening one for writing, or writing to it, fails with
//!   [`DbmError::LegacyReadOnly`], which names `cellar convert`.
//!
//! * [`Backend::Redis`], [`Backend::RedisCluster`], [`Backend::Postgres`] — a store on a
//!   server, opened by URL wherever a path is accepted (`redis://host:6379/0?prefix=app:`,
//!   `redis+cluster://h1:7000,h2:7001/?prefix=app:`, `postgresql://user@host/db?table=t`): see
//!   [`server`] and `docs/servers.md`.
//!
//! Keys and values are bytes; the Python layer encodes `str` as UTF-8 like CPython. The format
//! details and crash-safety arguments are in `docs/dbm.md`.
//!
//! ```
//! use cellar_dbm::{open, Flag};
//! let dir = tempfile::tempdir().unwrap();
//! let db = open(dir.path().join("db"), Flag::Create, 0o666).unwrap();
//! db.insert(b"key", b"value").unwrap();
//! assert_eq!(db.get(b"key").unwrap().as_deref(), Some(&b"value"[..]));
//! assert_eq!(cellar_dbm::whichdb(dir.path().join("db")).as_python(), Some("dbm.native"));
//! db.close().unwrap();
//! ```
#![forbid(unsafe_code)]

mod dumb;
mod error;
mod flag;
mod legacy;
mod native;
mod perm;
pub mod server;
pub mod sqlite;
mod whichdb;

use std::fmt;
use std::path::Path;

pub use crate::dumb::Placement;
pub use crate::error::{DbmError, PyErrorKind, Result};
pub use crate::flag::{Access, Flag};
pub use crate::legacy::{legacy_file, open_legacy};
pub use crate::native::WriterOptions;
pub use crate::server::{is_server_url, redact_url, ServerErrorKind};
pub use crate::whichdb::{whichdb, DbKind, WhichDb, NATIVE_MAGIC};
pub use cellar_engine::ValueEncoding;
pub use cellar_legacy::{LegacyDb, Report as LegacyReport};

/// The default permission bits of created files (CPython's `mode=0o666`).
pub const DEFAULT_MODE: u32 = 0o666;

/// The backends cellar can open for writing, in the order of CPython's `dbm._names` (the
/// default first).
pub const BACKENDS: [Backend; 3] = [Backend::Native, Backend::Sqlite3, Backend::Dumb];

/// A backend: the three writable formats and the two legacy ones cellar reads only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The native engine.
    Native,
    /// CPython 3.13's dbm.sqlite3 format.
    Sqlite3,
    /// dbm.dumb's format.
    Dumb,
    /// GNU dbm files (read-only).
    Gnu,
    /// ndbm files: Berkeley DB hash or gdbm_compat (read-only).
    Ndbm,
    /// A store on a Redis server (`redis://`).
    Redis,
    /// A store on a Redis Cluster (`redis+cluster://`).
    RedisCluster,
    /// A store in a PostgreSQL table (`postgresql://`).
    Postgres,
}

impl Backend {
    /// The stdlib-style module name (`"dbm.native"`, `"dbm.sqlite3"`, `"dbm.dumb"`).
    pub fn name(self) -> &'static str {
        self.kind().name()
    }

    /// The matching [`DbKind`].
    pub fn kind(self) -> DbKind {
        match self {
            Backend::Native => DbKind::Native,
            Backend::Sqlite3 => DbKind::Sqlite3,
            Backend::Dumb => DbKind::Dumb,
            Backend::Gnu => DbKind::Gnu,
            Backend::Ndbm => DbKind::Ndbm,
            Backend::Redis => DbKind::Redis,
            Backend::RedisCluster => DbKind::RedisCluster,
            Backend::Postgres => DbKind::Postgres,
        }
    }

    /// Whether cellar can write this format (false for the legacy gnu and ndbm).
    pub fn is_writable(self) -> bool {
        self.kind().is_writable()
    }

    /// The backend for a kind `whichdb` reported, if cellar can open it (every kind today).
    pub fn from_kind(kind: DbKind) -> Option<Backend> {
        match kind {
            DbKind::Native => Some(Backend::Native),
            DbKind::Sqlite3 => Some(Backend::Sqlite3),
            DbKind::Dumb => Some(Backend::Dumb),
            DbKind::Gnu => Some(Backend::Gnu),
            DbKind::Ndbm => Some(Backend::Ndbm),
            DbKind::Redis => Some(Backend::Redis),
            DbKind::RedisCluster => Some(Backend::RedisCluster),
            DbKind::Postgres => Some(Backend::Postgres),
        }
    }

    /// Parses a CPython flag string the way this backend's CPython counterpart checks it
    /// (dbm.dumb and dbm.sqlite3 take exactly `r w c n`, with their own messages; the native
    /// backend and gnu accept gnu's `f s u` modifiers; ndbm takes `r w c n` only).
    pub fn parse_flag(self, s: &str) -> Result<Flag> {
        match self {
            Backend::Native | Backend::Gnu => Flag::parse(s),
            Backend::Ndbm => match s {
                "r" | "w" | "c" | "n" => Flag::parse(s),
                _ => Err(DbmError::BadFlag {
                    flag: s.to_string(),
                    message: "arg 2 to open should be 'r', 'w', 'c', or 'n'".to_string(),
                }),
            },
            Backend::Dumb => match s {
                "r" | "w" | "c" | "n" => Flag::parse(s),
                _ => Err(dumb::bad_flag(s)),
            },
            Backend::Sqlite3 => match s {
                "r" | "w" | "c" | "n" => Flag::parse(s),
                _ => Err(sqlite::bad_flag(s)),
            },
            Backend::Redis | Backend::RedisCluster | Backend::Postgres => {
                let f = Flag::parse(s)?;
                server::check_flag(f)?;
                Ok(f)
            }
        }
    }

    /// Opens (or creates) a database of this backend at `path`, like the backend module's
    /// own `open` (`dbm.dumb.open`, `dbm.sqlite3.open`): no format detection.
    pub fn open(self, path: impl AsRef<Path>, flag: Flag, mode: u32) -> Result<Box<dyn Database>> {
        self.open_with(path, flag, mode, ValueEncoding::Raw)
    }

    /// [`Backend::open`], recording `encoding` in the header of a store this call creates (the
    /// native backend only: the other formats have nowhere to record it, and their values are
    /// pickles by convention when a shelf uses them).
    pub fn open_with(
        self,
        path: impl AsRef<Path>,
        flag: Flag,
        mode: u32,
        encoding: ValueEncoding,
    ) -> Result<Box<dyn Database>> {
        self.open_writers(path, flag, mode, encoding, WriterOptions::default())
    }

    /// [`Backend::open_with`] with the native backend's [`WriterOptions`] (the other backends
    /// ignore them).
    pub fn open_writers(
        self,
        path: impl AsRef<Path>,
        flag: Flag,
        mode: u32,
        encoding: ValueEncoding,
        writers: WriterOptions,
    ) -> Result<Box<dyn Database>> {
        let path = path.as_ref();
        Ok(match self {
            Backend::Native => {
                Box::new(native::NativeDb::open(path, flag, mode, encoding, writers)?)
            }
            Backend::Sqlite3 => Box::new(sqlite::SqliteDb::open(path, flag, mode)?),
            Backend::Dumb => Box::new(dumb::DumbDb::open(path, flag, mode, Placement::Safe)?),
            Backend::Gnu | Backend::Ndbm => Box::new(legacy::LegacyStore::open(path, self, flag)?),
            Backend::Redis | Backend::RedisCluster | Backend::Postgres => {
                return match server::url_of(path) {
                    Some(url) => server::open(url, flag, encoding),
                    None => Err(DbmError::Unsupported {
                        backend: self.name(),
                        what: "file paths (open it by URL: redis://, redis+cluster://, \
                               postgresql://)",
                    }),
                }
            }
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A group of writes applied together with [`Database::batch`]: atomically for the native
/// and sqlite backends, and for dumb against a process crash (see `docs/dbm.md`).
///
/// The keys and values are copied into one buffer (no allocation per operation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Every operation's key, then its value (if it is a put), back to back.
    buf: Vec<u8>,
    ops: Vec<Op>,
}

/// Where one operation's bytes lie in [`Batch::buf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Op {
    start: usize,
    key_len: usize,
    /// `None`: a delete.
    value_len: Option<usize>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Stores `value` under `key`.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Batch {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.ops.push(Op {
            start: self.buf.len(),
            key_len: key.len(),
            value_len: Some(value.len()),
        });
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
        self
    }

    /// Deletes `key` (no error if it is missing).
    pub fn remove(&mut self, key: impl AsRef<[u8]>) -> &mut Batch {
        let key = key.as_ref();
        self.ops.push(Op {
            start: self.buf.len(),
            key_len: key.len(),
            value_len: None,
        });
        self.buf.extend_from_slice(key);
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations in order: `(key, Some(value))` to store, `(key, None)` to delete.
    pub fn ops(&self) -> impl ExactSizeIterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        self.ops.iter().map(|op| {
            let k1 = op.start + op.key_len;
            (
                &self.buf[op.start..k1],
                op.value_len.map(|n| &self.buf[k1..k1 + n]),
            )
        })
    }

    /// Removes every operation.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.buf.clear();
    }

    /// Keeps the first `len` operations and drops the rest (a savepoint's rollback).
    pub fn truncate(&mut self, len: usize) {
        if let Some(op) = self.ops.get(len) {
            self.buf.truncate(op.start);
            self.ops.truncate(len);
        }
    }
}

/// Sizes reported by [`Database::info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The backend.
    pub backend: Backend,
    /// Live keys.
    pub keys: u64,
    /// Total bytes of the files that make up the database.
    pub file_bytes: u64,
    /// Bytes held by live keys and values (approximate for sqlite).
    pub live_bytes: u64,
}

/// Callback type of [`Database::for_each`]; return an error to stop early.
pub type ItemFn<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// An open dbm database. Every method takes `&self`: objects are `Send + Sync` and may be
/// shared between threads (wrap the box in an `Arc`). After [`close`](Database::close), every
/// operation fails with [`DbmError::Closed`]; closing twice is fine.
pub trait Database: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// The path given to `open`.
    fn path(&self) -> &Path;
    /// True when opened with `'r'`.
    fn is_read_only(&self) -> bool;
    /// The value stored under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Calls `f` with the value stored under `key` and returns whether there was one; a
    /// backend that can lend the bytes where they lie (the native engine: the mapped file or a
    /// cached block) makes no copy of its own.
    fn get_into(&self, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool> {
        Ok(match self.get(key)? {
            Some(v) => {
                f(&v);
                true
            }
            None => false,
        })
    }
    /// [`get_into`](Self::get_into) unless it would first wait for another thread (one
    /// closing the database): `None` then, and nothing was read. For callers that must not
    /// block while holding something else (Python's GIL).
    fn get_into_now(&self, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<Option<bool>> {
        self.get_into(key, f).map(Some)
    }
    /// Stores `value` under `key`; when this returns the write has reached the OS (it survives
    /// the process being killed).
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Deletes `key`; returns whether it was present (Python raises `KeyError` on `false`).
    fn remove(&self, key: &[u8]) -> Result<bool>;
    /// Whether `key` is present.
    fn contains(&self, key: &[u8]) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }
    /// Number of keys.
    fn len(&self) -> Result<usize>;
    /// True when there are no keys.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// All keys (a snapshot, in the backend's order: dumb and sqlite as CPython lists them).
    fn keys(&self) -> Result<Vec<Vec<u8>>>;
    /// Every readable key, and the error that [`Database::keys`] would give for damaged records
    /// (native stores: a damaged record does not hide the intact ones). Other backends: `keys()`.
    fn keys_and_damage(&self) -> Result<(Vec<Vec<u8>>, Option<DbmError>)> {
        Ok((self.keys()?, None))
    }
    /// Calls `f` for every `(key, value)` pair.
    fn for_each(&self, f: &mut ItemFn<'_>) -> Result<()>;
    /// All `(key, value)` pairs.
    fn items(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.for_each(&mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }
    /// Applies every operation of `batch` (see [`Batch`] for atomicity).
    fn batch(&self, batch: &Batch) -> Result<()>;
    /// Makes everything written so far durable (survives power loss), and for dumb writes the
    /// compact `.dir` like CPython's `sync()`. A no-op on read-only databases.
    fn sync(&self) -> Result<()>;
    /// Syncs and closes. Idempotent.
    fn close(&self) -> Result<()>;
    /// Reclaims dead space (native: engine compaction; sqlite: `VACUUM`; dumb: live values
    /// rewritten packed, with a commit point that the next open finishes or discards).
    /// Read-only legacy formats return an error naming `cellar convert`.
    fn compact(&self) -> Result<()>;
    /// Sizes and counts.
    fn info(&self) -> Result<Info>;
    /// How the layer above encodes values, when the format records it (the native engine's
    /// header); `None` for formats that cannot say.
    fn value_encoding(&self) -> Option<ValueEncoding> {
        None
    }
    /// The native engine's figures (compact section, compression ratio, dictionary, block
    /// cache); `None` for every other backend.
    fn engine_stats(&self) -> Result<Option<cellar_engine::Stats>> {
        Ok(None)
    }
    /// One page of keys for cursor-driven iteration, for backends that page (the servers):
    /// start with an empty `cursor`; returns the keys of this page and the cursor of the next
    /// (`None` at the end). `Ok(None)`: the backend does not page; use [`Database::keys`].
    /// Keys written or deleted during a walk may or may not be seen; keys present throughout
    /// are seen exactly once (the servers walk their keys in byte order from the last one seen).
    #[allow(clippy::type_complexity)]
    fn key_page(&self, cursor: &[u8]) -> Result<Option<(Vec<Vec<u8>>, Option<Vec<u8>>)>> {
        let _ = cursor;
        Ok(None)
    }
    /// [`Database::key_page`] with the values: one page of `(key, value)` pairs (one round
    /// trip or two on a server) and the next cursor. `Ok(None)`: the backend does not page.
    #[allow(clippy::type_complexity)]
    fn item_page(
        &self,
        cursor: &[u8],
    ) -> Result<Option<(Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>)>> {
        let _ = cursor;
        Ok(None)
    }
}

/// Opens the database at `path` like CPython's `dbm.open(path, flag, mode)`: unless the flag is
/// `'n'`, [`whichdb`] picks the backend; a missing database is created with the default
/// backend (native) for `'c'`/`'n'` and is an error for `'r'`/`'w'`; an unknown file is
/// "db type could not be determined"; gnu/ndbm files open read-only with `'r'`, and any other
/// flag on them (`'n'` included: it would destroy the file) is [`DbmError::LegacyReadOnly`].
/// The flag is then checked by the backend as its CPython counterpart does.
pub fn open(path: impl AsRef<Path>, flag: Flag, mode: u32) -> Result<Box<dyn Database>> {
    open_with(path, flag, mode, ValueEncoding::Raw)
}

/// [`open`], recording `encoding` in the header when a new native store is created (how
/// `cellar::shelve` marks a store as a shelf of pickles or marshal data). An existing store
/// keeps the encoding it was created with: see [`Database::value_encoding`].
pub fn open_with(
    path: impl AsRef<Path>,
    flag: Flag,
    mode: u32,
    encoding: ValueEncoding,
) -> Result<Box<dyn Database>> {
    open_writers(path, flag, mode, encoding, WriterOptions::default())
}

/// [`open_with`] with the native backend's [`WriterOptions`] (other backends ignore them).
pub fn open_writers(
    path: impl AsRef<Path>,
    flag: Flag,
    mode: u32,
    encoding: ValueEncoding,
    writers: WriterOptions,
) -> Result<Box<dyn Database>> {
    let path = path.as_ref();
    if let Some(url) = server::url_of(path) {
        // A server URL: the scheme names the backend; 'n' empties only that namespace.
        return server::open(url, flag, encoding);
    }
    let which = if flag.access() == Access::New {
        match whichdb(path) {
            WhichDb::Kind(k @ (DbKind::Gnu | DbKind::Ndbm)) => {
                let b = Backend::from_kind(k).unwrap_or(Backend::Gnu);
                return Err(legacy::read_only(path, b));
            }
            _ => WhichDb::Unreadable,
        }
    } else {
        whichdb(path)
    };
    let backend = match which {
        WhichDb::Unreadable => match flag.access() {
            Access::Create | Access::New => Backend::Native,
            Access::Read | Access::Write => {
                return Err(DbmError::DoesNotExist {
                    path: path.to_path_buf(),
                })
            }
        },
        WhichDb::Unknown => {
            return Err(DbmError::Undetermined {
                path: path.to_path_buf(),
            })
        }
        WhichDb::Kind(kind) => match Backend::from_kind(kind) {
            Some(b) => b,
            None => {
                return Err(DbmError::Unavailable {
                    path: path.to_path_buf(),
                    kind: kind.name(),
                })
            }
        },
    };
    backend.parse_flag(&flag.to_string())?;
    backend.open_writers(path, flag, mode, encoding, writers)
}

/// Opens a dbm.dumb database choosing where overwrites go ([`Placement`]; `Backend::Dumb.open`
/// uses [`Placement::Safe`]).
pub fn open_dumb(
    path: impl AsRef<Path>,
    flag: Flag,
    mode: u32,
    placement: Placement,
) -> Result<Box<dyn Database>> {
    Ok(Box::new(dumb::DumbDb::open(
        path.as_ref(),
        flag,
        mode,
        placement,
    )?))
}

/// [`open`] with a CPython flag string (`"c"`, `"cf"`, `"ru"`...).
pub fn open_str(path: impl AsRef<Path>, flag: &str, mode: u32) -> Result<Box<dyn Database>> {
    let f = Flag::parse(flag)?;
    open(path, f, mode)
}

#[cfg(test)]
mod tests {
    use super::Batch;

    #[test]
    fn a_batch_gives_back_its_operations_in_order_and_truncates_to_a_savepoint() {
        let mut b = Batch::new();
        b.insert(b"k1", b"v1")
            .remove("k2")
            .insert(Vec::new(), b"")
            .insert(b"k1", b"w");
        let ops: Vec<(&[u8], Option<&[u8]>)> = b.ops().collect();
        let want: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"k1", Some(b"v1")),
            (b"k2", None),
            (b"", Some(b"")),
            (b"k1", Some(b"w")),
        ];
        assert_eq!(ops, want);
        assert_eq!(b.ops().len(), 4);
        let mut t = b.clone();
        t.truncate(9);
        assert_eq!(t, b);
        t.truncate(2);
        assert_eq!(t.ops().collect::<Vec<_>>(), want[..2].to_vec());
        t.insert(b"k3", b"v3");
        assert_eq!(t.ops().nth(2), Some((&b"k3"[..], Some(&b"v3"[..]))));
        t.truncate(0);
        assert!(t.is_empty());
        assert_eq!(t, Batch::new());
    }
}
