//! An Event recorder in the manner of client-go's: core/v1 Events that `kubectl describe`
//! shows, written by a background task so controllers never wait on them.
//!
//! Like upstream's EventCorrelator: an identical event (same object, type, reason, message)
//! bumps `count` and `lastTimestamp` of the existing Event instead of creating a new one; more
//! than 10 distinct messages with the same reason on one object within 10 minutes are combined
//! ("(combined from similar events): …"); and a token bucket per object (burst 25, one token
//! per 5 minutes) drops the rest, so a flapping pod cannot flood the store.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BURST: f64 = 25.0;
const REFILL_PER_SECOND: f64 = 1.0 / 300.0;
const AGGREGATE_AFTER: usize = 10;
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
const CACHE_LIMIT: usize = 4096;

struct Pending {
    object: ObjectReference,
    type_: String,
    reason: String,
    message: String,
}

/// Cheap to clone; dropping every clone does not stop the writer (the shutdown token does).
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
}

impl Recorder {
    /// Starts the writer task for `component` (the Event's `source.component`).
    pub fn start(
        client: Client,
        component: &str,
        shutdown: CancellationToken,
    ) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(writer(client, component.to_string(), rx, shutdown));
        (Recorder { tx }, task)
    }

    /// Records an event about `object` ("Normal" or "Warning"). Never blocks; drops when the
    /// writer is far behind.
    pub fn record(&self, object: ObjectReference, type_: &str, reason: &str, message: &str) {
        let _ = self.tx.try_send(Pending {
            object,
            type_: type_.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        });
    }

    /// Convenience for any API object.
    pub fn record_for<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: &str,
        reason: &str,
        message: &str,
    ) {
        self.record(reference(obj), type_, reason, message);
    }
}

/// An ObjectReference to `obj`.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(K::kind(&()).to_string()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * REFILL_PER_SECOND)
            .min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Seen {
    name: String,
    namespace: String,
    count: i32,
}

fn object_key(o: &ObjectReference) -> String {
    format!(
        "{}/{}/{}/{}",
        o.kind.as_deref().unwrap_or_default(),
        o.namespace.as_deref().unwrap_or_default(),
        o.name.as_deref().unwrap_or_default(),
        o.uid.as_deref().unwrap_or_default()
    )
}

/// Upstream's correlation state, separated from I/O so it can be tested.
#[derive(Default)]
struct Correlator {
    buckets: HashMap<String, Bucket>,
    similar: HashMap<String, (Instant, HashSet<String>)>,
    seen: HashMap<String, Seen>,
}

enum Decision {
    Drop,
    Create { message: String, key: String },
    Bump { key: String },
}

impl Correlator {
    fn decide(&mut self, p: &Pending) -> Decision {
        let object = object_key(&p.object);
        let bucket = self.buckets.entry(object.clone()).or_insert(Bucket {
            tokens: BURST,
            at: Instant::now(),
        });
        if !bucket.take() {
            return Decision::Drop;
        }
        let similar_key = format!("{object}\x00{}\x00{}", p.type_, p.reason);
        let entry = self
            .similar
            .entry(similar_key)
            .or_insert_with(|| (Instant::now(), HashSet::new()));
        if entry.0.elapsed() > AGGREGATE_WINDOW {
            *entry = (Instant::now(), HashSet::new());
        }
        entry.1.insert(p.message.clone());
        let message = if entry.1.len() > AGGREGATE_AFTER {
            format!("(combined from similar events): {}", p.message)
        } else {
            p.message.clone()
        };
        let key = format!(
            "{object}\x00{}\x00{}\x00{}",
            p.type_,
            p.reason,
            if message.starts_with("(combined") {
                ""
            } else {
                &message
            }
        );
        if self.seen.contains_key(&key) {
            Decision::Bump { key }
        } else {
            Decision::Create { message, key }
        }
    }
}

