//! How `sheaf server` gets its store in an HA control plane (see
//! `docs/design/ha.md`):
//!
//! - `--cluster-init`: this server starts a new etcd cluster of one member
//!   ([`crate::managed_etcd`]) and keeps its objects there;
//! - `--server URL --token JOIN-TOKEN`: this server joins the control plane
//!   of the server at URL: it checks the cluster CA against the token's
//!   hash, asks that server (`POST /sheaf/v1/join-server`, authorized by
//!   the token's node secret) to add its etcd member as a learner,
//!   receives the cluster's shared secrets and the member list, starts its
//!   member with `--initial-cluster-state=existing`, and asks
//!   (`POST /sheaf/v1/promote-server`) until its member is a voter;
//! - otherwise the store is SQLite, or an external etcd (`--store etcd`).
//!
//! A server that joined once finds its member in `DATA_DIR/etcd` when it
//! restarts and just starts it again; with `--server` it only asks for its
//! promotion again, in the background (answered at once when it votes).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use sheaf_store::etcd::EtcdStore;
use sheaf_store::Store;
use sheaf_types::join::{ServerJoinRequest, ServerJoinResponse, SERVER_JOIN_PATH, SERVER_PROMOTE_PATH};

use crate::managed_etcd::{Bootstrap, EtcdConfig, ManagedEtcd};

/// Whether `DATA_DIR/etcd` already holds a member (etcd then ignores every
/// bootstrap flag and starts as it was).
pub fn has_member(etcd_dir: &Path) -> bool {
    etcd_dir.join("member").is_dir()
}

/// Asks one of `servers` to add this server's etcd member; returns the
/// shared secrets and the members. Retries while no server can be reached
/// or another server is still joining; fails at once on a refusal.
pub async fn join(servers: &[String], join_token: &str, req: &ServerJoinRequest) -> anyhow::Result<ServerJoinResponse> {
    let token = sheaf_types::join::parse(join_token).ok_or_else(|| {
        anyhow!("--token must be the join token (SHEAF1::..., the first server's DATA_DIR/join.token)")
    })?;
    let mut warned = false;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut last = String::new();
        for server in servers {
            match join_one(server, &token, req).await {
                Ok(resp) => return Ok(resp),
                Err(JoinError::Refused(m)) => bail!("{server} refused to add this server to the control plane: {m}"),
                Err(JoinError::Retry(m)) => last = format!("{server}: {m}"),
            }
        }
        if Instant::now() > deadline {
            bail!("cannot join the control plane: {last}");
        }
        if !warned {
            tracing::warn!(error = %last, "cannot join the control plane yet; retrying every 2 s");
            warned = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

enum JoinError {
    Retry(String),
    Refused(String),
}

async fn join_one(
    server: &str,
    token: &sheaf_types::join::JoinToken,
    req: &ServerJoinRequest,
) -> Result<ServerJoinResponse, JoinError> {
    let body = post(server, token, SERVER_JOIN_PATH, req).await?;
    serde_json::from_slice(&body).map_err(|e| JoinError::Refused(format!("its answer is not valid: {e}")))
}

/// POSTs `req` to `path` of `server`, over TLS verified against the CA the
/// token names, with the token's node secret; the 200 answer's body.
async fn post(
    server: &str,
    token: &sheaf_types::join::JoinToken,
    path: &str,
    req: &ServerJoinRequest,
) -> Result<bytes::Bytes, JoinError> {
    let server = server.trim_end_matches('/');
    // The CA is trusted because its hash is the token's.
    // (fetch_ca waits for an unreachable server: bounded, so that the
    // next server is tried.)
    let ca = match tokio::time::timeout(Duration::from_secs(15), crate::agent::fetch_ca(server, &token.ca_hash)).await {
        Ok(Ok(ca)) => ca,
        Ok(Err(e)) => return Err(JoinError::Refused(format!("{e:#}"))),
        Err(_) => return Err(JoinError::Retry(format!("{server} cannot be reached"))),
    };
    let cert = reqwest::Certificate::from_pem(&ca).map_err(|e| JoinError::Refused(format!("the cluster CA: {e}")))?;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| JoinError::Refused(format!("cannot make an HTTPS client: {e}")))?;
    let resp = http
        .post(format!("{server}{path}"))
        .bearer_auth(&token.secret)
        .json(req)
        .send()
        .await
        .map_err(|e| JoinError::Retry(sheaf_client::remote::cause_chain(&e)))?;
    let code = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| JoinError::Retry(e.to_string()))?;
    if code == 200 {
        return Ok(body);
    }
    let error = sheaf_client::remote::status_error(code, &body);
    if code == 503 {
        Err(JoinError::Retry(error.message))
    } else {
        Err(JoinError::Refused(error.message))
    }
}

