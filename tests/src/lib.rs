//! Shared helpers for end-to-end tests that start the real `portico` binary.
