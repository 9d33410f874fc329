"""Generates tests/corpus/marshal/: hostile and unusual marshal inputs, one file per case, and
expected.tsv with `<name>\t<outcome>\t<comment>`.

outcome is `ok` or the exception type name CPython's marshal raises (`ValueError`, `EOFError`,
`TypeError`, `UnicodeDecodeError`), computed by running CPython's own marshal.loads on each case
in a child process (so a CPython crash cannot stop the generator). Where CPython crashes, hangs
or exhausts memory, or where cellar deliberately differs (docs/marshal.md), the case carries its
expected outcome explicitly and the comment says why. When the Python package and the Rust
`Value` tree differ (a cycle through a list, dict or set; a value deeper than the limit through
back-references), the outcome is written `python|rust` (e.g. `ok|ValueError`).

Names starting with `nocode_` are loaded with allow_code=False (`--no-code` in the CLI).

Usage: python3 scripts/gen/marshal_corpus.py   (run with CPython 3.11; rewrites the directory)
"""

from __future__ import annotations

import marshal
import os
import shutil
import struct
import subprocess
import sys

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "corpus", "marshal")

CHILD = r"""
import marshal, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
sys.setrecursionlimit(100000)
data = sys.stdin.buffer.read()
allow = sys.argv[1] == "1"
try:
    if allow:
        marshal.loads(data)
    else:
        marshal.loads(data, allow_code=False)
    print("ok")
except Exception as e:
    print(type(e).__name__)
"""

cases: list[tuple[str, bytes, str | None, str]] = []


def add(name: str, data: bytes, comment: str, expect: str | None = None) -> None:
    """`expect` overrides CPython's outcome (it crashes there, or cellar differs on purpose)."""
    cases.append((name, data, expect, comment))


def i32(n: int) -> bytes:
    return struct.pack("<i", n)


