from cellar.dbm import Database, _error, _Path

__all__ = ["open", "error"]

error: type[_error]
_whichdb_name: str
library: str

def open(file: _Path, flag: str = "r", mode: int = 0o666) -> Database: ...
