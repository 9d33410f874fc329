//! Inert objects: class instances (and other globals) that a pickle describes but that were not
//! rebuilt, kept as data for inspection and written back to an equivalent pickle. They are
//! cellar's value model's [`Value::Object`](cellar_value::Value::Object); `Inert` is its name on
//! the pickle side.

pub use cellar_value::{Construct, Object as Inert};
