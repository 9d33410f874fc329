"""Shared harness for the Python peer benchmarks (dbm_bench.py, shelve_bench.py).

Each store runs in its own worker process (a fresh interpreter: no caches, threads or garbage
left over from the previous store) in a fresh temporary directory. A worker:

1. builds the same data as every other worker (fixed seed): ``n`` keys, their values, the
   write order and the read order (two independent random permutations of the keys);
2. write phase, timed as a whole with ``time.perf_counter``: open (create), every write in the
   write order, close;
3. file size: the total bytes (``st_size``) of every file the store left in its directory;
4. read phase, timed as a whole: open, one read of every key in the read order, close. The
   loop checks every value cheaply (a running sum the store cannot fake: value lengths for
   dbm, the ``id`` field for shelve); a sample of 1,000 keys is then compared exactly, outside
   the timing.

The parent collects one JSON record per store, prints a markdown table and writes the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

SEED = 20240607
SAMPLE = 1000
DEFAULT_N = 200_000
DEFAULT_BATCH = 1000


@dataclass
class Store:
    """One row of a benchmark: a store in one mode."""

    name: str  # id used by --only and in the JSON
    label: str  # what the table shows
    family: str  # "cellar" or the peer's package name (for "unavailable" reasons)
    mode: str  # "default" or "batch" (which cellar row the ratios compare against)
    durability: str  # what an acknowledged write survives, in a few words
    write: Callable[[str, Any], None]  # (directory, data) -> None: open, write all, close
    read: Callable[[str, Any], int]  # (directory, data) -> checksum: open, read all, close
    sample: Callable[[str, Any], None]  # (directory, data): exact check of SAMPLE keys
    requires: Sequence[str] = ()  # modules that must import
    reference: bool = False  # the cellar row that peers of this mode are compared to
    on_disk: bool = True
    missing: str | None = None  # the reason shown when a required module is absent
    extra: dict[str, Any] = field(default_factory=dict)


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def dir_bytes(path: str) -> tuple[int, int, int]:
    """(total st_size, total allocated bytes, number of files) of everything under path."""
    size = alloc = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            size += st.st_size
            alloc += st.st_blocks * 512
            files += 1
    return size, alloc, files


def permutation(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def check_available(store: Store) -> str | None:
    """None if the store's modules import, else the reason it is unavailable."""
    for mod in store.requires:
        try:
            __import__(mod)
        except Exception as e:  # ImportError, or a broken wheel raising anything else
            if store.missing is not None and isinstance(e, ModuleNotFoundError):
                return store.missing
            reason = f"import {mod} failed: {type(e).__name__}: {e}"
            log = os.path.join(os.path.dirname(__file__), ".venv", f"pip-{store.family}.log")
            if os.path.exists(log):
                with open(log, encoding="utf-8", errors="replace") as f:
                    lines = [ln.strip() for ln in f if ln.strip()]
                if lines:
                    reason += f" (pip: {lines[-1][:200]})"
            return reason
    return None


