//! The shared hostile marshal corpus (tests/corpus/marshal/) through `cellar marshal show`:
//! exit 0 for the cases that decode, non-zero with the exception type named on stderr for the
//! others (the Rust `Value` outcome: `python|rust` columns use the second).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn marshal_show_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/marshal");
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).expect("expected.tsv");
    let mut failures = Vec::new();
    let mut n = 0;
    for line in tsv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut cols = line.split('\t');
        let name = cols.next().expect("name");
        let expected = cols
            .next()
            .expect("outcome")
            .rsplit('|')
            .next()
            .expect("outcome");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cellar"));
        cmd.args(["marshal", "show"]);
        if name.starts_with("nocode_") {
            cmd.arg("--no-code");
        }
        let out = cmd
            .arg(dir.join(format!("{name}.bin")))
            .output()
            .expect("run cellar");
        n += 1;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ok = if expected == "ok" {
            out.status.success()
        } else {
            !out.status.success() && stderr.contains(&format!("{expected}: "))
        };
        if !ok {
            failures.push(format!(
                "{name}: expected {expected}, got status {:?}, stderr {stderr}",
                out.status.code()
            ));
        }
    }
    assert!(n > 1000);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
