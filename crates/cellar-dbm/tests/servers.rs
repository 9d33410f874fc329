//! The server backends against real servers: `scripts/servers.sh` starts them and exports
//! CELLAR_TEST_REDIS_URL, CELLAR_TEST_REDIS_CLUSTER_URL and CELLAR_TEST_POSTGRES_URL
//! (`scripts/test.sh` does it for the whole suite). Without them each test says why it skips;
//! under CI=true a missing server fails the test.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cellar_dbm::{open, open_with, whichdb, Batch, DbKind, DbmError, Flag, ServerErrorKind};
use cellar_dbm::{ValueEncoding, WhichDb};

fn server(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{var} is not set under CI=true: scripts/servers.sh must start the servers");
            }
            eprintln!(
                "SKIPPED: {var} is not set (run under scripts/test.sh or scripts/servers.sh)"
            );
            None
        }
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// The tests of one binary run in parallel threads: the fault tests (killing connections or
/// servers, pausing clients) take this exclusively, the others shared, so a fault injected for
/// one test never lands in another.
static FAULTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    FAULTS.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    FAULTS.write().unwrap_or_else(|e| e.into_inner())
}

/// A fresh namespace on the server at `base` (a prefix or table of its own).
fn namespace(base: &str, name: &str) -> String {
    let n = format!(
        "t{}_{}_{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed),
        name
    );
    let sep = if base.contains('?') { '&' } else { '?' };
    if base.starts_with("postgres") {
        format!("{base}{sep}table={n}")
    } else {
        format!("{base}{sep}prefix={n}:")
    }
}

fn urls() -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    for var in [
        "CELLAR_TEST_REDIS_URL",
        "CELLAR_TEST_REDIS_CLUSTER_URL",
        "CELLAR_TEST_POSTGRES_URL",
    ] {
        if let Some(u) = server(var) {
            v.push((var, u));
        }
    }
    v
}

fn kind_of(var: &str) -> DbKind {
    match var {
        "CELLAR_TEST_REDIS_URL" => DbKind::Redis,
        "CELLAR_TEST_REDIS_CLUSTER_URL" => DbKind::RedisCluster,
        _ => DbKind::Postgres,
    }
}

