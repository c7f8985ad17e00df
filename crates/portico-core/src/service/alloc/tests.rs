//! Bitmap bands, range mapping and the allocation plan for creates and updates.

use std::collections::HashSet;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use super::*;

#[test]
fn offsets_follow_upstream() {
    // IPs: min(max(16, size/16), 256).
    assert_eq!(range_offset(8, 16, 16, 256), 0);
    assert_eq!(range_offset(254, 16, 16, 256), 16);
    assert_eq!(range_offset(4094, 16, 16, 256), 255);
    assert_eq!(range_offset(65534, 16, 16, 256), 256);
    // Node ports: min(max(16, size/32), 128); 86 for the default range.
    assert_eq!(range_offset(2768, 16, 32, 128), 86);
    assert_eq!(PortRange::new(30000..=32767).bitmap().offset(), 86);
}

#[test]
fn dynamic_picks_prefer_the_upper_band() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut r = PortRange::new(30000..=32767);
    for _ in 0..(2768 - 86) {
        let p = r.pick(&mut rng).expect("free port");
        assert!(
            p >= 30086,
            "dynamic pick {p} in the static band while the upper band has room"
        );
        r.allocate(p as i32).expect("pick is free");
    }
    // Upper band full: now the lower band.
    let p = r.pick(&mut rng).expect("lower band");
    assert!(p < 30086);
    for p in 30000..30086 {
        let _ = r.allocate(p);
    }
    assert_eq!(r.pick(&mut rng), None);
    assert_eq!(r.allocate(30001), Err(AllocError::PortAllocated));
    assert_eq!(
        r.allocate(29999).map_err(|e| e.to_string()),
        Err(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
                .into()
        )
    );
}

#[test]
fn ip_range_reserves_the_first_address() {
    let mut r = IpRange::new("10.96.0.0/24".parse().expect("cidr"));
    let first: IpAddr = "10.96.0.1".parse().expect("ip");
    assert_eq!(r.first_address(), first);
    let mut rng = StdRng::seed_from_u64(7);
    let mut seen = HashSet::new();
    while let Some(ip) = r.pick(&mut rng) {
        assert_ne!(ip, first);
        r.allocate(&ip).expect("free");
        assert!(seen.insert(ip));
    }
    // 254 usable addresses (no network, no broadcast), one kept for `kubernetes`.
    assert_eq!(seen.len(), 253);
    assert!(!seen.contains(&"10.96.0.255".parse::<IpAddr>().expect("ip")));
    // Only an explicit request takes the first address, once.
    assert_eq!(r.allocate(&first), Ok(()));
    assert_eq!(r.allocate(&first), Err(AllocError::IpAllocated));
    assert_eq!(
        r.allocate(&"10.97.0.1".parse().expect("ip")).map_err(|e| e.to_string()),
        Err("the provided IP (10.97.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/24".into())
    );
    assert!(r.allocate(&"10.96.0.255".parse().expect("ip")).is_err());
    assert!(r.release(&first));
    assert_eq!(r.used(), 253);
}

#[test]
fn pick_on_a_99_percent_full_slash16() {
    let mut r = IpRange::new("10.0.0.0/16".parse().expect("cidr"));
    let mut rng = StdRng::seed_from_u64(3);
    let total = r.bitmap().size();
    let keep_free = total / 100;
    let mut n = 0;
    while r.free() > keep_free {
        let ip = r.pick(&mut rng).expect("free");
        r.allocate(&ip).expect("free");
        n += 1;
    }
    assert!(n > 64000);
    let ip = r.pick(&mut rng).expect("still 1% free");
    assert!(!r.is_allocated(&ip));
}

/// An allocator over plain ranges, for plan tests.
struct Pools {
    fams: Vec<IpFamily>,
    v4: FamilyRanges,
    v6: FamilyRanges,
    ports: PortRange,
    rng: StdRng,
}

