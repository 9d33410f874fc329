//! The inert object: a class instance (or other global) that a pickle describes but that was
//! not rebuilt, kept as plain data — the global's name, how the pickle creates it, and what it
//! applies afterwards. cellar's pickle decoder produces it for globals outside its registry
//! (when asked), its encoder writes it back to an equivalent pickle, and the CLI prints it.

use crate::value::Value;

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
    /// `func(*args)` where `func` is itself an inert object (not a global): `args[0]` is the
    /// callee, the rest its arguments (`getattr(x, 'system')('id')` in an inspected pickle).
    Call,
}

impl Construct {
    /// A short name: `global`, `reduce`, `newobj`, `newobj_ex`, `reconstructor`, `call`.
    pub fn as_str(self) -> &'static str {
        match self {
            Construct::Global => "global",
            Construct::Reduce => "reduce",
            Construct::NewObj => "newobj",
            Construct::NewObjEx => "newobj_ex",
            Construct::Reconstructor => "reconstructor",
            Construct::Call => "call",
        }
    }
}

/// An object described by a pickle: its global, how it is constructed, and what is applied
/// afterwards (BUILD state, APPENDS items for list subclasses, SETITEMS items for dict
/// subclasses). `Value::Object` holds one.
#[derive(Debug, Clone)]
pub struct Object {
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

impl Object {
    /// A reference to a global (a class or function used as a value).
    pub fn global(module: &str, name: &str) -> Object {
        Object::new(module, name, Construct::Global, Value::tuple(Vec::new()))
    }

    /// An object created by `construct` with positional `args` (a tuple), no state or items.
    pub fn new(module: &str, name: &str, construct: Construct, args: Value) -> Object {
        Object {
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

    /// Whether `v` is an inert object.
    pub fn is_inert(v: &Value) -> bool {
        matches!(v, Value::Object(_))
    }

    /// The object inside `v`, if `v` is one.
    pub fn from_value(v: &Value) -> Option<Object> {
        match v {
            Value::Object(o) => Some((**o).clone()),
            _ => None,
        }
    }

    /// This object as a [`Value`].
    pub fn to_value(&self) -> Value {
        Value::Object(std::sync::Arc::new(self.clone()))
    }

    /// Every value the object holds (args, kwargs, state, items), for traversals.
    pub fn children(&self) -> impl Iterator<Item = &Value> {
        [&self.args, &self.kwargs, &self.state]
            .into_iter()
            .chain(self.listitems.iter())
            .chain(self.dictitems.iter().flat_map(|(k, v)| [k, v]))
    }

    pub(crate) fn fields_eq(&self, other: &Object, eq: impl Fn(&Value, &Value) -> bool) -> bool {
        self.module == other.module
            && self.name == other.name
            && self.construct == other.construct
            && self.listitems.len() == other.listitems.len()
            && self.dictitems.len() == other.dictitems.len()
            && self.children().zip(other.children()).all(|(a, b)| eq(a, b))
    }

    /// Moves the held values out (for the iterative drop of deep values).
    pub(crate) fn drain_into(&mut self, out: &mut Vec<Value>) {
        for f in [&mut self.args, &mut self.kwargs, &mut self.state] {
            out.push(std::mem::replace(f, Value::None));
        }
        out.append(&mut self.listitems);
        for (k, v) in self.dictitems.drain(..) {
            out.push(k);
            out.push(v);
        }
    }
}
