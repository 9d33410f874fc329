//! End-to-end tests of the `cellar` binary.

use std::io::Write;
use std::process::{Command, Stdio};

fn cellar(args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cellar"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cellar");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn encode_then_show_round_trips_literals() {
    for lit in [
        "{'my object': 'out', (1, 2, 3): 4}",
        "[None, True, 1.5, -0.0, (1+2j), b'\\x00', frozenset({1}), set(), '\\ud800', 123456789012345678901234567890]",
    ] {
        for version in ["0", "2", "4", "5"] {
            let (ok, bytes, err) = cellar(&["marshal", "encode", "--version", version], lit.as_bytes());
            assert!(ok, "{err}");
            let (ok, shown, err) = cellar(&["marshal", "show", "-"], &bytes);
            assert!(ok, "{err}");
            assert_eq!(String::from_utf8_lossy(&shown).trim_end(), lit);
        }
    }
}

#[test]
fn show_reports_bad_input_clearly() {
    let (ok, _, err) = cellar(&["marshal", "show", "-"], b"[\xff\xff\xff\x7fNN");
    assert!(!ok);
    assert!(err.contains("EOFError: marshal data too short"), "{err}");
    let (ok, _, err) = cellar(&["marshal", "encode"], b"os.system('x')");
    assert!(!ok);
    assert!(err.contains("not a Python literal"), "{err}");
    let (ok, _, err) = cellar(&["marshal", "encode", "--version", "4"], b"slice(1, 2, 3)");
    assert!(!ok);
    assert!(err.contains("unmarshallable object"), "{err}");
}

#[test]
fn show_pyc_prints_header_and_code() {
    let dir = std::env::temp_dir().join(format!("cellar-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let src = dir.join("m.py");
    std::fs::write(&src, "def f(x):\n    return x + 1\n").expect("write");
    let status = Command::new(std::env::var("CELLAR_PYTHON").unwrap_or_else(|_| "python3".into()))
        .args([
            "-c",
            &format!(
                "import py_compile; py_compile.compile({:?}, cfile={:?})",
                src.display().to_string(),
                dir.join("m.pyc").display().to_string()
            ),
        ])
        .status()
        .expect("python3");
    assert!(status.success());
    let (ok, out, err) = cellar(
        &[
            "marshal",
            "show",
            dir.join("m.pyc").to_str().expect("utf-8 path"),
        ],
        b"",
    );
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("# .pyc header: magic "), "{out}");
    assert!(out.contains("source size 27 bytes"), "{out}");
    assert!(out.contains("<code f, file "), "{out}");
    assert!(out.contains("locals=('x' local)"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_stores_and_reads_back_on_the_native_engine() {
    let dir = std::env::temp_dir().join(format!("cellar-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join("demo.cellar");
    let (ok, out, err) = cellar(
        &["demo", path.to_str().expect("utf-8"), "--records", "2500"],
        b"",
    );
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("db[\"test key\"] = 'test data'"), "{out}");
    assert!(out.contains("db[\"user:2499\"] = {'id': 2499, 'name': 'user2499', 'tags': ('a', 'b'), 'score': 1.5}"), "{out}");
    assert!(out.contains("2501 keys (2501 decoded)"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
