//! The pickle encoder core: ONE writer for every producer, generic over what it walks
//! ([`Source`]).
//!
//! The Rust [`Value`](cellar_value::Value) is one source (`crate::write`); the Python package
//! implements another over Python objects (`cellar-python`'s `pickle_dump`). The core owns
//! everything that decides the bytes: the opcode chosen for each kind at each protocol (0-5),
//! framing at protocol 4+ (a frame is cut at the first object boundary once its content reaches
//! 64 KiB, payloads of 64 KiB or more are written outside frames: where CPython's C pickler
//! cuts them), the memo (PUT/GET by the identity the source gives, globals by name), batching
//! in 1000s (CPython's `batch_list_exact`/`batch_dict_exact` for lists/dicts/sets, the generic
//! iterator batching for reduce items), the globals CPython writes for complex, set, frozenset,
//! bytes and bytearray at each protocol, `_compat_pickle`'s names at 0-2, extension codes, the
//! nesting limit and the error messages.
//!
//! A source says what an object is ([`Source::kind`]), hands out items by iteration, names the
//! identity the memo keys on ([`Source::memo_id`]), and writes objects that are not basic
//! types (class instances, inert objects, registered reductions) through the core's reduce
//! primitives ([`Source::save_object`] with [`Encoder::save`], [`Encoder::save_global`],
//! [`Encoder::end_reduce`], [`Encoder::appends`], ...).

use std::borrow::Cow;
use std::collections::HashMap;

use cellar_value::{float_repr, PyStr};

use crate::ops::*;

/// pickle.py's `_FRAME_SIZE_TARGET`.
pub const FRAME_TARGET: usize = 64 * 1024;
/// pickle.py's `_FRAME_SIZE_MIN`.
const FRAME_MIN: usize = 4;
/// pickle.py's `_BATCHSIZE`.
pub const BATCH: usize = 1000;
/// Nesting limit of the encoder (CPython's pickler stops near 1000 with RecursionError).
pub const MAX_DUMP_DEPTH: usize = 1500;
/// The message of the nesting error.
pub const DEPTH_MESSAGE: &str = "maximum recursion depth exceeded while pickling an object";

/// What one object is, as the encoder needs it.
#[derive(Debug)]
pub enum Kind {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A bigger int: the core asks [`Source::big_int`] for its bytes or digits.
    BigInt,
    /// A float.
    Float(f64),
    /// A complex (written as `builtins.complex(re, im)`).
    Complex(f64, f64),
    /// A str ([`Source::data`]: UTF-8, lone surrogates as three bytes: surrogatepass).
    Str,
    /// bytes ([`Source::data`]).
    Bytes,
    /// bytearray ([`Source::data`]).
    ByteArray,
    /// A tuple of this many items ([`Source::items`]).
    Tuple(usize),
    /// A list ([`Source::items`]).
    List,
    /// A dict ([`Source::pairs`]).
    Dict,
    /// A set ([`Source::items`]).
    Set,
    /// A frozenset ([`Source::items`]).
    FrozenSet,
    /// Anything else: the source writes it with [`Source::save_object`].
    Object,
}

/// A big int as the protocol needs it.
#[derive(Debug)]
pub enum BigIntRepr {
    /// pickle's `encode_long`: minimal little-endian two's complement (protocol 2+).
    Le(Vec<u8>),
    /// Decimal digits with sign (protocols 0-1).
    Decimal(String),
}

/// What the encoder walks. `Obj` is a cheap handle on one object.
pub trait Source: Sized {
    /// A handle on one object.
    type Obj: Clone;
    /// Items of a tuple, list, set or frozenset, in the order they are written.
    type Seq: ExactSizeIterator<Item = Self::Obj>;
    /// Key/value pairs of a dict, in order.
    type Pairs: ExactSizeIterator<Item = (Self::Obj, Self::Obj)>;
    /// The error type of the producer.
    type Error;

    /// Whether every object written gets a memo slot as in CPython (byte-identical output for
    /// object graphs, temporaries such as a set's item list included), or only objects with a
    /// [`Source::memo_id`] (a tree whose sharing is explicit).
    const CPYTHON_MEMO: bool;

