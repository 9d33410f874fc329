//! A small driver of the Rust `Shelf` API, used by the Python interop tests
//! (tests/python/test_cellar_shelve.py) to show that shelves written in Rust open in Python and
//! the reverse.
//!
//! ```text
//! shelf_tool write PATH [pickle N | marshal N]   stdin: lines "key<TAB>python literal"
//! shelf_tool read PATH                           stdout: lines "key<TAB>repr" in sorted key order
//! ```
//! Keys and literals are escaped with Python's `unicode_escape`-free convention: the literal is
//! parsed by cellar's literal parser, so any value `repr()` prints round-trips.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use cellar_shelve::{Codec, Options, Shelf};
use cellar_value::{parse, repr_sorted, Value};

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, path) = match args.as_slice() {
        [c, p, ..] => (c.as_str(), p.as_str()),
        _ => return Err("usage: shelf_tool write|read PATH [pickle N | marshal N]".into()),
    };
    match cmd {
        "write" => {
            let codec = match args.get(2..4) {
                Some([k, n]) => {
                    let n: u8 = n.parse().map_err(|e| format!("bad version {n:?}: {e}"))?;
                    match k.as_str() {
                        "pickle" => Some(Codec::Pickle { protocol: n }),
                        "marshal" => Some(Codec::Marshal { version: n }),
                        _ => return Err(format!("unknown codec {k:?}")),
                    }
                }
                _ => None,
            };
            let mut shelf: Shelf = Shelf::open_with(
                path,
                Options {
                    codec,
                    ..Options::default()
                },
            )
            .map_err(|e| e.to_string())?;
            let stdin = std::io::stdin();
            let mut entries: Vec<(String, Value)> = Vec::new();
            for line in stdin.lock().lines() {
                let line = line.map_err(|e| e.to_string())?;
                let (k, lit) = line
                    .split_once('\t')
                    .ok_or_else(|| format!("no tab in {line:?}"))?;
                let kv = parse(k).map_err(|e| format!("key {k:?}: {e}"))?;
                let key = match &kv {
                    Value::Str(s) => s
                        .as_str()
                        .ok_or_else(|| format!("key {k} has lone surrogates"))?
                        .to_owned(),
                    other => {
                        return Err(format!("key must be a str literal: {}", repr_sorted(other)))
                    }
                };
                entries.push((key, parse(lit).map_err(|e| format!("{lit:?}: {e}"))?));
            }
            shelf
                .batch(|b| {
                    for (k, v) in &entries {
                        b.insert(k, v)?;
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
            shelf.close().map_err(|e| e.to_string())
        }
        "read" => {
            let shelf: Shelf = Shelf::open_with(
                path,
                Options {
                    flag: cellar_dbm::Flag::Read,
                    inert: true,
                    ..Options::default()
                },
            )
            .map_err(|e| e.to_string())?;
            let mut items = shelf.items().map_err(|e| e.to_string())?;
            items.sort_by(|a, b| a.0.cmp(&b.0));
            let out = std::io::stdout();
            let mut out = out.lock();
            for (k, v) in items {
                writeln!(out, "{}\t{}", repr_sorted(&Value::str(&k)), repr_sorted(&v))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        _ => Err(format!("unknown command {cmd:?}")),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shelf_tool: {e}");
            ExitCode::FAILURE
        }
    }
}
