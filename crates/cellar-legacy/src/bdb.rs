//! A read-only reader for Berkeley DB hash files, as `dbm.ndbm` writes them when Python's `_dbm`
//! is built on Berkeley DB (Debian: libdb 5.3, `NAME.db`).
//!
//! Layout (every integer in the byte order of the machine that created the file, recognised
//! from the magic; key and value bytes are never swapped):
//!
//! ```text
//! page 0: hash metadata
//!   12 u32 magic 0x00061561      16 u32 version (7-10)       20 u32 page size
//!   24 u8  encryption algorithm  25 u8 page type (8)         26 u8 metadata flags
//!   32 u32 last page number      36 u32 partitions           48 u32 flags
//!   72 u32 max_bucket            76 u32 high_mask            80 u32 low_mask
//!   92 u32 hash of "%$sniglet^&\0" 96 u32 spares[32]
//! other pages: a 26-byte header
//!   8 u32 pgno  12 u32 prev  16 u32 next  20 u16 entries  22 u16 hf_offset  25 u8 type
//! hash pages (type 13, or 2 before 4.6): `entries` u16 item offsets from byte 26, alternately
//!   key and value; item i spans [offset[i], offset[i-1]) (item 0 ends at the page end). Its
//!   first byte is its type: 1 = bytes follow, 3 = off-page item {pgno u32 at +4, length u32
//!   at +8}, 2/4 = duplicates (never written by ndbm: refused).
//! overflow pages (type 7): hf_offset bytes of data from byte 26, chained by `next`.
//! ```
//!
//! Bucket b's first page is `b + spares[ceil(log2(b + 1))]`; further pages of the bucket
//! follow `next`. A key's bucket is `hash & high_mask`, or `hash & low_mask` when that exceeds
//! `max_bucket`, with Berkeley DB's default hash (FNV-1 with basis 0). Berkeley DB 1.85 hash
//! files (macOS / BSD ndbm: the magic at offset 0) are another format, read by
//! [`crate::bdb185`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::{ByteOrder, Source};
use crate::Report;

const FORMAT: &str = "Berkeley DB hash";
/// The hash access method's magic number.
pub const HASH_MAGIC: u32 = 0x0006_1561;
const P_HASH_UNSORTED: u8 = 2;
const P_OVERFLOW: u8 = 7;
const P_HASHMETA: u8 = 8;
const P_HASH: u8 = 13;
const H_KEYDATA: u8 = 1;
const H_DUPLICATE: u8 = 2;
const H_OFFPAGE: u8 = 3;
const H_OFFDUP: u8 = 4;
const PAGE_HDR: usize = 26;
/// Berkeley DB hashes `sizeof(CHARKEY)` bytes: the terminating NUL included.
const CHARKEY: &[u8] = b"%$sniglet^&\0";

/// Which Berkeley DB hash format [`Bdb::sniff`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Berkeley DB 2.x-6.x (metadata page; magic at offset 12).
    Modern,
    /// Berkeley DB 1.85/1.86 (magic at offset 0): macOS and BSD ndbm, read by
    /// [`crate::bdb185::Bdb185`].
    V185,
}

/// Berkeley DB's default hash function (`__ham_func5`: FNV-1, 32 bits, basis 0).
pub fn bdb_hash(key: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &b in key {
        h = h.wrapping_mul(16_777_619);
        h ^= b as u32;
    }
    h
}

/// ceil(log2(n)) as Berkeley DB's `__db_log2` computes it.
fn log2_ceil(n: u64) -> usize {
    let mut i = 0;
    let mut limit: u64 = 1;
    while limit < n {
        limit <<= 1;
        i += 1;
    }
    i
}

/// A description of a Berkeley DB hash file, from [`Bdb::describe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdbInfo {
    /// Hash format version from the metadata page.
    pub version: u32,
    /// Page size in bytes.
    pub page_size: u32,
    /// Byte order of the file.
    pub byte_order: ByteOrder,
    /// Number of buckets (max_bucket + 1).
    pub buckets: u64,
}