#[test]
fn dbm_semantics_on_every_server() {
    let _guard = shared();
    for (var, base) in urls() {
        let url = namespace(&base, "sem");
        assert_eq!(whichdb(&url), WhichDb::Unreadable, "{var}: empty namespace");
        let e = open(&url, Flag::Read, 0o666).unwrap_err();
        assert!(matches!(e, DbmError::DoesNotExist { .. }), "{var}: {e}");
        let e = open(&url, Flag::Write, 0o666).unwrap_err();
        assert!(matches!(e, DbmError::DoesNotExist { .. }), "{var}: {e}");

        let db = open_with(
            &url,
            Flag::Create,
            0o666,
            ValueEncoding::Pickle { protocol: 5 },
        )
        .unwrap();
        assert_eq!(db.backend().kind(), kind_of(var));
        assert_eq!(whichdb(&url), WhichDb::Kind(kind_of(var)), "{var}");
        assert_eq!(db.len().unwrap(), 0);
        db.insert(b"a", b"1").unwrap();
        db.insert(b"a", b"2").unwrap();
        db.insert(b"", b"empty key").unwrap();
        db.insert(b"bin\x00\xff*?[", b"\x00\x01").unwrap();
        assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(db.get(b"").unwrap().as_deref(), Some(&b"empty key"[..]));
        assert_eq!(db.get(b"zz").unwrap(), None);
        assert!(db.contains(b"bin\x00\xff*?[").unwrap());
        assert_eq!(db.len().unwrap(), 3);
        let mut keys = db.keys().unwrap();
        keys.sort();
        assert_eq!(
            keys,
            vec![b"".to_vec(), b"a".to_vec(), b"bin\x00\xff*?[".to_vec()]
        );
        assert!(db.remove(b"a").unwrap());
        assert!(!db.remove(b"a").unwrap());
        assert_eq!(db.len().unwrap(), 2);

        // Batches: last write wins, deletes count, the count stays exact.
        let mut b = Batch::new();
        for i in 0..2500u32 {
            b.insert(format!("k{i}").into_bytes(), i.to_le_bytes());
        }
        b.insert(b"k1", b"again");
        b.remove(b"k2");
        b.remove(b"never");
        db.batch(&b).unwrap();
        assert_eq!(db.len().unwrap(), 2 + 2499);
        assert_eq!(db.get(b"k1").unwrap().as_deref(), Some(&b"again"[..]));
        assert_eq!(db.get(b"k2").unwrap(), None);

        // Iteration by cursor pages and for_each see every key once.
        let seen = walk(&*db, |_| ());
        assert_eq!(seen.len(), 2501, "{var}");
        let set: std::collections::BTreeSet<_> = seen.iter().collect();
        assert_eq!(set.len(), 2501, "{var}: a key was yielded twice");
        let mut n = 0;
        db.for_each(&mut |k, v| {
            if k == b"k7" {
                assert_eq!(v, 7u32.to_le_bytes());
            }
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2501);
        assert_eq!(db.info().unwrap().keys, 2501);
        db.compact().unwrap();
        db.close().unwrap();
        assert!(matches!(db.get(b"a"), Err(DbmError::Closed)));

        // The recorded encoding comes back; 'r' never writes.
        let ro = open(&url, Flag::Read, 0o666).unwrap();
        assert_eq!(
            ro.value_encoding(),
            Some(ValueEncoding::Pickle { protocol: 5 })
        );
        assert!(matches!(ro.insert(b"x", b"y"), Err(DbmError::ReadOnly)));
        assert!(matches!(ro.remove(b"k1"), Err(DbmError::ReadOnly)));
        assert!(matches!(ro.batch(&b), Err(DbmError::ReadOnly)));
        assert_eq!(ro.len().unwrap(), 2501);

        // 'n' empties only this namespace.
        let other = namespace(&base, "other");
        let o = open(&other, Flag::Create, 0o666).unwrap();
        o.insert(b"keep", b"me").unwrap();
        let db = open(&url, Flag::New, 0o666).unwrap();
        assert_eq!(db.len().unwrap(), 0);
        assert_eq!(db.keys().unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(db.value_encoding(), Some(ValueEncoding::Raw));
        assert_eq!(o.get(b"keep").unwrap().as_deref(), Some(&b"me"[..]));
        assert!(matches!(
            open(&url, Flag::Create.fast(), 0o666),
            Err(DbmError::BadFlag { .. })
        ));
    }
}

/// Every key of `db` by cursor pages, calling `between` with the page number after each page.
fn walk(db: &dyn cellar_dbm::Database, mut between: impl FnMut(usize)) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    let mut cursor = Vec::new();
    for n in 0.. {
        let (page, next) = db.key_page(&cursor).unwrap().expect("servers page");
        seen.extend(page);
        between(n);
        match next {
            Some(c) => cursor = c,
            None => break,
        }
    }
    seen
}

/// Redis `SCAN` may return a key twice when the keyspace's hash table is resized during the
/// walk; cellar's iteration must not. The walk is interleaved with a burst that grows the
/// server's keyspace by 60,000 keys and then deletes them (so Redis rehashes it up and, on its
/// next cron tick, down), and with inserts and deletes of other keys of the same store.
#[test]
fn redis_iteration_yields_every_key_once_while_the_keyspace_is_rehashed() {
    let _guard = shared();
    for var in ["CELLAR_TEST_REDIS_URL", "CELLAR_TEST_REDIS_CLUSTER_URL"] {
        let Some(base) = server(var) else { continue };
        let url = namespace(&base, "rehash");
        let db = open(&url, Flag::New, 0o666).unwrap();
        let mut b = Batch::new();
        let mut expected: Vec<Vec<u8>> = (0..5000u32)
            .map(|i| format!("key{i:05}").into_bytes())
            .collect();
        expected.extend([
            b"".to_vec(),
            b"(".to_vec(),
            b"[x".to_vec(),
            b"-".to_vec(),
            b"+".to_vec(),
            b"\xff\x00".to_vec(),
        ]);
        for k in &expected {
            b.insert(k.clone(), b"v");
        }
        db.batch(&b).unwrap();
        let scratch_url = namespace(&base, "scratch");
        let scratch = open(&scratch_url, Flag::New, 0o666).unwrap();
        let seen = walk(&*db, |page| {
            // Churn in the store: keys that come and go during the walk.
            let mut churn = Batch::new();
            for i in 0..200u32 {
                churn.insert(format!("churn{page}_{i}").into_bytes(), b"c");
            }
            db.batch(&churn).unwrap();
            if page == 0 {
                // Grow the keyspace (rehash up)...
                for chunk in 0..60u32 {
                    let mut big = Batch::new();
                    for i in 0..1000u32 {
                        big.insert(format!("s{chunk}_{i}").into_bytes(), b"s");
                    }
                    scratch.batch(&big).unwrap();
                }
            }
            if page == 1 {
                // ...then empty it and give Redis' cron (10 Hz) time to shrink the table.
                drop(open(&scratch_url, Flag::New, 0o666).unwrap());
                std::thread::sleep(Duration::from_millis(400));
            }
            let mut gone = Batch::new();
            for i in 0..200u32 {
                gone.remove(format!("churn{page}_{i}").into_bytes());
            }
            db.batch(&gone).unwrap();
        });
        let mut counts = std::collections::BTreeMap::new();
        for k in &seen {
            *counts.entry(k.clone()).or_insert(0u32) += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{var}: keys yielded twice: {twice:?}");
        for k in &expected {
            assert_eq!(counts.get(k), Some(&1), "{var}: {k:?} not yielded once");
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "{var}: iteration is in byte order");
        assert_eq!(db.len().unwrap(), expected.len(), "{var}");
        let mut keys = db.keys().unwrap();
        expected.sort();
        keys.retain(|k| !k.starts_with(b"churn"));
        assert_eq!(keys, expected, "{var}");
    }
}

#[test]
fn unreachable_server_is_a_typed_error_not_a_hang() {
    let _guard = shared();
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for url in [
        format!("redis://127.0.0.1:{port}/0?connect_timeout=2"),
        format!("postgresql://u@127.0.0.1:{port}/db?connect_timeout=2"),
    ] {
        let t = Instant::now();
        let e = open(&url, Flag::Create, 0o666).unwrap_err();
        assert_eq!(
            e.server_kind(),
            Some(ServerErrorKind::Unavailable),
            "{url}: {e}"
        );
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(whichdb(&url), WhichDb::Unreadable);
    }
}

#[test]
fn passwords_never_appear_in_errors() {
    let _guard = shared();
    for (var, base) in urls() {
        let url = if var.contains("POSTGRES") {
            base.replacen("postgres@", "postgres:hunter2secret@", 1)
        } else {
            base.replacen("://", "://nobody:hunter2secret@", 1)
        };
        let e = open(namespace(&url, "pw"), Flag::Create, 0o666).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("hunter2secret"), "{var}: {text}");
        assert!(text.contains("***"), "{var}: {text}");
        assert_eq!(e.server_kind(), Some(ServerErrorKind::Auth), "{var}: {e}");
    }
}

fn redis_cli(url: &str, args: &[&str]) -> String {
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .unwrap_or("6379");
    let out = Command::new("redis-cli")
        .args(["-p", port])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn psql(sql: &str) {
    let url = std::env::var("CELLAR_TEST_POSTGRES_URL").unwrap_or_default();
    let db = open(namespace(&url, "admin"), Flag::Create, 0o666).unwrap();
    drop(db);
    let mut config: postgres::Config = url.parse().unwrap();
    if let Ok(p) = std::env::var("PGPASSWORD") {
        config.password(p);
    }
    let mut c = config.connect(postgres::NoTls).unwrap();
    c.batch_execute(sql).unwrap();
}

#[test]
fn dropped_connection_is_typed_then_reconnects() {
    let _guard = exclusive();
    if let Some(base) = server("CELLAR_TEST_REDIS_URL") {
        let url = namespace(&base, "drop");
        let db = open(&url, Flag::Create, 0o666).unwrap();
        db.insert(b"a", b"1").unwrap();
        redis_cli(&base, &["CLIENT", "KILL", "TYPE", "normal"]);
        let first = db.get(b"a");
        if let Err(e) = &first {
            assert_eq!(
                e.server_kind(),
                Some(ServerErrorKind::ConnectionLost),
                "{e}"
            );
        }
        assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert!(first.is_err(), "a killed connection must surface once");
    }
    if let Some(base) = server("CELLAR_TEST_POSTGRES_URL") {
        let url = namespace(&base, "drop");
        let db = open(&url, Flag::Create, 0o666).unwrap();
        db.insert(b"a", b"1").unwrap();
        psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'cellar' AND pid <> pg_backend_pid()",
        );
        let e = db.get(b"a").unwrap_err();
        assert_eq!(
            e.server_kind(),
            Some(ServerErrorKind::ConnectionLost),
            "{e}"
        );
        assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    }
}

#[test]
fn redis_response_timeout_is_typed() {
    let _guard = exclusive();
    let Some(base) = server("CELLAR_TEST_REDIS_URL") else {
        return;
    };
    let url = format!("{}&timeout=0.5", namespace(&base, "slow"));
    let db = open(&url, Flag::Create, 0o666).unwrap();
    // CLIENT PAUSE holds every other client's commands longer than the response timeout.
    let b2 = base.clone();
    let h = std::thread::spawn(move || redis_cli(&b2, &["CLIENT", "PAUSE", "2000", "ALL"]));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let e = db.get(b"a").unwrap_err();
    assert_eq!(e.server_kind(), Some(ServerErrorKind::Timeout), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    h.join().unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(db.get(b"a").unwrap(), None);
}

#[test]
fn cluster_store_lives_on_one_slot_and_batches_are_atomic() {
    let _guard = shared();
    let Some(base) = server("CELLAR_TEST_REDIS_CLUSTER_URL") else {
        return;
    };
    let url = namespace(&base, "slot");
    let db = open(&url, Flag::Create, 0o666).unwrap();
    let mut b = Batch::new();
    for i in 0..500u32 {
        b.insert(format!("key-{i}").into_bytes(), vec![1u8; 10]);
    }
    // One EVAL over keys of one slot: a CROSSSLOT store could not run it at all.
    db.batch(&b).unwrap();
    assert_eq!(db.len().unwrap(), 500);
    let prefix = url.split("prefix=").nth(1).unwrap();
    let port = std::env::var("CELLAR_TEST_REDIS_CLUSTER_PORTS")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let slot_of = |k: &str| -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port, "CLUSTER", "KEYSLOT", k])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let s1 = slot_of(&format!("{{{prefix}}}k:key-1"));
    assert_eq!(s1, slot_of(&format!("{{{prefix}}}k:key-499")));
    assert_eq!(s1, slot_of(&format!("{{{prefix}}}m")));
}

