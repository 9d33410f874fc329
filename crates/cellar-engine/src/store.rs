//! The store: open modes, recovery, reads, writes and atomic batches, group-commit sync,
//! checkpoints, tailing by readers in other processes, compaction, check/repair and stats.
//! The on-disk format is in `format`; docs/engine-format.md explains the design.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;

use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::format::*;
use crate::index::{hash_key, Probe, Table};
use crate::lock::WriterLock;
use crate::log::{read_header, read_record, LogReader, Next};
use crate::storage::{FileStorage, Storage};

/// How to open a store. `Options::default()` is dbm's `'c'`: read-write, create if missing.
#[derive(Debug, Clone)]
pub struct Options {
    /// Create the store if it does not exist (dbm `'c'`, `'n'`).
    pub create: bool,
    /// Start with an empty store even if one exists (dbm `'n'`).
    pub truncate: bool,
    /// Open for reading only; takes no lock (dbm `'r'`).
    pub read_only: bool,
    /// `fdatasync` (grouped) before every mutation returns (dbm `'s'`).
    pub sync_on_commit: bool,
    /// Value compression of a newly created store (existing stores keep theirs).
    pub compression: Compression,
    /// Value encoding recorded in a newly created store's header.
    pub value_encoding: ValueEncoding,
    /// Compact in the background once garbage passes `compact_ratio`.
    pub auto_compact: bool,
    /// Dead bytes / log bytes above which background compaction starts.
    pub compact_ratio: f64,
    /// Do not compact automatically below this many log bytes.
    pub compact_min_bytes: u64,
    /// Write an index checkpoint after this many new log bytes (bounds replay after a crash).
    pub checkpoint_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            create: true,
            truncate: false,
            read_only: false,
            sync_on_commit: false,
            compression: Compression::None,
            value_encoding: ValueEncoding::Raw,
            auto_compact: true,
            compact_ratio: 0.5,
            compact_min_bytes: 64 << 20,
            checkpoint_bytes: 256 << 20,
        }
    }
}

impl Options {
    /// Options for a CPython dbm flag string: `'r'`, `'w'`, `'c'` or `'n'`, optionally followed
    /// by `'s'` (sync every commit), `'f'` (fast, the default) or `'u'` (no lock; ignored,
    /// readers never lock).
    pub fn from_dbm_flag(flag: &str) -> Option<Options> {
        let mut chars = flag.chars();
        let mut o = Options::default();
        match chars.next()? {
            'r' => {
                o.read_only = true;
                o.create = false;
            }
            'w' => o.create = false,
            'c' => {}
            'n' => o.truncate = true,
            _ => return None,
        }
        for c in chars {
            match c {
                's' => o.sync_on_commit = true,
                'f' | 'u' => {}
                _ => return None,
            }
        }
        Some(o)
    }
}

/// Sizes and counts reported by [`Store::stats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Live keys.
    pub keys: u64,
    /// Bytes of records that hold live values.
    pub live_bytes: u64,
    /// Log bytes that compaction would reclaim (old versions, deletes, checkpoints).
    pub dead_bytes: u64,
    /// File size.
    pub file_bytes: u64,
    /// Uncompressed size of the live values.
    pub raw_value_bytes: u64,
    /// Stored size of the live values.
    pub stored_value_bytes: u64,
    /// `raw_value_bytes / stored_value_bytes` (1.0 when nothing is compressed).
    pub compression_ratio: f64,
    /// File generation (incremented by every compaction).
    pub generation: u64,
    /// Bytes of torn tail dropped when this handle opened the store.
    pub recovered_tail_bytes: u64,
    /// The store has a trained zstd dictionary.
    pub has_dictionary: bool,
}

/// One damaged region found by [`Store::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first bad byte.
    pub offset: u64,
    /// Length of the region up to the next intact record (or end of file).
    pub len: u64,
    /// What was wrong.
    pub reason: String,
}

/// Result of [`Store::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Intact records in the log.
    pub records: u64,
    /// Damaged regions, in file order.
    pub damage: Vec<Damage>,
    /// Index entries that do not point at an intact PUT record with a matching key.
    pub index_errors: Vec<String>,
}

impl CheckReport {
    /// No damage and a consistent index.
    pub fn is_ok(&self) -> bool {
        self.damage.is_empty() && self.index_errors.is_empty()
    }
}

/// Result of [`repair`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Intact committed records replayed into the new store.
    pub salvaged_records: u64,
    /// Records dropped because their batch was incomplete.
    pub dropped_partial_records: u64,
    /// Damaged regions skipped.
    pub damage: Vec<Damage>,
    /// Live keys in the repaired store.
    pub keys: u64,
    /// The source header was unreadable (settings came from the given options).
    pub header_damaged: bool,
}

/// A set of writes committed atomically by [`Store::batch`].
#[derive(Debug, Default, Clone)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }
    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Batch {
        self.ops.push((key.into(), Some(value.into())));
        self
    }
    /// Adds a delete (of a key that may or may not exist).
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Batch {
        self.ops.push((key.into(), None));
        self
    }
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// No operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// One file generation: its storage, index and counters.
#[derive(Debug)]
struct Gen {
    storage: Arc<dyn Storage>,
    _lock: Option<WriterLock>,
    header: StaticHeader,
    codec: Codec,
    index: ArcSwap<Table>,
    end: AtomicU64,
    keys: AtomicU64,
    tombs: AtomicU64,
    live_bytes: AtomicU64,
    raw_value_bytes: AtomicU64,
    stored_value_bytes: AtomicU64,
    superseded: AtomicBool,
    ident: Option<(u64, u64)>,
    recovered_tail: u64,
    slot_seq: AtomicU64,
}

/// Sizes of a record, for accounting.
struct RecSizes {
    total: u64,
    stored: u64,
    raw: u64,
}

