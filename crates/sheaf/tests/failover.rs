//! Failover: a node that loses power and its network (every process in
//! its namespace SIGKILLed, its link to the switch cut) while its VM
//! writes a counter with fsync to a 2-replica volume. The VM runs again on
//! the node with the other replica within 60 s, with every acknowledged
//! write; when the dead node comes back its agent runs no second copy,
//! and its replica is brought up to date.

mod support;

use std::time::{Duration, Instant};

use support::counter;
use support::eventually;
use support::guest::{jsonpath, tiny_vm_with, ClaimDisk};
use support::nodes::Cluster;

#[test]
fn a_dead_nodes_vm_runs_elsewhere_with_every_acknowledged_write() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::start(root.path(), 3);
    let s = &c.server;
    s.cli_ok(&["volume", "create", "data", "--size", "64Mi", "--replicas", "2"]);
    // The VM may run only where a replica is: when its node dies it runs
    // on the other one, whose engine then reaches the dead node's replica
    // over TCP when it returns.
    let holders: Vec<String> = s
        .kubectl_ok(&["get", "replicas", "-o", "jsonpath={.items[*].spec.nodeName}"])
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(holders.len(), 2, "replicas: {}", s.kubectl_ok(&["get", "replicas", "-o", "yaml"]));
    assert_ne!(holders[0], holders[1], "the replicas share a node");
    for h in &holders {
        s.kubectl_ok(&["label", "node", h, "sheaf.test/pool=data"]);
    }
    let vm = tiny_vm_with(
        "keeper",
        &[ClaimDisk { name: "data", kind: "disk", bus: "virtio", claim: "data" }],
        "#cloud-config\n",
    )
    .replacen(
        "      terminationGracePeriodSeconds: 5\n",
        "      nodeSelector:\n        sheaf.test/pool: data\n      terminationGracePeriodSeconds: 5\n",
        1,
    );
    s.apply(&vm);
    assert!(
        eventually(Duration::from_secs(120), || jsonpath(s, "vmi", "keeper", "{.status.phase}") == "Running"),
        "{}\n{}",
        jsonpath(s, "vmi", "keeper", "{.status}"),
        c.logs()
    );
    let uid = jsonpath(s, "vmi", "keeper", "{.metadata.uid}");
    let node = jsonpath(s, "vmi", "keeper", "{.status.nodeName}");
    let dead = c.nodes.iter().position(|n| n.name == node).expect("its node");
    counter::start(&c.nodes[dead].run_dir, &uid, "/dev/vdb");
    std::thread::sleep(Duration::from_secs(3));
    let acked = counter::acked(&c.nodes[dead].run_dir, &uid);
    assert!(acked > 0, "nothing acknowledged before the failure");

    // Power and network gone at once.
    let lost = Instant::now();
    c.kill_node(dead);
    c.cut(dead);
    let s = &c.server;
    let back = || {
        let now = jsonpath(s, "vmi", "keeper", "{.metadata.uid} {.status.phase} {.status.nodeName}");
        let w: Vec<&str> = now.split_whitespace().collect();
        (w.len() == 3 && w[0] != uid && w[1] == "Running").then(|| w[2].to_string())
    };
    assert!(
        eventually(Duration::from_secs(90), || back().is_some()),
        "the VM did not run again elsewhere: {}\nevents: {}\n{}",
        jsonpath(s, "vmi", "keeper", "{.status}"),
        s.kubectl_ok(&["get", "events", "-A"]),
        c.logs()
    );
    let took = lost.elapsed();
    let now_on = back().expect("running");
    eprintln!("failover: running on {now_on} {took:?} after the node was lost");
    assert_ne!(now_on, node);
    assert!(took < Duration::from_secs(60), "failover took {took:?} (at most 60 s)");
    let events = s.kubectl_ok(&["get", "events", "--field-selector", "reason=NodeUnresponsive", "-o", "name"]);
    assert!(!events.trim().is_empty(), "no NodeUnresponsive event");

    // Every acknowledged write survived, read through the new node's engine.
    let new_uid = jsonpath(s, "vmi", "keeper", "{.metadata.uid}");
    let alive = c.nodes.iter().position(|n| n.name == now_on).expect("node");
    counter::wait_shell(&c.nodes[alive].run_dir, &new_uid);
    let on_disk = counter::on_disk(&c.nodes[alive].run_dir, &new_uid, "/dev/vdb");
    assert!(on_disk >= acked, "the guest acknowledged {acked} before the failure, the disk holds {on_disk}");

    // The dead node comes back: no second copy; its replica catches up.
    c.reconnect(dead);
    c.start_agent(dead);
    c.wait_node_ready(dead, Duration::from_secs(60));
    let s = &c.server;
    std::thread::sleep(Duration::from_secs(10));
    let qemus = String::from_utf8_lossy(
        &std::process::Command::new("pgrep").args(["-af", "qemu-system"]).output().expect("pgrep").stdout,
    )
    .to_string();
    let dead_run = c.nodes[dead].run_dir.display().to_string();
    assert!(!qemus.contains(&dead_run), "the returned node runs a VM: {qemus}");
    assert_eq!(jsonpath(s, "vmi", "keeper", "{.metadata.uid} {.status.nodeName}"), format!("{new_uid} {now_on}"));
    assert!(
        eventually(Duration::from_secs(90), || jsonpath(s, "volume", "data", "{.status.robustness}") == "Healthy"),
        "the returned node's replica was not rebuilt: {}\n{}",
        jsonpath(s, "volume", "data", "{.status}"),
        c.logs()
    );
    assert_eq!(counter::on_disk(&c.nodes[alive].run_dir, &new_uid, "/dev/vdb"), on_disk);
}
