//! DNS benchmark: portico's cluster DNS against Knot DNS and NSD serving the same generated
//! zone, measured with dnsperf, all on 127.0.0.1 with free ports, the server pinned to CPU 1 and
//! dnsperf to CPU 0 (taskset). Also: memory at 10,000 Services / 100,000 endpoints, a trivial UDP
//! responder as the machine's ceiling, and the time from a Service create in the API to a correct
//! answer. Results go to `bench/dns/RESULTS.md`.
//!
//! Must not: send traffic anywhere but 127.0.0.1, or run unbounded (every run has a time limit).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod blast;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use portico_dns::index::{EndpointRecord, PortRecord, ServiceKind, ServiceRecord, SliceRecord};

#[derive(Parser)]
#[command(about = "portico DNS vs Knot DNS vs NSD")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a generated cluster from the index (started by `run` as a pinned child process).
    Serve {
        #[arg(long)]
        services: usize,
        /// Endpoints per ClusterIP Service (headless ones always get 10).
        #[arg(long, default_value_t = 0)]
        endpoints: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Microseconds a UDP worker keeps polling after a query before it sleeps.
        #[arg(long, default_value_t = 50)]
        poll_us: u64,
    },
    /// A trivial UDP responder (flips QR and echoes): the ceiling of any DNS server here.
    Echo,
    /// Our own light load generator (sendmmsg/recvmmsg batches) against a loopback server;
    /// prints `sent answered lost seconds`.
    Blast {
        #[arg(long)]
        port: u16,
        /// A dnsperf-style query file (`name TYPE` per line).
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        sockets: usize,
        /// Queries outstanding per socket.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    /// The whole comparison.
    Run {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
        sizes: Vec<usize>,
        /// Seconds per dnsperf run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value = "bench/dns/RESULTS.md")]
        out: PathBuf,
        /// Skip the API → answer latency part.
        #[arg(long)]
        skip_latency: bool,
    },
    /// Time from a Service create in the API to a correct answer.
    Latency {
        #[arg(long, default_value_t = 1000)]
        preload: usize,
        #[arg(long, default_value_t = 200)]
        creates: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Run {
        sizes: vec![1000, 10000, 50000],
        seconds: 10,
        out: PathBuf::from("bench/dns/RESULTS.md"),
        skip_latency: false,
    }) {
        Cmd::Serve {
            services,
            endpoints,
            workers,
            poll_us,
        } => serve(services, endpoints, workers, poll_us),
        Cmd::Echo => echo(),
        Cmd::Blast {
            port,
            file,
            seconds,
            sockets,
            window,
        } => {
            let queries = wire_queries(&file)?;
            let b = blast::blast(
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                &queries,
                Duration::from_secs(seconds),
                sockets,
                window,
            )?;
            println!("{} {} {} {}", b.sent, b.answered, b.lost, b.seconds);
            Ok(())
        }
        Cmd::Run {
            sizes,
            seconds,
            out,
            skip_latency,
        } => run(&sizes, seconds, &out, skip_latency),
        Cmd::Latency { preload, creates } => {
            let (text, _) = tokio::runtime::Runtime::new()?.block_on(latency(preload, creates))?;
            println!("{text}");
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- the generated cluster

fn ns_of(i: usize) -> String {
    format!("ns-{}", i % 100)
}

fn is_headless(i: usize) -> bool {
    i % 100 == 50
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1)
}

fn endpoint_ip(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i as u32) * 16 + j as u32 + 1)
}

const HEADLESS_ENDPOINTS: usize = 10;
/// The polling window of the second portico instance in the latency runs (the first one, used
/// for every throughput and capacity number, never polls, so its CPU time is work only).
const POLL_US: u64 = 50;

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn fill_index(index: &mut portico_dns::Index, services: usize, endpoints: usize) {
    let http = PortRecord {
        name: "http".into(),
        protocol: "tcp".into(),
        port: 80,
    };
    for i in 0..services {
        let ns = ns_of(i);
        let name = format!("svc-{i}");
        let headless = is_headless(i);
        let kind = if headless {
            ServiceKind::Headless
        } else {
            ServiceKind::ClusterIp(vec![cluster_ip(i).into()])
        };
        index.upsert_service(ServiceRecord {
            namespace: ns.clone(),
            name: name.clone(),
            kind,
            ports: vec![http.clone()],
            publish_not_ready: false,
        });
        let count = if headless {
            HEADLESS_ENDPOINTS
        } else {
            endpoints
        };
        if count > 0 {
            index.upsert_slice(SliceRecord {
                namespace: ns,
                name: format!("{name}-abcde"),
                service: name,
                ports: vec![http.clone()],
                endpoints: (0..count)
                    .map(|j| EndpointRecord {
                        addresses: vec![endpoint_ip(i, j).into()],
                        hostname: None,
                        ready: true,
                    })
                    .collect(),
            });
        }
    }
}

