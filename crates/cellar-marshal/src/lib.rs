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
pub mod read;
mod types;
mod value_sink;
pub mod write;

pub use crate::error::{DecodeError, EncodeError, ErrorKind};
pub use crate::read::{decode, Input, InputFailed, LoadOptions, Sink, SliceInput};
pub use crate::types::{CURRENT_VERSION, DEFAULT_VERSION, MAX_DEPTH};
pub use crate::value_sink::{ValueSink, ValueSource};
pub use crate::write::{encode, encode_reusing, DumpOptions, Source};
pub use cellar_value::Value;

/// `marshal.dumps(value, version)`: encodes with the given format version (0-5; higher means
/// the newest), code objects allowed.
pub fn dumps(value: &Value, version: u32) -> Result<Vec<u8>, EncodeError> {
    dumps_with(
        value,
        &DumpOptions {
            version,
            allow_code: true,
        },
    )
}

/// `dumps` with every option.
pub fn dumps_with(value: &Value, opts: &DumpOptions) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    write::encode(&mut ValueSource::default(), value, 0, opts, &mut out)?;
    Ok(out)
}

/// `marshal.loads(data)`: decodes the first object; trailing bytes are ignored, as in CPython.
pub fn loads(data: &[u8]) -> Result<Value, DecodeError> {
    loads_with(data, &LoadOptions::default()).map(|(v, _)| v)
}

/// `loads` with every option; also returns how many bytes the object used.
pub fn loads_with(data: &[u8], opts: &LoadOptions) -> Result<(Value, usize), DecodeError> {
    let mut input = SliceInput::new(data);
    let v = read::decode(&mut input, &mut ValueSink, opts)?;
    Ok((v, input.position()))
}

/// A failure of [`to_vec`] / [`from_slice`]: the Rust value did not map to a Python value (or
/// back), or the marshal step failed.
#[derive(Debug, Clone)]
pub enum SerdeError {
    /// Mapping between the Rust type and a Python value failed (see docs/serde.md).
    Mapping(cellar_value::SerdeError),
    /// The value could not be marshalled.
    Encode(EncodeError),
    /// The bytes are not valid marshal data.
    Decode(DecodeError),
}

impl std::fmt::Display for SerdeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerdeError::Mapping(e) => write!(f, "{e}"),
            SerdeError::Encode(e) => write!(f, "{e}"),
            SerdeError::Decode(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SerdeError {}

/// Serializes any `T: Serialize` to marshal bytes (version 4) through the mapping in
/// docs/serde.md: structs become dicts with str keys, tuples tuples, `Vec`s lists, maps dicts.
pub fn to_vec<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SerdeError> {
    let v = cellar_value::to_value(value).map_err(SerdeError::Mapping)?;
    dumps(&v, DEFAULT_VERSION).map_err(SerdeError::Encode)
}

/// Deserializes a `T` from marshal bytes (any version; code objects are refused).
pub fn from_slice<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, SerdeError> {
    let opts = LoadOptions {
        allow_code: false,
        ..LoadOptions::default()
    };
    let (v, _) = loads_with(data, &opts).map_err(SerdeError::Decode)?;
    cellar_value::from_value(v).map_err(SerdeError::Mapping)
}
