//! Reads of a compacted store, for profiling (`valgrind --tool=callgrind
//! --toggle-collect='*Store::get*' ...`): N records of issue 14's shape written, compacted
//! (`compact_form` from the second argument: `compact` or `plain`), reopened, then two rounds of
//! random `get`s and one `for_each`.
//! `cargo run --release -p cellar-engine --example compact_reads [N] [compact|plain] [DIR]`.

use cellar_engine::{Batch, Options, Store};

fn value(i: u64) -> Vec<u8> {
    let mut v = b"\x80\x04\x95\x37\0\0\0\0\0\0\0}\x94(\x8c\x02id\x94J".to_vec();
    v.extend_from_slice(&(i as u32).to_le_bytes());
    v.extend_from_slice(b"\x8c\x04name\x94\x8c");
    let name = format!("user{i}");
    v.push(name.len() as u8);
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(b"\x94\x8c\x04tags\x94\x8c\x01a\x94\x8c\x01b\x94\x86\x94\x8c\x05score\x94G?\xf8\0\0\0\0\0\0u.");
    v
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let compact_form = args.next().as_deref() != Some("plain");
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("cellar-compact-reads-{compact_form}.db"));
    let _ = std::fs::remove_file(&path);
    let opts = Options {
        compact_form,
        auto_compact: false,
        ..Options::default()
    };
    let s = Store::open(&path, opts.clone())?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut b = Batch::new();
        for &i in chunk {
            b.put(format!("key{i}").into_bytes(), value(i));
        }
        s.batch(&b)?;
    }
    s.compact()?;
    s.close()?;
    let s = Store::open(&path, opts)?;
    let keys: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("key{}", (i * 7919) % n).into_bytes())
        .collect();
    let mut total = 0usize;
    for _ in 0..2 {
        for k in &keys {
            total += s.get(k)?.map_or(0, |v| v.len());
        }
    }
    let mut items = 0u64;
    s.for_each(|_, v| {
        items += 1;
        total += v.len();
    })?;
    println!("{items} items, {total} bytes");
    s.close()?;
    std::fs::remove_file(&path)?;
    Ok(())
}
