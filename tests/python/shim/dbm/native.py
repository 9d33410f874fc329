"""Test shim: cellar.dbm.native as dbm.native."""

from cellar.dbm.native import _whichdb_name, error, open  # noqa: F401