/// Asks one of `servers`, again and again, to make this server's etcd
/// member (a learner since it joined) a voter; returns once it is one.
/// Idempotent: a member that votes already is answered at once.
pub async fn promote(servers: Vec<String>, join_token: String, req: ServerJoinRequest) {
    let Some(token) = sheaf_types::join::parse(&join_token) else { return };
    let mut last = String::new();
    let started = Instant::now();
    let mut next_warning = Duration::from_secs(30);
    loop {
        for server in &servers {
            match post(server, &token, SERVER_PROMOTE_PATH, &req).await {
                Ok(_) => {
                    tracing::info!(member = %req.name, "this server's etcd member votes");
                    return;
                }
                Err(JoinError::Refused(m)) => {
                    tracing::error!(error = %m, %server, "cannot make this server's etcd member a voter");
                    return;
                }
                Err(JoinError::Retry(m)) => last = format!("{server}: {m}"),
            }
        }
        if started.elapsed() > next_warning {
            tracing::warn!(error = %last, "this server's etcd member is not a voter yet; retrying");
            next_warning += Duration::from_secs(60);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The etcd key prefix of this server's control plane, kept in
/// `DATA_DIR/etcd.prefix` so that later starts need no `--etcd-prefix`:
/// the one `received` in the join answer, else the file's, else `flag`
/// (a first `--cluster-init`); written to the file in the first and last
/// case.
pub fn keep_prefix(data_dir: &Path, flag: &str, received: Option<&str>) -> String {
    let path = data_dir.join("etcd.prefix");
    let prefix = match received {
        Some(p) => p.to_string(),
        None => match std::fs::read_to_string(&path).map(|p| p.trim().to_string()) {
            Ok(p) if !p.is_empty() => return p,
            _ => flag.to_string(),
        },
    };
    if let Err(e) = std::fs::write(&path, &prefix) {
        tracing::warn!(error = %e, path = %path.display(), "cannot keep the etcd key prefix");
    }
    prefix
}

/// Writes the secrets a joining server received.
pub fn install_secrets(data_dir: &Path, resp: &ServerJoinResponse) -> anyhow::Result<()> {
    let s = sheaf_apiserver::pki::SharedSecrets {
        ca_pem: &resp.ca_crt,
        ca_key_pem: &resp.ca_key,
        admin_token: &resp.admin_token,
        node_token: &resp.node_token,
    };
    sheaf_apiserver::pki::install_shared(data_dir, &s).context("cannot write the cluster's secrets")
}

/// Checks what this server's etcd member needs before anything is changed
/// (before a joining server's member is added to the cluster: a member that
/// was added and then cannot start costs the cluster its quorum until it is
/// removed): the etcd binary runs, the client port on 127.0.0.1 is free,
/// and the peer port can be bound on `node_ip`.
pub async fn preflight(binary: &Path, client_port: u16, node_ip: IpAddr, peer_port: u16) -> anyhow::Result<()> {
    let version = std::process::Command::new(binary).arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {}
        Ok(out) => bail!("{} --version failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => {
            bail!("cannot run etcd ({}: {e}): install Debian's etcd-server, or pass --etcd-binary", binary.display())
        }
    }
    let client_addr = SocketAddr::from(([127, 0, 0, 1], client_port));
    let peer_addr = SocketAddr::new(node_ip, peer_port);
    // A member of this server's previous run (killed with it) may still
    // be going away: give it a moment.
    let mut tries = 0;
    loop {
        let client_busy = std::net::TcpStream::connect_timeout(&client_addr, Duration::from_millis(500)).is_ok();
        let peer = std::net::TcpListener::bind(peer_addr).map(drop);
        let peer_busy = matches!(&peer, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse);
        if !client_busy && !peer_busy {
            return peer.with_context(|| {
                format!("cannot listen on {peer_addr} for the etcd member's peers: is {node_ip} an address of this machine (--node-ip)?")
            });
        }
        tries += 1;
        if tries > 6 {
            let busy = if client_busy { client_addr } else { peer_addr };
            bail!(
                "{busy} is in use, and this server's etcd member needs it (a system etcd? Debian's etcd-server \
                 package starts one: `systemctl disable --now etcd`), or pass --etcd-client-port/--etcd-peer-port"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts the etcd member and connects the store to it once it answers
/// (waiting as long as it takes: after a restart of the whole control
/// plane, the member has no quorum until enough of the others are back).
pub async fn start_store(cfg: EtcdConfig, prefix: &str) -> anyhow::Result<(ManagedEtcd, Arc<dyn Store>)> {
    let bootstrap = cfg.bootstrap.clone();
    let peer_url = cfg.peer_url();
    let etcd =
        ManagedEtcd::start(cfg).context("cannot start etcd (install Debian's etcd-server, or pass --etcd-binary)")?;
    let endpoints = vec![etcd.config().client_url()];
    let started = Instant::now();
    let mut next_warning = Duration::from_secs(10);
    loop {
        let attempt = async {
            let store = EtcdStore::connect(&endpoints, prefix).await?;
            store.revision().await?;
            Ok::<_, sheaf_store::StoreError>(store)
        };
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Ok(store)) => {
                // The etcd on the client port must be this server's member,
                // not another process that took the port meanwhile.
                let members = sheaf_store::etcd_members::list(&endpoints).await?;
                if !members.iter().any(|m| m.peer_urls.contains(&peer_url)) {
                    bail!(
                        "the etcd at {} is not this server's member (none of its members is at {peer_url}): \
                         another etcd uses the port; stop it or pass --etcd-client-port",
                        endpoints[0]
                    );
                }
                tracing::info!(member = %etcd.config().name, ?bootstrap, "the etcd member serves the store");
                return Ok((etcd, Arc::new(store)));
            }
            Ok(Err(e)) if started.elapsed() > next_warning => {
                tracing::warn!(error = %e, log = %etcd.config().log.display(), "etcd does not answer yet; waiting");
                next_warning += Duration::from_secs(30);
            }
            Err(_) if started.elapsed() > next_warning => {
                tracing::warn!(log = %etcd.config().log.display(), "etcd does not answer yet; waiting");
                next_warning += Duration::from_secs(30);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `--initial-cluster` for a member that joined (from the join answer), or
/// a placeholder when its data directory already holds the member.
pub fn bootstrap_of(resp: Option<&ServerJoinResponse>, name: &str, peer_url: &str) -> Bootstrap {
    match resp {
        Some(r) => Bootstrap::Existing(sheaf_types::join::initial_cluster(&r.members)),
        None => Bootstrap::Existing(format!("{name}={peer_url}")),
    }
}

/// How often a server renews the Lease that names its URL.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);

/// Keeps the Lease `kube-system/sheaf-apiserver-<name>` that tells clients
/// this server's URL (`sheaf.io/url`), renewed every 10 s; forever.
pub async fn announce(api: Arc<dyn sheaf_client::Api>, name: String, url: String) {
    use sheaf_types::coordination::{Lease, LeaseSpec, MicroTime};
    use sheaf_types::join::{SERVER_LEASE_LABEL, SERVER_LEASE_NAMESPACE, SERVER_LEASE_PREFIX, SERVER_URL_ANNOTATION};
    let leases = sheaf_client::Typed::<Lease>::new(&*api);
    let lease_name = format!("{SERVER_LEASE_PREFIX}{name}");
    let mut warned = false;
    loop {
        let result = async {
            let mut lease = leases.get(Some(SERVER_LEASE_NAMESPACE), &lease_name).await?.unwrap_or_else(|| Lease {
                metadata: sheaf_types::ObjectMeta {
                    name: Some(lease_name.clone()),
                    namespace: Some(SERVER_LEASE_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: LeaseSpec::default(),
            });
            lease.metadata.labels.insert(SERVER_LEASE_LABEL.into(), "true".into());
            lease.metadata.annotations.insert(SERVER_URL_ANNOTATION.into(), url.clone());
            lease.spec.holder_identity = Some(name.clone());
            lease.spec.lease_duration_seconds = Some(3 * ANNOUNCE_EVERY.as_secs() as i32);
            lease.spec.renew_time = Some(MicroTime::now());
            if lease.metadata.resource_version.is_some() {
                leases.update(&lease).await.map(drop)
            } else {
                lease.spec.acquire_time = lease.spec.renew_time;
                leases.create(&lease).await.map(drop)
            }
        };
        match result.await {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                tracing::warn!(error = %e, "cannot renew this server's Lease (clients learn servers from it)");
                warned = true;
            }
            Err(e) => tracing::debug!(error = %e, "cannot renew this server's Lease"),
        }
        tokio::time::sleep(ANNOUNCE_EVERY).await;
    }
}
