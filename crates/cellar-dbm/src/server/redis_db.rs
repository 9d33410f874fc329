//! The Redis backends: one server (`redis://`) or a Redis Cluster (`redis+cluster://`).
//!
//! Layout of the store with prefix `P` (default `cellar`):
//! * `{P}m` — a hash with the metadata: `cellar` (format version 2), `encoding`.
//! * `{P}k:<key>` — one string per key.
//! * `{P}i` — the key index: a sorted set of the user keys, all with score 0 (so ordered
//!   bytewise), updated in the same Lua script as the data keys. `len()` is its `ZCARD`, and
//!   iteration walks it with `ZRANGEBYLEX` from the last key seen, so every key present for
//!   the whole walk is yielded exactly once (Redis `SCAN` may repeat keys while the keyspace
//!   is rehashed).
//!
//! The braces are a Redis Cluster hash tag: every key of a store hashes to the same slot, so on
//! a cluster the whole store lives on one master (and its replicas), and every write — a single
//! insert with its index update, or a whole [`Batch`] — is one Lua script, which Redis runs
//! atomically on standalone servers and clusters alike. Different stores spread over the
//! cluster's masters. A page of iteration (keys, or keys and values) is one script call of
//! 1,000 keys: nothing loads a whole store; `'n'` empties a store through its index too. `SCAN`
//! is used only for one page at open, to tell an empty namespace from foreign data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cellar_engine::ValueEncoding;
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ConnectionLike, FromRedisValue, RedisResult, Script};

use super::{
    bad_url, encoding_text, parse_encoding, plan, query_pairs, redact_url, seconds, Meta, OpenPlan,
    ServerErrorKind, DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT,
};
use crate::error::{DbmError, Result};
use crate::flag::{Access, Flag};
use crate::whichdb::{DbKind, WhichDb};
use crate::{Backend, Batch, Database, Info, ItemFn};

/// Keys fetched per page of iteration (one round trip each).
const PAGE: usize = 1000;

/// The Redis layout's format version (`cellar` in the metadata hash). Version 1 (a development
/// layout without the key index) is refused.
const REDIS_FORMAT: u32 = 2;

/// Insert one key and index it. KEYS: key, index. ARGV: value, user key. Returns 1 if new.
const SET_LUA: &str = "\
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('ZADD', KEYS[2], 0, ARGV[2])";

/// Delete one key and its index entry. KEYS: key, index. ARGV: user key. Returns 1 if it was
/// there.
const DEL_LUA: &str = "\
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n";

/// A batch. KEYS: index, key1..keyN. ARGV: 1 + length of the data-key prefix, then
/// op1, value1, ..., opN, valueN ('s' set, 'd' delete). The user key is the data key without
/// its prefix. Runs of the same operation go to the server as one `MSET` + `ZADD` (or `DEL` +
/// `ZREM`) per 256 keys rather than two calls per key; the order of the operations is kept.
const BATCH_LUA: &str = "\
local n = tonumber(ARGV[1])
local op, data, idx = nil, {}, {}
local function flush()
  if #data == 0 then return end
  if op == 's' then
    redis.call('MSET', unpack(data))
    redis.call('ZADD', KEYS[1], unpack(idx))
  else
    redis.call('DEL', unpack(data))
    redis.call('ZREM', KEYS[1], unpack(idx))
  end
  data, idx = {}, {}
