//! What the proxy reads from Services and EndpointSlices, reduced to plain data. The
//! trackers compare these (not whole objects), so a change the proxy does not care about,
//! such as a new resourceVersion, costs nothing.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    ANNOTATION_LAST_CHANGE_TRIGGER_TIME, LABEL_HEADLESS, LABEL_SERVICE_NAME,
    LABEL_SERVICE_PROXY_NAME, Protocol, ServiceName,
};

/// Default ClientIP affinity timeout (3 hours), as the API defaults it.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;

/// One Service port as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// The parts of a Service the proxy uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: ServiceName,
    /// `spec.clusterIPs` (falling back to `spec.clusterIP`), primary first.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortInfo>,
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs whose ipMode is VIP (or unset); ipMode Proxy is left to the LB.
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub affinity_timeout_seconds: Option<u32>,
    pub internal_policy_local: bool,
    pub external_policy_local: bool,
    pub health_check_node_port: Option<u16>,
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse().ok()
}

/// Parses a CIDR leniently (host bits allowed, surrounding whitespace trimmed, as upstream).
fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .map(|n| n.trunc())
        .or_else(|| parse_ip(s).map(IpNet::from))
}

fn port_u16(value: Option<i32>) -> Option<u16> {
    value
        .and_then(|v| u16::try_from(v).ok())
        .filter(|v| *v != 0)
}

impl ServiceInfo {
    /// `None` when the proxy ignores the Service: no cluster IP (headless, ExternalName),
    /// type ExternalName, or labelled `service.kubernetes.io/service-proxy-name`.
    pub fn from_service(service: &Service) -> Option<ServiceInfo> {
        let meta = &service.metadata;
        if meta
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME))
        {
            return None;
        }
        let spec = service.spec.as_ref()?;
        let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
        if service_type == "ExternalName" {
            return None;
        }
        let primary = spec.cluster_ip.as_deref().unwrap_or("");
        if primary.is_empty() || primary == "None" {
            return None;
        }
        let mut cluster_ips: Vec<IpAddr> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.iter().filter_map(|s| parse_ip(s)).collect(),
            _ => parse_ip(primary).into_iter().collect(),
        };
        cluster_ips.dedup();
        if cluster_ips.is_empty() {
            return None;
        }
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(PortInfo {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: Protocol::from_api(p.protocol.as_deref())?,
                    port: port_u16(Some(p.port))?,
                    node_port: port_u16(p.node_port),
                })
            })
            .collect();
        let external_policy_local = matches!(service_type, "NodePort" | "LoadBalancer")
            && spec.external_traffic_policy.as_deref() == Some("Local");
        let affinity_timeout_seconds =
            (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u32::try_from(t).ok())
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS)
            });
        let load_balancer_ips = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|ing| ing.ip_mode.as_deref().is_none_or(|m| m == "VIP"))
            .filter_map(|ing| ing.ip.as_deref().and_then(parse_ip))
            .collect();
        Some(ServiceInfo {
            name: ServiceName::new(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            ),
            cluster_ips,
            ports,
            external_ips: spec
                .external_ips
                .iter()
                .flatten()
                .filter_map(|s| parse_ip(s))
                .collect(),
            load_balancer_ips,
            load_balancer_source_ranges: spec
                .load_balancer_source_ranges
                .iter()
                .flatten()
                .filter_map(|s| parse_cidr(s))
                .collect(),
            affinity_timeout_seconds,
            internal_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_policy_local,
            // Upstream's NeedsHealthCheck: type LoadBalancer with externalTrafficPolicy Local.
            health_check_node_port: (service_type == "LoadBalancer" && external_policy_local)
                .then(|| port_u16(spec.health_check_node_port))
                .flatten(),
        })
    }

    /// Upstream's `ExternallyAccessible`, for the Service as a whole.
    pub fn externally_accessible(&self) -> bool {
        !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
            || self.ports.iter().any(|p| p.node_port.is_some())
    }
}

/// One port of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint of an EndpointSlice (its first address, as upstream uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

/// The parts of an EndpointSlice the proxy uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub service: ServiceName,
    pub name: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
    pub trigger_time: Option<String>,
}

impl SliceInfo {
    /// `None` for slices the proxy ignores: no `kubernetes.io/service-name` label, headless,
    /// or addressType FQDN.
    pub fn from_slice(slice: &EndpointSlice) -> Option<SliceInfo> {
        let meta = &slice.metadata;
        let labels = meta.labels.as_ref()?;
        let service = labels.get(LABEL_SERVICE_NAME).filter(|s| !s.is_empty())?;
        if labels.contains_key(LABEL_HEADLESS) {
            return None;
        }
        let ipv6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            _ => return None,
        };
        let mut ports: Vec<SlicePort> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(SlicePort {
                    // The API server defaults a missing name to "".
                    name: p.name.clone().unwrap_or_default(),
                    protocol: Protocol::from_api(p.protocol.as_deref())?,
                    port: port_u16(p.port)?,
                })
            })
            .collect();
        ports.sort_by_key(|p| p.port);
        let mut endpoints: Vec<SliceEndpoint> = slice
            .endpoints
            .iter()
            .filter_map(|ep| {
                let ip = parse_ip(ep.addresses.first()?)?;
                if ip.is_ipv6() != ipv6 {
                    return None;
                }
                let conditions = ep.conditions.as_ref();
                let mut zone_hints: Vec<String> = ep
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|z| z.name.clone())
                    .collect();
                zone_hints.sort();
                zone_hints.dedup();
                let mut node_hints: Vec<String> = ep
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_nodes.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|n| n.name.clone())
                    .collect();
                node_hints.sort();
                node_hints.dedup();
                Some(SliceEndpoint {
                    ip,
                    node_name: ep.node_name.clone(),
                    zone: ep.zone.clone(),
                    // Unknown readiness and serving count as true, unknown terminating as false.
                    ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                    serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                    zone_hints,
                    node_hints,
                })
            })
            .collect();
        endpoints.sort_by_key(|e| e.ip);
        Some(SliceInfo {
            service: ServiceName::new(meta.namespace.clone().unwrap_or_default(), service.clone()),
            name: meta.name.clone().unwrap_or_default(),
            ports,
            endpoints,
            trigger_time: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME))
                .cloned(),
        })
    }
}
