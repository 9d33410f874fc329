//! Code objects through CPython's public API (no private symbols), plus, for writing, the two
//! fields no public API returns (`co_localsplusnames`, `co_localspluskinds`), read where an
//! import-time probe verified they are ([`LOCALSPLUS`]; the public attributes otherwise).
//!
//! - Building (decode): `PyCode_NewWithPosOnlyArgs` (3.11), renamed
//!   `PyUnstable_Code_NewWithPosOnlyArgs` in 3.12+ (chosen at build time by pyo3's version
//!   cfgs). It takes `co_varnames`, `co_cellvars` and `co_freevars`, which are derived from the
//!   marshal fields `co_localsplusnames` / `co_localspluskinds` (0x20 local, 0x40 cell, 0x80
//!   free); the constructor rebuilds the same localsplus table from them. The one bit it cannot
//!   express is 3.12's `CO_FAST_HIDDEN` (0x10, comprehension variables inlined into their
//!   enclosing code): the object is equal (`==`) but those locals are no longer hidden from
//!   `locals()` (docs/marshal.md).
//! - Reading (encode): the fields at the offsets of the code type's public member table,
//!   `PyCode_GetCode` for `co_code`, and the localsplus fields themselves ([`LOCALSPLUS`]) or,
//!   where the probe fails, the same derivation backwards ([`localsplus`]).

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::os::raw::c_int;

use cellar_marshal::read::CodeFields;
use pyo3::ffi::{self, PyObject};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

/// `co_localspluskinds` bits (Include/internal/pycore_code.h).
pub(crate) const CO_FAST_LOCAL: u8 = 0x20;
pub(crate) const CO_FAST_CELL: u8 = 0x40;
pub(crate) const CO_FAST_FREE: u8 = 0x80;

extern "C" {
    /// The public code constructor (Include/cpython/code.h): `PyCode_NewWithPosOnlyArgs` in
    /// 3.11, `PyUnstable_Code_NewWithPosOnlyArgs` (the old name is a static inline) from 3.12.
    #[cfg_attr(Py_3_12, link_name = "PyUnstable_Code_NewWithPosOnlyArgs")]
    #[cfg_attr(not(Py_3_12), link_name = "PyCode_NewWithPosOnlyArgs")]
    fn code_new_with_posonly_args(
        argcount: c_int,
        posonlyargcount: c_int,
        kwonlyargcount: c_int,
        nlocals: c_int,
        stacksize: c_int,
        flags: c_int,
        code: *mut PyObject,
        consts: *mut PyObject,
        names: *mut PyObject,
        varnames: *mut PyObject,
        freevars: *mut PyObject,
        cellvars: *mut PyObject,
        filename: *mut PyObject,
        name: *mut PyObject,
        qualname: *mut PyObject,
        firstlineno: c_int,
        linetable: *mut PyObject,
        exceptiontable: *mut PyObject,
    ) -> *mut PyObject;

    /// `co_code` as bytes (public since 3.11; a new reference).
    pub(crate) fn PyCode_GetCode(co: *mut PyObject) -> *mut PyObject;
    /// `co_varnames`, `co_cellvars`, `co_freevars` (public since 3.11; new references).
    fn PyCode_GetVarnames(co: *mut PyObject) -> *mut PyObject;
    fn PyCode_GetCellvars(co: *mut PyObject) -> *mut PyObject;
    fn PyCode_GetFreevars(co: *mut PyObject) -> *mut PyObject;
}

/// Which opcodes the running CPython's code constructor accepts without crashing (unset when it
/// accepts every byte, as 3.11's does). 3.12+
/// quickens bytecode as it builds a code object and crashes on an INSTRUMENTED_* opcode (or
/// 3.13's ENTER_EXECUTOR) in `co_code`, which no code CPython writes contains; so does its own
/// marshal. Computed once, at import, from the running interpreter's `opcode.opmap`: every byte
/// except those opcodes (other unknown opcodes are accepted, as CPython's marshal does: bytecode
/// of another version is still loadable).
/// With the table, the lowest refused opcode.
static OPCODE_OK: std::sync::OnceLock<([bool; 256], u8)> = std::sync::OnceLock::new();

