//! `?watch=true`: a stream of newline-delimited JSON watch events
//! (`{"type":"ADDED","object":{…}}`), resumable from a resourceVersion.
//!
//! With selectors, an object that stops matching is sent as DELETED and
//! one that starts matching as ADDED, as Kubernetes does. With
//! `allowWatchBookmarks`, BOOKMARK events carry the latest revision while
//! idle. A resume from a compacted revision gets an ERROR event with a
//! 410 `Status`; the client lists again.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use sheaf_store::{EventKind, StoreError, WatchItem};
use sheaf_types::ResourceType;
use tokio::sync::mpsc;

use crate::error::{ApiError, Target};
use crate::objects::{from_kv, ListParams, Objects};
use crate::registry::collection_prefix;
use crate::table::{self, IncludeObject};

/// Least time between two bookmarks.
const BOOKMARK_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct WatchParams {
    pub list: ListParams,
    /// `None`/`"0"`: start with the current state as ADDED events.
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub table: Option<IncludeObject>,
}

fn frame(kind: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

struct Encoder {
    rt: ResourceType,
    table: Option<IncludeObject>,
    headers_sent: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, obj: Value) -> Bytes {
        match self.table {
            None => frame(kind, obj),
            Some(include) => {
                let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                let t = table::table(&self.rt, &[obj], json!({"resourceVersion": rv}), include, !self.headers_sent);
                self.headers_sent = true;
                frame(kind, t)
            }
        }
    }
}

/// One item of a watch, before encoding.
#[derive(Debug, Clone)]
pub enum Frame {
    /// `ADDED`, `MODIFIED` or `DELETED` with the object.
    Event(&'static str, Value),
    /// Everything up to this resourceVersion was delivered.
    Bookmark(String),
    /// The watch ends with this error (e.g. 410 for a compacted start).
    Error(ApiError),
}

/// Opens a watch as a channel of [`Frame`]s; used by the HTTP handler and
/// by in-process clients. The channel closes when the watch ends.
pub async fn frames(
    objects: Objects,
    rt: ResourceType,
    ns: Option<String>,
    p: WatchParams,
) -> Result<mpsc::Receiver<Frame>, ApiError> {
    let target = Target { group: rt.group, resource: rt.plural, name: "" };
    let mut initial = Vec::new();
    let start = match p.resource_version.as_deref() {
        None | Some("") | Some("0") => {
            let (items, rv, _) = objects
                .list(&rt, ns.as_deref(), &ListParams { limit: 0, continue_token: None, ..p.list.clone() })
                .await?;
            initial = items;
            rv.parse::<i64>().unwrap_or(0)
        }
        Some(rv) => rv.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resourceVersion {rv:?}: expected a value from a previous list or watch"
            ))
        })?,
    };
    let prefix = collection_prefix(&rt, ns.as_deref());
    let stream = match objects.store.watch(&prefix, start, p.bookmarks).await {
        Ok(s) => Some(s),
        Err(StoreError::Compacted { .. }) => None,
        Err(e) => return Err(ApiError::from_store(e, &target)),
    };
    let (tx, rx) = mpsc::channel::<Frame>(64);
    tokio::spawn(async move {
        let deadline = p.timeout.map(|t| tokio::time::Instant::now() + t);
        for obj in initial {
            if tx.send(Frame::Event("ADDED", obj)).await.is_err() {
                return;
            }
        }
        let Some(mut stream) = stream else {
            let e = ApiError::gone(format!(
                "too old resource version: {start}; list again and watch from its resourceVersion"
            ));
            let _ = tx.send(Frame::Error(e)).await;
            return;
        };
        let mut last_bookmark = tokio::time::Instant::now();
        loop {
            let next = match deadline {
                Some(d) => tokio::select! {
                    n = stream.next() => n,
                    _ = tokio::time::sleep_until(d) => return,
                    _ = tx.closed() => return,
                },
                None => tokio::select! {
                    n = stream.next() => n,
                    _ = tx.closed() => return,
                },
            };
            let frame = match next {
                None => return,
                Some(Err(StoreError::Compacted { requested, .. })) => {
                    let _ =
                        tx.send(Frame::Error(ApiError::gone(format!("too old resource version: {requested}")))).await;
                    return;
                }
                Some(Err(e)) => {
                    let _ = tx.send(Frame::Error(ApiError::from_store(e, &Target::default()))).await;
                    return;
                }
                Some(Ok(WatchItem::Progress(rev))) => {
                    if !p.bookmarks || last_bookmark.elapsed() < BOOKMARK_EVERY {
                        continue;
                    }
                    last_bookmark = tokio::time::Instant::now();
                    Frame::Bookmark(rev.to_string())
                }
                Some(Ok(WatchItem::Event(ev))) => {
                    let Ok(obj) = from_kv(&ev.kv) else { continue };
                    let prev = ev.prev.as_ref().and_then(|kv| from_kv(kv).ok());
                    let matches = |o: &Value| p.list.labels.matches(o) && p.list.fields.matches(o);
                    let now_matches = matches(&obj);
                    let was_matching = prev.as_ref().is_some_and(matches);
                    let kind = match ev.kind {
                        EventKind::Create if now_matches => "ADDED",
                        EventKind::Update if now_matches && was_matching => "MODIFIED",
                        EventKind::Update if now_matches => "ADDED",
                        EventKind::Update if was_matching => "DELETED",
                        EventKind::Delete if now_matches => "DELETED",
                        _ => continue,
                    };
                    Frame::Event(kind, obj)
                }
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Starts a watch; the response streams until the client goes away, the
/// timeout passes or the store fails.
pub async fn watch(
    objects: Objects,
    rt: ResourceType,
    ns: Option<String>,
    p: WatchParams,
) -> Result<Response, ApiError> {
    let mut enc = Encoder { rt: rt.clone(), table: p.table, headers_sent: false };
    let mut frames = frames(objects, rt.clone(), ns, p).await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        while let Some(f) = frames.recv().await {
            let bytes = match f {
                Frame::Event(kind, obj) => enc.event(kind, obj),
                // kubectl's table printer has no use for bookmarks.
                Frame::Bookmark(_) if enc.table.is_some() => continue,
                Frame::Bookmark(rv) => frame(
                    "BOOKMARK",
                    json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv}}),
                ),
                Frame::Error(e) => frame("ERROR", serde_json::to_value(e.status()).unwrap_or_default()),
            };
            if tx.send(Ok(bytes)).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = (http::StatusCode::OK, body).into_response();
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache, private"));
    Ok(resp)
}
