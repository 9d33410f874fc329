"""Run the running CPython's own Lib/test/test_dbm.py, test_dbm_dumb.py and (3.13+)
test_dbm_sqlite3.py against cellar.dbm, and test_shelve.py against cellar.shelve.

``dbm`` and ``shelve`` are not imported at interpreter start-up, so a shim on PYTHONPATH
(tests/python/shim/dbm/ and shim/shelve.py) that re-exports cellar.dbm and cellar.shelve under
the stdlib's names is picked up by ``import dbm``, ``import dbm.dumb``, ``import shelve`` and
``import_fresh_module('dbm')``. Each test module runs in a
subprocess with that PYTHONPATH, from a scratch working directory (the tests create files named
after os_helper.TESTFN there). Prints pass/skip/fail counts; exits non-zero on any unexpected
failure or error.

``--server`` runs test_dbm and test_shelve instead against **server-backed** stores, once per
server whose URL is in the environment (CELLAR_TEST_REDIS_URL, CELLAR_TEST_REDIS_CLUSTER_URL,
CELLAR_TEST_POSTGRES_URL, as scripts/servers.sh exports them), with the shim of
tests/python/shim_server: ``dbm._names`` is the one backend ``dbm.redis`` /
``dbm.redis_cluster`` / ``dbm.postgresql``, and each database path the tests use is mapped to a
namespace of its own on the server by a marker file (see that shim's docstring). Tests that are
about files rather than stores are skipped with the reason (SERVER_NOT_APPLICABLE);
test_dbm_dumb and test_dbm_sqlite3 test those file formats and do not apply at all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.join(HERE, "shim")
SHIM_SERVER = os.path.join(HERE, "shim_server")

# Tests that cannot pass against cellar. "module.Class.test" -> why. (None at present.)
EXPECTED_FAILURES: dict[str, str] = {}

# --server: tests about files, not stores. "module.Class.test" (Class without the server
# suffix) -> why it does not apply.
SERVER_NOT_APPLICABLE: dict[str, str] = {
    "test_dbm.WhichDBTestCase.test_whichdb_ndbm": "an ndbm file's names on disk",
    "test_dbm.WhichDBTestCase.test_whichdb_sqlite3": "a sqlite3 file on disk",
    "test_dbm.WhichDBTestCase.test_whichdb_sqlite3_existing_db": "a sqlite3 file on disk",
}

SERVER_VARS = {
    "redis": "CELLAR_TEST_REDIS_URL",
    "redis_cluster": "CELLAR_TEST_REDIS_CLUSTER_URL",
    "postgresql": "CELLAR_TEST_POSTGRES_URL",
}

CHILD_SERVER = r"""
import os, sys, unittest, importlib
import dbm, shelve
assert dbm.whichdb.__module__ == "dbm" and hasattr(dbm, "url_for"), "server shim not used"
assert dbm._names == ["dbm." + os.environ["CELLAR_SHIM_SERVER"]]
assert shelve.open.__module__ == "cellar.shelve", "shelve shim not used"
na = dict(a.split("=", 1) for a in sys.argv[2].split("\x1f") if a)
mod = importlib.import_module("test." + sys.argv[1])
suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
def mark(s):
    for t in s:
        if isinstance(t, unittest.TestSuite):
            mark(t)
            continue
        tid = t.id().removeprefix("test.")
        parts = tid.split(".")
        generic = ".".join([parts[0], parts[1].split("-")[0].split("_dbm")[0], parts[-1]])
        why = na.get(tid) or na.get(generic)
        if why:
            setattr(type(t), t._testMethodName, unittest.skip("not applicable to a server store: " + why)(getattr(type(t), t._testMethodName)))
mark(suite)
r = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
for t, why in r.skipped:
    print(f"SKIP {t.id().removeprefix('test.')}: {why}")
bad = len(r.failures) + len(r.errors) + len(r.unexpectedSuccesses)
print(f"STORES {next(dbm._counter)}")
print(f"RESULT run={r.testsRun} skipped={len(r.skipped)} xfail={len(r.expectedFailures)} failed={bad}")
sys.exit(1 if bad else 0)
"""

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


LAST_OUTPUT = [""]


def run(module: str, server: str | None = None) -> tuple[int, int, int, int, int, list[str]]:
    env = dict(os.environ)
    if server is None:
        env["PYTHONPATH"] = SHIM + os.pathsep + env.get("PYTHONPATH", "")
        expected = ",".join(n for n in EXPECTED_FAILURES if n.startswith(module + "."))
        child = CHILD
    else:
        env["PYTHONPATH"] = SHIM_SERVER + os.pathsep + env.get("PYTHONPATH", "")
        env["CELLAR_SHIM_SERVER"] = server
        env["CELLAR_SHIM_SERVER_URL"] = os.environ[SERVER_VARS[server]]
        expected = "\x1f".join(
            f"{n}={why}" for n, why in SERVER_NOT_APPLICABLE.items() if n.startswith(module + ".")
        )
        child = CHILD_SERVER
    with tempfile.TemporaryDirectory(prefix="cellar-test-dbm-") as cwd:
        proc = subprocess.run(
            [sys.executable, "-c", child, module, expected],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
    out = proc.stdout
    LAST_OUTPUT[0] = out
    m = re.search(r"RESULT run=(\d+) skipped=(\d+) xfail=(\d+) failed=(\d+)", out)
    if proc.returncode != 0 or m is None:
        sys.stdout.write(out)
    if m is None:
        return (0, 0, 0, 1, 0, [])
    run_, skipped, xfail, failed = (int(g) for g in m.groups())
    passed = run_ - skipped - xfail - failed
    skips = re.findall(r"^SKIP (.*)$", out, re.M)
    return (passed, skipped, xfail, failed, proc.returncode, skips)


def stores_created(out: str) -> int:
    m = re.search(r"^STORES (\d+)$", out, re.M)
    return int(m.group(1)) if m else 0


def modules() -> list[str]:
    """The running version's test modules that exist (test_dbm_sqlite3 is new in 3.13)."""
    import importlib.util

    names = ["test_dbm", "test_dbm_dumb", "test_dbm_sqlite3", "test_shelve"]
    return [n for n in names if importlib.util.find_spec("test." + n) is not None]


def main_server() -> int:
    """``--server``: test_dbm and test_shelve on each server in the environment."""
    status = 0
    print(f"CPython {sys.version.split()[0]}: Lib/test of {os.path.dirname(os.__file__)}, on servers")
    servers = [s for s, var in SERVER_VARS.items() if os.environ.get(var)]
    if not servers:
        msg = "no server URL in the environment (" + ", ".join(SERVER_VARS.values()) + ")"
        if os.environ.get("CI") == "true":
            print(msg + " under CI=true: scripts/servers.sh must start the servers")
            return 1
        print("skipped: " + msg)
        return 0
    for server in servers:
        for module in ["test_dbm", "test_shelve"]:
            passed, skipped, xfail, failed, rc, skips = run(module, server)
            print(
                f"{module} against cellar.{'shelve' if module == 'test_shelve' else 'dbm'} on "
                f"{server}: {passed} passed, {failed} failed, {skipped} skipped "
                f"({stores_created(LAST_OUTPUT[0])} server stores created)"
            )
            for line in skips:
                print(f"  skipped {line}")
            if failed or rc:
                status = 1
    return status


def main() -> int:
    if sys.argv[1:] == ["--server"]:
        return main_server()
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
