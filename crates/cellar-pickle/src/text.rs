//! Text codecs the pickle opcodes use: Python 2 string escapes (`STRING`), raw-unicode-escape
//! (`UNICODE`), the caller's encoding for Python 2 strings, and the writer's
//! raw-unicode-escape.

use cellar_value::PyStr;

/// How Python 2 `str` (STRING/BINSTRING/SHORT_BINSTRING) is decoded: pickle's `encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StringEncoding {
    /// `'ASCII'` (pickle's default).
    #[default]
    Ascii,
    /// `'latin1'`: every byte is one code point (the usual choice for numpy/datetime pickles).
    Latin1,
    /// `'utf-8'`.
    Utf8,
    /// `'bytes'`: load Python 2 strings as `bytes`.
    Bytes,
}

impl StringEncoding {
    /// Parses a Python encoding name (case-insensitive, `-`/`_` ignored, common aliases).
    pub fn from_name(name: &str) -> Option<StringEncoding> {
        let n: String = name
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        Some(match n.as_str() {
            "ascii" | "usascii" | "646" => StringEncoding::Ascii,
            "latin1" | "latin" | "iso88591" | "l1" | "8859" | "cp819" => StringEncoding::Latin1,
            "utf8" | "u8" | "utf" => StringEncoding::Utf8,
            "bytes" => StringEncoding::Bytes,
            _ => return None,
        })
    }
    fn codec(self) -> &'static str {
        match self {
            StringEncoding::Ascii => "ascii",
            StringEncoding::Latin1 => "latin-1",
            StringEncoding::Utf8 => "utf-8",
            StringEncoding::Bytes => "bytes",
        }
    }
}

/// pickle's `errors` for decoding Python 2 strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeErrors {
    /// `'strict'` (default): UnicodeDecodeError.
    #[default]
    Strict,
    /// `'replace'`: U+FFFD.
    Replace,
    /// `'ignore'`: drop undecodable bytes.
    Ignore,
    /// `'surrogateescape'`: byte `b` becomes U+DC00+b.
    SurrogateEscape,
    /// `'backslashreplace'`: `\xNN`.
    BackslashReplace,
}

impl DecodeErrors {
    /// Parses a Python error handler name.
    pub fn from_name(name: &str) -> Option<DecodeErrors> {
        Some(match name {
            "strict" => DecodeErrors::Strict,
            "replace" => DecodeErrors::Replace,
            "ignore" => DecodeErrors::Ignore,
            "surrogateescape" => DecodeErrors::SurrogateEscape,
            "backslashreplace" => DecodeErrors::BackslashReplace,
            _ => return None,
        })
    }
}

/// Decodes `bytes` per encoding/errors; `Err` carries Python's UnicodeDecodeError message.
pub(crate) fn decode_py2(
    bytes: &[u8],
    enc: StringEncoding,
    errors: DecodeErrors,
) -> Result<PyStr, String> {
    let mut cps: Vec<u32> = Vec::with_capacity(bytes.len());
    let bad = |cps: &mut Vec<u32>, b: u8, pos: usize, reason: &str| -> Result<(), String> {
        match errors {
            DecodeErrors::Strict => Err(format!(
                "'{}' codec can't decode byte 0x{b:02x} in position {pos}: {reason}",
                enc.codec()
            )),
            DecodeErrors::Replace => {
                cps.push(0xFFFD);
                Ok(())
            }
            DecodeErrors::Ignore => Ok(()),
            DecodeErrors::SurrogateEscape => {
                cps.push(0xDC00 + b as u32);
                Ok(())
            }
            DecodeErrors::BackslashReplace => {
                cps.extend(format!("\\x{b:02x}").chars().map(|c| c as u32));
                Ok(())
            }
        }
    };
    match enc {
        StringEncoding::Latin1 | StringEncoding::Bytes => return Ok(PyStr::from_latin1(bytes)),
        StringEncoding::Ascii => {
            if bytes.is_ascii() {
                return Ok(PyStr::from_latin1(bytes));
            }
            for (i, &b) in bytes.iter().enumerate() {
                if b < 0x80 {
                    cps.push(b as u32);
                } else {
                    bad(&mut cps, b, i, "ordinal not in range(128)")?;
                }
            }
        }
        StringEncoding::Utf8 => {
            let mut rest = bytes;
            let mut base = 0;
            loop {
                match std::str::from_utf8(rest) {
                    Ok(s) => {
                        cps.extend(s.chars().map(|c| c as u32));
                        break;
                    }
                    Err(e) => {
                        let good = e.valid_up_to();
                        let s = std::str::from_utf8(&rest[..good]).unwrap_or_default();
                        cps.extend(s.chars().map(|c| c as u32));
                        let n = e.error_len().unwrap_or(rest.len() - good).max(1);
                        let reason = if e.error_len().is_none() {
                            "unexpected end of data"
                        } else {
                            "invalid start byte"
                        };
                        if errors == DecodeErrors::Replace {
                            cps.push(0xFFFD);
                        } else {
                            for k in 0..n {
                                bad(&mut cps, rest[good + k], base + good + k, reason)?;
                            }
                        }
                        base += good + n;
                        rest = &rest[good + n..];
                    }
                }
            }
        }
    }
    PyStr::from_code_points(cps).ok_or_else(|| "invalid code point".to_string())
}

