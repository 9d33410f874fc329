//! A pickletools.dis-style listing of a pickle's opcodes (for `cellar pickle show --ops`): each
//! opcode with its offset, name and decoded argument. Nothing is built or resolved.

use cellar_value::{bytes_repr, float_repr, str_repr, BigInt, PyStr};

use crate::error::{ErrorKind, UnpicklingError};
use crate::ops::*;

/// One opcode of a pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Offset of the opcode byte.
    pub offset: usize,
    /// The opcode byte.
    pub code: u8,
    /// pickletools' name (`PROTO`, `BINUNICODE`, ...).
    pub name: &'static str,
    /// The argument as Python would show it (`'abc'`, `b'..'`, `1.5`, `'os system'` for
    /// GLOBAL), or `None` for opcodes without one.
    pub arg: Option<String>,
}

enum Arg {
    None,
    U1,
    U2,
    I4,
    U4,
    U8,
    Line,
    Line2,
    Long1,
    Long4,
    Float8,
    Str(usize),
    Bytes(usize),
    Py2(usize),
}

fn info(code: u8) -> Option<(&'static str, Arg)> {
    use Arg::*;
    Some(match code {
        MARK => ("MARK", None),
        STOP => ("STOP", None),
        POP => ("POP", None),
        POP_MARK => ("POP_MARK", None),
        DUP => ("DUP", None),
        FLOAT => ("FLOAT", Line),
        INT => ("INT", Line),
        BININT => ("BININT", I4),
        BININT1 => ("BININT1", U1),
        LONG => ("LONG", Line),
        BININT2 => ("BININT2", U2),
        NONE => ("NONE", None),
        PERSID => ("PERSID", Line),
        BINPERSID => ("BINPERSID", None),
        REDUCE => ("REDUCE", None),
        STRING => ("STRING", Line),
        BINSTRING => ("BINSTRING", Py2(4)),
        SHORT_BINSTRING => ("SHORT_BINSTRING", Py2(1)),
        UNICODE => ("UNICODE", Line),
        BINUNICODE => ("BINUNICODE", Str(4)),
        APPEND => ("APPEND", None),
        BUILD => ("BUILD", None),
        GLOBAL => ("GLOBAL", Line2),
        DICT => ("DICT", None),
        EMPTY_DICT => ("EMPTY_DICT", None),
        APPENDS => ("APPENDS", None),
        GET => ("GET", Line),
        BINGET => ("BINGET", U1),
        INST => ("INST", Line2),
        LONG_BINGET => ("LONG_BINGET", U4),
        LIST => ("LIST", None),
        EMPTY_LIST => ("EMPTY_LIST", None),
        OBJ => ("OBJ", None),
        PUT => ("PUT", Line),
        BINPUT => ("BINPUT", U1),
        LONG_BINPUT => ("LONG_BINPUT", U4),
        SETITEM => ("SETITEM", None),
        TUPLE => ("TUPLE", None),
        EMPTY_TUPLE => ("EMPTY_TUPLE", None),
        SETITEMS => ("SETITEMS", None),
        BINFLOAT => ("BINFLOAT", Float8),
        PROTO => ("PROTO", U1),
        NEWOBJ => ("NEWOBJ", None),
        EXT1 => ("EXT1", U1),
        EXT2 => ("EXT2", U2),
        EXT4 => ("EXT4", I4),
        TUPLE1 => ("TUPLE1", None),
        TUPLE2 => ("TUPLE2", None),
        TUPLE3 => ("TUPLE3", None),
        NEWTRUE => ("NEWTRUE", None),
        NEWFALSE => ("NEWFALSE", None),
        LONG1 => ("LONG1", Long1),
        LONG4 => ("LONG4", Long4),
        BINBYTES => ("BINBYTES", Bytes(4)),
        SHORT_BINBYTES => ("SHORT_BINBYTES", Bytes(1)),
        SHORT_BINUNICODE => ("SHORT_BINUNICODE", Str(1)),
        BINUNICODE8 => ("BINUNICODE8", Str(8)),
        BINBYTES8 => ("BINBYTES8", Bytes(8)),
        EMPTY_SET => ("EMPTY_SET", None),
        ADDITEMS => ("ADDITEMS", None),
        FROZENSET => ("FROZENSET", None),
        NEWOBJ_EX => ("NEWOBJ_EX", None),
        STACK_GLOBAL => ("STACK_GLOBAL", None),
        MEMOIZE => ("MEMOIZE", None),
        FRAME => ("FRAME", U8),
        BYTEARRAY8 => ("BYTEARRAY8", Bytes(8)),
        NEXT_BUFFER => ("NEXT_BUFFER", None),
        READONLY_BUFFER => ("READONLY_BUFFER", None),
        _ => return Option::None,
    })
}

