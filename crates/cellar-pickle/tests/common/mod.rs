//! The shared test support (crates/cellar-testkit), pickle flavour of the value generator
//! (bytearray and slices included).
#![allow(unused_imports, dead_code)]

pub use cellar_testkit::{diff, get_record, put_record, python, run_python, Rng};

/// `Gen::new(seed)` gives the pickle flavour of the shared generator.
pub struct Gen;

impl Gen {
    #[allow(clippy::new_ret_no_self)] // keeps the tests' `Gen::new(seed)` spelling
    pub fn new(seed: u64) -> cellar_testkit::Gen {
        cellar_testkit::Gen::pickle(seed)
    }
}
