//! The shared test support (crates/cellar-testkit), marshal flavour of the value generator.
#![allow(unused_imports)]

pub use cellar_testkit::*;
