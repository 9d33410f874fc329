"""Issue 4's dbm benchmark: n x ``db[key] = pickle.dumps(small_dict)``, then n random reads, then
the file size, for cellar.dbm (native, and its sqlite3 and dumb backends) against the stdlib's
dbm.dumb, an emulation of CPython 3.13's dbm.sqlite3, sqlitedict, diskcache, rocksdict, plyvel
(LevelDB) and lmdb, each in its default durability and, where it has one, its batch mode
(1,000 writes per batch / transaction).

Keys are ``b"key%d" % i``, values ``pickle.dumps({"id": i, "name": "user%d" % i, "tags":
("a", "b"), "score": 1.5})`` (protocol 4, made before the timing: the store is measured, not
pickle). Writes in one random order, reads in another (same seeds for every store). Each store
runs in a fresh process and a fresh temporary directory; see common.py for the method.

Usage: python bench/python/dbm_bench.py [--n 200000] [--only cellar,lmdb] [--list] [--json F]
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

PROTOCOL = 4


@dataclass
class Data:
    keys: list[bytes]
    vals: list[bytes]
    write_order: list[int]
    read_order: list[int]
    sample: list[int]
    checksum: int


def small_dict(i: int) -> dict[str, Any]:
    return {"id": i, "name": "user%d" % i, "tags": ("a", "b"), "score": 1.5}


def make_data(n: int) -> Data:
    keys = [b"key%d" % i for i in range(n)]
    vals = [pickle.dumps(small_dict(i), PROTOCOL) for i in range(n)]
    write_order = common.permutation(n, common.SEED)
    read_order = common.permutation(n, common.SEED + 1)
    sample = random.Random(common.SEED + 2).sample(range(n), min(SAMPLE, n))
    return Data(keys, vals, write_order, read_order, sample, sum(len(v) for v in vals))


def read_mapping(db: Any, data: Data) -> int:
    """Reads every key in the read order through ``db[key]``; returns the sum of the lengths."""
    total = 0
    keys = data.keys
    for i in data.read_order:
        total += len(db[keys[i]])
    return total


def check_sample(get: Any, data: Data) -> None:
    for i in data.sample:
        v = get(data.keys[i])
        if v is None or bytes(v) != data.vals[i]:
            raise AssertionError(f"wrong value for {data.keys[i]!r}: {v!r:.80}")


# ---------------------------------------------------------------------------------------------
# cellar.dbm (native, sqlite3, dumb backends)


def cellar_stores() -> list[Store]:
    out = []
    for backend, fname, label, dur in [
        ("native", "db.cellar", "cellar.dbm native", "kill -9 (reaches the OS, no fsync)"),
        ("sqlite3", "db.sqlite", "cellar.dbm sqlite3", "kill -9 (WAL, synchronous=NORMAL)"),
        ("dumb", "db", "cellar.dbm dumb", "kill -9 (value + index line appended)"),
    ]:

        def opener(backend: str = backend) -> Any:
            import importlib

            return importlib.import_module(f"cellar.dbm.{backend}").open

        def write(d: str, data: Data, fname: str = fname, opener: Any = opener) -> None:
            db = opener()(os.path.join(d, fname), "c")
            mapping_write(db, data.keys, data.vals, data.write_order)
            db.close()

        def write_batch(d: str, data: Data, fname: str = fname, opener: Any = opener) -> None:
            db = opener()(os.path.join(d, fname), "c")
            mapping_write_batches(db.batch, data.keys, data.vals, data.write_order)
            db.close()

        def write_batch_db(d: str, data: Data, fname: str = fname, opener: Any = opener) -> None:
            # The other form of the same block: `db[k] = v` inside `with db.batch():`.
            db = opener()(os.path.join(d, fname), "c")
            mapping_write_batches(db.batch, data.keys, data.vals, data.write_order,
                                  target=db)
            db.close()

        def read(d: str, data: Data, fname: str = fname, opener: Any = opener) -> int:
            db = opener()(os.path.join(d, fname), "r")
            total = read_mapping(db, data)
            db.close()
            return total

        def sample(d: str, data: Data, fname: str = fname, opener: Any = opener) -> None:
            db = opener()(os.path.join(d, fname), "r")
            check_sample(db.get, data)
            db.close()

        ref = backend == "native"
        out.append(
            Store(f"cellar-{backend}", label, "cellar", "default", dur, write, read, sample,
                  requires=("cellar.dbm",), reference=ref)
        )
        out.append(
            Store(f"cellar-{backend}-batch", f"{label} `batch()`", "cellar", "batch",
                  "kill -9; each batch atomic", write_batch, read, sample,
                  requires=("cellar.dbm",), reference=ref)
        )
        if backend == "native":
            out.append(
                Store(f"cellar-{backend}-batch-db", f"{label} `db[k] = v` in `batch()`",
                      "cellar", "batch", "kill -9; each batch atomic", write_batch_db, read,
                      sample, requires=("cellar.dbm",))
            )
    return out


# ---------------------------------------------------------------------------------------------
# stdlib dbm.dumb and the dbm.sqlite3 emulation


def std_dumb_write(d: str, data: Data) -> None:
    import dbm.dumb

    db = dbm.dumb.open(os.path.join(d, "db"), "c")
    mapping_write(db, data.keys, data.vals, data.write_order)
    db.close()


def std_dumb_read(d: str, data: Data) -> int:
    import dbm.dumb

    db = dbm.dumb.open(os.path.join(d, "db"), "r")
    total = read_mapping(db, data)
    db.close()
    return total


def std_dumb_sample(d: str, data: Data) -> None:
    import dbm.dumb

    db = dbm.dumb.open(os.path.join(d, "db"), "r")
    check_sample(db.get, data)
    db.close()


def sq_write(d: str, data: Data) -> None:
    from sqlite3_dbm import SqliteDbm

    db = SqliteDbm(os.path.join(d, "db.sqlite"), "c")
    mapping_write(db, data.keys, data.vals, data.write_order)
    db.close()


def sq_write_batch(d: str, data: Data) -> None:
    from sqlite3_dbm import SqliteDbm

    db = SqliteDbm(os.path.join(d, "db.sqlite"), "c")
    mapping_write_batches(db.transaction, data.keys, data.vals, data.write_order)
    db.close()


def sq_read(d: str, data: Data) -> int:
    from sqlite3_dbm import SqliteDbm

    db = SqliteDbm(os.path.join(d, "db.sqlite"), "r")
    total = read_mapping(db, data)
    db.close()
    return total


def sq_sample(d: str, data: Data) -> None:
    from sqlite3_dbm import SqliteDbm

    db = SqliteDbm(os.path.join(d, "db.sqlite"), "r")
    check_sample(db.get, data)
    db.close()


# ---------------------------------------------------------------------------------------------
# sqlitedict (raw bytes: encode/decode are the identity, as a dbm stores bytes)


def _identity(x: Any) -> Any:
    return x


def sd_open(d: str, flag: str) -> Any:
    from sqlitedict import SqliteDict

    return SqliteDict(os.path.join(d, "db.sqlite"), flag=flag, encode=_identity,
                      decode=_identity)


# sqlitedict's and diskcache's runners are shared with the other benchmark (common.py).
sd_write, sd_write_batch, sd_read, sd_sample = common.sqlitedict_fns(
    sd_open, read_mapping, check_sample
)
dc_write, dc_write_batch, dc_read, dc_sample = common.diskcache_fns(read_mapping, check_sample)


# ---------------------------------------------------------------------------------------------
# rocksdict (RocksDB), raw mode: bytes keys and values as they are


def rd_open(d: str) -> Any:
    from rocksdict import Options, Rdict

    return Rdict(os.path.join(d, "rocks"), Options(raw_mode=True))


def rd_write(d: str, data: Data) -> None:
    db = rd_open(d)
    mapping_write(db, data.keys, data.vals, data.write_order)
    db.close()


def rd_write_batch(d: str, data: Data) -> None:
    from rocksdict import WriteBatch

    db = rd_open(d)
    keys, vals = data.keys, data.vals
    for part in chunks(data.write_order, DEFAULT_BATCH):
        wb = WriteBatch(raw_mode=True)
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
# plyvel (LevelDB)


def pv_write(d: str, data: Data) -> None:
    import plyvel

    db = plyvel.DB(os.path.join(d, "level"), create_if_missing=True)
    put, keys, vals = db.put, data.keys, data.vals
    for i in data.write_order:
        put(keys[i], vals[i])
    db.close()


def pv_write_batch(d: str, data: Data) -> None:
    import plyvel

    db = plyvel.DB(os.path.join(d, "level"), create_if_missing=True)
    keys, vals = data.keys, data.vals
    for part in chunks(data.write_order, DEFAULT_BATCH):
        with db.write_batch() as wb:
            for i in part:
                wb.put(keys[i], vals[i])
    db.close()


def pv_read(d: str, data: Data) -> int:
    import plyvel

    db = plyvel.DB(os.path.join(d, "level"))
    get, keys = db.get, data.keys
    total = 0
    for i in data.read_order:
        total += len(get(keys[i]))
    db.close()
    return total


def pv_sample(d: str, data: Data) -> None:
    import plyvel

    db = plyvel.DB(os.path.join(d, "level"))
    check_sample(db.get, data)
    db.close()


# ---------------------------------------------------------------------------------------------
# lmdb

LMDB_MAP_SIZE = 1 << 34  # address space only; the file grows with the data


def lm_write(d: str, data: Data) -> None:
    import lmdb

    env = lmdb.open(os.path.join(d, "lmdb"), map_size=LMDB_MAP_SIZE)
    keys, vals = data.keys, data.vals
    for i in data.write_order:
        with env.begin(write=True) as txn:
            txn.put(keys[i], vals[i])
    env.close()


def lm_write_batch(d: str, data: Data) -> None:
    import lmdb

    env = lmdb.open(os.path.join(d, "lmdb"), map_size=LMDB_MAP_SIZE)
    keys, vals = data.keys, data.vals
    for part in chunks(data.write_order, DEFAULT_BATCH):
        with env.begin(write=True) as txn:
            put = txn.put
            for i in part:
                put(keys[i], vals[i])
    env.close()


def lm_read(d: str, data: Data) -> int:
    import lmdb

    env = lmdb.open(os.path.join(d, "lmdb"), map_size=LMDB_MAP_SIZE, readonly=True)
    total = 0
    keys = data.keys
    with env.begin() as txn:
        get = txn.get
        for i in data.read_order:
            total += len(get(keys[i]))
    env.close()
    return total


def lm_sample(d: str, data: Data) -> None:
    import lmdb

    env = lmdb.open(os.path.join(d, "lmdb"), map_size=LMDB_MAP_SIZE, readonly=True)
    with env.begin() as txn:
        check_sample(txn.get, data)
    env.close()


FSYNC = "power loss (fsync per write)"
OS = "kill -9 (reaches the OS, no fsync)"
COMMIT = "nothing until commit; each batch committed (fsync)"

STORES: list[Store] = cellar_stores() + [
    Store("stdlib-dumb", "stdlib dbm.dumb", "stdlib", "default",
          "value: OS; index of overwrites only on close", std_dumb_write, std_dumb_read,
          std_dumb_sample),
    Store("dbm-sqlite3-emu", "dbm.sqlite3 (3.13 emulation)", "stdlib", "default",
          FSYNC + ", WAL", sq_write, sq_read, sq_sample),
    Store("dbm-sqlite3-emu-batch", "dbm.sqlite3 (3.13 emulation), 1000/txn", "stdlib", "batch",
          "each txn: power loss (fsync)", sq_write_batch, sq_read, sq_sample),
    Store("sqlitedict", "sqlitedict", "sqlitedict", "default",
          "nothing until commit() (autocommit=False); one at the end", sd_write, sd_read, sd_sample,
          requires=("sqlitedict",)),
    Store("sqlitedict-batch", "sqlitedict commit() per 1000", "sqlitedict", "batch", COMMIT,
          sd_write_batch, sd_read, sd_sample, requires=("sqlitedict",)),
    Store("diskcache", "diskcache", "diskcache", "default",
          "kill -9 (WAL, synchronous=NORMAL)", dc_write, dc_read, dc_sample,
          requires=("diskcache",)),
    Store("diskcache-batch", "diskcache transact() per 1000", "diskcache", "batch",
          "kill -9; each txn atomic", dc_write_batch, dc_read, dc_sample,
          requires=("diskcache",)),
    Store("rocksdict", "rocksdict (RocksDB, raw mode)", "rocksdict", "default",
          OS + ", WAL", rd_write, rd_read, rd_sample, requires=("rocksdict",)),
    Store("rocksdict-batch", "rocksdict WriteBatch per 1000", "rocksdict", "batch",
          "kill -9; each batch atomic", rd_write_batch, rd_read, rd_sample,
          requires=("rocksdict",)),
    Store("plyvel", "plyvel (LevelDB)", "plyvel", "default", OS + ", log", pv_write, pv_read,
          pv_sample, requires=("plyvel",)),
    Store("plyvel-batch", "plyvel write_batch per 1000", "plyvel", "batch",
          "kill -9; each batch atomic", pv_write_batch, pv_read, pv_sample,
          requires=("plyvel",)),
    Store("lmdb", "lmdb (txn per write)", "lmdb", "default", FSYNC, lm_write, lm_read, lm_sample,
          requires=("lmdb",)),
    Store("lmdb-batch", "lmdb 1000 puts per txn", "lmdb", "batch",
          "each txn: power loss (fsync)", lm_write_batch, lm_read, lm_sample,
          requires=("lmdb",)),
]


if __name__ == "__main__":
    common.main(
        "dbm: n x db[key] = pickle.dumps(small_dict), n random reads, file size",
        STORES,
        make_data,
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "dbm.json"),
        os.path.abspath(__file__),
    )