    /// What `obj` is.
    fn kind(&mut self, obj: &Self::Obj) -> Result<Kind, Self::Error>;
    /// The payload of a [`Kind::Str`] (UTF-8 with surrogatepass), [`Kind::Bytes`] or
    /// [`Kind::ByteArray`]; asked only once the memo did not have the object.
    fn data<'a>(&mut self, obj: &'a Self::Obj) -> Result<Cow<'a, [u8]>, Self::Error>;
    /// The identity the memo keys on (None: never memoized).
    fn memo_id(&self, obj: &Self::Obj) -> Option<usize>;
    /// `obj` became a memo entry: keep it alive while the memo holds its identity.
    fn retain(&mut self, _obj: &Self::Obj) {}
    /// Items of a tuple, list, set or frozenset.
    fn items(&mut self, obj: &Self::Obj) -> Result<Self::Seq, Self::Error>;
    /// Pairs of a dict.
    fn pairs(&mut self, obj: &Self::Obj) -> Result<Self::Pairs, Self::Error>;
    /// A [`Kind::BigInt`]'s bytes (`le`) or decimal digits.
    fn big_int(&mut self, obj: &Self::Obj, le: bool) -> Result<BigIntRepr, Self::Error>;
    /// Write a [`Kind::Object`] with the encoder's primitives.
    fn save_object(enc: &mut Encoder<Self>, obj: &Self::Obj) -> Result<(), Self::Error>;
    /// A str object for `text` that the core writes as an argument of its own (bytes' latin-1
    /// text and the `'latin1'` codec name below protocol 3), so it is memoized by identity as
    /// CPython's (small strs are singletons there, `interned` ones shared); None: the core
    /// writes the text itself.
    fn make_str(&mut self, _text: &str, _interned: bool) -> Option<Self::Obj> {
        None
    }
    /// copyreg's extension code for a global (protocol 2+), if registered.
    fn extension_code(&self, _module: &str, _name: &str) -> Option<i32> {
        None
    }
    /// Whether there is stack left to go one level deeper.
    fn stack_ok(&self) -> bool {
        true
    }
    /// A PicklingError with this message.
    fn error(&self, msg: String) -> Self::Error;
    /// The nesting error ([`DEPTH_MESSAGE`]).
    fn depth_error(&self) -> Self::Error {
        self.error(DEPTH_MESSAGE.to_owned())
    }
}

/// The memo: identity (address) -> memo index.
type AddrMap = cellar_value::identity::IdMap<u32>;

/// The encoder: output buffer, frame, memo and depth, over a [`Source`].
pub struct Encoder<S: Source> {
    src: S,
    out: Vec<u8>,
    proto: u8,
    fix_imports: bool,
    frame: Option<usize>,
    memo: AddrMap,
    memo_len: u32,
    /// Globals written by name: `(module, name)` -> memo index.
    names: HashMap<(String, String), u32>,
    /// str constants written by the core (STACK_GLOBAL module names, `'latin1'`) -> memo index.
    consts: HashMap<String, u32>,
    depth: usize,
}

/// `pickle.dumps(obj, protocol, fix_imports=fix_imports)` over `src`.
pub fn encode<S: Source>(
    src: S,
    obj: &S::Obj,
    protocol: u8,
    fix_imports: bool,
) -> Result<Vec<u8>, S::Error> {
    if protocol > 5 {
        return Err(src.error(format!("pickle protocol must be <= 5 (got {protocol})")));
    }
    let mut e = Encoder {
        src,
        out: Vec::with_capacity(256),
        proto: protocol,
        fix_imports,
        frame: None,
        memo: AddrMap::default(),
        memo_len: 0,
        names: HashMap::new(),
        consts: HashMap::new(),
        depth: 0,
    };
    if protocol >= 2 {
        e.out.extend_from_slice(&[PROTO, protocol]);
    }
    if protocol >= 4 {
        e.start_frame();
    }
    e.save(obj)?;
    e.out.push(STOP);
    e.end_frame();
    Ok(e.out)
}

impl<S: Source> Encoder<S> {
    /// The source.
    pub fn source(&mut self) -> &mut S {
        &mut self.src
    }

    /// The protocol being written.
    pub fn protocol(&self) -> u8 {
        self.proto
    }

    /// Write one opcode byte.
    #[inline]
    pub fn op(&mut self, op: u8) {
        self.out.push(op);
    }

    // ---- framing ----

