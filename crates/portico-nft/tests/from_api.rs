//! Plans built by `portico_core::plan::build` from real Service and EndpointSlice objects,
//! programmed on each node of the sandbox: the shared endpoint-selection model (terminating
//! fallback, topology hints) reaches real traffic.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use portico_core::plan::{self, NodeInfo};
use portico_nft::{NftBackend, NftConfig};
use portico_testnet::{Sandbox, http_get};
use serde_json::json;

fn config() -> NftConfig {
    NftConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..NftConfig::default()
    }
}

fn service() -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"],
                 "ipFamilies": ["IPv4"], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 0}]}
    }))
    .unwrap()
}

/// One EndpointSlice endpoint: (pod index, ready, serving, terminating, zone hint).
type Ep<'a> = (usize, bool, bool, bool, Option<&'a str>);

fn slice(sb: &Sandbox, port: u16, eps: &[Ep]) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = eps
        .iter()
        .map(|(pod, ready, serving, terminating, zone)| {
            let p = &sb.pods[*pod];
            let mut e = json!({
                "addresses": [p.ip.to_string()],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "nodeName": format!("node-{}", p.node),
            });
            if let Some(z) = zone {
                e["hints"] = json!({"forZones": [{"name": z}]});
            }
            e
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
    }))
    .unwrap()
}

fn node(i: usize) -> NodeInfo {
    let mut n = NodeInfo::new(format!("node-{i}"));
    n.labels
        .insert("topology.kubernetes.io/zone".into(), format!("zone-{i}"));
    n
}

fn hostnames(sb: &Sandbox, pod: usize, n: usize) -> BTreeSet<String> {
    let addr = SocketAddr::new("10.96.0.30".parse().unwrap(), 80);
    sb.pods[pod]
        .ns
        .run(move || {
            (0..n)
                .map(|_| {
                    http_get(addr, "/hostname", Duration::from_secs(2))
                        .unwrap_or_else(|e| e.to_string())
                })
                .collect()
        })
        .unwrap()
}

/// A two-node sandbox with these pods.
fn sandbox(pods: &[(usize, &str)]) -> Sandbox {
    let mut sb = Sandbox::build(2).unwrap();
    for (node, name) in pods {
        sb.add_pod(*node, name).unwrap();
    }
    sb
}

#[test]
fn terminating_fallback_and_topology_hints_from_api_objects() {
    require_root!();
    let sb = sandbox(&[(0, "ready"), (1, "term"), (1, "gone"), (0, "p0"), (1, "p1")]);
    let mut backends: Vec<NftBackend> = sb
        .nodes
        .iter()
        .map(|n| NftBackend::new(Some(n.ns.path()), config()).unwrap())
        .collect();
    let svc = service();
    let program = |backends: &mut Vec<NftBackend>, slices: &[EndpointSlice]| {
        for (i, b) in backends.iter_mut().enumerate() {
            let plan = plan::build(std::slice::from_ref(&svc), slices, &node(i));
            b.sync(&plan).unwrap();
        }
    };
    // One slice per pod: each pod's server listens on its own port (bound to port 0), and
    // upstream merges the slices of one Service port.
    let one = |pod: usize, ready, serving, terminating, zone: Option<&str>| {
        let port = sb.pods[pod].server.as_ref().unwrap().port;
        let mut s = slice(&sb, port, &[(pod, ready, serving, terminating, zone)]);
        s.metadata.name = Some(format!("web-{pod}"));
        s
    };

    // Ready endpoints win over serving-terminating ones.
    program(
        &mut backends,
        &[
            one(0, true, true, false, None),
            one(1, false, true, true, None),
            one(2, false, false, true, None),
        ],
    );
    assert_eq!(hostnames(&sb, 4, 10), BTreeSet::from(["ready".to_string()]));
    // With none ready, serving-terminating endpoints serve; not-serving ones never do.
    program(
        &mut backends,
        &[
            one(1, false, true, true, None),
            one(2, false, false, true, None),
        ],
    );
    assert_eq!(hostnames(&sb, 4, 10), BTreeSet::from(["term".to_string()]));

    // Topology: every ready endpoint hinted → each node keeps its own zone's endpoints.
    program(
        &mut backends,
        &[
            one(0, true, true, false, Some("zone-0")),
            one(1, true, true, false, Some("zone-1")),
        ],
    );
    assert_eq!(hostnames(&sb, 3, 10), BTreeSet::from(["ready".to_string()]));
    assert_eq!(hostnames(&sb, 4, 10), BTreeSet::from(["term".to_string()]));
    // All or nothing: one endpoint without a hint → no filtering anywhere.
    program(
        &mut backends,
        &[
            one(0, true, true, false, Some("zone-0")),
            one(1, true, true, false, None),
        ],
    );
    assert_eq!(
        hostnames(&sb, 4, 30),
        BTreeSet::from(["ready".to_string(), "term".to_string()])
    );
}
