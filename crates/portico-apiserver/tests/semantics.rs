//! Object semantics beyond CRUD: graceful pod deletion, finalizers, namespace termination,
//! watch resume/410/bookmarks/initial events, Tables, authentication.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use http::Request;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use portico_apiserver::testing::TestServer;
use serde_json::{Value, json};

async fn raw(ts: &TestServer, method: &str, path: &str, accept: &str) -> (u16, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("accept", accept)
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = ts.client.send(req).await.unwrap();
    let code = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    // Read at most a few frames (watches do not end by themselves).
    while let Ok(Some(frame)) = tokio::time::timeout(
        Duration::from_millis(700),
        http_body_util::BodyExt::frame(&mut body),
    )
    .await
    {
        if let Ok(f) = frame
            && let Ok(d) = f.into_data()
        {
            out.extend_from_slice(&d);
        }
    }
    (code, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_pods_and_finalizers() {
    let ts = TestServer::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(ts.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "finalizers": []}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]}})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.delete("p", &DeleteParams::default()).await.unwrap();
    let p = pods.get("p").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    pods.delete(
        "p",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(pods.get_opt("p").await.unwrap().is_none());

    let svcs: Api<Service> = Api::namespaced(ts.client.clone(), "default");
    let s: Service = serde_json::from_value(json!({"metadata": {"name": "f", "finalizers": ["example.com/hold"]}, "spec": {"ports": [{"port": 80}]}})).unwrap();
    svcs.create(&PostParams::default(), &s).await.unwrap();
    svcs.delete("f", &DeleteParams::default()).await.unwrap();
    assert!(
        svcs.get("f")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    svcs.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(svcs.get_opt("f").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_removes_contents() {
    let ts = TestServer::start().await.unwrap();
    let nss: Api<Namespace> = Api::all(ts.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    let svcs: Api<Service> = Api::namespaced(ts.client.clone(), "team");
    svcs.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let deleted = nss.delete("team", &DeleteParams::default()).await.unwrap();
    let ns = deleted.left().unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    for _ in 0..50 {
        if nss.get_opt("team").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(nss.get_opt("team").await.unwrap().is_none());
    assert!(
        svcs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_protocol() {
    let ts = TestServer::start().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(ts.client.clone(), "default");
    let mk = |n: &str| {
        serde_json::from_value::<Service>(json!({"metadata": {"name": n, "labels": {"app": n}}, "spec": {"ports": [{"port": 80}]}})).unwrap()
    };
    let a = svcs.create(&PostParams::default(), &mk("a")).await.unwrap();
    let rv_a: i64 = a.metadata.resource_version.unwrap().parse().unwrap();
    svcs.create(&PostParams::default(), &mk("b")).await.unwrap();

    // Resume from a's revision: only b arrives.
    let base = "/api/v1/namespaces/default/services";
    let (code, body) = raw(
        &ts,
        "GET",
        &format!("{base}?watch=true&resourceVersion={rv_a}"),
        "application/json",
    )
    .await;
    assert_eq!(code, 200);
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["object"]["metadata"]["name"], "b");

    // resourceVersion=0 with a field selector: synthetic ADDED for the match only.
    let (_, body) = raw(
        &ts,
        "GET",
        &format!("{base}?watch=1&resourceVersion=0&fieldSelector=metadata.name%3Da"),
        "application/json",
    )
    .await;
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["type"], "ADDED");

    // sendInitialEvents: ADDED for both, then the initial-events-end bookmark.
    let (_, body) = raw(&ts, "GET", &format!("{base}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"), "application/json").await;
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{body}");
    assert_eq!(events[2]["type"], "BOOKMARK");
    assert_eq!(
        events[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // Table watch: first event carries the column definitions.
    let t = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (_, body) = raw(&ts, "GET", &format!("{base}?watch=1&resourceVersion=0"), t).await;
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["object"]["kind"], "Table");
    assert!(
        events[0]["object"]["columnDefinitions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );
    assert!(events[1]["object"]["columnDefinitions"].is_null());

    // Table get and list.
    let (code, body) = raw(&ts, "GET", &format!("{base}?limit=1"), t).await;
    assert_eq!(code, 200);
    let table: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(table["rows"].as_array().unwrap().len(), 1);
    let cont = table["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, body) = raw(
        &ts,
        "GET",
        &format!("{base}?limit=1&continue={cont}"),
        "application/json",
    )
    .await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"][0]["metadata"]["name"], "b");

    // A too-old revision after compaction: 410.
    for i in 0..3 {
        svcs.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"i": i.to_string()}}})),
        )
        .await
        .unwrap();
    }
    let cur: i64 = svcs
        .get("a")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    ts.store().unwrap().compact(cur).await.unwrap();
    let (code, body) = raw(
        &ts,
        "GET",
        &format!("{base}?resourceVersion={rv_a}&resourceVersionMatch=Exact"),
        "application/json",
    )
    .await;
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("\"reason\":\"Expired\""), "{body}");

    // kube-rs watch with bookmarks from the list revision works.
    let list = svcs.list(&ListParams::default()).await.unwrap();
    let mut w = svcs
        .watch(
            &kube::api::WatchParams::default(),
            list.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    svcs.delete("b", &DeleteParams::default()).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(ev, kube::api::WatchEvent::Deleted(_)), "{ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication() {
    let ts = TestServer::start().await.unwrap();
    // No credentials: 401 except health endpoints; discovery and /version work with them.
    let kc = kube::config::Kubeconfig::read_from(&ts.kubeconfig_path).unwrap();
    let mut kc_anon = kc.clone();
    for u in kc_anon.auth_infos.iter_mut() {
        if let Some(a) = u.auth_info.as_mut() {
            a.token = None;
        }
    }
    let cfg = kube::Config::from_custom_kubeconfig(kc_anon, &Default::default())
        .await
        .unwrap();
    let anon = kube::Client::try_from(cfg).unwrap();
    let svcs: Api<Service> = Api::namespaced(anon.clone(), "default");
    match svcs.list(&ListParams::default()).await.unwrap_err() {
        kube::Error::Api(s) => assert_eq!(s.code, 401),
        other => panic!("{other:?}"),
    }
    let req = Request::builder().uri("/readyz").body(Vec::new()).unwrap();
    assert_eq!(anon.request_text(req).await.unwrap(), "ok");

    // Client-certificate kubeconfig works.
    let cert_kc =
        kube::config::Kubeconfig::read_from(ts.data_dir().join("kubeconfig-cert")).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(cert_kc, &Default::default())
        .await
        .unwrap();
    let by_cert = kube::Client::try_from(cfg).unwrap();
    let svcs: Api<Service> = Api::namespaced(by_cert, "default");
    svcs.list(&ListParams::default()).await.unwrap();

    // Discovery, version, metrics.
    let v = ts.client.apiserver_version().await.unwrap();
    assert_eq!(v.minor, "33");
    let req = Request::builder().uri("/metrics").body(Vec::new()).unwrap();
    let m = ts.client.request_text(req).await.unwrap();
    assert!(m.contains("apiserver_request_total{verb=\"LIST\""), "{m}");
    assert!(m.contains("apiserver_request_duration_seconds_bucket"));
}
