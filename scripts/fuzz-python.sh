#!/usr/bin/env bash
# Coverage-guided fuzzing of the Python entry points with atheris (cellar.marshal.loads/load,
# cellar.pickle.loads in its three modes): tests/fuzz/fuzz_marshal.py, tests/fuzz/fuzz_pickle.py.
#
#   ./scripts/fuzz-python.sh [SECONDS_PER_HARNESS]      (default 300)
#
# atheris instruments Python code only; the decoders are Rust. So this script builds a cellar
# wheel whose Rust code carries LLVM sanitizer-coverage (inline 8-bit counters, PC table,
# comparison tracing: what cargo-fuzz uses) and a shared libFuzzer built from the libfuzzer-sys
# crate's sources (the one cargo fuzz links), preloaded so that atheris ("Using preloaded
# libfuzzer") and the instrumented extension report to the same fuzzer. libFuzzer then sees the
# Rust decoders' edges and comparisons (~100k counters) instead of a few dozen Python lines.
#
# Everything lives under target/fuzzpy (git-ignored) and .venv-fuzz: the wheel, libfuzzer.so,
# the growing corpora (seeded from tests/corpus/{marshal,pickle}) and any crash-* artifacts.
# Exit status: non-zero if a harness found anything. The test command runs the harnesses
# briefly with the ordinary wheel (tests/python/test_fuzz_harness.py); this is the long run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUDGET=${1:-300}
OUT=$ROOT/target/fuzzpy
VENV=$ROOT/.venv-fuzz
mkdir -p "$OUT"

echo "== libFuzzer as a shared library (from libfuzzer-sys's sources) =="
if [ ! -f "$OUT/libfuzzer.so" ]; then
    cargo fetch --manifest-path fuzz/Cargo.toml --quiet
    SRC=$(cargo metadata --manifest-path fuzz/Cargo.toml --format-version 1 |
        python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="libfuzzer-sys"))')/libfuzzer
    OBJ=$(mktemp -d)
    for f in "$SRC"/Fuzzer*.cpp; do
        case $(basename "$f" .cpp) in
        # main() is the harness's; the interceptors need a .preinit_array, which a shared
        # library cannot have; the other platforms' files are empty here.
        FuzzerMain | FuzzerInterceptors | *Windows | *Darwin | *Fuchsia) continue ;;
        esac
        g++ -O2 -fPIC -std=c++17 -w -c "$f" -o "$OBJ/$(basename "$f" .cpp).o"
    done
    g++ -shared -o "$OUT/libfuzzer.so" "$OBJ"/*.o -lpthread
    rm -rf "$OBJ"
fi

echo "== instrumented cellar wheel in $VENV =="
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" atheris
# --target keeps RUSTFLAGS off the build scripts and proc macros (host code, not instrumented).
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=3 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
    VIRTUAL_ENV=$VENV PATH="$VENV/bin:$PATH" CARGO_TARGET_DIR=$OUT \
    "$VENV/bin/maturin" build --release --quiet --target x86_64-unknown-linux-gnu \
    -i "$VENV/bin/python" -m crates/cellar-python/Cargo.toml -o "$OUT/wheels"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    "$(ls -t "$OUT"/wheels/cellar-*.whl | head -n 1)"

STATUS=0
for h in marshal pickle; do
    echo "== fuzz_$h: $BUDGET s =="
    mkdir -p "$OUT/corpus-$h" "$OUT/artifacts-$h"
    # PYTHONMALLOC=debug: a write past an allocation (CPython's code objects have had several)
    # aborts at the next free instead of corrupting silently; faulthandler names the line. Such
    # an abort leaves no crash-* file (atheris's libFuzzer has no death callback here), so the
    # exit status and the log (kept in $OUT) are what say so.
    LOG=$OUT/fuzz_$h.log
    # Only this run's findings count: artifacts of earlier runs (kept for reproduction) are
    # older than this stamp.
    touch "$OUT/.start-$h"
    rc=0
    PYTHONMALLOC=debug LD_PRELOAD=$OUT/libfuzzer.so "$VENV/bin/python" -X faulthandler \
        "tests/fuzz/fuzz_$h.py" "$OUT/corpus-$h" "tests/corpus/$h" -max_total_time="$BUDGET" \
        -artifact_prefix="$OUT/artifacts-$h/" -print_final_stats=1 >"$LOG" 2>&1 || rc=$?
    grep -E '^#[0-9]+.*(INITED|DONE)|Uncaught|ERROR|SUMMARY|stat::number_of_executed_units|stat::new_units_added|fuzz_(marshal|pickle):|Test unit written|Traceback|Error|Fatal|File "|OUCH' "$LOG" || true
    if [ "$rc" -ne 0 ] || [ -n "$(find "$OUT/artifacts-$h" -newer "$OUT/.start-$h" \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \))" ]; then
        echo "fuzz_$h: findings (exit $rc): $LOG, $OUT/artifacts-$h" >&2
        STATUS=1
    fi
done
exit "$STATUS"
