"""cellar.dbm on bad input: damaged and truncated SQLite files, a truncated dbm.dumb .dat, a
corrupt .dir line, random bytes, a directory instead of a file, a read-only directory and a
missing file. Each must raise ``cellar.dbm.error`` with a message that says what is wrong, never
crash, and leave the files exactly as they were (no half-written file, no leftover -wal/-shm).

Also: the sqlite backend's keys(), values(), items() and iteration agree on one order, and the
dumb backend compacts (``compact()`` / ``reorganize()``).
"""

from __future__ import annotations

import os
import random
import sqlite3 as std_sqlite3
import stat
from pathlib import Path
from typing import Any, Callable

import pytest

import cellar.dbm as cdbm
import cellar.dbm.dumb
import cellar.dbm.native
import cellar.dbm.sqlite3

BACKENDS = [cellar.dbm.native, cellar.dbm.sqlite3, cellar.dbm.dumb]
N = 2000


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under d (recursively) with its bytes."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(d))] = p.read_bytes()
    return out


def value(i: int) -> bytes:
    return (b"value %d " % i) * 12


def make_cellar_sqlite(path: Path) -> None:
    db = cellar.dbm.sqlite3.open(path, "c")
    with db.batch() as b:
        for i in range(N):
            b[b"key%d" % i] = value(i)
    db.close()


