//! The seam between the proxy runtime and a data plane: every backend renders the same
//! [`Plan`], told which Services changed since its last successful sync.

use std::collections::BTreeSet;

use portico_core::plan::{Plan, ServiceName};

/// What changed since the last successful sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Re-render everything (first sync, periodic resync, node change, after a failure).
    pub full: bool,
    /// Services whose plan entries were added, changed or removed.
    pub services: BTreeSet<ServiceName>,
}

impl Changed {
    /// A full sync.
    pub fn full() -> Self {
        Changed {
            full: true,
            services: BTreeSet::new(),
        }
    }

    /// Whether this sync should look at `service`.
    pub fn touches(&self, service: &ServiceName) -> bool {
        self.full || self.services.contains(service)
    }

    /// Folds a later change into this one (used when a sync failed and is retried).
    pub fn merge(&mut self, other: Changed) {
        self.full |= other.full;
        self.services.extend(other.services);
    }
}

/// A data plane. `sync` makes the data plane match `plan`; it may rely on `changed` to skip
/// Services that did not change, and is called again with the same (merged) set after an
/// error.
pub trait ProxyBackend: Send {
    /// Short name for logs and metrics ("userspace", "nftables").
    fn name(&self) -> &'static str;

    /// Programs the data plane.
    fn sync(&mut self, plan: &Plan, changed: &Changed) -> anyhow::Result<()>;

    /// Removes everything this backend created (`--cleanup`, and shutdown).
    fn cleanup(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// `--proxy-mode none`: the control plane only.
#[derive(Debug, Default)]
pub struct NoopBackend;

impl ProxyBackend for NoopBackend {
    fn name(&self) -> &'static str {
        "none"
    }

    fn sync(&mut self, _plan: &Plan, _changed: &Changed) -> anyhow::Result<()> {
        Ok(())
    }
}
