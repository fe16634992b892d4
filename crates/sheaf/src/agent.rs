//! `sheaf agent`: the node agent as a process of its own, on a machine
//! other than the server's, talking to the API server over HTTPS with a
//! bearer token and the cluster's certificate authority.
//!
//! [`AgentFlags`] are the node agent's settings; `sheaf server` takes the
//! same flags for the agent it runs embedded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, ValueEnum};
use sheaf_client::remote::{RemoteApi, RemoteError};

/// How VMs' pod networks reach the world.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum MgmtNetwork {
    Bridge,
    User,
}

/// The node agent's flags, shared by `sheaf server` (embedded agent) and
/// `sheaf agent`.
#[derive(Args, Debug, Clone)]
pub struct AgentFlags {
    /// This node's name (default: the host name).
    #[arg(long, env = "SHEAF_NODE_NAME")]
    pub node_name: Option<String>,
    /// Where VM runtime directories live (sockets, pidfiles, serial logs).
    #[arg(long, default_value = "/run/sheaf/vmi")]
    pub run_dir: PathBuf,
    /// The node's image store (default: DATA_DIR/images).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// How VMs' pod networks reach the world: `bridge` (a node bridge with
    /// DHCP and NAT) or `user` (QEMU's user-mode NAT, no inbound traffic;
    /// for hosts where Sheaf may not create devices).
    #[arg(long, value_enum, default_value = "bridge")]
    pub mgmt_network: MgmtNetwork,
    /// The management network's bridge.
    #[arg(long, default_value = "sheaf-br0")]
    pub mgmt_bridge: String,
    /// The management network's subnet; the bridge takes the first address.
    #[arg(long, default_value = "10.53.0.0/20")]
    pub mgmt_cidr: sheaf_agent::network::Subnet,
    /// A disk for replica data, NAME=PATH[,tags=TAG+TAG]; repeat for more
    /// (for example --disk fast=/srv/nvme0,tags=ssd+fast). Volumes choose
    /// disks by tag (spec.diskSelector). Default: one disk named `default`
    /// at DATA_DIR/replicas; replicas made before disks existed are on
    /// `default`, so keep a disk of that name at that path when adding
    /// others.
    #[arg(long = "disk", value_name = "NAME=PATH[,tags=TAG+TAG]")]
    pub disks: Vec<sheaf_agent::disks::DiskConfig>,
    #[command(flatten)]
    pub serial_log: crate::logs::SerialLogFlags,
}

impl AgentFlags {
    /// The node's disks: those given, or the default one under `data_dir`.
    pub fn node_disks(&self, data_dir: &Path) -> Vec<sheaf_agent::disks::DiskConfig> {
        if self.disks.is_empty() {
            vec![sheaf_agent::disks::DiskConfig::default_at(&data_dir.join("replicas"))]
        } else {
            self.disks.clone()
        }
    }

    /// The agent's configuration from these flags.
    pub fn config(
        &self,
        data_dir: &Path,
        node_ip: Option<IpAddr>,
        images_ready: Option<tokio::sync::watch::Sender<Option<Arc<sheaf_agent::images::Images>>>>,
    ) -> sheaf_agent::AgentConfig {
        sheaf_agent::AgentConfig {
            node_name: self.node_name.clone().unwrap_or_else(sheaf_agent::node::hostname),
            node_ip,
            run_root: self.run_dir.clone(),
            image_root: self.image_dir.clone().unwrap_or_else(|| data_dir.join("images")),
            qemu: self.qemu.clone(),
            management: (self.mgmt_network == MgmtNetwork::Bridge).then(|| (self.mgmt_bridge.clone(), self.mgmt_cidr)),
            disks: self.node_disks(data_dir),
            images_ready,
            serial_log: self.serial_log.policy(),
            metrics: sheaf_agent::metrics::AgentMetrics::new(),
        }
    }
}

/// `sheaf agent`'s arguments.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The API server: https://HOST:PORT (`sheaf server --listen`); for an
    /// HA control plane every server, comma-separated
    /// (https://10.0.0.1:6443,https://10.0.0.2:6443,https://10.0.0.3:6443):
    /// the agent switches to another when the one it uses cannot be reached.
    #[arg(long, env = "SHEAF_SERVER", value_name = "URL[,URL...]")]
    pub server: String,
    /// The join token (the server's DATA_DIR/join.token, `SHEAF1::...`),
    /// or a bearer token the server accepts together with --ca-file.
    #[arg(long, env = "SHEAF_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The cluster's certificate authority, PEM (the server's
    /// DATA_DIR/pki/ca.crt); the server's certificate must be signed by it.
    /// Not needed with a join token, which names the CA by its hash.
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// The address other machines reach this node at, reported as the
    /// Node's InternalIP (default: this machine's source address towards
    /// the server).
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<IpAddr>,
    /// Where the agent keeps its state (replica data, images).
    #[arg(long, env = "SHEAF_DATA_DIR", default_value = "/var/lib/sheaf")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub log: crate::logs::LogArgs,
    /// Serve the node's metrics (Prometheus text format) at
    /// http://ADDR:PORT/metrics, e.g. 127.0.0.1:9477; plain HTTP without
    /// authentication, so loopback addresses only (default: off; see
    /// docs/guide/metrics.md).
    #[arg(long, value_name = "ADDR:PORT", value_parser = loopback_only)]
    pub metrics_address: Option<SocketAddr>,
    #[command(flatten)]
    pub node: AgentFlags,
}