def make_cpython_sqlite(path: Path) -> None:
    """A store written the way CPython 3.13's dbm.sqlite3 writes one (autocommit, WAL)."""
    cx = std_sqlite3.connect(path, isolation_level=None)
    cx.execute("PRAGMA journal_mode = wal")
    cx.execute("PRAGMA synchronous = OFF")  # speed only; the file's format is the same
    cx.execute("CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
    for i in range(N):
        cx.execute(
            "REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))",
            (b"key%d" % i, value(i)),
        )
    cx.close()


def make_dumb(path: Path) -> None:
    db = cellar.dbm.dumb.open(path, "c")
    for i in range(50):
        db[b"key%d" % i] = value(i)
    db.close()


def opens(path: Path) -> list[tuple[str, Callable[[], Any]]]:
    """Every way to open ``path`` for reading or writing without creating or emptying it."""
    out: list[tuple[str, Callable[[], Any]]] = []
    for flag in ("r", "w", "c"):
        out.append((f"dbm.open {flag}", lambda flag=flag: cdbm.open(path, flag)))
    return out


def read_everything(db: Any) -> None:
    len(db)
    db.keys()
    db.items()
    for i in range(N):
        v = db.get(b"key%d" % i)
        assert v is None or v == value(i), f"key{i} read back wrong data: {v!r:.60}"


def assert_clear(e: BaseException, *words: str) -> None:
    msg = str(e)
    assert msg and msg != "None", repr(e)
    assert any(w in msg for w in words), f"{msg!r} mentions none of {words}"


@pytest.mark.parametrize("maker", [make_cellar_sqlite, make_cpython_sqlite])
def test_sqlite_with_garbage_pages(tmp_path: Path, maker: Callable[[Path], None]) -> None:
    path = tmp_path / "store.sqlite"
    maker(path)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) >= 8 * page
    # Whole pages of garbage in the middle of the file (SQLite has no checksums, so damage
    # inside one value's bytes cannot be seen; damage to page structure must be).
    mid = (len(data) // 2) // page * page
    data[mid : mid + 2 * page] = random.Random(7).randbytes(2 * page)
    path.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    for what, op in opens(path) + [
        (f"sqlite3.open {f}", lambda f=f: cellar.dbm.sqlite3.open(path, f)) for f in "rwc"
    ]:
        # The damage is seen at open, or at the latest when the damaged pages are read.
        with pytest.raises(cdbm.error) as info:
            db = op()
            try:
                read_everything(db)
            finally:
                db.close()
        assert_clear(info.value, "malformed", "not a database", "damaged", "corrupt"), what
        assert snapshot(tmp_path) == before, what


@pytest.mark.parametrize("maker", [make_cellar_sqlite, make_cpython_sqlite])
def test_truncated_sqlite_fails_at_open(tmp_path: Path, maker: Callable[[Path], None]) -> None:
    path = tmp_path / "store.sqlite"
    maker(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = snapshot(tmp_path)
    for what, op in opens(path) + [
        (f"sqlite3.open {f}", lambda f=f: cellar.dbm.sqlite3.open(path, f)) for f in "rwc"
    ]:
        with pytest.raises(cdbm.error) as info:
            op().close()
        assert_clear(info.value, "truncated"), what
        assert str(path) in str(info.value), what
        assert snapshot(tmp_path) == before, what


def test_truncated_dumb_dat(tmp_path: Path) -> None:
    path = tmp_path / "db"
    make_dumb(path)
    dat = tmp_path / "db.dat"
    dat.write_bytes(dat.read_bytes()[:-100])
    before = snapshot(tmp_path)
    for what, op in opens(path) + [
        (f"dumb.open {f}", lambda f=f: cellar.dbm.dumb.open(path, f)) for f in "rwc"
    ]:
        with pytest.raises(cdbm.error) as info:
            op().close()
        assert_clear(info.value, "truncated"), what
        assert isinstance(info.value, cdbm.CorruptError), what
        assert snapshot(tmp_path) == before, what


@pytest.mark.parametrize(
    "line",
    [
        b"garbage\n",
        b"'k', (0, \n",
        b"__import__('os').system('touch pwned'), (0, 1)\n",
        b"'k', (0, -5)\n",
        b"'k', (0, 1), 3\n",
        b"\x00\xff\xfe\n",
    ],
)
def test_corrupt_dir_line(tmp_path: Path, line: bytes) -> None:
    path = tmp_path / "db"
    make_dumb(path)
    d = tmp_path / "db.dir"
    lines = d.read_bytes().splitlines(keepends=True)
    d.write_bytes(b"".join(lines[:3] + [line] + lines[3:]))
    before = snapshot(tmp_path)
    for what, op in opens(path) + [
        (f"dumb.open {f}", lambda f=f: cellar.dbm.dumb.open(path, f)) for f in "rwc"
    ]:
        with pytest.raises(cdbm.error) as info:
            op().close()
        assert isinstance(info.value, cdbm.CorruptError), what
        assert_clear(info.value, "line 4"), what
        assert "db.dir" in str(info.value), what
        assert snapshot(tmp_path) == before, what
    assert not (tmp_path / "pwned").exists()


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random"
    path.write_bytes(random.Random(3).randbytes(10_000))
    before = snapshot(tmp_path)
    for flag in "rwc":
        with pytest.raises(cdbm.error, match="db type could not be determined"):
            cdbm.open(path, flag)
        for mod in (cellar.dbm.native, cellar.dbm.sqlite3):
            with pytest.raises(cdbm.error) as info:
                mod.open(path, flag).close()
            assert_clear(info.value, "not a", "magic", "database", "cellar"), mod.__name__
        assert snapshot(tmp_path) == before, flag
    # Random bytes as a dbm.dumb index.
    (tmp_path / "r.dat").write_bytes(b"")
    (tmp_path / "r.dir").write_bytes(b"'" + random.Random(4).randbytes(3000) + b"\n")
    before = snapshot(tmp_path)
    for flag in "rwc":
        with pytest.raises(cdbm.error) as info:
            cellar.dbm.dumb.open(tmp_path / "r", flag).close()
        assert isinstance(info.value, cdbm.CorruptError)
        assert_clear(info.value, "line 1")
    assert snapshot(tmp_path) == before


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    d = tmp_path / "adir"
    d.mkdir()
    (d / "inside").write_bytes(b"x")
    for flag in "rw":
        with pytest.raises(cdbm.error, match="doesn't exist"):
            cdbm.open(d, flag)
    for flag in "cn":
        with pytest.raises(cdbm.error):
            cdbm.open(d, flag).close()
    for mod in (cellar.dbm.native, cellar.dbm.sqlite3):
        for flag in "rwcn":
            with pytest.raises(cdbm.error) as info:
                mod.open(d, flag).close()
            assert str(info.value), (mod.__name__, flag)
    # dbm.dumb's files are NAME.dat / NAME.dir: make those directories.
    (tmp_path / "dumb.dat").mkdir()
    (tmp_path / "dumb.dir").mkdir()
    for flag in "rwc":
        with pytest.raises(cdbm.error) as info:
            cellar.dbm.dumb.open(tmp_path / "dumb", flag).close()
        assert isinstance(info.value, IsADirectoryError), flag
    assert d.is_dir() and sorted(os.listdir(d)) == ["inside"]
    assert (tmp_path / "dumb.dat").is_dir() and not os.listdir(tmp_path / "dumb.dat")


def _create_in(target: Path) -> list[str]:
    """Tries to create a store of every backend in ``target``; one line per attempt."""
    out = []
    for mod in BACKENDS:
        for flag in "cn":
            try:
                mod.open(target / f"db-{mod.__name__}", flag).close()
            except cdbm.error as e:
                out.append(f"error {type(e).__name__}: {e}")
            except BaseException as e:  # noqa: BLE001 - reported to the parent as a failure
                out.append(f"WRONG {type(e).__name__}: {e}")
            else:
                out.append("OPENED")
    try:
        cdbm.open(target / "db-any", "c").close()
    except cdbm.error as e:
        out.append(f"error {type(e).__name__}: {e}")
    except BaseException as e:  # noqa: BLE001
        out.append(f"WRONG {type(e).__name__}: {e}")
    else:
        out.append("OPENED")
    return out


def _run_as_nobody(fn: Callable[[], list[str]]) -> list[str]:
    """Runs fn in a forked child that drops root for the 'nobody' user (root ignores permission
    bits); returns its lines. Without root, runs fn here."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root, try, report, exit without cleanup
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            msg = "\n".join(fn())
        except BaseException as e:  # noqa: BLE001
            msg = f"WRONG child failed: {e!r}"
            code = 1
        os.write(w, msg.encode("utf-8", "replace"))
        os._exit(code)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child crashed: status {status}"
    return b"".join(chunks).decode().splitlines()


@pytest.mark.parametrize("wal", [True, False])
def test_sqlite_store_in_a_read_only_directory(tmp_path: Path, wal: bool) -> None:
    """'r' on a store whose directory cannot be written. A rollback-journal store reads; a WAL
    store cannot be read without its -wal/-shm files, which cannot be created there: a clear
    dbm.error saying so (CPython's dbm.sqlite3 fails too). Nothing is written either way."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"cellar-ro-sq-{os.getpid()}"
    base.mkdir()
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir()
        make_cpython_sqlite(ro / "s.sqlite")
        if not wal:
            cx = std_sqlite3.connect(ro / "s.sqlite")
            cx.execute("PRAGMA journal_mode = delete")
            cx.close()
        if os.geteuid() == 0:
            os.chown(ro, 65534, 65534)
            os.chown(ro / "s.sqlite", 65534, 65534)
        ro.chmod(0o500)
        before = snapshot(ro)

        def read() -> list[str]:
            out = []
            for op in (
                lambda: cdbm.open(ro / "s.sqlite", "r"),
                lambda: cellar.dbm.sqlite3.open(ro / "s.sqlite", "r"),
            ):
                try:
                    with op() as db:
                        ok = len(db) == N and db[b"key7"] == value(7)
                        out.append("OK" if ok else "WRONG contents")
                except cdbm.error as e:
                    out.append(f"error: {e}")
                except BaseException as e:  # noqa: BLE001
                    out.append(f"WRONG {type(e).__name__}: {e}")
            return out

        lines = _run_as_nobody(read)
        if wal:
            assert len(lines) == 2, lines
            for line in lines:
                assert line.startswith("error: ") and "-wal and -shm" in line, line
                assert str(ro / "s.sqlite") in line, line
        else:
            assert lines == ["OK", "OK"]
        assert snapshot(ro) == before
    finally:
        for p in (base / "ro", base):
            try:
                p.chmod(stat.S_IRWXU)
            except OSError:
                pass
        for p in sorted(base.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        base.rmdir()


def test_read_only_directory(tmp_path: Path) -> None:
    """Creating a store in a directory without write permission (0o500) fails cleanly. Root
    ignores permission bits, so under root the attempt runs in a forked child that drops to
    the 'nobody' user first."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"cellar-ro-{os.getpid()}"
    base.mkdir()
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir()
        if os.geteuid() == 0:
            os.chown(ro, 65534, 65534)
        ro.chmod(0o500)
        lines = _run_as_nobody(lambda: _create_in(ro))
        assert len(lines) == 7, lines
        for line in lines:
            assert line.startswith("error "), lines
            assert "Permission denied" in line or "ermission" in line, line
        assert os.listdir(ro) == []
    finally:
        for p in (base / "ro", base):
            try:
                p.chmod(stat.S_IRWXU)
            except OSError:
                pass
        for p in sorted(base.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        base.rmdir()


def test_missing_file_with_r(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(cdbm.error, match="db file doesn't exist"):
        cdbm.open(missing, "r")
    for mod in BACKENDS:
        for flag in "rw":
            with pytest.raises(cdbm.error) as info:
                mod.open(missing, flag)
            assert_clear(info.value, "No such file", "doesn't exist", "does not exist")
    assert os.listdir(tmp_path) == []


# --- sqlite: one order for keys(), values(), items(), iteration ------------------------------


@pytest.mark.parametrize("maker", [None, make_cpython_sqlite])
def test_sqlite_keys_and_items_share_one_order(tmp_path: Path, maker: Any) -> None:
    path = tmp_path / "s.sqlite"
    if maker is not None:
        maker(path)
    db = cellar.dbm.sqlite3.open(path, "c")
    keys = [b"k%05d" % i for i in range(500)]
    random.Random(5).shuffle(keys)
    for k in keys:
        db[k] = b"v" + k
    db[keys[10]] = b"overwritten"
    del db[keys[20]]
    with db.batch() as b:
        b[b"zz"] = b"1"
        b[b"aa"] = b"2"
    items = db.items()
    ks = db.keys()
    assert ks == [k for k, _ in items]
    assert db.values() == [v for _, v in items]
    assert list(db) == ks
    assert len(set(ks)) == len(ks) == len(db)
    assert dict(items)[keys[10]] == b"overwritten" and keys[20] not in dict(items)
    db.close()
    with cellar.dbm.sqlite3.open(path, "r") as db:
        assert db.keys() == [k for k, _ in db.items()] == ks


# --- dumb: compact() / reorganize() -----------------------------------------------------------


def _files_size(path: Path) -> int:
    return sum(
        os.path.getsize(str(path) + s) for s in (".dat", ".dir") if os.path.exists(str(path) + s)
    )


@pytest.mark.parametrize("method", ["compact", "reorganize"])
def test_dumb_compacts(tmp_path: Path, method: str) -> None:
    import dbm.dumb as std_dumb

    path = tmp_path / "db"
    db = cellar.dbm.dumb.open(path, "c")
    for i in range(300):
        db[b"key%d" % i] = b"x" * (100 + i)
    for i in range(300):  # every value moves (new size) at least once
        db[b"key%d" % i] = b"y" * (700 + i)
    for i in range(0, 300, 3):
        del db[b"key%d" % i]
    expect = {b"key%d" % i: b"y" * (700 + i) for i in range(300) if i % 3}
    db.sync()
    big = _files_size(path)
    getattr(db, method)()
    assert dict(db.items()) == expect
    small = _files_size(path)
    assert small < big // 2, (small, big)
    # Values are packed: the .dat is no larger than the blocks the live values need.
    blocks = sum(-(-len(v) // 512) * 512 for v in expect.values())
    assert os.path.getsize(str(path) + ".dat") <= blocks
    # Writes after compaction go on in the compacted files.
    db[b"after"] = b"a" * 1000
    db[b"key1"] = b"z"
    expect[b"after"] = b"a" * 1000
    expect[b"key1"] = b"z"
    assert dict(db.items()) == expect
    db.close()
    assert not [n for n in os.listdir(tmp_path) if "compact" in n or n.endswith(".new")]
    with cellar.dbm.dumb.open(path, "r") as db:
        assert dict(db.items()) == expect
        with pytest.raises(cdbm.error, match="reading only"):
            getattr(db, method)()
    # CPython's dbm.dumb reads the compacted store.
    s = std_dumb.open(str(path), "r")
    try:
        assert {k: s[k] for k in s.keys()} == expect
    finally:
        s.close()


def test_dumb_compaction_of_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with cellar.dbm.dumb.open(path, "c") as db:
        db[b"a"] = b"1"
        del db[b"a"]
        db.compact()
        assert len(db) == 0
        db[b"b"] = b"2"
    with cellar.dbm.dumb.open(path, "r") as db:
        assert db.items() == [(b"b", b"2")]
