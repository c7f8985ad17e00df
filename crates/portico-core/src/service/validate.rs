//! Service validation with kube-apiserver's field paths, error types and texts
//! (`ValidateService`, `ValidateServiceUpdate`, `ValidateServiceStatusUpdate`), quirks kept:
//! the `spec.LoadBalancerSourceRanges` path and the bare `allocateLoadBalancerNodePorts` path
//! of the Required error.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::field::{ErrorType, FieldError, quote};
use crate::validation::{
    NameKind, is_dns1123_subdomain, is_valid_port_name, is_valid_port_num, not_supported, parse_ip,
    validate_cidr, validate_dns1123_label, validate_ip, validate_labels, validate_non_special_ip,
    validate_object_meta, validate_object_meta_update, validate_qualified_name,
};

const SESSION_AFFINITIES: &[&str] = &["ClientIP", "None"];
const SERVICE_TYPES: &[&str] = &[
    TYPE_CLUSTER_IP,
    TYPE_EXTERNAL_NAME,
    TYPE_LOAD_BALANCER,
    TYPE_NODE_PORT,
];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const FAMILIES: &[&str] = &[IPV4, IPV6];
const FAMILY_POLICIES: &[&str] = &[PREFER_DUAL_STACK, REQUIRE_DUAL_STACK, SINGLE_STACK];
const TRAFFIC_POLICIES: &[&str] = &[POLICY_CLUSTER, POLICY_LOCAL];
const IP_MODES: &[&str] = &["Proxy", "VIP"];
/// `trafficDistribution` values accepted (PreferSame* are GA in 1.35; accepted here).
pub const TRAFFIC_DISTRIBUTIONS: &[&str] = &["PreferClose", "PreferSameNode", "PreferSameZone"];
pub const MAX_CLIENT_IP_AFFINITY_SECONDS: i32 = 86400;
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
pub const ANNOTATION_TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
pub const ANNOTATION_LB_SOURCE_RANGES: &str =
    "service.beta.kubernetes.io/load-balancer-source-ranges";
/// The kubelet's port, never exposed by a LoadBalancer.
pub const KUBELET_PORT: i32 = 10250;

/// `ValidateService` (create), metadata included (Service names are DNS-1035 labels).
pub fn validate_service(svc: &Service) -> Vec<FieldError> {
    let mut errs = validate_object_meta(&svc.metadata, true, NameKind::Dns1035Label);
    errs.extend(validate_service_spec(svc));
    errs
}

