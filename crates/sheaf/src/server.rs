//! `sheaf server`: the API server on the embedded SQLite store (default)
//! or on etcd, with its background controllers.
//!
//! Stores: SQLite in `DATA_DIR/state.db` (default, one server); an external
//! etcd (`--store etcd --etcd-endpoints ...`); or, for an HA control plane,
//! an etcd member this server runs itself ([`crate::control_plane`]):
//! `--cluster-init` on the first server, `--server URL --token JOIN-TOKEN`
//! on the two others. On etcd the servers elect the one that runs the
//! controllers, the garbage collector and the compactor
//! ([`crate::leader`]); on SQLite the one server always does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::fs::PermissionsExt as _;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use sheaf_apiserver::authz::UserInfo;
use sheaf_apiserver::console::{Channel, NodeDialer};
use sheaf_apiserver::image_transfer::{ImageTransfer, TransferError};
use sheaf_apiserver::server_join::ServerJoin;
use sheaf_apiserver::{gc::GarbageCollector, local_api::LocalApi, pki, registry::Registry, ApiServer};
use sheaf_store::{etcd::EtcdStore, sqlite::SqliteStore, Store};
use sheaf_types::join::ServerJoinResponse;

use crate::agent::AgentFlags;
use crate::{control_plane, leader};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Embedded SQLite database in the data directory (single node).
    Sqlite,
    /// An etcd cluster (HA control plane).
    Etcd,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where the server keeps its state (certificates, token, database).
    #[arg(long, env = "SHEAF_DATA_DIR", default_value = "/var/lib/sheaf")]
    pub data_dir: PathBuf,
    /// Address and port of the HTTPS API.
    #[arg(long, env = "SHEAF_LISTEN", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Where objects are stored.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub store: StoreKind,
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, default_value = "/sheaf")]
    pub etcd_prefix: String,
    /// Extra DNS names or IP addresses for the server certificate.
    #[arg(long = "tls-san", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Keep this much store history for watches to resume from.
    #[arg(long, default_value = "300")]
    pub history_seconds: u64,
    /// How long a node's agent may stay silent before the node is marked
    /// Unknown and its VMs are started again on other nodes (`30s`, `1m`).
    #[arg(long, default_value = "30s", value_parser = parse_grace)]
    pub node_grace: Duration,
    /// How long a deleted volume's snapshots stay in the trash, from
    /// which they can be cloned out, before they are purged (`7d`, `12h`,
    /// `30m`; `0s` purges at once).
    #[arg(long, default_value = "7d", value_parser = parse_retention)]
    pub trash_retention: Duration,
    /// The audit log: one JSON line per mutating request (default
    /// DATA_DIR/audit.log; an empty value turns it off).
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    /// Rotate the audit log when it reaches this many MiB.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub audit_log_max_size: u64,
    /// How many rotated audit logs to keep (audit.log.1 … audit.log.N).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub audit_log_max_backups: u32,
    #[command(flatten)]
    pub log: crate::logs::LogArgs,
    /// Do not run the node agent in this process (control plane only).
    #[arg(long)]
    pub no_agent: bool,
    /// Start a new HA control plane: this server runs an etcd member of
    /// its own (data in DATA_DIR/etcd) and keeps its objects there; two
    /// more servers join it with --server and --token.
    #[arg(long, conflicts_with = "join_server")]
    pub cluster_init: bool,
    /// Join the HA control plane of this server (https://HOST:PORT of a
    /// server started with --cluster-init, or of one that joined it;
    /// comma-separated to try several), with --token.
    #[arg(long = "server", id = "join_server", value_name = "URL", value_delimiter = ',')]
    pub join_server: Vec<String>,
    /// The join token of the control plane (its first server's
    /// DATA_DIR/join.token), with --server.
    #[arg(long, env = "SHEAF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The address other machines reach this server at: the Node's
    /// InternalIP, and the etcd member's peer address in an HA control
    /// plane (default: the --listen address, or 127.0.0.1 when that is a
    /// wildcard).
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<IpAddr>,
    /// The etcd binary of an HA control plane (Debian: etcd-server).
    #[arg(long, default_value = "etcd")]
    pub etcd_binary: PathBuf,
    /// The port of this server's etcd member for this server (on 127.0.0.1).
    #[arg(long, default_value = "2379")]
    pub etcd_client_port: u16,
    /// The port of this server's etcd member for the other members (on
    /// --node-ip, TLS under the cluster CA).
    #[arg(long, default_value = "2380")]
    pub etcd_peer_port: u16,
    /// The embedded node agent's settings.
    #[command(flatten)]
    pub agent: AgentFlags,
}

