//! Python literal syntax in: [`parse`] reads everything `ast.literal_eval` accepts (numbers in
//! every base with underscores, imaginary literals and `a+bj`, str and bytes literals with all
//! prefixes, escapes, triple quotes and implicit concatenation, tuples, lists, dicts, sets,
//! `None`/`True`/`False`/`...`, unary signs) plus the forms [`crate::repr`] prints for values
//! that have no literal: `set()`, `frozenset(...)`, `float('nan')`/`float('inf')`,
//! `bytearray(b'...')`, `slice(stop)` / `slice(start, stop[, step])`, `Ellipsis`. Nothing is ever evaluated.
//!
//! Errors carry the byte offset. Nesting is limited to 200 levels, like CPython's parser
//! ("too many nested parentheses").

use std::fmt;

use num_bigint::BigInt;
use num_traits::Num;

use crate::str::{push_code_point, PyStr};
use crate::value::Value;

/// Maximum nesting of brackets, as CPython's tokenizer (MAXLEVEL).
pub const MAX_NESTING: usize = 200;

/// A literal that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the input.
    pub offset: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {}", self.message, self.offset)
    }
}

impl std::error::Error for ParseError {}

/// Parses one Python literal (surrounding whitespace and comments allowed).
pub fn parse(src: &str) -> Result<Value, ParseError> {
    let mut p = Parser {
        s: src.as_bytes(),
        src,
        pos: 0,
        depth: 0,
    };
    p.skip_ws();
    let v = p.expr()?;
    p.skip_ws();
    if p.pos < p.s.len() {
        return Err(p.err("unexpected text after the literal"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    pos: usize,
    depth: usize,
}

fn is_number(v: &Value) -> bool {
    matches!(v, Value::Int(_) | Value::Float(_) | Value::Bool(_))
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(crate::Int::Small(i)) => Some(*i as f64),
        Value::Int(crate::Int::Big(b)) => num_traits::ToPrimitive::to_f64(&**b),
        Value::Float(f) => Some(*f),
        Value::Bool(b) => Some(*b as i64 as f64),
        _ => None,
    }
}

impl<'a> Parser<'a> {
    fn err(&self, msg: &str) -> ParseError {
        ParseError {
            offset: self.pos,
            message: msg.to_string(),
        }
    }
    fn err_at(&self, offset: usize, msg: impl Into<String>) -> ParseError {
        ParseError {
            offset,
            message: msg.into(),
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => self.pos += 1,
                b'\\' if self.s.get(self.pos + 1) == Some(&b'\n') => self.pos += 2,
                b'#' => {
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", c as char)))
        }
    }

    /// expr := signed | atom, optionally `(+|-) imaginary` after a real number: exactly the
    /// arithmetic `ast.literal_eval` allows (`-1`, `-(1)`, `1+2j`, `(-1)-2j`; not `--1`,
    /// `-(-1)`, `-True`, `1j+2j` or `1+2j+3j`).
    fn expr(&mut self) -> Result<Value, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let left = match self.peek() {
            Some(b'+' | b'-') => self.signed_number()?,
            _ => self.atom()?,
        };
        self.skip_ws();
        let op = match self.peek() {
            Some(b'+') => 1.0,
            Some(b'-') => -1.0,
            _ => return Ok(left),
        };
        let op_pos = self.pos;
        self.pos += 1;
        let re = match &left {
            Value::Int(_) | Value::Float(_) => as_f64(&left).unwrap_or(0.0),
            _ => {
                return Err(self.err_at(
                    start,
                    "only a real number may precede '+'/'-' and an imaginary literal",
                ))
            }
        };
        let (_, right) = self.number_in_parens()?;
        let Value::Complex(_, im) = right else {
            return Err(self.err_at(op_pos, "'+'/'-' must be followed by an imaginary literal"));
        };
        // Python computes complex(re, 0.0) +/- complex(0.0, im) component by component, which
        // fixes the signs of zeros: 5-0j is (5+0j), -0.0+1j is (0+1j).
        Ok(if op > 0.0 {
            Value::Complex(re + 0.0, 0.0 + im)
        } else {
            Value::Complex(re - 0.0, 0.0 - im)
        })
    }

    /// `+` or `-` applied to a number literal (possibly in parentheses).
    fn signed_number(&mut self) -> Result<Value, ParseError> {
        let neg = self.peek() == Some(b'-');
        self.pos += 1;
        let (_, v) = self.number_in_parens()?;
        if !neg {
            return Ok(v);
        }
        negate(v).ok_or_else(|| self.err("unary '-' applies only to numbers"))
    }

    /// A number literal, optionally wrapped in parentheses: `1`, `((2.5j))`.
    fn number_in_parens(&mut self) -> Result<(usize, Value), ParseError> {
        self.skip_ws();
        let start = self.pos;
        let mut opened = 0;
        while self.peek() == Some(b'(') {
            self.enter()?;
            self.pos += 1;
            opened += 1;
            self.skip_ws();
        }
        let is_num = match self.peek() {
            Some(c) if c.is_ascii_digit() => true,
            Some(b'.') => self.s.get(self.pos + 1).is_some_and(|d| d.is_ascii_digit()),
            _ => false,
        };
        if !is_num {
            return Err(self.err("a sign or '+'/'-' must be followed by a number literal"));
        }
        let v = self.number()?;
        for _ in 0..opened {
            self.expect(b')')?;
            self.depth -= 1;
        }
        Ok((start, v))
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.err("too many nested parentheses"));
        }
        Ok(())
    }

    fn atom(&mut self) -> Result<Value, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Err(self.err("expected a literal, found end of input"));
        };
        match c {
            b'0'..=b'9' => self.number(),
            b'.' if self.s.get(self.pos + 1).is_some_and(|d| d.is_ascii_digit()) => self.number(),
            b'.' if self.s[self.pos..].starts_with(b"...") => {
                self.pos += 3;
                Ok(Value::Ellipsis)
            }
            b'\'' | b'"' => self.strings(),
            b'(' => {
                self.enter()?;
                self.pos += 1;
                let (items, trailing) = self.items(b')')?;
                self.depth -= 1;
                if items.len() == 1 && !trailing {
                    Ok(items.into_iter().next().unwrap_or(Value::None))
                } else {
                    Ok(Value::tuple(items))
                }
            }
            b'[' => {
                self.enter()?;
                self.pos += 1;
                let (items, _) = self.items(b']')?;
                self.depth -= 1;
                Ok(Value::list(items))
            }
            b'{' => {
                self.enter()?;
                self.pos += 1;
                let v = self.brace(start)?;
                self.depth -= 1;
                Ok(v)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let id = self.ident();
                // String prefixes: r, u, b, br, rb (any case).
                if matches!(self.peek(), Some(b'\'' | b'"')) {
                    let lower = id.to_ascii_lowercase();
                    if matches!(lower.as_str(), "r" | "u" | "b" | "br" | "rb") {
                        self.pos = start;
                        return self.strings();
                    }
                    return Err(self.err_at(start, format!("unsupported string prefix {id:?}")));
                }
                self.named(id, start)
            }
            _ => Err(self.err(&format!(
                "unexpected character {:?}",
                self.src[self.pos..].chars().next().unwrap_or('?')
            ))),
        }
    }

    fn ident(&mut self) -> &'a str {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    fn named(&mut self, id: &str, start: usize) -> Result<Value, ParseError> {
        match id {
            "None" => return Ok(Value::None),
            "True" => return Ok(Value::Bool(true)),
            "False" => return Ok(Value::Bool(false)),
            "Ellipsis" => return Ok(Value::Ellipsis),
            "StopIteration" => return Ok(Value::StopIteration),
            _ => {}
        }
        if !self.eat(b'(') {
            return Err(self.err_at(start, format!("{id:?} is not a literal")));
        }
        self.enter()?;
        let (args, _) = self.items(b')')?;
        self.depth -= 1;
        let bad = |msg: &str| Err(self.err_at(start, format!("{id}(): {msg}")));
        match (id, args.as_slice()) {
            ("set", []) => Ok(Value::Set(Default::default())),
            ("frozenset", []) => Ok(Value::FrozenSet(Default::default())),
            ("set" | "frozenset", [it]) => {
                let items = match iterate(it) {
                    Some(items) => items,
                    None => return bad("argument must be a literal iterable"),
                };
                let r = if id == "set" {
                    Value::set(items)
                } else {
                    Value::frozenset(items)
                };
                r.map_err(|e| self.err_at(start, e.to_string()))
            }
            ("float", [Value::Str(s)]) => {
                let t = s.to_string_lossy();
                match parse_float_text(t.trim()) {
                    Some(f) => Ok(Value::Float(f)),
                    None => bad(&format!(
                        "could not convert string to float: {}",
                        crate::repr::str_repr(s)
                    )),
                }
            }
            ("float", [v]) if is_number(v) => Ok(Value::Float(as_f64(v).unwrap_or(0.0))),
            ("complex", [a, b]) if is_number(a) && is_number(b) => Ok(Value::Complex(
                as_f64(a).unwrap_or(0.0),
                as_f64(b).unwrap_or(0.0),
            )),
            ("bytearray", []) => Ok(Value::ByteArray(Default::default())),
            ("bytearray", [Value::Bytes(b)]) => {
                Ok(Value::ByteArray(std::sync::Arc::new(b.to_vec())))
            }
            // As Python's slice(): slice(stop), slice(start, stop), slice(start, stop, step).
            ("slice", [b]) => Ok(Value::Slice(std::sync::Arc::new(crate::Slice {
                start: Value::None,
                stop: b.clone(),
                step: Value::None,
            }))),
            ("slice", [a, b]) => Ok(Value::Slice(std::sync::Arc::new(crate::Slice {
                start: a.clone(),
                stop: b.clone(),
                step: Value::None,
            }))),
            ("slice", [a, b, c]) => Ok(Value::Slice(std::sync::Arc::new(crate::Slice {
                start: a.clone(),
                stop: b.clone(),
                step: c.clone(),
            }))),
            ("set" | "frozenset" | "float" | "complex" | "bytearray" | "slice", _) => {
                bad("unsupported arguments")
            }
            _ => Err(self.err_at(start, format!("{id}(...) is not a literal"))),
        }
    }

    /// Comma-separated expressions up to `close`; returns them and whether a comma trailed.
    fn items(&mut self, close: u8) -> Result<(Vec<Value>, bool), ParseError> {
        let mut items = Vec::new();
        let mut trailing = false;
        loop {
            if self.eat(close) {
                return Ok((items, trailing));
            }
            items.push(self.expr()?);
            trailing = false;
            if self.eat(b',') {
                trailing = true;
                continue;
            }
            self.expect(close)?;
            return Ok((items, trailing));
        }
    }

    fn brace(&mut self, start: usize) -> Result<Value, ParseError> {
        if self.eat(b'}') {
            return Ok(Value::Dict(Default::default()));
        }
        let first = self.expr()?;
        if self.eat(b':') {
            let mut d = crate::Dict::new();
            let mut k = first;
            loop {
                let kpos = self.pos;
                let v = self.expr()?;
                d.insert(k, v)
                    .map_err(|e| self.err_at(kpos, e.to_string()))?;
                if !self.eat(b',') {
                    self.expect(b'}')?;
                    break;
                }
                if self.eat(b'}') {
                    break;
                }
                k = self.expr()?;
                self.expect(b':')?;
            }
            return Ok(Value::Dict(std::sync::Arc::new(d)));
        }
        let mut items = vec![first];
        while self.eat(b',') {
            if self.eat(b'}') {
                return Value::set(items).map_err(|e| self.err_at(start, e.to_string()));
            }
            items.push(self.expr()?);
        }
        self.expect(b'}')?;
        Value::set(items).map_err(|e| self.err_at(start, e.to_string()))
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let s = self.s;
        // Integer with a base prefix.
        if s[start] == b'0'
            && matches!(
                s.get(start + 1),
                Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
            )
        {
            let radix = match s[start + 1] | 0x20 {
                b'x' => 16,
                b'o' => 8,
                _ => 2,
            };
            self.pos += 2;
            let digits_start = self.pos;
            while self
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
            {
                self.pos += 1;
            }
            let text = &self.src[digits_start..self.pos];
            return parse_int_digits(text, radix).ok_or_else(|| {
                self.err_at(
                    start,
                    format!("invalid number literal {:?}", &self.src[start..self.pos]),
                )
            });
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == b'_') {
            self.pos += 1;
        }
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            is_float = true;
            self.pos += 1;
            while self.peek().is_some_and(|c| c.is_ascii_digit() || c == b'_') {
                self.pos += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                is_float = true;
                while self.peek().is_some_and(|c| c.is_ascii_digit() || c == b'_') {
                    self.pos += 1;
                }
            } else {
                self.pos = save;
            }
        }
        let src = self.src;
        let text = &src[start..self.pos];
        let bad = || ParseError {
            offset: start,
            message: format!("invalid number literal {text:?}"),
        };
        if !valid_underscores(text) {
            return Err(bad());
        }
        let clean: String = text.chars().filter(|&c| c != '_').collect();
        if matches!(self.peek(), Some(b'j' | b'J')) {
            self.pos += 1;
            let f: f64 = clean.parse().map_err(|_| bad())?;
            return Ok(Value::Complex(0.0, f));
        }
        if self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            return Err(self.err(&format!(
                "invalid number literal {:?}",
                &self.src[start..=self.pos]
            )));
        }
        if is_float {
            return clean.parse::<f64>().map(Value::Float).map_err(|_| bad());
        }
        if clean.len() > 1 && clean.starts_with('0') && clean.bytes().any(|c| c != b'0') {
            return Err(self.err_at(start, "leading zeros in decimal integer literals are not permitted; use an 0o prefix for octal integers"));
        }
        parse_int_digits(text, 10).ok_or_else(bad)
    }

    /// One or more adjacent string literals, concatenated.
    fn strings(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        let mut text: Option<Vec<u8>> = None; // surrogatepass UTF-8
        let mut bytes: Option<Vec<u8>> = None;
        loop {
            self.skip_ws();
            let lit_start = self.pos;
            let mut raw = false;
            let mut is_bytes = false;
            while let Some(c) = self.peek() {
                match c | 0x20 {
                    b'r' => raw = true,
                    b'b' => is_bytes = true,
                    b'u' => {}
                    _ => break,
                }
                self.pos += 1;
            }
            let Some(q) = self.peek().filter(|c| *c == b'\'' || *c == b'"') else {
                self.pos = lit_start;
                break;
            };
            let triple = self.s[self.pos..].starts_with(&[q, q, q]);
            self.pos += if triple { 3 } else { 1 };
            let body_start = self.pos;
            // Find the closing quote.
            let end = loop {
                let Some(c) = self.peek() else {
                    return Err(self.err_at(lit_start, "unterminated string literal"));
                };
                if c == b'\\' {
                    self.pos += 2;
                    continue;
                }
                if c == b'\n' && !triple {
                    return Err(self.err_at(lit_start, "unterminated string literal"));
                }
                if c == q && (!triple || self.s[self.pos..].starts_with(&[q, q, q])) {
                    let end = self.pos;
                    self.pos += if triple { 3 } else { 1 };
                    break end;
                }
                self.pos += 1;
            };
            let body = self
                .src
                .get(body_start..end)
                .ok_or_else(|| self.err_at(lit_start, "bad string literal"))?;
            if is_bytes {
                if text.is_some() {
                    return Err(self.err_at(lit_start, "cannot mix bytes and nonbytes literals"));
                }
                if !body.is_ascii() {
                    return Err(
                        self.err_at(lit_start, "bytes can only contain ASCII literal characters")
                    );
                }
                let out = bytes.get_or_insert_with(Vec::new);
                unescape(body, raw, true, out).map_err(|(o, m)| self.err_at(body_start + o, m))?;
            } else {
                if bytes.is_some() {
                    return Err(self.err_at(lit_start, "cannot mix bytes and nonbytes literals"));
                }
                let out = text.get_or_insert_with(Vec::new);
                unescape(body, raw, false, out).map_err(|(o, m)| self.err_at(body_start + o, m))?;
            }
        }
        if let Some(b) = bytes {
            return Ok(Value::Bytes(b.into()));
        }
        let t = text.unwrap_or_default();
        PyStr::from_utf8_surrogatepass(&t)
            .map(Value::from)
            .map_err(|e| self.err_at(start, e.to_string()))
    }
}

