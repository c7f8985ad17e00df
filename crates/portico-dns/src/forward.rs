//! Forwarding names outside the cluster zone to upstream resolvers, with an answer cache.
//!
//! Owns: the upstream exchange (UDP with a fresh socket and random ID per query, TCP when the
//! answer is truncated, next upstream on timeout), in-flight coalescing (identical questions
//! arriving while one is outstanding wait for its answer instead of asking again, with a bound
//! on waiters), the cache (bounded entry count, TTLs aged on every hit) and re-framing cached
//! answers for each client (ID, question case, OPT, size).
//! Must not: be reached by clients outside the recursion ACL (the engine checks that), or cache
//! anything from the cluster zone (those answers change with the API).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::wire::{self, Edns, Query};

/// Entries kept at most; beyond it expired entries go first, then arbitrary ones.
const CACHE_CAPACITY: usize = 10_000;
/// Longest time an upstream answer is kept.
const MAX_CACHE_TTL: u32 = 3600;
/// Per-upstream timeout of one exchange.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries that may wait for one outstanding identical question; more get an error (SERVFAIL)
/// instead of unbounded memory.
pub const MAX_WAITERS: usize = 1024;

/// A question as the cache and the in-flight table see it. Forwarded questions are always
/// class IN (the engine refuses other classes), so the class is part of the key only to keep
/// the key the full question.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    name: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    dnssec_ok: bool,
}

impl CacheKey {
    fn new(name: &[u8], qtype: u16, dnssec_ok: bool) -> CacheKey {
        CacheKey {
            name: Box::from(name),
            qtype,
            qclass: wire::CLASS_IN,
            dnssec_ok,
        }
    }
}

/// The outcome of one upstream resolution, shared with the queries that waited for it.
type Outcome = Option<Result<Arc<Cached>, Arc<str>>>;

/// One outstanding upstream question and the queries waiting for it.
struct Flight {
    result: tokio::sync::watch::Sender<Outcome>,
    /// Separate from the flight so a waiter does not keep the sender (and with it a cancelled
    /// leader's channel) alive.
    waiters: Arc<std::sync::atomic::AtomicUsize>,
}

/// Removes the leader's flight when it finishes or is cancelled (its waiters then see the
/// channel close and ask again themselves).
struct FlightGuard<'a> {
    inflight: &'a Mutex<HashMap<CacheKey, Arc<Flight>>>,
    key: &'a CacheKey,
    flight: &'a Arc<Flight>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let Ok(mut inflight) = self.inflight.lock() else {
            return;
        };
        if inflight
            .get(self.key)
            .is_some_and(|f| Arc::ptr_eq(f, self.flight))
        {
            inflight.remove(self.key);
        }
    }
}

/// Counts a waiter for as long as it waits.
struct WaiterGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

enum Role {
    Leader(Arc<Flight>),
    Follower(WaiterGuard, tokio::sync::watch::Receiver<Outcome>),
}

/// An upstream answer ready to be re-framed for any client.
#[derive(Debug)]
pub struct Cached {
    /// Header, question and records, without an OPT record (arcount adjusted).
    msg: Box<[u8]>,
    ttl_offsets: Box<[usize]>,
    stored: Instant,
    expires: Instant,
}

impl Cached {
    fn from_upstream(mut msg: Vec<u8>) -> Option<Cached> {
        let layout = wire::record_layout(&msg)?;
        msg.truncate(layout.end);
        if let Some(opt_at) = layout.opt_at {
            // Only drop the OPT record when it is last, so no compression pointer is cut.
            if layout.ttl_offsets.iter().all(|t| *t < opt_at) {
                msg.truncate(opt_at);
                let ar = u16::from_be_bytes([msg[10], msg[11]]).saturating_sub(1);
                msg[10..12].copy_from_slice(&ar.to_be_bytes());
            } else {
                return None;
            }
        }
        let rcode = msg[3] & 0x0f;
        let cacheable = rcode == wire::RCODE_NOERROR || rcode == wire::RCODE_NXDOMAIN;
        let ttl = if cacheable {
            layout.min_ttl.min(MAX_CACHE_TTL)
        } else {
            0
        };
        let now = Instant::now();
        Some(Cached {
            msg: msg.into_boxed_slice(),
            ttl_offsets: layout.ttl_offsets.into_boxed_slice(),
            stored: now,
            expires: now + Duration::from_secs(u64::from(ttl)),
        })
    }

