//! The pickle safety policy's fixed table: the globals every cellar decoder (the Rust
//! [`crate::loads`], the Python package's `cellar.pickle.loads`, `cellar pickle show`) resolves
//! without being told, and what each one may do. Everything else needs the caller's consent
//! (`allow=` / a [`crate::Registry`] entry / a copyreg registration) or is refused (or kept
//! inert with `inert=True`).
//!
//! - **Basic types**: exactly the globals CPython's pickler writes for values of the value
//!   model (`complex`, `set`, `frozenset`, `bytearray`, `bytes`, `_codecs.encode`, `slice`,
//!   `range`, and the constants `Ellipsis`, `StopIteration`, `NotImplemented`). Each is called
//!   only with the argument shapes CPython writes for it.
//! - **Pattern markers** (`copyreg._reconstructor`, `copyreg.__newobj__`,
//!   `copyreg.__newobj_ex__`, `builtins.getattr`, `functools.partial`): only shape objects of
//!   allowed classes (`_reconstructor(cls, base, state)`, `__newobj__(cls, *args)`,
//!   `partial(getattr(cls, '__new__'), cls, ...)`). They are never called on anything else,
//!   never BUILT on, never returned as values.
//! - **Reconstructor bases** (`object`, `list`, `dict`, `int`, `float`, `str`, `tuple`, plus the
//!   basic types above): the `base` argument of `_reconstructor`; called with no arguments they
//!   give the empty value of their type.
//!
//! BUILD acts only on objects the decoder itself created through an allowed class (never on a
//! class, a function, a marker or a basic-type global); `__setstate__` is taken from the class,
//! never from the instance's state.

/// What a default global is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Known {
    /// `builtins.complex`: `complex(real, imag)` with int/float arguments.
    Complex,
    /// `builtins.set`: `set()` / `set(list)`.
    Set,
    /// `builtins.frozenset`: `frozenset()` / `frozenset(list)`.
    FrozenSet,
    /// `builtins.bytearray`: `bytearray()`, `bytearray(bytes)`, `bytearray(str, 'latin1')`.
    ByteArray,
    /// `builtins.bytes`: `bytes()`, `bytes(bytes)`, `bytes(str, 'latin1')`.
    Bytes,
    /// `_codecs.encode(str, 'latin1')`: bytes at protocols 0-2.
    CodecsEncode,
    /// `builtins.slice(start, stop, step)`.
    Slice,
    /// `builtins.range(*ints)`.
    Range,
    /// `builtins.Ellipsis` (a value).
    Ellipsis,
    /// `builtins.StopIteration` (a value: the class, as marshal has it).
    StopIteration,
    /// `builtins.NotImplemented` (a value).
    NotImplemented,
    /// `copyreg._reconstructor` (marker).
    Reconstructor,
    /// `copyreg.__newobj__` (marker).
    NewObj,
    /// `copyreg.__newobj_ex__` (marker).
    NewObjEx,
    /// `builtins.getattr` (marker: `getattr(allowed_cls, '__new__')` only).
    Getattr,
    /// `functools.partial` (marker: `partial(allowed_cls.__new__, allowed_cls, ...)` only).
    Partial,
    /// A builtin type used as `_reconstructor`'s base (`object`, `list`, `dict`, ...).
    Base,
}

impl Known {
    /// Whether this global only shapes allowed classes (never a value, never called alone).
    pub fn is_marker(self) -> bool {
        matches!(
            self,
            Known::Reconstructor
                | Known::NewObj
                | Known::NewObjEx
                | Known::Getattr
                | Known::Partial
                | Known::Base
        )
    }

    /// A short description for `globals_of` and error messages.
    pub fn describe(self) -> &'static str {
        if self.is_marker() {
            "pattern marker (only shapes objects of allowed classes)"
        } else {
            match self {
                Known::Ellipsis | Known::StopIteration | Known::NotImplemented => {
                    "basic value (allowed by default)"
                }
                _ => "basic type (allowed by default, with the argument shapes CPython writes)",
            }
        }
    }
}

/// Every global resolved without consent, by its Python 3 name (after `fix_imports`).
pub const DEFAULT_GLOBALS: &[(&str, &str, Known)] = &[
    ("builtins", "complex", Known::Complex),
    ("builtins", "set", Known::Set),
    ("builtins", "frozenset", Known::FrozenSet),
    ("builtins", "bytearray", Known::ByteArray),
    ("builtins", "bytes", Known::Bytes),
    ("_codecs", "encode", Known::CodecsEncode),
    ("builtins", "slice", Known::Slice),
    ("builtins", "range", Known::Range),
    ("builtins", "Ellipsis", Known::Ellipsis),
    ("builtins", "StopIteration", Known::StopIteration),
    ("builtins", "NotImplemented", Known::NotImplemented),
    ("copyreg", "_reconstructor", Known::Reconstructor),
    ("copyreg", "__newobj__", Known::NewObj),
    ("copyreg", "__newobj_ex__", Known::NewObjEx),
    ("builtins", "getattr", Known::Getattr),
    ("functools", "partial", Known::Partial),
    ("builtins", "object", Known::Base),
    ("builtins", "list", Known::Base),
    ("builtins", "dict", Known::Base),
    ("builtins", "int", Known::Base),
    ("builtins", "float", Known::Base),
    ("builtins", "str", Known::Base),
    ("builtins", "tuple", Known::Base),
];

/// The default meaning of `module.name` (Python 3 names), if it has one.
pub fn default_global(module: &str, name: &str) -> Option<Known> {
    DEFAULT_GLOBALS
        .iter()
        .find(|(m, n, _)| *m == module && *n == name)
        .map(|(_, _, d)| *d)
}

/// What a pickle needs from a global it names, from how it uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Used as a class (NEWOBJ, NEWOBJ_EX, INST, OBJ, `_reconstructor`, `__newobj__`).
    Class,
    /// Called (REDUCE): a function, or a class called like one.
    Function,
    /// Only referenced (a class or function stored as a value).
    Value,
}

impl Need {
    /// `"class"`, `"function"` or `"value"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Need::Class => "class",
            Need::Function => "function",
            Need::Value => "value",
        }
    }
}

/// The refusal message for a global the caller did not allow, naming how the pickle uses it
/// and the `allow=` forms that would admit it.
pub fn refusal(module: &str, name: &str, need: Option<Need>) -> String {
    let what = match need {
        Some(Need::Class) => "a class the pickle instantiates",
        Some(Need::Function) => "a function (or class) the pickle calls",
        Some(Need::Value) => "a class or function the pickle stores as a value",
        None => "a class or function",
    };
    format!(
        "global '{module}.{name}' is forbidden: it is {what}, and cellar never imports; allow it \
         with allow=[{name}] or allow=[('{module}', '{name}', obj)] (or a copyreg registration / \
         Registry entry), or load with inert=True to inspect it"
    )
}
