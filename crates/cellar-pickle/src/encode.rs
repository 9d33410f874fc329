//! The pickle encoder: ONE writer for every producer, generic over what it walks ([`Source`]).
//!
//! The Rust [`Value`](cellar_value::Value) is one source (`crate::write`); the Python package
//! implements another that presents Python objects. The core owns everything that makes the
//! bytes CPython's: the opcode chosen for each kind at each protocol, framing (frames cut at the
//! first object boundary after 64 KiB of content, payloads of 64 KiB or more written outside
//! frames, as `_pickle.c` does), the memo (PUT/GET, MEMOIZE at 4+, recursive tuples and
//! frozensets popped and fetched back), batching (1000 items, with `_pickle.c`'s exact-list,
//! exact-dict and set loops), the globals CPython writes for complex/set/frozenset/bytes/
//! bytearray per protocol (with `_compat_pickle`'s Python 2 names at 0-2), `save_reduce`'s
//! NEWOBJ/NEWOBJ_EX/copyreg forms, the depth limit and the error messages.
//!
//! The source says what an object is ([`Node`]), gives its items, and its identity for the
//! memo ([`Source::id`]): CPython memoizes every str, bytes, container and reduced object by
//! identity; [`Options::memo_all`] reproduces that (the Python source), while the `Value`
//! source memoizes only values that are actually shared (an `Arc` held twice), which keeps its
//! output small and its memo table empty for trees.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::compat;
use crate::error::PicklingError;
use crate::ops::*;
use crate::registry::Registry;

/// pickle.py's `_FRAME_SIZE_TARGET`.
const FRAME_TARGET: usize = 64 * 1024;
/// pickle.py's `_FRAME_SIZE_MIN`.
const FRAME_MIN: usize = 4;
/// pickle.py's `_BATCHSIZE`.
const BATCH: usize = 1000;
/// Nesting limit of the encoder (CPython's pickler stops near 1000 with RecursionError).
pub const MAX_DUMP_DEPTH: usize = 1500;

/// The message of the depth-limit error.
pub const DEPTH_MESSAGE: &str = "maximum recursion depth exceeded while pickling an object";

