"""Drop-in replacement for the standard library's :mod:`dbm`, implemented in Rust.

``open(file, flag='r', mode=0o666)`` opens any store cellar knows: the native engine (the default
for new stores), CPython 3.13's ``dbm.sqlite3`` files and ``dbm.dumb`` files, picked by
``whichdb`` as CPython does. ``whichdb`` returns stdlib-style names (``'dbm.native'``,
``'dbm.sqlite3'``, ``'dbm.dumb'``, ``'dbm.gnu'``, ``'dbm.ndbm'``), ``None`` or ``''``.
``error`` is a tuple ``(cellar.dbm.error, OSError)`` like CPython's.

Submodules ``cellar.dbm.native``, ``cellar.dbm.sqlite3`` and ``cellar.dbm.dumb`` open one
backend directly. Legacy ``dbm.gnu`` and ``dbm.ndbm`` files open read-only (``open(file, 'r')``
routes them to ``cellar.dbm.gnu`` / ``cellar.dbm.ndbm``, which need no C library); any other
flag on them raises ``error`` naming ``cellar convert``, which migrates them. Database objects are thread safe and release the GIL during I/O; beyond the
stdlib they have ``batch()`` (a context manager applying its writes as one commit: those made
on the object it returns and those made through the database while the block is open),
``compact()`` / ``reorganize()`` and ``stats()``.

Server stores: wherever a path goes, ``open`` also takes a URL — ``redis://[user:pass@]host:port/db
?prefix=app:``, ``redis+cluster://h1:7000,h2:7001/?prefix=app:`` or
``postgresql://user@host:5432/dbname?table=name`` — and ``whichdb(url)`` answers
``'dbm.redis'``, ``'dbm.redis_cluster'`` or ``'dbm.postgresql'`` for a namespace holding a
cellar store. Flags work as for files (``'n'`` empties only that namespace; ``'r'`` never
writes). A server that cannot be reached, drops the connection or fails over raises
``ServerConnectionError`` (also a ``ConnectionError``); one that does not answer in time
``ServerTimeoutError`` (also a ``TimeoutError``); both are ``error``, and the next call
reconnects. See docs/servers.md.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is not imported at run time (import cost)
if TYPE_CHECKING:
    from typing import Any

from cellar._cellar import Batch, Database, _dbm_whichdb
from cellar._cellar import DbmCorruptError as CorruptError
from cellar._cellar import DbmError as _error
from cellar._cellar import DbmServerConnectionError as ServerConnectionError
from cellar._cellar import DbmServerTimeoutError as ServerTimeoutError
from cellar._cellar import _dbm_is_url, _dbm_open_url

__all__ = ["open", "whichdb", "error", "ServerConnectionError", "ServerTimeoutError"]

#: The writable backends, the default first (the import names of the backend modules).
_names = ["cellar.dbm.native", "cellar.dbm.sqlite3", "cellar.dbm.dumb"]
_defaultmod: Any = None
#: Loaded backend modules, by import name and by ``whichdb`` name.
_modules: dict[str, Any] = {}
#: The read-only legacy formats: not in ``_names`` (never a default or a creation target),
#: found by ``whichdb`` name.
_legacy = {"dbm.gnu": "cellar.dbm.gnu", "dbm.ndbm": "cellar.dbm.ndbm"}

error = (_error, OSError)


def _is_url(file: Any) -> bool:
    """Whether ``file`` is a server URL (``redis://``, ``redis+cluster://``, ``postgresql://``)."""
    return isinstance(file, str) and _dbm_is_url(file)


def _fspath(file: Any) -> bytes:
    """The file-system path of a str, bytes or os.PathLike as bytes."""
    return os.fsencode(os.fspath(file))


def whichdb(filename: Any) -> str | None:
    """Guess which dbm module can open ``filename``: ``None`` if it cannot be read, ``''`` if
    the format is unknown, else a stdlib-style name such as ``'dbm.native'`` or ``'dbm.dumb'``."""
    return _dbm_whichdb(_fspath(filename))


def _open(
    ns: dict[str, Any],
    file: Any,
    flag: str,
    mode: int,
    value_encoding: tuple[str, int] | None = None,
    timeout: float | None = None,
    exclusive: bool = False,
    cache_bytes: int | None = None,
) -> Database:
    """CPython's ``dbm.open``, using the ``_names``/``_modules``/``_defaultmod`` of the module
    namespace ``ns`` (so a re-export under another name, such as a test shim, has its own).
    ``value_encoding`` is recorded in a native store this call creates (``cellar.shelve``
    passes its codec); backends with no header to record it ignore it. ``timeout``,
    ``exclusive`` and ``cache_bytes`` go to the native backend (the others ignore them). A server URL opens the
    store it names (the scheme picks the backend)."""
    if _is_url(file):
        if not isinstance(flag, str):
            flag = repr(flag)
        return _dbm_open_url(file, flag, value_encoding)
    if ns["_defaultmod"] is None:
        for name in ns["_names"]:
            try:
                mod = __import__(name, fromlist=["open"])
            except ImportError:
                continue
            if not ns["_defaultmod"]:
                ns["_defaultmod"] = mod
            ns["_modules"][name] = mod
        if not ns["_defaultmod"]:
            raise ImportError("no dbm clone found; tried %s" % ns["_names"])
    modules = ns["_modules"]
    for mod in list(modules.values()):
        modules.setdefault(mod._whichdb_name, mod)

    # Guess the type of an existing database, if not creating a new one.
    result = whichdb(file) if "n" not in flag else None
    if "n" in flag and whichdb(file) in _legacy:
        # 'n' would replace a legacy file cellar can only read: refuse, naming the way out.
        mod = __import__(_legacy[str(whichdb(file))], fromlist=["open"])
        return mod.open(file, flag, mode)  # type: ignore[no-any-return]
    if result is None:
        if "c" in flag or "n" in flag:
            mod = ns["_defaultmod"]
        else:
            raise ns["error"][0]("db file doesn't exist; use 'c' or 'n' flag to create a new db")
    elif result == "":
        raise ns["error"][0]("db type could not be determined")
    elif result in _legacy and result not in modules:
        mod = __import__(_legacy[result], fromlist=["open"])
    elif result not in modules:
        raise ns["error"][0](
            "db type is {0}, but the module is not available".format(result)
        )
    else:
        mod = modules[result]
    kwargs: dict[str, Any] = {}
    if value_encoding is not None and getattr(mod, "_records_value_encoding", False):
        kwargs["value_encoding"] = value_encoding
    if (timeout is not None or exclusive) and getattr(mod, "_takes_writer_options", False):
        kwargs["timeout"] = timeout
        kwargs["exclusive"] = exclusive
    if cache_bytes is not None and getattr(mod, "_takes_writer_options", False):
        kwargs["cache_bytes"] = cache_bytes
    return mod.open(file, flag, mode, **kwargs)  # type: ignore[no-any-return]


def open(
    file: Any,
    flag: str = "r",
    mode: int = 0o666,
    *,
    timeout: float | None = None,
    exclusive: bool = False,
    cache_bytes: int | None = None,
) -> Database:
    """Open or create the database at ``file`` (CPython's ``dbm.open``).

    ``flag``: ``'r'`` read only, ``'w'`` read-write, ``'c'`` create if missing, ``'n'`` always
    new; the native backend also takes gnu's modifiers ``f``, ``s``, ``u``. ``mode``: permission
    bits of created files (masked by the umask). New stores use the native backend.

    Native stores: any number of handles, in any processes, may write ('w', 'c', 'n'); each
    write takes the store's write lock for that one commit, waiting up to ``timeout`` seconds
    (default 5) for its turn, then raises ``error`` naming the process that holds it.
    ``exclusive=True`` keeps the store to this one writer handle until it closes (the fastest
    bulk loads; other writers are refused). ``cache_bytes``: bytes of decompressed blocks of a
    compact-form native store kept in memory (default 128 MiB; ``stats()`` shows its hits and
    misses). Other backends ignore all three.
    """
    return _open(globals(), file, flag, mode, None, timeout, exclusive, cache_bytes)


def _backend_open(
    backend: str,
    file: Any,
    flag: Any,
    mode: int,
    value_encoding: tuple[str, int] | None = None,
    timeout: float | None = None,
    exclusive: bool = False,
    cache_bytes: int | None = None,
) -> Database:
    from cellar._cellar import _dbm_open

    path = _fspath(file)
    if not isinstance(flag, str):
        flag = repr(flag)
    return _dbm_open(path, backend, flag, mode, value_encoding, timeout, exclusive, cache_bytes)


# Imported last: the backend modules use the helpers above.
from cellar.dbm import dumb, native, sqlite3  # noqa: E402

_defaultmod = native
_modules.update(
    {
        "cellar.dbm.native": native,
        "cellar.dbm.sqlite3": sqlite3,
        "cellar.dbm.dumb": dumb,
    }
)

__all__ += ["Database", "Batch", "CorruptError"]