/// Reads the running interpreter's opcode table (at import of `cellar._cellar`, so that no
/// import happens while decoding).
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    let opmap = py.import("opcode")?.getattr("opmap")?;
    let opmap = opmap.cast::<pyo3::types::PyDict>()?;
    let mut ok = [true; 256];
    for (k, v) in opmap.iter() {
        let name: String = k.extract()?;
        let op: usize = v.extract()?;
        if op < 256 && (name.starts_with("INSTRUMENTED_") || name == "ENTER_EXECUTOR") {
            ok[op] = false;
        }
    }
    // 3.11 has no such opcodes: nothing to check then.
    if let Some(lowest) = ok.iter().position(|&b| !b) {
        let _ = OPCODE_OK.set((ok, lowest as u8));
    }
    // Every version: the inline cache entries must fit (see `CACHES`).
    let caches = cache_table(py)?;
    let _ = CACHES.set((caches, caches.iter().copied().max().unwrap_or(0)));
    // 3.12+: comprehension variables inlined into their enclosing code are "hidden" locals
    // (kind bit 0x10), which no public attribute shows; such code saves them with
    // LOAD_FAST_AND_CLEAR. See `hidden_kinds`.
    if let Some(op) = opmap.get_item("LOAD_FAST_AND_CLEAR")? {
        let op: u8 = op.extract()?;
        let dumps = py.import("marshal")?.getattr("dumps")?.unbind();
        let _ = HIDDEN.set((op, dumps));
    }
    // After HIDDEN: the probe compares with `localsplus`, which needs it.
    let _ = LOCALSPLUS.set(probe_localsplus(py)?);
    let _ = LAYOUT.set(code_layout());
    Ok(())
}

/// Where the running CPython keeps a code object's `co_localsplusnames` and
/// `co_localspluskinds` (byte offsets), when [`probe_localsplus`] verified it; `None`: they are
/// rebuilt from the public attributes ([`localsplus`]) and the encoder reproduces the compiler's
/// sharing of the names tuple by a scan (marshal_source.rs).
///
/// No public API returns these two objects, but CPython's marshal writes exactly them (the
/// same tuple the compiler shares between code objects and constants, which decides FLAG_REF;
/// the exact kinds, 3.12's hidden bit included). In 3.11, 3.12 and 3.13 they are the two
/// pointers just before `co_filename`, whose offset the code type's public member table gives.
/// That is checked at import, never assumed: on code objects compiled for the purpose (every
/// kind of local) the pointers there must be an exact tuple and bytes equal to what the public
/// attributes give, else the public path is used.
static LOCALSPLUS: std::sync::OnceLock<Option<(isize, isize)>> = std::sync::OnceLock::new();

/// Tests turn the fields off to exercise the public path (`_cellar._marshal_code_fields`).
static LOCALSPLUS_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns reading [`LOCALSPLUS`] on or off (for tests of the public path); returns whether it is
/// available on this interpreter.
pub(crate) fn set_localsplus_fields(on: bool) -> bool {
    LOCALSPLUS_ON.store(on, std::sync::atomic::Ordering::Relaxed);
    matches!(LAYOUT.get(), Some(Some(_)))
}

/// The offsets to verify: the two pointer slots before `co_filename`.
fn localsplus_candidate() -> Option<(isize, isize)> {
    let (_, filename) = member_table()[8]?;
    let ptr = std::mem::size_of::<*mut ffi::PyObject>() as isize;
    (filename >= 2 * ptr + std::mem::size_of::<ffi::PyVarObject>() as isize)
        .then_some((filename - 2 * ptr, filename - ptr))
}

