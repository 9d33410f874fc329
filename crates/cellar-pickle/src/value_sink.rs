//! The Rust [`Value`] as a [`Sink`] of the one decoder ([`crate::read`]): the sink behind
//! [`crate::loads`], serde's `from_slice`, `cellar pickle show` and `cellar get --decode
//! pickle`.
//!
//! Values are immutable, but a pickle may still modify a list, dict, set or object after it
//! was made (APPEND/SETITEM/BUILD through the memo), so the sink builds a graph of mutable
//! nodes and freezes it into [`Value`]s at STOP with an explicit DFS that keeps shared nodes
//! shared and refuses cycles (a [`Value`] cannot contain itself), so hashing a value that
//! contains itself cannot happen. Fast path: a container placed inside another one is finished
//! in every pickle CPython writes, so it is frozen right away; if a later opcode mutates it
//! after all, the sink fails with [`RESTART`] and [`crate::loads`] decodes again in full graph
//! mode.

use std::sync::Arc;

use cellar_value::{BigInt, Dict, Int, PyStr, Set, Slice, Value};
use num_traits::ToPrimitive;

use crate::error::{ErrorKind, UnpicklingError};
use crate::inert::{Construct, Inert};
use crate::policy::Known;
use crate::read::{DecodeOptions, DEFAULT_MAX_DEPTH};
use crate::registry::{Allowed, Constructor, Registry};
use crate::sink::{Buffer, GlobalRef, Shape, Sink};
use crate::text::{self, DecodeErrors, StringEncoding};

/// A `persistent_load` callback: receives the persistent id, returns the object.
pub type PersistentLoad<'a> = &'a dyn Fn(Value) -> Result<Value, String>;

/// Options of [`crate::loads_with`], mirroring `pickle.loads`' keyword arguments plus the safety
/// limits.
#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Decode globals that the registry does not allow to inert objects (see [`Inert`])
    /// instead of refusing them.
    pub inert: bool,
    /// Map Python 2 global names to Python 3 ones at protocols 0-2 (pickle's `fix_imports`).
    pub fix_imports: bool,
    /// How Python 2 strings (STRING, BINSTRING, SHORT_BINSTRING) decode.
    pub encoding: StringEncoding,
    /// Error handler for `encoding`.
    pub errors: DecodeErrors,
    /// Out-of-band buffers for NEXT_BUFFER (bytes or bytearray values), in order.
    pub buffers: Option<&'a [Value]>,
    /// PERSID / BINPERSID handler; without one those opcodes are refused.
    pub persistent_load: Option<PersistentLoad<'a>>,
    /// Maximum nesting of the decoded value and of MARKs.
    pub max_depth: usize,
    /// Maximum bytes the decoded value may occupy (payloads plus 16 per container item). `None`
    /// means `max(64 * input length, 16 MiB)`.
    pub max_bytes: Option<usize>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            inert: false,
            fix_imports: true,
            encoding: StringEncoding::Ascii,
            errors: DecodeErrors::Strict,
            buffers: None,
            persistent_load: None,
            max_depth: DEFAULT_MAX_DEPTH,
            max_bytes: None,
        }
    }
}

impl LoadOptions<'_> {
    /// The options the decoder loop itself reads (the rest configure the sink).
    pub fn decode_options(&self) -> DecodeOptions {
        DecodeOptions {
            inert: self.inert,
            fix_imports: self.fix_imports,
            encoding: self.encoding,
            errors: self.errors,
            max_depth: self.max_depth,
            max_bytes: self.max_bytes,
        }
    }
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("inert", &self.inert)
            .field("fix_imports", &self.fix_imports)
            .field("encoding", &self.encoding)
            .field("errors", &self.errors)
            .field("buffers", &self.buffers.map(<[Value]>::len))
            .field("persistent_load", &self.persistent_load.is_some())
            .field("max_depth", &self.max_depth)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// The message of the internal error that makes [`crate::loads`] decode again without the
/// eager fast path (a container was mutated after it was frozen early).
pub(crate) const RESTART: &str = "\u{0}restart without eager freezing";

/// Offset of a sink error until the loop locates it.
const UNLOCATED: usize = usize::MAX;

type Res<T> = Result<T, UnpicklingError>;