/// Everything `ValidateService` checks except metadata.
pub fn validate_service_spec(svc: &Service) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let empty = Default::default();
    let spec = svc.spec.as_ref().unwrap_or(&empty);
    let annotations = svc.metadata.annotations.as_ref();
    if let Some(a) = annotations
        && let (Some(mode), Some(hints)) = (
            a.get(ANNOTATION_TOPOLOGY_MODE),
            a.get(ANNOTATION_TOPOLOGY_AWARE_HINTS),
        )
        && mode != hints
    {
        errs.push(FieldError::invalid(
            format!("metadata.annotations[{ANNOTATION_TOPOLOGY_MODE}]"),
            quote(mode),
            format!(
                "must match annotations[{ANNOTATION_TOPOLOGY_AWARE_HINTS}] when both are specified"
            ),
        ));
    }
    let headless = is_headless(svc);
    let stype = service_type(svc);
    let ports = ports(svc);
    if ports.is_empty() && !headless && stype != TYPE_EXTERNAL_NAME {
        errs.push(FieldError::required("spec.ports", ""));
    }
    match stype {
        TYPE_LOAD_BALANCER | TYPE_NODE_PORT if headless => {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                quote(CLUSTER_IP_NONE),
                format!("may not be set to 'None' for {stype} services"),
            ));
        }
        TYPE_EXTERNAL_NAME => {
            if !cluster_ips(svc).is_empty() {
                errs.push(FieldError::forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                ));
            }
            if !ip_families(svc).is_empty() {
                errs.push(FieldError::forbidden(
                    "spec.ipFamilies",
                    "may not be set for ExternalName services",
                ));
            }
            if spec.ip_family_policy.is_some() {
                errs.push(FieldError::forbidden(
                    "spec.ipFamilyPolicy",
                    "may not be set for ExternalName services",
                ));
            }
            let name = spec.external_name.as_deref().unwrap_or("");
            let cname = name.strip_suffix('.').unwrap_or(name);
            if cname.is_empty() {
                errs.push(FieldError::required("spec.externalName", ""));
            } else {
                for m in is_dns1123_subdomain(cname) {
                    errs.push(FieldError::invalid("spec.externalName", quote(cname), m));
                }
            }
        }
        _ => {}
    }
    if stype == TYPE_LOAD_BALANCER {
        for (i, p) in ports.iter().enumerate() {
            if p.port == KUBELET_PORT {
                errs.push(FieldError::invalid(
                    format!("spec.ports[{i}]"),
                    p.port.to_string(),
                    format!(
                        "may not expose port {KUBELET_PORT} externally since it is used by kubelet"
                    ),
                ));
            }
        }
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        errs.extend(validate_service_port(
            p,
            ports.len() > 1,
            &mut names,
            &format!("spec.ports[{i}]"),
        ));
    }
    if let Some(sel) = &spec.selector {
        errs.extend(validate_labels(sel, "spec.selector"));
    }
    match spec.session_affinity.as_deref().unwrap_or("") {
        "" => errs.push(FieldError::required("spec.sessionAffinity", "")),
        "ClientIP" => errs.extend(validate_client_ip_affinity(spec)),
        "None" => {
            if spec.session_affinity_config.is_some() {
                errs.push(FieldError::forbidden(
                    "spec.sessionAffinityConfig",
                    "must not be set when session affinity is None",
                ));
            }
        }
        other => errs.push(not_supported(
            "spec.sessionAffinity",
            other,
            SESSION_AFFINITIES,
        )),
    }
    errs.extend(validate_cluster_ips_related_fields(svc));
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let p = format!("spec.externalIPs[{i}]");
        let e = validate_ip(ip, &p);
        if e.is_empty() {
            errs.extend(validate_non_special_ip(ip, &p));
        } else {
            errs.extend(e);
        }
    }
    if stype.is_empty() {
        errs.push(FieldError::required("spec.type", ""));
    } else if !SERVICE_TYPES.contains(&stype) {
        errs.push(not_supported("spec.type", stype, SERVICE_TYPES));
    }
    if stype == TYPE_CLUSTER_IP {
        for (i, p) in ports.iter().enumerate() {
            if p.node_port.unwrap_or(0) != 0 {
                errs.push(FieldError::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    let mut node_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let np = p.node_port.unwrap_or(0);
        if np == 0 {
            continue;
        }
        if !node_ports.insert((p.protocol.as_deref().unwrap_or(""), np)) {
            errs.push(FieldError::duplicate(
                format!("spec.ports[{i}].nodePort"),
                np.to_string(),
            ));
        }
    }
    let mut seen_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("");
        if !seen_ports.insert((proto, p.port)) {
            errs.push(FieldError::duplicate(
                format!("spec.ports[{i}]"),
                go_service_port(proto, p.port),
            ));
        }
    }
    let ranges = spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]);
    if !ranges.is_empty() {
        let fp = "spec.LoadBalancerSourceRanges";
        if stype != TYPE_LOAD_BALANCER {
            errs.push(FieldError::forbidden(
                fp,
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        for (i, v) in ranges.iter().enumerate() {
            errs.extend(validate_cidr(v.trim(), &format!("{fp}[{i}]")));
        }
    } else if let Some(val) = annotations.and_then(|a| a.get(ANNOTATION_LB_SOURCE_RANGES)) {
        let fp = format!("metadata.annotations[{ANNOTATION_LB_SOURCE_RANGES}]");
        if stype != TYPE_LOAD_BALANCER {
            errs.push(FieldError::forbidden(
                &fp,
                "may only be used when `type` is 'LoadBalancer'",
            ));
        }
        let val = val.trim();
        if !val.is_empty() {
            for v in val.split(',') {
                errs.extend(validate_cidr(v.trim(), &fp));
            }
        }
    }
    if spec.allocate_load_balancer_node_ports.is_some() && stype != TYPE_LOAD_BALANCER {
        errs.push(FieldError::forbidden(
            "spec.allocateLoadBalancerNodePorts",
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    if stype == TYPE_LOAD_BALANCER && spec.allocate_load_balancer_node_ports.is_none() {
        errs.push(FieldError::required("allocateLoadBalancerNodePorts", ""));
    }
    errs.extend(validate_load_balancer_class(None, svc));
    errs.extend(validate_external_traffic_policy(svc));
    errs.extend(validate_internal_traffic_policy(svc));
    if let Some(td) = spec.traffic_distribution.as_deref()
        && !TRAFFIC_DISTRIBUTIONS.contains(&td)
    {
        errs.push(not_supported(
            "spec.trafficDistribution",
            td,
            TRAFFIC_DISTRIBUTIONS,
        ));
    }
    errs
}

/// Go's `%#v` of the `core.ServicePort` key upstream builds for duplicate and kubelet-port errors.
pub fn go_service_port(protocol: &str, port: i32) -> String {
    format!(
        "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
        quote(protocol)
    )
}

fn validate_service_port(
    p: &ServicePort,
    require_name: bool,
    names: &mut BTreeSet<String>,
    path: &str,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = p.name.as_deref().unwrap_or("");
    if require_name && name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    } else if !name.is_empty() {
        errs.extend(validate_dns1123_label(name, &format!("{path}.name")));
        if !names.insert(name.to_string()) {
            errs.push(FieldError::duplicate(format!("{path}.name"), quote(name)));
        }
    }
    for m in is_valid_port_num(p.port as i64) {
        errs.push(FieldError::invalid(
            format!("{path}.port"),
            p.port.to_string(),
            m,
        ));
    }
    match p.protocol.as_deref().unwrap_or("") {
        "" => errs.push(FieldError::required(format!("{path}.protocol"), "")),
        proto if !PROTOCOLS.contains(&proto) => {
            errs.push(not_supported(&format!("{path}.protocol"), proto, PROTOCOLS))
        }
        _ => {}
    }
    match &p.target_port {
        Some(IntOrString::Int(n)) => {
            for m in is_valid_port_num(*n as i64) {
                errs.push(FieldError::invalid(
                    format!("{path}.targetPort"),
                    n.to_string(),
                    m,
                ));
            }
        }
        Some(IntOrString::String(s)) => {
            for m in is_valid_port_name(s) {
                errs.push(FieldError::invalid(
                    format!("{path}.targetPort"),
                    quote(s),
                    m,
                ));
            }
        }
        None => {
            for m in is_valid_port_num(0) {
                errs.push(FieldError::invalid(format!("{path}.targetPort"), "0", m));
            }
        }
    }
    if let Some(ap) = &p.app_protocol {
        errs.extend(validate_qualified_name(ap, &format!("{path}.appProtocol")));
    }
    errs
}

fn validate_client_ip_affinity(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<FieldError> {
    let detail = "when session affinity type is ClientIP";
    let Some(cfg) = &spec.session_affinity_config else {
        return vec![FieldError::required("spec.sessionAffinityConfig", detail)];
    };
    let Some(cip) = &cfg.client_ip else {
        return vec![FieldError::required(
            "spec.sessionAffinityConfig.clientIP",
            detail,
        )];
    };
    let path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
    let Some(t) = cip.timeout_seconds else {
        return vec![FieldError::required(path, detail)];
    };
    if t <= 0 || t > MAX_CLIENT_IP_AFFINITY_SECONDS {
        return vec![FieldError::invalid(
            path,
            t.to_string(),
            format!("must be greater than 0 and less than {MAX_CLIENT_IP_AFFINITY_SECONDS}"),
        )];
    }
    Vec::new()
}

/// `ValidateServiceClusterIPsRelatedFields`; also run before allocation.
pub fn validate_cluster_ips_related_fields(svc: &Service) -> Vec<FieldError> {
    if service_type(svc) == TYPE_EXTERNAL_NAME {
        return Vec::new();
    }
    let mut errs = Vec::new();
    let spec_ips = svc.spec.as_ref().and_then(|s| s.cluster_ips.as_deref());
    let ips_val = || go_string_slice("string", spec_ips);
    let ips = cluster_ips(svc);
    let cip = cluster_ip(svc);
    if !cip.is_empty() {
        if ips.is_empty() {
            errs.push(FieldError::required("spec.clusterIPs", ""));
        } else if ips[0] != cip {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                ips_val(),
                "first value must match `clusterIP`",
            ));
        }
    } else if !ips.is_empty() {
        errs.push(FieldError::invalid(
            "spec.clusterIPs",
            ips_val(),
            "must be empty when `clusterIP` is not specified",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, fam) in ip_families(svc).iter().enumerate() {
        if !FAMILIES.contains(&fam.as_str()) {
            errs.push(not_supported(
                &format!("spec.ipFamilies[{i}]"),
                fam,
                FAMILIES,
            ));
        }
        if !seen.insert(fam.as_str()) {
            errs.push(FieldError::duplicate(
                format!("spec.ipFamilies[{i}]"),
                quote(fam),
            ));
        }
    }
    if let Some(p) = ip_family_policy(svc)
        && !FAMILY_POLICIES.contains(&p)
    {
        errs.push(not_supported("spec.ipFamilyPolicy", p, FAMILY_POLICIES));
    }
    let mut has_invalid = false;
    for (i, ip) in ips.iter().enumerate() {
        if i == 0 && ip == CLUSTER_IP_NONE {
            if ips.len() > 1 {
                has_invalid = true;
                errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    ips_val(),
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        let e = validate_ip(ip, &format!("spec.clusterIPs[{i}]"));
        has_invalid |= !e.is_empty();
        errs.extend(e);
    }
    if ips.len() > 2 {
        errs.push(FieldError::invalid(
            "spec.clusterIPs",
            ips_val(),
            "may only hold up to 2 values",
        ));
    }
    if has_invalid {
        return errs;
    }
    if ips.len() > 1 {
        let fams: Vec<bool> = ips
            .iter()
            .filter_map(|s| parse_ip(s))
            .map(|ip| ip.is_ipv6())
            .collect();
        let dual = fams.len() == 2 && fams[0] != fams[1];
        if !dual {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                ips_val(),
                "may specify no more than one IP for each IP family",
            ));
        }
    }
    let fams = ip_families(svc);
    if !is_headless(svc) && !ips.is_empty() && !fams.is_empty() {
        for (i, ip) in ips.iter().enumerate() {
            if i >= fams.len() {
                break;
            }
            let is_v6 = parse_ip(ip).is_some_and(|a| a.is_ipv6());
            if fams[i] == IPV4 && is_v6 {
                errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    quote(ip),
                    format!("expected an IPv4 value as indicated by `ipFamilies[{i}]`"),
                ));
            }
            if fams[i] == IPV6 && !is_v6 {
                errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    quote(ip),
                    format!("expected an IPv6 value as indicated by `ipFamilies[{i}]`"),
                ));
            }
        }
    }
    errs
}

fn validate_load_balancer_class(old: Option<&Service>, svc: &Service) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let class = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|sp| sp.load_balancer_class.clone())
    };
    let new_class = class(svc);
    if let Some(old) = old
        && service_type(old) == TYPE_LOAD_BALANCER
        && service_type(svc) == TYPE_LOAD_BALANCER
        && class(old) != new_class
    {
        errs.push(FieldError::invalid(
            "spec.loadBalancerClass",
            go_opt_str(new_class.as_deref()),
            "may not change once set",
        ));
    }
    if service_type(svc) == TYPE_LOAD_BALANCER {
        if let Some(c) = &new_class {
            errs.extend(validate_qualified_name(c, "spec.loadBalancerClass"));
        }
    } else if new_class.is_some() {
        errs.push(FieldError::forbidden(
            "spec.loadBalancerClass",
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    errs
}

fn validate_external_traffic_policy(svc: &Service) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let etp = external_traffic_policy(svc);
    if !externally_accessible(svc) {
        if !etp.is_empty() {
            errs.push(FieldError::invalid(
                "spec.externalTrafficPolicy",
                quote(etp),
                "may only be set for externally-accessible services",
            ));
        }
    } else if etp.is_empty() {
        errs.push(FieldError::required("spec.externalTrafficPolicy", ""));
    } else if !TRAFFIC_POLICIES.contains(&etp) {
        errs.push(not_supported(
            "spec.externalTrafficPolicy",
            etp,
            TRAFFIC_POLICIES,
        ));
    }
    let hc = health_check_node_port(svc);
    if !needs_health_check(svc) {
        if hc != 0 {
            errs.push(FieldError::invalid(
                "spec.healthCheckNodePort",
                hc.to_string(),
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
    } else if hc == 0 {
        errs.push(FieldError::required("spec.healthCheckNodePort", ""));
    } else {
        for m in is_valid_port_num(hc as i64) {
            errs.push(FieldError::invalid(
                "spec.healthCheckNodePort",
                hc.to_string(),
                m,
            ));
        }
    }
    errs
}

fn validate_internal_traffic_policy(svc: &Service) -> Vec<FieldError> {
    let itp = svc
        .spec
        .as_ref()
        .and_then(|s| s.internal_traffic_policy.as_deref());
    match itp {
        None => {
            let t = service_type(svc);
            if t == TYPE_NODE_PORT || t == TYPE_LOAD_BALANCER || t == TYPE_CLUSTER_IP {
                vec![FieldError::required("spec.internalTrafficPolicy", "")]
            } else {
                Vec::new()
            }
        }
        Some(p) if !TRAFFIC_POLICIES.contains(&p) => vec![not_supported(
            "spec.internalTrafficPolicy",
            p,
            TRAFFIC_POLICIES,
        )],
        _ => Vec::new(),
    }
}

/// `ValidateServiceUpdate`: metadata immutability, clusterIPs/ipFamilies up- and downgrades,
/// loadBalancerClass and healthCheckNodePort immutability, then the create rules.
pub fn validate_service_update(svc: &Service, old: &Service) -> Vec<FieldError> {
    let mut errs = validate_object_meta_update(&svc.metadata, &old.metadata);
    errs.extend(validate_upgrade_downgrade_cluster_ips(old, svc));
    errs.extend(validate_upgrade_downgrade_ip_families(old, svc));
    errs.extend(validate_load_balancer_class(Some(old), svc));
    if needs_health_check(old)
        && needs_health_check(svc)
        && health_check_node_port(old) != health_check_node_port(svc)
    {
        errs.push(FieldError::forbidden(
            "spec.healthCheckNodePort",
            "field is immutable",
        ));
    }
    errs.extend(validate_service(svc));
    errs
}

fn validate_upgrade_downgrade_cluster_ips(old: &Service, svc: &Service) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if service_type(svc) == TYPE_EXTERNAL_NAME || service_type(old) == TYPE_EXTERNAL_NAME {
        return errs;
    }
    if is_headless(old) && is_headless(svc) {
        return errs;
    }
    let (o, n) = (cluster_ips(old), cluster_ips(svc));
    let nval = || {
        go_string_slice(
            "string",
            svc.spec.as_ref().and_then(|s| s.cluster_ips.as_deref()),
        )
    };
    if o.len() == n.len() {
        for (i, ip) in o.iter().enumerate() {
            if *ip != n[i] {
                errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    nval(),
                    "may not change once set",
                ));
            }
        }
    } else if o.len() > n.len() {
        if n.is_empty() {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                nval(),
                "primary clusterIP can not be unset",
            ));
        }
        if !o.is_empty() && !n.is_empty() && n[0] != o[0] {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                nval(),
                "may not change once set",
            ));
        }
        if n.len() == 1 && ip_family_policy(svc) != Some(SINGLE_STACK) {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                go_opt_str(ip_family_policy(svc)),
                "must be set to 'SingleStack' when releasing the secondary clusterIP",
            ));
        }
    } else if !o.is_empty() && n[0] != o[0] {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            nval(),
            "may not change once set",
        ));
    }
    errs
}

