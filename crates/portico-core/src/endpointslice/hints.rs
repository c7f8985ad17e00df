//! Topology hints on endpoints: `trafficDistribution` (PreferClose/PreferSameZone → own zone;
//! PreferSameNode → own node and zone) and `service.kubernetes.io/topology-mode: Auto`
//! (zones get endpoints in proportion to their allocatable CPU, with upstream's 20 % overload
//! safeguard). Hints are computed over all of a Service's slices of one address family, in
//! slice order, so the result is a function of the input and a restart changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointHints, EndpointSlice, ForNode, ForZone};

use super::{AddressType, EventNote, Nodes};

/// The maximum overload any endpoint should see in Auto mode.
const OVERLOAD_THRESHOLD: f64 = 0.2;

pub const NO_ZONE_SPECIFIED: &str = "One or more endpoints do not have a zone specified";
pub const NO_ALLOCATED_HINTS_FOR_ZONES: &str = "No hints allocated for zones";
pub const TOPOLOGY_AWARE_HINTS_ENABLED: &str = "Topology Aware Hints has been enabled";
pub const INSUFFICIENT_NODE_INFO: &str =
    "Insufficient Node information: allocatable CPU or zone not specified on one or more nodes";
pub const NODES_READY_IN_ONE_ZONE_ONLY: &str = "Nodes only ready in one zone";
pub const INSUFFICIENT_NUMBER_OF_ENDPOINTS: &str = "Insufficient number of endpoints";
pub const MIN_ALLOCATION_EXCEEDS_OVERLOAD_THRESHOLD: &str = "Unable to allocate minimum required endpoints to each zone without exceeding overload threshold";

/// Which hint policy a Service asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintMode {
    /// No hints: any present are removed.
    None,
    /// Zone hints (and node hints when `same_node`) equal to the endpoint's own location.
    PreferClose { same_node: bool },
    /// CPU-proportional zone allocation.
    Auto,
}

/// The hint mode of a Service. The topology annotation wins over trafficDistribution, as upstream.
pub fn mode_for(service: &Service) -> HintMode {
    let annotations = service.metadata.annotations.as_ref();
    let annotation = annotations
        .and_then(|a| a.get(super::ANNOTATION_TOPOLOGY_MODE))
        .or_else(|| annotations.and_then(|a| a.get(super::ANNOTATION_TOPOLOGY_AWARE_HINTS)));
    if matches!(annotation.map(String::as_str), Some("Auto" | "auto")) {
        return HintMode::Auto;
    }
    match service
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref())
    {
        Some("PreferClose" | "PreferSameZone") => HintMode::PreferClose { same_node: false },
        Some("PreferSameNode") => HintMode::PreferClose { same_node: true },
        _ => HintMode::None,
    }
}

fn ready(endpoint: &Endpoint) -> bool {
    endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true)
}

fn zone_hint(zone: &str) -> Option<EndpointHints> {
    Some(EndpointHints {
        for_zones: Some(vec![ForZone {
            name: zone.to_string(),
        }]),
        for_nodes: None,
    })
}

/// Applies the mode's hints to `slices` (all slices of one family, final contents).
/// `had_hints` says whether the existing slices carried any hints (for the "enabled" event).
pub fn apply(
    mode: HintMode,
    slices: &mut [&mut EndpointSlice],
    nodes: &Nodes,
    family: AddressType,
    had_hints: bool,
) -> Vec<EventNote> {
    match mode {
        HintMode::None => {
            for endpoint in slices.iter_mut().flat_map(|s| s.endpoints.iter_mut()) {
                endpoint.hints = None;
            }
            Vec::new()
        }
        HintMode::PreferClose { same_node } => {
            for endpoint in slices.iter_mut().flat_map(|s| s.endpoints.iter_mut()) {
                if !ready(endpoint) {
                    continue;
                }
                let for_zones = endpoint
                    .zone
                    .as_ref()
                    .map(|z| vec![ForZone { name: z.clone() }]);
                let for_nodes = endpoint
                    .node_name
                    .as_ref()
                    .filter(|_| same_node)
                    .map(|n| vec![ForNode { name: n.clone() }]);
                endpoint.hints = if for_zones.is_some() || for_nodes.is_some() {
                    Some(EndpointHints {
                        for_zones,
                        for_nodes,
                    })
                } else {
                    None
                };
            }
            Vec::new()
        }
        HintMode::Auto => apply_auto(slices, nodes, family, had_hints),
    }
}

fn disabled(
    slices: &mut [&mut EndpointSlice],
    message: &str,
    family: AddressType,
) -> Vec<EventNote> {
    for endpoint in slices.iter_mut().flat_map(|s| s.endpoints.iter_mut()) {
        endpoint.hints = None;
    }
    vec![EventNote::warning(
        "TopologyAwareHintsDisabled",
        format!("{message}, addressType: {}", family.as_str()),
    )]
}

struct Allocation {
    desired: f64,
}

/// CPU share per zone over ready, non-control-plane nodes; `Err` carries upstream's reason.
fn zone_ratios(nodes: &Nodes) -> Result<BTreeMap<String, f64>, &'static str> {
    let mut cpu: BTreeMap<String, u64> = BTreeMap::new();
    for node in nodes.values() {
        if node.excluded_from_topology || !node.ready {
            continue;
        }
        match (&node.zone, node.allocatable_cpu_millis) {
            (Some(zone), millis) if millis > 0 => *cpu.entry(zone.clone()).or_default() += millis,
            _ => return Err(INSUFFICIENT_NODE_INFO),
        }
    }
    let total: u64 = cpu.values().sum();
    if total == 0 {
        return Err(INSUFFICIENT_NODE_INFO);
    }
    if cpu.len() < 2 {
        return Err(NODES_READY_IN_ONE_ZONE_ONLY);
    }
    Ok(cpu
        .into_iter()
        .map(|(z, c)| (z, c as f64 / total as f64))
        .collect())
}

