"""Test shim: cellar.dbm.dumb as dbm.dumb."""

from cellar.dbm.dumb import _whichdb_name, error, open  # noqa: F401
