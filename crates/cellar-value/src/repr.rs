//! Python literal syntax out: [`repr`] prints a value exactly as CPython 3.11's `repr()` does
//! (shortest round-trip floats, str quoting and escapes by Unicode 14 printability, set and
//! frozenset forms, complex, bytes, nested containers). Set elements print in the set's own
//! order (CPython's depends on hashing); [`repr_sorted`] sorts them by their repr for
//! order-independent comparison. Code objects, which have no literal, print in a structured,
//! readable multi-line form. Printing never recurses on the Rust stack for containers.

use std::fmt::Write as _;

use crate::object::{Construct, Object};
use crate::printable::PRINTABLE;
use crate::str::PyStr;
use crate::value::{Code, Int, Value};

/// `repr(value)`.
pub fn repr(v: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, v, false, 0);
    out
}

/// `repr(value)` with the elements of every set and frozenset sorted by their own repr, so two
/// equal values print identically whatever their set order.
pub fn repr_sorted(v: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, v, true, 0);
    out
}

enum Task<'a> {
    Val(&'a Value),
    Text(&'static str),
    Owned(String),
}

fn write_repr(out: &mut String, root: &Value, sorted: bool, indent: usize) {
    let mut stack: Vec<Task<'_>> = vec![Task::Val(root)];
    while let Some(task) = stack.pop() {
        let v = match task {
            Task::Text(t) => {
                out.push_str(t);
                continue;
            }
            Task::Owned(t) => {
                out.push_str(&t);
                continue;
            }
            Task::Val(v) => v,
        };
        match v {
            Value::None => out.push_str("None"),
            Value::Bool(true) => out.push_str("True"),
            Value::Bool(false) => out.push_str("False"),
            Value::Ellipsis => out.push_str("Ellipsis"),
            Value::StopIteration => out.push_str("<class 'StopIteration'>"),
            Value::Int(Int::Small(i)) => {
                let _ = write!(out, "{i}");
            }
            Value::Int(Int::Big(b)) => {
                let _ = write!(out, "{b}");
            }
            Value::Float(f) => out.push_str(&float_repr(*f)),
            Value::Complex(re, im) => out.push_str(&complex_repr(*re, *im)),
            Value::Str(s) => push_str_repr(out, s),
            Value::Bytes(b) => push_bytes_repr(out, b, false),
            Value::ByteArray(b) => {
                out.push_str("bytearray(");
                push_bytes_repr(out, b, true);
                out.push(')');
            }
            Value::Tuple(items) => {
                out.push('(');
                if items.len() == 1 {
                    stack.push(Task::Text(",)"));
                    stack.push(Task::Val(&items[0]));
                } else {
                    push_seq(&mut stack, items.iter(), ")");
                }
            }
            Value::List(items) => {
                out.push('[');
                push_seq(&mut stack, items.iter(), "]");
            }
            Value::Dict(d) => {
                out.push('{');
                stack.push(Task::Text("}"));
                for (i, (k, val)) in d.iter().enumerate().rev() {
                    stack.push(Task::Val(val));
                    stack.push(Task::Text(": "));
                    stack.push(Task::Val(k));
                    if i > 0 {
                        stack.push(Task::Text(", "));
                    }
                }
            }
            Value::Set(s) | Value::FrozenSet(s) => {
                let frozen = matches!(v, Value::FrozenSet(_));
                if s.is_empty() {
                    out.push_str(if frozen { "frozenset()" } else { "set()" });
                    continue;
                }
                out.push_str(if frozen { "frozenset({" } else { "{" });
                let close = if frozen { "})" } else { "}" };
                if sorted {
                    // Set members are hashable (tuples, frozensets, scalars): bounded depth.
                    let mut reprs: Vec<String> = s
                        .iter()
                        .map(|x| {
                            let mut o = String::new();
                            write_repr(&mut o, x, true, indent);
                            o
                        })
                        .collect();
                    reprs.sort();
                    stack.push(Task::Text(close));
                    stack.push(Task::Owned(reprs.join(", ")));
                } else {
                    push_seq(&mut stack, s.iter(), close);
                }
            }
            Value::Slice(s) => {
                out.push_str("slice(");
                stack.push(Task::Text(")"));
                stack.push(Task::Val(&s.step));
                stack.push(Task::Text(", "));
                stack.push(Task::Val(&s.stop));
                stack.push(Task::Text(", "));
                stack.push(Task::Val(&s.start));
            }
            Value::Code(c) => write_code(out, c, sorted, indent),
            Value::Object(o) => push_object(out, &mut stack, o),
        }
    }
}

/// An inert object as the call that would create it, then what the pickle applies to it:
/// `module.Name(args..., key=value).__setstate__(state).extend([...]).update({...})`.
fn push_object<'a>(out: &mut String, stack: &mut Vec<Task<'a>>, o: &'a Object) {
    // A call of an inert object prints the callee's repr first (pushed last, below).
    let callee = match (&o.construct, &o.args) {
        (Construct::Call, Value::Tuple(a)) if !a.is_empty() => Some(&a[0]),
        _ => None,
    };
    if callee.is_none() {
        out.push_str(&o.module);
        out.push('.');
        out.push_str(&o.name);
    }
    // Pushed in reverse: the last part first.
    if !o.dictitems.is_empty() {
        stack.push(Task::Text("})"));
        for (i, (k, v)) in o.dictitems.iter().enumerate().rev() {
            stack.push(Task::Val(v));
            stack.push(Task::Text(": "));
            stack.push(Task::Val(k));
            if i > 0 {
                stack.push(Task::Text(", "));
            }
        }
        stack.push(Task::Text(".update({"));
    }
    if !o.listitems.is_empty() {
        stack.push(Task::Text("])"));
        push_seq_items(stack, o.listitems.iter());
        stack.push(Task::Text(".extend(["));
    }
    if !matches!(o.state, Value::None) {
        stack.push(Task::Text(")"));
        stack.push(Task::Val(&o.state));
        stack.push(Task::Text(".__setstate__("));
    }
    if o.construct == Construct::Global {
        return;
    }
    stack.push(Task::Text(")"));
    let mut parts: Vec<Task<'a>> = Vec::new();
    match &o.args {
        Value::Tuple(args) => {
            parts.extend(args.iter().skip(callee.is_some() as usize).map(Task::Val))
        }
        other => {
            parts.push(Task::Text("*"));
            parts.push(Task::Val(other));
        }
    }
    if let Value::Dict(kw) = &o.kwargs {
        for (k, v) in kw.iter() {
            match k {
                Value::Str(s) if s.as_str().is_some() => {
                    parts.push(Task::Owned(format!("{}=", s.as_str().unwrap_or_default())))
                }
                other => {
                    parts.push(Task::Val(other));
                    parts.push(Task::Text("="));
                }
            }
            parts.push(Task::Val(v));
        }
    }
    // Separate the arguments with ", " (a `*` or `key=` prefix stays glued to its value).
    let mut grouped: Vec<Vec<Task<'a>>> = Vec::new();
    let mut glue = false;
    for p in parts {
        let prefix = matches!(&p, Task::Text("*") | Task::Text("="))
            || matches!(&p, Task::Owned(t) if t.ends_with('='));
        if glue {
            if let Some(g) = grouped.last_mut() {
                g.push(p);
            }
        } else {
            grouped.push(vec![p]);
        }
        glue = prefix;
    }
    for (i, g) in grouped.into_iter().enumerate().rev() {
        for t in g.into_iter().rev() {
            stack.push(t);
        }
        if i > 0 {
            stack.push(Task::Text(", "));
        }
    }
    match callee {
        Some(f) => {
            stack.push(Task::Text("("));
            stack.push(Task::Val(f));
        }
        None => out.push('('),
    }
}

