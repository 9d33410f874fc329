"""Hostile input: truncations, huge claimed sizes, deep nesting, reference abuse, random bytes.

cellar.marshal must turn every bad input into EOFError / ValueError / TypeError (CPython's types),
never crash, hang, or allocate in proportion to a claimed length.
"""

from __future__ import annotations

import contextlib
import io
import marshal as c_marshal
import os
import random
import resource
import struct
import sys
import time
from collections.abc import Iterator

import pytest

import cellar.marshal as r_marshal

# What malformed marshal data may raise (docs/marshal.md, "Errors"): never SystemError or a crash.
ALLOWED = (EOFError, ValueError, TypeError)


def sample_blobs() -> list[bytes]:
    def f(a, b=2, *c, d, **e):  # type: ignore[no-untyped-def]
        x = [a, b]

        def g() -> object:
            return x

        return g

    values: list[object] = [
        {"id": 7, "name": "user7", "tags": ("a", "b"), "score": 1.5, 2**70: -(2**40)},
        [1, 2.5, 3j, "é\U0001f600", b"bytes", None, True, ..., frozenset({1, 2}), {3, 4}],
        f.__code__,
        -(10**30),
        "x" * 300,
    ]
    blobs = []
    for v in values:
        for version in (0, 2, 3, 4):
            blobs.append(c_marshal.dumps(v, version))
    return blobs


BLOBS = sample_blobs()


def outcome(fn, data: bytes) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    try:
        fn(data)
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e)
    return "ok", ""


def test_truncation_at_every_offset_matches_cpython() -> None:
    for blob in BLOBS:
        for i in range(len(blob)):
            ours = outcome(r_marshal.loads, blob[:i])
            theirs = outcome(c_marshal.loads, blob[:i])
            assert ours[0] == theirs[0], (blob[:i], ours, theirs)
            assert ours[0] in ("EOFError", "ValueError", "TypeError"), ours


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("code", [b"(", b"[", b"<", b">", b"s", b"u", b"a", b"A", b"t", b"l"])
def test_huge_claimed_size_in_ten_bytes(code: bytes) -> None:
    data = code + struct.pack("<i", 2**31 - 1) + b"N" * 5
    assert len(data) == 10
    before = max_rss_mb()
    with pytest.raises(EOFError):
        r_marshal.loads(data)
    assert max_rss_mb() - before < 64, "allocation followed the claimed length"


def test_huge_claimed_size_from_a_file() -> None:
    for code in (b"(", b"[", b"s", b"l"):
        data = code + struct.pack("<i", 2**31 - 1) + b"N" * 5
        before = max_rss_mb()
        with pytest.raises(EOFError):
            r_marshal.load(io.BytesIO(data))
        assert max_rss_mb() - before < 64


def test_negative_sizes() -> None:
    for code, what in [
        (b"(", "tuple"),
        (b"[", "list"),
        (b"<", "set"),
        (b">", "set"),
        (b"s", "bytes object"),
        (b"u", "string"),
        (b"a", "string"),
    ]:
        data = code + struct.pack("<i", -1)
        with pytest.raises(ValueError, match=f"bad marshal data \\({what} size out of range\\)"):
            r_marshal.loads(data)
        assert outcome(c_marshal.loads, data) == outcome(r_marshal.loads, data)


def test_million_nested_lists() -> None:
    data = b"[\x01\x00\x00\x00" * 10**6
    with pytest.raises(ValueError, match="recursion limit exceeded"):
        r_marshal.loads(data)
    with pytest.raises(ValueError, match="recursion limit exceeded"):
        r_marshal.load(io.BytesIO(data))


