//! GDBM variants the C library on this machine cannot write (big-endian, 32-bit offsets, i386
//! struct layout) and Berkeley DB 1.85, made by hand from the format notes
//! (docs/legacy-formats.md): a native file written by libgdbm is re-laid out slot by slot,
//! records left where they are, then read back and compared with what libgdbm read from the
//! original. tests/fixtures/ keeps copies made this way from `gnu_small` (see its README);
//! `CELLAR_WRITE_FIXTURES=1 cargo test -p cellar-legacy --test variants` rewrites them.

mod common;

use std::collections::HashSet;
use std::path::Path;

use cellar_legacy::gdbm::Gdbm;
use cellar_legacy::{ByteOrder, Error, LegacyDb};
use common::{fixture, unhex};

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

struct Target {
    order: ByteOrder,
    off_size: usize,
    table_off: usize,
}

impl Target {
    fn put32(&self, out: &mut [u8], at: usize, v: u32) {
        let b = match self.order {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        };
        out[at..at + 4].copy_from_slice(&b);
    }
    fn put_off(&self, out: &mut [u8], at: usize, v: u64) {
        if self.off_size == 4 {
            self.put32(out, at, u32::try_from(v).unwrap());
        } else {
            let b = match self.order {
                ByteOrder::Little => v.to_le_bytes(),
                ByteOrder::Big => v.to_be_bytes(),
            };
            out[at..at + 8].copy_from_slice(&b);
        }
    }
    fn elem_size(&self) -> usize {
        if self.off_size == 8 {
            24
        } else {
            20
        }
    }
}

/// Re-lays out a GDBM file written by libgdbm on x86-64 (64-bit offsets, slot table at 112)
/// as `t`: header, directory and every bucket rewritten in place; each bucket's entries are
/// re-inserted at `hash % bucket_elems` with linear probing, as gdbm places them, since the
/// number of slots per bucket depends on the struct layout.
fn relayout(src: &[u8], t: &Target) -> Vec<u8> {
    assert_eq!(
        le32(src, 0),
        0x13579acf,
        "input must be a native 64-bit GDBM file"
    );
    let block_size = le32(src, 4);
    let dir = le64(src, 8);
    let dir_bits = le32(src, 20);
    let bucket_size = le32(src, 24) as usize;
    let elems = le32(src, 28) as usize;
    let next_block = le64(src, 32);
    let entries = 1usize << dir_bits;
    let es = t.elem_size();
    let new_elems = (bucket_size - (t.table_off + es)) / es + 1;
    let mut out = src.to_vec();
    // Header (the avail table that follows it is cleared: the reader never uses it).
    out[..block_size as usize].fill(0);
    let magic = if t.off_size == 8 {
        0x13579acf
    } else {
        0x13579acd
    };
    t.put32(&mut out, 0, magic);
    t.put32(&mut out, 4, block_size);
    t.put_off(&mut out, 8, dir);
    let p = 8 + t.off_size;
    t.put32(&mut out, p, (entries * t.off_size) as u32);
    t.put32(&mut out, p + 4, dir_bits);
    t.put32(&mut out, p + 8, bucket_size as u32);
    t.put32(&mut out, p + 12, new_elems as u32);
    t.put_off(&mut out, p + 16, next_block);
    // Directory.
    let addrs: Vec<u64> = (0..entries)
        .map(|i| le64(src, dir as usize + 8 * i))
        .collect();
    out[dir as usize..dir as usize + entries * 8].fill(0);
    for (i, &a) in addrs.iter().enumerate() {
        t.put_off(&mut out, dir as usize + i * t.off_size, a);
    }
    // Buckets.
    let mut seen = HashSet::new();
    for &a in &addrs {
        if !seen.insert(a) {
            continue;
        }
        let a = a as usize;
        let b = &src[a..a + bucket_size];
        let bits = le32(b, 104);
        let count = le32(b, 108);
        let mut slots: Vec<Option<[u8; 24]>> = vec![None; new_elems];
        for i in 0..elems {
            let e = 112 + 24 * i;
            let hash = le32(b, e);
            if hash == u32::MAX {
                continue;
            }
            let mut home = hash as usize % new_elems;
            while slots[home].is_some() {
                home = (home + 1) % new_elems;
            }
            slots[home] = Some(b[e..e + 24].try_into().unwrap());
        }
        let nb = &mut out[a..a + bucket_size];
        nb.fill(0);
        t.put32(nb, t.table_off - 8, bits);
        t.put32(nb, t.table_off - 4, count);
        for (i, s) in slots.iter().enumerate() {
            let e = t.table_off + es * i;
            match s {
                None => {
                    t.put32(nb, e, u32::MAX);
                }
                Some(el) => {
                    t.put32(nb, e, le32(el, 0));
                    nb[e + 4..e + 8].copy_from_slice(&el[4..8]);
                    t.put_off(nb, e + 8, le64(el, 8));
                    t.put32(nb, e + 8 + t.off_size, le32(el, 16));
                    t.put32(nb, e + 12 + t.off_size, le32(el, 20));
                }
            }
        }
    }
    out
}

const VARIANTS: [(&str, ByteOrder, usize, usize); 4] = [
    ("gdbm-be64", ByteOrder::Big, 8, 112),
    ("gdbm-le32", ByteOrder::Little, 4, 60),
    ("gdbm-i386-lfs", ByteOrder::Little, 8, 84),
    ("gdbm-be32", ByteOrder::Big, 4, 60),
];

fn read_all(db: &Gdbm) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<_> = db.iter().collect::<Result<_, _>>().unwrap();
    v.sort();
    v
}

