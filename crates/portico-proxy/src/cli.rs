//! `portico proxy`: kube-proxy's flags, where they apply.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use portico_core::duration::parse_go_duration as parse_duration;
use tokio_util::sync::CancellationToken;

use crate::proxier::{Options, ProxyMode, start};
use crate::userspace::{Balance, UserspaceConfig};

/// Command-line flags of `portico proxy`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Path to a kubeconfig file; in-cluster or $KUBECONFIG when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Use this name instead of the hostname to identify the node.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// Which data plane to program.
    #[arg(long, value_enum, default_value = "userspace")]
    pub proxy_mode: ProxyMode,
    /// The pod CIDRs of the cluster (comma-separated), for masquerading decisions.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// CIDRs (comma-separated) of the local addresses node ports listen on. Default for
    /// userspace mode: 127.0.0.1/32.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<IpNet>,
    /// ip:port of the /healthz and /livez server; empty disables it.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: String,
    /// ip:port of the /metrics server; empty disables it.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: String,
    /// Minimum time between syncs (Go duration: 500ms, 1s, 1m).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_sync_period: Duration,
    /// Time between full resyncs.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub sync_period: Duration,
    /// Remove everything the data plane created, then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Userspace mode: how connections spread over endpoints.
    #[arg(long, value_enum, default_value = "random")]
    pub userspace_balance: Balance,
    /// Userspace mode: how long connections to a removed endpoint may finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub userspace_drain_timeout: Duration,
    /// Userspace mode: idle timeout of UDP flows.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub userspace_udp_idle_timeout: Duration,
}

fn parse_bind(s: &str, flag: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("invalid --{flag} {s:?}: {e} (want ip:port)"))
}

/// The node name: `--hostname-override`, else the hostname, lower-cased as upstream does.
pub fn node_name(args: &Args) -> String {
    let name = match &args.hostname_override {
        Some(n) if !n.trim().is_empty() => n.trim().to_string(),
        _ => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into()),
    };
    name.to_lowercase()
}

impl Args {
    /// The runtime options these flags describe.
    pub fn options(&self) -> anyhow::Result<Options> {
        let userspace = UserspaceConfig {
            balance: self.userspace_balance,
            drain_timeout: self.userspace_drain_timeout,
            udp_idle_timeout: self.userspace_udp_idle_timeout,
            ..UserspaceConfig::default()
        };
        Ok(Options {
            node_name: node_name(self),
            mode: self.proxy_mode,
            cluster_cidrs: self.cluster_cidr.clone(),
            service_cidrs: Vec::new(),
            nodeport_addresses: (!self.nodeport_addresses.is_empty())
                .then(|| self.nodeport_addresses.clone()),
            healthz_bind_address: parse_bind(&self.healthz_bind_address, "healthz-bind-address")?,
            metrics_bind_address: parse_bind(&self.metrics_bind_address, "metrics-bind-address")?,
            min_sync_period: self.min_sync_period,
            sync_period: self.sync_period,
            userspace,
        })
    }
}

pub use portico_client::client;

/// Runs `portico proxy` until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let opts = args.options()?;
    if args.cleanup {
        let mut backend = crate::proxier::make_backend(&opts)?;
        backend.cleanup()?;
        return Ok(());
    }
    let client = client(args.kubeconfig.as_deref()).await?;
    let shutdown = CancellationToken::new();
    let handle = start(client, opts.clone(), shutdown.clone()).await?;
    tracing::info!(node = %opts.node_name, mode = ?opts.mode, healthz = ?handle.healthz_addr, metrics = ?handle.metrics_addr, "proxy started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
    handle.join().await;
    Ok(())
}
