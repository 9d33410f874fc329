from cellar import copyreg as copyreg
from cellar import dbm as dbm
from cellar import marshal as marshal
from cellar import pickle as pickle
from cellar import shelve as shelve

__all__ = ["copyreg", "dbm", "marshal", "pickle", "shelve"]