#[test]
fn relaid_out_gdbm_files_read_like_the_original() {
    for name in [
        "gnu_small",
        "gnu_binary",
        "gnu_churn",
        "gnu_bigval",
        "gnu_empty",
    ] {
        let Some(f) = fixture(name) else { return };
        let src = std::fs::read(&f.file).unwrap();
        let want = f.pairs();
        for (label, order, off_size, table_off) in VARIANTS {
            let t = Target {
                order,
                off_size,
                table_off,
            };
            let bytes = relayout(&src, &t);
            let db = Gdbm::from_bytes(bytes).unwrap_or_else(|e| panic!("{name} {label}: {e}"));
            let info = db.describe();
            assert_eq!(info.byte_order, order, "{name} {label}");
            assert_eq!(info.offset_bits as usize, off_size * 8, "{name} {label}");
            assert!(read_all(&db) == want, "{name} {label}: pairs differ");
            for (k, v) in &want {
                assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "{name} {label} get");
            }
            assert!(db.check().is_ok(), "{name} {label}: {:?}", db.check());
            if name == "gnu_small" && std::env::var("CELLAR_WRITE_FIXTURES").is_ok() {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
                std::fs::write(dir.join(label), relayout(&src, &t)).unwrap();
                std::fs::copy(f.dir.join("gnu_small.pairs"), dir.join("gnu_small.pairs")).unwrap();
            }
        }
    }
}

#[test]
fn committed_variant_fixtures_read() {
    // Independent of the C library: these files are in the repository.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text = std::fs::read_to_string(dir.join("gnu_small.pairs")).unwrap();
    let want: Vec<(Vec<u8>, Vec<u8>)> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (unhex(k), unhex(v))
        })
        .collect();
    for (label, order, off_size, _) in VARIANTS {
        let db = match LegacyDb::open(dir.join(label)).unwrap() {
            LegacyDb::Gdbm(g) => g,
            other => panic!("{label}: opened as {other:?}"),
        };
        assert_eq!(db.describe().byte_order, order);
        assert_eq!(db.describe().offset_bits as usize, off_size * 8);
        assert!(read_all(&db) == want, "{label}");
        assert_eq!(
            db.get(b"test key").unwrap().as_deref(),
            Some(&b"test data"[..])
        );
    }
}

#[test]
fn bdb_185_is_recognised_and_refused() {
    // A Berkeley DB 1.85 hash header (macOS ndbm): magic, version 2, lorder, bsize...
    for order in [ByteOrder::Little, ByteOrder::Big] {
        let mut h = vec![0u8; 4096];
        let put = |h: &mut Vec<u8>, at: usize, v: u32| {
            let b = match order {
                ByteOrder::Little => v.to_le_bytes(),
                ByteOrder::Big => v.to_be_bytes(),
            };
            h[at..at + 4].copy_from_slice(&b);
        };
        put(&mut h, 0, 0x061561);
        put(&mut h, 4, 2);
        put(
            &mut h,
            8,
            if order == ByteOrder::Little {
                1234
            } else {
                4321
            },
        );
        put(&mut h, 12, 4096);
        let e = cellar_legacy::bdb::Bdb::from_bytes(h).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("Berkeley DB 1.85"), "{e}");
    }
}

#[test]
fn real_foreign_libgdbm_files_read() {
    // Written by Debian's libgdbm 1.23 on other architectures: i386 through its loader
    // (tests/fixtures/make-i386.sh: 64-bit off_t with the slot table at 84, 32-bit off_t from
    // gdbm_load-nolfs), s390x (big-endian) and armhf (unsigned char, 8-byte alignment) under
    // qemu-user (make-foreign.sh); numsync copies upgraded by each one's gdbmtool.
    use ByteOrder::{Big, Little};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cases = [
        ("i386-lfs-small", "i386-small.pairs", 64, false, Little),
        ("i386-nolfs-small", "i386-small.pairs", 32, false, Little),
        ("i386-lfs-binary", "i386-binary.pairs", 64, false, Little),
        ("i386-nolfs-binary", "i386-binary.pairs", 32, false, Little),
        (
            "i386-lfs-numsync-small",
            "i386-small.pairs",
            64,
            true,
            Little,
        ),
        ("s390x-small", "i386-small.pairs", 64, false, Big),
        ("s390x-binary", "i386-binary.pairs", 64, false, Big),
        ("s390x-numsync-small", "i386-small.pairs", 64, true, Big),
        ("armhf-lfs-small", "i386-small.pairs", 64, false, Little),
        ("armhf-lfs-binary", "i386-binary.pairs", 64, false, Little),
        (
            "armhf-lfs-numsync-small",
            "i386-small.pairs",
            64,
            true,
            Little,
        ),
        ("armhf-nolfs-small", "i386-small.pairs", 32, false, Little),
        ("armhf-nolfs-binary", "i386-binary.pairs", 32, false, Little),
        (
            "armhf-nolfs-numsync-small",
            "i386-small.pairs",
            32,
            true,
            Little,
        ),
    ];
    for (file, pairs, bits, numsync, order) in cases {
        let text = std::fs::read_to_string(dir.join(pairs)).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = text
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (unhex(k), unhex(v))
            })
            .collect();
        assert!(want.len() > 20, "{pairs}");
        let db = Gdbm::open(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let info = db.describe();
        assert_eq!(info.offset_bits, bits, "{file}");
        assert_eq!(info.numsync.is_some(), numsync, "{file}");
        assert_eq!(info.byte_order, order, "{file}");
        assert!(read_all(&db) == want, "{file}: pairs differ from libgdbm's");
        for (k, v) in &want {
            assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "{file}: get {k:02x?}");
        }
        assert!(db.check().is_ok(), "{file}: {:?}", db.check());
    }
}
