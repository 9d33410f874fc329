//! The sqlite backend, file-compatible with CPython 3.13's `dbm.sqlite3`: one table
//! `Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)`, written with `REPLACE INTO` and
//! `CAST(? AS BLOB)`, WAL journal tried and its failure ignored, `ro`/`rw`/`rwc` open modes.
//!
//! Unlike CPython (autocommit with SQLite's default `synchronous=FULL`, an fsync per write), a
//! single write is its own transaction committed to the WAL with `synchronous=NORMAL`: it
//! reaches the OS before returning (durable against a process crash) without an fsync;
//! [`Database::sync`] checkpoints with fsync for power-loss durability. A batch is one
//! transaction. The connection sits behind a mutex, so the object is `Send + Sync`.
//!
//! Which SQLite: this backend links its own copy (rusqlite's `bundled`), which is right for
//! the Rust crate and the CLI, where no other SQLite shares the process. The Python package
//! must not use it: POSIX advisory locks belong to the process, so when a second SQLite
//! library in the same process (the interpreter's `sqlite3` module) closes its descriptor of
//! the same file, this copy's locks vanish and the other library deletes the `-wal` under it
//! (lost writes). `cellar.dbm.sqlite3` therefore runs the same SQL ([`BUILD_TABLE`] and the
//! rest, public for that reason) and the same file steps ([`prepare_files`]) on the running
//! interpreter's own `sqlite3` module (crates/cellar-python/src/sqlite_py.rs).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{DbmError, Result};
use crate::flag::{Access, Flag};
use crate::{perm, Backend, Batch, Database, Info, ItemFn};

pub const BUILD_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)";
pub const GET_SIZE: &str = "SELECT COUNT (key) FROM Dict";
pub const LOOKUP_KEY: &str = "SELECT value FROM Dict WHERE key = CAST(? AS BLOB)";
pub const STORE_KV: &str =
    "REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))";
pub const DELETE_KEY: &str = "DELETE FROM Dict WHERE key = CAST(? AS BLOB)";
// CPython's `SELECT key FROM Dict` lets SQLite scan the key index (key order) while a
// `SELECT key, value` scans the table (rowid order): keys() and items() would disagree. Both
// follow the table's rowid order (insertion order; an overwrite moves a key to the end).
pub const ITER_KEYS: &str = "SELECT key FROM Dict ORDER BY rowid";
pub const ITER_ITEMS: &str = "SELECT key, value FROM Dict ORDER BY rowid";
pub const HAS_TABLE: &str = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'Dict'";

pub fn bad_flag(s: &str) -> DbmError {
    DbmError::BadFlag {
        flag: s.to_string(),
        message: format!(
            "Flag must be one of 'r', 'w', 'c', or 'n', not {}",
            cellar_value::str_repr(&cellar_value::PyStr::new(s))
        ),
    }
}

/// A column as bytes (BLOB as written by dbm.sqlite3; TEXT tolerated).
fn blob(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    Ok(r.get_ref(i)?
        .as_bytes_or_null()?
        .unwrap_or_default()
        .to_vec())
}

#[derive(Debug)]
pub(crate) struct SqliteDb {
    path: PathBuf,
    read_only: bool,
    conn: Mutex<Option<Connection>>,
}

fn touch(path: &Path, mode: u32, exist_ok: bool) -> Result<()> {
    let mut o = OpenOptions::new();
    o.write(true).mode(mode & 0o7777);
    if exist_ok {
        o.create(true);
    } else {
        o.create_new(true);
    }
    let existed = path.exists();
    let f = o
        .open(path)
        .map_err(|e| DbmError::io(format!("creating {}", path.display()), e))?;
    if !existed {
        perm::apply_file(&f, path, mode)?;
    }
    Ok(())
}

/// SQLite's file header: `"SQLite format 3\0"`, then the page size (u16 BE at 16; 1 means
/// 65536), the change counter (u32 BE at 24), the page count (u32 BE at 28), valid when the
/// "version-valid-for" number (u32 BE at 92) equals the change counter.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Reports a file cut short (a partial copy, a full disk) before SQLite sees it: SQLite would
/// only say "database disk image is malformed", or nothing until a read reaches the lost pages.
/// Skipped when a non-empty `-wal` exists (a checkpoint interrupted by a crash may have written
/// page 1 before the pages after it; the WAL still holds them and SQLite finishes the job).
pub fn check_not_truncated(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut header = [0u8; 100];
    let len = match fs::File::open(path) {
        Ok(mut f) => match f.read_exact(&mut header) {
            Ok(()) => f.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => return Ok(()), // too short for a header: SQLite's own error says so
        },
        Err(_) => return Ok(()), // SQLite's open reports it
    };
    if &header[..16] != SQLITE_MAGIC {
        return Ok(());
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536u64,
        n => u64::from(n),
    };
    let (change, pages, valid_for) = (be32(24), u64::from(be32(28)), be32(92));
    if pages == 0 || change != valid_for || !page_size.is_power_of_two() || page_size < 512 {
        return Ok(());
    }
    let wal = crate::whichdb::with_suffix(path, "-wal");
    if fs::metadata(&wal).map(|m| m.len() > 0).unwrap_or(false) {
        return Ok(());
    }
    let want = pages * page_size;
    if len < want {
        return Err(DbmError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "the SQLite file is truncated: its header records {pages} pages of {page_size} \
                 bytes ({want} bytes) but the file has {len} bytes"
            ),
        });
    }
    Ok(())
}

