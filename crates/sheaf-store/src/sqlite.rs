//! SQLite backend: the embedded default for a single-node Sheaf.
//!
//! # Layout
//!
//! One append-only log table holds every version of every key, like etcd's
//! MVCC store (and like k3s' kine):
//!
//! ```text
//! kv(revision PK, key, created, deleted, create_revision, prev_revision, value)
//!      │                  │        │          │                 └ revision of the key's previous row
//!      │                  │        │          └ revision that created the key
//!      │                  │        └ 1: this row deletes the key; value = the last value
//!      │                  └ 1: this row creates the key
//!      └ the cluster-wide revision of this change
//! ```
//!
//! The current value of a key is its newest row, unless that row is a
//! deletion. A list at revision R takes, per key, the newest row with
//! `revision <= R`. Compaction to C removes, per key, the rows older than
//! the newest row at or before C, and tombstones at or before C.
//!
//! # Task model
//!
//! One writer thread owns the only writable connection. Requests arrive on
//! a channel; the writer takes every request waiting (up to a batch limit),
//! applies them in order inside one transaction and commits once: one
//! `fsync` for the whole batch (group commit). Each request is checked
//! (compare-and-swap) against the state including earlier requests of the
//! same batch, so batching never changes the outcome. After the commit the
//! writer advances the published revision (what lists read at), then
//! broadcasts the events, both under one lock, then answers the callers. Readers use a small pool of
//! read-only connections (WAL lets them run beside the writer); a list is
//! read at the published revision so it never sees a half-committed batch.
//!
//! Durability: WAL with `synchronous=FULL`, so a write acknowledged to a
//! caller survives `kill -9` and power loss.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    prefix_end, Event, EventKind, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchItem,
    WatchStream,
};

/// Most requests committed in one transaction.
const MAX_BATCH: usize = 512;
/// Events buffered per watcher before it falls back to reading history.
const BROADCAST_CAPACITY: usize = 4096;
const READ_POOL: usize = 4;
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

enum WriteOp {
    Create { key: String, value: Vec<u8> },
    Update { key: String, value: Vec<u8>, expected: Revision },
    Delete { key: String, expected: Option<Revision> },
    Compact { revision: Revision },
}

enum WriteOk {
    Revision(Revision),
    Deleted(Revision, KeyValue),
    Compacted,
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOk, StoreError>>,
}

struct Shared {
    path: PathBuf,
    /// Every change up to this revision is committed and published.
    revision: AtomicI64,
    compacted: AtomicI64,
    events: broadcast::Sender<Arc<Event>>,
    /// Held while publishing a batch and advancing `revision`, and while a
    /// new watcher subscribes and reads `revision`, so that every event is
    /// either at or below the revision a watcher starts from or in its
    /// subscription.
    publish: Mutex<()>,
    readers: Mutex<Vec<Connection>>,
}

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    writes: mpsc::Sender<WriteRequest>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(backend)?;
    if !read_only {
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS kv (
                 revision INTEGER PRIMARY KEY,
                 key TEXT NOT NULL,
                 created INTEGER NOT NULL,
                 deleted INTEGER NOT NULL,
                 create_revision INTEGER NOT NULL,
                 prev_revision INTEGER NOT NULL,
                 value BLOB NOT NULL
             );
             CREATE INDEX IF NOT EXISTS kv_key_revision ON kv(key, revision);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )
        .map_err(backend)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store in the file at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = open_connection(path, false)?;
        let max_row: Revision =
            conn.query_row("SELECT COALESCE(MAX(revision), 0) FROM kv", [], |r| r.get(0)).map_err(backend)?;
        let meta = |name: &str| -> Result<Revision, StoreError> {
            conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(backend)
                .map(|v| v.unwrap_or(0))
        };
        let compacted = meta("compacted")?;
        let revision = max_row.max(meta("revision")?);
        let mut readers = Vec::with_capacity(READ_POOL);
        for _ in 0..READ_POOL {
            readers.push(open_connection(path, true)?);
        }
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            events,
            publish: Mutex::new(()),
            readers: Mutex::new(readers),
        });
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("sheaf-store-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_shared, revision))
            .map_err(StoreError::backend)?;
        Ok(SqliteStore { shared, writes: tx })
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOk, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| StoreError::Unavailable { message: "store writer stopped".into() })?;
        rx.await.map_err(|_| StoreError::Unavailable { message: "store writer stopped".into() })?
    }

    /// Runs `f` on a pooled read connection in the blocking thread pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let conn = shared.readers.lock().map_err(StoreError::backend)?.pop();
            let conn = match conn {
                Some(c) => c,
                None => open_connection(&shared.path, true)?,
            };
            let out = f(&conn);
            if let Ok(mut pool) = shared.readers.lock() {
                if pool.len() < READ_POOL {
                    pool.push(conn);
                }
            }
            out
        })
        .await
        .map_err(StoreError::backend)?
    }
}

