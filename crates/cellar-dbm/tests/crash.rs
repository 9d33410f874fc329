//! Crash safety: a child process writes and acknowledges each write on stdout, then is killed
//! with SIGKILL at a random moment; every acknowledged write must be found after reopening
//! (by cellar and, for dumb, by CPython). The child is this test binary re-run with an
//! environment variable.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cellar_dbm::{Backend, Flag, BACKENDS};
use common::*;

const ENV_PATH: &str = "CELLAR_DBM_CRASH_PATH";
const ENV_BACKEND: &str = "CELLAR_DBM_CRASH_BACKEND";

fn key(i: u64) -> Vec<u8> {
    format!("key '{}'\n", i % 61).into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    let n = (i * 37 % 1400) as usize;
    let mut v = format!("{i}:").into_bytes();
    v.resize(n.max(v.len()), (i % 251) as u8);
    v
}

/// Operation i: every 11th deletes its key, every 7th is a 3-key batch, else an insert.
fn apply_op(m: &mut BTreeMap<Vec<u8>, Vec<u8>>, i: u64) {
    if i.is_multiple_of(11) {
        m.remove(&key(i));
    } else if i.is_multiple_of(7) {
        for j in 0..3 {
            m.insert(key(i + j), value(i + j));
        }
    } else {
        m.insert(key(i), value(i));
    }
}

#[test]
fn crash_child_writer() {
    let (Ok(path), Ok(backend)) = (std::env::var(ENV_PATH), std::env::var(ENV_BACKEND)) else {
        return; // only runs as the child of the crash tests
    };
    let b = match backend.as_str() {
        "dbm.native" => Backend::Native,
        "dbm.sqlite3" => Backend::Sqlite3,
        _ => Backend::Dumb,
    };
    let db = b.open(&path, Flag::Create, 0o666).unwrap();
    let out = std::io::stdout();
    for i in 0u64.. {
        if i.is_multiple_of(11) {
            db.remove(&key(i)).unwrap();
        } else if i.is_multiple_of(7) {
            let mut batch = cellar_dbm::Batch::new();
            for j in 0..3 {
                batch.insert(key(i + j), value(i + j));
            }
            db.batch(&batch).unwrap();
        } else {
            db.insert(&key(i), &value(i)).unwrap();
        }
        let mut o = out.lock();
        writeln!(o, "ACK {i}").unwrap();
        o.flush().unwrap();
    }
}

fn run_once(b: Backend, path: &Path, run_for: Duration) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_PATH, path)
        .env(ENV_BACKEND, b.name())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("ACK ") {
                if let Ok(n) = n.parse::<u64>() {
                    let _ = tx.send(n);
                }
            }
        }
    });
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < run_for {
        if let Ok(n) = rx.recv_timeout(Duration::from_millis(5)) {
            last = last.max(Some(n));
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    while let Ok(n) = rx.try_recv() {
        last = last.max(Some(n));
    }
    last
}

fn check(b: Backend, path: &Path, acked: Option<u64>, round: u64) {
    let Some(last) = acked else { return };
    let mut model = BTreeMap::new();
    for i in 0..=last {
        apply_op(&mut model, i);
    }
    // The op after the last acknowledged one may or may not have landed.
    let mut model_next = model.clone();
    apply_op(&mut model_next, last + 1);
    let db = b.open(path, Flag::Read, 0o666).unwrap();
    let got: BTreeMap<_, _> = db.items().unwrap().into_iter().collect();
    db.close().unwrap();
    if got != model && got != model_next {
        let mut diff = Vec::new();
        for k in model.keys().chain(got.keys()) {
            let (m, g) = (model.get(k), got.get(k));
            if m != g {
                let show = |v: Option<&Vec<u8>>| {
                    v.map(|v| String::from_utf8_lossy(&v[..v.len().min(12)]).into_owned())
                };
                diff.push(format!(
                    "{:?}: model {:?} got {:?}",
                    String::from_utf8_lossy(k),
                    show(m),
                    show(g)
                ));
            }
        }
        diff.dedup();
        panic!("{b} round {round}: after {last} acknowledged ops the store differs: {diff:#?}");
    }
    if b == Backend::Dumb {
        let out = python(
            "import sys, dbm.dumb\nd = dbm.dumb.open(sys.argv[1], 'r')\nfor k in d.keys(): print(k.hex(), d[k].hex())",
            &[path.to_str().unwrap()],
            "",
        );
        let py: BTreeMap<_, _> = parse_pairs(&out).into_iter().collect();
        assert_eq!(py, got, "CPython reads what cellar reads after the crash");
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(17);
        let mut acked_total = 0;
        for round in 0..6u64 {
            let path = dir.path().join(format!("db{round}"));
            let acked = run_once(b, &path, Duration::from_millis(60 + rng.below(120)));
            acked_total += acked.map_or(0, |n| n + 1);
            check(b, &path, acked, round);
        }
        eprintln!("{b}: {acked_total} acknowledged operations checked across 6 kills");
        assert!(acked_total > 0, "{b}: the child never acknowledged a write");
    }
}

#[test]
fn dumb_survives_a_crash_mid_commit() {
    // Simulate a kill between the steps of a commit: a stale `.dir.new` is ignored, and a
    // missing `.bak` is fine; the `.dir` is always complete.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    let db = Backend::Dumb.open(&p, Flag::Create, 0o666).unwrap();
    for i in 0..50u64 {
        db.insert(&key(i), &value(i)).unwrap();
    }
    db.sync().unwrap();
    db.insert(b"after", b"sync").unwrap();
    std::mem::forget(db);
    std::fs::write(dir.path().join("db.dir.new"), b"'half', (0,").unwrap();
    std::fs::remove_file(dir.path().join("db.bak")).unwrap();
    let db = Backend::Dumb.open(&p, Flag::Write, 0o666).unwrap();
    assert_eq!(db.get(b"after").unwrap().as_deref(), Some(&b"sync"[..]));
    assert_eq!(db.len().unwrap(), 51);
    db.remove(b"after").unwrap();
    db.close().unwrap();
    assert!(!dir.path().join("db.dir.new").exists());
}
