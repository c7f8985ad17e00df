//! Validation of networking.k8s.io/v1 ServiceCIDR and IPAddress objects, as upstream
//! (`pkg/apis/networking/validation`): ServiceCIDR `spec.cidrs` holds one or two CIDRs, one
//! per family, and is immutable; an IPAddress is named by its canonical IP and points at its
//! parent with a valid `parentRef`.

use k8s_openapi::api::networking::v1::{IPAddress, ServiceCIDR};

use crate::field::{FieldError, quote};
use crate::validation::{
    NameKind, is_dns1123_subdomain, validate_object_meta, validate_object_meta_update,
};

/// Label naming an IPAddress's family.
pub const LABEL_IP_FAMILY: &str = "ipaddress.kubernetes.io/ip-family";
/// Label naming who manages an IPAddress.
pub const LABEL_MANAGED_BY: &str = "ipaddress.kubernetes.io/managed-by";
/// The value of `LABEL_MANAGED_BY` for addresses the Service allocator owns.
pub const MANAGED_BY_ALLOCATOR: &str = "ipallocator.k8s.io";
/// Name of the ServiceCIDR made from `--service-cluster-ip-range`.
pub const DEFAULT_SERVICE_CIDR: &str = "kubernetes";

fn go_cidrs(v: &[String]) -> String {
    super::go_string_slice("string", Some(v))
}

/// `ValidateServiceCIDR` (create).
pub fn validate_service_cidr(sc: &ServiceCIDR) -> Vec<FieldError> {
    let mut errs = validate_object_meta(&sc.metadata, false, NameKind::Dns1123Subdomain);
    let cidrs = sc
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.as_deref())
        .unwrap_or(&[]);
    let path = "spec.cidrs";
    if cidrs.is_empty() {
        errs.push(FieldError::required(path, "at least one CIDR required"));
        return errs;
    }
    if cidrs.len() > 2 {
        errs.push(FieldError::invalid(
            path,
            go_cidrs(cidrs),
            "may only hold up to 2 values",
        ));
        return errs;
    }
    let mut parsed = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        match c.parse::<ipnet::IpNet>() {
            Err(_) => errs.push(FieldError::invalid(
                format!("{path}[{i}]"),
                quote(c),
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            )),
            Ok(n) => {
                if n.trunc() != n {
                    errs.push(FieldError::invalid(
                        format!("{path}[{i}]"),
                        quote(c),
                        format!(
                            "must be a CIDR value that identifies a network, (e.g. {})",
                            n.trunc()
                        ),
                    ));
                } else if n.to_string() != *c {
                    errs.push(FieldError::invalid(
                        format!("{path}[{i}]"),
                        quote(c),
                        format!("must be in canonical form (\"{n}\")"),
                    ));
                }
                parsed.push(n);
            }
        }
    }
    if parsed.len() == 2 && parsed[0].addr().is_ipv4() == parsed[1].addr().is_ipv4() {
        errs.push(FieldError::invalid(path, go_cidrs(cidrs), "may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64"));
    }
    errs
}

/// `ValidateServiceCIDRUpdate`: `spec.cidrs` may only grow from one to two (a new family).
pub fn validate_service_cidr_update(new: &ServiceCIDR, old: &ServiceCIDR) -> Vec<FieldError> {
    let mut errs = validate_object_meta_update(&new.metadata, &old.metadata);
    let n = new
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.clone())
        .unwrap_or_default();
    let o = old
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.clone())
        .unwrap_or_default();
    let grown_to_dual = o.len() == 1 && n.len() == 2 && n[0] == o[0];
    if n != o && !grown_to_dual {
        errs.push(FieldError::invalid(
            "spec.cidrs",
            go_cidrs(&n),
            "field is immutable",
        ));
    }
    if n != o {
        let mut probe = new.clone();
        probe.metadata = old.metadata.clone();
        errs.extend(
            validate_service_cidr(&probe)
                .into_iter()
                .filter(|e| e.field.starts_with("spec")),
        );
    }
    errs
}

/// `ValidateIPAddress` (create): the name is the canonical IP, parentRef is complete.
pub fn validate_ip_address(ip: &IPAddress) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = ip.metadata.name.as_deref().unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        match name.parse::<std::net::IpAddr>() {
            Err(_) => errs.push(FieldError::invalid(
                "metadata.name",
                quote(name),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )),
            Ok(a) => {
                if a.to_string() != name {
                    errs.push(FieldError::invalid(
                        "metadata.name",
                        quote(name),
                        format!("must be in canonical form (\"{a}\")"),
                    ));
                }
            }
        }
    }
    if ip
        .metadata
        .namespace
        .as_deref()
        .is_some_and(|n| !n.is_empty())
    {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    if let Some(l) = &ip.metadata.labels {
        errs.extend(crate::validation::validate_labels(l, "metadata.labels"));
    }
    if let Some(a) = &ip.metadata.annotations {
        errs.extend(crate::validation::validate_annotations(
            a,
            "metadata.annotations",
        ));
    }
    let Some(spec) = &ip.spec else {
        errs.push(FieldError::required("spec.parentRef", ""));
        return errs;
    };
    let r = &spec.parent_ref;
    let base = "spec.parentRef";
    if let Some(g) = r.group.as_deref().filter(|g| !g.is_empty()) {
        for m in is_dns1123_subdomain(g) {
            errs.push(FieldError::invalid(format!("{base}.group"), quote(g), m));
        }
    }
    if r.resource.is_empty() {
        errs.push(FieldError::required(format!("{base}.resource"), ""));
    } else {
        for m in crate::validation::is_valid_path_segment_name(&r.resource) {
            errs.push(FieldError::invalid(
                format!("{base}.resource"),
                quote(&r.resource),
                m,
            ));
        }
    }
    if r.name.is_empty() {
        errs.push(FieldError::required(format!("{base}.name"), ""));
    } else {
        for m in crate::validation::is_valid_path_segment_name(&r.name) {
            errs.push(FieldError::invalid(
                format!("{base}.name"),
                quote(&r.name),
                m,
            ));
        }
    }
    if let Some(ns) = r.namespace.as_deref().filter(|n| !n.is_empty()) {
        for m in crate::validation::is_valid_path_segment_name(ns) {
            errs.push(FieldError::invalid(
                format!("{base}.namespace"),
                quote(ns),
                m,
            ));
        }
    }
    errs
}

