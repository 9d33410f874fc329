//! Fuzz the one marshal decoder core (through the `Value` sink) against the one encoder:
//! - any input either fails with a DecodeError or yields a value that prints and re-encodes at
//!   every version it supports;
//! - differential: a value that decodes re-encodes and reloads to the same value, and a stream
//!   cellar wrote itself reloads and re-encodes to IDENTICAL bytes (decode and encode are exact
//!   inverses on the encoder's own output);
//! - the input position reported for a successful decode never exceeds the input.
#![no_main]

use cellar_marshal::{loads_with, LoadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((v, used)) = loads_with(data, &LoadOptions::default()) else {
        return;
    };
    assert!(used <= data.len());
    let _ = cellar_value::repr(&v);
    for version in [0, 2, 3, 4, 5] {
        if let Ok(bytes) = cellar_marshal::dumps(&v, version) {
            let back = cellar_marshal::loads(&bytes).expect("cellar must load its own output");
            if version >= 2 {
                assert!(
                    back.same(&v),
                    "round trip changed the value at version {version}"
                );
                let again = cellar_marshal::dumps(&back, version).expect("re-encode");
                assert_eq!(
                    again, bytes,
                    "decode/encode not inverse at version {version}"
                );
            }
        }
    }
});