fn push_seq_items<'a>(
    stack: &mut Vec<Task<'a>>,
    items: impl DoubleEndedIterator<Item = &'a Value> + ExactSizeIterator,
) {
    for (i, it) in items.enumerate().rev() {
        stack.push(Task::Val(it));
        if i > 0 {
            stack.push(Task::Text(", "));
        }
    }
}

fn push_seq<'a>(
    stack: &mut Vec<Task<'a>>,
    items: impl DoubleEndedIterator<Item = &'a Value> + ExactSizeIterator,
    close: &'static str,
) {
    stack.push(Task::Text(close));
    for (i, it) in items.enumerate().rev() {
        stack.push(Task::Val(it));
        if i > 0 {
            stack.push(Task::Text(", "));
        }
    }
}

/// A code object as a readable block:
/// ```text
/// <code f, file 'm.py', line 3
///   argcount=1 posonlyargcount=0 kwonlyargcount=0 stacksize=3 flags=0x3
///   qualname='f'
///   names=('print',)
///   locals=(('x', 'local'),)
///   consts=(None, 'hi')
///   code=hex'97007c...'
///   linetable=hex'...'
///   exceptiontable=hex''
/// >
/// ```
fn write_code(out: &mut String, c: &Code, sorted: bool, indent: usize) {
    let pad = "  ".repeat(indent + 1);
    let sub = |v: &Value| {
        let mut o = String::new();
        write_repr(&mut o, v, sorted, indent + 1);
        o
    };
    let name = match &c.name {
        Value::Str(s) => s.to_string_lossy(),
        other => sub(other),
    };
    let _ = write!(
        out,
        "<code {name}, file {}, line {}",
        sub(&c.filename),
        c.firstlineno
    );
    let _ = write!(
        out,
        "\n{pad}argcount={} posonlyargcount={} kwonlyargcount={} stacksize={} flags={:#x}",
        c.argcount, c.posonlyargcount, c.kwonlyargcount, c.stacksize, c.flags
    );
    let _ = write!(out, "\n{pad}qualname={}", sub(&c.qualname));
    let _ = write!(out, "\n{pad}names={}", sub(&c.names));
    let _ = write!(out, "\n{pad}locals={}", locals_repr(c, &sub));
    // Constants one per line, so nested code objects stay readable.
    match &c.consts {
        Value::Tuple(items) if !items.is_empty() => {
            let _ = write!(out, "\n{pad}consts=(");
            for it in items.iter() {
                let _ = write!(out, "\n{pad}  {},", sub_indented(it, sorted, indent + 2));
            }
            let _ = write!(out, "\n{pad})");
        }
        other => {
            let _ = write!(out, "\n{pad}consts={}", sub(other));
        }
    }
    for (label, v) in [
        ("code", &c.code),
        ("linetable", &c.linetable),
        ("exceptiontable", &c.exceptiontable),
    ] {
        match v {
            Value::Bytes(b) => {
                let _ = write!(out, "\n{pad}{label}=hex'{}'", hex(b));
            }
            other => {
                let _ = write!(out, "\n{pad}{label}={}", sub(other));
            }
        }
    }
    let _ = write!(out, "\n{}>", "  ".repeat(indent));
}

