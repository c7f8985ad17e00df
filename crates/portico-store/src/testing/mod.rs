//! Shared test support: the conformance suite every [`Store`] backend must pass, and a
//! throwaway etcd process. Used by this crate's tests and by other crates' end-to-end tests.
//! Must not: be used by production code paths.
//!
//! The suite panics on the first violation (it is meant to run inside `#[tokio::test]`).
//! Run [`conformance_suite`] on a fresh, otherwise unused store: it checks absolute revisions.

mod etcd_process;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

pub use self::etcd_process::{DEFAULT_ETCD_BIN, EtcdProcess};
use crate::{Compare, Error, Event, EventKind, Op, Revision, Store, WatchStream};

const WAIT: Duration = Duration::from_secs(10);

/// Runs every check below on one fresh store, in an order that keeps them independent
/// (each uses its own key prefix; compaction runs last).
pub async fn conformance_suite(store: Arc<dyn Store>) {
    check_revisions_start_at_one(&store).await;
    check_get_and_list(&store, "/conf/list/").await;
    check_list_at_revision(&store, "/conf/history/").await;
    check_compare_and_swap(&store, "/conf/cas/").await;
    check_delete(&store, "/conf/delete/").await;
    check_watch_from_revision(&store, "/conf/watch/").await;
    check_concurrent_cas(&store, "/conf/race/", 8, 5).await;
    check_compaction(&store, "/conf/compact/").await;
}

/// A fresh embedded store in a temporary directory (removed when the guard drops; keep the
/// guard alive as long as the store).
pub fn temp_embedded_store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = crate::embedded::EmbeddedStore::open(&dir.path().join("store.redb"))
        .expect("open embedded store");
    (dir, store)
}

/// Puts one key unconditionally and returns the new revision.
pub async fn put(store: &Arc<dyn Store>, key: &str, value: &str) -> Revision {
    let response = store
        .txn(
            vec![],
            vec![Op::Put(key.to_string(), Bytes::from(value.to_string()))],
        )
        .await
        .expect("put");
    assert!(response.succeeded, "unconditional put of {key} failed");
    response.revision
}

/// Deletes one key unconditionally and returns the store revision afterwards.
pub async fn delete(store: &Arc<dyn Store>, key: &str) -> Revision {
    let response = store
        .txn(vec![], vec![Op::Delete(key.to_string())])
        .await
        .expect("delete");
    assert!(response.succeeded);
    response.revision
}

/// The next batch of a watch, failing the test after a timeout.
pub async fn next_batch(watch: &mut WatchStream) -> Result<Vec<Event>, Error> {
    match tokio::time::timeout(WAIT, watch.next()).await {
        Ok(Some(batch)) => batch,
        Ok(None) => panic!("watch ended unexpectedly"),
        Err(_) => panic!("no watch event within {WAIT:?}"),
    }
}

