"""cellar.dbm and cellar.shelve on real servers: Redis (also over TLS), a Redis Cluster and PostgreSQL, started by
scripts/servers.sh (scripts/test.sh does it), which exports CELLAR_TEST_REDIS_URL,
CELLAR_TEST_REDIS_CLUSTER_URL and CELLAR_TEST_POSTGRES_URL. Without them every test here is
skipped, naming the variable; under CI=true a missing server is a failure.

* ``TestDbm*``: the applicable parts of CPython's test_dbm (AnyDBMTestCase) on each server.
* ``TestShelfMapping*``: CPython's own ``test.mapping_tests.BasicTestMappingProtocol`` run on a
  server-backed shelf for pickle protocols 0, 1, 2 and the default, with and without writeback,
  exactly as CPython's test_shelve runs it on file shelves; then test_shelve's shelf tests.
* interop (a shelf carried file -> Redis -> Redis Cluster -> PostgreSQL -> file is identical,
  through the Python API and through ``cellar convert``), concurrent clients in several
  processes, typed errors (unreachable, timeout, dropped connection), TLS (``rediss://`` with a
  password, PostgreSQL ``verify-full``) and hidden passwords (in the URL or the environment:
  REDISCLI_AUTH, PGPASSWORD).

The kill -9 of a cluster master and the PostgreSQL restart mid-batch run in the Rust suite
(crates/cellar-dbm/tests/servers.rs), against the same servers.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import socket
import subprocess
import threading
import time
import unittest
from pathlib import Path
from typing import Any

import pytest

import cellar.dbm
import cellar.shelve

VARS = {
    "redis": "CELLAR_TEST_REDIS_URL",
    "cluster": "CELLAR_TEST_REDIS_CLUSTER_URL",
    "postgresql": "CELLAR_TEST_POSTGRES_URL",
}
KIND = {"redis": "dbm.redis", "cluster": "dbm.redis_cluster", "postgresql": "dbm.postgresql"}
_counter = itertools.count()


def base_url(name: str) -> str:
    var = VARS[name]
    url = os.environ.get(var)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{var} is not set under CI=true: scripts/servers.sh must start the servers")
        pytest.skip(f"{var} is not set (run under scripts/test.sh or scripts/servers.sh)")
    return url


def fresh(name: str, tag: str = "t") -> str:
    """A URL of a namespace no other test uses."""
    base = base_url(name)
    n = f"py{os.getpid()}_{next(_counter)}_{tag}"
    sep = "&" if "?" in base else "?"
    if name == "postgresql":
        return f"{base}{sep}table={n}"
    return f"{base}{sep}prefix={n}:"


SERVERS = pytest.mark.parametrize("server", ["redis", "cluster", "postgresql"])

# CPython test_dbm's fixture.
_dict = {
    "a": b"Python:",
    "b": b"Programming",
    "c": b"the",
    "d": b"way",
    "f": b"Guido",
    "g": b"intended",
}


# --- test_dbm (AnyDBMTestCase), the parts that apply to a server store ----------------------


@SERVERS
class TestDbm:
    def init_db(self, url: str) -> None:
        f = cellar.dbm.open(url, "n")
        for k in _dict:
            f[k.encode("ascii")] = _dict[k]
        f.close()

    def read_helper(self, f: Any) -> None:
        keys = sorted(k.decode("ascii") for k in f.keys())
        for key in _dict:
            assert key in keys
            assert _dict[key] == f[key.encode("ascii")]

    def test_anydbm_creation(self, server: str) -> None:
        url = fresh(server)
        f = cellar.dbm.open(url, "c")
        assert list(f.keys()) == []
        for key in _dict:
            f[key.encode("ascii")] = _dict[key]
        self.read_helper(f)
        f.close()

    def test_anydbm_creation_n_namespace_exists(self, server: str) -> None:
        url = fresh(server)
        self.init_db(url)
        f = cellar.dbm.open(url, "n")
        assert len(f) == 0
        f.close()

    def test_anydbm_modification(self, server: str) -> None:
        url = fresh(server)
        self.init_db(url)
        f = cellar.dbm.open(url, "c")
        _dict["g"] = f[b"g"] = b"indented"
        self.read_helper(f)
        assert f.setdefault(b"xxx", b"foo") == b"foo"
        assert f[b"xxx"] == b"foo"
        f.close()
        _dict["g"] = b"intended"

    def test_anydbm_read(self, server: str) -> None:
        url = fresh(server)
        self.init_db(url)
        f = cellar.dbm.open(url, "r")
        self.read_helper(f)
        assert f.get(b"a") == _dict["a"]
        assert f.get(b"xxx", b"foo") == b"foo"
        assert f.get(b"xxx") is None
        with pytest.raises(KeyError):
            f[b"xxx"]
        with pytest.raises(cellar.dbm.error):
            f[b"a"] = b"write in read-only"
        with pytest.raises(cellar.dbm.error):
            del f[b"a"]
        f.close()

    def test_anydbm_keys(self, server: str) -> None:
        url = fresh(server)
        self.init_db(url)
        f = cellar.dbm.open(url, "r")
        keys = sorted(k.decode("ascii") for k in f.keys())
        assert keys == sorted(_dict)
        f.close()

    def test_empty_value(self, server: str) -> None:
        url = fresh(server)
        with cellar.dbm.open(url, "c") as f:
            assert f.keys() == []
            f[b"empty"] = b""
            assert f.keys() == [b"empty"]
            assert b"empty" in f
            assert f[b"empty"] == b""
            assert f.get(b"empty") == b""
            assert f.setdefault(b"empty") == b""

    def test_anydbm_access(self, server: str) -> None:
        url = fresh(server)
        self.init_db(url)
        f = cellar.dbm.open(url, "r")
        key = "a".encode("ascii")
        assert key in f
        assert f[key] == b"Python:"
        f.close()

    def test_open_with_missing_namespace(self, server: str) -> None:
        url = fresh(server)
        for flag in ("r", "w"):
            with pytest.raises(cellar.dbm.error, match="doesn't exist"):
                cellar.dbm.open(url, flag)

    def test_whichdb(self, server: str) -> None:
        url = fresh(server)
        assert cellar.dbm.whichdb(url) is None
        self.init_db(url)
        assert cellar.dbm.whichdb(url) == KIND[server]

    def test_str_and_bytes_keys(self, server: str) -> None:
        with cellar.dbm.open(fresh(server), "c") as f:
            f["bytes"] = "str value é"
            assert f[b"bytes"] == "str value é".encode()
            f[b"\x00\xff"] = b"\x00"
            assert f["bytes"] == "str value é".encode()
            assert set(f.keys()) == {b"bytes", b"\x00\xff"}

    def test_clear_and_len(self, server: str) -> None:
        with cellar.dbm.open(fresh(server), "c") as f:
            for i in range(50):
                f[str(i)] = str(i)
            assert len(f) == 50
            f.clear()
            assert len(f) == 0
            assert list(f) == []

    def test_closed_database(self, server: str) -> None:
        f = cellar.dbm.open(fresh(server), "c")
        f[b"a"] = b"b"
        f.close()
        with pytest.raises(cellar.dbm.error):
            f[b"a"]
        f.close()  # twice is fine

    def test_iteration_is_paged_and_complete(self, server: str) -> None:
        with cellar.dbm.open(fresh(server), "c") as f:
            with f.batch() as b:
                for i in range(3500):
                    b[f"k{i}"] = b"v"
            seen = set(iter(f))
            assert len(seen) == 3500 == len(f)
            assert sorted(seen) == sorted(f.keys())

    def test_iteritems_pages_every_pair(self, server: str) -> None:
        with cellar.dbm.open(fresh(server), "c") as f:
            with f.batch() as b:
                for i in range(2500):
                    b[f"k{i}"] = str(i)
            f[b""] = b"empty key"
            pairs = dict(f.iteritems())
            assert len(pairs) == 2501
            assert pairs[b""] == b"empty key"
            assert all(pairs[f"k{i}".encode()] == str(i).encode() for i in range(2500))
            it = f.iteritems()
            next(it)
        with pytest.raises(cellar.dbm.error):
            for _ in it:
                pass

    def test_batch_is_applied_once_and_dropped_on_error(self, server: str) -> None:
        with cellar.dbm.open(fresh(server), "c") as f:
            f[b"x"] = b"old"
            with pytest.raises(RuntimeError):
                with f.batch() as b:
                    b[b"x"] = b"new"
                    raise RuntimeError("abort")
            assert f[b"x"] == b"old"
            with f.batch() as b:
                b[b"x"] = b"new"
                del b[b"x"]
                b[b"y"] = b"1"
            assert b"x" not in f and f[b"y"] == b"1" and len(f) == 1

    def test_bad_flag(self, server: str) -> None:
        with pytest.raises(ValueError):
            cellar.dbm.open(fresh(server), "cf")
        with pytest.raises(ValueError):
            cellar.dbm.open(fresh(server), "x")

    def test_n_empties_only_its_namespace(self, server: str) -> None:
        a, b = fresh(server, "a"), fresh(server, "b")
        self.init_db(a)
        self.init_db(b)
        cellar.dbm.open(a, "n").close()
        with cellar.dbm.open(b, "r") as f:
            self.read_helper(f)
        with cellar.dbm.open(a, "r") as f:
            assert len(f) == 0


# --- test_shelve: CPython's mapping protocol tests on server shelves ----------------------

try:
    from test import mapping_tests
except ImportError:  # a Python without its test package: the skip says so
    mapping_tests = None  # type: ignore[assignment]


def _mapping_class(server: str, proto: int | None, writeback: bool) -> type:
    base = mapping_tests.BasicTestMappingProtocol

    class ServerShelfMapping(base):  # type: ignore[misc, valid-type]
        _args = {"key1": "value1", "key2": 2, "key3": (1, 2, 3)}

        def setUp(self) -> None:
            self._db: list[Any] = []

        def _empty_mapping(self) -> Any:
            x = cellar.shelve.open(fresh(server, "map"), "n", protocol=proto, writeback=writeback)
            self._db.append(x)
            return x

        def tearDown(self) -> None:
            for db in self._db:
                db.close()
            self._db = []

    ServerShelfMapping.__name__ = f"ServerShelfMapping_{server}_{proto}_{writeback}"
    return ServerShelfMapping


@SERVERS
@pytest.mark.parametrize("proto", [0, 1, 2, None])
@pytest.mark.parametrize("writeback", [False, True])
def test_cpython_mapping_protocol_on_server_shelf(
    server: str, proto: int | None, writeback: bool
) -> None:
    base_url(server)
    if mapping_tests is None:
        pytest.skip("this Python has no test package (test.mapping_tests)")
    cls = _mapping_class(server, proto, writeback)
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(cls)
    result = unittest.TestResult()
    suite.run(result)
    problems = [f"{t.id()}: {tb}" for t, tb in result.failures + result.errors]
    assert not problems, "\n".join(problems)
    assert result.testsRun >= 10
    # The count test_shelve reports (per class): visible with -rA / in the note.
    print(f"{cls.__name__}: {result.testsRun} mapping tests passed")


@SERVERS
class TestShelve:
    def test_close(self, server: str) -> None:
        d1: Any = {}
        s = cellar.shelve.open(fresh(server), "c", protocol=2, writeback=False)
        s["key1"] = [1, 2, 3, 4]
        assert s["key1"] == [1, 2, 3, 4]
        assert len(s) == 1
        s.close()
        with pytest.raises(ValueError):
            len(s)
        with pytest.raises(ValueError):
            s["key1"]
        del d1

    def test_mutable_entry(self, server: str) -> None:
        url = fresh(server)
        with cellar.shelve.open(url, "c", writeback=False) as s:
            s["key1"] = [1, 2, 3, 4]
            s["key1"].append(5)
            assert s["key1"] == [1, 2, 3, 4]
        with cellar.shelve.open(url, "c", writeback=True) as s:
            s["key1"].append(5)
            assert s["key1"] == [1, 2, 3, 4, 5]
        with cellar.shelve.open(url, "r") as s:
            assert s["key1"] == [1, 2, 3, 4, 5]

    def test_keyencoding(self, server: str) -> None:
        with cellar.shelve.open(fresh(server), "c") as s:
            key = "Pöp"
            s[key] = [1, 2, 3]
            assert s[key] == [1, 2, 3]
            assert key in s
            assert list(s) == [key]

    def test_writeback_also_writes_immediately(self, server: str) -> None:
        url = fresh(server)
        with cellar.shelve.open(url, "c", writeback=True) as s:
            s["key"] = [1]
            p1 = s.writeback
            assert p1
            with cellar.dbm.open(url, "r") as raw:
                assert pickle.loads(raw[b"key"]) == [1]

    def test_any_picklable_object(self, server: str) -> None:
        import collections
        import datetime
        import decimal

        value = {
            "when": datetime.datetime(2026, 12, 4, 12, 0),
            "amount": decimal.Decimal("1.10"),
            "counts": collections.Counter("hello"),
            (1, 2): {frozenset({1}), None},
        }
        url = fresh(server)
        with cellar.shelve.open(url) as s:
            s["v"] = value
        with cellar.shelve.open(url, "r") as s:
            assert s["v"] == value

    def test_codec_is_recorded_in_the_namespace(self, server: str) -> None:
        url = fresh(server)
        with cellar.shelve.open(url, "c", codec="marshal") as s:
            s["m"] = {"a": (1, 2.5, b"x")}
        assert cellar.dbm.whichdb(url) == KIND[server]
        with cellar.dbm.open(url, "r") as raw:
            assert raw.value_encoding == ("marshal", 4)
        # Opened without codec=: the recorded one is used.
        with cellar.shelve.open(url, "r") as s:
            assert s["m"] == {"a": (1, 2.5, b"x")}
        with pytest.raises(cellar.shelve.ShelveError):
            cellar.shelve.open(url, "r", codec="pickle")
        url2 = fresh(server)
        with cellar.shelve.open(url2, "c", protocol=4) as s:
            s["p"] = [1]
        with cellar.dbm.open(url2, "r") as raw:
            assert raw.value_encoding == ("pickle", 4)

    def test_items_and_iteration_are_paged(self, server: str) -> None:
        url = fresh(server)
        with cellar.shelve.open(url, "c") as s:
            with s.batch() as b:
                for i in range(2100):
                    b[f"k{i}"] = {"i": i}
            items = s.items()
            assert len(items) == 2100
            assert ("k7", {"i": 7}) in items
            got = dict(items)
            assert got == {f"k{i}": {"i": i} for i in range(2100)}
            assert sorted(s) == sorted(got)
            assert sorted(v["i"] for v in s.values()) == list(range(2100))

    def test_items_decode_like_getitem_in_every_codec(self, server: str) -> None:
        # items() on a server store decodes natively for UTF-8 keys; other key encodings,
        # writeback shelves and custom codecs take the Python path: all agree with s[k].
        cases: list[dict[str, Any]] = [
            {},
            {"safe": True},
            {"codec": "marshal"},
            {"protocol": 0},
            {"writeback": True},
            {"serializer": lambda v, p: repr(v).encode(), "deserializer": lambda b: ("custom", b)},
        ]
        for kwargs in cases:
            url = fresh(server)
            with cellar.shelve.open(url, "c", **kwargs) as s:
                with s.batch() as b:
                    for i in range(1200):
                        b[f"k\u00e9{i}"] = {"i": i, "t": (i, "x")} if "serializer" not in kwargs else i
                by_items = dict(s.items())
                assert by_items == {k: s[k] for k in s}, kwargs
                assert len(by_items) == 1200
        url = fresh(server)
        with cellar.shelve.open(url, "c") as s:
            s["a"] = 1
        with cellar.dbm.open(url, "w") as raw:
            raw[b"\xff bad"] = raw[b"a"]
        with cellar.shelve.open(url, "r") as s:
            with pytest.raises(UnicodeDecodeError):
                dict(s.items())
        with cellar.shelve.Shelf(cellar.dbm.open(url, "r"), keyencoding="latin-1") as s:
            assert dict(s.items()) == {"a": 1, "\xff bad": 1}
        # The database closed under an iterator: a clear error, not a crash.
        s = cellar.shelve.open(url, "r")
        it = iter(s.items())
        s.close()
        with pytest.raises(cellar.dbm.error):
            next(it)

    def test_safe_shelf(self, server: str) -> None:
        url = fresh(server)
        with cellar.shelve.open(url, "c", safe=True) as s:
            s["k"] = {"list": [1, 2], "t": (None, True)}
        with cellar.shelve.open(url, "r", safe=True) as s:
            assert s["k"] == {"list": [1, 2], "t": (None, True)}


# --- interop: file -> Redis -> Cluster -> PostgreSQL -> file ------------------------------


def _copy(src: str, dst: str) -> None:
    """What `cellar convert` does, through the Python API: every pair, the value encoding kept."""
    with cellar.dbm.open(src, "r") as a:
        enc = a.value_encoding
        b = cellar.dbm._open(vars(cellar.dbm), dst, "n", 0o666, enc)
        with b:
            with b.batch() as batch:
                for k in a.keys():
                    batch[k] = a[k]


def test_shelf_round_trip_file_redis_cluster_postgresql_file(tmp_path: Path) -> None:
    urls = [fresh("redis", "trip"), fresh("cluster", "trip"), fresh("postgresql", "trip")]
    first = str(tmp_path / "first.shelf")
    last = str(tmp_path / "last.shelf")
    objects = {f"k{i}": {"i": i, "t": (i, str(i)), "b": bytes([i % 256]) * i} for i in range(300)}
    with cellar.shelve.open(first, "n", protocol=5) as s:
        s.update(objects)
    chain = [first, *urls, last]
    for a, b in zip(chain, chain[1:]):
        _copy(a, b)
    with cellar.dbm.open(first, "r") as a, cellar.dbm.open(last, "r") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(a[k] == b[k] for k in a.keys())
        assert a.value_encoding == b.value_encoding == ("pickle", 5)
    for url in urls:
        with cellar.dbm.open(url, "r") as d:
            assert d.value_encoding == ("pickle", 5)
    with cellar.shelve.open(last, "r") as s:
        assert dict(s) == objects


# --- several client processes at once ------------------------------------------------------


def _writer(url: str, who: int, n: int) -> None:
    db = cellar.dbm.open(url, "w")
    for i in range(n):
        db[f"{who}:{i}"] = str(i)
        if i % 50 == 0:
            with db.batch() as b:
                b[f"{who}:batch:{i}"] = b"x"
                b[f"{who}:batch:{i}:2"] = b"y"
    db.close()


@SERVERS
def test_concurrent_client_processes(server: str) -> None:
    url = fresh(server, "conc")
    cellar.dbm.open(url, "c").close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, w, 300)) for w in range(4)]
    for p in procs:
        p.start()
    # A reader in this process sees a consistent count while they write.
    with cellar.dbm.open(url, "r") as reader:
        while any(p.is_alive() for p in procs):
            n = len(reader)
            assert 0 <= n <= 4 * (300 + 12)
            time.sleep(0.05)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with cellar.dbm.open(url, "r") as db:
        assert len(db) == 4 * (300 + 2 * 6)
        assert len(set(db.keys())) == len(db)
        for w in range(4):
            assert db[f"{w}:299"] == b"299"


# --- faults and secrets -------------------------------------------------------------------


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_server_raises_connection_error_quickly() -> None:
    port = _closed_port()
    for url in (
        f"redis://:pw-not-shown@127.0.0.1:{port}/0?connect_timeout=2",
        f"postgresql://u:pw-not-shown@127.0.0.1:{port}/db?connect_timeout=2",
    ):
        t = time.monotonic()
        with pytest.raises(cellar.dbm.ServerConnectionError) as info:
            cellar.dbm.open(url, "c")
        assert time.monotonic() - t < 10
        assert isinstance(info.value, ConnectionError)
        assert isinstance(info.value, cellar.dbm.error[0])
        assert "pw-not-shown" not in str(info.value)
        assert "***" in str(info.value)


def _redis_cli(url: str, *args: str) -> str:
    port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
    return subprocess.run(
        ["redis-cli", "-p", port, *args], capture_output=True, text=True, check=True
    ).stdout


def test_redis_timeout_is_a_timeout_error_then_recovers() -> None:
    url = fresh("redis", "slow") + "&timeout=0.5"
    db = cellar.dbm.open(url, "c")
    db[b"k"] = b"v"
    pauser = threading.Thread(target=_redis_cli, args=(url, "CLIENT", "PAUSE", "1500", "ALL"))
    pauser.start()
    time.sleep(0.2)
    with pytest.raises(cellar.dbm.ServerTimeoutError) as info:
        db[b"k"]
    assert isinstance(info.value, TimeoutError)
    pauser.join()
    time.sleep(1.5)
    assert db[b"k"] == b"v"
    db.close()


def test_dropped_redis_connection_raises_once_then_reconnects() -> None:
    url = fresh("redis", "drop")
    db = cellar.dbm.open(url, "c")
    db[b"k"] = b"v"
    _redis_cli(url, "CLIENT", "KILL", "TYPE", "normal")
    with pytest.raises(cellar.dbm.ServerConnectionError):
        db[b"k"]
    assert db[b"k"] == b"v"
    db.close()


@SERVERS
def test_wrong_password_is_never_shown(server: str) -> None:
    base = base_url(server)
    if server == "postgresql":
        url = base.replace("postgres@", "postgres:Secret-PW-1@", 1)
    else:
        url = base.replace("://", "://nobody:Secret-PW-1@", 1)
    sep = "&" if "?" in url else "?"
    with pytest.raises(cellar.dbm.error[0]) as info:
        cellar.dbm.open(url + sep + ("table=x" if server == "postgresql" else "prefix=x"), "c")
    assert "Secret-PW-1" not in str(info.value)
    assert "authentication failed" in str(info.value)


# --- TLS, and passwords from the environment ----------------------------------------------


def _tls_env() -> tuple[str, str, str]:
    vals = []
    for var in ("CELLAR_TEST_REDIS_TLS_URL", "CELLAR_TEST_REDIS_TLS_PASSWORD", "CELLAR_TEST_TLS_CA"):
        v = os.environ.get(var)
        if not v:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{var} is not set under CI=true")
            pytest.skip(f"{var} is not set (run under scripts/test.sh or scripts/servers.sh)")
        vals.append(v)
    return vals[0], vals[1], vals[2]


def test_shelf_over_tls_redis_with_a_password() -> None:
    base, pw, _ = _tls_env()
    url = base.replace("rediss://", f"rediss://:{pw}@", 1) + f"&prefix=py{os.getpid()}tls:"
    with cellar.shelve.open(url, "n") as s:
        s["k"] = {"over": "tls"}
        with s.batch() as b:
            for i in range(1200):
                b[f"b{i}"] = i
    with cellar.shelve.open(url, "r") as s:
        assert s["k"] == {"over": "tls"}
        assert len(s) == 1201 and sorted(s)[:2] == ["b0", "b1"]
        assert pw not in repr(s.dict)
    wrong = base.replace("rediss://", "rediss://:Wrong-PW-2@", 1) + "&prefix=x:"
    with pytest.raises(cellar.dbm.error[0]) as info:
        cellar.dbm.open(wrong, "c")
    assert "authentication failed" in str(info.value)
    assert "Wrong-PW-2" not in str(info.value) and pw not in str(info.value)
    other = os.environ["CELLAR_TEST_TLS_OTHER_CA"]
    untrusted = base.replace(os.environ["CELLAR_TEST_TLS_CA"], other).replace(
        "rediss://", f"rediss://:{pw}@", 1
    )
    with pytest.raises(cellar.dbm.error[0]) as info:
        cellar.dbm.open(untrusted + "&prefix=x:", "c")
    assert "TLS handshake failed" in str(info.value)
    assert pw not in str(info.value)


def test_postgresql_verify_full() -> None:
    _, _, ca = _tls_env()
    url = fresh("postgresql", "tls") + f"&sslmode=verify-full&sslrootcert={ca}"
    with cellar.shelve.open(url, "n") as s:
        s["k"] = [1, 2, 3]
    with cellar.shelve.open(url, "r") as s:
        assert s["k"] == [1, 2, 3]
    bad = url.replace(ca, os.environ["CELLAR_TEST_TLS_OTHER_CA"])
    with pytest.raises(cellar.dbm.error[0]) as info:
        cellar.dbm.open(bad, "r")
    assert "TLS handshake failed" in str(info.value)


def _cli() -> str:
    root = Path(__file__).resolve().parents[2]
    exe = root / "target" / "release" / "cellar"
    if not exe.exists():
        env = dict(os.environ)
        env.pop("CARGO_TARGET_DIR", None)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "cellar-cli"], cwd=root, env=env, check=True)
    return str(exe)


def test_passwords_from_the_environment_reach_the_cli_but_never_its_output() -> None:
    base, pw, _ = _tls_env()
    url = base + f"&prefix=py{os.getpid()}env:"
    env = dict(os.environ, REDISCLI_AUTH=pw)
    out = subprocess.run(
        [_cli(), "set", url, "k", "v"], env=env, capture_output=True, text=True, check=True
    )
    out = subprocess.run([_cli(), "info", url], env=env, capture_output=True, text=True, check=True)
    assert pw not in out.stdout + out.stderr
    env["REDISCLI_AUTH"] = "Env-Wrong-PW-3"
    out = subprocess.run([_cli(), "get", url, "k"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "authentication failed" in out.stderr
    assert "Env-Wrong-PW-3" not in out.stdout + out.stderr and pw not in out.stderr
    # PostgreSQL takes PGPASSWORD (the suite's URL carries none); a wrong one is not shown.
    pg = fresh("postgresql", "env")
    env = dict(os.environ, PGPASSWORD="Env-Wrong-PW-4")
    out = subprocess.run([_cli(), "info", pg], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "authentication failed" in out.stderr
    assert "Env-Wrong-PW-4" not in out.stdout + out.stderr


# --- interop through the CLI: a shelf file -> Redis -> Cluster -> PostgreSQL -> file -------


def test_shelf_converted_by_the_cli_through_every_server_is_identical(tmp_path: Path) -> None:
    urls = [fresh("redis", "cli"), fresh("cluster", "cli"), fresh("postgresql", "cli")]
    first = str(tmp_path / "first.shelf")
    last = str(tmp_path / "last.shelf")
    objects = {f"k{i}": {"i": i, "s": {i, -i}, "f": i / 7, "b": bytes(range(i % 256))} for i in range(2500)}
    with cellar.shelve.open(first, "n", protocol=4) as s:
        s.update(objects)
    chain = [first, *urls, last]
    for a, b in zip(chain, chain[1:]):
        out = subprocess.run([_cli(), "convert", a, b], capture_output=True, text=True, check=True)
        assert "converted 2500 keys" in out.stdout + out.stderr
    with cellar.dbm.open(first, "r") as a, cellar.dbm.open(last, "r") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(a[k] == b[k] for k in a.keys())  # the pickled bytes, unchanged
        assert a.value_encoding == b.value_encoding == ("pickle", 4)
    for url in urls:
        with cellar.shelve.open(url, "r") as s:
            assert s["k7"] == objects["k7"]
    with cellar.shelve.open(last, "r") as s:
        assert dict(s) == objects
    dumps = [
        subprocess.run([_cli(), "dump", p], capture_output=True, check=True).stdout for p in (first, last)
    ]
    assert sorted(dumps[0].splitlines()) == sorted(dumps[1].splitlines())
