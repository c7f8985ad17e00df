//! `/openapi/v3` index and per-group-version documents generated from the schema catalogue.

use super::{KINDS, KindInfo, SCHEMAS};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

/// The group versions with a v3 document.
pub const GROUP_VERSIONS: &[&str] = &[
    "api/v1",
    "apis/discovery.k8s.io/v1",
    "apis/networking.k8s.io/v1",
];

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(r) = o
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                out.push(r.to_string());
            }
            for x in o.values() {
                collect_refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn gvk(k: &KindInfo) -> Value {
    json!({"group": k.group, "kind": k.kind, "version": k.version})
}

fn schema_ref(def: &str) -> Value {
    json!({"schema": {"$ref": format!("#/components/schemas/{def}")}})
}

fn query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        query(
            "dryRun",
            "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
        ),
        query(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.",
        ),
        query(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
        ),
    ]
}

fn operation(
    k: &KindInfo,
    verb: &str,
    id: &str,
    desc: &str,
    with_body: bool,
    extra: Vec<Value>,
) -> Value {
    let mut op = json!({
        "description": desc,
        "operationId": id,
        "tags": [if k.group.is_empty() { format!("core_{}", k.version) } else { format!("{}_{}", k.group.split('.').next().unwrap_or(k.group), k.version) }],
        "responses": {"200": {"description": "OK", "content": {"application/json": schema_ref(k.definition)}},
                      "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": gvk(k),
    });
    if !extra.is_empty() {
        op["parameters"] = Value::Array(extra);
    }
    if with_body {
        let content = if verb == "patch" {
            let obj = json!({"schema": {"type": "object"}});
            json!({"application/apply-patch+yaml": obj, "application/json-patch+json": obj,
                   "application/merge-patch+json": obj, "application/strategic-merge-patch+json": obj})
        } else {
            json!({"*/*": schema_ref(k.definition)})
        };
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

fn paths_for(k: &KindInfo) -> Vec<(String, Value)> {
    let item = super::v2::item_path(k);
    let collection = item.trim_end_matches("/{name}").to_string();
    let suffix = format!(
        "{}{}",
        if k.group.is_empty() {
            "Core".to_string()
        } else {
            capitalize(k.group.split('.').next().unwrap_or(""))
        },
        capitalize(k.version)
    );
    let scope = if k.namespaced { "Namespaced" } else { "" };
    let mut patch_params = write_params();
    patch_params.push(query("force", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests."));
    let item_ops = json!({
        "get": operation(k, "get", &format!("read{suffix}{scope}{}", k.kind), &format!("read the specified {}", k.kind), false, vec![]),
        "put": operation(k, "put", &format!("replace{suffix}{scope}{}", k.kind), &format!("replace the specified {}", k.kind), true, write_params()),
        "patch": operation(k, "patch", &format!("patch{suffix}{scope}{}", k.kind), &format!("partially update the specified {}", k.kind), true, patch_params),
        "delete": operation(k, "delete", &format!("delete{suffix}{scope}{}", k.kind), &format!("delete a {}", k.kind), false, vec![query("dryRun", "When present, indicates that modifications should not be persisted.")]),
        "parameters": path_params(k, true),
    });
    let collection_ops = json!({
        "post": operation(k, "post", &format!("create{suffix}{scope}{}", k.kind), &format!("create a {}", k.kind), true, write_params()),
        "parameters": path_params(k, false),
    });
    vec![(collection, collection_ops), (item, item_ops)]
}

fn path_params(k: &KindInfo, item: bool) -> Value {
    let mut params = Vec::new();
    if item {
        params.push(json!({"name": "name", "in": "path", "description": format!("name of the {}", k.kind), "required": true, "schema": {"type": "string", "uniqueItems": true}}));
    }
    if k.namespaced {
        params.push(json!({"name": "namespace", "in": "path", "description": "object name and auth scope, such as for teams and projects", "required": true, "schema": {"type": "string", "uniqueItems": true}}));
    }
    Value::Array(params)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn build(group_version: &str) -> Option<(Value, String)> {
    let kinds: Vec<&KindInfo> = KINDS
        .iter()
        .filter(|k| k.group_version_path() == group_version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut paths = BTreeMap::new();
    let mut wanted: Vec<String> = Vec::new();
    for k in &kinds {
        for (p, v) in paths_for(k) {
            paths.insert(p, v);
        }
        wanted.push(k.definition.to_string());
    }
    let mut seen = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(s) = SCHEMAS.get(&name) {
            collect_refs(s, &mut wanted);
        }
    }
    let schemas: Map<String, Value> = seen
        .into_iter()
        .filter_map(|n| SCHEMAS.get(&n).map(|s| (n, s.clone())))
        .collect();
    let doc = json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": schemas},
    });
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    let hash: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    Some((doc, hash))
}

static DOCUMENTS: LazyLock<BTreeMap<&'static str, (Value, String)>> = LazyLock::new(|| {
    GROUP_VERSIONS
        .iter()
        .filter_map(|gv| build(gv).map(|d| (*gv, d)))
        .collect()
});

/// The document of `api/v1`, `apis/discovery.k8s.io/v1` or `apis/networking.k8s.io/v1`, with the
/// hash clients put in `?hash=` (and the server in `ETag`).
pub fn v3_document(group_version: &str) -> Option<(Value, String)> {
    DOCUMENTS.get(group_version).cloned()
}

/// `GET /openapi/v3`.
pub fn v3_index() -> Value {
    let paths: Map<String, Value> = DOCUMENTS
        .iter()
        .map(|(gv, (_, hash))| {
            (
                gv.to_string(),
                json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}")}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// Whether every `$ref` resolves inside a document.
#[cfg(test)]
fn refs_resolve(doc: &Value) -> bool {
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    refs.iter()
        .all(|r| doc["components"]["schemas"].get(r).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_cover_every_kind() {
        let index = v3_index();
        for gv in GROUP_VERSIONS {
            let (doc, hash) = v3_document(gv).expect("document");
            assert_eq!(
                index["paths"][gv]["serverRelativeURL"],
                format!("/openapi/v3/{gv}?hash={hash}")
            );
            assert!(refs_resolve(&doc), "{gv}");
        }
        for k in KINDS {
            let (doc, _) = v3_document(&k.group_version_path()).expect("document");
            let patch = &doc["paths"][super::super::v2::item_path(k)]["patch"];
            assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], k.kind);
            let params = patch["parameters"].as_array().expect("params");
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
            );
            let schema = &doc["components"]["schemas"][k.definition];
            assert_eq!(schema["x-kubernetes-group-version-kind"][0]["kind"], k.kind);
        }
        assert!(v3_document("apis/apps/v1").is_none());
    }
}
