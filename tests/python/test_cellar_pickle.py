"""cellar.pickle and cellar.copyreg against CPython's pickle: differential round trips, class
instances (inert, allowed, refused), the malicious corpus, the Unpickler API, limits, and a
mutation fuzz of the decoder."""

from __future__ import annotations

import gc
import io
import os
import pickle
import random
import tempfile

import pytest

import cellar.copyreg
import cellar.pickle as cp
from cellar.pickle import Inert
from conftest import same
from test_differential import Gen

PROTOCOLS = range(0, 6)
N_VALUES = 10_000


def pickle_corpus() -> list[object]:
    g = Gen(20261124)
    values: list[object] = [
        None, True, False, ..., NotImplemented, 0, -1, 2**31, -(2**63), 2**1000, 0.0, -0.0,
        float("inf"), float("nan"), "", "\x00\n\\\r\x1a", "\ud800", b"", bytes(range(256)),
        bytearray(), bytearray(b"abc"), 1j, slice(1, 2, 3), range(0, 10, 2), set(), frozenset(),
        (), [], {}, StopIteration, "x" * 70_000, b"y" * 70_000, list(range(2500)),
        {i: str(i) for i in range(2500)}, set(range(2500)),
    ]
    while len(values) < N_VALUES:
        values.append(g.value())
    return values


VALUES = pickle_corpus()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cpython_loads_cellar_bytes(protocol: int) -> None:
    bad = []
    for v in VALUES:
        data = cp.dumps(v, protocol)
        if not same(pickle.loads(data), v):
            bad.append(v)
    assert not bad, bad[:3]
    assert len(VALUES) >= 10_000


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cellar_loads_cpython_bytes(protocol: int) -> None:
    bad = []
    for v in VALUES:
        data = pickle.dumps(v, protocol)
        if not same(cp.loads(data), v):
            bad.append(v)
    assert not bad, bad[:3]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_and_recursive_structures(protocol: int) -> None:
    shared = [1, 2]
    v = [shared, shared, {"k": shared}]
    for data in (pickle.dumps(v, protocol), cp.dumps(v, protocol)):
        out = cp.loads(data)
        assert out == v and out[0] is out[1] is out[2]["k"]
    rec: list = [1]
    rec.append(rec)
    d: dict = {}
    d["self"] = d
    t = ([],)
    t[0].append(t)
    for obj in (rec, d, t):
        for data in (pickle.dumps(obj, protocol), cp.dumps(obj, protocol)):
            out = cp.loads(data)
            if isinstance(out, list):
                assert out[1] is out
            elif isinstance(out, dict):
                assert out["self"] is out
            else:
                assert out[0][0] is out
        out = pickle.loads(cp.dumps(obj, protocol))
        assert type(out) is type(obj)


def test_default_protocol_is_cpythons() -> None:
    assert cp.dumps([1, "a"]) == cp.dumps([1, "a"], pickle.DEFAULT_PROTOCOL)
    assert cp.dumps(1, -1)[:2] == b"\x80\x05"
    with pytest.raises(ValueError):
        cp.dumps(1, 6)


def test_dumps_refuses_arbitrary_objects() -> None:
    class Local:
        pass

    with pytest.raises(pickle.PicklingError, match="cellar.copyreg"):
        cp.dumps(Local())


def test_large_payloads_are_framed() -> None:
    v = ["a" * 100_000, b"b" * 100_000, list(range(100_000))]
    data = cp.dumps(v, 5)
    assert pickle.loads(data) == v
    assert cp.loads(data) == v
    import pickletools

    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert ops.count("FRAME") >= 2


