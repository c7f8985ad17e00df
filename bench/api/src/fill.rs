//! Filling a server: 10,000 Services one after another (timed against the raw embedded store
//! doing the same creates in this process), then 10,000 EndpointSlices, then its memory.
//! Must not: talk to anything but the loopback server started by this benchmark.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use portico_store::embedded::EmbeddedStore;
use portico_store::{Compare, Op, Store};

use crate::objects;
use crate::stats::Summary;

/// Creates `count` Services one after another; returns the summary and one stored object's JSON.
pub async fn sequential_services(
    client: &kube::Client,
    namespace: &str,
    count: usize,
    limit: Duration,
) -> Result<(Summary, Vec<u8>)> {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let params = PostParams::default();
    let mut latencies = Vec::with_capacity(count);
    let mut sample = Vec::new();
    let started = Instant::now();
    for i in 0..count {
        if started.elapsed() > limit {
            break;
        }
        let service = objects::service(&format!("svc-{i}"))?;
        let begun = Instant::now();
        let created = api
            .create(&params, &service)
            .await
            .with_context(|| format!("creating Service svc-{i}"))?;
        latencies.push(begun.elapsed());
        if i == 0 {
            sample = serde_json::to_vec(&created)?;
        }
    }
    Ok((Summary::of(latencies, started.elapsed()), sample))
}

/// The same number of creates (compare "absent", then put) straight into a fresh embedded
/// store in `parent`, one after another, with `value` as the stored object.
pub async fn raw_store_creates(
    parent: &Path,
    count: usize,
    value: &[u8],
    limit: Duration,
) -> Result<Summary> {
    let dir = tempfile::Builder::new()
        .prefix("portico-bench-api-store-")
        .tempdir_in(parent)?;
    let store = EmbeddedStore::open(&dir.path().join("store.redb"))?;
    let value = Bytes::copy_from_slice(value);
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        if started.elapsed() > limit {
            break;
        }
        let key = format!("/registry/services/specs/default/svc-{i}");
        let begun = Instant::now();
        let response = store
            .txn(
                vec![Compare::ModRevision(key.clone(), 0)],
                vec![Op::Put(key, value.clone())],
            )
            .await?;
        latencies.push(begun.elapsed());
        anyhow::ensure!(response.succeeded, "raw create of a fresh key failed");
    }
    Ok(Summary::of(latencies, started.elapsed()))
}

/// Creates one EndpointSlice per Service `svc-0..count` with `concurrency` writers.
pub async fn endpoint_slices(
    client: &kube::Client,
    namespace: &str,
    count: usize,
    concurrency: usize,
) -> Result<Summary> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let params = PostParams::default();
            let mut latencies = Vec::new();
            for i in (task..count).step_by(concurrency) {
                let slice = objects::endpoint_slice(&format!("svc-{i}"), i)?;
                let begun = Instant::now();
                api.create(&params, &slice)
                    .await
                    .with_context(|| format!("creating EndpointSlice for svc-{i}"))?;
                latencies.push(begun.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Summary::of(latencies, started.elapsed()))
}

/// Lists every Service in `namespace` in one request; returns (items, time).
pub async fn list_services(client: &kube::Client, namespace: &str) -> Result<(usize, Duration)> {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let begun = Instant::now();
    let list = api.list(&ListParams::default()).await?;
    Ok((list.items.len(), begun.elapsed()))
}
