//! The hostile pickle corpus (tests/corpus/pickle, written by make_corpus.py) through the Rust
//! API: every case in every mode has the outcome expected.tsv gives for the Rust face (its
//! `rust` column, `=` meaning the same as the Python face's). The Python package
//! (tests/python/test_pickle_corpus.py) and the CLI (crates/cellar-cli/tests/pickle_corpus.rs)
//! run the same corpus.

use std::path::PathBuf;

use cellar_pickle::{loads, LoadOptions, Registry};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/pickle")
}

/// corpus_classes.ALLOWED, by name: the Rust face allows them as inert objects.
const ALLOWED: [(&str, &str); 5] = [
    ("corpus_classes", "Point"),
    ("corpus_classes", "Slotted"),
    ("corpus_classes", "WithSetstate"),
    ("corpus_classes", "Outer.Inner"),
    ("corpus_classes", "make_point"),
];

#[test]
fn corpus_outcomes() {
    let dir = corpus_dir();
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).expect("expected.tsv");
    let default_reg = Registry::default();
    let mut allow_reg = Registry::default();
    for (m, n) in ALLOWED {
        allow_reg.allow(m, n);
    }
    let mut bad = Vec::new();
    let mut count = 0;
    for line in tsv.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.splitn(5, '\t').collect();
        let (name, mode, outcome, rust) = (cols[0], cols[1], cols[2], cols[3]);
        let want = if rust == "=" { outcome } else { rust };
        let data = std::fs::read(dir.join(format!("{name}.pkl"))).expect("case file");
        let opts = LoadOptions {
            inert: mode == "inert",
            max_bytes: name.starts_with("maxbytes_").then_some(1024),
            ..LoadOptions::default()
        };
        let reg = if mode == "allow" {
            &allow_reg
        } else {
            &default_reg
        };
        let got = match loads(&data, reg, &opts) {
            Ok(_) => "ok",
            Err(e) => e.kind.python_name(),
        };
        if got != want {
            bad.push(format!("{name} [{mode}]: expected {want}, got {got}"));
        }
        count += 1;
    }
    assert!(count >= 3000, "{count}");
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
