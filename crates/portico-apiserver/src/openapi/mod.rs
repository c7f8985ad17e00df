//! OpenAPI documents (`/openapi/v2` protobuf, `/openapi/v3` JSON) and the one schema source that
//! strategic merge patch, server-side apply and strict field validation walk.
//!
//! Owns: the schema catalogue of the kinds we serve, the Kubernetes list/map/patch extensions on it,
//! and the documents kubectl downloads. Must not: do I/O; documents are built once, lazily.
//!
//! `schemas.json` is generated from k8s-openapi 0.29 (`v1_33`) types with its `schemars` feature:
//! a throwaway binary calls `SchemaSettings::openapi3()` (definitions under
//! `#/components/schemas/`) `subschema_for::<T>()` for Service, Pod, Endpoints, Namespace, Node,
//! Event, EndpointSlice, ServiceCIDR and IPAddress and prints `take_definitions(true)`. That keeps the
//! descriptions and shapes of our Rust types without compiling schemars into every build.
//! k8s-openapi's schemas lack the `x-kubernetes-*` extensions, so [`EXTENSIONS`] adds them from the
//! k8s.io/api struct tags (`patchStrategy`, `patchMergeKey`, `+listType`, `+listMapKey`, `+mapType`).

mod documents;
mod v2;

pub use documents::{v3_document, v3_index};
pub use v2::{CONTENT_TYPE as V2_CONTENT_TYPE, v2_protobuf};

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// A kind we serve: where its schema and REST paths live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
    pub namespaced: bool,
    /// Schema definition name (`io.k8s.api.core.v1.Service`).
    pub definition: &'static str,
}

impl KindInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `api/v1` or `apis/discovery.k8s.io/v1`: the v3 document this kind belongs to.
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() {
            format!("api/{}", self.version)
        } else {
            format!("apis/{}/{}", self.group, self.version)
        }
    }
}

pub const KINDS: &[KindInfo] = &[
    KindInfo {
        kind: "Service",
        group: "",
        version: "v1",
        plural: "services",
        namespaced: true,
        definition: "io.k8s.api.core.v1.Service",
    },
    KindInfo {
        kind: "Pod",
        group: "",
        version: "v1",
        plural: "pods",
        namespaced: true,
        definition: "io.k8s.api.core.v1.Pod",
    },
    KindInfo {
        kind: "Endpoints",
        group: "",
        version: "v1",
        plural: "endpoints",
        namespaced: true,
        definition: "io.k8s.api.core.v1.Endpoints",
    },
    KindInfo {
        kind: "Event",
        group: "",
        version: "v1",
        plural: "events",
        namespaced: true,
        definition: "io.k8s.api.core.v1.Event",
    },
    KindInfo {
        kind: "Namespace",
        group: "",
        version: "v1",
        plural: "namespaces",
        namespaced: false,
        definition: "io.k8s.api.core.v1.Namespace",
    },
    KindInfo {
        kind: "Node",
        group: "",
        version: "v1",
        plural: "nodes",
        namespaced: false,
        definition: "io.k8s.api.core.v1.Node",
    },
    KindInfo {
        kind: "EndpointSlice",
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        namespaced: true,
        definition: "io.k8s.api.discovery.v1.EndpointSlice",
    },
    KindInfo {
        kind: "ServiceCIDR",
        group: "networking.k8s.io",
        version: "v1",
        plural: "servicecidrs",
        namespaced: false,
        definition: "io.k8s.api.networking.v1.ServiceCIDR",
    },
    KindInfo {
        kind: "IPAddress",
        group: "networking.k8s.io",
        version: "v1",
        plural: "ipaddresses",
        namespaced: false,
        definition: "io.k8s.api.networking.v1.IPAddress",
    },
];

pub fn kind_info(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// How a list or map field merges, from the k8s.io/api struct tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldExt {
    /// `patchStrategy` for strategic merge patch: `merge`, `merge,retainKeys`, `retainKeys`.
    pub patch_strategy: Option<&'static str>,
    /// `patchMergeKey` for strategic merge patch.
    pub patch_merge_key: Option<&'static str>,
    /// `+listType`: `atomic`, `set`, `map`.
    pub list_type: Option<&'static str>,
    /// `+listMapKey`s for `listType=map`.
    pub list_map_keys: &'static [&'static str],
    /// `+mapType` / `+structType`: `atomic` or `granular`.
    pub map_type: Option<&'static str>,
}

