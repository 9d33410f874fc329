//! The on-disk format (docs/engine-format.md): static header, checkpoint slots, records and the
//! checkpoint (INDEX) payload. Pure byte encoding and decoding, no I/O; fixed little-endian.

use crate::error::{Error, Result};

/// File magic.
pub const MAGIC: &[u8; 8] = b"CELLARKV";
/// Format version this build writes (and the newest it reads). Version 1 files are read, and
/// upgraded to 2 (a header rewrite) by the first writer that opens them (docs/engine-format.md,
/// section 9).
pub const FORMAT_VERSION: u32 = 3;
/// The version written for a file without a compact section: such a file is exactly a
/// version 2 file, readable by version 2 code.
pub const PLAIN_VERSION: u32 = 2;
/// `incompat_flags` bit: the file has a compact section (docs/engine-format.md section 10);
/// code that does not know it must refuse the file (its hash index misses every compact key).
pub const INCOMPAT_COMPACT: u32 = 0x1;
/// Offset of the first record.
pub const LOG_START: u64 = 4096;
/// Size of the static header.
pub const STATIC_LEN: usize = 64;
/// Offsets of the two checkpoint slots.
pub const SLOT_OFFSETS: [u64; 2] = [64, 128];
/// Size of a checkpoint slot.
pub const SLOT_LEN: usize = 64;
/// Offset of the writer-pid field.
pub const PID_OFFSET: u64 = 192;
/// Where the writer publishes `(session, end)` after every append: two u64 LE, a random id of
/// the writer's session and the log's end (all zero = never published). Informational, not
/// checksummed, never used for recovery: read-only handles compare it with the pair they last
/// saw to skip the `fstat` that would otherwise check for new commits. The session id rules out
/// a stale pair (from before a crash) being mistaken for a new one.
pub const END_HINT_OFFSET: u64 = 200;
/// Shared mode: a u32 counter of writers waiting for the commit lock (atomic, through the
/// writers' shared mappings of the first page). Informational: a holder that sees it non-zero
/// releases the lock it keeps between its commits. Never read by recovery.
pub const WANT_OFFSET: u64 = 216;
/// Largest record header: crc 4 + kind 1 + flags 1 + varint 5 + varint 10.
pub const MAX_REC_HEADER: usize = 21;
/// API limit on key length.
pub const MAX_KEY: u64 = 16 << 20;
/// API limit on value length.
pub const MAX_VALUE: u64 = 64 << 30;
/// Offsets must fit in 48 bits.
pub const MAX_OFFSET: u64 = (1 << 48) - 2;

/// Record kinds.
pub const K_PUT: u8 = 1;
pub const K_DELETE: u8 = 2;
pub const K_INDEX: u8 = 3;
pub const K_DICT: u8 = 4;
pub const K_SUPERSEDED: u8 = 5;
pub const K_BLOCK: u8 = 6;
pub const K_BLOCKINDEX: u8 = 7;
/// The largest known record kind.
const K_LAST: u8 = K_BLOCKINDEX;

/// Record flags.
pub const F_CONT: u8 = 0x01;
pub const F_ZSTD: u8 = 0x02;
pub const F_DICT: u8 = 0x04;
const F_KNOWN: u8 = F_CONT | F_ZSTD | F_DICT;

/// How the layers above encode values; recorded in the header, never interpreted by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ValueEncoding {
    /// Raw bytes (plain dbm).
    #[default]
    Raw,
    /// CPython pickle with the given protocol (shelve).
    Pickle { protocol: u8 },
    /// CPython marshal with the given version.
    Marshal { version: u8 },
    /// Unspecified / written by a newer layer: kind byte and version byte as stored.
    Other { kind: u8, version: u8 },
}

impl ValueEncoding {
    pub(crate) fn to_bytes(self) -> [u8; 2] {
        match self {
            ValueEncoding::Raw => [0, 0],
            ValueEncoding::Pickle { protocol } => [1, protocol],
            ValueEncoding::Marshal { version } => [2, version],
            ValueEncoding::Other { kind, version } => [kind, version],
        }
    }

