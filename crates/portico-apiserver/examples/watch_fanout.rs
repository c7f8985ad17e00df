//! Measures watch delivery latency: N concurrent watchers over HTTPS, M label patches; prints
//! p50/p99 from the write's acknowledgement to each watcher receiving the event.
//! Run: `cargo run --release -p portico-apiserver --example watch_fanout [watchers] [writes]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use portico_apiserver::testing::TestServer;
use serde_json::json;
use tokio::sync::Mutex;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let watchers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let writes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let ts = TestServer::start().await?;
    let api: Api<Service> = Api::namespaced(ts.client.clone(), "default");
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "w"}, "spec": {"ports": [{"port": 80}]}}),
    )?;
    let rv = api
        .create(&PostParams::default(), &svc)
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let lat: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let api = api.clone();
        let rv = rv.clone();
        let sent = sent.clone();
        let lat = lat.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = api
                .watch(&WatchParams::default(), &rv)
                .await
                .expect("watch")
                .boxed();
            let mut seen = 0;
            while seen < writes {
                match s.try_next().await {
                    Ok(Some(WatchEvent::Modified(o))) => {
                        let i: usize = o
                            .metadata
                            .labels
                            .and_then(|l| l.get("i").and_then(|v| v.parse().ok()))
                            .unwrap_or(0);
                        let at = sent.lock().await.get(i).copied();
                        if let Some(at) = at {
                            lat.lock().await.push(at.elapsed());
                        }
                        seen += 1;
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..writes {
        let t = Instant::now();
        sent.lock().await.push(t);
        api.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"i": i.to_string()}}})),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
    let mut l = lat.lock().await.clone();
    l.sort();
    let q = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "watchers={watchers} writes={writes} events={} p50={:?} p99={:?} max={:?}",
        l.len(),
        q(0.5),
        q(0.99),
        l.last().copied().unwrap_or_default()
    );
    ts.stop().await;
    Ok(())
}