fn negate(v: Value) -> Option<Value> {
    Some(match &v {
        Value::Bool(b) => Value::int(-(*b as i64)),
        Value::Int(crate::Int::Small(i)) => match i.checked_neg() {
            Some(n) => Value::int(n),
            None => Value::bigint(-BigInt::from(*i)),
        },
        Value::Int(crate::Int::Big(b)) => Value::bigint(-(**b).clone()),
        Value::Float(f) => Value::Float(-f),
        Value::Complex(re, im) => Value::Complex(-re, -im),
        _ => return None,
    })
}

fn iterate(v: &Value) -> Option<Vec<Value>> {
    Some(match v {
        Value::List(items) | Value::Tuple(items) => items.to_vec(),
        Value::Set(s) | Value::FrozenSet(s) => s.iter().cloned().collect(),
        Value::Dict(d) => d.keys().cloned().collect(),
        Value::Str(s) => s
            .code_points()
            .filter_map(|c| PyStr::from_code_points([c]))
            .map(Value::from)
            .collect(),
        Value::Bytes(b) => b.iter().map(|&x| Value::int(x as i64)).collect(),
        _ => return None,
    })
}

fn valid_underscores(text: &str) -> bool {
    let b = text.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'_' {
            let prev_ok = i > 0 && b[i - 1].is_ascii_alphanumeric();
            let next_ok = b.get(i + 1).is_some_and(|n| n.is_ascii_alphanumeric());
            if !prev_ok || !next_ok {
                return false;
            }
        }
    }
    true
}

