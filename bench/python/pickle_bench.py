"""Benchmark: cellar.pickle (safe) vs CPython's C pickle, loads and dumps, side by side in one
process.

Cases:
  (a) the issue's case: a list of 100,000 dicts like
      {"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5}, protocol 5
      (and protocols 2 and 4 as extra rows)
  (b) 20,000 instances of a small class (cellar with allow=(Point,)), protocol 5
  (c) a 1 MB str and a list of 200,000 floats, protocol 5

Each timing is the best of --repeat runs, CPython and cellar interleaved so that machine load
drifts affect both alike. Timed twice: with the cyclic GC enabled (what a program sees; the
C unpickler leaves it on, cellar pauses it while decoding) and with it disabled around every
call (timeit's default), so the GC's share is visible. Prints a markdown table; ratio = CPython
time / cellar time (> 1 means cellar is faster).

Usage: python bench/python/pickle_bench.py [--repeat N] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import pickle
import time

import cellar.pickle as cp


class Point:
    def __init__(self, x: int, y: float, label: str) -> None:
        self.x = x
        self.y = y
        self.label = label


def dicts(n: int) -> list:
    return [{"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5} for i in range(n)]


def best(fn, repeat: int, gc_on: bool) -> float:
    out = float("inf")
    for _ in range(repeat):
        if not gc_on:
            gc.disable()
        try:
            t = time.perf_counter()
            fn()
            out = min(out, time.perf_counter() - t)
        finally:
            gc.enable()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 10_000 if args.quick else 100_000
    cases = [
        (f"{n:,} small dicts, protocol 5", dicts(n), 5, ()),
        (f"{n:,} small dicts, protocol 4", dicts(n), 4, ()),
        (f"{n:,} small dicts, protocol 2", dicts(n), 2, ()),
        (f"{n // 5:,} class instances (allow=), protocol 5", [Point(i, i / 2, "p%d" % i) for i in range(n // 5)], 5, (Point,)),
        ("1 MB str, protocol 5", "x" * (1 << 20), 5, ()),
        (f"{2 * n:,} floats, protocol 5", [i / 3 for i in range(2 * n)], 5, ()),
    ]
    print("| case | op | GC | CPython C pickle | cellar.pickle | ratio (C / cellar) |")
    print("|---|---|---|---:|---:|---:|")
    for name, value, proto, allow in cases:
        data = pickle.dumps(value, proto)
        assert cp.loads(data, allow=allow) is not None
        if not allow:
            assert pickle.loads(cp.dumps(value, proto)) == value
        for gc_on in (True, False):
            label = "on" if gc_on else "off"
            c_t = best(lambda: pickle.loads(data), args.repeat, gc_on)
            r_t = best(lambda: cp.loads(data, allow=allow), args.repeat, gc_on)
            print(f"| {name} | loads | {label} | {c_t * 1e3:.1f} ms | {r_t * 1e3:.1f} ms | {c_t / r_t:.2f}x |")
            if allow:
                continue  # cellar.pickle.dumps writes basic types and registered types only
            c_t = best(lambda: pickle.dumps(value, proto), args.repeat, gc_on)
            r_t = best(lambda: cp.dumps(value, proto), args.repeat, gc_on)
            print(f"| {name} | dumps | {label} | {c_t * 1e3:.1f} ms | {r_t * 1e3:.1f} ms | {c_t / r_t:.2f}x |")


if __name__ == "__main__":
    main()
