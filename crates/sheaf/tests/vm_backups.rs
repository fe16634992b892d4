//! VM backups end to end (Harvester's VirtualMachineBackup and
//! VirtualMachineRestore): a running guest with two data volumes is backed
//! up with both disks taken at one point (the guest held while they are
//! snapshotted, then going on), replaced in place from the backup after it
//! changed a disk, then deleted with its volumes and restored as a new VM
//! that boots and reads what it had written.

mod support;

use std::path::Path;
use std::time::Duration;

use support::counter::{type_once, wait_shell};
use support::guest::{jsonpath, tiny_server, tiny_vm_with, ClaimDisk, QemuReaper};
use support::{eventually, Server};

fn running(s: &Server, name: &str, not: &str) -> String {
    let mut uid = String::new();
    let ok = eventually(Duration::from_secs(120), || {
        uid = jsonpath(s, "vmi", name, "{.metadata.uid}");
        !uid.is_empty() && uid != not && jsonpath(s, "vmi", name, "{.status.phase}") == "Running"
    });
    assert!(ok, "VM {name} not running: {}\n{}", jsonpath(s, "vmi", name, "{.status}"), s.log());
    uid
}

fn gone(s: &Server, kind: &str, name: &str) {
    assert!(
        eventually(Duration::from_secs(90), || jsonpath(s, kind, name, "{.metadata.name}").is_empty()),
        "{kind} {name} still there: {}",
        jsonpath(s, kind, name, "{.status}")
    );
}

/// What the guest reads at the start of `dev`.
fn marker(run: &Path, uid: &str, dev: &str) -> String {
    let out = type_once(
        run,
        uid,
        &format!(
            "echo M-$(dd if={dev} bs=512 count=1 iflag=direct 2>/dev/null | head -c 16 | tr -d '\\000')-END$((1+1))"
        ),
        "-END2",
        Duration::from_secs(60),
    );
    let at = out.rfind("M-").expect("a marker") + 2;
    out[at..].split("-END").next().unwrap_or_default().to_string()
}

fn write_marker(run: &Path, uid: &str, dev: &str, text: &str) {
    type_once(
        run,
        uid,
        &format!("printf {text} | dd of={dev} bs=512 conv=sync,fsync 2>/dev/null; echo WROTE-$((6*7))"),
        "WROTE-42",
        Duration::from_secs(60),
    );
}

fn restore(name: &str, target: &str, new_vm: bool) -> String {
    format!(
        "apiVersion: harvesterhci.io/v1beta1\nkind: VirtualMachineRestore\nmetadata:\n  name: {name}\nspec:\n  target:\n    apiGroup: kubevirt.io\n    kind: VirtualMachine\n    name: {target}\n  virtualMachineBackupName: app-b1\n  virtualMachineBackupNamespace: default\n  newVM: {new_vm}\n"
    )
}

fn complete(s: &Server, restore: &str) {
    let ok = eventually(Duration::from_secs(120), || {
        let err = jsonpath(s, "vmrestore", restore, "{.status.error.message}");
        assert!(err.is_empty(), "restore {restore} failed: {err}");
        jsonpath(s, "vmrestore", restore, "{.status.complete}") == "true"
    });
    assert!(ok, "restore {restore} not complete: {}\n{}", jsonpath(s, "vmrestore", restore, "{.status}"), s.log());
}

