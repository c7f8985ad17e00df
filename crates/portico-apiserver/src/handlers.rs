//! The resource handlers: get, list, watch, create, update, patch, delete and
//! deletecollection for every served resource, with upstream's storage semantics
//! (resourceVersion checks, no-op writes, dry runs, finalizers, graceful pod deletion,
//! namespace termination) on top of the store and the watch caches.
//!
//! Must not: know per-kind strategy beyond `object::apply_kind_defaults`; Service logic comes
//! through `ObjectHooks`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use portico_core::selector::{FieldSelector, LabelSelector};
use portico_store::{Compare, Op, Revision, Store};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::codec::{self, Output};
use crate::error::ApiError;
use crate::glue::{self, PatchKind};
use crate::hooks::{ObjectHooks, Prepared, WriteContext};
use crate::keys;
use crate::object::{self, meta_mut};
use crate::resources::{self, ResourceInfo};
use crate::watchcache::{CacheEvent, CachedObject, EventType, WatchCache};

/// How many times a write is retried when it lost a race (object or hook compare).
const RETRIES: usize = 8;

/// Shared state of the API handlers.
pub struct Api {
    pub store: Arc<dyn Store>,
    pub caches: HashMap<&'static str, Arc<WatchCache>>,
    pub hooks: HashMap<&'static str, Arc<dyn ObjectHooks>>,
    /// True while `service::ServiceHooks` is not wired: apply basic Service defaults here.
    pub service_fallback: bool,
    pub namespace_cleanup: mpsc::UnboundedSender<String>,
}

/// What a request addresses.
#[derive(Debug, Clone)]
pub enum Target {
    Collection {
        info: &'static ResourceInfo,
        ns: Option<String>,
    },
    Object {
        info: &'static ResourceInfo,
        ns: Option<String>,
        name: String,
        sub: Option<String>,
    },
}

impl Target {
    pub fn info(&self) -> &'static ResourceInfo {
        match self {
            Target::Collection { info, .. } | Target::Object { info, .. } => info,
        }
    }
}

/// Parses `/api/v1/...` and `/apis/{group}/{version}/...`. `None` = not a resource path.
pub fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |p: &str| resources::find(group, version, p);
    match rest {
        [plural] => Some(Target::Collection {
            info: find(plural)?,
            ns: None,
        }),
        ["namespaces", ns, sub] if group.is_empty() && (*sub == "status" || *sub == "finalize") => {
            Some(Target::Object {
                info: find("namespaces")?,
                ns: None,
                name: ns.to_string(),
                sub: Some(sub.to_string()),
            })
        }
        ["namespaces", ns, plural] => {
            let info = find(plural)?;
            info.namespaced.then(|| Target::Collection {
                info,
                ns: Some(ns.to_string()),
            })
        }
        ["namespaces", ns, plural, name] => {
            let info = find(plural)?;
            info.namespaced.then(|| Target::Object {
                info,
                ns: Some(ns.to_string()),
                name: name.to_string(),
                sub: None,
            })
        }
        ["namespaces", ns, plural, name, sub] => {
            let info = find(plural)?;
            info.namespaced.then(|| Target::Object {
                info,
                ns: Some(ns.to_string()),
                name: name.to_string(),
                sub: Some(sub.to_string()),
            })
        }
        [plural, name] => {
            let info = find(plural)?;
            (!info.namespaced).then(|| Target::Object {
                info,
                ns: None,
                name: name.to_string(),
                sub: None,
            })
        }
        [plural, name, sub] => {
            let info = find(plural)?;
            (!info.namespaced).then(|| Target::Object {
                info,
                ns: None,
                name: name.to_string(),
                sub: Some(sub.to_string()),
            })
        }
        _ => None,
    }
}

/// The query string as key → last value.
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Result<Query, ApiError> {
        let mut m = HashMap::new();
        if let Some(q) = q {
            for (k, v) in form_pairs(q) {
                m.insert(k, v);
            }
        }
        Ok(Query(m))
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.as_str())
    }
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true") | Some("1"))
    }
}

/// `application/x-www-form-urlencoded` pairs.
fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Selectors and output options of a list or watch.
struct Filter {
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    info: &'static ResourceInfo,
}

impl Filter {
    fn new(info: &'static ResourceInfo, ns: Option<String>, q: &Query) -> Result<Filter, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        for f in fields.fields() {
            if !info.supports_field(f) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        Ok(Filter {
            ns,
            labels,
            fields,
            info,
        })
    }
    fn is_everything(&self) -> bool {
        self.ns.is_none() && self.labels.is_everything() && self.fields.is_empty()
    }
    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.ns
            && object::meta_str(obj, "namespace") != Some(ns.as_str())
        {
            return false;
        }
        if !self.labels.is_everything() && !self.labels.matches(&object::labels(obj)) {
            return false;
        }
        self.fields.is_empty()
            || self
                .fields
                .matches(&|f| resources::field_value(self.info, obj, f))
    }
    /// `matches` from stored metadata alone; only for filters without field selectors.
    fn matches_meta(&self, meta: &crate::watchcache::StoredMeta) -> bool {
        debug_assert!(self.fields.is_empty());
        if let Some(ns) = &self.ns {
            let have = meta.namespace();
            if have.is_empty() || have != *ns {
                return false;
            }
        }
        self.labels.is_everything() || self.labels.matches(&meta.labels())
    }
    /// `matches` on the compact form (the same answers, from the pre-extracted fields).
    fn matches_cached(&self, obj: &CachedObject) -> bool {
        if let Some(ns) = &self.ns
            && (obj.namespace().is_empty() || obj.namespace() != ns.as_str())
        {
            return false;
        }
        if !self.labels.is_everything() && !self.labels.matches(&obj.labels()) {
            return false;
        }
        self.fields.is_empty() || self.fields.matches(&|f| obj.field(f))
    }
}

fn include_object(q: &Query) -> &str {
    match q.get("includeObject") {
        Some("None") => "None",
        Some("Object") => "Object",
        _ => "Metadata",
    }
}

/// `dryRun` as upstream's `ValidateDryRun`: only `All`; anything else is 422 Invalid against
/// the request's options kind (`CreateOptions`, `UpdateOptions`, `PatchOptions`, `DeleteOptions`).
fn dry_run(q: &Query, options_kind: &'static str) -> Result<bool, ApiError> {
    match q.get("dryRun") {
        None | Some("") => Ok(false),
        Some(value) => dry_run_values(&[value], options_kind),
    }
}

fn dry_run_values(values: &[&str], options_kind: &'static str) -> Result<bool, ApiError> {
    use portico_core::field::{ErrorType, FieldError};
    if values.iter().all(|v| *v == "All") {
        return Ok(!values.is_empty());
    }
    // Go prints the rejected `[]string` with `%#v`.
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    let err = FieldError::new(
        ErrorType::NotSupported,
        "dryRun",
        Some(format!("[]string{{{}}}", quoted.join(", "))),
        "supported values: \"All\"",
    );
    Err(options_invalid(options_kind, &[err]))
}

/// 422 for bad request options, named as upstream names them (`CreateOptions.meta.k8s.io ""`).
fn options_invalid(
    options_kind: &'static str,
    errs: &[portico_core::field::FieldError],
) -> ApiError {
    let options = crate::error::Resource {
        group: "meta.k8s.io",
        plural: "",
        kind: options_kind,
    };
    ApiError::invalid(options, "", errs)
}