/// The newest row of a key.
struct Row {
    revision: Revision,
    create_revision: Revision,
    deleted: bool,
    value: Vec<u8>,
}

fn latest(conn: &Connection, key: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(
        "SELECT revision, create_revision, deleted, value FROM kv WHERE key = ?1
         ORDER BY revision DESC LIMIT 1",
    )?
    .query_row([key], |r| {
        Ok(Row { revision: r.get(0)?, create_revision: r.get(1)?, deleted: r.get::<_, i64>(2)? != 0, value: r.get(3)? })
    })
    .optional()
}

fn current(conn: &Connection, key: &str) -> rusqlite::Result<Option<KeyValue>> {
    Ok(latest(conn, key)?.and_then(|row| {
        (!row.deleted).then(|| KeyValue {
            key: key.to_string(),
            value: row.value,
            create_revision: row.create_revision,
            mod_revision: row.revision,
        })
    }))
}

fn insert_row(
    conn: &Connection,
    revision: Revision,
    key: &str,
    kind: &EventKind,
    create_revision: Revision,
    prev_revision: Revision,
    value: &[u8],
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO kv (revision, key, created, deleted, create_revision, prev_revision, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        revision,
        key,
        (*kind == EventKind::Create) as i64,
        (*kind == EventKind::Delete) as i64,
        create_revision,
        prev_revision,
        value
    ])?;
    Ok(())
}

