"""Many writer processes on one native store (issue 17): cellar.dbm and cellar.shelve opened
for writing by several multiprocessing workers at once, forked children, exclusive mode and
the lock timeout."""

from __future__ import annotations

import multiprocessing
import os

import pytest

import cellar.dbm
import cellar.shelve

WORKERS = 4
PER_WORKER = 300


def _dbm_worker(path: str, wid: int, n: int) -> None:
    with cellar.dbm.open(path, "c") as db:
        for i in range(n):
            db[f"w{wid}-{i}".encode()] = f"value {wid} {i}".encode()
            db[f"shared{i % 7}".encode()] = f"{wid}:{i}".encode()
            if i % 10 == 9:
                del db[f"w{wid}-{i - 5}".encode()]
            if i % 50 == 0:
                with db.batch() as b:
                    for j in range(5):
                        b[f"b{wid}-{i}-{j}".encode()] = b"x" * j


def _shelve_worker(path: str, wid: int, n: int) -> None:
    with cellar.shelve.open(path) as sh:
        for i in range(n):
            sh[f"w{wid}-{i}"] = {"wid": wid, "i": i, "tags": [wid] * (i % 5)}
            sh[f"shared{i % 7}"] = (wid, i)


def _run(ctx_name: str, target, path: str) -> None:
    ctx = multiprocessing.get_context(ctx_name)
    procs = [ctx.Process(target=target, args=(path, w, PER_WORKER)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"


@pytest.mark.parametrize("ctx_name", ["fork", "spawn"])
def test_dbm_many_writer_processes(tmp_path, ctx_name):
    path = str(tmp_path / "db")
    # The parent keeps a writer handle open the whole time, as a web app's master might.
    with cellar.dbm.open(path, "c") as parent:
        parent[b"parent"] = b"before"
        _run(ctx_name, _dbm_worker, path)
        parent[b"parent"] = b"after"
        # The parent's handle sees every worker's commits.
        assert parent[b"w0-0"] == b"value 0 0"
        expected = set()
        for w in range(WORKERS):
            for i in range(PER_WORKER):
                deleted = (i + 5) % 10 == 9 and i + 5 < PER_WORKER
                if not deleted:
                    expected.add(f"w{w}-{i}".encode())
            for i in range(0, PER_WORKER, 50):
                expected.update(f"b{w}-{i}-{j}".encode() for j in range(5))
        expected.update(f"shared{k}".encode() for k in range(7))
        expected.add(b"parent")
        assert set(parent.keys()) == expected
        assert len(parent) == len(expected)
        for w in range(WORKERS):
            assert parent[f"w{w}-{PER_WORKER - 1}".encode()] == (
                f"value {w} {PER_WORKER - 1}".encode()
            )
        for k in range(7):
            wid, i = parent[f"shared{k}".encode()].decode().split(":")
            assert int(i) % 7 == k and 0 <= int(wid) < WORKERS
    with cellar.dbm.open(path, "r") as db:
        assert set(db.keys()) == expected
        assert db[b"parent"] == b"after"


def test_shelve_many_writer_processes(tmp_path):
    path = str(tmp_path / "shelf")
    _run("spawn", _shelve_worker, path)
    with cellar.shelve.open(path, "r") as sh:
        assert len(sh) == WORKERS * PER_WORKER + 7
        for w in range(WORKERS):
            for i in range(0, PER_WORKER, 37):
                assert sh[f"w{w}-{i}"] == {"wid": w, "i": i, "tags": [w] * (i % 5)}
        for k in range(7):
            wid, i = sh[f"shared{k}"]
            assert i % 7 == k


def _forked_child(db, path: str, q) -> None:
    out = []
    try:
        db[b"child"] = b"through the inherited handle"
        out.append("wrote")
    except cellar.dbm.error as e:
        out.append(str(e))
    with cellar.dbm.open(path, "w") as own:
        own[b"child"] = b"own handle"
        out.append(own[b"parent"].decode())
    q.put(out)


def test_forked_child_gets_a_clear_error_then_reopens(tmp_path):
    path = str(tmp_path / "db")
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    with cellar.dbm.open(path, "c") as db:
        db[b"parent"] = b"p"
        p = ctx.Process(target=_forked_child, args=(db, path, q))
        p.start()
        out = q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0
        assert "fork" in out[0] and "reopen" in out[0], out
        assert out[1] == "p"
        # The parent's handle still writes, and sees the child's commit.
        db[b"parent"] = b"again"
        assert db[b"child"] == b"own handle"


def test_exclusive_mode_and_timeout(tmp_path):
    path = str(tmp_path / "db")
    with cellar.dbm.open(path, "c", exclusive=True) as db:
        db[b"k"] = b"v"
        with pytest.raises(cellar.dbm.error) as e:
            cellar.dbm.open(path, "w", timeout=0.05)
        assert str(os.getpid()) in str(e.value)
        assert "exclusive" in str(e.value)
        # Readers never wait.
        with cellar.dbm.open(path, "r") as r:
            assert r[b"k"] == b"v"
    with cellar.dbm.open(path, "w") as a, cellar.dbm.open(path, "w") as b:
        a[b"a"] = b"1"
        b[b"b"] = b"2"
        assert a[b"b"] == b"2" and b[b"a"] == b"1"
        with pytest.raises(cellar.dbm.error, match="exclusive"):
            cellar.dbm.open(path, "w", exclusive=True)
    with pytest.raises(ValueError, match="timeout"):
        cellar.dbm.open(path, "w", timeout=-1)
    with cellar.shelve.open(path.replace("db", "sh"), timeout=1.5, exclusive=True) as sh:
        sh["x"] = [1, 2]
        with pytest.raises(cellar.dbm.error):
            cellar.shelve.open(path.replace("db", "sh"), timeout=0)
