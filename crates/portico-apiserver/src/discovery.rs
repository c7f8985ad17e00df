//! Discovery: `/version`, legacy `/api`, `/apis`, `/api/v1`, `/apis/{g}/{v}`, and aggregated
//! discovery (`apidiscovery.k8s.io` v2 and v2beta1) when the client's Accept asks for it.
//!
//! Must not: depend on request state beyond the Accept header.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::codec;
use crate::resources::{self, GROUPS, RESOURCES, ResourceInfo};

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0",
        "gitCommit": "portico",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// Which aggregated discovery version the client accepts, preferring v2.
fn aggregated_version(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for entry in accept.split(',') {
        let params: Vec<&str> = entry.split(';').map(|p| p.trim()).collect();
        if params.first().is_none_or(|m| *m != "application/json") {
            continue;
        }
        let has = |kv: &str| params.iter().any(|p| p.replace(' ', "") == kv);
        if has("g=apidiscovery.k8s.io") && has("as=APIGroupDiscoveryList") {
            if has("v=v2") {
                return Some("v2");
            }
            if has("v=v2beta1") {
                return Some("v2beta1");
            }
        }
    }
    None
}

fn resource_entry(r: &ResourceInfo) -> Value {
    let mut e = json!({
        "resource": r.plural,
        "responseKind": {"group": "", "version": "", "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": resources::verbs(),
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    if r.has_status {
        e["subresources"] = json!([{"subresource": "status", "responseKind": {"group": "", "version": "", "kind": r.kind}, "verbs": ["get", "patch", "update"]}]);
    }
    e
}

fn group_entry(group: &str, dv: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group)
        .map(resource_entry)
        .collect();
    let _ = dv;
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})
}

fn aggregated(groups: &[&str], dv: &'static str) -> Response {
    let items: Vec<Value> = groups.iter().map(|g| group_entry(g, dv)).collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{dv}"), "metadata": {}, "items": items});
    let mut r = codec::json(StatusCode::OK, &body);
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={dv};as=APIGroupDiscoveryList");
    if let Ok(v) = HeaderValue::from_str(&ct) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

/// `/api`.
pub fn api(headers: &HeaderMap, server_address: &str) -> Response {
    if let Some(dv) = aggregated_version(headers) {
        return aggregated(&[""], dv);
    }
    codec::json(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}),
    )
}

fn group_version_entry(g: &str) -> Value {
    json!({"groupVersion": format!("{g}/v1"), "version": "v1"})
}

/// `/apis`.
pub fn apis(headers: &HeaderMap) -> Response {
    if let Some(dv) = aggregated_version(headers) {
        return aggregated(GROUPS, dv);
    }
    let groups: Vec<Value> = GROUPS.iter().map(|g| group_legacy(g)).collect();
    codec::json(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

fn group_legacy(g: &str) -> Value {
    json!({"name": g, "versions": [group_version_entry(g)], "preferredVersion": group_version_entry(g)})
}

/// `/apis/{group}`.
pub fn group(g: &str) -> Option<Value> {
    GROUPS.contains(&g).then(|| {
        let mut v = group_legacy(g);
        v["kind"] = json!("APIGroup");
        v["apiVersion"] = json!("v1");
        v
    })
}

/// `/api/v1` or `/apis/{group}/{version}`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if version != "v1" || !(group.is_empty() || GROUPS.contains(&group)) {
        return None;
    }
    let mut list = Vec::new();
    for r in resources::in_group_version(group, version) {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": resources::verbs(),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        list.push(e);
        if r.has_status {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_negotiation() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert_eq!(aggregated_version(&h), Some("v2"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert_eq!(aggregated_version(&h), Some("v2beta1"));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, */*"),
        );
        assert_eq!(aggregated_version(&h), None);
        let r = api(&h, "127.0.0.1:1");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert!(
            resource_list("", "v1").unwrap()["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "services/status")
        );
        assert!(resource_list("bogus", "v1").is_none());
    }
}
