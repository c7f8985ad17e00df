//! Allocation benchmark: picking a cluster IP from a /16 that is 99% full and a node port from
//! a 99% full 30000-32767 range, with the word-scanning bitmap the allocator uses against a
//! naive bit-by-bit scan measured in the same run; then creating Services one after another
//! through `ServiceHooks` on the embedded store against raw store writes of the same count.
//!
//! Run: `cargo run --release -p portico-bench-alloc -- [services]` (default 2000 Services).
//! Results go to stdout as a Markdown table (copied into bench/alloc/RESULTS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_apiserver::hooks::{ObjectHooks, WriteContext};
use portico_apiserver::keys;
use portico_apiserver::service::{ServiceConfig, ServiceHooks};
use portico_core::service::alloc::{IpRange, PortRange};
use portico_store::{Compare, Op, Store};
use rand::SeedableRng;
use rand::rngs::StdRng;

const PICKS: usize = 20_000;

struct Stats {
    mean: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let sum: Duration = v.iter().sum();
    Stats {
        mean: sum / v.len() as u32,
        p99: v[v.len() * 99 / 100],
        max: v[v.len() - 1],
    }
}

fn us(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e6)
}

/// Times `pick` on a range held at 99% full: each round picks, takes, and frees a random
/// other allocated value so the fill level stays put.
fn bench_ip(linear: bool) -> Stats {
    let mut rng = StdRng::seed_from_u64(42);
    let mut r = IpRange::new("10.0.0.0/16".parse().expect("cidr"));
    let size = r.bitmap().size();
    let mut taken = Vec::with_capacity(size);
    while r.free() > size / 100 {
        let ip = r.pick(&mut rng).expect("free");
        r.allocate(&ip).expect("free");
        taken.push(ip);
    }
    let mut times = Vec::with_capacity(PICKS);
    for i in 0..PICKS {
        let t = Instant::now();
        let ip = if linear {
            r.bitmap().pick_linear(&mut rng).map(|_| ())
        } else {
            r.bitmap().pick(&mut rng).map(|_| ())
        };
        times.push(t.elapsed());
        assert!(ip.is_some());
        // Keep the fill level: take a fresh address, free an old one.
        let fresh = r.pick(&mut rng).expect("free");
        r.allocate(&fresh).expect("free");
        let old = taken.swap_remove((i * 7919) % taken.len());
        r.release(&old);
        taken.push(fresh);
    }
    stats(times)
}

fn bench_port(linear: bool) -> Stats {
    let mut rng = StdRng::seed_from_u64(7);
    let mut r = PortRange::new(30000..=32767);
    let size = r.bitmap().size();
    let mut taken = Vec::new();
    while r.bitmap().free() > size / 100 {
        let p = r.pick(&mut rng).expect("free");
        r.allocate(p as i32).expect("free");
        taken.push(p as i32);
    }
    let mut times = Vec::with_capacity(PICKS);
    for i in 0..PICKS {
        let t = Instant::now();
        let p = if linear {
            r.bitmap().pick_linear(&mut rng)
        } else {
            r.bitmap().pick(&mut rng)
        };
        times.push(t.elapsed());
        assert!(p.is_some());
        let fresh = r.pick(&mut rng).expect("free") as i32;
        r.allocate(fresh).expect("free");
        let old = taken.swap_remove((i * 7919) % taken.len());
        r.release(old);
        taken.push(fresh);
    }
    stats(times)
}

fn service(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "NodePort", "ports": [{"port": 80}], "selector": {"app": name}},
    })
}

async fn bench_creates(n: usize) -> anyhow::Result<(f64, f64)> {
    // Raw store: one object put per transaction, with its create compare.
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> =
        portico_store::embedded::EmbeddedStore::open(&dir.path().join("raw"))?;
    let t = Instant::now();
    for i in 0..n {
        let name = format!("s{i}");
        let key = keys::object_key("services", Some("default"), &name);
        let body = bytes::Bytes::from(serde_json::to_vec(&service(&name))?);
        store
            .txn(
                vec![Compare::ModRevision(key.clone(), 0)],
                vec![Op::Put(key, body)],
            )
            .await?;
    }
    let raw = n as f64 / t.elapsed().as_secs_f64();

    // Through the Service hooks: defaults, validation, IP and node port, IPAddress object.
    let store: Arc<dyn Store> =
        portico_store::embedded::EmbeddedStore::open(&dir.path().join("hooks"))?;
    let hooks = ServiceHooks::new(
        store.clone(),
        ServiceConfig {
            cluster_ip_ranges: vec!["10.96.0.0/16".parse()?],
            node_port_range: 30000..=32767,
        },
    );
    hooks.start().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = n.min(2700);
    let t = Instant::now();
    for i in 0..n {
        let name = format!("s{i}");
        let mut obj = service(&name);
        let ctx = WriteContext {
            dry_run: false,
            namespace: Some("default".into()),
            name: name.clone(),
            subresource: None,
        };
        let p = hooks
            .prepare_create(&ctx, &mut obj)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = keys::object_key("services", Some("default"), &name);
        let mut compares = p.compares.clone();
        compares.push(Compare::ModRevision(key.clone(), 0));
        let mut ops = p.ops.clone();
        ops.push(Op::Put(key, bytes::Bytes::from(serde_json::to_vec(&obj)?)));
        let resp = store.txn(compares, ops).await?;
        anyhow::ensure!(
            resp.succeeded,
            "create {name} lost a race in a single-writer run"
        );
        hooks.finish(p, true);
    }
    let via_hooks = n as f64 / t.elapsed().as_secs_f64();
    Ok((raw, via_hooks))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let ip = bench_ip(false);
    let ip_lin = bench_ip(true);
    let port = bench_port(false);
    let port_lin = bench_port(true);
    println!("| pick ({PICKS} rounds at 99% full) | mean µs | p99 µs | max µs |");
    println!("|---|---|---|---|");
    for (name, s) in [
        ("cluster IP, /16, word-scan bitmap (portico)", &ip),
        ("cluster IP, /16, naive bit-by-bit scan", &ip_lin),
        ("node port, 30000-32767, word-scan bitmap (portico)", &port),
        ("node port, 30000-32767, naive bit-by-bit scan", &port_lin),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            us(s.mean),
            us(s.p99),
            us(s.max)
        );
    }
    println!();
    println!(
        "IP: naive/portico mean ratio {:.1}x; port: {:.1}x",
        ip_lin.mean.as_secs_f64() / ip.mean.as_secs_f64(),
        port_lin.mean.as_secs_f64() / port.mean.as_secs_f64()
    );
    let (raw, hooks) = bench_creates(n).await?;
    println!();
    println!("| sequential creates on the embedded store | per second |");
    println!("|---|---|");
    println!("| raw store put (one txn per object, {n} objects) | {raw:.0} |");
    println!(
        "| Service via ServiceHooks (NodePort: IP + node port + IPAddress in the same txn, {} Services) | {hooks:.0} |",
        n.min(2700)
    );
    println!();
    println!("hooks/raw ratio {:.2}", hooks / raw);
    Ok(())
}
