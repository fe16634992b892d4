//! An [`ObjectStore`] on an S3-compatible bucket (AWS S3, MinIO, Ceph RGW,
//! Garage, moto), spoken to directly over HTTP with requests signed by
//! AWS Signature Version 4 (written here, in `sign`).
//!
//! Every call is one S3 request (a listing is one request per page), sent
//! by a shared `reqwest` client; nothing is cached between calls, so an
//! `S3Store` can be dropped and rebuilt at any time. A request that failed
//! in a way that may pass is signed anew and sent again, 3 times at most:
//!
//! ```text
//!   ┌─► sign ─► send ─┬─► answered ─────────────────► status / error XML → result
//!   │                 └─► transient: no connection, HTTP 500/502/503/504, SlowDown
//!   │                       │ tries left: back off 200 ms, 400 ms, 800 ms
//!   └───────────────────────┘ none left: the last answer, or Unavailable
//! ```
//!
//! Keys given to the store are relative to [`S3Config::prefix`]; the
//! prefix is added on the way out and stripped from listings on the way
//! back. Neither the secret key nor the session token ever appear in an
//! error, a log line or `Debug` output.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, Url};
use ring::{digest, hmac};

use super::{ObjectInfo, ObjectStore, StoreError};

/// Where the system's TLS roots are (Debian's `ca-certificates`).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How many times a transient failure is retried after the first try.
const RETRIES: u32 = 3;
/// The first pause before a retry; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// ListObjectsV2's own maximum page.
const MAX_PAGE_SIZE: u32 = 1000;
/// S3 error codes that mean the credentials were refused.
const DENIED_CODES: [&str; 6] = [
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
];
/// S3 error codes that mean the bucket is in another region.
const WRONG_REGION_CODES: [&str; 3] =
    ["PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"];
/// SHA-256 of nothing: the payload hash of requests without a body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How to reach a bucket.
#[derive(Clone)]
pub struct S3Config {
    /// The S3 API's base URL, e.g. `http://127.0.0.1:9000`; `None` is AWS,
    /// `https://s3.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Prefix of every key inside the bucket, may be empty. Normalised to
    /// `""` or `a/b/` (no leading `/`, one trailing `/`).
    pub prefix: String,
    /// `ENDPOINT/bucket/key` when true, `SCHEME://bucket.HOST/key`
    /// (virtual-hosted) when false.
    pub path_style: bool,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
    /// Extra TLS roots, trusted besides the system's: PEM text, or the
    /// path of a PEM file.
    pub ca_bundle: Option<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("ca_bundle", &self.ca_bundle.as_ref().map(|b| if is_pem(b) { "<PEM text>" } else { b.as_str() }))
            .finish()
    }
}