    /// The rcode of the upstream answer.
    pub fn rcode(&self) -> u8 {
        self.msg[3] & 0x0f
    }

    /// The raw message (header, question, records; compression pointers intact).
    pub fn message(&self) -> &[u8] {
        &self.msg
    }

    /// Writes the answer for one client: its ID and question bytes, aged TTLs, its OPT and size.
    pub fn render(&self, packet: &[u8], q: &Query, out: &mut Vec<u8>, max_len: usize) -> usize {
        out.clear();
        out.extend_from_slice(&self.msg);
        out[0..2].copy_from_slice(&q.id.to_be_bytes());
        let question = &packet[wire::HEADER..q.question_end];
        if out.len() >= q.question_end {
            out[wire::HEADER..q.question_end].copy_from_slice(question);
        }
        let age = self.stored.elapsed().as_secs().min(u64::from(u32::MAX)) as u32;
        for &at in self.ttl_offsets.iter() {
            if let Some(field) = out.get_mut(at..at + 4) {
                let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                field.copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
            }
        }
        // Keep the client's RD and CD bits.
        out[2] = (out[2] & !0x01) | (packet[2] & 0x01);
        out[3] = (out[3] & !0x10) | (packet[3] & 0x10);
        let opt_len = if q.edns.is_some() { 11 } else { 0 };
        if out.len() + opt_len > max_len {
            out.truncate(q.question_end);
            out[2] |= 0x02;
            out[6..12].fill(0);
        }
        if let Some(e) = q.edns {
            out.push(0);
            out.extend_from_slice(&wire::TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&wire::OUR_UDP_SIZE.to_be_bytes());
            out.extend_from_slice(&[0, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
            let ar = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
            out[10..12].copy_from_slice(&ar.to_be_bytes());
        }
        out.len()
    }
}

/// Upstream resolvers plus the cache.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<CacheKey, Arc<Cached>>>,
    inflight: Mutex<HashMap<CacheKey, Arc<Flight>>>,
    timeout: Duration,
    max_waiters: usize,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder::with_limits(upstreams, UPSTREAM_TIMEOUT, MAX_WAITERS)
    }

    /// A forwarder with a per-upstream `timeout` and at most `max_waiters` queries waiting for
    /// one outstanding question.
    pub fn with_limits(
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
        max_waiters: usize,
    ) -> Forwarder {
        Forwarder {
            upstreams,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            timeout,
            max_waiters,
        }
    }

    /// Questions currently outstanding upstream.
    pub fn inflight_len(&self) -> usize {
        self.inflight.lock().map(|f| f.len()).unwrap_or(0)
    }

    pub fn is_enabled(&self) -> bool {
        !self.upstreams.is_empty()
    }

    pub fn cache_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// A live cached answer for this name and type.
    pub fn cached(&self, name: &[u8], qtype: u16, dnssec_ok: bool) -> Option<Arc<Cached>> {
        let key = CacheKey::new(name, qtype, dnssec_ok);
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(&key)?;
        (entry.expires > Instant::now()).then(|| entry.clone())
    }

