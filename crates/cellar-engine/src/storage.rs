//! The storage layer under the engine: a small positional-I/O trait, the real file
//! implementation (pwrite/fdatasync, reads served from a read-only mmap of the part of the file
//! that is known to be stable) and an in-memory implementation that tests use to inject I/O
//! errors (ENOSPC, EIO) and to produce the file image a crash would leave behind.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

/// Positional I/O on one file. Implementations must be usable from many threads at once.
#[allow(clippy::len_without_is_empty)]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Current length of the file.
    #[allow(clippy::len_without_is_empty)]
    fn len(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset` (`UnexpectedEof` past the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes all of `data` at `offset` (may have written a prefix when it fails).
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Hint: bytes below `upto` are valid, committed and will never be truncated while this
    /// handle lives, so they may be served from a memory map.
    fn set_stable(&self, _upto: u64) {}
    /// The underlying file, for locking and identity checks (None for in-memory storage).
    fn file(&self) -> Option<&File> {
        None
    }
    /// `len` bytes at `offset`, borrowed from a mapping when possible (no copy).
    fn view(&self, offset: u64, len: usize) -> io::Result<View> {
        let mut v = vec![0u8; len];
        self.read_at(offset, &mut v)?;
        Ok(View::owned(v))
    }
    /// `len` bytes at `offset` borrowed from a mapping, or `None` when they are not mapped
    /// (the caller then reads what it needs with `read_at`): a large range is never copied.
    fn mapped_view(&self, _offset: u64, _len: usize) -> Option<View> {
        None
    }
    /// Writes a small informational field inside the first 4 KiB (the published log end):
    /// like `write_at`, but a real file may do it through a shared mapping, without a syscall.
    fn write_hint(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_at(offset, data)
    }
    /// Reads a small informational field inside the first 4 KiB (what `write_hint` wrote, by
    /// this or another process): a real file with a writer's mapping reads it from there.
    fn read_hint(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let v = self.view(offset, buf.len())?;
        buf.copy_from_slice(&v);
        Ok(())
    }
    /// A 4-byte counter inside the first 4 KiB shared by every process that maps the file
    /// (`offset` 4-aligned); `None` where there is no shared mapping (custom storage).
    fn shared_counter(&self, _offset: u64) -> Option<&std::sync::atomic::AtomicU32> {
        None
    }
}

type MapGuard = arc_swap::Guard<Option<Arc<memmap2::Mmap>>>;

/// Bytes returned by [`Storage::view`]: either borrowed from the file mapping or owned.
pub struct View {
    mapped: Option<MapGuard>,
    start: usize,
    end: usize,
    owned: Vec<u8>,
}

impl View {
    /// A view of owned bytes.
    pub fn owned(v: Vec<u8>) -> View {
        View {
            mapped: None,
            start: 0,
            end: v.len(),
            owned: v,
        }
    }
}

impl std::ops::Deref for View {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self.mapped.as_ref().and_then(|g| g.as_deref()) {
            Some(m) => &m[self.start..self.end],
            None => &self.owned[self.start..self.end],
        }
    }
}

/// A real file. Reads of the stable region come from a shared read-only mapping.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    stable: AtomicU64,
    map: ArcSwapOption<memmap2::Mmap>,
    remap: Mutex<()>,
    /// A shared mapping of the first page: read-write for `write_hint` and `shared_counter`
    /// where the file is open for writing (the `bool`), read-only for `read_hint` otherwise.
    head: std::sync::OnceLock<Option<(memmap2::MmapRaw, bool)>>,
}

impl FileStorage {
    /// Wraps an open file.
    pub fn new(file: File) -> FileStorage {
        FileStorage {
            file,
            stable: AtomicU64::new(0),
            map: ArcSwapOption::empty(),
            remap: Mutex::new(()),
            head: std::sync::OnceLock::new(),
        }
    }

    /// The mapping of the first page (see `head`), made on first use: read-write if the file
    /// allows it, else read-only; `None` if neither can be made (then every hint goes through
    /// the file).
    fn head(&self) -> Option<&(memmap2::MmapRaw, bool)> {
        self.head
            .get_or_init(|| {
                let opts = {
                    let mut o = memmap2::MmapOptions::new();
                    o.len(4096);
                    o
                };
                match opts.map_raw(&self.file) {
                    Ok(m) => Some((m, true)),
                    // A reader maps the page only if the file holds all of it (a store's first
                    // page is never truncated; a damaged file shorter than that is read
                    // through the file, where a short read is an error, not a SIGBUS).
                    Err(_) if self.file.metadata().is_ok_and(|m| m.len() >= 4096) => {
                        opts.map_raw_read_only(&self.file).ok().map(|m| (m, false))
                    }
                    Err(_) => None,
                }
            })
            .as_ref()
    }

    fn mapped_read(&self, offset: u64, buf: &mut [u8]) -> Option<()> {
        let end = offset.checked_add(buf.len() as u64)?;
        if end > self.stable.load(Ordering::Acquire) {
            return None;
        }
        let guard = self.map.load();
        let m = match guard.as_ref() {
            Some(m) if m.len() as u64 >= end => m,
            _ => {
                drop(guard);
                self.grow_map(end)?;
                return self.mapped_read_existing(offset, buf);
            }
        };
        buf.copy_from_slice(&m[offset as usize..end as usize]);
        Some(())
    }

    fn mapped_read_existing(&self, offset: u64, buf: &mut [u8]) -> Option<()> {
        let end = offset + buf.len() as u64;
        let guard = self.map.load();
        let m = guard.as_ref()?;
        if (m.len() as u64) < end {
            return None;
        }
        buf.copy_from_slice(&m[offset as usize..end as usize]);
        Some(())
    }

    fn grow_map(&self, need: u64) -> Option<()> {
        let _g = self.remap.lock().ok()?;
        if let Some(m) = self.map.load().as_ref() {
            if m.len() as u64 >= need {
                return Some(());
            }
        }
        // Map generously beyond the current stable end (address space is cheap on 64-bit);
        // pages past EOF are never touched because reads stop at `stable`.
        let len = need
            .max(1 << 20)
            .checked_next_power_of_two()?
            .saturating_mul(2);
        let len = usize::try_from(len).ok()?;
        // SAFETY: the mapping is read-only and shared. The engine only reads bytes below the
        // `stable` watermark: records that were validated and are never truncated or rewritten
        // while this file is open (the log is append-only; torn tails, the only thing ever
        // truncated, are never below `stable` of any handle, see docs/engine-format.md section
        // 4). Pages past EOF are mapped but never accessed, so no SIGBUS can occur.
        #[allow(unsafe_code)]
        let m = unsafe { memmap2::MmapOptions::new().len(len).map(&self.file) }.ok()?;
        self.map.store(Some(Arc::new(m)));
        Some(())
    }
}

impl Storage for FileStorage {
    fn write_hint(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        const HEAD: usize = 4096;
        let end = offset as usize + data.len();
        if end > HEAD {
            return self.write_at(offset, data);
        }
        // The first page exists for the whole life of the file (header, slots, padding) and is
        // never truncated; only writers write through the mapping (one handle in exclusive
        // mode; in shared mode the one holding the commit lock).
        match self.head() {
            Some((m, true)) if m.len() >= end => {
                // SAFETY: `offset..end` lies inside the live mapping (checked above); the
                // writer lock serialises writers; readers tolerate a torn value (it only makes
                // them check the file length).
                #[allow(unsafe_code)]
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        m.as_mut_ptr().add(offset as usize),
                        data.len(),
                    );
                }
                Ok(())
            }
            _ => self.write_at(offset, data),
        }
    }

    fn shared_counter(&self, offset: u64) -> Option<&std::sync::atomic::AtomicU32> {
        const HEAD: usize = 4096;
        if offset & 3 != 0 || offset as usize + 4 > HEAD {
            return None;
        }
        let (m, writable) = self.head()?;
        if !writable || m.len() < HEAD {
            return None;
        }
        // SAFETY: the mapping is page-aligned and `offset` is 4-aligned and inside it (checked
        // above), so the pointer is a valid, aligned `AtomicU32` for as long as `self` (which
        // owns the mapping) lives; the first page is never truncated. Other processes access
        // these bytes only through the same atomic operations.
        #[allow(unsafe_code)]
        Some(unsafe { &*(m.as_ptr().add(offset as usize) as *const std::sync::atomic::AtomicU32) })
    }

    fn read_hint(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if let Some((m, _)) = self.head() {
            let end = offset as usize + buf.len();
            if end <= m.len() {
                // SAFETY: `offset..end` lies inside the live 4 KiB mapping of the first page
                // (checked above), which is never truncated. Another process may be writing
                // the bytes: a torn value is tolerated by every caller (hints only decide
                // whether to look at the file).
                #[allow(unsafe_code)]
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        m.as_ptr().add(offset as usize),
                        buf.as_mut_ptr(),
                        buf.len(),
                    );
                }
                return Ok(());
            }
        }
        let v = self.view(offset, buf.len())?;
        buf.copy_from_slice(&v);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.mapped_read(offset, buf).is_some() {
            return Ok(());
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn set_stable(&self, upto: u64) {
        self.stable.fetch_max(upto, Ordering::AcqRel);
    }

    fn mapped_view(&self, offset: u64, len: usize) -> Option<View> {
        let end = offset.checked_add(len as u64)?;
        if end > self.stable.load(Ordering::Acquire) {
            return None;
        }
        for _ in 0..2 {
            let g = self.map.load();
            if g.as_ref().is_some_and(|m| m.len() as u64 >= end) {
                return Some(View {
                    mapped: Some(g),
                    start: offset as usize,
                    end: end as usize,
                    owned: Vec::new(),
                });
            }
            drop(g);
            self.grow_map(end)?;
        }
        None
    }

    fn view(&self, offset: u64, len: usize) -> io::Result<View> {
        if let Some(v) = self.mapped_view(offset, len) {
            return Ok(v);
        }
        let mut v = vec![0u8; len];
        self.read_at(offset, &mut v)?;
        Ok(View::owned(v))
    }

    fn file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

/// Which I/O call a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Write,
    Sync,
    SetLen,
}

/// A programmed failure: the `after`-th matching call (0 = the next one) fails with `errno`;
/// a failing write first writes `partial` bytes of its data.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub op: FaultOp,
    pub after: usize,
    pub errno: i32,
    pub partial: usize,
    /// Keep failing every later matching call too.
    pub sticky: bool,
}

#[derive(Debug, Default)]
struct MemState {
    data: Vec<u8>,
    /// The image as of the last successful sync.
    synced: Vec<u8>,
}

/// In-memory storage with fault injection and crash images, for tests.
#[derive(Debug, Default)]
pub struct MemStorage {
    state: Mutex<MemState>,
    faults: Mutex<Vec<Fault>>,
    calls: [AtomicUsize; 3],
    fail_all: AtomicBool,
}

/// What kind of crash to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// The process dies (kill -9): everything written reaches the file.
    Process,
    /// The machine loses power: the last synced image plus the first `keep` unsynced bytes
    /// (a torn tail), and the superblock area from either image.
    Power { keep: usize, old_superblock: bool },
}

impl MemStorage {
    /// An empty file.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// A file with the given contents (all of it considered synced).
    pub fn from_bytes(data: Vec<u8>) -> MemStorage {
        let s = MemStorage::default();
        if let Ok(mut st) = s.state.lock() {
            st.synced = data.clone();
            st.data = data;
        }
        s
    }

    /// Programs a failure.
    pub fn inject(&self, fault: Fault) {
        let idx = fault.op as usize;
        let base = self.calls[idx].load(Ordering::SeqCst);
        if let Ok(mut f) = self.faults.lock() {
            f.push(Fault {
                after: base + fault.after,
                ..fault
            });
        }
    }

    /// Removes all programmed failures.
    pub fn clear_faults(&self) {
        if let Ok(mut f) = self.faults.lock() {
            f.clear();
        }
        self.fail_all.store(false, Ordering::SeqCst);
    }

    /// Current bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.state
            .lock()
            .map(|s| s.data.clone())
            .unwrap_or_default()
    }

    /// Bytes that the given crash would leave on "disk".
    pub fn crash_image(&self, crash: Crash) -> Vec<u8> {
        let Ok(st) = self.state.lock() else {
            return Vec::new();
        };
        match crash {
            Crash::Process => st.data.clone(),
            Crash::Power {
                keep,
                old_superblock,
            } => {
                let mut img = st.synced.clone();
                let sb = 4096.min(st.data.len());
                if !old_superblock || img.len() < sb {
                    if img.len() < sb {
                        img.resize(sb, 0);
                    }
                    img[..sb].copy_from_slice(&st.data[..sb]);
                }
                let start = st.synced.len().max(sb);
                let end = (start + keep).min(st.data.len());
                if end > img.len() {
                    img.resize(end, 0);
                }
                if end > start {
                    img[start..end].copy_from_slice(&st.data[start..end]);
                }
                img
            }
        }
    }

    fn check_fault(&self, op: FaultOp) -> Option<Fault> {
        let n = self.calls[op as usize].fetch_add(1, Ordering::SeqCst);
        let faults = self.faults.lock().ok()?;
        faults
            .iter()
            .find(|f| f.op == op && (f.after == n || (f.sticky && n >= f.after)))
            .copied()
    }
}

impl Storage for MemStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().map_err(|_| poisoned())?.data.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let st = self.state.lock().map_err(|_| poisoned())?;
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        if end > st.data.len() {
            return Err(eof());
        }
        buf.copy_from_slice(&st.data[start..end]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let fault = self.check_fault(FaultOp::Write);
        let n = match fault {
            Some(f) => f.partial.min(data.len()),
            None => data.len(),
        };
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        let start = offset as usize;
        if st.data.len() < start + n {
            st.data.resize(start + n, 0);
        }
        st.data[start..start + n].copy_from_slice(&data[..n]);
        match fault {
            Some(f) => Err(io::Error::from_raw_os_error(f.errno)),
            None => Ok(()),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        if let Some(f) = self.check_fault(FaultOp::Sync) {
            return Err(io::Error::from_raw_os_error(f.errno));
        }
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        st.synced = st.data.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if let Some(f) = self.check_fault(FaultOp::SetLen) {
            return Err(io::Error::from_raw_os_error(f.errno));
        }
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        st.data.resize(len as usize, 0);
        Ok(())
    }
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file")
}

fn poisoned() -> io::Error {
    io::Error::other("storage mutex poisoned")
}