/// A bucket (under a prefix) as an [`ObjectStore`].
pub struct S3Store {
    client: reqwest::Client,
    /// As given, with `prefix` normalised.
    cfg: S3Config,
    /// `http` or `https`.
    scheme: String,
    /// The endpoint's host as written in a URL (IPv6 in brackets).
    host: String,
    /// The endpoint's port when it is not the scheme's default.
    port: Option<u16>,
    /// The endpoint for messages: `SCHEME://HOST[:PORT]`.
    endpoint: String,
    /// `max-keys` of each ListObjectsV2 request.
    page_size: u32,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.endpoint)
            .field("config", &self.cfg)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Checks `cfg` and sets up the HTTP client; sends nothing.
    pub fn new(mut cfg: S3Config) -> Result<S3Store, StoreError> {
        check_bucket_name(&cfg.bucket)?;
        cfg.region = cfg.region.trim().to_owned();
        if cfg.region.is_empty() {
            return Err(StoreError::Config("S3 region is empty: set region (e.g. us-east-1)".into()));
        }
        if cfg.access_key.is_empty() {
            return Err(StoreError::Config("S3 access_key is empty".into()));
        }
        cfg.prefix = normalise_prefix(&cfg.prefix);

        let endpoint = cfg.endpoint.clone().unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region));
        let url = Url::parse(endpoint.trim())
            .map_err(|e| StoreError::Config(format!("S3 endpoint {endpoint:?} is not a URL: {e}")))?;
        let scheme = url.scheme().to_owned();
        if scheme != "http" && scheme != "https" {
            return Err(StoreError::Config(format!("S3 endpoint {endpoint:?} must be an http:// or https:// URL")));
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()).map(str::to_ascii_lowercase) else {
            return Err(StoreError::Config(format!("S3 endpoint {endpoint:?} has no host")));
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(StoreError::Config(format!(
                "S3 endpoint {endpoint:?} must not carry credentials: set access_key and secret_key"
            )));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(StoreError::Config(format!(
                "S3 endpoint {endpoint:?} must be a base URL without a path or query, like http://host:9000"
            )));
        }
        let is_ip = host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok();
        if is_ip && !cfg.path_style {
            return Err(StoreError::Config(format!(
                "S3 endpoint {endpoint:?} is an IP address, which virtual-hosted buckets cannot use: set path_style"
            )));
        }
        let port = url.port();
        let endpoint = match port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };

        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tls_built_in_root_certs(false);
        let request_host = if cfg.path_style { host.clone() } else { format!("{}.{host}", cfg.bucket) };
        if request_host == "localhost" || request_host.ends_with(".localhost") {
            // RFC 6761: names under localhost are loopback, which the
            // system resolver may not know for `bucket.localhost`.
            builder = builder.resolve_to_addrs(
                &request_host,
                &[SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), SocketAddr::from((Ipv6Addr::LOCALHOST, 0))],
            );
        }
        let mut roots = 0;
        if let Ok(pem) = std::fs::read(SYSTEM_CA_BUNDLE) {
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                StoreError::Config(format!("cannot read the system TLS roots {SYSTEM_CA_BUNDLE}: {}", error_chain(&e)))
            })? {
                builder = builder.add_root_certificate(cert);
                roots += 1;
            }
        }
        if let Some(bundle) = &cfg.ca_bundle {
            let (pem, origin) = if is_pem(bundle) {
                (bundle.as_bytes().to_vec(), "the PEM text".to_owned())
            } else {
                let pem = std::fs::read(bundle)
                    .map_err(|e| StoreError::Config(format!("S3 ca_bundle: cannot read {bundle}: {e}")))?;
                (pem, bundle.clone())
            };
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                StoreError::Config(format!("S3 ca_bundle: {origin} is not valid PEM: {}", error_chain(&e)))
            })?;
            if certs.is_empty() {
                return Err(StoreError::Config(format!("S3 ca_bundle: no certificate in {origin}")));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
                roots += 1;
            }
        }
        if scheme == "https" && roots == 0 {
            return Err(StoreError::Config(format!(
                "no TLS roots to check {endpoint} with: {SYSTEM_CA_BUNDLE} is missing (install ca-certificates) \
                 and no ca_bundle is set"
            )));
        }
        let client =
            builder.build().map_err(|e| StoreError::Config(format!("cannot set up an HTTP client for S3: {e}")))?;

        Ok(S3Store { client, cfg, scheme, host, port, endpoint, page_size: MAX_PAGE_SIZE })
    }

    /// Sets how many keys each listing request asks for (1 to 1000; 1000
    /// by default). Small pages are for tests of pagination.
    pub fn with_page_size(mut self, page_size: u32) -> S3Store {
        self.page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        self
    }

    /// The key in the bucket of `key`, which is relative to the prefix.
    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        if key.is_empty() {
            return Err(StoreError::Config("object key is empty".into()));
        }
        if key.contains('\0') {
            return Err(StoreError::Config(format!("object key {key:?} contains NUL")));
        }
        Ok(format!("{}{key}", self.cfg.prefix))
    }

    /// The host a request goes to, with the port when it is not the default.
    fn request_host(&self) -> String {
        let host = if self.cfg.path_style { self.host.clone() } else { format!("{}.{}", self.cfg.bucket, self.host) };
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }

    /// The encoded path of the bucket (`key` None) or of an object.
    fn canonical_uri(&self, key: Option<&str>) -> String {
        let mut uri = String::from("/");
        if self.cfg.path_style {
            uri.push_str(&uri_encode(&self.cfg.bucket, false));
            if key.is_some() {
                uri.push('/');
            }
        }
        if let Some(key) = key {
            uri.push_str(&uri_encode(key, true));
        }
        uri
    }

    /// Sends one request, retrying transient failures, and reads the whole
    /// reply. `key` is the full key in the bucket.
    async fn call(
        &self,
        op: Op,
        key: Option<&str>,
        query: &[(String, String)],
        body: Bytes,
    ) -> Result<Reply, StoreError> {
        let host = self.request_host();
        let canonical_uri = self.canonical_uri(key);
        let mut url = format!("{}://{host}{canonical_uri}", self.scheme);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&canonical_query(query));
        }
        let payload_sha256 = if body.is_empty() {
            EMPTY_SHA256.to_owned()
        } else {
            hex(digest::digest(&digest::SHA256, &body).as_ref())
        };

        let mut attempt = 0;
        loop {
            let now = Utc::now();
            let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
            let mut headers: Vec<(&str, &str)> =
                vec![("host", &host), ("x-amz-content-sha256", &payload_sha256), ("x-amz-date", &amz_date)];
            if let Some(token) = &self.cfg.session_token {
                headers.push(("x-amz-security-token", token));
            }
            let authorization = sign(
                &SigningKey {
                    access_key: &self.cfg.access_key,
                    secret_key: &self.cfg.secret_key,
                    region: &self.cfg.region,
                },
                &CanonicalRequest {
                    method: op.method().as_str(),
                    uri: &canonical_uri,
                    query,
                    headers: &headers,
                    payload_sha256: &payload_sha256,
                },
                now,
            );
            let mut request = self
                .client
                .request(op.method(), &url)
                .header("x-amz-content-sha256", &payload_sha256)
                .header("x-amz-date", &amz_date)
                .header(reqwest::header::AUTHORIZATION, authorization);
            if let Some(token) = &self.cfg.session_token {
                request = request.header("x-amz-security-token", token);
            }
            if op == Op::Put {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, body.len())
                    .body(body.clone());
            }

            let outcome = async {
                let response = request.send().await?;
                let status = response.status();
                let bucket_region =
                    response.headers().get("x-amz-bucket-region").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>(Reply { status, bucket_region, body })
            }
            .await;
            let transient = match &outcome {
                Ok(reply) => {
                    matches!(reply.status.as_u16(), 500 | 502 | 503 | 504)
                        || (!reply.status.is_success() && reply.error_code() == "SlowDown")
                }
                Err(e) => may_pass(e),
            };
            if !transient || attempt >= RETRIES {
                return match outcome {
                    Ok(reply) => {
                        tracing::debug!(op = op.name(), bucket = %self.cfg.bucket, key, status = reply.status.as_u16(), "S3 request");
                        Ok(reply)
                    }
                    Err(e) => Err(self.unreachable(&e)),
                };
            }
            let pause = FIRST_BACKOFF * 2u32.pow(attempt);
            match &outcome {
                Ok(reply) => tracing::warn!(
                    op = op.name(), bucket = %self.cfg.bucket, key, status = reply.status.as_u16(),
                    code = %reply.error_code(), ?pause, "S3 request failed, retrying"
                ),
                Err(e) => tracing::warn!(
                    op = op.name(), bucket = %self.cfg.bucket, key, error = %self.scrub(&error_chain(e)), ?pause,
                    "S3 request failed, retrying"
                ),
            }
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// The error for a request that got no (whole) answer.
    fn unreachable(&self, e: &reqwest::Error) -> StoreError {
        let mut text = format!("cannot reach {}: {}", self.endpoint, error_chain(e));
        if text.contains("certificate") {
            text.push_str(" (when the server's certificate comes from a private CA, put that CA in ca_bundle)");
        }
        StoreError::Unavailable(self.scrub(&text))
    }

    /// The error for an answer that is not the one hoped for.
    fn refusal(&self, op: Op, key: Option<&str>, reply: &Reply) -> StoreError {
        let code = reply.error_code();
        let message = reply.error_message();
        let what = match key {
            Some(key) => format!("{} of {key:?} in bucket {}", op.name(), self.cfg.bucket),
            None => format!("{} in bucket {}", op.name(), self.cfg.bucket),
        };
        let detail = match (code.is_empty(), message.is_empty()) {
            (true, _) => format!("HTTP {}", reply.status),
            (false, true) => format!("HTTP {} {code}", reply.status),
            (false, false) => format!("HTTP {} {code}: {message}", reply.status),
        };
        let error = if code == "NoSuchBucket" {
            StoreError::Config(format!("bucket {} does not exist at {}", self.cfg.bucket, self.endpoint))
        } else if DENIED_CODES.contains(&code.as_str()) || (code.is_empty() && reply.status == StatusCode::FORBIDDEN) {
            StoreError::Denied(format!(
                "{} refused the credentials of access key id {} for {what} ({detail}): check access_key, \
                 secret_key and session_token",
                self.endpoint, self.cfg.access_key
            ))
        } else if WRONG_REGION_CODES.contains(&code.as_str())
            || (code.is_empty() && reply.status == StatusCode::MOVED_PERMANENTLY)
        {
            let hint = match &reply.bucket_region {
                Some(r) => format!("it is in {r}"),
                None => "set the bucket's region".to_owned(),
            };
            StoreError::Config(format!(
                "bucket {} at {} is not in region {} ({detail}): {hint}",
                self.cfg.bucket, self.endpoint, self.cfg.region
            ))
        } else {
            StoreError::Unavailable(format!("{} failed {what}: {detail}", self.endpoint))
        };
        match error {
            StoreError::Unavailable(m) => StoreError::Unavailable(self.scrub(&m)),
            StoreError::Denied(m) => StoreError::Denied(self.scrub(&m)),
            StoreError::Config(m) => StoreError::Config(self.scrub(&m)),
            StoreError::Io(m) => StoreError::Io(self.scrub(&m)),
        }
    }

    /// `text` with the secret key and session token blotted out, should a
    /// server or a library ever echo them.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in [Some(&self.cfg.secret_key), self.cfg.session_token.as_ref()].into_iter().flatten() {
            if !secret.is_empty() {
                text = text.replace(secret.as_str(), "<redacted>");
            }
        }
        text
    }

    /// One page of a listing of keys starting with `prefix` (a full key).
    async fn list_page(&self, prefix: &str, token: Option<&str>) -> Result<ListPage, StoreError> {
        let mut query = vec![
            ("list-type".to_owned(), "2".to_owned()),
            ("max-keys".to_owned(), self.page_size.to_string()),
            ("prefix".to_owned(), prefix.to_owned()),
        ];
        if let Some(token) = token {
            query.push(("continuation-token".to_owned(), token.to_owned()));
        }
        let reply = self.call(Op::List, None, &query, Bytes::new()).await?;
        if !reply.status.is_success() {
            return Err(self.refusal(Op::List, None, &reply));
        }
        let text = std::str::from_utf8(&reply.body).map_err(|_| {
            StoreError::Unavailable(format!(
                "{} sent a listing of bucket {} that is not UTF-8",
                self.endpoint, self.cfg.bucket
            ))
        })?;
        parse_list_page(text).map_err(|e| {
            StoreError::Unavailable(format!(
                "{} sent a listing of bucket {} that cannot be read: {e}",
                self.endpoint, self.cfg.bucket
            ))
        })
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        let reply = self.call(Op::Put, Some(&full), &[], body).await?;
        if !reply.status.is_success() {
            return Err(self.refusal(Op::Put, Some(key), &reply));
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let full = self.full_key(key)?;
        let reply = self.call(Op::Get, Some(&full), &[], Bytes::new()).await?;
        if reply.status == StatusCode::NOT_FOUND && reply.error_code() != "NoSuchBucket" {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(self.refusal(Op::Get, Some(key), &reply));
        }
        Ok(Some(reply.body))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let full = self.full_key(key)?;
        let reply = self.call(Op::Head, Some(&full), &[], Bytes::new()).await?;
        // A HEAD answer has no body, so a missing bucket looks like a
        // missing key here.
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if !reply.status.is_success() {
            return Err(self.refusal(Op::Head, Some(key), &reply));
        }
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        let reply = self.call(Op::Delete, Some(&full), &[], Bytes::new()).await?;
        if reply.status == StatusCode::NOT_FOUND && reply.error_code() == "NoSuchKey" {
            return Ok(());
        }
        if !reply.status.is_success() {
            return Err(self.refusal(Op::Delete, Some(key), &reply));
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        if prefix.contains('\0') {
            return Err(StoreError::Config(format!("listing prefix {prefix:?} contains NUL")));
        }
        let full_prefix = format!("{}{prefix}", self.cfg.prefix);
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(&full_prefix, token.as_deref()).await?;
            for entry in page.entries {
                // Every key starts with the prefix asked for; one that does
                // not is not ours to show.
                if let Some(key) = entry.key.strip_prefix(self.cfg.prefix.as_str()) {
                    objects.push(ObjectInfo { key: key.to_owned(), size: entry.size, modified: entry.modified });
                }
            }
            match page.next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    fn describe(&self) -> String {
        format!("s3://{}/{} ({})", self.cfg.bucket, self.cfg.prefix, self.endpoint)
    }
}

/// The S3 operations this store sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    Head,
    Delete,
    List,
}

impl Op {
    fn method(self) -> Method {
        match self {
            Op::Put => Method::PUT,
            Op::Get | Op::List => Method::GET,
            Op::Head => Method::HEAD,
            Op::Delete => Method::DELETE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Put => "PutObject",
            Op::Get => "GetObject",
            Op::Head => "HeadObject",
            Op::Delete => "DeleteObject",
            Op::List => "ListObjectsV2",
        }
    }
}

/// A whole answer to a request.
struct Reply {
    status: StatusCode,
    /// `x-amz-bucket-region`, which S3 sends when the region is wrong.
    bucket_region: Option<String>,
    body: Bytes,
}

impl Reply {
    /// `<Code>` of an S3 error document, or "".
    fn error_code(&self) -> String {
        std::str::from_utf8(&self.body).ok().and_then(|xml| xml_element(xml, "Code")).map(xml_text).unwrap_or_default()
    }

    /// `<Message>` of an S3 error document, or "".
    fn error_message(&self) -> String {
        std::str::from_utf8(&self.body)
            .ok()
            .and_then(|xml| xml_element(xml, "Message"))
            .map(xml_text)
            .unwrap_or_default()
    }
}

/// Whether a request that got no whole answer may pass when sent again:
/// yes when the connection failed or broke, no when the request could not
/// be built or ran out of its (long) time once sent.
fn may_pass(e: &reqwest::Error) -> bool {
    if e.is_builder() {
        return false;
    }
    e.is_connect() || !e.is_timeout()
}

/// The error and its causes, without the request's URL.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = match e.url() {
        Some(_) => {
            // reqwest::Error's Display adds " for url (...)"; drop it.
            let shown = e.to_string();
            match shown.find(" for url (") {
                Some(at) => shown[..at].to_owned(),
                None => shown,
            }
        }
        None => e.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn is_pem(bundle: &str) -> bool {
    bundle.trim_start().starts_with("-----BEGIN")
}

/// `prefix` as `""` or `a/b/`.
fn normalise_prefix(prefix: &str) -> String {
    let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        String::new()
    } else {
        format!("{}/", segments.join("/"))
    }
}

