//! [`Api`] over HTTPS, for node agents on other machines than the server.
//!
//! Requests go to the API server's Kubernetes paths (`/api/v1/...` for the
//! core group, `/apis/GROUP/VERSION/...` for the others, with
//! `/namespaces/NS` when a namespace is given), authenticated by a bearer
//! token, over TLS that trusts exactly one certificate authority: the
//! cluster's. Failures answered by the server arrive as Kubernetes `Status`
//! objects and become [`ClientError`]s with the same code and reason as the
//! in-process API gives, so `is_not_found`, `is_conflict` and
//! `is_already_exists` mean the same either way. A watch is one long GET
//! (`?watch=true`) read as newline-delimited JSON events; it has no overall
//! timeout, but ends with an error when the server sends nothing (not even
//! a bookmark) for [`WATCH_IDLE`], so that a dead connection leads to a
//! relist.
//!
//! # Several servers
//!
//! An HA control plane has three servers; the client takes them all
//! (`https://a:6443,https://b:6443,https://c:6443`) and sends every
//! request to the current one. When that one cannot be reached (connect
//! error, timeout, connection lost before an answer) or answers 503 (its
//! store has no quorum), the request goes to the next, which becomes the
//! current one for every clone of the client. A watch fails over the same
//! way when it is opened again after its stream broke. A request retried
//! on another server may have been applied by the first: callers see
//! `AlreadyExists` or `Conflict` then, as after any retry, and their
//! level-triggered loops read the world again.
//!
//! [`RemoteApi::learn_servers`] adds the servers the client was not given,
//! from the Leases every server keeps in `kube-system`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;

use crate::{Api, ClientError, Gvr, Selectors, WatchEvent, WatchStream};

/// How long connecting to the server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request other than a watch may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A watch that receives nothing for this long is ended with an error
/// (the server sends bookmarks every few seconds while idle), so that a
/// watch on a server that vanished without closing the connection is
/// opened again, on another server if need be.
pub const WATCH_IDLE: Duration = Duration::from_secs(60);

/// Why a [`RemoteApi`] cannot be made, or the server cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("the server URL {url:?} is not valid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the certificate authority is not valid PEM: {0}")]
    BadCa(String),
    #[error("the certificate authority holds no PEM certificate")]
    NoCa,
    #[error("the token is empty")]
    NoToken,
    #[error("cannot set up the HTTPS client: {0}")]
    Client(String),
    #[error("cannot reach the API server {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error(
        "the API server {url} did not present a certificate signed by the given certificate authority \
         for its address: {message}"
    )]
    Certificate { url: String, message: String },
    #[error("the server refused the token: {0}")]
    Unauthorized(String),
    #[error("the API server {url} answered: {error}")]
    Status { url: String, error: ClientError },
}

/// The API over HTTPS.
#[derive(Clone)]
pub struct RemoteApi {
    http: reqwest::Client,
    /// `https://HOST:PORT` of every server, without a trailing slash: those
    /// given, then those learnt ([`RemoteApi::learn_servers`]). Only ever
    /// grows, so an index stays valid.
    bases: Arc<RwLock<Vec<String>>>,
    /// The index in `bases` of the server requests go to first; shared by
    /// every clone.
    current: Arc<AtomicUsize>,
    token: String,
}

impl std::fmt::Debug for RemoteApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteApi").field("servers", &self.bases).finish_non_exhaustive()
    }
}

/// A request that got no usable answer from any server.
struct Unanswered {
    base: String,
    error: reqwest::Error,
}