    /// Resolves a lowercase absolute wire name upstream (cache first). An identical question
    /// already outstanding is not asked again: this call waits for its answer.
    pub async fn resolve(
        &self,
        name: &[u8],
        qtype: u16,
        dnssec_ok: bool,
    ) -> anyhow::Result<Arc<Cached>> {
        if let Some(hit) = self.cached(name, qtype, dnssec_ok) {
            return Ok(hit);
        }
        let key = CacheKey::new(name, qtype, dnssec_ok);
        // A waiter whose leader was cancelled asks again (once as leader at the latest).
        for _ in 0..3 {
            match self.role(&key)? {
                Role::Leader(flight) => {
                    let guard = FlightGuard {
                        inflight: &self.inflight,
                        key: &key,
                        flight: &flight,
                    };
                    let result = self.fetch(name, qtype, dnssec_ok).await;
                    // Leave the table before publishing: later questions find the cache (or
                    // start a new flight), never a finished one.
                    drop(guard);
                    let shared = match &result {
                        Ok(cached) => Ok(cached.clone()),
                        Err(e) => Err(Arc::from(format!("{e:#}"))),
                    };
                    flight.result.send_replace(Some(shared));
                    return result;
                }
                Role::Follower(_waiting, mut result) => {
                    let wait = self.timeout * 2 * (self.upstreams.len().max(1) as u32);
                    match tokio::time::timeout(wait, result.wait_for(Option::is_some)).await {
                        Ok(Ok(outcome)) => {
                            return match outcome.as_ref() {
                                Some(Ok(cached)) => Ok(cached.clone()),
                                Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
                                None => continue,
                            };
                        }
                        Ok(Err(_leader_gone)) => continue,
                        Err(_) => {
                            anyhow::bail!("timed out waiting for an identical upstream query")
                        }
                    }
                }
            }
        }
        anyhow::bail!("the upstream query this one waited for was abandoned")
    }

    /// Joins the outstanding flight for `key` or starts one.
    fn role(&self, key: &CacheKey) -> anyhow::Result<Role> {
        let mut inflight = self
            .inflight
            .lock()
            .map_err(|_| anyhow::anyhow!("in-flight table poisoned"))?;
        if let Some(flight) = inflight.get(key) {
            let waiting = flight
                .waiters
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let guard = WaiterGuard(flight.waiters.clone());
            anyhow::ensure!(
                waiting < self.max_waiters,
                "{} queries already wait for this upstream answer",
                self.max_waiters
            );
            return Ok(Role::Follower(guard, flight.result.subscribe()));
        }
        let flight = Arc::new(Flight {
            result: tokio::sync::watch::Sender::new(None),
            waiters: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        });
        inflight.insert(key.clone(), flight.clone());
        Ok(Role::Leader(flight))
    }

    /// Asks the upstreams in order and caches the answer.
    async fn fetch(&self, name: &[u8], qtype: u16, dnssec_ok: bool) -> anyhow::Result<Arc<Cached>> {
        let mut last_error = anyhow::anyhow!("no upstream resolvers are configured");
        for upstream in &self.upstreams {
            match exchange(*upstream, name, qtype, dnssec_ok, self.timeout).await {
                Ok(msg) => {
                    let Some(cached) = Cached::from_upstream(msg) else {
                        last_error = anyhow::anyhow!("malformed answer from {upstream}");
                        continue;
                    };
                    let cached = Arc::new(cached);
                    if cached.expires > cached.stored {
                        self.insert(name, qtype, dnssec_ok, cached.clone());
                    }
                    return Ok(cached);
                }
                Err(e) => last_error = e.context(format!("upstream {upstream}")),
            }
        }
        Err(last_error)
    }

    fn insert(&self, name: &[u8], qtype: u16, dnssec_ok: bool, entry: Arc<Cached>) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_CAPACITY {
            let now = Instant::now();
            cache.retain(|_, e| e.expires > now);
            while cache.len() >= CACHE_CAPACITY {
                let Some(victim) = cache.keys().next().cloned() else {
                    break;
                };
                cache.remove(&victim);
            }
        }
        cache.insert(CacheKey::new(name, qtype, dnssec_ok), entry);
    }
}

