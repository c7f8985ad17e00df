//! The query engine: one packet in, one answer (or deferred upstream work) out.
//!
//! Owns: the decision for each query: malformed → FORMERR/NOTIMP/BADVERS; not yet synced →
//! SERVFAIL; cluster zone → authoritative answer from the index (with autopath); cluster
//! reverse names → PTR; anything else → cache or upstream, only for clients inside the recursion
//! ACL (others get REFUSED). Must not: block (the synchronous path takes a read lock and writes
//! into the caller's buffer; anything that needs the network is returned as `Deferred`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

use crate::answer::{self, ZoneOutcome};
use crate::forward::{self, Forwarder};
use crate::index::{Found, Index};
use crate::name::{self, Zone};
use crate::stats::{Slot, Stats};
use crate::wire::{self, ParseError, Query, Response};

/// How server-side search-path expansion decides a client's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Autopath {
    /// No expansion: clients walk their search list themselves.
    #[default]
    Off,
    /// The namespace of the Pod whose IP sent the query (like CoreDNS `autopath @kubernetes`;
    /// needs the Pod watch, i.e. `--pod-mode verified`).
    PodIp,
    /// The namespace in the query itself: a question `<name>.<ns>.svc.<zone>` that would be
    /// NXDOMAIN is taken as the first search element of a pod in `<ns>`. Works for any client,
    /// including processes that are not pods.
    QueryName,
}

/// UDP or TCP (TCP answers are never truncated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub ttl: u32,
    pub recursion_from: Vec<IpNet>,
    pub autopath: Autopath,
}

/// What to do with a packet.
#[derive(Debug)]
pub enum Action {
    /// Send `out[..len]`.
    Reply(usize),
    /// Needs upstream work; finish with [`Engine::complete`].
    Deferred(Box<Deferred>),
    /// Send nothing.
    Drop,
}

/// Upstream work left over from the synchronous path.
#[derive(Debug)]
pub struct Deferred {
    packet: Vec<u8>,
    query: Query,
    max_len: usize,
    kind: DeferredKind,
}

#[derive(Debug)]
enum DeferredKind {
    /// Forward the question as it is.
    Relay,
    /// `partial` holds the response so far (CNAMEs into `target`), whose records follow.
    Chase {
        partial: Vec<u8>,
        answers: u16,
        target: Arc<[u8]>,
    },
    /// Search expansion reached the bare name: resolve `bare` upstream; on a positive answer
    /// reply CNAME(question → bare) plus its records, otherwise send `negative`.
    AutopathBare { bare: Vec<u8>, negative: Vec<u8> },
}

/// The engine shared by all workers.
pub struct Engine {
    index: Arc<RwLock<Index>>,
    zone: Zone,
    config: EngineConfig,
    synced: AtomicBool,
    forwarder: Forwarder,
    stats: Stats,
}

impl Engine {
    pub fn new(
        index: Arc<RwLock<Index>>,
        config: EngineConfig,
        forwarder: Forwarder,
        workers: usize,
    ) -> Engine {
        let zone = index
            .read()
            .map(|i| i.zone().clone())
            .unwrap_or_else(|p| p.into_inner().zone().clone());
        Engine {
            index,
            zone,
            config,
            synced: AtomicBool::new(false),
            forwarder,
            stats: Stats::new(workers),
        }
    }