/// Checks [`localsplus_candidate`] on code objects compiled for the purpose, first by address
/// only (nothing read from the slots is used as an object until they hold known objects): a
/// code object without locals holds the empty tuple and empty bytes singletons there, and `p`'s
/// names tuple is the constant tuple of equal value in its `co_consts` (the compiler merges
/// them). Then, on every code object of the probe (arguments, locals, cells, one of them an
/// argument, free variables, `__class__`, an inlined comprehension), the slots must hold an
/// exact tuple and bytes equal to what the public attributes give ([`localsplus`]).
fn probe_localsplus(py: Python<'_>) -> PyResult<Option<(isize, isize)>> {
    let Some((on, ok)) = localsplus_candidate() else {
        return Ok(None);
    };
    // SAFETY: PyCode_Type is a static type.
    let basic = unsafe { (*std::ptr::addr_of!(ffi::PyCode_Type)).tp_basicsize };
    if basic < ok + std::mem::size_of::<*mut ffi::PyObject>() as isize {
        return Ok(None);
    }
    let src = "def f(a, b, /, c, *d, e=1, **g):\n    x = [y for y in d]\n    z = 2\n    \
               def h():\n        return a + z + x\n    return h\n\ndef p(q, r):\n    \
               return ('q', 'r')\n\nclass C:\n    def m(self):\n        return __class__\n";
    let module =
        py.import("builtins")?
            .getattr("compile")?
            .call1((src, "<cellar-probe>", "exec"))?;
    let slots = |co: &Bound<'_, PyAny>| {
        // SAFETY: GIL held; `co` is a live code object (compiled above or found among code
        // constants), at least tp_basicsize bytes long, which covers both pointer-aligned
        // slots (checked above); the values are only compared as addresses by the caller
        // until they are known to be objects.
        unsafe {
            let base = co.as_ptr() as *const u8;
            (
                *(base.offset(on) as *const *mut ffi::PyObject),
                *(base.offset(ok) as *const *mut ffi::PyObject),
            )
        }
    };
    let (n, k) = slots(&module);
    if n != PyTuple::empty(py).as_ptr() || k != PyBytes::new(py, b"").as_ptr() {
        return Ok(None);
    }
    let mut codes = vec![module];
    let mut i = 0;
    while i < codes.len() {
        let consts = codes[i].getattr("co_consts")?;
        for c in consts.try_iter()? {
            let c = c?;
            // SAFETY: GIL held; a type check on a live object.
            if unsafe { ffi::PyCode_Check(c.as_ptr()) } != 0 {
                codes.push(c);
            }
        }
        i += 1;
    }
    let Some(p) = codes.iter().find(|c| {
        c.getattr("co_name")
            .is_ok_and(|n| n.eq("p").unwrap_or(false))
    }) else {
        return Ok(None);
    };
    let pconst = p.getattr("co_consts")?.try_iter()?.find_map(|c| {
        c.ok()
            .filter(|c| c.is_exact_instance_of::<PyTuple>() && c.len().ok() == Some(2))
    });
    match pconst {
        Some(t) if slots(p).0 == t.as_ptr() => {}
        _ => return Ok(None),
    }
    // The layout is confirmed: the slots hold the objects themselves.
    for co in &codes {
        let (n, k) = slots(co);
        let (want_n, want_k) = localsplus(co)?;
        // SAFETY: GIL held; the slots of a live code object hold its (non-null, checked)
        // localsplus objects, alive as long as the code object.
        let same = !n.is_null()
            && !k.is_null()
            && unsafe {
                let n = Bound::from_borrowed_ptr(py, n);
                let k = Bound::from_borrowed_ptr(py, k);
                n.is_exact_instance_of::<PyTuple>()
                    && k.is_exact_instance_of::<PyBytes>()
                    && n.eq(&want_n)?
                    && k.cast::<PyBytes>()?.as_bytes() == want_k.as_bytes()
            };
        if !same {
            return Ok(None);
        }
    }
    Ok(Some((on, ok)))
}

/// How many inline cache entries follow each opcode byte, as the running CPython sees it. An
/// instruction whose cache entries run past the end of `co_code` makes CPython write past an
/// allocation (heap corruption; CPython's own marshal lets such bytecode through): 3.12+
/// quickens bytecode while building a code object and writes the first cache entry of every
/// instruction that has some; 3.11 quickens later, and its `co_code` getter (which
/// `marshal.dumps` uses) zeroes every cache entry into a new bytes object of `co_code`'s size
/// (found by scripts/fuzz-python.sh under PYTHONMALLOC=debug). Specialized opcodes count as their
/// base opcode.
/// With the table, its largest entry.
static CACHES: std::sync::OnceLock<([u8; 256], u8)> = std::sync::OnceLock::new();