/// The same records as a zone file for Knot and NSD.
fn zone_files(dir: &Path, services: usize) -> anyhow::Result<()> {
    let mut z = String::with_capacity(services * 200);
    z.push_str("$ORIGIN cluster.local.\n$TTL 5\n");
    z.push_str("@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ NS ns.dns.cluster.local.\n");
    z.push_str("dns-version 28800 TXT \"1.1.0\"\n");
    let mut r = String::with_capacity(services * 60);
    r.push_str("$ORIGIN 10.in-addr.arpa.\n$TTL 5\n");
    r.push_str("@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ NS ns.dns.cluster.local.\n");
    let rev = |ip: Ipv4Addr| {
        let o = ip.octets();
        format!("{}.{}.{}", o[3], o[2], o[1])
    };
    for i in 0..services {
        let owner = format!("svc-{i}.{}.svc", ns_of(i));
        if is_headless(i) {
            for j in 0..HEADLESS_ENDPOINTS {
                let ip = endpoint_ip(i, j);
                let host = format!("{}.{owner}", dashed(ip));
                let _ = writeln!(
                    z,
                    "{owner} A {ip}\n{host} A {ip}\n_http._tcp.{owner} SRV 0 10 80 {host}.cluster.local."
                );
                let _ = writeln!(r, "{} PTR {host}.cluster.local.", rev(ip));
            }
        } else {
            let ip = cluster_ip(i);
            let _ = writeln!(
                z,
                "{owner} A {ip}\n_http._tcp.{owner} SRV 0 100 80 {owner}.cluster.local."
            );
            let _ = writeln!(r, "{} PTR {owner}.cluster.local.", rev(ip));
        }
    }
    std::fs::write(dir.join("cluster.local.zone"), z)?;
    std::fs::write(dir.join("10.in-addr.arpa.zone"), r)?;
    Ok(())
}

/// A deterministic shuffle (LCG) so every server sees the same query order.
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (s >> 33) as usize % (i + 1);
        v.swap(i, j);
    }
    v
}

/// Query files: Q1 one hot name, Q2 uniform A, Q3 70% A / 20% SRV / 10% NXDOMAIN.
fn query_files(dir: &Path, services: usize) -> anyhow::Result<[(String, PathBuf); 3]> {
    let q1 = dir.join("q1.txt");
    std::fs::write(&q1, "svc-1.ns-1.svc.cluster.local A\n")?;
    let order = shuffled(services);
    let mut q2 = String::new();
    let mut q3 = String::new();
    for (k, &i) in order.iter().enumerate() {
        let owner = format!("svc-{i}.{}.svc.cluster.local", ns_of(i));
        let _ = writeln!(q2, "{owner} A");
        match k % 10 {
            0..=6 => {
                let _ = writeln!(q3, "{owner} A");
            }
            7 | 8 => {
                let _ = writeln!(q3, "_http._tcp.{owner} SRV");
            }
            _ => {
                let _ = writeln!(q3, "missing-{i}.{}.svc.cluster.local A", ns_of(i));
            }
        }
    }
    let (p2, p3) = (dir.join("q2.txt"), dir.join("q3.txt"));
    std::fs::write(&p2, q2)?;
    std::fs::write(&p3, q3)?;
    Ok([
        ("Q1 hot name".into(), q1),
        ("Q2 uniform A".into(), p2),
        ("Q3 70% A/20% SRV/10% NX".into(), p3),
    ])
}

// ---------------------------------------------------------------- child processes

/// Kills and reaps the child when dropped.
struct Guard {
    child: Child,
    /// For logs.
    #[allow(dead_code)]
    name: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    for _ in 0..32 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port")
}

/// Sends one query; returns (rcode, answer count).
fn probe(port: u16, name: &str, qtype: u16) -> Option<(u8, u16)> {
    let mut wire = Vec::new();
    for label in name.split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .ok()?;
    socket
        .send_to(
            &portico_dns::wire::build_query(7, &wire, qtype, false, None),
            ("127.0.0.1", port),
        )
        .ok()?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    (n >= 12).then(|| (buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]])))
}

