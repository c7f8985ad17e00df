//! Property test: random transactions, deletes, compactions and reopens against the embedded
//! backend agree with a simple model (a BTreeMap per revision) on get, list and watch.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use portico_store::embedded::{EmbeddedOptions, EmbeddedStore};
use portico_store::testing::next_batch;
use portico_store::{Compare, Error, Event, EventKind, KeyValue, Op, Revision, Store};
use proptest::prelude::*;

const KEYS: &[&str] = &["/p/a", "/p/aa", "/p/b", "/p/c", "/q/a", "/p"];
const PREFIX: &str = "/p/";

#[derive(Clone, Debug)]
enum Expect {
    /// The key's actual mod revision (the compare holds).
    Current,
    Absent,
    Wrong(Revision),
}

#[derive(Clone, Debug)]
enum Action {
    Txn {
        compares: Vec<(usize, Expect)>,
        /// Key index → new value (`None` deletes). Distinct keys, as etcd requires.
        ops: BTreeMap<usize, Option<u8>>,
    },
    /// Compacts at a point between the compacted and the current revision (per mille).
    Compact(u16),
    Reopen,
    Check {
        start_after: Option<usize>,
        limit: usize,
        /// Which revision to list and watch from (per mille between compacted and current).
        at: u16,
    },
}

fn action() -> impl Strategy<Value = Action> {
    let expect = prop_oneof![
        3 => Just(Expect::Current),
        2 => Just(Expect::Absent),
        1 => (1i64..40).prop_map(Expect::Wrong),
    ];
    let txn = (
        prop::collection::vec((0..KEYS.len(), expect), 0..3),
        prop::collection::btree_map(
            0..KEYS.len(),
            prop::option::weighted(0.75, any::<u8>()),
            0..4,
        ),
    )
        .prop_map(|(compares, ops)| Action::Txn { compares, ops });
    prop_oneof![
        8 => txn,
        1 => (0u16..=1000).prop_map(Action::Compact),
        1 => Just(Action::Reopen),
        3 => (prop::option::of(0..KEYS.len()), 0usize..4, 0u16..=1000)
            .prop_map(|(start_after, limit, at)| Action::Check { start_after, limit, at }),
    ]
}

/// The model: every revision's full state, and every revision's events.
struct Model {
    states: Vec<BTreeMap<String, KeyValue>>,
    batches: Vec<(Revision, Vec<Event>)>,
    compacted: Revision,
}

impl Model {
    fn new() -> Self {
        // Index = revision - 1; revision 1 is the empty store.
        Self {
            states: vec![BTreeMap::new()],
            batches: Vec::new(),
            compacted: 0,
        }
    }
    fn revision(&self) -> Revision {
        self.states.len() as Revision
    }
    fn latest(&self) -> &BTreeMap<String, KeyValue> {
        self.states.last().unwrap()
    }
    fn mod_revision(&self, key: &str) -> Revision {
        self.latest()
            .get(key)
            .map(|kv| kv.mod_revision)
            .unwrap_or(0)
    }
    fn pick(&self, per_mille: u16) -> Revision {
        let low = self.compacted.max(1);
        low + (self.revision() - low) * Revision::from(per_mille) / 1000
    }
}

