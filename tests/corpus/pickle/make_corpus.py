"""Writes the hostile pickle corpus: tests/corpus/pickle/<name>.pkl and expected.tsv.

    python3 tests/corpus/pickle/make_corpus.py

Every case is built here byte by byte (our own equivalents of the shapes fickling and picklescan
test, and of every escape in issue 12); nothing is downloaded. expected.tsv has one line per case
and mode:

    <name> TAB <mode> TAB <outcome> TAB <rust> TAB <comment>

- mode: ``default`` (no allow=), ``inert`` (inert=True; also what ``cellar pickle show`` uses),
  ``allow`` (allow=corpus_classes.ALLOWED; the Rust face allows the same names in its Registry).
- outcome: ``ok`` or the exception type name (UnpicklingError, EOFError, ValueError, TypeError,
  UnicodeDecodeError) for cellar.pickle.loads (the Python face).
- rust: ``=`` when the Rust API and the CLI agree with the Python face, or their outcome where
  the value model cannot follow (documented in the comment: the Rust Value has no cycles, and an
  allowed class is kept as inert data there, so its BUILD state is not interpreted).
- Cases named ``maxbytes_*`` run with max_bytes=1024 (and the Python test bounds their memory).

Truncation cases take their expected outcome from CPython's own pickle.loads on the same bytes
(only basic values: CPython is safe to run on them).
"""

from __future__ import annotations

import os
import pickle
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import corpus_classes  # noqa: E402
from corpus_classes import Outer, Point, Slotted, WithSetstate, make_point  # noqa: E402

UE = "UnpicklingError"
MODES = ("default", "inert", "allow")


def G(m: str, n: str) -> bytes:
    return b"c" + m.encode() + b"\n" + n.encode() + b"\n"


def U(s: str) -> bytes:
    b = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(b)) + b


def SU(s: str) -> bytes:
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def SG(m: str, n: str) -> bytes:
    return SU(m) + SU(n) + b"\x93"


P2 = b"\x80\x02"
P4 = b"\x80\x04"
P5 = b"\x80\x05"
CC = "corpus_classes"

cases: list[tuple[str, bytes, dict[str, str], dict[str, str], str]] = []


def add(name: str, data: bytes, default: str, inert: str, allow: str, comment: str, rust: dict | None = None) -> None:
    cases.append((name, data, {"default": default, "inert": inert, "allow": allow}, rust or {}, comment))


def add_all(name: str, data: bytes, outcome: str, comment: str, rust: dict | None = None) -> None:
    add(name, data, outcome, outcome, outcome, comment, rust)


def call(f: bytes, *args: bytes) -> bytes:
    return f + b"(" + b"".join(args) + b"tR"


