//! Value compression: zstd frames, optionally with a dictionary trained from the store's own
//! values (stored as the file's DICT record). Contexts are cached per thread.

use std::cell::RefCell;

use zstd::zstd_safe::{CCtx, CDict, DCtx, DDict};

use crate::error::{Error, Result};
use crate::format::{F_DICT, F_ZSTD, MAX_VALUE};

/// Values shorter than this are never compressed.
pub const MIN_COMPRESS: usize = 64;

thread_local! {
    static CCTX: RefCell<CCtx<'static>> = RefCell::new(CCtx::create());
    static DCTX: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
}

/// Compression state of one file generation.
pub struct Codec {
    level: Option<i32>,
    cdict: Option<CDict<'static>>,
    ddict: Option<DDict<'static>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("level", &self.level)
            .field("dict", &self.ddict.is_some())
            .finish()
    }
}

impl Codec {
    /// A codec compressing at `level` (None = store values raw), with an optional dictionary.
    pub fn new(level: Option<i32>, dict: Option<&[u8]>) -> Codec {
        let (cdict, ddict) = match dict {
            Some(d) => (
                Some(CDict::create(d, level.unwrap_or(3))),
                Some(DDict::create(d)),
            ),
            None => (None, None),
        };
        Codec {
            level,
            cdict,
            ddict,
        }
    }

    /// Can read dictionary-compressed values.
    pub fn has_dict(&self) -> bool {
        self.ddict.is_some()
    }

    /// Compresses `v` if that makes it smaller. Returns the flags to store with it.
    pub fn compress(&self, v: &[u8], out: &mut Vec<u8>) -> Option<u8> {
        let level = self.level?;
        if v.len() < MIN_COMPRESS {
            return None;
        }
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(v.len()));
        let flags = CCTX.with(|c| {
            let mut c = c.borrow_mut();
            match &self.cdict {
                Some(cd) => c
                    .compress_using_cdict(out, v, cd)
                    .ok()
                    .map(|_| F_ZSTD | F_DICT),
                None => c.compress(out, v, level).ok().map(|_| F_ZSTD),
            }
        })?;
        (out.len() < v.len()).then_some(flags)
    }

    /// Decompresses a stored value.
    pub fn decompress(&self, flags: u8, data: &[u8], offset: u64) -> Result<Vec<u8>> {
        let size = match zstd::zstd_safe::get_frame_content_size(data) {
            Ok(Some(n)) if n <= MAX_VALUE => n as usize,
            _ => return Err(Error::corrupt(offset, "bad zstd frame header")),
        };
        let mut out = Vec::with_capacity(size);
        let r = DCTX.with(|d| {
            let mut d = d.borrow_mut();
            if flags & F_DICT != 0 {
                match &self.ddict {
                    Some(dd) => d.decompress_using_ddict(&mut out, data, dd),
                    None => Err(0),
                }
            } else {
                d.decompress(&mut out, data)
            }
        });
        match r {
            Ok(n) if n == size => Ok(out),
            _ => Err(Error::corrupt(offset, "zstd frame does not decompress")),
        }
    }
}

/// Trains a dictionary from sample values (None if zstd declines, e.g. too few samples).
pub fn train(samples: &[Vec<u8>]) -> Option<Vec<u8>> {
    if samples.len() < 16 {
        return None;
    }
    let total: usize = samples.iter().map(Vec::len).sum();
    let size = (total / 20).clamp(4096, 112 * 1024);
    zstd::dict::from_samples(samples, size).ok()
}
