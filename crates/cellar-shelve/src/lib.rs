//! cellar's shelve layer: a persistent map from `str` keys to Python objects, over any cellar
//! dbm store ([`cellar_dbm::Database`]).
//!
//! A [`Shelf<T>`] stores each value as a pickle (the default, what CPython's `shelve` writes)
//! or as marshal data, so the same file opens in Python with `shelve`/`cellar.shelve`. `T` is
//! [`Value`] (Python's data model) by default, or any `serde` type: structs map to dicts (or to
//! instances of a Python class registered with
//! [`Registry::register_type`](cellar_pickle::Registry::register_type)), see `docs/serde.md`.
//!
//! Decoding is always safe: pickles go through cellar's decoder, which never imports or runs
//! anything; classes are rebuilt only through the [`Registry`] given in [`Options`], or decode
//! to inert objects when [`Options::inert`] is set.
//!
//! On the native backend the codec is recorded in the store's header when the shelf creates
//! it, so tools (`cellar dump`) and later opens decode values without being told; a shelf
//! opened with a codec that contradicts the header is refused. dbm.dumb, dbm.sqlite3 and the
//! legacy formats have no header to record it in: their values are pickles, as CPython's
//! shelve writes them, and [`Codec::Marshal`] is refused on them.
//!
//! Writeback ([`Options::writeback`]) keeps every entry fetched with [`Shelf::get_mut`] in
//! memory; [`Shelf::sync`] and [`Shelf::close`] write back only the entries whose encoding
//! changed (CPython's shelve rewrites all of them).
//!
//! ```
//! use cellar_shelve::Shelf;
//! use cellar_value::Value;
//! let dir = tempfile::tempdir().unwrap();
//! let mut db: Shelf = Shelf::open(dir.path().join("test.shelve")).unwrap();
//! db.insert("test key", &Value::str("test data")).unwrap();
//! assert_eq!(db.get("test key").unwrap(), Some(Value::str("test data")));
//! db.close().unwrap();
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use cellar_dbm::{Backend, Database, DbmError, Flag, ValueEncoding};
use cellar_pickle::{LoadOptions, Registry};
use cellar_value::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a shelf encodes its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// CPython pickle with this protocol (0-5); what CPython's shelve writes.
    Pickle {
        /// The protocol values are written with (any protocol is read).
        protocol: u8,
    },
    /// CPython marshal with this version (0-5): basic types only, native backend only.
    Marshal {
        /// The version values are written with (any version is read).
        version: u8,
    },
}

impl Default for Codec {
    /// Pickle protocol 4, CPython 3.8-3.13's `pickle.DEFAULT_PROTOCOL`.
    fn default() -> Codec {
        Codec::Pickle {
            protocol: cellar_pickle::DEFAULT_PROTOCOL,
        }
    }
}

impl Codec {
    /// The header field that records this codec in a native store.
    pub fn encoding(self) -> ValueEncoding {
        match self {
            Codec::Pickle { protocol } => ValueEncoding::Pickle { protocol },
            Codec::Marshal { version } => ValueEncoding::Marshal { version },
        }
    }

    /// The codec a native store's header records, if it records one (`Raw` stores, written by
    /// plain dbm use or by CPython's shelve on cellar.dbm, say nothing).
    pub fn from_encoding(e: ValueEncoding) -> Option<Codec> {
        match e {
            ValueEncoding::Pickle { protocol } => Some(Codec::Pickle { protocol }),
            ValueEncoding::Marshal { version } => Some(Codec::Marshal { version }),
            _ => None,
        }
    }

    fn same_kind(self, other: Codec) -> bool {
        matches!(
            (self, other),
            (Codec::Pickle { .. }, Codec::Pickle { .. })
                | (Codec::Marshal { .. }, Codec::Marshal { .. })
        )
    }

