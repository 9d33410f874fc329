"""The hostile pickle corpus (tests/corpus/pickle, see make_corpus.py) through cellar.pickle.loads
in all three modes (default, inert=True, allow=corpus_classes.ALLOWED):

- every case has the outcome expected.tsv gives (``ok`` or the exception type);
- an audit hook proves nothing was imported, executed, opened or spawned while decoding;
- snapshots of copyreg, functools, builtins, operator and the allowed test classes (their
  attributes and __dict__) prove nothing was mutated;
- tracemalloc bounds the memory of the max_bytes cases.

The same corpus runs through the Rust API (crates/cellar-pickle/tests/corpus.rs) and the CLI
(crates/cellar-cli/tests/pickle_corpus.rs).
"""

from __future__ import annotations

import builtins
import copyreg
import io
import functools
import operator
import sys
import tracemalloc
import types
from pathlib import Path

import pytest

import cellar.pickle as cpickle

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "pickle"
sys.path.insert(0, str(CORPUS))
import corpus_classes  # noqa: E402

MODES = ("default", "inert", "allow")


def expected() -> list[tuple[str, str, str, str]]:
    out = []
    for line in (CORPUS / "expected.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, mode, outcome, rust, _comment = line.split("\t", 4)
        out.append((name, mode, outcome, rust))
    return out


CASES = expected()

_EVENTS: list = []
_ACTIVE = [False]


_DATA: dict = {}


class _SuperUnpickler(cpickle.Unpickler):
    """An override that only defers to the base find_class: the policy as a lookup must give
    every corpus case the outcome the decoder's own name resolution gives."""

    calls = 0

    def find_class(self, module: str, name: str):  # type: ignore[override]
        _SuperUnpickler.calls += 1
        return super().find_class(module, name)


def load(name: str, mode: str, audit: bool = False, via_find_class: bool = False) -> str:
    data = _DATA.get(name)
    if data is None:
        data = _DATA[name] = (CORPUS / f"{name}.pkl").read_bytes()
    kw: dict = {}
    if mode == "inert":
        kw["inert"] = True
    elif mode == "allow":
        kw["allow"] = corpus_classes.ALLOWED
    if name.startswith("maxbytes_"):
        kw["max_bytes"] = 1024
    _ACTIVE[0] = audit
    try:
        if via_find_class:
            _SuperUnpickler(io.BytesIO(data), **kw).load()
        else:
            cpickle.loads(data, **kw)
    except Exception as e:  # noqa: BLE001 - the outcome is the exception's type
        if via_find_class and isinstance(e, cpickle.UnpicklingError):
            # The base find_class's refusals are UnpicklingError subclasses that are also
            # ModuleNotFoundError / AttributeError, as the stdlib's find_class raises.
            return "UnpicklingError"
        return type(e).__name__
    finally:
        _ACTIVE[0] = False
    return "ok"


# ---- snapshots ----------------------------------------------------------------------------


def _attrs(obj: object) -> tuple:
    """Identity of everything reachable in one step from a module member: its own attributes
    and, for functions, the fields pickle escapes have rewritten (__name__, __defaults__...)."""
    d = getattr(obj, "__dict__", None)
    own = tuple(sorted((k, id(v)) for k, v in dict(d).items())) if d is not None else ()
    # Names by value (builtins compute them on access), the rest by identity.
    extra = tuple((a, getattr(obj, a, None)) for a in ("__name__", "__qualname__", "__module__", "__doc__"))
    extra += tuple((a, id(getattr(obj, a, None))) for a in ("__defaults__", "__kwdefaults__", "__code__"))
    return own + extra


def snapshot() -> dict:
    snap: dict = {}
    for mod in (copyreg, functools, builtins, operator, corpus_classes):
        members = dict(vars(mod))
        snap[mod.__name__] = tuple(sorted((k, id(v)) for k, v in members.items()))
        for k, v in members.items():
            if isinstance(v, (type, types.FunctionType, types.BuiltinFunctionType, functools.partial)):
                snap[f"{mod.__name__}.{k}"] = _attrs(v)
    for cls in (corpus_classes.Point, corpus_classes.Slotted, corpus_classes.WithSetstate, corpus_classes.Outer, corpus_classes.Outer.Inner):
        snap[f"class {cls.__qualname__}"] = tuple(sorted((k, id(v)) for k, v in vars(cls).items()))
    snap["copyreg tables"] = (
        tuple(sorted((id(k), id(v)) for k, v in copyreg.dispatch_table.items())),
        tuple(sorted(copyreg._extension_registry.items())),
        tuple(sorted(copyreg._inverted_registry.items())),
    )
    return snap


# ---- the audit hook -----------------------------------------------------------------------

# Events that say something was imported, run, opened or reached outside the process.
_FORBIDDEN_PREFIXES = (
    "import", "exec", "compile", "os.", "subprocess.", "open", "socket.", "ctypes.", "shutil.",
    "pty.", "webbrowser.", "marshal.", "pickle.find_class", "builtins.input", "code.__new__",
    "function.__new__", "sys._getframe", "object.__setattr__", "object.__delattr__",
    "cpython.run_", "urllib.", "glob.", "sqlite3.",
)


def _hook(event: str, args: tuple) -> None:
    if _ACTIVE[0] and event.startswith(_FORBIDDEN_PREFIXES):
        _EVENTS.append((event, repr(args)[:200]))


sys.addaudithook(_hook)


def test_corpus_outcomes_no_calls_no_mutation() -> None:
    assert len(CASES) >= 3000
    # Warm up: cellar's own first-use imports (its tables of stdlib objects) are not the
    # corpus's doing.
    for mode in MODES:
        load("valid_mixed_p2", mode)
        load("point_ok_p2", mode)
    before = snapshot()
    corpus_classes.SETSTATE_CALLS.clear()
    bad = []
    for name, mode, outcome, _rust in CASES:
        got = load(name, mode, audit=True)
        if got != outcome:
            bad.append((name, mode, outcome, got))
    assert not bad, f"{len(bad)} mismatches: {bad[:20]}"
    assert not _EVENTS, _EVENTS[:10]
    after = snapshot()
    changed = [k for k in before if before[k] != after.get(k)]
    assert not changed, changed
    # Only the allowed class's own __setstate__ ran, with the states the pickles gave it.
    assert all(isinstance(s, dict) for s in corpus_classes.SETSTATE_CALLS)


def test_corpus_through_a_find_class_override_that_defers_to_the_base() -> None:
    """Unpickler.find_class overridden (asked for every global) and deferring to the base:
    the same outcome for every case and mode, nothing imported or called, nothing mutated."""
    for mode in MODES:
        load("valid_mixed_p2", mode, via_find_class=True)
        load("point_ok_p2", mode, via_find_class=True)
    before = snapshot()
    _SuperUnpickler.calls = 0
    bad = []
    for name, mode, outcome, _rust in CASES:
        got = load(name, mode, audit=True, via_find_class=True)
        if got != outcome:
            bad.append((name, mode, outcome, got))
    assert not bad, f"{len(bad)} mismatches: {bad[:20]}"
    assert _SuperUnpickler.calls > 1000  # the override was really asked
    assert not _EVENTS, _EVENTS[:10]
    after = snapshot()
    changed = [k for k in before if before[k] != after.get(k)]
    assert not changed, changed


@pytest.mark.parametrize("name", sorted({c[0] for c in CASES if c[0].startswith("maxbytes_")}))
@pytest.mark.parametrize("mode", MODES)
def test_max_bytes_bounds_memory(name: str, mode: str) -> None:
    load(name, mode)  # warm-up
    tracemalloc.start()
    try:
        load(name, mode)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # max_bytes=1024, plus the decoder's fixed overhead and the error's traceback.
    assert peak < 256 * 1024, peak


def test_every_default_global_is_known_to_globals_of() -> None:
    """The corpus's table of default globals is cellar_pickle::policy's (globals_of reports
    each as allowed by default, and a name outside it as needing allow=)."""
    sys.path.insert(0, str(CORPUS))
    import make_corpus

    for m, n in make_corpus.DEFAULT_GLOBALS:
        g = cpickle.globals_of(b"\x80\x02c" + m.encode() + b"\n" + n.encode() + b"\n.")
        assert g[0].default is not None, (m, n)
    assert cpickle.globals_of(b"\x80\x02cbuiltins\nbool\n.")[0].default is None


def test_globals_of_and_refusal_messages() -> None:
    import pickle

    data = pickle.dumps(corpus_classes.Point(1, 2), 2)
    refs = cpickle.globals_of(data)
    assert [(r.module, r.name, r.need) for r in refs] == [("corpus_classes", "Point", "class")]
    assert refs[0].allow_form == ("corpus_classes", "Point", "Point")
    with pytest.raises(pickle.UnpicklingError, match=r"is a class the pickle instantiates.*\('corpus_classes', 'Point', obj\)"):
        cpickle.loads(data)
    evil = b"cos\nsystem\n(S'id'\ntR."
    assert [(r.module, r.name, r.need) for r in cpickle.globals_of(evil)] == [("os", "system", "function")]
    with pytest.raises(pickle.UnpicklingError, match="is a function"):
        cpickle.loads(evil)
    # Everything a pandas-like pickle needs, in one call (protocol 0-3 nested names included).
    p0 = pickle.dumps(corpus_classes.Outer.Inner(), 0)
    names = {(r.module, r.name) for r in cpickle.globals_of(p0)}
    assert ("corpus_classes", "Outer.Inner") in names or ("corpus_classes", "Outer") in names
