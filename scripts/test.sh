#!/usr/bin/env bash
# The whole test suite: Rust tests, then the Python package (a wheel per available CPython
# >= 3.11, each in its own venv) with pytest and each version's own CPython conformance runs:
# see scripts/python-tests.sh. This is the README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS

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

echo "== [$((SECONDS - T0))s] Rust: building the workspace and its tests (cargo prints each crate it compiles) =="
cargo test --release --workspace --no-run
echo "== [$((SECONDS - T0))s] Rust: cargo test --workspace =="
cargo test --release --workspace --quiet

echo "== [$((SECONDS - T0))s] Python: cellar wheels per CPython, pytest and CPython's own tests =="
./scripts/python-tests.sh

echo "== all tests passed ($((SECONDS - T0)) s) =="