    pub fn index(&self) -> &Arc<RwLock<Index>> {
        &self.index
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Marks the index as complete (first list of every watch done).
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn recursion_allowed(&self, client: IpAddr) -> bool {
        let client = canonical(client);
        self.forwarder.is_enabled()
            && self
                .config
                .recursion_from
                .iter()
                .any(|net| net.contains(&client))
    }

    /// Handles one query packet synchronously, counting it in `slot`.
    pub fn handle(
        &self,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
        out: &mut Vec<u8>,
        slot: &Slot,
    ) -> Action {
        let started = std::time::Instant::now();
        let q = match wire::parse_query(packet) {
            Ok(q) => q,
            Err(ParseError::Ignore) => return Action::Drop,
            Err(ParseError::Reject { id, flags, rcode }) => {
                let resp = Response::bare(out, id, flags, rcode);
                let len = resp.finish(None, usize::MAX, 0);
                slot.record(0, rcode, elapsed(started));
                return Action::Reply(len);
            }
            Err(ParseError::BadVersion {
                id,
                flags,
                question_end,
            }) => {
                // BADVERS carries the question back and an OPT with extended rcode 1.
                let fake = Query {
                    id,
                    flags,
                    name: [0; 256],
                    name_len: 0,
                    qtype: 0,
                    qclass: 0,
                    question_end,
                    edns: Some(wire::Edns {
                        udp_size: 512,
                        version: 0,
                        dnssec_ok: false,
                    }),
                };
                let resp = Response::start(out, packet, &fake, false);
                let len = resp.finish(Some(&fake), usize::MAX, wire::RCODE_BADVERS);
                slot.record(0, 6, elapsed(started));
                return Action::Reply(len);
            }
        };
        let max_len = match transport {
            Transport::Udp => q.max_udp(),
            Transport::Tcp => 65535,
        };
        let action = self.dispatch(packet, &q, client, max_len, out, slot);
        if let Action::Reply(len) = action
            && len >= 4
        {
            let rcode = out[3] & 0x0f;
            if out[2] & 0x02 != 0 {
                slot.truncated();
            }
            slot.record(q.qtype, rcode, elapsed(started));
        }
        action
    }

    fn dispatch(
        &self,
        packet: &[u8],
        q: &Query,
        client: IpAddr,
        max_len: usize,
        out: &mut Vec<u8>,
        slot: &Slot,
    ) -> Action {
        let recursion = self.recursion_allowed(client);
        if q.qclass != wire::CLASS_IN {
            return self.simple(packet, q, out, wire::RCODE_REFUSED, recursion);
        }
        if let Some(rel) = answer::split_zone(q.name(), &self.zone) {
            if !self.is_synced() {
                return self.simple(packet, q, out, wire::RCODE_SERVFAIL, recursion);
            }
            if q.qtype == wire::TYPE_AXFR || q.qtype == wire::TYPE_IXFR {
                return self.simple(packet, q, out, wire::RCODE_REFUSED, recursion);
            }
            return self.zone_query(packet, q, rel, client, recursion, max_len, out, slot);
        }
        if let Some(ip) = name::parse_reverse(q.name()) {
            if !self.is_synced() {
                return self.simple(packet, q, out, wire::RCODE_SERVFAIL, recursion);
            }
            let Ok(index) = self.index.read() else {
                return self.simple(packet, q, out, wire::RCODE_SERVFAIL, recursion);
            };
            let mut resp = Response::start(out, packet, q, true);
            resp.set_recursion_available(recursion);
            if answer::answer_reverse(&index, self.config.ttl, q, ip, &mut resp) {
                return Action::Reply(resp.finish(Some(q), max_len, 0));
            }
        }
        if !recursion {
            return self.simple(packet, q, out, wire::RCODE_REFUSED, false);
        }
        let dnssec_ok = q.edns.is_some_and(|e| e.dnssec_ok);
        if let Some(hit) = self.forwarder.cached(q.name(), q.qtype, dnssec_ok) {
            slot.cache_hit();
            return Action::Reply(hit.render(packet, q, out, max_len));
        }
        slot.cache_miss();
        Action::Deferred(Box::new(Deferred {
            packet: packet.to_vec(),
            query: q.clone(),
            max_len,
            kind: DeferredKind::Relay,
        }))
    }

    fn simple(
        &self,
        packet: &[u8],
        q: &Query,
        out: &mut Vec<u8>,
        rcode: u8,
        recursion: bool,
    ) -> Action {
        let mut resp = Response::start(out, packet, q, false);
        resp.set_rcode(rcode);
        resp.set_recursion_available(recursion);
        Action::Reply(resp.finish(Some(q), usize::MAX, 0))
    }

    #[allow(clippy::too_many_arguments)]
    fn zone_query(
        &self,
        packet: &[u8],
        q: &Query,
        rel: &[u8],
        client: IpAddr,
        recursion: bool,
        max_len: usize,
        out: &mut Vec<u8>,
        slot: &Slot,
    ) -> Action {
        let Ok(index) = self.index.read() else {
            return self.simple(packet, q, out, wire::RCODE_SERVFAIL, recursion);
        };
        let mut resp = Response::start(out, packet, q, true);
        resp.set_recursion_available(recursion);
        let outcome = answer::answer_zone(&index, self.config.ttl, q, rel, &mut resp, max_len);
        if let ZoneOutcome::External(target) = outcome {
            if recursion {
                let answers = resp.answers;
                resp.finish(None, usize::MAX, 0);
                return Action::Deferred(Box::new(Deferred {
                    packet: packet.to_vec(),
                    query: q.clone(),
                    max_len,
                    kind: DeferredKind::Chase {
                        partial: out.clone(),
                        answers,
                        target,
                    },
                }));
            }
            return Action::Reply(resp.finish(Some(q), max_len, 0));
        }
        if resp.rcode() != wire::RCODE_NXDOMAIN || self.config.autopath == Autopath::Off {
            return Action::Reply(resp.finish(Some(q), max_len, 0));
        }
        let negative_len = resp.finish(Some(q), max_len, 0);
        // Autopath: `rel` = <base labels> <ns> svc.
        let Some((base, ns)) = split_search(rel) else {
            return Action::Reply(negative_len);
        };
        if self.config.autopath == Autopath::PodIp
            && index.pod_namespace(canonical(client)).map(str::as_bytes) != Some(ns)
        {
            return Action::Reply(negative_len);
        }
        let negative = out[..negative_len].to_vec();
        // Remaining search elements: svc.<zone>, <zone>, then the bare name.
        let mut candidate = Vec::with_capacity(base.len() + 4);
        candidate.extend_from_slice(base);
        candidate.extend_from_slice(b"\x03svc");
        let mut hit = !matches!(index.find(&candidate), Found::NxDomain);
        if !hit {
            candidate.truncate(base.len());
            hit = !matches!(index.find(&candidate), Found::NxDomain);
        }
        if !hit {
            // The bare name may itself be inside the zone.
            let mut bare = base.to_vec();
            bare.push(0);
            if let Some(inner) = answer::split_zone(&bare, &self.zone) {
                let inner = inner.to_vec();
                if !matches!(index.find(&inner), Found::NxDomain) {
                    candidate = inner;
                    hit = true;
                }
            }
            if !hit {
                if recursion && !base.is_empty() {
                    return Action::Deferred(Box::new(Deferred {
                        packet: packet.to_vec(),
                        query: q.clone(),
                        max_len,
                        kind: DeferredKind::AutopathBare { bare, negative },
                    }));
                }
                out.clear();
                out.extend_from_slice(&negative);
                return Action::Reply(negative.len());
            }
        }
        slot.autopath();
        let mut resp = Response::start(out, packet, q, true);
        resp.set_recursion_available(recursion);
        let outcome =
            answer::answer_via_cname(&index, self.config.ttl, q, &candidate, &mut resp, max_len);
        if let ZoneOutcome::External(target) = outcome
            && recursion
        {
            let answers = resp.answers;
            resp.finish(None, usize::MAX, 0);
            return Action::Deferred(Box::new(Deferred {
                packet: packet.to_vec(),
                query: q.clone(),
                max_len,
                kind: DeferredKind::Chase {
                    partial: out.clone(),
                    answers,
                    target,
                },
            }));
        }
        Action::Reply(resp.finish(Some(q), max_len, 0))
    }

    /// Finishes deferred work; returns the bytes to send (empty when nothing should be sent).
    pub async fn complete(&self, work: Box<Deferred>) -> Vec<u8> {
        let started = std::time::Instant::now();
        let slot = self.stats.shared();
        let Deferred {
            packet,
            query: q,
            max_len,
            kind,
        } = *work;
        let dnssec_ok = q.edns.is_some_and(|e| e.dnssec_ok);
        let mut out = Vec::with_capacity(512);
        match kind {
            DeferredKind::Relay => {
                slot.forwarded();
                match self.forwarder.resolve(q.name(), q.qtype, dnssec_ok).await {
                    Ok(answer) => {
                        answer.render(&packet, &q, &mut out, max_len);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, name = %name::to_dotted(q.name()), "upstream failed");
                        self.simple(&packet, &q, &mut out, wire::RCODE_SERVFAIL, true);
                    }
                }
            }
            DeferredKind::Chase {
                partial,
                answers,
                target,
            } => {
                slot.forwarded();
                let lower: Vec<u8> = target.iter().map(u8::to_ascii_lowercase).collect();
                out = partial;
                let mut answers = answers;
                let mut rcode = wire::RCODE_NOERROR;
                match self.forwarder.resolve(&lower, q.qtype, dnssec_ok).await {
                    Ok(upstream) => {
                        rcode = upstream.rcode();
                        if let Some((records, count)) =
                            forward::expanded_answers(upstream.message())
                        {
                            out.extend_from_slice(&records);
                            answers += count;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "ExternalName target lookup failed"),
                }
                out[6..8].copy_from_slice(&answers.to_be_bytes());
                out[3] = (out[3] & 0xf0) | rcode;
                // Upstream data is not ours to vouch for.
                out[2] &= !0x04;
                append_opt_and_fit(&mut out, &q, max_len);
            }
            DeferredKind::AutopathBare { bare, negative } => {
                slot.forwarded();
                let positive = match self.forwarder.resolve(&bare, q.qtype, dnssec_ok).await {
                    Ok(upstream) if upstream.rcode() == wire::RCODE_NOERROR => {
                        forward::expanded_answers(upstream.message())
                            .filter(|(_, count)| *count > 0)
                    }
                    _ => None,
                };
                match positive {
                    Some((records, count)) => {
                        slot.autopath();
                        let mut resp = Response::start(&mut out, &packet, &q, false);
                        resp.set_recursion_available(true);
                        resp.pointer(Response::QNAME_OFFSET);
                        let at = resp.rr_fixed(wire::TYPE_CNAME, self.config.ttl);
                        resp.buf.extend_from_slice(&bare);
                        resp.end_rdata(at);
                        resp.buf.extend_from_slice(&records);
                        resp.answers = 1 + count;
                        resp.finish(None, usize::MAX, 0);
                        append_opt_and_fit(&mut out, &q, max_len);
                    }
                    None => out = negative,
                }
            }
        }
        if out.len() >= 4 {
            slot.record(q.qtype, out[3] & 0x0f, elapsed(started));
        }
        out
    }
}

/// Appends the OPT record (when the client sent one) and truncates to `max_len` with TC.
fn append_opt_and_fit(out: &mut Vec<u8>, q: &Query, max_len: usize) {
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
}

/// Splits `<base> <ns> svc` into (base, ns); base must have at least one label.
fn split_search(rel: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut offsets = [0usize; 128];
    let mut n = 0;
    let mut pos = 0;
    while pos < rel.len() {
        *offsets.get_mut(n)? = pos;
        n += 1;
        pos += 1 + usize::from(rel[pos]);
    }
    if n < 3 || &rel[offsets[n - 1]..] != b"\x03svc" {
        return None;
    }
    let ns_at = offsets[n - 2];
    let ns = &rel[ns_at + 1..offsets[n - 1]];
    Some((&rel[..ns_at], ns))
}

/// IPv4-mapped IPv6 clients (from a dual-stack socket) are matched as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn elapsed(started: std::time::Instant) -> u64 {
    started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_split() {
        let rel = name::key(&["google", "com", "default", "svc"]).unwrap();
        let (base, ns) = split_search(&rel).unwrap();
        assert_eq!(base, b"\x06google\x03com");
        assert_eq!(ns, b"default");
        assert!(split_search(&name::key(&["default", "svc"]).unwrap()).is_none());
        assert!(split_search(&name::key(&["a", "b", "pod"]).unwrap()).is_none());
    }
}
