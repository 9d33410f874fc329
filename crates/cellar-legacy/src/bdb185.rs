//! A read-only reader for Berkeley DB 1.85/1.86 hash files: what `dbm.ndbm` writes on macOS
//! and the BSDs (their libc's `dbm_open` is `dbopen(NAME.db, DB_HASH)` from 4.4BSD's db 1.85),
//! and what glibc's db1 wrote.
//!
//! Layout (the header is always big-endian; pages are in the byte order named by `lorder`):
//!
//! ```text
//! header (page 0 .. hdrpages): i32 magic 0x061561, version (2, or 1), lorder (1234 / 4321),
//!   bsize, bshift, dsize, ssize, sshift, ovfl_point, last_freed, max_bucket, high_mask,
//!   low_mask, ffactor, nkeys, hdrpages, h_charkey, spares[32] (from byte 68), u16 bitmaps[32]
//! bucket b lives on page b + hdrpages + (b ? spares[log2(b + 1) - 1] : 0)
//! overflow address a (u16: split number << 11 | page in split) is on page
//!   bucket_page((1 << (a >> 11)) - 1) + (a & 0x7ff)
//! page: u16 n, then n u16 entries, then u16 free space, u16 end of data; entries come in
//!   pairs (key offset, value offset). Key i spans [entry, previous key's start or bsize),
//!   its value [value offset, key offset). A pair (address, 0) links the bucket's next page.
//!   A pair whose second entry is 1, 2 or 3 starts a big item at the top of its page: key
//!   pieces (PARTIAL_KEY, then FULL_KEY or FULL_KEY_DATA) and value pieces (FULL_KEY, then
//!   FULL_KEY_DATA), one per page, each piece spanning [entry 1, bsize), chained by entry n-1.
//! ```
//!
//! The default hash is `h = h * 33 + byte` (db 1.85's `hash4`); `h_charkey` holds the hash of
//! `"%$sniglet^&\0"`, so a file made with another hash function falls back to scans.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::{ByteOrder, Source};
use crate::Report;

const FORMAT: &str = "Berkeley DB 1.85 hash";
const MAGIC: u32 = 0x0006_1561;
const OVFLPAGE: u16 = 0;
const PARTIAL_KEY: u16 = 1;
const FULL_KEY: u16 = 2;
const FULL_KEY_DATA: u16 = 3;
const REAL_KEY: u16 = 4;
const CHARKEY: &[u8] = b"%$sniglet^&\0";

/// db 1.85's default hash function (`hash4`: `h = h * 33 + byte`).
pub fn hash185(key: &[u8]) -> u32 {
    key.iter()
        .fold(0u32, |h, &b| h.wrapping_mul(33).wrapping_add(b as u32))
}

fn log2_ceil(n: u64) -> u32 {
    let mut i = 0;
    let mut limit: u64 = 1;
    while limit < n {
        limit <<= 1;
        i += 1;
    }
    i
}

/// A description of a Berkeley DB 1.85 hash file, from [`Bdb185::describe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bdb185Info {
    /// Hash format version (2 for db 1.85/1.86).
    pub version: u32,
    /// Page (bucket) size in bytes.
    pub page_size: u32,
    /// Byte order of the pages.
    pub byte_order: ByteOrder,
    /// Number of buckets.
    pub buckets: u64,
}

/// An open Berkeley DB 1.85 hash file (read-only).
#[derive(Debug)]
pub struct Bdb185 {
    src: Source,
    order: ByteOrder,
    version: u32,
    bsize: usize,
    pages: u64,
    hdrpages: u32,
    max_bucket: u32,
    high_mask: u32,
    low_mask: u32,
    spares: [u32; 32],
    default_hash: bool,
}

/// What a bucket walk finds on a page.
enum Step<'a> {
    Pair(Cow<'a, [u8]>, Cow<'a, [u8]>),
}

impl Bdb185 {
    /// Opens the file at `path` (the `.db` file itself).
    pub fn open(path: impl AsRef<Path>) -> Result<Bdb185> {
        Bdb185::open_with_limit(path, crate::IN_MEMORY_LIMIT)
    }

    /// [`Bdb185::open`], reading the file into memory only if it has at most
    /// `in_memory_limit` bytes.
    pub fn open_with_limit(path: impl AsRef<Path>, in_memory_limit: u64) -> Result<Bdb185> {
        Bdb185::from_source(Source::open(path.as_ref(), in_memory_limit)?)
    }

    /// Reads a file held in memory.
    pub fn from_bytes(data: Vec<u8>) -> Result<Bdb185> {
        Bdb185::from_source(Source::Mem(data))
    }

