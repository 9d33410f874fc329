//! CPython's pickle format, protocols 0-5: a decoder that never imports or runs anything, an
//! encoder CPython loads, a copyreg-style [`Registry`] and serde support.
//!
//! - [`loads`] reads every opcode CPython writes (framing, memo, Python 2 strings, fix_imports,
//!   extension codes, out-of-band buffers, persistent ids) into a [`Value`]. Globals are
//!   resolved only through the [`Registry`]: the default one allows exactly the globals CPython
//!   writes for basic types (complex, set, frozenset, bytearray, bytes, slice, Ellipsis,
//!   StopIteration), anything else is refused with an [`UnpicklingError`] naming
//!   `module.name`, or, with [`LoadOptions::inert`], kept as an [`Inert`] object for
//!   inspection. The decoder never recurses on the Rust stack, bounds nesting
//!   ([`LoadOptions::max_depth`]) and memory ([`LoadOptions::max_bytes`]), and never panics.
//! - The decoder is one opcode loop, [`decode`], generic over a [`Sink`] that makes the values:
//!   the loop owns the format, the limits and the safety policy ([`policy`]); [`loads`] is
//!   `decode` into the `Value` sink, and the Python package can drive the same loop with a sink
//!   of its own.
//! - [`dumps`] writes protocols 0-5 as CPython's pickler does: framing at 4+, memoized shared
//!   objects, the same globals for complex/set/frozenset/bytearray/bytes at each protocol,
//!   inert objects written back to an equivalent pickle, registered reducers and extension
//!   codes.
//!
//! The format notes, opcode table and safety model are in docs/pickle.md.
//!
//! ```
//! use cellar_pickle::{dumps, loads, LoadOptions, Registry};
//! use cellar_value::{parse, repr};
//!
//! let reg = Registry::default();
//! let v = parse("{'a': [1, 2.5, b'x'], (1, 2): {1j, frozenset()}}").unwrap();
//! for protocol in 0..=5 {
//!     let bytes = dumps(&v, protocol, &reg).unwrap();
//!     assert_eq!(repr(&loads(&bytes, &reg, &LoadOptions::default()).unwrap()), repr(&v));
//! }
//! // Nothing outside the registry is ever resolved:
//! let evil = b"cos\nsystem\n(S'echo hi'\ntR.";
//! let err = loads(evil, &reg, &LoadOptions::default()).unwrap_err();
//! assert!(err.message.contains("'os.system'"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod compat;
mod disasm;
pub mod encode;
mod error;
mod globals;
mod inert;
pub mod ops;
pub mod policy;
mod read;
mod registry;
mod serde_api;
pub mod sink;
mod text;
mod value_sink;
mod write;

pub use crate::disasm::{disassemble, Op};
pub use crate::error::{ErrorKind, PicklingError, RegistryError, UnpicklingError};
pub use crate::globals::{globals_of, GlobalUse, GlobalsReport};
pub use crate::inert::{Construct, Inert};
pub use crate::read::{decode, DecodeOptions, DEFAULT_MAX_DEPTH};
pub use crate::registry::{Constructor, Reducer, Registry};
pub use crate::serde_api::{from_slice, from_slice_with, to_vec, to_vec_with, SerdeError};
pub use crate::sink::{Buffer, GlobalRef, Items, Lookup, Shape, Sink};
pub use crate::text::{DecodeErrors, StringEncoding};
pub use crate::value_sink::{LoadOptions, PersistentLoad};
pub use crate::write::MAX_DUMP_DEPTH;
pub use cellar_value::Value;

/// `pickle.py`'s `find_class` name mapping for protocols 0-2 with `fix_imports` (Python 2 names
/// to Python 3 ones, from CPython 3.11's `_compat_pickle`): `('__builtin__', 'set')` ->
/// `('builtins', 'set')`. Names without a mapping come back unchanged.
pub fn fix_imports_name<'a>(module: &'a str, name: &'a str) -> (&'a str, &'a str) {
    compat::py2_to_py3(module, name)
}

/// The reverse of [`fix_imports_name`], what `pickle.py`'s `save_global` writes at protocols
/// 0-2 with `fix_imports`: `('builtins', 'set')` -> `('__builtin__', 'set')`.
pub fn py2_global_name<'a>(module: &'a str, name: &'a str) -> (&'a str, &'a str) {
    compat::py3_to_py2(module, name)
}

/// The highest protocol (`pickle.HIGHEST_PROTOCOL`).
pub const HIGHEST_PROTOCOL: u8 = 5;
/// The protocol CPython 3.8-3.13 uses by default (`pickle.DEFAULT_PROTOCOL`; 5 from 3.14).
pub const DEFAULT_PROTOCOL: u8 = 4;

/// `pickle.loads(data)` restricted to `registry`: decodes the first pickle in `data` (trailing
/// bytes are ignored, as in CPython).
pub fn loads(
    data: &[u8],
    registry: &Registry,
    opts: &LoadOptions<'_>,
) -> Result<Value, UnpicklingError> {
    loads_with(data, registry, opts).map(|(v, _)| v)
}

/// [`loads`] that also returns how many bytes the pickle used (through its STOP opcode), for
/// reading consecutive pickles from one buffer (`pickle.load` on a file).
pub fn loads_with(
    data: &[u8],
    registry: &Registry,
    opts: &LoadOptions<'_>,
) -> Result<(Value, usize), UnpicklingError> {
    value_sink::loads_with(data, registry, opts)
}

/// `pickle.dumps(value, protocol)` (protocol 0-5) with `registry`'s reducers and extension
/// codes.
pub fn dumps(value: &Value, protocol: u8, registry: &Registry) -> Result<Vec<u8>, PicklingError> {
    write::dumps(value, protocol, registry)
}
