//! `portico up`: the API server (embedded store), controllers, DNS and a proxy in one process.
//!
//! The defaults keep every virtual address on this machine's loopback so nothing is
//! reconfigured and nothing leaves the machine: the Service range and the LoadBalancer pool sit
//! inside 127.0.0.0/8 (Linux routes all of it to `lo`), node ports listen on 127.0.0.1, and DNS
//! answers on a high loopback port. `--proxy-mode nftables` (root) switches to Kubernetes' usual
//! ranges and the kernel data plane.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use ipnet::IpNet;
use portico_proxy::ProxyMode;
use tokio_util::sync::CancellationToken;

/// Service range of `portico up` without the kernel data plane: local to every Linux machine.
const LOOPBACK_SERVICE_RANGE: &str = "127.96.0.0/16";
/// LoadBalancer pool of `portico up` without the kernel data plane.
const LOOPBACK_LB_POOL: &str = "127.97.0.0/24";
/// How long components get to stop after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// Kubernetes' usual Service range, for the kernel data plane.
const KERNEL_SERVICE_RANGE: &str = "10.96.0.0/12";

/// Flags of `portico up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Where the database, certificates and kubeconfig live.
    #[arg(long, default_value = "portico-data", env = "PORTICO_DATA_DIR")]
    pub data_dir: PathBuf,
    /// API server address.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// API server HTTPS port; 0 picks a free one (the kubeconfig holds the real port).
    #[arg(long, default_value_t = 6443)]
    pub secure_port: u16,
    /// etcd endpoints (comma-separated URLs) instead of the embedded store.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub etcd_servers: Vec<String>,
    /// Service cluster IP range(s). Default: 127.96.0.0/16, or 10.96.0.0/12 with
    /// `--proxy-mode nftables`.
    #[arg(long)]
    pub service_cluster_ip_range: Option<String>,
    /// NodePort range, `first-last`.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Data plane: `userspace` (no privileges), `nftables` (root, Linux) or `none`.
    #[arg(long, value_enum, default_value = "userspace")]
    pub proxy_mode: ProxyMode,
    /// Where node ports listen. Default: 127.0.0.1 (userspace), the node's addresses (nftables).
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<IpNet>,
    /// Pod CIDR(s), for masquerading in the kernel data plane.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// Address pools for LoadBalancer Services. Default: 127.97.0.0/24 (userspace and none);
    /// no pool with `--proxy-mode nftables`.
    #[arg(long)]
    pub load_balancer_ip_range: Option<String>,
    /// Where cluster DNS answers (UDP and TCP). Port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:10053")]
    pub dns_address: SocketAddr,
    /// This node's name.
    #[arg(long)]
    pub hostname_override: Option<String>,
}

impl UpArgs {
    fn kernel(&self) -> bool {
        self.proxy_mode == ProxyMode::Nftables
    }

    fn apiserver_args(&self) -> portico_apiserver::cli::Args {
        let default_range = if self.kernel() {
            KERNEL_SERVICE_RANGE
        } else {
            LOOPBACK_SERVICE_RANGE
        };
        portico_apiserver::cli::Args {
            data_dir: self.data_dir.clone(),
            bind_address: self.bind_address,
            secure_port: self.secure_port,
            etcd_servers: self.etcd_servers.clone(),
            service_cluster_ip_range: self
                .service_cluster_ip_range
                .clone()
                .unwrap_or_else(|| default_range.to_string()),
            service_node_port_range: self.service_node_port_range.clone(),
            cluster_domain: self.cluster_domain.clone(),
            allow_loopback_endpoints: !self.kernel(),
            ..portico_apiserver::cli::Args::default()
        }
    }

    fn controller_options(&self) -> anyhow::Result<portico_controllers::Options> {
        let mut options = portico_controllers::cli::Args::default().options();
        let pool = match &self.load_balancer_ip_range {
            Some(pool) => Some(pool.clone()),
            None if self.kernel() => None,
            None => Some(LOOPBACK_LB_POOL.to_string()),
        };
        if let Some(pool) = pool {
            options.load_balancer_pools = pool
                .parse()
                .map_err(|e| anyhow::anyhow!("--load-balancer-ip-range {pool:?}: {e}"))?;
        }
        Ok(options)
    }

    fn dns_options(&self, service_ranges: &[IpNet]) -> anyhow::Result<portico_dns::Options> {
        let dns = portico_dns::cli::Args {
            kubeconfig: None,
            cluster_domain: self.cluster_domain.clone(),
            listen: self.dns_address,
            ttl: 5,
            upstream: Vec::new(),
            allow_recursion_from: loopback_and(service_ranges),
            pod_mode: portico_dns::PodMode::Insecure,
            autopath: portico_dns::Autopath::Off,
            metrics_bind_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            udp_workers: None,
        };
        dns.options()
    }

    fn proxy_options(&self, service_ranges: &[IpNet]) -> portico_proxy::Options {
        let nodeport_addresses = if self.nodeport_addresses.is_empty() {
            None
        } else {
            Some(self.nodeport_addresses.clone())
        };
        portico_proxy::Options {
            node_name: node_name(self.hostname_override.as_deref()),
            mode: self.proxy_mode,
            cluster_cidrs: self.cluster_cidr.clone(),
            service_cidrs: service_ranges.to_vec(),
            nodeport_addresses,
            healthz_bind_address: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_bind_address: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..portico_proxy::Options::default()
        }
    }
}

