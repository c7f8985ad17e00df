//! Service semantics as kube-apiserver applies them, as pure functions over
//! `k8s_openapi::api::core::v1::Service`: defaulting (`defaults`), validation of create, update
//! and status (`validate`), the registry strategy steps that run around allocation
//! (`strategy`: patching allocated values on PUT, clusterIP/clusterIPs normalisation,
//! ipFamilies/ipFamilyPolicy initialisation, type-change field dropping), allocation bitmaps and
//! the allocation plan (`alloc`), and ServiceCIDR / IPAddress validation (`cidr`).
//!
//! Must not: do I/O or draw randomness it was not handed. The API server's Service hooks wire
//! these steps to the store.

pub mod alloc;
pub mod cidr;
pub mod defaults;
pub mod strategy;
pub mod validate;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};

pub use defaults::set_defaults;
pub use validate::{validate_service, validate_service_status_update, validate_service_update};

pub const TYPE_CLUSTER_IP: &str = "ClusterIP";
pub const TYPE_NODE_PORT: &str = "NodePort";
pub const TYPE_LOAD_BALANCER: &str = "LoadBalancer";
pub const TYPE_EXTERNAL_NAME: &str = "ExternalName";
pub const CLUSTER_IP_NONE: &str = "None";
pub const IPV4: &str = "IPv4";
pub const IPV6: &str = "IPv6";
pub const SINGLE_STACK: &str = "SingleStack";
pub const PREFER_DUAL_STACK: &str = "PreferDualStack";
pub const REQUIRE_DUAL_STACK: &str = "RequireDualStack";
pub const POLICY_LOCAL: &str = "Local";
pub const POLICY_CLUSTER: &str = "Cluster";

/// An IP family as the API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => IPV4,
            IpFamily::V6 => IPV6,
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            IPV4 => Some(IpFamily::V4),
            IPV6 => Some(IpFamily::V6),
            _ => None,
        }
    }
    pub fn of(ip: &std::net::IpAddr) -> Self {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
    pub fn other(self) -> Self {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }
}

/// The spec, created empty when the object has none (upstream's spec is never absent).
pub fn spec_mut(svc: &mut Service) -> &mut ServiceSpec {
    svc.spec.get_or_insert_with(Default::default)
}

pub fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("")
}

pub fn cluster_ips(svc: &Service) -> &[String] {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ips.as_deref())
        .unwrap_or(&[])
}

pub fn cluster_ip(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .unwrap_or("")
}

pub fn ip_families(svc: &Service) -> &[String] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ip_families.as_deref())
        .unwrap_or(&[])
}

pub fn ip_family_policy(svc: &Service) -> Option<&str> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ip_family_policy.as_deref())
}

pub fn ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[])
}

pub fn external_traffic_policy(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        .unwrap_or("")
}

pub fn health_check_node_port(svc: &Service) -> i32 {
    svc.spec
        .as_ref()
        .and_then(|s| s.health_check_node_port)
        .unwrap_or(0)
}

pub fn selector_is_empty(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_none_or(|s| s.is_empty())
}

/// `clusterIPs == ["None"]`.
pub fn is_headless(svc: &Service) -> bool {
    let ips = cluster_ips(svc);
    ips.len() == 1 && ips[0] == CLUSTER_IP_NONE
}

/// NodePort, LoadBalancer, or ClusterIP with externalIPs (`ExternallyAccessible`).
pub fn externally_accessible(svc: &Service) -> bool {
    let t = service_type(svc);
    t == TYPE_LOAD_BALANCER
        || t == TYPE_NODE_PORT
        || (t == TYPE_CLUSTER_IP
            && svc
                .spec
                .as_ref()
                .and_then(|s| s.external_ips.as_ref())
                .is_some_and(|e| !e.is_empty()))
}

/// LoadBalancer with `externalTrafficPolicy: Local` (`NeedsHealthCheck`).
pub fn needs_health_check(svc: &Service) -> bool {
    service_type(svc) == TYPE_LOAD_BALANCER && external_traffic_policy(svc) == POLICY_LOCAL
}

pub fn needs_cluster_ip(svc: &Service) -> bool {
    service_type(svc) != TYPE_EXTERNAL_NAME
}

pub fn needs_node_port(svc: &Service) -> bool {
    let t = service_type(svc);
    t == TYPE_NODE_PORT || t == TYPE_LOAD_BALANCER
}

/// Whether new node ports are allocated for ports that did not ask for one.
pub fn should_allocate_node_ports(svc: &Service) -> bool {
    match service_type(svc) {
        TYPE_NODE_PORT => true,
        TYPE_LOAD_BALANCER => svc
            .spec
            .as_ref()
            .and_then(|s| s.allocate_load_balancer_node_ports)
            .unwrap_or(true),
        _ => false,
    }
}

/// Go's `%#v` of a string slice: `[]string{"a", "b"}`, or `[]string(nil)`.
pub fn go_string_slice(type_name: &str, v: Option<&[String]>) -> String {
    match v {
        None => format!("[]{type_name}(nil)"),
        Some(v) => format!(
            "[]{type_name}{{{}}}",
            v.iter()
                .map(|s| crate::field::quote(s))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// How upstream prints an optional string pointer as a bad value.
pub fn go_opt_str(v: Option<&str>) -> String {
    match v {
        None => "null".to_string(),
        Some(s) => crate::field::quote(s),
    }
}