    fn check(self) -> Result<()> {
        match self {
            Codec::Pickle { protocol } if protocol > cellar_pickle::HIGHEST_PROTOCOL => {
                Err(ShelfError::Codec(format!(
                    "pickle protocol must be <= {}, not {protocol}",
                    cellar_pickle::HIGHEST_PROTOCOL
                )))
            }
            Codec::Marshal { version } if version > cellar_marshal::CURRENT_VERSION as u8 => {
                Err(ShelfError::Codec(format!(
                    "marshal version must be <= {}, not {version}",
                    cellar_marshal::CURRENT_VERSION
                )))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::Pickle { protocol } => write!(f, "pickle (protocol {protocol})"),
            Codec::Marshal { version } => write!(f, "marshal (version {version})"),
        }
    }
}

/// A shelf operation failed.
#[derive(Debug)]
pub enum ShelfError {
    /// The store underneath failed (I/O, corruption, read-only, closed...).
    Dbm(DbmError),
    /// A value could not be encoded.
    Encode {
        /// The key being written.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// A stored value could not be decoded (damaged, or a class the registry does not allow).
    Decode {
        /// The key being read.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// A stored key is not valid UTF-8, so it has no `str` form (CPython raises
    /// `UnicodeDecodeError` for the same key).
    Key {
        /// The raw key.
        key: Vec<u8>,
    },
    /// The codec cannot be used with this store, or contradicts the one it records.
    Codec(String),
    /// The operation needs a shelf opened with `writeback`.
    NotWriteback,
}

impl fmt::Display for ShelfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShelfError::Dbm(e) => write!(f, "{e}"),
            ShelfError::Encode { key, message } => {
                write!(f, "cannot encode the value for key {key:?}: {message}")
            }
            ShelfError::Decode { key, message } => {
                write!(f, "cannot decode the value of key {key:?}: {message}")
            }
            ShelfError::Key { key } => write!(
                f,
                "stored key {} is not valid UTF-8, so it is not a shelf key",
                cellar_value::repr(&Value::bytes(key))
            ),
            ShelfError::Codec(m) => f.write_str(m),
            ShelfError::NotWriteback => {
                f.write_str("get_mut needs a shelf opened with writeback (Options::writeback)")
            }
        }
    }
}

impl std::error::Error for ShelfError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ShelfError::Dbm(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DbmError> for ShelfError {
    fn from(e: DbmError) -> ShelfError {
        ShelfError::Dbm(e)
    }
}

/// The result type of this crate.
pub type Result<T, E = ShelfError> = std::result::Result<T, E>;

/// How to open a shelf. `Options::default()` is CPython's `shelve.open(path)`: flag `'c'`,
/// mode 0o666, pickle protocol 4 (or the codec a native store records), no writeback.
#[derive(Debug, Clone)]
pub struct Options {
    /// dbm's flag: read, write, create or new.
    pub flag: Flag,
    /// Permission bits of created files (masked by the umask).
    pub mode: u32,
    /// The codec; `None` means the one the store records, else pickle protocol 4.
    pub codec: Option<Codec>,
    /// Keep entries fetched with [`Shelf::get_mut`] and write back the changed ones on
    /// [`Shelf::sync`] / [`Shelf::close`].
    pub writeback: bool,
    /// The backend for a new store (`None`: the native engine, as `cellar_dbm::open`).
    pub backend: Option<Backend>,
    /// The classes pickles may rebuild (copyreg's role); the default allows basic types only.
    pub registry: Registry,
    /// Decode instances of classes the registry does not allow to inert objects instead of
    /// failing (only meaningful for `T = Value`).
    pub inert: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            flag: Flag::Create,
            mode: cellar_dbm::DEFAULT_MODE,
            codec: None,
            writeback: false,
            backend: None,
            registry: Registry::default(),
            inert: false,
        }
    }
}

/// A persistent map from `str` keys to values of type `T`, stored in a dbm database.
///
/// Every method that writes reaches the OS before it returns (the dbm layer's guarantee);
/// [`Shelf::sync`] makes writes survive power loss. Dropping a shelf writes back pending
/// writeback entries and closes it, ignoring errors: call [`Shelf::close`] to see them.
pub struct Shelf<T = Value> {
    db: Box<dyn Database>,
    codec: Codec,
    registry: Registry,
    inert: bool,
    writeback: bool,
    /// Writeback entries: the value and the bytes last stored for it (`None`: not stored).
    cache: HashMap<String, (T, Option<Vec<u8>>)>,
    /// `Shelf::<T>::write_back`, kept so `Drop` (which cannot require `T: Serialize`) can
    /// write back pending entries.
    flush: fn(&mut Shelf<T>) -> Result<()>,
    closed: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Shelf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shelf")
            .field("db", &self.db)
            .field("codec", &self.codec)
            .field("writeback", &self.writeback)
            .field("cached", &self.cache.len())
            .finish()
    }
}

/// Writes gathered by [`Shelf::batch`], applied as one atomic commit on the native and sqlite
/// backends.
pub struct ShelfBatch<'a, T> {
    shelf: &'a Shelf<T>,
    ops: cellar_dbm::Batch,
    touched: Vec<String>,
}

impl<T: Serialize + DeserializeOwned + 'static> ShelfBatch<'_, T> {
    /// Stores `value` under `key` when the batch commits.
    pub fn insert(&mut self, key: &str, value: &T) -> Result<&mut Self> {
        let data = self.shelf.encode(key, value)?;
        self.ops.insert(key.as_bytes(), data);
        self.touched.push(key.to_owned());
        Ok(self)
    }

