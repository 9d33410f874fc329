"""Benchmark: cellar.marshal vs CPython's C marshal, loads and dumps, side by side in one process.

Cases:
  (a) a list of 100,000 dicts like {"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5}
  (b) a 1 MB str (ASCII), and a 1 MB non-ASCII str as an extra row
  (c) a large module's code object: the stdlib's largest library module with code (_pydecimal.py),
      plus the largest .py file overall (pydoc_data/topics.py, mostly one dict of strings)
  (d) one small dict (a shelf value): the per-call cost of each side

Each timing is the best of --repeat timeit runs (gc disabled during timing, timeit's default),
CPython and cellar interleaved so that machine load drifts affect both alike.
Prints a markdown table; ratio = CPython time / cellar time (> 1 means cellar is faster).

Usage: python bench/python/marshal_bench.py [--repeat N] [--quick]
"""

from __future__ import annotations

import argparse
import marshal as c_marshal
import os
import sysconfig
import timeit

import cellar.marshal as r_marshal


def case_dicts() -> object:
    return [
        {"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5} for i in range(100_000)
    ]


def case_str_ascii() -> object:
    return ("The quick brown fox jumps over the lazy dog. " * 30000)[: 1 << 20]


def case_str_nonascii() -> object:
    return ("Größe café naïve façade — ünïcödé ✓ " * 40000)[: 1 << 20]


def module_code(relpath: str) -> object:
    path = os.path.join(sysconfig.get_paths()["stdlib"], relpath)
    with open(path, encoding="utf-8") as f:
        src = f.read()
    return compile(src, path, "exec")


def best_pair(fn_c, fn_r, repeat: int) -> tuple[float, float]:
    """Best time per call of each function, measured interleaved (C, cellar, C, cellar, ...) so
    that drifting machine load affects both sides alike."""
    tc, tr = timeit.Timer(fn_c), timeit.Timer(fn_r)
    n = max(1, min(tc.autorange()[0], tr.autorange()[0]) // 2)
    bc = br = float("inf")
    for _ in range(repeat):
        bc = min(bc, tc.timeit(n) / n)
        br = min(br, tr.timeit(n) / n)
    return bc, br


def show(seconds: float) -> str:
    """A time per call in ms, or in ns below 10 us (a small value's calls)."""
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-5 else f"{seconds * 1e9:.0f} ns"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    args = ap.parse_args()
    repeat = 2 if args.quick else args.repeat

    cases = [
        ("(a) 100k dicts", case_dicts()),
        ("(b) 1 MB str (ASCII)", case_str_ascii()),
        ("(b') 1 MB str (non-ASCII)", case_str_nonascii()),
        ("(c) code: _pydecimal.py", module_code("_pydecimal.py")),
        ("(c') code: pydoc_data/topics.py", module_code("pydoc_data/topics.py")),
        ("(d) one small dict", {"id": 1, "name": "user1", "tags": ("a", "b"), "score": 1.5}),
    ]
    rows = []
    for name, value in cases:
        c_bytes = c_marshal.dumps(value)
        r_bytes = r_marshal.dumps(value)
        # Sanity: each side reads the other's output to an equal value.
        assert c_marshal.loads(r_bytes) == value, name
        assert r_marshal.loads(c_bytes) == value, name
        d_c, d_r = best_pair(lambda: c_marshal.dumps(value), lambda: r_marshal.dumps(value), repeat)
        l_c, l_r = best_pair(lambda: c_marshal.loads(c_bytes), lambda: r_marshal.loads(c_bytes), repeat)
        rows.append((name, len(c_bytes), "dumps", d_c, d_r))
        rows.append((name, len(c_bytes), "loads", l_c, l_r))

    print("| case | marshal bytes | op | CPython marshal | cellar.marshal | speed-up (CPython/cellar) |")
    print("|---|---:|---|---:|---:|---:|")
    for name, size, op, tc, tr in rows:
        print(f"| {name} | {size:,} | {op} | {show(tc)} | {show(tr)} | {tc / tr:.2f}x |")


if __name__ == "__main__":
    main()
