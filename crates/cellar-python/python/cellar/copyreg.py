"""copyreg's API for cellar's pickle codec: the registry of types cellar.pickle may rebuild.

The stdlib's :mod:`copyreg` tells CPython's pickle how to reduce a type; this module plays the
same role for :mod:`cellar.pickle`, and one more: since cellar.pickle never imports or calls a
global it was not given, the types and constructors registered here are also the ones it may
rebuild when loading (besides those passed in ``allow=``).

* ``pickle(type, reduce[, constructor])``: ``cellar.pickle.dumps`` reduces instances of
  ``type`` with ``reduce(obj) -> (callable, args[, state[, listitems[, dictitems]]])`` (or a
  global name string), and ``cellar.pickle.loads`` may create ``type`` and call
  ``constructor``;
* ``constructor(callable)``: allow ``callable`` to be called when loading;
* ``dispatch_table``: the ``{type: reduce}`` mapping ``pickle()`` fills;
* ``add_extension`` / ``remove_extension`` / ``clear_extension_cache``: extension codes with
  the stdlib's validations, used by both ``dumps`` (EXT1/2/4 at protocol 2+) and ``loads``.

The registry is separate from the stdlib's: registering here does not change what CPython's
own pickle does.
"""

from __future__ import annotations

import copyreg as _std
TYPE_CHECKING = False  # typing is not imported at run time (import cost)
if TYPE_CHECKING:
    from typing import Any, Callable

# Helpers CPython's pickles name and tests use; the same objects as the stdlib's.
from copyreg import (  # noqa: F401  (re-exported)
    __newobj__,
    __newobj_ex__,
    _reconstructor,
    _reduce_ex,
    _slotnames,
)

__all__ = [
    "pickle",
    "constructor",
    "dispatch_table",
    "add_extension",
    "remove_extension",
    "clear_extension_cache",
]

dispatch_table: dict = {}
_constructors: dict = {}
# A counter bumped on every change, so cellar.pickle rebuilds its cached loaders.
_generation = 0


def _changed() -> None:
    global _generation
    _generation += 1


def _version() -> tuple:
    return (_generation, len(dispatch_table), len(_constructors))


def pickle(ob_type: type, pickle_function: Callable, constructor_ob: Callable | None = None) -> None:
    """Register ``pickle_function`` as the reduction function for ``ob_type`` (and allow
    ``ob_type`` and ``constructor_ob`` when loading)."""
    if not callable(pickle_function):
        raise TypeError("reduction functions must be callable")
    dispatch_table[ob_type] = pickle_function
    _changed()
    # The constructor argument is ignored by the stdlib since Python 2; here it also allows
    # that callable when loading.
    if constructor_ob is not None:
        constructor(constructor_ob)


def constructor(object: Callable) -> None:
    """Allow ``object`` to be called by cellar.pickle when loading."""
    if not callable(object):
        raise TypeError("constructors must be callable")
    _constructors[id(object)] = object
    _changed()


def _allowed() -> list:
    """Everything registered here that loading may create or call."""
    return [t for t in dispatch_table if isinstance(t, type)] + list(_constructors.values())


def _reducer(obj: Any) -> Any:
    """The reduction for ``obj`` from ``dispatch_table`` (by exact type), or None."""
    reduce = dispatch_table.get(type(obj))
    if reduce is None:
        return None
    return reduce(obj)


# Extension codes: the same three tables as the stdlib's copyreg, for cellar's codec.
_extension_registry: dict = {}  # key -> code
_inverted_registry: dict = {}  # code -> key
_extension_cache: dict = {}  # code -> object


def add_extension(module: str, name: str, code: int) -> None:
    """Register an extension code."""
    code = int(code)
    if not 1 <= code <= 0x7FFFFFFF:
        raise ValueError("code out of range")
    key = (module, name)
    if _extension_registry.get(key) == code and _inverted_registry.get(code) == key:
        return  # Redundant registrations are benign
    if key in _extension_registry:
        raise ValueError("key %s is already registered with code %s" % (key, _extension_registry[key]))
    if code in _inverted_registry:
        raise ValueError("code %s is already in use for key %s" % (code, _inverted_registry[code]))
    _extension_registry[key] = code
    _inverted_registry[code] = key
    _changed()


def remove_extension(module: str, name: str, code: int) -> None:
    """Unregister an extension code.  For testing only."""
    key = (module, name)
    if _extension_registry.get(key) != code or _inverted_registry.get(code) != key:
        raise ValueError("key %s is not registered with code %s" % (key, code))
    del _extension_registry[key]
    del _inverted_registry[code]
    if code in _extension_cache:
        del _extension_cache[code]
    _changed()


def clear_extension_cache() -> None:
    _extension_cache.clear()


# The stdlib module, for code that needs both registries side by side.
stdlib = _std
