//! Generic object handling on JSON values: metadata access, the typed round trip that rejects
//! malformed objects and drops unknown fields, stored-form encoding, and per-kind defaults that
//! are not Service strategy (Pods, Namespaces, EndpointSlices).
//!
//! Must not: do I/O; everything here is a pure function of its inputs.

use std::collections::BTreeMap;

use bytes::Bytes;
use portico_store::KeyValue;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::resources::ResourceInfo;

pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(|m| m.as_object())
}

/// `metadata`, created as an empty object when missing or not an object.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let m = obj.as_object_mut().expect("object ensured above");
    let entry = m.entry("metadata").or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("object ensured above")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj)
        .and_then(|m| m.get(field))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    meta(obj)
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.as_object())
        .map(|l| {
            l.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(|l| l.as_array())
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn resource_version(obj: &Value) -> Option<&str> {
    meta_str(obj, "resourceVersion")
}

/// Parses a stored value and fills in `metadata.resourceVersion` from the mod revision.
pub fn decode_stored(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    meta_mut(&mut v).insert(
        "resourceVersion".into(),
        Value::String(kv.mod_revision.to_string()),
    );
    Ok(v)
}

/// The stored form: the object without `metadata.resourceVersion`.
pub fn encode_for_store(obj: &Value) -> Bytes {
    // Most writes carry no resourceVersion by now: encode those without copying the object.
    let has_rv = meta(obj).is_some_and(|m| m.contains_key("resourceVersion"));
    if !has_rv && obj.get("metadata").is_some_and(Value::is_object) {
        return Bytes::from(serde_json::to_vec(obj).unwrap_or_default());
    }
    let mut v = obj.clone();
    meta_mut(&mut v).remove("resourceVersion");
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(v: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

fn decodes<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
    T::deserialize(v).map(drop).map_err(|e| e.to_string())
}

/// Decodes into the k8s-openapi type and back: rejects wrong types (upstream's "cannot be
/// handled as a Service" 400) and drops unknown fields, which upstream also never stores.
pub fn typed_roundtrip(info: &ResourceInfo, v: Value) -> Result<Value, ApiError> {
    use k8s_openapi::api::{core::v1 as core, discovery::v1 as disc, networking::v1 as net};
    let r = match info.kind {
        "Namespace" => roundtrip::<core::Namespace>(v),
        "Service" => roundtrip::<core::Service>(v),
        "Pod" => roundtrip::<core::Pod>(v),
        "Endpoints" => roundtrip::<core::Endpoints>(v),
        "Node" => roundtrip::<core::Node>(v),
        "Event" => roundtrip::<core::Event>(v),
        "EndpointSlice" => roundtrip::<disc::EndpointSlice>(v),
        "ServiceCIDR" => roundtrip::<net::ServiceCIDR>(v),
        "IPAddress" => roundtrip::<net::IPAddress>(v),
        _ => Ok(v),
    };
    let mut out = r.map_err(|e| cannot_be_handled(info, &e))?;
    // k8s-openapi always writes apiVersion/kind; make sure they are ours.
    if let Some(m) = out.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(info.api_version()));
        m.insert("kind".into(), Value::String(info.kind.to_string()));
    }
    Ok(out)
}

/// The type check of [`typed_roundtrip`] alone, for writes whose hooks re-encode the object
/// from its typed form anyway (which drops the unknown fields).
pub fn typed_check(info: &ResourceInfo, v: &Value) -> Result<(), ApiError> {
    use k8s_openapi::api::core::v1 as core;
    let r = match info.kind {
        "Service" => decodes::<core::Service>(v),
        _ => return typed_roundtrip(info, v.clone()).map(drop),
    };
    r.map_err(|e| cannot_be_handled(info, &e))
}

fn cannot_be_handled(info: &ResourceInfo, e: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: {}",
        info.kind, info.version, info.kind, e
    ))
}

