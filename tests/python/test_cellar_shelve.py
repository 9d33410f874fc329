"""cellar.shelve beyond CPython's own test_shelve (which runs separately through the shim):
the seed use case, codecs and the native header, writeback that writes back only changed
entries, batches, interop with CPython's stdlib shelve and with the Rust Shelf API, and the CLI
decoding a shelf."""

from __future__ import annotations

import json
import os
import pickle
import shelve as std_shelve
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import cellar.dbm
import cellar.shelve as shelve

ROOT = Path(__file__).resolve().parents[2]


def test_seed_use_case(tmp_path: Path) -> None:
    path = str(tmp_path / "test.shelve")
    db = shelve.open(path)
    db["test key"] = "test data"
    db.close()
    with shelve.open(path, "r") as db:
        assert db["test key"] == "test data"
        assert list(db.keys()) == ["test key"]
    assert cellar.dbm.whichdb(path) == "dbm.native"
    # One file at exactly the path given.
    assert os.listdir(tmp_path) == ["test.shelve"]


def test_any_picklable_object_by_default(tmp_path: Path) -> None:
    import collections
    import datetime
    import decimal

    value = {
        "when": datetime.datetime(2026, 11, 24, 1, 2, 3),
        "price": decimal.Decimal("1.10"),
        "counts": collections.Counter("hello"),
        "shared": None,
    }
    inner = [1, 2]
    value["shared"] = (inner, inner)
    with shelve.open(str(tmp_path / "s")) as db:
        db["k"] = value
    with shelve.open(str(tmp_path / "s")) as db:
        got = db["k"]
    assert got == value
    assert got["shared"][0] is got["shared"][1]


def test_protocol_default_and_recorded(tmp_path: Path) -> None:
    with shelve.open(str(tmp_path / "s")) as db:
        assert db._protocol == pickle.DEFAULT_PROTOCOL
        assert db.dict.value_encoding == ("pickle", pickle.DEFAULT_PROTOCOL)
    with shelve.open(str(tmp_path / "p2"), protocol=2) as db:
        db["x"] = [1]
        assert db.dict["x"][:2] == b"\x80\x02"
        assert db.dict.value_encoding == ("pickle", 2)


def test_marshal_codec_recorded_in_header(tmp_path: Path) -> None:
    path = str(tmp_path / "m")
    value = {"id": 1, "name": "user1", "tags": ("a", "b"), "score": 1.5, "s": {1, 2}}
    with shelve.open(path, codec="marshal") as db:
        db["u"] = value
        assert db.stats()["codec"] == "marshal"
        with pytest.raises(ValueError):
            db["bad"] = object()  # marshal takes basic types only
    assert "bad" not in shelve.open(path, "r")
    # Reopened without saying so: the header says marshal.
    with shelve.open(path) as db:
        assert db._codec == "marshal"
        assert db["u"] == value
    with pytest.raises(shelve.ShelveError, match="shelf of marshal values"):
        shelve.open(path, codec="pickle")
    pickled = str(tmp_path / "p")
    shelve.open(pickled).close()
    with pytest.raises(shelve.ShelveError, match="shelf of pickle values"):
        shelve.open(pickled, codec="marshal")


