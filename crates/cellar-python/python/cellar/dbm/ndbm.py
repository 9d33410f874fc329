"""Read-only ``dbm.ndbm``: files written by the stdlib's ``dbm.ndbm`` when built on Berkeley DB
(``NAME.db``, libdb 4.x/5.x, either byte order) or on gdbm_compat (``NAME.pag`` + ``NAME.dir``),
read in pure Rust: no ``_dbm`` needed. Berkeley DB 1.85 hash files (macOS and BSD ``dbm.ndbm``)
are read too.

Only flag 'r' opens a file; 'w', 'c' and 'n' raise :data:`error` saying the format is
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
_whichdb_name = "dbm.ndbm"
#: The stdlib's ``dbm.ndbm.library`` names the C library; cellar reads the files itself.
library = "cellar (pure Rust: Berkeley DB hash 1.85 and 3-6, gdbm_compat)"


def open(file: Any, flag: str = "r", mode: int = 0o666) -> Database:
    """Open the dbm.ndbm database ``file`` read-only (flag 'r'; any other flag raises ``error``)."""
    return _backend_open("dbm.ndbm", file, flag, mode)
