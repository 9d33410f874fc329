//! The dumb backend, file-compatible with CPython's `dbm.dumb`, made crash safe.
//!
//! Files, for a database named `f`:
//! * `f.dat` — values, each starting on a 512-byte boundary, the gap NUL padded.
//! * `f.dir` — Latin-1 text, one line per key: `repr(key.decode('latin-1')) + ", " +
//!   repr((pos, size)) + "\n"`. Read with [`cellar_value::parse`], never evaluated; trailing
//!   whitespace stripped, the last duplicate wins (as CPython reads it).
//! * `f.bak` — the previous `.dir`, left by a commit.
//!
//! Writes follow CPython (a new key's value is appended; an overwrite reuses the old blocks if
//! it fits, else appends) with one change: every change of a key's `(pos, size)` also appends
//! the key's index line to `.dir` before returning, so a write acknowledged before a crash is
//! found by cellar and by CPython alike. A commit (sync, close, delete) writes the compact
//! index to `f.dir.new` and renames it over `f.dir` after hard-linking the old one to `f.bak`:
//! the same end state as CPython's unlink/rename/write, with a complete `.dir` at every instant.
//!
//! Compaction (`compact()`) writes the live values packed into `f.dat.compact` and their index
//! into `f.dir.compact.tmp`, syncs both, and commits by renaming the latter to `f.dir.compact`;
//! it then renames `f.dat.compact` over `f.dat` and `f.dir.compact` over `f.dir`. An open that
//! finds `f.dir.compact` finishes those renames (a read-only open reads the compacted pair in
//! place); one that finds only `f.dir.compact.tmp` removes the unfinished files.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cellar_value::{PyStr, Value};
use indexmap::IndexMap;

use crate::error::{DbmError, Result};
use crate::flag::{Access, Flag};
use crate::whichdb::with_suffix;
use crate::{perm, Backend, Batch, Database, Info, ItemFn};

/// Where the dumb backend puts an overwritten value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// In place only when the new value has exactly the old size (one `pwrite`, the index line
    /// unchanged), else appended. A crash between writing a value and appending its index line
    /// can then never mix a new value with an old size: the default.
    #[default]
    Safe,
    /// CPython's rule: in place whenever the new value fits in the old 512-byte blocks. Files
    /// are byte-identical to CPython's, but a crash between the in-place write and the index
    /// line leaves that key reading as a mix of old and new bytes.
    CPython,
}

impl Placement {
    fn in_place(self, old: u64, new: u64) -> bool {
        match self {
            Placement::Safe => old == new,
            Placement::CPython => blocks(new) <= blocks(old),
        }
    }
}

/// dbm.dumb's block size.
pub const BLOCK: u64 = 512;

pub(crate) fn bad_flag(s: &str) -> DbmError {
    DbmError::BadFlag {
        flag: s.to_string(),
        message: "Flag must be one of 'r', 'w', 'c', or 'n'".to_string(),
    }
}

fn blocks(n: u64) -> u64 {
    n.div_ceil(BLOCK)
}

/// One index line, exactly as CPython writes it (Latin-1 bytes).
pub(crate) fn index_line(key: &[u8], pos: u64, size: u64) -> Vec<u8> {
    let s = format!(
        "{}, ({pos}, {size})\n",
        cellar_value::str_repr(&PyStr::from_latin1(key))
    );
    // The repr of a Latin-1 string only holds code points <= 0xFF.
    s.chars().map(|c| c as u32 as u8).collect()
}

/// Python's `str.isspace()` within Latin-1 (what `str.rstrip()` strips).
fn is_py_space(c: u8) -> bool {
    matches!(
        c,
        b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f | b' ' | 0x85 | 0xa0
    )
}

fn int_of(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => i.to_i64().and_then(|n| u64::try_from(n).ok()),
        Value::Bool(b) => Some(*b as u64),
        _ => None,
    }
}