def _byte_identity_values() -> list:
    g = Gen(20261204)
    vals: list = [
        ["a" * 100_000, b"b" * 100_000, list(range(100_000))],
        "s" * 70_000, b"t" * 65_536, b"t" * 65_535, [b"u" * 65_530, b"v" * 10], [bytearray(b"w" * 70_000)],
        list(range(30_000)), {str(i): i for i in range(20_000)}, ["x" * 1000] * 200,
        [("k" * (i % 50), i) for i in range(3000)], [1.5] * 20_000, [[i] for i in range(20_000)],
        {i: [i, str(i)] for i in range(10_000)}, set(range(3000)), frozenset(range(2500)),
        {i: i for i in range(1000)}, {i: i for i in range(1001)}, list(range(1001)), set(range(1000)),
        [b"ab", b"cd", bytearray(b"x"), 1j, 2j, {1, 2}, frozenset({3}), range(3), slice(1, 2), ..., NotImplemented],
        [2**100, -(2**70), 2**63, -(2**63), 255, -256, -128, 2**31, -(2**31) - 1],
    ]
    while len(vals) < 400:
        vals.append(g.value())
    return vals


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dumps_byte_identical_to_cpython(protocol: int) -> None:
    """cellar.pickle.dumps writes CPython's bytes for basic values: frames cut where _pickle cuts
    them (64 KiB of content; >= 64 KiB payloads outside frames), globals and the 'latin1' codec
    name memoized, exact list/dict/set batching as _pickle.c (values whose objects are not shared:
    CPython memoizes by identity, which for shared immutables depends on interning)."""
    bad = []
    for v in _byte_identity_values():
        a, b = pickle.dumps(v, protocol), cp.dumps(v, protocol)
        if a != b:
            bad.append((repr(v)[:80], len(a), len(b), next(i for i in range(min(len(a), len(b)) + 1) if a[i:i + 1] != b[i:i + 1])))
    assert not bad, bad[:5]


# ---- class instances ----


class Plain:
    def __init__(self, a=1, b=(2, 3)):
        self.a = a
        self.b = list(b)

    def __eq__(self, other):
        return type(other) is type(self) and vars(self) == vars(other)


class Slotted:
    __slots__ = ("x", "y")

    def __init__(self, x=1, y="two"):
        self.x = x
        self.y = y

    def __eq__(self, other):
        return type(other) is Slotted and (self.x, self.y) == (other.x, other.y)


class Reduced:
    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (Reduced, (self.n,))

    def __eq__(self, other):
        return type(other) is Reduced and self.n == other.n


class NewArgsEx:
    def __new__(cls, a, *, b):
        self = super().__new__(cls)
        self.a, self.b = a, b
        return self

    def __getnewargs_ex__(self):
        return (self.a,), {"b": self.b}

    def __eq__(self, other):
        return type(other) is NewArgsEx and (self.a, self.b) == (other.a, other.b)


class MyList(list):
    def __eq__(self, other):
        return type(other) is MyList and list(self) == list(other) and vars(self) == vars(other)


class MyDict(dict):
    def __eq__(self, other):
        return type(other) is MyDict and dict(self) == dict(other) and vars(self) == vars(other)


class Outer:
    class Inner:
        def __init__(self, v=5):
            self.v = v

        def __eq__(self, other):
            return type(other) is Outer.Inner and self.v == other.v


class WithState:
    def __init__(self):
        self.secret = 42

    def __getstate__(self):
        return {"s": self.secret * 2}

    def __setstate__(self, state):
        self.secret = state["s"] // 2

    def __eq__(self, other):
        return type(other) is WithState and self.secret == other.secret


def make_objects():
    ml = MyList([1, 2, 3])
    ml.tag = "list"
    md = MyDict(a=1, b=[2])
    md.tag = "dict"
    rec = Plain()
    rec.me = rec
    return [
        Plain(),
        Slotted(),
        Reduced(7),
        NewArgsEx(1, b=2),
        ml,
        md,
        Outer.Inner(9),
        WithState(),
        [Plain(5, (6,)), {"nested": Slotted(3, "z")}],
        rec,
    ]


CLASSES = (Plain, Slotted, Reduced, NewArgsEx, MyList, MyDict, Outer.Inner, WithState)


def cpython_can_pickle(obj, protocol):
    try:
        pickle.dumps(obj, protocol)
    except (TypeError, pickle.PicklingError):
        return False
    return True


