"""Type stubs for the native extension ``cellar._cellar`` (use :mod:`cellar.marshal` instead)."""

from collections.abc import Iterator
from types import TracebackType
from typing import Any, final

from cellar.marshal import _ReadableBinary, _WritableBinary
from typing_extensions import Buffer, Self

version: int

def dumps(value: object, version: int = 4, /, *, allow_code: bool = True) -> bytes: ...
def loads(bytes: Buffer, /, *, allow_code: bool = True) -> Any: ...
def dump(
    value: object, file: _WritableBinary, version: int = 4, /, *, allow_code: bool = True
) -> None: ...
def load(file: _ReadableBinary, /, *, allow_code: bool = True) -> Any: ...
def _marshal_code_fields(on: bool) -> bool: ...

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
    value_encoding: tuple[str, int] | None = None,
    timeout: float | None = None,
    exclusive: bool = False,
    cache_bytes: int | None = None,
) -> Database: ...
def _dbm_whichdb(path: bytes) -> str | None: ...
def _dbm_open_url(
    url: str, flag: str, value_encoding: tuple[str, int] | None = ...
) -> Database: ...
def _dbm_is_url(s: str) -> bool: ...

# cellar.pickle's native half (use cellar.pickle instead).
@final
class _PickleLoader:
    def __new__(
        cls,
        allowed: dict[tuple[str, str], Any],
        namespaces: dict[tuple[str, str], Any],
        inert: type | None = None,
        fix_imports: bool = True,
        encoding: str = "ASCII",
        errors: str = "strict",
        extensions: dict[int, tuple[str, str]] | None = None,
        max_depth: int | None = None,
        max_bytes: int | None = None,
    ) -> Self: ...
    def __call__(self, data: Buffer, /) -> Any: ...
    def loads(
        self,
        data: Buffer,
        buffers: Any = None,
        persistent_load: Any = None,
        find_class: Any = None,
    ) -> tuple[Any, int]: ...
    def find_class(
        self,
        module: str,
        name: str,
        proto: int,
        loading: bool,
        refusals: tuple[type[Exception], type[Exception], type[Exception]],
    ) -> Any: ...

def _pickle_dumps(
    obj: object, protocol: int, fix_imports: bool, inert: type, reducer: Any
) -> bytes: ...
def _pickle_globals_of(
    data: Buffer, fix_imports: bool = True, extensions: dict[int, tuple[str, str]] | None = None
) -> tuple[
    list[tuple[str, str, str, str | None, bool, bool, bool, bool, int | None, str]], str | None
]: ...

# cellar.shelve's native half (use cellar.shelve instead).
@final
class _ShelfBatch:
    def __setitem__(self, key: str, value: Any, /) -> None: ...
    def __delitem__(self, key: str, /) -> None: ...
    def __len__(self) -> int: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

class _ShelfBase:
    def __new__(cls, *args: Any, **kwargs: Any) -> Self: ...
    dict: Any
    writeback: bool
    _protocol: Any
    keyencoding: str
    serializer: Any
    deserializer: Any
    cache: dict[str, Any]
    _codec: str
    def __getitem__(self, key: str, /) -> Any: ...
    def __setitem__(self, key: str, value: Any, /) -> None: ...
    def __delitem__(self, key: str, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def _native_batch(self) -> _ShelfBatch | None: ...
    def _paged_items(self) -> _ShelfItems | None: ...

@final
class _ShelfItems(Iterator[tuple[str, Any]]):
    def __next__(self) -> tuple[str, Any]: ...

@final
class KeyIterator(Iterator[bytes]):
    def __next__(self) -> bytes: ...

@final
class ItemIterator(Iterator[tuple[bytes, bytes]]):
    def __next__(self) -> tuple[bytes, bytes]: ...
