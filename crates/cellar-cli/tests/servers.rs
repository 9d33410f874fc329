//! The store commands on server URLs, against the servers `scripts/servers.sh` starts
//! (CELLAR_TEST_REDIS_URL, CELLAR_TEST_REDIS_CLUSTER_URL, CELLAR_TEST_POSTGRES_URL). Without
//! them the tests say they skip; under CI=true a missing server fails.

use std::process::Command;

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

fn cellar(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cellar"))
        .args(args)
        .output()
        .expect("run cellar");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = cellar(args);
    assert!(ok, "cellar {args:?} failed: {err}");
    out
}

#[test]
fn a_store_travels_file_redis_cluster_postgres_file_unchanged() {
    let (Some(r), Some(k), Some(p)) = (
        server("CELLAR_TEST_REDIS_URL"),
        server("CELLAR_TEST_REDIS_CLUSTER_URL"),
        server("CELLAR_TEST_POSTGRES_URL"),
    ) else {
        return;
    };
    let tag = format!("cli{}", std::process::id());
    let r = format!("{r}?prefix={tag}:");
    let k = format!("{k}?prefix={tag}:");
    let p = format!("{p}?table={tag}");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let mut lines = String::new();
    for i in 0..3000 {
        lines.push_str(&format!(
            "{{\"key\": \"key{i}\", \"value\": {{\"base64\": \"AAEC/w==\"}}}}\n"
        ));
    }
    std::fs::write(dir.path().join("in.jsonl"), &lines).unwrap();
    ok(&["load", a, dir.path().join("in.jsonl").to_str().unwrap()]);
    for (src, dst) in [(a, &r[..]), (&r[..], &k[..]), (&k[..], &p[..]), (&p[..], b)] {
        let out = ok(&["convert", src, dst]);
        assert!(out.contains("converted 3000 keys"), "{out}");
        assert!(out.contains("count and checksums match"), "{out}");
    }
    let mut d1: Vec<String> = ok(&["dump", a]).lines().map(String::from).collect();
    let mut d2: Vec<String> = ok(&["dump", b]).lines().map(String::from).collect();
    d1.sort();
    d2.sort();
    assert_eq!(d1, d2);
    assert_eq!(d1.len(), 3000);

    // Every store command on each URL.
    for url in [&r, &k, &p] {
        ok(&["set", url, "extra", "value"]);
        assert_eq!(ok(&["get", url, "extra"]).trim(), "b'value'");
        assert_eq!(ok(&["keys", url]).lines().count(), 3001);
        assert!(ok(&["info", url]).contains("3001"));
        assert!(ok(&["check", url]).contains("ok"));
        ok(&["compact", url]);
        ok(&["del", url, "extra"]);
        let (good, _, err) = cellar(&["get", url, "extra"]);
        assert!(!good && err.contains("not found"), "{err}");
        // A namespace that holds a store is not overwritten by convert.
        let (good, _, err) = cellar(&["convert", a, url]);
        assert!(!good && err.contains("exists"), "{err}");
    }
}

#[test]
fn passwords_stay_hidden_in_cli_errors() {
    let Some(p) = server("CELLAR_TEST_POSTGRES_URL") else {
        return;
    };
    let bad = p.replacen("postgres@", "postgres:sekrit-pw@", 1);
    let (good, out, err) = cellar(&["info", &format!("{bad}?table=nope")]);
    assert!(!good);
    assert!(
        !out.contains("sekrit-pw") && !err.contains("sekrit-pw"),
        "{err}"
    );
    assert!(err.contains("authentication failed"), "{err}");
    let (good, _, err) = cellar(&["get", "redis://u:sekrit-pw@127.0.0.1:1/0", "k"]);
    assert!(!good && !err.contains("sekrit-pw"), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}
