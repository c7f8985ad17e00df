//! Sockets: UDP workers, the TCP listener and the metrics/health HTTP server.
//!
//! Owns: binding UDP and TCP on the same address (port 0 picks one free port for both), one
//! SO_REUSEPORT UDP socket per worker thread with a blocking receive loop (no async machinery
//! on the hot path), TCP framing with idle timeouts and a connection limit, `/metrics`,
//! `/healthz`, `/readyz`. Must not: decide answers (the engine does).

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::engine::{Action, Engine, Transport};

/// Idle time allowed between queries on one TCP connection.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Concurrent TCP connections.
const TCP_MAX_CONNECTIONS: usize = 1024;
/// Concurrent deferred (upstream) queries from UDP; beyond it queries get SERVFAIL-by-silence
/// (dropped) rather than unbounded memory.
pub const MAX_DEFERRED: usize = 4096;

fn udp_socket(addr: SocketAddr) -> anyhow::Result<StdUdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    // Large buffers absorb bursts from load generators.
    socket.set_recv_buffer_size(4 << 20).ok();
    socket.set_send_buffer_size(4 << 20).ok();
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn tcp_listener(addr: SocketAddr) -> anyhow::Result<StdTcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds `workers` UDP sockets and one TCP listener on the same address and port.
pub fn bind(
    listen: SocketAddr,
    workers: usize,
) -> anyhow::Result<(Vec<StdUdpSocket>, StdTcpListener)> {
    let mut last_error = None;
    // With port 0 the UDP port chosen may be taken for TCP; try a few times.
    for _ in 0..16 {
        let first = udp_socket(listen).with_context(|| format!("binding UDP {listen}"))?;
        let bound = first.local_addr()?;
        match tcp_listener(bound) {
            Ok(tcp) => {
                let mut sockets = vec![first];
                for _ in 1..workers.max(1) {
                    sockets
                        .push(udp_socket(bound).with_context(|| format!("binding UDP {bound}"))?);
                }
                return Ok((sockets, tcp));
            }
            Err(e) if listen.port() == 0 => last_error = Some(e),
            Err(e) => return Err(e.context(format!("binding TCP {bound}"))),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free port")))
}

/// Runs one UDP worker until `shutdown`.
pub fn udp_worker(
    worker: usize,
    socket: StdUdpSocket,
    engine: Arc<Engine>,
    runtime: tokio::runtime::Handle,
    deferred: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    if let Err(e) = socket.set_read_timeout(Some(Duration::from_millis(200))) {
        tracing::error!(error = %e, "cannot set a read timeout on the UDP socket");
        return;
    }
    let mut packet = vec![0u8; 65535];
    let mut out = Vec::with_capacity(65535);
    let slot = engine.stats().slot(worker);
    while !shutdown.is_cancelled() {
        let (len, peer) = match socket.recv_from(&mut packet) {
            Ok(v) => v,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        match engine.handle(&packet[..len], peer.ip(), Transport::Udp, &mut out, slot) {
            Action::Reply(n) => {
                if let Err(e) = socket.send_to(&out[..n], peer) {
                    tracing::debug!(error = %e, %peer, "UDP send failed");
                }
            }
            Action::Deferred(work) => {
                let Ok(permit) = deferred.clone().try_acquire_owned() else {
                    continue;
                };
                let engine = engine.clone();
                let socket = socket.clone();
                runtime.spawn(async move {
                    let bytes = engine.complete(work).await;
                    if !bytes.is_empty() {
                        let _ = socket.send_to(&bytes, peer);
                    }
                    drop(permit);
                });
            }
            Action::Drop => {}
        }
    }
}

/// Accepts TCP connections until `shutdown`.
pub async fn tcp_server(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tcp_connection(stream, peer, engine) => {}
            }
            drop(permit);
        });
    }
}

async fn tcp_connection(mut stream: TcpStream, peer: SocketAddr, engine: Arc<Engine>) {
    let _ = stream.set_nodelay(true);
    let mut packet = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let len = usize::from(len);
        if tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet[..len]))
            .await
            .is_err()
        {
            return;
        }
        let reply: Vec<u8> = match engine.handle(
            &packet[..len],
            peer.ip(),
            Transport::Tcp,
            &mut out,
            engine.stats().shared(),
        ) {
            Action::Reply(n) => out[..n].to_vec(),
            Action::Deferred(work) => engine.complete(work).await,
            Action::Drop => continue,
        };
        if reply.is_empty() {
            continue;
        }
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&(reply.len().min(65535) as u16).to_be_bytes());
        framed.extend_from_slice(&reply[..reply.len().min(65535)]);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown`.
pub async fn http_server(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
) {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let metrics_engine = engine.clone();
    let ready_engine = engine;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let engine = metrics_engine.clone();
                async move {
                    let (names, pods) = engine
                        .index()
                        .read()
                        .map(|i| (i.name_count() as f64, i.pod_keys().len() as f64))
                        .unwrap_or((0.0, 0.0));
                    let body = engine.stats().render(&[
                        (
                            "portico_dns_index_names",
                            "Names with records in the index.",
                            names,
                        ),
                        ("portico_dns_index_pods", "Pods known to the index.", pods),
                        (
                            "portico_dns_cache_entries",
                            "Upstream answers in the cache.",
                            engine.forwarder().cache_len() as f64,
                        ),
                        (
                            "portico_dns_synced",
                            "1 once the first list of every watch is done.",
                            if engine.is_synced() { 1.0 } else { 0.0 },
                        ),
                    ]);
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let engine = ready_engine.clone();
                async move {
                    if engine.is_synced() {
                        (StatusCode::OK, "ok")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "waiting for the first sync of the watches",
                        )
                    }
                }
            }),
        );
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}
