//! A read-only reader for GNU dbm (GDBM) files, as `dbm.gnu` and gdbm_compat's ndbm write them.
//!
//! Layout (all integers in the byte order of the machine that wrote the file, recognised from
//! the magic; "off" is 8 bytes in files with 64-bit offsets, 4 in 32-bit ones):
//!
//! ```text
//! file header, offset 0
//!   0  i32 magic        0x13579acd (32-bit off), 0x13579acf (64-bit off), 0x13579ace (original),
//!                       0x13579ad0 / 0x13579ad1 (numsync, 32 / 64-bit off)
//!   4  i32 block_size
//!   8  off dir          file offset of the hash directory
//!   .  i32 dir_size     bytes of the directory
//!   .  i32 dir_bits     the directory has 2^dir_bits entries
//!   .  i32 bucket_size  bytes of one bucket
//!   .  i32 bucket_elems slots per bucket
//!   .  off next_block   end of the allocated area
//!   (numsync: an extended header {version, numsync, pad[6]}), then the avail list (ignored)
//! directory: 2^dir_bits offsets of buckets (a bucket appears in 2^(dir_bits-bucket_bits)
//!   consecutive entries)
//! bucket: av_count, 6 avail elements (ignored), bucket_bits, count, then bucket_elems slots:
//!   i32 hash_value (-1 = empty), 4 bytes key_start, off data_pointer, i32 key_size,
//!   i32 data_size. The record at data_pointer is the key bytes then the value bytes.
//! ```
//!
//! A key's 31-bit hash picks the directory entry (its top `dir_bits` bits) and the home slot
//! (hash % bucket_elems), probed linearly. GDBM has no bucket overflow chains: a full bucket is
//! split and the directory doubled. The avail lists (free space) are never read. Details, and
//! what is refused, are in `docs/legacy-formats.md`.

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::{ByteOrder, Source};
use crate::Report;

const FORMAT: &str = "GDBM";

const OMAGIC: u32 = 0x13579ace;
const MAGIC32: u32 = 0x13579acd;
const MAGIC64: u32 = 0x13579acf;
const NUMSYNC32: u32 = 0x13579ad0;
const NUMSYNC64: u32 = 0x13579ad1;
const MAGICS: [u32; 5] = [OMAGIC, MAGIC32, MAGIC64, NUMSYNC32, NUMSYNC64];

/// GDBM's 31-bit hash of a key. `signed_char` reproduces C compilers where `char` is signed
/// (x86: bytes >= 0x80 count as negative), the other form machines where it is unsigned (ARM,
/// POWER): the file records whichever the writer used, so lookups try both.
pub fn gdbm_hash(key: &[u8], signed_char: bool) -> u32 {
    let mut value: u32 = 0x238F_13AFu32.wrapping_mul(key.len() as u32);
    for (index, &b) in key.iter().enumerate() {
        let c: u32 = if signed_char {
            b as i8 as i32 as u32
        } else {
            b as u32
        };
        let shift = (index * 5 % 24) as u32;
        value = value.wrapping_add(c.wrapping_shl(shift)) & 0x7FFF_FFFF;
    }
    (1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)) & 0x7FFF_FFFF
}

/// Whether the magic says the file tells numsync (extended header) and its offset width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Magic {
    value: u32,
    numsync: bool,
    /// `None` for the original magic, whose offset width the header fields settle.
    off_size: Option<usize>,
}

fn magic_of(v: u32) -> Option<Magic> {
    Some(match v {
        OMAGIC => Magic {
            value: v,
            numsync: false,
            off_size: None,
        },
        MAGIC32 => Magic {
            value: v,
            numsync: false,
            off_size: Some(4),
        },
        MAGIC64 => Magic {
            value: v,
            numsync: false,
            off_size: Some(8),
        },
        NUMSYNC32 => Magic {
            value: v,
            numsync: true,
            off_size: Some(4),
        },
        NUMSYNC64 => Magic {
            value: v,
            numsync: true,
            off_size: Some(8),
        },
        _ => return None,
    })
}

