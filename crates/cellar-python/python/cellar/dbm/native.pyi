from cellar.dbm import Database, _error, _Path

__all__ = ["open", "error"]

error: type[_error]
_whichdb_name: str
_records_value_encoding: bool
_takes_writer_options: bool

def open(
    file: _Path,
    flag: str = "r",
    mode: int = 0o666,
    *,
    value_encoding: tuple[str, int] | None = None,
    timeout: float | None = None,
    exclusive: bool = False,
    block_cache_size: int | None = None,
) -> Database: ...
