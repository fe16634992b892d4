//! The agent's `Node` object: created on start, capacity and addresses
//! filled in, and a `Ready` heartbeat every [`HEARTBEAT`], each preceded by
//! the node's Disk objects ([`crate::disks`]).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr};
use sheaf_types::core::Node;
use sheaf_types::Time;

pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Memory kept for the host and Sheaf itself, not offered to VMs.
const RESERVED_MEMORY_MIB: u64 = 512;

fn meminfo_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "Linux".into())
}

/// The node's status as measured now; `node_ip` is its `InternalIP`.
pub fn status(ready_message: &str, node_ip: IpAddr) -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_mib = meminfo_kib("MemTotal:") / 1024;
    let alloc_mib = mem_mib.saturating_sub(RESERVED_MEMORY_MIB);
    let now = Time::now();
    json!({
        "capacity": {"cpu": cpus.to_string(), "memory": format!("{mem_mib}Mi"), "pods": "110"},
        "allocatable": {"cpu": cpus.to_string(), "memory": format!("{alloc_mib}Mi"), "pods": "110"},
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "AgentReady", "message": ready_message,
            "lastHeartbeatTime": now, "lastTransitionTime": now
        }],
        // InternalIP first, as Kubernetes does (`kubectl get nodes -o wide`).
        "addresses": [
            {"type": "InternalIP", "address": node_ip.to_string()},
            {"type": "Hostname", "address": hostname()}
        ],
        "nodeInfo": {
            "machineID": std::fs::read_to_string("/etc/machine-id").map(|s| s.trim().to_string()).unwrap_or_default(),
            "kernelVersion": kernel_version(),
            "osImage": os_image(),
            "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH,
            "kubeletVersion": format!("sheaf-{}", env!("CARGO_PKG_VERSION")),
        }
    })
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "node".into())
}

/// Creates the Node if missing, publishes its disks, and writes its status.
/// The disks go first, so that a Ready node's disks are known to the Volume
/// controller; a failure to publish them is logged, not held against the
/// heartbeat (the node's VMs need it).
pub async fn register(
    api: &dyn Api,
    name: &str,
    ready_message: &str,
    disks: &[crate::disks::DiskConfig],
    node_ip: IpAddr,
) -> Result<(), ClientError> {
    let gvr = Gvr::of::<Node>();
    if api.get(gvr, None, name).await?.is_none() {
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH
            }},
        });
        match api.create(gvr, None, node).await {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e),
        }
    }
    if let Err(e) = crate::disks::publish(api, name, disks).await {
        tracing::warn!(error = %e, "cannot report the node's disks");
    }
    heartbeat(api, name, ready_message, node_ip).await
}

pub async fn heartbeat(api: &dyn Api, name: &str, ready_message: &str, node_ip: IpAddr) -> Result<(), ClientError> {
    let patch = json!({"status": status(ready_message, node_ip)});
    api.merge_patch(Gvr::of::<Node>(), None, name, patch, true).await.map(|_| ())
}