/// Whether the header fields read with `off_size`-byte offsets describe a directory inside the
/// file.
fn plausible(head: &[u8], order: ByteOrder, off_size: usize, flen: u64) -> bool {
    if head.len() < 40 {
        return off_size == 4;
    }
    let dir = if off_size == 8 {
        order.u64(head, 8)
    } else {
        order.u32(head, 8) as u64
    };
    let p = 8 + off_size;
    let dir_size = order.i32(head, p);
    let dir_bits = order.i32(head, p + 4);
    (0..=31).contains(&dir_bits)
        && dir_size >= 0
        && (dir_size as u64) >= (1u64 << dir_bits) * off_size as u64
        && dir.checked_add(dir_size as u64).is_some_and(|e| e <= flen)
}

/// One occupied bucket slot.
#[derive(Debug, Clone, Copy)]
struct Elem {
    hash: u32,
    key_start: [u8; 4],
    ptr: u64,
    key_size: u64,
    data_size: u64,
}

/// An open GDBM file (read-only). Cheap to share between threads (`&self` everywhere).
#[derive(Debug)]
pub struct Gdbm {
    src: Source,
    order: ByteOrder,
    magic: Magic,
    off_size: usize,
    elem_size: usize,
    /// Offset of the slot table inside a bucket (112 on LP64 machines, 84 on i386 with 64-bit
    /// offsets, 60 with 32-bit offsets).
    table_off: usize,
    block_size: u32,
    bucket_size: u64,
    bucket_elems: usize,
    dir_bits: u32,
    dir: Vec<u64>,
    numsync: Option<u32>,
}

/// A description of a GDBM file's variant, from [`Gdbm::describe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GdbmInfo {
    /// The header magic as written (in the file's byte order).
    pub magic: u32,
    /// Byte order of the file.
    pub byte_order: ByteOrder,
    /// Width of file offsets, 32 or 64.
    pub offset_bits: u32,
    /// The numsync counter of an extended (numsync) file.
    pub numsync: Option<u32>,
    /// Block size recorded in the header.
    pub block_size: u32,
    /// Directory entries (2^dir_bits).
    pub dir_entries: usize,
    /// Slots per bucket.
    pub bucket_elems: usize,
}

impl Gdbm {
    /// Opens the GDBM file at `path` (the file itself; for a gdbm_compat ndbm pair, `NAME.pag`).
    pub fn open(path: impl AsRef<Path>) -> Result<Gdbm> {
        Gdbm::open_with_limit(path, crate::IN_MEMORY_LIMIT)
    }

    /// [`Gdbm::open`], reading the file into memory only if it has at most `in_memory_limit`
    /// bytes (else positioned reads, one per bucket or record).
    pub fn open_with_limit(path: impl AsRef<Path>, in_memory_limit: u64) -> Result<Gdbm> {
        Gdbm::from_source(Source::open(path.as_ref(), in_memory_limit)?)
    }

    /// Reads a GDBM file held in memory.
    pub fn from_bytes(data: Vec<u8>) -> Result<Gdbm> {
        Gdbm::from_source(Source::Mem(data))
    }

    /// Whether `head` (the first bytes of a file) starts with a GDBM magic in either byte order.
    pub fn sniff(head: &[u8]) -> bool {
        if head.len() < 4 {
            return false;
        }
        let le = ByteOrder::Little.u32(head, 0);
        let be = ByteOrder::Big.u32(head, 0);
        MAGICS.contains(&le) || MAGICS.contains(&be)
    }

    fn from_source(src: Source) -> Result<Gdbm> {
        let flen = src.len();
        if flen < 4 {
            return Err(Error::NotRecognised {
                format: FORMAT,
                detail: format!("the file has {flen} bytes, too few for a header"),
            });
        }
        let head = src
            .read(FORMAT, 0, flen.min(72), "file header")?
            .into_owned();
        let le = ByteOrder::Little.u32(&head, 0);
        let be = ByteOrder::Big.u32(&head, 0);
        let (order, magic) = if let Some(m) = magic_of(le) {
            (ByteOrder::Little, m)
        } else if let Some(m) = magic_of(be) {
            (ByteOrder::Big, m)
        } else {
            return Err(Error::NotRecognised {
                format: FORMAT,
                detail: format!(
                    "magic {:02x} {:02x} {:02x} {:02x} is not a GDBM magic",
                    head[0], head[1], head[2], head[3]
                ),
            });
        };
        match magic.off_size {
            Some(w) => Gdbm::with_layout(src, &head, order, magic, w),
            // The original magic does not say the offset width: take the one whose header is
            // consistent, 64-bit first (what every 64-bit build wrote).
            None => {
                let w = if plausible(&head, order, 8, flen) {
                    8
                } else {
                    4
                };
                Gdbm::with_layout(src, &head, order, magic, w)
            }
        }
    }