/// The sink's handle: a finished value (with its nesting depth) or a node of the graph.
#[derive(Clone)]
pub(crate) enum VH {
    V(Value, u32),
    N(u32),
}

struct ObjNode {
    glob: u32,
    construct: Construct,
    args: Vec<VH>,
    kwargs: Option<VH>,
    state: Option<VH>,
    list: Vec<VH>,
    dict: Vec<(VH, VH)>,
}

enum Node {
    List(Vec<VH>),
    /// Keys and values interleaved: k0, v0, k1, v1, ...
    Dict(Vec<VH>),
    /// A dict whose keys and values are all finished values, built in place (the common case;
    /// it becomes `Dict` if a node is ever set in it).
    DictV(Dict),
    Set(Vec<VH>),
    FrozenSet(Vec<VH>),
    Tuple(Vec<VH>),
    Obj(Box<ObjNode>),
    /// Frozen early (fast path): the finished value and its depth. Mutating it afterwards
    /// restarts the decode without the fast path.
    Frozen(Value, u32),
    /// Already frozen (its content moved out).
    Taken,
}

/// A global as the sink keeps it for the objects it describes.
struct GlobInfo {
    module: String,
    name: String,
    ctor: Option<Constructor>,
}

/// Builds [`Value`]s for the decoder.
pub(crate) struct ValueSink<'o> {
    reg: &'o Registry,
    buffers: Option<&'o [Value]>,
    persistent_load: Option<PersistentLoad<'o>>,
    max_depth: usize,
    nodes: Vec<Node>,
    /// Nesting depth of each node as known so far (exact depths are computed when freezing).
    node_depth: Vec<u32>,
    /// Indexed by the loop's global id.
    globs: Vec<Option<GlobInfo>>,
    next_buffer: usize,
    /// Freeze containers as soon as they are placed in another container (see `settle_vec`).
    eager: bool,
}

fn err(msg: impl Into<String>) -> UnpicklingError {
    UnpicklingError::new(ErrorKind::Unpickling, msg, UNLOCATED)
}
fn err_kind(kind: ErrorKind, msg: impl Into<String>) -> UnpicklingError {
    UnpicklingError::new(kind, msg, UNLOCATED)
}
fn restart() -> UnpicklingError {
    err(RESTART)
}
fn recursive() -> UnpicklingError {
    err("recursive structure: the pickle contains an object that contains itself, which cellar values cannot represent")
}
fn hash_err(e: cellar_value::HashError) -> UnpicklingError {
    err_kind(ErrorKind::Type, e.to_string())
}

/// [`crate::loads_with`]: the fast path first, full graph mode if the pickle mutates a
/// container after nesting it.
pub(crate) fn loads_with(
    data: &[u8],
    registry: &Registry,
    opts: &LoadOptions<'_>,
) -> Res<(Value, usize)> {
    let core = opts.decode_options();
    let mut sink = ValueSink::new(registry, opts, true);
    match crate::read::decode(data, &mut sink, &core) {
        Err(e) if e.message == RESTART => {
            let mut sink = ValueSink::new(registry, opts, false);
            crate::read::decode(data, &mut sink, &core)
        }
        r => r,
    }
}

impl<'o> ValueSink<'o> {
    pub(crate) fn new(reg: &'o Registry, opts: &LoadOptions<'o>, eager: bool) -> Self {
        ValueSink {
            reg,
            buffers: opts.buffers,
            persistent_load: opts.persistent_load,
            max_depth: opts.max_depth,
            nodes: Vec::new(),
            node_depth: Vec::new(),
            globs: Vec::new(),
            next_buffer: 0,
            eager,
        }
    }

    fn check_depth(&self, d: u32) -> Res<()> {
        if d as usize > self.max_depth {
            return Err(err(format!(
                "maximum nesting depth exceeded (max_depth = {})",
                self.max_depth
            )));
        }
        Ok(())
    }