def run_worker(store: Store, data: Any, n: int, workdir: str) -> dict[str, Any]:
    """Runs one store's phases; returns its JSON record."""
    d = tempfile.mkdtemp(prefix=f"cellar-bench-{store.name}-", dir=workdir)
    try:
        gc.collect()
        t0 = time.perf_counter()
        store.write(d, data)
        t_write = time.perf_counter() - t0
        size, alloc, files = dir_bytes(d) if store.on_disk else (0, 0, 0)
        gc.collect()
        t0 = time.perf_counter()
        got = store.read(d, data)
        t_read = time.perf_counter() - t0
        if got != data.checksum:
            raise AssertionError(f"read checksum {got} != expected {data.checksum}")
        store.sample(d, data)
        return {
            "store": store.name,
            "label": store.label,
            "mode": store.mode,
            "durability": store.durability,
            "n": n,
            "write_s": t_write,
            "read_s": t_read,
            "file_bytes": size if store.on_disk else None,
            "alloc_bytes": alloc if store.on_disk else None,
            "files": files if store.on_disk else None,
            "status": "ok",
            **store.extra,
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def fmt_ratio(peer: float | None, ref: float | None) -> str:
    if peer is None or ref is None or ref == 0:
        return "-"
    return f"{peer / ref:.2f}x"


def fmt_mb(b: int | None) -> str:
    return "-" if b is None else f"{b / 1e6:.2f}"


def table(results: list[dict[str, Any]], title: str) -> str:
    """Markdown table. Ratios are peer / cellar reference of the same mode (default or batch):
    above 1.00x cellar is faster (or smaller)."""
    refs = {r["mode"]: r for r in results if r.get("reference") and r["status"] == "ok"}
    out = [
        f"{title}",
        "",
        "| store | mode | durability of an acknowledged write | write (s) | write k/s | "
        "read (s) | read k/s | size (MB) | write vs cellar | read vs cellar | size vs cellar |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r["status"] != "ok":
            out.append(
                f"| {r['label']} | {r['mode']} | {r.get('durability', '')} | "
                f"{r['status']} | | | | | | | |"
            )
            continue
        ref = refs.get(r["mode"])
        n = r["n"]
        wk = n / r["write_s"] / 1e3
        rk = n / r["read_s"] / 1e3
        if r.get("reference"):
            ratios = ["(ref)", "(ref)", "(ref)"]
        elif ref is None:
            ratios = ["-", "-", "-"]
        else:
            ratios = [
                fmt_ratio(r["write_s"], ref["write_s"]),
                fmt_ratio(r["read_s"], ref["read_s"]),
                fmt_ratio(r["file_bytes"], ref["file_bytes"]),
            ]
        out.append(
            f"| {r['label']} | {r['mode']} | {r['durability']} | {fmt_s(r['write_s'])} | "
            f"{wk:.1f} | {fmt_s(r['read_s'])} | {rk:.1f} | {fmt_mb(r['file_bytes'])} | "
            + " | ".join(ratios)
            + " |"
        )
    return "\n".join(out)


PACKAGES = ("cellar", "sqlitedict", "diskcache", "rocksdict", "plyvel", "lmdb")


def versions() -> dict[str, str]:
    """Installed versions of cellar and the peers (and SQLite's, which several peers use)."""
    import importlib.metadata
    import sqlite3

    out = {"sqlite (python's sqlite3)": sqlite3.sqlite_version}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_note() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in load],
    }


def main(
    description: str,
    stores: list[Store],
    make_data: Callable[[int], Any],
    default_json: str,
    script: str,
) -> None:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--n", type=int, default=DEFAULT_N, help="number of keys (default 200000)")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated substrings; run only stores whose id contains one of them",
    )
    ap.add_argument("--list", action="store_true", help="list the store ids and exit")
    ap.add_argument("--json", default=default_json, help="where to write the JSON results")
    ap.add_argument(
        "--dir", default=None, help="parent of the per-store temporary directories"
    )
    ap.add_argument(
        "--timeout", type=float, default=1800, help="seconds before a store's worker is killed"
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.list:
        for s in stores:
            print(f"{s.name:28} {s.label} [{s.mode}]")
        return

    if args.worker is not None:
        store = next(s for s in stores if s.name == args.worker)
        try:
            rec = run_worker(store, make_data(args.n), args.n, args.dir or tempfile.gettempdir())
        except Exception as e:
            traceback.print_exc()
            rec = {"store": store.name, "status": f"error: {type(e).__name__}: {e}"[:300]}
        print("RESULT " + json.dumps(rec))
        return

    wanted = [w for w in args.only.split(",") if w]
    selected = [s for s in stores if not wanted or any(w in s.name for w in wanted)]
    # Keep the references in the run so that ratios are always available.
    names = {s.name for s in selected}
    for s in stores:
        if s.reference and s.name not in names and any(t.mode == s.mode for t in selected):
            selected.insert(0, s)
            names.add(s.name)
    selected.sort(key=lambda s: stores.index(s))

    results: list[dict[str, Any]] = []
    # Warm-up: one small throwaway run of the first store, so that the first measured store
    # does not pay for a cold page cache (interpreter, extension modules, the temp directory's
    # file system). Without it the first store of a run measured 15-25% slower on writes.
    first = next((s for s in selected if check_available(s) is None), None)
    if first is not None:
        warm = [sys.executable, script, "--worker", first.name, "--n", str(min(args.n, 5000))]
        if args.dir:
            warm += ["--dir", args.dir]
        subprocess.run(warm, capture_output=True, timeout=args.timeout)
    env = machine_note()
    print(f"# {description}: n={args.n}, python {env['python']}, load {env['loadavg']}", flush=True)
    for s in selected:
        base = {
            "store": s.name,
            "label": s.label,
            "mode": s.mode,
            "durability": s.durability,
            "n": args.n,
            "reference": s.reference,
        }
        reason = check_available(s)
        if reason is not None:
            rec = {**base, "status": f"n/a ({reason})"}
            results.append(rec)
            print(f"  {s.name}: unavailable: {reason}", flush=True)
            continue
        cmd = [sys.executable, script, "--worker", s.name, "--n", str(args.n)]
        if args.dir:
            cmd += ["--dir", args.dir]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            line = next(
                (ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None
            )
            if line is None:
                rec = {
                    **base,
                    "status": f"crashed (exit {p.returncode}): {p.stderr.strip()[-300:]}",
                }
            else:
                rec = {**base, **json.loads(line[len("RESULT ") :])}
                if rec["status"] != "ok" and p.stderr.strip():
                    sys.stderr.write(p.stderr)
        except subprocess.TimeoutExpired:
            rec = {**base, "status": f"timeout (> {args.timeout:.0f} s)"}
        results.append(rec)
        if rec["status"] == "ok":
            print(
                f"  {s.name}: write {rec['write_s']:.3f} s, read {rec['read_s']:.3f} s, "
                f"size {fmt_mb(rec['file_bytes'])} MB",
                flush=True,
            )
        else:
            print(f"  {s.name}: {rec['status']}", flush=True)

    env_after = machine_note()
    print()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print()
    print(table(results, f"n = {args.n:,}; {env['date']}; load average before/after "
                f"{env['loadavg'][0]}/{env_after['loadavg'][0]}"))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"benchmark": description, "n": args.n, "machine": env,
                 "machine_after": env_after, "versions": versions(), "results": results},
                f,
                indent=1,
            )
        print(f"\nJSON: {args.json}")