/// Checks `apiVersion`/`kind` of a request body against the endpoint, filling them when absent.
pub fn check_type(info: &ResourceInfo, v: &mut Value) -> Result<(), ApiError> {
    let Some(m) = v.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): body is not a JSON object",
            info.kind
        )));
    };
    let av = m
        .get("apiVersion")
        .and_then(|x| x.as_str())
        .unwrap_or("")
        .to_string();
    let kind = m
        .get("kind")
        .and_then(|x| x.as_str())
        .unwrap_or("")
        .to_string();
    if (!av.is_empty() && av != info.api_version()) || (!kind.is_empty() && kind != info.kind) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            info.api_version()
        ))
        .with_kind_mismatch(&kind, info.kind));
    }
    m.insert("apiVersion".into(), Value::String(info.api_version()));
    m.insert("kind".into(), Value::String(info.kind.to_string()));
    if let Some(md) = m.get("metadata")
        && !md.is_object()
        && !md.is_null()
    {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: metadata must be an object",
            info.kind, info.version, info.kind
        )));
    }
    Ok(())
}

impl ApiError {
    fn with_kind_mismatch(self, got: &str, want: &str) -> Self {
        if !got.is_empty() && got != want {
            ApiError::bad_request(format!(
                "the kind in the data ({got}) does not match the expected kind ({want})"
            ))
        } else {
            self
        }
    }
}

/// A new `metadata.uid`: a random (v4) UUID from the thread's generator, not a system call
/// per object.
pub fn new_uid() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// RFC 3339 with whole seconds, as upstream's `metav1.Time`.
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now.to_string())
}

/// The parts of an object that count as its "spec" for generation bumps: everything but
/// metadata and status.
pub fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

/// Equal for the no-op rule: ignores resourceVersion and managedFields timestamps.
pub fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        let m = meta_mut(&mut v);
        m.remove("resourceVersion");
        if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
            for e in mf.iter_mut() {
                if let Some(o) = e.as_object_mut() {
                    o.remove("time");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// Defaults that upstream applies for kinds whose strategy is generic here.
pub fn apply_kind_defaults(info: &ResourceInfo, obj: &mut Value, creating: bool) {
    match info.kind {
        "Namespace" => {
            let name = name(obj).to_string();
            let m = meta_mut(obj);
            let labels = m.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), Value::String(name));
            }
            if creating {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
        }
        "EndpointSlice" => {
            if let Some(ports) = obj.get_mut("ports").and_then(|p| p.as_array_mut()) {
                for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
                    p.entry("name").or_insert_with(|| json!(""));
                    p.entry("protocol").or_insert_with(|| json!("TCP"));
                }
            }
            if obj.get("endpoints").is_none_or(|e| e.is_null()) {
                obj["endpoints"] = json!([]);
            }
            if let Some(eps) = obj.get_mut("endpoints").and_then(|p| p.as_array_mut()) {
                for ep in eps.iter_mut().filter_map(|p| p.as_object_mut()) {
                    let c = ep.entry("conditions").or_insert_with(|| json!({}));
                    if let Some(c) = c.as_object_mut() {
                        // Upstream leaves conditions nil ("unknown"); only make sure it is an object.
                        let _ = c;
                    }
                }
            }
        }
        "Endpoints" => {
            if let Some(subsets) = obj.get_mut("subsets").and_then(|p| p.as_array_mut()) {
                for s in subsets.iter_mut() {
                    if let Some(ports) = s.get_mut("ports").and_then(|p| p.as_array_mut()) {
                        for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
                            p.entry("protocol").or_insert_with(|| json!("TCP"));
                        }
                    }
                }
            }
        }
        "Pod" => default_pod(obj, creating),
        "Node" if creating && obj.get("status").is_none_or(|s| s.is_null()) => {
            obj["status"] = json!({});
        }
        _ => {}
    }
}