    pub(crate) fn from_bytes(kind: u8, version: u8) -> ValueEncoding {
        match kind {
            0 => ValueEncoding::Raw,
            1 => ValueEncoding::Pickle { protocol: version },
            2 => ValueEncoding::Marshal { version },
            _ => ValueEncoding::Other { kind, version },
        }
    }
}

/// How a person reads it: `raw bytes`, `pickle protocol 4`, `marshal version 4`.
impl std::fmt::Display for ValueEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueEncoding::Raw => f.write_str("raw bytes"),
            ValueEncoding::Pickle { protocol } => write!(f, "pickle protocol {protocol}"),
            ValueEncoding::Marshal { version } => write!(f, "marshal version {version}"),
            ValueEncoding::Other { kind, version } => {
                write!(f, "unknown encoding (kind {kind}, version {version})")
            }
        }
    }
}

/// Value compression of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Values are stored as given.
    #[default]
    None,
    /// Each value of 64 bytes or more is a zstd frame at this level (if that is smaller).
    Zstd { level: i8 },
    /// Like `Zstd`, and compaction trains a dictionary from the store's own values.
    ZstdDict { level: i8 },
}

impl Compression {
    pub(crate) fn level(self) -> Option<i32> {
        match self {
            Compression::None => None,
            Compression::Zstd { level } | Compression::ZstdDict { level } => Some(level as i32),
        }
    }
}

/// The static header (bytes 0..64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticHeader {
    pub value_encoding: ValueEncoding,
    pub compression: Compression,
    pub generation: u64,
    pub dict_offset: u64,
    /// Offset of the BLOCKINDEX record of the compact section (0 = none).
    pub compact_offset: u64,
    /// Compaction writes the compact form (byte 21 bit 0; a compatible hint: version 2 code
    /// ignores it, and a file without a compact section stays version 2 whatever it says).
    pub compact_form: bool,
}

impl StaticHeader {
    pub fn encode(&self) -> [u8; STATIC_LEN] {
        let mut b = [0u8; STATIC_LEN];
        b[0..8].copy_from_slice(MAGIC);
        if self.compact_offset != 0 {
            b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            b[12..16].copy_from_slice(&INCOMPAT_COMPACT.to_le_bytes());
        } else {
            b[8..12].copy_from_slice(&PLAIN_VERSION.to_le_bytes());
        }
        let ve = self.value_encoding.to_bytes();
        b[16] = ve[0];
        b[17] = ve[1];
        match self.compression {
            Compression::None => {}
            Compression::Zstd { level } => {
                b[18] = 1;
                b[19] = level as u8;
            }
            Compression::ZstdDict { level } => {
                b[18] = 1;
                b[19] = level as u8;
                b[20] = 1;
            }
        }
        b[21] = u8::from(self.compact_form);
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..40].copy_from_slice(&self.dict_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.compact_offset.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header; `Err(reason)` for a truncated/damaged header, `Ok(Err(..))` for a
    /// newer version.
    pub fn decode(b: &[u8]) -> std::result::Result<Result<StaticHeader>, String> {
        if b.len() < STATIC_LEN {
            return Err(format!(
                "header is truncated ({} of {STATIC_LEN} bytes)",
                b.len()
            ));
        }
        if &b[0..8] != MAGIC {
            return Err("bad magic (not a cellar engine file)".into());
        }
        let crc = u32le(&b[60..64]);
        if crc != crc32c::crc32c(&b[0..60]) {
            return Err("header checksum mismatch".into());
        }
        let version = u32le(&b[8..12]);
        let flags = u32le(&b[12..16]);
        if version > FORMAT_VERSION || version == 0 || flags & !INCOMPAT_COMPACT != 0 {
            return Ok(Err(Error::UnsupportedVersion { version, flags }));
        }
        let compact_offset = u64le(&b[40..48]);
        if (flags & INCOMPAT_COMPACT != 0) != (compact_offset != 0) {
            return Err("header's compact-section flag and offset disagree".into());
        }
        let compression = match (b[18], b[20]) {
            (0, _) => Compression::None,
            (1, 0) => Compression::Zstd { level: b[19] as i8 },
            (1, _) => Compression::ZstdDict { level: b[19] as i8 },
            _ => return Ok(Err(Error::UnsupportedVersion { version, flags })),
        };
        Ok(Ok(StaticHeader {
            value_encoding: ValueEncoding::from_bytes(b[16], b[17]),
            compression,
            generation: u64le(&b[24..32]),
            dict_offset: u64le(&b[32..40]),
            compact_offset,
            compact_form: b[21] & 1 != 0,
        }))
    }

    /// The format version of an (already decoded) header's bytes.
    pub fn version_of(b: &[u8]) -> u32 {
        if b.len() < 12 {
            return 0;
        }
        u32le(&b[8..12])
    }

    /// The settings of a header whose magic or checksum is damaged, when its fields still look
    /// plausible (used by repair; `None` if they do not).
    pub fn salvage(b: &[u8]) -> Option<(ValueEncoding, Compression)> {
        if b.len() < STATIC_LEN
            || !matches!(u32le(&b[8..12]), 1..=3)
            || u32le(&b[12..16]) & !INCOMPAT_COMPACT != 0
        {
            return None;
        }
        let compression = match (b[18], b[20]) {
            (0, 0) if b[19] == 0 => Compression::None,
            (1, 0) => Compression::Zstd { level: b[19] as i8 },
            (1, 1) => Compression::ZstdDict { level: b[19] as i8 },
            _ => return None,
        };
        if b[16] > 2 {
            return None;
        }
        Some((ValueEncoding::from_bytes(b[16], b[17]), compression))
    }
}

/// Whether `b` (the first bytes of a file) is probably a cellar store even though its header
/// may be damaged: the magic differs in at most 8 bits, or the version/layout fields are
/// plausible.
pub fn looks_like_header(b: &[u8]) -> bool {
    if b.len() < 16 {
        return false;
    }
    let dist: u32 = b[..8]
        .iter()
        .zip(MAGIC.iter())
        .map(|(x, y)| (x ^ y).count_ones())
        .sum();
    dist <= 8 || StaticHeader::salvage(b).is_some()
}

/// Slot flag: `records`/`log_sum` are valid (slots written before this field existed have 0).
pub const SLOT_COUNTS: u32 = 0x1;
/// Slot flag: the writer closed the store cleanly; `closed_*` describe the whole log.
pub const SLOT_CLOSED: u32 = 0x2;

/// What a stretch of the log holds: the number of records and a running checksum over their
/// CRCs, so a file that was cut short, extended or altered disagrees with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogSum {
    pub records: u64,
    pub sum: u32,
}

