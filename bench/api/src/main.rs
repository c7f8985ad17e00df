//! Benchmark of the API server, in one run: Service creates through the real HTTPS API beside
//! etcd's own put rate (same concurrency, same disk), watch fan-out latency, resident memory
//! with 10,000 Services and 10,000 EndpointSlices, start-up to /readyz, and sequential creates
//! against the raw embedded store. Prints a markdown report and writes it to RESULTS.md.
//! Must not: talk to anything but loopback (the `portico` child and etcd it starts); run
//! unbounded (every loop has a count and a time bound).

mod creates;
mod fill;
mod objects;
mod process;
mod stats;
mod watch;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use portico_store::testing::EtcdProcess;

use crate::process::ServerProcess;
use crate::stats::{Summary, load_average, median, ms, proc_status_mib};

#[derive(Parser, Debug)]
#[command(about = "portico API server: creates vs etcd, watch latency, memory, start-up")]
struct Args {
    /// The `portico` binary (default: beside this one; build it with `cargo build --release -p portico`).
    #[arg(long)]
    portico_bin: Option<PathBuf>,
    /// Parent directory for every data directory (server, etcd, raw store: one disk).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Concurrent clients for the create comparison.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Measured seconds per create cell (after one warm-up second).
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Rounds (five: this shared machine swings one round by ±0.05); each runs ours and etcd at every concurrency, alternating.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Upper bound on operations per create cell.
    #[arg(long, default_value_t = 50_000)]
    max_ops: usize,
    /// Client connections for each side (kube clients, etcd gRPC channels).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Writes seen by the watchers.
    #[arg(long, default_value_t = 200)]
    watch_writes: usize,
    /// Pause between watched writes, in milliseconds.
    #[arg(long, default_value_t = 10)]
    watch_gap_ms: u64,
    /// Services (and as many EndpointSlices) for the memory and sequential-create parts.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Start-ups per command for the /readyz timing.
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// Where to write the report (default: bench/api/RESULTS.md).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Parts to run, comma separated: creates, watch, fill, startup.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "creates,watch,fill,startup"
    )]
    parts: Vec<String>,
}

