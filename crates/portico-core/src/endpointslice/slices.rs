//! The EndpointSlice reconciler: a Service, its selected Pods, the Nodes and the Service's
//! existing managed slices in; the slices to create, update and delete out.
//!
//! Follows upstream's algorithm: slices are grouped per address family and per resolved port
//! mapping; existing slices keep the endpoints still desired (updated in place when they
//! changed), remaining endpoints first fill slices already being updated (fullest first), then
//! the unchanged slice that fits them most closely, and only then new slices; a Service without
//! endpoints keeps one placeholder slice per family; a create paired with a delete becomes an
//! update. New endpoints are taken in a stable order so results do not depend on map order.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::hints;
use super::pod;
use super::{
    AddressType, CONTROLLER_NAME, EndpointKey, LABEL_HEADLESS, LABEL_MANAGED_BY,
    LABEL_SERVICE_NAME, Nodes, PortsKey, SliceChanges,
};

/// Everything one Service's reconcile reads.
pub struct SliceInput<'a> {
    pub service: &'a Service,
    /// Pods in the Service's namespace matching its selector.
    pub pods: &'a [&'a Pod],
    pub nodes: &'a Nodes,
    /// Slices labelled with this Service's name and managed by this controller.
    pub existing: &'a [&'a EndpointSlice],
    pub max_endpoints_per_slice: usize,
    /// RFC 3339 time of the change that triggered this reconcile, for the annotation.
    pub trigger_time: Option<&'a str>,
}

/// The address families a Service's slices use: `spec.ipFamilies`, else the cluster IP's
/// family, else both (headless Services from old API servers), as upstream.
pub fn address_types(service: &Service) -> BTreeSet<AddressType> {
    let spec = service.spec.as_ref();
    let from_families: BTreeSet<AddressType> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(AddressType::IPv4),
            "IPv6" => Some(AddressType::IPv6),
            _ => None,
        })
        .collect();
    if !from_families.is_empty() {
        return from_families;
    }
    if super::service_ip_set(service) {
        let ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default();
        return BTreeSet::from([AddressType::of_ip(ip).unwrap_or(AddressType::IPv4)]);
    }
    BTreeSet::from([AddressType::IPv4, AddressType::IPv6])
}

/// The labels a managed slice of `service` carries: the Service's labels minus the reserved
/// ones, the headless marker when the Service has no cluster IP, service-name and managed-by.
pub fn slice_labels(service: &Service, controller: &str) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = service
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LABEL_SERVICE_NAME && k.as_str() != LABEL_MANAGED_BY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if super::service_ip_set(service) {
        labels.remove(LABEL_HEADLESS);
    } else {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    }
    labels.insert(
        LABEL_SERVICE_NAME.to_string(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_MANAGED_BY.to_string(), controller.to_string());
    labels
}

/// The slice ports for one pod: every Service port whose targetPort resolves for it, in the
/// Service's order.
pub fn endpoint_ports(service: &Service, pod: &Pod) -> Vec<EndpointPort> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            let port = pod::find_port(pod, sp)?;
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// The endpoint for one pod in one family (addresses empty when it has no IP of that family).
pub fn pod_to_endpoint(
    pod: &Pod,
    node: Option<&super::NodeInfo>,
    service: &Service,
    family: AddressType,
) -> Endpoint {
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let serving = pod::is_ready(pod);
    let terminating = pod::is_terminating(pod);
    let ready = publish_not_ready || (serving && !terminating);
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    Endpoint {
        addresses: pod::addresses_of_family(pod, family),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: if pod::should_set_hostname(pod, service) {
            pod.spec.as_ref().and_then(|s| s.hostname.clone())
        } else {
            None
        },
        node_name,
        zone: node.and_then(|n| n.zone.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_string()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn new_slice(service: &Service, ports: Vec<EndpointPort>, family: AddressType) -> EndpointSlice {
    let name = service.metadata.name.clone().unwrap_or_default();
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(super::slice_name_prefix(&name)),
            namespace: service.metadata.namespace.clone(),
            labels: Some(slice_labels(service, CONTROLLER_NAME)),
            owner_references: Some(vec![super::controller_ref(
                "Service",
                &name,
                service.metadata.uid.as_deref().unwrap_or_default(),
            )]),
            ..Default::default()
        },
        address_type: family.as_str().to_string(),
        endpoints: Vec::new(),
        ports: Some(ports),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Unchanged,
    Update,
    Create,
    Delete,
}

struct Working<'a> {
    slice: EndpointSlice,
    original: Option<&'a EndpointSlice>,
    state: State,
}

/// Reconciles one Service. See the module documentation for the algorithm.
pub fn reconcile(input: &SliceInput<'_>) -> SliceChanges {
    let mut changes = SliceChanges::default();
    let service = input.service;
    let spec = service.spec.as_ref();
    let has_selector = spec
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty());
    let external_name = spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    if !has_selector || external_name {
        // Without a selector (or as ExternalName) this controller manages no slices; drop any
        // it made before the change.
        changes.delete = input.existing.iter().map(|s| (*s).clone()).collect();
        return changes;
    }
    let max = input.max_endpoints_per_slice.max(1);
    let families = address_types(service);
    let mut by_family: BTreeMap<AddressType, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in input.existing {
        match AddressType::parse(&slice.address_type).filter(|f| families.contains(f)) {
            Some(f) => by_family.entry(f).or_default().push(slice),
            None => changes.delete.push((*slice).clone()),
        }
    }
    let mut pods: Vec<&Pod> = input.pods.to_vec();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut missing = BTreeSet::new();
    for family in families {
        let existing = by_family.remove(&family).unwrap_or_default();
        reconcile_family(
            input,
            &pods,
            family,
            &existing,
            max,
            &mut changes,
            &mut missing,
        );
    }
    if service.metadata.deletion_timestamp.is_some() {
        changes.create.clear();
    }
    changes.missing_nodes = missing.into_iter().collect();
    changes
}

