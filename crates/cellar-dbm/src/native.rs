//! The native backend: a thin adapter over `cellar_engine::Store` at exactly the given path.
//! Flags map through `Options::from_dbm_flag` (gnu's `f`, `s`, `u` accepted); a created file
//! gets `mode & ~umask`.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use cellar_engine::{Options, Store, ValueEncoding};

use crate::error::{DbmError, Result};
use crate::flag::{Access, Flag};
use crate::{perm, Backend, Batch, Database, Info, ItemFn};

fn is_native(path: &Path) -> bool {
    crate::whichdb::whichdb(path) == crate::whichdb::WhichDb::Kind(crate::whichdb::DbKind::Native)
}

/// May `'n'` replace the file at `path`? Only an empty file or one in a format `whichdb`
/// recognises; never a file that could be a damaged cellar store (its records are still there
/// for `cellar repair`) or anything unrecognisable.
fn replaceable(path: &Path) -> Result<bool> {
    let len = std::fs::metadata(path)
        .map_err(|e| DbmError::io(format!("examining {}", path.display()), e))?
        .len();
    if len == 0 {
        return Ok(true);
    }
    if cellar_engine::looks_like_store(path) {
        return Err(DbmError::Engine(cellar_engine::Error::BadHeader {
            path: path.to_path_buf(),
            reason: "its header is damaged but it still holds cellar records; flag 'n' will not \
                     replace it"
                .into(),
        }));
    }
    match crate::whichdb::whichdb(path) {
        crate::whichdb::WhichDb::Kind(_) => Ok(true),
        _ => Err(DbmError::Undetermined {
            path: path.to_path_buf(),
        }),
    }
}

/// How a native store is shared between writers (docs/dbm.md, "Many writers"): by default
/// any number of handles, in any processes, write, taking turns per commit and waiting up to
/// `lock_timeout` (default 5 s) for their turn; `exclusive` keeps the store to one writer
/// handle for its whole life (the fastest bulk loads; other writers are refused).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriterOptions {
    /// One writer handle for the store's whole life.
    pub exclusive: bool,
    /// How long a commit waits for its turn (`None`: the engine's default, 5 s).
    pub lock_timeout: Option<Duration>,
    /// Bytes of decompressed compact-form blocks the handle keeps in memory (`None`: the
    /// engine's default, 128 MiB; applies to readers too).
    pub block_cache_bytes: Option<usize>,
}

impl WriterOptions {
    fn apply(&self, opts: &mut Options) {
        opts.exclusive = self.exclusive;
        if let Some(t) = self.lock_timeout {
            opts.lock_timeout = t;
        }
        if let Some(b) = self.block_cache_bytes {
            opts.block_cache_bytes = b;
        }
    }
}

#[derive(Debug)]
pub(crate) struct NativeDb {
    path: PathBuf,
    read_only: bool,
    store: RwLock<Option<Store>>,
}

