//! Service registry strategy (to be written).
