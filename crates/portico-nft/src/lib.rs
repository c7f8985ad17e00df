//! The nftables data plane of portico: a kube-proxy `--proxy-mode nftables` replacement.
//!
//! Owns: the in-house nf_tables netlink encoder ([`netlink`]), the fixed ruleset shape
//! ([`ruleset`]), the pure Plan → elements rendering ([`render`]), the diff against the last
//! committed state and its atomic transactions ([`NftBackend`]), and UDP conntrack cleanup
//! ([`conntrack`]). It must not: decide which endpoints serve traffic (that is
//! `portico_core::plan`), read kernel state back on the incremental path, link a GPL library,
//! or touch any network namespace other than the one it was given.

pub mod backend;
pub mod conntrack;
pub mod model;
pub mod netlink;
pub mod render;
pub mod ruleset;

pub use backend::{NftBackend, NftConfig, SyncStats};
pub use netlink::msg::Family;

/// Errors of the nftables backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a transaction; the text names the failing object and the reason.
    #[error("nftables: {0}")]
    Kernel(String),
    #[error("netlink I/O: {0}")]
    Io(String),
    #[error("network namespace: {0}")]
    Netns(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("capacity: {0}")]
    Capacity(String),
}
