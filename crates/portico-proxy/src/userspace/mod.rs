//! The userspace data plane (`--proxy-mode userspace`): tokio listeners on every frontend of
//! the plan (cluster IPs, node ports on the node-port addresses, external IPs, VIP-mode
//! load-balancer IPs) forwarding TCP and UDP to the endpoints the plan chose. Needs no
//! privileges: a frontend that cannot be bound (address not local, privileged port) gets one
//! clear warning with the fix, and the rest keep serving.
//! Must not: change any machine configuration (routes, addresses, sysctls).

mod route;
pub mod tcp;
pub mod udp;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use portico_core::plan::{Endpoint, Plan, Protocol, ServiceName, ServicePortName, ServicePortPlan};
use socket2::{Domain, Socket, Type};
use tokio_util::sync::CancellationToken;

pub use route::{Backend, Balance, Decision, FrontendKind, Path, Route, RouteCell};

use crate::backend::{Changed, ProxyBackend};

/// Settings of the userspace data plane.
#[derive(Clone, Debug)]
pub struct UserspaceConfig {
    /// Node ports listen on the local addresses inside these CIDRs; a single-address CIDR
    /// (for example 127.0.0.1/32) is used as is.
    pub nodeport_addresses: Vec<IpNet>,
    pub balance: Balance,
    /// How long connections to a removed endpoint may continue.
    pub drain_timeout: Duration,
    pub udp_idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Forward bulk TCP with splice(2) on Linux.
    pub splice: bool,
}

impl Default for UserspaceConfig {
    fn default() -> Self {
        UserspaceConfig {
            nodeport_addresses: vec![IpNet::from(IpAddr::from([127, 0, 0, 1]))],
            balance: Balance::Random,
            drain_timeout: Duration::from_secs(30),
            udp_idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            splice: true,
        }
    }
}

/// Live counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub tcp_active: AtomicUsize,
    pub udp_flows: AtomicUsize,
    pub listeners: AtomicUsize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FrontendKey {
    addr: SocketAddr,
    protocol: Protocol,
}

struct Frontend {
    owner: ServicePortName,
    kind: FrontendKind,
    /// Cancels the listener task; `None` when binding failed (retried on full syncs).
    stop: Option<CancellationToken>,
}

struct PortState {
    cell: Arc<RouteCell>,
    frontends: BTreeSet<FrontendKey>,
    backends: HashMap<SocketAddr, Arc<Backend>>,
}

/// Why a frontend could not be bound, with the one-time warning that explains the fix.
#[derive(Default)]
struct Warnings {
    not_local: AtomicBool,
    privileged: AtomicBool,
    in_use: AtomicBool,
    sctp: AtomicBool,
}

/// The userspace backend.
pub struct UserspaceBackend {
    config: UserspaceConfig,
    tcp: Arc<tcp::TcpSettings>,
    nodeport_ips: Vec<IpAddr>,
    ports: HashMap<ServicePortName, PortState>,
    frontends: HashMap<FrontendKey, Frontend>,
    warnings: Warnings,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
}

