//! `sheaf server`: the API server on the embedded SQLite store (default)
//! or on etcd, with its background controllers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::fs::PermissionsExt as _;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use sheaf_apiserver::console::{Channel, NodeDialer};
use sheaf_apiserver::image_transfer::{ImageTransfer, TransferError};
use sheaf_apiserver::{gc::GarbageCollector, local_api::LocalApi, pki, registry::Registry, ApiServer};
use sheaf_store::{etcd::EtcdStore, sqlite::SqliteStore, Store};

use crate::agent::AgentFlags;

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
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Do not run the node agent in this process (control plane only).
    #[arg(long)]
    pub no_agent: bool,
    /// The embedded node agent's settings.
    #[command(flatten)]
    pub agent: AgentFlags,
}

impl ServerArgs {
    /// The node's disks: those given, or the default one.
    pub fn node_disks(&self) -> Vec<sheaf_agent::disks::DiskConfig> {
        self.agent.node_disks(&self.data_dir)
    }

    /// The address the embedded agent reports as its node's InternalIP:
    /// the listen address, or 127.0.0.1 when that is a wildcard.
    pub fn node_ip(&self) -> IpAddr {
        match self.listen.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        }
    }
}

pub(crate) fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHEAF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
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

/// Writes a file only its owner can read (it holds credentials).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
    // The store holds Secrets and the directory holds the admin token.
    std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict the data directory {}", args.data_dir.display()))?;
    if !args.no_agent {
        sheaf_agent::disks::prepare(&args.node_disks()).context("bad --disk")?;
    }
    let store: Arc<dyn Store> = match args.store {
        StoreKind::Sqlite => {
            let path = args.data_dir.join("state.db");
            Arc::new(SqliteStore::open(&path).with_context(|| format!("cannot open {}", path.display()))?)
        }
        StoreKind::Etcd => Arc::new(
            EtcdStore::connect(&args.etcd_endpoints, &args.etcd_prefix)
                .await
                .with_context(|| format!("cannot reach etcd at {}", args.etcd_endpoints.join(",")))?,
        ),
    };
    let mut names = args.tls_san.clone();
    let ip = args.listen.ip();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    let pki = pki::ensure(&args.data_dir, &names).context("cannot set up certificates")?;
    let tls = pki::server_config(&pki)?;
    let api = ApiServer::new(
        store.clone(),
        Registry::new(sheaf_types::registry::all()),
        &[pki.admin_token.clone(), pki.node_token.clone()],
    );
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

    tokio::spawn(GarbageCollector::new(api.objects.clone()).run());
    let local: Arc<dyn sheaf_client::Api> = LocalApi::new(api.objects.clone());
    tokio::spawn(sheaf_controllers::run_all(local.clone()));
    if !args.no_agent {
        let (images_tx, images_rx) = tokio::sync::watch::channel(None);
        let cfg = args.agent.config(&args.data_dir, Some(args.node_ip()), Some(images_tx));
        api.set_node_dialer(Arc::new(LocalDialer { node: cfg.node_name.clone(), run_root: cfg.run_root.clone() }));
        api.set_image_transfer(Arc::new(LocalImages(images_rx)));
        tokio::spawn(sheaf_agent::run(local.clone(), cfg));
    }
    tokio::spawn(compactor(store.clone(), Duration::from_secs(args.history_seconds.max(1))));
    api.set_ready(true);
    tracing::info!(listen = %args.listen, store = ?args.store, kubeconfig = %kc_path.display(), "sheaf server ready");
    tracing::info!(
        "add nodes with: sheaf agent --server https://{} --token $(cat {})",
        if args.listen.ip().is_unspecified() { "THIS-HOST:PORT".to_string() } else { args.listen.to_string() },
        join_path.display()
    );
    let app = api.router();
    let serve = sheaf_apiserver::serve_tls(listener, tls, app);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = serve => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
    }
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
}
