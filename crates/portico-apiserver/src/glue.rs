//! The one place the handlers call the format modules (`patch`, `ssa`, `protobuf`, `openapi`,
//! `strict`, `table`), so their signatures are adapted in one spot.
//!
//! Must not: implement formats itself.

use serde_json::Value;

use crate::error::ApiError;

/// The three non-apply patch types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
}

pub fn apply_patch(
    kind: &str,
    pk: PatchKind,
    original: &Value,
    patch: &[u8],
) -> Result<Value, ApiError> {
    let t = match pk {
        PatchKind::Json => crate::patch::PatchType::Json,
        PatchKind::Merge => crate::patch::PatchType::Merge,
        PatchKind::Strategic => crate::patch::PatchType::Strategic,
    };
    crate::patch::apply_patch(kind, t, original, patch)
}

/// Server-side apply: merged object with managedFields.
pub fn ssa_apply(
    kind: &str,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    crate::ssa::apply(kind, live, applied, manager, force, now)
}

/// managedFields bookkeeping for non-apply writes.
pub fn record_update(
    kind: &str,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    crate::ssa::record_update(kind, old, new, manager, subresource, now)
}

pub fn protobuf_decode(body: &[u8]) -> Result<Value, ApiError> {
    crate::protobuf::decode(body)
        .map_err(|e| ApiError::bad_request(format!("failed to decode protobuf body: {e}")))
}

/// Unknown and duplicate fields of a raw JSON body, as `spec.foo` paths.
pub fn unknown_fields(kind: &str, raw: &[u8]) -> Result<Vec<String>, String> {
    crate::strict::unknown_fields(kind, raw)
}

pub fn to_table(
    kind: &str,
    objects: &[Value],
    include_object: &str,
    now: jiff::Timestamp,
) -> Value {
    let inc = crate::table::IncludeObject::from_query(Some(include_object));
    crate::table::to_table(kind, objects, inc, now)
}

pub fn openapi_v2() -> Option<bytes::Bytes> {
    Some(crate::openapi::v2_protobuf())
}

pub fn openapi_v3_index() -> Value {
    crate::openapi::v3_index()
}

pub fn openapi_v3_document(group_version: &str) -> Option<(Value, String)> {
    crate::openapi::v3_document(group_version)
}
