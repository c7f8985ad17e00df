//! DNS wire format for the fast path: parse one query without allocating, write answers into a
//! reused buffer.
//!
//! Owns: the query parser (header, one question, EDNS(0) OPT), the response header, resource
//! record framing, OPT and truncation. Must not: know about Kubernetes or the index, or panic on
//! any input (every read is bounds-checked; the property tests feed it arbitrary bytes).

use crate::name::MAX_NAME;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_HINFO: u16 = 13;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;
/// Extended rcode 16 (BADVERS), carried partly in the OPT record.
pub const RCODE_BADVERS: u16 = 16;

/// Header length.
pub const HEADER: usize = 12;
/// The UDP payload size we advertise and cap answers at (the DNS Flag Day 2020 value).
pub const OUR_UDP_SIZE: u16 = 1232;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;

/// EDNS(0) parameters of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query. The name is kept lowercase in wire form; the question's original bytes stay
/// in the packet (`packet[12..question_end]`) so answers echo the client's case.
#[derive(Clone)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    pub name: [u8; 256],
    pub name_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub question_end: usize,
    pub edns: Option<Edns>,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("id", &self.id)
            .field("name", &crate::name::to_dotted(self.name()))
            .field("qtype", &self.qtype)
            .field("edns", &self.edns)
            .finish()
    }
}

impl Query {
    /// Lowercase wire name including the root byte.
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }

    pub fn recursion_desired(&self) -> bool {
        self.flags & FLAG_RD != 0
    }

    /// The largest UDP answer this client accepts (512 without EDNS; capped at ours).
    pub fn max_udp(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.udp_size.clamp(512, OUR_UDP_SIZE)),
            None => 512,
        }
    }
}

/// Why a packet could not be answered normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not worth an answer (too short to carry an ID, or itself a response).
    Ignore,
    /// Answer with this rcode and no question (FORMERR, NOTIMP).
    Reject { id: u16, flags: u16, rcode: u8 },
    /// EDNS version we do not speak: BADVERS with an OPT record.
    BadVersion {
        id: u16,
        flags: u16,
        question_end: usize,
    },
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Parses a query packet.
pub fn parse_query(p: &[u8]) -> Result<Query, ParseError> {
    if p.len() < HEADER {
        return Err(ParseError::Ignore);
    }
    let id = u16::from_be_bytes([p[0], p[1]]);
    let flags = u16::from_be_bytes([p[2], p[3]]);
    if flags & FLAG_QR != 0 {
        return Err(ParseError::Ignore);
    }
    let formerr = ParseError::Reject {
        id,
        flags,
        rcode: RCODE_FORMERR,
    };
    let opcode = (flags >> 11) & 0xf;
    if opcode != 0 {
        return Err(ParseError::Reject {
            id,
            flags,
            rcode: RCODE_NOTIMP,
        });
    }
    let qd = u16::from_be_bytes([p[4], p[5]]);
    let an = u16::from_be_bytes([p[6], p[7]]);
    let ns = u16::from_be_bytes([p[8], p[9]]);
    let ar = u16::from_be_bytes([p[10], p[11]]);
    if qd != 1 || an != 0 || ns != 0 {
        return Err(formerr);
    }
    let mut name = [0u8; 256];
    let mut pos = HEADER;
    let mut len = 0usize;
    loop {
        let Some(&l) = p.get(pos) else {
            return Err(formerr);
        };
        if l & 0xc0 != 0 {
            // Compression pointers cannot point anywhere useful from the first name.
            return Err(formerr);
        }
        let l = usize::from(l);
        if len + l + 1 > MAX_NAME {
            return Err(formerr);
        }
        name[len] = l as u8;
        len += 1;
        pos += 1;
        if l == 0 {
            break;
        }
        let Some(label) = p.get(pos..pos + l) else {
            return Err(formerr);
        };
        for (dst, src) in name[len..len + l].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        len += l;
        pos += l;
    }
    let (Some(qtype), Some(qclass)) = (be16(p, pos), be16(p, pos + 2)) else {
        return Err(formerr);
    };
    pos += 4;
    let question_end = pos;
    let mut edns = None;
    for _ in 0..ar {
        // Owner name of the additional record: only the root or a pointer are expected.
        let owner = *p.get(pos).ok_or(formerr)?;
        let mut at = pos;
        if owner == 0 {
            at += 1;
        } else if owner & 0xc0 == 0xc0 {
            at += 2;
        } else {
            at = skip_name(p, pos).ok_or(formerr)?;
        }
        let rtype = be16(p, at).ok_or(formerr)?;
        let class = be16(p, at + 2).ok_or(formerr)?;
        let ttl_hi = be16(p, at + 4).ok_or(formerr)?;
        let ttl_lo = be16(p, at + 6).ok_or(formerr)?;
        let rdlen = usize::from(be16(p, at + 8).ok_or(formerr)?);
        let end = at + 10 + rdlen;
        if end > p.len() {
            return Err(formerr);
        }
        if rtype == TYPE_OPT {
            if edns.is_some() || owner != 0 {
                return Err(formerr);
            }
            let version = (ttl_hi & 0xff) as u8;
            if version != 0 {
                return Err(ParseError::BadVersion {
                    id,
                    flags,
                    question_end,
                });
            }
            edns = Some(Edns {
                udp_size: class,
                version,
                dnssec_ok: ttl_lo & 0x8000 != 0,
            });
        }
        pos = end;
    }
    Ok(Query {
        id,
        flags,
        name,
        name_len: len,
        qtype,
        qclass,
        question_end,
        edns,
    })
}

