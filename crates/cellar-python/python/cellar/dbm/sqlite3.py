"""Drop-in for ``dbm.sqlite3``-style access to one cellar backend.

CPython 3.13's dbm.sqlite3 format (table Dict(key BLOB UNIQUE NOT NULL, value BLOB NOT NULL), WAL), without its one-fsync-per-write cost; readable by CPython 3.13's dbm.sqlite3 and any sqlite3 client. Flags: exactly 'r', 'w', 'c' or 'n'.
"""

from __future__ import annotations

from typing import Any

from cellar._cellar import Database
from cellar._cellar import DbmError as _error
from cellar.dbm import _backend_open

__all__ = ["open", "error"]

error = _error

#: What ``cellar.dbm.whichdb`` answers for files of this backend.
_whichdb_name = "dbm.sqlite3"


def open(file: Any, flag: str = "r", mode: int = 0o666) -> Database:
    """Open or create a dbm.sqlite3 database at ``file`` (no format detection)."""
    return _backend_open("dbm.sqlite3", file, flag, mode)
