//! `--proxy-mode nftables`: adapts `portico_nft::NftBackend`, which renders the same plan
//! into the kernel, to [`ProxyBackend`].

use portico_core::plan::Plan;
use portico_nft::{NftBackend, NftConfig};

use crate::backend::{Changed, ProxyBackend};
use crate::proxier::Options;

struct Nftables(NftBackend);

impl ProxyBackend for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn sync(&mut self, plan: &Plan, changed: &Changed) -> anyhow::Result<()> {
        let stats = if changed.full {
            self.0.sync(plan)?
        } else {
            self.0.sync_changed(plan, &changed.services)?
        };
        tracing::debug!(?stats, "nftables sync");
        Ok(())
    }

    fn cleanup(&mut self) -> anyhow::Result<()> {
        Ok(self.0.cleanup()?)
    }
}

/// The nftables backend for `opts`, in this process's network namespace.
pub fn backend(opts: &Options) -> anyhow::Result<Box<dyn ProxyBackend>> {
    let config = NftConfig {
        cluster_cidrs: opts.cluster_cidrs.clone(),
        // Unset means the nftables default (the node's addresses), not userspace's loopback.
        nodeport_addresses: opts.nodeport_addresses.clone().unwrap_or_default(),
        service_cidrs: opts.service_cidrs.clone(),
        ..NftConfig::default()
    };
    let backend = NftBackend::new(None, config).map_err(|e| {
        anyhow::anyhow!("{e}; --proxy-mode nftables needs root (CAP_NET_ADMIN) on Linux, or use --proxy-mode userspace")
    })?;
    Ok(Box::new(Nftables(backend)))
}
