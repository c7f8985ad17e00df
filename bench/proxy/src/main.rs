//! Benchmarks the userspace proxy on loopback beside a direct connection and HAProxy
//! (`/usr/sbin/haproxy`, tcp mode) for the same frontend. Every measurement is bounded in
//! time and count. Prints a Markdown report (the content of `bench/proxy/RESULTS.md`).
//!
//! Usage: `cargo run --release -p portico-bench-proxy [-- --secs N]`.
//! The proxy runs in a child process (this binary with `proxy-child`), as HAProxy does, so
//! its memory and CPU are measured on their own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

const BULK_BUF: usize = 256 * 1024;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("proxy-child") {
        return proxy_child(&args[2..]);
    }
    let secs: u64 = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dur = Duration::from_secs(secs.clamp(1, 10));
    run(dur)
}

// ---------------------------------------------------------------------------------------
// Backends: a discard sink (bulk), an echo server (conn/s, latency), a UDP echo.

fn spawn_sink() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; BULK_BUF];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn spawn_echo() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn spawn_udp_echo() -> anyhow::Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    let addr = s.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], peer);
        }
    });
    Ok(addr)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------
// The proxies under test.

/// Our proxy in a child process: TCP frontends for the sink and the echo server, and a UDP
/// frontend for the UDP echo, all on `ip`.
fn proxy_child(args: &[String]) -> anyhow::Result<()> {
    use portico_proxy::ProxyBackend;
    let ip: std::net::IpAddr = args.first().context("ip")?.parse()?;
    let ports: Vec<u16> = args[1..4]
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let backends: Vec<SocketAddr> = args[4..7]
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let names = ["sink", "echo", "udp"];
    let protos = ["TCP", "TCP", "UDP"];
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..3 {
        services.push(serde_json::from_value::<k8s_openapi::api::core::v1::Service>(json!({
            "metadata": {"namespace": "bench", "name": names[i]},
            "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "p", "port": ports[i], "protocol": protos[i]}]},
        }))?);
        slices.push(serde_json::from_value::<k8s_openapi::api::discovery::v1::EndpointSlice>(json!({
            "metadata": {"namespace": "bench", "name": names[i], "labels": {"kubernetes.io/service-name": names[i]}},
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": backends[i].port(), "protocol": protos[i]}],
            "endpoints": [{"addresses": [backends[i].ip().to_string()]}],
        }))?);
    }
    let plan = portico_core::plan::build(
        &services,
        &slices,
        &portico_core::plan::NodeInfo::new("bench"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut backend =
            portico_proxy::UserspaceBackend::new(portico_proxy::UserspaceConfig::default());
        backend.sync(&plan, &portico_proxy::Changed::full())?;
        println!("ready");
        std::future::pending::<()>().await;
        Ok(())
    })
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        utime + stime
    }
}

fn start_ours(ip: &str, ports: [u16; 3], backends: [SocketAddr; 3]) -> anyhow::Result<Proc> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("proxy-child")
        .arg(ip)
        .args(ports.iter().map(ToString::to_string))
        .args(backends.iter().map(ToString::to_string))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = [0u8; 6];
    child
        .stdout
        .as_mut()
        .context("stdout")?
        .read_exact(&mut line)?;
    Ok(Proc { child })
}

fn start_haproxy(
    ip: &str,
    ports: [u16; 2],
    backends: [SocketAddr; 2],
    dir: &std::path::Path,
) -> anyhow::Result<Proc> {
    let cfg = format!(
        "global\n  nbthread 2\n  maxconn 4000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  option splice-auto\n\n\
         frontend sink\n  bind {ip}:{p0}\n  default_backend sink\nbackend sink\n  server s {b0}\n\n\
         frontend echo\n  bind {ip}:{p1}\n  default_backend echo\nbackend echo\n  server s {b1}\n",
        p0 = ports[0],
        p1 = ports[1],
        b0 = backends[0],
        b1 = backends[1],
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let child = Command::new("/usr/sbin/haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting /usr/sbin/haproxy")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect((ip, ports[1])).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Proc { child })
}

// ---------------------------------------------------------------------------------------
// Measurements.

/// Gbit/s of `streams` parallel writers into the sink through `addr`, for `dur`.
fn bulk(addr: SocketAddr, streams: usize, dur: Duration) -> f64 {
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..streams)
        .map(|_| {
            let (total, stop) = (total.clone(), stop.clone());
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return;
                };
                let buf = vec![7u8; BULK_BUF];
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match s.write(&buf) {
                        Ok(n) => sent += n as u64,
                        Err(_) => break,
                    }
                }
                total.fetch_add(sent, Ordering::Relaxed);
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    total.load(Ordering::Relaxed) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9
}

