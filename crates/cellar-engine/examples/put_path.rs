//! The single-writer put path, for instruction counts under callgrind (issue 17: the shared
//! mode's per-commit lock must cost little). Usage: `put_path N [exclusive]`: opens a new
//! store in a temporary directory, puts N keys (16 bytes) with 100-byte values one commit
//! each, closes. Run it for two N and take the difference to get instructions per put.

use cellar_engine::{Options, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().unwrap_or_else(|| "10000".into()).parse()?;
    let exclusive = args.next().as_deref() == Some("exclusive");
    let dir = std::env::temp_dir().join(format!("cellar-put-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("db");
    let opts = Options {
        exclusive,
        auto_compact: false,
        ..Options::default()
    };
    let s = Store::open(&path, opts)?;
    let value = [0x5au8; 100];
    for i in 0..n {
        let key = format!("key{i:013}");
        s.put(key.as_bytes(), &value)?;
    }
    s.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
