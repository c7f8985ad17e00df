//! The seam for `--proxy-mode nftables`: the `portico-nft` crate renders the same plan into
//! the kernel. This module adapts it to [`ProxyBackend`](crate::backend::ProxyBackend).

use crate::backend::ProxyBackend;
use crate::proxier::Options;

/// The nftables backend for `opts`.
pub fn backend(_opts: &Options) -> anyhow::Result<Box<dyn ProxyBackend>> {
    anyhow::bail!(
        "--proxy-mode nftables is not available in this build yet (portico-nft exposes no backend); use --proxy-mode userspace"
    )
}
