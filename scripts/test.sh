#!/usr/bin/env bash
# The whole test suite: Rust tests, then the Python package (a wheel per available CPython
# >= 3.11, each in its own venv) with pytest and each version's own CPython conformance runs:
# see scripts/python-tests.sh. This is the README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS

CLEANUP=()
cleanup() { for c in "${CLEANUP[@]}"; do eval "$c" || true; done; }
trap cleanup EXIT

# The run needs about 6 GiB (the release target, a wheel build per CPython, the venvs); a full disk
# shows up late and obscurely (pip's "No space left on device"), so say up front what there is.
free_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
echo "== disk: $((free_kib / 1024 / 1024)) GiB free on $(df -P . | awk 'NR == 2 {print $6}') =="
if [ "$free_kib" -lt $((8 * 1024 * 1024)) ]; then
    echo "warning: under 8 GiB free; the run may fail with 'No space left on device'" >&2
fi

echo "== legacy-format fixture tools (python3-gdbm, gdbmtool, db5.3-util) =="
./scripts/legacy-fixtures.sh
# Generate the legacy fixtures once for every test binary and pytest (each makes its own when
# this is unset).
if /usr/bin/python3 -c 'import dbm.gnu, dbm.ndbm' 2>/dev/null; then
    CELLAR_LEGACY_FIXTURES="$(mktemp -d)"
    export CELLAR_LEGACY_FIXTURES
    CLEANUP+=('rm -rf "$CELLAR_LEGACY_FIXTURES"')
    /usr/bin/python3 scripts/legacy-fixtures.py "$CELLAR_LEGACY_FIXTURES"
fi

# Real servers for the server-backend tests (Rust tests/servers.rs, pytest test_servers*):
# one Redis, a Redis Cluster (3 masters + 3 replicas), PostgreSQL, a TLS Redis and a TLS Redis
# Cluster (3 masters), on 127.0.0.1 in a temporary
# directory, stopped on exit. CELLAR_NO_SERVERS=1 skips them (the tests then say they skip;
# under CI=true they fail instead).
if [ "${CELLAR_NO_SERVERS:-}" != 1 ]; then
    echo "== [$((SECONDS - T0))s] servers: Redis, Redis Cluster, PostgreSQL (scripts/servers.sh) =="
    CELLAR_SERVERS_DIR="$(mktemp -d)"
    CLEANUP+=('./scripts/servers.sh stop "$CELLAR_SERVERS_DIR"')
    ./scripts/servers.sh start "$CELLAR_SERVERS_DIR"
    # shellcheck disable=SC1091
    source "$CELLAR_SERVERS_DIR/env"
fi

echo "== [$((SECONDS - T0))s] Rust: building the workspace and its tests (cargo prints each crate it compiles) =="
cargo test --release --workspace --no-run
echo "== [$((SECONDS - T0))s] Rust: cargo test --workspace =="
cargo test --release --workspace --quiet

echo "== [$((SECONDS - T0))s] Python: cellar wheels per CPython, pytest and CPython's own tests =="
./scripts/python-tests.sh

echo "== all tests passed ($((SECONDS - T0)) s; $(df -Pk . | awk 'NR == 2 {printf "%.1f", $4 / 1048576}') GiB left free) =="
