//! cellar's native storage engine: a single-file, log-structured hash store (Bitcask lineage)
//! built for the dbm workload — point writes and reads, unordered keys, whole-store iteration.
//!
//! * Every mutation is appended to the log with a CRC-32C per record and handed to the OS
//!   before the call returns; [`Store::sync`] makes it durable (grouped `fdatasync`).
//! * Batches ([`Batch`]) commit atomically, also across crashes.
//! * Reads never wait for the writer (lock-free index, reads from a shared mmap).
//! * Many writers and readers, across threads and processes: writers take turns per commit
//!   (each catches up with the others' commits first; [`Error::Busy`] names the holder's pid
//!   after [`Options::lock_timeout`]); [`Options::exclusive`] keeps one writer for a handle's
//!   life, and any other writer gets [`Error::Locked`] naming it.
//! * Checkpointed index: a clean open never rescans the log.
//! * Background and manual compaction; optional zstd compression with a trained dictionary.
//!
//! The format is specified in `docs/engine-format.md`.
//!
//! ```
//! use cellar_engine::{Options, Store};
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path().join("db"), Options::default()).unwrap();
//! store.put(b"key", b"value").unwrap();
//! assert_eq!(store.get(b"key").unwrap().as_deref(), Some(&b"value"[..]));
//! store.close().unwrap();
//! ```
#![deny(unsafe_code)]

mod block;
mod codec;
mod crc;
mod error;
mod format;
mod index;
mod lock;
mod log;
mod storage;
mod store;

pub use error::{Error, Result};
pub use format::{Compression, ValueEncoding, FORMAT_VERSION};
pub use storage::{Crash, Fault, FaultOp, FileStorage, MemStorage, Storage};
pub use store::{
    check_file, looks_like_store, repair, Batch, CheckReport, Damage, Iter, Options, RepairReport,
    Stats, Store,
};
