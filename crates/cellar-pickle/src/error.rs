//! pickle's errors, typed like the exceptions CPython raises so bindings can map them 1:1.

use std::fmt;

/// Which Python exception CPython raises for this failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `pickle.UnpicklingError`: malformed data, refused globals, memo and stack errors, limits.
    Unpickling,
    /// `EOFError`: the data is empty ("Ran out of input").
    Eof,
    /// `ValueError`: unsupported protocol, unregistered extension code, int digit limit, bad
    /// escapes.
    Value,
    /// `UnicodeDecodeError`: text that does not decode (BINUNICODE, or a Python 2 string under
    /// the chosen encoding with errors='strict').
    UnicodeDecode,
    /// `TypeError`: an unhashable dict key or set item.
    Type,
}

impl ErrorKind {
    /// The Python exception class name.
    pub fn python_name(self) -> &'static str {
        match self {
            ErrorKind::Unpickling => "UnpicklingError",
            ErrorKind::Eof => "EOFError",
            ErrorKind::Value => "ValueError",
            ErrorKind::UnicodeDecode => "UnicodeDecodeError",
            ErrorKind::Type => "TypeError",
        }
    }
}

/// A failure to decode a pickle, with the offset of the opcode being decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpicklingError {
    /// The kind of exception CPython raises here.
    pub kind: ErrorKind,
    /// The message (CPython's wording where CPython has one).
    pub message: String,
    /// Offset in the input of the opcode that failed.
    pub offset: usize,
}

impl UnpicklingError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>, offset: usize) -> Self {
        UnpicklingError {
            kind,
            message: message.into(),
            offset,
        }
    }
}

impl fmt::Display for UnpicklingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (at byte {})",
            self.kind.python_name(),
            self.message,
            self.offset
        )
    }
}

impl std::error::Error for UnpicklingError {}

/// A value that cannot be pickled (CPython raises `pickle.PicklingError`, `TypeError` or
/// `ValueError`; all are reported here with CPython's message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PicklingError {
    /// What went wrong.
    pub message: String,
}

impl PicklingError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        PicklingError {
            message: message.into(),
        }
    }
}

impl fmt::Display for PicklingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PicklingError: {}", self.message)
    }
}

impl std::error::Error for PicklingError {}

/// A copyreg rule was broken (CPython raises `ValueError` with the same message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    /// copyreg's message.
    pub message: String,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ValueError: {}", self.message)
    }
}

impl std::error::Error for RegistryError {}