const fn ext() -> FieldExt {
    FieldExt {
        patch_strategy: None,
        patch_merge_key: None,
        list_type: None,
        list_map_keys: &[],
        map_type: None,
    }
}
const fn merge_map(key: &'static str, keys: &'static [&'static str]) -> FieldExt {
    FieldExt {
        patch_strategy: Some("merge"),
        patch_merge_key: Some(key),
        list_type: Some("map"),
        list_map_keys: keys,
        map_type: None,
    }
}
const fn atomic_list() -> FieldExt {
    FieldExt {
        list_type: Some("atomic"),
        ..ext()
    }
}
const fn set_list() -> FieldExt {
    FieldExt {
        list_type: Some("set"),
        ..ext()
    }
}
const fn atomic_map() -> FieldExt {
    FieldExt {
        map_type: Some("atomic"),
        ..ext()
    }
}

/// (definition suffix, property) → extensions. Definitions are under `io.k8s.api.` or
/// `io.k8s.apimachinery.pkg.apis.meta.v1.` (prefix `meta.`).
pub static EXTENSIONS: &[(&str, &str, FieldExt)] = &[
    (
        "meta.ObjectMeta",
        "finalizers",
        FieldExt {
            patch_strategy: Some("merge"),
            list_type: Some("set"),
            ..ext()
        },
    ),
    (
        "meta.ObjectMeta",
        "ownerReferences",
        merge_map("uid", &["uid"]),
    ),
    ("meta.ObjectMeta", "managedFields", atomic_list()),
    (
        "core.v1.ServiceSpec",
        "ports",
        merge_map("port", &["port", "protocol"]),
    ),
    ("core.v1.ServiceSpec", "selector", atomic_map()),
    ("core.v1.ServiceSpec", "clusterIPs", atomic_list()),
    ("core.v1.ServiceSpec", "externalIPs", atomic_list()),
    (
        "core.v1.ServiceSpec",
        "loadBalancerSourceRanges",
        atomic_list(),
    ),
    ("core.v1.ServiceSpec", "ipFamilies", atomic_list()),
    (
        "core.v1.ServiceStatus",
        "conditions",
        merge_map("type", &["type"]),
    ),
    ("core.v1.LoadBalancerStatus", "ingress", atomic_list()),
    ("core.v1.LoadBalancerIngress", "ports", atomic_list()),
    (
        "core.v1.PodSpec",
        "volumes",
        FieldExt {
            patch_strategy: Some("merge,retainKeys"),
            ..merge_map("name", &["name"])
        },
    ),
    (
        "core.v1.PodSpec",
        "initContainers",
        merge_map("name", &["name"]),
    ),
    (
        "core.v1.PodSpec",
        "containers",
        merge_map("name", &["name"]),
    ),
    (
        "core.v1.PodSpec",
        "ephemeralContainers",
        merge_map("name", &["name"]),
    ),
    (
        "core.v1.PodSpec",
        "imagePullSecrets",
        merge_map("name", &["name"]),
    ),
    ("core.v1.PodSpec", "tolerations", atomic_list()),
    ("core.v1.PodSpec", "hostAliases", merge_map("ip", &["ip"])),
    ("core.v1.PodSpec", "readinessGates", atomic_list()),
    ("core.v1.PodSpec", "nodeSelector", atomic_map()),
    (
        "core.v1.PodSpec",
        "topologySpreadConstraints",
        merge_map("topologyKey", &["topologyKey", "whenUnsatisfiable"]),
    ),
    (
        "core.v1.PodSpec",
        "schedulingGates",
        merge_map("name", &["name"]),
    ),
    (
        "core.v1.PodSpec",
        "resourceClaims",
        FieldExt {
            patch_strategy: Some("merge,retainKeys"),
            ..merge_map("name", &["name"])
        },
    ),
    (
        "core.v1.Container",
        "ports",
        merge_map("containerPort", &["containerPort", "protocol"]),
    ),
    ("core.v1.Container", "env", merge_map("name", &["name"])),
    ("core.v1.Container", "envFrom", atomic_list()),
    (
        "core.v1.Container",
        "volumeMounts",
        merge_map("mountPath", &["mountPath"]),
    ),
    (
        "core.v1.Container",
        "volumeDevices",
        merge_map("devicePath", &["devicePath"]),
    ),
    ("core.v1.Container", "resizePolicy", atomic_list()),
    ("core.v1.Container", "command", atomic_list()),
    ("core.v1.Container", "args", atomic_list()),
    (
        "core.v1.EphemeralContainer",
        "ports",
        merge_map("containerPort", &["containerPort", "protocol"]),
    ),
    (
        "core.v1.EphemeralContainer",
        "env",
        merge_map("name", &["name"]),
    ),
    ("core.v1.EphemeralContainer", "envFrom", atomic_list()),
    (
        "core.v1.EphemeralContainer",
        "volumeMounts",
        merge_map("mountPath", &["mountPath"]),
    ),
    (
        "core.v1.EphemeralContainer",
        "volumeDevices",
        merge_map("devicePath", &["devicePath"]),
    ),
    ("core.v1.EphemeralContainer", "resizePolicy", atomic_list()),
    ("core.v1.EphemeralContainer", "command", atomic_list()),
    ("core.v1.EphemeralContainer", "args", atomic_list()),
    (
        "core.v1.PodStatus",
        "conditions",
        merge_map("type", &["type"]),
    ),
    ("core.v1.PodStatus", "podIPs", merge_map("ip", &["ip"])),
    (
        "core.v1.PodStatus",
        "hostIPs",
        FieldExt {
            patch_strategy: Some("merge"),
            patch_merge_key: Some("ip"),
            ..atomic_list()
        },
    ),
    ("core.v1.PodStatus", "initContainerStatuses", atomic_list()),
    ("core.v1.PodStatus", "containerStatuses", atomic_list()),
    (
        "core.v1.PodStatus",
        "ephemeralContainerStatuses",
        atomic_list(),
    ),
    (
        "core.v1.PodStatus",
        "resourceClaimStatuses",
        FieldExt {
            patch_strategy: Some("merge,retainKeys"),
            ..merge_map("name", &["name"])
        },
    ),
    ("core.v1.NamespaceSpec", "finalizers", atomic_list()),
    (
        "core.v1.NamespaceStatus",
        "conditions",
        merge_map("type", &["type"]),
    ),
    ("core.v1.NodeSpec", "taints", atomic_list()),
    (
        "core.v1.NodeSpec",
        "podCIDRs",
        FieldExt {
            patch_strategy: Some("merge"),
            list_type: Some("set"),
            ..ext()
        },
    ),
    (
        "core.v1.NodeStatus",
        "conditions",
        merge_map("type", &["type"]),
    ),
    (
        "core.v1.NodeStatus",
        "addresses",
        merge_map("type", &["type"]),
    ),
    ("core.v1.NodeStatus", "images", atomic_list()),
    ("core.v1.NodeStatus", "volumesInUse", atomic_list()),
    ("core.v1.NodeStatus", "volumesAttached", atomic_list()),
    ("core.v1.Endpoints", "subsets", atomic_list()),
    ("core.v1.EndpointSubset", "addresses", atomic_list()),
    ("core.v1.EndpointSubset", "notReadyAddresses", atomic_list()),
    ("core.v1.EndpointSubset", "ports", atomic_list()),
    ("discovery.v1.EndpointSlice", "endpoints", atomic_list()),
    ("discovery.v1.EndpointSlice", "ports", atomic_list()),
    ("discovery.v1.Endpoint", "addresses", set_list()),
    ("discovery.v1.EndpointHints", "forZones", atomic_list()),
    ("discovery.v1.EndpointHints", "forNodes", atomic_list()),
    ("networking.v1.ServiceCIDRSpec", "cidrs", atomic_list()),
    (
        "networking.v1.ServiceCIDRStatus",
        "conditions",
        merge_map("type", &["type"]),
    ),
];

/// Definitions whose whole value is atomic (`+structType=atomic` / `+mapType=atomic`).
const ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ResourceFieldSelector",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.TopologySelectorTerm",
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
];

