//! etcd backend: [`Store`] on an etcd v3 cluster, for highly available
//! control planes.
//!
//! # Keys
//!
//! Every key is stored as `prefix + key` (e.g. `/sheaf` + `/pods/default/a`)
//! and the prefix is stripped from every key read back. Pick a prefix that no
//! other tenant's prefix extends (a list of `""` covers every etcd key that
//! starts with the prefix).
//!
//! # Mapping
//!
//! etcd already has the semantics of the trait (it is where they come from),
//! so the mapping is mostly one to one:
//!
//! | [`Store`]  | etcd |
//! |------------|------|
//! | `get`      | linearizable `Range` of the key |
//! | `create`   | `Txn(create_revision(k) == 0 → Put)`; a failed compare is `AlreadyExists` |
//! | `update`   | `Txn(create_revision(k) > 0 ∧ mod_revision(k) == expected → Put, else Range(k))`; no key is `NotFound`, otherwise `Conflict { actual }` |
//! | `delete`   | `DeleteRange(prev_kv)`, or with `expected` the `Txn` as for `update` |
//! | `list`     | `Range [prefix+start_after+"\0", prefix_end)` with `limit`, at `revision` |
//! | `watch`    | `Watch(start_revision = after + 1, prev_kv)` |
//! | `revision` | header revision of a `count_only` `Range` of one key |
//! | `compact`  | `Compact(physical = true)` |
//!
//! Failed compares never write, so they do not consume a revision. The
//! revision returned by a write is the header revision of its response.
//! `delete` returns the last value with `mod_revision` set to the revision of
//! the deletion, like the `Delete` event.
//!
//! `list` does not ask etcd to sort: etcd ranges are in ascending key order
//! already, and any explicit sort order makes etcd 3.4/3.5 read the *whole*
//! range before applying `limit`. `more` is etcd's; `revision` is the
//! requested revision, or the header revision for a read at the current one.
//!
//! Errors: etcd's "required revision has been compacted" becomes
//! [`StoreError::Compacted`] (etcd does not say up to where; the store asks
//! with a one-shot watch from revision 1, which etcd cancels with the
//! compaction revision), "required revision is a future revision" becomes
//! [`StoreError::FutureRevision`], connection failures, timeouts, lost
//! leaders and overload become [`StoreError::Unavailable`], everything else
//! [`StoreError::Backend`].
//!
//! # Watch
//!
//! Each [`Store::watch`] opens its own gRPC watch stream with exactly one
//! watcher. A `Put` event is a `Create` when `create_revision ==
//! mod_revision`, else an `Update` (with `prev` from etcd's `prev_kv`, absent
//! if that revision is compacted). A `Delete` event carries the last value
//! (etcd's `prev_kv`) with `mod_revision` set to the deletion revision; if
//! etcd cannot supply it (history compacted under a lagging watcher) the
//! stream fails with `Compacted` rather than deliver a delete without a value.
//!
//! Before opening the watch the store checks `after` against a linearizable
//! read: `after` beyond the current revision is `FutureRevision`, and
//! `after + 1` older than the compaction is `Compacted`, so both fail the
//! `watch` call itself. A compaction that overtakes a slow watcher later ends
//! the stream with `Compacted`. Any other failure of the stream (connection
//! lost, leader lost: `require_leader` is set) ends it with `Unavailable`;
//! the caller resumes with a new watch after the last revision it saw.
//!
//! # Progress (bookmarks)
//!
//! etcd has two kinds of progress notifications, and in the etcd release
//! this was developed against (3.4.23) only one of them is safe:
//!
//! - *Timed* notifications (`progress_notify` on the watch) go through the
//!   watcher's own event channel and are only sent while the watcher is
//!   synced, so every event up to the notified revision precedes them. They
//!   are always requested when `progress` is true and forwarded as
//!   [`WatchItem::Progress`]. But their interval is a server flag
//!   (`--experimental-watch-progress-notify-interval`, 10 minutes by
//!   default), far from the "about once a second" of the trait.
//! - *Requested* notifications (`WatchProgressRequest`, etcd ≥ 3.4) were, up
//!   to etcd 3.4.24 and 3.5.7, answered on a control channel that races the
//!   event channel, with the store's current revision: a bookmark could
//!   overtake events it claims were delivered (etcd issue #15220, fixed by
//!   etcd PR #15237 in 3.4.25 and 3.5.8, where the answer goes through the
//!   watcher channel, deferred until the watcher is synced).
//!
//! So [`EtcdStore::connect`] asks every endpoint for its version. When all
//! that answer run a fixed release, an idle watch (no item for
//! [`PROGRESS_INTERVAL`]) sends a `WatchProgressRequest` and forwards the
//! answer. Otherwise, and also while a request is still unanswered after a
//! second (a fixed server defers it while the watcher catches up), the
//! stream yields `Progress(r)` where `r` is the highest revision it
//! *knows* to be complete: the `after` it started from (or the creation
//! revision of a watch from "now", etcd starts such a watch right after it),
//! the revision of the last event it delivered, or the last safe etcd
//! notification. That bookmark is provably correct (events arrive in
//! revision order, so nothing at or below `r` can still come) but on old
//! servers it only advances with events or timed notifications. Operators
//! of etcd < 3.4.25 who need advancing bookmarks set
//! `--experimental-watch-progress-notify-interval` (Kubernetes recommends
//! 5s). [`EtcdStore::with_requested_progress`] overrides the detection.

