//! End-to-end data-plane tests: real TCP and UDP traffic between network namespaces of a
//! two-node sandbox, each node programmed by its own `NftBackend` from a hand-built plan.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::ep;
use portico_core::plan::{Endpoint, NoEndpoints, Plan, Protocol, ServicePortPlan};
use portico_nft::{NftBackend, NftConfig};
use portico_testnet::{Netns, Sandbox, http_get, udp_roundtrip};

const TIMEOUT: Duration = Duration::from_secs(2);

struct Cluster {
    backends: Vec<NftBackend>,
    sb: Sandbox,
}

fn config() -> NftConfig {
    NftConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/32".parse().unwrap(),
        ],
        service_cidrs: vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00:96::/112".parse().unwrap(),
        ],
        ..NftConfig::default()
    }
}

/// Two nodes with `pods` (node index, name); the client routes the service range, external
/// and load-balancer ranges via node 0.
fn cluster(pods: &[(usize, &str)]) -> Cluster {
    let mut sb = Sandbox::build(2).unwrap();
    for (node, name) in pods {
        sb.add_pod(*node, name).unwrap();
    }
    for cidr in [
        "10.96.0.0/12",
        "203.0.113.0/24",
        "198.51.100.0/24",
        "fd00:96::/112",
    ] {
        sb.route_client_via(cidr, 0).unwrap();
    }
    let backends = sb
        .nodes
        .iter()
        .map(|n| NftBackend::new(Some(n.ns.path()), config()).unwrap())
        .collect();
    Cluster { backends, sb }
}

impl Cluster {
    fn pod(&self, name: &str) -> &portico_testnet::Pod {
        self.sb.pods.iter().find(|p| p.name == name).unwrap()
    }

    /// The endpoint of a pod as seen from node `node`.
    fn ep(&self, name: &str, node: usize) -> Endpoint {
        let pod = self.pod(name);
        let mut e = ep(pod.ip, pod.server.as_ref().unwrap().port, pod.node == node);
        e.node_name = Some(format!("node-{}", pod.node));
        e
    }

    /// The IPv6 endpoint of a pod as seen from node `node`.
    fn ep6(&self, name: &str, node: usize) -> Endpoint {
        let pod = self.pod(name);
        let mut e = ep(pod.ip6, pod.server.as_ref().unwrap().port, pod.node == node);
        e.node_name = Some(format!("node-{}", pod.node));
        e
    }

    /// Programs every node with the plan `build(node)` returns.
    fn sync(
        &mut self,
        build: impl Fn(&Cluster, usize) -> Vec<ServicePortPlan>,
    ) -> Vec<portico_nft::SyncStats> {
        let mut out = Vec::new();
        for node in 0..self.backends.len() {
            let plan = common::plan_of(build(self, node));
            out.push(self.backends[node].sync(&plan).unwrap());
        }
        out
    }

    fn ns_of(&self, who: &str) -> &Netns {
        match who {
            "client" => &self.sb.client,
            "node0" => &self.sb.nodes[0].ns,
            "node1" => &self.sb.nodes[1].ns,
            pod => &self.pod(pod).ns,
        }
    }

    /// One HTTP GET from `who` (a pod name, "client", "node0", "node1").
    fn get(&self, who: &str, addr: SocketAddr, path: &'static str) -> std::io::Result<String> {
        self.ns_of(who)
            .run(move || http_get(addr, path, TIMEOUT))
            .unwrap()
    }

    fn hostnames(&self, who: &str, addr: SocketAddr, n: usize) -> Vec<String> {
        self.ns_of(who)
            .run(move || {
                (0..n)
                    .map(|_| {
                        http_get(addr, "/hostname", TIMEOUT)
                            .unwrap_or_else(|e| format!("error: {e}"))
                    })
                    .collect()
            })
            .unwrap()
    }

