"""Classes and functions the hostile pickle corpus allows (mode ``allow``): the corpus pickles
name them as ``corpus_classes.<name>``. Kept tiny and side-effect free; the corpus tests take
snapshots of them to prove no pickle mutated them."""

from __future__ import annotations

SETSTATE_CALLS: list = []


class Point:
    """A plain class: NEWOBJ + BUILD of a dict state."""

    def __init__(self, x: int = 0, y: int = 0) -> None:
        self.x = x
        self.y = y


class Slotted:
    """A class with slots: BUILD state is (None, {slot: value})."""

    __slots__ = ("a", "b")


class WithSetstate:
    """A class with its own __setstate__ (the only one BUILD may call)."""

    def __setstate__(self, state: object) -> None:
        SETSTATE_CALLS.append(state)
        self.state = state


class Outer:
    """Nested class: protocols 0-3 write getattr(Outer, 'Inner')."""

    class Inner:
        pass


def make_point(x: int, y: int) -> Point:
    """An allowed function: REDUCE may call it."""
    return Point(x, y)


ALLOWED = (Point, Slotted, WithSetstate, Outer.Inner, make_point)

# The Rust face allows the same names (as inert objects) for mode `allow`.
ALLOWED_NAMES = [(c.__module__, c.__qualname__) for c in ALLOWED]
