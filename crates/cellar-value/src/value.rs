//! The [`Value`] tree: Python's built-in data types with Python's equality and hashing.
//!
//! Containers are reference counted (`Arc`), so a sub-object shared in the source data (a
//! marshal or pickle back-reference) stays one shared allocation, and codecs can tell shared
//! objects apart with [`Value::ptr_id`]. Values are immutable once built except through
//! copy-on-write (`Arc::make_mut`), so a value can never contain itself: recursive containers
//! are refused by the decoders with a clear error instead of being represented.
//! Dropping a deep value does not recurse on the Rust stack.

use std::sync::Arc;

use num_bigint::BigInt;
use num_traits::{ToPrimitive, Zero};

use crate::hash::{hash_bigint, hash_complex, hash_f64, hash_i64, keyed, mix_tuple, HashError};
use crate::str::PyStr;

/// A Python value.
#[derive(Clone)]
pub enum Value {
    /// `None`
    None,
    /// `True` / `False`
    Bool(bool),
    /// `int` (arbitrary precision)
    Int(Int),
    /// `float`
    Float(f64),
    /// `complex`
    Complex(f64, f64),
    /// `str`
    Str(Arc<PyStr>),
    /// `bytes`
    Bytes(Arc<[u8]>),
    /// `bytearray`
    ByteArray(Arc<Vec<u8>>),
    /// `tuple`
    Tuple(Arc<Vec<Value>>),
    /// `list`
    List(Arc<Vec<Value>>),
    /// `dict` (insertion ordered)
    Dict(Arc<Dict>),
    /// `set`
    Set(Arc<Set>),
    /// `frozenset`
    FrozenSet(Arc<Set>),
    /// `Ellipsis`
    Ellipsis,
    /// The `StopIteration` class (marshal's `S` code)
    StopIteration,
    /// `slice(start, stop, step)`
    Slice(Arc<Slice>),
    /// A code object (marshal only)
    Code(Arc<Code>),
    /// An inert object: a global and what a pickle does with it, not rebuilt (pickle only).
    Object(Arc<crate::object::Object>),
}

/// A Python `int`: machine-sized when it fits in an `i64`, arbitrary precision otherwise.
/// The representation is canonical: `Big` never holds a value that fits in an `i64`.
#[derive(Clone, Debug)]
pub enum Int {
    /// A value in `i64` range.
    Small(i64),
    /// A value outside `i64` range.
    Big(Arc<BigInt>),
}

impl Int {
    /// Canonical form of a big integer.
    pub fn from_bigint(b: BigInt) -> Int {
        match b.to_i64() {
            Some(v) => Int::Small(v),
            None => Int::Big(Arc::new(b)),
        }
    }
    /// The value as a `BigInt`.
    pub fn to_bigint(&self) -> BigInt {
        match self {
            Int::Small(v) => BigInt::from(*v),
            Int::Big(b) => (**b).clone(),
        }
    }
    /// The value as an `i64` if it fits.
    pub fn to_i64(&self) -> Option<i64> {
        match self {
            Int::Small(v) => Some(*v),
            Int::Big(_) => None,
        }
    }
}

impl PartialEq for Int {
    fn eq(&self, other: &Int) -> bool {
        match (self, other) {
            (Int::Small(a), Int::Small(b)) => a == b,
            (Int::Big(a), Int::Big(b)) => a == b,
            _ => false, // canonical form: a small and a big value are never equal
        }
    }
}

/// `slice(start, stop, step)`.
#[derive(Clone)]
pub struct Slice {
    /// start
    pub start: Value,
    /// stop
    pub stop: Value,
    /// step
    pub step: Value,
}

