//! nftables programming benchmark, all inside network namespaces it creates and removes.
//!
//! For N Services × 10 endpoints it measures, in the same run:
//! - our full sync (netlink batches) into a fresh namespace, vs `nft -f` of an equivalent
//!   kube-proxy-shaped ruleset (a chain per Service and per endpoint, `service-ips` verdict
//!   map, `numgen` verdict maps) into another fresh namespace, time-capped;
//! - one Service changed (endpoint replaced) and one Service added with N existing, ours vs
//!   `nft -f` adding one kube-proxy-shaped Service to the loaded baseline table;
//! - first-packet connect latency through a cluster IP (pod → Service → pod on the same node
//!   of a sandbox) against a direct connect, at each N;
//! - the process's resident memory growth for the plan and for the backend state.
//!
//! Usage: `portico-bench-nft [--sizes 1000,10000,30000] [--baseline-cap-secs 60] [--out FILE]`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use portico_core::plan::{Endpoint, NoEndpoints, Plan, Protocol, ServicePortName, ServicePortPlan};
use portico_nft::{NftBackend, NftConfig};
use portico_testnet::{Netns, Sandbox};

const ENDPOINTS: usize = 10;

fn cluster_ip(i: usize) -> Ipv4Addr {
    // 10.96.0.0/12 holds 1M addresses; skip .0.
    let n = 0x0a60_0000u32 + 1 + i as u32;
    Ipv4Addr::from(n)
}

fn endpoint_ip(i: usize, e: usize) -> Ipv4Addr {
    // 10.128.0.0/9: 8M addresses.
    Ipv4Addr::from(0x0a80_0000u32 + 1 + (i * ENDPOINTS + e) as u32)
}