    fn from_source(src: Source) -> Result<Bdb185> {
        let flen = src.len();
        let head = src.read(FORMAT, 0, flen.min(260), "header")?.into_owned();
        if head.len() < 196 {
            return Err(Error::corrupt(
                FORMAT,
                0,
                format!("the file has {flen} bytes, too few for a header"),
            ));
        }
        // The header is written big-endian; accept a little-endian one too.
        let h = if ByteOrder::Big.u32(&head, 0) == MAGIC {
            ByteOrder::Big
        } else if ByteOrder::Little.u32(&head, 0) == MAGIC {
            ByteOrder::Little
        } else {
            return Err(Error::NotRecognised {
                format: FORMAT,
                detail: "no hash magic 0x00061561 at offset 0".into(),
            });
        };
        let field = |i: usize| h.u32(&head, 4 * i);
        let version = field(1);
        let lorder = field(2);
        let bsize = field(3);
        let max_bucket = field(10);
        let hdrpages = field(15);
        let bad = |at: usize, d: String| Err(Error::corrupt(FORMAT, 4 * at as u64, d));
        if version != 1 && version != 2 {
            return Err(Error::Unsupported {
                format: FORMAT,
                detail: format!("hash version {version} (db 1.x writes 1 or 2)"),
            });
        }
        let order = match lorder {
            1234 => ByteOrder::Little,
            4321 => ByteOrder::Big,
            _ => return bad(2, format!("byte order {lorder} is neither 1234 nor 4321")),
        };
        if !(256..=65536).contains(&bsize) || !bsize.is_power_of_two() {
            return bad(
                3,
                format!("bucket size {bsize} is not a power of two in 256..=65536"),
            );
        }
        let pages = flen / bsize as u64;
        if hdrpages == 0 || hdrpages as u64 > pages {
            return bad(
                15,
                format!("header pages {hdrpages} outside the file ({pages} pages)"),
            );
        }
        let mut spares = [0u32; 32];
        for (i, s) in spares.iter_mut().enumerate() {
            *s = field(17 + i);
        }
        Ok(Bdb185 {
            order,
            version,
            bsize: bsize as usize,
            pages,
            hdrpages,
            max_bucket,
            high_mask: field(11),
            low_mask: field(12),
            spares,
            default_hash: field(16) == hash185(CHARKEY),
            src,
        })
    }

    /// The file's variant.
    pub fn describe(&self) -> Bdb185Info {
        Bdb185Info {
            version: self.version,
            page_size: self.bsize as u32,
            byte_order: self.order,
            buckets: self.max_bucket as u64 + 1,
        }
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.src.len()
    }

    fn bucket_page(&self, b: u32) -> Result<u64> {
        let spare = if b == 0 {
            0
        } else {
            let i = log2_ceil(b as u64 + 1) as usize - 1;
            self.spares.get(i).copied().unwrap_or(u32::MAX)
        };
        let p = b as u64 + self.hdrpages as u64 + spare as u64;
        if p >= self.pages {
            return Err(Error::corrupt(
                FORMAT,
                p.saturating_mul(self.bsize as u64),
                format!(
                    "bucket {b} maps to page {p}, past the end ({} pages)",
                    self.pages
                ),
            ));
        }
        Ok(p)
    }

    fn ovfl_page(&self, addr: u16) -> Result<u64> {
        let split = (addr >> 11) as u32;
        let base = self.bucket_page((1u32 << split) - 1)?;
        let p = base + (addr & 0x7ff) as u64;
        if p >= self.pages {
            return Err(Error::corrupt(
                FORMAT,
                p.saturating_mul(self.bsize as u64),
                format!("overflow address {addr:#x} maps to page {p}, past the end"),
            ));
        }
        Ok(p)
    }

