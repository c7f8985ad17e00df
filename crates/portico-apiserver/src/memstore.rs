//! An in-memory [`Store`] with etcd's semantics, for tests and as a fallback.
//!
//! Owns: revisions, compare-and-swap, lists at a past revision (by undoing newer history),
//! watches from a revision and compaction. Must not: persist anything; it is a test aid.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use portico_store::{
    Compare, Error, Event, EventKind, KeyValue, ListResult, Op, Result, Revision, Store,
    TxnResponse, WatchStream,
};
use tokio::sync::broadcast;

type Batch = Arc<(Revision, Vec<Event>)>;

struct State {
    revision: Revision,
    compacted: Revision,
    data: BTreeMap<String, KeyValue>,
    /// Every committed batch after `compacted`, oldest first.
    history: Vec<Batch>,
}

/// The in-memory store. Cheap to create; every instance is independent.
pub struct MemStore {
    state: Mutex<State>,
    events: broadcast::Sender<Batch>,
}

impl MemStore {
    pub fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(65536);
        Arc::new(MemStore {
            state: Mutex::new(State {
                revision: 1,
                compacted: 0,
                data: BTreeMap::new(),
                history: Vec::new(),
            }),
            events,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn under(prefix: &str, key: &str) -> bool {
    key.starts_with(prefix)
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().data.get(key).cloned())
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<ListResult> {
        let st = self.lock();
        let at = revision.unwrap_or(st.revision);
        if at > st.revision {
            return Err(Error::FutureRevision(at));
        }
        if at < st.compacted {
            return Err(Error::Compacted {
                requested: at,
                compacted: st.compacted,
            });
        }
        // Start from the latest state and undo every batch newer than `at`.
        let mut view: BTreeMap<String, KeyValue> = st
            .data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| under(prefix, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for batch in st.history.iter().rev() {
            if batch.0 <= at {
                break;
            }
            for ev in batch.1.iter().rev() {
                if !under(prefix, &ev.kv.key) {
                    continue;
                }
                match &ev.prev {
                    Some(prev) => view.insert(ev.kv.key.clone(), prev.clone()),
                    None => view.remove(&ev.kv.key),
                };
            }
        }
        let mut kvs = Vec::new();
        let mut more = false;
        for (k, v) in view {
            if let Some(s) = start_after
                && k.as_str() <= s
            {
                continue;
            }
            if limit > 0 && kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(v);
        }
        Ok(ListResult {
            kvs,
            revision: at,
            more,
        })
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResponse> {
        let mut st = self.lock();
        for c in &compares {
            let Compare::ModRevision(key, rev) = c;
            let actual = st.data.get(key).map(|kv| kv.mod_revision).unwrap_or(0);
            if actual != *rev {
                return Ok(TxnResponse {
                    succeeded: false,
                    revision: st.revision,
                });
            }
        }
        if ops.is_empty() {
            return Ok(TxnResponse {
                succeeded: true,
                revision: st.revision,
            });
        }
        let rev = st.revision + 1;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put(key, value) => {
                    let prev = st.data.get(&key).cloned();
                    let create_revision = prev.as_ref().map(|p| p.create_revision).unwrap_or(rev);
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision,
                        mod_revision: rev,
                    };
                    st.data.insert(key, kv.clone());
                    events.push(Event {
                        kind: EventKind::Put,
                        kv,
                        prev,
                    });
                }
                Op::Delete(key) => {
                    if let Some(prev) = st.data.remove(&key) {
                        let kv = KeyValue {
                            key,
                            value: Bytes::new(),
                            create_revision: 0,
                            mod_revision: rev,
                        };
                        events.push(Event {
                            kind: EventKind::Delete,
                            kv,
                            prev: Some(prev),
                        });
                    }
                }
            }
        }
        if events.is_empty() {
            return Ok(TxnResponse {
                succeeded: true,
                revision: st.revision,
            });
        }
        st.revision = rev;
        let batch = Arc::new((rev, events));
        st.history.push(batch.clone());
        let _ = self.events.send(batch);
        Ok(TxnResponse {
            succeeded: true,
            revision: rev,
        })
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        let (backlog, rx) = {
            let st = self.lock();
            if after_revision < st.compacted {
                return Err(Error::Compacted {
                    requested: after_revision + 1,
                    compacted: st.compacted,
                });
            }
            let backlog: Vec<Batch> = st
                .history
                .iter()
                .filter(|b| b.0 > after_revision)
                .cloned()
                .collect();
            (backlog, self.events.subscribe())
        };
        let prefix = prefix.to_string();
        let filter = move |b: &Batch, after: Revision, prefix: &str| -> Option<Vec<Event>> {
            if b.0 <= after {
                return None;
            }
            let evs: Vec<Event> =
                b.1.iter()
                    .filter(|e| under(prefix, &e.kv.key))
                    .cloned()
                    .collect();
            if evs.is_empty() { None } else { Some(evs) }
        };
        let p1 = prefix.clone();
        let first = futures::stream::iter(
            backlog
                .into_iter()
                .filter_map(move |b| filter(&b, after_revision, &p1).map(Ok)),
        );
        let last_backlog = after_revision;
        let live = futures::stream::unfold((rx, prefix), move |(mut rx, prefix)| async move {
            loop {
                match rx.recv().await {
                    Ok(b) => {
                        if let Some(evs) = filter(&b, last_backlog, &prefix) {
                            return Some((Ok(evs), (rx, prefix)));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((
                            Err(Error::Internal("watcher fell behind".into())),
                            (rx, prefix),
                        ));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        // The backlog and the live stream can overlap; drop batches already delivered.
        let mut seen = after_revision;
        let merged = first.chain(live).filter_map(move |item| {
            let out = match item {
                Ok(evs) => {
                    let rev = evs.first().map(|e| e.kv.mod_revision).unwrap_or(0);
                    if rev <= seen {
                        None
                    } else {
                        seen = rev;
                        Some(Ok(evs))
                    }
                }
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(out)
        });
        Ok(merged.boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.lock().revision)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut st = self.lock();
        if revision > st.compacted {
            st.compacted = revision.min(st.revision);
            let c = st.compacted;
            st.history.retain(|b| b.0 > c);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cas_list_watch_compact() {
        let s = MemStore::new();
        let put = |k: &str, v: &str| Op::Put(k.into(), Bytes::from(v.to_string()));
        let r = s
            .txn(
                vec![Compare::ModRevision("/a/1".into(), 0)],
                vec![put("/a/1", "x")],
            )
            .await
            .unwrap();
        assert!(r.succeeded);
        assert_eq!(r.revision, 2);
        let r = s
            .txn(
                vec![Compare::ModRevision("/a/1".into(), 0)],
                vec![put("/a/1", "y")],
            )
            .await
            .unwrap();
        assert!(!r.succeeded);
        s.txn(vec![], vec![put("/a/2", "z"), put("/b/1", "q")])
            .await
            .unwrap();
        s.txn(vec![], vec![Op::Delete("/a/1".into())])
            .await
            .unwrap();
        let now = s.list("/a/", None, 0, None).await.unwrap();
        assert_eq!(now.kvs.len(), 1);
        let then = s.list("/a/", None, 0, Some(2)).await.unwrap();
        assert_eq!(then.kvs.len(), 1);
        assert_eq!(then.kvs[0].key, "/a/1");
        let page = s.list("/a/", None, 1, Some(3)).await.unwrap();
        assert!(page.more);
        let mut w = s.watch("/a/", 2).await.unwrap();
        let b = w.next().await.unwrap().unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].kv.key, "/a/2");
        let b = w.next().await.unwrap().unwrap();
        assert_eq!(b[0].kind, EventKind::Delete);
        s.compact(3).await.unwrap();
        assert!(matches!(
            s.watch("/a/", 1).await,
            Err(Error::Compacted { .. })
        ));
        assert!(matches!(
            s.list("/a/", None, 0, Some(2)).await,
            Err(Error::Compacted { .. })
        ));
    }
}
