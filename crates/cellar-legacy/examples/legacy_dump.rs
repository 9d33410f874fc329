//! Full dump of a legacy file (GDBM or Berkeley DB hash), timed: opens the file, reads every
//! pair and folds it into a checksum, `runs` times; prints the pair count, the checksum and the
//! median and best time per dump in milliseconds. Used by `scripts/bench-legacy.sh` against
//! libgdbm through /usr/bin/python3.
//!
//! ```sh
//! cargo run --release -p cellar-legacy --example legacy_dump -- FILE [RUNS]
//! ```

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: legacy_dump FILE [RUNS]")?;
    let runs: usize = match args.next() {
        Some(r) => r.parse()?,
        None => 11,
    };
    let mut times = Vec::with_capacity(runs);
    let mut result = (0u64, 0u64);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let db = cellar_legacy::LegacyDb::open(&path)?;
        let mut n = 0u64;
        let mut sum = 0u64;
        db.try_for_each(|k, v| -> cellar_legacy::Result<()> {
            n += 1;
            sum = sum.wrapping_add(k.len() as u64 * 31 + v.len() as u64);
            sum = sum.wrapping_add(k.first().copied().unwrap_or(0) as u64);
            Ok(())
        })?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        result = (n, sum);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "pairs={} checksum={} median_ms={:.3} best_ms={:.3}",
        result.0,
        result.1,
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}