    fn item_depth(&self, it: &VH) -> u32 {
        match it {
            VH::V(_, d) => *d,
            VH::N(n) => self.node_depth[*n as usize],
        }
    }
    /// 1 + the deepest of `items`.
    fn items_depth<'i>(&self, items: impl Iterator<Item = &'i VH>) -> u32 {
        1 + items.map(|i| self.item_depth(i)).max().unwrap_or(0)
    }
    /// Raises node `n`'s known depth for new content of depth `d` (content depth + 1).
    fn deepen(&mut self, n: u32, d: u32) -> Res<()> {
        let slot = &mut self.node_depth[n as usize];
        if d > *slot {
            *slot = d;
            self.check_depth(d)?;
        }
        Ok(())
    }

    fn new_node(&mut self, n: Node) -> Res<VH> {
        let idx = u32::try_from(self.nodes.len()).map_err(|_| err("too many objects"))?;
        let d = match &n {
            Node::List(v) | Node::Set(v) | Node::FrozenSet(v) | Node::Tuple(v) | Node::Dict(v) => {
                self.items_depth(v.iter())
            }
            Node::Obj(o) => self.items_depth(o.args.iter().chain(o.kwargs.iter())),
            _ => 1,
        };
        self.check_depth(d)?;
        self.nodes.push(n);
        self.node_depth.push(d);
        Ok(VH::N(idx))
    }

    fn glob(&mut self, g: &GlobalRef<'_, Option<Constructor>>) -> u32 {
        let i = g.id as usize;
        if self.globs.len() <= i {
            self.globs.resize_with(i + 1, || None);
        }
        if self.globs[i].is_none() {
            self.globs[i] = Some(GlobInfo {
                module: g.module.to_owned(),
                name: g.name.to_owned(),
                ctor: g.allowed.cloned().flatten(),
            });
        }
        g.id
    }

    fn obj(
        &mut self,
        g: &GlobalRef<'_, Option<Constructor>>,
        construct: Construct,
        args: Vec<VH>,
        kwargs: Option<VH>,
    ) -> Res<VH> {
        let glob = self.glob(g);
        self.new_node(Node::Obj(Box::new(ObjNode {
            glob,
            construct,
            args,
            kwargs,
            state: None,
            list: Vec::new(),
            dict: Vec::new(),
        })))
    }

    // -----------------------------------------------------------------------------------------
    // eager freezing

    fn frozen_target(&self, n: u32) -> Res<()> {
        if matches!(self.nodes[n as usize], Node::Frozen(..)) {
            return Err(restart());
        }
        Ok(())
    }

    /// Freezes node `c` now if all its content is finished values (an unhashable key fails
    /// here, as CPython fails at the SETITEM).
    fn try_freeze(&mut self, c: u32) -> Res<Option<VH>> {
        let ready = match &self.nodes[c as usize] {
            Node::List(v) | Node::Set(v) | Node::FrozenSet(v) | Node::Dict(v) => {
                v.iter().all(|i| matches!(i, VH::V(..)))
            }
            Node::Frozen(v, d) => return Ok(Some(VH::V(v.clone(), *d))),
            Node::DictV(_) => true,
            _ => false,
        };
        if !ready {
            return Ok(None);
        }
        let (v, d) = self.build_node(c, &[])?;
        self.nodes[c as usize] = Node::Frozen(v.clone(), d);
        Ok(Some(VH::V(v, d)))
    }

    fn settle_vec(&mut self, items: &mut [VH]) -> Res<()> {
        if !self.eager {
            return Ok(());
        }
        for it in items.iter_mut() {
            if let VH::N(c) = *it {
                if let Some(v) = self.try_freeze(c)? {
                    *it = v;
                }
            }
        }
        Ok(())
    }

    /// A dict key or set member that is a node must be hashable as CPython sees it at the
    /// SETITEM / ADDITEMS / FROZENSET: a list, dict or set (or a tuple holding one, however
    /// deep, cycles included) is a TypeError there, never a recursive hash.
    fn check_hashable(&self, it: &VH) -> Res<()> {
        let VH::N(start) = it else {
            return Ok(());
        };
        let mut todo = vec![*start];
        let mut seen = std::collections::HashSet::new();
        while let Some(n) = todo.pop() {
            if !seen.insert(n) {
                continue;
            }
            let kind = match &self.nodes[n as usize] {
                Node::List(_) => "list",
                Node::Dict(_) | Node::DictV(_) => "dict",
                Node::Set(_) => "set",
                Node::Tuple(items) => {
                    todo.extend(items.iter().filter_map(|i| match i {
                        VH::N(c) => Some(*c),
                        _ => None,
                    }));
                    continue;
                }
                _ => continue,
            };
            return Err(err_kind(
                ErrorKind::Type,
                format!("unhashable type: '{kind}'"),
            ));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // freezing the graph into values

    fn children(&self, n: u32, out: &mut Vec<u32>) {
        let mut add = |it: &VH| {
            if let VH::N(c) = it {
                out.push(*c);
            }
        };
        match &self.nodes[n as usize] {
            Node::List(v) | Node::Set(v) | Node::FrozenSet(v) | Node::Tuple(v) | Node::Dict(v) => {
                v.iter().for_each(&mut add)
            }
            Node::Obj(o) => {
                o.args.iter().for_each(&mut add);
                o.kwargs.iter().for_each(&mut add);
                o.state.iter().for_each(&mut add);
                o.list.iter().for_each(&mut add);
                o.dict.iter().for_each(|(k, v)| {
                    add(k);
                    add(v)
                });
            }
            Node::Frozen(..) | Node::DictV(_) | Node::Taken => {}
        }
    }

    fn freeze(&mut self, root: VH) -> Res<Value> {
        let root = match root {
            VH::V(v, _) => return Ok(v),
            VH::N(n) => n,
        };
        let count = self.nodes.len();
        let mut frozen: Vec<Option<(Value, u32)>> = vec![None; count];
        let mut visiting = vec![0u8; count];
        let mut work: Vec<(u32, bool)> = vec![(root, false)];
        let mut kids = Vec::new();
        while let Some((n, expanded)) = work.pop() {
            if expanded {
                let (v, d) = self.build_node(n, &frozen)?;
                self.check_depth(d)?;
                frozen[n as usize] = Some((v, d));
                visiting[n as usize] = 2;
                continue;
            }
            match visiting[n as usize] {
                2 => continue,
                1 => return Err(recursive()),
                _ => {}
            }
            visiting[n as usize] = 1;
            work.push((n, true));
            kids.clear();
            self.children(n, &mut kids);
            for &c in &kids {
                match visiting[c as usize] {
                    1 => return Err(recursive()),
                    0 => work.push((c, false)),
                    _ => {}
                }
            }
        }
        match frozen[root as usize].take() {
            Some((v, _)) => Ok(v),
            None => Err(err("internal error: value not built")),
        }
    }

    fn build_node(&mut self, n: u32, frozen: &[Option<(Value, u32)>]) -> Res<(Value, u32)> {
        let node = std::mem::replace(&mut self.nodes[n as usize], Node::Taken);
        let is_frozen = matches!(node, Node::FrozenSet(_));
        let mut depth = 0u32;
        let val = |it: VH, depth: &mut u32| -> Res<Value> {
            match it {
                VH::V(v, d) => {
                    *depth = (*depth).max(d);
                    Ok(v)
                }
                VH::N(c) => match &frozen.get(c as usize) {
                    Some(Some((v, d))) => {
                        *depth = (*depth).max(*d);
                        Ok(v.clone())
                    }
                    _ => Err(recursive()),
                },
            }
        };
        let v = match node {
            Node::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for it in items {
                    out.push(val(it, &mut depth)?);
                }
                Value::list(out)
            }
            Node::Tuple(items) => {
                let mut out = Vec::with_capacity(items.len());
                for it in items {
                    out.push(val(it, &mut depth)?);
                }
                Value::tuple(out)
            }
            Node::Dict(items) => {
                let mut d = Dict::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    let k = val(k, &mut depth)?;
                    let v = val(v, &mut depth)?;
                    d.insert(k, v).map_err(hash_err)?;
                }
                Value::Dict(Arc::new(d))
            }
            Node::Set(items) | Node::FrozenSet(items) => {
                let mut s = Set::new();
                for it in items {
                    let v = val(it, &mut depth)?;
                    s.insert(v).map_err(hash_err)?;
                }
                if is_frozen {
                    Value::FrozenSet(Arc::new(s))
                } else {
                    Value::Set(Arc::new(s))
                }
            }
            Node::Obj(o) => {
                let o = *o;
                let (module, name, ctor) =
                    match self.globs.get(o.glob as usize).and_then(Option::as_ref) {
                        Some(g) => (
                            g.module.clone(),
                            g.name.clone(),
                            if o.construct != Construct::Call {
                                g.ctor.clone()
                            } else {
                                None
                            },
                        ),
                        None => return Err(err("internal error: unknown global")),
                    };
                let mut args = Vec::with_capacity(o.args.len());
                for it in o.args {
                    args.push(val(it, &mut depth)?);
                }
                let kwargs = match o.kwargs {
                    Some(k) => val(k, &mut depth)?,
                    None if o.construct == Construct::NewObjEx => {
                        Value::dict([]).unwrap_or(Value::None)
                    }
                    None => Value::None,
                };
                let state = match o.state {
                    Some(s) => val(s, &mut depth)?,
                    None => Value::None,
                };
                let mut listitems = Vec::with_capacity(o.list.len());
                for it in o.list {
                    listitems.push(val(it, &mut depth)?);
                }
                let mut dictitems = Vec::with_capacity(o.dict.len());
                for (k, v) in o.dict {
                    let k = val(k, &mut depth)?;
                    let v = val(v, &mut depth)?;
                    dictitems.push((k, v));
                }
                let inert = Inert {
                    module,
                    name,
                    construct: o.construct,
                    args: Value::tuple(args),
                    kwargs,
                    state,
                    listitems,
                    dictitems,
                };
                match ctor {
                    Some(f) => f(&inert).map_err(err)?,
                    None => inert.to_value(),
                }
            }
            Node::Frozen(v, d) => {
                self.nodes[n as usize] = Node::Frozen(v.clone(), d);
                return Ok((v, d));
            }
            Node::DictV(d) => {
                return Ok((Value::Dict(Arc::new(d)), self.node_depth[n as usize].max(1)));
            }
            Node::Taken => return Err(err("internal error: node frozen twice")),
        };
        Ok((v, depth + 1))
    }

    fn value_shape(v: &Value) -> Shape {
        match v {
            Value::None => Shape::None,
            Value::Bool(b) => Shape::Bool(*b),
            Value::Int(Int::Small(i)) => Shape::Int(Some(*i as f64)),
            Value::Int(Int::Big(b)) => Shape::Int(b.to_f64().filter(|f| f.is_finite())),
            Value::Float(f) => Shape::Float(*f),
            Value::Str(_) => Shape::Str,
            Value::Bytes(_) => Shape::Bytes,
            Value::ByteArray(_) => Shape::ByteArray,
            Value::Tuple(t) => Shape::Tuple(t.len()),
            Value::List(_) => Shape::List,
            Value::Dict(d) => Shape::Dict(d.len()),
            Value::Set(_) => Shape::Set,
            Value::FrozenSet(_) => Shape::FrozenSet,
            _ => Shape::Other,
        }
    }
}

