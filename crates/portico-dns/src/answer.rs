//! Authoritative answers for the cluster zone and the reverse names of cluster addresses.
//!
//! Owns: choosing the records for a question from the index and writing them (answer, SOA in
//! the authority section for negative answers, A/AAAA of SRV targets in the additional
//! section), CNAME chains through ExternalName Services, RFC 8482 answers to ANY.
//! Must not: allocate on the common path, or touch sockets.

use std::net::IpAddr;
use std::sync::Arc;

use crate::index::{Found, Index, NameEntry, Rdata};
use crate::name::Zone;
use crate::wire::{self, Query, Response, ZoneRef};

/// TTL of `dns-version.<zone>` (the value CoreDNS uses).
const DNS_VERSION_TTL: u32 = 28800;
/// The schema version this server implements.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// Longest CNAME chain followed inside the zone.
const MAX_CHAIN: usize = 8;

/// Result of answering an in-zone question.
#[derive(Debug, PartialEq, Eq)]
pub enum ZoneOutcome {
    /// The response is complete.
    Done,
    /// A CNAME chain left the zone; the caller may resolve this absolute name upstream and
    /// append its records (the CNAME records are already written).
    External(Arc<[u8]>),
}

fn address_rdata(ip: IpAddr) -> Rdata {
    match ip {
        IpAddr::V4(v4) => Rdata::A(v4),
        IpAddr::V6(v6) => Rdata::Aaaa(v6),
    }
}

/// Returns the relative part of `name` when it lies inside `zone` (at a label boundary).
pub fn split_zone<'a>(name: &'a [u8], zone: &Zone) -> Option<&'a [u8]> {
    let mut pos = 0;
    loop {
        if name.len() - pos == zone.wire.len() {
            return (name[pos..] == zone.wire[..]).then(|| &name[..pos]);
        }
        let l = usize::from(*name.get(pos)?);
        if l == 0 {
            return None;
        }
        pos += 1 + l;
        if pos >= name.len() {
            return None;
        }
    }
}

#[derive(Clone, Copy)]
enum Owner<'a> {
    Question,
    Rel(&'a [u8]),
}

struct Writer<'r, 'b> {
    resp: &'r mut Response<'b>,
    zone: &'r Zone,
    /// Offset of the zone suffix inside the question.
    zone_at: u16,
    ttl: u32,
    serial: u32,
    max_len: usize,
}

impl Writer<'_, '_> {
    fn owner(&mut self, owner: Owner<'_>) {
        match owner {
            Owner::Question => self.resp.pointer(Response::QNAME_OFFSET),
            Owner::Rel(rel) => self.resp.name_rel(rel, ZoneRef::Pointer(self.zone_at)),
        }
    }

    fn address(&mut self, owner: Owner<'_>, rdata: &Rdata) {
        if matches!(rdata, Rdata::A(_) | Rdata::Aaaa(_)) {
            self.owner(owner);
            self.address_rdata(rdata);
        }
    }

    /// The type, TTL and data of an A/AAAA record whose owner is already written.
    fn address_rdata(&mut self, rdata: &Rdata) {
        match rdata {
            Rdata::A(v4) => {
                let at = self.resp.rr_fixed(wire::TYPE_A, self.ttl);
                self.resp.buf.extend_from_slice(&v4.octets());
                self.resp.end_rdata(at);
            }
            Rdata::Aaaa(v6) => {
                let at = self.resp.rr_fixed(wire::TYPE_AAAA, self.ttl);
                self.resp.buf.extend_from_slice(&v6.octets());
                self.resp.end_rdata(at);
            }
            _ => {}
        }
    }

    fn soa_authority(&mut self) {
        self.resp.pointer(self.zone_at);
        let at = self.resp.rr_fixed(wire::TYPE_SOA, self.ttl);
        self.soa_rdata();
        self.resp.end_rdata(at);
        self.resp.authority += 1;
    }

    fn soa_rdata(&mut self) {
        self.resp.buf.extend_from_slice(b"\x02ns\x03dns");
        self.resp.pointer(self.zone_at);
        self.resp.buf.extend_from_slice(b"\x0ahostmaster");
        self.resp.pointer(self.zone_at);
        for value in [self.serial, 7200, 1800, 86400, self.ttl] {
            self.resp.buf.extend_from_slice(&value.to_be_bytes());
        }
    }

    fn hinfo_rfc8482(&mut self, owner: Owner<'_>) {
        self.owner(owner);
        let at = self.resp.rr_fixed(wire::TYPE_HINFO, self.ttl);
        self.resp.buf.extend_from_slice(b"\x07RFC8482\x00");
        self.resp.end_rdata(at);
        self.resp.answers += 1;
    }

    fn nodata(&mut self) {
        self.soa_authority();
    }

