//! Live migration across nodes (network namespaces on a switch, each with
//! its own `sheaf agent`): a VM whose disk is a 2-replica volume writes a
//! counter with fsync while a guest on a third node pings it over a VXLAN
//! VM network; `sheaf vm migrate` moves it to the other node. No
//! acknowledged write is lost, the ping gap is measured, the VMI is bound
//! to the target with the downtime in its status, the volume's engine
//! runs on the target, and nothing of the VM is left on the source.

mod support;

use std::time::{Duration, Instant};

use support::eventually;
use support::guest::{jsonpath, tiny_vm_with, ClaimDisk};
use support::nodes::Cluster;
use support::vmnet::{guest_ip, network, pool_cidrs, vm_on};
use support::{counter, nodes::serial_exec};

/// A VM on net-a with the claim `data` as /dev/vdb, on a node labelled
/// `sheaf.test/pool=movers`.
fn mover(name: &str) -> String {
    let vm = tiny_vm_with(
        name,
        &[ClaimDisk { name: "data", kind: "disk", bus: "virtio", claim: "data" }],
        "#cloud-config\n",
    );
    let vm = vm.replacen(
        "      terminationGracePeriodSeconds: 5\n",
        "      nodeSelector:\n        sheaf.test/pool: movers\n      terminationGracePeriodSeconds: 5\n",
        1,
    );
    let vm = vm.replace(
        "          - name: default\n            masquerade: {}\n",
        "          - name: default\n            masquerade: {}\n          - name: net-a\n            bridge: {}\n",
    );
    let vm = vm.replace(
        "      - name: default\n        pod: {}\n",
        "      - name: default\n        pod: {}\n      - name: net-a\n        multus:\n          networkName: net-a\n",
    );
    assert!(vm.contains("multus") && vm.contains("sheaf.test/pool"), "{vm}");
    vm
}

#[test]
fn a_vm_moves_to_another_node_without_losing_writes_or_its_address() {
    let root = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(root.path(), 3);
    let s = &c.server;
    let (pa, _) = pool_cidrs();
    s.apply(&network("net-a", 10, &pa));
    for n in &c.nodes[..2] {
        s.kubectl_ok(&["label", "node", &n.name, "sheaf.test/pool=movers"]);
    }
    s.cli_ok(&["volume", "create", "data", "--size", "64Mi", "--replicas", "2"]);
    s.apply(&mover("mover"));
    s.apply(&vm_on("pinger", "net-a", Some(&c.nodes[2].name)));
    let running = |name: &str| {
        assert!(
            eventually(Duration::from_secs(120), || jsonpath(s, "vmi", name, "{.status.phase}") == "Running"),
            "VMI {name} not Running: {}\n{}",
            jsonpath(s, "vmi", name, "{.status}"),
            c.logs()
        );
        jsonpath(s, "vmi", name, "{.metadata.uid}")
    };
    let (uid, pinger) = (running("mover"), running("pinger"));
    let source = jsonpath(s, "vmi", "mover", "{.status.nodeName}");
    let (src, dst) = if source == c.nodes[0].name { (0, 1) } else { (1, 0) };
    assert_eq!(source, c.nodes[src].name, "the mover runs on a labelled node");
    let diag = || format!("pools: {}\n{}", s.kubectl_ok(&["get", "ippool", "-o", "yaml"]), c.logs());
    let ip = guest_ip(&c.nodes[src].run_dir, &uid, "eth1", &pa, &diag);
    guest_ip(&c.nodes[2].run_dir, &pinger, "eth1", &pa, &diag);

    // The workload: fsync'd counter writes on the 2-replica volume, and
    // pings from the third node every 100 ms.
    counter::start(&c.nodes[src].run_dir, &uid, "/dev/vdb");
    serial_exec(
        &c.nodes[2].run_dir,
        &pinger,
        &format!("ping -q -i 0.1 -w 40 {ip} > /tmp/ping.log 2>&1 & echo PING-UP-$((3+3))"),
        "PING-UP-6",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(3));
    let before = counter::acked(&c.nodes[src].run_dir, &uid);
    assert!(before > 0, "the writer acknowledged nothing before the migration");

    let started = Instant::now();
    let (ok, out) = s.sheaf_cli(&["vm", "migrate", "mover", "--node", &c.nodes[dst].name, "--timeout", "180"]);
    assert!(ok, "{out}\n{}", c.logs());
    let took = started.elapsed();
    assert!(out.contains("migrated from") && out.contains("downtime"), "{out}\n{}", c.logs());
    eprintln!("{out}(migration took {took:?} end to end)");

    // Bound to the target, with the figures in its status.
    assert_eq!(jsonpath(s, "vmi", "mover", "{.status.nodeName}"), c.nodes[dst].name);
    assert_eq!(jsonpath(s, "vmi", "mover", "{.metadata.labels.kubevirt\\.io/nodeName}"), c.nodes[dst].name);
    assert_eq!(jsonpath(s, "vmi", "mover", "{.metadata.uid}"), uid, "the same VMI, not a restart");
    let state = |k: &str| jsonpath(s, "vmi", "mover", &format!("{{.status.migrationState.{k}}}"));
    assert_eq!(state("completed"), "true");
    assert_eq!(state("sourceNode"), c.nodes[src].name);
    assert_eq!(state("tls"), "psk", "the stream was not encrypted");
    let downtime: u64 = state("downtimeMilliseconds").parse().expect("downtime in the VMI's status");
    let phase = s.kubectl_ok(&["get", "vmim", "-o", "jsonpath={.items[0].status.phase}"]);
    assert_eq!(phase, "Succeeded", "{}", s.kubectl_ok(&["get", "vmim", "-o", "yaml"]));
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(s, "vmi", "mover", "{.status.phase}") == "Running"
            && jsonpath(s, "volume", "data", "{.status.attachedTo}") == c.nodes[dst].name),
        "after the migration: {}\nvolume: {}\n{}",
        jsonpath(s, "vmi", "mover", "{.status}"),
        jsonpath(s, "volume", "data", "{.status}"),
        c.logs()
    );

    // The guest kept writing through the move; every acknowledged write is
    // on the disk, read through the target's engine.
    std::thread::sleep(Duration::from_secs(2));
    let (acked, on_disk) = counter::stop(&c.nodes[dst].run_dir, &uid, "/dev/vdb");
    assert!(acked > before, "no write was acknowledged after the migration ({before} → {acked})");
    assert!(on_disk == acked || on_disk == acked + 1, "acknowledged {acked}, but the disk holds {on_disk}");

    // The pinger on the third node kept reaching the guest.
    let summary = serial_exec(
        &c.nodes[2].run_dir,
        &pinger,
        "wait; grep -E 'transmitted' /tmp/ping.log; echo PING-DONE-$((4+4))",
        "PING-DONE-8",
        Duration::from_secs(60),
    );
    let line = summary.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{summary}"));
    let nums: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    let (sent, received) = (nums[0], nums[1]);
    let gap_ms = (sent - received) * 100;
    eprintln!("ping during the migration: {line} → gap ≈ {gap_ms} ms; QEMU downtime {downtime} ms");
    assert!(received > 0 && gap_ms <= 3000, "the guest was unreachable for about {gap_ms} ms: {line}");

    // Nothing of the VM is left on the source.
    let src_dir = c.nodes[src].run_dir.join(&uid);
    assert!(eventually(Duration::from_secs(15), || !src_dir.exists()), "{} is left", src_dir.display());
    let procs = String::from_utf8_lossy(
        &std::process::Command::new("pgrep").args(["-af", "qemu-system"]).output().expect("pgrep").stdout,
    )
    .to_string();
    assert!(!procs.contains(&src_dir.display().to_string()), "a QEMU still runs on the source: {procs}");
    let blk = c.nodes[src].run_dir.join("blk");
    let engines: Vec<String> = std::fs::read_dir(&blk)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("e-") && n.ends_with(".pid"))
                .collect()
        })
        .unwrap_or_default();
    assert!(engines.is_empty(), "engines left on the source: {engines:?}");

    // And straight back: the node it left takes it again (the previous
    // target's bookkeeping must not touch it), with its data.
    let (ok, out) = s.sheaf_cli(&["vm", "migrate", "mover", "--node", &c.nodes[src].name, "--timeout", "180"]);
    assert!(ok, "{out}\n{}", c.logs());
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(
            s,
            "vmi",
            "mover",
            "{.metadata.uid} {.status.phase} {.status.nodeName}"
        ) == format!("{uid} Running {}", c.nodes[src].name)),
        "after moving back: {}",
        jsonpath(s, "vmi", "mover", "{.status}")
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(jsonpath(s, "vmi", "mover", "{.metadata.uid} {.status.phase}"), format!("{uid} Running"));
    assert_eq!(counter::on_disk(&c.nodes[src].run_dir, &uid, "/dev/vdb"), on_disk, "the data moved back with it");
}