#[test]
fn a_vm_is_backed_up_at_one_point_replaced_and_restored_as_a_new_vm() {
    let root = tempfile::tempdir().expect("tempdir");
    let run = root.path().join("run");
    let _reaper = QemuReaper(run.clone());
    let s = tiny_server(root.path(), &[]);
    let target = root.path().join("backups");
    std::fs::create_dir_all(&target).expect("target dir");
    s.apply(&format!(
        "apiVersion: sheaf.io/v1alpha1\nkind: BackupTarget\nmetadata:\n  name: nfs\nspec:\n  filesystem:\n    path: {}\n",
        target.display()
    ));
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "backuptarget", "nfs", "{.status.available}") == "true"),
        "{}",
        jsonpath(&s, "backuptarget", "nfs", "{.status}")
    );

    s.cli_ok(&["volume", "create", "app-a", "--size", "32Mi", "--replicas", "1"]);
    s.cli_ok(&["volume", "create", "app-b", "--size", "32Mi", "--replicas", "1"]);
    let disks = [
        ClaimDisk { name: "a", kind: "disk", bus: "virtio", claim: "app-a" },
        ClaimDisk { name: "b", kind: "disk", bus: "virtio", claim: "app-b" },
    ];
    s.apply(&tiny_vm_with("app", &disks, "#cloud-config\n"));
    let uid = running(&s, "app", "");
    wait_shell(&run, &uid);
    write_marker(&run, &uid, "/dev/vdb", "ALPHA");
    write_marker(&run, &uid, "/dev/vdc", "BETA");

    // The backup: both disks at one point; the guest (no guest agent) is
    // paused for that moment and then goes on.
    s.apply(
        "apiVersion: harvesterhci.io/v1beta1\nkind: VirtualMachineBackup\nmetadata:\n  name: app-b1\nspec:\n  source:\n    apiGroup: kubevirt.io\n    kind: VirtualMachine\n    name: app\n  type: backup\n",
    );
    let ok = eventually(Duration::from_secs(180), || {
        let err = jsonpath(&s, "vmbackup", "app-b1", "{.status.error.message}");
        assert!(err.is_empty(), "VM backup failed: {err}");
        jsonpath(&s, "vmbackup", "app-b1", "{.status.readyToUse}") == "true"
    });
    assert!(ok, "VM backup not ready: {}\n{}", jsonpath(&s, "vmbackup", "app-b1", "{.status}"), s.log());
    assert_eq!(jsonpath(&s, "vmbackup", "app-b1", "{.status.consistency}"), "paused");
    assert_eq!(jsonpath(&s, "vmbackup", "app-b1", "{.status.volumeBackups[*].volumeName}"), "a b");
    assert_eq!(jsonpath(&s, "backup", "app-b1-a", "{.status.phase}"), "Completed");
    assert_eq!(jsonpath(&s, "backup", "app-b1-b", "{.status.phase}"), "Completed");
    assert!(target.join("vms/default/app-b1.json").exists());
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(
            &s,
            "vmi",
            "app",
            "{.metadata.annotations.vmi\\.sheaf\\.io/frozen}"
        )
        .is_empty()),
        "the guest was not let go: {}\n{}",
        jsonpath(&s, "vmi", "app", "{.metadata.annotations}"),
        s.log()
    );
    assert_eq!(jsonpath(&s, "vmi", "app", "{.status.conditions[?(@.type==\"Paused\")].status}"), "");
    // It runs on: it answers and writes.
    write_marker(&run, &uid, "/dev/vdb", "CHANGED");
    assert_eq!(marker(&run, &uid, "/dev/vdb"), "CHANGED");

    // Replace the VM from the backup: it must be stopped first.
    s.apply(&restore("replace", "app", false));
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "vmrestore", "replace", "{.status.conditions[0].message}")
            .contains("stop it")),
        "{}",
        jsonpath(&s, "vmrestore", "replace", "{.status}")
    );
    s.cli_ok(&["vm", "stop", "app"]);
    gone(&s, "vmi", "app");
    complete(&s, "replace");
    let deleted = jsonpath(&s, "vmrestore", "replace", "{.status.deletedVolumes}");
    assert!(deleted.contains("app-a") && deleted.contains("app-b"), "{deleted}");
    // Replaced volumes with snapshots go to the trash, not away.
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "volume", "app-a", "{.status.state}") == "Trashed"),
        "{}",
        jsonpath(&s, "volume", "app-a", "{.status}")
    );
    // Its run strategy is the backed-up one (Always): it starts again.
    let uid2 = running(&s, "app", &uid);
    wait_shell(&run, &uid2);
    assert_eq!(marker(&run, &uid2, "/dev/vdb"), "ALPHA", "the replaced VM has the backed-up data");
    assert_eq!(marker(&run, &uid2, "/dev/vdc"), "BETA");

    // The VM and its volumes go; the backup restores a new VM.
    let claims = jsonpath(&s, "vm", "app", "{.spec.template.spec.volumes[*].persistentVolumeClaim.claimName}");
    s.kubectl_ok(&["delete", "vm", "app", "--wait=true", "--timeout=90s"]);
    gone(&s, "vmi", "app");
    for c in claims.split_whitespace() {
        s.cli_ok(&["volume", "delete", c, "--purge"]);
    }
    s.apply(&restore("fresh", "app2", true));
    complete(&s, "fresh");
    let uid3 = running(&s, "app2", "");
    wait_shell(&run, &uid3);
    assert_eq!(marker(&run, &uid3, "/dev/vdb"), "ALPHA");
    assert_eq!(marker(&run, &uid3, "/dev/vdc"), "BETA");
    assert_eq!(
        jsonpath(&s, "vm", "app2", "{.spec.template.spec.volumes[*].persistentVolumeClaim.claimName}"),
        "app2-a app2-b"
    );

    // Bad input: a restore over a VM of another name, a backup of a VM
    // that does not exist.
    s.apply(&restore("wrong", "app2", false));
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "vmrestore", "wrong", "{.status.error.message}")
            .contains("can only replace")),
        "{}",
        jsonpath(&s, "vmrestore", "wrong", "{.status}")
    );
    s.apply(
        "apiVersion: harvesterhci.io/v1beta1\nkind: VirtualMachineBackup\nmetadata:\n  name: ghost\nspec:\n  source:\n    kind: VirtualMachine\n    name: nope\n",
    );
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "vmbackup", "ghost", "{.status.error.message}")
            .contains("nope does not exist")),
        "{}",
        jsonpath(&s, "vmbackup", "ghost", "{.status}")
    );

    // Deleting the VM backup removes its backups and manifest.
    s.kubectl_ok(&["delete", "vmbackup", "app-b1", "--wait=true", "--timeout=60s"]);
    gone(&s, "backup", "app-b1-a");
    assert!(!target.join("vms/default/app-b1.json").exists());
    assert!(!target.join("volumes/default/app-a/app-b1-a.json").exists());

    // Its chunks are no one's now: garbage collection removes them (one
    // chunk of data per volume; the rest were zeros).
    let chunks = |dir: &Path| walk(&dir.join("chunks")).len();
    assert_eq!(chunks(&target), 2);
    s.kubectl_ok(&["annotate", "backuptarget", "nfs", "sheaf.io/gc=first", "--overwrite"]);
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(
            &s,
            "backuptarget",
            "nfs",
            "{.status.garbageCollection.request}"
        ) == "first"),
        "{}",
        jsonpath(&s, "backuptarget", "nfs", "{.status}")
    );
    assert_eq!(jsonpath(&s, "backuptarget", "nfs", "{.status.garbageCollection.chunksDeleted}"), "2");
    assert_eq!(chunks(&target), 0);

    // A schedule backs the new VM up every minute and keeps the newest.
    s.apply(
        "apiVersion: harvesterhci.io/v1beta1\nkind: ScheduleVMBackup\nmetadata:\n  name: nightly\nspec:\n  cron: '* * * * *'\n  retain: 1\n  maxFailure: 2\n  vmbackup:\n    source:\n      apiGroup: kubevirt.io\n      kind: VirtualMachine\n      name: app2\n    type: backup\n",
    );
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: harvesterhci.io/v1beta1\nkind: ScheduleVMBackup\nmetadata:\n  name: bad\nspec:\n  cron: '61 * * *'\n  vmbackup:\n    source:\n      kind: VirtualMachine\n      name: app2\n"),
    );
    assert!(err.contains("spec.cron") && err.contains("5"), "{err}");
    let ready = || {
        let out = s.kubectl_ok(&[
            "get",
            "vmbackup",
            "-l",
            "harvesterhci.io/svmbackup=nightly",
            "-o",
            "jsonpath={.items[*].status.readyToUse}",
        ]);
        out.split_whitespace().filter(|r| *r == "true").count()
    };
    assert!(
        eventually(Duration::from_secs(150), || ready() >= 1),
        "the schedule made no backup: {}\n{}",
        jsonpath(&s, "schedulevmbackup", "nightly", "{.status}"),
        s.log()
    );
    assert!(!jsonpath(&s, "schedulevmbackup", "nightly", "{.status.nextRun}").is_empty());
    assert_eq!(chunks(&target), 2, "the scheduled backup shares nothing gone");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
