"""Every .pyc under the installed CPython's stdlib directory loads with cellar.marshal to a code
object equal to the stdlib marshal's, and cellar's re-dump loads in the stdlib to an equal code
object."""

from __future__ import annotations

import marshal as c_marshal
import os
import sys
import sysconfig

import pytest

import cellar.marshal as r_marshal


def pyc_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.endswith(".pyc"):
                out.append(os.path.join(dirpath, f))
    out.sort()
    return out


FILES = pyc_files()


def code_eq(a: object, b: object) -> bool:
    """Code equality; constants like NaN make even two stdlib loads unequal, so fall back to the
    stdlib's reference-free (version 2) bytes, which are deterministic."""
    return a == b or c_marshal.dumps(a, 2) == c_marshal.dumps(b, 2)


def test_found_many_pyc_files() -> None:
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the stdlib .pyc files are in the running interpreter's own format")
    assert len(FILES) > 1000, FILES[:3]


def test_every_stdlib_pyc_round_trips() -> None:
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the stdlib .pyc files are in the running interpreter's own format")
    checked = 0
    failures: list[tuple[str, str]] = []
    for path in FILES:
        with open(path, "rb") as f:
            blob = f.read()
        if blob[:4] != __import__("importlib.util").util.MAGIC_NUMBER:
            continue  # another interpreter's cache file
        data = blob[16:]
        try:
            expected = c_marshal.loads(data)
        except Exception:  # noqa: BLE001 - a file CPython itself cannot read is not ours to judge
            continue
        try:
            got = r_marshal.loads(data)
            if not code_eq(got, expected):
                failures.append((path, "cellar.loads differs"))
                continue
            again = c_marshal.loads(r_marshal.dumps(expected))
            if not code_eq(again, expected):
                failures.append((path, "stdlib.loads(cellar.dumps) differs"))
                continue
            if not code_eq(r_marshal.loads(r_marshal.dumps(got)), expected):
                failures.append((path, "cellar round trip differs"))
                continue
            if r_marshal.dumps(expected, 2) != c_marshal.dumps(expected, 2):
                failures.append((path, "version-2 bytes differ from CPython's"))
                continue
        except Exception as e:  # noqa: BLE001
            failures.append((path, repr(e)))
            continue
        checked += 1
    assert not failures[:10], f"{len(failures)} of {checked + len(failures)} failed"
    assert checked > 1000
    print(f"{checked} .pyc files round-tripped")
