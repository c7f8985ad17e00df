//! Snapshot tests of answers from the pure index through the engine: query in → records out.

mod common;

use std::sync::{Arc, RwLock};

use common::*;
use portico_dns::engine::{Action, Autopath, Engine, EngineConfig, Transport};
use portico_dns::forward::Forwarder;
use portico_dns::index::{Index, PodMode};
use portico_dns::wire::{self, Edns};

fn engine(index: Index, autopath: Autopath) -> Engine {
    let engine = Engine::new(
        Arc::new(RwLock::new(index)),
        EngineConfig {
            ttl: 5,
            recursion_from: vec!["127.0.0.0/8".parse().unwrap()],
            autopath,
        },
        Forwarder::new(vec![]),
        1,
    );
    engine.set_synced(true);
    engine
}

fn ask(engine: &Engine, name: &str, qtype: &str) -> String {
    let edns = Edns {
        udp_size: 1232,
        version: 0,
        dnssec_ok: false,
    };
    let packet = wire::build_query(1, &wire_name(name), type_code(qtype), true, Some(edns));
    let mut out = Vec::new();
    match engine.handle(
        &packet,
        ip("127.0.0.1"),
        Transport::Udp,
        &mut out,
        engine.stats().shared(),
    ) {
        Action::Reply(n) => render(&out[..n]),
        Action::Deferred(_) => "deferred to upstream\n".into(),
        Action::Drop => "dropped\n".into(),
    }
}

fn transcript(engine: &Engine, questions: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, qtype) in questions {
        out.push_str(&format!("{name} {qtype}\n{}\n", ask(engine, name, qtype)));
    }
    out
}

#[test]
fn specification_records() {
    let engine = engine(fixture(PodMode::Verified), Autopath::Off);
    insta::assert_snapshot!(transcript(
        &engine,
        &[
            ("dns-version.cluster.local", "TXT"),
            ("cluster.local", "SOA"),
            ("cluster.local", "NS"),
            ("kubernetes.default.svc.cluster.local", "A"),
            ("Kubernetes.Default.SVC.cluster.LOCAL", "A"),
            ("_https._tcp.kubernetes.default.svc.cluster.local", "SRV"),
            ("web.prod.svc.cluster.local", "A"),
            ("web.prod.svc.cluster.local", "AAAA"),
            ("web.prod.svc.cluster.local", "MX"),
            ("_http._tcp.web.prod.svc.cluster.local", "SRV"),
            ("_dns._udp.web.prod.svc.cluster.local", "SRV"),
            ("_http._udp.web.prod.svc.cluster.local", "SRV"),
            ("_tcp.web.prod.svc.cluster.local", "SRV"),
            ("db.prod.svc.cluster.local", "A"),
            ("db.prod.svc.cluster.local", "AAAA"),
            ("db-0.db.prod.svc.cluster.local", "A"),
            ("10-1-0-11.db.prod.svc.cluster.local", "A"),
            ("fd00-1--5.db.prod.svc.cluster.local", "AAAA"),
            ("db-2.db.prod.svc.cluster.local", "A"),
            ("_pg._tcp.db.prod.svc.cluster.local", "SRV"),
            ("empty.prod.svc.cluster.local", "A"),
            ("pnr.prod.svc.cluster.local", "A"),
            ("warming.pnr.prod.svc.cluster.local", "A"),
            ("twin.same.prod.svc.cluster.local", "A"),
            ("ext.prod.svc.cluster.local", "A"),
            ("ext.prod.svc.cluster.local", "CNAME"),
            ("alias.prod.svc.cluster.local", "A"),
            ("1.0.96.10.in-addr.arpa", "PTR"),
            ("10.0.1.10.in-addr.arpa", "PTR"),
            ("11.0.1.10.in-addr.arpa", "PTR"),
            (
                "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa",
                "PTR"
            ),
            ("10-1-0-50.prod.pod.cluster.local", "A"),
            ("10-1-0-51.prod.pod.cluster.local", "A"),
            ("10-1-0-50.other.pod.cluster.local", "A"),
            ("prod.svc.cluster.local", "A"),
            ("svc.cluster.local", "A"),
            ("nosuchns.svc.cluster.local", "A"),
            ("missing.prod.svc.cluster.local", "A"),
            ("web.prod.svc.cluster.local", "ANY"),
            ("cluster.local", "AXFR"),
            ("example.org", "A"),
        ]
    ));
}

#[test]
fn pod_modes() {
    let insecure = engine(fixture(PodMode::Insecure), Autopath::Off);
    let disabled = engine(fixture(PodMode::Disabled), Autopath::Off);
    let questions = [
        ("10-9-9-9.any.pod.cluster.local", "A"),
        ("fd00--9.any.pod.cluster.local", "AAAA"),
        ("10-9-9.any.pod.cluster.local", "A"),
    ];
    insta::assert_snapshot!(format!(
        "insecure:\n{}disabled:\n{}",
        transcript(&insecure, &questions),
        transcript(&disabled, &questions)
    ));
}