/// An open Berkeley DB hash file (read-only).
#[derive(Debug)]
pub struct Bdb {
    src: Source,
    order: ByteOrder,
    version: u32,
    page_size: u64,
    pages: u64,
    max_bucket: u32,
    high_mask: u32,
    low_mask: u32,
    spares: [u32; 32],
    default_hash: bool,
}

/// One item of a hash page.
enum Item<'p> {
    Inline(&'p [u8]),
    OffPage { pgno: u32, len: u32 },
}

impl Bdb {
    /// Opens the Berkeley DB hash file at `path` (the `.db` file itself).
    pub fn open(path: impl AsRef<Path>) -> Result<Bdb> {
        Bdb::open_with_limit(path, crate::IN_MEMORY_LIMIT)
    }

    /// [`Bdb::open`], reading the file into memory only if it has at most `in_memory_limit`
    /// bytes (else positioned reads, one per page).
    pub fn open_with_limit(path: impl AsRef<Path>, in_memory_limit: u64) -> Result<Bdb> {
        Bdb::from_source(Source::open(path.as_ref(), in_memory_limit)?)
    }

    /// Reads a Berkeley DB hash file held in memory.
    pub fn from_bytes(data: Vec<u8>) -> Result<Bdb> {
        Bdb::from_source(Source::Mem(data))
    }

    /// Recognises a Berkeley DB hash file from its first 16 bytes.
    pub fn sniff(head: &[u8]) -> Option<Flavor> {
        let is_magic = |at: usize| {
            [ByteOrder::Little, ByteOrder::Big]
                .iter()
                .any(|o| o.u32(head, at) == HASH_MAGIC)
        };
        if head.len() >= 16 && is_magic(12) {
            return Some(Flavor::Modern);
        }
        if head.len() >= 8 && is_magic(0) {
            return Some(Flavor::V185);
        }
        None
    }

