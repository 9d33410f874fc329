//! The one pickle decoder: a flat opcode loop over the input with an explicit stack (no
//! recursion on the Rust stack), generic over a [`Sink`] that makes the values.
//!
//! This loop owns the format and the safety policy; the sinks only build things (see
//! [`crate::sink`]). Here, and only here: opcode parsing, frames, the stack and marks, the memo
//! (of sink handles), the limits (`max_depth` over marks and the nesting of what is built,
//! `max_bytes` charged for payloads, containers, stack slots, memo slots and globals), global
//! resolution (the default table in [`crate::policy`], then the caller's consent through
//! [`Sink::resolve`], then inert mode), the argument shapes the basic-type constructors
//! accept, the pattern markers (`_reconstructor`, `__newobj__`, `__newobj_ex__`,
//! `getattr(cls, '__new__')`, `functools.partial(cls.__new__, cls, ...)`: kept as loop-side
//! items, never given to a sink as values, never built on), the rule that BUILD, APPEND,
//! SETITEM and ADDITEMS act only on what the sink made (a global, a marker or a pattern is
//! refused here), and every error message of the format.

use cellar_value::{BigInt, Int, PyStr};

use crate::compat;
use crate::error::{ErrorKind, UnpicklingError};
use crate::inert::Construct;
use crate::ops::*;
use crate::policy::{self, Known};
use crate::registry::Registry;
use crate::sink::{Buffer, GlobalRef, Items, Lookup, Shape, Sink};
use crate::text::{self, DecodeErrors, StringEncoding};

/// The default nesting limit (containers inside containers, and MARK depth).
pub const DEFAULT_MAX_DEPTH: usize = 2000;

/// Python's limit on decimal digits for text integers (`sys.get_int_max_str_digits()`).
const INT_MAX_STR_DIGITS: usize = 4300;

/// What the loop needs to know for one decode, whatever the sink (the sink keeps its own
/// configuration: registry, buffers, `persistent_load`).
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Keep globals nobody allowed as inert objects instead of refusing them.
    pub inert: bool,
    /// Map Python 2 global names to Python 3 ones at protocols 0-2.
    pub fix_imports: bool,
    /// How Python 2 strings decode (passed to [`Sink::py2_string`]).
    pub encoding: StringEncoding,
    /// Error handler for `encoding`.
    pub errors: DecodeErrors,
    /// Maximum nesting of MARKs and of the decoded value.
    pub max_depth: usize,
    /// Maximum bytes the decoded value may occupy; `None`: `max(64 * input length, 16 MiB)`.
    pub max_bytes: Option<usize>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            inert: false,
            fix_imports: true,
            encoding: StringEncoding::Ascii,
            errors: DecodeErrors::Strict,
            max_depth: DEFAULT_MAX_DEPTH,
            max_bytes: None,
        }
    }
}

/// Decodes the first pickle in `data` into `sink`; returns the sink's result and the bytes the
/// pickle used (through STOP). Trailing bytes are ignored, as in CPython.
pub fn decode<S: Sink>(
    data: &[u8],
    sink: &mut S,
    opts: &DecodeOptions,
) -> Result<(S::Output, usize), S::Error> {
    let mut d = Decoder::new(data, sink, opts);
    match d.run() {
        Ok(r) => Ok(r),
        Err(Fail::Own(e)) => Err(e.into()),
        Err(Fail::Sink(e)) => Err(d.sink.locate(e, d.op_pos)),
    }
}

/// An error of the loop (already located) or of the sink (located on the way out).
enum Fail<E> {
    Own(UnpicklingError),
    Sink(E),
}

impl<E> From<UnpicklingError> for Fail<E> {
    fn from(e: UnpicklingError) -> Self {
        Fail::Own(e)
    }
}

type Res<T, E> = Result<T, Fail<E>>;

/// A stack / memo slot.
pub(crate) enum Item<H> {
    /// Something the sink made, with the nesting depth known so far.
    V(H, u32),
    /// A resolved global (index into the globals table).
    G(u32),
    /// `getattr(cls, '__new__')` of an allowed class (global index).
    NewOf(u32),
    /// `functools.partial(cls.__new__)` (index into the partials table).
    Partial(u32),
    /// A tuple holding loop-side items (globals, markers): kept here until it is used as
    /// arguments, or made by the sink when it is used as a value.
    T(u32),
}

/// A stack slot holding a value the sink made, as [`crate::sink::Items`] borrows it.
pub(crate) type Slot<H> = Item<H>;

impl<H> Item<H> {
    /// The handle of a slot that holds a sink value (`Items` only borrows those: see
    /// `Decoder::fill`).
    #[inline(always)]
    pub(crate) fn handle(&self) -> Option<&H> {
        match self {
            Item::V(h, _) => Some(h),
            _ => None,
        }
    }
}

impl<H: Clone> Clone for Item<H> {
    fn clone(&self) -> Self {
        match self {
            Item::V(h, d) => Item::V(h.clone(), *d),
            Item::G(g) => Item::G(*g),
            Item::NewOf(g) => Item::NewOf(*g),
            Item::Partial(p) => Item::Partial(*p),
            Item::T(t) => Item::T(*t),
        }
    }
}

/// What a global resolves to. Only these; nothing is imported.
enum GKind<G> {
    Complex,
    Set,
    FrozenSet,
    ByteArray,
    Bytes,
    CodecsEncode,
    Slice,
    Range,
    /// Ellipsis, StopIteration, NotImplemented.
    Constant(Known),
    Reconstructor,
    NewObjFn,
    NewObjExFn,
    Getattr,
    Partial,
    /// A builtin type used as `_reconstructor`'s base (object, list, dict, int, ...).
    Base,
    /// A class or function the caller allowed (`Some`), or any global in inert mode (`None`).
    Class(Option<G>),
}

struct Glob<G> {
    module: String,
    name: String,
    kind: GKind<G>,
    /// The caller's consent for a basic type or pattern marker (an `allow=` entry naming it):
    /// its own rules come first, the consent serves what they refuse (values, other calls).
    consent: Option<G>,
}

/// The arguments a prepared `functools.partial` passes to `cls.__new__`: `(cls, *args)` and
/// the keyword arguments.
type PartialArgs<H> = (Vec<Item<H>>, Option<Item<H>>);

struct PartialState<H> {
    cls: u32,
    built: Option<PartialArgs<H>>,
}

/// A loop-side tuple and, once it was needed as a value, the sink's tuple with its depth.
type LoopTuple<H> = (Vec<Item<H>>, Option<(H, u32)>);

struct Decoder<'a, 's, S: Sink> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    frame_end: Option<usize>,
    /// Where reading must stop for now: the current frame's end, or the end of the data (the
    /// fast path of `take` is one comparison against it).
    end: usize,
    opts: DecodeOptions,
    sink: &'s mut S,
    proto: u8,
    stack: Vec<Item<S::Handle>>,
    marks: Vec<usize>,
    memo: Vec<Option<Item<S::Handle>>>,
    memo_sparse: std::collections::HashMap<u32, Item<S::Handle>>,
    globals: Vec<Glob<S::Global>>,
    glob_index: std::collections::HashMap<(String, String), u32>,
    partials: Vec<PartialState<S::Handle>>,
    /// Loop-side tuples, and the sink's tuple once one was made.
    tuples: Vec<LoopTuple<S::Handle>>,
    /// Reused for the items of APPENDS / SETITEMS / ADDITEMS (no allocation per opcode).
    scratch: Vec<S::Handle>,
    used: usize,
    limit: usize,
}

fn sink_err<E>(e: E) -> Fail<E> {
    Fail::Sink(e)
}

