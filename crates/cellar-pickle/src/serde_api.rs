//! serde support: Rust types to pickles and back through cellar's value model
//! (`cellar_value::{to_value, from_value}`, mapping in docs/serde.md), with registered types
//! written as instances of their Python class.

use std::any::TypeId;

use cellar_value::{Dict, Value};

use crate::inert::{Construct, Inert};
use crate::registry::Registry;
use crate::value_sink::LoadOptions;
use crate::{dumps, loads_with, DEFAULT_PROTOCOL};
use crate::{PicklingError, UnpicklingError};

/// A failure of the serde functions.
#[derive(Debug, Clone)]
pub enum SerdeError {
    /// Mapping between the Rust type and a Python value failed (see docs/serde.md).
    Mapping(cellar_value::SerdeError),
    /// The value could not be pickled.
    Encode(PicklingError),
    /// The bytes are not a pickle cellar accepts.
    Decode(UnpicklingError),
}

impl std::fmt::Display for SerdeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerdeError::Mapping(e) => write!(f, "{e}"),
            SerdeError::Encode(e) => write!(f, "{e}"),
            SerdeError::Decode(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SerdeError {}

/// Serializes any `T: Serialize` to a pickle (protocol [`DEFAULT_PROTOCOL`]): structs become
/// dicts with str keys, tuples tuples, `Vec`s lists, maps dicts.
pub fn to_vec<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SerdeError> {
    let v = cellar_value::to_value(value).map_err(SerdeError::Mapping)?;
    dumps(&v, DEFAULT_PROTOCOL, &Registry::default()).map_err(SerdeError::Encode)
}

/// Like [`to_vec`], but if `T` was registered with [`Registry::register_type`] the value is
/// written as an instance of that Python class (`cls.__new__(cls)` with `T`'s fields as its
/// `__dict__`), so CPython's `pickle.loads` rebuilds a real object of that class.
pub fn to_vec_with<T: serde::Serialize + 'static>(
    value: &T,
    protocol: u8,
    registry: &Registry,
) -> Result<Vec<u8>, SerdeError> {
    let v = cellar_value::to_value(value).map_err(SerdeError::Mapping)?;
    let v = match registry.types.get(&TypeId::of::<T>()) {
        Some((module, name)) => {
            let mut o = Inert::new(module, name, Construct::NewObj, Value::tuple(Vec::new()));
            o.state = v;
            o.to_value()
        }
        None => v,
    };
    dumps(&v, protocol, registry).map_err(SerdeError::Encode)
}

/// Deserializes a `T` from a pickle of basic types (any protocol; every class is refused).
pub fn from_slice<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, SerdeError> {
    from_slice_with(data, &Registry::default())
}

/// Deserializes a `T` from a pickle, rebuilding the classes `registry` allows; instances of
/// types registered with [`Registry::register_type`] load as their `__dict__`, which maps onto
/// the struct's fields.
pub fn from_slice_with<T: serde::de::DeserializeOwned>(
    data: &[u8],
    registry: &Registry,
) -> Result<T, SerdeError> {
    let (v, _) = loads_with(data, registry, &LoadOptions::default()).map_err(SerdeError::Decode)?;
    cellar_value::from_value(v).map_err(SerdeError::Mapping)
}

/// The constructor used for registered types: an instance becomes its attribute dict (the
/// `__dict__` state, merged with the slots of a `(dict, slots)` state), a bare class reference
/// becomes `None`.
pub(crate) fn state_of(o: &Inert) -> Result<Value, String> {
    if o.construct == Construct::Global {
        return Ok(Value::None);
    }
    match &o.state {
        Value::None => Ok(Value::Dict(Default::default())),
        Value::Dict(_) => Ok(o.state.clone()),
        Value::Tuple(t) if t.len() == 2 => {
            let mut d = Dict::new();
            for part in t.iter() {
                match part {
                    Value::Dict(p) => {
                        for (k, v) in p.iter() {
                            d.insert(k.clone(), v.clone()).map_err(|e| e.to_string())?;
                        }
                    }
                    Value::None => {}
                    _ => return Err(format!("unsupported state for {}", o.qualified_name())),
                }
            }
            Ok(Value::Dict(std::sync::Arc::new(d)))
        }
        _ => Ok(o.state.clone()),
    }
}
