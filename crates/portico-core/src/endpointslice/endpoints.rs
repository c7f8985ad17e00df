//! The legacy Endpoints computation: one Endpoints object per Service with a selector, its
//! subsets repacked into upstream's canonical form, terminating pods left out (unless
//! publishNotReadyAddresses), and at most 1000 addresses with the over-capacity annotation.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod;
use super::{
    ANNOTATION_LAST_CHANGE_TRIGGER_TIME, ANNOTATION_OVER_CAPACITY, LABEL_HEADLESS,
    MAX_ENDPOINTS_CAPACITY,
};

/// Everything one Service's Endpoints reconcile reads.
pub struct EndpointsInput<'a> {
    pub service: &'a Service,
    /// Pods in the Service's namespace matching its selector.
    pub pods: &'a [&'a Pod],
    /// The current Endpoints object of the same name, if any.
    pub existing: Option<&'a Endpoints>,
    pub trigger_time: Option<&'a str>,
}

/// The write an Endpoints reconcile decided on.
#[derive(Clone, Debug, PartialEq)]
pub enum EndpointsWrite {
    Create(Endpoints),
    Update(Endpoints),
}

/// The single family an Endpoints object of this Service uses (the first of its families).
fn family_for(service: &Service, pod: &Pod) -> super::AddressType {
    use super::AddressType;
    let spec = service.spec.as_ref();
    if let Some(first) = spec
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
    {
        return if first == "IPv6" {
            AddressType::IPv6
        } else {
            AddressType::IPv4
        };
    }
    let probe = if super::service_ip_set(service) {
        spec.and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default()
    } else {
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .unwrap_or_default()
    };
    AddressType::of_ip(probe).unwrap_or(AddressType::IPv4)
}

fn address_for(service: &Service, pod: &Pod) -> Option<EndpointAddress> {
    let family = family_for(service, pod);
    let ip = pod::addresses_of_family(pod, family).into_iter().next()?;
    Some(EndpointAddress {
        ip,
        hostname: if pod::should_set_hostname(pod, service) {
            pod.spec.as_ref().and_then(|s| s.hostname.clone())
        } else {
            None
        },
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_string()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    })
}

/// The repacked, untruncated subsets for a Service and its pods.
pub fn desired_subsets(service: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let spec = service.spec.as_ref();
    let publish_not_ready = spec
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let ports = spec.and_then(|s| s.ports.clone()).unwrap_or_default();
    let headless = !super::service_ip_set(service);
    let mut subsets = Vec::new();
    for pod in pods {
        if !pod::should_be_in_endpoints(pod, publish_not_ready) {
            continue;
        }
        let Some(address) = address_for(service, pod) else {
            continue;
        };
        let ready = publish_not_ready || pod::is_ready(pod);
        let mut push = |port: Option<EndpointPort>| {
            let (addresses, not_ready) = if ready {
                (Some(vec![address.clone()]), None)
            } else {
                (None, Some(vec![address.clone()]))
            };
            subsets.push(EndpointSubset {
                addresses,
                not_ready_addresses: not_ready,
                ports: port.map(|p| vec![p]),
            });
        };
        if ports.is_empty() {
            // Headless Services may have no ports; their addresses are still published.
            if headless {
                push(None);
            }
            continue;
        }
        for sp in &ports {
            let Some(number) = pod::find_port(pod, sp) else {
                continue;
            };
            push(Some(EndpointPort {
                name: sp.name.clone().filter(|n| !n.is_empty()),
                port: number,
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
                app_protocol: sp.app_protocol.clone(),
            }));
        }
    }
    repack_subsets(&subsets)
}

type AddressKey = (String, String);
type PortKey = (String, i32, String, String);
/// Port (None = the "no ports" sentinel) → the port and its addresses with readiness.
type AddressesByPort = BTreeMap<
    Option<PortKey>,
    (
        Option<EndpointPort>,
        BTreeMap<AddressKey, (EndpointAddress, bool)>,
    ),
>;
/// Identical address sets → their ports and addresses.
type PortsByAddresses =
    BTreeMap<Vec<(AddressKey, bool)>, (Vec<EndpointPort>, Vec<(EndpointAddress, bool)>)>;
