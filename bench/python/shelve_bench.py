"""Issue 7's shelve benchmark: n x ``shelf[key] = {"id": i, "name": "user%d" % i, "tags": ("a",
"b"), "score": 1.5}``, then n random reads, then the file size, for cellar.shelve (default
pickle, ``safe=True``, ``codec="marshal"``; each also in ``batch()`` mode) against the stdlib's
shelve on dbm.dumb and on an emulation of CPython 3.13's dbm.sqlite3, sqlitedict, diskcache,
rocksdict, plyvel + pickle and lmdb + pickle (each in its default durability and its batch mode,
1,000 writes per batch / transaction), and an in-memory dict + pickle (the floor).

Keys are ``"user:%d" % i`` (str). Serialization is part of the timing here (it is what a shelf
does); every store that pickles uses the pickle protocol it picks by default. Writes in one
random order, reads in another (same seeds for every store); each read checks the value's
``id``, and a sample of 1,000 values is compared exactly. Each store runs in a fresh process and
a fresh temporary directory; see common.py for the method.

Usage: python bench/python/shelve_bench.py [--n 200000] [--only cellar,lmdb] [--list] [--json F]
"""

from __future__ import annotations

import os
import pickle
import random
import sys
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import DEFAULT_BATCH, SAMPLE, Store, chunks, mapping_write, mapping_write_batches  # noqa: E402


@dataclass
class Data:
    keys: list[str]
    vals: list[dict[str, Any]]
    write_order: list[int]
    read_order: list[int]
    sample: list[int]
    checksum: int


