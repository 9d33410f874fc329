"""Shared helpers for the cellar Python tests."""

from __future__ import annotations

import math
import types


def same(a: object, b: object, _depth: int = 0) -> bool:
    """Structural equality with type identity, NaN-aware (nan equals nan), -0.0 != 0.0.

    Sets are compared with ==, after checking the element types match as multisets.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)  # type: ignore[arg-type]
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)  # type: ignore[arg-type]
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)  # type: ignore[union-attr]
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(  # type: ignore[arg-type]
            same(x, y, _depth + 1) for x, y in zip(a, b)  # type: ignore[call-overload]
        )
    if isinstance(a, dict):
        if len(a) != len(b):  # type: ignore[arg-type]
            return False
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):  # type: ignore[union-attr]
            if not same(ka, kb, _depth + 1) or not same(va, vb, _depth + 1):
                return False
        return True
    if isinstance(a, (set, frozenset)):
        if a != b:
            return False
        ta = sorted(type(x).__name__ for x in a)
        tb = sorted(type(x).__name__ for x in b)  # type: ignore[union-attr]
        return ta == tb
    if isinstance(a, slice):
        return (
            same(a.start, b.start) and same(a.stop, b.stop) and same(a.step, b.step)  # type: ignore[union-attr]
        )
    if isinstance(a, types.CodeType):
        return a == b
    return a == b  # type: ignore[no-any-return]
