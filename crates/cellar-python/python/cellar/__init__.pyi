from cellar import dbm as dbm
from cellar import marshal as marshal

__all__ = ["dbm", "marshal"]
