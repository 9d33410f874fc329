//! Server backends: a store in Redis (standalone or Cluster) or PostgreSQL, opened by URL
//! wherever a path is accepted.
//!
//! * `redis://[user:pass@]host:port/db?prefix=app:` — one Redis server ([`redis_db`]).
//! * `redis+cluster://[user:pass@]h1:7000,h2:7001/?prefix=app:` — a Redis Cluster, given by
//!   one or more seed nodes.
//! * `postgresql://user[:pass]@host:5432/dbname?table=name` (or `postgres://`) — a table in a
//!   PostgreSQL database ([`pg`]).
//!
//! A store is a namespace (a key prefix, a table) that carries the same self-describing
//! metadata as a native file: a format version and the value encoding the layer above wrote
//! (`cellar.shelve` records its codec), so [`crate::whichdb`] and `shelve.open(url)` work on it.
//! Passwords may come from the environment (`REDISCLI_AUTH`, `PGPASSWORD`) and never appear in
//! an error message or in [`crate::Database::path`]: the URL is shown with its password
//! replaced by `***`. The clients are the maintained `redis` and `postgres` crates; layout,
//! atomicity and durability are described in `docs/servers.md`.

pub(crate) mod pg;
pub(crate) mod redis_db;
pub(crate) mod tls;

use std::fmt;
use std::time::Duration;

use cellar_engine::ValueEncoding;

use crate::error::{DbmError, Result};
use crate::flag::{Access, Flag};
use crate::whichdb::WhichDb;
use crate::{Backend, Database};

/// The metadata format version a server store is written with.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Default time allowed to establish a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for one server response (Redis: the socket read/write timeout;
/// PostgreSQL: `statement_timeout`).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong talking to a server (the typed part of [`DbmError::Server`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerErrorKind {
    /// No connection could be made (refused, unreachable, connect timeout).
    Unavailable,
    /// The server did not answer within the response timeout.
    Timeout,
    /// The connection dropped (server restart, network failure); the next call reconnects.
    ConnectionLost,
    /// A Redis Cluster is reconfiguring (failover in progress, slot not served, CLUSTERDOWN,
    /// TRYAGAIN); retry once the cluster has settled.
    Failover,
    /// The server refused the credentials.
    Auth,
    /// The TLS handshake failed: the server does not speak TLS, or its certificate is not
    /// trusted or not for this host.
    Tls,
    /// Fewer replicas acknowledged a write than the URL's `wait=` asked for: the write is on
    /// the primary but not yet known to be on a replica.
    NotReplicated,
    /// The server answered with an error.
    Server,
    /// The URL is not valid.
    BadUrl,
}

impl ServerErrorKind {
    /// A short phrase for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ServerErrorKind::Unavailable => "cannot connect",
            ServerErrorKind::Timeout => "timed out",
            ServerErrorKind::ConnectionLost => "connection lost",
            ServerErrorKind::Failover => "cluster failover in progress",
            ServerErrorKind::Auth => "authentication failed",
            ServerErrorKind::Tls => "TLS handshake failed",
            ServerErrorKind::NotReplicated => "write not acknowledged by the replicas asked for",
            ServerErrorKind::Server => "server error",
            ServerErrorKind::BadUrl => "bad URL",
        }
    }
}

impl fmt::Display for ServerErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The URL schemes cellar opens as servers.
const SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis+cluster://",
    "rediss+cluster://",
    "postgresql://",
    "postgres://",
];

/// Whether `s` is a server URL (`redis://`, `rediss://`, `redis+cluster://`,
/// `postgresql://`, `postgres://`) rather than a file path.
pub fn is_server_url(s: &str) -> bool {
    SCHEMES
        .iter()
        .any(|p| s.len() >= p.len() && s.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
}

/// The URL of `path` if it is a server URL.
pub(crate) fn url_of(path: &std::path::Path) -> Option<&str> {
    path.to_str().filter(|s| is_server_url(s))
}

/// `url` with the password of its user-info part replaced by `***` (every `user:pass@`
/// occurrence, which also covers a cluster's seed list).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => return url.to_string(),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = match userinfo.find(':') {
                Some(c) => format!("{}:***", &userinfo[..c]),
                None => userinfo.to_string(),
            };
            format!("{scheme}{user}{}{tail}", &authority[at..])
        }
        None => url.to_string(),
    }
}

/// The `key=value` pairs of a URL's query string, percent-decoded.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A duration parameter in seconds (`timeout=2.5`).
pub(crate) fn seconds(target: &str, name: &str, v: &str) -> Result<Duration> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            bad_url(
                target,
                format!("{name}={v:?} is not a positive number of seconds"),
            )
        })
}

pub(crate) fn bad_url(target: &str, message: impl Into<String>) -> DbmError {
    DbmError::Server {
        backend: "server",
        kind: ServerErrorKind::BadUrl,
        target: target.to_string(),
        message: message.into(),
    }
}

/// How a value encoding is written in server metadata (`raw`, `pickle:4`, `marshal:4`).
pub(crate) fn encoding_text(e: ValueEncoding) -> String {
    match e {
        ValueEncoding::Raw => "raw".to_string(),
        ValueEncoding::Pickle { protocol } => format!("pickle:{protocol}"),
        ValueEncoding::Marshal { version } => format!("marshal:{version}"),
        ValueEncoding::Other { kind, version } => format!("other:{kind}:{version}"),
    }
}

