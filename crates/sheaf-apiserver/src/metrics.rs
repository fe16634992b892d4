//! The API server's metrics and `/metrics` (docs/design/metrics.md).
//!
//! Requests are counted and timed as Kubernetes does
//! (`apiserver_request_total`, `apiserver_request_duration_seconds`):
//! [`Measured::start`] classifies a request in `dispatch` (verb, group,
//! version, resource, subresource, scope), [`Measured::finish`] records its
//! code and, unless it is a watch or a connect (those last as long as the
//! client wants), its duration. Every label value is one of a fixed set (a
//! resource the server does not serve is counted with empty group, version
//! and resource, an unknown subresource as `other`), so the number of
//! series stays bounded whatever URLs clients send.
//!
//! One registry per process, as Kubernetes' `legacyregistry`: other parts
//! of the process (the embedded node agent) add themselves with
//! [`add_collector`], and every scrape asks them too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode};
use sheaf_types::metrics::{Collector, Exposition, HistogramValue, Kind};

use crate::registry::Registry;

/// Kubernetes' buckets of `apiserver_request_duration_seconds`.
pub const DURATION_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0,
];

/// How long a scrape waits for the collectors (each keeps its own, shorter
/// deadlines per VM or volume).
const COLLECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Subresources counted by name; any other is counted as `other`.
const SUBRESOURCES: &[&str] = &[
    "status",
    "scale",
    "finalize",
    "console",
    "vnc",
    "log",
    "guestosinfo",
    "start",
    "stop",
    "restart",
    "pause",
    "unpause",
    "softreboot",
    "migrate",
    "addvolume",
    "removevolume",
    "upload",
    "download",
    "files",
    "createvm",
];

/// What a request is, as the request metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestInfo {
    /// `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `APPLY`, `DELETE`,
    /// `DELETECOLLECTION`, `CONNECT`, or the method of a non-resource URL.
    pub verb: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    /// `cluster`, `namespace`, `resource`; empty for non-resource URLs.
    pub scope: &'static str,
}

impl RequestInfo {
    /// Watches and connects: counted, not timed.
    pub fn long_running(&self) -> bool {
        matches!(self.verb, "WATCH" | "CONNECT")
    }

    fn read_only(&self) -> bool {
        matches!(self.verb, "GET" | "LIST" | "WATCH" | "HEAD" | "OPTIONS")
    }

    fn labels(&self) -> [(&'static str, &'static str); 7] {
        [
            ("verb", self.verb),
            ("group", self.group),
            ("version", self.version),
            ("resource", self.resource),
            ("subresource", self.subresource),
            ("scope", self.scope),
            ("component", "apiserver"),
        ]
    }
}

fn method_verb(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn truthy(query: Option<&str>, key: &str) -> bool {
    query.is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == key && (v == "true" || v == "1")))
}

/// Classifies a request by Kubernetes' URL layout; only what `reg` serves
/// (and the VM subresources) is named.
pub fn classify(reg: &Registry, method: &Method, uri: &http::Uri, content_type: Option<&str>) -> RequestInfo {
    let verb = method_verb(method);
    let non_resource = RequestInfo { verb, group: "", version: "", resource: "", subresource: "", scope: "" };
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return non_resource,
    };
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    // The subresources group serves VMs' and VMIs' actions.
    let lookup = |plural: &str| {
        if group == crate::subresources::GROUP {
            reg.find("kubevirt.io", version, plural)
                .map(|rt| (crate::subresources::GROUP, rt.version, rt.plural, rt.namespaced))
        } else {
            reg.find(group, version, plural).map(|rt| (rt.group, rt.version, rt.plural, rt.namespaced))
        }
    };
    let namespaced = |p: &str| lookup(p).is_some_and(|(.., ns)| ns);
    let (plural, namespace, name, sub) = match rest {
        ["namespaces", _, plural, tail @ ..] if namespaced(plural) => match tail {
            [] => (*plural, true, false, None),
            [_] => (*plural, true, true, None),
            [_, sub] => (*plural, true, true, Some(*sub)),
            _ => return non_resource,
        },
        [plural] => (*plural, false, false, None),
        [plural, _] => (*plural, false, true, None),
        [plural, _, sub] => (*plural, false, true, Some(*sub)),
        _ => return non_resource,
    };
    let Some((group, version, resource, _)) = lookup(plural) else {
        // Not served: counted, without names a client could make up.
        return non_resource;
    };
    let subresource = sub.map(|s| SUBRESOURCES.iter().find(|k| **k == s).copied().unwrap_or("other")).unwrap_or("");
    let scope = if name {
        "resource"
    } else if namespace {
        "namespace"
    } else {
        "cluster"
    };
    let watching = watch_path || truthy(uri.query(), "watch");
    let apply = content_type.is_some_and(|c| c.starts_with("application/apply-patch"));
    let verb = match (method, name) {
        (&Method::GET, _) if matches!(subresource, "console" | "vnc") => "CONNECT",
        (&Method::GET, _) if watching => "WATCH",
        (&Method::GET, false) => "LIST",
        (&Method::PATCH, _) if apply => "APPLY",
        (&Method::DELETE, false) => "DELETECOLLECTION",
        _ => verb,
    };
    RequestInfo { verb, group, version, resource, subresource, scope }
}

