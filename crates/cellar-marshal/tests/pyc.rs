//! Every .pyc under the machine's CPython lib directory loads with cellar, and cellar's re-dump
//! loads in CPython to an equal code object (same co_* fields, recursively).

mod common;

use cellar_marshal::pyc::PycHeader;
use cellar_marshal::{dumps, loads};
use common::{put_record, run_python};

fn pyc_files() -> Vec<std::path::PathBuf> {
    let out = std::process::Command::new(common::python())
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .expect("python3");
    let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(root)];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "pyc") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_stdlib_pyc_loads_and_round_trips_through_cpython() {
    let files = pyc_files();
    assert!(
        files.len() > 1000,
        "expected the stdlib's .pyc files, found {}",
        files.len()
    );
    let mut input = Vec::new();
    let mut count = 0usize;
    for f in &files {
        let data = std::fs::read(f).expect("read pyc");
        let header = PycHeader::parse(&data).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            header.code_layout_supported(),
            "{}: magic {}",
            f.display(),
            header.magic
        );
        let v = loads(&data[16..]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(matches!(v, cellar_value::Value::Code(_)), "{}", f.display());
        let again = dumps(&v, 4).expect("re-dump");
        put_record(&mut input, f.to_string_lossy().as_bytes());
        put_record(&mut input, &data[16..]);
        put_record(&mut input, &again);
        count += 1;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/compare_code.py");
    let out = run_python(script, &[], input);
    let report = String::from_utf8_lossy(&out);
    assert_eq!(
        report.trim(),
        format!("{count} equal"),
        "CPython's comparison:\n{report}"
    );
}
