//! Create throughput: Service creates through the HTTPS API, and plain etcd puts of the same
//! size, each with `concurrency` tasks issuing one request at a time, bounded in time and count.
//! Must not: talk to anything but the loopback server and etcd started by this benchmark.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};

use crate::objects;
use crate::stats::Summary;

/// Creates Services named `{label}-t{task}-{i}` in `namespace` until the deadline or the bound.
pub async fn api_creates(
    clients: &[kube::Client],
    namespace: &str,
    label: &str,
    concurrency: usize,
    duration: Duration,
    max_ops: usize,
) -> Result<Summary> {
    let deadline = Instant::now() + duration;
    let per_task = max_ops.div_ceil(concurrency).max(1);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let api: Api<Service> = Api::namespaced(clients[task % clients.len()].clone(), namespace);
        let label = label.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1024);
            let params = PostParams::default();
            let mut i = 0;
            while i < per_task && Instant::now() < deadline {
                let service = objects::service(&format!("{label}-t{task}-{i}"))?;
                let begun = Instant::now();
                api.create(&params, &service).await?;
                latencies.push(begun.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Summary::of(latencies, started.elapsed()))
}

/// Plain etcd puts of `value` under fresh keys, spread over `clients` (gRPC connections).
pub async fn etcd_puts(
    clients: &[etcd_client::Client],
    label: &str,
    concurrency: usize,
    duration: Duration,
    max_ops: usize,
    value: Arc<Vec<u8>>,
) -> Result<Summary> {
    let deadline = Instant::now() + duration;
    let per_task = max_ops.div_ceil(concurrency).max(1);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let mut kv = clients[task % clients.len()].kv_client();
        let value = value.clone();
        let label = label.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1024);
            let mut i = 0;
            while i < per_task && Instant::now() < deadline {
                let key = format!("/registry/services/specs/bench/{label}-t{task}-{i}");
                let begun = Instant::now();
                kv.put(key, value.as_slice(), None).await?;
                latencies.push(begun.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Summary::of(latencies, started.elapsed()))
}
