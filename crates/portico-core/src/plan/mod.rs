//! The data-plane plan: which frontends each Service port has and which endpoints serve each
//! traffic path on this node. Both data planes (nftables and userspace) render this one model,
//! and the explain tooling reads it, so endpoint selection lives in exactly one place.
//!
//! `build` (pure) turns Services, EndpointSlices and the node's identity into a [`Plan`];
//! backends only render it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// L4 protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Lower-case name as nft and kube-proxy chain names spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// The key of everything in the plan, as upstream's `ServicePortName`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The Service port's name ("" for a single unnamed port).
    pub port: String,
    pub protocol: Protocol,
}

impl std::fmt::Display for ServicePortName {
    /// `ns/name:port` like upstream (`ns/name` when the port is unnamed).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// One endpoint that may receive traffic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// True when the endpoint's `nodeName` is this node.
    pub is_local: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// `hints.forZones[].name`, sorted (empty: no zone hints).
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`, sorted (empty: no node hints).
    pub node_hints: Vec<String>,
}

/// What to do with traffic for a frontend that has no usable endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoEndpoints {
    /// TCP reset / ICMP port unreachable at once (the Service has no endpoints at all).
    Reject,
    /// Silently drop (policy Local with no local endpoints, for the internal path).
    Drop,
}

/// Everything the data plane needs for one Service port on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortPlan {
    pub name: ServicePortName,
    /// Cluster IPs of the Service (one per family; the plan holds both families).
    pub cluster_ips: Vec<IpAddr>,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` whose ipMode is VIP (or unset).
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// ClientIP affinity timeout in seconds, when sessionAffinity is ClientIP.
    pub affinity_timeout_seconds: Option<u32>,
    pub internal_policy_local: bool,
    pub external_policy_local: bool,
    pub health_check_node_port: Option<u16>,
    /// Endpoints for traffic to the cluster IP (after internalTrafficPolicy, topology and
    /// the ready → serving-terminating fallback).
    pub cluster_endpoints: Vec<Endpoint>,
    /// Endpoints for traffic to node ports, external IPs and load-balancer IPs (after
    /// externalTrafficPolicy): upstream's cluster endpoints with policy Cluster, the local
    /// ones with policy Local. Empty when the port takes no external traffic and ITP is Local.
    pub external_endpoints: Vec<Endpoint>,
    /// Verdict for the internal path when `cluster_endpoints` is empty.
    pub cluster_no_endpoints: NoEndpoints,
    /// Verdict for the external path when `external_endpoints` is empty.
    pub external_no_endpoints: NoEndpoints,
    /// Count of local endpoints usable by the external path (for the health check server).
    pub local_endpoint_count: usize,
    /// Upstream `endpoints.kubernetes.io/last-change-trigger-time` of the newest slice, RFC 3339.
    pub last_change_trigger_time: Option<String>,
    /// Upstream's `clusterEndpoints` from CategorizeEndpoints (topology applied, ready →
    /// serving-terminating fallback); empty when the port never uses Cluster policy. The target
    /// of the ETP Local short-circuit for traffic that originates on this node.
    pub cluster_policy_endpoints: Vec<Endpoint>,
    /// Upstream's `localEndpoints`: local ready endpoints, else local serving-terminating ones;
    /// empty when the port never uses Local policy.
    pub local_policy_endpoints: Vec<Endpoint>,
    /// Upstream's `hasAnyEndpoints`, per family: some usable endpoint exists anywhere in the
    /// cluster. False means Reject; true with an empty path list means Drop.
    pub has_endpoints_v4: bool,
    pub has_endpoints_v6: bool,
}

/// The whole plan for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub services: BTreeMap<ServicePortName, ServicePortPlan>,
    /// healthCheckNodePort servers to run: one per Service of type LoadBalancer with
    /// externalTrafficPolicy Local.
    pub health_checks: BTreeMap<ServiceName, HealthCheck>,
}

mod categorize;
mod source;
pub mod tracker;

pub use categorize::{Categorized, categorize};
pub use source::{PortInfo, ServiceInfo, SliceEndpoint, SliceInfo, SlicePort};

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label that hands a Service to another proxy; such Services are ignored.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on slices of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label naming the Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Node label holding the node's zone, used for topology hints.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// Annotation on EndpointSlices recording when the change that produced them happened.
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";

impl Default for Protocol {
    /// TCP, the API's default protocol.
    fn default() -> Self {
        Protocol::Tcp
    }
}