impl Gen {
    fn limit(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    fn key_matches(&self, off: u64, key: &[u8]) -> Result<bool> {
        let (h, _) = read_header(&*self.storage, off, self.limit())?;
        if h.key_len != key.len() as u64 {
            return Ok(false);
        }
        let mut small = [0u8; 64];
        let mut big;
        let buf: &mut [u8] = if key.len() <= 64 {
            &mut small[..key.len()]
        } else {
            big = vec![0u8; key.len()];
            &mut big
        };
        self.storage
            .read_at(off + h.header_len as u64, buf)
            .map_err(|e| Error::io(format!("reading record at offset {off}"), e))?;
        Ok(buf == key)
    }

    fn key_hash_at(&self, off: u64) -> Result<u64> {
        let (h, _) = read_header(&*self.storage, off, self.limit())?;
        let mut k = vec![0u8; h.key_len as usize];
        self.storage
            .read_at(off + h.header_len as u64, &mut k)
            .map_err(|e| Error::io(format!("reading record at offset {off}"), e))?;
        Ok(hash_key(&k))
    }

    fn sizes_at(&self, off: u64) -> Result<RecSizes> {
        let (h, _) = read_header(&*self.storage, off, self.limit())?;
        let raw = if h.flags & F_ZSTD != 0 {
            let mut fh = [0u8; 18];
            let n = (h.val_len as usize).min(18);
            self.storage
                .read_at(off + h.header_len as u64 + h.key_len, &mut fh[..n])
                .map_err(|e| Error::io("reading a value header", e))?;
            match zstd::zstd_safe::get_frame_content_size(&fh[..n]) {
                Ok(Some(n)) => n,
                _ => h.val_len,
            }
        } else {
            h.val_len
        };
        Ok(RecSizes {
            total: h.total(),
            stored: h.val_len,
            raw,
        })
    }

    /// Reads the value of the PUT record at `off` whose key is `key`, verifying its checksum.
    fn read_value(&self, off: u64) -> Result<Vec<u8>> {
        let limit = self.limit();
        let (h, hb) = read_header(&*self.storage, off, limit)?;
        if h.kind != K_PUT {
            return Err(Error::corrupt(off, "index points at a non-PUT record"));
        }
        let mut key = vec![0u8; h.key_len as usize];
        let vlen = usize::try_from(h.val_len)
            .map_err(|_| Error::corrupt(off, "value too large for this platform"))?;
        let mut val = vec![0u8; vlen];
        let kstart = off + h.header_len as u64;
        self.storage
            .read_at(kstart, &mut key)
            .and_then(|_| self.storage.read_at(kstart + h.key_len, &mut val))
            .map_err(|e| Error::io(format!("reading record at offset {off}"), e))?;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c_append(crc32c::crc32c(&hb[4..h.header_len]), &key),
            &val,
        );
        if crc != h.crc {
            return Err(Error::corrupt(off, "record checksum mismatch"));
        }
        if h.flags & F_ZSTD != 0 {
            return self.codec.decompress(h.flags, &val, off);
        }
        Ok(val)
    }

    fn probe(&self, table: &Table, hash: u64, key: &[u8]) -> Result<Probe> {
        table.probe(hash, |off| self.key_matches(off, key))
    }