impl<'o> Sink for ValueSink<'o> {
    type Handle = VH;
    type Global = Option<Constructor>;
    type Output = Value;
    type Error = UnpicklingError;

    fn locate(&self, mut e: UnpicklingError, offset: usize) -> UnpicklingError {
        if e.offset == UNLOCATED {
            e.offset = offset;
        }
        e
    }

    fn resolve(&mut self, module: &str, name: &str) -> Res<Option<Option<Constructor>>> {
        Ok(match self.reg.lookup(module, name) {
            Some(Allowed::Construct(f)) => Some(Some(f.clone())),
            Some(Allowed::Inert) => Some(None),
            None => None,
        })
    }

    fn extension(&self, code: i32) -> Option<(String, String)> {
        self.reg
            .extension(code)
            .map(|(m, n)| (m.to_owned(), n.to_owned()))
    }

    fn registry(&self) -> Option<&Registry> {
        Some(self.reg)
    }

    fn none(&mut self) -> Res<VH> {
        Ok(VH::V(Value::None, 0))
    }
    fn bool(&mut self, v: bool) -> Res<VH> {
        Ok(VH::V(Value::Bool(v), 0))
    }
    fn int(&mut self, v: i64) -> Res<VH> {
        Ok(VH::V(Value::int(v), 0))
    }
    fn big_int(&mut self, le: &[u8]) -> Res<VH> {
        Ok(VH::V(Value::bigint(BigInt::from_signed_bytes_le(le)), 0))
    }
    fn float(&mut self, v: f64) -> Res<VH> {
        Ok(VH::V(Value::Float(v), 0))
    }
    fn complex(&mut self, re: f64, im: f64) -> Res<VH> {
        Ok(VH::V(Value::Complex(re, im), 0))
    }
    fn str_utf8(&mut self, b: &[u8]) -> Res<VH> {
        let s = PyStr::from_utf8_surrogatepass(b)
            .map_err(|e| err_kind(ErrorKind::UnicodeDecode, e.to_string()))?;
        Ok(VH::V(Value::from(s), 0))
    }
    fn str(&mut self, s: PyStr) -> Res<VH> {
        Ok(VH::V(Value::from(s), 0))
    }
    fn py2_string(&mut self, raw: &[u8], enc: StringEncoding, errors: DecodeErrors) -> Res<VH> {
        let v = if enc == StringEncoding::Bytes {
            Value::Bytes(raw.into())
        } else {
            let s = text::decode_py2(raw, enc, errors)
                .map_err(|m| err_kind(ErrorKind::UnicodeDecode, m))?;
            Value::from(s)
        };
        Ok(VH::V(v, 0))
    }
    fn bytes(&mut self, b: &[u8]) -> Res<VH> {
        Ok(VH::V(Value::Bytes(b.into()), 0))
    }
    fn bytearray(&mut self, b: &[u8]) -> Res<VH> {
        Ok(VH::V(Value::ByteArray(Arc::new(b.to_vec())), 0))
    }
    fn constant(&mut self, which: Known) -> Res<VH> {
        Ok(VH::V(
            match which {
                Known::Ellipsis => Value::Ellipsis,
                Known::StopIteration => Value::StopIteration,
                _ => Inert::global("builtins", "NotImplemented").to_value(),
            },
            0,
        ))
    }
    fn slice(&mut self, start: VH, stop: VH, step: VH) -> Res<VH> {
        let mut d = 0;
        let mut take = |h: VH| match h {
            VH::V(v, dd) => {
                d = d.max(dd);
                Ok(v)
            }
            VH::N(_) => Err(err("unsupported arguments for builtins.slice")),
        };
        let (start, stop, step) = (take(start)?, take(stop)?, take(step)?);
        self.check_depth(d + 1)?;
        Ok(VH::V(
            Value::Slice(Arc::new(Slice { start, stop, step })),
            d + 1,
        ))
    }

