"""Drop-in for ``dbm.sqlite3``-style access to one cellar backend.

CPython 3.13's dbm.sqlite3 format (table Dict(key BLOB UNIQUE NOT NULL, value BLOB NOT NULL), WAL), without its one-fsync-per-write cost; readable by CPython 3.13's dbm.sqlite3 and any sqlite3 client. Flags: exactly 'r', 'w', 'c' or 'n'.

It runs on the interpreter's own ``sqlite3`` module (the SQLite library the interpreter links),
never on a second copy of SQLite: two SQLite libraries in one process lose each other's POSIX
locks, and a stdlib ``sqlite3`` connection opened and closed on the same file would delete the
WAL under cellar's connection. Semantics are CPython 3.13's dbm.sqlite3 on every version: int
and float keys and values are stored as ``CAST(? AS BLOB)`` makes them (``42`` -> ``b'42'``),
``None`` and SQLite errors raise :data:`error`, iterators stop with :data:`error` after
``close()``, and ``__init__`` cannot be called again.
"""

from __future__ import annotations

import os

from cellar._cellar import Database
from cellar._cellar import DbmError as _error
from cellar.dbm import _backend_open

TYPE_CHECKING = False  # typing is not imported at run time (import cost)
if TYPE_CHECKING:
    import sqlite3 as _sqlite3
    from typing import Any

__all__ = ["open", "error"]

error = _error

BUILD_TABLE = """
  CREATE TABLE IF NOT EXISTS Dict (
    key BLOB UNIQUE NOT NULL,
    value BLOB NOT NULL
  )
"""
_ERR_CLOSED = "DBM object has already been closed"
_ERR_REINIT = "DBM object does not support reinitialization"
_HAS_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'Dict'"
# SQLite result codes after which 'r' retries with a read-only connection: the file or its
# directory cannot be written (so no -wal/-shm can be created by a read-write connection).
_RETRY_READ_ONLY = {3, 5, 6, 8, 14}  # PERM, BUSY, LOCKED, READONLY, CANTOPEN


def _normalize_uri(path: Any) -> str:
    """The ``file:`` URI of ``path`` as CPython 3.13's dbm.sqlite3 builds it (absolute,
    percent-encoded, no doubled slashes)."""
    from pathlib import Path  # here: pathlib is slow to import, and only this needs it

    uri = Path(path).absolute().as_uri()
    while "//" in uri:
        uri = uri.replace("//", "/")
    return uri


def _connect(path: bytes, flag: str) -> _sqlite3.Connection:
    """The connection behind a database opened with ``flag`` ('r', 'w' or 'c'; the file
    steps of 'c' and 'n' are done by then): autocommit, WAL tried, synchronous=NORMAL (a write
    reaches the OS, without an fsync: ``sync()`` checkpoints with one), the table built for
    'c'. 'r' is a read-write connection with ``query_only`` (so that it removes the -wal/-shm
    files when it is the last to close), read-only where the file cannot be written. Called by
    cellar's native half; the connection is shared by the threads using the database, one at a
    time."""
    # Imported here, not at module level: `import cellar.dbm` (which imports this backend)
    # should not pay for the sqlite3 module in processes that never open a sqlite3 store.
    import sqlite3 as _sqlite3

    uri = _normalize_uri(os.fsdecode(path))

    def connect(mode: str) -> _sqlite3.Connection:
        return _sqlite3.connect(
            f"{uri}?mode={mode}", uri=True, isolation_level=None, check_same_thread=False
        )

    def setup(cx: _sqlite3.Connection) -> _sqlite3.Connection:
        try:
            if flag == "r":
                cx.execute("PRAGMA query_only = 1")
            has_table = cx.execute(_HAS_TABLE).fetchone() is not None
            if flag == "r" and not has_table:
                raise _error(
                    f"{os.fsdecode(path)}: not a dbm.sqlite3 database (it has no table Dict)"
                )
            if flag != "r":
                try:
                    # An optimisation only; fine if it fails (read-only media, old files).
                    cx.execute("PRAGMA journal_mode = wal").fetchall()
                except _sqlite3.OperationalError:
                    pass
                if not has_table:
                    cx.execute(BUILD_TABLE)
            try:
                cx.execute("PRAGMA synchronous = NORMAL")
            except _sqlite3.OperationalError:
                pass
            return cx
        except BaseException:
            cx.close()
            raise

    try:
        if flag == "r":
            try:
                return setup(connect("rw"))
            except _sqlite3.Error as exc:
                if getattr(exc, "sqlite_errorcode", 14) & 0xFF not in _RETRY_READ_ONLY:
                    raise
            return setup(connect("ro"))
        return setup(connect("rwc" if flag == "c" else "rw"))
    except _sqlite3.Error as exc:
        where = f"opening {os.fsdecode(path)} as a dbm.sqlite3 database"
        if flag == "r" and getattr(exc, "sqlite_errorcode", 14) & 0xFF in _RETRY_READ_ONLY:
            where += (
                "; reading a WAL-mode database needs its -wal and -shm files, which could "
                "not be opened or created here"
            )
        raise _error(f"{exc} (while {where})") from exc

#: What ``cellar.dbm.whichdb`` answers for files of this backend.
_whichdb_name = "dbm.sqlite3"


def open(file: Any, flag: str = "r", mode: int = 0o666) -> Database:
    """Open or create a dbm.sqlite3 database at ``file`` (no format detection)."""
    return _backend_open("dbm.sqlite3", file, flag, mode)