impl<'a, 's, S: Sink> Decoder<'a, 's, S> {
    fn new(data: &'a [u8], sink: &'s mut S, opts: &DecodeOptions) -> Self {
        let limit = opts
            .max_bytes
            .unwrap_or_else(|| data.len().saturating_mul(64).max(16 << 20));
        Decoder {
            data,
            pos: 0,
            op_pos: 0,
            frame_end: None,
            end: data.len(),
            opts: *opts,
            sink,
            proto: 0,
            stack: Vec::with_capacity(16),
            marks: Vec::new(),
            memo: Vec::new(),
            memo_sparse: std::collections::HashMap::new(),
            globals: Vec::new(),
            glob_index: std::collections::HashMap::new(),
            partials: Vec::new(),
            tuples: Vec::new(),
            scratch: Vec::new(),
            used: 0,
            limit,
        }
    }

    // -----------------------------------------------------------------------------------------
    // errors and input

    #[cold]
    fn err(&self, msg: impl Into<String>) -> UnpicklingError {
        UnpicklingError::new(ErrorKind::Unpickling, msg, self.op_pos)
    }
    #[cold]
    fn err_kind(&self, kind: ErrorKind, msg: impl Into<String>) -> UnpicklingError {
        UnpicklingError::new(kind, msg, self.op_pos)
    }
    #[cold]
    fn truncated(&self) -> UnpicklingError {
        self.err("pickle data was truncated")
    }

    #[inline(always)]
    fn charge(&mut self, n: usize) -> Res<(), S::Error> {
        self.used = self.used.saturating_add(n);
        if self.used > self.limit {
            return Err(self
                .err(format!(
                    "pickle exceeds the memory limit (max_bytes = {})",
                    self.limit
                ))
                .into());
        }
        Ok(())
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Res<&'a [u8], S::Error> {
        // `end` is the frame's end or the data's (never past it): one comparison.
        if n <= self.end - self.pos {
            let s = &self.data[self.pos..self.pos + n];
            self.pos += n;
            return Ok(s);
        }
        self.take_slow(n)
    }

    /// `take` past `end`: leaving a used-up frame, or an error.
    #[inline(never)]
    fn take_slow(&mut self, n: usize) -> Res<&'a [u8], S::Error> {
        if let Some(end) = self.frame_end {
            if self.pos == end {
                self.leave_frame();
            } else if n > end - self.pos {
                return Err(self.err("pickle exhausted before end of frame").into());
            }
        }
        if n > self.data.len() - self.pos {
            return Err(self.truncated().into());
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reading continues outside the current frame.
    fn leave_frame(&mut self) {
        self.frame_end = None;
        self.end = self.data.len();
    }

    fn take_len(&mut self, n: u64) -> Res<&'a [u8], S::Error> {
        let n = usize::try_from(n).map_err(|_| self.truncated())?;
        self.take(n)
    }

