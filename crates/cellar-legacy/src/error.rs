//! Errors of the legacy readers. Every variant says which format, where in the file and what
//! was wrong, so a user can tell a damaged file from an unsupported one.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a legacy reader can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The bytes are not a file of the expected format (wrong magic).
    NotRecognised {
        /// The format that was expected (`"GDBM"`, `"Berkeley DB hash"`).
        format: &'static str,
        /// What was found.
        detail: String,
    },
    /// A file of a recognised format (or variant) that cellar does not read.
    Unsupported {
        /// The format.
        format: &'static str,
        /// What exactly is not supported and why.
        detail: String,
    },
    /// A structure that cannot be right: a damaged or truncated file.
    Corrupt {
        /// The format.
        format: &'static str,
        /// The file offset of the bad structure.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
}

impl Error {
    pub(crate) fn corrupt(format: &'static str, offset: u64, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            format,
            offset,
            detail: detail.into(),
        }
    }

    /// True for [`Error::Corrupt`] (a damaged file, as opposed to an unsupported one).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::NotRecognised { format, detail } => write!(f, "not a {format} file: {detail}"),
            Error::Unsupported { format, detail } => {
                write!(f, "unsupported {format} file: {detail}")
            }
            Error::Corrupt {
                format,
                offset,
                detail,
            } => write!(f, "damaged {format} file at offset {offset}: {detail}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
