"""Test shim: cellar.shelve under the stdlib's name ``shelve``, its file shelves on the server
under test: a shelf's path is mapped to a server store by the ``dbm`` shim beside this file
(marker files, see its docstring)."""

from typing import Any

import dbm

import cellar.dbm
import cellar.shelve
from cellar.shelve import (  # noqa: F401
    BsdDbShelf,
    DbfilenameShelf,
    Shelf,
    ShelveError,
    _ClosedDict,
    open,
)

cellar.shelve._dbm_namespace = vars(dbm)
_cellar_open = cellar.dbm._open


def _open(ns: dict[str, Any], file: Any, flag: str, mode: int, *args: Any) -> Any:
    # *args: value_encoding, timeout, exclusive, cache_bytes (cellar.dbm._open's own, passed through).
    if ns is vars(dbm):
        file = dbm.url_for(file, flag)
    return _cellar_open(ns, file, flag, mode, *args)


cellar.dbm._open = _open

__all__ = ["Shelf", "BsdDbShelf", "DbfilenameShelf", "open"]
