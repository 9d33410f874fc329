//! The serde bridge between Rust types and [`Value`]: [`to_value`], [`from_value`], and
//! `Serialize` / `Deserialize` for [`Value`] itself.
//!
//! The mapping (written out in `docs/serde.md`) is the one a Python user would expect to see
//! when a Rust value is pickled or marshalled, and it is lossless for Rust round trips except
//! where noted there (`Option<Option<T>>`, and the other cases listed under "Lossy cases"):
//!
//! | Rust | Python |
//! |------|--------|
//! | `bool` | `bool` |
//! | integers (`i8`..`i128`, `u8`..`u128`) | `int` |
//! | `f32`, `f64` | `float` |
//! | `char`, `str`, `String` | `str` |
//! | bytes (`serde_bytes`) | `bytes` |
//! | `None` / `Some(x)` | `None` / `x` |
//! | `()`, unit struct | `None` |
//! | unit variant `E::V` | `'V'` |
//! | newtype struct `N(x)` | `x` |
//! | newtype variant `E::V(x)` | `{'V': x}` |
//! | sequence (`Vec`, sets) | `list` |
//! | tuple, tuple struct | `tuple` |
//! | tuple variant `E::V(a, b)` | `{'V': (a, b)}` |
//! | map | `dict` (any hashable key) |
//! | struct | `dict` with str keys, in field order |
//! | struct variant `E::V { a }` | `{'V': {'a': a}}` |
//!
//! A [`Value`] embedded in a Rust type passes through [`to_value`] / [`from_value`] unchanged
//! (sets stay sets, tuples stay tuples, complex numbers survive): the two sides recognise each
//! other through a private newtype name and hand the value over whole, without recursing. With
//! any other serde format a `Value` uses the natural mapping above.
//!
//! The serializer and deserializer recurse exactly as deep as the caller's Rust type does;
//! they add no recursion of their own.

use std::borrow::Borrow;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use num_bigint::BigInt;
use num_traits::ToPrimitive;
use serde::de::{self, DeserializeOwned, DeserializeSeed, Expected, Visitor};
use serde::ser::{self, Serialize, SerializeMap as _, SerializeSeq as _, SerializeTuple as _};

use crate::repr::repr;
use crate::value::{Dict, Int, Value};

// ---------------------------------------------------------------------------------------------
// errors

/// An error converting between a Rust type and a [`Value`]: the message, plus where in the
/// value it happened (`.field`, `[index]`, `['key']`) when that is known.
#[derive(Clone, PartialEq, Eq)]
pub struct SerdeError {
    msg: String,
    /// Innermost segment first (segments are added as the error travels outwards).
    path: Vec<Segment>,
}

#[derive(Clone, PartialEq, Eq)]
enum Segment {
    /// A struct field or enum variant name: `.name`.
    Field(String),
    /// A list / tuple / set position: `[3]`.
    Index(usize),
    /// A dict key, as its Python repr: `['key']`, `[(1, 2)]`.
    Key(String),
}

impl SerdeError {
    fn new(msg: impl Into<String>) -> SerdeError {
        SerdeError {
            msg: msg.into(),
            path: Vec::new(),
        }
    }

    fn at(mut self, segment: Segment) -> SerdeError {
        self.path.push(segment);
        self
    }

    /// The message without the location.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Where the error happened, from the outermost value in: `.points[2].x`, `['a'][0]`;
    /// empty for the top-level value.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for seg in self.path.iter().rev() {
            match seg {
                Segment::Field(name) => {
                    out.push('.');
                    out.push_str(name);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
                Segment::Key(k) => {
                    out.push('[');
                    out.push_str(k);
                    out.push(']');
                }
            }
        }
        out
    }
}

impl fmt::Display for SerdeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        if !self.path.is_empty() {
            write!(f, " (at {})", self.path())?;
        }
        Ok(())
    }
}

