//! EndpointSlice, Endpoints and mirroring reconcilers: pure functions from API objects to the
//! exact objects to create, update and delete.
//!
//! Owns: upstream's EndpointSlice controller semantics (slices per address family and per
//! resolved port mapping, low-churn packing, placeholder slice, conditions, hints, labels,
//! owner references, trigger-time annotation), the legacy Endpoints computation (subsets,
//! repacking, truncation at 1000) and EndpointSlice mirroring of user-made Endpoints.
//! Must not: talk to the API, read clocks or hold state between calls; the runtime in
//! `portico-controllers` feeds it snapshots and performs the writes it returns.

pub mod endpoints;
pub mod hints;
pub mod mirroring;
pub mod pod;
pub mod slices;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointHints, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// Label naming the Service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Label on Endpoints that opts them out of mirroring when set to "true".
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Label present (empty value) on slices and Endpoints of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Node label carrying the zone.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// The EndpointSlice controller's name, used as the managed-by label value.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// The mirroring controller's name, used as the managed-by label value.
pub const MIRRORING_CONTROLLER_NAME: &str = "endpointslicemirroring-controller.k8s.io";
/// Time of the change that triggered the last write (network-programming latency SLI).
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";
/// Set to "truncated" on Endpoints that hold only the first 1000 addresses.
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Service annotation enabling topology-aware hints ("Auto").
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// Deprecated spelling of the topology annotation, still honoured upstream.
pub const ANNOTATION_TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
/// Annotation used by old leader election on Endpoints; such Endpoints are never mirrored.
pub const ANNOTATION_LEADER: &str = "control-plane.alpha.kubernetes.io/leader";
/// kubectl's last-applied annotation, never copied to mirrored slices.
pub const ANNOTATION_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Default for `--max-endpoints-per-slice`.
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Largest number of addresses an Endpoints object (and a mirrored subset) holds.
pub const MAX_ENDPOINTS_CAPACITY: usize = 1000;

/// The two EndpointSlice address types this controller produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressType {
    IPv4,
    IPv6,
}

impl AddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
        }
    }

    pub fn parse(value: &str) -> Option<AddressType> {
        match value {
            "IPv4" => Some(AddressType::IPv4),
            "IPv6" => Some(AddressType::IPv6),
            _ => None,
        }
    }

    /// The family of a textual IP address, or `None` when it does not parse.
    pub fn of_ip(ip: &str) -> Option<AddressType> {
        match ip.parse::<std::net::IpAddr>().ok()? {
            std::net::IpAddr::V4(_) => Some(AddressType::IPv4),
            std::net::IpAddr::V6(_) => Some(AddressType::IPv6),
        }
    }
}

/// Something a controller should report as an Event on the object it reconciled.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EventNote {
    /// "Normal" or "Warning".
    pub type_: &'static str,
    pub reason: String,
    pub message: String,
}

impl EventNote {
    pub fn warning(reason: &str, message: impl Into<String>) -> EventNote {
        EventNote {
            type_: "Warning",
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    pub fn normal(reason: &str, message: impl Into<String>) -> EventNote {
        EventNote {
            type_: "Normal",
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// The writes a reconcile decided on. Creates carry `generateName` and no name; updates carry
/// the existing name and resourceVersion (optimistic concurrency).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceChanges {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
    pub events: Vec<EventNote>,
    /// Nodes referenced by pods but absent from the node list: the Service must be retried.
    pub missing_nodes: Vec<String>,
}

impl SliceChanges {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// What the reconcilers need to know about a Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub zone: Option<String>,
    pub ready: bool,
    pub allocatable_cpu_millis: u64,
    /// Control-plane nodes are left out of topology capacity, as upstream does.
    pub excluded_from_topology: bool,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> NodeInfo {
        let labels = node.metadata.labels.as_ref();
        let zone = labels
            .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
            .filter(|z| !z.is_empty())
            .cloned();
        let excluded_from_topology = labels.is_some_and(|l| {
            l.contains_key("node-role.kubernetes.io/control-plane")
                || l.contains_key("node-role.kubernetes.io/master")
        });
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let allocatable_cpu_millis = status
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("cpu"))
            .and_then(|q| parse_cpu_millis(&q.0))
            .unwrap_or(0);
        NodeInfo {
            zone,
            ready,
            allocatable_cpu_millis,
            excluded_from_topology,
        }
    }
}

/// Nodes by name.
pub type Nodes = BTreeMap<String, NodeInfo>;

/// Builds the node map from Node objects.
pub fn nodes_from<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Nodes {
    nodes
        .into_iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, NodeInfo::from_node(n))))
        .collect()
}

/// Parses a CPU quantity ("4", "500m", "1.5", "2k") into millicores; `None` when malformed.
pub fn parse_cpu_millis(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<u64>().ok();
    }
    let (number, factor) = match q.strip_suffix('k') {
        Some(n) => (n, 1000.0),
        None => (q, 1.0),
    };
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some((value * factor * 1000.0).round() as u64)
}

/// True when the Service has a cluster IP (is not headless).
pub fn service_ip_set(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// The owner reference a controller puts on objects it derives from `owner`.
pub fn controller_ref(kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// True when `slice` has an owner reference to an object of `kind` with `uid`.
pub fn owned_by(slice: &EndpointSlice, kind: &str, uid: &str) -> bool {
    slice
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.kind == kind && r.uid == uid))
}

