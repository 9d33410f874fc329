"""Test shim: cellar.dbm.sqlite3 as dbm.sqlite3 (with the private helpers CPython 3.13's
test_dbm_sqlite3 imports)."""

from cellar.dbm.sqlite3 import (  # noqa: F401
    _ERR_CLOSED,
    _ERR_REINIT,
    BUILD_TABLE,
    _normalize_uri,
    _whichdb_name,
    error,
    open,
)
