//! Several nodes on one machine: a [`Cluster`] is a `sheaf server
//! --no-agent` in the root network namespace and one `sheaf agent` per
//! node, each in a network namespace of its own, all wired to a "physical
//! switch" (a Linux bridge in the root namespace) by veth pairs.
//!
//! ```text
//!   root namespace: sheaf server on SWITCH_IP:PORT ── bridge shs<pid> (10.2XX.Y.1/24)
//!                                                     │            │
//!   namespace shk<pid>n0: veth 10.2XX.Y.10 ─ sheaf agent (node-0, its own mgmt bridge, dnsmasq, QEMUs)
//!   namespace shk<pid>n1: veth 10.2XX.Y.11 ─ sheaf agent (node-1, ...)
//! ```
//!
//! Names and subnets derive from the test process's pid, as
//! [`super::guest::test_net`]'s do, so that tests run in parallel. The
//! namespaces have no default route: only the switch's subnet is
//! reachable from them. Dropping the cluster kills every process in the
//! namespaces (agents, QEMUs, dnsmasq, storage processes), deletes them
//! and the switch, so nothing is left on the host.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{eventually, Server};

/// One node: its network namespace, address and directories.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    /// The Node's name, `node-I`.
    pub name: String,
    /// The network namespace it runs in.
    pub ns: String,
    /// Its address on the switch (the Node's InternalIP).
    pub ip: String,
    /// Its data directory (`--data-dir`); the image store is `ROOT/images`.
    pub root: PathBuf,
    /// Its VM runtime directories (`--run-dir`, `ROOT/run`).
    pub run_dir: PathBuf,
    /// The agent's log.
    pub log_path: PathBuf,
    /// Its management network: the bridge (inside the namespace) and subnet.
    pub mgmt_bridge: String,
    pub mgmt_cidr: String,
    /// The host end of its veth, on the switch.
    veth: String,
}

impl NodeHandle {
    /// The first three octets of its management subnet, `A.B.C`.
    pub fn mgmt_prefix(&self) -> String {
        self.mgmt_cidr.rsplit_once('.').map(|(p, _)| p.to_string()).unwrap_or_default()
    }
}

pub struct Cluster {
    pub server: Server,
    pub nodes: Vec<NodeHandle>,
    /// The switch bridge in the root namespace and its address.
    pub switch: String,
    pub switch_ip: String,
    pub root: PathBuf,
    agents: Vec<Option<Child>>,
    /// Dropped last, after the agents are killed.
    net: Net,
}

/// The switch and the namespaces; dropping it kills everything in them
/// and removes them.
struct Net {
    switch: String,
    /// (namespace, host end of its veth).
    nodes: Vec<(String, String)>,
    root: PathBuf,
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// This process's slot: 4096 of them, each with a /24 switch subnet in
/// 10.200.0.0-10.215.255.255 and /24 management subnets in 100.64.0.0/10.
fn slot() -> u32 {
    std::process::id() % 4096
}

fn used_on_host(prefix: &str) -> bool {
    let needle = format!(" {prefix}.");
    ["addr", "route"].iter().any(|what| {
        let out = Command::new("ip").args(["-4", "-o", what]).output().expect("ip");
        String::from_utf8_lossy(&out.stdout).lines().any(|l| format!(" {l}").contains(&needle))
    })
}

impl Cluster {
    /// The switch, `nodes` namespaces wired to it, the server and one agent
    /// per node (each with the tiny guest as image `sheaf/tiny`); returns
    /// once every Node is Ready.
    pub fn start(root: &Path, nodes: usize) -> Cluster {
        Self::start_with(root, nodes, &[])
    }