fn full_definition(short: &str) -> String {
    if let Some(rest) = short.strip_prefix("meta.") {
        format!("io.k8s.apimachinery.pkg.apis.meta.v1.{rest}")
    } else {
        format!("io.k8s.api.{short}")
    }
}

/// Extensions of `definition.property`, if any.
pub fn field_ext(definition: &str, property: &str) -> Option<&'static FieldExt> {
    EXTENSION_INDEX.get(definition)?.get(property).copied()
}

/// [`EXTENSIONS`] by full definition name, then property (walkers look fields up constantly).
static EXTENSION_INDEX: LazyLock<BTreeMap<String, BTreeMap<&'static str, &'static FieldExt>>> =
    LazyLock::new(|| {
        let mut index: BTreeMap<String, BTreeMap<&'static str, &'static FieldExt>> =
            BTreeMap::new();
        for (def, prop, e) in EXTENSIONS {
            index
                .entry(full_definition(def))
                .or_default()
                .insert(prop, e);
        }
        index
    });

/// All schemas, with the Kubernetes extensions applied. Keys are definition names.
pub static SCHEMAS: LazyLock<BTreeMap<String, Value>> = LazyLock::new(build_schemas);

fn build_schemas() -> BTreeMap<String, Value> {
    let raw: Map<String, Value> =
        serde_json::from_str(include_str!("schemas.json")).unwrap_or_default();
    let mut out: BTreeMap<String, Value> = raw.into_iter().collect();
    for schema in out.values_mut() {
        // k8s-openapi marks `metadata` required because its Rust field is not optional; upstream does not.
        if let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|r| r != "metadata");
            if req.is_empty()
                && let Some(o) = schema.as_object_mut()
            {
                o.remove("required");
            }
        }
    }
    for (def, prop, e) in EXTENSIONS {
        let Some(p) = out
            .get_mut(&full_definition(def))
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(*prop))
        else {
            continue;
        };
        let Some(o) = p.as_object_mut() else { continue };
        if let Some(v) = e.patch_merge_key {
            o.insert("x-kubernetes-patch-merge-key".into(), json!(v));
        }
        if let Some(v) = e.patch_strategy {
            o.insert("x-kubernetes-patch-strategy".into(), json!(v));
        }
        if let Some(v) = e.list_type {
            o.insert("x-kubernetes-list-type".into(), json!(v));
        }
        if !e.list_map_keys.is_empty() {
            o.insert("x-kubernetes-list-map-keys".into(), json!(e.list_map_keys));
        }
        if let Some(v) = e.map_type {
            o.insert("x-kubernetes-map-type".into(), json!(v));
        }
    }
    for def in ATOMIC_STRUCTS {
        if let Some(o) = out.get_mut(*def).and_then(Value::as_object_mut) {
            o.insert("x-kubernetes-map-type".into(), json!("atomic"));
        }
    }
    for k in KINDS {
        if let Some(o) = out.get_mut(k.definition).and_then(Value::as_object_mut) {
            o.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": k.group, "kind": k.kind, "version": k.version}]),
            );
        }
    }
    out
}

