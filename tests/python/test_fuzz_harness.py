"""The atheris harnesses (tests/fuzz/fuzz_marshal.py, tests/fuzz/fuzz_pickle.py) run briefly in
the test command, so they cannot rot: each must start, replay its seed corpus, mutate for a fixed
number of runs and exit 0 (no uncaught exception of a wrong type, no audit event, no mutated
global state). The long, coverage-guided run (an instrumented wheel, minutes per harness) is
scripts/fuzz-python.sh.

atheris comes from the test venv (scripts/python-tests.sh installs it); without it these tests
skip, and under CI=true they fail instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("harness", ["marshal", "pickle"])
def test_harness_runs_clean(harness: str, tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("atheris is not installed in the test venv under CI=true")
        pytest.skip("atheris is not installed (scripts/python-tests.sh installs it)")
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / f"fuzz_{harness}.py"), str(tmp_path),
         str(ROOT / "tests" / "corpus" / harness), "-runs=5000", "-seed=1",
         f"-artifact_prefix={tmp_path}/"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, tail
    assert "Done 5000 runs" in r.stderr, tail
    assert not list(tmp_path.glob("crash-*")), tail
