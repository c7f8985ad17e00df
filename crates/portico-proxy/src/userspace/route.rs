//! Per Service port routing state shared by all of its frontends: the endpoint lists of each
//! traffic path, the verdict when a path is empty, and endpoint choice (random or
//! round-robin, with ClientIP affinity).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use portico_core::plan::{NoEndpoints, ServicePortName};
use rand::Rng;
use tokio_util::sync::CancellationToken;

/// How new connections spread over endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Balance {
    /// Uniformly random, as kube-proxy.
    #[default]
    Random,
    RoundRobin,
}

/// One endpoint of one Service port, with the signals used when it goes away.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Cancelled as soon as the endpoint leaves the plan: UDP flows move at once.
    pub removed: CancellationToken,
    /// Cancelled when the drain deadline after removal passes: open TCP connections close.
    pub drained: CancellationToken,
}

impl Backend {
    pub fn new(addr: SocketAddr) -> Arc<Backend> {
        Arc::new(Backend {
            addr,
            removed: CancellationToken::new(),
            drained: CancellationToken::new(),
        })
    }
}

/// What a frontend is, which decides the traffic path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

/// The endpoints and verdict of one traffic path.
#[derive(Clone, Debug, Default)]
pub struct Path {
    pub endpoints: Vec<Arc<Backend>>,
    /// Used when `endpoints` is empty.
    pub verdict: Option<NoEndpoints>,
}

/// A Service port's routing table at one moment.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: ServicePortName,
    pub internal: Path,
    pub external: Path,
    /// ETP Local: traffic from this machine to an external frontend goes to the cluster-wide
    /// endpoints, as upstream short-circuits it.
    pub short_circuit: Option<Path>,
    pub affinity: Option<Duration>,
    pub source_ranges: Vec<IpNet>,
}

/// The routing cell frontends hold: swapped on sync, read on every new connection.
#[derive(Debug)]
pub struct RouteCell {
    route: RwLock<Arc<Route>>,
    next: AtomicUsize,
    affinity: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
    pub balance: Balance,
}

/// The decision for one new connection or flow.
#[derive(Debug)]
pub enum Decision {
    Forward(Vec<Arc<Backend>>),
    Verdict(NoEndpoints),
}

impl RouteCell {
    pub fn new(route: Route, balance: Balance) -> Arc<RouteCell> {
        Arc::new(RouteCell {
            route: RwLock::new(Arc::new(route)),
            next: AtomicUsize::new(0),
            affinity: Mutex::new(HashMap::new()),
            balance,
        })
    }

    pub fn get(&self) -> Arc<Route> {
        match self.route.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, route: Route) {
        match self.route.write() {
            Ok(mut r) => *r = Arc::new(route),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(route),
        }
    }

    /// Picks endpoints for a client: the first is the choice, the rest are fallbacks to try
    /// if connecting fails. `None` from `source_allowed` drops traffic outside
    /// loadBalancerSourceRanges.
    pub fn decide(&self, kind: FrontendKind, client: SocketAddr, local: SocketAddr) -> Decision {
        let route = self.get();
        if kind == FrontendKind::LoadBalancer
            && !route.source_ranges.is_empty()
            && !route.source_ranges.iter().any(|n| n.contains(&client.ip()))
            && !is_local_client(client, local)
        {
            return Decision::Verdict(NoEndpoints::Drop);
        }
        let path = match kind {
            FrontendKind::ClusterIp => &route.internal,
            _ => match &route.short_circuit {
                Some(short) if is_local_client(client, local) => short,
                _ => &route.external,
            },
        };
        if path.endpoints.is_empty() {
            return Decision::Verdict(path.verdict.unwrap_or(NoEndpoints::Reject));
        }
        let n = path.endpoints.len();
        let first = self
            .sticky(&route, &path.endpoints, client.ip())
            .unwrap_or_else(|| self.pick_index(n));
        let order = (0..n)
            .map(|i| path.endpoints[(first + i) % n].clone())
            .collect();
        Decision::Forward(order)
    }

    fn pick_index(&self, n: usize) -> usize {
        match self.balance {
            Balance::Random => rand::rng().random_range(0..n),
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    fn sticky(&self, route: &Route, endpoints: &[Arc<Backend>], client: IpAddr) -> Option<usize> {
        let timeout = route.affinity?;
        let now = Instant::now();
        let mut table = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, seen)) = table.get(&client).copied()
            && now.duration_since(seen) < timeout
            && let Some(i) = endpoints.iter().position(|b| b.addr == addr)
        {
            table.insert(client, (addr, now));
            return Some(i);
        }
        None
    }

    /// Records the endpoint a client was sent to, for ClientIP affinity.
    pub fn remember(&self, client: IpAddr, endpoint: SocketAddr) {
        let route = self.get();
        let Some(timeout) = route.affinity else {
            return;
        };
        let now = Instant::now();
        let mut table = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= 4096 && table.len().is_power_of_two() {
            table.retain(|_, (_, seen)| now.duration_since(*seen) < timeout);
        }
        table.insert(client, (endpoint, now));
    }
}

/// Traffic from this machine itself (loopback, or the frontend's own address as source).
pub fn is_local_client(client: SocketAddr, local: SocketAddr) -> bool {
    client.ip().is_loopback() || client.ip() == local.ip()
}
