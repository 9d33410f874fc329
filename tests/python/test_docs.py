"""Every example in README.md and docs/*.md that is meant to run, run as shown.

Fenced blocks are run by their info string:
- ```python: the block is a script, run in a fresh scratch directory; it must exit 0.
- ```pycon: an interactive session (`>>> ` prompts with the output Python prints, tracebacks
  included), checked with doctest in a fresh scratch directory.
- ```console: shell commands behind `$ ` prompts, run with bash in a fresh scratch directory with
  the `cellar` binary first on PATH; the lines after a command are its expected output, where a
  line `...` stands for any number of lines and `...` inside a line for any text.
- A block that names a server test variable (CELLAR_TEST_REDIS_URL and the like, which
  scripts/servers.sh exports) is skipped, saying so, when that variable is absent; under CI=true
  it fails instead.
- ```sh / ```text / untagged blocks are not run (install commands, the test command itself, diagrams).
Rust blocks are compiled and run by the crate tests/docs-rust (cargo test).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("python", "pycon", "console")


def blocks() -> list[tuple[str, str, str]]:
    """(id, language, text) of every runnable fenced block."""
    found = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = re.match(r"^```(\w*)", lines[i])
            if not m:
                i += 1
                continue
            lang, start = m.group(1), i + 1
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            if lang in RUN:
                found.append((f"{doc.relative_to(ROOT)}:{start}", lang, "\n".join(lines[start:i]) + "\n"))
            i += 1
    return found


BLOCKS = blocks()


def test_the_docs_have_runnable_examples() -> None:
    langs = {lang for _, lang, _ in BLOCKS}
    assert langs == set(RUN), langs


def _cellar_bin_dir() -> str:
    exe = ROOT / "target" / "release" / "cellar"
    if not exe.exists():
        env = dict(os.environ)
        env.pop("CARGO_TARGET_DIR", None)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "cellar-cli"], cwd=ROOT, env=env, check=True)
    return str(exe.parent)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # `python3` in a console block is the interpreter running the tests (it has cellar installed).
    shim = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join([_cellar_bin_dir(), str(shim), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    return env


def _matches(expected: list[str], actual: list[str]) -> bool:
    """Expected output lines against actual ones; `...` lines and `...` inside lines are wildcards."""
    pattern = ""
    for line in expected:
        if line.strip() == "...":
            pattern += r"(?:.*\n)*?"
        else:
            pattern += ".*".join(re.escape(part) for part in line.split("...")) + r"\n"
    return re.fullmatch(pattern, "".join(a + "\n" for a in actual)) is not None


def _run_console(text: str, cwd: Path) -> None:
    env = _env()
    commands: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"console block text before the first `$ ` prompt: {line!r}")
    for cmd, expected in commands:
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", cmd],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"$ {cmd}\nexit {proc.returncode}\n{proc.stdout}{proc.stderr}"
        actual = (proc.stdout + proc.stderr).splitlines()
        assert _matches(expected, actual), f"$ {cmd}\nexpected:\n" + "\n".join(expected) + "\ngot:\n" + "\n".join(actual)


@pytest.mark.parametrize("where,lang,text", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_example_runs_as_shown(where: str, lang: str, text: str, tmp_path: Path) -> None:
    for var in sorted(set(re.findall(r"CELLAR_TEST_[A-Z_]+_URL", text))):
        if not os.environ.get(var):
            if os.environ.get("CI") == "true":
                pytest.fail(f"{where}: {var} is not set under CI=true (scripts/servers.sh)")
            pytest.skip(f"{where}: {var} is not set (run under scripts/test.sh or scripts/servers.sh)")
    cwd = tmp_path / "scratch"
    cwd.mkdir()
    if lang == "python":
        script = cwd / "example.py"
        script.write_text(text, encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-W", "error", str(script)], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{where}\n{proc.stdout}{proc.stderr}"
    elif lang == "pycon":
        # In a fresh interpreter whose __main__ holds the session's names, so that classes the
        # session defines pickle as they would in a real one.
        runner = (
            "import doctest, sys\n"
            "with open(sys.argv[1], encoding='utf-8') as f:\n"
            "    text = f.read()\n"
            "t = doctest.DocTestParser().get_doctest(text, {}, sys.argv[2], sys.argv[2], 0)\n"
            "t.globs = sys.modules['__main__'].__dict__\n"
            "r = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)\n"
            "r.run(t, clear_globs=False)\n"
            "sys.exit(1 if r.failures else 0)\n"
        )
        session = tmp_path / "session.txt"
        session.write_text(text, encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-W", "error", "-c", runner, str(session), where],
            cwd=cwd,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"{where}\n{proc.stdout}{proc.stderr}"
    else:
        _run_console(text, cwd)
    shutil.rmtree(cwd, ignore_errors=True)


def test_the_output_matcher_is_strict() -> None:
    assert _matches(["a", "b"], ["a", "b"])
    assert not _matches(["a", "b"], ["a", "b", "c"])
    assert not _matches(["a"], ["b"])
    assert _matches(["a", "...", "z"], ["a", "b", "c", "z"])
    assert _matches(["a", "...", "z"], ["a", "z"])
    assert _matches(["x ... y"], ["x 123 y"])
    assert not _matches(["x ... y"], ["x 123 z"])


def test_the_benchmark_chart_shows_the_saved_results(tmp_path: Path) -> None:
    out = tmp_path / "chart.svg"
    subprocess.run([sys.executable, str(ROOT / "bench" / "python" / "chart.py"), str(out)], check=True)
    committed = (ROOT / "docs" / "benchmarks-python.svg").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == committed, "run bench/python/chart.py and commit the chart"
