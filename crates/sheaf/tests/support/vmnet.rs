//! VM networks in tests: manifests of a network with its IPPool and of a
//! tiny guest on it, and what the tests ask the guests and the host.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{eventually, Server};

/// `/24`s of this test process for the two VM networks.
pub fn pool_cidrs() -> (String, String) {
    let b = std::process::id() % 256;
    (format!("172.30.{b}"), format!("172.31.{b}"))
}

pub fn network(name: &str, vlan: u16, prefix: &str) -> String {
    format!(
        r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: {name}
  labels:
    network.harvesterhci.io/clusternetwork: mgmt
    network.harvesterhci.io/type: L2VlanNetwork
spec:
  config: '{{"cniVersion":"0.3.1","name":"{name}","type":"bridge","bridge":"mgmt-br","promiscMode":true,"vlan":{vlan},"ipam":{{}}}}'
---
apiVersion: network.harvesterhci.io/v1alpha1
kind: IPPool
metadata:
  name: {name}
spec:
  networkName: default/{name}
  ipv4Config:
    serverIP: {prefix}.2
    cidr: {prefix}.0/24
    pool:
      start: {prefix}.10
      end: {prefix}.50
    leaseTime: 300
"#
    )
}

/// The tiny guest with a second NIC on VM network `net`.
pub fn vm_on(name: &str, net: &str, node: Option<&str>) -> String {
    let mut vm = super::guest::tiny_vm_with(name, &[], "#cloud-config\n");
    if let Some(node) = node {
        vm = vm.replacen(
            "      terminationGracePeriodSeconds: 5\n",
            &format!(
                "      nodeSelector:\n        kubernetes.io/hostname: {node}\n      terminationGracePeriodSeconds: 5\n"
            ),
            1,
        );
        assert!(vm.contains("nodeSelector"), "{vm}");
    }
    let vm = vm.replace(
        "          - name: default\n            masquerade: {}\n",
        &format!("          - name: default\n            masquerade: {{}}\n          - name: {net}\n            bridge: {{}}\n"),
    );
    let vm = vm.replace(
        "      - name: default\n        pod: {}\n",
        &format!("      - name: default\n        pod: {{}}\n      - name: {net}\n        multus:\n          networkName: {net}\n"),
    );
    assert!(vm.contains("multus") && vm.contains("bridge: {}"), "{vm}");
    vm
}

/// Runs `cmd` in a guest's serial console shell and returns its exit
/// status (the tiny guest runs a shell on its console once it is ready).
pub fn console_status(sock: &Path, cmd: &str, timeout: Duration) -> Option<i32> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let token: u32 = rand_token();
    // The echoed command line holds `$?`, the answer holds the number.
    let line = format!("\n{cmd}; echo \"RESULT:$?:{token}\"\n");
    s.write_all(line.as_bytes()).ok()?;
    let start = Instant::now();
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < timeout {
        if let Ok(n) = s.read(&mut buf) {
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let tail = format!(":{token}");
        for (i, _) in out.match_indices(&tail) {
            if let Some(code) = out[..i].rsplit("RESULT:").next().and_then(|c| c.trim().parse().ok()) {
                return Some(code);
            }
        }
    }
    None
}

fn rand_token() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(7);
    t ^ std::process::id()
}

pub fn serial(run: &Path, uid: &str) -> PathBuf {
    run.join(uid).join("serial.log")
}

/// Waits for the guest to report an address on `nic` in `prefix.` and
/// returns it.
pub fn guest_ip(run: &Path, uid: &str, nic: &str, prefix: &str, diag: &dyn Fn() -> String) -> String {
    let log = serial(run, uid);
    let needle = format!("SHEAF-GUEST ip={nic} {prefix}.");
    assert!(
        eventually(Duration::from_secs(120), || std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&needle))),
        "no address in {prefix}.0/24 on {nic}: {}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        diag()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let rest = &text[text.find(&needle).unwrap_or(0) + needle.len() - prefix.len() - 1..];
    rest.split_whitespace().next().unwrap_or_default().split('/').next().unwrap_or_default().to_string()
}

/// The VM network devices (bridges, VXLAN, VLAN, DHCP veths) in `names`
/// (of the host when None: `/sys/class/net`).
pub fn sheaf_links_in(names: Option<&str>) -> Vec<String> {
    let all: Vec<String> = match names {
        Some(text) => text.split_whitespace().map(|w| w.split('@').next().unwrap_or(w).to_string()).collect(),
        None => std::fs::read_dir("/sys/class/net")
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
            .unwrap_or_default(),
    };
    all.into_iter()
        .filter(|n| ["shbr", "shvx", "shvl", "shdh"].iter().any(|p| n.starts_with(p)) && n.len() == 10)
        .collect()
}

pub fn sheaf_links() -> Vec<String> {
    sheaf_links_in(None)
}

/// Deletes the VMs, waits until their instances are gone, then deletes
/// the networks (IPPools and NetworkAttachmentDefinitions of these names).
pub fn delete_vms_then_networks(s: &Server, vms: &[&str], networks: &[&str]) {
    for vm in vms {
        s.kubectl_ok(&["delete", "vm", vm]);
    }
    assert!(
        eventually(Duration::from_secs(60), || s.kubectl_ok(&["get", "vmi", "-o", "name"]).trim().is_empty()),
        "VMIs left: {}",
        s.kubectl_ok(&["get", "vmi"])
    );
    let mut args = vec!["delete", "ippool"];
    args.extend_from_slice(networks);
    s.kubectl_ok(&args);
    args[1] = "network-attachment-definitions";
    s.kubectl_ok(&args);
}
