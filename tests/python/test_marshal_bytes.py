"""Byte equality with the running CPython: cellar.marshal.dumps sets FLAG_REF as CPython's
marshal does (by reference count, and always for interned str), so the bytes of a value equal
marshal.dumps of the same value.

Code objects included: CPython writes `co_localsplusnames`, a tuple its compiler shares between
code objects of one compilation unit by value. No public API returns it: cellar reads it from
the code object where an import-time probe verified it lives (marshal_code.rs, `LOCALSPLUS`),
else finds it again by value (marshal_source.rs, `Unit`); both paths are checked here (the
`code_path` fixture), and the bytes are equal either way.

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


@pytest.fixture(params=["fields", "public"])
def code_path(request: pytest.FixtureRequest) -> object:
    """Code objects read through their own localsplus fields, or through the public attributes
    only (the path taken where the probe fails)."""
    from cellar import _cellar

    available = _cellar._marshal_code_fields(request.param == "fields")
    try:
        yield request.param
    finally:
        _cellar._marshal_code_fields(True)
    # The supported versions (3.11-3.13) all keep the fields where the probe looks.
    assert available


def test_stdlib_code_objects_dump_to_cpythons_bytes(code_path: str) -> None:
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


def test_stdlib_pycs_dump_to_cpythons_bytes(code_path: str) -> None:
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


def test_sets_inside_set_items_dump_to_cpythons_bytes() -> None:
    # A set escapes (its items are dumped standalone for the sort key), so the encoder takes a
    # reference on it; inside an item of an outer set it is reached again, through another
    # handle, for the real write: that reference must still count as the encoder's own.
    values = [
        frozenset({(frozenset({(0,), 0}),), 1}),
        frozenset({(frozenset({0, 1}),), 2}),
        frozenset({1, (frozenset({0}),)}),
        [frozenset({1, (frozenset({(0,), 0}),)}), {(frozenset({"a", "b"}), 3), "c"}],
        frozenset({((frozenset({(frozenset({1, 2}),), 3}),),), 4}),
        frozenset({frozenset({0, 1}), 2}),
        {(2**70, frozenset({5, 6})), 7},
    ]
    for v in values:
        for version in (2, 3, 4, 5):
            assert r_marshal.dumps(v, version) == c_marshal.dumps(v, version), (v, version)


def test_loaded_code_keeps_hidden_local_kinds() -> None:
    # 3.12+ inlines comprehensions; in module and class code their variables become hidden fast
    # locals (CO_FAST_HIDDEN, 0x10 in co_localspluskinds), which only marshal shows. Code objects
    # loaded by cellar must keep that bit: CPython's dump of them equals its dump of its own load.
    src = (
        "a = [x for x in range(3)]\n"
        "class C:\n"
        "    b = [i * i for i in range(3)]\n"
        "    c = sorted(locals())\n"
        "def f(xs):\n"
        "    return [x for x in xs], {k: v for k, v in zip(xs, xs)}\n"
        "d = sorted(k for k in locals() if not k.startswith('__'))\n"
    )
    co = compile(src, "<hidden>", "exec")
    data = c_marshal.dumps(co)
    if sys.version_info >= (3, 12):
        # The module's co_localspluskinds: one hidden local (0x20 | 0x10), the bit under test.
        assert b"s\x01\x00\x00\x000" in data
    # (Each loaded object held by one name, so FLAG_REF sees the same reference counts.)
    by_c = c_marshal.loads(data)
    for by_r in (r_marshal.loads(data), r_marshal.loads(r_marshal.dumps(co))):
        assert by_r == by_c
        if sys.version_info >= (3, 12):
            # (3.11 has no hidden locals; there CPython's loaded co_localsplusnames of a
            # comprehension is shared, so its re-dump differs in one FLAG_REF bit.)
            assert c_marshal.dumps(by_r) == c_marshal.dumps(by_c)
            assert r_marshal.dumps(by_r) == c_marshal.dumps(by_c)
    ns_c: dict[str, object] = {}
    ns_r: dict[str, object] = {}
    exec(c_marshal.loads(data), ns_c)
    exec(r_marshal.loads(data), ns_r)
    assert ns_r["d"] == ns_c["d"] == ["C", "a", "f"]
    assert ns_r["C"].c == ns_c["C"].c  # type: ignore[attr-defined]
    assert ns_r["f"]([1, 2]) == ns_c["f"]([1, 2])  # type: ignore[operator]
