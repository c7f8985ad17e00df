//! A light UDP load generator: pre-built queries sent with `sendmmsg` and answers taken with
//! `recvmmsg`, in batches, from several connected sockets on one thread. dnsperf spends most of
//! a core per ~90k queries (it formats every query and tracks each one); this spends far less,
//! so on a 2-CPU machine it can push a server on the other CPU to its own limit.
//!
//! It keeps a fixed number of queries outstanding (closed loop): a new batch goes out as answers
//! come back. Queries unanswered for `LOSS_TIMEOUT` are counted lost and their window reopened.
//! Must not: send anywhere but the loopback address it is given, or run past its duration.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};

const BATCH: usize = 32;
const ANSWER_BUFFER: usize = 1500;
/// Queries without an answer after this long count as lost.
const LOSS_TIMEOUT: Duration = Duration::from_millis(100);

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub struct Blast {
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub seconds: f64,
}

struct Flow {
    socket: UdpSocket,
    outstanding: usize,
    last_answer: Instant,
}

/// Sends `queries` (wire packets, cycled) to `server` for `duration` keeping `window` queries
/// outstanding per socket over `sockets` sockets.
pub fn blast(
    server: SocketAddr,
    queries: &[Vec<u8>],
    duration: Duration,
    sockets: usize,
    window: usize,
) -> anyhow::Result<Blast> {
    anyhow::ensure!(server.ip().is_loopback(), "blast only targets loopback");
    anyhow::ensure!(!queries.is_empty(), "no queries");
    let mut flows = Vec::with_capacity(sockets);
    for _ in 0..sockets.max(1) {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(server)?;
        socket.set_nonblocking(true)?;
        let raw = socket2::SockRef::from(&socket);
        raw.set_recv_buffer_size(4 << 20).ok();
        raw.set_send_buffer_size(4 << 20).ok();
        flows.push(Flow {
            socket,
            outstanding: 0,
            last_answer: Instant::now(),
        });
    }
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut answers: Box<[[u8; ANSWER_BUFFER]; BATCH]> = Box::new([[0; ANSWER_BUFFER]; BATCH]);
    let no_address: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    let mut next = 0usize;
    let mut result = Blast {
        sent: 0,
        answered: 0,
        lost: 0,
        seconds: 0.0,
    };
    let started = Instant::now();
    let deadline = started + duration;
    while Instant::now() < deadline {
        let mut idle = true;
        for flow in &mut flows {
            let fd = flow.socket.as_raw_fd();
            // Fill the window.
            while flow.outstanding + BATCH <= window {
                let slices: [[IoSlice<'_>; 1]; BATCH] =
                    std::array::from_fn(|k| [IoSlice::new(&queries[(next + k) % queries.len()])]);
                let no_control: [ControlMessage<'_>; 0] = [];
                match sendmmsg(
                    fd,
                    &mut send_headers,
                    slices.iter(),
                    no_address,
                    no_control,
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(sent) => {
                        let sent = sent.count();
                        next = (next + sent) % queries.len();
                        flow.outstanding += sent;
                        result.sent += sent as u64;
                        if sent < BATCH {
                            break;
                        }
                    }
                    Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOBUFS) => break,
                    Err(e) => return Err(e).context("sendmmsg"),
                }
            }
            // Take what has arrived.
            loop {
                let mut slices = answers.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
                match recvmmsg(
                    fd,
                    &mut recv_headers,
                    slices.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                ) {
                    Ok(got) => {
                        let got = got.count();
                        if got == 0 {
                            break;
                        }
                        idle = false;
                        result.answered += got as u64;
                        flow.outstanding = flow.outstanding.saturating_sub(got);
                        flow.last_answer = Instant::now();
                        if got < BATCH {
                            break;
                        }
                    }
                    Err(Errno::EAGAIN | Errno::EINTR) => break,
                    // An unreachable port reported by ICMP: the next send finds out again.
                    Err(Errno::ECONNREFUSED) => break,
                    Err(e) => return Err(e).context("recvmmsg"),
                }
            }
            if flow.outstanding > 0 && flow.last_answer.elapsed() > LOSS_TIMEOUT {
                result.lost += flow.outstanding as u64;
                flow.outstanding = 0;
                flow.last_answer = Instant::now();
            }
        }
        if idle {
            std::hint::spin_loop();
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}
