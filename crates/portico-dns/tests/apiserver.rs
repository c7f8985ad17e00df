//! End-to-end: the DNS server fed by watches on a real portico API server (TestServer), queried
//! with `dig`. Objects are created through the Kubernetes API only.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use portico_apiserver::testing::TestServer;
use portico_dns::Options;
use tokio_util::sync::CancellationToken;

fn dig_short(port: u16, args: &[&str]) -> Vec<String> {
    assert!(
        std::path::Path::new("/usr/bin/dig").exists(),
        "/usr/bin/dig is missing: apt-get install bind9-dnsutils"
    );
    let output = Command::new("/usr/bin/dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+tries=1",
            "+time=2",
            "+short",
        ])
        .args(args)
        .output()
        .expect("running dig");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Sends one A query with a plain UDP socket; returns the answer count and rcode.
fn probe(addr: std::net::SocketAddr, name: &str) -> (u16, u8) {
    let mut wire = Vec::new();
    for label in name.split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let packet = portico_dns::wire::build_query(3, &wire, 1, true, None);
    socket.send_to(&packet, addr).unwrap();
    let mut buf = [0u8; 1500];
    match socket.recv(&mut buf) {
        Ok(n) if n >= 12 => (u16::from_be_bytes([buf[6], buf[7]]), buf[3] & 0x0f),
        _ => (0, 255),
    }
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if check() {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_the_api() {
    let api_server = tokio::time::timeout(Duration::from_secs(60), TestServer::start())
        .await
        .expect("TestServer::start did not return within 60 s")
        .expect("starting the API server");
    eprintln!("api server up at {}", api_server.url);
    let client = api_server.client.clone();
    let shutdown = CancellationToken::new();
    let options = Options {
        udp_workers: 1,
        ..Options::default()
    };
    let dns = portico_dns::start(client.clone(), options, shutdown.clone())
        .await
        .unwrap();
    let engine = dns.engine().clone();
    wait_until("the first sync", || engine.is_synced()).await;
    eprintln!("dns synced");
    let addr = dns.udp_addr;
    let port = addr.port();

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let web: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    let created = services.create(&PostParams::default(), &web).await.unwrap();
    eprintln!("created web");
    let cluster_ip = created.spec.unwrap().cluster_ip.unwrap();
    let latency = wait_until("web's A record", || {
        probe(addr, "web.default.svc.cluster.local").0 == 1
    })
    .await;
    eprintln!("create → answer: {latency:?}");
    let answer =
        tokio::task::spawn_blocking(move || dig_short(port, &["web.default.svc.cluster.local"]))
            .await
            .unwrap();
    assert_eq!(answer, vec![cluster_ip.clone()]);
    let srv = tokio::task::spawn_blocking(move || {
        dig_short(port, &["_http._tcp.web.default.svc.cluster.local", "SRV"])
    })
    .await
    .unwrap();
    assert_eq!(
        srv,
        vec!["0 100 80 web.default.svc.cluster.local.".to_string()]
    );
    let ip = cluster_ip.clone();
    let ptr = tokio::task::spawn_blocking(move || dig_short(port, &["-x", &ip]))
        .await
        .unwrap();
    assert_eq!(ptr, vec!["web.default.svc.cluster.local.".to_string()]);

    // Headless with a slice written through the API.
    let db: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &db).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.1.0.10"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.1.0.11"], "conditions": {"ready": false}}
        ],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    wait_until("db's A record", || {
        probe(addr, "db.default.svc.cluster.local").0 == 1
    })
    .await;
    let host = tokio::task::spawn_blocking(move || {
        dig_short(port, &["db-0.db.default.svc.cluster.local"])
    })
    .await
    .unwrap();
    assert_eq!(host, vec!["10.1.0.10".to_string()]);
    let srv = tokio::task::spawn_blocking(move || {
        dig_short(port, &["_pg._tcp.db.default.svc.cluster.local", "SRV"])
    })
    .await
    .unwrap();
    assert_eq!(
        srv,
        vec!["0 100 5432 db-0.db.default.svc.cluster.local.".to_string()]
    );

    // Deleting the Service removes its names (NXDOMAIN).
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("web's NXDOMAIN", || {
        probe(addr, "web.default.svc.cluster.local").1 == 3
    })
    .await;

    shutdown.cancel();
    dns.join().await;
    api_server.stop().await;
}