/// Applies one request inside the open transaction. On success returns the
/// reply and, for data changes, the event to publish.
fn apply(conn: &Connection, op: WriteOp, next: &mut Revision) -> Result<(WriteOk, Option<Event>), StoreError> {
    match op {
        WriteOp::Create { key, value } => {
            if current(conn, &key).map_err(backend)?.is_some() {
                return Err(StoreError::AlreadyExists { key });
            }
            let rev = *next + 1;
            insert_row(conn, rev, &key, &EventKind::Create, rev, 0, &value).map_err(backend)?;
            *next = rev;
            let kv = KeyValue { key, value, create_revision: rev, mod_revision: rev };
            Ok((WriteOk::Revision(rev), Some(Event { kind: EventKind::Create, kv, prev: None })))
        }
        WriteOp::Update { key, value, expected } => {
            let Some(prev) = current(conn, &key).map_err(backend)? else {
                return Err(StoreError::NotFound { key });
            };
            if prev.mod_revision != expected {
                return Err(StoreError::Conflict { key, expected, actual: prev.mod_revision });
            }
            let rev = *next + 1;
            insert_row(conn, rev, &key, &EventKind::Update, prev.create_revision, prev.mod_revision, &value)
                .map_err(backend)?;
            *next = rev;
            let kv = KeyValue { key, value, create_revision: prev.create_revision, mod_revision: rev };
            Ok((WriteOk::Revision(rev), Some(Event { kind: EventKind::Update, kv, prev: Some(prev) })))
        }
        WriteOp::Delete { key, expected } => {
            let Some(prev) = current(conn, &key).map_err(backend)? else {
                return Err(StoreError::NotFound { key });
            };
            if let Some(expected) = expected {
                if prev.mod_revision != expected {
                    return Err(StoreError::Conflict { key, expected, actual: prev.mod_revision });
                }
            }
            let rev = *next + 1;
            insert_row(conn, rev, &key, &EventKind::Delete, prev.create_revision, prev.mod_revision, &prev.value)
                .map_err(backend)?;
            *next = rev;
            let kv = KeyValue { mod_revision: rev, ..prev.clone() };
            Ok((WriteOk::Deleted(rev, kv.clone()), Some(Event { kind: EventKind::Delete, kv, prev: Some(prev) })))
        }
        WriteOp::Compact { revision } => {
            if revision > *next {
                return Err(StoreError::FutureRevision { requested: revision, current: *next });
            }
            // Per key, drop rows older than the newest row at or before the
            // compaction revision, then tombstones at or before it.
            conn.execute(
                "DELETE FROM kv WHERE revision < ?1 AND revision < (
                     SELECT MAX(k2.revision) FROM kv k2
                     WHERE k2.key = kv.key AND k2.revision <= ?1)",
                [revision],
            )
            .map_err(backend)?;
            conn.execute("DELETE FROM kv WHERE deleted = 1 AND revision <= ?1", [revision]).map_err(backend)?;
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('compacted', ?1), ('revision', ?2)
                 ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
                params![revision, *next],
            )
            .map_err(backend)?;
            Ok((WriteOk::Compacted, None))
        }
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<WriteRequest>, shared: Arc<Shared>, mut revision: Revision) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let mut next = revision;
        let mut results = Vec::with_capacity(batch.len());
        let mut compaction = None;
        let begun = conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = begun {
            let msg = e.to_string();
            for req in batch {
                let _ = req.reply.send(Err(StoreError::Backend { message: msg.clone() }));
            }
            continue;
        }
        // Each request's operation moves into `apply`; no value is copied.
        let mut senders = Vec::with_capacity(batch.len());
        for req in batch {
            if let WriteOp::Compact { revision } = req.op {
                compaction = Some(revision);
            }
            results.push(apply(&conn, req.op, &mut next));
            senders.push(req.reply);
        }
        if let Err(e) = conn.execute_batch("COMMIT") {
            let _ = conn.execute_batch("ROLLBACK");
            let msg = e.to_string();
            for reply in senders {
                let _ = reply.send(Err(StoreError::Backend { message: msg.clone() }));
            }
            continue;
        }
        revision = next;
        if let Some(c) = compaction {
            shared.compacted.fetch_max(c, Ordering::SeqCst);
        }
        let mut replies = Vec::with_capacity(senders.len());
        // Under the publish lock: first make the batch visible to lists,
        // then broadcast it, so that no watcher ever holds an event a list
        // cannot see yet.
        let guard = shared.publish.lock();
        shared.revision.store(revision, Ordering::SeqCst);
        for (reply, result) in senders.into_iter().zip(results) {
            match result {
                Ok((ok, event)) => {
                    if let Some(ev) = event {
                        // No receivers is fine: nobody is watching.
                        let _ = shared.events.send(Arc::new(ev));
                    }
                    replies.push((reply, Ok(ok)));
                }
                Err(e) => replies.push((reply, Err(e))),
            }
        }
        drop(guard);
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }
}

fn check_revision(shared: &Shared, requested: Revision) -> Result<(), StoreError> {
    let compacted = shared.compacted.load(Ordering::SeqCst);
    if requested < compacted {
        return Err(StoreError::Compacted { requested, compacted });
    }
    let current = shared.revision.load(Ordering::SeqCst);
    if requested > current {
        return Err(StoreError::FutureRevision { requested, current });
    }
    Ok(())
}