fn open(path: &Path) -> Arc<dyn Store> {
    let options = EmbeddedOptions {
        ring_capacity: 4,
        broadcast_capacity: 2,
        compaction_step: 3,
        // Every reopen replays the write-ahead log, as after a crash.
        checkpoint_on_close: false,
        ..EmbeddedOptions::default()
    };
    for _ in 0..250 {
        match EmbeddedStore::open_with(path, options.clone()) {
            Ok(store) => return store,
            // The previous handle's writer thread is still letting go of the file.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    panic!("could not reopen {}", path.display());
}

async fn run(actions: Vec<Action>) {
    let dir = tempfile::tempdir().unwrap();
    let mut path = dir.path().join("model-0.redb");
    let mut store = open(&path);
    let mut generation = 0;
    let mut model = Model::new();
    for action in actions {
        match action {
            Action::Txn { compares, ops } => apply_txn(&store, &mut model, compares, ops).await,
            Action::Compact(per_mille) => {
                let at = model.pick(per_mille);
                store.compact(at).await.unwrap();
                model.compacted = model.compacted.max(at);
            }
            Action::Reopen => {
                // Copy the files while the store is still running: what is on disk now is
                // what a `kill -9` would leave. Opening the copy replays the write-ahead log.
                generation += 1;
                let copy = dir.path().join(format!("model-{generation}.redb"));
                crash_copy(&path, &copy);
                drop(store);
                path = copy;
                store = open(&path);
            }
            Action::Check {
                start_after,
                limit,
                at,
            } => {
                check(
                    &store,
                    &model,
                    start_after.map(|i| KEYS[i]),
                    limit,
                    model.pick(at),
                )
                .await
            }
        }
        // Point reads always match the latest state.
        for key in KEYS {
            assert_eq!(
                store.get(key).await.unwrap().as_ref(),
                model.latest().get(*key)
            );
        }
        assert_eq!(store.current_revision().await.unwrap(), model.revision());
    }
    check(&store, &model, None, 0, model.pick(0)).await;
    // Once more without the in-memory ring: everything from disk.
    drop(store);
    let store = open(&path);
    check(&store, &model, None, 0, model.pick(0)).await;
}

fn crash_copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let wal = |path: &Path| {
        let mut name = path.as_os_str().to_owned();
        name.push("-wal");
        std::path::PathBuf::from(name)
    };
    std::fs::copy(wal(from), wal(to)).unwrap();
}

async fn apply_txn(
    store: &Arc<dyn Store>,
    model: &mut Model,
    compares: Vec<(usize, Expect)>,
    ops: BTreeMap<usize, Option<u8>>,
) {
    let compares: Vec<Compare> = compares
        .into_iter()
        .map(|(index, expect)| {
            let key = KEYS[index];
            let revision = match expect {
                Expect::Current => model.mod_revision(key),
                Expect::Absent => 0,
                Expect::Wrong(revision) => revision,
            };
            Compare::ModRevision(key.to_string(), revision)
        })
        .collect();
    let holds = compares
        .iter()
        .all(|Compare::ModRevision(key, revision)| model.mod_revision(key) == *revision);
    let store_ops: Vec<Op> = ops
        .iter()
        .map(|(index, value)| match value {
            Some(value) => Op::Put(KEYS[*index].to_string(), Bytes::from(vec![*value])),
            None => Op::Delete(KEYS[*index].to_string()),
        })
        .collect();
    let response = store.txn(compares, store_ops).await.unwrap();
    assert_eq!(response.succeeded, holds);
    if holds {
        let next = model.revision() + 1;
        let mut state = model.latest().clone();
        let mut events = Vec::new();
        for (index, value) in ops {
            let key = KEYS[index].to_string();
            let prev = state.get(&key).cloned();
            match value {
                Some(value) => {
                    let kv = KeyValue {
                        key: key.clone(),
                        value: Bytes::from(vec![value]),
                        create_revision: prev.as_ref().map(|p| p.create_revision).unwrap_or(next),
                        mod_revision: next,
                    };
                    state.insert(key, kv.clone());
                    events.push(Event {
                        kind: EventKind::Put,
                        kv,
                        prev,
                    });
                }
                None => {
                    if prev.is_some() {
                        state.remove(&key);
                        let kv = KeyValue {
                            key,
                            value: Bytes::new(),
                            create_revision: 0,
                            mod_revision: next,
                        };
                        events.push(Event {
                            kind: EventKind::Delete,
                            kv,
                            prev,
                        });
                    }
                }
            }
        }
        if !events.is_empty() {
            model.states.push(state);
            model.batches.push((next, events));
        }
    }
    assert_eq!(response.revision, model.revision());
}

async fn check_watch(store: &Arc<dyn Store>, model: &Model, after: Revision) {
    let mut watch = store.watch(PREFIX, after).await.unwrap();
    for (revision, events) in &model.batches {
        let matching: Vec<Event> = events
            .iter()
            .filter(|event| event.kv.key.starts_with(PREFIX))
            .cloned()
            .collect();
        if *revision <= after || matching.is_empty() {
            continue;
        }
        assert_eq!(
            next_batch(&mut watch).await.unwrap(),
            matching,
            "watch after {after}"
        );
    }
}

async fn check(
    store: &Arc<dyn Store>,
    model: &Model,
    start_after: Option<&str>,
    limit: usize,
    at: Revision,
) {
    // List at `at` (latest when it is current) with paging.
    let state = &model.states[(at - 1) as usize];
    let expected: Vec<&KeyValue> = state
        .range::<str, _>((
            std::ops::Bound::Included(PREFIX),
            std::ops::Bound::Unbounded,
        ))
        .map(|(_, kv)| kv)
        .take_while(|kv| kv.key.starts_with(PREFIX))
        .filter(|kv| start_after.is_none_or(|after| kv.key.as_str() > after))
        .collect();
    let revision = (at != model.revision()).then_some(at);
    let listed = store
        .list(PREFIX, start_after, limit, revision)
        .await
        .unwrap();
    let want: Vec<&KeyValue> = if limit == 0 {
        expected.clone()
    } else {
        expected.iter().take(limit).copied().collect()
    };
    assert_eq!(listed.kvs.iter().collect::<Vec<_>>(), want, "list at {at}");
    assert_eq!(listed.more, limit > 0 && expected.len() > limit);
    assert_eq!(listed.revision, at);
    if model.compacted > 1 {
        assert!(matches!(
            store.list(PREFIX, None, 0, Some(model.compacted - 1)).await,
            Err(Error::Compacted { .. })
        ));
    }

    // Watches from `at` and from the oldest allowed revision replay the model's later batches.
    check_watch(store, model, at.max(model.compacted - 1)).await;
    check_watch(store, model, (model.compacted - 1).max(0)).await;
    if model.compacted > 2 {
        let early = store.watch(PREFIX, model.compacted - 2).await;
        let compacted = match early {
            Err(error) => Some(error),
            Ok(mut watch) => next_batch(&mut watch).await.err(),
        };
        assert!(
            matches!(compacted, Some(Error::Compacted { .. })),
            "{compacted:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn embedded_store_agrees_with_model(actions in prop::collection::vec(action(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(actions));
    }
}
