//! Shared fixtures for the DNS tests: a cluster of Services and slices, and answer rendering.
#![allow(dead_code)]

use std::net::IpAddr;

use hickory_proto::op::Message;
use portico_dns::index::{
    EndpointRecord, Index, PodMode, PodRecord, PortRecord, ServiceKind, ServiceRecord, SliceRecord,
};
use portico_dns::name::Zone;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn port(name: &str, protocol: &str, number: u16) -> PortRecord {
    PortRecord {
        name: name.into(),
        protocol: protocol.into(),
        port: number,
    }
}

pub fn service(ns: &str, name: &str, kind: ServiceKind, ports: Vec<PortRecord>) -> ServiceRecord {
    ServiceRecord {
        namespace: ns.into(),
        name: name.into(),
        kind,
        ports,
        publish_not_ready: false,
    }
}

pub fn endpoint(addrs: &[&str], hostname: Option<&str>, ready: bool) -> EndpointRecord {
    EndpointRecord {
        addresses: addrs.iter().map(|a| ip(a)).collect(),
        hostname: hostname.map(str::to_string),
        ready,
    }
}

pub fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    ports: Vec<PortRecord>,
    endpoints: Vec<EndpointRecord>,
) -> SliceRecord {
    SliceRecord {
        namespace: ns.into(),
        name: name.into(),
        service: svc.into(),
        ports,
        endpoints,
    }
}

/// The fixture cluster used by the snapshot and end-to-end tests.
pub fn fill(index: &mut Index) {
    index.upsert_service(service(
        "default",
        "kubernetes",
        ServiceKind::ClusterIp(vec![ip("10.96.0.1")]),
        vec![port("https", "tcp", 443)],
    ));
    index.upsert_service(service(
        "prod",
        "web",
        ServiceKind::ClusterIp(vec![ip("10.96.0.10"), ip("fd00:10:96::a")]),
        vec![
            port("http", "tcp", 80),
            port("", "tcp", 8080),
            port("dns", "udp", 53),
        ],
    ));
    index.upsert_service(service(
        "prod",
        "db",
        ServiceKind::Headless,
        vec![port("pg", "tcp", 5432)],
    ));
    index.upsert_slice(slice(
        "prod",
        "db-abc",
        "db",
        vec![port("pg", "tcp", 5432)],
        vec![
            endpoint(&["10.1.0.10"], Some("db-0"), true),
            endpoint(&["10.1.0.11"], None, true),
            endpoint(&["10.1.0.12"], Some("db-2"), false),
        ],
    ));
    index.upsert_slice(slice(
        "prod",
        "db-v6",
        "db",
        vec![port("pg", "tcp", 5432)],
        vec![endpoint(&["fd00:1::5"], None, true)],
    ));
    index.upsert_service(service("prod", "empty", ServiceKind::Headless, vec![]));
    index.upsert_slice(slice(
        "prod",
        "empty-1",
        "empty",
        vec![],
        vec![endpoint(&["10.1.0.20"], None, false)],
    ));
    let mut pnr = service("prod", "pnr", ServiceKind::Headless, vec![]);
    pnr.publish_not_ready = true;
    index.upsert_service(pnr);
    index.upsert_slice(slice(
        "prod",
        "pnr-1",
        "pnr",
        vec![],
        vec![endpoint(&["10.1.0.30"], Some("warming"), false)],
    ));
    index.upsert_service(service("prod", "same", ServiceKind::Headless, vec![]));
    index.upsert_slice(slice(
        "prod",
        "same-1",
        "same",
        vec![],
        vec![
            endpoint(&["10.1.0.40"], Some("twin"), true),
            endpoint(&["10.1.0.41"], Some("twin"), true),
        ],
    ));
    index.upsert_service(service(
        "prod",
        "ext",
        ServiceKind::ExternalName("Example.COM".into()),
        vec![],
    ));
    index.upsert_service(service(
        "prod",
        "alias",
        ServiceKind::ExternalName("web.prod.svc.cluster.local".into()),
        vec![],
    ));
    index.upsert_pod(PodRecord {
        namespace: "prod".into(),
        name: "p1".into(),
        ips: vec![ip("10.1.0.50")],
        host_network: false,
    });
}

pub fn fixture(pod_mode: PodMode) -> Index {
    let mut index = Index::new(Zone::new("cluster.local").unwrap(), pod_mode);
    fill(&mut index);
    index
}

/// Encodes a dotted name keeping its case.
pub fn wire_name(dotted: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in dotted
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

pub fn type_code(name: &str) -> u16 {
    match name {
        "A" => 1,
        "NS" => 2,
        "CNAME" => 5,
        "SOA" => 6,
        "PTR" => 12,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        "AXFR" => 252,
        "ANY" => 255,
        other => panic!("unknown type {other}"),
    }
}

/// Renders a response: a status line, then each section's records.
pub fn render(bytes: &[u8]) -> String {
    let msg = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(e) => return format!("undecodable: {e}"),
    };
    let m = &msg.metadata;
    let mut flags = Vec::new();
    if m.authoritative {
        flags.push("aa");
    }
    if m.truncation {
        flags.push("tc");
    }
    if m.recursion_available {
        flags.push("ra");
    }
    let mut out = format!("{:?} [{}]\n", m.response_code, flags.join(" "));
    for (title, records) in [
        ("answer", &msg.answers),
        ("authority", &msg.authorities),
        ("additional", &msg.additionals),
    ] {
        for r in records.iter() {
            out.push_str(&format!("  {title}: {r}\n"));
        }
    }
    out
}