@pytest.mark.parametrize(
    "head,tail",
    [
        (b")\x01", b""),
        (b"(\x01\x00\x00\x00", b""),
        (b"[\x01\x00\x00\x00", b""),
        (b">\x01\x00\x00\x00", b""),
        (b"{N", b"N0"),
    ],
)
def test_nesting_limit_is_exactly_cpythons(head: bytes, tail: bytes) -> None:
    for depth in (1998, 1999, 2000, 2001):
        data = head * depth + b"N" + tail * depth
        assert outcome(r_marshal.loads, data)[0] == outcome(c_marshal.loads, data)[0], depth
    ok = head * 1999 + b"N" + tail * 1999
    r_marshal.loads(ok)
    with pytest.raises(ValueError, match="recursion limit exceeded"):
        r_marshal.loads(head * 2000 + b"N" + tail * 2000)


def test_dumps_nesting_limit() -> None:
    v: list[object] = []
    for _ in range(1999):
        v = [v]
    c_marshal.dumps(v)
    r_marshal.dumps(v)
    v = [v]
    for m in (c_marshal, r_marshal):
        with pytest.raises(ValueError, match="object too deeply nested to marshal"):
            m.dumps(v)


def test_long_reference_chain() -> None:
    # [t0, (r0,), (r1,), ...]: each tuple refers back to the previous one.
    n = 100_000
    parts = [b"[" + struct.pack("<i", n), b"\xa9\x00"]  # flagged empty small tuple = ref 0
    for i in range(1, n):
        parts.append(b"\xa9\x01r" + struct.pack("<i", i - 1))
    data = b"".join(parts)
    back = r_marshal.loads(data)
    assert len(back) == n
    assert back[5][0] is back[4]
    # Written back: the chain stays flat thanks to references, so no depth error.
    again = r_marshal.loads(r_marshal.dumps(back))
    assert again[n - 1][0] is again[n - 2]
    assert c_marshal.loads(r_marshal.dumps(back))[3][0][0] == back[1]


def test_invalid_references() -> None:
    cases = [
        b"r\x00\x00\x00\x00",
        b"r\xff\xff\xff\xff",
        b"[\x02\x00\x00\x00\xe9\x01\x00\x00\x00r\x01\x00\x00\x00",
        b"\xbe\x01\x00\x00\x00r\x00\x00\x00\x00",  # frozenset containing itself
        b"\xe3" + b"\x00" * 20 + b"r\x00\x00\x00\x00",  # code object referring to itself
    ]
    for data in cases:
        with pytest.raises(ValueError, match=r"bad marshal data \(invalid reference\)"):
            r_marshal.loads(data)


def test_self_containing_tuples_are_refused() -> None:
    # A tuple whose item is a dict keyed by the tuple itself: hashing it would recurse forever
    # (CPython crashes). A reference to a tuple still being read is refused (docs/marshal.md).
    for data in (
        b"\xa8\x01\x00\x00\x00{r\x00\x00\x00\x00N0",  # dict key
        b"\xa9\x01r\x00\x00\x00\x00",  # the tuple itself
        b"\xa9\x01<\x01\x00\x00\x00r\x00\x00\x00\x00",  # set member
        b"\xa9\x01>\x01\x00\x00\x00r\x00\x00\x00\x00",  # frozenset member
        b"\xa9\x01[\x01\x00\x00\x00r\x00\x00\x00\x00",  # through a list
    ):
        with pytest.raises(ValueError, match=r"a tuple cannot contain itself"):
            r_marshal.loads(data)
    # Self-containing list, dict and set: allowed, as in CPython; a list pre-allocated for its
    # claimed size never exposes a NULL slot (its empty slots hold None until filled).
    lst = r_marshal.loads(b"\xdb\x02\x00\x00\x00r\x00\x00\x00\x00N")
    assert lst[0] is lst and lst[1] is None
    d = r_marshal.loads(b"\xfbN\xdb\x01\x00\x00\x00r\x00\x00\x00\x000")
    assert d[None][0] is d
    # ... but such a container cannot be hashed: a TypeError, never a crash.
    with pytest.raises(TypeError):
        r_marshal.loads(b"<\x01\x00\x00\x00\xdb\x01\x00\x00\x00r\x00\x00\x00\x00")


