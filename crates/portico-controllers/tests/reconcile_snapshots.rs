//! Snapshot tests of the pure reconcilers in `portico_core::endpointslice`: the exact slices,
//! Endpoints and mirrored slices produced for upstream's interesting cases. Each case also
//! checks that reconciling again against its own output changes nothing (no churn).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints,
    Pod, PodCondition, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portico_core::endpointslice::{
    NodeInfo, Nodes, SliceChanges, endpoints as legacy, mirroring,
    slices::{self, SliceInput},
};

const TRIGGER: &str = "2026-01-01T00:00:00Z";

fn service(name: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(BTreeMap::from([("app".into(), name.into())])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".into(), name.into())])),
            cluster_ip: Some("10.96.0.10".into()),
            ip_families: Some(vec!["IPv4".into()]),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

fn port(name: &str, port: i32, target: IntOrString) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(target),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn pod(name: &str, ips: &[&str], ready: bool, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ips.first().map(|s| s.to_string()),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn with_named_port(mut p: Pod, name: &str, number: i32) -> Pod {
    if let Some(spec) = p.spec.as_mut() {
        spec.containers[0].ports = Some(vec![ContainerPort {
            name: Some(name.into()),
            container_port: number,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]);
    }
    p
}

fn nodes(zones: &[(&str, &str, u64)]) -> Nodes {
    zones
        .iter()
        .map(|(name, zone, cpu)| {
            (
                name.to_string(),
                NodeInfo {
                    zone: Some(zone.to_string()),
                    ready: true,
                    allocatable_cpu_millis: *cpu,
                    excluded_from_topology: false,
                },
            )
        })
        .collect()
}

/// Applies changes the way the API server would, naming created slices `<prefix>N`.
fn apply(existing: &mut Vec<EndpointSlice>, changes: &SliceChanges, counter: &mut usize) {
    for d in &changes.delete {
        existing.retain(|s| s.metadata.name != d.metadata.name);
    }
    for u in &changes.update {
        let slot = existing
            .iter_mut()
            .find(|s| s.metadata.name == u.metadata.name)
            .expect("update of a known slice");
        *slot = u.clone();
    }
    for c in &changes.create {
        let mut c = c.clone();
        *counter += 1;
        c.metadata.name = Some(format!(
            "{}{}",
            c.metadata.generate_name.clone().unwrap_or_default(),
            counter
        ));
        c.metadata.generate_name = None;
        existing.push(c);
    }
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
}

/// Reconciles from `existing`, applies, then checks a second reconcile is a no-op.
fn converge(
    svc: &Service,
    pods: &[Pod],
    nodes: &Nodes,
    existing: &mut Vec<EndpointSlice>,
    max: usize,
) -> SliceChanges {
    let pod_refs: Vec<&Pod> = pods.iter().collect();
    let mut counter = existing.len();
    let first = {
        let refs: Vec<&EndpointSlice> = existing.iter().collect();
        slices::reconcile(&SliceInput {
            service: svc,
            pods: &pod_refs,
            nodes,
            existing: &refs,
            max_endpoints_per_slice: max,
            trigger_time: Some(TRIGGER),
        })
    };
    apply(existing, &first, &mut counter);
    let refs: Vec<&EndpointSlice> = existing.iter().collect();
    let again = slices::reconcile(&SliceInput {
        service: svc,
        pods: &pod_refs,
        nodes,
        existing: &refs,
        max_endpoints_per_slice: max,
        trigger_time: Some(TRIGGER),
    });
    assert!(
        again.is_empty(),
        "second reconcile must be a no-op: {again:#?}"
    );
    first
}

fn summary(slices: &[EndpointSlice]) -> Vec<(String, usize)> {
    slices
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                s.endpoints.len(),
            )
        })
        .collect()
}

#[test]
fn placeholder_when_no_endpoints() {
    let svc = service("web", vec![port("http", 80, IntOrString::Int(8080))]);
    let mut existing = Vec::new();
    converge(&svc, &[], &nodes(&[]), &mut existing, 100);
    insta::assert_yaml_snapshot!(existing);
}

#[test]
fn more_than_100_endpoints() {
    let svc = service("big", vec![port("http", 80, IntOrString::Int(8080))]);
    let n = nodes(&[("node-a", "zone-a", 4000)]);
    let pods: Vec<Pod> = (0..250)
        .map(|i| {
            pod(
                &format!("p{i:03}"),
                &[&format!("10.1.{}.{}", i / 200, i % 200 + 1)],
                true,
                "node-a",
            )
        })
        .collect();
    let mut existing = Vec::new();
    let changes = converge(&svc, &pods, &n, &mut existing, 100);
    assert_eq!(changes.create.len(), 3);
    insta::assert_yaml_snapshot!(summary(&existing), @r"
    - - big-1
      - 100
    - - big-2
      - 100
    - - big-3
      - 50
    ");
    // One pod turns unready: exactly one slice is rewritten.
    let mut pods2 = pods.clone();
    pods2[120] = pod("p120", &["10.1.0.121"], false, "node-a");
    let changes = converge(&svc, &pods2, &n, &mut existing, 100);
    assert_eq!(
        (
            changes.create.len(),
            changes.update.len(),
            changes.delete.len()
        ),
        (0, 1, 0)
    );
    // Ten new pods go into the slice with room, not a new slice.
    let mut pods3 = pods2.clone();
    pods3.extend((0..10).map(|i| {
        pod(
            &format!("q{i}"),
            &[&format!("10.2.0.{}", i + 1)],
            true,
            "node-a",
        )
    }));
    let changes = converge(&svc, &pods3, &n, &mut existing, 100);
    assert_eq!((changes.create.len(), changes.update.len()), (0, 1));
    insta::assert_yaml_snapshot!(summary(&existing), @r"
    - - big-1
      - 100
    - - big-2
      - 100
    - - big-3
      - 60
    ");
    // Removing every pod leaves one placeholder, reusing a slice instead of delete + create.
    let changes = converge(&svc, &[], &n, &mut existing, 100);
    assert_eq!(
        (
            changes.create.len(),
            changes.update.len(),
            changes.delete.len()
        ),
        (0, 1, 2)
    );
    assert_eq!(existing.len(), 1);
    assert!(existing[0].endpoints.is_empty());
}

#[test]
fn named_ports_differing_per_pod() {
    let svc = service(
        "named",
        vec![port("http", 80, IntOrString::String("web".into()))],
    );
    let n = nodes(&[("node-a", "zone-a", 4000)]);
    let pods = vec![
        with_named_port(pod("a", &["10.0.0.1"], true, "node-a"), "web", 3000),
        with_named_port(pod("b", &["10.0.0.2"], true, "node-a"), "web", 3001),
        with_named_port(pod("c", &["10.0.0.3"], true, "node-a"), "web", 3000),
        // No port named "web": the pod serves no port of this Service, so its slice has none.
        pod("d", &["10.0.0.4"], true, "node-a"),
    ];
    let mut existing = Vec::new();
    converge(&svc, &pods, &n, &mut existing, 100);
    insta::assert_yaml_snapshot!(existing);
}

#[test]
fn terminating_and_not_ready_pods() {
    let svc = service("term", vec![port("http", 80, IntOrString::Int(8080))]);
    let n = nodes(&[("node-a", "zone-a", 4000)]);
    let mut terminating_ready = pod("t-ready", &["10.0.0.1"], true, "node-a");
    terminating_ready.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    let mut terminating_unready = pod("t-unready", &["10.0.0.2"], false, "node-a");
    terminating_unready.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    let mut succeeded = pod("done", &["10.0.0.3"], false, "node-a");
    succeeded.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let no_ip = pod("no-ip", &[], false, "node-a");
    let pods = vec![
        pod("ready", &["10.0.0.4"], true, "node-a"),
        pod("unready", &["10.0.0.5"], false, "node-a"),
        terminating_ready,
        terminating_unready,
        succeeded,
        no_ip,
    ];
    let mut existing = Vec::new();
    converge(&svc, &pods, &n, &mut existing, 100);
    insta::assert_yaml_snapshot!(existing);

    // Legacy Endpoints: terminating pods are left out, unready ones are notReadyAddresses.
    let refs: Vec<&Pod> = pods.iter().collect();
    let endpoints = legacy::reconcile(&legacy::EndpointsInput {
        service: &svc,
        pods: &refs,
        existing: None,
        trigger_time: Some(TRIGGER),
    });
    insta::assert_yaml_snapshot!(
        "terminating_endpoints",
        endpoints.map(|w| match w {
            legacy::EndpointsWrite::Create(e) | legacy::EndpointsWrite::Update(e) => e,
        })
    );
}

#[test]
fn publish_not_ready_addresses() {
    let mut svc = service("pnr", vec![port("http", 80, IntOrString::Int(8080))]);
    svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    let n = nodes(&[("node-a", "zone-a", 4000)]);
    let mut terminating = pod("terminating", &["10.0.0.3"], true, "node-a");
    terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    let pods = vec![
        pod("ready", &["10.0.0.1"], true, "node-a"),
        pod("unready", &["10.0.0.2"], false, "node-a"),
        terminating,
        // A pod on an unknown node is still published when publishNotReadyAddresses is set.
        pod("elsewhere", &["10.0.0.4"], false, "node-gone"),
    ];
    let mut existing = Vec::new();
    let changes = converge(&svc, &pods, &n, &mut existing, 100);
    assert!(changes.missing_nodes.is_empty());
    insta::assert_yaml_snapshot!(existing);
    let refs: Vec<&Pod> = pods.iter().collect();
    let endpoints = legacy::reconcile(&legacy::EndpointsInput {
        service: &svc,
        pods: &refs,
        existing: None,
        trigger_time: None,
    });
    insta::assert_yaml_snapshot!(
        "pnr_endpoints",
        endpoints.map(|w| match w {
            legacy::EndpointsWrite::Create(e) | legacy::EndpointsWrite::Update(e) => e,
        })
    );
}

#[test]
fn unknown_node_is_skipped_and_reported() {
    let svc = service("gone", vec![port("http", 80, IntOrString::Int(8080))]);
    let pods = [
        pod("a", &["10.0.0.1"], true, "node-gone"),
        pod("b", &["10.0.0.2"], true, "node-a"),
    ];
    let refs: Vec<&Pod> = pods.iter().collect();
    let n = nodes(&[("node-a", "zone-a", 4000)]);
    let changes = slices::reconcile(&SliceInput {
        service: &svc,
        pods: &refs,
        nodes: &n,
        existing: &[],
        max_endpoints_per_slice: 100,
        trigger_time: None,
    });
    assert_eq!(changes.missing_nodes, vec!["node-gone".to_string()]);
    assert_eq!(changes.create.len(), 1);
    assert_eq!(changes.create[0].endpoints.len(), 1);
}

#[test]
fn dual_stack() {
    let mut svc = service("dual", vec![port("http", 80, IntOrString::Int(8080))]);
    svc.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
    let n = nodes(&[("node-a", "zone-a", 4000)]);
    let pods = vec![
        pod("both", &["10.0.0.1", "fd00::1"], true, "node-a"),
        pod("v4only", &["10.0.0.2"], true, "node-a"),
    ];
    let mut existing = Vec::new();
    converge(&svc, &pods, &n, &mut existing, 100);
    insta::assert_yaml_snapshot!(existing);
    // Dropping IPv6 from the Service deletes the IPv6 slice only.
    svc.spec.as_mut().unwrap().ip_families = Some(vec!["IPv4".into()]);
    let changes = converge(&svc, &pods, &n, &mut existing, 100);
    assert_eq!(
        (
            changes.create.len(),
            changes.update.len(),
            changes.delete.len()
        ),
        (0, 0, 1)
    );
    assert_eq!(changes.delete[0].address_type, "IPv6");
}

#[test]
fn hints_prefer_same_zone_and_node() {
    let mut svc = service("close", vec![port("http", 80, IntOrString::Int(8080))]);
    svc.spec.as_mut().unwrap().traffic_distribution = Some("PreferSameNode".into());
    let n = nodes(&[("node-a", "zone-a", 4000), ("node-b", "zone-b", 4000)]);
    let pods = vec![
        pod("a", &["10.0.0.1"], true, "node-a"),
        pod("b", &["10.0.0.2"], true, "node-b"),
        pod("c", &["10.0.0.3"], false, "node-b"),
    ];
    let mut existing = Vec::new();
    converge(&svc, &pods, &n, &mut existing, 100);
    insta::assert_yaml_snapshot!("prefer_same_node", existing);
    // Switching to PreferSameZone drops node hints; removing the field drops all hints.
    svc.spec.as_mut().unwrap().traffic_distribution = Some("PreferSameZone".into());
    let changes = converge(&svc, &pods, &n, &mut existing, 100);
    assert_eq!(changes.update.len(), 1);
    insta::assert_yaml_snapshot!(
        "prefer_same_zone",
        existing[0]
            .endpoints
            .iter()
            .map(|e| e.hints.clone())
            .collect::<Vec<_>>()
    );
    svc.spec.as_mut().unwrap().traffic_distribution = None;
    let changes = converge(&svc, &pods, &n, &mut existing, 100);
    assert_eq!(changes.update.len(), 1);
    assert!(existing[0].endpoints.iter().all(|e| e.hints.is_none()));
}

#[test]
fn hints_topology_mode_auto() {
    let mut svc = service("auto", vec![port("http", 80, IntOrString::Int(8080))]);
    svc.metadata.annotations = Some(BTreeMap::from([(
        "service.kubernetes.io/topology-mode".into(),
        "Auto".into(),
    )]));
    // Zone a has 3/4 of the CPU but only half the endpoints: one endpoint of zone b serves a.
    let n = nodes(&[("node-a", "zone-a", 6000), ("node-b", "zone-b", 2000)]);
    let pods: Vec<Pod> = (0..8)
        .map(|i| {
            pod(
                &format!("p{i}"),
                &[&format!("10.0.0.{}", i + 1)],
                true,
                if i < 4 { "node-a" } else { "node-b" },
            )
        })
        .collect();
    let mut existing = Vec::new();
    let changes = converge(&svc, &pods, &n, &mut existing, 100);
    assert_eq!(changes.events.len(), 1, "{:?}", changes.events);
    assert_eq!(changes.events[0].reason, "TopologyAwareHintsEnabled");
    let hinted: Vec<(String, String)> = existing[0]
        .endpoints
        .iter()
        .map(|e| {
            (
                e.zone.clone().unwrap(),
                e.hints.as_ref().unwrap().for_zones.as_ref().unwrap()[0]
                    .name
                    .clone(),
            )
        })
        .collect();
    insta::assert_yaml_snapshot!("auto_hints", hinted);
    // With one zone only, hints are removed and a warning explains why.
    let one_zone = nodes(&[("node-a", "zone-a", 6000), ("node-b", "zone-a", 2000)]);
    let refs: Vec<&Pod> = pods.iter().collect();
    let slice_refs: Vec<&EndpointSlice> = existing.iter().collect();
    let changes = slices::reconcile(&SliceInput {
        service: &svc,
        pods: &refs,
        nodes: &one_zone,
        existing: &slice_refs,
        max_endpoints_per_slice: 100,
        trigger_time: None,
    });
    assert_eq!(changes.update.len(), 1);
    assert!(
        changes.update[0]
            .endpoints
            .iter()
            .all(|e| e.hints.is_none())
    );
    assert_eq!(
        changes.events[0].message,
        "Nodes only ready in one zone, addressType: IPv4"
    );
}

#[test]
fn hostname_only_with_matching_subdomain() {
    let svc = service("db", vec![port("sql", 5432, IntOrString::Int(5432))]);
    let n = nodes(&[("node-a", "zone-a", 4000)]);
    let mut matching = pod("db-0", &["10.0.0.1"], true, "node-a");
    matching.spec.as_mut().unwrap().hostname = Some("db-0".into());
    matching.spec.as_mut().unwrap().subdomain = Some("db".into());
    let mut other = pod("db-1", &["10.0.0.2"], true, "node-a");
    other.spec.as_mut().unwrap().hostname = Some("db-1".into());
    other.spec.as_mut().unwrap().subdomain = Some("other".into());
    let mut existing = Vec::new();
    converge(&svc, &[matching, other], &n, &mut existing, 100);
    let hostnames: Vec<Option<String>> = existing[0]
        .endpoints
        .iter()
        .map(|e| e.hostname.clone())
        .collect();
    assert_eq!(hostnames, vec![Some("db-0".to_string()), None]);
}

#[test]
fn endpoints_truncated_at_1000() {
    let svc = service("many", vec![port("http", 80, IntOrString::Int(8080))]);
    let pods: Vec<Pod> = (0..1001)
        .map(|i| {
            pod(
                &format!("p{i:04}"),
                &[&format!("10.1.{}.{}", i / 250, i % 250 + 1)],
                true,
                "node-a",
            )
        })
        .collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    let Some(legacy::EndpointsWrite::Create(created)) =
        legacy::reconcile(&legacy::EndpointsInput {
            service: &svc,
            pods: &refs,
            existing: None,
            trigger_time: None,
        })
    else {
        panic!("expected a create");
    };
    let annotations = created.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("endpoints.kubernetes.io/over-capacity")
            .map(String::as_str),
        Some("truncated")
    );
    let count: usize = created
        .subsets
        .iter()
        .flatten()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(count, 1000);
    // Same input again: nothing to write.
    assert!(
        legacy::reconcile(&legacy::EndpointsInput {
            service: &svc,
            pods: &refs,
            existing: Some(&created),
            trigger_time: None
        })
        .is_none()
    );
    // Back under capacity: the annotation goes away.
    let fewer: Vec<&Pod> = refs[..999].to_vec();
    let Some(legacy::EndpointsWrite::Update(updated)) =
        legacy::reconcile(&legacy::EndpointsInput {
            service: &svc,
            pods: &fewer,
            existing: Some(&created),
            trigger_time: None,
        })
    else {
        panic!("expected an update");
    };
    assert!(
        !updated
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("endpoints.kubernetes.io/over-capacity")
    );
}

#[test]
fn endpoints_repack_named_ports() {
    let svc = service(
        "multi",
        vec![
            port("http", 80, IntOrString::String("web".into())),
            port("metrics", 9090, IntOrString::Int(9090)),
        ],
    );
    let pods = [
        with_named_port(pod("a", &["10.0.0.1"], true, "node-a"), "web", 3000),
        with_named_port(pod("b", &["10.0.0.2"], false, "node-a"), "web", 3000),
        with_named_port(pod("c", &["10.0.0.3"], true, "node-a"), "web", 3001),
    ];
    let refs: Vec<&Pod> = pods.iter().collect();
    insta::assert_yaml_snapshot!(legacy::desired_subsets(&svc, &refs));
}

fn selectorless(name: &str) -> Service {
    let mut svc = service(name, vec![port("http", 80, IntOrString::Int(80))]);
    svc.spec.as_mut().unwrap().selector = None;
    svc
}

fn address(ip: &str) -> EndpointAddress {
    EndpointAddress {
        ip: ip.into(),
        ..Default::default()
    }
}

fn core_port(name: &str, port: i32) -> CorePort {
    CorePort {
        name: Some(name.into()),
        port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn user_endpoints(name: &str, subsets: Vec<EndpointSubset>) -> Endpoints {
    Endpoints {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(format!("uid-ep-{name}")),
            labels: Some(BTreeMap::from([("team".into(), "a".into())])),
            annotations: Some(BTreeMap::from([
                ("note".into(), "kept".into()),
                (
                    "endpoints.kubernetes.io/last-change-trigger-time".into(),
                    TRIGGER.into(),
                ),
            ])),
            ..Default::default()
        },
        subsets: Some(subsets),
    }
}

fn mirror(
    svc: Option<&Service>,
    ep: Option<&Endpoints>,
    existing: &mut Vec<EndpointSlice>,
) -> SliceChanges {
    let mut counter = existing.len();
    let changes = {
        let refs: Vec<&EndpointSlice> = existing.iter().collect();
        mirroring::reconcile(&mirroring::MirrorInput {
            service: svc,
            endpoints: ep,
            existing: &refs,
            max_endpoints_per_subset: 1000,
        })
    };
    apply(existing, &changes, &mut counter);
    let refs: Vec<&EndpointSlice> = existing.iter().collect();
    let again = mirroring::reconcile(&mirroring::MirrorInput {
        service: svc,
        endpoints: ep,
        existing: &refs,
        max_endpoints_per_subset: 1000,
    });
    assert!(
        again.is_empty(),
        "second mirror must be a no-op: {again:#?}"
    );
    changes
}

#[test]
fn mirroring_repacks_and_splits_families() {
    let svc = selectorless("ext");
    // The same IP in two subsets with different ports ends up in one slice with both ports.
    let ep = user_endpoints(
        "ext",
        vec![
            EndpointSubset {
                addresses: Some(vec![address("192.0.2.1"), address("2001:db8::1")]),
                ports: Some(vec![core_port("http", 80)]),
                ..Default::default()
            },
            EndpointSubset {
                addresses: Some(vec![address("2001:db8::1"), address("192.0.2.1")]),
                ports: Some(vec![core_port("https", 443)]),
                ..Default::default()
            },
            EndpointSubset {
                addresses: Some(vec![address("192.0.2.9")]),
                not_ready_addresses: Some(vec![address("not-an-ip")]),
                ports: Some(vec![core_port("admin", 8443)]),
            },
        ],
    );
    let mut existing = Vec::new();
    let changes = mirror(Some(&svc), Some(&ep), &mut existing);
    assert_eq!(changes.events.len(), 1);
    assert_eq!(
        changes.events[0].message,
        "Skipped 1 invalid IP addresses when mirroring to EndpointSlices"
    );
    insta::assert_yaml_snapshot!(existing);
}

#[test]
fn mirroring_skip_and_selector() {
    let svc = selectorless("ext");
    let mut ep = user_endpoints(
        "ext",
        vec![EndpointSubset {
            addresses: Some(vec![address("192.0.2.1")]),
            ports: Some(vec![core_port("http", 80)]),
            ..Default::default()
        }],
    );
    let mut existing = Vec::new();
    mirror(Some(&svc), Some(&ep), &mut existing);
    assert_eq!(existing.len(), 1);
    // Opting out deletes the mirrored slice.
    ep.metadata.labels.as_mut().unwrap().insert(
        "endpointslice.kubernetes.io/skip-mirror".into(),
        "true".into(),
    );
    let changes = mirror(Some(&svc), Some(&ep), &mut existing);
    assert_eq!(changes.delete.len(), 1);
    assert!(existing.is_empty());
    // A Service with a selector is never mirrored.
    ep.metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("endpointslice.kubernetes.io/skip-mirror");
    let with_selector = service("ext", vec![port("http", 80, IntOrString::Int(80))]);
    mirror(Some(&with_selector), Some(&ep), &mut existing);
    assert!(existing.is_empty());
    // Address changes update the one slice in place.
    mirror(Some(&svc), Some(&ep), &mut existing);
    ep.subsets.as_mut().unwrap()[0]
        .addresses
        .as_mut()
        .unwrap()
        .push(address("192.0.2.2"));
    let changes = mirror(Some(&svc), Some(&ep), &mut existing);
    assert_eq!(
        (
            changes.create.len(),
            changes.update.len(),
            changes.delete.len()
        ),
        (0, 1, 0)
    );
    assert_eq!(existing[0].endpoints.len(), 2);
}