impl NativeDb {
    pub(crate) fn open(
        path: &Path,
        flag: Flag,
        mode: u32,
        encoding: ValueEncoding,
        writers: WriterOptions,
    ) -> Result<NativeDb> {
        let mut opts =
            Options::from_dbm_flag(&flag.to_string()).ok_or_else(|| DbmError::BadFlag {
                flag: flag.to_string(),
                message: format!("flag {flag:?} is not accepted by the native engine"),
            })?;
        opts.value_encoding = encoding;
        writers.apply(&mut opts);
        if flag.access() == Access::New && path.is_file() && !is_native(path) && replaceable(path)?
        {
            // 'n' always makes a new database (as dbm.gnu and dbm.sqlite3 do): an empty file or
            // a database of another format at the path is replaced. A native store is emptied
            // by the engine instead, under its writer lock.
            std::fs::remove_file(path)
                .map_err(|e| DbmError::io(format!("removing {}", path.display()), e))?;
        }
        let existed = path.exists();
        // A store this open creates (or empties) is compact-form: compaction writes key-sorted
        // zstd blocks with a trained dictionary (docs/engine-format.md section 10), and the
        // header remembers it. An existing store keeps its format (a version 2 file stays
        // readable by older cellar) until `cellar compact` converts it.
        opts.compact_form = !existed || flag.access() == Access::New;
        if !existed && matches!(flag.access(), Access::Read | Access::Write) {
            // As dbm.gnu: an OS error with ENOENT (dbm's `open` says "db file doesn't exist").
            return Err(DbmError::io(
                format!("opening {}", path.display()),
                std::io::Error::from_raw_os_error(rustix::io::Errno::NOENT.raw_os_error()),
            ));
        }
        let store = Store::open(path, opts)?;
        if !existed || flag.access() == Access::New {
            perm::apply(path, mode)?;
        }
        Ok(NativeDb {
            path: path.to_path_buf(),
            read_only: flag.access() == Access::Read,
            store: RwLock::new(Some(store)),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let g = self.store.read().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(s) => f(s),
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

impl Database for NativeDb {
    fn backend(&self) -> Backend {
        Backend::Native
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with(|s| Ok(s.get(key)?))
    }
    fn get_into(&self, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<bool> {
        self.with(|s| Ok(s.get_with(key, &mut *f)?.is_some()))
    }
    fn get_into_now(&self, key: &[u8], f: &mut dyn FnMut(&[u8])) -> Result<Option<bool>> {
        let g = match self.store.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
        };
        match g.as_ref() {
            Some(s) => Ok(Some(s.get_with(key, &mut *f)?.is_some())),
            None => Err(DbmError::Closed),
        }
    }
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.with(|s| {
            self.writable()?;
            Ok(s.put(key, value)?)
        })
    }
    fn remove(&self, key: &[u8]) -> Result<bool> {
        self.with(|s| {
            self.writable()?;
            Ok(s.delete(key)?)
        })
    }
    fn contains(&self, key: &[u8]) -> Result<bool> {
        self.with(|s| Ok(s.contains(key)?))
    }
    fn len(&self) -> Result<usize> {
        self.with(|s| Ok(s.len()? as usize))
    }
    fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.with(|s| Ok(s.keys()?))
    }
    fn keys_and_damage(&self) -> Result<(Vec<Vec<u8>>, Option<DbmError>)> {
        self.with(|s| {
            let (keys, damage) = s.keys_and_damage()?;
            Ok((keys, damage.map(DbmError::from)))
        })
    }
    fn for_each(&self, f: &mut ItemFn<'_>) -> Result<()> {
        self.with(|s| {
            let mut err = None;
            s.for_each(|k, v| {
                if err.is_none() {
                    if let Err(e) = f(k, v) {
                        err = Some(e);
                    }
                }
            })?;
            match err {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }
    fn batch(&self, batch: &Batch) -> Result<()> {
        self.with(|s| {
            self.writable()?;
            let ops: Vec<(&[u8], Option<&[u8]>)> = batch.ops().collect();
            Ok(s.commit_ops(&ops)?)
        })
    }
    fn sync(&self) -> Result<()> {
        self.with(|s| {
            if self.read_only {
                return Ok(());
            }
            Ok(s.sync()?)
        })
    }
    fn close(&self) -> Result<()> {
        let store = self.store.write().unwrap_or_else(|e| e.into_inner()).take();
        match store {
            Some(s) => Ok(s.close()?),
            None => Ok(()),
        }
    }
    fn compact(&self) -> Result<()> {
        self.with(|s| {
            self.writable()?;
            Ok(s.compact()?)
        })
    }
    fn info(&self) -> Result<Info> {
        self.with(|s| {
            let st = s.stats()?;
            Ok(Info {
                backend: Backend::Native,
                keys: st.keys,
                file_bytes: st.file_bytes,
                live_bytes: st.live_bytes,
            })
        })
    }
    fn value_encoding(&self) -> Option<ValueEncoding> {
        self.with(|s| Ok(s.value_encoding())).ok()
    }
    fn engine_stats(&self) -> Result<Option<cellar_engine::Stats>> {
        self.with(|s| Ok(Some(s.stats()?)))
    }
}