fn sub_indented(v: &Value, sorted: bool, indent: usize) -> String {
    let mut o = String::new();
    write_repr(&mut o, v, sorted, indent);
    o
}

/// Local variable names with their kinds (CO_FAST_LOCAL 0x20, CELL 0x40, FREE 0x80).
fn locals_repr(c: &Code, sub: &dyn Fn(&Value) -> String) -> String {
    let (Value::Tuple(names), Value::Bytes(kinds)) = (&c.localsplusnames, &c.localspluskinds)
    else {
        return format!(
            "{} kinds={}",
            sub(&c.localsplusnames),
            sub(&c.localspluskinds)
        );
    };
    let mut parts = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let k = kinds.get(i).copied().unwrap_or(0);
        let mut kind = Vec::new();
        for (bit, label) in [
            (0x10, "hidden"),
            (0x20, "local"),
            (0x40, "cell"),
            (0x80, "free"),
        ] {
            if k & bit != 0 {
                kind.push(label);
            }
        }
        if k & 0x0F != 0 || kind.is_empty() {
            kind.push("other");
        }
        parts.push(format!("{} {}", sub(n), kind.join("+")));
    }
    format!("({})", parts.join(", "))
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

// ---------------------------------------------------------------------------------------------
// scalars

/// Whether CPython 3.11's `str.isprintable()` is true for this code point.
pub fn is_printable(cp: u32) -> bool {
    PRINTABLE
        .binary_search_by(|&(lo, hi)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// `repr()` of a str.
pub fn str_repr(s: &PyStr) -> String {
    let mut out = String::with_capacity(s.as_bytes().len() + 2);
    push_str_repr(&mut out, s);
    out
}

fn push_str_repr(out: &mut String, s: &PyStr) {
    let bytes = s.as_bytes();
    let has_single = bytes.contains(&b'\'');
    let has_double = bytes.contains(&b'"');
    let quote = if has_single && !has_double { '"' } else { '\'' };
    out.push(quote);
    for cp in s.code_points() {
        match cp {
            0x5C => out.push_str("\\\\"),
            0x09 => out.push_str("\\t"),
            0x0A => out.push_str("\\n"),
            0x0D => out.push_str("\\r"),
            _ if cp == quote as u32 => {
                out.push('\\');
                out.push(quote);
            }
            0x00..=0x1F | 0x7F => {
                let _ = write!(out, "\\x{cp:02x}");
            }
            0x20..=0x7E => out.push(cp as u8 as char),
            _ => match char::from_u32(cp) {
                Some(ch) if is_printable(cp) => out.push(ch),
                _ if cp <= 0xFF => {
                    let _ = write!(out, "\\x{cp:02x}");
                }
                _ if cp <= 0xFFFF => {
                    let _ = write!(out, "\\u{cp:04x}");
                }
                _ => {
                    let _ = write!(out, "\\U{cp:08x}");
                }
            },
        }
    }
    out.push(quote);
}

/// `repr()` of a bytes object.
pub fn bytes_repr(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() + 3);
    push_bytes_repr(&mut out, b, false);
    out
}

/// `bytearray_repr` differs from `bytes_repr` in one quirk: it escapes `'` even inside
/// double quotes (`bytearray(b"\'")`).
fn push_bytes_repr(out: &mut String, b: &[u8], bytearray: bool) {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    out.push('b');
    out.push(quote as char);
    for &c in b {
        match c {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            _ if c == quote || (bytearray && c == b'\'') => {
                out.push('\\');
                out.push(c as char);
            }
            0x20..=0x7E => out.push(c as char),
            _ => {
                let _ = write!(out, "\\x{c:02x}");
            }
        }
    }
    out.push(quote as char);
}

/// Shortest round-trip digits and decimal exponent: `v == 0.d1d2d3... * 10^decpt`.
///
/// Rust's shortest formatting and CPython's (David Gay's dtoa, mode 0) agree on the number
/// of digits but can break an exact tie differently (150051640137.453125 prints as ...45313
/// in Rust, ...45312 in CPython). Re-rounding the value to that many digits with Rust's
/// exact, ties-to-even formatting gives CPython's choice.
fn shortest_digits(v: f64) -> (String, i32) {
    let split = |s: &str| {
        let (mant, exp) = s.split_once('e').unwrap_or((s, "0"));
        let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
        (digits, exp.parse::<i32>().unwrap_or(0) + 1)
    };
    let a = v.abs();
    let shortest = format!("{a:e}");
    let (digits, decpt) = split(&shortest);
    let rounded = format!("{a:.*e}", digits.len().saturating_sub(1));
    if rounded.parse::<f64>().ok() == Some(a) {
        return split(&rounded);
    }
    (digits, decpt)
}

/// Lays out `0.digits * 10^decpt` as CPython's `format_float_short` does.
fn layout(neg: bool, digits: &str, decpt: i32, exp_form: bool, add_dot_0: bool) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    let nd = digits.len() as i32;
    if exp_form {
        out.push_str(&digits[..1]);
        if nd > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(
            out,
            "e{}{:02}",
            if e < 0 { '-' } else { '+' },
            e.unsigned_abs()
        );
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in 0..-decpt {
            out.push('0');
        }
        out.push_str(digits);
    } else if decpt >= nd {
        out.push_str(digits);
        for _ in 0..decpt - nd {
            out.push('0');
        }
        if add_dot_0 {
            out.push_str(".0");
        }
    } else {
        out.push_str(&digits[..decpt as usize]);
        out.push('.');
        out.push_str(&digits[decpt as usize..]);
    }
    out
}