fn wait_answering(port: u16, name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if let Some((0, n)) = probe(port, name, 1)
            && n > 0
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("server on port {port} did not answer {name}")
}

/// The process and all its descendants (NSD forks its server processes and xfrd, and a
/// reload forks again).
fn family(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let parent = stat
                .rsplit(") ")
                .next()
                .unwrap_or("")
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(parent) = parent {
                parents.push((child, parent));
            }
        }
    }
    let mut pids = vec![pid];
    let mut at = 0;
    while at < pids.len() {
        let current = pids[at];
        for &(child, parent) in &parents {
            if parent == current && !pids.contains(&child) {
                pids.push(child);
            }
        }
        at += 1;
    }
    pids
}

/// CPU time (ns) used so far by every thread of the process and its children
/// (`/proc/*/task/*/schedstat`, nanosecond resolution).
fn cpu_ns(pid: u32) -> u64 {
    family(pid)
        .iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).ok())
        .flat_map(|tasks| tasks.flatten())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Pins every thread of the process and its children to CPU 1. Knot pins its UDP workers
/// itself (worker i to CPU i, whatever mask it inherited), which would put its worker on the
/// load generator's CPU; this undoes that after start-up.
fn pin_to_server_cpu(pid: u32) -> anyhow::Result<()> {
    for p in family(pid) {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &p.to_string()])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "taskset -a -p -c 1 {p} failed");
    }
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    family(pid)
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn start_ours(
    services: usize,
    endpoints: usize,
    workers: usize,
    poll_us: u64,
) -> anyhow::Result<(Guard, u16)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(exe)
        .args([
            "serve",
            "--services",
            &services.to_string(),
            "--endpoints",
            &endpoints.to_string(),
            "--workers",
            &workers.to_string(),
            "--poll-us",
            &poll_us.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting our server")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let guard = Guard {
        child,
        name: "portico".into(),
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    // "portico dns listening on udp://127.0.0.1:PORT tcp://127.0.0.1:PORT"
    let port = line
        .split("udp://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .with_context(|| format!("unexpected first line {line:?}"))?;
    Ok((guard, port))
}

fn start_knot(dir: &Path) -> anyhow::Result<(Guard, u16)> {
    let port = free_port()?;
    let conf = format!(
        "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
database:\n    storage: \"{d}/db\"\nlog:\n  - target: stderr\n    any: error\n\
template:\n  - id: default\n    storage: \"{d}\"\n    zonefile-sync: -1\n    journal-content: none\n\
zone:\n  - domain: cluster.local\n    file: cluster.local.zone\n  - domain: 10.in-addr.arpa\n    file: 10.in-addr.arpa.zone\n",
        d = dir.display()
    );
    std::fs::write(dir.join("knot.conf"), conf)?;
    let child = Command::new("taskset")
        .args(["-c", "1", "knotd", "-c"])
        .arg(dir.join("knot.conf"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting knotd")?;
    Ok((
        Guard {
            child,
            name: "knot".into(),
        },
        port,
    ))
}

fn start_nsd(dir: &Path) -> anyhow::Result<(Guard, u16)> {
    let port = free_port()?;
    let conf = format!(
        "server:\n    ip-address: 127.0.0.1@{port}\n    server-count: 1\n    username: \"\"\n    chroot: \"\"\n    zonesdir: \"{d}\"\n\
    pidfile: \"{d}/nsd.pid\"\n    database: \"\"\n    xfrdfile: \"{d}/xfrd.state\"\n    zonelistfile: \"{d}/zone.list\"\n    verbosity: 0\n\
remote-control:\n    control-enable: no\n\
zone:\n    name: cluster.local\n    zonefile: cluster.local.zone\n\
zone:\n    name: 10.in-addr.arpa\n    zonefile: 10.in-addr.arpa.zone\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nsd.conf"), conf)?;
    let child = Command::new("taskset")
        .args(["-c", "1", "nsd", "-d", "-c"])
        .arg(dir.join("nsd.conf"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting nsd")?;
    Ok((
        Guard {
            child,
            name: "nsd".into(),
        },
        port,
    ))
}

// ---------------------------------------------------------------- dnsperf

struct Perf {
    qps: f64,
    lost_pct: f64,
    /// Server CPU seconds used during the run.
    cpu_s: f64,
    /// Answers received.
    answered: f64,
}

impl Perf {
    /// Answers per second of server CPU time.
    fn per_cpu_second(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.answered / self.cpu_s
        } else {
            0.0
        }
    }

    /// Share of one CPU the server used.
    fn cpu_share(&self, seconds: f64) -> f64 {
        self.cpu_s / seconds
    }
}

fn dnsperf(port: u16, file: &Path, seconds: u64, extra: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("taskset")
        .args([
            "-c",
            "0",
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
        ])
        .arg(file)
        .args(["-l", &seconds.to_string(), "-t", "2"])
        .args(extra)
        .output()
        .context("running dnsperf (apt-get install dnsperf)")?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn field(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
    line.split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn max_rate(port: u16, file: &Path, seconds: u64, pid: u32) -> anyhow::Result<Perf> {
    let cpu_before = cpu_ns(pid);
    let text = dnsperf(port, file, seconds, &["-c", "8", "-q", "400", "-T", "1"])?;
    let cpu_s = cpu_ns(pid).saturating_sub(cpu_before) as f64 / 1e9;
    let qps =
        field(&text, "Queries per second").with_context(|| format!("dnsperf output: {text}"))?;
    let sent = field(&text, "Queries sent").unwrap_or(0.0);
    let lost = field(&text, "Queries lost").unwrap_or(0.0);
    let answered = field(&text, "Queries completed").unwrap_or(0.0);
    Ok(Perf {
        qps,
        lost_pct: if sent > 0.0 { 100.0 * lost / sent } else { 0.0 },
        cpu_s,
        answered,
    })
}

/// Our light load generator on CPU 0 against the server (see `blast.rs`).
fn blast_rate(port: u16, file: &Path, seconds: u64, pid: u32) -> anyhow::Result<Perf> {
    let exe = std::env::current_exe()?;
    let cpu_before = cpu_ns(pid);
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(exe)
        .args(["blast", "--port", &port.to_string(), "--file"])
        .arg(file)
        .args(["--seconds", &seconds.to_string()])
        .output()
        .context("running the load generator")?;
    let cpu_s = cpu_ns(pid).saturating_sub(cpu_before) as f64 / 1e9;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [sent, answered, lost, secs] = v[..] else {
        bail!(
            "load generator output {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok(Perf {
        qps: answered / secs,
        lost_pct: if sent > 0.0 { 100.0 * lost / sent } else { 0.0 },
        cpu_s,
        answered,
    })
}

/// The queries of a dnsperf-style file as wire packets (RD set, no EDNS, like dnsperf's
/// defaults), IDs counting up.
fn wire_queries(file: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(file)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(qtype)) = (words.next(), words.next()) else {
            continue;
        };
        let code = match qtype {
            "A" => 1,
            "AAAA" => 28,
            "SRV" => 33,
            "PTR" => 12,
            "TXT" => 16,
            other => bail!("unknown query type {other}"),
        };
        let mut wire = Vec::with_capacity(name.len() + 2);
        for label in name.trim_end_matches('.').split('.') {
            wire.push(u8::try_from(label.len())?);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
        out.push(portico_dns::wire::build_query(
            i as u16, &wire, code, true, None,
        ));
    }
    Ok(out)
}

/// One throughput table row: portico, Knot and NSD with their CPU shares, per-CPU-second rates
/// and losses.
fn throughput_row(n: usize, mix: &str, secs: f64, [p, k, d]: [&Perf; 3]) -> String {
    format!(
        "| {n} | {mix} | {:.0} ({:.0}%) | {:.0} ({:.0}%) | {:.0} ({:.0}%) | {:.2} | {:.0} | {:.0} | {:.0} | {:.2}/{:.2}/{:.2} |\n",
        p.qps,
        100.0 * p.cpu_share(secs),
        k.qps,
        100.0 * k.cpu_share(secs),
        d.qps,
        100.0 * d.cpu_share(secs),
        p.qps / k.qps,
        p.per_cpu_second(),
        k.per_cpu_second(),
        d.per_cpu_second(),
        p.lost_pct,
        k.lost_pct,
        d.lost_pct
    )
}

/// p50 and p99 (ms) at a fixed rate, from dnsperf's per-query output.
/// One fixed-rate run: latency percentiles and the server's CPU time.
struct AtRate {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    qps: f64,
    perf: Perf,
}

/// p50/p99/p99.9 (ms) at a fixed rate, from dnsperf's per-query output, and the server's CPU.
fn latency_at(port: u16, file: &Path, rate: u64, seconds: u64, pid: u32) -> anyhow::Result<AtRate> {
    let cpu_before = cpu_ns(pid);
    let text = dnsperf(
        port,
        file,
        seconds,
        &[
            "-c",
            "8",
            "-q",
            "400",
            "-T",
            "1",
            "-Q",
            &rate.to_string(),
            "-v",
        ],
    )?;
    let mut samples: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .collect();
    if samples.is_empty() {
        bail!("no per-query latencies in dnsperf -v output");
    }
    let cpu_s = cpu_ns(pid).saturating_sub(cpu_before) as f64 / 1e9;
    samples.sort_by(f64::total_cmp);
    let pick =
        |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] * 1000.0;
    let qps = field(&text, "Queries per second").unwrap_or(0.0);
    Ok(AtRate {
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        p999_ms: pick(0.999),
        qps,
        perf: Perf {
            qps,
            lost_pct: 0.0,
            cpu_s,
            answered: samples.len() as f64,
        },
    })
}

fn kdig_lines(port: u16, name: &str, qtype: &str) -> Vec<String> {
    let out = Command::new("kdig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+noall",
            "+answer",
            "+retry=1",
            "+time=2",
            name,
            qtype,
        ])
        .output();
    let mut lines: Vec<String> = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        })
        .unwrap_or_default();
    lines.retain(|l| !l.is_empty() && !l.starts_with(';'));
    lines.sort();
    lines
}

fn rcode_of(port: u16, name: &str, qtype: u16) -> Option<u8> {
    probe(port, name, qtype).map(|(rcode, _)| rcode)
}

// ---------------------------------------------------------------- subcommands

fn serve(services: usize, endpoints: usize, workers: usize, poll_us: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let options = portico_dns::Options {
            udp_workers: workers,
            udp_tuning: portico_dns::server::UdpTuning {
                poll: Duration::from_micros(poll_us),
            },
            metrics_bind_address: None,
            ..portico_dns::Options::default()
        };
        let handle = portico_dns::start_unsynced(options, shutdown.clone()).await?;
        {
            let mut index = handle
                .index()
                .write()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            fill_index(&mut index, services, endpoints);
        }
        handle.engine().set_synced(true);
        println!(
            "portico dns listening on udp://{} tcp://{}",
            handle.udp_addr, handle.tcp_addr
        );
        std::io::stdout().flush()?;
        // Run until the parent closes our stdin (or dies).
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
        })
        .await?;
        shutdown.cancel();
        handle.join().await;
        anyhow::Ok(())
    })
}

