"""pickletools.genops over records (u32 LE length + pickle) from stdin: one record per pickle
with lines "NAME offset" (tests/disasm.rs compares cellar's disassembly)."""
import pickletools
import struct
import sys

data = sys.stdin.buffer.read()
pos = 0
out = []
while pos < len(data):
    (n,) = struct.unpack_from("<I", data, pos)
    blob = data[pos + 4 : pos + 4 + n]
    pos += 4 + n
    text = "\n".join("%s %d" % (op.name, p) for op, arg, p in pickletools.genops(blob)).encode()
    out.append(struct.pack("<I", len(text)) + text)
sys.stdout.buffer.write(b"".join(out))
