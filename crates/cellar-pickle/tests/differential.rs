//! Differential test against the machine's CPython (python3): >= 10,000 generated values of
//! every type and edge (ints to ~3000 bits, floats incl. NaN/-0.0, str with lone surrogates,
//! bytes, bytearray, complex, slices, nested containers with shared sub-objects, colliding
//! dict keys), for pickle protocols 0-5, in both directions:
//! - CPython's pickle.loads of cellar's bytes gives a value whose repr (sets sorted) equals
//!   cellar's repr;
//! - cellar loads CPython's pickle.dumps of that value to a structurally identical value
//!   (same types, floats bit for bit, same dict order).

mod common;

use cellar_pickle::{dumps, loads, LoadOptions, Registry};
use cellar_value::repr_sorted;
use common::{diff, get_record, put_record, run_python, Gen};

const VALUES: usize = 10_200;

#[test]
fn cpython_agrees_on_random_values_protocols_0_to_5() {
    let reg = Registry::default();
    let opts = LoadOptions::default();
    let mut gen = Gen::new(0x005E_ED91_C41E);
    let values: Vec<_> = (0..VALUES).map(|i| gen.value(1 + (i % 4) as u32)).collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/differential.py");
    let mut per_protocol = [0usize; 6];
    for protocol in 0..=5u8 {
        let mut input = Vec::new();
        for v in &values {
            let b = dumps(v, protocol, &reg)
                .unwrap_or_else(|e| panic!("dumps({}) p{protocol}: {e}", repr_sorted(v)));
            input.push(protocol);
            put_record(&mut input, &b);
        }
        let t0 = std::time::Instant::now();
        let out = run_python(script, &[], input);
        eprintln!("p{protocol}: python {:?}", t0.elapsed());
        let t0 = std::time::Instant::now();
        let mut pos = 0;
        let mut failures = Vec::new();
        for v in &values {
            let theirs_repr = String::from_utf8_lossy(get_record(&out, &mut pos)).into_owned();
            let their_bytes = get_record(&out, &mut pos);
            let our_repr = repr_sorted(v);
            if theirs_repr != our_repr {
                failures.push(format!(
                    "p{protocol}: CPython's load differs from cellar's value: {}",
                    diff(&theirs_repr, &our_repr)
                ));
                continue;
            }
            match loads(their_bytes, &reg, &opts) {
                // Text floats (protocol 0) keep no NaN sign or payload: compare by repr there.
                Ok(back) if back.same(v) || (protocol == 0 && repr_sorted(&back) == our_repr) => {
                    per_protocol[protocol as usize] += 1
                }
                Ok(back) => failures.push(format!(
                    "p{protocol}: cellar's load of CPython's bytes differs: {}",
                    diff(&repr_sorted(&back), &our_repr)
                )),
                Err(e) => failures.push(format!(
                    "p{protocol}: cellar failed on CPython's bytes for {our_repr}: {e}"
                )),
            }
        }
        eprintln!("p{protocol}: compare {:?}", t0.elapsed());
        assert!(
            failures.is_empty(),
            "{} mismatches at protocol {protocol}, first ones:\n{}",
            failures.len(),
            failures
                .iter()
                .take(3)
                .map(|f| f.chars().take(1500).collect::<String>())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    eprintln!("values agreeing per protocol 0-5: {per_protocol:?}");
    assert_eq!(per_protocol, [VALUES; 6]);
}