fn echo() -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    println!(
        "portico dns listening on udp://{} tcp://{}",
        socket.local_addr()?,
        socket.local_addr()?
    );
    std::io::stdout().flush()?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let parent = std::os::unix::process::parent_id();
    let mut buf = [0u8; 1500];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) if n >= 12 => {
                buf[2] |= 0x80;
                let _ = socket.send_to(&buf[..n], peer);
            }
            Ok(_) => {}
            Err(_) => {
                if std::os::unix::process::parent_id() != parent {
                    return Ok(());
                }
            }
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).to_string()
                    + &String::from_utf8_lossy(&o.stderr);
                s.lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    };
    format!(
        "CPU: {cpu} ({} CPUs); kernel {kernel}; {}; {}; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        version("knotd", "--version"),
        version("nsd", "-v"),
        version("dnsperf", "-h")
            .lines()
            .last()
            .unwrap_or("dnsperf")
            .trim()
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(sizes: &[usize], seconds: u64, out: &Path, skip_latency: bool) -> anyhow::Result<()> {
    let mut report = String::new();
    let _ = writeln!(report, "# DNS benchmark results\n");
    let _ = writeln!(
        report,
        "Generated by `cargo run --release -p portico-bench-dns -- run` on {}.\n\n{}\n\nLoad average (1/5/15 min) at the start: {}.\n",
        Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%MZ"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        machine(),
        load_average()
    );
    let _ = writeln!(
        report,
        "Method: each server alone on CPU 1 (`taskset -a -p -c 1` on every thread after start-up: Knot pins its UDP worker to CPU 0 by itself otherwise; \
ours with one UDP worker thread, Knot `udp-workers: 1`, NSD `server-count: 1`), the load generator on CPU 0, UDP over 127.0.0.1, \
{seconds} s per run. Zone: Services `svc-i.ns-(i%100).svc.cluster.local` with an A record and `_http._tcp` SRV, 1% headless with 10 endpoints each \
(A per endpoint, per-endpoint names, SRV per endpoint), PTRs in `10.in-addr.arpa`; ours is fed the same Services and slices through its index. \
Answers were compared with kdig before each run (rcode and sorted answer section). \
Server CPU time is read from `/proc/PID/task/*/schedstat` (all threads, and NSD's child processes) before and after each run.\n"
    );
    // Ceiling: a trivial responder.
    let (echo_perf, echo_blast) = {
        let exe = std::env::current_exe()?;
        let mut child = Command::new("taskset")
            .args(["-c", "1"])
            .arg(exe)
            .arg("echo")
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let pid = child.id();
        let _guard = Guard {
            child,
            name: "echo".into(),
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line
            .split("udp://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.port())
            .context("echo port")?;
        let dir = tempfile::tempdir()?;
        let files = query_files(dir.path(), 1000)?;
        (
            max_rate(port, &files[1].1, seconds, pid)?,
            blast_rate(port, &files[1].1, seconds, pid)?,
        )
    };
    let _ = writeln!(
        report,
        "Ceiling: a trivial UDP responder (recv, flip QR, send; one datagram per system call) on CPU 1 answers {:.0} qps from dnsperf \
(using {:.0}% of its CPU, so dnsperf is the limit) and {:.0} qps from our load generator (using {:.0}% of its CPU).\n",
        echo_perf.qps,
        100.0 * echo_perf.cpu_share(seconds as f64),
        echo_blast.qps,
        100.0 * echo_blast.cpu_share(seconds as f64),
    );
    let mut dnsperf_rows = String::new();
    let mut blast_rows = String::new();
    let mut latency_rows = String::new();
    let mut capacity_rows = String::new();
    let mut memory_rows = String::new();
    for &n in sizes {
        eprintln!("== {n} Services (load average {})", load_average());
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("db"))?;
        zone_files(dir.path(), n)?;
        let files = query_files(dir.path(), n)?;
        let (ours, ours_port) = start_ours(n, 0, 1, 0)?;
        let (polling, polling_port) = start_ours(n, 0, 1, POLL_US)?;
        let (knot, knot_port) = start_knot(dir.path())?;
        let (nsd, nsd_port) = start_nsd(dir.path())?;
        let probe_name = "svc-1.ns-1.svc.cluster.local";
        for port in [ours_port, polling_port, knot_port, nsd_port] {
            wait_answering(port, probe_name)?;
        }
        pin_to_server_cpu(polling.child.id())?;
        let servers = [
            ("portico", ours_port, ours.child.id()),
            ("Knot", knot_port, knot.child.id()),
            ("NSD", nsd_port, nsd.child.id()),
        ];
        for (_, _, pid) in servers {
            pin_to_server_cpu(pid)?;
        }
        // Same answers?
        let headless_i = 50;
        let checks = [
            ("svc-1.ns-1.svc.cluster.local".to_string(), "A", 1u16),
            (
                "_http._tcp.svc-2.ns-2.svc.cluster.local".to_string(),
                "SRV",
                33,
            ),
            (format!("svc-{headless_i}.ns-50.svc.cluster.local"), "A", 1),
            (
                format!("_http._tcp.svc-{headless_i}.ns-50.svc.cluster.local"),
                "SRV",
                33,
            ),
            (
                format!(
                    "{}.svc-{headless_i}.ns-50.svc.cluster.local",
                    dashed(endpoint_ip(headless_i, 3))
                ),
                "A",
                1,
            ),
            ("missing.ns-1.svc.cluster.local".to_string(), "A", 1),
            ("2.0.96.10.in-addr.arpa".to_string(), "PTR", 12),
        ];
        for (name, qtype, code) in &checks {
            let reference = (
                kdig_lines(knot_port, name, qtype),
                rcode_of(knot_port, name, *code),
            );
            for (label, port) in [("portico", ours_port), ("NSD", nsd_port)] {
                let got = (kdig_lines(port, name, qtype), rcode_of(port, name, *code));
                if got != reference {
                    bail!(
                        "{label} answers {name} {qtype} differently: {got:?} vs Knot {reference:?}"
                    );
                }
            }
        }
        let rss = servers.map(|(_, _, pid)| rss_kib(pid));
        let _ = writeln!(
            memory_rows,
            "| {n} (zone load) | {:.1} | {:.1} | {:.1} |",
            rss[0] as f64 / 1024.0,
            rss[1] as f64 / 1024.0,
            rss[2] as f64 / 1024.0
        );
        let secs = seconds as f64;
        let mut our_q2 = 0.0;
        for (mix, file) in &files {
            let mut perfs = Vec::new();
            let mut blasts = Vec::new();
            for (_, port, pid) in servers {
                perfs.push(max_rate(port, file, seconds, pid)?);
            }
            for (_, port, pid) in servers {
                blasts.push(blast_rate(port, file, seconds, pid)?);
            }
            let (p, k, d) = (&perfs[0], &perfs[1], &perfs[2]);
            eprintln!(
                "{n} {mix}: dnsperf portico {:.0} knot {:.0} nsd {:.0}; generator portico {:.0} knot {:.0} nsd {:.0}",
                p.qps, k.qps, d.qps, blasts[0].qps, blasts[1].qps, blasts[2].qps
            );
            if mix.starts_with("Q2") {
                our_q2 = p.qps;
            }
            dnsperf_rows.push_str(&throughput_row(n, mix, secs, [p, k, d]));
            blast_rows.push_str(&throughput_row(
                n,
                mix,
                secs,
                [&blasts[0], &blasts[1], &blasts[2]],
            ));
        }
        let rate = (our_q2 / 2.0) as u64;
        let mut capacity = Vec::new();
        for (label, port, pid) in servers {
            let r = latency_at(port, &files[1].1, rate, seconds, pid)?;
            let _ = writeln!(
                latency_rows,
                "| {n} | {label} | {rate} | {:.0} | {:.3} | {:.3} | {:.3} |",
                r.qps, r.p50_ms, r.p99_ms, r.p999_ms
            );
            capacity.push(r.perf);
        }
        let r = latency_at(polling_port, &files[1].1, rate, seconds, polling.child.id())?;
        let _ = writeln!(
            latency_rows,
            "| {n} | portico, polling {POLL_US} µs | {rate} | {:.0} | {:.3} | {:.3} | {:.3} |",
            r.qps, r.p50_ms, r.p99_ms, r.p999_ms
        );
        let polling_cpu = 100.0 * r.perf.cpu_share(seconds as f64);
        let _ = writeln!(
            capacity_rows,
            "| {n} | {rate} | portico polling {POLL_US} µs: {:.0} ({polling_cpu:.0}%) | | | |",
            r.perf.per_cpu_second()
        );
        let _ = writeln!(
            capacity_rows,
            "| {n} | {rate} | {:.0} ({:.0}%) | {:.0} ({:.0}%) | {:.0} ({:.0}%) | {:.2} |",
            capacity[0].per_cpu_second(),
            100.0 * capacity[0].cpu_share(seconds as f64),
            capacity[1].per_cpu_second(),
            100.0 * capacity[1].cpu_share(seconds as f64),
            capacity[2].per_cpu_second(),
            100.0 * capacity[2].cpu_share(seconds as f64),
            capacity[0].per_cpu_second() / capacity[1].per_cpu_second(),
        );
        drop((ours, polling, knot, nsd));
    }
    let _ = writeln!(
        report,
        "## Throughput with dnsperf (`-c 8 -q 400 -T 1`), one server core\n\n\
qps (server CPU used, % of one core) | portico/Knot qps | answers per server CPU-second | lost %\n\n\
| Services | mix | portico | Knot | NSD | p/K | portico /CPU-s | Knot /CPU-s | NSD /CPU-s | lost % (p/K/N) |\n\
|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    report.push_str(&dnsperf_rows);
    let _ = writeln!(
        report,
        "\n## Throughput with our load generator (`bench/dns/src/blast.rs`: 4 sockets × 256 outstanding, sendmmsg/recvmmsg batches of 32), one server core\n\n\
| Services | mix | portico | Knot | NSD | p/K | portico /CPU-s | Knot /CPU-s | NSD /CPU-s | lost % (p/K/N) |\n\
|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    report.push_str(&blast_rows);
    let _ = writeln!(
        report,
        "\n## Capacity per core at a fixed rate (the latency runs below: dnsperf -Q at half of our Q2 dnsperf maximum)\n\n\
Answers per second of server CPU time (share of one core used during the run):\n\n\
| Services | rate qps | portico | Knot | NSD | portico/Knot |\n|---:|---:|---:|---:|---:|---:|"
    );
    report.push_str(&capacity_rows);
    let _ = writeln!(
        report,
        "\n## Latency at half of our maximum Q2 rate (dnsperf -Q, {seconds} s, per-query times from -v)\n"
    );
    let _ = writeln!(
        report,
        "| Services | server | target qps | achieved qps | p50 ms | p99 ms | p99.9 ms |\n|---:|---|---:|---:|---:|---:|---:|"
    );
    report.push_str(&latency_rows);
    let _ = writeln!(report, "\n## Memory (RSS, MiB)\n");
    let _ = writeln!(
        report,
        "| Services | portico | Knot | NSD |\n|---|---:|---:|---:|"
    );
    report.push_str(&memory_rows);
    {
        let (ours, _port) = start_ours(10_000, 10, 1, 0)?;
        std::thread::sleep(Duration::from_millis(500));
        let rss = rss_kib(ours.child.id());
        let _ = writeln!(
            report,
            "\nportico with 10,000 Services and 100,000 endpoints (10 per Service, in EndpointSlices; 1% headless): **{:.1} MiB** RSS (target < 200 MB).",
            rss as f64 / 1024.0
        );
        drop(ours);
    }
    if !skip_latency {
        let text = match tokio::runtime::Runtime::new()?.block_on(latency(1000, 200)) {
            Ok((text, _)) => text,
            Err(e) => format!("Not measured in this run: {e:#}\n"),
        };
        let _ = writeln!(
            report,
            "\n## Programming latency: Service create in the API → correct answer\n\n{text}"
        );
    }
    let _ = writeln!(
        report,
        "\nLoad average (1/5/15 min) at the end: {}.",
        load_average()
    );
    std::fs::write(out, &report)?;
    println!("{report}");
    Ok(())
}

/// Creates Services through a real portico API server and times until our DNS answers them.
async fn latency(preload: usize, creates: usize) -> anyhow::Result<(String, Vec<f64>)> {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, PostParams};
    let api_server = tokio::time::timeout(
        Duration::from_secs(60),
        portico_apiserver::testing::TestServer::start(),
    )
    .await
    .context("TestServer::start timed out")??;
    let client = api_server.client.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let options = portico_dns::Options {
        udp_workers: 1,
        pod_mode: portico_dns::PodMode::Disabled,
        ..portico_dns::Options::default()
    };
    let dns = portico_dns::start(client.clone(), options, shutdown.clone()).await?;
    let started = Instant::now();
    while !dns.engine().is_synced() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "DNS never synced"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let port = dns.udp_addr.port();
    let services: Api<Service> = Api::namespaced(client, "default");
    let make = |name: String| -> anyhow::Result<Service> {
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            // ExternalName needs no ClusterIP allocation, so the time is the API write, the
            // watch and the index, whatever allocator the API server runs.
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        }))?)
    };
    for i in 0..preload {
        services
            .create(&PostParams::default(), &make(format!("pre-{i}"))?)
            .await?;
    }
    let mut total = Vec::with_capacity(creates);
    let mut after_write = Vec::with_capacity(creates);
    for i in 0..creates {
        let name = format!("lat-{i}");
        let fqdn = format!("{name}.default.svc.cluster.local");
        let t0 = Instant::now();
        services
            .create(&PostParams::default(), &make(name)?)
            .await?;
        let t1 = Instant::now();
        loop {
            let name = fqdn.clone();
            let answered = tokio::task::spawn_blocking(
                move || matches!(probe(port, &name, 1), Some((0, n)) if n > 0),
            )
            .await?;
            if answered {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "{fqdn} never answered"
            );
        }
        total.push(t0.elapsed().as_secs_f64() * 1000.0);
        after_write.push(t1.elapsed().as_secs_f64() * 1000.0);
    }
    shutdown.cancel();
    dns.join().await;
    api_server.stop().await;
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    let text = format!(
        "{creates} sequential creates of ExternalName Services after {preload} preloaded ones, polled with UDP A queries until the CNAME answer appears:\n\n\
| measured from | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|\n\
| before the create request (API write + watch + index) | {:.2} | {:.2} | {:.2} |\n\
| the create response (watch + index + answer) | {:.2} | {:.2} | {:.2} |\n",
        pct(&mut total, 0.5),
        pct(&mut total, 0.99),
        pct(&mut total, 1.0),
        pct(&mut after_write, 0.5),
        pct(&mut after_write, 0.99),
        pct(&mut after_write, 1.0),
    );
    Ok((text, total))
}
