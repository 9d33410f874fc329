"""Drop-in for ``dbm.native``-style access to one cellar backend.

cellar's native engine: one file at exactly the given path, the default backend for new stores. Flags: 'r', 'w', 'c', 'n', followed by any of dbm.gnu's modifiers 'f' (fast), 's' (sync every write), 'u' (no lock).
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

#: What ``cellar.dbm.whichdb`` answers for files of this backend.
_whichdb_name = "dbm.native"
#: ``open`` takes ``value_encoding`` (recorded in the header of a store it creates).
_records_value_encoding = True
#: ``open`` takes ``timeout``, ``exclusive`` (many writers) and ``cache_bytes`` (see ``open``).
_takes_writer_options = True


def open(
    file: Any,
    flag: str = "r",
    mode: int = 0o666,
    *,
    value_encoding: tuple[str, int] | None = None,
    timeout: float | None = None,
    exclusive: bool = False,
    cache_bytes: int | None = None,
) -> Database:
    """Open or create a dbm.native database at ``file`` (no format detection).

    ``value_encoding`` (``("pickle", protocol)`` or ``("marshal", version)``) is recorded in
    the header of a store this call creates, so tools know how to decode its values.

    Many writers: any number of handles, in any processes, may write; each commit waits up to
    ``timeout`` seconds (default 5) for the store's write lock, then raises ``error`` naming
    the holder's pid. ``exclusive=True``: this handle is the only writer until it closes.
    ``cache_bytes``: the block cache of a compact-form store (default 128 MiB)."""
    return _backend_open(
        "dbm.native", file, flag, mode, value_encoding, timeout, exclusive, cache_bytes
    )
