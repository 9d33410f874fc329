//! Where the bytes come from: the whole file in memory (small files, fuzzing) or positioned
//! reads on an open file (large files). Every read is checked against the file size first, so a
//! lying length can never make a reader allocate more than the file holds.

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Files up to this size are read into memory at open (one read, then no system calls).
pub const IN_MEMORY_LIMIT: u64 = 256 << 20;

#[derive(Debug)]
pub(crate) enum Source {
    Mem(Vec<u8>),
    File { file: File, len: u64, path: PathBuf },
}

/// Byte order of a file's integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// Least significant byte first (x86, most ARM).
    Little,
    /// Most significant byte first (SPARC, POWER, s390x, old MIPS).
    Big,
}

impl ByteOrder {
    /// The byte order of the machine running this code.
    pub const NATIVE: ByteOrder = if cfg!(target_endian = "big") {
        ByteOrder::Big
    } else {
        ByteOrder::Little
    };

    /// `"little-endian"` / `"big-endian"`.
    pub fn name(self) -> &'static str {
        match self {
            ByteOrder::Little => "little-endian",
            ByteOrder::Big => "big-endian",
        }
    }

    pub(crate) fn u16(self, b: &[u8], at: usize) -> u16 {
        let a = [b[at], b[at + 1]];
        match self {
            ByteOrder::Little => u16::from_le_bytes(a),
            ByteOrder::Big => u16::from_be_bytes(a),
        }
    }

    pub(crate) fn u32(self, b: &[u8], at: usize) -> u32 {
        let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        match self {
            ByteOrder::Little => u32::from_le_bytes(a),
            ByteOrder::Big => u32::from_be_bytes(a),
        }
    }

    pub(crate) fn i32(self, b: &[u8], at: usize) -> i32 {
        self.u32(b, at) as i32
    }

    pub(crate) fn u64(self, b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        match self {
            ByteOrder::Little => u64::from_le_bytes(a),
            ByteOrder::Big => u64::from_be_bytes(a),
        }
    }
}

impl Source {
    pub(crate) fn open(path: &Path, in_memory_limit: u64) -> Result<Source> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len <= in_memory_limit {
            let mut data = Vec::with_capacity(len as usize);
            (&file).take(len).read_to_end(&mut data).map_err(io)?;
            return Ok(Source::Mem(data));
        }
        Ok(Source::File {
            file,
            len,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            Source::Mem(d) => d.len() as u64,
            Source::File { len, .. } => *len,
        }
    }

    /// `len` bytes at `off`, or a [`Error::Corrupt`] naming `what` when they lie beyond the end
    /// of the file.
    pub(crate) fn read(
        &self,
        format: &'static str,
        off: u64,
        len: u64,
        what: &str,
    ) -> Result<Cow<'_, [u8]>> {
        let past_end = match off.checked_add(len) {
            Some(end) => end > self.len(),
            None => true,
        };
        if past_end {
            return Err(Error::corrupt(
                format,
                off,
                format!(
                    "{what} ({len} bytes) runs past the end of the file ({} bytes)",
                    self.len()
                ),
            ));
        }
        match self {
            Source::Mem(d) => Ok(Cow::Borrowed(&d[off as usize..(off + len) as usize])),
            Source::File { file, path, .. } => {
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, off)
                    .map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                Ok(Cow::Owned(buf))
            }
        }
    }
}
