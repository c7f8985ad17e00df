//! PATCH bodies: RFC 6902 JSON patch, RFC 7386 merge patch and Kubernetes strategic merge patch.
//!
//! Owns: applying a patch of a given content type to an object (JSON in, JSON out), with
//! kube-apiserver's error codes (400 for a malformed patch, 422 for a JSON patch that fails to
//! apply). Strategic merge follows apimachinery's `strategicpatch` (server side, parallel lists
//! merged): merge keys and strategies come from the schema catalogue in [`crate::openapi`].
//! Must not: validate or default the result; the caller decodes, validates and stores it.

use crate::error::ApiError;
use crate::openapi::{self, Elem, ShapeRef};
use serde_json::{Map, Value, json};

/// The PATCH content types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value (parameters ignored). Server-side apply
    /// (`application/apply-patch+yaml`) is not a `PatchType`; see [`crate::ssa`].
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

/// Upstream's limit on the number of JSON patch operations.
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Applies `patch` to `original` (an object of `kind`), returning the patched object.
pub fn apply_patch(
    kind: &str,
    patch_type: PatchType,
    original: &Value,
    patch: &[u8],
) -> Result<Value, ApiError> {
    match patch_type {
        PatchType::Json => {
            let ops: Vec<Value> =
                serde_json::from_slice(patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
            if ops.len() > MAX_JSON_PATCH_OPERATIONS {
                return Err(ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    format!(
                        "Request entity too large: The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
                        ops.len()
                    ),
                ));
            }
            let p: json_patch::Patch = serde_json::from_value(Value::Array(ops))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let mut doc = original.clone();
            json_patch::patch(&mut doc, &p).map_err(|e| unprocessable(e.to_string()))?;
            Ok(doc)
        }
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(patch)
                .map_err(|_| ApiError::bad_request("Invalid JSON Patch"))?;
            if !p.is_object() {
                return Err(ApiError::bad_request("Invalid JSON Patch"));
            }
            let mut doc = original.clone();
            json_patch::merge(&mut doc, &p);
            Ok(doc)
        }
        PatchType::Strategic => {
            let p: Value =
                serde_json::from_slice(patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let p = match p {
                Value::Object(m) => m,
                Value::Null => Map::new(),
                _ => {
                    return Err(ApiError::bad_request(
                        "json: cannot unmarshal non-object into Go value of type map[string]interface {}",
                    ));
                }
            };
            strategic_merge(kind, original, p).map_err(ApiError::bad_request)
        }
    }
}

