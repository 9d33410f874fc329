"""Run the running CPython's own Lib/test/pickletester.py against cellar.pickle.loads (3.11,
3.12, 3.13...: each version's tests as it ships them).

* ``AbstractUnpickleTests`` (every unpickling and bad-data test) with ``self.loads`` =
  ``cellar.pickle.loads``, allowed to rebuild the classes and functions pickletester defines
  (a safe unpickler must be told which classes it may create: that list is the only difference
  from ``pickle.loads``).
* ``AbstractPickleTests`` round trips, with CPython's ``pickle.dumps`` writing and
  ``cellar.pickle.loads`` reading: the class-instance decoding at every protocol.
* ``test_copyreg`` against ``cellar.copyreg``.

Tests that cannot apply to a loader that never imports are marked expected failures below, each
with the reason. Prints counts; exits non-zero on any unexpected failure or error.
"""

from __future__ import annotations

import builtins
import collections
import inspect
import os
import time
import dbm
import functools
import http.cookies
import math
import pickle
import sys
import unittest

import cellar.copyreg
import cellar.pickle

from test import pickletester  # noqa: E402

# Objects pickletester's data names besides its own classes.
EXTRA_ALLOWED = [
    int,
    collections.OrderedDict,
    collections.deque,
    collections.defaultdict,
    collections.UserDict,
    collections.UserList,
    time.struct_time,
    os.stat_result,
    os.statvfs_result,
    functools.reduce,
    dbm.whichdb,
    Exception,
    UnicodeEncodeError,
    http.cookies.SimpleCookie,
    http.cookies.Morsel,
    *pickletester.python2_exceptions_without_args,
    math.log,
    # (module, qualname, object): names some tests' pickles use for objects whose own
    # __module__/__qualname__ differ (os.path is posixpath; method descriptors have no module).
    ("os.path", "join", os.path.join),
    ("builtins", "str.upper", str.upper),
]


def allowed() -> tuple:
    """What the tests' pickles may name: pickletester's classes, functions and methods (nested
    ones too) *as they are now* (tests rebind module globals, e.g. ``SimpleNewObj = 42`` must
    then be refused), every type and function in builtins (some tests pickle them all by
    reference), and EXTRA_ALLOWED."""
    out = list(EXTRA_ALLOWED)
    # 3.13's test_load_global swaps a namespace into sys.modules and names its global.
    swapped = sys.modules.get("m\u00f6dule")
    if swapped is not None and hasattr(swapped, "gl\u00f6bal"):
        out.append(("m\u00f6dule", "gl\u00f6bal", getattr(swapped, "gl\u00f6bal")))
    for obj in vars(builtins).values():
        if isinstance(obj, type) or inspect.isbuiltin(obj) or inspect.isfunction(obj):
            out.append(obj)
    seen: set = set()

    def walk(obj, depth=0):
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        out.append(obj)
        if isinstance(obj, type):
            for name, attr in list(vars(obj).items()):
                if isinstance(attr, type) and attr.__qualname__.startswith(obj.__qualname__ + "."):
                    walk(attr, depth + 1)
                elif isinstance(attr, (staticmethod, classmethod)) or inspect.isfunction(attr):
                    out.append(getattr(obj, name))

    for obj in vars(pickletester).values():
        # Its classes and functions (some live under __main__'s name, as the test data expects).
        if (isinstance(obj, type) or inspect.isfunction(obj)) and obj.__module__ in (
            pickletester.__name__,
            "__main__",
        ):
            walk(obj)
    return tuple(out)


def sync_extensions() -> None:
    """Mirror the stdlib copyreg's extension registry (which CPython's pickler writes and
    the tests edit, bad entries included) into cellar.copyreg's (which cellar.pickle reads)."""
    import copyreg

    for code, key in list(cellar.copyreg._inverted_registry.items()):
        if copyreg._inverted_registry.get(code) != key:
            cellar.copyreg.remove_extension(key[0], key[1], code)
    for code, key in copyreg._inverted_registry.items():
        # Only well-formed entries: 3.13's test_bad_ext_inverted_registry plants malformed ones
        # in the stdlib table, which cellar's (separate, validated) registry never holds.
        if isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key):
            cellar.copyreg.add_extension(key[0], key[1], code)


# test id suffix -> why it cannot apply to cellar.pickle.loads. Only a test new in CPython
# 3.13's pickletester: it loads globals by importing arbitrary modules (math.log, os.path.join,
# a module planted in sys.modules).
EXPECTED_FAILURES: dict[str, str] = {
    "test_load_stack_global": "imports math / os.path / a planted sys.modules entry by name (3.13)",
}


def cellar_loads(buf, **kwds):
    sync_extensions()
    return cellar.pickle.loads(buf, allow=allowed(), **kwds)


class CellarUnpickler(cellar.pickle.Unpickler):
    """cellar.pickle.Unpickler allowed what the tests' pickles name, as ``cellar_loads`` is
    (3.13's test_find_class asks the base find_class for math.log, os.path.join, str.upper;
    test_custom_find_class overrides it)."""

    def __init__(self, file, **kwds):
        sync_extensions()
        kwds.setdefault("allow", allowed())
        super().__init__(file, **kwds)


class CellarUnpickleTests(pickletester.AbstractUnpickleTests, unittest.TestCase):
    unpickler = CellarUnpickler
    bad_stack_errors = (pickle.UnpicklingError, IndexError)
    truncated_errors = (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        ValueError,
        IndexError,
        ImportError,
    )

    def loads(self, buf, **kwds):
        return cellar_loads(buf, **kwds)


class CellarRoundTripTests(pickletester.AbstractPickleTests, unittest.TestCase):
    pickler = pickle.Pickler

    def dumps(self, arg, proto=None, **kwargs):
        return pickle.dumps(arg, proto, **kwargs)

    def loads(self, buf, **kwds):
        return cellar_loads(buf, **kwds)


def run(suite: unittest.TestSuite, label: str) -> int:
    for t in list(_iter(suite)):
        for suffix in EXPECTED_FAILURES:
            if t.id().endswith(suffix):
                meth = getattr(type(t), t._testMethodName)
                setattr(type(t), t._testMethodName, unittest.expectedFailure(meth))
    verbose = 2 if "-v" in sys.argv else 1
    result = unittest.TextTestRunner(verbosity=verbose, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped) - len(result.expectedFailures)
    print(
        f"{label}: {passed} passed, {len(result.skipped)} skipped, "
        f"{len(result.expectedFailures)} expected failures, {failed} failed"
    )
    for test, reason in result.skipped:
        print(f"  skipped {test.id()}: {reason}")
    return failed


def main() -> int:
    print(f"CPython {sys.version.split()[0]}: {pickletester.__file__}")
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for case in (CellarUnpickleTests, CellarRoundTripTests):
        suite.addTests(loader.loadTestsFromTestCase(case))
    failed = run(suite, "pickletester vs cellar.pickle")

    # test_copyreg against cellar.copyreg: its `copyreg` global, and pickletester's (used by
    # its ExtensionSaver helper), now name cellar's registry.
    import test.test_copyreg as tc

    tc.copyreg = cellar.copyreg
    pickletester.copyreg = cellar.copyreg
    failed += run(loader.loadTestsFromModule(tc), "test_copyreg vs cellar.copyreg")
    return 1 if failed else 0


def _iter(s):
    for t in s:
        if isinstance(t, unittest.TestSuite):
            yield from _iter(t)
        else:
            yield t


if __name__ == "__main__":
    sys.exit(main())
