//! The registry strategy steps kube-apiserver runs around Service allocation, in its order:
//! `patch_allocated_values` (a PUT that omits allocated values keeps them),
//! `normalize_cluster_ips` (clusterIP ↔ clusterIPs), `init_ip_family_fields` (ipFamilies and
//! ipFamilyPolicy given the cluster's families), then, after allocation,
//! `prepare_for_update` / `drop_type_dependent_fields` (fields a type change made meaningless).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{LoadBalancerStatus, Service, ServiceStatus};

use super::*;
use crate::field::FieldError;
use crate::validation::parse_ip;

fn same_cluster_ips(a: &Service, b: &Service) -> bool {
    cluster_ips(a) == cluster_ips(b)
}

fn same_ip_families(a: &Service, b: &Service) -> bool {
    ip_families(a) == ip_families(b)
}

fn node_port_set(svc: &Service) -> BTreeSet<i32> {
    ports(svc)
        .iter()
        .filter_map(|p| p.node_port)
        .filter(|&n| n != 0)
        .collect()
}

/// Fills clusterIP(s), nodePorts and healthCheckNodePort a PUT left out, from the stored
/// object, when both old and new still need them (`patchAllocatedValues`).
pub fn patch_allocated_values(new: &mut Service, old: &Service) {
    if needs_cluster_ip(old) && needs_cluster_ip(new) {
        let old_ip = cluster_ip(old).to_string();
        let old_ips = cluster_ips(old).to_vec();
        let spec = spec_mut(new);
        if spec.cluster_ip.as_deref().unwrap_or("").is_empty() && !old_ip.is_empty() {
            spec.cluster_ip = Some(old_ip);
        }
        if spec.cluster_ips.as_ref().is_none_or(|v| v.is_empty()) && !old_ips.is_empty() {
            spec.cluster_ips = Some(old_ips);
        }
    }
    if needs_node_port(old) && needs_node_port(new) {
        let used: BTreeSet<i32> = node_port_set(old)
            .intersection(&node_port_set(new))
            .copied()
            .collect();
        let by_name: std::collections::HashMap<String, i32> = ports(old)
            .iter()
            .map(|p| (p.name.clone().unwrap_or_default(), p.node_port.unwrap_or(0)))
            .collect();
        for p in spec_mut(new).ports.iter_mut().flatten() {
            if p.node_port.unwrap_or(0) == 0 {
                let old_val = by_name
                    .get(p.name.as_deref().unwrap_or(""))
                    .copied()
                    .unwrap_or(0);
                if old_val != 0 && !used.contains(&old_val) {
                    p.node_port = Some(old_val);
                }
            }
        }
    }
    if needs_health_check(old) && needs_health_check(new) && health_check_node_port(new) == 0 {
        let hc = health_check_node_port(old);
        if hc != 0 {
            spec_mut(new).health_check_node_port = Some(hc);
        }
    }
}

/// Keeps `clusterIP` and `clusterIPs` in sync for clients that only manage one of them.
pub fn normalize_cluster_ips(new: &mut Service, old: Option<&Service>) {
    let Some(old) = old else {
        let ip = cluster_ip(new).to_string();
        if !ip.is_empty() && cluster_ips(new).is_empty() {
            spec_mut(new).cluster_ips = Some(vec![ip]);
        }
        return;
    };
    if !cluster_ips(old).is_empty()
        && cluster_ips(new).is_empty()
        && cluster_ip(old) == cluster_ip(new)
    {
        spec_mut(new).cluster_ips = Some(cluster_ips(old).to_vec());
    }
    if cluster_ip(old) != cluster_ip(new) {
        if !cluster_ip(old).is_empty() && cluster_ip(new).is_empty() && same_cluster_ips(old, new) {
            spec_mut(new).cluster_ips = None;
        }
        let ip = cluster_ip(new).to_string();
        if !ip.is_empty() && same_cluster_ips(old, new) {
            spec_mut(new).cluster_ips = Some(vec![ip]);
        }
    }
}

