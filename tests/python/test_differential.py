"""Differential test: cellar.marshal against the stdlib's C marshal on >= 10,000 random values.

For versions 0-4, both directions: the stdlib loads cellar's bytes to an equal value, and cellar
loads the stdlib's bytes to an equal value (NaN-aware structural equality with type identity).
Version 5 (slices) round-trips through cellar and is checked against hand-built golden bytes.
"""

from __future__ import annotations

import marshal as c_marshal
import random
import sys

import pytest

import cellar.marshal as r_marshal
from conftest import same

SEED = 20261123
N_VALUES = 10_000

INT_EDGES = [
    0, 1, -1, 255, 256, -256, 2**15 - 1, 2**15, 2**30, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
    2**32, 2**45, 2**60 - 1, 2**60, 2**62, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64,
    2**64 - 1, 2**75, 2**120, 2**127, 2**128, -(2**128), 10**50, -(10**100), 3**500,
]
FLOAT_EDGES = [
    0.0, -0.0, 1.0, -1.5, 0.1, 1e308, -1e308, 5e-324, 2.2250738585072014e-308, float("inf"),
    float("-inf"), float("nan"), 1 / 3, 123456789.123456789, 1e16, 1e-7, 2.0**53,
]
STR_EDGES = [
    "", "a", "abc", "x" * 255, "x" * 256, "y" * 1000, "é", "ÿ" * 300, "\u20ac", "\uffff",
    "\U0001f600", "a\U0010ffffz", "\ud800", "\udfff", "x\udc80y", "\ud83d\ude00", "\x00\x7f\x80",
    "日本語テキスト", "mixed ascii and ü" * 20,
]
BYTES_EDGES = [b"", b"\x00", bytes(range(256)), b"x" * 300]


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def int_(self) -> int:
        r = self.r
        k = r.randrange(6)
        if k == 0:
            return r.choice(INT_EDGES)
        if k == 1:
            return r.randrange(-300, 300)
        if k == 2:
            return r.randrange(-(2**31), 2**31)
        if k == 3:
            return r.randrange(-(2**63), 2**63)
        if k == 4:
            return r.getrandbits(r.randrange(1, 600)) * r.choice((1, -1))
        return r.choice(INT_EDGES) + r.randrange(-2, 3)

    def float_(self) -> float:
        r = self.r
        k = r.randrange(4)
        if k == 0:
            return r.choice(FLOAT_EDGES)
        if k == 1:
            return r.uniform(-1e6, 1e6)
        if k == 2:
            return r.random() * 10.0 ** r.randrange(-300, 300)
        import struct

        return struct.unpack("<d", r.getrandbits(64).to_bytes(8, "little"))[0]

    def str_(self) -> str:
        r = self.r
        k = r.randrange(5)
        if k == 0:
            return r.choice(STR_EDGES)
        n = r.choice((0, 1, 3, 10, 40, 255, 256, 300)) if r.random() < 0.1 else r.choice((0, 1, 3, 8))
        if k == 1:
            return "".join(chr(r.randrange(32, 127)) for _ in range(n))
        if k == 2:
            return "".join(chr(r.randrange(0, 256)) for _ in range(n))
        if k == 3:
            return "".join(chr(r.randrange(0, 0x10000)) for _ in range(n))
        return "".join(chr(r.randrange(0, 0x110000)) for _ in range(min(n, 40)))

    def bytes_(self) -> bytes:
        r = self.r
        if r.random() < 0.3:
            return r.choice(BYTES_EDGES)
        return bytes(r.getrandbits(8) for _ in range(r.choice((0, 1, 5, 64, 300))))

    def complex_(self) -> complex:
        return complex(self.float_(), self.float_())

    def hashable(self, depth: int) -> object:
        r = self.r
        k = r.randrange(10 if depth < 3 else 8)
        if k == 0:
            return self.int_()
        if k == 1:
            x = self.float_()
            return 0.5 if x != x else x  # NaN keys never compare equal
        if k == 2:
            return self.str_()
        if k == 3:
            return self.bytes_()
        if k == 4:
            return r.choice((None, True, False, ..., StopIteration))
        if k == 5:
            c = self.complex_()
            return c if c == c else 1 + 2j  # NaN parts never compare equal
        if k in (6, 7):
            return self.str_()
        if k == 8:
            return tuple(self.hashable(depth + 1) for _ in range(r.randrange(4)))
        return frozenset(self.hashable(depth + 1) for _ in range(r.randrange(4)))

    def value(self, depth: int = 0) -> object:
        r = self.r
        k = r.randrange(16 if depth < 4 else 9)
        if k == 0:
            return self.int_()
        if k == 1:
            return self.float_()
        if k in (2, 3):
            return self.str_()
        if k == 4:
            return self.bytes_()
        if k == 5:
            return self.complex_()
        if k == 6:
            return r.choice((None, True, False, ..., StopIteration))
        if k in (7, 8):
            return self.hashable(depth)
        if depth == 0 and r.random() < 0.01:
            n = 300
        else:
            n = r.choice((0, 1, 2, 3, 5, 8)) if depth < 2 else r.randrange(3)
        if k == 9:
            return [self.value(depth + 1) for _ in range(n)]
        if k == 10:
            return tuple(self.value(depth + 1) for _ in range(n))
        if k == 11:
            return {self.hashable(depth + 1): self.value(depth + 1) for _ in range(n)}
        if k == 12:
            return {self.hashable(depth + 1) for _ in range(n)}
        if k == 13:
            return frozenset(self.hashable(depth + 1) for _ in range(n))
        if k == 14:
            # Shared sub-objects: the same object several times.
            shared = self.value(depth + 1)
            return [shared, (shared, shared), {"k": shared}]
        return [self.value(depth + 1) for _ in range(n)]


