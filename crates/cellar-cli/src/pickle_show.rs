//! `cellar pickle show`: a pickle decoded safely (nothing imported or run) and printed as
//! Python literals, with objects of unknown classes shown inertly as
//! `module.Name(args...)` followed by what the pickle applies to them
//! (`.__setstate__(state)`, `.extend([...])`, `.update({...})`); `--ops` lists the opcodes like
//! `pickletools.dis`.

use anyhow::Result;

use cellar::pickle::{self, Construct, Inert, LoadOptions, Registry};
use cellar::value::{repr, Value};

/// Decodes `data` with every global kept inert.
pub fn decode(data: &[u8]) -> Result<Value> {
    let opts = LoadOptions {
        inert: true,
        ..LoadOptions::default()
    };
    pickle::loads(data, &Registry::default(), &opts).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The value as Python literals, inert objects as calls.
pub fn show(v: &Value) -> String {
    let mut out = String::new();
    write(&mut out, v);
    out
}

fn seq(out: &mut String, items: &[Value]) {
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write(out, x);
    }
}

fn write(out: &mut String, v: &Value) {
    if let Some(obj) = Inert::from_value(v) {
        return write_inert(out, &obj);
    }
    match v {
        Value::Tuple(t) => {
            out.push('(');
            seq(out, t);
            if t.len() == 1 {
                out.push(',');
            }
            out.push(')');
        }
        Value::List(l) => {
            out.push('[');
            seq(out, l);
            out.push(']');
        }
        Value::Dict(d) => {
            out.push('{');
            for (i, (k, x)) in d.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(out, k);
                out.push_str(": ");
                write(out, x);
            }
            out.push('}');
        }
        Value::Set(s) | Value::FrozenSet(s) if !s.is_empty() => {
            let frozen = matches!(v, Value::FrozenSet(_));
            out.push_str(if frozen { "frozenset({" } else { "{" });
            let items: Vec<Value> = s.iter().cloned().collect();
            seq(out, &items);
            out.push_str(if frozen { "})" } else { "}" });
        }
        other => out.push_str(&repr(other)),
    }
}

fn write_inert(out: &mut String, obj: &Inert) {
    out.push_str(&obj.qualified_name());
    if obj.construct != Construct::Global {
        out.push('(');
        let mut first = true;
        if let Value::Tuple(args) = &obj.args {
            for a in args.iter() {
                if !first {
                    out.push_str(", ");
                }
                first = false;
                write(out, a);
            }
        } else {
            out.push('*');
            write(out, &obj.args);
            first = false;
        }
        if let Value::Dict(kw) = &obj.kwargs {
            for (k, x) in kw.iter() {
                if !first {
                    out.push_str(", ");
                }
                first = false;
                match k {
                    Value::Str(s) if s.as_str().is_some() => {
                        out.push_str(s.as_str().unwrap_or_default())
                    }
                    other => write(out, other),
                }
                out.push('=');
                write(out, x);
            }
        }
        out.push(')');
    }
    if !matches!(obj.state, Value::None) {
        out.push_str(".__setstate__(");
        write(out, &obj.state);
        out.push(')');
    }
    if !obj.listitems.is_empty() {
        out.push_str(".extend([");
        seq(out, &obj.listitems);
        out.push_str("])");
    }
    if !obj.dictitems.is_empty() {
        out.push_str(".update({");
        for (i, (k, x)) in obj.dictitems.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write(out, k);
            out.push_str(": ");
            write(out, x);
        }
        out.push_str("})");
    }
}

/// `pickletools.dis`-style listing.
pub fn ops(data: &[u8]) -> Result<String> {
    let ops = pickle::disassemble(data).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = String::new();
    for op in ops {
        let code = if op.code.is_ascii_graphic() {
            format!("{:?}", op.code as char)
        } else {
            format!("'\\x{:02x}'", op.code)
        };
        match op.arg {
            Some(a) => out.push_str(&format!(
                "{:5}: {:<6} {:<16} {a}\n",
                op.offset, code, op.name
            )),
            None => out.push_str(&format!("{:5}: {:<6} {}\n", op.offset, code, op.name)),
        }
    }
    Ok(out)
}