/// Keys fetched per etcd range request while listing.
const LIST_PAGE: usize = 100;
/// Largest gRPC message accepted from etcd: a page of the largest objects
/// (3 MiB each), far above gRPC's default of 4 MiB.
const MAX_MESSAGE: usize = LIST_PAGE * 3 * 1024 * 1024 + 1024 * 1024;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::{
    prefix_end, Event, EventKind, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchItem,
    WatchStream,
};

/// How long a watch with `progress` stays idle before it yields a bookmark.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Upper bound of one unary request (and of opening a watch).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound of connecting to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for etcd to report its compaction revision.
const COMPACTION_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Watch items buffered between the etcd stream and the consumer.
const WATCH_BUFFER: usize = 64;

/// gRPC status codes (`tonic::Code` discriminants).
mod code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNAVAILABLE: i32 = 14;
}

const ERR_COMPACTED: &str = "required revision has been compacted";
const ERR_FUTURE: &str = "required revision is a future revision";

/// The etcd store. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: Arc<str>,
    requested_progress: bool,
}

/// An etcd error, classified.
enum EtcdError {
    Compacted,
    Future,
    Other(StoreError),
}

fn classify(e: etcd_client::Error) -> EtcdError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => {
            let message = status.message();
            if message.contains(ERR_COMPACTED) {
                return EtcdError::Compacted;
            }
            if message.contains(ERR_FUTURE) {
                return EtcdError::Future;
            }
            let code = status.code() as i32;
            let message = format!("{:?}: {}", status.code(), message);
            // tonic reports a connection lost mid-call as `Unknown`.
            let transport = code == code::UNKNOWN
                && ["h2 protocol error", "transport error", "connection", "broken pipe"]
                    .iter()
                    .any(|m| message.contains(m));
            EtcdError::Other(match code {
                code::CANCELLED | code::DEADLINE_EXCEEDED | code::RESOURCE_EXHAUSTED | code::UNAVAILABLE => {
                    StoreError::Unavailable { message }
                }
                _ if transport => StoreError::Unavailable { message },
                _ => StoreError::Backend { message },
            })
        }
        E::TransportError(_) | E::IoError(_) | E::EndpointError(_) | E::WatchError(_) => {
            EtcdError::Other(StoreError::Unavailable { message: e.to_string() })
        }
        other => EtcdError::Other(StoreError::backend(other)),
    }
}

