//! Fuzz marshal loads: any input either fails with a DecodeError or yields a value that
//! prints, re-encodes at every version it supports, and reloads to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = cellar_marshal::loads(data) {
        let _ = cellar_value::repr(&v);
        for version in [0, 2, 3, 4, 5] {
            if let Ok(bytes) = cellar_marshal::dumps(&v, version) {
                let back = cellar_marshal::loads(&bytes).expect("cellar must load its own output");
                if version >= 2 {
                    assert!(back.same(&v), "round trip changed the value at version {version}");
                }
            }
        }
    }
});
