//! The full Debian cloud guest end to end (slow: ~80-120 s to boot under
//! TCG): a KubeVirt VirtualMachine whose disk is the guest image as a
//! container disk, a KeyPair named by `harvesterhci.io/sshNames`, and the
//! hostname from the manifest. SSH in as the cloud-init default user with
//! the KeyPair's key over the management network, and read the guest
//! agent's report through `sheaf vm guestosinfo`.

mod support;

use std::process::Command;
use std::time::Duration;

use support::guest::{apply_running, install_image, wait_serial, QemuReaper};
use support::{eventually, Server};

fn jsonpath(s: &Server, kind: &str, path: &str) -> String {
    support::guest::jsonpath(s, kind, "full", path)
}

#[test]
fn ssh_into_the_full_guest_with_a_keypair() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    install_image(root.path(), "full", "sheaf_full", &["vmlinuz", "initrd.img", "disk.qcow2"]);
    let s = support::guest::server_with_images(root.path(), &[]);

    // A fresh key pair for this test.
    let key = root.path().join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "sheaf-test", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let keypair = format!(
        "apiVersion: harvesterhci.io/v1beta1\nkind: KeyPair\nmetadata:\n  name: testkey\nspec:\n  publicKey: {}\n",
        public.trim()
    );
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&keypair));

    let vm = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: full
  annotations:
    harvesterhci.io/sshNames: '["testkey"]'
spec:
  runStrategy: Always
  template:
    spec:
      hostname: webserver
      domain:
        cpu:
          cores: 2
        memory:
          guest: 1Gi
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
          interfaces:
          - name: default
            masquerade: {}
      networks:
      - name: default
        pod: {}
      volumes:
      - name: root
        containerDisk:
          image: sheaf/full
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
            #cloud-config
            runcmd:
              - echo SHEAF-GUEST full-marker > /dev/ttyS0
"#;
    let uid = apply_running(&s, vm, "full");
    let serial = root.path().join("run").join(&uid).join("serial.log");
    wait_serial(root.path(), &uid, "SHEAF-GUEST ready", Duration::from_secs(300));
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(log.contains("SHEAF-GUEST full-marker"), "user data ran: {log}");

    // SSH in as cloud-init's default user with the KeyPair's key.
    let ip = jsonpath(&s, "vmi", "{.status.interfaces[0].ipAddress}");
    assert!(!ip.is_empty(), "no IP in status.interfaces: {}", jsonpath(&s, "vmi", "{.status}"));
    let ssh = |cmd: &str| {
        Command::new("ssh")
            .args(["-i"])
            .arg(&key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(["-o", "ConnectTimeout=5", &format!("debian@{ip}"), cmd])
            .output()
            .expect("ssh")
    };
    let mut last = String::new();
    let ok = eventually(Duration::from_secs(60), || {
        let out = ssh("hostname");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        last = format!("{stdout} / {}", String::from_utf8_lossy(&out.stderr).trim());
        out.status.success() && stdout == "webserver"
    });
    assert!(ok, "ssh debian@{ip} hostname: {last}");

    // The guest agent answers: guestOSInfo in the status and guestosinfo.
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "vmi", "{.status.guestOSInfo.id}") == "debian"),
        "no guest agent report: {}",
        jsonpath(&s, "vmi", "{.status}")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sheaf"))
        .args(["vm", "guestosinfo", "full", "--kubeconfig"])
        .arg(&s.kubeconfig)
        .output()
        .expect("sheaf vm guestosinfo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Debian GNU/Linux") && text.contains("webserver"), "{text}");

    s.kubectl_ok(&["delete", "vm", "full"]);
}