/// The inverse of [`encoding_text`]; `None` for text it never writes.
pub(crate) fn parse_encoding(s: &str) -> Option<ValueEncoding> {
    let mut it = s.split(':');
    let kind = it.next()?;
    let a = it.next().map(|v| v.parse::<u8>());
    let b = it.next().map(|v| v.parse::<u8>());
    Some(match (kind, a, b) {
        ("raw", None, None) => ValueEncoding::Raw,
        ("pickle", Some(Ok(protocol)), None) => ValueEncoding::Pickle { protocol },
        ("marshal", Some(Ok(version)), None) => ValueEncoding::Marshal { version },
        ("other", Some(Ok(kind)), Some(Ok(version))) => ValueEncoding::Other { kind, version },
        _ => return None,
    })
}

/// The flags a server store takes: `r w c n` (gnu's modifiers mean nothing on a server).
pub(crate) fn check_flag(flag: Flag) -> Result<()> {
    if flag.has_modifiers() {
        return Err(DbmError::BadFlag {
            flag: flag.to_string(),
            message: "server stores take flag 'r', 'w', 'c' or 'n' (no modifiers)".to_string(),
        });
    }
    Ok(())
}

/// Opens the store at a server URL (what [`crate::open_with`] does for a URL).
pub(crate) fn open(url: &str, flag: Flag, encoding: ValueEncoding) -> Result<Box<dyn Database>> {
    check_flag(flag)?;
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("postgres") {
        Ok(Box::new(pg::PgDb::open(url, flag, encoding)?))
    } else {
        Ok(Box::new(redis_db::RedisDb::open(url, flag, encoding)?))
    }
}

/// `whichdb` for a server URL: the backend when the namespace holds cellar metadata, `Unknown`
/// when it holds data without it, `Unreadable` when it is empty or the server cannot be reached.
pub(crate) fn whichdb(url: &str) -> WhichDb {
    let lower = url.to_ascii_lowercase();
    let r = if lower.starts_with("postgres") {
        pg::PgDb::detect(url)
    } else {
        redis_db::RedisDb::detect(url)
    };
    r.unwrap_or(WhichDb::Unreadable)
}

/// What a store's metadata says, read at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meta {
    /// Nothing there.
    Missing,
    /// Something that is not a cellar store (data without metadata, foreign metadata).
    Foreign,
    /// A cellar store with this encoding.
    Store(ValueEncoding),
}

/// The open-flag decision common to every server backend: whether to create the metadata,
/// clear the namespace, or refuse.
pub(crate) enum OpenPlan {
    /// Use the store as it is.
    Use(ValueEncoding),
    /// Create the metadata (the namespace is empty).
    Create,
    /// Empty the namespace and write fresh metadata ('n').
    Recreate,
}

pub(crate) fn plan(meta: Meta, flag: Flag, target: &str, backend: Backend) -> Result<OpenPlan> {
    let path = std::path::PathBuf::from(target);
    match (meta, flag.access()) {
        (_, Access::New) if meta != Meta::Foreign => Ok(OpenPlan::Recreate),
        (Meta::Foreign, _) => Err(DbmError::Server {
            backend: backend.name(),
            kind: ServerErrorKind::Server,
            target: target.to_string(),
            message: "the namespace holds data that is not a cellar store (no cellar metadata); \
                      cellar will not use or replace it"
                .to_string(),
        }),
        (Meta::Missing, Access::Read | Access::Write) => Err(DbmError::DoesNotExist { path }),
        (Meta::Missing, _) => Ok(OpenPlan::Create),
        (Meta::Store(e), _) => Ok(OpenPlan::Use(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://u:secret@h:1/0?prefix=a"),
            "redis://u:***@h:1/0?prefix=a"
        );
        assert_eq!(redact_url("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(
            redact_url("postgresql://u@h/db?table=t"),
            "postgresql://u@h/db?table=t"
        );
        assert_eq!(
            redact_url("redis+cluster://u:p@h1:1,h2:2/?prefix=x"),
            "redis+cluster://u:***@h1:1,h2:2/?prefix=x"
        );
    }

    #[test]
    fn encodings_round_trip() {
        for e in [
            ValueEncoding::Raw,
            ValueEncoding::Pickle { protocol: 5 },
            ValueEncoding::Marshal { version: 4 },
            ValueEncoding::Other {
                kind: 9,
                version: 1,
            },
        ] {
            assert_eq!(parse_encoding(&encoding_text(e)), Some(e));
        }
        assert_eq!(parse_encoding("pickle"), None);
        assert_eq!(parse_encoding("zip:1"), None);
    }

    #[test]
    fn urls_are_recognised() {
        assert!(is_server_url("redis://localhost"));
        assert!(is_server_url("REDIS+CLUSTER://a:1,b:2"));
        assert!(is_server_url("postgresql://u@h/d"));
        assert!(!is_server_url("/tmp/redis://x"));
        assert!(!is_server_url("db.sqlite"));
    }
}