/// Lists the opcodes of the first pickle in `data`, up to and including STOP. Arguments are
/// decoded but nothing is executed; a truncated or unknown opcode is an error (with the listing
/// so far available by calling on a prefix).
pub fn disassemble(data: &[u8]) -> Result<Vec<Op>, UnpicklingError> {
    let mut out = Vec::new();
    let mut pos = 0;
    let trunc =
        |at: usize| UnpicklingError::new(ErrorKind::Unpickling, "pickle data was truncated", at);
    while pos < data.len() {
        let offset = pos;
        let code = data[pos];
        pos += 1;
        let Some((name, kind)) = info(code) else {
            return Err(UnpicklingError::new(
                ErrorKind::Unpickling,
                format!("invalid load key, '\\x{code:02x}'."),
                offset,
            ));
        };
        let mut take = |n: usize| -> Result<&[u8], UnpicklingError> {
            if n > data.len() - pos {
                return Err(trunc(offset));
            }
            let s = &data[pos..pos + n];
            pos += n;
            Ok(s)
        };
        let le = |b: &[u8]| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64);
        let arg = match kind {
            Arg::None => Option::None,
            Arg::U1 => Some(take(1)?[0].to_string()),
            Arg::U2 => Some(le(take(2)?).to_string()),
            Arg::I4 => Some((le(take(4)?) as u32 as i32).to_string()),
            Arg::U4 => Some(le(take(4)?).to_string()),
            Arg::U8 => Some(le(take(8)?).to_string()),
            Arg::Float8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(take(8)?);
                Some(float_repr(f64::from_be_bytes(a)))
            }
            Arg::Long1 | Arg::Long4 => {
                let n = if matches!(kind, Arg::Long1) {
                    take(1)?[0] as usize
                } else {
                    let n = le(take(4)?) as u32 as i32;
                    usize::try_from(n).map_err(|_| trunc(offset))?
                };
                Some(BigInt::from_signed_bytes_le(take(n)?).to_string())
            }
            Arg::Str(w) | Arg::Bytes(w) | Arg::Py2(w) => {
                let n = usize::try_from(le(take(w)?)).map_err(|_| trunc(offset))?;
                let b = take(n)?;
                Some(match kind {
                    Arg::Str(_) => match PyStr::from_utf8_surrogatepass(b) {
                        Ok(s) => str_repr(&s),
                        Err(_) => bytes_repr(b),
                    },
                    _ => bytes_repr(b),
                })
            }
            Arg::Line | Arg::Line2 => {
                let mut line = || -> Result<String, UnpicklingError> {
                    let rest = &data[pos..];
                    let i = rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(|| trunc(offset))?;
                    pos += i + 1;
                    Ok(String::from_utf8_lossy(&rest[..i]).into_owned())
                };
                let first = line()?;
                if matches!(kind, Arg::Line2) {
                    let second = line()?;
                    Some(format!("'{first} {second}'"))
                } else {
                    Some(first)
                }
            }
        };
        out.push(Op {
            offset,
            code,
            name,
            arg,
        });
        if code == STOP {
            return Ok(out);
        }
    }
    Err(trunc(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_opcodes() {
        let ops =
            disassemble(b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x02hi\x94K\x07\x86.")
                .unwrap();
        let names: Vec<_> = ops.iter().map(|o| o.name).collect();
        assert_eq!(
            names,
            [
                "PROTO",
                "FRAME",
                "SHORT_BINUNICODE",
                "MEMOIZE",
                "BININT1",
                "TUPLE2",
                "STOP"
            ]
        );
        assert_eq!(ops[2].arg.as_deref(), Some("'hi'"));
        assert_eq!(ops[4].offset, 16);
        let ops = disassemble(b"cos\nsystem\n.").unwrap();
        assert_eq!(ops[0].arg.as_deref(), Some("'os system'"));
        assert!(disassemble(b"\x8c\x05ab").is_err());
        assert!(disassemble(b"\xff").is_err());
    }
}
