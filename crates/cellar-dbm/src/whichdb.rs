//! `whichdb`: CPython 3.13's detection rules, in CPython's order, plus the native engine's magic.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The formats `whichdb` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbKind {
    /// cellar's native engine (`"dbm.native"`).
    Native,
    /// CPython 3.13's dbm.sqlite3 (`"dbm.sqlite3"`).
    Sqlite3,
    /// dbm.dumb (`"dbm.dumb"`).
    Dumb,
    /// GNU dbm (`"dbm.gnu"`): read-only.
    Gnu,
    /// ndbm: Berkeley DB hash or gdbm_compat (`"dbm.ndbm"`): read-only.
    Ndbm,
    /// A store on a Redis server (`"dbm.redis"`).
    Redis,
    /// A store on a Redis Cluster (`"dbm.redis_cluster"`).
    RedisCluster,
    /// A store in a PostgreSQL table (`"dbm.postgresql"`).
    Postgres,
}

impl DbKind {
    /// The stdlib-style module name.
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Native => "dbm.native",
            DbKind::Sqlite3 => "dbm.sqlite3",
            DbKind::Dumb => "dbm.dumb",
            DbKind::Gnu => "dbm.gnu",
            DbKind::Ndbm => "dbm.ndbm",
            DbKind::Redis => "dbm.redis",
            DbKind::RedisCluster => "dbm.redis_cluster",
            DbKind::Postgres => "dbm.postgresql",
        }
    }

    /// The kind for a module name (`"dbm.dumb"` or `"dumb"`).
    pub fn from_name(name: &str) -> Option<DbKind> {
        Some(match name.strip_prefix("dbm.").unwrap_or(name) {
            "native" => DbKind::Native,
            "sqlite3" => DbKind::Sqlite3,
            "dumb" => DbKind::Dumb,
            "gnu" => DbKind::Gnu,
            "ndbm" => DbKind::Ndbm,
            "redis" => DbKind::Redis,
            "redis_cluster" => DbKind::RedisCluster,
            "postgresql" => DbKind::Postgres,
            _ => return None,
        })
    }

    /// Whether cellar can open this kind for writing.
    pub fn is_writable(self) -> bool {
        !matches!(self, DbKind::Gnu | DbKind::Ndbm)
    }

    /// Whether this kind lives on a server (opened by URL).
    pub fn is_server(self) -> bool {
        matches!(
            self,
            DbKind::Redis | DbKind::RedisCluster | DbKind::Postgres
        )
    }
}

/// What `whichdb` found, mirroring CPython's three outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhichDb {
    /// The file cannot be read (CPython returns `None`).
    Unreadable,
    /// The file is readable but its format is unknown (CPython returns `""`).
    Unknown,
    /// A recognised format.
    Kind(DbKind),
}

impl WhichDb {
    /// CPython's return value: `None`, `Some("")` or `Some("dbm.x")`.
    pub fn as_python(self) -> Option<&'static str> {
        match self {
            WhichDb::Unreadable => None,
            WhichDb::Unknown => Some(""),
            WhichDb::Kind(k) => Some(k.name()),
        }
    }

    /// The kind, if one was recognised.
    pub fn kind(self) -> Option<DbKind> {
        match self {
            WhichDb::Kind(k) => Some(k),
            _ => None,
        }
    }
}

/// The native engine's file magic (docs/engine-format.md, static header offset 0).
pub const NATIVE_MAGIC: &[u8; 8] = b"CELLARKV";
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const GNU_MAGICS: [u32; 3] = [0x13579ace, 0x13579acd, 0x13579acf];

pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

fn readable(path: &Path) -> bool {
    open_file(path).is_ok()
}

