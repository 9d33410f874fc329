"""Atheris harness for cellar.pickle.loads in all three modes (default, inert=True, allow=).

    .venv/bin/python tests/fuzz/fuzz_pickle.py tests/corpus/pickle -max_total_time=180

Every input must either load or raise one of the exception types CPython's unpickler raises for
bad data (UnpicklingError, EOFError, ValueError, TypeError, UnicodeDecodeError, OverflowError);
anything else (SystemError, AttributeError, KeyError, a crash) is a finding. An audit hook fails
the run if anything is imported, executed, opened or spawned while decoding, and snapshots of
copyreg, functools, builtins, operator and the allowed test classes are compared every 200 inputs
and at exit: nothing may change. Seeds: the hostile corpus in tests/corpus/pickle.
"""

from __future__ import annotations

import atexit
import builtins
import copyreg
import functools
import operator
import pickle
import sys
import types
from pathlib import Path

import atheris

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "pickle"
sys.path.insert(0, str(CORPUS))

with atheris.instrument_imports():
    import cellar.pickle as cpickle

import corpus_classes  # noqa: E402

# The codecs cellar.pickle passes to _codecs.encode / bytearray (the ones CPython writes): their
# stdlib modules load on first use; load them now so the audit hook sees only the pickle's doing.
import _codecs  # noqa: E402
import codecs  # noqa: E402

for _name in ("latin1", "latin-1", "latin_1", "iso-8859-1", "ascii", "utf-8", "utf8"):
    codecs.lookup(_name)
    _codecs.encode("x", _name)

ALLOWED_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    UnicodeDecodeError,
    OverflowError,
)
FORBIDDEN = (
    "import", "exec", "compile", "os.", "subprocess.", "open", "socket.", "ctypes.", "shutil.",
    "pty.", "webbrowser.", "marshal.", "pickle.find_class", "code.__new__", "function.__new__",
    "object.__setattr__", "object.__delattr__", "cpython.run_",
)
ACTIVE = [False]


def hook(event: str, args: tuple) -> None:
    if ACTIVE[0] and event.startswith(FORBIDDEN):
        ACTIVE[0] = False
        raise RuntimeError(f"audit event during loads: {event} {args!r:.200}")


sys.addaudithook(hook)


def snapshot() -> dict:
    snap = {}
    for mod in (copyreg, functools, builtins, operator, corpus_classes):
        members = dict(vars(mod))
        snap[mod.__name__] = sorted((k, id(v)) for k, v in members.items() if k != "SETSTATE_CALLS")
        for k, v in members.items():
            if isinstance(v, (type, types.FunctionType)):
                d = getattr(v, "__dict__", {})
                snap[f"{mod.__name__}.{k}"] = (
                    sorted((a, id(b)) for a, b in dict(d).items()),
                    getattr(v, "__name__", None),
                    getattr(v, "__qualname__", None),
                    id(getattr(v, "__defaults__", None)),
                )
    snap["copyreg tables"] = (
        sorted((id(k), id(v)) for k, v in copyreg.dispatch_table.items()),
        sorted(copyreg._extension_registry.items()),
    )
    return snap


BEFORE = snapshot()
COUNT = [0]
MODES = ({}, {"inert": True}, {"allow": corpus_classes.ALLOWED})


def check_state() -> None:
    after = snapshot()
    changed = [k for k in BEFORE if BEFORE[k] != after.get(k)]
    if changed:
        raise RuntimeError(f"global state changed: {changed[:5]}")


def test_one(data: bytes) -> None:
    for kw in MODES:
        ACTIVE[0] = True
        try:
            cpickle.loads(data, max_bytes=1 << 20, **kw)
        except ALLOWED_ERRORS:
            pass
        finally:
            ACTIVE[0] = False
    COUNT[0] += 1
    if COUNT[0] % 200 == 0:
        check_state()
    corpus_classes.SETSTATE_CALLS.clear()


def report() -> None:
    check_state()
    print(f"fuzz_pickle: {COUNT[0]} inputs x 3 modes, global state unchanged", file=sys.stderr)


atexit.register(report)

if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