impl ServerArgs {
    /// The node's disks: those given, or the default one.
    pub fn node_disks(&self) -> Vec<sheaf_agent::disks::DiskConfig> {
        self.agent.node_disks(&self.data_dir)
    }

    /// The address the embedded agent reports as its node's InternalIP
    /// (and an HA server's etcd peer address): --node-ip, the listen
    /// address, or 127.0.0.1 when that is a wildcard.
    pub fn node_ip(&self) -> IpAddr {
        if let Some(ip) = self.node_ip {
            return ip;
        }
        match self.listen.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        }
    }

    /// This server's name: its node name (--node-name, default the host
    /// name), also its etcd member's name.
    pub fn server_name(&self) -> String {
        self.agent.node_name.clone().unwrap_or_else(sheaf_agent::node::hostname)
    }

    /// Whether this server runs an etcd member of an HA control plane:
    /// with --cluster-init or --server, and whenever its data directory
    /// already holds a member (a server of an HA control plane restarted
    /// without those flags must not fall back to an empty SQLite store).
    pub fn managed_etcd(&self) -> bool {
        self.cluster_init || !self.join_server.is_empty() || control_plane::has_member(&self.data_dir.join("etcd"))
    }

    /// Flags that do not go together, as a message naming them.
    fn check(&self) -> anyhow::Result<()> {
        if self.managed_etcd() && self.store == StoreKind::Etcd {
            anyhow::bail!(
                "--cluster-init and --server run this server's own etcd member; --store etcd is for an \
                 external etcd (--etcd-endpoints): pass one or the other"
            );
        }
        let loopback_url = |u: &String| {
            reqwest::Url::parse(u).ok().and_then(|u| u.host_str().map(str::to_string)).is_some_and(|h| {
                h == "localhost" || h.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            })
        };
        if !self.join_server.is_empty() && self.node_ip().is_loopback() && !self.join_server.iter().all(loopback_url) {
            anyhow::bail!(
                "--server: this server's etcd member would be reached at {} (loopback), which the other servers \
                 cannot reach; pass --node-ip (or --listen) with this machine's address",
                self.node_ip()
            );
        }
        if !self.join_server.is_empty() && self.token.as_deref().is_none_or(|t| t.trim().is_empty()) {
            anyhow::bail!(
                "--server needs --token (or SHEAF_TOKEN): the join token in the first server's DATA_DIR/join.token"
            );
        }
        Ok(())
    }
}

/// Compacts the store every `every`, to the revision it had one period
/// earlier, so that watches can resume from anything newer than that.
async fn compactor(store: Arc<dyn Store>, every: Duration) {
    let mut previous = None;
    loop {
        tokio::time::sleep(every).await;
        let now = match store.revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store revision");
                continue;
            }
        };
        if let Some(rev) = previous {
            if let Err(e) = store.compact(rev).await {
                tracing::warn!(error = %e, revision = rev, "compaction failed");
            }
        }
        previous = Some(now);
    }
}

/// Reaches the consoles of the VMIs this node's embedded agent runs.
struct LocalDialer {
    node: String,
    run_root: PathBuf,
}

