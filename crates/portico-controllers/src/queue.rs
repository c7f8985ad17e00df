//! A delaying, de-duplicating work queue like client-go's: a key is queued at most once, the
//! earliest due time wins, and a key is never handed to two workers at once (a key re-added
//! while being processed runs again after `done`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

struct Inner<K> {
    due: HashMap<K, Instant>,
    heap: BinaryHeap<Reverse<(Instant, u64, K)>>,
    processing: HashSet<K>,
    again: HashMap<K, Instant>,
    failures: HashMap<K, u32>,
    seq: u64,
}

pub(crate) struct WorkQueue<K> {
    inner: Mutex<Inner<K>>,
    notify: Notify,
}

impl<K: Clone + Eq + Hash + Ord> WorkQueue<K> {
    pub(crate) fn new() -> WorkQueue<K> {
        WorkQueue {
            inner: Mutex::new(Inner {
                due: HashMap::new(),
                heap: BinaryHeap::new(),
                processing: HashSet::new(),
                again: HashMap::new(),
                failures: HashMap::new(),
                seq: 0,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` to run after `delay` (or earlier if it is already queued sooner).
    pub(crate) fn add_after(&self, key: K, delay: Duration) {
        let at = Instant::now() + delay;
        let mut inner = self.lock();
        if inner.processing.contains(&key) {
            let slot = inner.again.entry(key).or_insert(at);
            if at < *slot {
                *slot = at;
            }
            return;
        }
        Self::push(&mut inner, key, at);
        drop(inner);
        self.notify.notify_one();
    }

    fn push(inner: &mut Inner<K>, key: K, at: Instant) {
        if inner.due.get(&key).is_some_and(|d| *d <= at) {
            return;
        }
        inner.due.insert(key.clone(), at);
        inner.seq += 1;
        let seq = inner.seq;
        inner.heap.push(Reverse((at, seq, key)));
    }

    pub(crate) fn add(&self, key: K) {
        self.add_after(key, Duration::ZERO);
    }

    /// Waits for the next due key and marks it as processing.
    pub(crate) async fn next(&self) -> K {
        loop {
            let notified = self.notify.notified();
            let wait = {
                let mut inner = self.lock();
                let now = Instant::now();
                let mut wait = None;
                while let Some(Reverse((at, _, key))) = inner.heap.peek().cloned() {
                    if inner.due.get(&key) != Some(&at) {
                        inner.heap.pop();
                        continue;
                    }
                    if at <= now {
                        inner.heap.pop();
                        inner.due.remove(&key);
                        inner.processing.insert(key.clone());
                        // Another worker may be able to take the next key.
                        if !inner.heap.is_empty() {
                            self.notify.notify_one();
                        }
                        return key;
                    }
                    wait = Some(at);
                    break;
                }
                wait
            };
            match wait {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` finished; `ok == false` re-queues it with exponential backoff.
    pub(crate) fn done(&self, key: K, ok: bool) {
        let mut inner = self.lock();
        inner.processing.remove(&key);
        if ok {
            inner.failures.remove(&key);
        } else {
            let n = inner.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            let delay = Duration::from_millis(50u64.saturating_mul(1u64 << (*n).min(14)))
                .min(Duration::from_secs(300));
            let at = Instant::now() + delay;
            let slot = inner.again.entry(key.clone()).or_insert(at);
            if at < *slot {
                *slot = at;
            }
        }
        if let Some(at) = inner.again.remove(&key) {
            Self::push(&mut inner, key, at);
        }
        drop(inner);
        self.notify.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let inner = self.lock();
        inner.due.len() + inner.processing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_orders_by_due_time() {
        let q = WorkQueue::new();
        q.add_after("b", Duration::from_millis(20));
        q.add_after("a", Duration::from_millis(10));
        q.add_after("b", Duration::from_millis(5));
        assert_eq!(q.next().await, "b");
        assert_eq!(q.next().await, "a");
        assert_eq!(q.len(), 2);
        q.done("a", true);
        q.done("b", true);
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn readded_while_processing_runs_after_done() {
        let q = WorkQueue::new();
        q.add("k");
        assert_eq!(q.next().await, "k");
        q.add("k");
        assert_eq!(q.len(), 1);
        q.done("k", true);
        assert_eq!(q.next().await, "k");
        q.done("k", false);
        let started = Instant::now();
        assert_eq!(q.next().await, "k");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