    fn connect(
        &self,
        who: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> (std::io::Result<()>, Duration) {
        self.ns_of(who)
            .run(move || {
                let start = Instant::now();
                let r = TcpStream::connect_timeout(&addr, timeout).map(|_| ());
                (r, start.elapsed())
            })
            .unwrap()
    }
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn web(c: &Cluster, node: usize, pods: &[&str]) -> ServicePortPlan {
    let eps: Vec<Endpoint> = pods.iter().map(|p| c.ep(p, node)).collect();
    common::service("web", Protocol::Tcp, "10.96.0.10", 80, eps)
}

#[test]
fn load_spreads_over_pods_on_both_nodes_from_every_node() {
    require_root!();
    let mut c = cluster(&[
        (0, "a0"),
        (0, "b0"),
        (1, "a1"),
        (1, "b1"),
        (1, "client-pod"),
    ]);
    c.sync(|c, n| vec![web(c, n, &["a0", "b0", "a1", "b1"])]);
    for who in ["a0", "client-pod", "node0", "client"] {
        let seen: BTreeSet<String> = c
            .hostnames(who, sa("10.96.0.10", 80), 40)
            .into_iter()
            .collect();
        assert_eq!(
            seen,
            ["a0", "a1", "b0", "b1"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            "from {who}"
        );
    }
    // A change reaches traffic on every node.
    c.sync(|c, n| vec![web(c, n, &["b1"])]);
    for who in ["a0", "client-pod"] {
        let seen: BTreeSet<String> = c
            .hostnames(who, sa("10.96.0.10", 80), 10)
            .into_iter()
            .collect();
        assert_eq!(seen, BTreeSet::from(["b1".to_string()]), "from {who}");
    }
}

#[test]
fn client_ip_affinity_sticks_and_expires() {
    require_root!();
    let mut c = cluster(&[
        (0, "a0"),
        (0, "b0"),
        (1, "a1"),
        (1, "b1"),
        (1, "client-pod"),
    ]);
    c.sync(|c, n| {
        let mut s = web(c, n, &["a0", "b0", "a1", "b1"]);
        s.affinity_timeout_seconds = Some(1);
        vec![s]
    });
    let seen: BTreeSet<String> = c
        .hostnames("client-pod", sa("10.96.0.10", 80), 15)
        .into_iter()
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let first = seen.into_iter().next().unwrap();
    // After the timeout a new random pick happens; within a few rounds another backend shows.
    let mut moved = false;
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(1300));
        let now = c.hostnames("client-pod", sa("10.96.0.10", 80), 1);
        if now[0] != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "affinity never expired");
}

#[test]
fn nodeport_from_the_external_client_on_every_node() {
    require_root!();
    let mut c = cluster(&[(0, "a0"), (1, "a1")]);
    c.sync(|c, n| {
        let mut s = web(c, n, &["a0", "a1"]);
        s.node_port = Some(30080);
        vec![s]
    });
    for node in 0..2 {
        let addr = SocketAddr::new(c.sb.nodes[node].ip, 30080);
        let seen: BTreeSet<String> = c.hostnames("client", addr, 20).into_iter().collect();
        assert_eq!(
            seen,
            BTreeSet::from(["a0".to_string(), "a1".to_string()]),
            "node {node}"
        );
        // Policy Cluster masquerades: the backend sees a node address, not the client.
        let ip = c.get("client", addr, "/clientip").unwrap();
        assert_ne!(ip, c.sb.client_ip.to_string());
    }
}

#[test]
fn external_and_load_balancer_ips() {
    require_root!();
    let mut c = cluster(&[(0, "a0"), (1, "a1")]);
    c.sync(|c, n| {
        let mut s = web(c, n, &["a0", "a1"]);
        s.external_ips = vec!["203.0.113.10".parse().unwrap()];
        s.load_balancer_ips = vec!["198.51.100.7".parse().unwrap()];
        vec![s]
    });
    for addr in [sa("203.0.113.10", 80), sa("198.51.100.7", 80)] {
        let seen: BTreeSet<String> = c.hostnames("client", addr, 20).into_iter().collect();
        assert_eq!(seen.len(), 2, "{addr}: {seen:?}");
        // Pods reach them too.
        assert!(c.get("a1", addr, "/hostname").is_ok());
    }
}

#[test]
fn reject_is_immediate_and_drop_times_out() {
    require_root!();
    let mut c = cluster(&[(0, "a0"), (1, "client-pod")]);
    c.sync(|c, n| {
        vec![
            web(c, n, &["a0"]),
            common::service("empty", Protocol::Tcp, "10.96.0.20", 80, vec![]),
        ]
    });
    for who in ["client-pod", "node0", "client"] {
        // A Service without endpoints: refused at once.
        let (r, took) = c.connect(who, sa("10.96.0.20", 80), Duration::from_secs(3));
        assert_eq!(
            r.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{who}"
        );
        assert!(took < Duration::from_millis(500), "{who}: {took:?}");
        // An undefined port of a cluster IP: refused too.
        let (r, _) = c.connect(who, sa("10.96.0.10", 81), Duration::from_secs(3));
        assert_eq!(
            r.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{who}"
        );
        // An unallocated address of the service range: dropped.
        let (r, took) = c.connect(who, sa("10.96.0.200", 80), Duration::from_secs(1));
        assert!(
            r.is_err() && took >= Duration::from_millis(900),
            "{who}: {r:?} {took:?}"
        );
    }
}

#[test]
fn external_traffic_policy_local_keeps_the_client_ip() {
    require_root!();
    let mut c = cluster(&[(1, "a1"), (0, "p0")]);
    c.sync(|c, n| {
        let mut s = web(c, n, &["a1"]);
        s.node_port = Some(30081);
        s.load_balancer_ips = vec!["198.51.100.8".parse().unwrap()];
        s.external_policy_local = true;
        s.cluster_policy_endpoints = s.cluster_endpoints.clone();
        s.external_endpoints.retain(|e| e.is_local);
        s.external_no_endpoints = NoEndpoints::Drop;
        vec![s]
    });
    // On the node with the endpoint: served, with the client's own address.
    let on_node1 = SocketAddr::new(c.sb.nodes[1].ip, 30081);
    assert_eq!(
        c.get("client", on_node1, "/clientip").unwrap(),
        c.sb.client_ip.to_string()
    );
    // On the node without one: dropped.
    let on_node0 = SocketAddr::new(c.sb.nodes[0].ip, 30081);
    let (r, _) = c.connect("client", on_node0, Duration::from_secs(1));
    assert!(r.is_err());
    // The LB IP (routed to node 0 from the client): dropped there too.
    let (r, _) = c.connect("client", sa("198.51.100.8", 80), Duration::from_secs(1));
    assert!(r.is_err());
    // In-cluster traffic to the external addresses is short-circuited to the endpoints.
    assert_eq!(c.get("p0", on_node0, "/hostname").unwrap(), "a1");
    assert_eq!(
        c.get("p0", sa("198.51.100.8", 80), "/hostname").unwrap(),
        "a1"
    );
    assert_eq!(
        c.get("node0", sa("198.51.100.8", 80), "/hostname").unwrap(),
        "a1"
    );
}

#[test]
fn internal_traffic_policy_local_drops_without_local_endpoints() {
    require_root!();
    let mut c = cluster(&[(0, "a0"), (0, "p0"), (1, "p1")]);
    c.sync(|c, n| {
        let mut s = web(c, n, &["a0"]);
        s.internal_policy_local = true;
        s.cluster_endpoints.retain(|e| e.is_local);
        s.cluster_no_endpoints = NoEndpoints::Drop;
        vec![s]
    });
    assert_eq!(
        c.get("p0", sa("10.96.0.10", 80), "/hostname").unwrap(),
        "a0"
    );
    let (r, took) = c.connect("p1", sa("10.96.0.10", 80), Duration::from_secs(1));
    assert!(
        r.is_err() && took >= Duration::from_millis(900),
        "{r:?} {took:?}"
    );
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    require_root!();
    let mut c = cluster(&[(0, "ready"), (1, "term"), (1, "p1")]);
    // The plan carries the categorized list (ready first, serving-terminating as fallback);
    // check the data plane follows both shapes of it.
    c.sync(|c, n| vec![web(c, n, &["ready"])]);
    let seen: BTreeSet<String> = c
        .hostnames("p1", sa("10.96.0.10", 80), 10)
        .into_iter()
        .collect();
    assert_eq!(seen, BTreeSet::from(["ready".to_string()]));
    c.sync(|c, n| {
        let mut s = web(c, n, &["term"]);
        for e in s
            .cluster_endpoints
            .iter_mut()
            .chain(s.external_endpoints.iter_mut())
        {
            e.ready = false;
            e.terminating = true;
        }
        vec![s]
    });
    let seen: BTreeSet<String> = c
        .hostnames("p1", sa("10.96.0.10", 80), 10)
        .into_iter()
        .collect();
    assert_eq!(seen, BTreeSet::from(["term".to_string()]));
}

#[test]
fn hairpin_pod_reaches_itself_through_its_service() {
    require_root!();
    let mut c = cluster(&[(0, "self")]);
    c.sync(|c, n| vec![web(c, n, &["self"])]);
    assert_eq!(
        c.get("self", sa("10.96.0.10", 80), "/hostname").unwrap(),
        "self"
    );
    // Masqueraded: the pod does not see its own address as the source.
    let ip = c.get("self", sa("10.96.0.10", 80), "/clientip").unwrap();
    assert_ne!(ip, c.pod("self").ip.to_string());
}

#[test]
fn load_balancer_source_ranges() {
    require_root!();
    let mut c = cluster(&[(0, "a0")]);
    let with_range = |range: &'static str| {
        move |c: &Cluster, n: usize| {
            let mut s = web(c, n, &["a0"]);
            s.load_balancer_ips = vec!["198.51.100.9".parse().unwrap()];
            s.load_balancer_source_ranges = vec![range.parse().unwrap()];
            vec![s]
        }
    };
    c.sync(with_range("10.0.0.0/8"));
    let (r, _) = c.connect("client", sa("198.51.100.9", 80), Duration::from_secs(1));
    assert!(r.is_err(), "client outside the source range got through");
    c.sync(with_range("192.168.50.0/24"));
    assert_eq!(
        c.get("client", sa("198.51.100.9", 80), "/hostname")
            .unwrap(),
        "a0"
    );
}

