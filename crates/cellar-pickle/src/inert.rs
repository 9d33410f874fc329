//! Inert objects: class instances (and other globals) that a pickle describes but that were not
//! rebuilt, kept as data for inspection and written back to an equivalent pickle.
//!
//! cellar's [`Value`] has no object variant, so an inert object travels inside plain values
//! with an unambiguous encoding: a 9-tuple whose first item is a *marker code object*
//! (`<code cellar.pickle.Inert>`). Code objects cannot be pickled by CPython, so no value
//! CPython can pickle (and no value cellar's decoder produces otherwise) has that shape; the
//! encoding can never be mistaken for data. Use [`Inert::from_value`] / [`Inert::to_value`]
//! (or [`Inert::is_inert`]) rather than the tuple layout, which is documented in docs/pickle.md.

use std::sync::{Arc, OnceLock};

use cellar_value::{Code, Value};

/// How the pickle created the object (which opcode or pattern), so it can be written back the
/// same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Construct {
    /// Just the global itself (a class or function used as a value): `module.name`.
    Global,
    /// `module.name(*args)`: REDUCE, INST or OBJ.
    Reduce,
    /// `cls.__new__(cls, *args)`: NEWOBJ (or `copyreg.__newobj__`).
    NewObj,
    /// `cls.__new__(cls, *args, **kwargs)`: NEWOBJ_EX (or `copyreg.__newobj_ex__`, or the
    /// `functools.partial(cls.__new__, cls, *args, **kwargs)` form of protocols 2-3).
    NewObjEx,
    /// `copyreg._reconstructor(cls, base, state)`, how CPython writes instances at protocols
    /// 0-1: `args` is `(base, base_state)` with `base` an inert global (`builtins.object` with
    /// state `None` for plain classes, `builtins.list` / `builtins.dict` with the items for
    /// list and dict subclasses).
    Reconstructor,
}

impl Construct {
    /// The name used in the value encoding.
    pub fn as_str(self) -> &'static str {
        match self {
            Construct::Global => "global",
            Construct::Reduce => "reduce",
            Construct::NewObj => "newobj",
            Construct::NewObjEx => "newobj_ex",
            Construct::Reconstructor => "reconstructor",
        }
    }
    fn parse(s: &str) -> Option<Construct> {
        Some(match s {
            "global" => Construct::Global,
            "reduce" => Construct::Reduce,
            "newobj" => Construct::NewObj,
            "newobj_ex" => Construct::NewObjEx,
            "reconstructor" => Construct::Reconstructor,
            _ => return None,
        })
    }
}

/// An object described by a pickle: its global, how it is constructed, and what is applied
/// afterwards (BUILD state, APPENDS items for list subclasses, SETITEMS items for dict
/// subclasses).
#[derive(Debug, Clone)]
pub struct Inert {
    /// The global's module (`__module__`), after fix_imports mapping.
    pub module: String,
    /// The global's (qualified) name.
    pub name: String,
    /// How the object is created.
    pub construct: Construct,
    /// Positional arguments (a tuple; empty for [`Construct::Global`]).
    pub args: Value,
    /// Keyword arguments (a dict) for [`Construct::NewObjEx`], else `None`.
    pub kwargs: Value,
    /// The BUILD state (`None` if there was no BUILD): usually the instance `__dict__`, or
    /// `(dict or None, slots_dict)` for slotted classes, or whatever `__getstate__` returned.
    pub state: Value,
    /// Items appended to the object (list subclasses).
    pub listitems: Vec<Value>,
    /// Items set on the object (dict subclasses), in order.
    pub dictitems: Vec<(Value, Value)>,
}

const MARKER_NAME: &str = "cellar.pickle.Inert";

fn marker() -> Value {
    static MARKER: OnceLock<Value> = OnceLock::new();
    MARKER
        .get_or_init(|| {
            let empty_bytes = Value::bytes(b"");
            let empty_tuple = Value::tuple(Vec::new());
            Value::Code(Arc::new(Code {
                argcount: 0,
                posonlyargcount: 0,
                kwonlyargcount: 0,
                stacksize: 0,
                flags: 0,
                code: empty_bytes.clone(),
                consts: empty_tuple.clone(),
                names: empty_tuple.clone(),
                localsplusnames: empty_tuple,
                localspluskinds: empty_bytes.clone(),
                filename: Value::str("<cellar.pickle>"),
                name: Value::str(MARKER_NAME),
                qualname: Value::str(MARKER_NAME),
                firstlineno: 0,
                linetable: empty_bytes.clone(),
                exceptiontable: empty_bytes,
            }))
        })
        .clone()
}

fn is_marker(v: &Value) -> bool {
    match v {
        Value::Code(c) => {
            matches!(&c.name, Value::Str(s) if s.as_bytes() == MARKER_NAME.as_bytes())
                && matches!(&c.filename, Value::Str(s) if s.as_bytes() == b"<cellar.pickle>")
        }
        _ => false,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => s.as_str().map(str::to_owned),
        _ => None,
    }
}

impl Inert {
    /// A reference to a global (a class or function used as a value).
    pub fn global(module: &str, name: &str) -> Inert {
        Inert::new(module, name, Construct::Global, Value::tuple(Vec::new()))
    }

    /// An object created by `construct` with positional `args` (a tuple), no state or items.
    pub fn new(module: &str, name: &str, construct: Construct, args: Value) -> Inert {
        Inert {
            module: module.to_owned(),
            name: name.to_owned(),
            construct,
            args,
            kwargs: Value::None,
            state: Value::None,
            listitems: Vec::new(),
            dictitems: Vec::new(),
        }
    }

    /// `module.name`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.module, self.name)
    }

    /// Whether `v` is the value encoding of an inert object.
    pub fn is_inert(v: &Value) -> bool {
        matches!(v, Value::Tuple(t) if t.len() == 9 && is_marker(&t[0]))
    }

    /// Decodes the value encoding; `None` if `v` is not an inert object.
    pub fn from_value(v: &Value) -> Option<Inert> {
        let Value::Tuple(t) = v else { return None };
        if t.len() != 9 || !is_marker(&t[0]) {
            return None;
        }
        let construct = Construct::parse(&text(&t[3])?)?;
        let listitems = match &t[7] {
            Value::List(l) => l.to_vec(),
            _ => return None,
        };
        let mut dictitems = Vec::new();
        match &t[8] {
            Value::List(l) => {
                for pair in l.iter() {
                    match pair {
                        Value::Tuple(p) if p.len() == 2 => {
                            dictitems.push((p[0].clone(), p[1].clone()))
                        }
                        _ => return None,
                    }
                }
            }
            _ => return None,
        }
        Some(Inert {
            module: text(&t[1])?,
            name: text(&t[2])?,
            construct,
            args: t[4].clone(),
            kwargs: t[5].clone(),
            state: t[6].clone(),
            listitems,
            dictitems,
        })
    }

    /// The value encoding (see the module docs).
    pub fn to_value(&self) -> Value {
        Value::tuple(vec![
            marker(),
            Value::str(&self.module),
            Value::str(&self.name),
            Value::str(self.construct.as_str()),
            self.args.clone(),
            self.kwargs.clone(),
            self.state.clone(),
            Value::list(self.listitems.clone()),
            Value::list(
                self.dictitems
                    .iter()
                    .map(|(k, v)| Value::tuple(vec![k.clone(), v.clone()]))
                    .collect(),
            ),
        ])
    }
}
