//! Python's data model in Rust, the layer every cellar codec builds on.
//!
//! - [`Value`]: None, bool, int (arbitrary precision), float, complex, str (lone surrogates
//!   round-trip), bytes, bytearray, tuple, list, dict (insertion ordered), set, frozenset,
//!   Ellipsis, StopIteration, slice and code objects, with Python's equality and hashing
//!   (`1`, `1.0` and `True` are one dict key; `-0.0 == 0.0`; NaN is never equal).
//! - [`repr()`]: prints a value exactly as CPython 3.11's `repr()` does.
//! - [`parse()`]: reads Python literal syntax (everything `ast.literal_eval` accepts, plus
//!   `set()`, `frozenset(...)`, `float('nan')` and the other forms `repr` prints).
//!
//! Shared sub-objects are shared `Arc`s; a value can never contain itself (decoders refuse
//! recursive data with a clear error). Dropping and printing deep values never recurse on the
//! Rust stack.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod hash;
pub mod identity;
mod object;
mod parse;
mod printable;
mod repr;
mod serde_impl;
mod str;
mod value;

pub use crate::hash::HashError;
pub use crate::object::{Construct, Object};
pub use crate::parse::{parse, parse_float_text, ParseError, MAX_NESTING};
pub use crate::repr::{
    bytes_repr, complex_repr, float_g17, float_repr, is_printable, repr, repr_sorted, str_repr,
};
pub use crate::serde_impl::{from_value, to_value, SerdeError};
pub use crate::str::{validate_surrogatepass, CodePoints, PyStr, Utf8Error};
pub use crate::value::{Code, Dict, Int, Set, Slice, Value};

pub use num_bigint::BigInt;
