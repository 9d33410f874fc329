//! The decoder: a flat opcode loop over the input with an explicit value stack (no recursion on
//! the Rust stack), building a graph of mutable nodes (lists, dicts, sets, objects, which later
//! opcodes may still modify through the memo), then freezing that graph into immutable
//! [`Value`]s with an explicit DFS that keeps shared nodes shared and refuses cycles.

use std::collections::HashMap;
use std::sync::Arc;

use cellar_value::{BigInt, Dict, Int, PyStr, Set, Slice, Value};
use num_traits::ToPrimitive;

use crate::compat;
use crate::error::{ErrorKind, UnpicklingError};
use crate::inert::{Construct, Inert};
use crate::ops::*;
use crate::policy::{self, Known};
use crate::registry::{Allowed, Registry};
use crate::text::{self, DecodeErrors, StringEncoding};

/// The default nesting limit (containers inside containers, and MARK depth).
pub const DEFAULT_MAX_DEPTH: usize = 2000;

/// Python's limit on decimal digits for text integers (`sys.get_int_max_str_digits()`).
const INT_MAX_STR_DIGITS: usize = 4300;

/// A `persistent_load` callback: receives the persistent id, returns the object.
pub type PersistentLoad<'a> = &'a dyn Fn(Value) -> Result<Value, String>;

/// Options of [`crate::loads_with`], mirroring `pickle.loads`' keyword arguments plus the safety
/// limits.
#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Decode globals that the registry does not allow to inert objects (see [`Inert`])
    /// instead of refusing them.
    pub inert: bool,
    /// Map Python 2 global names to Python 3 ones at protocols 0-2 (pickle's `fix_imports`).
    pub fix_imports: bool,
    /// How Python 2 strings (STRING, BINSTRING, SHORT_BINSTRING) decode.
    pub encoding: StringEncoding,
    /// Error handler for `encoding`.
    pub errors: DecodeErrors,
    /// Out-of-band buffers for NEXT_BUFFER (bytes or bytearray values), in order.
    pub buffers: Option<&'a [Value]>,
    /// PERSID / BINPERSID handler; without one those opcodes are refused.
    pub persistent_load: Option<PersistentLoad<'a>>,
    /// Maximum nesting of the decoded value and of MARKs.
    pub max_depth: usize,
    /// Maximum bytes the decoded value may occupy (payloads plus 16 per container item). `None`
    /// means `max(64 * input length, 16 MiB)`.
    pub max_bytes: Option<usize>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            inert: false,
            fix_imports: true,
            encoding: StringEncoding::Ascii,
            errors: DecodeErrors::Strict,
            buffers: None,
            persistent_load: None,
            max_depth: DEFAULT_MAX_DEPTH,
            max_bytes: None,
        }
    }
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("inert", &self.inert)
            .field("fix_imports", &self.fix_imports)
            .field("encoding", &self.encoding)
            .field("errors", &self.errors)
            .field("buffers", &self.buffers.map(<[Value]>::len))
            .field("persistent_load", &self.persistent_load.is_some())
            .field("max_depth", &self.max_depth)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

type Res<T> = Result<T, UnpicklingError>;

/// A stack / memo slot: a finished immutable value (with its nesting depth), a node of the
/// mutable graph, or a global.
#[derive(Clone)]
enum Item {
    V(Value, u32),
    N(u32),
    G(u32),
}

/// What a global resolves to. Only these; nothing is imported.
#[derive(Clone)]
enum GKind {
    Complex,
    Set,
    FrozenSet,
    ByteArray,
    Bytes,
    CodecsEncode,
    Slice,
    /// `builtins.range`: `range(*ints)` becomes an inert `builtins.range(...)` description
    /// (the value model has no range; the Python package builds a real range).
    Range,
    /// A value global: Ellipsis, StopIteration, NotImplemented (inert `builtins.NotImplemented`).
    Value(Value),
    /// Pattern helpers, only meaningful together with allowed classes.
    Reconstructor,
    NewObjFn,
    NewObjExFn,
    Getattr,
    Partial,
    /// A builtin type used as `_reconstructor`'s base (object, list, dict, int, ...).
    Base,
    /// A class or function the registry allows (or any global, in inert mode).
    Class(Option<crate::registry::Constructor>),
}

struct Glob {
    module: String,
    name: String,
    kind: GKind,
}

struct ObjNode {
    glob: u32,
    construct: Construct,
    args: Vec<Item>,
    kwargs: Option<Item>,
    state: Option<Item>,
    list: Vec<Item>,
    dict: Vec<(Item, Item)>,
}

enum Node {
    List(Vec<Item>),
    /// Keys and values interleaved: k0, v0, k1, v1, ...
    Dict(Vec<Item>),
    /// A dict whose keys and values are all finished values, built in place (the common case;
    /// it becomes `Dict` if a node is ever set in it).
    DictV(Dict),
    Set(Vec<Item>),
    FrozenSet(Vec<Item>),
    Tuple(Vec<Item>),
    Obj(Box<ObjNode>),
    /// `getattr(cls, '__new__')`
    NewOf(u32),
    /// `functools.partial(cls.__new__)` then BUILD (func, (cls, *args), kwargs, dict)
    Partial {
        cls: u32,
        built: Option<Box<(Vec<Item>, Option<Item>)>>,
    },
    /// Frozen early (fast path): the finished value and its depth. Mutating it afterwards
    /// restarts the decode without the fast path.
    Frozen(Value, u32),
    /// Already frozen (its content moved out).
    Taken,
}

pub(crate) struct Reader<'a, 'o> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    frame_end: Option<usize>,
    opts: &'o LoadOptions<'o>,
    reg: &'o Registry,
    proto: u8,
    stack: Vec<Item>,
    marks: Vec<usize>,
    memo: Vec<Option<Item>>,
    memo_sparse: HashMap<u32, Item>,
    nodes: Vec<Node>,
    /// Nesting depth of each node as known so far (exact depths are computed when freezing;
    /// this catches depth bombs while decoding).
    node_depth: Vec<u32>,
    globals: Vec<Glob>,
    glob_index: HashMap<(String, String), u32>,
    used: usize,
    limit: usize,
    next_buffer: usize,
    /// Freeze containers as soon as they are placed in another container (see `settle`).
    eager: bool,
}

/// The message of the internal error that makes [`crate::loads`] decode again without the
/// eager fast path (a container was mutated after it was frozen early).
pub(crate) const RESTART: &str = "\u{0}restart without eager freezing";

fn scalar(v: Value) -> Item {
    Item::V(v, 0)
}

impl<'a, 'o> Reader<'a, 'o> {
    pub(crate) fn new(
        data: &'a [u8],
        reg: &'o Registry,
        opts: &'o LoadOptions<'o>,
        eager: bool,
    ) -> Self {
        let limit = opts
            .max_bytes
            .unwrap_or_else(|| data.len().saturating_mul(64).max(16 << 20));
        Reader {
            data,
            pos: 0,
            op_pos: 0,
            frame_end: None,
            opts,
            reg,
            proto: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: Vec::new(),
            memo_sparse: HashMap::new(),
            nodes: Vec::new(),
            node_depth: Vec::new(),
            globals: Vec::new(),
            glob_index: HashMap::new(),
            used: 0,
            limit,
            next_buffer: 0,
            eager,
        }
    }

    // -----------------------------------------------------------------------------------------
    // errors and input

    fn err(&self, msg: impl Into<String>) -> UnpicklingError {
        UnpicklingError::new(ErrorKind::Unpickling, msg, self.op_pos)
    }
    fn err_kind(&self, kind: ErrorKind, msg: impl Into<String>) -> UnpicklingError {
        UnpicklingError::new(kind, msg, self.op_pos)
    }
    fn truncated(&self) -> UnpicklingError {
        self.err("pickle data was truncated")
    }

