//! Across processes: reader processes (this test binary, re-executed) follow a writer's commits
//! and compactions; a second writer process gets `Locked` naming the holder's pid; a fork()ed
//! child neither writes through the inherited handle nor keeps the parent's writer lock.
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(clippy::manual_is_multiple_of)]

use std::process::Command;

use cellar_engine::{Batch, Error, Options, Store};

const FINAL: u64 = 3000;

fn item(i: u64) -> Vec<u8> {
    format!("item-{i}-")
        .repeat(1 + (i % 9) as usize)
        .into_bytes()
}

/// The exclusive (single-writer) mode these tests are about.
fn excl() -> Options {
    Options {
        exclusive: true,
        ..Options::default()
    }
}

fn ro() -> Options {
    Options::from_dbm_flag("r").unwrap()
}

/// Reader child: polls until it has seen the final commit; every commit it sees is complete.
#[test]
fn reader_child() {
    let (Ok(path), Ok(parent)) = (
        std::env::var("CELLAR_MP_PATH"),
        std::env::var("CELLAR_MP_PARENT"),
    ) else {
        return;
    };
    let parent: u32 = parent.parse().unwrap();
    // A second writer is refused and told who holds the lock.
    match Store::open(&path, excl()) {
        Err(Error::Locked { pid, .. }) => assert_eq!(pid, Some(parent)),
        other => panic!("expected Locked, got {other:?}"),
    }
    let s = Store::open(&path, ro()).unwrap();
    let mut last = 0u64;
    loop {
        let c = s
            .get(b"counter")
            .unwrap()
            .map_or(0, |v| u64::from_le_bytes(v.as_slice().try_into().unwrap()));
        assert!(c >= last, "counter went back from {last} to {c}");
        // The batch that set the counter also wrote its item: both or neither.
        if c > 0 {
            assert_eq!(s.get(format!("k{c}").as_bytes()).unwrap().unwrap(), item(c));
            let probe = c / 2 + 1;
            assert_eq!(
                s.get(format!("k{probe}").as_bytes()).unwrap().unwrap(),
                item(probe)
            );
        }
        last = c;
        if c == FINAL {
            break;
        }
        std::thread::yield_now();
    }
    assert_eq!(s.len().unwrap(), FINAL + 1);
    println!("READER-OK");
}

#[test]
fn readers_follow_writer_commits_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mp.db");
    let w = Store::open(
        &path,
        Options {
            auto_compact: false,
            exclusive: true,
            ..Options::default()
        },
    )
    .unwrap();
    w.put(b"counter", &0u64.to_le_bytes()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "reader_child", "--nocapture", "--test-threads=1"])
                .env("CELLAR_MP_PATH", &path)
                .env("CELLAR_MP_PARENT", std::process::id().to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for i in 1..=FINAL {
        let mut b = Batch::new();
        b.put(format!("k{i}").into_bytes(), item(i));
        b.put(b"counter".to_vec(), i.to_le_bytes().to_vec());
        w.batch(&b).unwrap();
        if i % 1000 == 0 {
            w.compact().unwrap(); // readers must switch to the new file
        }
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "reader failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("READER-OK"));
    }
    w.close().unwrap();
}

fn fork_child_body(path: &std::path::Path, w: &Store, parent: u32) -> bool {
    let pid = std::process::id();
    let forked_write = matches!(w.put(b"child", b"x"), Err(Error::Forked { owner_pid, pid: p }) if owner_pid == parent && p == pid);
    let forked_compact = matches!(w.compact(), Err(Error::Forked { .. }));
    let read_ok = w.get(b"k").ok().flatten().as_deref() == Some(&b"v"[..]);
    let locked =
        matches!(Store::open(path, excl()), Err(Error::Locked { pid: Some(p), .. }) if p == parent);
    forked_write && forked_compact && read_ok && locked
}

/// Forks from a re-executed single-test process (so no other test threads exist at fork time).
#[test]
fn fork_child() {
    let Ok(path) = std::env::var("CELLAR_FORK_PATH") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let w = Store::open(&path, excl()).unwrap();
    w.put(b"k", b"v").unwrap();
    let parent = std::process::id();
    let mut to_child = [0i32; 2];
    let mut to_parent = [0i32; 2];
    // SAFETY: test-only FFI: two pipes, fork, and the child only runs the checks below and then
    // _exit()s without running destructors or returning into the test harness.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::pipe(to_child.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(to_parent.as_mut_ptr()), 0);
        let child = libc::fork();
        assert!(child >= 0);
        if child == 0 {
            let ok = fork_child_body(&path, &w, parent);
            let b = [u8::from(ok)];
            libc::write(to_parent[1], b.as_ptr().cast(), 1);
            // Wait while the parent closes and reopens: we must not be holding its lock.
            let mut r = [0u8; 1];
            libc::read(to_child[0], r.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
        let mut r = [0u8; 1];
        assert_eq!(libc::read(to_parent[0], r.as_mut_ptr().cast(), 1), 1);
        assert_eq!(
            r[0], 1,
            "child saw wrong behaviour through the inherited handle"
        );
        // The child is still alive; closing our handle must release the writer lock.
        w.close().unwrap();
        let again = Store::open(&path, excl());
        let b = [1u8];
        libc::write(to_child[1], b.as_ptr().cast(), 1);
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        let again = again.expect("lock still held after the parent closed: inherited by the child");
        assert_eq!(again.get(b"k").unwrap().unwrap(), b"v");
        assert_eq!(again.get(b"child").unwrap(), None);
    }
    println!("FORK-OK");
}

#[test]
fn fork_safety() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fork_child", "--nocapture", "--test-threads=1"])
        .env("CELLAR_FORK_PATH", dir.path().join("fork.db"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("FORK-OK"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
