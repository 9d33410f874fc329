#!/usr/bin/env bash
# The Python part of the test suite, once per available CPython >= 3.11:
#   1. builds the `cellar` wheel with maturin (`maturin build --release`, never an editable
#      install) for that interpreter and installs it into its own venv, .venv-3.X (git-ignored;
#      pip installs maturin, pytest, mypy and atheris there itself);
#   2. runs the README's seed example (its shelve block) with that venv's python;
#   3. pytest tests/python (warnings are errors: tests/python/pytest.ini);
#   4. that version's OWN Lib/test suites against cellar's modules: test_marshal;
#      pickletester + test_copyreg; test_dbm, test_dbm_dumb, test_dbm_sqlite3 (3.13+),
#      test_shelve; and test_dbm + test_shelve on server-backed stores (Redis, Redis Cluster,
#      PostgreSQL) when scripts/servers.sh's URLs are in the environment.
# Interpreters: python3 on PATH and every $(pyenv root)/versions/*/bin/python3, one per
# minor version (python3 first), 3.11 and newer; CELLAR_PYTHONS="/path/python3.12 ..."
# overrides the list. One cargo target dir is shared by the builds (pyo3 is rebuilt per
# interpreter; one wheel build per version). Every version runs the whole list even when an
# earlier one failed; a summary table ends the run, and the exit status is non-zero if any
# step of any version failed. Needs no stdin; works with CI=true on a fresh machine with
# python3 (+ venv/pip) and a Rust toolchain.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Our own target dir: no lock contention with the workspace build, and pyo3's build stays cached.
export CARGO_TARGET_DIR="${CELLAR_PY_TARGET_DIR:-$ROOT/target/py}"
WHEELS="$CARGO_TARGET_DIR/wheels"
START=$SECONDS
SUMMARY=()
STATUS=0

phase() { echo; echo "== [$(($SECONDS - START))s] $* =="; }

# --- which CPythons --------------------------------------------------------------------------
candidates=()
if [ -n "${CELLAR_PYTHONS:-}" ]; then
    read -r -a candidates <<<"$CELLAR_PYTHONS"
