//! The PostgreSQL backend: a store is one table `(key bytea PRIMARY KEY, value bytea NOT NULL)`
//! (default name `cellar`, `?table=` in the URL, optionally `schema.table`), whose table comment
//! carries the metadata: `cellar-store format=1 encoding=pickle:4`.
//!
//! Every write is one statement in autocommit; a [`Batch`] is one transaction (runs of inserts
//! become one `INSERT ... SELECT unnest(...) ON CONFLICT DO UPDATE`, runs of deletes one
//! `DELETE ... = ANY(...)`). Iteration is keyset pagination (`WHERE key > $1 ORDER BY key
//! LIMIT n`), so nothing loads a whole table; `len()` is `count(*)`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cellar_engine::ValueEncoding;
use postgres::config::SslMode;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::{self, Verify};

use super::{
    bad_url, encoding_text, parse_encoding, plan, query_pairs, redact_url, seconds, Meta, OpenPlan,
    ServerErrorKind, DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, FORMAT_VERSION,
};
use crate::error::{DbmError, Result};
use crate::flag::{Access, Flag};
use crate::whichdb::{DbKind, WhichDb};
use crate::{Backend, Batch, Database, Info, ItemFn};

/// Rows per page of iteration.
const PAGE: i64 = 1000;
/// The comment that marks a table as a cellar store starts with this.
const MARK: &str = "cellar-store";

