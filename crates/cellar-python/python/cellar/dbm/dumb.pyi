from cellar.dbm import Database, _error, _Path

__all__ = ["open", "error"]

error: type[OSError]
_whichdb_name: str

def open(file: _Path, flag: str = "c", mode: int = 0o666) -> Database: ...
