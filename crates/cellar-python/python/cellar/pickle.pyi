"""Type stubs for :mod:`cellar.pickle` (the safe pickle codec)."""

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol, TypedDict

from typing_extensions import Buffer, Unpack

__all__ = [
    "DEFAULT_PROTOCOL",
    "HIGHEST_PROTOCOL",
    "Inert",
    "PickleError",
    "PicklingError",
    "UnpicklingError",
    "Unpickler",
    "dump",
    "dumps",
    "globals_of",
    "load",
    "loads",
]

from pickle import DEFAULT_PROTOCOL as DEFAULT_PROTOCOL
from pickle import HIGHEST_PROTOCOL as HIGHEST_PROTOCOL
from pickle import PickleError as PickleError
from pickle import PicklingError as PicklingError
from pickle import UnpicklingError as UnpicklingError

class _ReadableFile(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...

class _WritableFile(Protocol):
    def write(self, data: bytes, /) -> Any: ...

# An ``allow=`` entry: a class or function, or ``(module, qualname, obj)``.
_AllowEntry = type | Callable[..., Any] | tuple[str, str, Any]

DEFAULT_MAX_DEPTH: int

class Inert:
    module: str
    name: str
    construct: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] | None
    state: Any
    listitems: list[Any]
    dictitems: list[tuple[Any, Any]]
    func: Inert | None
    def __init__(
        self,
        module: str,
        name: str,
        construct: str = "global",
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        state: Any = None,
        listitems: list[Any] | None = None,
        dictitems: list[tuple[Any, Any]] | None = None,
        func: Inert | None = None,
    ) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

def loads(
    data: Buffer,
    /,
    *,
    allow: Iterable[_AllowEntry] = (),
    inert: bool = False,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Iterable[Any] | None = None,
    max_depth: int | None = ...,
    max_bytes: int | None = None,
) -> Any: ...

class Unpickler:
    proto: int
    def __init__(
        self,
        file: _ReadableFile,
        *,
        allow: Iterable[_AllowEntry] = (),
        inert: bool = False,
        fix_imports: bool = True,
        encoding: str = "ASCII",
        errors: str = "strict",
        buffers: Iterable[Any] | None = None,
        max_depth: int | None = ...,
        max_bytes: int | None = None,
    ) -> None: ...
    def find_class(self, module: str, name: str) -> Any: ...
    def load(self) -> Any: ...

class _LoadOptions(TypedDict, total=False):
    """The keywords of :func:`loads`, which :func:`load` passes on."""

    allow: Iterable[_AllowEntry]
    inert: bool
    fix_imports: bool
    encoding: str
    errors: str
    buffers: Iterable[Any] | None
    max_depth: int | None
    max_bytes: int | None

def load(file: _ReadableFile, **kwargs: Unpack[_LoadOptions]) -> Any: ...
def dumps(obj: Any, protocol: int | None = None, *, fix_imports: bool = True) -> bytes: ...
def dump(
    obj: Any, file: _WritableFile, protocol: int | None = None, *, fix_imports: bool = True
) -> None: ...

class GlobalRef(NamedTuple):
    module: str
    name: str
    need: str
    default: str | None
    called: bool
    instantiated: bool
    built: bool
    built_itself: bool
    extension: int | None
    description: str
    @property
    def allow_form(self) -> tuple[str, str, str]: ...

def globals_of(data: Buffer, /, *, fix_imports: bool = True) -> list[GlobalRef]: ...
