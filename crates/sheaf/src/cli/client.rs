//! The connection to the API server: kubeconfig loading, the HTTPS client,
//! `Status` errors, and resource discovery.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use clap::Args;
use serde::Deserialize;
use serde_json::Value;
pub use sheaf_client::remote::encode;
use sheaf_client::remote::{cause_chain, default_reason, snippet};

/// Where the server puts the admin kubeconfig when no data directory is given.
const DEFAULT_DATA_DIR: &str = "/var/lib/sheaf";

/// How to reach the API server; shared by every client subcommand.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnArgs {
    /// Kubeconfig file to use. Without it: $KUBECONFIG, then ~/.kube/config,
    /// then $SHEAF_DATA_DIR/admin.kubeconfig (/var/lib/sheaf/admin.kubeconfig).
    #[arg(long, env = "KUBECONFIG", value_name = "PATH", global = true)]
    pub kubeconfig: Option<String>,
    /// Kubeconfig context to use instead of its current-context.
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,
    /// Give up on a request after this many seconds (0: wait forever).
    #[arg(long, value_name = "SECONDS", default_value_t = 60, global = true)]
    pub request_timeout: u64,
}

/// A failure answered by the server, from its `Status` body.
#[derive(Debug, Clone)]
pub struct ServerError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl ServerError {
    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }

    /// "Error from server (Reason): " — the prefix kubectl prints.
    pub fn prefix(&self) -> String {
        if self.reason.is_empty() {
            "Error from server: ".to_string()
        } else {
            format!("Error from server ({}): ", self.reason)
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.prefix(), self.message)
    }
}

impl std::error::Error for ServerError {}

/// Is `e` (or what it wraps) a 404 from the server?
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ServerError>().is_some_and(ServerError::is_not_found)
}

// ---------------------------------------------------------------------------
// Kubeconfig

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "kebab-case")]
struct KubeconfigFile {
    #[serde(default)]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Option<Vec<NamedCluster>>,
    #[serde(default)]
    users: Option<Vec<NamedUser>>,
    #[serde(default)]
    contexts: Option<Vec<NamedContext>>,
}

#[derive(Deserialize, Debug)]
struct NamedCluster {
    name: String,
    #[serde(default)]
    cluster: Option<ClusterEntry>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    certificate_authority: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: Option<bool>,
}

#[derive(Deserialize, Debug)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: Option<UserEntry>,
}

#[derive(Deserialize, Debug, Default)]
struct UserEntry {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(default, rename = "client-certificate-data")]
    client_certificate_data: Option<String>,
    #[serde(default, rename = "client-key-data")]
    client_key_data: Option<String>,
    #[serde(default, rename = "client-certificate")]
    client_certificate: Option<String>,
    #[serde(default, rename = "client-key")]
    client_key: Option<String>,
}

#[derive(Deserialize, Debug)]
struct NamedContext {
    name: String,
    #[serde(default)]
    context: Option<ContextEntry>,
}

#[derive(Deserialize, Debug, Default)]
struct ContextEntry {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// What a kubeconfig says about one context.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: PathBuf,
    pub server: String,
    pub namespace: String,
    ca_pem: Option<Vec<u8>>,
    insecure: bool,
    token: Option<String>,
    identity_pem: Option<Vec<u8>>,
}

const NO_KUBECONFIG: &str = "no kubeconfig found: run `sheaf kubeconfig > ~/.kube/config` on the server \
     (or pass --kubeconfig PATH, set KUBECONFIG, or set SHEAF_DATA_DIR to the server's data directory)";

