"""A safe pickle codec: CPython's pickle format, protocols 0-5, decoded without importing or
running anything.

``cellar.pickle.loads(data)`` reads any pickle CPython writes and returns real Python objects,
but a global named by the pickle (``os.system``, ``builtins.eval``, a class) is never imported
and never called unless the caller allowed it:

* ``allow=(cls, func, ...)``: objects the caller already holds (found by their ``__module__`` and
  ``__qualname__``; a ``(module, qualname, obj)`` triple allows ``obj`` under another name);
  allowed classes are rebuilt the
  way pickle would (NEWOBJ / NEWOBJ_EX / REDUCE, ``__setstate__``, slots, and, for them only,
  the ``functools.partial`` + ``getattr`` form CPython writes for ``__getnewargs_ex__`` at
  protocols 2-3);
* types and constructors registered with :mod:`cellar.copyreg`;
* the globals CPython writes for basic types (``complex``, ``set``, ``frozenset``,
  ``bytearray``, ``bytes``, ``slice``, ``Ellipsis``, ``StopIteration``, ``_codecs.encode``),
  called only with the argument shapes CPython writes.

Anything else raises :class:`pickle.UnpicklingError` naming the global, or, with
``inert=True``, becomes an :class:`Inert` object describing it (global, arguments, state,
items) that :func:`dumps` writes back to an equivalent pickle. Nesting is limited by
``max_depth`` and memory by ``max_bytes`` (default ``max(64 * len(data), 16 MiB)``).

``dumps(obj, protocol=None)`` writes basic types, :class:`Inert` objects and types registered
with :mod:`cellar.copyreg`; CPython's ``pickle.loads`` reads the result.
"""

from __future__ import annotations

import io
from pickle import (
    DEFAULT_PROTOCOL,
    HIGHEST_PROTOCOL,
    PickleError,
    PicklingError,
    UnpicklingError,
)
from typing import Any, Callable, Iterable, NamedTuple

from cellar import _cellar
from cellar import copyreg as _copyreg

__all__ = [
    "DEFAULT_PROTOCOL",
    "HIGHEST_PROTOCOL",
    "Inert",
    "PickleError",
    "PicklingError",
    "UnpicklingError",
    "Unpickler",
    "dump",
    "dumps",
    "globals_of",
    "load",
    "loads",
]

DEFAULT_MAX_DEPTH = 2000


