//! The cross-process writer locks, on a dedicated descriptor of the store file.
//!
//! * Exclusive mode (`Options::exclusive`): an exclusive `flock` held for the handle's life,
//!   plus the writer's pid in the superblock so a second writer's error can name it.
//! * Shared mode (the default; docs/engine-format.md section 1, "Concurrency"): every writer
//!   session holds a shared `flock` (which keeps exclusive writers, and older cellar versions,
//!   out) and an open-file-description (OFD) read lock on the byte [`SESSION_BYTE`]; each commit
//!   takes an OFD write lock on [`COMMIT_BYTE`] for its duration; compactions take one on
//!   [`COMPACT_BYTE`]. The bytes lie far beyond any file's end: a byte-range lock does not need
//!   the bytes to exist. OFD locks (unlike classic `fcntl` locks) belong to the open file
//!   description, so two handles in one process exclude each other, closing another descriptor
//!   of the file releases nothing, and every lock dies with the process (`kill -9` included).
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
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Once;

use crate::error::{Error, Result};
use crate::format::PID_OFFSET;

const REGISTRY_LEN: usize = 256;
static LOCK_FDS: [AtomicI32; REGISTRY_LEN] = [const { AtomicI32::new(-1) }; REGISTRY_LEN];
static ATFORK: Once = Once::new();

/// This process's id once [`current_pid`] has asked for it, 0 before (and in a fork child,
/// whose atfork handler resets it).
static CACHED_PID: AtomicU32 = AtomicU32::new(0);

/// This process's id. `getpid` is a system call, and every write asks (a handle used in a
/// forked child must refuse to write), so the id is cached; the atfork child handler, which
/// is installed before the first caching, clears the cache in every child forked through
/// `fork()` (Python's `os.fork` and `multiprocessing` included).
pub(crate) fn current_pid() -> u32 {
    let pid = CACHED_PID.load(Ordering::Acquire);
    if pid != 0 {
        return pid;
    }
    install_atfork();
    let pid = std::process::id();
    CACHED_PID.store(pid, Ordering::Release);
    pid
}

extern "C" fn close_lock_fds_in_child() {
    CACHED_PID.store(0, Ordering::SeqCst);
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

/// Shared mode: OFD write-locked by the writer that is committing.
pub const COMMIT_BYTE: i64 = 1 << 62;
/// Shared mode: OFD read-locked by every writer session (held for the handle's life).
pub const SESSION_BYTE: i64 = COMMIT_BYTE + 1;
/// Shared mode: OFD write-locked by a compaction (one per file at a time).
pub const COMPACT_BYTE: i64 = COMMIT_BYTE + 2;

#[cfg(target_os = "linux")]
const F_GETLK_: libc::c_int = libc::F_OFD_GETLK;
#[cfg(target_os = "linux")]
const F_SETLK_: libc::c_int = libc::F_OFD_SETLK;
// Elsewhere classic process-associated locks: correct across processes, but two handles of
// one process on one file do not exclude each other there (the in-process mutex of a handle
// still serialises its own threads).
#[cfg(not(target_os = "linux"))]
const F_GETLK_: libc::c_int = libc::F_GETLK;
#[cfg(not(target_os = "linux"))]
const F_SETLK_: libc::c_int = libc::F_SETLK;

/// One `fcntl` byte-range lock call on `fd` for the single byte `byte`. Returns the
/// `struct flock` (for `F_GETLK`: the conflicting lock, or `l_type == F_UNLCK`).
fn range_op(
    fd: i32,
    cmd: libc::c_int,
    typ: libc::c_int,
    byte: i64,
) -> std::io::Result<libc::flock> {
    // SAFETY: an all-zero `struct flock` is a valid value of this plain C struct.
    #[allow(unsafe_code)]
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    fl.l_pid = 0;
    // SAFETY: `fd` is an open descriptor owned by the caller's `File`; `fl` is a valid,
    // initialised `struct flock` that lives across the call (the kernel reads and, for GETLK,
    // writes it).
    #[allow(unsafe_code)]
    let r = unsafe { libc::fcntl(fd, cmd, &mut fl as *mut libc::flock) };
    if r == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fl)
    }
}

/// Non-blocking range lock: `Ok(false)` when another lock conflicts.
fn try_range(fd: i32, typ: libc::c_int, byte: i64) -> std::io::Result<bool> {
    match range_op(fd, F_SETLK_, typ, byte) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the held lock is exclusive (one writer) or a shared-mode session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// One writer for the handle's life.
    Exclusive,
    /// Many writer sessions; commits serialised by [`COMMIT_BYTE`].
    Shared,
}

/// A held writer lock. Released on drop (in the process that took it).
#[derive(Debug)]
pub struct WriterLock {
    file: Option<File>,
    registry_slot: Option<usize>,
    owner_pid: u32,
}