/// S3's bucket naming rules (general purpose buckets).
fn check_bucket_name(bucket: &str) -> Result<(), StoreError> {
    let bad = |why: &str| Err(StoreError::Config(format!("S3 bucket name {bucket:?} is not valid: {why}")));
    if bucket.len() < 3 || bucket.len() > 63 {
        return bad("it must be 3 to 63 characters long");
    }
    if !bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-') {
        return bad("only lowercase letters, digits, '.' and '-' are allowed");
    }
    let first = bucket.as_bytes()[0];
    let last = bucket.as_bytes()[bucket.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return bad("it must begin and end with a letter or a digit");
    }
    if bucket.contains("..") || bucket.contains(".-") || bucket.contains("-.") {
        return bad("'.' must not be next to another '.' or a '-'");
    }
    if bucket.parse::<Ipv4Addr>().is_ok() {
        return bad("it must not look like an IP address");
    }
    if bucket.starts_with("xn--") || bucket.starts_with("sthree-") {
        return bad("the prefixes xn-- and sthree- are reserved");
    }
    if bucket.ends_with("-s3alias") || bucket.ends_with("--ol-s3") {
        return bad("the suffixes -s3alias and --ol-s3 are reserved");
    }
    Ok(())
}

// ---- AWS Signature Version 4 ----

