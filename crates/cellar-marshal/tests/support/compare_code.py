"""CPython side of tests/pyc.rs: stdin holds records (path, original marshal data, cellar's
re-dump). Both must load to equal code objects: == (CPython's code comparison) and the same
co_filename, co_qualname, co_* counts and nested constants, recursively."""
import marshal
import struct
import sys

FIELDS = ("co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_nlocals", "co_stacksize",
          "co_flags", "co_code", "co_names", "co_varnames", "co_freevars", "co_cellvars",
          "co_filename", "co_name", "co_qualname", "co_firstlineno", "co_linetable",
          "co_exceptiontable")


def same(a, b, path):
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if hasattr(a, "co_code"):
        for f in FIELDS:
            if getattr(a, f) != getattr(b, f):
                return f"{path}.{f} differs"
        if len(a.co_consts) != len(b.co_consts):
            return f"{path}.co_consts length differs"
        for i, (x, y) in enumerate(zip(a.co_consts, b.co_consts)):
            r = same(x, y, f"{path}.co_consts[{i}]")
            if r:
                return r
        return None
    if isinstance(a, frozenset):
        # Iteration order depends on insertion history; compare as sets, members by type too.
        if a != b or sorted(map(repr, a)) != sorted(map(repr, b)):
            return f"{path}: {a!r} != {b!r}"
        return None
    if isinstance(a, tuple):
        if len(a) != len(b):
            return f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            r = same(x, y, f"{path}[{i}]")
            if r:
                return r
        return None
    if repr(a) != repr(b):
        return f"{path}: {a!r} != {b!r}"
    return None


def main():
    data = sys.stdin.buffer.read()
    pos = 0
    recs = []
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        recs.append(data[pos + 4: pos + 4 + n])
        pos += 4 + n
    bad = []
    count = 0
    for i in range(0, len(recs), 3):
        path, orig, redump = recs[i].decode(), recs[i + 1], recs[i + 2]
        a = marshal.loads(orig)
        try:
            b = marshal.loads(redump)
        except Exception as e:
            bad.append(f"{path}: CPython cannot load cellar's dump: {e!r}")
            continue
        # CPython's code == compares constants by identity for NaN, so a file with a NaN
        # constant is unequal even to itself loaded twice; the field-by-field check below
        # (reprs, so NaN == NaN) is the judge for those.
        if a != b and a == marshal.loads(orig):
            bad.append(f"{path}: code objects differ (==)")
            continue
        r = same(a, b, path)
        if r:
            bad.append(r)
            continue
        count += 1
    if bad:
        print(f"{len(bad)} different:")
        print("\n".join(bad[:20]))
    else:
        print(f"{count} equal")


main()