end
for i = 2, #KEYS do
  local j = 2 * (i - 1)
  local o = ARGV[j]
  if o ~= op or #data >= 512 then flush() op = o end
  local k = string.sub(KEYS[i], n)
  if o == 's' then
    data[#data + 1] = KEYS[i]
    data[#data + 1] = ARGV[j + 1]
    idx[#idx + 1] = 0
    idx[#idx + 1] = k
  else
    data[#data + 1] = KEYS[i]
    idx[#idx + 1] = k
  end
end
flush()
return 0";

/// One page of iteration. KEYS: index. ARGV: the `ZRANGEBYLEX` minimum (`-` to start,
/// `(` + the last key seen), the page size, the data-key prefix, `1` to fetch the values.
/// Returns the keys, or key, value, key, value, ... (a value deleted meanwhile is nil). Every
/// data key shares the index's hash tag, so on a cluster they are in its slot.
const PAGE_LUA: &str = "\
local ks = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
if ARGV[4] ~= '1' or #ks == 0 then return ks end
local full = {}
for i = 1, #ks do full[i] = ARGV[3] .. ks[i] end
local vs = redis.call('MGET', unpack(full))
local out = {}
for i = 1, #ks do
  out[2 * i - 1] = ks[i]
  out[2 * i] = vs[i]
end
return out";

/// Delete up to ARGV[2] keys of the store and their index entries. KEYS: index. ARGV: the
/// data-key prefix, the page size. Returns how many were removed (0: the index is empty).
const CLEAR_LUA: &str = "\
local ks = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #ks == 0 then return 0 end
local full = {}
for i = 1, #ks do full[i] = ARGV[1] .. ks[i] end
redis.call('UNLINK', unpack(full))
redis.call('ZREM', KEYS[1], unpack(ks))
return #ks";

/// Create the metadata unless present. KEYS: meta. ARGV: format, encoding. Returns 1 if made.
const CREATE_LUA: &str = "\
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'cellar', ARGV[1], 'encoding', ARGV[2])
return 1";

fn script(cell: &'static OnceLock<Script>, src: &str) -> &'static Script {
    cell.get_or_init(|| Script::new(src))
}
static SET_SCRIPT: OnceLock<Script> = OnceLock::new();
static DEL_SCRIPT: OnceLock<Script> = OnceLock::new();
static BATCH_SCRIPT: OnceLock<Script> = OnceLock::new();
static CREATE_SCRIPT: OnceLock<Script> = OnceLock::new();
static PAGE_SCRIPT: OnceLock<Script> = OnceLock::new();
static CLEAR_SCRIPT: OnceLock<Script> = OnceLock::new();

/// Where to connect.
enum Target {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// A live connection.
enum Conn {
    Single(redis::Connection),
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(c) => c,
            Conn::Cluster(c) => &mut **c,
        }
    }

    /// A command with keys of this store: routed by key on a cluster.
    fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        cmd.query(self.like())
    }

    /// A keyless command (`SCAN`, `WAIT`) for the node that serves the store's slot.
    fn node_query<T: FromRedisValue>(&mut self, cmd: &Cmd, route: &Route) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query(c),
            Conn::Cluster(c) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(*route));
                let v = c.route_command(cmd, route)?;
                Ok(T::from_redis_value(v)?)
            }
        }
    }
}

/// A parsed `redis://` / `redis+cluster://` URL.
struct Parsed {
    target: Target,
    prefix: Vec<u8>,
    wait: Option<(u32, u64)>,
    connect_timeout: Duration,
    response_timeout: Duration,
    cluster: bool,
}

fn parse(url: &str, shown: &str) -> Result<Parsed> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad_url(shown, "missing scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    let cluster = scheme.ends_with("+cluster");
    let tls = scheme.starts_with("rediss");
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, db_path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i + 1..]),
        None => (before_query, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let mut prefix = b"cellar".to_vec();
    let mut wait = None;
    let mut wait_timeout = 1000u64;
    let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
    let mut response_timeout = DEFAULT_RESPONSE_TIMEOUT;
    let mut passthrough = Vec::new();
    let mut cacert = None;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "prefix" => prefix = v.into_bytes(),
            "cacert" if tls => {
                cacert = Some(super::tls::read_pem(&v).map_err(|m| bad_url(shown, m))?)
            }
            "wait" => {
                wait =
                    Some(v.parse::<u32>().map_err(|_| {
                        bad_url(shown, format!("wait={v:?} is not a replica count"))
                    })?)
            }
            "wait_timeout" => {
                wait_timeout = (seconds(shown, &k, &v)?.as_millis() as u64).max(1);
            }
            "connect_timeout" => connect_timeout = seconds(shown, &k, &v)?,
            "timeout" => response_timeout = seconds(shown, &k, &v)?,
            "protocol" | "insecure" => passthrough.push(format!("{k}={v}")),
            _ => {
                return Err(bad_url(
                    shown,
                    format!(
                        "unknown parameter {k:?} (cellar's Redis URLs take prefix, wait, \
                         wait_timeout, connect_timeout, timeout, and cacert with rediss://)"
                    ),
                ))
            }
        }
    }
    if prefix.is_empty() || prefix.iter().any(|b| *b == b'{' || *b == b'}') {
        return Err(bad_url(
            shown,
            "prefix= must be non-empty and contain no '{' or '}' (it becomes the hash tag {prefix})",
        ));
    }
    // A password from the environment (as redis-cli takes it) when the URL has none.
    let userinfo = match userinfo {
        Some(u) if u.contains(':') => Some(u.to_string()),
        u => match std::env::var("REDISCLI_AUTH") {
            Ok(pass) if !pass.is_empty() => {
                let enc: String = url::form_urlencoded::byte_serialize(pass.as_bytes()).collect();
                Some(format!("{}:{enc}", u.unwrap_or("")))
            }
            _ => u.map(str::to_string),
        },
    };
    let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let node_url = |host: &str, db: &str| {
        let scheme = if tls { "rediss" } else { "redis" };
        let mut s = format!("{scheme}://{auth}{host}/{db}");
        if !passthrough.is_empty() {
            s.push('?');
            s.push_str(&passthrough.join("&"));
        }
        s
    };
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err(bad_url(shown, "no host"));
    }
    // Client errors may quote the URL: never show them, they could carry the password.
    let client_err = |_e: redis::RedisError| bad_url(shown, "the Redis client rejected the URL");
    let target = if cluster {
        if !db_path.is_empty() && db_path != "0" {
            return Err(bad_url(shown, "a Redis Cluster has only database 0"));
        }
        let nodes: Vec<String> = hosts.iter().map(|h| node_url(h, "0")).collect();
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(connect_timeout)
            .response_timeout(response_timeout)
            .retries(3);
        if tls {
            builder = builder.tls(redis::TlsMode::Secure);
            if let Some(ca) = &cacert {
                builder = builder.certs(certs(ca));
            }
        }
        let client = builder.build().map_err(client_err)?;
        Target::Cluster(client)
    } else {
        if hosts.len() != 1 {
            return Err(bad_url(
                shown,
                "redis:// takes one host; use redis+cluster:// for a cluster's seed nodes",
            ));
        }
        let url = node_url(hosts[0], db_path);
        let client = match &cacert {
            Some(ca) => redis::Client::build_with_tls(url, certs(ca)),
            None => redis::Client::open(url),
        };
        Target::Single(client.map_err(client_err)?)
    };
    Ok(Parsed {
        target,
        prefix,
        wait: wait.map(|n| (n, wait_timeout)),
        connect_timeout,
        response_timeout,
        cluster,
    })
}