def equal(a, b):
    if isinstance(a, Plain) and hasattr(a, "me"):
        return type(b) is Plain and b.me is b and b.a == a.a
    return a == b


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_allowed_classes_rebuild_equal_objects(protocol: int) -> None:
    checked = 0
    for obj in make_objects():
        if not cpython_can_pickle(obj, protocol):
            continue
        data = pickle.dumps(obj, protocol)
        assert equal(obj, cp.loads(data, allow=CLASSES)), (obj, protocol)
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_classes_are_refused_by_name(protocol: int) -> None:
    for obj in make_objects():
        if not cpython_can_pickle(obj, protocol):
            continue
        with pytest.raises(pickle.UnpicklingError, match=r"global '(test_cellar_pickle|copyreg)\.|forbidden"):
            cp.loads(pickle.dumps(obj, protocol))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inert_objects_name_their_global_and_state(protocol: int) -> None:
    for obj in make_objects():
        if not cpython_can_pickle(obj, protocol):
            continue
        data = pickle.dumps(obj, protocol)
        x = cp.loads(data, inert=True)
        if isinstance(x, list):
            x = x[0]
            obj = obj[0]
        assert isinstance(x, Inert)
        assert x.module == __name__
        assert x.name == type(obj).__qualname__ or (x.construct == "call"), (x, protocol)
        # Written back, CPython rebuilds the same object.
        back = pickle.loads(cp.dumps(x, protocol))
        assert equal(obj, back), (obj, back, protocol)


def test_inert_details() -> None:
    x = cp.loads(pickle.dumps(Plain(), 2), inert=True)
    assert (x.construct, x.args, x.state) == ("newobj", (), {"a": 1, "b": [2, 3]})
    s = cp.loads(pickle.dumps(Slotted(), 4), inert=True)
    assert s.state == (None, {"x": 1, "y": "two"})
    ml = MyList([1, 2])
    ml.t = 1
    m = cp.loads(pickle.dumps(ml, 4), inert=True)
    assert m.listitems == [1, 2] and m.state == {"t": 1}
    n = cp.loads(pickle.dumps(NewArgsEx(1, b=2), 4), inert=True)
    assert (n.construct, n.args, n.kwargs) == ("newobj_ex", (1,), {"b": 2})
    assert "test_cellar_pickle.Plain" in repr(x)


def test_copyreg_registration_allows_and_reduces() -> None:
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    Point.__qualname__ = "Point"
    Point.__module__ = __name__
    globals()["Point"] = Point
    try:
        data = pickle.dumps(Point(1, 2), 4)
        with pytest.raises(pickle.UnpicklingError):
            cp.loads(data)
        cellar.copyreg.pickle(Point, lambda p: (Point, (p.x, p.y)))
        p = cp.loads(data)
        assert (type(p), p.x, p.y) == (Point, 1, 2)
        q = pickle.loads(cp.dumps(Point(3, 4), 2))
        assert (q.x, q.y) == (3, 4)
    finally:
        cellar.copyreg.dispatch_table.pop(Point, None)
        cellar.copyreg._changed()
        del globals()["Point"]
    with pytest.raises(TypeError):
        cellar.copyreg.pickle(Plain, "not callable")
    with pytest.raises(TypeError):
        cellar.copyreg.constructor("not callable")


def test_extension_codes() -> None:
    cellar.copyreg.add_extension(__name__, "Plain", 0x1234)
    try:
        data = b"\x80\x02\x83\x34\x12)\x81}X\x01\x00\x00\x00aK\x07sb."
        obj = cp.loads(data, allow=(Plain,))
        assert type(obj) is Plain and obj.a == 7
        with pytest.raises(pickle.UnpicklingError, match="Plain"):
            cp.loads(data)
        with pytest.raises(ValueError):
            cellar.copyreg.add_extension(__name__, "Other", 0x1234)
    finally:
        cellar.copyreg.remove_extension(__name__, "Plain", 0x1234)
    with pytest.raises(ValueError, match="unregistered extension code"):
        cp.loads(b"\x80\x02\x83\x34\x12.")


# ---- the malicious corpus ----

TRIGGER = os.path.join(tempfile.gettempdir(), f"cellar-pwned-{os.getpid()}")
CALLED: list = []


def boom(*args, **kwargs):
    CALLED.append(args)
    return "boom"