    fn charge(&mut self, n: usize) -> Res<()> {
        self.used = self.used.saturating_add(n);
        if self.used > self.limit {
            return Err(self.err(format!(
                "pickle exceeds the memory limit (max_bytes = {})",
                self.limit
            )));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if let Some(end) = self.frame_end {
            if self.pos == end {
                self.frame_end = None;
            } else if n > end - self.pos {
                return Err(self.err("pickle exhausted before end of frame"));
            }
        }
        if n > self.data.len() - self.pos {
            return Err(self.truncated());
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn take_len(&mut self, n: u64) -> Res<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| self.truncated())?;
        self.take(n)
    }

    fn byte(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Res<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Res<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Res<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A line without its `\n`.
    fn line(&mut self) -> Res<&'a [u8]> {
        let limit = match self.frame_end {
            Some(end) if self.pos == end => {
                self.frame_end = None;
                self.data.len()
            }
            Some(end) => end,
            None => self.data.len(),
        };
        let rest = &self.data[self.pos..limit];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None if self.frame_end.is_some() => {
                Err(self.err("pickle exhausted before end of frame"))
            }
            None => Err(self.truncated()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // stack

    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }
    fn underflow(&self) -> UnpicklingError {
        self.err("unpickling stack underflow")
    }
    fn pop(&mut self) -> Res<Item> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        self.stack.pop().ok_or_else(|| self.underflow())
    }
    fn top(&self) -> Res<&Item> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow());
        }
        self.stack.last().ok_or_else(|| self.underflow())
    }
    fn pop_mark(&mut self) -> Res<Vec<Item>> {
        let Some(m) = self.marks.pop() else {
            return Err(self.err("could not find MARK"));
        };
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }
    fn push(&mut self, it: Item) -> Res<()> {
        self.charge(16)?;
        self.stack.push(it);
        Ok(())
    }
    fn push_v(&mut self, v: Value) -> Res<()> {
        self.push(Item::V(v, 0))
    }
    fn new_node(&mut self, n: Node) -> Res<Item> {
        self.charge(32)?;
        let idx = u32::try_from(self.nodes.len()).map_err(|_| self.err("too many objects"))?;
        let d = match &n {
            Node::List(v) | Node::Set(v) | Node::FrozenSet(v) | Node::Tuple(v) | Node::Dict(v) => {
                self.items_depth(v.iter())
            }
            Node::Obj(o) => self.items_depth(o.args.iter()),
            _ => 1,
        };
        self.check_depth(d)?;
        self.nodes.push(n);
        self.node_depth.push(d);
        Ok(Item::N(idx))
    }
    fn item_depth(&self, it: &Item) -> u32 {
        match it {
            Item::V(_, d) => *d,
            Item::N(n) => self.node_depth[*n as usize],
            Item::G(_) => 0,
        }
    }
    /// 1 + the deepest of `items`.
    fn items_depth<'i>(&self, items: impl Iterator<Item = &'i Item>) -> u32 {
        1 + items.map(|i| self.item_depth(i)).max().unwrap_or(0)
    }
    /// Raises node `n`'s known depth for new content of depth `d` (content depth + 1).
    fn deepen(&mut self, n: u32, d: u32) -> Res<()> {
        let slot = &mut self.node_depth[n as usize];
        if d > *slot {
            *slot = d;
            self.check_depth(d)?;
        }
        Ok(())
    }
    fn check_depth(&self, d: u32) -> Res<()> {
        if d as usize > self.opts.max_depth {
            return Err(self.err(format!(
                "maximum nesting depth exceeded (max_depth = {})",
                self.opts.max_depth
            )));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // eager freezing: a container placed inside another one is finished in every pickle CPython
    // writes, so it is turned into a value right away (no graph left to freeze at STOP). If a
    // later opcode mutates it after all, the decode restarts in full graph mode.

    fn restart(&self) -> UnpicklingError {
        self.err(RESTART)
    }

    fn frozen_target(&self, n: u32) -> Res<()> {
        if matches!(self.nodes[n as usize], Node::Frozen(..)) {
            return Err(self.restart());
        }
        Ok(())
    }

    /// Freezes node `c` now if all its content is finished values (an unhashable key fails
    /// here, as CPython fails at the SETITEM).
    fn try_freeze(&mut self, c: u32) -> Res<Option<Item>> {
        let ready = match &self.nodes[c as usize] {
            Node::List(v) | Node::Set(v) | Node::FrozenSet(v) | Node::Dict(v) => {
                v.iter().all(|i| matches!(i, Item::V(..)))
            }
            Node::Frozen(v, d) => return Ok(Some(Item::V(v.clone(), *d))),
            Node::DictV(_) => true,
            _ => false,
        };
        if !ready {
            return Ok(None);
        }
        let (v, d) = self.build_node(c, &[])?;
        self.nodes[c as usize] = Node::Frozen(v.clone(), d);
        Ok(Some(Item::V(v, d)))
    }

    /// Settles the stack items from `from` up (about to move into a container).
    fn settle_stack(&mut self, from: usize) -> Res<()> {
        if !self.eager {
            return Ok(());
        }
        for i in from..self.stack.len() {
            if let Item::N(c) = self.stack[i] {
                if let Some(it) = self.try_freeze(c)? {
                    self.stack[i] = it;
                }
            }
        }
        Ok(())
    }

    fn settle_vec(&mut self, items: &mut [Item]) -> Res<()> {
        if !self.eager {
            return Ok(());
        }
        for it in items.iter_mut() {
            if let Item::N(c) = *it {
                if let Some(v) = self.try_freeze(c)? {
                    *it = v;
                }
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // memo

    fn memo_put(&mut self, idx: u64, it: Item) -> Res<()> {
        let idx = u32::try_from(idx).map_err(|_| self.err("memo index out of range"))?;
        let i = idx as usize;
        if i < self.memo.len() {
            self.memo[i] = Some(it);
        } else if i == self.memo.len() {
            self.charge(16)?;
            self.memo.push(Some(it));
        } else {
            self.charge(48)?;
            self.memo_sparse.insert(idx, it);
        }
        Ok(())
    }
    fn memo_get(&self, idx: u64) -> Res<Item> {
        let found = u32::try_from(idx)
            .ok()
            .and_then(|i| match self.memo.get(i as usize) {
                Some(Some(it)) => Some(it.clone()),
                _ => self.memo_sparse.get(&i).cloned(),
            });
        // (a frozen node stays a node here, so mutating it is noticed; `settle` turns it into
        // its value when it is nested)
        found.ok_or_else(|| self.err(format!("Memo value not found at index {idx}")))
    }
    fn put_top(&mut self, idx: u64) -> Res<()> {
        let it = self.top()?.clone();
        self.memo_put(idx, it)
    }

    // -----------------------------------------------------------------------------------------
    // the opcode loop

    pub(crate) fn run(mut self) -> Res<(Value, usize)> {
        if self.data.is_empty() {
            return Err(UnpicklingError::new(ErrorKind::Eof, "Ran out of input", 0));
        }
        loop {
            self.op_pos = self.pos;
            if self.pos >= self.data.len() {
                // pickle.py / _pickle: no opcode where one is expected is EOFError.
                return Err(self.err_kind(ErrorKind::Eof, "Ran out of input"));
            }
            let op = self.byte()?;
            match op {
                PROTO => {
                    let p = self.byte()?;
                    if p > 5 {
                        return Err(self.err_kind(
                            ErrorKind::Value,
                            format!("unsupported pickle protocol: {p}"),
                        ));
                    }
                    self.proto = p;
                }
                FRAME => {
                    let n = self.u64()?;
                    if let Some(end) = self.frame_end {
                        if self.pos != end {
                            return Err(
                                self.err("beginning of a new frame before end of current frame")
                            );
                        }
                    }
                    if n > (self.data.len() - self.pos) as u64 {
                        return Err(self.truncated());
                    }
                    self.frame_end = Some(self.pos + n as usize);
                }
                STOP => {
                    let it = self.pop()?;
                    let end = self.pos;
                    let v = self.freeze(it)?;
                    return Ok((v, end));
                }
                MARK => {
                    if self.marks.len() >= self.opts.max_depth {
                        return Err(self.err(format!(
                            "too many nested MARKs (max_depth = {})",
                            self.opts.max_depth
                        )));
                    }
                    self.charge(8)?;
                    self.marks.push(self.stack.len());
                }
                POP => {
                    if self.stack.len() > self.fence() {
                        self.stack.pop();
                    } else if self.marks.pop().is_none() {
                        return Err(self.underflow());
                    }
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                DUP => {
                    let it = self.top()?.clone();
                    self.push(it)?;
                }
                // ---- numbers
                NONE => self.push_v(Value::None)?,
                NEWTRUE => self.push_v(Value::Bool(true))?,
                NEWFALSE => self.push_v(Value::Bool(false))?,
                BININT1 => {
                    let b = self.byte()?;
                    self.push_v(Value::int(b as i64))?
                }
                BININT2 => {
                    let v = self.u16()?;
                    self.push_v(Value::int(v as i64))?
                }
                BININT => {
                    let v = self.u32()? as i32;
                    self.push_v(Value::int(v as i64))?
                }
                INT => {
                    let line = self.line()?;
                    let v = match line {
                        b"00" => Value::Bool(false),
                        b"01" => Value::Bool(true),
                        _ => Value::Int(self.parse_int(line)?),
                    };
                    self.push_v(v)?
                }
                LONG => {
                    let mut line = self.line()?;
                    if let [rest @ .., b'L'] = line {
                        line = rest;
                    }
                    let v = self.parse_int(line)?;
                    self.push_v(Value::Int(v))?
                }
                LONG1 => {
                    let n = self.byte()? as usize;
                    let b = self.take(n)?;
                    self.push_v(Value::bigint(BigInt::from_signed_bytes_le(b)))?
                }
                LONG4 => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err("LONG pickle has negative byte count"));
                    }
                    let b = self.take(n as usize)?;
                    self.charge(b.len())?;
                    self.push_v(Value::bigint(BigInt::from_signed_bytes_le(b)))?
                }
                FLOAT => {
                    let line = self.line()?;
                    let f = std::str::from_utf8(line)
                        .ok()
                        .map(|s| s.trim().replace('_', ""))
                        .and_then(|s| s.parse::<f64>().ok())
                        .ok_or_else(|| {
                            self.err_kind(
                                ErrorKind::Value,
                                format!(
                                    "could not convert string to float: {:?}",
                                    String::from_utf8_lossy(line)
                                ),
                            )
                        })?;
                    self.push_v(Value::Float(f))?
                }
                BINFLOAT => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push_v(Value::Float(f64::from_be_bytes(a)))?
                }
                // ---- strings
                STRING => {
                    let line = self.line()?;
                    let body = match line {
                        [q @ (b'\'' | b'"'), body @ .., e] if q == e => body,
                        _ => return Err(self.err("the STRING opcode argument must be quoted")),
                    };
                    let raw = text::escape_decode(body)
                        .map_err(|m| self.err_kind(ErrorKind::Value, m))?;
                    self.push_py2_string(&raw)?
                }
                BINSTRING => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err("BINSTRING pickle has negative byte count"));
                    }
                    let b = self.take(n as usize)?;
                    self.push_py2_string(b)?
                }
                SHORT_BINSTRING => {
                    let n = self.byte()? as usize;
                    let b = self.take(n)?;
                    self.push_py2_string(b)?
                }
                UNICODE => {
                    let line = self.line()?;
                    self.charge(line.len() * 2)?;
                    let s = text::raw_unicode_escape_decode(line)
                        .map_err(|m| self.err_kind(ErrorKind::UnicodeDecode, m))?;
                    self.push_v(Value::from(s))?
                }
                SHORT_BINUNICODE => {
                    let n = self.byte()? as usize;
                    let b = self.take(n)?;
                    self.push_utf8(b)?
                }
                BINUNICODE => {
                    let n = self.u32()? as u64;
                    let b = self.take_len(n)?;
                    self.push_utf8(b)?
                }
                BINUNICODE8 => {
                    let n = self.u64()?;
                    let b = self.take_len(n)?;
                    self.push_utf8(b)?
                }
                SHORT_BINBYTES => {
                    let n = self.byte()? as usize;
                    let b = self.take(n)?;
                    self.push_v(Value::Bytes(b.into()))?
                }
                BINBYTES => {
                    let n = self.u32()? as u64;
                    let b = self.take_len(n)?;
                    self.charge(b.len())?;
                    self.push_v(Value::Bytes(b.into()))?
                }
                BINBYTES8 => {
                    let n = self.u64()?;
                    let b = self.take_len(n)?;
                    self.charge(b.len())?;
                    self.push_v(Value::Bytes(b.into()))?
                }
                BYTEARRAY8 => {
                    let n = self.u64()?;
                    let b = self.take_len(n)?;
                    self.charge(b.len())?;
                    self.push_v(Value::ByteArray(Arc::new(b.to_vec())))?
                }
                NEXT_BUFFER => {
                    let Some(bufs) = self.opts.buffers else {
                        return Err(self.err(
                            "pickle stream refers to out-of-band data but no *buffers* argument was given",
                        ));
                    };
                    let Some(b) = bufs.get(self.next_buffer) else {
                        return Err(self.err("not enough out-of-band buffers"));
                    };
                    self.next_buffer += 1;
                    let b = b.clone();
                    self.push_v(b)?
                }
                READONLY_BUFFER => {
                    let mut it = self.pop()?;
                    if let Item::V(Value::ByteArray(b), d) = &it {
                        let ro = Item::V(Value::Bytes(b[..].into()), *d);
                        it = ro;
                    }
                    self.push(it)?
                }
                // ---- containers
                EMPTY_TUPLE => self.push(Item::V(Value::tuple(Vec::new()), 1))?,
                TUPLE => {
                    let items = self.pop_mark()?;
                    let t = self.make_tuple(items)?;
                    self.push(t)?
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = (op - TUPLE1 + 1) as usize;
                    if self.stack.len() < self.fence() + n {
                        return Err(self.underflow());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let t = self.make_tuple(items)?;
                    self.push(t)?
                }
                EMPTY_LIST => {
                    let n = self.new_node(Node::List(Vec::new()))?;
                    self.push(n)?
                }
                LIST => {
                    let mut items = self.pop_mark()?;
                    self.settle_vec(&mut items)?;
                    self.charge(items.len() * 16)?;
                    let n = self.new_node(Node::List(items))?;
                    self.push(n)?
                }
                EMPTY_DICT => {
                    let n = self.new_node(Node::DictV(Dict::new()))?;
                    self.push(n)?
                }
                DICT => {
                    let mut items = self.pop_mark()?;
                    self.settle_vec(&mut items)?;
                    if items.len() & 1 == 1 {
                        return Err(self.err("odd number of items for DICT"));
                    }
                    self.charge(items.len() * 16)?;
                    let n = self.new_node(Node::Dict(items))?;
                    self.push(n)?
                }
                EMPTY_SET => {
                    let n = self.new_node(Node::Set(Vec::new()))?;
                    self.push(n)?
                }
                FROZENSET => {
                    let mut items = self.pop_mark()?;
                    for it in &items {
                        self.check_hashable(it)?;
                    }
                    self.settle_vec(&mut items)?;
                    self.charge(items.len() * 16)?;
                    let n = self.new_node(Node::FrozenSet(items))?;
                    self.push(n)?
                }
                APPEND => {
                    let mut v = [self.pop()?];
                    self.settle_vec(&mut v)?;
                    let [v] = v;
                    self.extend_list(vec![v])?;
                }
                APPENDS => self.appends_from_mark()?,
                SETITEM => {
                    if self.stack.len() < self.fence() + 3 {
                        return Err(self.underflow());
                    }
                    let m = self.stack.len() - 2;
                    self.setitems_from(m)?;
                }
                SETITEMS => {
                    let Some(m) = self.marks.pop() else {
                        return Err(self.err("could not find MARK"));
                    };
                    if (self.stack.len() - m) & 1 == 1 {
                        return Err(self.err("odd number of items for SETITEMS"));
                    }
                    if m <= self.fence() {
                        return Err(self.underflow());
                    }
                    self.setitems_from(m)?;
                }
                ADDITEMS => {
                    let mut items = self.pop_mark()?;
                    self.charge(items.len() * 16)?;
                    self.settle_vec(&mut items)?;
                    for it in &items {
                        self.check_hashable(it)?;
                    }
                    let top = self.top()?.clone();
                    if let Item::N(n) = top {
                        self.frozen_target(n)?;
                        let d = self.items_depth(items.iter());
                        self.deepen(n, d)?;
                    }
                    match top {
                        Item::N(n) => match &mut self.nodes[n as usize] {
                            Node::Set(s) => s.extend(items),
                            _ => return Err(self.err("ADDITEMS target is not a set")),
                        },
                        _ => return Err(self.err("ADDITEMS target is not a set")),
                    }
                }
                // ---- memo
                PUT => {
                    let line = self.line()?;
                    let idx = self.parse_index(line)?;
                    if idx < 0 {
                        return Err(self.err_kind(ErrorKind::Value, "negative PUT argument"));
                    }
                    self.put_top(idx as u64)?
                }
                BINPUT => {
                    let i = self.byte()?;
                    self.put_top(i as u64)?
                }
                LONG_BINPUT => {
                    let i = self.u32()?;
                    self.put_top(i as u64)?
                }
                MEMOIZE => {
                    let i = (self.memo.len() + self.memo_sparse.len()) as u64;
                    self.put_top(i)?
                }
                GET => {
                    let line = self.line()?;
                    let idx = self.parse_index(line)?;
                    let it = if idx < 0 {
                        return Err(self.err(format!("Memo value not found at index {idx}")));
                    } else {
                        self.memo_get(idx as u64)?
                    };
                    self.push(it)?
                }
                BINGET => {
                    let i = self.byte()?;
                    let it = self.memo_get(i as u64)?;
                    self.push(it)?
                }
                LONG_BINGET => {
                    let i = self.u32()?;
                    let it = self.memo_get(i as u64)?;
                    self.push(it)?
                }
                // ---- globals and objects
                GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let module = self.utf8_name(module)?;
                    let name = self.utf8_name(name)?;
                    let g = self.find_class(&module, &name)?;
                    self.push(Item::G(g))?
                }
                STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (str_of(&module), str_of(&name)) else {
                        return Err(self.err("STACK_GLOBAL requires str"));
                    };
                    let g = self.find_class(&module, &name)?;
                    self.push(Item::G(g))?
                }
                EXT1 | EXT2 | EXT4 => {
                    let code: i64 = match op {
                        EXT1 => self.byte()? as i64,
                        EXT2 => self.u16()? as i64,
                        _ => self.u32()? as i32 as i64,
                    };
                    if code <= 0 {
                        return Err(self.err("EXT specifies code <= 0"));
                    }
                    let key = i32::try_from(code)
                        .ok()
                        .and_then(|c| self.reg.extension(c))
                        .map(|(m, n)| (m.to_owned(), n.to_owned()));
                    let Some((m, n)) = key else {
                        return Err(self.err_kind(
                            ErrorKind::Value,
                            format!("unregistered extension code {code}"),
                        ));
                    };
                    let g = self.find_class(&m, &n)?;
                    self.push(Item::G(g))?
                }
                REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let r = self.reduce(callable, args)?;
                    self.push(r)?
                }
                NEWOBJ => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = self.tuple_items(&args, "NEWOBJ args")?;
                    let r = self.new_object(cls, Construct::NewObj, args, None)?;
                    self.push(r)?
                }
                NEWOBJ_EX => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = self.tuple_items(&args, "NEWOBJ_EX args")?;
                    let r = self.new_object(cls, Construct::NewObjEx, args, Some(kwargs))?;
                    self.push(r)?
                }
                INST => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let module = self.utf8_name(module)?;
                    let name = self.utf8_name(name)?;
                    let args = self.pop_mark()?;
                    let g = self.find_class(&module, &name)?;
                    let r = self.new_object(Item::G(g), Construct::Reduce, args, None)?;
                    self.push(r)?
                }
                OBJ => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.underflow());
                    }
                    let args = items.split_off(1);
                    let cls = items.pop().ok_or_else(|| self.underflow())?;
                    let r = self.new_object(cls, Construct::Reduce, args, None)?;
                    self.push(r)?
                }
                BUILD => {
                    let state = self.pop()?;
                    let target = self.top()?.clone();
                    self.build(target, state)?;
                }
                PERSID => {
                    let line = self.line()?;
                    let Ok(pid) = std::str::from_utf8(line) else {
                        return Err(self.err("persistent IDs in protocol 0 must be ASCII strings"));
                    };
                    if !pid.is_ascii() {
                        return Err(self.err("persistent IDs in protocol 0 must be ASCII strings"));
                    }
                    let v = self.persistent(Value::str(pid))?;
                    self.push(v)?
                }
                BINPERSID => {
                    let pid = self.pop()?;
                    let pid = self.freeze(pid)?;
                    let v = self.persistent(pid)?;
                    self.push(v)?
                }
                _ => {
                    return Err(self.err(if op.is_ascii_graphic() {
                        format!("invalid load key, '{}'.", op as char)
                    } else {
                        format!("invalid load key, '\\x{op:02x}'.")
                    }))
                }
            }
        }
    }

    fn persistent(&self, pid: Value) -> Res<Item> {
        let Some(f) = self.opts.persistent_load else {
            return Err(self.err(
                "A load persistent id instruction was encountered, but no persistent_load function was specified.",
            ));
        };
        let v = f(pid).map_err(|m| self.err(m))?;
        Ok(Item::V(v, 1))
    }

    fn utf8_name(&self, b: &[u8]) -> Res<String> {
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| {
            self.err_kind(
                ErrorKind::UnicodeDecode,
                "'utf-8' codec can't decode global name",
            )
        })
    }

    fn parse_index(&self, line: &[u8]) -> Res<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                self.err_kind(
                    ErrorKind::Value,
                    format!(
                        "invalid literal for int() with base 10: {:?}",
                        String::from_utf8_lossy(line)
                    ),
                )
            })
    }

    fn parse_int(&self, line: &[u8]) -> Res<Int> {
        let bad = || {
            self.err_kind(
                ErrorKind::Value,
                format!(
                    "invalid literal for int() with base 10: {:?}",
                    String::from_utf8_lossy(line)
                ),
            )
        };
        let s = std::str::from_utf8(line).map_err(|_| bad())?.trim();
        let digits = s.trim_start_matches(['+', '-']);
        if digits.is_empty()
            || s.len() - digits.len() > 1
            || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
        {
            return Err(bad());
        }
        if digits.len() > INT_MAX_STR_DIGITS {
            return Err(self.err_kind(
                ErrorKind::Value,
                format!(
                    "Exceeds the limit ({INT_MAX_STR_DIGITS} digits) for integer string conversion: value has {} digits; use sys.set_int_max_str_digits() to increase the limit",
                    digits.len()
                ),
            ));
        }
        let clean = s.replace('_', "");
        if let Ok(v) = clean.parse::<i64>() {
            return Ok(Int::Small(v));
        }
        let b = BigInt::parse_bytes(clean.as_bytes(), 10).ok_or_else(bad)?;
        Ok(Int::from_bigint(b))
    }

    fn push_utf8(&mut self, b: &[u8]) -> Res<()> {
        self.charge(b.len())?;
        let s = PyStr::from_utf8_surrogatepass(b)
            .map_err(|e| self.err_kind(ErrorKind::UnicodeDecode, e.to_string()))?;
        self.push_v(Value::from(s))
    }

    fn push_py2_string(&mut self, b: &[u8]) -> Res<()> {
        self.charge(b.len() * 2)?;
        let v = if self.opts.encoding == StringEncoding::Bytes {
            Value::Bytes(b.into())
        } else {
            let s = text::decode_py2(b, self.opts.encoding, self.opts.errors)
                .map_err(|m| self.err_kind(ErrorKind::UnicodeDecode, m))?;
            Value::from(s)
        };
        self.push_v(v)
    }

    fn make_tuple(&mut self, mut items: Vec<Item>) -> Res<Item> {
        self.charge(items.len() * 16)?;
        self.settle_vec(&mut items)?;
        if items.iter().all(|i| matches!(i, Item::V(..))) {
            let mut d = 0;
            let vals: Vec<Value> = items
                .into_iter()
                .map(|i| match i {
                    Item::V(v, dd) => {
                        d = d.max(dd);
                        v
                    }
                    _ => Value::None,
                })
                .collect();
            self.check_depth(d + 1)?;
            return Ok(Item::V(Value::tuple(vals), d + 1));
        }
        self.new_node(Node::Tuple(items))
    }

    fn pairs(&self, items: Vec<Item>, what: &str) -> Res<Vec<(Item, Item)>> {
        if items.len() & 1 == 1 {
            return Err(self.err(format!("odd number of items for {what}")));
        }
        let mut out = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn extend_list(&mut self, items: Vec<Item>) -> Res<()> {
        self.charge(items.len() * 16)?;
        let top = self.top()?.clone();
        if let Item::N(n) = top {
            self.frozen_target(n)?;
            let d = self.items_depth(items.iter());
            self.deepen(n, d)?;
            match &mut self.nodes[n as usize] {
                Node::List(l) => {
                    l.extend(items);
                    return Ok(());
                }
                Node::Obj(o) => {
                    o.list.extend(items);
                    return Ok(());
                }
                _ => {}
            }
        }
        Err(self.err("APPEND/APPENDS target is not a list"))
    }

    /// APPENDS: the items above the last MARK go into the list (or list-subclass object) just
    /// below it, drained straight from the stack.
    fn appends_from_mark(&mut self) -> Res<()> {
        let Some(m) = self.marks.pop() else {
            return Err(self.err("could not find MARK"));
        };
        let m = m.min(self.stack.len());
        if m <= self.fence() {
            return Err(self.underflow());
        }
        self.charge((self.stack.len() - m) * 16)?;
        if let Item::N(n) = self.stack[m - 1] {
            self.frozen_target(n)?;
            self.settle_stack(m)?;
            // (settling may have frozen the target itself: a self-insertion, i.e. recursion)
            self.frozen_target(n)?;
            let d = self.items_depth(self.stack[m..].iter());
            self.deepen(n, d)?;
            match &mut self.nodes[n as usize] {
                Node::List(l) => {
                    l.extend(self.stack.drain(m..));
                    return Ok(());
                }
                Node::Obj(o) => {
                    o.list.extend(self.stack.drain(m..));
                    return Ok(());
                }
                _ => {}
            }
        }
        Err(self.err("APPEND/APPENDS target is not a list"))
    }

    /// SETITEM(S): the key/value items from `m` up go into the dict (or dict-subclass object)
    /// at `m - 1`.
    fn setitems_from(&mut self, m: usize) -> Res<()> {
        self.charge((self.stack.len() - m) * 16)?;
        for i in (m..self.stack.len()).step_by(2) {
            self.check_hashable(&self.stack[i])?;
        }
        if let Item::N(n) = self.stack[m - 1] {
            self.frozen_target(n)?;
            self.settle_stack(m)?;
            // (settling may have frozen the target itself: a self-insertion, i.e. recursion)
            self.frozen_target(n)?;
            let d = self.items_depth(self.stack[m..].iter());
            self.deepen(n, d)?;
            if let Node::DictV(_) = &self.nodes[n as usize] {
                if self.stack[m..].iter().all(|i| matches!(i, Item::V(..))) {
                    let mut err = None;
                    if let Node::DictV(dict) = &mut self.nodes[n as usize] {
                        let mut it = self.stack.drain(m..);
                        while let (Some(Item::V(k, _)), Some(Item::V(v, _))) =
                            (it.next(), it.next())
                        {
                            if let Err(e) = dict.insert(k, v) {
                                err = Some(e);
                                break;
                            }
                        }
                    }
                    return match err {
                        Some(e) => Err(self.err_kind(ErrorKind::Type, e.to_string())),
                        None => Ok(()),
                    };
                }
                // A node goes in: fall back to the item list.
                let depth = self.node_depth[n as usize].saturating_sub(1);
                if let Node::DictV(dict) = &self.nodes[n as usize] {
                    let items: Vec<Item> = dict
                        .iter()
                        .flat_map(|(k, v)| [Item::V(k.clone(), depth), Item::V(v.clone(), depth)])
                        .collect();
                    self.nodes[n as usize] = Node::Dict(items);
                }
            }
            match &mut self.nodes[n as usize] {
                Node::Dict(d) => {
                    d.extend(self.stack.drain(m..));
                    return Ok(());
                }
                Node::Obj(_) => {
                    let items: Vec<Item> = self.stack.drain(m..).collect();
                    let pairs = self.pairs(items, "SETITEMS")?;
                    if let Node::Obj(o) = &mut self.nodes[n as usize] {
                        o.dict.extend(pairs);
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
        Err(self.err("SETITEM/SETITEMS target is not a dict"))
    }

    /// A dict key or set member that is a node must be hashable as CPython sees it at the
    /// SETITEM / ADDITEMS / FROZENSET: a list, dict or set (or a tuple holding one, however
    /// deep, cycles included) is a TypeError there, never a recursive hash.
    fn check_hashable(&self, it: &Item) -> Res<()> {
        let Item::N(start) = it else {
            return Ok(());
        };
        let mut todo = vec![*start];
        let mut seen = std::collections::HashSet::new();
        while let Some(n) = todo.pop() {
            if !seen.insert(n) {
                continue;
            }
            let kind = match &self.nodes[n as usize] {
                Node::List(_) => "list",
                Node::Dict(_) | Node::DictV(_) => "dict",
                Node::Set(_) => "set",
                Node::Tuple(items) => {
                    todo.extend(items.iter().filter_map(|i| match i {
                        Item::N(c) => Some(*c),
                        _ => None,
                    }));
                    continue;
                }
                _ => continue,
            };
            return Err(self.err_kind(ErrorKind::Type, format!("unhashable type: '{kind}'")));
        }
        Ok(())
    }

    /// The items of a tuple on the stack (a finished tuple value or a tuple node).
    fn tuple_items(&self, it: &Item, what: &str) -> Res<Vec<Item>> {
        match it {
            Item::V(Value::Tuple(t), d) => Ok(t
                .iter()
                .map(|v| Item::V(v.clone(), d.saturating_sub(1)))
                .collect()),
            Item::N(n) => match &self.nodes[*n as usize] {
                Node::Tuple(items) => Ok(items.clone()),
                _ => Err(self.err(format!("{what} must be a tuple"))),
            },
            _ => Err(self.err(format!("{what} must be a tuple"))),
        }
    }

    // -----------------------------------------------------------------------------------------
    // globals

    fn find_class(&mut self, module: &str, name: &str) -> Res<u32> {
        let (m, n) = if self.proto < 3 && self.opts.fix_imports {
            compat::py2_to_py3(module, name)
        } else {
            (module, name)
        };
        if let Some(&g) = self.glob_index.get(&(m.to_owned(), n.to_owned())) {
            return Ok(g);
        }
        // The fixed table lives in `policy`: basic types first, then the caller's registry,
        // then the pattern markers (which a registry entry of the same name overrides).
        let known = policy::default_global(m, n);
        let basic = match known {
            Some(Known::Complex) => Some(GKind::Complex),
            Some(Known::Set) => Some(GKind::Set),
            Some(Known::FrozenSet) => Some(GKind::FrozenSet),
            Some(Known::ByteArray) => Some(GKind::ByteArray),
            Some(Known::Bytes) => Some(GKind::Bytes),
            Some(Known::CodecsEncode) => Some(GKind::CodecsEncode),
            Some(Known::Slice) => Some(GKind::Slice),
            Some(Known::Range) => Some(GKind::Range),
            Some(Known::Ellipsis) => Some(GKind::Value(Value::Ellipsis)),
            Some(Known::StopIteration) => Some(GKind::Value(Value::StopIteration)),
            Some(Known::NotImplemented) => Some(GKind::Value(
                Inert::global("builtins", "NotImplemented").to_value(),
            )),
            _ => None,
        };
        let kind = match basic {
            Some(k) => k,
            None => match self.reg.lookup(m, n) {
                Some(Allowed::Construct(f)) => GKind::Class(Some(f.clone())),
                Some(Allowed::Inert) => GKind::Class(None),
                // Pattern markers are accepted as inert markers: they are never resolved to
                // anything callable and only shape objects of allowed classes (anything else
                // is refused when they are used).
                None => match known {
                    Some(Known::Reconstructor) => GKind::Reconstructor,
                    Some(Known::NewObj) => GKind::NewObjFn,
                    Some(Known::NewObjEx) => GKind::NewObjExFn,
                    Some(Known::Getattr) => GKind::Getattr,
                    Some(Known::Partial) => GKind::Partial,
                    Some(Known::Base) => GKind::Base,
                    _ if self.opts.inert => GKind::Class(None),
                    _ => return Err(self.refused(m, n)),
                },
            },
        };
        let g = self.globals.len() as u32;
        self.charge(64 + m.len() + n.len())?;
        self.globals.push(Glob {
            module: m.to_owned(),
            name: n.to_owned(),
            kind,
        });
        self.glob_index.insert((m.to_owned(), n.to_owned()), g);
        Ok(g)
    }

    fn refused(&self, m: &str, n: &str) -> UnpicklingError {
        // Error path only: scan the pickle to say how it uses the global.
        let report = crate::globals::globals_of(self.data, self.reg, self.opts.fix_imports);
        let need = report
            .globals
            .iter()
            .find(|g| g.module == m && g.name == n)
            .map(|g| g.need());
        self.err(policy::refusal(m, n, need))
    }

    fn glob_name(&self, g: u32) -> String {
        let g = &self.globals[g as usize];
        format!("{}.{}", g.module, g.name)
    }

    fn reduce(&mut self, callable: Item, args: Item) -> Res<Item> {
        let g = match callable {
            Item::G(g) => g,
            Item::N(n) => {
                // Calling a prepared functools.partial(cls.__new__, cls, *args, **kwargs).
                if let Node::Partial { cls, built } = &self.nodes[n as usize] {
                    let cls = *cls;
                    let Some((pargs, kwargs)) = built.as_deref().cloned() else {
                        return Err(self.err("functools.partial called before its state was set"));
                    };
                    let extra = self.tuple_items(&args, "REDUCE args")?;
                    if !extra.is_empty() {
                        return Err(self.err("unsupported functools.partial call"));
                    }
                    let mut pargs = pargs;
                    if pargs.is_empty() || !matches!(pargs[0], Item::G(c) if c == cls) {
                        return Err(
                            self.err("functools.partial of cls.__new__ must pass cls first")
                        );
                    }
                    pargs.remove(0);
                    return self.new_object(Item::G(cls), Construct::NewObjEx, pargs, kwargs);
                }
                if self.opts.inert {
                    if let Node::Obj(o) = &self.nodes[n as usize] {
                        let g = o.glob;
                        return self.inert_call(g, Item::N(n), args);
                    }
                }
                return Err(self.err("REDUCE target is not callable"));
            }
            Item::V(v, d) if self.opts.inert && matches!(v, Value::Object(_)) => {
                let (m, nm) = match &v {
                    Value::Object(o) => (o.module.clone(), o.name.clone()),
                    _ => return Err(self.err("REDUCE target is not callable")),
                };
                let g = self.find_class(&m, &nm)?;
                return self.inert_call(g, Item::V(v, d), args);
            }
            Item::V(..) => return Err(self.err("REDUCE target is not callable")),
        };
        let items = self.tuple_items(&args, "REDUCE args")?;
        let kind = self.globals[g as usize].kind.clone();
        if !self.opts.inert || matches!(kind, GKind::Class(_)) {
            return self.reduce_global(g, kind, items);
        }
        // Inert mode: a default global (basic type or pattern marker) called with a shape the
        // policy does not serve is kept as an inert call, as the Python package does; limits
        // and malformed data still fail.
        let saved = items.clone();
        match self.reduce_global(g, kind, items) {
            Err(e) if is_shape_refusal(&e) => {
                self.charge(saved.len() * 16)?;
                let o = self.obj_node(g, Construct::Reduce, saved, None);
                self.new_node(Node::Obj(Box::new(o)))
            }
            r => r,
        }
    }

    /// Inert mode: `f(*args)` where `f` is an inert object, kept as a [`Construct::Call`].
    fn inert_call(&mut self, g: u32, callee: Item, args: Item) -> Res<Item> {
        let mut items = vec![callee];
        items.extend(self.tuple_items(&args, "REDUCE args")?);
        self.charge(items.len() * 16)?;
        let o = self.obj_node(g, Construct::Call, items, None);
        self.new_node(Node::Obj(Box::new(o)))
    }

    fn reduce_global(&mut self, g: u32, kind: GKind, items: Vec<Item>) -> Res<Item> {
        let bad = |s: &Self| s.err(format!("unsupported arguments for {}", s.glob_name(g)));
        match kind {
            GKind::Complex => {
                let mut parts = [0.0f64; 2];
                if items.len() > 2 {
                    return Err(bad(self));
                }
                for (i, it) in items.iter().enumerate() {
                    parts[i] = match it {
                        Item::V(Value::Float(f), _) => *f,
                        Item::V(Value::Int(Int::Small(v)), _) => *v as f64,
                        Item::V(Value::Int(Int::Big(b)), _) => {
                            b.to_f64().filter(|f| f.is_finite()).ok_or_else(|| bad(self))?
                        }
                        Item::V(Value::Bool(b), _) => *b as i64 as f64,
                        _ => return Err(bad(self)),
                    };
                }
                Ok(scalar(Value::Complex(parts[0], parts[1])))
            }
            GKind::Set | GKind::FrozenSet => {
                let content = match items.as_slice() {
                    [] => Vec::new(),
                    [it] => self.iter_items(it).ok_or_else(|| bad(self))?,
                    _ => return Err(bad(self)),
                };
                self.charge(content.len() * 16)?;
                let node = if matches!(kind, GKind::Set) {
                    Node::Set(content)
                } else {
                    Node::FrozenSet(content)
                };
                self.new_node(node)
            }
            GKind::ByteArray | GKind::Bytes => {
                let data: Vec<u8> = match items.as_slice() {
                    [] => Vec::new(),
                    [Item::V(Value::Bytes(b), _)] => b.to_vec(),
                    [Item::V(Value::ByteArray(b), _)] => b.to_vec(),
                    [Item::V(Value::Str(s), _), Item::V(Value::Str(enc), _)] => {
                        self.encode_str(s, enc).ok_or_else(|| bad(self))?
                    }
                    _ => return Err(bad(self)),
                };
                self.charge(data.len())?;
                Ok(scalar(if matches!(kind, GKind::Bytes) {
                    Value::Bytes(data.into())
                } else {
                    Value::ByteArray(Arc::new(data))
                }))
            }
            GKind::CodecsEncode => {
                let data = match items.as_slice() {
                    [Item::V(Value::Str(s), _), Item::V(Value::Str(enc), _)] => {
                        self.encode_str(s, enc).ok_or_else(|| bad(self))?
                    }
                    _ => return Err(bad(self)),
                };
                self.charge(data.len())?;
                Ok(scalar(Value::Bytes(data.into())))
            }
            GKind::Slice => {
                let mut vals = Vec::with_capacity(3);
                let mut d = 0;
                for it in items {
                    match it {
                        Item::V(v, dd) => {
                            d = d.max(dd);
                            vals.push(v)
                        }
                        _ => return Err(bad(self)),
                    }
                }
                let (start, stop, step) = match vals.len() {
                    1 => (Value::None, vals.pop().unwrap_or(Value::None), Value::None),
                    2 | 3 => {
                        let step = if vals.len() == 3 { vals.pop().unwrap_or(Value::None) } else { Value::None };
                        let stop = vals.pop().unwrap_or(Value::None);
                        let start = vals.pop().unwrap_or(Value::None);
                        (start, stop, step)
                    }
                    _ => return Err(bad(self)),
                };
                self.check_depth(d + 1)?;
                Ok(Item::V(
                    Value::Slice(Arc::new(Slice { start, stop, step })),
                    d + 1,
                ))
            }
            GKind::Range => {
                if !(1..=3).contains(&items.len())
                    || !items
                        .iter()
                        .all(|it| matches!(it, Item::V(Value::Int(_), _)))
                {
                    return Err(bad(self));
                }
                let o = self.obj_node(g, Construct::Reduce, items, None);
                self.new_node(Node::Obj(Box::new(o)))
            }
            GKind::Reconstructor => {
                // copyreg._reconstructor(cls, base, state)
                let [cls, base, state] = <[Item; 3]>::try_from(items).map_err(|_| bad(self))?;
                let (Item::G(c), Item::G(b)) = (&cls, &base) else {
                    return Err(bad(self));
                };
                let (c, b) = (*c, *b);
                if !matches!(self.globals[c as usize].kind, GKind::Class(_)) {
                    return Err(bad(self));
                }
                let _ = b;
                // Kept as is (object.__new__-style creation differs from cls.__new__), so it
                // is written back the same way.
                let obj = self.obj_node(c, Construct::Reconstructor, vec![base, state], None);
                self.new_node(Node::Obj(Box::new(obj)))
            }
            GKind::NewObjFn | GKind::NewObjExFn => {
                let mut items = items;
                if items.is_empty() {
                    return Err(bad(self));
                }
                let cls = items.remove(0);
                if matches!(kind, GKind::NewObjFn) {
                    self.new_object(cls, Construct::NewObj, items, None)
                } else {
                    let [args, kwargs] = <[Item; 2]>::try_from(items).map_err(|_| bad(self))?;
                    let args = self.tuple_items(&args, "__newobj_ex__ args")?;
                    self.new_object(cls, Construct::NewObjEx, args, Some(kwargs))
                }
            }
            GKind::Getattr => match items.as_slice() {
                [Item::G(c), Item::V(Value::Str(s), _)]
                    if s.as_bytes() == b"__new__"
                        && matches!(self.globals[*c as usize].kind, GKind::Class(_)) =>
                {
                    let c = *c;
                    self.new_node(Node::NewOf(c))
                }
                _ => Err(self.err("builtins.getattr is only allowed as getattr(cls, '__new__') of an allowed class")),
            },
            GKind::Partial => match items.as_slice() {
                [Item::N(n)] => match self.nodes[*n as usize] {
                    Node::NewOf(c) => self.new_node(Node::Partial {
                        cls: c,
                        built: None,
                    }),
                    _ => Err(bad(self)),
                },
                _ => Err(self.err("functools.partial is only allowed over cls.__new__ of an allowed class")),
            },
            GKind::Class(_) => self.new_object(Item::G(g), Construct::Reduce, items, None),
            GKind::Base if items.is_empty() && self.has_base_empty(g) => {
                self.base_empty(g).unwrap_or(Ok(Item::V(Value::None, 0)))
            }
            GKind::Value(_) | GKind::Base if self.opts.inert => {
                self.charge(items.len() * 16)?;
                let o = self.obj_node(g, Construct::Reduce, items, None);
                self.new_node(Node::Obj(Box::new(o)))
            }
            GKind::Value(_) | GKind::Base => Err(self.err(format!(
                "calling {} is forbidden: creating its objects is not in the registry (load with inert=True to inspect it)",
                self.glob_name(g)
            ))),
        }
    }

    fn encode_str(&self, s: &PyStr, enc: &PyStr) -> Option<Vec<u8>> {
        let enc = enc.as_str()?;
        match StringEncoding::from_name(enc)? {
            StringEncoding::Latin1 => s
                .code_points()
                .map(|c| u8::try_from(c).ok())
                .collect::<Option<Vec<u8>>>(),
            StringEncoding::Ascii => s
                .code_points()
                .map(|c| u8::try_from(c).ok().filter(u8::is_ascii))
                .collect::<Option<Vec<u8>>>(),
            StringEncoding::Utf8 => s.as_str().map(|t| t.as_bytes().to_vec()),
            StringEncoding::Bytes => None,
        }
    }

    /// The items of a list/tuple/set argument (set(x), frozenset(x), _reconstructor state).
    fn iter_items(&self, it: &Item) -> Option<Vec<Item>> {
        match it {
            Item::V(Value::Tuple(t) | Value::List(t), d) => Some(
                t.iter()
                    .map(|v| Item::V(v.clone(), d.saturating_sub(1)))
                    .collect(),
            ),
            Item::N(n) => match &self.nodes[*n as usize] {
                Node::List(l) | Node::Tuple(l) | Node::Set(l) | Node::FrozenSet(l) => {
                    Some(l.clone())
                }
                Node::Frozen(Value::List(t) | Value::Tuple(t), d) => Some(
                    t.iter()
                        .map(|v| Item::V(v.clone(), d.saturating_sub(1)))
                        .collect(),
                ),
                Node::Frozen(Value::Set(t) | Value::FrozenSet(t), d) => Some(
                    t.iter()
                        .map(|v| Item::V(v.clone(), d.saturating_sub(1)))
                        .collect(),
                ),
                _ => None,
            },
            _ => None,
        }
    }

    fn has_base_empty(&self, g: u32) -> bool {
        matches!(
            self.globals[g as usize].name.as_str(),
            "int" | "float" | "str" | "tuple" | "list" | "dict"
        )
    }

    /// `int()`, `float()`, `str()`, `tuple()`, `list()`, `dict()`: the empty value of a basic
    /// type named by a base global (`None` for `object`, which has no value).
    fn base_empty(&mut self, g: u32) -> Option<Res<Item>> {
        let name = self.globals[g as usize].name.as_str();
        Some(match name {
            "int" => Ok(scalar(Value::int(0))),
            "float" => Ok(scalar(Value::Float(0.0))),
            "str" => Ok(scalar(Value::str(""))),
            "tuple" => Ok(Item::V(Value::tuple(Vec::new()), 1)),
            "list" => self.new_node(Node::List(Vec::new())),
            "dict" => self.new_node(Node::DictV(Dict::new())),
            _ => return None,
        })
    }

    fn obj_node(
        &self,
        glob: u32,
        construct: Construct,
        args: Vec<Item>,
        kwargs: Option<Item>,
    ) -> ObjNode {
        ObjNode {
            glob,
            construct,
            args,
            kwargs,
            state: None,
            list: Vec::new(),
            dict: Vec::new(),
        }
    }

    fn new_object(
        &mut self,
        cls: Item,
        construct: Construct,
        args: Vec<Item>,
        kwargs: Option<Item>,
    ) -> Res<Item> {
        let Item::G(g) = cls else {
            return Err(self.err("class argument must be a global"));
        };
        let no_kwargs = match &kwargs {
            None => true,
            Some(Item::V(Value::Dict(d), _)) => d.is_empty(),
            Some(Item::N(k)) => matches!(&self.nodes[*k as usize], Node::DictV(d) if d.is_empty()),
            _ => false,
        };
        if matches!(self.globals[g as usize].kind, GKind::Base) && args.is_empty() && no_kwargs {
            // int.__new__(int) and friends: the empty value of a basic type
            if let Some(r) = self.base_empty(g) {
                return r;
            }
        }
        if !matches!(self.globals[g as usize].kind, GKind::Class(_)) && !self.opts.inert {
            return Err(self.err(format!(
                "creating {} objects this way is forbidden: not in the registry (load with inert=True to inspect it)",
                self.glob_name(g)
            )));
        }
        self.charge(args.len() * 16)?;
        let o = self.obj_node(g, construct, args, kwargs);
        self.new_node(Node::Obj(Box::new(o)))
    }

    fn build(&mut self, target: Item, state: Item) -> Res<()> {
        let Item::N(n) = target else {
            return Err(self.err("BUILD target is not an object"));
        };
        self.frozen_target(n)?;
        let cls = match &mut self.nodes[n as usize] {
            Node::Obj(o) => {
                o.state = Some(state);
                return Ok(());
            }
            Node::Partial { cls, .. } => *cls,
            _ => return Err(self.err("BUILD target is not an object")),
        };
        // functools.partial state: (func, args, kwargs, __dict__)
        let bad = |s: &Self| s.err("unsupported functools.partial state");
        let parts = self.tuple_items(&state, "functools.partial state")?;
        if parts.len() != 4 || !matches!(parts[3], Item::V(Value::None, _)) {
            return Err(bad(self));
        }
        match &parts[0] {
            Item::N(f) if matches!(self.nodes[*f as usize], Node::NewOf(c) if c == cls) => {}
            _ => return Err(bad(self)),
        }
        let args = self.tuple_items(&parts[1], "functools.partial args")?;
        let kwargs = match &parts[2] {
            Item::V(Value::None, _) => None,
            other => Some(other.clone()),
        };
        if let Node::Partial { built, .. } = &mut self.nodes[n as usize] {
            *built = Some(Box::new((args, kwargs)));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // freezing the graph into values

    fn global_value(&self, g: u32) -> Res<Value> {
        let glob = &self.globals[g as usize];
        match &glob.kind {
            GKind::Value(v) => Ok(v.clone()),
            GKind::Class(Some(f)) => {
                let inert = Inert::global(&glob.module, &glob.name);
                f(&inert).map_err(|m| self.err(m))
            }
            GKind::Class(None) => Ok(Inert::global(&glob.module, &glob.name).to_value()),
            _ if self.opts.inert => Ok(Inert::global(&glob.module, &glob.name).to_value()),
            _ => Err(self.err(format!(
                "global '{}' cannot be loaded as a value (load with inert=True to inspect it)",
                self.glob_name(g)
            ))),
        }
    }

    fn children(&self, n: u32, out: &mut Vec<u32>) {
        let mut add = |it: &Item| {
            if let Item::N(c) = it {
                out.push(*c);
            }
        };
        match &self.nodes[n as usize] {
            Node::List(v) | Node::Set(v) | Node::FrozenSet(v) | Node::Tuple(v) | Node::Dict(v) => {
                v.iter().for_each(&mut add)
            }
            Node::Obj(o) => {
                o.args.iter().for_each(&mut add);
                o.kwargs.iter().for_each(&mut add);
                o.state.iter().for_each(&mut add);
                o.list.iter().for_each(&mut add);
                o.dict.iter().for_each(|(k, v)| {
                    add(k);
                    add(v)
                });
            }
            Node::NewOf(_)
            | Node::Partial { .. }
            | Node::Frozen(..)
            | Node::DictV(_)
            | Node::Taken => {}
        }
    }

    fn freeze(&mut self, root: Item) -> Res<Value> {
        let root = match root {
            Item::V(v, _) => return Ok(v),
            Item::G(g) => return self.global_value(g),
            Item::N(n) => n,
        };
        let count = self.nodes.len();
        let mut frozen: Vec<Option<(Value, u32)>> = vec![None; count];
        let mut visiting = vec![0u8; count];
        let mut work: Vec<(u32, bool)> = vec![(root, false)];
        let mut kids = Vec::new();
        while let Some((n, expanded)) = work.pop() {
            if expanded {
                let (v, d) = self.build_node(n, &frozen)?;
                self.check_depth(d)?;
                frozen[n as usize] = Some((v, d));
                visiting[n as usize] = 2;
                continue;
            }
            match visiting[n as usize] {
                2 => continue,
                1 => return Err(self.recursive()),
                _ => {}
            }
            visiting[n as usize] = 1;
            work.push((n, true));
            kids.clear();
            self.children(n, &mut kids);
            for &c in &kids {
                match visiting[c as usize] {
                    1 => return Err(self.recursive()),
                    0 => work.push((c, false)),
                    _ => {}
                }
            }
        }
        match frozen[root as usize].take() {
            Some((v, _)) => Ok(v),
            None => Err(self.err("internal error: value not built")),
        }
    }

    fn recursive(&self) -> UnpicklingError {
        self.err("recursive structure: the pickle contains an object that contains itself, which cellar values cannot represent")
    }

    fn build_node(&mut self, n: u32, frozen: &[Option<(Value, u32)>]) -> Res<(Value, u32)> {
        let node = std::mem::replace(&mut self.nodes[n as usize], Node::Taken);
        let is_frozen = matches!(node, Node::FrozenSet(_));
        let mut depth = 0u32;
        let val = |s: &Self, it: Item, depth: &mut u32| -> Res<Value> {
            match it {
                Item::V(v, d) => {
                    *depth = (*depth).max(d);
                    Ok(v)
                }
                Item::N(c) => match &frozen[c as usize] {
                    Some((v, d)) => {
                        *depth = (*depth).max(*d);
                        Ok(v.clone())
                    }
                    None => Err(s.recursive()),
                },
                Item::G(g) => s.global_value(g),
            }
        };
        let hash_err =
            |s: &Self, e: cellar_value::HashError| s.err_kind(ErrorKind::Type, e.to_string());
        let v =
            match node {
                Node::List(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    for it in items {
                        out.push(val(self, it, &mut depth)?);
                    }
                    Value::list(out)
                }
                Node::Tuple(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    for it in items {
                        out.push(val(self, it, &mut depth)?);
                    }
                    Value::tuple(out)
                }
                Node::Dict(items) => {
                    let mut d = Dict::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        let k = val(self, k, &mut depth)?;
                        let v = val(self, v, &mut depth)?;
                        d.insert(k, v).map_err(|e| hash_err(self, e))?;
                    }
                    Value::Dict(Arc::new(d))
                }
                Node::Set(items) | Node::FrozenSet(items) => {
                    let mut s = Set::new();
                    for it in items {
                        let v = val(self, it, &mut depth)?;
                        s.insert(v).map_err(|e| hash_err(self, e))?;
                    }
                    if is_frozen {
                        Value::FrozenSet(Arc::new(s))
                    } else {
                        Value::Set(Arc::new(s))
                    }
                }
                Node::Obj(o) => {
                    let o = *o;
                    let glob = &self.globals[o.glob as usize];
                    let (module, name) = (glob.module.clone(), glob.name.clone());
                    let ctor = match &glob.kind {
                        GKind::Class(c) if o.construct != Construct::Call => c.clone(),
                        _ => None,
                    };
                    let mut args = Vec::with_capacity(o.args.len());
                    for (i, it) in o.args.into_iter().enumerate() {
                        match it {
                            // _reconstructor's base class: a name, kept as an inert global.
                            Item::G(b) if i == 0 && o.construct == Construct::Reconstructor => {
                                let b = &self.globals[b as usize];
                                args.push(Inert::global(&b.module, &b.name).to_value());
                            }
                            it => args.push(val(self, it, &mut depth)?),
                        }
                    }
                    let kwargs = match o.kwargs {
                        Some(k) => val(self, k, &mut depth)?,
                        None if o.construct == Construct::NewObjEx => {
                            Value::dict([]).unwrap_or(Value::None)
                        }
                        None => Value::None,
                    };
                    let state = match o.state {
                        Some(s) => val(self, s, &mut depth)?,
                        None => Value::None,
                    };
                    let mut listitems = Vec::with_capacity(o.list.len());
                    for it in o.list {
                        listitems.push(val(self, it, &mut depth)?);
                    }
                    let mut dictitems = Vec::with_capacity(o.dict.len());
                    for (k, v) in o.dict {
                        let k = val(self, k, &mut depth)?;
                        let v = val(self, v, &mut depth)?;
                        dictitems.push((k, v));
                    }
                    let inert = Inert {
                        module,
                        name,
                        construct: o.construct,
                        args: Value::tuple(args),
                        kwargs,
                        state,
                        listitems,
                        dictitems,
                    };
                    match ctor {
                        Some(f) => f(&inert).map_err(|m| self.err(m))?,
                        None => inert.to_value(),
                    }
                }
                Node::NewOf(_) | Node::Partial { .. } => return Err(self.err(
                    "incomplete functools.partial / getattr pattern cannot be loaded as a value",
                )),
                Node::Frozen(v, d) => {
                    self.nodes[n as usize] = Node::Frozen(v.clone(), d);
                    return Ok((v, d));
                }
                Node::DictV(d) => {
                    return Ok((Value::Dict(Arc::new(d)), self.node_depth[n as usize].max(1)));
                }
                Node::Taken => return Err(self.err("internal error: node frozen twice")),
            };
        Ok((v, depth + 1))
    }
}

/// A refusal of an argument shape (not a limit or malformed data): what inert mode keeps as an
/// inert call instead.
fn is_shape_refusal(e: &UnpicklingError) -> bool {
    e.kind == ErrorKind::Unpickling
        && [
            "unsupported arguments for ",
            "builtins.getattr is only allowed",
            "functools.partial is only allowed",
            "class argument must be a global",
        ]
        .iter()
        .any(|p| e.message.starts_with(p))
}

fn str_of(it: &Item) -> Option<String> {
    match it {
        Item::V(Value::Str(s), _) => s.as_str().map(str::to_owned),
        _ => None,
    }
}