type TargetKey = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);
type NormalizedAddress = (String, Option<String>, Option<String>, Option<TargetKey>);

fn address_key(a: &EndpointAddress) -> AddressKey {
    (
        a.ip.clone(),
        a.target_ref
            .as_ref()
            .and_then(|r| r.uid.clone())
            .unwrap_or_default(),
    )
}

fn port_key(p: &EndpointPort) -> PortKey {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
        p.app_protocol.clone().unwrap_or_default(),
    )
}

/// Upstream's RepackSubsets: expand to (address, port) pairs, then group the ports that share
/// exactly the same addresses into one subset. An address ready for a port in any subset is
/// ready. Output is sorted (subsets, addresses by IP, ports by name/number).
pub fn repack_subsets(subsets: &[EndpointSubset]) -> Vec<EndpointSubset> {
    // Port (None = "no ports" sentinel) → address key → (address, ready).
    let mut by_port: AddressesByPort = BTreeMap::new();
    for subset in subsets {
        let ports: Vec<Option<&EndpointPort>> = match subset.ports.as_deref() {
            Some(p) if !p.is_empty() => p.iter().map(Some).collect(),
            _ => vec![None],
        };
        for port in ports {
            let entry = by_port
                .entry(port.map(port_key))
                .or_insert_with(|| (port.cloned(), BTreeMap::new()));
            for a in subset.addresses.iter().flatten() {
                entry.1.insert(address_key(a), (a.clone(), true));
            }
            for a in subset.not_ready_addresses.iter().flatten() {
                entry
                    .1
                    .entry(address_key(a))
                    .or_insert_with(|| (a.clone(), false));
            }
        }
    }
    // Group ports by identical address sets.
    let mut groups: PortsByAddresses = BTreeMap::new();
    for (_, (port, addresses)) in by_port {
        if addresses.is_empty() {
            continue;
        }
        let key: Vec<(AddressKey, bool)> = addresses
            .iter()
            .map(|(k, (_, r))| (k.clone(), *r))
            .collect();
        let group = groups
            .entry(key)
            .or_insert_with(|| (Vec::new(), addresses.into_values().collect()));
        group.0.extend(port);
    }
    let mut out: Vec<EndpointSubset> = groups
        .into_values()
        .map(|(mut ports, addresses)| {
            ports.sort_by_key(port_key);
            let mut ready: Vec<EndpointAddress> = addresses
                .iter()
                .filter(|(_, r)| *r)
                .map(|(a, _)| a.clone())
                .collect();
            let mut not_ready: Vec<EndpointAddress> = addresses
                .iter()
                .filter(|(_, r)| !*r)
                .map(|(a, _)| a.clone())
                .collect();
            ready.sort_by_key(address_key);
            not_ready.sort_by_key(address_key);
            EndpointSubset {
                addresses: Some(ready).filter(|v| !v.is_empty()),
                not_ready_addresses: Some(not_ready).filter(|v| !v.is_empty()),
                ports: Some(ports).filter(|v| !v.is_empty()),
            }
        })
        .collect();
    out.sort_by_key(|s| {
        (
            s.ports.iter().flatten().map(port_key).collect::<Vec<_>>(),
            s.addresses
                .iter()
                .chain(s.not_ready_addresses.iter())
                .flatten()
                .map(address_key)
                .collect::<Vec<_>>(),
        )
    });
    out
}