fn parse_rv(s: &str) -> Result<Revision, ApiError> {
    s.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

/// Store page size for a LIST without `limit`.
const UNLIMITED_LIST_PAGE: usize = 1000;

/// The items of a list response as they are collected: for JSON, the response itself up to
/// its items, each item's encoding appended as found (no `Value` per item, no second copy);
/// for tables, decoded values (each row needs one).
struct ListItems {
    body: Vec<u8>,
    values: Option<Vec<Value>>,
    count: usize,
}

impl ListItems {
    /// Starts `{"apiVersion":…,"items":[` (keys in the order `serde_json` gives a `Value`).
    fn new(info: &ResourceInfo, output: Output) -> Self {
        let mut body = Vec::new();
        if output == Output::Json {
            body.extend_from_slice(b"{\"apiVersion\":");
            json_string(&mut body, &info.api_version());
            body.extend_from_slice(b",\"items\":[");
        }
        ListItems {
            body,
            values: (output == Output::Table).then(Vec::new),
            count: 0,
        }
    }

    fn reserve(&mut self, bytes: usize) {
        if self.values.is_none() {
            self.body.reserve(bytes);
        }
    }

    fn push(&mut self, json: &[u8]) -> Result<(), ApiError> {
        match &mut self.values {
            Some(values) => values.push(
                serde_json::from_slice(json)
                    .map_err(|e| ApiError::internal(format!("cached object is not JSON: {e}")))?,
            ),
            None => {
                if self.count > 0 {
                    self.body.push(b',');
                }
                self.body.extend_from_slice(json);
            }
        }
        self.count += 1;
        Ok(())
    }
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Ends a JSON list response begun by `ListItems::new`: `],"kind":…,"metadata":{…}}`.
fn list_response(
    info: &ResourceInfo,
    rev: Revision,
    next: Option<&str>,
    mut body: Vec<u8>,
) -> Response {
    body.extend_from_slice(b"],\"kind\":");
    json_string(&mut body, &info.list_kind());
    body.extend_from_slice(b",\"metadata\":{");
    if let Some(c) = next {
        body.extend_from_slice(b"\"continue\":");
        json_string(&mut body, c);
        body.push(b',');
    }
    body.extend_from_slice(b"\"resourceVersion\":");
    json_string(&mut body, &rev.to_string());
    body.extend_from_slice(b"}}");
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn key_of(info: &ResourceInfo, ns: Option<&str>, name: &str) -> String {
    keys::object_key(info.plural, if info.namespaced { ns } else { None }, name)
}

impl Api {
    fn hooks(&self, info: &ResourceInfo) -> Arc<dyn ObjectHooks> {
        self.hooks
            .get(info.plural)
            .cloned()
            .unwrap_or_else(|| Arc::new(crate::hooks::NoHooks))
    }

    /// Entry point for resource paths.
    pub async fn serve(
        self: &Arc<Self>,
        method: &Method,
        target: Target,
        q: &Query,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let output = codec::negotiate(headers)?;
        let mut warnings = Vec::new();
        let resp = match (&target, method.as_str()) {
            (Target::Collection { info, ns }, "GET") => {
                if q.flag("watch") {
                    return self.watch(info, ns.clone(), q, output).await;
                }
                self.list(info, ns.clone(), q, output).await?
            }
            (Target::Collection { info, ns }, "POST") => {
                if info.namespaced && ns.is_none() {
                    return Err(ApiError::method_not_allowed(
                        "the server does not allow this method on the requested resource",
                    ));
                }
                let (code, obj) = self
                    .create_from_body(info, ns.as_deref(), q, headers, &body, &mut warnings)
                    .await?;
                codec::json(code, &obj)
            }
            (Target::Collection { info, ns }, "DELETE") => {
                self.delete_collection(info, ns.clone(), q, &body).await?
            }
            (
                Target::Object {
                    info,
                    ns,
                    name,
                    sub,
                },
                m,
            ) => {
                let sub = sub.as_deref();
                match sub {
                    None | Some("status") => {}
                    Some("finalize") if info.plural == "namespaces" && m == "PUT" => {}
                    Some(_) => {
                        return Err(ApiError::new(
                            404,
                            "NotFound",
                            "the server could not find the requested resource",
                        ));
                    }
                }
                if sub == Some("status") && !info.has_status {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ));
                }
                match m {
                    "GET" => {
                        let obj = self.get(info, ns.as_deref(), name).await?;
                        self.render_one(info, obj, output, q)
                    }
                    "PUT" => {
                        let (code, obj) = self
                            .put(
                                info,
                                ns.as_deref(),
                                name,
                                sub,
                                q,
                                headers,
                                &body,
                                &mut warnings,
                            )
                            .await?;
                        codec::json(code, &obj)
                    }
                    "PATCH" => {
                        let (code, obj) = self
                            .patch(
                                info,
                                ns.as_deref(),
                                name,
                                sub,
                                q,
                                headers,
                                &body,
                                &mut warnings,
                            )
                            .await?;
                        codec::json(code, &obj)
                    }
                    "DELETE" if sub.is_none() => {
                        let (code, obj) = self.delete(info, ns.as_deref(), name, q, &body).await?;
                        codec::json(code, &obj)
                    }
                    _ => {
                        return Err(ApiError::method_not_allowed(
                            "the server does not allow this method on the requested resource",
                        ));
                    }
                }
            }
            _ => {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
        };
        let mut resp = resp;
        for w in warnings {
            if let Ok(v) = HeaderValue::from_str(&format!("299 - {}", go_quote(&w))) {
                resp.headers_mut().append("warning", v);
            }
        }
        Ok(resp)
    }

    fn render_one(&self, info: &ResourceInfo, obj: Value, output: Output, q: &Query) -> Response {
        match output {
            Output::Json => codec::json(StatusCode::OK, &obj),
            Output::Table => {
                let mut t = glue::to_table(
                    info.kind,
                    std::slice::from_ref(&obj),
                    include_object(q),
                    jiff::Timestamp::now(),
                );
                if let Some(rv) = object::resource_version(&obj) {
                    t["metadata"] = json!({"resourceVersion": rv});
                }
                codec::json(StatusCode::OK, &t)
            }
        }
    }

    pub async fn get(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = key_of(info, ns, name);
        match self.store.get(&key).await? {
            Some(kv) => object::decode_stored(&kv),
            None => Err(ApiError::not_found(info.resource(), name)),
        }
    }

    // ---------------------------------------------------------------- list

    async fn list(
        &self,
        info: &'static ResourceInfo,
        ns: Option<String>,
        q: &Query,
        output: Output,
    ) -> Result<Response, ApiError> {
        let filter = Filter::new(info, ns.clone(), q)?;
        let prefix = keys::list_prefix(
            info.plural,
            if info.namespaced { ns.as_deref() } else { None },
        );
        let limit: usize = match q.get("limit") {
            None | Some("") => 0,
            Some(l) => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?
                .max(0) as usize,
        };
        let rv = q.get("resourceVersion").filter(|s| !s.is_empty());
        let rv_match = q.get("resourceVersionMatch").filter(|s| !s.is_empty());
        let cont = q.get("continue").filter(|s| !s.is_empty());
        if cont.is_some() && rv.is_some_and(|r| r != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        if let Some(m) = rv_match {
            if m != "NotOlderThan" && m != "Exact" {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
            if rv.is_none() {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
        }

        // Matching objects in key order, each already encoded with its resourceVersion:
        // the response is their bytes joined, never a `Value` tree of the whole list.
        let mut items = ListItems::new(info, output);
        let mut next: Option<String> = None;
        let list_rev: Revision;
        let any_version = rv == Some("0") && cont.is_none() && rv_match != Some("Exact");
        // A consistent read may come from the cache when it has applied the store's current
        // revision (as upstream's consistent reads from cache, without a wait).
        let current_in_cache = !any_version
            && rv.is_none()
            && cont.is_none()
            && limit == 0
            && self.cache(info)?.revision() >= self.store.current_revision().await?;
        if any_version || current_in_cache {
            // Served from the watch cache, all at once.
            let cache = self.cache(info)?;
            let (objs, rev) = cache.snapshot(&prefix);
            list_rev = rev.max(1);
            items.reserve(objs.iter().map(|o| o.json().len() + 1).sum());
            for obj in objs.iter().filter(|o| filter.matches_cached(o)) {
                items.push(obj.json())?;
            }
        } else {
            let (mut start, mut at) = match cont {
                Some(tok) => {
                    let (r, s) = decode_continue(tok)?;
                    (Some(format!("{prefix}{s}")), Some(r))
                }
                None => (None, None),
            };
            if let Some(rv) = rv.filter(|r| *r != "0") {
                let r = parse_rv(rv)?;
                if rv_match == Some("Exact") {
                    at = Some(r);
                } else {
                    let cur = self.store.current_revision().await?;
                    if r > cur {
                        return Err(ApiError::new(
                            504,
                            "Timeout",
                            format!("Too large resource version: {r}, current: {cur}"),
                        )
                        .with_retry());
                    }
                }
            }
            // Without a limit the store is still read in pages (all at the first page's
            // revision), so only one page of stored values is held while encoding.
            let page_size = if limit == 0 {
                UNLIMITED_LIST_PAGE
            } else {
                limit.max(50)
            };
            'pages: loop {
                let page = self
                    .store
                    .list(&prefix, start.as_deref(), page_size, at)
                    .await
                    .map_err(|e| continue_error(e, cont.is_some()))?;
                at = Some(page.revision);
                let n = page.kvs.len();
                let more = page.more;
                start = page.kvs.last().map(|kv| kv.key.clone());
                items.reserve(page.kvs.iter().map(|kv| kv.value.len() + 40).sum());
                let mut scratch = Vec::new();
                // Each stored value is dropped as soon as it is encoded.
                for (i, kv) in page.kvs.into_iter().enumerate() {
                    let matched = if filter.fields.is_empty() {
                        // Only metadata is decoded; the rest is copied as stored.
                        scratch.clear();
                        let meta = crate::watchcache::encode_stored(
                            &kv.value,
                            kv.mod_revision,
                            &mut scratch,
                        )?;
                        filter.matches_meta(&meta) && {
                            items.push(&scratch)?;
                            true
                        }
                    } else {
                        let obj = CachedObject::from_stored(info, &kv)?;
                        filter.matches_cached(&obj) && {
                            items.push(obj.json())?;
                            true
                        }
                    };
                    if matched && limit > 0 && items.count == limit {
                        if i + 1 < n || more {
                            next = Some(encode_continue(page.revision, &kv.key[prefix.len()..]));
                        }
                        break 'pages;
                    }
                }
                if !more || n == 0 {
                    break;
                }
            }
            list_rev = at.unwrap_or(0);
        }
        match items.values {
            None => Ok(list_response(info, list_rev, next.as_deref(), items.body)),
            Some(values) => {
                let mut meta = json!({"resourceVersion": list_rev.to_string()});
                if let Some(c) = &next {
                    meta["continue"] = json!(c);
                }
                let mut t = glue::to_table(
                    info.kind,
                    &values,
                    include_object(q),
                    jiff::Timestamp::now(),
                );
                t["metadata"] = meta;
                Ok(codec::json(StatusCode::OK, &t))
            }
        }
    }

    fn cache(&self, info: &ResourceInfo) -> Result<&Arc<WatchCache>, ApiError> {
        self.caches
            .get(info.plural)
            .ok_or_else(|| ApiError::internal(format!("no watch cache for {}", info.plural)))
    }

    // ---------------------------------------------------------------- watch

    async fn watch(
        &self,
        info: &'static ResourceInfo,
        ns: Option<String>,
        q: &Query,
        output: Output,
    ) -> Result<Response, ApiError> {
        let filter = Filter::new(info, ns.clone(), q)?;
        let cache = self.cache(info)?.clone();
        let prefix = keys::list_prefix(
            info.plural,
            if info.namespaced { ns.as_deref() } else { None },
        );
        let rv = q.get("resourceVersion").filter(|s| !s.is_empty());
        let send_initial = match q.get("sendInitialEvents") {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        };
        if send_initial.is_some() && q.get("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::invalid_simple(
                "ListOptions.meta.k8s.io",
                "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        let after = match rv {
            None => None,
            Some("0") => None,
            Some(r) => Some(parse_rv(r)?),
        };
        let initial = match send_initial {
            Some(b) => b,
            None => after.is_none(),
        };
        let sub = cache.subscribe(
            if initial { None } else { after },
            initial.then_some(prefix.as_str()),
        )?;
        let bookmarks = q.flag("allowWatchBookmarks");
        let timeout = match q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()) {
            Some(t) if t > 0 => Duration::from_secs(t),
            _ => Duration::from_secs(1800 + rand::random::<u64>() % 1800),
        };
        let include = include_object(q).to_string();
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let start_rev = after.unwrap_or(0).max(sub.revision);
        tokio::spawn(async move {
            let mut w = Watcher {
                filter,
                output,
                include,
                first_table: true,
                tx,
            };
            let _ = w
                .run(
                    sub,
                    start_rev,
                    send_initial == Some(true),
                    bookmarks,
                    timeout,
                    cache,
                )
                .await;
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
        });
        let mut resp = Response::new(Body::from_stream(stream));
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        Ok(resp)
    }

    // ---------------------------------------------------------------- writes

    /// Decodes and checks a create/update body; returns it with apiVersion/kind filled.
    fn decode_write_body(
        &self,
        info: &ResourceInfo,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
        warnings: &mut Vec<String>,
        patch: bool,
    ) -> Result<Value, ApiError> {
        let ct = codec::content_type(headers);
        let mut v = codec::decode_body(&ct, body)?;
        if ct != "application/vnd.kubernetes.protobuf" {
            // JSON bodies are checked as sent, without a copy.
            let raw = if ct.contains("yaml") {
                std::borrow::Cow::Owned(serde_json::to_vec(&v).unwrap_or_default())
            } else {
                std::borrow::Cow::Borrowed(body)
            };
            self.check_fields(info, q, &raw, warnings, patch)?;
        }
        object::check_type(info, &mut v)?;
        Ok(v)
    }

    /// fieldValidation: Strict → error, Warn → warnings, Ignore → nothing.
    fn check_fields(
        &self,
        info: &ResourceInfo,
        q: &Query,
        raw: &[u8],
        warnings: &mut Vec<String>,
        patch: bool,
    ) -> Result<(), ApiError> {
        let mode = q.get("fieldValidation").unwrap_or("Warn");
        if mode == "Ignore" {
            return Ok(());
        }
        if mode != "Strict" && mode != "Warn" {
            return Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {mode:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            )));
        }
        let problems = match glue::unknown_fields(info.kind, raw) {
            Ok(p) => p,
            Err(e) => vec![e],
        };
        if problems.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = problems
            .iter()
            .map(|p| {
                if p.starts_with("unknown field")
                    || p.starts_with("duplicate field")
                    || p.contains(' ')
                {
                    p.clone()
                } else {
                    format!("unknown field {p:?}")
                }
            })
            .collect();
        if mode == "Warn" {
            warnings.extend(texts);
            return Ok(());
        }
        let joined = texts.join(", ");
        if patch {
            let mut e = ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} \"\" is invalid: patch: Invalid value: \"...\": strict decoding error: {joined}",
                    info.resource().qualified_kind()
                ),
            );
            e.details = Some(
                json!({"kind": info.kind, "group": info.group, "causes": [{"reason": "FieldValueInvalid", "message": format!("Invalid value: \"...\": strict decoding error: {joined}"), "field": "patch"}]}),
            );
            return Err(e);
        }
        Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {joined}",
            info.kind, info.version, info.kind
        )))
    }

    async fn create_from_body(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
        warnings: &mut Vec<String>,
    ) -> Result<(StatusCode, Value), ApiError> {
        let obj = self.decode_write_body(info, q, headers, body, warnings, false)?;
        let manager = q.get("fieldManager").unwrap_or("").to_string();
        let manager = if manager.is_empty() {
            default_manager(headers)
        } else {
            manager
        };
        let obj = self
            .create(info, ns, obj, dry_run(q, "CreateOptions")?, &manager)
            .await?;
        Ok((StatusCode::CREATED, obj))
    }

    /// Creates an object (metadata filled, defaults, hooks, one transaction).
    pub async fn create(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        mut obj: Value,
        dry: bool,
        manager: &str,
    ) -> Result<Value, ApiError> {
        // Namespace: the URL's wins; a different one in the body is an error.
        let body_ns = object::meta_str(&obj, "namespace").map(String::from);
        if info.namespaced {
            let ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required"))?;
            if let Some(b) = &body_ns
                && b != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta_mut(&mut obj).insert("namespace".into(), json!(ns));
        } else {
            meta_mut(&mut obj).remove("namespace");
        }
        let gen_name = object::meta_str(&obj, "generateName").map(String::from);
        let explicit_name = object::meta_str(&obj, "name").map(String::from);
        if explicit_name.is_none() && gen_name.is_none() {
            return Err(ApiError::invalid(
                info.resource(),
                "",
                &[portico_core::field::FieldError::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        if let Some(ns) = ns.filter(|_| info.namespaced) {
            self.check_namespace_open(info, ns, explicit_name.as_deref().unwrap_or(""))
                .await?;
        }
        let now = object::now_rfc3339();
        {
            let m = meta_mut(&mut obj);
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ] {
                m.remove(k);
            }
            m.insert("uid".into(), json!(crate::object::new_uid()));
            m.insert("creationTimestamp".into(), json!(now));
            if info.generation {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if info.has_status
            && info.kind != "Node"
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        let hooks = self.hooks(info);
        if hooks.reencodes_typed() {
            object::typed_check(info, &obj)?;
        } else {
            obj = object::typed_roundtrip(info, obj)?;
        }
        object::apply_kind_defaults(info, &mut obj, true);
        if info.plural == "services" && self.service_fallback {
            crate::service_fallback::defaults(&mut obj, None);
        }
        for attempt in 0..RETRIES {
            let mut candidate = obj.clone();
            if explicit_name.is_none()
                && let Some(g) = &gen_name
            {
                meta_mut(&mut candidate).insert("name".into(), json!(object::generate_name(g)));
            }
            let name = object::name(&candidate).to_string();
            self.validate_meta(info, &candidate, &name)?;
            let ctx = WriteContext {
                dry_run: dry,
                namespace: ns.filter(|_| info.namespaced).map(String::from),
                name: name.clone(),
                subresource: None,
            };
            let prepared = hooks.prepare_create(&ctx, &mut candidate).await?;
            glue::record_update(info.kind, None, &mut candidate, manager, None, &now);
            let key = key_of(info, ns, &name);
            if dry {
                let exists = self.store.get(&key).await?.is_some();
                hooks.finish(prepared, false);
                if exists {
                    return Err(ApiError::already_exists(info.resource(), &name));
                }
                return Ok(candidate);
            }
            let (compares, ops) = with_object(
                &prepared,
                Compare::ModRevision(key.clone(), 0),
                Op::Put(key.clone(), object::encode_for_store(&candidate)),
            );
            let resp = match self.store.txn(compares, ops).await {
                Ok(r) => r,
                Err(e) => {
                    hooks.finish(prepared, false);
                    return Err(e.into());
                }
            };
            if resp.succeeded {
                hooks.finish(prepared, true);
                meta_mut(&mut candidate)
                    .insert("resourceVersion".into(), json!(resp.revision.to_string()));
                return Ok(candidate);
            }
            hooks.finish(prepared, false);
            if self.store.get(&key).await?.is_some() {
                if gen_name.is_some() && explicit_name.is_none() && attempt + 1 < RETRIES {
                    continue;
                }
                return Err(ApiError::already_exists(info.resource(), &name));
            }
        }
        Err(ApiError::new(409, "Conflict", "the write lost too many races; try again").with_retry())
    }

    /// Generic `ObjectMeta` validation (names, labels, annotations…) as upstream.
    fn validate_meta(&self, info: &ResourceInfo, obj: &Value, name: &str) -> Result<(), ApiError> {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        use portico_core::validation::{name_kind_for, validate_object_meta};
        use serde::Deserialize;
        // Decoded from a borrow: no copy of the metadata per write.
        let meta = match obj.get("metadata") {
            Some(m) => ObjectMeta::deserialize(m),
            None => ObjectMeta::deserialize(&Value::Null),
        }
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                info.kind, info.version, info.kind
            ))
        })?;
        let errs = validate_object_meta(&meta, info.namespaced, name_kind_for(info.plural));
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(info.resource(), name, &errs))
        }
    }

    /// Metadata rules on update (immutable name/namespace/uid, labels…).
    fn validate_meta_update(
        &self,
        info: &ResourceInfo,
        old: &Value,
        new: &Value,
        name: &str,
    ) -> Result<(), ApiError> {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        use portico_core::validation::{
            name_kind_for, validate_object_meta, validate_object_meta_update,
        };
        use serde::Deserialize;
        let decode = |v: &Value| -> Result<ObjectMeta, ApiError> {
            match v.get("metadata") {
                Some(m) => ObjectMeta::deserialize(m),
                None => ObjectMeta::deserialize(&Value::Null),
            }
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {e}",
                    info.kind, info.version, info.kind
                ))
            })
        };
        let (o, n) = (decode(old)?, decode(new)?);
        let mut errs = validate_object_meta(&n, info.namespaced, name_kind_for(info.plural));
        errs.extend(validate_object_meta_update(&n, &o));
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(info.resource(), name, &errs))
        }
    }

    async fn check_namespace_open(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let ns_info = resources::by_plural("namespaces").expect("namespaces is served");
        let key = key_of(ns_info, None, ns);
        // Like upstream's NamespaceLifecycle admission: the cache answers for a live namespace;
        // a missing or terminating one is looked up in the store (the cache may lag a create).
        let cached = self.caches.get("namespaces").and_then(|c| c.get(&key));
        if cached.is_some_and(|n| !n.deleting()) {
            return Ok(());
        }
        let nsobj = match self.store.get(&key).await? {
            Some(kv) => object::decode_stored(&kv)?,
            None => return Err(ApiError::not_found(ns_info.resource(), ns)),
        };
        if object::meta_str(&nsobj, "deletionTimestamp").is_some() {
            let mut e = ApiError::forbidden(format!(
                "{} {:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                info.qualified_plural(),
                name
            ));
            e.details = Some(
                json!({"name": name, "kind": info.plural, "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}),
            );
            return Err(e);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn put(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
        warnings: &mut Vec<String>,
    ) -> Result<(StatusCode, Value), ApiError> {
        let new = self.decode_write_body(info, q, headers, body, warnings, false)?;
        let body_name = object::meta_str(&new, "name").unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if info.namespaced
            && let Some(bns) = object::meta_str(&new, "namespace")
            && Some(bns) != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let dry = dry_run(q, "UpdateOptions")?;
        let manager = q
            .get("fieldManager")
            .map(String::from)
            .unwrap_or_else(|| default_manager(headers));
        let sub = if sub == Some("finalize") { None } else { sub };
        let key = key_of(info, ns, name);
        if self.store.get(&key).await?.is_none()
            && matches!(info.plural, "endpoints" | "events")
            && sub.is_none()
        {
            let obj = self.create(info, ns, new, dry, &manager).await?;
            return Ok((StatusCode::CREATED, obj));
        }
        let precondition = object::resource_version(&new).map(String::from);
        let obj = self
            .update(
                info,
                ns,
                name,
                sub,
                dry,
                &manager,
                precondition.as_deref(),
                &mut |_old: &Value| Ok(new.clone()),
            )
            .await?;
        Ok((StatusCode::OK, obj))
    }

    #[allow(clippy::too_many_arguments)]
    async fn patch(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
        warnings: &mut Vec<String>,
    ) -> Result<(StatusCode, Value), ApiError> {
        let ct = codec::content_type(headers);
        let dry = dry_run(q, "PatchOptions")?;
        let manager = q.get("fieldManager").map(String::from).unwrap_or_default();
        if ct == "application/apply-patch+yaml" {
            return self
                .apply(info, ns, name, sub, q, body, dry, &manager, warnings)
                .await;
        }
        let pk = match ct.as_str() {
            "application/json-patch+json" => PatchKind::Json,
            "application/merge-patch+json" => PatchKind::Merge,
            "application/strategic-merge-patch+json" => PatchKind::Strategic,
            other => {
                let mut e = ApiError::unsupported_media_type(other);
                e.message = format!(
                    "the server does not support the patch type {other:?}; supported types: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                );
                return Err(e);
            }
        };
        // Patches must be JSON; check that once so every retry sees the same answer.
        if serde_json::from_slice::<Value>(body).is_err() {
            let e = serde_json::from_slice::<Value>(body)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(ApiError::bad_request(format!("error decoding patch: {e}")));
        }
        if pk != PatchKind::Json {
            self.check_fields(info, q, body, warnings, true)?;
        }
        let manager = if manager.is_empty() {
            default_manager(headers)
        } else {
            manager
        };
        let strict_json = pk == PatchKind::Json && q.get("fieldValidation") == Some("Strict");
        let obj = self
            .update(
                info,
                ns,
                name,
                sub,
                dry,
                &manager,
                None,
                &mut |old: &Value| {
                    let mut new = glue::apply_patch(info.kind, pk, old, body)?;
                    if strict_json {
                        let raw = serde_json::to_vec(&new).unwrap_or_default();
                        let mut w = Vec::new();
                        self.check_fields(info, q, &raw, &mut w, true)?;
                    }
                    object::check_type(info, &mut new)?;
                    Ok(new)
                },
            )
            .await?;
        Ok((StatusCode::OK, obj))
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        q: &Query,
        body: &[u8],
        dry: bool,
        manager: &str,
        warnings: &mut Vec<String>,
    ) -> Result<(StatusCode, Value), ApiError> {
        if manager.is_empty() {
            return Err(ApiError::invalid_simple(
                "PatchOptions.meta.k8s.io",
                "fieldManager",
                "Required value: is required for apply patch",
            ));
        }
        let mut applied = codec::decode_yaml(body)?;
        let raw = serde_json::to_vec(&applied).unwrap_or_default();
        self.check_fields(info, q, &raw, warnings, true)?;
        object::check_type(info, &mut applied)?;
        if object::meta_str(&applied, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object::name(&applied)
            )));
        }
        let force = q.flag("force");
        let now = object::now_rfc3339();
        let key = key_of(info, ns, name);
        if sub.is_none() && self.store.get(&key).await?.is_none() {
            let mut obj = glue::ssa_apply(info.kind, None, &applied, manager, force, &now)?;
            meta_mut(&mut obj).insert("name".into(), json!(name));
            let created = self.create(info, ns, obj, dry, manager).await?;
            return Ok((StatusCode::CREATED, created));
        }
        let obj = self
            .update(
                info,
                ns,
                name,
                sub,
                dry,
                manager,
                None,
                &mut |old: &Value| {
                    let mut new =
                        glue::ssa_apply(info.kind, Some(old), &applied, manager, force, &now)?;
                    object::check_type(info, &mut new)?;
                    Ok(new)
                },
            )
            .await?;
        Ok((StatusCode::OK, obj))
    }

    /// The generic update loop: read, compute, check, default, hooks, one transaction; retried
    /// when a race is lost and the caller gave no resourceVersion precondition.
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        dry: bool,
        manager: &str,
        precondition: Option<&str>,
        compute: &mut (dyn FnMut(&Value) -> Result<Value, ApiError> + Send),
    ) -> Result<Value, ApiError> {
        let key = key_of(info, ns, name);
        let hooks = self.hooks(info);
        let status_write = sub == Some("status");
        for _ in 0..RETRIES {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(ApiError::not_found(info.resource(), name));
            };
            let old = object::decode_stored(&kv)?;
            let old_rv = kv.mod_revision.to_string();
            if let Some(p) = precondition
                && p != old_rv
            {
                return Err(ApiError::conflict(info.resource(), name));
            }
            let mut new = compute(&old)?;
            if let Some(rv) = object::resource_version(&new)
                && rv != old_rv
            {
                return Err(ApiError::conflict(info.resource(), name));
            }
            if object::meta_str(&new, "name").is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    object::name(&new)
                )));
            }
            meta_mut(&mut new).insert("name".into(), json!(name));
            object::keep_system_meta(&old, &mut new);
            object::keep_other_half(info, &old, &mut new, status_write);
            new = object::typed_roundtrip(info, new)?;
            object::apply_kind_defaults(info, &mut new, false);
            if info.plural == "services" && self.service_fallback {
                crate::service_fallback::defaults(&mut new, Some(&old));
            }
            if info.generation && object::spec_part(&old) != object::spec_part(&new) {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(|g| g.as_i64())
                    .unwrap_or(0);
                meta_mut(&mut new).insert("generation".into(), json!(g + 1));
            }
            let now = object::now_rfc3339();
            let ctx = WriteContext {
                dry_run: dry,
                namespace: ns.filter(|_| info.namespaced).map(String::from),
                name: name.to_string(),
                subresource: sub.map(String::from),
            };
            self.validate_meta_update(info, &old, &new, name)?;
            let prepared = hooks.prepare_update(&ctx, &old, &mut new).await?;
            glue::record_update(info.kind, Some(&old), &mut new, manager, sub, &now);
            meta_mut(&mut new).insert("resourceVersion".into(), json!(old_rv));
            if object::same_content(&old, &new) {
                hooks.finish(prepared, false);
                return Ok(old);
            }
            // Removing the last finalizer of an object being deleted removes the object.
            let finished_deleting = object::meta_str(&new, "deletionTimestamp").is_some()
                && object::finalizers(&new).is_empty()
                && !(info.kind == "Pod"
                    && new
                        .pointer("/metadata/deletionGracePeriodSeconds")
                        .and_then(|g| g.as_i64())
                        .unwrap_or(0)
                        > 0)
                && info.plural != "namespaces";
            if dry {
                hooks.finish(prepared, false);
                return Ok(new);
            }
            if finished_deleting {
                hooks.finish(prepared, false);
                return self.remove(info, ns, name, &kv, new).await;
            }
            let (compares, ops) = with_object(
                &prepared,
                Compare::ModRevision(key.clone(), kv.mod_revision),
                Op::Put(key.clone(), object::encode_for_store(&new)),
            );
            let resp = match self.store.txn(compares, ops).await {
                Ok(r) => r,
                Err(e) => {
                    hooks.finish(prepared, false);
                    return Err(e.into());
                }
            };
            hooks.finish(prepared, resp.succeeded);
            if resp.succeeded {
                meta_mut(&mut new)
                    .insert("resourceVersion".into(), json!(resp.revision.to_string()));
                // A Terminating namespace whose last finalizer just went (the garbage collector
                // is done with `orphan` or `foregroundDeletion`) can now be removed.
                if info.plural == "namespaces"
                    && object::meta_str(&new, "deletionTimestamp").is_some()
                    && object::finalizers(&new).is_empty()
                    && !object::finalizers(&old).is_empty()
                {
                    let _ = self.namespace_cleanup.send(name.to_string());
                }
                return Ok(new);
            }
            if precondition.is_some()
                && self.store.get(&key).await?.map(|k| k.mod_revision) != Some(kv.mod_revision)
            {
                return Err(ApiError::conflict(info.resource(), name));
            }
        }
        Err(ApiError::conflict(info.resource(), name))
    }

    /// Removes an object for good (hooks release what it held). Returns its last state.
    async fn remove(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        kv: &portico_store::KeyValue,
        last: Value,
    ) -> Result<Value, ApiError> {
        let key = key_of(info, ns, name);
        let hooks = self.hooks(info);
        let ctx = WriteContext {
            dry_run: false,
            namespace: ns.filter(|_| info.namespaced).map(String::from),
            name: name.to_string(),
            subresource: None,
        };
        let old = object::decode_stored(kv)?;
        let prepared = hooks.prepare_delete(&ctx, &old).await?;
        let (compares, ops) = with_object(
            &prepared,
            Compare::ModRevision(key.clone(), kv.mod_revision),
            Op::Delete(key.clone()),
        );
        let resp = match self.store.txn(compares, ops).await {
            Ok(r) => r,
            Err(e) => {
                hooks.finish(prepared, false);
                return Err(e.into());
            }
        };
        hooks.finish(prepared, resp.succeeded);
        if !resp.succeeded {
            return Err(ApiError::conflict(info.resource(), name));
        }
        Ok(last)
    }

    async fn delete(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        q: &Query,
        body: &[u8],
    ) -> Result<(StatusCode, Value), ApiError> {
        let opts = DeleteOptions::parse(q, body)?;
        let (obj, deleted) = self.delete_object_inner(info, ns, name, &opts).await?;
        // Upstream answers 202 only when the deprecated orphanDependents=false asked for a
        // cascade that is still running; every other pending deletion is a 200.
        let code = if !deleted && opts.orphan_dependents == Some(false) {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        Ok((code, obj))
    }

    /// Deletes one object with upstream's graceful, finalizer, garbage-collection and
    /// namespace semantics.
    pub async fn delete_object(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        self.delete_object_inner(info, ns, name, opts)
            .await
            .map(|(obj, _)| obj)
    }

    /// [`Api::delete_object`], also saying whether the object is gone from storage now.
    async fn delete_object_inner(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let key = key_of(info, ns, name);
        for _ in 0..RETRIES {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(ApiError::not_found(info.resource(), name));
            };
            let old = object::decode_stored(&kv)?;
            if let Some(uid) = &opts.uid
                && object::meta_str(&old, "uid") != Some(uid.as_str())
            {
                let have = object::meta_str(&old, "uid").unwrap_or("");
                return Err(precondition_conflict(info, name, "UID", uid, have));
            }
            if let Some(rv) = &opts.resource_version
                && *rv != kv.mod_revision.to_string()
            {
                let have = kv.mod_revision.to_string();
                return Err(precondition_conflict(
                    info,
                    name,
                    "ResourceVersion",
                    rv,
                    &have,
                ));
            }
            // Namespaces: mark Terminating; the cleanup task empties and removes them.
            if info.plural == "namespaces" {
                if opts.dry_run {
                    return Ok((old, false));
                }
                if object::meta_str(&old, "deletionTimestamp").is_some() {
                    let _ = self.namespace_cleanup.send(name.to_string());
                    return Ok((old, false));
                }
                let mut new = old.clone();
                meta_mut(&mut new).insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
                meta_mut(&mut new).insert("deletionGracePeriodSeconds".into(), json!(0));
                new["status"] = json!({"phase": "Terminating"});
                // Orphan and Foreground ask the garbage collector to handle what the namespace
                // owns (its contents go regardless); the namespace stays until it is done.
                if let Some(f) = opts.gc_finalizers(&object::finalizers(&old)) {
                    meta_mut(&mut new).insert("finalizers".into(), json!(f));
                }
                let resp = self
                    .store
                    .txn(
                        vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
                        vec![Op::Put(key.clone(), object::encode_for_store(&new))],
                    )
                    .await?;
                if !resp.succeeded {
                    continue;
                }
                meta_mut(&mut new)
                    .insert("resourceVersion".into(), json!(resp.revision.to_string()));
                let _ = self.namespace_cleanup.send(name.to_string());
                return Ok((new, false));
            }
            match plan_delete(info.kind, &old, opts, jiff::Timestamp::now()) {
                DeletePlan::Pending => return Ok((old, false)),
                DeletePlan::Update(mut new) => {
                    // A repeated delete that changes nothing is not a write (no watch event).
                    if opts.dry_run || new == old {
                        return Ok((new, false));
                    }
                    let resp = self
                        .store
                        .txn(
                            vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
                            vec![Op::Put(key.clone(), object::encode_for_store(&new))],
                        )
                        .await?;
                    if !resp.succeeded {
                        continue;
                    }
                    meta_mut(&mut new)
                        .insert("resourceVersion".into(), json!(resp.revision.to_string()));
                    return Ok((new, false));
                }
                DeletePlan::Now => {
                    if opts.dry_run {
                        return Ok((old, true));
                    }
                    match self.remove(info, ns, name, &kv, old.clone()).await {
                        Ok(v) => return Ok((v, true)),
                        Err(e) if e.code == 409 => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(ApiError::conflict(info.resource(), name))
    }

    async fn delete_collection(
        &self,
        info: &'static ResourceInfo,
        ns: Option<String>,
        q: &Query,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let filter = Filter::new(info, ns.clone(), q)?;
        let opts = DeleteOptions::parse(q, body)?;
        let prefix = keys::list_prefix(
            info.plural,
            if info.namespaced { ns.as_deref() } else { None },
        );
        let page = self.store.list(&prefix, None, 0, None).await?;
        let mut deleted = Vec::new();
        for kv in &page.kvs {
            let obj = object::decode_stored(kv)?;
            if !filter.matches(&obj) {
                continue;
            }
            let ons = object::meta_str(&obj, "namespace").map(String::from);
            match self
                .delete_object(info, ons.as_deref(), object::name(&obj), &opts)
                .await
            {
                Ok(v) => deleted.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(codec::json(
            StatusCode::OK,
            &json!({"kind": info.list_kind(), "apiVersion": info.api_version(), "metadata": {"resourceVersion": page.revision.to_string()}, "items": deleted}),
        ))
    }

    /// Empties a Terminating namespace, then removes it. Idempotent; safe to call again.
    pub async fn finalize_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let opts = DeleteOptions {
            grace_period: Some(0),
            ..Default::default()
        };
        for _ in 0..600 {
            let mut remaining = 0;
            for info in resources::RESOURCES.iter().filter(|r| r.namespaced) {
                let prefix = keys::list_prefix(info.plural, Some(ns));
                let page = self.store.list(&prefix, None, 0, None).await?;
                for kv in &page.kvs {
                    remaining += 1;
                    let obj = object::decode_stored(kv)?;
                    match self
                        .delete_object(info, Some(ns), object::name(&obj), &opts)
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.code == 404 => {}
                        Err(e) => tracing::warn!(namespace = ns, "namespace cleanup: {e}"),
                    }
                }
            }
            if remaining == 0 {
                let ns_info = resources::by_plural("namespaces").expect("namespaces is served");
                let key = key_of(ns_info, None, ns);
                if let Some(kv) = self.store.get(&key).await? {
                    let old = object::decode_stored(&kv)?;
                    // Still finalizing (the garbage collector's `orphan` or
                    // `foregroundDeletion`): the update that removes the last finalizer
                    // sends the namespace here again.
                    if object::meta_str(&old, "deletionTimestamp").is_none()
                        || !object::finalizers(&old).is_empty()
                    {
                        return Ok(());
                    }
                    let _ = self.remove(ns_info, None, ns, &kv, old).await?;
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ApiError::internal(format!(
            "namespace {ns} still has content"
        )))
    }
}

impl ResourceInfo {
    pub fn qualified_plural(&self) -> String {
        self.resource().qualified()
    }
}

impl ApiError {
    fn with_retry(mut self) -> Self {
        let mut d = self.details.take().unwrap_or_else(|| json!({}));
        d["retryAfterSeconds"] = json!(1);
        self.details = Some(d);
        self
    }
    /// 422 on an options object (`ListOptions.meta.k8s.io "" is invalid: field: ...`).
    pub fn invalid_simple(kind: &str, field: &str, body: &str) -> Self {
        let reason = if body.starts_with("Required") {
            "FieldValueRequired"
        } else if body.starts_with("Forbidden") {
            "FieldValueForbidden"
        } else {
            "FieldValueInvalid"
        };
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{kind} \"\" is invalid: {field}: {body}"),
        );
        let (group, k) = kind
            .split_once('.')
            .map(|(k, g)| (g, k))
            .unwrap_or(("", kind));
        e.details = Some(
            json!({"group": group, "kind": k, "causes": [{"reason": reason, "message": body, "field": field}]}),
        );
        e
    }
}

fn continue_error(e: portico_store::Error, continuing: bool) -> ApiError {
    match e {
        portico_store::Error::Compacted { .. } if continuing => ApiError::gone(
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
        ),
        other => other.into(),
    }
}

fn encode_continue(rev: Revision, start_after: &str) -> String {
    let raw = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": start_after}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(tok: &str) -> Result<(Revision, String), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {tok:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tok.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v
        .get("rv")
        .and_then(|r| r.as_i64())
        .filter(|r| *r > 0)
        .ok_or_else(bad)?;
    let start = v.get("start").and_then(|s| s.as_str()).ok_or_else(bad)?;
    if start.contains("..") {
        return Err(bad());
    }
    Ok((rev, start.to_string()))
}

/// Combines the object's compare and op with a hook's.
fn with_object(p: &Prepared, c: Compare, op: Op) -> (Vec<Compare>, Vec<Op>) {
    let mut compares = vec![c];
    compares.extend(p.compares.iter().cloned());
    let mut ops = vec![op];
    ops.extend(p.ops.iter().cloned());
    (compares, ops)
}

/// The manager name upstream derives from the User-Agent when no fieldManager is given.
fn default_manager(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// Go's `%q` for a warning text.
fn go_quote(s: &str) -> String {
    format!("{s:?}")
}

/// How dependents of a deleted object are treated (`DeleteOptions.propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Keep dependents; the garbage collector removes their ownerReferences first.
    Orphan,
    /// Delete the owner now; the garbage collector deletes dependents afterwards.
    Background,
    /// Keep the owner (finalizer `foregroundDeletion`) until blocking dependents are gone.
    Foreground,
}

/// The finalizer the garbage collector honours for `Orphan` deletions.
pub const FINALIZER_ORPHAN: &str = "orphan";
/// The finalizer the garbage collector honours for `Foreground` deletions.
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// `DeleteOptions` from the JSON body, with query parameters as fallback.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
    pub propagation_policy: Option<Propagation>,
    /// The deprecated `orphanDependents`; overrides `propagation_policy` when set.
    pub orphan_dependents: Option<bool>,
}

impl DeleteOptions {
    fn parse(q: &Query, body: &[u8]) -> Result<Self, ApiError> {
        let mut o = DeleteOptions {
            dry_run: dry_run(q, "DeleteOptions")?,
            ..Default::default()
        };
        if let Some(g) = q.get("gracePeriodSeconds") {
            o.grace_period = Some(g.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid gracePeriodSeconds: {g:?}"))
            })?);
        }
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            // Without a body upstream decodes the options from the query.
            let policy = q
                .get("propagationPolicy")
                .filter(|p| !p.is_empty())
                .map(String::from);
            let orphan = q
                .get("orphanDependents")
                .map(|v| {
                    go_parse_bool(v).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "strconv.ParseBool: parsing {v:?}: invalid syntax"
                        ))
                    })
                })
                .transpose()?;
            o.set_propagation(policy, orphan)?;
            return Ok(o);
        }
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?;
        if !v.is_object() {
            return Err(ApiError::bad_request("DeleteOptions must be a JSON object"));
        }
        if let Some(g) = v.get("gracePeriodSeconds").filter(|g| !g.is_null()) {
            o.grace_period =
                Some(g.as_i64().ok_or_else(|| {
                    ApiError::bad_request("gracePeriodSeconds must be an integer")
                })?);
        }
        if let Some(p) = v.get("preconditions") {
            o.uid = p.get("uid").and_then(|u| u.as_str()).map(String::from);
            o.resource_version = p
                .get("resourceVersion")
                .and_then(|u| u.as_str())
                .map(String::from);
        }
        match v.get("dryRun") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if let Some(bad) = items.iter().find(|i| !i.is_string()) {
                    return Err(ApiError::bad_request(format!(
                        "json: cannot unmarshal {} into Go struct field DeleteOptions.dryRun of type string",
                        json_type_name(bad)
                    )));
                }
                let values: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                o.dry_run |= dry_run_values(&values, "DeleteOptions")?;
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "json: cannot unmarshal {} into Go struct field DeleteOptions.dryRun of type []string",
                    json_type_name(other)
                )));
            }
        }
        let policy = match v.get("propagationPolicy") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p.clone()),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "json: cannot unmarshal {} into Go struct field DeleteOptions.propagationPolicy of type v1.DeletionPropagation",
                    json_type_name(other)
                )));
            }
        };
        let orphan = match v.get("orphanDependents") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "json: cannot unmarshal {} into Go struct field DeleteOptions.orphanDependents of type bool",
                    json_type_name(other)
                )));
            }
        };
        o.set_propagation(policy, orphan)?;
        Ok(o)
    }

    /// Upstream's `ValidateDeleteOptions` for the two garbage-collection fields.
    fn set_propagation(
        &mut self,
        policy: Option<String>,
        orphan: Option<bool>,
    ) -> Result<(), ApiError> {
        use portico_core::field::{ErrorType, FieldError, quote};
        let mut errs = Vec::new();
        if let (Some(p), Some(_)) = (&policy, orphan) {
            errs.push(FieldError::invalid(
                "propagationPolicy",
                quote(p),
                "orphanDependents and deletionPropagation cannot be both set",
            ));
        }
        let parsed = match policy.as_deref() {
            None => None,
            Some("Orphan") => Some(Propagation::Orphan),
            Some("Background") => Some(Propagation::Background),
            Some("Foreground") => Some(Propagation::Foreground),
            Some(other) => {
                errs.push(FieldError::new(
                    ErrorType::NotSupported,
                    "propagationPolicy",
                    Some(quote(other)),
                    "supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\"",
                ));
                None
            }
        };
        if !errs.is_empty() {
            return Err(options_invalid("DeleteOptions", &errs));
        }
        self.propagation_policy = parsed;
        self.orphan_dependents = orphan;
        Ok(())
    }

    /// Upstream's `shouldOrphanDependents`: options first, then the object's finalizers, then
    /// the default policy (Background for every kind served here).
    fn should_orphan(&self, finalizers: &[String]) -> bool {
        if let Some(o) = self.orphan_dependents {
            return o;
        }
        if let Some(p) = self.propagation_policy {
            return p == Propagation::Orphan;
        }
        first_gc_finalizer(finalizers) == Some(FINALIZER_ORPHAN)
    }

    /// Upstream's `shouldDeleteDependents`.
    fn should_delete_in_foreground(&self, finalizers: &[String]) -> bool {
        if self.orphan_dependents.is_some() {
            return false;
        }
        if let Some(p) = self.propagation_policy {
            return p == Propagation::Foreground;
        }
        first_gc_finalizer(finalizers) == Some(FINALIZER_FOREGROUND)
    }

    /// The finalizers after applying the options' propagation policy, or `None` when the set
    /// does not change (upstream's `deletionFinalizersForGarbageCollection`).
    fn gc_finalizers(&self, finalizers: &[String]) -> Option<Vec<String>> {
        let orphan = self.should_orphan(finalizers);
        let foreground = self.should_delete_in_foreground(finalizers);
        let mut out: Vec<String> = finalizers
            .iter()
            .filter(|f| *f != FINALIZER_ORPHAN && *f != FINALIZER_FOREGROUND)
            .cloned()
            .collect();
        if orphan {
            out.push(FINALIZER_ORPHAN.into());
        }
        if foreground {
            out.push(FINALIZER_FOREGROUND.into());
        }
        let old: std::collections::BTreeSet<&String> = finalizers.iter().collect();
        let new: std::collections::BTreeSet<&String> = out.iter().collect();
        (old != new).then_some(out)
    }
}