/// Which kubeconfig file to read, following kubectl's order and then the
/// one `sheaf server` writes into its data directory.
pub fn kubeconfig_path(explicit: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(list) = explicit.filter(|s| !s.trim().is_empty()) {
        // KUBECONFIG may be a colon-separated list; use the first file that exists.
        let candidates: Vec<&str> = list.split(':').filter(|s| !s.is_empty()).collect();
        if let Some(p) = candidates.iter().find(|p| Path::new(p).is_file()) {
            return Ok(PathBuf::from(p));
        }
        bail!("kubeconfig {list} does not exist; {}", NO_KUBECONFIG.trim_start_matches("no kubeconfig found: "));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let p = PathBuf::from(home).join(".kube").join("config");
        if p.is_file() {
            return Ok(p);
        }
    }
    let dir = std::env::var_os("SHEAF_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let p = dir.join("admin.kubeconfig");
    if p.is_file() {
        return Ok(p);
    }
    bail!("{NO_KUBECONFIG}")
}

fn decode_b64(what: &str, data: &str) -> anyhow::Result<Vec<u8>> {
    let cleaned: String = data.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| anyhow!("{what} is not valid base64: {e}"))
}

fn read_relative(base: &Path, path: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let p = Path::new(path);
    let full = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
    std::fs::read(&full).with_context(|| format!("cannot read {what} {}", full.display()))
}

/// Parses kubeconfig text; `path` names it in messages and anchors relative paths.
pub fn parse_kubeconfig(path: &Path, text: &str, context: Option<&str>) -> anyhow::Result<Config> {
    let file: KubeconfigFile =
        serde_yaml::from_str(text).map_err(|e| anyhow!("kubeconfig {} is not valid: {e}", path.display()))?;
    let src = path.display();
    let ctx_name = match context.or(file.current_context.as_deref()).filter(|s| !s.is_empty()) {
        Some(c) => c.to_string(),
        None => bail!("kubeconfig {src} has no current-context; pass --context NAME"),
    };
    let contexts = file.contexts.unwrap_or_default();
    let ctx = contexts.iter().find(|c| c.name == ctx_name).ok_or_else(|| {
        let known: Vec<&str> = contexts.iter().map(|c| c.name.as_str()).collect();
        anyhow!("kubeconfig {src} has no context {ctx_name:?} (it has: {})", known.join(", "))
    })?;
    let ctx = ctx.context.as_ref().ok_or_else(|| anyhow!("context {ctx_name:?} in {src} is empty"))?;
    let cluster_name = ctx.cluster.as_deref().unwrap_or("");
    let clusters = file.clusters.unwrap_or_default();
    let cluster =
        clusters.iter().find(|c| c.name == cluster_name).and_then(|c| c.cluster.as_ref()).ok_or_else(|| {
            anyhow!("context {ctx_name:?} in {src} names cluster {cluster_name:?}, which is not defined there")
        })?;
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("cluster {cluster_name:?} in {src} has no server URL"))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let ca_pem = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(d), _) if !d.is_empty() => Some(decode_b64("certificate-authority-data", d)?),
        (_, Some(p)) if !p.is_empty() => Some(read_relative(base, p, "certificate-authority")?),
        _ => None,
    };
    let users = file.users.unwrap_or_default();
    let user_name = ctx.user.as_deref().unwrap_or("");
    let user = users.iter().find(|u| u.name == user_name).and_then(|u| u.user.as_ref());
    let mut token = None;
    let mut identity_pem = None;
    if let Some(u) = user {
        token = match (&u.token, &u.token_file) {
            (Some(t), _) if !t.is_empty() => Some(t.trim().to_string()),
            (_, Some(f)) if !f.is_empty() => {
                Some(String::from_utf8_lossy(&read_relative(base, f, "tokenFile")?).trim().to_string())
            }
            _ => None,
        };
        let cert = match (&u.client_certificate_data, &u.client_certificate) {
            (Some(d), _) if !d.is_empty() => Some(decode_b64("client-certificate-data", d)?),
            (_, Some(p)) if !p.is_empty() => Some(read_relative(base, p, "client-certificate")?),
            _ => None,
        };
        let key = match (&u.client_key_data, &u.client_key) {
            (Some(d), _) if !d.is_empty() => Some(decode_b64("client-key-data", d)?),
            (_, Some(p)) if !p.is_empty() => Some(read_relative(base, p, "client-key")?),
            _ => None,
        };
        if let (Some(mut c), Some(k)) = (cert, key) {
            c.push(b'\n');
            c.extend_from_slice(&k);
            identity_pem = Some(c);
        }
    }
    Ok(Config {
        source: path.to_path_buf(),
        server,
        namespace: ctx.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_string()),
        ca_pem,
        insecure: cluster.insecure_skip_tls_verify.unwrap_or(false),
        token,
        identity_pem,
    })
}

