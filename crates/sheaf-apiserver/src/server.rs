//! HTTP routing: authentication, URL parsing in Kubernetes' layout, body
//! decoding, and the mapping of verbs to object operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts as _, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use sheaf_store::Store;
use sheaf_types::ResourceType;

use crate::authz::{Attributes, Authenticator, Rbac, ResourceAttributes, UserInfo};
use crate::console::{Channel, Consoles, NodeDialer};
use crate::error::{ApiError, ApiResult};
use crate::objects::{name_of, DeleteOptions, Deleted, FieldValidation, ListParams, Objects, WriteOptions, Written};
use crate::openapi::OpenApi;
use crate::patch::PatchType;
use crate::registry::Registry;
use crate::selector::{FieldSelector, LabelSelector};
use crate::table::{self, IncludeObject};
use crate::watch::{self, WatchParams};
use crate::{discovery, subresources};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The API server's shared state.
pub struct ApiServer {
    pub objects: Objects,
    pub registry: Arc<Registry>,
    openapi: OpenApi,
    /// Bearer tokens to identities.
    authn: Authenticator,
    /// Every role and binding, for authorization.
    pub rbac: Arc<Rbac>,
    audit: std::sync::OnceLock<crate::audit::Audit>,
    ready: AtomicBool,
    dialer: std::sync::OnceLock<Arc<dyn NodeDialer>>,
    consoles: Arc<Consoles>,
    images: std::sync::OnceLock<Arc<dyn crate::image_transfer::ImageTransfer>>,
    /// The cluster CA's PEM, served at `/cacerts` (set once, at start).
    ca_pem: std::sync::OnceLock<String>,
}

impl ApiServer {
    /// A server over `store` that accepts `identities` (the admin token,
    /// the node secret) besides users' tokens. Starts keeping its copy of
    /// the roles and bindings when called inside a Tokio runtime.
    pub fn new(store: Arc<dyn Store>, registry: Registry, identities: &[(String, UserInfo)]) -> Arc<Self> {
        let registry = Arc::new(registry);
        let openapi = OpenApi::build(&registry);
        let rbac = Arc::new(Rbac::default());
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(rbac.clone().run(store.clone()));
        }
        Arc::new(ApiServer {
            objects: Objects::new(store, registry.clone()),
            registry,
            openapi,
            authn: Authenticator::new(identities),
            rbac,
            audit: std::sync::OnceLock::new(),
            ready: AtomicBool::new(false),
            dialer: std::sync::OnceLock::new(),
            consoles: Arc::default(),
            images: std::sync::OnceLock::new(),
            ca_pem: std::sync::OnceLock::new(),
        })
    }

    /// How consoles and VNC of instances are reached (set once, at start).
    pub fn set_node_dialer(&self, dialer: Arc<dyn NodeDialer>) {
        let _ = self.dialer.set(dialer);
    }

    /// The cluster CA served at `/cacerts` (set once, at start).
    pub fn set_ca_pem(&self, pem: &str) {
        let _ = self.ca_pem.set(pem.to_string());
    }

    /// Where image uploads and downloads go (set once, at start).
    pub fn set_image_transfer(&self, t: Arc<dyn crate::image_transfer::ImageTransfer>) {
        let _ = self.images.set(t);
    }

    /// Where mutating requests are logged (set once, at start).
    pub fn set_audit(&self, audit: crate::audit::Audit) {
        let _ = self.audit.set(audit);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The axum router of the whole API.
    pub fn router(self: &Arc<Self>) -> Router {
        let api = Router::new()
            .route("/metrics", get(crate::metrics::handler))
            .fallback(dispatch)
            .layer(middleware::from_fn_with_state(self.clone(), authenticate))
            .layer(middleware::from_fn(compress))
            .with_state(self.clone());
        let public = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/livez", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/version", get(|| async { json_response(StatusCode::OK, &discovery::version(), &[]) }))
            // The cluster CA, for nodes that hold a join token (they check
            // its hash); public, as the CA certificate is.
            .route("/cacerts", get(cacerts))
            // The web UI (public: the page holds no data; it asks for a
            // token and sends it with every API request).
            .route("/", get(crate::ui::index))
            .route("/index.html", get(crate::ui::index))
            .route("/assets/{*path}", get(crate::ui::asset));
        let top = crate::ui::top_files()
            .fold(Router::new(), |r, path| r.route(path, get(move |h: HeaderMap| crate::ui::top_file(path, h))));
        Router::new().merge(public.merge(top).with_state(self.clone())).merge(api)
    }

    /// The identity of a request's bearer token, or 401.
    pub async fn authenticate_headers(&self, headers: &HeaderMap) -> ApiResult<UserInfo> {
        let header = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::to_string);
        let Some(token) = header.or_else(|| bearer_from_protocols(headers)) else {
            return Err(ApiError::unauthorized());
        };
        self.authn.authenticate(&self.objects, token.trim()).await
    }

    /// Whether `user` may do `a` (RBAC; see `docs/design/rbac.md`).
    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> ApiResult<()> {
        if self.rbac.allows(user, a) {
            Ok(())
        } else if !user.is_master() && !self.rbac.loaded() {
            Err(ApiError::unavailable("the server is still loading its roles and bindings; retry in a moment"))
        } else {
            Err(a.forbidden(user))
        }
    }

    /// What a request does, in RBAC's terms.
    pub fn attributes(&self, method: &Method, uri: &http::Uri) -> Attributes {
        let path = uri.path();
        let verb_of_method = method.as_str().to_ascii_lowercase();
        let Route::Resource(rp) = parse_route(&self.registry, path) else {
            return Attributes::non_resource(&verb_of_method, path);
        };
        let q = query_map(uri);
        let watching = rp.watch || is_true(&q, "watch");
        let mut name = rp.name.clone().unwrap_or_default();
        let verb = match (method, rp.name.is_some()) {
            (&Method::GET, _) if watching => "watch",
            (&Method::GET, true) => "get",
            (&Method::GET, false) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, true) => "delete",
            (&Method::DELETE, false) => "deletecollection",
            _ => verb_of_method.as_str(),
        };
        if name.is_empty() && matches!(verb, "list" | "watch") {
            // A list pinned to one name is a read of that name.
            if let Ok(f) = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or("")) {
                name = f.pinned_name().unwrap_or_default().to_string();
            }
        }
        Attributes::resource(
            verb,
            ResourceAttributes {
                group: rp.group,
                resource: rp.plural,
                subresource: rp.sub.unwrap_or_default(),
                namespace: rp.namespace.unwrap_or_default(),
                name,
            },
        )
    }
}