fn is_matching_prefer_dual_stack(new: &Service, old: Option<&Service>) -> bool {
    let Some(old) = old else { return false };
    service_type(old) == service_type(new)
        && ip_family_policy(old) == Some(PREFER_DUAL_STACK)
        && ip_family_policy(new) == Some(PREFER_DUAL_STACK)
        && same_cluster_ips(old, new)
        && same_ip_families(old, new)
}

fn reduced(old: &[String], new: &[String]) -> bool {
    !new.is_empty() && new.len() < old.len()
}

/// Defaults and checks ipFamilies / ipFamilyPolicy against the cluster's configured families
/// (`cluster_families[0]` is the primary). Errors are answered as 422 Invalid.
pub fn init_ip_family_fields(
    svc: &mut Service,
    old: Option<&Service>,
    cluster_families: &[IpFamily],
) -> Result<(), Vec<FieldError>> {
    if service_type(svc) == TYPE_EXTERNAL_NAME {
        return Ok(());
    }
    if is_matching_prefer_dual_stack(svc, old) {
        return Ok(());
    }
    let configured = |f: &str| IpFamily::parse(f).is_some_and(|f| cluster_families.contains(&f));
    let default_family = cluster_families.first().copied().unwrap_or(IpFamily::V4);
    if ip_family_policy(svc).is_none() {
        let policy = if let Some(p) = old.and_then(ip_family_policy) {
            p.to_string()
        } else if cluster_ip(svc) == CLUSTER_IP_NONE && selector_is_empty(svc) {
            REQUIRE_DUAL_STACK.to_string()
        } else {
            SINGLE_STACK.to_string()
        };
        spec_mut(svc).ip_family_policy = Some(policy);
    }
    let errs = super::validate::validate_cluster_ips_related_fields(svc);
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut errs = Vec::new();
    if let Some(old) = old {
        if ip_family_policy(svc) == Some(SINGLE_STACK) {
            let same_ips = same_cluster_ips(old, svc);
            let same_fams = same_ip_families(old, svc);
            let spec = spec_mut(svc);
            if same_ips
                && let Some(v) = spec.cluster_ips.as_mut()
                && v.len() > 1
            {
                v.truncate(1);
            }
            if same_fams
                && let Some(v) = spec.ip_families.as_mut()
                && v.len() > 1
            {
                v.truncate(1);
            }
        } else {
            if reduced(cluster_ips(old), cluster_ips(svc)) {
                errs.push(FieldError::invalid(
                    "spec.ipFamilyPolicy",
                    go_opt_str(ip_family_policy(svc)),
                    "must be 'SingleStack' to release the secondary cluster IP",
                ));
            }
            if reduced(ip_families(old), ip_families(svc)) {
                errs.push(FieldError::invalid(
                    "spec.ipFamilyPolicy",
                    go_opt_str(ip_family_policy(svc)),
                    "must be 'SingleStack' to release the secondary IP family",
                ));
            }
        }
    }
    if ip_family_policy(svc) == Some(SINGLE_STACK) {
        if cluster_ips(svc).len() == 2 {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                go_opt_str(ip_family_policy(svc)),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if ip_families(svc).len() == 2 {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                go_opt_str(ip_family_policy(svc)),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    let ips = cluster_ips(svc).to_vec();
    let ips_val = go_string_slice(
        "string",
        svc.spec.as_ref().and_then(|s| s.cluster_ips.as_deref()),
    );
    for (i, ip) in ips.iter().enumerate() {
        if ip == CLUSTER_IP_NONE {
            break;
        }
        let Some(addr) = parse_ip(ip) else { continue };
        let fam = IpFamily::of(&addr);
        if i >= ip_families(svc).len() {
            if !cluster_families.contains(&fam) {
                errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    ips_val.clone(),
                    format!("{} is not configured on this cluster", fam.as_str()),
                ));
            } else {
                spec_mut(svc)
                    .ip_families
                    .get_or_insert_with(Vec::new)
                    .push(fam.as_str().to_string());
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if cluster_ip(svc) == CLUSTER_IP_NONE && selector_is_empty(svc) {
        let spec = spec_mut(svc);
        let fams = spec.ip_families.get_or_insert_with(Vec::new);
        if fams.is_empty() {
            fams.push(default_family.as_str().to_string());
        }
        if fams.len() < 2 && spec.ip_family_policy.as_deref() != Some(SINGLE_STACK) {
            let other = if fams[0] == IPV4 { IPV6 } else { IPV4 };
            fams.push(other.to_string());
        }
        return Ok(());
    }
    if ip_family_policy(svc) == Some(REQUIRE_DUAL_STACK) && cluster_families.len() < 2 {
        errs.push(FieldError::invalid(
            "spec.ipFamilyPolicy",
            go_opt_str(ip_family_policy(svc)),
            "this cluster is not configured for dual-stack services",
        ));
    }
    for (i, f) in ip_families(svc).iter().enumerate() {
        if !configured(f) {
            errs.push(FieldError::invalid(
                format!("spec.ipFamilies[{i}]"),
                crate::field::quote(f),
                "not configured on this cluster",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let dual_cluster = cluster_families.len() == 2;
    let spec = spec_mut(svc);
    let single = spec.ip_family_policy.as_deref() == Some(SINGLE_STACK);
    let fams = spec.ip_families.get_or_insert_with(Vec::new);
    if fams.is_empty() {
        fams.push(default_family.as_str().to_string());
    }
    if !single && fams.len() == 1 && dual_cluster {
        let other = if fams[0] == IPV4 { IPV6 } else { IPV4 };
        fams.push(other.to_string());
    }
    Ok(())
}

/// `PrepareForCreate`: status is not the client's to set.
pub fn prepare_for_create(svc: &mut Service) {
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus::default()),
        conditions: None,
    });
}

/// `PrepareForUpdate`: status stays as stored; fields the new type made meaningless go.
pub fn prepare_for_update(new: &mut Service, old: &Service) {
    new.status = old.status.clone();
    drop_type_dependent_fields(new, old);
}

/// Wipes fields a type change made meaningless, but only those the user did not also change
/// (so a deliberate change still reaches validation).
pub fn drop_type_dependent_fields(new: &mut Service, old: &Service) {
    if needs_cluster_ip(old) && !needs_cluster_ip(new) {
        let same_ips = same_cluster_ips(old, new);
        let same_fams = same_ip_families(old, new);
        let same_policy = ip_family_policy(old) == ip_family_policy(new);
        let spec = spec_mut(new);
        if same_ips {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        }
        if same_fams {
            spec.ip_families = None;
        }
        if same_policy {
            spec.ip_family_policy = None;
        }
    }
    if needs_node_port(old)
        && !needs_node_port(new)
        && node_port_set(old).is_superset(&node_port_set(new))
    {
        for p in spec_mut(new).ports.iter_mut().flatten() {
            p.node_port = None;
        }
    }
    if needs_health_check(old)
        && !needs_health_check(new)
        && health_check_node_port(old) == health_check_node_port(new)
    {
        spec_mut(new).health_check_node_port = None;
    }
    let was_lb = service_type(old) == TYPE_LOAD_BALANCER;
    let is_lb = service_type(new) == TYPE_LOAD_BALANCER;
    if was_lb && !is_lb {
        let old_alloc = old
            .spec
            .as_ref()
            .and_then(|s| s.allocate_load_balancer_node_ports);
        let old_class = old
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.clone());
        let spec = spec_mut(new);
        if old_alloc.is_some() && spec.allocate_load_balancer_node_ports == old_alloc {
            spec.allocate_load_balancer_node_ports = None;
        }
        if spec.load_balancer_class == old_class {
            spec.load_balancer_class = None;
        }
    }
    if externally_accessible(old)
        && !externally_accessible(new)
        && external_traffic_policy(old) == external_traffic_policy(new)
    {
        spec_mut(new).external_traffic_policy = None;
    }
    if was_lb && !is_lb {
        let status = new.status.get_or_insert_with(Default::default);
        status.load_balancer = Some(LoadBalancerStatus::default());
    }
}

#[cfg(test)]
mod tests;
