//! The in-memory hash index: an open-addressing table (linear probing) of atomic 64-bit slots
//! `tag:16 | offset:48`, written only by the single writer and read lock-free by any thread;
//! plus its checkpoint encoding (bitmap + occupied slots, docs/engine-format.md section 5).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::format::{u64le, IndexMeta, INDEX_META_LEN};

/// An empty slot.
pub const EMPTY: u64 = 0;
/// A deleted slot (keeps probe chains intact).
pub const TOMB: u64 = u64::MAX;
const OFFSET_MASK: u64 = (1 << 48) - 1;
/// Grow once (keys + tombstones) exceed this fraction of capacity (numerator over 16).
const MAX_LOAD_16THS: u64 = 11;
/// Smallest table.
const MIN_LOG2: u8 = 10;

/// Hash of a key (stable across versions, hosts and processes).
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[inline]
fn pack(hash: u64, offset: u64) -> u64 {
    (hash & !OFFSET_MASK) | offset
}

/// Offset stored in a live slot value.
#[inline]
pub fn slot_offset(v: u64) -> u64 {
    v & OFFSET_MASK
}

/// Asks the kernel to back a large table with transparent huge pages (`MADV_HUGEPAGE`, for
/// systems where THP is in `madvise` mode): a random probe of a table of many MiB then needs a
/// TLB entry per 2 MiB instead of per 4 KiB (one of the two memory stalls of a point read,
/// the other being the record). Advice only: its result is ignored, nothing depends on it.
fn advise_huge_pages(mem: &[u64]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = mem.as_ptr() as usize;
        let end = start + std::mem::size_of_val(mem);
        let (a0, a1) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if a1 > a0 {
            // SAFETY: `[a0, a1)` is a page-aligned range inside the allocation of `mem`, which
            // is live for the call; MADV_HUGEPAGE changes neither its contents nor its validity
            // (only how the kernel backs it), so no Rust reference is affected.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(a0 as *mut libc::c_void, a1 - a0, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = mem;
}

/// The table.
#[derive(Debug)]
pub struct Table {
    slots: Box<[AtomicU64]>,
    /// The low 32 bits of each live slot's hash (a slot keeps only the top 16), written with
    /// the slot, so that growing places every entry without reading its key back from the log.
    /// Memory only (never in a checkpoint): 4 bytes per slot beside the slot's 8.
    lows: Box<[AtomicU32]>,
    /// Whether `lows` is right for every live slot: true for tables built in memory, false for
    /// one loaded from a checkpoint (growing it reads the keys, and the grown table knows them).
    lows_known: bool,
    log2: u8,
}

/// A zeroed table of `n` 32-bit atomics.
fn zeroed_lows(n: usize) -> Box<[AtomicU32]> {
    vec![0u32; n]
        .into_iter()
        .map(AtomicU32::new)
        .collect::<Vec<_>>()
        .into_boxed_slice()
}

/// Where a probe ended.
pub enum Probe {
    /// The key lives at this offset, in this slot.
    Found { slot: usize, offset: u64 },
    /// Not present; `insert_at` is the slot an insert should use.
    Missing { insert_at: usize, reuses_tomb: bool },
}

impl Table {
    /// An empty table with `2^log2` slots.
    pub fn with_log2(log2: u8) -> Table {
        let log2 = log2.max(MIN_LOG2);
        let n = 1usize << log2;
        // Zeroed memory straight from the allocator (not yet touched), advised before the
        // first write faults it in; `EMPTY` is 0, and the conversion reuses the allocation.
        let raw = vec![0u64; n];
        advise_huge_pages(&raw);
        let slots: Vec<AtomicU64> = raw.into_iter().map(AtomicU64::new).collect();
        Table {
            slots: slots.into_boxed_slice(),
            lows: zeroed_lows(n),
            lows_known: true,
            log2,
        }
    }

    /// A table sized for `keys` keys.
    pub fn for_keys(keys: u64) -> Table {
        let want = (keys.saturating_mul(16) / MAX_LOAD_16THS).max(1) + 1;
        let log2 = (64 - (want - 1).leading_zeros()) as u8;
        Table::with_log2(log2)
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn log2(&self) -> u8 {
        self.log2
    }

    /// True if inserting one more entry would exceed the load limit.
    pub fn needs_grow(&self, keys: u64, tombs: u64) -> bool {
        (keys + tombs + 1) * 16 > self.capacity() as u64 * MAX_LOAD_16THS
    }

    /// Looks a key up. `is_key(offset)` reads the record at `offset` and says whether it holds
    /// the key being probed for.
    pub fn probe(&self, hash: u64, mut is_key: impl FnMut(u64) -> Result<bool>) -> Result<Probe> {
        let mask = self.slots.len() - 1;
        let tag = hash & !OFFSET_MASK;
        let mut i = (hash as usize) & mask;
        let mut first_tomb = None;
        for _ in 0..self.slots.len() {
            let v = self.slots[i].load(Ordering::Acquire);
            if v == EMPTY {
                return Ok(match first_tomb {
                    Some(t) => Probe::Missing {
                        insert_at: t,
                        reuses_tomb: true,
                    },
                    None => Probe::Missing {
                        insert_at: i,
                        reuses_tomb: false,
                    },
                });
            }
            if v == TOMB {
                if first_tomb.is_none() {
                    first_tomb = Some(i);
                }
            } else if v & !OFFSET_MASK == tag && is_key(slot_offset(v))? {
                return Ok(Probe::Found {
                    slot: i,
                    offset: slot_offset(v),
                });
            }
            i = (i + 1) & mask;
        }
        match first_tomb {
            Some(t) => Ok(Probe::Missing {
                insert_at: t,
                reuses_tomb: true,
            }),
            None => Err(Error::corrupt(0, "index table is full")),
        }
    }

    /// Writer only: points `slot` at a record.
    pub fn set(&self, slot: usize, hash: u64, offset: u64) {
        self.lows[slot].store(hash as u32, Ordering::Relaxed);
        self.slots[slot].store(pack(hash, offset), Ordering::Release);
    }

    /// Writer only: marks a slot deleted.
    pub fn remove(&self, slot: usize) {
        self.slots[slot].store(TOMB, Ordering::Release);
    }

    /// Inserts an entry known to be absent, into the first free slot (used when rebuilding).
    pub fn insert_fresh(&self, hash: u64, offset: u64) {
        let mask = self.slots.len() - 1;
        let mut i = (hash as usize) & mask;
        loop {
            if self.slots[i].load(Ordering::Relaxed) == EMPTY {
                self.lows[i].store(hash as u32, Ordering::Relaxed);
                self.slots[i].store(pack(hash, offset), Ordering::Release);
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Number of live slots.
    pub fn live_slots(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| {
                let v = s.load(Ordering::Relaxed);
                v != EMPTY && v != TOMB
            })
            .count() as u64
    }

    /// All live offsets (snapshot).
    pub fn offsets(&self) -> Vec<u64> {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|&v| v != EMPTY && v != TOMB)
            .map(slot_offset)
            .collect()
    }

    /// The live records' offsets in file order (ascending), for scans that read the log
    /// front to back.
    pub fn offsets_in_file_order(&self) -> Vec<u64> {
        let mut v = self.offsets();
        radix_sort(&mut v);
        v
    }

    /// Builds a bigger (or cleaned) table holding the same live entries. Each entry's hash
    /// comes from the slot's tag and `lows` when they are known (the bits a table of up to
    /// 2^32 slots places by); otherwise `key_hash(offset)` returns the full hash of the key of
    /// the record at `offset`, asked in file order (ascending offsets), so that it can read the
    /// log front to back in large windows instead of one small read per key.
    pub fn rebuilt(
        &self,
        keys: u64,
        mut key_hash: impl FnMut(u64) -> Result<u64>,
    ) -> Result<Table> {
        let t = Table::for_keys(keys.saturating_mul(2).max(keys + 1));
        let mut entries = Vec::with_capacity(keys as usize);
        if self.lows_known && t.log2 <= 32 {
            for (s, lo) in self.slots.iter().zip(self.lows.iter()) {
                let v = s.load(Ordering::Acquire);
                if v != EMPTY && v != TOMB {
                    let h = (v & !OFFSET_MASK) | u64::from(lo.load(Ordering::Relaxed));
                    entries.push((h, slot_offset(v)));
                }
            }
        } else {
            for off in self.offsets_in_file_order() {
                entries.push((key_hash(off)?, off));
            }
        }
        // Inserted in the order of their home slots (one counting-sort pass by the slot's top
        // bits), the entries fill the new table front to back: in random order, every insert
        // into a table of many MiB is a cache (and, in fresh memory, page) miss.
        let mask = t.slots.len() - 1;
        let bucket_bits = t.log2.min(12);
        let shift = t.log2 - bucket_bits;
        let mut starts = vec![0usize; (1 << bucket_bits) + 1];
        for &(h, _) in &entries {
            starts[((h as usize & mask) >> shift) + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut ordered = vec![(0u64, 0u64); entries.len()];
        for &(h, off) in &entries {
            let b = (h as usize & mask) >> shift;
            ordered[starts[b]] = (h, off);
            starts[b] += 1;
        }
        for (h, off) in ordered {
            t.insert_fresh(h, off);
        }
        Ok(t)
    }

    /// Checkpoint payload.
    pub fn encode(&self, meta: &IndexMeta) -> Vec<u8> {
        let n = self.slots.len();
        let bitmap_len = n.div_ceil(8);
        let mut values = Vec::with_capacity(meta.keys as usize * 8 + 64);
        let mut bitmap = vec![0u8; bitmap_len];
        for (i, s) in self.slots.iter().enumerate() {
            let v = s.load(Ordering::Acquire);
            if v != EMPTY {
                bitmap[i / 8] |= 1 << (i % 8);
                values.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut out = Vec::with_capacity(INDEX_META_LEN + bitmap_len + values.len());
        let meta = IndexMeta {
            log2_capacity: self.log2,
            ..*meta
        };
        meta.encode(&mut out);
        out.extend_from_slice(&bitmap);
        out.extend_from_slice(&values);
        out
    }

    /// Loads a checkpoint payload; `None` if it is inconsistent.
    pub fn decode(b: &[u8]) -> Option<(IndexMeta, Table)> {
        let meta = IndexMeta::decode(b)?;
        if meta.log2_capacity < MIN_LOG2 || meta.log2_capacity > 40 {
            return None;
        }
        let n = 1usize << meta.log2_capacity;
        let bitmap_len = n.div_ceil(8);
        let bitmap = b.get(INDEX_META_LEN..INDEX_META_LEN + bitmap_len)?;
        let mut values = b.get(INDEX_META_LEN + bitmap_len..)?;
        let slots: Vec<AtomicU64> = {
            // calloc-speed zeroed allocation, then scatter.
            let mut raw = vec![0u64; n];
            advise_huge_pages(&raw);
            for (byte_i, &byte) in bitmap.iter().enumerate() {
                let mut bits = byte;
                while bits != 0 {
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let v = u64le(values.get(..8)?);
                    values = &values[8..];
                    if v == EMPTY {
                        return None;
                    }
                    *raw.get_mut(byte_i * 8 + bit)? = v;
                }
            }
            raw.into_iter().map(AtomicU64::new).collect()
        };
        if !values.is_empty() {
            return None;
        }
        Some((
            meta,
            Table {
                slots: slots.into_boxed_slice(),
                lows: zeroed_lows(n),
                lows_known: false,
                log2: meta.log2_capacity,
            },
        ))
    }
}

/// Sorts `v` ascending with an LSD radix sort (11-bit digits, only as many passes as the largest
/// value needs): file offsets are dense integers, and for a million of them this is several
/// times faster than a comparison sort.
pub(crate) fn radix_sort(v: &mut Vec<u64>) {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    if v.len() < 256 {
        v.sort_unstable();
        return;
    }
    let max = v.iter().copied().max().unwrap_or(0);
    let passes = (64 - max.leading_zeros()).div_ceil(BITS);
    let mut buf = vec![0u64; v.len()];
    let mut src = std::mem::take(v);
    for pass in 0..passes {
        let shift = pass * BITS;
        let mut counts = [0usize; BUCKETS];
        for &x in &src {
            counts[((x >> shift) as usize) & (BUCKETS - 1)] += 1;
        }
        let mut sum = 0;
        for c in counts.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for &x in &src {
            let d = ((x >> shift) as usize) & (BUCKETS - 1);
            buf[counts[d]] = x;
            counts[d] += 1;
        }
        std::mem::swap(&mut src, &mut buf);
    }
    *v = src;
}

#[cfg(test)]
mod radix_tests {
    use super::radix_sort;

    #[test]
    fn radix_sort_matches_sort() {
        let mut x: u64 = 12345;
        for n in [0usize, 1, 255, 256, 1000, 70_000] {
            for bits in [8u32, 20, 40, 64] {
                let mut v: Vec<u64> = (0..n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if bits == 64 {
                            x
                        } else {
                            x & ((1u64 << bits) - 1)
                        }
                    })
                    .collect();
                let mut w = v.clone();
                w.sort_unstable();
                radix_sort(&mut v);
                assert_eq!(v, w, "n={n} bits={bits}");
            }
        }
    }
}

#[cfg(test)]
mod grow_tests {
    use super::*;

    fn key(i: u64) -> Vec<u8> {
        format!("key{i}").into_bytes()
    }

    /// Every entry of `t` is found by its key's hash at its offset (offset i+1 holds key i).
    fn assert_finds(t: &Table, n: u64) {
        for i in 0..n {
            let h = hash_key(&key(i));
            match t.probe(h, |off| Ok(off == i + 1)).unwrap() {
                Probe::Found { offset, .. } => assert_eq!(offset, i + 1),
                Probe::Missing { .. } => panic!("key{i} lost by growing"),
            }
        }
    }

    #[test]
    fn growing_places_entries_from_the_kept_hash_bits_or_from_the_keys() {
        let n = 5_000u64;
        let t = Table::with_log2(10);
        let mut t = t;
        for i in 0..n {
            if t.needs_grow(i, 0) {
                // Built in memory: the low hash bits are known, no key is read back.
                t = t.rebuilt(i, |_| panic!("a key was read back")).unwrap();
            }
            let h = hash_key(&key(i));
            match t.probe(h, |off| Ok(off == i + 1)).unwrap() {
                Probe::Missing { insert_at, .. } => t.set(insert_at, h, i + 1),
                Probe::Found { .. } => panic!("key{i} present before its insert"),
            }
        }
        assert_finds(&t, n);
        // Loaded from a checkpoint: the low bits are unknown, so growing reads the keys (in
        // file order) and the grown table knows them again.
        let meta = IndexMeta {
            covers_end: 0,
            keys: n,
            tombstones: 0,
            live_bytes: 0,
            raw_value_bytes: 0,
            stored_value_bytes: 0,
            log2_capacity: t.log2(),
        };
        let (_, loaded) = Table::decode(&t.encode(&meta)).unwrap();
        assert!(!loaded.lows_known);
        let mut asked = Vec::new();
        let grown = loaded
            .rebuilt(n, |off| {
                asked.push(off);
                Ok(hash_key(&key(off - 1)))
            })
            .unwrap();
        assert_eq!(
            asked,
            (1..=n).collect::<Vec<_>>(),
            "keys read once each, in file order"
        );
        assert_finds(&grown, n);
        let again = grown
            .rebuilt(n * 2, |_| panic!("a key was read back"))
            .unwrap();
        assert_finds(&again, n);
    }
}