    fn start_frame(&mut self) {
        self.frame = Some(self.out.len());
        self.out.extend_from_slice(&[0; 9]);
    }

    /// Close the current frame: write its header, or drop the reserved bytes for a frame under
    /// 4 bytes.
    fn end_frame(&mut self) {
        if let Some(start) = self.frame.take() {
            let len = self.out.len() - start - 9;
            if len >= FRAME_MIN {
                self.out[start] = FRAME;
                self.out[start + 1..start + 9].copy_from_slice(&(len as u64).to_le_bytes());
            } else {
                self.out.drain(start..start + 9);
            }
        }
    }

    /// At an object boundary: a new frame once the current one's content reaches the target.
    #[inline(always)]
    fn boundary(&mut self) {
        if let Some(start) = self.frame {
            if self.out.len() - start - 9 >= FRAME_TARGET {
                self.end_frame();
                self.start_frame();
            }
        }
    }

    /// An opcode with a payload; a payload of 64 KiB or more goes outside frames.
    #[inline(always)]
    fn write_payload(&mut self, header: &[u8], data: &[u8]) {
        if self.frame.is_some() && data.len() >= FRAME_TARGET {
            self.end_frame();
            self.out.extend_from_slice(header);
            self.out.extend_from_slice(data);
            self.start_frame();
        } else {
            self.out.extend_from_slice(header);
            self.out.extend_from_slice(data);
        }
    }

    // ---- memo ----

    /// A memo slot for the object just written; its index.
    fn put(&mut self) -> u32 {
        let idx = self.memo_len;
        self.memo_len += 1;
        if self.proto >= 4 {
            self.out.push(MEMOIZE);
        } else if self.proto >= 1 {
            if idx < 256 {
                self.out.extend_from_slice(&[BINPUT, idx as u8]);
            } else {
                self.out.push(LONG_BINPUT);
                self.out.extend_from_slice(&idx.to_le_bytes());
            }
        } else {
            self.out.extend_from_slice(format!("p{idx}\n").as_bytes());
        }
        idx
    }

    /// A memo slot for a temporary the core made (CPython memoizes it; a tree source does not).
    fn put_temp(&mut self) {
        if S::CPYTHON_MEMO {
            self.put();
        }
    }

    fn get(&mut self, idx: u32) {
        if self.proto >= 1 {
            if idx < 256 {
                self.out.extend_from_slice(&[BINGET, idx as u8]);
            } else {
                self.out.push(LONG_BINGET);
                self.out.extend_from_slice(&idx.to_le_bytes());
            }
        } else {
            self.out.extend_from_slice(format!("g{idx}\n").as_bytes());
        }
    }

    /// Memoize `obj` (if the source gives it an identity).
    pub fn memoize(&mut self, obj: &S::Obj) {
        if let Some(id) = self.src.memo_id(obj) {
            let idx = self.put();
            self.memo.insert(id, idx);
            self.src.retain(obj);
        }
    }

    #[inline(always)]
    fn memo_get(&self, obj: &S::Obj) -> Option<u32> {
        if self.memo.is_empty() {
            return None;
        }
        self.src
            .memo_id(obj)
            .and_then(|id| self.memo.get(&id).copied())
    }

    /// After a reduction's REDUCE/NEWOBJ: if `obj` was written while writing its own arguments
    /// (a cycle through them), drop this copy and fetch that one; else memoize `obj`.
    pub fn end_reduce(&mut self, obj: &S::Obj) {
        if let Some(idx) = self.memo_get(obj) {
            self.out.push(POP);
            self.get(idx);
        } else {
            self.memoize(obj);
        }
    }

    // ---- nesting ----

    fn enter(&mut self) -> Result<(), S::Error> {
        self.depth += 1;
        if self.depth > MAX_DUMP_DEPTH || !self.src.stack_ok() {
            self.depth -= 1;
            return Err(self.src.depth_error());
        }
        Ok(())
    }

    // ---- objects ----

