//! The decoder's [`Sink`]: what the one opcode loop ([`crate::decode`]) asks a builder to make.
//!
//! The loop owns everything about the format and the safety policy: opcodes, frames, the
//! stack, marks, the memo, limits (`max_depth`, `max_bytes`), global resolution through
//! [`crate::policy`], the argument shapes of the basic-type constructors, the pattern markers
//! (`copyreg._reconstructor`, `__newobj__`, `__newobj_ex__`, `getattr(cls, '__new__')`,
//! `functools.partial`, which never reach a sink as values), the BUILD rules and every error
//! message of its own. A sink only *makes* things: scalars, strings, containers (with handles,
//! so APPEND/SETITEM/ADDITEMS/BUILD reach memoized ones), the values of globals the caller
//! allowed, objects of allowed classes, inert objects, persistent ids and out-of-band buffers.
//! It answers a few questions about what it made ([`Sink::shape`], [`Sink::items`],
//! [`Sink::text`], [`Sink::data`]) so the loop can check argument shapes without knowing the
//! handle type.
//!
//! Two sinks exist: the Rust [`Value`](cellar_value::Value) one (`value_sink.rs`, behind
//! [`crate::loads`]) and Python objects (in the `cellar-python` crate). serde's `Visitor`,
//! jiter's one parser feeding two builders and `cellar-marshal`'s `Sink` are the models.

use cellar_value::PyStr;

use crate::error::UnpicklingError;
use crate::inert::Construct;
use crate::policy::Known;
use crate::registry::Registry;
use crate::text::{DecodeErrors, StringEncoding};

/// What the loop may learn about a value a sink made (for argument-shape checks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int`, with its value as a finite float if it has one (for `complex(re, im)`).
    Int(Option<f64>),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str,
    /// `bytes`.
    Bytes,
    /// `bytearray`.
    ByteArray,
    /// A `tuple` of this many items.
    Tuple(usize),
    /// A `list`.
    List,
    /// A `dict` with this many items.
    Dict(usize),
    /// A `set`.
    Set,
    /// A `frozenset`.
    FrozenSet,
    /// Anything else (objects, inert objects, values of allowed globals, ...).
    Other,
}

/// A global as the loop hands it to a sink: its Python 3 name, a small id (stable for one
/// decode: the same name has the same id) and, when the caller allowed it, what the sink's own
/// [`Sink::resolve`] returned. `allowed: None` means "keep it inert" (only in inert mode, or a
/// default global used in a way the policy keeps inert).
pub struct GlobalRef<'a, G> {
    /// Index of the global in the loop's table (for caching per global).
    pub id: u32,
    /// Module, after `fix_imports`.
    pub module: &'a str,
    /// Qualified name.
    pub name: &'a str,
    /// The caller's consent, as the sink resolved it.
    pub allowed: Option<&'a G>,
}

/// A sink's own answer for a global ([`Sink::lookup`]), for sinks whose caller resolves names
/// itself (a Python `Unpickler.find_class` override).
pub enum Lookup<G> {
    /// No own answer: the policy decides by name (the default table, then [`Sink::resolve`]).
    ByName,
    /// The caller's lookup returned the very object behind a default global (a basic type, a
    /// constant or a pattern marker), under whatever name: the policy's rules for that global
    /// apply (a marker stays a loop-side marker). `Some` when the caller also consented to the
    /// object itself (its own rules come first, the consent serves what they refuse).
    Default(Known, Option<G>),
    /// The caller's lookup returned this object: a global the caller allowed.
    Allowed(G),
    /// The caller's lookup left it unresolved: inert in inert mode, else refused.
    Unresolved,
}

/// The new items of an APPENDS / SETITEMS / ADDITEMS, borrowed in place from the loop's stack
/// (all of them values the sink made): what [`Sink::append_in_place`] and friends receive, so
/// a sink that only needs references (a Python list or dict) fills the target without the loop
/// moving the items into a buffer first.
pub struct Items<'a, H>(pub(crate) &'a [crate::read::Slot<H>]);

