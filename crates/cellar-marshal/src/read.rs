//! The marshal decoder: ONE opcode loop for every consumer, generic over the input ([`Input`])
//! and over what is built ([`Sink`]).
//!
//! The Rust [`Value`](cellar_value::Value) is one sink (`crate::value_sink`); the Python package
//! implements another that builds Python objects directly. Everything that decides whether
//! bytes are valid marshal data lives here, once: type codes, sizes, the reference table and
//! what a reference may point at, the nesting limit, the pre-allocation bound, code-object field
//! validation, error kinds and messages.
//!
//! It never recurses: open containers live on an explicit stack, so the nesting limit (2000, as
//! CPython's `MAX_MARSHAL_STACK_DEPTH`) is checked, not discovered by a stack overflow. Memory is
//! bounded by the input: a claimed count or length is never used to allocate more than the bytes
//! that remain could fill ([`Sink::seq_open`] gets a `capacity` kept below the bytes left over
//! ALL open containers), and a value built through back-references can be no deeper than the
//! limit either (so dropping, hashing or printing it never recurses without bound).
//!
//! References (see docs/marshal.md, "The reference table"): a reference to a tuple that is still
//! being read is always refused (a tuple cannot contain itself: hashing it would recurse
//! forever); a reference to an open list, dict or set is offered to the sink
//! ([`Sink::seq_ref`], ...), which may refuse it (the `Value` tree cannot hold a cycle) or
//! return the object (Python objects can); frozenset, code and slice slots are reserved and a
//! reference before they are complete is "invalid reference", as in CPython.

use crate::error::{DecodeError, ErrorKind};
use crate::types::*;

/// Options for [`crate::loads_with`] and [`decode`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Accept code objects (`c`); when false they fail with ValueError as in CPython 3.13.
    pub allow_code: bool,
    /// Maximum nesting (CPython: 2000). Values nested deeper, in the stream or through
    /// back-references, fail with "recursion limit exceeded".
    pub max_depth: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            allow_code: true,
            max_depth: MAX_DEPTH,
        }
    }
}

/// The input failed for a reason of its own (an I/O error, a Python exception raised by
/// `file.readinto`); the input has recorded the details, the sink's error type carries them on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputFailed;

/// Where the decoder's bytes come from: a slice ([`SliceInput`]) or a stream.
pub trait Input {
    /// The next byte; `Ok(None)` at the end of the input.
    fn byte(&mut self) -> Result<Option<u8>, InputFailed>;
    /// Exactly `n` bytes; `Ok(None)` if fewer remain (the input may then be anywhere).
    fn take(&mut self, n: usize) -> Result<Option<&[u8]>, InputFailed>;
    /// How many bytes remain, when known (in memory); `None` for a stream, whose claims are
    /// then never trusted for pre-allocation.
    fn remaining(&self) -> Option<usize>;
    /// Bytes consumed so far (for error offsets).
    fn position(&self) -> usize;
}

/// An in-memory input.
#[derive(Debug, Clone)]
pub struct SliceInput<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> SliceInput<'a> {
    /// Reads `data` from its start.
    pub fn new(data: &'a [u8]) -> SliceInput<'a> {
        SliceInput { data, pos: 0 }
    }
}

impl Input for SliceInput<'_> {
    #[inline(always)]
    fn byte(&mut self) -> Result<Option<u8>, InputFailed> {
        match self.data.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(Some(b))
            }
            None => Ok(None),
        }
    }
    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<Option<&[u8]>, InputFailed> {
        let end = self.pos.saturating_add(n);
        match self.data.get(self.pos..end) {
            Some(s) => {
                self.pos = end;
                Ok(Some(s))
            }
            None => Ok(None),
        }
    }
    #[inline(always)]
    fn remaining(&self) -> Option<usize> {
        Some(self.data.len() - self.pos)
    }
    #[inline(always)]
    fn position(&self) -> usize {
        self.pos
    }
}

/// The shape of a finished object, as far as the decoder needs it to validate code objects
/// (CPython's `_PyCode_Validate` rules), whatever the sink builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A `bytes` object of this length (a marshal size: below 2^31).
    Bytes(u32),
    /// A `str`.
    Str,
    /// A tuple of this length; `all_str` when every item is a `str`.
    Tuple {
        /// Number of items (a marshal size: below 2^31).
        len: u32,
        /// Every item is a `str`.
        all_str: bool,
    },
    /// Anything else.
    Other,
}

/// The 3.11+ code object fields in stream order, validated by the decoder before the sink sees
/// them: `code` is bytes of even length, `consts` a tuple, `names` and `localsplusnames` tuples
/// of str, `localspluskinds` bytes as long as `localsplusnames`, `filename`/`name`/`qualname`
/// str, `linetable`/`exceptiontable` bytes, and the argument counts consistent.
#[derive(Debug)]
pub struct CodeFields<V> {
    /// `co_argcount`.
    pub argcount: i32,
    /// `co_posonlyargcount`.
    pub posonlyargcount: i32,
    /// `co_kwonlyargcount`.
    pub kwonlyargcount: i32,
    /// `co_stacksize`.
    pub stacksize: i32,
    /// `co_flags`.
    pub flags: i32,
    /// `co_firstlineno`.
    pub firstlineno: i32,
    /// code, consts, names, localsplusnames, localspluskinds, filename, name, qualname,
    /// linetable, exceptiontable.
    pub objects: [V; 10],
}