/// Whether `path` names something that is neither a regular file nor a directory (a FIFO, a
/// socket, a device): opening a FIFO for reading blocks until a writer appears, so such paths
/// are never opened.
pub(crate) fn is_special(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// `File::open` that never blocks on a FIFO: special files are refused before and after the
/// open (`O_NONBLOCK`, then `fstat`, so a FIFO swapped in between is refused too).
fn open_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let special = || std::io::Error::other("not a regular file");
    if is_special(path) {
        return Err(special());
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() && !m.is_dir() {
        return Err(special());
    }
    Ok(f)
}

/// Guesses the format of the database at `path`, following CPython 3.13's `dbm.whichdb` in
/// order: `path.pag` and `path.dir` -> ndbm; `path.db` that is a Berkeley DB hash file -> ndbm
/// (CPython asks the ndbm module to open it; cellar checks the hash magic instead); `path.dat`
/// plus an empty `path.dir` or one starting with a quote -> dumb; `path` unreadable ->
/// [`WhichDb::Unreadable`]; fewer than 4 bytes -> [`WhichDb::Unknown`]; SQLite header ->
/// sqlite3; the native magic `CELLARKV` -> native; a GNU dbm magic (native byte order) -> gnu.
///
/// Beyond CPython: a `path.db` in Berkeley DB 1.85 format (macOS and BSD ndbm) counts as
/// ndbm; GDBM files in the other byte order and numsync GDBM files are gnu; a file that is
/// itself a Berkeley DB hash file, 1.85 included (a name given with its `.db`), is ndbm.
///
/// A server URL (`redis://`, `redis+cluster://`, `postgresql://`) is asked the same question:
/// the namespace's cellar metadata names the backend, data without it is
/// [`WhichDb::Unknown`], and an empty namespace or an unreachable server is
/// [`WhichDb::Unreadable`].
pub fn whichdb(path: impl AsRef<Path>) -> WhichDb {
    let path = path.as_ref();
    if let Some(url) = crate::server::url_of(path) {
        return crate::server::whichdb(url);
    }
    if readable(&with_suffix(path, ".pag")) && readable(&with_suffix(path, ".dir")) {
        return WhichDb::Kind(DbKind::Ndbm);
    }
    if let Ok(mut f) = open_file(&with_suffix(path, ".db")) {
        let mut head = [0u8; 16];
        if f.read_exact(&mut head).is_ok() && cellar_legacy::bdb::Bdb::sniff(&head).is_some() {
            return WhichDb::Kind(DbKind::Ndbm);
        }
    }
    if fs::metadata(with_suffix(path, ".dat")).is_ok() {
        let dir = with_suffix(path, ".dir");
        if let Ok(md) = fs::metadata(&dir) {
            if md.len() == 0 {
                return WhichDb::Kind(DbKind::Dumb);
            }
            if let Ok(mut f) = open_file(&dir) {
                let mut b = [0u8; 1];
                if f.read_exact(&mut b).is_ok() && (b[0] == b'\'' || b[0] == b'"') {
                    return WhichDb::Kind(DbKind::Dumb);
                }
            }
        }
    }
    if is_special(path) {
        // A FIFO, socket or device named like a store: readable perhaps, but no database
        // (and never opened: reading a FIFO would block).
        return WhichDb::Unknown;
    }
    let mut f = match open_file(path) {
        Ok(f) => f,
        Err(_) => return WhichDb::Unreadable,
    };
    let mut s16 = Vec::with_capacity(16);
    if f.by_ref().take(16).read_to_end(&mut s16).is_err() {
        // CPython's read() raises here (e.g. a directory: IsADirectoryError); whichdb's caller
        // sees an OSError. Treat it as unreadable, which makes `open` report it clearly.
        return WhichDb::Unreadable;
    }
    if s16.len() < 4 {
        return WhichDb::Unknown;
    }
    if s16.as_slice() == SQLITE_MAGIC {
        return WhichDb::Kind(DbKind::Sqlite3);
    }
    if s16.starts_with(NATIVE_MAGIC) {
        return WhichDb::Kind(DbKind::Native);
    }
    let magic = u32::from_ne_bytes([s16[0], s16[1], s16[2], s16[3]]);
    if GNU_MAGICS.contains(&magic) {
        return WhichDb::Kind(DbKind::Gnu);
    }
    if cellar_legacy::gdbm::Gdbm::sniff(&s16) {
        return WhichDb::Kind(DbKind::Gnu);
    }
    match cellar_legacy::bdb::Bdb::sniff(&s16) {
        Some(cellar_legacy::bdb::Flavor::Modern) if s16.len() == 16 => {
            return WhichDb::Kind(DbKind::Ndbm);
        }
        // A 1.85 file given by its own name: the magic alone is 4 bytes, so also require the
        // big-endian header's version (1 or 2).
        Some(cellar_legacy::bdb::Flavor::V185)
            if s16.len() >= 8
                && matches!(u32::from_be_bytes([s16[4], s16[5], s16[6], s16[7]]), 1 | 2) =>
        {
            return WhichDb::Kind(DbKind::Ndbm);
        }
        _ => {}
    }
    WhichDb::Unknown
}