fn try_flock(file: &File, how: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a valid, open descriptor owned by `file`; no memory is passed.
    #[allow(unsafe_code)]
    let r = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) };
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
fn flock_with_grace(file: &File, how: libc::c_int, wait: std::time::Duration) -> Result<bool> {
    let grace = wait.max(std::time::Duration::from_millis(250));
    let start = std::time::Instant::now();
    loop {
        if try_flock(file, how).map_err(|e| Error::io("locking the store", e))? {
            return Ok(true);
        }
        if start.elapsed() >= grace {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

impl WriterLock {
    /// Takes the lock on the file at `path` and, in exclusive mode, records our pid in `data`.
    /// Exclusive: fails with `Locked` after a 250 ms grace period if any writer holds it.
    /// Shared: waits up to `wait` for an exclusive writer to leave.
    pub fn acquire(
        path: &Path,
        data: &File,
        mode: LockMode,
        wait: std::time::Duration,
    ) -> Result<WriterLock> {
        install_atfork();
        // A write lock on a byte range needs a descriptor open for writing.
        let file = OpenOptions::new()
            .read(true)
            .write(mode == LockMode::Shared)
            .open(path)
            .map_err(|e| Error::io(format!("opening {} for locking", path.display()), e))?;
        let (how, wait) = match mode {
            LockMode::Exclusive => (libc::LOCK_EX, std::time::Duration::ZERO),
            LockMode::Shared => (libc::LOCK_SH, wait),
        };
        if !flock_with_grace(&file, how, wait)? {
            return Err(Error::Locked {
                path: path.to_path_buf(),
                pid: holder_pid(data),
                shared: mode == LockMode::Shared,
            });
        }
        let pid = current_pid();
        match mode {
            LockMode::Exclusive => data
                .write_all_at(&pid.to_le_bytes(), PID_OFFSET)
                .map_err(|e| Error::io("recording the writer pid", e))?,
            LockMode::Shared => {
                if !try_range(file.as_raw_fd(), libc::F_RDLCK, SESSION_BYTE)
                    .map_err(|e| Error::io("taking the writer session lock", e))?
                {
                    // Nobody write-locks the session byte: only a broken lock manager gets here.
                    return Err(Error::Locked {
                        path: path.to_path_buf(),
                        pid: None,
                        shared: true,
                    });
                }
            }
        }
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
    pub fn acquire_file(path: &Path, data: &File, mode: LockMode) -> Result<WriterLock> {
        WriterLock::acquire(path, data, mode, std::time::Duration::ZERO)
    }

    /// The lock descriptor; an error in a forked child (whose copy the atfork handler closed:
    /// the number may name another file by now).
    fn fd(&self) -> Result<i32> {
        if current_pid() != self.owner_pid {
            return Err(Error::Closed);
        }
        self.file
            .as_ref()
            .map(AsRawFd::as_raw_fd)
            .ok_or(Error::Closed)
    }

    /// Write-locks the range byte `byte` (shared mode), waiting up to `timeout`: `Ok(None)`
    /// once it is held, `Ok(Some(waited))` when the timeout passed. Waits spin briefly, then
    /// sleep with a growing pause (up to 1 ms), like SQLite's busy handler. The clock is read
    /// only once the first attempt failed.
    pub fn lock_range(
        &self,
        byte: i64,
        timeout: std::time::Duration,
    ) -> Result<Option<std::time::Duration>> {
        let fd = self.fd()?;
        let mut pause = std::time::Duration::from_micros(20);
        let mut spins = 0;
        let mut started = None;
        loop {
            if try_range(fd, libc::F_WRLCK, byte)
                .map_err(|e| Error::io("taking the store's write lock", e))?
            {
                return Ok(None);
            }
            let t0 = *started.get_or_insert_with(std::time::Instant::now);
            let waited = t0.elapsed();
            if waited >= timeout {
                return Ok(Some(waited));
            }
            if spins < 8 {
                spins += 1;
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Releases a range lock taken by `lock_range`.
    pub fn unlock_range(&self, byte: i64) {
        if let Ok(fd) = self.fd() {
            let _ = range_op(fd, F_SETLK_, libc::F_UNLCK, byte);
        }
    }

    /// Whether another writer session (another handle, in any process) has this file open.
    /// `true` when the probe fails (the cautious answer: do not mark the store closed).
    pub fn others_in_session(&self) -> bool {
        let Ok(fd) = self.fd() else {
            return true;
        };
        match range_op(fd, F_GETLK_, libc::F_WRLCK, SESSION_BYTE) {
            Ok(fl) => fl.l_type != libc::F_UNLCK as libc::c_short,
            Err(_) => true,
        }
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        if current_pid() != self.owner_pid {
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
    if r != 0 {
        return true;
    }
    // Shared-mode writer sessions hold a read lock on the session byte.
    match range_op(file.as_raw_fd(), F_GETLK_, libc::F_WRLCK, SESSION_BYTE) {
        Ok(fl) => fl.l_type != libc::F_UNLCK as libc::c_short,
        Err(_) => true,
    }
}
