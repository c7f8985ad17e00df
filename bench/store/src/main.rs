//! Benchmark: create rate (1 KB values, compare "absent" then put, like a Kubernetes create)
//! and latency at several concurrencies, for the embedded store and for a single-member etcd
//! started here with its data directory on the same disk. Bounded in count and time.
//! Must not: talk to anything but loopback and its own temporary directories.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use portico_store::embedded::{EmbeddedOptions, EmbeddedStore};
use portico_store::etcd::EtcdStore;
use portico_store::testing::EtcdProcess;
use portico_store::{Compare, Op, Store};

#[derive(Parser, Debug)]
#[command(about = "Embedded store vs etcd: create rate and latency")]
struct Args {
    /// Concurrent writers to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Seconds per measurement (after a warm-up of one second).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Upper bound on creates per measurement.
    #[arg(long, default_value_t = 200_000)]
    max_ops: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Parent directory for both data directories (the same disk for a fair comparison).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Which backends to run, comma separated: embedded, etcd.
    #[arg(long, value_delimiter = ',', default_value = "embedded,etcd")]
    backends: Vec<String>,
    /// gRPC connections to etcd, shared round-robin by the writers.
    #[arg(long, default_value_t = 8)]
    etcd_connections: usize,
}

#[derive(Clone, Copy, Debug)]
struct Measurement {
    ops: usize,
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `concurrency` writers creating fresh keys until the time or count bound.
async fn measure(
    stores: &[Arc<dyn Store>],
    label: &str,
    concurrency: usize,
    duration: Duration,
    max_ops: usize,
    value: Bytes,
) -> Result<Measurement> {
    let deadline = Instant::now() + duration;
    let per_task = max_ops.div_ceil(concurrency);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let store = stores[task % stores.len()].clone();
        let value = value.clone();
        let label = label.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut i = 0;
            while i < per_task && Instant::now() < deadline {
                let key = format!("/bench/{label}/c{concurrency}/t{task}/{i}");
                let begun = Instant::now();
                let response = store
                    .txn(
                        vec![Compare::ModRevision(key.clone(), 0)],
                        vec![Op::Put(key, value.clone())],
                    )
                    .await?;
                latencies.push(begun.elapsed());
                anyhow::ensure!(response.succeeded, "create of a fresh key failed");
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile = |p: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index]
    };
    Ok(Measurement {
        ops: latencies.len(),
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(0.50),
        p99: percentile(0.99),
    })
}

async fn run_all(
    stores: &[Arc<dyn Store>],
    label: &str,
    args: &Args,
    value: &Bytes,
) -> Result<Vec<Measurement>> {
    let mut results = Vec::new();
    for &concurrency in &args.concurrency {
        let concurrency = concurrency.max(1);
        // Warm-up: connections, caches, file growth.
        measure(
            stores,
            &format!("{label}-warm"),
            concurrency,
            Duration::from_secs(1),
            args.max_ops,
            value.clone(),
        )
        .await?;
        let result = measure(
            stores,
            label,
            concurrency,
            Duration::from_secs(args.seconds),
            args.max_ops,
            value.clone(),
        )
        .await?;
        eprintln!(
            "{label} c={concurrency}: {} creates, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            result.ops,
            result.rate,
            ms(result.p50),
            ms(result.p99)
        );
        results.push(result);
    }
    Ok(results)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let value = Bytes::from(vec![b'v'; args.value_bytes]);

    let wants = |name: &str| args.backends.iter().any(|backend| backend == name);
    let mut embedded_results = Vec::new();
    if wants("embedded") {
        let embedded_dir = tempfile::Builder::new()
            .prefix("portico-bench-store-")
            .tempdir_in(&parent)
            .context("embedded data dir")?;
        let embedded = EmbeddedStore::open(&embedded_dir.path().join("store.redb"))?;
        embedded_results =
            run_all(&[embedded as Arc<dyn Store>], "embedded", &args, &value).await?;
    }
    if wants("embedded-nosync") {
        // Storage cost without the fsync, to separate the two (not a safe configuration).
        let dir = tempfile::Builder::new()
            .prefix("portico-bench-store-nosync-")
            .tempdir_in(&parent)?;
        let options = EmbeddedOptions {
            sync_commits: false,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open_with(&dir.path().join("store.redb"), options)?;
        run_all(&[store as Arc<dyn Store>], "embedded-nosync", &args, &value).await?;
    }
    let mut etcd_results = Vec::new();
    if wants("etcd") {
        let etcd = EtcdProcess::try_start_in(&parent)
            .context("start etcd (apt-get install etcd-server)")?;
        let mut etcd_stores: Vec<Arc<dyn Store>> = Vec::new();
        for _ in 0..args.etcd_connections.max(1) {
            etcd_stores.push(EtcdStore::connect(&etcd.endpoints(), "").await?);
        }
        etcd_results = run_all(&etcd_stores, "etcd", &args, &value).await?;
    }

    println!(
        "Creates (compare absent + put) of {} B values, {} s per row, data on {}",
        args.value_bytes,
        args.seconds,
        parent.display()
    );
    println!();
    println!(
        "| concurrency | embedded creates/s | embedded p50 / p99 ms | etcd 3.4 puts/s | etcd p50 / p99 ms | ratio ours/etcd |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((concurrency, ours), theirs) in args
        .concurrency
        .iter()
        .zip(&embedded_results)
        .zip(&etcd_results)
    {
        println!(
            "| {concurrency} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2} |",
            ours.rate,
            ms(ours.p50),
            ms(ours.p99),
            theirs.rate,
            ms(theirs.p50),
            ms(theirs.p99),
            ours.rate / theirs.rate.max(f64::MIN_POSITIVE)
        );
    }
    Ok(())
}
