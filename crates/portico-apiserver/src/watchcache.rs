//! The watch cache: ONE store watch per resource feeding an in-memory copy of every object
//! and a bounded history of recent events, fanned out to any number of API watchers.
//!
//! Owns: the current state per resource (for `resourceVersion=0` lists and initial events),
//! event history (resuming watches from a recent resourceVersion), and the broadcast.
//! Objects are held compactly as [`CachedObject`]: the JSON as served (encoded once, inside
//! the watch line of the event that produced it) plus the few fields selectors need, never
//! as a `serde_json::Value` tree (which costs many times the JSON size).
//! Must not: filter or encode for clients; `handlers` does that per watcher.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use portico_store::{EventKind, KeyValue, Revision, Store};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::{broadcast, watch};

use crate::error::ApiError;
use crate::resources::ResourceInfo;

/// How many events per resource a watcher can resume from.
const HISTORY: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One object as the cache holds it: its JSON (with `metadata.resourceVersion`) and the
/// values label and field selectors look at, extracted once.
#[derive(Debug)]
pub struct CachedObject {
    /// `{"type":<line_kind>,"object":<json>}\n`; `json` is a slice of it.
    line: Bytes,
    line_kind: EventType,
    json: Bytes,
    revision: Revision,
    name: String,
    namespace: String,
    /// `metadata.labels` as stored (JSON text): decoded only when a label selector asks, as a
    /// map of a few labels costs several times its text.
    labels: Option<Box<str>>,
    /// Values of the resource's field labels, in `info.field_labels` order.
    fields: Box<[String]>,
    /// `metadata.deletionTimestamp` is set (the object is terminating).
    deleting: bool,
    info: &'static ResourceInfo,
}

impl CachedObject {
    /// Builds the cached form of a stored value at its mod revision.
    pub fn from_stored(info: &'static ResourceInfo, kv: &KeyValue) -> Result<Self, ApiError> {
        Self::build(info, &kv.value, kv.mod_revision, EventType::Added)
            .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))
    }

    /// Encodes `stored` (a JSON object) with `metadata.resourceVersion` set to `revision`,
    /// without building a `Value` tree of the whole object.
    fn build(
        info: &'static ResourceInfo,
        stored: &[u8],
        revision: Revision,
        line_kind: EventType,
    ) -> Result<Self, serde_json::Error> {
        let (top, meta) = parse_stored(stored)?;
        let name = meta.string("name");
        let namespace = meta.namespace();
        let deleting = meta
            .0
            .get("deletionTimestamp")
            .is_some_and(|raw| raw.get() != "null");
        let labels = meta.0.get("labels").map(|raw| Box::from(raw.get()));
        let fields = if info.field_labels.is_empty() {
            Box::default()
        } else {
            // Only the values the field labels read are decoded.
            let mut fields = Vec::with_capacity(info.field_labels.len());
            for f in info.field_labels {
                let pointer = crate::resources::field_pointer(info, f);
                let segments: Vec<&str> = pointer.split('/').skip(1).collect();
                let at = extract(&top, &segments)?;
                fields.push(
                    crate::resources::field_value_at(info, f, at.as_ref()).unwrap_or_default(),
                );
            }
            fields.into_boxed_slice()
        };
        let prefix = line_prefix(line_kind);
        let mut buf = Vec::with_capacity(stored.len() + prefix.len() + 48);
        buf.extend_from_slice(prefix.as_bytes());
        write_with_revision(stored, &top, &meta, revision, &mut buf)?;
        let end = buf.len();
        buf.extend_from_slice(b"}\n");
        let line = Bytes::from(buf);
        let json = line.slice(prefix.len()..end);
        Ok(CachedObject {
            line,
            line_kind,
            json,
            revision,
            name,
            namespace,
            labels,
            fields,
            deleting,
            info,
        })
    }

    /// The same object as of a later revision (the last state of a deleted object).
    fn at_revision(&self, revision: Revision, line_kind: EventType) -> Result<Self, ApiError> {
        Self::build(self.info, &self.json, revision, line_kind)
            .map_err(|e| ApiError::internal(format!("cached object is not JSON: {e}")))
    }

    /// The object's JSON, with `metadata.resourceVersion`.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The object as a `Value` (for tables and other rewrites).
    pub fn to_value(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::internal(format!("cached object is not JSON: {e}")))
    }

    pub fn revision(&self) -> Revision {
        self.revision
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether deletion was requested (`metadata.deletionTimestamp` is set).
    pub fn deleting(&self) -> bool {
        self.deleting
    }

    /// `metadata.namespace`, empty for cluster-scoped objects.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `metadata.labels` as `object::labels` reads them.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.labels
            .as_deref()
            .map(labels_from_json)
            .unwrap_or_default()
    }

    /// A field selector's value, as `resources::field_value` renders it (missing = empty).
    pub fn field(&self, field: &str) -> Option<String> {
        match field {
            "metadata.name" => Some(self.name.clone()),
            "metadata.namespace" => Some(self.namespace.clone()),
            other => self
                .info
                .field_labels
                .iter()
                .position(|f| *f == other)
                .and_then(|i| self.fields.get(i).cloned()),
        }
    }

    /// `{"type":<kind>,"object":<json>}\n`, shared with the producing event when it can be.
    pub fn line(&self, kind: &str) -> Bytes {
        if kind == self.line_kind.as_str() {
            return self.line.clone();
        }
        let mut buf = Vec::with_capacity(self.json.len() + 32);
        buf.extend_from_slice(b"{\"type\":\"");
        buf.extend_from_slice(kind.as_bytes());
        buf.extend_from_slice(b"\",\"object\":");
        buf.extend_from_slice(&self.json);
        buf.extend_from_slice(b"}\n");
        Bytes::from(buf)
    }
}