def test_code_counts_the_constructor_refuses_are_value_errors() -> None:
    # Counts CPython's code constructor rejects with SystemError ("bad argument to internal
    # function"; CPython's marshal.loads raises that): found by scripts/fuzz-python.sh.
    base = bytearray(c_marshal.dumps(compile("def f(a, b, /, c, *, d): pass", "m", "exec")))
    assert base[0] & 0x7F == ord("c")
    fields = {"argcount": 1, "posonlyargcount": 5, "kwonlyargcount": 9, "stacksize": 13, "flags": 17}
    for name, value in [("posonlyargcount", 5), ("posonlyargcount", -1), ("kwonlyargcount", -1),
                        ("stacksize", -2), ("flags", -1), ("argcount", -1)]:
        data = bytearray(base)
        struct.pack_into("<i", data, fields[name], value)
        with pytest.raises(ValueError, match=r"bad marshal data \(invalid code object"):
            r_marshal.loads(bytes(data))


def test_other_errors_match_cpython() -> None:
    cases = [
        b"",
        b"X",
        b"0",
        b"(\x01\x00\x00\x000",
        b"[\x01\x00\x00\x000",
        b"<\x01\x00\x00\x000",
        b"{N0",
        b"{0",
        b"{[\x00\x00\x00\x00N0",  # unhashable key
        b"<\x01\x00\x00\x00[\x00\x00\x00\x00",  # unhashable set item
        b"l\x01\x00\x00\x00\x00\x80",  # digit out of range
        b"l\x02\x00\x00\x00\x01\x00\x00\x00",  # unnormalized
        b"l\x00\x00\x00\x80",  # long size out of range
        b"u\x02\x00\x00\x00\xff\xfe",  # invalid UTF-8
        b"z\x01\xe9",  # Latin-1, unchecked
        b"f\x03abc",
        b"f\x031.5",
        b"g\x00\x00",
        b"I\x01\x00\x00\x00\x00\x00\x00\x80",
        b"S",
        b".",
    ]
    for data in cases:
        assert outcome(r_marshal.loads, data) == outcome(c_marshal.loads, data), data


def test_instrumented_opcode_never_reaches_the_code_constructor() -> None:
    # Found by the loop below on 3.12: co_code holding an INSTRUMENTED_* opcode crashes CPython
    # 3.12+'s code constructor (and its own marshal.loads). cellar refuses it there; 3.11 has no
    # such opcodes and builds the code object, as CPython 3.11 does.
    path = os.path.join(os.path.dirname(__file__), "data", "code_instrumented_opcode.bin")
    with open(path, "rb") as f:
        data = f.read()
    if sys.version_info >= (3, 12):
        with pytest.raises(ValueError, match="instrumented opcode"):
            r_marshal.loads(data)
    else:
        assert type(r_marshal.loads(data)).__name__ == "code"


def test_inline_caches_past_the_end_never_reach_the_code_constructor() -> None:
    # Found by the loop below on 3.13 under PYTHONMALLOC=debug: CPython 3.12+ quickens bytecode
    # while it builds a code object and writes the first inline cache entry of every
    # instruction that has some; co_code ending right after such an instruction (LOAD_ATTR
    # here) made it write 2 bytes past its allocation, a heap corruption that crashed a later
    # compile(). On 3.11 (found by scripts/fuzz-python.sh) the code object's `co_code` getter,
    # which marshal.dumps calls, zeroes the cache entries past the end of a new bytes object.
    # cellar refuses such bytecode on every version.
    import dis
    import marshal as std_marshal
    import struct

    code = compile("a.b", "<hostile>", "eval")
    co = code.co_code
    at = next(i.offset for i in dis.get_instructions(code) if i.opname == "LOAD_ATTR")
    cut = co[: at + 2]
    data = std_marshal.dumps(code)
    old = struct.pack("<i", len(co)) + co
    assert data.count(old) == 1
    hostile = data.replace(old, struct.pack("<i", len(cut)) + cut)
    with pytest.raises(ValueError, match="inline cache entries"):
        r_marshal.loads(hostile)
    # The intact stream still loads.
    assert r_marshal.loads(data) == code


