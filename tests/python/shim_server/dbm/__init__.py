"""Test shim: cellar.dbm on a **server** under the stdlib's name ``dbm``, for running CPython's
own test_dbm / test_shelve against server-backed stores (tests/python/run_cpython_test_dbm.py
``--server``). Put tests/python/shim_server on PYTHONPATH and set

* ``CELLAR_SHIM_SERVER``: ``redis``, ``redis_cluster`` or ``postgresql`` (the backend module,
  ``dbm.<name>``, the one entry of ``dbm._names``), and
* ``CELLAR_SHIM_SERVER_URL``: the server's URL (no namespace parameter).

The tests name databases by file path. Here a path names a server namespace through a small
*marker file* at that path holding the store's URL: opening with ``'c'``/``'n'`` where there is
no marker makes a fresh namespace (a Redis prefix or a PostgreSQL table of its own) and writes
the marker; ``'r'``/``'w'`` follow the marker; deleting the file (the tests' clean-up) forgets
the store, as deleting a database file does. ``whichdb(path)`` is ``None`` without a marker,
``''`` for a file that is not a marker (the tests' "invalid contents" files) and otherwise
cellar's ``whichdb`` of the URL (``'dbm.redis'``, ``'dbm.redis_cluster'``,
``'dbm.postgresql'``), which is the shim module's ``__name__``.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import cellar.dbm
from cellar.dbm import error  # noqa: F401

__all__ = ["open", "whichdb", "error"]

SERVER = os.environ.get("CELLAR_SHIM_SERVER", "redis")
_names = ["dbm." + SERVER]
_defaultmod: Any = None
_modules: dict[str, Any] = {}

_MAGIC = "cellar-shim-server "
_counter = itertools.count()


def _path(file: Any) -> str:
    p = os.fspath(file)
    return os.fsdecode(p) if isinstance(p, bytes) else p


def _fresh_url() -> str:
    base = os.environ["CELLAR_SHIM_SERVER_URL"]
    name = f"cpy{os.getpid()}_{next(_counter)}"
    sep = "&" if "?" in base else "?"
    if SERVER == "postgresql":
        return f"{base}{sep}table={name}"
    return f"{base}{sep}prefix={name}:"


def _marker(path: str) -> str | None:
    """The URL a marker file names; ``None`` if there is no file, ``''`` if it is not a marker."""
    try:
        with open_file(path, "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return ""
    text = data.decode("utf-8", "replace")
    return text[len(_MAGIC) :].strip() if text.startswith(_MAGIC) else ""


open_file = open  # the builtin, before this module's ``open`` shadows it


def url_for(file: Any, flag: str) -> str:
    """The URL of the store at ``file`` for opening with ``flag`` (creating the marker when the
    flag creates and there is none, or the file is not a marker and the flag is ``'n'``)."""
    path = _path(file)
    url = _marker(path)
    creating = "c" in flag or "n" in flag
    if url:
        return url
    if url == "" and "n" not in flag:
        raise cellar.dbm.error[0](f"{path!r} is not a database")
    if not creating:
        raise cellar.dbm.error[0](f"need 'c' or 'n' flag to open new db: {path!r}")
    url = _fresh_url()
    with open_file(path, "w") as f:
        f.write(_MAGIC + url + "\n")
    return url


def whichdb(file: Any) -> str | None:
    url = _marker(_path(file))
    if not url:
        return url
    return cellar.dbm.whichdb(url)


def open(file: Any, flag: str = "r", mode: int = 0o666) -> Any:  # noqa: A001
    """CPython's ``dbm.open`` dispatch on this module's ``_names``/``_defaultmod``."""
    global _defaultmod
    if _defaultmod is None:
        for name in _names:
            mod = __import__(name, fromlist=["open"])
            _defaultmod = _defaultmod or mod
            _modules[name] = mod
    result = whichdb(file) if "n" not in flag else None
    if result is None:
        if "c" in flag or "n" in flag:
            mod = _defaultmod
        else:
            raise error[0]("db file doesn't exist; use 'c' or 'n' flag to create a new db")
    elif result == "":
        raise error[0]("db type could not be determined")
    elif result not in _modules:
        raise error[0](f"db type is {result}, but the module is not available")
    else:
        mod = _modules[result]
    return mod.open(file, flag, mode)