impl<'a, H> Items<'a, H> {
    /// How many items (keys and values count one each for SETITEMS).
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are none.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The items in order.
    #[inline(always)]
    pub fn iter(&self) -> impl Iterator<Item = &'a H> + 'a {
        self.0.iter().filter_map(crate::read::Slot::handle)
    }
    /// SETITEMS: the (key, value) pairs in order (the loop checked the count is even).
    #[inline(always)]
    pub fn pairs(&self) -> impl Iterator<Item = (&'a H, &'a H)> + 'a {
        self.0
            .chunks_exact(2)
            .filter_map(|p| Some((p[0].handle()?, p[1].handle()?)))
    }
}

/// The answer to NEXT_BUFFER.
pub enum Buffer<H> {
    /// No `buffers` argument was given.
    NotGiven,
    /// The buffers are used up.
    Exhausted,
    /// The next buffer.
    Next(H),
}

/// The builder the decoder drives. Every method that makes something returns a handle; the
/// loop keeps handles on its stack and in its memo and gives them back to the sink when they
/// go into a container, become arguments or the result. Errors of the sink's own (an
/// unhashable key, a constructor that failed, a Python exception) are `Self::Error`; the
/// loop's errors convert into it with `From<UnpicklingError>`.
pub trait Sink {
    /// A value the sink made.
    type Handle: Clone;
    /// What the sink resolved an allowed global to (an allowed class or function).
    type Global: Clone;
    /// What [`Sink::finish`] returns.
    type Output;
    /// The sink's error type.
    type Error: From<UnpicklingError>;

    /// Attaches the offset of the failing opcode to an error from this sink (called once, on
    /// the way out).
    fn locate(&self, e: Self::Error, _offset: usize) -> Self::Error {
        e
    }

    // ---- globals -------------------------------------------------------------------------

    /// The caller's consent for `module.name` (an `allow=` entry, a registration): `None` if
    /// the caller did not allow it. Default globals never get here unless the caller's
    /// registry also names them.
    fn resolve(&mut self, module: &str, name: &str) -> Result<Option<Self::Global>, Self::Error>;
    /// The sink's own answer for a global the pickle names (`raw_module.raw_name` as the data
    /// spells it, `module.name` after `fix_imports`), asked once per distinct name and decode
    /// before the policy's table. The default, [`Lookup::ByName`], leaves it to the policy.
    #[inline]
    fn lookup(
        &mut self,
        _raw: (&str, &str),
        _module: &str,
        _name: &str,
    ) -> Result<Lookup<Self::Global>, Self::Error> {
        Ok(Lookup::ByName)
    }
    /// The `(module, name)` an extension code (EXT1/2/4) names, if registered.
    fn extension(&self, code: i32) -> Option<(String, String)>;
    /// A registry for the error-path scan that says how a refused global is used (extension
    /// codes): `None` scans with the default one.
    fn registry(&self) -> Option<&Registry> {
        None
    }

    // ---- scalars -------------------------------------------------------------------------

    /// `None`.
    fn none(&mut self) -> Result<Self::Handle, Self::Error>;
    /// `True` / `False`.
    fn bool(&mut self, v: bool) -> Result<Self::Handle, Self::Error>;
    /// An int that fits 64 bits.
    fn int(&mut self, v: i64) -> Result<Self::Handle, Self::Error>;
    /// A larger int, as little-endian two's complement bytes (LONG1/LONG4's payload).
    fn big_int(&mut self, le: &[u8]) -> Result<Self::Handle, Self::Error>;
    /// A float.
    fn float(&mut self, v: f64) -> Result<Self::Handle, Self::Error>;
    /// `complex(re, im)`.
    fn complex(&mut self, re: f64, im: f64) -> Result<Self::Handle, Self::Error>;
    /// A str from UTF-8 with lone surrogates allowed (`surrogatepass`, as CPython decodes
    /// BINUNICODE); a decoding failure is the sink's UnicodeDecodeError.
    fn str_utf8(&mut self, b: &[u8]) -> Result<Self::Handle, Self::Error>;
    /// A str the loop decoded itself (UNICODE's raw-unicode-escape, PERSID).
    fn str(&mut self, s: PyStr) -> Result<Self::Handle, Self::Error>;
    /// A Python 2 string (STRING, BINSTRING, SHORT_BINSTRING) under `encoding`/`errors`
    /// (`StringEncoding::Bytes`: bytes).
    fn py2_string(
        &mut self,
        raw: &[u8],
        encoding: StringEncoding,
        errors: DecodeErrors,
    ) -> Result<Self::Handle, Self::Error>;
    /// `bytes`.
    fn bytes(&mut self, b: &[u8]) -> Result<Self::Handle, Self::Error>;
    /// `bytearray`.
    fn bytearray(&mut self, b: &[u8]) -> Result<Self::Handle, Self::Error>;
    /// A constant global: `Ellipsis`, `StopIteration` or `NotImplemented`.
    fn constant(&mut self, which: Known) -> Result<Self::Handle, Self::Error>;
    /// `slice(start, stop, step)`.
    fn slice(
        &mut self,
        start: Self::Handle,
        stop: Self::Handle,
        step: Self::Handle,
    ) -> Result<Self::Handle, Self::Error>;