/// `errors.NewGenericServerResponse(422, …)`: what upstream answers when a JSON patch fails.
fn unprocessable(message: String) -> ApiError {
    let mut e = ApiError::new(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
    );
    e.details =
        Some(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": message}]}));
    e
}

/// Applies a strategic merge patch (already parsed) to an object of `kind`.
pub fn strategic_merge(
    kind: &str,
    original: &Value,
    patch: Map<String, Value>,
) -> Result<Value, String> {
    let ctx = openapi::kind_definition(kind)
        .map(Ctx::Struct)
        .unwrap_or(Ctx::Unknown);
    let original = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    merge_map(original, patch, ctx).map(Value::Object)
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Where in the schema a map being merged sits.
#[derive(Clone, Copy, Debug)]
enum Ctx {
    /// An object of this definition.
    Struct(&'static str),
    /// A map whose values have this element shape (labels, selectors, resource lists).
    MapOf(Elem),
    /// Nothing known: maps merge, lists are replaced.
    Unknown,
}

/// Patch metadata of a field: its own context and, for lists, strategy and merge key.
struct FieldMeta {
    ctx: Ctx,
    strategy: &'static str,
    merge_key: &'static str,
}

fn elem_ctx(e: Elem) -> Ctx {
    match e {
        Elem::Struct(d) => Ctx::Struct(d),
        Elem::Scalar => Ctx::Unknown,
    }
}

fn field_meta(ctx: Ctx, key: &str) -> FieldMeta {
    let unknown = FieldMeta {
        ctx: Ctx::Unknown,
        strategy: "",
        merge_key: "",
    };
    match ctx {
        Ctx::Struct(def) => match openapi::property(def, key) {
            Some(p) => {
                let (strategy, merge_key) = p
                    .ext
                    .map(|e| {
                        (
                            e.patch_strategy.unwrap_or(""),
                            e.patch_merge_key.unwrap_or(""),
                        )
                    })
                    .unwrap_or(("", ""));
                let ctx = match p.shape {
                    ShapeRef::Struct(d) => Ctx::Struct(d),
                    ShapeRef::Map(e) => Ctx::MapOf(e),
                    ShapeRef::List(e) => elem_ctx(e),
                    ShapeRef::Scalar => Ctx::Unknown,
                };
                FieldMeta {
                    ctx,
                    strategy,
                    merge_key,
                }
            }
            None => unknown,
        },
        Ctx::MapOf(e) => FieldMeta {
            ctx: elem_ctx(e),
            ..unknown
        },
        Ctx::Unknown => unknown,
    }
}

fn has_strategy(strategy: &str, s: &str) -> bool {
    strategy.split(',').any(|x| x == s)
}

fn go_type(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// JSON equality as Go sees decoded values (all numbers are float64).
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| values_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Cleans a value copied from the patch into a place where nothing was before: nulls and
/// directive keys (`$patch`, `$retainKeys`, `$setElementOrder/…`, `$deleteFromPrimitiveList/…`)
/// go, list elements that only carry `$patch` directives (delete or replace markers) go, and a
/// map marked `$patch: delete` becomes empty.
fn remove_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            if m.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                return Value::Object(Map::new());
            }
            Value::Object(
                m.into_iter()
                    .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                    .map(|(k, v)| (k, remove_directives(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(
            a.into_iter()
                .filter(|e| e.get(DIRECTIVE).is_none())
                .map(remove_directives)
                .collect(),
        ),
        other => other,
    }
}

fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    ctx: Ctx,
) -> Result<Map<String, Value>, String> {
    if let Some(directive) = patch.remove(DIRECTIVE) {
        return match directive.as_str() {
            Some("replace") => Ok(patch),
            Some("delete") => Ok(Map::new()),
            _ => Err(format!(
                "unknown patch type: {} in map: {}",
                go_string(&directive),
                go_map(&patch)
            )),
        };
    }
    if let Some(retain) = patch.remove(RETAIN_KEYS) {
        let Some(keys) = retain.as_array().filter(|a| a.iter().all(Value::is_string)) else {
            return Err("invalid patch format of retainKeys".into());
        };
        original.retain(|k, _| keys.iter().any(|x| x.as_str() == Some(k.as_str())));
    }
    merge_set_element_order(&mut original, &mut patch, ctx)?;
    for (key, patch_value) in patch {
        let (key, is_delete_list) = match key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            Some(k) => (k.to_string(), true),
            None => (key, false),
        };
        if patch_value.is_null() {
            original.remove(&key);
            continue;
        }
        let Some(orig_value) = original.remove(&key) else {
            if !is_delete_list {
                original.insert(key, remove_directives(patch_value));
            }
            continue;
        };
        if go_type(&orig_value) != go_type(&patch_value) {
            let kept = if is_delete_list {
                orig_value
            } else {
                remove_directives(patch_value)
            };
            original.insert(key, kept);
            continue;
        }
        let meta = field_meta(ctx, &key);
        let merged = match (orig_value, patch_value) {
            (Value::Object(o), Value::Object(p)) => Value::Object(merge_map(o, p, meta.ctx)?),
            (Value::Array(o), Value::Array(p)) => {
                // Delete lists apply whatever the field's strategy is.
                if has_strategy(meta.strategy, "merge") || is_delete_list {
                    Value::Array(merge_slice(o, p, meta.ctx, meta.merge_key, is_delete_list)?)
                } else {
                    Value::Array(p)
                }
            }
            (_, p) => p,
        };
        original.insert(key, merged);
    }
    Ok(original)
}

/// Handles `$setElementOrder/<list>` keys together with their lists (`mergePatchIntoOriginal`).
fn merge_set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    ctx: Ctx,
) -> Result<(), String> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for key in keys {
        let Some(order) = patch.remove(&key) else {
            continue;
        };
        let list_key = key[SET_ELEMENT_ORDER.len()..].to_string();
        let Value::Array(order) = order else {
            return Err("invalid patch format of setElementOrder list".into());
        };
        let orig_list = match original.get(&list_key) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(other) => {
                return Err(format!(
                    "expected []interface{{}}, but got {}",
                    go_string(other)
                ));
            }
        };
        let patch_list = match patch.remove(&list_key) {
            None => None,
            Some(Value::Array(a)) => Some(a),
            Some(other) => {
                return Err(format!(
                    "expected []interface{{}}, but got {}",
                    go_string(&other)
                ));
            }
        };
        let meta = field_meta(ctx, &list_key);
        let merge_key = meta.merge_key;
        validate_patch_with_set_order(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;
        let merged = match (&orig_list, patch_list.clone()) {
            (Some(o), None) => o.clone(),
            (None, Some(p)) => p.into_iter().map(remove_directives).collect(),
            (Some(o), Some(p)) => {
                if has_strategy(meta.strategy, "merge") {
                    merge_slice(o.clone(), p, meta.ctx, merge_key, false)?
                } else {
                    p
                }
            }
            (None, None) => continue,
        };
        let is_map = element_is_map(
            orig_list.as_deref().unwrap_or(&[]),
            patch_list.as_deref().unwrap_or(&[]),
            merge_key,
        );
        let (patch_items, server_only) = partition(merged, &order, merge_key, is_map)?;
        let both = normalize_element_order(
            patch_items,
            server_only,
            &order,
            orig_list.as_deref().unwrap_or(&[]),
            merge_key,
            is_map,
        )?;
        original.insert(list_key, Value::Array(both));
    }
    Ok(())
}

fn element_is_map(a: &[Value], b: &[Value], merge_key: &str) -> bool {
    match a.iter().chain(b).next() {
        Some(v) => v.is_object(),
        None => !merge_key.is_empty(),
    }
}

fn validate_patch_with_set_order(
    patch_list: &[Value],
    order: &[Value],
    merge_key: &str,
) -> Result<(), String> {
    if patch_list.is_empty() || order.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = patch_list
        .iter()
        .filter(|v| {
            merge_key.is_empty() || v.get(DIRECTIVE).and_then(Value::as_str) != Some("delete")
        })
        .collect();
    let (mut pi, mut oi) = (0, 0);
    while pi < non_delete.len() && oi < order.len() {
        if non_delete[pi].get(DIRECTIVE).is_some() {
            pi += 1;
            continue;
        }
        if key_equal(non_delete[pi], &order[oi], merge_key) {
            pi += 1;
        }
        oi += 1;
    }
    if pi < non_delete.len() && oi >= order.len() {
        return Err(format!(
            "The order in patch list:\n{}\n doesn't match $setElementOrder list:\n{}\n",
            go_list(patch_list),
            go_list(order)
        ));
    }
    Ok(())
}

fn key_equal(a: &Value, b: &Value, merge_key: &str) -> bool {
    if merge_key.is_empty() {
        return values_equal(a, b);
    }
    match (a.get(merge_key), b.get(merge_key)) {
        (Some(x), Some(y)) => values_equal(x, y),
        _ => false,
    }
}

fn merge_slice(
    original: Vec<Value>,
    patch: Vec<Value>,
    ctx: Ctx,
    merge_key: &str,
    is_delete_list: bool,
) -> Result<Vec<Value>, String> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let first = original.iter().chain(patch.iter()).next();
    if first.is_some_and(Value::is_array) {
        return Err("lists of lists are not supported".into());
    }
    let kind = first.map(go_type).unwrap_or(0);
    if original
        .iter()
        .chain(patch.iter())
        .any(|v| go_type(v) != kind)
    {
        return Err(format!(
            "list element types are not identical: [{} {}]",
            go_list(&original),
            go_list(&patch)
        ));
    }
    let is_map = kind == 5;
    if !is_map {
        if is_delete_list {
            return Ok(original
                .into_iter()
                .filter(|o| !patch.iter().any(|p| values_equal(o, p)))
                .collect());
        }
        let mut merged: Vec<Value> = Vec::new();
        for v in original.iter().chain(patch.iter()) {
            if !merged.iter().any(|m| values_equal(m, v)) {
                merged.push(v.clone());
            }
        }
        let (patch_items, server_only) = partition(merged, &patch, "", false)?;
        return normalize_element_order(patch_items, server_only, &patch, &original, "", false);
    }
    if merge_key.is_empty() {
        return Err(format!(
            "cannot merge lists without merge key for {}",
            ctx_name(ctx)
        ));
    }
    // `$patch` elements: delete by key, or replace the whole list.
    let mut original = original;
    let mut plain_patch: Vec<Value> = Vec::new();
    let mut replace = false;
    for v in patch {
        match v.get(DIRECTIVE) {
            None => plain_patch.push(v),
            Some(d) => match d.as_str() {
                Some("delete") => {
                    let Some(key_value) = v.get(merge_key) else {
                        return Err(format!(
                            "map: {} does not contain declared merge key: {merge_key}",
                            go_string(&v)
                        ));
                    };
                    original
                        .retain(|o| !o.get(merge_key).is_some_and(|x| values_equal(x, key_value)));
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err("merging lists cannot yet be specified in the patch".into());
                }
                _ => {
                    let m = v.as_object().cloned().unwrap_or_default();
                    return Err(format!(
                        "unknown patch type: {} in map: {}",
                        go_string(d),
                        go_map(&m)
                    ));
                }
            },
        }
    }
    if replace {
        return Ok(plain_patch.into_iter().map(remove_directives).collect());
    }
    let server_order = original.clone();
    let mut merged = original;
    for v in &plain_patch {
        let Some(key_value) = v.get(merge_key) else {
            return Err(format!(
                "map: {} does not contain declared merge key: {merge_key}",
                go_string(v)
            ));
        };
        let found = merged
            .iter()
            .position(|o| o.get(merge_key).is_some_and(|x| values_equal(x, key_value)));
        match (found, v) {
            (Some(i), Value::Object(p)) => {
                let o = match std::mem::take(&mut merged[i]) {
                    Value::Object(o) => o,
                    _ => Map::new(),
                };
                merged[i] = Value::Object(merge_map(o, p.clone(), ctx)?);
            }
            _ => merged.push(remove_directives(v.clone())),
        }
    }
    let (patch_items, server_only) = partition(merged, &plain_patch, merge_key, true)?;
    normalize_element_order(
        patch_items,
        server_only,
        &plain_patch,
        &server_order,
        merge_key,
        true,
    )
}