    /// [`Cluster::start`] with more `sheaf server` flags.
    pub fn start_with(root: &Path, nodes: usize, server_args: &[&str]) -> Cluster {
        assert!((1..=4).contains(&nodes), "a cluster has 1 to 4 nodes");
        let pid = std::process::id();
        let k = slot();
        let switch_prefix = format!("10.{}.{}", 200 + k / 256, k % 256);
        assert!(
            !used_on_host(&switch_prefix),
            "this host already uses {switch_prefix}.0/24; the test needs it for its switch"
        );
        let switch = format!("shs{pid}");
        let switch_ip = format!("{switch_prefix}.1");
        let mut handles = Vec::new();
        for i in 0..nodes {
            let idx = k * 4 + i as u32;
            let mgmt_prefix = format!("100.{}.{}", 64 + idx / 256, idx % 256);
            assert!(
                !used_on_host(&mgmt_prefix),
                "this host already uses {mgmt_prefix}.0/24; the test needs it for a node's management network"
            );
            let dir = root.join(format!("node-{i}"));
            handles.push(NodeHandle {
                name: format!("node-{i}"),
                ns: format!("shk{pid}n{i}"),
                ip: format!("{switch_prefix}.{}", 10 + i),
                run_dir: dir.join("run"),
                log_path: dir.join("agent.log"),
                root: dir,
                mgmt_bridge: format!("shm{pid}"),
                mgmt_cidr: format!("{mgmt_prefix}.0/24"),
                veth: format!("shk{pid}h{i}"),
            });
        }
        // Leftovers of an earlier process with this pid.
        for n in &handles {
            let _ = Command::new("ip").args(["netns", "del", &n.ns]).output();
            let _ = Command::new("ip").args(["link", "del", &n.veth]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &switch]).output();

        // From here on, dropping `net` removes whatever was made.
        let mut net = Net { switch: switch.clone(), nodes: Vec::new(), root: root.to_path_buf() };
        run_ip(&["link", "add", &switch, "type", "bridge"]);
        run_ip(&["addr", "add", &format!("{switch_ip}/24"), "dev", &switch]);
        run_ip(&["link", "set", &switch, "up"]);
        for (i, n) in handles.iter().enumerate() {
            net.nodes.push((n.ns.clone(), n.veth.clone()));
            let peer = format!("shk{pid}p{i}");
            run_ip(&["netns", "add", &n.ns]);
            run_ip(&["link", "add", &n.veth, "type", "veth", "peer", "name", &peer, "netns", &n.ns]);
            run_ip(&["link", "set", &n.veth, "master", &switch]);
            run_ip(&["link", "set", &n.veth, "up"]);
            run_ip(&["-n", &n.ns, "link", "set", "lo", "up"]);
            run_ip(&["-n", &n.ns, "addr", "add", &format!("{}/24", n.ip), "dev", &peer]);
            run_ip(&["-n", &n.ns, "link", "set", &peer, "up"]);
            std::fs::create_dir_all(&n.run_dir).expect("node dirs");
            super::guest::install_image(&n.root, "tiny", "sheaf_tiny", &["vmlinuz", "initramfs.cpio.gz"]);
        }
        let mut args = vec!["--no-agent"];
        args.extend_from_slice(server_args);
        let server = Server::start_on(&switch_ip, &args);
        let agents = handles.iter().map(|_| None).collect();
        let mut c = Cluster { server, nodes: handles, switch, switch_ip, root: root.to_path_buf(), agents, net };
        for i in 0..nodes {
            c.start_agent(i);
        }
        for i in 0..nodes {
            c.wait_node_ready(i, Duration::from_secs(60));
        }
        c
    }