    // ---- containers ----------------------------------------------------------------------

    /// A tuple of `items`.
    fn tuple(&mut self, items: Vec<Self::Handle>) -> Result<Self::Handle, Self::Error>;
    /// A list of `items`.
    fn list(&mut self, items: Vec<Self::Handle>) -> Result<Self::Handle, Self::Error>;
    /// A dict of `kv` (keys and values interleaved: k0, v0, k1, v1, ...).
    fn dict(&mut self, kv: Vec<Self::Handle>) -> Result<Self::Handle, Self::Error>;
    /// A set of `items` (unhashable items are the sink's TypeError).
    fn set(&mut self, items: Vec<Self::Handle>) -> Result<Self::Handle, Self::Error>;
    /// A frozenset of `items`.
    fn frozenset(&mut self, items: Vec<Self::Handle>) -> Result<Self::Handle, Self::Error>;
    /// APPEND/APPENDS: `false` if `target` is not something the sink lets items be appended
    /// to (a list, or an object it created through an allowed class). `items` is the loop's
    /// reusable buffer: the sink takes the items out of it (whatever it leaves is dropped).
    fn append(
        &mut self,
        target: &Self::Handle,
        items: &mut Vec<Self::Handle>,
    ) -> Result<bool, Self::Error>;
    /// APPEND/APPENDS with the items borrowed in place (the loop drops them afterwards):
    /// `Some(ok)` as [`Sink::append`] answers, `None` to be given them as a buffer instead
    /// (the default; then [`Sink::append`] is called).
    #[inline(always)]
    fn append_in_place(
        &mut self,
        _target: &Self::Handle,
        _items: Items<'_, Self::Handle>,
    ) -> Result<Option<bool>, Self::Error> {
        Ok(None)
    }
    /// SETITEM/SETITEMS in place, as [`Sink::append_in_place`].
    #[inline(always)]
    fn set_items_in_place(
        &mut self,
        _target: &Self::Handle,
        _kv: Items<'_, Self::Handle>,
    ) -> Result<Option<bool>, Self::Error> {
        Ok(None)
    }
    /// ADDITEMS in place, as [`Sink::append_in_place`].
    #[inline(always)]
    fn add_items_in_place(
        &mut self,
        _target: &Self::Handle,
        _items: Items<'_, Self::Handle>,
    ) -> Result<Option<bool>, Self::Error> {
        Ok(None)
    }
    /// SETITEM/SETITEMS (keys and values interleaved in `kv`, a reusable buffer as for
    /// [`Sink::append`]): `false` if `target` takes no items.
    fn set_items(
        &mut self,
        target: &Self::Handle,
        kv: &mut Vec<Self::Handle>,
    ) -> Result<bool, Self::Error>;
    /// ADDITEMS (`items` as for [`Sink::append`]): `false` if `target` is not a set.
    fn add_items(
        &mut self,
        target: &Self::Handle,
        items: &mut Vec<Self::Handle>,
    ) -> Result<bool, Self::Error>;

    // ---- questions about what the sink made ----------------------------------------------