/// Skips an uncompressed-or-compressed name starting at `at`; returns the offset after it.
pub fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let l = *p.get(at)?;
        match l & 0xc0 {
            0 if l == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(l),
            0xc0 => return (at + 2 <= p.len()).then_some(at + 2),
            _ => return None,
        }
    }
    None
}

/// Writes a response into a reused buffer.
pub struct Response<'a> {
    pub buf: &'a mut Vec<u8>,
    pub answers: u16,
    pub authority: u16,
    pub additional: u16,
    question_end: usize,
}

impl<'a> Response<'a> {
    /// Starts a response echoing the question bytes of `packet` (case preserved).
    pub fn start(buf: &'a mut Vec<u8>, packet: &[u8], q: &Query, authoritative: bool) -> Self {
        buf.clear();
        let mut flags = FLAG_QR | (q.flags & (FLAG_RD | FLAG_CD));
        if authoritative {
            flags |= FLAG_AA;
        }
        buf.extend_from_slice(&q.id.to_be_bytes());
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(&packet[HEADER..q.question_end]);
        Response {
            buf,
            answers: 0,
            authority: 0,
            additional: 0,
            question_end: q.question_end,
        }
    }

    /// Starts an answer that carries no question (FORMERR/NOTIMP for unparsable queries).
    pub fn bare(buf: &'a mut Vec<u8>, id: u16, query_flags: u16, rcode: u8) -> Self {
        buf.clear();
        let flags = FLAG_QR | (query_flags & (0x7800 | FLAG_RD | FLAG_CD)) | u16::from(rcode & 0xf);
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0; 8]);
        Response {
            buf,
            answers: 0,
            authority: 0,
            additional: 0,
            question_end: HEADER,
        }
    }

    /// Offset of the question's name (for compression pointers).
    pub const QNAME_OFFSET: u16 = HEADER as u16;

    pub fn set_rcode(&mut self, rcode: u8) {
        self.buf[3] = (self.buf[3] & 0xf0) | (rcode & 0x0f);
    }

    pub fn rcode(&self) -> u8 {
        self.buf[3] & 0x0f
    }

    pub fn set_recursion_available(&mut self, ra: bool) {
        if ra {
            self.buf[3] |= (FLAG_RA & 0xff) as u8;
        } else {
            self.buf[3] &= !((FLAG_RA & 0xff) as u8);
        }
    }

    pub fn set_authoritative(&mut self, aa: bool) {
        if aa {
            self.buf[2] |= (FLAG_AA >> 8) as u8;
        } else {
            self.buf[2] &= !((FLAG_AA >> 8) as u8);
        }
    }

    /// Writes an RR header after the owner name has been written; returns the rdlength offset.
    pub fn rr_fixed(&mut self, rtype: u16, ttl: u32) -> usize {
        self.buf.extend_from_slice(&rtype.to_be_bytes());
        self.buf.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        at
    }

    /// Patches the rdlength written by `rr_fixed`.
    pub fn end_rdata(&mut self, rdlen_at: usize) {
        let len = (self.buf.len() - rdlen_at - 2) as u16;
        self.buf[rdlen_at..rdlen_at + 2].copy_from_slice(&len.to_be_bytes());
    }

    /// Writes a compression pointer.
    pub fn pointer(&mut self, offset: u16) {
        self.buf
            .extend_from_slice(&(0xc000 | (offset & 0x3fff)).to_be_bytes());
    }

    /// Writes relative labels followed by a pointer to `suffix_at` (or the literal zone).
    pub fn name_rel(&mut self, rel: &[u8], zone: ZoneRef<'_>) {
        self.buf.extend_from_slice(rel);
        match zone {
            ZoneRef::Pointer(at) => self.pointer(at),
            ZoneRef::Literal(wire) => self.buf.extend_from_slice(wire),
        }
    }

    /// Finishes: counts, OPT, truncation to `max_len` (UDP) with the TC bit.
    pub fn finish(mut self, q: Option<&Query>, max_len: usize, ext_rcode: u16) -> usize {
        let edns = q.and_then(|q| q.edns);
        let opt_len = if edns.is_some() { 11 } else { 0 };
        if self.buf.len() + opt_len > max_len {
            self.buf.truncate(self.question_end);
            self.buf[2] |= (FLAG_TC >> 8) as u8;
            self.answers = 0;
            self.authority = 0;
            self.additional = 0;
        }
        let mut additional = self.additional;
        if let Some(e) = edns {
            let ext = ((ext_rcode >> 4) & 0xff) as u8;
            self.buf.push(0);
            self.buf.extend_from_slice(&TYPE_OPT.to_be_bytes());
            self.buf.extend_from_slice(&OUR_UDP_SIZE.to_be_bytes());
            self.buf
                .extend_from_slice(&[ext, 0, if e.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
            additional += 1;
        }
        self.buf[6..8].copy_from_slice(&self.answers.to_be_bytes());
        self.buf[8..10].copy_from_slice(&self.authority.to_be_bytes());
        self.buf[10..12].copy_from_slice(&additional.to_be_bytes());
        self.buf.len()
    }
}

/// How the zone suffix of a name is written.
#[derive(Clone, Copy, Debug)]
pub enum ZoneRef<'a> {
    /// Pointer to the zone inside the question.
    Pointer(u16),
    /// The zone's full wire form.
    Literal(&'a [u8]),
}

/// Lists the offsets of the TTL fields of every RR after the question (skipping OPT), and the
/// offset where an OPT record starts (if it is last). Used to age cached upstream answers.
pub fn record_layout(p: &[u8]) -> Option<RecordLayout> {
    if p.len() < HEADER {
        return None;
    }
    let qd = be16(p, 4)?;
    let total = usize::from(be16(p, 6)?) + usize::from(be16(p, 8)?) + usize::from(be16(p, 10)?);
    let mut at = HEADER;
    for _ in 0..qd {
        at = skip_name(p, at)? + 4;
    }
    let mut ttl_offsets = Vec::with_capacity(total);
    let mut opt_at = None;
    let mut min_ttl = u32::MAX;
    for _ in 0..total {
        let start = at;
        at = skip_name(p, at)?;
        let rtype = be16(p, at)?;
        let ttl = u32::from(be16(p, at + 4)?) << 16 | u32::from(be16(p, at + 6)?);
        let rdlen = usize::from(be16(p, at + 8)?);
        if rtype == TYPE_OPT {
            opt_at = Some(start);
        } else {
            ttl_offsets.push(at + 4);
            min_ttl = min_ttl.min(ttl);
        }
        at += 10 + rdlen;
        if at > p.len() {
            return None;
        }
    }
    Some(RecordLayout {
        ttl_offsets,
        opt_at,
        end: at,
        min_ttl: if min_ttl == u32::MAX { 0 } else { min_ttl },
    })
}

/// Where the records of a message sit.
#[derive(Clone, Debug)]
pub struct RecordLayout {
    pub ttl_offsets: Vec<usize>,
    pub opt_at: Option<usize>,
    pub end: usize,
    pub min_ttl: u32,
}

/// Builds a plain query packet (used for forwarding and tests).
pub fn build_query(id: u16, name_wire: &[u8], qtype: u16, rd: bool, edns: Option<Edns>) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEADER + name_wire.len() + 4 + 11);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&(if rd { FLAG_RD } else { 0 }).to_be_bytes());
    p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    p.extend_from_slice(name_wire);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(e) = edns {
        p.push(0);
        p.extend_from_slice(&TYPE_OPT.to_be_bytes());
        p.extend_from_slice(&e.udp_size.to_be_bytes());
        p.extend_from_slice(&[0, e.version, if e.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    p
}

/// Reads a possibly compressed name at `at` into lowercase-preserving wire form (no pointers).
/// Returns the name and the offset just after it in the packet.
pub fn read_name(p: &[u8], mut at: usize) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(64);
    let mut after = None;
    for _ in 0..128 {
        let l = *p.get(at)?;
        match l & 0xc0 {
            0 => {
                let l = usize::from(l);
                out.push(l as u8);
                if l == 0 {
                    return (out.len() <= MAX_NAME).then(|| (out, after.unwrap_or(at + 1)));
                }
                out.extend_from_slice(p.get(at + 1..at + 1 + l)?);
                if out.len() > MAX_NAME {
                    return None;
                }
                at += 1 + l;
            }
            0xc0 => {
                let target = usize::from(be16(p, at)? & 0x3fff);
                if after.is_none() {
                    after = Some(at + 2);
                }
                if target >= at {
                    return None;
                }
                at = target;
            }
            _ => return None,
        }
    }
    None
}

/// Header flags helpers for forwarded answers.
pub fn header_flags(p: &[u8]) -> Option<u16> {
    be16(p, 2)
}

pub fn is_truncated(p: &[u8]) -> bool {
    header_flags(p).is_some_and(|f| f & FLAG_TC != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_query() {
        let p = build_query(7, b"\x03Web\x07Default\x00", TYPE_A, true, None);
        let q = parse_query(&p).unwrap();
        assert_eq!(q.id, 7);
        assert_eq!(q.name(), b"\x03web\x07default\x00");
        assert_eq!(q.qtype, TYPE_A);
        assert!(q.edns.is_none());
        assert_eq!(q.max_udp(), 512);
    }

    #[test]
    fn parses_edns() {
        let edns = Edns {
            udp_size: 4096,
            version: 0,
            dnssec_ok: true,
        };
        let p = build_query(1, b"\x01a\x00", TYPE_AAAA, false, Some(edns));
        let q = parse_query(&p).unwrap();
        assert_eq!(q.edns, Some(edns));
        assert_eq!(q.max_udp(), usize::from(OUR_UDP_SIZE));
    }

    #[test]
    fn rejects_bad_shapes() {
        let mut p = build_query(1, b"\x01a\x00", TYPE_A, false, None);
        p[5] = 2;
        assert!(matches!(
            parse_query(&p),
            Err(ParseError::Reject {
                rcode: RCODE_FORMERR,
                ..
            })
        ));
        let mut p = build_query(1, b"\x01a\x00", TYPE_A, false, None);
        p[2] |= 0x80;
        assert_eq!(parse_query(&p).unwrap_err(), ParseError::Ignore);
        let mut p = build_query(1, b"\x01a\x00", TYPE_A, false, None);
        p[2] |= 0x28; // opcode 5 (UPDATE)
        assert!(matches!(
            parse_query(&p),
            Err(ParseError::Reject {
                rcode: RCODE_NOTIMP,
                ..
            })
        ));
        let p = build_query(1, b"\x05ab\x00", TYPE_A, false, None);
        assert!(parse_query(&p).is_err());
        let edns = Edns {
            udp_size: 1232,
            version: 1,
            dnssec_ok: false,
        };
        let p = build_query(1, b"\x01a\x00", TYPE_A, false, Some(edns));
        assert!(matches!(
            parse_query(&p),
            Err(ParseError::BadVersion { .. })
        ));
    }
}
