//! The store commands: `get`, `set`, `del`, `keys`, `dump`, `load`, `convert`, `info`, `check`,
//! `repair`, `compact`, on every format cellar opens (native, sqlite3, dumb; the legacy
//! dbm.gnu and dbm.ndbm files for the read-only commands `get`, `keys`, `dump`, `info`,
//! `check` and as the source of `convert`).
//!
//! Keys and values are bytes. On the command line a key or value is UTF-8 text, or, with
//! `--literal`, a Python literal (`b'\x00\xff'`, `'é'`). Output shows them as Python literals
//! (`b'...'`), or decoded with `--decode marshal`, or as JSON with `--json`.
//!
//! Every store command also takes a server URL where it takes a path (`redis://host:port/0?prefix=app:`,
//! `redis+cluster://h1:7000,h2:7001/?prefix=app:`, `postgresql://user@host/db?table=t`): the
//! URL is shown with its password replaced by `***`. `check` on a server store reads every
//! key and compares the count with the store's own; `compact` is `VACUUM` on PostgreSQL and
//! nothing on Redis (it frees memory itself); `convert` goes both ways between files and
//! servers, with the same count and checksum verification.
//!
//! `dump` / `load` use JSON Lines, one `{"key": K, "value": V}` object per line, where K and V
//! are JSON strings when the bytes are valid UTF-8 and `{"base64": "..."}` otherwise, so any
//! bytes round-trip exactly.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value as Json};

use cellar::dbm::{self, Backend, Batch, Database, DbKind, Flag, ValueEncoding, WhichDb};
use cellar::marshal;
use cellar::value::{bytes_repr, parse, repr, Value};

/// How values are shown (`--decode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Decode {
    /// Raw bytes, as a Python bytes literal.
    Bytes,
    /// Decode each value as marshal data and show the Python value (never executes anything).
    Marshal,
    /// Decode each value as a pickle, safely: objects of any class shown inertly.
    Pickle,
}

/// Output format.
#[derive(Clone, Copy, Debug, Default)]
pub struct Output {
    pub json: bool,
    pub decode: Option<Decode>,
}

/// Parses a key or value given on the command line.
pub fn arg_bytes(text: &str, literal: bool) -> Result<Vec<u8>> {
    if !literal {
        return Ok(text.as_bytes().to_vec());
    }
    match &parse(text).map_err(|e| anyhow::anyhow!("not a Python literal: {e}"))? {
        Value::Bytes(b) => Ok(b.to_vec()),
        Value::Str(s) => Ok(s.as_bytes().to_vec()),
        other => bail!("expected a bytes or str literal, got {}", other.type_name()),
    }
}

/// How a store is named in messages: its path, or its URL with the password hidden.
pub fn show(path: &Path) -> String {
    match path.to_str() {
        Some(s) if dbm::is_server_url(s) => dbm::redact_url(s),
        _ => path.display().to_string(),
    }
}

/// Whether `path` is a server URL rather than a file.
fn is_url(path: &Path) -> bool {
    path.to_str().is_some_and(dbm::is_server_url)
}

fn open(path: &Path, flag: &str) -> Result<Box<dyn Database>> {
    if is_url(path) {
        // The server says what is wrong (no such store, unreachable, refused) itself.
        return dbm::open_str(path, flag, dbm::DEFAULT_MODE).map_err(|e| in_cli_words(path, &e));
    }
    if !flag.starts_with(['c', 'n']) {
        require_store(path)?;
    } else if path.is_dir() {
        bail!("{} is a directory, not a store", show(path));
    }
    dbm::open_str(path, flag, dbm::DEFAULT_MODE).map_err(|e| in_cli_words(path, &e))
}

/// A store error as the CLI says it: the engine's advice names `PATH`, the CLI names the file,
/// and the file is named once.
fn in_cli_words(path: &Path, e: &dyn std::fmt::Display) -> anyhow::Error {
    let shown = show(path);
    let msg = e.to_string().replace("PATH", &shown);
    if msg.starts_with(&shown) || (is_url(path) && msg.contains(&shown)) {
        anyhow::anyhow!("{msg}")
    } else {
        anyhow::anyhow!("{shown}: {msg}")
    }
}

/// Fails, in the CLI's words, when PATH names nothing a read or an update could open.
fn require_store(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{} is a directory, not a store", show(path));
    }
    if dbm::whichdb(path) == WhichDb::Unreadable {
        bail!(
            "{}: no such store (`cellar set`, `cellar load` and `cellar convert` create one)",
            show(path)
        );
    }
    Ok(())
}