/// Which cluster port serves the master of `key`'s slot.
fn master_port_for(key: &str) -> Option<String> {
    let ports = std::env::var("CELLAR_TEST_REDIS_CLUSTER_PORTS").ok()?;
    for p in ports.split(' ') {
        // A killed node answers nothing: ask the next one.
        let Ok(out) = Command::new("redis-cli")
            .args(["-p", p, "CLUSTER", "NODES"])
            .output()
        else {
            continue;
        };
        let nodes = String::from_utf8_lossy(&out.stdout).into_owned();
        let Ok(slot) = String::from_utf8_lossy(
            &Command::new("redis-cli")
                .args(["-p", p, "CLUSTER", "KEYSLOT", key])
                .output()
                .ok()?
                .stdout,
        )
        .trim()
        .parse::<u32>() else {
            continue;
        };
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    if (a..=b).contains(&slot) {
                        let addr = f[1].split('@').next()?;
                        return addr.rsplit(':').next().map(str::to_string);
                    }
                }
            }
        }
    }
    None
}

#[test]
fn cluster_master_killed_during_writes_keeps_every_replicated_write() {
    let _guard = exclusive();
    let Some(base) = server("CELLAR_TEST_REDIS_CLUSTER_URL") else {
        return;
    };
    let dir = std::env::var("CELLAR_TEST_SERVERS_DIR").expect("CELLAR_TEST_SERVERS_DIR");
    // wait=1: each write returns only once a replica has it (Redis WAIT).
    let url = format!("{}&wait=1&wait_timeout=2", namespace(&base, "failover"));
    let db = open(&url, Flag::Create, 0o666).unwrap();
    let prefix = url
        .split("prefix=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let port = master_port_for(&format!("{{{prefix}}}m")).expect("master of the store");
    let pid = redis_cli(&format!("x:{port}"), &["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|s| s.trim().to_string())
        .expect("pid");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut errors = Vec::new();
        let mut i = 0u32;
        let deadline = Instant::now() + Duration::from_secs(90);
        while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
            let k = format!("w{i}");
            match db.insert(k.as_bytes(), &i.to_le_bytes()) {
                Ok(()) => {
                    acked.push(k);
                    i += 1;
                }
                Err(e) => {
                    errors.push(e.server_kind());
                    std::thread::sleep(Duration::from_millis(100));
                    i += 1;
                }
            }
        }
        (db, acked, errors)
    });
    std::thread::sleep(Duration::from_millis(700));
    Command::new("kill").args(["-9", &pid]).status().unwrap();
    // Failover (cluster-node-timeout 2000 ms), then some more writes on the new master.
    let t = Instant::now();
    let new_master = loop {
        std::thread::sleep(Duration::from_millis(300));
        match master_port_for(&format!("{{{prefix}}}m")) {
            Some(p) if p != port => break p,
            _ if t.elapsed() > Duration::from_secs(60) => panic!("no failover in 60 s"),
            _ => {}
        }
    };
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (db, acked, errors) = writer.join().unwrap();
    assert!(!acked.is_empty());
    for e in &errors {
        assert!(e.is_some(), "every failure is a typed server error");
    }
    // Every acknowledged write is on the promoted replica.
    let mut missing = Vec::new();
    for k in &acked {
        if db.get(k.as_bytes()).unwrap().is_none() {
            missing.push(k.clone());
        }
    }
    eprintln!(
        "failover {port} -> {new_master}: {} acknowledged writes, {} failed, missing {}",
        acked.len(),
        errors.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    // Bring the killed node back (it rejoins as a replica) for the other tests.
    let status = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/servers.sh"
    ))
    .args(["start-redis-node", &dir, &port])
    .status()
    .unwrap();
    assert!(status.success());
}