/// What the decoder builds: receives scalars, opens and closes containers, and resolves
/// back-references. Errors the sink raises itself (an unhashable key, an allocation failure,
/// invalid UTF-8) travel as `Self::Error`; the decoder's own become `Self::Error` through `From`.
pub trait Sink {
    /// A finished object.
    type Value;
    /// A tuple or list being filled.
    type Seq;
    /// A dict being filled.
    type Dict;
    /// A set or frozenset being filled.
    type Set;
    /// The sink's error type.
    type Error: From<DecodeError> + From<InputFailed>;
    /// Whether this sink can hold a value nested deeper than `max_depth` when the depth comes
    /// from back-references (a shallow stream can build a deep value by referencing the
    /// previous container from the next one). `false` (the `Value` tree, whose drop, repr and
    /// hash recurse): such values fail with "recursion limit exceeded". `true` (Python
    /// objects, whose dealloc, repr and == guard their own recursion): allowed, except where
    /// the value would be hashed (a dict key, a set or frozenset item) or walked by the code
    /// constructor (a code-object field), which fail in every sink.
    const DEEP_VALUES: bool = false;

    /// `None`.
    fn none(&mut self) -> Result<Self::Value, Self::Error>;
    /// `True` / `False`.
    fn bool(&mut self, v: bool) -> Result<Self::Value, Self::Error>;
    /// The class `StopIteration`.
    fn stop_iteration(&mut self) -> Result<Self::Value, Self::Error>;
    /// `Ellipsis`.
    fn ellipsis(&mut self) -> Result<Self::Value, Self::Error>;
    /// An int that fits in 64 bits.
    fn int(&mut self, v: i64) -> Result<Self::Value, Self::Error>;
    /// A bigger int: its sign and its magnitude as little-endian bytes (no trailing zero byte).
    fn big_int(&mut self, negative: bool, magnitude_le: &[u8]) -> Result<Self::Value, Self::Error>;
    /// A float.
    fn float(&mut self, v: f64) -> Result<Self::Value, Self::Error>;
    /// A complex.
    fn complex(&mut self, re: f64, im: f64) -> Result<Self::Value, Self::Error>;
    /// A bytes object.
    fn bytes(&mut self, b: &[u8]) -> Result<Self::Value, Self::Error>;
    /// A `u`/`t` str: UTF-8 with lone surrogates allowed (surrogatepass). The sink validates it
    /// and fails with [`ErrorKind::UnicodeDecode`] (or its own equivalent) when it is not;
    /// `at` is the offset of the first payload byte.
    fn str_utf8(
        &mut self,
        raw: &[u8],
        interned: bool,
        at: usize,
    ) -> Result<Self::Value, Self::Error>;
    /// An `a`/`A`/`z`/`Z` str: Latin-1, never invalid (CPython does not check it is ASCII).
    fn str_latin1(&mut self, raw: &[u8], interned: bool) -> Result<Self::Value, Self::Error>;
    /// Another handle to a finished object (a back-reference to it).
    fn share(&mut self, v: &Self::Value) -> Self::Value;

    /// Opens a tuple (`list == false`) or list of `len` items. `capacity <= len` is how many
    /// item slots may be allocated now (bounded by the input); more must grow as items arrive.
    fn seq_open(
        &mut self,
        list: bool,
        len: usize,
        capacity: usize,
    ) -> Result<Self::Seq, Self::Error>;
    /// Appends the next item.
    fn seq_push(&mut self, seq: &mut Self::Seq, item: Self::Value) -> Result<(), Self::Error>;
    /// Closes a sequence once its `len` items were pushed.
    fn seq_close(&mut self, seq: Self::Seq) -> Result<Self::Value, Self::Error>;
    /// A reference to a LIST that is still being filled: the list itself (a cycle), or `None`
    /// if this sink cannot represent it (the decoder then fails with "recursive reference").
    fn seq_ref(&mut self, seq: &mut Self::Seq) -> Option<Self::Value>;

    /// Opens a dict.
    fn dict_open(&mut self) -> Result<Self::Dict, Self::Error>;
    /// `dict[key] = value`; `at` is the offset of the value for error reports.
    fn dict_set(
        &mut self,
        d: &mut Self::Dict,
        key: Self::Value,
        value: Self::Value,
        at: usize,
    ) -> Result<(), Self::Error>;
    /// Closes a dict.
    fn dict_close(&mut self, d: Self::Dict) -> Result<Self::Value, Self::Error>;
    /// A reference to a dict still being filled (see [`Sink::seq_ref`]).
    fn dict_ref(&mut self, d: &mut Self::Dict) -> Option<Self::Value>;

    /// Opens a set or frozenset of `len` items.
    fn set_open(&mut self, frozen: bool, len: usize) -> Result<Self::Set, Self::Error>;
    /// Adds an item; `at` is its offset for error reports.
    fn set_add(
        &mut self,
        s: &mut Self::Set,
        item: Self::Value,
        at: usize,
    ) -> Result<(), Self::Error>;
    /// Closes a set or frozenset.
    fn set_close(&mut self, s: Self::Set) -> Result<Self::Value, Self::Error>;
    /// A reference to a (mutable) set still being filled (see [`Sink::seq_ref`]).
    fn set_ref(&mut self, s: &mut Self::Set) -> Option<Self::Value>;

    /// A slice (start, stop, step).
    fn slice(
        &mut self,
        start: Self::Value,
        stop: Self::Value,
        step: Self::Value,
    ) -> Result<Self::Value, Self::Error>;
    /// A code object from validated fields; `at` is the offset of its type code.
    fn code(
        &mut self,
        fields: CodeFields<Self::Value>,
        at: usize,
    ) -> Result<Self::Value, Self::Error>;
}

