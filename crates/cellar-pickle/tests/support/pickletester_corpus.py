"""Runs the unpickling and bad-data tests of CPython's Lib/test/pickletester.py
(AbstractUnpickleTests, through test_pickle's C unpickler class) and records every pickle they
load, with the load keywords and CPython's outcome, for tests/pickletester.rs.

stdout: records of (u32 LE length + bytes) x 3 per load: the pickle, the encoding keyword
('' for the default), and the outcome: "OK " + canonical repr, "OKOBJ " + type name (a class
instance, not a basic value), or "ERR " + exception type name.
"""
import io
import os
import pickle
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from differential import canon  # noqa: E402
from test import test_pickle  # noqa: E402

BASIC = (type(None), bool, int, float, complex, str, bytes, bytearray, tuple, list, dict, set,
         frozenset, slice, type(...))
records = []


def basic(v, depth=0):
    if depth > 50:
        return False
    if type(v) in (tuple, list, set, frozenset):
        return all(basic(x, depth + 1) for x in v)
    if type(v) is dict:
        return all(basic(k, depth + 1) and basic(x, depth + 1) for k, x in v.items())
    return type(v) in BASIC


class Recording(test_pickle.CUnpicklerTests):
    def loads(self, buf, **kwds):
        enc = kwds.get("encoding", "")
        try:
            v = pickle.loads(buf, **kwds)
            try:
                outcome = "OK " + canon(v) if basic(v) else "OKOBJ " + type(v).__name__
            except RecursionError:
                outcome = "OKOBJ recursive"
        except Exception as e:
            outcome = "ERR " + type(e).__name__
        records.append((bytes(buf), enc, outcome))
        return super().loads(buf, **kwds)


def main():
    suite = unittest.TestSuite()
    loader = unittest.TestLoader()
    for name in loader.getTestCaseNames(Recording):
        if name in test_pickle.AbstractUnpickleTests.__dict__ or hasattr(
            test_pickle.AbstractUnpickleTests, name
        ):
            suite.addTest(Recording(name))
    unittest.TextTestRunner(stream=io.StringIO()).run(suite)
    out = []
    for data, enc, outcome in records:
        for part in (data, enc.encode(), outcome.encode("utf-8", "surrogatepass")):
            out.append(struct.pack("<I", len(part)) + part)
    sys.stdout.buffer.write(b"".join(out))


if __name__ == "__main__":
    main()
