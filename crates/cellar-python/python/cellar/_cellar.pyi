"""Type stubs for the native extension ``cellar._cellar`` (use :mod:`cellar.marshal` instead)."""

from typing import Any

from cellar.marshal import _ReadableBinary, _WritableBinary
from typing_extensions import Buffer

version: int

def dumps(value: object, version: int = 4, /, *, allow_code: bool = True) -> bytes: ...
def loads(bytes: Buffer, /, *, allow_code: bool = True) -> Any: ...
def dump(
    value: object, file: _WritableBinary, version: int = 4, /, *, allow_code: bool = True
) -> None: ...
def load(file: _ReadableBinary, /, *, allow_code: bool = True) -> Any: ...

# cellar.dbm's native half (use cellar.dbm instead).
from cellar.dbm import Batch as Batch
from cellar.dbm import Database as Database

class DbmError(OSError): ...
class DbmCorruptError(DbmError, ValueError): ...
class DbmServerConnectionError(DbmError, ConnectionError): ...
class DbmServerTimeoutError(DbmError, TimeoutError): ...

def _dbm_open(
    path: bytes,
    backend: str,
    flag: str,
    mode: int,
    value_encoding: tuple[str, int] | None = ...,
    timeout: float | None = ...,
    exclusive: bool = ...,
) -> Database: ...
def _dbm_whichdb(path: bytes) -> str | None: ...
def _dbm_open_url(
    url: str, flag: str, value_encoding: tuple[str, int] | None = ...
) -> Database: ...
def _dbm_is_url(s: str) -> bool: ...

# cellar.pickle's native half (use cellar.pickle instead).
class _PickleLoader:
    def __init__(
        self,
        allowed: dict[tuple[str, str], Any],
        namespaces: dict[tuple[str, str], Any],
        inert: type | None = None,
        fix_imports: bool = True,
        encoding: str = "ASCII",
        errors: str = "strict",
        extensions: dict[int, tuple[str, str]] | None = None,
        max_depth: int | None = None,
        max_bytes: int | None = None,
    ) -> None: ...
    def loads(
        self, data: Buffer, buffers: Any = None, persistent_load: Any = None
    ) -> tuple[Any, int]: ...

def _pickle_dumps(
    obj: object, protocol: int, fix_imports: bool, inert: type, reducer: Any
) -> bytes: ...
def _pickle_globals_of(
    data: Buffer, fix_imports: bool = True, extensions: dict[int, tuple[str, str]] | None = None
) -> tuple[
    list[tuple[str, str, str, str | None, bool, bool, bool, bool, int | None, str]], str | None
]: ...