fn parse_int_digits(text: &str, radix: u32) -> Option<Value> {
    if text.is_empty()
        || text.starts_with('_') && radix == 10
        || text.ends_with('_')
        || text.contains("__")
    {
        return None;
    }
    let clean: String = text.chars().filter(|&c| c != '_').collect();
    if clean.is_empty() {
        return None;
    }
    if let Ok(v) = i64::from_str_radix(&clean, radix) {
        return Some(Value::int(v));
    }
    BigInt::from_str_radix(&clean, radix)
        .ok()
        .map(Value::bigint)
}

/// Python's `float(str)` for the texts literal syntax needs: numbers, inf, infinity, nan.
pub fn parse_float_text(t: &str) -> Option<f64> {
    let clean: String = t.chars().filter(|&c| c != '_').collect();
    let lower = clean.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if matches!(body, "inf" | "infinity" | "nan")
        || body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '+' | '-'))
    {
        return lower.parse().ok();
    }
    None
}

/// Decodes a literal's body into `out` (surrogatepass UTF-8 for str, raw bytes for bytes).
fn unescape(
    body: &str,
    raw: bool,
    is_bytes: bool,
    out: &mut Vec<u8>,
) -> Result<(), (usize, String)> {
    if raw {
        out.extend_from_slice(body.as_bytes());
        return Ok(());
    }
    let b = body.as_bytes();
    let mut i = 0;
    let push_cp = |out: &mut Vec<u8>, cp: u32, at: usize| -> Result<(), (usize, String)> {
        if is_bytes {
            out.push(cp as u8);
            Ok(())
        } else {
            push_code_point(out, cp).ok_or((at, "illegal Unicode character".to_string()))
        }
    };
    while i < b.len() {
        let c = b[i];
        if c != b'\\' {
            // Copy a run of ordinary characters.
            let start = i;
            while i < b.len() && b[i] != b'\\' {
                i += 1;
            }
            out.extend_from_slice(&b[start..i]);
            continue;
        }
        let at = i;
        let Some(&e) = b.get(i + 1) else {
            return Err((at, "trailing backslash".into()));
        };
        i += 2;
        let hex = |n: usize, i: &mut usize| -> Result<u32, (usize, String)> {
            let digits = body
                .get(*i..*i + n)
                .filter(|d| d.bytes().all(|x| x.is_ascii_hexdigit()));
            let Some(d) = digits else {
                return Err((
                    at,
                    format!("truncated \\{}{} escape", e as char, "X".repeat(n)),
                ));
            };
            *i += n;
            u32::from_str_radix(d, 16).map_err(|_| (at, "bad escape".to_string()))
        };
        match e {
            b'\n' => {}
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match b.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                push_cp(out, v, at)?;
            }
            b'x' => {
                let v = hex(2, &mut i)?;
                push_cp(out, v, at)?;
            }
            b'u' if !is_bytes => {
                let v = hex(4, &mut i)?;
                push_cp(out, v, at)?;
            }
            b'U' if !is_bytes => {
                let v = hex(8, &mut i)?;
                if v > 0x10FFFF {
                    return Err((at, "illegal Unicode character".into()));
                }
                push_cp(out, v, at)?;
            }
            b'N' if !is_bytes => {
                return Err((
                    at,
                    "\\N{...} named escapes are not supported; use \\u or \\U".into(),
                ));
            }
            _ => {
                // Unknown escapes keep the backslash, as Python does.
                out.push(b'\\');
                i -= 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repr::repr;

    fn rt(s: &str) -> String {
        repr(&parse(s).unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn literals() {
        assert_eq!(rt("0o777"), "511");
        assert_eq!(rt("\"\\777\""), "'ǿ'");
        assert_eq!(rt("1_0.5_0e1_0"), "105000000000.0");
        assert_eq!(rt("..."), "Ellipsis");
        assert_eq!(rt("-(1)"), "-1");
        assert_eq!(rt("+1j"), "1j");
        assert_eq!(rt("1-2j"), "(1-2j)");
        assert_eq!(rt("(1+2j)"), "(1+2j)");
        assert_eq!(rt("00"), "0");
        assert_eq!(rt("'a' \"b\" '''c'''"), "'abc'");
        assert_eq!(rt("rb'\\x00'"), "b'\\\\x00'");
        assert_eq!(
            rt("{1: 2, 'a': [None, True, (1,)], (): set()}"),
            "{1: 2, 'a': [None, True, (1,)], (): set()}"
        );
        assert_eq!(rt("frozenset({1})"), "frozenset({1})");
        assert_eq!(rt("float('-inf')"), "-inf");
        assert_eq!(rt("float('nan')"), "nan");
        assert_eq!(rt("'\\ud800'"), "'\\ud800'");
        assert_eq!(
            rt("123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
        assert_eq!(rt("-0x_ff"), "-255");
        assert_eq!(rt("bytearray(b'x')"), "bytearray(b'x')");
        assert_eq!(rt("slice(1, None, -1)"), "slice(1, None, -1)");
        assert_eq!(rt("slice(1, 2)"), "slice(1, 2, None)");
        assert_eq!(rt("slice(5)"), "slice(None, 5, None)");
        assert_eq!(rt("{1, 2,}"), "{1, 2}");
        assert_eq!(rt("  [1, # comment\n 2]  "), "[1, 2]");
    }

    #[test]
    fn rejects() {
        for bad in [
            "1+2",
            "[1, 2",
            "{[]: 1}",
            "foo",
            "f'x'",
            "01",
            "1__0",
            "'abc",
            "b'é'",
            "'a' b'b'",
            "x()",
            "slice()",
            "slice(1, 2, 3, 4)",
        ] {
            assert!(parse(bad).is_err(), "{bad} should fail");
        }
        let deep = "[".repeat(500) + &"]".repeat(500);
        assert_eq!(
            parse(&deep).unwrap_err().message,
            "too many nested parentheses"
        );
    }
}
