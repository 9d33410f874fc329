//! Injected I/O failures (ENOSPC and EIO on write, EIO on fdatasync, failing rollback) through
//! the storage trait: the error surfaces with its errno, the store stays consistent, and a
//! reopen recovers exactly the acknowledged writes.
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(clippy::manual_is_multiple_of)]

use std::sync::Arc;

use cellar_engine::{Batch, Crash, Error, Fault, FaultOp, MemStorage, Options, Store};

fn opts() -> Options {
    Options {
        auto_compact: false,
        ..Options::default()
    }
}

fn setup() -> (Arc<MemStorage>, Store) {
    let mem = Arc::new(MemStorage::new());
    let s = Store::open_storage(mem.clone(), opts()).unwrap();
    for i in 0..20u32 {
        s.put(&i.to_le_bytes(), format!("v{i}").as_bytes()).unwrap();
    }
    s.sync().unwrap();
    (mem, s)
}

fn reopen(mem: &MemStorage) -> Store {
    let img = mem.crash_image(Crash::Process);
    Store::open_storage(Arc::new(MemStorage::from_bytes(img)), opts()).unwrap()
}

#[test]
fn enospc_on_write_surfaces_and_leaves_the_store_usable() {
    let (mem, s) = setup();
    mem.inject(Fault {
        op: FaultOp::Write,
        after: 0,
        errno: libc::ENOSPC,
        partial: 7,
        sticky: false,
    });
    let mut b = Batch::new();
    b.put(b"x".to_vec(), vec![1u8; 500])
        .put(b"y".to_vec(), vec![2u8; 500]);
    let e = s.batch(&b).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert!(e.to_string().contains("appending"), "{e}");
    // Nothing of the failed batch is visible, old data intact.
    assert_eq!(s.get(b"x").unwrap(), None);
    assert_eq!(s.get(&3u32.to_le_bytes()).unwrap().unwrap(), b"v3");
    // The partial bytes were rolled back and the store keeps working.
    s.put(b"z", b"after").unwrap();
    assert_eq!(s.get(b"z").unwrap().unwrap(), b"after");
    let r = reopen(&mem);
    assert_eq!(r.get(b"x").unwrap(), None);
    assert_eq!(r.get(b"z").unwrap().unwrap(), b"after");
    assert_eq!(r.len().unwrap(), 21);
    assert!(r.check().unwrap().is_ok());
}

#[test]
fn eio_on_write_with_failing_rollback_poisons_the_handle() {
    let (mem, s) = setup();
    mem.inject(Fault {
        op: FaultOp::Write,
        after: 0,
        errno: libc::EIO,
        partial: 3,
        sticky: false,
    });
    mem.inject(Fault {
        op: FaultOp::SetLen,
        after: 0,
        errno: libc::EIO,
        partial: 0,
        sticky: false,
    });
    let e = s.put(b"x", b"1").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    match s.put(b"y", b"2") {
        Err(Error::Poisoned { reason }) => assert!(reason.contains("rolled back"), "{reason}"),
        other => panic!("expected Poisoned, got {other:?}"),
    }
    // Reads still work; a reopen drops the 3 torn bytes and keeps every acknowledged write.
    assert_eq!(s.get(&5u32.to_le_bytes()).unwrap().unwrap(), b"v5");
    mem.clear_faults();
    let r = reopen(&mem);
    assert_eq!(r.len().unwrap(), 20);
    assert_eq!(r.get(b"x").unwrap(), None);
    assert_eq!(r.stats().unwrap().recovered_tail_bytes, 3);
}

#[test]
fn eio_on_fdatasync_surfaces_and_poisons() {
    let (mem, s) = setup();
    s.put(b"a", b"acknowledged").unwrap();
    mem.inject(Fault {
        op: FaultOp::Sync,
        after: 0,
        errno: libc::EIO,
        partial: 0,
        sticky: false,
    });
    let e = s.sync().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(e.to_string().contains("fdatasync"), "{e}");
    // After a failed fsync the page cache state is unknown (fsyncgate): refuse further writes.
    assert!(matches!(s.put(b"b", b"2"), Err(Error::Poisoned { .. })));
    assert!(matches!(s.sync(), Err(Error::Poisoned { .. })));
    // Reopening recovers a consistent store with every write that reached the OS.
    mem.clear_faults();
    let r = reopen(&mem);
    assert_eq!(r.get(b"a").unwrap().unwrap(), b"acknowledged");
    assert_eq!(r.get(b"b").unwrap(), None);
    assert!(r.check().unwrap().is_ok());
    // What survives a power cut after the failed sync is only what the last good sync covered.
    let img = mem.crash_image(Crash::Power {
        keep: 0,
        old_superblock: true,
    });
    let p = Store::open_storage(Arc::new(MemStorage::from_bytes(img)), opts()).unwrap();
    assert_eq!(p.len().unwrap(), 20);
}

#[test]
fn enospc_during_sync_on_commit() {
    let mem = Arc::new(MemStorage::new());
    let s = Store::open_storage(
        mem.clone(),
        Options {
            sync_on_commit: true,
            ..opts()
        },
    )
    .unwrap();
    s.put(b"k", b"v").unwrap();
    mem.inject(Fault {
        op: FaultOp::Sync,
        after: 0,
        errno: libc::ENOSPC,
        partial: 0,
        sticky: true,
    });
    let e = s.put(b"k2", b"v2").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    let img = mem.crash_image(Crash::Power {
        keep: 0,
        old_superblock: false,
    });
    let p = Store::open_storage(Arc::new(MemStorage::from_bytes(img)), opts()).unwrap();
    assert_eq!(p.get(b"k").unwrap().unwrap(), b"v");
}
