//! The etcd member a server of an HA control plane runs as a child process
//! (`sheaf server --cluster-init`, or `--server URL` to join).
//!
//! ```text
//!            start ──▶ spawn etcd ──▶ running ──(exits)──▶ wait 1 s … 10 s ──▶ spawn etcd
//!                                        │
//!                     stop / drop ───────┴──▶ SIGTERM, 10 s, SIGKILL ──▶ stopped
//! ```
//!
//! One supervisor thread owns the child: it spawns it, waits for it, and
//! spawns it again after a pause that grows while it keeps dying early.
//! The child gets `PR_SET_PDEATHSIG(SIGKILL)` from that thread, so a server
//! that is killed outright takes its etcd with it, and a restarted server
//! starts it again from its data directory.
//!
//! Addresses: clients (only this server) on loopback,
//! `http://127.0.0.1:CLIENT_PORT`; peers (the other members) on the node
//! address, `https://NODE_IP:PEER_PORT`, with mutual TLS under the cluster
//! CA (`--peer-client-cert-auth`), so that only the cluster's servers can
//! be members. Data in `DATA_DIR/etcd`, log in `DATA_DIR/etcd.log`.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sheaf_apiserver::pki::EtcdPeerTls;

/// How the member starts the first time (ignored by etcd once its data
/// directory holds a member).
#[derive(Clone, Debug)]
pub enum Bootstrap {
    /// A new cluster of this one member.
    New,
    /// Joining a cluster that already lists this member:
    /// `--initial-cluster` (`name=peer-url,...`).
    Existing(String),
}

#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub binary: PathBuf,
    /// The member name (the server's node name).
    pub name: String,
    /// `DATA_DIR/etcd`.
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub node_ip: IpAddr,
    pub client_port: u16,
    pub peer_port: u16,
    pub tls: EtcdPeerTls,
    pub bootstrap: Bootstrap,
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// The URL the other members reach a member at.
pub fn peer_url(node_ip: IpAddr, port: u16) -> String {
    format!("https://{}:{port}", url_host(node_ip))
}

impl EtcdConfig {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        peer_url(self.node_ip, self.peer_port)
    }

    fn args(&self) -> Vec<String> {
        let (cluster, state) = match &self.bootstrap {
            Bootstrap::New => (format!("{}={}", self.name, self.peer_url()), "new"),
            Bootstrap::Existing(c) => (c.clone(), "existing"),
        };
        vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={}", self.client_url()),
            format!("--advertise-client-urls={}", self.client_url()),
            format!("--listen-peer-urls={}", self.peer_url()),
            format!("--initial-advertise-peer-urls={}", self.peer_url()),
            format!("--initial-cluster={cluster}"),
            format!("--initial-cluster-state={state}"),
            "--initial-cluster-token=sheaf".into(),
            format!("--peer-cert-file={}", self.tls.cert.display()),
            format!("--peer-key-file={}", self.tls.key.display()),
            format!("--peer-trusted-ca-file={}", self.tls.ca.display()),
            "--peer-client-cert-auth".into(),
            // Sheaf compacts the store itself (the compactor of the leader).
            "--auto-compaction-retention=0".into(),
            "--log-level=warn".into(),
        ]
    }
}

/// What the supervisor thread and the owner share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    pid: AtomicU32,
    /// Wakes the supervisor from its pause between restarts.
    wake: (Mutex<()>, Condvar),
}

