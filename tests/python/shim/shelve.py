"""Test shim: cellar.shelve under the stdlib's name ``shelve`` (put tests/python/shim on PYTHONPATH).

CPython's test_shelve picks the backend of each file shelf by setting ``dbm._defaultmod`` on the
``dbm`` it imports (the shim package beside this file), so cellar.shelve is pointed at that
namespace.
"""

import dbm

import cellar.shelve
from cellar.shelve import (  # noqa: F401
    BsdDbShelf,
    DbfilenameShelf,
    Shelf,
    ShelveError,
    _ClosedDict,
    open,
)

cellar.shelve._dbm_namespace = vars(dbm)

__all__ = ["Shelf", "BsdDbShelf", "DbfilenameShelf", "open"]