def _cmd() -> bytes:
    return f"touch {TRIGGER}".encode()


def malicious() -> list[bytes]:
    cmd = _cmd()
    n = len(cmd)
    mod = __name__.encode()
    return [
        b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([n]) + cmd + b"\x85R.",
        b"csubprocess\ncheck_output\n((S'touch'\nS'" + TRIGGER.encode() + b"'\nltR.",
        b"cbuiltins\neval\n(S'__import__(\"os\").system(\"" + cmd + b"\")'\ntR.",
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'" + cmd + b"'\ntR.",
        b"(S'" + cmd + b"'\nios\nsystem\n.",
        b"(cos\nsystem\nS'" + cmd + b"'\no.",
        b"\x80\x02cos\nsystem\n)\x81.",
        b"c" + mod + b"\nboom\n(tR.",
        b"\x80\x02c" + mod + b"\nPlain\n)\x81}S'__setstate__'\nc" + mod + b"\nboom\nsb.",
        b"\x80\x02cbuiltins\ngetattr\ncbuiltins\nobject\nX\x0e\x00\x00\x00__subclasses__\x86R)R.",
        b"\x80\x02cfunctools\npartial\ncos\nsystem\n\x85R.",
        b"\x80\x02ccopyreg\n_reconstructor\ncos\nsystem\ncbuiltins\nobject\nN\x87R.",
        b"\x80\x02cbuiltins\nbytearray\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85R.",
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
        b"\x80\x04\x8b\xff\xff\xff\x7f.",
        b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f.",
        b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7f.",
        b"(" * 1_000_000 + b".",
        b"\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00K\x01K\x02.",
        b"]r\xff\xff\xff\x7fj\xff\xff\xff\x7f.",
        b"\x80\x02}(K\x01h\x05u.",
    ]


@pytest.mark.parametrize("inert", [False, True])
def test_malicious_pickles_never_run_anything(inert: bool) -> None:
    if os.path.exists(TRIGGER):
        os.remove(TRIGGER)
    CALLED.clear()
    for data in malicious():
        try:
            cp.loads(data, inert=inert)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            assert str(e)
        assert not os.path.exists(TRIGGER), data[:60]
        assert not CALLED, data[:60]


def test_malicious_errors_name_the_global() -> None:
    data = malicious()
    for d, name in [(data[0], "os.system"), (data[2], "subprocess.check_output"), (data[3], "builtins.eval")]:
        with pytest.raises(pickle.UnpicklingError, match=name):
            cp.loads(d)


def test_inert_keeps_the_evil_call_as_data() -> None:
    x = cp.loads(malicious()[0], inert=True)
    assert (x.module, x.name, x.args) == ("os", "system", (_cmd().decode(),))
    assert repr(x).startswith("os.system(")


# ---- API details ----


def test_unpickler_reads_consecutive_pickles_and_leaves_the_file_after_them() -> None:
    f = io.BytesIO()
    pickle.dump([1], f, 2)
    pickle.dump({"a": 2}, f, 5)
    f.write(b"tail")
    f.seek(0)
    u = cp.Unpickler(f)
    assert u.load() == [1]
    assert cp.load(f) == {"a": 2}
    assert f.read() == b"tail"


def test_persistent_load() -> None:
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("ref", obj.n) if isinstance(obj, Reduced) else None

    for protocol in PROTOCOLS:
        f = io.BytesIO()
        P(f, protocol).dump([Reduced(3), "x"])
        with pytest.raises(pickle.UnpicklingError, match="persistent"):
            cp.loads(f.getvalue())

        class U(cp.Unpickler):
            def persistent_load(self, pid):
                return ("resolved", pid)

        f.seek(0)
        # Protocol 0 writes the persistent id as text (str(pid)), as CPython's pickler does.
        pid = str(("ref", 3)) if protocol == 0 else ("ref", 3)
        assert U(f).load() == [("resolved", pid), "x"]


