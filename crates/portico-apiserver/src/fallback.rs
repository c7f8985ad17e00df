//! Private stand-ins for format modules that other engineers are still writing (patches, Tables, OpenAPI). Each is minimal but correct for what it covers; callers switch
//! to the real module as soon as it lands.
//!
//! Must not: grow into a second implementation of those modules.

use serde_json::{Value, json};

/// Minimal Table: Name and Age columns (the real printers live in `crate::table`).
pub fn to_table(objects: &[Value], include_object: &str, now: jiff::Timestamp) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let name = o.pointer("/metadata/name").cloned().unwrap_or(json!(""));
            let age = o
                .pointer("/metadata/creationTimestamp")
                .and_then(|v| v.as_str())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| human_duration(now.as_second() - t.as_second()))
                .unwrap_or_else(|| "<unknown>".into());
            let mut row = json!({"cells": [name, age]});
            match include_object {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0},
        ],
        "rows": rows,
    })
}

/// apimachinery's `HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let r = s % 60;
        return if r == 0 { format!("{m}m") } else { format!("{m}m{r}s") };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        let r = m % 60;
        return if r == 0 { format!("{h}h") } else { format!("{h}h{r}m") };
    }
    if h < 48 {
        return format!("{h}h");
    }
    let d = h / 24;
    if d < 8 {
        let r = h % 24;
        return if r == 0 { format!("{d}d") } else { format!("{d}d{r}h") };
    }
    if d < 365 * 2 {
        return format!("{d}d");
    }
    let y = d / 365;
    if y < 8 {
        let r = d % 365;
        return if r == 0 { format!("{y}y") } else { format!("{y}y{r}d") };
    }
    format!("{y}y")
}

/// JSON patch and merge patch via the `json-patch` crate; strategic merge treated as merge.
pub fn apply_patch(kind: &str, patch_type: &str, original: &Value, patch: &[u8]) -> Result<Value, String> {
    let _ = kind;
    let p: Value = serde_json::from_slice(patch).map_err(|e| e.to_string())?;
    let mut doc = original.clone();
    match patch_type {
        "json" => {
            let ops: json_patch::Patch = serde_json::from_value(p).map_err(|e| e.to_string())?;
            json_patch::patch(&mut doc, &ops).map_err(|e| e.to_string())?;
        }
        _ => {
            if !p.is_object() {
                return Err("patch must be a JSON object".into());
            }
            json_patch::merge(&mut doc, &p);
        }
    }
    Ok(doc)
}

/// Minimal OpenAPI v3 documents: a PATCH operation per kind with the `fieldValidation`
/// parameter, which is what kubectl's validation check looks for.
pub fn v3_document(group_version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for r in crate::resources::RESOURCES.iter() {
        let gv = if r.group.is_empty() { "api/v1".to_string() } else { format!("apis/{}/{}", r.group, r.version) };
        if gv != group_version {
            continue;
        }
        let path = if r.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("/{gv}/{}/{{name}}", r.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": r.group, "kind": r.kind, "version": r.version},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}}
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "unversioned"}, "paths": paths, "components": {"schemas": {}}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, want) in [(5, "5s"), (119, "119s"), (120, "2m"), (125, "2m5s"), (3600, "60m"), (3 * 3600 + 60, "3h1m"), (86400 * 3, "3d")] {
            assert_eq!(human_duration(s), want);
        }
    }
}
