"""cellar.dbm: the stdlib dbm API, file interop with the stdlib's dbm.dumb and with plain sqlite3,
errors, and use from several threads."""

from __future__ import annotations

import dbm as std_dbm
import dbm.dumb as std_dumb
import os
import pickle
import sqlite3 as std_sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import cellar.dbm as cdbm
import cellar.dbm.dumb
import cellar.dbm.native
import cellar.dbm.sqlite3
import cellar.shelve

BACKENDS = [cellar.dbm.native, cellar.dbm.sqlite3, cellar.dbm.dumb]

# Awkward keys and values: quotes, backslashes, newlines, non-ASCII (UTF-8 and bare Latin-1
# bytes), NUL, the empty string.
AWKWARD = [
    b"",
    b"'",
    b'"',
    b"'\"",
    b"a\nb",
    b"\r\n",
    b"\\",
    b"\\x00",
    b"\x00",
    "ü€𝄞".encode(),
    b"\xff\xfe\x80",
    bytes(range(256)),
    b"x" * 5000,
]


def test_module_surface() -> None:
    assert cdbm.error[0] is cdbm._error and cdbm.error[1] is OSError
    assert issubclass(cdbm.error[0], OSError)
    assert cdbm._names == ["cellar.dbm.native", "cellar.dbm.sqlite3", "cellar.dbm.dumb"]
    assert cdbm._defaultmod is cellar.dbm.native
    for mod in BACKENDS:
        assert issubclass(mod.error, OSError)
        assert callable(mod.open)
    assert cellar.dbm.dumb.error is OSError
    assert sys.modules["cellar"].dbm is cdbm


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_mapping_api(tmp_path: Path, mod: object) -> None:
    path = tmp_path / "db"
    with mod.open(path, "c") as db:  # type: ignore[attr-defined]
        assert db.keys() == [] and len(db) == 0
        db[b"a"] = b"1"
        db["ü"] = "é"  # str is UTF-8
        db[bytearray(b"ba")] = memoryview(b"mv")
        assert db[b"a"] == b"1" and db["ü".encode()] == "é".encode() and db["ba"] == b"mv"
        assert b"a" in db and "a" in db and b"zz" not in db
        assert len(db) == 3
        assert sorted(db.keys()) == sorted([b"a", "ü".encode(), b"ba"])
        assert sorted(db) == sorted(db.keys())
        # items() and values() share one order (keys() may list sqlite3 keys in another)
        assert sorted(db.items()) == sorted((k, db[k]) for k in db.keys())
        assert [v for _, v in db.items()] == db.values()
        assert db.get(b"a") == b"1" and db.get(b"zz") is None and db.get(b"zz", 5) == 5
        assert db.setdefault(b"a", b"x") == b"1"
        assert db.setdefault(b"new") == b"" and db[b"new"] == b""
        assert db.setdefault(b"new2", b"v") == b"v" and db[b"new2"] == b"v"
        with pytest.raises(KeyError) as ki:
            db[b"missing"]
        assert ki.value.args == (b"missing",)
        del db[b"new"]
        with pytest.raises(KeyError):
            del db[b"new"]
        if mod is cellar.dbm.sqlite3:
            # CPython 3.13's dbm.sqlite3: SQLite's CAST(? AS BLOB) of ints and floats; NULL
            # refused by the table with dbm.sqlite3.error.
            db[1] = 2.5  # type: ignore[index]
            assert db[b"1"] == b"2.5" and db[1] == b"2.5" and 1 in db  # type: ignore[index]
            del db[1]  # type: ignore[arg-type]
            with pytest.raises(mod.error):  # type: ignore[attr-defined]
                db[b"k"] = None  # type: ignore[assignment]
            with pytest.raises(mod.error):  # type: ignore[attr-defined]
                db[None] = b"k"  # type: ignore[index]
            assert None not in db and db.get(None) is None  # type: ignore[operator]
        else:
            with pytest.raises(TypeError):
                db[1] = b"x"  # type: ignore[index]
            with pytest.raises(TypeError):
                db[b"k"] = None  # type: ignore[assignment]
        db.sync()
        st = db.stats()
        assert st["backend"] == mod._whichdb_name and st["keys"] == len(db)  # type: ignore[attr-defined]
        assert db.backend == mod._whichdb_name  # type: ignore[attr-defined]
    assert cdbm.whichdb(path) == mod._whichdb_name  # type: ignore[attr-defined]
    assert cdbm.whichdb(os.fsencode(path)) == mod._whichdb_name  # type: ignore[attr-defined]
    with cdbm.open(str(path), "r") as db:
        assert db[b"a"] == b"1"
        with pytest.raises(cdbm.error, match="reading only"):
            db[b"a"] = b"2"
        with pytest.raises(cdbm.error, match="reading only"):
            del db[b"a"]


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_batch_compact(tmp_path: Path, mod: object) -> None:
    path = tmp_path / "db"
    with mod.open(path, "n") as db:  # type: ignore[attr-defined]
        db[b"gone"] = b"x"
        with db.batch() as b:
            for i in range(100):
                b[b"k%d" % i] = b"v%d" % i
            del b[b"gone"]
            assert len(b) == 101
            assert b"k1" not in db  # nothing applied before the block ends
        assert len(db) == 100 and db[b"k7"] == b"v7" and b"gone" not in db
        with pytest.raises(RuntimeError):
            with db.batch() as b:
                b[b"never"] = b"x"
                raise RuntimeError
        assert b"never" not in db
        for i in range(50):
            del db[b"k%d" % i]
        db.compact()
        db.reorganize()
        assert sorted(db.keys()) == sorted(b"k%d" % i for i in range(50, 100))
    with cdbm.open(path) as db:
        assert len(db) == 50