#[async_trait::async_trait]
impl NodeDialer for LocalDialer {
    async fn dial(&self, node: &str, vmi_uid: &str, channel: Channel) -> Result<tokio::net::UnixStream, String> {
        if node != self.node {
            return Err(format!(
                "the VMI runs on node {node:?}; consoles of other nodes are reached through their agents \
                 (not available in this version)"
            ));
        }
        let socket = match channel {
            Channel::Serial => sheaf_agent::runner::serial_socket(&self.run_root, vmi_uid),
            Channel::Vnc => sheaf_agent::runner::vnc_socket(&self.run_root, vmi_uid),
        };
        tokio::net::UnixStream::connect(&socket).await.map_err(|e| format!("{}: {e}", socket.display()))
    }

    async fn serial_logs(&self, node: &str, vmi_uid: &str) -> Result<Vec<PathBuf>, String> {
        if node != self.node {
            return Err(format!(
                "the VMI runs on node {node:?}; serial logs of other nodes are kept there (RUN_DIR/UID/serial.log*) \
                 and not readable through the API in this version"
            ));
        }
        Ok(sheaf_agent::runner::serial_logs(&self.run_root, vmi_uid))
    }
}

/// Image uploads and downloads through the embedded agent's image store.
struct LocalImages(tokio::sync::watch::Receiver<Option<Arc<sheaf_agent::images::Images>>>);

impl LocalImages {
    fn store(&self) -> Result<Arc<sheaf_agent::images::Images>, TransferError> {
        self.0
            .borrow()
            .clone()
            .ok_or_else(|| TransferError::Unavailable("the node agent is still starting; retry".into()))
    }
}

fn transfer_error(e: sheaf_agent::images::UploadError) -> TransferError {
    use sheaf_agent::images::UploadError as U;
    match e {
        U::NotFound(m) => TransferError::NotFound(m),
        U::Conflict(m) | U::Interrupted(m) => TransferError::Conflict(m),
        U::Refused(m) => TransferError::Invalid(m),
        U::Unavailable(m) => TransferError::Unavailable(m),
    }
}

#[async_trait::async_trait]
impl ImageTransfer for LocalImages {
    async fn upload(
        &self,
        ns: &str,
        name: &str,
        body: futures::stream::BoxStream<'static, Result<bytes::Bytes, String>>,
    ) -> Result<serde_json::Value, TransferError> {
        let img = self.store()?.upload(ns, name, body).await.map_err(transfer_error)?;
        serde_json::to_value(&img).map_err(|e| TransferError::Unavailable(e.to_string()))
    }

    async fn download(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<(u64, futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>), TransferError> {
        use futures::StreamExt as _;
        let (path, len) = self.store()?.raw_file(ns, name).await.map_err(transfer_error)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| TransferError::Unavailable(format!("{}: {e}", path.display())))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).boxed();
        Ok((len, stream))
    }
}

/// `--node-grace`: a duration such as `30s`, `1m` or `90` (seconds), from
/// 5 s (agents report every 5 s) to an hour.
fn parse_grace(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 30s or 1m"))?;
    let d = match unit {
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("{s:?} is not a duration such as 30s or 1m (units: s, m)")),
    };
    if d < Duration::from_secs(5) || d > Duration::from_secs(3600) {
        return Err(format!("{s:?} is out of range: between 5s (agents report every 5 s) and 60m"));
    }
    Ok(d)
}

/// A duration in days (`7d`) or in the units of
/// [`sheaf_types::storage::parse_duration`] (`12h`, `30m`, `10s`); the error
/// names `days` as the first example.
pub(crate) fn parse_days(s: &str, days: &str) -> Result<Duration, String> {
    let t = s.trim();
    match t.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(n)) => Some(Duration::from_secs(n.saturating_mul(86400))),
        Some(Err(_)) => None,
        None => sheaf_types::storage::parse_duration(t),
    }
    .ok_or_else(|| format!("{s:?} is not a duration such as {days}, 12h or 30m (units: d, h, m, s)"))
}