/// Members of a JSON object, their values left encoded.
type Members<'a> = BTreeMap<String, &'a RawValue>;

/// The metadata of a stored object, each member decoded only when asked for.
pub struct StoredMeta<'a>(Members<'a>);

impl StoredMeta<'_> {
    /// A string member; empty when missing or not a string.
    fn string(&self, key: &str) -> String {
        self.0
            .get(key)
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .unwrap_or_default()
    }

    pub fn namespace(&self) -> String {
        self.string("namespace")
    }

    /// `metadata.labels` as `object::labels` reads them.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.0
            .get("labels")
            .map(|raw| labels_from_json(raw.get()))
            .unwrap_or_default()
    }
}

/// Labels from their JSON text as `object::labels` reads them: a non-string value counts as
/// "", anything but an object as no labels.
fn labels_from_json(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str::<Map<String, Value>>(text)
        .map(|l| {
            l.into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The value at `segments` under the members `top`, decoding only the containers on the way.
fn extract(top: &Members, segments: &[&str]) -> Result<Option<Value>, serde_json::Error> {
    let Some((first, rest)) = segments.split_first() else {
        return Ok(None);
    };
    let Some(mut raw) = top.get(*first).copied() else {
        return Ok(None);
    };
    for segment in rest {
        let next = match segment.parse::<usize>() {
            Ok(i) if raw.get().trim_start().starts_with('[') => {
                serde_json::from_str::<Vec<&RawValue>>(raw.get())?
                    .get(i)
                    .copied()
            }
            _ if raw.get().trim_start().starts_with('{') => {
                serde_json::from_str::<Members>(raw.get())?
                    .get(*segment)
                    .copied()
            }
            _ => None,
        };
        let Some(next) = next else {
            return Ok(None);
        };
        raw = next;
    }
    serde_json::from_str(raw.get()).map(Some)
}

/// A stored object split into its top-level members and its metadata members, all undecoded.
/// A missing or non-object `metadata` counts as empty (as `object::meta_mut` treats it).
fn parse_stored(stored: &[u8]) -> Result<(Members<'_>, StoredMeta<'_>), serde_json::Error> {
    let top: Members = serde_json::from_slice(stored)?;
    let meta = top
        .get("metadata")
        .and_then(|raw| serde_json::from_str::<Members>(raw.get()).ok())
        .unwrap_or_default();
    Ok((top, StoredMeta(meta)))
}

/// Writes the object with `metadata.resourceVersion` set, members in `serde_json`'s order
/// (sorted, as a `Value` writes them) and their values copied as stored.
fn write_with_revision(
    stored: &[u8],
    top: &Members,
    meta: &StoredMeta,
    revision: Revision,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    if let Some(at) = revision_insertion_point(stored, top, meta) {
        // The stored bytes are already in that order: one copy with the member spliced in.
        let (before, after) = stored.split_at(at.offset);
        out.reserve(stored.len() + 40);
        out.extend_from_slice(before);
        if at.after_member {
            out.push(b',');
        }
        out.extend_from_slice(b"\"resourceVersion\":\"");
        out.extend_from_slice(revision.to_string().as_bytes());
        out.push(b'"');
        if !at.after_member && !meta.0.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(after);
        return Ok(());
    }
    let rv = RawValue::from_string(format!("\"{revision}\""))?;
    let mut meta: BTreeMap<&str, &RawValue> =
        meta.0.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    meta.insert("resourceVersion", &rv);
    let meta_raw = serde_json::value::to_raw_value(&meta)?;
    let mut top: BTreeMap<&str, &RawValue> = top.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    top.insert("metadata", &meta_raw);
    serde_json::to_writer(out, &top)
}

/// Where `"resourceVersion":…` goes in the stored bytes.
struct Insertion {
    offset: usize,
    /// Right after a member (a comma first), else right after the metadata's `{`.
    after_member: bool,
}

/// Where `metadata.resourceVersion` belongs in `stored` so that the result is exactly what
/// re-encoding the members in order would give: only for compact objects whose members are
/// stored in sorted order (as this server writes them) and carry no resourceVersion yet.
fn revision_insertion_point(stored: &[u8], top: &Members, meta: &StoredMeta) -> Option<Insertion> {
    let base = stored.as_ptr() as usize;
    let span = |raw: &RawValue| {
        let start = (raw.get().as_ptr() as usize).checked_sub(base)?;
        Some((start, start + raw.get().len()))
    };
    // Compact and sorted: each member starts right after the previous one, `,"key":`.
    let compact_sorted = |members: &Members, open: usize| -> Option<()> {
        let mut at = open + 1;
        for (i, (key, raw)) in members.iter().enumerate() {
            let plain = !key.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
            let key_len = if plain {
                key.len() + 2
            } else {
                serde_json::to_string(key).ok()?.len()
            };
            let expected = at + usize::from(i > 0) + key_len + 1;
            let (start, end) = span(raw)?;
            if start != expected {
                return None;
            }
            at = end;
        }
        (stored.get(at) == Some(&b'}')).then_some(())
    };
    if stored.first() != Some(&b'{') || meta.0.contains_key("resourceVersion") {
        return None;
    }
    compact_sorted(top, 0)?;
    let (meta_start, _) = span(top.get("metadata")?)?;
    compact_sorted(&meta.0, meta_start)?;
    let previous = meta
        .0
        .range::<str, _>((
            std::ops::Bound::Unbounded,
            std::ops::Bound::Excluded("resourceVersion"),
        ))
        .next_back()
        .map(|(_, raw)| raw);
    Some(match previous {
        Some(raw) => Insertion {
            offset: span(raw)?.1,
            after_member: true,
        },
        None => Insertion {
            offset: meta_start + 1,
            after_member: false,
        },
    })
}

/// Appends a stored object as served (with `metadata.resourceVersion`) to `out` and returns
/// its metadata, without decoding the rest: for lists straight from the store.
pub fn encode_stored<'a>(
    stored: &'a [u8],
    revision: Revision,
    out: &mut Vec<u8>,
) -> Result<StoredMeta<'a>, ApiError> {
    let encode = |out: &mut Vec<u8>| {
        let (top, meta) = parse_stored(stored)?;
        write_with_revision(stored, &top, &meta, revision, out)?;
        Ok::<_, serde_json::Error>(meta)
    };
    encode(out).map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))
}