    fn from_source(src: Source) -> Result<Bdb> {
        let flen = src.len();
        let head = src
            .read(FORMAT, 0, flen.min(512), "metadata page")?
            .into_owned();
        match Bdb::sniff(&head) {
            Some(Flavor::Modern) => {}
            Some(Flavor::V185) => {
                return Err(Error::Unsupported {
                    format: FORMAT,
                    detail: "this is a Berkeley DB 1.85 hash file (the ndbm format of macOS \
                             and the BSDs), a different format: read it with \
                             bdb185::Bdb185 (LegacyDb::open picks it)"
                        .into(),
                })
            }
            None => {
                return Err(Error::NotRecognised {
                    format: FORMAT,
                    detail: "no hash magic 0x00061561 at offset 12".into(),
                })
            }
        }
        if head.len() < 224 {
            return Err(Error::corrupt(
                FORMAT,
                0,
                format!("the file has {flen} bytes, too few for a metadata page"),
            ));
        }
        let order = if ByteOrder::Little.u32(&head, 12) == HASH_MAGIC {
            ByteOrder::Little
        } else {
            ByteOrder::Big
        };
        let version = order.u32(&head, 16);
        let page_size = order.u32(&head, 20);
        let encrypt = head[24];
        let ptype = head[25];
        let metaflags = head[26];
        let nparts = order.u32(&head, 36);
        let flags = order.u32(&head, 48);
        let bad = |at: u64, d: String| Err(Error::corrupt(FORMAT, at, d));
        let unsupported = |d: String| {
            Err(Error::Unsupported {
                format: FORMAT,
                detail: d,
            })
        };
        if !(7..=10).contains(&version) {
            return unsupported(format!(
                "hash version {version} (cellar reads versions 7 to 10: Berkeley DB 3.1 to 6.x)"
            ));
        }
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return bad(
                20,
                format!("page size {page_size} is not a power of two in 512..=65536"),
            );
        }
        if ptype != P_HASHMETA {
            return bad(
                25,
                format!("page 0 has type {ptype}, not hash metadata (8)"),
            );
        }
        if encrypt != 0 {
            return unsupported("the file is encrypted".into());
        }
        if metaflags & 0x01 != 0 {
            return unsupported("the file has page checksums (DB_CHKSUM)".into());
        }
        if nparts != 0 {
            return unsupported(format!("the database is partitioned ({nparts} parts)"));
        }
        if flags & 0x02 != 0 {
            return unsupported("the file holds sub-databases (DB_HASH_SUBDB)".into());
        }
        let mut spares = [0u32; 32];
        for (i, s) in spares.iter_mut().enumerate() {
            *s = order.u32(&head, 96 + 4 * i);
        }
        let charkey = order.u32(&head, 92);
        let pages = flen / page_size as u64;
        let max_bucket = order.u32(&head, 72);
        // A max_bucket past the file (truncation, or a lie) is found when a bucket's page is
        // read; scans stop at the first such bucket, so a huge one costs nothing.
        Ok(Bdb {
            order,
            version,
            page_size: page_size as u64,
            pages,
            max_bucket,
            high_mask: order.u32(&head, 76),
            low_mask: order.u32(&head, 80),
            spares,
            default_hash: charkey == bdb_hash(CHARKEY),
            src,
        })
    }

    /// The file's variant.
    pub fn describe(&self) -> BdbInfo {
        BdbInfo {
            version: self.version,
            page_size: self.page_size as u32,
            byte_order: self.order,
            buckets: self.max_bucket as u64 + 1,
        }
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.src.len()
    }

    fn page(&self, pgno: u32) -> Result<Cow<'_, [u8]>> {
        if pgno as u64 >= self.pages {
            return Err(Error::corrupt(
                FORMAT,
                pgno as u64 * self.page_size,
                format!(
                    "page {pgno} is past the end of the file ({} pages)",
                    self.pages
                ),
            ));
        }
        self.src
            .read(FORMAT, pgno as u64 * self.page_size, self.page_size, "page")
    }

    fn bucket_page(&self, bucket: u32) -> Result<u32> {
        let i = log2_ceil(bucket as u64 + 1);
        let spare = self.spares.get(i).copied().unwrap_or(0);
        bucket.checked_add(spare).ok_or_else(|| {
            Error::corrupt(
                FORMAT,
                96 + 4 * i as u64,
                format!("spares[{i}] = {spare} overflows the page number of bucket {bucket}"),
            )
        })
    }

    /// The items of a hash page, checked; `None` for a page never initialised (all zero).
    fn items<'p>(&self, pgno: u32, page: &'p [u8]) -> Result<Vec<Item<'p>>> {
        let o = self.order;
        let at = pgno as u64 * self.page_size;
        let ptype = page[25];
        if ptype == 0 && page.iter().all(|&b| b == 0) {
            return Ok(Vec::new());
        }
        if ptype != P_HASH && ptype != P_HASH_UNSORTED {
            return Err(Error::corrupt(
                FORMAT,
                at,
                format!("page {pgno} in a bucket chain has type {ptype}, not a hash page"),
            ));
        }
        let entries = o.u16(page, 20) as usize;
        let ps = page.len();
        if entries & 1 != 0 || PAGE_HDR + 2 * entries > ps {
            return Err(Error::corrupt(
                FORMAT,
                at,
                format!("page {pgno} has an impossible item count {entries}"),
            ));
        }
        let index_end = PAGE_HDR + 2 * entries;
        let mut out = Vec::with_capacity(entries);
        let mut end = ps;
        for i in 0..entries {
            let off = o.u16(page, PAGE_HDR + 2 * i) as usize;
            if off < index_end || off >= end {
                return Err(Error::corrupt(
                    FORMAT,
                    at + (PAGE_HDR + 2 * i) as u64,
                    format!("page {pgno} item {i} has offset {off}, outside {index_end}..{end}"),
                ));
            }
            let item = &page[off..end];
            end = off;
            out.push(match item[0] {
                H_KEYDATA => Item::Inline(&item[1..]),
                H_OFFPAGE => {
                    if item.len() < 12 {
                        return Err(Error::corrupt(
                            FORMAT,
                            at + off as u64,
                            format!(
                                "page {pgno} item {i}: off-page reference is {} bytes",
                                item.len()
                            ),
                        ));
                    }
                    Item::OffPage {
                        pgno: o.u32(item, 4),
                        len: o.u32(item, 8),
                    }
                }
                H_DUPLICATE | H_OFFDUP => {
                    return Err(Error::Unsupported {
                        format: FORMAT,
                        detail: format!(
                            "page {pgno} holds duplicate data items (DB_DUP), which dbm.ndbm \
                             never writes"
                        ),
                    })
                }
                t => {
                    return Err(Error::corrupt(
                        FORMAT,
                        at + off as u64,
                        format!("page {pgno} item {i} has unknown type {t}"),
                    ))
                }
            });
        }
        Ok(out)
    }

    /// The bytes of an item, following an off-page chain.
    fn resolve<'p>(&self, item: &Item<'p>) -> Result<Cow<'p, [u8]>> {
        match *item {
            Item::Inline(b) => Ok(Cow::Borrowed(b)),
            Item::OffPage { pgno, len } => {
                let room = self.pages.saturating_mul(self.page_size - PAGE_HDR as u64);
                if len as u64 > room {
                    return Err(Error::corrupt(
                        FORMAT,
                        pgno as u64 * self.page_size,
                        format!("off-page item claims {len} bytes, more than the file can hold"),
                    ));
                }
                let mut out = Vec::with_capacity(len as usize);
                let mut seen = HashSet::new();
                let mut p = pgno;
                while out.len() < len as usize {
                    if p == 0 || !seen.insert(p) {
                        return Err(Error::corrupt(
                            FORMAT,
                            p as u64 * self.page_size,
                            format!(
                                "overflow chain from page {pgno} ends or loops at page {p} after \
                                 {} of {len} bytes",
                                out.len()
                            ),
                        ));
                    }
                    let page = self.page(p)?;
                    if page[25] != P_OVERFLOW {
                        return Err(Error::corrupt(
                            FORMAT,
                            p as u64 * self.page_size,
                            format!("page {p} in an overflow chain has type {}", page[25]),
                        ));
                    }
                    let n = self.order.u16(&page, 22) as usize;
                    if PAGE_HDR + n > page.len() || out.len() + n > len as usize {
                        return Err(Error::corrupt(
                            FORMAT,
                            p as u64 * self.page_size,
                            format!("overflow page {p} claims {n} bytes"),
                        ));
                    }
                    out.extend_from_slice(&page[PAGE_HDR..PAGE_HDR + n]);
                    p = self.order.u32(&page, 16);
                    if n == 0 && out.len() < len as usize {
                        return Err(Error::corrupt(
                            FORMAT,
                            p as u64 * self.page_size,
                            "empty overflow page in the middle of an item",
                        ));
                    }
                }
                Ok(Cow::Owned(out))
            }
        }
    }

    /// Walks bucket `b`'s page chain, calling `f` with each page's number and bytes.
    fn walk_bucket(
        &self,
        b: u32,
        seen: &mut HashSet<u32>,
        f: &mut dyn FnMut(u32, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut p = self.bucket_page(b)?;
        loop {
            if !seen.insert(p) {
                return Err(Error::corrupt(
                    FORMAT,
                    p as u64 * self.page_size,
                    format!("page {p} is reached twice (a loop in bucket {b}'s page chain)"),
                ));
            }
            let page = self.page(p)?;
            f(p, &page)?;
            let next = self.order.u32(&page, 16);
            if next == 0 || page[25] == 0 {
                return Ok(());
            }
            p = next;
        }
    }

    /// Calls `f` with every pair, in Berkeley DB's cursor order (`dbm_firstkey`/`nextkey`);
    /// stops at the first error.
    pub fn try_for_each<E: From<Error>>(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut seen = HashSet::new();
        let mut user_err = None;
        for b in 0..=self.max_bucket {
            self.walk_bucket(b, &mut seen, &mut |pgno, page| {
                let items = self.items(pgno, page)?;
                for pair in items.chunks_exact(2) {
                    let k = self.resolve(&pair[0])?;
                    let v = self.resolve(&pair[1])?;
                    if let Err(e) = f(&k, &v) {
                        user_err = Some(e);
                        return Err(Error::corrupt(FORMAT, 0, "stopped"));
                    }
                }
                Ok(())
            })
            .map_err(|e| match user_err.take() {
                Some(u) => u,
                None => E::from(e),
            })?;
        }
        Ok(())
    }

    /// Every pair, collected.
    pub fn items_vec(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.try_for_each(|k, v| -> Result<()> {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Every key, in cursor order.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for b in 0..=self.max_bucket {
            self.walk_bucket(b, &mut seen, &mut |pgno, page| {
                for pair in self.items(pgno, page)?.chunks_exact(2) {
                    out.push(self.resolve(&pair[0])?.into_owned());
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// Number of keys (counts page entries; reads no off-page items).
    pub fn len(&self) -> Result<usize> {
        let mut n = 0;
        let mut seen = HashSet::new();
        for b in 0..=self.max_bucket {
            self.walk_bucket(b, &mut seen, &mut |pgno, page| {
                n += self.items(pgno, page)?.len() / 2;
                Ok(())
            })?;
        }
        Ok(n)
    }

    /// True when the file holds no keys.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The value stored under `key`: one bucket's pages with Berkeley DB's default hash, or a
    /// full scan when the file was made with another hash function.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let buckets: Box<dyn Iterator<Item = u32>> = if self.default_hash {
            let h = bdb_hash(key);
            let mut b = h & self.high_mask;
            if b > self.max_bucket {
                b &= self.low_mask;
            }
            Box::new(std::iter::once(b))
        } else {
            Box::new(0..=self.max_bucket)
        };
        let mut found = None;
        let mut seen = HashSet::new();
        for b in buckets {
            if b > self.max_bucket {
                return Err(Error::corrupt(
                    FORMAT,
                    76,
                    format!("low_mask sends a key to bucket {b}, past max_bucket"),
                ));
            }
            self.walk_bucket(b, &mut seen, &mut |pgno, page| {
                if found.is_some() {
                    return Ok(());
                }
                for pair in self.items(pgno, page)?.chunks_exact(2) {
                    let hit = match pair[0] {
                        Item::Inline(k) => k == key,
                        Item::OffPage { len, .. } => {
                            len as usize == key.len() && *self.resolve(&pair[0])? == *key
                        }
                    };
                    if hit {
                        found = Some(self.resolve(&pair[1])?.into_owned());
                        return Ok(());
                    }
                }
                Ok(())
            })?;
            if found.is_some() {
                break;
            }
        }
        Ok(found)
    }

    /// Reads everything it can, noting each damaged page or item instead of stopping.
    pub fn check(&self) -> Report {
        self.salvage(&mut |_, _| {})
    }

    /// Calls `f` with every pair that can be read, skipping damaged pages and items, and
    /// reports what was skipped.
    pub fn salvage(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Report {
        let mut r = Report::default();
        let mut seen = HashSet::new();
        for b in 0..=self.max_bucket {
            if !matches!(self.bucket_page(b), Ok(p) if (p as u64) < self.pages) {
                // Bucket pages only grow with the bucket number: the rest are gone too.
                r.problems.push(format!(
                    "damaged {FORMAT} file: buckets {b}..={} lie past the end of the file \
                     ({} pages; truncated?)",
                    self.max_bucket, self.pages
                ));
                break;
            }
            let mut problems = Vec::new();
            let res = self.walk_bucket(b, &mut seen, &mut |pgno, page| {
                match self.items(pgno, page) {
                    Ok(items) => {
                        for pair in items.chunks_exact(2) {
                            match (self.resolve(&pair[0]), self.resolve(&pair[1])) {
                                (Ok(k), Ok(v)) => {
                                    f(&k, &v);
                                    r.readable += 1;
                                }
                                (Err(e), _) | (_, Err(e)) => problems.push(e.to_string()),
                            }
                        }
                    }
                    Err(e) => problems.push(e.to_string()),
                }
                Ok(())
            });
            r.problems.extend(problems);
            if let Err(e) = res {
                r.problems.push(e.to_string());
            }
        }
        r
    }
}
