//! The web UI: the single-page app built from `ui/` (`scripts/build-ui.sh`,
//! into `ui/dist`) and compiled into the binary, served at `/` over the
//! API's own TLS. Nothing is fetched from elsewhere at run time.
//!
//! - `/` and `/index.html`: the app's page (never cached: it names the
//!   current assets).
//! - `/assets/...`: its scripts, styles and fonts, named by their content's
//!   hash, so cached for a year.
//! - The page itself needs no login: it holds no data. It asks for a token
//!   and sends it as `Authorization: Bearer` on every API request, and as
//!   a WebSocket subprotocol for consoles (see
//!   [`crate::server::bearer_from_protocols`]).
//!
//! Each file is kept as built and, when the build made one, gzip-compressed
//! (`.gz` beside it); a client that accepts gzip gets the compressed copy.
//! A binary built without `ui/dist` serves a page that says how to build
//! the UI.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One built file: its path under `/`, its bytes, and its gzip copy.
struct Asset {
    path: &'static str,
    body: &'static [u8],
    gzip: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; worker-src 'self' blob:; object-src 'none'; frame-ancestors 'none'; \
                   base-uri 'self'; form-action 'self'";

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    accepts(headers, "gzip")
}

/// Whether the request's `Accept-Encoding` takes `coding` (by name or `*`,
/// and not with `q=0`).
pub fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |e| {
            let mut parts = e.trim().split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (name.eq_ignore_ascii_case(coding) || name == "*") && !refused
        },
    )
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.path == path) else {
        return (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "not found")
            .into_response();
    };
    let gzip = a.gzip.filter(|_| accepts_gzip(headers));
    let mut resp = gzip.unwrap_or(a.body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(a.path)));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip.is_some() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let cache = if a.path.starts_with("/assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    resp
}

/// `GET /`: the app.
pub async fn index(headers: HeaderMap) -> Response {
    serve("/index.html", &headers)
}

/// `GET /assets/*path`.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&format!("/assets/{path}"), &headers)
}

/// `GET /NAME` for the few files at the top of the build (icons).
pub async fn top_file(path: &'static str, headers: HeaderMap) -> Response {
    serve(path, &headers)
}

/// The files at the top of the build, but for the page itself.
pub fn top_files() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.path).filter(|p| p.matches('/').count() == 1 && *p != "/index.html")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(accept).expect("header"));
        h
    }

    #[test]
    fn gzip_is_sent_only_when_accepted() {
        assert!(accepts_gzip(&headers("gzip, deflate, br")));
        assert!(accepts_gzip(&headers("br;q=1.0, gzip;q=0.8")));
        assert!(!accepts_gzip(&headers("gzip;q=0")));
        assert!(!accepts_gzip(&headers("br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert!(accepts(&headers("gzip, deflate, br, zstd"), "zstd"));
        assert!(!accepts(&headers("gzip"), "zstd"));
    }

    #[test]
    fn the_page_is_served_with_its_headers() {
        let r = serve("/index.html", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        assert_eq!(serve("/assets/none.js", &HeaderMap::new()).status(), StatusCode::NOT_FOUND);
        assert_eq!(content_type("/assets/index-abc.js"), "text/javascript; charset=utf-8");
    }
}