/// Parses one stripped `.dir` line into `(key, pos, size)`.
fn parse_line(line: &[u8]) -> std::result::Result<(Vec<u8>, u64, u64), String> {
    let text: String = line.iter().map(|&b| b as char).collect();
    // CPython's literal_eval sees `'k', (p, s)` as a tuple display; our parser takes one
    // literal, so parenthesise it (a bare line parses to the same tuple either way).
    let v = match cellar_value::parse(&format!("({text}\n)")) {
        Ok(v) => v,
        Err(_) => cellar_value::parse(&text).map_err(|e| e.to_string())?,
    };
    let items = match &v {
        Value::Tuple(t) | Value::List(t) if t.len() == 2 => t.clone(),
        _ => return Err("expected `key, (pos, size)`".to_string()),
    };
    let key = match &items[0] {
        Value::Str(s) => {
            let mut k = Vec::with_capacity(s.len());
            for cp in s.code_points() {
                if cp > 0xFF {
                    return Err("the key is not Latin-1 (code point above U+00FF)".to_string());
                }
                k.push(cp as u8);
            }
            k
        }
        _ => return Err("the key is not a str literal".to_string()),
    };
    let pair = match &items[1] {
        Value::Tuple(t) | Value::List(t) if t.len() == 2 => t.clone(),
        _ => return Err("the position is not a (pos, size) pair".to_string()),
    };
    match (int_of(&pair[0]), int_of(&pair[1])) {
        (Some(p), Some(s)) => Ok((key, p, s)),
        _ => Err("pos and size must be non-negative integers".to_string()),
    }
}

type Index = IndexMap<Vec<u8>, (u64, u64)>;

/// Reads a `.dir` file. Returns the index and whether a torn (newline-less, unparseable) last
/// line was dropped.
fn read_dir_file(path: &Path, data: &[u8]) -> Result<(Index, bool)> {
    let mut index = Index::new();
    let mut torn = false;
    let mut start = 0;
    let mut lineno = 0;
    while start < data.len() {
        lineno += 1;
        // Universal newlines, as CPython's text-mode reader: \n, \r\n or \r.
        let (end, next, terminated) =
            match data[start..].iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    let e = start + i;
                    let n = if data[e] == b'\r' && data.get(e + 1) == Some(&b'\n') {
                        e + 2
                    } else {
                        e + 1
                    };
                    (e, n, true)
                }
                None => (data.len(), data.len(), false),
            };
        let mut line = &data[start..end];
        while let Some((&last, rest)) = line.split_last() {
            if is_py_space(last) {
                line = rest;
            } else {
                break;
            }
        }
        match parse_line(line) {
            Ok((k, p, s)) => {
                index.insert(k, (p, s));
            }
            Err(_) if !terminated => torn = true,
            Err(msg) => {
                return Err(DbmError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!(
                    "line {lineno} of the dbm.dumb index is not `'key', (pos, size)`: {msg}: {}",
                    cellar_value::bytes_repr(&data[start..end])
                ),
                })
            }
        }
        start = next;
    }
    Ok((index, torn))
}

#[derive(Debug)]
struct State {
    dat: File,
    dat_len: u64,
    index: Index,
    dir_append: Option<File>,
    modified: bool,
}

/// A dbm.dumb database.
#[derive(Debug)]
pub(crate) struct DumbDb {
    path: PathBuf,
    dat_path: PathBuf,
    dir_path: PathBuf,
    bak_path: PathBuf,
    /// Where compaction writes the packed values and (`dir_compact_tmp`, renamed to
    /// `dir_compact` as the commit point) their index.
    dat_compact: PathBuf,
    dir_compact: PathBuf,
    dir_compact_tmp: PathBuf,
    mode: u32,
    read_only: bool,
    placement: Placement,
    state: Mutex<Option<State>>,
}

fn io_ctx(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> DbmError {
    let ctx = format!("{what} {}", p.display());
    move |e| DbmError::io(ctx, e)
}

fn not_a_file(p: &Path) -> Result<()> {
    match fs::metadata(p) {
        Ok(md) if md.is_dir() => Err(DbmError::io(
            format!("opening {}", p.display()),
            std::io::Error::from_raw_os_error(rustix::io::Errno::ISDIR.raw_os_error()),
        )),
        _ => Ok(()),
    }
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn sync_parent(p: &Path) {
    if let Some(parent) = p.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
}

/// The files of a compaction of the store `path`: (packed values, committed index, index
/// being written).
fn compaction_paths(path: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        with_suffix(path, ".dat.compact"),
        with_suffix(path, ".dir.compact"),
        with_suffix(path, ".dir.compact.tmp"),
    )
}

/// Brings a store left by an interrupted compaction to a consistent state before it is read,
/// for a writable open: a committed compaction (its index renamed to `.dir.compact`) is
/// finished, an uncommitted one removed. Returns nothing to do for read-only opens, which
/// read the committed pair where it lies (see [`DumbDb::open`]).
fn recover_compaction(path: &Path, dat: &Path, dir: &Path, bak: &Path) -> Result<()> {
    let (dat_c, dir_c, dir_c_tmp) = compaction_paths(path);
    if exists(&dir_c) {
        if exists(&dat_c) {
            fs::rename(&dat_c, dat)
                .map_err(io_ctx("finishing the compaction: renaming", &dat_c))?;
        }
        let _ = fs::remove_file(bak);
        if fs::hard_link(dir, bak).is_err() {
            let _ = fs::copy(dir, bak);
        }
        fs::rename(&dir_c, dir).map_err(io_ctx("finishing the compaction: renaming", &dir_c))?;
        sync_parent(dir);
    }
    for p in [&dir_c_tmp, &dat_c] {
        match fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_ctx("removing the unfinished compaction file", p)(e)),
        }
    }
    Ok(())
}