def test_marshal_codec_reads_raise_the_marshal_loads_audit_event(tmp_path: Path) -> None:
    # Every value read from a marshal shelf raises `marshal.loads` with the stored bytes, as
    # `cellar.marshal.loads` (and CPython's marshal.loads) does, whichever path decodes it.
    code = (
        "import sys, marshal, cellar.shelve as shelve\n"
        "ev = []\n"
        "sys.addaudithook(lambda e, a: ev.append(a) if e == 'marshal.loads' else None)\n"
        "value = {'id': 1, 'tags': ('a', 'b'), 'score': 1.5}\n"
        "with shelve.open(sys.argv[1], codec='marshal') as db:\n"
        "    db['u'] = value\n"
        "    del ev[:]\n"
        "    assert db['u'] == value and db.get('u') == value\n"
        "    assert list(db.values()) == [value] and dict(db.items()) == {'u': value}\n"
        "    assert len(ev) == 4, ev\n"
        "    assert all(a == (marshal.dumps(value, 4),) for a in ev), ev\n"
        "    assert all(type(a[0]) is bytes for a in ev), ev\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr


def test_marshal_codec_refused_where_it_cannot_be_recorded(tmp_path: Path) -> None:
    path = str(tmp_path / "d")
    cellar.dbm.dumb.open(path, "c").close()
    with pytest.raises(shelve.ShelveError, match="needs a native store"):
        shelve.open(path, codec="marshal")
    with pytest.raises(shelve.ShelveError, match="codec must be"):
        shelve.open(str(tmp_path / "x"), codec="json")


def test_serializer_pair(tmp_path: Path) -> None:
    def ser(obj: object, protocol: int) -> bytes:
        return json.dumps(obj).encode()

    with pytest.raises(shelve.ShelveError, match="given together"):
        shelve.open(str(tmp_path / "a"), serializer=ser)
    with pytest.raises(shelve.ShelveError, match="given together"):
        shelve.Shelf({}, deserializer=json.loads)
    with pytest.raises(shelve.ShelveError, match="cannot be combined"):
        shelve.Shelf({}, serializer=ser, deserializer=json.loads, codec="marshal")
    with shelve.open(str(tmp_path / "j"), serializer=ser, deserializer=json.loads) as db:
        db["k"] = {"a": [1, 2]}
        assert db.dict["k"] == b'{"a": [1, 2]}'
        assert db["k"] == {"a": [1, 2]}


class Recorder(dict):  # type: ignore[type-arg]
    """A backing mapping that counts writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes.append(key)
        super().__setitem__(key, value)


def test_writeback_writes_back_only_changed_entries() -> None:
    d = Recorder()
    s = shelve.Shelf(d, writeback=True)
    for i in range(10):
        s[f"k{i}"] = [i]
    assert len(d.writes) == 10
    d.writes.clear()
    for i in range(10):
        s[f"k{i}"]  # read into the cache
    s["k3"].append(33)
    s["k7"].append(77)
    s.sync()
    assert sorted(d.writes) == [b"k3", b"k7"]
    assert pickle.loads(d[b"k3"]) == [3, 33]
    d.writes.clear()
    s["k1"]
    s.close()
    assert d.writes == []  # read but not changed: nothing written at close


def test_writeback_on_native_store(tmp_path: Path) -> None:
    path = str(tmp_path / "wb")
    with shelve.open(path, writeback=True) as db:
        db["list"] = [1]
        db["list"].append(2)
    with shelve.open(path) as db:
        assert db["list"] == [1, 2]


def test_batch_commits_together_or_not_at_all(tmp_path: Path) -> None:
    path = str(tmp_path / "b")
    with shelve.open(path) as db:
        with db.batch() as b:
            for i in range(1000):
                b[f"k{i}"] = {"i": i}
            del b["k5"]
            assert len(b) == 1001
            assert len(db) == 0  # nothing visible before the block ends
        assert len(db) == 999
        with pytest.raises(RuntimeError):
            with db.batch() as b:
                b["new"] = 1
                raise RuntimeError("abort")
        assert "new" not in db
        with pytest.raises(TypeError, match="keys must be str"):
            with db.batch() as b:
                b[b"bytes"] = 1  # type: ignore[index]
    # On a plain mapping the batch writes through at the end.
    d: dict[bytes, bytes] = {}
    s = shelve.Shelf(d)
    with s.batch() as b:
        b["x"] = 1
    assert pickle.loads(d[b"x"]) == 1


def test_clear_reorganize_stats_and_closed(tmp_path: Path) -> None:
    path = str(tmp_path / "c")
    db = shelve.open(path)
    for i in range(500):
        db[f"k{i}"] = "x" * 200
    for i in range(400):
        del db[f"k{i}"]
    before = os.path.getsize(path)
    db.reorganize()
    assert os.path.getsize(path) < before
    st = db.stats()
    assert st["keys"] == 100 and st["codec"] == "pickle" and st["backend"] == "dbm.native"
    db.clear()
    assert len(db) == 0
    db.close()
    db.close()  # twice is fine
    with pytest.raises(ValueError, match="closed shelf"):
        db["k"]
    with pytest.raises(ValueError, match="closed shelf"):
        db["k"] = 1
    with pytest.raises(ValueError, match="closed shelf"):
        len(db)


def test_keys_and_errors_match_cpython(tmp_path: Path) -> None:
    with shelve.open(str(tmp_path / "e")) as db:
        with pytest.raises(KeyError) as ours:
            db["missing"]
        assert ours.value.args == (b"missing",)  # as CPython's shelve over dbm
        with pytest.raises(AttributeError):
            db[1]  # type: ignore[index]  # key.encode
        with pytest.raises(UnicodeEncodeError):
            db["\udc80"] = 1
        db["é"] = 1
        assert "é" in db and "e" not in db
        assert db.dict["é".encode()] == pickle.dumps(1, pickle.DEFAULT_PROTOCOL)
        del db["é"]
        with pytest.raises(KeyError):
            del db["é"]


def test_stdlib_shelf_on_dbm_dumb_opens_in_cellar(tmp_path: Path) -> None:
    import dbm.dumb as std_dumb

    path = str(tmp_path / "std")
    values = {"a": [1, 2], "quote'\"\n": {"x": (1.5, None)}, "": b"\x00\xff", "ü": {1, 2}}
    with std_shelve.Shelf(std_dumb.open(path, "c"), protocol=2) as s:
        for k, v in values.items():
            s[k] = v
    assert cellar.dbm.whichdb(path) == "dbm.dumb"
    with shelve.open(path, "r") as db:
        assert dict(db.items()) == values
    with shelve.open(path, "r", safe=True) as db:
        assert dict(db.items()) == values
    # cellar writes, the stdlib reads.
    with shelve.open(path) as db:
        db["added"] = ("by", "cellar")
    with std_shelve.Shelf(std_dumb.open(path, "r")) as s:
        assert s["added"] == ("by", "cellar")
        assert s["a"] == [1, 2]


class Account:
    def __init__(self, owner: str, balance: float) -> None:
        self.owner = owner
        self.balance = balance

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Account) and vars(self) == vars(other)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch " + EXPLOIT_MARK,))


EXPLOIT_MARK = os.path.join(tempfile.gettempdir(), f"cellar-shelf-exploit-{os.getpid()}")


def test_safe_shelves_decode_through_cellar_pickle(tmp_path: Path) -> None:
    path = str(tmp_path / "safe.shelf")
    with shelve.open(path) as db:
        db["plain"] = {"a": [1, 2.5, "x"], "b": (None, b"\x00")}
        db["account"] = Account("ada", 12.5)
        db["evil"] = Exploit()
    with shelve.open(path, "r", safe=True) as db:
        assert db["plain"] == {"a": [1, 2.5, "x"], "b": (None, b"\x00")}
        with pytest.raises(pickle.UnpicklingError, match="Account"):
            db["account"]
        with pytest.raises(pickle.UnpicklingError, match="os.system|posix.system"):
            db["evil"]
    with shelve.open(path, "r", allow=(Account,)) as db:
        assert db["account"] == Account("ada", 12.5)
        with pytest.raises(pickle.UnpicklingError):
            db["evil"]
    assert not os.path.exists(EXPLOIT_MARK)
    # The default codec is CPython's pickle, exactly as the stdlib: it would run the exploit.


def _shelf_tool() -> str:
    """The Rust Shelf driver (crates/cellar-shelve/examples/shelf_tool.rs), built by the Rust
    test stage; built here if missing."""
    exe = ROOT / "target" / "release" / "examples" / "shelf_tool"
    if not exe.exists():
        env = dict(os.environ)
        env.pop("CARGO_TARGET_DIR", None)
        subprocess.run(
            ["cargo", "build", "--release", "-q", "-p", "cellar-shelve", "--example", "shelf_tool"],
            cwd=ROOT,
            env=env,
            check=True,
        )
    return str(exe)


INTEROP_VALUES = {
    "int": 10**30,
    "neg": -5,
    "float": -0.0,
    "str": "h\xe9llo \U0001f600 'q' \"d\"\n",
    "bytes": b"\x00\x01\xff'",
    "tuple": (1, (2, 3), []),
    "dict": {"a": 1, (1, 2): [None, True, False]},
    "set": {1, 2, 3},
    "frozenset": frozenset({"x"}),
    "complex": 1.5 - 2j,
    "bytearray": bytearray(b"ab"),
    "empty": "",
    "key with\ttab": None,
}


@pytest.mark.parametrize("codec", [["pickle", "0"], ["pickle", "2"], ["pickle", "5"], ["marshal", "4"]])
def test_rust_shelf_opens_in_python(tmp_path: Path, codec: list[str]) -> None:
    values = dict(INTEROP_VALUES)
    if codec[0] == "marshal":
        values["bytearray"] = b"ab"  # marshal has no bytearray
    path = str(tmp_path / "rust.shelf")
    lines = "".join(f"{k!r}\t{v!r}\n" for k, v in values.items())
    subprocess.run([_shelf_tool(), "write", path, *codec], input=lines.encode(), check=True)
    with shelve.open(path, "r") as db:
        assert db._codec == codec[0]
        got = dict(db.items())
    assert got == values
    for k, v in values.items():
        assert type(got[k]) is type(v)


@pytest.mark.parametrize("codec", [None, "marshal"])
def test_python_shelf_opens_in_rust(tmp_path: Path, codec: str | None) -> None:
    values = dict(INTEROP_VALUES)
    if codec == "marshal":
        values["bytearray"] = b"ab"
    path = str(tmp_path / "py.shelf")
    with shelve.open(path, codec=codec) as db:
        for k, v in values.items():
            db[k] = v
    out = subprocess.run([_shelf_tool(), "read", path], capture_output=True, check=True)
    got = {}
    for line in out.stdout.decode().splitlines():
        k, r = line.split("\t", 1)
        got[eval(k)] = r  # noqa: S307 (our own tool's repr output)
    assert sorted(got) == sorted(values)
    canon = _canon()
    for k, v in values.items():
        assert got[k] == canon(v), k


def _canon():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "crates" / "cellar-testkit" / "python"))
    try:
        from canon import canon
    finally:
        sys.path.pop(0)
    return canon


def _cellar_cli() -> str:
    exe = ROOT / "target" / "release" / "cellar"
    if not exe.exists():
        env = dict(os.environ)
        env.pop("CARGO_TARGET_DIR", None)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "cellar-cli"], cwd=ROOT, env=env, check=True)
    return str(exe)


def test_cli_dump_decodes_shelves_safely(tmp_path: Path) -> None:
    import dbm.dumb as std_dumb

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("touch " + str(tmp_path / "PWNED"),))

    # A stdlib shelf on dbm.dumb holding a plain value and a malicious object.
    path = str(tmp_path / "std")
    with std_shelve.Shelf(std_dumb.open(path, "c")) as s:
        s["plain"] = {"a": (1, 2)}
        s["evil"] = Evil()
    out = subprocess.run(
        [_cellar_cli(), "dump", path, "--decode", "pickle"], capture_output=True, check=True
    )
    text = out.stdout.decode()
    assert "plain" in text and "(1, 2)" in text
    assert "system" in text  # shown as an inert object
    assert not (tmp_path / "PWNED").exists()
    # A native shelf records its codec: dump decodes it without being told.
    native = str(tmp_path / "native")
    with shelve.open(native, codec="marshal") as db:
        db["m"] = [1, 2, 3]
    out = subprocess.run([_cellar_cli(), "dump", native], capture_output=True, check=True)
    assert "[1, 2, 3]" in out.stdout.decode()


@pytest.mark.parametrize("writeback", [False, True])
def test_shelf_writes_inside_its_batch_block_are_one_commit(
    tmp_path: Path, writeback: bool
) -> None:
    # Both forms of the block: `b[key] = value` and `shelf[key] = value` while it is open
    # (writeback shelves take the Python path, the others the native one).
    path = str(tmp_path / "s")
    with shelve.open(path, writeback=writeback) as db:
        db["keep"] = 0
        with pytest.raises(RuntimeError):
            with db.batch():
                db["a"] = 1
                del db["keep"]
                raise RuntimeError
        db.sync()
        assert sorted(db) == ["keep"]
        with db.batch() as b:
            db["a"] = 1
            b["b"] = 2
            db["b"] = 3  # later write wins, in the order made
            b["c"] = [4]
            assert "c" not in cellar.dbm.open(path, "r")
        assert db["a"] == 1 and db["b"] == 3 and db["c"] == [4]
    with shelve.open(path, "r") as db:
        assert dict(db) == {"keep": 0, "a": 1, "b": 3, "c": [4]}