    fn with_layout(
        src: Source,
        head: &[u8],
        order: ByteOrder,
        magic: Magic,
        off_size: usize,
    ) -> Result<Gdbm> {
        let flen = src.len();
        let hdr_len = if off_size == 8 { 40 } else { 32 };
        let ext_len = if magic.numsync { 32 } else { 0 };
        if (head.len()) < hdr_len + ext_len {
            return Err(Error::corrupt(
                FORMAT,
                0,
                format!(
                    "the file has {flen} bytes, too few for a {}-byte header",
                    hdr_len + ext_len
                ),
            ));
        }
        let off = |at: usize| -> u64 {
            if off_size == 8 {
                order.u64(head, at)
            } else {
                order.u32(head, at) as u64
            }
        };
        let block_size = order.i32(head, 4);
        let dir = off(8);
        let p = 8 + off_size;
        let dir_size = order.i32(head, p);
        let dir_bits = order.i32(head, p + 4);
        let bucket_size = order.i32(head, p + 8);
        let bucket_elems = order.i32(head, p + 12);
        let bad = |detail: String| Err(Error::corrupt(FORMAT, 0, detail));
        if block_size <= 0 {
            return bad(format!("header block_size {block_size} is not positive"));
        }
        if !(0..=31).contains(&dir_bits) {
            return bad(format!("header dir_bits {dir_bits} is outside 0..=31"));
        }
        let entries = 1usize << dir_bits;
        if dir_size < 0 || (dir_size as u64) < (entries as u64) * off_size as u64 {
            return bad(format!(
                "header dir_size {dir_size} is too small for 2^{dir_bits} directory entries"
            ));
        }
        if bucket_size <= 0 || bucket_elems <= 0 {
            return bad(format!(
                "header bucket_size {bucket_size} / bucket_elems {bucket_elems} not positive"
            ));
        }
        let elem_size = if off_size == 8 { 24 } else { 20 };
        let bs = bucket_size as usize;
        let elems = bucket_elems as usize;
        let candidates: &[usize] = if off_size == 8 { &[112, 84] } else { &[60] };
        // gdbm sets bucket_elems = (bucket_size - sizeof(hash_bucket)) / sizeof(element) + 1;
        // the machine's struct layout that satisfies this is the writer's.
        let exact = candidates
            .iter()
            .copied()
            .find(|&c| bs >= c + elem_size && (bs - c - elem_size) / elem_size + 1 == elems);
        let table_off = match exact.or_else(|| {
            candidates
                .iter()
                .copied()
                .find(|&c| c + elems * elem_size <= bs)
        }) {
            Some(t) => t,
            None => {
                return bad(format!(
                    "header bucket_size {bucket_size} cannot hold {bucket_elems} slots"
                ))
            }
        };
        let dir_bytes = src.read(FORMAT, dir, (entries * off_size) as u64, "hash directory")?;
        let dir_vec: Vec<u64> = (0..entries)
            .map(|i| {
                if off_size == 8 {
                    order.u64(&dir_bytes, i * 8)
                } else {
                    order.u32(&dir_bytes, i * 4) as u64
                }
            })
            .collect();
        drop(dir_bytes);
        let numsync = if magic.numsync {
            Some(order.u32(head, hdr_len + 4))
        } else {
            None
        };
        Ok(Gdbm {
            src,
            order,
            magic,
            off_size,
            elem_size,
            table_off,
            block_size: block_size as u32,
            bucket_size: bucket_size as u64,
            bucket_elems: elems,
            dir_bits: dir_bits as u32,
            dir: dir_vec,
            numsync,
        })
    }

    /// The file's variant.
    pub fn describe(&self) -> GdbmInfo {
        GdbmInfo {
            magic: self.magic.value,
            byte_order: self.order,
            offset_bits: self.off_size as u32 * 8,
            numsync: self.numsync,
            block_size: self.block_size,
            dir_entries: self.dir.len(),
            bucket_elems: self.bucket_elems,
        }
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.src.len()
    }