/// The schema of a definition.
pub fn schema(definition: &str) -> Option<&'static Value> {
    SCHEMAS.get(definition)
}

/// The definition a property schema refers to (`$ref`, or `allOf: [{$ref}]`), if any.
pub fn ref_name(prop: &Value) -> Option<&str> {
    let r = prop
        .get("$ref")
        .or_else(|| prop.get("allOf")?.get(0)?.get("$ref"))?;
    r.as_str()?.strip_prefix("#/components/schemas/")
}

/// The description of `definition.property` (the text kube-apiserver's SwaggerDoc gives).
pub fn property_description(definition: &str, property: &str) -> String {
    schema(definition)
        .and_then(|s| {
            s.get("properties")?
                .get(property)?
                .get("description")?
                .as_str()
        })
        .unwrap_or_default()
        .to_string()
}

/// Resolved information about one property of a definition.
#[derive(Clone, Copy, Debug)]
pub struct Property {
    pub shape: ShapeRef,
    pub ext: Option<&'static FieldExt>,
}

/// A shape described by a property schema: a definition, or a map/list of one, or a scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeRef {
    Struct(&'static str),
    /// A map of the given element shape (`additionalProperties`).
    Map(Elem),
    List(Elem),
    Scalar,
}

/// The element of a map or list: a definition, a scalar, or (rare) a nested list/map of scalars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    Struct(&'static str),
    Scalar,
}