impl Protocol {
    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`); absent means TCP.
    pub fn from_api(value: Option<&str>) -> Option<Protocol> {
        match value {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }
}

/// A Service's namespace and name (upstream's `NamespacedName`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ServicePortName {
    /// The Service this port belongs to.
    pub fn service(&self) -> ServiceName {
        ServiceName::new(&self.namespace, &self.name)
    }
}

/// One healthCheckNodePort server: port and this node's count of local ready endpoints
/// (distinct IPs over all the Service's ports, as upstream counts them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub node_port: u16,
    pub local_endpoints: usize,
}

/// The node this plan is for: its name (locality) and labels (topology zone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NodeInfo {
    pub fn new(name: impl Into<String>) -> Self {
        NodeInfo {
            name: name.into(),
            labels: BTreeMap::new(),
        }
    }

    /// Name and labels of a Node object.
    pub fn from_node(node: &Node) -> Self {
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
        }
    }

    /// The `topology.kubernetes.io/zone` label, "" when unset.
    pub fn zone(&self) -> &str {
        self.labels
            .get(LABEL_TOPOLOGY_ZONE)
            .map(String::as_str)
            .unwrap_or("")
    }
}

impl Endpoint {
    /// `ip:port` (`[ip]:port` for IPv6), upstream's endpoint string.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.port)
    }
}

impl ServicePortPlan {
    /// True when the port takes traffic other than to its cluster IP (upstream's
    /// `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.load_balancer_ips.is_empty()
            || !self.external_ips.is_empty()
    }

    /// Whether some usable endpoint of this family exists anywhere (`hasAnyEndpoints`).
    pub fn has_endpoints(&self, ipv6: bool) -> bool {
        if ipv6 {
            self.has_endpoints_v6
        } else {
            self.has_endpoints_v4
        }
    }

    /// Endpoints of one family for internal (`external == false`) or external traffic.
    pub fn endpoints_for(&self, ipv6: bool, external: bool) -> impl Iterator<Item = &Endpoint> {
        let list = if external {
            &self.external_endpoints
        } else {
            &self.cluster_endpoints
        };
        list.iter().filter(move |ep| ep.ip.is_ipv6() == ipv6)
    }

    /// The verdict for traffic of one family on one path when it has no endpoints:
    /// `None` when there are endpoints to forward to, `Reject` when the Service has no usable
    /// endpoint anywhere, `Drop` when only the policy (Local) leaves none on this node.
    pub fn no_endpoints_verdict(&self, ipv6: bool, external: bool) -> Option<NoEndpoints> {
        if self.endpoints_for(ipv6, external).next().is_some() {
            None
        } else if self.has_endpoints(ipv6) {
            Some(NoEndpoints::Drop)
        } else {
            Some(NoEndpoints::Reject)
        }
    }
}

impl Plan {
    /// Every port of one Service (the plan is sorted by namespace, then name).
    pub fn service_ports<'a>(
        &'a self,
        service: &'a ServiceName,
    ) -> impl Iterator<Item = (&'a ServicePortName, &'a ServicePortPlan)> + 'a {
        let start = ServicePortName {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            port: String::new(),
            protocol: Protocol::Tcp,
        };
        self.services
            .range(start..)
            .take_while(move |(k, _)| k.namespace == service.namespace && k.name == service.name)
    }

    /// Drops every entry of one Service.
    pub fn remove_service(&mut self, service: &ServiceName) {
        let keys: Vec<ServicePortName> = self
            .service_ports(service)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.services.remove(&key);
        }
        self.health_checks.remove(service);
    }

    /// Replaces the entries of one Service with those computed from `info` and its slices.
    pub fn set_service<'a>(
        &mut self,
        info: &ServiceInfo,
        slices: impl IntoIterator<Item = &'a SliceInfo>,
        node: &NodeInfo,
    ) {
        self.remove_service(&info.name);
        let (ports, health) = build_service(info, slices, node);
        for port in ports {
            self.services.insert(port.name.clone(), port);
        }
        if let Some(health) = health {
            self.health_checks.insert(info.name.clone(), health);
        }
    }

    /// Every Service that has at least one entry.
    pub fn service_names(&self) -> BTreeSet<ServiceName> {
        self.services.keys().map(ServicePortName::service).collect()
    }
}

/// The pure plan: which frontends each Service port has and which endpoints serve each of
/// its traffic paths on `node`. Services the proxy ignores (headless, ExternalName, labelled
/// `service.kubernetes.io/service-proxy-name`) produce nothing; slices are matched to their
/// Service by the `kubernetes.io/service-name` label.
pub fn build(services: &[Service], slices: &[EndpointSlice], node: &NodeInfo) -> Plan {
    let mut by_service: BTreeMap<ServiceName, BTreeMap<String, SliceInfo>> = BTreeMap::new();
    for slice in slices.iter().filter_map(SliceInfo::from_slice) {
        by_service
            .entry(slice.service.clone())
            .or_default()
            .insert(slice.name.clone(), slice);
    }
    let mut plan = Plan::default();
    for info in services.iter().filter_map(ServiceInfo::from_service) {
        let slices = by_service
            .get(&info.name)
            .into_iter()
            .flat_map(|m| m.values());
        plan.set_service(&info, slices, node);
    }
    plan
}