/// A code object in CPython 3.11+'s marshal layout. Fields that CPython constrains to a type
/// (bytes, tuples of str) are kept as [`Value`]s so any well-formed stream round-trips.
#[derive(Clone)]
pub struct Code {
    /// co_argcount
    pub argcount: i32,
    /// co_posonlyargcount
    pub posonlyargcount: i32,
    /// co_kwonlyargcount
    pub kwonlyargcount: i32,
    /// co_stacksize
    pub stacksize: i32,
    /// co_flags
    pub flags: i32,
    /// co_code (bytes)
    pub code: Value,
    /// co_consts (tuple)
    pub consts: Value,
    /// co_names (tuple of str)
    pub names: Value,
    /// co_localsplusnames (tuple of str)
    pub localsplusnames: Value,
    /// co_localspluskinds (bytes)
    pub localspluskinds: Value,
    /// co_filename
    pub filename: Value,
    /// co_name
    pub name: Value,
    /// co_qualname
    pub qualname: Value,
    /// co_firstlineno
    pub firstlineno: i32,
    /// co_linetable (bytes)
    pub linetable: Value,
    /// co_exceptiontable (bytes)
    pub exceptiontable: Value,
}

impl Code {
    /// The object fields in marshal order.
    pub fn objects(&self) -> [&Value; 10] {
        [
            &self.code,
            &self.consts,
            &self.names,
            &self.localsplusnames,
            &self.localspluskinds,
            &self.filename,
            &self.name,
            &self.qualname,
            &self.linetable,
            &self.exceptiontable,
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// dict and set

#[derive(Clone)]
struct Entry {
    hash: u64,
    key: Value,
    value: Value,
}

/// An insertion-ordered `dict` with Python's key equality (`1`, `1.0` and `True` are one key;
/// a NaN key never equals another NaN, so each NaN inserted is a new entry, as in CPython
/// for distinct NaN objects).
#[derive(Clone, Default)]
pub struct Dict {
    entries: Vec<Entry>,
    /// Positions by hash; empty (unallocated) while the dict has at most [`SMALL`] entries,
    /// which are found by a scan of their stored hashes instead.
    index: hashbrown::HashTable<usize>,
}

/// Dicts and sets up to this size keep no hash index: scanning a few stored hashes is faster
/// than probing a table and saves an allocation per small container.
const SMALL: usize = 8;

impl Dict {
    /// An empty dict.
    pub fn new() -> Dict {
        Dict::default()
    }
    /// An empty dict with room for `n` entries.
    pub fn with_capacity(n: usize) -> Dict {
        Dict {
            entries: Vec::with_capacity(n),
            index: if n > SMALL {
                hashbrown::HashTable::with_capacity(n)
            } else {
                hashbrown::HashTable::new()
            },
        }
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether the dict is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    fn find(&self, hash: u64, key: &Value) -> Option<usize> {
        let entries = &self.entries;
        if entries.len() <= SMALL {
            return entries
                .iter()
                .position(|e| e.hash == hash && e.key.py_eq(key));
        }
        self.index
            .find(hash, |&i| entries[i].key.py_eq(key))
            .copied()
    }
    /// `d[key] = value`. As in Python, an existing equal key keeps its original object and
    /// only the value is replaced; the replaced value is returned.
    pub fn insert(&mut self, key: Value, value: Value) -> Result<Option<Value>, HashError> {
        let hash = key.py_hash()?;
        if let Some(i) = self.find(hash, &key) {
            return Ok(Some(std::mem::replace(&mut self.entries[i].value, value)));
        }
        let i = self.entries.len();
        self.entries.push(Entry { hash, key, value });
        if i == SMALL {
            self.rebuild_index();
        } else if i > SMALL {
            let entries = &self.entries;
            self.index.insert_unique(hash, i, |&j| entries[j].hash);
        }
        Ok(None)
    }
    /// `d.get(key)`.
    pub fn get(&self, key: &Value) -> Result<Option<&Value>, HashError> {
        let hash = key.py_hash()?;
        Ok(self.find(hash, key).map(|i| &self.entries[i].value))
    }
    /// `del d[key]`, keeping the order of the remaining entries.
    pub fn remove(&mut self, key: &Value) -> Result<Option<Value>, HashError> {
        let hash = key.py_hash()?;
        let Some(i) = self.find(hash, key) else {
            return Ok(None);
        };
        let e = self.entries.remove(i);
        self.rebuild_index();
        Ok(Some(e.value))
    }
    fn rebuild_index(&mut self) {
        self.index.clear();
        if self.entries.len() <= SMALL {
            return;
        }
        let entries = &self.entries;
        for (i, e) in entries.iter().enumerate() {
            self.index.insert_unique(e.hash, i, |&j| entries[j].hash);
        }
    }
    /// Entries in insertion order.
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&Value, &Value)> + ExactSizeIterator + '_ {
        self.entries.iter().map(|e| (&e.key, &e.value))
    }
    /// The `i`-th entry in insertion order (O(1)).
    pub fn get_index(&self, i: usize) -> Option<(&Value, &Value)> {
        self.entries.get(i).map(|e| (&e.key, &e.value))
    }
    /// Keys in insertion order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Value> + ExactSizeIterator + '_ {
        self.entries.iter().map(|e| &e.key)
    }
    fn drain_into(&mut self, out: &mut Vec<Value>) {
        self.index.clear();
        out.reserve(self.entries.len() * 2);
        for e in self.entries.drain(..) {
            out.push(e.key);
            out.push(e.value);
        }
    }
}

/// A `set` / `frozenset` body: Python element equality, insertion order kept (CPython's
/// order depends on hashes; ours is the order elements were added).
#[derive(Clone, Default)]
pub struct Set {
    items: Vec<(u64, Value)>,
    index: hashbrown::HashTable<usize>,
}

impl Set {
    /// An empty set.
    pub fn new() -> Set {
        Set::default()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// `s.add(item)`; returns whether it was new.
    pub fn insert(&mut self, item: Value) -> Result<bool, HashError> {
        let hash = item.py_hash()?;
        if self.contains_hashed(hash, &item) {
            return Ok(false);
        }
        let i = self.items.len();
        self.items.push((hash, item));
        let items = &self.items;
        if i == SMALL {
            for (j, (h, _)) in items.iter().enumerate() {
                self.index.insert_unique(*h, j, |&k| items[k].0);
            }
        } else if i > SMALL {
            self.index.insert_unique(hash, i, |&j| items[j].0);
        }
        Ok(true)
    }
    fn contains_hashed(&self, hash: u64, item: &Value) -> bool {
        let items = &self.items;
        if items.len() <= SMALL {
            return items.iter().any(|(h, v)| *h == hash && v.py_eq(item));
        }
        self.index.find(hash, |&i| items[i].1.py_eq(item)).is_some()
    }
    /// `item in s`.
    pub fn contains(&self, item: &Value) -> Result<bool, HashError> {
        Ok(self.contains_hashed(item.py_hash()?, item))
    }
    /// Elements in insertion order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Value> + ExactSizeIterator + '_ {
        self.items.iter().map(|(_, v)| v)
    }
    fn drain_into(&mut self, out: &mut Vec<Value>) {
        self.index.clear();
        out.extend(self.items.drain(..).map(|(_, v)| v));
    }
}

impl FromIterator<Value> for Result<Set, HashError> {
    fn from_iter<I: IntoIterator<Item = Value>>(iter: I) -> Self {
        let mut s = Set::new();
        for v in iter {
            s.insert(v)?;
        }
        Ok(s)
    }
}

// ---------------------------------------------------------------------------------------------
// constructors and accessors

impl Value {
    /// An `int`.
    pub fn int(v: i64) -> Value {
        Value::Int(Int::Small(v))
    }
    /// An `int` from a big integer.
    pub fn bigint(v: BigInt) -> Value {
        Value::Int(Int::from_bigint(v))
    }
    /// A `str`.
    pub fn str(s: &str) -> Value {
        Value::Str(Arc::new(PyStr::new(s)))
    }
    /// A `bytes`.
    pub fn bytes(b: &[u8]) -> Value {
        Value::Bytes(b.into())
    }
    /// A `tuple`.
    pub fn tuple(items: Vec<Value>) -> Value {
        Value::Tuple(Arc::new(items))
    }
    /// A `list`.
    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Arc::new(items))
    }
    /// A `dict` from pairs (later duplicates replace earlier values, as in Python).
    pub fn dict<I: IntoIterator<Item = (Value, Value)>>(pairs: I) -> Result<Value, HashError> {
        let mut d = Dict::new();
        for (k, v) in pairs {
            d.insert(k, v)?;
        }
        Ok(Value::Dict(Arc::new(d)))
    }
    /// A `set`.
    pub fn set<I: IntoIterator<Item = Value>>(items: I) -> Result<Value, HashError> {
        Ok(Value::Set(Arc::new(
            items.into_iter().collect::<Result<Set, _>>()?,
        )))
    }
    /// A `frozenset`.
    pub fn frozenset<I: IntoIterator<Item = Value>>(items: I) -> Result<Value, HashError> {
        Ok(Value::FrozenSet(Arc::new(
            items.into_iter().collect::<Result<Set, _>>()?,
        )))
    }

    /// Python's type name (`type(v).__name__`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Complex(..) => "complex",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::ByteArray(_) => "bytearray",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::FrozenSet(_) => "frozenset",
            Value::Ellipsis => "ellipsis",
            Value::StopIteration => "type",
            Value::Slice(_) => "slice",
            Value::Code(_) => "code",
            Value::Object(_) => "object",
        }
    }

    /// The address of the shared allocation behind this value, for identity (`is`) checks and
    /// back-reference tables; `None` for unboxed values (None, bool, small int, float ...).
    pub fn ptr_id(&self) -> Option<usize> {
        Some(match self {
            Value::Int(Int::Big(b)) => Arc::as_ptr(b) as *const u8 as usize,
            Value::Str(s) => Arc::as_ptr(s) as *const u8 as usize,
            Value::Bytes(b) => Arc::as_ptr(b) as *const u8 as usize,
            Value::ByteArray(b) => Arc::as_ptr(b) as *const u8 as usize,
            Value::Tuple(t) | Value::List(t) => Arc::as_ptr(t) as *const u8 as usize,
            Value::Dict(d) => Arc::as_ptr(d) as *const u8 as usize,
            Value::Set(s) | Value::FrozenSet(s) => Arc::as_ptr(s) as *const u8 as usize,
            Value::Slice(s) => Arc::as_ptr(s) as *const u8 as usize,
            Value::Code(c) => Arc::as_ptr(c) as *const u8 as usize,
            Value::Object(o) => Arc::as_ptr(o) as *const u8 as usize,
            _ => return None,
        })
    }

    /// How many handles share this value's allocation (1 for unboxed values).
    pub fn share_count(&self) -> usize {
        match self {
            Value::Int(Int::Big(b)) => Arc::strong_count(b),
            Value::Str(s) => Arc::strong_count(s),
            Value::Bytes(b) => Arc::strong_count(b),
            Value::ByteArray(b) => Arc::strong_count(b),
            Value::Tuple(t) | Value::List(t) => Arc::strong_count(t),
            Value::Dict(d) => Arc::strong_count(d),
            Value::Set(s) | Value::FrozenSet(s) => Arc::strong_count(s),
            Value::Slice(s) => Arc::strong_count(s),
            Value::Code(c) => Arc::strong_count(c),
            Value::Object(o) => Arc::strong_count(o),
            _ => 1,
        }
    }

    /// Whether the value is hashable (can be a dict key or set member), as in Python 3.11.
    pub fn is_hashable(&self) -> bool {
        self.py_hash().is_ok()
    }

    // -----------------------------------------------------------------------------------------
    // equality

    /// Python's `==`. Numbers compare by value across bool/int/float/complex; NaN is unequal
    /// to everything; set equals frozenset with the same elements; dicts compare regardless of
    /// order; list and tuple are never equal to each other.
    pub fn py_eq(&self, other: &Value) -> bool {
        use Value as V;
        if let (Some(a), Some(b)) = (self.ptr_id(), other.ptr_id()) {
            // Identity implies equality in containers, except for NaN which is unboxed here.
            if a == b {
                return true;
            }
        }
        match (self, other) {
            (V::None, V::None) | (V::Ellipsis, V::Ellipsis) => true,
            (V::StopIteration, V::StopIteration) => true,
            (V::Str(a), V::Str(b)) => a == b,
            (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::ByteArray(a), V::ByteArray(b)) => a == b,
            (V::Bytes(a), V::ByteArray(b)) | (V::ByteArray(b), V::Bytes(a)) => **a == b[..],
            (V::Tuple(a), V::Tuple(b)) | (V::List(a), V::List(b)) => seq_eq(a, b),
            (V::Dict(a), V::Dict(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| matches!(b.get(k), Ok(Some(w)) if v.py_eq(w)))
            }
            (V::Set(a) | V::FrozenSet(a), V::Set(b) | V::FrozenSet(b)) => {
                a.len() == b.len() && a.iter().all(|x| b.contains(x).unwrap_or(false))
            }
            (V::Slice(a), V::Slice(b)) => {
                a.start.py_eq(&b.start) && a.stop.py_eq(&b.stop) && a.step.py_eq(&b.step)
            }
            (V::Code(a), V::Code(b)) => code_eq(a, b),
            (V::Object(a), V::Object(b)) => a.fields_eq(b, |x, y| x.py_eq(y)),
            _ => match (self.as_number(), other.as_number()) {
                (Some(a), Some(b)) => num_eq(&a, &b),
                _ => false,
            },
        }
    }

    /// Structural identity: same types all the way down, floats compared bit for bit (so NaN
    /// equals NaN with the same bits and -0.0 differs from 0.0), str interning ignored.
    /// This is the "loads to an equal value" check of the differential tests.
    pub fn same(&self, other: &Value) -> bool {
        use Value as V;
        match (self, other) {
            (V::None, V::None) | (V::Ellipsis, V::Ellipsis) => true,
            (V::StopIteration, V::StopIteration) => true,
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::Int(a), V::Int(b)) => a == b,
            (V::Float(a), V::Float(b)) => a.to_bits() == b.to_bits(),
            (V::Complex(a, b), V::Complex(c, d)) => {
                a.to_bits() == c.to_bits() && b.to_bits() == d.to_bits()
            }
            (V::Str(a), V::Str(b)) => a == b,
            (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::ByteArray(a), V::ByteArray(b)) => a == b,
            (V::Tuple(a), V::Tuple(b)) | (V::List(a), V::List(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.same(y))
            }
            (V::Dict(a), V::Dict(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|((k1, v1), (k2, v2))| k1.same(k2) && v1.same(v2))
            }
            (V::Set(a), V::Set(b)) | (V::FrozenSet(a), V::FrozenSet(b)) => {
                // Order-independent: every element has a structurally identical partner.
                a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| x.same(y)))
            }
            (V::Slice(a), V::Slice(b)) => {
                a.start.same(&b.start) && a.stop.same(&b.stop) && a.step.same(&b.step)
            }
            (V::Code(a), V::Code(b)) => {
                a.argcount == b.argcount
                    && a.posonlyargcount == b.posonlyargcount
                    && a.kwonlyargcount == b.kwonlyargcount
                    && a.stacksize == b.stacksize
                    && a.flags == b.flags
                    && a.firstlineno == b.firstlineno
                    && a.objects()
                        .iter()
                        .zip(b.objects().iter())
                        .all(|(x, y)| x.same(y))
            }
            (V::Object(a), V::Object(b)) => a.fields_eq(b, |x, y| x.same(y)),
            _ => false,
        }
    }

    fn as_number(&self) -> Option<Num<'_>> {
        Some(match self {
            Value::Bool(b) => Num::Int(Int::Small(*b as i64)),
            Value::Int(i) => Num::IntRef(i),
            Value::Float(f) => Num::Float(*f),
            Value::Complex(re, im) => Num::Complex(*re, *im),
            _ => return None,
        })
    }

    // -----------------------------------------------------------------------------------------
    // hashing

    /// Hash for dict keys and set members: equal values hash alike across types (`1`, `1.0`,
    /// `True`), keyed per process so crafted input cannot force collisions (see the `hash`
    /// module); `Err` for unhashable values.
    pub fn py_hash(&self) -> Result<u64, HashError> {
        Ok(match self {
            Value::None => 0xFCA8_6A4A,
            Value::Ellipsis => 0x0E11_1955,
            Value::StopIteration => 0x5709_1735,
            Value::Bool(b) => hash_i64(*b as i64),
            Value::Int(Int::Small(v)) => hash_i64(*v),
            Value::Int(Int::Big(b)) => hash_bigint(b),
            Value::Float(f) => hash_f64(*f),
            Value::Complex(re, im) => hash_complex(*re, *im),
            Value::Str(s) => s.cached_hash(|b| keyed(5, b)),
            Value::Bytes(b) => keyed(6, &b[..]),
            Value::Tuple(items) => {
                let mut acc = mix_tuple(None, items.len() as u64);
                for it in items.iter() {
                    acc = mix_tuple(Some(acc), it.py_hash()?);
                }
                acc
            }
            Value::FrozenSet(s) => {
                // Order-independent combination of element hashes.
                let mut acc: u64 = 0x1234_5678_9ABC_DEF1 ^ s.len() as u64;
                for (h, _) in &s.items {
                    let x = h ^ (h << 16) ^ 89_869_747;
                    acc ^= x.wrapping_mul(3_644_798_167);
                }
                acc
            }
            Value::Code(c) => {
                let mut acc = mix_tuple(None, c.argcount as u64 ^ ((c.flags as u64) << 32));
                for v in [&c.name, &c.code, &c.consts, &c.names] {
                    acc = mix_tuple(Some(acc), v.py_hash().unwrap_or(0));
                }
                acc
            }
            // Consistent with the structural ==: equal objects have the same global.
            Value::Object(o) => {
                let mut acc = mix_tuple(None, o.construct as u64);
                for part in [&o.module, &o.name] {
                    for b in part.bytes() {
                        acc = mix_tuple(Some(acc), u64::from(b));
                    }
                }
                acc
            }
            Value::List(_) | Value::Dict(_) | Value::Set(_) | Value::ByteArray(_) => {
                return Err(HashError {
                    type_name: self.type_name(),
                })
            }
            // slice is unhashable until Python 3.12
            Value::Slice(_) => return Err(HashError { type_name: "slice" }),
        })
    }
}

