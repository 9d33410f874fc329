"""The package's type stubs (.pyi for every public name) are checked two ways:

- ``stubtest`` compares every stub with the installed module at runtime (names, signatures,
  defaults, positional-only markers, ``@final`` classes): a public name without a stub, or a stub
  that disagrees with the code, fails;
- ``mypy --strict`` type-checks every Python example of README.md and docs/ (the ```python
  blocks, and the source lines of the ```pycon sessions) against those stubs.

mypy comes from the test venv (scripts/python-tests.sh installs it); without it these tests skip,
and under CI=true they fail instead.
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_docs import BLOCKS, ROOT

ALLOWLIST = Path(__file__).with_name("stubtest-allowlist.txt")


def _mypy() -> None:
    try:
        import mypy  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("mypy is not installed in the test venv under CI=true (scripts/python-tests.sh installs it)")
        pytest.skip("mypy is not installed (scripts/python-tests.sh installs it)")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["MYPY_CACHE_DIR"] = str(cwd / ".mypy_cache")
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_stubs_match_the_runtime(tmp_path: Path) -> None:
    _mypy()
    # Run outside the source tree so the installed wheel (with its native module) is checked.
    r = _run(["mypy.stubtest", "--ignore-disjoint-bases", "--allowlist", str(ALLOWLIST), "cellar"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_examples_type_check_strictly(tmp_path: Path) -> None:
    _mypy()
    n = 0
    for where, lang, text in BLOCKS:
        if lang == "python":
            src = text
        elif lang == "pycon":
            src = "".join(e.source for e in doctest.DocTestParser().get_examples(text))
        else:
            continue
        name = where.replace("/", "_").replace(".md:", "_").replace(".", "_")
        (tmp_path / f"{name}.py").write_text(f"# {where}\n{src}", encoding="utf-8")
        n += 1
    assert n >= 5, f"only {n} Python examples found in README.md and docs/"
    r = _run(["mypy", "--strict", "--no-error-summary", "."], tmp_path)
    assert r.returncode == 0, f"mypy --strict on the docs' examples (copies in {tmp_path}):\n{r.stdout}{r.stderr}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A wrong call in an example, and a stub that disagrees with the runtime, are caught."""
    _mypy()
    (tmp_path / "bad.py").write_text("import cellar.pickle\ncellar.pickle.loads(b'.', allow=3)\n")
    r = _run(["mypy", "--strict", "bad.py"], tmp_path)
    assert r.returncode != 0 and "allow" in r.stdout, r.stdout
    pkg = tmp_path / "fake_mod"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def f(a, b=1):\n    return a\n")
    (pkg / "__init__.pyi").write_text("def f(a: int, c: int = 1) -> int: ...\n")
    env_path = str(tmp_path)
    env = dict(os.environ, PYTHONPATH=env_path, MYPYPATH=env_path)
    r2 = subprocess.run([sys.executable, "-m", "mypy.stubtest", "fake_mod"], cwd=tmp_path, env=env,
                        capture_output=True, text=True)
    assert r2.returncode != 0 and "fake_mod.f" in r2.stdout, r2.stdout + r2.stderr


def test_every_module_has_a_stub() -> None:
    pkg = ROOT / "crates" / "cellar-python" / "python" / "cellar"
    missing = [str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if not p.with_suffix(".pyi").exists()]
    assert not missing, f"modules without a .pyi stub: {missing}"
