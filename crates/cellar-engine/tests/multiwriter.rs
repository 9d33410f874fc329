//! Many writer processes on one store (shared mode): N processes x M operations (distinct and
//! overlapping keys, batches, deletes, checkpoints and compactions from inside the writers),
//! some of them killed with SIGKILL at random moments. Children report every acknowledged
//! operation on their own ack file (one line, written after the call returned). Afterwards
//! every acknowledged write is present, every acknowledged delete absent, no batch is partial,
//! and the store checks clean. In the "blind" variant the writers never read (deletes go
//! through batches, which do not ask whether the key is there), so each appends after other
//! writers' commits that it has not indexed, for as long as it runs.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use cellar_engine::{check_file, Batch, Options, Store};

const OPS: u64 = 6000;
const BATCH: u64 = 4;

fn opts() -> Options {
    Options {
        // Checkpoints and background compactions happen while the others write.
        checkpoint_bytes: 64 << 10,
        compact_min_bytes: 256 << 10,
        ..Options::default()
    }
}

fn value(id: u64, i: u64) -> Vec<u8> {
    let mut v = format!("{id}:{i}:").into_bytes();
    v.resize(40 + (i % 7) as usize * 30, b'x');
    v
}

/// Writer child: runs OPS operations, appending an ack line after each one returns.
#[test]
fn writer_child() {
    let (Ok(path), Ok(id), Ok(acks)) = (
        std::env::var("CELLAR_MW_PATH"),
        std::env::var("CELLAR_MW_ID"),
        std::env::var("CELLAR_MW_ACKS"),
    ) else {
        return;
    };
    let id: u64 = id.parse().unwrap();
    let blind = std::env::var_os("CELLAR_MW_BLIND").is_some();
    let mut ack = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(acks)
        .unwrap();
    let s = Store::open(&path, opts()).unwrap();
    let mut say = |line: String| {
        ack.write_all(line.as_bytes()).unwrap();
    };
    for i in 0..OPS {
        match i % 6 {
            0 | 1 => {
                s.put(format!("w{id}-{i}").as_bytes(), &value(id, i))
                    .unwrap();
                say(format!("P w{id}-{i}\n"));
            }
            2 => {
                s.put(format!("shared{}", i % 13).as_bytes(), &value(id, i))
                    .unwrap();
                say(format!("S shared{}\n", i % 13));
            }
            3 => {
                let mut b = Batch::new();
                for j in 0..BATCH {
                    b.put(format!("b{id}-{i}-{j}").into_bytes(), value(id, i));
                }
                // The batch also deletes a key nobody writes, so that batches mix kinds.
                b.delete(format!("never{id}-{i}").into_bytes());
                s.batch(&b).unwrap();
                say(format!("B b{id}-{i}\n"));
            }
            4 => {
                // Delete the key put 4 operations ago (i - 4 is 0 mod 6: a distinct-key put).
                let k = format!("w{id}-{}", i - 4);
                say(format!("D? {k}\n"));
                if blind {
                    let mut b = Batch::new();
                    b.delete(k.clone().into_bytes());
                    s.batch(&b).unwrap();
                } else {
                    assert!(s.delete(k.as_bytes()).unwrap(), "{k} missing before delete");
                }
                say(format!("D {k}\n"));
            }
            _ => {
                if id == 0 && i % 300 == 5 {
                    s.compact().unwrap();
                    say("C\n".to_string());
                } else if blind {
                    s.put(format!("w{id}-{i}").as_bytes(), &value(id, i))
                        .unwrap();
                    say(format!("P w{id}-{i}\n"));
                } else {
                    let _ = s.get(format!("shared{}", i % 13).as_bytes()).unwrap();
                }
            }
        }
    }
    s.close().unwrap();
    say("DONE\n".to_string());
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn writers_in_many_processes_with_kills() {
    run(false);
}

#[test]
fn blind_writers_in_many_processes_with_kills() {
    run(true);
}

fn run(blind: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mw.db");
    let exe = std::env::current_exe().unwrap();
    let n = 6u64;
    let mut seed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut children: Vec<_> = (0..n)
        .map(|id| {
            let mut c = Command::new(&exe);
            if blind {
                c.env("CELLAR_MW_BLIND", "1");
            }
            let c = c
                .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
                .env("CELLAR_MW_PATH", &path)
                .env("CELLAR_MW_ID", id.to_string())
                .env("CELLAR_MW_ACKS", dir.path().join(format!("acks{id}")))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            (id, c)
        })
        .collect();
    // Kill two writers (never the compacting one, id 0, so compactions keep happening) at
    // random moments: in the middle of a commit, a checkpoint or between them.
    let mut killed = HashSet::new();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(50 + xorshift(&mut seed) % 300));
        let victim = 1 + xorshift(&mut seed) % (n - 1);
        if killed.insert(victim) {
            let (_, c) = children.iter_mut().find(|(id, _)| *id == victim).unwrap();
            let _ = c.kill(); // SIGKILL
        }
    }
    for (id, mut c) in children {
        let st = c.wait().unwrap();
        if !killed.contains(&id) {
            assert!(st.success(), "writer {id} failed: {st:?}");
        }
    }
    // Acknowledged operations.
    let mut must_have: HashSet<String> = HashSet::new();
    let mut must_not: HashSet<String> = HashSet::new();
    let mut delete_tried: HashSet<String> = HashSet::new();
    let mut batches: Vec<(String, bool)> = Vec::new();
    let mut done = 0;
    for id in 0..n {
        let text =
            std::fs::read_to_string(dir.path().join(format!("acks{id}"))).unwrap_or_default();
        let mut acked_batches = HashSet::new();
        for line in text.lines() {
            let mut it = line.splitn(2, ' ');
            let (tag, key) = (it.next().unwrap(), it.next().unwrap_or(""));
            match tag {
                "P" => {
                    must_have.insert(key.to_string());
                }
                "D?" => {
                    delete_tried.insert(key.to_string());
                }
                "D" => {
                    must_not.insert(key.to_string());
                }
                "B" => {
                    acked_batches.insert(key.to_string());
                }
                "DONE" => done += 1,
                _ => {}
            }
        }
        for i in (3..OPS).step_by(6) {
            let b = format!("b{id}-{i}");
            batches.push((b.clone(), acked_batches.contains(&b)));
        }
    }
    assert!(done >= n as usize - 2, "only {done} writers finished");
    eprintln!(
        "{done} of {n} writers finished; {} puts, {} deletes acknowledged",
        must_have.len(),
        must_not.len()
    );
    let report = check_file(&path).unwrap();
    assert!(report.is_ok(), "{report:?}");
    for mode in ["w", "r"] {
        let s = Store::open(&path, Options::from_dbm_flag(mode).unwrap()).unwrap();
        let report = s.check().unwrap();
        assert!(report.is_ok(), "{report:?}");
        for k in &must_have {
            if !delete_tried.contains(k) {
                assert!(
                    s.get(k.as_bytes()).unwrap().is_some(),
                    "acknowledged {k} lost"
                );
            }
        }
        for k in &must_not {
            assert!(
                s.get(k.as_bytes()).unwrap().is_none(),
                "deleted {k} is back"
            );
        }
        let mut seen_batches = 0;
        for (b, acked) in &batches {
            let present: Vec<bool> = (0..BATCH)
                .map(|j| s.get(format!("{b}-{j}").as_bytes()).unwrap().is_some())
                .collect();
            let all = present.iter().all(|&p| p);
            let none = present.iter().all(|&p| !p);
            assert!(all || none, "batch {b} is partial: {present:?}");
            if *acked {
                assert!(all, "acknowledged batch {b} lost");
                seen_batches += 1;
            }
        }
        assert!(seen_batches > 500, "{seen_batches}");
        // Overlapping keys hold a value some writer wrote.
        let mut shared = HashMap::new();
        for k in 0..13 {
            let v = s.get(format!("shared{k}").as_bytes()).unwrap().unwrap();
            let text = String::from_utf8_lossy(&v).to_string();
            assert!(text.split(':').count() == 3, "{text}");
            shared.insert(k, text);
        }
        s.close().unwrap();
    }
}
