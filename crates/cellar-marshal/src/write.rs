//! The marshal encoder: ONE writer for every producer, generic over what it walks ([`Source`]).
//!
//! The Rust [`Value`](cellar_value::Value) is one source (`crate::value_sink::ValueSource`);
//! the Python package implements another that reads Python objects directly. The type codes
//! chosen per version (binary floats from 2, references and interned strings from 3, ASCII codes
//! and small tuples from 4, slices at 5), the UTF-8 (surrogatepass) encoding of str, base-2^15
//! longs, set ordering (each item's standalone marshal bytes, bpo-37596), the nesting limit and
//! the error messages live here once.
//!
//! Like the decoder it walks with an explicit stack. Which objects get FLAG_REF is the source's
//! call ([`Source::shared_id`]): CPython flags an object whose reference count is above one; the
//! Python source reproduces that exactly, the `Value` source uses the `Arc` strong count.

use std::borrow::Cow;

use crate::error::EncodeError;
use crate::types::*;

/// Options for [`crate::dumps_with`] and [`encode`].
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Format version 0-5; larger values mean the newest ([`CURRENT_VERSION`]).
    pub version: u32,
    /// Write code objects; when false they fail with ValueError as in CPython 3.13.
    pub allow_code: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            version: DEFAULT_VERSION,
            allow_code: true,
        }
    }
}

/// A str's contents as the source holds them; the encoder writes UTF-8 with lone surrogates
/// encoded as three bytes (surrogatepass), as CPython's marshal does.
#[derive(Debug, Clone, Copy)]
pub enum StrData<'n> {
    /// Pure ASCII.
    Ascii(&'n [u8]),
    /// Already UTF-8 (surrogates encoded as three bytes); not ASCII.
    Utf8(&'n [u8]),
    /// One code point per byte (Latin-1), not all ASCII.
    Ucs1(&'n [u8]),
    /// One code point per u16.
    Ucs2(&'n [u16]),
    /// One code point per u32.
    Ucs4(&'n [u32]),
}

/// What one object is, as the encoder needs it.
#[derive(Debug)]
pub enum Node<'n, O> {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// The class `StopIteration`.
    StopIteration,
    /// `Ellipsis`.
    Ellipsis,
    /// An int that fits in 64 bits.
    Int(i64),
    /// A bigger int: sign and magnitude, little-endian bytes.
    BigInt {
        /// Below zero.
        negative: bool,
        /// The magnitude (trailing zero bytes allowed).
        magnitude_le: Cow<'n, [u8]>,
    },
    /// A float.
    Float(f64),
    /// A complex.
    Complex(f64, f64),
    /// bytes (or anything with the buffer protocol, written as bytes).
    Bytes(Cow<'n, [u8]>),
    /// A str.
    Str {
        /// Its code points.
        data: StrData<'n>,
        /// Interned (written as `t`/`A`/`Z` from version 3/4).
        interned: bool,
    },
    /// A tuple; its items come from [`Source::children`]. The count is a hint only.
    Tuple(usize),
    /// A list; items from [`Source::children`] (a snapshot: the count written is theirs).
    List(usize),
    /// A dict; [`Source::children`] gives key, value, key, value, ...
    Dict,
    /// A set or frozenset; items from [`Source::children`].
    Set {
        /// frozenset.
        frozen: bool,
        /// Number of items (hint).
        len: usize,
    },
    /// A slice; [`Source::children`] gives start, stop, step.
    Slice,
    /// A code object: argcount, posonlyargcount, kwonlyargcount, stacksize, flags,
    /// firstlineno; [`Source::children`] gives code, consts, names, localsplusnames,
    /// localspluskinds, filename, name, qualname, linetable, exceptiontable.
    Code {
        /// The six integer fields.
        ints: [i32; 6],
    },
    /// Nothing marshal can write.
    Unmarshallable,
    /// The source must run foreign code (code that could change or free what the encoder has
    /// pending) to describe this object: the encoder first calls [`Source::promote`] on every
    /// handle it holds, then asks again with [`Source::node_escaped`]. A source whose handles
    /// always own their object never returns it.
    Escape,
    /// Never constructed; carries the object type.
    #[doc(hidden)]
    _Phantom(std::marker::PhantomData<O>),
}

/// What the encoder walks.
pub trait Source {
    /// A handle to one object (owned by the encoder while it is being written; cloned once
    /// per set item, which is written twice).
    type Obj: Clone;
    /// The source's error type.
    type Error: From<EncodeError>;

    /// What `o` is.
    fn node<'n>(&mut self, o: &'n Self::Obj) -> Result<Node<'n, Self::Obj>, Self::Error>;
    /// What `o` is, after [`Node::Escape`]: every handle the encoder holds has been passed to
    /// [`Source::promote`], so the source may now run code that changes or frees objects.
    fn node_escaped<'n>(&mut self, _o: &'n Self::Obj) -> Result<Node<'n, Self::Obj>, Self::Error> {
        Ok(Node::Unmarshallable)
    }
    /// Makes `o` (a handle the encoder holds, pending or being written) keep its object alive
    /// until the dump ends, for a source whose handles borrow (see [`Node::Escape`]). A source
    /// must account for the reference this takes in [`Source::shared_id`]. Returns false when
    /// `o` was promoted before (the encoder then stops: see [`Writer::escape`]). The default
    /// does nothing and returns false.
    #[inline(always)]
    fn promote(&mut self, _o: &Self::Obj) -> bool {
        false
    }
    /// An identity for `o` if it is shared and must be written once then referenced (FLAG_REF
    /// then `r`), or `None`. `extra` counts the references the source itself holds on `o`
    /// beyond those the reference writer (CPython) would hold at this point. A source that
    /// returns an identity must keep the object alive until the encoder is done (identities
    /// must not be reused during one dump). Asked before [`Source::node`], as CPython's
    /// `w_ref` runs before it looks at the type: an object recorded before is written as a
    /// reference without being described again. An identity named for None, a bool,
    /// StopIteration or Ellipsis is ignored (they are never flagged).
    fn shared_id(&mut self, o: &Self::Obj, extra: u32) -> Option<usize>;
    /// The next child of a tuple, list or dict (for a dict: key, value, key, value, ...), with
    /// its `extra` (see `shared_id`); `cursor` starts at 0 and is the source's to advance.
    /// `None` when there are no more. Children are fetched one at a time, just before they are
    /// written, so a source that owns what it hands out touches each object once.
    fn child(
        &mut self,
        o: &Self::Obj,
        cursor: &mut usize,
    ) -> Result<Option<(Self::Obj, u32)>, Self::Error>;
    /// The next (key, value) entry of a dict, each with its `extra`; `cursor` starts at 0 and
    /// is the source's to advance. The encoder writes the key, then the value. The default
    /// takes two [`Source::child`] calls; a source whose dict iteration yields both at once
    /// (CPython's `PyDict_Next`) overrides it.
    #[allow(clippy::type_complexity)]
    fn dict_item(
        &mut self,
        o: &Self::Obj,
        cursor: &mut usize,
    ) -> Result<Option<((Self::Obj, u32), (Self::Obj, u32))>, Self::Error> {
        let Some(k) = self.child(o, cursor)? else {
            return Ok(None);
        };
        Ok(self.child(o, cursor)?.map(|x| (k, x)))
    }
    /// Called once per identity the encoder records (the first time an object that
    /// [`Source::shared_id`] named is written): a source whose identities are addresses keeps
    /// the object alive from here until the dump ends. The default does nothing.
    #[inline(always)]
    fn retain(&mut self, _o: &Self::Obj) {}
    /// Whether [`Source::code_field`] serves the code object `o` (asked once, right after
    /// [`Source::node`] or [`Source::node_escaped`] described it); otherwise its fields come
    /// all at once from [`Source::children`]. The default: no.
    fn code_by_field(&mut self, _o: &Self::Obj) -> bool {
        false
    }
    /// Field `i` of a code object that [`Source::code_by_field`] accepted, read on demand,
    /// with its `extra` (see `shared_id`): 0 code, 1 consts, 2 names, 3 localsplusnames,
    /// 4 localspluskinds, 5 filename, 6 name, 7 qualname, 8 linetable, 9 exceptiontable.
    fn code_field(
        &mut self,
        _o: &Self::Obj,
        _i: usize,
    ) -> Result<Option<(Self::Obj, u32)>, Self::Error> {
        Ok(None)
    }
    /// Appends the children of a set, slice or code object to `out` in writing order, each with the number of
    /// references the source holds on it beyond CPython's at that point (see `shared_id`).
    fn children(
        &mut self,
        o: &Self::Obj,
        out: &mut Vec<(Self::Obj, u32)>,
    ) -> Result<(), Self::Error>;
    /// The `extra` of a set item (held `held` by the source) when it is written standalone to
    /// compute the sort key (`standalone`) and when it is written for real. CPython 3.11
    /// borrows the item for the standalone dump and holds one more reference (a (dump, item)
    /// pair) for the real one.
    fn set_item_extra(&self, held: u32, standalone: bool) -> u32 {
        if standalone {
            held
        } else {
            held.saturating_sub(1)
        }
    }
}

/// A root that is one flat payload (see [`flat_header`]).
#[derive(Debug, Clone, Copy)]
pub enum Flat {
    /// bytes (written as `s`).
    Bytes,
    /// An ASCII str (written as `a`/`A` from version 4).
    Ascii {
        /// Interned.
        interned: bool,
    },
}

/// The 5-byte header [`encode`] writes before the payload when the root is one bytes or ASCII
/// str object of `len` bytes (`shared`: [`Source::shared_id`] names it), or `None` when that
/// root is not written as header + payload (a short or pre-version-4 str, or too long). A
/// source can then write the output in one piece, straight into its final buffer.
pub fn flat_header(kind: Flat, len: usize, shared: bool, version: u32) -> Option<[u8; 5]> {
    let version = version.min(CURRENT_VERSION);
    if len > SIZE32_MAX {
        return None;
    }
    let code = match kind {
        Flat::Bytes => TYPE_STRING,
        Flat::Ascii { interned } => {
            if version < 4 || len < 256 {
                return None;
            }
            if interned {
                TYPE_ASCII_INTERNED
            } else {
                TYPE_ASCII
            }
        }
    };
    let flag = if version >= 3 && shared { FLAG_REF } else { 0 };
    let b = (len as u32).to_le_bytes();
    Some([code | flag, b[0], b[1], b[2], b[3]])
}

enum Task<O> {
    Obj(O, u32),
    /// A tuple, list (`left` items still to write) or dict (`left == usize::MAX`) being written.
    Iter {
        obj: O,
        cursor: usize,
        left: usize,
    },
    /// A code object whose fields come from [`Source::code_field`]; `step` 0-7: fields 0-7,
    /// 8: `firstlineno`, 9-10: fields 8-9, 11: done.
    Code {
        obj: O,
        step: u32,
        firstlineno: i32,
    },
    I32(i32),
    Exit,
}

/// Removes the finished container on top of `stack` in place (`pop` would first move the whole
/// task out: a wide load of bytes just written by narrow stores, which the CPU cannot forward).
#[inline(always)]
fn drop_top<O>(stack: &mut Vec<Task<O>>) {
    let n = stack.len().saturating_sub(1);
    stack.truncate(n);
}

/// Handles the writer holds in its own frames rather than on the stack, which an escape must
/// promote too: the tuples and lists being written inline (innermost first) and a dict's value
/// while its key is described.
struct Pending<'a, O> {
    obj: &'a O,
    up: Option<&'a Pending<'a, O>>,
}

