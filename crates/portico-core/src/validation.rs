//! Generic validation shared by every kind, with kube-apiserver's messages: DNS-1123 labels and
//! subdomains, DNS-1035 labels, qualified names, label keys and values, annotation size,
//! `ObjectMeta` (name/generateName, namespace rules), IP checks, plus EndpointSlice validation
//! and the name rules of Pods, Namespaces and Nodes.
//!
//! Owns: the wording and field paths of these checks (from apimachinery's `util/validation`,
//! `api/validation` and `pkg/apis/discovery/validation`).
//! Must not: do I/O, or know about storage; callers turn the errors into a 422.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::field::{ErrorType, FieldError, quote};

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// Total size limit of all annotations (keys plus values), as upstream.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// EndpointSlice limits. Ports: the limit the types document (100).
pub const MAX_ENDPOINTS: usize = 1000;
pub const MAX_ADDRESSES: usize = 100;
pub const MAX_ENDPOINT_PORTS: usize = 100;
pub const MAX_TOPOLOGY_LABELS: usize = 16;
pub const MAX_ZONE_HINTS: usize = 8;
pub const MAX_NODE_HINTS: usize = 8;

/// apimachinery's `RegexError`, including its double space after the first example.
pub fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push('\'');
        s.push_str(e);
        s.push_str("', ");
    }
    s.push_str("regex used for validation is '");
    s.push_str(fmt);
    s.push_str("')");
    s
}

pub fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_lower_alnum(b[0])
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

/// Messages of `IsDNS1123Label`.
pub fn is_dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !matches_dns1123_label(s) {
        errs.push(regex_error(
            DNS1123_LABEL_ERR,
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errs
}

/// Messages of `IsDNS1123Subdomain`.
pub fn is_dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if s.is_empty() || !s.split('.').all(matches_dns1123_label) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// Messages of `IsDNS1035Label`.
pub fn is_dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    let ok = matches_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase();
    if !ok {
        errs.push(regex_error(
            DNS1035_LABEL_ERR,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

fn matches_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

/// Messages of `IsQualifiedName` (label keys, annotation keys, appProtocol, loadBalancerClass).
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.len() {
        1 => parts[0],
        2 => {
            let prefix = parts[0];
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                for m in is_dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {m}"));
                }
            }
            parts[1]
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !matches_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Messages of `IsValidLabelValue`.
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !value.is_empty() && !matches_qualified_name_part(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// Messages of `IsValidPortNum`.
pub fn is_valid_port_num(port: i64) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".to_string()]
    }
}

/// Messages of `IsValidPortName` (IANA_SVC_NAME).
pub fn is_valid_port_name(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(max_len_error(15));
    }
    let charset_ok = !port.is_empty()
        && port
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if !charset_ok {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    } else if !port.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

/// `ValidateDNS1123Label` as field errors.
pub fn validate_dns1123_label(value: &str, path: &str) -> Vec<FieldError> {
    is_dns1123_label(value)
        .into_iter()
        .map(|m| FieldError::invalid(path, quote(value), m))
        .collect()
}

/// `ValidateDNS1123Subdomain` as field errors.
pub fn validate_dns1123_subdomain(value: &str, path: &str) -> Vec<FieldError> {
    is_dns1123_subdomain(value)
        .into_iter()
        .map(|m| FieldError::invalid(path, quote(value), m))
        .collect()
}

/// `ValidateQualifiedName` as field errors.
pub fn validate_qualified_name(value: &str, path: &str) -> Vec<FieldError> {
    is_qualified_name(value)
        .into_iter()
        .map(|m| FieldError::invalid(path, quote(value), m))
        .collect()
}

/// Parses an IP the way upstream's strict parser does (no leading zeros, no zone).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok()
}

/// `IsValidIP`.
pub fn validate_ip(value: &str, path: &str) -> Vec<FieldError> {
    if parse_ip(value).is_some() {
        Vec::new()
    } else {
        vec![FieldError::invalid(
            path,
            quote(value),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        )]
    }
}

/// `IsValidCIDR`.
pub fn validate_cidr(value: &str, path: &str) -> Vec<FieldError> {
    if value.parse::<ipnet::IpNet>().is_ok() {
        Vec::new()
    } else {
        vec![FieldError::invalid(
            path,
            quote(value),
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        )]
    }
}

fn is_link_local_multicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 224 && v4.octets()[1] == 0 && v4.octets()[2] == 0,
        IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    }
}

fn is_link_local_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// `ValidateNonSpecialIP`: no unspecified, loopback, link-local or link-local multicast address.
pub fn validate_non_special_ip(value: &str, path: &str) -> Vec<FieldError> {
    let Some(ip) = parse_ip(value) else {
        return vec![FieldError::invalid(
            path,
            quote(value),
            "must be a valid IP address",
        )];
    };
    let mut errs = Vec::new();
    if ip.is_unspecified() {
        errs.push(FieldError::invalid(
            path,
            quote(value),
            format!("may not be unspecified ({value})"),
        ));
    }
    if ip.is_loopback() {
        errs.push(FieldError::invalid(
            path,
            quote(value),
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        ));
    }
    if is_link_local_unicast(&ip) {
        errs.push(FieldError::invalid(
            path,
            quote(value),
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        ));
    }
    if is_link_local_multicast(&ip) {
        errs.push(FieldError::invalid(
            path,
            quote(value),
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        ));
    }
    errs
}

/// `field.NotSupported`: `supported values: "a", "b"`.
pub fn not_supported(path: &str, value: &str, supported: &[&str]) -> FieldError {
    let list = supported
        .iter()
        .map(|v| quote(v))
        .collect::<Vec<_>>()
        .join(", ");
    let detail = if supported.is_empty() {
        String::new()
    } else {
        format!("supported values: {list}")
    };
    FieldError::new(ErrorType::NotSupported, path, Some(quote(value)), detail)
}

/// `field.TooMany(path, actual, max)`.
pub fn too_many(path: &str, actual: usize, max: usize) -> FieldError {
    let items = if max == 1 { "item" } else { "items" };
    FieldError::new(
        ErrorType::TooMany,
        path,
        Some(actual.to_string()),
        format!("must have at most {max} {items}"),
    )
}

/// Which name rule a kind uses (`ValidateObjectMeta`'s `nameFn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// Most kinds (Pods, Nodes, EndpointSlices, ServiceCIDRs).
    Dns1123Subdomain,
    /// Namespaces.
    Dns1123Label,
    /// Services.
    Dns1035Label,
    /// Anything goes except path-breaking names (`.`, `..`, `/`, `%`).
    PathSegment,
}

