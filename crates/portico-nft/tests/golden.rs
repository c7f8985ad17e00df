//! Golden tests of the rendered nft text: the fixed skeleton and the elements each kind of
//! Service contributes, plus the incremental transaction of a change. Each rendering is also
//! validated with `nft --check -f` inside a throwaway namespace when running as root.

mod common;

use common::ep;
use portico_core::plan::{NoEndpoints, Plan, Protocol};
use portico_nft::{Family, NftBackend, NftConfig};
use portico_testnet::Netns;

fn config() -> NftConfig {
    NftConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/64".parse().unwrap(),
        ],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..NftConfig::default()
    }
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// Only the elements of a full render (the skeleton has its own snapshot).
fn elements(plan: &Plan) -> String {
    let txs = NftBackend::render_change(&config(), &Plan::default(), plan).unwrap();
    txs.iter().map(|t| t.to_nft_text()).collect()
}

/// Checks the full transaction text with `nft --check` (the ip6 affinity-update rule is left
/// out: nft 1.0.6 itself aborts on it, see tests/kernel.rs).
fn nft_check(plan: &Plan) {
    if !common::is_root() {
        return;
    }
    let txs = NftBackend::render_full(&config(), plan).unwrap();
    let text: String = txs
        .iter()
        .map(|t| t.to_nft_text())
        .collect::<String>()
        .lines()
        .filter(|l| !l.starts_with("add rule ip6 portico affinity-update"))
        .map(|l| format!("{l}\n"))
        .collect();
    let ns = Netns::new("check").unwrap();
    ns.exec(&["nft", "add table ip portico; add table ip6 portico"])
        .unwrap();
    let path = std::env::temp_dir().join(format!("portico-golden-{}.nft", ns.name()));
    std::fs::write(&path, &text).unwrap();
    let out = ns
        .exec_status(&["nft", "--check", "-f", path.to_str().unwrap()])
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn skeleton() {
    let mut text = String::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        let tx = portico_nft::backend::skeleton(&config(), family);
        // endpoints-1 … endpoints-256 differ only in the modulus: keep the first two.
        for line in tx.to_nft_text().lines() {
            let bucket_chain = line
                .split_whitespace()
                .nth(4)
                .and_then(|w| w.strip_prefix("endpoints-"))
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n > 2);
            let dispatch_elements =
                line.contains("bucket-dispatch {") && line.starts_with("add element");
            if !bucket_chain && !dispatch_elements {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    insta::assert_snapshot!(text);
}

#[test]
fn cluster_ip_with_endpoints_and_without() {
    let web = common::service(
        "web",
        Protocol::Tcp,
        "10.96.0.10",
        80,
        vec![
            ep(ip("10.244.0.2"), 8080, true),
            ep(ip("10.244.1.2"), 8080, false),
        ],
    );
    let empty = common::service("empty", Protocol::Udp, "10.96.0.11", 53, vec![]);
    let plan = common::plan_of(vec![web, empty]);
    nft_check(&plan);
    insta::assert_snapshot!(elements(&plan));
}

#[test]
fn nodeport_external_and_load_balancer_with_source_ranges_and_affinity() {
    let mut s = common::service(
        "lb",
        Protocol::Tcp,
        "10.96.0.12",
        443,
        vec![ep(ip("10.244.0.5"), 8443, true)],
    );
    s.node_port = Some(30443);
    s.external_ips = vec![ip("203.0.113.10")];
    s.load_balancer_ips = vec![ip("198.51.100.7")];
    s.load_balancer_source_ranges = vec!["192.168.0.0/16".parse().unwrap()];
    s.affinity_timeout_seconds = Some(600);
    let plan = common::plan_of(vec![s]);
    nft_check(&plan);
    insta::assert_snapshot!(elements(&plan));
}

#[test]
fn external_policy_local_without_local_endpoints() {
    let mut s = common::service(
        "local",
        Protocol::Tcp,
        "10.96.0.13",
        80,
        vec![ep(ip("10.244.1.9"), 80, false)],
    );
    s.node_port = Some(30080);
    s.load_balancer_ips = vec![ip("198.51.100.8")];
    s.external_policy_local = true;
    s.external_endpoints = vec![];
    s.external_no_endpoints = NoEndpoints::Drop;
    let plan = common::plan_of(vec![s]);
    nft_check(&plan);
    insta::assert_snapshot!(elements(&plan));
}

#[test]
fn dual_stack_service() {
    let mut s = common::service(
        "dual",
        Protocol::Tcp,
        "10.96.0.14",
        80,
        vec![
            ep(ip("10.244.0.7"), 80, true),
            ep(ip("fd00:244::7"), 80, true),
        ],
    );
    s.cluster_ips.push(ip("fd00:96::14"));
    let plan = common::plan_of(vec![s]);
    nft_check(&plan);
    insta::assert_snapshot!(elements(&plan));
}

#[test]
fn incremental_change_touches_only_that_service() {
    let a = common::service(
        "a",
        Protocol::Tcp,
        "10.96.0.20",
        80,
        vec![
            ep(ip("10.244.0.2"), 80, true),
            ep(ip("10.244.0.3"), 80, true),
        ],
    );
    let b = common::service(
        "b",
        Protocol::Tcp,
        "10.96.0.21",
        80,
        vec![ep(ip("10.244.0.4"), 80, true)],
    );
    let old = common::plan_of(vec![a.clone(), b]);
    let mut a2 = a;
    a2.cluster_endpoints.pop();
    a2.external_endpoints.pop();
    let mut new = old.clone();
    new.services.insert(a2.name.clone(), a2);
    let txs = NftBackend::render_change(&config(), &old, &new).unwrap();
    let text: String = txs.iter().map(|t| t.to_nft_text()).collect();
    insta::assert_snapshot!(text);
}