fn validate_upgrade_downgrade_ip_families(old: &Service, svc: &Service) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if service_type(svc) == TYPE_EXTERNAL_NAME || service_type(old) == TYPE_EXTERNAL_NAME {
        return errs;
    }
    if is_headless(old) != is_headless(svc) || is_headless(svc) {
        return errs;
    }
    let (o, n) = (ip_families(old), ip_families(svc));
    let fam_val = || {
        go_string_slice(
            "core.IPFamily",
            svc.spec.as_ref().and_then(|s| s.ip_families.as_deref()),
        )
    };
    let ips_val = || {
        go_string_slice(
            "string",
            svc.spec.as_ref().and_then(|s| s.cluster_ips.as_deref()),
        )
    };
    if o.len() == n.len() {
        for (i, f) in o.iter().enumerate() {
            if *f != n[i] {
                errs.push(FieldError::invalid(
                    "spec.ipFamilies[0]",
                    fam_val(),
                    "may not change once set",
                ));
            }
        }
    } else if o.len() > n.len() {
        if cluster_ips(svc).is_empty() {
            errs.push(FieldError::invalid(
                "spec.ipFamilies[0]",
                fam_val(),
                "primary ipFamily can not be unset",
            ));
        }
        if !n.is_empty() && n[0] != o[0] {
            errs.push(FieldError::invalid(
                "spec.ipFamilies[0]",
                ips_val(),
                "may not change once set",
            ));
        }
        if n.len() == 1 && ip_family_policy(svc) != Some(SINGLE_STACK) {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                go_opt_str(ip_family_policy(svc)),
                "must be set to 'SingleStack' when releasing the secondary ipFamily",
            ));
        }
    } else if !o.is_empty() && !n.is_empty() && n[0] != o[0] {
        errs.push(FieldError::invalid(
            "spec.ipFamilies[0]",
            ips_val(),
            "may not change once set",
        ));
    }
    errs
}