fn line_prefix(kind: EventType) -> &'static str {
    match kind {
        EventType::Added => "{\"type\":\"ADDED\",\"object\":",
        EventType::Modified => "{\"type\":\"MODIFIED\",\"object\":",
        EventType::Deleted => "{\"type\":\"DELETED\",\"object\":",
    }
}

/// One change, shared by every watcher.
pub struct CacheEvent {
    pub revision: Revision,
    pub kind: EventType,
    pub object: Arc<CachedObject>,
    /// The state before the change (for selector transitions).
    pub prev: Option<Arc<CachedObject>>,
}

impl CacheEvent {
    pub fn new(
        revision: Revision,
        kind: EventType,
        object: Arc<CachedObject>,
        prev: Option<Arc<CachedObject>>,
    ) -> Self {
        CacheEvent {
            revision,
            kind,
            object,
            prev,
        }
    }
    /// `{"type":…,"object":…}\n`; the object's own encoding when the types agree.
    pub fn json_line(&self) -> Bytes {
        self.object.line(self.kind.as_str())
    }
}

struct Inner {
    /// Revision of the last event applied (or of the initial list).
    revision: Revision,
    /// History covers every event with revision > `oldest`.
    oldest: Revision,
    objects: BTreeMap<String, Arc<CachedObject>>,
    history: VecDeque<Arc<CacheEvent>>,
    /// Bumped on every relist; watchers of an older epoch are closed.
    epoch: u64,
}