fn first_gc_finalizer(finalizers: &[String]) -> Option<&str> {
    finalizers
        .iter()
        .map(String::as_str)
        .find(|f| *f == FINALIZER_ORPHAN || *f == FINALIZER_FOREGROUND)
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The JSON type name Go's decoder prints in "cannot unmarshal X into …".
fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A failed delete precondition. Namespaces answer from their own registry ("Precondition
/// failed: …" on `namespaces`); every other kind from upstream's `BeforeDelete`, which names
/// the Kind.
fn precondition_conflict(
    info: &ResourceInfo,
    name: &str,
    field: &str,
    want: &str,
    have: &str,
) -> ApiError {
    let mut e = ApiError::conflict(info.resource(), name);
    if info.plural == "namespaces" {
        e.message = format!(
            "Operation cannot be fulfilled on {} {name:?}: Precondition failed: {field} in precondition: {want}, {field} in object meta: {have}",
            info.qualified_plural()
        );
        return e;
    }
    let kind = if info.group.is_empty() {
        info.kind.to_string()
    } else {
        format!("{}.{}", info.kind, info.group)
    };
    let why = if field == "UID" {
        "The object might have been deleted and then recreated"
    } else {
        "The object might have been modified"
    };
    e.message = format!(
        "Operation cannot be fulfilled on {kind} {name:?}: the {field} in the precondition ({want}) does not match the {field} in record ({have}). {why}"
    );
    let mut details = json!({"name": name, "kind": info.kind});
    if !info.group.is_empty() {
        details["group"] = json!(info.group);
    }
    e.details = Some(details);
    e
}

/// What one DELETE does to a stored object.
#[derive(Debug, Clone, PartialEq)]
enum DeletePlan {
    /// A graceful deletion is already pending: answer the object unchanged.
    Pending,
    /// Write this state (deletionTimestamp, grace period, finalizers) and keep the object.
    Update(Value),
    /// Remove the object from storage now.
    Now,
}

fn parse_ts(s: &str) -> Option<jiff::Timestamp> {
    s.parse::<jiff::Timestamp>().ok()
}

fn ts_string(t: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(t.as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

fn bump_generation(new: &mut Value) {
    let g = new
        .pointer("/metadata/generation")
        .and_then(|g| g.as_i64())
        .unwrap_or(0);
    if g > 0 {
        meta_mut(new).insert("generation".into(), json!(g + 1));
    }
}

/// The grace period of a first pod deletion (upstream's pod `CheckGracefulDelete`).
fn pod_grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let unscheduled = pod
        .pointer("/spec/nodeName")
        .and_then(|n| n.as_str())
        .is_none_or(str::is_empty);
    let phase = pod
        .pointer("/status/phase")
        .and_then(|p| p.as_str())
        .unwrap_or("");
    if unscheduled || phase == "Succeeded" || phase == "Failed" {
        return 0;
    }
    requested.unwrap_or_else(|| {
        pod.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(|g| g.as_i64())
            .unwrap_or(30)
    })
}

/// Upstream's store `Delete`: `BeforeDelete` (graceful deletion, pods only here), then the
/// garbage-collection finalizers, then either an update that keeps the object or removal.
fn plan_delete(kind: &str, old: &Value, opts: &DeleteOptions, now: jiff::Timestamp) -> DeletePlan {
    let mut new = old.clone();
    // Negative grace periods count as 1s on the delete path.
    let requested = opts.grace_period.map(|g| if g < 0 { 1 } else { g });
    let mut graceful: Option<i64> = None;
    if kind == "Pod" {
        let current = old
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(|g| g.as_i64())
            .map(|g| if g < 0 { 1 } else { g });
        match object::meta_str(old, "deletionTimestamp") {
            Some(ts) => match current {
                // Graceful deletion ran out (or never had a period): delete now.
                None | Some(0) => {}
                Some(current) => match requested {
                    // Only a shorter grace period may be given once deletion started.
                    Some(g) if g < current => {
                        let at = parse_ts(ts).unwrap_or(now).as_second() - current + g;
                        let at = jiff::Timestamp::from_second(at).unwrap_or(now);
                        let m = meta_mut(&mut new);
                        m.insert("deletionTimestamp".into(), json!(ts_string(at)));
                        m.insert("deletionGracePeriodSeconds".into(), json!(g));
                        graceful = Some(g);
                    }
                    _ => return DeletePlan::Pending,
                },
            },
            None => {
                let g = pod_grace_period(old, requested);
                let at = jiff::Timestamp::from_second(now.as_second() + g).unwrap_or(now);
                let m = meta_mut(&mut new);
                m.insert("deletionTimestamp".into(), json!(ts_string(at)));
                m.insert("deletionGracePeriodSeconds".into(), json!(g));
                bump_generation(&mut new);
                graceful = Some(g);
            }
        }
    }
    let finalizers = object::finalizers(old);
    let changed = opts.gc_finalizers(&finalizers);
    if graceful.is_none() && finalizers.is_empty() && changed.is_none() {
        return DeletePlan::Now;
    }
    if let Some(f) = changed {
        meta_mut(&mut new).insert("finalizers".into(), json!(f));
    }
    let pending_finalizers = !object::finalizers(&new).is_empty();
    match graceful {
        None if pending_finalizers => {
            // upstream's markAsDeleting: now (or earlier), grace 0.
            let existing = object::meta_str(old, "deletionTimestamp").and_then(parse_ts);
            if existing.is_none() {
                bump_generation(&mut new);
            }
            if existing.is_none_or(|t| t > now) {
                meta_mut(&mut new).insert("deletionTimestamp".into(), json!(ts_string(now)));
            }
            meta_mut(&mut new).insert("deletionGracePeriodSeconds".into(), json!(0));
            DeletePlan::Update(new)
        }
        None => DeletePlan::Now,
        Some(g) if pending_finalizers || g > 0 => DeletePlan::Update(new),
        Some(_) => DeletePlan::Now,
    }
}

#[cfg(test)]
mod delete_tests {
    use super::*;

    fn opts(q: &str, body: &str) -> Result<DeleteOptions, ApiError> {
        DeleteOptions::parse(&Query::parse(Some(q)).unwrap(), body.as_bytes())
    }

    #[test]
    fn propagation_options() {
        use Propagation::*;
        let ok: &[(&str, &str, Option<Propagation>, Option<bool>)] = &[
            ("", "", None, None),
            ("propagationPolicy=Foreground", "", Some(Foreground), None),
            ("propagationPolicy=Orphan", "", Some(Orphan), None),
            ("orphanDependents=false", "", None, Some(false)),
            ("orphanDependents=1", "", None, Some(true)),
            (
                "",
                r#"{"propagationPolicy":"Background"}"#,
                Some(Background),
                None,
            ),
            ("", r#"{"propagationPolicy":null}"#, None, None),
            ("", r#"{"orphanDependents":true}"#, None, Some(true)),
            // With a body the query is not consulted for the policy.
            (
                "propagationPolicy=Bogus",
                r#"{"propagationPolicy":"Orphan"}"#,
                Some(Orphan),
                None,
            ),
        ];
        for (q, body, policy, orphan) in ok {
            let o = opts(q, body).unwrap_or_else(|e| panic!("{q} {body}: {e:?}"));
            assert!(!o.dry_run, "{q} {body}");
            assert_eq!(o.propagation_policy, *policy, "{q} {body}");
            assert_eq!(o.orphan_dependents, *orphan, "{q} {body}");
        }
        let bad: &[(&str, &str, u16, &str)] = &[
            (
                "propagationPolicy=Bogus",
                "",
                422,
                r#"DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "Bogus": supported values: "Foreground", "Background", "Orphan", "nil""#,
            ),
            (
                "",
                r#"{"propagationPolicy":"Orphan","orphanDependents":false}"#,
                422,
                r#"DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Invalid value: "Orphan": orphanDependents and deletionPropagation cannot be both set"#,
            ),
            (
                "orphanDependents=yes",
                "",
                400,
                r#"strconv.ParseBool: parsing "yes": invalid syntax"#,
            ),
            (
                "dryRun=Some",
                "",
                422,
                r#"DeleteOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"Some"}: supported values: "All""#,
            ),
            (
                "",
                r#"{"dryRun":["All","x"]}"#,
                422,
                r#"DeleteOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"All", "x"}: supported values: "All""#,
            ),
            (
                "",
                r#"{"dryRun":"All"}"#,
                400,
                "json: cannot unmarshal string into Go struct field DeleteOptions.dryRun of type []string",
            ),
            (
                "",
                r#"{"propagationPolicy":1}"#,
                400,
                "json: cannot unmarshal number into Go struct field DeleteOptions.propagationPolicy of type v1.DeletionPropagation",
            ),
        ];
        for (q, body, code, msg) in bad {
            let e = opts(q, body).expect_err(q);
            assert_eq!((e.code, e.message.as_str()), (*code, *msg), "{q} {body}");
        }
        assert!(opts("dryRun=All", "").unwrap().dry_run);
        assert!(opts("", r#"{"dryRun":["All"]}"#).unwrap().dry_run);
        let e = opts("propagationPolicy=Bogus", "").unwrap_err();
        let d = e.details.unwrap();
        assert_eq!(d["group"], json!("meta.k8s.io"));
        assert_eq!(d["kind"], json!("DeleteOptions"));
        assert_eq!(d["causes"][0]["reason"], json!("FieldValueNotSupported"));
    }

    #[test]
    fn precondition_messages() {
        let svc = resources::by_plural("services").unwrap();
        let slices = resources::by_plural("endpointslices").unwrap();
        let nss = resources::by_plural("namespaces").unwrap();
        let cases = [
            (
                svc,
                "UID",
                r#"Operation cannot be fulfilled on Service "web": the UID in the precondition (a) does not match the UID in record (b). The object might have been deleted and then recreated"#,
            ),
            (
                slices,
                "ResourceVersion",
                r#"Operation cannot be fulfilled on EndpointSlice.discovery.k8s.io "web": the ResourceVersion in the precondition (a) does not match the ResourceVersion in record (b). The object might have been modified"#,
            ),
            (
                nss,
                "UID",
                r#"Operation cannot be fulfilled on namespaces "web": Precondition failed: UID in precondition: a, UID in object meta: b"#,
            ),
        ];
        for (info, field, want) in cases {
            let e = precondition_conflict(info, "web", field, "a", "b");
            assert_eq!((e.code, e.message.as_str()), (409, want));
        }
    }

    #[test]
    fn finalizers_for_garbage_collection() {
        use Propagation::*;
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (policy, orphanDependents, existing finalizers, expected change)
        type Case<'a> = (
            Option<Propagation>,
            Option<bool>,
            &'a [&'a str],
            Option<&'a [&'a str]>,
        );
        let cases: &[Case] = &[
            (None, None, &[], None),
            (Some(Background), None, &[], None),
            (Some(Foreground), None, &[], Some(&["foregroundDeletion"])),
            (Some(Orphan), None, &["x"], Some(&["x", "orphan"])),
            (None, Some(true), &[], Some(&["orphan"])),
            (None, Some(false), &["orphan"], Some(&[])),
            // Existing finalizers decide when the options say nothing.
            (None, None, &["orphan"], None),
            (None, None, &["foregroundDeletion", "x"], None),
            // An explicit policy replaces the other one.
            (
                Some(Orphan),
                None,
                &["foregroundDeletion"],
                Some(&["orphan"]),
            ),
            (
                Some(Background),
                None,
                &["a", "foregroundDeletion"],
                Some(&["a"]),
            ),
            (Some(Foreground), None, &["foregroundDeletion"], None),
        ];
        for (policy, orphan, existing, want) in cases {
            let o = DeleteOptions {
                propagation_policy: *policy,
                orphan_dependents: *orphan,
                ..Default::default()
            };
            assert_eq!(
                o.gc_finalizers(&f(existing)),
                want.map(f),
                "{policy:?} {orphan:?} {existing:?}"
            );
        }
    }

    #[test]
    fn delete_plans() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let svc = |meta: Value| json!({"metadata": meta, "spec": {}});
        let pod = |meta: Value, node: &str| json!({"metadata": meta, "spec": {"nodeName": node, "terminationGracePeriodSeconds": 30}});
        let fg = DeleteOptions {
            propagation_policy: Some(Propagation::Foreground),
            ..Default::default()
        };
        let bg = DeleteOptions {
            propagation_policy: Some(Propagation::Background),
            ..Default::default()
        };
        let grace0 = DeleteOptions {
            grace_period: Some(0),
            ..Default::default()
        };
        type Case<'a> = (&'a str, &'a str, Value, &'a DeleteOptions, Option<Value>);
        let cases: Vec<Case> = vec![
            (
                "plain service",
                "Service",
                svc(json!({"name": "a"})),
                &bg,
                None,
            ),
            (
                "foreground service",
                "Service",
                svc(json!({"name": "a", "generation": 1})),
                &fg,
                Some(
                    json!({"name": "a", "generation": 2, "finalizers": ["foregroundDeletion"], "deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0}),
                ),
            ),
            (
                "finalizer keeps it",
                "Service",
                svc(json!({"name": "a", "finalizers": ["x"]})),
                &bg,
                Some(
                    json!({"name": "a", "finalizers": ["x"], "deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0}),
                ),
            ),
            (
                "background on a foreground deletion removes the object",
                "Service",
                svc(
                    json!({"name": "a", "finalizers": ["foregroundDeletion"], "deletionTimestamp": "2025-12-31T00:00:00Z", "deletionGracePeriodSeconds": 0}),
                ),
                &bg,
                None,
            ),
            (
                "second foreground delete keeps the earlier timestamp",
                "Service",
                svc(
                    json!({"name": "a", "finalizers": ["foregroundDeletion"], "deletionTimestamp": "2025-12-31T00:00:00Z", "deletionGracePeriodSeconds": 0}),
                ),
                &fg,
                Some(
                    json!({"name": "a", "finalizers": ["foregroundDeletion"], "deletionTimestamp": "2025-12-31T00:00:00Z", "deletionGracePeriodSeconds": 0}),
                ),
            ),
            (
                "bound pod waits for its grace period",
                "Pod",
                pod(json!({"name": "p"}), "n1"),
                &bg,
                Some(
                    json!({"name": "p", "deletionTimestamp": "2026-01-01T00:00:30Z", "deletionGracePeriodSeconds": 30}),
                ),
            ),
            (
                "unbound pod goes now",
                "Pod",
                pod(json!({"name": "p"}), ""),
                &bg,
                None,
            ),
            (
                "unbound pod in foreground waits for dependents",
                "Pod",
                pod(json!({"name": "p"}), ""),
                &fg,
                Some(
                    json!({"name": "p", "finalizers": ["foregroundDeletion"], "deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0}),
                ),
            ),
            (
                "shorter grace period moves the timestamp",
                "Pod",
                pod(
                    json!({"name": "p", "deletionTimestamp": "2026-01-01T00:00:20Z", "deletionGracePeriodSeconds": 30}),
                    "n1",
                ),
                &grace0,
                None,
            ),
            (
                "shorter grace period with a finalizer",
                "Pod",
                pod(
                    json!({"name": "p", "finalizers": ["x"], "deletionTimestamp": "2026-01-01T00:00:20Z", "deletionGracePeriodSeconds": 30}),
                    "n1",
                ),
                &grace0,
                Some(
                    json!({"name": "p", "finalizers": ["x"], "deletionTimestamp": "2025-12-31T23:59:50Z", "deletionGracePeriodSeconds": 0}),
                ),
            ),
        ];
        for (what, kind, old, o, want) in cases {
            let got = plan_delete(kind, &old, o, now);
            let want = match want {
                None => DeletePlan::Now,
                Some(meta) => {
                    let mut v = old.clone();
                    v["metadata"] = meta;
                    DeletePlan::Update(v)
                }
            };
            assert_eq!(got, want, "{what}");
        }
        // Pending graceful deletion: finalizers cannot change any more.
        let pending = pod(
            json!({"name": "p", "deletionTimestamp": "2026-01-01T00:00:20Z", "deletionGracePeriodSeconds": 30}),
            "n1",
        );
        assert_eq!(plan_delete("Pod", &pending, &fg, now), DeletePlan::Pending);
    }
}

/// One client's watch: filters, encodes and sends events until the client leaves, the
/// timeout passes or the cache relists.
struct Watcher {
    filter: Filter,
    output: Output,
    include: String,
    first_table: bool,
    tx: mpsc::Sender<Bytes>,
}

impl Watcher {
    async fn send(&self, b: Bytes) -> Result<(), ()> {
        self.tx.send(b).await.map_err(|_| ())
    }

    fn encode(&mut self, kind: &str, obj: &CachedObject) -> Bytes {
        if self.output == Output::Json {
            return obj.line(kind);
        }
        // The cache only holds JSON it encoded itself; an empty chunk sends nothing.
        let Ok(obj) = obj.to_value() else {
            return Bytes::new();
        };
        let mut t = glue::to_table(
            self.filter.info.kind,
            std::slice::from_ref(&obj),
            &self.include,
            jiff::Timestamp::now(),
        );
        if !self.first_table {
            t["columnDefinitions"] = Value::Null;
        }
        self.first_table = false;
        if let Some(rv) = object::resource_version(&obj) {
            t["metadata"] = json!({"resourceVersion": rv});
        }
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": t})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// The line for a cache event, or None when this watcher does not see it.
    fn line_for(&mut self, ev: &CacheEvent) -> Option<Bytes> {
        if self.output == Output::Json && self.filter.is_everything() {
            return Some(ev.json_line());
        }
        let now = self.filter.matches_cached(&ev.object);
        let before = ev
            .prev
            .as_ref()
            .is_some_and(|p| self.filter.matches_cached(p));
        let kind = match ev.kind {
            EventType::Added if now => "ADDED",
            EventType::Modified if now && before => "MODIFIED",
            EventType::Modified if now => "ADDED",
            EventType::Modified if before => "DELETED",
            EventType::Deleted if before || now => "DELETED",
            _ => return None,
        };
        if self.output == Output::Json && kind == ev.kind.as_str() {
            return Some(ev.json_line());
        }
        Some(self.encode(kind, &ev.object))
    }

    fn bookmark(&self, rev: Revision, initial_end: bool) -> Bytes {
        let info = self.filter.info;
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let mut line = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": {"kind": info.kind, "apiVersion": info.api_version(), "metadata": meta}})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    async fn run(
        &mut self,
        sub: crate::watchcache::Subscription,
        start_rev: Revision,
        initial_end: bool,
        bookmarks: bool,
        timeout: Duration,
        cache: Arc<WatchCache>,
    ) -> Result<(), ()> {
        let crate::watchcache::Subscription {
            backlog,
            mut rx,
            mut epoch,
            ..
        } = sub;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = 0;
        for ev in &backlog {
            last = last.max(ev.revision);
            if let Some(line) = self.line_for(ev) {
                self.send(line).await?;
            }
        }
        let mut last = last.max(start_rev);
        if initial_end {
            let b = self.bookmark(last.max(1), true);
            self.send(b).await?;
        }
        let mut ticker = tokio::time::interval(Duration::from_secs(10));
        ticker.tick().await;
        let _ = cache;
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(ev) => {
                        if ev.revision <= last {
                            continue;
                        }
                        last = ev.revision;
                        if let Some(line) = self.line_for(&ev) {
                            self.send(line).await?;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = ticker.tick(), if bookmarks => {
                    let b = self.bookmark(last.max(1), false);
                    self.send(b).await?;
                }
                _ = epoch.changed() => return Ok(()),
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                _ = self.tx.closed() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(matches!(
            parse_path("/api/v1/namespaces/default/services"),
            Some(Target::Collection { ns: Some(_), .. })
        ));
        assert!(matches!(
            parse_path("/api/v1/services"),
            Some(Target::Collection { ns: None, .. })
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/default"),
            Some(Target::Object { .. })
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/x/status"),
            Some(Target::Object { sub: Some(_), .. })
        ));
        assert!(matches!(
            parse_path("/api/v1/namespaces/x/services/web/status"),
            Some(Target::Object { sub: Some(_), .. })
        ));
        assert!(matches!(
            parse_path("/apis/discovery.k8s.io/v1/namespaces/x/endpointslices"),
            Some(Target::Collection { .. })
        ));
        assert!(parse_path("/api/v1/namespaces/x/nodes").is_none());
        assert!(parse_path("/api/v1/bogus").is_none());
        assert!(parse_path("/api/v2/services").is_none());
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1")).unwrap();
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(percent_decode("%zz%"), "%zz%");
    }

    #[test]
    fn continue_tokens() {
        let t = encode_continue(42, "default/web");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "default/web".to_string())
        );
        assert!(decode_continue("garbage!").is_err());
    }
}