fn portico_binary(args: &Args) -> Result<PathBuf> {
    let path = match &args.portico_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no parent of this binary")?
            .join("portico"),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p portico` (same target dir) or pass --portico-bin",
            path.display()
        );
    }
    Ok(path)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let binary = portico_binary(&args)?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let wants = |part: &str| args.parts.iter().any(|p| p == part);
    let run_started = Instant::now();
    let load_before = load_average();
    let mut report = String::new();

    let needs_etcd = wants("creates") || wants("watch");
    let etcd = if needs_etcd {
        Some(
            EtcdProcess::try_start_in(&parent)
                .context("starting etcd (apt-get install etcd-server)")?,
        )
    } else {
        None
    };
    let mut etcd_clients = Vec::new();
    if let Some(etcd) = &etcd {
        for _ in 0..args.connections.max(1) {
            etcd_clients.push(etcd_client::Client::connect(etcd.endpoints(), None).await?);
        }
    }

    if needs_etcd {
        let server = ServerProcess::start(&binary, "apiserver", &parent).await?;
        let mut clients = Vec::new();
        for _ in 0..args.connections.max(1) {
            clients.push(server.client().await?);
        }
        // One probe create: the stored object's size sets the etcd value size.
        let probe = Api::<Service>::namespaced(clients[0].clone(), "default")
            .create(&PostParams::default(), &objects::service("probe")?)
            .await
            .with_context(|| format!("probe create; server stderr:\n{}", server.stderr()))?;
        let value = Arc::new(serde_json::to_vec(&probe)?);
        let cluster_ip = probe
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .unwrap_or_default();
        eprintln!(
            "probe Service: {} bytes of JSON, clusterIP {cluster_ip:?}",
            value.len()
        );

        if wants("creates") {
            section_creates(
                &mut report,
                &args,
                &clients,
                &etcd_clients,
                value.clone(),
                &cluster_ip,
            )
            .await?;
        }
        if wants("watch") {
            section_watch(
                &mut report,
                &args,
                &clients[0],
                &etcd_clients,
                value.clone(),
            )
            .await?;
        }
        server.stop().await?;
    }
    drop(etcd_clients);
    drop(etcd);

    if wants("fill") {
        section_fill(&mut report, &args, &binary, &parent).await?;
    }
    if wants("startup") {
        section_startup(&mut report, &args, &binary, &parent).await?;
    }

    let load_after = load_average();
    let header = header(
        &args,
        &parent,
        &load_before,
        &load_after,
        run_started.elapsed(),
    );
    let full = format!("{header}{report}");
    println!("{full}");
    let results = args
        .results
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md"));
    std::fs::write(&results, &full).with_context(|| format!("writing {}", results.display()))?;
    eprintln!("wrote {}", results.display());
    Ok(())
}

fn header(
    args: &Args,
    parent: &Path,
    load_before: &str,
    load_after: &str,
    took: Duration,
) -> String {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# API server: creates vs etcd, watch latency, memory, start-up\n"
    );
    let _ = writeln!(
        text,
        "Run: `cargo build --release -p portico -p portico-bench-api && target/release/portico-bench-api` \
         (measured {date}, commit {commit}, {:.0} s in all; parts: {}).\n",
        took.as_secs_f64(),
        args.parts.join(",")
    );
    let _ = writeln!(
        text,
        "Machine: {cpus} vCPUs shared with other work (1-minute load average {load_before} before, {load_after} after); \
         every data directory (portico's, etcd's, the raw store's) under `{}` on one disk. Everything on 127.0.0.1: \
         the real `portico` binary as a child process, a single-member etcd (Debian `/usr/bin/etcd`, fsync on), \
         and this client process (kube-rs over HTTPS with the admin token from the server's kubeconfig; etcd-client over gRPC).\n",
        parent.display()
    );
    text
}

fn summary_cells(s: &Summary) -> String {
    format!("{:.0} | {:.2} / {:.2}", s.rate, ms(s.p50), ms(s.p99))
}

async fn section_creates(
    report: &mut String,
    args: &Args,
    clients: &[kube::Client],
    etcd_clients: &[etcd_client::Client],
    value: Arc<Vec<u8>>,
    cluster_ip: &str,
) -> Result<()> {
    let measured = Duration::from_secs(args.seconds.max(1));
    let warm = Duration::from_secs(1);
    // results[concurrency index] = (ours per round, etcd per round)
    let mut results: Vec<(Vec<Summary>, Vec<Summary>)> =
        vec![(Vec::new(), Vec::new()); args.concurrency.len()];
    for round in 0..args.rounds.max(1) {
        for (index, &concurrency) in args.concurrency.iter().enumerate() {
            let c = concurrency.max(1);
            creates::api_creates(
                clients,
                "default",
                &format!("warm-r{round}-c{c}"),
                c,
                warm,
                args.max_ops,
            )
            .await?;
            let ours = creates::api_creates(
                clients,
                "default",
                &format!("r{round}-c{c}"),
                c,
                measured,
                args.max_ops,
            )
            .await?;
            creates::etcd_puts(
                etcd_clients,
                &format!("warm-r{round}-c{c}"),
                c,
                warm,
                args.max_ops,
                value.clone(),
            )
            .await?;
            let theirs = creates::etcd_puts(
                etcd_clients,
                &format!("r{round}-c{c}"),
                c,
                measured,
                args.max_ops,
                value.clone(),
            )
            .await?;
            eprintln!(
                "round {round} c={c}: ours {:.0}/s p99 {:.2} ms; etcd {:.0}/s p99 {:.2} ms",
                ours.rate,
                ms(ours.p99),
                theirs.rate,
                ms(theirs.p99)
            );
            results[index].0.push(ours);
            results[index].1.push(theirs);
        }
    }
    let _ = writeln!(
        report,
        "## 1. Service creates through the API vs etcd puts\n"
    );
    let _ = writeln!(
        report,
        "Ours: `POST /api/v1/namespaces/default/services` (kube-rs `Api::create`, a ClusterIP Service with a selector \
         and two ports; stored JSON {} bytes) on the embedded store. etcd: plain puts of a {}-byte value under fresh keys. \
         Each side uses {} client connections; concurrency = tasks each with one request in flight. \
         {} round(s), each alternating ours/etcd per concurrency, 1 s warm-up + {} s measured per cell (at most {} ops); medians. \
         clusterIP in the create response: {}.\n",
        value.len(),
        value.len(),
        args.connections,
        args.rounds.max(1),
        args.seconds,
        args.max_ops,
        if cluster_ip.is_empty() {
            "none (no ClusterIP allocation on this path)".to_string()
        } else {
            format!("`{cluster_ip}`")
        }
    );
    let _ = writeln!(
        report,
        "| clients | ours creates/s | ours p50 / p99 ms | etcd puts/s | etcd p50 / p99 ms | ours/etcd (per round) | target ≥ 0.50 |"
    );
    let _ = writeln!(
        report,
        "| ---: | ---: | ---: | ---: | ---: | ---: | :---: |"
    );
    for (index, concurrency) in args.concurrency.iter().enumerate() {
        let (ours, theirs) = &results[index];
        let med = |runs: &[Summary]| Summary {
            ops: 0,
            rate: median(runs.iter().map(|s| s.rate).collect()),
            p50: Duration::from_secs_f64(median(
                runs.iter().map(|s| s.p50.as_secs_f64()).collect(),
            )),
            p99: Duration::from_secs_f64(median(
                runs.iter().map(|s| s.p99.as_secs_f64()).collect(),
            )),
            max: Duration::ZERO,
        };
        let ratios: Vec<f64> = ours
            .iter()
            .zip(theirs)
            .map(|(o, t)| o.rate / t.rate.max(f64::MIN_POSITIVE))
            .collect();
        let ratio = median(ratios.clone());
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let _ = writeln!(
            report,
            "| {concurrency} | {} | {} | {ratio:.2} ({}) | {} |",
            summary_cells(&med(ours)),
            summary_cells(&med(theirs)),
            listed.join(", "),
            if ratio >= 0.5 { "met" } else { "**missed**" }
        );
    }
    let _ = writeln!(report);
    Ok(())
}

async fn section_watch(
    report: &mut String,
    args: &Args,
    client: &kube::Client,
    etcd_clients: &[etcd_client::Client],
    value: Arc<Vec<u8>>,
) -> Result<()> {
    let gap = Duration::from_millis(args.watch_gap_ms);
    let ours =
        watch::api_watch(client, "bench-watch", args.watchers, args.watch_writes, gap).await?;
    eprintln!("watch ours: {ours:?}");
    let theirs =
        watch::etcd_watch(etcd_clients, args.watchers, args.watch_writes, gap, value).await?;
    eprintln!("watch etcd: {theirs:?}");
    let _ = writeln!(
        report,
        "## 2. Watch delivery latency with {} watchers\n",
        args.watchers
    );
    let _ = writeln!(
        report,
        "{} watchers (kube-rs `Api::watch` on one namespace, each its own HTTPS stream; for etcd, watches on one prefix \
         over {} gRPC connections) are open before one writer creates {} objects, {} ms apart. Latency = the watcher \
         decoding the event − the writer receiving the create response (events that arrive before the response count as 0; \
         \"early\" says how many). Same server as part 1 (it already holds the Services created there).\n",
        args.watchers,
        etcd_clients.len(),
        args.watch_writes,
        args.watch_gap_ms
    );
    let _ = writeln!(
        report,
        "| side | deliveries (missing) | early | p50 ms | p99 ms | max ms | p99 from request sent, ms | target p99 < 10 ms |"
    );
    let _ = writeln!(
        report,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"
    );
    for (side, r, target) in [
        ("ours (API watch)", &ours, true),
        ("etcd (gRPC watch)", &theirs, false),
    ] {
        let verdict = if !target {
            "—"
        } else if r.p99 < Duration::from_millis(10) && r.missing == 0 {
            "met"
        } else {
            "**missed**"
        };
        let _ = writeln!(
            report,
            "| {side} | {} ({}) | {} | {:.2} | {:.2} | {:.2} | {:.2} | {verdict} |",
            r.deliveries,
            r.missing,
            r.early,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            ms(r.p99_from_request)
        );
    }
    let _ = writeln!(report);
    Ok(())
}

async fn section_fill(
    report: &mut String,
    args: &Args,
    binary: &Path,
    parent: &Path,
) -> Result<()> {
    let limit = Duration::from_secs(180);
    let server = ServerProcess::start(binary, "apiserver", parent).await?;
    let client = server.client().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = proc_status_mib(server.pid, "VmRSS:").unwrap_or(0.0);
    let (api_seq, sample) = fill::sequential_services(&client, "default", args.objects, limit)
        .await
        .with_context(|| format!("server stderr:\n{}", server.stderr()))?;
    eprintln!("sequential API creates: {api_seq:?}");
    let raw_seq = fill::raw_store_creates(parent, api_seq.ops.max(1), &sample, limit).await?;
    eprintln!("sequential raw store creates: {raw_seq:?}");
    let rss_services = proc_status_mib(server.pid, "VmRSS:").unwrap_or(0.0);
    let slices = fill::endpoint_slices(&client, "default", api_seq.ops, 16)
        .await
        .with_context(|| format!("server stderr:\n{}", server.stderr()))?;
    eprintln!("EndpointSlice creates (16 clients): {slices:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_full = proc_status_mib(server.pid, "VmRSS:").unwrap_or(0.0);
    let (listed, list_time) = fill::list_services(&client, "default").await?;
    let rss_after_list = proc_status_mib(server.pid, "VmRSS:").unwrap_or(0.0);
    let hwm = proc_status_mib(server.pid, "VmHWM:").unwrap_or(0.0);
    let stopped = server.stop().await?;

    let _ = writeln!(
        report,
        "## 3. Resident memory with {} Services and {} EndpointSlices\n",
        api_seq.ops, slices.ops
    );
    let _ = writeln!(
        report,
        "The real `portico apiserver --secure-port 0 --data-dir <fresh>` as a child process; VmRSS from `/proc/<pid>/status`. \
         Services as in part 1; EndpointSlices with 3 ready endpoints and 2 ports each (created by 16 clients at {:.0}/s, p99 {:.2} ms).\n",
        slices.rate,
        ms(slices.p99)
    );
    let _ = writeln!(report, "| state | VmRSS MiB |");
    let _ = writeln!(report, "| --- | ---: |");
    let _ = writeln!(report, "| idle, empty | {rss_idle:.1} |");
    let _ = writeln!(report, "| + {} Services | {rss_services:.1} |", api_seq.ops);
    let _ = writeln!(
        report,
        "| + {} EndpointSlices (target < 300 MB: {}) | **{rss_full:.1}** |",
        slices.ops,
        if rss_full * 1.048_576 < 300.0 {
            "met"
        } else {
            "missed"
        }
    );
    let _ = writeln!(
        report,
        "| after one LIST of all {listed} Services ({:.0} ms) | {rss_after_list:.1} |",
        ms(list_time)
    );
    let _ = writeln!(report, "| peak (VmHWM) | {hwm:.1} |");
    let _ = writeln!(
        report,
        "\nSIGTERM → exit with these objects: {}.\n",
        match stopped {
            Some(d) => format!("{:.0} ms", ms(d)),
            None => "**did not exit within 10 s** (killed)".to_string(),
        }
    );

    let _ = writeln!(
        report,
        "## 5. {} Services created one after another: API vs raw store\n",
        api_seq.ops
    );
    let _ = writeln!(
        report,
        "One client, one request in flight, on the server of part 3 while it fills. Raw store: the same number of creates \
         (compare \"absent\", then put of the {}-byte JSON the API stored for the first Service) into a fresh `EmbeddedStore` \
         opened in this process, on the same disk, right after.\n",
        sample.len()
    );
    let _ = writeln!(
        report,
        "| path | creates | total s | creates/s | p50 / p99 / max ms |"
    );
    let _ = writeln!(report, "| --- | ---: | ---: | ---: | ---: |");
    for (path, s) in [
        ("API (HTTPS, embedded store)", &api_seq),
        ("raw EmbeddedStore txn", &raw_seq),
    ] {
        let _ = writeln!(
            report,
            "| {path} | {} | {:.1} | {:.0} | {:.2} / {:.2} / {:.2} |",
            s.ops,
            s.ops as f64 / s.rate.max(f64::MIN_POSITIVE),
            s.rate,
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }
    let _ = writeln!(
        report,
        "\nAPI / raw store: **{:.2}**.\n",
        api_seq.rate / raw_seq.rate.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

/// Spawn → listening line → first `/readyz` 200, then SIGTERM → exit.
async fn start_once(
    binary: &Path,
    command: &str,
    parent: &Path,
) -> Result<(Duration, Duration, Duration)> {
    let server = ServerProcess::start(binary, command, parent).await?;
    let client = server.client().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let request = http::Request::get("/readyz").body(Vec::new())?;
        if client.request_text(request).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("/readyz not 200 within 10 s; stderr:\n{}", server.stderr());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ready = server.since_spawn();
    let listening = server.listening_after;
    let stop = server.stop().await?.unwrap_or(Duration::from_secs(10));
    Ok((listening, ready, stop))
}

async fn section_startup(
    report: &mut String,
    args: &Args,
    binary: &Path,
    parent: &Path,
) -> Result<()> {
    let _ = writeln!(
        report,
        "## 4. Start to `/readyz` 200 on an empty data dir\n"
    );
    let _ = writeln!(
        report,
        "Spawn of the binary (`--secure-port 0 --data-dir <fresh>`) → its listening line on stdout → the first `GET /readyz` \
         answered 200 (kube-rs client built from the kubeconfig it wrote, polled every 2 ms); then SIGTERM → exit. \
         {} starts per command; median (min–max).\n",
        args.starts
    );
    let _ = writeln!(
        report,
        "| command | listening line ms | /readyz 200 ms | target < 1 s | SIGTERM → exit ms |"
    );
    let _ = writeln!(report, "| --- | ---: | ---: | :---: | ---: |");
    for command in ["up", "apiserver"] {
        let mut listening = Vec::new();
        let mut ready = Vec::new();
        let mut stop = Vec::new();
        for _ in 0..args.starts.max(1) {
            let (l, r, s) = start_once(binary, command, parent).await?;
            eprintln!(
                "start {command}: listening {:.1} ms, ready {:.1} ms, stop {:.1} ms",
                ms(l),
                ms(r),
                ms(s)
            );
            listening.push(ms(l));
            ready.push(ms(r));
            stop.push(ms(s));
        }
        let range = |v: &[f64]| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(0.0, f64::max);
            format!("{:.0} ({min:.0}–{max:.0})", median(v.to_vec()))
        };
        let verdict = if median(ready.clone()) < 1000.0 {
            "met"
        } else {
            "**missed**"
        };
        let _ = writeln!(
            report,
            "| `portico {command}` | {} | {} | {verdict} | {} |",
            range(&listening),
            range(&ready),
            range(&stop)
        );
    }
    let _ = writeln!(report);
    Ok(())
}