/// Upstream's truncateEndpoints: keep at most 1000 addresses, ready ones first, each subset
/// keeping its proportional share (rounded up). Returns true when anything was cut.
pub fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let count = |v: &Option<Vec<EndpointAddress>>| v.as_ref().map_or(0, Vec::len);
    let total_ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let total_not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if total_ready + total_not_ready <= MAX_ENDPOINTS_CAPACITY {
        return false;
    }
    let truncate_ready = total_ready > MAX_ENDPOINTS_CAPACITY;
    let (max, total) = if truncate_ready {
        (MAX_ENDPOINTS_CAPACITY, total_ready)
    } else {
        (MAX_ENDPOINTS_CAPACITY - total_ready, total_not_ready)
    };
    let mut can_add = max;
    for subset in subsets.iter_mut() {
        let in_subset = if truncate_ready {
            count(&subset.addresses)
        } else {
            count(&subset.not_ready_addresses)
        };
        let share = if total == 0 {
            0
        } else {
            (in_subset as f64 / total as f64 * max as f64).ceil() as usize
        };
        let take = share.min(can_add);
        if truncate_ready {
            if let Some(a) = subset.addresses.as_mut() {
                a.truncate(take);
            }
            subset.not_ready_addresses = None;
            can_add -= count(&subset.addresses);
        } else {
            if let Some(a) = subset.not_ready_addresses.as_mut() {
                a.truncate(take);
            }
            can_add -= count(&subset.not_ready_addresses);
        }
        if subset.addresses.as_ref().is_some_and(Vec::is_empty) {
            subset.addresses = None;
        }
        if subset
            .not_ready_addresses
            .as_ref()
            .is_some_and(Vec::is_empty)
        {
            subset.not_ready_addresses = None;
        }
    }
    true
}

fn normalized_address(a: &EndpointAddress) -> NormalizedAddress {
    (
        a.ip.clone(),
        a.hostname.clone().filter(|h| !h.is_empty()),
        a.node_name.clone(),
        a.target_ref.as_ref().map(|r| {
            (
                r.kind.clone(),
                r.namespace.clone(),
                r.name.clone(),
                r.uid.clone(),
            )
        }),
    )
}

/// Subset equality ignoring target resourceVersions and empty-versus-absent lists.
pub fn subsets_equal(a: &[EndpointSubset], b: &[EndpointSubset]) -> bool {
    let norm = |s: &EndpointSubset| {
        (
            s.addresses
                .iter()
                .flatten()
                .map(normalized_address)
                .collect::<Vec<_>>(),
            s.not_ready_addresses
                .iter()
                .flatten()
                .map(normalized_address)
                .collect::<Vec<_>>(),
            s.ports.iter().flatten().map(port_key).collect::<Vec<_>>(),
        )
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| norm(x) == norm(y))
}

/// Reconciles one Service's Endpoints; `None` when nothing needs writing (or the Service has
/// no selector, or is ExternalName: those Endpoints belong to the user).
pub fn reconcile(input: &EndpointsInput<'_>) -> Option<EndpointsWrite> {
    let service = input.service;
    let spec = service.spec.as_ref()?;
    // An empty selector is dropped by JSON round trips, so it means "no selector" here too.
    spec.selector.as_ref().filter(|s| !s.is_empty())?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let mut subsets = desired_subsets(service, input.pods);
    let truncated = truncate(&mut subsets);
    let service_labels = service.metadata.labels.clone().unwrap_or_default();

    if let Some(existing) = input.existing {
        let mut current_labels = existing.metadata.labels.clone().unwrap_or_default();
        current_labels.remove(LABEL_HEADLESS);
        let annotations = existing.metadata.annotations.clone().unwrap_or_default();
        let annotation_right = annotations.contains_key(ANNOTATION_OVER_CAPACITY) == truncated;
        let has_headless_label = existing
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(LABEL_HEADLESS));
        let headless_right = has_headless_label != super::service_ip_set(service);
        if subsets_equal(existing.subsets.as_deref().unwrap_or_default(), &subsets)
            && current_labels == service_labels
            && annotation_right
            && headless_right
        {
            return None;
        }
    }

    let mut object = input.existing.cloned().unwrap_or_else(|| Endpoints {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            ..Default::default()
        },
        subsets: None,
    });
    object.subsets = Some(subsets).filter(|s| !s.is_empty());
    let mut labels = service_labels;
    if !super::service_ip_set(service) {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    }
    object.metadata.labels = Some(labels);
    let annotations = object
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    match input.trigger_time {
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
    if truncated {
        annotations.insert(
            ANNOTATION_OVER_CAPACITY.to_string(),
            "truncated".to_string(),
        );
    } else {
        annotations.remove(ANNOTATION_OVER_CAPACITY);
    }
    Some(if input.existing.is_some() {
        EndpointsWrite::Update(object)
    } else {
        EndpointsWrite::Create(object)
    })
}