/// `--hostname-override`, else the kernel's host name, lower-cased like kube-proxy does.
fn node_name(hostname_override: Option<&str>) -> String {
    let name = match hostname_override {
        Some(name) if !name.trim().is_empty() => name.trim().to_string(),
        _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    };
    if name.is_empty() {
        "localhost".into()
    } else {
        name.to_lowercase()
    }
}

fn loopback_and(ranges: &[IpNet]) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().expect("literal CIDR"),
        "::1/128".parse().expect("literal CIDR"),
    ];
    nets.extend(ranges.iter().copied());
    nets
}

/// Runs everything until SIGINT/SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let api_args = args.apiserver_args();
    let service_ranges = api_args.cluster_ip_ranges()?;
    let controller_options = args.controller_options()?;
    let dns_options = args.dns_options(&service_ranges)?;
    let proxy_options =
        (args.proxy_mode != ProxyMode::None).then(|| args.proxy_options(&service_ranges));

    let running = portico_apiserver::cli::start(api_args)
        .await
        .context("starting the API server")?;
    portico_apiserver::cli::announce(&running);
    let client = running.client.clone();
    let shutdown = CancellationToken::new();

    let advertise = if running.addr.ip().is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        running.addr.ip()
    };
    let kubernetes_service = tokio::spawn(portico_controllers::reconcile_kubernetes_service(
        client.clone(),
        advertise,
        running.addr.port(),
        shutdown.clone(),
    ));
    let controllers =
        portico_controllers::start(client.clone(), controller_options, shutdown.clone())
            .await
            .context("starting the controllers")?;
    // The node agents run with their own least-privileged identities, exactly as they would
    // on other machines, so `portico up` proves the policy gives them enough.
    let dns_client = running.component_client("dns").await?;
    let dns = portico_dns::start(dns_client, dns_options, shutdown.clone())
        .await
        .with_context(|| {
            format!(
                "starting DNS on {} (pick another with --dns-address)",
                args.dns_address
            )
        })?;
    let proxy = match proxy_options {
        Some(options) => Some(
            portico_proxy::start(
                running.component_client("kube-proxy").await?,
                options,
                shutdown.clone(),
            )
            .await
            .context("starting the proxy")?,
        ),
        None => None,
    };

    announce(&running, &dns, &args, &service_ranges);

    portico_apiserver::cli::wait_for_signal().await;
    shutdown.cancel();
    // Components stop in parallel while the API server still answers (the kubernetes Service
    // reconciler withdraws its address through it); a component that hangs does not hold up exit.
    let components = async {
        let proxy = async {
            if let Some(proxy) = proxy {
                proxy.join().await;
            }
        };
        // Each component reports its own overrun, so a hang names its culprit.
        let named = |name: &'static str, stop: futures::future::BoxFuture<'static, ()>| async move {
            if tokio::time::timeout(SHUTDOWN_GRACE, stop).await.is_err() {
                tracing::warn!("{name} did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
            }
        };
        tokio::join!(
            named(
                "the kubernetes Service reconciler",
                Box::pin(async move {
                    let _ = kubernetes_service.await;
                })
            ),
            named(
                "the controllers",
                Box::pin(async move {
                    let _ = controllers.await;
                })
            ),
            named("DNS", Box::pin(dns.join())),
            named("the proxy", Box::pin(proxy)),
        );
    };
    components.await;
    running.shutdown().await;
    Ok(())
}

fn announce(
    running: &portico_apiserver::cli::Running,
    dns: &portico_dns::Handle,
    args: &UpArgs,
    ranges: &[IpNet],
) {
    use std::io::Write;
    let kubeconfig = running.kubeconfig_path.display();
    let dns_addr = dns.udp_addr;
    let ranges: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    let mut out = std::io::stdout().lock();
    // One machine-readable line for scripts and tests, then the human version.
    let _ = writeln!(
        out,
        "portico up ready api={} kubeconfig={} dns={} proxy-mode={}",
        running.url,
        kubeconfig,
        dns_addr,
        proxy_mode_name(args.proxy_mode)
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "  API server   {}", running.url);
    let _ = writeln!(out, "  kubeconfig   {kubeconfig}");
    let _ = writeln!(
        out,
        "  cluster DNS  {dns_addr} (zone {})",
        args.cluster_domain
    );
    let _ = writeln!(
        out,
        "  services     {} (proxy: {})",
        ranges.join(","),
        proxy_mode_name(args.proxy_mode)
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Try:");
    let _ = writeln!(out, "  export KUBECONFIG={kubeconfig}");
    let _ = writeln!(out, "  kubectl get services -A");
    let _ = writeln!(
        out,
        "  dig @{} -p {} kubernetes.default.svc.{} +short",
        dns_addr.ip(),
        dns_addr.port(),
        args.cluster_domain
    );
    let _ = out.flush();
}

fn proxy_mode_name(mode: ProxyMode) -> &'static str {
    match mode {
        ProxyMode::Userspace => "userspace",
        ProxyMode::Nftables => "nftables",
        ProxyMode::None => "none",
    }
}
