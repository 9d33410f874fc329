//! `globals_of`: every global a pickle names and what it would need to load, found without
//! building anything (an abstract run of the opcodes: strings, globals and the objects made
//! from them are tracked on a symbolic stack; everything else is an opaque slot). Serves
//! `cellar.pickle.globals_of`, `cellar pickle show --globals` and the refusal messages, which
//! say whether a refused global is used as a class or as a function.
//!
//! It is lenient by design (a hostile or truncated pickle still lists what it names up to the
//! point where it breaks: the error, if any, is reported beside the list), bounded (one
//! symbolic slot per opcode, so memory is proportional to the input) and never recursive.

use std::collections::HashMap;

use cellar_value::PyStr;

use crate::compat;
use crate::error::{ErrorKind, UnpicklingError};
use crate::ops::*;
use crate::policy::{default_global, Known, Need};
use crate::registry::Registry;

/// One global a pickle names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalUse {
    /// Module (after the protocol 0-2 `fix_imports` mapping).
    pub module: String,
    /// Qualified name (`Outer.Inner` for `getattr(Outer, 'Inner')`).
    pub name: String,
    /// Offset of the first opcode naming it.
    pub offset: usize,
    /// The extension code it was named by (EXT1/2/4), if any.
    pub extension: Option<i32>,
    /// Its meaning in the default policy (basic type, marker), if it has one.
    pub default: Option<Known>,
    /// Called by REDUCE.
    pub called: bool,
    /// Used as a class: NEWOBJ / NEWOBJ_EX / INST / OBJ / `_reconstructor` / `__newobj__`.
    pub instantiated: bool,
    /// Something made from it is given state by BUILD.
    pub built: bool,
    /// BUILD applied to the global itself (never allowed: a hostile pattern).
    pub built_itself: bool,
}

impl GlobalUse {
    /// What loading it requires of the caller.
    pub fn need(&self) -> Need {
        if self.instantiated {
            Need::Class
        } else if self.called {
            Need::Function
        } else {
            Need::Value
        }
    }

    /// One line for people: `os.system: function (called by REDUCE) - needs allow=`.
    pub fn describe(&self) -> String {
        let mut uses = Vec::new();
        if self.instantiated {
            uses.push("instantiated");
        }
        if self.called {
            uses.push("called");
        }
        if self.built {
            uses.push("given state by BUILD");
        }
        if self.built_itself {
            uses.push("BUILD on the global itself (refused)");
        }
        if uses.is_empty() {
            uses.push("referenced");
        }
        let needs = match self.default {
            Some(k) => k.describe().to_owned(),
            None => format!(
                "needs allow=[('{}', '{}', obj)] or a registration",
                self.module, self.name
            ),
        };
        let ext = self
            .extension
            .map(|c| format!(" [extension code {c}]"))
            .unwrap_or_default();
        format!(
            "{}.{}{ext}: {} ({}); {needs}",
            self.module,
            self.name,
            self.need().as_str(),
            uses.join(", ")
        )
    }
}

/// What [`globals_of`] found: the globals in order of first use, and the error that stopped the
/// scan early (a truncated or malformed pickle), if any.
#[derive(Debug, Clone)]
pub struct GlobalsReport {
    /// Every global named, once each.
    pub globals: Vec<GlobalUse>,
    /// Why the scan stopped before STOP, if it did.
    pub error: Option<UnpicklingError>,
}

#[derive(Clone)]
enum A {
    Str(String),
    G(usize),
    /// An object made from global `Some(i)` (or from a basic type: `None`).
    Made(Option<usize>),
    /// A tuple's first two items (enough for every pattern).
    Tup(Box<[A; 2]>),
    /// `getattr(cls, '__new__')`.
    NewOf(usize),
    /// `partial(cls.__new__, ...)`.
    PartialOf(usize),
    Other,
}

struct Scan<'a, 'r> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    proto: u8,
    fix_imports: bool,
    reg: &'r Registry,
    stack: Vec<A>,
    marks: Vec<usize>,
    memo: HashMap<u64, A>,
    out: Vec<GlobalUse>,
    index: HashMap<(String, String), usize>,
}

/// Lists every global `data` names and how it uses it (see the module docs). `registry`
/// resolves extension codes; `fix_imports` maps Python 2 names at protocols 0-2.
pub fn globals_of(data: &[u8], registry: &Registry, fix_imports: bool) -> GlobalsReport {
    let mut s = Scan {
        data,
        pos: 0,
        op_pos: 0,
        proto: 0,
        fix_imports,
        reg: registry,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        out: Vec::new(),
        index: HashMap::new(),
    };
    let error = s.run().err();
    GlobalsReport {
        globals: s.out,
        error,
    }
}