/// The name rule kube-apiserver applies to a resource (plural name).
pub fn name_kind_for(plural: &str) -> NameKind {
    match plural {
        "services" => NameKind::Dns1035Label,
        "namespaces" => NameKind::Dns1123Label,
        "ipaddresses" => NameKind::PathSegment,
        _ => NameKind::Dns1123Subdomain,
    }
}

/// `IsValidPathSegmentName`.
pub fn is_valid_path_segment_name(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name == "." || name == ".." {
        errs.push(format!("may not be '{name}'"));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

/// Applies a name rule; `prefix` masks one trailing dash as upstream does for generateName.
pub fn validate_name(kind: NameKind, name: &str, prefix: bool) -> Vec<String> {
    let n = if prefix {
        name.strip_suffix('-').unwrap_or(name)
    } else {
        name
    };
    match kind {
        NameKind::Dns1123Subdomain => is_dns1123_subdomain(n),
        NameKind::Dns1123Label => is_dns1123_label(n),
        NameKind::Dns1035Label => is_dns1035_label(n),
        NameKind::PathSegment => is_valid_path_segment_name(n),
    }
}

/// `ValidateLabels`: keys as qualified names, values as label values; both at `path`.
pub fn validate_labels(labels: &BTreeMap<String, String>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        for m in is_qualified_name(k) {
            errs.push(FieldError::invalid(path, quote(k), m));
        }
        for m in is_valid_label_value(v) {
            errs.push(FieldError::invalid(path, quote(v), m));
        }
    }
    errs
}

/// `ValidateAnnotations`: qualified (lower-cased) keys and a 256 KiB total size.
pub fn validate_annotations(annotations: &BTreeMap<String, String>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut total = 0usize;
    for (k, v) in annotations {
        for m in is_qualified_name(&k.to_lowercase()) {
            errs.push(FieldError::invalid(path, quote(k), m));
        }
        total += k.len() + v.len();
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::new(
            ErrorType::TooLong,
            path,
            None,
            format!("may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
        ));
    }
    errs
}

/// `ValidateObjectMeta` for a create (names, namespace rule, generation, labels, annotations,
/// finalizers).
pub fn validate_object_meta(
    meta: &ObjectMeta,
    namespaced: bool,
    name_kind: NameKind,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(g) = meta.generate_name.as_deref().filter(|g| !g.is_empty()) {
        for m in validate_name(name_kind, g, true) {
            errs.push(FieldError::invalid("metadata.generateName", quote(g), m));
        }
    }
    match meta.name.as_deref().filter(|n| !n.is_empty()) {
        None => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(n) => {
            for m in validate_name(name_kind, n, false) {
                errs.push(FieldError::invalid("metadata.name", quote(n), m));
            }
        }
    }
    let ns = meta.namespace.as_deref().unwrap_or("");
    if namespaced {
        if ns.is_empty() {
            errs.push(FieldError::required("metadata.namespace", ""));
        } else {
            for m in is_dns1123_label(ns) {
                errs.push(FieldError::invalid("metadata.namespace", quote(ns), m));
            }
        }
    } else if !ns.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    if let Some(g) = meta.generation
        && g < 0
    {
        errs.push(FieldError::invalid(
            "metadata.generation",
            g.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    if let Some(l) = &meta.labels {
        errs.extend(validate_labels(l, "metadata.labels"));
    }
    if let Some(a) = &meta.annotations {
        errs.extend(validate_annotations(a, "metadata.annotations"));
    }
    if let Some(f) = &meta.finalizers {
        for (i, fin) in f.iter().enumerate() {
            for m in is_qualified_name(fin) {
                errs.push(FieldError::invalid(
                    format!("metadata.finalizers[{i}]"),
                    quote(fin),
                    m,
                ));
            }
        }
    }
    errs
}

/// `ValidateObjectMetaUpdate`: name, namespace, uid and creationTimestamp are immutable, then
/// the create-time rules for labels and annotations.
pub fn validate_object_meta_update(new: &ObjectMeta, old: &ObjectMeta) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let immutable =
        |path: &str, n: &Option<String>, o: &Option<String>, errs: &mut Vec<FieldError>| {
            if n.as_deref().unwrap_or("") != o.as_deref().unwrap_or("") {
                errs.push(FieldError::invalid(
                    path,
                    quote(n.as_deref().unwrap_or("")),
                    "field is immutable",
                ));
            }
        };
    immutable("metadata.name", &new.name, &old.name, &mut errs);
    immutable(
        "metadata.namespace",
        &new.namespace,
        &old.namespace,
        &mut errs,
    );
    immutable("metadata.uid", &new.uid, &old.uid, &mut errs);
    if let Some(g) = new.generation
        && g < 0
    {
        errs.push(FieldError::invalid(
            "metadata.generation",
            g.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    if let Some(l) = &new.labels {
        errs.extend(validate_labels(l, "metadata.labels"));
    }
    if let Some(a) = &new.annotations {
        errs.extend(validate_annotations(a, "metadata.annotations"));
    }
    errs
}

/// Pod names are DNS-1123 subdomains.
pub fn validate_pod_name(name: &str, prefix: bool) -> Vec<String> {
    validate_name(NameKind::Dns1123Subdomain, name, prefix)
}

/// Namespace names are DNS-1123 labels.
pub fn validate_namespace_name(name: &str, prefix: bool) -> Vec<String> {
    validate_name(NameKind::Dns1123Label, name, prefix)
}

/// Node names are DNS-1123 subdomains.
pub fn validate_node_name(name: &str, prefix: bool) -> Vec<String> {
    validate_name(NameKind::Dns1123Subdomain, name, prefix)
}

/// `IsFullyQualifiedDomainName`.
pub fn validate_fqdn(value: &str, path: &str) -> Vec<FieldError> {
    if value.is_empty() {
        return vec![FieldError::required(path, "")];
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    let errs = is_dns1123_subdomain(name);
    if !errs.is_empty() {
        return vec![FieldError::invalid(path, quote(name), errs.join(","))];
    }
    if name.split('.').count() < 2 {
        return vec![FieldError::invalid(
            path,
            quote(name),
            "should be a domain with at least two segments separated by dots",
        )];
    }
    for label in name.split('.') {
        let errs = is_dns1123_label(label);
        if !errs.is_empty() {
            return vec![FieldError::invalid(path, quote(label), errs.join(","))];
        }
    }
    Vec::new()
}

const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// Fills EndpointSlice defaults kubectl relies on: port `name: ""`, `protocol: TCP`.
pub fn default_endpoint_slice(slice: &mut EndpointSlice) {
    for p in slice.ports.iter_mut().flatten() {
        if p.name.is_none() {
            p.name = Some(String::new());
        }
        if p.protocol.is_none() {
            p.protocol = Some("TCP".to_string());
        }
    }
}

/// Deliberate departures from upstream's EndpointSlice rules, each off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointSliceRules {
    /// Accept loopback endpoint addresses. Upstream rejects them; `portico up` without the
    /// kernel data plane serves local processes, which live on loopback.
    pub allow_loopback: bool,
}

/// `ValidateEndpointSlice` (create), metadata included.
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Vec<FieldError> {
    let mut errs = validate_object_meta(&slice.metadata, true, NameKind::Dns1123Subdomain);
    errs.extend(validate_endpoint_slice_body(
        slice,
        EndpointSliceRules::default(),
    ));
    errs
}

/// The EndpointSlice rules without metadata (the API server validates metadata for every kind),
/// for a create (`old: None`) or an update.
pub fn validate_endpoint_slice_spec(
    new: &EndpointSlice,
    old: Option<&EndpointSlice>,
    rules: EndpointSliceRules,
) -> Vec<FieldError> {
    let mut errs = validate_endpoint_slice_body(new, rules);
    if let Some(old) = old
        && new.address_type != old.address_type
    {
        errs.push(FieldError::invalid(
            "addressType",
            quote(&new.address_type),
            "field is immutable",
        ));
    }
    errs
}

/// `ValidateEndpointSliceUpdate`: as create, plus `addressType` is immutable.
pub fn validate_endpoint_slice_update(new: &EndpointSlice, old: &EndpointSlice) -> Vec<FieldError> {
    let mut errs = validate_object_meta_update(&new.metadata, &old.metadata);
    errs.extend(validate_endpoint_slice_body(
        new,
        EndpointSliceRules::default(),
    ));
    if new.address_type != old.address_type {
        errs.push(FieldError::invalid(
            "addressType",
            quote(&new.address_type),
            "field is immutable",
        ));
    }
    errs
}

fn validate_endpoint_slice_body(
    slice: &EndpointSlice,
    rules: EndpointSliceRules,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let at = slice.address_type.as_str();
    if at.is_empty() {
        errs.push(FieldError::required("addressType", ""));
    } else if !ADDRESS_TYPES.contains(&at) {
        errs.push(not_supported("addressType", at, ADDRESS_TYPES));
    }
    if slice.endpoints.len() > MAX_ENDPOINTS {
        errs.push(too_many("endpoints", slice.endpoints.len(), MAX_ENDPOINTS));
    } else {
        for (i, ep) in slice.endpoints.iter().enumerate() {
            let idx = format!("endpoints[{i}]");
            let apath = format!("{idx}.addresses");
            if ep.addresses.is_empty() {
                errs.push(FieldError::required(
                    &apath,
                    "must contain at least 1 address",
                ));
            } else if ep.addresses.len() > MAX_ADDRESSES {
                errs.push(too_many(&apath, ep.addresses.len(), MAX_ADDRESSES));
            }
            for (j, a) in ep.addresses.iter().enumerate() {
                let p = format!("{apath}[{j}]");
                match at {
                    "IPv4" => match a.parse::<std::net::Ipv4Addr>() {
                        Ok(ip) if rules.allow_loopback && ip.is_loopback() => {}
                        Ok(_) => errs.extend(validate_non_special_ip(a, &p)),
                        Err(_) => errs.push(FieldError::invalid(
                            &p,
                            quote(a),
                            "must be a valid IPv4 address",
                        )),
                    },
                    "IPv6" => match a.parse::<std::net::Ipv6Addr>() {
                        Ok(ip) if rules.allow_loopback && ip.is_loopback() => {}
                        Ok(_) => errs.extend(validate_non_special_ip(a, &p)),
                        Err(_) => errs.push(FieldError::invalid(
                            &p,
                            quote(a),
                            "must be a valid IPv6 address",
                        )),
                    },
                    "FQDN" => errs.extend(validate_fqdn(a, &p)),
                    _ => {}
                }
            }
            if let Some(n) = &ep.node_name {
                for m in validate_node_name(n, false) {
                    errs.push(FieldError::invalid(format!("{idx}.nodeName"), quote(n), m));
                }
            }
            if let Some(t) = &ep.deprecated_topology {
                let tp = format!("{idx}.deprecatedTopology");
                if t.len() > MAX_TOPOLOGY_LABELS {
                    errs.push(too_many(&tp, t.len(), MAX_TOPOLOGY_LABELS));
                }
                errs.extend(validate_labels(t, &tp));
            }
            if let Some(h) = &ep.hostname {
                errs.extend(validate_dns1123_label(h, &format!("{idx}.hostname")));
            }
            if let Some(h) = &ep.hints {
                errs.extend(validate_hints(h, &format!("{idx}.hints")));
            }
        }
    }
    let ports = slice.ports.as_deref().unwrap_or(&[]);
    if ports.len() > MAX_ENDPOINT_PORTS {
        errs.push(too_many("ports", ports.len(), MAX_ENDPOINT_PORTS));
        return errs;
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let idx = format!("ports[{i}]");
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            errs.extend(validate_dns1123_label(name, &format!("{idx}.name")));
        }
        if !names.insert(name) {
            errs.push(FieldError::duplicate(format!("{idx}.name"), quote(name)));
        }
        match p.protocol.as_deref() {
            None => errs.push(FieldError::required(format!("{idx}.protocol"), "")),
            Some(proto) if !PROTOCOLS.contains(&proto) => {
                errs.push(not_supported(&format!("{idx}.protocol"), proto, PROTOCOLS))
            }
            _ => {}
        }
        if let Some(ap) = &p.app_protocol {
            errs.extend(validate_qualified_name(ap, &format!("{idx}.appProtocol")));
        }
    }
    errs
}

fn validate_hints(
    h: &k8s_openapi::api::discovery::v1::EndpointHints,
    path: &str,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let zones = h.for_zones.as_deref().unwrap_or(&[]);
    let zp = format!("{path}.forZones");
    if zones.len() > MAX_ZONE_HINTS {
        errs.push(too_many(&zp, zones.len(), MAX_ZONE_HINTS));
        return errs;
    }
    let mut seen = BTreeSet::new();
    for (i, z) in zones.iter().enumerate() {
        let p = format!("{zp}[{i}].name");
        if !seen.insert(z.name.as_str()) {
            errs.push(FieldError::duplicate(&p, quote(&z.name)));
        }
        for m in is_valid_label_value(&z.name) {
            errs.push(FieldError::invalid(&p, quote(&z.name), m));
        }
    }
    let nodes = h.for_nodes.as_deref().unwrap_or(&[]);
    let np = format!("{path}.forNodes");
    if nodes.len() > MAX_NODE_HINTS {
        errs.push(too_many(&np, nodes.len(), MAX_NODE_HINTS));
        return errs;
    }
    let mut seen = BTreeSet::new();
    for (i, n) in nodes.iter().enumerate() {
        let p = format!("{np}[{i}].name");
        if !seen.insert(n.name.as_str()) {
            errs.push(FieldError::duplicate(&p, quote(&n.name)));
        }
        for m in validate_node_name(&n.name, false) {
            errs.push(FieldError::invalid(&p, quote(&n.name), m));
        }
    }
    errs
}

#[cfg(test)]
mod tests;
