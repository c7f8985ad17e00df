//! `portico controllers`: flags (named as kube-controller-manager's where one exists) and the
//! stand-alone entry point that connects with a kubeconfig.

use std::path::PathBuf;
use std::time::Duration;

use portico_core::duration::parse_go_duration as parse_duration;
use tokio_util::sync::CancellationToken;

use crate::Options;
use crate::lb::pool::Pools;

/// Flags of `portico controllers`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Path to a kubeconfig; without it, the in-cluster or default kubeconfig is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Maximum endpoints in one EndpointSlice (1–1000).
    #[arg(long, default_value_t = portico_core::endpointslice::DEFAULT_MAX_ENDPOINTS_PER_SLICE, value_parser = one_to_1000)]
    pub max_endpoints_per_slice: usize,
    /// Delay pod-triggered endpoint updates by up to this long to merge bursts (e.g. 500ms, 1s).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub endpoint_updates_batch_period: Duration,
    /// Address pools for type LoadBalancer Services: comma-separated CIDRs or first-last ranges,
    /// one or two families (e.g. 192.0.2.0/28,2001:db8::10-2001:db8::1f).
    #[arg(long, value_parser = parse_pools)]
    pub load_balancer_ip_range: Option<Pools>,
    /// Services the LoadBalancer allocator syncs concurrently.
    #[arg(long, default_value_t = 1, value_parser = one_to_50)]
    pub concurrent_service_syncs: usize,
    /// Services the EndpointSlice controller syncs concurrently.
    #[arg(long, default_value_t = 5, value_parser = one_to_50)]
    pub concurrent_service_endpoint_syncs: usize,
    /// Services the Endpoints controller syncs concurrently.
    #[arg(long, default_value_t = 5, value_parser = one_to_50)]
    pub concurrent_endpoint_syncs: usize,
    /// Services the mirroring controller syncs concurrently.
    #[arg(long, default_value_t = 5, value_parser = one_to_50)]
    pub mirroring_concurrent_service_endpoint_syncs: usize,
    /// Maximum addresses mirrored per Endpoints subset.
    #[arg(long, default_value_t = 1000, value_parser = one_to_1000)]
    pub mirroring_max_endpoints_per_subset: usize,
}

impl Default for Args {
    fn default() -> Args {
        let o = Options::default();
        Args {
            kubeconfig: None,
            max_endpoints_per_slice: o.max_endpoints_per_slice,
            endpoint_updates_batch_period: o.endpoint_updates_batch_period,
            load_balancer_ip_range: None,
            concurrent_service_syncs: o.concurrent_service_syncs,
            concurrent_service_endpoint_syncs: o.concurrent_service_endpoint_syncs,
            concurrent_endpoint_syncs: o.concurrent_endpoint_syncs,
            mirroring_concurrent_service_endpoint_syncs: o
                .mirroring_concurrent_service_endpoint_syncs,
            mirroring_max_endpoints_per_subset: o.mirroring_max_endpoints_per_subset,
        }
    }
}

impl Args {
    /// The controller options these flags describe.
    pub fn options(&self) -> Options {
        Options {
            max_endpoints_per_slice: self.max_endpoints_per_slice,
            endpoint_updates_batch_period: self.endpoint_updates_batch_period,
            load_balancer_pools: self.load_balancer_ip_range.clone().unwrap_or_default(),
            concurrent_service_syncs: self.concurrent_service_syncs,
            concurrent_service_endpoint_syncs: self.concurrent_service_endpoint_syncs,
            concurrent_endpoint_syncs: self.concurrent_endpoint_syncs,
            mirroring_concurrent_service_endpoint_syncs: self
                .mirroring_concurrent_service_endpoint_syncs,
            mirroring_max_endpoints_per_subset: self.mirroring_max_endpoints_per_subset,
        }
    }
}

fn bounded(value: &str, max: usize) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a number from 1 to {max}")),
    }
}

fn one_to_1000(value: &str) -> Result<usize, String> {
    bounded(value, 1000)
}

fn one_to_50(value: &str) -> Result<usize, String> {
    bounded(value, 50)
}

fn parse_pools(value: &str) -> Result<Pools, String> {
    value.parse()
}

pub use portico_client::client;

/// Runs the controllers until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = client(args.kubeconfig.as_deref()).await?;
    let shutdown = CancellationToken::new();
    let handle = crate::start(client, args.options(), shutdown.clone()).await?;
    let signal = shutdown.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        signal.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    handle.await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags() {
        let cli = Cli::try_parse_from([
            "x",
            "--max-endpoints-per-slice",
            "50",
            "--endpoint-updates-batch-period",
            "500ms",
            "--load-balancer-ip-range",
            "192.0.2.0/28,2001:db8::10-2001:db8::1f",
        ])
        .unwrap();
        let o = cli.args.options();
        assert_eq!(o.max_endpoints_per_slice, 50);
        assert_eq!(o.endpoint_updates_batch_period, Duration::from_millis(500));
        assert_eq!(o.load_balancer_pools.ranges.len(), 2);
        assert!(Cli::try_parse_from(["x", "--max-endpoints-per-slice", "1001"]).is_err());
        assert!(
            Cli::try_parse_from(["x", "--load-balancer-ip-range", "10.0.0.9-10.0.0.1"]).is_err()
        );
    }
}
