//! The whole proxy against a real in-process API server: Services and EndpointSlices are
//! created through the API, traffic flows through the userspace data plane on loopback.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use portico_apiserver::testing::TestServer;
use portico_proxy::userspace::{Balance, UserspaceConfig};
use portico_proxy::{Options, ProxyMode, start};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_follows_the_api() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "portico_proxy=debug".into()))
        .with_test_writer()
        .try_init();
    let server = TestServer::start_with(|a| a.service_cluster_ip_range = "127.91.0.0/16".into())
        .await
        .expect("api server");
    let client = server.client.clone();
    let shutdown = CancellationToken::new();
    let node_port_ip = frontend_ip();
    let opts = Options {
        node_name: "node-a".into(),
        mode: ProxyMode::Userspace,
        healthz_bind_address: Some("127.0.0.1:0".parse().expect("addr")),
        metrics_bind_address: Some("127.0.0.1:0".parse().expect("addr")),
        min_sync_period: Duration::from_millis(50),
        sync_period: Duration::from_secs(10),
        userspace: UserspaceConfig {
            balance: Balance::RoundRobin,
            nodeport_addresses: vec![ipnet::IpNet::from(node_port_ip)],
            drain_timeout: Duration::from_secs(1),
            ..UserspaceConfig::default()
        },
        ..Options::default()
    };
    let handle = start(client.clone(), opts, shutdown.clone())
        .await
        .expect("proxy starts");
    tokio::time::timeout(Duration::from_secs(15), handle.synced())
        .await
        .expect("first sync");

    let a = tcp_backend("a").await;
    let b = tcp_backend("b").await;
    let port = free_port();
    // An explicit address inside the range keeps the test independent of the allocator.
    let ip: IpAddr = IpAddr::from([127, 91, (port >> 8) as u8, (port & 0xff) as u8]);
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
    }))
    .expect("json");
    let created = services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    let ip: IpAddr = created
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|s| s.parse().ok())
        .expect("allocated cluster IP");
    let frontend = SocketAddr::new(ip, port);

    let mut sl = slice(
        "web",
        "web-a",
        a.port(),
        "TCP",
        vec![ep(a, "node-a", true, false)],
    );
    sl.metadata.namespace = Some("default".into());
    slices
        .create(&PostParams::default(), &sl)
        .await
        .expect("create slice a");
    let mut sl_b = slice(
        "web",
        "web-b",
        b.port(),
        "TCP",
        vec![ep(b, "node-b", true, false)],
    );
    sl_b.metadata.namespace = Some("default".into());
    slices
        .create(&PostParams::default(), &sl_b)
        .await
        .expect("create slice b");

    // Both backends answer through the cluster IP.
    let seen = eventually("both backends", async || {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..10 {
            *seen.entry(who(frontend).await.ok()?).or_default() += 1;
        }
        (seen.len() == 2).then_some(seen)
    })
    .await;
    assert_eq!(seen["a"], 5, "{seen:?}");

    // A backend goes away: traffic moves without a restart.
    slices
        .delete("web-a", &Default::default())
        .await
        .expect("delete slice a");
    eventually("traffic moves to b", async || {
        for _ in 0..6 {
            if who(frontend).await.ok()? != "b" {
                return None;
            }
        }
        Some(())
    })
    .await;

    // The Service becomes a NodePort: the node port serves too.
    let node_port = 30000 + free_port() % 2700;
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "NodePort", "ports": [
                {"name": "http", "port": port, "protocol": "TCP", "nodePort": node_port}
            ]}})),
        )
        .await
        .expect("patch to NodePort");
    let np = SocketAddr::new(node_port_ip, node_port);
    eventually("node port", async || {
        (who(np).await.ok()? == "b").then_some(())
    })
    .await;

    // No endpoints: connections are reset at once.
    slices
        .delete("web-b", &Default::default())
        .await
        .expect("delete slice b");
    eventually("reject", async || {
        let started = Instant::now();
        (who(frontend).await.is_err() && started.elapsed() < Duration::from_millis(500))
            .then_some(())
    })
    .await;

    // Health and metrics with kube-proxy's names.
    let (status, body) = http_get(handle.healthz_addr.expect("healthz"), "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"nodeEligible\": true"), "{body}");
    let (status, body) = http_get(handle.metrics_addr.expect("metrics"), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("kubeproxy_sync_proxy_rules_duration_seconds"),
        "{body}"
    );
    assert!(
        body.contains("kubeproxy_network_programming_duration_seconds"),
        "{body}"
    );

    // The Service variables a kubelet would inject into a pod in "default".
    let vars = portico_proxy::envcmd::vars(client.clone(), "default", true)
        .await
        .expect("env vars");
    let get = |name: &str| {
        vars.iter()
            .find(|v| v.name == name)
            .map(|v| v.value.clone())
    };
    assert_eq!(get("WEB_SERVICE_HOST"), Some(ip.to_string()));
    assert_eq!(get("WEB_SERVICE_PORT"), Some(port.to_string()));
    assert_eq!(get("WEB_SERVICE_PORT_HTTP"), Some(port.to_string()));
    assert_eq!(get("WEB_PORT"), Some(format!("tcp://{ip}:{port}")));

    shutdown.cancel();
    handle.join().await;
    server.stop().await;
}
