//! The static table of resources this server serves, with what discovery, routing, field
//! selectors and the generic storage layer need to know about each.
//!
//! Owns: names, scopes, verbs, short names, subresources and per-kind storage flags.
//! Must not: hold behaviour; strategies live in hooks, handlers in `handlers`.

/// One served resource.
#[derive(Debug)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource: the main resource cannot change status and vice versa.
    pub has_status: bool,
    /// Sets `metadata.generation` to 1 on create and bumps it when anything but
    /// metadata and status changes.
    pub generation: bool,
    /// Field selectors supported beyond `metadata.name` and `metadata.namespace`.
    pub field_labels: &'static [&'static str],
}

impl ResourceInfo {
    /// `v1` or `discovery.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
    pub fn resource(&self) -> crate::error::Resource<'static> {
        crate::error::Resource {
            group: self.group,
            plural: self.plural,
            kind: self.kind,
        }
    }
    /// Store prefix of every object of this resource.
    pub fn prefix(&self) -> String {
        crate::keys::list_prefix(self.plural, None)
    }
    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || (field == "metadata.namespace")
            || self.field_labels.contains(&field)
    }
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs of every main resource.
pub fn verbs() -> &'static [&'static str] {
    VERBS
}

pub static RESOURCES: &[ResourceInfo] = &[
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        has_status: true,
        generation: false,
        field_labels: &["status.phase"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        has_status: true,
        generation: false,
        field_labels: &["spec.clusterIP", "spec.type"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        has_status: true,
        generation: true,
        field_labels: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        has_status: false,
        generation: false,
        field_labels: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        has_status: true,
        generation: false,
        field_labels: &["spec.unschedulable"],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        has_status: false,
        generation: false,
        field_labels: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
    },
    ResourceInfo {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        has_status: false,
        generation: true,
        field_labels: &[],
    },
    ResourceInfo {
        group: "networking.k8s.io",
        version: "v1",
        plural: "servicecidrs",
        singular: "servicecidr",
        kind: "ServiceCIDR",
        namespaced: false,
        short_names: &[],
        categories: &[],
        has_status: true,
        generation: false,
        field_labels: &[],
    },
    ResourceInfo {
        group: "networking.k8s.io",
        version: "v1",
        plural: "ipaddresses",
        singular: "ipaddress",
        kind: "IPAddress",
        namespaced: false,
        short_names: &["ip"],
        categories: &[],
        has_status: false,
        generation: false,
        field_labels: &[],
    },
];

/// API groups other than core, in discovery order.
pub static GROUPS: &[&str] = &["discovery.k8s.io", "networking.k8s.io"];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_plural(plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.plural == plural)
}

pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceInfo> + use<'a> {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// The value of a field-selector field on an object, as upstream's field-label functions
/// render it (`spec.unschedulable` is `true`/`false`; `source` is the source component).
pub fn field_value(info: &ResourceInfo, obj: &serde_json::Value, field: &str) -> Option<String> {
    field_value_at(info, field, obj.pointer(&field_pointer(info, field)))
}

/// [`field_value`] given the value at the field's [`field_pointer`] (None: missing).
pub fn field_value_at(
    info: &ResourceInfo,
    field: &str,
    at: Option<&serde_json::Value>,
) -> Option<String> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    Some(match field {
        "metadata.name" => s(at?),
        "metadata.namespace" => at.map(s).unwrap_or_default(),
        "source" if info.plural == "events" => at.map(s).unwrap_or_default(),
        "spec.unschedulable" | "spec.hostNetwork" => {
            at.and_then(|v| v.as_bool()).unwrap_or(false).to_string()
        }
        "status.podIPs" => at.map(s).unwrap_or_default(),
        _ => match at {
            Some(serde_json::Value::String(v)) => v.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        },
    })
}

/// The JSON pointer of the value a field label reads (`spec.clusterIP` → `/spec/clusterIP`).
pub fn field_pointer(info: &ResourceInfo, field: &str) -> String {
    match field {
        "source" if info.plural == "events" => "/source/component".to_string(),
        "status.podIPs" => "/status/podIPs/0/ip".to_string(),
        other => format!("/{}", other.replace('.', "/")),
    }
}
