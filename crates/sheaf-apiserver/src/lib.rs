//! Sheaf's API server: the Kubernetes API conventions over Sheaf's store,
//! so that kubectl, client libraries and YAML manifests work unchanged.
//!
//! ```text
//!  HTTPS ─▶ server (auth, routing, body decoding)
//!             ├─ discovery, openapi      what is served, and its schemas
//!             ├─ objects                 create/get/list/update/patch/delete
//!             │    ├─ protection         refuses deleting a Volume or claim a VM uses
//!             │    ├─ templates          VMs from template versions (createvm); the default version kept
//!             │    ├─ vm_claims          the claims that go with a deleted VM
//!             │    ├─ claim_resize       claims grow only when their class allows
//!             │    └─ patch              merge, JSON, strategic, apply
//!             ├─ watch                   event streams with resume
//!             └─ table                   kubectl's server-side printing
//!  gc: garbage collector and namespace finalizer (background task)
//!  server_join: further servers of an HA control plane join (etcd members, shared secrets)
//! ```

pub mod audit;
pub mod authz;
pub mod backup_files;
pub mod claim_resize;
pub mod console;
pub mod discovery;
pub mod error;
pub mod gc;
pub mod hotplug;
pub mod image_transfer;
pub mod local_api;
pub mod metrics;
pub mod networks;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod protection;
pub mod protobuf;
pub mod quota;
pub mod registry;
pub mod reviews;
pub mod selector;
pub mod serial_log;
pub mod server;
pub mod server_join;
pub mod subresources;
pub mod table;
pub mod templates;
pub mod ui;
pub mod vm_claims;
pub mod vm_clone;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use error::{ApiError, ApiResult};
pub use server::ApiServer;

/// Serves `app` over TLS on `listener` until the task is dropped.
pub async fn serve_tls(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: axum::Router) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // The peer's address, for the audit log.
            let app = tower::ServiceBuilder::new()
                .map_request(move |mut r: http::Request<hyper::body::Incoming>| {
                    r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                    r
                })
                .service(app);
            let service = TowerToHyperService::new(app);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Creates the objects every cluster has: the `default`, `kube-system`
/// (where the servers' leader election Lease lives), `kube-node-lease`
/// (the nodes' heartbeat Leases) and `sheaf-system` namespaces and the
/// default StorageClass `sheaf`.
pub async fn bootstrap(server: &ApiServer) -> ApiResult<()> {
    let Some(rt) = server.registry.find("", "v1", "namespaces").cloned() else {
        return Ok(());
    };
    for ns in ["default", "kube-system", "kube-node-lease", "sheaf-system"] {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match server.objects.create(&rt, None, body, &Default::default()).await {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    // The default StorageClass, unless one of that name exists (a user's
    // change to it is kept).
    if let Some(sc) = server.registry.find("storage.k8s.io", "v1", "storageclasses").cloned() {
        let mut body = serde_json::to_value(sheaf_types::claim::default_class()).unwrap_or_default();
        body["apiVersion"] = "storage.k8s.io/v1".into();
        body["kind"] = "StorageClass".into();
        match server.objects.create(&sc, None, body, &Default::default()).await {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    // The built-in roles, rewritten at every start (as Kubernetes
    // reconciles its `autoupdate` roles).
    if let Some(cr) = server.registry.find(sheaf_types::rbac::GROUP, "v1", "clusterroles").cloned() {
        for role in sheaf_types::rbac::builtin_cluster_roles() {
            let mut body = serde_json::to_value(&role).unwrap_or_default();
            body["apiVersion"] = format!("{}/v1", sheaf_types::rbac::GROUP).into();
            body["kind"] = "ClusterRole".into();
            let name = role.metadata.name.clone().unwrap_or_default();
            match server.objects.create(&cr, None, body.clone(), &Default::default()).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {
                    let current = server.objects.get(&cr, None, &name).await?;
                    if current.get("rules") != body.get("rules") {
                        let mut next = current;
                        next["rules"] = body["rules"].clone();
                        server.objects.update(&cr, None, &name, next, false, &Default::default()).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    // The built-in cluster network.
    if let Some(cn) = server.registry.find(sheaf_types::network::GROUP, "v1beta1", "clusternetworks").cloned() {
        match server.objects.create(&cn, None, networks::mgmt_cluster_network(), &Default::default()).await {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