def test_cache_entries_that_look_like_instructions_near_the_end_still_load() -> None:
    # cellar looks at the last few code units first and walks the whole bytecode only when one
    # of them, read as an instruction, would need cache entries past the end. Cache entries are
    # skipped by the walk, whatever they hold: here the last cache entry of the LOAD_ATTR
    # carries LOAD_ATTR's own opcode byte (the quick look is suspicious, the walk is not), and
    # the code loads, as with CPython's marshal.
    import dis
    import marshal as std_marshal
    import struct

    code = compile("a.b", "<hostile>", "eval")
    co = code.co_code
    instrs = list(dis.get_instructions(code))
    at = next(k for k, i in enumerate(instrs) if i.opname == "LOAD_ATTR")
    ins = instrs[at]
    ncache = (instrs[at + 1].offset - ins.offset) // 2 - 1  # the walk skips cache entries
    assert ncache > 0
    last = ins.offset + 2 * ncache  # the LOAD_ATTR's last cache entry
    assert last + 2 < len(co) and len(co) // 2 - last // 2 <= ncache
    bent = co[:last] + bytes([ins.opcode, 0]) + co[last + 2 :]
    data = std_marshal.dumps(code)
    old = struct.pack("<i", len(co)) + co
    assert data.count(old) == 1
    bent_data = data.replace(old, struct.pack("<i", len(bent)) + bent)
    loaded = r_marshal.loads(bent_data)
    assert type(loaded).__name__ == "code"
    assert loaded.co_code == std_marshal.loads(bent_data).co_code


def test_random_bytes_fuzz_fixed_budget() -> None:
    rng = random.Random(1234)
    seeds = BLOBS
    deadline = time.monotonic() + 8.0
    runs = 0
    while time.monotonic() < deadline or runs < 2000:
        k = rng.randrange(4)
        if k == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
        else:
            b = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                op = rng.randrange(4)
                if op == 0 and b:
                    b[rng.randrange(len(b))] = rng.getrandbits(8)
                elif op == 1 and b:
                    del b[rng.randrange(len(b)) :]
                elif op == 2:
                    b.insert(rng.randrange(len(b) + 1), rng.choice(b"()[]{}<>rsuazZtlicgfxy0N:\x80\xff"))
                elif op == 3 and b:
                    i = rng.randrange(len(b))
                    b[i : i + 4] = struct.pack("<i", rng.choice((-1, 0, 2**31 - 1, 2**16, 7)))
            data = bytes(b)
        try:
            r_marshal.loads(data)
        except ALLOWED:
            pass
        runs += 1
        if runs > 200_000:
            break
    assert runs >= 2000


# ----- load() and file positions -----


def test_load_reads_exactly_what_it_needs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    values = [1, "two", (3.0, [4, {5: 6}]), b"x" * 100000, 2**100, frozenset({"a"})]
    path = tmp_path / "data.bin"
    offsets = []
    with open(path, "wb") as f:
        for v in values:
            c_marshal.dump(v, f)
            offsets.append(f.tell())
        f.write(b"trailing")
    with open(path, "rb") as f:
        for v, off in zip(values, offsets):
            assert r_marshal.load(f) == v
            assert f.tell() == off
        assert f.read() == b"trailing"
    bio = io.BytesIO()
    for v in values:
        r_marshal.dump(v, bio)
    bio.seek(0)
    for v in values:
        assert r_marshal.load(bio) == v
    with pytest.raises(EOFError):
        r_marshal.load(bio)


def test_load_refuses_text_files() -> None:
    with pytest.raises(TypeError, match="file.read\\(\\) returned not bytes but str"):
        r_marshal.load(io.StringIO("N"))


def test_load_truncated_file() -> None:
    data = c_marshal.dumps({"a": [1, 2, 3]})
    for i in range(len(data)):
        with pytest.raises(EOFError):
            r_marshal.load(io.BytesIO(data[:i]))


