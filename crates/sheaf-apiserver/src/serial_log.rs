//! `GET /apis/subresources.kubevirt.io/v1/namespaces/NS/virtualmachineinstances/NAME/log`:
//! an instance's serial console output as `text/plain`, read from the log
//! its node's agent keeps (`RUN_DIR/UID/serial.log` and its rotated
//! generations `serial.log.1` ... , oldest last; see
//! `sheaf_agent::serial_log`). `sheaf vm logs` uses it.
//!
//! Query parameters, as `kubectl logs` has them:
//! - `tailLines=N`: only the last N lines.
//! - `limitBytes=N`: at most N bytes (of what `tailLines` selected, from
//!   its start).
//! - `previous=true`: only the rotated generations (what no longer is in
//!   the current one); without it, every generation kept, oldest first.
//! - `follow=true`: after what is there, stream what the guest prints,
//!   until the instance stops running (or the client goes away).
//!
//! `sinceSeconds`, `sinceTime` and `timestamps` are refused: the serial
//! port carries no time stamps. The files are reached through the
//! [`NodeDialer`] that reaches consoles, so the same limits hold: the
//! instances of the node whose agent runs in the server's process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::console::NodeDialer;
use crate::error::{ApiError, ApiResult};
use crate::objects::Objects;

/// The most of the log read for one answer (the newest bytes are kept).
pub const MAX_READ_BYTES: usize = 16 * 1024 * 1024;
/// How often a followed log is looked at.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// How often a followed log checks that its instance still runs.
const FOLLOW_CHECK: Duration = Duration::from_secs(2);

/// What a `log` request asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub previous: bool,
    pub follow: bool,
}

fn flag(q: &HashMap<String, String>, key: &str) -> ApiResult<bool> {
    match q.get(key).map(|v| v.trim()) {
        None => Ok(false),
        Some("" | "true" | "True" | "1") => Ok(true),
        Some("false" | "False" | "0") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!("{key}={v:?} is not a boolean: use {key}=true or {key}=false"))),
    }
}

fn number(q: &HashMap<String, String>, key: &str, min: u64) -> ApiResult<Option<u64>> {
    let Some(v) = q.get(key) else { return Ok(None) };
    match v.trim().parse::<u64>() {
        Ok(n) if n >= min => Ok(Some(n)),
        _ => Err(ApiError::bad_request(format!("{key}={v:?} must be a whole number of at least {min}"))),
    }
}

impl LogQuery {
    /// Reads the query string; unsupported or malformed values are a 400.
    pub fn parse(q: &HashMap<String, String>) -> ApiResult<LogQuery> {
        for key in ["sinceSeconds", "sinceTime"] {
            if q.contains_key(key) {
                return Err(ApiError::bad_request(format!(
                    "{key} is not supported: serial console output carries no time stamps; use tailLines or limitBytes"
                )));
            }
        }
        if flag(q, "timestamps")? {
            return Err(ApiError::bad_request(
                "timestamps=true is not supported: serial console output carries no time stamps",
            ));
        }
        let query = LogQuery {
            tail_lines: number(q, "tailLines", 0)?,
            limit_bytes: number(q, "limitBytes", 1)?,
            previous: flag(q, "previous")?,
            follow: flag(q, "follow")?,
        };
        if query.previous && query.follow {
            return Err(ApiError::bad_request(
                "previous=true and follow=true do not go together: rotated generations do not grow",
            ));
        }
        Ok(query)
    }

    /// The part of `log` this query selects: the last `tailLines` lines
    /// (a last line without its newline counts), then the first
    /// `limitBytes` bytes of those.
    pub fn select<'a>(&self, log: &'a [u8]) -> &'a [u8] {
        let mut out = log;
        if let Some(n) = self.tail_lines {
            out = tail_lines(out, n);
        }
        if let Some(limit) = self.limit_bytes {
            out = &out[..out.len().min(usize::try_from(limit).unwrap_or(usize::MAX))];
        }
        out
    }
}

/// The last `n` lines of `log`.
pub fn tail_lines(log: &[u8], n: u64) -> &[u8] {
    if n == 0 {
        return &[];
    }
    // A trailing newline ends the last line; it does not start another.
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &log[i + 1..];
            }
        }
    }
    log
}