def test_default_is_native(tmp_path: Path) -> None:
    path = tmp_path / "db"
    cdbm.open(path, "c").close()
    assert cdbm.whichdb(path) == "dbm.native"
    with cdbm.open(path, "cf") as db:  # gnu's modifiers on the native backend
        db[b"k"] = b"v"
    with pytest.raises(ValueError, match="Flag must be one of 'r', 'w', 'c', or 'n'"):
        cellar.dbm.dumb.open(tmp_path / "d", "cf")
    with pytest.raises(ValueError, match="Flag must be one of"):
        cellar.dbm.sqlite3.open(tmp_path / "s", "cf")


@pytest.mark.parametrize("key", AWKWARD, ids=range(len(AWKWARD)))
def test_dumb_interop_both_ways(tmp_path: Path, key: bytes) -> None:
    value = key[::-1] + b"\n'\""
    # stdlib writes, cellar reads (through open's detection and directly)
    p1 = str(tmp_path / "std")
    with std_dumb.open(p1, "c") as d:
        d[key] = value
        d[b"other"] = b""
    assert cdbm.whichdb(p1) == "dbm.dumb"
    with cdbm.open(p1, "r") as d:
        assert d[key] == value and d[b"other"] == b""
        assert sorted(d.keys()) == sorted({key, b"other"})
    # cellar writes, stdlib reads
    p2 = str(tmp_path / "cel")
    with cellar.dbm.dumb.open(p2, "c") as d:
        d[key] = value
        d[b"other"] = b""
        d[key] = value + b"!"  # an overwrite
    assert std_dbm.whichdb(p2) == "dbm.dumb"
    with std_dumb.open(p2, "r") as d:
        assert d[key] == value + b"!" and d[b"other"] == b""
        assert sorted(d.keys()) == sorted({key, b"other"})
    # cellar modifies a store the stdlib wrote, the stdlib reads it back
    with cellar.dbm.dumb.open(p1, "w") as d:
        del d[b"other"]
        d[b"added"] = key
    with std_dumb.open(p1, "r") as d:
        assert dict(d.items()) == {key: value, b"added": key}