def test_out_of_band_buffers() -> None:
    bufs: list = []
    data = pickle.dumps([pickle.PickleBuffer(b"abc"), pickle.PickleBuffer(bytearray(b"xy"))], 5, buffer_callback=bufs.append)
    with pytest.raises(pickle.UnpicklingError, match="buffers"):
        cp.loads(data)
    out = cp.loads(data, buffers=bufs)
    assert bytes(out[0]) == b"abc" and bytes(out[1]) == b"xy"
    with pytest.raises(pickle.UnpicklingError, match="not enough"):
        cp.loads(data, buffers=bufs[:1])


def test_python2_strings() -> None:
    data = b"S'a\\x00\\xa0'\np0\n."
    assert cp.loads(data, encoding="bytes") == b"a\x00\xa0"
    assert cp.loads(data, encoding="latin1") == "a\x00\xa0"
    with pytest.raises(UnicodeDecodeError):
        cp.loads(data)
    assert cp.loads(data, encoding="ascii", errors="replace") == "a\x00\ufffd"


def test_depth_and_memory_limits() -> None:
    deep = b"\x80\x02" + b"]" * 3000 + b"a" * 2999 + b"."
    with pytest.raises(pickle.UnpicklingError, match="max_depth"):
        cp.loads(deep)
    assert len(cp.loads(deep, max_depth=5000)) == 1
    tuples = b"\x80\x02K\x01" + b"\x85" * 2500 + b"."
    with pytest.raises(pickle.UnpicklingError, match="max_depth"):
        cp.loads(tuples)
    # A list reused through the memo to build many sets: amplification is charged.
    amp = b"\x80\x02](" + b"K\x01" * 1000 + b"eq\x00(" + b"cbuiltins\nset\nh\x00\x85R" * 5000 + b"t."
    with pytest.raises(pickle.UnpicklingError, match="max_bytes"):
        cp.loads(amp, max_bytes=1 << 20)
    # Deep nesting hidden behind the memo (a list filled after it was nested) is measured exactly.
    hidden = b"\x80\x02]q\x00(" + b"h\x00]q\x01a" + b"".join(
        b"h" + bytes([i]) + b"]q" + bytes([i + 1]) + b"a" for i in range(1, 200)
    ) + b"1."
    x, depth = cp.loads(hidden), 0
    while x:
        x, depth = x[0], depth + 1
    assert depth == 200
    with pytest.raises(pickle.UnpicklingError, match="max_depth"):
        cp.loads(hidden, max_depth=100)


def test_gc_state_is_restored() -> None:
    assert gc.isenabled()
    with pytest.raises(pickle.UnpicklingError):
        cp.loads(b"cos\nsystem\n.")
    assert gc.isenabled()
    gc.disable()
    try:
        cp.loads(pickle.dumps([1, 2]))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_errors_match_cpython_for_truncated_and_bad_opcodes() -> None:
    with pytest.raises(EOFError):
        cp.loads(b"")
    with pytest.raises(EOFError):
        cp.loads(b"N")
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        cp.loads(b"X\x05\x00\x00\x00ab")
    with pytest.raises(pickle.UnpicklingError, match="invalid load key"):
        cp.loads(b"\xff")
    with pytest.raises(ValueError, match="unsupported pickle protocol"):
        cp.loads(b"\x80\x09N.")
    with pytest.raises(TypeError):
        cp.loads("not bytes")  # type: ignore[arg-type]
    assert cp.loads(bytearray(pickle.dumps([1]))) == [1]
    assert cp.loads(memoryview(pickle.dumps([1]))) == [1]


def test_mutation_fuzz_never_crashes() -> None:
    r = random.Random(7)
    seeds = [pickle.dumps(v, p) for v in VALUES[:200] for p in PROTOCOLS]
    seeds += [pickle.dumps(o, p) for o in make_objects() for p in PROTOCOLS if cpython_can_pickle(o, p)]
    allowed_errors = (
        pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, UnicodeDecodeError,
        OverflowError, AttributeError, IndexError, RecursionError,
    )
    for i in range(20_000):
        data = bytearray(r.choice(seeds))
        for _ in range(r.randrange(1, 4)):
            k = r.randrange(3)
            pos = r.randrange(len(data) + 1)
            if k == 0 and data:
                data[min(pos, len(data) - 1)] = r.randrange(256)
            elif k == 1:
                data[pos:pos] = bytes([r.randrange(256)])
            else:
                del data[pos : pos + r.randrange(1, 8)]
        try:
            cp.loads(bytes(data), inert=bool(i % 2), allow=CLASSES if i % 3 == 0 else ())
        except allowed_errors:
            pass
    assert not CALLED