    fn page(&self, p: u64) -> Result<Cow<'_, [u8]>> {
        self.src
            .read(FORMAT, p * self.bsize as u64, self.bsize as u64, "page")
    }

    /// The u16 entries of a page: `[n, e1 .. en, free, offset]`, checked to fit.
    fn entries(&self, p: u64, page: &[u8]) -> Result<Vec<u16>> {
        let o = self.order;
        let n = o.u16(page, 0) as usize;
        if 2 * (n + 3) > page.len() {
            return Err(Error::corrupt(
                FORMAT,
                p * self.bsize as u64,
                format!("page {p} claims {n} entries, more than fit"),
            ));
        }
        Ok((0..n + 3).map(|i| o.u16(page, 2 * i)).collect())
    }

    fn span<'a>(&self, p: u64, page: &'a [u8], from: u16, to: usize) -> Result<&'a [u8]> {
        let from = from as usize;
        if from > to || to > page.len() {
            return Err(Error::corrupt(
                FORMAT,
                p * self.bsize as u64 + from as u64,
                format!("page {p}: item [{from}, {to}) is outside the page"),
            ));
        }
        Ok(&page[from..to])
    }

    /// Reads the big item starting at page `p`; returns key, value and the page the bucket
    /// continues on.
    fn big(&self, mut p: u64, seen: &mut HashSet<u64>) -> Result<(Vec<u8>, Vec<u8>, Option<u64>)> {
        let bs = self.bsize;
        let mut key = Vec::new();
        let mut data = Vec::new();
        let loop_err = |p: u64| {
            Error::corrupt(
                FORMAT,
                p * bs as u64,
                format!("page {p} is reached twice (a loop in a big item's page chain)"),
            )
        };
        // Key pieces.
        let (page, e) = loop {
            let page = self.page(p)?;
            let e = self.entries(p, &page)?;
            if e[0] < 2 {
                return Err(Error::corrupt(
                    FORMAT,
                    p * bs as u64,
                    format!("page {p}: big item page with {} entries", e[0]),
                ));
            }
            key.extend_from_slice(self.span(p, &page, e[1], bs)?);
            match e[2] {
                PARTIAL_KEY => {
                    let n = e[0] as usize;
                    if n < 4 {
                        return Err(Error::corrupt(
                            FORMAT,
                            p * bs as u64,
                            format!("page {p}: partial key without a next page"),
                        ));
                    }
                    p = self.ovfl_page(e[n - 1])?;
                    if !seen.insert(p) {
                        return Err(loop_err(p));
                    }
                }
                FULL_KEY | FULL_KEY_DATA => break (page, e),
                c => {
                    return Err(Error::corrupt(
                        FORMAT,
                        p * bs as u64,
                        format!("page {p}: big item code {c}"),
                    ))
                }
            }
        };
        let n = e[0] as usize;
        let next_of = |e: &[u16], p: u64| -> Result<u64> {
            let n = e[0] as usize;
            if n < 4 {
                return Err(Error::corrupt(
                    FORMAT,
                    p * bs as u64,
                    format!("page {p}: big item continues but names no next page"),
                ));
            }
            self.ovfl_page(e[n - 1])
        };
        if e[2] == FULL_KEY_DATA {
            if n < 4 {
                return Err(Error::corrupt(
                    FORMAT,
                    p * bs as u64,
                    format!("page {p}: key and value page with {n} entries"),
                ));
            }
            data.extend_from_slice(self.span(p, &page, e[n], e[1] as usize)?);
            let free = e[n + 1];
            let next = self.ovfl_page(e[n - 1])?;
            if free != 0 {
                return Ok((key, data, Some(next)));
            }
            p = next;
        } else {
            p = next_of(&e, p)?;
        }
        // Value pieces.
        loop {
            if !seen.insert(p) {
                return Err(loop_err(p));
            }
            let page = self.page(p)?;
            let e = self.entries(p, &page)?;
            if e[0] < 2 {
                return Err(Error::corrupt(
                    FORMAT,
                    p * bs as u64,
                    format!("page {p}: value page with {} entries", e[0]),
                ));
            }
            data.extend_from_slice(self.span(p, &page, e[1], bs)?);
            if data.len() as u64 > self.src.len() {
                return Err(Error::corrupt(
                    FORMAT,
                    p * bs as u64,
                    "big value longer than the file",
                ));
            }
            match e[2] {
                FULL_KEY_DATA => {
                    let after = if e[0] > 2 {
                        Some(self.ovfl_page(e[e[0] as usize - 1])?)
                    } else {
                        None
                    };
                    return Ok((key, data, after));
                }
                FULL_KEY => p = next_of(&e, p)?,
                c => {
                    return Err(Error::corrupt(
                        FORMAT,
                        p * bs as u64,
                        format!("page {p}: value piece code {c}"),
                    ))
                }
            }
        }
    }

    /// Walks bucket `b`, calling `f` with each pair (hash_seq's order).
    fn walk_bucket(
        &self,
        b: u32,
        seen: &mut HashSet<u64>,
        f: &mut dyn FnMut(Step<'_>) -> Result<bool>,
    ) -> Result<()> {
        let bs = self.bsize;
        let mut p = self.bucket_page(b)?;
        'pages: loop {
            if !seen.insert(p) {
                return Err(Error::corrupt(
                    FORMAT,
                    p * bs as u64,
                    format!("page {p} is reached twice (a loop in bucket {b}'s chain)"),
                ));
            }
            let page = self.page(p)?;
            let e = self.entries(p, &page)?;
            let n = e[0] as usize;
            let mut i = 1;
            while i <= n {
                if i + 1 > n {
                    return Err(Error::corrupt(
                        FORMAT,
                        p * bs as u64,
                        format!("page {p}: odd number of entries {n}"),
                    ));
                }
                let (a, c) = (e[i], e[i + 1]);
                if c == OVFLPAGE {
                    p = self.ovfl_page(a)?;
                    continue 'pages;
                }
                if c < REAL_KEY {
                    if i != 1 {
                        return Err(Error::corrupt(
                            FORMAT,
                            p * bs as u64,
                            format!("page {p}: big item not at the top of its page"),
                        ));
                    }
                    let (k, v, after) = self.big(p, seen)?;
                    if !f(Step::Pair(Cow::Owned(k), Cow::Owned(v)))? {
                        return Ok(());
                    }
                    match after {
                        Some(next) => {
                            p = next;
                            continue 'pages;
                        }
                        None => return Ok(()),
                    }
                }
                let key_end = if i > 1 { e[i - 1] as usize } else { bs };
                let k = self.span(p, &page, a, key_end)?;
                let v = self.span(p, &page, c, a as usize)?;
                if !f(Step::Pair(Cow::Borrowed(k), Cow::Borrowed(v)))? {
                    return Ok(());
                }
                i += 2;
            }
            return Ok(());
        }
    }

    /// Calls `f` with every pair in the library's `seq` order; stops at the first error.
    pub fn try_for_each<E: From<Error>>(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut seen = HashSet::new();
        let mut user = None;
        for b in 0..=self.max_bucket {
            let r = self.walk_bucket(b, &mut seen, &mut |Step::Pair(k, v)| match f(&k, &v) {
                Ok(()) => Ok(true),
                Err(e) => {
                    user = Some(e);
                    Ok(false)
                }
            });
            if let Some(e) = user.take() {
                return Err(e);
            }
            r?;
        }
        Ok(())
    }

    /// Every key.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.try_for_each(|k, _| -> Result<()> {
            out.push(k.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    /// Number of keys.
    pub fn len(&self) -> Result<usize> {
        let mut n = 0;
        self.try_for_each(|_, _| -> Result<()> {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// True when the file holds no keys.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    fn find_in_bucket(
        &self,
        b: u32,
        key: &[u8],
        seen: &mut HashSet<u64>,
    ) -> Result<Option<Vec<u8>>> {
        let mut found = None;
        self.walk_bucket(b, seen, &mut |Step::Pair(k, v)| {
            if *k == *key {
                found = Some(v.into_owned());
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(found)
    }

    /// The value stored under `key`: one bucket with the default hash, else a scan.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut seen = HashSet::new();
        if self.default_hash {
            let h = hash185(key);
            let mut b = h & self.high_mask;
            if b > self.max_bucket {
                b &= self.low_mask;
            }
            if b > self.max_bucket {
                return Err(Error::corrupt(
                    FORMAT,
                    48,
                    format!("low_mask sends a key to bucket {b}, past max_bucket"),
                ));
            }
            return self.find_in_bucket(b, key, &mut seen);
        }
        for b in 0..=self.max_bucket {
            if let Some(v) = self.find_in_bucket(b, key, &mut seen)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Reads every bucket it can, counting readable pairs and noting each damaged bucket.
    pub fn check(&self) -> Report {
        self.salvage(&mut |_, _| {})
    }

    /// Calls `f` with every pair that can be read (a damaged bucket yields the pairs before
    /// the damage), and reports what was skipped.
    pub fn salvage(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Report {
        let mut r = Report::default();
        let mut seen = HashSet::new();
        for b in 0..=self.max_bucket {
            if self.bucket_page(b).is_err() {
                // Bucket pages only grow with the bucket number: the rest are gone too.
                r.problems.push(format!(
                    "damaged {FORMAT} file: buckets {b}..={} lie past the end of the file \
                     ({} pages; truncated?)",
                    self.max_bucket, self.pages
                ));
                break;
            }
            let mut n = 0;
            let res = self.walk_bucket(b, &mut seen, &mut |Step::Pair(k, v)| {
                f(&k, &v);
                n += 1;
                Ok(true)
            });
            r.readable += n;
            if let Err(e) = res {
                r.problems.push(e.to_string());
            }
        }
        r
    }
}
