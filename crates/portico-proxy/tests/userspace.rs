//! The userspace data plane with real TCP and UDP on 127.0.0.0/8, driven by plans built from
//! hand-made Services and EndpointSlices.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use portico_core::plan::{NodeInfo, Plan, build};
use portico_proxy::userspace::{Balance, UserspaceBackend, UserspaceConfig};
use portico_proxy::{Changed, ProxyBackend};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn config(balance: Balance) -> UserspaceConfig {
    UserspaceConfig {
        balance,
        drain_timeout: Duration::from_millis(800),
        udp_idle_timeout: Duration::from_secs(2),
        ..UserspaceConfig::default()
    }
}

fn plan(
    services: &[k8s_openapi::api::core::v1::Service],
    slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
) -> Plan {
    build(services, slices, &NodeInfo::new("node-a"))
}

fn sync(backend: &mut UserspaceBackend, plan: &Plan) {
    backend.sync(plan, &Changed::full()).expect("sync");
}

#[tokio::test]
async fn spreads_round_robin_and_random() {
    let a = tcp_backend("a").await;
    let b = tcp_backend("b").await;
    for balance in [Balance::RoundRobin, Balance::Random] {
        let ip = frontend_ip();
        let port = free_port();
        let mut backend = UserspaceBackend::new(config(balance));
        let svc = service("web", ip, port, "TCP", json!({}));
        let sl = slice(
            "web",
            "web-1",
            a.port(),
            "TCP",
            vec![ep(a, "n", true, false)],
        );
        // Two endpoints on different ports need two slices (ports are per slice).
        let sl2 = slice(
            "web",
            "web-2",
            b.port(),
            "TCP",
            vec![ep(b, "n", true, false)],
        );
        sync(&mut backend, &plan(&[svc], &[sl, sl2]));
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..40 {
            *seen
                .entry(who(SocketAddr::new(ip, port)).await.expect("reply"))
                .or_default() += 1;
        }
        assert_eq!(seen.len(), 2, "{balance:?}: {seen:?}");
        if balance == Balance::RoundRobin {
            assert_eq!(seen["a"], 20, "{seen:?}");
        }
    }
}

#[tokio::test]
async fn client_ip_affinity_sticks() {
    let a = tcp_backend("a").await;
    let b = tcp_backend("b").await;
    let (ip, port) = (frontend_ip(), free_port());
    let mut backend = UserspaceBackend::new(config(Balance::RoundRobin));
    let svc = service(
        "sticky",
        ip,
        port,
        "TCP",
        json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
    );
    let slices = [
        slice(
            "sticky",
            "s-1",
            a.port(),
            "TCP",
            vec![ep(a, "n", true, false)],
        ),
        slice(
            "sticky",
            "s-2",
            b.port(),
            "TCP",
            vec![ep(b, "n", true, false)],
        ),
    ];
    sync(&mut backend, &plan(&[svc], &slices));
    let first = who(SocketAddr::new(ip, port)).await.expect("reply");
    for _ in 0..15 {
        assert_eq!(who(SocketAddr::new(ip, port)).await.expect("reply"), first);
    }
}

