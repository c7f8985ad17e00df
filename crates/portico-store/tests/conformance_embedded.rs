//! The shared conformance suite against the embedded backend.

use std::sync::Arc;

use portico_store::Store;
use portico_store::embedded::EmbeddedStore;
use portico_store::testing::conformance_suite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    conformance_suite(store).await;
}

#[tokio::test(flavor = "current_thread")]
async fn embedded_store_passes_conformance_suite_on_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    conformance_suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_embedded_store_helper_gives_a_fresh_store() {
    let (_dir, store) = portico_store::testing::temp_embedded_store();
    assert_eq!(store.current_revision().await.unwrap(), 1);
}
