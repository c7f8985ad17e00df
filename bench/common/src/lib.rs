//! Shared helpers for the benchmarks in `bench/*`: percentiles and result rows for BENCHMARKS.md.