/// Who made a request: put on the request by the authentication layer.
#[derive(Clone, Debug)]
pub struct Caller(pub UserInfo);

/// The subprotocol prefix that carries a bearer token on a WebSocket, as
/// Kubernetes' API server reads it: browsers cannot set headers on a
/// WebSocket, so the web UI's consoles offer
/// `base64url.bearer.authorization.k8s.io.<token in unpadded base64url>`
/// beside `plain.kubevirt.io` (the one the server then picks).
pub const BEARER_PROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";

/// The token of a WebSocket upgrade's [`BEARER_PROTOCOL`], if it has one.
pub fn bearer_from_protocols(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let upgrade = headers.get(http::header::UPGRADE).and_then(|v| v.to_str().ok());
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return None;
    }
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL).map(str::to_string))
        .and_then(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b.trim_end_matches('=')).ok())
        .and_then(|t| String::from_utf8(t).ok())
}

/// Answers of at least this many bytes are compressed for clients that take
/// zstd (browsers do; kubectl asks for gzip only and gets them plain).
const COMPRESS_FROM: u64 = 128 << 10;

/// Compresses large whole answers (a list of 1,000 VMs is ~1 MB of JSON,
/// ~60 KB in zstd) for clients that accept zstd. Streams (watches,
/// downloads, consoles) have no known length and pass as they are.
async fn compress(req: Request, next: Next) -> Response {
    use http_body_util::BodyExt as _;
    let wanted = crate::ui::accepts(req.headers(), "zstd");
    let resp = next.run(req).await;
    if !wanted || resp.headers().contains_key(http::header::CONTENT_ENCODING) {
        return resp;
    }
    let size = axum::body::HttpBody::size_hint(resp.body()).exact();
    if size.is_none_or(|n| n < COMPRESS_FROM) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = body.collect().await.map(|c| c.to_bytes()) else {
        return ApiError::internal("cannot read the answer to compress it").into_response();
    };
    match zstd::bulk::compress(&bytes, 3) {
        Ok(z) => {
            parts.headers.insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
            parts.headers.remove(http::header::CONTENT_LENGTH);
            parts.headers.append(http::header::VARY, HeaderValue::from_static("Accept-Encoding"));
            Response::from_parts(parts, Body::from(z))
        }
        Err(_) => Response::from_parts(parts, Body::from(bytes)),
    }
}