    fn grow_if_needed(&self) -> Result<()> {
        let t = self.index.load();
        let keys = self.keys.load(Ordering::Relaxed);
        if t.needs_grow(keys, self.tombs.load(Ordering::Relaxed)) {
            let nt = t.rebuilt(keys, |off| self.key_hash_at(off))?;
            self.index.store(Arc::new(nt));
            self.tombs.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Points `key` at the PUT record at `off` (single writer of this index only).
    fn apply_put(&self, key: &[u8], off: u64, sizes: RecSizes) -> Result<()> {
        self.grow_if_needed()?;
        let hash = hash_key(key);
        let t = self.index.load();
        match self.probe(&t, hash, key)? {
            Probe::Found { slot, offset } => {
                let old = self.sizes_at(offset)?;
                t.set(slot, hash, off);
                self.live_bytes.fetch_sub(old.total, Ordering::Relaxed);
                self.raw_value_bytes.fetch_sub(old.raw, Ordering::Relaxed);
                self.stored_value_bytes
                    .fetch_sub(old.stored, Ordering::Relaxed);
            }
            Probe::Missing {
                insert_at,
                reuses_tomb,
            } => {
                t.set(insert_at, hash, off);
                if reuses_tomb {
                    self.tombs.fetch_sub(1, Ordering::Relaxed);
                }
                self.keys.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.live_bytes.fetch_add(sizes.total, Ordering::Relaxed);
        self.raw_value_bytes.fetch_add(sizes.raw, Ordering::Relaxed);
        self.stored_value_bytes
            .fetch_add(sizes.stored, Ordering::Relaxed);
        Ok(())
    }

    fn apply_delete(&self, key: &[u8]) -> Result<bool> {
        let hash = hash_key(key);
        let t = self.index.load();
        match self.probe(&t, hash, key)? {
            Probe::Found { slot, offset } => {
                let old = self.sizes_at(offset)?;
                t.remove(slot);
                self.tombs.fetch_add(1, Ordering::Relaxed);
                self.keys.fetch_sub(1, Ordering::Relaxed);
                self.live_bytes.fetch_sub(old.total, Ordering::Relaxed);
                self.raw_value_bytes.fetch_sub(old.raw, Ordering::Relaxed);
                self.stored_value_bytes
                    .fetch_sub(old.stored, Ordering::Relaxed);
                Ok(true)
            }
            Probe::Missing { .. } => Ok(false),
        }
    }

    /// Looks `key` up and returns its value, reading each candidate record once.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let hash = hash_key(key);
        let t = self.index.load();
        let mut found: Option<Vec<u8>> = None;
        let probe = t.probe(hash, |off| {
            // Read the end after the slot: the writer publishes the end before the slot.
            let limit = self.limit();
            let hv = self
                .storage
                .view(
                    off,
                    (MAX_REC_HEADER as u64).min(limit.saturating_sub(off)) as usize,
                )
                .map_err(|e| Error::io(format!("reading record at offset {off}"), e))?;
            let h = match parse_header(&hv) {
                HeaderParse::Ok(h) if off + h.total() <= limit => h,
                _ => return Err(Error::corrupt(off, "indexed record is damaged")),
            };
            if h.key_len != key.len() as u64 {
                return Ok(false);
            }
            drop(hv);
            let total = usize::try_from(h.total())
                .map_err(|_| Error::corrupt(off, "record too large for this platform"))?;
            let rec = self
                .storage
                .view(off, total)
                .map_err(|e| Error::io(format!("reading record at offset {off}"), e))?;
            let k0 = h.header_len;
            let k1 = k0 + key.len();
            if &rec[k0..k1] != key {
                return Ok(false);
            }
            if h.kind != K_PUT {
                return Err(Error::corrupt(off, "index points at a non-PUT record"));
            }
            if !verify(&h, &rec) {
                return Err(Error::corrupt(off, "record checksum mismatch"));
            }
            found = Some(if h.flags & F_ZSTD != 0 {
                self.codec.decompress(h.flags, &rec[k1..], off)?
            } else {
                rec[k1..].to_vec()
            });
            Ok(true)
        })?;
        Ok(match probe {
            Probe::Found { .. } => found,
            Probe::Missing { .. } => None,
        })
    }

    fn contains(&self, key: &[u8]) -> Result<Option<u64>> {
        let t = self.index.load();
        Ok(match self.probe(&t, hash_key(key), key)? {
            Probe::Found { offset, .. } => Some(offset),
            Probe::Missing { .. } => None,
        })
    }

    fn stats(&self) -> Stats {
        let end = self.limit();
        let live = self.live_bytes.load(Ordering::Relaxed);
        let raw = self.raw_value_bytes.load(Ordering::Relaxed);
        let stored = self.stored_value_bytes.load(Ordering::Relaxed);
        Stats {
            keys: self.keys.load(Ordering::Relaxed),
            live_bytes: live,
            dead_bytes: end.saturating_sub(LOG_START).saturating_sub(live),
            file_bytes: end,
            raw_value_bytes: raw,
            stored_value_bytes: stored,
            compression_ratio: if stored == 0 {
                1.0
            } else {
                raw as f64 / stored as f64
            },
            generation: self.header.generation,
            recovered_tail_bytes: self.recovered_tail,
            has_dictionary: self.codec.has_dict(),
        }
    }
}

/// How replay of the log ended.
enum ReplayEnd {
    /// Reached end of file; log ends at this offset.
    Clean(u64),
    /// Found a bad record at `bad`; the last complete commit ends at `commit_end`.
    Bad {
        commit_end: u64,
        bad: u64,
        reason: &'static str,
    },
}

/// Applies complete commits from `[from, to)` to the generation's index.
fn replay(g: &Gen, from: u64, to: u64) -> Result<ReplayEnd> {
    let mut rd = LogReader::new(&*g.storage, from, to);
    // Pending records of an unfinished batch: (offset, kind, key, sizes).
    let mut pending: Vec<(u64, u8, Vec<u8>, RecSizes)> = Vec::new();
    let mut commit_end = from;
    loop {
        match rd.next_record()? {
            Next::End => {
                return Ok(if pending.is_empty() {
                    ReplayEnd::Clean(commit_end)
                } else {
                    ReplayEnd::Bad {
                        commit_end,
                        bad: to,
                        reason: "batch without its final record at end of file",
                    }
                });
            }
            Next::Bad { offset, reason } => {
                return Ok(ReplayEnd::Bad {
                    commit_end,
                    bad: offset,
                    reason,
                })
            }
            Next::Rec(off, h, rec) => {
                match h.kind {
                    K_PUT | K_DELETE => {
                        let k0 = h.header_len;
                        let key = rec[k0..k0 + h.key_len as usize].to_vec();
                        let val = &rec[k0 + h.key_len as usize..];
                        let raw = if h.flags & F_ZSTD != 0 {
                            match zstd::zstd_safe::get_frame_content_size(val) {
                                Ok(Some(n)) => n,
                                _ => h.val_len,
                            }
                        } else {
                            h.val_len
                        };
                        let sizes = RecSizes {
                            total: h.total(),
                            stored: h.val_len,
                            raw,
                        };
                        pending.push((off, h.kind, key, sizes));
                    }
                    K_SUPERSEDED => g.superseded.store(true, Ordering::Release),
                    _ => {}
                }
                if h.flags & F_CONT == 0 {
                    let end = off + h.total();
                    // Make the commit's records readable before indexing them.
                    g.end.store(end, Ordering::Release);
                    g.storage.set_stable(end);
                    for (off, kind, key, sizes) in pending.drain(..) {
                        if kind == K_PUT {
                            g.apply_put(&key, off, sizes)?;
                        } else {
                            g.apply_delete(&key)?;
                        }
                    }
                    commit_end = end;
                }
            }
        }
    }
}

fn file_ident(f: &File) -> Option<(u64, u64)> {
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

fn path_ident(p: &Path) -> Option<(u64, u64)> {
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

fn io_err(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let ctx = ctx.into();
    move |e| Error::io(ctx, e)
}

/// Encodes a fresh file: header, empty slots, padding.
fn new_file_bytes(header: &StaticHeader) -> Vec<u8> {
    let mut b = vec![0u8; LOG_START as usize];
    b[..STATIC_LEN].copy_from_slice(&header.encode());
    b
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Loads a generation from storage: header, newest valid checkpoint, replay of the tail.
fn load_gen(
    storage: Arc<dyn Storage>,
    lock: Option<WriterLock>,
    writable: bool,
    path: &Path,
    ident: Option<(u64, u64)>,
) -> Result<Gen> {
    let file_len = storage
        .len()
        .map_err(io_err("reading the store's length"))?;
    let mut hb = vec![0u8; (LOG_START.min(file_len)) as usize];
    storage
        .read_at(0, &mut hb)
        .map_err(io_err("reading the store header"))?;
    let header = match StaticHeader::decode(&hb) {
        Err(reason) => {
            return Err(Error::BadHeader {
                path: path.to_path_buf(),
                reason,
            })
        }
        Ok(r) => r?,
    };
    if file_len < LOG_START {
        if writable {
            storage
                .set_len(LOG_START)
                .map_err(io_err("extending the header"))?;
        } else {
            return Err(Error::BadHeader {
                path: path.to_path_buf(),
                reason: format!("file ends inside the superblock ({file_len} bytes)"),
            });
        }
    }
    let file_len = file_len.max(LOG_START);
    let mut slots: Vec<Slot> = SLOT_OFFSETS
        .iter()
        .filter_map(|&o| Slot::decode(&hb[o as usize..o as usize + SLOT_LEN]))
        .collect();
    slots.sort_by_key(|s| std::cmp::Reverse(s.seq));
    let max_seq = slots.first().map(|s| s.seq).unwrap_or(0);
    let mut loaded = None;
    for s in &slots {
        if s.covers_end > file_len || s.index_offset < LOG_START || s.index_offset >= file_len {
            continue;
        }
        if let Ok((h, body)) = read_record(&*storage, s.index_offset, file_len) {
            if h.kind != K_INDEX {
                continue;
            }
            if let Some((meta, table)) = Table::decode(&body) {
                if meta.covers_end == s.covers_end {
                    loaded = Some((meta, table));
                    break;
                }
            }
        }
    }
    let dict = if header.dict_offset != 0 {
        let (h, body) = read_record(&*storage, header.dict_offset, file_len)?;
        if h.kind != K_DICT {
            return Err(Error::corrupt(
                header.dict_offset,
                "header's dictionary offset does not point at a DICT record",
            ));
        }
        Some(body)
    } else {
        None
    };
    let codec = Codec::new(header.compression.level(), dict.as_deref());
    let (meta, table) = loaded.unwrap_or_else(|| {
        (
            IndexMeta {
                covers_end: LOG_START,
                ..IndexMeta::default()
            },
            Table::with_log2(10),
        )
    });
    let g = Gen {
        storage,
        _lock: lock,
        header,
        codec,
        index: ArcSwap::from_pointee(table),
        end: AtomicU64::new(meta.covers_end),
        keys: AtomicU64::new(meta.keys),
        tombs: AtomicU64::new(meta.tombstones),
        live_bytes: AtomicU64::new(meta.live_bytes),
        raw_value_bytes: AtomicU64::new(meta.raw_value_bytes),
        stored_value_bytes: AtomicU64::new(meta.stored_value_bytes),
        superseded: AtomicBool::new(false),
        ident,
        recovered_tail: 0,
        slot_seq: AtomicU64::new(max_seq),
    };
    g.storage.set_stable(meta.covers_end);
    let mut g = g;
    match replay(&g, meta.covers_end, file_len)? {
        ReplayEnd::Clean(end) => {
            g.end.store(end, Ordering::Release);
        }
        ReplayEnd::Bad {
            commit_end,
            bad,
            reason,
        } => {
            let mut rd = LogReader::new(&*g.storage, bad, file_len);
            // Only the writer decides torn tail vs damage: a reader can race with a live
            // writer (a read is not atomic against a concurrent append, so it may see a later
            // commit but not an earlier one yet); it simply stops at `bad` and retries later.
            if writable && bad < file_len && rd.find_intact(bad, true)?.is_some() {
                return Err(Error::corrupt(
                    bad,
                    format!("{reason}, and intact records follow (damage inside the log)"),
                ));
            }
            g.end.store(commit_end, Ordering::Release);
            if writable {
                g.storage
                    .set_len(commit_end)
                    .map_err(io_err("truncating a torn tail"))?;
                // Make the cut durable before anything new is appended, so a later power loss
                // cannot resurrect the torn bytes in front of newer records.
                g.storage
                    .sync_data()
                    .map_err(io_err("syncing a truncated torn tail"))?;
                g.recovered_tail = file_len - commit_end;
            }
        }
    }
    Ok(g)
}

/// Writer-side mutable state.
#[derive(Debug, Default)]
struct WriterState {
    since_checkpoint: u64,
    /// The file is zero-filled up to here (0 = not yet), so appends overwrite allocated blocks
    /// and `fdatasync` needs no metadata journal commit.
    prealloc_end: u64,
    buf: Vec<u8>,
    cbuf: Vec<u8>,
}

#[derive(Debug)]
struct Inner {
    path: Option<PathBuf>,
    opts: Options,
    writable: bool,
    owner_pid: u32,
    gen: ArcSwap<Gen>,
    writer: Mutex<WriterState>,
    /// Group commit: (generation, offset synced up to).
    synced: Mutex<(u64, u64)>,
    poison: Mutex<Option<String>>,
    poisoned: AtomicBool,
    compactor: Mutex<Option<JoinHandle<()>>>,
    compacting: AtomicBool,
    closed: AtomicBool,
}

/// An open store. `Send + Sync`: share it between threads by reference or in an `Arc`.
#[derive(Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let writable = !opts.read_only;
        for _attempt in 0..100 {
            if !path.exists() {
                if !opts.create && !opts.truncate {
                    return Err(Error::NotFound { path });
                }
                if opts.read_only {
                    return Err(Error::NotFound { path });
                }
                create_file(&path, &opts)?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(writable)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(io_err(format!("opening {}", path.display())))?;
            // Validate the header before taking the lock, which writes our pid into it.
            {
                use std::os::unix::fs::FileExt;
                let mut hb = [0u8; STATIC_LEN];
                let n = file.read_at(&mut hb, 0).unwrap_or(0);
                let mut n = n;
                while n < STATIC_LEN {
                    match file.read_at(&mut hb[n..], n as u64) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                if let Err(reason) = StaticHeader::decode(&hb[..n]) {
                    return Err(Error::BadHeader { path, reason });
                }
            }
            let lock = if writable {
                Some(WriterLock::acquire(&path, &file)?)
            } else {
                None
            };
            let ident = file_ident(&file);
            if writable && ident != path_ident(&path) {
                // Replaced by a compaction between our open and our lock: try again.
                continue;
            }
            if writable {
                let _ = fs::remove_file(with_suffix(&path, ".compact"));
            }
            let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
            let gen = load_gen(storage, lock, writable, &path, ident)?;
            let store = Store::from_gen(Some(path.clone()), opts.clone(), gen);
            if opts.truncate && store.inner.gen.load().keys.load(Ordering::Relaxed) > 0 {
                store.inner.compact_inner(true)?;
            }
            return Ok(store);
        }
        Err(Error::Locked { path, pid: None })
    }

    /// Opens a store on caller-supplied storage (tests inject faults this way). No locking;
    /// compaction is unsupported.
    pub fn open_storage(storage: Arc<dyn Storage>, opts: Options) -> Result<Store> {
        let len = storage.len().map_err(io_err("reading the length"))?;
        if len == 0 {
            if !opts.create || opts.read_only {
                return Err(Error::NotFound {
                    path: PathBuf::from("<storage>"),
                });
            }
            let h = StaticHeader {
                value_encoding: opts.value_encoding,
                compression: opts.compression,
                generation: 1,
                dict_offset: 0,
            };
            storage
                .write_at(0, &new_file_bytes(&h))
                .map_err(io_err("writing a new header"))?;
        }
        let gen = load_gen(storage, None, !opts.read_only, Path::new("<storage>"), None)?;
        Ok(Store::from_gen(None, opts, gen))
    }

    fn from_gen(path: Option<PathBuf>, opts: Options, gen: Gen) -> Store {
        let generation = gen.header.generation;
        let end = gen.limit();
        Store {
            inner: Arc::new(Inner {
                path,
                writable: !opts.read_only,
                opts,
                owner_pid: std::process::id(),
                gen: ArcSwap::from_pointee(gen),
                writer: Mutex::new(WriterState::default()),
                synced: Mutex::new((generation, end)),
                poison: Mutex::new(None),
                poisoned: AtomicBool::new(false),
                compactor: Mutex::new(None),
                compacting: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.current()?.get(key)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        Ok(self.inner.current()?.contains(key)?.is_some())
    }

    /// Stores `value` under `key`.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.commit(&[(key, Some(value))])
    }

    /// Deletes `key`; returns whether it was present.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.inner.check_writable()?;
        {
            let _w = lock(&self.inner.writer);
            if self.inner.gen.load().contains(key)?.is_none() {
                return Ok(false);
            }
        }
        self.inner.commit(&[(key, None)])?;
        Ok(true)
    }

    /// Commits every operation of `batch` atomically (all or nothing, also across crashes).
    pub fn batch(&self, batch: &Batch) -> Result<()> {
        let ops: Vec<(&[u8], Option<&[u8]>)> = batch
            .ops
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect();
        self.inner.commit(&ops)
    }

    /// Number of live keys.
    pub fn len(&self) -> Result<u64> {
        Ok(self.inner.current()?.keys.load(Ordering::Relaxed))
    }

    /// True if the store holds no keys.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A snapshot iterator over `(key, value)` pairs, in file order (unordered keys).
    pub fn iter(&self) -> Result<Iter> {
        let g = self.inner.current()?.clone();
        let offsets = g.index.load().offsets_in_file_order();
        Ok(Iter {
            gen: g,
            offsets,
            pos: 0,
        })
    }

    /// All keys (snapshot).
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let g = self.inner.current()?.clone();
        let offsets = g.index.load().offsets_in_file_order();
        let limit = g.limit();
        offsets
            .into_iter()
            .map(|off| {
                let (h, body) = read_record(&*g.storage, off, limit)?;
                Ok(body[..h.key_len as usize].to_vec())
            })
            .collect()
    }

    /// Calls `f(key, value)` for every live pair (snapshot, file order), without allocating
    /// per item for uncompressed values.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        let g = self.inner.current()?.clone();
        let offsets = g.index.load().offsets_in_file_order();
        let limit = g.limit();
        // One view of the whole log: zero-copy through the mapping on real files.
        let all = g
            .storage
            .view(0, limit as usize)
            .map_err(io_err("reading the log"))?;
        for off in offsets {
            let rest = all.get(off as usize..).unwrap_or(&[]);
            let h = match parse_header(rest) {
                HeaderParse::Ok(h) if h.total() <= rest.len() as u64 => h,
                _ => return Err(Error::corrupt(off, "indexed record is damaged")),
            };
            let rec = &rest[..h.total() as usize];
            if !verify(&h, rec) {
                return Err(Error::corrupt(off, "record checksum mismatch"));
            }
            let k0 = h.header_len;
            let k1 = k0 + h.key_len as usize;
            if h.flags & F_ZSTD != 0 {
                let v = g.codec.decompress(h.flags, &rec[k1..], off)?;
                f(&rec[k0..k1], &v);
            } else {
                f(&rec[k0..k1], &rec[k1..]);
            }
        }
        Ok(())
    }

    /// Makes every acknowledged write durable (`fdatasync`); concurrent calls share one sync.
    pub fn sync(&self) -> Result<()> {
        self.inner.check_writable()?;
        self.inner.sync()
    }

    /// Rewrites the store without dead records (and, with `ZstdDict`, trains a dictionary).
    /// Readers, in this process and others, stay correct during and after it.
    pub fn compact(&self) -> Result<()> {
        self.inner.check_writable()?;
        self.inner.join_compactor();
        self.inner.compact_inner(false)
    }

    /// Reads the whole log and the index and reports damage.
    pub fn check(&self) -> Result<CheckReport> {
        let g = self.inner.current()?.clone();
        let limit = g.limit();
        let mut report = scan_log(&*g.storage, limit, |_, _, _| Ok(()))?;
        for off in g.index.load().offsets() {
            match read_record(&*g.storage, off, limit) {
                Ok((h, _)) if h.kind == K_PUT => {}
                Ok(_) => report
                    .index_errors
                    .push(format!("index entry at {off} is not a PUT record")),
                Err(e) => report.index_errors.push(e.to_string()),
            }
        }
        Ok(report)
    }

    /// Sizes and counts.
    pub fn stats(&self) -> Result<Stats> {
        Ok(self.inner.current()?.stats())
    }

    /// How the layers above encode values (from the header).
    pub fn value_encoding(&self) -> ValueEncoding {
        self.inner.gen.load().header.value_encoding
    }

    /// The store's compression setting (from the header).
    pub fn compression(&self) -> Compression {
        self.inner.gen.load().header.compression
    }

    /// The path this store was opened at (None for custom storage).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Writes a checkpoint, syncs and releases the writer lock.
    pub fn close(self) -> Result<()> {
        self.inner.close()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.inner.close();
    }
}

/// Scans `[LOG_START, limit)` front to back; calls `f` for every intact record; resyncs after
/// damage.
fn scan_log(
    st: &dyn Storage,
    limit: u64,
    mut f: impl FnMut(u64, &RecHeader, &[u8]) -> Result<()>,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut rd = LogReader::new(st, LOG_START, limit);
    loop {
        let pos = rd.pos;
        match rd.next_record()? {
            Next::End => break,
            Next::Rec(off, h, rec) => {
                report.records += 1;
                f(off, &h, rec)?;
            }
            Next::Bad { offset, reason } => {
                let next = rd.find_intact(offset, false)?;
                let resume = next.unwrap_or(limit);
                report.damage.push(Damage {
                    offset,
                    len: resume - offset,
                    reason: reason.to_string(),
                });
                debug_assert!(resume > pos);
                rd.pos = resume;
            }
        }
    }
    Ok(report)
}

/// Salvages every intact, committed record of the store at `src` into a new store at `dst`
/// (created or truncated; `src` is never modified). `opts` gives the settings of the new store
/// when the source header is unreadable.
pub fn repair(src: impl AsRef<Path>, dst: impl AsRef<Path>, opts: Options) -> Result<RepairReport> {
    let src = src.as_ref();
    let file = File::open(src).map_err(io_err(format!("opening {}", src.display())))?;
    let st = FileStorage::new(file);
    let len = st.len().map_err(io_err("reading the length"))?;
    let mut hb = vec![0u8; LOG_START.min(len) as usize];
    st.read_at(0, &mut hb)
        .map_err(io_err("reading the header"))?;
    let mut report = RepairReport::default();
    let mut new_opts = Options {
        create: true,
        truncate: true,
        read_only: false,
        auto_compact: false,
        ..opts
    };
    match StaticHeader::decode(&hb) {
        Ok(Ok(h)) => {
            new_opts.value_encoding = h.value_encoding;
            new_opts.compression = h.compression;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => report.header_damaged = true,
    }
    let out = Store::open(dst, new_opts)?;
    let mut codec = Codec::new(None, None);
    let mut pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut salvaged = 0u64;
    let mut dropped = 0u64;
    let mut last_end = LOG_START;
    let mut skipping = false;
    let scan = scan_log(&st, len, |off, h, rec| {
        if off != last_end {
            // A damaged region: unless it is known to start at a commit boundary (nothing
            // pending and the damaged record's header says it ended its commit), the records
            // before it and after it up to the next commit end may belong to a damaged batch.
            let mut hb = [0u8; MAX_REC_HEADER];
            let n = (MAX_REC_HEADER as u64).min(len.saturating_sub(last_end)) as usize;
            let standalone = st.read_at(last_end, &mut hb[..n]).is_ok()
                && matches!(parse_header(&hb[..n]), HeaderParse::Ok(dh) if dh.flags & F_CONT == 0);
            if !pending.is_empty() || !standalone {
                dropped += pending.len() as u64;
                pending.clear();
                skipping = true;
            }
        }
        last_end = off + h.total();
        if skipping {
            dropped += 1;
            if h.flags & F_CONT == 0 {
                skipping = false;
            }
            return Ok(());
        }
        let k0 = h.header_len;
        let k1 = k0 + h.key_len as usize;
        match h.kind {
            K_PUT => {
                let v = if h.flags & F_ZSTD != 0 {
                    codec.decompress(h.flags, &rec[k1..], off)?
                } else {
                    rec[k1..].to_vec()
                };
                pending.push((rec[k0..k1].to_vec(), Some(v)));
            }
            K_DELETE => pending.push((rec[k0..k1].to_vec(), None)),
            K_DICT => codec = Codec::new(Some(3), Some(&rec[k0..])),
            _ => {}
        }
        if h.flags & F_CONT == 0 && !pending.is_empty() {
            let b = Batch {
                ops: std::mem::take(&mut pending),
            };
            salvaged += b.len() as u64;
            out.batch(&b)?;
        }
        Ok(())
    })?;
    report.salvaged_records = salvaged;
    report.dropped_partial_records = dropped + pending.len() as u64;
    report.damage = scan.damage;
    report.keys = out.len()?;
    out.close()?;
    Ok(report)
}

/// Iterator returned by [`Store::iter`].
#[derive(Debug)]
pub struct Iter {
    gen: Arc<Gen>,
    offsets: Vec<u64>,
    pos: usize,
}

impl Iterator for Iter {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let off = *self.offsets.get(self.pos)?;
        self.pos += 1;
        Some((|| {
            let (h, mut body) = read_record(&*self.gen.storage, off, self.gen.limit())?;
            let val = body.split_off(h.key_len as usize);
            let val = if h.flags & F_ZSTD != 0 {
                self.gen.codec.decompress(h.flags, &val, off)?
            } else {
                val
            };
            Ok((body, val))
        })())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.offsets.len() - self.pos;
        (n, Some(n))
    }
}

fn create_file(path: &Path, opts: &Options) -> Result<()> {
    let h = StaticHeader {
        value_encoding: opts.value_encoding,
        compression: opts.compression,
        generation: 1,
        dict_offset: 0,
    };
    let tmp = with_suffix(path, &format!(".new-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    std::io::Write::write_all(&mut f, &new_file_bytes(&h))
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    let r = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match r {
        Ok(()) => {
            sync_dir(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

impl Inner {
    fn check_writable(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let pid = std::process::id();
        if pid != self.owner_pid {
            return Err(Error::Forked {
                owner_pid: self.owner_pid,
                pid,
            });
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                reason: lock(&self.poison).clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    fn poison(&self, reason: String) {
        *lock(&self.poison) = Some(reason);
        self.poisoned.store(true, Ordering::Release);
    }

    /// The current generation, after catching up with other processes' commits (readers).
    fn current(&self) -> Result<arc_swap::Guard<Arc<Gen>>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if !self.writable {
            self.refresh()?;
        }
        Ok(self.gen.load())
    }

    fn refresh(&self) -> Result<()> {
        let g = self.gen.load();
        let len = g
            .storage
            .len()
            .map_err(io_err("checking the store's length"))?;
        let superseded = g.superseded.load(Ordering::Acquire);
        if len <= g.limit() && !superseded {
            return Ok(());
        }
        drop(g);
        let _w = lock(&self.writer);
        let g = self.gen.load_full();
        let len = g
            .storage
            .len()
            .map_err(io_err("checking the store's length"))?;
        if len > g.limit() && !zero_at(&*g.storage, g.limit(), len)? {
            // A bad record here is most likely a commit still being written: stop and retry
            // on the next read.
            replay(&g, g.limit(), len)?;
        }
        if g.superseded.load(Ordering::Acquire) {
            if let Some(path) = &self.path {
                let now = path_ident(path);
                if now.is_some() && now != g.ident {
                    let file = File::open(path)
                        .map_err(io_err(format!("reopening {}", path.display())))?;
                    let ident = file_ident(&file);
                    let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
                    let ng = load_gen(storage, None, false, path, ident)?;
                    self.gen.store(Arc::new(ng));
                }
            }
        }
        Ok(())
    }

    fn commit(self: &Arc<Self>, ops: &[(&[u8], Option<&[u8]>)]) -> Result<()> {
        self.check_writable()?;
        if ops.is_empty() {
            return Ok(());
        }
        for (k, v) in ops {
            if k.len() as u64 > MAX_KEY {
                return Err(Error::TooLarge {
                    what: "key",
                    len: k.len() as u64,
                    max: MAX_KEY,
                });
            }
            if let Some(v) = v {
                if v.len() as u64 > MAX_VALUE {
                    return Err(Error::TooLarge {
                        what: "value",
                        len: v.len() as u64,
                        max: MAX_VALUE,
                    });
                }
            }
        }
        let mut w = lock(&self.writer);
        self.check_writable()?;
        let g = self.gen.load_full();
        let start = g.limit();
        let mut buf = std::mem::take(&mut w.buf);
        let mut cbuf = std::mem::take(&mut w.cbuf);
        buf.clear();
        let mut placed: Vec<(u64, RecSizes)> = Vec::with_capacity(ops.len());
        for (i, (k, v)) in ops.iter().enumerate() {
            let cont = if i + 1 < ops.len() { F_CONT } else { 0 };
            let off = start + buf.len() as u64;
            let (kind, flags, val): (u8, u8, &[u8]) = match v {
                None => (K_DELETE, cont, &[]),
                Some(v) => match g.codec.compress(v, &mut cbuf) {
                    Some(f) => (K_PUT, cont | f, cbuf.as_slice()),
                    None => (K_PUT, cont, v),
                },
            };
            let n = encode_record(&mut buf, kind, flags, k, val);
            placed.push((
                off,
                RecSizes {
                    total: n as u64,
                    stored: val.len() as u64,
                    raw: v.map_or(0, |v| v.len() as u64),
                },
            ));
        }
        w.cbuf = cbuf;
        let new_end = start + buf.len() as u64;
        w.buf = buf;
        if new_end > MAX_OFFSET {
            return Err(Error::TooLarge {
                what: "store file",
                len: new_end,
                max: MAX_OFFSET,
            });
        }
        let data = std::mem::take(&mut w.buf);
        let r = self.append(&g, &mut w, &data, "appending to the log");
        w.buf = data;
        r?;
        g.storage.set_stable(new_end);
        g.end.store(new_end, Ordering::Release);
        for ((k, v), (off, sizes)) in ops.iter().zip(placed) {
            if v.is_some() {
                g.apply_put(k, off, sizes)?;
            } else {
                g.apply_delete(k)?;
            }
        }
        w.since_checkpoint += new_end - start;
        if w.since_checkpoint >= self.opts.checkpoint_bytes {
            self.checkpoint(&g, &mut w)?;
        }
        drop(w);
        if self.opts.sync_on_commit {
            self.sync()?;
        }
        self.maybe_compact(&g);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let g = self.gen.load_full();
        let target = g.limit();
        let generation = g.header.generation;
        let mut s = lock(&self.synced);
        if s.0 == generation && s.1 >= target {
            return Ok(());
        }
        // Everything written so far is covered by this fdatasync (group commit).
        let upto = g.limit();
        if let Err(e) = g.storage.sync_data() {
            let err = Error::io("syncing the store (fdatasync)", e);
            self.poison(format!(
                "{err}; writes since the last successful sync may be lost"
            ));
            return Err(err);
        }
        *s = (generation, upto);
        Ok(())
    }

    /// Appends an INDEX record and points the older checkpoint slot at it. Writer lock held.
    fn checkpoint(&self, g: &Gen, w: &mut WriterState) -> Result<()> {
        let start = g.limit();
        let t = g.index.load();
        let mut meta = IndexMeta {
            covers_end: 0,
            keys: g.keys.load(Ordering::Relaxed),
            tombstones: g.tombs.load(Ordering::Relaxed),
            live_bytes: g.live_bytes.load(Ordering::Relaxed),
            raw_value_bytes: g.raw_value_bytes.load(Ordering::Relaxed),
            stored_value_bytes: g.stored_value_bytes.load(Ordering::Relaxed),
            log2_capacity: t.log2(),
        };
        let plen = t.encode(&meta).len();
        meta.covers_end = start + record_len(0, plen) as u64;
        let payload = t.encode(&meta);
        w.buf.clear();
        encode_record(&mut w.buf, K_INDEX, 0, &[], &payload);
        let end = start + w.buf.len() as u64;
        let data = std::mem::take(&mut w.buf);
        let r = self.append(g, w, &data, "writing an index checkpoint");
        w.buf = data;
        r?;
        g.storage.set_stable(end);
        g.end.store(end, Ordering::Release);
        let seq = g.slot_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = Slot {
            seq,
            index_offset: start,
            covers_end: end,
        };
        let at = SLOT_OFFSETS[(seq % 2) as usize];
        g.storage
            .write_at(at, &slot.encode())
            .map_err(io_err("writing a checkpoint slot"))?;
        w.since_checkpoint = 0;
        Ok(())
    }

    /// Writes `data` at the end of the log (zero-filling ahead on real files). On failure the
    /// file is cut back to the old end, or the handle is poisoned if even that fails.
    fn append(&self, g: &Gen, w: &mut WriterState, data: &[u8], what: &str) -> Result<()> {
        static ZEROS: [u8; 1 << 16] = [0u8; 1 << 16];
        let start = g.limit();
        let new_end = start + data.len() as u64;
        if g.storage.file().is_some() && new_end > w.prealloc_end {
            let target = new_end + (new_end / 8).clamp(1 << 20, 64 << 20);
            let mut at = w.prealloc_end.max(start);
            while at < target {
                let n = ((target - at) as usize).min(ZEROS.len());
                if g.storage.write_at(at, &ZEROS[..n]).is_err() {
                    break;
                }
                at += n as u64;
            }
            w.prealloc_end = at;
        }
        if let Err(e) = g.storage.write_at(start, data) {
            let err = Error::io(what, e);
            w.prealloc_end = start;
            match g.storage.set_len(start) {
                Err(e2) => self.poison(format!(
                    "a failed append ({err}) could not be rolled back: {e2}"
                )),
                // Best effort: make the rollback durable (see the torn-tail truncation).
                Ok(()) => drop(g.storage.sync_data()),
            }
            return Err(err);
        }
        Ok(())
    }

    fn maybe_compact(self: &Arc<Self>, g: &Gen) {
        if !self.opts.auto_compact || self.path.is_none() {
            return;
        }
        let s = g.stats();
        let total = s.file_bytes.saturating_sub(LOG_START);
        if total < self.opts.compact_min_bytes
            || (s.dead_bytes as f64) < self.opts.compact_ratio * total as f64
        {
            return;
        }
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        let h = std::thread::Builder::new()
            .name("cellar-compact".into())
            .spawn(move || {
                let _ = me.compact_inner(false);
                me.compacting.store(false, Ordering::Release);
            });
        match h {
            Ok(h) => {
                let old = lock(&self.compactor).replace(h);
                if let Some(old) = old {
                    let _ = old.join();
                }
            }
            Err(_) => self.compacting.store(false, Ordering::Release),
        }
    }

    fn join_compactor(&self) {
        let h = lock(&self.compactor).take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// Compaction (or, with `empty`, replacement by an empty store). See the format doc,
    /// section 7.
    fn compact_inner(&self, empty: bool) -> Result<()> {
        let path = match &self.path {
            Some(p) => p.clone(),
            None => return Err(Error::Unsupported("compaction of custom storage")),
        };
        self.check_writable()?;
        let tmp = with_suffix(&path, ".compact");
        let _ = fs::remove_file(&tmp);
        // Phase 1: snapshot without blocking writers.
        let (g0, e0, mut offsets) = {
            let _w = lock(&self.writer);
            let g = self.gen.load_full();
            let e0 = g.limit();
            let offs = if empty {
                Vec::new()
            } else {
                g.index.load().offsets()
            };
            (g, e0, offs)
        };
        crate::index::radix_sort(&mut offsets);
        let mut hold = if empty {
            Some(lock(&self.writer))
        } else {
            None
        };
        // Dictionary training.
        let train = matches!(g0.header.compression, Compression::ZstdDict { .. }) && !empty;
        let mut dict = None;
        if train {
            let mut samples = Vec::new();
            let mut total = 0usize;
            let step = (offsets.len() / 4000).max(1);
            for &off in offsets.iter().step_by(step) {
                if total > (4 << 20) {
                    break;
                }
                if let Ok(v) = g0.read_value(off) {
                    total += v.len();
                    samples.push(v);
                }
            }
            dict = codec::train(&samples);
        }
        let header = StaticHeader {
            value_encoding: g0.header.value_encoding,
            compression: g0.header.compression,
            generation: g0.header.generation + 1,
            dict_offset: if dict.is_some() { LOG_START } else { 0 },
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io_err(format!("creating {}", tmp.display())))?;
        // The compacted file replaces the original: it keeps the original's permission bits.
        if let Ok(meta) = fs::metadata(&path) {
            file.set_permissions(meta.permissions())
                .map_err(io_err(format!("setting the mode of {}", tmp.display())))?;
        }
        let nlock = WriterLock::acquire_file(&tmp, &file)?;
        let ident = file_ident(&file);
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(file));
        let result = (|| -> Result<Gen> {
            let mut head = new_file_bytes(&header);
            head[PID_OFFSET as usize..PID_OFFSET as usize + 4]
                .copy_from_slice(&std::process::id().to_le_bytes());
            if let Some(d) = &dict {
                encode_record(&mut head, K_DICT, 0, &[], d);
            }
            storage
                .write_at(0, &head)
                .map_err(io_err("writing the compacted file"))?;
            let codec = Codec::new(header.compression.level(), dict.as_deref());
            let ng = Gen {
                storage: Arc::clone(&storage),
                _lock: Some(nlock),
                header,
                codec,
                index: ArcSwap::from_pointee(Table::for_keys(offsets.len() as u64)),
                end: AtomicU64::new(head.len() as u64),
                keys: AtomicU64::new(0),
                tombs: AtomicU64::new(0),
                live_bytes: AtomicU64::new(0),
                raw_value_bytes: AtomicU64::new(0),
                stored_value_bytes: AtomicU64::new(0),
                superseded: AtomicBool::new(false),
                ident,
                recovered_tail: 0,
                slot_seq: AtomicU64::new(0),
            };
            let mut out = Vec::with_capacity(1 << 20);
            let mut cbuf = Vec::new();
            let copy = |ng: &Gen,
                        out: &mut Vec<u8>,
                        cbuf: &mut Vec<u8>,
                        key: &[u8],
                        val: &[u8]|
             -> Result<()> {
                let start = ng.limit() + out.len() as u64;
                let (flags, v): (u8, &[u8]) = match ng.codec.compress(val, cbuf) {
                    Some(f) => (f, cbuf.as_slice()),
                    None => (0, val),
                };
                let n = encode_record(out, K_PUT, flags, key, v);
                let sizes = RecSizes {
                    total: n as u64,
                    stored: v.len() as u64,
                    raw: val.len() as u64,
                };
                // Key is new in this file (snapshot keys are unique); index it after flushing.
                pending_puts_push(ng, key, start, sizes)
            };
            fn pending_puts_push(ng: &Gen, key: &[u8], off: u64, sizes: RecSizes) -> Result<()> {
                let t = ng.index.load();
                let hash = hash_key(key);
                t.insert_fresh(hash, off);
                ng.keys.fetch_add(1, Ordering::Relaxed);
                ng.live_bytes.fetch_add(sizes.total, Ordering::Relaxed);
                ng.raw_value_bytes.fetch_add(sizes.raw, Ordering::Relaxed);
                ng.stored_value_bytes
                    .fetch_add(sizes.stored, Ordering::Relaxed);
                Ok(())
            }
            let flush = |ng: &Gen, out: &mut Vec<u8>| -> Result<()> {
                let start = ng.limit();
                ng.storage
                    .write_at(start, out)
                    .map_err(io_err("writing the compacted file"))?;
                let end = start + out.len() as u64;
                ng.storage.set_stable(end);
                ng.end.store(end, Ordering::Release);
                out.clear();
                Ok(())
            };
            for &off in &offsets {
                let (h, body) = read_record(&*g0.storage, off, e0)?;
                let key = &body[..h.key_len as usize];
                let raw;
                let val: &[u8] = if h.flags & F_ZSTD != 0 {
                    raw = g0
                        .codec
                        .decompress(h.flags, &body[h.key_len as usize..], off)?;
                    &raw
                } else {
                    &body[h.key_len as usize..]
                };
                copy(&ng, &mut out, &mut cbuf, key, val)?;
                if out.len() >= 1 << 20 {
                    flush(&ng, &mut out)?;
                }
            }
            flush(&ng, &mut out)?;
            Ok(ng)
        })();
        let ng = match result {
            Ok(ng) => ng,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // Phase 2: catch up under the writer lock, checkpoint, switch.
        let mut w = match hold.take() {
            Some(w) => w,
            None => lock(&self.writer),
        };
        let finish = (|| -> Result<()> {
            self.check_writable()?;
            let e1 = g0.limit();
            if !empty && e1 > e0 {
                let mut rd = LogReader::new(&*g0.storage, e0, e1);
                let mut out = Vec::new();
                let mut cbuf = Vec::new();
                loop {
                    match rd.next_record()? {
                        Next::End => break,
                        Next::Bad { offset, reason } => return Err(Error::corrupt(offset, reason)),
                        Next::Rec(off, h, rec) => {
                            let k0 = h.header_len;
                            let key = rec[k0..k0 + h.key_len as usize].to_vec();
                            match h.kind {
                                K_PUT => {
                                    let vb = &rec[k0 + h.key_len as usize..];
                                    let val = if h.flags & F_ZSTD != 0 {
                                        g0.codec.decompress(h.flags, vb, off)?
                                    } else {
                                        vb.to_vec()
                                    };
                                    // Flush so replaced records are readable for accounting.
                                    let start = ng.limit();
                                    out.clear();
                                    let (flags, v): (u8, &[u8]) =
                                        match ng.codec.compress(&val, &mut cbuf) {
                                            Some(f) => (f, cbuf.as_slice()),
                                            None => (0, &val),
                                        };
                                    let n = encode_record(&mut out, K_PUT, flags, &key, v);
                                    let sizes = RecSizes {
                                        total: n as u64,
                                        stored: v.len() as u64,
                                        raw: val.len() as u64,
                                    };
                                    ng.storage
                                        .write_at(start, &out)
                                        .map_err(io_err("writing the compacted file"))?;
                                    ng.storage.set_stable(start + n as u64);
                                    ng.end.store(start + n as u64, Ordering::Release);
                                    ng.apply_put(&key, start, sizes)?;
                                }
                                K_DELETE => {
                                    ng.apply_delete(&key)?;
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            self.checkpoint(&ng, &mut w)?;
            ng.storage
                .sync_data()
                .map_err(io_err("syncing the compacted file"))?;
            // Tell readers of the old file, then switch the path over.
            let mut marker = Vec::new();
            encode_record(
                &mut marker,
                K_SUPERSEDED,
                0,
                &[],
                &ng.header.generation.to_le_bytes(),
            );
            let old_end = g0.limit();
            g0.storage
                .write_at(old_end, &marker)
                .map_err(io_err("marking the old file superseded"))?;
            g0.end
                .store(old_end + marker.len() as u64, Ordering::Release);
            fs::rename(&tmp, &path).map_err(io_err(format!(
                "renaming {} over {}",
                tmp.display(),
                path.display()
            )))?;
            sync_dir(&path);
            Ok(())
        })();
        if let Err(e) = finish {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let generation = ng.header.generation;
        let end = ng.limit();
        self.gen.store(Arc::new(ng));
        *lock(&self.synced) = (generation, end);
        w.since_checkpoint = 0;
        w.prealloc_end = 0;
        Ok(())
    }

    fn close(&self) -> Result<()> {
        if self.writable && std::process::id() == self.owner_pid {
            self.join_compactor();
        }
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if !self.writable || std::process::id() != self.owner_pid {
            return Ok(());
        }
        self.join_compactor();
        if self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        let g = self.gen.load_full();
        let mut w = lock(&self.writer);
        if w.since_checkpoint > 0 || g.limit() > LOG_START && !has_checkpoint(&g) {
            self.checkpoint(&g, &mut w)?;
        }
        if w.prealloc_end > g.limit() {
            g.storage
                .set_len(g.limit())
                .map_err(io_err("trimming the preallocated tail on close"))?;
            w.prealloc_end = 0;
        }
        drop(w);
        g.storage
            .sync_data()
            .map_err(io_err("syncing the store on close"))?;
        Ok(())
    }
}

fn has_checkpoint(g: &Gen) -> bool {
    g.slot_seq.load(Ordering::Relaxed) > 0
}

/// True if the byte where the next record's kind would be is zero (preallocated space: no new
/// record yet).
fn zero_at(st: &dyn Storage, off: u64, len: u64) -> Result<bool> {
    if off + 5 > len {
        return Ok(false);
    }
    let mut b = [0u8; 1];
    st.read_at(off + 4, &mut b)
        .map_err(io_err("peeking at the log tail"))?;
    Ok(b[0] == 0)
}
