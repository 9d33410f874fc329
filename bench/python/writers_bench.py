"""Issue 17's benchmark: several writer processes on one store.

P = 1, 2, 4, 8 worker processes (multiprocessing, spawn) write into one store at the same
time; every worker opens its own handle, waits at a barrier, then writes its share of
``--total`` keys (distinct keys per worker, ``pickle.dumps(small dict)`` values of ~90 bytes,
made before the timing; cellar.shelve and "lmdb + pickle" get the dicts instead and pickle
each one in the timed loop). Aggregate throughput = total writes / (last worker's end - first
worker's start), on the system-wide monotonic clock. Two modes:

* per-op: every write is its own commit (``db[k] = v``; sqlitedict with autocommit; one LMDB
  write transaction per put; ``Cache.set``);
* batched: ``--batch`` (100) writes per commit (``db.batch()``, ``Shelf.batch()``, one
  sqlitedict ``commit()``, one LMDB transaction, ``Cache.transact()``).

Durability is the same for every store where it can be: a write returns once it is in the OS
(survives ``kill -9`` of the writer, not a power loss). cellar's default ('c', no 's' flag);
SQLite through sqlitedict and diskcache in WAL mode with ``synchronous=NORMAL`` (diskcache's
default; set on sqlitedict's connection), busy timeout 5 s (Python's sqlite3 default, which
both use); LMDB with ``sync=False`` (no fsync per transaction; ``lock=True``: writers
serialised by LMDB's own lock). cellar.dbm/shelve run in their default shared mode (each commit
takes the store's write lock) and, for P = 1, also with ``exclusive=True``.

Usage: python bench/python/writers_bench.py [--total 40000] [--procs 1,2,4,8] [--batch 100]
       [--only cellar.dbm,lmdb] [--json FILE]
The peers come from the bench venv (bench/python/run.sh installs them); a missing one is
reported as unavailable.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import tempfile
import time
from typing import Any, Callable


def _values(wid: int, n: int) -> list[tuple[bytes, bytes]]:
    return [
        (
            b"w%d-key%d" % (wid, i),
            pickle.dumps({"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5}, 4),
        )
        for i in range(n)
    ]


# Each writer: (open(path, exclusive) -> handle, write(handle, kvs, batch) -> None, close).


def _cellar_dbm(path: str, exclusive: bool) -> Any:
    import cellar.dbm

    # Only pass it when set: the same script measures cellar builds from before issue 17.
    return cellar.dbm.open(path, "c", **({"exclusive": True} if exclusive else {}))


def _cellar_dbm_write(db: Any, kvs: list, batch: int) -> None:
    if batch <= 1:
        for k, v in kvs:
            db[k] = v
    else:
        for i in range(0, len(kvs), batch):
            with db.batch() as b:
                for k, v in kvs[i : i + batch]:
                    b[k] = v


def _cellar_shelve(path: str, exclusive: bool) -> Any:
    import cellar.shelve

    return cellar.shelve.open(path, "c", **({"exclusive": True} if exclusive else {}))


def _objects(kvs: list) -> list:
    # For the stores that pickle the values themselves: the dicts (str keys), made before the
    # timing like the other stores' bytes.
    return [(k.decode(), pickle.loads(v)) for k, v in kvs]


def _shelve_write(sh: Any, kvs: list, batch: int) -> None:
    # Shelves pickle their values themselves: the dicts go in, as made by `_objects`.
    if batch <= 1:
        for k, v in kvs:
            sh[k] = v
    else:
        for i in range(0, len(kvs), batch):
            with sh.batch() as b:
                for k, v in kvs[i : i + batch]:
                    b[k] = v


def _sqlitedict(path: str, exclusive: bool) -> Any:
    from sqlitedict import SqliteDict

    d = SqliteDict(path + ".sqlite", journal_mode="WAL", autocommit=False)
    d.conn.execute("PRAGMA synchronous=NORMAL")
    d.commit()
    return d


def _sqlitedict_write(d: Any, kvs: list, batch: int) -> None:
    step = max(batch, 1)
    for i in range(0, len(kvs), step):
        for k, v in kvs[i : i + step]:
            d[k.decode()] = v
        d.commit()


def _diskcache(path: str, exclusive: bool) -> Any:
    import diskcache

    return diskcache.Cache(path + ".diskcache")


def _diskcache_write(c: Any, kvs: list, batch: int) -> None:
    if batch <= 1:
        for k, v in kvs:
            c.set(k, v)
    else:
        for i in range(0, len(kvs), batch):
            with c.transact():
                for k, v in kvs[i : i + batch]:
                    c.set(k, v)


def _lmdb(path: str, exclusive: bool) -> Any:
    import lmdb

    return lmdb.open(path + ".lmdb", map_size=4 << 30, sync=False, max_spare_txns=1)


def _lmdb_write(env: Any, kvs: list, batch: int) -> None:
    step = max(batch, 1)
    for i in range(0, len(kvs), step):
        with env.begin(write=True) as txn:
            for k, v in kvs[i : i + step]:
                txn.put(k, v)


def _lmdb_pickle_write(env: Any, kvs: list, batch: int) -> None:
    # Like for like with a shelf: every dict is pickled in the timed loop.
    step = max(batch, 1)
    for i in range(0, len(kvs), step):
        with env.begin(write=True) as txn:
            for k, v in kvs[i : i + step]:
                txn.put(k.encode(), pickle.dumps(v))


STORES: dict[str, tuple[Callable[[str, bool], Any], Callable[[Any, list, int], None]]] = {
    "cellar.dbm": (_cellar_dbm, _cellar_dbm_write),
    "cellar.shelve": (_cellar_shelve, _shelve_write),
    "sqlitedict (WAL)": (_sqlitedict, _sqlitedict_write),
    "diskcache": (_diskcache, _diskcache_write),
    "lmdb": (_lmdb, _lmdb_write),
    "lmdb + pickle": (_lmdb, _lmdb_pickle_write),
}

# Stores that get the dicts (and pickle them in the timed loop) instead of ready-made bytes.
PICKLING = {"cellar.shelve", "lmdb + pickle"}


def _worker(store: str, path: str, wid: int, n: int, batch: int, exclusive: bool,
            barrier: Any, out: Any) -> None:
    try:
        opener, write = STORES[store]
        kvs = _values(wid, n)
        if store in PICKLING:
            kvs = _objects(kvs)
        h = opener(path, exclusive)
        barrier.wait()
        t0 = time.monotonic()
        write(h, kvs, batch)
        t1 = time.monotonic()
        h.close()
        out.put((wid, t0, t1, None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        try:
            barrier.abort()
        except Exception:
            pass
        out.put((wid, 0.0, 0.0, f"{type(e).__name__}: {e}"))


def run_one(store: str, procs: int, total: int, batch: int, exclusive: bool) -> dict:
    ctx = mp.get_context("spawn")
    d = tempfile.mkdtemp(prefix="cellar-writers-")
    path = os.path.join(d, "store")
    try:
        barrier = ctx.Barrier(procs)
        out = ctx.Queue()
        n = total // procs
        ps = [
            ctx.Process(target=_worker, args=(store, path, w, n, batch, exclusive, barrier, out))
            for w in range(procs)
        ]
        for p in ps:
            p.start()
        res = [out.get(timeout=1800) for _ in ps]
        for p in ps:
            p.join(60)
        errs = [e for (_, _, _, e) in res if e]
        if errs:
            return {"store": store, "procs": procs, "batch": batch, "error": errs[0]}
        t0 = min(r[1] for r in res)
        t1 = max(r[2] for r in res)
        return {
            "store": store + (" exclusive" if exclusive else ""),
            "procs": procs,
            "batch": batch,
            "writes": n * procs,
            "seconds": t1 - t0,
            "writes_per_s": n * procs / (t1 - t0),
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def available(store: str) -> str | None:
    mod = {
        "sqlitedict (WAL)": "sqlitedict",
        "diskcache": "diskcache",
        "lmdb": "lmdb",
        "lmdb + pickle": "lmdb",
    }.get(
        store, "cellar"
    )
    try:
        __import__(mod)
    except ImportError as e:
        return str(e)
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=40000)
    ap.add_argument("--procs", default="1,2,4,8")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--only", default="")
    ap.add_argument("--modes", default="per-op,batched")
    ap.add_argument("--json", default="")
    ap.add_argument("--no-exclusive", action="store_true", help="skip the exclusive runs")
    a = ap.parse_args()
    procs = [int(p) for p in a.procs.split(",")]
    stores = [s for s in STORES if not a.only or any(o in s for o in a.only.split(","))]
    results = []
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    for mode in a.modes.split(","):
        batch = 1 if mode == "per-op" else a.batch
        for store in stores:
            why = available(store)
            if why:
                print(f"{store}: unavailable ({why})", file=sys.stderr)
                continue
            runs = [(p, False) for p in procs]
            if store.startswith("cellar") and 1 in procs and not a.no_exclusive:
                runs.insert(1, (1, True))
            for p, excl in runs:
                r = run_one(store, p, a.total, batch, excl)
                r["mode"] = mode
                results.append(r)
                print(json.dumps(r), file=sys.stderr)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    for mode in a.modes.split(","):
        rows = [r for r in results if r["mode"] == mode]
        names = list(dict.fromkeys(r["store"] for r in rows))
        print(f"\n{mode} ({'1 write' if mode == 'per-op' else str(a.batch) + ' writes'} per "
              f"commit), {a.total} writes in all, aggregate writes/s\n")
        print("| store | " + " | ".join(f"{p} proc" for p in procs) + " |")
        print("|---|" + "---:|" * len(procs))
        for name in names:
            cells = []
            for p in procs:
                r = next((r for r in rows if r["store"] == name and r["procs"] == p), None)
                if r is None:
                    cells.append("")
                elif "error" in r:
                    cells.append("error: " + r["error"][:60])
                else:
                    cells.append(f"{r['writes_per_s']:,.0f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"load": os.getloadavg(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
