//! Extracts every ```rust block of README.md and docs/*.md into `$OUT_DIR/examples.rs`: each block
//! becomes a module (it must be a whole program with `fn main`, exactly as a user would paste it
//! into `src/main.rs`) and a `#[test]` that runs its `main` in a scratch directory. Blocks tagged
//! ```rust,ignore are fragments and are not compiled.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets this")).join("../..");
    let mut docs = vec![root.join("README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    more.sort();
    docs.extend(more);
    println!("cargo:rerun-if-changed={}", root.join("docs").display());

    let mut out = String::new();
    let mut count = 0;
    for doc in &docs {
        println!("cargo:rerun-if-changed={}", doc.display());
        let name = doc.strip_prefix(&root).unwrap_or(doc).display().to_string();
        let text = std::fs::read_to_string(doc).expect("readable doc");
        for (line, block) in rust_blocks(&text) {
            assert!(
                block.contains("fn main()"),
                "{name}:{line}: a ```rust block must be a whole program with `fn main()` (or be \
                 tagged ```rust,ignore)"
            );
            let ident = format!(
                "{}_line_{line}",
                name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                    .to_lowercase()
            );
            writeln!(
                out,
                "#[allow(unused_imports, dead_code)]\nmod {ident} {{\n// {name}:{line}\n{block}\n\
                 #[test]\nfn runs() {{ crate::run_in_scratch(\"{name}:{line}\", main) }}\n}}\n"
            )
            .expect("write to a String");
            count += 1;
        }
    }
    assert!(count > 0, "no ```rust blocks found in {}", root.display());
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets this")).join("examples.rs");
    std::fs::write(dest, out).expect("write examples.rs");
}

/// (first line number, text) of each ```rust block that is meant to compile.
fn rust_blocks(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        let mut first = None;
        for (i, l) in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            first.get_or_insert(i + 1);
            body.push_str(l);
            body.push('\n');
        }
        let tags: Vec<&str> = info.split([',', ' ']).map(str::trim).collect();
        if tags.first() == Some(&"rust") && !tags.contains(&"ignore") {
            found.push((first.unwrap_or(0), body));
        }
    }
    found
}
