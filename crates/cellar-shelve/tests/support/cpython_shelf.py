"""CPython side of crates/cellar-shelve/tests/shelf.rs (stdlib shelve on dbm.dumb / dbm.sqlite3-style
stores is the reference).

  read PATH        open the stdlib shelf at PATH (dbm.dumb) read-only; print, per key in sorted
                   order, records: key, canon(value)
  write PATH P     read records (key, pickle) from stdin, pickle.loads each and store it with
                   stdlib shelve on dbm.dumb at PATH with protocol P
"""
import dbm.dumb
import os
import pickle
import shelve
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "cellar-testkit", "python"))
from canon import canon  # noqa: E402


def put(out, data):
    out.write(struct.pack("<I", len(data)))
    out.write(data)


def records(buf):
    pos = 0
    while pos < len(buf):
        (n,) = struct.unpack_from("<I", buf, pos)
        yield buf[pos + 4 : pos + 4 + n]
        pos += 4 + n


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    out = sys.stdout.buffer
    if cmd == "read":
        with shelve.Shelf(dbm.dumb.open(path, "r")) as s:
            for k in sorted(s.keys()):
                put(out, k.encode("utf-8", "surrogatepass"))
                put(out, canon(s[k]).encode("utf-8", "surrogatepass"))
    elif cmd == "write":
        protocol = int(sys.argv[3])
        it = records(sys.stdin.buffer.read())
        with shelve.Shelf(dbm.dumb.open(path, "c"), protocol=protocol) as s:
            for k in it:
                s[k.decode("utf-8")] = pickle.loads(next(it))
    else:
        raise SystemExit("unknown command " + cmd)


main()