/// Reads [`CACHES`] from the interpreter's `dis` and `opcode` tables (the same ones `dis` uses
/// to skip cache entries): the larger of the opcode's own and its base opcode's cache size.
fn cache_table(py: Python<'_>) -> PyResult<[u8; 256]> {
    let dis = py.import("dis")?;
    let names = dis.getattr("_all_opname")?;
    let deopt = dis.getattr("deoptmap")?;
    let all_opmap = dis.getattr("_all_opmap")?;
    // A list indexed by opcode (3.12) or a dict keyed by name (3.13).
    let entries = py.import("opcode")?.getattr("_inline_cache_entries")?;
    let size = |name: &Bound<'_, PyAny>| -> PyResult<usize> {
        if let Ok(by_name) = entries.cast::<pyo3::types::PyDict>() {
            return match by_name.get_item(name)? {
                Some(v) => v.extract(),
                None => Ok(0),
            };
        }
        match all_opmap.get_item(name) {
            Ok(op) => {
                let op: usize = op.extract()?;
                if op < 256 {
                    entries.get_item(op)?.extract()
                } else {
                    Ok(0)
                }
            }
            Err(_) => Ok(0),
        }
    };
    let mut table = [0u8; 256];
    for (b, slot) in table.iter_mut().enumerate() {
        let name = names.get_item(b)?;
        let base = deopt.call_method1("get", (&name, &name))?;
        *slot = size(&name)?.max(size(&base)?).min(255) as u8;
    }
    Ok(table)
}

/// LOAD_FAST_AND_CLEAR's opcode and the interpreter's own `marshal.dumps` (3.12+).
static HIDDEN: std::sync::OnceLock<(u8, Py<PyAny>)> = std::sync::OnceLock::new();

/// The exact `co_localspluskinds` of a 3.12+ code object that may have hidden locals: the only
/// public API that shows them is the interpreter's own marshal, applied to a copy without
/// constants (`replace` keeps the kinds), parsed back with the core decoder.
fn hidden_kinds(co: &Bound<'_, PyAny>, n: usize) -> PyResult<Option<Vec<u8>>> {
    let Some((op, dumps)) = HIDDEN.get() else {
        return Ok(None);
    };
    let code = co_code(co)?;
    let code = code.cast::<PyBytes>()?;
    if !code.as_bytes().chunks(2).any(|u| u[0] == *op) {
        return Ok(None);
    }
    let py = co.py();
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("co_consts", PyTuple::empty(py))?;
    let stripped = co.call_method("replace", (), Some(&kwargs))?;
    let bytes = dumps.bind(py).call1((stripped,))?;
    let bytes = bytes.cast::<PyBytes>()?;
    let v = cellar_marshal::loads(bytes.as_bytes()).ok();
    Ok(match &v {
        Some(cellar_marshal::Value::Code(c)) => match &c.localspluskinds {
            cellar_marshal::Value::Bytes(k) if k.len() == n => Some(k.to_vec()),
            _ => None,
        },
        _ => None,
    })
}

/// Refuses bytecode the constructor would crash on (see [`OPCODE_OK`]): no code unit's opcode
/// byte may be an instrumented one (checked at every code unit, cache entries included).
fn check_bytecode(code: &Bound<'_, PyAny>) -> PyResult<()> {
    let code = code.cast::<PyBytes>()?.as_bytes();
    let instrumented = OPCODE_OK.get().and_then(|(ok, lowest)| {
        // The refused opcodes are the highest ones: a branch-free maximum first (vectorized),
        // the exact search only when some opcode byte reaches the lowest refused one.
        let units = code.chunks_exact(2);
        let odd = units.remainder().first().copied().unwrap_or(0);
        let top = units.fold(odd, |m, u| m.max(u[0]));
        if top < *lowest {
            return None;
        }
        code.iter().step_by(2).position(|&op| !ok[op as usize])
    });
    if let Some(i) = instrumented {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "bad marshal data (invalid code object: opcode {} at offset {} is an instrumented \
             opcode, which this Python cannot build code from)",
            code[2 * i],
            2 * i
        )));
    }
    check_caches(code)
}