def _shared_and_recursive_values() -> list:
    """Values whose objects are shared or contain themselves: the memo must follow identity
    exactly as CPython's pickler does."""
    s, b, t, lst, d = "shared" * 3, b"bytes" * 3, (1, "x"), [1, 2], {"k": 1}
    rec_list: list = [1]
    rec_list.append(rec_list)
    rec_dict: dict = {}
    rec_dict["self"] = rec_dict
    rec_tuple_list: list = []
    rec_tuple = (rec_tuple_list, 5)
    rec_tuple_list.append(rec_tuple)
    big_tuple_list: list = []
    big_tuple = (big_tuple_list, 1, 2, 3, 4)
    big_tuple_list.append(big_tuple)
    fs = frozenset({1, 2})
    big_s = "L" * 70_000
    return [
        [s, s, b, b, t, t, lst, lst, d, d],
        {"a": lst, "b": lst, "c": (lst, lst)},
        rec_list,
        rec_dict,
        [rec_dict, rec_list, rec_dict],
        rec_tuple,
        rec_tuple_list,
        big_tuple,
        [fs, fs, {1: fs}],
        [bytearray(b"q" * 300)] * 3,
        [big_s, big_s, "M" * 200_000, b"N" * 131_072],
        [[i, str(i)] for i in range(40_000)],
        [lst] * 1500,
        [1j, 1j, complex(2, 3)],
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dumps_shared_and_recursive_byte_identical(protocol: int) -> None:
    """Shared and recursive objects (lists, dicts, tuples through lists, frozensets) and
    payloads over 64 KiB: the same bytes as CPython's pickle.dumps at every protocol."""
    for v in _shared_and_recursive_values():
        a, b = pickle.dumps(v, protocol), cp.dumps(v, protocol)
        assert a == b, (repr(v)[:60], protocol, len(a), len(b))


# ---- the one decoder: the Python-objects sink on cellar_pickle's core loop ------------------


def test_memo_index_bomb_is_charged_not_allocated() -> None:
    # LONG_BINPUT 0x000fffff: a sparse memo slot, charged against max_bytes, never a table of
    # a million entries.
    import tracemalloc

    data = b"\x80\x02Nr\xff\xff\x0f\x00."
    tracemalloc.start()
    try:
        assert cp.loads(data, max_bytes=1024) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # Many distinct sparse slots are charged (48 bytes each) and refused.
    spray = b"".join(b"Nr" + (0x000FFF00 + i).to_bytes(4, "little") + b"0" for i in range(40))
    with pytest.raises(pickle.UnpicklingError, match="max_bytes"):
        cp.loads(b"\x80\x02" + spray + b"N.", max_bytes=1024)


class SelfHash:
    """Hashes its own attributes: one that contains itself never finishes hashing."""

    def __hash__(self) -> int:
        return hash(tuple(vars(self).values()))

    def __eq__(self, other: object) -> bool:
        return self is other


def test_hashing_a_self_containing_key_is_an_unpickling_error() -> None:
    o = SelfHash()
    d = {o: 1}
    o.me = o  # after insertion: the pickle sets it (BUILD) before the key goes in
    data = pickle.dumps(d, 2)
    with pytest.raises(pickle.UnpicklingError, match="recursive structure"):
        cp.loads(data, allow=[SelfHash])
    s = {SelfHash()}
    next(iter(s)).me = next(iter(s))
    with pytest.raises(pickle.UnpicklingError, match="recursive structure"):
        cp.loads(pickle.dumps(s, 4), allow=[SelfHash])
    # A list that contains itself as a set member: unhashable, a TypeError as in CPython.
    with pytest.raises(TypeError):
        cp.loads(b"\x80\x02]q\x00h\x00a\x8f(h\x00\x90.")


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4])
def test_nested_classes_need_their_own_consent(protocol: int) -> None:
    data = pickle.dumps(Outer.Inner(7), protocol)
    assert cp.loads(data, allow=[Outer.Inner]) == Outer.Inner(7)
    with pytest.raises(pickle.UnpicklingError, match="Outer.Inner"):
        cp.loads(data, allow=[Outer])
    x = cp.loads(data, inert=True)
    assert (x.module, x.name) == (__name__, "Outer.Inner") or x.func is not None


