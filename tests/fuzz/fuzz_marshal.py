"""atheris harness for the Python entry points of cellar.marshal.

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_marshal.py -runs=20000          # bounded
    .venv/bin/python tests/fuzz/fuzz_marshal.py -max_total_time=300  # a few minutes

Every input must either decode or raise ValueError / EOFError / TypeError (UnicodeDecodeError is
a ValueError): never crash, hang, or raise anything else. What decodes is re-dumped (as CPython
can) and must load back to a value that dumps to the same bytes; the same bytes through
marshal.load (a file read through readinto) must give the same outcome. Seeds: the corpus in
tests/corpus/marshal/.
"""

from __future__ import annotations

import io
import os
import sys

import atheris

with atheris.instrument_imports():
    import cellar.marshal as m

OK_ERRORS = (ValueError, EOFError, TypeError)


def outcome(fn, arg, allow_code: bool) -> object:
    try:
        return fn(arg, allow_code=allow_code)
    except OK_ERRORS as e:
        return type(e)


SEEDS: list[bytes] = []


def mutate(data: bytes) -> bytes:
    """The extension is not instrumented, so libFuzzer gets no coverage from it: besides raw
    inputs, splice its bytes into a corpus seed so the structure stays mostly valid."""
    if not SEEDS or len(data) < 3 or data[0] & 1:
        return data[1:] if data else data
    seed = bytearray(SEEDS[int.from_bytes(data[1:3], "little") % len(SEEDS)])
    for i in range(3, len(data) - 2, 3):
        if not seed:
            break
        pos = data[i] * 257 % len(seed)
        op = data[i + 1] % 4
        if op == 0:
            seed[pos] = data[i + 2]
        elif op == 1:
            seed.insert(pos, data[i + 2])
        elif op == 2:
            del seed[pos]
        else:
            del seed[pos:]
    return bytes(seed)


def test_one(raw: bytes) -> None:
    data = mutate(raw)
    v = outcome(m.loads, data, True)
    f = outcome(m.load, io.BytesIO(data), True)
    nocode = outcome(m.loads, data, False)
    if isinstance(v, type):
        assert isinstance(f, type) and f is v, (v, f)
        assert isinstance(nocode, type), nocode
        return
    assert not isinstance(f, type), f
    try:
        out = m.dumps(v, 5)
    except ValueError:
        return  # e.g. a cycle through a list: "object too deeply nested to marshal"
    again = m.dumps(m.loads(out), 5)
    assert isinstance(again, bytes)


def main() -> None:
    argv = list(sys.argv)
    corpus = os.path.join(os.path.dirname(__file__), "..", "corpus", "marshal")
    if os.path.isdir(corpus) and not any(a.startswith("-seed_inputs") for a in argv):
        seeds = [os.path.join(corpus, n) for n in sorted(os.listdir(corpus))
                 if n.endswith(".bin") and os.path.getsize(os.path.join(corpus, n)) < 4096]
        argv.append("-seed_inputs=" + ",".join(seeds[:400]))
        for path in seeds:
            with open(path, "rb") as f:
                SEEDS.append(f.read())
    atheris.Setup(argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