/// A table name: `name` or `schema.name`, each an unquoted SQL identifier.
fn quote_table(shown: &str, name: &str) -> Result<String> {
    let ok = |p: &str| {
        let mut c = p.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            && p.len() <= 63
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.is_empty() || parts.len() > 2 || !parts.iter().all(|p| ok(p)) {
        return Err(bad_url(
            shown,
            format!("table={name:?}: use letters, digits and '_' (optionally schema.table)"),
        ));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

struct Parsed {
    config: Config,
    /// The TLS connector (`None`: `sslmode=disable`).
    tls: Option<MakeRustlsConnect>,
    table: String,
    /// The name as given (for `to_regclass`).
    regclass: String,
}

fn parse(url: &str, shown: &str) -> Result<Parsed> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut table = "cellar".to_string();
    let mut timeout = DEFAULT_RESPONSE_TIMEOUT;
    let mut rest = Vec::new();
    let mut sslmode = "prefer".to_string();
    let mut rootcert = None;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "table" => table = v,
            "timeout" => timeout = seconds(shown, &k, &v)?,
            "sslmode" => sslmode = v,
            "sslrootcert" => rootcert = Some(v),
            _ => rest.push((k, v)),
        }
    }
    // libpq's modes: the client takes disable/prefer/require, and checks certificates through
    // the connector's configuration.
    let ca = match rootcert.as_deref() {
        None | Some("system") => None,
        Some(path) => Some(tls::read_pem(path).map_err(|m| bad_url(shown, m))?),
    };
    let (mode, verify) = match sslmode.as_str() {
        "disable" => (SslMode::Disable, None),
        "allow" | "prefer" => (SslMode::Prefer, Some(Verify::None)),
        // libpq: `require` with a root certificate file checks the chain, as verify-ca.
        "require" if ca.is_some() => (SslMode::Require, Some(Verify::Ca)),
        "require" => (SslMode::Require, Some(Verify::None)),
        "verify-ca" => (SslMode::Require, Some(Verify::Ca)),
        "verify-full" => (SslMode::Require, Some(Verify::Full)),
        other => {
            return Err(bad_url(
                shown,
                format!(
                    "sslmode={other:?}: use disable, allow, prefer, require, verify-ca or \
                     verify-full"
                ),
            ))
        }
    };
    let tls = match verify {
        Some(v) => Some(MakeRustlsConnect::new(
            tls::client_config(v, ca.as_deref()).map_err(|m| bad_url(shown, m))?,
        )),
        None => None,
    };
    let mut s = base.to_string();
    if !rest.is_empty() {
        s.push('?');
        let enc: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(rest.iter())
            .finish();
        s.push_str(&enc);
    }
    // The client's parse error may quote the input: report our own words only.
    let mut config = Config::from_str(&s).map_err(|_| {
        bad_url(
            shown,
            "not a PostgreSQL URL the client accepts (postgresql://user@host:port/dbname?...)",
        )
    })?;
    config.ssl_mode(mode);
    if config.get_user().is_none() {
        let user = std::env::var("PGUSER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "postgres".to_string());
        config.user(&user);
    }
    if config.get_password().is_none() {
        if let Ok(p) = std::env::var("PGPASSWORD") {
            config.password(p);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    // A dead peer is noticed by the kernel (keepalives, unacknowledged data), and the server
    // cancels any statement running longer than the response timeout.
    config.keepalives(true);
    config.keepalives_idle(std::time::Duration::from_secs(10));
    config.tcp_user_timeout(timeout);
    let ms = timeout.as_millis().max(1);
    let opts = match config.get_options() {
        Some(o) => format!("{o} -c statement_timeout={ms}"),
        None => format!("-c statement_timeout={ms}"),
    };
    config.options(&opts);
    if config.get_application_name().is_none() {
        config.application_name("cellar");
    }
    let quoted = quote_table(shown, &table)?;
    Ok(Parsed {
        config,
        tls,
        table: quoted,
        regclass: table,
    })
}

fn map_err(shown: &str, e: postgres::Error) -> DbmError {
    let kind = match e.code() {
        Some(c) if *c == SqlState::QUERY_CANCELED => ServerErrorKind::Timeout,
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW =>
        {
            ServerErrorKind::ConnectionLost
        }
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            ServerErrorKind::Auth
        }
        Some(_) => ServerErrorKind::Server,
        None if e.is_closed() => ServerErrorKind::ConnectionLost,
        None => {
            let text = e.to_string();
            if text.contains("TLS") || text.contains("certificate") {
                ServerErrorKind::Tls
            } else if text.contains("timed out") || text.contains("timeout") {
                ServerErrorKind::Timeout
            } else {
                ServerErrorKind::ConnectionLost
            }
        }
    };
    // The server's own words (`as_db_error`) or the client's; neither carries the password.
    let message = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    };
    DbmError::Server {
        backend: Backend::Postgres.name(),
        kind,
        target: shown.to_string(),
        message,
    }
}

/// A connection and the statements prepared on it (each prepared once per connection: one
/// round trip per call after that, as a hand-written client with prepared statements).
struct PgConn {
    client: Client,
    stmts: std::collections::HashMap<String, Statement>,
}

impl PgConn {
    fn st(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// A store in a PostgreSQL table (see the module documentation).
pub(crate) struct PgDb {
    shown: String,
    path: PathBuf,
    config: Config,
    tls: Option<MakeRustlsConnect>,
    table: String,
    regclass: String,
    client: Mutex<Option<PgConn>>,
    closed: AtomicBool,
    read_only: bool,
    encoding: ValueEncoding,
    sql: Sql,
}

/// The statements, with the table name filled in.
struct Sql {
    get: String,
    upsert: String,
    upsert_many: String,
    delete: String,
    delete_many: String,
    exists: String,
    count: String,
    keys_after: String,
    items_after: String,
    items_first: String,
}

impl Sql {
    fn new(t: &str) -> Sql {
        Sql {
            get: format!("SELECT value FROM {t} WHERE key = $1"),
            upsert: format!(
                "INSERT INTO {t} (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ),
            upsert_many: format!(
                "INSERT INTO {t} (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1"),
            delete_many: format!("DELETE FROM {t} WHERE key = ANY($1)"),
            exists: format!("SELECT 1 FROM {t} WHERE key = $1"),
            count: format!("SELECT count(*) FROM {t}"),
            keys_after: format!("SELECT key FROM {t} WHERE key > $1 ORDER BY key LIMIT $2"),
            items_after: format!("SELECT key, value FROM {t} WHERE key > $1 ORDER BY key LIMIT $2"),
            items_first: format!("SELECT key, value FROM {t} ORDER BY key LIMIT $1"),
        }
    }
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDb").field("url", &self.shown).finish()
    }
}

impl PgDb {
    fn new(url: &str, read_only: bool) -> Result<PgDb> {
        let shown = redact_url(url);
        let p = parse(url, &shown)?;
        Ok(PgDb {
            path: PathBuf::from(&shown),
            shown,
            config: p.config,
            tls: p.tls,
            sql: Sql::new(&p.table),
            table: p.table,
            regclass: p.regclass,
            client: Mutex::new(None),
            closed: AtomicBool::new(false),
            read_only,
            encoding: ValueEncoding::Raw,
        })
    }

    pub(crate) fn open(url: &str, flag: Flag, encoding: ValueEncoding) -> Result<PgDb> {
        let db = PgDb::new(url, flag.access() == Access::Read)?;
        let meta = db.read_meta()?;
        let encoding = match plan(meta, flag, &db.shown, Backend::Postgres)? {
            OpenPlan::Use(e) => e,
            plan @ (OpenPlan::Create | OpenPlan::Recreate) => {
                let recreate = matches!(plan, OpenPlan::Recreate);
                let comment = format!(
                    "{MARK} format={FORMAT_VERSION} encoding={}",
                    encoding_text(encoding)
                );
                let (t, rc) = (db.table.clone(), db.regclass.clone());
                db.with(|c| {
                    let mut tx = c.client.transaction()?;
                    // Two clients creating the same store at once: one waits for the other.
                    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&rc])?;
                    let row = tx.query_one(
                        "SELECT obj_description(to_regclass($1)::oid, 'pg_class')",
                        &[&rc],
                    )?;
                    let existing: Option<String> = row.get(0);
                    let ours = existing.as_deref().is_some_and(|c| c.starts_with(MARK));
                    tx.batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {t} (key bytea PRIMARY KEY, value bytea NOT NULL)"
                    ))?;
                    if recreate {
                        tx.batch_execute(&format!("TRUNCATE {t}"))?;
                    }
                    if recreate || !ours {
                        // The comment text is ours alone (no user input): safe to inline.
                        tx.batch_execute(&format!("COMMENT ON TABLE {t} IS '{comment}'"))?;
                    }
                    tx.commit()
                })?;
                match db.read_meta()? {
                    Meta::Store(e) => e,
                    _ => encoding,
                }
            }
        };
        Ok(PgDb { encoding, ..db })
    }

    /// `whichdb` for a PostgreSQL URL.
    pub(crate) fn detect(url: &str) -> Result<WhichDb> {
        let db = PgDb::new(url, true)?;
        Ok(match db.read_meta()? {
            Meta::Store(_) => WhichDb::Kind(DbKind::Postgres),
            Meta::Foreign => WhichDb::Unknown,
            Meta::Missing => WhichDb::Unreadable,
        })
    }

    fn read_meta(&self) -> Result<Meta> {
        let rc = self.regclass.clone();
        let (exists, comment): (bool, Option<String>) = self.with(|c| {
            let row = c.client.query_one(
                "SELECT to_regclass($1) IS NOT NULL, \
                 obj_description(to_regclass($1)::oid, 'pg_class')",
                &[&rc],
            )?;
            Ok((row.get(0), row.get(1)))
        })?;
        if !exists {
            return Ok(Meta::Missing);
        }
        let Some(comment) = comment.filter(|c| c.starts_with(MARK)) else {
            return Ok(Meta::Foreign);
        };
        let mut format = None;
        let mut encoding = ValueEncoding::Raw;
        for part in comment[MARK.len()..].split_whitespace() {
            if let Some(v) = part.strip_prefix("format=") {
                format = v.parse::<u32>().ok();
            } else if let Some(v) = part.strip_prefix("encoding=") {
                encoding = parse_encoding(v).unwrap_or(ValueEncoding::Raw);
            }
        }
        match format {
            Some(v) if v <= FORMAT_VERSION => Ok(Meta::Store(encoding)),
            _ => Err(DbmError::Server {
                backend: Backend::Postgres.name(),
                kind: ServerErrorKind::Server,
                target: self.shown.clone(),
                message: format!(
                    "table comment {comment:?} names a store format this cellar does not read \
                     (it reads up to {FORMAT_VERSION})"
                ),
            }),
        }
    }

    /// Runs `f` with the client, connecting first if there is none; a closed connection is
    /// dropped so the next call reconnects.
    fn with<T>(&self, f: impl FnOnce(&mut PgConn) -> Result<T, postgres::Error>) -> Result<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(DbmError::Closed);
        }
        let mut g = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            let c = match &self.tls {
                Some(t) => self.config.connect(t.clone()),
                None => self.config.connect(NoTls),
            };
            let c = c.map_err(|e| {
                let mut err = map_err(&self.shown, e);
                if let DbmError::Server { kind, .. } = &mut err {
                    if *kind == ServerErrorKind::ConnectionLost {
                        *kind = ServerErrorKind::Unavailable;
                    }
                }
                err
            })?;
            *g = Some(PgConn {
                client: c,
                stmts: std::collections::HashMap::new(),
            });
        }
        let client = g.as_mut().ok_or(DbmError::Closed)?;
        match f(client) {
            Ok(v) => Ok(v),
            Err(e) => {
                let err = map_err(&self.shown, e);
                if client.client.is_closed()
                    || matches!(
                        err,
                        DbmError::Server {
                            kind: ServerErrorKind::ConnectionLost | ServerErrorKind::Timeout,
                            ..
                        }
                    )
                {
                    *g = None;
                }
                Err(err)
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

    /// Up to [`PAGE`] pairs after `after` (from the first key when `None`), in key order.
    #[allow(clippy::type_complexity)]
    fn items_after(&self, after: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.with(|c| {
            let rows = match after {
                None => {
                    let st = c.st(&self.sql.items_first)?;
                    c.client.query(&st, &[&PAGE])?
                }
                Some(a) => {
                    let st = c.st(&self.sql.items_after)?;
                    c.client.query(&st, &[&a, &PAGE])?
                }
            };
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Up to `limit` keys after `after` (all keys when `after` is `None`), in key order.
    fn keys_after(&self, after: Option<&[u8]>, limit: i64) -> Result<Vec<Vec<u8>>> {
        let sql = &self.sql;
        match after {
            // Every bytea sorts after the empty one except itself: fetch it first.
            None => {
                let mut out: Vec<Vec<u8>> = Vec::new();
                if self.contains(b"")? {
                    out.push(Vec::new());
                }
                let rest = self.keys_after(Some(b""), limit - out.len() as i64)?;
                out.extend(rest);
                Ok(out)
            }
            Some(a) => self.with(|c| {
                let st = c.st(&sql.keys_after)?;
                Ok(c.client
                    .query(&st, &[&a, &limit])?
                    .into_iter()
                    .map(|r| r.get::<_, Vec<u8>>(0))
                    .collect())
            }),
        }
    }
}

impl Database for PgDb {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with(|c| {
            let st = c.st(&self.sql.get)?;
            Ok(c.client.query_opt(&st, &[&key])?.map(|r| r.get(0)))
        })
    }
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.writable()?;
        self.with(|c| {
            let st = c.st(&self.sql.upsert)?;
            c.client.execute(&st, &[&key, &value]).map(|_| ())
        })
    }
    fn remove(&self, key: &[u8]) -> Result<bool> {
        self.writable()?;
        self.with(|c| {
            let st = c.st(&self.sql.delete)?;
            Ok(c.client.execute(&st, &[&key])? == 1)
        })
    }
    fn contains(&self, key: &[u8]) -> Result<bool> {
        self.with(|c| {
            let st = c.st(&self.sql.exists)?;
            Ok(c.client.query_opt(&st, &[&key])?.is_some())
        })
    }
    fn len(&self) -> Result<usize> {
        self.with(|c| {
            let st = c.st(&self.sql.count)?;
            Ok(c.client.query_one(&st, &[])?.get::<_, i64>(0) as usize)
        })
    }
    fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.keys_after(after.as_deref(), PAGE)?;
            let done = (page.len() as i64) < PAGE;
            after = page.last().cloned().or(after);
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }
    fn for_each(&self, f: &mut ItemFn<'_>) -> Result<()> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = self.items_after(after.as_deref())?;
            for (k, v) in &rows {
                f(k, v)?;
            }
            match rows.last() {
                Some((k, _)) if rows.len() as i64 == PAGE => after = Some(k.clone()),
                _ => return Ok(()),
            }
        }
    }
    fn batch(&self, batch: &Batch) -> Result<()> {
        self.writable()?;
        if batch.is_empty() {
            return Ok(());
        }
        let sql = &self.sql;
        self.with(|c| {
            let upsert_many = c.st(&sql.upsert_many)?;
            let delete_many = c.st(&sql.delete_many)?;
            let mut tx = c.client.transaction()?;
            // Consecutive operations of one kind on distinct keys go in one statement.
            let ops: Vec<(&[u8], Option<&[u8]>)> = batch.ops().collect();
            let mut i = 0;
            while i < ops.len() {
                let setting = ops[i].1.is_some();
                let mut seen = std::collections::HashSet::new();
                let mut keys: Vec<&[u8]> = Vec::new();
                let mut values: Vec<&[u8]> = Vec::new();
                while i < ops.len() && ops[i].1.is_some() == setting && seen.insert(ops[i].0) {
                    keys.push(ops[i].0);
                    if let Some(v) = ops[i].1 {
                        values.push(v);
                    }
                    i += 1;
                }
                if setting {
                    tx.execute(&upsert_many, &[&keys, &values])?;
                } else {
                    tx.execute(&delete_many, &[&keys])?;
                }
            }
            tx.commit()
        })
    }
    fn sync(&self) -> Result<()> {
        // Each write is committed when it returns (durable as synchronous_commit says).
        if self.closed.load(Ordering::Acquire) {
            return Err(DbmError::Closed);
        }
        Ok(())
    }
    fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.client.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }
    fn compact(&self) -> Result<()> {
        self.writable()?;
        let t = self.table.clone();
        self.with(|c| c.client.batch_execute(&format!("VACUUM {t}")))
    }
    fn info(&self) -> Result<Info> {
        let (t, rc) = (self.table.clone(), self.regclass.clone());
        let (keys, file_bytes, live_bytes) = self.with(|c| {
            let row = c.client.query_one(
                &format!(
                    "SELECT count(*), pg_total_relation_size(to_regclass($1))::bigint, \
                     coalesce(sum(octet_length(key) + octet_length(value)), 0)::bigint FROM {t}"
                ),
                &[&rc],
            )?;
            Ok((
                row.get::<_, i64>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2),
            ))
        })?;
        Ok(Info {
            backend: Backend::Postgres,
            keys: keys as u64,
            file_bytes: file_bytes as u64,
            live_bytes: live_bytes as u64,
        })
    }
    fn value_encoding(&self) -> Option<ValueEncoding> {
        Some(self.encoding)
    }
    fn key_page(&self, cursor: &[u8]) -> Result<Option<(Vec<Vec<u8>>, Option<Vec<u8>>)>> {
        // The cursor is a marker byte then the last key returned (empty: start).
        let after = cursor.get(1..);
        let keys = self.keys_after(after, PAGE)?;
        let next = if (keys.len() as i64) < PAGE {
            None
        } else {
            keys.last().map(|k| {
                let mut c = vec![b'>'];
                c.extend_from_slice(k);
                c
            })
        };
        Ok(Some((keys, next)))
    }
    fn item_page(
        &self,
        cursor: &[u8],
    ) -> Result<Option<(Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>)>> {
        // The cursor is a marker byte then the last key returned (empty: start).
        let items = self.items_after(cursor.get(1..))?;
        let next = if (items.len() as i64) < PAGE {
            None
        } else {
            items.last().map(|(k, _)| {
                let mut c = vec![b'>'];
                c.extend_from_slice(k);
                c
            })
        };
        Ok(Some((items, next)))
    }
}