#[test]
fn migrations_that_cannot_work_fail_with_the_reason() {
    let root = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(root.path(), 2);
    let s = &c.server;
    // Pinned to its node by hostname: no other node fits.
    s.apply(
        &vm_on("pinned", "net-x", Some(&c.nodes[0].name))
            .replace("          - name: net-x\n            bridge: {}\n", "")
            .replace("      - name: net-x\n        multus:\n          networkName: net-x\n", ""),
    );
    assert!(
        eventually(Duration::from_secs(120), || jsonpath(s, "vmi", "pinned", "{.status.phase}") == "Running"),
        "{}",
        c.logs()
    );
    let e = s.cli_fail(&["vm", "migrate", "pinned", "--timeout", "60"]);
    assert!(e.contains("no node can take") && e.contains("nodeSelector"), "{e}");
    // A VMI that does not exist.
    let e = s.cli_fail(&["vm", "migrate", "ghost", "--timeout", "60"]);
    assert!(e.contains("does not exist"), "{e}");
    // virtctl's way: PUT .../virtualmachines/NAME/migrate makes the object.
    let put = |vm: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H"])
            .arg(format!("Authorization: Bearer {}", s.token()))
            .args(["-H", "Content-Type: application/json", "-d", "{}"])
            .arg(format!(
                "{}/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/{vm}/migrate",
                s.url()
            ))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(put("pinned"), "202");
    let made = s.kubectl_ok(&["get", "vmim", "-o", "jsonpath={.items[*].metadata.name}"]);
    assert!(made.contains("kubevirt-migrate-vm-"), "{made}");
    assert_eq!(put("ghost"), "404", "no such VM");
    // The VM kept running where it was.
    assert_eq!(jsonpath(s, "vmi", "pinned", "{.status.phase}"), "Running");
    assert_eq!(jsonpath(s, "vmi", "pinned", "{.status.nodeName}"), c.nodes[0].name);
}