fn seq_eq(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.py_eq(y))
}

fn code_eq(a: &Code, b: &Code) -> bool {
    // CPython's code_richcompare: every field except the filename.
    a.argcount == b.argcount
        && a.posonlyargcount == b.posonlyargcount
        && a.kwonlyargcount == b.kwonlyargcount
        && a.flags == b.flags
        && a.firstlineno == b.firstlineno
        && a.name.py_eq(&b.name)
        && a.code.py_eq(&b.code)
        && a.consts.same(&b.consts)
        && a.names.py_eq(&b.names)
        && a.localsplusnames.py_eq(&b.localsplusnames)
        && a.linetable.py_eq(&b.linetable)
        && a.exceptiontable.py_eq(&b.exceptiontable)
}

enum Num<'a> {
    Int(Int),
    IntRef(&'a Int),
    Float(f64),
    Complex(f64, f64),
}

fn num_eq(a: &Num<'_>, b: &Num<'_>) -> bool {
    fn int_of<'x>(n: &'x Num<'_>) -> Option<&'x Int> {
        match n {
            Num::Int(i) => Some(i),
            Num::IntRef(i) => Some(i),
            _ => None,
        }
    }
    match (a, b) {
        (Num::Complex(r1, i1), Num::Complex(r2, i2)) => r1 == r2 && i1 == i2,
        (Num::Complex(r, i), other) | (other, Num::Complex(r, i)) => {
            *i == 0.0 && num_eq(&Num::Float(*r), other)
        }
        (Num::Float(x), Num::Float(y)) => x == y,
        (Num::Float(f), other) | (other, Num::Float(f)) => {
            int_of(other).is_some_and(|i| int_eq_float(i, *f))
        }
        _ => match (int_of(a), int_of(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

fn int_eq_float(i: &Int, f: f64) -> bool {
    if !f.is_finite() || f.fract() != 0.0 {
        return false;
    }
    match i {
        Int::Small(v) if v.unsigned_abs() < (1u64 << 53) => *v as f64 == f,
        _ => num_bigint::BigInt::from_f64_exact(f).is_some_and(|b| b == i.to_bigint()),
    }
}

trait FromF64Exact: Sized {
    fn from_f64_exact(f: f64) -> Option<Self>;
}
impl FromF64Exact for BigInt {
    fn from_f64_exact(f: f64) -> Option<BigInt> {
        use num_traits::FromPrimitive;
        let b = BigInt::from_f64(f)?;
        // from_f64 truncates; `f` is integral here so the conversion is exact.
        if b.is_zero() && f != 0.0 {
            return None;
        }
        Some(b)
    }
}

// ---------------------------------------------------------------------------------------------
// Drop without recursion: deep values (a million nested lists built in Rust) must not
// overflow the stack when freed.

impl Drop for Value {
    fn drop(&mut self) {
        if !self.has_unique_children() {
            return;
        }
        let mut stack = Vec::new();
        self.take_children(&mut stack);
        while let Some(mut v) = stack.pop() {
            if v.has_unique_children() {
                v.take_children(&mut stack);
            }
            // `v` drops here with no children left to recurse into.
        }
    }
}

impl Value {
    fn has_unique_children(&self) -> bool {
        match self {
            Value::Tuple(t) | Value::List(t) => !t.is_empty() && Arc::strong_count(t) == 1,
            Value::Dict(d) => !d.is_empty() && Arc::strong_count(d) == 1,
            Value::Set(s) | Value::FrozenSet(s) => !s.is_empty() && Arc::strong_count(s) == 1,
            Value::Slice(s) => Arc::strong_count(s) == 1,
            Value::Code(c) => Arc::strong_count(c) == 1,
            Value::Object(o) => Arc::strong_count(o) == 1,
            _ => false,
        }
    }
    fn take_children(&mut self, out: &mut Vec<Value>) {
        match self {
            Value::Tuple(t) | Value::List(t) => {
                if let Some(v) = Arc::get_mut(t) {
                    out.append(v);
                }
            }
            Value::Dict(d) => {
                if let Some(d) = Arc::get_mut(d) {
                    d.drain_into(out);
                }
            }
            Value::Set(s) | Value::FrozenSet(s) => {
                if let Some(s) = Arc::get_mut(s) {
                    s.drain_into(out);
                }
            }
            Value::Slice(s) => {
                if let Some(s) = Arc::get_mut(s) {
                    for f in [&mut s.start, &mut s.stop, &mut s.step] {
                        out.push(std::mem::replace(f, Value::None));
                    }
                }
            }
            Value::Code(c) => {
                if let Some(c) = Arc::get_mut(c) {
                    for f in [&mut c.consts, &mut c.names, &mut c.localsplusnames] {
                        out.push(std::mem::replace(f, Value::None));
                    }
                }
            }
            Value::Object(o) => {
                if let Some(o) = Arc::get_mut(o) {
                    o.drain_into(out);
                }
            }
            _ => {}
        }
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::repr::repr(self))
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::repr::repr(self))
    }
}

impl PartialEq for Value {
    /// Python's `==` (see [`Value::py_eq`]).
    fn eq(&self, other: &Value) -> bool {
        self.py_eq(other)
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value { Value::Int(Int::Small(v as i64)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::bigint(BigInt::from(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::str(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(Arc::new(PyStr::from(v)))
    }
}
impl From<PyStr> for Value {
    fn from(v: PyStr) -> Value {
        Value::Str(Arc::new(v))
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Value {
        Value::list(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_keys_collide_like_python() {
        let d = Value::dict([
            (Value::int(1), Value::str("a")),
            (Value::Float(1.0), Value::str("b")),
            (Value::Bool(true), Value::str("c")),
        ])
        .unwrap();
        let Value::Dict(d) = &d else { unreachable!() };
        assert_eq!(d.len(), 1);
        let (k, v) = d.iter().next().unwrap();
        assert!(k.same(&Value::int(1)), "the first key object is kept");
        assert!(v.same(&Value::str("c")));
    }

    #[test]
    fn zeros_and_nans() {
        let s = Value::set([Value::Float(0.0), Value::Float(-0.0), Value::int(0)]).unwrap();
        let Value::Set(s) = &s else { unreachable!() };
        assert_eq!(s.len(), 1);
        let n = Value::set([Value::Float(f64::NAN), Value::Float(f64::NAN)]).unwrap();
        let Value::Set(n) = &n else { unreachable!() };
        assert_eq!(n.len(), 2, "distinct NaNs are distinct members");
    }

    #[test]
    fn unhashable_keys_are_refused() {
        let err = Value::dict([(Value::list(vec![]), Value::None)]).unwrap_err();
        assert_eq!(err.to_string(), "unhashable type: 'list'");
        let t = Value::tuple(vec![Value::int(1), Value::list(vec![])]);
        assert!(!t.is_hashable());
    }

    #[test]
    fn deep_values_drop_without_overflow() {
        let mut v = Value::None;
        for _ in 0..1_000_000 {
            v = Value::list(vec![v]);
        }
        drop(v);
    }

    #[test]
    fn set_equals_frozenset_and_dict_order_ignored() {
        let a = Value::set([Value::int(1), Value::int(2)]).unwrap();
        let b = Value::frozenset([Value::int(2), Value::int(1)]).unwrap();
        assert!(a.py_eq(&b));
        assert!(!a.same(&b));
        let d1 = Value::dict([(Value::int(1), Value::None), (Value::int(2), Value::None)]).unwrap();
        let d2 = Value::dict([(Value::int(2), Value::None), (Value::int(1), Value::None)]).unwrap();
        assert!(d1.py_eq(&d2));
        assert!(!d1.same(&d2));
    }
}

#[cfg(test)]
mod small_and_large {
    use super::*;

    #[test]
    fn dicts_and_sets_across_the_index_threshold() {
        for n in [0usize, 1, 7, 8, 9, 10, 50] {
            let mut d = Dict::new();
            let mut s = Set::new();
            for i in 0..n {
                assert!(d
                    .insert(Value::int(i as i64), Value::int(-(i as i64)))
                    .unwrap()
                    .is_none());
                assert!(s.insert(Value::int(i as i64)).unwrap());
            }
            for i in 0..n {
                // Equal keys of other types find the same entry.
                assert!(d
                    .get(&Value::Float(i as f64))
                    .unwrap()
                    .unwrap()
                    .same(&Value::int(-(i as i64))));
                assert!(!s.insert(Value::Float(i as f64)).unwrap());
            }
            assert!(d.get(&Value::int(n as i64)).unwrap().is_none());
            for i in (0..n).step_by(2) {
                assert!(d.remove(&Value::int(i as i64)).unwrap().is_some());
            }
            for i in 0..n {
                assert_eq!(
                    d.get(&Value::int(i as i64)).unwrap().is_some(),
                    i % 2 == 1,
                    "n={n} i={i}"
                );
            }
            assert_eq!(s.len(), n);
        }
    }
}
