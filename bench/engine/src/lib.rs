//! Benchmark harness for cellar's native engine. The harness itself is the
//! `engine-bench` binary (feature `peers`); this library is intentionally empty so
//! that building the workspace never compiles the peer engines.