/// One slot of the back-reference table.
enum Slot<V> {
    /// A tuple still being read: a reference to it is refused.
    OpenTuple,
    /// A list, dict or set still being read, at this index of the frame stack.
    OpenMutable(usize),
    /// A frozenset, code or slice still being read: "invalid reference", as in CPython.
    Reserved,
    /// A finished object, its nesting height and shape.
    Done(V, u32, Shape),
}

/// An open tuple or list.
struct SeqFrame<S: Sink> {
    seq: S::Seq,
    list: bool,
    left: usize,
    len: usize,
    all_str: bool,
    slot: Option<usize>,
    height: u32,
    reserved: usize,
}

/// An open dict, with the key read before its value.
struct DictFrame<S: Sink> {
    dict: S::Dict,
    key: Option<S::Value>,
    slot: Option<usize>,
    height: u32,
}

/// A tuple, list or dict: read with its frame on the stack, or without one while its items
/// are leaves (see `Decoder::inline`); the same methods either way.
trait InlineFrame<S: Sink>: Sized {
    /// Takes one item; true when the container is complete (a dict: at the NULL that ends it).
    fn accept(
        &mut self,
        sink: &mut S,
        max_depth: usize,
        item: Item<S::Value>,
        at: usize,
    ) -> Result<bool, S::Error>;
    /// The frame it becomes on the stack.
    fn into_frame(self) -> Frame<S>;
    /// Closes the complete container.
    fn close<I: Input>(
        self,
        d: &mut Decoder<'_, I, S>,
        at: usize,
    ) -> Result<Item<S::Value>, S::Error>;
}

impl<S: Sink> InlineFrame<S> for SeqFrame<S> {
    #[inline(always)]
    fn accept(
        &mut self,
        sink: &mut S,
        _: usize,
        item: Item<S::Value>,
        at: usize,
    ) -> Result<bool, S::Error> {
        let Some(v) = item.value else {
            let what = if self.list { "list" } else { "tuple" };
            return Err(type_err(&format!("NULL object in marshal data for {what}"), at).into());
        };
        sink.seq_push(&mut self.seq, v)?;
        self.all_str &= item.shape == Shape::Str;
        self.height = self.height.max(item.height.saturating_add(1));
        self.left -= 1;
        Ok(self.left == 0)
    }
    #[inline(always)]
    fn into_frame(self) -> Frame<S> {
        Frame::Seq(self)
    }
    #[inline(always)]
    fn close<I: Input>(
        self,
        d: &mut Decoder<'_, I, S>,
        at: usize,
    ) -> Result<Item<S::Value>, S::Error> {
        d.reserved -= self.reserved;
        let v = d.sink.seq_close(self.seq)?;
        let shape = if self.list {
            Shape::Other
        } else {
            Shape::Tuple {
                len: self.len as u32,
                all_str: self.all_str,
            }
        };
        d.done(v, self.slot, self.height, shape, at)
    }
}

impl<S: Sink> InlineFrame<S> for DictFrame<S> {
    #[inline(always)]
    fn accept(
        &mut self,
        sink: &mut S,
        max_depth: usize,
        item: Item<S::Value>,
        at: usize,
    ) -> Result<bool, S::Error> {
        let Some(v) = item.value else {
            // NULL ends the dict, whether in key or value position (a pending key is dropped).
            self.key = None;
            return Ok(true);
        };
        self.height = self.height.max(item.height.saturating_add(1));
        match self.key.take() {
            None => {
                check_hashed(item.height, max_depth, at)?;
                self.key = Some(v)
            }
            Some(k) => sink.dict_set(&mut self.dict, k, v, at)?,
        }
        Ok(false)
    }
    #[inline(always)]
    fn into_frame(self) -> Frame<S> {
        Frame::Dict(self)
    }
    #[inline(always)]
    fn close<I: Input>(
        self,
        d: &mut Decoder<'_, I, S>,
        at: usize,
    ) -> Result<Item<S::Value>, S::Error> {
        let v = d.sink.dict_close(self.dict)?;
        d.done(v, self.slot, self.height.max(1), Shape::Other, at)
    }
}

enum Frame<S: Sink> {
    Seq(SeqFrame<S>),
    Set {
        set: S::Set,
        left: usize,
        slot: Option<usize>,
        height: u32,
    },
    Dict(DictFrame<S>),
    Code {
        ints: [i32; 6],
        objs: Vec<(S::Value, Shape)>,
        slot: Option<usize>,
        height: u32,
        at: usize,
    },
    Slice {
        parts: Vec<S::Value>,
        slot: Option<usize>,
        height: u32,
    },
}

/// One finished object on its way to the open container: `None` is the NULL marker `0`.
struct Item<V> {
    value: Option<V>,
    height: u32,
    shape: Shape,
}

struct Decoder<'o, I, S: Sink> {
    input: &'o mut I,
    sink: &'o mut S,
    refs: Vec<Slot<S::Value>>,
    stack: Vec<Frame<S>>,
    opts: &'o LoadOptions,
    /// Item slots pre-allocated by the open sequences; kept below the bytes that remain, so
    /// nested claims cannot add up to more memory than the input could fill.
    reserved: usize,
    /// Field buffers of finished code objects, reused by the next ones (no allocation per
    /// code object); at most one per code object open at once.
    code_bufs: Vec<Vec<(S::Value, Shape)>>,
}

