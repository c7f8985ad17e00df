//! LIST from the store (consistent reads) and from the watch cache (`resourceVersion=0`):
//! the same items, selectors, pagination and per-item resourceVersions on both paths.

use std::time::Duration;

use http::Request;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use portico_apiserver::testing::TestServer;
use serde_json::{Value, json};

async fn get_json(ts: &TestServer, path: &str) -> Value {
    let req = Request::builder()
        .method("GET")
        .uri(path)
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = ts.client.send(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&body).unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_cache_lists_agree() {
    let ts = TestServer::start().await.unwrap();
    let nss: Api<Namespace> = Api::all(ts.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap(),
    )
    .await
    .unwrap();
    // (namespace, name, app label, node)
    let pods = [
        ("default", "a", Some("web"), "n1"),
        ("default", "b", Some("db"), "n2"),
        ("default", "c", None, "n1"),
        ("other", "d", Some("web"), "n2"),
    ];
    let mut created = Vec::new();
    for (ns, name, app, node) in pods {
        let api: Api<Pod> = Api::namespaced(ts.client.clone(), ns);
        let mut labels = serde_json::Map::new();
        if let Some(app) = app {
            labels.insert("app".into(), json!(app));
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}
        }))
        .unwrap();
        created.push(api.create(&PostParams::default(), &pod).await.unwrap());
    }
    let last_rv = created
        .last()
        .and_then(|p| p.metadata.resource_version.clone())
        .unwrap();

    // The cache catches up asynchronously.
    for _ in 0..100 {
        let l = get_json(&ts, "/api/v1/pods?resourceVersion=0").await;
        if l["items"].as_array().unwrap().len() == pods.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let cases: &[(&str, &str, &[&str])] = &[
        (
            "/api/v1/pods",
            "",
            &["default/a", "default/b", "default/c", "other/d"],
        ),
        (
            "/api/v1/namespaces/default/pods",
            "",
            &["default/a", "default/b", "default/c"],
        ),
        (
            "/api/v1/pods",
            "labelSelector=app%3Dweb",
            &["default/a", "other/d"],
        ),
        ("/api/v1/pods", "labelSelector=!app", &["default/c"]),
        (
            "/api/v1/namespaces/default/pods",
            "labelSelector=app+in+(web,db)",
            &["default/a", "default/b"],
        ),
        (
            "/api/v1/pods",
            "fieldSelector=spec.nodeName%3Dn2",
            &["default/b", "other/d"],
        ),
        (
            "/api/v1/pods",
            "fieldSelector=metadata.namespace%3Dother",
            &["other/d"],
        ),
        (
            "/api/v1/pods",
            "fieldSelector=spec.nodeName%3Dn1&labelSelector=app",
            &["default/a"],
        ),
        (
            "/api/v1/namespaces/other/pods",
            "fieldSelector=metadata.name%3Da",
            &[],
        ),
    ];
    for (path, query, want) in cases {
        for rv in ["", "resourceVersion=0"] {
            let q = [*query, rv]
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("&");
            let url = format!("{path}?{q}");
            let list = get_json(&ts, &url).await;
            assert_eq!(names(&list), *want, "{url}");
            assert_eq!(list["kind"], "PodList", "{url}");
            assert_eq!(list["apiVersion"], "v1", "{url}");
            let list_rv: i64 = list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(list_rv >= last_rv.parse::<i64>().unwrap(), "{url}");
            // Every item is exactly what GET returns.
            for item in list["items"].as_array().unwrap() {
                let one = get_json(
                    &ts,
                    &format!(
                        "/api/v1/namespaces/{}/pods/{}",
                        item["metadata"]["namespace"].as_str().unwrap(),
                        item["metadata"]["name"].as_str().unwrap()
                    ),
                )
                .await;
                assert_eq!(item, &one, "{url}");
            }
        }
    }

    // Pagination from the store: every item once, in order, then no continue token.
    let mut seen = Vec::new();
    let mut url = "/api/v1/pods?limit=1&labelSelector=app".to_string();
    loop {
        let page = get_json(&ts, &url).await;
        seen.extend(names(&page));
        match page["metadata"]["continue"].as_str() {
            Some(c) => url = format!("/api/v1/pods?limit=1&labelSelector=app&continue={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["default/a", "default/b", "other/d"]);

    // Tables are built per row on both paths.
    for rv in ["", "&resourceVersion=0"] {
        let req = Request::builder()
            .method("GET")
            .uri(format!(
                "/api/v1/namespaces/default/pods?labelSelector=app{rv}"
            ))
            .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .body(kube::client::Body::empty())
            .unwrap();
        let resp = ts.client.send(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let table: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(table["kind"], "Table");
        let rows: Vec<&str> = table["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["cells"][0].as_str().unwrap())
            .collect();
        assert_eq!(rows, ["a", "b"], "{rv}");
    }
}

/// A LIST without a limit reads the store in pages; every object comes back once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_list_spans_store_pages() {
    let ts = TestServer::start().await.unwrap();
    let api: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(ts.client.clone(), "default");
    let count = 1_234;
    let mut want = Vec::new();
    for i in 0..count {
        let name = format!("e-{i:05}");
        let e = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &e).await.unwrap();
        want.push(format!("default/{name}"));
    }
    let list = get_json(&ts, "/api/v1/namespaces/default/endpoints").await;
    let got = names(&list);
    // The `kubernetes` Endpoints may exist beside ours.
    let ours: Vec<String> = got
        .into_iter()
        .filter(|n| n.starts_with("default/e-"))
        .collect();
    assert_eq!(ours, want);
    assert!(list["metadata"]["continue"].is_null());
}

/// A LIST without resourceVersion always sees every write acknowledged before it, whether
/// the store or an up-to-date cache answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_list_reads_its_writes() {
    let ts = TestServer::start().await.unwrap();
    let api: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(ts.client.clone(), "default");
    for i in 0..60 {
        let name = format!("w-{i:03}");
        let e = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        let created = api.create(&PostParams::default(), &e).await.unwrap();
        if i % 3 == 0 {
            // Let the cache catch up sometimes, so both answers are exercised.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let list = get_json(&ts, "/api/v1/namespaces/default/endpoints").await;
        let got = names(&list);
        assert!(got.contains(&format!("default/{name}")), "{name}: {got:?}");
        let list_rv: i64 = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let rv: i64 = created.metadata.resource_version.unwrap().parse().unwrap();
        assert!(list_rv >= rv);
    }
}
