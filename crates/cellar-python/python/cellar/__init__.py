"""cellar: Python's data-persistence stack (marshal, pickle, dbm, shelve) rebuilt in Rust.

Submodules are drop-in replacements for the standard library modules of the same name::

    import cellar.marshal as marshal
"""

from cellar import marshal

__all__ = ["marshal"]
