"""cellar.shelve on Redis and PostgreSQL against the hand-written glue people use instead:
redis-py + pickle (plain GET/SET, and pipelined), redis-shelve, psycopg + pickle.

Every row stores the same records (a small dict per key, pickled with protocol 5 by every store)
under its own namespace, on the servers scripts/servers.sh starts (CELLAR_TEST_REDIS_URL,
CELLAR_TEST_POSTGRES_URL, PGPASSWORD). Workloads, each with 1 and 8 client processes:

* ``write 1/op``: every process writes its share of the keys one call at a time;
* ``read 1/op``: every process reads its share one call at a time (values checked);
* ``write bulk``: batches of 1,000 (cellar: ``shelf.batch()``, one atomic commit per batch;
  redis-py: a non-transactional pipeline of SETs; psycopg: ``executemany`` in one transaction);
* ``read bulk``: every process reads the whole store in pages (cellar: iterating ``items()``
  by cursor; redis-py: SCAN + MGET per page; psycopg: a server-side cursor).

The time of a row is the wall time from the moment all processes are connected and released
until the last one finishes; the table shows operations per second (higher is better).
Needs ``pip install redis psycopg[binary] redis-shelve`` next to cellar.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import sys
import time
from typing import Any, Callable

PROTO = 5
PAGE = 1000


def record(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user{i}", "tags": ["a", "b", str(i % 7)], "score": i / 3}


def keys_of(worker: int, workers: int, n: int) -> range:
    per = n // workers
    return range(worker * per, (worker + 1) * per)


# --- the stores: open(namespace) -> object with the four workloads ------------------------


class CellarShelf:
    def __init__(self, url: str) -> None:
        import cellar.shelve

        self.s = cellar.shelve.open(url, "c", protocol=PROTO)

    def write_op(self, ks: range) -> None:
        s = self.s
        for i in ks:
            s[f"k{i}"] = record(i)

    def read_op(self, ks: range) -> int:
        s, t = self.s, 0
        for i in ks:
            t += s[f"k{i}"]["id"]
        return t

    def write_bulk(self, ks: range) -> None:
        s = self.s
        for start in range(ks.start, ks.stop, PAGE):
            with s.batch() as b:
                for i in range(start, min(start + PAGE, ks.stop)):
                    b[f"k{i}"] = record(i)

    def read_all(self) -> int:
        return sum(v["id"] for _, v in self.s.items())

    def close(self) -> None:
        self.s.close()


class RedisPy:
    """redis-py + pickle, the way the glue is written: GET/SET, pipelines, SCAN + MGET."""

    def __init__(self, url: str) -> None:
        import redis

        base, prefix = url.split("?prefix=")
        self.r = redis.Redis.from_url(base)
        self.p = prefix

    def write_op(self, ks: range) -> None:
        r, p = self.r, self.p
        for i in ks:
            r.set(f"{p}k{i}", pickle.dumps(record(i), PROTO))

    def read_op(self, ks: range) -> int:
        r, p, t = self.r, self.p, 0
        for i in ks:
            t += pickle.loads(r.get(f"{p}k{i}"))["id"]
        return t

    def write_bulk(self, ks: range) -> None:
        r, p = self.r, self.p
        for start in range(ks.start, ks.stop, PAGE):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(start + PAGE, ks.stop)):
                pipe.set(f"{p}k{i}", pickle.dumps(record(i), PROTO))
            pipe.execute()

    def read_all(self) -> int:
        r, t = self.r, 0
        cursor = 0
        while True:
            cursor, keys = r.scan(cursor, match=f"{self.p}*", count=PAGE)
            if keys:
                t += sum(pickle.loads(v)["id"] for v in r.mget(keys) if v is not None)
            if cursor == 0:
                return t

    def close(self) -> None:
        self.r.close()


class RedisShelve:
    """redis-shelve 1.0.3 (a stdlib Shelf over a redis-py client): per-operation API only."""

    def __init__(self, url: str) -> None:
        import redis
        import redisshelve

        base, prefix = url.split("?prefix=")
        self.r = redis.Redis.from_url(base)
        self.s = redisshelve.open(self.r, key_prefix=prefix, protocol=PROTO)

    def write_op(self, ks: range) -> None:
        s = self.s
        for i in ks:
            s[f"k{i}"] = record(i)

    def read_op(self, ks: range) -> int:
        s, t = self.s, 0
        for i in ks:
            t += s[f"k{i}"]["id"]
        return t

    write_bulk = None  # no batch API
    read_all = None  # iteration uses KEYS and one GET per key: not a bulk read

    def close(self) -> None:
        # Shelf.close() calls self.dict.sync(), which on a redis-py client is Redis' SYNC, the
        # replication handshake: the server forks and streams a full RDB snapshot of every
        # database to this connection (and the client then fails on the unexpected payload).
        # Without writeback there is nothing to sync, so it is skipped.
        self.s.sync = lambda: None  # type: ignore[method-assign]
        self.s.close()
        self.r.close()


class Psycopg:
    """psycopg 3 + pickle: autocommit upserts and selects, executemany, a server-side cursor."""

    def __init__(self, url: str) -> None:
        import psycopg

        base, table = url.split("?table=")
        self.c = psycopg.connect(base, autocommit=True)
        self.t = table
        self.c.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (key bytea PRIMARY KEY, value bytea NOT NULL)"
        )
        self.up = (
            f"INSERT INTO {table} (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        )
        self.get = f"SELECT value FROM {table} WHERE key = %s"

    def write_op(self, ks: range) -> None:
        c, up = self.c, self.up
        for i in ks:
            c.execute(up, (f"k{i}".encode(), pickle.dumps(record(i), PROTO)), prepare=True)

    def read_op(self, ks: range) -> int:
        c, q, t = self.c, self.get, 0
        for i in ks:
            row = c.execute(q, (f"k{i}".encode(),), prepare=True).fetchone()
            t += pickle.loads(row[0])["id"]
        return t

    def write_bulk(self, ks: range) -> None:
        for start in range(ks.start, ks.stop, PAGE):
            with self.c.transaction():
                with self.c.cursor() as cur:
                    cur.executemany(
                        self.up,
                        [
                            (f"k{i}".encode(), pickle.dumps(record(i), PROTO))
                            for i in range(start, min(start + PAGE, ks.stop))
                        ],
                    )

    def read_all(self) -> int:
        t = 0
        with self.c.transaction():
            with self.c.cursor(name="all") as cur:
                cur.itersize = PAGE
                cur.execute(f"SELECT key, value FROM {self.t}")
                for _, v in cur:
                    t += pickle.loads(v)["id"]
        return t

    def close(self) -> None:
        self.c.close()


ROWS: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "cellar-redis": ("redis", "cellar.shelve on Redis", CellarShelf),
    "redis-py": ("redis", "redis-py + pickle", RedisPy),
    "redis-shelve": ("redis", "redis-shelve 1.0.3", RedisShelve),
    "cellar-pg": ("postgresql", "cellar.shelve on PostgreSQL", CellarShelf),
    "psycopg": ("postgresql", "psycopg 3 + pickle", Psycopg),
}


def namespace(server: str, row: str, n: int, procs: int) -> str:
    tag = f"bench_{row.replace('-', '_')}_{n}_{procs}_{os.getpid()}"
    if server == "redis":
        return os.environ["CELLAR_TEST_REDIS_URL"] + f"?prefix={tag}:"
    return os.environ["CELLAR_TEST_POSTGRES_URL"] + f"?table={tag}"


def worker(row: str, url: str, w: int, procs: int, n: int, phase: str, go: Any, ready: Any, out: Any) -> None:
    store = ROWS[row][2](url)
    ks = keys_of(w, procs, n)
    ready.put(w)
    go.wait()
    if phase == "write 1/op":
        store.write_op(ks)
        check = 0
    elif phase == "read 1/op":
        check = store.read_op(ks)
        assert check == sum(ks), (check, sum(ks))
    elif phase == "write bulk":
        store.write_bulk(ks)
        check = 0
    else:
        check = store.read_all()
        assert check == sum(range(n // procs * procs)), check
    store.close()
    out.put((w, check))


def run_phase(row: str, url: str, procs: int, n: int, phase: str) -> float:
    ctx = mp.get_context("fork")
    go, ready, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    ps = [ctx.Process(target=worker, args=(row, url, w, procs, n, phase, go, ready, out)) for w in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:
        ready.get(timeout=60)
    t0 = time.perf_counter()
    go.set()
    for _ in ps:
        out.get(timeout=600)
    dt = time.perf_counter() - t0
    for p in ps:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"{row} {phase}: a worker failed")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="keys per row (default 20000)")
    ap.add_argument("--procs", default="1,8")
    ap.add_argument("--only", default=",".join(ROWS))
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="repeat the rows this many times, alternating them (default 3); the table shows "
        "the median and the range",
    )
    ap.add_argument("--json", help="write the results here")
    ap.add_argument(
        "--bulk-only",
        action="store_true",
        help="only the bulk phases (for a larger --n than the per-op writes allow)",
    )
    a = ap.parse_args()
    results = []
    phases = ["write 1/op", "read 1/op", "write bulk", "read bulk"]
    if a.bulk_only:
        phases = ["write bulk", "read bulk"]
    rows = a.only.split(",")
    for procs in [int(p) for p in a.procs.split(",")]:
        for rnd in range(a.rounds):
            # Rows alternate within a round, so a change in the machine's load hits them alike.
            for row in rows if rnd % 2 == 0 else rows[::-1]:
                server, label, cls = ROWS[row]
                # One namespace per row, process count and round: written per op, rewritten in bulk.
                url = namespace(server, f"{row}_{rnd}", a.n, procs)
                cls(url).close()  # create the namespace once, before the clients race to
                for phase in phases:
                    if phase == "write bulk" and cls.write_bulk is None or phase == "read bulk" and cls.read_all is None:
                        results.append({"row": row, "label": label, "procs": procs, "phase": phase, "round": rnd, "ops_s": None})
                        continue
                    dt = run_phase(row, url, procs, a.n, phase)
                    ops = a.n * (procs if phase == "read bulk" else 1)
                    results.append(
                        {"row": row, "label": label, "procs": procs, "phase": phase, "round": rnd, "seconds": dt, "ops_s": ops / dt}
                    )
                    print(f"{label:32} {procs} proc  round {rnd}  {phase:11} {ops / dt:>10,.0f} ops/s", file=sys.stderr)
    # Markdown table: one line per (store, procs), median ops/s per phase with the range.
    print(f"| store | clients | {' | '.join(phases)} |")
    print("|---|---|" + "---|" * len(phases))
    for procs in sorted({r["procs"] for r in results}):
        for row in rows:
            cells = []
            for phase in phases:
                v = sorted(
                    x["ops_s"] for x in results if x["row"] == row and x["procs"] == procs and x["phase"] == phase and x["ops_s"]
                )
                if not v:
                    cells.append("—")
                elif len(v) == 1:
                    cells.append(f"{v[0]:,.0f}")
                else:
                    cells.append(f"{v[len(v) // 2]:,.0f} ({v[0] / 1000:,.0f}k–{v[-1] / 1000:,.0f}k)")
            print(f"| {ROWS[row][1]} | {procs} | {' | '.join(cells)} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"n": a.n, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