# ---- issue 12: BUILD on pattern markers / globals mutates the running process ------------
add_all(
    "build_newobj_setstate_bytearray",
    P2 + G("copyreg", "__newobj__") + b"}" + U("__setstate__") + G("builtins", "bytearray") + b"sb" + b"J\x00\x00\x00\x40b.",
    UE,
    "issue 12: __setstate__=bytearray planted on copyreg.__newobj__, then bytearray(1 GiB)",
)
add_all(
    "build_rename_reconstructor",
    G("copyreg", "_reconstructor") + b"(dV__name__\nVx\nsb.",
    UE,
    "issue 12: renames copyreg._reconstructor for the rest of the process",
)
# cellar_pickle::policy::DEFAULT_GLOBALS (test_pickle_corpus.py checks the two agree).
DEFAULT_GLOBALS = [
    ("builtins", "complex"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("builtins", "bytes"), ("_codecs", "encode"), ("builtins", "slice"), ("builtins", "range"),
    ("builtins", "Ellipsis"), ("builtins", "StopIteration"), ("builtins", "NotImplemented"),
    ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("copyreg", "__newobj_ex__"),
    ("builtins", "getattr"), ("functools", "partial"), ("builtins", "object"), ("builtins", "list"),
    ("builtins", "dict"), ("builtins", "int"), ("builtins", "float"), ("builtins", "str"),
    ("builtins", "tuple"),
]

for m, n in DEFAULT_GLOBALS:
    add_all(f"build_on_{m.strip('_')}_{n.strip('_')}", P2 + G(m, n) + b"}" + U("x") + b"K\x01sb.", UE, f"BUILD on the default global {m}.{n}")
    add_all(f"build_p0_on_{m.strip('_')}_{n.strip('_')}", G(m, n) + b"(dVx\nI1\nsb.", UE, f"BUILD (protocol 0) on {m}.{n}")
for cls in ("Point", "Slotted", "WithSetstate", "make_point", "Outer", "Outer.Inner"):
    add_all(f"build_on_allowed_{cls.replace('.', '_')}", P2 + G(CC, cls) + b"}" + U("x") + b"K\x01sb.", UE, f"BUILD on the class/function {cls} itself")
add_all(
    "build_setstate_on_allowed_class",
    P2 + G(CC, "Point") + b"}" + U("__setstate__") + G("builtins", "getattr") + b"sb.",
    UE,
    "BUILD planting __setstate__ on an allowed class",
)
add(
    "setstate_injection_getattr",
    P2 + G(CC, "Point") + b")\x81" + b"}" + U("__setstate__") + G("builtins", "getattr") + b"sb" + b"}" + U("y") + b"K\x02sb.",
    UE, "ok", UE,
    "instance state plants __setstate__=getattr; never called; the marker stays in the instance __dict__ "
    "and is refused as a value (the decoder core refuses a marker as soon as it is stored)",
)
add(
    "setstate_injection_bytearray",
    P2 + G(CC, "Point") + b")\x81" + b"}" + U("__setstate__") + G("builtins", "bytearray") + b"sb" + b"J\x00\x00\x00\x40b.",
    UE, "ok", UE,
    "__setstate__=bytearray in instance state must not be called with 1 GiB (the basic-type global as a "
    "stored value is refused)",
)
add(
    "setstate_injection_reconstructor",
    P2 + G(CC, "Point") + b")\x81" + b"}" + U("__setstate__") + G("copyreg", "_reconstructor") + b"sb" + b"(" + G(CC, "Point") + G("builtins", "object") + b"Ntb.",
    UE, "ok", UE,
    "__setstate__=copyreg._reconstructor in instance state; the marker as a value is refused",
)
add(
    "slots_set_class",
    P2 + G(CC, "Slotted") + b")\x81" + b"N}" + U("__class__") + G(CC, "Point") + b"s\x86b.",
    UE, "ok", UE,
    "slot state setting __class__ (Rust keeps the state as data)",
    rust={"allow": "ok"},
)
add(
    "withsetstate_ok",
    P2 + G(CC, "WithSetstate") + b")\x81" + b"}" + U("a") + b"K\x01sb.",
    UE, "ok", "ok",
    "the class's own __setstate__ is the one BUILD calls",
)
add(
    "point_ok_p2",
    pickle.dumps(Point(1, 2), 2),
    UE, "ok", "ok",
    "an allowed class, protocol 2",
)
for proto in range(6):
    add(f"point_ok_cpython_p{proto}", pickle.dumps(Point(3, [4]), proto), UE, "ok", "ok", f"CPython's pickle of an allowed class, protocol {proto}")
    sl = Slotted()
    sl.a = 1
    if proto >= 2:
        add(
            f"slotted_ok_cpython_p{proto}", pickle.dumps(sl, proto), UE, "ok", "ok",
            f"CPython's pickle of an allowed slotted class, protocol {proto}",
        )
add(
    "make_point_nested_reduce",
    P2 + G(CC, "make_point") + b"K\x01" + G(CC, "make_point") + b"K\x02K\x03\x86R\x86R.",
    UE, "ok", "ok",
    "nested REDUCE of allowed things",
)
add(
    "allowed_function_result_build",
    P2 + G(CC, "make_point") + b"K\x01K\x02\x86R}" + U("z") + b"K\x03sb.",
    UE, "ok", "ok",
    "BUILD on a fresh object an allowed function made",
)

# ---- max_bytes charges the memo ----------------------------------------------------------------
add_all("maxbytes_memo_one_huge_index", b"\x80\x02Nr\xff\xff\x0f\x00.", "ok", "issue 12: 16 MiB memo from one LONG_BINPUT under max_bytes=1024")
add_all(
    "maxbytes_memo_spray",
    P2 + b"N" + b"".join(b"r" + struct.pack("<I", 0x10000000 + i * 7919) for i in range(200)) + b".",
    UE,
    "200 sparse memo slots are charged against max_bytes=1024",
)
add_all("maxbytes_big_string", P2 + b"X" + struct.pack("<I", 4096) + b"a" * 4096 + b".", UE, "a payload above max_bytes")

# ---- allow-lists agree --------------------------------------------------------------------------
add_all("range_ok", pickle.dumps(range(1, 10, 3), 2), "ok", "builtins.range(ints) is a default basic type")
add_all("notimplemented_ok", pickle.dumps(NotImplemented, 2), "ok", "NotImplemented is a default constant")
add_all("ellipsis_ok", pickle.dumps(..., 2), "ok", "Ellipsis")
add("range_as_value", P2 + G("builtins", "range") + b".", UE, "ok", UE, "a basic-type global as a value")
add("set_type_as_value", P2 + G("builtins", "set") + b".", UE, "ok", UE, "a basic-type global as a value")
add("getattr_as_value", P2 + G("builtins", "getattr") + b".", UE, "ok", UE, "a marker as a value")
add("marker_in_list", P2 + b"]" + G("copyreg", "_reconstructor") + b"a.", UE, "ok", UE, "a marker stored in a list")
add("marker_as_dict_key", P2 + b"}" + G("functools", "partial") + b"K\x01s.", UE, "ok", UE, "a marker as a dict key")
add("bool_type_as_value", P2 + G("builtins", "bool") + b".", UE, "ok", UE, "builtins.bool is not a default global")
add("range_bad_args", P2 + G("builtins", "range") + U("x") + b"\x85R.", UE, "ok", UE, "range with a str: not a shape CPython writes")
add("bytearray_huge_int", P2 + G("builtins", "bytearray") + b"J\x00\x00\x00\x40\x85R.", UE, "ok", UE, "bytearray(1 GiB): refused (inert: kept as a description)")
add("codecs_encode_rot13", P2 + G("_codecs", "encode") + U("x") + U("rot13") + b"\x86R.", UE, "ok", UE, "_codecs.encode with a codec CPython never writes")
add_all("global_non_utf8", b"c\xff\nx\n.", "UnicodeDecodeError", "a global name that is not UTF-8")

# ---- __reduce__ chains and real-world malicious shapes ------------------------------------------
DANGEROUS = [
    ("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "Popen"),
    ("subprocess", "check_output"), ("subprocess", "run"), ("builtins", "eval"), ("builtins", "exec"),
    ("builtins", "compile"), ("builtins", "__import__"), ("builtins", "open"), ("builtins", "breakpoint"),
    ("importlib", "import_module"), ("runpy", "_run_code"), ("runpy", "run_path"), ("pty", "spawn"),
    ("shutil", "rmtree"), ("webbrowser", "open"), ("socket", "create_connection"), ("ctypes", "CDLL"),
    ("types", "FunctionType"), ("marshal", "loads"), ("pickle", "loads"), ("sys", "exit"),
    ("operator", "attrgetter"), ("operator", "methodcaller"), ("code", "InteractiveInterpreter"),
    ("timeit", "timeit"), ("pdb", "run"), ("asyncio", "create_subprocess_shell"), ("torch", "load"),
    ("numpy", "load"), ("__builtin__", "eval"), ("__builtin__", "apply"), ("os", "popen"), ("os", "execv"),
]
for m, n in DANGEROUS:
    tag = f"{m.strip('_')}_{n.strip('_')}"
    add(f"reduce_p0_{tag}", call(G(m, n), b"S'id'\n") + b".", UE, "ok", UE, f"REDUCE {m}.{n} (protocol 0)")
    add(f"reduce_p4_{tag}", P4 + SG(m, n) + SU("id") + b"\x85R.", UE, "ok", UE, f"STACK_GLOBAL + REDUCE {m}.{n}")
add("inst_os_system", b"(S'id'\nios\nsystem\n.", UE, "ok", UE, "INST os.system")
add("obj_os_system", b"(cos\nsystem\nS'id'\no.", UE, "ok", UE, "OBJ os.system")
add("newobj_os_system", P2 + G("os", "system") + U("id") + b"\x85\x81.", UE, "ok", UE, "NEWOBJ on a function")
add(
    "getattr_import_chain",
    P2 + G("builtins", "getattr") + G("builtins", "__import__") + U("os") + b"\x85R" + U("system") + b"\x86R" + U("id") + b"\x85R.",
    UE, "ok", UE,
    "getattr(__import__('os'), 'system')('id')",
)
add(
    "getattr_basic_type_attr",
    P2 + G("builtins", "getattr") + G("builtins", "bytes") + U("fromhex") + b"\x86R" + U("41") + b"\x85R.",
    UE, "ok", UE,
    "getattr(bytes, 'fromhex'): getattr only serves cls.__new__ of allowed classes",
)
add(
    "getattr_allowed_globals",
    P2 + G("builtins", "getattr") + G(CC, "make_point") + U("__globals__") + b"\x86R.",
    UE, "ok", UE,
    "getattr(allowed_function, '__globals__')",
)
add(
    "getattr_allowed_class_dict",
    P2 + G("builtins", "getattr") + G(CC, "Point") + U("__init__") + b"\x86R.",
    UE, "ok", UE,
    "getattr(allowed_class, '__init__'): only __new__",
)
add(
    "getattr_allowed_missing_attr",
    P2 + G("builtins", "getattr") + G(CC, "Point") + U(":_init__") + b"\x86R.",
    UE, "ok", UE,
    "atheris finding: getattr(allowed_class, missing) leaked AttributeError (and ran a real getattr)",
)
add(
    "append_on_marker",
    P2 + G("builtins", "getattr") + G(CC, "Point") + U("__init__") + b"\x86a.",
    UE, UE, UE,
    "atheris finding: APPEND onto a pattern-marker stand-in leaked AttributeError",
)
add_all("append_on_global", P2 + G("builtins", "set") + b"K\x01a.", UE, "APPEND onto a basic-type global")
add_all("setitem_on_global", P2 + G("copyreg", "__newobj__") + b"K\x01K\x02s.", UE, "SETITEM onto a marker (would set an item on the stdlib function)")
add("append_on_allowed_class", P2 + G(CC, "Point") + b"K\x01a.", UE, UE, UE, "APPEND onto an allowed class")
add(
    "partial_os_system",
    P2 + G("functools", "partial") + G("os", "system") + U("id") + b"\x86R)R.",
    UE, "ok", UE,
    "functools.partial(os.system, 'id')()",
)
add(
    "partial_of_marker_getattr",
    P2 + G("functools", "partial") + G("builtins", "getattr") + G(CC, "Point") + b"\x86R" + U("__init__") + b"\x85R.",
    UE, "ok", UE,
    "functools.partial(getattr, Point)('__init__')",
)
add(
    "partial_build_swap_func",
    P2 + G("functools", "partial") + G("builtins", "getattr") + G(CC, "Point") + U("__new__") + b"\x86R" + b"\x85R"
    + b"(" + G("os", "system") + U("id") + b"\x85" + b"NNtb)R.",
    UE, UE, UE,
    "BUILD swapping the func of a partial(cls.__new__) to os.system (the one decoder refuses a "
    "partial state other than CPython's, inert mode too)",
)
add(
    "attrgetter_chain",
    P2 + G("operator", "attrgetter") + U("system") + b"\x85R" + G("builtins", "__import__") + U("os") + b"\x85R\x85R.",
    UE, "ok", UE,
    "operator.attrgetter('system')(__import__('os'))",
)
add(
    "reconstructor_os_system",
    G("copyreg", "_reconstructor") + b"(" + G("os", "system") + G("builtins", "object") + b"NtR.",
    UE, "ok", UE,
    "copyreg._reconstructor with a function as the class",
)
add(
    "newobj_marker_os",
    P2 + G("copyreg", "__newobj__") + G("os", "system") + U("id") + b"\x86R.",
    UE, "ok", UE,
    "copyreg.__newobj__(os.system, 'id')",
)
add(
    "fickling_injected_exec",
    P2 + G("builtins", "exec") + U("import os") + b"\x85R0" + pickle.dumps({"a": 1}, 2)[2:],
    UE, "ok", UE,
    "fickling-style: exec() injected before a valid payload, result popped",
)
add(
    "picklescan_memo_strings",
    P4 + SU("os") + b"\x94" + SU("system") + b"\x94" + b"h\x00h\x01\x93" + SU("id") + b"\x85R.",
    UE, "ok", UE,
    "STACK_GLOBAL whose names come from the memo",
)
add(
    "numpy_reconstruct_shape",
    P2 + G("numpy.core.multiarray", "_reconstruct") + G("numpy", "ndarray") + b"K\x00\x85C\x01b\x87R"
    + b"(K\x01K\x03\x85" + G("numpy", "dtype") + U("f8") + b"\x89\x88\x87R\x89C\x18" + b"\x00" * 24 + b"tb.",
    UE, "ok", UE,
    "numpy array shape (inert shows it)",
)
add(
    "torch_shape_persid",
    P2 + G("torch._utils", "_rebuild_tensor_v2") + b"(" + b"(" + U("storage") + G("torch", "FloatStorage") + U("0") + U("cpu") + b"K\x04t" + b"Q" + b"K\x00K\x04\x85K\x01\x85\x89" + G("collections", "OrderedDict") + b")Rtr.",
    UE, UE, UE,
    "torch-style: BINPERSID without persistent_load",
)
add_all("persid_no_loader", b"Pfoo\n.", UE, "PERSID without persistent_load")
add_all("binpersid_no_loader", P2 + b"NQ.", UE, "BINPERSID without persistent_load")
add_all("next_buffer_no_buffers", P5 + b"\x97.", UE, "NEXT_BUFFER without buffers")
add_all("ext1_unregistered", P2 + b"\x82\x01.", "ValueError", "EXT1 code 1 not registered")
add_all("ext2_unregistered", P2 + b"\x83\xff\xff.", "ValueError", "EXT2 not registered")
add_all("ext4_negative", P2 + b"\x84\xff\xff\xff\xff.", UE, "EXT4 code <= 0")
add_all("ext1_zero", P2 + b"\x82\x00.", UE, "EXT1 code 0")

# ---- memo abuse -------------------------------------------------------------------------------
add_all("memo_get_missing", P2 + b"h\x05.", UE, "BINGET of a missing entry")
add_all("memo_get_huge", P2 + b"j\xff\xff\xff\xff.", UE, "LONG_BINGET 0xffffffff")
add_all("memo_get_text_missing", b"g99999999999\n.", UE, "GET of a missing entry")
add_all("memo_overwrite", P2 + b"K\x01q\x00K\x02q\x00h\x00.", "ok", "PUT twice at one index")
add_all("memo_put_empty_stack", P2 + b"q\x00.", UE, "PUT on an empty stack")
add_all("memo_put_negative", b"Np-1\n.", "ValueError", "negative PUT index")
add_all("memoize_empty_stack", P4 + b"\x94.", UE, "MEMOIZE on an empty stack")
add_all("memo_put_huge_index", P2 + b"Nr\xff\xff\xff\xff.", "ok", "LONG_BINPUT 0xffffffff (sparse)")

# ---- huge lengths -----------------------------------------------------------------------------
add_all("binunicode_huge", P2 + b"X\xff\xff\xff\xff.", UE, "BINUNICODE length 4 GiB")
add_all("binunicode8_huge", P4 + b"\x8d" + b"\xff" * 8 + b".", UE, "BINUNICODE8 length 2^64-1")
add_all("binbytes_huge", P4 + b"B\xff\xff\xff\xff.", UE, "BINBYTES length 4 GiB")
add_all("binbytes8_huge", P4 + b"\x8e" + b"\xff" * 7 + b"\x7f.", UE, "BINBYTES8 length 2^63-1")
add_all("bytearray8_huge", P5 + b"\x96" + b"\xff" * 8 + b".", UE, "BYTEARRAY8 length 2^64-1")
add_all("short_binbytes_short", P4 + b"C\xffab.", UE, "SHORT_BINBYTES 255 with 3 bytes")
add_all("short_binunicode_short", P4 + b"\x8c\xffab.", UE, "SHORT_BINUNICODE 255 with 3 bytes")
add_all("long4_huge", P2 + b"\x8b\xff\xff\xff\x7f.", UE, "LONG4 length 2 GiB")
add_all("long4_negative", P2 + b"\x8b\xff\xff\xff\xff.", UE, "LONG4 negative length")
add_all("binstring_negative", b"T\xff\xff\xff\xff.", UE, "BINSTRING negative length")
add_all("binstring_huge", b"T\xff\xff\xff\x7f.", UE, "BINSTRING 2 GiB")
add_all("frame_huge", P4 + b"\x95" + b"\xff" * 8 + b"N.", UE, "FRAME 2^64-1")
add_all("frame_beyond_data", P4 + b"\x95\x10\x00\x00\x00\x00\x00\x00\x00N.", UE, "FRAME longer than the data")
add_all("frame_straddle", P4 + b"\x95\x03\x00\x00\x00\x00\x00\x00\x00\x8c\x03abc.", UE, "an opcode straddling the frame's end (rejected as pickle.py does)")
add_all("frame_exact_end", P4 + b"\x95\x02\x00\x00\x00\x00\x00\x00\x00\x8c\x03abc.", "ok", "an argument starting exactly at the frame's end (pickle.py reads on)")
add_all("frame_in_frame", P4 + b"\x95\x0a\x00\x00\x00\x00\x00\x00\x00\x95\x01\x00\x00\x00\x00\x00\x00\x00N.", UE, "a frame inside a frame")
add_all("text_int_huge_digits", b"I" + b"9" * 5000 + b"\n.", "ValueError", "5000-digit INT (int_max_str_digits)")
add_all("text_long_huge_digits", b"L" + b"9" * 5000 + b"L\n.", "ValueError", "5000-digit LONG")
add_all("proto_6", b"\x80\x06N.", "ValueError", "unsupported protocol")
add_all("unknown_opcode", b"\xff.", UE, "invalid load key")

# ---- deep nesting (2^20) ----------------------------------------------------------------------
D = 1 << 20
add_all("nest_lists", P2 + b"]" * D + b"a" * (D - 1) + b".", UE, "2^20 nested lists")
add_all("nest_marks", b"(" * D + b"N.", UE, "2^20 MARKs")
add_all("nest_tuple1", P2 + b"N" + b"\x85" * D + b".", UE, "2^20 nested 1-tuples")
add_all("nest_dicts", P2 + b"}" + (b"K\x00}" * (1 << 16)) + b"s" * (1 << 16) + b".", UE, "2^16 nested dicts")
add_all("nest_frozensets", P4 + (b"(" * 4000) + b"\x91" * 4000 + b".", UE, "4000 nested frozensets")

# ---- stack underflow --------------------------------------------------------------------------
add_all("empty_input", b"", "EOFError", "no data")
add_all("stop_only", b".", UE, "STOP on an empty stack")
add_all("stop_on_mark", b"(.", UE, "STOP with only a MARK")
add_all("append_underflow", P2 + b"a.", UE, "APPEND on an empty stack")
add_all("pop_underflow", b"0.", UE, "POP on an empty stack")
add_all("tuple1_underflow", P2 + b"\x85.", UE, "TUPLE1 on an empty stack")
add_all("tuple_no_mark", b"Nt.", UE, "TUPLE without MARK")
add_all("setitem_underflow", P2 + b"}K\x01s.", UE, "SETITEM with one item")
add_all("setitems_odd", P2 + b"}(K\x01u.", UE, "SETITEMS with an odd count")
add_all("reduce_underflow", P2 + b"NR.", UE, "REDUCE with one item")
add_all("build_underflow", P2 + b"Nb.", UE, "BUILD with one item")
add_all("stack_global_underflow", P4 + SU("os") + b"\x93.", UE, "STACK_GLOBAL with one item")
add_all("stack_global_non_str", P4 + b"K\x01K\x02\x93.", UE, "STACK_GLOBAL of ints")
add_all("pop_mark_no_mark", b"1.", UE, "POP_MARK without MARK")

# ---- self-referencing containers --------------------------------------------------------------
add("cyclic_list", P2 + b"]q\x00h\x00a.", "ok", "ok", "ok", "a list that contains itself (Rust Value has no cycles)", rust={m: UE for m in MODES})
add("cyclic_dict_value", P2 + b"}q\x00K\x01h\x00s.", "ok", "ok", "ok", "a dict that contains itself", rust={m: UE for m in MODES})
add_all("dict_self_key", P2 + b"}q\x00h\x00K\x01s.", "TypeError", "a dict as its own key (unhashable)")
add_all("set_self_member", P4 + b"\x8fq\x00(h\x00\x90.", "TypeError", "a set as its own member")
add_all("tuple_list_cycle_key", P2 + b"]q\x00h\x00\x85q\x01a}h\x01K\x01s.", "TypeError", "a tuple containing a list containing the tuple, as a key")
add_all("frozenset_of_list", P4 + b"(]\x91.", "TypeError", "a list in a frozenset")

# ---- valid pickles and every truncation of them ------------------------------------------------
VALID = {
    "mixed": {"a": [1, 2.5, b"x", "\u00e9"], (1, 2): {1j, frozenset({3})}, "n": None, "big": 2**100, "t": (True, False)},
    "strings": ["x" * 300, b"y" * 300, bytearray(b"z" * 10)],
}
for vname, value in VALID.items():
    for proto in range(6):
        data = pickle.dumps(value, proto)
        add_all(f"valid_{vname}_p{proto}", data, "ok", f"CPython's pickle of basic values, protocol {proto}")
        if vname != "mixed":
            continue
        for cut in range(len(data)):
            prefix = data[:cut]
            try:
                pickle.loads(prefix)
                outcome = "ok"
            except Exception as e:  # noqa: BLE001 - the outcome is the exception's type
                outcome = type(e).__name__
            if outcome not in ("UnpicklingError", "EOFError", "ok"):
                # CPython's C unpickler reports a few cuts as ValueError/struct errors the way
                # pickle.py would not; cellar follows pickle.py: truncation is UnpicklingError.
                outcome = UE
            add_all(f"trunc_{vname}_p{proto}_{cut:04d}", prefix, outcome, f"valid pickle cut at byte {cut} (CPython: same outcome)")


def main() -> None:
    for f in os.listdir(HERE):
        if f.endswith(".pkl"):
            os.remove(os.path.join(HERE, f))
    lines = [
        "# name\tmode\toutcome\trust\tcomment  (see make_corpus.py; maxbytes_* run with max_bytes=1024)",
    ]
    seen = set()
    for name, data, outcomes, rust, comment in cases:
        assert name not in seen, name
        seen.add(name)
        with open(os.path.join(HERE, name + ".pkl"), "wb") as f:
            f.write(data)
        for mode in MODES:
            lines.append(f"{name}\t{mode}\t{outcomes[mode]}\t{rust.get(mode, '=')}\t{comment}")
    with open(os.path.join(HERE, "expected.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{len(cases)} cases, {len(lines) - 1} lines")


if __name__ == "__main__":
    main()