def test_dumb_interop_many(tmp_path: Path) -> None:
    data = {k + b"#%d" % i: v for i, k in enumerate(AWKWARD) for v in [AWKWARD[-1 - i]]}
    p = str(tmp_path / "db")
    with cellar.dbm.dumb.open(p, "n") as d:
        for k, v in data.items():
            d[k] = v
    with std_dumb.open(p, "r") as d:
        assert dict(d.items()) == data
    with std_dumb.open(p, "w") as d:
        d["ü"] = "str value"
    with cdbm.open(p) as d:
        assert d["ü"] == b"str value" and len(d) == len(data) + 1


def test_sqlite3_plain_reader_both_ways(tmp_path: Path) -> None:
    p = tmp_path / "db.sqlite"
    with cellar.dbm.sqlite3.open(p, "c") as d:
        for k in AWKWARD:
            d[k] = k + b"v"
    assert cdbm.whichdb(p) == "dbm.sqlite3"
    con = std_sqlite3.connect(p)
    try:
        rows = dict(con.execute("SELECT key, value FROM Dict").fetchall())
        schema = con.execute("SELECT sql FROM sqlite_master WHERE name = 'Dict'").fetchone()[0]
    finally:
        con.close()
    assert rows == {k: k + b"v" for k in AWKWARD}
    assert "key BLOB UNIQUE NOT NULL" in schema and "value BLOB NOT NULL" in schema
    # the reverse: a store made by plain sqlite3 as CPython 3.13's dbm.sqlite3 makes it
    q = tmp_path / "other.sqlite"
    con = std_sqlite3.connect(q)
    con.execute("PRAGMA journal_mode = wal")
    con.execute("CREATE TABLE Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
    for k in AWKWARD:
        con.execute("REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))", (k, k))
    con.commit()
    con.close()
    with cdbm.open(q, "w") as d:
        assert dict(d.items()) == {k: k for k in AWKWARD}
        d[b"more"] = b"1"
    con = std_sqlite3.connect(q)
    assert con.execute("SELECT value FROM Dict WHERE key = CAST(? AS BLOB)", (b"more",)).fetchone() == (b"1",)
    con.close()


def test_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(cdbm.error[0], match="db file doesn't exist; use 'c' or 'n' flag"):
        cdbm.open(missing, "r")
    with pytest.raises(cdbm.error):
        cdbm.open(missing, "w")
    assert list(tmp_path.iterdir()) == []  # nothing created
    for mod in BACKENDS:
        with pytest.raises(FileNotFoundError):
            mod.open(missing, "r")
    assert list(tmp_path.iterdir()) == []
    # a directory
    d = tmp_path / "dir"
    d.mkdir()
    assert cdbm.whichdb(d) is None
    with pytest.raises(cdbm.error):
        cdbm.open(d, "r")
    with pytest.raises(cdbm.error):
        cdbm.open(d, "c")
    with pytest.raises(OSError):
        cellar.dbm.sqlite3.open(d, "c")
    # random bytes
    r = tmp_path / "random"
    r.write_bytes(os.urandom(4096))
    with pytest.raises(cdbm.error[0], match="db type could not be determined"):
        cdbm.open(r, "r")
    with pytest.raises(cdbm.error):
        cellar.dbm.native.open(r, "w")
    with pytest.raises(cdbm.error):
        cellar.dbm.sqlite3.open(r, "w")
    assert r.stat().st_size == 4096
    # a dbm.gnu file
    g = tmp_path / "gnu"
    g.write_bytes((0x13579ACE).to_bytes(4, sys.byteorder) + b"\0" * 60)
    # (cellar reads dbm.gnu files read-only: a bare header is a damaged one, and any writing
    # flag is refused naming the migration path: see test_cellar_legacy.py)
    with pytest.raises(cdbm.error[0], match="damaged GDBM file"):
        cdbm.open(g, "r")
    with pytest.raises(cdbm.error[0], match="read-only in cellar.*cellar convert"):
        cdbm.open(g, "c")
    # a corrupt dumb index: a dbm error that is also the ValueError CPython raises
    p = str(tmp_path / "bad")
    with cellar.dbm.dumb.open(p, "c") as db:
        db[b"a"] = b"1"
    Path(p + ".dir").write_text("str(print('Hacked!')), 0\n")
    assert cdbm.whichdb(p) is None  # CPython's rule: a .dir not starting with a quote
    with pytest.raises(ValueError) as ei:
        cellar.dbm.dumb.open(p, "r")
    assert isinstance(ei.value, cdbm.error[0])


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_closed(tmp_path: Path, mod: object) -> None:
    db = mod.open(tmp_path / "db", "c")  # type: ignore[attr-defined]
    db[b"a"] = b"b"
    db.close()
    db.close()
    calls = [
        lambda: db[b"a"],
        lambda: db.__setitem__(b"a", b"c"),
        lambda: db.__delitem__(b"a"),
        lambda: b"a" in db,
        lambda: len(db),
        lambda: db.keys(),
        lambda: db.items(),
        lambda: db.get(b"a"),
        lambda: list(db),
    ]
    for call in calls:
        with pytest.raises(cdbm.error[0]) as ei:
            call()
        assert str(ei.value) == "DBM object has already been closed"


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_threads(tmp_path: Path, mod: object) -> None:
    db = mod.open(tmp_path / "db", "c")  # type: ignore[attr-defined]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(300):
                k = b"%d-%d" % (t, i)
                db[k] = k * 3
                assert db[k] == k * 3
                if i % 3 == 0:
                    del db[k]
                len(db)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(db) == 4 * 200
    db.close()
    with cdbm.open(tmp_path / "db") as db:
        assert len(db) == 800 and db[b"2-1"] == b"2-1" * 3


def test_mode_and_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        for mod in BACKENDS:
            p = tmp_path / mod._whichdb_name
            mod.open(p, "c", 0o637).close()
            f = p if mod is not cellar.dbm.dumb else Path(str(p) + ".dat")
            assert f.stat().st_mode & 0o777 == 0o635, mod
    finally:
        os.umask(old)


def test_stdlib_dbm_reads_cellar_dumb_in_subprocess(tmp_path: Path) -> None:
    """The machine's python3 (a different process, the plain stdlib) opens a cellar dumb store."""
    p = str(tmp_path / "db")
    with cellar.dbm.dumb.open(p, "n") as d:
        d[b"q'\"\n"] = "ü"
    code = "import dbm,sys; d=dbm.open(sys.argv[1]); print(d[b'q\\'\"\\n'].decode()); d.close()"
    out = subprocess.run([sys.executable, "-c", code, p], capture_output=True, check=True)
    assert out.stdout.decode().strip() == "ü"


def test_import_does_not_load_sqlite3():
    # `import cellar.dbm` must stay cheap: the sqlite3 backend imports the interpreter's sqlite3
    # module only when a sqlite3 store is opened.
    import subprocess
    import sys

    code = (
        "import sys, cellar.dbm, cellar.shelve\n"
        "assert 'sqlite3' not in sys.modules, sorted(m for m in sys.modules if 'sqlite' in m)\n"
        "import tempfile, os\n"
        "d = tempfile.mkdtemp()\n"
        "db = cellar.dbm.sqlite3.open(os.path.join(d, 's'), 'c'); db[b'k'] = b'v'; db.close()\n"
        "assert 'sqlite3' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cache_bytes_sets_the_block_cache_of_a_compact_store(tmp_path: Path) -> None:
    # New native stores are compact-form: once compacted, reads go through the block cache
    # whose budget cache_bytes= sets (stats() shows it with its hits and misses).
    p = tmp_path / "c.db"
    with cellar.dbm.open(p, "c") as db:
        with db.batch():
            for i in range(5000):
                db[b"key%d" % i] = pickle.dumps({"id": i, "name": "user%d" % i}, 4)
        db.compact()
    with cellar.dbm.open(p, "r", cache_bytes=1 << 20) as db:
        assert db.stats()["block_cache_capacity"] == 1 << 20
        assert pickle.loads(db[b"key42"]) == {"id": 42, "name": "user42"}
        assert sum(1 for _ in db.keys()) == 5000
        st = db.stats()
        assert st["block_cache_misses"] > 0
    with cellar.dbm.open(p, "r") as db:
        assert db.stats()["block_cache_capacity"] == 128 << 20
    # No cache at all: every read decompresses its block, and still reads right.
    with cellar.dbm.open(p, "r", cache_bytes=0) as db:
        assert db.stats()["block_cache_capacity"] == 0
        assert pickle.loads(db[b"key4999"])["id"] == 4999
    with pytest.raises(ValueError, match="cache_bytes"):
        cellar.dbm.open(p, "r", cache_bytes=-1)
    # Through cellar.shelve too.
    s = tmp_path / "s.db"
    with cellar.shelve.open(str(s), "c", cache_bytes=4096) as shelf:
        for i in range(200):
            shelf[f"k{i}"] = [i, "x" * 50]
        shelf.dict.compact()
        assert shelf.dict.stats()["block_cache_capacity"] == 4096
        assert shelf["k7"] == [7, "x" * 50]


@pytest.mark.parametrize("mod", BACKENDS, ids=lambda m: m.__name__)
def test_writes_through_the_handle_inside_a_batch_block_are_one_commit(
    tmp_path: Path, mod: object
) -> None:
    # README: `with db.batch(): db[k] = v` is one atomic commit, like `b[k] = v` on the object.
    path = tmp_path / "db"
    with mod.open(path, "n") as db:  # type: ignore[attr-defined]
        db[b"old"] = b"x"
        db[b"drop"] = b"y"
        with pytest.raises(RuntimeError):
            with db.batch():
                for i in range(100):
                    db[b"k%d" % i] = b"v%d" % i
                del db[b"old"]
                db.setdefault(b"sd", b"z")
                db.clear()
                raise RuntimeError
        assert sorted(db.keys()) == [b"drop", b"old"]  # nothing of the block applied
        with db.batch() as b:
            for i in range(100):
                db[b"k%d" % i] = b"v%d" % i
            b[b"obj"] = b"o"
            del db[b"old"]
            del db[b"never-there"]  # recorded like `del b[k]`: no KeyError in a batch
            assert db.setdefault(b"sd", b"z") == b"z"
            assert len(b) == 104
            # Reads see the store as committed until the block ends.
            assert b"k1" not in db and db[b"old"] == b"x" and len(db) == 2
        assert len(db) == 103 and db[b"k7"] == b"v7" and db[b"obj"] == b"o"
        assert b"old" not in db and db[b"sd"] == b"z"
        # clear() inside a block removes the committed keys and those the block set.
        with db.batch():
            db[b"new"] = b"n"
            db.clear()
            db[b"last"] = b"l"
            assert len(db) == 103
        assert sorted(db.keys()) == [b"last"]
    with mod.open(path) as db:  # type: ignore[attr-defined]
        assert sorted(db.keys()) == [b"last"]


def test_nested_batch_blocks_join_the_outer_commit(tmp_path: Path) -> None:
    with cdbm.open(tmp_path / "db", "n") as db:
        with db.batch() as outer:
            db[b"a"] = b"1"
            with db.batch() as inner:
                inner[b"b"] = b"2"
                db[b"c"] = b"3"
            assert b"b" not in db and len(outer) == 3  # the inner block commits with the outer
            with pytest.raises(KeyError):
                with db.batch():
                    db[b"d"] = b"4"
                    raise KeyError("inner fails alone")
            db[b"e"] = b"5"
        assert sorted(db.keys()) == [b"a", b"b", b"c", b"e"]
        with pytest.raises(RuntimeError):
            with db.batch():
                db[b"f"] = b"6"
                with db.batch():
                    db[b"g"] = b"7"
                raise RuntimeError
        assert sorted(db.keys()) == [b"a", b"b", b"c", b"e"]
        b = db.batch()
        with b:
            pass
        with pytest.raises(cdbm.error, match="only once"):
            with b:
                pass
        with pytest.raises(cdbm.error, match="already been applied"):
            b[b"x"] = b"y"
        # A batch filled before its block opens brings those writes into the block.
        b = db.batch()
        b[b"pre"] = b"p"
        with b:
            db[b"post"] = b"q"
        assert db[b"pre"] == b"p" and db[b"post"] == b"q"


def test_writes_inside_a_batch_block_are_checked_when_made(tmp_path: Path) -> None:
    path = tmp_path / "db"
    cdbm.open(path, "c").close()
    with cdbm.open(path, "r") as db:
        with db.batch():
            with pytest.raises(cdbm.error, match="reading only"):
                db[b"a"] = b"1"
            with pytest.raises(cdbm.error, match="reading only"):
                del db[b"a"]
    db = cdbm.open(path, "w")
    with pytest.raises(cdbm.error, match="closed"):
        with db.batch():
            db.close()
            db[b"a"] = b"1"


def test_a_killed_process_leaves_nothing_of_its_open_batch_block(tmp_path: Path) -> None:
    # kill -9 in the middle of a `with db.batch():` block: the store has every write committed
    # before it and none made inside it.
    path = tmp_path / "db"
    code = (
        "import os, signal, sys, cellar.dbm as dbm\n"
        f"db = dbm.open({str(path)!r}, 'c')\n"
        "for i in range(50): db[b'before%d' % i] = b'x'\n"
        "with db.batch():\n"
        "    for i in range(5000): db[b'inside%d' % i] = b'y' * 100\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code])
    assert r.returncode == -9
    with cdbm.open(path, "r") as db:
        keys = set(db.keys())
    assert keys == {b"before%d" % i for i in range(50)}


def test_a_batch_entered_and_dropped_without_exit_does_not_hold_later_writes(
    tmp_path: Path,
) -> None:
    import gc

    with cdbm.open(tmp_path / "db", "n") as db:
        b = db.batch()
        b.__enter__()
        db[b"held"] = b"x"
        del b
        gc.collect()
        db[b"after"] = b"y"  # written at once again
        assert db[b"after"] == b"y" and b"held" not in db


def test_reads_racing_a_close_in_another_thread_finish_or_see_it_closed(tmp_path: Path) -> None:
    # Point reads of a native store keep the GIL; one that meets a close() running in another
    # thread (here a close that folds 20,000 records) waits for it with the GIL released.
    for _ in range(3):
        db = cdbm.open(tmp_path / "db", "n")
        for i in range(20_000):
            db[b"k%d" % i] = b"v" * 50
        ticks = []
        closer = threading.Thread(target=db.close)
        ticker = threading.Thread(target=lambda: ticks.extend(range(1000)))
        outcomes = set()
        closer.start()
        ticker.start()
        for i in range(200_000):
            try:
                assert db.get(b"k%d" % (i % 20_000)) == b"v" * 50
                assert (b"k%d" % (i % 20_000)) in db
                outcomes.add("read")
            except cdbm.error as e:
                assert "closed" in str(e)
                outcomes.add("closed")
                break
        closer.join(10)
        ticker.join(10)
        assert not closer.is_alive() and len(ticks) == 1000
        assert "closed" in outcomes
        with cdbm.open(tmp_path / "db", "r") as again:
            assert len(again) == 20_000