/// `--trash-retention`: a duration such as `7d`, `12h` or `30m`, at most a
/// year.
fn parse_retention(s: &str) -> Result<Duration, String> {
    let d = parse_days(s, "7d")?;
    if d > Duration::from_secs(366 * 86400) {
        return Err(format!("{s:?} is out of range: at most a year (365d)"));
    }
    Ok(d)
}

/// Writes a file only its owner can read (it holds credentials).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    crate::logs::init(args.log.format());
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
    // The store holds Secrets and the directory holds the admin token.
    std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict the data directory {}", args.data_dir.display()))?;
    if !args.no_agent {
        sheaf_agent::disks::prepare(&args.node_disks()).context("bad --disk")?;
    }
    args.check()?;
    let name = args.server_name();
    let etcd_dir = args.data_dir.join("etcd");
    let peer_url = crate::managed_etcd::peer_url(args.node_ip(), args.etcd_peer_port);
    if args.managed_etcd() {
        control_plane::preflight(&args.etcd_binary, args.etcd_client_port, args.node_ip(), args.etcd_peer_port).await?;
    }
    // A further server of an HA control plane, the first time: join, and
    // take the cluster's secrets (and its key prefix).
    let joined = if !args.join_server.is_empty() && !control_plane::has_member(&etcd_dir) {
        let req = sheaf_types::join::ServerJoinRequest { name: name.clone(), peer_url: peer_url.clone() };
        let token = args.token.clone().unwrap_or_default();
        let resp = control_plane::join(&args.join_server, &token, &req).await?;
        control_plane::install_secrets(&args.data_dir, &resp)?;
        tracing::info!(members = ?resp.members, "joined the control plane; starting this server's etcd member");
        Some(resp)
    } else {
        None
    };
    // The control plane's key prefix is the first server's.
    let etcd_prefix = if args.managed_etcd() {
        control_plane::keep_prefix(&args.data_dir, &args.etcd_prefix, joined.as_ref().map(|r| r.etcd_prefix.as_str()))
    } else {
        args.etcd_prefix.clone()
    };
    if args.managed_etcd() && args.node_ip().is_loopback() {
        tracing::warn!(
            "this server's etcd member is reached at {peer_url}, on loopback: no other server can join it \
             (pass --listen or --node-ip with an address the other servers reach)"
        );
    }
    let mut names = args.tls_san.clone();
    let ip = args.listen.ip();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    if let Some(ip) = args.node_ip {
        names.push(ip.to_string());
    }
    let pki = pki::ensure(&args.data_dir, &names).context("cannot set up certificates")?;
    if !args.join_server.is_empty() {
        // A joined member is a learner until promoted; its store answers
        // once it votes. Asked on every start with --server (idempotent),
        // so that a server that stopped before it was promoted is.
        let req = sheaf_types::join::ServerJoinRequest { name: name.clone(), peer_url: peer_url.clone() };
        tokio::spawn(control_plane::promote(args.join_server.clone(), args.token.clone().unwrap_or_default(), req));
    }
    let mut managed = None;
    let store: Arc<dyn Store> = if args.managed_etcd() {
        let bootstrap = if args.cluster_init {
            crate::managed_etcd::Bootstrap::New
        } else {
            control_plane::bootstrap_of(joined.as_ref(), &name, &peer_url)
        };
        let cfg = crate::managed_etcd::EtcdConfig {
            binary: args.etcd_binary.clone(),
            name: name.clone(),
            data_dir: etcd_dir.clone(),
            log: args.data_dir.join("etcd.log"),
            node_ip: args.node_ip(),
            client_port: args.etcd_client_port,
            peer_port: args.etcd_peer_port,
            tls: pki::etcd_peer_tls(&args.data_dir, args.node_ip())
                .context("cannot issue the etcd peer certificate")?,
            bootstrap,
        };
        let (etcd, store) = control_plane::start_store(cfg, &etcd_prefix).await?;
        managed = Some(etcd);
        store
    } else {
        match args.store {
            StoreKind::Sqlite => {
                let path = args.data_dir.join("state.db");
                Arc::new(SqliteStore::open(&path).with_context(|| format!("cannot open {}", path.display()))?)
            }
            StoreKind::Etcd => Arc::new(
                EtcdStore::connect(&args.etcd_endpoints, &args.etcd_prefix)
                    .await
                    .with_context(|| format!("cannot reach etcd at {}", args.etcd_endpoints.join(",")))?,
            ),
        }
    };
    let tls = pki::server_config(&pki)?;
    let api = ApiServer::new(
        store.clone(),
        Registry::new(sheaf_types::registry::all()),
        &[
            (pki.admin_token.clone(), UserInfo::new("admin", &[sheaf_apiserver::authz::MASTERS])),
            // Node agents write across namespaces (Nodes, instance status,
            // replicas, Events): full rights until a node authorizer exists.
            (pki.node_token.clone(), UserInfo::new("system:node", &["system:nodes", sheaf_apiserver::authz::MASTERS])),
        ],
    );
    let audit_path = args.audit_log_path.clone().unwrap_or_else(|| args.data_dir.join("audit.log"));
    if !audit_path.as_os_str().is_empty() {
        let cfg = sheaf_apiserver::audit::Config {
            path: audit_path.clone(),
            max_bytes: args.audit_log_max_size << 20,
            max_backups: args.audit_log_max_backups,
        };
        let audit = sheaf_apiserver::audit::Audit::start(cfg)
            .with_context(|| format!("cannot open the audit log {}", audit_path.display()))?;
        api.set_audit(audit);
    }
    api.set_ca_pem(&pki.ca_pem);
    sheaf_apiserver::bootstrap(&api).await.map_err(|e| anyhow::anyhow!("bootstrap failed: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // A wildcard listen address is reached locally through loopback.
    let local = match args.listen.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], args.listen.port())),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], args.listen.port())),
        _ => args.listen,
    };
    let kubeconfig = pki::kubeconfig(&format!("https://{local}"), &pki.ca_pem, &pki.admin_token, "admin");
    let kc_path = args.data_dir.join("admin.kubeconfig");
    write_private(&kc_path, kubeconfig.as_bytes()).with_context(|| format!("cannot write {}", kc_path.display()))?;
    let join_path = args.data_dir.join("join.token");
    write_private(&join_path, pki.join_token().as_bytes())
        .with_context(|| format!("cannot write {}", join_path.display()))?;

    let local: Arc<dyn sheaf_client::Api> = LocalApi::new(api.objects.clone());
    // The controllers, the garbage collector and the compactor: on one
    // server at a time.
    let history = Duration::from_secs(args.history_seconds.max(1));
    let settings = sheaf_controllers::Settings { node_grace: args.node_grace, trash_retention: args.trash_retention };
    let leader_work = {
        let (local, objects, store) = (local.clone(), api.objects.clone(), store.clone());
        move || {
            let (local, objects, store, settings) = (local.clone(), objects.clone(), store.clone(), settings.clone());
            async move {
                tokio::join!(
                    sheaf_controllers::run_all_with(local, settings),
                    GarbageCollector::new(objects).run(),
                    compactor(store, history),
                );
            }
        }
    };
    let elected = args.managed_etcd() || args.store == StoreKind::Etcd;
    let election = Arc::new(tokio::sync::Mutex::new(leader::Election::new(
        local.clone(),
        leader::identity(&name),
        Default::default(),
    )));
    // Tell clients where this server is (they learn the servers they were
    // not given from these Leases).
    if elected && !args.node_ip().is_loopback() {
        let url = format!("https://{}", SocketAddr::new(args.node_ip(), args.listen.port()));
        tokio::spawn(control_plane::announce(local.clone(), name.clone(), url));
    }
    let election_task = if elected {
        let election = election.clone();
        Some(tokio::spawn(async move {
            let mut e = election.lock().await;
            e.run(leader_work).await;
        }))
    } else {
        tokio::spawn(leader_work());
        None
    };
    if !args.no_agent {
        let (images_tx, images_rx) = tokio::sync::watch::channel(None);
        let cfg = args.agent.config(&args.data_dir, Some(args.node_ip()), Some(images_tx));
        api.set_node_dialer(Arc::new(LocalDialer { node: cfg.node_name.clone(), run_root: cfg.run_root.clone() }));
        api.set_image_transfer(Arc::new(LocalImages(images_rx)));
        // One scrape target per node: the server's /metrics has the node's.
        sheaf_apiserver::metrics::add_collector(cfg.metrics.clone());
        tokio::spawn(sheaf_agent::run(local.clone(), cfg));
    }
    api.set_ready(true);
    let store_name = match (&managed, args.store) {
        (Some(_), _) => "etcd (own member)",
        (None, StoreKind::Etcd) => "etcd",
        (None, StoreKind::Sqlite) => "sqlite",
    };
    tracing::info!(listen = %args.listen, store = store_name, kubeconfig = %kc_path.display(), "sheaf server ready");
    tracing::info!(
        "add nodes with: sheaf agent --server https://{} --token $(cat {})",
        if args.listen.ip().is_unspecified() { "THIS-HOST:PORT".to_string() } else { args.listen.to_string() },
        join_path.display()
    );
    if args.managed_etcd() {
        tracing::info!(
            "add servers with: sheaf server --server https://{} --token $(cat {})",
            if args.listen.ip().is_unspecified() { "THIS-HOST:PORT".to_string() } else { args.listen.to_string() },
            join_path.display()
        );
    }
    let join = ServerJoin::new(
        ServerJoinResponse {
            ca_crt: pki.ca_pem.clone(),
            ca_key: pki.ca_key_pem.clone(),
            admin_token: pki.admin_token.clone(),
            node_token: pki.node_token.clone(),
            etcd_prefix: etcd_prefix.clone(),
            members: Vec::new(),
        },
        managed.as_ref().map(|m| vec![m.config().client_url()]),
    );
    let app = api.router().merge(join.router());
    let serve = sheaf_apiserver::serve_tls(listener, tls, app);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
    }
    if let Some(task) = election_task {
        // Stop leading (the controllers with it), and hand the lease over
        // at once instead of after its duration.
        task.abort();
        let _ = task.await;
        let mut e = election.lock().await;
        let _ = tokio::time::timeout(Duration::from_secs(3), e.release()).await;
    }
    drop(managed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn parse(args: &[&str]) -> Result<ServerArgs, String> {
        Cmd::try_parse_from(std::iter::once("server").chain(args.iter().copied()))
            .map(|c| c.server)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn trash_retention_flag() {
        assert_eq!(parse(&[]).expect("default").trash_retention, Duration::from_secs(7 * 86400));
        assert_eq!(parse(&["--trash-retention", "90m"]).expect("90m").trash_retention, Duration::from_secs(5400));
        assert_eq!(parse(&["--trash-retention", "2d"]).expect("2d").trash_retention, Duration::from_secs(2 * 86400));
        let e = parse(&["--trash-retention", "forever"]).expect_err("not a duration");
        assert!(e.to_string().contains("7d"), "{e}");
        let e = parse(&["--trash-retention", "400d"]).expect_err("too long");
        assert!(e.to_string().contains("at most a year"), "{e}");
    }

    #[test]
    fn node_grace_flag() {
        assert_eq!(parse(&[]).expect("default").node_grace, Duration::from_secs(30));
        assert_eq!(parse(&["--node-grace", "1m"]).expect("1m").node_grace, Duration::from_secs(60));
        assert_eq!(parse(&["--node-grace", "12"]).expect("12").node_grace, Duration::from_secs(12));
        let e = parse(&["--node-grace", "2s"]).expect_err("too short");
        assert!(e.contains("between 5s"), "{e}");
        let e = parse(&["--node-grace", "soon"]).expect_err("not a duration");
        assert!(e.contains("such as 30s"), "{e}");
    }

    #[test]
    fn disk_flags() {
        // None: the default disk at DATA_DIR/replicas, as before disks.
        let a = parse(&["--data-dir", "/var/lib/x"]).expect("no disks");
        let d = a.node_disks();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].name.as_str(), d[0].path.as_path()), ("default", Path::new("/var/lib/x/replicas")));
        assert!(d[0].tags.is_empty());

        let a = parse(&["--disk", "default=/var/lib/sheaf/replicas", "--disk", "fast=/srv/nvme0,tags=ssd+fast"])
            .expect("two disks");
        let d = a.node_disks();
        assert_eq!(d.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["default", "fast"]);
        assert_eq!(d[1].path, Path::new("/srv/nvme0"));
        assert_eq!(d[1].tags, ["ssd", "fast"]);

        // Errors name the flag and what is expected.
        let e = parse(&["--disk", "fast:/srv/x"]).expect_err("bad syntax");
        assert!(e.contains("--disk") && e.contains("expected NAME=PATH[,tags=TAG+TAG]"), "{e}");
        let e = parse(&["--disk", "fast=relative/dir"]).expect_err("relative");
        assert!(e.contains("not absolute"), "{e}");
    }

    #[test]
    fn control_plane_flags() {
        // The single-node command is unchanged: SQLite, no election.
        let a = parse(&["--data-dir", "/nonexistent/sheaf"]).expect("defaults");
        assert!(!a.managed_etcd() && a.store == StoreKind::Sqlite);
        assert!(a.check().is_ok());

        let a = parse(&["--cluster-init", "--listen", "10.0.0.1:6443"]).expect("init");
        assert!(a.managed_etcd());
        assert_eq!(a.node_ip(), "10.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_eq!((a.etcd_client_port, a.etcd_peer_port), (2379, 2380));

        let a = parse(&["--server", "https://10.0.0.1:6443,https://10.0.0.2:6443", "--token", "SHEAF1::x::y"])
            .expect("join");
        assert_eq!(a.join_server.len(), 2);
        let e = a.check().expect_err("a loopback peer address for remote servers");
        assert!(e.to_string().contains("pass --node-ip"), "{e}");
        let a = parse(&["--server", "https://10.0.0.1:6443", "--token", "SHEAF1::x::y", "--node-ip", "10.0.0.2"])
            .expect("join");
        assert!(a.managed_etcd() && a.check().is_ok());
        let a = parse(&["--server", "https://127.0.0.1:6443", "--token", "SHEAF1::x::y", "--listen", "127.0.0.1:6444"])
            .expect("join on one machine");
        assert!(a.check().is_ok());
        let a = parse(&["--server", "https://10.0.0.1:6443", "--node-ip", "10.0.0.3", "--listen", "0.0.0.0:6443"])
            .expect("join without token parses");
        assert_eq!(a.node_ip(), "10.0.0.3".parse::<IpAddr>().expect("ip"));
        if std::env::var_os("SHEAF_TOKEN").is_none() {
            let e = a.check().expect_err("no token");
            assert!(e.to_string().contains("--server needs --token"), "{e}");
        }
        let e = parse(&["--cluster-init", "--server", "https://10.0.0.1:6443"]).expect_err("both");
        assert!(e.contains("--cluster-init") && e.contains("--server"), "{e}");
        let a = parse(&["--cluster-init", "--store", "etcd"]).expect("parses");
        let e = a.check().expect_err("own and external etcd");
        assert!(e.to_string().contains("--store etcd is for an external etcd"), "{e}");
    }
}
