"""Test shim: cellar.dbm on the server under test as ``dbm.postgresql`` (see the package docstring)."""

import cellar.dbm

from ._backend import opener

open = opener(__name__)  # noqa: A001
_whichdb_name = __name__
# A backend module's error is one class (the package's ``dbm.error`` is the tuple).
error = cellar.dbm.error[0]