impl Pools {
    fn new(dual: bool) -> Self {
        let mut v6 = FamilyRanges::default();
        if dual {
            v6.ranges
                .push(IpRange::new("fd00::/108".parse().expect("cidr")));
        }
        Pools {
            fams: if dual {
                vec![IpFamily::V4, IpFamily::V6]
            } else {
                vec![IpFamily::V4]
            },
            v4: FamilyRanges {
                ranges: vec![IpRange::new("10.0.0.0/24".parse().expect("cidr"))],
            },
            v6,
            ports: PortRange::new(30000..=30099),
            rng: StdRng::seed_from_u64(9),
        }
    }
}

impl Allocator for Pools {
    fn families(&self) -> Vec<IpFamily> {
        self.fams.clone()
    }
    fn allocate_ip(&mut self, family: IpFamily, ip: Option<IpAddr>) -> Result<IpAddr, AllocError> {
        let f = if family == IpFamily::V4 {
            &mut self.v4
        } else {
            &mut self.v6
        };
        let ip = match ip {
            Some(ip) => ip,
            None => f.pick(&mut self.rng).ok_or(AllocError::Full)?,
        };
        f.allocate(&ip).map(|_| ip)
    }
    fn allocate_port(&mut self, port: Option<i32>) -> Result<i32, AllocError> {
        let p = match port {
            Some(p) => p,
            None => self.ports.pick(&mut self.rng).ok_or(AllocError::Full)? as i32,
        };
        self.ports.allocate(p).map(|_| p)
    }
}

fn prepared(v: Value, pools: &Pools) -> Service {
    let mut s: Service = serde_json::from_value(v).expect("decodes");
    crate::service::set_defaults(&mut s);
    crate::service::strategy::normalize_cluster_ips(&mut s, None);
    crate::service::strategy::init_ip_family_fields(&mut s, None, &pools.fams).expect("families");
    s
}

#[test]
fn create_allocates_ips_and_shared_node_ports() {
    let mut pools = Pools::new(true);
    let mut s = prepared(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "NodePort", "ipFamilyPolicy": "PreferDualStack", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}, {"name": "x", "port": 80}]}}),
        &pools,
    );
    allocate_create(&mut s, &mut pools).expect("allocates");
    assert_eq!(cluster_ips(&s).len(), 2);
    assert_eq!(cluster_ip(&s), cluster_ips(&s)[0]);
    let nps: Vec<i32> = ports(&s).iter().map(|p| p.node_port.unwrap_or(0)).collect();
    assert_eq!(nps[0], nps[1], "TCP and UDP on port 53 share a node port");
    assert_ne!(nps[0], nps[2]);
    assert_eq!(held_node_ports(&s).len(), 2);
}

#[test]
fn create_errors_have_upstream_shape() {
    let mut pools = Pools::new(false);
    pools
        .allocate_ip(IpFamily::V4, Some("10.0.0.20".parse().expect("ip")))
        .expect("free");
    pools.allocate_port(Some(30010)).expect("free");
    let mut taken = prepared(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"clusterIP": "10.0.0.20", "ports": [{"port": 80}]}}),
        &pools,
    );
    assert_eq!(
        allocate_create(&mut taken, &mut pools),
        Err(AllocFailure::Invalid(vec![FieldError::invalid(
            "spec.clusterIPs",
            "[]string{\"10.0.0.20\"}",
            "failed to allocate IP 10.0.0.20: provided IP is already allocated"
        )]))
    );
    let mut out = prepared(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"clusterIP": "10.1.0.20", "ports": [{"port": 80}]}}),
        &pools,
    );
    assert_eq!(
        allocate_create(&mut out, &mut pools),
        Err(AllocFailure::Invalid(vec![FieldError::invalid(
            "spec.clusterIPs",
            "[]string{\"10.1.0.20\"}",
            "failed to allocate IP 10.1.0.20: the provided IP (10.1.0.20) is not in the valid range. The range of valid IPs is 10.0.0.0/24"
        )]))
    );
    let mut port = prepared(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30010}]}}),
        &pools,
    );
    assert_eq!(
        allocate_create(&mut port, &mut pools),
        Err(AllocFailure::Invalid(vec![FieldError::invalid(
            "spec.ports[0].nodePort",
            "30010",
            "provided port is already allocated"
        )]))
    );
    let mut hc = prepared(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30010, "ports": [{"port": 80}]}}),
        &pools,
    );
    assert_eq!(
        allocate_create(&mut hc, &mut pools),
        Err(AllocFailure::Internal("failed to allocate requested HealthCheck NodePort 30010: provided port is already allocated".into()))
    );
    // Exhaustion is a 500.
    while pools.allocate_port(None).is_ok() {}
    let mut full = prepared(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}}),
        &pools,
    );
    assert_eq!(
        allocate_create(&mut full, &mut pools),
        Err(AllocFailure::Internal(
            "failed to allocate a nodePort: range is full".into()
        ))
    );
    while pools.allocate_ip(IpFamily::V4, None).is_ok() {}
    let mut full = prepared(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"ports": [{"port": 80}]}}),
        &pools,
    );
    assert_eq!(
        allocate_create(&mut full, &mut pools),
        Err(AllocFailure::Internal(
            "failed to allocate a serviceIP: range is full".into()
        ))
    );
}

