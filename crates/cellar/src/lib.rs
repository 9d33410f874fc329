//! cellar: Python's data-persistence stack (marshal, pickle, dbm, shelve) rebuilt in Rust.
//!
//! This facade crate is the Rust API users depend on; each layer lives in its own crate:
//! - [`value`]: Python's data model ([`Value`]), its `repr()` and literal parser;
//! - [`marshal`]: CPython's marshal format, versions 0-5, with serde support;
//! - [`pickle`]: CPython's pickle format, protocols 0-5, safe decoder and copyreg-style registry;
//! - [`engine`]: the native storage engine, cellar's embedded default store;
//! - [`dbm`]: one `Database` interface over the native, sqlite3 and dumb stores;
//! - [`shelve`]: a persistent map from `str` keys to Python objects ([`shelve::Shelf`]).
//!
//! ```
//! let v = cellar::value::parse("{'my object': 'out', (1, 2, 3): 4}").unwrap();
//! let bytes = cellar::marshal::dumps(&v, 4).unwrap();
//! assert_eq!(cellar::value::repr(&cellar::marshal::loads(&bytes).unwrap()),
//!            "{'my object': 'out', (1, 2, 3): 4}");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use cellar_value::Value;

/// Python's data model: values, equality and hashing, `repr()` and literal parsing.
pub mod value {
    pub use cellar_value::*;
}

/// CPython's marshal format (see `docs/marshal.md`).
pub mod marshal {
    pub use cellar_marshal::*;
}

/// The native storage engine: cellar's embedded default store (see `docs/engine-format.md`).
pub mod engine {
    pub use cellar_engine::*;
}

/// CPython's pickle format, protocols 0-5, decoded safely (see `docs/pickle.md`).
pub mod pickle {
    pub use cellar_pickle::*;
}

/// Read-only readers for legacy dbm files: GDBM and Berkeley DB hash, no C library needed
/// (see `docs/legacy-formats.md`).
pub mod legacy {
    pub use cellar_legacy::*;
}

/// dbm: one interface over every store (native, sqlite3, dumb; gnu and ndbm read-only),
/// `open` and `whichdb` with CPython's semantics (see `docs/dbm.md`).
pub mod dbm {
    pub use cellar_dbm::*;
}

/// shelve: a persistent map from `str` keys to pickled (or marshalled) values over any dbm
/// store, typed with serde (see `docs/shelve.md`).
pub mod shelve {
    pub use cellar_shelve::*;
}