/// A running etcd member; stopped when dropped.
pub struct ManagedEtcd {
    cfg: EtcdConfig,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn spawn(cfg: &EtcdConfig) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&cfg.log)?;
    let mut cmd = Command::new(&cfg.binary);
    cmd.args(cfg.args()).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl, which is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn signal(pid: u32, sig: libc::c_int) {
    if pid != 0 {
        #[allow(unsafe_code)]
        // SAFETY: kill takes no pointers; the pid is our own child's.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

impl ManagedEtcd {
    /// Spawns etcd and the thread that keeps it running. Fails if the first
    /// spawn fails (no etcd binary, say).
    pub fn start(cfg: EtcdConfig) -> io::Result<ManagedEtcd> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let shared = Arc::new(Shared::default());
        let (first_tx, first_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread = {
            let cfg = cfg.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("etcd-supervisor".into())
                .spawn(move || supervise(cfg, shared, first_tx))?
        };
        match first_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(io::Error::new(e.kind(), format!("cannot start {}: {e}", cfg.binary.display())));
            }
            Err(_) => return Err(io::Error::other("the etcd supervisor ended before starting etcd")),
        }
        Ok(ManagedEtcd { cfg, shared, thread: Some(thread) })
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.cfg
    }

    /// The etcd process's id (0 between restarts).
    pub fn pid(&self) -> u32 {
        self.shared.pid.load(Ordering::SeqCst)
    }

    /// Stops etcd: SIGTERM, and SIGKILL if it is still there after 10 s.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.1.notify_all();
        signal(self.pid(), libc::SIGTERM);
        let Some(thread) = self.thread.take() else { return };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !thread.is_finished() {
            signal(self.pid(), libc::SIGKILL);
        }
        let _ = thread.join();
    }
}

impl Drop for ManagedEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn supervise(cfg: EtcdConfig, shared: Arc<Shared>, first: std::sync::mpsc::Sender<io::Result<()>>) {
    let mut first = Some(first);
    let mut pause = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let mut child = match spawn(&cfg) {
            Ok(c) => c,
            Err(e) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::warn!(error = %e, "cannot restart etcd");
                if wait_or_stop(&shared, pause) {
                    return;
                }
                continue;
            }
        };
        shared.pid.store(child.id(), Ordering::SeqCst);
        tracing::info!(pid = child.id(), name = %cfg.name, peer = %cfg.peer_url(), "etcd member started");
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }
        let status = child.wait();
        shared.pid.store(0, Ordering::SeqCst);
        if shared.stop.load(Ordering::SeqCst) {
            tracing::info!("etcd member stopped");
            return;
        }
        // A member that ran for a while is restarted quickly; one that
        // keeps dying at once, ever more slowly.
        pause = if started.elapsed() > Duration::from_secs(30) {
            Duration::from_secs(1)
        } else {
            (pause * 2).min(Duration::from_secs(10))
        };
        tracing::warn!(
            status = ?status, log = %cfg.log.display(), "etcd exited; restarting it in {} s", pause.as_secs()
        );
        if wait_or_stop(&shared, pause) {
            return;
        }
    }
}

/// Sleeps for `d` unless told to stop; true when stopping.
fn wait_or_stop(shared: &Shared, d: Duration) -> bool {
    let guard = shared.wake.0.lock().unwrap_or_else(|e| e.into_inner());
    let _ = shared
        .wake
        .1
        .wait_timeout_while(guard, d, |_| !shared.stop.load(Ordering::SeqCst))
        .unwrap_or_else(|e| e.into_inner());
    shared.stop.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let cfg = EtcdConfig {
            binary: "etcd".into(),
            name: "s1".into(),
            data_dir: "/var/lib/sheaf/etcd".into(),
            log: "/var/lib/sheaf/etcd.log".into(),
            node_ip: "10.0.0.2".parse().expect("ip"),
            client_port: 2379,
            peer_port: 2380,
            tls: EtcdPeerTls {
                ca: "/p/ca.crt".into(),
                cert: "/p/etcd-peer.crt".into(),
                key: "/p/etcd-peer.key".into(),
            },
            bootstrap: Bootstrap::Existing("s0=https://10.0.0.1:2380,s1=https://10.0.0.2:2380".into()),
        };
        let args = cfg.args();
        for want in [
            "--name=s1",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=https://10.0.0.2:2380",
            "--initial-cluster=s0=https://10.0.0.1:2380,s1=https://10.0.0.2:2380",
            "--initial-cluster-state=existing",
            "--peer-client-cert-auth",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
        }
        let v6 = EtcdConfig { node_ip: "fd00::2".parse().expect("ip"), bootstrap: Bootstrap::New, ..cfg };
        assert_eq!(v6.peer_url(), "https://[fd00::2]:2380");
        assert!(v6.args().iter().any(|a| a == "--initial-cluster=s1=https://[fd00::2]:2380"));
    }
}
