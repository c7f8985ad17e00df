//! TCP frontends: accept, pick an endpoint, connect (trying the next one on failure) and
//! forward both directions. Small exchanges are copied through a shared scratch buffer, so
//! an idle connection holds no buffer; once a direction shows bulk traffic it switches to
//! splice(2) through a pipe on Linux, which moves pages without copying them.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use portico_core::plan::NoEndpoints;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Stats;
use super::route::{Decision, FrontendKind, RouteCell};

/// Bytes read in one go in copy mode, and the read size that marks a direction as bulk.
const SCRATCH: usize = 64 * 1024;
/// How long a dropped connection is held open without an answer before it is reset.
const DROP_HOLD: Duration = Duration::from_secs(30);

/// Settings every connection needs.
#[derive(Clone, Debug)]
pub struct TcpSettings {
    pub connect_timeout: Duration,
    pub splice: bool,
}

/// Serves one TCP frontend until `stop`.
pub async fn serve(
    listener: TcpListener,
    cell: Arc<RouteCell>,
    kind: FrontendKind,
    settings: Arc<TcpSettings>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let cell = cell.clone();
        let settings = settings.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            stats.tcp_active.fetch_add(1, Ordering::Relaxed);
            handle(stream, peer, &cell, kind, &settings).await;
            stats.tcp_active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Closes with a reset at once, as a reject verdict does.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    cell: &RouteCell,
    kind: FrontendKind,
    settings: &TcpSettings,
) {
    let local = client.local_addr().unwrap_or(peer);
    let candidates = match cell.decide(kind, peer, local) {
        Decision::Forward(list) => list,
        Decision::Verdict(NoEndpoints::Reject) => return reset(client),
        Decision::Verdict(NoEndpoints::Drop) => {
            // A userspace proxy cannot ignore a SYN; hold the connection silently instead,
            // discarding what the client sends, until it gives up or the hold ends.
            let discard = async {
                let mut buf = [0u8; 1024];
                loop {
                    if client.readable().await.is_err() {
                        return;
                    }
                    match client.try_read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            };
            let _ = tokio::time::timeout(DROP_HOLD, discard).await;
            return reset(client);
        }
    };
    let mut server = None;
    for backend in candidates.iter().take(3) {
        if backend.removed.is_cancelled() {
            continue;
        }
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(backend.addr)).await
        {
            Ok(Ok(s)) => {
                server = Some((s, backend.clone()));
                break;
            }
            Ok(Err(e)) => tracing::debug!(endpoint = %backend.addr, error = %e, "connect failed"),
            Err(_) => tracing::debug!(endpoint = %backend.addr, "connect timed out"),
        }
    }
    let Some((server, backend)) = server else {
        return reset(client);
    };
    cell.remember(peer.ip(), backend.addr);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = backend.drained.cancelled() => {
            reset(server);
            reset(client);
        }
        _ = forward(&client, &server, settings.splice) => {}
    }
}

/// Forwards both directions until both have ended.
pub async fn forward(a: &TcpStream, b: &TcpStream, splice: bool) {
    let (r1, r2) = tokio::join!(pump(a, b, splice), pump(b, a, splice));
    if r1.is_err() || r2.is_err() {
        // One side failed: make sure the other does not wait forever.
        let _ = SockRef::from(a).shutdown(Shutdown::Both);
        let _ = SockRef::from(b).shutdown(Shutdown::Both);
    }
}

thread_local! {
    static SCRATCH_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; SCRATCH]);
}

enum Read {
    Eof,
    /// Everything read was written already.
    Done {
        bulk: bool,
    },
    /// The bytes the destination did not take yet.
    Pending {
        rest: Vec<u8>,
        bulk: bool,
    },
}

/// One read and as much of the write as fits without waiting, through the thread's scratch
/// buffer (no await in between, so the buffer is never held across a suspension).
fn read_then_write(from: &TcpStream, to: &TcpStream) -> io::Result<Read> {
    SCRATCH_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        let n = from.try_read(&mut buf)?;
        if n == 0 {
            return Ok(Read::Eof);
        }
        let bulk = n == buf.len();
        let mut written = 0;
        while written < n {
            match to.try_write(&buf[written..n]) {
                Ok(w) => written += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if written == n {
            Ok(Read::Done { bulk })
        } else {
            Ok(Read::Pending {
                rest: buf[written..n].to_vec(),
                bulk,
            })
        }
    })
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Forwards `from` → `to` until end of stream, then half-closes `to`.
async fn pump(from: &TcpStream, to: &TcpStream, splice: bool) -> io::Result<()> {
    loop {
        from.readable().await?;
        match read_then_write(from, to) {
            Ok(Read::Eof) => break,
            Ok(Read::Done { bulk }) => {
                if bulk && splice && splice::available() {
                    splice::pump(from, to).await?;
                    break;
                }
            }
            Ok(Read::Pending { rest, bulk }) => {
                write_all(to, &rest).await?;
                if bulk && splice && splice::available() {
                    splice::pump(from, to).await?;
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    let _ = SockRef::from(to).shutdown(Shutdown::Write);
    Ok(())
}

#[cfg(target_os = "linux")]
mod splice {
    //! Bulk forwarding with splice(2): socket → pipe → socket, no copy through user space.
    use std::io;
    use std::os::fd::AsFd;

    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    const PIPE_SIZE: i32 = 1 << 20;
    const CHUNK: usize = 1 << 20;

    pub fn available() -> bool {
        true
    }

    /// Forwards until end of stream; returns at EOF.
    pub async fn pump(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
        let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A bigger pipe means fewer calls per byte; the default 64 KiB is fine if refused.
        let _ = fcntl(&pipe_w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            from.readable().await?;
            let moved = from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, &pipe_w, None, CHUNK, flags).map_err(io::Error::from)
            });
            let mut in_pipe = match moved {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            while in_pipe > 0 {
                to.writable().await?;
                let sent = to.try_io(Interest::WRITABLE, || {
                    splice(&pipe_r, None, to.as_fd(), None, in_pipe, flags).map_err(io::Error::from)
                });
                match sent {
                    Ok(n) => in_pipe -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod splice {
    use std::io;
    use tokio::net::TcpStream;

    pub fn available() -> bool {
        false
    }

    pub async fn pump(_from: &TcpStream, _to: &TcpStream) -> io::Result<()> {
        Ok(())
    }
}
