"""Drop-in replacement for the standard library's :mod:`shelve`, on cellar's stores.

A shelf is a persistent, dictionary-like object: keys are ``str``, values any object pickle can
handle. ``cellar.shelve.open(filename)`` creates the shelf on cellar's native engine (one file at
exactly ``filename``, crash safe: every acknowledged write survives ``kill -9``), and opens any
store ``cellar.dbm`` reads: shelves written by CPython's shelve on ``dbm.dumb`` or
``dbm.sqlite3``, and (read-only) GDBM and Berkeley DB files.

Codecs:

* default: CPython's own :mod:`pickle`, exactly as the stdlib shelve (any picklable object
  works). **As with the stdlib, loading a value runs the pickle's code: never open a shelf from
  an untrusted source this way.**
* ``safe=True``: values are decoded by :func:`cellar.pickle.loads`, which never imports or calls
  anything; classes are rebuilt only if listed in ``allow=`` or registered with
  :mod:`cellar.copyreg`.
* ``codec="marshal"``: basic types (None, bool, int, float, complex, str, bytes, tuple, list,
  dict, set, frozenset) through :mod:`cellar.marshal`, safe and fast; native stores only.
* ``serializer=`` / ``deserializer=`` (CPython 3.15): any pair of callables,
  ``serializer(obj, protocol) -> bytes`` and ``deserializer(bytes) -> obj``.

On the native engine the codec is recorded in the file's header, so a marshal shelf reopens as
one without being told, and ``cellar dump`` decodes any shelf (safely) by itself.

Beyond the stdlib: ``Shelf.batch()`` (a context manager gathering writes into one commit),
``reorganize()`` (reclaim space; CPython 3.15), ``stats()``, and a writeback mode that writes
back only the entries whose pickles changed.
"""

from __future__ import annotations

import collections.abc
import pickle
from pickle import DEFAULT_PROTOCOL
TYPE_CHECKING = False  # typing is not imported at run time (import cost)
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Iterator


import cellar.dbm
from cellar import marshal as _marshal
from cellar._cellar import _ShelfBase

__all__ = ["Shelf", "BsdDbShelf", "DbfilenameShelf", "open", "ShelveError"]

#: The marshal version the ``codec="marshal"`` shelves write (CPython's ``marshal.version``).
MARSHAL_VERSION = 4

#: The dbm namespace ``DbfilenameShelf`` opens files through (its ``_names``, ``_modules`` and
#: ``_defaultmod`` pick the backend). A test shim exposing cellar.dbm under the name ``dbm``
#: points this at its own module so the stdlib's tests can choose the backend.
_dbm_namespace: dict[str, Any] = vars(cellar.dbm)


class ShelveError(Exception):
    """A shelf was opened with contradictory or unusable codec arguments (CPython 3.15)."""


class _ClosedDict(collections.abc.MutableMapping):  # type: ignore[type-arg]
    "Marker for a closed dict.  Access attempts raise a ValueError."

    def closed(self, *args: Any) -> Any:
        raise ValueError("invalid operation on closed shelf")

    __iter__ = __len__ = __getitem__ = __setitem__ = __delitem__ = keys = closed

    def __repr__(self) -> str:
        return "<Closed Dictionary>"


def _marshal_dumps(value: Any, protocol: Any = None) -> bytes:
    return _marshal.dumps(value, MARSHAL_VERSION, allow_code=False)


def _marshal_loads(data: bytes) -> Any:
    return _marshal.loads(data, allow_code=False)