/// Asserts that no batch arrives within a short time.
pub async fn assert_quiet(watch: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

fn text(value: &Bytes) -> &str {
    std::str::from_utf8(value).unwrap_or("<binary>")
}

fn keys_and_values(kvs: &[crate::KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value).to_string()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A fresh store is at revision 1; every writing transaction adds exactly one; failed or
/// no-op transactions add nothing.
pub async fn check_revisions_start_at_one(store: &Arc<dyn Store>) {
    assert_eq!(
        store.current_revision().await.unwrap(),
        1,
        "fresh store revision"
    );
    assert_eq!(put(store, "/conf/rev/a", "1").await, 2);
    assert_eq!(put(store, "/conf/rev/b", "1").await, 3);
    // Two writes in one transaction are one revision.
    let both = store
        .txn(
            vec![],
            vec![
                Op::Put("/conf/rev/c".into(), Bytes::from_static(b"1")),
                Op::Put("/conf/rev/d".into(), Bytes::from_static(b"1")),
            ],
        )
        .await
        .unwrap();
    assert!(both.succeeded);
    assert_eq!(both.revision, 4);
    let failed = store
        .txn(
            vec![Compare::ModRevision("/conf/rev/a".into(), 99)],
            vec![Op::Put("/conf/rev/a".into(), Bytes::from_static(b"2"))],
        )
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(
        failed.revision, 4,
        "a failed txn reports the unchanged revision"
    );
    // Deleting a missing key succeeds and changes nothing, as in etcd.
    assert_eq!(delete(store, "/conf/rev/missing").await, 4);
    assert_eq!(store.current_revision().await.unwrap(), 4);
    let a = store.get("/conf/rev/a").await.unwrap().expect("a exists");
    assert_eq!((a.create_revision, a.mod_revision), (2, 2));
    let c = store.get("/conf/rev/c").await.unwrap().expect("c exists");
    assert_eq!((c.create_revision, c.mod_revision), (4, 4));
}

/// Point reads, prefix lists in byte order, `start_after`, `limit` and `more`.
pub async fn check_get_and_list(store: &Arc<dyn Store>, prefix: &str) {
    for name in ["c", "a", "d", "b"] {
        put(store, &format!("{prefix}{name}"), name).await;
    }
    // Keys that share the prefix's bytes but not the prefix must not appear.
    let sibling = format!("{}x", prefix.trim_end_matches('/'));
    put(store, &sibling, "sibling").await;
    let current = store.current_revision().await.unwrap();

    let k = |name: &str| format!("{prefix}{name}");
    let all = store.list(prefix, None, 0, None).await.unwrap();
    assert_eq!(
        keys_and_values(&all.kvs),
        pairs(&[
            (&k("a"), "a"),
            (&k("b"), "b"),
            (&k("c"), "c"),
            (&k("d"), "d")
        ])
    );
    assert_eq!(all.revision, current);
    assert!(!all.more);

    let cases: &[(Option<&str>, usize, &[&str], bool)] = &[
        (None, 2, &["a", "b"], true),
        (None, 4, &["a", "b", "c", "d"], false),
        (None, 10, &["a", "b", "c", "d"], false),
        (Some("b"), 0, &["c", "d"], false),
        (Some("b"), 1, &["c"], true),
        (Some("b"), 2, &["c", "d"], false),
        (Some("d"), 0, &[], false),
        (Some("bb"), 0, &["c", "d"], false),
    ];
    for (after, limit, expected, more) in cases {
        let after_key = after.map(&k);
        let page = store
            .list(prefix, after_key.as_deref(), *limit, None)
            .await
            .unwrap();
        let names: Vec<String> = page.kvs.iter().map(|kv| kv.key.clone()).collect();
        let expected: Vec<String> = expected.iter().map(|name| k(name)).collect();
        assert_eq!(names, expected, "list after {after:?} limit {limit}");
        assert_eq!(page.more, *more, "more after {after:?} limit {limit}");
    }
    // A `start_after` before the prefix starts at the prefix.
    let before = store.list(prefix, Some("/"), 1, None).await.unwrap();
    assert_eq!(before.kvs[0].key, k("a"));

    // The empty prefix lists everything, still in byte order.
    let everything = store.list("", None, 0, None).await.unwrap();
    assert!(everything.kvs.iter().any(|kv| kv.key == k("a")));
    assert!(everything.kvs.iter().any(|kv| kv.key == sibling));
    assert!(everything.kvs.windows(2).all(|w| w[0].key < w[1].key));

    let empty = store
        .list("/conf/nothing-here/", None, 0, None)
        .await
        .unwrap();
    assert!(empty.kvs.is_empty() && !empty.more);

    assert_eq!(store.get(&k("zz")).await.unwrap(), None);
    let a = store.get(&k("a")).await.unwrap().expect("a");
    assert_eq!(a.value, Bytes::from_static(b"a"));
    assert_eq!(a.create_revision, a.mod_revision);
    let updated = put(store, &k("a"), "a2").await;
    let a2 = store.get(&k("a")).await.unwrap().expect("a");
    assert_eq!(a2.value, Bytes::from_static(b"a2"));
    assert_eq!(a2.mod_revision, updated);
    assert_eq!(a2.create_revision, a.create_revision);
}

/// Lists at old revisions see the state of that revision; future revisions are refused.
pub async fn check_list_at_revision(store: &Arc<dyn Store>, prefix: &str) {
    let k1 = format!("{prefix}k1");
    let k2 = format!("{prefix}k2");
    let r1 = put(store, &k1, "v1").await;
    let r2 = put(store, &k2, "w1").await;
    let r3 = put(store, &k1, "v2").await;
    let r4 = delete(store, &k2).await;
    let r5 = put(store, &k2, "w2").await;
    let expectations: &[(Revision, &[(&str, &str)])] = &[
        (r1, &[(&k1, "v1")]),
        (r2, &[(&k1, "v1"), (&k2, "w1")]),
        (r3, &[(&k1, "v2"), (&k2, "w1")]),
        (r4, &[(&k1, "v2")]),
        (r5, &[(&k1, "v2"), (&k2, "w2")]),
    ];
    for (revision, expected) in expectations {
        let listed = store.list(prefix, None, 0, Some(*revision)).await.unwrap();
        assert_eq!(
            keys_and_values(&listed.kvs),
            pairs(expected),
            "at {revision}"
        );
        assert_eq!(listed.revision, *revision);
    }
    let at_r2 = store.list(prefix, None, 1, Some(r2)).await.unwrap();
    assert_eq!(keys_and_values(&at_r2.kvs), pairs(&[(&k1, "v1")]));
    assert!(at_r2.more);
    let after_k1 = store.list(prefix, Some(&k1), 0, Some(r2)).await.unwrap();
    assert_eq!(keys_and_values(&after_k1.kvs), pairs(&[(&k2, "w1")]));
    // Old versions keep their own create and mod revisions.
    let old = store.list(prefix, None, 0, Some(r3)).await.unwrap();
    assert_eq!(
        (old.kvs[0].create_revision, old.kvs[0].mod_revision),
        (r1, r3)
    );
    assert_eq!(
        (old.kvs[1].create_revision, old.kvs[1].mod_revision),
        (r2, r2)
    );
    let recreated = store.list(prefix, None, 0, Some(r5)).await.unwrap();
    assert_eq!(recreated.kvs[1].create_revision, r5);

    let future = store.list(prefix, None, 0, Some(r5 + 1000)).await;
    assert!(
        matches!(future, Err(Error::FutureRevision(_))),
        "future revision: {future:?}"
    );
}

/// Compare-and-swap on mod revisions, `0` meaning absent; a failed compare writes nothing.
pub async fn check_compare_and_swap(store: &Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}obj");
    let other = format!("{prefix}other");
    let create = |value: &'static str| {
        (
            vec![Compare::ModRevision(key.clone(), 0)],
            vec![Op::Put(key.clone(), Bytes::from_static(value.as_bytes()))],
        )
    };
    let (compares, ops) = create("v1");
    let created = store.txn(compares, ops).await.unwrap();
    assert!(created.succeeded, "create when absent");
    let (compares, ops) = create("v1-again");
    let again = store.txn(compares, ops).await.unwrap();
    assert!(!again.succeeded, "create when present must fail");
    assert_eq!(again.revision, created.revision);

    let update = |expected: Revision, value: &'static str| {
        store.txn(
            vec![Compare::ModRevision(key.clone(), expected)],
            vec![Op::Put(key.clone(), Bytes::from_static(value.as_bytes()))],
        )
    };
    let updated = update(created.revision, "v2").await.unwrap();
    assert!(updated.succeeded);
    assert_eq!(updated.revision, created.revision + 1);
    let stale = update(created.revision, "v3").await.unwrap();
    assert!(!stale.succeeded, "stale compare must fail");
    assert_eq!(
        store.get(&key).await.unwrap().map(|kv| kv.value),
        Some(Bytes::from_static(b"v2"))
    );

    // Several compares: one failing blocks every op, including writes to other keys.
    let mixed = store
        .txn(
            vec![
                Compare::ModRevision(key.clone(), updated.revision),
                Compare::ModRevision(other.clone(), 12345),
            ],
            vec![
                Op::Put(key.clone(), Bytes::from_static(b"v4")),
                Op::Put(other.clone(), Bytes::from_static(b"x")),
            ],
        )
        .await
        .unwrap();
    assert!(!mixed.succeeded);
    assert_eq!(store.get(&other).await.unwrap(), None);
    let both = store
        .txn(
            vec![
                Compare::ModRevision(key.clone(), updated.revision),
                Compare::ModRevision(other.clone(), 0),
            ],
            vec![
                Op::Put(key.clone(), Bytes::from_static(b"v4")),
                Op::Put(other.clone(), Bytes::from_static(b"x")),
            ],
        )
        .await
        .unwrap();
    assert!(both.succeeded);
    assert_eq!(both.revision, updated.revision + 1);

    let guarded_delete = |expected: Revision| {
        store.txn(
            vec![Compare::ModRevision(key.clone(), expected)],
            vec![Op::Delete(key.clone())],
        )
    };
    assert!(!guarded_delete(updated.revision).await.unwrap().succeeded);
    let deleted = guarded_delete(both.revision).await.unwrap();
    assert!(deleted.succeeded);
    assert_eq!(deleted.revision, both.revision + 1);
    assert_eq!(store.get(&key).await.unwrap(), None);
    // Two writes to one key in one transaction are refused (etcd: "duplicate key").
    let duplicate = store
        .txn(
            vec![],
            vec![
                Op::Put(other.clone(), Bytes::from_static(b"1")),
                Op::Put(other.clone(), Bytes::from_static(b"2")),
            ],
        )
        .await;
    assert!(duplicate.is_err(), "duplicate keys: {duplicate:?}");
    assert_eq!(store.current_revision().await.unwrap(), deleted.revision);

    let (compares, ops) = create("v5");
    let recreated = store.txn(compares, ops).await.unwrap();
    assert!(recreated.succeeded, "create after delete");
    let kv = store.get(&key).await.unwrap().expect("recreated");
    assert_eq!(kv.create_revision, recreated.revision);
}