async fn cacerts(State(s): State<Arc<ApiServer>>) -> Response {
    match s.ca_pem.get() {
        Some(pem) => pem.clone().into_response(),
        None => (StatusCode::NOT_FOUND, "no cluster CA").into_response(),
    }
}

async fn readyz(State(s): State<Arc<ApiServer>>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// Authentication, impersonation, authorization and the audit log of every
/// API request.
async fn authenticate(State(s): State<Arc<ApiServer>>, mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let attrs = s.attributes(req.method(), req.uri());
    let audited = s.audit.get().is_some()
        && (!matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
            || attrs.resource.as_ref().is_some_and(|r| matches!(r.subresource.as_str(), "console" | "vnc")));
    let record = audited.then(|| {
        let r = attrs.resource.clone().unwrap_or_default();
        let header = |h: &str| req.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        crate::audit::Record {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            user: String::new(),
            groups: Vec::new(),
            impersonated_by: None,
            verb: attrs.verb.clone(),
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            api_group: r.group,
            resource: r.resource,
            subresource: r.subresource,
            namespace: r.namespace,
            name: r.name,
            code: 0,
            latency_ms: 0,
            source_ip: req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string())
                .unwrap_or_default(),
            user_agent: header("user-agent"),
        }
    });
    // The body is not Sync: the checks borrow a copy of the headers only.
    let headers = req.headers().clone();
    let outcome = async {
        let user = s.authenticate_headers(&headers).await.map_err(|e| (None, e))?;
        let (user, by) = crate::reviews::impersonate(&s, user, &headers).map_err(|(u, e)| (Some(u), e))?;
        s.authorize(&user, &attrs).map_err(|e| (Some(user.clone()), e))?;
        Ok::<_, (Option<UserInfo>, ApiError)>((user, by))
    }
    .await;
    let (resp, user, by) = match outcome {
        Ok((user, by)) => {
            req.extensions_mut().insert(Caller(user.clone()));
            (next.run(req).await, Some(user), by)
        }
        Err((user, e)) => (e.into_response(), user, None),
    };
    if let (Some(audit), Some(mut rec)) = (s.audit.get(), record) {
        if let Some(u) = user {
            rec.user = u.name;
            rec.groups = u.groups.into_iter().filter(|g| g != crate::authz::AUTHENTICATED).collect();
        }
        rec.impersonated_by = by;
        if rec.name.is_empty() {
            if let Some(n) = resp.extensions().get::<crate::audit::WrittenName>() {
                rec.name = n.0.clone();
            }
        }
        rec.code = resp.status().as_u16();
        rec.latency_ms = started.elapsed().as_millis() as u64;
        audit.record(rec);
    }
    resp
}

pub(crate) fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = (code, body).into_response();
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for w in warnings {
        let text = format!("299 - {:?}", w.replace('"', "'"));
        if let Ok(h) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", h);
        }
    }
    resp
}

/// What a URL under `/api` or `/apis` names.
#[derive(Debug, PartialEq)]
enum Route {
    ApiVersions,
    GroupList,
    Group(String),
    GroupVersion(String, String),
    Resource(ResourcePath),
    OpenApiV3Index,
    OpenApiV3(String),
    NotFound,
}

#[derive(Debug, PartialEq)]
struct ResourcePath {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch: bool,
}

