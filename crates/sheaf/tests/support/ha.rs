//! An HA control plane on one machine: `sheaf server`s, each in a network
//! namespace of its own with its own etcd member, wired to a "physical
//! switch" (a bridge in the root namespace), plus spare namespaces for
//! agents.
//!
//! ```text
//!   root namespace: bridge sha<pid> (10.2XX.Y.1/24), kubectl and the test's clients
//!     │ namespace sha<pid>n0: 10.2XX.Y.10  sheaf server --cluster-init (+ etcd member s0)
//!     │ namespace sha<pid>n1: 10.2XX.Y.11  sheaf server --server s0 --token … (+ etcd s1)
//!     │ namespace sha<pid>n2: 10.2XX.Y.12  sheaf server --server s0 --token … (+ etcd s2)
//!     └ namespace sha<pid>n3: 10.2XX.Y.13  spare (an agent)
//! ```
//!
//! Each namespace has its own loopback, so every server uses etcd's
//! default ports. Subnets derive from the test process's pid in a range
//! of their own (10.216.0.0–10.231.255.255), apart from [`super::nodes`].
//! Dropping the [`ControlPlane`] kills every process in the namespaces
//! (servers, their etcd members, agents) and removes the namespaces, the
//! veths and the switch.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::eventually;

pub const API_PORT: u16 = 6443;

/// One namespace on the switch.
#[derive(Clone, Debug)]
pub struct Slot {
    pub ns: String,
    pub ip: String,
    /// Host end of its veth.
    veth: String,
}