class Inert:
    """An object a pickle describes but that was not rebuilt: its global and what the pickle
    does with it, kept as plain data.

    ``construct`` says how the pickle creates it: ``'global'`` (the class or function itself),
    ``'reduce'`` (``module.name(*args)``: REDUCE, INST or OBJ), ``'newobj'``
    (``cls.__new__(cls, *args)``), ``'newobj_ex'`` (with ``kwargs``), ``'reconstructor'``
    (``copyreg._reconstructor(cls, *args)``, protocols 0-1), or ``'call'`` (``func(*args)``
    where ``func`` is itself an inert object, not a global). ``state`` is what BUILD applied
    (None if nothing), ``listitems`` / ``dictitems`` what APPENDS / SETITEMS added (list and
    dict subclasses).
    """

    __slots__ = (
        "module",
        "name",
        "construct",
        "args",
        "kwargs",
        "state",
        "listitems",
        "dictitems",
        "func",
    )

    def __init__(
        self,
        module: str,
        name: str,
        construct: str = "global",
        args: tuple = (),
        kwargs: dict | None = None,
        state: Any = None,
        listitems: list | None = None,
        dictitems: list | None = None,
        func: "Inert | None" = None,
    ) -> None:
        self.module = module
        self.name = name
        self.construct = construct
        self.args = tuple(args)
        self.kwargs = kwargs
        self.state = state
        self.listitems = [] if listitems is None else listitems
        self.dictitems = [] if dictitems is None else dictitems
        self.func = func

    @classmethod
    def _made(cls, of: Any, construct: str, args: tuple, kwargs: dict | None) -> "Inert":
        # Called by the decoder: `of` is an inert object or a stdlib global the decoder knows.
        if isinstance(of, Inert):
            if of.construct == "global":
                return cls(of.module, of.name, construct, args, kwargs)
            made = cls._partial_new(of, args)
            if made is not None:
                return made
            return cls(of.module, of.name, "call", args, kwargs, func=of)
        if of is getattr and len(args) == 2 and _is_global(args[0]) and isinstance(args[1], str):
            # getattr(Outer, 'Inner'): how protocols 0-3 name nested classes.
            return cls(args[0].module, f"{args[0].name}.{args[1]}")
        module = getattr(of, "__module__", None) or "builtins"
        name = getattr(of, "__qualname__", None) or type(of).__name__
        return cls(module, name, construct, args, kwargs)

    @classmethod
    def _partial_new(cls, of: "Inert", args: tuple) -> "Inert | None":
        # functools.partial(C.__new__, C, *a, **kw)() is how protocols 2-3 write
        # __getnewargs_ex__: kept as C.__new__(C, *a, **kw), i.e. NEWOBJ_EX.
        if (of.module, of.name, of.construct) != ("functools", "partial", "reduce"):
            return None
        state = of.state
        if not (isinstance(state, tuple) and len(state) == 4):
            return None
        func, pargs, kw, _ = state
        if not (_is_global(func) and func.name.endswith(".__new__") and pargs and _is_global(pargs[0])):
            return None
        target = pargs[0]
        if (target.module, target.name) != (func.module, func.name[: -len(".__new__")]):
            return None
        return cls(target.module, target.name, "newobj_ex", tuple(pargs[1:]) + tuple(args), dict(kw or {}))

    def _key(self) -> tuple:
        return (
            self.module,
            self.name,
            self.construct,
            self.args,
            self.kwargs,
            self.state,
            self.listitems,
            self.dictitems,
            self.func,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Inert):
            return NotImplemented
        if self is other:
            return True
        return self._key() == other._key()

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        target = f"{self.module}.{self.name}"
        if self.construct == "global":
            return target
        if self.construct == "call":
            target = repr(self.func)
        parts = [repr(a) for a in self.args]
        if self.kwargs:
            parts += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        text = f"{target}({', '.join(parts)})"
        if self.construct == "newobj" or self.construct == "newobj_ex":
            text = f"{target}.__new__({', '.join([target] + parts)})"
        elif self.construct == "reconstructor":
            text = f"copyreg._reconstructor({', '.join([target] + parts)})"
        if self.listitems:
            text += f".extend({self.listitems!r})"
        if self.dictitems:
            text += f".update({dict(self.dictitems)!r})" if _hashable_keys(self.dictitems) else f".update({self.dictitems!r})"
        if self.state is not None:
            text += f".__setstate__({self.state!r})"
        return text


def _is_global(x: Any) -> bool:
    return isinstance(x, Inert) and x.construct == "global"


def _hashable_keys(items: list) -> bool:
    try:
        for k, _ in items:
            hash(k)
    except TypeError:
        return False
    return True


def _names(obj: Any) -> tuple[str, str]:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"allow= takes classes and functions (with __module__ and __qualname__), not {obj!r}")
    return module, qualname


def _allowed_table(allow: Iterable[Any]) -> tuple[dict, dict]:
    import sys

    table: dict = {}
    namespaces: dict = {}
    entries = list(allow)
    for entry in entries:
        if isinstance(entry, tuple) and len(entry) == 3 and all(isinstance(x, str) for x in entry[:2]):
            # (module, qualname, obj): allow obj under a name other than its own.
            table[(entry[0], entry[1])] = entry[2]
    for obj in [e for e in entries if not _is_named_entry(e)] + _copyreg._allowed():
        module, qualname = _names(obj)
        table[(module, qualname)] = obj
        if module.startswith("_"):
            # C accelerators (`_functools.reduce`) are also reachable as their public module.
            public = sys.modules.get(module[1:])
            if public is not None and getattr(public, qualname, None) is obj:
                table.setdefault((module[1:], qualname), obj)
        if qualname != getattr(obj, "__name__", qualname) and "<locals>" not in qualname:
            # Nested classes: protocols 0-3 write getattr(Outer, 'Inner'); the parents are
            # reachable as values (never callable) so the getattr can be checked.
            parts = qualname.split(".")
            for i in range(1, len(parts)):
                parent_name = ".".join(parts[:i])
                parent = _resolve_parent(obj, parts[:i])
                if parent is not None:
                    namespaces.setdefault((module, parent_name), parent)
    return table, namespaces


def _is_named_entry(entry: Any) -> bool:
    return isinstance(entry, tuple) and len(entry) == 3 and all(isinstance(x, str) for x in entry[:2])


def _resolve_parent(obj: Any, parts: list[str]) -> Any:
    import sys

    mod = sys.modules.get(getattr(obj, "__module__", ""))
    cur = mod
    for p in parts:
        cur = getattr(cur, p, None)
        if cur is None:
            return None
    return cur


