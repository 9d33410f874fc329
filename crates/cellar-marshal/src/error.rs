//! marshal's errors, typed like the exceptions CPython raises so bindings can map them 1:1.

use std::fmt;

/// Which Python exception CPython raises for this failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `EOFError`: the data ended early.
    Eof,
    /// `ValueError`: malformed data, bad sizes or references, depth, disallowed code objects.
    Value,
    /// `TypeError`: a NULL where an object is required, an unhashable key or set item.
    Type,
    /// `UnicodeDecodeError`: a `u`/`t` string that is not UTF-8 (surrogates allowed).
    UnicodeDecode,
}

impl ErrorKind {
    /// The Python exception class name.
    pub fn python_name(self) -> &'static str {
        match self {
            ErrorKind::Eof => "EOFError",
            ErrorKind::Value => "ValueError",
            ErrorKind::Type => "TypeError",
            ErrorKind::UnicodeDecode => "UnicodeDecodeError",
        }
    }
}

/// A failure to decode marshal data, with the byte offset where it was detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The kind of exception CPython raises here.
    pub kind: ErrorKind,
    /// CPython's message (e.g. "bad marshal data (unknown type code)").
    pub message: String,
    /// Offset in the input of the byte that could not be decoded.
    pub offset: usize,
}

impl DecodeError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>, offset: usize) -> DecodeError {
        DecodeError {
            kind,
            message: message.into(),
            offset,
        }
    }
}

impl fmt::Display for DecodeError {
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

impl std::error::Error for DecodeError {}

/// A value that cannot be marshalled (CPython raises `ValueError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    /// CPython's message: "unmarshallable object", "object too deeply nested to marshal",
    /// "marshalling code objects is disallowed".
    pub message: String,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ValueError: {}", self.message)
    }
}

impl std::error::Error for EncodeError {}