impl DumbDb {
    pub(crate) fn open(path: &Path, flag: Flag, mode: u32, placement: Placement) -> Result<DumbDb> {
        if flag.has_modifiers() {
            return Err(bad_flag(&flag.to_string()));
        }
        let dat_path = with_suffix(path, ".dat");
        let dir_path = with_suffix(path, ".dir");
        let bak_path = with_suffix(path, ".bak");
        let access = flag.access();
        let creating = matches!(access, Access::Create | Access::New);
        let read_only = access == Access::Read;
        let (dat_compact, dir_compact, dir_compact_tmp) = compaction_paths(path);
        if access == Access::New {
            for p in [
                &dat_path,
                &bak_path,
                &dir_path,
                &dat_compact,
                &dir_compact,
                &dir_compact_tmp,
            ] {
                let _ = fs::remove_file(p);
            }
        }
        not_a_file(&dat_path)?;
        not_a_file(&dir_path)?;
        // Where this open reads values and index from: normally `.dat`/`.dir`; for a read-only
        // open of a store whose committed compaction was not finished, the compacted pair.
        let (mut read_dat, mut read_dir) = (dat_path.clone(), dir_path.clone());
        if read_only {
            if exists(&dir_compact) {
                read_dir = dir_compact.clone();
                if exists(&dat_compact) {
                    read_dat = dat_compact.clone();
                }
            }
        } else if exists(&dir_compact) || exists(&dir_compact_tmp) || exists(&dat_compact) {
            recover_compaction(path, &dat_path, &dir_path, &bak_path)?;
        }
        let dat = match OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&read_dat)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound && creating => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(mode & 0o7777)
                    .open(&dat_path)
                    .map_err(io_ctx("creating", &dat_path))?;
                perm::apply_file(&f, &dat_path, mode)?;
                f
            }
            Err(e) => return Err(io_ctx("opening", &read_dat)(e)),
        };
        let dat_len = dat
            .metadata()
            .map_err(io_ctx("reading the size of", &read_dat))?
            .len();
        let (index, modified) = match fs::read(&read_dir) {
            Ok(data) => read_dir_file(&read_dir, &data)?,
            Err(e) if e.kind() == ErrorKind::NotFound && creating => (Index::new(), true),
            Err(e) => return Err(io_ctx("reading", &read_dir)(e)),
        };
        for (k, &(pos, size)) in &index {
            let fits = matches!(pos.checked_add(size), Some(end) if end <= dat_len);
            if !fits {
                return Err(DbmError::Corrupt {
                    path: read_dat.clone(),
                    message: format!(
                        "the data file is truncated: the index puts key {} at ({pos}, {size}) \
                         but the file has {dat_len} bytes",
                        cellar_value::bytes_repr(k)
                    ),
                });
            }
        }
        let db = DumbDb {
            path: path.to_path_buf(),
            dat_path,
            dir_path,
            bak_path,
            dat_compact,
            dir_compact,
            dir_compact_tmp,
            mode,
            read_only,
            placement,
            state: Mutex::new(Some(State {
                dat,
                dat_len,
                index,
                dir_append: None,
                modified,
            })),
        };
        if modified && !read_only {
            // A new database (or one whose torn last index line was dropped): write its
            // `.dir` now, so `whichdb` recognises it even if this process dies.
            let mut g = db.lock();
            if let Some(st) = g.as_mut() {
                db.commit(st, false)?;
            }
        }
        Ok(db)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<State>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut g = self.lock();
        match g.as_mut() {
            Some(st) => f(st),
            None => Err(DbmError::Closed),
        }
    }

    fn with_writable<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        self.with(|st| {
            if self.read_only {
                return Err(DbmError::ReadOnly);
            }
            f(st)
        })
    }

    /// Appends `vals` (each on a block boundary) to `.dat` in one write; returns positions.
    fn append_values(&self, st: &mut State, vals: &[&[u8]]) -> Result<Vec<(u64, u64)>> {
        let start = st.dat_len;
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(vals.len());
        let mut end = start;
        for v in vals {
            let pos = blocks(end) * BLOCK;
            buf.resize(buf.len() + (pos - end) as usize, 0);
            buf.extend_from_slice(v);
            end = pos + v.len() as u64;
            out.push((pos, v.len() as u64));
        }
        if let Err(e) = st.dat.write_all_at(&buf, start) {
            if let Ok(md) = st.dat.metadata() {
                st.dat_len = md.len();
            }
            return Err(io_ctx("appending to", &self.dat_path)(e));
        }
        st.dat_len = end;
        Ok(out)
    }

    fn append_lines(&self, st: &mut State, lines: &[u8]) -> Result<()> {
        if st.dir_append.is_none() {
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(self.mode & 0o7777)
                .open(&self.dir_path)
                .map_err(io_ctx("opening", &self.dir_path))?;
            perm::apply_file(&f, &self.dir_path, self.mode)?;
            st.dir_append = Some(f);
        }
        if let Some(f) = st.dir_append.as_mut() {
            // One write(2) of whole lines on an O_APPEND descriptor.
            f.write_all(lines)
                .map_err(io_ctx("appending to", &self.dir_path))?;
        }
        Ok(())
    }

    /// CPython's `_commit`, made atomic: fresh `.dir` via a temporary file and a rename, the
    /// old one kept as `.bak`. `durable` adds fsyncs (sync/close).
    fn commit(&self, st: &mut State, durable: bool) -> Result<()> {
        if durable {
            st.dat
                .sync_data()
                .map_err(io_ctx("syncing", &self.dat_path))?;
        }
        if !st.modified {
            return Ok(());
        }
        let mut text = Vec::with_capacity(st.index.len() * 24);
        for (k, &(p, s)) in &st.index {
            text.extend_from_slice(&index_line(k, p, s));
        }
        let tmp = with_suffix(&self.path, ".dir.new");
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.mode & 0o7777)
            .open(&tmp)
            .map_err(io_ctx("creating", &tmp))?;
        perm::apply_file(&f, &tmp, self.mode)?;
        let w = f
            .write_all(&text)
            .and_then(|_| if durable { f.sync_all() } else { Ok(()) });
        if let Err(e) = w {
            let _ = fs::remove_file(&tmp);
            return Err(io_ctx("writing", &tmp)(e));
        }
        drop(f);
        let _ = fs::remove_file(&self.bak_path);
        match fs::hard_link(&self.dir_path, &self.bak_path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(_) => {
                let _ = fs::copy(&self.dir_path, &self.bak_path);
            }
        }
        if let Err(e) = fs::rename(&tmp, &self.dir_path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_ctx("renaming over", &self.dir_path)(e));
        }
        if durable {
            if let Some(parent) = self.dir_path.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                if let Ok(d) = File::open(parent) {
                    let _ = d.sync_all();
                }
            }
        }
        st.dir_append = None;
        st.modified = false;
        Ok(())
    }

    /// Rewrites the store with only its live values, packed in index order (see the module
    /// documentation for the commit protocol). On error before the commit point the store is
    /// as it was and the unfinished files are removed.
    fn compact_locked(&self, st: &mut State) -> Result<()> {
        let cleanup = || {
            let _ = fs::remove_file(&self.dat_compact);
            let _ = fs::remove_file(&self.dir_compact_tmp);
        };
        let r = self.write_compacted(st);
        let (dat, index, dat_len) = match r {
            Ok(v) => v,
            Err(e) => {
                cleanup();
                return Err(e);
            }
        };
        // The commit point: from here on, any open finishes this compaction.
        if let Err(e) = fs::rename(&self.dir_compact_tmp, &self.dir_compact) {
            cleanup();
            return Err(io_ctx("renaming", &self.dir_compact_tmp)(e));
        }
        sync_parent(&self.dir_compact);
        // This handle now uses the compacted pair whatever happens below.
        st.dat = dat;
        st.dat_len = dat_len;
        st.index = index;
        st.dir_append = None;
        st.modified = false;
        recover_compaction(&self.path, &self.dat_path, &self.dir_path, &self.bak_path)
    }

    /// Writes `.dat.compact` and `.dir.compact.tmp` (both synced); returns the new data file,
    /// index and data length.
    fn write_compacted(&self, st: &State) -> Result<(File, Index, u64)> {
        let _ = fs::remove_file(&self.dat_compact);
        let _ = fs::remove_file(&self.dir_compact_tmp);
        let create = |p: &Path| -> Result<File> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(self.mode & 0o7777)
                .open(p)
                .map_err(io_ctx("creating", p))?;
            perm::apply_file(&f, p, self.mode)?;
            Ok(f)
        };
        let dat = create(&self.dat_compact)?;
        // Keep the permissions the store has now.
        if let Ok(md) = st.dat.metadata() {
            let _ = dat.set_permissions(md.permissions());
        }
        let mut index = Index::with_capacity(st.index.len());
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut written = 0u64; // bytes of `.dat.compact` already written
        let mut end = 0u64; // logical end, including `buf`
        for (k, &(pos, size)) in &st.index {
            let at = blocks(end) * BLOCK;
            let value = self.read_value(st, pos, size)?;
            buf.resize((at - written) as usize, 0);
            buf.extend_from_slice(&value);
            end = at + size;
            index.insert(k.clone(), (at, size));
            if buf.len() >= 1 << 20 {
                dat.write_all_at(&buf, written)
                    .map_err(io_ctx("writing", &self.dat_compact))?;
                written += buf.len() as u64;
                buf.clear();
            }
        }
        dat.write_all_at(&buf, written)
            .and_then(|_| dat.sync_all())
            .map_err(io_ctx("writing", &self.dat_compact))?;
        let mut text = Vec::with_capacity(index.len() * 24);
        for (k, &(p, s)) in &index {
            text.extend_from_slice(&index_line(k, p, s));
        }
        let mut dir = create(&self.dir_compact_tmp)?;
        if let Ok(md) = fs::metadata(&self.dir_path) {
            let _ = dir.set_permissions(md.permissions());
        }
        dir.write_all(&text)
            .and_then(|_| dir.sync_all())
            .map_err(io_ctx("writing", &self.dir_compact_tmp))?;
        Ok((dat, index, end))
    }

    fn read_value(&self, st: &State, pos: u64, size: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; size as usize];
        st.dat.read_exact_at(&mut buf, pos).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                DbmError::Corrupt {
                    path: self.dat_path.clone(),
                    message: format!(
                        "the data file is truncated: a value at ({pos}, {size}) runs past its end"
                    ),
                }
            } else {
                io_ctx("reading", &self.dat_path)(e)
            }
        })?;
        Ok(buf)
    }
}

