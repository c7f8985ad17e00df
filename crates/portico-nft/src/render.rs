//! Pure rendering of one Service port of the [`Plan`](portico_core::plan::Plan) into the
//! elements it needs in one family's table. Slot ids are not known here: a value names an
//! endpoint *path* of the service, and the backend turns paths into slots.

use std::net::IpAddr;

use portico_core::plan::{NoEndpoints, Protocol, ServicePortPlan};

use crate::model::{SetDef, Val};
use crate::netlink::msg::Family;
use crate::ruleset::{mark, sets};

/// The sets a service contributes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetId {
    ClusterIps,
    ServiceIps,
    ServiceIpsInternal,
    ServiceNodeports,
    ServiceNodeportsInternal,
    NoEndpointServices,
    NoEndpointServicesDrop,
    NoEndpointNodeports,
    NoEndpointNodeportsDrop,
    FirewallIps,
    FirewallAllow,
}

impl SetId {
    pub fn def(self) -> SetDef {
        match self {
            SetId::ClusterIps => sets::cluster_ips(),
            SetId::ServiceIps => sets::service_ips(),
            SetId::ServiceIpsInternal => sets::service_ips_internal(),
            SetId::ServiceNodeports => sets::service_nodeports(),
            SetId::ServiceNodeportsInternal => sets::service_nodeports_internal(),
            SetId::NoEndpointServices => sets::no_endpoint_services(),
            SetId::NoEndpointServicesDrop => sets::no_endpoint_services_drop(),
            SetId::NoEndpointNodeports => sets::no_endpoint_nodeports(),
            SetId::NoEndpointNodeportsDrop => sets::no_endpoint_nodeports_drop(),
            SetId::FirewallIps => sets::firewall_ips(),
            SetId::FirewallAllow => sets::firewall_allow(),
        }
    }
}

/// The value of an entry: nothing (a set) or the mark of an endpoint path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    None,
    /// Index into [`Rendered::paths`] and the mark flags.
    Path {
        path: usize,
        flags: u32,
    },
}

/// One element a service wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub set: SetId,
    pub key: Vec<Val>,
    pub value: Value,
}

/// Everything one service port needs in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub entries: Vec<Entry>,
    /// Endpoint lists (sorted, deduplicated `ip:port`), one per distinct path.
    pub paths: Vec<Vec<(IpAddr, u16)>>,
    /// ClientIP affinity timeout, seconds.
    pub affinity_seconds: Option<u32>,
    /// Local endpoint IPs (for the hairpin set).
    pub endpoint_ips: Vec<IpAddr>,
}

pub fn family_of(ip: &IpAddr) -> Family {
    if ip.is_ipv4() {
        Family::Ipv4
    } else {
        Family::Ipv6
    }
}

pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn path_of(rendered: &mut Rendered, endpoints: Vec<(IpAddr, u16)>) -> Option<usize> {
    if endpoints.is_empty() {
        return None;
    }
    if let Some(i) = rendered.paths.iter().position(|p| *p == endpoints) {
        return Some(i);
    }
    rendered.paths.push(endpoints);
    Some(rendered.paths.len() - 1)
}