/// Who signs, and where.
struct SigningKey<'a> {
    access_key: &'a str,
    secret_key: &'a str,
    region: &'a str,
}

/// What is signed of a request.
struct CanonicalRequest<'a> {
    method: &'a str,
    /// The path, already encoded (see [`uri_encode`]).
    uri: &'a str,
    /// The query's pairs, not encoded.
    query: &'a [(String, String)],
    /// Every header to sign, names in lowercase (`host` among them).
    headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body.
    payload_sha256: &'a str,
}

impl CanonicalRequest<'_> {
    fn signed_headers(&self) -> String {
        let mut names: Vec<String> = self.headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
        names.sort();
        names.join(";")
    }

    /// The canonical request of SigV4, for S3 (whose paths are encoded
    /// once, not twice).
    fn text(&self) -> String {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect();
        headers.sort();
        let mut text = format!("{}\n{}\n{}\n", self.method, self.uri, canonical_query(self.query));
        for (name, value) in &headers {
            text.push_str(name);
            text.push(':');
            text.push_str(value);
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.signed_headers());
        text.push('\n');
        text.push_str(self.payload_sha256);
        text
    }
}

/// The `Authorization` header of `request` signed by `key` at `time`.
fn sign(key: &SigningKey<'_>, request: &CanonicalRequest<'_>, time: DateTime<Utc>) -> String {
    let date = time.format("%Y%m%d").to_string();
    let amz_date = time.format("%Y%m%dT%H%M%SZ").to_string();
    let scope = format!("{date}/{}/s3/aws4_request", key.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, request.text().as_bytes()).as_ref())
    );
    let hmac_sha256 = |k: &[u8], data: &str| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), data.as_bytes());
    let k_date = hmac_sha256(format!("AWS4{}", key.secret_key).as_bytes(), &date);
    let k_region = hmac_sha256(k_date.as_ref(), key.region);
    let k_service = hmac_sha256(k_region.as_ref(), "s3");
    let k_signing = hmac_sha256(k_service.as_ref(), "aws4_request");
    let signature = hex(hmac_sha256(k_signing.as_ref(), &string_to_sign).as_ref());
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
        key.access_key,
        request.signed_headers()
    )
}

