//! A throwaway etcd server for tests: `/usr/bin/etcd` (or `$SHEAF_TEST_ETCD`)
//! on free loopback ports with its data in a temporary directory, killed
//! when dropped.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const ATTEMPTS: usize = 3;

pub struct EtcdProcess {
    child: Child,
    client_url: String,
    log: PathBuf,
    // Removed after the process is gone (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
}

/// A free port on 127.0.0.1 (free when this returns; the bind is dropped).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("SHEAF_TEST_ETCD").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/etcd".into())
}

impl EtcdProcess {
    /// Starts etcd and waits until it serves clients.
    pub async fn start() -> anyhow::Result<EtcdProcess> {
        Self::start_with(&[]).await
    }

    /// Like [`EtcdProcess::start`] with extra command line flags.
    pub async fn start_with(extra: &[&str]) -> anyhow::Result<EtcdProcess> {
        let mut last = None;
        // Another process may take a port between `free_port` and etcd's
        // bind; then etcd exits and we try new ports.
        for _ in 0..ATTEMPTS {
            match Self::try_start(extra).await {
                Ok(p) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    async fn try_start(extra: &[&str]) -> anyhow::Result<EtcdProcess> {
        let dir = tempfile::tempdir()?;
        let client_port = free_port()?;
        let mut peer_port = free_port()?;
        while peer_port == client_port {
            peer_port = free_port()?;
        }
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = dir.path().join("etcd.log");
        let log_file = File::create(&log)?;
        let child = Command::new(etcd_binary())
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--log-level=warn")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawn {}", etcd_binary().display()))?;
        let mut process = EtcdProcess { child, client_url, log, _dir: dir };
        process.wait_ready(client_port).await?;
        Ok(process)
    }

    /// Waits until etcd accepts connections and answers a request.
    async fn wait_ready(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("etcd exited with {status} during startup:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("etcd did not become ready within {STARTUP_TIMEOUT:?}:\n{}", self.log_tail());
            }
            let addr = (Ipv4Addr::LOCALHOST, port).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && self.answers().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a linearizable read succeeds (i.e. there is a leader).
    async fn answers(&self) -> bool {
        let probe = async {
            let mut client = etcd_client::Client::connect([self.client_url.as_str()], None).await?;
            client.get("/", None).await
        };
        matches!(tokio::time::timeout(Duration::from_secs(2), probe).await, Ok(Ok(_)))
    }

    /// The client URL, e.g. `http://127.0.0.1:23791`.
    pub fn url(&self) -> &str {
        &self.client_url
    }

    pub fn endpoints(&self) -> Vec<String> {
        vec![self.client_url.clone()]
    }

    /// The end of etcd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Kills etcd now (e.g. to test an unavailable store).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
