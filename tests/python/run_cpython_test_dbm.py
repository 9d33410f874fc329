"""Run the running CPython's own Lib/test/test_dbm.py, test_dbm_dumb.py and (3.13+)
test_dbm_sqlite3.py against cellar.dbm, and test_shelve.py against cellar.shelve.

``dbm`` and ``shelve`` are not imported at interpreter start-up, so a shim on PYTHONPATH
(tests/python/shim/dbm/ and shim/shelve.py) that re-exports cellar.dbm and cellar.shelve under
the stdlib's names is picked up by ``import dbm``, ``import dbm.dumb``, ``import shelve`` and
``import_fresh_module('dbm')``. Each test module runs in a
subprocess with that PYTHONPATH, from a scratch working directory (the tests create files named
after os_helper.TESTFN there). Prints pass/skip/fail counts; exits non-zero on any unexpected
failure or error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.join(HERE, "shim")

# Tests that cannot pass against cellar. "module.Class.test" -> why. (None at present.)
EXPECTED_FAILURES: dict[str, str] = {}

CHILD = r"""
import sys, unittest, importlib
import dbm, dbm.dumb, dbm.sqlite3, shelve
assert dbm.open.__module__ == "dbm" and dbm.dumb.open.__module__ == "cellar.dbm.dumb", "shim not used"
assert dbm.sqlite3.open.__module__ == "cellar.dbm.sqlite3", "shim not used"
assert shelve.open.__module__ == "cellar.shelve", "shelve shim not used"
expected = set(sys.argv[2].split(",")) - {""}
mod = importlib.import_module("test." + sys.argv[1])
suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
def mark(s):
    for t in s:
        if isinstance(t, unittest.TestSuite):
            mark(t)
        elif t.id().removeprefix("test.") in expected:
            setattr(type(t), t._testMethodName, unittest.expectedFailure(getattr(type(t), t._testMethodName)))
mark(suite)
r = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
for t, why in r.skipped:
    print(f"SKIP {t.id().removeprefix('test.')}: {why}")
bad = len(r.failures) + len(r.errors) + len(r.unexpectedSuccesses)
print(f"RESULT run={r.testsRun} skipped={len(r.skipped)} xfail={len(r.expectedFailures)} failed={bad}")
sys.exit(1 if bad else 0)
"""


def run(module: str) -> tuple[int, int, int, int, int, list[str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SHIM + os.pathsep + env.get("PYTHONPATH", "")
    expected = ",".join(n for n in EXPECTED_FAILURES if n.startswith(module + "."))
    with tempfile.TemporaryDirectory(prefix="cellar-test-dbm-") as cwd:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, module, expected],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
    out = proc.stdout
    m = re.search(r"RESULT run=(\d+) skipped=(\d+) xfail=(\d+) failed=(\d+)", out)
    if proc.returncode != 0 or m is None:
        sys.stdout.write(out)
    if m is None:
        return (0, 0, 0, 1, 0, [])
    run_, skipped, xfail, failed = (int(g) for g in m.groups())
    passed = run_ - skipped - xfail - failed
    skips = re.findall(r"^SKIP (.*)$", out, re.M)
    return (passed, skipped, xfail, failed, proc.returncode, skips)


def modules() -> list[str]:
    """The running version's test modules that exist (test_dbm_sqlite3 is new in 3.13)."""
    import importlib.util

    names = ["test_dbm", "test_dbm_dumb", "test_dbm_sqlite3", "test_shelve"]
    return [n for n in names if importlib.util.find_spec("test." + n) is not None]


def main() -> int:
    status = 0
    print(f"CPython {sys.version.split()[0]}: Lib/test of {os.path.dirname(os.__file__)}")
    for module in modules():
        passed, skipped, xfail, failed, rc, skips = run(module)
        print(
            f"{module} against cellar.{'shelve' if module == 'test_shelve' else 'dbm'}: {passed} passed, {failed} failed, {skipped} skipped, "
            f"{xfail} expected failures"
        )
        for line in skips:
            print(f"  skipped {line}")
        for name, why in EXPECTED_FAILURES.items():
            if name.startswith(module + "."):
                print(f"  expected failure {name}: {why}")
        if failed or rc:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
