//! CPython's marshal format, versions 0-5: a safe decoder, an encoder and serde support.
//!
//! marshal is how CPython stores `.pyc` files and the fastest way to persist basic Python
//! values. This crate reads and writes every type code (see `docs/marshal.md`), matching
//! CPython 3.11+ value for value: CPython loads what [`dumps`] writes and [`loads`] loads what
//! CPython writes. Unlike CPython's C reader it is safe on hostile input: no recursion on the
//! Rust stack, the 2000-level nesting limit enforced, allocation bounded by the input size,
//! and every failure a [`DecodeError`] typed like the exception CPython raises, with the byte
//! offset.
//!
//! ```
//! use cellar_marshal::{dumps, loads};
//! use cellar_value::{parse, repr};
//!
//! let v = parse("{'my object': 'out', (1, 2, 3): 4}").unwrap();
//! let bytes = dumps(&v, 4).unwrap();
//! assert_eq!(repr(&loads(&bytes).unwrap()), "{'my object': 'out', (1, 2, 3): 4}");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod pyc;
mod read;
mod types;
mod write;

pub use crate::error::{DecodeError, EncodeError, ErrorKind};
pub use crate::read::LoadOptions;
pub use crate::types::{CURRENT_VERSION, DEFAULT_VERSION, MAX_DEPTH};
pub use crate::write::DumpOptions;
pub use cellar_value::Value;

/// `marshal.dumps(value, version)`: encodes with the given format version (0-5; higher means
/// the newest), code objects allowed.
pub fn dumps(value: &Value, version: u32) -> Result<Vec<u8>, EncodeError> {
    write::write_value(
        value,
        &DumpOptions {
            version,
            allow_code: true,
        },
    )
}

/// `dumps` with every option.
pub fn dumps_with(value: &Value, opts: &DumpOptions) -> Result<Vec<u8>, EncodeError> {
    write::write_value(value, opts)
}

/// `marshal.loads(data)`: decodes the first object; trailing bytes are ignored, as in CPython.
pub fn loads(data: &[u8]) -> Result<Value, DecodeError> {
    read::read_object(data, &LoadOptions::default()).map(|(v, _)| v)
}

/// `loads` with every option; also returns how many bytes the object used.
pub fn loads_with(data: &[u8], opts: &LoadOptions) -> Result<(Value, usize), DecodeError> {
    read::read_object(data, opts)
}
