//! Helpers for the data-plane tests: small backends on 127.0.0.1:0, Services and
//! EndpointSlices as JSON, and unique loopback frontend addresses.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A fresh 127.x.y.z address for one test's frontends (Linux routes all of 127/8 to lo).
pub fn frontend_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + (std::process::id() % 200) * 256;
    IpAddr::from([127, 88, (n >> 8) as u8, (n & 0xff) as u8])
}

/// A port number that was free a moment ago (bound on port 0 and read back).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A TCP backend that greets each connection with "`name`\n" and then echoes.
pub async fn tcp_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A UDP backend that answers "`name`:`payload`".
pub async fn udp_backend(name: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    addr
}

/// Connects and reads the greeting line (the backend's name).
pub async fn who(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    read_line(&mut s).await
}

pub async fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "eof",
            ));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.push(byte[0]);
    }
}

/// A Service `ns/name` with one port `http` (protocol `proto`), cluster IP `ip`; `extra`
/// is merged into `spec`.
pub fn service(
    name: &str,
    ip: IpAddr,
    port: u16,
    proto: &str,
    extra: serde_json::Value,
) -> Service {
    let mut spec = json!({
        "type": "ClusterIP",
        "clusterIP": ip.to_string(),
        "clusterIPs": [ip.to_string()],
        "ports": [{"name": "http", "port": port, "protocol": proto}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name},
        "spec": spec,
    }))
    .expect("service json")
}

/// One endpoint for a slice: address, node, ready, serving, terminating.
pub fn ep(addr: SocketAddr, node: &str, ready: bool, terminating: bool) -> serde_json::Value {
    json!({
        "addresses": [addr.ip().to_string()],
        "nodeName": node,
        "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating},
    })
}

/// An EndpointSlice for `service` whose endpoints all use `port`.
pub fn slice(
    service: &str,
    name: &str,
    port: u16,
    proto: &str,
    endpoints: Vec<serde_json::Value>,
) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "namespace": "ns",
            "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": proto}],
        "endpoints": endpoints,
    }))
    .expect("slice json")
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
