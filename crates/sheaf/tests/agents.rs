//! Node agents as processes of their own: a server in the root network
//! namespace and two `sheaf agent`s, each in a namespace of its own on a
//! shared switch, talking to the server over HTTPS ([`support::nodes`]).
//! Both Nodes register with their addresses, a VM pinned to each node
//! boots there and gets its address from that node's DHCP, its serial
//! console answers commands, the agent cleans up after `kubectl delete
//! vm`, and a restarted agent adopts the VM it left running. Needs root,
//! QEMU and `scripts/build-test-guests.sh`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::eventually;
use support::guest::{jsonpath, tiny_vm};
use support::nodes::{serial_exec, wait_serial_in, Cluster};

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The tiny guest, pinned to `node` by its template's nodeSelector.
fn pinned_vm(name: &str, node: &str) -> String {
    let vm = tiny_vm(name, &format!("hello-from-{node}"));
    let pinned = vm.replacen(
        "      terminationGracePeriodSeconds: 5\n",
        &format!(
            "      nodeSelector:\n        kubernetes.io/hostname: {node}\n      terminationGracePeriodSeconds: 5\n"
        ),
        1,
    );
    assert_ne!(pinned, vm, "the manifest has the expected shape");
    pinned
}

fn qemu_pid(run_dir: &Path, uid: &str) -> u32 {
    std::fs::read_to_string(run_dir.join(uid).join("qemu.pid")).expect("qemu.pid").trim().parse().expect("a pid")
}