/// Refuses bytecode whose last instruction's inline cache entries would run past its end
/// (see [`CACHES`]), walking it as the constructor does: instruction, its caches, next.
fn check_caches(code: &[u8]) -> PyResult<()> {
    let Some((caches, max)) = CACHES.get() else {
        return Ok(());
    };
    let units = code.len() / 2;
    // Only a unit in the last `max` can need cache entries past the end: when none there could
    // (walked to or not), the walk cannot fail, and is skipped (the common case: one pass over
    // a few units instead of over all of them).
    let max = *max as usize;
    let tail = units.saturating_sub(max);
    let suspect = (tail..units).any(|i| {
        let n = caches[code[2 * i] as usize] as usize;
        n > 0 && i + n >= units
    });
    if !suspect {
        return Ok(());
    }
    let code = &code[..2 * units];
    // The walk itself: an instruction's caches run past the end exactly when the next
    // instruction would start past the end (`i + 1 + n > units`), so the loop only steps, and
    // the instruction at fault is looked for again only when there is one.
    let mut i = 0;
    let mut last = 0;
    while let Some(&op) = code.get(2 * i) {
        last = i;
        i += 1 + caches[op as usize] as usize;
    }
    if i <= units {
        return Ok(());
    }
    let op = code[2 * last];
    Err(pyo3::exceptions::PyValueError::new_err(format!(
        "bad marshal data (invalid code object: opcode {op} at offset {} needs {} inline cache \
         entries, past the end of the bytecode)",
        2 * last,
        caches[op as usize]
    )))
}

/// Refuses the counts the code constructor rejects with SystemError ("bad argument to internal
/// function", as CPython's own marshal.loads then raises): negative counts, stack size or flags,
/// more positional-only arguments than positional ones.
fn check_counts<V>(f: &CodeFields<V>) -> PyResult<()> {
    let bad = if f.argcount < f.posonlyargcount {
        Some("co_posonlyargcount exceeds co_argcount")
    } else if f.posonlyargcount < 0 {
        Some("negative co_posonlyargcount")
    } else if f.kwonlyargcount < 0 {
        Some("negative co_kwonlyargcount")
    } else if f.stacksize < 0 {
        Some("negative co_stacksize")
    } else if f.flags < 0 {
        Some("negative co_flags")
    } else {
        None
    };
    match bad {
        Some(what) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "bad marshal data (invalid code object: {what})"
        ))),
        None => Ok(()),
    }
}

/// Builds a code object from the fields the core decoder validated (types and lengths).
pub(crate) fn build<'py>(
    py: Python<'py>,
    f: CodeFields<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    check_counts(&f)?;
    let [code, consts, names, lnames, lkinds, filename, name, qualname, linetable, exctable] =
        f.objects;
    check_bytecode(&code)?;
    let lnames = lnames.cast_into::<PyTuple>()?;
    let lkinds = lkinds.cast_into::<PyBytes>()?;
    let kinds = lkinds.as_bytes();
    let (nlocals, varnames, cellvars, freevars) = if kinds.iter().all(|&k| k == CO_FAST_LOCAL) {
        // Plain locals only (most functions): `co_varnames` is `co_localsplusnames` itself.
        let empty = PyTuple::empty(py);
        (kinds.len() as c_int, lnames.clone(), empty.clone(), empty)
    } else {
        let mut groups: [Vec<Bound<'py, PyAny>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (i, &k) in kinds.iter().enumerate() {
            let nm = lnames.get_item(i)?;
            if k & CO_FAST_LOCAL != 0 {
                groups[0].push(nm.clone());
            }
            if k & CO_FAST_CELL != 0 {
                groups[1].push(nm.clone());
            }
            if k & CO_FAST_FREE != 0 {
                groups[2].push(nm);
            }
        }
        let [var, cell, free] = groups;
        (
            var.len() as c_int,
            PyTuple::new(py, var)?,
            PyTuple::new(py, cell)?,
            PyTuple::new(py, free)?,
        )
    };
    // SAFETY: GIL held; every object argument is a live object of the type the constructor
    // requires (checked by the core decoder: bytes, tuples of str, str); the constructor takes
    // its own references and returns a new reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            code_new_with_posonly_args(
                f.argcount,
                f.posonlyargcount,
                f.kwonlyargcount,
                nlocals,
                f.stacksize,
                f.flags,
                code.as_ptr(),
                consts.as_ptr(),
                names.as_ptr(),
                varnames.as_ptr(),
                freevars.as_ptr(),
                cellvars.as_ptr(),
                filename.as_ptr(),
                name.as_ptr(),
                qualname.as_ptr(),
                f.firstlineno,
                linetable.as_ptr(),
                exctable.as_ptr(),
            ),
        )
    }
}

