//! Sheaf volumes end to end through the API, the CLI and a real guest: a
//! 3-replica volume is created, a VM boots with it as a disk and writes to
//! it, a replica server is killed and comes back rebuilt, the replica set
//! shrinks and grows while the VM runs, snapshots are taken attached and
//! detached, deleting the volume in use is refused, the volume is
//! reverted, cloned and grown, and bad requests get clear errors. A
//! vhost-user volume on a tagged second disk (`--disk`, `--disk-selector`)
//! serves a guest and grows under it.

mod support;

use std::path::Path;
use std::time::Duration;

use support::guest::{jsonpath, tiny_server, tiny_vm_with, wait_serial, ClaimDisk, QemuReaper};
use support::{eventually, Server};

/// The user data: find the volume (the 64 MiB+ disk), print its size and
/// what is at 1 MiB, then write the next value there.
const SCRIPT: &str = "#!/bin/sh\nfor s in /sys/block/vd*; do [ \"$(cat $s/size)\" -ge 131072 ] && dev=/dev/$(basename $s) && size=$(cat $s/size); done\nbefore=$(dd if=$dev bs=512 skip=2048 count=1 2>/dev/null | head -c 9 | tr -d '\\000')\ncase \"$before\" in '') next=VALUE-ONE;; VALUE-ONE) next=VALUE-TWO;; *) next=VALUE-END;; esac\nprintf $next | dd of=$dev bs=512 seek=2048 conv=fsync 2>/dev/null\necho \"SHEAF-GUEST size=$size before=${before:-empty} wrote=$next\"\n";

/// A VM of the tiny guest with Volume `claim` as its second disk.
fn vm_with_volume(name: &str, claim: &str) -> String {
    vm_with_script(name, claim, SCRIPT)
}

fn vm_with_script(name: &str, claim: &str, script: &str) -> String {
    tiny_vm_with(name, &[ClaimDisk { name: "data", kind: "disk", bus: "virtio", claim }], script)
}

/// `kubectl get KIND -o jsonpath=PATH` over all objects of a kind.
fn all_path(s: &Server, kind: &str, path: &str) -> String {
    let out = s.kubectl(&["get", kind, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Starts VM `name` and waits for its instance to run; returns the uid.
fn start(s: &Server, name: &str) -> String {
    s.cli_ok(&["vm", "start", name]);
    running_uid(s, name, "")
}

fn running_uid(s: &Server, name: &str, not: &str) -> String {
    let mut uid = String::new();
    let ok = eventually(Duration::from_secs(90), || {
        uid = jsonpath(s, "vmi", name, "{.metadata.uid}");
        !uid.is_empty() && uid != not && jsonpath(s, "vmi", name, "{.status.phase}") == "Running"
    });
    assert!(ok, "VMI {name} not running: {}\n{}", jsonpath(s, "vmi", name, "{.status}"), s.log());
    uid
}

fn stop(s: &Server, name: &str, volume: &str) {
    s.cli_ok(&["vm", "stop", name]);
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(s, "vmi", name, "{.metadata.name}").is_empty()),
        "VMI {name} did not stop"
    );
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(s, "volume", volume, "{.status.state}") == "Detached"),
        "volume {volume} not detached: {}",
        jsonpath(s, "volume", volume, "{.status}")
    );
}

fn healthy(s: &Server, volume: &str) -> bool {
    healthy_with(s, volume, 3)
}

/// The volume is Healthy with exactly `n` replicas, all Healthy.
fn healthy_with(s: &Server, volume: &str, n: usize) -> bool {
    let states = jsonpath(s, "volume", volume, "{.status.replicas[*].state}");
    jsonpath(s, "volume", volume, "{.status.robustness}") == "Healthy"
        && states.split_whitespace().count() == n
        && states.split_whitespace().all(|x| x == "Healthy")
}