/// `ValidateServiceStatusUpdate`: metadata immutability and `status.loadBalancer`.
pub fn validate_service_status_update(svc: &Service, old: &Service) -> Vec<FieldError> {
    let mut errs = validate_object_meta_update(&svc.metadata, &old.metadata);
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_deref())
        .unwrap_or(&[]);
    let path = "status.loadBalancer.ingress";
    if service_type(svc) != TYPE_LOAD_BALANCER && !ingress.is_empty() {
        errs.push(FieldError::forbidden(
            path,
            "may only be used when `spec.type` is 'LoadBalancer'",
        ));
        return errs;
    }
    for (i, ing) in ingress.iter().enumerate() {
        let idx = format!("{path}[{i}]");
        let ip = ing.ip.as_deref().unwrap_or("");
        if !ip.is_empty() {
            errs.extend(validate_ip(ip, &format!("{idx}.ip")));
        }
        match ing.ip_mode.as_deref() {
            None if !ip.is_empty() => errs.push(FieldError::required(
                format!("{idx}.ipMode"),
                "must be specified when `ip` is set",
            )),
            Some(_) if ip.is_empty() => errs.push(FieldError::forbidden(
                format!("{idx}.ipMode"),
                "may not be specified when `ip` is not set",
            )),
            Some(m) if !IP_MODES.contains(&m) => {
                errs.push(not_supported(&format!("{idx}.ipMode"), m, IP_MODES))
            }
            _ => {}
        }
        let host = ing.hostname.as_deref().unwrap_or("");
        if !host.is_empty() {
            for m in is_dns1123_subdomain(host) {
                errs.push(FieldError::invalid(
                    format!("{idx}.hostname"),
                    quote(host),
                    m,
                ));
            }
            if parse_ip(host).is_some() {
                errs.push(FieldError::invalid(
                    format!("{idx}.hostname"),
                    quote(host),
                    "must be a DNS name, not an IP address",
                ));
            }
        }
    }
    errs
}

/// Builds a `FieldError` of any type; handy for tables.
pub fn err(kind: ErrorType, field: &str, value: Option<&str>, detail: &str) -> FieldError {
    FieldError::new(kind, field, value.map(str::to_string), detail)
}

#[cfg(test)]
pub(crate) mod tests;