/// Splits `items` into those present in `by` (by merge key, or equality for primitives) and the rest.
fn partition(
    items: Vec<Value>,
    by: &[Value],
    merge_key: &str,
    is_map: bool,
) -> Result<(Vec<Value>, Vec<Value>), String> {
    let mut present = Vec::new();
    let mut rest = Vec::new();
    for v in items {
        if is_map && v.get(merge_key).is_none() {
            return Err(format!(
                "map: {} does not contain declared merge key: {merge_key}",
                go_string(&v)
            ));
        }
        if index_of(by, &v, merge_key, is_map).is_some() {
            present.push(v)
        } else {
            rest.push(v)
        }
    }
    Ok((present, rest))
}

fn index_of(list: &[Value], item: &Value, merge_key: &str, is_map: bool) -> Option<usize> {
    if is_map {
        let k = item.get(merge_key)?;
        list.iter()
            .position(|x| x.get(merge_key).is_some_and(|y| values_equal(y, k)))
    } else {
        list.iter().position(|x| values_equal(x, item))
    }
}

fn normalize_slice_order(
    to_sort: Vec<Value>,
    order: &[Value],
    merge_key: &str,
    is_map: bool,
) -> Result<Vec<Value>, String> {
    let (mut present, absent) = partition(to_sort, order, merge_key, is_map)?;
    // Stable sort by position in `order`; every element of `present` is found there.
    present.sort_by_key(|v| index_of(order, v, merge_key, is_map).unwrap_or(usize::MAX));
    present.extend(absent);
    Ok(present)
}