/// New connections per second: connect, 1-byte echo, close; 8 client threads, for `dur`.
fn conn_rate(addr: SocketAddr, dur: Duration) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                while Instant::now() < deadline {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    if s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    for t in threads {
        let _ = t.join();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// p50 and p99 round trip in µs of a 64-byte request/response on one connection.
fn latency(addr: SocketAddr, rounds: usize) -> anyhow::Result<(f64, f64)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let msg = [1u8; 64];
    let mut buf = [0u8; 64];
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + 200 {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut buf)?;
        if i >= 200 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok((
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    ))
}

/// UDP request/response per second, one client, sequential, for `dur`.
fn udp_rate(addr: SocketAddr, dur: Duration) -> anyhow::Result<f64> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.connect(addr)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut n = 0u64;
    while Instant::now() < deadline {
        s.send(&[3u8; 32])?;
        if s.recv(&mut buf).is_ok() {
            n += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Extra resident memory of `proc` per idle proxied connection (KiB), over `count`.
fn idle_memory(proc_: &Proc, addr: SocketAddr, count: usize) -> anyhow::Result<f64> {
    let before = proc_.rss_kib();
    let mut conns = Vec::with_capacity(count);
    let mut b = [0u8; 1];
    for _ in 0..count {
        let mut s = TcpStream::connect(addr)?;
        // One exchange so the connection is fully proxied, then it idles.
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = proc_.rss_kib();
    drop(conns);
    Ok((after.saturating_sub(before)) as f64 / count as f64)
}

fn run(dur: Duration) -> anyhow::Result<()> {
    let sink = spawn_sink()?;
    let echo = spawn_echo()?;
    let udp = spawn_udp_echo()?;
    let ours_ip = "127.93.0.1";
    let hap_ip = "127.93.0.2";
    let ours_ports = [free_port()?, free_port()?, free_port()?];
    let hap_ports = [free_port()?, free_port()?];
    let dir = std::env::temp_dir().join(format!("portico-bench-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ours = start_ours(ours_ip, ours_ports, [sink, echo, udp])?;
    let hap = start_haproxy(hap_ip, hap_ports, [sink, echo], &dir)?;
    let ours_sink: SocketAddr = format!("{ours_ip}:{}", ours_ports[0]).parse()?;
    let ours_echo: SocketAddr = format!("{ours_ip}:{}", ours_ports[1]).parse()?;
    let ours_udp: SocketAddr = format!("{ours_ip}:{}", ours_ports[2]).parse()?;
    let hap_sink: SocketAddr = format!("{hap_ip}:{}", hap_ports[0]).parse()?;
    let hap_echo: SocketAddr = format!("{hap_ip}:{}", hap_ports[1]).parse()?;

    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        println!("{s}");
        out.push_str(&s);
        out.push('\n');
    };
    line(&mut out, "# Userspace proxy benchmark (loopback)\n".into());
    line(
        &mut out,
        format!(
            "Each figure is one run of {} s (bounded); 2-core VM; proxy and HAProxy (2.6, `nbthread 2`, `option splice-auto`) each in their own process; our proxy with 2 tokio workers.\n",
            dur.as_secs()
        ),
    );

    line(
        &mut out,
        "## Bulk TCP throughput (Gbit/s, share of direct)\n".into(),
    );
    line(&mut out, "| streams | direct | portico | HAProxy |".into());
    line(&mut out, "|---|---|---|---|".into());
    for streams in [1, 4] {
        let d = bulk(sink, streams, dur);
        let (c0, h0) = (ours.cpu_ticks(), hap.cpu_ticks());
        let o = bulk(ours_sink, streams, dur);
        let h = bulk(hap_sink, streams, dur);
        let _ = (c0, h0);
        line(
            &mut out,
            format!(
                "| {streams} | {d:.1} | {o:.1} ({:.0}%) | {h:.1} ({:.0}%) |",
                o / d * 100.0,
                h / d * 100.0
            ),
        );
    }

    line(
        &mut out,
        "\n## New connections per second (connect, 1-byte echo, close; 8 clients)\n".into(),
    );
    line(&mut out, "| direct | portico | HAProxy |".into());
    line(&mut out, "|---|---|---|".into());
    let d = conn_rate(echo, dur);
    let o = conn_rate(ours_echo, dur);
    let h = conn_rate(hap_echo, dur);
    line(
        &mut out,
        format!("| {d:.0} | {o:.0} ({:.2}× HAProxy) | {h:.0} |", o / h),
    );

    line(
        &mut out,
        "\n## Request/response latency, 64 bytes, one connection (µs)\n".into(),
    );
    line(&mut out, "| | p50 | p99 | added p50 |".into());
    line(&mut out, "|---|---|---|---|".into());
    let rounds = 20_000;
    let (d50, d99) = latency(echo, rounds)?;
    let (o50, o99) = latency(ours_echo, rounds)?;
    let (h50, h99) = latency(hap_echo, rounds)?;
    line(&mut out, format!("| direct | {d50:.1} | {d99:.1} | — |"));
    line(
        &mut out,
        format!("| portico | {o50:.1} | {o99:.1} | {:.1} |", o50 - d50),
    );
    line(
        &mut out,
        format!("| HAProxy | {h50:.1} | {h99:.1} | {:.1} |", h50 - d50),
    );

    line(
        &mut out,
        "\n## UDP request/response rate (one client, sequential; HAProxy has no UDP)\n".into(),
    );
    let d = udp_rate(udp, dur)?;
    let o = udp_rate(ours_udp, dur)?;
    line(&mut out, "| direct | portico |".into());
    line(&mut out, "|---|---|".into());
    line(
        &mut out,
        format!("| {d:.0}/s | {o:.0}/s ({:.0}%) |", o / d * 100.0),
    );

    line(
        &mut out,
        "\n## Memory per idle proxied connection (RSS growth over 2,000 connections)\n".into(),
    );
    let o = idle_memory(&ours, ours_echo, 2000)?;
    std::thread::sleep(Duration::from_millis(300));
    let h = idle_memory(&hap, hap_echo, 2000)?;
    line(&mut out, "| portico | HAProxy |".into());
    line(&mut out, "|---|---|".into());
    line(&mut out, format!("| {o:.2} KiB | {h:.2} KiB |"));

    drop(ours);
    drop(hap);
    let _ = std::fs::remove_dir_all(&dir);
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
    std::fs::write(&results, out)?;
    eprintln!("wrote {}", results.display());
    Ok(())
}
