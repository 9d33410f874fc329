"""``cellar.pickle.Unpickler.find_class``: the base method is the policy as a lookup (nothing is
imported), and an override (subclass method, staticmethod, classmethod or instance attribute)
is asked for every global the pickle names, as in the stdlib. What an override returns is the
caller's explicit choice (like an ``allow=`` entry) under the same rules: it cannot turn a
pattern marker or a basic-type constructor into a value or a free callable, and BUILD still
acts only on instances the load itself created.
"""

from __future__ import annotations

import builtins
import copyreg
import functools
import io
import pickle
import sys

import pytest

import cellar.pickle as cp

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


class Point:
    def __init__(self, x: int = 0, y: int = 0) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


class Box:
    class Inner:
        def __init__(self, v: int) -> None:
            self.v = v


def with_override(data: bytes, find_class, **kw):
    class U(cp.Unpickler):
        pass

    u = U(io.BytesIO(data), **kw)
    u.find_class = find_class
    return u.load()


_EVENTS: list = []
_ACTIVE = [False]


def _hook(event: str, args: tuple) -> None:
    if _ACTIVE[0] and event.startswith(("os.system", "subprocess.", "exec", "import", "os.")):
        _EVENTS.append(event)


sys.addaudithook(_hook)


def audited(fn, *args):
    _EVENTS.clear()
    _ACTIVE[0] = True
    try:
        return fn(*args)
    finally:
        _ACTIVE[0] = False


# ---- the base find_class ------------------------------------------------------------------


def test_base_find_class_is_the_policy() -> None:
    u = cp.Unpickler(io.BytesIO(), allow=(Point, ("os.path", "join", len)))
    assert u.find_class(__name__, "Point") is Point
    assert u.find_class("os.path", "join") is len  # the allow= triple, nothing imported
    # Default globals: the stdlib objects (the decoder keeps their rules when they come back).
    assert u.find_class("builtins", "set") is set
    assert u.find_class("copyreg", "__newobj__") is copyreg.__newobj__
    assert u.find_class("__builtin__", "set") is set  # fix_imports below protocol 3
    nofix = cp.Unpickler(io.BytesIO(), fix_imports=False)
    with pytest.raises(ModuleNotFoundError):
        nofix.find_class("__builtin__", "set")
    # Refusals are UnpicklingError, and also the type the stdlib's find_class raises.
    with pytest.raises(cp.UnpicklingError, match="forbidden") as e:
        u.find_class("os", "system")
    assert isinstance(e.value, ModuleNotFoundError)
    with pytest.raises(cp.UnpicklingError) as e:
        u.find_class(__name__, "Box")  # module has allowed names, not this one
    assert isinstance(e.value, AttributeError)
    with pytest.raises(cp.UnpicklingError) as e:
        u.find_class("", "x")
    assert isinstance(e.value, ValueError)
    with pytest.raises(TypeError):
        u.find_class(None, "x")  # type: ignore[arg-type]
    assert "os" not in dir() and u.find_class.__self__ is u


def test_base_find_class_dotted_names_need_protocol_4() -> None:
    allow = (Box.Inner,)
    u = cp.Unpickler(io.BytesIO(), allow=allow)
    with pytest.raises(AttributeError):
        u.find_class(__name__, "Box.Inner")
    u4 = cp.Unpickler(io.BytesIO(b"\x80\x04N."), allow=allow)
    assert u4.load() is None and u4.proto == 4
    assert u4.find_class(__name__, "Box.Inner") is Box.Inner


def test_base_find_class_inert() -> None:
    g = cp.Unpickler(io.BytesIO(), inert=True).find_class("os", "system")
    assert isinstance(g, cp.Inert) and (g.module, g.name, g.construct) == ("os", "system", "global")


# ---- overrides ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_override_allows_what_it_returns(protocol: int) -> None:
    data = pickle.dumps([Point(1, 2), Point(3, 4)], protocol)
    seen: list = []

    class U(cp.Unpickler):
        def find_class(self, module, name):
            seen.append((module, name))
            if (module, name) == (__name__, "Point"):
                return Point
            return super().find_class(module, name)

    with pytest.raises(cp.UnpicklingError, match="forbidden"):
        cp.loads(data)  # no allow=: refused
    out = U(io.BytesIO(data)).load()
    assert out == [Point(1, 2), Point(3, 4)]
    assert (__name__, "Point") in seen


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_override_is_asked_for_nested_classes(protocol: int) -> None:
    data = pickle.dumps(Box.Inner(7), protocol)

    class U(cp.Unpickler):
        def find_class(self, module, name):
            if module == __name__ and name in ("Box", "Box.Inner"):
                return {"Box": Box, "Box.Inner": Box.Inner}[name]
            return super().find_class(module, name)

    assert U(io.BytesIO(data)).load().v == 7


def test_override_refuses() -> None:
    data = b"cos\nsystem\n(Vecho pwned\ntR."

    class U(cp.Unpickler):
        def find_class(self, module, name):
            raise cp.UnpicklingError(f"no {module}.{name} here")

    with pytest.raises(cp.UnpicklingError, match="no os.system here"):
        audited(U(io.BytesIO(data)).load)
    assert not _EVENTS
    # Even the default globals go through it, with the names as the data spells them.
    with pytest.raises(cp.UnpicklingError, match="no __builtin__.set here"):
        U(io.BytesIO(pickle.dumps({1}, 2))).load()