/// The processes in network namespace `ns`.
fn pids_in(ns: &str) -> Vec<u32> {
    let out = Command::new("ip").args(["netns", "pids", ns]).output().expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

#[test]
fn agents_on_two_nodes_run_pinned_vms() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(root.path(), 2);
    let s = &c.server;

    // Both nodes registered, Ready (Cluster::start waited), with the
    // address they were given.
    for n in &c.nodes {
        let ip = jsonpath(s, "node", &n.name, "{.status.addresses[?(@.type==\"InternalIP\")].address}");
        assert_eq!(ip, n.ip, "InternalIP of {}", n.name);
    }

    // A VM pinned to each node runs there: QEMU in that node's namespace,
    // the marker on its serial console, an address from that node's DHCP.
    let mut uids = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let name = format!("vm-{i}");
        s.apply(&pinned_vm(&name, &n.name));
        assert!(
            eventually(Duration::from_secs(90), || jsonpath(s, "vmi", &name, "{.status.phase}") == "Running"),
            "VMI {name} not Running: {}\n{}",
            jsonpath(s, "vmi", &name, "{.status}"),
            c.logs()
        );
        assert_eq!(jsonpath(s, "vmi", &name, "{.status.nodeName}"), n.name);
        let uid = jsonpath(s, "vmi", &name, "{.metadata.uid}");
        let pid = qemu_pid(&n.run_dir, &uid);
        assert!(pids_in(&n.ns).contains(&pid), "QEMU {pid} of {name} runs in {}'s namespace", n.name);
        uids.push(uid);
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let name = format!("vm-{i}");
        let uid = &uids[i];
        wait_serial_in(&n.run_dir, uid, &format!("SHEAF-GUEST marker=hello-from-{}", n.name), Duration::from_secs(90));
        let ip = jsonpath(s, "vmi", &name, "{.status.interfaces[0].ipAddress}");
        assert!(ip.starts_with(&format!("{}.", n.mgmt_prefix())), "address {ip:?} of {name} is not in {}", n.mgmt_cidr);
        wait_serial_in(&n.run_dir, uid, &format!("SHEAF-GUEST ip=eth0 {ip}/24"), Duration::from_secs(90));
        wait_serial_in(&n.run_dir, uid, "SHEAF-GUEST ready", Duration::from_secs(60));
        // The node reaches its guest on its management bridge.
        let ping = c.exec(i, &["ping", "-c", "1", "-W", "2", &ip]);
        assert!(ping.status.success(), "ping {ip} in {}: {}", n.ns, String::from_utf8_lossy(&ping.stdout));

        // A command on the guest's serial console, and its answer.
        let out = serial_exec(
            &n.run_dir,
            uid,
            "echo ANSWER-$((6*7)) $(ip -4 -o addr show dev eth0 | awk '{print $4}')",
            &format!("ANSWER-42 {ip}/24"),
            Duration::from_secs(60),
        );
        assert!(out.contains("ANSWER-42"), "{out}");
    }

    // Node 0's agent is killed: its VM keeps running. Started again, it
    // adopts the VM: same instance, same QEMU, still Running.
    let (n0, uid0) = (c.nodes[0].clone(), uids[0].clone());
    let pid0 = qemu_pid(&n0.run_dir, &uid0);
    c.kill_agent(0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(pid_alive(pid0), "QEMU survives its agent");
    assert_eq!(jsonpath(&c.server, "vmi", "vm-0", "{.status.phase}"), "Running");
    c.start_agent(0);
    c.wait_node_ready(0, Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(30), || c.agent_log(0).matches("sheaf agent connected").count() >= 2),
        "the restarted agent did not connect: {}",
        c.agent_log(0)
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(jsonpath(&c.server, "vmi", "vm-0", "{.metadata.uid}"), uid0, "same VMI\n{}", c.logs());
    assert_eq!(jsonpath(&c.server, "vmi", "vm-0", "{.status.phase}"), "Running", "{}", c.logs());
    assert!(pid_alive(pid0), "same QEMU after the agent restart");
    assert_eq!(qemu_pid(&n0.run_dir, &uid0), pid0);
    let out = serial_exec(&n0.run_dir, &uid0, "echo AGAIN-$((7*7))", "AGAIN-49", Duration::from_secs(30));
    assert!(out.contains("AGAIN-49"), "{out}");

    // Deleting the VMs: the (restarted) agents stop QEMU and clean up.
    for (i, n) in c.nodes.iter().enumerate() {
        let name = format!("vm-{i}");
        let uid = &uids[i];
        let pid = qemu_pid(&n.run_dir, uid);
        let tap = sheaf_agent::network::tap_name(uid, 0);
        assert!(c.exec(i, &["ip", "link", "show", &tap]).status.success(), "tap {tap} in {}", n.ns);
        c.server.kubectl_ok(&["delete", "vm", &name]);
        assert!(eventually(Duration::from_secs(60), || !pid_alive(pid)), "QEMU of {name} stopped\n{}", c.logs());
        assert!(
            eventually(Duration::from_secs(30), || !c.server.kubectl(&["get", "vmi", &name]).status.success()),
            "VMI {name} deleted\n{}",
            c.logs()
        );
        assert!(eventually(Duration::from_secs(20), || !n.run_dir.join(uid).exists()), "runtime directory removed");
        assert!(
            eventually(Duration::from_secs(20), || !c.exec(i, &["ip", "link", "show", &tap]).status.success()),
            "tap {tap} left behind in {}",
            n.ns
        );
    }

    // An agent with a token the server does not accept says so and exits.
    let out = c.agent_command(1, "not-the-token").output().expect("sheaf agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an agent with a wrong token exits non-zero: {stderr}");
    assert!(stderr.contains("the server refused the token"), "{stderr}");
    // Without --node-ip, the node's address is its source address towards
    // the server (here, its address on the switch).
    let scratch = root.path().join("scratch").display().to_string();
    let ca = c.server.data_dir().join("pki/ca.crt").display().to_string();
    let url = c.server.url();
    let sheaf = env!("CARGO_BIN_EXE_sheaf");
    let args = [sheaf, "agent", "--server", &url, "--token", "wrong", "--ca-file", &ca, "--data-dir", &scratch];
    let out = c.exec(1, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("the server refused the token"), "{stderr}");
    assert!(stderr.contains(&format!("ip={}", c.nodes[1].ip)), "the node's address is found: {stderr}");
    // The node's real agent is unaffected.
    c.wait_node_ready(1, Duration::from_secs(5));

    // The join token alone (no CA file): the CA comes from the server and
    // is checked against the token's hash.
    let join = std::fs::read_to_string(c.server.data_dir().join("join.token")).expect("join.token");
    assert!(join.starts_with("SHEAF1::"), "{join}");
    let joined = root.path().join("joined").display().to_string();
    let run = root.path().join("joined-run").display().to_string();
    let mut agent = std::process::Command::new("ip")
        .args(["netns", "exec", &c.nodes[1].ns, sheaf, "agent", "--server", &url, "--node-name", "joined"])
        .args(["--data-dir", &joined, "--run-dir", &run, "--mgmt-network", "user"])
        .env("SHEAF_TOKEN", join.trim())
        .stderr(std::fs::File::create(root.path().join("joined.log")).expect("log"))
        .spawn()
        .expect("agent with a join token");
    let ready = support::eventually(Duration::from_secs(60), || {
        c.server.kubectl(&["get", "node", "joined", "-o", "jsonpath={.status.conditions[0].status}"]).stdout == b"True"
    });
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        ready,
        "the node did not join: {}",
        std::fs::read_to_string(root.path().join("joined.log")).unwrap_or_default()
    );
    // A token naming another CA is refused before anything is sent.
    let forged = format!("SHEAF1::{}::{}", "0".repeat(64), join.trim().rsplit("::").next().unwrap_or_default());
    let args = [sheaf, "agent", "--server", &url, "--token", &forged, "--data-dir", &scratch];
    let out = c.exec(1, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is not the one the join token names"), "{stderr}");
}

/// Mistakes in the flags are reported before anything is contacted.
#[test]
fn agent_flag_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sheaf"))
            .arg("agent")
            .args(args)
            .args(["--data-dir", &dir.path().display().to_string()])
            .env_remove("SHEAF_TOKEN")
            .env_remove("SHEAF_SERVER")
            .output()
            .expect("sheaf agent");
        assert!(!out.status.success(), "sheaf agent {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let missing = dir.path().join("missing-ca.crt").display().to_string();
    let e = agent(&["--server", "https://127.0.0.1:1", "--token", "t", "--ca-file", &missing]);
    assert!(e.contains("cannot read the cluster's certificate authority") && e.contains(&missing), "{e}");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "not a certificate").expect("write");
    let ca = ca.display().to_string();
    let e = agent(&["--server", "http://127.0.0.1:6443", "--token", "t", "--ca-file", &ca]);
    assert!(e.contains("must start with https://"), "{e}");
    let e = agent(&["--server", "127.0.0.1:6443", "--token", "t", "--ca-file", &ca]);
    assert!(e.contains("is not valid"), "{e}");
    let e = agent(&["--server", "https://127.0.0.1:6443", "--token", "t", "--ca-file", &ca]);
    assert!(e.contains("--ca-file") && e.contains("no PEM certificate"), "{e}");
    let e = agent(&["--server", "https://127.0.0.1:6443", "--ca-file", &ca]);
    assert!(e.contains("--token"), "{e}");
}