// ---------------------------------------------------------------------------
// HTTP

/// A query string from pairs (values encoded), with the leading `?`.
pub fn query(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    format!("?{}", parts.join("&"))
}

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// The API client.
pub struct Client {
    http: reqwest::Client,
    /// HTTP/1.1 only, no overall timeout: for WebSocket upgrades.
    http1: reqwest::Client,
    base: String,
    token: Option<String>,
    /// The namespace of the kubeconfig context ("default" if it names none).
    pub namespace: String,
    source: PathBuf,
    warned: Mutex<HashSet<String>>,
}

pub const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// Parses one `Warning` header value (`299 - "text"`) into its text.
pub fn warning_text(h: &str) -> String {
    let mut parts = h.splitn(3, ' ');
    let (code, _agent, rest) = (parts.next(), parts.next(), parts.next());
    let Some(rest) = rest.filter(|_| code.is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit())))
    else {
        return h.to_string();
    };
    let Some(quoted) = rest.strip_prefix('"') else {
        return rest.to_string();
    };
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

impl Client {
    /// The server's URL, as the kubeconfig gives it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Reads the kubeconfig and builds the HTTPS client.
    pub fn connect(args: &ConnArgs) -> anyhow::Result<Client> {
        let path = kubeconfig_path(args.kubeconfig.as_deref())?;
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
        let cfg = parse_kubeconfig(&path, &text, args.context.as_deref())?;
        Self::from_config(cfg, args.request_timeout)
    }