    /// Writes the terminal answer for `found` at `owner`.
    fn terminal(&mut self, index: &Index, found: &Found<'_>, owner: Owner<'_>, qtype: u16) {
        match found {
            Found::Apex => match qtype {
                wire::TYPE_SOA => {
                    self.owner(owner);
                    let at = self.resp.rr_fixed(wire::TYPE_SOA, self.ttl);
                    self.soa_rdata();
                    self.resp.end_rdata(at);
                    self.resp.answers += 1;
                }
                wire::TYPE_NS => {
                    self.owner(owner);
                    let at = self.resp.rr_fixed(wire::TYPE_NS, self.ttl);
                    let target = self.resp.buf.len();
                    self.resp.buf.extend_from_slice(b"\x02ns\x03dns");
                    self.resp.pointer(self.zone_at);
                    self.resp.end_rdata(at);
                    self.resp.answers += 1;
                    // Glue: the addresses of the name server, while they fit.
                    if let Ok(target) = u16::try_from(target)
                        && target < 0x4000
                    {
                        for ip in index.nameserver_addresses() {
                            let mark = self.resp.buf.len();
                            self.resp.pointer(target);
                            self.address_rdata(&address_rdata(*ip));
                            if self.resp.buf.len() + 11 > self.max_len {
                                self.resp.buf.truncate(mark);
                                break;
                            }
                            self.resp.additional += 1;
                        }
                    }
                }
                wire::TYPE_ANY => self.hinfo_rfc8482(owner),
                _ => self.nodata(),
            },
            Found::Entry(entry) => self.entry(index, entry, owner, qtype),
            Found::EmptyNonTerminal => self.nodata(),
            Found::DnsVersion => {
                if qtype == wire::TYPE_TXT || qtype == wire::TYPE_ANY {
                    self.owner(owner);
                    let at = self.resp.rr_fixed(wire::TYPE_TXT, DNS_VERSION_TTL);
                    self.resp.buf.push(SCHEMA_VERSION.len() as u8);
                    self.resp.buf.extend_from_slice(SCHEMA_VERSION.as_bytes());
                    self.resp.end_rdata(at);
                    self.resp.answers += 1;
                } else {
                    self.nodata();
                }
            }
            Found::Pod(ip) => {
                let rdata = address_rdata(*ip);
                if qtype == rdata.rtype() || qtype == wire::TYPE_ANY {
                    self.address(owner, &rdata);
                    self.resp.answers += 1;
                } else {
                    self.nodata();
                }
            }
            Found::Nameserver => {
                let mut written = 0;
                for ip in index.nameserver_addresses() {
                    let rdata = address_rdata(*ip);
                    if qtype == rdata.rtype() || qtype == wire::TYPE_ANY {
                        self.address(owner, &rdata);
                        written += 1;
                    }
                }
                if written == 0 {
                    self.nodata();
                }
                self.resp.answers += written;
            }
            Found::NxDomain => {
                self.resp.set_rcode(wire::RCODE_NXDOMAIN);
                self.soa_authority();
            }
        }
    }

    fn entry(&mut self, index: &Index, entry: &NameEntry, owner: Owner<'_>, qtype: u16) {
        match qtype {
            wire::TYPE_ANY => {
                if entry.records.iter().any(|(_, r)| *r != Rdata::Ent) {
                    self.hinfo_rfc8482(owner);
                } else {
                    self.nodata();
                }
            }
            wire::TYPE_SRV => {
                let count = entry.of_type(wire::TYPE_SRV).count();
                if count == 0 {
                    return self.nodata();
                }
                // CoreDNS's weights: priority 0, each record 100/n (at least 1).
                let weight = (100 / count).max(1) as u16;
                for rdata in entry.of_type(wire::TYPE_SRV) {
                    let Rdata::Srv { port, target } = rdata else {
                        continue;
                    };
                    self.owner(owner);
                    let at = self.resp.rr_fixed(wire::TYPE_SRV, self.ttl);
                    self.resp.buf.extend_from_slice(&0u16.to_be_bytes());
                    self.resp.buf.extend_from_slice(&weight.to_be_bytes());
                    self.resp.buf.extend_from_slice(&port.to_be_bytes());
                    // RFC 2782: no compression in the SRV target.
                    self.resp.buf.extend_from_slice(target);
                    self.resp.buf.extend_from_slice(&self.zone.wire);
                    self.resp.end_rdata(at);
                    self.resp.answers += 1;
                }
                // Addresses of the targets, while they fit (the additional section may be cut
                // without setting TC).
                let mut previous: Option<&Arc<[u8]>> = None;
                for rdata in entry.of_type(wire::TYPE_SRV) {
                    let Rdata::Srv { target, .. } = rdata else {
                        continue;
                    };
                    if previous.is_some_and(|p| Arc::ptr_eq(p, target)) {
                        continue;
                    }
                    previous = Some(target);
                    let Found::Entry(target_entry) = index.find(target) else {
                        continue;
                    };
                    for addr in target_entry
                        .records
                        .iter()
                        .map(|(_, r)| r)
                        .filter(|r| matches!(r, Rdata::A(_) | Rdata::Aaaa(_)))
                    {
                        let mark = self.resp.buf.len();
                        self.address(Owner::Rel(target), addr);
                        if self.resp.buf.len() + 11 > self.max_len {
                            self.resp.buf.truncate(mark);
                            return;
                        }
                        self.resp.additional += 1;
                    }
                }
            }
            wire::TYPE_CNAME => match entry.cname() {
                Some(target) => {
                    self.cname(owner, target);
                }
                None => self.nodata(),
            },
            _ => {
                let mut written = 0;
                for rdata in entry.of_type(qtype) {
                    self.address(owner, rdata);
                    written += 1;
                }
                if written == 0 {
                    self.nodata();
                }
                self.resp.answers += written;
            }
        }
    }

