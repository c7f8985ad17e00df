//! Service hooks tests.
