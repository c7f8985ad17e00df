//! Benchmark of the EndpointSlice controller at 1,000 Services and 10,000 pods (defaults):
//! the time from a pod's Ready status write to the updated EndpointSlice reaching a watcher
//! (p50/p99), API writes per single pod change, controller memory, and CPU when idle.
//!
//! Everything runs in one process against the in-process API server on 127.0.0.1:0. Load is
//! bounded: a fixed number of objects and a fixed number of measured changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use portico_apiserver::testing::TestServer;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    pods_per_service: usize,
    /// Measured single-pod readiness flips.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Seconds of idle CPU measurement.
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256)
}

/// Resident set size in KiB, from /proc.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn set_ready(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) -> anyhow::Result<()> {
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": jiff::Timestamp::now().to_string()}]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

fn ready_of(slice: &EndpointSlice, address: &str) -> Option<bool> {
    slice
        .endpoints
        .iter()
        .find(|e| e.addresses.iter().any(|a| a == address))
        .map(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = TestServer::start()
        .await
        .context("starting the API server")?;
    let client = server.client.clone();
    let ns = "default";
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let node: Node = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-a"}}}),
    )?;
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await?;

    let setup = Instant::now();
    futures::stream::iter(0..args.services)
        .map(|s| {
            let services = services.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("svc-{s}")},
                    "spec": {"selector": {"app": format!("svc-{s}")}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))?;
                services.create(&PostParams::default(), &svc).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let total_pods = args.services * args.pods_per_service;
    futures::stream::iter(0..total_pods)
        .map(|i| {
            let pods = pods.clone();
            let service = i % args.services;
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("pod-{i}"), "labels": {"app": format!("svc-{service}")}},
                    "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app"}]}
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                set_ready(&pods, &format!("pod-{i}"), &ip(i), true).await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "setup: {} Services, {total_pods} pods in {:.1?}",
        args.services,
        setup.elapsed()
    );

    // A watcher of all slices, like kube-proxy: every event is timestamped on arrival.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Arc<EndpointSlice>)>();
    let slice_events = Arc::new(AtomicU64::new(0));
    let counter = slice_events.clone();
    let slices_api: Api<EndpointSlice> = Api::all(client.clone());
    let watch_task = tokio::spawn(async move {
        let stream = watcher(slices_api, watcher::Config::default());
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let now = Instant::now();
            if let Ok(
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) | watcher::Event::Delete(s),
            ) = ev
            {
                counter.fetch_add(1, Ordering::Relaxed);
                if tx.send((now, Arc::new(s))).is_err() {
                    return;
                }
            }
        }
    });

    let rss_before = rss_kib();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = portico_controllers::start(
        client.clone(),
        portico_controllers::Options::default(),
        shutdown.clone(),
    )
    .await?;
    // Converged when every Service has a slice with all its pods ready.
    let mut ready_per_service: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while ready_per_service
        .values()
        .filter(|n| **n == args.pods_per_service)
        .count()
        < args.services
    {
        let (_, slice) = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .context("initial sync timed out")?
            .context("watch ended")?;
        if let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        {
            let ready = slice
                .endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .count();
            ready_per_service.insert(svc.clone(), ready);
        }
    }
    let converged = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}
    let rss_after = rss_kib();
    println!(
        "initial sync: {converged:.1?}; RSS {} MiB → {} MiB",
        rss_before / 1024,
        rss_after / 1024
    );

    // Idle CPU with nothing changing.
    let cpu0 = cpu_time();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_cpu = cpu_time().saturating_sub(cpu0);
    let idle_events = {
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        n
    };
    println!(
        "idle: {idle_cpu:.2?} CPU in {}s (whole process), {idle_events} slice writes",
        args.idle_seconds
    );

    // Measured single-pod readiness flips.
    let mut latencies = Vec::with_capacity(args.changes);
    let events_before = slice_events.load(Ordering::Relaxed);
    for k in 0..args.changes {
        // Each visited pod goes not-ready (even k) and back to ready (odd k); both are measured.
        let i = ((k / 2) * 7919) % total_pods;
        let service = format!("svc-{}", i % args.services);
        let address = ip(i);
        let want_ready = k % 2 == 1;
        let t0 = Instant::now();
        set_ready(&pods, &format!("pod-{i}"), &address, want_ready).await?;
        loop {
            let (at, slice) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .context("change timed out")?
                .context("watch ended")?;
            let matches = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                == Some(&service)
                && ready_of(&slice, &address) == Some(want_ready);
            if matches {
                latencies.push(at.duration_since(t0));
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = slice_events.load(Ordering::Relaxed) - events_before;
    let status_writes = args.changes;
    latencies.sort();
    println!(
        "ready→slice latency over {} changes: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "slice writes per pod status change: {:.2} ({writes} writes for {status_writes} changes)",
        writes as f64 / status_writes as f64
    );

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
    watch_task.abort();
    server.stop().await;
    Ok(())
}
