"""Byte equality with the running CPython: cellar.marshal.dumps sets FLAG_REF as CPython's
marshal does (by reference count, and always for interned str), so the bytes of a value equal
marshal.dumps of the same value.

Code objects included: CPython writes `co_localsplusnames`, a tuple its compiler shares between
code objects of one compilation unit by value; no public API returns it, so cellar finds it
again by value (marshal_source.rs, `Unit`) and the bytes are equal all the same.

Differential over the standard library compiled by the running interpreter (every
Lib/*.py, a bounded but large set: several hundred modules and thousands of code objects) and
over the .pyc files it wrote itself. Both dumps are taken of the SAME object, cellar's first
(3.12+ create per-code caches, e.g. co_varnames, on first access: those references then exist for
both), then CPython's, then cellar's again, which must equal CPython's."""

from __future__ import annotations

import glob
import importlib.util
import marshal as c_marshal
import os
import sys
import sysconfig

import pytest

import cellar.marshal as r_marshal

STDLIB = sysconfig.get_paths()["stdlib"]
SOURCES = sorted(glob.glob(os.path.join(STDLIB, "*.py")))


def _compile(path: str) -> object | None:
    try:
        with open(path, "rb") as f:
            src = f.read()
        return compile(src, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None


def test_stdlib_code_objects_dump_to_cpythons_bytes() -> None:
    assert len(SOURCES) > 150
    checked = identical = 0
    failures: list[str] = []
    for path in SOURCES:
        co = _compile(path)
        if co is None:
            continue
        r_marshal.dumps(co)
        c = c_marshal.dumps(co)
        r = r_marshal.dumps(co)
        checked += 1
        identical += r == c
        if r != c:
            i = next((k for k in range(min(len(r), len(c))) if r[k] != c[k]), min(len(r), len(c)))
            failures.append(f"{os.path.basename(path)}: first difference at byte {i} of {len(c)}")
        assert c_marshal.loads(r) == co, path
        # And the other direction: cellar loads CPython's bytes to an equal object.
        assert r_marshal.loads(c) == co, path
    print(f"{identical} of {checked} stdlib modules byte-identical")
    assert checked > 150
    assert not failures, f"{len(failures)} of {checked} differ: {failures[:20]}"


def test_stdlib_pycs_dump_to_cpythons_bytes() -> None:
    """The .pyc files the interpreter wrote (from __pycache__): the code object CPython loads
    from each is dumped by both, byte for byte."""
    tag = sys.implementation.cache_tag
    pycs = sorted(glob.glob(os.path.join(STDLIB, "__pycache__", f"*.{tag}.pyc")))
    if len(pycs) < 50:
        pytest.skip("the stdlib has no compiled .pyc files for this interpreter")
    failures = []
    checked = 0
    for path in pycs[:600]:
        with open(path, "rb") as f:
            data = f.read()
        if data[:4] != importlib.util.MAGIC_NUMBER:
            continue
        co = c_marshal.loads(data[16:])
        r_marshal.dumps(co)
        c = c_marshal.dumps(co)
        r = r_marshal.dumps(co)
        checked += 1
        assert c_marshal.loads(r) == co, path
        if r != c:
            failures.append(os.path.basename(path))
    assert checked >= 50
    assert not failures, f"{len(failures)} of {checked} differ: {failures[:20]}"


def test_values_dump_to_cpythons_bytes() -> None:
    shared = ["s"]
    values = [
        [1, 2, 3, "abc", ("abc", "abc")],
        {"k": [shared, shared], "j": (1.5, 1.5)},
        frozenset({"a", "b", (1, 2), 3.5, 2**70}),
        {1, "x", (None, ...)},
        [sys.intern("interned_key"), "not" + "interned"],
        ("é", "\ud800", b"bytes", bytearray(b"ba")),
    ]
    for v in values:
        for version in range(5):
            assert r_marshal.dumps(v, version) == c_marshal.dumps(v, version), (v, version)
