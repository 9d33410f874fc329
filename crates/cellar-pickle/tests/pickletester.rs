//! The unpickling and bad-data tests of CPython 3.11's Lib/test/pickletester.py
//! (`AbstractUnpickleTests`, 43 tests, run through test_pickle's C-unpickler class by
//! tests/support/pickletester_corpus.py), replayed against cellar: every pickle those tests
//! load, with CPython's outcome.
//! - CPython raises -> cellar raises (an UnpicklingError or the exception CPython raises).
//! - CPython loads a basic value -> cellar loads the same value.
//! - CPython builds a class instance -> cellar refuses it by default, naming the global, and
//!   decodes it (or refuses it clearly) in inert mode.

mod common;

use cellar_pickle::{loads, LoadOptions, Registry, StringEncoding};
use cellar_value::{repr_sorted, Value};
use common::{get_record, run_python};

#[test]
fn pickletester_unpickling_and_bad_data() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/pickletester_corpus.py"
    );
    let out = run_python(script, &[], Vec::new());
    let reg = Registry::default();
    let mut pos = 0;
    let (mut errors, mut values, mut objects, mut inert_ok) = (0, 0, 0, 0);
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    while pos < out.len() {
        let data = get_record(&out, &mut pos).to_vec();
        let enc = String::from_utf8_lossy(get_record(&out, &mut pos)).into_owned();
        let outcome = String::from_utf8_lossy(get_record(&out, &mut pos)).into_owned();
        let encoding = if enc.is_empty() {
            StringEncoding::Ascii
        } else {
            match StringEncoding::from_name(&enc) {
                Some(e) => e,
                None => {
                    // cellar supports ascii, latin-1, utf-8 and 'bytes' for Python 2 strings
                    skipped.push(enc);
                    continue;
                }
            }
        };
        let opts = LoadOptions {
            encoding,
            ..LoadOptions::default()
        };
        let inert = LoadOptions {
            inert: true,
            ..opts
        };
        let got = loads(&data, &reg, &opts);
        let show = || format!("{:?}", &data[..data.len().min(60)]);
        if outcome.starts_with("ERR") {
            errors += 1;
            if let Ok(v) = got {
                failures.push(format!(
                    "{}: CPython {outcome}, cellar loaded {}",
                    show(),
                    repr_sorted(&v)
                ));
            }
        } else if let Some(want) = outcome.strip_prefix("OK ") {
            values += 1;
            match got {
                Ok(v) if repr_sorted(&v) == want => {}
                Ok(v) => failures.push(format!(
                    "{}: CPython {want}, cellar {}",
                    show(),
                    repr_sorted(&v)
                )),
                Err(e) => failures.push(format!("{}: CPython {want}, cellar {e}", show())),
            }
        } else {
            objects += 1;
            match got {
                Err(e)
                    if e.message.contains("forbidden")
                        || e.message.contains("cannot be loaded") => {}
                Err(e) => failures.push(format!(
                    "{}: CPython {outcome}, cellar refused oddly: {e}",
                    show()
                )),
                // A default-policy global the value model has no type for (builtins.range):
                // an inert description, as cellar_pickle::policy documents.
                Ok(Value::Object(ref o))
                    if cellar_pickle::policy::default_global(&o.module, &o.name).is_some() => {}
                Ok(v) => failures.push(format!(
                    "{}: CPython {outcome}, cellar loaded {}",
                    show(),
                    repr_sorted(&v)
                )),
            }
            match loads(&data, &reg, &inert) {
                Ok(_) => inert_ok += 1,
                Err(e) => assert!(e.message.contains("recursive"), "{}: inert: {e}", show()),
            }
        }
    }
    eprintln!(
        "pickletester: {errors} bad pickles refused, {values} basic values equal, {objects} class instances refused ({inert_ok} decoded inertly, the rest recursive), {} skipped (encodings {skipped:?})",
        skipped.len()
    );
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(errors + values + objects + skipped.len() >= 280);
    assert!(skipped.len() <= 5);
}