def test_no_crash_on_deep_dumps_of_frozensets() -> None:
    v: object = frozenset()
    for _ in range(3000):
        v = frozenset({v})
    with pytest.raises(ValueError, match="too deeply nested"):
        r_marshal.dumps(v)
    sys.setrecursionlimit(sys.getrecursionlimit())


def test_small_thread_stacks_never_crash() -> None:
    """Deep (but legal) nesting in a thread with a small stack: an error, never a crash. (CPython's
    own marshal segfaults here at 512 KiB.) Run in a subprocess so a crash cannot take pytest."""
    import subprocess

    code = r"""
import threading, cellar.marshal as m
out = []
def run(kb):
    for head, tail in [(b')\x01', b''), (b'[\x01\x00\x00\x00', b''), (b'{N', b'N0'),
                       (b'>\x01\x00\x00\x00', b'')]:
        try:
            v = m.loads(head * 1999 + b'N' + tail * 1999)
            m.dumps(v)
            out.append('ok')
        except ValueError:
            out.append('err')
    v = frozenset()
    for _ in range(1990):
        v = frozenset({v})
    try:
        m.dumps(v)
        out.append('ok')
    except ValueError:
        out.append('err')
    assert m.loads(m.dumps([1, (2, {3: 4})])) == [1, (2, {3: 4})]
for kb in (2048, 1024, 512, 256, 128):
    threading.stack_size(kb << 10)
    t = threading.Thread(target=run, args=(kb,))
    t.start()
    t.join()
print(len(out), out[:5])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("25 ['ok', 'ok', 'ok', 'ok', 'ok']"), r.stdout


# dumps borrows the objects it walks (as CPython does) and takes strong references on everything
# pending only before it runs code that could change or free them ("escapes": the buffer
# protocol of other types, big ints, sets, slices, code objects; the garbage collector's
# finalizers can run on any allocation there). These scripts free what the encoder has pending
# from inside such code; they run in a child process under the debug allocator (freed memory
# is overwritten), where a use-after-free crashes or shows up in the output.
_DEBUG_ENV = {**os.environ, "PYTHONMALLOC": "debug", "PYTHONDEVMODE": "1"}

_GC_FINALIZER_SCRIPT = r"""
import gc, sys, cellar.marshal as m
from cellar import _cellar
# "public": code objects read through their public attributes only (which allocate tuples).
_cellar._marshal_code_fields(sys.argv[1] != "public")
victim = {}
key = compile("x = 1", "<s>", "exec")
victim[key] = ["pending value %d" % i for i in range(50)]
for i in range(50):
    victim["other %d" % i] = ["freed %d" % j for j in range(20)]
class Bomb:
    def __del__(self):
        victim.clear()
        gc.collect()
def arm():
    b = Bomb()
    b.cycle = b
full = {k: list(v) for k, v in victim.items()}
gc.collect()
arm()
gc.set_threshold(1)
try:
    out = m.dumps(victim)
finally:
    gc.set_threshold(700)
back = m.loads(out)
# 3.11 collects on allocation: the key (a code object: reading it through the public attributes
# allocates, the collector runs the finalizer, which empties the dict) and its pending value are
# written, then the iteration ends. 3.12+ collects only between bytecodes: the finalizer runs after
# the dump. Read through its own fields, the code object allocates no tracked object (as in CPython).
if back == {key: ["pending value %d" % i for i in range(50)]}:
    print("ok partial")
else:
    assert back == full, back
    print("ok full")
"""

_BUFFER_SCRIPT = r"""
import gc, cellar.marshal as m
victims = []
class Evil:
    def __buffer__(self, flags):
        for v in victims:
            v.clear()
        gc.collect()
        return memoryview(b"evil")
    def __hash__(self):
        return 1
d = {Evil(): ["pending value %d" % i for i in range(50)]}
for i in range(50):
    d["other %d" % i] = ["freed %d" % j for j in range(20)]
