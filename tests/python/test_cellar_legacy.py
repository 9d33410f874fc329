"""Legacy stores written by Debian's /usr/bin/python3 (dbm.gnu on libgdbm, dbm.ndbm on Berkeley
DB 5.3, shelve on dbm.gnu), opened read-only by cellar.dbm and cellar.shelve with no C library.

The fixtures come from scripts/legacy-fixtures.py, which also records the pairs the C library
reads; cellar must read exactly those. Skipped (with the reason) only when /usr/bin/python3 has
no dbm.gnu and CI is not "true".
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import cellar.dbm
import cellar.dbm.gnu
import cellar.dbm.ndbm
import cellar.shelve

SYSTEM_PYTHON = "/usr/bin/python3"
ROOT = Path(__file__).resolve().parents[2]


def _tools_missing() -> str | None:
    try:
        r = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import dbm.gnu, dbm.ndbm"], capture_output=True, text=True
        )
    except OSError as e:
        return f"{SYSTEM_PYTHON} cannot run: {e}"
    if r.returncode != 0:
        return f"{SYSTEM_PYTHON} lacks dbm.gnu/dbm.ndbm: {r.stderr.strip()}"
    return None


class Fixture:
    def __init__(self, d: Path, name: str, kind: str, count: int) -> None:
        self.name, self.kind, self.count = name, kind, count
        self.base = d / name
        self.pairs_file = d / (name + ".pairs")
        if name == "compat_pair":
            self.file = d / (name + ".pag")
        elif kind == "ndbm":
            self.file = d / (name + ".db")
        else:
            self.file = self.base

    def pairs(self) -> dict[bytes, bytes]:
        out = {}
        for line in self.pairs_file.read_text().splitlines():
            k, v = line.split(" ")
            out[bytes.fromhex(k)] = bytes.fromhex(v)
        return out


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Fixture]]:
    why = _tools_missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the legacy fixtures cannot be made: {why}")
        pytest.skip(why)
    given = os.environ.get("CELLAR_LEGACY_FIXTURES")
    if given and (Path(given) / "manifest.txt").exists():
        d = Path(given)
    else:
        d = tmp_path_factory.mktemp("legacy")
        subprocess.run(
            [SYSTEM_PYTHON, str(ROOT / "scripts" / "legacy-fixtures.py"), str(d)], check=True
        )
    out = {}
    for line in (d / "manifest.txt").read_text().splitlines():
        name, kind, count = line.split(" ")
        out[name] = Fixture(d, name, kind, int(count))
    yield out


def _expected_kind(f: Fixture) -> str:
    return "dbm.gnu" if f.kind == "gnu" and f.name != "compat_pair" else "dbm.ndbm"


def test_every_fixture_reads_as_the_c_library_reads_it(fixtures: dict[str, Fixture]) -> None:
    for f in fixtures.values():
        assert cellar.dbm.whichdb(str(f.base)) == _expected_kind(f), f.name
        with cellar.dbm.open(str(f.base), "r") as db:
            want = f.pairs()
            assert len(db) == f.count, f.name
            got = {k: db[k] for k in db.keys()}
            assert got == want, f.name
            if want:
                k = next(iter(want))
                assert k in db
                assert db.get(k) == want[k]
            assert b"surely not a key" not in db
            with pytest.raises(KeyError):
                db[b"surely not a key"]


def test_backend_modules_open_directly(fixtures: dict[str, Fixture]) -> None:
    f = fixtures["gnu_small"]
    with cellar.dbm.gnu.open(str(f.file)) as db:
        assert db[b"test key"] == b"test data"
        assert db["test key"] == b"test data"
    f = fixtures["ndbm_small"]
    with cellar.dbm.ndbm.open(str(f.base), "r") as db:
        assert db[b"test key"] == b"test data"
    f = fixtures["ndbm_be_small"]
    with cellar.dbm.ndbm.open(str(f.base), "r") as db:
        assert db[b"test key"] == b"test data"
    assert "cellar.dbm.gnu" not in cellar.dbm._names
    assert "cellar.dbm.ndbm" not in cellar.dbm._names


@pytest.mark.parametrize("name", ["gnu_small", "ndbm_small", "compat_pair"])
@pytest.mark.parametrize("flag", ["w", "c", "n"])
def test_writing_flags_name_cellar_convert(
    fixtures: dict[str, Fixture], name: str, flag: str
) -> None:
    f = fixtures[name]
    before = f.file.read_bytes()
    with pytest.raises(cellar.dbm.error[0], match=r"read-only in cellar.*cellar convert"):
        cellar.dbm.open(str(f.base), flag)
    mod = cellar.dbm.gnu if name == "gnu_small" else cellar.dbm.ndbm
    with pytest.raises(cellar.dbm.error[0], match="cellar convert"):
        mod.open(str(f.base), flag)
    assert f.file.read_bytes() == before


def test_writes_on_an_open_legacy_db_are_refused(fixtures: dict[str, Fixture]) -> None:
    f = fixtures["gnu_small"]
    with cellar.dbm.open(str(f.base), "r") as db:
        with pytest.raises(cellar.dbm.error[0], match="cellar convert"):
            db[b"k"] = b"v"
        with pytest.raises(cellar.dbm.error[0], match="cellar convert"):
            del db[b"test key"]
    assert isinstance(cellar.dbm.error[0](), OSError)


def test_stdlib_shelf_on_dbm_gnu_opens_read_only(fixtures: dict[str, Fixture]) -> None:
    f = fixtures["gnu_shelf"]
    with cellar.shelve.open(str(f.base), flag="r") as sh:
        assert sh["test key"] == "test data"
        assert sh["list"] == [1, 2.5, "three", (4, None)]
        assert sh["dict"] == {"a": b"bytes", "n": 10**30}
        assert sorted(sh.keys()) == ["dict", "list", "test key"]
    with pytest.raises(cellar.dbm.error[0], match="cellar convert"):
        cellar.shelve.open(str(f.base), flag="c")


def test_damaged_file_raises_a_dbm_error(
    fixtures: dict[str, Fixture], tmp_path: Path
) -> None:
    data = fixtures["gnu_churn"].file.read_bytes()
    bad = tmp_path / "bad"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(cellar.dbm.error[0], match="damaged GDBM file"):
        with cellar.dbm.open(str(bad), "r") as db:
            list(db.keys())
            for k in db.keys():
                db[k]


def test_macos_ndbm_185_file_reads(tmp_path: Path) -> None:
    # A Berkeley DB 1.85 hash file as macOS/BSD dbm.ndbm writes NAME.db (made by libdb1; the
    # fixture is in the repository, so no C library is needed here).
    src = ROOT / "crates/cellar-legacy/tests/fixtures/db185/db185-be-big.db"
    want = {}
    for line in (src.parent / "db185-big.pairs").read_text().splitlines():
        k, v = line.split(" ")
        want[bytes.fromhex(k)] = bytes.fromhex(v)
    (tmp_path / "mac.db").write_bytes(src.read_bytes())
    base = str(tmp_path / "mac")
    assert cellar.dbm.whichdb(base) == "dbm.ndbm"
    with cellar.dbm.open(base, "r") as db:
        assert {k: db[k] for k in db.keys()} == want
        assert db[b"K" * 9000] == b"big key, small value"
    with pytest.raises(cellar.dbm.error[0], match="cellar convert"):
        cellar.dbm.open(base, "c")


def test_gnu_firstkey_nextkey_walk(fixtures: dict[str, Fixture]) -> None:
    # The stdlib's dbm.gnu idiom: k = db.firstkey(); while k is not None: ...; k = db.nextkey(k)
    f = fixtures["gnu_binary"]
    with cellar.dbm.gnu.open(str(f.file)) as db:
        seen = []
        k = db.firstkey()
        while k is not None:
            seen.append(k)
            k = db.nextkey(k)
        assert sorted(seen) == sorted(f.pairs())
        assert seen == list(db.keys())
        assert db.nextkey(b"no such key") is None
    assert cellar.dbm.gnu.open_flags == "rwcnfsu"
    assert "Berkeley DB" in cellar.dbm.ndbm.library