    fn cname(&mut self, owner: Owner<'_>, target: &[u8]) {
        self.owner(owner);
        let at = self.resp.rr_fixed(wire::TYPE_CNAME, self.ttl);
        self.resp.buf.extend_from_slice(target);
        self.resp.end_rdata(at);
        self.resp.answers += 1;
    }
}

/// Answers a question whose name is inside the zone; `rel` is the part before the zone.
pub fn answer_zone(
    index: &Index,
    ttl: u32,
    q: &Query,
    rel: &[u8],
    resp: &mut Response<'_>,
    max_len: usize,
) -> ZoneOutcome {
    let zone = index.zone();
    let zone_at = (wire::HEADER + q.name_len - zone.wire.len()) as u16;
    let mut w = Writer {
        resp,
        zone,
        zone_at,
        ttl,
        serial: index.serial(),
        max_len,
    };
    chain(index, &mut w, q, rel, None)
}

/// Answers with `CNAME question → candidate.<zone>` followed by candidate's records (the
/// answer shape of server-side search-path expansion).
pub fn answer_via_cname(
    index: &Index,
    ttl: u32,
    q: &Query,
    candidate: &[u8],
    resp: &mut Response<'_>,
    max_len: usize,
) -> ZoneOutcome {
    let zone = index.zone();
    let zone_at = (wire::HEADER + q.name_len - zone.wire.len()) as u16;
    let mut w = Writer {
        resp,
        zone,
        zone_at,
        ttl,
        serial: index.serial(),
        max_len,
    };
    w.owner(Owner::Question);
    let at = w.resp.rr_fixed(wire::TYPE_CNAME, ttl);
    w.resp.buf.extend_from_slice(candidate);
    w.resp.buf.extend_from_slice(&zone.wire);
    w.resp.end_rdata(at);
    w.resp.answers += 1;
    chain(index, &mut w, q, candidate, Some(candidate.to_vec()))
}

fn chain(
    index: &Index,
    w: &mut Writer<'_, '_>,
    q: &Query,
    rel: &[u8],
    start: Option<Vec<u8>>,
) -> ZoneOutcome {
    let zone = index.zone();
    let mut chained: Option<Vec<u8>> = start;
    for _ in 0..MAX_CHAIN {
        let (found, owner) = match &chained {
            None => (index.find(rel), Owner::Question),
            Some(key) => (index.find(key), Owner::Rel(key)),
        };
        let target = match &found {
            Found::Entry(entry) if q.qtype != wire::TYPE_CNAME => entry.cname().cloned(),
            _ => None,
        };
        let Some(target) = target else {
            w.terminal(index, &found, owner, q.qtype);
            return ZoneOutcome::Done;
        };
        w.cname(owner, &target);
        let lower: Vec<u8> = target.iter().map(u8::to_ascii_lowercase).collect();
        match split_zone(&lower, zone) {
            Some(next) => chained = Some(next.to_vec()),
            None => return ZoneOutcome::External(target),
        }
    }
    // A chain longer than MAX_CHAIN (a loop between ExternalName Services).
    w.resp.set_rcode(wire::RCODE_SERVFAIL);
    ZoneOutcome::Done
}

/// Answers a reverse (PTR) question for a cluster address. Returns false when the index has no
/// name for `ip`, so the caller can fall through to the upstream resolvers.
pub fn answer_reverse(
    index: &Index,
    ttl: u32,
    q: &Query,
    ip: IpAddr,
    resp: &mut Response<'_>,
) -> bool {
    let mut targets = index.ptr(ip).peekable();
    if targets.peek().is_none() {
        return false;
    }
    if q.qtype != wire::TYPE_PTR && q.qtype != wire::TYPE_ANY {
        return true;
    }
    let zone = &index.zone().wire;
    for target in targets {
        resp.pointer(Response::QNAME_OFFSET);
        let at = resp.rr_fixed(wire::TYPE_PTR, ttl);
        resp.name_rel(target, ZoneRef::Literal(zone));
        resp.end_rdata(at);
        resp.answers += 1;
    }
    true
}
