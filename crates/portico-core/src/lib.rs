//! The pure core of portico: Kubernetes Service-networking semantics as plain functions.
//!
//! Owns: field errors, label and field selectors, object and Service validation, Service
//! defaulting and allocation decisions, the EndpointSlice reconciler, the endpoint-selection
//! plan shared by both data planes, and the kubelet's Service environment variables.
//! Must not: do I/O of any kind (no sockets, files, clocks or randomness it was not handed),
//! so every rule is testable case by case with tables.

pub mod duration;
pub mod endpointslice;
pub mod envvars;
pub mod field;
pub mod plan;
pub mod selector;
pub mod service;
pub mod validation;
