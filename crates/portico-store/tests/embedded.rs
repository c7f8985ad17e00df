//! Behaviour specific to the embedded backend: lagging watchers, persistence across reopen,
//! automatic compaction, shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use portico_store::embedded::{EmbeddedOptions, EmbeddedStore};
use portico_store::testing::{first_watch_error, next_batch, put};
use portico_store::{CompactionPolicy, Error, Store, spawn_auto_compaction};

fn small_buffers() -> EmbeddedOptions {
    EmbeddedOptions {
        ring_capacity: 8,
        broadcast_capacity: 4,
        ..EmbeddedOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_catches_up_from_disk_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open_with(&dir.path().join("s.redb"), small_buffers()).unwrap();
    let store: Arc<dyn Store> = embedded;
    let mut watch = store.watch("/lag/", 1).await.unwrap();
    // The watcher reads nothing while 300 transactions commit: it falls far behind the
    // broadcast (4) and the ring (8), and the writer must not wait for it.
    for i in 0..300 {
        put(&store, &format!("/lag/k{}", i % 7), &i.to_string()).await;
    }
    let mut expected = 2;
    while expected <= 301 {
        let batch = next_batch(&mut watch).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].kv.mod_revision, expected);
        if expected > 8 {
            let prev = batch[0].prev.as_ref().expect("prev value");
            assert_eq!(prev.mod_revision, expected - 7);
        }
        expected += 1;
    }
    // And it keeps following live writes afterwards.
    let r = put(&store, "/lag/live", "x").await;
    assert_eq!(next_batch(&mut watch).await.unwrap()[0].kv.mod_revision, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_behind_compaction_ends_with_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        EmbeddedStore::open_with(&dir.path().join("s.redb"), small_buffers()).unwrap();
    let mut watch = store.watch("/lag/", 1).await.unwrap();
    for i in 0..100 {
        put(&store, &format!("/lag/k{}", i % 3), "v").await;
    }
    store.compact(60).await.unwrap();
    match next_batch(&mut watch).await {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (1, 60)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the stream ends after Compacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_history_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store: Arc<dyn Store> = EmbeddedStore::open(&path).unwrap();
        for i in 0..20 {
            put(&store, &format!("/p/k{}", i % 4), &i.to_string()).await;
        }
        store.compact(10).await.unwrap();
        put(&store, "/p/last", "x").await;
    }
    // The writer thread lets go of the file shortly after the last handle is dropped.
    let mut reopened = None;
    for _ in 0..100 {
        match EmbeddedStore::open(&path) {
            Ok(store) => {
                reopened = Some(store);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let embedded = reopened.expect("reopen");
    assert_eq!(embedded.compacted_revision(), 10);
    let store: Arc<dyn Store> = embedded;
    assert_eq!(store.current_revision().await.unwrap(), 22);
    let at_12 = store.list("/p/", None, 0, Some(12)).await.unwrap();
    let values: Vec<&[u8]> = at_12.kvs.iter().map(|kv| &kv.value[..]).collect();
    assert_eq!(values, vec![&b"8"[..], b"9", b"10", b"7"]);
    assert!(matches!(
        store.list("/p/", None, 0, Some(9)).await,
        Err(Error::Compacted { .. })
    ));
    let mut watch = store.watch("/p/", 20).await.unwrap();
    let batch = next_batch(&mut watch).await.unwrap();
    assert_eq!(batch[0].kv.mod_revision, 21);
    assert_eq!(put(&store, "/p/next", "y").await, 23);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_keeps_recent_history() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    let store: Arc<dyn Store> = embedded.clone();
    for i in 0..30 {
        put(&store, "/auto/k", &i.to_string()).await;
    }
    let task = spawn_auto_compaction(
        store.clone(),
        CompactionPolicy {
            interval: Duration::from_millis(50),
            keep_revisions: 5,
        },
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while embedded.compacted_revision() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no compaction ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    assert_eq!(
        embedded.compacted_revision(),
        26,
        "keeps the last 5 revisions"
    );
    assert!(matches!(
        first_watch_error(&store, "/auto/", 2).await,
        Some(Error::Compacted { .. })
    ));
    let latest = store.get("/auto/k").await.unwrap().unwrap();
    assert_eq!(&latest.value[..], b"29");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_end_when_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
    let mut watch = store.watch("/", 1).await.unwrap();
    drop(store);
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("watch ends");
    assert!(ended.is_none());
}
