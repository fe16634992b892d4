//! Sheaf's versioned object store.
//!
//! The store is the only source of truth of the control plane. It is a
//! multi-version key/value store with etcd's semantics:
//!
//! - every successful write gets the next value of one cluster-wide,
//!   monotonic **revision**; a key remembers the revision that created it
//!   (`create_revision`) and last changed it (`mod_revision`). The API server
//!   uses `mod_revision` as an object's `resourceVersion`;
//! - writes are compare-and-swap: `create` fails if the key exists, `update`
//!   and `delete` take the `mod_revision` the caller last saw;
//! - `list` reads a consistent snapshot, optionally at an older revision
//!   (for `limit`/`continue` paging), in key order;
//! - `watch` streams every change under a prefix after a given revision,
//!   first from history and then live, in revision order, without gaps;
//! - `compact` drops history before a revision; reading or watching from
//!   before it fails with [`StoreError::Compacted`] (HTTP 410 Gone).
//!
//! Two backends implement [`Store`]: [`sqlite::SqliteStore`] (embedded,
//! single node, the default) and [`etcd::EtcdStore`] (HA clusters). One
//! conformance suite (`tests/conformance.rs`) runs against both.

pub mod etcd;
pub mod etcd_members;
pub mod sqlite;

use std::pin::Pin;

use futures::Stream;

/// A cluster-wide revision. Revisions start at 1; 0 means "none".
pub type Revision = i64;

/// A key and its value at some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: Revision,
    /// True when more keys follow the last one returned.
    pub more: bool,
}

/// A list request: keys with `prefix`, strictly after `start_after`, at most
/// `limit` of them (0 = all), read at `revision` (None = current).
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub prefix: String,
    pub start_after: Option<String>,
    pub limit: usize,
    pub revision: Option<Revision>,
}

/// What happened to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created.
    Create,
    /// The key existed and got a new value.
    Update,
    /// The key was deleted; `kv.value` is the value it had before.
    Delete,
}

/// One change, delivered by [`Store::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For `Create`/`Update` the new value; for `Delete` the last value, with
    /// `mod_revision` set to the revision of the deletion.
    pub kv: KeyValue,
    /// The value before this change, if there was one.
    pub prev: Option<KeyValue>,
}

/// What a watch stream yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    Event(Event),
    /// Every change up to this revision has been delivered (a bookmark).
    Progress(Revision),
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchItem, StoreError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    /// The key's `mod_revision` is not the one the caller expected.
    #[error("key {key} was modified (expected revision {expected}, found {actual})")]
    Conflict { key: String, expected: Revision, actual: Revision },
    /// The requested revision has been compacted away.
    #[error("revision {requested} has been compacted; the oldest available is {compacted}")]
    Compacted { requested: Revision, compacted: Revision },
    /// The requested revision is newer than the store's current one.
    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("store unavailable: {message}")]
    Unavailable { message: String },
    #[error("store backend error: {message}")]
    Backend { message: String },
}

impl StoreError {
    pub fn backend(e: impl std::fmt::Display) -> Self {
        StoreError::Backend { message: e.to_string() }
    }
}

/// The versioned object store. See the crate documentation for semantics.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys under a prefix in key order; see [`ListOptions`].
    async fn list(&self, opts: ListOptions) -> Result<ListResult, StoreError>;

    /// Creates `key`; fails with `AlreadyExists` if it exists.
    /// Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError>;

    /// Replaces `key`'s value if its `mod_revision` is `expected`.
    /// Fails with `NotFound` or `Conflict`. Returns the new revision.
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision, StoreError>;

    /// Deletes `key`, if `expected` is given only when its `mod_revision`
    /// matches. Returns the revision of the deletion and the last value.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue), StoreError>;

    /// Changes under `prefix` with revision > `after`, in revision order.
    /// `after` = 0 means "from now on". Fails with `Compacted` if `after`
    /// is older than the compacted revision. When `progress` is true the
    /// stream also yields [`WatchItem::Progress`] about once a second
    /// while idle (bookmarks).
    async fn watch(&self, prefix: &str, after: Revision, progress: bool) -> Result<WatchStream, StoreError>;

    /// The current revision.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Drops history older than `revision` (values still current are kept).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}

/// Smallest string greater than every string starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
