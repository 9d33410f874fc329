//! SIGKILL crash test: a writer process (this test binary, re-executed) commits batches and
//! prints each acknowledged batch number; the parent kills it with SIGKILL at pseudo-random
//! moments, >= 100 rounds, then reopens the store (recovery) and checks that every acknowledged
//! batch is there in full, nothing of an unfinished batch is visible, and deletes applied.
//! Background compaction and checkpoints run in the child, so kills also land inside them.
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(clippy::manual_is_multiple_of)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use cellar_engine::{Batch, Options, Store};

const ROUNDS: u64 = 110;

fn child_opts() -> Options {
    Options {
        compact_min_bytes: 512 << 10,
        compact_ratio: 0.3,
        checkpoint_bytes: 128 << 10,
        ..Options::default()
    }
}

fn nkeys(i: u64) -> u64 {
    1 + i % 7
}

fn key(i: u64, j: u64) -> Vec<u8> {
    format!("k{i:08}-{j}").into_bytes()
}

fn val(i: u64, j: u64) -> Vec<u8> {
    let len = if (i * 7 + j) % 97 == 0 {
        150_000
    } else {
        10 + ((i * 31 + j * 17) % 1500) as usize
    };
    (0..len).map(|x| (x as u64 * 7 + i + j) as u8).collect()
}

/// The expected contents after batches `0..=last`.
fn expected(last: Option<u64>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    let Some(last) = last else { return m };
    for i in 0..=last {
        for j in 0..nkeys(i) {
            m.insert(key(i, j), val(i, j));
        }
        if i >= 3 {
            for j in (0..nkeys(i - 3)).step_by(2) {
                m.remove(&key(i - 3, j));
            }
        }
        m.insert(b"last".to_vec(), i.to_le_bytes().to_vec());
    }
    m
}

/// The writer child. Does nothing unless started by `sigkill_rounds`.
#[test]
fn crash_child_writer() {
    let (Ok(path), Ok(start)) = (
        std::env::var("CELLAR_CRASH_PATH"),
        std::env::var("CELLAR_CRASH_START"),
    ) else {
        return;
    };
    let start: u64 = start.parse().unwrap();
    let s = Store::open(&path, child_opts()).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "OPEN").unwrap();
    out.flush().unwrap();
    for i in start.. {
        let mut b = Batch::new();
        for j in 0..nkeys(i) {
            b.put(key(i, j), val(i, j));
        }
        if i >= 3 {
            for j in (0..nkeys(i - 3)).step_by(2) {
                b.delete(key(i - 3, j));
            }
        }
        b.put(b"last".to_vec(), i.to_le_bytes().to_vec());
        s.batch(&b).unwrap();
        if i % 16 == 0 {
            s.sync().unwrap();
        }
        writeln!(out, "A {i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut last: Option<u64> = None;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut total_acked = 0u64;
    for round in 0..ROUNDS {
        let start = last.map_or(0, |l| l + 1);
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CELLAR_CRASH_PATH", &path)
            .env("CELLAR_CRASH_START", start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.ends_with("OPEN") {
                    let _ = tx.send(());
                } else if let Some(n) = line.strip_prefix("A ") {
                    acked = n.trim().parse::<u64>().ok();
                }
            }
            acked
        });
        // Wait until the child has opened the store, then let it run a pseudo-random while.
        let _ = rx.recv();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(rng % 40_000));
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        let acked = reader.join().unwrap();
        if let Some(a) = acked {
            total_acked += a + 1 - start;
        }

        let s = Store::open(
            &path,
            Options {
                auto_compact: false,
                ..Options::default()
            },
        )
        .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let recovered = s
            .get(b"last")
            .unwrap()
            .map(|v| u64::from_le_bytes(v.as_slice().try_into().unwrap()));
        if let Some(a) = acked {
            assert!(
                recovered >= Some(a),
                "round {round}: acknowledged batch {a} lost (recovered {recovered:?})"
            );
        }
        assert!(recovered >= last, "round {round}: went backwards");
        let got: BTreeMap<Vec<u8>, Vec<u8>> = s.iter().unwrap().map(|r| r.unwrap()).collect();
        let want = expected(recovered);
        if got != want {
            let extra: Vec<_> = got
                .keys()
                .filter(|k| !want.contains_key(*k))
                .take(3)
                .collect();
            let missing: Vec<_> = want
                .keys()
                .filter(|k| !got.contains_key(*k))
                .take(3)
                .collect();
            panic!(
                "round {round}: contents differ after recovery to batch {recovered:?}: \
                 extra {extra:?} missing {missing:?}"
            );
        }
        s.close().unwrap();
        last = recovered;
    }
    assert!(
        total_acked > ROUNDS,
        "child made too little progress: {total_acked}"
    );
}
