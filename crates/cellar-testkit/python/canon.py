"""Canonical repr shared by the CPython sides of cellar's differential tests: repr() with the
elements of sets and frozensets sorted (their order depends on hashing), matching
cellar_value::repr_sorted."""


def canon(v):
    t = type(v)
    if t is tuple:
        if len(v) == 1:
            return "(" + canon(v[0]) + ",)"
        return "(" + ", ".join(map(canon, v)) + ")"
    if t is list:
        return "[" + ", ".join(map(canon, v)) + "]"
    if t is dict:
        return "{" + ", ".join(canon(k) + ": " + canon(x) for k, x in v.items()) + "}"
    if t is set:
        return "{" + ", ".join(sorted(map(canon, v))) + "}" if v else "set()"
    if t is frozenset:
        return "frozenset({" + ", ".join(sorted(map(canon, v))) + "})" if v else "frozenset()"
    if t is slice:
        return "slice(%s, %s, %s)" % (canon(v.start), canon(v.stop), canon(v.step))
    return repr(v)