    fn tuple(&mut self, mut items: Vec<VH>) -> Res<VH> {
        self.settle_vec(&mut items)?;
        if items.iter().all(|i| matches!(i, VH::V(..))) {
            let mut d = 0;
            let vals: Vec<Value> = items
                .into_iter()
                .map(|i| match i {
                    VH::V(v, dd) => {
                        d = d.max(dd);
                        v
                    }
                    VH::N(_) => Value::None,
                })
                .collect();
            self.check_depth(d + 1)?;
            return Ok(VH::V(Value::tuple(vals), d + 1));
        }
        self.new_node(Node::Tuple(items))
    }
    fn list(&mut self, mut items: Vec<VH>) -> Res<VH> {
        self.settle_vec(&mut items)?;
        self.new_node(Node::List(items))
    }
    fn dict(&mut self, mut kv: Vec<VH>) -> Res<VH> {
        if kv.is_empty() {
            return self.new_node(Node::DictV(Dict::new()));
        }
        self.settle_vec(&mut kv)?;
        self.new_node(Node::Dict(kv))
    }
    fn set(&mut self, mut items: Vec<VH>) -> Res<VH> {
        self.settle_vec(&mut items)?;
        self.new_node(Node::Set(items))
    }
    fn frozenset(&mut self, mut items: Vec<VH>) -> Res<VH> {
        for it in &items {
            self.check_hashable(it)?;
        }
        self.settle_vec(&mut items)?;
        self.new_node(Node::FrozenSet(items))
    }