impl fmt::Debug for SerdeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SerdeError({:?})", self.to_string())
    }
}

impl std::error::Error for SerdeError {}

impl ser::Error for SerdeError {
    fn custom<T: fmt::Display>(msg: T) -> SerdeError {
        SerdeError::new(msg.to_string())
    }
}

impl de::Error for SerdeError {
    fn custom<T: fmt::Display>(msg: T) -> SerdeError {
        SerdeError::new(msg.to_string())
    }
}

/// A Python repr, shortened for use in an error message.
fn short_repr(v: &Value) -> String {
    const MAX: usize = 60;
    let r = repr(v);
    if r.chars().count() <= MAX {
        return r;
    }
    let mut s: String = r.chars().take(MAX - 3).collect();
    s.push_str("...");
    s
}

/// The name a Python user knows the value's type by, for messages.
fn py_type(v: &Value) -> &'static str {
    match v {
        Value::StopIteration => "StopIteration",
        other => other.type_name(),
    }
}

/// "cannot deserialize a Python list into u8"
fn type_error<'de, V: Visitor<'de>>(v: &Value, visitor: &V) -> SerdeError {
    if let Value::Str(s) = v {
        if s.as_str().is_none() {
            return surrogate_error(visitor);
        }
    }
    SerdeError::new(format!(
        "cannot deserialize a Python {} into {}",
        py_type(v),
        visitor as &dyn Expected
    ))
}

fn surrogate_error<'de, V: Visitor<'de>>(visitor: &V) -> SerdeError {
    SerdeError::new(format!(
        "cannot deserialize a Python str containing lone surrogates into {}: it has no Rust \
         string form",
        visitor as &dyn Expected
    ))
}

fn unhashable_key(key: &Value) -> SerdeError {
    let hint = match key {
        Value::List(_) => " (Rust sequences become lists; a tuple or tuple struct is hashable)",
        Value::Dict(_) => " (Rust structs and maps become dicts)",
        _ => "",
    };
    SerdeError::new(format!(
        "dict key of unhashable type '{}'{}",
        key.type_name(),
        hint
    ))
}

fn duplicate_key(key: &Value) -> SerdeError {
    SerdeError::new(format!(
        "dict key {} equals an earlier key in Python (1, 1.0 and True are one key), so the \
         map cannot be represented as a dict without losing an entry",
        short_repr(key)
    ))
}

/// A one-entry dict `{name: content}` (enum variants with content).
fn variant_dict(name: &str, content: Value) -> Result<Value, SerdeError> {
    let mut d = Dict::with_capacity(1);
    d.insert(Value::str(name), content)
        .map_err(|e| SerdeError::new(e.to_string()))?;
    Ok(Value::Dict(Arc::new(d)))
}

// ---------------------------------------------------------------------------------------------
// the private hand-over between `Value`'s impls and this module's serializer/deserializer

/// The newtype-struct name `Value` serializes and deserializes itself under. Any other format
/// sees an ordinary (transparent) newtype struct; ours recognises it and moves the value across
/// whole, so `to_value(&value)` and `from_value::<Value>(value)` are exact clones.
const MAGIC: &str = "$cellar_value::private::Value";

thread_local! {
    /// Set by `Value::serialize` just before calling `serialize_newtype_struct(MAGIC, ..)`: the
    /// address of the wrapper it passes, and the value.
    static SER_STASH: Cell<Option<(usize, Value)>> = const { Cell::new(None) };
    /// Set by `ValueDeserializer::deserialize_newtype_struct(MAGIC, ..)` just before calling
    /// `Value`'s visitor.
    static DE_STASH: Cell<Option<Value>> = const { Cell::new(None) };
}

/// `Value` with the natural serde mapping (what other formats see).
struct Natural<'a>(&'a Value);

