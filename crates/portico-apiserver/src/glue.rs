//! The one place the handlers call the format modules (`patch`, `ssa`, `protobuf`, `openapi`,
//! `strict`, `table`), so switching from a private fallback to the real module is a local change.
//!
//! Must not: implement formats itself beyond the small fallbacks in `fallback`.

use serde_json::Value;

use crate::error::ApiError;

/// The three non-apply patch types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
}

pub fn apply_patch(kind: &str, pk: PatchKind, original: &Value, patch: &[u8]) -> Result<Value, ApiError> {
    let t = match pk {
        PatchKind::Json => "json",
        PatchKind::Merge => "merge",
        PatchKind::Strategic => "strategic",
    };
    crate::fallback::apply_patch(kind, t, original, patch).map_err(patch_error)
}

fn patch_error(msg: String) -> ApiError {
    ApiError::bad_request(msg)
}

/// Server-side apply: merged object with managedFields.
pub fn ssa_apply(kind: &str, live: Option<&Value>, applied: &Value, manager: &str, force: bool, now: &str) -> Result<Value, ApiError> {
    let _ = (kind, manager, force, now);
    let mut out = live.cloned().unwrap_or_else(|| Value::Object(Default::default()));
    json_patch::merge(&mut out, applied);
    Ok(out)
}

/// managedFields bookkeeping for non-apply writes.
pub fn record_update(kind: &str, old: Option<&Value>, new: &mut Value, manager: &str, subresource: Option<&str>, now: &str) {
    let _ = (kind, old, new, manager, subresource, now);
}

pub fn protobuf_decode(body: &[u8]) -> Result<Value, ApiError> {
    let _ = body;
    Err(ApiError::unsupported_media_type("application/vnd.kubernetes.protobuf"))
}

/// Unknown and duplicate fields of a raw JSON body, as `spec.foo` paths.
pub fn unknown_fields(kind: &str, raw: &[u8]) -> Result<Vec<String>, String> {
    let _ = (kind, raw);
    Ok(Vec::new())
}

pub fn to_table(kind: &str, objects: &[Value], include_object: &str, now: jiff::Timestamp) -> Value {
    let _ = kind;
    crate::fallback::to_table(objects, include_object, now)
}

pub fn openapi_v2() -> Option<bytes::Bytes> {
    None
}

pub fn openapi_v3_index() -> Value {
    let mut paths = serde_json::Map::new();
    for gv in ["api/v1", "apis/discovery.k8s.io/v1", "apis/networking.k8s.io/v1"] {
        if let Some((_, hash)) = openapi_v3_document(gv) {
            paths.insert(gv.to_string(), serde_json::json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}")}));
        }
    }
    serde_json::json!({"paths": paths})
}

pub fn openapi_v3_document(group_version: &str) -> Option<(Value, String)> {
    let doc = crate::fallback::v3_document(group_version)?;
    use sha2::Digest;
    let hash = sha2::Sha512::digest(serde_json::to_vec(&doc).unwrap_or_default());
    let hex: String = hash.iter().take(32).map(|b| format!("{b:02X}")).collect();
    Some((doc, hex))
}
