"""File size on issue 14's workload, with a breakdown of what a cellar file holds.

    python bench/python/size_bench.py [--n N] [--peers]

Writes N (default 100,000) pickled small dicts under keys ``key%d`` in a shuffled order
through cellar.dbm, once with per-op sets and once in ``db.batch()`` blocks of 1,000, closes
the store, prints its size and a breakdown by record kind (docs/engine-format.md sections 2,
3 and 10: superblock, compact-section blocks, dictionary copies, block index, log-tier PUT
and DELETE records, INDEX checkpoints, and anything else). With ``--peers``, also the sizes
of rocksdict (RocksDB) and plyvel (LevelDB) for the same data (plain puts and write batches
of 1,000), when they are installed.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

KINDS = {1: "log PUT", 2: "log DELETE", 3: "INDEX (checkpoint)", 4: "DICT", 5: "SUPERSEDED",
         6: "BLOCK (zstd)", 7: "BLOCKINDEX (separators + filter)"}
LOG_START = 4096


def varint(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        byte = b[i]
        v |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return v, i
        shift += 7


def breakdown(path: str) -> Counter[str]:
    """Bytes of the file per record kind (a record's framing counts with its kind)."""
    with open(path, "rb") as f:
        data = f.read()
    out: Counter[str] = Counter()
    out["superblock (header, 2 slots)"] = min(len(data), LOG_START)
    i = LOG_START
    while i + 6 <= len(data):
        kind = data[i + 4]
        if kind == 0:
            out["zero padding"] += len(data) - i
            return out
        klen, j = varint(data, i + 6)
        vlen, j = varint(data, j)
        end = j + klen + vlen
        out[KINDS.get(kind, f"kind {kind}")] += end - i
        i = end
    if i < len(data):
        out["unparsed tail"] += len(data) - i
    return out


def small_dict(i: int) -> dict[str, Any]:
    return {"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5}


def dir_size(d: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--peers", action="store_true")
    args = ap.parse_args()
    import cellar.dbm

    n = args.n
    keys = [b"key%d" % i for i in range(n)]
    vals = [pickle.dumps(small_dict(i), 4) for i in range(n)]
    order = common.permutation(n, common.SEED)
    rows: list[tuple[str, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("per-op", "batch"):
            d = os.path.join(tmp, "cellar-" + mode)
            os.mkdir(d)
            path = os.path.join(d, "db.cellar")
            db = cellar.dbm.open(path, "n")
            if mode == "per-op":
                for i in order:
                    db[keys[i]] = vals[i]
            else:
                for part in common.chunks(order, 1000):
                    with db.batch() as b:
                        for i in part:
                            b[keys[i]] = vals[i]
            db.close()
            size = dir_size(d)
            rows.append((f"cellar.dbm {mode}", size))
            print(f"## cellar.dbm, {mode}: {size / 1e6:.3f} MB ({size / n:.1f} bytes/record)")
            for what, b in sorted(breakdown(path).items(), key=lambda kv: -kv[1]):
                print(f"  {what:36} {b:>10,} bytes  {b / size:6.1%}")
            with cellar.dbm.open(path, "r") as db:
                for i in range(0, n, max(1, n // 1000)):
                    if db[keys[i]] != vals[i]:
                        raise AssertionError(f"wrong value for {keys[i]!r}")
        if args.peers:
            peers = []
            try:
                import rocksdict

                def rd(path: str, batch: bool) -> None:
                    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
                    if batch:
                        for part in common.chunks(order, 1000):
                            wb = rocksdict.WriteBatch(raw_mode=True)
                            for i in part:
                                wb.put(keys[i], vals[i])
                            db.write(wb)
                    else:
                        for i in order:
                            db[keys[i]] = vals[i]
                    db.close()

                peers.append(("rocksdict", rd))
            except ImportError as e:
                print(f"rocksdict unavailable: {e}")
            try:
                import plyvel

                def pv(path: str, batch: bool) -> None:
                    db = plyvel.DB(path, create_if_missing=True)
                    if batch:
                        for part in common.chunks(order, 1000):
                            with db.write_batch() as wb:
                                for i in part:
                                    wb.put(keys[i], vals[i])
                    else:
                        for i in order:
                            db.put(keys[i], vals[i])
                    db.close()

                peers.append(("plyvel", pv))
            except ImportError as e:
                print(f"plyvel unavailable: {e}")
            for name, fn in peers:
                for batch in (False, True):
                    d = os.path.join(tmp, f"{name}-{batch}")
                    fn(d, batch)
                    rows.append((f"{name} {'batch' if batch else 'per-op'}", dir_size(d)))
    print()
    print("| store | size (MB) | bytes/record |")
    print("|---|---:|---:|")
    for name, size in rows:
        print(f"| {name} | {size / 1e6:.3f} | {size / n:.1f} |")


if __name__ == "__main__":
    main()
