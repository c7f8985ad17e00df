//! The node proxy: watches Services, EndpointSlices and its own Node through the API
//! (never the store), folds changes with the pure trackers in `portico_core::plan`, and has
//! a backend render the plan: the userspace TCP/UDP proxy here, or nftables from
//! `portico-nft`. Also the health servers and metrics both modes share, and the
//! `portico env` / `portico run` commands.
//! Must not: decide which endpoints serve traffic (that is `portico_core::plan`), or change
//! machine configuration in userspace mode.

pub mod backend;
pub mod cli;
pub mod envcmd;
pub mod health;
pub mod metrics;
mod nft;
pub mod proxier;
pub mod runner;
pub mod userspace;

pub use backend::{Changed, NoopBackend, ProxyBackend};
pub use proxier::{Handle, Options, ProxyMode, Status, make_backend, start, start_with_backend};
pub use userspace::{Balance, UserspaceBackend, UserspaceConfig};
