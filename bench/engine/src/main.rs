//! engine-bench: cellar's native engine against redb, fjall, heed (LMDB), rusqlite (WAL) and
//! sled on the dbm workload, one run, same data, same machine. See docs/benchmarks.md.
//!
//! Usage: engine-bench [--scale F] [--only a,b,...] [--engines cellar,redb,...] [--dir DIR]
//! `--scale 1` is the issue's sizes (1M keys, 10k commits, 100k 4 KiB values, 10M-key open).
//! Engine `cellar-compact` is cellar with `Options::compact_form` (compaction writes zstd blocks);
//! `cellar` and `cellar-compact` run with background compaction off, so that (e2) shows what an
//! overwrite leaves before `compact()`. `cellar-auto` is the configuration dbm and shelve stores
//! get: the compact form with background compaction on (the engine's default).
//!
//! Sizes (e1)-(e3) and (f3) are of closed stores (each engine flushed and done with its own
//! background work); (a2) and (e2c) are what those closes took, and (c)/(d) read the store
//! reopened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};

type Kv = (Vec<u8>, Vec<u8>);

trait Engine: Send + Sync {
    /// Commits `kvs` as one durable transaction.
    fn batch_durable(&self, kvs: &[Kv]);
    /// One durable single-key commit (may be called from several threads).
    fn put_durable(&self, k: &[u8], v: &[u8]);
    /// Length of the value, if present, read where the engine keeps it when its API allows
    /// (borrowed: LMDB, redb, cellar's `get_with`; SQLite computes `length(v)`).
    fn get(&self, k: &[u8]) -> Option<usize>;
    /// (items, total key+value bytes) over the whole store.
    fn scan(&self) -> (usize, usize);
    /// Reclaims space if the engine can; false if it has no such operation.
    fn compact(&mut self) -> bool;
    /// Flushes everything and closes (so sizes are final).
    fn close(self: Box<Self>);
}

fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                total += disk_usage(&e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

// ---------------------------------------------------------------- cellar
struct Cellar(cellar_engine::Store);
impl Cellar {
    fn open(
        dir: &Path,
        compression: cellar_engine::Compression,
        compact_form: bool,
        auto_compact: bool,
    ) -> Cellar {
        let opts = cellar_engine::Options {
            compression,
            auto_compact,
            compact_form,
            ..Default::default()
        };
        Cellar(cellar_engine::Store::open(dir.join("store.cellar"), opts).expect("open cellar"))
    }
}
impl Engine for Cellar {
    fn batch_durable(&self, kvs: &[Kv]) {
        let mut b = cellar_engine::Batch::new();
        for (k, v) in kvs {
            b.put(k.clone(), v.clone());
        }
        self.0.batch(&b).unwrap();
        self.0.sync().unwrap();
    }
    fn put_durable(&self, k: &[u8], v: &[u8]) {
        self.0.put(k, v).unwrap();
        self.0.sync().unwrap();
    }
    fn get(&self, k: &[u8]) -> Option<usize> {
        // The value where it lies, as LMDB and redb hand it out (no copy into a new Vec).
        self.0.get_with(k, <[u8]>::len).unwrap()
    }
    fn scan(&self) -> (usize, usize) {
        let (mut n, mut b) = (0, 0);
        self.0
            .for_each(|k, v| {
                n += 1;
                b += k.len() + v.len();
            })
            .unwrap();
        (n, b)
    }
    fn compact(&mut self) -> bool {
        self.0.compact().unwrap();
        true
    }
    fn close(self: Box<Self>) {
        self.0.close().unwrap();
    }
}

// ---------------------------------------------------------------- redb
const REDB_T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");
struct Redb(redb::Database);
impl Redb {
    fn open(dir: &Path) -> Redb {
        let db = redb::Database::create(dir.join("redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(REDB_T).unwrap();
        tx.commit().unwrap();
        Redb(db)
    }
}
impl Engine for Redb {
    fn batch_durable(&self, kvs: &[Kv]) {
        let tx = self.0.begin_write().unwrap(); // Durability::Immediate is the default
        {
            let mut t = tx.open_table(REDB_T).unwrap();
            for (k, v) in kvs {
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn put_durable(&self, k: &[u8], v: &[u8]) {
        let tx = self.0.begin_write().unwrap();
        {
            let mut t = tx.open_table(REDB_T).unwrap();
            t.insert(k, v).unwrap();
        }
        tx.commit().unwrap();
    }
    fn get(&self, k: &[u8]) -> Option<usize> {
        let tx = self.0.begin_read().unwrap();
        let t = tx.open_table(REDB_T).unwrap();
        t.get(k).unwrap().map(|v| v.value().len())
    }
    fn scan(&self) -> (usize, usize) {
        use redb::ReadableTable;
        let tx = self.0.begin_read().unwrap();
        let t = tx.open_table(REDB_T).unwrap();
        let (mut n, mut b) = (0, 0);
        for item in t.iter().unwrap() {
            let (k, v) = item.unwrap();
            n += 1;
            b += k.value().len() + v.value().len();
        }
        (n, b)
    }
    fn compact(&mut self) -> bool {
        while self.0.compact().unwrap() {}
        true
    }
    fn close(self: Box<Self>) {}
}

// ---------------------------------------------------------------- fjall
struct Fjall(fjall::Keyspace, fjall::PartitionHandle);
impl Fjall {
    fn open(dir: &Path) -> Fjall {
        let ks = fjall::Config::new(dir.join("fjall")).open().unwrap();
        let p = ks
            .open_partition("kv", fjall::PartitionCreateOptions::default())
            .unwrap();
        Fjall(ks, p)
    }
}
impl Engine for Fjall {
    fn batch_durable(&self, kvs: &[Kv]) {
        let mut b = self.0.batch().durability(Some(fjall::PersistMode::SyncAll));
        for (k, v) in kvs {
            b.insert(&self.1, k.as_slice(), v.as_slice());
        }
        b.commit().unwrap();
    }
    fn put_durable(&self, k: &[u8], v: &[u8]) {
        self.1.insert(k, v).unwrap();
        self.0.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    fn get(&self, k: &[u8]) -> Option<usize> {
        self.1.get(k).unwrap().map(|v| v.len())
    }
    fn scan(&self) -> (usize, usize) {
        let (mut n, mut b) = (0, 0);
        for item in self.1.iter() {
            let (k, v) = item.unwrap();
            n += 1;
            b += k.len() + v.len();
        }
        (n, b)
    }
    fn compact(&mut self) -> bool {
        self.1.major_compact().unwrap();
        true
    }
    fn close(self: Box<Self>) {
        self.0.persist(fjall::PersistMode::SyncAll).unwrap();
    }
}

// ---------------------------------------------------------------- heed (LMDB)
struct Heed(
    heed::Env,
    heed::Database<heed::types::Bytes, heed::types::Bytes>,
    PathBuf,
);
impl Heed {
    fn open(dir: &Path) -> Heed {
        let p = dir.join("lmdb");
        std::fs::create_dir_all(&p).unwrap();
        // SAFETY (benchmark): the environment is opened once, by this process only.
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .map_size(64 << 30)
                .max_dbs(1)
                .open(&p)
                .unwrap()
        };
        let mut tx = env.write_txn().unwrap();
        let db = env.create_database(&mut tx, Some("kv")).unwrap();
        tx.commit().unwrap();
        Heed(env, db, p)
    }
}
impl Engine for Heed {
    fn batch_durable(&self, kvs: &[Kv]) {
        let mut tx = self.0.write_txn().unwrap();
        for (k, v) in kvs {
            self.1.put(&mut tx, k, v).unwrap();
        }
        tx.commit().unwrap();
    }
    fn put_durable(&self, k: &[u8], v: &[u8]) {
        let mut tx = self.0.write_txn().unwrap();
        self.1.put(&mut tx, k, v).unwrap();
        tx.commit().unwrap();
    }
    fn get(&self, k: &[u8]) -> Option<usize> {
        let tx = self.0.read_txn().unwrap();
        self.1.get(&tx, k).unwrap().map(|v| v.len())
    }
    fn scan(&self) -> (usize, usize) {
        let tx = self.0.read_txn().unwrap();
        let (mut n, mut b) = (0, 0);
        for item in self.1.iter(&tx).unwrap() {
            let (k, v) = item.unwrap();
            n += 1;
            b += k.len() + v.len();
        }
        (n, b)
    }
    fn compact(&mut self) -> bool {
        // LMDB has no in-place compaction; a compacting copy is the tool it offers.
        let copy = self.2.with_extension("compacted");
        std::fs::create_dir_all(&copy).unwrap();
        self.0
            .copy_to_file(copy.join("data.mdb"), heed::CompactionOption::Enabled)
            .unwrap();
        let old = std::mem::replace(&mut self.2, copy.clone());
        // Re-point at the compacted copy for the size measurement.
        let _ = std::fs::remove_dir_all(old);
        true
    }
    fn close(self: Box<Self>) {}
}

// ---------------------------------------------------------------- rusqlite (WAL)
struct Sqlite(Mutex<rusqlite::Connection>);
impl Sqlite {
    fn open(dir: &Path) -> Sqlite {
        let c = rusqlite::Connection::open(dir.join("sqlite.db")).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "synchronous", "FULL").unwrap();
        c.execute(
            "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID",
            [],
        )
        .unwrap();
        Sqlite(Mutex::new(c))
    }
}
impl Engine for Sqlite {
    fn batch_durable(&self, kvs: &[Kv]) {
        let mut c = self.0.lock().unwrap();
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
                .unwrap();
            for (k, v) in kvs {
                st.execute((k, v)).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn put_durable(&self, k: &[u8], v: &[u8]) {
        let c = self.0.lock().unwrap();
        c.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
            .unwrap()
            .execute((k, v))
            .unwrap();
    }
    fn get(&self, k: &[u8]) -> Option<usize> {
        let c = self.0.lock().unwrap();
        let mut st = c
            .prepare_cached("SELECT length(v) FROM kv WHERE k = ?1")
            .unwrap();
        let mut rows = st.query([k]).unwrap();
        rows.next()
            .unwrap()
            .map(|r| r.get::<_, i64>(0).unwrap() as usize)
    }
    fn scan(&self) -> (usize, usize) {
        let c = self.0.lock().unwrap();
        let mut st = c.prepare_cached("SELECT k, v FROM kv").unwrap();
        let mut rows = st.query([]).unwrap();
        let (mut n, mut b) = (0, 0);
        while let Some(r) = rows.next().unwrap() {
            let k = r.get_ref(0).unwrap().as_blob().unwrap();
            let v = r.get_ref(1).unwrap().as_blob().unwrap();
            n += 1;
            b += k.len() + v.len();
        }
        (n, b)
    }
    fn compact(&mut self) -> bool {
        let c = self.0.lock().unwrap();
        c.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        true
    }
    fn close(self: Box<Self>) {
        let c = self.0.into_inner().unwrap();
        let _ = c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        drop(c);
    }
}

// ---------------------------------------------------------------- sled
struct Sled(sled::Db);
impl Sled {
    fn open(dir: &Path) -> Sled {
        Sled(sled::open(dir.join("sled")).unwrap())
    }
}
impl Engine for Sled {
    fn batch_durable(&self, kvs: &[Kv]) {
        let mut b = sled::Batch::default();
        for (k, v) in kvs {
            b.insert(k.as_slice(), v.as_slice());
        }
        self.0.apply_batch(b).unwrap();
        self.0.flush().unwrap();
    }
    fn put_durable(&self, k: &[u8], v: &[u8]) {
        self.0.insert(k, v).unwrap();
        self.0.flush().unwrap();
    }
    fn get(&self, k: &[u8]) -> Option<usize> {
        self.0.get(k).unwrap().map(|v| v.len())
    }
    fn scan(&self) -> (usize, usize) {
        let (mut n, mut b) = (0, 0);
        for item in self.0.iter() {
            let (k, v) = item.unwrap();
            n += 1;
            b += k.len() + v.len();
        }
        (n, b)
    }
    fn compact(&mut self) -> bool {
        false
    }
    fn close(self: Box<Self>) {
        self.0.flush().unwrap();
    }
}

// ---------------------------------------------------------------- harness
fn open(name: &str, dir: &Path, compressible: bool) -> Box<dyn Engine> {
    std::fs::create_dir_all(dir).unwrap();
    match name {
        // `cellar-compact`: compaction writes the compact form (zstd blocks with a trained
        // dictionary, docs/engine-format.md section 10); `cellar-auto`: that, compacting in
        // the background as dbm and shelve stores do.
        "cellar" | "cellar-compact" | "cellar-auto" => Box::new(Cellar::open(
            dir,
            if compressible {
                cellar_engine::Compression::Zstd { level: 1 }
            } else {
                cellar_engine::Compression::None
            },
            name != "cellar",
            name == "cellar-auto",
        )),
        "redb" => Box::new(Redb::open(dir)),
        "fjall" => Box::new(Fjall::open(dir)),
        "lmdb" => Box::new(Heed::open(dir)),
        "sqlite" => Box::new(Sqlite::open(dir)),
        "sled" => Box::new(Sled::open(dir)),
        _ => panic!("unknown engine {name}"),
    }
}

fn random_kvs(rng: &mut StdRng, n: usize, vlen: usize) -> Vec<Kv> {
    (0..n)
        .map(|_| {
            let mut k = vec![0u8; 16];
            rng.fill_bytes(&mut k);
            let mut v = vec![0u8; vlen];
            rng.fill_bytes(&mut v);
            (k, v)
        })
        .collect()
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "storage",
    "record",
    "python",
    "shelve",
    "pickle",
    "value",
    "engine",
    "compaction",
    "durable",
    "index",
    "reader",
    "writer",
    "process",
    "thread",
    "format",
    "version",
    "checksum",
    "batch",
    "commit",
    "sync",
];

fn text_value(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
        s.push(if rng.gen_ratio(1, 12) { '\n' } else { ' ' });
    }
    s.truncate(len);
    s.into_bytes()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[derive(Default)]
struct Results {
    // workload -> engine -> (value, unit, higher_is_better)
    rows: BTreeMap<String, BTreeMap<String, (f64, &'static str, bool)>>,
}

impl Results {
    fn add(&mut self, w: &str, e: &str, v: f64, unit: &'static str, higher_better: bool) {
        eprintln!("  {w:<34} {e:<7} {v:>12.3} {unit}");
        self.rows
            .entry(w.to_string())
            .or_default()
            .insert(e.to_string(), (v, unit, higher_better));
    }

    fn print(&self, engines: &[&str]) {
        print!("| workload |");
        for e in engines {
            print!(" {e} |");
        }
        println!(" cellar vs best peer |");
        print!("|---|");
        for _ in engines {
            print!("---:|");
        }
        println!("---:|");
        for (w, m) in &self.rows {
            let unit = m.values().next().map(|x| x.1).unwrap_or("");
            print!("| {w} ({unit}) |");
            for e in engines {
                match m.get(*e) {
                    Some((v, _, _)) => print!(" {} |", fmt_num(*v)),
                    None => print!(" - |"),
                }
            }
            let cellar = m.get("cellar");
            let peers: Vec<f64> = m
                .iter()
                .filter(|(e, _)| !e.starts_with("cellar"))
                .map(|(_, x)| x.0)
                .collect();
            match (cellar, peers.is_empty()) {
                (Some(&(c, _, hb)), false) => {
                    let best = if hb {
                        peers.iter().cloned().fold(f64::MIN, f64::max)
                    } else {
                        peers.iter().cloned().fold(f64::MAX, f64::min)
                    };
                    // ratio > 1 means cellar is better.
                    let r = if hb { c / best } else { best / c };
                    println!(" {r:.2}x |");
                }
                _ => println!(" - |"),
            }
        }
    }
}

/// Closes `db`; returns how long that took, in milliseconds.
fn close_timed(db: Box<dyn Engine>) -> f64 {
    let t = Instant::now();
    db.close();
    secs(t.elapsed()) * 1000.0
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let scale: f64 = get("--scale").map(|s| s.parse().unwrap()).unwrap_or(1.0);
    let only: Vec<String> = get("--only")
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or_else(|| "a,b,c,d,e,f,g".split(',').map(String::from).collect());
    let engines_s = get("--engines").unwrap_or_else(|| "cellar,redb,fjall,lmdb,sqlite,sled".into());
    let engines: Vec<&str> = engines_s.split(',').collect();
    let base = get("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap().join("target/bench-data"));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let n = (1_000_000.0 * scale) as usize;
    let n_commits = (10_000.0 * scale) as usize;
    let n_text = (100_000.0 * scale) as usize;
    let n_open = (10_000_000.0 * scale) as usize;
    let batch = 1000;
    let mut res = Results::default();
    let has = |w: &str| only.iter().any(|o| o == w);

    let mut rng = StdRng::seed_from_u64(42);
    let data = random_kvs(&mut rng, n, 100);
    let overwrite: Vec<Kv> = data
        .iter()
        .map(|(k, _)| {
            let mut v = vec![0u8; 100];
            rng.fill_bytes(&mut v);
            (k.clone(), v)
        })
        .collect();
    let mut read_order: Vec<usize> = (0..n).collect();
    read_order.shuffle(&mut rng);

    for &e in &engines {
        if !(has("a") || has("c") || has("d") || has("e")) {
            break;
        }
        eprintln!("== {e}: (a) (c) (d) (e)");
        let dir = base.join(format!("{e}-a"));
        let db = open(e, &dir, false);
        let t = Instant::now();
        for chunk in data.chunks(batch) {
            db.batch_durable(chunk);
        }
        let dt = secs(t.elapsed());
        res.add(
            "(a) 1M inserts, 1000/batch, durable",
            e,
            n as f64 / dt / 1000.0,
            "k ops/s",
            true,
        );
        // Sizes are measured on a closed store, as a user finds it on disk: every engine has
        // flushed and finished its own background work (an open store's size catches whatever
        // a background compaction or flush is writing at that instant). What closing costs is
        // its own row; the store is then reopened for the reads.
        let ms = close_timed(db);
        res.add("(a2) close after (a)", e, ms, "ms", false);
        res.add(
            "(e1) disk size after (a)",
            e,
            disk_usage(&dir) as f64 / 1e6,
            "MB",
            false,
        );
        let db = open(e, &dir, false);
        // (c) random reads
        let t = Instant::now();
        let mut found = 0;
        for &i in &read_order {
            if db.get(&data[i].0).is_some() {
                found += 1;
            }
        }
        let dt = secs(t.elapsed());
        assert_eq!(found, n, "{e} lost keys");
        res.add(
            "(c) 1M random reads",
            e,
            n as f64 / dt / 1000.0,
            "k ops/s",
            true,
        );
        // (d) full iteration
        let t = Instant::now();
        let (items, _bytes) = db.scan();
        let dt = secs(t.elapsed());
        assert_eq!(items, n);
        res.add(
            "(d) full iteration",
            e,
            n as f64 / dt / 1000.0,
            "k items/s",
            true,
        );
        // (e) overwrite every key, then compact
        for chunk in overwrite.chunks(batch) {
            db.batch_durable(chunk);
        }
        let ms = close_timed(db);
        res.add("(e2c) close after the overwrite", e, ms, "ms", false);
        res.add(
            "(e2) disk size after overwrite",
            e,
            disk_usage(&dir) as f64 / 1e6,
            "MB",
            false,
        );
        let mut db = open(e, &dir, false);
        let t = Instant::now();
        let could = db.compact();
        let ct = secs(t.elapsed());
        db.close();
        if could {
            res.add(
                "(e3) disk size after compaction",
                e,
                disk_usage(&dir) as f64 / 1e6,
                "MB",
                false,
            );
            eprintln!("  (compaction took {ct:.2}s)");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    if has("b") {
        for &e in &engines {
            eprintln!("== {e}: (b)");
            for threads in [1usize, 4] {
                let dir = base.join(format!("{e}-b{threads}"));
                let db: Arc<dyn Engine> = Arc::from(open(e, &dir, false));
                let kvs = Arc::new(random_kvs(&mut rng, n_commits, 100));
                let t = Instant::now();
                std::thread::scope(|s| {
                    for th in 0..threads {
                        let db = Arc::clone(&db);
                        let kvs = Arc::clone(&kvs);
                        s.spawn(move || {
                            for (k, v) in kvs.iter().skip(th).step_by(threads) {
                                db.put_durable(k, v);
                            }
                        });
                    }
                });
                let dt = secs(t.elapsed());
                res.add(
                    &format!("(b) 10k single durable commits, {threads} thr"),
                    e,
                    n_commits as f64 / dt,
                    "commits/s",
                    true,
                );
                drop(db);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }

    if has("f") {
        let mut trng = StdRng::seed_from_u64(7);
        let text: Vec<Kv> = (0..n_text)
            .map(|_| {
                let mut k = vec![0u8; 16];
                trng.fill_bytes(&mut k);
                (k, text_value(&mut trng, 4096))
            })
            .collect();
        let mut order: Vec<usize> = (0..n_text).collect();
        order.shuffle(&mut trng);
        for &e in &engines {
            eprintln!("== {e}: (f)");
            let dir = base.join(format!("{e}-f"));
            let db = open(e, &dir, true);
            let t = Instant::now();
            for chunk in text.chunks(batch) {
                db.batch_durable(chunk);
            }
            let dt = secs(t.elapsed());
            res.add(
                "(f1) 100k 4KiB text: load",
                e,
                n_text as f64 / dt / 1000.0,
                "k ops/s",
                true,
            );
            let t = Instant::now();
            for &i in &order {
                assert!(db.get(&text[i].0).is_some());
            }
            let dt = secs(t.elapsed());
            res.add(
                "(f2) 100k 4KiB text: random reads",
                e,
                n_text as f64 / dt / 1000.0,
                "k ops/s",
                true,
            );
            db.close();
            res.add(
                "(f3) 100k 4KiB text: disk size",
                e,
                disk_usage(&dir) as f64 / 1e6,
                "MB",
                false,
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    if has("g") {
        eprintln!("== cellar: (g) building a {n_open}-key store");
        let dir = base.join("cellar-g");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store.cellar");
        {
            let s = cellar_engine::Store::open(&path, cellar_engine::Options::default()).unwrap();
            let mut grng = StdRng::seed_from_u64(9);
            let mut b = cellar_engine::Batch::new();
            for i in 0..n_open {
                let mut k = [0u8; 16];
                grng.fill_bytes(&mut k);
                b.put(k.to_vec(), (i as u64).to_le_bytes().to_vec());
                if b.len() == 100_000 {
                    s.batch(&b).unwrap();
                    b = cellar_engine::Batch::new();
                }
            }
            s.batch(&b).unwrap();
            s.close().unwrap();
        }
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let s = cellar_engine::Store::open(
                &path,
                cellar_engine::Options::from_dbm_flag("r").unwrap(),
            )
            .unwrap();
            let dt = secs(t.elapsed());
            assert_eq!(s.len().unwrap() as usize, n_open);
            best = best.min(dt);
            drop(s);
        }
        res.add(
            "(g) open a 10M-key store",
            "cellar",
            best * 1000.0,
            "ms",
            false,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    let _ = std::fs::remove_dir_all(&base);
    res.print(&engines);
}