/// Decodes one object from `input` into `sink`. On success the input is positioned just after
/// the object (trailing bytes are the caller's business, as in CPython).
pub fn decode<I: Input, S: Sink>(
    input: &mut I,
    sink: &mut S,
    opts: &LoadOptions,
) -> Result<S::Value, S::Error> {
    let mut d = Decoder {
        input,
        sink,
        refs: Vec::new(),
        stack: Vec::new(),
        opts,
        reserved: 0,
        code_bufs: Vec::new(),
    };
    d.run()
}

/// Pushes `x`, the first allocation making room for `first` items (growing from 4 took two
/// reallocations per small load with a few interned strs, each dearer than the malloc).
#[inline(always)]
fn push_from<T>(v: &mut Vec<T>, first: usize, x: T) {
    if v.len() == v.capacity() {
        v.reserve(v.len().max(first));
    }
    v.push(x);
}

#[cold]
fn type_err(msg: &str, at: usize) -> DecodeError {
    DecodeError::new(ErrorKind::Type, msg, at)
}
#[cold]
fn value_err(msg: impl Into<String>, at: usize) -> DecodeError {
    DecodeError::new(ErrorKind::Value, msg, at)
}
#[cold]
fn too_short(at: usize) -> DecodeError {
    DecodeError::new(ErrorKind::Eof, "marshal data too short", at)
}
#[cold]
fn eof_object(at: usize) -> DecodeError {
    DecodeError::new(ErrorKind::Eof, "EOF read where object expected", at)
}

/// CPython's message for a reference to a tuple that is still being read.
pub(crate) const MSG_SELF_TUPLE: &str =
    "bad marshal data (recursive reference: a tuple cannot contain itself)";
/// A value nested deeper than the limit through back-references, where it is not allowed.
pub(crate) const MSG_DEEP: &str =
    "recursion limit exceeded (value nested too deeply through back-references)";

/// Dict keys, set items and code fields are hashed or walked recursively by the builder: they
/// must be no deeper than the limit, whatever the sink.
#[inline(always)]
fn check_hashed(height: u32, max_depth: usize, at: usize) -> Result<(), DecodeError> {
    if height as usize > max_depth {
        return Err(value_err(MSG_DEEP, at));
    }
    Ok(())
}

/// The message for a cycle through a list, dict or set when the sink cannot hold one.
pub(crate) const MSG_CYCLE: &str = "bad marshal data (recursive reference: a container that \
                                    contains itself cannot be represented as a cellar Value)";

