//! Service allocation end to end against the real binary: two API servers on one etcd never
//! hand out the same cluster IP or node port, a SIGKILL mid-burst loses no acknowledged
//! allocation, and kubectl shows kube-apiserver's validation and allocation messages.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams};
use portico_e2e::{Portico, kubectl_dir};
use portico_store::testing::EtcdProcess;

async fn client(p: &Portico) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&p.kubeconfig).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig to config");
    kube::Client::try_from(cfg).expect("kube client")
}

fn node_port_service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "NodePort",
            "selector": {"app": name},
            "ports": [
                {"name": "tcp", "port": 80, "protocol": "TCP"},
                {"name": "udp", "port": 53, "protocol": "UDP"}
            ]
        }
    }))
    .expect("service json")
}

/// What a Service holds: its cluster IPs and node ports.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Allocation {
    cluster_ips: Vec<String>,
    node_ports: Vec<i32>,
}

fn allocation(svc: &Service) -> Allocation {
    let spec = svc.spec.clone().unwrap_or_default();
    Allocation {
        cluster_ips: spec.cluster_ips.unwrap_or_default(),
        node_ports: spec
            .ports
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.node_port)
            .collect(),
    }
}

/// Asserts that no cluster IP and no node port appears in two Services.
fn assert_no_double_allocation(services: &[Service]) {
    let mut ip_owner: HashMap<String, String> = HashMap::new();
    let mut port_owner: HashMap<i32, String> = HashMap::new();
    for svc in services {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let a = allocation(svc);
        for ip in a.cluster_ips {
            if ip == "None" {
                continue;
            }
            if let Some(other) = ip_owner.insert(ip.clone(), name.clone()) {
                panic!("cluster IP {ip} handed to both {other} and {name}");
            }
        }
        for port in a.node_ports {
            if let Some(other) = port_owner.insert(port, name.clone()) {
                panic!("node port {port} handed to both {other} and {name}");
            }
        }
    }
}

async fn create_many(api: Api<Service>, prefix: String, count: usize) -> Vec<Service> {
    let mut created = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let svc = api
            .create(&PostParams::default(), &node_port_service(&name))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        created.push(svc);
    }
    created
}

