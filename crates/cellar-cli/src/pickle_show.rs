//! `cellar pickle show`: a pickle decoded safely (nothing imported or run) and printed as
//! Python literals, with objects of unknown classes shown inertly as
//! `module.Name(args...)` followed by what the pickle applies to them
//! (`.__setstate__(state)`, `.extend([...])`, `.update({...})`); `--ops` lists the opcodes like
//! `pickletools.dis`; `--globals` lists every global it names and what loading it would need.

use anyhow::Result;

use cellar::pickle::{self, LoadOptions, Registry};
use cellar::value::{repr, Value};

/// Decodes `data` with every global kept inert.
pub fn decode(data: &[u8]) -> Result<Value> {
    let opts = LoadOptions {
        inert: true,
        ..LoadOptions::default()
    };
    pickle::loads(data, &Registry::default(), &opts).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The value as Python literals, inert objects as calls (`cellar_value::repr` prints
/// `Value::Object` that way).
pub fn show(v: &Value) -> String {
    repr(v)
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

/// `--globals`: one line per global the pickle names (`cellar_pickle::globals_of`), then the
/// error that stopped the scan early, if any.
pub fn globals(data: &[u8]) -> String {
    let report = pickle::globals_of(data, &Registry::default(), true);
    let mut out = String::new();
    for g in &report.globals {
        out.push_str(&g.describe());
        out.push('\n');
    }
    if report.globals.is_empty() {
        out.push_str("(no globals)\n");
    }
    if let Some(e) = report.error {
        out.push_str(&format!("(scan stopped: {e})\n"));
    }
    out
}
