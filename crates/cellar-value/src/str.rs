//! Python `str`: a sequence of code points, lone surrogates included.
//!
//! Stored as "UTF-8 with surrogatepass" (what CPython's marshal and pickle write): ordinary
//! UTF-8, except that a surrogate code point U+D800..U+DFFF is encoded on its own as the three
//! bytes `ED A0..BF 80..BF`. Two surrogates stay two code points (they are never joined), so
//! the mapping between Python strings and these bytes is one-to-one.

use std::fmt;

/// A Python `str` value. Equality and hashing ignore the `interned` flag.
pub struct PyStr {
    bytes: Box<[u8]>,
    interned: bool,
    /// The dict/set hash once computed (0 = not yet), as CPython caches `str` hashes: keys
    /// shared through back-references are hashed once.
    hash: std::sync::atomic::AtomicU64,
}

impl Clone for PyStr {
    fn clone(&self) -> PyStr {
        PyStr::with(self.bytes.clone(), self.interned)
    }
}

/// Invalid "UTF-8 with surrogatepass" bytes: the position and reason, as Python's
/// `UnicodeDecodeError` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utf8Error {
    /// Offset of the first invalid byte.
    pub start: usize,
    /// Offset one past the invalid sequence.
    pub end: usize,
    /// Python's reason text ("invalid start byte", "unexpected end of data", ...).
    pub reason: &'static str,
}

impl fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'utf-8' codec can't decode bytes in position {}-{}: {}",
            self.start,
            self.end.saturating_sub(1),
            self.reason
        )
    }
}

impl std::error::Error for Utf8Error {}

impl PyStr {
    fn with(bytes: Box<[u8]>, interned: bool) -> PyStr {
        PyStr {
            bytes,
            interned,
            hash: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The cached hash, computing it with `f` the first time.
    pub(crate) fn cached_hash(&self, f: impl FnOnce(&[u8]) -> u64) -> u64 {
        use std::sync::atomic::Ordering;
        let h = self.hash.load(Ordering::Relaxed);
        if h != 0 {
            return h;
        }
        let h = f(&self.bytes).max(1);
        self.hash.store(h, Ordering::Relaxed);
        h
    }

    /// A str from Rust text (never contains surrogates).
    pub fn new(s: &str) -> PyStr {
        PyStr::with(s.as_bytes().into(), false)
    }

    /// A str from "UTF-8 with surrogatepass" bytes, validated.
    pub fn from_utf8_surrogatepass(bytes: &[u8]) -> Result<PyStr, Utf8Error> {
        validate_surrogatepass(bytes)?;
        Ok(PyStr::with(bytes.into(), false))
    }

    /// A str from Latin-1 bytes (every byte is one code point), as marshal's `a`/`z` codes load.
    pub fn from_latin1(bytes: &[u8]) -> PyStr {
        if bytes.is_ascii() {
            return PyStr::with(bytes.into(), false);
        }
        let mut s = String::with_capacity(bytes.len() * 2);
        s.extend(bytes.iter().map(|&b| b as char));
        PyStr::with(s.into_bytes().into(), false)
    }

    /// A str from code points; fails on a value above U+10FFFF.
    pub fn from_code_points<I: IntoIterator<Item = u32>>(cps: I) -> Option<PyStr> {
        let mut out = Vec::new();
        for cp in cps {
            push_code_point(&mut out, cp)?;
        }
        Some(PyStr::with(out.into(), false))
    }

    /// Marks (or unmarks) this string as interned; marshal writes interned strings with the
    /// `t`/`A`/`Z` codes and CPython interns them on load.
    pub fn with_interned(mut self, interned: bool) -> PyStr {
        self.interned = interned;
        self
    }

    /// Whether the string is interned.
    pub fn is_interned(&self) -> bool {
        self.interned
    }

    /// The "UTF-8 with surrogatepass" bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The text as `&str` if it has no lone surrogates.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    /// The text with each lone surrogate replaced by U+FFFD.
    pub fn to_string_lossy(&self) -> String {
        match self.as_str() {
            Some(s) => s.to_owned(),
            None => self
                .code_points()
                .map(|c| char::from_u32(c).unwrap_or('\u{FFFD}'))
                .collect(),
        }
    }

    /// Whether every code point is ASCII.
    pub fn is_ascii(&self) -> bool {
        self.bytes.is_ascii()
    }

    /// Number of code points (Python's `len()`).
    pub fn len(&self) -> usize {
        self.bytes.iter().filter(|&&b| (b & 0xC0) != 0x80).count()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The code points, surrogates included.
    pub fn code_points(&self) -> CodePoints<'_> {
        CodePoints {
            bytes: &self.bytes,
            pos: 0,
        }
    }
}

impl PartialEq for PyStr {
    fn eq(&self, other: &PyStr) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for PyStr {}

impl std::hash::Hash for PyStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state)
    }
}

impl PartialOrd for PyStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PyStr {
    /// Code point order, as Python compares strings (the surrogatepass encoding keeps it).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.code_points().cmp(other.code_points())
    }
}

impl fmt::Debug for PyStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::repr::str_repr(self))
    }
}

