//! UDP conntrack cleanup over ctnetlink, with upstream's rule (`pkg/proxy/conntrack`): delete a
//! UDP flow whose original destination is a Service frontend (`ip:port`, or any address on a
//! node port) when its reply source is not a serving endpoint of that Service. Services
//! without serving endpoints are left alone. Without this, a UDP client that keeps sending
//! (DNS!) stays pinned to a deleted pod for as long as it keeps the flow alive.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use portico_core::plan::{Plan, Protocol};

use crate::Error;
use crate::netlink::attr::{AttrWriter, parse_attrs};
use crate::netlink::msg::Family;
use crate::netlink::socket::NfSocket;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const IPPROTO_UDP: u8 = 17;

/// One conntrack entry, as much as the cleanup needs, plus the raw original tuple to delete it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub orig_dst: IpAddr,
    pub orig_dport: u16,
    pub reply_src: IpAddr,
    raw_orig: Vec<u8>,
    zone: Option<Vec<u8>>,
}

#[derive(Default)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: u8,
    dport: u16,
}

fn parse_tuple(data: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (kind, value) in parse_attrs(data) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v) in parse_attrs(value) {
                    let ip = match (k, v.len()) {
                        (1 | 2, 4) => Some(IpAddr::from([v[0], v[1], v[2], v[3]])),
                        (3 | 4, 16) => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if k == 1 || k == 3 {
                        t.src = ip;
                    } else {
                        t.dst = ip;
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in parse_attrs(value) {
                    match (k, v.len()) {
                        (1, 1) => t.proto = v[0],
                        (3, 2) => t.dport = u16::from_be_bytes([v[0], v[1]]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

fn ct_message(
    seq: u32,
    msg: u16,
    flags: u16,
    family: Family,
    body: impl FnOnce(&mut AttrWriter),
) -> Vec<u8> {
    let mut w = AttrWriter::new();
    w.buf.extend_from_slice(&0u32.to_ne_bytes());
    w.buf
        .extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
    w.buf
        .extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    w.buf.extend_from_slice(&seq.to_ne_bytes());
    w.buf.extend_from_slice(&0u32.to_ne_bytes());
    w.buf.push(family.nfproto());
    w.buf.push(0);
    w.buf.extend_from_slice(&0u16.to_be_bytes());
    body(&mut w);
    let len = w.buf.len() as u32;
    w.buf[0..4].copy_from_slice(&len.to_ne_bytes());
    w.buf
}

/// A ctnetlink client in one network namespace.
#[derive(Debug)]
pub struct Conntrack {
    sock: NfSocket,
}

impl Conntrack {
    pub fn open(netns: Option<&Path>) -> Result<Conntrack, Error> {
        Ok(Conntrack {
            sock: NfSocket::open(netns)?,
        })
    }

    /// Lists the UDP flows of one family.
    pub fn list_udp(&mut self, family: Family) -> Result<Vec<Flow>, Error> {
        let seq = self.sock.take_seqs(1);
        let req = ct_message(seq, IPCTNL_MSG_CT_GET, NLM_F_DUMP, family, |_| {});
        let replies = self.sock.request(&req, seq)?;
        let mut out = Vec::new();
        for reply in replies {
            // Skip the nfgenmsg header.
            let Some(attrs) = reply.payload.get(4..) else {
                continue;
            };
            let mut orig = None;
            let mut raw_orig = Vec::new();
            let mut reply_tuple = None;
            let mut zone = None;
            for (kind, value) in parse_attrs(attrs) {
                match kind {
                    CTA_TUPLE_ORIG => {
                        raw_orig = value.to_vec();
                        orig = Some(parse_tuple(value));
                    }
                    CTA_TUPLE_REPLY => reply_tuple = Some(parse_tuple(value)),
                    CTA_ZONE => zone = Some(value.to_vec()),
                    _ => {}
                }
            }
            let (Some(orig), Some(reply_tuple)) = (orig, reply_tuple) else {
                continue;
            };
            if orig.proto != IPPROTO_UDP {
                continue;
            }
            let (Some(orig_dst), Some(reply_src)) = (orig.dst, reply_tuple.src) else {
                continue;
            };
            out.push(Flow {
                proto: orig.proto,
                orig_dst,
                orig_dport: orig.dport,
                reply_src,
                raw_orig,
                zone,
            });
        }
        Ok(out)
    }

    /// Deletes one flow by its original tuple. A flow that is already gone is not an error.
    pub fn delete(&mut self, family: Family, flow: &Flow) -> Result<(), Error> {
        let seq = self.sock.take_seqs(1);
        let req = ct_message(seq, IPCTNL_MSG_CT_DELETE, NLM_F_ACK, family, |w| {
            w.nested(CTA_TUPLE_ORIG, |w| w.buf.extend_from_slice(&flow.raw_orig));
            if let Some(zone) = &flow.zone {
                w.bytes(CTA_ZONE, zone);
            }
        });
        match self.sock.request(&req, seq) {
            Ok(_) => Ok(()),
            Err(Error::Kernel(msg)) if msg.contains("(os error 2)") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Which UDP flows are stale: upstream's rule over the plan's serving endpoints.
pub fn stale_flows<'a>(plan: &Plan, flows: &'a [Flow]) -> Vec<&'a Flow> {
    let mut by_frontend: HashMap<(IpAddr, u16), HashSet<IpAddr>> = HashMap::new();
    let mut by_nodeport: HashMap<u16, HashSet<IpAddr>> = HashMap::new();
    for sp in plan.services.values() {
        if sp.name.protocol != Protocol::Udp {
            continue;
        }
        let serving: HashSet<IpAddr> = sp
            .cluster_endpoints
            .iter()
            .chain(sp.external_endpoints.iter())
            .filter(|e| e.serving)
            .map(|e| e.ip)
            .collect();
        if serving.is_empty() {
            continue;
        }
        for ip in sp
            .cluster_ips
            .iter()
            .chain(sp.external_ips.iter())
            .chain(sp.load_balancer_ips.iter())
        {
            by_frontend
                .entry((*ip, sp.port))
                .or_default()
                .extend(serving.iter().copied());
        }
        if let Some(np) = sp.node_port {
            by_nodeport
                .entry(np)
                .or_default()
                .extend(serving.iter().copied());
        }
    }
    flows
        .iter()
        .filter(|f| f.proto == IPPROTO_UDP)
        .filter(|f| {
            let stale_frontend = by_frontend
                .get(&(f.orig_dst, f.orig_dport))
                .is_some_and(|eps| !eps.contains(&f.reply_src));
            let stale_nodeport = by_nodeport
                .get(&f.orig_dport)
                .is_some_and(|eps| !eps.contains(&f.reply_src));
            stale_frontend || stale_nodeport
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_core::plan::{Endpoint, NoEndpoints, ServicePortName, ServicePortPlan};

    fn flow(dst: &str, dport: u16, reply_src: &str) -> Flow {
        Flow {
            proto: IPPROTO_UDP,
            orig_dst: dst.parse().unwrap(),
            orig_dport: dport,
            reply_src: reply_src.parse().unwrap(),
            raw_orig: Vec::new(),
            zone: None,
        }
    }

    fn ep(ip: &str, serving: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 5353,
            ready: serving,
            serving,
            terminating: false,
            is_local: true,
            node_name: None,
            zone: None,
            zone_hints: vec![],
            node_hints: vec![],
        }
    }

    #[test]
    fn upstream_rule() {
        let mut plan = Plan::default();
        let name = ServicePortName {
            namespace: "ns".into(),
            name: "dns".into(),
            port: "".into(),
            protocol: Protocol::Udp,
        };
        plan.services.insert(
            name.clone(),
            ServicePortPlan {
                name,
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                port: 53,
                node_port: Some(30053),
                external_ips: vec![],
                load_balancer_ips: vec![],
                load_balancer_source_ranges: vec![],
                affinity_timeout_seconds: None,
                internal_policy_local: false,
                external_policy_local: false,
                health_check_node_port: None,
                cluster_endpoints: vec![ep("10.244.1.2", true)],
                external_endpoints: vec![ep("10.244.1.2", true)],
                cluster_no_endpoints: NoEndpoints::Reject,
                external_no_endpoints: NoEndpoints::Reject,
                local_endpoint_count: 1,
                last_change_trigger_time: None,
                cluster_policy_endpoints: vec![],
                local_policy_endpoints: vec![],
                has_endpoints_v4: true,
                has_endpoints_v6: false,
            },
        );
        let flows = vec![
            flow("10.96.0.10", 53, "10.244.1.2"), // served by a live endpoint: kept
            flow("10.96.0.10", 53, "10.244.9.9"), // old pod: deleted
            flow("10.96.0.10", 54, "10.244.9.9"), // other port: kept
            flow("192.168.1.5", 30053, "10.244.9.9"), // node port to old pod: deleted
            flow("192.168.1.5", 30053, "10.244.1.2"), // node port to live pod: kept
            flow("10.96.0.11", 53, "10.244.9.9"), // not a service: kept
        ];
        let stale: Vec<_> = stale_flows(&plan, &flows)
            .into_iter()
            .map(|f| (f.orig_dst.to_string(), f.orig_dport))
            .collect();
        assert_eq!(
            stale,
            vec![
                ("10.96.0.10".to_string(), 53),
                ("192.168.1.5".to_string(), 30053)
            ]
        );
    }
}
