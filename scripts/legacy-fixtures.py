#!/usr/bin/python3
"""Writes legacy dbm fixtures with the real C libraries and dumps what those libraries read back.

Run with Debian's /usr/bin/python3 (which has dbm.gnu from python3-gdbm and dbm.ndbm on
Berkeley DB 5.3), never a python without _gdbm/_dbm:

    /usr/bin/python3 scripts/legacy-fixtures.py OUTDIR

For every fixture NAME it writes the store (OUTDIR/NAME for dbm.gnu, OUTDIR/NAME.db for
dbm.ndbm, OUTDIR/NAME.pag + .dir for a gdbm_compat-style pair) and OUTDIR/NAME.pairs: one line
per pair the C library reads, "HEXKEY HEXVALUE", sorted. OUTDIR/manifest.json lists
{"name", "kind", "count"} for each. Byte-swapped Berkeley DB files are made from the dumps with
db_load -c db_lorder=4321 (db5.3-util) when it is installed; gdbmtool -x / `upgrade` makes the
numsync GDBM files.
"""
import dbm.gnu
import dbm.ndbm
import json
import os
import random
import shelve
import shutil
import subprocess
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
manifest = []


def dump_pairs(name, db, kind):
    pairs = []
    if kind == "gnu":
        k = db.firstkey()
        while k is not None:
            pairs.append((k, db[k]))
            k = db.nextkey(k)
    else:
        for k in db.keys():
            try:
                v = db[k]
            except KeyError:
                # Berkeley DB's ndbm interface returns a NULL pointer for an empty value, which
                # Python's _dbm reports as a missing key although keys() lists it: the file
                # holds the key with an empty value.
                v = b""
            pairs.append((k, v))
    pairs.sort()
    with open(os.path.join(out, name + ".pairs"), "w") as f:
        for k, v in pairs:
            f.write("%s %s\n" % (k.hex(), v.hex()))
    manifest.append({"name": name, "kind": kind, "count": len(pairs)})


def reread(name, kind, path):
    db = dbm.gnu.open(path, "r") if kind == "gnu" else dbm.ndbm.open(path, "r")
    dump_pairs(name, db, kind)
    db.close()


def contents(which, rng):
    """The (key, value) operations of fixture `which`; None as value = delete."""
    ops = []
    if which == "small":
        ops = [(("key%d" % i).encode(), ("value %d" % i).encode()) for i in range(20)]
        ops.append((b"test key", b"test data"))
    elif which == "large":
        ops = [(b"k%06d" % i, b"v" * (i % 50) + b"%d" % i) for i in range(100_000)]
    elif which == "bigval":
        ops = [
            (b"big1", bytes(rng.getrandbits(8) for _ in range(1000)) * 1500),
            (b"big2", b"x" * (3 * 1024 * 1024 + 7)),
            (b"k" * 20_000, b"large key"),
            (b"small", b"s"),
        ]
    elif which == "empty":
        ops = [(b"e%d" % i, b"") for i in range(50)] + [(b"nonempty", b"v")]
    elif which == "binary":
        seen = set()
        for i in range(3000):
            n = rng.randrange(1, 40)
            k = bytes(rng.getrandbits(8) for _ in range(n))
            if k in seen:
                continue
            seen.add(k)
            ops.append((k, bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))))
        ops += [(b"\x00", b"nul"), (b"\xff\xfe\x80", b"\x00\x00"), (b"\x80", b"high")]
    elif which in ("churn", "reorg"):
        for i in range(20_000):
            ops.append((b"c%d" % i, b"first %d" % i))
        for i in range(0, 20_000, 2):
            ops.append((b"c%d" % i, None))
        for i in range(1, 20_000, 3):
            ops.append((b"c%d" % i, b"overwritten, now longer: " + b"y" * (i % 700)))
        for i in range(1, 20_000, 7):
            ops.append((b"c%d" % i, b""))
    return ops


def write(db, ops):
    for k, v in ops:
        if v is None:
            del db[k]
        else:
            db[k] = v


rng = random.Random(1234)
cases = ["small", "large", "bigval", "empty", "binary", "churn", "reorg"]

# --- GDBM (dbm.gnu) ---
for which in cases:
    name = "gnu_" + which
    path = os.path.join(out, name)
    db = dbm.gnu.open(path, "n")
    write(db, contents(which, random.Random(which)))
    if which == "reorg":
        db.reorganize()
    db.close()
    reread(name, "gnu", path)

# numsync (extended) GDBM files: created by gdbmtool -x, and converted by gdbmtool upgrade.
gdbmtool = shutil.which("gdbmtool")
if gdbmtool:
    for which in ("small", "churn"):
        name = "gnu_numsync_" + which
        path = os.path.join(out, name)
        db = dbm.gnu.open(path, "n")
        write(db, contents(which, random.Random(which)))
        db.close()
        subprocess.run([gdbmtool, "-q", "-N", path, "upgrade"], check=True,
                       stdout=subprocess.DEVNULL)
        reread(name, "gnu", path)
    name = "gnu_numsync_new"
    path = os.path.join(out, name)
    cmds = "".join("store key%d value%d\n" % (i, i) for i in range(500))
    cmds += "delete key7\nstore key8 changed\n"
    subprocess.run([gdbmtool, "-q", "-N", "-x", "-n", path], input=cmds.encode(), check=True,
                   stdout=subprocess.DEVNULL)
    reread(name, "gnu", path)
else:
    print("legacy-fixtures: gdbmtool not found: no numsync GDBM fixtures", file=sys.stderr)

# gdbm_compat's ndbm pair: NAME.pag is a GDBM file, NAME.dir a stub.
name = "compat_pair"
path = os.path.join(out, name)
db = dbm.gnu.open(path + ".pag", "n")
write(db, contents("small", rng))
db.close()
open(path + ".dir", "wb").close()
reread(name, "gnu", path + ".pag")

# A shelf written by the stdlib's shelve on dbm.gnu.
name = "gnu_shelf"
path = os.path.join(out, name)
with shelve.Shelf(dbm.gnu.open(path, "n")) as sh:
    sh["test key"] = "test data"
    sh["list"] = [1, 2.5, "three", (4, None)]
    sh["dict"] = {"a": b"bytes", "n": 10**30}
reread(name, "gnu", path)

# --- Berkeley DB hash via dbm.ndbm ---
for which in cases[:-1]:
    name = "ndbm_" + which
    path = os.path.join(out, name)
    db = dbm.ndbm.open(path, "n")
    write(db, contents(which, random.Random(which)))
    db.close()
    reread(name, "ndbm", path)

# Byte-swapped (big-endian) copies made by Berkeley DB itself.
db_dump, db_load = shutil.which("db5.3_dump") or shutil.which("db_dump"), shutil.which(
    "db5.3_load") or shutil.which("db_load")
if db_dump and db_load:
    for which in ("small", "bigval", "binary", "churn"):
        src = os.path.join(out, "ndbm_" + which + ".db")
        name = "ndbm_be_" + which
        dst = os.path.join(out, name + ".db")
        text = subprocess.run([db_dump, src], check=True, stdout=subprocess.PIPE).stdout
        subprocess.run([db_load, "-c", "db_lorder=4321", dst], input=text, check=True)
        reread(name, "ndbm", os.path.join(out, name))
else:
    print("legacy-fixtures: db_dump/db_load not found (db5.3-util): no big-endian Berkeley DB "
          "fixtures", file=sys.stderr)

with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
with open(os.path.join(out, "manifest.txt"), "w") as f:
    for m in manifest:
        f.write("%s %s %d\n" % (m["name"], m["kind"], m["count"]))