_cache: dict = {}


def _loader(
    allow: Iterable[Any],
    inert: bool,
    fix_imports: bool,
    encoding: str,
    errors: str,
    max_depth: int | None,
    max_bytes: int | None,
) -> Any:
    if not isinstance(encoding, str):
        raise TypeError(f"encoding must be str, not {type(encoding).__name__}")
    if not isinstance(errors, str):
        raise TypeError(f"errors must be str, not {type(errors).__name__}")
    allow = tuple(allow) if allow is not None else ()
    key = (allow, bool(inert), bool(fix_imports), encoding, errors, max_depth, max_bytes, _copyreg._version())
    try:
        loader = _cache.get(key)
    except TypeError:  # unhashable entries in allow=
        key, loader = None, None
    if loader is None:
        table, namespaces = _allowed_table(allow)
        loader = _cellar._PickleLoader(
            table,
            namespaces,
            Inert if inert else None,
            bool(fix_imports),
            encoding,
            errors,
            _copyreg._inverted_registry,
            max_depth,
            max_bytes,
        )
        if key is not None:
            if len(_cache) > 64:
                _cache.clear()
            _cache[key] = loader
    return loader


def loads(
    data: Any,
    /,
    *,
    allow: Iterable[Any] = (),
    inert: bool = False,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    max_depth: int | None = DEFAULT_MAX_DEPTH,
    max_bytes: int | None = None,
) -> Any:
    """Decode the pickle at the start of ``data`` (trailing bytes are ignored), never importing
    or calling anything outside ``allow=`` and :mod:`cellar.copyreg`.

    ``encoding`` / ``errors`` decode Python 2 ``str`` (``encoding='bytes'`` keeps them as
    bytes); ``buffers`` supplies protocol 5's out-of-band buffers; ``inert=True`` turns
    unknown globals into :class:`Inert` objects instead of refusing them.
    """
    if buffers is None:
        return _loader(allow, inert, fix_imports, encoding, errors, max_depth, max_bytes)(data)
    loader = _loader(allow, inert, fix_imports, encoding, errors, max_depth, max_bytes)
    return loader.loads(data, iter(buffers))[0]


class _ModuleRefused(UnpicklingError, ModuleNotFoundError):
    """``Unpickler.find_class``: nothing in that module is allowed (also a
    ModuleNotFoundError, what the stdlib's find_class raises for a module it cannot import)."""


class _NameRefused(UnpicklingError, AttributeError):
    """``Unpickler.find_class``: the module has allowed names, not this one (also an
    AttributeError, as the stdlib's find_class raises for a missing name)."""


class _EmptyModule(UnpicklingError, ValueError):
    """``Unpickler.find_class('', name)`` (also a ValueError, as the stdlib's)."""


_REFUSALS = (_ModuleRefused, _NameRefused, _EmptyModule)