/// Orders patch items by the patch (or `$setElementOrder`) and interleaves server-only items by
/// their order in the live list (`normalizeElementOrder` + `mergeSortedSlice`).
fn normalize_element_order(
    patch: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: &str,
    is_map: bool,
) -> Result<Vec<Value>, String> {
    let right = normalize_slice_order(patch, patch_order, merge_key, is_map)?;
    let left = normalize_slice_order(server_only, server_order, merge_key, is_map)?;
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => out.extend(left.next()),
            (None, Some(_)) => out.extend(right.next()),
            (Some(l), Some(r)) => {
                let li = index_of(server_order, l, merge_key, is_map);
                let ri = index_of(server_order, r, merge_key, is_map);
                if matches!((li, ri), (Some(a), Some(b)) if a < b) {
                    out.extend(left.next());
                } else {
                    out.extend(right.next());
                }
            }
        }
    }
    Ok(out)
}

fn ctx_name(ctx: Ctx) -> String {
    match ctx {
        Ctx::Struct(d) => d.rsplit('.').next().unwrap_or(d).to_string(),
        _ => String::new(),
    }
}

/// Go's `%v` of a decoded JSON value, for error messages that quote patch content.
fn go_string(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => go_list(a),
        Value::Object(m) => go_map(m),
        other => other.to_string(),
    }
}
fn go_list(a: &[Value]) -> String {
    format!(
        "[{}]",
        a.iter().map(go_string).collect::<Vec<_>>().join(" ")
    )
}
fn go_map(m: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    format!(
        "map[{}]",
        keys.iter()
            .map(|k| format!("{k}:{}", go_string(&m[*k])))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smp(kind: &str, original: Value, patch: Value) -> Value {
        apply_patch(
            kind,
            PatchType::Strategic,
            &original,
            patch.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn smp_err(kind: &str, original: Value, patch: &str) -> ApiError {
        apply_patch(kind, PatchType::Strategic, &original, patch.as_bytes()).expect_err(patch)
    }

    proptest::proptest! {
        #[test]
        fn random_patches_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let svc = json!({"metadata": {"name": "a", "finalizers": ["x"]}, "spec": {"ports": [{"port": 80}]}});
            for t in [PatchType::Json, PatchType::Merge, PatchType::Strategic] {
                let _ = apply_patch("Service", t, &svc, &body);
            }
        }

        #[test]
        fn random_strategic_patches_never_panic(
            key in proptest::sample::select(vec!["ports", "$setElementOrder/ports", "$deleteFromPrimitiveList/ports", "$retainKeys", "$patch", "selector"]),
            port in 0i64..3,
            directive in proptest::sample::select(vec!["delete", "replace", "merge", "x"]),
        ) {
            let svc = json!({"spec": {"ports": [{"port": 1}, {"port": 2, "name": "b"}], "selector": {"a": "b"}}});
            let variants = [
                json!({"spec": {key: [{"port": port}, {"$patch": directive, "port": port}]}}),
                json!({"spec": {key: directive}}),
                json!({"spec": {key: [port, null, "s"]}}),
                json!({"spec": {key: {"port": port}}}),
            ];
            for v in variants {
                let _ = apply_patch("Service", PatchType::Strategic, &svc, v.to_string().as_bytes());
            }
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchType::Strategic)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            None
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }

    #[test]
    fn json_patch() {
        let svc = json!({"metadata": {"name": "web", "labels": {"a": "b"}}, "spec": {"ports": [{"port": 80}]}});
        let p = br#"[{"op":"replace","path":"/spec/ports/0/port","value":81},{"op":"add","path":"/metadata/labels/c","value":"d"},{"op":"remove","path":"/metadata/labels/a"}]"#;
        let out = apply_patch("Service", PatchType::Json, &svc, p).expect("patch");
        assert_eq!(
            out,
            json!({"metadata": {"name": "web", "labels": {"c": "d"}}, "spec": {"ports": [{"port": 81}]}})
        );
        let e = apply_patch(
            "Service",
            PatchType::Json,
            &svc,
            br#"[{"op":"test","path":"/metadata/name","value":"x"}]"#,
        )
        .expect_err("test");
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(
            e.message,
            "the server rejected our request due to an error in our request"
        );
        assert_eq!(
            e.details.as_ref().map(|d| d["causes"][0]["reason"].clone()),
            Some(json!("UnexpectedServerResponse"))
        );
        let e = apply_patch(
            "Service",
            PatchType::Json,
            &svc,
            br#"[{"op":"remove","path":"/spec/nope"}]"#,
        )
        .expect_err("missing");
        assert_eq!(e.code, 422);
        for bad in [
            &b"{"[..],
            b"{}",
            br#"[{"op":"frob","path":"/a"}]"#,
            br#"[{"path":"/a"}]"#,
        ] {
            assert_eq!(
                apply_patch("Service", PatchType::Json, &svc, bad)
                    .expect_err("bad")
                    .code,
                400
            );
        }
    }

    #[test]
    fn merge_patch() {
        let svc = json!({"metadata": {"name": "web", "labels": {"a": "b", "tier": "x"}}, "spec": {"ports": [{"port": 80}, {"port": 443}]}});
        let out = apply_patch(
            "Service",
            PatchType::Merge,
            &svc,
            br#"{"metadata":{"labels":{"tier":null,"c":"d"}},"spec":{"ports":[{"port":81}]}}"#,
        )
        .expect("patch");
        assert_eq!(
            out,
            json!({"metadata": {"name": "web", "labels": {"a": "b", "c": "d"}}, "spec": {"ports": [{"port": 81}]}})
        );
        for bad in [&b"{"[..], b"[1]", b"null"] {
            let e = apply_patch("Service", PatchType::Merge, &svc, bad).expect_err("bad");
            assert_eq!((e.code, e.message.as_str()), (400, "Invalid JSON Patch"));
        }
    }

    /// The two patches kubectl 1.33 sent for client-side apply (kubectl-compat.md §9.6).
    #[test]
    fn captured_kubectl_apply_patches() {
        let svc = json!({
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}, "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "old"}},
            "spec": {"ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}, {"port": 443, "targetPort": 443, "protocol": "TCP"}],
                     "clusterIP": "10.96.0.10", "selector": {"app": "web"}}});
        let patch = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"new\":1}\n"}, "labels": {"tier": null}},
            "spec": {"$setElementOrder/ports": [{"port": 80}], "ports": [{"port": 80, "targetPort": 8080}, {"$patch": "delete", "port": 443}]}});
        assert_eq!(
            smp("Service", svc, patch),
            json!({"metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"new\":1}\n"}},
                   "spec": {"ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}], "clusterIP": "10.96.0.10", "selector": {"app": "web"}}})
        );
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "nginx:1", "ports": [{"containerPort": 80}]}, {"name": "b", "image": "busybox"}]}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}], "containers": [{"image": "nginx:2", "name": "a"}, {"$patch": "delete", "name": "b"}]}});
        assert_eq!(
            smp("Pod", pod, patch),
            json!({"spec": {"containers": [{"name": "a", "image": "nginx:2", "ports": [{"containerPort": 80}]}]}})
        );
    }

    #[test]
    fn merge_lists_by_key() {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        // Patch items come in patch order; server-only items are interleaved by their live position
        // (`mergeSortedSlice`), so a new key that precedes a merged one goes first.
        assert_eq!(
            smp(
                "Service",
                svc.clone(),
                json!({"spec": {"ports": [{"port": 8080, "name": "alt"}, {"port": 443, "targetPort": 8443}]}})
            ),
            json!({"spec": {"ports": [{"port": 8080, "name": "alt"}, {"port": 80, "name": "http"}, {"port": 443, "name": "https", "targetPort": 8443}]}})
        );
        // Upstream quirk: the SMP key is `port` only, so 53/UDP merges into 53/TCP.
        let dns = json!({"spec": {"ports": [{"port": 53, "protocol": "TCP"}]}});
        assert_eq!(
            smp(
                "Service",
                dns,
                json!({"spec": {"ports": [{"port": 53, "protocol": "UDP"}]}})
            ),
            json!({"spec": {"ports": [{"port": 53, "protocol": "UDP"}]}})
        );
        // $patch: replace on a list.
        assert_eq!(
            smp(
                "Service",
                svc.clone(),
                json!({"spec": {"ports": [{"port": 9}, {"$patch": "replace"}]}})
            ),
            json!({"spec": {"ports": [{"port": 9}]}})
        );
        // Atomic lists are replaced.
        assert_eq!(
            smp(
                "Service",
                json!({"spec": {"externalIPs": ["1.1.1.1"], "clusterIPs": ["10.0.0.1"]}}),
                json!({"spec": {"externalIPs": ["2.2.2.2"]}})
            ),
            json!({"spec": {"externalIPs": ["2.2.2.2"], "clusterIPs": ["10.0.0.1"]}})
        );
        // Conditions merge by type, env by name, ownerReferences by uid.
        let node = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}]}});
        assert_eq!(
            smp(
                "Node",
                node,
                json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
            ),
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}]}})
        );
        let pod = json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]}, "spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]}});
        assert_eq!(
            smp(
                "Pod",
                pod,
                json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b"}]}, "spec": {"containers": [{"name": "c", "env": [{"name": "B", "value": null, "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}]}})
            ),
            json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b"}, {"uid": "1", "name": "a"}]},
                   "spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}]}})
        );
        // Missing merge key is an error.
        let e = smp_err(
            "Service",
            json!({"spec": {"ports": [{"port": 80}]}}),
            r#"{"spec":{"ports":[{"name":"x"}]}}"#,
        );
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "map: map[name:x] does not contain declared merge key: port"
        );
        // EndpointSlice endpoints and Endpoints subsets are atomic.
        assert_eq!(
            smp(
                "EndpointSlice",
                json!({"endpoints": [{"addresses": ["10.0.0.1"]}]}),
                json!({"endpoints": [{"addresses": ["10.0.0.2"]}]})
            ),
            json!({"endpoints": [{"addresses": ["10.0.0.2"]}]})
        );
    }

    #[test]
    fn primitive_lists() {
        let ns = json!({"metadata": {"finalizers": ["a", "b"]}});
        // Finalizers are a merged set.
        assert_eq!(
            smp(
                "Namespace",
                ns.clone(),
                json!({"metadata": {"finalizers": ["c", "a"]}})
            ),
            json!({"metadata": {"finalizers": ["c", "a", "b"]}})
        );
        assert_eq!(
            smp(
                "Namespace",
                ns.clone(),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
            ),
            json!({"metadata": {"finalizers": ["b"]}})
        );
        assert_eq!(
            smp(
                "Namespace",
                ns.clone(),
                json!({"metadata": {"$setElementOrder/finalizers": ["b", "c"], "finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]}})
            ),
            json!({"metadata": {"finalizers": ["b", "c"]}})
        );
        assert_eq!(
            smp(
                "Namespace",
                json!({}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
            ),
            json!({"metadata": {}})
        );
        // Namespace spec.finalizers is atomic.
        assert_eq!(
            smp(
                "Namespace",
                json!({"spec": {"finalizers": ["kubernetes"]}}),
                json!({"spec": {"finalizers": ["x"]}})
            ),
            json!({"spec": {"finalizers": ["x"]}})
        );
    }

    #[test]
    fn set_element_order() {
        let svc = json!({"spec": {"ports": [{"port": 1}, {"port": 2}, {"port": 3}]}});
        // Reorder only.
        assert_eq!(
            smp(
                "Service",
                svc.clone(),
                json!({"spec": {"$setElementOrder/ports": [{"port": 3}, {"port": 1}, {"port": 2}]}})
            ),
            json!({"spec": {"ports": [{"port": 3}, {"port": 1}, {"port": 2}]}})
        );
        // Add in the middle.
        assert_eq!(
            smp(
                "Service",
                svc.clone(),
                json!({"spec": {"$setElementOrder/ports": [{"port": 1}, {"port": 9}, {"port": 2}, {"port": 3}], "ports": [{"port": 9}]}})
            ),
            json!({"spec": {"ports": [{"port": 1}, {"port": 9}, {"port": 2}, {"port": 3}]}})
        );
        // Server-only items are interleaved by their live position (upstream `mergeSortedSlice`).
        assert_eq!(
            smp(
                "Service",
                svc.clone(),
                json!({"spec": {"$setElementOrder/ports": [{"port": 3}, {"port": 1}], "ports": [{"port": 3, "name": "c"}]}})
            ),
            json!({"spec": {"ports": [{"port": 2}, {"port": 3, "name": "c"}, {"port": 1}]}})
        );
        // A list absent from the original is taken from the patch.
        assert_eq!(
            smp(
                "Service",
                json!({"spec": {}}),
                json!({"spec": {"$setElementOrder/ports": [{"port": 2}, {"port": 1}], "ports": [{"port": 2}, {"port": 1}]}})
            ),
            json!({"spec": {"ports": [{"port": 2}, {"port": 1}]}})
        );
        let e = smp_err(
            "Service",
            svc,
            r#"{"spec":{"$setElementOrder/ports":[{"port":1}],"ports":[{"port":2}]}}"#,
        );
        assert_eq!(e.code, 400);
        assert!(
            e.message.starts_with("The order in patch list:"),
            "{}",
            e.message
        );
    }

    /// Cases ported from upstream's `patch_test.go` ordering tests (current + three-way patch →
    /// result), with its `mergingList` (key `name`) mapped to Pod containers (`value` → `image`,
    /// `other` → `workingDir`) and `mergingIntList` to Node `spec.podCIDRs`.
    #[test]
    fn upstream_ordering_vectors() {
        fn c(items: &[(&str, Option<&str>, Option<&str>)]) -> Value {
            let list: Vec<Value> = items
                .iter()
                .map(|(n, v, o)| {
                    let mut m = json!({"name": n});
                    if let Some(v) = v {
                        m["image"] = json!(v);
                    }
                    if let Some(o) = o {
                        m["workingDir"] = json!(o);
                    }
                    m
                })
                .collect();
            json!({"spec": {"containers": list}})
        }
        fn order(names: &[&str]) -> Value {
            Value::Array(names.iter().map(|n| json!({"name": n})).collect())
        }
        // "set elements order in a list with server-only items" (1, 2 and 3).
        let current = c(&[
            ("1", None, Some("a")),
            ("3", Some("3"), None),
            ("4", Some("4"), None),
            ("2", Some("2"), None),
            ("9", None, None),
        ]);
        let patch = json!({"spec": {"$setElementOrder/containers": order(&["4", "2", "3", "1"])}});
        let want = c(&[
            ("4", Some("4"), None),
            ("2", Some("2"), None),
            ("3", Some("3"), None),
            ("1", None, Some("a")),
            ("9", None, None),
        ]);
        assert_eq!(smp("Pod", current, patch), want);
        let current = c(&[
            ("1", None, Some("a")),
            ("2", Some("2"), None),
            ("9", None, None),
            ("3", Some("3"), None),
            ("4", Some("4"), None),
        ]);
        let patch = json!({"spec": {"$setElementOrder/containers": order(&["2", "1", "4", "3"])}});
        let want = c(&[
            ("2", Some("2"), None),
            ("1", None, Some("a")),
            ("9", None, None),
            ("4", Some("4"), None),
            ("3", Some("3"), None),
        ]);
        assert_eq!(smp("Pod", current, patch.clone()), want);
        let current = c(&[
            ("1", None, Some("a")),
            ("2", Some("2"), None),
            ("7", None, None),
            ("9", None, None),
            ("8", None, None),
            ("3", Some("3"), None),
            ("4", Some("4"), None),
        ]);
        let want = c(&[
            ("2", Some("2"), None),
            ("1", None, Some("a")),
            ("7", None, None),
            ("9", None, None),
            ("8", None, None),
            ("4", Some("4"), None),
            ("3", Some("3"), None),
        ]);
        assert_eq!(smp("Pod", current, patch), want);
        // "add and delete an item in a list and preserve order".
        let current = c(&[
            ("1", None, Some("a")),
            ("2", Some("2"), Some("b")),
            ("3", Some("3"), None),
        ]);
        let patch = json!({"spec": {"$setElementOrder/containers": order(&["4", "2", "1"]),
                                    "containers": [{"name": "4", "image": "4"}, {"name": "3", "$patch": "delete"}]}});
        let want = c(&[
            ("4", Some("4"), None),
            ("2", Some("2"), Some("b")),
            ("1", None, Some("a")),
        ]);
        assert_eq!(smp("Pod", current, patch), want);
        // "set elements order in a int list with server-only items" (1 and 2).
        let cidrs = |xs: &[&str]| json!({"spec": {"podCIDRs": xs}});
        let patch = json!({"spec": {"$setElementOrder/podCIDRs": ["4", "2", "3", "1"]}});
        assert_eq!(
            smp("Node", cidrs(&["1", "3", "4", "2", "9"]), patch),
            cidrs(&["4", "2", "3", "1", "9"])
        );
        let patch = json!({"spec": {"$setElementOrder/podCIDRs": ["2", "1", "4", "3"]}});
        assert_eq!(
            smp("Node", cidrs(&["1", "2", "9", "3", "4"]), patch),
            cidrs(&["2", "1", "9", "4", "3"])
        );
    }

    /// More `patch_test.go` cases (original + two-way patch → modified), mapped as above, with
    /// `nonMergingIntList` as Service `spec.externalIPs` and `retainKeysMergingList` as volumes.
    #[test]
    fn upstream_list_vectors() {
        let cidrs = |xs: &[&str]| json!({"spec": {"podCIDRs": xs}});
        // $deleteFromPrimitiveList of a missing item, on a missing list, with and without merge strategy.
        assert_eq!(
            smp(
                "Node",
                cidrs(&["1", "2"]),
                json!({"spec": {"$deleteFromPrimitiveList/podCIDRs": ["3"]}})
            ),
            cidrs(&["1", "2"])
        );
        assert_eq!(
            smp(
                "Node",
                json!({"spec": {"taints": []}}),
                json!({"spec": {"$deleteFromPrimitiveList/podCIDRs": ["3"]}})
            ),
            json!({"spec": {"taints": []}})
        );
        assert_eq!(
            smp(
                "Node",
                cidrs(&["1", "2", "3"]),
                json!({"spec": {"$deleteFromPrimitiveList/podCIDRs": ["2"]}})
            ),
            cidrs(&["1", "3"])
        );
        assert_eq!(
            smp(
                "Service",
                json!({"spec": {"externalIPs": ["1", "2", "3"]}}),
                json!({"spec": {"$deleteFromPrimitiveList/externalIPs": ["2"]}})
            ),
            json!({"spec": {"externalIPs": ["1", "3"]}})
        );
        // Preserve the order from the patch in a merging list (1 and 2) and a merging int list.
        let containers = |xs: Value| json!({"spec": {"containers": xs}});
        assert_eq!(
            smp(
                "Pod",
                containers(json!([{"name": "1"}, {"name": "2", "image": "b"}, {"name": "3"}])),
                containers(
                    json!([{"name": "3", "image": "c"}, {"name": "1", "image": "a"}, {"name": "2", "workingDir": "x"}])
                )
            ),
            containers(
                json!([{"name": "3", "image": "c"}, {"name": "1", "image": "a"}, {"name": "2", "image": "b", "workingDir": "x"}])
            )
        );
        assert_eq!(
            smp(
                "Pod",
                containers(json!([{"name": "1"}, {"name": "2", "image": "b"}, {"name": "3"}])),
                containers(json!([{"name": "3", "image": "c"}, {"name": "1", "image": "a"}]))
            ),
            containers(
                json!([{"name": "2", "image": "b"}, {"name": "3", "image": "c"}, {"name": "1", "image": "a"}])
            )
        );
        assert_eq!(
            smp("Node", cidrs(&["1", "2", "3"]), cidrs(&["3", "1", "2"])),
            cidrs(&["3", "1", "2"])
        );
        // retainKeys list without a directive merges as usual.
        let volumes = |xs: Value| json!({"spec": {"volumes": xs}});
        assert_eq!(
            smp(
                "Pod",
                volumes(json!([{"name": "bar"}, {"name": "foo", "emptyDir": {}}])),
                volumes(json!([{"name": "foo", "emptyDir": null}]))
            ),
            volumes(json!([{"name": "bar"}, {"name": "foo"}]))
        );
    }

    #[test]
    fn map_directives_and_nulls() {
        let svc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"selector": {"app": "x", "tier": "y"}, "type": "ClusterIP"}});
        assert_eq!(
            smp(
                "Service",
                svc.clone(),
                json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}})
            ),
            json!({"metadata": {"labels": {"c": "3"}}, "spec": {"selector": {"app": "x", "tier": "y"}, "type": "ClusterIP"}})
        );
        assert_eq!(
            smp(
                "Service",
                svc.clone(),
                json!({"spec": {"$patch": "delete"}})
            ),
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {}})
        );
        // Selector maps merge per key under SMP; null deletes.
        assert_eq!(
            smp(
                "Service",
                svc.clone(),
                json!({"spec": {"selector": {"tier": null, "new": "z"}, "type": null}})
            ),
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"selector": {"app": "x", "new": "z"}}})
        );
        // Nulls for absent keys are ignored, nested nulls in new values discarded.
        assert_eq!(
            smp(
                "Service",
                json!({"spec": {}}),
                json!({"spec": {"missing": null, "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": null}}}})
            ),
            json!({"spec": {"sessionAffinityConfig": {"clientIP": {}}}})
        );
        let e = smp_err("Service", svc.clone(), r#"{"spec":{"$patch":"frob"}}"#);
        assert_eq!(e.message, "unknown patch type: frob in map: map[]");
        assert_eq!(smp_err("Service", svc.clone(), "{").code, 400);
        assert_eq!(smp_err("Service", svc, "[1]").code, 400);
    }

    #[test]
    fn directives_in_new_values_are_dropped() {
        assert_eq!(
            smp(
                "Service",
                json!({"spec": {}}),
                json!({"spec": {"ports": [{"port": 80}, {"$patch": "delete", "port": 443}]}})
            ),
            json!({"spec": {"ports": [{"port": 80}]}})
        );
        assert_eq!(
            smp(
                "Service",
                json!({"metadata": {}}),
                json!({"metadata": {"labels": {"$patch": "replace", "a": "b"}}})
            ),
            json!({"metadata": {"labels": {"a": "b"}}})
        );
    }

    #[test]
    fn retain_keys_on_volumes() {
        let pod = json!({"spec": {"volumes": [{"name": "v", "hostPath": {"path": "/a"}}, {"name": "w", "emptyDir": {}}]}});
        let patch = json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}, "$retainKeys": ["emptyDir", "name"]}]}});
        assert_eq!(
            smp("Pod", pod.clone(), patch),
            json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}]}})
        );
        assert_eq!(
            smp_err(
                "Pod",
                pod,
                r#"{"spec":{"volumes":[{"name":"v","$retainKeys":"x"}]}}"#
            )
            .message,
            "invalid patch format of retainKeys"
        );
    }

    #[test]
    fn type_changes_and_unknown_fields() {
        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        assert_eq!(
            smp(
                "Service",
                svc.clone(),
                json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}]}})
            ),
            json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}]}})
        );
        assert_eq!(
            smp(
                "Service",
                json!({"spec": {"foo": [1, 2]}}),
                json!({"spec": {"foo": [3]}})
            ),
            json!({"spec": {"foo": [3]}})
        );
        assert_eq!(smp("Service", svc.clone(), json!({})), svc);
        assert_eq!(smp("Service", svc.clone(), json!(null)), svc);
    }
}