    pub fn from_config(cfg: Config, timeout_secs: u64) -> anyhow::Result<Client> {
        let src = cfg.source.display().to_string();
        if !cfg.server.starts_with("https://") && !cfg.server.starts_with("http://") {
            bail!("the server URL {:?} in {src} must start with https://", cfg.server);
        }
        let build = |http1_only: bool| -> anyhow::Result<reqwest::Client> {
            let mut b = reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("sheaf/", env!("CARGO_PKG_VERSION")));
            if http1_only {
                // WebSockets upgrade an HTTP/1.1 connection.
                b = b.http1_only();
            } else if timeout_secs > 0 {
                b = b.timeout(Duration::from_secs(timeout_secs));
            }
            match &cfg.ca_pem {
                Some(pem) => {
                    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                        anyhow!("the certificate authority in {src} is not a valid PEM certificate: {e}")
                    })?;
                    if certs.is_empty() {
                        bail!("the certificate authority in {src} holds no PEM certificate");
                    }
                    for c in certs {
                        b = b.add_root_certificate(c);
                    }
                }
                None if cfg.insecure => {}
                None if cfg.server.starts_with("https://") => bail!(
                    "the cluster in {src} has neither certificate-authority-data nor certificate-authority, \
                     so the server cannot be verified; regenerate it with `sheaf kubeconfig`"
                ),
                None => {}
            }
            if cfg.insecure {
                b = b.danger_accept_invalid_certs(true);
            }
            if let Some(id) = &cfg.identity_pem {
                let identity = reqwest::Identity::from_pem(id)
                    .map_err(|e| anyhow!("the client certificate or key in {src} is not valid: {e}"))?;
                b = b.identity(identity);
            }
            b.build().map_err(|e| anyhow!("cannot set up the HTTPS client: {}", cause_chain(&e)))
        };
        let http = build(false)?;
        let http1 = build(true)?;
        Ok(Client {
            http,
            http1,
            base: cfg.server.trim_end_matches('/').to_string(),
            token: cfg.token,
            namespace: cfg.namespace,
            source: cfg.source,
            warned: Mutex::new(HashSet::new()),
        })
    }

    fn print_warnings(&self, headers: &reqwest::header::HeaderMap) {
        for h in headers.get_all("warning") {
            let text = warning_text(&String::from_utf8_lossy(h.as_bytes()));
            let fresh = self.warned.lock().map(|mut w| w.insert(text.clone())).unwrap_or(true);
            if fresh {
                eprintln!("Warning: {text}");
            }
        }
    }

    fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        let chain = cause_chain(&e);
        let hint = if e.is_timeout() {
            " (the request timed out; see --request-timeout)"
        } else if chain.contains("certificate") || chain.contains("UnknownIssuer") || chain.contains("NotValidForName")
        {
            " (the server's certificate does not match the kubeconfig's certificate authority or server name)"
        } else if e.is_connect() {
            " (is `sheaf server` running there?)"
        } else {
            ""
        };
        anyhow!("cannot reach the API server {} from {}: {chain}{hint}", self.base, self.source.display())
    }

    /// Sends a request; `body` is (content type, bytes). Answers other than
    /// 2xx become a [`ServerError`].
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).header(reqwest::header::ACCEPT, accept);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, bytes)) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, ct).body(bytes);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        self.reply(path, resp).await
    }

    /// Sends `body` as a stream (no overall timeout: large files), for
    /// uploads.
    pub async fn send_stream(
        &self,
        method: reqwest::Method,
        path: &str,
        len: u64,
        body: reqwest::Body,
    ) -> anyhow::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http1
            .request(method, &url)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        self.reply(path, resp).await
    }

    /// GETs `path` and returns the response to read as a stream (no
    /// overall timeout), for downloads; errors are the server's Status.
    pub async fn get_stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http1.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        self.reply(path, resp).await?;
        bail!("the server answered {path} without the file")
    }

    async fn reply(&self, path: &str, resp: reqwest::Response) -> anyhow::Result<Reply> {
        let status = resp.status().as_u16();
        self.print_warnings(resp.headers());
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if (200..300).contains(&status) {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Reply { status, body: Value::Null });
            }
            let body = parsed.ok_or_else(|| {
                anyhow!("the server answered {path} with something that is not JSON: {}", snippet(&bytes))
            })?;
            return Ok(Reply { status, body });
        }
        let err = match parsed.as_ref().filter(|v| v.get("kind").and_then(Value::as_str) == Some("Status")) {
            Some(v) => ServerError {
                code: v.get("code").and_then(Value::as_u64).map(|c| c as u16).unwrap_or(status),
                reason: v.get("reason").and_then(Value::as_str).unwrap_or("").to_string(),
                message: v
                    .get("message")
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("the server answered HTTP {status}")),
            },
            None => ServerError {
                code: status,
                reason: default_reason(status).to_string(),
                message: format!("the server answered HTTP {status}: {}", snippet(&bytes)),
            },
        };
        Err(err.into())
    }

    /// Opens a WebSocket to `path` with `protocol`, as `kubectl exec` and
    /// `virtctl console` do. Errors before the upgrade are the server's
    /// `Status` messages.
    pub async fn websocket(&self, path: &str, protocol: &str) -> anyhow::Result<reqwest::Upgraded> {
        let url = format!("{}{path}", self.base);
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let mut req = self
            .http1
            .get(&url)
            .header(reqwest::header::CONNECTION, "Upgrade")
            .header(reqwest::header::UPGRADE, "websocket")
            .header(reqwest::header::SEC_WEBSOCKET_VERSION, "13")
            .header(reqwest::header::SEC_WEBSOCKET_KEY, &key)
            .header(reqwest::header::SEC_WEBSOCKET_PROTOCOL, protocol);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        if status != 101 {
            let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
            let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
            let message = parsed
                .as_ref()
                .and_then(|v| v.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("the server answered HTTP {status}: {}", snippet(&bytes)));
            return Err(ServerError { code: status, reason: default_reason(status).to_string(), message }.into());
        }
        let accept = resp.headers().get(reqwest::header::SEC_WEBSOCKET_ACCEPT).map(|v| v.as_bytes().to_vec());
        if accept.as_deref()
            != Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()).as_bytes())
        {
            bail!("the server at {} did not complete the WebSocket handshake", self.base);
        }
        resp.upgrade().await.map_err(|e| self.transport_error(e))
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.request(reqwest::Method::GET, path, "application/json", None).await?.body)
    }

    // -----------------------------------------------------------------------
    // Discovery

    /// The resources of one group/version (`v1`, `kubevirt.io/v1`), or None
    /// if the server does not serve it.
    pub async fn resources_in(&self, api_version: &str) -> anyhow::Result<Option<Vec<ApiResource>>> {
        let (group, version) = split_api_version(api_version);
        if version.is_empty() {
            bail!("apiVersion {api_version:?} is not GROUP/VERSION or VERSION");
        }
        let path = gv_path(group, version);
        match self.get_json(&path).await {
            Ok(v) => Ok(Some(parse_resource_list(&v, group, version, true))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every resource the server serves.
    pub async fn discover(&self) -> anyhow::Result<Discovery> {
        let (core, groups) = futures::join!(self.get_json("/api"), self.get_json("/apis"));
        let core = core?;
        let mut gvs: Vec<(String, String, bool)> = Vec::new();
        for v in core.get("versions").and_then(Value::as_array).into_iter().flatten() {
            if let Some(v) = v.as_str() {
                gvs.push((String::new(), v.to_string(), gvs.is_empty()));
            }
        }
        let mut errors = Vec::new();
        match groups {
            Ok(groups) => {
                for g in groups.get("groups").and_then(Value::as_array).into_iter().flatten() {
                    let name = g.get("name").and_then(Value::as_str).unwrap_or("");
                    let preferred = g.pointer("/preferredVersion/version").and_then(Value::as_str);
                    for v in g.get("versions").and_then(Value::as_array).into_iter().flatten() {
                        if let Some(ver) = v.get("version").and_then(Value::as_str) {
                            let pref = preferred.is_none_or(|p| p == ver);
                            gvs.push((name.to_string(), ver.to_string(), pref));
                        }
                    }
                }
            }
            Err(e) => errors.push(format!("/apis: {e:#}")),
        }
        let fetches = gvs.iter().map(|(g, v, _)| self.get_json_owned(gv_path(g, v)));
        let lists = futures::future::join_all(fetches).await;
        let mut resources = Vec::new();
        for ((g, v, pref), list) in gvs.iter().zip(lists) {
            match list {
                Ok(list) => resources.extend(parse_resource_list(&list, g, v, *pref)),
                Err(e) => errors.push(format!("{}: {e:#}", gv_path(g, v))),
            }
        }
        if resources.is_empty() {
            bail!("the server lists no resources: {}", errors.join("; "));
        }
        Ok(Discovery { resources, errors })
    }

    async fn get_json_owned(&self, path: String) -> anyhow::Result<Value> {
        self.get_json(&path).await
    }
}

/// ("kubevirt.io", "v1") from "kubevirt.io/v1"; ("", "v1") from "v1".
pub fn split_api_version(av: &str) -> (&str, &str) {
    match av.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", av),
    }
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

/// One resource type as discovery lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResource {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    /// Served in the group's preferred version.
    pub preferred: bool,
}

impl ApiResource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The URL path of the collection (`name` None) or of one object. `ns` is
    /// ignored for cluster-scoped resources; None lists all namespaces.
    pub fn path(&self, ns: Option<&str>, name: Option<&str>) -> String {
        let mut p = gv_path(&self.group, &self.version);
        if self.namespaced {
            if let Some(ns) = ns {
                p.push_str("/namespaces/");
                p.push_str(&encode(ns));
            }
        }
        p.push('/');
        p.push_str(&self.plural);
        if let Some(n) = name {
            p.push('/');
            p.push_str(&encode(n));
        }
        p
    }

    /// `virtualmachine.kubevirt.io`, `configmap`: how kubectl names the kind
    /// in "created"/"deleted" lines and `-o name`.
    pub fn kind_ref(&self) -> String {
        let k = self.kind.to_lowercase();
        if self.group.is_empty() {
            k
        } else {
            format!("{k}.{}", self.group)
        }
    }

    /// `virtualmachines.kubevirt.io`, `configmaps`.
    pub fn plural_ref(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

fn parse_resource_list(v: &Value, group: &str, version: &str, preferred: bool) -> Vec<ApiResource> {
    let mut out = Vec::new();
    for r in v.get("resources").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = r.get("name").and_then(Value::as_str) else { continue };
        if name.contains('/') {
            continue;
        }
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        let singular = r
            .get("singularName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        out.push(ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            plural: name.to_string(),
            singular,
            kind,
            namespaced: r.get("namespaced").and_then(Value::as_bool).unwrap_or(false),
            short_names: r
                .get("shortNames")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            preferred,
        });
    }
    out
}