/// The saved command line of the (one) running engine, which a restart
/// after a crash uses, has exactly the replicas the Replica objects have.
fn engine_args_match_replicas(s: &Server, blk: &Path) -> bool {
    let args: String = std::fs::read_dir(blk)
        .map(|d| {
            d.flatten()
                .filter(|f| f.file_name().to_string_lossy().ends_with(".args"))
                .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    // One node: the engine reaches every replica on its unix socket,
    // `r-<replica uid>.sock` (other nodes would use `status.address`).
    let uids = all_path(s, "replicas", "{.items[*].metadata.uid}");
    let uids: Vec<&str> = uids.split_whitespace().collect();
    !uids.is_empty()
        && args.matches("--replica").count() == uids.len()
        && uids.iter().all(|u| args.contains(&format!("r-{u}.sock")))
}

#[test]
fn volumes_serve_guests_survive_replica_loss_and_snapshot_revert_clone_grow() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);

    // Bad input is refused with a message a person can act on.
    let e = s.cli_fail(&["volume", "create", "bad", "--size", "1000"]);
    assert!(e.contains("multiple of 4Ki") && e.contains("4096"), "{e}");
    let e = s.cli_fail(&["volume", "create", "bad", "--size", "1Gi", "--replicas", "0"]);
    assert!(e.contains("numberOfReplicas"), "{e}");

    // A 3-replica volume: three Replica objects, each served.
    s.cli_ok(&["volume", "create", "data", "--size", "64Mi"]);
    assert!(
        eventually(Duration::from_secs(30), || all_path(&s, "replicas", "{.items[*].status.state}")
            == "Running Running Running"),
        "replicas: {}",
        s.kubectl_ok(&["get", "replicas", "-o", "wide"])
    );
    let list = s.cli_ok(&["volume", "list"]);
    assert!(list.contains("data") && list.contains("64Mi") && list.contains("Detached"), "{list}");

    // A VM boots with it and writes.
    s.apply(&vm_with_volume("writer", "data").replace("runStrategy: Always", "runStrategy: Halted"));
    let uid = start(&s, "writer");
    wait_serial(root.path(), &uid, "before=empty wrote=VALUE-ONE", Duration::from_secs(90));
    assert_eq!(jsonpath(&s, "volume", "data", "{.status.state}"), "Attached");
    assert!(
        eventually(Duration::from_secs(30), || healthy(&s, "data")),
        "{}",
        jsonpath(&s, "volume", "data", "{.status}")
    );

    // Kill -9 one replica server: the volume is Degraded, then the agent
    // restarts it and the engine rebuilds it.
    let blk = root.path().join("run").join("blk");
    let replica_uid = all_path(&s, "replicas", "{.items[0].metadata.uid}");
    let pid = std::fs::read_to_string(blk.join(format!("r-{replica_uid}.pid"))).expect("replica pidfile");
    assert!(std::process::Command::new("kill").args(["-9", pid.trim()]).status().expect("kill").success());
    assert!(
        eventually(Duration::from_secs(60), || {
            let log = engine_log(&blk);
            log.contains("replica failed") && log.contains("replica rebuilt")
        }),
        "engine log: {}",
        engine_log(&blk)
    );
    assert!(
        eventually(Duration::from_secs(30), || healthy(&s, "data")),
        "{}",
        jsonpath(&s, "volume", "data", "{.status}")
    );

    // Fewer, then more replicas while the VM runs: the agent gives the
    // engine the new set and keeps the engine's restart command line in
    // step; the new replica is rebuilt under the running guest.
    let replicas = |n: u32| format!("{{\"spec\":{{\"numberOfReplicas\":{n}}}}}");
    s.kubectl_ok(&["patch", "volume", "data", "--type", "merge", "-p", &replicas(2)]);
    assert!(
        eventually(Duration::from_secs(60), || healthy_with(&s, "data", 2) && engine_args_match_replicas(&s, &blk)),
        "{}\n{}",
        jsonpath(&s, "volume", "data", "{.status}"),
        engine_log(&blk)
    );
    s.kubectl_ok(&["patch", "volume", "data", "--type", "merge", "-p", &replicas(3)]);
    assert!(
        eventually(Duration::from_secs(60), || healthy(&s, "data") && engine_args_match_replicas(&s, &blk)),
        "{}\n{}",
        jsonpath(&s, "volume", "data", "{.status}"),
        engine_log(&blk)
    );

    // A snapshot of the attached volume, in order with the guest's writes.
    let out = s.cli_ok(&["volume", "snapshot", "data", "s1"]);
    assert!(out.contains("snapshot s1 of volume data taken"), "{out}");
    let e = s.cli_fail(&["volume", "revert", "data", "s1"]);
    assert!(e.contains("stop the virtual machine first"), "{e}");

    // Deleting the volume while the VM runs is refused, naming the VM, by
    // the CLI (before it deletes any snapshot) and by kubectl.
    let e = s.cli_fail(&["volume", "delete", "data", "--purge"]);
    assert!(e.contains("in use by VirtualMachineInstance writer") && e.contains("sheaf vm stop writer"), "{e}");
    let out = s.kubectl(&["delete", "volume", "data"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("(Conflict)") && err.contains("is in use"), "{err}");
    assert!(s.cli_ok(&["volume", "snapshots", "data"]).contains("s1"));
    stop(&s, "writer", "data");

    // The next run sees VALUE-ONE and writes VALUE-TWO; a detached snapshot.
    let uid = start(&s, "writer");
    wait_serial(root.path(), &uid, "before=VALUE-ONE wrote=VALUE-TWO", Duration::from_secs(90));
    stop(&s, "writer", "data");
    s.cli_ok(&["volume", "snapshot", "data", "s2"]);
    let snaps = s.cli_ok(&["volume", "snapshots", "data"]);
    assert!(snaps.contains("s1") && snaps.contains("s2") && snaps.contains("true"), "{snaps}");

    // Reverting past s2 is refused (s2 would be lost); after deleting s2
    // (its data merges) the revert goes through.
    let e = s.cli_fail(&["volume", "revert", "data", "s1"]);
    assert!(e.contains("newer than"), "{e}");
    s.cli_ok(&["volume", "delete-snapshot", "s2"]);
    s.cli_ok(&["volume", "revert", "data", "s1"]);

    // Grown while attached: the engine grows every replica; the guest sees
    // the new size from its next start.
    let uid = start(&s, "writer");
    wait_serial(root.path(), &uid, "size=131072 before=VALUE-ONE wrote=VALUE-TWO", Duration::from_secs(90));
    s.cli_ok(&["volume", "expand", "data", "--size", "128Mi"]);
    stop(&s, "writer", "data");
    let uid = start(&s, "writer");
    wait_serial(root.path(), &uid, "size=262144 before=VALUE-TWO", Duration::from_secs(90));
    stop(&s, "writer", "data");
    let e = s.cli_fail(&["volume", "expand", "data", "--size", "64Mi"]);
    assert!(e.contains("cannot shrink"), "{e}");

    // A clone of s1 holds VALUE-ONE and boots another VM.
    s.cli_ok(&["volume", "clone", "s1", "copy", "--replicas", "2"]);
    s.apply(&vm_with_volume("reader", "copy").replace("runStrategy: Always", "runStrategy: Halted"));
    let uid = start(&s, "reader");
    wait_serial(root.path(), &uid, "size=131072 before=VALUE-ONE", Duration::from_secs(90));
    stop(&s, "reader", "copy");

    // Deleted with its snapshot, the volume goes to the trash: its data
    // stays, and s1 is cloned out of it again. Purged, it goes with its
    // snapshot; a volume without snapshots goes at once.
    s.kubectl_ok(&["delete", "vm", "writer", "reader"]);
    s.cli_ok(&["volume", "delete", "copy"]);
    let out = s.cli_ok(&["volume", "delete", "data"]);
    assert!(
        out.contains("kept in the trash") && out.contains("s1") && out.contains("sheaf volume purge data"),
        "{out}"
    );
    assert!(eventually(Duration::from_secs(30), || jsonpath(&s, "volume", "data", "{.status.state}") == "Trashed"));
    let trash = s.cli_ok(&["volume", "trash"]);
    assert!(trash.contains("data") && trash.contains("s1"), "{trash}");
    let e = s.cli_fail(&["volume", "snapshot", "data", "s3"]);
    assert!(e.contains("in the trash"), "{e}");
    s.cli_ok(&["volume", "clone", "s1", "again", "--replicas", "1"]);
    s.apply(&vm_with_volume("reader", "again").replace("runStrategy: Always", "runStrategy: Halted"));
    let uid = start(&s, "reader");
    wait_serial(root.path(), &uid, "size=131072 before=VALUE-ONE", Duration::from_secs(90));
    stop(&s, "reader", "again");
    s.kubectl_ok(&["delete", "vm", "reader"]);
    let out = s.cli_ok(&["volume", "purge", "data"]);
    assert!(out.contains("volume data and its 1 snapshot(s) deleted"), "{out}");
    let left = s.kubectl_ok(&["get", "volumesnapshots", "-o", "name"]);
    assert!(!left.contains("s1"), "{left}");
    s.cli_ok(&["volume", "delete", "again"]);
    assert!(
        eventually(Duration::from_secs(30), || all_path(&s, "replicas", "{.items[*].metadata.name}").is_empty()),
        "replicas left: {}",
        s.kubectl_ok(&["get", "replicas"])
    );
    let replicas_dir = s.dir.path().join("data").join("replicas");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_dir(&replicas_dir).map(|d| d.count()).unwrap_or(0) == 0),
        "replica data left in {}",
        replicas_dir.display()
    );
}

