#!/usr/bin/env bash
# Builds the `cellar` Python package into .venv with maturin and runs the Python tests:
#   1. pytest on tests/python/ (warnings are errors: tests/python/pytest.ini)
#   2. CPython 3.11's own Lib/test/test_marshal.py against cellar.marshal
#   3. CPython 3.11's own Lib/test/pickletester.py (unpickling, bad-data and round-trip tests)
#      against cellar.pickle.loads, and Lib/test/test_copyreg.py against cellar.copyreg
#   4. CPython 3.11's own Lib/test/test_dbm.py and test_dbm_dumb.py against cellar.dbm (shim dbm
#      package), and Lib/test/test_shelve.py against cellar.shelve (shim shelve module)
# Works on a fresh machine with only python3 (+ venv/pip) and a Rust toolchain; needs no stdin.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
# Our own target dir: no lock contention with the workspace build, and pyo3's build stays cached.
export CARGO_TARGET_DIR="${CELLAR_PY_TARGET_DIR:-$PWD/target/py}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV with $($PYTHON --version 2>&1) =="
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" pytest

echo "== building cellar (maturin develop --release) =="
VIRTUAL_ENV="$PWD/$VENV" PATH="$PWD/$VENV/bin:$PATH" \
    "$VENV/bin/maturin" develop --release --quiet -m crates/cellar-python/Cargo.toml

echo "== pytest tests/python =="
"$VENV/bin/python" -m pytest -W error -q tests/python

echo "== CPython test_marshal against cellar.marshal =="
"$VENV/bin/python" tests/python/run_cpython_test_marshal.py

echo "== CPython pickletester (unpickling, bad data, round trips) and test_copyreg against cellar.pickle / cellar.copyreg =="
"$VENV/bin/python" tests/python/run_cpython_pickletester.py

echo "== CPython test_dbm, test_dbm_dumb and test_shelve against cellar.dbm / cellar.shelve =="
"$VENV/bin/python" tests/python/run_cpython_test_dbm.py