fn default_pod(obj: &mut Value, creating: bool) {
    if !obj.get("spec").is_some_and(|s| s.is_object()) {
        obj["spec"] = json!({});
    }
    let spec = obj["spec"].as_object_mut().expect("object ensured above");
    let defaults = [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
    ];
    for (k, v) in defaults {
        spec.entry(k).or_insert(v);
    }
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(|c| c.as_array_mut()) {
            for c in cs.iter_mut().filter_map(|c| c.as_object_mut()) {
                let image = c
                    .get("image")
                    .and_then(|i| i.as_str())
                    .unwrap_or("")
                    .to_string();
                let tag = image
                    .rsplit('/')
                    .next()
                    .and_then(|last| last.split_once(':'))
                    .map(|(_, t)| t.to_string());
                let pull = if image.contains('@') || tag.as_deref().is_some_and(|t| t != "latest") {
                    "IfNotPresent"
                } else {
                    "Always"
                };
                c.entry("imagePullPolicy").or_insert(json!(pull));
                c.entry("terminationMessagePath")
                    .or_insert(json!("/dev/termination-log"));
                c.entry("terminationMessagePolicy").or_insert(json!("File"));
                c.entry("resources").or_insert(json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(|p| p.as_array_mut()) {
                    for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
                        p.entry("protocol").or_insert(json!("TCP"));
                    }
                }
            }
        }
    }
    if creating {
        obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
    }
}

/// What the main resource may not change (status) or the status subresource may not change
/// (everything else), copied from the stored object.
pub fn keep_other_half(info: &ResourceInfo, old: &Value, new: &mut Value, status_write: bool) {
    if !info.has_status {
        return;
    }
    if status_write {
        let status = new.get("status").cloned();
        let mut merged = old.clone();
        match status {
            Some(s) => merged["status"] = s,
            None => {
                if let Some(m) = merged.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        // Metadata changes through /status are limited upstream too; keep labels/annotations from new.
        let (l, a, rv) = (
            meta(new).and_then(|m| m.get("labels")).cloned(),
            meta(new).and_then(|m| m.get("annotations")).cloned(),
            meta(new).and_then(|m| m.get("resourceVersion")).cloned(),
        );
        let mm = meta_mut(&mut merged);
        for (k, v) in [("labels", l), ("annotations", a), ("resourceVersion", rv)] {
            match v {
                Some(v) => mm.insert(k.into(), v),
                None => mm.remove(k),
            };
        }
        *new = merged;
    } else {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
}

/// Copies the metadata a client may not change on update from the stored object.
pub fn keep_system_meta(old: &Value, new: &mut Value) {
    let keep: Vec<(String, Option<Value>)> = [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
        "selfLink",
    ]
    .iter()
    .map(|k| (k.to_string(), meta(old).and_then(|m| m.get(*k)).cloned()))
    .collect();
    let m = meta_mut(new);
    for (k, v) in keep {
        match v {
            Some(v) => m.insert(k, v),
            None => m.remove(&k),
        };
    }
    if m.get("generateName").is_none_or(|g| g.is_null()) {
        m.remove("generateName");
    }
}

const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `generateName` + 5 random characters (upstream's alphabet, no vowels).
pub fn generate_name(base: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let base: String = base.chars().take(58).collect();
    let suffix: String = (0..5)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect();
    format!("{base}{suffix}")
}

/// Upstream's DNS-1123 subdomain check (`metadata.name` of most kinds).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns1123_subdomain(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_distinct_version_4_uuids() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).expect("a UUID");
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("A"));
        assert!(!is_dns1123_label("a.b"));
        let g = generate_name("web-");
        assert_eq!(g.len(), 9);
        assert!(g.starts_with("web-"));
    }

    #[test]
    fn roundtrip_rejects_bad_types_and_drops_unknown() {
        let info = crate::resources::by_plural("services").unwrap();
        let ok = typed_roundtrip(
            info,
            json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}], "bogus": 1}}),
        )
        .unwrap();
        assert!(ok["spec"].get("bogus").is_none());
        let err = typed_roundtrip(
            info,
            json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": "x"}]}}),
        )
        .unwrap_err();
        assert_eq!(err.code, 400);
    }
}