    /// Deletes `key` (if present) when the batch commits.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.ops.remove(key.as_bytes());
        self.touched.push(key.to_owned());
        self
    }

    /// Number of operations gathered.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing was gathered.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Shelf<T> {
    /// Opens or creates the shelf at `path` (CPython's `shelve.open(path)`).
    pub fn open(path: impl AsRef<Path>) -> Result<Shelf<T>> {
        Shelf::open_with(path, Options::default())
    }

    /// Opens the shelf at `path` with `opts`. The store is found as `dbm.open` finds it (any
    /// format cellar reads); a new one is created with `opts.backend` (native by default).
    pub fn open_with(path: impl AsRef<Path>, opts: Options) -> Result<Shelf<T>> {
        let path = path.as_ref();
        let wanted = opts.codec.unwrap_or_default();
        wanted.check()?;
        let db = match opts.backend {
            Some(b) if b != Backend::Native => {
                refuse_marshal(opts.codec, b.name())?;
                let exists = !matches!(cellar_dbm::whichdb(path), cellar_dbm::WhichDb::Unreadable);
                if exists && opts.flag != Flag::New {
                    cellar_dbm::open(path, opts.flag, opts.mode)?
                } else {
                    b.open(path, opts.flag, opts.mode)?
                }
            }
            _ => cellar_dbm::open_with(path, opts.flag, opts.mode, wanted.encoding())?,
        };
        Shelf::with_database(db, opts)
    }

    /// A shelf over an already open database (for example from `cellar_dbm::open`).
    pub fn with_database(db: Box<dyn Database>, opts: Options) -> Result<Shelf<T>> {
        let recorded = db.value_encoding().and_then(Codec::from_encoding);
        let codec = match (opts.codec, recorded) {
            (Some(want), Some(have)) if !want.same_kind(have) => {
                return Err(ShelfError::Codec(format!(
                    "{} holds {have} values, not {want}",
                    db.path().display()
                )))
            }
            (Some(want), _) => want,
            (None, Some(have)) => have,
            (None, None) => Codec::default(),
        };
        codec.check()?;
        if db.value_encoding().is_none() {
            refuse_marshal(Some(codec), db.backend().name())?;
        }
        Ok(Shelf {
            db,
            codec,
            registry: opts.registry,
            inert: opts.inert,
            writeback: opts.writeback,
            cache: HashMap::new(),
            flush: Shelf::<T>::write_back,
            closed: false,
            _t: PhantomData,
        })
    }

    /// The codec values are written with.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The database underneath.
    pub fn database(&self) -> &dyn Database {
        self.db.as_ref()
    }

    /// Encodes `value` as this shelf stores it.
    pub fn encode(&self, key: &str, value: &T) -> Result<Vec<u8>> {
        let err = |message: String| ShelfError::Encode {
            key: key.to_owned(),
            message,
        };
        match self.codec {
            Codec::Pickle { protocol } => {
                cellar_pickle::to_vec_with(value, protocol, &self.registry)
                    .map_err(|e| err(e.to_string()))
            }
            Codec::Marshal { version } => {
                let v = cellar_value::to_value(value).map_err(|e| err(e.to_string()))?;
                cellar_marshal::dumps(&v, u32::from(version)).map_err(|e| err(e.to_string()))
            }
        }
    }

    /// Decodes stored bytes (never runs or imports anything).
    pub fn decode(&self, key: &str, data: &[u8]) -> Result<T> {
        let err = |message: String| ShelfError::Decode {
            key: key.to_owned(),
            message,
        };
        let v = match self.codec {
            Codec::Pickle { .. } => {
                let opts = LoadOptions {
                    inert: self.inert,
                    ..LoadOptions::default()
                };
                cellar_pickle::loads(data, &self.registry, &opts).map_err(|e| err(e.to_string()))?
            }
            Codec::Marshal { .. } => cellar_marshal::loads(data).map_err(|e| err(e.to_string()))?,
        };
        cellar_value::from_value(v).map_err(|e| err(e.to_string()))
    }

    /// The value stored under `key`, decoded (a fresh copy: changing it changes nothing
    /// stored; in writeback mode a pending [`get_mut`](Shelf::get_mut) change is included).
    pub fn get(&self, key: &str) -> Result<Option<T>> {
        if let Some((v, _)) = self.cache.get(key) {
            let data = self.encode(key, v)?;
            return self.decode(key, &data).map(Some);
        }
        match self.db.get(key.as_bytes())? {
            Some(data) => self.decode(key, &data).map(Some),
            None => Ok(None),
        }
    }

    /// Writeback mode: the cached value of `key`, loaded on first use; changes are written
    /// back by [`sync`](Shelf::sync) / [`close`](Shelf::close) if its encoding changed.
    pub fn get_mut(&mut self, key: &str) -> Result<Option<&mut T>> {
        if !self.writeback {
            return Err(ShelfError::NotWriteback);
        }
        if !self.cache.contains_key(key) {
            let Some(data) = self.db.get(key.as_bytes())? else {
                return Ok(None);
            };
            let v = self.decode(key, &data)?;
            self.cache.insert(key.to_owned(), (v, Some(data)));
        }
        Ok(self.cache.get_mut(key).map(|(v, _)| v))
    }

    /// Stores `value` under `key`; the write reaches the OS before this returns.
    pub fn insert(&mut self, key: &str, value: &T) -> Result<()> {
        let data = self.encode(key, value)?;
        self.db.insert(key.as_bytes(), &data)?;
        self.cache.remove(key);
        Ok(())
    }

    /// Deletes `key`; returns whether it was present.
    pub fn remove(&mut self, key: &str) -> Result<bool> {
        self.cache.remove(key);
        Ok(self.db.remove(key.as_bytes())?)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> Result<bool> {
        Ok(self.db.contains(key.as_bytes())?)
    }

    /// Number of entries.
    pub fn len(&self) -> Result<usize> {
        Ok(self.db.len()?)
    }

    /// True when the shelf is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.db.is_empty()?)
    }

    /// All keys, in the store's order.
    pub fn keys(&self) -> Result<Vec<String>> {
        self.db.keys()?.into_iter().map(key_string).collect()
    }

    /// Calls `f` with every entry, decoded, in the store's order; stops at the first error.
    pub fn for_each(&self, mut f: impl FnMut(&str, T) -> Result<()>) -> Result<()> {
        let mut failure = None;
        let r = self.db.for_each(&mut |k, v| {
            let step = std::str::from_utf8(k)
                .map_err(|_| ShelfError::Key { key: k.to_vec() })
                .and_then(|key| {
                    let value = self.decode(key, v)?;
                    f(key, value)
                });
            step.map_err(|e| {
                failure = Some(e);
                DbmError::Closed // placeholder that stops the walk; replaced below
            })
        });
        match (failure, r) {
            (Some(e), _) => Err(e),
            (None, r) => Ok(r?),
        }
    }

    /// All entries, decoded, in the store's order.
    pub fn items(&self) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        self.for_each(|k, v| {
            out.push((k.to_owned(), v));
            Ok(())
        })?;
        Ok(out)
    }

    /// Gathers writes in `f` and applies them as one commit (atomic on the native and sqlite
    /// backends); if `f` fails nothing is written.
    pub fn batch(&mut self, f: impl FnOnce(&mut ShelfBatch<'_, T>) -> Result<()>) -> Result<()> {
        let mut b = ShelfBatch {
            shelf: &*self,
            ops: cellar_dbm::Batch::new(),
            touched: Vec::new(),
        };
        f(&mut b)?;
        let ShelfBatch { ops, touched, .. } = b;
        self.db.batch(&ops)?;
        for k in touched {
            self.cache.remove(&k);
        }
        Ok(())
    }

    /// Writes back the writeback entries whose encoding changed (as one batch), empties the
    /// cache, and makes everything durable (fdatasync for the native engine).
    pub fn sync(&mut self) -> Result<()> {
        self.write_back()?;
        Ok(self.db.sync()?)
    }

    fn write_back(&mut self) -> Result<()> {
        if self.cache.is_empty() {
            return Ok(());
        }
        let mut ops = cellar_dbm::Batch::new();
        for (k, (v, stored)) in &self.cache {
            let data = self.encode(k, v)?;
            if stored.as_deref() != Some(data.as_slice()) {
                ops.insert(k.as_bytes(), data);
            }
        }
        if !ops.is_empty() {
            self.db.batch(&ops)?;
        }
        self.cache.clear();
        Ok(())
    }

    /// Reclaims the space of deleted and overwritten values (native: compaction; sqlite:
    /// VACUUM), after writing back pending entries; CPython 3.15's `Shelf.reorganize()`.
    pub fn reorganize(&mut self) -> Result<()> {
        self.write_back()?;
        Ok(self.db.compact()?)
    }

    /// Writes back pending entries, syncs and closes.
    pub fn close(mut self) -> Result<()> {
        let r = self.sync();
        let c = self.db.close();
        self.closed = true;
        r?;
        Ok(c?)
    }
}

impl<T> Drop for Shelf<T> {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Best effort, as CPython's Shelf.__del__: errors are only reported by close().
        let flush = self.flush;
        let _ = flush(self);
        let _ = self.db.close();
    }
}

fn key_string(k: Vec<u8>) -> Result<String> {
    String::from_utf8(k).map_err(|e| ShelfError::Key {
        key: e.into_bytes(),
    })
}

fn refuse_marshal(codec: Option<Codec>, backend: &str) -> Result<()> {
    match codec {
        Some(c @ Codec::Marshal { .. }) => Err(ShelfError::Codec(format!(
            "{backend} stores cannot record a shelf's codec, so their values are pickles as \
             CPython's shelve writes them; {c} needs the native backend"
        ))),
        _ => Ok(()),
    }
}
