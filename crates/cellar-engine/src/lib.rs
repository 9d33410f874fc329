//! cellar's native storage engine (work in progress: see docs/engine-format.md).