fn list_at(conn: &Connection, opts: &ListOptions, revision: Revision) -> Result<ListResult, StoreError> {
    let after = opts.start_after.clone().unwrap_or_default();
    let hi = prefix_end_text(&opts.prefix);
    let limit: i64 = if opts.limit == 0 { -1 } else { opts.limit as i64 + 1 };
    let mut stmt = conn
        .prepare_cached(
            "SELECT k.key, k.value, k.create_revision, k.revision FROM kv k
             JOIN (SELECT MAX(revision) AS r FROM kv
                   WHERE key >= ?1 AND key < ?2 AND key > ?5 AND revision <= ?3 GROUP BY key) m
             ON k.revision = m.r
             WHERE k.deleted = 0 ORDER BY k.key LIMIT ?4",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![opts.prefix, hi, revision, limit, after], |r| {
            Ok(KeyValue { key: r.get(0)?, value: r.get(1)?, create_revision: r.get(2)?, mod_revision: r.get(3)? })
        })
        .map_err(backend)?;
    let mut items = rows.collect::<Result<Vec<_>, _>>().map_err(backend)?;
    let more = opts.limit != 0 && items.len() > opts.limit;
    items.truncate(if opts.limit == 0 { items.len() } else { opts.limit });
    Ok(ListResult { items, revision, more })
}

/// [`prefix_end`] as text: SQLite orders every TEXT before every BLOB, so
/// the bound must be TEXT to compare with the TEXT keys.
/// An empty prefix has no upper bound; use one above every key.
fn prefix_end_text(prefix: &str) -> String {
    if prefix.is_empty() {
        return char::MAX.to_string();
    }
    String::from_utf8(prefix_end(prefix)).unwrap_or_else(|_| char::MAX.to_string())
}