fn parse_route(reg: &Registry, path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Route::ApiVersions,
        ["apis"] => return Route::GroupList,
        ["apis", g] => return Route::Group(g.to_string()),
        ["api", v] => return Route::GroupVersion(String::new(), v.to_string()),
        ["apis", g, v] => return Route::GroupVersion(g.to_string(), v.to_string()),
        ["openapi", "v3"] => return Route::OpenApiV3Index,
        ["openapi", "v3", rest @ ..] => return Route::OpenApiV3(rest.join("/")),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    let (watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let namespaced_plural = |p: &str| {
        reg.find(group, version, p).is_some_and(|rt| rt.namespaced)
            || (group == crate::subresources::GROUP && reg.find("kubevirt.io", version, p).is_some())
    };
    let rp = |plural: &str, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Route::Resource(ResourcePath {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
            watch,
        })
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced_plural(plural) => match tail {
            [] => rp(plural, Some(ns), None, None),
            [name] => rp(plural, Some(ns), Some(name), None),
            [name, sub] => rp(plural, Some(ns), Some(name), Some(sub)),
            _ => Route::NotFound,
        },
        [plural] => rp(plural, None, None, None),
        [plural, name] => rp(plural, None, Some(name), None),
        [plural, name, sub] => rp(plural, None, Some(name), Some(sub)),
        _ => Route::NotFound,
    }
}

fn query_map(uri: &http::Uri) -> HashMap<String, String> {
    uri.query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> ApiResult<Value> {
    let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    parse_as(ct, bytes)
}

/// Decodes a body of content type `ct`.
fn parse_as(ct: &str, bytes: &[u8]) -> ApiResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty; send the object as JSON or YAML"));
    }
    if ct.contains("yaml") {
        serde_yaml::from_slice::<Value>(bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))
    } else if ct.contains("json") || ct.is_empty() {
        serde_json::from_slice::<Value>(bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    } else if ct.contains("protobuf") {
        crate::protobuf::decode_body(bytes)
    } else {
        Err(ApiError::unsupported_media_type(format!(
            "unsupported Content-Type {ct:?}; send application/json or application/yaml"
        )))
    }
}

async fn read_body(body: Body) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit")
        {
            ApiError::too_large(MAX_BODY_BYTES)
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })
}

fn write_options(q: &HashMap<String, String>) -> ApiResult<WriteOptions> {
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => return Err(ApiError::bad_request(format!("dryRun must be \"All\", not {other:?}"))),
    };
    Ok(WriteOptions {
        field_validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
        dry_run,
        field_manager: q.get("fieldManager").cloned().filter(|s| !s.is_empty()),
    })
}

fn list_params(q: &HashMap<String, String>) -> ApiResult<ListParams> {
    let limit = match q.get("limit").map(String::as_str) {
        None | Some("") => 0,
        Some(l) => {
            l.parse::<i64>().map_err(|_| ApiError::bad_request(format!("limit must be a number, not {l:?}")))?.max(0)
                as usize
        }
    };
    Ok(ListParams {
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
        limit,
        continue_token: q.get("continue").cloned().filter(|s| !s.is_empty()),
    })
}

fn is_true(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true") | Some("1"))
}

async fn dispatch(State(s): State<Arc<ApiServer>>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let measured = crate::metrics::Measured::start(&s.registry, &req);
    let resp = match handle(&s, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.code.is_server_error() {
                tracing::error!(%method, %path, error = %e, "request failed");
            }
            e.into_response()
        }
    };
    let resp = measured.finish(resp);
    tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    resp
}