#[test]
fn udp_flow_moves_to_the_new_pod_after_the_old_one_is_removed() {
    require_root!();
    let mut c = cluster(&[(0, "old"), (1, "new"), (1, "p1")]);
    let dns = |pods: &'static [&'static str]| {
        move |c: &Cluster, n: usize| {
            let eps: Vec<Endpoint> = pods.iter().map(|p| c.ep(p, n)).collect();
            vec![common::service("dns", Protocol::Udp, "10.96.0.53", 53, eps)]
        }
    };
    c.sync(dns(&["old"]));
    let sock = c
        .ns_of("p1")
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
        .unwrap();
    let target = sa("10.96.0.53", 53);
    assert_eq!(udp_roundtrip(&sock, target, "q1").unwrap(), "old q1");
    // Replace the endpoint; the old pod keeps running (its flow would still be served by it
    // without the cleanup).
    let stats = c.sync(dns(&["new"]));
    // The client's flow went through node 1 (its own node): that node deleted it.
    assert_eq!(stats[1].conntrack_deleted, 1, "{stats:?}");
    assert_eq!(udp_roundtrip(&sock, target, "q2").unwrap(), "new q2");
}

#[test]
fn topology_filtered_endpoint_sets_differ_per_node() {
    require_root!();
    // The plan carries per-node endpoint lists after topology filtering (PreferSameNode /
    // zone hints); each node's data plane must use only its own list.
    let mut c = cluster(&[(0, "z0"), (1, "z1"), (0, "p0"), (1, "p1")]);
    c.sync(|c, n| vec![web(c, n, if n == 0 { &["z0"] } else { &["z1"] })]);
    let from0: BTreeSet<String> = c
        .hostnames("p0", sa("10.96.0.10", 80), 10)
        .into_iter()
        .collect();
    let from1: BTreeSet<String> = c
        .hostnames("p1", sa("10.96.0.10", 80), 10)
        .into_iter()
        .collect();
    assert_eq!(from0, BTreeSet::from(["z0".to_string()]));
    assert_eq!(from1, BTreeSet::from(["z1".to_string()]));
}

