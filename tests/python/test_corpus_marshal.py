"""The shared hostile marshal corpus (tests/corpus/marshal/, scripts/gen/marshal_corpus.py)
through cellar.marshal.loads: every case decodes or raises the expected exception type (the
Python column of expected.tsv), nothing is imported or executed (an audit hook records every
event raised during the loads), and memory stays proportional to the input (tracemalloc peak).
The same files run through the Rust API and the CLI."""

from __future__ import annotations

import os
import sys
import tracemalloc

import pytest

import cellar.marshal as r_marshal

CORPUS = os.path.join(os.path.dirname(__file__), "..", "corpus", "marshal")


def load_cases() -> list[tuple[str, str, str]]:
    rows = []
    with open(os.path.join(CORPUS, "expected.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, outcome, comment = line.rstrip("\n").split("\t", 2)
            rows.append((name, outcome.split("|")[0], comment))
    return rows


EVENTS: list[str] = []
RECORDING = [False]


def _hook(event: str, args: object) -> None:
    if RECORDING[0]:
        EVENTS.append(event)


sys.addaudithook(_hook)


def test_corpus() -> None:
    cases = load_cases()
    assert len(cases) > 1000
    failures = []
    for name, expected, comment in cases:
        with open(os.path.join(CORPUS, name + ".bin"), "rb") as f:
            data = f.read()
        allow = not name.startswith("nocode_")
        EVENTS.clear()
        tracemalloc.start()
        RECORDING[0] = True
        try:
            r_marshal.loads(data, allow_code=allow)
            got = "ok"
        except (ValueError, EOFError, TypeError) as e:  # UnicodeDecodeError is a ValueError
            got = type(e).__name__
        finally:
            RECORDING[0] = False
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        if got != expected:
            failures.append(f"{name}: expected {expected}, got {got} ({comment})")
        # Only cellar's own marshal.loads event: nothing imported, opened, compiled or run.
        others = [e for e in EVENTS if e != "marshal.loads"]
        if others:
            failures.append(f"{name}: audit events {others}")
        # Python objects allocated while decoding: proportional to the input.
        bound = 64 * len(data) + (1 << 20)
        if peak > bound:
            failures.append(f"{name}: peak {peak} bytes for {len(data)} input bytes")
    assert not failures, "\n".join(failures[:50])


def test_corpus_through_load_from_a_file(tmp_path: object) -> None:
    """marshal.load (a file read through readinto) gives the same outcomes."""
    import io

    failures = []
    for name, expected, _ in load_cases():
        with open(os.path.join(CORPUS, name + ".bin"), "rb") as f:
            data = f.read()
        if len(data) > 100_000:
            continue
        try:
            r_marshal.load(io.BytesIO(data), allow_code=not name.startswith("nocode_"))
            got = "ok"
        except (ValueError, EOFError, TypeError) as e:
            got = type(e).__name__
        if got != expected:
            failures.append(f"{name}: expected {expected}, got {got}")
    assert not failures, "\n".join(failures[:50])


@pytest.mark.parametrize("name", ["selfkey_dict", "selfkey_set", "selfkey_frozenset", "self_tuple"])
def test_self_containing_tuple_is_a_clear_error(name: str) -> None:
    with open(os.path.join(CORPUS, name + ".bin"), "rb") as f:
        data = f.read()
    with pytest.raises(ValueError, match="a tuple cannot contain itself"):
        r_marshal.loads(data)