/// Trust the CA certificates of `pem` (instead of the system's store).
fn certs(pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// A store in Redis (see the module documentation).
pub(crate) struct RedisDb {
    shown: String,
    path: PathBuf,
    target: Target,
    conn: Mutex<Option<Conn>>,
    closed: AtomicBool,
    read_only: bool,
    cluster: bool,
    meta_key: Vec<u8>,
    key_prefix: Vec<u8>,
    /// `{P}i`: a sorted set of every user key (all scores 0, so ordered bytewise), kept in
    /// step with the data keys by the write scripts: exact-once iteration and `len()`.
    index_key: Vec<u8>,
    /// The store's slot (every key carries the hash tag `{P}`), on its master.
    route: Route,
    wait: Option<(u32, u64)>,
    connect_timeout: Duration,
    response_timeout: Duration,
    encoding: ValueEncoding,
}

impl std::fmt::Debug for RedisDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDb").field("url", &self.shown).finish()
    }
}

/// The `DbmError` for a Redis failure. The client's messages name no password (it never puts
/// credentials in errors); the URL shown is redacted.
fn map_err(backend: Backend, shown: &str, e: redis::RedisError) -> DbmError {
    use redis::ErrorKind as K;
    let text = e.to_string();
    let kind = if matches!(e.kind(), K::AuthenticationFailed)
        || e.code().is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH")
        // A cluster reports each seed node's failure inside one I/O error.
        || text.contains("AuthenticationFailed")
        || text.contains("WRONGPASS")
    {
        ServerErrorKind::Auth
    } else if text.contains("invalid peer certificate")
        || text.contains("TLS")
        || text.contains("CorruptMessage")
        || text.contains("InvalidContentType")
    {
        ServerErrorKind::Tls
    } else if e.is_timeout() {
        ServerErrorKind::Timeout
    } else if e.is_connection_refusal() {
        ServerErrorKind::Unavailable
    } else if e.is_connection_dropped() || e.is_io_error() {
        ServerErrorKind::ConnectionLost
    } else if e.is_cluster_error()
        || matches!(
            e.kind(),
            K::ClusterConnectionNotFound
                | K::Server(redis::ServerErrorKind::ReadOnly)
                | K::Server(redis::ServerErrorKind::MasterDown)
        )
    {
        ServerErrorKind::Failover
    } else {
        ServerErrorKind::Server
    };
    DbmError::Server {
        backend: backend.name(),
        kind,
        target: shown.to_string(),
        message: text,
    }
}