/// `ValidateIPAddressUpdate`: `spec.parentRef` is immutable.
pub fn validate_ip_address_update(new: &IPAddress, old: &IPAddress) -> Vec<FieldError> {
    let mut errs = validate_object_meta_update(&new.metadata, &old.metadata);
    let (n, o) = (
        new.spec.as_ref().map(|s| &s.parent_ref),
        old.spec.as_ref().map(|s| &s.parent_ref),
    );
    if n != o {
        errs.push(FieldError::invalid(
            "spec.parentRef",
            "{...}".to_string(),
            "field is immutable",
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sc(cidrs: serde_json::Value) -> ServiceCIDR {
        serde_json::from_value(json!({"metadata": {"name": "extra"}, "spec": {"cidrs": cidrs}}))
            .expect("decodes")
    }

    fn msgs(errs: Vec<FieldError>) -> Vec<String> {
        errs.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn service_cidr_rules() {
        assert!(validate_service_cidr(&sc(json!(["10.0.0.0/16", "fd00::/64"]))).is_empty());
        assert_eq!(
            msgs(validate_service_cidr(&sc(json!([])))),
            vec!["spec.cidrs: Required value: at least one CIDR required"]
        );
        assert_eq!(
            msgs(validate_service_cidr(&sc(json!(["10.0.0.0/33"])))),
            vec![
                "spec.cidrs[0]: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
            ]
        );
        assert_eq!(
            msgs(validate_service_cidr(&sc(json!(["10.0.0.1/16"])))),
            vec![
                "spec.cidrs[0]: Invalid value: \"10.0.0.1/16\": must be a CIDR value that identifies a network, (e.g. 10.0.0.0/16)"
            ]
        );
        assert_eq!(
            msgs(validate_service_cidr(&sc(json!([
                "10.0.0.0/16",
                "10.1.0.0/16"
            ])))),
            vec![
                "spec.cidrs: Invalid value: []string{\"10.0.0.0/16\", \"10.1.0.0/16\"}: may specify no more than one IP for each IP family, i.e 192.168.0.0/24 and 2001:db8::/64"
            ]
        );
        assert_eq!(
            msgs(validate_service_cidr(&sc(json!([
                "10.0.0.0/16",
                "fd00::/64",
                "10.1.0.0/16"
            ])))),
            vec![
                "spec.cidrs: Invalid value: []string{\"10.0.0.0/16\", \"fd00::/64\", \"10.1.0.0/16\"}: may only hold up to 2 values"
            ]
        );
        let old = sc(json!(["10.0.0.0/16"]));
        assert!(
            validate_service_cidr_update(&sc(json!(["10.0.0.0/16", "fd00::/64"])), &old).is_empty()
        );
        assert_eq!(
            msgs(validate_service_cidr_update(
                &sc(json!(["10.1.0.0/16"])),
                &old
            )),
            vec!["spec.cidrs: Invalid value: []string{\"10.1.0.0/16\"}: field is immutable"]
        );
    }

    #[test]
    fn ip_address_rules() {
        let ip = |name: &str, parent: serde_json::Value| -> IPAddress {
            serde_json::from_value(
                json!({"metadata": {"name": name}, "spec": {"parentRef": parent}}),
            )
            .expect("decodes")
        };
        let parent =
            json!({"group": "", "resource": "services", "namespace": "default", "name": "web"});
        assert!(validate_ip_address(&ip("10.0.0.1", parent.clone())).is_empty());
        assert!(validate_ip_address(&ip("2001:db8::1", parent.clone())).is_empty());
        assert_eq!(
            msgs(validate_ip_address(&ip("2001:db8:0::1", parent.clone()))),
            vec![
                "metadata.name: Invalid value: \"2001:db8:0::1\": must be in canonical form (\"2001:db8::1\")"
            ]
        );
        assert_eq!(
            msgs(validate_ip_address(&ip("web", parent.clone()))),
            vec![
                "metadata.name: Invalid value: \"web\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
            ]
        );
        assert_eq!(
            msgs(validate_ip_address(&ip(
                "10.0.0.1",
                json!({"resource": "", "name": ""})
            ))),
            vec![
                "spec.parentRef.resource: Required value",
                "spec.parentRef.name: Required value"
            ]
        );
        let old = ip("10.0.0.1", parent);
        let new = ip(
            "10.0.0.1",
            json!({"group": "", "resource": "services", "namespace": "default", "name": "other"}),
        );
        assert_eq!(
            msgs(validate_ip_address_update(&new, &old)),
            vec!["spec.parentRef: Invalid value: {...}: field is immutable"]
        );
    }
}
