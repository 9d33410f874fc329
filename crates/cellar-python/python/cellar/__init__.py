"""cellar: Python's data-persistence stack (marshal, pickle, dbm, shelve) rebuilt in Rust.

Submodules are drop-in replacements for the standard library modules of the same name::

    import cellar.marshal as marshal
    import cellar.dbm as dbm
    import cellar.shelve as shelve

``cellar.pickle`` is a *safe* pickle codec (nothing is imported or called unless allowed) and
``cellar.copyreg`` its type registry.
"""

from cellar import copyreg, dbm, marshal, pickle, shelve

__all__ = ["copyreg", "dbm", "marshal", "pickle", "shelve"]