/// The generateName prefix for a slice of `service_name`.
pub fn slice_name_prefix(service_name: &str) -> String {
    format!("{service_name}-")
}

/// An endpoint's identity: the same pod (or address) across reconciles.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct EndpointKey {
    addresses: Vec<String>,
    hostname: String,
    target_namespace: String,
    target_name: String,
}

impl EndpointKey {
    pub(crate) fn of(endpoint: &Endpoint) -> EndpointKey {
        let mut addresses = endpoint.addresses.clone();
        addresses.sort();
        let (target_namespace, target_name) = endpoint
            .target_ref
            .as_ref()
            .map(|r| {
                (
                    r.namespace.clone().unwrap_or_default(),
                    r.name.clone().unwrap_or_default(),
                )
            })
            .unwrap_or_default();
        EndpointKey {
            addresses,
            hostname: endpoint.hostname.clone().unwrap_or_default(),
            target_namespace,
            target_name,
        }
    }
}

/// A canonical, order-independent key for a set of slice ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PortsKey(Vec<(String, String, i32, String)>);

impl PortsKey {
    pub(crate) fn of(ports: &[EndpointPort]) -> PortsKey {
        let mut key: Vec<_> = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                    p.port.unwrap_or(0),
                    p.app_protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        key.sort();
        PortsKey(key)
    }
}

fn target_ref_equal(a: Option<&ObjectReference>, b: Option<&ObjectReference>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.kind == b.kind
                && a.namespace == b.namespace
                && a.name == b.name
                && a.uid == b.uid
                && a.api_version == b.api_version
                && a.field_path == b.field_path
        }
        _ => false,
    }
}

/// Hints with empty lists treated as absent, so server round trips do not look like changes.
fn normalized_hints(hints: Option<&EndpointHints>) -> (Vec<&str>, Vec<&str>) {
    let Some(h) = hints else {
        return (Vec::new(), Vec::new());
    };
    let zones = h
        .for_zones
        .iter()
        .flatten()
        .map(|z| z.name.as_str())
        .collect();
    let nodes = h
        .for_nodes
        .iter()
        .flatten()
        .map(|n| n.name.as_str())
        .collect();
    (zones, nodes)
}

fn condition(
    endpoint: &Endpoint,
    pick: fn(&k8s_openapi::api::discovery::v1::EndpointConditions) -> Option<bool>,
) -> Option<bool> {
    endpoint.conditions.as_ref().and_then(pick)
}

/// Upstream's "equal beyond hash": everything but the identity, ignoring resourceVersion.
pub(crate) fn endpoints_equal_beyond_key(a: &Endpoint, b: &Endpoint) -> bool {
    a.node_name == b.node_name
        && a.zone == b.zone
        && condition(a, |c| c.ready) == condition(b, |c| c.ready)
        && condition(a, |c| c.serving) == condition(b, |c| c.serving)
        && condition(a, |c| c.terminating) == condition(b, |c| c.terminating)
        && target_ref_equal(a.target_ref.as_ref(), b.target_ref.as_ref())
}

/// Full endpoint equality as a write decision needs it (identity, fields and hints).
pub(crate) fn endpoints_equal(a: &Endpoint, b: &Endpoint) -> bool {
    EndpointKey::of(a) == EndpointKey::of(b)
        && endpoints_equal_beyond_key(a, b)
        && normalized_hints(a.hints.as_ref()) == normalized_hints(b.hints.as_ref())
}

/// True when two slices hold the same endpoints (in order), ports, labels and address type.
pub(crate) fn slice_content_equal(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    a.address_type == b.address_type
        && a.endpoints.len() == b.endpoints.len()
        && a.endpoints
            .iter()
            .zip(&b.endpoints)
            .all(|(x, y)| endpoints_equal(x, y))
        && PortsKey::of(a.ports.as_deref().unwrap_or_default())
            == PortsKey::of(b.ports.as_deref().unwrap_or_default())
        && a.metadata.labels.clone().unwrap_or_default()
            == b.metadata.labels.clone().unwrap_or_default()
}

/// Sets or clears the trigger-time annotation the way upstream does on every write.
pub(crate) fn set_trigger_time(slice: &mut EndpointSlice, trigger_time: Option<&str>) {
    let annotations = slice.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match trigger_time {
        Some(t) => {
            annotations.insert(
                ANNOTATION_LAST_CHANGE_TRIGGER_TIME.to_string(),
                t.to_string(),
            );
        }
        None => {
            annotations.remove(ANNOTATION_LAST_CHANGE_TRIGGER_TIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        let cases = [
            ("4", Some(4000)),
            ("500m", Some(500)),
            ("1.5", Some(1500)),
            ("2k", Some(2_000_000)),
            ("x", None),
            ("-1", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_cpu_millis(input), want, "{input}");
        }
    }

    #[test]
    fn address_type_of_ip() {
        assert_eq!(AddressType::of_ip("10.0.0.1"), Some(AddressType::IPv4));
        assert_eq!(AddressType::of_ip("fd00::1"), Some(AddressType::IPv6));
        assert_eq!(AddressType::of_ip("pod.example"), None);
    }
}