def corpus() -> list[object]:
    g = Gen(SEED)
    values: list[object] = list(INT_EDGES + FLOAT_EDGES + STR_EDGES + BYTES_EDGES)
    values += [None, True, False, ..., StopIteration, (), [], {}, set(), frozenset(), 0j, -0.0j]
    values += [{(1, 2): "tuple key", frozenset({3}): "frozenset key", 1.5: None}]
    while len(values) < N_VALUES:
        values.append(g.value())
    return values


VALUES = corpus()


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_stdlib_loads_cellar_bytes(version: int) -> None:
    bad = []
    for i, v in enumerate(VALUES):
        data = r_marshal.dumps(v, version)
        back = c_marshal.loads(data)
        if not same(v, back):
            bad.append((i, v, back))
    assert not bad[:5], f"{len(bad)} mismatches"


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_cellar_loads_stdlib_bytes(version: int) -> None:
    bad = []
    for i, v in enumerate(VALUES):
        data = c_marshal.dumps(v, version)
        back = r_marshal.loads(data)
        if not same(v, back):
            bad.append((i, v, back))
    assert not bad[:5], f"{len(bad)} mismatches"


@pytest.mark.parametrize("version", [0, 1, 2])
def test_bytes_identical_without_references(version: int) -> None:
    """Below version 3 there are no reference flags, so the bytes must match CPython exactly."""
    bad = [v for v in VALUES if r_marshal.dumps(v, version) != c_marshal.dumps(v, version)]
    assert not bad[:5], f"{len(bad)} differ"


def test_enough_values() -> None:
    assert len(VALUES) >= 10_000
    kinds = {type(v) for v in VALUES}
    for t in (int, float, str, bytes, tuple, list, dict, set, frozenset, complex, bool):
        assert t in kinds


def test_shared_subobjects_stay_shared() -> None:
    shared = [1, 2, 3]
    v = [shared, shared, (shared,)]
    for data in (r_marshal.dumps(v), c_marshal.dumps(v)):
        back = r_marshal.loads(data)
        assert back[0] is back[1] is back[2][0]
    back = c_marshal.loads(r_marshal.dumps(v))
    assert back[0] is back[1] is back[2][0]


def test_recursive_containers() -> None:
    lst: list[object] = []
    lst.append(lst)
    d: dict[str, object] = {}
    d["self"] = d
    for v in (lst, d):
        for data in (r_marshal.dumps(v), c_marshal.dumps(v)):
            back = r_marshal.loads(data)
            inner = back[0] if isinstance(back, list) else back["self"]
            assert inner is back
        back = c_marshal.loads(r_marshal.dumps(v))
        inner = back[0] if isinstance(back, list) else back["self"]
        assert inner is back
    with pytest.raises(ValueError, match="too deeply nested"):
        r_marshal.dumps(lst, 2)


def test_interned_strings_are_interned() -> None:
    name = sys.intern("some_identifier_name")
    for data in (r_marshal.dumps(name), c_marshal.dumps(name)):
        assert data[0] & 0x7F == ord("Z")
        back = r_marshal.loads(data)
        assert back is sys.intern(back)
    long_name = sys.intern("n" * 300)
    assert r_marshal.loads(r_marshal.dumps(long_name)) is long_name
    u = sys.intern("ünïcode_name")
    assert r_marshal.dumps(u, 3)[0] & 0x7F == ord("t")
    assert r_marshal.loads(r_marshal.dumps(u, 3)) is u
    assert r_marshal.dumps(u, 2)[0] & 0x7F == ord("u")


# ----- version 5: slices -----

SLICES = [
    slice(None),
    slice(1, 2, 3),
    slice(-5, None, None),
    slice("a", (1, 2), [3]),
    slice(2**70, 1.5, None),
]


def test_slices_round_trip_at_version_5() -> None:
    for s in SLICES:
        assert same(r_marshal.loads(r_marshal.dumps(s, 5)), s)
    nested = [SLICES, (SLICES[1], SLICES[1]), {"s": SLICES[2]}]
    back = r_marshal.loads(r_marshal.dumps(nested, 5))
    assert same(back, nested)
    assert back[1][0] is back[1][1]


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_slices_refused_below_version_5(version: int) -> None:
    with pytest.raises(ValueError, match="unmarshallable object"):
        r_marshal.dumps(slice(1, 2), version)
    with pytest.raises(ValueError, match="unmarshallable object"):
        r_marshal.dumps([1, (slice(None),)], version)


# Hand-built from CPython 3.14's format: ':' start stop step, FLAG_REF on shared objects.
GOLDEN_V5 = [
    (b":NNN", slice(None)),
    (b":i\x01\x00\x00\x00i\x02\x00\x00\x00i\x03\x00\x00\x00", slice(1, 2, 3)),
    (b":\xe9\x01\x00\x00\x00r\x00\x00\x00\x00N", slice(1, 1, None)),
    (b")\x02\xba\xe9\x05\x00\x00\x00NNr\x00\x00\x00\x00", (slice(5, None), slice(5, None))),
    (b":z\x01aNi\xff\xff\xff\xff", slice("a", None, -1)),
]


def test_slice_golden_bytes() -> None:
    for data, expected in GOLDEN_V5:
        assert same(r_marshal.loads(data), expected), data
    t = r_marshal.loads(GOLDEN_V5[3][0])
    assert t[0] is t[1]
    # cellar writes these bytes (the slice itself may carry FLAG_REF, as in CPython).
    data = r_marshal.dumps(slice(None), 5)
    assert data[0] & 0x7F == ord(":") and data[1:] == b"NNN"


def test_slice_self_reference_is_invalid() -> None:
    with pytest.raises(ValueError, match="invalid reference"):
        r_marshal.loads(b"\xbar\x00\x00\x00\x00NN")
