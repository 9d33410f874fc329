from cellar.dbm import Database, _error, _Path

__all__ = ["open", "error"]

error: type[_error]
_whichdb_name: str
BUILD_TABLE: str
_ERR_CLOSED: str
_ERR_REINIT: str

def _normalize_uri(path: _Path) -> str: ...

def open(file: _Path, flag: str = "r", mode: int = 0o666) -> Database: ...
