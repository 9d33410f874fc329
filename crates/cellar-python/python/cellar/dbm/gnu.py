"""Read-only ``dbm.gnu``: GNU dbm (GDBM) files as written by the stdlib's ``dbm.gnu`` (libgdbm),
read in pure Rust: no ``_gdbm`` needed. Standard and numsync files, 64- and 32-bit offsets and
either byte order are read.

Only flag 'r' (gnu's modifiers 'f', 's', 'u' are accepted and ignored) opens a file; 'w', 'c' and 'n' raise :data:`error` saying the format is
read-only in cellar and that ``cellar convert SRC DST`` migrates it to cellar's native
format. Not listed in ``cellar.dbm._names``: ``cellar.dbm.open(file, 'r')`` routes such files
here by ``whichdb``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time (import cost)
if TYPE_CHECKING:
    from typing import Any

from cellar._cellar import Database
from cellar._cellar import DbmError as _error
from cellar.dbm import _backend_open

__all__ = ["open", "error"]

error = _error

#: What ``cellar.dbm.whichdb`` answers for files of this format.
_whichdb_name = "dbm.gnu"
#: The flag characters ``open`` accepts, as ``dbm.gnu.open_flags`` lists them (only 'r' opens;
#: the modifiers are accepted and ignored).
open_flags = "rwcnfsu"


def open(file: Any, flag: str = "r", mode: int = 0o666) -> Database:
    """Open the dbm.gnu database ``file`` read-only (flag 'r'; any other flag raises ``error``)."""
    return _backend_open("dbm.gnu", file, flag, mode)