/// The file-system steps of opening a dbm.sqlite3 database with `flag`, before any SQLite
/// connection: flag modifiers refused; `'c'` creates the file (with `mode`) if missing; `'n'`
/// removes the file and its `-wal`/`-shm`/`-journal` and creates it empty; `'r'`/`'w'` on a
/// missing file is `ENOENT` (SQLite's own "unable to open database file" hides the cause); a
/// file shorter than its header says is [`DbmError::Corrupt`]. Shared by this crate's backend
/// and by the Python package's, which runs the same SQL on the interpreter's own SQLite.
pub fn prepare_files(path: &Path, flag: Flag, mode: u32) -> Result<()> {
    if flag.has_modifiers() {
        return Err(bad_flag(&flag.to_string()));
    }
    match flag.access() {
        Access::Read | Access::Write => {
            if !path.exists() {
                return Err(DbmError::io(
                    format!("opening {} as a dbm.sqlite3 database", path.display()),
                    std::io::Error::from_raw_os_error(rustix::io::Errno::NOENT.raw_os_error()),
                ));
            }
        }
        Access::Create => touch(path, mode, true)?,
        Access::New => {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DbmError::io(format!("removing {}", path.display()), e)),
            }
            for suffix in ["-wal", "-shm", "-journal"] {
                let _ = fs::remove_file(crate::whichdb::with_suffix(path, suffix));
            }
            touch(path, mode, false)?;
        }
    }
    check_not_truncated(path)
}

/// Whether a failed open should be retried read-only: the file or its directory cannot be
/// written (so the `-wal`/`-shm` files of a read-write connection cannot exist).
fn retry_read_only(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(CannotOpen | ReadOnly | PermissionDenied | DatabaseBusy | DatabaseLocked)
    )
}

impl SqliteDb {
    /// The connection for flag 'r'. A read-only SQLite connection to a WAL database creates
    /// `-wal` and `-shm` files that it cannot remove on close, so 'r' uses a read-write
    /// connection with `PRAGMA query_only` (SQLite refuses every write; cellar refuses them
    /// before that), which removes them when it is the last to close, as after 'w'. Where the
    /// file or directory is not writable, a read-only connection.
    fn open_for_reading(path: &Path) -> rusqlite::Result<Connection> {
        let rw = (|| {
            let c = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            c.execute_batch("PRAGMA query_only = 1")?;
            c.query_row(HAS_TABLE, [], |_| Ok(())).optional()?;
            Ok(c)
        })();
        match rw {
            Err(e) if retry_read_only(&e) => Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
            r => r,
        }
    }

    pub(crate) fn open(path: &Path, flag: Flag, mode: u32) -> Result<SqliteDb> {
        prepare_files(path, flag, mode)?;
        let flags = match flag.access() {
            Access::Read => OpenFlags::SQLITE_OPEN_READ_ONLY,
            Access::Write => OpenFlags::SQLITE_OPEN_READ_WRITE,
            Access::Create | Access::New => {
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
            }
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let ctx = || format!("opening {} as a dbm.sqlite3 database", path.display());
        let conn = if flag.access() == Access::Read {
            Self::open_for_reading(path)
        } else {
            Connection::open_with_flags(path, flags)
        }
        .map_err(|e| DbmError::sqlite(ctx(), e))?;
        // A WAL database can only be read with its -wal and -shm files, which a read-only
        // connection cannot create in a directory it may not write: say so.
        let ctx = || {
            let mut c = ctx();
            if flag.access() == Access::Read {
                c.push_str(
                    "; reading a WAL-mode database needs its -wal and -shm files, which could \
                     not be opened or created here",
                );
            }
            c
        };
        let ctx_for = |e: &rusqlite::Error| {
            if retry_read_only(e) {
                ctx()
            } else {
                format!("opening {} as a dbm.sqlite3 database", path.display())
            }
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| DbmError::sqlite(ctx_for(&e), e))?;
        // Read the schema before anything writes: a damaged or foreign file fails here, with
        // its bytes untouched.
        let has_table = conn
            .query_row(HAS_TABLE, [], |_| Ok(()))
            .optional()
            .map_err(|e| DbmError::sqlite(ctx_for(&e), e))?
            .is_some();
        if !has_table && flag.access() == Access::Read {
            return Err(DbmError::Corrupt {
                path: path.to_path_buf(),
                message: "not a dbm.sqlite3 database (it has no table Dict)".to_string(),
            });
        }
        if flag.access() != Access::Read {
            // An optimisation only; it is fine if it fails (read-only media, old files).
            let _ = conn.query_row("PRAGMA journal_mode = wal", [], |_| Ok(()));
            if !has_table {
                conn.execute_batch(BUILD_TABLE)
                    .map_err(|e| DbmError::sqlite(ctx(), e))?;
            }
        }
        let _ = conn.execute_batch("PRAGMA synchronous = NORMAL");
        Ok(SqliteDb {
            path: path.to_path_buf(),
            read_only: flag.access() == Access::Read,
            conn: Mutex::new(Some(conn)),
        })
    }

    fn with<T>(&self, what: &str, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let g = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(c) => {
                f(c).map_err(|e| DbmError::sqlite(format!("{what} in {}", self.path.display()), e))
            }
            None => Err(DbmError::Closed),
        }
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(DbmError::ReadOnly)
        } else {
            Ok(())
        }
    }
}

