//! Controllers end to end: kubectl 1.33 against `portico up`, pod statuses written the way a
//! kubelet would, checking EndpointSlices, Endpoints, mirroring and LoadBalancer addresses.

use std::time::Duration;

use portico_e2e::{Kubectl, Portico};
use serde_json::{Value, json};

const UP: &[&str] = &["--dns-address", "127.0.0.1:0", "--proxy-mode", "none"];

fn endpoints(k: &Kubectl, svc: &str) -> Option<Value> {
    let (ok, so, _) = k.run(&["get", "endpoints", svc, "-o", "json"]);
    if ok {
        serde_json::from_str(&so).ok()
    } else {
        None
    }
}

/// Marks a pod Running and Ready with `ip`, the way a kubelet reports it.
fn kubelet_ready(k: &Kubectl, pod: &str, ip: &str, ready: bool) {
    let patch = status_patch(ip, ready).to_string();
    k.ok(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

fn status_patch(ip: &str, ready: bool) -> Value {
    let s = if ready { "True" } else { "False" };
    json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": s}, {"type": "ContainersReady", "status": s}],
    }})
}

fn eventually<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    portico_e2e::eventually(what, Duration::from_secs(10), check)
}

fn pod_yaml(name: &str, app: &str, node: Option<&str>) -> String {
    let node = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {app}}}\nspec:\n{node}  containers:\n  - name: c\n    image: example.invalid/app\n    ports:\n    - {{name: http, containerPort: 8080}}\n"
    )
}

fn svc_yaml(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {app}}}\n  ports:\n  - {{name: http, port: 80, targetPort: http}}\n"
    )
}