/// The code type's members that marshal reads, as `PyCode_Type.tp_members` (public
/// `PyMemberDef` metadata, the table generic attribute access itself consults) describes them:
/// read at their offset directly instead of through `getattr` (a type lookup and a descriptor
/// call per field, most of the cost of writing a small code object).
pub(crate) const MEMBER_NAMES: [&str; 13] = [
    "co_argcount",
    "co_posonlyargcount",
    "co_kwonlyargcount",
    "co_stacksize",
    "co_flags",
    "co_firstlineno",
    "co_consts",
    "co_names",
    "co_filename",
    "co_name",
    "co_qualname",
    "co_linetable",
    "co_exceptiontable",
];

/// Per [`MEMBER_NAMES`] entry: its type code and offset, when it is a read-only member of type
/// int (the first six) or object (the rest).
static MEMBERS: std::sync::OnceLock<[Option<(c_int, isize)>; 13]> = std::sync::OnceLock::new();

fn member_table() -> &'static [Option<(c_int, isize)>; 13] {
    MEMBERS.get_or_init(|| {
        let mut out = [None; 13];
        // SAFETY: PyCode_Type is a static type, immortal; its tp_members array ends with an
        // entry whose name is NULL; names are NUL-terminated C strings.
        unsafe {
            let mut m = (*std::ptr::addr_of!(ffi::PyCode_Type)).tp_members;
            while !m.is_null() && !(*m).name.is_null() {
                let name = std::ffi::CStr::from_ptr((*m).name);
                if let Some(i) = MEMBER_NAMES
                    .iter()
                    .position(|n| n.as_bytes() == name.to_bytes())
                {
                    let want_int = i < 6;
                    let t = (*m).type_code;
                    let ok = if want_int {
                        t == ffi::Py_T_INT
                    } else {
                        // T_OBJECT (6; 3.11's code type) or Py_T_OBJECT_EX.
                        t == 6 || t == ffi::Py_T_OBJECT_EX
                    };
                    if ok && (*m).offset > 0 {
                        out[i] = Some((t, (*m).offset));
                    }
                }
                m = m.add(1);
            }
        }
        out
    })
}

/// The byte offsets of everything marshal writes of a code object, when all of it can be read
/// straight from the struct: the six ints (argcount, posonlyargcount, kwonlyargcount,
/// stacksize, flags, firstlineno) from the code type's member table, and the nine object fields
/// in [`cellar_marshal::Source::code_field`]'s numbering 1-9 (consts, names, localsplusnames,
/// localspluskinds, filename, name, qualname, linetable, exceptiontable), the localsplus pair
/// from [`LOCALSPLUS`]. Computed once at import, after the probe.
struct CodeLayout {
    ints: [isize; 6],
    objs: [isize; 9],
}

static LAYOUT: std::sync::OnceLock<Option<CodeLayout>> = std::sync::OnceLock::new();