fn allocations(
    ratios: &BTreeMap<String, f64>,
    endpoints: usize,
) -> Result<BTreeMap<String, Allocation>, String> {
    if ratios.len() > endpoints {
        return Err(format!(
            "{INSUFFICIENT_NUMBER_OF_ENDPOINTS} ({endpoints} endpoints, {} zones)",
            ratios.len()
        ));
    }
    let mut remaining = endpoints as i64;
    let mut out = BTreeMap::new();
    for (zone, ratio) in ratios {
        let desired = ratio * endpoints as f64;
        let minimum = (desired * (1.0 / (1.0 + OVERLOAD_THRESHOLD))).ceil();
        remaining -= minimum as i64;
        if remaining < 0 {
            return Err(format!(
                "{MIN_ALLOCATION_EXCEEDS_OVERLOAD_THRESHOLD} ({endpoints} endpoints, {} zones)",
                ratios.len()
            ));
        }
        out.insert(
            zone.clone(),
            Allocation {
                desired: desired.max(minimum),
            },
        );
    }
    Ok(out)
}

fn apply_auto(
    slices: &mut [&mut EndpointSlice],
    nodes: &Nodes,
    family: AddressType,
    had_hints: bool,
) -> Vec<EventNote> {
    let total_ready = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| ready(e))
        .count();
    let allocations = match zone_ratios(nodes)
        .map_err(str::to_string)
        .and_then(|r| allocations(&r, total_ready))
    {
        Ok(a) => a,
        Err(message) => return disabled(slices, &message, family),
    };

    // Step 1: every ready endpoint hints its own zone.
    let mut allocated: BTreeMap<String, i64> = BTreeMap::new();
    for endpoint in slices.iter_mut().flat_map(|s| s.endpoints.iter_mut()) {
        if !ready(endpoint) {
            endpoint.hints = None;
            continue;
        }
        let Some(zone) = endpoint.zone.clone().filter(|z| !z.is_empty()) else {
            return disabled(slices, NO_ZONE_SPECIFIED, family);
        };
        endpoint.hints = zone_hint(&zone);
        *allocated.entry(zone).or_default() += 1;
    }

    // Step 2: which zones have more than their share and which need more.
    let mut giving_desired: BTreeMap<String, f64> = BTreeMap::new();
    let mut receiving_desired: BTreeMap<String, f64> = BTreeMap::new();
    for (zone, allocation) in &allocations {
        let have = *allocated.get(zone).unwrap_or(&0) as f64;
        if have > allocation.desired {
            giving_desired.insert(zone.clone(), have - allocation.desired);
        } else if have < allocation.desired {
            receiving_desired.insert(zone.clone(), allocation.desired - have);
        }
    }
    let most = |m: &BTreeMap<String, f64>| {
        m.iter()
            .filter(|(_, n)| **n > 0.0)
            .fold(None::<(String, f64)>, |best, (z, n)| match best {
                Some((_, bn)) if bn >= *n => best,
                _ => Some((z.clone(), *n)),
            })
    };
    let mut giving: BTreeMap<String, i64> = BTreeMap::new();
    let mut receiving: BTreeMap<String, i64> = BTreeMap::new();
    while let (Some((gz, give)), Some((rz, receive))) =
        (most(&giving_desired), most(&receiving_desired))
    {
        if (give < 1.0 && receive < 1.0) || give < 0.5 || receive < 0.5 {
            break;
        }
        *giving.entry(gz.clone()).or_default() += 1;
        *giving_desired.entry(gz).or_default() -= 1.0;
        *receiving.entry(rz.clone()).or_default() += 1;
        *receiving_desired.entry(rz).or_default() -= 1.0;
    }

    // Step 3: move hints of endpoints in giving zones to receiving zones.
    for endpoint in slices.iter_mut().flat_map(|s| s.endpoints.iter_mut()) {
        if giving.is_empty() || receiving.is_empty() {
            break;
        }
        if !ready(endpoint) {
            continue;
        }
        let Some(zone) = endpoint.zone.clone() else {
            continue;
        };
        let Some(left) = giving.get_mut(&zone) else {
            continue;
        };
        let Some((target, want)) = receiving.iter_mut().next() else {
            break;
        };
        let target = target.clone();
        endpoint.hints = zone_hint(&target);
        *left -= 1;
        if *left == 0 {
            giving.remove(&zone);
        }
        *want -= 1;
        if *want == 0 {
            receiving.remove(&target);
        }
        *allocated.entry(target).or_default() += 1;
        *allocated.entry(zone).or_default() -= 1;
    }

    if allocated.is_empty() {
        return disabled(slices, NO_ALLOCATED_HINTS_FOR_ZONES, family);
    }
    if had_hints {
        Vec::new()
    } else {
        vec![EventNote::normal(
            "TopologyAwareHintsEnabled",
            format!(
                "{TOPOLOGY_AWARE_HINTS_ENABLED}, addressType: {}",
                family.as_str()
            ),
        )]
    }
}

/// True when any endpoint of any slice carries a hint.
pub fn any_hints<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> bool {
    slices
        .into_iter()
        .flat_map(|s| s.endpoints.iter())
        .any(|e| {
            e.hints.as_ref().is_some_and(|h| {
                h.for_zones.as_ref().is_some_and(|z| !z.is_empty())
                    || h.for_nodes.as_ref().is_some_and(|n| !n.is_empty())
            })
        })
}