impl Serialize for Value {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let natural = Natural(self);
        let addr = &natural as *const Natural<'_> as usize;
        SER_STASH.with(|c| c.set(Some((addr, self.clone()))));
        let result = serializer.serialize_newtype_struct(MAGIC, &natural);
        // Clear the stash if the serializer was not ours.
        drop(SER_STASH.with(Cell::take));
        result
    }
}

/// The stashed value if `value` is the wrapper `Value::serialize` stashed it for.
fn take_stashed<T: ?Sized>(value: &T) -> Option<Value> {
    let addr = value as *const T as *const () as usize;
    let (stashed_addr, v) = SER_STASH.with(Cell::take)?;
    if stashed_addr == addr {
        Some(v)
    } else {
        SER_STASH.with(|c| c.set(Some((stashed_addr, v))));
        None
    }
}

impl Serialize for Natural<'_> {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::Error as _;
        match self.0 {
            Value::None => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(Int::Small(v)) => s.serialize_i64(*v),
            Value::Int(Int::Big(b)) => {
                if let Some(u) = b.to_u64() {
                    s.serialize_u64(u)
                } else if let Some(i) = b.to_i128() {
                    s.serialize_i128(i)
                } else if let Some(u) = b.to_u128() {
                    s.serialize_u128(u)
                } else {
                    Err(S::Error::custom(format!(
                        "integer {b} is too large for serde's integer types (beyond \
                         i128/u128); only cellar's own codecs can carry it"
                    )))
                }
            }
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(p) => match p.as_str() {
                Some(t) => s.serialize_str(t),
                None => Err(S::Error::custom(
                    "cannot serialize a Python str containing lone surrogates: it has no Rust \
                     string form",
                )),
            },
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::ByteArray(b) => s.serialize_bytes(b),
            Value::Tuple(items) => {
                let mut t = s.serialize_tuple(items.len())?;
                for x in items.iter() {
                    t.serialize_element(&Natural(x))?;
                }
                t.end()
            }
            Value::List(items) => {
                let mut q = s.serialize_seq(Some(items.len()))?;
                for x in items.iter() {
                    q.serialize_element(&Natural(x))?;
                }
                q.end()
            }
            Value::Set(items) | Value::FrozenSet(items) => {
                let mut q = s.serialize_seq(Some(items.len()))?;
                for x in items.iter() {
                    q.serialize_element(&Natural(x))?;
                }
                q.end()
            }
            Value::Dict(d) => {
                let mut m = s.serialize_map(Some(d.len()))?;
                for (k, v) in d.iter() {
                    m.serialize_entry(&Natural(k), &Natural(v))?;
                }
                m.end()
            }
            other => Err(S::Error::custom(format!(
                "cannot serialize a Python {} with serde (only cellar's own codecs can carry it)",
                py_type(other)
            ))),
        }
    }
}

impl<'de> de::Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_newtype_struct(MAGIC, ValueVisitor)
    }
}

/// Builds a [`Value`] from any self-describing format (the natural mapping, reversed).
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any Python value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::bigint(BigInt::from(v)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::bigint(BigInt::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::str(v))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::bytes(v))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v.into()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        de::Deserialize::deserialize(d)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if let Some(v) = DE_STASH.with(Cell::take) {
            return Ok(v);
        }
        d.deserialize_any(ValueVisitor)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element::<Value>()? {
            items.push(v);
        }
        Ok(Value::list(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut d = Dict::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some((k, v)) = map.next_entry::<Value, Value>()? {
            if !k.is_hashable() {
                return Err(de::Error::custom(unhashable_key(&k)));
            }
            // Duplicate keys in the source format: the last value wins, as in Python.
            d.insert(k, v).map_err(de::Error::custom)?;
        }
        Ok(Value::Dict(Arc::new(d)))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use de::VariantAccess as _;
        let (name, variant): (Value, _) = data.variant()?;
        let content: Value = variant.newtype_variant()?;
        let mut d = Dict::with_capacity(1);
        d.insert(name, content).map_err(de::Error::custom)?;
        Ok(Value::Dict(Arc::new(d)))
    }
}

