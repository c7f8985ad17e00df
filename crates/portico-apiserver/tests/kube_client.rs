//! In-process tests through the real kube-rs client: create, get, list, watch, patch, delete.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use portico_apiserver::testing::TestServer;
use serde_json::json;

fn svc(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_watch_patch_delete() {
    let ts = TestServer::start().await.unwrap();
    let api: Api<Service> = Api::namespaced(ts.client.clone(), "default");

    let created = api
        .create(&PostParams::default(), &svc("web"))
        .await
        .unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(
        created.spec.as_ref().unwrap().type_.as_deref(),
        Some("ClusterIP")
    );

    let got = api.get("web").await.unwrap();
    assert_eq!(got.metadata.resource_version.as_deref(), Some(rv1.as_str()));

    let list = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let list_rv = list.metadata.resource_version.clone().unwrap();
    assert!(
        api.list(&ListParams::default().labels("app=other"))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let mut stream = api
        .watch(&WatchParams::default(), &list_rv)
        .await
        .unwrap()
        .boxed();
    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "fe"}}})),
        )
        .await
        .unwrap();
    assert_ne!(
        patched.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Modified(s) => assert_eq!(s.metadata.labels.unwrap()["tier"], "fe"),
        other => panic!("unexpected {other:?}"),
    }

    // A no-op patch keeps the resourceVersion.
    let again = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "fe"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        patched.metadata.resource_version
    );

    // Stale resourceVersion → 409.
    let mut stale = created.clone();
    stale
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("x".into(), "y".into());
    let err = api
        .replace("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("the object has been modified"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }

    api.delete("web", &DeleteParams::default()).await.unwrap();
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(ev, WatchEvent::Deleted(_)), "{ev:?}");
    match api.get("web").await.unwrap_err() {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.message, "services \"web\" not found");
        }
        other => panic!("{other:?}"),
    }
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_exist_and_missing_namespace_is_404() {
    let ts = TestServer::start().await.unwrap();
    let nss: Api<Namespace> = Api::all(ts.client.clone());
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for n in ["default", "kube-system", "kube-public"] {
        assert!(names.contains(&n.to_string()), "{names:?}");
    }
    let api: Api<Service> = Api::namespaced(ts.client.clone(), "nope");
    match api
        .create(&PostParams::default(), &svc("a"))
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.message, "namespaces \"nope\" not found");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_runtime_watcher_sees_objects() {
    use kube::runtime::{WatchStreamExt, watcher};
    let ts = TestServer::start().await.unwrap();
    let api: Api<Service> = Api::namespaced(ts.client.clone(), "default");
    api.create(&PostParams::default(), &svc("one"))
        .await
        .unwrap();
    let mut s = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), s.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("one"));
    api.create(&PostParams::default(), &svc("two"))
        .await
        .unwrap();
    let second = tokio::time::timeout(std::time::Duration::from_secs(5), s.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.metadata.name.as_deref(), Some("two"));
}
