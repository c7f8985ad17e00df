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
    /// Rounds; each round measures every backend at every concurrency, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
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

/// One warm-up second, then the measured run.
async fn run_one(
    stores: &[Arc<dyn Store>],
    label: &str,
    concurrency: usize,
    args: &Args,
    value: &Bytes,
    round: usize,
) -> Result<Measurement> {
    let warm = format!("{label}-warm-r{round}");
    measure(
        stores,
        &warm,
        concurrency,
        Duration::from_secs(1),
        args.max_ops,
        value.clone(),
    )
    .await?;
    let result = measure(
        stores,
        &format!("{label}-r{round}"),
        concurrency,
        Duration::from_secs(args.seconds),
        args.max_ops,
        value.clone(),
    )
    .await?;
    eprintln!(
        "round {round} {label} c={concurrency}: {} creates, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        result.ops,
        result.rate,
        ms(result.p50),
        ms(result.p99)
    );
    Ok(result)
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
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

    // Every backend is set up first; then the runs alternate, so that a noisy neighbour on the
    // shared disk hits both sides alike.
    let mut backends: Vec<(&str, Vec<Arc<dyn Store>>)> = Vec::new();
    let embedded_dir = tempfile::Builder::new()
        .prefix("portico-bench-store-")
        .tempdir_in(&parent)
        .context("embedded data dir")?;
    if wants("embedded") {
        let store = EmbeddedStore::open(&embedded_dir.path().join("store.redb"))?;
        backends.push(("embedded", vec![store as Arc<dyn Store>]));
    }
    if wants("embedded-nosync") {
        // Storage cost without the fsync, to separate the two (not a safe configuration).
        let options = EmbeddedOptions {
            sync_commits: false,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open_with(&embedded_dir.path().join("nosync.redb"), options)?;
        backends.push(("embedded-nosync", vec![store as Arc<dyn Store>]));
    }
    let etcd = if wants("etcd") {
        Some(
            EtcdProcess::try_start_in(&parent)
                .context("start etcd (apt-get install etcd-server)")?,
        )
    } else {
        None
    };
    if let Some(etcd) = &etcd {
        let mut stores: Vec<Arc<dyn Store>> = Vec::new();
        for _ in 0..args.etcd_connections.max(1) {
            stores.push(EtcdStore::connect(&etcd.endpoints(), "").await?);
        }
        backends.push(("etcd", stores));
    }

    let load_before = load_average();
    // results[backend][concurrency] = one measurement per round.
    let mut results = vec![vec![Vec::new(); args.concurrency.len()]; backends.len()];
    for round in 0..args.rounds.max(1) {
        for (index, &concurrency) in args.concurrency.iter().enumerate() {
            for (backend, (label, stores)) in backends.iter().enumerate() {
                let measured =
                    run_one(stores, label, concurrency.max(1), &args, &value, round).await?;
                results[backend][index].push(measured);
            }
        }
    }
    let load_after = load_average();
    drop(etcd);

    println!(
        "Creates (compare absent, then put) of {} B values; {} round(s) of {} s per cell, medians; \
         data on {}; 1-min load average {load_before} before, {load_after} after.",
        args.value_bytes,
        args.rounds.max(1),
        args.seconds,
        parent.display()
    );
    println!();
    let mut header = "| concurrency |".to_string();
    let mut rule = "| ---: |".to_string();
    for (label, _) in &backends {
        header.push_str(&format!(" {label} creates/s | {label} p50 / p99 ms |"));
        rule.push_str(" ---: | ---: |");
    }
    let etcd_index = backends.iter().position(|(label, _)| *label == "etcd");
    let embedded_index = backends.iter().position(|(label, _)| *label == "embedded");
    let ratio = etcd_index.zip(embedded_index);
    if ratio.is_some() {
        header.push_str(" ratio embedded/etcd (per round) |");
        rule.push_str(" ---: |");
    }
    println!("{header}");
    println!("{rule}");
    for (index, concurrency) in args.concurrency.iter().enumerate() {
        let mut row = format!("| {concurrency} |");
        for cells in &results {
            let runs = &cells[index];
            let rate = median(runs.iter().map(|m| m.rate).collect());
            let p50 = median(runs.iter().map(|m| ms(m.p50)).collect());
            let p99 = median(runs.iter().map(|m| ms(m.p99)).collect());
            row.push_str(&format!(" {rate:.0} | {p50:.2} / {p99:.2} |"));
        }
        if let Some((etcd, embedded)) = ratio {
            let ours = &results[embedded][index];
            let theirs = &results[etcd][index];
            let per_round: Vec<f64> = ours
                .iter()
                .zip(theirs)
                .map(|(o, t)| o.rate / t.rate.max(f64::MIN_POSITIVE))
                .collect();
            let listed: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
            row.push_str(&format!(
                " {:.2} ({}) |",
                median(per_round.clone()),
                listed.join(", ")
            ));
        }
        println!("{row}");
    }
    Ok(())
}