def test_override_raising_ends_the_load() -> None:
    def find_class(module, name):
        raise KeyError((module, name))

    with pytest.raises(KeyError):
        with_override(b"cmath\nlog\n.", find_class)


def test_override_returns_something_else() -> None:
    calls: list = []

    def fake_system(*args):
        calls.append(args)
        return "faked"

    class U(cp.Unpickler):
        def find_class(self, module, name):
            return fake_system if (module, name) == ("os", "system") else (module, name)

    data = b"cos\nsystem\n(Vecho pwned\ntR."
    assert audited(U(io.BytesIO(data)).load) == "faked"
    assert calls == [("echo pwned",)] and not _EVENTS
    assert U(io.BytesIO(b"\x8c\x04math\x8c\x03log\x93.")).load() == ("math", "log")

    class S(cp.Unpickler):
        @staticmethod
        def find_class(module, name):
            return [module, name]

    assert S(io.BytesIO(b"cmath\nlog\n.")).load() == ["math", "log"]


@pytest.mark.parametrize(
    "marker",
    [copyreg.__newobj__, copyreg._reconstructor, copyreg.__newobj_ex__, getattr, functools.partial, object, int],
)
def test_override_cannot_hand_out_a_pattern_marker(marker) -> None:
    # The marker under another name stays a marker: never a value, never called freely.
    def find_class(module, name):
        return marker

    with pytest.raises(cp.UnpicklingError):
        with_override(b"cevil\nf\n.", find_class)  # as the result
    with pytest.raises(cp.UnpicklingError):
        with_override(b"cevil\nf\nq\x000]h\x00a.", find_class)  # stored in a list
    with pytest.raises(cp.UnpicklingError):
        with_override(b"cevil\nf\n(cevil\ng\nVsystem\ntR.", find_class)  # called on itself


def test_override_cannot_unshape_basic_types() -> None:
    # bytearray(N) is the memory bomb of issue 12: still only the shapes CPython writes.
    def find_class(module, name):
        return bytearray

    with pytest.raises(cp.UnpicklingError):
        with_override(b"cevil\nf\n(J\x00\x00\x00@tR.", find_class)
    assert with_override(b"cevil\nf\n(C\x02abtR.", find_class) == bytearray(b"ab")


def test_override_result_is_never_built_on() -> None:
    def f() -> None:
        pass

    existing = Point(1, 2)
    targets = {"cls": Point, "func": f, "obj": existing, "mod": builtins}
    for key, target in targets.items():
        before = dict(vars(target)) if hasattr(target, "__dict__") else None

        def find_class(module, name, target=target):
            return target

        # GLOBAL evil.x; BUILD {'x': 99, '__setstate__': <evil.x>}
        data = b"cevil\nx\n}(Vx\nK\x63V__setstate__\ncevil\nx\nub."
        with pytest.raises(cp.UnpicklingError, match="BUILD"):
            with_override(data, find_class)
        assert before is None or dict(vars(target)) == before, key
    assert existing == Point(1, 2) and not hasattr(Point, "x")


def test_override_instances_are_built_with_the_class_rules() -> None:
    # An instance the load creates through what the override returned: BUILD as for allow=,
    # __setstate__ from the class, never from the state.
    def find_class(module, name):
        return Point

    data = b"\x80\x02cevil\nP\n)\x81}(X\x01\x00\x00\x00xK\x05X\x0c\x00\x00\x00__setstate__cevil\nP\nub."
    out = with_override(data, find_class)
    assert isinstance(out, Point) and out.x == 5
    assert out.__dict__["__setstate__"] is Point and not hasattr(Point, "__setstate__")


def test_unpickler_without_override_keeps_the_policy() -> None:
    # A subclass that does not touch find_class: the decoder resolves by name as loads() does.
    class U(cp.Unpickler):
        pass

    with pytest.raises(cp.UnpicklingError, match="forbidden"):
        U(io.BytesIO(b"cos\nsystem\n.")).load()
    assert U(io.BytesIO(pickle.dumps({1, 2}, 2))).load() == {1, 2}


def test_override_result_is_never_filled() -> None:
    # APPEND / SETITEM / ADDITEMS on what the override returned (a global, also through the
    # memo), or on a container a returned callable hands back: refused, nothing mutated.
    existing_list, existing_dict, existing_set = [1], {"a": 1}, {1}
    cases = [
        (existing_list, b"cm\nx\nK\x05a."),
        (existing_dict, b"cm\nx\nK\x05K\x06s."),
        (existing_set, b"\x80\x04cm\nx\n(K\x05\x90."),
        (existing_list, b"cm\nx\nq\x000h\x00K\x05a."),
        (lambda: existing_list, b"cm\nx\n)RK\x05a."),
    ]
    for target, data in cases:

        def find_class(module, name, target=target):
            return target

        with pytest.raises(cp.UnpicklingError):
            with_override(data, find_class)
    assert existing_list == [1] and existing_dict == {"a": 1} and existing_set == {1}
