#!/usr/bin/env bash
# Runs the Python peer benchmarks (bench/python/dbm_bench.py and shelve_bench.py).
#
#   bench/python/run.sh [dbm|shelve|all] [--n N] [--only a,b] [...]   (default: all)
#
# 1. creates bench/python/.venv (git-ignored) with the machine's python3;
# 2. pip installs the peers from PyPI one by one: sqlitedict, diskcache, rocksdict, plyvel, lmdb.
#    A peer whose install fails is not fatal: its pip output is kept in .venv/pip-NAME.log and
#    the benchmarks report it as unavailable with that reason;
# 3. builds cellar's wheel with maturin (release; CARGO_TARGET_DIR=target/py-bench, override
#    with CELLAR_BENCH_TARGET_DIR) and installs it into the venv;
# 4. runs the benchmark(s), which print markdown tables and write bench/python/results/*.json.
# Set CELLAR_BENCH_SKIP_BUILD=1 to reuse the cellar already installed in the venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

which_bench=all
case "${1:-}" in
    dbm|shelve|all) which_bench="$1"; shift ;;
esac

PYTHON="${PYTHON:-python3}"
VENV=bench/python/.venv
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    echo "== creating $VENV with $($PYTHON --version 2>&1) =="
    "$PYTHON" -m venv "$VENV"
fi
"$PY" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2"

for peer in sqlitedict diskcache rocksdict plyvel lmdb; do
    log="$VENV/pip-$peer.log"
    if "$PY" -c "import $peer" >/dev/null 2>&1; then
        rm -f "$log"
        continue
    fi
    echo "== pip install $peer =="
    # Wheels first; sqlitedict and diskcache are pure Python (sdist or universal wheel).
    if "$PY" -m pip install --disable-pip-version-check --prefer-binary "$peer" >"$log" 2>&1; then
        rm -f "$log"
    else
        echo "   $peer: install failed (reported as unavailable): $(tail -n 1 "$log")"
    fi
done

if [ "${CELLAR_BENCH_SKIP_BUILD:-0}" != 1 ]; then
    echo "== building cellar (maturin build --release) =="
    export CARGO_TARGET_DIR="${CELLAR_BENCH_TARGET_DIR:-$ROOT/target/py-bench}"
    wheels="$CARGO_TARGET_DIR/bench-wheels"
    rm -rf "$wheels"
    "$VENV/bin/maturin" build --release --quiet -m crates/cellar-python/Cargo.toml \
        --interpreter "$PY" --out "$wheels"
    "$PY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
        "$wheels"/cellar-*.whl
fi

status=0
if [ "$which_bench" = dbm ] || [ "$which_bench" = all ]; then
    "$PY" bench/python/dbm_bench.py "$@" || status=$?
fi
if [ "$which_bench" = shelve ] || [ "$which_bench" = all ]; then
    [ "$which_bench" = all ] && echo
    "$PY" bench/python/shelve_bench.py "$@" || status=$?
fi
exit $status