fn endpoint(ip: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(ip),
        port,
        ready: true,
        serving: true,
        terminating: false,
        is_local: false,
        // As EndpointSlices say in a real cluster: every endpoint names its node.
        node_name: Some("other-node".into()),
        zone: None,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

fn service(i: usize, endpoints: Vec<Endpoint>) -> ServicePortPlan {
    ServicePortPlan {
        name: ServicePortName {
            namespace: format!("ns{}", i % 100),
            name: format!("svc{i}"),
            port: "p80".into(),
            protocol: Protocol::Tcp,
        },
        cluster_ips: vec![IpAddr::V4(cluster_ip(i))],
        port: 80,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        affinity_timeout_seconds: None,
        internal_policy_local: false,
        external_policy_local: false,
        health_check_node_port: None,
        cluster_endpoints: endpoints.clone(),
        external_endpoints: endpoints.clone(),
        cluster_no_endpoints: NoEndpoints::Reject,
        external_no_endpoints: NoEndpoints::Reject,
        local_endpoint_count: 0,
        last_change_trigger_time: None,
        cluster_policy_endpoints: endpoints,
        local_policy_endpoints: vec![],
        has_endpoints_v4: true,
        has_endpoints_v6: false,
    }
}

fn plan_of(n: usize) -> Plan {
    let mut plan = Plan::default();
    for i in 0..n {
        let eps = (0..ENDPOINTS)
            .map(|e| endpoint(endpoint_ip(i, e), 8080))
            .collect();
        let s = service(i, eps);
        plan.services.insert(s.name.clone(), s);
    }
    plan
}

fn config() -> NftConfig {
    let batch = std::env::var("PORTICO_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(NftConfig::default().batch_services);
    NftConfig {
        batch_services: batch,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        service_cidrs: vec!["10.96.0.0/12".parse().expect("cidr")],
        ipv6: false,
        conntrack_cleanup: false,
        ..NftConfig::default()
    }
}

/// A kube-proxy-nftables-shaped ruleset for services `range`: a chain per Service (masquerade
/// check + `numgen random mod E vmap` to endpoint chains) and per endpoint (hairpin masquerade
/// check + `dnat`), dispatched by the `service-ips` verdict map.
fn kube_proxy_text(range: std::ops::Range<usize>, with_skeleton: bool) -> String {
    let mut out = String::with_capacity(range.len() * 2000);
    let t = "ip kube-proxy";
    if with_skeleton {
        let _ = writeln!(out, "add table {t}");
        let _ = writeln!(
            out,
            "add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}"
        );
        let _ = writeln!(out, "add chain {t} mark-for-masquerade");
        let _ = writeln!(
            out,
            "add rule {t} mark-for-masquerade meta mark set meta mark or 0x4000"
        );
        let _ = writeln!(out, "add chain {t} services");
        let _ = writeln!(
            out,
            "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips"
        );
        let _ = writeln!(
            out,
            "add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}"
        );
        let _ = writeln!(out, "add rule {t} nat-prerouting jump services");
        let _ = writeln!(
            out,
            "add chain {t} nat-output {{ type nat hook output priority -100 ; }}"
        );
        let _ = writeln!(out, "add rule {t} nat-output jump services");
        let _ = writeln!(
            out,
            "add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}"
        );
        let _ = writeln!(
            out,
            "add rule {t} nat-postrouting meta mark & 0x4000 == 0x4000 masquerade"
        );
    }
    for i in range {
        let svc = format!(
            "service-{:08X}-ns{}/svc{i}/tcp/p80",
            (i as u32).wrapping_mul(2654435761),
            i % 100
        );
        let _ = writeln!(out, "add chain {t} {svc}");
        let _ = writeln!(
            out,
            "add rule {t} {svc} ip daddr {} tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
            cluster_ip(i)
        );
        let mut vmap = Vec::new();
        for e in 0..ENDPOINTS {
            let ip = endpoint_ip(i, e);
            let ep = format!(
                "endpoint-{:08X}-ns{}/svc{i}/tcp/p80__{ip}/8080",
                (i * 31 + e) as u32,
                i % 100
            );
            let _ = writeln!(out, "add chain {t} {ep}");
            let _ = writeln!(
                out,
                "add rule {t} {ep} ip saddr {ip} jump mark-for-masquerade"
            );
            let _ = writeln!(out, "add rule {t} {ep} meta l4proto tcp dnat to {ip}:8080");
            vmap.push(format!("{e} : goto {ep}"));
        }
        let _ = writeln!(
            out,
            "add rule {t} {svc} numgen random mod {ENDPOINTS} vmap {{ {} }}",
            vmap.join(", ")
        );
        let _ = writeln!(
            out,
            "add element {t} service-ips {{ {} . tcp . 80 : goto {svc} }}",
            cluster_ip(i)
        );
    }
    out
}

/// Runs `nft -f FILE` in `ns`, killed after `cap`. `None` when capped.
fn nft_file(ns: &Netns, text: &str, cap: Duration) -> Result<Option<Duration>> {
    let path = std::env::temp_dir().join(format!("portico-bench-nft-{}.nft", std::process::id()));
    std::fs::write(&path, text)?;
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    loop {
        if let Some(status) = child.try_wait()? {
            let took = start.elapsed();
            let _ = std::fs::remove_file(&path);
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!(
                    "nft -f failed: {}",
                    err.lines().take(3).collect::<Vec<_>>().join(" | ")
                );
            }
            return Ok(Some(took));
        }
        if start.elapsed() > cap {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Services per `nft -f` call of the baseline: one huge transaction is quadratic in the
/// kernel, so the baseline loads in transactions of this size (as kube-proxy would have to).
const BASELINE_CHUNK: usize = 1000;

/// Loads the kube-proxy-shaped ruleset for `n` Services in chunks; `None` past `cap` in total.
fn nft_chunked(ns: &Netns, n: usize, cap: Duration) -> Result<Option<Duration>> {
    let mut total = Duration::ZERO;
    let mut start = 0;
    while start < n {
        let end = (start + BASELINE_CHUNK).min(n);
        let text = kube_proxy_text(start..end, start == 0);
        let Some(remaining) = cap.checked_sub(total) else {
            return Ok(None);
        };
        match nft_file(ns, &text, remaining)? {
            Some(d) => total += d,
            None => return Ok(None),
        }
        start = end;
    }
    Ok(Some(total))
}

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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Connect latency: `count` connects from the calling thread's namespace; sorted durations.
fn connects(addr: SocketAddr, count: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            out.push(start.elapsed());
            drop(s);
        }
    }
    out.sort();
    out
}

struct Row {
    n: usize,
    ours_full: Duration,
    ours_full_kernel: Duration,
    ours_transactions: usize,
    baseline_full: Option<Duration>,
    ours_change: Vec<Duration>,
    ours_add: Duration,
    ours_change_scan: Duration,
    kernel_change_p50: Duration,
    baseline_add: Option<Duration>,
    plan_mib: f64,
    backend_mib: f64,
    lat_direct: (Duration, Duration),
    lat_service: (Duration, Duration),
}

fn run_size(n: usize, cap: Duration) -> Result<Row> {
    eprintln!("== {n} services × {ENDPOINTS} endpoints");
    let rss0 = rss_kib();
    let mut plan = plan_of(n);
    let rss_plan = rss_kib();

    // Ours: full sync into a fresh namespace of a one-node sandbox, with a real pod behind the
    // last Service for the latency check.
    let mut sb = Sandbox::build(1).context("sandbox")?;
    sb.add_pod(0, "server").context("server pod")?;
    sb.add_pod(0, "client").context("client pod")?;
    let server = &sb.pods[0];
    let server_ip = match server.ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => bail!("v4 sandbox expected"),
    };
    // A bare accept loop in the server pod (connect latency only).
    let listener = server.ns.run(|| TcpListener::bind("0.0.0.0:0"))??;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let target = n - 1;
    let target_svc = service(target, vec![endpoint(server_ip, port)]);
    plan.services.insert(target_svc.name.clone(), target_svc);

    let mut backend = NftBackend::new(Some(sb.nodes[0].ns.path()), config())?;
    let start = Instant::now();
    let stats = backend.sync(&plan)?;
    let ours_full = start.elapsed();
    let rss_backend = rss_kib();
    eprintln!(
        "   ours full sync: {} in {} transactions",
        secs(ours_full),
        stats.transactions
    );

    // One Service changed: replace one endpoint of a different Service each time.
    let mut ours_change = Vec::new();
    let mut kernel_change = Vec::new();
    for k in 0..20 {
        let i = (k * 7919) % (n - 1);
        let name = service(i, vec![]).name;
        if let Some(s) = plan.services.get_mut(&name) {
            let ep = endpoint(
                Ipv4Addr::new(10, 255, (k / 250) as u8, (k % 250) as u8 + 1),
                8080,
            );
            s.cluster_endpoints[0] = ep.clone();
            s.external_endpoints[0] = ep.clone();
            s.cluster_policy_endpoints[0] = ep;
        }
        let start = Instant::now();
        let st = backend.sync_changed(&plan, &[name.service()])?;
        ours_change.push(start.elapsed());
        kernel_change.push(st.kernel);
        if st.services_changed != 1 {
            bail!("expected one changed service, got {st:?}");
        }
    }
    ours_change.sort();
    kernel_change.sort();
    // One Service added.
    let added = service(
        n + 1,
        (0..ENDPOINTS)
            .map(|e| endpoint(endpoint_ip(n + 1, e), 8080))
            .collect(),
    );
    let added_name = added.name.service();
    plan.services.insert(added.name.clone(), added);
    let start = Instant::now();
    backend.sync_changed(&plan, &[added_name])?;
    let ours_add = start.elapsed();
    // The same kind of change found by comparing the whole plan (no hint).
    let name = service(1, vec![]).name;
    if let Some(s) = plan.services.get_mut(&name) {
        s.cluster_endpoints.pop();
    }
    let start = Instant::now();
    backend.sync(&plan)?;
    let ours_change_scan = start.elapsed();
    eprintln!(
        "   ours one change p50 {} max {}, add {}",
        ms(percentile(&ours_change, 0.5)),
        ms(percentile(&ours_change, 1.0)),
        ms(ours_add)
    );

    // First-packet latency: pod → Service → pod (same node), vs direct.
    let direct = SocketAddr::new(IpAddr::V4(server_ip), port);
    let via = SocketAddr::new(IpAddr::V4(cluster_ip(target)), 80);
    let client = &sb.pods[1].ns;
    let (d, v) = client.run(move || {
        let _ = connects(direct, 50);
        let d = connects(direct, 2000);
        let _ = connects(via, 50);
        let v = connects(via, 2000);
        (d, v)
    })?;
    if v.len() < 1900 {
        bail!(
            "only {} of 2000 connects through the cluster IP succeeded",
            v.len()
        );
    }
    let lat_direct = (percentile(&d, 0.5), percentile(&d, 0.99));
    let lat_service = (percentile(&v, 0.5), percentile(&v, 0.99));
    eprintln!(
        "   connect p50/p99 direct {}/{} via cluster IP {}/{}",
        us(lat_direct.0),
        us(lat_direct.1),
        us(lat_service.0),
        us(lat_service.1)
    );
    drop(backend);
    drop(sb);

    // Baseline: nft -f of the kube-proxy-shaped ruleset into a fresh namespace.
    let ns = Netns::new("kp")?;
    let baseline_full = nft_chunked(&ns, n, cap)?;
    match baseline_full {
        Some(d) => eprintln!(
            "   nft -f kube-proxy shape, {BASELINE_CHUNK} Services per nft -f: {}",
            secs(d)
        ),
        None => eprintln!(
            "   nft -f kube-proxy shape: over the {} cap, killed",
            secs(cap)
        ),
    }
    let baseline_add = if baseline_full.is_some() {
        let one = kube_proxy_text(n + 1..n + 2, false);
        let d = nft_file(&ns, &one, cap)?;
        if let Some(d) = d {
            eprintln!("   nft -f add one service: {}", ms(d));
        }
        d
    } else {
        None
    };
    drop(ns);

    Ok(Row {
        n,
        ours_full,
        ours_full_kernel: stats.kernel,
        ours_transactions: stats.transactions,
        baseline_full,
        ours_change,
        ours_add,
        ours_change_scan,
        kernel_change_p50: percentile(&kernel_change, 0.5),
        baseline_add,
        plan_mib: rss_plan.saturating_sub(rss0) as f64 / 1024.0,
        backend_mib: rss_backend.saturating_sub(rss_plan) as f64 / 1024.0,
        lat_direct,
        lat_service,
    })
}

fn main() -> Result<()> {
    let mut sizes = vec![1000, 10_000, 30_000];
    let mut cap = Duration::from_secs(60);
    let mut out_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = args
                    .next()
                    .context("--sizes")?
                    .split(',')
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?
            }
            "--baseline-cap-secs" => {
                cap = Duration::from_secs(args.next().context("--baseline-cap-secs")?.parse()?)
            }
            "--out" => out_file = Some(args.next().context("--out")?),
            other => bail!("unknown argument {other}"),
        }
    }
    if !nix_is_root() {
        bail!("needs root (network namespaces)");
    }
    let mut rows = Vec::new();
    for n in sizes {
        rows.push(run_size(n, cap)?);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| Services × 10 endpoints | ours: full sync (kernel part) | `nft -f` kube-proxy shape | ratio | ours: 1 Service changed p50 / max (20 runs; kernel part p50) | same change found by comparing the whole plan | ours: 1 Service added | `nft -f`: 1 Service added | connect p50 / p99 direct | connect p50 / p99 via cluster IP | RSS: plan / backend state |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let base = r
            .baseline_full
            .map_or(format!("> {} (killed at the cap)", secs(cap)), secs);
        let ratio = r.baseline_full.map_or("—".to_string(), |b| {
            format!("{:.1}×", b.as_secs_f64() / r.ours_full.as_secs_f64())
        });
        let _ = writeln!(
            md,
            "| {} | {} ({}; {} transactions) | {} | {} | {} / {} ({}) | {} | {} | {} | {} / {} | {} / {} | {:.0} MiB / {:.0} MiB |",
            r.n,
            secs(r.ours_full),
            secs(r.ours_full_kernel),
            r.ours_transactions,
            base,
            ratio,
            ms(percentile(&r.ours_change, 0.5)),
            ms(percentile(&r.ours_change, 1.0)),
            ms(r.kernel_change_p50),
            ms(r.ours_change_scan),
            ms(r.ours_add),
            r.baseline_add.map_or("—".to_string(), ms),
            us(r.lat_direct.0),
            us(r.lat_direct.1),
            us(r.lat_service.0),
            us(r.lat_service.1),
            r.plan_mib,
            r.backend_mib,
        );
    }
    println!("{md}");
    if let Some(path) = out_file {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(md.as_bytes())?;
    }
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
