"""CPython side of tests/literals.rs: stdin holds records of literal texts; each is evaluated
with ast.literal_eval and answered with the canonical repr (sets sorted) or "ERROR: ..."."""
import ast
import struct
import sys

sys.set_int_max_str_digits(0)
sys.path.insert(0, __file__.rsplit("/", 1)[0] + "/../../../cellar-testkit/python")
from canon import canon  # noqa: E402  (the canonical repr shared by the differential tests)

data = sys.stdin.buffer.read()
out = []
pos = 0
while pos < len(data):
    (n,) = struct.unpack_from("<I", data, pos)
    text = data[pos + 4: pos + 4 + n].decode("utf-8", "surrogatepass")
    pos += 4 + n
    try:
        r = canon(ast.literal_eval(text))
    except Exception as e:
        r = "ERROR: %s" % type(e).__name__
    b = r.encode("utf-8", "surrogatepass")
    out.append(struct.pack("<I", len(b)) + b)
sys.stdout.buffer.write(b"".join(out))
