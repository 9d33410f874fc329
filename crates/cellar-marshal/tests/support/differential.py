"""CPython side of the marshal differential test (crates/cellar-marshal/tests/differential.rs).

stdin: records of (version: 1 byte, cellar's marshal bytes). For each, CPython loads cellar's
bytes and answers with two records: the loaded value's canonical repr (repr with set elements
sorted) or "ERROR: ...", and CPython's own marshal.dumps of that value at the same version.
"""
import marshal
import struct
import sys

sys.set_int_max_str_digits(0)


import os

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../cellar-testkit/python"))
from canon import canon  # noqa: E402  (shared with the other codecs' differential tests)


def main():
    data = sys.stdin.buffer.read()
    out = []
    pos = 0
    while pos < len(data):
        version = data[pos]
        (n,) = struct.unpack_from("<I", data, pos + 1)
        blob = data[pos + 5 : pos + 5 + n]
        pos += 5 + n
        try:
            value = marshal.loads(blob)
            text = canon(value)
            again = marshal.dumps(value, version)
        except Exception as e:  # reported to the Rust side, which fails the test
            text = "ERROR: %s: %s" % (type(e).__name__, e)
            again = b""
        t = text.encode("utf-8", "surrogatepass")
        out.append(struct.pack("<I", len(t)) + t)
        out.append(struct.pack("<I", len(again)) + again)
    sys.stdout.buffer.write(b"".join(out))


if __name__ == "__main__":
    main()