    /// Write one object (pickle's `save`).
    pub fn save(&mut self, obj: &S::Obj) -> Result<(), S::Error> {
        self.boundary();
        let kind = self.src.kind(obj)?;
        match kind {
            Kind::None => {
                self.out.push(NONE);
                return Ok(());
            }
            Kind::Bool(b) => {
                if self.proto >= 2 {
                    self.out.push(if b { NEWTRUE } else { NEWFALSE });
                } else {
                    self.out
                        .extend_from_slice(if b { b"I01\n" } else { b"I00\n" });
                }
                return Ok(());
            }
            Kind::Int(v) => {
                self.save_int(v);
                return Ok(());
            }
            Kind::Float(f) => {
                self.save_float(f);
                return Ok(());
            }
            _ => {}
        }
        if let Some(idx) = self.memo_get(obj) {
            self.get(idx);
            return Ok(());
        }
        match kind {
            Kind::None | Kind::Bool(_) | Kind::Int(_) | Kind::Float(_) => Ok(()),
            Kind::BigInt => self.save_big_int(obj),
            Kind::Str => {
                let s = self.src.data(obj)?;
                self.save_str(&s)?;
                self.memoize(obj);
                Ok(())
            }
            Kind::Bytes => {
                let b = self.src.data(obj)?;
                self.save_bytes(&b)?;
                self.memoize(obj);
                Ok(())
            }
            Kind::ByteArray => {
                let b = self.src.data(obj)?;
                self.save_bytearray(&b)?;
                self.memoize(obj);
                Ok(())
            }
            Kind::Complex(re, im) => {
                self.save_global("builtins", "complex")?;
                self.boundary();
                self.tuple_start(2);
                self.boundary();
                self.save_float(re);
                self.boundary();
                self.save_float(im);
                self.tuple_end(2);
                self.put_temp();
                self.out.push(REDUCE);
                self.memoize(obj);
                Ok(())
            }
            Kind::Tuple(n) => self.nested(|e| e.save_tuple(obj, n)),
            Kind::List => self.nested(|e| {
                e.open(obj, EMPTY_LIST, LIST);
                let items = e.src.items(obj)?;
                e.batch_list_exact(items)
            }),
            Kind::Dict => self.nested(|e| {
                e.open(obj, EMPTY_DICT, DICT);
                let pairs = e.src.pairs(obj)?;
                e.batch_dict_exact(pairs)
            }),
            Kind::Set => self.nested(|e| e.save_set(obj)),
            Kind::FrozenSet => self.nested(|e| e.save_frozenset(obj)),
            Kind::Object => self.nested(|e| S::save_object(e, obj)),
        }
    }

