//! Booting from an image (slow: two full Debian guests under TCG): the
//! Debian cloud image that `scripts/build-test-guests.sh full` builds is
//! served as qcow2 from a loopback HTTP server and imported as a
//! VirtualMachineImage with kubectl; two PersistentVolumeClaims of the
//! image's StorageClass become volumes on the one shared base; two VMs
//! whose root file system is on those claims boot, run their cloud-init
//! user data from the image's cloud-init, and one's writes stay its own.

mod support;

use std::time::Duration;

use support::guest::{apply_running, guest_dir, install_image, server_with_images, wait_serial, QemuReaper};
use support::{eventually, http_server, Server};

fn jsonpath(s: &Server, kind: &str, name: &str, path: &str) -> String {
    support::guest::jsonpath(s, kind, name, path)
}

fn vm(name: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        cpu:
          cores: 1
        memory:
          guest: 768Mi
        firmware:
          kernelBoot:
            kernelArgs: root=LABEL=rootfs rw console=ttyS0
            container:
              image: sheaf/full
              kernelPath: /vmlinuz
              initrdPath: /initrd.img
        devices:
          disks:
          - name: root
            disk:
              bus: virtio
          - name: cloudinit
            disk:
              bus: virtio
      volumes:
      - name: root
        persistentVolumeClaim:
          claimName: {name}-root
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #cloud-config
            runcmd:
              - echo "SHEAF-BOOT {name} $(head -1 /etc/os-release) before=$(cat /var/sheaf-who 2>/dev/null || echo none)" > /dev/ttyS0
              - echo {name} > /var/sheaf-who
              - sync
"#
    )
}

fn claim(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\nspec:\n  accessModes: [ReadWriteOnce]\n  volumeMode: Block\n  storageClassName: sheaf-image-default-debian\n  resources:\n    requests:\n      storage: 10Gi\n"
    )
}

#[test]
fn two_vms_boot_from_one_imported_image() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    // The kernel and initrd come from the container image; the root file
    // system from the claim made from the VirtualMachineImage.
    install_image(root.path(), "full", "sheaf_full", &["vmlinuz", "initrd.img"]);
    let s = server_with_images(root.path(), &[]);
    let url = format!("{}/disk.qcow2", http_server(&guest_dir().join("full")));

    s.apply(&format!(
            "apiVersion: harvesterhci.io/v1beta1\nkind: VirtualMachineImage\nmetadata:\n  name: debian\nspec:\n  displayName: Debian 12\n  sourceType: download\n  url: {url}\n  storageClassParameters:\n    numberOfReplicas: \"1\"\n"
        ),
    );
    assert!(
        eventually(Duration::from_secs(180), || {
            jsonpath(&s, "vmimage", "debian", "{.status.conditions[?(@.type==\"Imported\")].status}") == "True"
        }),
        "image not imported: {}\n{}",
        jsonpath(&s, "vmimage", "debian", "{.status}"),
        s.log()
    );
    assert_eq!(jsonpath(&s, "vmimage", "debian", "{.status.format}"), "qcow2");
    // The image's own StorageClass, with its storageClassParameters.
    assert_eq!(jsonpath(&s, "vmimage", "debian", "{.status.storageClassName}"), "sheaf-image-default-debian");
    let params = s.kubectl_ok(&["get", "sc", "sheaf-image-default-debian", "-o", "jsonpath={.parameters}"]);
    assert!(
        params.contains("\"image\":\"default/debian\"") && params.contains("\"numberOfReplicas\":\"1\""),
        "{params}"
    );
    s.apply(&claim("vm-a-root"));
    s.apply(&claim("vm-b-root"));
    for c in ["vm-a-root", "vm-b-root"] {
        assert!(
            eventually(Duration::from_secs(30), || jsonpath(&s, "pvc", c, "{.status.phase}") == "Bound"),
            "claim {c} not bound: {}",
            jsonpath(&s, "pvc", c, "{.status}")
        );
    }
    let a = apply_running(&s, &vm("vm-a"), "vm-a");
    let b = apply_running(&s, &vm("vm-b"), "vm-b");
    for uid in [&a, &b] {
        wait_serial(root.path(), uid, "SHEAF-GUEST ready", Duration::from_secs(400));
    }
    wait_serial(
        root.path(),
        &a,
        "SHEAF-BOOT vm-a PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\" before=none",
        Duration::from_secs(60),
    );
    wait_serial(
        root.path(),
        &b,
        "SHEAF-BOOT vm-b PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\" before=none",
        Duration::from_secs(60),
    );
    // One base for both; each volume stores only what its guest wrote.
    let uid = jsonpath(&s, "vmimage", "debian", "{.metadata.uid}");
    assert!(s.data_dir().join("replicas/images").join(&uid).join("base.json").is_file());
    let image_bytes: i64 = jsonpath(&s, "vmimage", "debian", "{.status.virtualSize}").parse().expect("virtual size");
    for v in ["vm-a-root", "vm-b-root"] {
        let actual: i64 = jsonpath(&s, "volume", v, "{.status.actualSize}").parse().unwrap_or(i64::MAX);
        assert!(actual < image_bytes / 2, "volume {v} stores {actual} bytes of a {image_bytes}-byte image: not shared");
    }
    s.kubectl_ok(&["delete", "vm", "vm-a", "vm-b"]);
    assert!(eventually(Duration::from_secs(90), || jsonpath(&s, "vmi", "vm-a", "{.metadata.name}").is_empty()
        && jsonpath(&s, "vmi", "vm-b", "{.metadata.name}").is_empty()));
}
