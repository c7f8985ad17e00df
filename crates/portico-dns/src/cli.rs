//! `portico dns`: the command line of the standalone DNS server.
//!
//! Owns: flag names, defaults and their translation into [`crate::Options`]. Must not: hold
//! server logic (everything runs through [`crate::start`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use crate::Options;
use crate::engine::Autopath;
use crate::index::PodMode;

/// Flags of `portico dns`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Kubeconfig of the API server to watch (default: $KUBECONFIG, ~/.kube/config or in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster domain (zone) served authoritatively.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// UDP and TCP address to serve DNS on (port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:53")]
    pub listen: SocketAddr,
    /// TTL of cluster records, also the negative-caching TTL (SOA minimum), 0–3600 seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub ttl: u32,
    /// Upstream resolvers for names outside the cluster zone (IP or IP:PORT, comma-separated;
    /// `none` disables forwarding). Default: the nameservers of /etc/resolv.conf.
    #[arg(long, value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// Clients allowed recursion (forwarding), as CIDRs. Others get REFUSED for names outside
    /// the cluster zone. Default: loopback and the private ranges pods and nodes live in.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7"
    )]
    pub allow_recursion_from: Vec<IpNet>,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: disabled, insecure (any IP) or verified (only IPs
    /// of existing pods in that namespace; watches Pods).
    #[arg(long, value_enum, default_value_t = PodMode::Verified)]
    pub pod_mode: PodMode,
    /// Server-side search-path expansion: off, pod-ip (namespace of the pod with the client's
    /// IP) or query-name (namespace taken from `<name>.<ns>.svc.<zone>` questions).
    #[arg(long, value_enum, default_value_t = Autopath::Off)]
    pub autopath: Autopath,
    /// Address of /metrics, /healthz and /readyz (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9153")]
    pub metrics_bind_address: SocketAddr,
    /// UDP sockets (SO_REUSEPORT), each served by its own thread. Default: one per CPU.
    #[arg(long)]
    pub udp_workers: Option<usize>,
}

impl Args {
    /// Translates the flags into server options.
    pub fn options(&self) -> anyhow::Result<Options> {
        let upstream = if self.upstream.is_empty() {
            resolv_conf_nameservers(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            )
        } else if self.upstream.iter().any(|u| u == "none") {
            Vec::new()
        } else {
            self.upstream
                .iter()
                .map(|u| parse_upstream(u))
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        Ok(Options {
            cluster_domain: self.cluster_domain.clone(),
            listen: self.listen,
            ttl: self.ttl,
            upstream,
            allow_recursion_from: self.allow_recursion_from.clone(),
            pod_mode: self.pod_mode,
            autopath: self.autopath,
            metrics_bind_address: Some(self.metrics_bind_address),
            udp_workers: self.udp_workers.unwrap_or_else(default_workers),
            udp_tuning: crate::server::UdpTuning::default(),
        })
    }
}

/// One UDP worker per CPU.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Parses `IP` or `IP:PORT` (port 53 by default).
pub fn parse_upstream(text: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip: IpAddr = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("invalid upstream {text:?} (want IP or IP:PORT)"))?;
    Ok(SocketAddr::new(ip, 53))
}

/// The `nameserver` lines of a resolv.conf.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip = words.next()?.split('%').next()?;
            ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Runs `portico dns` until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let options = args.options()?;
    let client = portico_client::client(args.kubeconfig.as_deref()).await?;
    let shutdown = CancellationToken::new();
    let handle = crate::start(client, options, shutdown.clone()).await?;
    println!(
        "portico dns listening on udp://{} tcp://{}",
        handle.udp_addr, handle.tcp_addr
    );
    if let Some(metrics) = handle.metrics_addr {
        println!("portico dns metrics on http://{metrics}/metrics");
    }
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        signal.cancel();
    });
    handle.join().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let text = "# x\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nsearch a b\nnameserver bogus\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![
                "10.255.255.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(parse_upstream("127.0.0.1:5353").unwrap().port(), 5353);
        assert_eq!(parse_upstream("::1").unwrap().port(), 53);
        assert!(parse_upstream("dns.google").is_err());
    }
}