/// Escapes Redis glob characters.
fn glob_escape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 2);
    for &c in b {
        if matches!(c, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(c);
    }
    out
}

impl RedisDb {
    /// The store at a parsed URL, not yet connected.
    fn new(url: &str, read_only: bool) -> Result<RedisDb> {
        let shown = redact_url(url);
        let p = parse(url, &shown)?;
        let mut tag = Vec::with_capacity(p.prefix.len() + 4);
        tag.push(b'{');
        tag.extend_from_slice(&p.prefix);
        tag.push(b'}');
        let with = |suffix: &[u8]| {
            let mut k = tag.clone();
            k.extend_from_slice(suffix);
            k
        };
        let meta_key = with(b"m");
        let route = Route::with_key(&meta_key, SlotAddr::Master);
        Ok(RedisDb {
            path: PathBuf::from(&shown),
            shown,
            target: p.target,
            conn: Mutex::new(None),
            closed: AtomicBool::new(false),
            read_only,
            cluster: p.cluster,
            key_prefix: with(b"k:"),
            index_key: with(b"i"),
            meta_key,
            route,
            wait: if read_only { None } else { p.wait },
            connect_timeout: p.connect_timeout,
            response_timeout: p.response_timeout,
            encoding: ValueEncoding::Raw,
        })
    }

    pub(crate) fn open(url: &str, flag: Flag, encoding: ValueEncoding) -> Result<RedisDb> {
        let db = RedisDb::new(url, flag.access() == Access::Read)?;
        let meta = db.read_meta()?;
        let backend = db.backend();
        let encoding = match plan(meta, flag, &db.shown, backend)? {
            OpenPlan::Use(e) => e,
            OpenPlan::Create => {
                db.with(|c| {
                    script(&CREATE_SCRIPT, CREATE_LUA)
                        .key(&db.meta_key)
                        .arg(REDIS_FORMAT)
                        .arg(encoding_text(encoding))
                        .invoke::<i64>(c.like())
                })?;
                // Another client may have created it first: use what is there.
                match db.read_meta()? {
                    Meta::Store(e) => e,
                    _ => encoding,
                }
            }
            OpenPlan::Recreate => {
                db.clear_namespace()?;
                db.with(|c| {
                    c.query::<()>(
                        redis::cmd("HSET")
                            .arg(&db.meta_key)
                            .arg("cellar")
                            .arg(REDIS_FORMAT)
                            .arg("encoding")
                            .arg(encoding_text(encoding)),
                    )
                })?;
                encoding
            }
        };
        Ok(RedisDb { encoding, ..db })
    }