/// The query string of SigV4: each name and value encoded, sorted.
fn canonical_query(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> =
        query.iter().map(|(n, v)| (uri_encode(n, false), uri_encode(v, false))).collect();
    pairs.sort();
    pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&")
}

/// SigV4's URI encoding: every byte but `A-Z a-z 0-9 - . _ ~` as `%XX`
/// (and `/` too unless `keep_slash`).
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- ListObjectsV2 answers ----

/// One page of a listing, keys as in the bucket.
#[derive(Debug, PartialEq, Eq)]
struct ListPage {
    entries: Vec<ListEntry>,
    /// The token of the next page, when there is one.
    next: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
struct ListEntry {
    key: String,
    size: u64,
    modified: i64,
}

/// Reads a `ListBucketResult` document.
fn parse_list_page(xml: &str) -> Result<ListPage, String> {
    if xml_element(xml, "ListBucketResult").is_none() {
        return Err("no <ListBucketResult>".into());
    }
    let mut entries = Vec::new();
    for contents in xml_elements(xml, "Contents") {
        let key = xml_element(contents, "Key").map(xml_text).ok_or("a <Contents> without <Key>")?;
        let size = xml_element(contents, "Size")
            .ok_or_else(|| format!("{key:?} has no <Size>"))?
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{key:?} has a bad <Size>: {e}"))?;
        let modified = match xml_element(contents, "LastModified") {
            Some(text) => DateTime::parse_from_rfc3339(text.trim())
                .map_err(|e| format!("{key:?} has a bad <LastModified> {text:?}: {e}"))?
                .timestamp(),
            None => return Err(format!("{key:?} has no <LastModified>")),
        };
        entries.push(ListEntry { key, size, modified });
    }
    let truncated = xml_element(xml, "IsTruncated").map(|t| t.trim() == "true").unwrap_or(false);
    let next = if truncated {
        match xml_element(xml, "NextContinuationToken").map(xml_text) {
            Some(token) if !token.is_empty() => Some(token),
            _ => return Err("<IsTruncated> is true but there is no <NextContinuationToken>".into()),
        }
    } else {
        None
    };
    Ok(ListPage { entries, next })
}

/// The raw (still escaped) text of each `<tag>` element of `xml`, in order.
/// Enough for S3's answers: no CDATA, no comments, and a tag never nested
/// in itself.
fn xml_elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        // `<Key>` must not match `<KeyCount>`.
        match after.chars().next() {
            Some('>' | '/' | ' ' | '\t' | '\r' | '\n') => {}
            _ => {
                rest = after;
                continue;
            }
        }
        let Some(end_of_open) = after.find('>') else { break };
        if after[..end_of_open].ends_with('/') {
            found.push("");
            rest = &after[end_of_open + 1..];
            continue;
        }
        let body = &after[end_of_open + 1..];
        let Some(end) = body.find(&close) else { break };
        found.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    found
}

