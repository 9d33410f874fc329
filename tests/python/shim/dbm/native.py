"""Test shim: cellar.dbm.native as dbm.native."""

from cellar.dbm.native import _records_value_encoding, _whichdb_name, error, open  # noqa: F401
