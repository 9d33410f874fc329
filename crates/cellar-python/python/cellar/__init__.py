"""cellar: Python's data-persistence stack (marshal, pickle, dbm, shelve) rebuilt in Rust.

Submodules are drop-in replacements for the standard library modules of the same name::

    import cellar.marshal as marshal
    import cellar.dbm as dbm
    import cellar.shelve as shelve
"""

from cellar import dbm, marshal, shelve

__all__ = ["dbm", "marshal", "shelve"]
