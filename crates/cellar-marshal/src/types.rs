//! marshal's type codes (CPython's Python/marshal.c) and limits.

pub(crate) const TYPE_NULL: u8 = b'0';
pub(crate) const TYPE_NONE: u8 = b'N';
pub(crate) const TYPE_FALSE: u8 = b'F';
pub(crate) const TYPE_TRUE: u8 = b'T';
pub(crate) const TYPE_STOPITER: u8 = b'S';
pub(crate) const TYPE_ELLIPSIS: u8 = b'.';
pub(crate) const TYPE_INT: u8 = b'i';
pub(crate) const TYPE_INT64: u8 = b'I';
pub(crate) const TYPE_FLOAT: u8 = b'f';
pub(crate) const TYPE_BINARY_FLOAT: u8 = b'g';
pub(crate) const TYPE_COMPLEX: u8 = b'x';
pub(crate) const TYPE_BINARY_COMPLEX: u8 = b'y';
pub(crate) const TYPE_LONG: u8 = b'l';
pub(crate) const TYPE_STRING: u8 = b's';
pub(crate) const TYPE_INTERNED: u8 = b't';
pub(crate) const TYPE_REF: u8 = b'r';
pub(crate) const TYPE_TUPLE: u8 = b'(';
pub(crate) const TYPE_LIST: u8 = b'[';
pub(crate) const TYPE_DICT: u8 = b'{';
pub(crate) const TYPE_CODE: u8 = b'c';
pub(crate) const TYPE_UNICODE: u8 = b'u';
pub(crate) const TYPE_SET: u8 = b'<';
pub(crate) const TYPE_FROZENSET: u8 = b'>';
pub(crate) const TYPE_ASCII: u8 = b'a';
pub(crate) const TYPE_ASCII_INTERNED: u8 = b'A';
pub(crate) const TYPE_SMALL_TUPLE: u8 = b')';
pub(crate) const TYPE_SHORT_ASCII: u8 = b'z';
pub(crate) const TYPE_SHORT_ASCII_INTERNED: u8 = b'Z';
pub(crate) const TYPE_SLICE: u8 = b':';
pub(crate) const FLAG_REF: u8 = 0x80;

/// CPython's `MAX_MARSHAL_STACK_DEPTH`.
pub const MAX_DEPTH: usize = 2000;
/// The newest format version cellar reads and writes (CPython 3.14's).
pub const CURRENT_VERSION: u32 = 5;
/// The default version of `dumps` (CPython 3.4-3.13).
pub const DEFAULT_VERSION: u32 = 4;
/// Largest size marshal can record (sizes are signed 32-bit).
pub(crate) const SIZE32_MAX: usize = 0x7FFF_FFFF;