/// One exchange with one upstream: UDP, then TCP if truncated.
async fn exchange(
    upstream: SocketAddr,
    name: &[u8],
    qtype: u16,
    dnssec_ok: bool,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let id: u16 = rand::random();
    let edns = Edns {
        udp_size: wire::OUR_UDP_SIZE,
        version: 0,
        dnssec_ok,
    };
    let query = wire::build_query(id, name, qtype, true, Some(edns));
    let local: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(&query).await?;
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))??;
        let reply = &buf[..n];
        if !matches_query(reply, id, name, qtype) {
            continue;
        }
        if wire::is_truncated(reply) {
            return exchange_tcp(upstream, &query, id, name, qtype, timeout).await;
        }
        return Ok(reply.to_vec());
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    name: &[u8],
    qtype: u16,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let work = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(len)];
        stream.read_exact(&mut reply).await?;
        anyhow::ensure!(
            matches_query(&reply, id, name, qtype),
            "mismatched TCP answer"
        );
        Ok(reply)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow::anyhow!("TCP timed out"))?
}

/// Checks that a reply answers our query (ID, QR, same question).
fn matches_query(reply: &[u8], id: u16, name: &[u8], qtype: u16) -> bool {
    if reply.len() < wire::HEADER || reply[0..2] != id.to_be_bytes() || reply[2] & 0x80 == 0 {
        return false;
    }
    if reply[4..6] != [0, 1] {
        return false;
    }
    let end = wire::HEADER + name.len();
    match reply.get(wire::HEADER..end + 2) {
        Some(q) => {
            q[..name.len()].eq_ignore_ascii_case(name) && q[name.len()..] == qtype.to_be_bytes()
        }
        None => false,
    }
}