fn reconcile_family<'a>(
    input: &SliceInput<'a>,
    pods: &[&Pod],
    family: AddressType,
    existing: &[&'a EndpointSlice],
    max: usize,
    changes: &mut SliceChanges,
    missing: &mut BTreeSet<String>,
) {
    let service = input.service;
    let uid = service.metadata.uid.as_deref().unwrap_or_default();
    let publish_not_ready = service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut deletes: Vec<&'a EndpointSlice> = Vec::new();

    let mut existing_by_ports: BTreeMap<PortsKey, Vec<&'a EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        if super::owned_by(slice, "Service", uid) {
            let key = PortsKey::of(slice.ports.as_deref().unwrap_or_default());
            existing_by_ports.entry(key).or_default().push(slice);
        } else {
            deletes.push(slice);
        }
    }

    let mut desired: BTreeMap<PortsKey, (Vec<EndpointPort>, BTreeMap<EndpointKey, Endpoint>)> =
        BTreeMap::new();
    for pod in pods {
        if !pod::should_be_in_endpoints(pod, true) {
            continue;
        }
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        let node = input.nodes.get(node_name);
        if node.is_none() && !node_name.is_empty() && !publish_not_ready {
            // Upstream skips pods on unknown nodes and retries the Service later.
            missing.insert(node_name.to_string());
            continue;
        }
        let endpoint = pod_to_endpoint(pod, node, service, family);
        if endpoint.addresses.is_empty() {
            continue;
        }
        let ports = endpoint_ports(service, pod);
        let key = PortsKey::of(&ports);
        let entry = desired
            .entry(key)
            .or_insert_with(|| (ports, BTreeMap::new()));
        entry.1.insert(EndpointKey::of(&endpoint), endpoint);
    }

    let mut working: Vec<Working<'a>> = Vec::new();
    for (key, (ports, endpoints)) in desired.iter_mut() {
        let slices = existing_by_ports.remove(key).unwrap_or_default();
        reconcile_port_mapping(service, family, slices, ports, endpoints, max, &mut working);
    }
    for (_, slices) in existing_by_ports {
        deletes.extend(slices);
    }

    let kept = working.iter().filter(|w| w.state != State::Delete).count();
    if kept == 0 {
        // A Service with no endpoints keeps one empty placeholder slice per family.
        let placeholder = new_slice(service, Vec::new(), family);
        let reusable = working
            .iter()
            .filter_map(|w| w.original)
            .chain(deletes.iter().copied())
            .collect::<Vec<_>>();
        if reusable.len() == 1 && is_placeholder_equal(reusable[0], &placeholder, uid) {
            let keep = reusable[0];
            working.retain(|w| w.original.is_none_or(|o| !std::ptr::eq(o, keep)));
            deletes.retain(|d| !std::ptr::eq(*d, keep));
            working.push(Working {
                slice: keep.clone(),
                original: Some(keep),
                state: State::Unchanged,
            });
        } else {
            working.push(Working {
                slice: placeholder,
                original: None,
                state: State::Create,
            });
        }
    }

    // Hints over every slice that will exist.
    let mode = hints::mode_for(service);
    let had_hints = hints::any_hints(existing.iter().copied());
    let mut live: Vec<&mut EndpointSlice> = working
        .iter_mut()
        .filter(|w| w.state != State::Delete)
        .map(|w| &mut w.slice)
        .collect();
    changes.events.extend(hints::apply(
        mode,
        &mut live,
        input.nodes,
        family,
        had_hints,
    ));

    let mut creates = Vec::new();
    let mut updates = Vec::new();
    for w in working {
        match w.state {
            State::Delete => deletes.extend(w.original),
            State::Create => creates.push(w.slice),
            State::Update | State::Unchanged => {
                let changed = w
                    .original
                    .is_none_or(|o| !super::slice_content_equal(o, &w.slice));
                if changed {
                    updates.push(w.slice);
                }
            }
        }
    }

    // A create paired with a delete of an owned slice of the same family becomes an update.
    let mut remaining_deletes = Vec::new();
    for slice in deletes {
        if super::owned_by(slice, "Service", uid)
            && let Some(mut create) = creates.pop()
        {
            create.metadata.name = slice.metadata.name.clone();
            create.metadata.generate_name = None;
            create.metadata.resource_version = slice.metadata.resource_version.clone();
            create.metadata.annotations = slice.metadata.annotations.clone();
            updates.push(create);
        } else {
            remaining_deletes.push(slice.clone());
        }
    }
    for slice in creates.iter_mut().chain(updates.iter_mut()) {
        super::set_trigger_time(slice, input.trigger_time);
    }
    changes.create.extend(creates);
    changes.update.extend(updates);
    changes.delete.extend(remaining_deletes);
}