type Res<T> = Result<T, UnpicklingError>;

impl<'a> Scan<'a, '_> {
    fn err(&self, msg: impl Into<String>) -> UnpicklingError {
        UnpicklingError::new(ErrorKind::Unpickling, msg, self.op_pos)
    }
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return Err(self.err("pickle data was truncated"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn uint(&mut self, n: usize) -> Res<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    }
    fn sized(&mut self, w: usize) -> Res<&'a [u8]> {
        let n = self.uint(w)?;
        let n = usize::try_from(n).map_err(|_| self.err("pickle data was truncated"))?;
        self.take(n)
    }
    fn line(&mut self) -> Res<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let i = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("pickle data was truncated"))?;
        self.pos += i + 1;
        Ok(&rest[..i])
    }
    fn pop(&mut self) -> A {
        let fence = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() > fence {
            self.stack.pop().unwrap_or(A::Other)
        } else {
            A::Other
        }
    }
    fn pop_mark(&mut self) -> Vec<A> {
        match self.marks.pop() {
            Some(m) => self.stack.split_off(m.min(self.stack.len())),
            None => Vec::new(),
        }
    }
    /// A tuple's first two items; a nested tuple is opaque (no pattern looks inside one, and
    /// flat slots keep 2^20 nested TUPLE1s from becoming a deep chain of boxes).
    fn tuple(items: Vec<A>) -> A {
        let flat = |a: Option<A>| match a {
            None | Some(A::Tup(_)) => A::Other,
            Some(a) => a,
        };
        let mut it = items.into_iter();
        let a = flat(it.next());
        let b = flat(it.next());
        A::Tup(Box::new([a, b]))
    }

    fn global(&mut self, module: &str, name: &str, ext: Option<i32>) -> usize {
        let (m, n) = if self.proto < 3 && self.fix_imports && ext.is_none() {
            compat::py2_to_py3(module, name)
        } else {
            (module, name)
        };
        let key = (m.to_owned(), n.to_owned());
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let i = self.out.len();
        self.out.push(GlobalUse {
            module: key.0.clone(),
            name: key.1.clone(),
            offset: self.op_pos,
            extension: ext,
            default: default_global(m, n),
            called: false,
            instantiated: false,
            built: false,
            built_itself: false,
        });
        self.index.insert(key, i);
        i
    }

    fn known(&self, i: usize) -> Option<Known> {
        self.out[i].default
    }

    fn reduce(&mut self, f: A, args: A) -> A {
        let (first, second) = match &args {
            A::Tup(t) => (t[0].clone(), t[1].clone()),
            _ => (A::Other, A::Other),
        };
        match f {
            A::G(i) => match self.known(i) {
                Some(Known::Reconstructor | Known::NewObj | Known::NewObjEx) => match first {
                    A::G(c) => {
                        self.out[c].instantiated = true;
                        A::Made(Some(c))
                    }
                    _ => A::Made(None),
                },
                Some(Known::Getattr) => match (first, second) {
                    (A::G(c), A::Str(s)) if s == "__new__" => {
                        self.out[c].instantiated = true;
                        A::NewOf(c)
                    }
                    (A::G(c), A::Str(s)) => {
                        let (m, n) = (self.out[c].module.clone(), self.out[c].name.clone());
                        let j = self.global(&m, &format!("{n}.{s}"), None);
                        A::G(j)
                    }
                    _ => A::Other,
                },
                Some(Known::Partial) => match first {
                    A::NewOf(c) => A::PartialOf(c),
                    A::G(c) => {
                        self.out[c].called = true;
                        A::Made(Some(c))
                    }
                    _ => A::Other,
                },
                Some(_) => A::Made(None),
                None => {
                    self.out[i].called = true;
                    A::Made(Some(i))
                }
            },
            A::PartialOf(c) => A::Made(Some(c)),
            _ => A::Other,
        }
    }

    fn run(&mut self) -> Res<()> {
        loop {
            if self.pos >= self.data.len() {
                return Err(self.err("pickle data was truncated"));
            }
            self.op_pos = self.pos;
            let op = self.take(1)?[0];
            match op {
                STOP => return Ok(()),
                PROTO => self.proto = self.take(1)?[0],
                FRAME => {
                    self.take(8)?;
                }
                MARK => self.marks.push(self.stack.len()),
                POP => {
                    let fence = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() == fence && !self.marks.is_empty() {
                        self.marks.pop();
                    } else {
                        self.pop();
                    }
                }
                POP_MARK => {
                    self.pop_mark();
                }
                DUP => {
                    let top = self.stack.last().cloned().unwrap_or(A::Other);
                    self.stack.push(top);
                }
                NONE | NEWTRUE | NEWFALSE | EMPTY_LIST | EMPTY_DICT | EMPTY_SET => {
                    self.stack.push(A::Other)
                }
                EMPTY_TUPLE => self.stack.push(Self::tuple(Vec::new())),
                BININT => {
                    self.take(4)?;
                    self.stack.push(A::Other);
                }
                BININT1 => {
                    self.take(1)?;
                    self.stack.push(A::Other);
                }
                BININT2 => {
                    self.take(2)?;
                    self.stack.push(A::Other);
                }
                BINFLOAT => {
                    self.take(8)?;
                    self.stack.push(A::Other);
                }
                INT | LONG | FLOAT => {
                    self.line()?;
                    self.stack.push(A::Other);
                }
                LONG1 => {
                    self.sized(1)?;
                    self.stack.push(A::Other);
                }
                LONG4 | BINBYTES => {
                    self.sized(4)?;
                    self.stack.push(A::Other);
                }
                SHORT_BINBYTES => {
                    self.sized(1)?;
                    self.stack.push(A::Other);
                }
                BINBYTES8 | BYTEARRAY8 => {
                    self.sized(8)?;
                    self.stack.push(A::Other);
                }
                STRING | UNICODE => {
                    let l = self.line()?;
                    let s = if op == STRING {
                        let t = l.strip_prefix(b"'").and_then(|t| t.strip_suffix(b"'"));
                        let t =
                            t.or_else(|| l.strip_prefix(b"\"").and_then(|t| t.strip_suffix(b"\"")));
                        t.and_then(|t| std::str::from_utf8(t).ok())
                            .map(str::to_owned)
                    } else {
                        std::str::from_utf8(l).ok().map(str::to_owned)
                    };
                    self.stack.push(s.map_or(A::Other, A::Str));
                }
                BINSTRING | SHORT_BINSTRING | BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 => {
                    let w = match op {
                        SHORT_BINSTRING | SHORT_BINUNICODE => 1,
                        BINUNICODE8 => 8,
                        _ => 4,
                    };
                    let b = self.sized(w)?;
                    let s = PyStr::from_utf8_surrogatepass(b)
                        .ok()
                        .and_then(|s| s.as_str().map(str::to_owned));
                    self.stack.push(s.map_or(A::Other, A::Str));
                }
                TUPLE => {
                    let items = self.pop_mark();
                    self.stack.push(Self::tuple(items));
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = usize::from(op - TUPLE1 + 1);
                    let mut items: Vec<A> = (0..n).map(|_| self.pop()).collect();
                    items.reverse();
                    self.stack.push(Self::tuple(items));
                }
                LIST | DICT | FROZENSET => {
                    self.pop_mark();
                    self.stack.push(A::Other);
                }
                APPEND => {
                    self.pop();
                }
                SETITEM => {
                    self.pop();
                    self.pop();
                }
                APPENDS | SETITEMS | ADDITEMS => {
                    self.pop_mark();
                }
                GET | BINGET | LONG_BINGET => {
                    let idx = match op {
                        GET => {
                            let l = self.line()?;
                            std::str::from_utf8(l)
                                .ok()
                                .and_then(|s| s.trim().parse::<u64>().ok())
                                .unwrap_or(u64::MAX)
                        }
                        BINGET => self.uint(1)?,
                        _ => self.uint(4)?,
                    };
                    let v = self.memo.get(&idx).cloned().unwrap_or(A::Other);
                    self.stack.push(v);
                }
                PUT | BINPUT | LONG_BINPUT | MEMOIZE => {
                    let idx = match op {
                        PUT => {
                            let l = self.line()?;
                            std::str::from_utf8(l)
                                .ok()
                                .and_then(|s| s.trim().parse::<u64>().ok())
                                .unwrap_or(u64::MAX)
                        }
                        BINPUT => self.uint(1)?,
                        LONG_BINPUT => self.uint(4)?,
                        _ => self.memo.len() as u64,
                    };
                    let top = self.stack.last().cloned().unwrap_or(A::Other);
                    self.memo.insert(idx, top);
                }
                GLOBAL | INST => {
                    let m = self.line()?;
                    let n = self.line()?;
                    let (m, n) = (String::from_utf8_lossy(m), String::from_utf8_lossy(n));
                    let i = self.global(&m, &n, None);
                    if op == GLOBAL {
                        self.stack.push(A::G(i));
                    } else {
                        self.pop_mark();
                        self.out[i].instantiated = true;
                        self.stack.push(A::Made(Some(i)));
                    }
                }
                STACK_GLOBAL => {
                    let n = self.pop();
                    let m = self.pop();
                    match (m, n) {
                        (A::Str(m), A::Str(n)) => {
                            let i = self.global(&m, &n, None);
                            self.stack.push(A::G(i));
                        }
                        _ => self.stack.push(A::Other),
                    }
                }
                EXT1 | EXT2 | EXT4 => {
                    let code = match op {
                        EXT1 => self.uint(1)? as i32,
                        EXT2 => self.uint(2)? as i32,
                        _ => self.uint(4)? as u32 as i32,
                    };
                    match self.reg.extension(code) {
                        Some((m, n)) => {
                            let (m, n) = (m.to_owned(), n.to_owned());
                            let i = self.global(&m, &n, Some(code));
                            self.stack.push(A::G(i));
                        }
                        None => return Err(self.err(format!("unregistered extension code {code}"))),
                    }
                }
                OBJ => {
                    let items = self.pop_mark();
                    match items.first() {
                        Some(A::G(i)) => {
                            let i = *i;
                            self.out[i].instantiated = true;
                            self.stack.push(A::Made(Some(i)));
                        }
                        _ => self.stack.push(A::Other),
                    }
                }
                REDUCE => {
                    let args = self.pop();
                    let f = self.pop();
                    let r = self.reduce(f, args);
                    self.stack.push(r);
                }
                NEWOBJ | NEWOBJ_EX => {
                    if op == NEWOBJ_EX {
                        self.pop();
                    }
                    self.pop();
                    match self.pop() {
                        A::G(i) => {
                            self.out[i].instantiated = true;
                            self.stack.push(A::Made(Some(i)));
                        }
                        _ => self.stack.push(A::Other),
                    }
                }
                BUILD => {
                    self.pop();
                    match self.stack.last() {
                        Some(A::Made(Some(i))) | Some(A::PartialOf(i)) => {
                            let i = *i;
                            self.out[i].built = true;
                        }
                        Some(A::G(i)) => {
                            let i = *i;
                            self.out[i].built_itself = true;
                        }
                        _ => {}
                    }
                }
                PERSID => {
                    self.line()?;
                    self.stack.push(A::Other);
                }
                BINPERSID => {
                    self.pop();
                    self.stack.push(A::Other);
                }
                NEXT_BUFFER => self.stack.push(A::Other),
                READONLY_BUFFER => {}
                other => {
                    return Err(self.err(format!("invalid load key, '\\x{other:02x}'.")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_classes_functions_and_markers() {
        let reg = Registry::default();
        // os.system called
        let r = globals_of(b"cos\nsystem\n(S'echo hi'\ntR.", &reg, true);
        assert!(r.error.is_none());
        assert_eq!(r.globals.len(), 1);
        assert_eq!(r.globals[0].need(), Need::Function);
        // protocol 2 NEWOBJ + BUILD of a class
        let r = globals_of(b"\x80\x02cm\nC\n)\x81}b.", &reg, true);
        assert_eq!(r.globals[0].need(), Need::Class);
        assert!(r.globals[0].built);
        // protocol 0 _reconstructor
        let r = globals_of(
            b"ccopy_reg\n_reconstructor\n(cm\nP\nc__builtin__\nobject\nNtR(dS'x'\nI1\nsb.",
            &reg,
            true,
        );
        let names: Vec<_> = r
            .globals
            .iter()
            .map(|g| format!("{}.{}", g.module, g.name))
            .collect();
        assert_eq!(names, ["copyreg._reconstructor", "m.P", "builtins.object"]);
        assert_eq!(r.globals[1].need(), Need::Class);
        assert!(r.globals[0].default.is_some_and(Known::is_marker));
        // 2^20 nested 1-tuples: no deep structure is kept
        let mut deep = b"\x80\x02N".to_vec();
        deep.extend(std::iter::repeat_n(0x85u8, 1 << 20));
        deep.push(b'.');
        assert!(globals_of(&deep, &reg, true).globals.is_empty());
        // BUILD on a marker, and truncation still lists what was seen
        let r = globals_of(b"\x80\x02ccopyreg\n__newobj__\n}b", &reg, true);
        assert!(r.globals[0].built_itself);
        assert!(r.error.is_some());
    }
}