def _codecs(
    codec: str | None,
    safe: bool,
    allow: Iterable[Any],
    serializer: Callable[[Any, int], bytes] | None,
    deserializer: Callable[[bytes], Any] | None,
) -> tuple[str, Callable[..., bytes], Callable[[bytes], Any]]:
    """The codec name and the (serializer, deserializer) pair a shelf uses."""
    if (serializer is None) != (deserializer is None):
        raise ShelveError("serializer and deserializer must be given together")
    if serializer is not None:
        if codec is not None or safe or allow:
            raise ShelveError(
                "serializer/deserializer cannot be combined with codec=, safe= or allow="
            )
        return "custom", serializer, deserializer  # type: ignore[return-value]
    if codec is None:
        codec = "pickle"
    if codec == "marshal":
        if safe or allow:
            raise ShelveError("codec='marshal' is always safe; safe= and allow= are for pickle")
        return "marshal", _marshal_dumps, _marshal_loads
    if codec != "pickle":
        raise ShelveError(f"codec must be 'pickle' or 'marshal', not {codec!r}")
    if safe or allow:
        from cellar import pickle as safe_pickle

        # A prepared loader: called with the value's bytes, returns the object.
        loader = safe_pickle._loader(tuple(allow), False, True, "ASCII", "strict", safe_pickle.DEFAULT_MAX_DEPTH, None)
        return "pickle", pickle.dumps, loader
    return "pickle", pickle.dumps, pickle.loads