    /// `whichdb` for a Redis URL.
    pub(crate) fn detect(url: &str) -> Result<WhichDb> {
        // Opened read-only without touching metadata: `plan` is not consulted.
        let db = RedisDb::new(url, true)?;
        Ok(match db.read_meta()? {
            Meta::Store(_) => WhichDb::Kind(if db.cluster {
                DbKind::RedisCluster
            } else {
                DbKind::Redis
            }),
            Meta::Foreign => WhichDb::Unknown,
            Meta::Missing => WhichDb::Unreadable,
        })
    }

    fn connect(&self) -> RedisResult<Conn> {
        Ok(match &self.target {
            Target::Single(client) => {
                let c = client.get_connection_with_timeout(self.connect_timeout)?;
                c.set_read_timeout(Some(self.response_timeout))?;
                c.set_write_timeout(Some(self.response_timeout))?;
                Conn::Single(c)
            }
            Target::Cluster(client) => Conn::Cluster(Box::new(client.get_connection()?)),
        })
    }

    /// Runs `f` on the connection, connecting first if there is none. On a connection-level
    /// failure the connection is dropped, so the next call reconnects.
    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> RedisResult<T>) -> Result<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(DbmError::Closed);
        }
        let mut g = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(self.connect().map_err(|e| {
                let mut err = map_err(self.backend(), &self.shown, e);
                if let DbmError::Server { kind, .. } = &mut err {
                    if matches!(
                        *kind,
                        ServerErrorKind::ConnectionLost | ServerErrorKind::Timeout
                    ) {
                        *kind = ServerErrorKind::Unavailable;
                    }
                }
                err
            })?);
        }
        let conn = g.as_mut().ok_or(DbmError::Closed)?;
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || e.is_cluster_error()
                    || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
                {
                    *g = None;
                }
                Err(map_err(self.backend(), &self.shown, e))
            }
        }
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(DbmError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn data_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.key_prefix.len() + key.len());
        k.extend_from_slice(&self.key_prefix);
        k.extend_from_slice(key);
        k
    }

    fn read_meta(&self) -> Result<Meta> {
        let fields: Vec<(Vec<u8>, Vec<u8>)> =
            self.with(|c| c.query(redis::cmd("HGETALL").arg(&self.meta_key)))?;
        if fields.is_empty() {
            let (_, page) = self.scan_page(0, 10)?;
            return Ok(if page.is_empty() {
                Meta::Missing
            } else {
                Meta::Foreign
            });
        }
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let Some(version) = get("cellar") else {
            return Ok(Meta::Foreign);
        };
        let message = match version.parse::<u32>() {
            Ok(REDIS_FORMAT) => None,
            Ok(v) if v < REDIS_FORMAT => Some(format!(
                "store format {v} is a development layout without the key index that this \
                 cellar needs (format {REDIS_FORMAT}): re-create the store"
            )),
            _ => Some(format!(
                "store format {version} is newer than this cellar reads (format {REDIS_FORMAT})"
            )),
        };
        if let Some(message) = message {
            return Err(DbmError::Server {
                backend: self.backend().name(),
                kind: ServerErrorKind::Server,
                target: self.shown.clone(),
                message,
            });
        }
        Ok(Meta::Store(
            get("encoding")
                .and_then(|e| parse_encoding(&e))
                .unwrap_or(ValueEncoding::Raw),
        ))
    }

    /// One `SCAN` page: the next cursor (0 at the end) and the user keys of this page.
    fn scan_page(&self, cursor: u64, count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut pattern = glob_escape(&self.key_prefix);
        pattern.push(b'*');
        let (next, keys): (u64, Vec<Vec<u8>>) = self.with(|c| {
            c.node_query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(count),
                &self.route,
            )
        })?;
        let n = self.key_prefix.len();
        Ok((
            next,
            keys.into_iter()
                .filter(|k| k.starts_with(&self.key_prefix))
                .map(|k| k[n..].to_vec())
                .collect(),
        ))
    }

    /// Deletes every key of the store, a page of its key index at a time (`'n'`): the work is
    /// proportional to the store, not to the database around it.
    fn clear_namespace(&self) -> Result<()> {
        loop {
            let removed: i64 = self.with(|c| {
                script(&CLEAR_SCRIPT, CLEAR_LUA)
                    .key(&self.index_key)
                    .arg(&self.key_prefix)
                    .arg(PAGE)
                    .invoke(c.like())
            })?;
            if removed == 0 {
                break;
            }
        }
        self.with(|c| {
            c.query::<i64>(
                redis::cmd("UNLINK")
                    .arg(&self.index_key)
                    .arg(&self.meta_key),
            )
        })?;
        Ok(())
    }

    /// With `wait=N`: blocks until N replicas acknowledged the writes so far (`WAIT`), or
    /// fails with [`ServerErrorKind::NotReplicated`].
    fn replicate(&self) -> Result<()> {
        let Some((n, ms)) = self.wait else {
            return Ok(());
        };
        let got: i64 =
            self.with(|c| c.node_query(redis::cmd("WAIT").arg(n).arg(ms), &self.route))?;
        if got < i64::from(n) {
            return Err(DbmError::Server {
                backend: self.backend().name(),
                kind: ServerErrorKind::NotReplicated,
                target: self.shown.clone(),
                message: format!("{got} of {n} replicas acknowledged within {ms} ms"),
            });
        }
        Ok(())
    }

    /// One page of the key index from `min` (a `ZRANGEBYLEX` minimum: `-` for the start,
    /// `(` + the last key seen), with the values if `values`: the flat reply of [`PAGE_LUA`]
    /// and the minimum of the next page (`None` after the last).
    #[allow(clippy::type_complexity)]
    fn index_page(
        &self,
        min: &[u8],
        values: bool,
    ) -> Result<(Vec<Option<Vec<u8>>>, Option<Vec<u8>>)> {
        let flat: Vec<Option<Vec<u8>>> = self.with(|c| {
            script(&PAGE_SCRIPT, PAGE_LUA)
                .key(&self.index_key)
                .arg(min)
                .arg(PAGE)
                .arg(&self.key_prefix)
                .arg(if values { "1" } else { "0" })
                .invoke(c.like())
        })?;
        let per = if values { 2 } else { 1 };
        let next = if flat.len() == PAGE * per {
            let last = flat.len() - per;
            flat[last].as_ref().map(|k| {
                let mut m = Vec::with_capacity(k.len() + 1);
                m.push(b'(');
                m.extend_from_slice(k);
                m
            })
        } else {
            None
        };
        Ok((flat, next))
    }

    /// One page of keys, in byte order: every key present for the whole walk is seen exactly
    /// once (the walk resumes after the last key seen, whatever the server does meanwhile).
    #[allow(clippy::type_complexity)]
    fn keys_page(&self, min: &[u8]) -> Result<(Vec<Vec<u8>>, Option<Vec<u8>>)> {
        let (flat, next) = self.index_page(min, false)?;
        Ok((flat.into_iter().flatten().collect(), next))
    }

    /// [`RedisDb::keys_page`] with the values, in the same round trip (keys deleted between
    /// the index read and the value read cannot happen: the script is atomic).
    #[allow(clippy::type_complexity)]
    fn items_page(&self, min: &[u8]) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>)> {
        let (flat, next) = self.index_page(min, true)?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let (Some(k), Some(v)) = (k, v) {
                out.push((k, v));
            }
        }
        Ok((out, next))
    }

    /// The cursor of the public paging API as a `ZRANGEBYLEX` minimum (empty: the start).
    fn min_of(cursor: &[u8]) -> &[u8] {
        if cursor.is_empty() {
            b"-"
        } else {
            cursor
        }
    }
}