#[test]
fn allocate_lb_node_ports_false_keeps_only_requested() {
    let mut pools = Pools::new(false);
    let mut s = prepared(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
            "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30050}]}}),
        &pools,
    );
    allocate_create(&mut s, &mut pools).expect("allocates");
    assert_eq!(
        ports(&s).iter().map(|p| p.node_port).collect::<Vec<_>>(),
        vec![None, Some(30050)]
    );
}

#[test]
fn update_type_changes_release_and_allocate() {
    let mut pools = Pools::new(false);
    let mut lb = prepared(
        json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}}),
        &pools,
    );
    allocate_create(&mut lb, &mut pools).expect("allocates");
    let np = ports(&lb)[0].node_port.expect("node port");
    let hc = health_check_node_port(&lb);
    assert!(hc > 0);

    // LB(Local) → LB(Cluster): HCNP released.
    let mut cluster_policy = lb.clone();
    spec_mut(&mut cluster_policy).external_traffic_policy = Some("Cluster".into());
    let rel = allocate_update(&mut cluster_policy, &lb, &mut pools).expect("update");
    assert_eq!(
        rel,
        Released {
            ips: vec![],
            ports: vec![hc]
        }
    );

    // LB → ClusterIP: node port (and HCNP) released.
    let mut cip = lb.clone();
    spec_mut(&mut cip).type_ = Some("ClusterIP".into());
    let rel = allocate_update(&mut cip, &lb, &mut pools).expect("update");
    let mut want = vec![np, hc];
    want.sort();
    assert_eq!(rel.ports, want);

    // → ExternalName: cluster IP released.
    let mut en = lb.clone();
    spec_mut(&mut en).type_ = Some("ExternalName".into());
    let rel = allocate_update(&mut en, &lb, &mut pools).expect("update");
    assert_eq!(rel.ips, held_ips(&lb));

    // ExternalName → ClusterIP: a new cluster IP.
    let mut ext = prepared(
        json!({"metadata": {"name": "e", "namespace": "d"}, "spec": {"type": "ExternalName", "externalName": "x.example"}}),
        &pools,
    );
    allocate_create(&mut ext, &mut pools).expect("nothing to allocate");
    let mut back = ext.clone();
    spec_mut(&mut back).type_ = Some("ClusterIP".into());
    spec_mut(&mut back).ports = Some(vec![
        serde_json::from_value(json!({"port": 80})).expect("port"),
    ]);
    crate::service::strategy::init_ip_family_fields(&mut back, Some(&ext), &pools.fams)
        .expect("families");
    allocate_update(&mut back, &ext, &mut pools).expect("update");
    assert_eq!(cluster_ips(&back).len(), 1);

    // ClusterIP → NodePort: a node port is allocated.
    let mut np_svc = back.clone();
    spec_mut(&mut np_svc).type_ = Some("NodePort".into());
    allocate_update(&mut np_svc, &back, &mut pools).expect("update");
    assert!(ports(&np_svc)[0].node_port.is_some());
}
