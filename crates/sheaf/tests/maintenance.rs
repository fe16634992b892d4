//! Maintenance mode on a node (network namespaces as nodes, each with its
//! own agent): `sheaf node maintain` cordons it, live-migrates its two
//! migratable VMs (one with a 2-replica volume) to the other nodes, where
//! they keep running as the same instances, and stops the VM that cannot
//! migrate (an emptyDisk); `sheaf node unmaintain` gives the node back and
//! starts that VM again.

mod support;

use std::time::Duration;

use support::eventually;
use support::guest::{jsonpath, tiny_vm, tiny_vm_with, ClaimDisk};
use support::nodes::Cluster;

fn scratch_vm(name: &str) -> String {
    let vm = tiny_vm(name, "scratch");
    let vm = vm.replace(
        "          - name: cloudinit\n            disk:\n              bus: virtio\n",
        "          - name: cloudinit\n            disk:\n              bus: virtio\n          - name: scratch\n            disk:\n              bus: virtio\n",
    );
    let vm = vm.replace(
        "      volumes:\n",
        "      volumes:\n      - name: scratch\n        emptyDisk:\n          capacity: 64Mi\n",
    );
    assert!(vm.contains("emptyDisk"), "{vm}");
    vm
}

#[test]
fn maintenance_moves_vms_away_and_gives_the_node_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(root.path(), 3);
    let s = &c.server;
    let (n0, n1, n2) = (&c.nodes[0].name, &c.nodes[1].name, &c.nodes[2].name);
    s.cli_ok(&["volume", "create", "data", "--size", "64Mi", "--replicas", "2"]);
    // Everything starts on node-0.
    s.cli_ok(&["node", "cordon", n1]);
    s.cli_ok(&["node", "cordon", n2]);
    s.apply(&tiny_vm_with(
        "with-disk",
        &[ClaimDisk { name: "data", kind: "disk", bus: "virtio", claim: "data" }],
        "#cloud-config\n",
    ));
    s.apply(&tiny_vm("plain", "plain"));
    s.apply(&scratch_vm("scratch"));
    let on = |name: &str| jsonpath(s, "vmi", name, "{.status.phase} {.status.nodeName}");
    for vm in ["with-disk", "plain", "scratch"] {
        assert!(
            eventually(Duration::from_secs(120), || on(vm) == format!("Running {n0}")),
            "{vm}: {}\n{}",
            jsonpath(s, "vmi", vm, "{.status}"),
            c.logs()
        );
    }
    let uid = |name: &str| jsonpath(s, "vmi", name, "{.metadata.uid}");
    let (disk_uid, plain_uid) = (uid("with-disk"), uid("plain"));
    s.cli_ok(&["node", "uncordon", n1]);
    s.cli_ok(&["node", "uncordon", n2]);

    let (ok, out) = s.sheaf_cli(&["node", "maintain", n0, "--timeout", "300"]);
    assert!(ok, "{out}\n{}", c.logs());
    assert!(out.contains("every VM has left"), "{out}");
    assert_eq!(jsonpath(s, "node", n0, "{.spec.unschedulable}"), "true");
    assert_eq!(jsonpath(s, "node", n0, "{.metadata.annotations.harvesterhci\\.io/maintain-status}"), "completed");
    // The migratable ones run elsewhere as the same instances.
    for (vm, was) in [("with-disk", &disk_uid), ("plain", &plain_uid)] {
        let now = jsonpath(s, "vmi", vm, "{.metadata.uid} {.status.phase} {.status.nodeName}");
        let w: Vec<&str> = now.split_whitespace().collect();
        assert!(
            w.len() == 3 && (w[0], w[1]) == (was.as_str(), "Running"),
            "{vm} did not migrate: {now:?}\nmigrations: {}\n{}",
            s.kubectl_ok(&["get", "vmim", "-o", "yaml"]),
            c.logs()
        );
        assert!(w[2] == n1 || w[2] == n2, "{vm} on {}", w[2]);
    }
    // The one with node-local data was stopped, and remembers why.
    assert!(eventually(Duration::from_secs(30), || jsonpath(s, "vmi", "scratch", "{.metadata.name}").is_empty()));
    assert_eq!(jsonpath(s, "vm", "scratch", "{.spec.runStrategy}"), "Halted");
    assert_eq!(
        jsonpath(s, "vm", "scratch", "{.metadata.annotations.sheaf\\.io/stopped-for-maintenance}"),
        format!("{n0}:Always")
    );
    let events = s.kubectl_ok(&["get", "events", "--field-selector", "reason=MaintenanceCompleted", "-o", "name"]);
    assert!(!events.trim().is_empty(), "no MaintenanceCompleted event");

    // Back in service: schedulable, and the stopped VM runs again.
    s.cli_ok(&["node", "unmaintain", n0]);
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(s, "node", n0, "{.spec.unschedulable}").is_empty()),
        "{}",
        jsonpath(s, "node", n0, "{.spec}")
    );
    assert!(
        eventually(Duration::from_secs(120), || jsonpath(s, "vmi", "scratch", "{.status.phase}") == "Running"),
        "{}\n{}",
        jsonpath(s, "vm", "scratch", "{.metadata.annotations} {.spec.runStrategy}"),
        c.logs()
    );
    assert_eq!(jsonpath(s, "vm", "scratch", "{.spec.runStrategy}"), "Always");
}