/// Upstream's placeholder comparison: same namespace, labels, owners, family, and no ports or
/// endpoints.
fn is_placeholder_equal(existing: &EndpointSlice, placeholder: &EndpointSlice, uid: &str) -> bool {
    existing.metadata.namespace == placeholder.metadata.namespace
        && existing.metadata.labels.clone().unwrap_or_default()
            == placeholder.metadata.labels.clone().unwrap_or_default()
        && super::owned_by(existing, "Service", uid)
        && existing.address_type == placeholder.address_type
        && existing.ports.as_ref().is_none_or(Vec::is_empty)
        && existing.endpoints.is_empty()
}

fn reconcile_port_mapping<'a>(
    service: &Service,
    family: AddressType,
    existing: Vec<&'a EndpointSlice>,
    ports: &[EndpointPort],
    desired: &mut BTreeMap<EndpointKey, Endpoint>,
    max: usize,
    working: &mut Vec<Working<'a>>,
) {
    let labels = slice_labels(service, CONTROLLER_NAME);
    let first = working.len();

    // 1. Keep desired endpoints in the slices that hold them; note what changed.
    for slice in existing {
        let mut kept = Vec::with_capacity(slice.endpoints.len());
        let mut endpoint_changed = false;
        for endpoint in &slice.endpoints {
            if let Some(want) = desired.remove(&EndpointKey::of(endpoint)) {
                if !super::endpoints_equal_beyond_key(&want, endpoint) {
                    endpoint_changed = true;
                }
                kept.push(want);
            }
        }
        let labels_changed = slice.metadata.labels.as_ref() != Some(&labels);
        let removed = kept.len() != slice.endpoints.len();
        let state = if endpoint_changed || removed {
            if kept.is_empty() {
                State::Delete
            } else {
                State::Update
            }
        } else if labels_changed {
            State::Update
        } else {
            State::Unchanged
        };
        let mut copy = slice.clone();
        if state != State::Unchanged {
            copy.endpoints = kept;
            copy.metadata.labels = Some(labels.clone());
        }
        working.push(Working {
            slice: copy,
            original: Some(slice),
            state,
        });
    }

    let mut pending = std::mem::take(desired).into_values();
    let mut next = pending.next();

    // 2. Fill slices already being updated, fullest first.
    let mut updating: Vec<usize> = (first..working.len())
        .filter(|&i| working[i].state == State::Update)
        .collect();
    updating.sort_by_key(|&i| std::cmp::Reverse(working[i].slice.endpoints.len()));
    for i in updating {
        while next.is_some() && working[i].slice.endpoints.len() < max {
            if let Some(endpoint) = next.take() {
                working[i].slice.endpoints.push(endpoint);
            }
            next = pending.next();
        }
    }

    // 3. Fit the rest into the closest unchanged slice, or new slices.
    let mut rest: Vec<Endpoint> = next.into_iter().chain(pending).collect();
    rest.reverse();
    while !rest.is_empty() {
        let mut target = None;
        if rest.len() < max {
            let mut closest = max;
            for (i, w) in working.iter().enumerate().skip(first) {
                if w.state != State::Unchanged {
                    continue;
                }
                let used = w.slice.endpoints.len() + rest.len();
                if used <= max && max - used < closest {
                    closest = max - used;
                    target = Some(i);
                    if closest == 0 {
                        break;
                    }
                }
            }
        }
        let index = match target {
            Some(i) => {
                working[i].state = State::Update;
                working[i].slice.metadata.labels = Some(labels.clone());
                i
            }
            None => {
                working.push(Working {
                    slice: new_slice(service, ports.to_vec(), family),
                    original: None,
                    state: State::Create,
                });
                working.len() - 1
            }
        };
        while working[index].slice.endpoints.len() < max {
            let Some(endpoint) = rest.pop() else { break };
            working[index].slice.endpoints.push(endpoint);
        }
    }
}