impl Database for SqliteDb {
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
        self.with("reading a key", |c| {
            c.prepare_cached(LOOKUP_KEY)?
                .query_row([key], |r| blob(r, 0))
                .optional()
        })
    }
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.with("writing a key", |_| Ok(()))?;
        self.writable()?;
        self.with("writing a key", |c| {
            c.prepare_cached(STORE_KV)?.execute([key, value])?;
            Ok(())
        })
    }
    fn remove(&self, key: &[u8]) -> Result<bool> {
        self.with("deleting a key", |_| Ok(()))?;
        self.writable()?;
        self.with("deleting a key", |c| {
            Ok(c.prepare_cached(DELETE_KEY)?.execute([key])? > 0)
        })
    }
    fn len(&self) -> Result<usize> {
        self.with("counting keys", |c| {
            c.prepare_cached(GET_SIZE)?
                .query_row([], |r| r.get::<_, i64>(0))
                .map(|n| n as usize)
        })
    }
    fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.with("listing keys", |c| {
            let mut st = c.prepare_cached(ITER_KEYS)?;
            let rows = st.query_map([], |r| blob(r, 0))?;
            rows.collect()
        })
    }
    fn for_each(&self, f: &mut ItemFn<'_>) -> Result<()> {
        let mut err = None;
        self.with("reading items", |c| {
            let mut st = c.prepare_cached(ITER_ITEMS)?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let k = r.get_ref(0)?.as_bytes_or_null()?.unwrap_or_default();
                let v = r.get_ref(1)?.as_bytes_or_null()?.unwrap_or_default();
                if let Err(e) = f(k, v) {
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
        self.with("writing a batch", |_| Ok(()))?;
        self.writable()?;
        let mut g = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let c = g.as_mut().ok_or(DbmError::Closed)?;
        let run = |c: &mut Connection| -> rusqlite::Result<()> {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut put = tx.prepare_cached(STORE_KV)?;
                let mut del = tx.prepare_cached(DELETE_KEY)?;
                for (k, v) in batch.ops() {
                    match v {
                        Some(v) => put.execute([k, v])?,
                        None => del.execute([k])?,
                    };
                }
            }
            tx.commit()
        };
        run(c)
            .map_err(|e| DbmError::sqlite(format!("writing a batch in {}", self.path.display()), e))
    }
    fn sync(&self) -> Result<()> {
        self.with("syncing", |_| Ok(()))?;
        if self.read_only {
            return Ok(());
        }
        self.with("syncing", |c| {
            // Copies the WAL into the database with fsyncs; harmless in rollback-journal mode.
            c.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
        })
    }
    fn close(&self) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = conn {
            c.close().map_err(|(_, e)| {
                DbmError::sqlite(format!("closing {}", self.path.display()), e)
            })?;
        }
        Ok(())
    }
    fn compact(&self) -> Result<()> {
        self.with("compacting", |_| Ok(()))?;
        self.writable()?;
        self.with("compacting (VACUUM)", |c| c.execute_batch("VACUUM"))
    }
    fn info(&self) -> Result<Info> {
        let (keys, live) = self.with("measuring", |c| {
            c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(key) + LENGTH(value)), 0) FROM Dict",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
        })?;
        let mut file_bytes = 0;
        for suffix in ["", "-wal"] {
            if let Ok(md) = fs::metadata(crate::whichdb::with_suffix(&self.path, suffix)) {
                file_bytes += md.len();
            }
        }
        Ok(Info {
            backend: Backend::Sqlite3,
            keys: keys as u64,
            file_bytes,
            live_bytes: live as u64,
        })
    }
}
