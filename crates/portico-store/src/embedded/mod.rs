//! The embedded backend: one redb file with a kine-like layout, one writer thread doing group
//! commit, MVCC readers, and watches served from memory with the on-disk log behind them.
//!
//! Layout (all in one redb database):
//! - `log`: (revision, row) → encoded change {op, key, value, create revision, prev mod revision}
//! - `history`: (key, revision) → row index and delete flag, for reads at old revisions and
//!   for finding an event's previous value
//! - `latest`: key → (mod revision, row, create revision) of the live version
//! - `meta`: `revision` (current), `compacted` (logical), `physical` (log cleaned up to here)
//!
//! Durability: each group commit appends its transactions to a write-ahead log beside the
//! database (`<file>-wal`) and `fdatasync`s it before any caller is answered, so an
//! acknowledged write survives `kill -9` and power loss; redb itself commits without a sync and
//! is made durable by a checkpoint every few seconds (see `wal.rs` for why). Concurrent callers
//! share one commit (group commit), each still getting its own revision.
//!
//! Watches: a lagging watcher never blocks the writer. When it falls behind the in-memory
//! broadcast it silently catches up from the on-disk log; only when the history it needs has
//! been compacted does its stream end with [`Error::Compacted`] (the caller re-lists and
//! watches again, as with etcd and HTTP 410 Gone).
//!
//! Must not: know about Kubernetes objects or HTTP.

mod codec;
mod wal;
mod watch;

use std::collections::{HashSet, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use self::codec::{EntryOp, LogEntry, decode_entry, encode_entry, pack_history, unpack_history};
use self::wal::{Wal, WalEntry, encode_compact, encode_txn, wal_path};
use crate::{
    Compare, Error, Event, EventKind, KeyValue, ListResult, Op, Result, Revision, Store,
    TxnResponse, WatchStream,
};

const LOG: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("log");
const HISTORY: TableDefinition<(&str, u64), u64> = TableDefinition::new("history");
const LATEST: TableDefinition<&str, (u64, u32, u64)> = TableDefinition::new("latest");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_PHYSICAL: &str = "physical";

/// Tuning knobs of the embedded backend. The defaults suit the API server.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Recent committed transactions kept in memory for new watches (in transactions).
    pub ring_capacity: usize,
    /// How far a watcher may fall behind the live broadcast before it catches up from disk.
    pub broadcast_capacity: usize,
    /// Most transactions committed together in one fsync.
    pub max_batch: usize,
    /// Revisions cleaned per compaction step; steps run between write batches.
    pub compaction_step: u64,
    /// Sync the write-ahead log before answering (the default and the only safe setting).
    /// `false` skips the fsync: acknowledged writes may be lost on a crash. Only for tests and for benchmarks
    /// that separate storage cost from sync cost.
    pub sync_commits: bool,
    /// Checkpoint when the store shuts down cleanly (default). Tests turn it off so that
    /// reopening goes through write-ahead log replay, as after a crash.
    #[doc(hidden)]
    pub checkpoint_on_close: bool,
    /// redb page cache size in bytes (read cache plus write buffer). Kept small: the API
    /// server answers most reads from its watch cache, and every cached page is resident memory.
    pub cache_size_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            ring_capacity: 2048,
            broadcast_capacity: 1024,
            max_batch: 1024,
            compaction_step: 512,
            sync_commits: true,
            checkpoint_on_close: true,
            cache_size_bytes: 16 << 20,
        }
    }
}

/// The events of one committed transaction.
#[derive(Debug)]
pub(crate) struct Batch {
    pub revision: Revision,
    pub events: Vec<Event>,
}

/// What the writer has published: read by watches and `current_revision`.
pub(crate) struct Hub {
    pub revision: Revision,
    pub compacted: Revision,
    pub ring: VecDeque<Arc<Batch>>,
    /// `None` once the writer has stopped; live watches then end.
    pub sender: Option<broadcast::Sender<Arc<Batch>>>,
}

pub(crate) struct Shared {
    pub db: Database,
    pub hub: Mutex<Hub>,
}