// ---------------------------------------------------------------------------------------------
// Rust -> Value

/// Converts a Rust value to a [`Value`] with the mapping in `docs/serde.md`.
///
/// Fails on map keys that are unhashable in Python (a `Vec` or a struct used as a key), on two
/// map keys that Python considers equal (`1` and `1.0`), and on whatever the type's own
/// `Serialize` impl reports.
pub fn to_value<T: ?Sized + Serialize>(value: &T) -> Result<Value, SerdeError> {
    value.serialize(ValueSerializer)
}

struct ValueSerializer;

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = SerdeError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = SeqBuilder;
    type SerializeMap = MapBuilder;
    type SerializeStruct = StructBuilder;
    type SerializeStructVariant = StructBuilder;

    fn serialize_bool(self, v: bool) -> Result<Value, SerdeError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, SerdeError> {
        Ok(Value::int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, SerdeError> {
        Ok(Value::int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, SerdeError> {
        Ok(Value::int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, SerdeError> {
        Ok(Value::int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, SerdeError> {
        Ok(Value::bigint(BigInt::from(v)))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, SerdeError> {
        Ok(Value::int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, SerdeError> {
        Ok(Value::int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, SerdeError> {
        Ok(Value::int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, SerdeError> {
        Ok(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, SerdeError> {
        Ok(Value::bigint(BigInt::from(v)))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, SerdeError> {
        Ok(Value::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, SerdeError> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, SerdeError> {
        Ok(Value::str(v.encode_utf8(&mut [0; 4])))
    }
    fn serialize_str(self, v: &str) -> Result<Value, SerdeError> {
        Ok(Value::str(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, SerdeError> {
        Ok(Value::bytes(v))
    }
    fn serialize_none(self) -> Result<Value, SerdeError> {
        Ok(Value::None)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<Value, SerdeError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, SerdeError> {
        Ok(Value::None)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, SerdeError> {
        Ok(Value::None)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, SerdeError> {
        Ok(Value::str(variant))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Value, SerdeError> {
        if name == MAGIC {
            if let Some(v) = take_stashed(value) {
                return Ok(v);
            }
        }
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, SerdeError> {
        let content = value
            .serialize(ValueSerializer)
            .map_err(|e| e.at(Segment::Field(variant.to_owned())))?;
        variant_dict(variant, content)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, SerdeError> {
        Ok(SeqBuilder::new(len.unwrap_or(0), SeqKind::List))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, SerdeError> {
        Ok(SeqBuilder::new(len, SeqKind::Tuple))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, SerdeError> {
        Ok(SeqBuilder::new(len, SeqKind::Tuple))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, SerdeError> {
        Ok(SeqBuilder::new(len, SeqKind::Variant(variant)))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapBuilder, SerdeError> {
        Ok(MapBuilder {
            dict: Dict::with_capacity(len.unwrap_or(0).min(4096)),
            key: None,
        })
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<StructBuilder, SerdeError> {
        Ok(StructBuilder {
            dict: Dict::with_capacity(len),
            variant: None,
        })
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<StructBuilder, SerdeError> {
        Ok(StructBuilder {
            dict: Dict::with_capacity(len),
            variant: Some(variant),
        })
    }
}

enum SeqKind {
    List,
    Tuple,
    Variant(&'static str),
}

struct SeqBuilder {
    items: Vec<Value>,
    kind: SeqKind,
}

impl SeqBuilder {
    fn new(len: usize, kind: SeqKind) -> SeqBuilder {
        SeqBuilder {
            items: Vec::with_capacity(len.min(4096)),
            kind,
        }
    }
    fn push<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), SerdeError> {
        let i = self.items.len();
        let v = value
            .serialize(ValueSerializer)
            .map_err(|e| e.at(Segment::Index(i)))?;
        self.items.push(v);
        Ok(())
    }
    fn finish(self) -> Result<Value, SerdeError> {
        match self.kind {
            SeqKind::List => Ok(Value::list(self.items)),
            SeqKind::Tuple => Ok(Value::tuple(self.items)),
            SeqKind::Variant(name) => variant_dict(name, Value::tuple(self.items)),
        }
    }
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), SerdeError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        self.finish()
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), SerdeError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), SerdeError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for SeqBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), SerdeError> {
        let name = match self.kind {
            SeqKind::Variant(name) => name,
            _ => "",
        };
        self.push(value)
            .map_err(|e| e.at(Segment::Field(name.to_owned())))
    }
    fn end(self) -> Result<Value, SerdeError> {
        self.finish()
    }
}

struct MapBuilder {
    dict: Dict,
    key: Option<Value>,
}

impl MapBuilder {
    fn key_value<T: ?Sized + Serialize>(key: &T) -> Result<Value, SerdeError> {
        let k = key.serialize(ValueSerializer)?;
        if !k.is_hashable() {
            return Err(unhashable_key(&k));
        }
        Ok(k)
    }
    fn insert<T: ?Sized + Serialize>(&mut self, key: Value, value: &T) -> Result<(), SerdeError> {
        let v = value
            .serialize(ValueSerializer)
            .map_err(|e| e.at(Segment::Key(short_repr(&key))))?;
        match self.dict.insert(key.clone(), v) {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(duplicate_key(&key)),
            Err(_) => Err(unhashable_key(&key)),
        }
    }
}

impl ser::SerializeMap for MapBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), SerdeError> {
        self.key = Some(MapBuilder::key_value(key)?);
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), SerdeError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| SerdeError::new("serialize_value called before serialize_key"))?;
        self.insert(key, value)
    }
    fn serialize_entry<K: ?Sized + Serialize, V: ?Sized + Serialize>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), SerdeError> {
        let key = MapBuilder::key_value(key)?;
        self.insert(key, value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        if self.key.is_some() {
            return Err(SerdeError::new(
                "a map key was serialized without its value",
            ));
        }
        Ok(Value::Dict(Arc::new(self.dict)))
    }
}

struct StructBuilder {
    dict: Dict,
    variant: Option<&'static str>,
}

impl StructBuilder {
    fn field<T: ?Sized + Serialize>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), SerdeError> {
        let v = value.serialize(ValueSerializer).map_err(|e| {
            let e = e.at(Segment::Field(name.to_owned()));
            match self.variant {
                Some(variant) => e.at(Segment::Field(variant.to_owned())),
                None => e,
            }
        })?;
        match self.dict.insert(Value::str(name), v) {
            Ok(None) => Ok(()),
            _ => Err(SerdeError::new(format!(
                "field `{name}` appears twice in one struct"
            ))),
        }
    }
    fn finish(self) -> Result<Value, SerdeError> {
        let d = Value::Dict(Arc::new(self.dict));
        match self.variant {
            Some(name) => variant_dict(name, d),
            None => Ok(d),
        }
    }
}

impl ser::SerializeStruct for StructBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SerdeError> {
        self.field(key, value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for StructBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SerdeError> {
        self.field(key, value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        self.finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Value -> Rust

/// Converts a [`Value`] (owned or borrowed) to a Rust value with the mapping in
/// `docs/serde.md`.
///
/// Integers are range-checked (`integer 300 out of range for u8`); Python's `bool` is accepted
/// only where Rust expects a `bool`; `float` fields also accept an `int` (as Python's
/// `float(int)` does); a `str` with lone surrogates cannot become a Rust string. Errors say
/// where in the value they happened.
pub fn from_value<T: DeserializeOwned>(value: impl Borrow<Value>) -> Result<T, SerdeError> {
    T::deserialize(ValueDeserializer {
        value: value.borrow(),
    })
}

#[derive(Clone, Copy)]
struct ValueDeserializer<'de> {
    value: &'de Value,
}

/// Integer types a Python int can be narrowed to, with their range check.
trait FromInt: Sized {
    const NAME: &'static str;
    fn from_small(v: i64) -> Option<Self>;
    fn from_big(b: &BigInt) -> Option<Self>;
}

macro_rules! from_int {
    ($($t:ty => $to:ident),* $(,)?) => {$(
        impl FromInt for $t {
            const NAME: &'static str = stringify!($t);
            fn from_small(v: i64) -> Option<$t> {
                <$t>::try_from(v).ok()
            }
            fn from_big(b: &BigInt) -> Option<$t> {
                b.$to()
            }
        }
    )*};
}
from_int!(
    i8 => to_i8, i16 => to_i16, i32 => to_i32, i64 => to_i64, i128 => to_i128,
    u8 => to_u8, u16 => to_u16, u32 => to_u32, u64 => to_u64, u128 => to_u128,
);

fn narrow<T: FromInt>(i: &Int) -> Result<T, SerdeError> {
    let out = match i {
        Int::Small(v) => T::from_small(*v),
        Int::Big(b) => T::from_big(b),
    };
    out.ok_or_else(|| {
        let text = match i {
            Int::Small(v) => v.to_string(),
            Int::Big(b) => b.to_string(),
        };
        SerdeError::new(format!("integer {text} out of range for {}", T::NAME))
    })
}

/// Python's `float(int)`: correctly rounded, `OverflowError` beyond the float range.
fn int_to_f64(i: &Int) -> Result<f64, SerdeError> {
    match i {
        Int::Small(v) => Ok(*v as f64),
        Int::Big(b) => match b.to_f64() {
            Some(f) if f.is_finite() => Ok(f),
            _ => Err(SerdeError::new("int too large to convert to float")),
        },
    }
}

macro_rules! de_int {
    ($($method:ident => $visit:ident : $t:ty),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
            match self.value {
                Value::Int(i) => visitor.$visit(narrow::<$t>(i)?),
                _ => Err(type_error(self.value, &visitor)),
            }
        }
    )*};
}

impl<'de> ValueDeserializer<'de> {
    fn seq<I, V>(iter: I, len: usize, visitor: V) -> Result<V::Value, SerdeError>
    where
        I: Iterator<Item = &'de Value>,
        V: Visitor<'de>,
    {
        let mut access = SeqAccess {
            iter,
            index: 0,
            len,
        };
        let out = visitor.visit_seq(&mut access)?;
        if access.index < len {
            return Err(de::Error::invalid_length(
                len,
                &ElementsIn(access.index, "sequence"),
            ));
        }
        Ok(out)
    }

    fn map<V: Visitor<'de>>(
        d: &'de Dict,
        fields: bool,
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        let mut access = MapAccess {
            iter: d.iter(),
            key: None,
            value: None,
            fields,
            index: 0,
            len: d.len(),
        };
        let out = visitor.visit_map(&mut access)?;
        if access.index < d.len() {
            return Err(de::Error::invalid_length(
                d.len(),
                &ElementsIn(access.index, "map"),
            ));
        }
        Ok(out)
    }

    fn bytes_as_seq<V: Visitor<'de>>(b: &'de [u8], visitor: V) -> Result<V::Value, SerdeError> {
        let mut seq = de::value::SeqDeserializer::new(b.iter().copied());
        let out = visitor.visit_seq(&mut seq)?;
        seq.end()?;
        Ok(out)
    }
}

struct ElementsIn(usize, &'static str);

impl Expected for ElementsIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => write!(f, "1 element in {}", self.1),
            n => write!(f, "{n} elements in {}", self.1),
        }
    }
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'de> {
    type Error = SerdeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::None => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(Int::Small(v)) => match u64::try_from(*v) {
                Ok(u) => visitor.visit_u64(u),
                Err(_) => visitor.visit_i64(*v),
            },
            Value::Int(Int::Big(b)) => {
                if let Some(u) = b.to_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = b.to_i128() {
                    visitor.visit_i128(i)
                } else if let Some(u) = b.to_u128() {
                    visitor.visit_u128(u)
                } else {
                    Err(SerdeError::new(format!(
                        "integer {b} out of range for {}: no Rust integer type (i128/u128) \
                         holds it",
                        &visitor as &dyn Expected
                    )))
                }
            }
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => match s.as_str() {
                Some(t) => visitor.visit_borrowed_str(t),
                None => Err(surrogate_error(&visitor)),
            },
            Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
            Value::ByteArray(b) => visitor.visit_borrowed_bytes(b),
            Value::Tuple(items) | Value::List(items) => {
                Self::seq(items.iter(), items.len(), visitor)
            }
            Value::Set(s) | Value::FrozenSet(s) => Self::seq(s.iter(), s.len(), visitor),
            Value::Dict(d) => Self::map(d, false, visitor),
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::Bool(b) => visitor.visit_bool(*b),
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    de_int! {
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_i128 => visit_i128: i128,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
        deserialize_u128 => visit_u128: u128,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::Float(f) => visitor.visit_f32(*f as f32),
            Value::Int(i) => visitor.visit_f32(int_to_f64(i)? as f32),
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Int(i) => visitor.visit_f64(int_to_f64(i)?),
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        let Value::Str(s) = self.value else {
            return Err(type_error(self.value, &visitor));
        };
        let Some(t) = s.as_str() else {
            return Err(surrogate_error(&visitor));
        };
        let mut chars = t.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(SerdeError::new(format!(
                "cannot deserialize a Python str of length {} into a char: it needs exactly one \
                 character",
                s.len()
            ))),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::Str(s) => match s.as_str() {
                Some(t) => visitor.visit_borrowed_str(t),
                None => Err(surrogate_error(&visitor)),
            },
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
            Value::ByteArray(b) => visitor.visit_borrowed_bytes(b),
            // A list of ints, for byte-buffer types that also accept a sequence.
            Value::List(items) | Value::Tuple(items) => {
                Self::seq(items.iter(), items.len(), visitor)
            }
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::None => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::None => visitor.visit_unit(),
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        if name == MAGIC {
            DE_STASH.with(|c| c.set(Some(self.value.clone())));
            let out = visitor.visit_newtype_struct(self);
            drop(DE_STASH.with(Cell::take));
            return out;
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::List(items) | Value::Tuple(items) => {
                Self::seq(items.iter(), items.len(), visitor)
            }
            Value::Set(s) | Value::FrozenSet(s) => Self::seq(s.iter(), s.len(), visitor),
            Value::Bytes(b) => Self::bytes_as_seq(b, visitor),
            Value::ByteArray(b) => Self::bytes_as_seq(b, visitor),
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::Tuple(items) | Value::List(items) => {
                Self::seq(items.iter(), items.len(), visitor)
            }
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::Dict(d) => Self::map(d, false, visitor),
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::Dict(d) => Self::map(d, true, visitor),
            Value::Tuple(items) | Value::List(items) => {
                Self::seq(items.iter(), items.len(), visitor)
            }
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        match self.value {
            Value::Str(_) => visitor.visit_enum(EnumAccess {
                variant: self.value,
                content: None,
            }),
            Value::Dict(d) => {
                let mut entries = d.iter();
                match (entries.next(), entries.next()) {
                    (Some((k, v)), None) => visitor.visit_enum(EnumAccess {
                        variant: k,
                        content: Some(v),
                    }),
                    _ => Err(SerdeError::new(format!(
                        "cannot deserialize a Python dict with {} entries into {}: an enum is \
                         a str (unit variant) or a one-entry dict {{variant: content}}",
                        d.len(),
                        &visitor as &dyn Expected
                    ))),
                }
            }
            _ => Err(type_error(self.value, &visitor)),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        visitor.visit_unit()
    }
}

struct SeqAccess<I> {
    iter: I,
    index: usize,
    len: usize,
}

impl<'de, I: Iterator<Item = &'de Value>> de::SeqAccess<'de> for SeqAccess<I> {
    type Error = SerdeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, SerdeError> {
        let Some(value) = self.iter.next() else {
            return Ok(None);
        };
        let i = self.index;
        self.index += 1;
        seed.deserialize(ValueDeserializer { value })
            .map(Some)
            .map_err(|e| e.at(Segment::Index(i)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len - self.index)
    }
}

struct MapAccess<'de, I> {
    iter: I,
    key: Option<&'de Value>,
    value: Option<&'de Value>,
    /// Keys are struct field names (report them as `.name`).
    fields: bool,
    index: usize,
    len: usize,
}

fn key_segment(key: &Value, fields: bool) -> Segment {
    match key {
        Value::Str(s) if fields => match s.as_str() {
            Some(t) => Segment::Field(t.to_owned()),
            None => Segment::Key(short_repr(key)),
        },
        _ => Segment::Key(short_repr(key)),
    }
}

impl<'de, I> de::MapAccess<'de> for MapAccess<'de, I>
where
    I: Iterator<Item = (&'de Value, &'de Value)>,
{
    type Error = SerdeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, SerdeError> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.index += 1;
        self.key = Some(key);
        self.value = Some(value);
        seed.deserialize(ValueDeserializer { value: key }).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, SerdeError> {
        let (Some(key), Some(value)) = (self.key, self.value.take()) else {
            return Err(SerdeError::new("a dict value was requested before its key"));
        };
        seed.deserialize(ValueDeserializer { value })
            .map_err(|e| e.at(key_segment(key, self.fields)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len - self.index)
    }
}

struct EnumAccess<'de> {
    variant: &'de Value,
    content: Option<&'de Value>,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = SerdeError;
    type Variant = VariantAccess<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantAccess<'de>), SerdeError> {
        let v = seed.deserialize(ValueDeserializer {
            value: self.variant,
        })?;
        Ok((
            v,
            VariantAccess {
                variant: self.variant,
                content: self.content,
            },
        ))
    }
}

struct VariantAccess<'de> {
    variant: &'de Value,
    content: Option<&'de Value>,
}

impl<'de> VariantAccess<'de> {
    fn name(&self) -> String {
        match self.variant {
            Value::Str(s) => s.to_string_lossy(),
            other => short_repr(other),
        }
    }
    fn content(&self, kind: &str) -> Result<&'de Value, SerdeError> {
        self.content.ok_or_else(|| {
            let name = self.name();
            SerdeError::new(format!(
                "enum variant `{name}` is a {kind} and needs content: expected a one-entry \
                 dict {{'{name}': ...}}, got the str '{name}'"
            ))
        })
    }
    fn segment(&self) -> Segment {
        Segment::Field(self.name())
    }
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'de> {
    type Error = SerdeError;

    fn unit_variant(self) -> Result<(), SerdeError> {
        match self.content {
            None | Some(Value::None) => Ok(()),
            Some(other) => Err(SerdeError::new(format!(
                "enum variant `{}` is a unit variant and takes no content, got a Python {}",
                self.name(),
                py_type(other)
            ))),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, SerdeError> {
        let value = self.content("newtype variant")?;
        seed.deserialize(ValueDeserializer { value })
            .map_err(|e| e.at(self.segment()))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        let value = self.content("tuple variant")?;
        de::Deserializer::deserialize_tuple(ValueDeserializer { value }, len, visitor)
            .map_err(|e| e.at(self.segment()))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        let value = self.content("struct variant")?;
        de::Deserializer::deserialize_struct(ValueDeserializer { value }, "", fields, visitor)
            .map_err(|e| e.at(self.segment()))
    }
}