fn engine_log(blk: &Path) -> String {
    std::fs::read_dir(blk)
        .map(|d| {
            d.flatten()
                .filter(|f| {
                    f.file_name().to_string_lossy().starts_with("e-")
                        && f.file_name().to_string_lossy().ends_with(".log")
                })
                .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The user data of the vhost-user test: find the volume, write a marker
/// and read it back past the page cache, then report the disk's size
/// every second (in the background, so the guest's init goes on).
const WATCH_SCRIPT: &str = "#!/bin/sh\nfor s in /sys/block/vd*; do [ \"$(cat $s/size)\" -ge 131072 ] && dev=$(basename $s); done\nprintf SHEAF-VHOST-DATA | dd of=/dev/$dev bs=512 seek=2048 conv=fsync 2>/dev/null\necho 3 > /proc/sys/vm/drop_caches\necho \"SHEAF-GUEST roundtrip=$(dd if=/dev/$dev bs=512 skip=2048 count=1 2>/dev/null | head -c 16)\"\n( while true; do echo \"SHEAF-GUEST vsize=$(cat /sys/block/$dev/size)\"; sleep 1; done ) &\n";

#[test]
fn a_vhost_user_volume_on_a_tagged_disk_serves_a_guest_and_grows_while_it_runs() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    // Two disks: the default one and a second one tagged ssd.
    let (default_disk, ssd) = (root.path().join("replicas"), root.path().join("ssd1"));
    let default_flag = format!("default={}", default_disk.display());
    let ssd_flag = format!("ssd1={},tags=ssd+fast", ssd.display());
    let s = tiny_server(root.path(), &["--disk", &default_flag, "--disk", &ssd_flag]);
    // The agent publishes its disks with its first heartbeat.
    let mut disks = String::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            disks = s.kubectl_ok(&["get", "disks", "-o", "wide"]);
            disks.contains("default") && disks.contains("ssd,fast") && disks.contains("true")
        }),
        "{disks}"
    );

    let e = s.cli_fail(&["volume", "create", "bad", "--size", "64Mi", "--frontend", "iscsi"]);
    assert!(e.contains("spec.frontend") && e.contains("vhost-user"), "{e}");
    // No disk has the tag: said at once, naming what is missing.
    let e = s.cli_fail(&["volume", "create", "nowhere", "--size", "64Mi", "--disk-selector", "nvme"]);
    assert!(e.contains("cannot be placed: no disk with tags [nvme] on a Ready node"), "{e}");
    s.cli_ok(&["volume", "delete", "nowhere"]);
    let args = ["volume", "create", "fast", "--size", "64Mi", "--replicas", "2", "--frontend", "vhost-user"];
    s.cli_ok(&[&args[..], &["--disk-selector", "ssd"]].concat());
    assert!(
        eventually(Duration::from_secs(30), || all_path(&s, "replicas", "{.items[*].status.state}")
            == "Running Running"),
        "replicas: {}",
        s.kubectl_ok(&["get", "replicas", "-o", "wide"])
    );
    // Both on the ssd disk: its name in the replicas, their data under it.
    assert_eq!(all_path(&s, "replicas", "{.items[*].spec.diskName}"), "ssd1 ssd1");
    let dirs = all_path(&s, "replicas", "{.items[*].status.dataDir}");
    let uids = all_path(&s, "replicas", "{.items[*].metadata.uid}");
    let want: Vec<String> = uids.split_whitespace().map(|u| ssd.join(u).display().to_string()).collect();
    assert_eq!(dirs.split_whitespace().collect::<Vec<_>>(), want);
    assert!(want.iter().all(|d| Path::new(d).join("replica.json").exists()), "{want:?}");
    assert!(s.kubectl_ok(&["get", "replicas", "-o", "wide"]).contains("ssd1"));
    let vm = vm_with_script("vu", "fast", WATCH_SCRIPT);
    assert!(vm.contains("vsize"), "{vm}");
    s.apply(&vm);
    let uid = running_uid(&s, "vu", "");
    // QEMU has the vhost-user-blk device on the engine's socket, with
    // guest memory shared.
    let cmdline = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .find(|c| c.contains("qemu-system") && c.contains(&uid))
        .unwrap_or_default();
    assert!(
        cmdline.contains("vhost-user-blk-pci") && cmdline.contains(".vhost") && cmdline.contains("share=on"),
        "QEMU command line: {cmdline}"
    );
    wait_serial(root.path(), &uid, "roundtrip=SHEAF-VHOST-DATA", Duration::from_secs(90));
    wait_serial(root.path(), &uid, "vsize=131072", Duration::from_secs(30));

    // Grow it while the guest runs: the guest sees the new size without a
    // restart (vhost-user-blk config change), in the same VMI.
    s.cli_ok(&["volume", "expand", "fast", "--size", "128Mi"]);
    wait_serial(root.path(), &uid, "vsize=262144", Duration::from_secs(30));
    assert_eq!(jsonpath(&s, "vmi", "vu", "{.metadata.uid}"), uid, "the VM was not restarted");
    assert!(
        eventually(Duration::from_secs(30), || healthy_with(&s, "fast", 2)),
        "{}",
        jsonpath(&s, "volume", "fast", "{.status}")
    );
    stop(&s, "vu", "fast");
}