class Shelf(_ShelfBase, collections.abc.MutableMapping):  # type: ignore[misc,type-arg]
    """A shelf over any dictionary-like object mapping bytes keys to bytes values.

    ``Shelf(dict, protocol=None, writeback=False, keyencoding='utf-8', *, serializer=None,
    deserializer=None, safe=False, allow=(), codec=None)``: see the module documentation for
    the codec arguments. ``protocol`` None means ``pickle.DEFAULT_PROTOCOL``.

    The state attributes (``dict``, ``writeback``, ``_protocol``, ``keyencoding``,
    ``serializer``, ``deserializer``, ``cache``) live in the native base class, whose
    ``__getitem__``/``__setitem__``/``__delitem__``/``__contains__`` run without a Python frame
    when the backing mapping is a cellar database, the key a ``str``, the key encoding UTF-8
    and writeback off; every other case runs ``_getitem``/``_setitem``/``_delitem``/
    ``_contains`` below, the stdlib's code.
    """

    def __init__(
        self,
        dict: Any,
        protocol: int | None = None,
        writeback: bool = False,
        keyencoding: str = "utf-8",
        *,
        serializer: Callable[[Any, int], bytes] | None = None,
        deserializer: Callable[[bytes], Any] | None = None,
        safe: bool = False,
        allow: Iterable[Any] = (),
        codec: str | None = None,
    ) -> None:
        self.dict = dict
        if protocol is None:
            protocol = DEFAULT_PROTOCOL
        self._protocol = protocol
        self.writeback = writeback
        self.cache: dict[str, Any] = {}
        # Writeback: the bytes last read or written for each cached key, so sync() writes back
        # only the entries whose serialization changed.
        self._stored: dict[str, bytes] = {}
        self.keyencoding = keyencoding
        self._codec, self.serializer, self.deserializer = _codecs(
            codec, safe, allow, serializer, deserializer
        )

    def __iter__(self) -> Iterator[str]:
        if _on_server(self.dict):
            # A server store: a page of keys at a time, never the whole namespace in memory.
            for k in self.dict:
                yield k.decode(self.keyencoding)
            return
        for k in self.dict.keys():
            yield k.decode(self.keyencoding)

    def items(self) -> Any:
        """The ``(key, value)`` view; on a server store without writeback, iterating it fetches
        a page of pairs per round trip instead of one value per key."""
        if not self.writeback and _on_server(self.dict):
            return _PagedItems(self)
        return super().items()

    def _contains(self, key: object) -> bool:
        return key.encode(self.keyencoding) in self.dict  # type: ignore[attr-defined]

    def get(self, key: str, default: Any = None) -> Any:
        if key.encode(self.keyencoding) in self.dict:
            return self[key]
        return default

    def _getitem(self, key: str) -> Any:
        try:
            return self.cache[key]
        except KeyError:
            pass
        data = self.dict[key.encode(self.keyencoding)]
        value = self.deserializer(data)
        if self.writeback:
            self.cache[key] = value
            self._stored[key] = data
        return value

    def _setitem(self, key: str, value: Any) -> None:
        if self.writeback:
            self.cache[key] = value
        data = self.serializer(value, self._protocol)
        self.dict[key.encode(self.keyencoding)] = data
        if self.writeback:
            self._stored[key] = data

    def _delitem(self, key: str) -> None:
        del self.dict[key.encode(self.keyencoding)]
        self.cache.pop(key, None)
        self._stored.pop(key, None)

    def __enter__(self) -> Shelf:
        return self

    def __exit__(self, type: Any, value: Any, traceback: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.dict is None:
            return
        try:
            self.sync()
            try:
                self.dict.close()
            except AttributeError:
                pass
        finally:
            # Catch errors that may happen when close is called from __del__
            # because CPython is in interpreter shutdown.
            try:
                self.dict = _ClosedDict()
            except:  # noqa: E722  (as CPython's shelve)
                self.dict = None

    def __del__(self) -> None:
        if not hasattr(self, "writeback"):
            # __init__ didn't succeed, so don't bother closing
            # see http://bugs.python.org/issue1339007 for details
            return
        self.close()

    def _write_back(self) -> None:
        if not (self.writeback and self.cache):
            return
        stored = self._stored
        changed = []
        for key, entry in self.cache.items():
            data = self.serializer(entry, self._protocol)
            if stored.get(key) != data:
                changed.append((key.encode(self.keyencoding), data))
        batch = getattr(self.dict, "batch", None)
        if batch is not None and len(changed) > 1:
            with batch() as b:
                for k, data in changed:
                    b[k] = data
        else:
            for k, data in changed:
                self.dict[k] = data
        self.cache = {}
        self._stored = {}

    def sync(self) -> None:
        """Write back the cached entries whose serialization changed (writeback mode), empty
        the cache, and make the store durable if it can (``fdatasync`` on native stores)."""
        self._write_back()
        if hasattr(self.dict, "sync"):
            self.dict.sync()

    def clear(self) -> None:
        """Remove every entry (CPython 3.13), in one commit on cellar's stores."""
        self.cache.clear()
        self._stored.clear()
        d = self.dict
        if hasattr(d, "clear"):
            d.clear()
            return
        batch = getattr(d, "batch", None)
        keys = list(d.keys())
        if batch is not None:
            with batch() as b:
                for k in keys:
                    del b[k]
        else:
            for k in keys:
                del d[k]

    def reorganize(self) -> None:
        """Write back pending entries and reclaim the space of deleted and overwritten values
        (CPython 3.15): compaction on native stores, ``VACUUM`` on sqlite3."""
        self.sync()
        if hasattr(self.dict, "reorganize"):
            self.dict.reorganize()

    def batch(self) -> Any:
        """A context manager whose ``b[key] = value`` / ``del b[key]`` are serialized at once
        and committed together when the block exits cleanly (one atomic commit on cellar's
        stores; written one by one on other mappings). Nothing is written if the block raises.
        On cellar's stores, the shelf's own writes made while the block is open
        (``shelf[key] = value``, ``del shelf[key]``) join the same commit; reads see the store
        as committed, without the block's writes."""
        native = self._native_batch()
        return native if native is not None else _ShelfBatch(self)

    def stats(self) -> dict[str, Any]:
        """Sizes and counts of the store underneath, plus the shelf's codec."""
        stats = getattr(self.dict, "stats", None)
        out: dict[str, Any] = dict(stats()) if stats is not None else {"keys": len(self.dict)}
        out["codec"] = self._codec
        if self._codec == "pickle":
            out["protocol"] = self._protocol
        elif self._codec == "marshal":
            out["version"] = MARSHAL_VERSION
        out["writeback_cached"] = len(self.cache)
        return out


class _ShelfBatch:
    """What ``Shelf.batch()`` returns; see there."""

    def __init__(self, shelf: Shelf) -> None:
        self._shelf = shelf
        # Writes in order; on a cellar database they also go at once into ``_inner``, the
        # store's own batch block, open while this block is (the shelf's writes through
        # ``shelf[key] = value`` join it as well, in the order made).
        self._ops: list[tuple[bytes, bytes | None]] = []
        self._inner: Any = None

    def _add(self, key: bytes, data: bytes | None) -> None:
        inner = self._inner
        if inner is not None:
            if data is None:
                del inner[key]
            else:
                inner[key] = data
        self._ops.append((key, data))

    def __setitem__(self, key: str, value: Any) -> None:
        s = self._shelf
        self._add(key.encode(s.keyencoding), s.serializer(value, s._protocol))

    def __delitem__(self, key: str) -> None:
        self._add(key.encode(self._shelf.keyencoding), None)

    def __len__(self) -> int:
        return len(self._inner) if self._inner is not None else len(self._ops)

    def __enter__(self) -> _ShelfBatch:
        batch = getattr(self._shelf.dict, "batch", None)
        if batch is not None:
            inner = batch()
            inner.__enter__()
            self._inner = inner
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        ops, self._ops = self._ops, []
        inner, self._inner = self._inner, None
        if exc_type is None and ops:
            s = self._shelf
            for k, _ in ops:
                key = k.decode(s.keyencoding)
                s.cache.pop(key, None)
                s._stored.pop(key, None)
            if inner is None:
                d = s.dict
                for k, data in ops:
                    if data is None:
                        d.pop(k, None)
                    else:
                        d[k] = data
        if inner is not None:
            inner.__exit__(exc_type, exc, tb)
        return False


class BsdDbShelf(Shelf):
    """A shelf over a mapping with ``first()``, ``next()``, ``previous()``, ``last()`` and
    ``set_location()`` (the bsddb interface). cellar's own stores are hash-ordered and do not
    offer it; this class is here for code that passes its own ordered mapping."""

    def set_location(self, key: Any) -> tuple[str, Any]:
        (key, value) = self.dict.set_location(key)
        return (key.decode(self.keyencoding), self.deserializer(value))

    def next(self) -> tuple[str, Any]:
        (key, value) = next(self.dict)
        return (key.decode(self.keyencoding), self.deserializer(value))

    def previous(self) -> tuple[str, Any]:
        (key, value) = self.dict.previous()
        return (key.decode(self.keyencoding), self.deserializer(value))

    def first(self) -> tuple[str, Any]:
        (key, value) = self.dict.first()
        return (key.decode(self.keyencoding), self.deserializer(value))

    def last(self) -> tuple[str, Any]:
        (key, value) = self.dict.last()
        return (key.decode(self.keyencoding), self.deserializer(value))


_SERVER_BACKENDS = ("dbm.redis", "dbm.redis_cluster", "dbm.postgresql")


def _on_server(db: Any) -> bool:
    """Whether ``db`` is a cellar database on a server (Redis, Redis Cluster, PostgreSQL)."""
    return getattr(db, "backend", None) in _SERVER_BACKENDS and hasattr(db, "iteritems")


class _PagedItems(collections.abc.ItemsView):  # type: ignore[type-arg]
    """``Shelf.items()`` on a server store: pairs fetched a page at a time."""

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        shelf = self._mapping
        # The common case (UTF-8 keys) decodes in the native iterator, without a frame per pair.
        native = shelf._paged_items()
        return native if native is not None else self._decoded(shelf)

    @staticmethod
    def _decoded(shelf: Any) -> Iterator[tuple[str, Any]]:
        for k, v in shelf.dict.iteritems():
            yield k.decode(shelf.keyencoding), shelf.deserializer(v)


class DbfilenameShelf(Shelf):
    """A shelf on the dbm store at ``filename``, opened with ``cellar.dbm.open`` (native for
    new shelves). On native stores the codec is recorded in the header: a shelf opened without
    ``codec=`` uses the recorded one, and a contradicting ``codec=`` raises ShelveError."""

    def __init__(
        self,
        filename: Any,
        flag: str = "c",
        protocol: int | None = None,
        writeback: bool = False,
        *,
        serializer: Callable[[Any, int], bytes] | None = None,
        deserializer: Callable[[bytes], Any] | None = None,
        safe: bool = False,
        allow: Iterable[Any] = (),
        codec: str | None = None,
        timeout: float | None = None,
        exclusive: bool = False,
        cache_bytes: int | None = None,
    ) -> None:
        # Validate the arguments before touching the file system.
        kind, _, _ = _codecs(codec, safe, allow, serializer, deserializer)
        proto = DEFAULT_PROTOCOL if protocol is None else protocol
        if kind == "pickle":
            encoding: tuple[str, int] | None = ("pickle", proto)
        elif kind == "marshal":
            encoding = ("marshal", MARSHAL_VERSION)
        else:
            encoding = None
        db = cellar.dbm._open(
            _dbm_namespace, filename, flag, 0o666, encoding, timeout, exclusive, cache_bytes
        )
        try:
            recorded = getattr(db, "value_encoding", None)
            if recorded is not None and recorded[0] in ("pickle", "marshal"):
                if codec is None and serializer is None and recorded[0] == "marshal":
                    codec = kind = "marshal"
                elif kind in ("pickle", "marshal") and recorded[0] != kind:
                    raise ShelveError(
                        f"{filename!r} is a shelf of {recorded[0]} values, not {kind}"
                    )
            elif kind == "marshal" and recorded is None:
                raise ShelveError(
                    f"codec='marshal' needs a native store: {filename!r} is "
                    f"{getattr(db, 'backend', 'a store')} whose values are pickles, as "
                    "CPython's shelve writes them"
                )
        except BaseException:
            db.close()
            raise
        Shelf.__init__(
            self,
            db,
            protocol,
            writeback,
            serializer=serializer,
            deserializer=deserializer,
            safe=safe,
            allow=allow,
            codec=codec,
        )


def open(
    filename: Any,
    flag: str = "c",
    protocol: int | None = None,
    writeback: bool = False,
    *,
    serializer: Callable[[Any, int], bytes] | None = None,
    deserializer: Callable[[bytes], Any] | None = None,
    safe: bool = False,
    allow: Iterable[Any] = (),
    codec: str | None = None,
    timeout: float | None = None,
    exclusive: bool = False,
    cache_bytes: int | None = None,
) -> DbfilenameShelf:
    """Open a persistent dictionary (CPython's ``shelve.open``).

    ``flag`` is dbm's: ``'r'`` read only, ``'w'`` read-write, ``'c'`` create if missing (the
    default), ``'n'`` always new. New shelves are created on cellar's native engine; existing
    dbm.dumb, dbm.sqlite3 (and, read-only, GDBM / Berkeley DB) shelves open in place.
    ``protocol``: the pickle protocol values are written with (default
    ``pickle.DEFAULT_PROTOCOL``). ``writeback``: cache fetched entries and write back the
    changed ones on ``sync()``/``close()``. ``safe``, ``allow``, ``codec``, ``serializer`` and
    ``deserializer`` choose how values are encoded: see the module documentation.

    Many writers (native stores): any number of processes may open the same shelf for writing;
    each assignment or deletion is one commit that waits up to ``timeout`` seconds (default 5)
    for the store's write lock and sees every other writer's commits first. Reads see what
    other writers committed before them. With ``writeback=True`` the cache is this process's
    own: entries it fetched are written back whole on ``sync()``/``close()``, replacing what
    other writers stored under those keys meanwhile (last writer wins per key).
    ``exclusive=True`` keeps the shelf to this one writer until it closes. ``cache_bytes``: the
    block cache of a compact-form native store (default 128 MiB), as for ``cellar.dbm.open``.
    """
    return DbfilenameShelf(
        filename,
        flag,
        protocol,
        writeback,
        serializer=serializer,
        deserializer=deserializer,
        safe=safe,
        allow=allow,
        codec=codec,
        timeout=timeout,
        exclusive=exclusive,
        cache_bytes=cache_bytes,
    )
