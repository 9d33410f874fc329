"""Drop-in for ``dbm.dumb``-style access to one cellar backend.

dbm.dumb's format (.dat/.dir/.bak), file-compatible both ways with the stdlib's dbm.dumb, and crash safe: an acknowledged write survives kill -9. Flags: exactly 'r', 'w', 'c' or 'n' (default 'c', as dbm.dumb). Its index is parsed by a literal parser, never evaluated; a corrupt .dir raises an error that is also a ValueError.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time (import cost)
if TYPE_CHECKING:
    from typing import Any

from cellar._cellar import Database
from cellar._cellar import DbmError as _error
from cellar.dbm import _backend_open

__all__ = ["open", "error"]

# dbm.dumb's error is OSError itself (cellar.dbm.error is a subclass of it).
error = OSError

#: What ``cellar.dbm.whichdb`` answers for files of this backend.
_whichdb_name = "dbm.dumb"


def open(file: Any, flag: str = "c", mode: int = 0o666) -> Database:
    """Open or create a dbm.dumb database at ``file`` (no format detection)."""
    return _backend_open("dbm.dumb", file, flag, mode)
