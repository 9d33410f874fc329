#!/usr/bin/env bash
# The whole test suite: Rust tests, Python tests, CPython conformance runs.
# This is the README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== legacy-format fixture tools (python3-gdbm, gdbmtool, db5.3-util) =="
./scripts/legacy-fixtures.sh

echo "== Rust: cargo test (workspace default members) =="
cargo test --release --workspace --quiet

echo "== Python: cellar package, pytest and CPython's own tests =="
./scripts/python-tests.sh

echo "== all tests passed =="
