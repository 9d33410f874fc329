"""Test shim: cellar.dbm.sqlite3 as dbm.sqlite3."""

from cellar.dbm.sqlite3 import _whichdb_name, error, open  # noqa: F401