    #[inline(always)]
    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), S::Error>,
    ) -> Result<(), S::Error> {
        self.enter()?;
        let r = f(self);
        self.depth -= 1;
        r
    }

    #[inline(always)]
    fn save_int(&mut self, v: i64) {
        if self.proto >= 1 {
            if (0..=0xff).contains(&v) {
                self.out.extend_from_slice(&[BININT1, v as u8]);
                return;
            }
            if (0..=0xffff).contains(&v) {
                let b = (v as u16).to_le_bytes();
                self.out.extend_from_slice(&[BININT2, b[0], b[1]]);
                return;
            }
            if let Ok(v) = i32::try_from(v) {
                let b = v.to_le_bytes();
                self.out
                    .extend_from_slice(&[BININT, b[0], b[1], b[2], b[3]]);
                return;
            }
        }
        self.save_wide_int(v);
    }

    fn save_wide_int(&mut self, v: i64) {
        if self.proto >= 2 {
            let b = encode_long_i64(v);
            self.out.extend_from_slice(&[LONG1, b.len() as u8]);
            self.out.extend_from_slice(&b);
            return;
        }
        self.save_decimal(&v.to_string(), i32::try_from(v).is_ok());
    }

    fn save_decimal(&mut self, text: &str, small: bool) {
        if small {
            self.out.push(INT);
            self.out.extend_from_slice(text.as_bytes());
            self.out.push(b'\n');
        } else {
            self.out.push(LONG);
            self.out.extend_from_slice(text.as_bytes());
            self.out.extend_from_slice(b"L\n");
        }
    }

    fn save_big_int(&mut self, obj: &S::Obj) -> Result<(), S::Error> {
        match self.src.big_int(obj, self.proto >= 2)? {
            BigIntRepr::Le(bytes) => {
                if bytes.len() < 256 {
                    self.out.extend_from_slice(&[LONG1, bytes.len() as u8]);
                } else {
                    let n = i32::try_from(bytes.len())
                        .map_err(|_| self.src.error("long too large to pickle".into()))?;
                    self.out.push(LONG4);
                    self.out.extend_from_slice(&n.to_le_bytes());
                }
                self.out.extend_from_slice(&bytes);
            }
            BigIntRepr::Decimal(text) => self.save_decimal(&text, false),
        }
        Ok(())
    }

    #[inline(always)]
    fn save_float(&mut self, f: f64) {
        if self.proto >= 1 {
            let mut b = [BINFLOAT; 9];
            b[1..].copy_from_slice(&f.to_be_bytes());
            self.out.extend_from_slice(&b);
        } else {
            self.out.push(FLOAT);
            self.out.extend_from_slice(float_repr(f).as_bytes());
            self.out.push(b'\n');
        }
    }

    /// A str's opcodes (UTF-8 with surrogatepass), not memoized.
    fn save_str(&mut self, data: &[u8]) -> Result<(), S::Error> {
        if self.proto == 0 {
            // pickle.py: raw-unicode-escape with \\, NUL, \n, \r and ^Z escaped too.
            let s = PyStr::from_utf8_surrogatepass(data)
                .map_err(|e| self.src.error(format!("can't pickle str: {e:?}")))?;
            self.out.push(UNICODE);
            crate::text::raw_unicode_escape_encode(&s, &mut self.out);
            self.out.push(b'\n');
            return Ok(());
        }
        let n = data.len();
        let mut header = [0u8; 9];
        let hlen = if n < 256 && self.proto >= 4 {
            header[..2].copy_from_slice(&[SHORT_BINUNICODE, n as u8]);
            2
        } else if n > u32::MAX as usize && self.proto >= 4 {
            header[0] = BINUNICODE8;
            header[1..9].copy_from_slice(&(n as u64).to_le_bytes());
            9
        } else {
            let n32 = u32::try_from(n).map_err(|_| {
                self.src.error(
                    "serializing a string larger than 4 GiB requires pickle protocol 4 or higher"
                        .into(),
                )
            })?;
            header[0] = BINUNICODE;
            header[1..5].copy_from_slice(&n32.to_le_bytes());
            5
        };
        self.write_payload(&header[..hlen], data);
        Ok(())
    }

    /// A str constant of the core's own (memoized by content, as one str object would be).
    fn save_const_str(&mut self, s: &str) -> Result<(), S::Error> {
        if S::CPYTHON_MEMO {
            if let Some(&idx) = self.consts.get(s) {
                self.get(idx);
                return Ok(());
            }
            self.save_str(s.as_bytes())?;
            let idx = self.put();
            self.consts.insert(s.to_owned(), idx);
            Ok(())
        } else {
            self.save_str(s.as_bytes())
        }
    }

    /// A fresh str the core made (a temporary: memoized under [`Source::CPYTHON_MEMO`]).
    fn save_temp_str(&mut self, data: &[u8]) -> Result<(), S::Error> {
        self.boundary();
        self.save_str(data)?;
        self.put_temp();
        Ok(())
    }

    /// bytes' opcodes (without memoizing the bytes object itself).
    fn save_bytes(&mut self, data: &[u8]) -> Result<(), S::Error> {
        if self.proto < 3 {
            if data.is_empty() {
                self.save_global("builtins", "bytes")?;
                self.boundary();
                self.tuple_start(0);
                self.tuple_end(0);
            } else {
                self.save_global("_codecs", "encode")?;
                self.boundary();
                self.tuple_start(2);
                let text: String = data.iter().map(|&b| b as char).collect();
                match self.src.make_str(&text, false) {
                    Some(o) => self.save(&o)?,
                    None => self.save_temp_str(text.as_bytes())?,
                }
                match self.src.make_str("latin1", true) {
                    Some(o) => self.save(&o)?,
                    None => {
                        self.boundary();
                        self.save_const_str("latin1")?
                    }
                }
                self.tuple_end(2);
                self.put_temp();
            }
            self.out.push(REDUCE);
            return Ok(());
        }
        let n = data.len();
        let mut header = [0u8; 9];
        let hlen = if n < 256 {
            header[..2].copy_from_slice(&[SHORT_BINBYTES, n as u8]);
            2
        } else if n > u32::MAX as usize && self.proto >= 4 {
            header[0] = BINBYTES8;
            header[1..9].copy_from_slice(&(n as u64).to_le_bytes());
            9
        } else {
            let n32 = u32::try_from(n).map_err(|_| {
                self.src.error(
                    "serializing a bytes object larger than 4 GiB requires pickle protocol 4 or higher"
                        .into(),
                )
            })?;
            header[0] = BINBYTES;
            header[1..5].copy_from_slice(&n32.to_le_bytes());
            5
        };
        self.write_payload(&header[..hlen], data);
        Ok(())
    }

    fn save_bytearray(&mut self, data: &[u8]) -> Result<(), S::Error> {
        if self.proto >= 5 {
            let mut header = [BYTEARRAY8, 0, 0, 0, 0, 0, 0, 0, 0];
            header[1..].copy_from_slice(&(data.len() as u64).to_le_bytes());
            self.write_payload(&header, data);
            return Ok(());
        }
        self.save_global("builtins", "bytearray")?;
        self.boundary();
        if data.is_empty() {
            self.tuple_start(0);
            self.tuple_end(0);
        } else {
            self.tuple_start(1);
            self.boundary();
            self.save_bytes(data)?;
            self.put_temp();
            self.tuple_end(1);
            self.put_temp();
        }
        self.out.push(REDUCE);
        Ok(())
    }

    /// MARK before a tuple of `n` items when the protocol has no EMPTY_TUPLE/TUPLE1-3 for it.
    pub fn tuple_start(&mut self, n: usize) {
        if self.proto == 0 || (n > 3 || self.proto < 2) && n > 0 {
            self.out.push(MARK);
        }
    }

    /// The opcode closing a tuple of `n` items begun with [`Encoder::tuple_start`].
    pub fn tuple_end(&mut self, n: usize) {
        if n == 0 {
            self.out
                .push(if self.proto >= 1 { EMPTY_TUPLE } else { TUPLE });
        } else if self.proto >= 2 && n <= 3 {
            self.out.push(TUPLE1 + n as u8 - 1);
        } else {
            self.out.push(TUPLE);
        }
    }

    /// A tuple made of `items` (a reduction's argument tuple the source builds from parts):
    /// its opcodes and, under [`Source::CPYTHON_MEMO`], a memo slot.
    pub fn save_tuple_of(&mut self, items: &[S::Obj]) -> Result<(), S::Error> {
        let n = items.len();
        self.boundary();
        self.tuple_start(n);
        for it in items {
            self.save(it)?;
        }
        self.tuple_end(n);
        if n > 0 {
            self.put_temp();
        }
        Ok(())
    }

    fn save_tuple(&mut self, obj: &S::Obj, n: usize) -> Result<(), S::Error> {
        self.tuple_start(n);
        if n == 0 {
            self.tuple_end(0);
            return Ok(());
        }
        for it in self.src.items(obj)? {
            self.save(&it)?;
        }
        if let Some(idx) = self.memo_get(obj) {
            // The tuple was written while writing its items (recursion through a list/dict).
            if self.proto >= 2 && n <= 3 {
                for _ in 0..n {
                    self.out.push(POP);
                }
            } else if self.proto >= 1 {
                self.out.push(POP_MARK);
            } else {
                for _ in 0..=n {
                    self.out.push(POP);
                }
            }
            self.get(idx);
            return Ok(());
        }
        self.tuple_end(n);
        self.memoize(obj);
        Ok(())
    }

    /// An empty list/dict (EMPTY_* at 1+, MARK + LIST/DICT at 0), memoized before its items.
    fn open(&mut self, obj: &S::Obj, empty: u8, from_mark: u8) {
        if self.proto >= 1 {
            self.out.push(empty);
        } else {
            self.out.extend_from_slice(&[MARK, from_mark]);
        }
        self.memoize(obj);
    }

    fn save_set(&mut self, obj: &S::Obj) -> Result<(), S::Error> {
        let items = self.src.items(obj)?;
        if self.proto < 4 {
            self.save_global("builtins", "set")?;
            self.reduce_list_arg(items)?;
            self.memoize(obj);
            return Ok(());
        }
        self.out.push(EMPTY_SET);
        self.memoize(obj);
        // CPython's save_set: batches of 1000 while the last one was full.
        let mut items = items.peekable();
        if items.peek().is_none() {
            return Ok(());
        }
        loop {
            self.out.push(MARK);
            let mut n = 0;
            for it in items.by_ref() {
                self.save(&it)?;
                n += 1;
                if n == BATCH {
                    break;
                }
            }
            self.out.push(ADDITEMS);
            if n < BATCH {
                return Ok(());
            }
        }
    }

    fn save_frozenset(&mut self, obj: &S::Obj) -> Result<(), S::Error> {
        let items = self.src.items(obj)?;
        if self.proto < 4 {
            self.save_global("builtins", "frozenset")?;
            self.reduce_list_arg(items)?;
            self.memoize(obj);
            return Ok(());
        }
        self.out.push(MARK);
        for it in items {
            self.save(&it)?;
        }
        if let Some(idx) = self.memo_get(obj) {
            // Recursive: the frozenset was written while writing its items.
            self.out.push(POP_MARK);
            self.get(idx);
            return Ok(());
        }
        self.out.push(FROZENSET);
        self.memoize(obj);
        Ok(())
    }

    /// `(list(items),)` then REDUCE: set and frozenset below protocol 4.
    fn reduce_list_arg(&mut self, items: S::Seq) -> Result<(), S::Error> {
        self.boundary();
        self.tuple_start(1);
        self.boundary();
        if self.proto >= 1 {
            self.out.push(EMPTY_LIST);
        } else {
            self.out.extend_from_slice(&[MARK, LIST]);
        }
        self.put_temp();
        self.batch_list_exact(items)?;
        self.tuple_end(1);
        self.put_temp();
        self.out.push(REDUCE);
        Ok(())
    }

    /// An exact list's items as CPython's `batch_list_exact` writes them: one item alone is
    /// APPEND; otherwise MARK ... APPENDS batches of 1000.
    fn batch_list_exact(&mut self, mut items: S::Seq) -> Result<(), S::Error> {
        let total = items.len();
        if total == 0 {
            return Ok(());
        }
        if self.proto == 0 || total == 1 {
            return self.appends(items);
        }
        loop {
            self.out.push(MARK);
            for it in items.by_ref().take(BATCH) {
                self.save(&it)?;
            }
            self.out.push(APPENDS);
            if items.len() == 0 {
                return Ok(());
            }
        }
    }

    /// An exact dict's items as CPython's `batch_dict_exact` writes them: one pair alone is
    /// SETITEM; otherwise MARK ... SETITEMS batches of 1000, repeated while the last batch
    /// was full.
    fn batch_dict_exact(&mut self, mut pairs: S::Pairs) -> Result<(), S::Error> {
        let total = pairs.len();
        if total == 0 {
            return Ok(());
        }
        if self.proto == 0 || total == 1 {
            return self.setitems(pairs);
        }
        loop {
            self.out.push(MARK);
            let mut n = 0;
            for (k, v) in pairs.by_ref().take(BATCH) {
                self.save(&k)?;
                self.save(&v)?;
                n += 1;
            }
            self.out.push(SETITEMS);
            if n < BATCH {
                return Ok(());
            }
        }
    }

    /// Items appended to a reduced object (pickle's generic `_batch_appends`): batches of 1000,
    /// a batch of one item as APPEND; one APPEND per item at protocol 0.
    pub fn appends(&mut self, items: impl Iterator<Item = S::Obj>) -> Result<(), S::Error> {
        let mut items = items.peekable();
        if self.proto == 0 {
            for it in items {
                self.save(&it)?;
                self.out.push(APPEND);
            }
            return Ok(());
        }
        while let Some(first) = items.next() {
            if items.peek().is_none() {
                self.save(&first)?;
                self.out.push(APPEND);
                return Ok(());
            }
            self.out.push(MARK);
            self.save(&first)?;
            let mut n = 1;
            while n < BATCH {
                let Some(it) = items.next() else { break };
                self.save(&it)?;
                n += 1;
            }
            self.out.push(APPENDS);
        }
        Ok(())
    }

    /// Pairs set on a reduced object (pickle's generic `_batch_setitems`).
    pub fn setitems(
        &mut self,
        pairs: impl Iterator<Item = (S::Obj, S::Obj)>,
    ) -> Result<(), S::Error> {
        let mut pairs = pairs.peekable();
        if self.proto == 0 {
            for (k, v) in pairs {
                self.save(&k)?;
                self.save(&v)?;
                self.out.push(SETITEM);
            }
            return Ok(());
        }
        while let Some((k, v)) = pairs.next() {
            if pairs.peek().is_none() {
                self.save(&k)?;
                self.save(&v)?;
                self.out.push(SETITEM);
                return Ok(());
            }
            self.out.push(MARK);
            self.save(&k)?;
            self.save(&v)?;
            let mut n = 1;
            while n < BATCH {
                let Some((k, v)) = pairs.next() else { break };
                self.save(&k)?;
                self.save(&v)?;
                n += 1;
            }
            self.out.push(SETITEMS);
        }
        Ok(())
    }

    // ---- globals ----

    /// A global by name, memoized by name (a reduction's callable or class the source only
    /// knows by name): a second use is a GET, as CPython's memo of the class object gives.
    pub fn save_global(&mut self, module: &str, name: &str) -> Result<(), S::Error> {
        if let Some(&idx) = self.names.get(&(module.to_owned(), name.to_owned())) {
            self.get(idx);
            return Ok(());
        }
        if self.write_global(module, name)? {
            return Ok(());
        }
        let idx = self.put();
        self.names.insert((module.to_owned(), name.to_owned()), idx);
        Ok(())
    }

    /// The global `module.name` written as the object `obj` (a class or function) and
    /// memoized as it.
    pub fn save_global_as(
        &mut self,
        obj: &S::Obj,
        module: &str,
        name: &str,
    ) -> Result<(), S::Error> {
        if !self.write_global(module, name)? {
            self.memoize(obj);
        }
        Ok(())
    }

    /// The opcodes naming `module.name`; true when it was an extension code (not memoized).
    fn write_global(&mut self, module: &str, name: &str) -> Result<bool, S::Error> {
        if self.proto >= 2 {
            if let Some(code) = self.src.extension_code(module, name) {
                if code <= 0xff {
                    self.out.extend_from_slice(&[EXT1, code as u8]);
                } else if code <= 0xffff {
                    self.out.push(EXT2);
                    self.out.extend_from_slice(&(code as u16).to_le_bytes());
                } else {
                    self.out.push(EXT4);
                    self.out.extend_from_slice(&code.to_le_bytes());
                }
                return Ok(true);
            }
        }
        if self.proto >= 4 {
            self.boundary();
            self.save_const_str(module)?;
            self.save_temp_str(name.as_bytes())?;
            self.out.push(STACK_GLOBAL);
            return Ok(false);
        }
        if S::CPYTHON_MEMO {
            if let Some((parent, last)) = name.rsplit_once('.') {
                // pickle.py below protocol 4: getattr(module.parent, last).
                self.save_global("builtins", "getattr")?;
                self.tuple_start(2);
                self.save_global(module, parent)?;
                self.save_temp_str(last.as_bytes())?;
                self.tuple_end(2);
                self.out.push(REDUCE);
                return Ok(false);
            }
        }
        let (m, n) = if self.proto < 3 && self.fix_imports {
            crate::compat::py3_to_py2(module, name)
        } else {
            (module, name)
        };
        for part in [m, n] {
            if part.contains('\n') {
                return Err(self.src.error(format!(
                    "can't pickle global name {part:?} containing a newline"
                )));
            }
        }
        self.out.push(GLOBAL);
        self.out.extend_from_slice(m.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(n.as_bytes());
        self.out.push(b'\n');
        Ok(false)
    }
}

/// pickle's `encode_long` of an i64: minimal little-endian two's complement (b'' for 0).
pub fn encode_long_i64(v: i64) -> Vec<u8> {
    if v == 0 {
        return Vec::new();
    }
    let bits = 64 - v.unsigned_abs().leading_zeros() as usize;
    let n = ((bits >> 3) + 1).min(8);
    let mut buf = v.to_le_bytes()[..n].to_vec();
    if n == 8 && bits == 64 {
        // |i64::MIN| needs 9 bytes by pickle's rule: (64 >> 3) + 1.
        buf.push(0xff);
    }
    trim_sign_byte(&mut buf);
    buf
}

/// Negative numbers: drop a redundant sign byte, as pickle.py does.
pub fn trim_sign_byte(buf: &mut Vec<u8>) {
    let n = buf.len();
    if n > 1 && buf[n - 1] == 0xff && buf[n - 2] & 0x80 != 0 {
        buf.pop();
    }
}
