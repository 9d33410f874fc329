"""The shim's backend modules (dbm.redis, dbm.redis_cluster, dbm.postgresql): ``open(path)``
opens the server store the path's marker names (see the package's docstring)."""

from __future__ import annotations

from typing import Any

import cellar.dbm


def opener(name: str) -> Any:
    def open(file: Any, flag: str = "r", mode: int = 0o666) -> Any:  # noqa: A001
        import dbm

        if dbm.SERVER != name.removeprefix("dbm."):
            raise ImportError(f"{name} is not the server under test")
        return cellar.dbm.open(dbm.url_for(file, flag), flag, mode)

    return open
