//! EndpointSlice mirroring: user-made Endpoints of selectorless Services become slices managed
//! by `endpointslicemirroring-controller.k8s.io`. Subsets are repacked first (the same address
//! in two subsets ends up in one slice with both ports); each distinct port set and family gets
//! one slice of at most `max_endpoints_per_subset` addresses. Endpoints labelled
//! `endpointslice.kubernetes.io/skip-mirror: "true"` or carrying the leader-election annotation
//! are not mirrored.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::endpoints::repack_subsets;
use super::{
    ANNOTATION_LAST_APPLIED, ANNOTATION_LAST_CHANGE_TRIGGER_TIME, ANNOTATION_LEADER, AddressType,
    EndpointKey, EventNote, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_SKIP_MIRROR,
    MIRRORING_CONTROLLER_NAME, PortsKey, SliceChanges,
};

/// The ports of one slice and the endpoints it should hold.
type DesiredGroup = (Vec<EndpointPort>, BTreeMap<EndpointKey, Endpoint>);

/// Everything one mirroring reconcile reads.
pub struct MirrorInput<'a> {
    /// The Service of the same name; `None` when it does not exist.
    pub service: Option<&'a Service>,
    /// The Endpoints to mirror; `None` when it does not exist.
    pub endpoints: Option<&'a Endpoints>,
    /// Slices managed by the mirroring controller labelled with this Service's name.
    pub existing: &'a [&'a EndpointSlice],
    /// `--mirroring-max-endpoints-per-subset` (upstream default 1000).
    pub max_endpoints_per_subset: usize,
}

/// False for Endpoints that opted out or are leader-election records.
pub fn should_mirror(endpoints: &Endpoints) -> bool {
    let skip = endpoints
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SKIP_MIRROR))
        .is_some_and(|v| v == "true");
    let leader = endpoints
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_LEADER));
    !skip && !leader
}

fn address_to_endpoint(address: &EndpointAddress, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![address.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: None,
            terminating: None,
        }),
        target_ref: address.target_ref.clone(),
        node_name: address.node_name.clone(),
        hostname: address.hostname.clone().filter(|h| !h.is_empty()),
        ..Default::default()
    }
}

