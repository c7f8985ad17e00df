//! Watch fan-out latency: W watchers on one namespace (or etcd prefix), one writer creating
//! objects one after another; for every (object, watcher) pair, the time from the create
//! response to that watcher decoding the event. Bounded in count and time.
//! Must not: talk to anything but the loopback server and etcd started by this benchmark.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::objects;
use crate::stats::percentile;

/// Latencies of every delivery, and how many arrived before the writer saw its response.
#[derive(Clone, Debug, Default)]
pub struct WatchResult {
    #[allow(dead_code)]
    pub watchers: usize,
    #[allow(dead_code)]
    pub writes: usize,
    pub deliveries: usize,
    pub missing: usize,
    pub early: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// From the create request being sent instead of its response.
    pub p99_from_request: Duration,
}

type Received = Vec<(String, Instant)>;

fn summarise(
    watchers: usize,
    sent: &HashMap<String, (Instant, Instant)>,
    received: Vec<Received>,
) -> WatchResult {
    let mut latencies = Vec::new();
    let mut from_request = Vec::new();
    let mut early = 0;
    for per_watcher in &received {
        for (name, at) in per_watcher {
            let Some((requested, answered)) = sent.get(name) else {
                continue;
            };
            if at < answered {
                early += 1;
            }
            latencies.push(at.saturating_duration_since(*answered));
            from_request.push(at.saturating_duration_since(*requested));
        }
    }
    latencies.sort_unstable();
    from_request.sort_unstable();
    let deliveries = latencies.len();
    WatchResult {
        watchers,
        writes: sent.len(),
        deliveries,
        missing: (sent.len() * watchers).saturating_sub(deliveries),
        early,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        p99_from_request: percentile(&from_request, 0.99),
    }
}

/// API watchers on a fresh namespace; `writes` Service creates, `gap` apart.
pub async fn api_watch(
    client: &kube::Client,
    namespace: &str,
    watchers: usize,
    writes: usize,
    gap: Duration,
) -> Result<WatchResult> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}}))?;
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .context("creating the watch namespace")?;
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let version = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();

    let mut tasks = Vec::with_capacity(watchers);
    for _ in 0..watchers {
        // The watch is registered once the response headers arrive, before any create.
        let stream = api
            .watch(&WatchParams::default(), &version)
            .await
            .context("opening a watch")?;
        tasks.push(tokio::spawn(async move {
            let mut received: Received = Vec::with_capacity(writes);
            let mut stream = std::pin::pin!(stream);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while received.len() < writes {
                let next = tokio::time::timeout_at(deadline, stream.try_next()).await;
                match next {
                    Ok(Ok(Some(WatchEvent::Added(svc)))) => {
                        received.push((svc.metadata.name.unwrap_or_default(), Instant::now()));
                    }
                    Ok(Ok(Some(WatchEvent::Error(e)))) => bail!("watch error: {e:?}"),
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None)) | Err(_) => break,
                    Ok(Err(e)) => return Err(e.into()),
                }
            }
            anyhow::Ok(received)
        }));
    }

    let mut sent = HashMap::with_capacity(writes);
    let params = PostParams::default();
    for i in 0..writes {
        let name = format!("watched-{i}");
        let service = objects::service(&name)?;
        let requested = Instant::now();
        api.create(&params, &service).await?;
        sent.insert(name, (requested, Instant::now()));
        tokio::time::sleep(gap).await;
    }
    let mut received = Vec::with_capacity(watchers);
    for task in tasks {
        received.push(task.await??);
    }
    Ok(summarise(watchers, &sent, received))
}

/// etcd watchers on one prefix (spread over `clients`); `writes` puts of `value`, `gap` apart.
pub async fn etcd_watch(
    clients: &[etcd_client::Client],
    watchers: usize,
    writes: usize,
    gap: Duration,
    value: Arc<Vec<u8>>,
) -> Result<WatchResult> {
    let prefix = "/registry/services/specs/watched/";
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let mut watch_client = clients[w % clients.len()].watch_client();
        let mut stream = watch_client
            .watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix()))
            .await
            .context("opening an etcd watch")?;
        // The first message confirms the watch exists.
        let first = stream.message().await?.context("etcd watch closed")?;
        anyhow::ensure!(first.created(), "etcd watch not created");
        tasks.push(tokio::spawn(async move {
            let mut received: Received = Vec::with_capacity(writes);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while received.len() < writes {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(response))) => {
                        let at = Instant::now();
                        for event in response.events() {
                            if let Some(kv) = event.kv() {
                                let key = String::from_utf8_lossy(kv.key()).into_owned();
                                received.push((key, at));
                            }
                        }
                    }
                    Ok(Some(Err(e))) => return Err(e.into()),
                    Ok(None) | Err(_) => break,
                }
            }
            anyhow::Ok(received)
        }));
    }
    let mut kv = clients[0].kv_client();
    let mut sent = HashMap::with_capacity(writes);
    for i in 0..writes {
        let key = format!("{prefix}{i}");
        let requested = Instant::now();
        kv.put(key.as_str(), value.as_slice(), None).await?;
        sent.insert(key, (requested, Instant::now()));
        tokio::time::sleep(gap).await;
    }
    let mut received = Vec::with_capacity(watchers);
    for task in tasks {
        received.push(task.await??);
    }
    Ok(summarise(watchers, &sent, received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_missing_and_early_deliveries() {
        let base = Instant::now();
        let ms = Duration::from_millis;
        let sent = HashMap::from([
            ("a".to_string(), (base, base + ms(2))),
            ("b".to_string(), (base + ms(10), base + ms(12))),
        ]);
        let received = vec![
            vec![
                ("a".to_string(), base + ms(3)),
                ("b".to_string(), base + ms(11)),
            ],
            vec![("a".to_string(), base + ms(7))],
        ];
        let result = summarise(2, &sent, received);
        assert_eq!(result.deliveries, 3);
        assert_eq!(result.missing, 1);
        assert_eq!(result.early, 1);
        assert_eq!(result.max, ms(5));
        assert_eq!(result.p99_from_request, ms(7));
    }
}