    fn append(&mut self, target: &VH, items: &mut Vec<VH>) -> Res<bool> {
        let VH::N(n) = *target else {
            return Ok(false);
        };
        self.frozen_target(n)?;
        self.settle_vec(items)?;
        // (settling may have frozen the target itself: a self-insertion, i.e. recursion)
        self.frozen_target(n)?;
        let d = self.items_depth(items.iter());
        self.deepen(n, d)?;
        match &mut self.nodes[n as usize] {
            // (an empty list takes the buffer itself: no second copy of a large APPENDS)
            Node::List(l) if l.is_empty() => std::mem::swap(l, items),
            Node::List(l) => l.append(items),
            Node::Obj(o) => o.list.append(items),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn set_items(&mut self, target: &VH, kv: &mut Vec<VH>) -> Res<bool> {
        for k in kv.iter().step_by(2) {
            self.check_hashable(k)?;
        }
        let VH::N(n) = *target else {
            return Ok(false);
        };
        self.frozen_target(n)?;
        self.settle_vec(kv)?;
        self.frozen_target(n)?;
        let d = self.items_depth(kv.iter());
        self.deepen(n, d)?;
        if let Node::DictV(_) = &self.nodes[n as usize] {
            if kv.iter().all(|i| matches!(i, VH::V(..))) {
                if let Node::DictV(dict) = &mut self.nodes[n as usize] {
                    let mut it = kv.drain(..);
                    while let (Some(VH::V(k, _)), Some(VH::V(v, _))) = (it.next(), it.next()) {
                        dict.insert(k, v).map_err(hash_err)?;
                    }
                }
                return Ok(true);
            }
            // A node goes in: fall back to the item list.
            let depth = self.node_depth[n as usize].saturating_sub(1);
            if let Node::DictV(dict) = &self.nodes[n as usize] {
                let items: Vec<VH> = dict
                    .iter()
                    .flat_map(|(k, v)| [VH::V(k.clone(), depth), VH::V(v.clone(), depth)])
                    .collect();
                self.nodes[n as usize] = Node::Dict(items);
            }
        }
        match &mut self.nodes[n as usize] {
            Node::Dict(d) if d.is_empty() => std::mem::swap(d, kv),
            Node::Dict(d) => d.append(kv),
            Node::Obj(o) => {
                let mut it = kv.drain(..);
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    o.dict.push((k, v));
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn add_items(&mut self, target: &VH, items: &mut Vec<VH>) -> Res<bool> {
        self.settle_vec(items)?;
        for it in items.iter() {
            self.check_hashable(it)?;
        }
        let VH::N(n) = *target else {
            return Ok(false);
        };
        self.frozen_target(n)?;
        let d = self.items_depth(items.iter());
        self.deepen(n, d)?;
        match &mut self.nodes[n as usize] {
            Node::Set(s) if s.is_empty() => std::mem::swap(s, items),
            Node::Set(s) => s.append(items),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn shape(&self, h: &VH) -> Shape {
        match h {
            VH::V(v, _) => Self::value_shape(v),
            VH::N(n) => match &self.nodes[*n as usize] {
                Node::List(_) => Shape::List,
                Node::Dict(items) => Shape::Dict(items.len() / 2),
                Node::DictV(d) => Shape::Dict(d.len()),
                Node::Set(_) => Shape::Set,
                Node::FrozenSet(_) => Shape::FrozenSet,
                Node::Tuple(items) => Shape::Tuple(items.len()),
                Node::Frozen(v, _) => Self::value_shape(v),
                Node::Obj(_) | Node::Taken => Shape::Other,
            },
        }
    }

    fn items(&self, h: &VH) -> Option<Vec<VH>> {
        let of_value = |v: &Value, d: u32| match v {
            Value::Tuple(t) | Value::List(t) => Some(
                t.iter()
                    .map(|v| VH::V(v.clone(), d.saturating_sub(1)))
                    .collect(),
            ),
            Value::Set(t) | Value::FrozenSet(t) => Some(
                t.iter()
                    .map(|v| VH::V(v.clone(), d.saturating_sub(1)))
                    .collect(),
            ),
            _ => None,
        };
        match h {
            VH::V(v, d) => of_value(v, *d),
            VH::N(n) => match &self.nodes[*n as usize] {
                Node::List(l) | Node::Tuple(l) | Node::Set(l) | Node::FrozenSet(l) => {
                    Some(l.clone())
                }
                Node::Frozen(v, d) => of_value(v, *d),
                _ => None,
            },
        }
    }

    fn text(&self, h: &VH) -> Option<PyStr> {
        match h {
            VH::V(Value::Str(s), _) => Some(PyStr::clone(s)),
            _ => None,
        }
    }

    fn data(&self, h: &VH) -> Option<Vec<u8>> {
        match h {
            VH::V(Value::Bytes(b), _) => Some(b.to_vec()),
            VH::V(Value::ByteArray(b), _) => Some(b.to_vec()),
            _ => None,
        }
    }

    fn inert_name(&self, h: &VH) -> Option<(String, String)> {
        match h {
            VH::V(Value::Object(o), _) => Some((o.module.clone(), o.name.clone())),
            VH::N(n) => match &self.nodes[*n as usize] {
                Node::Obj(o) => self
                    .globs
                    .get(o.glob as usize)
                    .and_then(Option::as_ref)
                    .map(|g| (g.module.clone(), g.name.clone())),
                _ => None,
            },
            _ => None,
        }
    }

    fn global(&mut self, g: GlobalRef<'_, Option<Constructor>>) -> Res<VH> {
        let inert = Inert::global(g.module, g.name);
        let v = match g.allowed {
            Some(Some(f)) => f(&inert).map_err(err)?,
            _ => inert.to_value(),
        };
        Ok(VH::V(v, 0))
    }

    fn object(
        &mut self,
        cls: GlobalRef<'_, Option<Constructor>>,
        construct: Construct,
        args: Vec<VH>,
        kwargs: Option<VH>,
    ) -> Res<VH> {
        self.obj(&cls, construct, args, kwargs)
    }

    fn reconstruct(
        &mut self,
        cls: GlobalRef<'_, Option<Constructor>>,
        base: GlobalRef<'_, Option<Constructor>>,
        state: VH,
    ) -> Res<VH> {
        // The base class stays a name (an inert global), so it is written back the same way.
        let base = VH::V(Inert::global(base.module, base.name).to_value(), 0);
        self.obj(&cls, Construct::Reconstructor, vec![base, state], None)
    }

    fn range(&mut self, g: GlobalRef<'_, Option<Constructor>>, args: Vec<VH>) -> Res<VH> {
        // The value model has no range: an inert `builtins.range(...)` description.
        self.obj(&g, Construct::Reduce, args, None)
    }

    fn inert_call(
        &mut self,
        g: GlobalRef<'_, Option<Constructor>>,
        callee: VH,
        args: Vec<VH>,
    ) -> Res<VH> {
        let mut items = Vec::with_capacity(args.len() + 1);
        items.push(callee);
        items.extend(args);
        self.obj(&g, Construct::Call, items, None)
    }

    fn build(&mut self, target: &VH, state: VH) -> Res<bool> {
        let VH::N(n) = *target else {
            return Ok(false);
        };
        self.frozen_target(n)?;
        match &mut self.nodes[n as usize] {
            Node::Obj(o) => {
                o.state = Some(state);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn persistent_load(&mut self, pid: VH) -> Res<Option<VH>> {
        let Some(f) = self.persistent_load else {
            return Ok(None);
        };
        let pid = self.freeze(pid)?;
        let v = f(pid).map_err(err)?;
        Ok(Some(VH::V(v, 1)))
    }

    fn next_buffer(&mut self) -> Res<Buffer<VH>> {
        let Some(bufs) = self.buffers else {
            return Ok(Buffer::NotGiven);
        };
        let Some(b) = bufs.get(self.next_buffer) else {
            return Ok(Buffer::Exhausted);
        };
        self.next_buffer += 1;
        Ok(Buffer::Next(VH::V(b.clone(), 0)))
    }

    fn readonly(&mut self, h: VH) -> Res<VH> {
        Ok(match &h {
            VH::V(Value::ByteArray(b), d) => VH::V(Value::Bytes(b[..].into()), *d),
            _ => h,
        })
    }

    fn finish(&mut self, root: VH) -> Res<Value> {
        self.freeze(root)
    }
}