impl From<&str> for PyStr {
    fn from(s: &str) -> PyStr {
        PyStr::new(s)
    }
}
impl From<String> for PyStr {
    fn from(s: String) -> PyStr {
        PyStr::with(s.into_bytes().into(), false)
    }
}

/// Iterator over the code points of a [`PyStr`].
pub struct CodePoints<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Iterator for CodePoints<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        let b = self.bytes;
        let i = self.pos;
        let b0 = *b.get(i)? as u32;
        let (cp, n) = if b0 < 0x80 {
            (b0, 1)
        } else if b0 < 0xE0 {
            (((b0 & 0x1F) << 6) | cont(b, i + 1), 2)
        } else if b0 < 0xF0 {
            (
                ((b0 & 0x0F) << 12) | (cont(b, i + 1) << 6) | cont(b, i + 2),
                3,
            )
        } else {
            (
                ((b0 & 0x07) << 18)
                    | (cont(b, i + 1) << 12)
                    | (cont(b, i + 2) << 6)
                    | cont(b, i + 3),
                4,
            )
        };
        self.pos = i + n;
        Some(cp)
    }
}

fn cont(b: &[u8], i: usize) -> u32 {
    b.get(i).map_or(0, |&x| (x & 0x3F) as u32)
}

/// Appends one code point in surrogatepass UTF-8; `None` above U+10FFFF.
pub(crate) fn push_code_point(out: &mut Vec<u8>, cp: u32) -> Option<()> {
    match cp {
        0..=0x7F => out.push(cp as u8),
        0x80..=0x7FF => out.extend_from_slice(&[0xC0 | (cp >> 6) as u8, 0x80 | (cp & 0x3F) as u8]),
        0x800..=0xFFFF => out.extend_from_slice(&[
            0xE0 | (cp >> 12) as u8,
            0x80 | ((cp >> 6) & 0x3F) as u8,
            0x80 | (cp & 0x3F) as u8,
        ]),
        0x10000..=0x10FFFF => out.extend_from_slice(&[
            0xF0 | (cp >> 18) as u8,
            0x80 | ((cp >> 12) & 0x3F) as u8,
            0x80 | ((cp >> 6) & 0x3F) as u8,
            0x80 | (cp & 0x3F) as u8,
        ]),
        _ => return None,
    }
    Some(())
}

/// Validates UTF-8 that may contain encoded surrogates, with the error positions and reasons
/// of CPython's `utf-8` decoder with `errors='surrogatepass'`.
pub fn validate_surrogatepass(bytes: &[u8]) -> Result<(), Utf8Error> {
    // Fast path: plain UTF-8 (the common case) is validated by the standard library.
    let mut i = match std::str::from_utf8(bytes) {
        Ok(_) => return Ok(()),
        Err(e) => e.valid_up_to(),
    };
    let n = bytes.len();
    while i < n {
        let b0 = bytes[i];
        if b0 < 0x80 {
            i += 1;
            continue;
        }
        let err = |end: usize, reason| {
            Err(Utf8Error {
                start: i,
                end,
                reason,
            })
        };
        let need = match b0 {
            0xC2..=0xDF => 1,
            0xE0..=0xEF => 2,
            0xF0..=0xF4 => 3,
            _ => return err(i + 1, "invalid start byte"),
        };
        // Second byte ranges (surrogates allowed after ED).
        let (lo, hi) = match b0 {
            0xE0 => (0xA0, 0xBF),
            0xF0 => (0x90, 0xBF),
            0xF4 => (0x80, 0x8F),
            _ => (0x80, 0xBF),
        };
        for k in 1..=need {
            let Some(&b) = bytes.get(i + k) else {
                return err(n, "unexpected end of data");
            };
            let ok = if k == 1 {
                (lo..=hi).contains(&b)
            } else {
                (0x80..=0xBF).contains(&b)
            };
            if !ok {
                return err(i + k, "invalid continuation byte");
            }
        }
        i += need + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surrogates_round_trip() {
        let s = PyStr::from_code_points([0x61, 0xD800, 0xDC00, 0x1F600]).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(
            s.code_points().collect::<Vec<_>>(),
            vec![0x61, 0xD800, 0xDC00, 0x1F600]
        );
        let again = PyStr::from_utf8_surrogatepass(s.as_bytes()).unwrap();
        assert_eq!(again, s);
        assert!(s.as_str().is_none());
    }

    #[test]
    fn invalid_bytes_are_reported() {
        assert_eq!(
            validate_surrogatepass(b"ab\xff").unwrap_err().reason,
            "invalid start byte"
        );
        assert_eq!(
            validate_surrogatepass(b"\xe2\x82").unwrap_err().reason,
            "unexpected end of data"
        );
        assert_eq!(
            validate_surrogatepass(b"\xc3\x28").unwrap_err().reason,
            "invalid continuation byte"
        );
        assert!(validate_surrogatepass(b"\xed\xa0\x80").is_ok());
        assert!(validate_surrogatepass(b"\xc0\x80").is_err());
    }

    #[test]
    fn latin1() {
        assert_eq!(PyStr::from_latin1(b"\xe9").as_str(), Some("é"));
    }
}
