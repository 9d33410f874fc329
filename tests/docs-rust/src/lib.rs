//! No library: this package exists for its build script and `tests/examples.rs`, which compile
//! and run every Rust example of README.md and docs/*.md.
