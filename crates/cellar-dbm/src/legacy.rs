//! The legacy formats, read-only: `dbm.gnu` (GDBM) files and `dbm.ndbm` files (a Berkeley DB
//! hash `NAME.db`, or gdbm_compat's `NAME.pag` + `NAME.dir` pair whose `.pag` is a GDBM file),
//! read by `cellar-legacy` without any C library. Every mutation fails with
//! [`DbmError::LegacyReadOnly`], whose message names `cellar convert`.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use cellar_legacy::LegacyDb;

use crate::error::{DbmError, Result};
use crate::flag::{Access, Flag};
use crate::whichdb::with_suffix;
use crate::{Backend, Batch, Database, Info, ItemFn};

/// The file that holds a legacy database named `path`: for gnu the path itself; for ndbm
/// `path.pag` (gdbm_compat), else `path.db` (Berkeley DB), else `path` itself when it is a
/// Berkeley DB or GDBM file (a name given with its `.db` suffix).
pub fn legacy_file(path: &Path, backend: Backend) -> PathBuf {
    if backend == Backend::Ndbm {
        for candidate in [with_suffix(path, ".pag"), with_suffix(path, ".db")] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    path.to_path_buf()
}

/// Opens the legacy database at `path` (a dbm name, resolved by [`legacy_file`]) for direct
/// use of the reader (`cellar check`, format details).
pub fn open_legacy(path: &Path, backend: Backend) -> Result<LegacyDb> {
    let file = legacy_file(path, backend);
    LegacyDb::open(&file).map_err(|e| DbmError::legacy(&file, e))
}

pub(crate) fn read_only(path: &Path, backend: Backend) -> DbmError {
    DbmError::LegacyReadOnly {
        path: path.to_path_buf(),
        kind: backend.name(),
    }
}

/// A read-only legacy database.
#[derive(Debug)]
pub(crate) struct LegacyStore {
    path: PathBuf,
    file: PathBuf,
    backend: Backend,
    db: RwLock<Option<LegacyDb>>,
}

impl LegacyStore {
    pub(crate) fn open(path: &Path, backend: Backend, flag: Flag) -> Result<LegacyStore> {
        if flag.access() != Access::Read {
            return Err(read_only(path, backend));
        }
        let file = legacy_file(path, backend);
        let db = LegacyDb::open(&file).map_err(|e| DbmError::legacy(&file, e))?;
        Ok(LegacyStore {
            path: path.to_path_buf(),
            file,
            backend,
            db: RwLock::new(Some(db)),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&LegacyDb) -> Result<T>) -> Result<T> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(DbmError::Closed),
        }
    }

    fn err(&self, e: cellar_legacy::Error) -> DbmError {
        DbmError::legacy(&self.file, e)
    }
}

impl Database for LegacyStore {
    fn backend(&self) -> Backend {
        self.backend
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with(|db| db.get(key).map_err(|e| self.err(e)))
    }
    fn insert(&self, _key: &[u8], _value: &[u8]) -> Result<()> {
        self.with(|_| Err(read_only(&self.path, self.backend)))
    }
    fn remove(&self, _key: &[u8]) -> Result<bool> {
        self.with(|_| Err(read_only(&self.path, self.backend)))
    }
    fn len(&self) -> Result<usize> {
        self.with(|db| db.len().map_err(|e| self.err(e)))
    }
    fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.with(|db| db.keys().map_err(|e| self.err(e)))
    }
    fn for_each(&self, f: &mut ItemFn<'_>) -> Result<()> {
        self.with(|db| {
            db.try_for_each(|k, v| -> std::result::Result<(), Wrapped> {
                f(k, v).map_err(Wrapped::Dbm)
            })
            .map_err(|w| match w {
                Wrapped::Dbm(e) => e,
                Wrapped::Legacy(e) => self.err(e),
            })
        })
    }
    fn batch(&self, _batch: &Batch) -> Result<()> {
        self.with(|_| Err(read_only(&self.path, self.backend)))
    }
    fn sync(&self) -> Result<()> {
        self.with(|_| Ok(()))
    }
    fn close(&self) -> Result<()> {
        self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }
    fn compact(&self) -> Result<()> {
        self.with(|_| Err(read_only(&self.path, self.backend)))
    }
    fn info(&self) -> Result<Info> {
        self.with(|db| {
            let mut keys = 0u64;
            let mut live = 0u64;
            db.try_for_each(|k, v| -> cellar_legacy::Result<()> {
                keys += 1;
                live += (k.len() + v.len()) as u64;
                Ok(())
            })
            .map_err(|e| self.err(e))?;
            let mut file_bytes = db.file_len();
            if self.file.extension().is_some_and(|e| e == "pag") {
                if let Ok(md) = std::fs::metadata(self.file.with_extension("dir")) {
                    file_bytes += md.len();
                }
            }
            Ok(Info {
                backend: self.backend,
                keys,
                file_bytes,
                live_bytes: live,
            })
        })
    }
}

/// A callback error or a reader error, kept apart through `try_for_each`.
enum Wrapped {
    Dbm(DbmError),
    Legacy(cellar_legacy::Error),
}

impl From<cellar_legacy::Error> for Wrapped {
    fn from(e: cellar_legacy::Error) -> Wrapped {
        Wrapped::Legacy(e)
    }
}