/// Observations of one histogram series.
#[derive(Clone, Debug)]
struct Histogram {
    /// Per bucket of [`DURATION_BUCKETS`], then `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; DURATION_BUCKETS.len() + 1], sum: 0.0 }
    }
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = DURATION_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(DURATION_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
struct Series {
    /// Requests by HTTP status code.
    codes: HashMap<u16, u64>,
    duration: Option<Histogram>,
    /// Watches open now.
    open: i64,
}

/// The process's API request metrics and its other collectors.
#[derive(Default)]
struct Metrics {
    series: Mutex<HashMap<RequestInfo, Series>>,
    inflight_read_only: AtomicI64,
    inflight_mutating: AtomicI64,
    collectors: RwLock<Vec<Arc<dyn Collector>>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// Adds what `c` measures to every scrape of `/metrics` (the embedded node
/// agent).
pub fn add_collector(c: Arc<dyn Collector>) {
    if let Ok(mut cs) = METRICS.collectors.write() {
        cs.push(c);
    }
}

impl Metrics {
    fn with_series(&self, info: RequestInfo, f: impl FnOnce(&mut Series)) {
        if let Ok(mut s) = self.series.lock() {
            f(s.entry(info).or_default());
        }
    }

    fn inflight(&self, info: &RequestInfo) -> &AtomicI64 {
        if info.read_only() {
            &self.inflight_read_only
        } else {
            &self.inflight_mutating
        }
    }

    fn render_into(&self, out: &mut Exposition) {
        out.declare("apiserver_request_total", Kind::Counter, REQUEST_TOTAL_HELP);
        out.declare("apiserver_request_duration_seconds", Kind::Histogram, DURATION_HELP);
        let Ok(series) = self.series.lock() else { return };
        let mut keys: Vec<&RequestInfo> = series.keys().collect();
        keys.sort_by_key(|k| (k.group, k.resource, k.subresource, k.verb, k.scope, k.version));
        for info in keys {
            let Some(s) = series.get(info) else { continue };
            let labels = info.labels();
            let mut codes: Vec<_> = s.codes.iter().collect();
            codes.sort();
            for (code, n) in codes {
                let code = code.to_string();
                let mut l = labels.to_vec();
                l.push(("code", code.as_str()));
                out.counter("apiserver_request_total", REQUEST_TOTAL_HELP, &l, *n);
            }
            if let Some(h) = &s.duration {
                let v = HistogramValue { bounds: &DURATION_BUCKETS, counts: h.counts.clone(), sum: h.sum };
                out.histogram("apiserver_request_duration_seconds", DURATION_HELP, &labels, &v);
            }
            if info.verb == "WATCH" {
                out.gauge("apiserver_longrunning_requests", LONGRUNNING_HELP, &labels, s.open.max(0) as u64);
            }
        }
        drop(series);
        for (kind, n) in [("readOnly", &self.inflight_read_only), ("mutating", &self.inflight_mutating)] {
            out.gauge(
                "apiserver_current_inflight_requests",
                "Requests being served now, by kind (watches and connects not included).",
                &[("request_kind", kind)],
                n.load(Ordering::Relaxed).max(0) as u64,
            );
        }
    }
}

const REQUEST_TOTAL_HELP: &str =
    "API requests by verb, group, version, resource, subresource, scope and HTTP response code.";
const DURATION_HELP: &str = "Response latency of API requests in seconds (watches and connects are not timed).";
const LONGRUNNING_HELP: &str = "Watches open now.";

/// A request being served: made by [`Measured::start`] in `dispatch`,
/// recorded by [`Measured::finish`]. Dropped without `finish` (the client
/// went away) it only leaves the in-flight count.
pub struct Measured {
    info: RequestInfo,
    started: Instant,
    counted_inflight: bool,
}

impl Measured {
    /// Classifies `req` and counts it in flight.
    pub fn start(reg: &Registry, req: &Request) -> Measured {
        let ct = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let info = classify(reg, req.method(), req.uri(), ct);
        let counted_inflight = !info.long_running();
        if counted_inflight {
            METRICS.inflight(&info).fetch_add(1, Ordering::Relaxed);
        }
        Measured { info, started: Instant::now(), counted_inflight }
    }

    /// Records the answer; a watch's body is wrapped so that it counts as
    /// open until it ends.
    pub fn finish(self, resp: Response) -> Response {
        let code = resp.status().as_u16();
        let info = self.info;
        let seconds = self.started.elapsed().as_secs_f64();
        let watching = info.verb == "WATCH" && resp.status().is_success();
        METRICS.with_series(info, |s| {
            *s.codes.entry(code).or_default() += 1;
            if !info.long_running() {
                s.duration.get_or_insert_with(Histogram::default).observe(seconds);
            }
            if watching {
                s.open += 1;
            }
        });
        if !watching {
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let open = OpenWatch(info);
        let stream = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
            let _ = &open;
            chunk
        });
        Response::from_parts(parts, Body::from_stream(stream))
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if self.counted_inflight {
            METRICS.inflight(&self.info).fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Held by a watch's body while it streams.
struct OpenWatch(RequestInfo);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        METRICS.with_series(self.0, |s| s.open -= 1);
    }
}

/// `process_*` metrics of this process, from `/proc/self`.
fn process_metrics(out: &mut Exposition) {
    // Linux reports times in USER_HZ, 100 on every architecture Sheaf runs on.
    const USER_HZ: f64 = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(u), Some(s)) = (field(11), field(12)) {
            out.counter(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                &[],
                (u + s) as f64 / USER_HZ,
            );
        }
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok())));
        if let (Some(start), Some(boot)) = (field(19), boot) {
            out.gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                &[],
                boot as f64 + start as f64 / USER_HZ,
            );
        }
    }
    if let Some(kib) = status_kib("/proc/self/status", "VmRSS:") {
        out.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", &[], kib * 1024);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.gauge("process_open_fds", "Number of open file descriptors.", &[], fds.count());
    }
}