impl Drop for DumbDb {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Database for DumbDb {
    fn backend(&self) -> Backend {
        Backend::Dumb
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with(|st| match st.index.get(key) {
            Some(&(p, s)) => self.read_value(st, p, s).map(Some),
            None => Ok(None),
        })
    }
    fn contains(&self, key: &[u8]) -> Result<bool> {
        self.with(|st| Ok(st.index.contains_key(key)))
    }
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.with_writable(|st| {
            let len = value.len() as u64;
            let old = st.index.get(key).copied();
            let new = match old {
                Some((pos, siz)) if self.placement.in_place(siz, len) => {
                    st.dat
                        .write_all_at(value, pos)
                        .map_err(io_ctx("writing to", &self.dat_path))?;
                    // A last value may grow within its final block, past the file's end.
                    st.dat_len = st.dat_len.max(pos + len);
                    (pos, len)
                }
                _ => self.append_values(st, &[value])?[0],
            };
            st.modified = true;
            if old != Some(new) {
                self.append_lines(st, &index_line(key, new.0, new.1))?;
            }
            st.index.insert(key.to_vec(), new);
            Ok(())
        })
    }
    fn remove(&self, key: &[u8]) -> Result<bool> {
        self.with_writable(|st| {
            let Some(old) = st.index.shift_remove(key) else {
                return Ok(false);
            };
            st.modified = true;
            if let Err(e) = self.commit(st, false) {
                st.index.insert(key.to_vec(), old);
                return Err(e);
            }
            Ok(true)
        })
    }
    fn len(&self) -> Result<usize> {
        self.with(|st| Ok(st.index.len()))
    }
    fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.with(|st| Ok(st.index.keys().cloned().collect()))
    }
    fn for_each(&self, f: &mut ItemFn<'_>) -> Result<()> {
        self.with(|st| {
            for (k, &(p, s)) in &st.index {
                let v = self.read_value(st, p, s)?;
                f(k, &v)?;
            }
            Ok(())
        })
    }
    fn batch(&self, batch: &Batch) -> Result<()> {
        self.with_writable(|st| {
            // Final state per key, in first-seen order.
            let mut last: IndexMap<&[u8], Option<&[u8]>> = IndexMap::new();
            for (k, v) in batch.ops() {
                last.insert(k, v);
            }
            let puts: Vec<(&[u8], &[u8])> = last
                .iter()
                .filter_map(|(k, v)| v.map(|v| (*k, v)))
                .collect();
            let deletes = last
                .iter()
                .any(|(k, v)| v.is_none() && st.index.contains_key(*k));
            // Values are appended (never overwritten in place) so that nothing the index
            // references changes until the index itself does, in one step.
            let vals: Vec<&[u8]> = puts.iter().map(|(_, v)| *v).collect();
            let positions = self.append_values(st, &vals)?;
            // What to undo if the index cannot be written. Put-only batches (the common case)
            // keep an undo log of the keys they touch: new keys are appended at the end of the
            // index (undone by truncating it), overwritten ones keep their place. A batch that
            // deletes keeps a copy of the whole index (deletes shift positions).
            let old_len = st.index.len();
            let before = if deletes {
                Some(st.index.clone())
            } else {
                None
            };
            let mut overwritten: Vec<(usize, (u64, u64))> = Vec::new();
            for ((k, _), pos) in puts.iter().zip(&positions) {
                let (i, old) = st.index.insert_full(k.to_vec(), *pos);
                if let (Some(old), true) = (old, before.is_none()) {
                    overwritten.push((i, old));
                }
            }
            for (k, v) in &last {
                if v.is_none() {
                    st.index.shift_remove(*k);
                }
            }
            st.modified = true;
            let r = if deletes {
                self.commit(st, false)
            } else {
                let mut lines = Vec::new();
                for ((k, _), (p, s)) in puts.iter().zip(&positions) {
                    lines.extend_from_slice(&index_line(k, *p, *s));
                }
                if lines.is_empty() {
                    Ok(())
                } else {
                    self.append_lines(st, &lines)
                }
            };
            if r.is_err() {
                match before {
                    Some(before) => st.index = before,
                    None => {
                        st.index.truncate(old_len);
                        for (i, old) in overwritten {
                            if let Some((_, v)) = st.index.get_index_mut(i) {
                                *v = old;
                            }
                        }
                    }
                }
            }
            r
        })
    }
    fn sync(&self) -> Result<()> {
        self.with(|st| {
            if self.read_only {
                return Ok(());
            }
            self.commit(st, true)
        })
    }
    fn close(&self) -> Result<()> {
        let mut g = self.lock();
        let Some(mut st) = g.take() else {
            return Ok(());
        };
        if self.read_only {
            return Ok(());
        }
        self.commit(&mut st, true)
    }
    fn compact(&self) -> Result<()> {
        let mut g = self.lock();
        let Some(st) = g.as_mut() else {
            return Err(DbmError::Closed);
        };
        if self.read_only {
            return Err(DbmError::ReadOnly);
        }
        let r = self.compact_locked(st);
        if r.is_err() && exists(&self.dir_compact) {
            // Committed but not finished (a rename failed): this handle no longer matches the
            // files under their usual names. Close it; the next open finishes the compaction.
            *g = None;
        }
        r
    }
    fn info(&self) -> Result<Info> {
        self.with(|st| {
            let mut file_bytes = st.dat_len;
            if let Ok(md) = fs::metadata(&self.dir_path) {
                file_bytes += md.len();
            }
            let live = st.index.iter().map(|(k, &(_, s))| k.len() as u64 + s).sum();
            Ok(Info {
                backend: Backend::Dumb,
                keys: st.index.len() as u64,
                file_bytes,
                live_bytes: live,
            })
        })
    }
}
