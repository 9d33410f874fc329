//! Sequential reading of the record log: a buffered reader that yields validated records, the
//! resynchronising search for intact records after damage (torn tail vs. damage decision, and
//! `repair`), and random-access record reads for lookups.

use crate::error::{Error, Result};
use crate::format::{
    parse_header, verify, HeaderParse, RecHeader, F_CONT, K_SUPERSEDED, MAX_REC_HEADER,
};
use crate::storage::Storage;

const WINDOW: usize = 1 << 20;

/// What the reader found at its position.
pub enum Next<'a> {
    /// An intact record: offset, header and its complete bytes.
    Rec(u64, RecHeader, &'a [u8]),
    /// Clean end of the log.
    End,
    /// The bytes at `offset` are not an intact record.
    Bad { offset: u64, reason: &'static str },
}

/// Buffered sequential reader over `[pos, end)`.
pub struct LogReader<'s> {
    st: &'s dyn Storage,
    pub pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_off: u64,
}

impl<'s> LogReader<'s> {
    pub fn new(st: &'s dyn Storage, pos: u64, end: u64) -> LogReader<'s> {
        LogReader {
            st,
            pos,
            end,
            buf: Vec::new(),
            buf_off: 0,
        }
    }

    /// `len` bytes at `off`; `None` if the file is shorter than `end` said (a reader whose file
    /// was cut back by the writer, e.g. its preallocated zeros trimmed): the caller treats it
    /// as the end of the log.
    fn window(&mut self, off: u64, len: usize) -> Result<Option<&[u8]>> {
        let have = off >= self.buf_off && off + len as u64 <= self.buf_off + self.buf.len() as u64;
        if !have {
            let want = (len.max(WINDOW) as u64).min(self.end - off) as usize;
            let want = want.max(len);
            self.buf.resize(want, 0);
            match self.st.read_at(off, &mut self.buf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // Re-read what is there now: a shorter window, or nothing.
                    let now = self.st.len().unwrap_or(off);
                    self.buf.clear();
                    self.buf_off = off;
                    self.end = self.end.min(now.max(off));
                    if now < off + len as u64 {
                        return Ok(None);
                    }
                    let want = ((now - off) as usize).min(WINDOW.max(len));
                    self.buf.resize(want, 0);
                    if self.st.read_at(off, &mut self.buf).is_err() {
                        self.buf.clear();
                        return Ok(None);
                    }
                }
                Err(e) => return Err(Error::io(format!("reading the log at offset {off}"), e)),
            }
            self.buf_off = off;
        }
        let s = (off - self.buf_off) as usize;
        Ok(Some(&self.buf[s..s + len]))
    }

    /// Tries to read an intact record at `off` without moving.
    pub fn record_at(&mut self, off: u64) -> Result<Next<'_>> {
        if off >= self.end {
            return Ok(Next::End);
        }
        let avail = self.end - off;
        let hlen = (MAX_REC_HEADER as u64).min(avail) as usize;
        let Some(hb) = self.window(off, hlen)? else {
            return Ok(Next::End);
        };
        let h = match parse_header(hb) {
            HeaderParse::Ok(h) => h,
            HeaderParse::Incomplete => {
                return Ok(Next::Bad {
                    offset: off,
                    reason: "incomplete record header at end of file",
                })
            }
            HeaderParse::Invalid(reason) => {
                return Ok(Next::Bad {
                    offset: off,
                    reason,
                })
            }
        };
        if h.total() > avail {
            return Ok(Next::Bad {
                offset: off,
                reason: "record extends past end of file",
            });
        }
        let Some(rec) = self.window(off, h.total() as usize)? else {
            return Ok(Next::Bad {
                offset: off,
                reason: "record extends past end of file",
            });
        };
        if !verify(&h, rec) {
            return Ok(Next::Bad {
                offset: off,
                reason: "record checksum mismatch",
            });
        }
        let Some(rec) = self.window(off, h.total() as usize)? else {
            return Ok(Next::End);
        };
        Ok(Next::Rec(off, h, rec))
    }

    /// Reads the record at the current position and advances past it if intact.
    pub fn next_record(&mut self) -> Result<Next<'_>> {
        let pos = self.pos;
        let total = match self.record_at(pos)? {
            Next::Rec(_, h, _) => h.total(),
            Next::End => return Ok(Next::End),
            Next::Bad { offset, reason } => return Ok(Next::Bad { offset, reason }),
        };
        self.pos = pos + total;
        self.record_at(pos)
    }

    /// The first offset in `(from, end)` where an intact record starts; with `committed_only`
    /// only records that end a commit (no CONT flag, not a SUPERSEDED marker) count.
    pub fn find_intact(&mut self, from: u64, committed_only: bool) -> Result<Option<u64>> {
        let mut off = from + 1;
        while off < self.end {
            // Fast skip over zero runs: a record's kind byte (offset 4) is never zero.
            let probe = off + 4;
            if probe < self.end {
                let n = ((self.end - probe) as usize).min(WINDOW);
                let Some(w) = self.window(probe, n)? else {
                    break;
                };
                match w.iter().position(|&b| b != 0) {
                    Some(0) => {}
                    Some(i) => {
                        off += i as u64;
                        continue;
                    }
                    None => {
                        off += n as u64;
                        continue;
                    }
                }
            } else {
                break;
            }
            if let Next::Rec(_, h, _) = self.record_at(off)? {
                if !committed_only || (h.flags & F_CONT == 0 && h.kind != K_SUPERSEDED) {
                    return Ok(Some(off));
                }
            }
            off += 1;
        }
        Ok(None)
    }
}