#[test]
fn postgres_restart_mid_batch_is_all_or_nothing() {
    let _guard = exclusive();
    let Some(base) = server("CELLAR_TEST_POSTGRES_URL") else {
        return;
    };
    let dir = std::env::var("CELLAR_TEST_SERVERS_DIR").expect("CELLAR_TEST_SERVERS_DIR");
    // fast: a clean shutdown (open transactions roll back); immediate: a crash, the server
    // recovers from its WAL when it starts.
    for mode in ["fast", "immediate"] {
        let url = namespace(&base, "restart");
        let db = open(&url, Flag::Create, 0o666).unwrap();
        db.insert(b"before", b"1").unwrap();
        let mut b = Batch::new();
        for round in 0..40 {
            for i in 0..5000u32 {
                b.insert(format!("r{round}-{i}").into_bytes(), vec![7u8; 64]);
            }
        }
        let n = b.len();
        let h = std::thread::spawn(move || {
            let r = db.batch(&b);
            (db, r)
        });
        std::thread::sleep(Duration::from_millis(300));
        let status = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/servers.sh"
        ))
        .args(["restart-pg", &dir, mode])
        .status()
        .unwrap();
        assert!(status.success());
        let (db, r) = h.join().unwrap();
        // The next call reconnects; the batch is entirely there or entirely absent.
        let len = loop {
            match db.len() {
                Ok(l) => break l,
                Err(e) => {
                    assert!(e.server_kind().is_some(), "{e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        eprintln!(
            "batch of {n}, {mode} restart: {}; rows after restart {len}",
            match &r {
                Ok(()) => "committed before the restart".to_string(),
                Err(e) => format!("failed: {e}"),
            }
        );
        match r {
            Ok(()) => assert_eq!(len, n + 1),
            Err(e) => {
                assert!(e.server_kind().is_some(), "{e}");
                assert!(len == 1 || len == n + 1, "partial batch: {len} rows");
            }
        }
        assert_eq!(db.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
    }
}

/// `rediss://` against the TLS-only, password-protected Redis of scripts/servers.sh: the store
/// works over TLS with the password in the URL; a wrong password is a typed `Auth` error that
/// quotes neither password; a CA that did not sign the server's certificate is a typed `Tls`
/// error.
/// `kill -9` of the standalone Redis (AOF on, `appendfsync everysec`, as scripts/servers.sh
/// runs it) while a client writes single keys and batches, then a restart on the same data:
/// every acknowledged write is there (Redis writes its AOF before it replies; a process crash
/// keeps what the kernel has), each batch is all there or not at all, and the writes in flight
/// fail with typed errors, the next ones reconnect.
#[test]
fn redis_kill_9_then_restart_keeps_every_acknowledged_write() {
    let _guard = exclusive();
    let Some(base) = server("CELLAR_TEST_REDIS_URL") else {
        return;
    };
    let dir = std::env::var("CELLAR_TEST_SERVERS_DIR").expect("CELLAR_TEST_SERVERS_DIR");
    let url = namespace(&base, "kill9") + "&timeout=2&connect_timeout=1";
    let db = open(&url, Flag::New, 0o666).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let (mut acked, mut batches, mut failed) = (Vec::new(), Vec::new(), 0u32);
        let mut after_failure = 0;
        let mut i = 0u32;
        while !stop2.load(Ordering::Relaxed) || after_failure < 200 {
            let r = if i.is_multiple_of(20) {
                let mut b = Batch::new();
                for j in 0..100u32 {
                    b.insert(format!("b{i}_{j}").into_bytes(), i.to_le_bytes());
                }
                db.batch(&b).map(|()| batches.push(i))
            } else {
                let k = format!("k{i}");
                db.insert(k.as_bytes(), &i.to_le_bytes())
                    .map(|()| acked.push(i))
            };
            match r {
                Ok(()) if failed > 0 => after_failure += 1,
                Ok(()) => {}
                Err(e) => {
                    let kind = e.server_kind();
                    assert!(
                        matches!(
                            kind,
                            Some(
                                ServerErrorKind::ConnectionLost
                                    | ServerErrorKind::Unavailable
                                    | ServerErrorKind::Timeout
                                    | ServerErrorKind::Server
                            )
                        ),
                        "{e}"
                    );
                    failed += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            i += 1;
            if i > 2_000_000 {
                panic!("the writer never recovered after the restart");
            }
        }
        (db, acked, batches, failed, i)
    });
    std::thread::sleep(Duration::from_millis(700));
    let status = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/servers.sh"
    ))
    .args(["restart-redis", &dir])
    .status()
    .unwrap();
    assert!(status.success());
    stop.store(true, Ordering::Relaxed);
    let (db, acked, batches, failed, tried) = writer.join().unwrap();
    eprintln!(
        "kill -9 of Redis: {} single writes and {} batches acknowledged, {failed} failed, {tried} tried",
        acked.len(),
        batches.len()
    );
    assert!(
        failed > 0,
        "no write failed: the server was not killed during the writes"
    );
    let mut missing = 0;
    for i in &acked {
        if db.get(format!("k{i}").as_bytes()).unwrap().as_deref() != Some(&i.to_le_bytes()[..]) {
            missing += 1;
        }
    }
    assert_eq!(missing, 0, "acknowledged single writes lost");
    for i in (0..tried).filter(|i| i.is_multiple_of(20)) {
        let present = (0..100u32)
            .filter(|j| db.contains(format!("b{i}_{j}").as_bytes()).unwrap())
            .count();
        assert!(
            present == 0 || present == 100,
            "batch {i}: {present} of 100 keys"
        );
        if batches.contains(&i) {
            assert_eq!(present, 100, "acknowledged batch {i} lost");
        }
    }
    let keys = db.keys().unwrap();
    assert_eq!(
        db.len().unwrap(),
        keys.len(),
        "the index and the count agree"
    );
}

