//! `portico up` as an unprivileged user serves real TCP and UDP traffic through cluster IPs:
//! spread, ClientIP affinity, UDP, and an immediate refusal when a Service has no endpoints.
//! Backends are threads of this test on 127.0.0.4 and 127.0.0.5; every address is loopback.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use portico_e2e::Up;
use serde_json::json;

/// A TCP server answering its name on every connection, and a UDP server echoing `name:payload`.
fn backend(ip: &str, port: u16, name: &'static str) -> u16 {
    let tcp = TcpListener::bind((ip, port)).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let udp = UdpSocket::bind((ip, port)).unwrap();
    std::thread::spawn(move || {
        for mut conn in tcp.incoming().map_while(Result::ok) {
            let _ = conn.write_all(name.as_bytes());
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let reply = format!("{name}:{}", String::from_utf8_lossy(&buf[..n]));
            let _ = udp.send_to(reply.as_bytes(), from);
        }
    });
    port
}

fn tcp_name(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut name = String::new();
    conn.read_to_string(&mut name)?;
    Ok(name)
}

/// Retries until the proxy has programmed the frontend (it syncs within about a second).
fn eventually_tcp(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match tcp_name(addr) {
            Ok(name) if !name.is_empty() => return name,
            other if Instant::now() > deadline => panic!("no answer through {addr}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

async fn create(
    client: &kube::Client,
    name: &str,
    affinity: bool,
    endpoints: &[&str],
    port: u16,
) -> IpAddr {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut spec = json!({"ports": [
        {"name": "tcp", "protocol": "TCP", "port": 9000, "targetPort": port},
        {"name": "udp", "protocol": "UDP", "port": 9000, "targetPort": port}]});
    if affinity {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    let svc: Service =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let eps: Vec<_> = endpoints
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "protocol": "TCP", "port": port}, {"name": "udp", "protocol": "UDP", "port": port}],
        "endpoints": eps,
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn unprivileged_up_serves_tcp_and_udp_through_cluster_ips() {
    let a_port = backend("127.0.0.4", 0, "a");
    let b_port = backend("127.0.0.5", a_port, "b");
    assert_eq!(a_port, b_port);

    let dir = tempfile::tempdir().unwrap();
    // A range of its own, so this test and the README test never share a frontend.
    let up = Up::start_unprivileged(
        dir.path(),
        &[
            "--data-dir",
            "data",
            "--secure-port",
            "0",
            "--dns-address",
            "127.0.0.1:0",
            "--service-cluster-ip-range",
            "127.98.0.0/16",
        ],
    )
    .unwrap();
    let kubeconfig = dir.path().join("data/kubeconfig");
    assert_eq!(
        up.field("kubeconfig"),
        Some("data/kubeconfig"),
        "{}",
        up.ready_line
    );
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();

    // Spread: both backends answer through one cluster IP.
    let spread = create(
        &client,
        "spread",
        false,
        &["127.0.0.4", "127.0.0.5"],
        a_port,
    )
    .await;
    let spread_addr = SocketAddr::new(spread, 9000);
    eventually_tcp(spread_addr);
    let names: std::collections::BTreeSet<String> = tokio::task::spawn_blocking(move || {
        (0..30).map(|_| tcp_name(spread_addr).unwrap()).collect()
    })
    .await
    .unwrap();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "b"]);

    // ClientIP affinity: 15 connections, one backend.
    let sticky = create(&client, "sticky", true, &["127.0.0.4", "127.0.0.5"], a_port).await;
    let sticky_addr = SocketAddr::new(sticky, 9000);
    let first = eventually_tcp(sticky_addr);
    let rest: Vec<String> = tokio::task::spawn_blocking(move || {
        (0..15).map(|_| tcp_name(sticky_addr).unwrap()).collect()
    })
    .await
    .unwrap();
    assert!(
        rest.iter().all(|n| *n == first),
        "affinity broke: {first} then {rest:?}"
    );

    // UDP through the same cluster IP.
    let udp_reply = tokio::task::spawn_blocking(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..20 {
            sock.send_to(b"ping", spread_addr).unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).to_string();
            }
        }
        panic!("no UDP answer through {spread_addr}");
    })
    .await
    .unwrap();
    assert!(
        udp_reply == "a:ping" || udp_reply == "b:ping",
        "{udp_reply}"
    );

    // No endpoints: the connection is refused at once, not left to time out.
    let empty = create(&client, "empty", false, &[], a_port).await;
    let empty_addr = SocketAddr::new(empty, 9000);
    // A reset (not a timeout) is the proof; no timing threshold, these machines are noisy.
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match TcpStream::connect_timeout(&empty_addr, Duration::from_secs(2)).and_then(
                |mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut buf = [0u8; 1];
                    c.read(&mut buf)
                },
            ) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                _ if Instant::now() > deadline => panic!("{empty_addr} was never refused"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
    .await
    .unwrap();
    drop(up);
}
