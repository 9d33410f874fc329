from cellar import marshal as marshal

__all__ = ["marshal"]