/// How many tuples and lists deep the writer goes inline (by recursion: a container whose
/// items are all written inline needs no task on the stack) before it falls back to the stack.
const INLINE_MAX: u32 = 8;

/// Identity tables (one hasher for both codecs and the Python package's sources).
pub use cellar_value::identity::{IdBuild, IdHasher, IdMap, IdSet};

fn unmarshallable() -> EncodeError {
    EncodeError {
        message: "unmarshallable object".into(),
    }
}
fn too_deep() -> EncodeError {
    EncodeError {
        message: "object too deeply nested to marshal".into(),
    }
}

/// Encodes `root` (held `extra` times by the source beyond CPython's count), appending to `out`.
pub fn encode<S: Source>(
    source: &mut S,
    root: S::Obj,
    extra: u32,
    opts: &DumpOptions,
    out: &mut Vec<u8>,
) -> Result<(), S::Error> {
    let start = out.len();
    let r = encode_at(source, root, extra, opts, out, start);
    match r {
        Ok(end) => {
            out.truncate(end);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// [`encode`] into a reused buffer: writes from the start of `buf`, whose whole length is
/// scratch (grown as needed, and left at its grown length, so the next call need not fill it
/// again), and returns the length of the encoding, `buf[..n]`.
pub fn encode_reusing<S: Source>(
    source: &mut S,
    root: S::Obj,
    extra: u32,
    opts: &DumpOptions,
    buf: &mut Vec<u8>,
) -> Result<usize, S::Error> {
    encode_at(source, root, extra, opts, buf, 0)
}

fn encode_at<S: Source>(
    source: &mut S,
    root: S::Obj,
    extra: u32,
    opts: &DumpOptions,
    buf: &mut Vec<u8>,
    start: usize,
) -> Result<usize, S::Error> {
    // The reference table of this thread's last dump, reused: a dump with many shared objects
    // (a module's code: every interned name) does not regrow it from empty each time. Taken out
    // of the slot while in use (a dump started by the source's own code gets a fresh one).
    let refs = SPARE_REFS.with(|c| c.take());
    let mut w = Writer::new(
        Out::at(std::mem::take(buf), start),
        opts.version.min(CURRENT_VERSION),
        opts.allow_code,
        refs,
        0,
    );
    let r = w.write(source, root, extra);
    let end = w.out.pos;
    *buf = w.out.buf;
    let mut refs = w.refs;
    if refs.capacity() <= SPARE_REFS_MAX {
        refs.clear();
        SPARE_REFS.with(|c| c.set(refs));
    }
    r.map(|()| end)
}

/// The output: a buffer whose bytes from `pos` on are scratch, written at `pos`. Appending a
/// few bytes is one bounds check and inline stores (`Vec::extend_from_slice` is two out-of-line
/// calls, `append_elements` then `memcpy`, even for a 2-byte header: half the time of a dump of
/// short strs went there). Owned while the dump runs (its pointer and length are fields of the
/// writer, not behind a reference). Bytes are only ever appended by the Vec's own methods (no
/// `unsafe` here; see `grow`); the caller truncates the buffer to `pos` at the end (or keeps it
/// whole for reuse).
struct Out {
    buf: Vec<u8>,
    pos: usize,
}

/// The least an output buffer's length grows by (see [`Out::grow`]).
const GROW_STEP: usize = 4096;

impl Out {
    /// Writing into `buf` from `pos` (at most its length).
    fn at(buf: Vec<u8>, pos: usize) -> Out {
        let pos = pos.min(buf.len());
        Out { buf, pos }
    }

    /// Bytes written so far (including any the buffer held before `pos` at the start).
    #[inline(always)]
    fn len(&self) -> usize {
        self.pos
    }

    /// Makes room for `n` bytes past `pos`: the buffer's length grows by at least 4 KiB at a
    /// time, zero-filled just before it is written over (cache-hot), and its capacity by the
    /// Vec's own amortized doubling. A reused buffer (the Python package's, kept at its
    /// longest) comes here only when a dump outgrows every earlier one.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, n: usize) {
        let want = self.pos.saturating_add(n.max(GROW_STEP));
        self.buf.resize(want.max(self.buf.len()), 0);
    }

    /// The next `n` bytes of the buffer (grown if needed), to be filled by the caller, who
    /// then calls [`Out::advance`].
    #[inline(always)]
    fn room(&mut self, n: usize) -> &mut [u8] {
        let pos = self.pos;
        if self.buf.len() - pos < n {
            self.grow(n);
        }
        &mut self.buf[pos..pos + n]
    }

    #[inline(always)]
    fn advance(&mut self, n: usize) {
        self.pos += n;
    }

    /// Appends a few fixed bytes.
    #[inline(always)]
    fn put<const N: usize>(&mut self, b: [u8; N]) {
        self.room(N).copy_from_slice(&b);
        self.pos += N;
    }

    #[inline(always)]
    fn push(&mut self, b: u8) {
        self.put([b]);
    }

    #[inline(always)]
    fn extend_from_slice(&mut self, s: &[u8]) {
        self.room(s.len()).copy_from_slice(s);
        self.pos += s.len();
    }

    /// Makes room for `n` more bytes.
    #[inline(always)]
    fn reserve(&mut self, n: usize) {
        self.room(n);
    }

    /// The bytes written at `range` (for patching a length in afterwards).
    fn written_mut(&mut self, range: std::ops::Range<usize>) -> &mut [u8] {
        &mut self.buf[range]
    }
}

/// The largest reference table kept for reuse per thread (slots).
const SPARE_REFS_MAX: usize = 1 << 15;

std::thread_local! {
    static SPARE_REFS: std::cell::Cell<RefTable> = std::cell::Cell::new(RefTable::default());
}

/// Slots of [`Writer::hot`] (a power of two).
const HOT_SLOTS: usize = 16;

/// The reference table: identity -> index of the object's first (flagged) write. Open
/// addressing with linear probing over (identity, index) pairs, at most half full, indexed by
/// the top bits of a multiplicative hash (identities are addresses chosen by the allocator,
/// never by the input). A lookup is a multiply, a load and a compare or two, inline: the
/// general-purpose map (SIMD groups, an out-of-line entry call) cost three times as much per
/// reference on a module's code object.
#[derive(Default)]
struct RefTable {
    /// (identity, index, generation): a slot is in use when its generation is the table's
    /// (so `clear` is one increment, not a pass over every slot: a reused table of thousands
    /// of slots cost more to wipe than a small dump takes).
    slots: Vec<(usize, u32, u32)>,
    /// 64 - log2(slots.len()).
    shift: u32,
    /// Identities recorded.
    len: usize,
    /// The generation of the slots in use; never 0 (the value of fresh slots) once a slot
    /// has been allocated.
    gen: u32,
}

impl RefTable {
    /// Slots allocated on the first insert.
    const FIRST: usize = 1 << 10;

    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn clear(&mut self) {
        if self.len > 0 {
            self.gen = self.gen.wrapping_add(1);
            if self.gen == 0 {
                // Once in 2^32 clears: wipe for real, so that no old slot looks current.
                self.slots.fill((0, 0, 0));
                self.gen = 1;
            }
            self.len = 0;
        }
    }

    #[inline(always)]
    fn home(id: usize, shift: u32) -> usize {
        // Addresses are aligned: the low bits carry nothing; the product's top bits mix all.
        ((id as u64 >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
    }

    /// The index recorded for `id`.
    #[inline(always)]
    fn get(&self, id: usize) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = Self::home(id, self.shift) & mask;
        loop {
            let (k, v, g) = self.slots[i];
            if g != self.gen {
                return None;
            }
            if k == id {
                return Some(v);
            }
            i = (i + 1) & mask;
        }
    }

    /// Records `index` for `id`, which is not recorded yet.
    #[inline(always)]
    fn insert(&mut self, id: usize, index: u32) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = Self::home(id, self.shift) & mask;
        while self.slots[i].2 == self.gen {
            i = (i + 1) & mask;
        }
        self.slots[i] = (id, index, self.gen);
        self.len += 1;
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(Self::FIRST);
        let old = std::mem::replace(&mut self.slots, vec![(0, 0, 0); n]);
        if self.gen == 0 {
            self.gen = 1;
        }
        self.shift = 64 - n.trailing_zeros();
        let mask = n - 1;
        for (k, v, g) in old {
            if g != self.gen {
                continue;
            }
            let mut i = Self::home(k, self.shift) & mask;
            while self.slots[i].2 == self.gen {
                i = (i + 1) & mask;
            }
            self.slots[i] = (k, v, self.gen);
        }
    }
}

struct Writer {
    out: Out,
    version: u32,
    allow_code: bool,
    refs: RefTable,
    /// A direct-mapped cache in front of `refs`: (identity, index) of recently referenced
    /// objects, by address bits (identity 0: empty; identities are never reused in a dump).
    /// Inline: a lookup is a load at a fixed offset (behind a pointer it cost (a) ~8%).
    hot: [(usize, u32); HOT_SLOTS],
    depth: usize,
    /// Tuples and lists being written inline right now (see [`INLINE_MAX`]).
    inline: u32,
}

impl Writer {
    /// A writer appending to `out`, recording references in `refs` (empty), with an empty hot
    /// cache.
    fn new(out: Out, version: u32, allow_code: bool, refs: RefTable, depth: usize) -> Writer {
        Writer {
            out,
            version,
            allow_code,
            refs,
            hot: [(0, 0); HOT_SLOTS],
            depth,
            inline: 0,
        }
    }

    #[inline(always)]
    fn put<const N: usize>(&mut self, b: [u8; N]) {
        self.out.put(b);
    }

    #[inline(always)]
    fn i32(&mut self, v: i32) {
        self.put(v.to_le_bytes());
    }

    #[inline(always)]
    fn code_size(&mut self, code: u8, n: usize) -> Result<(), EncodeError> {
        if n > SIZE32_MAX {
            return Err(unmarshallable());
        }
        let b = (n as u32).to_le_bytes();
        self.put([code, b[0], b[1], b[2], b[3]]);
        Ok(())
    }

    /// The index of `id` if it was recorded: recently referenced identities first (one load and
    /// compare, no hashing: the keys of a list of dicts, a shared constant), then the table.
    #[inline(always)]
    fn recorded(&mut self, id: usize) -> Option<u32> {
        let slot = (id >> 4) & (HOT_SLOTS - 1);
        let (hot_id, hot_idx) = self.hot[slot];
        if hot_id == id && id != 0 {
            return Some(hot_idx);
        }
        let idx = self.refs.get(id)?;
        self.hot[slot] = (id, idx);
        Some(idx)
    }

    fn write<S: Source>(
        &mut self,
        source: &mut S,
        root: S::Obj,
        extra: u32,
    ) -> Result<(), S::Error> {
        // Room for a few levels of nesting from the start (growing from one slot cost three
        // reallocations per dump of a small dict).
        let mut stack = Vec::with_capacity(16);
        stack.push(Task::Obj(root, extra));
        self.drain(source, &mut stack)
    }

    /// Writes `root` and hands it back (set items are written twice: standalone for the sort
    /// key, then for real).
    fn write_keep<S: Source>(
        &mut self,
        source: &mut S,
        root: S::Obj,
        extra: u32,
    ) -> Result<S::Obj, S::Error> {
        if self.depth + 1 > MAX_DEPTH {
            return Err(too_deep().into());
        }
        // Written through a second handle, which the source holds too: one more reference.
        let mut stack = Vec::new();
        self.object(
            source,
            root.clone(),
            extra + 1,
            &mut stack,
            &mut Vec::new(),
            None,
        )?;
        self.drain(source, &mut stack)?;
        Ok(root)
    }

    fn drain<S: Source>(
        &mut self,
        source: &mut S,
        stack: &mut Vec<Task<S::Obj>>,
    ) -> Result<(), S::Error> {
        // The children of code objects and slices, reused (no allocation per code object).
        let mut kids = Vec::new();
        loop {
            // A container being written stays on top of the stack and advances in place; its
            // next child is written from here (a child that is a container pushes its own task
            // above it).
            let (v, extra) = match stack.last_mut() {
                None => break,
                Some(Task::Iter { obj, cursor, left }) => {
                    if *left == usize::MAX {
                        // A dict: key now, its value right after (an escape while the key is
                        // described promotes the value too, as if it were pending on the stack).
                        match source.dict_item(obj, cursor)? {
                            Some(((k, ke), (x, xe))) => {
                                let before = stack.len();
                                if self.depth + 1 > MAX_DEPTH {
                                    return Err(too_deep().into());
                                }
                                let value = Pending { obj: &x, up: None };
                                self.object(source, k, ke, stack, &mut kids, Some(&value))?;
                                if stack.len() != before {
                                    // The key is a container being written: the value waits
                                    // below what it pushed, above the dict's continuation.
                                    stack.insert(before, Task::Obj(x, xe));
                                    continue;
                                }
                                (x, xe)
                            }
                            None => {
                                drop_top(stack);
                                self.out.push(TYPE_NULL);
                                self.depth -= 1;
                                continue;
                            }
                        }
                    } else if *left == 0 {
                        drop_top(stack);
                        self.depth -= 1;
                        continue;
                    } else {
                        *left -= 1;
                        match source.child(obj, cursor)? {
                            Some(c) => c,
                            None => {
                                return Err(EncodeError {
                                    message: "list changed size during marshal".into(),
                                }
                                .into())
                            }
                        }
                    }
                }
                Some(Task::Code {
                    obj,
                    step,
                    firstlineno,
                }) => {
                    // Advanced in place, like a tuple: no task per field.
                    let at = *step;
                    *step += 1;
                    if at == 8 {
                        let line = *firstlineno;
                        self.i32(line);
                        continue;
                    }
                    if at >= 11 {
                        drop_top(stack);
                        self.depth -= 1;
                        continue;
                    }
                    let field = if at > 8 { at - 1 } else { at } as usize;
                    match source.code_field(obj, field)? {
                        Some(c) => c,
                        None => return Err(unmarshallable().into()),
                    }
                }
                Some(_) => match stack.pop() {
                    Some(Task::Obj(v, e)) => (v, e),
                    Some(Task::I32(x)) => {
                        self.i32(x);
                        continue;
                    }
                    Some(Task::Exit) => {
                        self.depth -= 1;
                        continue;
                    }
                    Some(Task::Iter { .. }) | Some(Task::Code { .. }) | None => continue,
                },
            };
            if self.depth + 1 > MAX_DEPTH {
                return Err(too_deep().into());
            }
            self.object(source, v, extra, stack, &mut kids, None)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn object<S: Source>(
        &mut self,
        source: &mut S,
        v: S::Obj,
        extra: u32,
        stack: &mut Vec<Task<S::Obj>>,
        kids: &mut Vec<(S::Obj, u32)>,
        pending: Option<&Pending<'_, S::Obj>>,
    ) -> Result<(), S::Error> {
        // Shared or not is decided first, as CPython's w_ref does before it looks at the type:
        // an object written before is a reference, and is never described again. (The
        // answer does not depend on an escape below: a promotion adds the reference it
        // accounts for.) None, bools, StopIteration and Ellipsis are never flagged: a source
        // may name them, they are never recorded, so they are never found.
        let shared = if self.version >= 3 {
            source.shared_id(&v, extra)
        } else {
            None
        };
        if let Some(id) = shared {
            if let Some(idx) = self.recorded(id) {
                let b = idx.to_le_bytes();
                self.put([TYPE_REF, b[0], b[1], b[2], b[3]]);
                return Ok(());
            }
        }
        let mut node = source.node(&v)?;
        if let Node::Escape = node {
            self.escape(source, stack, &v, pending);
            node = source.node_escaped(&v)?;
        }
        let single = match node {
            Node::None => Some(TYPE_NONE),
            Node::Bool(false) => Some(TYPE_FALSE),
            Node::Bool(true) => Some(TYPE_TRUE),
            Node::StopIteration => Some(TYPE_STOPITER),
            Node::Ellipsis => Some(TYPE_ELLIPSIS),
            _ => None,
        };
        if let Some(b) = single {
            self.out.push(b);
            return Ok(());
        }
        let mut flag = 0u8;
        if let Some(id) = shared {
            let next = self.refs.len();
            if next >= SIZE32_MAX {
                return Err(unmarshallable().into());
            }
            self.refs.insert(id, next as u32);
            source.retain(&v);
            flag = FLAG_REF;
        }
        match node {
            Node::Int(i) => match i32::try_from(i) {
                Ok(x) => {
                    let b = x.to_le_bytes();
                    self.put([TYPE_INT | flag, b[0], b[1], b[2], b[3]]);
                }
                Err(_) => {
                    self.out.push(TYPE_LONG | flag);
                    self.long_digits(&i.unsigned_abs().to_le_bytes(), i < 0)?;
                }
            },
            Node::BigInt {
                negative,
                magnitude_le,
            } => {
                self.out.push(TYPE_LONG | flag);
                self.long_digits(&magnitude_le, negative)?;
            }
            Node::Float(f) => {
                if self.version > 1 {
                    self.out.push(TYPE_BINARY_FLOAT | flag);
                    self.put(f.to_le_bytes());
                } else {
                    self.out.push(TYPE_FLOAT | flag);
                    self.text_float(f);
                }
            }
            Node::Complex(re, im) => {
                if self.version > 1 {
                    self.out.push(TYPE_BINARY_COMPLEX | flag);
                    self.put(re.to_le_bytes());
                    self.put(im.to_le_bytes());
                } else {
                    self.out.push(TYPE_COMPLEX | flag);
                    self.text_float(re);
                    self.text_float(im);
                }
            }
            Node::Bytes(b) => {
                self.code_size(TYPE_STRING | flag, b.len())?;
                self.out.extend_from_slice(&b);
            }
            Node::Str { data, interned } => self.str(data, interned, flag)?,
            Node::Tuple(n) | Node::List(n) => {
                let list = matches!(node, Node::List(_));
                drop(node);
                if list {
                    self.code_size(TYPE_LIST | flag, n)?;
                } else if self.version >= 4 && n < 256 {
                    self.put([TYPE_SMALL_TUPLE | flag, n as u8]);
                } else {
                    self.code_size(TYPE_TUPLE | flag, n)?;
                }
                self.depth += 1;
                if self.inline < INLINE_MAX {
                    self.inline += 1;
                    let r = self.items_inline(source, v, n, stack, kids, pending);
                    self.inline -= 1;
                    r?;
                } else {
                    stack.push(Task::Iter {
                        obj: v,
                        cursor: 0,
                        left: n,
                    });
                }
            }
            Node::Dict => {
                drop(node);
                self.out.push(TYPE_DICT | flag);
                self.depth += 1;
                stack.push(Task::Iter {
                    obj: v,
                    cursor: 0,
                    left: usize::MAX,
                });
            }
            Node::Set { frozen, .. } => {
                drop(node);
                self.set(source, &v, frozen, flag, stack, pending)?;
            }
            Node::Slice => {
                drop(node);
                self.slice(source, &v, flag, stack, kids)?;
            }
            Node::Code { ints } => {
                drop(node);
                self.code(source, v, ints, flag, stack, kids)?;
            }
            Node::Unmarshallable | Node::Escape => return Err(unmarshallable().into()),
            Node::None
            | Node::Bool(_)
            | Node::StopIteration
            | Node::Ellipsis
            | Node::_Phantom(_) => {}
        }
        Ok(())
    }

    /// The `n` items of a tuple or list `v` (its header written, `depth` counting it), written
    /// here one after another by recursion, without a task on the stack: a push then a pop
    /// per container was a copy through memory each way. The first item that needs the stack
    /// (a dict, a code object, anything past [`INLINE_MAX`] levels) leaves the rest of `v`
    /// to a task inserted below what that item pushed, exactly as if `v` had been on the stack
    /// from the start. `pending`: the handles held by the frames around this one (see
    /// [`Pending`]); `v` joins them while its items are written.
    #[inline(never)]
    fn items_inline<S: Source>(
        &mut self,
        source: &mut S,
        v: S::Obj,
        n: usize,
        stack: &mut Vec<Task<S::Obj>>,
        kids: &mut Vec<(S::Obj, u32)>,
        pending: Option<&Pending<'_, S::Obj>>,
    ) -> Result<(), S::Error> {
        let mut cursor = 0;
        let mut left = n;
        while left > 0 {
            left -= 1;
            let Some((c, e)) = source.child(&v, &mut cursor)? else {
                return Err(EncodeError {
                    message: "list changed size during marshal".into(),
                }
                .into());
            };
            if self.depth + 1 > MAX_DEPTH {
                return Err(too_deep().into());
            }
            let before = stack.len();
            let here = Pending {
                obj: &v,
                up: pending,
            };
            self.object(source, c, e, stack, kids, Some(&here))?;
            if stack.len() != before {
                stack.insert(
                    before,
                    Task::Iter {
                        obj: v,
                        cursor,
                        left,
                    },
                );
                return Ok(());
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// A set or frozenset (out of line: the loop stays small enough for its pushes to inline).
    #[inline(never)]
    fn set<S: Source>(
        &mut self,
        source: &mut S,
        v: &S::Obj,
        frozen: bool,
        flag: u8,
        stack: &mut Vec<Task<S::Obj>>,
        pending: Option<&Pending<'_, S::Obj>>,
    ) -> Result<(), S::Error> {
        let code = if frozen { TYPE_FROZENSET } else { TYPE_SET };
        // Reading the items and their standalone dumps may escape: everything pending is
        // promoted first (and nothing is pushed until the items are sorted).
        self.escape(source, stack, v, pending);
        let mut items = Vec::new();
        source.children(v, &mut items)?;
        self.code_size(code | flag, items.len())?;
        // Deterministic order (bpo-37596): sorted by each item's standalone marshal
        // bytes, as `sorted(s, key=marshal.dumps)`.
        let mut keyed = Vec::with_capacity(items.len());
        if items.len() <= 1 {
            // One item needs no ordering: skip its standalone dump (which, for nested
            // one-item sets, would cost time exponential in the depth).
            for (item, held) in items {
                keyed.push((Vec::new(), item, source.set_item_extra(held, false)));
            }
        } else {
            for (item, held) in items {
                let mut sub = Writer::new(
                    Out::at(Vec::new(), 0),
                    self.version,
                    self.allow_code,
                    RefTable::default(),
                    self.depth + 1,
                );
                let standalone = source.set_item_extra(held, true);
                let item = sub.write_keep(source, item, standalone)?;
                let end = sub.out.len();
                let mut buf = sub.out.buf;
                buf.truncate(end);
                keyed.push((buf, item, source.set_item_extra(held, false)));
            }
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        self.open(stack);
        stack.extend(keyed.into_iter().rev().map(|(_, o, e)| Task::Obj(o, e)));
        Ok(())
    }

    /// A slice (out of line, as [`Writer::set`]).
    #[inline(never)]
    fn slice<S: Source>(
        &mut self,
        source: &mut S,
        v: &S::Obj,
        flag: u8,
        stack: &mut Vec<Task<S::Obj>>,
        kids: &mut Vec<(S::Obj, u32)>,
    ) -> Result<(), S::Error> {
        if self.version < 5 {
            return Err(unmarshallable().into());
        }
        self.out.push(TYPE_SLICE | flag);
        kids.clear();
        source.children(v, kids)?;
        self.open(stack);
        stack.extend(kids.drain(..).rev().map(|(o, e)| Task::Obj(o, e)));
        Ok(())
    }

    /// A code object (out of line, as [`Writer::set`]).
    #[inline(never)]
    fn code<S: Source>(
        &mut self,
        source: &mut S,
        v: S::Obj,
        ints: [i32; 6],
        flag: u8,
        stack: &mut Vec<Task<S::Obj>>,
        kids: &mut Vec<(S::Obj, u32)>,
    ) -> Result<(), S::Error> {
        if !self.allow_code {
            return Err(EncodeError {
                message: "marshalling code objects is disallowed".into(),
            }
            .into());
        }
        if source.code_by_field(&v) {
            self.out.push(TYPE_CODE | flag);
            for x in &ints[..5] {
                self.i32(*x);
            }
            // The code object stays on the stack and hands out its fields one by one.
            self.depth += 1;
            stack.push(Task::Code {
                obj: v,
                step: 0,
                firstlineno: ints[5],
            });
            return Ok(());
        }
        kids.clear();
        source.children(&v, kids)?;
        if kids.len() != 10 {
            return Err(unmarshallable().into());
        }
        self.out.push(TYPE_CODE | flag);
        for x in &ints[..5] {
            self.i32(*x);
        }
        self.open(stack);
        // Pushed in reverse: the last two objects, firstlineno, then the first eight.
        let mut it = kids.drain(..).rev();
        for _ in 0..2 {
            if let Some((o, e)) = it.next() {
                stack.push(Task::Obj(o, e));
            }
        }
        stack.push(Task::I32(ints[5]));
        stack.extend(it.map(|(o, e)| Task::Obj(o, e)));
        Ok(())
    }

    /// Before the source runs foreign code: every handle pending on `stack`, `v`, and
    /// `pending` (held outside the stack: the containers written inline, a dict's value while
    /// its key is described), promoted (see [`Node::Escape`]). A set item's standalone dump runs on its own stack, but the outer
    /// stack was promoted when the set was met (sets escape), and nothing is pushed onto it
    /// until the set's items are sorted.
    ///
    /// Handles are promoted only here, each time all of them, and the stack only grows and
    /// shrinks at the top (a dict's value is inserted below what its key pushed, which is
    /// newer than any escape the value saw): it is always a promoted bottom part under handles
    /// pushed since the last escape. So the walk goes from the top down and stops at the first handle that was
    /// promoted before (a module's code object escapes once per code object inside it: walking
    /// the whole stack each time made that quadratic in the nesting).
    #[cold]
    #[inline(never)]
    fn escape<S: Source>(
        &mut self,
        source: &mut S,
        stack: &[Task<S::Obj>],
        v: &S::Obj,
        pending: Option<&Pending<'_, S::Obj>>,
    ) {
        source.promote(v);
        let mut up = pending;
        while let Some(p) = up {
            source.promote(p.obj);
            up = p.up;
        }
        for t in stack.iter().rev() {
            match t {
                Task::Obj(o, _) | Task::Iter { obj: o, .. } | Task::Code { obj: o, .. } => {
                    if !source.promote(o) {
                        break;
                    }
                }
                Task::I32(_) | Task::Exit => {}
            }
        }
    }

    fn open<O>(&mut self, stack: &mut Vec<Task<O>>) {
        self.depth += 1;
        stack.push(Task::Exit);
    }

    /// A str: short ASCII (the common case) inline, the rest in [`Writer::str_other`].
    #[inline(always)]
    fn str(&mut self, data: StrData<'_>, interned: bool, flag: u8) -> Result<(), EncodeError> {
        if let StrData::Ascii(raw) = data {
            if self.version >= 4 && raw.len() < 256 {
                let code = if interned {
                    TYPE_SHORT_ASCII_INTERNED
                } else {
                    TYPE_SHORT_ASCII
                };
                let n = raw.len();
                let dst = self.out.room(2 + n);
                dst[0] = code | flag;
                dst[1] = n as u8;
                dst[2..].copy_from_slice(raw);
                self.out.advance(2 + n);
                return Ok(());
            }
        }
        self.str_other(data, interned, flag)
    }

    #[inline(never)]
    fn str_other(
        &mut self,
        data: StrData<'_>,
        interned: bool,
        flag: u8,
    ) -> Result<(), EncodeError> {
        if let StrData::Ascii(raw) = data {
            if self.version >= 4 {
                let n = raw.len();
                if n < 256 {
                    let code = if interned {
                        TYPE_SHORT_ASCII_INTERNED
                    } else {
                        TYPE_SHORT_ASCII
                    };
                    self.out.reserve(2 + n);
                    self.put([code | flag, n as u8]);
                } else {
                    let code = if interned {
                        TYPE_ASCII_INTERNED
                    } else {
                        TYPE_ASCII
                    };
                    self.out.reserve(5 + n);
                    self.code_size(code | flag, n)?;
                }
                self.out.extend_from_slice(raw);
                return Ok(());
            }
        }
        let code = if self.version >= 3 && interned {
            TYPE_INTERNED
        } else {
            TYPE_UNICODE
        };
        match data {
            StrData::Ascii(raw) | StrData::Utf8(raw) => {
                self.code_size(code | flag, raw.len())?;
                self.out.extend_from_slice(raw);
            }
            StrData::Ucs1(s) => self.utf8_units(code | flag, s, 2)?,
            StrData::Ucs2(s) => self.utf8_units(code | flag, s, 3)?,
            StrData::Ucs4(s) => self.utf8_units(code | flag, s, 4)?,
        }
        Ok(())
    }

    /// Writes code points as UTF-8 (surrogates as three bytes), length patched in afterwards:
    /// 64 units at a time encoded into a local block (runs of eight ASCII units narrowed at
    /// once, the rest one by one with one 4-byte store each), then appended; room for the widest encoding (`per` bytes per
    /// unit) reserved first, so the output grows once.
    fn utf8_units<T: Copy + Into<u32>>(
        &mut self,
        code: u8,
        units: &[T],
        per: usize,
    ) -> Result<(), EncodeError> {
        // Every unit takes at least one byte: a longer str cannot be written anyway.
        if units.len() > SIZE32_MAX {
            return Err(unmarshallable());
        }
        let start = self.out.len();
        self.out.reserve(5 + units.len() * per);
        self.put([code, 0, 0, 0, 0]);
        // 64 units take at most 256 bytes; every store writes at most 8 bytes at an index
        // masked below 256, so with 8 bytes of slack no store needs a bounds check. The block is
        // the output's own next bytes (scratch until `advance`): no copy.
        for chunk in units.chunks(64) {
            // A chunk of ASCII (long runs of it, as in most source text) is narrowed at once,
            // straight into the output.
            if chunk.iter().fold(0u32, |a, &c| a | c.into()) < 0x80 {
                for (d, &c) in self.out.room(chunk.len()).iter_mut().zip(chunk) {
                    *d = c.into() as u8;
                }
                self.out.advance(chunk.len());
                continue;
            }
            let Ok(tmp) = <&mut [u8; TMP]>::try_from(self.out.room(TMP)) else {
                return Err(unmarshallable());
            };
            let mut w = 0;
            let mut blocks = chunk.chunks_exact(4);
            for block in &mut blocks {
                if block.iter().fold(0u32, |a, &c| a | c.into()) < 0x80 {
                    w = narrow::<T, 4>(tmp, w, block);
                } else {
                    for &c in block {
                        w = put_utf8(tmp, w, c.into());
                    }
                }
            }
            for &c in blocks.remainder() {
                w = put_utf8(tmp, w, c.into());
            }
            self.out.advance(w.min(256));
        }
        let n = self.out.len() - start - 5;
        if n > SIZE32_MAX {
            return Err(unmarshallable());
        }
        self.out
            .written_mut(start + 1..start + 5)
            .copy_from_slice(&(n as u32).to_le_bytes());
        Ok(())
    }

    fn text_float(&mut self, f: f64) {
        let s = cellar_value::float_g17(f);
        self.out.push(s.len() as u8);
        self.out.extend_from_slice(s.as_bytes());
    }

    /// Writes a magnitude (little-endian bytes) as a signed count of base-2^15 digits.
    fn long_digits(&mut self, mag: &[u8], negative: bool) -> Result<(), EncodeError> {
        let mut digits: Vec<u16> = Vec::with_capacity(mag.len() * 8 / 15 + 1);
        let (mut acc, mut bits) = (0u32, 0u32);
        for &byte in mag {
            acc |= (byte as u32) << bits;
            bits += 8;
            while bits >= 15 {
                digits.push((acc & 0x7FFF) as u16);
                acc >>= 15;
                bits -= 15;
            }
        }
        if bits > 0 {
            digits.push((acc & 0x7FFF) as u16);
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.len() > SIZE32_MAX {
            return Err(unmarshallable());
        }
        let n = digits.len() as i32;
        self.i32(if negative { -n } else { n });
        self.out.reserve(digits.len() * 2);
        for d in digits {
            self.put(d.to_le_bytes());
        }
        Ok(())
    }
}

/// Writes ASCII units (at most 8) as bytes at `buf[w % 256..]`, returning the position after
/// them (see `put_utf8` for the mask).
#[inline(always)]
fn narrow<T: Copy + Into<u32>, const N: usize>(
    buf: &mut [u8; TMP],
    w: usize,
    units: &[T],
) -> usize {
    let i = w & 255;
    if let (Some(dst), Some(src)) = (buf.get_mut(i..i + N), units.get(..N)) {
        for (d, &c) in dst.iter_mut().zip(src) {
            *d = c.into() as u8;
        }
    }
    w + N
}

/// The block `utf8_units` encodes 64 units into: 256 bytes and 8 of slack.
const TMP: usize = 64 * 4 + 8;

/// Writes `c` as UTF-8 (a surrogate as three bytes, as surrogatepass) at `buf[w % 256..]` with
/// one 4-byte store, returning the position after it. Callers keep `w` below 256 before every
/// call (64 units of at most 4 bytes), so the index never wraps; the mask lets the compiler drop
/// the bounds check.
#[inline(always)]
fn put_utf8(buf: &mut [u8; TMP], w: usize, c: u32) -> usize {
    let (word, n) = if c < 0x80 {
        (c, 1)
    } else if c < 0x800 {
        (0x80C0 | (c >> 6) | ((c & 0x3F) << 8), 2)
    } else if c < 0x10000 {
        (
            0x0080_80E0 | (c >> 12) | (((c >> 6) & 0x3F) << 8) | ((c & 0x3F) << 16),
            3,
        )
    } else {
        (
            0x8080_80F0
                | ((c >> 18) & 0x07)
                | (((c >> 12) & 0x3F) << 8)
                | (((c >> 6) & 0x3F) << 16)
                | ((c & 0x3F) << 24),
            4,
        )
    };
    let i = w & 255;
    buf[i..i + 4].copy_from_slice(&word.to_le_bytes());
    w + n
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_value::Value;

    /// UTF-8 (surrogatepass) of every unit width against a reference encoder: every class of
    /// code point (1-4 bytes, lone surrogates) in runs that cross the 4-unit blocks and the
    /// 64-unit chunks, and chunks that are all ASCII next to ones that are not.
    #[test]
    fn utf8_units_match_a_reference() {
        fn reference(units: &[u32]) -> Vec<u8> {
            let mut v = Vec::new();
            for &c in units {
                match char::from_u32(c) {
                    Some(ch) => v.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                    // A lone surrogate: three bytes, as surrogatepass writes it.
                    None => v.extend_from_slice(&[
                        0xE0 | (c >> 12) as u8,
                        0x80 | ((c >> 6) & 0x3F) as u8,
                        0x80 | (c & 0x3F) as u8,
                    ]),
                }
            }
            v
        }
        fn encode<T: Copy + Into<u32>>(units: &[T], per: usize) -> Vec<u8> {
            let mut w = Writer::new(
                Out::at(Vec::new(), 0),
                CURRENT_VERSION,
                false,
                RefTable::default(),
                0,
            );
            w.utf8_units(TYPE_UNICODE, units, per).unwrap();
            let end = w.out.len();
            let mut out = w.out.buf;
            out.truncate(end);
            let n = u32::from_le_bytes(out[1..5].try_into().unwrap()) as usize;
            assert_eq!(n, out.len() - 5);
            out.split_off(5)
        }
        let classes: [&[u32]; 6] = [
            &[0x41, 0x7F, 0x0A],
            &[0x80, 0xE9, 0xFF],
            &[0x100, 0x7FF, 0x3B1],
            &[0x800, 0x2713, 0xD800, 0xDFFF, 0xFFFF],
            &[0x1_0000, 0x1F600, 0x10_FFFF],
            &[0x61; 70],
        ];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for len in [
            0usize, 1, 3, 4, 5, 7, 8, 63, 64, 65, 127, 128, 129, 300, 1000,
        ] {
            for mix in 0..12u32 {
                let units: Vec<u32> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        // Some mixes are long ASCII runs with a rare wide unit.
                        let pick = if mix % 3 < 1 && seed & 63 != 0 {
                            0
                        } else {
                            (seed >> 8) as usize % (1 + mix as usize % 6)
                        };
                        let class = classes[pick.min(5)];
                        class[(seed >> 20) as usize % class.len()]
                    })
                    .collect();
                let want = reference(&units);
                assert_eq!(encode(&units, 4), want, "ucs4 len {len} mix {mix}");
                if units.iter().all(|&c| c < 0x1_0000) {
                    let u2: Vec<u16> = units.iter().map(|&c| c as u16).collect();
                    assert_eq!(encode(&u2, 3), want, "ucs2 len {len} mix {mix}");
                }
                if units.iter().all(|&c| c < 0x100) {
                    let u1: Vec<u8> = units.iter().map(|&c| c as u8).collect();
                    assert_eq!(encode(&u1, 2), want, "ucs1 len {len} mix {mix}");
                }
            }
        }
    }

    /// The reference table against a std map: growth, identity 0, clustered and equal-home keys.
    #[test]
    fn ref_table_matches_a_map() {
        let mut t = RefTable::default();
        let mut m = std::collections::HashMap::new();
        let ids = (0..5000usize)
            .map(|i| 0x7f00_0000_0000 + i * 16)
            .chain((0..3000usize).map(|i| i << 40))
            .chain([0, 8, 1, usize::MAX]);
        for (n, id) in ids.clone().enumerate() {
            let next = m.len() as u32;
            let want = m.get(&id).copied();
            assert_eq!(t.get(id), want, "id {id:#x} at {n}");
            if want.is_none() {
                m.insert(id, next);
                t.insert(id, next);
            }
            assert_eq!(t.len(), m.len());
        }
        for id in ids {
            assert_eq!(t.get(id), m.get(&id).copied());
        }
        t.clear();
        assert_eq!(t.len(), 0);
        assert_eq!(t.get(0), None);
        t.insert(0, 7);
        assert_eq!(t.get(0), Some(7));
        assert_eq!(t.get(16), None);
        t.insert(16, 1);
        assert_eq!(t.get(16), Some(1));
        assert_eq!(t.len(), 2);
        // A clear leaves nothing of the previous dump visible, also when the generation
        // counter wraps around.
        for gen in [5, u32::MAX] {
            t.gen = gen;
            t.clear();
            t.insert(32, 3);
            t.clear();
            assert_eq!(
                (t.get(0), t.get(16), t.get(32)),
                (None, None, None),
                "{gen}"
            );
            assert_ne!(t.gen, 0);
            t.insert(48, 4);
            assert_eq!((t.get(48), t.len()), (Some(4), 1));
            t.clear();
        }
        // Clearing is one increment (the slots are not wiped), and the slots stay allocated.
        let cap = t.capacity();
        for _ in 0..3 {
            t.insert(64, 9);
            t.clear();
        }
        assert_eq!(t.capacity(), cap);
        assert_eq!(t.get(64), None);
    }

    /// The flat header plus the payload is what the encoder writes for that root.
    /// The output buffer: `encode` appends after what `out` held and leaves only the encoding
    /// there (nothing of it on an error); `encode_reusing` writes over a buffer of stale bytes
    /// of any length and reports where the encoding ends; both equal a dump into a fresh Vec,
    /// for values that grow the buffer from tiny to large.
    #[test]
    fn output_buffer_appends_and_reuses() {
        let opts = DumpOptions {
            version: CURRENT_VERSION,
            allow_code: true,
        };
        let long = "é✓".repeat(3000) + &"a".repeat(70);
        let mut items = vec![
            Value::str("x"),
            Value::str(&long),
            Value::int(1 << 40),
            Value::Float(1.5),
            Value::bytes(&[7; 300]),
            Value::frozenset([Value::str("b"), Value::str("a"), Value::int(3)]).unwrap(),
        ];
        for i in 0..2000 {
            items.push(Value::tuple(vec![
                Value::int(i),
                Value::str(&format!("k{i}")),
            ]));
        }
        let values = [Value::None, Value::str("short"), Value::list(items)];
        for v in &values {
            let want = crate::dumps_with(v, &opts).unwrap();
            let mut out = b"prefix".to_vec();
            encode(&mut crate::ValueSource::default(), v, 0, &opts, &mut out).unwrap();
            assert_eq!(&out[..6], b"prefix");
            assert_eq!(&out[6..], &want[..]);
            for stale in [0usize, 3, 100_000] {
                let mut buf = vec![0xAA; stale];
                let n = encode_reusing(&mut crate::ValueSource::default(), v, 0, &opts, &mut buf)
                    .unwrap();
                assert_eq!(&buf[..n], &want[..], "{stale} stale bytes");
                assert!(buf.len() >= stale);
            }
        }
        // A slice before version 5 cannot be written: the error leaves `out` as it was.
        let slice = Value::Slice(std::sync::Arc::new(cellar_value::Slice {
            start: Value::str(&long),
            stop: Value::None,
            step: Value::None,
        }));
        let bad = Value::list(vec![Value::str(&long), slice]);
        let mut out = b"prefix".to_vec();
        let old = DumpOptions {
            version: 4,
            allow_code: true,
        };
        assert!(encode(&mut crate::ValueSource::default(), &bad, 0, &old, &mut out).is_err());
        assert_eq!(out, b"prefix");
    }

    #[test]
    fn flat_header_matches_encode() {
        for version in 0..=5u32 {
            for n in [0usize, 5, 255, 256, 4000] {
                let payload = vec![b'x'; n];
                let mut want = Vec::new();
                encode(
                    &mut crate::ValueSource::default(),
                    &Value::Bytes(payload.clone().into()),
                    0,
                    &DumpOptions {
                        version,
                        allow_code: true,
                    },
                    &mut want,
                )
                .unwrap();
                let mut got = flat_header(Flat::Bytes, n, false, version)
                    .unwrap()
                    .to_vec();
                got.extend_from_slice(&payload);
                assert_eq!(got, want, "bytes, version {version}, {n} bytes");
                let s = "y".repeat(n);
                let mut want = Vec::new();
                encode(
                    &mut crate::ValueSource::default(),
                    &Value::str(&s),
                    0,
                    &DumpOptions {
                        version,
                        allow_code: true,
                    },
                    &mut want,
                )
                .unwrap();
                match flat_header(Flat::Ascii { interned: false }, n, false, version) {
                    Some(h) => {
                        let mut got = h.to_vec();
                        got.extend_from_slice(s.as_bytes());
                        assert_eq!(got, want, "str, version {version}, {n} bytes");
                    }
                    None => assert!(version < 4 || n < 256),
                }
            }
        }
        assert_eq!(
            flat_header(Flat::Ascii { interned: true }, 300, true, 4),
            Some([b'A' | 0x80, 44, 1, 0, 0])
        );
        assert_eq!(
            flat_header(Flat::Bytes, 1, true, 2),
            Some([b's', 1, 0, 0, 0])
        );
    }
}