async fn handle(s: &Arc<ApiServer>, req: Request) -> ApiResult<Response> {
    let (mut parts, body) = req.into_parts();
    let q = query_map(&parts.uri);
    let route = parse_route(&s.registry, parts.uri.path());
    let get_only = |r: Option<Value>| -> ApiResult<Response> {
        if parts.method != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "{} is not allowed on {}",
                parts.method,
                parts.uri.path()
            )));
        }
        match r {
            Some(v) => Ok(json_response(StatusCode::OK, &v, &[])),
            None => Err(ApiError::not_found_msg(format!(
                "the server could not find the requested resource {}",
                parts.uri.path()
            ))),
        }
    };
    match route {
        Route::ApiVersions => get_only(Some(discovery::api_versions())),
        Route::GroupList => get_only(Some(discovery::api_group_list(&s.registry))),
        Route::Group(g) if g == subresources::GROUP => get_only(Some(json!({
            "kind": "APIGroup", "apiVersion": "v1", "name": g,
            "versions": [{"groupVersion": format!("{g}/v1"), "version": "v1"}],
            "preferredVersion": {"groupVersion": format!("{g}/v1"), "version": "v1"}
        }))),
        Route::Group(g) if crate::reviews::groups().iter().any(|(n, _)| *n == g) => get_only(Some(json!({
            "kind": "APIGroup", "apiVersion": "v1", "name": g,
            "versions": [{"groupVersion": format!("{g}/v1"), "version": "v1"}],
            "preferredVersion": {"groupVersion": format!("{g}/v1"), "version": "v1"}
        }))),
        Route::Group(g) => get_only(discovery::api_group(&s.registry, &g)),
        Route::GroupVersion(g, v) if v == "v1" && crate::reviews::groups().iter().any(|(n, _)| *n == g) => {
            get_only(crate::reviews::groups().into_iter().find(|(n, _)| *n == g).map(|(_, l)| l))
        }
        Route::GroupVersion(g, v) if g == subresources::GROUP && v == "v1" => get_only(Some(subresources::discovery())),
        Route::GroupVersion(g, v) => get_only(discovery::api_resource_list(&s.registry, &g, &v)),
        Route::OpenApiV3Index => get_only(Some(s.openapi.index())),
        Route::OpenApiV3(p) => get_only(s.openapi.document(&p).cloned()),
        Route::NotFound => Err(ApiError::not_found_msg(format!(
            "the server could not find the requested resource {}",
            parts.uri.path()
        ))),
        Route::Resource(rp) if rp.group == subresources::GROUP => {
            let (Some(ns), Some(name), Some(action)) = (rp.namespace.as_deref(), rp.name.as_deref(), rp.sub.as_deref())
            else {
                return Err(ApiError::not_found_msg(format!(
                    "use PUT /apis/{}/v1/namespaces/NAMESPACE/virtualmachines/NAME/start|stop|restart \
                     or virtualmachineinstances/NAME/pause|unpause|softreboot, GET .../console|vnc|guestosinfo|log",
                    subresources::GROUP
                )));
            };
            let method = parts.method.clone();
            match (rp.plural.as_str(), action, method) {
                (
                    plural @ ("virtualmachines" | "virtualmachineinstances"),
                    "addvolume" | "removevolume",
                    Method::PUT,
                ) => {
                    let bytes = read_body(body).await?;
                    let on_vm = plural == "virtualmachines";
                    if action == "addvolume" {
                        crate::hotplug::add_volume(&s.objects, ns, name, on_vm, &bytes).await?;
                    } else {
                        crate::hotplug::remove_volume(&s.objects, ns, name, on_vm, &bytes).await?;
                    }
                    Ok((StatusCode::ACCEPTED, "").into_response())
                }
                ("virtualmachines", "clone", Method::POST) => {
                    let bytes = read_body(body).await?;
                    let vm = crate::vm_clone::clone_vm(&s.objects, ns, name, &bytes).await?;
                    Ok(json_response(StatusCode::CREATED, &vm, &[]))
                }
                ("virtualmachines", "migrate", Method::PUT) => {
                    let bytes = read_body(body).await?;
                    subresources::vm_migrate(&s.objects, ns, name, &bytes).await?;
                    Ok((StatusCode::ACCEPTED, "").into_response())
                }
                ("virtualmachines", _, Method::PUT) => {
                    subresources::vm_action(&s.objects, ns, name, action).await?;
                    Ok((StatusCode::ACCEPTED, "").into_response())
                }
                ("virtualmachineinstances", "pause" | "unpause" | "softreboot", Method::PUT) => {
                    subresources::vmi_action(&s.objects, ns, name, action).await?;
                    Ok(StatusCode::OK.into_response())
                }
                ("virtualmachineinstances", "log", Method::GET) => {
                    crate::serial_log::get(&s.objects, s.dialer.get(), ns, name, &q).await
                }
                ("virtualmachineinstances", "guestosinfo", Method::GET) => {
                    Ok(json_response(StatusCode::OK, &subresources::guest_os_info(&s.objects, ns, name).await?, &[]))
                }
                ("virtualmachineinstances", "console" | "vnc", Method::GET) => {
                    let channel = if action == "console" { Channel::Serial } else { Channel::Vnc };
                    let upgrade = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &()).await.ok();
                    crate::console::connect(&s.objects, s.dialer.get(), &s.consoles, ns, name, channel, upgrade).await
                }
                ("virtualmachines" | "virtualmachineinstances", _, m) => Err(ApiError::method_not_allowed(format!(
                    "{m} is not allowed on {}/{action}: use PUT for start, stop, restart, pause, unpause, \
                     softreboot, addvolume and removevolume, POST for clone, GET for console, vnc, guestosinfo and log",
                    rp.plural
                ))),
                (plural, _, _) => Err(ApiError::not_found_msg(format!(
                    "{plural} have no subresources in {}; virtualmachines and virtualmachineinstances do",
                    subresources::GROUP
                ))),
            }
        }
        Route::Resource(rp)
            if rp.group == "sheaf.io"
                && rp.plural == "backups"
                && matches!(rp.sub.as_deref(), Some("files" | "download")) =>
        {
            let (Some(ns), Some(name)) = (rp.namespace.as_deref(), rp.name.as_deref()) else {
                return Err(ApiError::not_found_msg("use GET .../namespaces/NS/backups/NAME/files or .../download"));
            };
            if parts.method != Method::GET {
                return Err(ApiError::method_not_allowed(format!(
                    "{} is not allowed on backups/NAME/files",
                    parts.method
                )));
            }
            if rp.sub.as_deref() == Some("files") {
                crate::backup_files::list(&s.objects, ns, name, &q).await
            } else {
                crate::backup_files::download(&s.objects, ns, name, &q).await
            }
        }
        Route::Resource(rp)
            if rp.version == "v1"
                && (rp.group == crate::reviews::AUTHORIZATION || rp.group == crate::reviews::AUTHENTICATION) =>
        {
            if parts.method != Method::POST || rp.name.is_some() {
                return Err(ApiError::method_not_allowed(format!(
                    "reviews are only created: POST /apis/{}/v1/{}",
                    rp.group, rp.plural
                )));
            }
            let caller = parts.extensions.get::<Caller>().map(|c| c.0.clone()).ok_or_else(ApiError::unauthorized)?;
            let body = parse_body(&parts.headers, &read_body(body).await?)?;
            let (code, v) = crate::reviews::handle(s, &caller, &rp.group, &rp.plural, &body)?;
            Ok(json_response(code, &v, &[]))
        }
        Route::Resource(rp) => {
            let Some(rt) = s.registry.find(&rp.group, &rp.version, &rp.plural).cloned() else {
                let gv = if rp.group.is_empty() { rp.version.clone() } else { format!("{}/{}", rp.group, rp.version) };
                return Err(ApiError::not_found_msg(format!(
                    "the server doesn't have a resource type {:?} in {gv}; `kubectl api-resources` lists the served kinds",
                    rp.plural
                )));
            };
            resource(s, &rt, rp, &parts.method, &parts.headers, &q, body).await
        }
    }
}

