"""cellar.dbm.sqlite3 and the stdlib's sqlite3 on the same file in one process: no lost writes.

Two SQLite libraries in one process fight: POSIX advisory locks belong to the process, so when
the second library closes its descriptor of the file, the first library's locks vanish, and the
second, believing itself the last user, deletes the -wal/-shm under the first one's open
connection. cellar.dbm.sqlite3 therefore runs on the interpreter's own sqlite3 module. These
tests run the issue's sequence in a child process: cellar opens the store and writes; a stdlib
sqlite3 (and, where it exists, dbm.sqlite3) connection to the same file is opened and closed;
cellar writes again and acknowledges; another process reads while cellar's connection is open;
the child dies without closing (os._exit, or SIGKILL); every acknowledged write must be there.

Also CPython 3.13's dbm.sqlite3 semantics that cellar.dbm.sqlite3 follows on every version.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

import cellar.dbm as cdbm
import cellar.dbm.dumb
import cellar.dbm.native
import cellar.dbm.sqlite3

CHILD = textwrap.dedent(
    r"""
    import os, sys, sqlite3
    from contextlib import closing
    import cellar.dbm, cellar.dbm.sqlite3
    path, opener, stdlib_dbm = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    if opener == "generic":
        cellar.dbm.sqlite3.open(path, "c").close()   # an existing sqlite3-format store
        db = cellar.dbm.open(path, "w")              # found by whichdb
    else:
        db = cellar.dbm.sqlite3.open(path, "c")
    assert db.backend == "dbm.sqlite3", db.backend
    db[b"k1"] = b"before"
    # The stdlib on the same file, in the same process: opened, used, closed.
    with closing(sqlite3.connect(path)) as cx:
        assert cx.execute("SELECT value FROM Dict WHERE key = ?", (b"k1",)).fetchone()[0] == b"before"
    if stdlib_dbm:
        import dbm.sqlite3
        with dbm.sqlite3.open(path, "w") as sd:
            assert sd[b"k1"] == b"before"
    for i in range(3):
        db[b"k%d" % (i + 2)] = b"after%d" % i      # acknowledged: the call returned
        print("acked", i, flush=True)
    print("ready", flush=True)
    how = sys.stdin.readline().strip()
    if how == "exit":
        os._exit(0)
    while True:
        sys.stdin.readline()                          # wait for SIGKILL
    """
)


def _has_stdlib_dbm_sqlite3() -> bool:
    try:
        import dbm.sqlite3  # noqa: F401
    except ImportError:
        return False
    return True


def _read_all(path: Path) -> dict[bytes, bytes]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as cx:
        return dict(cx.execute("SELECT key, value FROM Dict"))


EXPECTED = {b"k1": b"before", b"k2": b"after0", b"k3": b"after1", b"k4": b"after2"}


@pytest.mark.parametrize("death", ["exit", "kill"])
@pytest.mark.parametrize("opener", ["sqlite3", "generic"])
@pytest.mark.parametrize("stdlib_dbm", [False, True], ids=["sqlite3", "sqlite3+dbm.sqlite3"])
def test_no_lost_writes_beside_stdlib_sqlite3(
    tmp_path: Path, death: str, opener: str, stdlib_dbm: bool
) -> None:
    if stdlib_dbm and not _has_stdlib_dbm_sqlite3():
        pytest.skip("the stdlib has dbm.sqlite3 from CPython 3.13 on")
    path = tmp_path / "shared.sqlite"
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), opener, "1" if stdlib_dbm else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            lines = []
            while True:
                line = child.stdout.readline()
                if not line:
                    err = child.stderr.read() if child.stderr else ""
                    raise AssertionError("child died: " + err)
                lines.append(line.strip())
                if line.strip() == "ready":
                    break
            assert lines == ["acked 0", "acked 1", "acked 2", "ready"]
            # Another process sees every write while cellar's connection is still open (the
            # WAL it writes to is the file's, not an unlinked one).
            assert _read_all(path) == EXPECTED
            assert (tmp_path / "shared.sqlite-wal").exists()
            if death == "exit":
                child.stdin.write("exit\n")
                child.stdin.flush()
            else:
                child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    # Reopened after the death: every acknowledged write is there.
    assert _read_all(path) == EXPECTED
    with cellar.dbm.sqlite3.open(path, "r") as db:
        assert {k: db[k] for k in db.keys()} == EXPECTED


def test_one_process_sees_both_ways(tmp_path: Path) -> None:
    """cellar and the stdlib interleave on one file in one process, each seeing the other's
    writes, and the store stays consistent after both close."""
    path = tmp_path / "both.sqlite"
    db = cellar.dbm.sqlite3.open(path, "c")
    db[b"a"] = b"1"
    cx = sqlite3.connect(path, isolation_level=None)
    assert cx.execute("SELECT value FROM Dict WHERE key = ?", (b"a",)).fetchone() == (b"1",)
    cx.execute("REPLACE INTO Dict (key, value) VALUES (?, ?)", (b"b", b"2"))
    assert db[b"b"] == b"2"
    cx.close()
    db[b"c"] = b"3"
    db.close()
    assert _read_all(path) == {b"a": b"1", b"b": b"2", b"c": b"3"}


# --- CPython 3.13 dbm.sqlite3 semantics ------------------------------------------------------


@pytest.mark.parametrize(
    "raw, stored",
    [(42, b"42"), (-7, b"-7"), (3.14, b"3.14"), (1.5, b"1.5"), (True, b"1"), ("s", b"s")],
)
def test_sqlite_coerces_like_cpython(tmp_path: Path, raw: object, stored: bytes) -> None:
    with cellar.dbm.sqlite3.open(tmp_path / "c.sqlite", "c") as db:
        db[raw] = raw  # type: ignore[index]
        assert db[stored] == stored and db[raw] == stored  # type: ignore[index]
        assert db.keys() == [stored]
    if _has_stdlib_dbm_sqlite3():
        import dbm.sqlite3 as std

        with std.open(str(tmp_path / "s.sqlite"), "c") as sd:
            sd[raw] = raw
            assert sd.keys() == [stored] and sd[stored] == stored


def test_sqlite_coercion_errors(tmp_path: Path) -> None:
    with cellar.dbm.sqlite3.open(tmp_path / "c.sqlite", "c") as db:
        with pytest.raises(OverflowError):
            db[2**70] = b"x"  # type: ignore[index]
        with pytest.raises(cellar.dbm.sqlite3.error):
            db[b"k"] = [1]  # type: ignore[assignment]
        with pytest.raises(cellar.dbm.sqlite3.error, match="NOT NULL"):
            db[None] = b"x"  # type: ignore[index]
        with pytest.raises(KeyError):
            db[None]  # type: ignore[index]
        with pytest.raises(KeyError):
            del db[None]  # type: ignore[arg-type]
        assert len(db) == 0


@pytest.mark.parametrize(
    "mod", [cellar.dbm.native, cellar.dbm.sqlite3, cellar.dbm.dumb], ids=lambda m: m.__name__
)
def test_clear_iterators_reinit(tmp_path: Path, mod: object) -> None:
    path = tmp_path / "db"
    db = mod.open(path, "c")  # type: ignore[attr-defined]
    for i in range(5):
        db[b"%d" % i] = b"v"
    db.clear()
    assert len(db) == 0 and db.keys() == []
    db.clear()  # empty: fine
    db[b"a"], db[b"b"] = b"1", b"2"
    with pytest.raises(cdbm.error, match="reinitialization"):
        db.__init__(str(tmp_path / "other"), flag="n", mode=0o666)
    it = iter(db)
    assert next(it) in (b"a", b"b")
    db.close()
    with pytest.raises(cdbm.error, match="closed"):
        next(it)
    with pytest.raises(cdbm.error, match="closed"):
        db.clear()
    with mod.open(path, "r") as ro:  # type: ignore[attr-defined]
        with pytest.raises(cdbm.error, match="reading only"):
            ro.clear()
        assert sorted(ro.keys()) == [b"a", b"b"]


def test_sqlite_empty_filename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for flag in "rwcn":
        with pytest.raises(cellar.dbm.sqlite3.error):
            cellar.dbm.sqlite3.open("", flag)
    assert os.listdir(tmp_path) == []


def test_normalize_uri() -> None:
    from cellar.dbm.sqlite3 import _normalize_uri

    assert _normalize_uri("/absolute/////b/c").endswith("/absolute/b/c")
    assert _normalize_uri("PRE#MID##END").endswith("PRE%23MID%23%23END")
    assert _normalize_uri("%#?%%#").endswith("%25%23%3F%25%25%23")