/// The cache of one resource.
pub struct WatchCache {
    pub info: &'static ResourceInfo,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<CacheEvent>>,
    ready: watch::Sender<bool>,
    epoch_tx: watch::Sender<u64>,
}

/// What a new watcher gets: the events to send first, then a live receiver.
pub struct Subscription {
    pub backlog: Vec<Arc<CacheEvent>>,
    pub rx: broadcast::Receiver<Arc<CacheEvent>>,
    /// The cache revision when subscribed (for bookmarks).
    pub revision: Revision,
    pub epoch: watch::Receiver<u64>,
}

impl WatchCache {
    pub fn new(info: &'static ResourceInfo) -> Arc<Self> {
        let (tx, _) = broadcast::channel(16384);
        Arc::new(WatchCache {
            info,
            inner: Mutex::new(Inner {
                revision: 0,
                oldest: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                epoch: 0,
            }),
            tx,
            ready: watch::channel(false).0,
            epoch_tx: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs forever: list, then watch; relists when the store watch fails.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        let prefix = self.info.prefix();
        loop {
            match self.relist(&*store, &prefix).await {
                Ok(rev) => {
                    self.ready.send_replace(true);
                    match store.watch(&prefix, rev).await {
                        Ok(mut stream) => {
                            while let Some(batch) = stream.next().await {
                                match batch {
                                    Ok(evs) => self.apply(evs),
                                    Err(e) => {
                                        tracing::warn!(
                                            resource = self.info.plural,
                                            "store watch failed: {e}"
                                        );
                                        break;
                                    }
                                }
                            }
                        }
                        Err(e) => tracing::warn!(resource = self.info.plural, "store watch: {e}"),
                    }
                }
                Err(e) => tracing::warn!(resource = self.info.plural, "cache list: {e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn relist(&self, store: &dyn Store, prefix: &str) -> Result<Revision, ApiError> {
        let mut objects = BTreeMap::new();
        let mut start: Option<String> = None;
        let mut at = None;
        loop {
            let page = store.list(prefix, start.as_deref(), 1000, at).await?;
            at = Some(page.revision);
            for kv in &page.kvs {
                objects.insert(
                    kv.key.clone(),
                    Arc::new(CachedObject::from_stored(self.info, kv)?),
                );
            }
            start = page.kvs.last().map(|kv| kv.key.clone());
            if !page.more || start.is_none() {
                break;
            }
        }
        let rev = at.unwrap_or(0);
        let mut inner = self.lock();
        let first = inner.epoch == 0 && inner.revision == 0;
        inner.objects = objects;
        inner.revision = rev;
        inner.oldest = rev;
        inner.history.clear();
        if !first {
            inner.epoch += 1;
            self.epoch_tx.send_replace(inner.epoch);
        }
        Ok(rev)
    }

    fn apply(&self, evs: Vec<portico_store::Event>) {
        let mut inner = self.lock();
        for ev in evs {
            let rev = ev.kv.mod_revision;
            let key = ev.kv.key.clone();
            let cache_ev = match ev.kind {
                EventKind::Put => {
                    let kind = if inner.objects.contains_key(&key) {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    let Ok(obj) = CachedObject::build(self.info, &ev.kv.value, rev, kind) else {
                        continue;
                    };
                    let obj = Arc::new(obj);
                    let prev = inner.objects.insert(key, obj.clone());
                    CacheEvent::new(rev, kind, obj, prev)
                }
                EventKind::Delete => {
                    let Some(prev) = inner.objects.remove(&key) else {
                        continue;
                    };
                    let Ok(last) = prev.at_revision(rev, EventType::Deleted) else {
                        continue;
                    };
                    CacheEvent::new(rev, EventType::Deleted, Arc::new(last), Some(prev))
                }
            };
            let cache_ev = Arc::new(cache_ev);
            inner.revision = rev;
            inner.history.push_back(cache_ev.clone());
            while inner.history.len() > HISTORY {
                if let Some(old) = inner.history.pop_front() {
                    inner.oldest = old.revision;
                }
            }
            let _ = self.tx.send(cache_ev);
        }
    }

    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    /// The current object at `key`, if the cache holds it.
    pub fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.lock().objects.get(key).cloned()
    }

    /// Every current object (with its resourceVersion) and the cache revision.
    pub fn snapshot(&self, prefix: &str) -> (Vec<Arc<CachedObject>>, Revision) {
        let inner = self.lock();
        let objs = inner
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (objs, inner.revision)
    }

    /// Subscribes for events after `after`. With `initial`, the backlog starts with synthetic
    /// ADDED events for the current state (resourceVersion "0" or unset semantics).
    pub fn subscribe(
        &self,
        after: Option<Revision>,
        initial_prefix: Option<&str>,
    ) -> Result<Subscription, ApiError> {
        let inner = self.lock();
        let mut backlog = Vec::new();
        let revision = inner.revision;
        if let Some(prefix) = initial_prefix {
            for (_, obj) in inner
                .objects
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                backlog.push(Arc::new(CacheEvent::new(
                    obj.revision(),
                    EventType::Added,
                    obj.clone(),
                    None,
                )));
            }
        } else if let Some(after) = after
            && after < inner.revision
        {
            if after < inner.oldest {
                return Err(ApiError::gone(format!(
                    "too old resource version: {after} ({})",
                    inner.oldest + 1
                )));
            }
            backlog.extend(inner.history.iter().filter(|e| e.revision > after).cloned());
        }
        Ok(Subscription {
            backlog,
            rx: self.tx.subscribe(),
            revision,
            epoch: self.epoch_tx.subscribe(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_plural;

    fn kv(value: &str, rev: Revision) -> KeyValue {
        KeyValue {
            key: "/registry/x".into(),
            value: Bytes::from(value.to_string()),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    #[test]
    fn cached_json_is_the_decoded_object_with_its_resource_version() {
        let cases = [
            (
                "services",
                r#"{"apiVersion":"v1","kind":"Service","metadata":{"labels":{"app":"web"},"name":"web","namespace":"default","uid":"u"},"spec":{"clusterIP":"10.0.0.1","type":"ClusterIP"}}"#,
            ),
            (
                "namespaces",
                r#"{"kind":"Namespace","metadata":{"name":"a"}}"#,
            ),
            ("namespaces", r#"{"kind":"Namespace"}"#),
            (
                "pods",
                r#"{"metadata":{"name":"p","namespace":"n","labels":{"x":7}},"spec":{"nodeName":"n1"},"status":{"phase":"Running","podIPs":[{"ip":"10.1.0.1"}]}}"#,
            ),
            (
                "pods",
                r#"{"metadata":{"name":"q"},"spec":{"hostNetwork":true,"restartPolicy":7},"status":{"podIP":null,"podIPs":[]}}"#,
            ),
            (
                "pods",
                r#"{"metadata":{"name":"r"},"spec":"odd","status":[1]}"#,
            ),
            (
                "services",
                r#"{"metadata":{"name":"s"},"spec":{"clusterIP":{"a":1},"type":["x"]}}"#,
            ),
            (
                "nodes",
                r#"{"metadata":{"name":"n"},"spec":{"unschedulable":true}}"#,
            ),
            // Where resourceVersion goes: first, last, into an empty metadata, and the slow
            // path for stored text that is not compact or not sorted, or already has one.
            ("nodes", r#"{"metadata":{"uid":"u"}}"#),
            (
                "nodes",
                r#"{"metadata":{"annotations":{"a":"b"},"name":"n"}}"#,
            ),
            ("nodes", r#"{"metadata":{}}"#),
            (
                "nodes",
                r#"{"kind": "Node", "metadata": {"name": "n", "uid": "u"}}"#,
            ),
            (
                "nodes",
                r#"{"metadata":{"uid":"u","name":"n"},"kind":"Node"}"#,
            ),
            (
                "nodes",
                r#"{"metadata":{"name":"n","resourceVersion":"3"}}"#,
            ),
            ("nodes", r#"{"metadata":{"na\u006de":"n","nam\"e":"x"}}"#),
            (
                "events",
                r#"{"metadata":{"name":"e","namespace":"d"},"involvedObject":{"kind":"Pod","name":"p","uid":"u"},"reason":"R","source":{"component":"c"},"type":"Normal"}"#,
            ),
        ];
        for (plural, stored) in cases {
            let info = by_plural(plural).expect("resource");
            let obj = CachedObject::from_stored(info, &kv(stored, 42)).expect("cached");
            let want = crate::object::decode_stored(&kv(stored, 42)).expect("decoded");
            assert_eq!(
                obj.json().as_ref(),
                serde_json::to_vec(&want).expect("encoded").as_slice(),
                "{plural}: {stored}"
            );
            assert_eq!(obj.to_value().expect("value"), want);
            let mut out = b"x".to_vec();
            let meta = encode_stored(stored.as_bytes(), 42, &mut out).expect("encoded");
            assert_eq!(&out[1..], obj.json().as_ref());
            assert_eq!(meta.labels(), crate::object::labels(&want));
            assert_eq!(
                meta.namespace(),
                crate::object::meta_str(&want, "namespace").unwrap_or_default()
            );
            assert_eq!(obj.revision(), 42);
            assert_eq!(obj.name(), crate::object::name(&want));
            assert_eq!(obj.labels(), crate::object::labels(&want));
            for f in info
                .field_labels
                .iter()
                .chain(&["metadata.name", "metadata.namespace"])
            {
                assert_eq!(
                    obj.field(f).unwrap_or_default(),
                    crate::resources::field_value(info, &want, f).unwrap_or_default(),
                    "{plural} {f}"
                );
            }
        }
        let info = by_plural("services").expect("services");
        assert!(CachedObject::from_stored(info, &kv("[1]", 1)).is_err());
        assert!(CachedObject::from_stored(info, &kv("{", 1)).is_err());
    }

    #[test]
    fn lines_share_the_object_encoding() {
        let info = by_plural("services").expect("services");
        let stored = r#"{"metadata":{"name":"web","namespace":"default"}}"#;
        let obj = CachedObject::build(info, stored.as_bytes(), 7, EventType::Modified).expect("ok");
        let line = obj.line("MODIFIED");
        assert_eq!(
            line.as_ref(),
            br#"{"type":"MODIFIED","object":{"metadata":{"name":"web","namespace":"default","resourceVersion":"7"}}}
"#
        );
        assert_eq!(
            obj.line("ADDED").as_ref(),
            br#"{"type":"ADDED","object":{"metadata":{"name":"web","namespace":"default","resourceVersion":"7"}}}
"#
        );
        let gone = obj.at_revision(9, EventType::Deleted).expect("deleted");
        assert_eq!(
            gone.json().as_ref(),
            br#"{"metadata":{"name":"web","namespace":"default","resourceVersion":"9"}}"#
        );
        assert_eq!(gone.revision(), 9);
    }
}
