"""An emulation of CPython 3.13's ``dbm.sqlite3`` for Pythons that lack it (3.11, 3.12).

What it reproduces, because that is what costs time and space: one table
``Dict(key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)``, ``PRAGMA journal_mode = wal``, a
connection in autocommit mode (every write is its own transaction, committed with SQLite's
default ``synchronous = FULL``: one fsync per write), ``REPLACE INTO`` with ``CAST(? AS BLOB)``,
a fresh cursor per statement closed after use, and the ``ro``/``rw``/``rwc`` URI open modes.

``transaction()`` is not in CPython's API; the benchmark uses it for the emulation's batch mode
(what a user of plain sqlite3 would do: many writes in one ``BEGIN ... COMMIT``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import MutableMapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

BUILD_TABLE = "CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)"
GET_SIZE = "SELECT COUNT (key) FROM Dict"
LOOKUP_KEY = "SELECT value FROM Dict WHERE key = CAST(? AS BLOB)"
STORE_KV = "REPLACE INTO Dict (key, value) VALUES (CAST(? AS BLOB), CAST(? AS BLOB))"
DELETE_KEY = "DELETE FROM Dict WHERE key = CAST(? AS BLOB)"
ITER_KEYS = "SELECT key FROM Dict"

_MODES = {"r": "ro", "w": "rw", "c": "rwc", "n": "rwc"}


class error(OSError):
    pass


class SqliteDbm(MutableMapping):  # type: ignore[type-arg]
    def __init__(self, path: str, flag: str = "c", mode: int = 0o666) -> None:
        if flag not in _MODES:
            raise ValueError(f"Flag must be one of 'r', 'w', 'c', or 'n', not {flag!r}")
        p = Path(path)
        if flag == "n":
            p.unlink(missing_ok=True)
        if flag in ("c", "n"):
            p.touch(mode=mode, exist_ok=True)
        uri = p.absolute().as_uri() + "?mode=" + _MODES[flag]
        try:
            # isolation_level=None: autocommit (3.13 passes autocommit=True, 3.12+ only).
            self._cx = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as e:
            raise error(str(e)) from e
        try:
            self._cx.execute("PRAGMA journal_mode = wal")
        except sqlite3.OperationalError:
            pass
        if flag != "r":
            self._execute(BUILD_TABLE)

    def _execute(self, *args: Any) -> closing[sqlite3.Cursor]:
        try:
            return closing(self._cx.execute(*args))
        except sqlite3.Error as e:
            raise error(str(e)) from e

    def __len__(self) -> int:
        with self._execute(GET_SIZE) as cu:
            row = cu.fetchone()
        return int(row[0])

    def __getitem__(self, key: Any) -> bytes:
        with self._execute(LOOKUP_KEY, (key,)) as cu:
            row = cu.fetchone()
        if not row:
            raise KeyError(key)
        return row[0]  # type: ignore[no-any-return]

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._execute(STORE_KV, (key, value)):
            pass

    def __delitem__(self, key: Any) -> None:
        with self._execute(DELETE_KEY, (key,)) as cu:
            if not cu.rowcount:
                raise KeyError(key)

    def __iter__(self) -> Iterator[bytes]:
        with self._execute(ITER_KEYS) as cu:
            for row in cu:
                yield row[0]

    def keys(self) -> list[bytes]:  # type: ignore[override]
        return list(self)

    @contextmanager
    def transaction(self) -> Iterator[SqliteDbm]:
        self._cx.execute("BEGIN")
        try:
            yield self
        except BaseException:
            self._cx.execute("ROLLBACK")
            raise
        self._cx.execute("COMMIT")

    def close(self) -> None:
        self._cx.close()

    def __enter__(self) -> SqliteDbm:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()