impl Database for RedisDb {
    fn backend(&self) -> Backend {
        if self.cluster {
            Backend::RedisCluster
        } else {
            Backend::Redis
        }
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = self.data_key(key);
        self.with(|c| c.query(redis::cmd("GET").arg(&k)))
    }
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.writable()?;
        let k = self.data_key(key);
        self.with(|c| {
            script(&SET_SCRIPT, SET_LUA)
                .key(&k)
                .key(&self.index_key)
                .arg(value)
                .arg(key)
                .invoke::<i64>(c.like())
        })?;
        self.replicate()
    }
    fn remove(&self, key: &[u8]) -> Result<bool> {
        self.writable()?;
        let k = self.data_key(key);
        let n: i64 = self.with(|c| {
            script(&DEL_SCRIPT, DEL_LUA)
                .key(&k)
                .key(&self.index_key)
                .arg(key)
                .invoke(c.like())
        })?;
        if n == 1 {
            self.replicate()?;
        }
        Ok(n == 1)
    }
    fn contains(&self, key: &[u8]) -> Result<bool> {
        let k = self.data_key(key);
        let n: i64 = self.with(|c| c.query(redis::cmd("EXISTS").arg(&k)))?;
        Ok(n == 1)
    }
    fn len(&self) -> Result<usize> {
        let n: i64 = self.with(|c| c.query(redis::cmd("ZCARD").arg(&self.index_key)))?;
        Ok(n.max(0) as usize)
    }
    fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut min = b"-".to_vec();
        loop {
            let (keys, next) = self.keys_page(&min)?;
            out.extend(keys);
            match next {
                Some(n) => min = n,
                None => return Ok(out),
            }
        }
    }
    fn for_each(&self, f: &mut ItemFn<'_>) -> Result<()> {
        let mut min = b"-".to_vec();
        loop {
            let (items, next) = self.items_page(&min)?;
            for (k, v) in &items {
                f(k, v)?;
            }
            match next {
                Some(n) => min = n,
                None => return Ok(()),
            }
        }
    }
    fn batch(&self, batch: &Batch) -> Result<()> {
        self.writable()?;
        if batch.is_empty() {
            return Ok(());
        }
        let s = script(&BATCH_SCRIPT, BATCH_LUA);
        let mut inv = s.key(&self.index_key);
        inv.arg(self.key_prefix.len() + 1);
        for (k, v) in batch.ops() {
            inv.key(self.data_key(k));
            match v {
                Some(v) => inv.arg("s").arg(v),
                None => inv.arg("d").arg(""),
            };
        }
        self.with(|c| inv.invoke::<i64>(c.like()))?;
        self.replicate()
    }
    fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.replicate()
    }
    fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }
    fn compact(&self) -> Result<()> {
        // Redis frees memory itself (and rewrites its AOF in the background): nothing to do.
        self.writable()?;
        self.with(|c| c.query::<String>(&redis::cmd("PING")))
            .map(|_| ())
    }
    fn info(&self) -> Result<Info> {
        Ok(Info {
            backend: self.backend(),
            keys: self.len()? as u64,
            file_bytes: 0,
            live_bytes: 0,
        })
    }
    fn value_encoding(&self) -> Option<ValueEncoding> {
        Some(self.encoding)
    }
    fn key_page(&self, cursor: &[u8]) -> Result<Option<(Vec<Vec<u8>>, Option<Vec<u8>>)>> {
        self.keys_page(RedisDb::min_of(cursor)).map(Some)
    }
    fn item_page(
        &self,
        cursor: &[u8],
    ) -> Result<Option<(Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>)>> {
        self.items_page(RedisDb::min_of(cursor)).map(Some)
    }
}
