//! The watch cache: ONE store watch per resource feeding an in-memory copy of every object
//! and a bounded history of recent events, fanned out to any number of API watchers.
//!
//! Owns: the current state per resource (for `resourceVersion=0` lists and initial events),
//! event history (resuming watches from a recent resourceVersion), and the broadcast.
//! Must not: filter or encode for clients; `handlers` does that per watcher.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::StreamExt;
use portico_store::{EventKind, Revision, Store};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::error::ApiError;
use crate::object::decode_stored;
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

/// One change, shared by every watcher.
pub struct CacheEvent {
    pub revision: Revision,
    pub kind: EventType,
    pub object: Arc<Value>,
    /// The state before the change (for selector transitions).
    pub prev: Option<Arc<Value>>,
    /// The plain JSON watch line, encoded once for all unfiltered JSON watchers.
    line: OnceLock<Bytes>,
}

impl CacheEvent {
    pub fn new(
        revision: Revision,
        kind: EventType,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) -> Self {
        CacheEvent {
            revision,
            kind,
            object,
            prev,
            line: OnceLock::new(),
        }
    }
    /// `{"type":…,"object":…}\n`, encoded once.
    pub fn json_line(&self) -> Bytes {
        self.line
            .get_or_init(|| {
                let mut buf = Vec::with_capacity(512);
                buf.extend_from_slice(b"{\"type\":\"");
                buf.extend_from_slice(self.kind.as_str().as_bytes());
                buf.extend_from_slice(b"\",\"object\":");
                let _ = serde_json::to_writer(&mut buf, &*self.object);
                buf.extend_from_slice(b"}\n");
                Bytes::from(buf)
            })
            .clone()
    }
}

struct Inner {
    /// Revision of the last event applied (or of the initial list).
    revision: Revision,
    /// History covers every event with revision > `oldest`.
    oldest: Revision,
    objects: BTreeMap<String, Arc<Value>>,
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
                objects.insert(kv.key.clone(), Arc::new(decode_stored(kv)?));
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
                    let Ok(obj) = decode_stored(&ev.kv) else {
                        continue;
                    };
                    let obj = Arc::new(obj);
                    let prev = inner.objects.insert(key, obj.clone());
                    let kind = if prev.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    };
                    CacheEvent::new(rev, kind, obj, prev)
                }
                EventKind::Delete => {
                    let Some(prev) = inner.objects.remove(&key) else {
                        continue;
                    };
                    let mut last = (*prev).clone();
                    crate::object::meta_mut(&mut last)
                        .insert("resourceVersion".into(), Value::String(rev.to_string()));
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

    /// Every current object (with its resourceVersion) and the cache revision.
    pub fn snapshot(&self, prefix: &str) -> (Vec<Arc<Value>>, Revision) {
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
                let rev = crate::object::resource_version(obj)
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                backlog.push(Arc::new(CacheEvent::new(
                    rev,
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
