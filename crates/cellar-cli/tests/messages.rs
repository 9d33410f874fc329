//! The CLI as a new user meets it: error messages in the CLI's own words, exit codes, output
//! into a closed pipe, and failed commands that leave nothing behind.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: &[u8]) -> Output {
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
    child.wait_with_output().expect("wait")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmpdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cellar-msg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn a_missing_store_is_named_in_the_clis_words() {
    let dir = tmpdir("missing");
    let missing = dir.join("nope.db");
    for args in [
        vec!["get", s(&missing), "k"],
        vec!["keys", s(&missing)],
        vec!["dump", s(&missing)],
        vec!["info", s(&missing)],
        vec!["check", s(&missing)],
        vec!["del", s(&missing), "k"],
        vec!["compact", s(&missing)],
    ] {
        let o = run(&args, b"");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("no such store"), "{args:?}: {err}");
        assert!(err.contains("cellar set"), "{args:?}: {err}");
        assert!(!err.contains("'c' or 'n' flag"), "{args:?}: {err}");
    }
    // Nothing was created by the failed commands.
    assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_directory_is_not_reported_as_a_missing_file() {
    let dir = tmpdir("dir");
    for args in [
        vec!["get", s(&dir), "k"],
        vec!["dump", s(&dir)],
        vec!["info", s(&dir)],
        vec!["set", s(&dir), "k", "v"],
    ] {
        let o = run(&args, b"");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("is a directory, not a store"),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_with_2() {
    let o = run(&["get"], b"");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(&["no-such-command"], b"");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[cfg(unix)]
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tmpdir("pipe");
    let db = dir.join("big.cellar");
    let lines: String = (0..200_000)
        .map(|i| format!("{{\"key\": \"key{i}\", \"value\": \"v\"}}\n"))
        .collect();
    let o = run(&["load", s(&db)], lines.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    for cmd in ["keys", "dump"] {
        // `cellar keys big.cellar | head -1`
        let mut child = Command::new(env!("CARGO_BIN_EXE_cellar"))
            .args([cmd, s(&db)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cellar");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("first line");
        assert!(!first.is_empty());
        // The reader goes away (stdout dropped above), as `head` does.
        let o = child.wait_with_output().expect("wait");
        assert_eq!(o.status.signal(), Some(libc_sigpipe()), "{cmd}: {o:?}");
        assert_eq!(stderr(&o), "", "{cmd}: nothing on stderr");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13 // SIGPIPE on every Unix cellar builds for (Linux, macOS, the BSDs)
}

#[test]
fn a_failed_load_leaves_no_new_store_behind() {
    let dir = tmpdir("load");
    let input = "{\"key\": \"a\", \"value\": \"1\"}\n".repeat(2500) + "not json\n";
    for to in ["native", "sqlite", "dumb"] {
        let db = dir.join(format!("new-{to}"));
        let o = run(&["load", s(&db), "--to", to], input.as_bytes());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{to}: {err}");
        assert!(err.contains("line 2501: not JSON"), "{to}: {err}");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{to}: a failed load left {left:?}");
    }
    // Into an existing store, a failed load keeps the store (and what it had).
    let db = dir.join("old.cellar");
    assert!(run(&["set", s(&db), "kept", "yes"], b"").status.success());
    let o = run(&["load", s(&db)], b"garbage\n");
    assert_eq!(o.status.code(), Some(1));
    let o = run(&["get", s(&db), "kept"], b"");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "b'yes'\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slices_parse_in_every_form_python_accepts() {
    for (lit, shown) in [
        ("slice(1, 2)", "slice(1, 2, None)"),
        ("slice(7)", "slice(None, 7, None)"),
        ("slice(1, 2, 3)", "slice(1, 2, 3)"),
    ] {
        let o = run(&["marshal", "encode", "--version", "5"], lit.as_bytes());
        assert!(o.status.success(), "{lit}: {}", stderr(&o));
        let shown_now = run(&["marshal", "show", "-"], &o.stdout);
        assert_eq!(String::from_utf8_lossy(&shown_now.stdout).trim(), shown);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `key:` -> value, from aligned `key: value` lines.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")).map(str::trim))
}

#[test]
fn info_check_and_repair_speak_to_people_and_to_scripts() {
    let dir = tmpdir("info");
    let db = dir.join("d.cellar");
    let o = run(&["demo", s(&db), "--records", "3000"], b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let demo = stdout(&o);
    assert!(demo.contains("values: marshal version 4"), "{demo}");
    assert!(!demo.contains("Marshal {"), "{demo}");

    // A fresh store: aligned fields, human sizes, no dead bytes, closed cleanly, ok.
    let o = run(&["info", s(&db)], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    let col = text
        .lines()
        .map(|l| {
            l.find(':')
                .map(|i| l[i + 1..].len() - l[i + 1..].trim_start().len() + i)
        })
        .collect::<Vec<_>>();
    assert!(
        col.windows(2).all(|w| w[0] == w[1]),
        "values aligned:\n{text}"
    );
    assert_eq!(field(&text, "format"), Some("dbm.native"));
    assert_eq!(field(&text, "keys"), Some("3001"));
    assert!(
        field(&text, "file size").is_some_and(|v| v.contains("KiB (")),
        "{text}"
    );
    assert_eq!(
        field(&text, "dead (reclaimable)"),
        Some("0 bytes"),
        "{text}"
    );
    assert_eq!(field(&text, "value encoding"), Some("marshal version 4"));
    assert_eq!(field(&text, "closed cleanly"), Some("yes"));
    assert_eq!(field(&text, "status"), Some("ok"));
    let exact = stdout(&run(&["info", s(&db), "--bytes"], b""));
    assert!(
        field(&exact, "file size").is_some_and(|v| v.ends_with(" bytes") && !v.contains("KiB")),
        "{exact}"
    );
    let j: serde_json::Value =
        serde_json::from_slice(&run(&["info", s(&db), "--json"], b"").stdout).expect("info --json");
    assert_eq!(j["keys"], 3001);
    assert_eq!(j["dead_bytes"], 0);
    assert_eq!(j["ok"], true);
    assert_eq!(j["value_encoding"], "marshal version 4");

    // After a compaction, still no dead bytes.
    assert!(run(&["compact", s(&db)], b"").status.success());
    let j: serde_json::Value =
        serde_json::from_slice(&run(&["info", s(&db), "--json"], b"").stdout).expect("json");
    assert_eq!(j["dead_bytes"], 0, "{j}");

    // Damage: info says so and exits 1; check and repair report it in both forms.
    let mut bytes = std::fs::read(&db).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&db, &bytes).expect("write");
    let o = run(&["info", s(&db)], b"");
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(
        field(&text, "status")
            .is_some_and(|v| v.starts_with("DAMAGED") && v.contains("cellar repair")),
        "{text}"
    );
    let o = run(&["check", s(&db)], b"");
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert_eq!(field(&text, "status"), Some("DAMAGED"), "{text}");
    assert!(!text.contains("CheckReport {"), "{text}");
    let j: serde_json::Value =
        serde_json::from_slice(&run(&["check", s(&db), "--json"], b"").stdout)
            .expect("check --json");
    assert_eq!(j["ok"], false);
    assert_eq!(j["damage"].as_array().map(Vec::len), Some(1), "{j}");
    let fixed = dir.join("fixed.cellar");
    let o = run(&["repair", s(&db), s(&fixed), "--json"], b"");
    assert_eq!(o.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("repair --json");
    assert_eq!(j["source_damaged"], true);
    // The store is compact-form after `compact` (the default for new stores): the flipped bit
    // is inside one compressed block, whose records are lost; every other block's are salvaged.
    let keys = j["keys"].as_u64().unwrap_or(0);
    assert!((2000..3001).contains(&keys), "{j}");
    assert_eq!(j["salvaged_records"], j["keys"], "{j}");
    let o = run(&["check", s(&fixed)], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_names_every_command_and_every_format() {
    let o = run(&["--help"], b"");
    assert!(o.status.success());
    let help = stdout(&o);
    for cmd in [
        "demo", "get", "set", "del", "keys", "dump", "load", "convert", "info", "check", "repair",
        "compact", "pickle", "marshal",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing:\n{help}"
        );
    }
    assert!(help.contains("Exit status: 0 success; 1 failure"), "{help}");
    let o = run(&["get", "--help"], b"");
    assert!(stdout(&o).contains("dbm.gnu"), "{}", stdout(&o));
    let o = run(&["info", "--help"], b"");
    let text = stdout(&o);
    assert!(
        text.contains("--json") && text.contains("--bytes"),
        "{text}"
    );
}

#[test]
fn a_failed_convert_leaves_no_new_store_behind() {
    let dir = tmpdir("convert");
    let src = dir.join("src.cellar");
    let lines: String = (0..3000)
        .map(|i| format!("{{\"key\": \"key{i}\", \"value\": \"value {i} value {i}\"}}\n"))
        .collect();
    assert!(run(&["load", s(&src)], lines.as_bytes()).status.success());
    // Damage in the middle of the source: convert reads every record and must fail.
    let mut bytes = std::fs::read(&src).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&src, &bytes).expect("write");
    for to in ["native", "sqlite", "dumb"] {
        let dst = dir.join(format!("dst-{to}"));
        let o = run(&["convert", s(&src), s(&dst), "--to", to], b"");
        assert_eq!(o.status.code(), Some(1), "{to}: {}", stderr(&o));
        assert!(stderr(&o).contains("cellar repair"), "{to}: {}", stderr(&o));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "src.cellar")
            .collect();
        assert!(left.is_empty(), "{to}: a failed convert left {left:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cut_store_is_reported_once_with_the_commands_to_run() {
    let dir = tmpdir("cut");
    let db = dir.join("t.cellar");
    assert!(run(&["demo", s(&db), "--records", "2000"], b"")
        .status
        .success());
    let len = std::fs::metadata(&db).expect("stat").len();
    for cut in [len / 2, 100] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .and_then(|f| f.set_len(cut))
            .expect("truncate");
        for args in [
            vec!["get", s(&db), "test key"],
            vec!["set", s(&db), "a", "b"],
        ] {
            let o = run(&args, b"");
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                !err.contains(&format!("{0}: {0}", s(&db))),
                "the file is named once at the start: {err}"
            );
            assert!(
                err.contains(&format!("cellar repair {} NEW", s(&db))),
                "{err}"
            );
            assert!(!err.contains("PATH") && !err.contains("repair()"), "{err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
