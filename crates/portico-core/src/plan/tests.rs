//! Table-driven cases for `build`, one rule each, shaped after upstream's proxy tests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as ApiEndpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice,
    ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

pub(crate) fn service(name: &str, f: impl FnOnce(&mut ServiceSpec)) -> Service {
    let mut spec = ServiceSpec {
        type_: Some("ClusterIP".into()),
        cluster_ip: Some("10.96.0.10".into()),
        cluster_ips: Some(vec!["10.96.0.10".into()]),
        ports: Some(vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    };
    f(&mut spec);
    Service {
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// An endpoint: address, node, ready/serving/terminating, zone hints, node hints.
#[derive(Clone, Default)]
pub(crate) struct Ep {
    pub ip: &'static str,
    pub node: Option<&'static str>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub zones: Vec<&'static str>,
    pub nodes: Vec<&'static str>,
}

pub(crate) fn ep(ip: &'static str, node: &'static str) -> Ep {
    Ep {
        ip,
        node: Some(node),
        ..Default::default()
    }
}

pub(crate) fn terminating(mut e: Ep, serving: bool) -> Ep {
    e.ready = Some(false);
    e.serving = Some(serving);
    e.terminating = Some(true);
    e
}

pub(crate) fn slice(service: &str, name: &str, port: i32, eps: &[Ep]) -> EndpointSlice {
    let v6 = eps.first().is_some_and(|e| e.ip.contains(':'));
    EndpointSlice {
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        metadata: ObjectMeta {
            namespace: Some("ns".into()),
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                LABEL_SERVICE_NAME.into(),
                service.into(),
            )])),
            ..Default::default()
        },
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: eps
            .iter()
            .map(|e| ApiEndpoint {
                addresses: vec![e.ip.into()],
                node_name: e.node.map(Into::into),
                conditions: Some(EndpointConditions {
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                }),
                hints: (!e.zones.is_empty() || !e.nodes.is_empty()).then(|| EndpointHints {
                    for_zones: Some(
                        e.zones
                            .iter()
                            .map(|z| ForZone {
                                name: z.to_string(),
                            })
                            .collect(),
                    ),
                    for_nodes: Some(
                        e.nodes
                            .iter()
                            .map(|n| ForNode {
                                name: n.to_string(),
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            })
            .collect(),
    }
}

fn node() -> NodeInfo {
    let mut n = NodeInfo::new("node-a");
    n.labels.insert(LABEL_TOPOLOGY_ZONE.into(), "zone-a".into());
    n
}

fn spn(name: &str) -> ServicePortName {
    ServicePortName {
        namespace: "ns".into(),
        name: name.into(),
        port: "http".into(),
        protocol: Protocol::Tcp,
    }
}

fn ips(eps: &[Endpoint]) -> Vec<String> {
    eps.iter().map(|e| e.ip.to_string()).collect()
}

fn only(plan: &Plan) -> &ServicePortPlan {
    assert_eq!(plan.services.len(), 1, "{plan:#?}");
    plan.services.values().next().expect("one entry")
}

fn nodeport(spec: &mut ServiceSpec, etp: &str) {
    spec.type_ = Some("NodePort".into());
    spec.external_traffic_policy = Some(etp.into());
    if let Some(p) = spec.ports.as_mut().and_then(|p| p.first_mut()) {
        p.node_port = Some(30080);
    }
}

/// (case, service, endpoints, internal ips, external ips, internal verdict, external verdict)
type Row = (
    &'static str,
    Service,
    Vec<Ep>,
    Vec<&'static str>,
    Vec<&'static str>,
    NoEndpoints,
    NoEndpoints,
);

#[test]
fn endpoint_selection_table() {
    use NoEndpoints::{Drop, Reject};
    let rows: Vec<Row> = vec![
        (
            "ready endpoints only",
            service("s", |_| {}),
            vec![
                ep("10.0.0.1", "node-a"),
                terminating(ep("10.0.0.2", "node-b"), true),
            ],
            vec!["10.0.0.1"],
            vec!["10.0.0.1"],
            Drop,
            Drop,
        ),
        (
            "no ready: serving-terminating fallback",
            service("s", |_| {}),
            vec![
                terminating(ep("10.0.0.1", "node-a"), true),
                terminating(ep("10.0.0.2", "node-b"), false),
            ],
            vec!["10.0.0.1"],
            vec!["10.0.0.1"],
            Drop,
            Drop,
        ),
        (
            "nothing usable: reject",
            service("s", |_| {}),
            vec![terminating(ep("10.0.0.1", "node-a"), false)],
            vec![],
            vec![],
            Reject,
            Reject,
        ),
        (
            "no endpoints at all: reject",
            service("s", |_| {}),
            vec![],
            vec![],
            vec![],
            Reject,
            Reject,
        ),
        (
            "unknown conditions count as ready",
            service("s", |_| {}),
            vec![Ep {
                ip: "10.0.0.1",
                ..Default::default()
            }],
            vec!["10.0.0.1"],
            vec!["10.0.0.1"],
            Drop,
            Drop,
        ),
        (
            "ITP Local picks local endpoints",
            service("s", |s| s.internal_traffic_policy = Some("Local".into())),
            vec![ep("10.0.0.1", "node-a"), ep("10.0.0.2", "node-b")],
            vec!["10.0.0.1"],
            vec![],
            Drop,
            Drop,
        ),
        (
            "ITP Local with no local endpoint drops",
            service("s", |s| s.internal_traffic_policy = Some("Local".into())),
            vec![ep("10.0.0.2", "node-b")],
            vec![],
            vec![],
            Drop,
            Drop,
        ),
        (
            "ITP Local falls back to local serving-terminating on its own",
            service("s", |s| s.internal_traffic_policy = Some("Local".into())),
            vec![
                terminating(ep("10.0.0.1", "node-a"), true),
                ep("10.0.0.2", "node-b"),
            ],
            vec!["10.0.0.1"],
            vec![],
            Drop,
            Drop,
        ),
        (
            "ETP Local: external path local only, internal path cluster-wide",
            service("s", |s| nodeport(s, "Local")),
            vec![ep("10.0.0.1", "node-a"), ep("10.0.0.2", "node-b")],
            vec!["10.0.0.1", "10.0.0.2"],
            vec!["10.0.0.1"],
            Drop,
            Drop,
        ),
        (
            "ETP Local without local endpoints drops external traffic",
            service("s", |s| nodeport(s, "Local")),
            vec![ep("10.0.0.2", "node-b")],
            vec!["10.0.0.2"],
            vec![],
            Drop,
            Drop,
        ),
        (
            "ETP Local on a ClusterIP Service is ignored",
            service("s", |s| s.external_traffic_policy = Some("Local".into())),
            vec![ep("10.0.0.1", "node-a"), ep("10.0.0.2", "node-b")],
            vec!["10.0.0.1", "10.0.0.2"],
            vec!["10.0.0.1", "10.0.0.2"],
            Drop,
            Drop,
        ),
        (
            "zone hints: all hinted and one for our zone",
            service("s", |_| {}),
            vec![
                Ep {
                    zones: vec!["zone-a"],
                    ..ep("10.0.0.1", "node-a")
                },
                Ep {
                    zones: vec!["zone-b"],
                    ..ep("10.0.0.2", "node-b")
                },
            ],
            vec!["10.0.0.1"],
            vec!["10.0.0.1"],
            Drop,
            Drop,
        ),
        (
            "zone hints: one endpoint without hints disables topology",
            service("s", |_| {}),
            vec![
                Ep {
                    zones: vec!["zone-a"],
                    ..ep("10.0.0.1", "node-a")
                },
                ep("10.0.0.2", "node-b"),
            ],
            vec!["10.0.0.1", "10.0.0.2"],
            vec!["10.0.0.1", "10.0.0.2"],
            Drop,
            Drop,
        ),
        (
            "zone hints: none for our zone disables topology",
            service("s", |_| {}),
            vec![
                Ep {
                    zones: vec!["zone-b"],
                    ..ep("10.0.0.1", "node-b")
                },
                Ep {
                    zones: vec!["zone-c"],
                    ..ep("10.0.0.2", "node-c")
                },
            ],
            vec!["10.0.0.1", "10.0.0.2"],
            vec!["10.0.0.1", "10.0.0.2"],
            Drop,
            Drop,
        ),
        (
            "zone hints: only not-ready endpoints are hinted for us, so no topology",
            service("s", |_| {}),
            vec![
                Ep {
                    zones: vec!["zone-b"],
                    ..ep("10.0.0.1", "node-b")
                },
                terminating(
                    Ep {
                        zones: vec!["zone-a"],
                        ..ep("10.0.0.2", "node-a")
                    },
                    true,
                ),
            ],
            vec!["10.0.0.1"],
            vec!["10.0.0.1"],
            Drop,
            Drop,
        ),
        (
            "node hints win over zone hints",
            service("s", |_| {}),
            vec![
                Ep {
                    zones: vec!["zone-a"],
                    nodes: vec!["node-a"],
                    ..ep("10.0.0.1", "node-a")
                },
                Ep {
                    zones: vec!["zone-a"],
                    nodes: vec!["node-x"],
                    ..ep("10.0.0.2", "node-x")
                },
            ],
            vec!["10.0.0.1"],
            vec!["10.0.0.1"],
            Drop,
            Drop,
        ),
        (
            "node hints not for us fall back to zone hints",
            service("s", |_| {}),
            vec![
                Ep {
                    zones: vec!["zone-a"],
                    nodes: vec!["node-y"],
                    ..ep("10.0.0.1", "node-y")
                },
                Ep {
                    zones: vec!["zone-b"],
                    nodes: vec!["node-x"],
                    ..ep("10.0.0.2", "node-x")
                },
            ],
            vec!["10.0.0.1"],
            vec!["10.0.0.1"],
            Drop,
            Drop,
        ),
        (
            "topology does not apply to Local policy",
            service("s", |s| s.internal_traffic_policy = Some("Local".into())),
            vec![
                Ep {
                    zones: vec!["zone-b"],
                    ..ep("10.0.0.1", "node-a")
                },
                Ep {
                    zones: vec!["zone-a"],
                    ..ep("10.0.0.2", "node-b")
                },
            ],
            vec!["10.0.0.1"],
            vec![],
            Drop,
            Drop,
        ),
    ];
    for (case, svc, eps, internal, external, v_int, v_ext) in rows {
        let slices = vec![slice("s", "s-1", 8080, &eps)];
        let plan = build(&[svc], &slices, &node());
        let p = only(&plan);
        assert_eq!(ips(&p.cluster_endpoints), internal, "{case}: internal");
        assert_eq!(ips(&p.external_endpoints), external, "{case}: external");
        if internal.is_empty() {
            assert_eq!(p.cluster_no_endpoints, v_int, "{case}: internal verdict");
            assert_eq!(p.no_endpoints_verdict(false, false), Some(v_int), "{case}");
        } else {
            assert_eq!(p.no_endpoints_verdict(false, false), None, "{case}");
        }
        if external.is_empty() {
            assert_eq!(p.external_no_endpoints, v_ext, "{case}: external verdict");
        }
        assert!(
            p.cluster_endpoints.iter().all(|e| e.port == 8080),
            "{case}: target port"
        );
    }
}

#[test]
fn ignored_services() {
    let slices = vec![slice("s", "s-1", 8080, &[ep("10.0.0.1", "node-a")])];
    let cases = vec![
        (
            "headless",
            service("s", |s| s.cluster_ip = Some("None".into())),
        ),
        (
            "no cluster ip",
            service("s", |s| {
                s.cluster_ip = None;
                s.cluster_ips = None;
            }),
        ),
        (
            "ExternalName",
            service("s", |s| {
                s.type_ = Some("ExternalName".into());
                s.external_name = Some("example.com".into());
            }),
        ),
        ("proxy name label", {
            let mut svc = service("s", |_| {});
            svc.metadata.labels = Some(BTreeMap::from([(
                LABEL_SERVICE_PROXY_NAME.into(),
                "other".into(),
            )]));
            svc
        }),
    ];
    for (case, svc) in cases {
        assert!(
            build(&[svc], &slices, &node()).services.is_empty(),
            "{case}"
        );
    }
}

#[test]
fn frontends_affinity_source_ranges_ip_mode() {
    let svc = {
        let mut svc = service("s", |s| {
            s.type_ = Some("LoadBalancer".into());
            s.external_ips = Some(vec!["192.0.2.1".into()]);
            s.load_balancer_source_ranges = Some(vec![" 198.51.100.0/24 ".into()]);
            s.session_affinity = Some("ClientIP".into());
            s.session_affinity_config = Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(60),
                }),
            });
            if let Some(p) = s.ports.as_mut().and_then(|p| p.first_mut()) {
                p.node_port = Some(30080);
            }
        });
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    LoadBalancerIngress {
                        ip: Some("203.0.113.1".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        ip: Some("203.0.113.2".into()),
                        ip_mode: Some("VIP".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        ip: Some("203.0.113.3".into()),
                        ip_mode: Some("Proxy".into()),
                        ..Default::default()
                    },
                ]),
            }),
            ..Default::default()
        });
        svc
    };
    let plan = build(&[svc], &[], &node());
    let p = &plan.services[&spn("s")];
    assert_eq!(p.node_port, Some(30080));
    assert_eq!(p.external_ips, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
    let lb: Vec<String> = p
        .load_balancer_ips
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lb,
        vec!["203.0.113.1", "203.0.113.2"],
        "ipMode Proxy is not captured"
    );
    assert_eq!(
        p.load_balancer_source_ranges,
        vec!["198.51.100.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(p.affinity_timeout_seconds, Some(60));
    assert!(
        plan.health_checks.is_empty(),
        "ETP Cluster needs no health check"
    );

    let default_timeout = build(
        &[service("s", |s| {
            s.session_affinity = Some("ClientIP".into())
        })],
        &[],
        &node(),
    );
    assert_eq!(
        default_timeout.services[&spn("s")].affinity_timeout_seconds,
        Some(10800)
    );
}

#[test]
fn dedup_across_slices_prefers_non_terminating() {
    let svc = service("s", |_| {});
    let slices = vec![
        slice(
            "s",
            "s-1",
            8080,
            &[
                terminating(ep("10.0.0.1", "node-b"), true),
                ep("10.0.0.2", "node-b"),
            ],
        ),
        slice("s", "s-2", 8080, &[ep("10.0.0.1", "node-b")]),
        slice(
            "s",
            "s-3",
            8080,
            &[terminating(ep("10.0.0.2", "node-b"), true)],
        ),
    ];
    let plan = build(&[svc], &slices, &node());
    let p = only(&plan);
    assert_eq!(ips(&p.cluster_endpoints), vec!["10.0.0.1", "10.0.0.2"]);
    assert!(
        p.cluster_endpoints
            .iter()
            .all(|e| e.ready && !e.terminating)
    );
}

#[test]
fn health_check_counts_local_ready_ips() {
    let svc = service("s", |s| {
        nodeport(s, "Local");
        s.type_ = Some("LoadBalancer".into());
        s.health_check_node_port = Some(32000);
    });
    let slices = vec![slice(
        "s",
        "s-1",
        8080,
        &[
            ep("10.0.0.1", "node-a"),
            ep("10.0.0.2", "node-a"),
            ep("10.0.0.3", "node-b"),
            terminating(ep("10.0.0.4", "node-a"), true),
        ],
    )];
    let plan = build(&[svc], &slices, &node());
    let name = ServiceName::new("ns", "s");
    assert_eq!(
        plan.health_checks[&name],
        HealthCheck {
            node_port: 32000,
            local_endpoints: 2
        }
    );
}

#[test]
fn dual_stack_categorizes_each_family() {
    let svc = service("s", |s| {
        s.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::10".into()]);
    });
    let slices = vec![
        slice(
            "s",
            "s-v4",
            8080,
            &[terminating(ep("10.0.0.1", "node-b"), true)],
        ),
        slice(
            "s",
            "s-v6",
            8080,
            &[
                ep("fd00::1", "node-b"),
                terminating(ep("fd00::2", "node-b"), true),
            ],
        ),
    ];
    let plan = build(&[svc], &slices, &node());
    let p = only(&plan);
    // IPv4 has no ready endpoint and falls back; IPv6 has one and does not.
    assert_eq!(ips(&p.cluster_endpoints), vec!["10.0.0.1", "fd00::1"]);
    assert!(p.has_endpoints_v4 && p.has_endpoints_v6);
}

#[test]
fn single_stack_ignores_other_family_and_unlabelled_slices() {
    let svc = service("s", |_| {});
    let mut unlabelled = slice("s", "s-x", 8080, &[ep("10.0.0.9", "node-a")]);
    unlabelled.metadata.labels = None;
    let slices = vec![
        slice("s", "s-v6", 8080, &[ep("fd00::1", "node-b")]),
        unlabelled,
    ];
    let plan = build(&[svc], &slices, &node());
    let p = only(&plan);
    assert!(p.cluster_endpoints.is_empty());
    assert_eq!(p.cluster_no_endpoints, NoEndpoints::Reject);
}