/// Every file a store at `path` may consist of, whatever its backend.
fn store_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    for suffix in [".dat", ".dir", ".bak", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    files
}

/// Removes the files of a store that a failed `load`/`convert` created, so a failure leaves
/// nothing new behind. Declare it before the store handle, so the handle is closed first.
struct NewStore {
    created: Vec<PathBuf>,
    keep: bool,
}

impl NewStore {
    fn new(path: &Path) -> NewStore {
        if is_url(path) {
            // A server namespace is not files: nothing to remove.
            return NewStore {
                created: Vec::new(),
                keep: false,
            };
        }
        let created = store_files(path)
            .into_iter()
            .filter(|f| f.symlink_metadata().is_err())
            .collect();
        NewStore {
            created,
            keep: false,
        }
    }
}

impl Drop for NewStore {
    fn drop(&mut self) {
        if !self.keep {
            for f in &self.created {
                // Best effort: a file that was never created is simply not there.
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// `out` with its decoding settled: without `--decode`, a native store whose header records a
/// codec (a shelf made by cellar) is decoded with it; `--decode bytes` always shows raw bytes.
fn settle(out: Output, db: &dyn Database) -> Output {
    if out.decode.is_some() {
        return out;
    }
    let decode = match db.value_encoding() {
        Some(dbm::ValueEncoding::Pickle { .. }) => Some(Decode::Pickle),
        Some(dbm::ValueEncoding::Marshal { .. }) => Some(Decode::Marshal),
        _ => None,
    };
    Output { decode, ..out }
}

fn show_value(v: &[u8], out: Output) -> Result<String> {
    Ok(match out.decode {
        Some(Decode::Marshal) => {
            let value = marshal::loads_with(
                v,
                &marshal::LoadOptions {
                    allow_code: false,
                    ..Default::default()
                },
            )
            .map_err(|e| anyhow::anyhow!("value is not marshal data: {e}"))?
            .0;
            repr(&value)
        }
        Some(Decode::Pickle) => {
            let value = crate::pickle_show::decode(v)
                .map_err(|e| anyhow::anyhow!("value is not a pickle: {e}"))?;
            crate::pickle_show::show(&value)
        }
        _ => bytes_repr(v),
    })
}

/// JSON form of bytes: a string when UTF-8, else `{"base64": ...}`.
pub fn bytes_json(b: &[u8]) -> Json {
    match std::str::from_utf8(b) {
        Ok(s) => Json::String(s.to_string()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
    }
}

fn json_bytes(v: &Json, what: &str, line: usize) -> Result<Vec<u8>> {
    match v {
        Json::String(s) => Ok(s.as_bytes().to_vec()),
        Json::Object(o) => match o.get("base64") {
            Some(Json::String(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .with_context(|| format!("line {line}: bad base64 in {what}")),
            _ => bail!("line {line}: {what} must be a string or {{\"base64\": \"...\"}}"),
        },
        _ => bail!("line {line}: {what} must be a string or {{\"base64\": \"...\"}}"),
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    // Drawn only when stderr is a terminal (indicatif hides itself otherwise).
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

pub fn get(path: &Path, key: &[u8], out: Output) -> Result<()> {
    let db = open(path, "r")?;
    let out = settle(out, db.as_ref());
    let Some(v) = db.get(key)? else {
        bail!("key {} not found in {}", bytes_repr(key), show(path));
    };
    if out.json {
        println!(
            "{}",
            json!({ "key": bytes_json(key), "value": bytes_json(&v) })
        );
    } else {
        println!("{}", show_value(&v, out)?);
    }
    Ok(())
}

pub fn set(path: &Path, key: &[u8], value: &[u8]) -> Result<()> {
    let db = open(path, "c")?;
    db.insert(key, value)?;
    db.close()?;
    Ok(())
}

pub fn del(path: &Path, key: &[u8]) -> Result<()> {
    let db = open(path, "w")?;
    if !db.remove(key)? {
        bail!("key {} not found in {}", bytes_repr(key), show(path));
    }
    db.close()?;
    Ok(())
}

pub fn keys(path: &Path, out: Output) -> Result<()> {
    let db = open(path, "r")?;
    if !out.json {
        // Server stores: a page at a time, never the whole namespace in memory.
        let mut cursor = Vec::new();
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        while let Some((page, next)) = db.key_page(&cursor)? {
            for k in page {
                writeln!(stdout, "{}", bytes_repr(&k))?;
            }
            match next {
                Some(c) => cursor = c,
                None => {
                    stdout.flush()?;
                    return Ok(());
                }
            }
        }
    }
    let keys = db.keys()?;
    let mut stdout = std::io::stdout().lock();
    if out.json {
        writeln!(
            stdout,
            "{}",
            Json::Array(keys.iter().map(|k| bytes_json(k)).collect())
        )?;
    } else {
        for k in keys {
            writeln!(stdout, "{}", bytes_repr(&k))?;
        }
    }
    Ok(())
}

pub fn dump(path: &Path, out: Output) -> Result<()> {
    let db = open(path, "r")?;
    let out = settle(out, db.as_ref());
    let pb = progress(db.len()? as u64, "dump");
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut result = Ok(());
    db.for_each(&mut |k, v| {
        let mut line = json!({ "key": bytes_json(k), "value": bytes_json(v) });
        if matches!(out.decode, Some(Decode::Marshal | Decode::Pickle)) {
            // Informational only: `load` ignores it.
            if let (Ok(text), Json::Object(o)) = (show_value(v, out), &mut line) {
                o.insert("repr".into(), Json::String(text));
            }
        }
        if let Err(e) = writeln!(stdout, "{line}") {
            result = Err(e);
        }
        pb.inc(1);
        Ok(())
    })?;
    pb.finish_and_clear();
    result?;
    stdout.flush()?;
    Ok(())
}

pub fn load(path: &Path, input: Option<&Path>, to: Option<Backend>) -> Result<()> {
    let reader: Box<dyn BufRead> = match input {
        Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        _ => Box::new(std::io::stdin().lock()),
    };
    let mut new_store = NewStore::new(path);
    let db = match to {
        Some(b) if !is_url(path) && !path.exists() => {
            b.open(path, Flag::Create, dbm::DEFAULT_MODE)?
        }
        _ => open(path, "c")?,
    };
    let pb = progress(0, "load");
    let mut batch = Batch::new();
    let mut n = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Json =
            serde_json::from_str(&line).with_context(|| format!("line {}: not JSON", i + 1))?;
        let k = json_bytes(v.get("key").unwrap_or(&Json::Null), "key", i + 1)?;
        let val = json_bytes(v.get("value").unwrap_or(&Json::Null), "value", i + 1)?;
        batch.insert(k, val);
        n += 1;
        if batch.len() >= 1000 {
            db.batch(&batch)?;
            batch.clear();
            pb.set_position(n);
        }
    }
    if !batch.is_empty() {
        db.batch(&batch)?;
    }
    db.close()?;
    new_store.keep = true;
    pb.finish_and_clear();
    eprintln!("loaded {n} records into {}", show(path));
    Ok(())
}

/// An order-independent checksum of a store's contents (FNV-1a of each pair, summed).
fn checksum(db: &dyn Database) -> Result<(u64, u64)> {
    let mut sum = 0u64;
    let mut count = 0u64;
    db.for_each(&mut |k, v| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in (k.len() as u64).to_le_bytes().iter().chain(k).chain(v) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        sum = sum.wrapping_add(h);
        count += 1;
        Ok(())
    })?;
    Ok((count, sum))
}

/// The value encoding `--values` asks for (`pickle`, `pickle:N`, `marshal[:N]`, `raw`); for a
/// bare `pickle`, the protocol comes from the first value's PROTO opcode (0 without one).
fn values_encoding(spec: &str, from: &dyn Database) -> Result<ValueEncoding> {
    let (kind, num) =
        match spec.split_once(':') {
            Some((k, n)) => (
                k,
                Some(n.parse::<u8>().map_err(|_| {
                    anyhow::anyhow!("--values {spec}: {n:?} is not a version number")
                })?),
            ),
            None => (spec, None),
        };
    Ok(match kind {
        "raw" => ValueEncoding::Raw,
        "marshal" => ValueEncoding::Marshal {
            version: num.unwrap_or(4),
        },
        "pickle" => {
            let protocol = match num {
                Some(p) => p,
                None => {
                    let mut first = None;
                    from.for_each(&mut |_, v| {
                        if first.is_none() {
                            first = Some(match v {
                                [0x80, p, ..] => *p,
                                _ => 0,
                            });
                        }
                        Ok(())
                    })?;
                    first.unwrap_or(cellar::pickle::DEFAULT_PROTOCOL)
                }
            };
            if protocol > cellar::pickle::HIGHEST_PROTOCOL {
                bail!("--values {spec}: pickle protocol {protocol} does not exist");
            }
            ValueEncoding::Pickle { protocol }
        }
        other => bail!("--values must be pickle[:N], marshal[:N] or raw, not {other:?}"),
    })
}

pub fn convert(src: &Path, dst: &Path, to: Backend, values: Option<&str>) -> Result<()> {
    let from = open(src, "r")?;
    if is_url(dst) {
        if dbm::whichdb(dst) != WhichDb::Unreadable {
            bail!(
                "{} exists (the namespace holds data); convert writes a new store",
                show(dst)
            );
        }
    } else if dst.exists() {
        bail!("{} exists; convert writes a new store", show(dst));
    }
    let encoding = match values {
        Some(spec) => values_encoding(spec, from.as_ref())?,
        None => from.value_encoding().unwrap_or_default(),
    };
    let mut new_store = NewStore::new(dst);
    let into = if is_url(dst) {
        // The URL's scheme names the backend.
        dbm::open_with(dst, Flag::New, dbm::DEFAULT_MODE, encoding)
            .map_err(|e| in_cli_words(dst, &e))?
    } else {
        to.open_with(dst, Flag::New, dbm::DEFAULT_MODE, encoding)?
    };
    let pb = progress(from.len()? as u64, "convert");
    let mut batch = Batch::new();
    let mut err = None;
    from.for_each(&mut |k, v| {
        batch.insert(k, v);
        if batch.len() >= 1000 {
            if let Err(e) = into.batch(&batch) {
                err = Some(e);
            }
            pb.inc(batch.len() as u64);
            batch.clear();
        }
        Ok(())
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    if !batch.is_empty() {
        into.batch(&batch)?;
    }
    into.sync()?;
    pb.finish_and_clear();
    let (n1, c1) = checksum(from.as_ref())?;
    let (n2, c2) = checksum(into.as_ref())?;
    into.close()?;
    if (n1, c1) != (n2, c2) {
        if is_url(dst) {
            // Leave nothing half-made behind on the server either.
            drop(dbm::open(dst, Flag::New, dbm::DEFAULT_MODE));
        }
        bail!("verification failed: source has {n1} keys (checksum {c1:#018x}), destination {n2} ({c2:#018x}); {} was removed", show(dst));
    }
    new_store.keep = true;
    println!(
        "converted {n1} keys from {} ({}) to {} ({})\n  source:      {n1} keys, checksum \
         {c1:#018x}\n  destination: {n2} keys, checksum {c2:#018x}\n  count and checksums match",
        show(src),
        from.backend().name(),
        show(dst),
        into.backend().name()
    );
    Ok(())
}

/// A byte count for people: `804.7 KiB`, or the exact count with `--bytes`.
fn size(n: u64, exact: bool) -> String {
    if exact || n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in ["KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({n} bytes)")
}

/// `cellar info`: what a store is, how big, and whether it is healthy (native stores are
/// checked record by record; exit status 1 when damage is found).
pub fn info(path: &Path, out: Output, exact: bool) -> Result<()> {
    refuse_special(path)?;
    let kind = match dbm::whichdb(path) {
        WhichDb::Kind(k) => k,
        WhichDb::Unreadable => {
            if is_url(path) {
                // Unreachable, refused, or no store there: the open says which.
                open(path, "r")?;
            }
            return require_store(path);
        }
        WhichDb::Unknown => bail!(
            "{} is not a store cellar recognises (native, sqlite3, dumb, dbm.gnu, dbm.ndbm); if it \
             is a damaged native store, `cellar repair {} NEW` salvages its records",
            show(path),
            show(path)
        ),
    };
    let db = open(path, "r")?;
    let i = db.info()?;
    if kind.is_server() {
        return server_info(path, kind, db.as_ref(), &i, out, exact);
    }
    let mut json_fields = serde_json::Map::new();
    let mut human: Vec<(String, String)> = vec![
        ("store".into(), show(path)),
        ("format".into(), kind.name().into()),
        ("keys".into(), i.keys.to_string()),
        ("file size".into(), size(i.file_bytes, exact)),
        ("live data".into(), size(i.live_bytes, exact)),
    ];
    json_fields.insert("format".into(), json!(kind.name()));
    json_fields.insert("keys".into(), json!(i.keys));
    json_fields.insert("file_bytes".into(), json!(i.file_bytes));
    json_fields.insert("live_bytes".into(), json!(i.live_bytes));
    let mut damaged = None;
    if matches!(kind, DbKind::Gnu | DbKind::Ndbm) {
        if let Some(b) = Backend::from_kind(kind) {
            let legacy = dbm::open_legacy(path, b)?;
            human.push(("variant".into(), legacy.variant().to_string()));
            human.push((
                "read-only".into(),
                "yes (`cellar convert` migrates it)".into(),
            ));
            json_fields.insert("variant".into(), json!(legacy.variant()));
            json_fields.insert("read_only".into(), json!(true));
        }
    }
    if kind == DbKind::Native {
        db.close()?;
        let store = cellar::engine::Store::open(
            path,
            cellar::engine::Options {
                read_only: true,
                create: false,
                ..Default::default()
            },
        )?;
        let s = store.stats()?;
        let report = cellar::engine::check_file(path)?;
        human.push(("dead (reclaimable)".into(), size(s.dead_bytes, exact)));
        human.push(("index checkpoint".into(), size(s.checkpoint_bytes, exact)));
        human.push(("value encoding".into(), store.value_encoding().to_string()));
        human.push((
            "compression".into(),
            format!(
                "{:.2}x{}",
                s.compression_ratio,
                if s.has_dictionary {
                    " (trained dictionary)"
                } else {
                    ""
                }
            ),
        ));
        human.push((
            "compact section".into(),
            if s.compact_blocks == 0 {
                "none (log only; `cellar compact` writes one)".into()
            } else {
                format!(
                    "{} blocks, {} entries, dictionary {}",
                    s.compact_blocks,
                    s.compact_entries,
                    size(s.dictionary_bytes, exact)
                )
            },
        ));
        human.push((
            "block cache".into(),
            format!(
                "{} budget, {} held, {} hits, {} misses",
                size(s.block_cache_capacity, exact),
                size(s.block_cache_bytes, exact),
                s.block_cache_hits,
                s.block_cache_misses
            ),
        ));
        human.push(("generation".into(), s.generation.to_string()));
        human.push((
            "closed cleanly".into(),
            if report.closed_cleanly {
                "yes".into()
            } else {
                match report.torn_tail {
                    Some((off, len)) => format!(
                        "no: a writer has it open or died; an unfinished commit of {len} bytes at \
                         offset {off} is dropped by the next writer"
                    ),
                    None => {
                        "no: a writer has it open, or died before closing (nothing was lost)".into()
                    }
                }
            },
        ));
        let problems =
            report.damage.len() + report.checkpoint.len() + usize::from(report.header.is_some());
        let status = if report.is_ok() {
            "ok".to_string()
        } else {
            damaged = Some(problems);
            format!(
                "DAMAGED: {problems} problem(s); `cellar check {}` lists them, `cellar repair {} \
                 NEW` salvages every intact record",
                show(path),
                show(path)
            )
        };
        human.push(("status".into(), status));
        json_fields.insert("dead_bytes".into(), json!(s.dead_bytes));
        json_fields.insert("checkpoint_bytes".into(), json!(s.checkpoint_bytes));
        json_fields.insert("compression_ratio".into(), json!(s.compression_ratio));
        json_fields.insert("has_dictionary".into(), json!(s.has_dictionary));
        json_fields.insert("dictionary_bytes".into(), json!(s.dictionary_bytes));
        json_fields.insert("compact_blocks".into(), json!(s.compact_blocks));
        json_fields.insert("compact_entries".into(), json!(s.compact_entries));
        json_fields.insert("block_cache_capacity".into(), json!(s.block_cache_capacity));
        json_fields.insert("block_cache_bytes".into(), json!(s.block_cache_bytes));
        json_fields.insert("block_cache_hits".into(), json!(s.block_cache_hits));
        json_fields.insert("block_cache_misses".into(), json!(s.block_cache_misses));
        json_fields.insert(
            "value_encoding".into(),
            json!(store.value_encoding().to_string()),
        );
        json_fields.insert("generation".into(), json!(s.generation));
        json_fields.insert("closed_cleanly".into(), json!(report.closed_cleanly));
        json_fields.insert("ok".into(), json!(report.is_ok()));
    }
    if out.json {
        println!("{}", Json::Object(json_fields));
    } else {
        print_fields(&human);
    }
    if let Some(n) = damaged {
        bail!("{} is damaged ({n} problem(s))", show(path));
    }
    Ok(())
}

/// `cellar info` on a server store.
fn server_info(
    path: &Path,
    kind: DbKind,
    db: &dyn Database,
    i: &dbm::Info,
    out: Output,
    exact: bool,
) -> Result<()> {
    let encoding = db.value_encoding().unwrap_or_default();
    if out.json {
        let mut o = json!({
            "format": kind.name(),
            "store": show(path),
            "keys": i.keys,
            "value_encoding": encoding.to_string(),
        });
        if kind == DbKind::Postgres {
            o["table_bytes"] = json!(i.file_bytes);
            o["live_bytes"] = json!(i.live_bytes);
        }
        println!("{o}");
        return Ok(());
    }
    let mut f: Vec<(String, String)> = vec![
        ("store".into(), show(path)),
        ("format".into(), kind.name().into()),
        ("keys".into(), i.keys.to_string()),
        ("value encoding".into(), encoding.to_string()),
    ];
    if kind == DbKind::Postgres {
        f.push(("table size".into(), size(i.file_bytes, exact)));
        f.push(("live data".into(), size(i.live_bytes, exact)));
    }
    print_fields(&f);
    Ok(())
}

/// `cellar check` on a server store: reads every pair (a page at a time) and compares the
/// number read with the store's own count.
fn check_server(path: &Path, json: bool) -> Result<()> {
    let db = open(path, "r")?;
    let counted = db.len()? as u64;
    let mut read = 0u64;
    let mut bytes = 0u64;
    db.for_each(&mut |k, v| {
        read += 1;
        bytes += (k.len() + v.len()) as u64;
        Ok(())
    })?;
    let ok = read == counted;
    if json {
        println!(
            "{}",
            json!({"store": show(path), "format": db.backend().name(), "keys": counted,
                   "read": read, "live_bytes": bytes, "ok": ok})
        );
    } else {
        print_fields(&[
            ("store".into(), show(path)),
            ("format".into(), db.backend().name().into()),
            ("keys (store's count)".into(), counted.to_string()),
            ("pairs read".into(), read.to_string()),
            (
                "status".into(),
                if ok { "ok".into() } else { "MISMATCH".into() },
            ),
        ]);
    }
    if !ok {
        bail!(
            "{}: the store counts {counted} keys but {read} were read (writers active, or the \
             count was changed outside cellar)",
            show(path)
        );
    }
    Ok(())
}

fn native_only(path: &Path, what: &str) -> Result<()> {
    match dbm::whichdb(path) {
        WhichDb::Kind(DbKind::Native) => Ok(()),
        WhichDb::Kind(k) => bail!(
            "{what} works on native stores; {} is {} (convert it with `cellar convert`)",
            show(path),
            k.name()
        ),
        WhichDb::Unreadable => require_store(path),
        WhichDb::Unknown => bail!("{}: db type could not be determined", show(path)),
    }
}

fn check_legacy(path: &Path, backend: Backend) -> Result<()> {
    let db = dbm::open_legacy(path, backend)?;
    let report = db.check();
    if report.is_ok() {
        println!(
            "{}: ok ({}, {} pairs readable)",
            show(path),
            db.variant(),
            report.readable
        );
        return Ok(());
    }
    println!(
        "{}: damaged ({}): {} pairs readable, {} damaged structures:",
        show(path),
        db.variant(),
        report.readable,
        report.problems.len()
    );
    for p in report.problems.iter().take(50) {
        println!("  {p}");
    }
    if report.problems.len() > 50 {
        println!("  ... and {} more", report.problems.len() - 50);
    }
    bail!(
        "{} is damaged; `cellar repair {} NEW` copies every readable pair into a new store",
        show(path),
        show(path)
    )
}

/// Refuses a FIFO, socket or device at once (opening a FIFO would block).
fn refuse_special(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::metadata(path) {
        let t = m.file_type();
        if !t.is_file() && !t.is_dir() {
            let kind = if t.is_fifo() {
                "a FIFO (named pipe)"
            } else if t.is_socket() {
                "a socket"
            } else {
                "a device or other special file"
            };
            bail!("{} is {kind}, not a store", show(path));
        }
    }
    Ok(())
}

/// A native store, or a file that is probably one with a damaged header (check and repair
/// work on those from the records alone).
fn native_or_damaged(path: &Path, what: &str) -> Result<()> {
    refuse_special(path)?;
    match dbm::whichdb(path) {
        WhichDb::Kind(DbKind::Native) => Ok(()),
        WhichDb::Unknown if cellar::engine::looks_like_store(path) => Ok(()),
        _ => native_only(path, what),
    }
}

/// The damaged regions of a check or repair report, for `--json`.
fn damage_json(damage: &[cellar::engine::Damage]) -> Vec<Json> {
    damage
        .iter()
        .map(|d| json!({"offset": d.offset, "len": d.len, "reason": d.reason}))
        .collect()
}

/// Prints `key: value` lines with the values aligned.
fn print_fields(fields: &[(String, String)]) {
    let w = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in fields {
        println!("{:<w$} {v}", format!("{k}:"));
    }
}

pub fn check(path: &Path, json: bool) -> Result<()> {
    if is_url(path) {
        return check_server(path, json);
    }
    refuse_special(path)?;
    if let WhichDb::Kind(k @ (DbKind::Gnu | DbKind::Ndbm)) = dbm::whichdb(path) {
        if let Some(b) = Backend::from_kind(k) {
            return check_legacy(path, b);
        }
    }
    native_or_damaged(path, "check")?;
    let mut report = cellar::engine::check_file(path)?;
    // The index (and anything open itself reports) from a read-only open, when it opens.
    let open_error = match cellar::engine::Store::open(
        path,
        cellar::engine::Options {
            read_only: true,
            create: false,
            ..Default::default()
        },
    ) {
        Ok(store) => {
            if let Ok(r) = store.check() {
                report.index_errors = r.index_errors;
            }
            None
        }
        Err(e) => Some(e.to_string()),
    };
    let mut f: Vec<(String, String)> = vec![
        ("store".into(), show(path)),
        ("file bytes".into(), report.file_bytes.to_string()),
        ("intact records".into(), report.records.to_string()),
        (
            "header".into(),
            report
                .header
                .as_deref()
                .map_or("ok".into(), |h| format!("DAMAGED: {h}")),
        ),
    ];
    if report.checkpoint.is_empty() {
        f.push(("checkpoint".into(), "agrees with the file".into()));
    }
    for c in &report.checkpoint {
        f.push(("checkpoint".into(), format!("DISAGREES: {c}")));
    }
    f.push(("damaged regions".into(), report.damage.len().to_string()));
    for d in report.damage.iter().take(50) {
        f.push((
            format!("  at offset {}", d.offset),
            format!("{} bytes: {}", d.len, d.reason),
        ));
    }
    if report.damage.len() > 50 {
        f.push((
            "  ...".into(),
            format!("and {} more", report.damage.len() - 50),
        ));
    }
    f.push((
        "torn tail".into(),
        match report.torn_tail {
            None => "none".into(),
            Some((off, len)) => format!(
                "{len} bytes at offset {off} (an unfinished commit of a writer that did not \
                 close; the next writer drops it)"
            ),
        },
    ));
    f.push((
        "index".into(),
        if report.index_errors.is_empty() {
            if open_error.is_some() {
                "not checked (the store does not open)".into()
            } else {
                "ok".into()
            }
        } else {
            format!("{} entries wrong", report.index_errors.len())
        },
    ));
    for e in report.index_errors.iter().take(20) {
        f.push(("  index".into(), e.clone()));
    }
    if let Some(e) = &open_error {
        f.push(("open".into(), format!("fails: {e}")));
    }
    let ok = report.is_ok() && open_error.is_none();
    f.push((
        "status".into(),
        if ok { "ok".into() } else { "DAMAGED".into() },
    ));
    if json {
        let damage = damage_json(&report.damage);
        println!(
            "{}",
            json!({
                "store": show(path),
                "file_bytes": report.file_bytes,
                "records": report.records,
                "header": report.header,
                "checkpoint": report.checkpoint,
                "damage": damage,
                "torn_tail": report.torn_tail.map(|(offset, len)| json!({"offset": offset, "len": len})),
                "index_errors": report.index_errors,
                "open_error": open_error,
                "closed_cleanly": report.closed_cleanly,
                "ok": ok,
            })
        );
    } else {
        print_fields(&f);
    }
    if ok {
        Ok(())
    } else {
        bail!(
            "{} is damaged; `cellar repair {} NEW` copies every intact record into a new store",
            show(path),
            show(path)
        )
    }
}

/// Copies every readable pair of a damaged dbm.gnu / dbm.ndbm file into a new native store.
fn repair_legacy(src: &Path, dst: &Path, backend: Backend) -> Result<()> {
    let db = dbm::open_legacy(src, backend)?;
    if dst.exists() {
        bail!("{} exists; repair writes a new store", show(dst));
    }
    let into = Backend::Native.open(dst, Flag::New, dbm::DEFAULT_MODE)?;
    let pb = progress(0, "repair");
    let mut batch = Batch::new();
    let mut err = None;
    let report = db.salvage(&mut |k, v| {
        if err.is_some() {
            return;
        }
        batch.insert(k, v);
        if batch.len() >= 1000 {
            if let Err(e) = into.batch(&batch) {
                err = Some(e);
            }
            pb.inc(batch.len() as u64);
            batch.clear();
        }
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    if !batch.is_empty() {
        into.batch(&batch)?;
    }
    into.close()?;
    pb.finish_and_clear();
    println!(
        "copied {} readable pairs of {} ({}) into {}; {} damaged structures skipped",
        report.readable,
        show(src),
        db.variant(),
        show(dst),
        report.problems.len()
    );
    for p in report.problems.iter().take(50) {
        println!("  {p}");
    }
    Ok(())
}

pub fn repair(src: &Path, dst: &Path, json: bool) -> Result<()> {
    if let WhichDb::Kind(k @ (DbKind::Gnu | DbKind::Ndbm)) = dbm::whichdb(src) {
        if let Some(b) = Backend::from_kind(k) {
            return repair_legacy(src, dst, b);
        }
    }
    native_or_damaged(src, "repair")?;
    if dst.exists() {
        bail!("{} exists; repair writes a new store", show(dst));
    }
    let r = cellar::engine::repair(src, dst, cellar::engine::Options::default())?;
    let mut f: Vec<(String, String)> = vec![
        ("source".into(), show(src)),
        ("new store".into(), show(dst)),
        (
            "source header".into(),
            if r.header_damaged {
                "DAMAGED (settings taken from what is left of it, or the defaults)".into()
            } else {
                "ok".into()
            },
        ),
        ("salvaged records".into(), r.salvaged_records.to_string()),
        ("keys".into(), r.keys.to_string()),
        (
            "dropped (torn tail)".into(),
            format!(
                "{} records of an unfinished commit at the end",
                r.dropped_partial_records
            ),
        ),
        ("damaged regions".into(), r.damage.len().to_string()),
    ];
    for d in r.damage.iter().take(50) {
        f.push((
            format!("  at offset {}", d.offset),
            format!("{} bytes: {}", d.len, d.reason),
        ));
    }
    if r.damage.len() > 50 {
        f.push(("  ...".into(), format!("and {} more", r.damage.len() - 50)));
    }
    let damaged = r.header_damaged || !r.damage.is_empty();
    f.push((
        "status".into(),
        if damaged {
            "the source was DAMAGED; every intact record is in the new store".into()
        } else {
            "the source was intact; the new store holds all of it".into()
        },
    ));
    if json {
        let damage = damage_json(&r.damage);
        println!(
            "{}",
            json!({
                "source": show(src),
                "new_store": show(dst),
                "header_damaged": r.header_damaged,
                "salvaged_records": r.salvaged_records,
                "keys": r.keys,
                "dropped_partial_records": r.dropped_partial_records,
                "damage": damage,
                "source_damaged": damaged,
            })
        );
    } else {
        print_fields(&f);
    }
    if damaged {
        bail!(
            "{} was damaged (exit status 1); {} holds every intact record",
            show(src),
            show(dst)
        )
    }
    Ok(())
}

pub fn compact(path: &Path) -> Result<()> {
    if dbm::whichdb(path) == WhichDb::Kind(DbKind::Native) {
        return compact_native(path);
    }
    let db = open(path, "w")?;
    let before = db.info()?.file_bytes;
    let pb = ProgressBar::new_spinner();
    pb.set_message("compacting");
    db.compact()?;
    let after = db.info()?.file_bytes;
    db.close()?;
    pb.finish_and_clear();
    println!(
        "{}: {} -> {}",
        show(path),
        size(before, false),
        size(after, false)
    );
    Ok(())
}

/// `cellar compact` on a native store: compaction into the compact form (key-sorted zstd
/// blocks with a trained dictionary, docs/engine-format.md section 10), which converts a store
/// written as version 2 (its header says version 3 afterwards, and remembers the choice).
fn compact_native(path: &Path) -> Result<()> {
    let store = cellar::engine::Store::open(
        path,
        cellar::engine::Options {
            create: false,
            compact_form: true,
            auto_compact: false,
            ..Default::default()
        },
    )?;
    let before = store.stats()?.file_bytes;
    let pb = ProgressBar::new_spinner();
    pb.set_message("compacting");
    store.compact()?;
    let st = store.stats()?;
    store.close()?;
    pb.finish_and_clear();
    println!(
        "{}: {} -> {} (compact form: {} blocks, {} entries, compression {:.2}x)",
        show(path),
        size(before, false),
        size(st.file_bytes, false),
        st.compact_blocks,
        st.compact_entries,
        st.compression_ratio
    );
    Ok(())
}

/// `--to` names.
pub fn backend_named(name: &str) -> Result<Backend> {
    Ok(match name {
        "native" => Backend::Native,
        "sqlite" | "sqlite3" => Backend::Sqlite3,
        "dumb" => Backend::Dumb,
        _ => bail!("unknown backend {name:?}: use native, sqlite or dumb"),
    })
}