#[test]
fn autopath_query_name() {
    let engine = engine(fixture(PodMode::Verified), Autopath::QueryName);
    insta::assert_snapshot!(transcript(
        &engine,
        &[
            // A pod in `default` asking for `web.prod` walks `web.prod.default.svc.cluster.local` first.
            ("web.prod.default.svc.cluster.local", "A"),
            (
                "kubernetes.default.svc.cluster.local.prod.svc.cluster.local",
                "A"
            ),
            ("nothing.prod.svc.cluster.local", "A"),
        ]
    ));
}

#[test]
fn truncation_and_malformed() {
    let mut index = fixture(PodMode::Verified);
    let endpoints: Vec<_> = (0..100)
        .map(|i| endpoint(&[&format!("10.2.0.{i}")], None, true))
        .collect();
    index.upsert_service(service(
        "prod",
        "big",
        portico_dns::index::ServiceKind::Headless,
        vec![],
    ));
    index.upsert_slice(slice("prod", "big-1", "big", vec![], endpoints));
    let engine = engine(index, Autopath::Off);
    // No EDNS: 512 bytes, so 100 A records do not fit.
    let packet = wire::build_query(5, &wire_name("big.prod.svc.cluster.local"), 1, true, None);
    let mut out = Vec::new();
    let Action::Reply(n) = engine.handle(
        &packet,
        ip("127.0.0.1"),
        Transport::Udp,
        &mut out,
        engine.stats().shared(),
    ) else {
        panic!("expected a reply");
    };
    assert!(n <= 512);
    let udp = render(&out[..n]);
    let Action::Reply(n) = engine.handle(
        &packet,
        ip("127.0.0.1"),
        Transport::Tcp,
        &mut out,
        engine.stats().shared(),
    ) else {
        panic!("expected a reply");
    };
    let tcp_count = render(&out[..n])
        .lines()
        .filter(|l| l.contains("answer:"))
        .count();
    // Two questions: FORMERR.
    let mut two = wire::build_query(6, &wire_name("a.cluster.local"), 1, true, None);
    two[5] = 2;
    let Action::Reply(n) = engine.handle(
        &two,
        ip("127.0.0.1"),
        Transport::Udp,
        &mut out,
        engine.stats().shared(),
    ) else {
        panic!("expected a reply");
    };
    let formerr = render(&out[..n]);
    insta::assert_snapshot!(format!(
        "udp:\n{udp}tcp answers: {tcp_count}\nformerr:\n{formerr}"
    ));
}

#[test]
fn unsynced_is_servfail_and_outsiders_are_refused() {
    let engine = engine(fixture(PodMode::Verified), Autopath::Off);
    engine.set_synced(false);
    let unsynced = ask(&engine, "web.prod.svc.cluster.local", "A");
    assert!(unsynced.starts_with("ServFail"), "{unsynced}");
    engine.set_synced(true);
    let packet = wire::build_query(1, &wire_name("example.org"), 1, true, None);
    let mut out = Vec::new();
    let Action::Reply(n) = engine.handle(
        &packet,
        ip("192.0.2.1"),
        Transport::Udp,
        &mut out,
        engine.stats().shared(),
    ) else {
        panic!("expected a reply");
    };
    assert!(render(&out[..n]).starts_with("Refused"));
}

#[test]
fn nameserver_records() {
    use portico_dns::index::{ServiceKind, ServiceRecord};
    let mut index = fixture(PodMode::Verified);
    index.set_own_addresses(&[ip("127.0.0.53"), ip("0.0.0.0")]);
    let engine = engine(index, Autopath::Off);
    let questions = [
        ("cluster.local", "NS"),
        ("cluster.local", "SOA"),
        ("ns.dns.cluster.local", "A"),
        ("NS.Dns.cluster.local", "A"),
        ("ns.dns.cluster.local", "AAAA"),
        ("dns.cluster.local", "A"),
        ("other.dns.cluster.local", "A"),
    ];
    let own = transcript(&engine, &questions);
    // With the DNS Service present its cluster IPs are the name server's addresses.
    engine
        .index()
        .write()
        .unwrap()
        .upsert_service(ServiceRecord {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            kind: ServiceKind::ClusterIp(vec![ip("10.96.0.10"), ip("fd00::a")]),
            ports: vec![],
            publish_not_ready: false,
        });
    let service = transcript(&engine, &questions[..5]);
    insta::assert_snapshot!(format!(
        "== own address\n{own}== kube-system/kube-dns present\n{service}"
    ));
}