/// Deletes remove the key from reads; deleting a missing key is a successful no-op.
pub async fn check_delete(store: &Arc<dyn Store>, prefix: &str) {
    let a = format!("{prefix}a");
    let b = format!("{prefix}b");
    put(store, &a, "1").await;
    let before = put(store, &b, "1").await;
    let after = delete(store, &a).await;
    assert_eq!(after, before + 1);
    assert_eq!(store.get(&a).await.unwrap(), None);
    let listed = store.list(prefix, None, 0, None).await.unwrap();
    assert_eq!(keys_and_values(&listed.kvs), pairs(&[(&b, "1")]));
    assert_eq!(
        delete(store, &a).await,
        after,
        "second delete changes nothing"
    );
    assert_eq!(store.current_revision().await.unwrap(), after);
}

/// A watch from a revision replays exactly the later changes under its prefix, one batch per
/// transaction, with previous values, then follows live changes.
pub async fn check_watch_from_revision(store: &Arc<dyn Store>, prefix: &str) {
    let a = format!("{prefix}a");
    let b = format!("{prefix}b");
    let outside = format!("{}-outside/x", prefix.trim_end_matches('/'));
    let start = store.current_revision().await.unwrap();
    let r1 = store
        .txn(
            vec![],
            vec![
                Op::Put(a.clone(), Bytes::from_static(b"a1")),
                Op::Put(b.clone(), Bytes::from_static(b"b1")),
            ],
        )
        .await
        .unwrap()
        .revision;
    put(store, &outside, "ignored").await;
    let r2 = put(store, &a, "a2").await;
    let r3 = delete(store, &b).await;

    let mut watch = store.watch(prefix, start).await.unwrap();
    let first = next_batch(&mut watch).await.unwrap();
    assert_eq!(first.len(), 2, "one batch per transaction: {first:?}");
    for (event, (key, value)) in first.iter().zip([(&a, "a1"), (&b, "b1")]) {
        assert_eq!(event.kind, EventKind::Put);
        assert_eq!(&event.kv.key, key);
        assert_eq!(text(&event.kv.value), value);
        assert_eq!((event.kv.create_revision, event.kv.mod_revision), (r1, r1));
        assert_eq!(event.prev, None);
    }
    let second = next_batch(&mut watch).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].kind, EventKind::Put);
    assert_eq!(second[0].kv.mod_revision, r2);
    assert_eq!(second[0].kv.create_revision, r1);
    let prev = second[0].prev.as_ref().expect("update carries prev");
    assert_eq!(
        (text(&prev.value), prev.mod_revision, prev.create_revision),
        ("a1", r1, r1)
    );
    let third = next_batch(&mut watch).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].kind, EventKind::Delete);
    assert_eq!(third[0].kv.key, b);
    assert_eq!(third[0].kv.mod_revision, r3);
    assert!(third[0].kv.value.is_empty());
    let prev = third[0].prev.as_ref().expect("delete carries prev");
    assert_eq!((text(&prev.value), prev.mod_revision), ("b1", r1));
    assert_quiet(&mut watch).await;

    // Live changes follow the replay.
    let r4 = put(store, &b, "b2").await;
    let live = next_batch(&mut watch).await.unwrap();
    assert_eq!(
        (live.len(), live[0].kv.mod_revision, live[0].prev.clone()),
        (1, r4, None)
    );

    // A watch from a later revision starts after it.
    let mut later = store.watch(prefix, r2).await.unwrap();
    let revisions: Vec<Revision> = [
        next_batch(&mut later).await.unwrap(),
        next_batch(&mut later).await.unwrap(),
    ]
    .iter()
    .map(|batch| batch[0].kv.mod_revision)
    .collect();
    assert_eq!(revisions, vec![r3, r4]);
    assert_quiet(&mut later).await;

    // A watch from now sees only new changes.
    let mut fresh = store.watch(prefix, r4).await.unwrap();
    assert_quiet(&mut fresh).await;
    let r5 = put(store, &a, "a3").await;
    let batch = next_batch(&mut fresh).await.unwrap();
    assert_eq!(batch[0].kv.mod_revision, r5);
    assert_eq!(batch[0].prev.as_ref().map(|kv| kv.mod_revision), Some(r2));
}