fn code_layout() -> Option<CodeLayout> {
    let table = member_table();
    let (on, ok) = (*LOCALSPLUS.get()?)?;
    let mut ints = [0isize; 6];
    for (slot, m) in ints.iter_mut().zip(&table[..6]) {
        *slot = (*m)?.1;
    }
    let field = |i: usize| table[i].map(|(_, off)| off);
    Some(CodeLayout {
        ints,
        objs: [
            field(6)?,
            field(7)?,
            on,
            ok,
            field(8)?,
            field(9)?,
            field(10)?,
            field(11)?,
            field(12)?,
        ],
    })
}

/// [`LAYOUT`], unless tests turned the struct fields off.
#[inline(always)]
fn layout() -> Option<&'static CodeLayout> {
    if !LOCALSPLUS_ON.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    LAYOUT.get()?.as_ref()
}

/// Object field `i` (1-9, see [`CodeLayout`]) of `co`, borrowed, read straight from the struct;
/// `None` when the layout is not available. GIL held; `co` is a live exact code object (callers
/// checked `PyCode_Check`) for which [`code_fields`] answered.
#[inline(always)]
pub(crate) fn code_field_ptr(co: *mut ffi::PyObject, i: usize) -> Option<*mut ffi::PyObject> {
    let off = *layout()?.objs.get(i.checked_sub(1)?)?;
    // SAFETY: GIL held by the caller; `co` is a live exact code object, and the layout (the
    // code type's own member table, and the probe of LOCALSPLUS) says an object pointer lives
    // at this offset, set at construction and never changed.
    let p = unsafe { *((co as *const u8).offset(off) as *const *mut ffi::PyObject) };
    (!p.is_null()).then_some(p)
}

/// The six ints marshal writes of a code object, read straight from the struct, when every
/// field marshal writes can be read that way (no allocation, no call into Python): the layout
/// is available, no object field is NULL, and the localsplus pair is an exact tuple and exact
/// bytes. `None`: the public path is used. GIL held; `co` is a live exact code object.
#[inline]
pub(crate) fn code_fields(co: *mut ffi::PyObject) -> Option<[i32; 6]> {
    let l = layout()?;
    let base = co as *const u8;
    let mut ints = [0i32; 6];
    // SAFETY: (whole block) GIL held by the caller; `co` is a live exact code object and the
    // layout gives the offsets of C ints and of object pointers in it; the pointers are only
    // used as objects once known to be non-null (a code object's fields are set at
    // construction, so they are live objects then).
    unsafe {
        for (slot, &off) in ints.iter_mut().zip(&l.ints) {
            *slot = *(base.offset(off) as *const c_int);
        }
        for &off in &l.objs {
            if (*(base.offset(off) as *const *mut ffi::PyObject)).is_null() {
                return None;
            }
        }
        let names = *(base.offset(l.objs[2]) as *const *mut ffi::PyObject);
        let kinds = *(base.offset(l.objs[3]) as *const *mut ffi::PyObject);
        if ffi::PyTuple_CheckExact(names) == 0 || ffi::PyBytes_CheckExact(kinds) == 0 {
            return None;
        }
    }
    Some(ints)
}

/// An int field of a code object ([`MEMBER_NAMES`] index `i` < 6).
pub(crate) fn code_int(co: &Bound<'_, PyAny>, i: usize) -> PyResult<i32> {
    if let Some(Some((_, off))) = member_table().get(i).filter(|_| i < 6) {
        // SAFETY: GIL held; `co` is an exact code object (callers checked PyCode_Check), and
        // the code type's own member table says a C int lives at this offset.
        return Ok(unsafe { *((co.as_ptr() as *const u8).offset(*off) as *const c_int) });
    }
    let name = pyo3::types::PyString::new(co.py(), MEMBER_NAMES[i.min(5)]);
    co.getattr(name)?.extract()
}