/// The answer-section records of a message with every name expanded (no compression pointers),
/// so they can be appended to another message. Records whose data holds names of types we do
/// not know how to expand are skipped.
pub fn expanded_answers(msg: &[u8]) -> Option<(Vec<u8>, u16)> {
    let qd = u16::from_be_bytes([*msg.get(4)?, *msg.get(5)?]);
    let an = u16::from_be_bytes([*msg.get(6)?, *msg.get(7)?]);
    let mut at = wire::HEADER;
    for _ in 0..qd {
        at = wire::skip_name(msg, at)? + 4;
    }
    let mut out = Vec::new();
    let mut count = 0u16;
    for _ in 0..an {
        let (owner, after) = wire::read_name(msg, at)?;
        let fixed = msg.get(after..after + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let rdata_at = after + 10;
        let rdata = msg.get(rdata_at..rdata_at + rdlen)?;
        at = rdata_at + rdlen;
        let expanded: Vec<u8> = match rtype {
            wire::TYPE_CNAME | wire::TYPE_PTR | wire::TYPE_NS => wire::read_name(msg, rdata_at)?.0,
            15 => {
                let mut v = rdata.get(..2)?.to_vec();
                v.extend(wire::read_name(msg, rdata_at + 2)?.0);
                v
            }
            wire::TYPE_SRV => {
                let mut v = rdata.get(..6)?.to_vec();
                v.extend(wire::read_name(msg, rdata_at + 6)?.0);
                v
            }
            wire::TYPE_SOA => continue,
            _ => rdata.to_vec(),
        };
        out.extend_from_slice(&owner);
        out.extend_from_slice(&fixed[..8]);
        out.extend_from_slice(&(expanded.len() as u16).to_be_bytes());
        out.extend_from_slice(&expanded);
        count += 1;
    }
    Some((out, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake upstream on 127.0.0.1 that counts queries and answers each after `delay` with
    /// one A record (or never, when `answer` is false).
    async fn fake_upstream(delay: Duration, answer: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                seen.fetch_add(1, Ordering::SeqCst);
                if !answer {
                    continue;
                }
                let Ok(q) = wire::parse_query(&buf[..n]) else {
                    continue;
                };
                let mut reply = buf[..q.question_end].to_vec();
                reply[2] |= 0x80;
                reply[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
                reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&reply, peer).await;
                });
            }
        });
        (addr, count)
    }

    const NAME: &[u8] = b"\x07example\x03com\x00";

    #[tokio::test]
    async fn identical_questions_share_one_upstream_query() {
        let (upstream, count) = fake_upstream(Duration::from_millis(150), true).await;
        let forwarder = Arc::new(Forwarder::new(vec![upstream]));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let forwarder = forwarder.clone();
            tasks.push(tokio::spawn(async move {
                forwarder.resolve(NAME, wire::TYPE_A, false).await
            }));
        }
        // A different DO bit and a different type are different questions.
        let other_do = forwarder.resolve(NAME, wire::TYPE_A, true);
        let other_type = forwarder.resolve(NAME, wire::TYPE_AAAA, false);
        let (a, b) = tokio::join!(other_do, other_type);
        assert!(a.is_ok() && b.is_ok());
        for task in tasks {
            let answer = task.await.unwrap().unwrap();
            assert!(answer.message().ends_with(&[192, 0, 2, 7]));
        }
        assert_eq!(count.load(Ordering::SeqCst), 3);
        assert_eq!(forwarder.inflight_len(), 0);
        // Afterwards the cache answers without asking again.
        forwarder.resolve(NAME, wire::TYPE_A, false).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn waiters_are_bounded() {
        let (upstream, count) = fake_upstream(Duration::from_millis(300), true).await;
        let forwarder = Arc::new(Forwarder::with_limits(
            vec![upstream],
            Duration::from_secs(2),
            4,
        ));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let forwarder = forwarder.clone();
            tasks.push(tokio::spawn(async move {
                forwarder.resolve(NAME, wire::TYPE_A, false).await
            }));
            // Let each one reach the table in order.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut ok = 0;
        let mut refused = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(_) => refused += 1,
            }
        }
        // One leader plus four waiters; the other five are turned away.
        assert_eq!((ok, refused), (5, 5));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn waiters_share_the_timeout() {
        let (upstream, count) = fake_upstream(Duration::ZERO, false).await;
        let forwarder = Arc::new(Forwarder::with_limits(
            vec![upstream],
            Duration::from_millis(200),
            MAX_WAITERS,
        ));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let forwarder = forwarder.clone();
            tasks.push(tokio::spawn(async move {
                forwarder.resolve(NAME, wire::TYPE_A, false).await
            }));
        }
        for task in tasks {
            assert!(task.await.unwrap().is_err());
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(forwarder.inflight_len(), 0);
    }

    #[tokio::test]
    async fn waiters_of_a_cancelled_query_ask_again() {
        let (upstream, count) = fake_upstream(Duration::from_millis(200), true).await;
        let forwarder = Arc::new(Forwarder::new(vec![upstream]));
        let leader = {
            let forwarder = forwarder.clone();
            tokio::spawn(async move { forwarder.resolve(NAME, wire::TYPE_A, false).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = {
            let forwarder = forwarder.clone();
            tokio::spawn(async move { forwarder.resolve(NAME, wire::TYPE_A, false).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        assert!(follower.await.unwrap().is_ok());
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn render_ages_and_reframes() {
        // Upstream answer: example.com A 192.0.2.1 with TTL 60 and an OPT.
        let mut msg = wire::build_query(9, b"\x07example\x03com\x00", wire::TYPE_A, true, None);
        msg[2] |= 0x80;
        msg[7] = 1;
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        msg[11] = 1;
        msg.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        let cached = Cached::from_upstream(msg).unwrap();
        assert_eq!(cached.message()[11], 0, "OPT removed");
        let client = wire::build_query(77, b"\x07EXAMPLE\x03com\x00", wire::TYPE_A, true, None);
        let q = wire::parse_query(&client).unwrap();
        let mut out = Vec::new();
        let n = cached.render(&client, &q, &mut out, 512);
        assert_eq!(&out[..2], &77u16.to_be_bytes());
        assert_eq!(&out[13..20], b"EXAMPLE");
        assert_eq!(n, out.len());
        let (records, count) = expanded_answers(&out).unwrap();
        assert_eq!(count, 1);
        assert!(records.starts_with(b"\x07EXAMPLE\x03com\x00"));
    }
}
