"""Test shim: cellar.dbm under the stdlib's name ``dbm`` (put tests/python/shim on PYTHONPATH).

CPython's test_dbm imports every name in ``dbm._names`` and compares each module's ``__name__``
with ``whichdb``'s answer, so the backends are re-exported here as ``dbm.native``,
``dbm.sqlite3`` and ``dbm.dumb``. ``open`` is cellar.dbm's, run on this module's own
``_names``/``_modules``/``_defaultmod`` (the tests set ``dbm._defaultmod``).
"""

from cellar.dbm import Batch, Database, error, whichdb  # noqa: F401
from cellar.dbm import _open

__all__ = ["open", "whichdb", "error"]

_names = ["dbm.native", "dbm.sqlite3", "dbm.dumb"]
_defaultmod = None
_modules = {}


def open(file, flag="r", mode=0o666):
    return _open(globals(), file, flag, mode)
