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
    assert!(
        err.contains("EOFError: EOF read where object expected"),
        "{err}"
    );
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

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cellar-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp");
    dir
}

/// Output with runs of spaces folded (the CLI aligns `key: value` columns).
fn squash(s: &str) -> String {
    s.lines()
        .map(|l| {
            l.split(' ')
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ok(args: &[&str], stdin: &[u8]) -> String {
    let (good, out, err) = cellar(args, stdin);
    assert!(good, "cellar {args:?} failed: {err}");
    String::from_utf8(out).expect("utf-8 output")
}

#[test]
fn store_commands_on_every_backend() {
    let dir = tmpdir("stores");
    // Every byte value in keys and values, through dump (JSON Lines) and load.
    let mut jsonl = String::new();
    for b in 0..=255u8 {
        let key = cellar_json_bytes(&[b'k', b]);
        let val = cellar_json_bytes(&[b, b'\n', b'"', b'\'', 0xff]);
        jsonl.push_str(&format!("{{\"key\": {key}, \"value\": {val}}}\n"));
    }
    jsonl.push_str("{\"key\": \"\", \"value\": \"\"}\n");
    for backend in ["native", "sqlite", "dumb"] {
        let p = dir.join(format!("db-{backend}"));
        let p = p.to_str().expect("utf-8");
        let (good, _, err) = cellar(&["load", p, "--to", backend], jsonl.as_bytes());
        assert!(good, "{err}");
        let info = ok(&["info", p, "--json"], b"");
        assert!(info.contains("\"keys\":257"), "{backend}: {info}");
        let dumped = ok(&["dump", p], b"");
        assert_eq!(dumped.lines().count(), 257);
        // Reload the dump into a fresh native store: same contents (convert verifies checksums).
        let q = dir.join(format!("again-{backend}"));
        let (good, _, err) = cellar(&["load", q.to_str().expect("utf-8")], dumped.as_bytes());
        assert!(good, "{err}");
        let r = dir.join(format!("conv-{backend}"));
        let out = ok(
            &[
                "convert",
                q.to_str().expect("utf-8"),
                r.to_str().expect("utf-8"),
                "--to",
                backend,
            ],
            b"",
        );
        assert!(
            out.contains("converted 257 keys") && out.contains("checksums match"),
            "{out}"
        );
        // Single-key commands.
        ok(&["set", p, "--literal", "b'\\x00key'", "'valué'"], b"");
        assert_eq!(
            ok(&["get", p, "--literal", "b'\\x00key'"], b"").trim(),
            "b'valu\\xc3\\xa9'"
        );
        ok(
            &[
                "set",
                p,
                "obj",
                "{'a': (1, 2.5), 'b': None}",
                "--encode",
                "marshal",
            ],
            b"",
        );
        assert_eq!(
            ok(&["get", p, "obj", "--decode", "marshal"], b"").trim(),
            "{'a': (1, 2.5), 'b': None}"
        );
        ok(&["del", p, "obj"], b"");
        let (good, _, err) = cellar(&["get", p, "obj"], b"");
        assert!(!good && err.contains("not found"), "{err}");
        // Every writable backend compacts (dumb: a packed rewrite with a commit point).
        ok(&["compact", p], b"");
        assert!(ok(&["keys", p], b"").lines().any(|l| l == "b'\\x00key'"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// JSON for bytes as `cellar dump` writes it.
fn cellar_json_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::to_string(s).expect("json"),
        Err(_) => {
            // base64 by hand (standard alphabet) to keep the test independent of the CLI's code.
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = String::new();
            for chunk in b.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
                for i in 0..4 {
                    if i <= chunk.len() {
                        out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                    } else {
                        out.push('=');
                    }
                }
            }
            format!("{{\"base64\": \"{out}\"}}")
        }
    }
}

#[test]
fn cpython_dumb_store_converts_and_native_checks() {
    let dir = tmpdir("convert");
    let src = dir.join("py");
    let script = format!(
        "import dbm.dumb\nd = dbm.dumb.open({:?}, 'c')\nfor i in range(300):\n    d[b'key%d' % i] = bytes(range(i % 256)) * 3\nd[b'q\\'\"\\n'] = b''\nd.close()",
        src.display().to_string()
    );
    let status = Command::new(std::env::var("CELLAR_PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", &script])
        .status()
        .expect("python3");
    assert!(status.success());
    let srcs = src.to_str().expect("utf-8");
    assert!(squash(&ok(&["info", srcs], b"")).contains("format: dbm.dumb"));
    let dst = dir.join("native.cellar");
    let out = ok(&["convert", srcs, dst.to_str().expect("utf-8")], b"");
    assert!(out.contains("converted 301 keys"), "{out}");
    let report = ok(&["check", dst.to_str().expect("utf-8")], b"");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("status:") && l.ends_with(" ok")),
        "{report}"
    );
    let info = squash(&ok(&["info", dst.to_str().expect("utf-8")], b""));
    assert!(
        info.contains("format: dbm.native")
            && info.contains("keys: 301")
            && info.contains("dead (reclaimable): 0 bytes")
            && info.contains("closed cleanly: yes")
            && info.contains("status: ok"),
        "{info}"
    );
    // Bit rot in the middle of the native file is found by check.
    let mut bytes = std::fs::read(&dst).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&dst, &bytes).expect("write");
    let (good, out, err) = cellar(&["check", dst.to_str().expect("utf-8")], b"");
    assert!(!good, "{}", String::from_utf8_lossy(&out));
    assert!(err.contains("damaged"), "{err}");
    // Errors are clear: missing store, wrong format for check.
    let (good, _, err) = cellar(
        &["get", dir.join("nope").to_str().expect("utf-8"), "k"],
        b"",
    );
    assert!(!good && err.contains("no such store"), "{err}");
    let (good, _, err) = cellar(&["check", srcs], b"");
    assert!(!good && err.contains("native stores"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pickle_show_is_inert_and_never_runs_anything() {
    let dir = tmpdir("pickle");
    let marker = dir.join("pwned");
    let script = format!(
        "import pickle, sys\nclass P:\n    def __init__(s): s.x = 1; s.y = [1, 2]\nclass L(list): pass\nd = {{'p': P(), 'l': L([1, 2]), 'c': 1+2j, 's': {{1}}}}\nfor proto in range(6):\n    open({:?} + '/x%d.pkl' % proto, 'wb').write(pickle.dumps(d, proto))\nopen({:?} + '/evil.pkl', 'wb').write(b'cos\\nsystem\\n(S' + repr('touch ' + {:?}).encode() + b'\\ntR.')",
        dir.display().to_string(),
        dir.display().to_string(),
        marker.display().to_string()
    );
    let status = Command::new(std::env::var("CELLAR_PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", &script])
        .status()
        .expect("python3");
    assert!(status.success());
    for proto in 0..6 {
        let out = ok(
            &[
                "pickle",
                "show",
                dir.join(format!("x{proto}.pkl")).to_str().expect("utf-8"),
            ],
            b"",
        );
        assert!(out.contains("__main__.P"), "protocol {proto}: {out}");
        assert!(
            out.contains("'x': 1, 'y': [1, 2]"),
            "protocol {proto}: {out}"
        );
        assert!(
            out.contains("__main__.L") && out.contains("(1+2j)"),
            "protocol {proto}: {out}"
        );
    }
    let evil = dir.join("evil.pkl");
    let out = ok(&["pickle", "show", evil.to_str().expect("utf-8")], b"");
    assert!(out.starts_with("os.system('touch "), "{out}");
    let ops = ok(
        &["pickle", "show", "--ops", evil.to_str().expect("utf-8")],
        b"",
    );
    assert!(
        ops.contains("GLOBAL") && ops.contains("'os system'") && ops.contains("REDUCE"),
        "{ops}"
    );
    assert!(!marker.exists(), "the pickle must never run");
    // --decode pickle on a store value: the evil pickle stored, shown inertly.
    let db = dir.join("db.cellar");
    let db = db.to_str().expect("utf-8");
    // The evil pickle is ASCII, so its JSON Lines value is a plain string.
    let line = serde_json::json!({ "key": "evil", "value": String::from_utf8(std::fs::read(&evil).expect("read")).expect("ascii") })
        .to_string();
    let (good, _, err) = cellar(&["load", db], line.as_bytes());
    assert!(good, "{err}");
    let shown = ok(&["get", db, "evil", "--decode", "pickle"], b"");
    assert!(shown.starts_with("os.system('touch "), "{shown}");
    assert!(!marker.exists(), "the pickle must never run");
    let _ = std::fs::remove_dir_all(&dir);
}

#[path = "../../cellar-legacy/tests/common/mod.rs"]
mod legacy_fixtures;

#[test]
fn read_only_commands_and_convert_work_on_legacy_stores() {
    let Some(list) = legacy_fixtures::fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    for name in [
        "gnu_small",
        "ndbm_small",
        "ndbm_be_small",
        "gnu_numsync_small",
        "gnu_binary",
    ] {
        let Some(f) = list.iter().find(|f| f.name == name) else {
            continue;
        };
        let base = f.base.to_str().unwrap();
        let (ok, out, err) = cellar(&["info", base], b"");
        assert!(ok, "{name}: {err}");
        let out = String::from_utf8_lossy(&out);
        assert!(
            squash(&out).contains(&format!("keys: {}", f.count)),
            "{out}"
        );
        assert!(out.contains("variant: "), "{out}");
        let (ok, out, err) = cellar(&["check", base], b"");
        assert!(ok, "{name}: {err}");
        assert!(String::from_utf8_lossy(&out).contains("ok"));
        let (ok, out, err) = cellar(&["keys", base], b"");
        assert!(ok, "{err}");
        assert_eq!(String::from_utf8_lossy(&out).lines().count(), f.count);
        let (ok, out, err) = cellar(&["dump", base], b"");
        assert!(ok, "{err}");
        assert_eq!(String::from_utf8_lossy(&out).lines().count(), f.count);
        if name.ends_with("small") {
            let (ok, out, err) = cellar(&["get", base, "test key"], b"");
            assert!(ok, "{err}");
            assert_eq!(String::from_utf8_lossy(&out).trim(), "b'test data'");
        }
        // Writing is refused with the way out.
        let (ok, _, err) = cellar(&["set", base, "k", "v"], b"");
        assert!(!ok);
        assert!(
            err.contains("read-only in cellar") && err.contains("cellar convert"),
            "{err}"
        );
        // Convert, then the new store holds exactly the pairs the C library read.
        let dst = dir.path().join(format!("{name}.cellar"));
        let (ok, out, err) = cellar(&["convert", base, dst.to_str().unwrap()], b"");
        assert!(ok, "{name}: {err}");
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.contains(&format!("converted {} keys", f.count)),
            "{out}"
        );
        assert!(out.contains("checksums match"), "{out}");
        let (ok, out, _) = cellar(&["dump", dst.to_str().unwrap()], b"");
        assert!(ok);
        let mut a: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .map(String::from)
            .collect();
        let (_, out, _) = cellar(&["dump", base], b"");
        let mut b: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .map(String::from)
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}");
    }
    // A shelf written by the stdlib's shelve on dbm.gnu: converted, its values stay pickles.
    let f = list.iter().find(|f| f.name == "gnu_shelf").unwrap();
    let dst = dir.path().join("shelf.cellar");
    let (ok, _, err) = cellar(
        &["convert", f.base.to_str().unwrap(), dst.to_str().unwrap()],
        b"",
    );
    assert!(ok, "{err}");
    for path in [f.base.to_str().unwrap(), dst.to_str().unwrap()] {
        let (ok, out, err) = cellar(&["get", path, "list", "--decode", "pickle"], b"");
        assert!(ok, "{err}");
        assert_eq!(
            String::from_utf8_lossy(&out).trim(),
            "[1, 2.5, 'three', (4, None)]"
        );
    }
    // With --values pickle the native copy records that its values are pickles: get decodes
    // without being told, and so would cellar.shelve / the Rust Shelf.
    let marked = dir.path().join("shelf-marked.cellar");
    let (ok, _, err) = cellar(
        &[
            "convert",
            f.base.to_str().unwrap(),
            marked.to_str().unwrap(),
            "--values",
            "pickle",
        ],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = cellar(&["get", marked.to_str().unwrap(), "list"], b"");
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        "[1, 2.5, 'three', (4, None)]"
    );
    let (ok, out, _) = cellar(&["info", marked.to_str().unwrap()], b"");
    assert!(ok);
    let info = squash(&String::from_utf8_lossy(&out));
    assert!(info.contains("value encoding: pickle protocol "), "{info}");
    let (ok, _, err) = cellar(
        &[
            "convert",
            f.base.to_str().unwrap(),
            dir.path().join("x").to_str().unwrap(),
            "--values",
            "yaml",
        ],
        b"",
    );
    assert!(!ok && err.contains("--values"), "{err}");
    // A damaged GDBM file: check reports what is readable and fails.
    let f = list.iter().find(|f| f.name == "gnu_churn").unwrap();
    let mut bytes = std::fs::read(&f.file).unwrap();
    let n = bytes.len();
    bytes.truncate(n - n / 3);
    let bad = dir.path().join("damaged");
    std::fs::write(&bad, &bytes).unwrap();
    let (ok, out, _) = cellar(&["check", bad.to_str().unwrap()], b"");
    assert!(!ok);
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("damaged") && out.contains("pairs readable"),
        "{out}"
    );
    // repair copies what is readable into a new native store.
    let fixed = dir.path().join("fixed.cellar");
    let (ok, out, err) = cellar(
        &["repair", bad.to_str().unwrap(), fixed.to_str().unwrap()],
        b"",
    );
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("readable pairs") && out.contains("damaged structures skipped"),
        "{out}"
    );
    let n: usize = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n > 0 && n < f.count, "{out}");
    let (ok, keys, _) = cellar(&["keys", fixed.to_str().unwrap()], b"");
    assert!(ok);
    assert_eq!(String::from_utf8_lossy(&keys).lines().count(), n);
}

