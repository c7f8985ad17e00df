//! The shared conformance suite against a real etcd (`/usr/bin/etcd`, Debian `etcd-server`).
//! Fails, never skips, when etcd is missing.

use std::sync::Arc;

use portico_store::Store;
use portico_store::etcd::EtcdStore;
use portico_store::testing::{EtcdProcess, conformance_suite};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_passes_conformance_suite() {
    let etcd = EtcdProcess::start();
    let store: Arc<dyn Store> = EtcdStore::connect(&etcd.endpoints(), "/portico-test")
        .await
        .expect("connect to etcd");
    conformance_suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_without_key_prefix_passes_conformance_suite() {
    let etcd = EtcdProcess::start();
    let store: Arc<dyn Store> = EtcdStore::connect(&etcd.endpoints(), "")
        .await
        .expect("connect to etcd");
    conformance_suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_connect_fails_cleanly_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        EtcdStore::connect(&[format!("http://127.0.0.1:{port}")], "/x"),
    )
    .await
    .expect("connect gives up in time");
    assert!(result.is_err());
}
