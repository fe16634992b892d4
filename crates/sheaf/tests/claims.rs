//! Claims end to end with kubectl and a real guest: a StorageClass and a
//! PersistentVolumeClaim are applied, the claim is Bound to a Volume of
//! its name, a VM whose disk is the claim boots and writes to it, the
//! claim cannot be deleted while the VM runs (409 naming the VM), it is
//! grown under the running guest, the VM is cloned with its disk while it
//! runs, and `sheaf vm delete --remove-disks`
//! takes the claim and its volume with the VM.

mod support;

use std::time::Duration;

use support::eventually;
use support::guest::{jsonpath, tiny_server, tiny_vm, wait_serial, QemuReaper};

const MANIFESTS: &str = r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: two-copies
provisioner: driver.longhorn.io
allowVolumeExpansion: true
reclaimPolicy: Delete
parameters:
  numberOfReplicas: "2"
  staleReplicaTimeout: "30"
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: disk
spec:
  accessModes: [ReadWriteMany]
  volumeMode: Block
  storageClassName: two-copies
  resources:
    requests:
      storage: 64Mi
"#;

/// The user data: find the claim's disk (the 64 MiB+ one), print its size
/// and what is at 1 MiB, then write the next value there.
const SCRIPT: &str = "          userData: |\n            #!/bin/sh\n            for s in /sys/block/vd*; do [ \"$(cat $s/size)\" -ge 131072 ] && dev=/dev/$(basename $s) && size=$(cat $s/size); done\n            before=$(dd if=$dev bs=512 skip=2048 count=1 2>/dev/null | head -c 9 | tr -d '\\000')\n            case \"$before\" in '') next=VALUE-ONE;; VALUE-ONE) next=VALUE-TWO;; *) next=VALUE-END;; esac\n            printf $next | dd of=$dev bs=512 seek=2048 conv=fsync 2>/dev/null\n            echo \"SHEAF-GUEST size=$size before=${before:-empty} wrote=$next\"\n";

fn vm_with_claim(name: &str, claim: &str) -> String {
    let vm = tiny_vm(name, name)
        .replace(
            "          - name: cloudinit\n            disk:\n              bus: virtio\n",
            "          - name: cloudinit\n            disk:\n              bus: virtio\n          - name: data\n            disk:\n              bus: virtio\n",
        )
        .replace(
            "      volumes:\n",
            &format!("      volumes:\n      - name: data\n        persistentVolumeClaim:\n          claimName: {claim}\n"),
        )
        .replace(&format!("          userData: |\n            #cloud-config\n            # marker: {name}\n"), SCRIPT);
    assert!(vm.contains("claimName") && vm.contains("VALUE-ONE"), "{vm}");
    vm
}

