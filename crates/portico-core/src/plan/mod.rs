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
    /// externalTrafficPolicy). With policy Cluster it equals `cluster_endpoints`.
    pub external_endpoints: Vec<Endpoint>,
    /// Verdict for the internal path when `cluster_endpoints` is empty.
    pub cluster_no_endpoints: NoEndpoints,
    /// Verdict for the external path when `external_endpoints` is empty.
    pub external_no_endpoints: NoEndpoints,
    /// Count of local endpoints usable by the external path (for the health check server).
    pub local_endpoint_count: usize,
    /// Upstream `endpoints.kubernetes.io/last-change-trigger-time` of the newest slice, RFC 3339.
    pub last_change_trigger_time: Option<String>,
}

/// The whole plan for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub services: BTreeMap<ServicePortName, ServicePortPlan>,
}
