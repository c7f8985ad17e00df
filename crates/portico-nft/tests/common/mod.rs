//! Hand-built plans and sandbox helpers shared by the data-plane tests.
#![allow(dead_code)]

use std::net::IpAddr;

use portico_core::plan::{Endpoint, NoEndpoints, Plan, Protocol, ServicePortName, ServicePortPlan};

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Skips a test that needs root (network namespaces).
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root for network namespaces");
            return;
        }
    };
}

pub fn ep(ip: IpAddr, port: u16, local: bool) -> Endpoint {
    Endpoint {
        ip,
        port,
        ready: true,
        serving: true,
        terminating: false,
        is_local: local,
        node_name: None,
        zone: None,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

pub fn service(
    name: &str,
    protocol: Protocol,
    cluster_ip: &str,
    port: u16,
    endpoints: Vec<Endpoint>,
) -> ServicePortPlan {
    let no = NoEndpoints::Reject;
    ServicePortPlan {
        name: ServicePortName {
            namespace: "default".into(),
            name: name.into(),
            port: String::new(),
            protocol,
        },
        cluster_ips: vec![cluster_ip.parse().unwrap()],
        port,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        affinity_timeout_seconds: None,
        internal_policy_local: false,
        external_policy_local: false,
        health_check_node_port: None,
        local_endpoint_count: endpoints.iter().filter(|e| e.is_local).count(),
        cluster_endpoints: endpoints.clone(),
        external_endpoints: endpoints,
        cluster_no_endpoints: no,
        external_no_endpoints: no,
        last_change_trigger_time: None,
        cluster_policy_endpoints: vec![],
        local_policy_endpoints: vec![],
        has_endpoints_v4: false,
        has_endpoints_v6: false,
    }
}

/// A plan of hand-built services; `has_endpoints_*` and the Cluster-policy endpoints are
/// derived as `plan::build` would for policy Cluster.
pub fn plan_of(services: Vec<ServicePortPlan>) -> Plan {
    let mut plan = Plan::default();
    for mut s in services {
        let all: Vec<Endpoint> = s
            .cluster_endpoints
            .iter()
            .chain(s.external_endpoints.iter())
            .cloned()
            .collect();
        s.has_endpoints_v4 |= all.iter().any(|e| e.ip.is_ipv4());
        s.has_endpoints_v6 |= all.iter().any(|e| e.ip.is_ipv6());
        if s.cluster_policy_endpoints.is_empty() {
            s.cluster_policy_endpoints = s.cluster_endpoints.clone();
        }
        plan.services.insert(s.name.clone(), s);
    }
    plan
}