fn elem_of(schema: &'static Value) -> Elem {
    match ref_name(schema) {
        Some(name) => match SCHEMAS.get_key_value(name) {
            Some((k, v)) if v.get("properties").is_some() => Elem::Struct(k.as_str()),
            _ => Elem::Scalar,
        },
        None => Elem::Scalar,
    }
}

/// The shape of a property schema.
pub fn shape_of(prop: &'static Value) -> ShapeRef {
    if let Some(name) = ref_name(prop) {
        return match SCHEMAS.get_key_value(name) {
            Some((k, v)) if v.get("properties").is_some() => ShapeRef::Struct(k.as_str()),
            _ => ShapeRef::Scalar,
        };
    }
    match prop.get("type").and_then(Value::as_str) {
        Some("array") => ShapeRef::List(prop.get("items").map(elem_of).unwrap_or(Elem::Scalar)),
        Some("object") => match prop.get("additionalProperties") {
            Some(ap) if ap.is_object() => ShapeRef::Map(elem_of(ap)),
            _ => ShapeRef::Scalar,
        },
        _ => ShapeRef::Scalar,
    }
}

/// The property `name` of `definition`, resolved.
pub fn property(definition: &str, name: &str) -> Option<Property> {
    PROPERTY_INDEX.get(definition)?.get(name).copied()
}

/// Every property of every definition, resolved once: the field walkers (strict decoding,
/// patches, managedFields) look one up per field of every write.
static PROPERTY_INDEX: LazyLock<
    std::collections::HashMap<&'static str, std::collections::HashMap<&'static str, Property>>,
> = LazyLock::new(|| {
    SCHEMAS
        .iter()
        .filter_map(|(def, schema)| {
            let props = schema.get("properties")?.as_object()?;
            let resolved = props
                .iter()
                .map(|(name, p)| {
                    let property = Property {
                        shape: shape_of(p),
                        ext: field_ext(def, name),
                    };
                    (name.as_str(), property)
                })
                .collect();
            Some((def.as_str(), resolved))
        })
        .collect()
});

/// Whether a definition is atomic as a whole (`+structType=atomic`).
pub fn is_atomic_struct(definition: &str) -> bool {
    ATOMIC_STRUCTS.contains(&definition)
}

/// Top-level definition for a kind.
pub fn kind_definition(kind: &str) -> Option<&'static str> {
    kind_info(kind).map(|k| k.definition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_load_with_extensions() {
        assert!(SCHEMAS.len() > 150);
        let ports = &SCHEMAS["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "port");
        assert_eq!(
            ports["x-kubernetes-list-map-keys"],
            json!(["port", "protocol"])
        );
        for (def, prop, _) in EXTENSIONS {
            assert!(
                property(&full_definition(def), prop).is_some(),
                "{def}.{prop} missing from schemas"
            );
        }
        for k in KINDS {
            assert!(
                SCHEMAS[k.definition]
                    .get("x-kubernetes-group-version-kind")
                    .is_some()
            );
            assert!(
                SCHEMAS[k.definition]
                    .get("required")
                    .is_none_or(|r| !r.as_array().is_some_and(|a| a.contains(&json!("metadata"))))
            );
        }
        assert_eq!(
            property("io.k8s.api.core.v1.Service", "spec").map(|p| p.shape),
            Some(ShapeRef::Struct("io.k8s.api.core.v1.ServiceSpec"))
        );
        assert_eq!(
            property("io.k8s.api.core.v1.ServiceSpec", "ports").map(|p| p.shape),
            Some(ShapeRef::List(Elem::Struct(
                "io.k8s.api.core.v1.ServicePort"
            )))
        );
        assert_eq!(
            property("io.k8s.api.core.v1.ServiceSpec", "selector").map(|p| p.shape),
            Some(ShapeRef::Map(Elem::Scalar))
        );
        assert_eq!(
            property("io.k8s.api.core.v1.ServicePort", "targetPort").map(|p| p.shape),
            Some(ShapeRef::Scalar)
        );
    }
}
