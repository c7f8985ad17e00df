//! The Kubernetes API server for Service networking: discovery, OpenAPI, CRUD, patch, watch,
//! Tables and authentication over HTTPS, on top of a [`portico_store::Store`].
//!
//! Owns: the HTTP surface and wire compatibility with kube-apiserver, generic object storage
//! semantics, and the per-kind strategies (Service allocation lives in `service`).
//! Must not: run controllers or data-plane logic; those talk to it only through the API.

pub mod authz;
pub mod cli;
pub mod codec;
pub mod discovery;
pub mod endpointslice;
pub mod error;
mod glue;
pub mod handlers;
pub mod hooks;
pub mod keys;
pub mod memstore;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod resources;
pub mod server;
pub mod service;
mod service_fallback;
pub mod ssa;
pub mod strict;
pub mod table;
pub mod testing;
pub mod watchcache;