/// `--metrics-address`: a loopback socket address.
fn loopback_only(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| format!("{s:?} is not ADDR:PORT, for example 127.0.0.1:9477"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the metrics are served over plain HTTP without authentication,              so only on this machine (127.0.0.1 or [::1]); scrape them with a Prometheus or agent on the node"
        ));
    }
    Ok(addr)
}

/// `https://HOST:PORT` as a socket address, resolving a host name.
async fn server_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow!("the server URL {url:?} is not valid: {e}"))?;
    let host = parsed.host_str().ok_or_else(|| anyhow!("the server URL {url:?} names no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve the server's host name {host:?}"))?;
    addrs.next().ok_or_else(|| anyhow!("the server's host name {host:?} has no address"))
}

/// The source address the kernel picks for the route to `server`: a UDP
/// socket connected there (nothing is sent) and its local address.
pub fn route_source(server: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = std::net::UdpSocket::bind(any)?;
    sock.connect(server)?;
    Ok(sock.local_addr()?.ip())
}

/// Waits until the server answers and takes the token; retries while it
/// cannot be reached (it may be starting), fails at once on anything else.
async fn wait_for_server(api: &RemoteApi) -> anyhow::Result<()> {
    let mut warned = false;
    loop {
        match api.probe().await {
            Ok(()) => return Ok(()),
            Err(RemoteError::Unauthorized(m)) => {
                bail!("the server refused the token (check --token or SHEAF_TOKEN): {m}")
            }
            Err(e @ RemoteError::Unreachable { .. }) => {
                if !warned {
                    tracing::warn!(error = %e, "the API server cannot be reached yet; retrying every 2 s");
                    warned = true;
                } else {
                    tracing::debug!(error = %e, "the API server cannot be reached yet");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e @ RemoteError::Certificate { .. }) => {
                bail!("{e}; check --ca-file (the server's DATA_DIR/pki/ca.crt) and the address in --server")
            }
            Err(e) => bail!("{e}"),
        }
    }
}

/// The cluster CA from a server's `/cacerts`, accepted only if its hash
/// is the join token's (the connection is not verified: the hash is what
/// makes it trusted). `servers` is one URL or several separated by commas,
/// tried in turn; retried while none can be reached.
pub(crate) async fn fetch_ca(servers: &str, want_hash: &str) -> anyhow::Result<Vec<u8>> {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot make an HTTPS client")?;
    let urls: Vec<String> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| format!("{}/cacerts", s.trim_end_matches('/')))
        .collect();
    let mut warned = false;
    let pem = 'found: loop {
        for url in &urls {
            match client.get(url).send().await.and_then(|r| r.error_for_status()) {
                Ok(r) => break 'found r.text().await.with_context(|| format!("reading {url}"))?,
                Err(e) if e.is_connect() || e.is_timeout() => {
                    if !warned {
                        tracing::warn!(error = %e, "the API server cannot be reached yet; retrying every 2 s");
                        warned = true;
                    }
                }
                Err(e) => bail!("cannot fetch the cluster CA from {url}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let got = sheaf_types::join::ca_hash(&pem);
    if got != want_hash {
        bail!(
            "the server's CA (SHA-256 {got}) is not the one the join token names ({want_hash}): check --server, \
             or take the token again from the server's DATA_DIR/join.token"
        );
    }
    Ok(pem.into_bytes())
}

async fn start(args: &AgentArgs) -> anyhow::Result<(Arc<RemoteApi>, sheaf_agent::AgentConfig)> {
    let join = sheaf_types::join::parse(&args.token);
    let (ca, token, ca_what) = match (&join, &args.ca_file) {
        (_, Some(path)) => {
            let ca = std::fs::read(path).map_err(|e| {
                anyhow!(
                    "cannot read the cluster's certificate authority --ca-file {}: {e} \
                     (copy it from the server's DATA_DIR/pki/ca.crt)",
                    path.display()
                )
            })?;
            let token = join.as_ref().map(|j| j.secret.clone()).unwrap_or_else(|| args.token.clone());
            (ca, token, format!("--ca-file {}", path.display()))
        }
        (Some(j), None) => (fetch_ca(&args.server, &j.ca_hash).await?, j.secret.clone(), "the server's CA".into()),
        (None, None) => bail!(
            "--ca-file is needed with a plain token; or pass the join token (SHEAF1::..., the server's \
             DATA_DIR/join.token) as --token"
        ),
    };
    let api = RemoteApi::new(&args.server, &ca, &token).map_err(|e| match e {
        RemoteError::BadCa(_) | RemoteError::NoCa => anyhow!("{ca_what}: {e}"),
        RemoteError::NoToken => anyhow!("{e}: pass --token or set SHEAF_TOKEN"),
        e => anyhow!("--server: {e}"),
    })?;
    let node_ip = match args.node_ip {
        Some(ip) => ip,
        None => {
            let addr = server_addr(&api.server()).await?;
            let ip = route_source(addr)
                .with_context(|| format!("cannot find this machine's address towards {addr}; pass --node-ip"))?;
            tracing::info!(%ip, server = %addr, "the node's address is its source address towards the server");
            ip
        }
    };
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
    let cfg = args.node.config(&args.data_dir, Some(node_ip), None);
    sheaf_agent::disks::prepare(&cfg.disks).context("bad --disk")?;
    wait_for_server(&api).await?;
    Ok((Arc::new(api), cfg))
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    crate::logs::init(args.log.format());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (api, cfg) = tokio::select! {
        r = start(&args) => r?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = term.recv() => return Ok(()),
    };
    tracing::info!(
        server = %api.server(), node = %cfg.node_name, node_ip = ?cfg.node_ip, run_dir = %cfg.run_root.display(),
        "sheaf agent connected"
    );
    // Servers of an HA control plane that --server did not name.
    tokio::spawn((*api).clone().learn_servers(Duration::from_secs(30)));
    if let Some(addr) = args.metrics_address {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-address {addr}"))?;
        tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
        tokio::spawn(sheaf_apiserver::metrics::serve_plain(listener, vec![cfg.metrics.clone()]));
    }
    let agent = tokio::spawn(sheaf_agent::run(api, cfg));
    tokio::select! {
        r = agent => r.context("the agent stopped")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn parse(args: &[&str]) -> Result<AgentArgs, String> {
        Cmd::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
            .map(|c| c.agent)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags() {
        let a = parse(&[
            "--server",
            "https://10.0.0.1:6443",
            "--token",
            "t",
            "--ca-file",
            "/etc/sheaf/ca.crt",
            "--node-name",
            "n1",
            "--node-ip",
            "10.0.0.2",
            "--data-dir",
            "/srv/sheaf",
            "--mgmt-cidr",
            "10.60.0.0/24",
        ])
        .expect("parses");
        let cfg = a.node.config(&a.data_dir, a.node_ip, None);
        assert_eq!(cfg.node_name, "n1");
        assert_eq!(cfg.node_ip, Some("10.0.0.2".parse().expect("ip")));
        assert_eq!(cfg.image_root, Path::new("/srv/sheaf/images"));
        assert_eq!(cfg.run_root, Path::new("/run/sheaf/vmi"));
        assert_eq!(cfg.disks[0].path, Path::new("/srv/sheaf/replicas"));
        let (bridge, subnet) = cfg.management.expect("bridge network");
        assert_eq!((bridge.as_str(), subnet.to_string().as_str()), ("sheaf-br0", "10.60.0.0/24"));
        // A join token needs no --ca-file.
        let j = parse(&["--server", "https://10.0.0.1:6443", "--token", "SHEAF1::x::y"]).expect("no CA file");
        assert_eq!(j.ca_file, None);
        let e = parse(&["--server", "https://x:1", "--token", "t", "--ca-file", "c", "--node-ip", "nope"])
            .expect_err("bad ip");
        assert!(e.contains("--node-ip"), "{e}");
        // Metrics: off unless asked, loopback only.
        assert_eq!(j.metrics_address, None);
        let m = parse(&["--server", "https://x:1", "--token", "t", "--metrics-address", "127.0.0.1:9477"]).expect("m");
        assert_eq!(m.metrics_address, Some("127.0.0.1:9477".parse().expect("addr")));
        let m = parse(&["--server", "https://x:1", "--token", "t", "--metrics-address", "[::1]:9477"]).expect("v6");
        assert!(m.metrics_address.is_some_and(|a| a.ip().is_loopback()));
        let e = parse(&["--server", "https://x:1", "--token", "t", "--metrics-address", "0.0.0.0:9477"])
            .expect_err("not loopback");
        assert!(e.contains("--metrics-address") && e.contains("not a loopback address"), "{e}");
        let e = parse(&["--server", "https://x:1", "--token", "t", "--metrics-address", "9477"]).expect_err("no host");
        assert!(e.contains("ADDR:PORT"), "{e}");
    }

    #[test]
    fn source_address_towards_loopback() {
        let ip = route_source("127.0.0.1:6443".parse().expect("addr")).expect("route");
        assert!(ip.is_loopback(), "{ip}");
    }
}