impl UserspaceBackend {
    /// Must be called inside a tokio runtime: listeners are spawned on it.
    pub fn new(config: UserspaceConfig) -> Self {
        let nodeport_ips = nodeport_ips(&config.nodeport_addresses);
        UserspaceBackend {
            tcp: Arc::new(tcp::TcpSettings {
                connect_timeout: config.connect_timeout,
                splice: config.splice,
            }),
            config,
            nodeport_ips,
            ports: HashMap::new(),
            frontends: HashMap::new(),
            warnings: Warnings::default(),
            stats: Arc::default(),
            shutdown: CancellationToken::new(),
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Addresses node ports listen on.
    pub fn nodeport_ips(&self) -> &[IpAddr] {
        &self.nodeport_ips
    }

    /// Frontends currently listening.
    pub fn listening(&self) -> Vec<(SocketAddr, Protocol)> {
        let mut out: Vec<_> = self
            .frontends
            .iter()
            .filter(|(_, f)| f.stop.is_some())
            .map(|(k, _)| (k.addr, k.protocol))
            .collect();
        out.sort();
        out
    }

    fn frontends_of(&self, p: &ServicePortPlan) -> Vec<(FrontendKey, FrontendKind)> {
        let protocol = p.name.protocol;
        let mut out = Vec::new();
        let mut add = |ip: IpAddr, port: u16, kind| {
            out.push((
                FrontendKey {
                    addr: SocketAddr::new(ip, port),
                    protocol,
                },
                kind,
            ));
        };
        for ip in &p.cluster_ips {
            add(*ip, p.port, FrontendKind::ClusterIp);
        }
        if let Some(node_port) = p.node_port {
            for ip in &self.nodeport_ips {
                add(*ip, node_port, FrontendKind::NodePort);
            }
        }
        for ip in &p.external_ips {
            add(*ip, p.port, FrontendKind::ExternalIp);
        }
        for ip in &p.load_balancer_ips {
            add(*ip, p.port, FrontendKind::LoadBalancer);
        }
        out
    }

    fn route_for(
        &self,
        p: &ServicePortPlan,
        backends: &HashMap<SocketAddr, Arc<Backend>>,
    ) -> Route {
        let path = |eps: &[Endpoint], verdict| Path {
            endpoints: eps
                .iter()
                .filter_map(|e| backends.get(&e.addr()).cloned())
                .collect(),
            verdict: Some(verdict),
        };
        let short_circuit = (p.external_policy_local && p.externally_accessible()).then(|| {
            let verdict = if p.has_endpoints_v4 || p.has_endpoints_v6 {
                portico_core::plan::NoEndpoints::Drop
            } else {
                portico_core::plan::NoEndpoints::Reject
            };
            path(&p.cluster_policy_endpoints, verdict)
        });
        Route {
            name: p.name.clone(),
            internal: path(&p.cluster_endpoints, p.cluster_no_endpoints),
            external: path(&p.external_endpoints, p.external_no_endpoints),
            short_circuit,
            affinity: p
                .affinity_timeout_seconds
                .map(|s| Duration::from_secs(u64::from(s))),
            source_ranges: p.load_balancer_source_ranges.clone(),
        }
    }

    /// Updates one Service port: routing first (so new connections go to the new endpoints
    /// at once), then endpoints that left start draining, then listeners are adjusted.
    fn sync_port(&mut self, p: &ServicePortPlan, retry_failed: bool) {
        let wanted: BTreeSet<SocketAddr> = p
            .cluster_endpoints
            .iter()
            .chain(&p.external_endpoints)
            .chain(&p.cluster_policy_endpoints)
            .map(Endpoint::addr)
            .collect();
        let mut state = self.ports.remove(&p.name).unwrap_or_else(|| PortState {
            cell: RouteCell::new(
                Route {
                    name: p.name.clone(),
                    internal: Path::default(),
                    external: Path::default(),
                    short_circuit: None,
                    affinity: None,
                    source_ranges: Vec::new(),
                },
                self.config.balance,
            ),
            frontends: BTreeSet::new(),
            backends: HashMap::new(),
        });
        for addr in &wanted {
            state
                .backends
                .entry(*addr)
                .or_insert_with(|| Backend::new(*addr));
        }
        state.cell.set(self.route_for(p, &state.backends));
        let gone: Vec<SocketAddr> = state
            .backends
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(backend) = state.backends.remove(&addr) {
                self.retire(backend);
            }
        }

        let desired = self.frontends_of(p);
        let desired_keys: BTreeSet<FrontendKey> = desired.iter().map(|(k, _)| *k).collect();
        for key in state
            .frontends
            .difference(&desired_keys)
            .copied()
            .collect::<Vec<_>>()
        {
            self.close_frontend(&key);
            state.frontends.remove(&key);
        }
        for (key, kind) in desired {
            match self.frontends.get(&key) {
                Some(f) if f.owner != p.name => {
                    tracing::warn!(frontend = %key.addr, protocol = key.protocol.as_str(), service = %p.name, owner = %f.owner, "frontend already used by another Service port; ignoring it");
                    continue;
                }
                Some(f) if f.kind == kind && (f.stop.is_some() || !retry_failed) => {
                    state.frontends.insert(key);
                    continue;
                }
                Some(_) => self.close_frontend(&key),
                None => {}
            }
            let stop = self.open_frontend(key, kind, &state.cell, &p.name);
            self.frontends.insert(
                key,
                Frontend {
                    owner: p.name.clone(),
                    kind,
                    stop,
                },
            );
            state.frontends.insert(key);
        }
        self.ports.insert(p.name.clone(), state);
    }

    /// An endpoint left: new traffic already avoids it; UDP flows end now, TCP connections
    /// get until the drain deadline.
    fn retire(&self, backend: Arc<Backend>) {
        backend.removed.cancel();
        let deadline = self.config.drain_timeout;
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(deadline) => {}
                _ = shutdown.cancelled() => {}
            }
            backend.drained.cancel();
        });
    }

    fn remove_port(&mut self, name: &ServicePortName) {
        if let Some(state) = self.ports.remove(name) {
            for key in &state.frontends {
                self.close_frontend(key);
            }
            for (_, backend) in state.backends {
                self.retire(backend);
            }
        }
    }

    fn close_frontend(&mut self, key: &FrontendKey) {
        if let Some(f) = self.frontends.remove(key)
            && let Some(stop) = f.stop
        {
            stop.cancel();
            self.stats.listeners.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn open_frontend(
        &self,
        key: FrontendKey,
        kind: FrontendKind,
        cell: &Arc<RouteCell>,
        service: &ServicePortName,
    ) -> Option<CancellationToken> {
        let stop = self.shutdown.child_token();
        let result = match key.protocol {
            Protocol::Tcp => bind_tcp(key.addr).map(|listener| {
                tokio::spawn(tcp::serve(
                    listener,
                    cell.clone(),
                    kind,
                    self.tcp.clone(),
                    self.stats.clone(),
                    stop.clone(),
                ));
            }),
            Protocol::Udp => bind_udp(key.addr).map(|socket| {
                tokio::spawn(udp::serve(
                    socket,
                    cell.clone(),
                    kind,
                    self.config.udp_idle_timeout,
                    self.stats.clone(),
                    stop.clone(),
                ));
            }),
            Protocol::Sctp => {
                if !self.warnings.sctp.swap(true, Ordering::Relaxed) {
                    tracing::warn!(service = %service, "the userspace proxy does not forward SCTP; use --proxy-mode nftables");
                }
                return None;
            }
        };
        match result {
            Ok(()) => {
                self.stats.listeners.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(frontend = %key.addr, protocol = key.protocol.as_str(), service = %service, "listening");
                Some(stop)
            }
            Err(e) => {
                self.warn_bind(&key, service, &e);
                None
            }
        }
    }

    fn warn_bind(&self, key: &FrontendKey, service: &ServicePortName, e: &io::Error) {
        let (flag, fix) = match e.kind() {
            io::ErrorKind::AddrNotAvailable => (
                &self.warnings.not_local,
                "the address is not on this machine, and the userspace proxy can only listen on local addresses: give Services addresses inside 127.0.0.0/8 (for example --service-cluster-ip-range=127.10.0.0/16, the `portico up` default), or run --proxy-mode nftables as root for the kernel data plane",
            ),
            io::ErrorKind::PermissionDenied => (
                &self.warnings.privileged,
                "ports below 1024 need privileges: use a higher port, grant the binary CAP_NET_BIND_SERVICE (setcap cap_net_bind_service=+ep $(command -v portico)), or lower net.ipv4.ip_unprivileged_port_start",
            ),
            _ => (
                &self.warnings.in_use,
                "another process holds this address and port",
            ),
        };
        if !flag.swap(true, Ordering::Relaxed) {
            tracing::warn!(frontend = %key.addr, protocol = key.protocol.as_str(), service = %service, error = %e, "cannot listen on a Service frontend; other frontends keep working. Fix: {fix}. (Further frontends failing the same way are logged at debug level.)");
        } else {
            tracing::debug!(frontend = %key.addr, protocol = key.protocol.as_str(), service = %service, error = %e, "cannot listen on a Service frontend");
        }
    }
}

impl ProxyBackend for UserspaceBackend {
    fn name(&self) -> &'static str {
        "userspace"
    }

    fn sync(&mut self, plan: &Plan, changed: &Changed) -> anyhow::Result<()> {
        let services: BTreeSet<ServiceName> = if changed.full {
            let mut all: BTreeSet<ServiceName> = plan.service_names();
            all.extend(self.ports.keys().map(ServicePortName::service));
            all
        } else {
            changed.services.clone()
        };
        for service in &services {
            let stale: Vec<ServicePortName> = self
                .ports
                .keys()
                .filter(|k| &k.service() == service && !plan.services.contains_key(*k))
                .cloned()
                .collect();
            for name in stale {
                self.remove_port(&name);
            }
            for (_, port) in plan.service_ports(service) {
                self.sync_port(port, changed.full);
            }
        }
        Ok(())
    }

    fn cleanup(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.ports.clear();
        self.frontends.clear();
        Ok(())
    }
}

impl Drop for UserspaceBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// The local addresses inside `cidrs`; a single-address CIDR counts as is.
pub fn nodeport_ips(cidrs: &[IpNet]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = cidrs
        .iter()
        .filter(|n| n.prefix_len() == n.max_prefix_len())
        .map(IpNet::addr)
        .collect();
    let ranges: Vec<&IpNet> = cidrs
        .iter()
        .filter(|n| n.prefix_len() < n.max_prefix_len())
        .collect();
    if !ranges.is_empty()
        && let Ok(addrs) = nix::ifaddrs::getifaddrs()
    {
        for ifa in addrs {
            let Some(addr) = ifa.address else { continue };
            let ip: Option<IpAddr> = if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            };
            // IPv6 link-local addresses need a scope to bind; node ports skip them.
            let link_local =
                matches!(ip, Some(IpAddr::V6(v6)) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if let Some(ip) = ip
                && !link_local
                && ranges.iter().any(|n| n.contains(&ip))
            {
                out.push(ip);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
