"""Run the running CPython's own Lib/test/test_marshal.py (3.11, 3.12, 3.13...) against
cellar.marshal.

The stdlib ``marshal`` is built into the interpreter and imported at start-up, so the test module's
``marshal`` global and ``sys.modules['marshal']`` are both replaced by ``cellar.marshal`` before the
tests run. Tests that exercise CPython internals rather than the marshal format are marked as
expected failures below, each with the reason. Prints pass/skip/fail counts; exits non-zero on any
unexpected failure or error.
"""

from __future__ import annotations

import sys
import unittest

import cellar.marshal

# Tests of CPython internals, not of the format. Name -> why it cannot apply to cellar.
EXPECTED_FAILURES: dict[str, str] = {
}


def main() -> int:
    sys.modules["marshal"] = cellar.marshal
    import test.test_marshal as tm

    print(f"CPython {sys.version.split()[0]}: {tm.__file__}")

    tm.marshal = cellar.marshal
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromModule(tm)

    def mark(s: unittest.TestSuite) -> None:
        for t in s:
            if isinstance(t, unittest.TestSuite):
                mark(t)
                continue
            name = t.id().removeprefix("test.test_marshal.")
            if name in EXPECTED_FAILURES:
                meth = getattr(type(t), t._testMethodName)
                setattr(type(t), t._testMethodName, unittest.expectedFailure(meth))

    mark(suite)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    passed = (
        result.testsRun
        - len(result.failures)
        - len(result.errors)
        - len(result.skipped)
        - len(result.expectedFailures)
        - len(result.unexpectedSuccesses)
    )
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    print()
    print(
        f"test_marshal expected failures (tests of CPython internals): {len(result.expectedFailures)}, "
        f"{len(result.unexpectedSuccesses)} unexpected successes"
    )
    print(f"test_marshal: {passed} passed, {failed} failed, {len(result.skipped)} skipped")
    for name, why in EXPECTED_FAILURES.items():
        print(f"  expected failure {name}: {why}")
    ok = not result.failures and not result.errors and not result.unexpectedSuccesses
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