/// Whether another server may answer where this one failed: it could not
/// be reached or lost the connection; not when it presented the wrong
/// certificate (every server has the same CA: a configuration error).
fn worth_another_server(e: &reqwest::Error) -> bool {
    !is_certificate_error(&cause_chain(e)) && (e.is_connect() || e.is_timeout() || e.is_request())
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for path
/// segments and query values alike.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path of a collection (`name` None) or of one object, and of its
/// subresource `sub`.
pub fn resource_path(r: Gvr, ns: Option<&str>, name: Option<&str>, sub: Option<&str>) -> String {
    let mut p =
        if r.group.is_empty() { format!("/api/{}", r.version) } else { format!("/apis/{}/{}", r.group, r.version) };
    if let Some(ns) = ns {
        p.push_str("/namespaces/");
        p.push_str(&encode(ns));
    }
    p.push('/');
    p.push_str(r.plural);
    if let Some(name) = name {
        p.push('/');
        p.push_str(&encode(name));
        if let Some(sub) = sub {
            p.push('/');
            p.push_str(sub);
        }
    }
    p
}

/// The query string of a list or watch (with the leading `?`, empty when
/// there is nothing to ask).
pub fn list_query(sel: &Selectors, watch_from: Option<&str>) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(rv) = watch_from {
        pairs.push(("watch", "true"));
        pairs.push(("allowWatchBookmarks", "true"));
        pairs.push(("resourceVersion", rv));
    }
    if !sel.labels.is_empty() {
        pairs.push(("labelSelector", &sel.labels));
    }
    if !sel.fields.is_empty() {
        pairs.push(("fieldSelector", &sel.fields));
    }
    if pairs.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    format!("?{}", parts.join("&"))
}

/// The reason Kubernetes gives for an HTTP status without a `Status` body.
pub fn default_reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// The first few hundred characters of a body, for messages.
pub fn snippet(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    if s.is_empty() {
        return "(empty body)".into();
    }
    let mut out: String = s.chars().take(300).collect();
    if s.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// A `Status` object (as an error answer or a watch's ERROR event) as a
/// [`ClientError`]; `http_code` is used when the body names no code.
pub fn status_error(http_code: u16, body: &[u8]) -> ClientError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().filter(|v| v.get("kind").and_then(Value::as_str) == Some("Status")) {
        Some(v) => status_value_error(http_code, v),
        None => ClientError {
            code: http_code,
            reason: default_reason(http_code).into(),
            message: format!("the server answered HTTP {http_code}: {}", snippet(body)),
        },
    }
}

fn status_value_error(http_code: u16, v: &Value) -> ClientError {
    let code = v.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).unwrap_or(http_code);
    ClientError {
        code,
        reason: v
            .get("reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .unwrap_or(default_reason(code))
            .to_string(),
        message: v
            .get("message")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("the server answered HTTP {code}")),
    }
}

/// One line of a watch as an event; None for an empty line.
pub fn parse_watch_line(line: &[u8]) -> Option<Result<WatchEvent, ClientError>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return Some(Err(ClientError::other(format!("the server sent a watch event that is not JSON: {e}")))),
    };
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    let object = v.get("object").cloned().unwrap_or(Value::Null);
    Some(match kind {
        "ADDED" => Ok(WatchEvent::Added(object)),
        "MODIFIED" => Ok(WatchEvent::Modified(object)),
        "DELETED" => Ok(WatchEvent::Deleted(object)),
        "BOOKMARK" => Ok(WatchEvent::Bookmark(
            object.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_string(),
        )),
        "ERROR" => Err(status_value_error(500, &object)),
        other => Err(ClientError::other(format!("the server sent a watch event of unknown type {other:?}"))),
    })
}

/// The error and its sources, without repeats.
pub fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn is_certificate_error(chain: &str) -> bool {
    chain.contains("certificate") || chain.contains("UnknownIssuer") || chain.contains("NotValidForName")
}