/// What one object is, as the encoder needs it.
pub enum Node<'n, O> {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A bigger int, as pickle's `encode_long`: minimal little-endian two's complement. At
    /// protocol 0 the encoder asks [`Source::int_decimal`] for its text.
    BigInt(Cow<'n, [u8]>),
    /// A float.
    Float(f64),
    /// A complex (written as `builtins.complex(re, im)`).
    Complex(f64, f64),
    /// A str: UTF-8, lone surrogates as three bytes (surrogatepass).
    Str(Cow<'n, [u8]>),
    /// bytes.
    Bytes(Cow<'n, [u8]>),
    /// bytearray.
    ByteArray(Cow<'n, [u8]>),
    /// A tuple of this many items ([`Source::items`]).
    Tuple(usize),
    /// An exact list of this many items ([`Source::items`]).
    List(usize),
    /// An exact dict of this many items ([`Source::pairs`]).
    Dict(usize),
    /// A set ([`Source::items`]).
    Set(usize),
    /// A frozenset ([`Source::items`]).
    FrozenSet(usize),
    /// A global written by name (a class, a function, `Ellipsis`...).
    Global {
        /// `__module__`.
        module: Cow<'n, str>,
        /// `__qualname__`.
        name: Cow<'n, str>,
    },
    /// An object written as pickle's `save_reduce` writes a reduce value.
    Reduce(Box<Reduction<O>>),
}

/// A value written without a memo entry, found before the memo is consulted (as CPython's
/// `save` writes None, bools, ints and floats first).
#[derive(Clone, Copy)]
pub enum Scalar {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
}

/// What [`Source::id`] found: a scalar, or the memo identity of anything else.
pub enum Ident {
    /// Written at once, never memoized.
    Scalar(Scalar),
    /// An object with this identity (`None`: cannot be met twice).
    Obj(Option<usize>),
}

/// What a callable of a reduction is.
pub enum Callee<O> {
    /// A global by name, memoized by name.
    Named(String, String),
    /// An object of the source (saved as any other object).
    Obj(O),
}

/// The arguments of a reduction.
pub enum Args<O> {
    /// A tuple object of the source, saved as any other object.
    Obj(O),
    /// A fresh tuple of these items (memoized only with [`Options::memo_all`], as CPython
    /// memoizes the tuple `__reduce__` just built).
    Items(Vec<O>),
}

/// How the object is created.
pub enum Call<O> {
    /// `func(*args)`: REDUCE.
    Reduce {
        /// The callable.
        func: Callee<O>,
        /// Its arguments.
        args: Args<O>,
    },
    /// `cls.__new__(cls, *args)`: NEWOBJ at 2+, `copyreg.__newobj__(cls, *args)` below.
    NewObj {
        /// The class.
        cls: Callee<O>,
        /// Arguments after the class.
        args: Args<O>,
    },
    /// `cls.__new__(cls, *args, **kwargs)`: NEWOBJ_EX at 4+, `copyreg.__newobj_ex__` below.
    NewObjEx {
        /// The class.
        cls: Callee<O>,
        /// Positional arguments.
        args: Args<O>,
        /// Keyword arguments (a dict); `None` writes a fresh empty dict.
        kwargs: Option<O>,
    },
    /// `copyreg._reconstructor(cls, *args)`.
    Reconstructor {
        /// The class.
        cls: Callee<O>,
        /// Arguments after the class.
        args: Vec<O>,
    },
}

/// A reduce value: how to create the object, then its items and state.
pub struct Reduction<O> {
    /// The creation.
    pub call: Call<O>,
    /// Items appended after creation (APPEND/APPENDS).
    pub listitems: Vec<O>,
    /// Items set after creation (SETITEM/SETITEMS).
    pub dictitems: Vec<(O, O)>,
    /// The BUILD state, if any.
    pub state: Option<O>,
}

/// What the encoder walks.
pub trait Source {
    /// A handle to one object.
    type Obj;
    /// The source's error type.
    type Error: From<PicklingError>;
    /// The items of a tuple, list, set or frozenset.
    type Items: Iterator<Item = Result<Self::Obj, Self::Error>>;
    /// The items of a dict.
    type Pairs: Iterator<Item = Result<(Self::Obj, Self::Obj), Self::Error>>;

    /// What `o` is when written at protocol `proto`.
    fn node<'n>(&mut self, o: &'n Self::Obj, proto: u8)
        -> Result<Node<'n, Self::Obj>, Self::Error>;
    /// `o` as a scalar (None, bool, int that fits 64 bits, float: written at once, skipping
    /// [`Source::node`]), or its identity for the memo (`None` for an object that cannot be met
    /// twice).
    fn id(&self, o: &Self::Obj) -> Ident;
    /// `o` (with an identity) was memoized: keep it alive until the dump ends so its identity
    /// is not reused.
    fn retain(&mut self, _o: &Self::Obj) {}
    /// The items of a tuple, list, set or frozenset.
    fn items(&mut self, o: &Self::Obj) -> Result<Self::Items, Self::Error>;
    /// The (key, value) pairs of a dict.
    fn pairs(&mut self, o: &Self::Obj) -> Result<Self::Pairs, Self::Error>;
    /// The decimal text of a [`Node::BigInt`] (protocol 0).
    fn int_decimal(&mut self, o: &Self::Obj) -> Result<String, Self::Error>;
    /// Called before writing a compound object at nesting `depth`; the default refuses
    /// nesting beyond [`MAX_DUMP_DEPTH`] with a [`PicklingError`].
    fn enter(&mut self, depth: usize) -> Result<(), Self::Error> {
        if depth > MAX_DUMP_DEPTH {
            return Err(PicklingError::new(DEPTH_MESSAGE).into());
        }
        Ok(())
    }
}

/// How the encoder writes.
#[derive(Clone, Copy)]
pub struct Options<'r> {
    /// Protocol 0-5.
    pub protocol: u8,
    /// Python 2 names for globals at protocols 0-2 (`fix_imports`).
    pub fix_imports: bool,
    /// Memoize every memoizable object as CPython does (fresh tuples, module-name strings
    /// and the 'latin1' codec name included); otherwise only objects with an identity.
    pub memo_all: bool,
    /// Write dotted names at protocols 0-3 as `getattr(module.parent, last)`, as pickle.py
    /// does for nested classes.
    pub nested_getattr: bool,
    /// Extension codes (copyreg's registry) for globals at protocol 2+.
    pub registry: Option<&'r Registry>,
}

type IdMap = cellar_value::identity::IdMap<u32>;

/// Pickle `root` from `src` with `opts`: the whole pickle (PROTO through STOP).
pub fn encode<S: Source>(
    src: &mut S,
    root: &S::Obj,
    opts: Options<'_>,
) -> Result<Vec<u8>, S::Error> {
    if opts.protocol > crate::HIGHEST_PROTOCOL {
        return Err(PicklingError::new(format!(
            "pickle protocol must be <= {} (got {})",
            crate::HIGHEST_PROTOCOL,
            opts.protocol
        ))
        .into());
    }
    let mut e = Encoder {
        src,
        out: Vec::with_capacity(256),
        proto: opts.protocol,
        opts,
        memo: IdMap::default(),
        names: HashMap::new(),
        strs: HashMap::new(),
        memo_len: 0,
        frame: None,
        depth: 0,
    };
    if e.proto >= 2 {
        e.out.extend_from_slice(&[PROTO, e.proto]);
    }
    e.start_frame();
    e.save(root)?;
    e.out.push(STOP);
    e.end_frame();
    Ok(e.out)
}

struct Encoder<'s, 'r, S: Source> {
    src: &'s mut S,
    out: Vec<u8>,
    proto: u8,
    opts: Options<'r>,
    /// Identity -> memo index.
    memo: IdMap,
    /// Globals written by name -> memo index.
    names: HashMap<(String, String), u32>,
    /// Strings the encoder itself writes (module names, 'latin1') -> memo index (memo_all).
    strs: HashMap<String, u32>,
    memo_len: u32,
    /// Where the current frame's 9-byte header was reserved (protocol 4+).
    frame: Option<usize>,
    depth: usize,
}

type Res<S> = Result<(), <S as Source>::Error>;

impl<S: Source> Encoder<'_, '_, S> {
    // ---- framing ----

    fn start_frame(&mut self) {
        if self.proto >= 4 {
            self.frame = Some(self.out.len());
            self.out.extend_from_slice(&[0u8; 9]);
        }
    }

    fn end_frame(&mut self) {
        if let Some(s) = self.frame.take() {
            let len = self.out.len() - s - 9;
            if len >= FRAME_MIN {
                self.out[s] = FRAME;
                self.out[s + 1..s + 9].copy_from_slice(&(len as u64).to_le_bytes());
            } else {
                self.out.drain(s..s + 9);
            }
        }
    }

    /// At an object boundary: a new frame once the current one holds 64 KiB (its content
    /// only, as `_pickle.c` counts it).
    #[inline(always)]
    fn boundary(&mut self) {
        if let Some(s) = self.frame {
            if self.out.len() - s - 9 >= FRAME_TARGET {
                self.end_frame();
                self.start_frame();
            }
        }
    }

    /// An opcode with its payload; a payload of 64 KiB or more goes outside frames.
    #[inline(always)]
    fn payload(&mut self, header: &[u8], data: &[u8]) {
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

    /// Memoize `o` (its identity, or a PUT only with memo_all).
    #[inline]
    fn memoize(&mut self, o: &S::Obj, id: Option<usize>) {
        match id {
            Some(id) => {
                let idx = self.put();
                self.memo.insert(id, idx);
                self.src.retain(o);
            }
            None if self.opts.memo_all => {
                self.put();
            }
            None => {}
        }
    }

    /// A fresh object the encoder built (never met again): PUT with memo_all only.
    #[inline]
    fn memoize_fresh(&mut self) {
        if self.opts.memo_all {
            self.put();
        }
    }

    /// After writing a reduction: `o` already memoized while writing its arguments (a
    /// recursive reference) is fetched back, else memoized now.
    fn memoize_reduced(&mut self, o: &S::Obj, id: Option<usize>) {
        if let Some(i) = id {
            if let Some(&idx) = self.memo.get(&i) {
                self.out.push(POP);
                self.get(idx);
                return;
            }
        }
        self.memoize(o, id);
    }

    fn enter(&mut self) -> Res<S> {
        self.depth += 1;
        self.src.enter(self.depth)
    }

    // ---- objects ----

    fn save(&mut self, o: &S::Obj) -> Res<S> {
        self.boundary();
        let id = match self.src.id(o) {
            Ident::Scalar(s) => {
                match s {
                    Scalar::None => self.out.push(NONE),
                    Scalar::Bool(b) => self.save_bool(b),
                    Scalar::Int(v) => self.save_int(v),
                    Scalar::Float(f) => self.save_float(f),
                }
                return Ok(());
            }
            Ident::Obj(id) => id,
        };
        if let Some(i) = id {
            if let Some(&idx) = self.memo.get(&i) {
                self.get(idx);
                return Ok(());
            }
        }
        let node = self.src.node(o, self.proto)?;
        match node {
            Node::None => self.out.push(NONE),
            Node::Bool(b) => self.save_bool(b),
            Node::Int(v) => self.save_int(v),
            Node::BigInt(bytes) => {
                if self.proto >= 2 {
                    self.save_long_bytes(&bytes)?;
                } else {
                    drop(bytes);
                    let text = self.src.int_decimal(o)?;
                    self.out.push(LONG);
                    self.out.extend_from_slice(text.as_bytes());
                    self.out.extend_from_slice(b"L\n");
                }
            }
            Node::Float(f) => self.save_float(f),
            Node::Complex(re, im) => {
                self.enter()?;
                self.save_global("builtins", "complex")?;
                self.boundary();
                self.tuple_start(2);
                self.boundary();
                self.save_float(re);
                self.boundary();
                self.save_float(im);
                self.tuple_end(2);
                self.memoize_fresh();
                self.out.push(REDUCE);
                self.memoize(o, id);
                self.depth -= 1;
            }
            Node::Str(s) => {
                self.save_str(&s)?;
                drop(s);
                self.memoize(o, id);
            }
            Node::Bytes(b) => {
                if self.proto < 3 {
                    self.enter()?;
                    self.save_bytes_reduce(&b)?;
                    drop(b);
                    self.memoize_reduced(o, id);
                    self.depth -= 1;
                } else {
                    self.save_bytes_op(&b)?;
                    drop(b);
                    self.memoize(o, id);
                }
            }
            Node::ByteArray(b) => {
                self.enter()?;
                if self.proto >= 5 {
                    let mut h = [BYTEARRAY8, 0, 0, 0, 0, 0, 0, 0, 0];
                    h[1..].copy_from_slice(&(b.len() as u64).to_le_bytes());
                    self.payload(&h, &b);
                    drop(b);
                    self.memoize(o, id);
                } else {
                    self.save_global("builtins", "bytearray")?;
                    if b.is_empty() {
                        self.empty_tuple();
                    } else {
                        self.boundary();
                        self.tuple_start(1);
                        // A fresh bytes object.
                        self.boundary();
                        if self.proto < 3 {
                            self.save_bytes_reduce(&b)?;
                        } else {
                            self.save_bytes_op(&b)?;
                        }
                        self.memoize_fresh();
                        self.tuple_end(1);
                        self.memoize_fresh();
                    }
                    drop(b);
                    self.out.push(REDUCE);
                    self.memoize_reduced(o, id);
                }
                self.depth -= 1;
            }
            Node::Tuple(n) => {
                if n == 0 {
                    self.empty_tuple();
                } else {
                    self.enter()?;
                    self.save_tuple(o, id, n)?;
                    self.depth -= 1;
                }
            }
            Node::List(n) => {
                self.enter()?;
                if self.proto >= 1 {
                    self.out.push(EMPTY_LIST);
                } else {
                    self.out.extend_from_slice(&[MARK, LIST]);
                }
                self.memoize(o, id);
                let items = self.src.items(o)?;
                self.batch_list_exact(items, n)?;
                self.depth -= 1;
            }
            Node::Dict(n) => {
                self.enter()?;
                if self.proto >= 1 {
                    self.out.push(EMPTY_DICT);
                } else {
                    self.out.extend_from_slice(&[MARK, DICT]);
                }
                self.memoize(o, id);
                let pairs = self.src.pairs(o)?;
                self.batch_dict_exact(pairs, n)?;
                self.depth -= 1;
            }
            Node::Set(n) => {
                self.enter()?;
                if self.proto < 4 {
                    self.save_set_reduce(o, "set", n)?;
                    self.memoize_reduced(o, id);
                } else {
                    self.out.push(EMPTY_SET);
                    self.memoize(o, id);
                    if n > 0 {
                        let mut items = self.src.items(o)?;
                        loop {
                            self.out.push(MARK);
                            let mut i = 0;
                            for it in items.by_ref() {
                                self.save(&it?)?;
                                i += 1;
                                if i == BATCH {
                                    break;
                                }
                            }
                            self.out.push(ADDITEMS);
                            if i < BATCH {
                                break;
                            }
                        }
                    }
                }
                self.depth -= 1;
            }
            Node::FrozenSet(n) => {
                self.enter()?;
                if self.proto < 4 {
                    self.save_set_reduce(o, "frozenset", n)?;
                    self.memoize_reduced(o, id);
                } else {
                    self.out.push(MARK);
                    for it in self.src.items(o)? {
                        self.save(&it?)?;
                    }
                    match id.and_then(|i| self.memo.get(&i).copied()) {
                        Some(idx) => {
                            // Recursive: written while writing its items.
                            self.out.push(POP_MARK);
                            self.get(idx);
                        }
                        None => {
                            self.out.push(FROZENSET);
                            self.memoize(o, id);
                        }
                    }
                }
                self.depth -= 1;
            }
            Node::Global { module, name } => {
                if id.is_some() {
                    if self.write_global(&module, &name)? {
                        self.memoize(o, id);
                    }
                } else {
                    self.save_global(&module, &name)?;
                }
            }
            Node::Reduce(r) => {
                self.enter()?;
                self.save_reduction(o, id, *r)?;
                self.depth -= 1;
            }
        }
        Ok(())
    }

    #[inline]
    fn save_bool(&mut self, b: bool) {
        if self.proto >= 2 {
            self.out.push(if b { NEWTRUE } else { NEWFALSE });
        } else {
            self.out
                .extend_from_slice(if b { b"I01\n" } else { b"I00\n" });
        }
    }

    #[inline]
    fn save_int(&mut self, v: i64) {
        if self.proto >= 1 {
            if (0..=0xff).contains(&v) {
                self.out.extend_from_slice(&[BININT1, v as u8]);
                return;
            }
            if (0..=0xffff).contains(&v) {
                self.out.push(BININT2);
                self.out.extend_from_slice(&(v as u16).to_le_bytes());
                return;
            }
            if let Ok(v) = i32::try_from(v) {
                self.out.push(BININT);
                self.out.extend_from_slice(&v.to_le_bytes());
                return;
            }
        }
        if self.proto >= 2 {
            let bytes = encode_long_i64(v);
            self.out.extend_from_slice(&[LONG1, bytes.len() as u8]);
            self.out.extend_from_slice(&bytes);
            return;
        }
        if i32::try_from(v).is_ok() {
            self.out.push(INT);
            self.out.extend_from_slice(v.to_string().as_bytes());
            self.out.push(b'\n');
        } else {
            self.out.push(LONG);
            self.out.extend_from_slice(v.to_string().as_bytes());
            self.out.extend_from_slice(b"L\n");
        }
    }

    fn save_long_bytes(&mut self, bytes: &[u8]) -> Res<S> {
        if bytes.len() < 256 {
            self.out.extend_from_slice(&[LONG1, bytes.len() as u8]);
        } else {
            let n = i32::try_from(bytes.len())
                .map_err(|_| PicklingError::new("int too large to pickle"))?;
            self.out.push(LONG4);
            self.out.extend_from_slice(&n.to_le_bytes());
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    #[inline(always)]
    fn save_float(&mut self, f: f64) {
        if self.proto >= 1 {
            let mut op = [BINFLOAT, 0, 0, 0, 0, 0, 0, 0, 0];
            op[1..].copy_from_slice(&f.to_be_bytes());
            self.out.extend_from_slice(&op);
        } else {
            self.out.push(FLOAT);
            self.out
                .extend_from_slice(cellar_value::float_repr(f).as_bytes());
            self.out.push(b'\n');
        }
    }

    /// A str's opcode and payload (not memoized).
    #[inline]
    fn save_str(&mut self, b: &[u8]) -> Res<S> {
        if self.proto == 0 {
            let s = cellar_value::PyStr::from_utf8_surrogatepass(b)
                .map_err(|_| PicklingError::new("a str that is not UTF-8 (surrogatepass)"))?;
            self.out.push(UNICODE);
            crate::text::raw_unicode_escape_encode(&s, &mut self.out);
            self.out.push(b'\n');
            return Ok(());
        }
        let n = b.len();
        if n < 256 && self.proto >= 4 {
            self.out.extend_from_slice(&[SHORT_BINUNICODE, n as u8]);
            self.out.extend_from_slice(b);
        } else if n > u32::MAX as usize && self.proto >= 4 {
            let mut h = [BINUNICODE8, 0, 0, 0, 0, 0, 0, 0, 0];
            h[1..].copy_from_slice(&(n as u64).to_le_bytes());
            self.payload(&h, b);
        } else {
            let n32 = u32::try_from(n).map_err(|_| {
                PicklingError::new(
                    "serializing a string larger than 4 GiB requires pickle protocol 4 or higher",
                )
            })?;
            let mut h = [BINUNICODE, 0, 0, 0, 0];
            h[1..].copy_from_slice(&n32.to_le_bytes());
            self.payload(&h, b);
        }
        Ok(())
    }

    /// A str the encoder writes itself (module names, 'latin1'): memoized by text with
    /// memo_all, as CPython finds the same str object again.
    fn save_own_str(&mut self, s: &str) -> Res<S> {
        self.boundary();
        if self.opts.memo_all {
            if let Some(&idx) = self.strs.get(s) {
                self.get(idx);
                return Ok(());
            }
            self.save_str(s.as_bytes())?;
            let idx = self.put();
            self.strs.insert(s.to_owned(), idx);
            return Ok(());
        }
        self.save_str(s.as_bytes())
    }

    /// bytes at protocol 3+: SHORT_BINBYTES / BINBYTES / BINBYTES8 (not memoized).
    fn save_bytes_op(&mut self, b: &[u8]) -> Res<S> {
        let n = b.len();
        if n < 256 {
            self.out.extend_from_slice(&[SHORT_BINBYTES, n as u8]);
            self.out.extend_from_slice(b);
        } else if n > u32::MAX as usize && self.proto >= 4 {
            let mut h = [BINBYTES8, 0, 0, 0, 0, 0, 0, 0, 0];
            h[1..].copy_from_slice(&(n as u64).to_le_bytes());
            self.payload(&h, b);
        } else {
            let n32 = u32::try_from(n).map_err(|_| {
                PicklingError::new(
                    "serializing a bytes object larger than 4 GiB requires pickle protocol 4 or higher",
                )
            })?;
            let mut h = [BINBYTES, 0, 0, 0, 0];
            h[1..].copy_from_slice(&n32.to_le_bytes());
            self.payload(&h, b);
        }
        Ok(())
    }

    /// bytes at protocols 0-2: `bytes()` or `_codecs.encode(latin1 text, 'latin1')`, up to
    /// and including REDUCE (the caller memoizes).
    fn save_bytes_reduce(&mut self, b: &[u8]) -> Res<S> {
        if b.is_empty() {
            self.save_global("builtins", "bytes")?;
            self.boundary();
            self.empty_tuple();
        } else {
            self.save_global("_codecs", "encode")?;
            self.boundary();
            self.tuple_start(2);
            self.boundary();
            let text = cellar_value::PyStr::from_latin1(b);
            self.save_str(text.as_bytes())?;
            self.memoize_fresh();
            self.save_own_str("latin1")?;
            self.tuple_end(2);
            self.memoize_fresh();
        }
        self.out.push(REDUCE);
        Ok(())
    }

    /// set/frozenset below protocol 4: `builtins.set([items])` up to REDUCE.
    fn save_set_reduce(&mut self, o: &S::Obj, name: &str, n: usize) -> Res<S> {
        self.save_global("builtins", name)?;
        self.boundary();
        self.tuple_start(1);
        self.boundary();
        if self.proto >= 1 {
            self.out.push(EMPTY_LIST);
        } else {
            self.out.extend_from_slice(&[MARK, LIST]);
        }
        self.memoize_fresh();
        let items = self.src.items(o)?;
        self.batch_list_exact(items, n)?;
        self.tuple_end(1);
        self.memoize_fresh();
        self.out.push(REDUCE);
        Ok(())
    }

    fn empty_tuple(&mut self) {
        if self.proto >= 1 {
            self.out.push(EMPTY_TUPLE);
        } else {
            self.out.extend_from_slice(&[MARK, TUPLE]);
        }
    }

    /// MARK before a fresh tuple's `n` items when the protocol has no TUPLE1-3 for them.
    fn tuple_start(&mut self, n: usize) {
        if !(self.proto >= 2 && (1..=3).contains(&n)) {
            self.out.push(MARK);
        }
    }

    fn tuple_end(&mut self, n: usize) {
        if self.proto >= 2 && (1..=3).contains(&n) {
            self.out.push(TUPLE1 + (n as u8) - 1);
        } else {
            self.out.push(TUPLE);
        }
    }

    /// A non-empty tuple object, with `_pickle.c`'s handling of a tuple met again while its
    /// items were written.
    fn save_tuple(&mut self, o: &S::Obj, id: Option<usize>, n: usize) -> Res<S> {
        let short = n <= 3 && self.proto >= 2;
        if !short {
            self.out.push(MARK);
        }
        let mut written = 0usize;
        for it in self.src.items(o)? {
            self.save(&it?)?;
            written += 1;
        }
        if let Some(idx) = id.and_then(|i| self.memo.get(&i).copied()) {
            if short {
                for _ in 0..written {
                    self.out.push(POP);
                }
            } else if self.proto >= 1 {
                self.out.push(POP_MARK);
            } else {
                for _ in 0..=written {
                    self.out.push(POP);
                }
            }
            self.get(idx);
            return Ok(());
        }
        if short {
            self.out.push(TUPLE1 + (written as u8) - 1);
        } else {
            self.out.push(TUPLE);
        }
        self.memoize(o, id);
        Ok(())
    }

    /// A fresh tuple of `items` after an optional named global (not an object of the source).
    fn save_fresh_tuple(&mut self, head: Option<&Callee<S::Obj>>, items: &[S::Obj]) -> Res<S> {
        let n = items.len() + usize::from(head.is_some());
        self.boundary();
        if n == 0 {
            self.empty_tuple();
            return Ok(());
        }
        self.tuple_start(n);
        if let Some(h) = head {
            self.save_callee(h)?;
        }
        for it in items {
            self.save(it)?;
        }
        self.tuple_end(n);
        self.memoize_fresh();
        Ok(())
    }

    fn save_args(&mut self, head: Option<&Callee<S::Obj>>, args: &Args<S::Obj>) -> Res<S> {
        match (head, args) {
            (None, Args::Obj(t)) => self.save(t),
            (None, Args::Items(items)) => self.save_fresh_tuple(None, items),
            (Some(_), Args::Obj(_)) => {
                Err(PicklingError::new("internal: a class with a tuple object of arguments").into())
            }
            (Some(h), Args::Items(items)) => self.save_fresh_tuple(Some(h), items),
        }
    }

    fn save_callee(&mut self, c: &Callee<S::Obj>) -> Res<S> {
        match c {
            Callee::Named(m, n) => self.save_global(m, n),
            Callee::Obj(o) => self.save(o),
        }
    }

    /// pickle's `save_reduce`.
    fn save_reduction(&mut self, o: &S::Obj, id: Option<usize>, r: Reduction<S::Obj>) -> Res<S> {
        match &r.call {
            Call::Reduce { func, args } => {
                self.save_callee(func)?;
                self.save_args(None, args)?;
                self.out.push(REDUCE);
            }
            Call::NewObj { cls, args } => {
                if self.proto >= 2 {
                    self.save_callee(cls)?;
                    self.save_args(None, args)?;
                    self.out.push(NEWOBJ);
                } else {
                    self.save_global("copyreg", "__newobj__")?;
                    match args {
                        Args::Items(items) => self.save_fresh_tuple(Some(cls), items)?,
                        Args::Obj(t) => {
                            // (cls, *t) as a fresh tuple.
                            let items: Vec<S::Obj> =
                                self.src.items(t)?.collect::<Result<_, _>>()?;
                            self.save_fresh_tuple(Some(cls), &items)?;
                        }
                    }
                    self.out.push(REDUCE);
                }
            }
            Call::NewObjEx { cls, args, kwargs } => {
                let three = self.proto < 4;
                if three {
                    self.save_global("copyreg", "__newobj_ex__")?;
                    self.boundary();
                    self.tuple_start(3);
                }
                self.save_callee(cls)?;
                self.save_args(None, args)?;
                match kwargs {
                    Some(k) => self.save(k)?,
                    None => {
                        self.boundary();
                        if self.proto >= 1 {
                            self.out.push(EMPTY_DICT);
                        } else {
                            self.out.extend_from_slice(&[MARK, DICT]);
                        }
                        self.memoize_fresh();
                    }
                }
                if three {
                    self.tuple_end(3);
                    self.memoize_fresh();
                    self.out.push(REDUCE);
                } else {
                    self.out.push(NEWOBJ_EX);
                }
            }
            Call::Reconstructor { cls, args } => {
                self.save_global("copyreg", "_reconstructor")?;
                self.save_fresh_tuple(Some(cls), args)?;
                self.out.push(REDUCE);
            }
        }
        self.memoize_reduced(o, id);
        if !r.listitems.is_empty() {
            self.batch_appends(r.listitems.into_iter().map(Ok))?;
        }
        if !r.dictitems.is_empty() {
            self.batch_setitems(r.dictitems.into_iter().map(Ok))?;
        }
        if let Some(state) = r.state {
            self.save(&state)?;
            self.out.push(BUILD);
        }
        Ok(())
    }

    // ---- batching ----

    /// An exact list's items as `_pickle.c`'s `batch_list_exact`: one item alone is APPEND;
    /// otherwise MARK ... APPENDS batches of 1000.
    fn batch_list_exact(&mut self, items: S::Items, n: usize) -> Res<S> {
        if self.proto == 0 || n <= 1 {
            return self.batch_appends(items);
        }
        let mut items = items.peekable();
        while items.peek().is_some() {
            self.out.push(MARK);
            for it in items.by_ref().take(BATCH) {
                self.save(&it?)?;
            }
            self.out.push(APPENDS);
        }
        Ok(())
    }

    /// Items from an iterator as `_pickle.c`'s `batch_list`: batches of 1000, a batch of one
    /// item as APPEND.
    fn batch_appends<I: Iterator<Item = Result<S::Obj, S::Error>>>(&mut self, items: I) -> Res<S> {
        if self.proto == 0 {
            for it in items {
                self.save(&it?)?;
                self.out.push(APPEND);
            }
            return Ok(());
        }
        let mut items = items.peekable();
        while let Some(first) = items.next() {
            let first = first?;
            if items.peek().is_none() {
                self.save(&first)?;
                self.out.push(APPEND);
                break;
            }
            self.out.push(MARK);
            self.save(&first)?;
            for it in items.by_ref().take(BATCH - 1) {
                self.save(&it?)?;
            }
            self.out.push(APPENDS);
        }
        Ok(())
    }

    /// An exact dict's items as `_pickle.c`'s `batch_dict_exact`: one item alone is SETITEM;
    /// otherwise MARK ... SETITEMS batches of 1000, repeated while the last batch was full.
    fn batch_dict_exact(&mut self, pairs: S::Pairs, n: usize) -> Res<S> {
        if self.proto == 0 || n <= 1 {
            return self.batch_setitems(pairs);
        }
        let mut pairs = pairs;
        loop {
            self.out.push(MARK);
            let mut i = 0;
            for p in pairs.by_ref() {
                let (k, v) = p?;
                self.save(&k)?;
                self.save(&v)?;
                i += 1;
                if i == BATCH {
                    break;
                }
            }
            self.out.push(SETITEMS);
            if i < BATCH {
                break;
            }
        }
        Ok(())
    }

    /// Pairs from an iterator as `_pickle.c`'s `batch_dict`.
    fn batch_setitems<I: Iterator<Item = Result<(S::Obj, S::Obj), S::Error>>>(
        &mut self,
        pairs: I,
    ) -> Res<S> {
        if self.proto == 0 {
            for p in pairs {
                let (k, v) = p?;
                self.save(&k)?;
                self.save(&v)?;
                self.out.push(SETITEM);
            }
            return Ok(());
        }
        let mut pairs = pairs.peekable();
        while let Some(first) = pairs.next() {
            let (k, v) = first?;
            if pairs.peek().is_none() {
                self.save(&k)?;
                self.save(&v)?;
                self.out.push(SETITEM);
                break;
            }
            self.out.push(MARK);
            self.save(&k)?;
            self.save(&v)?;
            for p in pairs.by_ref().take(BATCH - 1) {
                let (k, v) = p?;
                self.save(&k)?;
                self.save(&v)?;
            }
            self.out.push(SETITEMS);
        }
        Ok(())
    }

    // ---- globals ----

    /// A global by name, memoized by name (a second use is a GET, as CPython's memo of the
    /// class or function object).
    fn save_global(&mut self, module: &str, name: &str) -> Res<S> {
        self.boundary();
        if let Some(&idx) = self.names.get(&(module.to_owned(), name.to_owned())) {
            self.get(idx);
            return Ok(());
        }
        if self.write_global(module, name)? {
            let idx = self.put();
            self.names.insert((module.to_owned(), name.to_owned()), idx);
        }
        Ok(())
    }

    /// The opcodes naming `module.name` (not memoized); false for an extension code (which
    /// CPython does not memoize).
    fn write_global(&mut self, module: &str, name: &str) -> Result<bool, S::Error> {
        if self.proto >= 2 {
            if let Some(code) = self
                .opts
                .registry
                .and_then(|r| r.extension_code(module, name))
            {
                if code <= 0xff {
                    self.out.extend_from_slice(&[EXT1, code as u8]);
                } else if code <= 0xffff {
                    self.out.push(EXT2);
                    self.out.extend_from_slice(&(code as u16).to_le_bytes());
                } else {
                    self.out.push(EXT4);
                    self.out.extend_from_slice(&code.to_le_bytes());
                }
                return Ok(false);
            }
        }
        if self.proto >= 4 {
            self.save_own_str(module)?;
            self.boundary();
            self.save_str(name.as_bytes())?;
            self.memoize_fresh();
            self.out.push(STACK_GLOBAL);
        } else if self.opts.nested_getattr && name.contains('.') {
            let (parent, last) = name.rsplit_once('.').unwrap_or((name, ""));
            self.save_global("builtins", "getattr")?;
            self.tuple_start(2);
            self.boundary();
            self.save_global(module, parent)?;
            self.boundary();
            self.save_str(last.as_bytes())?;
            self.memoize_fresh();
            self.tuple_end(2);
            self.memoize_fresh();
            self.out.push(REDUCE);
        } else {
            let (m, n) = if self.proto < 3 && self.opts.fix_imports {
                compat::py3_to_py2(module, name)
            } else {
                (module, name)
            };
            if m.contains('\n') || n.contains('\n') {
                return Err(PicklingError::new(format!(
                    "can't pickle global identifier '{module}.{name}' using pickle protocol {}",
                    self.proto
                ))
                .into());
            }
            self.out.push(GLOBAL);
            self.out.extend_from_slice(m.as_bytes());
            self.out.push(b'\n');
            self.out.extend_from_slice(n.as_bytes());
            self.out.push(b'\n');
        }
        Ok(true)
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