/// Reads the generations (given newest first) into one buffer, oldest
/// first, keeping at most the newest [`MAX_READ_BYTES`].
async fn read_generations(files: &[PathBuf]) -> std::io::Result<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut total = 0;
    for f in files {
        let data = match tokio::fs::read(f).await {
            Ok(d) => d,
            // Rotated away between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        total += data.len();
        parts.push(data);
        if total >= MAX_READ_BYTES {
            break;
        }
    }
    let mut out = Vec::with_capacity(total);
    for p in parts.iter().rev() {
        out.extend_from_slice(p);
    }
    if out.len() > MAX_READ_BYTES {
        out.drain(..out.len() - MAX_READ_BYTES);
    }
    Ok(out)
}

fn conflict(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "Conflict", message)
}

fn text(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Handles `GET .../virtualmachineinstances/NAME/log`.
pub async fn get(
    objects: &Objects,
    dialer: Option<&Arc<dyn NodeDialer>>,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> ApiResult<Response> {
    let query = LogQuery::parse(q)?;
    let Some(rt) = objects.registry.find("kubevirt.io", "v1", "virtualmachineinstances").cloned() else {
        return Err(ApiError::internal("VirtualMachineInstance kind is not registered"));
    };
    let vmi = objects.get(&rt, Some(ns), name).await?;
    let phase = vmi.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending").to_string();
    let uid = vmi.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let node = vmi.pointer("/status/nodeName").and_then(Value::as_str).unwrap_or_default().to_string();
    if node.is_empty() || !matches!(phase.as_str(), "Running" | "Succeeded" | "Failed") {
        return Err(conflict(format!(
            "VMI {name:?} is not running yet (phase {phase}): its serial log starts with it; try again once it runs"
        )));
    }
    let Some(dialer) = dialer else {
        return Err(ApiError::unavailable(format!("this API server cannot read the serial logs of node {node:?}")));
    };
    let files = dialer
        .serial_logs(&node, &uid)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the serial log of VMI {name:?}: {e}")))?;
    if files.is_empty() {
        return Err(conflict(if phase == "Running" {
            format!("VMI {name:?} has no serial log yet; try again in a moment")
        } else {
            format!("VMI {name:?} ended ({phase}) and left no serial log on node {node:?}")
        }));
    }
    let selected = if query.previous { &files[1..] } else { &files[..] };
    if selected.is_empty() {
        return Err(ApiError::bad_request(format!(
            "VMI {name:?} has no previous serial log generations: its log has not been rotated yet; \
             leave out previous=true to read the current one"
        )));
    }
    // Where a follow goes on from: taken before reading, so that nothing
    // printed meanwhile is missed (it may show twice).
    let offset = tokio::fs::metadata(&files[0]).await.map(|m| m.len()).unwrap_or(0);
    let log = read_generations(selected)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the serial log of VMI {name:?}: {e}")))?;
    let body = query.select(&log).to_vec();
    if !query.follow || phase != "Running" {
        return Ok(text(Body::from(body)));
    }
    // Follow: what is there, then what comes, from the current file's end.
    let current = files[0].clone();
    let limit = query.limit_bytes.map(|l| l.saturating_sub(body.len() as u64));
    let follow = Follow {
        objects: objects.clone(),
        rt,
        ns: ns.to_string(),
        name: name.to_string(),
        uid,
        current,
        offset,
        left: limit,
        last_check: tokio::time::Instant::now(),
        ending: false,
    };
    let head = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(body)) });
    let rest = futures::stream::unfold(follow, |mut f| async move { f.next().await.map(|b| (Ok(b), f)) });
    use futures::StreamExt as _;
    Ok(text(Body::from_stream(head.chain(rest))))
}

/// A followed log: where it is read, and whether its instance still runs.
struct Follow {
    objects: Objects,
    rt: sheaf_types::ResourceType,
    ns: String,
    name: String,
    uid: String,
    current: PathBuf,
    offset: u64,
    /// Bytes that `limitBytes` still allows.
    left: Option<u64>,
    last_check: tokio::time::Instant,
    /// The instance stopped: one last read, then the end.
    ending: bool,
}