/// `codecs.escape_decode`: Python 2 string literal escapes to bytes.
pub(crate) fn escape_decode(s: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = s.get(i) else {
            return Err("Trailing \\ in string".into());
        };
        i += 1;
        match e {
            b'\n' => {}
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b't' => out.push(9),
            b'n' => out.push(10),
            b'r' => out.push(13),
            b'v' => out.push(11),
            b'a' => out.push(7),
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match s.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let hex = s.get(i..i + 2).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16)
                        .ok()
                        .filter(|_| h.bytes().all(|b| b.is_ascii_hexdigit()))
                });
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => return Err(format!("invalid \\x escape at position {}", i - 2)),
                }
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// `str(data, 'raw-unicode-escape')`.
pub(crate) fn raw_unicode_escape_decode(s: &[u8]) -> Result<PyStr, String> {
    let mut cps: Vec<u32> = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c != b'\\' {
            cps.push(c as u32);
            i += 1;
            continue;
        }
        // A run of backslashes: \u escapes count only after an odd number of them.
        let start = i;
        while i < s.len() && s[i] == b'\\' {
            i += 1;
        }
        let run = i - start;
        let escape = run % 2 == 1 && matches!(s.get(i), Some(b'u' | b'U'));
        let literal = if escape { run - 1 } else { run };
        for _ in 0..literal {
            cps.push(b'\\' as u32);
        }
        if !escape {
            continue;
        }
        let n = if s[i] == b'u' { 4 } else { 8 };
        let digits = s
            .get(i + 1..i + 1 + n)
            .filter(|d| d.iter().all(u8::is_ascii_hexdigit));
        let Some(d) = digits else {
            return Err(format!(
                "'rawunicodeescape' codec can't decode bytes in position {}-{}: truncated \\{}XXXX escape",
                i - 1,
                (i + n).min(s.len().saturating_sub(1)),
                s[i] as char
            ));
        };
        let v = u32::from_str_radix(std::str::from_utf8(d).unwrap_or("0"), 16).unwrap_or(u32::MAX);
        if v > 0x10FFFF {
            return Err(format!(
                "'rawunicodeescape' codec can't decode bytes in position {}-{}: \\Uxxxxxxxx out of range",
                i - 1,
                i + n
            ));
        }
        cps.push(v);
        i += 1 + n;
    }
    PyStr::from_code_points(cps).ok_or_else(|| "invalid code point".to_string())
}

/// The writer's protocol 0 text form of a str: pickle.py's replacements, then
/// raw-unicode-escape.
pub(crate) fn raw_unicode_escape_encode(s: &PyStr, out: &mut Vec<u8>) {
    for cp in s.code_points() {
        match cp {
            0x5C | 0x00 | 0x0A | 0x0D | 0x1A => {
                out.extend_from_slice(format!("\\u{cp:04x}").as_bytes());
            }
            0..=0xFF => out.push(cp as u8),
            0x100..=0xFFFF => out.extend_from_slice(format!("\\u{cp:04x}").as_bytes()),
            _ => out.extend_from_slice(format!("\\U{cp:08x}").as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape_decode(br"a\n\x41\101\q\\").unwrap(), b"a\nAA\\q\\");
        assert!(escape_decode(br"\x4").is_err());
        assert!(escape_decode(b"\\").is_err());
        let s = raw_unicode_escape_decode(br"\u00e9\U0001f600x\\u").unwrap();
        assert_eq!(
            s.code_points().collect::<Vec<_>>(),
            vec![0xe9, 0x1f600, b'x' as u32, 0x5c, 0x5c, b'u' as u32]
        );
        assert!(raw_unicode_escape_decode(br"\u12").is_err());
    }

    #[test]
    fn py2_decoding() {
        let e = decode_py2(b"a\xe9", StringEncoding::Ascii, DecodeErrors::Strict).unwrap_err();
        assert_eq!(
            e,
            "'ascii' codec can't decode byte 0xe9 in position 1: ordinal not in range(128)"
        );
        let s = decode_py2(b"a\xe9", StringEncoding::Latin1, DecodeErrors::Strict).unwrap();
        assert_eq!(s.as_str(), Some("a\u{e9}"));
        let s = decode_py2(
            b"a\xe9",
            StringEncoding::Utf8,
            DecodeErrors::SurrogateEscape,
        )
        .unwrap();
        assert_eq!(s.code_points().collect::<Vec<_>>(), vec![0x61, 0xdce9]);
    }
}