/// An object field of a code object ([`MEMBER_NAMES`] index `i` >= 6), a new reference.
pub(crate) fn code_obj<'py>(co: &Bound<'py, PyAny>, i: usize) -> PyResult<Bound<'py, PyAny>> {
    if let Some(Some((_, off))) = member_table().get(i).filter(|_| i >= 6) {
        // SAFETY: GIL held; `co` is an exact code object (callers checked PyCode_Check), and
        // the code type's own member table says an object pointer lives at this offset (a
        // read-only member, set at construction); from_borrowed_ptr takes a new reference.
        let p = unsafe { *((co.as_ptr() as *const u8).offset(*off) as *const *mut ffi::PyObject) };
        if !p.is_null() {
            // SAFETY: a live object the code object holds.
            return Ok(unsafe { Bound::from_borrowed_ptr(co.py(), p) });
        }
    }
    let name = pyo3::types::PyString::new(co.py(), MEMBER_NAMES[i.clamp(6, 12)]);
    co.getattr(name)
}

/// `co_code` of a code object (a new reference, as CPython's marshal takes it).
pub(crate) fn co_code<'py>(co: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: GIL held; `co` is a live code object (the caller checked PyCode_Check);
    // PyCode_GetCode returns a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(co.py(), PyCode_GetCode(co.as_ptr())) }
}

/// Rebuilds `co_localsplusnames` / `co_localspluskinds` from the public attributes, the way
/// the constructor does: locals first (a local that is also a cell is marked LOCAL|CELL in
/// place), then the remaining cells, then the free variables.
pub(crate) fn localsplus<'py>(
    co: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyBytes>)> {
    let py = co.py();
    // SAFETY: GIL held; `co` is a live code object (the caller checked PyCode_Check); each
    // getter returns a new reference (a tuple) or NULL with an exception set.
    let (varnames, cellvars, freevars) = unsafe {
        (
            Bound::from_owned_ptr_or_err(py, PyCode_GetVarnames(co.as_ptr()))?,
            Bound::from_owned_ptr_or_err(py, PyCode_GetCellvars(co.as_ptr()))?,
            Bound::from_owned_ptr_or_err(py, PyCode_GetFreevars(co.as_ptr()))?,
        )
    };
    let varnames = varnames.cast_into::<PyTuple>()?;
    let cellvars = cellvars.cast::<PyTuple>()?;
    let freevars = freevars.cast::<PyTuple>()?;
    if cellvars.is_empty() && freevars.is_empty() {
        // Plain locals only (most functions): the names are `co_varnames` (a new tuple from
        // PyCode_GetVarnames, as a rebuilt one would be), every kind CO_FAST_LOCAL.
        let n = varnames.len();
        let exact = if n > 0 { hidden_kinds(co, n)? } else { None };
        let kinds = exact.unwrap_or_else(|| vec![CO_FAST_LOCAL; n]);
        return Ok((varnames, fresh_bytes(py, &kinds)?));
    }
    let mut names: Vec<Bound<'py, PyAny>> = Vec::with_capacity(varnames.len());
    let mut kinds: Vec<u8> = Vec::with_capacity(varnames.len());
    for n in varnames.iter() {
        names.push(n);
        kinds.push(CO_FAST_LOCAL);
    }
    let nlocals = names.len();
    for c in cellvars.iter() {
        let mut found = None;
        for (j, nm) in names.iter().enumerate().take(nlocals) {
            if nm.is(&c) || nm.eq(&c)? {
                found = Some(j);
                break;
            }
        }
        match found {
            Some(j) => kinds[j] |= CO_FAST_CELL,
            None => {
                names.push(c);
                kinds.push(CO_FAST_CELL);
            }
        }
    }
    for f in freevars.iter() {
        names.push(f);
        kinds.push(CO_FAST_FREE);
    }
    if !kinds.is_empty() {
        if let Some(exact) = hidden_kinds(co, kinds.len())? {
            kinds = exact;
        }
    }
    Ok((PyTuple::new(py, names)?, fresh_bytes(py, &kinds)?))
}

/// A fresh bytes object, as the compiler makes it (`PyBytes::new` would return CPython's shared
/// one-byte singleton for a single local, whose reference count differs).
fn fresh_bytes<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    if b.is_empty() {
        Ok(PyBytes::new(py, b))
    } else {
        PyBytes::new_with(py, b.len(), |dst| {
            dst.copy_from_slice(b);
            Ok(())
        })
    }
}