victims.append(d)
assert m.loads(m.dumps(d)) == {b"evil": ["pending value %d" % i for i in range(50)]}
inner = [Evil(), ["pending %d" % i for i in range(30)]]
top = [inner, ["freed %d" % i for i in range(30)]]
del inner
victims[:] = [top]
try:
    m.dumps(top)
except ValueError as e:
    assert "list changed size during marshal" in str(e), e
else:
    raise AssertionError("no error")
victims[:] = [top]
top[:] = [{"k": [Evil(), ("pending", ["x %d" % i for i in range(9)])]}, "freed"]
try:
    m.dumps(top)
except ValueError as e:
    assert "list changed size during marshal" in str(e), e
print("ok")
"""


_INLINE_SCRIPT = r"""
import gc, sys, cellar.marshal as m
from cellar import _cellar
# Code objects read through their public attributes allocate tuples: on 3.11 the collector
# runs there, and the finalizer frees the containers the encoder is writing inline (held by
# its own frames, not its stack) unless they were promoted before.
_cellar._marshal_code_fields(False)
victims = []
class Bomb:
    def __del__(self):
        for v in victims:
            v.clear()
        gc.collect()
def arm():
    b = Bomb()
    b.cycle = b
results = []
for shape in ("list", "tuple", "deep"):
    code = compile("x = 1", "<s>", "exec")
    if shape == "list":
        inner = [code, ["pending %d" % i for i in range(30)]]
    elif shape == "tuple":
        inner = (code, ["pending %d" % i for i in range(30)])
    else:
        inner = [[(code, ["pending %d" % i for i in range(30)])], "after"]
    top = [inner, ["freed %d" % i for i in range(30)]]
    full = m.loads(m.dumps(top))
    del inner, code
    victims[:] = [top]
    gc.collect()
    arm()
    gc.set_threshold(1)
    try:
        out = m.dumps(top)
    except ValueError as e:
        assert "list changed size during marshal" in str(e), e
        results.append("changed")
    else:
        assert m.loads(out) == full, shape
        results.append("full")
    finally:
        gc.set_threshold(700)
    victims[:] = []