impl From<EtcdError> for StoreError {
    /// For operations that cannot be about old or future revisions.
    fn from(e: EtcdError) -> StoreError {
        match e {
            EtcdError::Compacted => StoreError::Backend { message: ERR_COMPACTED.into() },
            EtcdError::Future => StoreError::Backend { message: ERR_FUTURE.into() },
            EtcdError::Other(e) => e,
        }
    }
}

fn map_err(e: etcd_client::Error) -> StoreError {
    classify(e).into()
}

fn timed_out(what: &str) -> StoreError {
    StoreError::Unavailable { message: format!("etcd {what} timed out") }
}

/// Runs one request with [`REQUEST_TIMEOUT`].
async fn call<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(EtcdError::Other(timed_out(what))),
    }
}

/// Whether a server of this version orders requested progress notifications
/// after the events they cover (etcd PR #15237: 3.4.25, 3.5.8, 3.6.0).
fn requested_progress_is_ordered(version: &str) -> bool {
    let mut parts =
        version.trim().trim_start_matches('v').split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u64>().ok());
    let (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    match (major, minor) {
        (3, 4) => patch >= 25,
        (3, 5) => patch >= 8,
        (3, m) => m >= 6,
        (m, _) => m > 3,
    }
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_require_leader(true)
}

impl EtcdStore {
    /// Connects to an etcd cluster. Every key lives under `prefix`.
    ///
    /// Fails with `Unavailable` unless at least one endpoint answers. Also
    /// decides how watches produce bookmarks (see the module docs).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Backend { message: "no etcd endpoints given".into() });
        }
        let client = Client::connect(endpoints, Some(connect_options())).await.map_err(map_err)?;

        // Ask every endpoint for its version, on its own connection (the
        // main client balances requests over all of them).
        let mut answered = 0;
        let mut all_ordered = true;
        let mut last_error = None;
        for endpoint in endpoints {
            let status = async {
                let mut one = Client::connect([endpoint.as_str()], Some(connect_options())).await?;
                one.status().await
            };
            match timeout(CONNECT_TIMEOUT, status).await {
                Ok(Ok(status)) => {
                    answered += 1;
                    let ordered = requested_progress_is_ordered(status.version());
                    tracing::debug!(endpoint, version = status.version(), ordered, "etcd endpoint");
                    all_ordered &= ordered;
                }
                Ok(Err(e)) => last_error = Some(map_err(e)),
                Err(_) => last_error = Some(timed_out(&format!("connect to {endpoint}"))),
            }
        }
        if answered == 0 {
            let message = match last_error {
                Some(e) => format!("no etcd endpoint answered: {e}"),
                None => "no etcd endpoint answered".into(),
            };
            return Err(StoreError::Unavailable { message });
        }
        if !all_ordered {
            tracing::info!(
                "etcd before 3.4.25/3.5.8: watch bookmarks advance only with events and timed \
                 progress notifications (--experimental-watch-progress-notify-interval)"
            );
        }
        Ok(EtcdStore { client, prefix: prefix.into(), requested_progress: all_ordered })
    }

    /// Overrides whether idle watches ask etcd for progress notifications
    /// (`WatchProgressRequest`). Only safe on etcd ≥ 3.4.25 / 3.5.8: older
    /// servers may send such a notification ahead of events it covers.
    pub fn with_requested_progress(mut self, enabled: bool) -> Self {
        self.requested_progress = enabled;
        self
    }

    /// Whether idle watches ask etcd for progress notifications.
    pub fn requested_progress(&self) -> bool {
        self.requested_progress
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// `prefix + key` as a range start; etcd rejects an empty key.
    fn range_start(&self, key: &str) -> Vec<u8> {
        let k = self.full_key(key);
        if k.is_empty() {
            vec![0]
        } else {
            k
        }
    }

    fn strip(&self, key: &[u8]) -> Result<String, StoreError> {
        let rest = key.strip_prefix(self.prefix.as_bytes()).ok_or_else(|| {
            StoreError::backend(format!(
                "etcd returned key {:?} outside prefix {:?}",
                String::from_utf8_lossy(key),
                self.prefix
            ))
        })?;
        String::from_utf8(rest.to_vec()).map_err(StoreError::backend)
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: self.strip(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    /// The compaction revision, learnt from a watch from revision 1 that
    /// etcd cancels with it. None if etcd does not say in time.
    async fn compacted_revision(&self) -> Option<Revision> {
        let probe = async {
            let mut watch_client = self.client.watch_client().max_decoding_message_size(MAX_MESSAGE);
            let opts = WatchOptions::new().with_start_revision(1);
            let mut stream = watch_client.watch(self.range_start(""), Some(opts)).await.ok()?;
            while let Ok(Some(resp)) = stream.message().await {
                if resp.compact_revision() != 0 {
                    return Some(resp.compact_revision());
                }
                if resp.canceled() {
                    return None;
                }
            }
            None
        };
        timeout(COMPACTION_PROBE_TIMEOUT, probe).await.ok().flatten()
    }

    async fn compacted_error(&self, requested: Revision) -> StoreError {
        // etcd keeps revision `compacted` itself, so it is > `requested`.
        let compacted = self.compacted_revision().await.unwrap_or(requested + 1);
        StoreError::Compacted { requested, compacted }
    }

    async fn future_error(&self, requested: Revision) -> StoreError {
        match self.revision().await {
            Ok(current) => StoreError::FutureRevision { requested, current },
            Err(e) => e,
        }
    }

    /// The current value of a key, inside the failure branch of a txn.
    fn txn_get(&self, resp: &etcd_client::TxnResponse) -> Result<Option<KeyValue>, StoreError> {
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                return get.kvs().first().map(|kv| self.convert(kv)).transpose();
            }
        }
        Err(StoreError::backend("etcd txn response lacks the range result"))
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header.map(|h| h.revision()).ok_or_else(|| StoreError::backend("etcd response without header"))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = call("get", kv.get(self.full_key(key), None)).await?;
        resp.kvs().first().map(|kv| self.convert(kv)).transpose()
    }

    async fn list(&self, opts: ListOptions) -> Result<ListResult, StoreError> {
        let requested = opts.revision.filter(|r| *r > 0);
        let mut start = self.range_start(&opts.prefix);
        if let Some(after) = &opts.start_after {
            let mut from = self.full_key(after);
            from.push(0);
            if from > start {
                start = from;
            }
        }
        let mut full_prefix = self.prefix.to_string();
        full_prefix.push_str(&opts.prefix);
        let end = prefix_end(&full_prefix);
        // Read in pages at one revision: a single response is bounded by
        // gRPC's message size (4 MiB), which a large list exceeds.
        let mut revision = requested;
        let mut items = Vec::new();
        let mut kv = self.client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        loop {
            let want = if opts.limit > 0 { (opts.limit - items.len()).min(LIST_PAGE) } else { LIST_PAGE };
            let mut get = GetOptions::new().with_range(end.clone()).with_limit(want as i64);
            if let Some(r) = revision {
                get = get.with_revision(r);
            }
            let resp = match call("list", kv.get(start.clone(), Some(get))).await {
                Ok(resp) => resp,
                Err(e) => {
                    let requested = revision.unwrap_or(0);
                    return Err(match e {
                        EtcdError::Compacted => self.compacted_error(requested).await,
                        EtcdError::Future => self.future_error(requested).await,
                        EtcdError::Other(e) => e,
                    });
                }
            };
            if revision.is_none() {
                revision = Some(header_revision(resp.header())?);
            }
            let last = resp.kvs().last().map(|kv| kv.key().to_vec());
            for kv in resp.kvs() {
                items.push(self.convert(kv)?);
            }
            let more = resp.more();
            let full = opts.limit > 0 && items.len() >= opts.limit;
            match last {
                Some(mut next) if more && !full => {
                    next.push(0);
                    start = next;
                }
                _ => {
                    let revision = revision.unwrap_or(0);
                    return Ok(ListResult { items, revision, more });
                }
            }
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let k = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, value, None)]);
        let mut kv = self.client.kv_client();
        let resp = call("create", kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists { key: key.to_string() });
        }
        header_revision(resp.header())
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision, StoreError> {
        let k = self.full_key(key);
        let txn = Txn::new()
            .when([
                // A missing key has mod_revision 0: without this compare an
                // update expecting 0 would create it.
                Compare::create_revision(k.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(k.clone(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(k.clone(), value, None)])
            .or_else([TxnOp::get(k, None)]);
        let mut kv = self.client.kv_client();
        let resp = call("update", kv.txn(txn)).await?;
        if resp.succeeded() {
            return header_revision(resp.header());
        }
        match self.txn_get(&resp)? {
            None => Err(StoreError::NotFound { key: key.to_string() }),
            Some(current) => Err(StoreError::Conflict { key: key.to_string(), expected, actual: current.mod_revision }),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue), StoreError> {
        let k = self.full_key(key);
        let mut kv = self.client.kv_client();
        let (revision, prev) = match expected {
            None => {
                let opts = DeleteOptions::new().with_prev_key();
                let resp = call("delete", kv.delete(k, Some(opts))).await?;
                let Some(prev) = resp.prev_kvs().first() else {
                    return Err(StoreError::NotFound { key: key.to_string() });
                };
                (header_revision(resp.header())?, self.convert(prev)?)
            }
            Some(expected) => {
                let txn = Txn::new()
                    .when([
                        Compare::create_revision(k.clone(), CompareOp::Greater, 0),
                        Compare::mod_revision(k.clone(), CompareOp::Equal, expected),
                    ])
                    .and_then([TxnOp::delete(k.clone(), Some(DeleteOptions::new().with_prev_key()))])
                    .or_else([TxnOp::get(k, None)]);
                let resp = call("delete", kv.txn(txn)).await?;
                if !resp.succeeded() {
                    return match self.txn_get(&resp)? {
                        None => Err(StoreError::NotFound { key: key.to_string() }),
                        Some(current) => {
                            Err(StoreError::Conflict { key: key.to_string(), expected, actual: current.mod_revision })
                        }
                    };
                }
                let mut prev = None;
                for op in resp.op_responses() {
                    if let TxnOpResponse::Delete(d) = op {
                        prev = d.prev_kvs().first().map(|kv| self.convert(kv)).transpose()?;
                    }
                }
                let prev = prev.ok_or_else(|| StoreError::backend("etcd delete returned no previous value"))?;
                (header_revision(resp.header())?, prev)
            }
        };
        Ok((revision, KeyValue { mod_revision: revision, ..prev }))
    }

    async fn watch(&self, prefix: &str, after: Revision, progress: bool) -> Result<WatchStream, StoreError> {
        let after = after.max(0);
        if after > 0 {
            // Fail the call itself, like etcd would fail the range: a future
            // `after` (checked against a linearizable read, not the member
            // serving the watch, which may lag), or a compacted `after + 1`.
            let current = self.revision().await?;
            if after > current {
                return Err(StoreError::FutureRevision { requested: after, current });
            }
            if after < current {
                let opts = GetOptions::new().with_count_only().with_revision(after + 1);
                let mut kv = self.client.kv_client();
                if let Err(e) = call("watch", kv.get(self.range_start(""), Some(opts))).await {
                    return Err(match e {
                        EtcdError::Compacted => self.compacted_error(after + 1).await,
                        EtcdError::Future => self.future_error(after + 1).await,
                        EtcdError::Other(e) => e,
                    });
                }
            }
        }

        let mut full_prefix = self.prefix.to_string();
        full_prefix.push_str(prefix);
        let mut opts = WatchOptions::new()
            .with_range(prefix_end(&full_prefix))
            .with_prev_key()
            .with_start_revision(if after > 0 { after + 1 } else { 0 });
        if progress {
            opts = opts.with_progress_notify();
        }
        let mut watch_client = self.client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        let mut stream = call("watch", watch_client.watch(self.range_start(prefix), Some(opts))).await?;
        let created = match timeout(REQUEST_TIMEOUT, stream.message()).await {
            Err(_) => return Err(timed_out("watch")),
            Ok(Err(e)) => return Err(map_err(e)),
            Ok(Ok(None)) => return Err(StoreError::Unavailable { message: "etcd closed the watch stream".into() }),
            Ok(Ok(Some(resp))) => resp,
        };
        if !created.created() || created.canceled() {
            return Err(cancel_error(&created));
        }
        // A watch from "now" starts right after the creation revision.
        let known = if after > 0 { after } else { header_revision(created.header())? };

        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let pump = WatchPump {
            store: self.clone(),
            watch_id: created.watch_id(),
            known,
            progress,
            request_progress: progress && self.requested_progress,
        };
        tokio::spawn(pump.run(stream, tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let mut kv = self.client.kv_client();
        let opts = GetOptions::new().with_count_only();
        let resp = call("revision", kv.get(self.range_start(""), Some(opts))).await?;
        header_revision(resp.header())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let opts = CompactionOptions::new().with_physical();
        match call("compact", kv.compact(revision, Some(opts))).await {
            Ok(_) => Ok(()),
            Err(e) => match e {
                // Already compacted at or past `revision`: nothing to do.
                EtcdError::Compacted => Ok(()),
                EtcdError::Future => Err(self.future_error(revision).await),
                EtcdError::Other(e) => Err(e),
            },
        }
    }
}

fn cancel_error(resp: &etcd_client::WatchResponse) -> StoreError {
    let reason = resp.cancel_reason();
    let message = if reason.is_empty() {
        "etcd canceled the watch".to_string()
    } else {
        format!("etcd canceled the watch: {reason}")
    };
    if reason.contains("no leader") {
        StoreError::Unavailable { message }
    } else {
        StoreError::Backend { message }
    }
}

type WatchTx = mpsc::Sender<Result<WatchItem, StoreError>>;

/// Moves one etcd watch stream into a [`WatchStream`].
struct WatchPump {
    store: EtcdStore,
    watch_id: i64,
    /// Every change up to this revision has been delivered.
    known: Revision,
    progress: bool,
    request_progress: bool,
}

/// Whether the consumer is still there.
type Alive = bool;

impl WatchPump {
    async fn run(mut self, stream: etcd_client::WatchStream, tx: WatchTx) {
        let (mut requests, mut responses) = stream.split();
        let mut idle_since = Instant::now();
        let mut unanswered = false;
        loop {
            let idle_deadline = idle_since + PROGRESS_INTERVAL;
            tokio::select! {
                _ = tx.closed() => return,
                msg = responses.next() => {
                    let resp = match msg {
                        Some(Ok(resp)) => resp,
                        Some(Err(e)) => {
                            let _ = tx.send(Err(map_err(e))).await;
                            return;
                        }
                        None => {
                            let message = "etcd closed the watch stream".to_string();
                            let _ = tx.send(Err(StoreError::Unavailable { message })).await;
                            return;
                        }
                    };
                    let (alive, delivered, answered) = self.handle(resp, &tx).await;
                    if !alive {
                        return;
                    }
                    if answered {
                        unanswered = false;
                    }
                    if delivered {
                        idle_since = Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline), if self.progress => {
                    idle_since = Instant::now();
                    if self.request_progress {
                        // A fixed server defers the answer while the watcher
                        // catches up; meanwhile report what we know.
                        if unanswered && !self.send(&tx, WatchItem::Progress(self.known)).await {
                            return;
                        }
                        if requests.request_progress().await.is_err() {
                            // The stream is gone; its end arrives on `responses`.
                            continue;
                        }
                        unanswered = true;
                    } else if !self.send(&tx, WatchItem::Progress(self.known)).await {
                        return;
                    }
                }
            }
        }
    }

    async fn send(&self, tx: &WatchTx, item: WatchItem) -> Alive {
        tx.send(Ok(item)).await.is_ok()
    }

    /// Handles one etcd response: (consumer alive, something delivered,
    /// a requested progress notification answered).
    async fn handle(&mut self, resp: etcd_client::WatchResponse, tx: &WatchTx) -> (Alive, bool, bool) {
        if resp.compact_revision() != 0 {
            let err = StoreError::Compacted { requested: self.known + 1, compacted: resp.compact_revision() };
            let _ = tx.send(Err(err)).await;
            return (false, false, false);
        }
        if resp.canceled() {
            let _ = tx.send(Err(cancel_error(&resp))).await;
            return (false, false, false);
        }
        if resp.created() {
            return (true, false, false);
        }
        if resp.events().is_empty() {
            // A progress notification: timed ones carry our watch id and
            // are always ordered; requested ones carry -1 and are only
            // trusted (and only asked for) on servers that order them.
            let requested = resp.watch_id() != self.watch_id;
            if requested && !self.request_progress {
                return (true, false, false);
            }
            let revision = header_revision(resp.header()).unwrap_or(0);
            if revision > self.known {
                self.known = revision;
            }
            if !self.progress {
                return (true, false, requested);
            }
            let alive = self.send(tx, WatchItem::Progress(self.known)).await;
            return (alive, true, requested);
        }
        for ev in resp.events() {
            let item = match self.convert_event(ev) {
                Ok(event) => {
                    self.known = self.known.max(event.kv.mod_revision);
                    Ok(WatchItem::Event(event))
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return (false, false, false);
            }
        }
        (true, true, false)
    }

    fn convert_event(&self, ev: &etcd_client::Event) -> Result<Event, StoreError> {
        let store = &self.store;
        let kv = ev.kv().ok_or_else(|| StoreError::backend("etcd event without key"))?;
        let prev = ev.prev_kv().map(|p| store.convert(p)).transpose()?;
        match ev.event_type() {
            EventType::Put => {
                let kv = store.convert(kv)?;
                if kv.create_revision == kv.mod_revision {
                    Ok(Event { kind: EventKind::Create, kv, prev: None })
                } else {
                    Ok(Event { kind: EventKind::Update, kv, prev })
                }
            }
            EventType::Delete => {
                let revision = kv.mod_revision();
                let Some(prev) = prev else {
                    // etcd reads prev_kv at revision - 1, which a compaction
                    // may have removed under a lagging watcher.
                    return Err(StoreError::Compacted { requested: self.known + 1, compacted: revision });
                };
                Ok(Event {
                    kind: EventKind::Delete,
                    kv: KeyValue { mod_revision: revision, ..prev.clone() },
                    prev: Some(prev),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::requested_progress_is_ordered as ordered;

    #[test]
    fn requested_progress_versions() {
        assert!(!ordered("3.4.23"));
        assert!(!ordered("3.4.24"));
        assert!(ordered("3.4.25"));
        assert!(ordered("3.4.37"));
        assert!(!ordered("3.5.7"));
        assert!(ordered("3.5.8"));
        assert!(ordered("3.5.21"));
        assert!(ordered("3.6.0"));
        assert!(ordered("3.6.0-rc.1"));
        assert!(ordered("4.0.0"));
        assert!(!ordered("3.3.27"));
        assert!(!ordered(""));
        assert!(!ordered("garbage"));
    }
}
