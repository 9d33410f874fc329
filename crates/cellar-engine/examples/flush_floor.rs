//! The floor under benchmark (b) (single durable commits): the same 124-byte record written and
//! flushed in a loop with no engine at all, the two ways an engine can do it:
//! - `overwrite`: into space zero-filled ahead of time, then `fdatasync` (what cellar does);
//! - `append`: at the end of the file, then `fsync` (a write-ahead journal such as fjall's).
//!
//! Every durable commit costs at least one of these; what an engine adds shows as its (b) figure
//! above this floor. The last line is cellar itself: `Store::put` then `Store::sync` of a
//! 16-byte key and 100-byte value (a 124-byte record), in a store opened with the defaults.
//! `cargo run --release -p cellar-engine --example flush_floor [DIR] [N]`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

const RECORD: [u8; 124] = [0x5a; 124];

fn fresh(path: &Path) -> std::io::Result<File> {
    let _ = std::fs::remove_file(path);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Records written over space zero-filled ahead, each flushed with `fdatasync`; with `mapped`,
/// the file is also mapped shared and each record read back through the map, as cellar's
/// readers see the file.
fn overwrite(path: &Path, n: usize, mapped: bool) -> std::io::Result<f64> {
    let f = fresh(path)?;
    let room = (n * RECORD.len()).next_multiple_of(1 << 20);
    f.write_all_at(&vec![0u8; room], 0)?;
    f.sync_all()?;
    // SAFETY: this program alone uses the file, and only reads the map.
    let map = match mapped {
        true => Some(unsafe { memmap2::MmapOptions::new().len(room).map(&f)? }),
        false => None,
    };
    let mut seen = 0u64;
    let t = Instant::now();
    for i in 0..n {
        let at = i * RECORD.len();
        f.write_all_at(&RECORD, at as u64)?;
        f.sync_data()?;
        if let Some(m) = &map {
            seen += u64::from(m[at]);
        }
    }
    let dt = t.elapsed().as_secs_f64();
    if mapped {
        assert_eq!(seen, n as u64 * 0x5a);
    }
    Ok(dt)
}

fn append(path: &Path, n: usize) -> std::io::Result<f64> {
    let mut f = fresh(path)?;
    f.sync_all()?;
    let t = Instant::now();
    for _ in 0..n {
        f.write_all(&RECORD)?;
        f.sync_all()?;
    }
    Ok(t.elapsed().as_secs_f64())
}

fn cellar(path: &Path, n: usize) -> Result<f64, cellar_engine::Error> {
    let _ = std::fs::remove_file(path);
    let s = cellar_engine::Store::open(path, cellar_engine::Options::default())?;
    let t = Instant::now();
    for i in 0..n as u64 {
        let k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
        s.put(&[k, k].concat(), &[0x5a; 100])?;
        s.sync()?;
    }
    let dt = t.elapsed().as_secs_f64();
    s.close()?;
    Ok(dt)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let n: usize = match std::env::args().nth(2) {
        Some(s) => s.parse()?,
        None => 3000,
    };
    let path = dir.join("cellar-flush-floor.bin");
    for round in 0..2 {
        for (name, dt) in [
            ("overwrite + fdatasync", overwrite(&path, n, false)?),
            ("the same, file mapped", overwrite(&path, n, true)?),
            ("append + fsync", append(&path, n)?),
            (
                "cellar put + sync",
                cellar(&dir.join("cellar-flush-floor.cellar"), n)?,
            ),
        ] {
            println!(
                "round {round}: {name:22} {:6.0} commits/s ({:.1} us a commit)",
                n as f64 / dt,
                dt * 1e6 / n as f64
            );
        }
    }
    std::fs::remove_file(&path)?;
    std::fs::remove_file(dir.join("cellar-flush-floor.cellar"))?;
    Ok(())
}