print("ok", results)
"""


def test_dumps_survives_a_finalizer_freeing_containers_written_inline() -> None:
    out = _run_debug(_INLINE_SCRIPT)
    assert out.startswith("ok"), out
    if sys.version_info < (3, 12):
        # The finalizer ran during each dump (collections on allocation).
        assert out.strip() == "ok ['changed', 'changed', 'changed']", out


def _run_debug(script: str, *args: str) -> str:
    import subprocess

    r = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script, *args],
        env=_DEBUG_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    return r.stdout


def test_dumps_survives_a_finalizer_freeing_pending_objects() -> None:
    out = _run_debug(_GC_FINALIZER_SCRIPT, "public")
    assert out.startswith("ok partial" if sys.version_info < (3, 12) else "ok full"), out
    out = _run_debug(_GC_FINALIZER_SCRIPT, "fields")
    assert out.startswith(("ok partial", "ok full")), out


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ is 3.12+")
def test_dumps_survives_a_buffer_hook_freeing_pending_objects() -> None:
    assert _run_debug(_BUFFER_SCRIPT).startswith("ok")


def _graph_equal(a: object, b: object, seen: dict[int, int] | None = None) -> bool:
    """Structural equality that follows cycles: `a` and `b` have the same shape, values and
    identities (a container reached twice on one side is reached twice on the other)."""
    seen = {} if seen is None else seen
    if id(a) in seen:
        return seen[id(a)] == id(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        seen[id(a)] = id(b)
        return len(a) == len(b) and all(_graph_equal(x, y, seen) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        seen[id(a)] = id(b)
        return list(a) == list(b) and all(_graph_equal(a[k], b[k], seen) for k in a)  # type: ignore[index]
    return bool(a == b)


def _inline_shapes() -> list[object]:
    """Containers whose first items are leaves and whose later items are not: a dict, tuple or
    list is read without a frame until such an item arrives (reader's `inline`), so these
    cover every way out of that state."""
    shapes: list[object] = []
    d: dict[str, object] = {"a": 1, "b": "x"}
    d["self"] = d  # a reference to the open dict after leaves
    shapes.append(d)
    lst: list[object] = [1, 2.5, "s"]
    lst.append(lst)  # a reference to the open list after leaves
    lst.append(3)
    shapes.append(lst)
    outer: dict[str, object] = {"k": 1}
    outer["inner"] = [1, 2, outer]  # a list read one level down refers to the dict above
    outer["t"] = (1, (2, 3), [4])  # a tuple one level down holding containers
    shapes.append(outer)
    t = ("a", "b")
    shapes.append([{"id": i, "tags": t, "n": None, "f": 1.5} for i in range(50)])  # shared tuple
    shapes.append({"a": {"b": {"c": (1, 2, {"d": [3, 4]})}}, "e": 5})
    shapes.append((1, 2, 3, frozenset({1, 2}), "x"))
    shapes.append([(), [], {}, (1,), [2], {3: 4}])
    return shapes


@contextlib.contextmanager
def _address_space_cap(extra: int) -> Iterator[None]:
    """Caps this process's address space at its current size plus `extra` bytes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * resource.getpagesize()
    cap = current + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


_TYPE_CODES = frozenset(b"0NFTS.iIfgxylstr([{cu<>aA)zZ:")


@pytest.mark.parametrize("version", range(5))
def test_containers_read_inline_match_cpython(version: int) -> None:
    for v in _inline_shapes():
        try:
            data = c_marshal.dumps(v, version)
        except ValueError:
            assert version < 3  # a cycle needs references (version 3 on)
            continue
        assert _graph_equal(r_marshal.loads(data), c_marshal.loads(data)), (version, data)
        assert _graph_equal(r_marshal.load(io.BytesIO(data)), c_marshal.loads(data))
        # Every truncation, and every byte that may be a type code replaced by NULL, an
        # unknown code or a reference: the same exception type. A shifted read can make CPython
        # pre-allocate a list or tuple for a claim of up to 2**31 items; with the address space
        # capped that is a MemoryError, compared as "CPython refused" (cellar never allocates
        # beyond what the input can fill: test_huge_claimed_size_in_ten_bytes).
        with _address_space_cap(1 << 30):
            for i in range(len(data)):
                ours = outcome(r_marshal.loads, data[:i])
                assert ours[0] == outcome(c_marshal.loads, data[:i])[0]
                if data[i] & 0x7F not in _TYPE_CODES:
                    continue
                for bad in (b"0", b"?", b"r"):
                    damaged = data[:i] + bad + data[i + 1 :]
                    ours, theirs = outcome(r_marshal.loads, damaged), outcome(c_marshal.loads, damaged)
                    if theirs[0] != "MemoryError":
                        assert ours[0] == theirs[0], (damaged, ours, theirs)
                    else:
                        assert ours[0] in ("EOFError", "ValueError", "TypeError"), (damaged, ours)


@pytest.mark.parametrize(
    "inner",
    [
        b"{N)\x02NN0",  # a dict whose value is a tuple of leaves (read one level down)
        b")\x02N)\x01N",  # a tuple of a leaf and a tuple of a leaf
        b"[\x02\x00\x00\x00NN",  # a list of leaves
        b"{NN0",  # a dict of leaves
    ],
)
def test_nesting_limit_with_inline_containers_is_cpythons(inner: bytes) -> None:
    # `depth` lists around `inner`: the limit falls inside, on, and just outside it.
    for depth in range(1994, 2001):
        data = b"[\x01\x00\x00\x00" * depth + inner
        ours, theirs = outcome(r_marshal.loads, data), outcome(c_marshal.loads, data)
        assert ours == theirs, (depth, inner, ours, theirs)