def test_consent_for_a_basic_type_serves_what_its_shape_rules_refuse() -> None:
    data = pickle.dumps(bytearray, 2)
    with pytest.raises(pickle.UnpicklingError, match="builtins.bytearray"):
        cp.loads(data)
    assert cp.loads(data, allow=[bytearray]) is bytearray
    # Its own rules first: bytearray(b'ab') is served without the consent's call.
    assert cp.loads(pickle.dumps(bytearray(b"ab"), 2)) == bytearray(b"ab")


class ComplexSub(complex):
    def __getnewargs_ex__(self):
        return (self.real, self.imag), {}


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_partial_of_an_inherited_new(protocol: int) -> None:
    # Protocols 2-3 write partial(complex.__new__, ComplexSub, ...) for __getnewargs_ex__.
    x = cp.loads(pickle.dumps(ComplexSub(1, 2), protocol), allow=[ComplexSub, complex])
    assert type(x) is ComplexSub and x == complex(1, 2)


def test_reduce_on_a_non_callable_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        cp.loads(b"N)R.")
    with pytest.raises(TypeError):
        cp.loads(b"cbuiltins\nint\nNR.", allow=[int])


def test_inst_without_arguments_skips_init() -> None:
    # pickle's _instantiate: INST with no arguments is cls.__new__(cls), not cls().
    class NeedsArg:
        def __init__(self, arg):
            raise AssertionError("called")

    NeedsArg.__qualname__ = "NeedsArg"
    data = b"(i" + __name__.encode() + b"\nNeedsArg\n(dp0\nS'a'\nI1\nsb."
    x = cp.loads(data, allow=[(__name__, "NeedsArg", NeedsArg)])
    assert type(x) is NeedsArg and x.a == 1


class _Plain:
    def __init__(self) -> None:
        self.x = 1


class _Slots:
    __slots__ = ("a",)


def test_opcodes_an_allowed_object_cannot_take_are_unpickling_errors() -> None:
    # Found by scripts/fuzz-python.sh: APPEND / ADDITEMS on an allowed object without append /
    # add, BUILD of a slot the class lacks or of a __dict__ state on a class without __dict__
    # leaked AttributeError (CPython's unpickler does). They are the data's fault: an
    # UnpicklingError naming the opcode, the AttributeError as its cause.
    mod = __name__
    plain = b"c" + mod.encode() + b"\n_Plain\n)\x81"
    slots = b"c" + mod.encode() + b"\n_Slots\n)\x81"
    cases = [
        (b"\x80\x04" + plain + b"(K\x01e.", "APPEND"),  # APPENDS
        (b"\x80\x04" + plain + b"K\x01a.", "APPEND"),  # APPEND
        (b"\x80\x04" + plain + b"(K\x01\x90.", "ADDITEMS"),
        (b"\x80\x04" + slots + b"N}X\x01\x00\x00\x00zK\x01s\x86b.", "BUILD"),  # unknown slot
        (b"\x80\x04" + slots + b"}X\x01\x00\x00\x00aK\x01sb.", "BUILD"),  # dict state, no __dict__
    ]
    for data, op in cases:
        with pytest.raises(pickle.UnpicklingError, match=op) as info:
            cp.loads(data, allow=(_Plain, _Slots))
        assert isinstance(info.value.__cause__, AttributeError), data
    # A slot the class has is set.
    ok = cp.loads(b"\x80\x04" + slots + b"N}X\x01\x00\x00\x00aK\x07s\x86b.", allow=(_Slots,))
    assert type(ok) is _Slots and ok.a == 7