/// Merges a Service's slices into endpoints per (port name, protocol), deduplicated by
/// `ip:port` the way upstream does: a later duplicate wins unless it is terminating.
pub fn merge_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a SliceInfo>,
    node_name: &str,
) -> BTreeMap<(String, Protocol), Vec<Endpoint>> {
    let mut merged: BTreeMap<(String, Protocol), BTreeMap<(IpAddr, u16), Endpoint>> =
        BTreeMap::new();
    for slice in slices {
        for port in &slice.ports {
            let set = merged
                .entry((port.name.clone(), port.protocol))
                .or_default();
            for ep in &slice.endpoints {
                let endpoint = Endpoint {
                    ip: ep.ip,
                    port: port.port,
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                    is_local: !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name),
                    node_name: ep.node_name.clone(),
                    zone: ep.zone.clone(),
                    zone_hints: ep.zone_hints.clone(),
                    node_hints: ep.node_hints.clone(),
                };
                let key = (endpoint.ip, endpoint.port);
                if !set.contains_key(&key) || !endpoint.terminating {
                    set.insert(key, endpoint);
                }
            }
        }
    }
    merged
        .into_iter()
        .map(|(k, set)| (k, set.into_values().collect()))
        .collect()
}

/// The plan entries of one Service and its health check, if it needs one.
pub fn build_service<'a>(
    info: &ServiceInfo,
    slices: impl IntoIterator<Item = &'a SliceInfo>,
    node: &NodeInfo,
) -> (Vec<ServicePortPlan>, Option<HealthCheck>) {
    let slices: Vec<&SliceInfo> = slices.into_iter().collect();
    let merged = merge_endpoints(slices.iter().copied(), &node.name);
    let trigger = slices.iter().filter_map(|s| s.trigger_time.clone()).max();
    let has_v4 = info.cluster_ips.iter().any(IpAddr::is_ipv4);
    let has_v6 = info.cluster_ips.iter().any(IpAddr::is_ipv6);
    let family_ok = |ip: &IpAddr| if ip.is_ipv6() { has_v6 } else { has_v4 };

    // Upstream counts distinct local ready IPs over every port of the Service.
    let local_ready: BTreeSet<IpAddr> = merged
        .values()
        .flatten()
        .filter(|ep| ep.is_local && ep.ready && family_ok(&ep.ip))
        .map(|ep| ep.ip)
        .collect();
    let health = info.health_check_node_port.map(|node_port| HealthCheck {
        node_port,
        local_endpoints: local_ready.len(),
    });

    let externally_accessible = info.externally_accessible();
    let uses_cluster = !info.internal_policy_local || externally_accessible;
    let uses_local =
        info.internal_policy_local || (info.external_policy_local && externally_accessible);
    let primary_v6 = info.cluster_ips.first().is_some_and(IpAddr::is_ipv6);

    let mut plans = Vec::with_capacity(info.ports.len());
    for port in &info.ports {
        let name = ServicePortName {
            namespace: info.name.namespace.clone(),
            name: info.name.name.clone(),
            port: port.name.clone(),
            protocol: port.protocol,
        };
        let all: &[Endpoint] = merged
            .get(&(port.name.clone(), port.protocol))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut cluster = Vec::new();
        let mut local = Vec::new();
        let (mut any_v4, mut any_v6) = (false, false);
        // One categorization per family, as upstream runs one proxier per family.
        for (ipv6, present) in [(false, has_v4), (true, has_v6)] {
            if !present {
                continue;
            }
            let family: Vec<Endpoint> = all
                .iter()
                .filter(|ep| ep.ip.is_ipv6() == ipv6)
                .cloned()
                .collect();
            let c = categorize(&family, uses_cluster, uses_local, &node.name, node.zone());
            if ipv6 {
                any_v6 = c.has_any_endpoints;
            } else {
                any_v4 = c.has_any_endpoints;
            }
            cluster.extend(c.cluster);
            local.extend(c.local);
        }
        let internal = if info.internal_policy_local {
            local.clone()
        } else {
            cluster.clone()
        };
        let external = if info.external_policy_local && externally_accessible {
            local.clone()
        } else {
            cluster.clone()
        };
        let has_primary = if primary_v6 { any_v6 } else { any_v4 };
        // Meaningful only when the path's list is empty: no endpoint anywhere rejects, a
        // policy that leaves none on this node drops.
        let verdict = if has_primary {
            NoEndpoints::Drop
        } else {
            NoEndpoints::Reject
        };
        plans.push(ServicePortPlan {
            name,
            cluster_ips: info.cluster_ips.clone(),
            port: port.port,
            node_port: port.node_port,
            external_ips: info.external_ips.clone(),
            load_balancer_ips: info.load_balancer_ips.clone(),
            load_balancer_source_ranges: info.load_balancer_source_ranges.clone(),
            affinity_timeout_seconds: info.affinity_timeout_seconds,
            internal_policy_local: info.internal_policy_local,
            external_policy_local: info.external_policy_local,
            health_check_node_port: info.health_check_node_port,
            cluster_no_endpoints: verdict,
            external_no_endpoints: verdict,
            cluster_endpoints: internal,
            external_endpoints: external,
            local_endpoint_count: local_ready.len(),
            last_change_trigger_time: trigger.clone(),
            cluster_policy_endpoints: cluster,
            local_policy_endpoints: local,
            has_endpoints_v4: any_v4,
            has_endpoints_v6: any_v6,
        });
    }
    (plans, health)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tracker_tests;
