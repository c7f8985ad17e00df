//! End-to-end tests: the real API server in-process (`portico_apiserver::testing`), the
//! controllers talking to it only through `kube::Client`, and pods whose status is patched the
//! way a kubelet would. Everything listens on 127.0.0.1 with port 0.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use portico_apiserver::testing::TestServer;
use portico_controllers::{Options, lb::pool::Pools};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(30);

struct Controllers {
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

impl Controllers {
    async fn start(client: &Client, opts: Options) -> Controllers {
        init_logs();
        let shutdown = CancellationToken::new();
        let handle = portico_controllers::start(client.clone(), opts, shutdown.clone())
            .await
            .expect("start controllers");
        Controllers {
            shutdown,
            handle: Some(handle),
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the API server, failing fast instead of hanging if it never becomes ready.
async fn start_server() -> TestServer {
    tokio::time::timeout(Duration::from_secs(60), TestServer::start())
        .await
        .expect("TestServer::start did not finish within 60 s")
        .expect("test server")
}

/// Polls `check` until it returns `Some`, or fails after `WAIT`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn service_json(name: &str, extra: serde_json::Value) -> Service {
    let mut v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "labels": {"team": "blue"}},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("service json")
}

fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

async fn create_node(client: &Client, name: &str, zone: &str) {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}
    }))
    .expect("node json");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
}

/// Creates a pod and patches its status like a kubelet: IP, Running, Ready.
async fn run_pod(client: &Client, name: &str, app: &str, ip: &str, port: i32, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app", "ports": [{"name": "web", "containerPort": port}]}]}
    }))
    .expect("pod json");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    set_ready(client, name, ip, ready).await;
}

async fn set_ready(client: &Client, name: &str, ip: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now}]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch pod status");
}

async fn slices_of(client: &Client, service: &str) -> Vec<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let mut items = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .expect("list slices")
        .items;
    items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    items
}

fn ready_addresses(slices: &[EndpointSlice]) -> Vec<String> {
    let mut out: Vec<String> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.clone())
        .collect();
    out.sort();
    out
}

async fn endpoints_of(client: &Client, name: &str) -> Option<Endpoints> {
    Api::<Endpoints>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .expect("get endpoints")
}

