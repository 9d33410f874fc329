#!/usr/bin/env bash
# Full dump of a 100k-key GDBM file: cellar (Rust, examples/legacy_dump.rs) against libgdbm
# through Debian's /usr/bin/python3 dbm.gnu (firstkey/nextkey and a fetch per key); then the
# same for a Berkeley DB 5.3 hash file (dbm.ndbm: keys() and a fetch per key). Both are timed
# in-process (open + read every pair), median of N runs; prints the ratios.
# Needs python3-gdbm (scripts/legacy-fixtures.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-11}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 - "$tmp/large.gdbm" "$tmp/large" <<'PY'
import dbm.gnu, dbm.ndbm, sys
for db in (dbm.gnu.open(sys.argv[1], "n"), dbm.ndbm.open(sys.argv[2], "n")):
    for i in range(100_000):
        db[b"k%06d" % i] = b"v" * (i % 50) + b"%d" % i
    db.close()
PY
cargo build --release --quiet -p cellar-legacy --example legacy_dump
rust="$(./target/release/examples/legacy_dump "$tmp/large.gdbm" "$RUNS")"
py="$(/usr/bin/python3 - "$tmp/large.gdbm" "$RUNS" <<'PY'
import dbm.gnu, sys, time
path, runs = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(runs):
    t = time.perf_counter()
    db = dbm.gnu.open(path, "r")
    n = 0
    k = db.firstkey()
    while k is not None:
        v = db[k]
        n += 1
        k = db.nextkey(k)
    db.close()
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
print("pairs=%d median_ms=%.3f best_ms=%.3f" % (n, times[len(times) // 2], times[0]))
PY
)"
echo "cellar (Rust):           $rust"
echo "libgdbm via python3:     $py"
r="$(echo "$rust" | sed 's/.*median_ms=\([0-9.]*\).*/\1/')"
p="$(echo "$py" | sed 's/.*median_ms=\([0-9.]*\).*/\1/')"
python3 -c "print('ratio cellar/libgdbm (median): %.3f  (libgdbm takes %.1fx as long)' % ($r / $p, $p / $r))"

rust="$(./target/release/examples/legacy_dump "$tmp/large.db" "$RUNS")"
py="$(/usr/bin/python3 - "$tmp/large" "$RUNS" <<'PY'
import dbm.ndbm, sys, time
path, runs = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(runs):
    t = time.perf_counter()
    db = dbm.ndbm.open(path, "r")
    n = 0
    for k in db.keys():
        v = db[k]
        n += 1
    db.close()
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
print("pairs=%d median_ms=%.3f best_ms=%.3f" % (n, times[len(times) // 2], times[0]))
PY
)"
echo "cellar (Rust), BDB:      $rust"
echo "libdb 5.3 via python3:   $py"
r="$(echo "$rust" | sed 's/.*median_ms=\([0-9.]*\).*/\1/')"
p="$(echo "$py" | sed 's/.*median_ms=\([0-9.]*\).*/\1/')"
python3 -c "print('ratio cellar/libdb (median): %.3f  (libdb takes %.1fx as long)' % ($r / $p, $p / $r))"