/// `tasks` writers race a compare-and-swap on one key for `rounds` rounds: exactly one wins
/// each round and its value is what the key holds afterwards.
pub async fn check_concurrent_cas(
    store: &Arc<dyn Store>,
    prefix: &str,
    tasks: usize,
    rounds: usize,
) {
    let key = format!("{prefix}contended");
    put(store, &key, "start").await;
    for round in 0..rounds {
        let seen = store.get(&key).await.unwrap().expect("key").mod_revision;
        let mut handles = Vec::new();
        for task in 0..tasks {
            let store = store.clone();
            let key = key.clone();
            handles.push(tokio::spawn(async move {
                let value = format!("round {round} task {task}");
                let response = store
                    .txn(
                        vec![Compare::ModRevision(key.clone(), seen)],
                        vec![Op::Put(key, Bytes::from(value.clone()))],
                    )
                    .await
                    .expect("txn");
                response.succeeded.then_some((value, response.revision))
            }));
        }
        let mut winners = Vec::new();
        for handle in handles {
            if let Some(won) = handle.await.expect("task") {
                winners.push(won);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let (value, revision) = &winners[0];
        let now = store.get(&key).await.unwrap().expect("key");
        assert_eq!(text(&now.value), value);
        assert_eq!(now.mod_revision, *revision);
        assert_eq!(*revision, seen + 1);
    }
}

/// Compaction: reads below the compacted revision and watches that need that history fail
/// with `Compacted`; the latest state and later history stay readable.
pub async fn check_compaction(store: &Arc<dyn Store>, prefix: &str) {
    let k = |name: &str| format!("{prefix}{name}");
    let r1 = put(store, &k("a"), "a1").await;
    let r2 = put(store, &k("a"), "a2").await;
    let r3 = put(store, &k("b"), "b1").await;
    delete(store, &k("a")).await;
    let compact_at = put(store, &k("c"), "c1").await;
    let r6 = put(store, &k("b"), "b2").await;
    store.compact(compact_at).await.unwrap();
    // Compacting again at or below is harmless.
    store.compact(r2).await.unwrap();

    for old in [r1, r2, r3, compact_at - 1] {
        match store.list(prefix, None, 0, Some(old)).await {
            Err(Error::Compacted {
                requested,
                compacted,
            }) => {
                assert_eq!((requested, compacted), (old, compact_at), "list at {old}");
            }
            other => panic!("list at compacted revision {old}: {other:?}"),
        }
    }
    let at = store.list(prefix, None, 0, Some(compact_at)).await.unwrap();
    assert_eq!(
        keys_and_values(&at.kvs),
        pairs(&[(&k("b"), "b1"), (&k("c"), "c1")])
    );
    let latest = store.list(prefix, None, 0, None).await.unwrap();
    assert_eq!(
        keys_and_values(&latest.kvs),
        pairs(&[(&k("b"), "b2"), (&k("c"), "c1")])
    );

    for after in [0, r1, compact_at - 2] {
        let error = first_watch_error(store, prefix, after).await;
        assert!(
            matches!(error, Some(Error::Compacted { .. })),
            "watch after {after}: {error:?}"
        );
    }
    // History from the compacted revision on is still there.
    let mut watch = store.watch(prefix, compact_at - 1).await.unwrap();
    let batch = next_batch(&mut watch).await.unwrap();
    assert_eq!(
        (batch[0].kv.key.as_str(), batch[0].kv.mod_revision),
        (k("c").as_str(), compact_at)
    );
    let batch = next_batch(&mut watch).await.unwrap();
    assert_eq!(batch[0].kv.mod_revision, r6);
    assert_eq!(batch[0].prev.as_ref().map(|kv| kv.mod_revision), Some(r3));

    let future = store.compact(r6 + 1000).await;
    assert!(
        matches!(future, Err(Error::FutureRevision(_))),
        "{future:?}"
    );
    // Writes keep working after compaction.
    let r7 = put(store, &k("d"), "d1").await;
    assert_eq!(r7, store.current_revision().await.unwrap());
}

/// The error a watch from `after` fails with, at once or as its first item.
pub async fn first_watch_error(
    store: &Arc<dyn Store>,
    prefix: &str,
    after: Revision,
) -> Option<Error> {
    match store.watch(prefix, after).await {
        Err(error) => Some(error),
        Ok(mut watch) => match tokio::time::timeout(WAIT, watch.next()).await {
            Ok(Some(Err(error))) => Some(error),
            _ => None,
        },
    }
}