fn endpoint_ips(e: &Endpoints) -> (Vec<String>, Vec<String>) {
    let mut ready: Vec<String> = e
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect();
    let mut not_ready: Vec<String> = e
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.not_ready_addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect();
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_and_endpoints_follow_pods() {
    let server = start_server().await;
    let client = server.client.clone();
    let controllers = Controllers::start(&client, Options::default()).await;
    create_node(&client, "node-a", "zone-a").await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    services
        .create(&PostParams::default(), &service_json("web", json!({})))
        .await
        .expect("create service");

    // No pods yet: one placeholder slice, no endpoints.
    let placeholder = eventually("placeholder slice", || async {
        let s = slices_of(&client, "web").await;
        (s.len() == 1 && s[0].endpoints.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(
        placeholder[0].metadata.generate_name.as_deref(),
        Some("web-")
    );

    run_pod(&client, "web-1", "web", "10.244.0.1", 8080, true).await;
    run_pod(&client, "web-2", "web", "10.244.0.2", 8080, true).await;
    run_pod(&client, "web-3", "web", "10.244.0.3", 8081, false).await;

    let slices = eventually("two slices (one per named-port value)", || async {
        let s = slices_of(&client, "web").await;
        (s.len() == 2 && s.iter().map(|x| x.endpoints.len()).sum::<usize>() == 3).then_some(s)
    })
    .await;
    // The placeholder was reused rather than deleted and recreated.
    assert!(
        slices
            .iter()
            .any(|s| s.metadata.name == placeholder[0].metadata.name)
    );
    for s in &slices {
        let labels = s.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("endpointslice-controller.k8s.io")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("blue"));
        assert!(
            s.metadata
                .annotations
                .clone()
                .unwrap_or_default()
                .contains_key("endpoints.kubernetes.io/last-change-trigger-time")
        );
        for e in &s.endpoints {
            assert_eq!(e.zone.as_deref(), Some("zone-a"));
            assert_eq!(e.node_name.as_deref(), Some("node-a"));
        }
    }
    assert_eq!(ready_addresses(&slices), vec!["10.244.0.1", "10.244.0.2"]);
    let ports: BTreeMap<i32, usize> = slices
        .iter()
        .map(|s| {
            (
                s.ports.as_ref().unwrap()[0].port.unwrap(),
                s.endpoints.len(),
            )
        })
        .collect();
    assert_eq!(ports, BTreeMap::from([(8080, 2), (8081, 1)]));

    let endpoints = eventually("Endpoints", || async {
        let e = endpoints_of(&client, "web").await?;
        (endpoint_ips(&e).0.len() == 2 && endpoint_ips(&e).1.len() == 1).then_some(e)
    })
    .await;
    assert_eq!(
        endpoint_ips(&endpoints),
        (
            vec!["10.244.0.1".into(), "10.244.0.2".into()],
            vec!["10.244.0.3".into()]
        )
    );

    // Graceful delete: the endpoint stays, marked terminating; Endpoints drops it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.delete(
        "web-1",
        &DeleteParams {
            grace_period_seconds: Some(30),
            ..Default::default()
        },
    )
    .await
    .expect("delete pod");
    eventually("terminating endpoint", || async {
        let s = slices_of(&client, "web").await;
        s.iter()
            .flat_map(|x| x.endpoints.iter())
            .find(|e| e.addresses == ["10.244.0.1"])
            .filter(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                c.terminating == Some(true) && c.ready == Some(false) && c.serving == Some(true)
            })
            .map(|_| ())
    })
    .await;
    eventually("Endpoints without the terminating pod", || async {
        let e = endpoints_of(&client, "web").await?;
        (endpoint_ips(&e).0 == vec!["10.244.0.2".to_string()]).then_some(())
    })
    .await;

    // Deleting the Service removes its slices and Endpoints.
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete service");
    eventually("slices gone", || async {
        slices_of(&client, "web").await.is_empty().then_some(())
    })
    .await;
    eventually("Endpoints gone", || async {
        endpoints_of(&client, "web").await.is_none().then_some(())
    })
    .await;
    controllers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_truncated_above_1000_pods() {
    let server = start_server().await;
    let client = server.client.clone();
    let controllers = Controllers::start(
        &client,
        Options {
            endpoint_updates_batch_period: Duration::from_millis(200),
            ..Options::default()
        },
    )
    .await;
    create_node(&client, "node-a", "zone-a").await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    services
        .create(
            &PostParams::default(),
            &service_json(
                "many",
                json!({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            ),
        )
        .await
        .expect("create service");
    futures::stream::iter(0..1001)
        .map(|i| {
            let client = client.clone();
            async move {
                run_pod(
                    &client,
                    &format!("many-{i:04}"),
                    "many",
                    &format!("10.244.{}.{}", i / 250, i % 250 + 1),
                    8080,
                    true,
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let endpoints = eventually("truncated Endpoints", || async {
        let e = endpoints_of(&client, "many").await?;
        let annotated = e
            .metadata
            .annotations
            .as_ref()?
            .get("endpoints.kubernetes.io/over-capacity")
            .map(String::as_str)
            == Some("truncated");
        annotated.then_some(e)
    })
    .await;
    assert_eq!(endpoint_ips(&endpoints).0.len(), 1000);
    let slices = eventually("1001 endpoints in slices of at most 100", || async {
        let s = slices_of(&client, "many").await;
        (s.iter().map(|x| x.endpoints.len()).sum::<usize>() == 1001).then_some(s)
    })
    .await;
    // At least 11; more when pods arrive over several syncs, because upstream's reconciler does
    // not rewrite an unchanged slice only to top it up unless all the rest fits into it.
    assert!(slices.len() >= 11, "{} slices", slices.len());
    assert!(slices.iter().all(|s| s.endpoints.len() <= 100));

    // Back to 1000: the annotation is removed.
    Api::<Pod>::namespaced(client.clone(), NS)
        .delete(
            "many-0000",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("delete");
    eventually("annotation removed", || async {
        let e = endpoints_of(&client, "many").await?;
        (!e.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key("endpoints.kubernetes.io/over-capacity"))
        .then_some(())
    })
    .await;
    controllers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_of_user_endpoints() {
    let server = start_server().await;
    let client = server.client.clone();
    let controllers = Controllers::start(&client, Options::default()).await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ext", "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    let eps: Endpoints = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "ext", "namespace": NS, "labels": {"source": "user"}},
        "subsets": [
            {"addresses": [{"ip": "192.0.2.1"}], "ports": [{"name": "http", "port": 80}]},
            {"addresses": [{"ip": "192.0.2.1"}], "ports": [{"name": "https", "port": 443}]}
        ]
    }))
    .unwrap();
    let endpoints_api: Api<Endpoints> = Api::namespaced(client.clone(), NS);
    endpoints_api
        .create(&PostParams::default(), &eps)
        .await
        .expect("create endpoints");
    let slices = eventually("mirrored slice", || async {
        let s = slices_of(&client, "ext").await;
        (s.len() == 1).then_some(s)
    })
    .await;
    let slice = &slices[0];
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("endpointslicemirroring-controller.k8s.io")
    );
    assert_eq!(labels.get("source").map(String::as_str), Some("user"));
    let mut ports: Vec<String> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        vec!["http", "https"],
        "the same IP in two subsets becomes one slice with both ports"
    );
    assert_eq!(ready_addresses(&slices), vec!["192.0.2.1"]);

    // A user-made slice of the selectorless Service is left alone.
    let user_slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "ext-manual", "namespace": NS, "labels": {"kubernetes.io/service-name": "ext", "endpointslice.kubernetes.io/managed-by": "someone-else"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.50"]}],
        "ports": [{"name": "http", "port": 80}]
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &user_slice)
        .await
        .expect("user slice");

    // Opting out removes the mirrored slice, and only that.
    let patch =
        json!({"metadata": {"labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}});
    endpoints_api
        .patch("ext", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label endpoints");
    eventually("mirrored slice removed", || async {
        let s = slices_of(&client, "ext").await;
        (s.len() == 1 && s[0].metadata.name.as_deref() == Some("ext-manual")).then_some(())
    })
    .await;
    controllers.stop().await;
}

async fn service_status(
    client: &Client,
    name: &str,
) -> Option<k8s_openapi::api::core::v1::ServiceStatus> {
    Api::<Service>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .ok()?
        .status
}

fn lb_ips(status: &k8s_openapi::api::core::v1::ServiceStatus) -> Vec<(String, String)> {
    status
        .load_balancer
        .as_ref()
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.ip.unwrap_or_default(), i.ip_mode.unwrap_or_default()))
        .collect()
}

fn condition(
    status: &k8s_openapi::api::core::v1::ServiceStatus,
) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == portico_controllers::lb::CONDITION_TYPE)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_addresses_from_the_pool() {
    let server = start_server().await;
    let client = server.client.clone();
    let pools: Pools = "192.0.2.10-192.0.2.11".parse().unwrap();
    let controllers = Controllers::start(
        &client,
        Options {
            load_balancer_pools: pools,
            ..Options::default()
        },
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let lb = |name: &str, extra: serde_json::Value| {
        let mut base = json!({"spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
        merge(&mut base, extra);
        service_json(name, base)
    };
    services
        .create(&PostParams::default(), &lb("lb-a", json!({})))
        .await
        .expect("create lb-a");
    let status = eventually("lb-a address", || async {
        let s = service_status(&client, "lb-a").await?;
        (!lb_ips(&s).is_empty()).then_some(s)
    })
    .await;
    assert_eq!(
        lb_ips(&status),
        vec![("192.0.2.10".to_string(), "VIP".to_string())]
    );
    assert_eq!(
        condition(&status).map(|c| (c.0, c.1)),
        Some(("True".into(), "Assigned".into()))
    );

    // A requested address already taken is refused with a reason.
    services
        .create(
            &PostParams::default(),
            &lb("lb-b", json!({"spec": {"loadBalancerIP": "192.0.2.10"}})),
        )
        .await
        .expect("create lb-b");
    let status = eventually("lb-b condition", || async {
        condition(&service_status(&client, "lb-b").await?)
    })
    .await;
    assert_eq!(
        (status.0.as_str(), status.1.as_str()),
        ("False", "AddressInUse")
    );
    assert!(
        status.2.contains("192.0.2.10") && status.2.contains("default/lb-a"),
        "{}",
        status.2
    );

    // Another class is somebody else's.
    services
        .create(
            &PostParams::default(),
            &lb(
                "lb-other",
                json!({"spec": {"loadBalancerClass": "example.com/lb"}}),
            ),
        )
        .await
        .expect("create lb-other");
    // The requested free address is honoured; then the pool is exhausted.
    services
        .create(
            &PostParams::default(),
            &lb("lb-c", json!({"spec": {"loadBalancerIP": "192.0.2.11"}})),
        )
        .await
        .expect("create lb-c");
    eventually("lb-c address", || async {
        let s = service_status(&client, "lb-c").await?;
        (lb_ips(&s) == vec![("192.0.2.11".to_string(), "VIP".to_string())]).then_some(())
    })
    .await;
    services
        .create(&PostParams::default(), &lb("lb-d", json!({})))
        .await
        .expect("create lb-d");
    let cond = eventually("lb-d exhausted", || async {
        condition(&service_status(&client, "lb-d").await?)
    })
    .await;
    assert_eq!(
        (cond.0.as_str(), cond.1.as_str()),
        ("False", "PoolExhausted")
    );
    let events = eventually("Warning event on lb-d", || async {
        let list = Api::<Event>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await
            .ok()?;
        let found: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some("lb-d")
                    && e.reason.as_deref() == Some("PoolExhausted")
            })
            .collect();
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));

    // Changing lb-a's type frees its address, which the waiting lb-d then gets.
    services
        .patch(
            "lb-a",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .expect("type change");
    eventually("lb-a cleared", || async {
        let s = service_status(&client, "lb-a").await?;
        (lb_ips(&s).is_empty() && condition(&s).is_none()).then_some(())
    })
    .await;
    eventually("lb-d or lb-b got 192.0.2.10", || async {
        let d = service_status(&client, "lb-d").await?;
        let b = service_status(&client, "lb-b").await?;
        (lb_ips(&d).len() + lb_ips(&b).len() == 1).then_some(())
    })
    .await;
    let other = service_status(&client, "lb-other")
        .await
        .unwrap_or_default();
    assert!(
        lb_ips(&other).is_empty() && condition(&other).is_none(),
        "other classes are left alone"
    );
    controllers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_makes_no_duplicates_and_no_churn() {
    let server = start_server().await;
    let client = server.client.clone();
    let controllers = Controllers::start(&client, Options::default()).await;
    create_node(&client, "node-a", "zone-a").await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    services
        .create(&PostParams::default(), &service_json("rs", json!({})))
        .await
        .expect("create service");
    futures::stream::iter(0..150)
        .map(|i| {
            let client = client.clone();
            async move {
                run_pod(
                    &client,
                    &format!("rs-{i:03}"),
                    "rs",
                    &format!("10.244.1.{}", i + 1),
                    8080,
                    true,
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let before = eventually("150 endpoints", || async {
        let s = slices_of(&client, "rs").await;
        (ready_addresses(&s).len() == 150).then_some(s)
    })
    .await;
    assert_eq!(before.len(), 2);
    // Stop half-way through a change, then restart.
    controllers.stop().await;
    set_ready(&client, "rs-000", "10.244.1.1", false).await;
    let controllers = Controllers::start(&client, Options::default()).await;
    let after = eventually("the change applied after restart", || async {
        let s = slices_of(&client, "rs").await;
        (ready_addresses(&s).len() == 149).then_some(s)
    })
    .await;
    assert_eq!(after.len(), 2, "no duplicate slices");
    let changed: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b.metadata.resource_version != a.metadata.resource_version)
        .map(|(b, _)| b.metadata.name.clone())
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "exactly one slice rewritten for one pod change"
    );
    // A restart with nothing changed writes nothing.
    controllers.stop().await;
    let controllers = Controllers::start(&client, Options::default()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = slices_of(&client, "rs").await;
    let versions = |s: &[EndpointSlice]| {
        s.iter()
            .map(|x| (x.metadata.name.clone(), x.metadata.resource_version.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        versions(&again),
        versions(&after),
        "no churn after an idle restart"
    );
    let eps = endpoints_of(&client, "rs").await.expect("endpoints");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        endpoints_of(&client, "rs")
            .await
            .expect("endpoints")
            .metadata
            .resource_version,
        eps.metadata.resource_version
    );
    controllers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_service_with_two_apiservers() {
    let server = start_server().await;
    let client = server.client.clone();
    let controllers = Controllers::start(&client, Options::default()).await;
    let mk = |ip: &str| portico_controllers::KubernetesServiceOptions {
        interval: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(2),
        ..portico_controllers::KubernetesServiceOptions::new(
            ip.parse().unwrap(),
            server.addr.port(),
        )
    };
    let first = CancellationToken::new();
    let second = CancellationToken::new();
    let a = tokio::spawn(portico_controllers::reconcile_kubernetes_service_with(
        client.clone(),
        mk("127.0.0.1"),
        first.clone(),
    ));
    let b = tokio::spawn(portico_controllers::reconcile_kubernetes_service_with(
        client.clone(),
        mk("127.0.0.2"),
        second.clone(),
    ));
    let svc = eventually("kubernetes Service", || async {
        Api::<Service>::namespaced(client.clone(), NS)
            .get_opt("kubernetes")
            .await
            .ok()
            .flatten()
    })
    .await;
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("component").map(String::as_str),
        Some("apiserver")
    );
    assert_eq!(
        labels.get("provider").map(String::as_str),
        Some("kubernetes")
    );
    let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("https"), 443));
    eventually("both apiservers in Endpoints and EndpointSlice", || async {
        let e = endpoints_of(&client, "kubernetes").await?;
        let s = Api::<EndpointSlice>::namespaced(client.clone(), NS)
            .get_opt("kubernetes")
            .await
            .ok()??;
        let skip = e
            .metadata
            .labels
            .as_ref()?
            .get("endpointslice.kubernetes.io/skip-mirror")
            .map(String::as_str)
            == Some("true");
        (skip
            && endpoint_ips(&e).0 == vec!["127.0.0.1", "127.0.0.2"]
            && ready_addresses(&[s]) == vec!["127.0.0.1", "127.0.0.2"])
        .then_some(())
    })
    .await;
    // The second server stops: its address is withdrawn.
    second.cancel();
    let _ = b.await;
    eventually("one apiserver left", || async {
        let e = endpoints_of(&client, "kubernetes").await?;
        (endpoint_ips(&e).0 == vec!["127.0.0.1"]).then_some(())
    })
    .await;
    // Mirroring never copies the kubernetes Endpoints (skip-mirror).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slices = slices_of(&client, "kubernetes").await;
    assert_eq!(
        slices.len(),
        1,
        "only the reconciler's own slice: {slices:?}"
    );
    first.cancel();
    let _ = a.await;
    controllers.stop().await;
}

/// Regression: workers waited for the first informer sync without watching for shutdown, so
/// stopping right after start (before any sync) left `portico up` hanging until its grace ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_before_first_sync_stops_every_task() {
    let ts = TestServer::start().await.expect("server");
    let shutdown = CancellationToken::new();
    let handle =
        portico_controllers::start(ts.client.clone(), Options::default(), shutdown.clone())
            .await
            .expect("start");
    shutdown.cancel();
    // The bound only keeps a regression from hanging the suite; a healthy stop is immediate.
    tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .expect("every controller task stops after shutdown")
        .expect("join");
}