impl LogReader<'_> {
    /// Counts the intact records in `(from, end)`, resynchronising after every damaged region;
    /// also says whether one of them ends a commit (which proves that `from` is not inside a
    /// torn tail: a commit is only ever appended after the previous one was written whole).
    pub fn intact_after(&mut self, from: u64) -> Result<(u64, bool)> {
        let mut n = 0u64;
        let mut committed = false;
        let Some(first) = self.find_intact(from, false)? else {
            return Ok((0, false));
        };
        self.pos = first;
        loop {
            match self.next_record()? {
                Next::End => break,
                Next::Rec(_, h, _) => {
                    n += 1;
                    if h.flags & F_CONT == 0 && h.kind != K_SUPERSEDED {
                        committed = true;
                    }
                }
                Next::Bad { offset, .. } => match self.find_intact(offset, false)? {
                    Some(o) => self.pos = o,
                    None => break,
                },
            }
        }
        Ok((n, committed))
    }
}

/// Reads and parses the header of the record at `off` (random access). `limit` is the end of
/// the readable region.
pub fn read_header(st: &dyn Storage, off: u64, limit: u64) -> Result<(RecHeader, [u8; 21])> {
    let mut b = [0u8; MAX_REC_HEADER];
    let n = (MAX_REC_HEADER as u64).min(limit.saturating_sub(off)) as usize;
    st.read_at(off, &mut b[..n])
        .map_err(|e| Error::io(format!("reading record at offset {off}"), e))?;
    match parse_header(&b[..n]) {
        HeaderParse::Ok(h) if off + h.total() <= limit => Ok((h, b)),
        HeaderParse::Ok(_) => Err(Error::corrupt(
            off,
            "indexed record extends past end of log",
        )),
        HeaderParse::Incomplete => Err(Error::corrupt(off, "indexed record is incomplete")),
        HeaderParse::Invalid(r) => Err(Error::corrupt(off, r)),
    }
}

/// Reads a whole record at `off` and verifies its checksum; returns header and key+value bytes.
pub fn read_record(st: &dyn Storage, off: u64, limit: u64) -> Result<(RecHeader, Vec<u8>)> {
    let (h, hb) = read_header(st, off, limit)?;
    let body_len = usize::try_from(h.key_len + h.val_len)
        .map_err(|_| Error::corrupt(off, "record too large for this platform"))?;
    let mut body = vec![0u8; body_len];
    st.read_at(off + h.header_len as u64, &mut body)
        .map_err(|e| Error::io(format!("reading record at offset {off}"), e))?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&hb[4..h.header_len]), &body);
    if crc != h.crc {
        return Err(Error::corrupt(off, "record checksum mismatch"));
    }
    Ok((h, body))
}
