//! Differential test against the machine's CPython (python3): >= 10,000 generated values of
//! every type and edge, for marshal versions 0-4, in both directions:
//! - CPython loads cellar's bytes to a value whose repr (sets sorted) equals cellar's repr;
//! - cellar loads CPython's bytes (CPython re-dumping that value) to a structurally identical
//!   value (same types, floats bit for bit, same dict order).

mod common;

use cellar_marshal::{dumps, loads};
use cellar_value::repr_sorted;
use common::{diff, get_record, put_record, run_python, Gen};

const VALUES: usize = 10_500;

#[test]
fn cpython_agrees_on_random_values_versions_0_to_4() {
    let mut gen = Gen::new(0x5EED_CE11A5);
    let values: Vec<_> = (0..VALUES).map(|i| gen.value(1 + (i % 4) as u32)).collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/differential.py");
    let mut total = 0;
    for version in 0..=4u32 {
        let mut input = Vec::new();
        let mut ours = Vec::new();
        for v in &values {
            let b = dumps(v, version)
                .unwrap_or_else(|e| panic!("dumps({}) v{version}: {e}", repr_sorted(v)));
            input.push(version as u8);
            put_record(&mut input, &b);
            ours.push(b);
        }
        let out = run_python(script, &[], input);
        let mut pos = 0;
        let mut failures = Vec::new();
        for (v, our_bytes) in values.iter().zip(&ours) {
            let theirs_repr = String::from_utf8_lossy(get_record(&out, &mut pos)).into_owned();
            let their_bytes = get_record(&out, &mut pos);
            let our_repr = repr_sorted(v);
            if theirs_repr != our_repr {
                failures.push(format!(
                    "v{version}: CPython's load differs from cellar's value: {}",
                    diff(&theirs_repr, &our_repr)
                ));
                let _ = our_bytes;
                continue;
            }
            match loads(their_bytes) {
                // Text floats (versions 0 and 1) keep no NaN sign or payload: compare by repr there.
                Ok(back) if back.same(v) || (version < 2 && repr_sorted(&back) == our_repr) => {}
                Ok(back) => failures.push(format!(
                    "v{version}: cellar's load of CPython's bytes differs: {}",
                    diff(&repr_sorted(&back), &our_repr)
                )),
                Err(e) => failures.push(format!(
                    "v{version}: cellar failed on CPython's bytes for {our_repr}: {e}"
                )),
            }
            total += 1;
        }
        assert!(
            failures.is_empty(),
            "{} mismatches at version {version}, first ones:\n{}",
            failures.len(),
            failures
                .iter()
                .take(3)
                .map(|f| f.chars().take(1500).collect::<String>())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(total, VALUES * 5);
}
