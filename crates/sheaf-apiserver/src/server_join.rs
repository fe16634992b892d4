//! `POST /sheaf/v1/join-server`: how a further server joins an HA control
//! plane ([`sheaf_types::join::SERVER_JOIN_PATH`]).
//!
//! ```text
//!  joining server                        a running server (etcd store)
//!  GET /cacerts, check the token's hash ─▶
//!  POST join-server {name, peerURL}     ─▶ bearer == node secret?  (else 401)
//!                                          etcd member add as a learner (≤ 3 members)
//!                    ◀─ CA cert + key, admin token, node secret, etcd members
//!  start etcd --initial-cluster-state=existing
//!  POST promote-server {name, peerURL}  ─▶ etcd member promote (503 until in sync)
//!  serve the API
//! ```
//!
//! Only the node secret of the join token opens this endpoint (the admin
//! token does not: nothing but a joining server needs it); the answer holds
//! the cluster's secrets, so it is only ever sent over the TLS connection
//! the joiner verified with the token's CA hash. A server without an etcd
//! member of its own (SQLite, external etcd) answers 400.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use sheaf_store::etcd_members::{self, MemberError};
use sheaf_types::join::{
    EtcdMember, ServerJoinRequest, ServerJoinResponse, MAX_SERVERS, SERVER_JOIN_PATH, SERVER_PROMOTE_PATH,
};

use crate::error::ApiError;

/// What the endpoint hands out, and where it adds members.
pub struct ServerJoin {
    node_token: [u8; 32],
    /// The answer without its members.
    secrets: ServerJoinResponse,
    /// This server's etcd client URLs; None on the SQLite store.
    etcd_endpoints: Option<Vec<String>>,
}

impl ServerJoin {
    pub fn new(secrets: ServerJoinResponse, etcd_endpoints: Option<Vec<String>>) -> Arc<ServerJoin> {
        Arc::new(ServerJoin {
            node_token: Sha256::digest(secrets.node_token.as_bytes()).into(),
            secrets: ServerJoinResponse { members: Vec::new(), ..secrets },
            etcd_endpoints,
        })
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        else {
            return false;
        };
        let d: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Every byte is compared: no early exit on a prefix.
        self.node_token.iter().zip(d.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The route, to merge into the API's router.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().route(SERVER_JOIN_PATH, post(join)).route(SERVER_PROMOTE_PATH, post(promote)).with_state(self)
    }
}

fn check(req: &ServerJoinRequest) -> Result<(), String> {
    sheaf_types::validation::dns1123_label(&req.name).map_err(|e| format!("name {:?}: {e}", req.name))?;
    let url = req
        .peer_url
        .strip_prefix("https://")
        .ok_or_else(|| format!("peerURL {:?} must be https://IP:PORT (etcd peers use TLS)", req.peer_url))?;
    if url.is_empty() || url.contains('/') || url.contains(',') {
        return Err(format!("peerURL {:?} must be https://IP:PORT", req.peer_url));
    }
    Ok(())
}

/// The checked request and this server's etcd endpoints, or the answer
/// that refuses it.
fn admit<'a>(
    s: &'a ServerJoin,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(ServerJoinRequest, &'a [String]), ApiError> {
    if !s.authorized(headers) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "joining the control plane takes the join token's node secret (the first server's DATA_DIR/join.token)",
        ));
    }
    let req: ServerJoinRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the join request is not valid: {e}")))?;
    check(&req).map_err(ApiError::bad_request)?;
    let Some(endpoints) = &s.etcd_endpoints else {
        return Err(ApiError::bad_request(
            "this server does not run an etcd member of its own (it keeps its objects in SQLite, or in an \
             external etcd); only a control plane started with `sheaf server --cluster-init` takes further \
             servers. Join this machine as a node with `sheaf agent`",
        ));
    };
    Ok((req, endpoints))
}

fn member_error(e: MemberError) -> Response {
    match e {
        e @ (MemberError::Full { .. } | MemberError::NameTaken { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string()).into_response()
        }
        e @ (MemberError::Busy { .. } | MemberError::NotReady(_)) => {
            ApiError::unavailable(e.to_string()).into_response()
        }
        e @ MemberError::NotMember { .. } => ApiError::not_found_msg(e.to_string()).into_response(),
        MemberError::Store(e) => ApiError::unavailable(format!("cannot change the etcd members: {e}")).into_response(),
    }
}

fn json_ok(v: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

async fn join(State(s): State<Arc<ServerJoin>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let (req, endpoints) = match admit(&s, &headers, &body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match etcd_members::add_member(endpoints, &req.name, &req.peer_url, MAX_SERVERS).await {
        Ok(members) => {
            let members = members
                .into_iter()
                .filter_map(|m| m.peer_urls.first().cloned().map(|peer_url| EtcdMember { name: m.name, peer_url }))
                .collect();
            tracing::info!(name = %req.name, peer_url = %req.peer_url, "a server joins the control plane (learner)");
            json_ok(&ServerJoinResponse { members, ..s.secrets.clone() })
        }
        Err(e) => member_error(e),
    }
}

async fn promote(State(s): State<Arc<ServerJoin>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let (req, endpoints) = match admit(&s, &headers, &body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match etcd_members::promote(endpoints, &req.peer_url).await {
        Ok(()) => {
            tracing::info!(name = %req.name, peer_url = %req.peer_url, "the server's etcd member votes");
            json_ok(&serde_json::json!({}))
        }
        Err(e) => member_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        let ok = ServerJoinRequest { name: "s1".into(), peer_url: "https://10.0.0.2:2380".into() };
        assert!(check(&ok).is_ok());
        for (name, url) in [("S1", "https://10.0.0.2:2380"), ("s1", "http://10.0.0.2:2380"), ("s1", "https://a/b")] {
            let r = ServerJoinRequest { name: name.into(), peer_url: url.into() };
            assert!(check(&r).is_err(), "{name} {url}");
        }
        let j = ServerJoin::new(
            ServerJoinResponse {
                ca_crt: String::new(),
                ca_key: String::new(),
                admin_token: "admin".into(),
                node_token: "node".into(),
                etcd_prefix: "/sheaf".into(),
                members: Vec::new(),
            },
            None,
        );
        let mut h = HeaderMap::new();
        assert!(!j.authorized(&h));
        h.insert(http::header::AUTHORIZATION, "Bearer admin".parse().expect("header"));
        assert!(!j.authorized(&h), "the admin token does not open the join endpoint");
        h.insert(http::header::AUTHORIZATION, "Bearer node".parse().expect("header"));
        assert!(j.authorized(&h));
    }
}