#[test]
fn redis_over_tls_with_a_password() {
    let _guard = shared();
    let (Some(base), Some(pw)) = (
        server("CELLAR_TEST_REDIS_TLS_URL"),
        server("CELLAR_TEST_REDIS_TLS_PASSWORD"),
    ) else {
        return;
    };
    let with_pw = |pw: &str| base.replacen("rediss://", &format!("rediss://:{pw}@"), 1);
    let url = namespace(&with_pw(&pw), "tls");
    let db = open(&url, Flag::New, 0o666).unwrap();
    assert_eq!(db.backend().kind(), DbKind::Redis);
    db.insert(b"k", b"over tls").unwrap();
    let mut b = Batch::new();
    for i in 0..1500u32 {
        b.insert(format!("b{i}").into_bytes(), b"v");
    }
    db.batch(&b).unwrap();
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"over tls"[..]));
    assert_eq!(db.len().unwrap(), 1501);
    assert_eq!(walk(&*db, |_| ()).len(), 1501);
    assert!(!db.path().to_string_lossy().contains(&pw));
    assert_eq!(whichdb(&url), WhichDb::Kind(DbKind::Redis));

    assert_auth_and_tls_refusals(&with_pw, &pw, "tls");
    // No password at all: the server asks for one.
    let e = open(namespace(&base, "tls"), Flag::Create, 0o666).unwrap_err();
    assert_eq!(e.server_kind(), Some(ServerErrorKind::Auth), "{e}");
    // A plain connection to the TLS port fails (typed, no hang).
    let plain = with_pw(&pw).replacen("rediss://", "redis://", 1);
    let plain = plain.split('?').next().unwrap().to_string() + "?timeout=2";
    let t = Instant::now();
    assert!(open(namespace(&plain, "tls"), Flag::Create, 0o666).is_err());
    assert!(t.elapsed() < Duration::from_secs(20));
}

