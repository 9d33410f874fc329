//! The cross-process writer lock: an exclusive `flock` on a dedicated descriptor of the store
//! file, plus the writer's pid in the superblock so a second writer's error can name it.
//!
//! Fork safety: `flock` locks belong to the open file description, which a `fork()` child
//! shares. A `pthread_atfork` child handler closes the child's copies of every writer-lock
//! descriptor, so the child never silently holds the parent's lock (the lock is released when
//! the parent closes). The handle in the child knows it was forked (pid check) and refuses to
//! write; it also does not close the (already closed) descriptor number again.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

use crate::error::{Error, Result};
use crate::format::PID_OFFSET;

const REGISTRY_LEN: usize = 256;
static LOCK_FDS: [AtomicI32; REGISTRY_LEN] = [const { AtomicI32::new(-1) }; REGISTRY_LEN];
static ATFORK: Once = Once::new();

extern "C" fn close_lock_fds_in_child() {
    for slot in LOCK_FDS.iter() {
        let fd = slot.swap(-1, Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: `close` is async-signal-safe and may be called in a fork child. `fd` is a
            // descriptor this process (the parent, before fork) registered as a writer-lock
            // descriptor and has not closed; the child's copy is closed exactly once because the
            // slot was swapped to -1, and `WriterLock::drop` in the child never closes it again.
            #[allow(unsafe_code)]
            unsafe {
                libc::close(fd);
            }
        }
    }
}

fn install_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: registers a child handler that only performs async-signal-safe operations
        // (atomic swaps and close). Registration itself has no preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::pthread_atfork(None, None, Some(close_lock_fds_in_child));
        }
    });
}

/// A held writer lock. Released on drop (in the process that took it).
#[derive(Debug)]
pub struct WriterLock {
    file: Option<File>,
    registry_slot: Option<usize>,
    owner_pid: u32,
}

fn try_flock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a valid, open descriptor owned by `file`; no memory is passed.
    #[allow(unsafe_code)]
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Reads the pid recorded by the current lock holder.
pub fn holder_pid(file: &File) -> Option<u32> {
    let mut b = [0u8; 4];
    file.read_exact_at(&mut b, PID_OFFSET).ok()?;
    let pid = u32::from_le_bytes(b);
    (pid != 0).then_some(pid)
}

/// `try_flock`, retried for a short grace period. A process spawning a child
/// (`posix_spawn`/`vfork`, which run no `pthread_atfork` handlers) briefly shares every open
/// descriptor with it until its `exec` closes them, so a lock just released by `close` can stay
/// held for that moment; a real holder still gets `Locked`, after the grace period.
fn flock_with_grace(file: &File) -> Result<bool> {
    const GRACE: std::time::Duration = std::time::Duration::from_millis(250);
    let start = std::time::Instant::now();
    loop {
        if try_flock(file).map_err(|e| Error::io("locking the store", e))? {
            return Ok(true);
        }
        if start.elapsed() >= GRACE {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

impl WriterLock {
    /// Takes the lock on the file at `path` (without blocking) and records our pid in `data`.
    pub fn acquire(path: &Path, data: &File) -> Result<WriterLock> {
        install_atfork();
        let file = OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {} for locking", path.display()), e))?;
        if !flock_with_grace(&file)? {
            return Err(Error::Locked {
                path: path.to_path_buf(),
                pid: holder_pid(data),
            });
        }
        let pid = std::process::id();
        data.write_all_at(&pid.to_le_bytes(), PID_OFFSET)
            .map_err(|e| Error::io("recording the writer pid", e))?;
        let fd = file.as_raw_fd();
        let registry_slot = LOCK_FDS.iter().position(|s| {
            s.compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        Ok(WriterLock {
            file: Some(file),
            registry_slot,
            owner_pid: pid,
        })
    }

    /// Takes the lock on an already open file (a new compaction file).
    pub fn acquire_file(path: &Path, data: &File) -> Result<WriterLock> {
        WriterLock::acquire(path, data)
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        if std::process::id() != self.owner_pid {
            // Forked child: the atfork handler already closed this descriptor number (or it
            // was never registered and still refers to the parent's lock description, which
            // the child then keeps open until exit, as documented). Never close it twice.
            let _ = file.into_raw_fd();
            return;
        }
        if let Some(i) = self.registry_slot {
            LOCK_FDS[i].store(-1, Ordering::SeqCst);
        }
        drop(file);
    }
}

/// Whether some process holds the writer lock of the store at `path` right now (a probe with a
/// shared, non-blocking `flock` on a new descriptor, released at once). Readers use it to tell
/// a commit still being written (a live writer) from damage (no writer). `true` when the probe
/// itself fails, which is the cautious answer for that use.
pub fn writer_active(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    else {
        return true;
    };
    // SAFETY: flock on a valid descriptor owned by `file`; no memory is passed. The lock (if
    // taken) is released when `file` is dropped at the end of this function.
    #[allow(unsafe_code)]
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    r != 0
}
