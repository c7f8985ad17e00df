//! Authorization through the real HTTPS server: the node agents' generated kubeconfigs get
//! exactly their upstream roles, `--token-auth-file` users get discovery only unless they are
//! in system:masters, and every refusal is upstream's 403 Status.

use http::Request;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use portico_apiserver::testing::TestServer;
use serde_json::json;

async fn client_from(path: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

/// A client that sends `token` to the server `ts`.
async fn client_with_token(ts: &TestServer, token: &str) -> kube::Client {
    let mut kc = kube::config::Kubeconfig::read_from(&ts.kubeconfig_path).expect("kubeconfig");
    for user in kc.auth_infos.iter_mut() {
        if let Some(auth) = user.auth_info.as_mut() {
            auth.token = Some(token.to_string().into());
        }
    }
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(cfg).expect("client")
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"ports": [{"port": 80}]}}))
    .expect("service")
}

fn forbidden(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert_eq!(status.reason, "Forbidden");
            status
        }
        other => panic!("want a 403 Status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agents_get_their_upstream_roles() {
    let ts = TestServer::start().await.expect("server");
    Api::<Service>::namespaced(ts.client.clone(), "default")
        .create(&PostParams::default(), &service("web"))
        .await
        .expect("admin creates");

    let proxy = client_from(&ts.data_dir().join("kube-proxy.kubeconfig")).await;
    let services = Api::<Service>::all(proxy.clone());
    let listed = services.list(&ListParams::default()).await.expect("list");
    assert!(
        listed
            .items
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("web"))
    );
    Api::<Node>::all(proxy.clone())
        .list(&ListParams::default())
        .await
        .expect("the proxy reads nodes");
    let err = Api::<Service>::namespaced(proxy.clone(), "default")
        .create(&PostParams::default(), &service("sneaky"))
        .await
        .expect_err("the proxy must not create services");
    assert_eq!(
        forbidden(err).message,
        "services is forbidden: User \"system:kube-proxy\" cannot create resource \"services\" in API group \"\" in the namespace \"default\""
    );
    let err = Api::<Service>::namespaced(proxy.clone(), "default")
        .get("web")
        .await
        .expect_err("node-proxier has no get on services");
    assert_eq!(
        forbidden(err).message,
        "services \"web\" is forbidden: User \"system:kube-proxy\" cannot get resource \"services\" in API group \"\" in the namespace \"default\""
    );

    let dns = client_from(&ts.data_dir().join("dns.kubeconfig")).await;
    Api::<Pod>::all(dns.clone())
        .list(&ListParams::default())
        .await
        .expect("DNS lists pods");
    let err = Api::<Node>::all(dns.clone())
        .list(&ListParams::default())
        .await
        .expect_err("DNS has no rights on nodes");
    assert_eq!(
        forbidden(err).message,
        "nodes is forbidden: User \"system:portico-dns\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
    );
    // Metrics are for admins (upstream's system:monitoring).
    let req = Request::builder()
        .uri("/metrics")
        .body(Vec::new())
        .expect("request");
    match dns.request_text(req).await.expect_err("metrics refused") {
        kube::Error::Api(s) => assert_eq!(
            s.message,
            "forbidden: User \"system:portico-dns\" cannot get path \"/metrics\""
        ),
        other => panic!("{other:?}"),
    }

    // The generated tokens survive a restart: a kubeconfig handed to a node stays valid.
    let before = std::fs::read_to_string(ts.data_dir().join("component-tokens.csv"))
        .expect("component tokens");
    let copy = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        ts.data_dir().join("component-tokens.csv"),
        copy.path().join("component-tokens.csv"),
    )
    .expect("copy");
    ts.stop().await;
    let ts = TestServer::start_with(|a| {
        a.data_dir = copy.path().to_path_buf();
    })
    .await
    .expect("restart on kept tokens");
    let after = std::fs::read_to_string(copy.path().join("component-tokens.csv")).expect("tokens");
    assert_eq!(before, after);
    let proxy = client_from(&copy.path().join("kube-proxy.kubeconfig")).await;
    Api::<Service>::all(proxy)
        .list(&ListParams::default())
        .await
        .expect("same token after restart");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_file_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens.csv");
    std::fs::write(
        &file,
        "# users\nalice-token,alice,1001,\"dev,qa\"\nroot-token,root,0,system:masters\n",
    )
    .expect("write");
    let ts = TestServer::start_with(|a| a.token_auth_file = Some(file.clone()))
        .await
        .expect("server");

    let alice = client_with_token(&ts, "alice-token").await;
    assert_eq!(
        alice.apiserver_version().await.expect("discovery").minor,
        "33"
    );
    let err = Api::<Service>::namespaced(alice.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect_err("alice has no rights on services");
    let status = forbidden(err);
    assert_eq!(
        status.message,
        "services is forbidden: User \"alice\" cannot list resource \"services\" in API group \"\" in the namespace \"default\""
    );

    let root = client_with_token(&ts, "root-token").await;
    Api::<Service>::namespaced(root, "default")
        .create(&PostParams::default(), &service("by-root"))
        .await
        .expect("system:masters may do anything");

    // An unknown token is 401, not 403.
    let stranger = client_with_token(&ts, "nobody-knows-this").await;
    match stranger.apiserver_version().await.expect_err("401") {
        kube::Error::Api(s) => assert_eq!(s.code, 401),
        other => panic!("{other:?}"),
    }
    ts.stop().await;

    // A malformed file stops start-up with a message that names the line.
    std::fs::write(&file, "ok,user,1\nbroken-line\n").expect("write");
    let err = match TestServer::start_with(|a| a.token_auth_file = Some(file.clone())).await {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("a malformed token file must stop start-up"),
    };
    assert!(
        err.contains("--token-auth-file") && err.contains("line 2"),
        "{err}"
    );
}
