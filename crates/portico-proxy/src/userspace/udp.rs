//! UDP frontends: one flow per client address, each with its own socket connected to the
//! chosen endpoint, so replies find their way back. A flow ends after `idle` without traffic
//! in either direction, or at once when its endpoint leaves the plan (the next datagram then
//! picks a live endpoint, as upstream's conntrack cleanup achieves).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Stats;
use super::route::{Backend, Decision, FrontendKind, RouteCell};

const MAX_DATAGRAM: usize = 65536;

struct Flow {
    upstream: Arc<UdpSocket>,
    backend: Arc<Backend>,
    last_seen_ms: Arc<AtomicU64>,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Flow>>>;

/// Serves one UDP frontend until `stop`; flows end with it.
pub async fn serve(
    socket: UdpSocket,
    cell: Arc<RouteCell>,
    kind: FrontendKind,
    idle: Duration,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let flows: Flows = Arc::default();
    let epoch = Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, client) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier sends surface here; they concern one client only.
                tracing::debug!(error = %e, "udp receive failed");
                continue;
            }
        };
        let existing = {
            let map = flows.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&client)
                .filter(|f| !f.backend.removed.is_cancelled())
                .map(|f| (f.upstream.clone(), f.last_seen_ms.clone()))
        };
        let (upstream, last_seen) = match existing {
            Some(f) => f,
            None => {
                let Decision::Forward(candidates) = cell.decide(kind, client, local) else {
                    // No endpoints: a userspace proxy cannot send ICMP unreachable; drop.
                    continue;
                };
                let Some(backend) = candidates.into_iter().find(|b| !b.removed.is_cancelled())
                else {
                    continue;
                };
                match open_flow(&backend).await {
                    Ok(upstream) => {
                        cell.remember(client.ip(), backend.addr);
                        let upstream = Arc::new(upstream);
                        let last_seen = Arc::new(AtomicU64::new(ms_since(epoch)));
                        let flow = Flow {
                            upstream: upstream.clone(),
                            backend: backend.clone(),
                            last_seen_ms: last_seen.clone(),
                        };
                        flows
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(client, flow);
                        stats.udp_flows.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(replies(
                            socket.clone(),
                            upstream.clone(),
                            client,
                            backend,
                            flows.clone(),
                            last_seen.clone(),
                            epoch,
                            idle,
                            stats.clone(),
                            stop.clone(),
                        ));
                        (upstream, last_seen)
                    }
                    Err(e) => {
                        tracing::debug!(endpoint = %backend.addr, error = %e, "udp flow failed");
                        continue;
                    }
                }
            }
        };
        last_seen.store(ms_since(epoch), Ordering::Relaxed);
        if let Err(e) = upstream.send(&buf[..n]).await {
            tracing::debug!(error = %e, "udp forward failed");
        }
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn open_flow(backend: &Backend) -> std::io::Result<UdpSocket> {
    let any: IpAddr = match backend.addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0)).await?;
    socket.connect(backend.addr).await?;
    Ok(socket)
}

#[allow(clippy::too_many_arguments)]
async fn replies(
    frontend: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    backend: Arc<Backend>,
    flows: Flows,
    last_seen: Arc<AtomicU64>,
    epoch: Instant,
    idle: Duration,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let deadline = epoch
            + Duration::from_millis(last_seen.load(Ordering::Relaxed).saturating_add(idle_ms));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = backend.removed.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {
                if ms_since(epoch) >= last_seen.load(Ordering::Relaxed).saturating_add(idle_ms) {
                    break;
                }
            }
            r = upstream.recv(&mut buf) => match r {
                Ok(n) => {
                    last_seen.store(ms_since(epoch), Ordering::Relaxed);
                    if let Err(e) = frontend.send_to(&buf[..n], client).await {
                        tracing::debug!(error = %e, "udp reply failed");
                    }
                }
                // ECONNREFUSED from an ICMP unreachable: the endpoint is gone; keep the flow
                // until idle so the client is not flapped between endpoints.
                Err(e) => tracing::debug!(error = %e, "udp upstream receive failed"),
            },
        }
    }
    let mut map = flows.lock().unwrap_or_else(|p| p.into_inner());
    if map
        .get(&client)
        .is_some_and(|f| Arc::ptr_eq(&f.upstream, &upstream))
    {
        map.remove(&client);
    }
    stats.udp_flows.fetch_sub(1, Ordering::Relaxed);
}