/// `rediss+cluster://` against the TLS-only, password-protected Redis Cluster of
/// scripts/servers.sh (3 masters; TLS on the client ports and on the cluster bus): a store with
/// keys spread over every slot, a batch, iteration and `len` work over TLS, including the
/// redirections to the nodes that were not given as seeds; a wrong password is a typed `Auth`
/// error quoting neither password; a CA that did not sign the certificate is a typed `Tls` error.
#[test]
fn redis_cluster_over_tls_with_a_password() {
    let _guard = shared();
    let (Some(base), Some(pw)) = (
        server("CELLAR_TEST_REDIS_CLUSTER_TLS_URL"),
        server("CELLAR_TEST_REDIS_TLS_PASSWORD"),
    ) else {
        return;
    };
    let with_pw =
        |pw: &str| base.replacen("rediss+cluster://", &format!("rediss+cluster://:{pw}@"), 1);
    let url = namespace(&with_pw(&pw), "tlscluster");
    let db = open(&url, Flag::New, 0o666).unwrap();
    assert_eq!(db.backend().kind(), DbKind::RedisCluster);
    for i in 0..300u32 {
        db.insert(format!("k{i}").as_bytes(), &i.to_le_bytes())
            .unwrap();
    }
    let mut b = Batch::new();
    for i in 0..1500u32 {
        b.insert(format!("b{i}").into_bytes(), b"v");
    }
    db.batch(&b).unwrap();
    for i in 0..300u32 {
        assert_eq!(
            db.get(format!("k{i}").as_bytes()).unwrap().as_deref(),
            Some(&i.to_le_bytes()[..])
        );
    }
    assert_eq!(db.len().unwrap(), 1800);
    assert_eq!(walk(&*db, |_| ()).len(), 1800);
    assert!(db.remove(b"k7").unwrap());
    assert_eq!(db.len().unwrap(), 1799);
    assert!(!db.path().to_string_lossy().contains(&pw));
    assert_eq!(whichdb(&url), WhichDb::Kind(DbKind::RedisCluster));
    drop(db);
    // The same store, opened through the other seed only: the nodes find each other over TLS.
    let seeds: Vec<&str> = base["rediss+cluster://".len()..]
        .split('/')
        .next()
        .unwrap()
        .split(',')
        .collect();
    let other_seed = with_pw(&pw).replacen(&format!("{},", seeds[0]), "", 1);
    let store = url.split("prefix=").nth(1).unwrap();
    let reopened = open(format!("{other_seed}&prefix={store}"), Flag::Read, 0o666).unwrap();
    assert_eq!(reopened.len().unwrap(), 1799);

    assert_auth_and_tls_refusals(&with_pw, &pw, "tlscluster");
}

