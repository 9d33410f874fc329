"""Drop-in replacement for the standard library's :mod:`marshal`, implemented in Rust.

Reads and writes CPython's marshal format, versions 0 to 5 (code objects in the 3.11 layout;
slices at version 5), with the stdlib's exceptions and messages. Unlike the C implementation it
never crashes or exhausts memory on hostile bytes: allocation follows the bytes actually present,
nesting is limited to 2000 levels, and every malformed input raises ``EOFError``, ``ValueError``
or ``TypeError``.

Functions:

``dumps(value, version=4, /, *, allow_code=True)``
    The bytes that ``dump(value, file)`` writes.
``loads(bytes, /, *, allow_code=True)``
    The value at the start of a bytes-like object (trailing bytes are ignored).
``dump(value, file, version=4, /, *, allow_code=True)``
    Write ``dumps(value, version)`` to a binary file.
``load(file, /, *, allow_code=True)``
    Read one value from a binary file, consuming exactly its bytes.

``version`` is the format version written by default (4, as in CPython 3.11).
"""

from cellar._cellar import dump, dumps, load, loads, version

__all__ = ["dump", "dumps", "load", "loads", "version"]
