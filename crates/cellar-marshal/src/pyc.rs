//! `.pyc` files: the 16-byte header CPython 3.7+ writes (PEP 552) before the marshalled code.
//!
//! ```text
//! 0      2      4          8                  12                 16
//! +------+------+----------+------------------+------------------+
//! | magic (LE)  |  flags   | mtime  (flags=0) | source size      |   timestamp-based
//! | u16  | \r\n |  u32 LE  | source hash (8 bytes, flags bit 0 set)  |   hash-based
//! +------+------+----------+-------------------------------------+
//! ```

use std::fmt;

/// How the cached code is validated against its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// flags = 0: the source's mtime (seconds, low 32 bits) and size.
    Timestamp {
        /// Source modification time, seconds since the epoch (mod 2^32).
        mtime: u32,
        /// Source size in bytes (mod 2^32).
        source_size: u32,
    },
    /// flags bit 0: a SipHash of the source; bit 1 says whether to check it.
    Hash {
        /// The 8-byte source hash.
        source_hash: [u8; 8],
        /// Whether the import system checks the hash (`--check-hash-based-pycs`).
        check_source: bool,
    },
}

/// A parsed `.pyc` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PycHeader {
    /// The magic number (e.g. 3495 for CPython 3.11).
    pub magic: u16,
    /// The raw flags word.
    pub flags: u32,
    /// What the header validates against.
    pub validation: Validation,
}

/// Size of the header in bytes.
pub const HEADER_LEN: usize = 16;

/// Why bytes are not a `.pyc` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PycError(pub String);

impl fmt::Display for PycError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for PycError {}

impl PycHeader {
    /// Whether `data` starts like a .pyc (magic ending in `\r\n`, known flag bits).
    pub fn looks_like_pyc(data: &[u8]) -> bool {
        data.len() >= HEADER_LEN
            && data[2..4] == *b"\r\n"
            && u32::from_le_bytes([data[4], data[5], data[6], data[7]]) <= 3
    }

    /// Parses the first 16 bytes.
    pub fn parse(data: &[u8]) -> Result<PycHeader, PycError> {
        if data.len() < HEADER_LEN {
            return Err(PycError(format!(
                "a .pyc header is 16 bytes; the data has {}",
                data.len()
            )));
        }
        if data[2..4] != *b"\r\n" {
            return Err(PycError(
                "not a .pyc file: the magic number does not end in \\r\\n".into(),
            ));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        let flags = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
        if flags > 3 {
            return Err(PycError(format!("invalid .pyc flags {flags:#x}")));
        }
        let validation = if flags & 1 == 0 {
            Validation::Timestamp {
                mtime: u32::from_le_bytes([data[8], data[9], data[10], data[11]]),
                source_size: u32::from_le_bytes([data[12], data[13], data[14], data[15]]),
            }
        } else {
            let mut h = [0u8; 8];
            h.copy_from_slice(&data[8..16]);
            Validation::Hash {
                source_hash: h,
                check_source: flags & 2 != 0,
            }
        };
        Ok(PycHeader {
            magic,
            flags,
            validation,
        })
    }

    /// The CPython release line this magic number belongs to (from
    /// Lib/importlib/_bootstrap_external.py), e.g. "3.11".
    pub fn python_version(&self) -> Option<&'static str> {
        const RANGES: &[(u16, u16, &str)] = &[
            (3390, 3399, "3.7"),
            (3400, 3419, "3.8"),
            (3420, 3429, "3.9"),
            (3430, 3449, "3.10"),
            (3450, 3499, "3.11"),
            (3500, 3549, "3.12"),
            (3550, 3599, "3.13"),
            (3600, 3649, "3.14"),
            (3650, 3699, "3.15"),
        ];
        RANGES
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&self.magic))
            .map(|r| r.2)
    }

    /// Whether the code objects in this file use the 3.11+ layout cellar decodes.
    pub fn code_layout_supported(&self) -> bool {
        (3450..3700).contains(&self.magic)
    }
}
