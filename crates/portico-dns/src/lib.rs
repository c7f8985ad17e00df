//! Cluster DNS for portico: the Kubernetes DNS-Based Service Discovery specification (schema
//! 1.1.0) answered from an in-memory index fed by watches on the Kubernetes API.
//!
//! Owns: the record index (`index`), the wire fast path (`wire`, `answer`), the query engine
//! with forwarding, caching and autopath (`engine`, `forward`), sockets (`server`), the API
//! watches (`watch`), metrics (`stats`) and the `portico dns` command line (`cli`).
//! Must not: read the store directly (it talks only to the Kubernetes API, so it runs against any
//! conformant API server).

pub mod answer;
pub mod cli;
pub mod engine;
pub mod forward;
pub mod index;
pub mod name;
pub mod server;
pub mod stats;
pub mod watch;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

pub use engine::{Autopath, Engine};
pub use index::{Index, PodMode};

/// Everything `start` needs (the parsed form of [`cli::Args`]).
#[derive(Clone, Debug)]
pub struct Options {
    pub cluster_domain: String,
    pub listen: SocketAddr,
    pub ttl: u32,
    /// Upstream resolvers; empty disables forwarding.
    pub upstream: Vec<SocketAddr>,
    pub allow_recursion_from: Vec<IpNet>,
    pub pod_mode: PodMode,
    pub autopath: Autopath,
    /// `None` serves no metrics/health endpoint.
    pub metrics_bind_address: Option<SocketAddr>,
    pub udp_workers: usize,
    /// How the UDP workers wait for queries.
    pub udp_tuning: server::UdpTuning,
}

impl Default for Options {
    /// Loopback on free ports, no upstream: the shape tests and `portico up` start from.
    fn default() -> Options {
        Options {
            cluster_domain: "cluster.local".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ttl: 5,
            upstream: Vec::new(),
            allow_recursion_from: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            pod_mode: PodMode::Verified,
            autopath: Autopath::Off,
            metrics_bind_address: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            udp_workers: cli::default_workers(),
            udp_tuning: server::UdpTuning::default(),
        }
    }
}

/// A running DNS server.
pub struct Handle {
    /// Bound UDP address (all workers share it through SO_REUSEPORT).
    pub udp_addr: SocketAddr,
    /// Bound TCP address (same IP and port as UDP).
    pub tcp_addr: SocketAddr,
    /// Bound metrics/health address, if any.
    pub metrics_addr: Option<SocketAddr>,
    engine: Arc<Engine>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Handle {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The index (feed it directly when running without watches, e.g. in tests).
    pub fn index(&self) -> &Arc<RwLock<Index>> {
        self.engine.index()
    }

    /// Waits until the server has stopped (after the shutdown token is cancelled).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// Starts the DNS server fed by watches through `client`. Answers are SERVFAIL for the cluster
/// zone until every watch has listed once.
pub async fn start(
    client: kube::Client,
    opts: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<Handle> {
    let watch_pods = opts.pod_mode == PodMode::Verified || opts.autopath == Autopath::PodIp;
    let handle = start_unsynced(opts, shutdown.clone()).await?;
    let mut synced =
        watch::spawn_watches(client, handle.index().clone(), watch_pods, shutdown.clone());
    let engine = handle.engine().clone();
    tokio::spawn(async move {
        if synced.wait_for(|s| *s).await.is_ok() {
            engine.set_synced(true);
            tracing::info!("DNS index synced");
        }
    });
    Ok(handle)
}

/// The addresses `ns.dns.<zone>` names when no DNS Service exists: the listen address, or for
/// a wildcard listen address the host's interface addresses (loopback when it has no other).
fn own_addresses(listen: std::net::IpAddr) -> Vec<std::net::IpAddr> {
    if !listen.is_unspecified() {
        return vec![listen];
    }
    let mut found: Vec<std::net::IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| {
                    let a = a.address?;
                    let ip = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                        (Some(v4), _) => std::net::IpAddr::V4(v4.ip()),
                        (_, Some(v6)) => std::net::IpAddr::V6(v6.ip()),
                        _ => return None,
                    };
                    let link_local = match ip {
                        std::net::IpAddr::V4(v4) => v4.is_link_local(),
                        std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
                    };
                    (!ip.is_loopback() && !link_local && (listen.is_ipv6() || ip.is_ipv4()))
                        .then_some(ip)
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.dedup();
    if found.is_empty() {
        found.push(if listen.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        });
    }
    found
}

/// Starts the server without watches; the caller fills `handle.index()` and then calls
/// `handle.engine().set_synced(true)`.
pub async fn start_unsynced(opts: Options, shutdown: CancellationToken) -> anyhow::Result<Handle> {
    let zone = name::Zone::new(&opts.cluster_domain).map_err(anyhow::Error::msg)?;
    let index = Arc::new(RwLock::new(Index::new(zone, opts.pod_mode)));
    let workers = opts.udp_workers.max(1);
    // Never forward to ourselves.
    let (udp_sockets, tcp) = server::bind(opts.listen, workers)?;
    let udp_addr = udp_sockets[0].local_addr()?;
    let tcp_addr = tcp.local_addr()?;
    if let Ok(mut index) = index.write() {
        index.set_own_addresses(&own_addresses(udp_addr.ip()));
    }
    let upstream: Vec<SocketAddr> = opts
        .upstream
        .iter()
        .copied()
        .filter(|u| *u != udp_addr)
        .collect();
    let engine = Arc::new(Engine::new(
        index,
        engine::EngineConfig {
            ttl: opts.ttl,
            recursion_from: opts.allow_recursion_from.clone(),
            autopath: opts.autopath,
        },
        forward::Forwarder::new(upstream),
        workers,
    ));
    let runtime = tokio::runtime::Handle::current();
    let deferred = Arc::new(tokio::sync::Semaphore::new(server::MAX_DEFERRED));
    let mut threads = Vec::new();
    for (worker, socket) in udp_sockets.into_iter().enumerate() {
        let engine = engine.clone();
        let runtime = runtime.clone();
        let deferred = deferred.clone();
        let shutdown = shutdown.clone();
        let tuning = opts.udp_tuning;
        threads.push(
            std::thread::Builder::new()
                .name(format!("dns-udp-{worker}"))
                .spawn(move || {
                    server::udp_worker(worker, socket, engine, runtime, deferred, shutdown, tuning)
                })
                .context("starting a UDP worker")?,
        );
    }
    let mut tasks = Vec::new();
    let tcp = tokio::net::TcpListener::from_std(tcp)?;
    tasks.push(tokio::spawn(server::tcp_server(
        tcp,
        engine.clone(),
        shutdown.clone(),
    )));
    let metrics_addr = match opts.metrics_bind_address {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?;
            let bound = listener.local_addr()?;
            tasks.push(tokio::spawn(server::http_server(
                listener,
                engine.clone(),
                shutdown.clone(),
            )));
            Some(bound)
        }
        None => None,
    };
    Ok(Handle {
        udp_addr,
        tcp_addr,
        metrics_addr,
        engine,
        threads,
        tasks,
    })
}
