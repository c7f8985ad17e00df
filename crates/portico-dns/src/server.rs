//! Sockets: UDP workers, the TCP listener and the metrics/health HTTP server.
//!
//! Owns: binding UDP and TCP on the same address (port 0 picks one free port for both), one
//! SO_REUSEPORT UDP socket per worker thread with a blocking receive loop (no async machinery
//! on the hot path), TCP framing with idle timeouts and a connection limit, `/metrics`,
//! `/healthz`, `/readyz`. Must not: decide answers (the engine does).

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
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

/// Datagrams taken from the kernel per `recvmmsg` and answered per `sendmmsg`.
const BATCH: usize = 32;
/// Receive buffer per datagram. Queries are small (a question and an OPT record); a longer
/// datagram arrives cut and is answered FORMERR.
const QUERY_BUFFER: usize = 4096;
/// How often a blocked worker wakes up to check for shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);

/// Tuning of the UDP workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpTuning {
    /// After answering, keep polling the socket without sleeping for this long before blocking
    /// again (zero, the default, never polls). Meant to spare a sleeping thread the scheduler's
    /// wake-up path; polling only happens while queries keep arriving within the window, so an
    /// idle server still sleeps. On the benchmark machine it did not lower p99 measurably and
    /// cost CPU (bench/dns/RESULTS.md), hence off by default.
    pub poll: Duration,
}

impl Default for UdpTuning {
    fn default() -> UdpTuning {
        UdpTuning {
            poll: Duration::ZERO,
        }
    }
}

/// One received datagram: its length and sender.
#[derive(Clone, Copy)]
struct Received {
    len: usize,
    peer: Option<SocketAddr>,
}

/// Runs one UDP worker until `shutdown`: `recvmmsg` a batch (blocking for the first datagram),
/// answer each from the engine, `sendmmsg` the answers.
pub fn udp_worker(
    worker: usize,
    socket: StdUdpSocket,
    engine: Arc<Engine>,
    runtime: tokio::runtime::Handle,
    deferred: Arc<Semaphore>,
    shutdown: CancellationToken,
    tuning: UdpTuning,
) {
    let socket = Arc::new(socket);
    if let Err(e) = socket.set_read_timeout(Some(SHUTDOWN_POLL)) {
        tracing::error!(error = %e, "cannot set a read timeout on the UDP socket");
        return;
    }
    let fd = socket.as_raw_fd();
    let mut queries: Box<[[u8; QUERY_BUFFER]; BATCH]> = Box::new([[0u8; QUERY_BUFFER]; BATCH]);
    let mut answers: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1500)).collect();
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut received = [Received { len: 0, peer: None }; BATCH];
    // (answer buffer, length) and destination of every reply of the batch.
    let mut replies: Vec<(usize, usize)> = Vec::with_capacity(BATCH);
    let mut destinations: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    let slot = engine.stats().slot(worker);
    let mut last_datagram: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let polling = last_datagram.is_some_and(|t| t.elapsed() < tuning.poll);
        let flags = if polling {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::MSG_WAITFORONE
        };
        let count = match receive_batch(fd, &mut recv_headers, &mut queries, flags, &mut received) {
            Ok(count) => count,
            Err(Errno::EAGAIN | Errno::EINTR) => {
                if polling {
                    std::hint::spin_loop();
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        if !tuning.poll.is_zero() {
            last_datagram = Some(Instant::now());
        }
        replies.clear();
        destinations.clear();
        for (i, datagram) in received[..count].iter().enumerate() {
            let Some(peer) = datagram.peer else {
                continue;
            };
            let packet = &queries[i][..datagram.len.min(QUERY_BUFFER)];
            let out = &mut answers[i];
            match engine.handle(packet, peer.ip(), Transport::Udp, out, slot) {
                Action::Reply(n) => {
                    replies.push((i, n));
                    destinations.push(Some(SockaddrStorage::from(peer)));
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
        send_batch(
            fd,
            &mut send_headers,
            &answers,
            &replies,
            &destinations,
            &socket,
        );
    }
}

/// One `recvmmsg`; fills `received[..n]` and returns n.
fn receive_batch(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    buffers: &mut [[u8; QUERY_BUFFER]; BATCH],
    flags: MsgFlags,
    received: &mut [Received; BATCH],
) -> Result<usize, Errno> {
    let mut slices = buffers.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
    let results = recvmmsg(fd, headers, slices.iter_mut(), flags, None)?;
    let mut n = 0;
    for (message, slot) in results.zip(received.iter_mut()) {
        *slot = Received {
            len: message.bytes,
            peer: message.address.and_then(|a| std_address(&a)),
        };
        n += 1;
    }
    Ok(n)
}

/// `sendmmsg` of every reply; a datagram the kernel refuses is skipped (and sent alone once,
/// so one bad destination costs only its own answer).
fn send_batch(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    answers: &[Vec<u8>],
    replies: &[(usize, usize)],
    destinations: &[Option<SockaddrStorage>],
    socket: &StdUdpSocket,
) {
    let mut from = 0;
    while from < replies.len() {
        let pending = &replies[from..];
        let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|k| {
            [IoSlice::new(
                pending.get(k).map_or(&[][..], |&(i, n)| &answers[i][..n]),
            )]
        });
        let no_control: [ControlMessage<'_>; 0] = [];
        match sendmmsg(
            fd,
            headers,
            slices[..pending.len().min(BATCH)].iter(),
            &destinations[from..],
            no_control,
            MsgFlags::empty(),
        ) {
            Ok(results) => from += results.count().max(1),
            Err(Errno::EINTR) => {}
            Err(e) => {
                let (i, n) = replies[from];
                if let Some(peer) = destinations[from].as_ref().and_then(std_address) {
                    if let Err(e) = socket.send_to(&answers[i][..n], peer) {
                        tracing::debug!(error = %e, %peer, "UDP send failed");
                    }
                } else {
                    tracing::debug!(error = %e, "UDP send failed");
                }
                from += 1;
            }
        }
    }
}

fn std_address(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
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