impl Shared {
    pub(crate) fn hub(&self) -> MutexGuard<'_, Hub> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.hub
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

enum Request {
    Txn {
        compares: Vec<Compare>,
        ops: Vec<Op>,
        reply: oneshot::Sender<Result<TxnResponse>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The embedded single-file store. Cheap to share as `Arc<EmbeddedStore>`.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    requests: std::sync::mpsc::Sender<Request>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

pub(crate) fn internal(error: impl std::fmt::Display) -> Error {
    Error::Internal(error.to_string())
}

fn to_u64(revision: Revision) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

fn to_rev(value: u64) -> Revision {
    Revision::try_from(value).unwrap_or(Revision::MAX)
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path` with default options. The write-ahead
    /// log lives beside it as `<path>-wal`.
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    /// Opens (or creates) the database file at `path`, applying any write-ahead log records
    /// the database does not have yet (after a crash or an unclean stop).
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<Arc<Self>> {
        let db = Database::builder()
            .set_cache_size(options.cache_size_bytes)
            .create(path)
            .map_err(internal)?;
        let state = init_tables(&db)?;
        let (mut wal, entries) = Wal::open(&wal_path(path))?;
        let state = replay_wal(&db, state, entries)?;
        wal.reset()?;
        let (sender, _) = broadcast::channel(options.broadcast_capacity.max(1));
        let shared = Arc::new(Shared {
            db,
            hub: Mutex::new(Hub {
                revision: state.revision,
                compacted: state.compacted,
                ring: VecDeque::with_capacity(options.ring_capacity.min(1 << 16)),
                sender: Some(sender),
            }),
        });
        let (requests, receiver) = std::sync::mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            state,
            wal,
            options,
            poisoned: None,
            last_checkpoint: Instant::now(),
            unsynced: false,
        };
        std::thread::Builder::new()
            .name("portico-store-writer".to_string())
            .spawn(move || writer.run(receiver))
            .map_err(internal)?;
        Ok(Arc::new(Self { shared, requests }))
    }

    /// The oldest revision still readable (`0` before the first compaction).
    pub fn compacted_revision(&self) -> Revision {
        self.shared.hub().compacted
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(make(reply))
            .map_err(|_| Error::Unavailable("embedded store writer stopped".to_string()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("embedded store writer stopped".to_string()))?
    }
}

/// Revisions the writer tracks between batches.
#[derive(Clone, Copy, Debug)]
struct WriterState {
    revision: Revision,
    compacted: Revision,
    physical: Revision,
}

fn init_tables(db: &Database) -> Result<WriterState> {
    let txn = db.begin_write().map_err(internal)?;
    let state = {
        txn.open_table(LOG).map_err(internal)?;
        txn.open_table(HISTORY).map_err(internal)?;
        txn.open_table(LATEST).map_err(internal)?;
        let mut meta = txn.open_table(META).map_err(internal)?;
        let read = |meta: &redb::Table<&str, u64>, name: &str| -> Result<Option<u64>> {
            Ok(meta.get(name).map_err(internal)?.map(|guard| guard.value()))
        };
        // A fresh store starts at revision 1 with no keys, like a fresh etcd.
        let revision = match read(&meta, META_REVISION)? {
            Some(revision) => to_rev(revision),
            None => {
                meta.insert(META_REVISION, 1).map_err(internal)?;
                1
            }
        };
        WriterState {
            revision,
            compacted: to_rev(read(&meta, META_COMPACTED)?.unwrap_or(0)),
            physical: to_rev(read(&meta, META_PHYSICAL)?.unwrap_or(0)),
        }
    };
    txn.commit().map_err(internal)?;
    Ok(state)
}

/// Applies the logged transactions newer than the database, in one durable commit.
fn replay_wal(
    db: &Database,
    mut state: WriterState,
    entries: Vec<WalEntry>,
) -> Result<WriterState> {
    if entries.is_empty() {
        return Ok(state);
    }
    let txn = db.begin_write().map_err(internal)?;
    {
        let mut log = txn.open_table(LOG).map_err(internal)?;
        let mut history = txn.open_table(HISTORY).map_err(internal)?;
        let mut latest = txn.open_table(LATEST).map_err(internal)?;
        let mut meta = txn.open_table(META).map_err(internal)?;
        let mut tables = WriteTables {
            log: &mut log,
            history: &mut history,
            latest: &mut latest,
        };
        let mut ignored = Vec::new();
        for entry in entries {
            match entry {
                WalEntry::Txn { revision, ops } => {
                    if revision <= state.revision {
                        continue;
                    }
                    if revision != state.revision + 1 {
                        return Err(Error::Internal(format!(
                            "write-ahead log jumps from revision {} to {revision}",
                            state.revision
                        )));
                    }
                    apply_txn(&mut tables, &mut state, &[], &ops, &mut ignored)??;
                    ignored.clear();
                    if state.revision != revision {
                        return Err(Error::Internal(format!(
                            "write-ahead log entry {revision} does not apply to the database"
                        )));
                    }
                }
                WalEntry::Compact(revision) => {
                    if revision <= state.revision {
                        state.compacted = state.compacted.max(revision);
                    }
                }
            }
        }
        meta.insert(META_REVISION, to_u64(state.revision))
            .map_err(internal)?;
        meta.insert(META_COMPACTED, to_u64(state.compacted))
            .map_err(internal)?;
    }
    txn.commit().map_err(internal)?;
    Ok(state)
}

/// Checkpoint when the log grows past this size ...
const CHECKPOINT_BYTES: u64 = 32 << 20;
/// ... or has held records for this long.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// The single writer: owns the log, commits batches, runs compaction steps and checkpoints.
struct Writer {
    shared: Arc<Shared>,
    state: WriterState,
    wal: Wal,
    options: EmbeddedOptions,
    /// Set when a write may have reached the log but not the database (or the other way
    /// round); from then on every write is refused until the store is reopened.
    poisoned: Option<String>,
    last_checkpoint: Instant,
    /// Non-durable redb commits (batches or compaction steps) since the last checkpoint.
    unsynced: bool,
}

impl Writer {
    fn run(mut self, receiver: std::sync::mpsc::Receiver<Request>) {
        use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
        loop {
            let cleanup_pending = self.state.physical < self.state.compacted - 1;
            let first = if cleanup_pending {
                match receiver.try_recv() {
                    Ok(request) => Some(request),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else if self.unsynced {
                match receiver.recv_timeout(CHECKPOINT_INTERVAL) {
                    Ok(request) => Some(request),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match receiver.recv() {
                    Ok(request) => Some(request),
                    Err(_) => break,
                }
            };
            if let Some(first) = first {
                let mut requests = vec![first];
                while requests.len() < self.options.max_batch {
                    match receiver.try_recv() {
                        Ok(request) => requests.push(request),
                        Err(_) => break,
                    }
                }
                self.commit_batch(requests);
            }
            if self.poisoned.is_none() && self.state.physical < self.state.compacted - 1 {
                self.unsynced = true;
                let step = self.options.compaction_step;
                if let Err(error) = compact_step(&self.shared.db, &mut self.state, step) {
                    tracing::warn!(%error, "embedded store compaction step failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            self.maybe_checkpoint();
        }
        if self.options.checkpoint_on_close && self.poisoned.is_none() && self.unsynced {
            // A clean stop leaves nothing to replay.
            self.checkpoint();
        }
        self.shared.hub().sender = None;
    }

    fn maybe_checkpoint(&mut self) {
        let due = self.wal.len() >= CHECKPOINT_BYTES
            || (self.unsynced && self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL);
        if due && self.poisoned.is_none() {
            self.checkpoint();
        }
    }

    /// A durable redb commit makes every earlier non-durable one durable; then the log can
    /// start over.
    fn checkpoint(&mut self) {
        let result = (|| -> Result<()> {
            let txn = self.shared.db.begin_write().map_err(internal)?;
            {
                let mut meta = txn.open_table(META).map_err(internal)?;
                meta.insert(META_REVISION, to_u64(self.state.revision))
                    .map_err(internal)?;
            }
            txn.commit().map_err(internal)?;
            self.wal.reset()
        })();
        self.last_checkpoint = Instant::now();
        if result.is_ok() {
            self.unsynced = false;
        }
        if let Err(error) = result {
            // The log still holds everything; the next checkpoint tries again.
            tracing::warn!(%error, "embedded store checkpoint failed");
        }
    }

    fn commit_batch(&mut self, requests: Vec<Request>) {
        if let Some(reason) = &self.poisoned {
            let error = Error::Unavailable(format!("embedded store must be reopened: {reason}"));
            reply_all(placeholders(requests), &error);
            return;
        }
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut batches = Vec::new();
        let mut next_state = self.state;
        let written = write_batch(
            &self.shared.db,
            &mut self.wal,
            self.options.sync_commits,
            &mut next_state,
            requests,
            &mut outcomes,
            &mut batches,
        );
        match written {
            Ok(()) => {
                self.state = next_state;
                self.unsynced = true;
                let mut hub = self.shared.hub();
                hub.revision = self.state.revision;
                hub.compacted = self.state.compacted;
                for batch in batches {
                    if hub.ring.len() >= self.options.ring_capacity.max(1) {
                        hub.ring.pop_front();
                    }
                    hub.ring.push_back(batch.clone());
                    if let Some(sender) = &hub.sender {
                        // No receivers is fine: nobody is watching.
                        let _ = sender.send(batch);
                    }
                }
                drop(hub);
                for outcome in outcomes {
                    match outcome {
                        Outcome::Txn(reply, result) => drop(reply.send(result)),
                        Outcome::Compact(reply, result) => drop(reply.send(result)),
                    }
                }
            }
            Err(failure) => {
                tracing::error!(error = %failure.error, "embedded store commit failed");
                if failure.poison {
                    self.poisoned = Some(failure.error.to_string());
                }
                reply_all(failure.replies, &failure.error);
            }
        }
    }
}

fn reply_all(outcomes: Vec<Outcome>, error: &Error) {
    for outcome in outcomes {
        match outcome {
            Outcome::Txn(reply, _) => drop(reply.send(Err(error.clone_error()))),
            Outcome::Compact(reply, _) => drop(reply.send(Err(error.clone_error()))),
        }
    }
}

enum Outcome {
    Txn(oneshot::Sender<Result<TxnResponse>>, Result<TxnResponse>),
    Compact(oneshot::Sender<Result<()>>, Result<()>),
}

impl Error {
    fn clone_error(&self) -> Error {
        match self {
            Error::Compacted {
                requested,
                compacted,
            } => Error::Compacted {
                requested: *requested,
                compacted: *compacted,
            },
            Error::FutureRevision(revision) => Error::FutureRevision(*revision),
            Error::Unavailable(message) => Error::Unavailable(message.clone()),
            Error::Internal(message) => Error::Internal(message.clone()),
        }
    }
}

struct BatchFailure {
    error: Error,
    replies: Vec<Outcome>,
    /// The log and the database may disagree: refuse further writes.
    poison: bool,
}

/// Applies all requests in one redb transaction, appends their effects to the log (synced),
/// then commits redb without a sync. On failure nothing is acknowledged.
fn write_batch(
    db: &Database,
    wal: &mut Wal,
    sync_commits: bool,
    state: &mut WriterState,
    requests: Vec<Request>,
    outcomes: &mut Vec<Outcome>,
    batches: &mut Vec<Arc<Batch>>,
) -> std::result::Result<(), BatchFailure> {
    let fail = |error: Error, replies: Vec<Outcome>, poison: bool| BatchFailure {
        error,
        replies,
        poison,
    };
    let mut txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(error) => return Err(fail(internal(error), placeholders(requests), false)),
    };
    // The log makes the batch durable; the database catches up at the next checkpoint.
    if let Err(error) = txn.set_durability(redb::Durability::None) {
        return Err(fail(internal(error), placeholders(requests), false));
    }
    let mut pending = requests.into_iter();
    let mut record = wal::new_record();
    let applied = (|| -> Result<()> {
        let mut log = txn.open_table(LOG).map_err(internal)?;
        let mut history = txn.open_table(HISTORY).map_err(internal)?;
        let mut latest = txn.open_table(LATEST).map_err(internal)?;
        let mut meta = txn.open_table(META).map_err(internal)?;
        let mut tables = WriteTables {
            log: &mut log,
            history: &mut history,
            latest: &mut latest,
        };
        for request in pending.by_ref() {
            match request {
                Request::Txn {
                    compares,
                    ops,
                    reply,
                } => {
                    // Keep the reply before anything can fail so the caller hears back.
                    outcomes.push(Outcome::Txn(reply, Ok(not_applied(state.revision))));
                    let before = state.revision;
                    let result = apply_txn(&mut tables, state, &compares, &ops, batches)?;
                    if state.revision != before {
                        encode_txn(&mut record, state.revision, &ops);
                    }
                    if let Some(Outcome::Txn(_, slot)) = outcomes.last_mut() {
                        *slot = result;
                    }
                }
                Request::Compact { revision, reply } => {
                    let result = if revision > state.revision {
                        Err(Error::FutureRevision(revision))
                    } else {
                        if revision > state.compacted {
                            state.compacted = revision;
                            encode_compact(&mut record, revision);
                        }
                        Ok(())
                    };
                    outcomes.push(Outcome::Compact(reply, result));
                }
            }
        }
        meta.insert(META_REVISION, to_u64(state.revision))
            .map_err(internal)?;
        meta.insert(META_COMPACTED, to_u64(state.compacted))
            .map_err(internal)?;
        Ok(())
    })();
    let fail_all = |error: Error,
                    outcomes: &mut Vec<Outcome>,
                    pending: std::vec::IntoIter<Request>,
                    batches: &mut Vec<Arc<Batch>>,
                    poison: bool| {
        let mut replies: Vec<Outcome> = std::mem::take(outcomes);
        replies.extend(placeholders(pending.collect()));
        batches.clear();
        fail(error, replies, poison)
    };
    if let Err(error) = applied {
        return Err(fail_all(error, outcomes, pending, batches, false));
    }
    if record.len() > wal::RECORD_HEADER
        && let Err(error) = wal.append(&mut record, sync_commits)
    {
        // The record may or may not be on disk: replay after a restart decides.
        return Err(fail_all(error, outcomes, pending, batches, true));
    }
    if let Err(error) = txn.commit() {
        return Err(fail_all(internal(error), outcomes, pending, batches, true));
    }
    Ok(())
}

fn not_applied(revision: Revision) -> TxnResponse {
    TxnResponse {
        succeeded: false,
        revision,
    }
}

fn placeholders(requests: Vec<Request>) -> Vec<Outcome> {
    requests
        .into_iter()
        .map(|request| match request {
            Request::Txn { reply, .. } => Outcome::Txn(reply, Ok(not_applied(0))),
            Request::Compact { reply, .. } => Outcome::Compact(reply, Ok(())),
        })
        .collect()
}

struct WriteTables<'a, 't> {
    log: &'a mut redb::Table<'t, (u64, u32), &'static [u8]>,
    history: &'a mut redb::Table<'t, (&'static str, u64), u64>,
    latest: &'a mut redb::Table<'t, &'static str, (u64, u32, u64)>,
}

/// Evaluates one transaction against the state including earlier transactions of this batch.
/// `Err` means storage failed (the whole batch aborts); a per-request problem is `Ok(Err(_))`.
fn apply_txn(
    tables: &mut WriteTables<'_, '_>,
    state: &mut WriterState,
    compares: &[Compare],
    ops: &[Op],
    batches: &mut Vec<Arc<Batch>>,
) -> Result<Result<TxnResponse>> {
    for compare in compares {
        let Compare::ModRevision(key, expected) = compare;
        let actual = tables
            .latest
            .get(key.as_str())
            .map_err(internal)?
            .map(|guard| to_rev(guard.value().0))
            .unwrap_or(0);
        if actual != *expected {
            return Ok(Ok(not_applied(state.revision)));
        }
    }
    let mut seen = HashSet::with_capacity(ops.len());
    for op in ops {
        let key = match op {
            Op::Put(key, _) | Op::Delete(key) => key,
        };
        if !seen.insert(key.as_str()) {
            return Ok(Err(Error::Internal(format!(
                "duplicate key {key:?} given in transaction"
            ))));
        }
    }
    let revision = state.revision + 1;
    let rev_key = to_u64(revision);
    let mut events = Vec::with_capacity(ops.len());
    for op in ops {
        let key = match op {
            Op::Put(key, _) | Op::Delete(key) => key.as_str(),
        };
        let previous = tables
            .latest
            .get(key)
            .map_err(internal)?
            .map(|guard| guard.value());
        let prev = match previous {
            Some((mod_revision, row, create_revision)) => {
                let entry = read_row(tables.log, mod_revision, row)?;
                Some(KeyValue {
                    key: key.to_string(),
                    value: entry.value,
                    create_revision: to_rev(create_revision),
                    mod_revision: to_rev(mod_revision),
                })
            }
            None => None,
        };
        let row = u32::try_from(events.len()).map_err(internal)?;
        let prev_mod = prev.as_ref().map(|kv| kv.mod_revision).unwrap_or(0);
        match op {
            Op::Put(_, value) => {
                let create_revision = prev
                    .as_ref()
                    .map(|kv| kv.create_revision)
                    .unwrap_or(revision);
                let encoded = encode_entry(EntryOp::Put, create_revision, prev_mod, key, value);
                tables
                    .log
                    .insert((rev_key, row), encoded.as_slice())
                    .map_err(internal)?;
                tables
                    .history
                    .insert((key, rev_key), pack_history(row, EntryOp::Put))
                    .map_err(internal)?;
                tables
                    .latest
                    .insert(key, (rev_key, row, to_u64(create_revision)))
                    .map_err(internal)?;
                events.push(Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.to_string(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: revision,
                    },
                    prev,
                });
            }
            Op::Delete(_) => {
                if prev.is_none() {
                    continue;
                }
                let encoded = encode_entry(EntryOp::Delete, 0, prev_mod, key, &[]);
                tables
                    .log
                    .insert((rev_key, row), encoded.as_slice())
                    .map_err(internal)?;
                tables
                    .history
                    .insert((key, rev_key), pack_history(row, EntryOp::Delete))
                    .map_err(internal)?;
                tables.latest.remove(key).map_err(internal)?;
                events.push(Event {
                    kind: EventKind::Delete,
                    kv: deleted_kv(key, revision),
                    prev,
                });
            }
        }
    }
    // Like etcd, a transaction that changed nothing does not move the revision.
    if !events.is_empty() {
        state.revision = revision;
        batches.push(Arc::new(Batch { revision, events }));
    }
    Ok(Ok(TxnResponse {
        succeeded: true,
        revision: state.revision,
    }))
}

fn deleted_kv(key: &str, revision: Revision) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Bytes::new(),
        create_revision: 0,
        mod_revision: revision,
    }
}

fn read_row(
    log: &impl ReadableTable<(u64, u32), &'static [u8]>,
    revision: u64,
    row: u32,
) -> Result<LogEntry> {
    let guard = log
        .get((revision, row))
        .map_err(internal)?
        .ok_or_else(|| Error::Internal(format!("log row {revision}/{row} missing")))?;
    decode_entry(guard.value())
}

/// Removes history that no read at or after `compacted` and no watch from `compacted - 1` needs:
/// for every change up to `compacted - 1`, the version it replaced, and the change itself when
/// it was a delete. The live version of every key at `compacted - 1` stays.
fn compact_step(db: &Database, state: &mut WriterState, step: u64) -> Result<()> {
    let target = state.compacted - 1;
    if state.physical >= target {
        return Ok(());
    }
    let end = target.min(state.physical.saturating_add(to_rev(step.max(1))));
    let mut txn = db.begin_write().map_err(internal)?;
    // Losing a step in a crash only means doing it again; the next checkpoint makes it durable.
    txn.set_durability(redb::Durability::None)
        .map_err(internal)?;
    {
        let mut log = txn.open_table(LOG).map_err(internal)?;
        let mut history = txn.open_table(HISTORY).map_err(internal)?;
        let mut meta = txn.open_table(META).map_err(internal)?;
        let mut rows = Vec::new();
        for item in log
            .range((to_u64(state.physical + 1), 0)..=(to_u64(end), u32::MAX))
            .map_err(internal)?
        {
            let (key, value) = item.map_err(internal)?;
            rows.push((key.value(), decode_entry(value.value())?));
        }
        for ((revision, row), entry) in rows {
            if entry.prev_mod_revision > 0 {
                let prev = to_u64(entry.prev_mod_revision);
                let removed = history
                    .remove((entry.key.as_str(), prev))
                    .map_err(internal)?
                    .map(|guard| guard.value());
                if let Some(packed) = removed {
                    log.remove((prev, unpack_history(packed).0))
                        .map_err(internal)?;
                }
            }
            if entry.op == EntryOp::Delete {
                history
                    .remove((entry.key.as_str(), revision))
                    .map_err(internal)?;
                log.remove((revision, row)).map_err(internal)?;
            }
        }
        meta.insert(META_PHYSICAL, to_u64(end)).map_err(internal)?;
    }
    txn.commit().map_err(internal)?;
    state.physical = end;
    Ok(())
}

/// Current and compacted revisions as seen by one read transaction.
fn read_meta(txn: &redb::ReadTransaction) -> Result<(Revision, Revision)> {
    let meta = txn.open_table(META).map_err(internal)?;
    let get = |name: &str| -> Result<Revision> {
        Ok(meta
            .get(name)
            .map_err(internal)?
            .map(|guard| to_rev(guard.value()))
            .unwrap_or(0))
    };
    Ok((get(META_REVISION)?, get(META_COMPACTED)?))
}

fn get_blocking(db: &Database, key: &str) -> Result<Option<KeyValue>> {
    let txn = db.begin_read().map_err(internal)?;
    let latest = txn.open_table(LATEST).map_err(internal)?;
    let Some((mod_revision, row, create_revision)) = latest
        .get(key)
        .map_err(internal)?
        .map(|guard| guard.value())
    else {
        return Ok(None);
    };
    let log = txn.open_table(LOG).map_err(internal)?;
    let entry = read_row(&log, mod_revision, row)?;
    Ok(Some(KeyValue {
        key: key.to_string(),
        value: entry.value,
        create_revision: to_rev(create_revision),
        mod_revision: to_rev(mod_revision),
    }))
}

fn list_blocking(
    db: &Database,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
    revision: Option<Revision>,
) -> Result<ListResult> {
    let txn = db.begin_read().map_err(internal)?;
    let (current, compacted) = read_meta(&txn)?;
    // Like etcd, a revision of 0 or below means "latest".
    let at = match revision {
        Some(requested) if requested > 0 => {
            if requested > current {
                return Err(Error::FutureRevision(requested));
            }
            if requested < compacted {
                return Err(Error::Compacted {
                    requested,
                    compacted,
                });
            }
            requested
        }
        _ => current,
    };
    let start_after = start_after.filter(|after| *after >= prefix);
    let log = txn.open_table(LOG).map_err(internal)?;
    let mut kvs = Vec::new();
    let mut more = false;
    let full = |kvs: &Vec<KeyValue>| limit > 0 && kvs.len() >= limit;
    if at == current {
        let latest = txn.open_table(LATEST).map_err(internal)?;
        let start = match start_after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Included(prefix),
        };
        for item in latest
            .range::<&str>((start, Bound::Unbounded))
            .map_err(internal)?
        {
            let (key, value) = item.map_err(internal)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if full(&kvs) {
                more = true;
                break;
            }
            let (mod_revision, row, create_revision) = value.value();
            let entry = read_row(&log, mod_revision, row)?;
            kvs.push(KeyValue {
                key: key.to_string(),
                value: entry.value,
                create_revision: to_rev(create_revision),
                mod_revision: to_rev(mod_revision),
            });
        }
    } else {
        let history = txn.open_table(HISTORY).map_err(internal)?;
        let start = match start_after {
            Some(after) => Bound::Excluded((after, u64::MAX)),
            None => Bound::Included((prefix, 0)),
        };
        let at_key = to_u64(at);
        // The newest version at or below `at` of the key being scanned.
        let mut candidate: Option<(String, u64, u64)> = None;
        let emit =
            |candidate: Option<(String, u64, u64)>, kvs: &mut Vec<KeyValue>| -> Result<bool> {
                let Some((key, mod_revision, packed)) = candidate else {
                    return Ok(true);
                };
                let (row, op) = unpack_history(packed);
                if op == EntryOp::Delete {
                    return Ok(true);
                }
                if full(kvs) {
                    return Ok(false);
                }
                let entry = read_row(&log, mod_revision, row)?;
                kvs.push(KeyValue {
                    key,
                    value: entry.value,
                    create_revision: entry.create_revision,
                    mod_revision: to_rev(mod_revision),
                });
                Ok(true)
            };
        let mut stopped = false;
        for item in history
            .range::<(&str, u64)>((start, Bound::Unbounded))
            .map_err(internal)?
        {
            let (key, value) = item.map_err(internal)?;
            let (key, key_revision) = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if candidate.as_ref().is_some_and(|(held, _, _)| held != key)
                && !emit(candidate.take(), &mut kvs)?
            {
                stopped = true;
                break;
            }
            if key_revision <= at_key {
                candidate = Some((key.to_string(), key_revision, value.value()));
            }
        }
        if stopped || !emit(candidate.take(), &mut kvs)? {
            more = true;
        }
    }
    Ok(ListResult {
        kvs,
        revision: at,
        more,
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        // A point read touches a few cached pages; not worth a thread hop.
        get_blocking(&self.shared.db, key)
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<ListResult> {
        let shared = self.shared.clone();
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            list_blocking(&shared.db, &prefix, start_after.as_deref(), limit, revision)
        })
        .await
        .map_err(internal)?
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResponse> {
        self.submit(|reply| Request::Txn {
            compares,
            ops,
            reply,
        })
        .await
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        watch::open(self.shared.clone(), prefix, after_revision)
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.hub().revision)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.submit(|reply| Request::Compact { revision, reply })
            .await
    }
}