async fn writer(
    client: Client,
    component: String,
    mut rx: mpsc::Receiver<Pending>,
    shutdown: CancellationToken,
) {
    let mut state = Correlator::default();
    loop {
        let pending = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        if state.seen.len() > CACHE_LIMIT {
            state.seen.clear();
        }
        if state.buckets.len() > CACHE_LIMIT {
            state.buckets.retain(|_, b| b.tokens < BURST);
        }
        if state.similar.len() > CACHE_LIMIT {
            state
                .similar
                .retain(|_, (t, _)| t.elapsed() <= AGGREGATE_WINDOW);
        }
        let now = Time(jiff::Timestamp::now());
        match state.decide(&pending) {
            Decision::Drop => {
                tracing::debug!(reason = %pending.reason, "event dropped by the rate limit")
            }
            Decision::Bump { key } => {
                let Some(seen) = state.seen.get_mut(&key) else {
                    continue;
                };
                seen.count += 1;
                let api: Api<Event> = Api::namespaced(client.clone(), &seen.namespace);
                let patch = serde_json::json!({"count": seen.count, "lastTimestamp": now});
                if let Err(error) = api
                    .patch(&seen.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::debug!(%error, "event update failed");
                    state.seen.remove(&key);
                }
            }
            Decision::Create { message, key } => {
                let namespace = pending
                    .object
                    .namespace
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "default".to_string());
                let nanos = jiff::Timestamp::now().as_nanosecond();
                let name = format!(
                    "{}.{:x}",
                    pending.object.name.as_deref().unwrap_or("object"),
                    nanos
                );
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    involved_object: pending.object.clone(),
                    reason: Some(pending.reason.clone()),
                    message: Some(message),
                    type_: Some(pending.type_.clone()),
                    source: Some(EventSource {
                        component: Some(component.clone()),
                        host: None,
                    }),
                    first_timestamp: Some(now.clone()),
                    last_timestamp: Some(now),
                    count: Some(1),
                    reporting_component: Some(component.clone()),
                    reporting_instance: Some(component.clone()),
                    ..Default::default()
                };
                let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => {
                        state.seen.insert(
                            key,
                            Seen {
                                name,
                                namespace,
                                count: 1,
                            },
                        );
                    }
                    Err(error) => tracing::debug!(%error, "event create failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(name: &str, reason: &str, message: &str) -> Pending {
        Pending {
            object: ObjectReference {
                kind: Some("Pod".into()),
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            type_: "Warning".into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn remember(c: &mut Correlator, d: &Decision) {
        if let Decision::Create { key, .. } = d {
            c.seen.insert(
                key.clone(),
                Seen {
                    name: "x".into(),
                    namespace: "ns".into(),
                    count: 1,
                },
            );
        }
    }

    #[test]
    fn identical_events_bump_the_count() {
        let mut c = Correlator::default();
        let first = c.decide(&pending("a", "R", "m"));
        assert!(matches!(first, Decision::Create { .. }));
        remember(&mut c, &first);
        assert!(matches!(
            c.decide(&pending("a", "R", "m")),
            Decision::Bump { .. }
        ));
        assert!(matches!(
            c.decide(&pending("a", "R", "other")),
            Decision::Create { .. }
        ));
    }

    #[test]
    fn similar_messages_are_combined_and_bursts_limited() {
        let mut c = Correlator::default();
        let mut last = None;
        for i in 0..12 {
            let d = c.decide(&pending("a", "R", &format!("m{i}")));
            remember(&mut c, &d);
            last = Some(d);
        }
        assert!(
            matches!(last, Some(Decision::Bump { .. })),
            "the 12th distinct message joins the combined event"
        );
        let mut dropped = 0;
        for i in 0..30 {
            if matches!(
                c.decide(&pending("a", "R", &format!("x{i}"))),
                Decision::Drop
            ) {
                dropped += 1;
            }
        }
        assert!(
            dropped >= 15,
            "burst of 25 per object, then dropped: {dropped}"
        );
        assert!(
            !matches!(c.decide(&pending("b", "R", "m")), Decision::Drop),
            "other objects have their own bucket"
        );
    }
}