async fn resource(
    s: &Arc<ApiServer>,
    rt: &ResourceType,
    rp: ResourcePath,
    method: &Method,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: Body,
) -> ApiResult<Response> {
    let objects = &s.objects;
    let accept = headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok());
    let table = table::wants_table(accept).then(|| IncludeObject::parse(q.get("includeObject").map(String::as_str)));
    if rt.namespaced && rp.name.is_some() && rp.namespace.is_none() {
        return Err(ApiError::not_found_msg(format!(
            "{} are namespaced: use /namespaces/NAMESPACE/{}/NAME",
            rt.plural, rt.plural
        )));
    }
    if !rt.namespaced && rp.namespace.is_some() {
        return Err(ApiError::not_found_msg(format!("{} are cluster-scoped, not in a namespace", rt.plural)));
    }
    let ns = rp.namespace.as_deref();
    if rt.group == "harvesterhci.io" && rt.plural == "virtualmachineimages" {
        if let (Some(sub @ ("upload" | "download")), Some(name), Some(ns)) = (rp.sub.as_deref(), rp.name.as_deref(), ns)
        {
            return crate::image_transfer::handle(s.images.get(), ns, name, sub, method, body).await;
        }
    }
    if rt.group == "harvesterhci.io" && rt.plural == "virtualmachinetemplateversions" {
        let target = (rp.sub.as_deref(), rp.name.as_deref(), ns);
        if let (Some(crate::templates::SUBRESOURCE), Some(name), Some(ns)) = target {
            if *method != Method::POST {
                return Err(ApiError::method_not_allowed(format!("use POST on {}/NAME/createvm", rt.plural)));
            }
            let body = parse_body(headers, &read_body(body).await?)?;
            let vm = crate::templates::create_vm(objects, ns, name, body).await?;
            return Ok(json_response(StatusCode::CREATED, &vm, &[]));
        }
    }
    let status_only = match rp.sub.as_deref() {
        None => false,
        Some("status") if rt.has_status => true,
        Some(sub) => {
            return Err(ApiError::not_found_msg(format!("{} has no subresource {sub:?}", rt.plural)));
        }
    };
    let gv = rt.api_version();
    match (method.clone(), rp.name.as_deref()) {
        (Method::GET, None) => {
            let lp = list_params(q)?;
            if rp.watch || is_true(q, "watch") {
                let timeout = q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
                let wp = WatchParams {
                    list: lp,
                    resource_version: q.get("resourceVersion").cloned(),
                    bookmarks: is_true(q, "allowWatchBookmarks"),
                    timeout,
                    table,
                };
                return watch::watch(objects.clone(), rt.clone(), ns.map(str::to_string), wp).await;
            }
            let (items, rv, cont) = objects.list(rt, ns, &lp).await?;
            let mut meta = json!({"resourceVersion": rv});
            if let Some(c) = cont {
                meta["continue"] = json!(c);
            }
            let v = match table {
                Some(include) => table::table(rt, &items, meta, include, true),
                None => json!({"apiVersion": gv, "kind": format!("{}List", rt.kind), "metadata": meta, "items": items}),
            };
            Ok(json_response(StatusCode::OK, &v, &[]))
        }
        (Method::GET, Some(name)) => {
            if rp.watch || is_true(q, "watch") {
                let wp = WatchParams {
                    list: ListParams {
                        fields: FieldSelector::parse(&format!("metadata.name={name}"))?,
                        ..Default::default()
                    },
                    resource_version: q.get("resourceVersion").cloned(),
                    bookmarks: is_true(q, "allowWatchBookmarks"),
                    timeout: None,
                    table,
                };
                return watch::watch(objects.clone(), rt.clone(), ns.map(str::to_string), wp).await;
            }
            let obj = objects.get(rt, ns, name).await?;
            let v = match table {
                Some(include) => {
                    let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                    table::table(rt, &[obj], json!({"resourceVersion": rv}), include, true)
                }
                None => obj,
            };
            Ok(json_response(StatusCode::OK, &v, &[]))
        }
        (Method::POST, None) => {
            if status_only {
                return Err(ApiError::method_not_allowed("POST is not allowed on status"));
            }
            let opts = write_options(q)?;
            let body = parse_body(headers, &read_body(body).await?)?;
            let w = objects.create(rt, ns, body, &opts).await?;
            Ok(written(StatusCode::CREATED, w))
        }
        (Method::PUT, Some(name)) => {
            let opts = write_options(q)?;
            let body = parse_body(headers, &read_body(body).await?)?;
            let w = objects.update(rt, ns, name, body, status_only, &opts).await?;
            Ok(written(StatusCode::OK, w))
        }
        (Method::PATCH, Some(name)) => {
            let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let kind = PatchType::from_content_type(ct)?;
            let opts = write_options(q)?;
            let bytes = read_body(body).await?;
            // Apply bodies are YAML (JSON is YAML too); the other patches JSON.
            let format = if kind == PatchType::Apply { "application/yaml" } else { "application/json" };
            let patch = parse_as(format, &bytes)?;
            if kind == PatchType::Apply {
                Objects::check_apply_target(rt, &patch)?;
            }
            let force = is_true(q, "force");
            let w = objects.patch(rt, ns, name, kind, patch, status_only, force, &opts).await?;
            let code = if w.created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(written(code, w))
        }
        (Method::DELETE, Some(name)) => {
            let opts = delete_options(q, headers, body).await?;
            if !opts.dry_run {
                let removed = q.get(crate::vm_claims::REMOVED_DISKS_PARAM);
                crate::vm_claims::record_removed_disks(objects, rt, ns, name, removed).await?;
            }
            match objects.delete(rt, ns, name, &opts).await? {
                Deleted::Now(obj) => Ok(json_response(StatusCode::OK, &obj, &[])),
                Deleted::Pending(obj) => Ok(json_response(StatusCode::OK, &obj, &[])),
            }
        }
        (Method::DELETE, None) => {
            let opts = delete_options(q, headers, body).await?;
            let lp = list_params(q)?;
            let (items, rv, _) = objects.list(rt, ns, &ListParams { limit: 0, continue_token: None, ..lp }).await?;
            let mut deleted = Vec::new();
            for item in items {
                let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
                let item_ns = item.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
                match objects.delete(rt, item_ns.as_deref(), &name, &opts).await {
                    Ok(Deleted::Now(o)) | Ok(Deleted::Pending(o)) => deleted.push(o),
                    Err(e) if e.code == StatusCode::NOT_FOUND => {}
                    Err(e) => return Err(e),
                }
            }
            let v = json!({"apiVersion": gv, "kind": format!("{}List", rt.kind), "metadata": {"resourceVersion": rv}, "items": deleted});
            Ok(json_response(StatusCode::OK, &v, &[]))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not allowed on {}{}",
            rt.plural,
            if rp.name.is_some() { "/NAME" } else { "" }
        ))),
    }
}