/// Small ranges so that two servers that allocated from process memory would collide.
const SMALL_RANGES: [&str; 4] = [
    "--service-cluster-ip-range",
    "10.96.0.0/24",
    "--service-node-port-range",
    "30000-30199",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_servers_on_one_etcd_never_share_an_ip_or_port() {
    let etcd = EtcdProcess::start();
    let mut flags = vec![
        "--etcd-servers",
        etcd.client_url(),
        "--etcd-prefix",
        "/portico-e2e-alloc",
    ];
    flags.extend(SMALL_RANGES);
    let a = Portico::start(&flags).expect("start first apiserver");
    let b = Portico::start(&flags).expect("start second apiserver");
    let (ca, cb) = (client(&a).await, client(&b).await);

    // Both servers at once, two writers each.
    let mut tasks = Vec::new();
    for (client, server) in [(&ca, "a"), (&cb, "b")] {
        for writer in 0..2 {
            let api: Api<Service> = Api::namespaced(client.clone(), "default");
            tasks.push(tokio::spawn(create_many(
                api,
                format!("{server}{writer}"),
                20,
            )));
        }
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.expect("writer task"));
    }
    assert_eq!(acknowledged.len(), 80);
    assert_no_double_allocation(&acknowledged);

    // Every acknowledged allocation is what both servers store.
    let want: BTreeMap<String, Allocation> = acknowledged
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), allocation(s)))
        .collect();
    for client in [&ca, &cb] {
        let api: Api<Service> = Api::namespaced(client.clone(), "default");
        let listed = api.list(&ListParams::default()).await.expect("list").items;
        assert_no_double_allocation(&listed);
        let got: BTreeMap<String, Allocation> = listed
            .iter()
            .filter(|s| s.metadata.name.as_deref() != Some("kubernetes"))
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), allocation(s)))
            .collect();
        assert_eq!(got, want);
        for a in got.values() {
            assert_eq!(a.cluster_ips.len(), 1, "{a:?}");
            assert_eq!(a.node_ports.len(), 2, "{a:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_burst_keeps_every_acknowledged_allocation() {
    let p = Portico::start(&SMALL_RANGES).expect("start portico");
    let c = client(&p).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Service>();
    let mut writers = Vec::new();
    for writer in 0..4 {
        let api: Api<Service> = Api::namespaced(c.clone(), "default");
        let tx = tx.clone();
        writers.push(tokio::spawn(async move {
            // Bounded: stops at the first failure (the kill) or after 50 Services.
            for i in 0..50 {
                let name = format!("burst{writer}-{i}");
                match api
                    .create(&PostParams::default(), &node_port_service(&name))
                    .await
                {
                    Ok(svc) => {
                        if tx.send(svc).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    drop(tx);

    // Kill once 30 creates were acknowledged, while the writers are still sending.
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 30 {
        let svc = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("creates acknowledged in time")
            .expect("writers still running");
        acknowledged.push(svc);
    }
    let data_dir = tokio::task::spawn_blocking(move || p.kill())
        .await
        .expect("kill");
    for w in writers {
        w.await.expect("writer task");
    }
    // Creates acknowledged before the connection broke.
    while let Ok(svc) = rx.try_recv() {
        acknowledged.push(svc);
    }
    assert!(acknowledged.len() < 200, "the kill came after the burst");

    let p = Portico::start_in("apiserver", data_dir, &SMALL_RANGES).expect("restart portico");
    let c = client(&p).await;
    let api: Api<Service> = Api::namespaced(c, "default");
    for svc in &acknowledged {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let stored = api
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {name} lost: {e}"));
        assert_eq!(allocation(&stored), allocation(svc), "{name}");
    }

    // New Services after the restart never collide with what survived.
    let fresh = create_many(api.clone(), "after".into(), 30).await;
    assert_eq!(fresh.len(), 30);
    let listed = api.list(&ListParams::default()).await.expect("list").items;
    assert_no_double_allocation(&listed);
}

fn kubectl_create_fails(kubeconfig: &Path, cache: &Path, work: &Path, yaml: &str) -> String {
    let file = work.join("svc.yaml");
    std::fs::write(&file, yaml).expect("write manifest");
    let bin = kubectl_dir().expect("kubectl dir").join("kubectl.1.33");
    let out = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .arg("create")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("run kubectl");
    assert!(!out.status.success(), "kubectl create succeeded:\n{yaml}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn service_yaml(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

#[test]
fn kubectl_shows_kube_apiserver_messages() {
    let p = Portico::start(&[]).expect("start portico");
    let cache = tempfile::tempdir().expect("cache dir");
    let work = tempfile::tempdir().expect("work dir");
    let fails = |yaml: &str| kubectl_create_fails(&p.kubeconfig, cache.path(), work.path(), yaml);

    // An explicit targetPort: upstream defaults targetPort to `port`, which would add a second
    // error for targetPort 0.
    let stderr = fails(&service_yaml(
        "foo",
        "  selector: {app: foo}\n  ports:\n  - {port: 0, targetPort: 8080}\n",
    ));
    assert!(
        stderr.contains(
            "The Service \"foo\" is invalid: spec.ports[0].port: Invalid value: 0: \
             must be between 1 and 65535, inclusive"
        ),
        "{stderr}"
    );

    // Take 10.96.0.50, then ask for it again.
    let taken = service_yaml("taken", "  clusterIP: 10.96.0.50\n  ports:\n  - port: 80\n");
    std::fs::write(work.path().join("taken.yaml"), &taken).expect("write manifest");
    let bin = kubectl_dir().expect("kubectl dir").join("kubectl.1.33");
    let out = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(&p.kubeconfig)
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["create", "-f"])
        .arg(work.path().join("taken.yaml"))
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "service/taken created"
    );
    let stderr = fails(&service_yaml(
        "again",
        "  clusterIP: 10.96.0.50\n  ports:\n  - port: 80\n",
    ));
    assert!(
        stderr.contains("The Service \"again\" is invalid: spec.clusterIPs: Invalid value:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("provided IP is already allocated"),
        "{stderr}"
    );

    let stderr = fails(&service_yaml(
        "far",
        "  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 40000\n",
    ));
    assert!(
        stderr.contains(
            "The Service \"far\" is invalid: spec.ports[0].nodePort: Invalid value: 40000: \
             provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{stderr}"
    );
}