def cpython_outcome(data: bytes, allow_code: bool) -> str:
    try:
        r = subprocess.run(
            [sys.executable, "-c", CHILD, "1" if allow_code else "0"],
            input=data,
            capture_output=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    if r.returncode != 0:
        return f"crash({r.returncode})"
    return r.stdout.decode().strip()


def code_object() -> object:
    src = "def f(a, b=2, *c, d, **e):\n    x = [y for y in c]\n    def g():\n        return a + x\n    return g\n"
    return compile(src, "<corpus>", "exec")


# 1. Valid streams, every version.
VALUES: dict[str, object] = {
    "scalars": [None, True, False, ..., StopIteration, 0, -1, 2**31, -(2**63), 2**200, -(3**90)],
    "floats": [0.0, -0.0, 1.5, float("inf"), float("-inf"), 1e308, 5e-324, complex(1, -2)],
    "strings": ["", "ascii", "é", "€uro", "\U0001f600", "\ud800lone", "x" * 300, b"bytes", b""],
    "containers": ((), (1,), [], [[]], {}, {"k": (1, 2)}, {1: 2, (1, 2): [3]}, set(), {1, "a"},
                   frozenset({(1, 2), 3.5})),
    "nested": {"a": [{"b": ({"c": frozenset({1})},)}]},
    "shared": (lambda s: [s, s, (s, s)])(["shared"]),
}
for vname, value in VALUES.items():
    for version in range(5):
        try:
            data = marshal.dumps(value, version)
        except ValueError:
            continue
        add(f"valid_{vname}_v{version}", data, f"CPython's own dumps of {vname} at version {version}")
code_bytes = marshal.dumps(code_object())
add("valid_code", code_bytes, "a module code object with closures and a comprehension")
add("nocode_code", code_bytes, "the same code object with allow_code=False",
    "ValueError")
add("nocode_code_in_list", b"[\x01\x00\x00\x00" + code_bytes, "code nested in a list, allow_code=False",
    "ValueError")
add("valid_slice_v5", b":NNN", "slice(None, None, None) (version 5)", "ok")
add("valid_slice_ints_v5", b":\xe9\x01\x00\x00\x00i\x05\x00\x00\x00N", "slice(1, 5, None)", "ok")

# 2. Truncation at every byte of valid streams.
for vname in ("scalars", "strings", "containers", "shared"):
    data = marshal.dumps(VALUES[vname], 4)
    for cut in range(len(data)):
        add(f"trunc_{vname}_{cut:04d}", data[:cut], f"{vname} (version 4) cut after {cut} bytes")
for cut in range(0, len(code_bytes), 7):
    add(f"trunc_code_{cut:04d}", code_bytes[:cut], f"code object cut after {cut} bytes")

# 3. Huge and negative lengths for every length field.
for code, what in ((b"(", "tuple"), (b"[", "list"), (b"<", "set"), (b">", "frozenset"),
                   (b"s", "bytes"), (b"u", "str"), (b"t", "interned str"), (b"a", "ascii str"),
                   (b"A", "interned ascii str"), (b"l", "long digit count")):
    tag = what.replace(" ", "_")
    for n, label in ((0x7FFFFFFF, "max"), (0x40000000, "1g"), (-1, "neg1"), (-(2**31), "min")):
        # CPython allocates what huge claims say (MemoryError); cellar first checks the claim
        # against the bytes left: EOFError "marshal data too short".
        expect = "EOFError" if n > 0 else None
        add(f"len_{tag}_{label}", code + i32(n) + b"N" * 8, f"{what} claiming {n} items/bytes", expect)
add("len_small_tuple_255", b")\xff" + b"N" * 10, "small tuple claiming 255 items, 10 present")
add("len_short_ascii_255", b"z\xff" + b"a" * 10, "short ascii claiming 255 bytes, 10 present")
add("len_text_float_255", b"f\xff1.5", "text float claiming 255 bytes")
add("len_claim_then_bad_code", b")\xff\xff\xff\xff:\xff\n",
    "a claim beyond the input, then an unknown code: ValueError, not EOFError (found by atheris)")
add("len_nested_claims", b"(\x88\x13\x00\x00" * 1999 + b"N", "1999 nested tuples each claiming 5000 items")
add("len_nested_list_claims", b"[\x88\x13\x00\x00" * 1999 + b"N", "1999 nested lists each claiming 5000 items")

# 4. Deep nesting.
add("deep_tuple_2p20", b")\x01" * (1 << 20) + b"N", "2^20 nested small tuples")
add("deep_list_2p16", b"[\x01\x00\x00\x00" * (1 << 16) + b"N", "2^16 nested lists")
add("deep_dict_2p16", b"{N" * (1 << 16) + b"N" + b"0" * (1 << 16), "2^16 nested dicts")
add("deep_set_2p16", b">\x01\x00\x00\x00" * (1 << 16) + b"N", "2^16 nested frozensets")
add("deep_tuple_1999", b")\x01" * 1999 + b"N", "1999 nested tuples + a leaf: the most CPython accepts")
add("deep_tuple_2000", b")\x01" * 2000 + b"N", "2000 nested tuples + a leaf: one too many")
add("deep_code_consts", b"\xe3" + b"\x00" * 20 + b"s\x00\x00\x00\x00" + b")\x01" * 3000 + b"N",
    "code object whose consts nest 3000 deep")

# 5. Nesting through back-references: shallow streams that build deep values.
def ref_chain(n: int) -> bytes:
    parts = [b"\xa9\x00"]  # flagged empty tuple = ref 0
    for i in range(1, n):
        parts.append(b"\xa9\x01r" + i32(i - 1))
    return b"".join(parts)


add("refdeep_chain_list_3000", b"[" + i32(3000) + ref_chain(3000),
    "a list of 3000 tuples, each holding the previous one: the last is 3000 deep",
    "ok|ValueError")
add("refdeep_chain_key_3000",
    b"[" + i32(2) + b"[" + i32(3000) + ref_chain(3000) + b"{r" + i32(2999) + b"N0",
    "the 3000-deep tuple used as a dict key (hashing would recurse 3000 levels)", "ValueError")
add("refdeep_chain_set_3000",
    b"[" + i32(2) + b"[" + i32(3000) + ref_chain(3000) + b"<\x01\x00\x00\x00r" + i32(2999),
    "the 3000-deep tuple as a set member", "ValueError")
add("refdeep_chain_1000_key",
    b"[" + i32(2) + b"[" + i32(1000) + ref_chain(1000) + b"{r" + i32(999) + b"N0",
    "a 1000-deep tuple as a dict key: within the limit")

# 6. Self-references to containers still being read.
add("self_tuple", b"\xa9\x01r\x00\x00\x00\x00", "a tuple containing itself (hash would recurse forever)",
    "ValueError")
add("self_tuple_big", b"\xa8\x01\x00\x00\x00r\x00\x00\x00\x00", "same, 4-byte count", "ValueError")
add("self_tuple_via_list", b"\xa9\x01[\x01\x00\x00\x00r\x00\x00\x00\x00",
    "a tuple containing a list containing the tuple", "ValueError")
add("self_list", b"\xdb\x01\x00\x00\x00r\x00\x00\x00\x00", "a list containing itself (CPython allows it)",
    "ok|ValueError")
add("self_dict", b"\xfbNr\x00\x00\x00\x000", "a dict containing itself as a value", "ok|ValueError")
add("self_set_member_list", b"\xbc\x01\x00\x00\x00[\x01\x00\x00\x00r\x00\x00\x00\x00",
    "a set whose member is a list containing the set (unhashable list)", "TypeError|ValueError")
add("self_frozenset", b"\xbe\x01\x00\x00\x00r\x00\x00\x00\x00", "a frozenset containing itself")
add("self_code", b"\xe3" + b"\x00" * 20 + b"r\x00\x00\x00\x00", "a code object containing itself")
add("self_slice", b"\xbar\x00\x00\x00\x00NN", "a slice containing itself")

# 7. Self-containing keys and members.
add("selfkey_dict", b"\xa8\x01\x00\x00\x00{r\x00\x00\x00\x00N0",
    "a tuple whose dict is keyed by the tuple itself (CPython crashes)", "ValueError")
add("selfkey_set", b"\xa9\x01<\x01\x00\x00\x00r\x00\x00\x00\x00", "a tuple in a set inside itself",
    "ValueError")
add("selfkey_frozenset", b"\xa9\x01>\x01\x00\x00\x00r\x00\x00\x00\x00",
    "a tuple in a frozenset inside itself", "ValueError")
add("selfkey_nested", b"\xa9\x01)\x01{)\x01r\x00\x00\x00\x00N0",
    "a tuple reached through two tuples, as a dict key", "ValueError")
add("selfkey_list_member", b"<\x01\x00\x00\x00\xdb\x01\x00\x00\x00r\x00\x00\x00\x00",
    "a self-containing list as a set member (unhashable)", "TypeError|ValueError")

# 8. Invalid references.
for n, label in ((0, "0_empty"), (1, "1_empty"), (-1, "neg1"), (0x7FFFFFFF, "max"), (-(2**31), "min")):
    add(f"ref_{label}", b"r" + i32(n), f"reference {n} with an empty table")
add("ref_past_end", b"[\x02\x00\x00\x00\xe9\x01\x00\x00\x00r\x01\x00\x00\x00", "reference one past the table")
add("ref_truncated", b"r\x00\x00", "reference index cut short")
add("ref_unflagged", b"[\x02\x00\x00\x00i\x01\x00\x00\x00r\x00\x00\x00\x00",
    "reference to an object that was not flagged")

# 9. Bad longs.
add("long_digit_8000", b"l\x01\x00\x00\x00\x00\x80", "digit 0x8000")
add("long_digit_ffff", b"l\x02\x00\x00\x00\x01\x00\xff\xff", "digit 0xffff")
add("long_zero_top", b"l\x02\x00\x00\x00\x01\x00\x00\x00", "unnormalized (top digit zero)")
add("long_neg_zero_top", b"l\xfe\xff\xff\xff\x01\x00\x00\x00", "negative, top digit zero")
add("long_short", b"l\x03\x00\x00\x00\x01\x00", "3 digits claimed, 1 present")
add("long_big_ok", b"l\x40\x00\x00\x00" + b"\xff\x7f" * 64, "a 960-bit long")
add("int64_I", b"I" + struct.pack("<q", -(2**62)), "the read-only 'I' code")
add("float_text_bad", b"f\x03abc", "text float that is not a number")
add("float_text_nul", b"f\x041\x002", "text float with a NUL inside (CPython stops at it)")
add("float_text_empty", b"f\x00", "empty text float")
add("complex_text_bad", b"x\x011\x01z", "text complex with a bad imaginary part")

# 10. Bad UTF-8 (surrogates are allowed: surrogatepass).
for raw, label in ((b"\xff", "ff"), (b"\xc0\xaf", "overlong"), (b"\xe2\x82", "cut3"),
                   (b"\xf4\x90\x80\x80", "above_10ffff"), (b"\x80", "lone_continuation"),
                   (b"\xed\xa0\x80", "surrogate_ok"), (b"a\xedb", "bad_mid")):
    add(f"utf8_u_{label}", b"u" + i32(len(raw)) + raw, f"u str {raw!r}")
    add(f"utf8_t_{label}", b"t" + i32(len(raw)) + raw, f"t str {raw!r}")
add("latin1_z_e9", b"z\x01\xe9", "a/z payloads are Latin-1, unchecked: 'é'")

# 11. NULL in every position.
add("null_top", b"0", "NULL as the object")
add("null_tuple", b")\x010", "NULL as a tuple item")
add("null_tuple_big", b"(\x02\x00\x00\x00N0", "NULL as the second item of a tuple")
add("null_list", b"[\x01\x00\x00\x000", "NULL as a list item")
add("null_set", b"<\x01\x00\x00\x000", "NULL as a set item")
add("null_frozenset", b">\x01\x00\x00\x000", "NULL as a frozenset item")
add("null_dict_key", b"{0", "NULL as a dict key: ends the dict")
add("null_dict_value", b"{N0", "NULL as a dict value: ends the dict (the key is dropped)")
add("null_slice", b":N0N", "NULL as a slice part", "TypeError")
for i in range(10):
    # Code object: 5 ints then fields; field i replaced by NULL.
    fields = [b"s\x00\x00\x00\x00", b")\x00", b")\x00", b")\x00", b"s\x00\x00\x00\x00",
              b"z\x00", b"z\x00", b"z\x00", b"s\x00\x00\x00\x00", b"s\x00\x00\x00\x00"]
    fields[i] = b"0"
    body = b"".join(fields[:8]) + i32(1) + b"".join(fields[8:])
    add(f"null_code_field{i}", b"c" + b"\x00" * 20 + body, f"NULL as code field {i}")
minimal_code = (b"c" + b"\x00" * 20 + b"s\x00\x00\x00\x00)\x00)\x00)\x00s\x00\x00\x00\x00z\x00z\x00z\x00"
                + i32(1) + b"s\x00\x00\x00\x00s\x00\x00\x00\x00")
add("code_minimal", minimal_code, "the smallest valid code object")
add("code_bad_types", b"c" + b"\x00" * 20 + b"N" * 8 + i32(1) + b"NN", "code object fields of the wrong types",
    "ValueError")
add("code_bad_counts", b"c" + i32(0) + i32(5) + b"\x00" * 12 + minimal_code[21:],
    "code object with posonlyargcount > argcount", "ValueError")

# 12. Unknown type codes (every byte value that is not a code, with and without FLAG_REF).
KNOWN = set(b"0NFTS.iIfgxylstr([{c<>u)aAzZ:")
for b in range(256):
    if (b & 0x7F) not in KNOWN:
        add(f"unknown_{b:02x}", bytes([b]) + b"\x00" * 8, f"unknown type code {b:#04x}")

# 13. Other.
add("empty", b"", "no input at all")
add("dict_unhashable_key", b"{[\x00\x00\x00\x00N0", "a list as a dict key")
add("set_unhashable", b"<\x01\x00\x00\x00[\x00\x00\x00\x00", "a list as a set item")
add("frozenset_dict_item", b">\x01\x00\x00\x00{0", "a dict as a frozenset item")
add("trailing_bytes", b"N" + b"garbage", "trailing bytes are ignored")
add("slice_v5_nested", b":" + b":" * 1000 + b"NNN" + b"NN" * 1000, "1001 nested slices", "ok")

# Containers whose items are leaves are read without a frame until an item that is not a leaf
# arrives (read.rs, `inline`): every way out of that state.
add("inline_dict_self_after_leaves", b"\xfbz\x01ai\x01\x00\x00\x00z\x04selfr" + i32(0) + b"0",
    "a dict that refers to itself after leaf items", "ok|ValueError")
add("inline_list_self_after_leaves", b"\xdb" + i32(3) + b"NNr" + i32(0),
    "a list that refers to itself after leaf items", "ok|ValueError")
add("inline_list_refers_to_parent_dict", b"\xfbz\x01l[" + i32(2) + b"Nr" + i32(0) + b"0",
    "a list read one level down refers to the dict holding it", "ok|ValueError")
add("inline_tuple_key_one_level_down", b"{)\x02NNN0", "a tuple of leaves as a dict key")
add("inline_null_after_leaves", b"(" + i32(3) + b"NN0", "NULL as the third item of a tuple of leaves")
add("inline_eof_in_dict", b"{NNN", "the input ends inside a dict of leaves")
add("inline_unknown_code_after_leaves", b"[" + i32(3) + b"NN\x01", "an unknown type code after leaf items")
add("inline_ref_invalid_after_leaves", b"[" + i32(2) + b"Nr" + i32(7), "a reference past the table after a leaf")
for d in (1997, 1998):
    add(f"inline_depth_{d}_dict_tuple", (b"[" + i32(1)) * d + b"{N)\x02NN0",
        f"{d} nested lists around a dict whose value is a tuple of leaves")
for d in (1998, 1999):
    add(f"inline_depth_{d}_dict_leaves", (b"[" + i32(1)) * d + b"{NN0",
        f"{d} nested lists around a dict of leaves")


def main() -> None:
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    rows = []
    for name, data, expect, comment in cases:
        allow = not name.startswith("nocode_")
        outcome = cpython_outcome(data, allow)
        if expect is not None:
            if outcome != expect.split("|")[0]:
                comment += f" [CPython 3.11: {outcome}]"
            outcome = expect
        elif outcome not in ("ok", "ValueError", "EOFError", "TypeError", "UnicodeDecodeError"):
            raise SystemExit(f"{name}: CPython gives {outcome}; give an explicit expectation")
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(data)
        rows.append(f"{name}\t{outcome}\t{comment}")
    with open(os.path.join(OUT, "expected.tsv"), "w") as f:
        f.write("# name\toutcome (python|rust when they differ)\tcomment (generated by scripts/gen/marshal_corpus.py)\n")
        f.write("\n".join(rows) + "\n")
    print(f"{len(rows)} cases written to {OUT}")


if __name__ == "__main__":
    main()
