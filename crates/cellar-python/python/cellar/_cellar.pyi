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
