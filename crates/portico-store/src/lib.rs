//! The revisioned key-value store behind the API server, with etcd's semantics.
//!
//! Owns: one global revision, compare-and-swap transactions on a key's mod revision,
//! prefix lists, watches from a revision, compaction answered with [`Error::Compacted`].
//! Two backends pass one shared test suite: the embedded single-file backend (default)
//! and etcd (`--etcd-servers`).
//! Must not: know about Kubernetes objects, HTTP, or anything above raw bytes under string keys.
//!
//! Using it:
//! - Embedded: `embedded::EmbeddedStore::open(&data_dir.join("store.redb"))?` (sync; it also
//!   keeps `store.redb-wal` beside the file). Etcd: `etcd::EtcdStore::connect(&endpoints,
//!   "/registry").await?`. Both return `Arc<Self>`; use them as `Arc<dyn Store>`.
//! - Compaction: `spawn_auto_compaction(store, CompactionPolicy::default())` compacts every
//!   5 minutes to the revision seen one interval earlier, keeping at least the last 10,000.
//! - Revisions: a fresh store is at revision 1 (as etcd); each writing transaction adds one;
//!   failed compares and transactions that change nothing (deleting a missing key) add none.
//! - Compaction boundary (as etcd): after `compact(c)`, lists at revisions below `c` and
//!   watches with `after_revision < c - 1` fail with [`Error::Compacted`].
//! - Watches deliver one `Vec<Event>` per transaction, in revision order. A slow consumer never
//!   holds up writers: the embedded backend lets it fall behind the in-memory broadcast and then
//!   catches it up from the on-disk log; only if compaction removed what it still needs does the
//!   stream yield `Err(Error::Compacted)` and end. A watch stream that ends (`None`, or after an
//!   `Err`) must be restarted from the last revision seen, or by re-listing on `Compacted`.

pub mod compaction;
pub mod embedded;
pub mod etcd;
pub mod testing;

pub use compaction::{CompactionPolicy, spawn_auto_compaction};

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

/// A store revision. Revisions start at 1 and grow by one per committed write transaction.
pub type Revision = i64;

/// One stored key with its value and the revisions etcd would report for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the transaction that created this key (since its last delete).
    pub create_revision: Revision,
    /// Revision of the transaction that last wrote this key.
    pub mod_revision: Revision,
}

/// A condition a transaction checks before it applies its operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod revision equals the given one; `0` means "the key does not exist".
    ModRevision(String, Revision),
}

/// One write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(String, Bytes),
    /// Deleting a missing key is not an error (as in etcd).
    Delete(String),
}

/// The outcome of [`Store::txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// False when a compare failed; nothing was written then.
    pub succeeded: bool,
    /// The store revision after the transaction (unchanged when it did not succeed or wrote nothing).
    pub revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For `Put`, the new state. For `Delete`, the key with an empty value and
    /// `mod_revision` set to the revision of the delete.
    pub kv: KeyValue,
    /// The state before this change, when there was one.
    pub prev: Option<KeyValue>,
}

/// The result of a prefix list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// Keys in ascending byte order.
    pub kvs: Vec<KeyValue>,
    /// The store revision the list was read at.
    pub revision: Revision,
    /// True when `limit` cut the list short.
    pub more: bool,
}

/// A watch: batches of events in revision order, each batch from one transaction.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Vec<Event>>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested revision was compacted away; clients answer 410 Gone.
    #[error("required revision {requested} has been compacted (oldest available {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The requested revision is newer than the store's current one.
    #[error("required revision {0} is a future revision")]
    FutureRevision(Revision),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// etcd's semantics behind one trait; see the crate docs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Lists keys under `prefix` that sort after `start_after` (exclusive), at most `limit`
    /// of them (`0` = no limit). `revision: None` reads the latest state; `Some(r)` reads
    /// the state as of revision `r` (or fails with `Compacted`/`FutureRevision`).
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<ListResult>;

    /// Applies `ops` atomically if every compare holds. One successful transaction that
    /// writes anything bumps the revision by exactly one. Durable once it returns Ok.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResponse>;

    /// Streams every change under `prefix` with revision > `after_revision`.
    /// Fails with `Compacted` (at once or as the stream's first item) when that history is gone.
    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream>;

    async fn current_revision(&self) -> Result<Revision>;

    /// Forgets history at and below `revision` (watches and reads from there get `Compacted`).
    async fn compact(&self, revision: Revision) -> Result<()>;
}
