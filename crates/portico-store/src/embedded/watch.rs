//! Watches on the embedded backend: replay from the in-memory ring or the on-disk log, then
//! follow the live broadcast. A watcher that lags behind the broadcast catches up from disk;
//! the writer never waits for it.
//! Must not: write to the database.

use std::collections::VecDeque;
use std::sync::Arc;

use redb::ReadableDatabase;
use tokio::sync::broadcast;

use super::codec::{EntryOp, decode_entry, unpack_history};
use super::{
    Batch, HISTORY, LOG, Shared, deleted_kv, internal, read_meta, read_row, to_rev, to_u64,
};
use crate::{Error, Event, EventKind, KeyValue, Result, Revision, WatchStream};

/// Most transactions read from disk per catch-up step, to bound a watcher's memory.
const REPLAY_CHUNK: Revision = 1024;

struct WatchState {
    shared: Arc<Shared>,
    prefix: String,
    /// The first revision not yet delivered (or skipped as not matching).
    next: Revision,
    /// Revisions up to here are committed and must be replayed before following `live`.
    catch_up_to: Revision,
    pending: VecDeque<Vec<Event>>,
    live: broadcast::Receiver<Arc<Batch>>,
    done: bool,
}

pub(super) fn open(
    shared: Arc<Shared>,
    prefix: &str,
    after_revision: Revision,
) -> Result<WatchStream> {
    let (live, catch_up_to) = {
        let hub = shared.hub();
        check_compacted(after_revision + 1, hub.compacted)?;
        let sender = hub
            .sender
            .as_ref()
            .ok_or_else(|| Error::Unavailable("embedded store writer stopped".to_string()))?;
        (sender.subscribe(), hub.revision)
    };
    let state = WatchState {
        shared,
        prefix: prefix.to_string(),
        next: after_revision.max(0) + 1,
        catch_up_to,
        pending: VecDeque::new(),
        live,
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(
        state,
        |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        },
    )))
}

/// Events from `from` on are needed; they exist unless compaction removed them.
fn check_compacted(from: Revision, compacted: Revision) -> Result<()> {
    if from < compacted {
        return Err(Error::Compacted {
            requested: from - 1,
            compacted,
        });
    }
    Ok(())
}

impl WatchState {
    async fn next_item(&mut self) -> Option<Result<Vec<Event>>> {
        loop {
            if let Some(events) = self.pending.pop_front() {
                return Some(Ok(events));
            }
            if self.done {
                return None;
            }
            if self.next <= self.catch_up_to {
                let to = self.catch_up_to.min(self.next + REPLAY_CHUNK - 1);
                match replay(self.shared.clone(), &self.prefix, self.next, to).await {
                    Ok(batches) => {
                        for batch in batches {
                            self.accept(&batch);
                        }
                        self.next = to + 1;
                    }
                    Err(error) => {
                        self.done = true;
                        return Some(Err(error));
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(batch) if batch.revision < self.next => {}
                Ok(batch) if batch.revision == self.next => {
                    self.accept(&batch);
                    self.next += 1;
                }
                // A gap means we missed something: it is committed, so read it from disk.
                Ok(batch) => self.catch_up_to = batch.revision,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.catch_up_to = self.shared.hub().revision;
                }
                Err(broadcast::error::RecvError::Closed) => self.done = true,
            }
        }
    }

    fn accept(&mut self, batch: &Batch) {
        let events: Vec<Event> = batch
            .events
            .iter()
            .filter(|event| event.kv.key.starts_with(&self.prefix))
            .cloned()
            .collect();
        if !events.is_empty() {
            self.pending.push_back(events);
        }
    }
}

/// The committed transactions with revisions in `from..=to`, from the ring when it still holds
/// them and from the log otherwise.
async fn replay(
    shared: Arc<Shared>,
    prefix: &str,
    from: Revision,
    to: Revision,
) -> Result<Vec<Arc<Batch>>> {
    {
        let hub = shared.hub();
        check_compacted(from, hub.compacted)?;
        if let Some(front) = hub.ring.front()
            && front.revision <= from
        {
            let skip = usize::try_from(from - front.revision).unwrap_or(usize::MAX);
            return Ok(hub
                .ring
                .iter()
                .skip(skip)
                .take_while(|batch| batch.revision <= to)
                .cloned()
                .collect());
        }
    }
    let prefix = prefix.to_string();
    tokio::task::spawn_blocking(move || read_batches(&shared, &prefix, from, to))
        .await
        .map_err(internal)?
}

/// Reads the log; only changes under `prefix` are decoded in full.
fn read_batches(
    shared: &Shared,
    prefix: &str,
    from: Revision,
    to: Revision,
) -> Result<Vec<Arc<Batch>>> {
    let txn = shared.db.begin_read().map_err(internal)?;
    let (_, compacted) = read_meta(&txn)?;
    check_compacted(from, compacted)?;
    let log = txn.open_table(LOG).map_err(internal)?;
    let history = txn.open_table(HISTORY).map_err(internal)?;
    let mut batches: Vec<Batch> = Vec::new();
    for item in log
        .range((to_u64(from), 0)..=(to_u64(to), u32::MAX))
        .map_err(internal)?
    {
        let (key, value) = item.map_err(internal)?;
        let (revision, _) = key.value();
        let revision = to_rev(revision);
        let entry = decode_entry(value.value())?;
        if !entry.key.starts_with(prefix) {
            continue;
        }
        let prev = if entry.prev_mod_revision > 0 {
            let prev_mod = to_u64(entry.prev_mod_revision);
            let packed = history
                .get((entry.key.as_str(), prev_mod))
                .map_err(internal)?
                .map(|guard| guard.value())
                .ok_or_else(|| Error::Internal(format!("history of {:?} missing", entry.key)))?;
            let (row, _) = unpack_history(packed);
            let prev_entry = read_row(&log, prev_mod, row)?;
            Some(KeyValue {
                key: entry.key.clone(),
                value: prev_entry.value,
                create_revision: prev_entry.create_revision,
                mod_revision: entry.prev_mod_revision,
            })
        } else {
            None
        };
        let event = match entry.op {
            EntryOp::Put => Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: entry.key,
                    value: entry.value,
                    create_revision: entry.create_revision,
                    mod_revision: revision,
                },
                prev,
            },
            EntryOp::Delete => Event {
                kind: EventKind::Delete,
                kv: deleted_kv(&entry.key, revision),
                prev,
            },
        };
        match batches.last_mut() {
            Some(batch) if batch.revision == revision => batch.events.push(event),
            _ => batches.push(Batch {
                revision,
                events: vec![event],
            }),
        }
    }
    Ok(batches.into_iter().map(Arc::new).collect())
}