#[test]
fn a_claim_is_a_vm_disk_protected_grown_and_deleted_with_the_vm() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);

    // The default class exists from the start; ours applies as Harvester
    // writes it.
    let classes = s.kubectl_ok(&["get", "sc"]);
    assert!(classes.contains("sheaf") && classes.contains("driver.sheaf.io"), "{classes}");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(MANIFESTS));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "pvc", "disk", "{.status.phase}") == "Bound"),
        "claim not Bound: {}",
        jsonpath(&s, "pvc", "disk", "{.status}")
    );
    let table = s.kubectl_ok(&["get", "pvc"]);
    assert!(table.contains("STATUS") && table.contains("Bound") && table.contains("64Mi"), "{table}");
    assert!(table.contains("two-copies") && table.contains("ReadWriteMany"), "{table}");
    assert_eq!(jsonpath(&s, "volume", "disk", "{.spec.numberOfReplicas}"), "2");
    assert_eq!(jsonpath(&s, "volume", "disk", "{.spec.staleReplicaTimeout}"), "30m");
    let (ok, got) = s.sheaf_cli(&["get", "pvc,sc"]);
    assert!(ok && got.contains("disk") && got.contains("two-copies"), "{got}");

    // A bad class is refused with the known parameters.
    let e = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: bad\nprovisioner: driver.sheaf.io\nparameters:\n  replicas: \"2\"\n"),
    );
    assert!(e.contains("parameters.replicas") && e.contains("numberOfReplicas"), "{e}");

    // The guest writes to the claim's disk.
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&vm_with_claim("writer", "disk")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut uid = String::new();
    assert!(
        eventually(Duration::from_secs(90), || {
            uid = jsonpath(&s, "vmi", "writer", "{.metadata.uid}");
            jsonpath(&s, "vmi", "writer", "{.status.phase}") == "Running"
        }),
        "VMI not running: {}\n{}",
        jsonpath(&s, "vm", "writer", "{.status}"),
        s.log()
    );
    wait_serial(root.path(), &uid, "size=131072 before=empty wrote=VALUE-ONE", Duration::from_secs(90));
    assert_eq!(jsonpath(&s, "volume", "disk", "{.status.state}"), "Attached");

    // In use: refused, naming the VM; nothing deleted.
    let e = s.kubectl_err(&["delete", "pvc", "disk"], None);
    assert!(
        e.contains("claim disk is in use by VirtualMachineInstance writer") && e.contains("sheaf vm stop writer"),
        "{e}"
    );
    assert_eq!(jsonpath(&s, "pvc", "disk", "{.status.phase}"), "Bound");

    // Grown under the running guest: the volume, then the claim's capacity.
    s.kubectl_ok(&[
        "patch",
        "pvc",
        "disk",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}"#,
    ]);
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "pvc", "disk", "{.status.capacity.storage}") == "128Mi"),
        "claim: {}\nvolume: {}",
        jsonpath(&s, "pvc", "disk", "{.status}"),
        jsonpath(&s, "volume", "disk", "{.status}")
    );
    assert_eq!(jsonpath(&s, "volume", "disk", "{.status.size}"), (128u64 << 20).to_string());
    let e = s.kubectl_err(
        &["patch", "pvc", "disk", "--type", "merge", "-p", r#"{"spec":{"resources":{"requests":{"storage":"64Mi"}}}}"#],
        None,
    );
    assert!(e.contains("cannot shrink"), "{e}");

    // Cloned while it runs: the clone's disk is a copy of the claim (it
    // finds VALUE-ONE and writes on), the source runs on untouched.
    let out = s.cli_ok(&["vm", "clone", "writer", "writer-copy", "--start"]);
    assert!(out.contains("VM writer-copy created from writer"), "{out}");
    let e = s.cli_fail(&["vm", "clone", "writer", "writer-copy"]);
    assert!(e.contains("already exists"), "{e}");
    let e = s.cli_fail(&["vm", "clone", "writer", "Bad_Name"]);
    assert!(e.contains("Invalid value") && e.contains("name"), "{e}");
    let mut copy_uid = String::new();
    assert!(
        eventually(Duration::from_secs(120), || {
            copy_uid = jsonpath(&s, "vmi", "writer-copy", "{.metadata.uid}");
            jsonpath(&s, "vmi", "writer-copy", "{.status.phase}") == "Running"
        }),
        "clone not running: {}\nclaim: {}",
        jsonpath(&s, "vm", "writer-copy", "{.status}"),
        jsonpath(&s, "pvc", "writer-copy-data", "{.status}")
    );
    wait_serial(root.path(), &copy_uid, "size=262144 before=VALUE-ONE wrote=VALUE-TWO", Duration::from_secs(90));
    assert_eq!(jsonpath(&s, "vm", "writer-copy", "{.metadata.annotations.sheaf\\.io/cloned-from}"), "default/writer");
    assert_eq!(jsonpath(&s, "vmi", "writer", "{.metadata.uid}"), uid, "the source was restarted");
    s.cli_ok(&["vm", "delete", "writer-copy"]);
    assert!(
        eventually(Duration::from_secs(60), || s.kubectl(&["get", "pvc", "writer-copy-data"]).status.code() == Some(1)),
        "the clone's disk stayed after the clone was deleted"
    );

    // Without --remove-disks and without a terminal, a claim of its own
    // is kept, and said so.
    let keep = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: keep\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 64Mi\n";
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(keep));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let keeper = vm_with_claim("keeper", "keep").replace("runStrategy: Always", "runStrategy: Halted");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&keeper));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ok, out) = s.sheaf_cli(&["vm", "delete", "keeper"]);
    assert!(ok && out.contains("VM keeper deleted") && out.contains("disks kept: keep"), "{out}");
    assert!(eventually(Duration::from_secs(30), || jsonpath(&s, "vm", "keeper", "{.metadata.name}").is_empty()));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(jsonpath(&s, "pvc", "keep", "{.status.phase}"), "Bound");
    assert_eq!(jsonpath(&s, "pvc", "keep", "{.spec.storageClassName}"), "sheaf", "the default class");

    // Deleted with the VM, as asked.
    let (ok, out) = s.sheaf_cli(&["vm", "delete", "writer", "--remove-disks", "disk"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("VM writer deleted") && out.contains("disks deleted with it (once it has stopped): disk"),
        "{out}"
    );
    assert!(
        eventually(Duration::from_secs(120), || jsonpath(&s, "pvc", "disk", "{.metadata.name}").is_empty()
            && jsonpath(&s, "volume", "disk", "{.metadata.name}").is_empty()),
        "claim: {}\nvolume: {}\n{}",
        jsonpath(&s, "pvc", "disk", "{.metadata}"),
        jsonpath(&s, "volume", "disk", "{.metadata}"),
        s.log()
    );
    assert!(
        eventually(Duration::from_secs(60), || s
            .kubectl_ok(&["get", "replicas", "-l", "sheaf.io/volume=disk", "-o", "name"])
            .trim()
            .is_empty()),
        "replicas left: {}",
        s.kubectl_ok(&["get", "replicas"])
    );
}