/// Issue 13: check and repair of damaged native stores, from the records alone; special files
/// refused at once; many short writer opens do not grow the file by a checkpoint each.
#[test]
fn native_damage_check_repair_and_fifo() {
    let dir = tmpdir("damage");
    let db = dir.join("d.cellar");
    let dbs = db.to_str().unwrap();
    let mut lines = String::new();
    for i in 0..300 {
        lines.push_str(&format!(
            "{{\"key\": \"key-{i:04}\", \"value\": \"value-{i}\"}}\n"
        ));
    }
    ok(&["load", dbs], lines.as_bytes());
    // 30 one-key writer opens: no full index checkpoint each time.
    let before = std::fs::metadata(&db).unwrap().len();
    for i in 0..30 {
        ok(&["set", dbs, &format!("extra-{i}"), "v"], b"");
    }
    let after = std::fs::metadata(&db).unwrap().len();
    assert!(after < before + 30 * 64, "{before} -> {after}");
    let clean = ok(&["check", dbs], b"");
    assert!(clean.contains("intact records:"), "{clean}");
    // One flipped bit in the magic: check reports it and exits 1; repair salvages everything.
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[0] ^= 0x04;
    std::fs::write(&db, &bytes).unwrap();
    let (good, out, err) = cellar(&["check", dbs], b"");
    let out = String::from_utf8_lossy(&out);
    assert!(
        !good && out.contains("header") && out.contains("DAMAGED"),
        "{out}{err}"
    );
    assert!(!out.contains("CheckReport"), "{out}");
    let fixed = dir.join("fixed.cellar");
    let (good, out, _) = cellar(&["repair", dbs, fixed.to_str().unwrap()], b"");
    let out = String::from_utf8_lossy(&out);
    assert!(!good, "repair of a damaged source exits 1: {out}");
    assert!(out.contains("keys:") && out.contains("330"), "{out}");
    let (good, keys, _) = cellar(&["keys", fixed.to_str().unwrap()], b"");
    assert!(good);
    assert_eq!(String::from_utf8_lossy(&keys).lines().count(), 330);
    // A FIFO named like a store is refused at once (no hang).
    let fifo = dir.join("fifo.db");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for cmd in ["info", "check", "keys"] {
        let (good, _, err) = cellar(&[cmd, fifo.to_str().unwrap()], b"");
        assert!(!good && !err.is_empty(), "{cmd}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A native store in the previous format (version 2, written without the compact form) is
/// converted by `cellar compact` and reads identically: `dump` (sorted), `get`, `check`; the
/// header says version 3 and `info` shows the compact section.
#[test]
fn compact_converts_an_old_native_store_and_it_reads_identically() {
    let dir = tmpdir("convert-compact");
    let path = dir.join("old.cellar");
    let p = path.to_str().expect("utf-8 path");
    let s = cellar::engine::Store::open(&path, cellar::engine::Options::default()).expect("open");
    for i in 0..3000u32 {
        let v = format!("{{'id': {i}, 'name': 'user{i}', 'tags': ('a', 'b'), 'score': 1.5}}");
        s.put(format!("key{i}").as_bytes(), v.as_bytes())
            .expect("put");
    }
    for i in (0..3000u32).step_by(7) {
        s.delete(format!("key{i}").as_bytes()).expect("delete");
    }
    s.close().expect("close");
    let head = std::fs::read(&path).expect("read");
    assert_eq!(&head[8..12], &2u32.to_le_bytes(), "the old format");
    let sorted = |s: String| {
        let mut l: Vec<String> = s.lines().map(str::to_string).collect();
        l.sort();
        l
    };
    let before = sorted(ok(&["dump", p], b""));
    assert_eq!(before.len(), 3000 - 429);
    let out = ok(&["compact", p], b"");
    assert!(out.contains("compact form"), "{out}");
    let head = std::fs::read(&path).expect("read");
    assert_eq!(&head[8..12], &3u32.to_le_bytes(), "converted to version 3");
    assert_eq!(sorted(ok(&["dump", p], b"")), before);
    let got = ok(&["get", p, "key5"], b"");
    assert!(got.contains("'name': 'user5'"), "{got}");
    ok(&["check", p], b"");
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--json", p], b"")).expect("json");
    assert!(info["compact_blocks"].as_u64().unwrap_or(0) > 0, "{info}");
    assert!(info["dictionary_bytes"].as_u64().unwrap_or(0) > 0, "{info}");
    assert!(
        info["compression_ratio"].as_f64().unwrap_or(0.0) > 2.0,
        "{info}"
    );
    assert_eq!(info["keys"].as_u64(), Some(3000 - 429));
    let human = squash(&ok(&["info", p], b""));
    assert!(human.contains("compact section:"), "{human}");
    assert!(human.contains("block cache:"), "{human}");
    let _ = std::fs::remove_dir_all(&dir);
}