fn float_repr_flags(v: f64, add_dot_0: bool) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let (digits, decpt) = shortest_digits(v);
    let exp_form = decpt <= -4 || decpt > 16;
    layout(v.is_sign_negative(), &digits, decpt, exp_form, add_dot_0)
}

/// `repr()` of a float: the shortest string that round-trips, in CPython's layout
/// (`1e+16`, `1e-05`, `0.0001`, `-0.0`, `inf`, `nan`).
pub fn float_repr(v: f64) -> String {
    float_repr_flags(v, true)
}

/// `repr()` of a complex number (`1j`, `(1+2j)`, `(-0-1j)`, `(nan+infj)`).
pub fn complex_repr(re: f64, im: f64) -> String {
    let imag = |signed: bool| {
        let s = float_repr_flags(im, false);
        if signed && !s.starts_with('-') {
            format!("+{s}")
        } else {
            s
        }
    };
    if re == 0.0 && re.is_sign_positive() {
        format!("{}j", imag(false))
    } else {
        format!("({}{}j)", float_repr_flags(re, false), imag(true))
    }
}

/// C's `%.17g` as CPython's marshal writes text floats (versions 0 and 1):
/// `0.10000000000000001`, `1e+17`, `-0`, `inf`, `nan`.
pub fn float_g17(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let s = format!("{:.16e}", v.abs());
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let mut digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    // %g strips trailing zeros.
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let exp_form = !(-4..17).contains(&exp);
    layout(v.is_sign_negative(), &digits, exp + 1, exp_form, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_cpython() {
        assert_eq!(float_repr(1e16), "1e+16");
        assert_eq!(float_repr(1e15), "1000000000000000.0");
        assert_eq!(float_repr(1e-5), "1e-05");
        assert_eq!(float_repr(0.0001), "0.0001");
        assert_eq!(float_repr(-0.0), "-0.0");
        assert_eq!(float_repr(1.5e300), "1.5e+300");
        assert_eq!(float_repr(123456789012345678.0), "1.2345678901234568e+17");
        assert_eq!(float_repr(0.1), "0.1");
        assert_eq!(float_repr(-f64::NAN), "nan");
        assert_eq!(float_g17(0.1), "0.10000000000000001");
        assert_eq!(float_g17(1e16), "10000000000000000");
        assert_eq!(float_g17(1e17), "1e+17");
        assert_eq!(float_g17(-0.0), "-0");
        assert_eq!(float_g17(1e-5), "1.0000000000000001e-05");
        assert_eq!(float_g17(1.0), "1");
    }

    #[test]
    fn complex_like_cpython() {
        assert_eq!(complex_repr(1.0, f64::NAN), "(1+nanj)");
        assert_eq!(complex_repr(-0.0, 1.0), "(-0+1j)");
        assert_eq!(complex_repr(0.0, -1.0), "-1j");
        assert_eq!(complex_repr(0.0, f64::NAN), "nanj");
        assert_eq!(complex_repr(1.5, -2.0), "(1.5-2j)");
    }

    #[test]
    fn strings_like_cpython() {
        let r = |s: &str| str_repr(&PyStr::new(s));
        assert_eq!(r("it's"), "\"it's\"");
        assert_eq!(r("'\""), "'\\'\"'");
        assert_eq!(
            r("a\tb\n\x7f\u{85}é\u{2028}😀"),
            "'a\\tb\\n\\x7f\\x85é\\u2028😀'"
        );
        let s = PyStr::from_code_points([0xD800]).unwrap();
        assert_eq!(str_repr(&s), "'\\ud800'");
        assert_eq!(bytes_repr(b"a'\x00\xff"), "b\"a'\\x00\\xff\"");
        let ba = |b: &[u8]| repr(&Value::ByteArray(std::sync::Arc::new(b.to_vec())));
        assert_eq!(ba(b"'"), "bytearray(b\"\\'\")");
        assert_eq!(ba(b"'\""), "bytearray(b'\\'\"')");
    }

    #[test]
    fn containers() {
        let v = Value::tuple(vec![Value::int(1)]);
        assert_eq!(repr(&v), "(1,)");
        let v = Value::list(vec![
            Value::tuple(vec![]),
            Value::set([]).unwrap(),
            Value::frozenset([Value::int(2)]).unwrap(),
        ]);
        assert_eq!(repr(&v), "[(), set(), frozenset({2})]");
        let d = Value::dict([
            (Value::str("a"), Value::list(vec![])),
            (Value::int(2), Value::None),
        ])
        .unwrap();
        assert_eq!(repr(&d), "{'a': [], 2: None}");
    }
}