impl<I: Input, S: Sink> Decoder<'_, I, S> {
    #[inline(always)]
    fn byte(&mut self) -> Result<u8, S::Error> {
        let at = self.input.position();
        match self.input.byte()? {
            Some(b) => Ok(b),
            None => Err(eof_object(at).into()),
        }
    }

    #[inline(always)]
    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], S::Error> {
        let at = self.input.position();
        match self.input.take(N)? {
            Some(s) => {
                let mut a = [0u8; N];
                a.copy_from_slice(s);
                Ok(a)
            }
            None => Err(too_short(at).into()),
        }
    }

    #[inline(always)]
    fn i32(&mut self) -> Result<i32, S::Error> {
        Ok(i32::from_le_bytes(self.take_array::<4>()?))
    }

    #[inline(always)]
    fn f64(&mut self) -> Result<f64, S::Error> {
        Ok(f64::from_le_bytes(self.take_array::<8>()?))
    }

    /// A 32-bit size: negative is "size out of range" for `what`.
    #[inline(always)]
    fn size(&mut self, what: &str) -> Result<usize, S::Error> {
        let at = self.input.position();
        let n = self.i32()?;
        if n < 0 {
            return Err(
                value_err(format!("bad marshal data ({what} size out of range)"), at).into(),
            );
        }
        Ok(n as usize)
    }

    /// A text float (versions 0/1): 1-byte length, then ASCII parsed as CPython does (it
    /// copies into a NUL-terminated buffer: text after an embedded NUL is ignored).
    fn text_float(&mut self) -> Result<f64, S::Error> {
        let n = self.byte()? as usize;
        let at = self.input.position();
        let Some(s) = self.input.take(n)? else {
            return Err(too_short(at).into());
        };
        let s = match s.iter().position(|&b| b == 0) {
            Some(i) => &s[..i],
            None => s,
        };
        let text = std::str::from_utf8(s).ok();
        match text.and_then(cellar_value::parse_float_text) {
            Some(f) => Ok(f),
            // CPython: PyOS_string_to_double's "could not convert string to float: '%.200s'".
            None => {
                let text = String::from_utf8_lossy(s);
                let text: String = text.chars().take(200).collect();
                Err(value_err(format!("could not convert string to float: '{text}'"), at).into())
            }
        }
    }

    /// Appends a reference slot; the table starts at 16 slots (see [`push_from`]).
    #[inline(always)]
    fn push_ref(&mut self, slot: Slot<S::Value>) {
        push_from(&mut self.refs, 16, slot);
    }

    /// Opens a container frame; the stack starts with room for 8 levels.
    #[inline(always)]
    fn push_frame(&mut self, frame: Frame<S>) {
        push_from(&mut self.stack, 8, frame);
    }

    #[inline(always)]
    fn reserve_slot(&mut self, flag: bool, slot: Slot<S::Value>) -> Option<usize> {
        if !flag {
            return None;
        }
        self.push_ref(slot);
        Some(self.refs.len() - 1)
    }

    #[inline(always)]
    fn fill(&mut self, slot: Option<usize>, v: &S::Value, h: u32, shape: Shape) {
        if let Some(i) = slot {
            let shared = self.sink.share(v);
            if let Some(s) = self.refs.get_mut(i) {
                *s = Slot::Done(shared, h, shape);
            }
        }
    }

    #[inline(always)]
    fn leaf(&mut self, flag: bool, v: S::Value, shape: Shape) -> Item<S::Value> {
        if flag {
            let shared = self.sink.share(&v);
            self.push_ref(Slot::Done(shared, 1, shape));
        }
        Item {
            value: Some(v),
            height: 1,
            shape,
        }
    }

    fn run(&mut self) -> Result<S::Value, S::Error> {
        loop {
            let at = self.input.position();
            if self.stack.len() + 1 > self.opts.max_depth {
                return Err(value_err("recursion limit exceeded", at).into());
            }
            let code = self.byte()?;
            let Some(mut item) = self.head::<1>(code, at)? else {
                continue;
            };
            // Deliver the finished object to the open containers, closing those it completes.
            loop {
                let Some(top) = self.stack.last_mut() else {
                    return match item.value {
                        Some(v) => Ok(v),
                        None => Err(type_err("NULL object in marshal data for object", at).into()),
                    };
                };
                if !Self::accept(self.sink, self.input, self.opts.max_depth, top, item, at)? {
                    break;
                }
                let Some(frame) = self.stack.pop() else { break };
                item = self.finish(frame, at)?;
            }
        }
    }

    /// Hands `item` to the innermost open container; true when that container is complete.
    #[inline(always)]
    fn accept(
        sink: &mut S,
        input: &mut I,
        max_depth: usize,
        top: &mut Frame<S>,
        item: Item<S::Value>,
        at: usize,
    ) -> Result<bool, S::Error> {
        match top {
            Frame::Seq(f) => f.accept(sink, max_depth, item, at),
            Frame::Set {
                set, left, height, ..
            } => {
                let Some(v) = item.value else {
                    return Err(type_err("NULL object in marshal data for set", at).into());
                };
                check_hashed(item.height, max_depth, at)?;
                sink.set_add(set, v, at)?;
                *height = (*height).max(item.height.saturating_add(1));
                *left -= 1;
                Ok(*left == 0)
            }
            Frame::Dict(f) => f.accept(sink, max_depth, item, at),
            Frame::Code {
                ints, objs, height, ..
            } => {
                let Some(v) = item.value else {
                    return Err(type_err("NULL object in marshal data for object", at).into());
                };
                check_hashed(item.height, max_depth, at)?;
                objs.push((v, item.shape));
                *height = (*height).max(item.height.saturating_add(1));
                if objs.len() == 8 {
                    // co_firstlineno sits between co_qualname and co_linetable.
                    let p = input.position();
                    match input.take(4)? {
                        Some(b) => ints[5] = i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                        None => return Err(too_short(p).into()),
                    }
                }
                Ok(objs.len() == 10)
            }
            Frame::Slice { parts, height, .. } => {
                let Some(v) = item.value else {
                    return Err(type_err("NULL object in marshal data for object", at).into());
                };
                parts.push(v);
                *height = (*height).max(item.height.saturating_add(1));
                Ok(parts.len() == 3)
            }
        }
    }

    /// A closed container: checked against the depth limit, recorded in its reference slot.
    #[inline(always)]
    fn done(
        &mut self,
        v: S::Value,
        slot: Option<usize>,
        h: u32,
        shape: Shape,
        at: usize,
    ) -> Result<Item<S::Value>, S::Error> {
        if !S::DEEP_VALUES && h as usize > self.opts.max_depth {
            return Err(value_err(MSG_DEEP, at).into());
        }
        self.fill(slot, &v, h, shape);
        Ok(Item {
            value: Some(v),
            height: h,
            shape,
        })
    }

    fn finish(&mut self, frame: Frame<S>, at: usize) -> Result<Item<S::Value>, S::Error> {
        let (v, slot, h, shape) = match frame {
            Frame::Seq(f) => return f.close(self, at),
            Frame::Dict(f) => return f.close(self, at),
            Frame::Set {
                set, slot, height, ..
            } => (self.sink.set_close(set)?, slot, height, Shape::Other),
            Frame::Code {
                ints,
                mut objs,
                slot,
                height,
                at: code_at,
            } => {
                let fields = validate_code(ints, &mut objs);
                objs.clear();
                self.code_bufs.push(objs);
                let fields = fields.map_err(|m| value_err(m, code_at))?;
                (self.sink.code(fields, code_at)?, slot, height, Shape::Other)
            }
            Frame::Slice {
                parts,
                slot,
                height,
            } => {
                let mut it = parts.into_iter();
                let (Some(a), Some(b), Some(c)) = (it.next(), it.next(), it.next()) else {
                    return Err(value_err("bad marshal data (slice)", at).into());
                };
                (self.sink.slice(a, b, c)?, slot, height, Shape::Other)
            }
        };
        self.done(v, slot, h, shape, at)
    }

    /// Handles the type code `code` (read at `at`): a whole object is returned; a container is
    /// opened, its frame pushed (`None` returned). With `INLINE` above 0, a dict, tuple or list
    /// is first read without a frame while its items are leaves (see [`Self::inline`]): 1 from
    /// the main loop, 2 for an item of a container that was being read that way (whose own
    /// items then get frames: the native recursion stops there).
    #[inline(always)]
    fn head<const INLINE: u8>(
        &mut self,
        code: u8,
        at: usize,
    ) -> Result<Option<Item<S::Value>>, S::Error> {
        let flag = code & FLAG_REF != 0;
        let t = code & !FLAG_REF;
        match t {
            TYPE_SMALL_TUPLE | TYPE_TUPLE | TYPE_LIST => {
                let n = match t {
                    TYPE_SMALL_TUPLE => self.byte()? as usize,
                    TYPE_TUPLE => self.size("tuple")?,
                    _ => self.size("list")?,
                };
                let list = t == TYPE_LIST;
                if n == 0 {
                    let seq = self.sink.seq_open(list, 0, 0)?;
                    let v = self.sink.seq_close(seq)?;
                    let shape = if list {
                        Shape::Other
                    } else {
                        Shape::Tuple {
                            len: 0,
                            all_str: true,
                        }
                    };
                    return Ok(Some(self.leaf(flag, v, shape)));
                }
                // Each item takes at least one byte: pre-allocation stays within what the input
                // could fill. A claim beyond the bytes left is NOT refused up front: the items
                // are read until the data runs out (EOFError) or fails otherwise first, as in
                // CPython, whatever the input (slice or stream).
                let avail = match self.input.remaining() {
                    Some(rem) => rem.saturating_sub(self.reserved),
                    None => STREAM_PREALLOC_MAX.saturating_sub(self.reserved),
                };
                let capacity = n.min(avail);
                self.reserved += capacity;
                let slot = if list {
                    self.reserve_slot(flag, Slot::OpenMutable(self.stack.len()))
                } else {
                    self.reserve_slot(flag, Slot::OpenTuple)
                };
                let seq = match self.sink.seq_open(list, n, capacity) {
                    Ok(s) => s,
                    Err(e) => {
                        self.reserved -= capacity;
                        return Err(e);
                    }
                };
                let frame = SeqFrame {
                    seq,
                    list,
                    left: n,
                    len: n,
                    all_str: true,
                    slot,
                    height: 1,
                    reserved: capacity,
                };
                if INLINE > 0 {
                    return self.inline::<_, INLINE>(frame);
                }
                self.push_frame(Frame::Seq(frame));
                Ok(None)
            }
            TYPE_DICT => {
                let slot = self.reserve_slot(flag, Slot::OpenMutable(self.stack.len()));
                let dict = self.sink.dict_open()?;
                let frame = DictFrame {
                    dict,
                    key: None,
                    slot,
                    height: 1,
                };
                if INLINE > 0 {
                    return self.inline::<_, INLINE>(frame);
                }
                self.push_frame(Frame::Dict(frame));
                Ok(None)
            }
            TYPE_SET | TYPE_FROZENSET => {
                let n = self.size("set")?;
                let frozen = t == TYPE_FROZENSET;
                if n == 0 {
                    let s = self.sink.set_open(frozen, 0)?;
                    let v = self.sink.set_close(s)?;
                    return Ok(Some(self.leaf(flag, v, Shape::Other)));
                }
                let slot = if frozen {
                    self.reserve_slot(flag, Slot::Reserved)
                } else {
                    self.reserve_slot(flag, Slot::OpenMutable(self.stack.len()))
                };
                let set = self.sink.set_open(frozen, n)?;
                self.push_frame(Frame::Set {
                    set,
                    left: n,
                    slot,
                    height: 1,
                });
                Ok(None)
            }
            TYPE_CODE => {
                if !self.opts.allow_code {
                    return Err(value_err("unmarshalling code objects is disallowed", at).into());
                }
                let slot = self.reserve_slot(flag, Slot::Reserved);
                let mut ints = [0i32; 6];
                for x in ints.iter_mut().take(5) {
                    *x = self.i32()?;
                }
                let objs = self
                    .code_bufs
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(10));
                self.push_frame(Frame::Code {
                    ints,
                    objs,
                    slot,
                    height: 1,
                    at,
                });
                Ok(None)
            }
            TYPE_SLICE => {
                let slot = self.reserve_slot(flag, Slot::Reserved);
                self.push_frame(Frame::Slice {
                    parts: Vec::with_capacity(3),
                    slot,
                    height: 1,
                });
                Ok(None)
            }
            _ => self.leaf_item(code, at).map(Some),
        }
    }

    /// Whether `t` (a type code without its flag) opens a container that may take a frame.
    #[inline(always)]
    fn opens_frame(t: u8) -> bool {
        matches!(
            t,
            TYPE_SMALL_TUPLE
                | TYPE_TUPLE
                | TYPE_LIST
                | TYPE_DICT
                | TYPE_SET
                | TYPE_FROZENSET
                | TYPE_CODE
                | TYPE_SLICE
        )
    }

    /// Reads the items of the container `f` opens without pushing its frame while they are
    /// leaves (scalars, strs, bytes, references to finished objects): most dicts and many
    /// tuples hold nothing else, and a frame's push and pop cost more than their items. The
    /// first item that is not a leaf pushes the frame, and the main loop takes over from there
    /// exactly as if it had been pushed at the start: the stack index a reference slot
    /// recorded for the container is the one the frame gets, and every item goes through the
    /// same `accept` and close, under the same depth check. `LEVEL` is the `INLINE` of the
    /// [`Self::head`] that opened it.
    #[inline(never)]
    fn inline<F: InlineFrame<S>, const LEVEL: u8>(
        &mut self,
        mut f: F,
    ) -> Result<Option<Item<S::Value>>, S::Error> {
        loop {
            let at = self.input.position();
            // The container counts as one level, as its frame would.
            if self.stack.len() + 2 > self.opts.max_depth {
                return Err(value_err("recursion limit exceeded", at).into());
            }
            let code = self.byte()?;
            let t = code & !FLAG_REF;
            let item = if t == TYPE_REF {
                let n = self.i32()?;
                let done = matches!(
                    usize::try_from(n).ok().and_then(|i| self.refs.get(i)),
                    Some(Slot::Done(..))
                );
                if !done {
                    // An open container (possibly this one), or an error: with the frame in
                    // place, as the main loop would see it.
                    self.push_frame(f.into_frame());
                    return self.reference(n, at).map(Some);
                }
                self.reference(n, at)?
            } else if Self::opens_frame(t) {
                self.push_frame(f.into_frame());
                // The item itself may be read inline, one level down (a small tuple in a dict).
                return if LEVEL == 1 {
                    self.head::<2>(code, at)
                } else {
                    self.head::<0>(code, at)
                };
            } else {
                self.leaf_item(code, at)?
            };
            if f.accept(self.sink, self.opts.max_depth, item, at)? {
                return f.close(self, at).map(Some);
            }
        }
    }

    /// A back-reference to slot `n`.
    #[inline(always)]
    fn reference(&mut self, n: i32, at: usize) -> Result<Item<S::Value>, S::Error> {
        let idx = usize::try_from(n).ok();
        match idx.and_then(|i| self.refs.get(i)) {
            Some(Slot::Done(v, h, shape)) => {
                let (h, shape) = (*h, *shape);
                let v = self.sink.share(v);
                Ok(Item {
                    value: Some(v),
                    height: h,
                    shape,
                })
            }
            Some(Slot::OpenMutable(fi)) => {
                let fi = *fi;
                let v = match self.stack.get_mut(fi) {
                    Some(Frame::Seq(f)) => self.sink.seq_ref(&mut f.seq),
                    Some(Frame::Dict(f)) => self.sink.dict_ref(&mut f.dict),
                    Some(Frame::Set { set, .. }) => self.sink.set_ref(set),
                    _ => None,
                };
                match v {
                    // The open container's height is not known yet; a cycle through a mutable
                    // container is never hashed (lists, dicts and sets are unhashable) and
                    // Python's repr/== guard their own recursion.
                    Some(v) => Ok(Item {
                        value: Some(v),
                        height: 1,
                        shape: Shape::Other,
                    }),
                    None => Err(value_err(MSG_CYCLE, at).into()),
                }
            }
            Some(Slot::OpenTuple) => Err(value_err(MSG_SELF_TUPLE, at).into()),
            _ => Err(value_err("bad marshal data (invalid reference)", at).into()),
        }
    }

    /// An object that opens no frame: a scalar, str, bytes, a reference or NULL.
    #[inline(always)]
    fn leaf_item(&mut self, code: u8, at: usize) -> Result<Item<S::Value>, S::Error> {
        let flag = code & FLAG_REF != 0;
        let t = code & !FLAG_REF;
        let single = |v: S::Value| {
            Ok(Item {
                value: Some(v),
                height: 1,
                shape: Shape::Other,
            })
        };
        match t {
            TYPE_SHORT_ASCII | TYPE_SHORT_ASCII_INTERNED => {
                let n = self.byte()? as usize;
                let p = self.input.position();
                let Some(raw) = self.input.take(n)? else {
                    return Err(too_short(p).into());
                };
                let v = self.sink.str_latin1(raw, t == TYPE_SHORT_ASCII_INTERNED)?;
                Ok(self.leaf(flag, v, Shape::Str))
            }
            TYPE_REF => {
                let n = self.i32()?;
                self.reference(n, at)
            }
            TYPE_INT => {
                let v = self.i32()?;
                let v = self.sink.int(v as i64)?;
                Ok(self.leaf(flag, v, Shape::Other))
            }
            TYPE_NULL => Ok(Item {
                value: None,
                height: 0,
                shape: Shape::Other,
            }),
            TYPE_NONE => single(self.sink.none()?),
            TYPE_FALSE => single(self.sink.bool(false)?),
            TYPE_TRUE => single(self.sink.bool(true)?),
            TYPE_STOPITER => single(self.sink.stop_iteration()?),
            TYPE_ELLIPSIS => single(self.sink.ellipsis()?),
            TYPE_INT64 => {
                let v = i64::from_le_bytes(self.take_array::<8>()?);
                let v = self.sink.int(v)?;
                Ok(self.leaf(flag, v, Shape::Other))
            }
            TYPE_LONG => {
                let v = self.long(at)?;
                Ok(self.leaf(flag, v, Shape::Other))
            }
            TYPE_FLOAT => {
                let f = self.text_float()?;
                let v = self.sink.float(f)?;
                Ok(self.leaf(flag, v, Shape::Other))
            }
            TYPE_BINARY_FLOAT => {
                let f = self.f64()?;
                let v = self.sink.float(f)?;
                Ok(self.leaf(flag, v, Shape::Other))
            }
            TYPE_COMPLEX => {
                let re = self.text_float()?;
                let im = self.text_float()?;
                let v = self.sink.complex(re, im)?;
                Ok(self.leaf(flag, v, Shape::Other))
            }
            TYPE_BINARY_COMPLEX => {
                let re = self.f64()?;
                let im = self.f64()?;
                let v = self.sink.complex(re, im)?;
                Ok(self.leaf(flag, v, Shape::Other))
            }
            TYPE_STRING => {
                let n = self.size("bytes object")?;
                let p = self.input.position();
                let Some(raw) = self.input.take(n)? else {
                    return Err(too_short(p).into());
                };
                let v = self.sink.bytes(raw)?;
                Ok(self.leaf(flag, v, Shape::Bytes(n as u32)))
            }
            TYPE_UNICODE | TYPE_INTERNED => {
                let n = self.size("string")?;
                let p = self.input.position();
                let Some(raw) = self.input.take(n)? else {
                    return Err(too_short(p).into());
                };
                let v = self.sink.str_utf8(raw, t == TYPE_INTERNED, p)?;
                Ok(self.leaf(flag, v, Shape::Str))
            }
            TYPE_ASCII | TYPE_ASCII_INTERNED => {
                let n = self.size("string")?;
                let p = self.input.position();
                let Some(raw) = self.input.take(n)? else {
                    return Err(too_short(p).into());
                };
                let v = self.sink.str_latin1(raw, t == TYPE_ASCII_INTERNED)?;
                Ok(self.leaf(flag, v, Shape::Str))
            }
            _ => Err(value_err("bad marshal data (unknown type code)", at).into()),
        }
    }

    /// `l`: a signed digit count, then base-2^15 digits, least significant first.
    #[inline(never)]
    fn long(&mut self, at: usize) -> Result<S::Value, S::Error> {
        let n = self.i32()?;
        if n == 0 {
            return self.sink.int(0);
        }
        if n == i32::MIN {
            return Err(value_err("bad marshal data (long size out of range)", at).into());
        }
        let count = n.unsigned_abs() as usize;
        let p = self.input.position();
        let Some(raw) = self.input.take(count * 2)? else {
            return Err(too_short(p).into());
        };
        let mut bytes: Vec<u8> = Vec::with_capacity(count * 15 / 8 + 2);
        let (mut acc, mut bits) = (0u32, 0u32);
        let mut small: u128 = 0;
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            let d = u16::from_le_bytes([pair[0], pair[1]]);
            if d > 0x7FFF {
                return Err(value_err("bad marshal data (digit out of range in long)", at).into());
            }
            if i + 1 == count && d == 0 {
                return Err(value_err("bad marshal data (unnormalized long data)", at).into());
            }
            if count <= 5 {
                small |= (d as u128) << (15 * i);
            }
            acc |= (d as u32) << bits;
            bits += 15;
            while bits >= 8 {
                bytes.push(acc as u8);
                acc >>= 8;
                bits -= 8;
            }
        }
        if count <= 5 {
            if let Ok(v) = i64::try_from(small) {
                return self.sink.int(if n < 0 { -v } else { v });
            }
        }
        if bits > 0 {
            bytes.push(acc as u8);
        }
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        self.sink.big_int(n < 0, &bytes)
    }
}