class Unpickler:
    """``pickle.Unpickler``'s interface over :func:`loads`: ``Unpickler(file, ...).load()``
    reads one pickle from a binary file (consecutive loads read consecutive pickles).

    Define ``persistent_load(pid)`` (a method or an attribute) to resolve persistent ids;
    without it a pickle that uses one is refused.

    ``find_class(module, name)`` is the policy as a lookup (nothing is imported): the allowed
    object, or :class:`pickle.UnpicklingError`. Override it (in a subclass, or as an attribute)
    and it is asked for every global the pickle names, as in the stdlib; what it returns is the
    caller's explicit choice, like an ``allow=`` entry, and the same rules apply to it (BUILD
    only on instances this load creates through it; a basic-type constructor or pattern marker
    it returns keeps that global's rules); what it raises ends the load.
    """

    def __init__(
        self,
        file: Any,
        *,
        allow: Iterable[Any] = (),
        inert: bool = False,
        fix_imports: bool = True,
        encoding: str = "ASCII",
        errors: str = "strict",
        buffers: Iterable[Any] | None = None,
        max_depth: int | None = DEFAULT_MAX_DEPTH,
        max_bytes: int | None = None,
    ) -> None:
        self._file = file
        self._read = file.read
        self._loader = _loader(allow, inert, fix_imports, encoding, errors, max_depth, max_bytes)
        self._buffers = None if buffers is None else iter(buffers)
        self._pending = b""
        self._loading = False
        #: The protocol of the pickle being (or last) loaded, as pickle's ``Unpickler.proto``.
        self.proto = 0

    def find_class(self, module: str, name: str) -> Any:
        """The object the global ``module.name`` stands for under this unpickler's policy
        (``allow=``, :mod:`cellar.copyreg`, the default globals; with ``inert=True`` an
        :class:`Inert` global). Nothing is imported. Otherwise raises
        :class:`pickle.UnpicklingError`, which is also a ModuleNotFoundError (nothing in that
        module is allowed), an AttributeError (not this name) or a ValueError (empty module
        name), as the stdlib's ``find_class`` would raise. Below protocol 3 names go through
        ``fix_imports``; outside a load, dotted names need protocol 4 (``self.proto``)."""
        return self._loader.find_class(module, name, self.proto, self._loading, _REFUSALS)

    def load(self) -> Any:
        """Read and return the next pickled object from the file."""
        data = self._pending + self._read()
        self._pending = b""
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"file.read() returned {type(data).__name__}, not bytes")
        find_class = self.find_class
        if getattr(find_class, "__func__", None) is Unpickler.find_class:
            find_class = None  # not overridden: the decoder applies the policy by name
        # PROTO comes first in every pickle of protocol 2+.
        self.proto = data[1] if len(data) > 1 and data[0] == 0x80 else 0
        self._loading = True
        try:
            obj, used = self._loader.loads(
                data, self._buffers, getattr(self, "persistent_load", None), find_class
            )
        finally:
            self._loading = False
        rest = len(data) - used
        if rest:
            # Give the unread bytes back to a seekable file; keep them otherwise.
            try:
                self._file.seek(-rest, io.SEEK_CUR)
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                self._pending = bytes(data[used:])
        return obj


def load(file: Any, **kwargs: Any) -> Any:
    """Read one pickle from the binary ``file`` (see :func:`loads` for the keywords)."""
    return Unpickler(file, **kwargs).load()


def dumps(obj: Any, protocol: int | None = None, *, fix_imports: bool = True) -> bytes:
    """Pickle ``obj`` (basic types, :class:`Inert` objects, types registered with
    :mod:`cellar.copyreg`) as CPython's pickler would; ``protocol`` None means
    ``pickle.DEFAULT_PROTOCOL`` of the running CPython, negative means the highest."""
    if protocol is None:
        protocol = DEFAULT_PROTOCOL
    elif protocol < 0:
        protocol = HIGHEST_PROTOCOL
    elif protocol > HIGHEST_PROTOCOL:
        raise ValueError(f"pickle protocol must be <= {HIGHEST_PROTOCOL}")
    return _cellar._pickle_dumps(obj, protocol, bool(fix_imports), Inert, _copyreg._reducer)


def dump(obj: Any, file: Any, protocol: int | None = None, *, fix_imports: bool = True) -> None:
    """Write ``dumps(obj, protocol)`` to the binary ``file``."""
    file.write(dumps(obj, protocol, fix_imports=fix_imports))



class GlobalRef(NamedTuple):
    """One global a pickle names (see :func:`globals_of`)."""

    module: str
    name: str
    #: ``'class'`` (instantiated: NEWOBJ, INST, OBJ, copyreg patterns), ``'function'`` (called by
    #: REDUCE: a function, or a class called like one) or
    #: ``'value'`` (only referenced).
    need: str
    #: How the default policy treats it (a basic type or a pattern marker), or None when the
    #: caller must allow it: ``allow=[(module, name, obj)]``.
    default: str | None
    called: bool
    instantiated: bool
    built: bool
    #: BUILD applied to the global itself: always refused.
    built_itself: bool
    extension: int | None
    description: str

    @property
    def allow_form(self) -> tuple[str, str, str]:
        """The ``(module, qualname, obj)`` entry of ``allow=`` that admits it (``obj`` is the
        object you hold; shown here by name)."""
        return (self.module, self.name, self.name.rsplit(".", 1)[-1])


def globals_of(data: Any, /, *, fix_imports: bool = True) -> list[GlobalRef]:
    """Every global the pickle ``data`` names, in order of first use, with what loading it would
    need (``need``: class / function / value; ``default``: None when ``allow=`` must name it).
    Nothing is built, imported or called; a truncated or malformed pickle lists what it names
    up to the point where it breaks."""
    rows, _error = _cellar._pickle_globals_of(data, bool(fix_imports), _copyreg._inverted_registry)
    return [GlobalRef(*row) for row in rows]