/// A `kB` field of a `/proc/.../status` file.
fn status_kib(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn build_info(out: &mut Exposition) {
    out.gauge("sheaf_build_info", "Sheaf's version; always 1.", &[("version", env!("CARGO_PKG_VERSION"))], 1u64);
}

/// Asks `collectors` for what they measure, all at once, within
/// [`COLLECT_TIMEOUT`].
async fn collect(collectors: &[Arc<dyn Collector>], out: &mut Exposition) {
    let asks = collectors.iter().map(|c| c.collect());
    match tokio::time::timeout(COLLECT_TIMEOUT, futures::future::join_all(asks)).await {
        Ok(parts) => parts.into_iter().for_each(|p| out.merge(p)),
        Err(_) => tracing::warn!("metrics collectors did not answer within {COLLECT_TIMEOUT:?}; scraped without them"),
    }
}

fn text_response(body: String) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(sheaf_types::metrics::CONTENT_TYPE));
    resp
}

/// `GET /metrics` of the API server (behind its authentication and
/// authorization, as a non-resource URL).
pub async fn handler(method: Method) -> Response {
    let started = Instant::now();
    let info =
        RequestInfo { verb: method_verb(&method), group: "", version: "", resource: "", subresource: "", scope: "" };
    let resp = if method == Method::GET || method == Method::HEAD {
        let collectors = METRICS.collectors.read().map(|c| c.clone()).unwrap_or_default();
        let mut out = Exposition::new();
        build_info(&mut out);
        METRICS.render_into(&mut out);
        process_metrics(&mut out);
        collect(&collectors, &mut out).await;
        text_response(out.render())
    } else {
        crate::ApiError::method_not_allowed(format!("{method} is not allowed on /metrics; use GET")).into_response()
    };
    let code = resp.status().as_u16();
    METRICS.with_series(info, |s| {
        *s.codes.entry(code).or_default() += 1;
        s.duration.get_or_insert_with(Histogram::default).observe(started.elapsed().as_secs_f64());
    });
    resp
}

