"""cellar.marshal's API matches the stdlib marshal's (signatures, errors, corner cases)."""

from __future__ import annotations

import array
import inspect
import io
import marshal as c_marshal

import pytest

import cellar
import cellar.marshal as r_marshal


def test_module_surface() -> None:
    assert r_marshal.version == c_marshal.version == 4
    assert set(r_marshal.__all__) == {"dump", "dumps", "load", "loads", "version"}
    assert cellar.marshal is r_marshal


def test_positional_only_and_keyword_only() -> None:
    assert r_marshal.loads(r_marshal.dumps(5, 2)) == 5
    with pytest.raises(TypeError):
        r_marshal.dumps(value=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        r_marshal.dumps(5, 2, True)  # type: ignore[misc]
    assert r_marshal.dumps(5, allow_code=False) == c_marshal.dumps(5)
    sig = inspect.signature(r_marshal.dumps)
    assert [p.kind for p in sig.parameters.values()] == [
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.KEYWORD_ONLY,
    ]


class IntSub(int):
    pass


class StrSub(str):
    pass


class ListSub(list):  # type: ignore[type-arg]
    pass


class BytesSub(bytes):
    pass


@pytest.mark.parametrize(
    "value",
    [IntSub(1), StrSub("s"), ListSub(), object(), type, print, [1, object()], {"k": {1: object}}],
)
def test_unmarshallable(value: object) -> None:
    for m in (c_marshal, r_marshal):
        with pytest.raises(ValueError, match="^unmarshallable object$"):
            m.dumps(value)


def test_buffer_objects_are_written_as_bytes() -> None:
    for v in (bytearray(b"abc"), memoryview(b"xyz"), array.array("b", [1, 2]), BytesSub(b"q")):
        data = r_marshal.dumps(v)
        assert r_marshal.loads(data) == bytes(v)
        assert c_marshal.loads(data) == bytes(v)


def test_loads_accepts_bytes_like_and_ignores_trailing_bytes() -> None:
    data = c_marshal.dumps([1, "a"])
    for arg in (data, bytearray(data), memoryview(data), array.array("B", data)):
        assert r_marshal.loads(arg) == [1, "a"]
    assert r_marshal.loads(data + b"garbage") == [1, "a"]
    with pytest.raises(TypeError, match="bytes-like object is required, not 'str'"):
        r_marshal.loads("N")  # type: ignore[arg-type]


def test_versions_above_current() -> None:
    for v in (5, 6, 100):
        assert r_marshal.loads(r_marshal.dumps((1.5, "x"), v)) == (1.5, "x")


def test_text_floats_at_versions_0_and_1() -> None:
    for x in (0.1, -0.0, 1e300, float("inf"), 1 / 3):
        for v in (0, 1):
            data = r_marshal.dumps(x, v)
            assert data == c_marshal.dumps(x, v)
            assert data[0:1] == b"f"
    assert r_marshal.dumps(0.1, 0) == b"f\x130.10000000000000001"
    assert r_marshal.dumps(1 + 2j, 1) == c_marshal.dumps(1 + 2j, 1)


def test_code_objects() -> None:
    src = "def f(a, *, b=1):\n    def g():\n        return a\n    return g\nx = [f, 1.5]\n"
    co = compile(src, "myfile.py", "exec")
    data = r_marshal.dumps(co)
    back = r_marshal.loads(data)
    assert back == co == c_marshal.loads(data)
    for const in back.co_consts:
        if hasattr(const, "co_filename"):
            assert const.co_filename is back.co_filename
    ns: dict[str, object] = {}
    exec(back, ns)
    assert ns["f"](7)() == 7  # type: ignore[operator]
    with pytest.raises(ValueError, match="^marshalling code objects is disallowed$"):
        r_marshal.dumps(co, allow_code=False)
    with pytest.raises(ValueError, match="^marshalling code objects is disallowed$"):
        r_marshal.dumps([1, (co,)], allow_code=False)
    with pytest.raises(ValueError, match="^unmarshalling code objects is disallowed$"):
        r_marshal.loads(data, allow_code=False)
    with pytest.raises(ValueError, match="^unmarshalling code objects is disallowed$"):
        r_marshal.load(io.BytesIO(data), allow_code=False)


def test_marshal_uses_no_private_cpython_symbols() -> None:
    """Code objects go through the public constructor: the extension must not import CPython's
    private code-object functions (nor look symbols up at run time)."""
    import shutil
    import subprocess

    from cellar import _cellar

    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not installed")
    out = subprocess.run(
        [nm, "-D", "--undefined-only", _cellar.__file__], capture_output=True, text=True, check=True
    ).stdout
    undefined = {line.split()[-1] for line in out.splitlines() if line.strip()}
    for private in ("_PyCode_New", "_PyCode_Validate", "dlsym", "_PyBytes_Resize"):
        assert private not in undefined


def test_sets_are_written_in_sorted_order() -> None:
    s = {"banana", "apple", "cherry", 3, 2.5, (1, 2)}
    assert r_marshal.dumps(s, 2) == c_marshal.dumps(s, 2)
    assert r_marshal.dumps(frozenset(s), 2) == c_marshal.dumps(frozenset(s), 2)


def test_dump_writes_to_file() -> None:
    bio = io.BytesIO()
    r_marshal.dump({"a": 1}, bio, 2)
    assert bio.getvalue() == c_marshal.dumps({"a": 1}, 2)
    with pytest.raises(AttributeError):
        r_marshal.dump(1, object())  # type: ignore[arg-type]


def test_audit_events_match_cpython() -> None:
    import subprocess
    import sys

    code = (
        "import sys, io, marshal as c, cellar.marshal as r\n"
        "for m in (c, r):\n"
        "    ev = []\n"
        "    sys.addaudithook(lambda e, a, ev=ev: ev.append((e, a)) if e.startswith('marshal') else None)\n"
        "    m.loads(m.dumps([1], 3)); m.load(io.BytesIO(m.dumps(2)))\n"
        "    print(ev)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    # The second hook also sees the first module's events, so compare the cellar line's tail.
    assert lines[0] == str(eval(lines[0]))
    c_events = eval(lines[0])
    r_events = eval(lines[1])[-len(c_events) :]
    assert [e for e, _ in r_events] == [e for e, _ in c_events]
    assert [tuple(map(type, a)) for _, a in r_events] == [tuple(map(type, a)) for _, a in c_events]


def test_dump_returns_none() -> None:
    assert r_marshal.dump(1, io.BytesIO()) is None
