//! Fuzz pickle loads: any input either fails with an UnpicklingError or yields a value that
//! prints, re-encodes at every protocol, and reloads to the same value (see below for
//! protocols 0-2). Both the strict
//! default registry and inert mode are exercised, and the policy is checked against
//! `globals_of`: a pickle the default registry loads names only default globals
//! (cellar_pickle::policy), and never BUILDs on a global itself.
#![no_main]

use cellar_pickle::{dumps, globals_of, loads, policy, LoadOptions, Registry};
use cellar_value::Value;
use libfuzzer_sys::fuzz_target;

/// Whether `v` holds an inert object anywhere (iterative: values may be deep).
fn has_object(v: &Value) -> bool {
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(_) => return true,
            Value::Tuple(t) | Value::List(t) => todo.extend(t.iter()),
            Value::Dict(d) => todo.extend(d.iter().flat_map(|(k, v)| [k, v])),
            Value::Set(s) | Value::FrozenSet(s) => todo.extend(s.iter()),
            Value::Slice(s) => todo.extend([&s.start, &s.stop, &s.step]),
            _ => {}
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let reg = Registry::default();
    let inert = LoadOptions {
        inert: true,
        ..LoadOptions::default()
    };
    let strict = loads(data, &reg, &LoadOptions::default());
    let loose = loads(data, &reg, &inert);
    let report = globals_of(data, &reg, true);
    if strict.is_ok() && report.error.is_none() {
        for g in &report.globals {
            assert!(
                policy::default_global(&g.module, &g.name).is_some() || g.name.contains('.'), // getattr(Outer, 'Inner') names, never resolved
                "strict load accepted a pickle naming {}.{}",
                g.module,
                g.name
            );
            assert!(
                !g.built_itself,
                "strict load accepted BUILD on {}.{}",
                g.module, g.name
            );
        }
    }
    if let Ok(v) = &strict {
        let w = loose
            .as_ref()
            .expect("inert mode accepts what strict mode accepts");
        assert!(w.same(v), "inert mode changed a strictly loadable value");
    }
    if let Ok(v) = loose {
        // Below protocol 3 an inert global with a Python 2 name (say `__builtin__.set`, kept
        // inert because the pickle declared protocol 3+) is mapped by fix_imports when read
        // back, exactly as CPython would (and may then not load): only plain values must survive
        // there.
        let has_inert = has_object(&v);
        for protocol in 0..=5u8 {
            if let Ok(bytes) = dumps(&v, protocol, &reg) {
                let exact = protocol >= 3 || !has_inert;
                match loads(&bytes, &reg, &inert) {
                    Ok(back) => {
                        if exact && protocol >= 1 {
                            assert!(
                                back.same(&v),
                                "round trip changed the value at protocol {protocol}"
                            );
                        }
                    }
                    Err(e) => assert!(!exact, "cellar must load its own output: {e}"),
                }
            }
        }
    }
});