    /// What `h` is, for argument-shape checks.
    fn shape(&self, h: &Self::Handle) -> Shape;
    /// The items of a tuple, list, set or frozenset (`set(x)`, REDUCE's argument tuple).
    fn items(&self, h: &Self::Handle) -> Option<Vec<Self::Handle>>;
    /// The text of a str.
    fn text(&self, h: &Self::Handle) -> Option<PyStr>;
    /// The content of bytes or a bytearray.
    fn data(&self, h: &Self::Handle) -> Option<Vec<u8>>;
    /// The global an inert object describes (inert mode: REDUCE on an inert object).
    fn inert_name(&self, h: &Self::Handle) -> Option<(String, String)>;

    // ---- globals and objects -------------------------------------------------------------

    /// A global used as a value: the allowed object, or (with `allowed: None`) an inert
    /// description of it.
    fn global(&mut self, g: GlobalRef<'_, Self::Global>) -> Result<Self::Handle, Self::Error>;
    /// An object of `cls` made the way `construct` says (REDUCE / INST / OBJ: `cls(*args)`,
    /// NEWOBJ(_EX) and `__newobj__`: `cls.__new__(cls, *args, **kwargs)`), or an inert one
    /// when `cls.allowed` is `None`. `Construct::Reconstructor` is never passed here.
    fn object(
        &mut self,
        cls: GlobalRef<'_, Self::Global>,
        construct: Construct,
        args: Vec<Self::Handle>,
        kwargs: Option<Self::Handle>,
    ) -> Result<Self::Handle, Self::Error>;
    /// `copyreg._reconstructor(cls, base, state)` for an allowed (or inert) `cls`; `base` is a
    /// basic type or a reconstructor base from the policy table.
    fn reconstruct(
        &mut self,
        cls: GlobalRef<'_, Self::Global>,
        base: GlobalRef<'_, Self::Global>,
        state: Self::Handle,
    ) -> Result<Self::Handle, Self::Error>;
    /// `builtins.range(*ints)` (the loop checked the shape).
    fn range(
        &mut self,
        g: GlobalRef<'_, Self::Global>,
        args: Vec<Self::Handle>,
    ) -> Result<Self::Handle, Self::Error>;
    /// Inert mode: `callee(*args)` where `callee` is an inert object describing global `g`.
    fn inert_call(
        &mut self,
        g: GlobalRef<'_, Self::Global>,
        callee: Self::Handle,
        args: Vec<Self::Handle>,
    ) -> Result<Self::Handle, Self::Error>;
    /// INST / OBJ: pickle's `_instantiate`, i.e. `cls(*args)`, or `cls.__new__(cls)` when there
    /// are no arguments and the class defines no `__getinitargs__` (a sink that runs classes
    /// tells the two apart; the default makes the same thing as REDUCE).
    fn instantiate(
        &mut self,
        cls: GlobalRef<'_, Self::Global>,
        args: Vec<Self::Handle>,
    ) -> Result<Self::Handle, Self::Error> {
        self.object(cls, Construct::Reduce, args, None)
    }
    /// BUILD: set the state of an object the sink created through an allowed class (or of an
    /// inert object), `__setstate__` taken from the class. `false` if `target` is anything
    /// else (the loop refuses it).
    fn build(&mut self, target: &Self::Handle, state: Self::Handle) -> Result<bool, Self::Error>;

    // ---- the outside world ---------------------------------------------------------------

    /// PERSID/BINPERSID: `None` when no `persistent_load` was given.
    fn persistent_load(&mut self, pid: Self::Handle) -> Result<Option<Self::Handle>, Self::Error>;
    /// NEXT_BUFFER.
    fn next_buffer(&mut self) -> Result<Buffer<Self::Handle>, Self::Error>;
    /// READONLY_BUFFER applied to `h`.
    fn readonly(&mut self, h: Self::Handle) -> Result<Self::Handle, Self::Error>;

    /// The loop pushes `h` (with its nesting depth as known so far) again from the memo or by
    /// DUP: a sink whose containers can still grow after they were nested somewhere (Python
    /// objects) notes that the per-slot depths may now be low and measures the result at the
    /// end. Default: nothing.
    #[inline]
    fn reused(&mut self, _h: &Self::Handle, _depth: u32) {}

    /// STOP: the result.
    fn finish(&mut self, root: Self::Handle) -> Result<Self::Output, Self::Error>;
}