fn written(code: StatusCode, w: Written) -> Response {
    let mut resp = json_response(code, &w.object, &w.warnings);
    resp.extensions_mut().insert(crate::audit::WrittenName(name_of(&w.object).to_string()));
    resp
}

async fn delete_options(q: &HashMap<String, String>, headers: &HeaderMap, body: Body) -> ApiResult<DeleteOptions> {
    let bytes = read_body(body).await?;
    let mut opts = DeleteOptions::default();
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        let v = parse_body(headers, &bytes)?;
        if !v.is_object() {
            return Err(ApiError::bad_request("DeleteOptions must be a JSON object"));
        }
        opts.propagation = v.get("propagationPolicy").and_then(Value::as_str).map(str::to_string);
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            opts.propagation = Some("Orphan".into());
        }
        opts.precondition_uid = v.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string);
        opts.precondition_rv = v.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string);
        if let Some(d) = v.get("dryRun").and_then(Value::as_array) {
            opts.dry_run = d.iter().any(|x| x == "All");
        }
    }
    if let Some(p) = q.get("propagationPolicy") {
        opts.propagation = Some(p.clone());
    }
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => {}
        Some("All") => opts.dry_run = true,
        Some(other) => return Err(ApiError::bad_request(format!("dryRun must be \"All\", not {other:?}"))),
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_bearer_protocol() {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("sheaf-token/+=");
        let mut h = HeaderMap::new();
        let offered = format!("{BEARER_PROTOCOL}{token}, plain.kubevirt.io");
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(&offered).expect("header"));
        // Only on a WebSocket upgrade.
        assert_eq!(bearer_from_protocols(&h), None);
        h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(bearer_from_protocols(&h).as_deref(), Some("sheaf-token/+="));
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("plain.kubevirt.io"));
        assert_eq!(bearer_from_protocols(&h), None);
        let bad = format!("{BEARER_PROTOCOL}!!!");
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(&bad).expect("header"));
        assert_eq!(bearer_from_protocols(&h), None);
    }

    fn reg() -> Registry {
        Registry::new(sheaf_types::registry::all())
    }

    #[test]
    fn routes() {
        let r = reg();
        assert_eq!(parse_route(&r, "/api"), Route::ApiVersions);
        assert_eq!(parse_route(&r, "/apis/kubevirt.io/v1"), Route::GroupVersion("kubevirt.io".into(), "v1".into()));
        let Route::Resource(p) = parse_route(&r, "/api/v1/namespaces/default/configmaps/x") else { panic!("resource") };
        assert_eq!(
            (p.namespace.as_deref(), p.plural.as_str(), p.name.as_deref()),
            (Some("default"), "configmaps", Some("x"))
        );
        let Route::Resource(p) = parse_route(&r, "/api/v1/namespaces/default") else { panic!("resource") };
        assert_eq!((p.namespace, p.plural.as_str(), p.name.as_deref()), (None, "namespaces", Some("default")));
        let Route::Resource(p) = parse_route(&r, "/api/v1/namespaces/default/status") else { panic!("resource") };
        assert_eq!(
            (p.plural.as_str(), p.name.as_deref(), p.sub.as_deref()),
            ("namespaces", Some("default"), Some("status"))
        );
        let Route::Resource(p) = parse_route(&r, "/apis/kubevirt.io/v1/watch/namespaces/a/virtualmachines") else {
            panic!("resource")
        };
        assert!(p.watch);
        assert_eq!(p.namespace.as_deref(), Some("a"));
        assert_eq!(parse_route(&r, "/nope"), Route::NotFound);
    }
}
