//! Property tests: no input makes the parser, the engine or the index panic, answers stay
//! within the size the client allows, and the index returns to empty when everything is deleted.

mod common;

use std::sync::{Arc, RwLock};

use common::*;
use portico_dns::engine::{Action, Autopath, Engine, EngineConfig, Transport};
use portico_dns::forward::{self, Forwarder};
use portico_dns::index::{Index, PodMode, ServiceKind};
use portico_dns::name::Zone;
use portico_dns::wire;
use proptest::prelude::*;

fn engine() -> Engine {
    let engine = Engine::new(
        Arc::new(RwLock::new(fixture(PodMode::Insecure))),
        EngineConfig {
            ttl: 5,
            recursion_from: vec![],
            autopath: Autopath::QueryName,
        },
        Forwarder::new(vec![]),
        1,
    );
    engine.set_synced(true);
    engine
}

/// Questions built from cluster-ish labels, so the generator reaches deep into the index.
fn question() -> impl Strategy<Value = Vec<u8>> {
    let label = prop::sample::select(vec![
        "web",
        "db",
        "prod",
        "default",
        "svc",
        "pod",
        "cluster",
        "local",
        "_http",
        "_tcp",
        "_pg",
        "db-0",
        "10-1-0-50",
        "fd00--1",
        "in-addr",
        "arpa",
        "ip6",
        "1",
        "10",
        "x",
        "dns-version",
        "WEB",
        "ext",
        "alias",
    ]);
    (
        prop::collection::vec(label, 0..8),
        any::<u16>(),
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(|(labels, qtype, edns, size)| {
            let name = wire_name(&labels.join("."));
            let edns = edns.then_some(wire::Edns {
                udp_size: size,
                version: 0,
                dnssec_ok: false,
            });
            wire::build_query(1, &name, qtype % 300, true, edns)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = wire::parse_query(&bytes);
        let _ = wire::record_layout(&bytes);
        let _ = forward::expanded_answers(&bytes);
        let engine = engine();
        let mut out = Vec::new();
        let _ = engine.handle(&bytes, "127.0.0.1".parse().unwrap(), Transport::Udp, &mut out, engine.stats().shared());
    }

    #[test]
    fn mutated_queries_never_panic(packet in question(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4)) {
        let mut packet = packet;
        for (at, value) in flips {
            if !packet.is_empty() {
                let at = at % packet.len();
                packet[at] = value;
            }
        }
        let engine = engine();
        let mut out = Vec::new();
        let _ = engine.handle(&packet, "127.0.0.1".parse().unwrap(), Transport::Udp, &mut out, engine.stats().shared());
    }

    #[test]
    fn answers_fit_and_decode(packet in question()) {
        let engine = engine();
        let mut out = Vec::new();
        let q = wire::parse_query(&packet).unwrap();
        if let Action::Reply(n) = engine.handle(&packet, "127.0.0.1".parse().unwrap(), Transport::Udp, &mut out, engine.stats().shared()) {
            prop_assert!(n <= q.max_udp(), "answer of {} bytes for a limit of {}", n, q.max_udp());
            prop_assert!(hickory_proto::op::Message::from_vec(&out[..n]).is_ok(), "undecodable answer");
            prop_assert_eq!(&out[12..q.question_end], &packet[12..q.question_end]);
        }
    }

    #[test]
    fn index_churn_returns_to_empty(ops in prop::collection::vec((0u8..6, 0u8..4, 0u8..4, 0u8..8), 0..120)) {
        let mut index = Index::new(Zone::new("cluster.local").unwrap(), PodMode::Verified);
        for (op, svc, slice_n, n) in &ops {
            let svc_name = format!("s{svc}");
            let slice_name = format!("sl{slice_n}");
            match op {
                0 => index.upsert_service(service("ns", &svc_name, ServiceKind::Headless, vec![port("p", "tcp", 80)])),
                1 => index.upsert_service(service("ns", &svc_name, ServiceKind::ClusterIp(vec![ip(&format!("10.96.0.{n}"))]), vec![port("p", "tcp", 80)])),
                2 => index.delete_service("ns", &svc_name),
                3 => {
                    let eps = (0..*n).map(|i| endpoint(&[&format!("10.1.{svc}.{i}")], (i % 2 == 0).then_some("h"), i % 3 != 0)).collect();
                    index.upsert_slice(slice("ns", &slice_name, &svc_name, vec![port("p", "tcp", 8080)], eps));
                }
                4 => index.delete_slice("ns", &slice_name),
                _ => index.upsert_service(service("ns", &svc_name, ServiceKind::ExternalName(format!("x{n}.example")), vec![])),
            }
        }
        for svc in 0..4 {
            index.delete_service("ns", &format!("s{svc}"));
        }
        for slice_n in 0..4 {
            index.delete_slice("ns", &format!("sl{slice_n}"));
        }
        prop_assert_eq!(index.name_count(), 0);
        prop_assert!(index.service_keys().is_empty());
        prop_assert!(index.slice_keys().is_empty());
    }
}