def mapping_write(db: Any, keys: Sequence[Any], vals: Sequence[Any], order: Iterable[int]) -> None:
    for i in order:
        db[keys[i]] = vals[i]


def mapping_write_batches(
    batch: Callable[[], Any], keys: Sequence[Any], vals: Sequence[Any], order: Sequence[int],
    size: int = DEFAULT_BATCH, target: Any = None,
) -> None:
    """``with batch() as b: b[k] = v`` per chunk of ``size`` writes; with ``target``,
    ``with batch(): target[k] = v`` (the writes made through the handle join the block)."""
    for part in chunks(order, size):
        with batch() as b:
            t = b if target is None else target
            for i in part:
                t[keys[i]] = vals[i]


def sqlitedict_fns(
    open_db: Callable[[str, str], Any],
    read_mapping: Callable[[Any, Any], int],
    check_sample: Callable[[Any, Any], None],
) -> tuple[Callable[..., Any], ...]:
    """sqlitedict's (write, write_batch, read, sample) for a benchmark whose store is opened by
    ``open_db(dir, flag)`` and whose reads are checked by its ``read_mapping``/``check_sample``."""

    def write(d: str, data: Any) -> None:
        db = open_db(d, "c")
        mapping_write(db, data.keys, data.vals, data.write_order)
        db.commit()  # close() does not commit when autocommit=False (sqlitedict's default)
        db.close()

    def write_batch(d: str, data: Any) -> None:
        db = open_db(d, "c")
        keys, vals = data.keys, data.vals
        for part in chunks(data.write_order, DEFAULT_BATCH):
            for i in part:
                db[keys[i]] = vals[i]
            db.commit()
        db.close()

    def read(d: str, data: Any) -> int:
        db = open_db(d, "r")
        total = read_mapping(db, data)
        db.close()
        return total

    def sample(d: str, data: Any) -> None:
        db = open_db(d, "r")
        check_sample(db.get, data)
        db.close()

    return write, write_batch, read, sample


def diskcache_fns(
    read_mapping: Callable[[Any, Any], int], check_sample: Callable[[Any, Any], None]
) -> tuple[Callable[..., Any], ...]:
    """diskcache's (write, write_batch, read, sample) (it pickles non-bytes values itself), as
    `sqlitedict_fns`."""

    def write(d: str, data: Any) -> None:
        import diskcache

        db = diskcache.Cache(d)
        mapping_write(db, data.keys, data.vals, data.write_order)
        db.close()

    def write_batch(d: str, data: Any) -> None:
        import diskcache

        db = diskcache.Cache(d)
        keys, vals = data.keys, data.vals
        for part in chunks(data.write_order, DEFAULT_BATCH):
            with db.transact():
                for i in part:
                    db[keys[i]] = vals[i]
        db.close()

    def read(d: str, data: Any) -> int:
        import diskcache

        db = diskcache.Cache(d)
        total = read_mapping(db, data)
        db.close()
        return total

    def sample(d: str, data: Any) -> None:
        import diskcache

        db = diskcache.Cache(d)
        check_sample(db.get, data)
        db.close()

    return write, write_batch, read, sample