impl LogSum {
    /// Adds one record (by its stored CRC).
    pub fn add(&mut self, crc: u32) {
        self.records += 1;
        self.sum = crc32c::crc32c_append(self.sum, &crc.to_le_bytes());
    }

    /// Adds records by their stored CRC fields, given as they are stored (4 bytes LE each,
    /// concatenated, in log order). One checksum call for the whole run: the log checksum is
    /// a CRC over exactly these bytes, so `add_crc_bytes(a ++ b)` equals `add(a)` then `add(b)`.
    // `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn add_crc_bytes(&mut self, crcs: &[u8]) {
        debug_assert!(crcs.len() % 4 == 0);
        self.records += (crcs.len() / 4) as u64;
        self.sum = crc32c::crc32c_append(self.sum, crcs);
    }

    /// Adds every record of `buf`, a run of complete, well-formed records.
    pub fn add_all(&mut self, mut buf: &[u8]) {
        let mut crcs = Vec::new();
        while let HeaderParse::Ok(h) = parse_header(buf) {
            crcs.extend_from_slice(&buf[..4]);
            let n = (h.total() as usize).min(buf.len());
            buf = &buf[n..];
        }
        self.add_crc_bytes(&crcs);
    }
}

/// A checkpoint slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    pub seq: u64,
    pub index_offset: u64,
    pub covers_end: u64,
    /// Records of `[LOG_START, covers_end)` (valid with `SLOT_COUNTS`).
    pub covers: LogSum,
    pub flags: u32,
    /// With `SLOT_CLOSED`: the log's end at a clean close, and what `[LOG_START, closed_end)`
    /// holds.
    pub closed_end: u64,
    pub closed: LogSum,
}

