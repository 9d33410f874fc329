"""cellar: Python's data-persistence stack (marshal, pickle, dbm, shelve) rebuilt in Rust.

Submodules are drop-in replacements for the standard library modules of the same name::

    import cellar.marshal as marshal
    import cellar.dbm as dbm
    import cellar.shelve as shelve

``cellar.pickle`` is a *safe* pickle codec (nothing is imported or called unless allowed) and
``cellar.copyreg`` its type registry.
"""

__all__ = ["copyreg", "dbm", "marshal", "pickle", "shelve"]


def __getattr__(name: str) -> object:
    """The submodules load when first used (``import cellar.dbm`` loads only what dbm needs)."""
    if name in __all__:
        import importlib

        return importlib.import_module(f"cellar.{name}")
    raise AttributeError(f"module 'cellar' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