else
    command -v python3 >/dev/null && candidates+=("$(command -v python3)")
    if command -v pyenv >/dev/null; then
        for p in "$(pyenv root)"/versions/*/bin/python3; do
            [ -x "$p" ] && candidates+=("$p")
        done
    fi
fi
PYTHONS=()
SEEN=" "
for p in "${candidates[@]}"; do
    v=$("$p" -c 'import sys; print("%d.%d" % sys.version_info[:2]) if sys.version_info >= (3, 11) and sys.implementation.name == "cpython" else None' 2>/dev/null) || continue
    [ "$v" = "None" ] || [ -z "$v" ] && continue
    case "$SEEN" in *" $v "*) continue ;; esac
    SEEN="$SEEN$v "
    PYTHONS+=("$p")
done
if [ ${#PYTHONS[@]} -eq 0 ]; then
    echo "no CPython >= 3.11 found (python3 on PATH, pyenv versions, or CELLAR_PYTHONS)" >&2
    exit 1
fi
echo "CPythons to test: ${PYTHONS[*]}"

# The legacy-format tests compare with libgdbm / libdb through /usr/bin/python3.
phase "legacy-format fixture tools"
./scripts/legacy-fixtures.sh || exit 1

# The README's seed example: its first python block after "### shelve: the seed use case".
SEED=$(mktemp -d)
trap 'rm -rf "$SEED"' EXIT
awk '/^### shelve: the seed use case/{f=1} f&&/^```python/{p=1;next} p&&/^```/{exit} p' README.md \
    >"$SEED/seed.py"
grep -q 'shelve.open' "$SEED/seed.py" || { echo "README seed example not found" >&2; exit 1; }

# run LABEL CMD...: runs a step, records its result (and the counts it printed) for the summary.
run() {
    local label=$1
    shift
    local log
    log=$(mktemp)
    phase "$VER: $label"
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local counts
    counts=$(grep -E '^(test_[a-z_0-9]+|pickletester|test_copyreg)[^:]*: [0-9]+ passed|^[0-9]+ (passed|failed)|passed in|failed in' "$log" \
        | sed -E 's/^=+ //; s/ =+$//; s/ against cellar\.[a-z]+//; s/ vs cellar\.[a-z]+//' | paste -sd ';' -)
    rm -f "$log"
    if [ "$label" = pytest ] && [ "$rc" -eq 5 ]; then
        counts="pytest collected no tests (exit 5): the suite is missing"
    elif [ "$rc" -gt 128 ]; then
        counts="killed by signal $((rc - 128)) $counts"
    fi
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("$VER | $label | ok | $counts")
    else
        SUMMARY+=("$VER | $label | FAILED (exit $rc) | $counts")
        STATUS=1
    fi
    return "$rc"
}

for PY in "${PYTHONS[@]}"; do
    VER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    VENV=".venv-$VER"
    TAG="cp${VER/./}"
    phase "CPython $VER ($PY): venv $VENV"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV" || { SUMMARY+=("$VER | venv | FAILED |"); STATUS=1; continue; }
    fi
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" pytest "mypy>=1.11" atheris; then
        SUMMARY+=("$VER | pip install maturin pytest mypy atheris | FAILED |")
        STATUS=1
        continue
    fi
    rm -f "$WHEELS"/cellar-*-"$TAG"-*.whl
    if ! run "wheel (maturin build --release)" env VIRTUAL_ENV="$ROOT/$VENV" PATH="$ROOT/$VENV/bin:$PATH" \
        "$VENV/bin/maturin" build --release --quiet -i "$VENV/bin/python" \
        -m crates/cellar-python/Cargo.toml -o "$WHEELS"; then
        continue
    fi
    WHEEL=$(ls "$WHEELS"/cellar-*-"$TAG"-*.whl | head -n 1)
    run "install $(basename "$WHEEL")" "$VENV/bin/python" -m pip install --quiet \
        --disable-pip-version-check --force-reinstall --no-deps "$WHEEL" || continue
    run "seed example (README)" bash -c "cd '$SEED' && rm -f test.shelve* users.shelve* \
        && '$ROOT/$VENV/bin/python' seed.py | tee out.txt && grep -qx 'test data' out.txt"
    # Run from the repository root: `cellar` must come from the installed wheel, not a source tree.
    # Its temporary files go to a directory removed when the run ends (pytest's default keeps
    # the last three runs' stores under /tmp/pytest-of-$USER, hundreds of MB each).
    run pytest "$VENV/bin/python" -m pytest -W error -q -rs -p no:cacheprovider \
        --basetemp="$SEED/pytest-$VER" tests/python
    run "CPython $VER test_marshal" "$VENV/bin/python" tests/python/run_cpython_test_marshal.py
    run "CPython $VER pickletester, test_copyreg" "$VENV/bin/python" tests/python/run_cpython_pickletester.py
    run "CPython $VER test_dbm*, test_shelve" "$VENV/bin/python" tests/python/run_cpython_test_dbm.py
    # The same suites on server-backed stores, when scripts/servers.sh's URLs are in the
    # environment (scripts/test.sh starts the servers; under CI=true they must be there).
    if [ -n "${CELLAR_TEST_REDIS_URL:-}${CELLAR_TEST_POSTGRES_URL:-}" ] || [ "${CI:-}" = true ]; then
        run "CPython $VER test_dbm, test_shelve on servers" "$VENV/bin/python" \
            tests/python/run_cpython_test_dbm.py --server
    fi
done

phase "summary (wall time of the Python part: $(($SECONDS - START)) s)"
printf '%s\n' "version | step | result | counts" "${SUMMARY[@]}"
exit "$STATUS"