impl Slot {
    pub fn encode(&self) -> [u8; SLOT_LEN] {
        let mut b = [0u8; SLOT_LEN];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.index_offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.covers_end.to_le_bytes());
        b[24..32].copy_from_slice(&self.covers.records.to_le_bytes());
        b[32..36].copy_from_slice(&self.covers.sum.to_le_bytes());
        b[36..40].copy_from_slice(&self.flags.to_le_bytes());
        b[40..48].copy_from_slice(&self.closed_end.to_le_bytes());
        b[48..56].copy_from_slice(&self.closed.records.to_le_bytes());
        b[56..60].copy_from_slice(&self.closed.sum.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` if empty or damaged.
    pub fn decode(b: &[u8]) -> Option<Slot> {
        if b.len() < SLOT_LEN || u32le(&b[60..64]) != crc32c::crc32c(&b[0..60]) {
            return None;
        }
        let s = Slot {
            seq: u64le(&b[0..8]),
            index_offset: u64le(&b[8..16]),
            covers_end: u64le(&b[16..24]),
            covers: LogSum {
                records: u64le(&b[24..32]),
                sum: u32le(&b[32..36]),
            },
            flags: u32le(&b[36..40]),
            closed_end: u64le(&b[40..48]),
            closed: LogSum {
                records: u64le(&b[48..56]),
                sum: u32le(&b[56..60]),
            },
        };
        (s.seq != 0).then_some(s)
    }

    /// Whether the slot says the store was closed cleanly.
    pub fn is_closed(&self) -> bool {
        self.flags & SLOT_CLOSED != 0 && self.flags & SLOT_COUNTS != 0
    }

    /// Whether the counts are recorded.
    pub fn has_counts(&self) -> bool {
        self.flags & SLOT_COUNTS != 0
    }
}

pub fn u32le(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub fn u64le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint of at most `max_bytes`; `None` if incomplete or too long.
fn get_varint(b: &[u8], max_bytes: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(max_bytes) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Appends one record to `out`. Returns its length.
pub fn encode_record(out: &mut Vec<u8>, kind: u8, flags: u8, key: &[u8], value: &[u8]) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind, flags]);
    put_varint(out, key.len() as u64);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crate::crc::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Encoded length of a record without building it.
pub fn record_len(key_len: usize, val_len: usize) -> usize {
    fn vl(mut v: u64) -> usize {
        let mut n = 1;
        while v >= 0x80 {
            v >>= 7;
            n += 1;
        }
        n
    }
    6 + vl(key_len as u64) + vl(val_len as u64) + key_len + val_len
}

/// A parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecHeader {
    pub crc: u32,
    pub kind: u8,
    pub flags: u8,
    pub header_len: usize,
    pub key_len: u64,
    pub val_len: u64,
}

impl RecHeader {
    /// Total record length.
    pub fn total(&self) -> u64 {
        self.header_len as u64 + self.key_len + self.val_len
    }
}

/// Outcome of parsing a record header from a prefix of bytes.
#[derive(Debug)]
pub enum HeaderParse {
    Ok(RecHeader),
    /// Not enough bytes to decide.
    Incomplete,
    /// Cannot be a valid record header.
    Invalid(&'static str),
}

/// Parses a record header from `b` (which may be longer or shorter than the header).
pub fn parse_header(b: &[u8]) -> HeaderParse {
    if b.len() < 8 {
        // Could still be valid; but reject obviously bad kind/flags early.
        if b.len() >= 5 && !(K_PUT..=K_LAST).contains(&b[4]) {
            return HeaderParse::Invalid("unknown record kind");
        }
        if b.len() >= 6 && b[5] & !F_KNOWN != 0 {
            return HeaderParse::Invalid("unknown record flags");
        }
        return HeaderParse::Incomplete;
    }
    let kind = b[4];
    let flags = b[5];
    if !(K_PUT..=K_LAST).contains(&kind) {
        return HeaderParse::Invalid("unknown record kind");
    }
    if flags & !F_KNOWN != 0 {
        return HeaderParse::Invalid("unknown record flags");
    }
    let Some((key_len, n1)) = get_varint(&b[6..], 5) else {
        return if b.len() >= 6 + 5 {
            HeaderParse::Invalid("bad key length")
        } else {
            HeaderParse::Incomplete
        };
    };
    if key_len > u64::from(u32::MAX) {
        return HeaderParse::Invalid("bad key length");
    }
    let Some((val_len, n2)) = get_varint(&b[6 + n1..], 10) else {
        return if b.len() >= 6 + n1 + 10 {
            HeaderParse::Invalid("bad value length")
        } else {
            HeaderParse::Incomplete
        };
    };
    if val_len > MAX_OFFSET {
        return HeaderParse::Invalid("bad value length");
    }
    if kind != K_PUT && kind != K_DELETE && key_len != 0 {
        return HeaderParse::Invalid("metadata record with a key");
    }
    if kind == K_DELETE && val_len != 0 {
        return HeaderParse::Invalid("delete record with a value");
    }
    HeaderParse::Ok(RecHeader {
        crc: u32le(&b[0..4]),
        kind,
        flags,
        header_len: 6 + n1 + n2,
        key_len,
        val_len,
    })
}

/// Verifies a whole record's checksum; `rec` is exactly the record bytes.
pub fn verify(h: &RecHeader, rec: &[u8]) -> bool {
    crate::crc::crc32c(&rec[4..]) == h.crc
}

/// Checkpoint (INDEX record) payload header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexMeta {
    pub covers_end: u64,
    pub keys: u64,
    pub tombstones: u64,
    pub live_bytes: u64,
    pub raw_value_bytes: u64,
    pub stored_value_bytes: u64,
    pub log2_capacity: u8,
}

pub const INDEX_META_LEN: usize = 56;

impl IndexMeta {
    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.covers_end,
            self.keys,
            self.tombstones,
            self.live_bytes,
            self.raw_value_bytes,
            self.stored_value_bytes,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(self.log2_capacity);
        out.extend_from_slice(&[0u8; 7]);
    }

    pub fn decode(b: &[u8]) -> Option<IndexMeta> {
        if b.len() < INDEX_META_LEN || b[48] > 47 {
            return None;
        }
        Some(IndexMeta {
            covers_end: u64le(&b[0..]),
            keys: u64le(&b[8..]),
            tombstones: u64le(&b[16..]),
            live_bytes: u64le(&b[24..]),
            raw_value_bytes: u64le(&b[32..]),
            stored_value_bytes: u64le(&b[40..]),
            log2_capacity: b[48],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip() {
        let mut out = Vec::new();
        let n = encode_record(&mut out, K_PUT, F_CONT, b"key", &[7u8; 300]);
        assert_eq!(n, record_len(3, 300));
        let HeaderParse::Ok(h) = parse_header(&out) else {
            panic!("parse")
        };
        assert_eq!(h.total() as usize, n);
        assert!(verify(&h, &out));
        out[20] ^= 1;
        assert!(!verify(&h, &out));
    }

    #[test]
    fn log_sum_runs_equal_record_by_record() {
        let mut out = Vec::new();
        let mut one = LogSum::default();
        for i in 0..50u8 {
            let start = out.len();
            encode_record(&mut out, K_PUT, 0, &[i], &vec![i; i as usize]);
            one.add(u32le(&out[start..]));
        }
        let mut all = LogSum::default();
        all.add_all(&out);
        assert_eq!(all, one);
        assert_eq!(all.records, 50);
        let mut none = LogSum::default();
        none.add_all(&[]);
        assert_eq!(none, LogSum::default());
    }

    #[test]
    fn header_roundtrip() {
        let h = StaticHeader {
            value_encoding: ValueEncoding::Pickle { protocol: 5 },
            compression: Compression::ZstdDict { level: -3 },
            generation: 9,
            dict_offset: 4096,
            compact_offset: 0,
            compact_form: false,
        };
        let b = h.encode();
        assert_eq!(StaticHeader::version_of(&b), PLAIN_VERSION);
        assert_eq!(StaticHeader::decode(&b).unwrap().unwrap(), h);
        let h = StaticHeader {
            compact_offset: 9000,
            compact_form: true,
            ..h
        };
        let b = h.encode();
        assert_eq!(StaticHeader::decode(&b).unwrap().unwrap(), h);
        assert!(StaticHeader::decode(&b[..40]).is_err());
    }
}
