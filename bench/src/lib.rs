//! Benchmarks live in `src/bin/`; each compares against a peer or a physical limit in the same run.