    /// The `sheaf agent` command line of node `node` (run in its
    /// namespace), authenticated by `token`.
    pub fn agent_command(&self, node: usize, token: &str) -> Command {
        let n = &self.nodes[node];
        let ca = self.server.data_dir().join("pki/ca.crt");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &n.ns, env!("CARGO_BIN_EXE_sheaf"), "agent"])
            .args(["--server", &self.server.url()])
            .arg("--ca-file")
            .arg(&ca)
            .args(["--node-name", &n.name, "--node-ip", &n.ip])
            .arg("--data-dir")
            .arg(&n.root)
            .arg("--run-dir")
            .arg(&n.run_dir)
            .arg("--image-dir")
            .arg(n.root.join("images"))
            .args(["--mgmt-bridge", &n.mgmt_bridge, "--mgmt-cidr", &n.mgmt_cidr])
            .env("SHEAF_TOKEN", token)
            .env_remove("SHEAF_SERVER")
            .env_remove("SHEAF_NODE_NAME")
            .env_remove("SHEAF_DATA_DIR")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts node `node`'s agent (again), logging to its `log_path`.
    pub fn start_agent(&mut self, node: usize) {
        self.kill_agent(node);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.nodes[node].log_path).expect("agent log");
        let child = self
            .agent_command(node, &self.server.token())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sheaf agent");
        self.agents[node] = Some(child);
    }

    /// SIGKILLs node `node`'s agent (its VMs keep running).
    pub fn kill_agent(&mut self, node: usize) {
        if let Some(mut c) = self.agents[node].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILLs every process of node `node`: its agent and everything
    /// that runs in its namespace (QEMUs, engines, replica servers,
    /// dnsmasq), as when the machine loses power.
    pub fn kill_node(&mut self, node: usize) {
        self.kill_agent(node);
        let ns = self.nodes[node].ns.clone();
        for _ in 0..50 {
            let out = Command::new("ip").args(["netns", "pids", &ns]).output().expect("ip netns pids");
            let pids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
            if pids.is_empty() {
                return;
            }
            let _ = Command::new("kill").arg("-9").args(&pids).stderr(Stdio::null()).status();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("processes of {ns} do not die");
    }

    /// Cuts node `node` off the switch (its cable pulled).
    pub fn cut(&self, node: usize) {
        run_ip(&["link", "set", &self.nodes[node].veth, "down"]);
    }

    /// Plugs node `node` back into the switch.
    pub fn reconnect(&self, node: usize) {
        run_ip(&["link", "set", &self.nodes[node].veth, "up"]);
    }

    /// The agent's process id (0 when not running).
    pub fn agent_pid(&self, node: usize) -> u32 {
        self.agents[node].as_ref().map(Child::id).unwrap_or(0)
    }

    /// Runs a command inside node `node`'s namespace.
    pub fn exec(&self, node: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.nodes[node].ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }

    pub fn agent_log(&self, node: usize) -> String {
        std::fs::read_to_string(&self.nodes[node].log_path).unwrap_or_default()
    }

    /// Every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- server\n{}", self.server.log());
        for (i, n) in self.nodes.iter().enumerate() {
            out.push_str(&format!("--- {}\n{}", n.name, self.agent_log(i)));
        }
        out
    }

    /// Waits until Node `node` is Ready.
    pub fn wait_node_ready(&self, node: usize, timeout: Duration) {
        let name = &self.nodes[node].name;
        assert!(
            eventually(timeout, || super::guest::jsonpath(
                &self.server,
                "node",
                name,
                "{.status.conditions[?(@.type==\"Ready\")].status}"
            ) == "True"),
            "node {name} not Ready\n{}",
            self.logs()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.kill_agent(i);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Everything in the namespaces: agents, QEMUs, dnsmasq, storage
        // processes.
        for (ns, _) in &self.nodes {
            for _ in 0..20 {
                let out = Command::new("ip").args(["netns", "pids", ns]).output();
                let pids: Vec<String> = out
                    .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default();
                if pids.is_empty() {
                    break;
                }
                let _ = Command::new("kill").arg("-9").args(&pids).stderr(Stdio::null()).status();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // QEMUs anywhere else that run from the cluster's directories.
        let _ = Command::new("pkill").args(["-9", "-f", &self.root.display().to_string()]).status();
        // The DHCP namespaces of VM networks are not inside a node's.
        for e in std::fs::read_dir(&self.root).into_iter().flatten().flatten() {
            super::guest::remove_vm_networks(&e.path());
        }
        for (ns, veth) in &self.nodes {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = Command::new("ip").args(["link", "del", veth]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.switch]).stderr(Stdio::null()).status();
    }
}

/// Types `command` on the serial console of VMI `uid` under `run_dir`
/// (the unix socket `RUN_DIR/UID/serial.sock`; unix sockets are reachable
/// from every network namespace) until `needle` appears in what the guest
/// prints, typing it again every few seconds (the shell may still be
/// starting); returns everything read. Choose a needle that the typed line
/// itself does not contain (e.g. `echo A-$((6*7))`, needle `A-42`).
pub fn serial_exec(run_dir: &Path, uid: &str, command: &str, needle: &str, timeout: Duration) -> String {
    serial_until(run_dir, uid, command, needle, timeout, Some(Duration::from_secs(3)))
}

/// Types `command` on the serial console of VMI `uid` under `run_dir`,
/// again every `retype` if given (once otherwise), until `needle` appears
/// in what the guest prints; returns everything read.
pub fn serial_until(
    run_dir: &Path,
    uid: &str,
    command: &str,
    needle: &str,
    timeout: Duration,
    retype: Option<Duration>,
) -> String {
    let socket = run_dir.join(uid).join("serial.sock");
    let deadline = Instant::now() + timeout;
    let mut conn = loop {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect to {}: {e}", socket.display());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    conn.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
    let mut seen = Vec::new();
    let mut last_typed: Option<Instant> = None;
    let mut buf = [0u8; 4096];
    loop {
        let again = match (last_typed, retype) {
            (None, _) => true,
            (Some(t), Some(every)) => t.elapsed() > every,
            (Some(_), None) => false,
        };
        if again {
            conn.write_all(format!("\n{command}\n").as_bytes()).expect("write to the serial console");
            last_typed = Some(Instant::now());
        }
        match conn.read(&mut buf) {
            Ok(0) => panic!("the serial console {} closed: {}", socket.display(), String::from_utf8_lossy(&seen)),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the serial console {}: {e}", socket.display()),
        }
        let text = String::from_utf8_lossy(&seen).to_string();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{needle:?} not on the serial console after {command:?}: {text}");
    }
}

/// Waits until the serial log of VMI `uid` under `run_dir` holds `needle`;
/// fails with the log otherwise.
pub fn wait_serial_in(run_dir: &Path, uid: &str, needle: &str, timeout: Duration) {
    let root = run_dir.parent().expect("run_dir has a parent");
    assert_eq!(run_dir.file_name().and_then(|n| n.to_str()), Some("run"), "a node's run_dir is ROOT/run");
    super::guest::wait_serial(root, uid, needle, timeout);
}
