//! Replicas on other nodes, over TCP: two network namespaces stand in for
//! two more nodes (each joined to this one by a veth pair), each running a
//! `sheaf blk replica` on a TCP address; the engine runs here with a local
//! replica on a unix socket. The link to one node is cut (packets vanish,
//! the TCP connection stays open) and the volume goes on without it after
//! the replica timeout; the link comes back and the replica is rebuilt by
//! copying only what it missed. A remote replica process is SIGKILLed and
//! rebuilt. At the end a remote replica alone serves every write.
//!
//! Every process has the cluster key: the TCP connections between
//! namespaces start with the key handshake.
//!
//! Needs root (namespaces, veth) and qemu-io (qemu-utils).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::blk::{log_count, log_has_n, qemu_io, Procs};

/// Two namespaces and their veth pairs; removed on drop.
struct Nodes {
    names: Vec<String>,
    host_links: Vec<String>,
    /// 10.N.<i+1>.0/30 per node: .1 here, .2 in the namespace.
    net: u8,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Nodes {
    fn new(count: usize) -> Nodes {
        let id = std::process::id() % 10_000;
        let net = 200 + (std::process::id() % 50) as u8;
        let mut nodes = Nodes { names: Vec::new(), host_links: Vec::new(), net };
        for i in 0..count {
            let ns = format!("sheaf-bt{id}-{i}");
            let host = format!("sbt{id}h{i}");
            let peer = format!("sbt{id}p{i}");
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            ip(&["netns", "add", &ns]);
            nodes.names.push(ns.clone());
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
            nodes.host_links.push(host.clone());
            ip(&["link", "set", &peer, "netns", &ns]);
            ip(&["addr", "add", &format!("10.{net}.{}.1/30", i + 1), "dev", &host]);
            ip(&["link", "set", &host, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("10.{net}.{}.2/30", i + 1), "dev", &peer]);
            ip(&["-n", &ns, "link", "set", &peer, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        nodes
    }

    fn address(&self, i: usize) -> String {
        format!("tcp:10.{}.{}.2:7001", self.net, i + 1)
    }

    /// Cuts (or restores) the network of node `i`: its firewall drops
    /// every packet, so open connections hang rather than close, as with
    /// a pulled cable.
    fn partition(&self, i: usize, cut: bool) {
        let ns = &self.names[i];
        let nft = |script: &str| {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write as _;
                    c.stdin.take().expect("stdin").write_all(script.as_bytes())?;
                    c.wait_with_output()
                })
                .expect("nft (nftables)");
            assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
        };
        if cut {
            nft("table inet partition {\n chain in { type filter hook input priority 0; policy drop; }\n chain out { type filter hook output priority 0; policy drop; }\n}\n");
        } else {
            nft("delete table inet partition\n");
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for l in &self.host_links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
    }
}

fn spawn(prefix: &[&str], args: &[&str], log: &Path) -> Child {
    // Appended to, so a restarted process's lines add to the count.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log");
    let mut c = if prefix.is_empty() {
        Command::new(env!("CARGO_BIN_EXE_sheaf"))
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(env!("CARGO_BIN_EXE_sheaf"));
        c
    };
    // `ip netns exec` execs the program: the child is the sheaf process.
    c.args(args).stdout(Stdio::null()).stderr(log).spawn().expect("spawn sheaf")
}

/// The cluster key every process of the test is given (in `dir`).
fn key_file(dir: &Path) -> String {
    let path = dir.join("cluster.key");
    if !path.exists() {
        std::fs::write(&path, "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0\n").expect("key file");
    }
    path.display().to_string()
}

/// A replica of volume `vol`, here (`ns` None, on a unix socket) or in a
/// namespace on TCP port 7001.
fn replica(dir: &Path, name: &str, ns: Option<&str>, listen: &str) -> Child {
    let data = dir.join(name).display().to_string();
    let key = key_file(dir);
    let args = [
        "blk",
        "replica",
        "--dir",
        &data,
        "--volume",
        "vol",
        "--size",
        "64Mi",
        "--listen",
        listen,
        "--auth-key-file",
        &key,
    ];
    let log = dir.join(format!("{name}.log"));
    let before = log_count(&log, &["replica serving"]);
    let c = match ns {
        Some(ns) => spawn(&["ip", "netns", "exec", ns], &args, &log),
        None => spawn(&[], &args, &log),
    };
    assert!(log_has_n(&log, &["replica serving"], before + 1, Duration::from_secs(20)), "replica {name} did not start");
    if let Some(p) = listen.strip_prefix("unix:") {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(p).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    c
}

fn write(mib: u64, p: u8) -> String {
    format!("write -f -P {p} {mib}M 1M")
}
fn verify(mib: u64, p: u8) -> String {
    format!("read -P {p} {mib}M 1M")
}

fn engine(dir: &Path, nbd: &Path, replicas: &[String], log: &str) -> Child {
    let nbd_s = nbd.display().to_string();
    let key = key_file(dir);
    let mut args =
        vec!["blk", "engine", "--volume", "vol", "--nbd", &nbd_s, "--replica-timeout", "2", "--auth-key-file", &key];
    for r in replicas {
        args.extend(["--replica", r.as_str()]);
    }
    let c = spawn(&[], &args, &dir.join(log));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nbd.exists() {
        assert!(Instant::now() < deadline, "engine did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    c
}

/// The MiB copied by the last rebuild of `replica`, from the engine log.
fn last_copied_mib(log: &Path, replica: &str) -> Option<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text.lines().rev().find(|l| l.contains("replica rebuilt") && l.contains(replica))?;
    line.split("copied_mib=").nth(1)?.split_whitespace().next()?.parse().ok()
}

#[test]
fn remote_replicas_over_tcp_survive_a_partition_and_a_kill() {
    let t = tempfile::tempdir().expect("tempdir");
    let d: PathBuf = t.path().to_path_buf();
    let nodes = Nodes::new(2);
    let local = format!("unix:{}", d.join("a.sock").display());
    let (b, c) = (nodes.address(0), nodes.address(1));
    let mut procs = Procs(vec![
        replica(&d, "a", None, &local),
        replica(&d, "b", Some(&nodes.names[0]), &b),
        replica(&d, "c", Some(&nodes.names[1]), &c),
    ]);
    let nbd = d.join("vol.nbd");
    let elog = d.join("engine.log");
    procs.0.push(engine(&d, &nbd, &[local.clone(), b.clone(), c.clone()], "engine.log"));
    for r in [&b, &c] {
        assert!(log_has_n(&elog, &["replica rebuilt", r], 1, Duration::from_secs(30)), "{r} not in service over TCP");
    }
    let (ok, out) = qemu_io(&nbd, &[write(0, 1), write(1, 2), verify(0, 1), verify(1, 2)]);
    assert!(ok, "{out}");

    // Partition node b: its replica stops answering; after the 2 s
    // timeout the engine fails it and acknowledges with a and c.
    nodes.partition(0, true);
    let started = Instant::now();
    let (ok, out) = qemu_io(&nbd, &[write(2, 3), verify(2, 3)]);
    let took = started.elapsed();
    assert!(ok, "writes go on without the partitioned replica: {out}");
    assert!(took < Duration::from_secs(15), "the write waited {took:?} for the partitioned replica");
    assert!(log_count(&elog, &["replica failed", &b, "no answer within"]) >= 1, "b was not failed by the timeout");

    // The link comes back: b is rebuilt by copying what it missed (the
    // MiB written meanwhile), not the whole volume.
    nodes.partition(0, false);
    assert!(
        log_has_n(&elog, &["replica rebuilt", &b], 2, Duration::from_secs(60)),
        "b not rebuilt after the partition: {}",
        std::fs::read_to_string(&elog).unwrap_or_default()
    );
    let copied = last_copied_mib(&elog, &b).expect("copied_mib in the log");
    assert!(copied <= 2, "delta rebuild copied {copied} MiB of a 64 MiB volume with 3 MiB written");

    // SIGKILL the replica process on node c; writes go on; it comes back
    // and is rebuilt.
    let _ = procs.0[2].kill();
    let _ = procs.0[2].wait();
    let (ok, out) = qemu_io(&nbd, &[write(3, 4)]);
    assert!(ok, "{out}");
    procs.0[2] = replica(&d, "c", Some(&nodes.names[1]), &c);
    assert!(log_has_n(&elog, &["replica rebuilt", &c], 2, Duration::from_secs(60)), "c not rebuilt after its kill");
    let (ok, out) = qemu_io(&nbd, &[write(4, 5)]);
    assert!(ok, "{out}");

    // Every write is on remote replica c: a fresh engine with c alone
    // (reached over TCP) reads them all back.
    drop(procs);
    let mut only = Procs(vec![replica(&d, "c", Some(&nodes.names[1]), &c)]);
    let nbd2 = d.join("c-only.nbd");
    only.0.push(engine(&d, &nbd2, std::slice::from_ref(&c), "engine-c.log"));
    let cmds: Vec<String> = (0..5).map(|i| verify(i, i as u8 + 1)).collect();
    let (ok, out) = qemu_io(&nbd2, &cmds);
    assert!(ok, "remote replica c alone has every acknowledged write: {out}");
}