/// The result of discovery.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub resources: Vec<ApiResource>,
    /// Group versions that could not be listed.
    pub errors: Vec<String>,
}

impl Discovery {
    /// Finds the resource a user means by `query`: plural, singular, short
    /// name or Kind (any case), optionally followed by `.GROUP` or
    /// `.VERSION.GROUP`.
    pub fn resolve(&self, query: &str) -> anyhow::Result<&ApiResource> {
        let q = query.trim().to_lowercase();
        if q.is_empty() {
            bail!("a kind is required, e.g. `vm`, `configmap` or `virtualmachines.kubevirt.io`");
        }
        // (rank, index): lower rank is a better match.
        let mut best: Option<(u8, usize)> = None;
        for (i, r) in self.resources.iter().enumerate() {
            let kind = r.kind.to_lowercase();
            let full_names = [r.plural.as_str(), r.singular.as_str(), kind.as_str()];
            let rank_of = |name: &str| -> Option<u8> {
                if full_names.contains(&name) {
                    Some(0)
                } else if r.short_names.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                    Some(2)
                } else {
                    None
                }
            };
            let mut rank = rank_of(&q);
            if rank.is_none() && !r.group.is_empty() {
                if let Some(name) = q.strip_suffix(&format!(".{}", r.group)) {
                    rank = rank_of(name).or_else(|| name.strip_suffix(&format!(".{}", r.version)).and_then(rank_of));
                }
            }
            let Some(mut rank) = rank else { continue };
            if !r.preferred {
                rank += 1;
            }
            if best.is_none_or(|(b, _)| rank < b) {
                best = Some((rank, i));
            }
        }
        match best {
            Some((_, i)) => Ok(&self.resources[i]),
            None => {
                let mut msg =
                    format!("the server doesn't have a resource type {query:?}; it serves: {}", self.describe_kinds());
                if !self.errors.is_empty() {
                    msg.push_str(&format!(" (could not list: {})", self.errors.join("; ")));
                }
                Err(anyhow!(msg))
            }
        }
    }

    /// "namespaces (ns), configmaps (cm), virtualmachines.kubevirt.io (vm, vms), …"
    pub fn describe_kinds(&self) -> String {
        let mut seen = HashSet::new();
        let mut parts = Vec::new();
        for r in &self.resources {
            if !seen.insert(r.plural_ref()) {
                continue;
            }
            if r.short_names.is_empty() {
                parts.push(r.plural_ref());
            } else {
                parts.push(format!("{} ({})", r.plural_ref(), r.short_names.join(", ")));
            }
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disc() -> Discovery {
        let core = serde_json::json!({"resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "shortNames": ["ns"]},
            {"name": "namespaces/status", "singularName": "", "namespaced": false, "kind": "Namespace"},
            {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap", "shortNames": ["cm"]},
        ]});
        let kv = serde_json::json!({"resources": [
            {"name": "virtualmachines", "singularName": "virtualmachine", "namespaced": true, "kind": "VirtualMachine", "shortNames": ["vm", "vms"]},
            {"name": "virtualmachineinstances", "singularName": "", "namespaced": true, "kind": "VirtualMachineInstance", "shortNames": ["vmi"]},
        ]});
        let mut resources = parse_resource_list(&core, "", "v1", true);
        resources.extend(parse_resource_list(&kv, "kubevirt.io", "v1", true));
        Discovery { resources, errors: vec![] }
    }

    #[test]
    fn resolves_names() {
        let d = disc();
        for q in [
            "vm",
            "vms",
            "VM",
            "virtualmachine",
            "VirtualMachine",
            "virtualmachines",
            "virtualmachines.kubevirt.io",
            "VirtualMachine.kubevirt.io",
            "vm.kubevirt.io",
            "virtualmachines.v1.kubevirt.io",
        ] {
            assert_eq!(d.resolve(q).map(|r| r.plural.as_str()).ok(), Some("virtualmachines"), "{q}");
        }
        assert_eq!(d.resolve("ns").map(|r| r.plural.as_str()).ok(), Some("namespaces"));
        assert_eq!(d.resolve("cm").map(|r| r.plural.as_str()).ok(), Some("configmaps"));
        assert_eq!(d.resolve("ConfigMap").map(|r| r.kind_ref()).ok(), Some("configmap".to_string()));
        assert_eq!(
            d.resolve("virtualmachineinstance").map(|r| r.singular.as_str()).ok(),
            Some("virtualmachineinstance")
        );
        let err = d.resolve("foo").map(|r| r.plural.clone()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("\"foo\"") && err.contains("virtualmachines.kubevirt.io (vm, vms)"), "{err}");
        assert!(d.resolve("vm.example.com").is_err());
        assert!(d.resolve("namespaces/status").is_err());
    }

    #[test]
    fn paths() {
        let d = disc();
        let vm = d.resolve("vm").expect("vm");
        assert_eq!(vm.path(Some("default"), Some("a")), "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/a");
        assert_eq!(vm.path(None, None), "/apis/kubevirt.io/v1/virtualmachines");
        assert_eq!(vm.kind_ref(), "virtualmachine.kubevirt.io");
        let ns = d.resolve("ns").expect("ns");
        assert_eq!(ns.path(Some("default"), Some("x y")), "/api/v1/namespaces/x%20y");
        assert_eq!(query(&[("labelSelector", "app=x,b!=c")]), "?labelSelector=app%3Dx%2Cb%21%3Dc");
    }

    #[test]
    fn warnings() {
        assert_eq!(warning_text("299 - \"spec.running is deprecated\""), "spec.running is deprecated");
        assert_eq!(warning_text("299 - \"a \\\"b\\\"\" \"Sat, 01 Jan 2000\""), "a \"b\"");
        assert_eq!(warning_text("free text"), "free text");
    }

    #[test]
    fn kubeconfig() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let ca = base64::engine::general_purpose::STANDARD.encode(pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: abc\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: prod\n- name: y\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
        );
        let cfg = parse_kubeconfig(Path::new("/tmp/kc"), &text, None).expect("parses");
        assert_eq!(cfg.server, "https://127.0.0.1:6443");
        assert_eq!(cfg.namespace, "prod");
        assert_eq!(cfg.token.as_deref(), Some("abc"));
        assert_eq!(cfg.ca_pem.as_deref(), Some(pem.as_bytes()));
        let cfg = parse_kubeconfig(Path::new("/tmp/kc"), &text, Some("y")).expect("parses");
        assert_eq!(cfg.namespace, "default");
        let err = parse_kubeconfig(Path::new("/tmp/kc"), &text, Some("z")).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("no context \"z\"")));
        assert!(parse_kubeconfig(Path::new("/tmp/kc"), "clusters: [", None).is_err());
        assert!(parse_kubeconfig(Path::new("/tmp/kc"), "", None).is_err());
    }
}
