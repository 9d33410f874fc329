#!/usr/bin/env bash
# The whole test suite: Rust tests, Python tests, CPython conformance runs.
# This is the README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== legacy-format fixture tools (python3-gdbm, gdbmtool, db5.3-util) =="
./scripts/legacy-fixtures.sh
# Generate the legacy fixtures once for every test binary and pytest (each makes its own when
# this is unset).
if /usr/bin/python3 -c 'import dbm.gnu, dbm.ndbm' 2>/dev/null; then
    CELLAR_LEGACY_FIXTURES="$(mktemp -d)"
    export CELLAR_LEGACY_FIXTURES
    trap 'rm -rf "$CELLAR_LEGACY_FIXTURES"' EXIT
    /usr/bin/python3 scripts/legacy-fixtures.py "$CELLAR_LEGACY_FIXTURES"
fi

echo "== Rust: cargo test (workspace default members) =="
cargo test --release --workspace --quiet

echo "== Python: cellar package, pytest and CPython's own tests =="
./scripts/python-tests.sh

echo "== all tests passed =="