    /// The occupied slots of the bucket at `addr`, in slot order.
    fn bucket(&self, addr: u64) -> Result<Vec<Elem>> {
        let raw = self.src.read(FORMAT, addr, self.bucket_size, "bucket")?;
        let o = self.order;
        let t = self.table_off;
        let bits = o.i32(&raw, t - 8);
        let count = o.i32(&raw, t - 4);
        if bits < 0 || bits as u32 > self.dir_bits {
            return Err(Error::corrupt(
                FORMAT,
                addr,
                format!(
                    "bucket_bits {bits} outside 0..={} (dir_bits)",
                    self.dir_bits
                ),
            ));
        }
        if count < 0 || count as usize > self.bucket_elems {
            return Err(Error::corrupt(
                FORMAT,
                addr,
                format!("bucket count {count} outside 0..={}", self.bucket_elems),
            ));
        }
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..self.bucket_elems {
            let e = t + i * self.elem_size;
            let hash = o.i32(&raw, e);
            if hash == -1 {
                continue;
            }
            let at = addr + e as u64;
            if hash < 0 {
                return Err(Error::corrupt(
                    FORMAT,
                    at,
                    format!("slot {i} has hash value {hash}, not 31 bits"),
                ));
            }
            let ptr = if self.off_size == 8 {
                o.u64(&raw, e + 8)
            } else {
                o.u32(&raw, e + 8) as u64
            };
            let ks = o.i32(&raw, e + 8 + self.off_size);
            let ds = o.i32(&raw, e + 12 + self.off_size);
            if ks < 0 || ds < 0 {
                return Err(Error::corrupt(
                    FORMAT,
                    at,
                    format!("slot {i} has a negative size (key {ks}, value {ds})"),
                ));
            }
            out.push(Elem {
                hash: hash as u32,
                key_start: [raw[e + 4], raw[e + 5], raw[e + 6], raw[e + 7]],
                ptr,
                key_size: ks as u64,
                data_size: ds as u64,
            });
        }
        if out.len() != count as usize {
            return Err(Error::corrupt(
                FORMAT,
                addr,
                format!(
                    "bucket says it holds {count} entries but {} slots are used",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    fn record(&self, e: &Elem) -> Result<std::borrow::Cow<'_, [u8]>> {
        let total = e.key_size.saturating_add(e.data_size);
        let rec = self.src.read(FORMAT, e.ptr, total, "key/value record")?;
        let n = (e.key_size as usize).min(4);
        if rec[..n] != e.key_start[..n] {
            return Err(Error::corrupt(
                FORMAT,
                e.ptr,
                "the record's key does not start with the bytes its bucket slot records",
            ));
        }
        Ok(rec)
    }

    /// Bucket addresses in directory order, each once.
    fn bucket_addrs(&self) -> Vec<u64> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for &a in &self.dir {
            if seen.insert(a) {
                out.push(a);
            }
        }
        out
    }

    /// Calls `f` with every `(key, value)` pair, in gdbm's `firstkey`/`nextkey` order; stops at
    /// the first error (of the file or of `f`).
    pub fn try_for_each<E: From<Error>>(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for addr in self.bucket_addrs() {
            for e in self.bucket(addr)? {
                let rec = self.record(&e)?;
                let k = e.key_size as usize;
                f(&rec[..k], &rec[k..])?;
            }
        }
        Ok(())
    }

    /// Every pair, as an iterator of owned pairs (reads one bucket at a time).
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            db: self,
            addrs: self.bucket_addrs().into_iter(),
            elems: Vec::new().into_iter(),
            failed: false,
        }
    }

    /// Every key, in iteration order.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for addr in self.bucket_addrs() {
            for e in self.bucket(addr)? {
                let key = self
                    .src
                    .read(FORMAT, e.ptr, e.key_size, "key")?
                    .into_owned();
                out.push(key);
            }
        }
        Ok(out)
    }

    /// Number of keys (counts bucket slots; reads no records).
    pub fn len(&self) -> Result<usize> {
        let mut n = 0;
        for addr in self.bucket_addrs() {
            n += self.bucket(addr)?.len();
        }
        Ok(n)
    }

    /// True when the file holds no keys.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let h = gdbm_hash(key, true);
        if let Some(v) = self.lookup(key, h)? {
            return Ok(Some(v));
        }
        let h2 = gdbm_hash(key, false);
        if h2 != h {
            return self.lookup(key, h2);
        }
        Ok(None)
    }

    fn lookup(&self, key: &[u8], hash: u32) -> Result<Option<Vec<u8>>> {
        let idx = if self.dir_bits == 0 {
            0
        } else {
            (hash >> (31 - self.dir_bits)) as usize
        };
        let Some(&addr) = self.dir.get(idx) else {
            return Ok(None);
        };
        let raw = self.src.read(FORMAT, addr, self.bucket_size, "bucket")?;
        let o = self.order;
        let n = self.bucket_elems;
        let home = hash as usize % n;
        for step in 0..n {
            let slot = (home + step) % n;
            let e = self.table_off + slot * self.elem_size;
            let h = o.i32(&raw, e);
            if h == -1 {
                return Ok(None);
            }
            let ks = o.i32(&raw, e + 8 + self.off_size);
            if h as u32 != hash || ks < 0 || ks as usize != key.len() {
                continue;
            }
            let m = key.len().min(4);
            if raw[e + 4..e + 4 + m] != key[..m] {
                continue;
            }
            let ptr = if self.off_size == 8 {
                o.u64(&raw, e + 8)
            } else {
                o.u32(&raw, e + 8) as u64
            };
            let ds = o.i32(&raw, e + 12 + self.off_size);
            if ds < 0 {
                return Err(Error::corrupt(
                    FORMAT,
                    addr + e as u64,
                    format!("slot {slot} has a negative value size {ds}"),
                ));
            }
            let rec = self
                .src
                .read(FORMAT, ptr, ks as u64 + ds as u64, "key/value record")?;
            if &rec[..key.len()] == key {
                return Ok(Some(rec[key.len()..].to_vec()));
            }
        }
        Ok(None)
    }

    /// Reads everything it can, noting each damaged bucket or record instead of stopping.
    pub fn check(&self) -> Report {
        self.salvage(&mut |_, _| {})
    }

    /// Calls `f` with every pair that can be read, skipping damaged buckets and records, and
    /// reports what was skipped (what `cellar repair` copies out of a damaged file).
    pub fn salvage(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Report {
        let mut r = Report::default();
        let addrs = self.bucket_addrs();
        for addr in addrs {
            match self.bucket(addr) {
                Ok(elems) => {
                    for e in elems {
                        let idx = if self.dir_bits == 0 {
                            0
                        } else {
                            (e.hash >> (31 - self.dir_bits)) as usize
                        };
                        if self.dir.get(idx) != Some(&addr) {
                            r.problems.push(format!(
                                "damaged {FORMAT} file at offset {addr}: a slot's hash \
                                 {:#x} belongs to another bucket (lookups cannot find it)",
                                e.hash
                            ));
                        }
                        match self.record(&e) {
                            Ok(rec) => {
                                let k = e.key_size as usize;
                                f(&rec[..k], &rec[k..]);
                                r.readable += 1;
                            }
                            Err(err) => r.problems.push(err.to_string()),
                        }
                    }
                }
                Err(err) => r.problems.push(err.to_string()),
            }
        }
        r
    }
}

/// Iterator over a GDBM file's pairs ([`Gdbm::iter`]); yields an error once, then ends.
#[derive(Debug)]
pub struct Iter<'a> {
    db: &'a Gdbm,
    addrs: std::vec::IntoIter<u64>,
    elems: std::vec::IntoIter<Elem>,
    failed: bool,
}

impl Iterator for Iter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(e) = self.elems.next() {
                return Some(match self.db.record(&e) {
                    Ok(rec) => {
                        let k = e.key_size as usize;
                        Ok((rec[..k].to_vec(), rec[k..].to_vec()))
                    }
                    Err(err) => {
                        self.failed = true;
                        Err(err)
                    }
                });
            }
            let addr = self.addrs.next()?;
            match self.db.bucket(addr) {
                Ok(v) => self.elems = v.into_iter(),
                Err(err) => {
                    self.failed = true;
                    return Some(Err(err));
                }
            }
        }
    }
}
