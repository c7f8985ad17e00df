//! The etcd backend: the [`Store`] trait over etcd's v3 API (`etcd-client`), with every key
//! under a configurable prefix (like kube-apiserver's `--etcd-prefix`).
//!
//! Compares map to etcd `mod_revision ==` compares (etcd treats a missing key's mod revision
//! as 0, so `ModRevision(key, 0)` means "absent"). Lists use range/limit/revision; watches use
//! `prev_kv` and `start_revision = after + 1`; compaction errors become [`Error::Compacted`].
//! Must not: know about Kubernetes objects or HTTP.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions,
};
use futures::StreamExt;

use crate::{
    Compare, Error, Event, EventKind, KeyValue, ListResult, Op, Result, Revision, Store,
    TxnResponse, WatchStream,
};

/// A store on an etcd cluster. Cheap to share as `Arc<EtcdStore>`.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end for a
/// prefix); `"\0"` (all keys) for an empty prefix or one of only `0xff` bytes.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

enum Context {
    Revision(Revision),
    None,
}

/// Maps an etcd client error; `requested` fills [`Error::Compacted`] when etcd says so.
fn map_error(error: etcd_client::Error, context: Context) -> Error {
    use etcd_client::Error as E;
    match error {
        E::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("required revision has been compacted") {
                let requested = match context {
                    Context::Revision(revision) => revision,
                    Context::None => 0,
                };
                // The caller fills in the real compacted revision when it can find it.
                Error::Compacted {
                    requested,
                    compacted: requested + 1,
                }
            } else if message.contains("required revision is a future revision") {
                match context {
                    Context::Revision(revision) => Error::FutureRevision(revision),
                    Context::None => Error::FutureRevision(0),
                }
            } else if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) {
                Error::Unavailable(format!("etcd: {message}"))
            } else {
                Error::Internal(format!("etcd: {message}"))
            }
        }
        E::TransportError(error) => Error::Unavailable(format!("etcd transport: {error}")),
        E::IoError(error) => Error::Unavailable(format!("etcd io: {error}")),
        E::WatchError(error) => Error::Unavailable(format!("etcd watch: {error}")),
        other => Error::Internal(format!("etcd: {other}")),
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (e.g. `http://127.0.0.1:2379`); every key
    /// is stored as `key_prefix + key`.
    pub async fn connect(endpoints: &[String], key_prefix: &str) -> Result<Arc<Self>> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|error| map_error(error, Context::None))?;
        let store = Self {
            client,
            prefix: key_prefix.to_string(),
        };
        // Fail at startup, not on the first request, when etcd is unreachable.
        store.current_revision().await?;
        Ok(Arc::new(store))
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// The first key of a range: etcd rejects an empty key, and `"\0"` is the lowest one.
    fn range_start(&self, key: &str) -> Vec<u8> {
        let full = self.full_key(key);
        if full.is_empty() { vec![0] } else { full }
    }

    fn convert_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let key = kv
            .key()
            .strip_prefix(self.prefix.as_bytes())
            .ok_or_else(|| Error::Internal("etcd returned a key outside the prefix".to_string()))?;
        let key = std::str::from_utf8(key)
            .map_err(|_| Error::Internal("etcd returned a non-UTF-8 key".to_string()))?;
        Ok(KeyValue {
            key: key.to_string(),
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    /// The revision etcd has compacted to, learned from a watch that starts at `requested`
    /// (etcd has no direct query for it). Falls back to `requested + 1`.
    async fn compacted_revision(&self, requested: Revision) -> Revision {
        let probe = async {
            let mut watch_client = self.client.watch_client();
            let options = WatchOptions::new().with_start_revision(requested.max(1));
            let mut watch = watch_client
                .watch(self.range_start(""), Some(options))
                .await
                .ok()?;
            for _ in 0..3 {
                let response = watch.message().await.ok()??;
                if response.compact_revision() > 0 {
                    return Some(response.compact_revision());
                }
                if response.canceled() {
                    return None;
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(2), probe)
            .await
            .ok()
            .flatten()
            .unwrap_or(requested + 1)
    }

    async fn fill_compacted(&self, error: Error) -> Error {
        match error {
            Error::Compacted { requested, .. } => Error::Compacted {
                requested,
                compacted: self.compacted_revision(requested).await,
            },
            other => other,
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let response = self
            .client
            .kv_client()
            .get(self.full_key(key), None)
            .await
            .map_err(|error| map_error(error, Context::None))?;
        response
            .kvs()
            .first()
            .map(|kv| self.convert_kv(kv))
            .transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<ListResult> {
        let full_prefix = self.full_key(prefix);
        let start = match start_after.filter(|after| *after >= prefix) {
            Some(after) => {
                let mut start = self.full_key(after);
                start.push(0);
                start
            }
            None => self.range_start(prefix),
        };
        let mut options = GetOptions::new().with_range(prefix_end(&full_prefix));
        if limit > 0 {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let requested = revision.filter(|revision| *revision > 0);
        if let Some(revision) = requested {
            options = options.with_revision(revision);
        }
        let response = match self.client.kv_client().get(start, Some(options)).await {
            Ok(response) => response,
            Err(error) => {
                let error = map_error(error, Context::Revision(requested.unwrap_or(0)));
                return Err(self.fill_compacted(error).await);
            }
        };
        let kvs = response
            .kvs()
            .iter()
            .map(|kv| self.convert_kv(kv))
            .collect::<Result<Vec<_>>>()?;
        let header_revision = response.header().map(|h| h.revision()).unwrap_or(0);
        Ok(ListResult {
            kvs,
            revision: requested.unwrap_or(header_revision),
            more: response.more(),
        })
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResponse> {
        let compares: Vec<etcd_client::Compare> = compares
            .into_iter()
            .map(|Compare::ModRevision(key, revision)| {
                etcd_client::Compare::mod_revision(self.full_key(&key), CompareOp::Equal, revision)
            })
            .collect();
        let ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put(key, value) => TxnOp::put(self.full_key(&key), value.to_vec(), None),
                Op::Delete(key) => TxnOp::delete(self.full_key(&key), None),
            })
            .collect();
        let response = self
            .client
            .kv_client()
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|error| map_error(error, Context::None))?;
        Ok(TxnResponse {
            succeeded: response.succeeded(),
            revision: response.header().map(|h| h.revision()).unwrap_or(0),
        })
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        let full_prefix = self.full_key(prefix);
        let options = WatchOptions::new()
            .with_range(prefix_end(&full_prefix))
            .with_prev_key()
            .with_start_revision(after_revision.max(0) + 1);
        let mut watch = self
            .client
            .watch_client()
            .watch(self.range_start(prefix), Some(options))
            .await
            .map_err(|error| map_error(error, Context::None))?;
        // Wait for etcd to confirm the watch, so events written after this returns are seen.
        loop {
            let response = watch
                .message()
                .await
                .map_err(|error| map_error(error, Context::None))?
                .ok_or_else(|| Error::Unavailable("etcd closed the watch stream".to_string()))?;
            if response.compact_revision() > 0 {
                return Err(Error::Compacted {
                    requested: after_revision,
                    compacted: response.compact_revision(),
                });
            }
            if response.canceled() {
                return Err(Error::Unavailable(format!(
                    "etcd canceled the watch: {}",
                    response.cancel_reason()
                )));
            }
            if response.created() {
                break;
            }
        }
        let state = EtcdWatch {
            store: self.clone(),
            watch,
            after_revision,
            pending: VecDeque::new(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut state| async move {
                let item = state.next_item().await?;
                Some((item, state))
            },
        )))
    }

    async fn current_revision(&self) -> Result<Revision> {
        let response = self
            .client
            .kv_client()
            .get(
                self.range_start(""),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(|error| map_error(error, Context::None))?;
        Ok(response.header().map(|h| h.revision()).unwrap_or(0))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match self.client.kv_client().compact(revision, None).await {
            Ok(_) => Ok(()),
            Err(error) => match map_error(error, Context::Revision(revision)) {
                // Already compacted at or beyond: nothing to do (same as the embedded backend).
                Error::Compacted { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}

struct EtcdWatch {
    store: EtcdStore,
    /// Holds the request half too: dropping it would leave etcd's side of the stream open.
    watch: etcd_client::WatchStream,
    after_revision: Revision,
    pending: VecDeque<Vec<Event>>,
    done: bool,
}

impl EtcdWatch {
    async fn next_item(&mut self) -> Option<Result<Vec<Event>>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            if self.done {
                return None;
            }
            let response = match self.watch.next().await {
                Some(Ok(response)) => response,
                Some(Err(error)) => {
                    self.done = true;
                    return Some(Err(map_error(error, Context::None)));
                }
                None => {
                    self.done = true;
                    return Some(Err(Error::Unavailable(
                        "etcd closed the watch stream".to_string(),
                    )));
                }
            };
            if response.compact_revision() > 0 {
                self.done = true;
                return Some(Err(Error::Compacted {
                    requested: self.after_revision,
                    compacted: response.compact_revision(),
                }));
            }
            if let Err(error) = self.accept(response.events()) {
                self.done = true;
                return Some(Err(error));
            }
            if response.canceled() {
                self.done = true;
                self.pending.push_back(Vec::new());
                return Some(Err(Error::Unavailable(format!(
                    "etcd canceled the watch: {}",
                    response.cancel_reason()
                ))));
            }
        }
    }

    /// Splits one etcd response into one batch per revision (one per transaction).
    fn accept(&mut self, events: &[etcd_client::Event]) -> Result<()> {
        let mut current: Option<(Revision, Vec<Event>)> = None;
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let converted = self.store.convert_kv(kv)?;
            let revision = converted.mod_revision;
            let prev = event
                .prev_kv()
                .map(|prev| self.store.convert_kv(prev))
                .transpose()?;
            let event = match event.event_type() {
                EventType::Put => Event {
                    kind: EventKind::Put,
                    kv: converted,
                    prev,
                },
                EventType::Delete => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        value: Bytes::new(),
                        create_revision: 0,
                        ..converted
                    },
                    prev,
                },
            };
            match &mut current {
                Some((held, batch)) if *held == revision => batch.push(event),
                _ => {
                    if let Some((_, batch)) = current.take() {
                        self.pending.push_back(batch);
                    }
                    current = Some((revision, vec![event]));
                }
            }
            self.after_revision = revision;
        }
        if let Some((_, batch)) = current {
            self.pending.push_back(batch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_cases() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"/registry/", b"/registry0"),
            (b"a", b"b"),
            (b"a\xff", b"b"),
            (b"\xff\xff", b"\0"),
            (b"", b"\0"),
        ];
        for (prefix, end) in cases {
            assert_eq!(prefix_end(prefix), end.to_vec(), "{prefix:?}");
        }
    }
}