/// A TLS Redis URL (`with_pw(password)`) with a wrong password is a typed `Auth` error that
/// quotes neither password; with a CA that did not sign the server's certificate, a typed
/// `Tls` error that does not quote the password.
fn assert_auth_and_tls_refusals(with_pw: &dyn Fn(&str) -> String, pw: &str, name: &str) {
    let wrong = namespace(&with_pw("wrongHunter2pass"), name);
    let e = open(&wrong, Flag::Create, 0o666).unwrap_err();
    let text = format!("{e} {e:?}");
    assert_eq!(e.server_kind(), Some(ServerErrorKind::Auth), "{text}");
    assert!(
        !text.contains("wrongHunter2pass") && !text.contains(pw),
        "{text}"
    );
    let other = std::env::var("CELLAR_TEST_TLS_OTHER_CA").unwrap();
    let untrusted = with_pw(pw).replace(&std::env::var("CELLAR_TEST_TLS_CA").unwrap(), &other);
    let e = open(namespace(&untrusted, name), Flag::Create, 0o666).unwrap_err();
    let text = format!("{e} {e:?}");
    assert_eq!(e.server_kind(), Some(ServerErrorKind::Tls), "{text}");
    assert!(!text.contains(pw), "{text}");
}

/// PostgreSQL with `sslmode=require` / `verify-ca` / `verify-full`: the connection is encrypted
/// (the server's `pg_stat_ssl` says so), the certificate is checked against `sslrootcert`, and
/// a CA that did not sign it is a typed `Tls` error.
#[test]
fn postgres_over_tls() {
    let _guard = shared();
    let (Some(base), Some(ca)) = (
        server("CELLAR_TEST_POSTGRES_URL"),
        server("CELLAR_TEST_TLS_CA"),
    ) else {
        return;
    };
    let other = std::env::var("CELLAR_TEST_TLS_OTHER_CA").unwrap();
    for (mode, host) in [
        ("sslmode=require", "127.0.0.1"),
        (&*format!("sslmode=verify-ca&sslrootcert={ca}"), "127.0.0.1"),
        (
            &*format!("sslmode=verify-full&sslrootcert={ca}"),
            "127.0.0.1",
        ),
        (
            &*format!("sslmode=verify-full&sslrootcert={ca}"),
            "localhost",
        ),
    ] {
        let app = format!("cellar_tls_{}", UNIQUE.fetch_add(1, Ordering::Relaxed));
        let url = base.replacen("127.0.0.1", host, 1) + &format!("?{mode}&application_name={app}");
        let db = open(namespace(&url, "tls"), Flag::New, 0o666).unwrap();
        db.insert(b"k", b"v").unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]), "{mode}");
        let encrypted = admin_query_i64(&format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = '{app}' AND s.ssl"
        ));
        assert_eq!(
            encrypted, 1,
            "{mode} {host}: the connection is not encrypted"
        );
        db.close().unwrap();
    }
    let url = format!("{base}?sslmode=verify-full&sslrootcert={other}");
    let e = open(namespace(&url, "tls"), Flag::Create, 0o666).unwrap_err();
    assert_eq!(e.server_kind(), Some(ServerErrorKind::Tls), "{e}");
    let url = format!("{base}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
    let e = open(namespace(&url, "tls"), Flag::Create, 0o666).unwrap_err();
    assert_eq!(e.server_kind(), Some(ServerErrorKind::BadUrl), "{e}");
    let url = format!("{base}?sslmode=sometimes");
    let e = open(namespace(&url, "tls"), Flag::Create, 0o666).unwrap_err();
    assert_eq!(e.server_kind(), Some(ServerErrorKind::BadUrl), "{e}");
}

fn admin_query_i64(sql: &str) -> i64 {
    let url = std::env::var("CELLAR_TEST_POSTGRES_URL").unwrap_or_default();
    let mut config: postgres::Config = url.parse().unwrap();
    if let Ok(p) = std::env::var("PGPASSWORD") {
        config.password(p);
    }
    let mut c = config.connect(postgres::NoTls).unwrap();
    c.query_one(sql, &[]).unwrap().get(0)
}