#[tokio::test]
async fn no_endpoints_resets_at_once() {
    let (ip, port) = (frontend_ip(), free_port());
    let mut backend = UserspaceBackend::new(config(Balance::Random));
    sync(
        &mut backend,
        &plan(&[service("empty", ip, port, "TCP", json!({}))], &[]),
    );
    let started = Instant::now();
    let result = who(SocketAddr::new(ip, port)).await;
    assert!(result.is_err(), "expected a reset, got {result:?}");
    let kind = result.err().map(|e| e.kind());
    assert!(
        matches!(
            kind,
            Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused)
        ),
        "{kind:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn removed_endpoint_drains_while_new_connections_move() {
    let a = tcp_backend("a").await;
    let b = tcp_backend("b").await;
    let (ip, port) = (frontend_ip(), free_port());
    let frontend = SocketAddr::new(ip, port);
    let mut backend = UserspaceBackend::new(config(Balance::RoundRobin));
    let svc = service("drain", ip, port, "TCP", json!({}));
    let only_a = [slice(
        "drain",
        "d-1",
        a.port(),
        "TCP",
        vec![ep(a, "n", true, false)],
    )];
    sync(&mut backend, &plan(std::slice::from_ref(&svc), &only_a));
    let mut old = TcpStream::connect(frontend).await.expect("connect");
    assert_eq!(read_line(&mut old).await.expect("greeting"), "a");

    // A is replaced by B: new connections go to B at once, the old one keeps working.
    let only_b = [slice(
        "drain",
        "d-2",
        b.port(),
        "TCP",
        vec![ep(b, "n", true, false)],
    )];
    sync(&mut backend, &plan(std::slice::from_ref(&svc), &only_b));
    for _ in 0..5 {
        assert_eq!(who(frontend).await.expect("reply"), "b");
    }
    old.write_all(b"still here\n")
        .await
        .expect("write during drain");
    assert_eq!(
        read_line(&mut old).await.expect("echo during drain"),
        "still here"
    );

    // After the drain deadline the old connection is closed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), old.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}

#[tokio::test]
async fn service_changes_apply_without_restart() {
    let a = tcp_backend("a").await;
    let (ip, port) = (frontend_ip(), free_port());
    let port2 = free_port();
    let mut backend = UserspaceBackend::new(config(Balance::Random));
    let slices = [slice(
        "chg",
        "c-1",
        a.port(),
        "TCP",
        vec![ep(a, "n", true, false)],
    )];
    sync(
        &mut backend,
        &plan(&[service("chg", ip, port, "TCP", json!({}))], &slices),
    );
    assert_eq!(who(SocketAddr::new(ip, port)).await.expect("reply"), "a");

    // The Service moves to another port: the new port serves, the old one is closed.
    let p = plan(&[service("chg", ip, port2, "TCP", json!({}))], &slices);
    let svc_name = portico_core::plan::ServiceName::new("ns", "chg");
    let changed = Changed {
        full: false,
        services: [svc_name.clone()].into(),
    };
    backend.sync(&p, &changed).expect("sync");
    assert_eq!(who(SocketAddr::new(ip, port2)).await.expect("reply"), "a");
    assert!(TcpStream::connect(SocketAddr::new(ip, port)).await.is_err());

    // The Service is deleted: its listener goes away.
    backend
        .sync(
            &Plan::default(),
            &Changed {
                full: false,
                services: [svc_name].into(),
            },
        )
        .expect("sync");
    assert!(
        TcpStream::connect(SocketAddr::new(ip, port2))
            .await
            .is_err()
    );
    assert!(backend.listening().is_empty());
}

#[tokio::test]
async fn node_port_and_terminating_fallback() {
    let a = tcp_backend("a").await;
    let (ip, port, node_port) = (frontend_ip(), free_port(), free_port());
    let mut cfg = config(Balance::Random);
    let np_ip = frontend_ip();
    cfg.nodeport_addresses = vec![ipnet::IpNet::from(np_ip)];
    let mut backend = UserspaceBackend::new(cfg);
    let svc = service(
        "np",
        ip,
        port,
        "TCP",
        json!({"type": "NodePort", "ports": [{"name": "http", "port": port, "protocol": "TCP", "nodePort": node_port}]}),
    );
    // Only a serving-terminating endpoint: it is used because nothing is ready.
    let slices = [slice(
        "np",
        "np-1",
        a.port(),
        "TCP",
        vec![ep(a, "n", false, true)],
    )];
    sync(&mut backend, &plan(&[svc], &slices));
    assert_eq!(
        who(SocketAddr::new(np_ip, node_port))
            .await
            .expect("node port"),
        "a"
    );
    assert_eq!(
        who(SocketAddr::new(ip, port)).await.expect("cluster ip"),
        "a"
    );
}

#[tokio::test]
async fn unbindable_frontend_does_not_stop_the_rest() {
    let a = tcp_backend("a").await;
    let (ip, port) = (frontend_ip(), free_port());
    let mut backend = UserspaceBackend::new(config(Balance::Random));
    // 192.0.2.0/24 is TEST-NET-1: never local, so binding fails with EADDRNOTAVAIL and no
    // packet is sent anywhere.
    let bad: std::net::IpAddr = "192.0.2.10".parse().expect("ip");
    let services = [
        service("bad", bad, port, "TCP", json!({})),
        service("good", ip, port, "TCP", json!({})),
    ];
    let slices = [
        slice("bad", "b-1", a.port(), "TCP", vec![ep(a, "n", true, false)]),
        slice(
            "good",
            "g-1",
            a.port(),
            "TCP",
            vec![ep(a, "n", true, false)],
        ),
    ];
    sync(&mut backend, &plan(&services, &slices));
    assert_eq!(
        who(SocketAddr::new(ip, port)).await.expect("good frontend"),
        "a"
    );
    let listening = backend.listening();
    assert_eq!(listening.len(), 1, "{listening:?}");
}

#[tokio::test]
async fn udp_flows_and_endpoint_moves() {
    let a = udp_backend("a").await;
    let b = udp_backend("b").await;
    let (ip, port) = (frontend_ip(), free_port());
    let frontend = SocketAddr::new(ip, port);
    let mut backend = UserspaceBackend::new(config(Balance::RoundRobin));
    let svc = service("dns", ip, port, "UDP", json!({}));
    sync(
        &mut backend,
        &plan(
            std::slice::from_ref(&svc),
            &[slice(
                "dns",
                "u-1",
                a.port(),
                "UDP",
                vec![ep(a, "n", true, false)],
            )],
        ),
    );
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client.connect(frontend).await.expect("connect");
    let ask = |msg: &'static str| {
        let client = &client;
        async move {
            client.send(msg.as_bytes()).await.expect("send");
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
                .await
                .expect("reply in time")
                .expect("recv");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    };
    assert_eq!(ask("q1").await, "a:q1");
    assert_eq!(ask("q2").await, "a:q2");
    assert_eq!(
        backend
            .stats()
            .udp_flows
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The endpoint is replaced: the same client flow moves to the new endpoint at once.
    sync(
        &mut backend,
        &plan(
            &[svc],
            &[slice(
                "dns",
                "u-2",
                b.port(),
                "UDP",
                vec![ep(b, "n", true, false)],
            )],
        ),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ask("q3").await, "b:q3");
    // Idle flows expire.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        backend
            .stats()
            .udp_flows
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_leave_no_leak() {
    let a = tcp_backend("a").await;
    let (ip, port) = (frontend_ip(), free_port());
    let frontend = SocketAddr::new(ip, port);
    let mut backend = UserspaceBackend::new(config(Balance::Random));
    let slices = [slice(
        "leak",
        "l-1",
        a.port(),
        "TCP",
        vec![ep(a, "n", true, false)],
    )];
    sync(
        &mut backend,
        &plan(&[service("leak", ip, port, "TCP", json!({}))], &slices),
    );
    assert_eq!(who(frontend).await.expect("warm up"), "a");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_idle = fd_count();
    let stats = backend.stats();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    for worker in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..500 {
                if Instant::now() > deadline {
                    break;
                }
                let mut s = TcpStream::connect(frontend).await.expect("connect");
                if read_line(&mut s).await.is_ok_and(|l| l == "a") {
                    ok += 1;
                }
            }
            let _ = worker;
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("worker");
    }
    assert_eq!(total, 10_000, "all connections answered within 30 s");
    // Everything closes: connection tasks end and descriptors return to the idle count.
    let settle = Instant::now() + Duration::from_secs(10);
    loop {
        let active = stats.tcp_active.load(std::sync::atomic::Ordering::Relaxed);
        let fds = fd_count();
        if active == 0 && fds <= fds_idle + 4 {
            break;
        }
        assert!(
            Instant::now() < settle,
            "leak: {active} connections, {fds} fds vs {fds_idle} idle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = tokio::runtime::Handle::current().metrics();
    assert!(
        metrics.num_alive_tasks() < 50,
        "tasks alive: {}",
        metrics.num_alive_tasks()
    );
}

#[tokio::test]
async fn bulk_transfer_is_exact() {
    let a = tcp_backend("a").await;
    let (ip, port) = (frontend_ip(), free_port());
    let mut backend = UserspaceBackend::new(config(Balance::Random));
    let slices = [slice(
        "bulk",
        "k-1",
        a.port(),
        "TCP",
        vec![ep(a, "n", true, false)],
    )];
    sync(
        &mut backend,
        &plan(&[service("bulk", ip, port, "TCP", json!({}))], &slices),
    );
    let s = TcpStream::connect(SocketAddr::new(ip, port))
        .await
        .expect("connect");
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.expect("read");
    writer.await.expect("writer");
    assert_eq!(&got[..2], b"a\n");
    assert!(
        got[2..] == expected[..],
        "echoed bytes differ (len {} vs {})",
        got.len() - 2,
        expected.len()
    );
}

async fn http_get(addr: SocketAddr) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or_default();
    (status, head.to_lowercase(), body.to_string())
}

#[tokio::test]
async fn health_check_node_port_reports_local_endpoints() {
    use portico_proxy::health::{ProxyHealth, ServiceHealthServers};
    let a = tcp_backend("a").await;
    let (ip, port, hc_port) = (frontend_ip(), free_port(), free_port());
    let hc_ip = frontend_ip();
    let svc = service(
        "lb",
        ip,
        port,
        "TCP",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": hc_port,
               "ports": [{"name": "http", "port": port, "protocol": "TCP", "nodePort": free_port()}]}),
    );
    let health = ProxyHealth::new(Duration::from_secs(60));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut servers = ServiceHealthServers::new(vec![hc_ip], health, shutdown.clone());
    let local = [slice(
        "lb",
        "lb-1",
        a.port(),
        "TCP",
        vec![ep(a, "node-a", true, false)],
    )];
    servers.sync(&plan(std::slice::from_ref(&svc), &local));
    let (status, head, body) = http_get(SocketAddr::new(hc_ip, hc_port)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains("x-load-balancing-endpoint-weight: 1"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert_eq!(
        body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
    );
    let remote = [slice(
        "lb",
        "lb-1",
        a.port(),
        "TCP",
        vec![ep(a, "node-b", true, false)],
    )];
    servers.sync(&plan(&[svc], &remote));
    let (status, _, body) = http_get(SocketAddr::new(hc_ip, hc_port)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"localEndpoints\": 0"), "{body}");
    shutdown.cancel();
}

#[tokio::test]
async fn internal_policy_local_without_local_endpoint_drops() {
    let a = tcp_backend("a").await;
    let (ip, port) = (frontend_ip(), free_port());
    let mut backend = UserspaceBackend::new(config(Balance::Random));
    let svc = service(
        "itp",
        ip,
        port,
        "TCP",
        json!({"internalTrafficPolicy": "Local"}),
    );
    let remote = [slice(
        "itp",
        "i-1",
        a.port(),
        "TCP",
        vec![ep(a, "node-b", true, false)],
    )];
    sync(&mut backend, &plan(&[svc], &remote));
    // Dropped: no answer and no reset (the client would time out).
    let mut s = TcpStream::connect(SocketAddr::new(ip, port))
        .await
        .expect("connect");
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    assert!(r.is_err(), "expected silence, got {r:?}");
}
