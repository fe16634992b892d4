//! Test guests for VM tests: a server whose image store holds the tiny
//! guest (built by `scripts/build-test-guests.sh`) as image `sheaf/tiny`,
//! and a guard that kills any QEMU a failing test leaves behind.

use std::path::{Path, PathBuf};

use super::Server;

/// Where `scripts/build-test-guests.sh` puts the guests.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("SHEAF_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-guests"))
}

/// Links the files of guest `name` into `images/<image dir>` under `root`.
pub fn install_image(root: &Path, guest: &str, image_dir: &str, files: &[&str]) {
    let src = guest_dir().join(guest);
    assert!(
        src.join(files[0]).is_file(),
        "the {guest} test guest is missing at {}: run scripts/build-test-guests.sh",
        src.display()
    );
    let images = root.join("images").join(image_dir);
    std::fs::create_dir_all(&images).expect("image dir");
    for f in files {
        let _ = std::os::unix::fs::symlink(src.join(f), images.join(f));
    }
}

/// A server with the tiny guest as image `sheaf/tiny`, its image store in
/// `ROOT/images` and VM runtime directories in `ROOT/run`.
pub fn tiny_server(root: &Path, extra: &[&str]) -> Server {
    install_image(root, "tiny", "sheaf_tiny", &["vmlinuz", "initramfs.cpio.gz"]);
    server_with_images(root, extra)
}

/// The management network of this test process's servers: a bridge and a
/// /24 of its own (tests run in parallel, each in its own process).
pub struct TestNet {
    pub bridge: String,
    pub cidr: String,
    pub gateway: String,
}

pub fn test_net() -> TestNet {
    let pid = std::process::id();
    let (a, b) = ((pid >> 8) % 256, pid % 256);
    TestNet {
        bridge: format!("shb{pid}"),
        cidr: format!("10.{}.{b}.0/24", 100 + a % 100),
        gateway: format!("10.{}.{b}.1", 100 + a % 100),
    }
}

/// Removes what the agent set up for `net` on the host: the bridge, its
/// taps, the nftables table, dnsmasq.
pub fn remove_test_net(net: &TestNet, run_root: &Path) {
    let state = run_root.parent().unwrap_or(run_root).join(format!("net-{}", net.bridge));
    let pidfile = state.join("dnsmasq.pid");
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
    let _ = std::process::Command::new("ip").args(["link", "del", &net.bridge]).status();
    remove_vm_networks(run_root.parent().unwrap_or(run_root));
    let _ =
        std::process::Command::new("nft").args(["delete", "table", "ip", &format!("sheaf-{}", net.bridge)]).status();
}

/// Stops the DHCP servers and removes the namespaces and devices that an
/// agent whose runtime root is under `root` made for VM networks (a test
/// that failed half-way, or a killed agent, leaves them).
pub fn remove_vm_networks(root: &Path) {
    let state = root.join("vmnet");
    for e in std::fs::read_dir(state.join("dhcp")).into_iter().flatten().flatten() {
        if let Ok(pid) = std::fs::read_to_string(e.path().join("dnsmasq.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
        if let Ok(ns) = std::fs::read_to_string(e.path().join("netns")) {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns.trim()]).status();
        }
    }
    for e in std::fs::read_dir(state.join("segments")).into_iter().flatten().flatten() {
        let vni = e.file_name().to_string_lossy().to_string();
        for p in ["shbr", "shvx", "shvl", "shdh"] {
            let dev = format!("{p}{vni}");
            if Path::new("/sys/class/net").join(&dev).exists() {
                let _ = std::process::Command::new("ip").args(["link", "del", &dev]).status();
            }
        }
    }
}

/// A server whose image store is `ROOT/images` and VM runtime directories
/// `ROOT/run`, with a management network of its own that is removed when
/// the server is dropped.
pub fn server_with_images(root: &Path, extra: &[&str]) -> Server {
    let images = root.join("images").display().to_string();
    let run = root.join("run");
    let run_s = run.display().to_string();
    let net = test_net();
    let mut args =
        vec!["--image-dir", &images, "--run-dir", &run_s, "--mgmt-bridge", &net.bridge, "--mgmt-cidr", &net.cidr];
    args.extend_from_slice(extra);
    let mut s = Server::start_with(&args);
    s.cleanups.push(Box::new(move || remove_test_net(&net, &run)));
    s
}

/// Kills every QEMU started under its directory when dropped, so that a
/// failing test leaves no daemonized guest behind.
pub struct QemuReaper(pub PathBuf);

impl Drop for QemuReaper {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill").args(["-9", "-f", &self.0.display().to_string()]).status();
    }
}

/// A VirtualMachine of the tiny guest booted by kernel, with a NoCloud
/// seed whose user data carries `marker: MARKER`.
pub fn tiny_vm(name: &str, marker: &str) -> String {
    tiny_vm_with(name, &[], &format!("#cloud-config\n# marker: {marker}\n"))
}

/// One more disk of a [`tiny_vm_with`]: its name, its KubeVirt disk
/// (`disk`, `cdrom`) with bus, and the claim behind it.
pub struct ClaimDisk<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub bus: &'a str,
    pub claim: &'a str,
}

/// The tiny guest with `disks` (claims) after its seed disk and
/// `user_data` (a `#!/bin/sh` script or cloud-config) in its NoCloud seed.
pub fn tiny_vm_with(name: &str, disks: &[ClaimDisk<'_>], user_data: &str) -> String {
    let disk_items: String = disks
        .iter()
        .map(|d| format!("          - name: {}\n            {}:\n              bus: {}\n", d.name, d.kind, d.bus))
        .collect();
    let volume_items: String = disks
        .iter()
        .map(|d| {
            format!("      - name: {}\n        persistentVolumeClaim:\n          claimName: {}\n", d.name, d.claim)
        })
        .collect();
    let user_data: String = user_data.lines().map(|l| format!("            {l}\n")).collect();
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        cpu:
          cores: 1
        memory:
          guest: 128Mi
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0 quiet
            container:
              image: sheaf/tiny
              kernelPath: /vmlinuz
              initrdPath: /initramfs.cpio.gz
        devices:
          disks:
          - name: cloudinit
            disk:
              bus: virtio
{disk_items}          interfaces:
          - name: default
            masquerade: {{}}
      networks:
      - name: default
        pod: {{}}
      volumes:
      - name: cloudinit
        cloudInitNoCloud:
          userData: |
{user_data}{volume_items}"#
    )
}

/// `kubectl get KIND NAME -o jsonpath=PATH` (empty when it fails).
pub fn jsonpath(s: &Server, kind: &str, name: &str, path: &str) -> String {
    let out = s.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Applies a VirtualMachine manifest and waits until its instance runs;
/// returns the instance's uid.
pub fn apply_running(s: &Server, manifest: &str, name: &str) -> String {
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(manifest));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        super::eventually(std::time::Duration::from_secs(60), || jsonpath(s, "vmi", name, "{.status.phase}")
            == "Running"),
        "VMI {name} not Running: {}\n{}",
        jsonpath(s, "vmi", name, "{.status}"),
        s.log()
    );
    jsonpath(s, "vmi", name, "{.metadata.uid}")
}

/// Waits until the serial console log of VMI `uid` (under `ROOT/run`)
/// holds `needle`; fails with the log otherwise.
pub fn wait_serial(root: &Path, uid: &str, needle: &str, timeout: std::time::Duration) {
    let serial = root.join("run").join(uid).join("serial.log");
    assert!(
        super::eventually(timeout, || std::fs::read_to_string(&serial).is_ok_and(|l| l.contains(needle))),
        "{needle:?} not on the serial console: {}",
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
}
