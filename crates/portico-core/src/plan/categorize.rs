//! Upstream's CategorizeEndpoints: which endpoints the Cluster and Local traffic policies use,
//! with topology hints and the ready → serving-terminating fallback. One IP family at a time.

use super::Endpoint;

/// The result of [`categorize`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// Usable endpoints for Cluster policy (empty when the port never uses it).
    pub cluster: Vec<Endpoint>,
    /// Usable endpoints for Local policy (empty when the port never uses it).
    pub local: Vec<Endpoint>,
    /// Some usable endpoint exists anywhere in the cluster.
    pub has_any_endpoints: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TopologyMode {
    None,
    PreferSameZone,
    PreferSameNode,
}

fn serving_terminating(ep: &Endpoint) -> bool {
    ep.serving && ep.terminating
}

/// Upstream's topology rule, all or nothing: node hints are used when every ready endpoint
/// has one and one names this node; else zone hints when every ready endpoint has one and
/// one names this node's zone; else no filtering.
fn topology_mode(endpoints: &[Endpoint], node_name: &str, zone: &str) -> TopologyMode {
    let mut has_ready = false;
    let mut all_node_hints = true;
    let mut for_node = false;
    let mut all_zone_hints = true;
    let mut for_zone = false;
    for ep in endpoints.iter().filter(|ep| ep.ready) {
        has_ready = true;
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.iter().any(|n| n == node_name) {
            for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if ep.zone_hints.iter().any(|z| z == zone) {
            for_zone = true;
        }
    }
    if !has_ready {
        TopologyMode::None
    } else if all_node_hints && for_node {
        TopologyMode::PreferSameNode
    } else if all_zone_hints && for_zone {
        TopologyMode::PreferSameZone
    } else {
        TopologyMode::None
    }
}

fn available_for_topology(ep: &Endpoint, mode: TopologyMode, node_name: &str, zone: &str) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => ep.node_hints.iter().any(|n| n == node_name),
        TopologyMode::PreferSameZone => ep.zone_hints.iter().any(|z| z == zone),
    }
}

/// Categorizes one family's endpoints of one Service port. `uses_cluster` / `uses_local` say
/// which policies the port ever uses (upstream's `UsesClusterEndpoints` / `UsesLocalEndpoints`).
pub fn categorize(
    endpoints: &[Endpoint],
    uses_cluster: bool,
    uses_local: bool,
    node_name: &str,
    zone: &str,
) -> Categorized {
    let mut out = Categorized::default();
    if endpoints.is_empty() {
        return out;
    }
    if uses_cluster {
        let mode = topology_mode(endpoints, node_name, zone);
        out.cluster = endpoints
            .iter()
            .filter(|ep| ep.ready && available_for_topology(ep, mode, node_name, zone))
            .cloned()
            .collect();
        // Topology already fell back when no ready endpoint matched it, so an empty list here
        // means nothing is ready anywhere: use serving-terminating endpoints.
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .filter(|ep| serving_terminating(ep))
                .cloned()
                .collect();
        }
        out.has_any_endpoints = !out.cluster.is_empty();
    }
    if !uses_local {
        return out;
    }
    let mut local_ready = false;
    let mut local_serving_terminating = false;
    for ep in endpoints {
        if ep.ready {
            out.has_any_endpoints = true;
            local_ready |= ep.is_local;
        } else if serving_terminating(ep) {
            out.has_any_endpoints = true;
            local_serving_terminating |= ep.is_local;
        }
    }
    if local_ready {
        out.local = endpoints
            .iter()
            .filter(|ep| ep.is_local && ep.ready)
            .cloned()
            .collect();
    } else if local_serving_terminating {
        out.local = endpoints
            .iter()
            .filter(|ep| ep.is_local && serving_terminating(ep))
            .cloned()
            .collect();
    }
    out
}