/// Checks a server URL: `https://HOST[:PORT]`, nothing after it but `/`.
fn check_url(url: &str) -> Result<String, RemoteError> {
    let bad = |reason: &str| RemoteError::BadUrl { url: url.to_string(), reason: reason.to_string() };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("{e}; expected https://HOST:PORT")))?;
    if parsed.scheme() != "https" {
        return Err(bad("it must start with https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host; expected https://HOST:PORT"));
    }
    if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("it must be just https://HOST:PORT, without a path"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("it must not hold credentials; pass the token separately"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

impl RemoteApi {
    /// A client of the server at `server` (`https://HOST:PORT`, or several
    /// such URLs separated by commas: the servers of an HA control plane)
    /// that trusts only the certificates in `ca_pem` and sends `token`.
    pub fn new(server: &str, ca_pem: &[u8], token: &str) -> Result<RemoteApi, RemoteError> {
        let mut bases: Vec<String> = Vec::new();
        for url in server.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let base = check_url(url)?;
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
        if bases.is_empty() {
            return Err(check_url("").expect_err("an empty URL is not valid"));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(RemoteError::NoToken);
        }
        let certs = reqwest::Certificate::from_pem_bundle(ca_pem).map_err(|e| RemoteError::BadCa(cause_chain(&e)))?;
        if certs.is_empty() {
            return Err(RemoteError::NoCa);
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("sheaf-agent/", env!("CARGO_PKG_VERSION")));
        for c in certs {
            b = b.add_root_certificate(c);
        }
        let http = b.build().map_err(|e| RemoteError::Client(cause_chain(&e)))?;
        Ok(RemoteApi {
            http,
            bases: Arc::new(RwLock::new(bases)),
            current: Arc::new(AtomicUsize::new(0)),
            token: token.to_string(),
        })
    }

    /// The URL of the server requests go to now, `https://HOST:PORT`.
    pub fn server(&self) -> String {
        let bases = self.servers();
        bases[self.current.load(Ordering::Relaxed) % bases.len()].clone()
    }

    /// Every server's URL: those given, in their order, then those learnt.
    pub fn servers(&self) -> Vec<String> {
        self.bases.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds a server to fail over to; false when it is known already or
    /// its URL is not `https://HOST:PORT`.
    pub fn add_server(&self, url: &str) -> bool {
        let Ok(base) = check_url(url.trim()) else { return false };
        let mut bases = self.bases.write().unwrap_or_else(|e| e.into_inner());
        if bases.contains(&base) {
            return false;
        }
        bases.push(base);
        true
    }

    /// Learns the control plane's servers from their Leases (see
    /// [`sheaf_types::join::SERVER_LEASE_LABEL`]) now and then every
    /// `every`, and adds those it did not know; forever.
    pub async fn learn_servers(self, every: Duration) {
        use sheaf_types::join::{SERVER_LEASE_LABEL, SERVER_LEASE_NAMESPACE, SERVER_URL_ANNOTATION};
        const LEASES: Gvr = Gvr { group: "coordination.k8s.io", version: "v1", plural: "leases" };
        let sel = Selectors { labels: SERVER_LEASE_LABEL.into(), fields: String::new() };
        loop {
            match self.list(LEASES, Some(SERVER_LEASE_NAMESPACE), &sel).await {
                Ok((items, _)) => {
                    for lease in items {
                        let url = lease
                            .pointer("/metadata/annotations")
                            .and_then(|a| a.get(SERVER_URL_ANNOTATION))
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if self.add_server(url) {
                            tracing::info!(server = %url, servers = ?self.servers(), "learnt an API server");
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot list the API servers' leases"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Sends the request `build` makes for a server's base URL to the
    /// current server, and to the others in turn while they cannot be
    /// reached or answer 503; the server that answered becomes current.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, String), Unanswered> {
        let bases = self.servers();
        let n = bases.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last_503 = None;
        let mut last_err = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let base = &bases[idx];
            match build(base).send().await {
                Ok(resp) if resp.status().as_u16() == 503 && i + 1 < n => {
                    tracing::debug!(server = %base, "the server answered 503; trying the next");
                    last_503 = Some((resp, base.clone()));
                }
                Ok(resp) => {
                    self.switch_to(&bases, start, idx);
                    return Ok((resp, base.clone()));
                }
                Err(error) if worth_another_server(&error) && i + 1 < n => {
                    tracing::debug!(server = %base, error = %cause_chain(&error), "server unreachable; trying the next");
                    last_err = Some(Unanswered { base: base.clone(), error });
                }
                Err(error) => {
                    if let Some((resp, base)) = last_503 {
                        // Every server failed; a 503 says more than a
                        // connection error.
                        return Ok((resp, base));
                    }
                    return Err(Unanswered { base: base.clone(), error });
                }
            }
        }
        match (last_503, last_err) {
            (Some((resp, base)), _) => Ok((resp, base)),
            (None, Some(e)) => Err(e),
            (None, None) => unreachable!("a client has at least one server"),
        }
    }

    fn switch_to(&self, bases: &[String], from: usize, to: usize) {
        if from != to && self.current.compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::info!(from = %bases[from], to = %bases[to], "switched to another API server");
        }
    }

    /// Checks that the server answers and accepts the token (an
    /// authenticated GET of `/api`), telling unreachable servers,
    /// certificate mismatches and refused tokens apart.
    pub async fn probe(&self) -> Result<(), RemoteError> {
        let (resp, base) = self
            .send(|base| self.request(base, reqwest::Method::GET, "/api").timeout(REQUEST_TIMEOUT))
            .await
            .map_err(|Unanswered { base, error }| {
                let message = cause_chain(&error);
                if is_certificate_error(&message) {
                    RemoteError::Certificate { url: base, message }
                } else {
                    RemoteError::Unreachable { url: base, message }
                }
            })?;
        let code = resp.status().as_u16();
        if (200..300).contains(&code) {
            return Ok(());
        }
        let body = resp.bytes().await.unwrap_or_default();
        let error = status_error(code, &body);
        if code == 401 {
            return Err(RemoteError::Unauthorized(error.message));
        }
        Err(RemoteError::Status { url: base, error })
    }

    fn request(&self, base: &str, method: reqwest::Method, path_and_query: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{base}{path_and_query}"))
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json")
    }

    fn transport_error(base: &str, e: reqwest::Error) -> ClientError {
        let chain = cause_chain(&e);
        let hint = if e.is_timeout() {
            " (timed out)"
        } else if is_certificate_error(&chain) {
            " (the server's certificate is not signed by the given certificate authority)"
        } else {
            ""
        };
        ClientError {
            code: 503,
            reason: "ServiceUnavailable".into(),
            message: format!("cannot reach the API server {base}: {chain}{hint}"),
        }
    }

    /// Sends a request with an optional JSON body; the 2xx answer's JSON,
    /// or the server's `Status` as an error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&'static str, &Value)>,
    ) -> Result<Value, ClientError> {
        let body = match body {
            Some((ct, v)) => Some((
                ct,
                bytes::Bytes::from(
                    serde_json::to_vec(v).map_err(|e| ClientError::other(format!("cannot encode object: {e}")))?,
                ),
            )),
            None => None,
        };
        let (resp, base) = self
            .send(|base| {
                let req = self.request(base, method.clone(), path).timeout(REQUEST_TIMEOUT);
                match &body {
                    Some((ct, bytes)) => req.header(reqwest::header::CONTENT_TYPE, *ct).body(bytes.clone()),
                    None => req,
                }
            })
            .await
            .map_err(|u| Self::transport_error(&u.base, u.error))?;
        let code = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| Self::transport_error(&base, e))?;
        if !(200..300).contains(&code) {
            return Err(status_error(code, &bytes));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::other(format!(
                "the server answered {path} with something that is not JSON ({e}): {}",
                snippet(&bytes)
            ))
        })
    }
}

fn name_of(obj: &Value) -> Result<&str, ClientError> {
    obj.pointer("/metadata/name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or_else(|| ClientError {
        code: 422,
        reason: "Invalid".into(),
        message: "metadata.name: Required value: the object has no name".into(),
    })
}

#[async_trait::async_trait]
impl Api for RemoteApi {
    async fn get(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<Option<Value>, ClientError> {
        match self.call(reqwest::Method::GET, &resource_path(r, ns, Some(name), None), None).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, r: Gvr, ns: Option<&str>, sel: &Selectors) -> Result<(Vec<Value>, String), ClientError> {
        let path = format!("{}{}", resource_path(r, ns, None, None), list_query(sel, None));
        let mut v = self.call(reqwest::Method::GET, &path, None).await?;
        let rv = v.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_string();
        let items = match v.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(ClientError::other(format!("the list of {path} has items that are not a list"))),
        };
        Ok((items, rv))
    }

    async fn watch(
        &self,
        r: Gvr,
        ns: Option<&str>,
        sel: &Selectors,
        resource_version: &str,
    ) -> Result<WatchStream, ClientError> {
        let path = format!("{}{}", resource_path(r, ns, None, None), list_query(sel, Some(resource_version)));
        // No overall timeout: the answer streams for as long as the watch lasts.
        let (resp, base) = self
            .send(|base| self.request(base, reqwest::Method::GET, &path))
            .await
            .map_err(|u| Self::transport_error(&u.base, u.error))?;
        let code = resp.status().as_u16();
        if !(200..300).contains(&code) {
            let bytes = resp.bytes().await.map_err(|e| Self::transport_error(&base, e))?;
            return Err(status_error(code, &bytes));
        }
        struct State {
            body: futures::stream::BoxStream<'static, Result<bytes::Bytes, reqwest::Error>>,
            buf: Vec<u8>,
            done: bool,
            base: String,
        }
        let state = State { body: resp.bytes_stream().boxed(), buf: Vec::new(), done: false, base };
        let stream = futures::stream::unfold(state, |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                if let Some(pos) = st.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = st.buf.drain(..=pos).collect();
                    match parse_watch_line(&line) {
                        None => continue,
                        Some(Err(e)) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                        Some(Ok(ev)) => return Some((Ok(ev), st)),
                    }
                }
                match tokio::time::timeout(WATCH_IDLE, st.body.next()).await {
                    Err(_) => {
                        st.done = true;
                        let e = ClientError {
                            code: 504,
                            reason: "Timeout".into(),
                            message: format!("the watch on {} sent nothing for {} s", st.base, WATCH_IDLE.as_secs()),
                        };
                        return Some((Err(e), st));
                    }
                    Ok(None) => {
                        // The server ended the watch; a last line without
                        // its newline still counts.
                        st.done = true;
                        let line = std::mem::take(&mut st.buf);
                        return parse_watch_line(&line).map(|ev| (ev, st));
                    }
                    Ok(Some(Err(e))) => {
                        st.done = true;
                        let e = ClientError {
                            code: 503,
                            reason: "ServiceUnavailable".into(),
                            message: format!("the watch on {} broke: {}", st.base, cause_chain(&e)),
                        };
                        return Some((Err(e), st));
                    }
                    Ok(Some(Ok(chunk))) => st.buf.extend_from_slice(&chunk),
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn create(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
        let path = resource_path(r, ns, None, None);
        self.call(reqwest::Method::POST, &path, Some(("application/json", &obj))).await
    }

    async fn update(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
        let path = resource_path(r, ns, Some(name_of(&obj)?), None);
        self.call(reqwest::Method::PUT, &path, Some(("application/json", &obj))).await
    }

    async fn update_status(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value, ClientError> {
        let path = resource_path(r, ns, Some(name_of(&obj)?), Some("status"));
        self.call(reqwest::Method::PUT, &path, Some(("application/json", &obj))).await
    }

    async fn merge_patch(
        &self,
        r: Gvr,
        ns: Option<&str>,
        name: &str,
        patch: Value,
        status: bool,
    ) -> Result<Value, ClientError> {
        let path = resource_path(r, ns, Some(name), status.then_some("status"));
        self.call(reqwest::Method::PATCH, &path, Some(("application/merge-patch+json", &patch))).await
    }

    async fn delete(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<(), ClientError> {
        let path = resource_path(r, ns, Some(name), None);
        let opts = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
        self.call(reqwest::Method::DELETE, &path, Some(("application/json", &opts))).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PODS: Gvr = Gvr { group: "", version: "v1", plural: "pods" };
    const NODES: Gvr = Gvr { group: "", version: "v1", plural: "nodes" };
    const VMIS: Gvr = Gvr { group: "kubevirt.io", version: "v1", plural: "virtualmachineinstances" };

    #[test]
    fn paths() {
        assert_eq!(resource_path(NODES, None, None, None), "/api/v1/nodes");
        assert_eq!(resource_path(NODES, None, Some("node-1"), Some("status")), "/api/v1/nodes/node-1/status");
        assert_eq!(resource_path(PODS, Some("default"), None, None), "/api/v1/namespaces/default/pods");
        assert_eq!(resource_path(PODS, None, None, None), "/api/v1/pods");
        assert_eq!(
            resource_path(VMIS, Some("a"), Some("vm1"), None),
            "/apis/kubevirt.io/v1/namespaces/a/virtualmachineinstances/vm1"
        );
        assert_eq!(
            resource_path(VMIS, Some("a"), Some("vm1"), Some("status")),
            "/apis/kubevirt.io/v1/namespaces/a/virtualmachineinstances/vm1/status"
        );
        // A subresource needs a name; odd characters are encoded.
        assert_eq!(resource_path(VMIS, None, None, Some("status")), "/apis/kubevirt.io/v1/virtualmachineinstances");
        assert_eq!(resource_path(NODES, None, Some("a b/c"), None), "/api/v1/nodes/a%20b%2Fc");
    }

    #[test]
    fn queries() {
        assert_eq!(list_query(&Selectors::default(), None), "");
        let sel = Selectors { labels: "app in (a,b),tier".into(), fields: "status.nodeName=node-1".into() };
        assert_eq!(
            list_query(&sel, None),
            "?labelSelector=app%20in%20%28a%2Cb%29%2Ctier&fieldSelector=status.nodeName%3Dnode-1"
        );
        assert_eq!(
            list_query(&Selectors { labels: String::new(), fields: "status.nodeName=n".into() }, Some("42")),
            "?watch=true&allowWatchBookmarks=true&resourceVersion=42&fieldSelector=status.nodeName%3Dn"
        );
    }

    fn status(code: u16, reason: &str, message: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message
        }))
        .expect("json")
    }

    #[test]
    fn statuses_map_like_the_local_api() {
        let e = status_error(404, &status(404, "NotFound", "nodes \"x\" not found"));
        assert!(e.is_not_found() && !e.is_conflict(), "{e}");
        assert_eq!(e.message, "nodes \"x\" not found");
        let e = status_error(409, &status(409, "AlreadyExists", "nodes \"x\" already exists"));
        assert!(e.is_conflict() && e.is_already_exists(), "{e}");
        let e = status_error(409, &status(409, "Conflict", "the object has been modified"));
        assert!(e.is_conflict() && !e.is_already_exists(), "{e}");
        let e = status_error(422, &status(422, "Invalid", "bad spec"));
        assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
        // The code in the body wins; a missing reason is derived from it.
        let e = status_error(500, &serde_json::to_vec(&json!({"kind": "Status", "code": 410})).expect("json"));
        assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
        // Not a Status: the HTTP code, its usual reason and the body.
        let e = status_error(401, b"nope");
        assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"));
        assert!(e.message.contains("nope"), "{e}");
        let e = status_error(502, b"");
        assert_eq!((e.code, e.reason.as_str()), (502, "InternalError"));
        assert!(e.message.contains("(empty body)"), "{e}");
    }

    #[test]
    fn watch_lines() {
        let line = |v: Value| serde_json::to_vec(&v).expect("json");
        let obj = json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        assert_eq!(
            parse_watch_line(&line(json!({"type": "ADDED", "object": obj}))).expect("event").expect("ok"),
            WatchEvent::Added(obj.clone())
        );
        assert_eq!(
            parse_watch_line(&line(json!({"type": "MODIFIED", "object": obj}))).expect("event").expect("ok"),
            WatchEvent::Modified(obj.clone())
        );
        assert_eq!(
            parse_watch_line(&line(json!({"type": "DELETED", "object": obj}))).expect("event").expect("ok"),
            WatchEvent::Deleted(obj.clone())
        );
        let bm = json!({"type": "BOOKMARK", "object": {"kind": "Node", "metadata": {"resourceVersion": "99"}}});
        assert_eq!(parse_watch_line(&line(bm)).expect("event").expect("ok"), WatchEvent::Bookmark("99".into()));
        let err = json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}});
        let e = parse_watch_line(&line(err)).expect("event").expect_err("error");
        assert_eq!((e.code, e.reason.as_str(), e.message.as_str()), (410, "Expired", "too old"));
        assert!(parse_watch_line(b"  \n").is_none());
        assert!(parse_watch_line(b"{not json").expect("event").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(check_url("https://10.0.0.1:6443/").expect("ok"), "https://10.0.0.1:6443");
        assert_eq!(check_url("https://server.example:6443").expect("ok"), "https://server.example:6443");
        for bad in ["http://10.0.0.1:6443", "10.0.0.1:6443", "https://10.0.0.1:6443/api", "https://", "not a url"] {
            let e = check_url(bad).expect_err(bad);
            assert!(matches!(e, RemoteError::BadUrl { .. }), "{bad}: {e}");
        }
        let pem = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        assert!(RemoteApi::new("https://10.0.0.1:6443", pem, "t").is_err());
        assert!(matches!(RemoteApi::new("https://10.0.0.1:6443", b"", "t"), Err(RemoteError::NoCa)));
        assert!(matches!(RemoteApi::new("https://10.0.0.1:6443", b"", " "), Err(RemoteError::NoToken)));
    }

    /// A CA certificate (never used to verify anything here).
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBeTCCAR+gAwIBAgIUcJzczgaHUp+kKWRmW6hiXzbTnIIwCgYIKoZIzj0EAwIw\nEjEQMA4GA1UEAwwHdGVzdC1jYTAeFw0yNjEyMDExNTE2MjRaFw0zNjExMjgxNTE2\nMjRaMBIxEDAOBgNVBAMMB3Rlc3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC\nAASdj+eYiUZzTUCFcRCoy8xYRWCQkFnvG6wgn87+kZPURUxDoABnHX2Twj6Scuj2\n4sZ1dkjcJsXCTY9Dtw+W8wbco1MwUTAdBgNVHQ4EFgQU3L30l30OBjCKUBhBKOlU\nCqBZQjkwHwYDVR0jBBgwFoAU3L30l30OBjCKUBhBKOlUCqBZQjkwDwYDVR0TAQH/\nBAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA7sMwk3hcEYw6JWodji4yPUmOE5+C\n1a/5GLTqUtl8S60CIBrvfhqNUxjqndXwKZGMuuB5Cl6xeAZcqzscdRLHyrfK\n-----END CERTIFICATE-----\n";

    #[tokio::test]
    async fn several_servers() {
        let api = RemoteApi::new(
            "https://10.0.0.1:6443, https://10.0.0.2:6443/,https://10.0.0.1:6443",
            TEST_CA.as_bytes(),
            "t",
        )
        .expect("client");
        assert_eq!(api.servers(), ["https://10.0.0.1:6443", "https://10.0.0.2:6443"]);
        assert_eq!(api.server(), "https://10.0.0.1:6443");
        assert!(api.add_server("https://10.0.0.3:6443"));
        assert!(!api.add_server("https://10.0.0.2:6443"), "known already");
        assert!(!api.add_server("http://10.0.0.4:6443"), "not https");
        assert!(!api.add_server(""), "no URL");
        // Clones share the list.
        assert_eq!(api.clone().servers().len(), 3);
        let e = RemoteApi::new("https://10.0.0.1:6443,http://x:1", TEST_CA.as_bytes(), "t").expect_err("one is bad");
        assert!(matches!(e, RemoteError::BadUrl { .. }), "{e}");
        assert!(matches!(RemoteApi::new(" , ", TEST_CA.as_bytes(), "t"), Err(RemoteError::BadUrl { .. })));

        // Nothing listens on these loopback ports: every server is tried,
        // the answer names the last, and the current one stays.
        let dead = |port: u16| format!("https://127.0.0.1:{port}");
        let ports: Vec<u16> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port())
            .collect();
        let api =
            RemoteApi::new(&format!("{},{}", dead(ports[0]), dead(ports[1])), TEST_CA.as_bytes(), "t").expect("client");
        let e = api.get(Gvr { group: "", version: "v1", plural: "nodes" }, None, "n").await.expect_err("unreachable");
        assert_eq!(e.code, 503, "{e}");
        assert!(e.message.contains(&dead(ports[1])), "the last server tried: {e}");
        assert_eq!(api.server(), dead(ports[0]));
    }
}
