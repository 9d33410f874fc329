"""CPython side of tests/classes.rs.

`classes.py dump`: writes records (name, protocol, pickle bytes) for every case of
cellar_classes.make_cases() at protocols 0-5 (an empty pickle when CPython cannot pickle the
case at that protocol), plus the recursive case as "recursive".
`classes.py check`: reads records (name, protocol, cellar's bytes), loads each with CPython's
pickle and answers "OK" or "FAIL: ..." per record.
"""
import os
import pickle
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cellar_classes  # noqa: E402


def rec(b):
    return struct.pack("<I", len(b)) + b


def dump():
    out = []
    cases = cellar_classes.make_cases()
    cases["recursive"] = cellar_classes.make_recursive()
    for name, obj in cases.items():
        for proto in range(6):
            try:
                data = pickle.dumps(obj, proto)
            except Exception:
                data = b""
            out.append(rec(name.encode()) + bytes([proto]) + rec(data))
    sys.stdout.buffer.write(b"".join(out))


def check():
    data = sys.stdin.buffer.read()
    cases = cellar_classes.make_cases()
    pos = 0
    out = []
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        name = data[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n
        proto = data[pos]
        (n,) = struct.unpack_from("<I", data, pos + 1)
        blob = data[pos + 5 : pos + 5 + n]
        pos += 5 + n
        try:
            got = pickle.loads(blob)
            want = cases[name]
            if name == "shared":
                ok = got == want and got[0] is got[1]
            else:
                ok = got == want
            msg = "OK" if ok else "FAIL: %s p%d: %r != %r" % (name, proto, got, want)
        except Exception as e:
            msg = "FAIL: %s p%d: %s: %s" % (name, proto, type(e).__name__, e)
        out.append(rec(msg.encode()))
    sys.stdout.buffer.write(b"".join(out))


if __name__ == "__main__":
    {"dump": dump, "check": check}[sys.argv[1]]()