fn all_endpoints(slices: &[Value]) -> Vec<Value> {
    slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn address_count(ep: &Value, key: &str) -> usize {
    ep["subsets"]
        .as_array()
        .map(|ss| {
            ss.iter()
                .map(|s| s[key].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn slices_endpoints_and_graceful_termination() {
    let p = Portico::start_command("up", UP).expect("start portico up");
    let k = Kubectl::new(&p);
    // Upstream skips pods whose Node does not exist, so register the node first.
    k.apply(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels: {topology.kubernetes.io/zone: zone-a}\n",
    );
    k.apply("svc.yaml", &svc_yaml("web", "web"));
    let pods: String = (1..=3)
        .map(|i| pod_yaml(&format!("web-{i}"), "web", Some("node-a")))
        .collect::<Vec<_>>()
        .join("---\n");
    k.apply("pods.yaml", &pods);
    for i in 1..=3 {
        kubelet_ready(&k, &format!("web-{i}"), &format!("10.244.0.{i}"), true);
    }

    let slices = eventually("3 ready endpoints in one slice", || {
        let s = k.slices("web");
        let eps = all_endpoints(&s);
        let ready = eps
            .iter()
            .filter(|e| e["conditions"]["ready"] == json!(true))
            .count();
        if s.len() == 1 && ready == 3 {
            Ok(s)
        } else {
            Err(format!("{s:#?}"))
        }
    });
    assert_eq!(
        slices[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        json!("endpointslice-controller.k8s.io")
    );
    assert_eq!(slices[0]["addressType"], json!("IPv4"));
    assert_eq!(slices[0]["ports"][0]["port"], json!(8080));
    eventually("Endpoints with 3 addresses", || {
        let ep = endpoints(&k, "web");
        match &ep {
            Some(e) if address_count(e, "addresses") == 3 => Ok(()),
            _ => Err(format!("{ep:#?}")),
        }
    });

    // Graceful delete: the pod stays, with a deletionTimestamp, until the kubelet confirms.
    let out = k.ok(&["delete", "pod", "web-2", "--wait=false"]);
    assert!(out.contains("deleted"), "{out}");
    let ep = eventually("web-2 terminating in the slice", || {
        let s = k.slices("web");
        let eps = all_endpoints(&s);
        eps.iter()
            .find(|e| e["targetRef"]["name"] == json!("web-2"))
            .filter(|e| e["conditions"]["terminating"] == json!(true))
            .cloned()
            .ok_or_else(|| format!("{s:#?}"))
    });
    // Still Ready: serving follows readiness, ready is false while terminating.
    assert_eq!(ep["conditions"]["serving"], json!(true), "{ep:#?}");
    assert_eq!(ep["conditions"]["ready"], json!(false), "{ep:#?}");
    eventually("web-2 gone from Endpoints", || {
        let ep = endpoints(&k, "web");
        match &ep {
            Some(e)
                if address_count(e, "addresses") == 2 && !e.to_string().contains("10.244.0.2") =>
            {
                Ok(())
            }
            _ => Err(format!("{ep:#?}")),
        }
    });

    k.ok(&["delete", "pod", "web-2", "--grace-period=0", "--force"]);
    eventually("web-2 gone from the slice", || {
        let s = k.slices("web");
        let eps = all_endpoints(&s);
        if eps.len() == 2 && !eps.iter().any(|e| e["targetRef"]["name"] == json!("web-2")) {
            Ok(())
        } else {
            Err(format!("{s:#?}"))
        }
    });
}

#[test]
fn mirroring_selectorless_service() {
    let p = Portico::start_command("up", UP).expect("start portico up");
    let k = Kubectl::new(&p);
    k.apply(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  ports:\n  - {name: http, port: 80, targetPort: 9376}\n",
    );
    k.apply(
        "ep.yaml",
        "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: ext\nsubsets:\n- addresses:\n  - {ip: 192.0.2.10}\n  - {ip: 192.0.2.11}\n  ports:\n  - {name: http, port: 9376}\n",
    );
    let s = eventually("mirrored slice", || {
        let s = k.slices("ext");
        if s.len() == 1 && all_endpoints(&s).len() == 2 {
            Ok(s)
        } else {
            Err(format!("{s:#?}"))
        }
    });
    assert_eq!(
        s[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        json!("endpointslicemirroring-controller.k8s.io")
    );
    assert_eq!(s[0]["ports"][0]["port"], json!(9376));
    let ips: Vec<Value> = all_endpoints(&s)
        .iter()
        .map(|e| e["addresses"][0].clone())
        .collect();
    assert!(ips.contains(&json!("192.0.2.10")) && ips.contains(&json!("192.0.2.11")));
}

#[test]
fn load_balancer_pool_and_address_in_use() {
    let p = Portico::start_command("up", UP).expect("start portico up");
    let k = Kubectl::new(&p);
    let lb = |name: &str, ip: Option<&str>| {
        let ip = ip
            .map(|i| format!("  loadBalancerIP: {i}\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: LoadBalancer\n{ip}  selector: {{app: x}}\n  ports:\n  - {{port: 80}}\n"
        )
    };
    k.apply("lb1.yaml", &lb("lb1", None));
    let ingress = eventually("lb1 ingress", || {
        let v = k.json(&["get", "svc", "lb1", "-o", "json"]);
        let ing = v["status"]["loadBalancer"]["ingress"][0].clone();
        if ing["ip"].is_string() {
            Ok(ing)
        } else {
            Err(format!("{v:#}"))
        }
    });
    let ip = ingress["ip"].as_str().unwrap_or_default().to_string();
    assert!(ip.starts_with("127.97.0."), "{ingress}");
    assert_eq!(ingress["ipMode"], json!("VIP"), "{ingress}");

    k.apply("lb2.yaml", &lb("lb2", Some(&ip)));
    eventually("lb2 AddressInUse event", || {
        let d = k.ok(&["describe", "svc", "lb2"]);
        if d.contains("AddressInUse") {
            Ok(())
        } else {
            Err(d)
        }
    });
    let v = k.json(&["get", "svc", "lb2", "-o", "json"]);
    let explained = v["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["reason"] == json!("AddressInUse") && c["status"] == json!("False"))
    });
    assert!(explained, "no AddressInUse condition: {v:#}");
    assert!(
        v["status"]["loadBalancer"]["ingress"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_1001_pods_truncates_endpoints() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, Patch, PatchParams};

    let p = Portico::start_command("up", UP).expect("start portico up");
    let k = Kubectl::new(&p);
    k.apply("svc.yaml", &svc_yaml("big", "big"));
    let pods: String = (0..1001)
        .map(|i| pod_yaml(&format!("big-{i}"), "big", None))
        .collect::<Vec<_>>()
        .join("---\n");
    k.write("pods.yaml", &pods);
    k.ok(&["create", "-f", "pods.yaml", "-o", "name"]);

    // Bulk status writes, a few at a time, like many kubelets.
    let kc = kube::config::Kubeconfig::read_from(&p.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(cfg).expect("client");
    let api: Api<Pod> = Api::namespaced(client, "default");
    let mut tasks = Vec::new();
    for worker in 0..8usize {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..1001).step_by(8) {
                let ip = format!("10.244.{}.{}", i / 250, i % 250 + 1);
                api.patch_status(
                    &format!("big-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(status_patch(&ip, true)),
                )
                .await
                .expect("patch status");
            }
        }));
    }
    for t in tasks {
        t.await.expect("status writer");
    }

    let k = std::sync::Arc::new(k);
    let k2 = k.clone();
    tokio::task::spawn_blocking(move || {
        let k = k2;
        let slices = eventually("1001 endpoints in slices", || {
            let s = k.slices("big");
            let ready = all_endpoints(&s)
                .iter()
                .filter(|e| e["conditions"]["ready"] == json!(true))
                .count();
            if ready == 1001 {
                Ok(s)
            } else {
                Err(format!("{} slices, {ready} ready endpoints", s.len()))
            }
        });
        assert!(slices.len() >= 11, "{} slices", slices.len());
        eventually("Endpoints truncated to 1000", || {
            let ep = endpoints(&k, "big");
            match &ep {
                Some(e)
                    if address_count(e, "addresses") == 1000
                        && e["metadata"]["annotations"]["endpoints.kubernetes.io/over-capacity"]
                            == json!("truncated") =>
                {
                    Ok(())
                }
                Some(e) => Err(format!(
                    "{} addresses, annotations {}",
                    address_count(e, "addresses"),
                    e["metadata"]["annotations"]
                )),
                None => Err("no Endpoints".into()),
            }
        });
    })
    .await
    .expect("checks");
}