def make_data(n: int) -> Data:
    keys = ["user:%d" % i for i in range(n)]
    vals = [{"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5} for i in range(n)]
    write_order = common.permutation(n, common.SEED)
    read_order = common.permutation(n, common.SEED + 1)
    sample = random.Random(common.SEED + 2).sample(range(n), min(SAMPLE, n))
    return Data(keys, vals, write_order, read_order, sample, n * (n - 1) // 2)


def read_mapping(db: Any, data: Data) -> int:
    """``db[key]`` for every key in the read order; returns the sum of the values' ids."""
    total = 0
    keys = data.keys
    for i in data.read_order:
        total += db[keys[i]]["id"]
    return total


def check_sample(get: Any, data: Data) -> None:
    for i in data.sample:
        v = get(data.keys[i])
        if v != data.vals[i] or type(v["tags"]) is not tuple:
            raise AssertionError(f"wrong value for {data.keys[i]!r}: {v!r:.80}")


# ---------------------------------------------------------------------------------------------
# cellar.shelve


def cellar_stores() -> list[Store]:
    out = []
    variants = [
        ("pickle", "cellar.shelve (pickle)", {}, True, ()),
        ("safe", "cellar.shelve safe=True", {"safe": True}, False, ("cellar.pickle",)),
        ("marshal", 'cellar.shelve codec="marshal"', {"codec": "marshal"}, False, ()),
    ]
    for tag, label, kw, ref, extra_req in variants:

        def write(d: str, data: Data, kw: dict[str, Any] = kw) -> None:
            import cellar.shelve

            db = cellar.shelve.open(os.path.join(d, "shelf"), "c", **kw)
            mapping_write(db, data.keys, data.vals, data.write_order)
            db.close()

        def write_batch(d: str, data: Data, kw: dict[str, Any] = kw) -> None:
            import cellar.shelve

            db = cellar.shelve.open(os.path.join(d, "shelf"), "c", **kw)
            mapping_write_batches(db.batch, data.keys, data.vals, data.write_order)
            db.close()

        def read(d: str, data: Data, kw: dict[str, Any] = kw) -> int:
            import cellar.shelve

            db = cellar.shelve.open(os.path.join(d, "shelf"), "r", **kw)
            total = read_mapping(db, data)
            db.close()
            return total

        def sample(d: str, data: Data, kw: dict[str, Any] = kw) -> None:
            import cellar.shelve

            db = cellar.shelve.open(os.path.join(d, "shelf"), "r", **kw)
            check_sample(db.get, data)
            db.close()

        req = ("cellar.shelve",) + extra_req
        missing = "cellar.pickle missing" if extra_req else None
        out.append(Store(f"cellar-{tag}", label, "cellar", "default",
                         "kill -9 (reaches the OS, no fsync)", write, read, sample,
                         requires=req, reference=ref, missing=missing))
        out.append(Store(f"cellar-{tag}-batch", f"{label} `batch()`", "cellar", "batch",
                         "kill -9; each batch atomic", write_batch, read, sample,
                         requires=req, reference=ref, missing=missing))
    return out


# ---------------------------------------------------------------------------------------------
# the stdlib's shelve on dbm.dumb and on the dbm.sqlite3 emulation


def std_dumb_write(d: str, data: Data) -> None:
    import dbm.dumb
    import shelve

    db = shelve.Shelf(dbm.dumb.open(os.path.join(d, "shelf"), "c"))
    mapping_write(db, data.keys, data.vals, data.write_order)
    db.close()


def std_dumb_read(d: str, data: Data) -> int:
    import dbm.dumb
    import shelve

    db = shelve.Shelf(dbm.dumb.open(os.path.join(d, "shelf"), "r"))
    total = read_mapping(db, data)
    db.close()
    return total


def std_dumb_sample(d: str, data: Data) -> None:
    import dbm.dumb
    import shelve

    db = shelve.Shelf(dbm.dumb.open(os.path.join(d, "shelf"), "r"))
    check_sample(db.get, data)
    db.close()


def std_sq_open(d: str, flag: str) -> Any:
    import shelve

    from sqlite3_dbm import SqliteDbm

    return shelve.Shelf(SqliteDbm(os.path.join(d, "shelf.sqlite"), flag))


def std_sq_write(d: str, data: Data) -> None:
    db = std_sq_open(d, "c")
    mapping_write(db, data.keys, data.vals, data.write_order)
    db.close()


def std_sq_write_batch(d: str, data: Data) -> None:
    db = std_sq_open(d, "c")
    keys, vals = data.keys, data.vals
    for part in chunks(data.write_order, DEFAULT_BATCH):
        with db.dict.transaction():
            for i in part:
                db[keys[i]] = vals[i]
    db.close()


def std_sq_read(d: str, data: Data) -> int:
    db = std_sq_open(d, "r")
    total = read_mapping(db, data)
    db.close()
    return total


def std_sq_sample(d: str, data: Data) -> None:
    db = std_sq_open(d, "r")
    check_sample(db.get, data)
    db.close()


# ---------------------------------------------------------------------------------------------
# sqlitedict (pickles by itself)


def sd_open(d: str, flag: str) -> Any:
    from sqlitedict import SqliteDict

    return SqliteDict(os.path.join(d, "shelf.sqlite"), flag=flag)


# sqlitedict's and diskcache's runners are shared with the other benchmark (common.py).
sd_write, sd_write_batch, sd_read, sd_sample = common.sqlitedict_fns(
    sd_open, read_mapping, check_sample
)
dc_write, dc_write_batch, dc_read, dc_sample = common.diskcache_fns(read_mapping, check_sample)


# ---------------------------------------------------------------------------------------------
# rocksdict (pickles non-bytes values by itself; its default mode)


def rd_open(d: str) -> Any:
    from rocksdict import Rdict

    return Rdict(os.path.join(d, "rocks"))


def rd_write(d: str, data: Data) -> None:
    db = rd_open(d)
    mapping_write(db, data.keys, data.vals, data.write_order)
    db.close()


def rd_write_batch(d: str, data: Data) -> None:
    from rocksdict import WriteBatch

    db = rd_open(d)
    keys, vals = data.keys, data.vals
    for part in chunks(data.write_order, DEFAULT_BATCH):
        wb = WriteBatch()
        for i in part:
            wb.put(keys[i], vals[i])
        db.write(wb)
    db.close()


def rd_read(d: str, data: Data) -> int:
    db = rd_open(d)
    total = read_mapping(db, data)
    db.close()
    return total


def rd_sample(d: str, data: Data) -> None:
    db = rd_open(d)
    check_sample(db.get, data)
    db.close()


# ---------------------------------------------------------------------------------------------
# plyvel (LevelDB) + pickle


def pv_write(d: str, data: Data) -> None:
    import plyvel

    db = plyvel.DB(os.path.join(d, "level"), create_if_missing=True)
    put, dumps, keys, vals = db.put, pickle.dumps, data.keys, data.vals
    for i in data.write_order:
        put(keys[i].encode(), dumps(vals[i]))
    db.close()


def pv_write_batch(d: str, data: Data) -> None:
    import plyvel

    db = plyvel.DB(os.path.join(d, "level"), create_if_missing=True)
    dumps, keys, vals = pickle.dumps, data.keys, data.vals
    for part in chunks(data.write_order, DEFAULT_BATCH):
        with db.write_batch() as wb:
            for i in part:
                wb.put(keys[i].encode(), dumps(vals[i]))
    db.close()


def pv_read(d: str, data: Data) -> int:
    import plyvel

    db = plyvel.DB(os.path.join(d, "level"))
    get, loads, keys = db.get, pickle.loads, data.keys
    total = 0
    for i in data.read_order:
        total += loads(get(keys[i].encode()))["id"]
    db.close()
    return total


def pv_sample(d: str, data: Data) -> None:
    import plyvel

    db = plyvel.DB(os.path.join(d, "level"))
    check_sample(lambda k: pickle.loads(db.get(k.encode())), data)
    db.close()


# ---------------------------------------------------------------------------------------------
# lmdb + pickle

LMDB_MAP_SIZE = 1 << 34  # address space only; the file grows with the data


def lm_write(d: str, data: Data) -> None:
    import lmdb

    env = lmdb.open(os.path.join(d, "lmdb"), map_size=LMDB_MAP_SIZE)
    dumps, keys, vals = pickle.dumps, data.keys, data.vals
    for i in data.write_order:
        with env.begin(write=True) as txn:
            txn.put(keys[i].encode(), dumps(vals[i]))
    env.close()


def lm_write_batch(d: str, data: Data) -> None:
    import lmdb

    env = lmdb.open(os.path.join(d, "lmdb"), map_size=LMDB_MAP_SIZE)
    dumps, keys, vals = pickle.dumps, data.keys, data.vals
    for part in chunks(data.write_order, DEFAULT_BATCH):
        with env.begin(write=True) as txn:
            put = txn.put
            for i in part:
                put(keys[i].encode(), dumps(vals[i]))
    env.close()


def lm_read(d: str, data: Data) -> int:
    import lmdb

    env = lmdb.open(os.path.join(d, "lmdb"), map_size=LMDB_MAP_SIZE, readonly=True)
    loads, keys = pickle.loads, data.keys
    total = 0
    with env.begin() as txn:
        get = txn.get
        for i in data.read_order:
            total += loads(get(keys[i].encode()))["id"]
    env.close()
    return total


def lm_sample(d: str, data: Data) -> None:
    import lmdb

    env = lmdb.open(os.path.join(d, "lmdb"), map_size=LMDB_MAP_SIZE, readonly=True)
    with env.begin() as txn:
        check_sample(lambda k: pickle.loads(txn.get(k.encode())), data)
    env.close()


# ---------------------------------------------------------------------------------------------
# in-memory dict + pickle: the floor

_MEMORY: dict[str, bytes] = {}


def mem_write(d: str, data: Data) -> None:
    db = _MEMORY
    dumps, keys, vals = pickle.dumps, data.keys, data.vals
    for i in data.write_order:
        db[keys[i]] = dumps(vals[i])


def mem_read(d: str, data: Data) -> int:
    db = _MEMORY
    loads, keys = pickle.loads, data.keys
    total = 0
    for i in data.read_order:
        total += loads(db[keys[i]])["id"]
    return total


def mem_sample(d: str, data: Data) -> None:
    check_sample(lambda k: pickle.loads(_MEMORY[k]), data)


FSYNC = "power loss (fsync per write)"
OS = "kill -9 (reaches the OS, no fsync)"

STORES: list[Store] = cellar_stores() + [
    Store("stdlib-dumb", "stdlib shelve + dbm.dumb", "stdlib", "default",
          "value: OS; index of overwrites only on close", std_dumb_write, std_dumb_read,
          std_dumb_sample),
    Store("stdlib-sqlite3-emu", "stdlib shelve + dbm.sqlite3 (3.13 emulation)", "stdlib",
          "default", FSYNC + ", WAL", std_sq_write, std_sq_read, std_sq_sample),
    Store("stdlib-sqlite3-emu-batch", "stdlib shelve + dbm.sqlite3 emulation, 1000/txn",
          "stdlib", "batch", "each txn: power loss (fsync)", std_sq_write_batch, std_sq_read,
          std_sq_sample),
    Store("sqlitedict", "sqlitedict", "sqlitedict", "default",
          "nothing until commit() (autocommit=False); one at the end", sd_write, sd_read,
          sd_sample, requires=("sqlitedict",)),
    Store("sqlitedict-batch", "sqlitedict commit() per 1000", "sqlitedict", "batch",
          "each commit: power loss (fsync)", sd_write_batch, sd_read, sd_sample,
          requires=("sqlitedict",)),
    Store("diskcache", "diskcache", "diskcache", "default", "kill -9 (WAL, synchronous=NORMAL)",
          dc_write, dc_read, dc_sample, requires=("diskcache",)),
    Store("diskcache-batch", "diskcache transact() per 1000", "diskcache", "batch",
          "kill -9; each txn atomic", dc_write_batch, dc_read, dc_sample,
          requires=("diskcache",)),
    Store("rocksdict", "rocksdict (RocksDB, its pickling)", "rocksdict", "default", OS + ", WAL",
          rd_write, rd_read, rd_sample, requires=("rocksdict",)),
    Store("rocksdict-batch", "rocksdict WriteBatch per 1000", "rocksdict", "batch",
          "kill -9; each batch atomic", rd_write_batch, rd_read, rd_sample,
          requires=("rocksdict",)),
    Store("plyvel", "plyvel (LevelDB) + pickle", "plyvel", "default", OS + ", log", pv_write,
          pv_read, pv_sample, requires=("plyvel",)),
    Store("plyvel-batch", "plyvel + pickle, write_batch per 1000", "plyvel", "batch",
          "kill -9; each batch atomic", pv_write_batch, pv_read, pv_sample,
          requires=("plyvel",)),
    Store("lmdb", "lmdb + pickle (txn per write)", "lmdb", "default", FSYNC, lm_write, lm_read,
          lm_sample, requires=("lmdb",)),
    Store("lmdb-batch", "lmdb + pickle, 1000 puts per txn", "lmdb", "batch",
          "each txn: power loss (fsync)", lm_write_batch, lm_read, lm_sample,
          requires=("lmdb",)),
    Store("dict", "dict + pickle, in memory (floor)", "stdlib", "default", "none (memory)",
          mem_write, mem_read, mem_sample, on_disk=False),
]


if __name__ == "__main__":
    common.main(
        "shelve: n x shelf[key] = small dict, n random reads, file size",
        STORES,
        make_data,
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "shelve.json"),
        os.path.abspath(__file__),
    )