fn endpoints_of(eps: &[portico_core::plan::Endpoint], family: Family) -> Vec<(IpAddr, u16)> {
    let mut out: Vec<(IpAddr, u16)> = eps
        .iter()
        .filter(|e| family_of(&e.ip) == family)
        .map(|e| (e.ip, e.port))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Renders one service port for one family. `masquerade_off_cluster` is whether the table
/// has the off-cluster masquerade rule (only then the flag matters, but it is harmless).
pub fn render(sp: &ServicePortPlan, family: Family) -> Rendered {
    let mut r = Rendered::default();
    let cluster_ips: Vec<IpAddr> = sp
        .cluster_ips
        .iter()
        .copied()
        .filter(|ip| family_of(ip) == family)
        .collect();
    if cluster_ips.is_empty() {
        // Not a Service of this family (node ports and external addresses follow the family
        // of its cluster IPs, as one upstream proxier per family does).
        return r;
    }
    let proto = Val::Proto(proto_number(sp.name.protocol));
    let port = Val::Port(sp.port);
    let ipv6 = family == Family::Ipv6;
    let cluster_eps = endpoints_of(&sp.cluster_endpoints, family);
    let external_eps = endpoints_of(&sp.external_endpoints, family);
    let short_circuit_eps = endpoints_of(&sp.cluster_policy_endpoints, family);
    // Hairpin (a pod reaching itself through its Service) can only happen for a pod of this
    // node: only local endpoints (or ones without a node name) go into the hairpin set.
    let mut ips: Vec<IpAddr> = sp
        .cluster_endpoints
        .iter()
        .chain(sp.external_endpoints.iter())
        .chain(sp.cluster_policy_endpoints.iter())
        .filter(|e| family_of(&e.ip) == family && (e.is_local || e.node_name.is_none()))
        .map(|e| e.ip)
        .collect();
    ips.sort();
    ips.dedup();
    r.endpoint_ips = ips;
    let cluster_path = path_of(&mut r, cluster_eps);
    let external_path = path_of(&mut r, external_eps);
    let short_circuit_path = if sp.external_policy_local {
        path_of(&mut r, short_circuit_eps)
    } else {
        None
    };
    // Upstream's hasAnyEndpoints per family: Reject when none anywhere, else Drop.
    let verdict = |external: bool| {
        sp.no_endpoints_verdict(ipv6, external)
            .unwrap_or(NoEndpoints::Reject)
    };
    r.affinity_seconds = sp.affinity_timeout_seconds;

    let no_endpoints = |verdict: NoEndpoints, nodeport: bool| match (verdict, nodeport) {
        (NoEndpoints::Reject, false) => SetId::NoEndpointServices,
        (NoEndpoints::Drop, false) => SetId::NoEndpointServicesDrop,
        (NoEndpoints::Reject, true) => SetId::NoEndpointNodeports,
        (NoEndpoints::Drop, true) => SetId::NoEndpointNodeportsDrop,
    };
    let external_flags = if sp.external_policy_local {
        0
    } else {
        mark::MASQ_ALWAYS
    };

    for ip in &cluster_ips {
        r.entries.push(Entry {
            set: SetId::ClusterIps,
            key: vec![Val::Addr(*ip)],
            value: Value::None,
        });
        let key = vec![Val::Addr(*ip), proto.clone(), port.clone()];
        match cluster_path {
            Some(path) => r.entries.push(Entry {
                set: SetId::ServiceIps,
                key,
                value: Value::Path {
                    path,
                    flags: mark::MASQ_OFF_CLUSTER,
                },
            }),
            None => r.entries.push(Entry {
                set: no_endpoints(verdict(false), false),
                key,
                value: Value::None,
            }),
        }
    }

    let mut externals: Vec<IpAddr> = sp
        .external_ips
        .iter()
        .chain(sp.load_balancer_ips.iter())
        .copied()
        .filter(|ip| family_of(ip) == family)
        .collect();
    externals.sort();
    externals.dedup();
    externals.retain(|ip| !cluster_ips.contains(ip));
    let mut external_keys: Vec<Vec<Val>> = externals
        .iter()
        .map(|ip| vec![Val::Addr(*ip), proto.clone(), port.clone()])
        .collect();
    let nodeport_key = sp.node_port.map(|np| vec![proto.clone(), Val::Port(np)]);
    for (key, nodeport) in external_keys
        .drain(..)
        .map(|k| (k, false))
        .chain(nodeport_key.map(|k| (k, true)))
    {
        let (main, internal) = if nodeport {
            (SetId::ServiceNodeports, SetId::ServiceNodeportsInternal)
        } else {
            (SetId::ServiceIps, SetId::ServiceIpsInternal)
        };
        match external_path {
            Some(path) => r.entries.push(Entry {
                set: main,
                key: key.clone(),
                value: Value::Path {
                    path,
                    flags: external_flags,
                },
            }),
            None => r.entries.push(Entry {
                set: no_endpoints(verdict(true), nodeport),
                key: key.clone(),
                value: Value::None,
            }),
        }
        if let Some(path) = short_circuit_path {
            // In-cluster traffic to an external address is short-circuited to the Cluster-policy
            // endpoints (upstream's external-chain behaviour); node-local sources get masqueraded.
            r.entries.push(Entry {
                set: internal,
                key,
                value: Value::Path {
                    path,
                    flags: mark::MASQ_OFF_CLUSTER,
                },
            });
        }
    }

    if !sp.load_balancer_source_ranges.is_empty() {
        for ip in sp
            .load_balancer_ips
            .iter()
            .filter(|ip| family_of(ip) == family)
        {
            let key = vec![Val::Addr(*ip), proto.clone(), port.clone()];
            r.entries.push(Entry {
                set: SetId::FirewallIps,
                key: key.clone(),
                value: Value::None,
            });
            for range in &sp.load_balancer_source_ranges {
                if family_of(&range.addr()) != family {
                    continue;
                }
                let mut k = key.clone();
                k.push(Val::Prefix(range.trunc()));
                r.entries.push(Entry {
                    set: SetId::FirewallAllow,
                    key: k,
                    value: Value::None,
                });
            }
        }
    }
    r
}

/// Random buckets of a slot with `endpoints` endpoints (filled round-robin, so the pick is
/// exactly uniform up to `MAX_BUCKETS` endpoints).
pub fn bucket_count(endpoints: usize) -> u32 {
    (endpoints as u32).clamp(1, crate::ruleset::MAX_BUCKETS)
}
