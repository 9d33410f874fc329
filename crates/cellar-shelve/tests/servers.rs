//! A typed Shelf on each server (Redis, Redis Cluster, PostgreSQL) started by
//! scripts/servers.sh: values round-trip and the codec is recorded in the namespace's metadata,
//! so reopening without a codec reads them. Without the servers' URLs the test says it skips;
//! under CI=true it fails.

use cellar_dbm::ValueEncoding;
use cellar_shelve::{Codec, Options, Shelf};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    visits: u32,
    tags: Vec<String>,
}

#[test]
fn typed_shelf_on_every_server() {
    for (var, param) in [
        ("CELLAR_TEST_REDIS_URL", "prefix"),
        ("CELLAR_TEST_REDIS_CLUSTER_URL", "prefix"),
        ("CELLAR_TEST_POSTGRES_URL", "table"),
    ] {
        let Some(base) = std::env::var(var).ok().filter(|v| !v.is_empty()) else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{var} is not set under CI=true: scripts/servers.sh must start the servers");
            }
            eprintln!(
                "SKIPPED: {var} is not set (run under scripts/test.sh or scripts/servers.sh)"
            );
            continue;
        };
        let url = format!("{base}?{param}=shelf{}", std::process::id());
        let ada = User {
            name: "Ada".into(),
            visits: 3,
            tags: vec!["admin".into()],
        };
        let mut shelf: Shelf<User> = Shelf::open_with(
            &url,
            Options {
                flag: cellar_dbm::Flag::New,
                codec: Some(Codec::Pickle { protocol: 4 }),
                ..Options::default()
            },
        )
        .unwrap();
        shelf.insert("user:1", &ada).unwrap();
        assert_eq!(shelf.len().unwrap(), 1);
        shelf.close().unwrap();
        let shelf: Shelf<User> = Shelf::open(&url).unwrap();
        assert_eq!(shelf.get("user:1").unwrap(), Some(ada.clone()), "{var}");
        assert_eq!(
            shelf.database().value_encoding(),
            Some(ValueEncoding::Pickle { protocol: 4 })
        );
        assert_eq!(shelf.keys().unwrap(), vec!["user:1".to_string()]);
        shelf.close().unwrap();
    }
}