    #[inline(always)]
    fn byte(&mut self) -> Res<u8, S::Error> {
        if self.pos < self.end {
            let b = self.data[self.pos];
            self.pos += 1;
            return Ok(b);
        }
        Ok(self.take_slow(1)?[0])
    }
    #[inline(always)]
    fn u16(&mut self) -> Res<u16, S::Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    #[inline(always)]
    fn u32(&mut self) -> Res<u32, S::Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Res<u64, S::Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A line without its `\n`.
    fn line(&mut self) -> Res<&'a [u8], S::Error> {
        let limit = match self.frame_end {
            Some(end) if self.pos == end => {
                self.leave_frame();
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
                Err(self.err("pickle exhausted before end of frame").into())
            }
            None => Err(self.truncated().into()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // stack

    #[inline(always)]
    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }
    #[cold]
    fn underflow(&self) -> UnpicklingError {
        self.err("unpickling stack underflow")
    }
    #[inline(always)]
    fn pop(&mut self) -> Res<Item<S::Handle>, S::Error> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow().into());
        }
        self.stack.pop().ok_or_else(|| self.underflow().into())
    }
    #[inline(always)]
    fn top(&self) -> Res<&Item<S::Handle>, S::Error> {
        if self.stack.len() <= self.fence() {
            return Err(self.underflow().into());
        }
        self.stack.last().ok_or_else(|| self.underflow().into())
    }
    fn pop_mark_index(&mut self) -> Res<usize, S::Error> {
        match self.marks.pop() {
            Some(m) => Ok(m.min(self.stack.len())),
            None => Err(self.err("could not find MARK").into()),
        }
    }
    fn pop_mark(&mut self) -> Res<Vec<Item<S::Handle>>, S::Error> {
        let m = self.pop_mark_index()?;
        Ok(self.stack.split_off(m))
    }
    #[inline(always)]
    fn push(&mut self, it: Item<S::Handle>) -> Res<(), S::Error> {
        self.charge(16)?;
        self.stack.push(it);
        Ok(())
    }
    /// Pushes a scalar the sink made.
    #[inline(always)]
    fn push_made(&mut self, r: Result<S::Handle, S::Error>) -> Res<(), S::Error> {
        let h = r.map_err(sink_err)?;
        self.push(Item::V(h, 0))
    }

    fn check_depth(&self, d: u32) -> Res<(), S::Error> {
        if d as usize > self.opts.max_depth {
            return Err(self
                .err(format!(
                    "maximum nesting depth exceeded (max_depth = {})",
                    self.opts.max_depth
                ))
                .into());
        }
        Ok(())
    }

    fn item_depth(&self, it: &Item<S::Handle>) -> u32 {
        match it {
            Item::V(_, d) => *d,
            Item::T(t) => match &self.tuples[*t as usize].1 {
                Some((_, d)) => *d,
                None => 1,
            },
            _ => 0,
        }
    }

    /// 1 + the deepest of `items`, checked against `max_depth`.
    fn depth_of(&self, items: &[Item<S::Handle>]) -> Res<u32, S::Error> {
        let d = 1 + items.iter().map(|i| self.item_depth(i)).max().unwrap_or(0);
        self.check_depth(d)?;
        Ok(d)
    }

    // -----------------------------------------------------------------------------------------
    // loop-side items into sink values

    /// The sink value of `it` (a global used as a value, a loop-side tuple); markers and
    /// patterns never become values.
    fn value(&mut self, it: Item<S::Handle>) -> Res<S::Handle, S::Error> {
        match it {
            Item::V(h, _) => Ok(h),
            Item::G(g) => self.global_value(g),
            Item::T(t) => {
                if let Some((h, _)) = &self.tuples[t as usize].1 {
                    return Ok(h.clone());
                }
                let items = self.tuples[t as usize].0.clone();
                let d = self.depth_of(&items)?;
                let vals = self.values(items)?;
                let h = self.sink.tuple(vals).map_err(sink_err)?;
                self.tuples[t as usize].1 = Some((h.clone(), d));
                Ok(h)
            }
            Item::NewOf(_) | Item::Partial(_) => Err(self
                .err("incomplete functools.partial / getattr pattern cannot be loaded as a value")
                .into()),
        }
    }

    fn values(&mut self, items: Vec<Item<S::Handle>>) -> Res<Vec<S::Handle>, S::Error> {
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            out.push(self.value(it)?);
        }
        Ok(out)
    }

    /// The stack items from `m` up, as sink values (drained).
    fn drain_values(&mut self, m: usize) -> Res<Vec<S::Handle>, S::Error> {
        if self.stack[m..].iter().all(|i| matches!(i, Item::V(..))) {
            return Ok(self
                .stack
                .drain(m..)
                .filter_map(|i| match i {
                    Item::V(h, _) => Some(h),
                    _ => None,
                })
                .collect());
        }
        let items = self.stack.split_off(m);
        self.values(items)
    }

    fn global_value(&mut self, g: u32) -> Res<S::Handle, S::Error> {
        match &self.globals[g as usize].kind {
            GKind::Constant(k) => {
                let k = *k;
                self.sink.constant(k).map_err(sink_err)
            }
            GKind::Class(_) => {
                let r = self.sink.global(gref_of(&self.globals, g));
                r.map_err(sink_err)
            }
            _ if self.opts.inert || self.globals[g as usize].consent.is_some() => {
                let r = self.sink.global(gref_of(&self.globals, g));
                r.map_err(sink_err)
            }
            _ => Err(self
                .err(format!(
                    "global '{}' cannot be loaded as a value (load with inert=True to inspect it)",
                    self.glob_name(g)
                ))
                .into()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // memo

    #[inline(always)]
    fn memo_put(&mut self, idx: u64, it: Item<S::Handle>) -> Res<(), S::Error> {
        // The common case: the next index (MEMOIZE, and every memo CPython writes).
        if idx == self.memo.len() as u64 {
            self.charge(16)?;
            self.memo.push(Some(it));
            return Ok(());
        }
        self.memo_put_other(idx, it)
    }

    fn memo_put_other(&mut self, idx: u64, it: Item<S::Handle>) -> Res<(), S::Error> {
        let idx = u32::try_from(idx).map_err(|_| self.err("memo index out of range"))?;
        let i = idx as usize;
        if i < self.memo.len() {
            self.memo[i] = Some(it);
        } else if i == self.memo.len() {
            self.charge(16)?;
            self.memo.push(Some(it));
        } else {
            if !self.memo_sparse.contains_key(&idx) {
                self.charge(48)?;
            }
            self.memo_sparse.insert(idx, it);
        }
        Ok(())
    }
    #[inline(always)]
    fn memo_get(&mut self, idx: u64) -> Res<Item<S::Handle>, S::Error> {
        let found = u32::try_from(idx)
            .ok()
            .and_then(|i| match self.memo.get(i as usize) {
                Some(Some(it)) => Some(it.clone()),
                _ => self.memo_sparse.get(&i).cloned(),
            });
        match found {
            Some(it) => {
                if let Item::V(h, d) = &it {
                    self.sink.reused(h, *d);
                }
                Ok(it)
            }
            None => Err(self
                .err(format!("Memo value not found at index {idx}"))
                .into()),
        }
    }
    #[inline(always)]
    fn put_top(&mut self, idx: u64) -> Res<(), S::Error> {
        let it = self.top()?.clone();
        self.memo_put(idx, it)
    }

    // -----------------------------------------------------------------------------------------
    // the opcode loop

    fn run(&mut self) -> Res<(S::Output, usize), S::Error> {
        if self.data.is_empty() {
            return Err(UnpicklingError::new(ErrorKind::Eof, "Ran out of input", 0).into());
        }
        loop {
            self.op_pos = self.pos;
            let op = if self.pos < self.end {
                let b = self.data[self.pos];
                self.pos += 1;
                b
            } else if self.pos >= self.data.len() {
                // pickle.py / _pickle: no opcode where one is expected is EOFError.
                return Err(self.err_kind(ErrorKind::Eof, "Ran out of input").into());
            } else {
                self.take_slow(1)?[0]
            };
            match op {
                PROTO => {
                    let p = self.byte()?;
                    if p > 5 {
                        return Err(self
                            .err_kind(
                                ErrorKind::Value,
                                format!("unsupported pickle protocol: {p}"),
                            )
                            .into());
                    }
                    self.proto = p;
                }
                FRAME => {
                    let n = self.u64()?;
                    if let Some(end) = self.frame_end {
                        if self.pos != end {
                            return Err(self
                                .err("beginning of a new frame before end of current frame")
                                .into());
                        }
                    }
                    if n > (self.data.len() - self.pos) as u64 {
                        return Err(self.truncated().into());
                    }
                    self.frame_end = Some(self.pos + n as usize);
                    self.end = self.pos + n as usize;
                }
                STOP => {
                    let it = self.pop()?;
                    let end = self.pos;
                    let h = self.value(it)?;
                    let out = self.sink.finish(h).map_err(sink_err)?;
                    return Ok((out, end));
                }
                MARK => {
                    if self.marks.len() >= self.opts.max_depth {
                        return Err(self
                            .err(format!(
                                "too many nested MARKs (max_depth = {})",
                                self.opts.max_depth
                            ))
                            .into());
                    }
                    self.charge(8)?;
                    self.marks.push(self.stack.len());
                }
                POP => {
                    if self.stack.len() > self.fence() {
                        self.stack.pop();
                    } else if self.marks.pop().is_none() {
                        return Err(self.underflow().into());
                    }
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                DUP => {
                    let it = self.top()?.clone();
                    if let Item::V(h, d) = &it {
                        self.sink.reused(h, *d);
                    }
                    self.push(it)?;
                }
                // ---- numbers
                NONE => {
                    let r = self.sink.none();
                    self.push_made(r)?
                }
                NEWTRUE => {
                    let r = self.sink.bool(true);
                    self.push_made(r)?
                }
                NEWFALSE => {
                    let r = self.sink.bool(false);
                    self.push_made(r)?
                }
                BININT1 => {
                    let b = self.byte()?;
                    let r = self.sink.int(b as i64);
                    self.push_made(r)?
                }
                BININT2 => {
                    let v = self.u16()?;
                    let r = self.sink.int(v as i64);
                    self.push_made(r)?
                }
                BININT => {
                    let v = self.u32()? as i32;
                    let r = self.sink.int(v as i64);
                    self.push_made(r)?
                }
                INT => {
                    let line = self.line()?;
                    let r = match line {
                        b"00" => self.sink.bool(false),
                        b"01" => self.sink.bool(true),
                        _ => {
                            let v = self.parse_int(line)?;
                            self.make_int(v)
                        }
                    };
                    self.push_made(r)?
                }
                LONG => {
                    let mut line = self.line()?;
                    if let [rest @ .., b'L'] = line {
                        line = rest;
                    }
                    let v = self.parse_int(line)?;
                    let r = self.make_int(v);
                    self.push_made(r)?
                }
                LONG1 => {
                    let n = self.byte()? as usize;
                    let b = self.take(n)?;
                    let r = self.le_int(b);
                    self.push_made(r)?
                }
                LONG4 => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err("LONG pickle has negative byte count").into());
                    }
                    let b = self.take(n as usize)?;
                    self.charge(b.len())?;
                    let r = self.le_int(b);
                    self.push_made(r)?
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
                    let r = self.sink.float(f);
                    self.push_made(r)?
                }
                BINFLOAT => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    let r = self.sink.float(f64::from_be_bytes(a));
                    self.push_made(r)?
                }
                // ---- strings
                STRING => {
                    let line = self.line()?;
                    let body = match line {
                        [q @ (b'\'' | b'"'), body @ .., e] if q == e => body,
                        _ => {
                            return Err(self
                                .err("the STRING opcode argument must be quoted")
                                .into())
                        }
                    };
                    let raw = text::escape_decode(body)
                        .map_err(|m| self.err_kind(ErrorKind::Value, m))?;
                    self.push_py2_string(&raw)?
                }
                BINSTRING => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err("BINSTRING pickle has negative byte count").into());
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
                    if line.is_ascii() && !line.contains(&b'\\') {
                        // (no escapes, ASCII: raw-unicode-escape is the identity)
                        let r = self.sink.str_utf8(line);
                        self.push_made(r)?;
                        continue;
                    }
                    let s = text::raw_unicode_escape_decode(line)
                        .map_err(|m| self.err_kind(ErrorKind::UnicodeDecode, m))?;
                    let r = self.sink.str(s);
                    self.push_made(r)?
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
                    let r = self.sink.bytes(b);
                    self.push_made(r)?
                }
                BINBYTES => {
                    let n = self.u32()? as u64;
                    let b = self.take_len(n)?;
                    self.charge(b.len())?;
                    let r = self.sink.bytes(b);
                    self.push_made(r)?
                }
                BINBYTES8 => {
                    let n = self.u64()?;
                    let b = self.take_len(n)?;
                    self.charge(b.len())?;
                    let r = self.sink.bytes(b);
                    self.push_made(r)?
                }
                BYTEARRAY8 => {
                    let n = self.u64()?;
                    let b = self.take_len(n)?;
                    self.charge(b.len())?;
                    let r = self.sink.bytearray(b);
                    self.push_made(r)?
                }
                NEXT_BUFFER => match self.sink.next_buffer().map_err(sink_err)? {
                    Buffer::Next(h) => self.push(Item::V(h, 0))?,
                    Buffer::NotGiven => {
                        return Err(self
                            .err("pickle stream refers to out-of-band data but no *buffers* argument was given")
                            .into())
                    }
                    Buffer::Exhausted => {
                        return Err(self.err("not enough out-of-band buffers").into())
                    }
                },
                READONLY_BUFFER => {
                    let it = self.pop()?;
                    let it = match it {
                        Item::V(h, d) => Item::V(self.sink.readonly(h).map_err(sink_err)?, d),
                        other => other,
                    };
                    self.push(it)?
                }
                // ---- containers
                EMPTY_TUPLE => {
                    let r = self.sink.tuple(Vec::new()).map_err(sink_err)?;
                    self.push(Item::V(r, 1))?
                }
                TUPLE => {
                    let m = self.pop_mark_index()?;
                    let t = self.make_tuple(m)?;
                    self.push(t)?
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = (op - TUPLE1 + 1) as usize;
                    if self.stack.len() < self.fence() + n {
                        return Err(self.underflow().into());
                    }
                    let t = self.make_tuple(self.stack.len() - n)?;
                    self.push(t)?
                }
                EMPTY_LIST => {
                    self.charge(32)?;
                    let r = self.sink.list(Vec::new()).map_err(sink_err)?;
                    self.push(Item::V(r, 1))?
                }
                LIST => {
                    let m = self.pop_mark_index()?;
                    let d = self.depth_of(&self.stack[m..])?;
                    self.charge((self.stack.len() - m) * 16 + 32)?;
                    let items = self.drain_values(m)?;
                    let r = self.sink.list(items).map_err(sink_err)?;
                    self.push(Item::V(r, d))?
                }
                EMPTY_DICT => {
                    self.charge(32)?;
                    let r = self.sink.dict(Vec::new()).map_err(sink_err)?;
                    self.push(Item::V(r, 1))?
                }
                DICT => {
                    let m = self.pop_mark_index()?;
                    if (self.stack.len() - m) & 1 == 1 {
                        return Err(self.err("odd number of items for DICT").into());
                    }
                    let d = self.depth_of(&self.stack[m..])?;
                    self.charge((self.stack.len() - m) * 16 + 32)?;
                    let items = self.drain_values(m)?;
                    let r = self.sink.dict(items).map_err(sink_err)?;
                    self.push(Item::V(r, d))?
                }
                EMPTY_SET => {
                    self.charge(32)?;
                    let r = self.sink.set(Vec::new()).map_err(sink_err)?;
                    self.push(Item::V(r, 1))?
                }
                FROZENSET => {
                    let m = self.pop_mark_index()?;
                    let d = self.depth_of(&self.stack[m..])?;
                    self.charge((self.stack.len() - m) * 16 + 32)?;
                    let items = self.drain_values(m)?;
                    let r = self.sink.frozenset(items).map_err(sink_err)?;
                    self.push(Item::V(r, d))?
                }
                APPEND => {
                    if self.stack.len() < self.fence() + 2 {
                        return Err(self.underflow().into());
                    }
                    self.fill(self.stack.len() - 1, Fill::Append)?
                }
                APPENDS => {
                    let m = self.pop_mark_index()?;
                    if m <= self.fence() {
                        return Err(self.underflow().into());
                    }
                    self.fill(m, Fill::Append)?
                }
                SETITEM => {
                    if self.stack.len() < self.fence() + 3 {
                        return Err(self.underflow().into());
                    }
                    self.fill(self.stack.len() - 2, Fill::SetItems)?
                }
                SETITEMS => {
                    let Some(m) = self.marks.pop() else {
                        return Err(self.err("could not find MARK").into());
                    };
                    if (self.stack.len() - m) & 1 == 1 {
                        return Err(self.err("odd number of items for SETITEMS").into());
                    }
                    if m <= self.fence() {
                        return Err(self.underflow().into());
                    }
                    self.fill(m, Fill::SetItems)?
                }
                ADDITEMS => {
                    let m = self.pop_mark_index()?;
                    if m <= self.fence() {
                        return Err(self.underflow().into());
                    }
                    self.fill(m, Fill::AddItems)?
                }
                // ---- memo
                PUT => {
                    let line = self.line()?;
                    let idx = self.parse_index(line)?;
                    if idx < 0 {
                        return Err(self
                            .err_kind(ErrorKind::Value, "negative PUT argument")
                            .into());
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
                    if idx < 0 {
                        return Err(self
                            .err(format!("Memo value not found at index {idx}"))
                            .into());
                    }
                    let it = self.memo_get(idx as u64)?;
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
                    let (Some(module), Some(name)) = (self.str_of(&module), self.str_of(&name))
                    else {
                        return Err(self.err("STACK_GLOBAL requires str").into());
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
                        return Err(self.err("EXT specifies code <= 0").into());
                    }
                    let key = i32::try_from(code)
                        .ok()
                        .and_then(|c| self.sink.extension(c));
                    let Some((m, n)) = key else {
                        return Err(self
                            .err_kind(
                                ErrorKind::Value,
                                format!("unregistered extension code {code}"),
                            )
                            .into());
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
                    let r = self.new_object_with(Item::G(g), Construct::Reduce, true, args, None)?;
                    self.push(r)?
                }
                OBJ => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.underflow().into());
                    }
                    let args = items.split_off(1);
                    let cls = items.pop().ok_or_else(|| self.underflow())?;
                    let r = self.new_object_with(cls, Construct::Reduce, true, args, None)?;
                    self.push(r)?
                }
                BUILD => {
                    let state = self.pop()?;
                    if self.stack.len() <= self.fence() {
                        return Err(self.underflow().into());
                    }
                    self.build(state)?;
                }
                PERSID => {
                    let line = self.line()?;
                    let pid = match std::str::from_utf8(line) {
                        Ok(p) if p.is_ascii() => p,
                        _ => {
                            return Err(self
                                .err("persistent IDs in protocol 0 must be ASCII strings")
                                .into())
                        }
                    };
                    let pid = self.sink.str(PyStr::from(pid)).map_err(sink_err)?;
                    let v = self.persistent(pid)?;
                    self.push(v)?
                }
                BINPERSID => {
                    let pid = self.pop()?;
                    let pid = self.value(pid)?;
                    let v = self.persistent(pid)?;
                    self.push(v)?
                }
                _ => {
                    return Err(self
                        .err(if op.is_ascii_graphic() {
                            format!("invalid load key, '{}'.", op as char)
                        } else {
                            format!("invalid load key, '\\x{op:02x}'.")
                        })
                        .into())
                }
            }
        }
    }

    fn persistent(&mut self, pid: S::Handle) -> Res<Item<S::Handle>, S::Error> {
        match self.sink.persistent_load(pid).map_err(sink_err)? {
            Some(h) => Ok(Item::V(h, 1)),
            None => Err(self
                .err("A load persistent id instruction was encountered, but no persistent_load function was specified.")
                .into()),
        }
    }

    fn utf8_name(&self, b: &[u8]) -> Res<String, S::Error> {
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| {
            self.err_kind(
                ErrorKind::UnicodeDecode,
                "'utf-8' codec can't decode global name",
            )
            .into()
        })
    }

    fn str_of(&self, it: &Item<S::Handle>) -> Option<String> {
        match it {
            Item::V(h, _) => self
                .sink
                .text(h)
                .and_then(|s| s.as_str().map(str::to_owned)),
            _ => None,
        }
    }

    fn parse_index(&self, line: &[u8]) -> Res<i64, S::Error> {
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
                .into()
            })
    }

    fn parse_int(&self, line: &[u8]) -> Res<Int, S::Error> {
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
            return Err(bad().into());
        }
        if digits.len() > INT_MAX_STR_DIGITS {
            return Err(self.err_kind(
                ErrorKind::Value,
                format!(
                    "Exceeds the limit ({INT_MAX_STR_DIGITS} digits) for integer string conversion: value has {} digits; use sys.set_int_max_str_digits() to increase the limit",
                    digits.len()
                ),
            ).into());
        }
        let clean = s.replace('_', "");
        if let Ok(v) = clean.parse::<i64>() {
            return Ok(Int::Small(v));
        }
        let b = BigInt::parse_bytes(clean.as_bytes(), 10).ok_or_else(bad)?;
        Ok(Int::from_bigint(b))
    }

    fn make_int(&mut self, v: Int) -> Result<S::Handle, S::Error> {
        match v {
            Int::Small(v) => self.sink.int(v),
            Int::Big(b) => self.sink.big_int(&b.to_signed_bytes_le()),
        }
    }

    /// LONG1/LONG4's little-endian two's complement payload.
    fn le_int(&mut self, b: &[u8]) -> Result<S::Handle, S::Error> {
        if b.len() <= 8 {
            let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut w = [fill; 8];
            w[..b.len()].copy_from_slice(b);
            return self.sink.int(i64::from_le_bytes(w));
        }
        self.sink.big_int(b)
    }

    fn push_utf8(&mut self, b: &[u8]) -> Res<(), S::Error> {
        self.charge(b.len())?;
        let r = self.sink.str_utf8(b);
        self.push_made(r)
    }

    fn push_py2_string(&mut self, b: &[u8]) -> Res<(), S::Error> {
        self.charge(b.len() * 2)?;
        let r = self
            .sink
            .py2_string(b, self.opts.encoding, self.opts.errors);
        self.push_made(r)
    }

    // -----------------------------------------------------------------------------------------
    // containers

    /// TUPLE / TUPLE1-3 over the stack items from `m` up: made by the sink when they are all
    /// sink values, kept loop-side when they hold globals or markers (REDUCE arguments).
    fn make_tuple(&mut self, m: usize) -> Res<Item<S::Handle>, S::Error> {
        let n = self.stack.len() - m;
        self.charge(n * 16)?;
        let d = self.depth_of(&self.stack[m..])?;
        if self.stack[m..].iter().all(|i| matches!(i, Item::V(..))) {
            let vals = self.drain_values(m)?;
            let h = self.sink.tuple(vals).map_err(sink_err)?;
            return Ok(Item::V(h, d));
        }
        let items = self.stack.split_off(m);
        let t = u32::try_from(self.tuples.len()).map_err(|_| self.err("too many objects"))?;
        self.charge(32)?;
        self.tuples.push((items, None));
        Ok(Item::T(t))
    }

    /// APPEND(S) / SETITEM(S) / ADDITEMS: the stack items from `m` up go into the target at
    /// `m - 1`, which must be something the sink made.
    fn fill(&mut self, m: usize, what: Fill) -> Res<(), S::Error> {
        self.charge((self.stack.len() - m) * 16)?;
        // One pass: the depth of the new items, and whether they are all sink values.
        let mut deepest = 0;
        let mut all_made = true;
        for it in &self.stack[m..] {
            match it {
                Item::V(_, d) => deepest = deepest.max(*d),
                other => {
                    all_made = false;
                    deepest = deepest.max(self.item_depth(other));
                }
            }
        }
        let d = if self.stack.len() > m { deepest + 1 } else { 1 };
        self.check_depth(d)?;
        if all_made && m > 0 {
            // The sink may fill the target from the stack in place (no buffer, one pass).
            let (head, tail) = self.stack.split_at_mut(m);
            if let Some(Item::V(target, td)) = head.last_mut() {
                let items = Items(tail);
                let r = match what {
                    Fill::Append => self.sink.append_in_place(target, items),
                    Fill::SetItems => self.sink.set_items_in_place(target, items),
                    Fill::AddItems => self.sink.add_items_in_place(target, items),
                }
                .map_err(sink_err)?;
                if let Some(ok) = r {
                    if d > *td {
                        *td = d;
                    }
                    self.stack.truncate(m);
                    if !ok {
                        return Err(self.err(what.refused()).into());
                    }
                    return Ok(());
                }
            }
        }
        let mut items = std::mem::take(&mut self.scratch);
        items.clear();
        if all_made {
            items.reserve(self.stack.len() - m);
            for it in self.stack.drain(m..) {
                if let Item::V(h, _) = it {
                    items.push(h);
                }
            }
        } else {
            let rest = self.stack.split_off(m);
            for it in rest {
                items.push(self.value(it)?);
            }
        }
        let refused = what.refused();
        let Some(Item::V(target, td)) = self.stack.last_mut() else {
            return Err(self.err(refused).into());
        };
        if d > *td {
            *td = d;
        }
        let target = target.clone();
        let ok = match what {
            Fill::Append => self.sink.append(&target, &mut items),
            Fill::SetItems => self.sink.set_items(&target, &mut items),
            Fill::AddItems => self.sink.add_items(&target, &mut items),
        }
        .map_err(sink_err)?;
        items.clear();
        self.scratch = items;
        if !ok {
            return Err(self.err(refused).into());
        }
        Ok(())
    }

    /// The items of a tuple on the stack (a sink tuple or a loop-side one).
    fn tuple_items(&self, it: &Item<S::Handle>, what: &str) -> Res<Vec<Item<S::Handle>>, S::Error> {
        match it {
            Item::V(h, d) if matches!(self.sink.shape(h), Shape::Tuple(_)) => {
                if self.sink.shape(h) == Shape::Tuple(0) {
                    return Ok(Vec::new());
                }
                let d = d.saturating_sub(1);
                Ok(self
                    .sink
                    .items(h)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|h| Item::V(h, d))
                    .collect())
            }
            Item::T(t) => Ok(self.tuples[*t as usize].0.clone()),
            // (CPython: `f(*args)` with a non-tuple is a TypeError)
            _ if what == "REDUCE args" => Err(self
                .err_kind(ErrorKind::Type, format!("{what} must be a tuple"))
                .into()),
            _ => Err(self.err(format!("{what} must be a tuple")).into()),
        }
    }

    /// The items of a list/tuple/set argument (`set(x)`, `frozenset(x)`).
    fn iter_items(&self, it: &Item<S::Handle>) -> Option<Vec<Item<S::Handle>>> {
        match it {
            Item::V(h, d) => match self.sink.shape(h) {
                Shape::Tuple(_) | Shape::List | Shape::Set | Shape::FrozenSet => {
                    let d = d.saturating_sub(1);
                    Some(
                        self.sink
                            .items(h)?
                            .into_iter()
                            .map(|h| Item::V(h, d))
                            .collect(),
                    )
                }
                _ => None,
            },
            Item::T(t) => Some(self.tuples[*t as usize].0.clone()),
            _ => None,
        }
    }

    // -----------------------------------------------------------------------------------------
    // globals

    fn find_class(&mut self, module: &str, name: &str) -> Res<u32, S::Error> {
        let (m, n) = if self.proto < 3 && self.opts.fix_imports {
            compat::py2_to_py3(module, name)
        } else {
            (module, name)
        };
        self.find_class_as_is(m, n, (module, name))
    }

    /// [`Self::find_class`] of a Python 3 name (no `fix_imports` mapping); `raw` is the name
    /// as the data spells it (for [`Sink::lookup`]).
    fn find_class_as_is(&mut self, m: &str, n: &str, raw: (&str, &str)) -> Res<u32, S::Error> {
        if let Some(&g) = self.glob_index.get(&(m.to_owned(), n.to_owned())) {
            return Ok(g);
        }
        // The sink's own lookup (a find_class override) first: what it returns is classified
        // by the sink (the object behind a default global keeps that global's rules);
        // otherwise the fixed table in `policy` by name: basic types first, then the caller's
        // consent, then the pattern markers (which a consent for the same name overrides).
        let (known, consent) = match self.sink.lookup(raw, m, n).map_err(sink_err)? {
            Lookup::ByName => (
                policy::default_global(m, n),
                self.sink.resolve(m, n).map_err(sink_err)?,
            ),
            Lookup::Default(k, c) => (Some(k), c),
            Lookup::Allowed(g) => (None, Some(g)),
            Lookup::Unresolved => (None, None),
        };
        let basic = match known {
            Some(Known::Complex) => Some(GKind::Complex),
            Some(Known::Set) => Some(GKind::Set),
            Some(Known::FrozenSet) => Some(GKind::FrozenSet),
            Some(Known::ByteArray) => Some(GKind::ByteArray),
            Some(Known::Bytes) => Some(GKind::Bytes),
            Some(Known::CodecsEncode) => Some(GKind::CodecsEncode),
            Some(Known::Slice) => Some(GKind::Slice),
            Some(Known::Range) => Some(GKind::Range),
            Some(k @ (Known::Ellipsis | Known::StopIteration | Known::NotImplemented)) => {
                Some(GKind::Constant(k))
            }
            _ => None,
        };
        // Pattern markers are loop-side markers: they only shape objects of allowed classes
        // (anything else is refused when they are used, or served by a consent for the same
        // name).
        let marker = match known {
            Some(Known::Reconstructor) => Some(GKind::Reconstructor),
            Some(Known::NewObj) => Some(GKind::NewObjFn),
            Some(Known::NewObjEx) => Some(GKind::NewObjExFn),
            Some(Known::Getattr) => Some(GKind::Getattr),
            Some(Known::Partial) => Some(GKind::Partial),
            Some(Known::Base) => Some(GKind::Base),
            _ => None,
        };
        let (kind, consent) = match (basic.or(marker), consent) {
            (Some(k), c) => (k, c),
            (None, Some(g)) => (GKind::Class(Some(g)), None),
            (None, None) if self.opts.inert => (GKind::Class(None), None),
            (None, None) => return Err(self.refused(m, n).into()),
        };
        let g = u32::try_from(self.globals.len()).map_err(|_| self.err("too many globals"))?;
        self.charge(64 + m.len() + n.len())?;
        self.globals.push(Glob {
            module: m.to_owned(),
            name: n.to_owned(),
            kind,
            consent,
        });
        self.glob_index.insert((m.to_owned(), n.to_owned()), g);
        Ok(g)
    }

    #[cold]
    fn refused(&self, m: &str, n: &str) -> UnpicklingError {
        // Error path only: scan the pickle to say how it uses the global.
        let default = Registry::default();
        let reg = self.sink.registry().unwrap_or(&default);
        let report = crate::globals::globals_of(self.data, reg, self.opts.fix_imports);
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

    fn is_class(&self, g: u32) -> bool {
        matches!(self.globals[g as usize].kind, GKind::Class(_))
    }

    fn reduce(
        &mut self,
        callable: Item<S::Handle>,
        args: Item<S::Handle>,
    ) -> Res<Item<S::Handle>, S::Error> {
        let g = match callable {
            Item::G(g) => g,
            Item::Partial(p) => return self.call_partial(p, args),
            Item::V(h, d) if self.opts.inert => {
                let Some((m, n)) = self.sink.inert_name(&h) else {
                    return Err(self
                        .err_kind(ErrorKind::Type, "REDUCE target is not callable")
                        .into());
                };
                let g = self.find_class(&m, &n)?;
                let mut items = vec![Item::V(h, d)];
                items.extend(self.tuple_items(&args, "REDUCE args")?);
                self.charge(items.len() * 16 + 32)?;
                let dd = self.depth_of(&items)?;
                let mut vals = self.values(items)?;
                let callee = vals.remove(0);
                let r = self
                    .sink
                    .inert_call(gref_of(&self.globals, g), callee, vals)
                    .map_err(sink_err)?;
                return Ok(Item::V(r, dd));
            }
            _ => {
                return Err(self
                    .err_kind(ErrorKind::Type, "REDUCE target is not callable")
                    .into())
            }
        };
        let items = self.tuple_items(&args, "REDUCE args")?;
        let consent = self.globals[g as usize].consent.is_some();
        if !(self.opts.inert || consent) || self.is_class(g) {
            return self.reduce_global(g, items);
        }
        // A default global (basic type or pattern marker) called with a shape the policy does
        // not serve: the caller's consent for it calls it, inert mode keeps an inert call;
        // limits and malformed data still fail.
        let saved = items.clone();
        match self.reduce_global(g, items) {
            Err(Fail::Own(e)) if is_shape_refusal(&e) && consent => self.consented_call(g, saved),
            Err(Fail::Own(e)) if is_shape_refusal(&e) => self.inert_object(g, saved),
            r => r,
        }
    }

    /// `g(*args)` for a basic type or pattern marker the caller allowed by name.
    fn consented_call(
        &mut self,
        g: u32,
        args: Vec<Item<S::Handle>>,
    ) -> Res<Item<S::Handle>, S::Error> {
        self.charge(args.len() * 16 + 32)?;
        let d = self.depth_of(&args)?;
        let vals = self.values(args)?;
        let r = self
            .sink
            .object(gref_of(&self.globals, g), Construct::Reduce, vals, None)
            .map_err(sink_err)?;
        Ok(Item::V(r, d))
    }

    /// An inert `g(*args)` (inert mode).
    fn inert_object(
        &mut self,
        g: u32,
        args: Vec<Item<S::Handle>>,
    ) -> Res<Item<S::Handle>, S::Error> {
        self.charge(args.len() * 16 + 32)?;
        let d = self.depth_of(&args)?;
        let vals = self.values(args)?;
        let gr = GlobalRef {
            allowed: None,
            ..gref_of(&self.globals, g)
        };
        let r = self
            .sink
            .object(gr, Construct::Reduce, vals, None)
            .map_err(sink_err)?;
        Ok(Item::V(r, d))
    }

    /// `functools.partial(cls.__new__, cls, *args, **kwargs)()`, once its state is set.
    fn call_partial(&mut self, p: u32, args: Item<S::Handle>) -> Res<Item<S::Handle>, S::Error> {
        let cls = self.partials[p as usize].cls;
        let Some((pargs, kwargs)) = self.partials[p as usize].built.clone() else {
            return Err(self
                .err("functools.partial called before its state was set")
                .into());
        };
        let extra = self.tuple_items(&args, "REDUCE args")?;
        if !extra.is_empty() {
            return Err(self.err("unsupported functools.partial call").into());
        }
        let mut pargs = pargs;
        // partial(Base.__new__, Sub, ...) is how CPython writes a subclass that inherits
        // __new__ (`complex.__new__` for a complex subclass): Sub must itself be an allowed
        // class, and is made with its own __new__.
        let target = match pargs.first() {
            Some(Item::G(c)) if *c == cls || self.is_class(*c) => *c,
            _ => {
                return Err(self
                    .err("functools.partial of cls.__new__ must pass cls first")
                    .into())
            }
        };
        pargs.remove(0);
        self.new_object(Item::G(target), Construct::NewObjEx, pargs, kwargs)
    }

    fn number(&self, it: &Item<S::Handle>) -> Option<f64> {
        let Item::V(h, _) = it else { return None };
        match self.sink.shape(h) {
            Shape::Float(f) => Some(f),
            Shape::Int(f) => f,
            Shape::Bool(b) => Some(b as i64 as f64),
            _ => None,
        }
    }

    fn text_of(&self, it: &Item<S::Handle>) -> Option<PyStr> {
        match it {
            Item::V(h, _) if self.sink.shape(h) == Shape::Str => self.sink.text(h),
            _ => None,
        }
    }

    #[cold]
    fn bad_args(&self, g: u32) -> Fail<S::Error> {
        self.err(format!("unsupported arguments for {}", self.glob_name(g)))
            .into()
    }

    fn reduce_global(
        &mut self,
        g: u32,
        items: Vec<Item<S::Handle>>,
    ) -> Res<Item<S::Handle>, S::Error> {
        match &self.globals[g as usize].kind {
            GKind::Complex => {
                let mut parts = [0.0f64; 2];
                if items.len() > 2 {
                    return Err(self.bad_args(g));
                }
                for (i, it) in items.iter().enumerate() {
                    parts[i] = self.number(it).ok_or_else(|| self.bad_args(g))?;
                }
                let r = self.sink.complex(parts[0], parts[1]).map_err(sink_err)?;
                Ok(Item::V(r, 0))
            }
            kind @ (GKind::Set | GKind::FrozenSet) => {
                let frozen = matches!(kind, GKind::FrozenSet);
                let content = match items.as_slice() {
                    [] => Vec::new(),
                    [it] => self.iter_items(it).ok_or_else(|| self.bad_args(g))?,
                    _ => return Err(self.bad_args(g)),
                };
                self.charge(content.len() * 16 + 32)?;
                let d = self.depth_of(&content)?;
                let vals = self.values(content)?;
                let r = if frozen {
                    self.sink.frozenset(vals)
                } else {
                    self.sink.set(vals)
                }
                .map_err(sink_err)?;
                Ok(Item::V(r, d))
            }
            kind @ (GKind::ByteArray | GKind::Bytes | GKind::CodecsEncode) => {
                let is_bytes = !matches!(kind, GKind::ByteArray);
                let codecs = matches!(kind, GKind::CodecsEncode);
                let data: Vec<u8> = match items.as_slice() {
                    [] if !codecs => Vec::new(),
                    [Item::V(h, _)] if !codecs => match self.sink.shape(h) {
                        Shape::Bytes | Shape::ByteArray => {
                            self.sink.data(h).ok_or_else(|| self.bad_args(g))?
                        }
                        _ => return Err(self.bad_args(g)),
                    },
                    [s, enc] => match (self.text_of(s), self.text_of(enc)) {
                        (Some(s), Some(enc)) => {
                            encode_str(&s, &enc).ok_or_else(|| self.bad_args(g))?
                        }
                        _ => return Err(self.bad_args(g)),
                    },
                    _ => return Err(self.bad_args(g)),
                };
                self.charge(data.len())?;
                let r = if is_bytes {
                    self.sink.bytes(&data)
                } else {
                    self.sink.bytearray(&data)
                }
                .map_err(sink_err)?;
                Ok(Item::V(r, 0))
            }
            GKind::Slice => {
                if !(1..=3).contains(&items.len()) || !items.iter().all(|i| matches!(i, Item::V(..)))
                {
                    return Err(self.bad_args(g));
                }
                let d = self.depth_of(&items)?;
                let mut vals = self.values(items)?;
                let none = |s: &mut Self| s.sink.none().map_err(sink_err);
                let (start, stop, step) = match vals.len() {
                    1 => {
                        let stop = vals.remove(0);
                        (none(self)?, stop, none(self)?)
                    }
                    2 => {
                        let stop = vals.remove(1);
                        let start = vals.remove(0);
                        (start, stop, none(self)?)
                    }
                    _ => {
                        let step = vals.remove(2);
                        let stop = vals.remove(1);
                        let start = vals.remove(0);
                        (start, stop, step)
                    }
                };
                let r = self.sink.slice(start, stop, step).map_err(sink_err)?;
                Ok(Item::V(r, d))
            }
            GKind::Range => {
                if !(1..=3).contains(&items.len())
                    || !items.iter().all(|it| {
                        matches!(it, Item::V(h, _) if matches!(self.sink.shape(h), Shape::Int(_)))
                    })
                {
                    return Err(self.bad_args(g));
                }
                self.charge(items.len() * 16 + 32)?;
                let vals = self.values(items)?;
                let r = self
                    .sink
                    .range(gref_of(&self.globals, g), vals)
                    .map_err(sink_err)?;
                Ok(Item::V(r, 1))
            }
            GKind::Reconstructor => {
                // copyreg._reconstructor(cls, base, state)
                let [cls, base, state] =
                    <[Item<S::Handle>; 3]>::try_from(items).map_err(|_| self.bad_args(g))?;
                let (Item::G(c), Item::G(b)) = (&cls, &base) else {
                    return Err(self.bad_args(g));
                };
                let (c, b) = (*c, *b);
                if !self.is_class(c) {
                    return Err(self.bad_args(g));
                }
                self.charge(64)?;
                let d = self.depth_of(std::slice::from_ref(&state))?;
                let state = self.value(state)?;
                let r = self
                    .sink
                    .reconstruct(gref_of(&self.globals, c), gref_of(&self.globals, b), state)
                    .map_err(sink_err)?;
                Ok(Item::V(r, d))
            }
            kind @ (GKind::NewObjFn | GKind::NewObjExFn) => {
                let ex = matches!(kind, GKind::NewObjExFn);
                let mut items = items;
                if items.is_empty() {
                    return Err(self.bad_args(g));
                }
                let cls = items.remove(0);
                if !ex {
                    self.new_object(cls, Construct::NewObj, items, None)
                } else {
                    let [args, kwargs] =
                        <[Item<S::Handle>; 2]>::try_from(items).map_err(|_| self.bad_args(g))?;
                    let args = self.tuple_items(&args, "__newobj_ex__ args")?;
                    self.new_object(cls, Construct::NewObjEx, args, Some(kwargs))
                }
            }
            GKind::Getattr => match items.as_slice() {
                [Item::G(c), name]
                    if (self.is_class(*c) || self.globals[*c as usize].consent.is_some())
                        && self.text_of(name).is_some_and(|s| s.as_str() == Some("__new__")) =>
                {
                    self.charge(32)?;
                    Ok(Item::NewOf(*c))
                }
                // getattr(Outer, 'Inner'): how protocols 0-3 name a nested class (and a bound
                // classmethod): the global `module.Outer.Inner`, which needs its own consent.
                [Item::G(c), name]
                    if self.is_class(*c)
                        && self
                            .text_of(name)
                            .is_some_and(|s| s.as_str().is_some_and(is_identifier)) =>
                {
                    let name = self.text_of(name).and_then(|s| s.as_str().map(str::to_owned));
                    let glob = &self.globals[*c as usize];
                    let (module, qual) = (glob.module.clone(), glob.name.clone());
                    let nested = format!("{qual}.{}", name.unwrap_or_default());
                    // (inert mode: the inert global `module.Outer.Inner`)
                    match self.find_class_as_is(&module, &nested, (&module, &nested)) {
                        Ok(n) => Ok(Item::G(n)),
                        // (an allowed getattr itself may still serve it)
                        Err(_) if self.globals[g as usize].consent.is_some() => Err(self
                            .err("builtins.getattr is only allowed as getattr(cls, '__new__') of an allowed class")
                            .into()),
                        Err(e) => Err(e),
                    }
                }
                _ => Err(self
                    .err("builtins.getattr is only allowed as getattr(cls, '__new__') of an allowed class")
                    .into()),
            },
            GKind::Partial => match items.as_slice() {
                [Item::NewOf(c)] => {
                    let c = *c;
                    self.charge(32)?;
                    let p = u32::try_from(self.partials.len())
                        .map_err(|_| self.err("too many objects"))?;
                    self.partials.push(PartialState {
                        cls: c,
                        built: None,
                    });
                    Ok(Item::Partial(p))
                }
                [_] => Err(self.bad_args(g)),
                _ => Err(self
                    .err("functools.partial is only allowed over cls.__new__ of an allowed class")
                    .into()),
            },
            GKind::Class(_) => self.new_object(Item::G(g), Construct::Reduce, items, None),
            GKind::Base if items.is_empty() && base_empty_name(&self.globals[g as usize].name) => {
                self.base_empty(g)
            }
            GKind::Constant(_) | GKind::Base if self.globals[g as usize].consent.is_some() => {
                self.consented_call(g, items)
            }
            GKind::Constant(_) | GKind::Base if self.opts.inert => self.inert_object(g, items),
            GKind::Constant(_) | GKind::Base => Err(self
                .err(format!(
                    "calling {} is forbidden: creating its objects is not in the registry (load with inert=True to inspect it)",
                    self.glob_name(g)
                ))
                .into()),
        }
    }

    /// `int()`, `float()`, `str()`, `tuple()`, `list()`, `dict()`: the empty value of a basic
    /// type named by a reconstructor base.
    fn base_empty(&mut self, g: u32) -> Res<Item<S::Handle>, S::Error> {
        let (r, d) = match self.globals[g as usize].name.as_str() {
            "int" => (self.sink.int(0), 0),
            "float" => (self.sink.float(0.0), 0),
            "str" => (self.sink.str(PyStr::from("")), 0),
            "tuple" => (self.sink.tuple(Vec::new()), 1),
            "list" => {
                self.charge(32)?;
                (self.sink.list(Vec::new()), 1)
            }
            "dict" => {
                self.charge(32)?;
                (self.sink.dict(Vec::new()), 1)
            }
            _ => return Err(self.err("internal error: no empty value").into()),
        };
        Ok(Item::V(r.map_err(sink_err)?, d))
    }

    fn new_object(
        &mut self,
        cls: Item<S::Handle>,
        construct: Construct,
        args: Vec<Item<S::Handle>>,
        kwargs: Option<Item<S::Handle>>,
    ) -> Res<Item<S::Handle>, S::Error> {
        self.new_object_with(cls, construct, false, args, kwargs)
    }

    /// [`Self::new_object`]; `inst`: INST / OBJ ([`Sink::instantiate`]).
    fn new_object_with(
        &mut self,
        cls: Item<S::Handle>,
        construct: Construct,
        inst: bool,
        args: Vec<Item<S::Handle>>,
        kwargs: Option<Item<S::Handle>>,
    ) -> Res<Item<S::Handle>, S::Error> {
        let Item::G(g) = cls else {
            return Err(self.err("class argument must be a global").into());
        };
        let no_kwargs = match &kwargs {
            None => true,
            Some(Item::V(h, _)) => self.sink.shape(h) == Shape::Dict(0),
            _ => false,
        };
        let glob = &self.globals[g as usize];
        if matches!(glob.kind, GKind::Base)
            && args.is_empty()
            && no_kwargs
            && base_empty_name(&glob.name)
        {
            // int.__new__(int) and friends: the empty value of a basic type
            return self.base_empty(g);
        }
        if !self.is_class(g) && !self.opts.inert && self.globals[g as usize].consent.is_none() {
            return Err(self
                .err(format!(
                    "creating {} objects this way is forbidden: not in the registry (load with inert=True to inspect it)",
                    self.glob_name(g)
                ))
                .into());
        }
        self.charge(args.len() * 16 + 32)?;
        let mut d = self.depth_of(&args)?;
        if let Some(k) = &kwargs {
            d = d.max(1 + self.item_depth(k));
            self.check_depth(d)?;
        }
        let vals = self.values(args)?;
        let kwargs = match kwargs {
            Some(k) => Some(self.value(k)?),
            None => None,
        };
        let r = if inst {
            self.sink.instantiate(gref_of(&self.globals, g), vals)
        } else {
            self.sink
                .object(gref_of(&self.globals, g), construct, vals, kwargs)
        }
        .map_err(sink_err)?;
        Ok(Item::V(r, d))
    }

    /// BUILD: the state goes to an object the sink made (or to a prepared functools.partial);
    /// a global, a marker, a loop-side tuple is refused here.
    fn build(&mut self, state: Item<S::Handle>) -> Res<(), S::Error> {
        let top = self.stack.len() - 1;
        match self.stack[top].clone() {
            Item::Partial(p) => self.build_partial(p, state),
            Item::V(target, td) => {
                let d = (1 + self.item_depth(&state)).max(td);
                self.check_depth(d)?;
                let state = self.value(state)?;
                if !self.sink.build(&target, state).map_err(sink_err)? {
                    return Err(self.err("BUILD target is not an object").into());
                }
                self.stack[top] = Item::V(target, d);
                Ok(())
            }
            _ => Err(self.err("BUILD target is not an object").into()),
        }
    }

    /// functools.partial state: (func, args, kwargs, __dict__) with func the same cls.__new__.
    fn build_partial(&mut self, p: u32, state: Item<S::Handle>) -> Res<(), S::Error> {
        let cls = self.partials[p as usize].cls;
        let bad =
            |s: &Self| -> Fail<S::Error> { s.err("unsupported functools.partial state").into() };
        let parts = self.tuple_items(&state, "functools.partial state")?;
        let is_none = |s: &Self, it: &Item<S::Handle>| matches!(it, Item::V(h, _) if s.sink.shape(h) == Shape::None);
        if parts.len() != 4 || !is_none(self, &parts[3]) {
            return Err(bad(self));
        }
        if !matches!(parts[0], Item::NewOf(c) if c == cls) {
            return Err(bad(self));
        }
        let args = self.tuple_items(&parts[1], "functools.partial args")?;
        let kwargs = if is_none(self, &parts[2]) {
            None
        } else {
            Some(parts[2].clone())
        };
        self.partials[p as usize].built = Some((args, kwargs));
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Fill {
    Append,
    SetItems,
    AddItems,
}

impl Fill {
    fn refused(self) -> &'static str {
        match self {
            Fill::Append => "APPEND/APPENDS target is not a list",
            Fill::SetItems => "SETITEM/SETITEMS target is not a dict",
            Fill::AddItems => "ADDITEMS target is not a set",
        }
    }
}

fn gref_of<G>(globals: &[Glob<G>], g: u32) -> GlobalRef<'_, G> {
    let glob = &globals[g as usize];
    GlobalRef {
        id: g,
        module: &glob.module,
        name: &glob.name,
        allowed: match &glob.kind {
            GKind::Class(a) => a.as_ref(),
            _ => glob.consent.as_ref(),
        },
    }
}

/// A Python identifier (an attribute name `getattr(Outer, name)` may join to a qualname).
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && s != "__new__"
}

fn base_empty_name(name: &str) -> bool {
    matches!(name, "int" | "float" | "str" | "tuple" | "list" | "dict")
}

/// `str.encode(enc)` for the encodings CPython writes (`_codecs.encode(s, 'latin1')`,
/// `bytearray(s, 'latin-1')`).
fn encode_str(s: &PyStr, enc: &PyStr) -> Option<Vec<u8>> {
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

/// A refusal of an argument shape (not a limit or malformed data): what inert mode keeps as
/// an inert call instead.
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