/// From a stream (remaining size unknown), at most this many item slots are pre-allocated
/// over all open containers; beyond it, containers grow as items actually arrive.
const STREAM_PREALLOC_MAX: usize = 1 << 12;

/// Checks the code-object fields as CPython's `_PyCode_Validate` does.
fn validate_code<V>(ints: [i32; 6], objs: &mut Vec<(V, Shape)>) -> Result<CodeFields<V>, String> {
    let bad = |what: &str| Err(format!("bad marshal data (invalid code object: {what})"));
    if objs.len() != 10 {
        return bad("missing fields");
    }
    let [code, consts, names, lnames, lkinds, filename, name, qualname, linetable, exctable] =
        std::array::from_fn(|i| objs.get(i).map_or(Shape::Other, |(_, s)| *s));
    let is_bytes = |s: Shape| matches!(s, Shape::Bytes(_));
    let str_tuple = |s: Shape| matches!(s, Shape::Tuple { all_str: true, .. });
    match code {
        Shape::Bytes(n) if n % 2 == 0 => {}
        Shape::Bytes(_) => return bad("co_code length is odd"),
        _ => return bad("co_code is not bytes"),
    }
    if !matches!(consts, Shape::Tuple { .. }) {
        return bad("co_consts is not a tuple");
    }
    if !str_tuple(names) || !str_tuple(lnames) {
        return bad("co_names/co_localsplusnames is not a tuple of str");
    }
    if !is_bytes(lkinds) || !is_bytes(linetable) || !is_bytes(exctable) {
        return bad("co_localspluskinds/co_linetable/co_exceptiontable is not bytes");
    }
    if filename != Shape::Str || name != Shape::Str || qualname != Shape::Str {
        return bad("co_filename/co_name/co_qualname is not str");
    }
    if let (Shape::Tuple { len: a, .. }, Shape::Bytes(b)) = (lnames, lkinds) {
        if a != b {
            return bad("co_localsplusnames and co_localspluskinds differ in length");
        }
    }
    let [argcount, posonly, kwonly, stacksize, _, _] = ints;
    if argcount < posonly || posonly < 0 || kwonly < 0 || stacksize < 0 {
        return bad("argument counts out of range");
    }
    // The values moved out in order (the buffer is left empty, for reuse).
    let mut it = objs.drain(..).map(|(v, _)| v);
    let (Some(f0), Some(f1), Some(f2), Some(f3), Some(f4)) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return bad("missing fields");
    };
    let (Some(f5), Some(f6), Some(f7), Some(f8), Some(f9)) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return bad("missing fields");
    };
    let objects = [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9];
    Ok(CodeFields {
        argcount: ints[0],
        posonlyargcount: ints[1],
        kwonlyargcount: ints[2],
        stacksize: ints[3],
        flags: ints[4],
        firstlineno: ints[5],
        objects,
    })
}