/// Events under `prefix` with revision in (after, until], in order.
fn history(conn: &Connection, prefix: &str, after: Revision, until: Revision) -> Result<Vec<Event>, StoreError> {
    let hi = prefix_end_text(prefix);
    let mut stmt = conn
        .prepare_cached(
            "SELECT k.revision, k.key, k.created, k.deleted, k.create_revision, k.prev_revision, k.value,
                    p.value
             FROM kv k LEFT JOIN kv p ON p.revision = k.prev_revision AND k.deleted = 0
             WHERE k.revision > ?1 AND k.revision <= ?2 AND k.key >= ?3 AND k.key < ?4
             ORDER BY k.revision",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![after, until, prefix, hi], |r| {
            let revision: Revision = r.get(0)?;
            let key: String = r.get(1)?;
            let created = r.get::<_, i64>(2)? != 0;
            let deleted = r.get::<_, i64>(3)? != 0;
            let create_revision: Revision = r.get(4)?;
            let prev_revision: Revision = r.get(5)?;
            let value: Vec<u8> = r.get(6)?;
            let prev_value: Option<Vec<u8>> = r.get(7)?;
            let kv = KeyValue { key: key.clone(), value: value.clone(), create_revision, mod_revision: revision };
            let (kind, prev) = if created {
                (EventKind::Create, None)
            } else if deleted {
                let prev = KeyValue { key, value, create_revision, mod_revision: prev_revision };
                (EventKind::Delete, Some(prev))
            } else {
                let prev =
                    prev_value.map(|value| KeyValue { key, value, create_revision, mod_revision: prev_revision });
                (EventKind::Update, prev)
            };
            Ok(Event { kind, kv, prev })
        })
        .map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.read(move |conn| current(conn, &key).map_err(backend)).await
    }

    async fn list(&self, opts: ListOptions) -> Result<ListResult, StoreError> {
        let revision = match opts.revision {
            Some(r) if r > 0 => {
                check_revision(&self.shared, r)?;
                r
            }
            _ => self.shared.revision.load(Ordering::SeqCst),
        };
        let result = self.read(move |conn| list_at(conn, &opts, revision)).await?;
        // A compaction may have run while we read: then the snapshot may be
        // incomplete, so report it as compacted rather than return it.
        check_revision(&self.shared, revision)?;
        Ok(result)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        match self.write(WriteOp::Create { key: key.to_string(), value }).await? {
            WriteOk::Revision(r) => Ok(r),
            _ => Err(StoreError::backend("unexpected reply to create")),
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision, StoreError> {
        match self.write(WriteOp::Update { key: key.to_string(), value, expected }).await? {
            WriteOk::Revision(r) => Ok(r),
            _ => Err(StoreError::backend("unexpected reply to update")),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue), StoreError> {
        match self.write(WriteOp::Delete { key: key.to_string(), expected }).await? {
            WriteOk::Deleted(r, kv) => Ok((r, kv)),
            _ => Err(StoreError::backend("unexpected reply to delete")),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision, progress: bool) -> Result<WatchStream, StoreError> {
        // Subscribe before reading history so that nothing falls between.
        let (live, now) = {
            let _guard = self.shared.publish.lock().map_err(StoreError::backend)?;
            (self.shared.events.subscribe(), self.shared.revision.load(Ordering::SeqCst))
        };
        let after = if after <= 0 { now } else { after };
        if after < now {
            check_revision(&self.shared, after + 1)?;
        }
        if after > now {
            return Err(StoreError::FutureRevision { requested: after, current: now });
        }
        let (tx, rx) = mpsc::channel(256);
        let store = self.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let result = store.pump_watch(prefix, after, progress, live, &tx).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.revision.load(Ordering::SeqCst))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.write(WriteOp::Compact { revision }).await.map(|_| ())
    }
}

type WatchTx = mpsc::Sender<Result<WatchItem, StoreError>>;

impl SqliteStore {
    /// Replays history after `sent`, then forwards live events. Returns when
    /// the receiver is dropped.
    async fn pump_watch(
        &self,
        prefix: String,
        mut sent: Revision,
        progress: bool,
        mut live: broadcast::Receiver<Arc<Event>>,
        tx: &WatchTx,
    ) -> Result<(), StoreError> {
        // Events published but not yet visible in `revision` are also in
        // `live`; replay only up to the published revision and let `live`
        // deliver the rest (skipping what replay already sent).
        sent = self.replay(&prefix, sent, tx).await?;
        loop {
            let next = if progress {
                match tokio::time::timeout(PROGRESS_INTERVAL, live.recv()).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Idle. Everything up to the published revision was
                        // broadcast before it was published, so drain what is
                        // queued, then announce progress.
                        // Read under the publish lock: every event up to
                        // this revision has then been broadcast.
                        let published = match self.shared.publish.lock() {
                            Ok(_guard) => self.shared.revision.load(Ordering::SeqCst),
                            Err(_) => return Err(StoreError::backend("publish lock poisoned")),
                        };
                        loop {
                            match live.try_recv() {
                                Ok(ev) => {
                                    if !self.forward(&prefix, &ev, &mut sent, tx).await {
                                        return Ok(());
                                    }
                                }
                                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                    sent = self.replay(&prefix, sent, tx).await?;
                                }
                                Err(_) => break,
                            }
                        }
                        if published > sent {
                            sent = published;
                        }
                        if tx.send(Ok(WatchItem::Progress(sent))).await.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    r = live.recv() => r,
                    _ = tx.closed() => return Ok(()),
                }
            };
            match next {
                Ok(ev) => {
                    if !self.forward(&prefix, &ev, &mut sent, tx).await {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    sent = self.replay(&prefix, sent, tx).await?;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(StoreError::Unavailable { message: "store closed".into() });
                }
            }
        }
    }

    /// Sends the stored history after `sent`; returns the new high mark.
    async fn replay(&self, prefix: &str, sent: Revision, tx: &WatchTx) -> Result<Revision, StoreError> {
        let until = self.shared.revision.load(Ordering::SeqCst);
        if until <= sent {
            return Ok(sent);
        }
        check_revision(&self.shared, sent + 1)?;
        let p = prefix.to_string();
        let events = self.read(move |conn| history(conn, &p, sent, until)).await?;
        for ev in events {
            if tx.send(Ok(WatchItem::Event(ev))).await.is_err() {
                break;
            }
        }
        Ok(until)
    }

    /// Forwards one live event if it is new and under the prefix. Returns
    /// false when the receiver is gone.
    async fn forward(&self, prefix: &str, ev: &Arc<Event>, sent: &mut Revision, tx: &WatchTx) -> bool {
        if ev.kv.mod_revision <= *sent {
            return true;
        }
        *sent = ev.kv.mod_revision;
        if !ev.kv.key.starts_with(prefix) {
            return true;
        }
        tx.send(Ok(WatchItem::Event((**ev).clone()))).await.is_ok()
    }
}
