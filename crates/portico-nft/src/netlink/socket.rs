//! A `NETLINK_NETFILTER` socket bound to one network namespace, and the send/ACK loop of a
//! batch. The socket is created on a short-lived OS thread that has entered the namespace, so
//! no runtime worker thread ever changes namespace; the socket stays in that namespace for life.

use std::os::fd::AsFd;
use std::path::Path;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};

use super::attr::parse_attrs;
use crate::Error;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Runs `f` on a dedicated OS thread inside the network namespace at `netns` (a path such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`), or on the calling thread when `netns` is `None`.
pub fn in_netns<T: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    let Some(path) = netns else {
        return Ok(f());
    };
    let file = std::fs::File::open(path)
        .map_err(|e| Error::Netns(format!("open {}: {e}", path.display())))?;
    let path_text = path.display().to_string();
    std::thread::Builder::new()
        .name("portico-netns".into())
        .spawn(move || -> Result<T, Error> {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::Netns(format!("setns {path_text}: {e}")))?;
            Ok(f())
        })
        .map_err(|e| Error::Netns(format!("spawn thread: {e}")))?
        .join()
        .map_err(|_| Error::Netns("namespace thread panicked".into()))?
}

/// One netfilter netlink socket.
pub struct NfSocket {
    sock: Socket,
    next_seq: u32,
}

impl std::fmt::Debug for NfSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfSocket").finish_non_exhaustive()
    }
}

/// One reply message from the kernel: type, flags, seq and payload after the nlmsghdr.
#[derive(Debug)]
pub struct Reply {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: Vec<u8>,
}

impl NfSocket {
    /// Opens a socket in `netns` (see [`in_netns`]).
    pub fn open(netns: Option<&Path>) -> Result<NfSocket, Error> {
        in_netns(netns, NfSocket::open_here)?
    }

    fn open_here() -> Result<NfSocket, Error> {
        let io = |what: &str, e: std::io::Error| Error::Io(format!("{what}: {e}"));
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| io("netlink socket", e))?;
        sock.bind_auto().map_err(|e| io("netlink bind", e))?;
        sock.set_ext_ack(true)
            .map_err(|e| io("NETLINK_EXT_ACK", e))?;
        sock.set_cap_ack(true)
            .map_err(|e| io("NETLINK_CAP_ACK", e))?;
        // Big batches go out in one sendmsg and their ACKs queue up before we read them.
        let _ = setsockopt(&sock.as_fd(), sockopt::SndBufForce, &(256 << 20));
        let _ = setsockopt(&sock.as_fd(), sockopt::RcvBufForce, &(64 << 20));
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(NfSocket {
            sock,
            next_seq: seed,
        })
    }

    /// Reserves `n` sequence numbers.
    pub fn take_seqs(&mut self, n: u32) -> u32 {
        let first = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(n);
        first
    }

    pub fn send(&self, bytes: &[u8]) -> Result<(), Error> {
        let sent = self
            .sock
            .send(bytes, 0)
            .map_err(|e| Error::Io(format!("netlink send of {} bytes: {e}", bytes.len())))?;
        if sent != bytes.len() {
            return Err(Error::Io(format!(
                "netlink send: {sent} of {} bytes",
                bytes.len()
            )));
        }
        Ok(())
    }

    /// Receives one datagram and splits it into messages.
    pub fn recv(&self, nonblocking: bool) -> Result<Option<Vec<Reply>>, Error> {
        let mut buf = vec![0u8; 1 << 20];
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        let mut slice: &mut [u8] = &mut buf[..];
        let n = match self.sock.recv(&mut slice, flags) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(Error::Io(format!("netlink recv: {e}"))),
        };
        let mut data = &buf[..n.min(buf.len())];
        let mut out = Vec::new();
        while data.len() >= 16 {
            let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
            if len < 16 || len > data.len() {
                break;
            }
            out.push(Reply {
                kind: u16::from_ne_bytes([data[4], data[5]]),
                flags: u16::from_ne_bytes([data[6], data[7]]),
                seq: u32::from_ne_bytes([data[8], data[9], data[10], data[11]]),
                payload: data[16..len].to_vec(),
            });
            data = &data[((len + 3) & !3).min(data.len())..];
        }
        Ok(Some(out))
    }

    /// Sends a finished batch and checks the ACK of every message. The kernel handles a batch
    /// synchronously inside `sendmsg`, so every reply is queued when `send` returns.
    pub fn commit(&self, bytes: &[u8], described: &[(u32, String)]) -> Result<(), Error> {
        self.send(bytes)?;
        let mut pending: std::collections::HashSet<u32> =
            described.iter().map(|(seq, _)| *seq).collect();
        let mut errors = Vec::new();
        while !pending.is_empty() {
            let Some(replies) = self.recv(true)? else {
                break;
            };
            for reply in replies {
                if reply.kind != NLMSG_ERROR {
                    continue;
                }
                pending.remove(&reply.seq);
                if let Some(err) = decode_error(&reply) {
                    let what = described
                        .iter()
                        .find(|(seq, _)| *seq == reply.seq)
                        .map(|(_, what)| what.as_str())
                        .unwrap_or("batch");
                    errors.push(format!("{what}: {err}"));
                }
            }
        }
        if !errors.is_empty() {
            errors.truncate(5);
            return Err(Error::Kernel(errors.join("; ")));
        }
        if !pending.is_empty() {
            return Err(Error::Kernel(format!(
                "no answer for {} of {} messages",
                pending.len(),
                described.len()
            )));
        }
        Ok(())
    }

    /// Sends one request (e.g. a dump) and collects replies until DONE or the ACK.
    pub fn request(&self, bytes: &[u8], seq: u32) -> Result<Vec<Reply>, Error> {
        self.send(bytes)?;
        let mut out = Vec::new();
        loop {
            let Some(replies) = self.recv(false)? else {
                continue;
            };
            for reply in replies {
                if reply.seq != seq {
                    continue;
                }
                match reply.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        return match decode_error(&reply) {
                            Some(err) => Err(Error::Kernel(err)),
                            None => Ok(out),
                        };
                    }
                    _ => {
                        let multi = reply.flags & NLM_F_MULTI != 0;
                        out.push(reply);
                        if !multi {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }
}

/// Decodes an `nlmsgerr`: `None` for an ACK, else errno text plus the kernel's extack message.
pub fn decode_error(reply: &Reply) -> Option<String> {
    let p = &reply.payload;
    if p.len() < 4 {
        return Some("short netlink error".into());
    }
    let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    if code == 0 {
        return None;
    }
    let errno = -code;
    // e.g. "File exists (os error 17)".
    let mut text = std::io::Error::from_raw_os_error(errno).to_string();
    if reply.flags & NLM_F_ACK_TLVS != 0 && p.len() >= 20 {
        // With NETLINK_CAP_ACK only the original header (16 bytes) follows the code.
        for (kind, value) in parse_attrs(&p[20..]) {
            if kind == NLMSGERR_ATTR_MSG {
                let msg = String::from_utf8_lossy(value)
                    .trim_end_matches('\0')
                    .to_string();
                text.push_str(&format!(": {msg}"));
            }
        }
    }
    Some(text)
}
