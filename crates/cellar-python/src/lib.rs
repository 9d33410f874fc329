//! Python bindings for cellar (work in progress).
