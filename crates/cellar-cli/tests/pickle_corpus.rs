//! The hostile pickle corpus (tests/corpus/pickle) through `cellar pickle show`: every case's
//! inert-mode outcome (the CLI decodes inertly) holds: `ok` exits 0 and prints the value, an
//! error exits non-zero with a message naming the exception type. `--globals` never fails on a
//! case (it lists what it found and why it stopped).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn show_agrees_with_the_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/pickle");
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).expect("expected.tsv");
    let mut bad = Vec::new();
    let mut count = 0;
    for line in tsv.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.splitn(5, '\t').collect();
        let (name, mode, outcome, rust) = (cols[0], cols[1], cols[2], cols[3]);
        // The CLI is the inert face; max_bytes cases use the default limit there.
        if mode != "inert" || name.starts_with("maxbytes_") {
            continue;
        }
        let want = if rust == "=" { outcome } else { rust };
        let file = dir.join(format!("{name}.pkl"));
        let out = Command::new(env!("CARGO_BIN_EXE_cellar"))
            .args(["pickle", "show"])
            .arg(&file)
            .output()
            .expect("run cellar");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ok = out.status.success();
        if want == "ok" && !ok {
            bad.push(format!("{name}: expected ok, got failure: {stderr}"));
        } else if want != "ok" && (ok || !stderr.contains(want)) {
            bad.push(format!("{name}: expected {want}, got ok={ok} {stderr}"));
        }
        if count % 7 == 0 {
            let g = Command::new(env!("CARGO_BIN_EXE_cellar"))
                .args(["pickle", "show", "--globals"])
                .arg(&file)
                .output()
                .expect("run cellar");
            if !g.status.success() {
                bad.push(format!("{name}: --globals failed"));
            }
        }
        count += 1;
    }
    assert!(count >= 1000, "{count}");
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad[..bad.len().min(30)].join("\n")
    );
}