/// Serves `collectors` (and this process's `process_*` metrics) at
/// `/metrics` over plain HTTP on `listener`: `sheaf agent
/// --metrics-address`, on loopback only (the caller checks).
pub async fn serve_plain(
    listener: tokio::net::TcpListener,
    collectors: Vec<Arc<dyn Collector>>,
) -> std::io::Result<()> {
    let collectors = Arc::new(collectors);
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let collectors = collectors.clone();
                async move {
                    let mut out = Exposition::new();
                    build_info(&mut out);
                    process_metrics(&mut out);
                    collect(&collectors, &mut out).await;
                    text_response(out.render())
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        Registry::new(sheaf_types::registry::all())
    }

    fn info(method: Method, uri: &str, ct: Option<&str>) -> RequestInfo {
        classify(&reg(), &method, &uri.parse().expect("uri"), ct)
    }

    #[test]
    fn requests_are_classified_as_kubernetes_does() {
        let i = info(Method::GET, "/api/v1/namespaces/default/configmaps", None);
        assert_eq!((i.verb, i.group, i.version, i.resource, i.scope), ("LIST", "", "v1", "configmaps", "namespace"));
        let i = info(Method::GET, "/api/v1/namespaces/default/configmaps/x", None);
        assert_eq!((i.verb, i.scope), ("GET", "resource"));
        let i = info(Method::GET, "/api/v1/configmaps?watch=true", None);
        assert_eq!((i.verb, i.scope), ("WATCH", "cluster"));
        assert!(i.long_running());
        let i = info(Method::GET, "/apis/kubevirt.io/v1/watch/namespaces/a/virtualmachines", None);
        assert_eq!((i.verb, i.group, i.resource), ("WATCH", "kubevirt.io", "virtualmachines"));
        let i = info(Method::GET, "/api/v1/namespaces/default", None);
        assert_eq!((i.verb, i.resource, i.scope), ("GET", "namespaces", "resource"));
        let i = info(Method::PUT, "/api/v1/namespaces/default/status", None);
        assert_eq!((i.verb, i.resource, i.subresource), ("PUT", "namespaces", "status"));
        let i = info(Method::PATCH, "/api/v1/namespaces/default/configmaps/x", Some("application/apply-patch+yaml"));
        assert_eq!(i.verb, "APPLY");
        let i = info(Method::PATCH, "/api/v1/namespaces/default/configmaps/x", Some("application/merge-patch+json"));
        assert_eq!(i.verb, "PATCH");
        let i = info(Method::DELETE, "/api/v1/namespaces/default/configmaps", None);
        assert_eq!(i.verb, "DELETECOLLECTION");
        let i = info(Method::POST, "/api/v1/namespaces/default/configmaps", None);
        assert_eq!((i.verb, i.scope), ("POST", "namespace"));
        assert!(!i.read_only());
        let vm = "/apis/subresources.kubevirt.io/v1/namespaces/a/virtualmachineinstances/vm1/console";
        let i = info(Method::GET, vm, None);
        assert_eq!(
            (i.verb, i.group, i.resource, i.subresource),
            ("CONNECT", "subresources.kubevirt.io", "virtualmachineinstances", "console")
        );
        assert!(i.long_running());
        let i = info(Method::PUT, "/apis/subresources.kubevirt.io/v1/namespaces/a/virtualmachines/vm1/start", None);
        assert_eq!((i.verb, i.subresource, i.scope), ("PUT", "start", "resource"));
        // Non-resource URLs.
        for p in ["/api", "/apis", "/apis/kubevirt.io/v1", "/openapi/v3", "/metrics"] {
            let i = info(Method::GET, p, None);
            assert_eq!((i.verb, i.resource, i.scope), ("GET", "", ""), "{p}");
        }
    }

    #[test]
    fn made_up_names_do_not_become_labels() {
        let i = info(Method::GET, "/apis/made.up/v1/things/x", None);
        assert_eq!((i.group, i.version, i.resource, i.subresource), ("", "", "", ""));
        let i = info(Method::GET, "/api/v1/namespaces/default/configmaps/x/whatever-you-like", None);
        assert_eq!((i.resource, i.subresource), ("configmaps", "other"));
        let i = info(Method::from_bytes(b"BREW").expect("method"), "/api/v1/configmaps", None);
        assert_eq!(i.verb, "OTHER");
    }

    #[test]
    fn histogram_buckets() {
        let mut h = Histogram::default();
        for s in [0.001, 0.005, 0.0051, 0.9, 60.0, 61.0, 1e9] {
            h.observe(s);
        }
        // le=0.005 holds 0.001 and 0.005 (bounds are inclusive).
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[1], 1, "0.0051 is in le=0.025");
        let one = DURATION_BUCKETS.iter().position(|b| *b == 1.0).expect("1 s bucket");
        assert_eq!(h.counts[one], 1);
        assert_eq!(h.counts[DURATION_BUCKETS.len() - 1], 1, "60 s is in le=60");
        assert_eq!(h.counts[DURATION_BUCKETS.len()], 2, "beyond 60 s: +Inf");
        assert_eq!(h.counts.iter().sum::<u64>(), 7);
        let mut out = Exposition::new();
        let v = HistogramValue { bounds: &DURATION_BUCKETS, counts: h.counts.clone(), sum: h.sum };
        out.histogram("d_seconds", "D.", &[], &v);
        let text = out.render();
        assert!(text.contains("d_seconds_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"60\"} 5\n"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"+Inf\"} 7\n"), "{text}");
        assert!(text.contains("d_seconds_count 7\n"), "{text}");
    }

    struct Fixed;

    impl Collector for Fixed {
        fn collect(&self) -> sheaf_types::metrics::BoxFuture<'_, Exposition> {
            Box::pin(async {
                let mut e = Exposition::new();
                e.gauge("fixed_value", "F.", &[("k", "a\"b")], 7u64);
                e
            })
        }
    }

    #[tokio::test]
    async fn the_plain_listener_serves_its_collectors() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_plain(listener, vec![Arc::new(Fixed)]));
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("content-type: text/plain; version=0.0.4; charset=utf-8"), "{answer}");
        assert!(answer.contains("\nfixed_value{k=\"a\\\"b\"} 7\n"), "{answer}");
        assert!(answer.contains("\nprocess_resident_memory_bytes "), "{answer}");
        assert!(answer.contains("sheaf_build_info{version="), "{answer}");
        assert!(!answer.contains("apiserver_request_total"), "the agent's listener has no API metrics");
    }

    #[tokio::test]
    async fn requests_are_counted_and_timed_but_watches_only_counted() {
        let reg = reg();
        let req = |m: Method, uri: &str| Request::builder().method(m).uri(uri).body(Body::empty()).expect("request");
        let get = req(Method::GET, "/apis/sheaf.io/v1alpha1/namespaces/metrics-test/volumes/v");
        let m = Measured::start(&reg, &get);
        let _ = m.finish(StatusCode::NOT_FOUND.into_response());
        let watch = req(Method::GET, "/apis/storage.k8s.io/v1/storageclasses?watch=1");
        let m = Measured::start(&reg, &watch);
        let resp = m.finish((StatusCode::OK, "stream").into_response());
        let mut out = Exposition::new();
        METRICS.render_into(&mut out);
        let text = out.render();
        let get_line = "apiserver_request_total{verb=\"GET\",group=\"sheaf.io\",version=\"v1alpha1\",\
                        resource=\"volumes\",subresource=\"\",scope=\"resource\",component=\"apiserver\",code=\"404\"}";
        assert!(text.contains(get_line), "{text}");
        assert!(text.contains("apiserver_request_duration_seconds_count{verb=\"GET\",group=\"sheaf.io\""), "{text}");
        assert!(text.contains("verb=\"WATCH\",group=\"storage.k8s.io\""), "{text}");
        assert!(!text.contains("apiserver_request_duration_seconds_count{verb=\"WATCH\""), "{text}");
        let open = "apiserver_longrunning_requests{verb=\"WATCH\",group=\"storage.k8s.io\",version=\"v1\",\
                    resource=\"storageclasses\",subresource=\"\",scope=\"cluster\",component=\"apiserver\"}";
        assert!(text.contains(&format!("{open} 1\n")), "{text}");
        drop(resp);
        let mut out = Exposition::new();
        METRICS.render_into(&mut out);
        assert!(out.render().contains(&format!("{open} 0\n")), "the watch ended");
    }
}