fn mirrored_annotations(endpoints: &Endpoints) -> BTreeMap<String, String> {
    endpoints
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| {
            k.as_str() != ANNOTATION_LAST_CHANGE_TRIGGER_TIME
                && k.as_str() != ANNOTATION_LAST_APPLIED
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn mirrored_labels(endpoints: &Endpoints) -> BTreeMap<String, String> {
    let mut labels = endpoints.metadata.labels.clone().unwrap_or_default();
    labels.insert(
        LABEL_SERVICE_NAME.to_string(),
        endpoints.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(
        LABEL_MANAGED_BY.to_string(),
        MIRRORING_CONTROLLER_NAME.to_string(),
    );
    labels
}

fn new_slice(endpoints: &Endpoints, ports: &[EndpointPort], family: AddressType) -> EndpointSlice {
    let name = endpoints.metadata.name.clone().unwrap_or_default();
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(super::slice_name_prefix(&name)),
            namespace: endpoints.metadata.namespace.clone(),
            labels: Some(mirrored_labels(endpoints)),
            annotations: Some(mirrored_annotations(endpoints)),
            owner_references: Some(vec![super::controller_ref(
                "Endpoints",
                &name,
                endpoints.metadata.uid.as_deref().unwrap_or_default(),
            )]),
            ..Default::default()
        },
        address_type: family.as_str().to_string(),
        endpoints: Vec::new(),
        ports: Some(ports.to_vec()),
    }
}

/// Reconciles the mirrored slices of one Endpoints object.
pub fn reconcile(input: &MirrorInput<'_>) -> SliceChanges {
    let mut changes = SliceChanges::default();
    let delete_all = |changes: &mut SliceChanges| {
        changes.delete = input.existing.iter().map(|s| (*s).clone()).collect();
    };
    let Some(service) = input.service else {
        // Upstream leaves mirrored slices to the garbage collector (they are owned by the
        // Endpoints), so a missing Service changes nothing here.
        return changes;
    };
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName")
        || spec
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|s| !s.is_empty())
    {
        delete_all(&mut changes);
        return changes;
    }
    let Some(endpoints) = input.endpoints.filter(|e| should_mirror(e)) else {
        delete_all(&mut changes);
        return changes;
    };
    let max = input.max_endpoints_per_subset.max(1);

    // Desired endpoints per (ports, family).
    let mut desired: BTreeMap<(PortsKey, AddressType), DesiredGroup> = BTreeMap::new();
    let mut invalid = 0usize;
    let mut skipped = 0usize;
    for subset in repack_subsets(endpoints.subsets.as_deref().unwrap_or_default()) {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let key = PortsKey::of(&ports);
        let all = subset.addresses.iter().flatten().map(|a| (a, true)).chain(
            subset
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a, false)),
        );
        let mut total = 0usize;
        let mut added = 0usize;
        for (address, ready) in all {
            total += 1;
            if added >= max {
                continue;
            }
            let Some(family) = AddressType::of_ip(&address.ip) else {
                invalid += 1;
                continue;
            };
            let endpoint = address_to_endpoint(address, ready);
            desired
                .entry((key.clone(), family))
                .or_insert_with(|| (ports.clone(), BTreeMap::new()))
                .1
                .insert(EndpointKey::of(&endpoint), endpoint);
            added += 1;
        }
        skipped += total - added;
    }
    if invalid > 0 {
        changes.events.push(EventNote::warning(
            "InvalidIPAddress",
            format!("Skipped {invalid} invalid IP addresses when mirroring to EndpointSlices"),
        ));
    }
    if skipped > invalid {
        changes.events.push(EventNote::warning(
            "TooManyAddressesToMirror",
            format!(
                "A max of {max} addresses can be mirrored to EndpointSlices per Endpoints subset. {skipped} addresses were skipped"
            ),
        ));
    }

    let uid = endpoints.metadata.uid.as_deref().unwrap_or_default();
    let mut existing_by_key: BTreeMap<(PortsKey, AddressType), Vec<&EndpointSlice>> =
        BTreeMap::new();
    let mut deletes: Vec<&EndpointSlice> = Vec::new();
    for slice in input.existing {
        match AddressType::parse(&slice.address_type) {
            Some(family) => existing_by_key
                .entry((
                    PortsKey::of(slice.ports.as_deref().unwrap_or_default()),
                    family,
                ))
                .or_default()
                .push(slice),
            None => deletes.push(slice),
        }
    }
    let want_labels = mirrored_labels(endpoints);
    let want_annotations = mirrored_annotations(endpoints);
    let mut creates = Vec::new();
    let mut updates = Vec::new();
    for ((key, family), (ports, endpoints_wanted)) in desired {
        let mut slices = existing_by_key.remove(&(key, family)).unwrap_or_default();
        slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let first = slices.first().copied();
        deletes.extend(slices.iter().skip(1).copied());
        if let Some(first) = first {
            let same_endpoints = first.endpoints.len() == endpoints_wanted.len()
                && first.endpoints.iter().all(|e| {
                    endpoints_wanted
                        .get(&EndpointKey::of(e))
                        .is_some_and(|w| super::endpoints_equal_beyond_key(w, e))
                });
            let same_meta = first.metadata.labels.clone().unwrap_or_default() == want_labels
                && first.metadata.annotations.clone().unwrap_or_default() == want_annotations;
            if same_endpoints && same_meta {
                continue;
            }
        }
        let mut slice = new_slice(endpoints, &ports, family);
        slice.endpoints = endpoints_wanted.into_values().take(max).collect();
        match first {
            Some(first) => {
                slice.metadata.generate_name = None;
                slice.metadata.name = first.metadata.name.clone();
                slice.metadata.resource_version = first.metadata.resource_version.clone();
                updates.push(slice);
            }
            None => creates.push(slice),
        }
    }
    for (_, slices) in existing_by_key {
        deletes.extend(slices);
    }
    // A create paired with a delete of the same family owned by these Endpoints becomes an update.
    for slice in deletes {
        let position = creates
            .iter()
            .rposition(|c: &EndpointSlice| c.address_type == slice.address_type);
        match position {
            Some(i) if super::owned_by(slice, "Endpoints", uid) => {
                let mut create = creates.remove(i);
                create.metadata.generate_name = None;
                create.metadata.name = slice.metadata.name.clone();
                create.metadata.resource_version = slice.metadata.resource_version.clone();
                updates.push(create);
            }
            _ => changes.delete.push(slice.clone()),
        }
    }
    changes.create = creates;
    changes.update = updates;
    changes
}