impl Follow {
    /// The next bytes the guest printed, or None at the end.
    async fn next(&mut self) -> Option<bytes::Bytes> {
        loop {
            if self.left == Some(0) {
                return None;
            }
            let mut chunk = self.read_new().await;
            if let Some(left) = self.left.as_mut() {
                chunk.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= chunk.len() as u64;
            }
            if !chunk.is_empty() {
                return Some(chunk.into());
            }
            if self.ending {
                return None;
            }
            if self.last_check.elapsed() >= FOLLOW_CHECK {
                self.last_check = tokio::time::Instant::now();
                self.ending = !self.still_running().await;
                continue;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    async fn still_running(&self) -> bool {
        match self.objects.get(&self.rt, Some(&self.ns), &self.name).await {
            Ok(v) => {
                v.pointer("/metadata/uid").and_then(Value::as_str) == Some(self.uid.as_str())
                    && v.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
            }
            Err(_) => false,
        }
    }

    /// What was appended since the last read. A file shorter than what
    /// was read has been rotated: the rest of the old content is in
    /// generation 1, the new content starts at 0.
    async fn read_new(&mut self) -> Vec<u8> {
        let size = match tokio::fs::metadata(&self.current).await {
            Ok(m) => m.len(),
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::new();
        if size < self.offset {
            let mut rotated = self.current.clone().into_os_string();
            rotated.push(".1");
            out = read_from(&PathBuf::from(rotated), self.offset).await;
            self.offset = 0;
        }
        let new = read_from(&self.current, self.offset).await;
        self.offset += new.len() as u64;
        out.extend_from_slice(&new);
        out
    }
}

/// The bytes of `path` from `offset` on (at most 1 MiB at a time).
async fn read_from(path: &PathBuf, offset: u64) -> Vec<u8> {
    let Ok(mut f) = tokio::fs::File::open(path).await else { return Vec::new() };
    if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let _ = f.take(1024 * 1024).read_to_end(&mut out).await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn tail_lines_counts_a_last_line_without_newline() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\nc\n", 3), b"a\nb\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc\n", 10), b"a\nb\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc\n", 1), b"c\n");
        assert_eq!(tail_lines(b"a\nb\nc\n", 0), b"");
        assert_eq!(tail_lines(b"", 5), b"");
        assert_eq!(tail_lines(b"\n\n\n", 2), b"\n\n");
        assert_eq!(tail_lines(b"only", 1), b"only");
    }

    #[test]
    fn limit_bytes_applies_after_tail_lines() {
        let query = LogQuery { tail_lines: Some(2), limit_bytes: Some(3), ..Default::default() };
        assert_eq!(query.select(b"one\ntwo\nthree\n"), b"two");
        let query = LogQuery { limit_bytes: Some(100), ..Default::default() };
        assert_eq!(query.select(b"short"), b"short");
        assert_eq!(LogQuery::default().select(b"all of it"), b"all of it");
    }

    #[test]
    fn query_values_are_checked() {
        let ok = LogQuery::parse(&q(&[("tailLines", "10"), ("limitBytes", "5"), ("previous", "true")])).expect("ok");
        assert_eq!(ok, LogQuery { tail_lines: Some(10), limit_bytes: Some(5), previous: true, follow: false });
        assert!(LogQuery::parse(&q(&[("follow", "")])).expect("bare flag").follow);
        for bad in [
            ("tailLines", "-1"),
            ("tailLines", "ten"),
            ("limitBytes", "0"),
            ("limitBytes", "1.5"),
            ("previous", "yes"),
            ("sinceSeconds", "10"),
            ("timestamps", "true"),
        ] {
            let e = LogQuery::parse(&q(&[bad])).expect_err("refused");
            assert_eq!(e.code, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(e.message.contains(bad.0), "{bad:?}: {}", e.message);
        }
        let e = LogQuery::parse(&q(&[("previous", "true"), ("follow", "true")])).expect_err("refused");
        assert!(e.message.contains("do not go together"), "{}", e.message);
        assert!(!LogQuery::parse(&q(&[("timestamps", "false")])).expect("ok").follow);
    }

    #[tokio::test]
    async fn generations_are_read_oldest_first() {
        let d = tempfile::tempdir().expect("tempdir");
        let files: Vec<PathBuf> =
            ["serial.log", "serial.log.1", "serial.log.2"].iter().map(|f| d.path().join(f)).collect();
        std::fs::write(&files[0], "3rd\n").expect("write");
        std::fs::write(&files[1], "2nd\n").expect("write");
        std::fs::write(&files[2], "1st\n").expect("write");
        let all = read_generations(&files).await.expect("read");
        assert_eq!(all, b"1st\n2nd\n3rd\n");
        let previous = read_generations(&files[1..]).await.expect("read");
        assert_eq!(previous, b"1st\n2nd\n");
        // A generation rotated away meanwhile is skipped.
        std::fs::remove_file(&files[2]).expect("rm");
        assert_eq!(read_generations(&files).await.expect("read"), b"2nd\n3rd\n");
    }
}