/// The raw text of the first `<tag>` element of `xml`.
fn xml_element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    xml_elements(xml, tag).into_iter().next()
}

/// The character data of an element's raw text: CDATA sections as they
/// are, the rest unescaped.
fn xml_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find("<![CDATA[") {
        out.push_str(&xml_unescape(&rest[..at]));
        let section = &rest[at + "<![CDATA[".len()..];
        match section.find("]]>") {
            Some(end) => {
                out.push_str(&section[..end]);
                rest = &section[end + "]]>".len()..];
            }
            None => {
                out.push_str(section);
                rest = "";
            }
        }
    }
    out.push_str(&xml_unescape(rest));
    out
}

/// `text` with XML's five named entities and numeric character references
/// replaced; anything else that looks like an entity is kept as it is.
fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest.find(';').filter(|&end| end <= 12).and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let code = if let Some(hex) = entity.strip_prefix("#x").or_else(|| entity.strip_prefix("#X")) {
                        u32::from_str_radix(hex, 16).ok()
                    } else if let Some(dec) = entity.strip_prefix('#') {
                        dec.parse::<u32>().ok()
                    } else {
                        None
                    };
                    code.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::TimeZone;

    const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn example_key() -> SigningKey<'static> {
        SigningKey { access_key: ACCESS_KEY, secret_key: SECRET_KEY, region: "us-east-1" }
    }

    fn example_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2013, 5, 24, 0, 0, 0).single().expect("a valid time")
    }

    /// AWS's "GET Object" example of signing with the Authorization header
    /// (Amazon S3 API reference, "Examples: Signature calculations").
    #[test]
    fn signs_aws_get_object_example() {
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let request = CanonicalRequest {
            method: "GET",
            uri: &uri_encode("/test.txt", true),
            query: &[],
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
        };
        assert_eq!(
            request.text(),
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sign(&example_key(), &request, example_time()),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// AWS's "PUT Object" example: a body, and a key with `$` in it.
    #[test]
    fn signs_aws_put_object_example() {
        let body_sha256 = hex(digest::digest(&digest::SHA256, b"Welcome to Amazon S3.").as_ref());
        let headers = [
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", body_sha256.as_str()),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ];
        let uri = format!("/{}", uri_encode("test$file.text", true));
        assert_eq!(uri, "/test%24file.text");
        let request =
            CanonicalRequest { method: "PUT", uri: &uri, query: &[], headers: &headers, payload_sha256: &body_sha256 };
        assert!(sign(&example_key(), &request, example_time())
            .ends_with("Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"));
    }

    /// AWS's "GET Bucket (List Objects)" example: a sorted, encoded query.
    #[test]
    fn signs_aws_list_objects_example() {
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let query = [("prefix".to_owned(), "J".to_owned()), ("max-keys".to_owned(), "2".to_owned())];
        let request = CanonicalRequest {
            method: "GET",
            uri: "/",
            query: &query,
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
        };
        assert!(request.text().starts_with("GET\n/\nmax-keys=2&prefix=J\n"));
        assert!(sign(&example_key(), &request, example_time())
            .ends_with("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"));
    }

    #[test]
    fn encodes_like_sigv4() {
        assert_eq!(uri_encode("a b/c+d=e~f_g.h-i", true), "a%20b/c%2Bd%3De~f_g.h-i");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(uri_encode("ü", true), "%C3%BC");
        let query = [("b".to_owned(), "x y".to_owned()), ("a".to_owned(), "1/2".to_owned())];
        assert_eq!(canonical_query(&query), "a=1%2F2&b=x%20y");
    }

    #[test]
    fn reads_a_listing() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix/><KeyCount>2</KeyCount>
<MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>a &amp; b &lt;&gt; &quot;&apos; &#233;&#x4E2D;</Key><LastModified>2009-10-12T17:50:30.000Z</LastModified>
<ETag>&quot;fba9dede5f27731c9771645a39863328&quot;</ETag><Size>434234</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>z</Key><LastModified>2009-10-12T17:50:31Z</LastModified><Size>0</Size></Contents>
<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken></ListBucketResult>"#;
        let page = parse_list_page(xml).expect("a listing");
        assert_eq!(
            page,
            ListPage {
                entries: vec![
                    ListEntry { key: "a & b <> \"' é中".into(), size: 434234, modified: 1255369830 },
                    ListEntry { key: "z".into(), size: 0, modified: 1255369831 },
                ],
                next: Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=".into()),
            }
        );
        let last = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(parse_list_page(last), Ok(ListPage { entries: vec![], next: None }));
        assert!(parse_list_page("<Error><Code>NoSuchBucket</Code></Error>").is_err());
        assert!(parse_list_page("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>").is_err());
    }

    #[test]
    fn unescapes_xml() {
        assert_eq!(xml_unescape("&amp;amp; &unknown; & &#65;&#x42;"), "&amp; &unknown; & AB");
        assert_eq!(xml_unescape("&#xD800;"), "&#xD800;");
        assert_eq!(xml_text("a &amp; <![CDATA[b &amp; <c>]]> &lt;d"), "a & b &amp; <c> <d");
    }

    #[test]
    fn normalises_prefix() {
        assert_eq!(normalise_prefix(""), "");
        assert_eq!(normalise_prefix("/"), "");
        assert_eq!(normalise_prefix("a"), "a/");
        assert_eq!(normalise_prefix("/a//b/"), "a/b/");
    }

    #[test]
    fn checks_bucket_names() {
        for good in ["abc", "my-bucket.2", "a1b"] {
            assert!(check_bucket_name(good).is_ok(), "{good}");
        }
        for bad in ["ab", "My-Bucket", "-abc", "abc-", "a..b", "192.168.1.1", "xn--abc", "a_b", &"a".repeat(64)] {
            let err = check_bucket_name(bad).expect_err(bad);
            assert!(matches!(&err, StoreError::Config(m) if m.contains("bucket name")), "{bad}: {err}");
        }
    }

    fn config() -> S3Config {
        S3Config {
            endpoint: Some("http://127.0.0.1:9000".into()),
            bucket: "backups".into(),
            region: "us-east-1".into(),
            prefix: "/node1//daily".into(),
            path_style: true,
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            session_token: Some("SESSION-TOKEN-VALUE".into()),
            ca_bundle: None,
        }
    }

    #[test]
    fn debug_hides_the_secrets() {
        let store = S3Store::new(config()).expect("a store");
        for text in [format!("{:?}", config()), format!("{store:?}"), format!("{store:#?}")] {
            assert!(!text.contains(SECRET_KEY), "{text}");
            assert!(!text.contains("SESSION-TOKEN-VALUE"), "{text}");
            assert!(text.contains(ACCESS_KEY), "{text}");
        }
        assert_eq!(store.describe(), "s3://backups/node1/daily/ (http://127.0.0.1:9000)");
    }

    #[test]
    fn builds_urls_of_both_styles() {
        let path = S3Store::new(config()).expect("a store");
        assert_eq!(path.request_host(), "127.0.0.1:9000");
        assert_eq!(path.canonical_uri(Some("node1/daily/a b")), "/backups/node1/daily/a%20b");
        assert_eq!(path.canonical_uri(None), "/backups");
        let virtual_hosted =
            S3Store::new(S3Config { endpoint: None, path_style: false, region: "eu-west-3".into(), ..config() })
                .expect("a store");
        assert_eq!(virtual_hosted.request_host(), "backups.s3.eu-west-3.amazonaws.com");
        assert_eq!(virtual_hosted.canonical_uri(Some("k")), "/k");
        assert_eq!(virtual_hosted.canonical_uri(None), "/");
        assert_eq!(virtual_hosted.describe(), "s3://backups/node1/daily/ (https://s3.eu-west-3.amazonaws.com)");
    }

    /// A server that answers each connection with the next of `answers`
    /// (whole HTTP responses) and counts the requests.
    async fn canned_server(answers: Vec<&'static str>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            for answer in answers {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        });
        (endpoint, seen)
    }

    const SLOW_DOWN: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 71\r\nConnection: close\r\n\r\n\
                             <Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>";
    const BROKEN: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

    #[tokio::test]
    async fn retries_transient_failures() {
        let (endpoint, seen) = canned_server(vec![SLOW_DOWN, BROKEN, OK]).await;
        let store = S3Store::new(S3Config { endpoint: Some(endpoint), ..config() }).expect("a store");
        assert_eq!(store.get("k").await.expect("get"), Some(Bytes::from_static(b"hello")));
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_three_retries() {
        let (endpoint, seen) = canned_server(vec![BROKEN, BROKEN, SLOW_DOWN, BROKEN, OK]).await;
        let store = S3Store::new(S3Config { endpoint: Some(endpoint), ..config() }).expect("a store");
        let err = store.get("k").await.expect_err("four failures");
        assert!(matches!(&err, StoreError::Unavailable(m) if m.contains("HTTP 500")), "{err}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1 + RETRIES as usize);
    }

    #[test]
    fn refuses_bad_configs() {
        let cases: [(S3Config, &str); 6] = [
            (S3Config { region: " ".into(), ..config() }, "region"),
            (S3Config { bucket: "Bad_Bucket".into(), ..config() }, "bucket name"),
            (S3Config { endpoint: Some("ftp://host".into()), ..config() }, "http:// or https://"),
            (S3Config { endpoint: Some("not a url".into()), ..config() }, "not a URL"),
            (S3Config { endpoint: Some("http://host:9000/some/path".into()), ..config() }, "without a path"),
            (S3Config { path_style: false, ..config() }, "IP address"),
        ];
        for (cfg, expected) in cases {
            let err = S3Store::new(cfg).expect_err(expected);
            assert!(matches!(&err, StoreError::Config(m) if m.contains(expected)), "{expected}: {err}");
        }
    }
}