/// The switch and the namespaces; dropping it kills everything in them.
struct Net {
    switch: String,
    slots: Vec<Slot>,
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The process ids in namespace `ns`.
pub fn pids_in(ns: &str) -> Vec<u32> {
    let out = Command::new("ip").args(["netns", "pids", ns]).output().expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// SIGKILLs every process in namespace `ns`, until none is left.
pub fn kill_all_in(ns: &str) {
    for _ in 0..50 {
        let pids = pids_in(ns);
        if pids.is_empty() {
            return;
        }
        let _ = Command::new("kill").arg("-9").args(pids.iter().map(u32::to_string)).stderr(Stdio::null()).status();
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Net {
    fn new(count: usize) -> Net {
        let pid = std::process::id();
        let k = pid % 4096;
        let prefix = format!("10.{}.{}", 216 + k / 256, k % 256);
        let switch = format!("sha{pid}");
        let slots: Vec<Slot> = (0..count)
            .map(|i| Slot {
                ns: format!("sha{pid}n{i}"),
                ip: format!("{prefix}.{}", 10 + i),
                veth: format!("sha{pid}h{i}"),
            })
            .collect();
        // Leftovers of an earlier process with this pid.
        for s in &slots {
            let _ = Command::new("ip").args(["netns", "del", &s.ns]).output();
            let _ = Command::new("ip").args(["link", "del", &s.veth]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &switch]).output();
        let mut net = Net { switch: switch.clone(), slots: Vec::new() };
        run_ip(&["link", "add", &switch, "type", "bridge"]);
        run_ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &switch]);
        run_ip(&["link", "set", &switch, "up"]);
        for (i, s) in slots.iter().enumerate() {
            net.slots.push(s.clone());
            let peer = format!("sha{pid}p{i}");
            run_ip(&["netns", "add", &s.ns]);
            run_ip(&["link", "add", &s.veth, "type", "veth", "peer", "name", &peer, "netns", &s.ns]);
            run_ip(&["link", "set", &s.veth, "master", &switch]);
            run_ip(&["link", "set", &s.veth, "up"]);
            run_ip(&["-n", &s.ns, "link", "set", "lo", "up"]);
            run_ip(&["-n", &s.ns, "addr", "add", &format!("{}/24", s.ip), "dev", &peer]);
            run_ip(&["-n", &s.ns, "link", "set", &peer, "up"]);
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for s in &self.slots {
            kill_all_in(&s.ns);
        }
        for s in &self.slots {
            let _ = Command::new("ip").args(["netns", "del", &s.ns]).status();
            let _ = Command::new("ip").args(["link", "del", &s.veth]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.switch]).stderr(Stdio::null()).status();
    }
}

/// One `sheaf server` of the control plane.
pub struct HaServer {
    pub name: String,
    pub slot: Slot,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl HaServer {
    pub fn url(&self) -> String {
        format!("https://{}:{API_PORT}", self.slot.ip)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn etcd_log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("etcd.log")).unwrap_or_default()
    }

    /// The server process's id (0 when not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The process ids in its namespace other than the server's: its etcd.
    pub fn etcd_pids(&self) -> Vec<u32> {
        let me = self.pid();
        pids_in(&self.slot.ns).into_iter().filter(|p| *p != me).collect()
    }

    /// kubectl against this server, as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(self.dir.join("kubeconfig")).args(args);
        cmd.env("HOME", &self.dir).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().expect("kubectl is installed");
        if let Some(input) = stdin {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// kubectl's stdout, or "" when it failed.
    pub fn kubectl_out(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        } else {
            String::new()
        }
    }
}

/// Servers and spare namespaces on one switch.
pub struct ControlPlane {
    pub servers: Vec<HaServer>,
    /// Namespaces without a server (for agents).
    pub spare: Vec<Slot>,
    pub root: PathBuf,
    agents: Vec<Child>,
    /// Dropped last, after the processes were killed.
    net: Net,
}

impl ControlPlane {
    /// The switch and `servers + spare` namespaces; no process yet.
    pub fn new(root: &Path, servers: usize, spare: usize) -> ControlPlane {
        let net = Net::new(servers + spare);
        let servers = net.slots[..servers]
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let dir = root.join(format!("s{i}"));
                std::fs::create_dir_all(&dir).expect("server dir");
                HaServer { name: format!("s{i}"), slot: slot.clone(), dir, child: None }
            })
            .collect();
        let spare = net.slots[net.slots.len() - spare..].to_vec();
        ControlPlane { servers, spare, root: root.to_path_buf(), agents: Vec::new(), net }
    }

    /// The `sheaf server` command of server `i` in its namespace, with
    /// `extra` arguments.
    pub fn server_command(&self, i: usize, extra: &[&str]) -> Command {
        let s = &self.servers[i];
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &s.slot.ns, env!("CARGO_BIN_EXE_sheaf"), "server", "--no-agent"])
            .arg("--data-dir")
            .arg(s.data_dir())
            .args(["--listen", &format!("{}:{API_PORT}", s.slot.ip), "--node-name", &s.name])
            .args(extra)
            .env_remove("SHEAF_TOKEN")
            .env_remove("SHEAF_NODE_NAME")
            .env_remove("SHEAF_DATA_DIR")
            .env_remove("SHEAF_LISTEN")
            .stdin(Stdio::null());
        cmd
    }

    /// Starts server `i`: the first with `--cluster-init`, the others
    /// joining server 0 with its join token; returns once it serves.
    pub fn start_server(&mut self, i: usize) {
        let extra: Vec<String> = if i == 0 {
            vec!["--cluster-init".into()]
        } else {
            vec!["--server".into(), self.servers[0].url(), "--token".into(), self.join_token()]
        };
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.servers[i].dir.join("server.log"))
            .expect("server log");
        let child =
            self.server_command(i, &extra).stdout(Stdio::null()).stderr(log).spawn().expect("start sheaf server");
        self.servers[i].child = Some(child);
        self.wait_serving(i, Duration::from_secs(60));
    }

    /// Waits until server `i` answers authenticated requests.
    pub fn wait_serving(&mut self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = &mut self.servers[i];
            if let Some(c) = s.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("server {} exited with {status}: {}\n{}", s.name, s.log(), s.etcd_log());
                }
            }
            if s.data_dir().join("admin.kubeconfig").exists() && std::fs::metadata(s.dir.join("kubeconfig")).is_err() {
                let out = Command::new(env!("CARGO_BIN_EXE_sheaf"))
                    .args(["kubeconfig", "--data-dir"])
                    .arg(s.data_dir())
                    .args(["--server", &s.url()])
                    .output()
                    .expect("sheaf kubeconfig");
                if out.status.success() {
                    std::fs::write(s.dir.join("kubeconfig"), &out.stdout).expect("write kubeconfig");
                }
            }
            if s.dir.join("kubeconfig").exists() && s.kubectl(&["get", "--raw", "/readyz"]).status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "server {} not serving: {}\n{}", s.name, s.log(), s.etcd_log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The join token of the first server.
    pub fn join_token(&self) -> String {
        std::fs::read_to_string(self.servers[0].data_dir().join("join.token")).expect("join.token").trim().to_string()
    }

    /// The admin token (the same on every server).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.servers[0].data_dir().join("admin.token")).expect("admin.token").trim().to_string()
    }

    /// The cluster CA's PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.servers[0].data_dir().join("pki/ca.crt")).expect("ca.crt")
    }

    /// Every server's URL, comma-separated, in the order of `order`.
    pub fn urls(&self, order: &[usize]) -> String {
        order.iter().map(|i| self.servers[*i].url()).collect::<Vec<_>>().join(",")
    }

    /// SIGKILLs server `i` and its etcd member at once (every process in
    /// its namespace).
    pub fn kill_server(&mut self, i: usize) {
        kill_all_in(&self.servers[i].slot.ns);
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERMs server `i` and waits for it to exit; true when it and
    /// everything else in its namespace (its etcd member) is gone within
    /// `timeout` (what is left is then SIGKILLed).
    pub fn terminate_server(&mut self, i: usize, timeout: Duration) -> bool {
        let Some(mut child) = self.servers[i].child.take() else { return true };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + timeout;
        let mut clean = false;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) && pids_in(&self.servers[i].slot.ns).is_empty() {
                clean = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        kill_all_in(&self.servers[i].slot.ns);
        let _ = child.kill();
        let _ = child.wait();
        clean
    }

    /// Starts `sheaf agent` named `name` in spare namespace `spare`, with
    /// `servers` as --server and the join token; logs to ROOT/NAME.log.
    pub fn start_agent(&mut self, spare: usize, name: &str, servers: &str) -> PathBuf {
        let slot = self.spare[spare].clone();
        let dir = self.root.join(name);
        std::fs::create_dir_all(dir.join("run")).expect("agent dirs");
        let log_path = self.root.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("agent log");
        let child = Command::new("ip")
            .args(["netns", "exec", &slot.ns, env!("CARGO_BIN_EXE_sheaf"), "agent", "--server", servers])
            .args(["--node-name", name, "--node-ip", &slot.ip, "--mgmt-network", "user"])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--run-dir")
            .arg(dir.join("run"))
            .env("SHEAF_TOKEN", self.join_token())
            .env_remove("SHEAF_SERVER")
            .env_remove("SHEAF_NODE_NAME")
            .env_remove("SHEAF_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sheaf agent");
        self.agents.push(child);
        log_path
    }

    /// Every server's log (and its etcd's), for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in &self.servers {
            out.push_str(&format!("--- {}\n{}--- {} etcd\n{}", s.name, s.log(), s.name, s.etcd_log()));
        }
        out
    }

    /// Waits until `f` holds, or fails with every log.
    #[track_caller]
    pub fn wait_for(&self, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
        assert!(eventually(timeout, f), "{what} (after {timeout:?})\n{}", self.logs());
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for c in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // `net` (dropped after this) kills the rest: etcd members and
        // whatever the agents started.
        let _ = &self.net;
    }
}