#[test]
fn restart_with_the_same_state_keeps_connections() {
    require_root!();
    let mut c = cluster(&[(0, "a0"), (1, "p1")]);
    c.sync(|c, n| vec![web(c, n, &["a0"])]);
    let target = sa("10.96.0.10", 80);
    // An established TCP connection through the cluster IP survives a new backend (a
    // restarted proxy) programming the same plan from scratch.
    let mut stream = c
        .ns_of("p1")
        .run(move || TcpStream::connect_timeout(&target, TIMEOUT).unwrap())
        .unwrap();
    let fresh = NftBackend::new(Some(c.sb.nodes[0].ns.path()), config()).unwrap();
    c.backends[0] = fresh;
    c.sync(|c, n| vec![web(c, n, &["a0"])]);
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /hostname HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut resp = String::new();
    let _ = stream.read_to_string(&mut resp);
    assert!(resp.ends_with("a0"), "{resp:?}");
    let _: IpAddr = c.pod("a0").ip;
    let _ = Plan::default();
}

#[test]
fn dual_stack_service_serves_both_families() {
    require_root!();
    let mut c = cluster(&[(0, "a0"), (1, "a1"), (1, "p1")]);
    c.sync(|c, n| {
        let mut s = web(c, n, &["a0", "a1"]);
        s.cluster_ips.push("fd00:96::40".parse().unwrap());
        s.node_port = Some(30090);
        for pod in ["a0", "a1"] {
            s.cluster_endpoints.push(c.ep6(pod, n));
        }
        s.external_endpoints = s.cluster_endpoints.clone();
        vec![s]
    });
    let v6 = sa("fd00:96::40", 80);
    for who in ["p1", "client"] {
        let seen: BTreeSet<String> = c.hostnames(who, v6, 20).into_iter().collect();
        assert_eq!(
            seen,
            BTreeSet::from(["a0".to_string(), "a1".to_string()]),
            "from {who}"
        );
    }
    // NodePort over IPv6 on both nodes; policy Cluster masquerades.
    for node in 0..2 {
        let addr = SocketAddr::new(c.sb.nodes[node].ip6, 30090);
        let ip = c.get("client", addr, "/clientip").unwrap();
        assert_ne!(ip, c.sb.client_ip6.to_string(), "node {node}");
    }
    // An undefined port of the IPv6 cluster IP is refused at once, from a pod and the node.
    for who in ["p1", "node1"] {
        let (r, took) = c.connect(who, sa("fd00:96::40", 81), Duration::from_secs(3));
        assert_eq!(
            r.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{who}"
        );
        assert!(took < Duration::from_millis(500), "{who}: {took:?}");
    }
    // Off-cluster traffic to the cluster IP is masqueraded, in-cluster traffic is not.
    assert_ne!(
        c.get("client", v6, "/clientip").unwrap(),
        c.sb.client_ip6.to_string()
    );
    assert_eq!(
        c.get("p1", sa("10.96.0.10", 80), "/clientip").unwrap(),
        c.pod("p1").ip.to_string()
    );
    assert_eq!(
        c.get("p1", v6, "/clientip").unwrap(),
        c.pod("p1").ip6.to_string()
    );
}
