//! Fuzz the Python literal parser: never panics; whatever parses prints to a literal that
//! parses back to an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(v) = cellar_value::parse(text) {
            let printed = cellar_value::repr(&v);
            // NaN prints as `nan`, which is not literal syntax; everything else must re-parse.
            if !printed.contains("nan") && !printed.contains("inf") && !printed.contains("<class") {
                let again = cellar_value::parse(&printed).expect("repr output must parse");
                // Signed zeros in complex numbers do not survive repr -> parse (nor in CPython:
                // '(-0-0j)' evaluates to 0j), so the check is Python equality.
                assert!(again.py_eq(&v), "{printed}");
            }
        }
    }
});
