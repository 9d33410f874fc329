//! Read-only readers for legacy dbm files, in pure Rust, with no C library:
//!
//! * [`gdbm::Gdbm`] — GNU dbm files as `dbm.gnu` writes them (and the `NAME.pag` of
//!   gdbm_compat's ndbm pair): standard and numsync headers, 64- and 32-bit offsets, either byte
//!   order.
//! * [`bdb::Bdb`] — Berkeley DB hash files as `dbm.ndbm` writes them when backed by Berkeley DB
//!   (`NAME.db`, libdb 4.x/5.x), either byte order, with off-page (big) items.
//! * [`bdb185::Bdb185`] — Berkeley DB 1.85 hash files (the `NAME.db` of macOS and BSD ndbm),
//!   either byte order, with big items.
//!
//! Both read the file into memory when it is small ([`IN_MEMORY_LIMIT`]) and use positioned
//! reads otherwise; every length read from the file is checked against the file size before
//! anything is allocated, so damaged or hostile files give an [`Error`], never a panic, a hang
//! or a huge allocation. [`LegacyDb`] opens either by sniffing the file.
//!
//! The formats, as implemented here, are described in `docs/legacy-formats.md`.
//!
//! ```no_run
//! let db = cellar_legacy::LegacyDb::open("old.gdbm").unwrap();
//! db.try_for_each(|k, v| -> cellar_legacy::Result<()> {
//!     println!("{k:?} = {v:?}");
//!     Ok(())
//! }).unwrap();
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bdb;
pub mod bdb185;
mod error;
pub mod gdbm;
mod source;

use std::path::Path;

pub use crate::error::{Error, Result};
pub use crate::source::{ByteOrder, IN_MEMORY_LIMIT};

/// What [`gdbm::Gdbm::check`] and [`bdb::Bdb::check`] found: how many pairs are readable and a
/// description of every damaged structure that was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Pairs read intact.
    pub readable: u64,
    /// One line per damaged bucket, page or record.
    pub problems: Vec<String>,
}

impl Report {
    /// True when nothing was damaged.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A legacy file of either format.
#[derive(Debug)]
pub enum LegacyDb {
    /// A GDBM file.
    Gdbm(gdbm::Gdbm),
    /// A Berkeley DB hash file.
    Bdb(bdb::Bdb),
    /// A Berkeley DB 1.85 hash file.
    Bdb185(bdb185::Bdb185),
}

impl LegacyDb {
    /// Opens `path`, which must be a GDBM or a Berkeley DB hash file (the file itself, not a
    /// dbm base name).
    pub fn open(path: impl AsRef<Path>) -> Result<LegacyDb> {
        LegacyDb::open_with_limit(path, IN_MEMORY_LIMIT)
    }

    /// [`LegacyDb::open`], reading the file into memory only if it has at most
    /// `in_memory_limit` bytes; larger files are read with positioned reads.
    pub fn open_with_limit(path: impl AsRef<Path>, in_memory_limit: u64) -> Result<LegacyDb> {
        let path = path.as_ref();
        let mut head = [0u8; 16];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let mut n = 0;
            while n < head.len() {
                match f.read(&mut head[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(Error::Io {
                            path: path.to_path_buf(),
                            source,
                        })
                    }
                }
            }
            n
        };
        if gdbm::Gdbm::sniff(&head[..n]) {
            return Ok(LegacyDb::Gdbm(gdbm::Gdbm::open_with_limit(
                path,
                in_memory_limit,
            )?));
        }
        if bdb::Bdb::sniff(&head[..n]) == Some(bdb::Flavor::V185) {
            return Ok(LegacyDb::Bdb185(bdb185::Bdb185::open_with_limit(
                path,
                in_memory_limit,
            )?));
        }
        if bdb::Bdb::sniff(&head[..n]).is_some() {
            return Ok(LegacyDb::Bdb(bdb::Bdb::open_with_limit(
                path,
                in_memory_limit,
            )?));
        }
        Err(Error::NotRecognised {
            format: "GDBM or Berkeley DB hash",
            detail: format!("{}: no known magic number", path.display()),
        })
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            LegacyDb::Gdbm(d) => d.get(key),
            LegacyDb::Bdb(d) => d.get(key),
            LegacyDb::Bdb185(d) => d.get(key),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> Result<usize> {
        match self {
            LegacyDb::Gdbm(d) => d.len(),
            LegacyDb::Bdb(d) => d.len(),
            LegacyDb::Bdb185(d) => d.len(),
        }
    }

    /// True when the file holds no keys.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Every key.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        match self {
            LegacyDb::Gdbm(d) => d.keys(),
            LegacyDb::Bdb(d) => d.keys(),
            LegacyDb::Bdb185(d) => d.keys(),
        }
    }

    /// Calls `f` with every pair; stops at the first error.
    pub fn try_for_each<E: From<Error>>(
        &self,
        f: impl FnMut(&[u8], &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        match self {
            LegacyDb::Gdbm(d) => d.try_for_each(f),
            LegacyDb::Bdb(d) => d.try_for_each(f),
            LegacyDb::Bdb185(d) => d.try_for_each(f),
        }
    }

    /// Calls `f` with every readable pair, skipping damaged structures, and reports them.
    pub fn salvage(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Report {
        match self {
            LegacyDb::Gdbm(d) => d.salvage(f),
            LegacyDb::Bdb(d) => d.salvage(f),
            LegacyDb::Bdb185(d) => d.salvage(f),
        }
    }

    /// Reads everything readable and reports what is damaged.
    pub fn check(&self) -> Report {
        match self {
            LegacyDb::Gdbm(d) => d.check(),
            LegacyDb::Bdb(d) => d.check(),
            LegacyDb::Bdb185(d) => d.check(),
        }
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        match self {
            LegacyDb::Gdbm(d) => d.file_len(),
            LegacyDb::Bdb(d) => d.file_len(),
            LegacyDb::Bdb185(d) => d.file_len(),
        }
    }

    /// A one-line description of the format variant (`"GDBM, 64-bit offsets, little-endian"`).
    pub fn variant(&self) -> String {
        match self {
            LegacyDb::Gdbm(d) => {
                let i = d.describe();
                format!(
                    "GDBM, {}-bit offsets, {}{}",
                    i.offset_bits,
                    i.byte_order.name(),
                    if i.numsync.is_some() { ", numsync" } else { "" }
                )
            }
            LegacyDb::Bdb(d) => {
                let i = d.describe();
                format!(
                    "Berkeley DB hash version {}, {}-byte pages, {}",
                    i.version,
                    i.page_size,
                    i.byte_order.name()
                )
            }
            LegacyDb::Bdb185(d) => {
                let i = d.describe();
                format!(
                    "Berkeley DB 1.85 hash version {}, {}-byte pages, {}",
                    i.version,
                    i.page_size,
                    i.byte_order.name()
                )
            }
        }
    }
}
