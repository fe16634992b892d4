//! The agent's `Node` object: created on start, capacity and addresses
//! filled in, and a `Ready` heartbeat every [`HEARTBEAT`], each preceded by
//! the node's Disk objects ([`crate::disks`]) and followed by the renewal of
//! the node's Lease `kube-node-lease/<node>` (as the kubelet keeps it: held
//! by the node, [`NODE_LEASE_DURATION_SECONDS`], owned by the Node). The
//! node lifecycle controller judges the node by the newer of the two.
//! After each heartbeat the agent samples Sheaf's own footprint on the node
//! ([`crate::footprint`]), written to the Node now and then.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Typed};
use sheaf_types::coordination::{Lease, LeaseSpec, MicroTime};
use sheaf_types::core::Node;
use sheaf_types::meta::OwnerReference;
use sheaf_types::{ObjectMeta, Time};

pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// The namespace of the nodes' heartbeat Leases (Kubernetes').
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// The node Lease's `leaseDurationSeconds` (the kubelet's default).
pub const NODE_LEASE_DURATION_SECONDS: i32 = 40;
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

/// Posts the node's status, then renews its Lease.
pub async fn heartbeat(api: &dyn Api, name: &str, ready_message: &str, node_ip: IpAddr) -> Result<(), ClientError> {
    let patch = json!({"status": status(ready_message, node_ip)});
    let node = api.merge_patch(Gvr::of::<Node>(), None, name, patch, true).await?;
    let uid = node.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    renew_lease(api, name, uid).await
}

/// Creates or renews the Lease `kube-node-lease/<name>`: holder the node,
/// renewed now. `node_uid` makes the Node its owner, so that it goes with
/// the Node.
pub async fn renew_lease(api: &dyn Api, name: &str, node_uid: &str) -> Result<(), ClientError> {
    let leases = Typed::<Lease>::new(api);
    let now = MicroTime::now();
    match leases.get(Some(NODE_LEASE_NAMESPACE), name).await? {
        Some(mut lease) => {
            lease.spec.holder_identity = Some(name.to_string());
            lease.spec.lease_duration_seconds = Some(NODE_LEASE_DURATION_SECONDS);
            lease.spec.renew_time = Some(now);
            match leases.update(&lease).await {
                Ok(_) => Ok(()),
                // Renewed by someone else meanwhile (an older agent of
                // this node): the next heartbeat renews it again.
                Err(e) if e.is_conflict() => Ok(()),
                Err(e) => Err(e),
            }
        }
        None => {
            let owner = (!node_uid.is_empty()).then(|| OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.to_string(),
                uid: node_uid.to_string(),
                controller: None,
                block_owner_deletion: None,
            });
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(NODE_LEASE_NAMESPACE.into()),
                    owner_references: owner.into_iter().collect(),
                    ..Default::default()
                },
                spec: LeaseSpec {
                    holder_identity: Some(name.to_string()),
                    lease_duration_seconds: Some(NODE_LEASE_DURATION_SECONDS),
                    acquire_time: Some(now),
                    renew_time: Some(now),
                    ..Default::default()
                },
            };
            match leases.create(&lease).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_already_exists() => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use sheaf_client::{Selectors, WatchStream};

    use super::*;

    /// Objects by (plural, namespace, name), with resourceVersions.
    #[derive(Default)]
    struct MemoryApi {
        objects: Mutex<HashMap<(String, String, String), Value>>,
    }

    fn key(r: Gvr, ns: Option<&str>, obj: &Value) -> (String, String, String) {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        (r.plural.to_string(), ns.unwrap_or_default().to_string(), name.to_string())
    }

    fn unsupported() -> ClientError {
        ClientError::other("not in this fake")
    }

    #[async_trait::async_trait]
    impl Api for MemoryApi {
        async fn get(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<Option<Value>, ClientError> {
            let k = (r.plural.to_string(), ns.unwrap_or_default().to_string(), name.to_string());
            Ok(self.objects.lock().unwrap_or_else(|e| e.into_inner()).get(&k).cloned())
        }
        async fn list(&self, _: Gvr, _: Option<&str>, _: &Selectors) -> Result<(Vec<Value>, String), ClientError> {
            Err(unsupported())
        }
        async fn watch(&self, _: Gvr, _: Option<&str>, _: &Selectors, _: &str) -> Result<WatchStream, ClientError> {
            Err(unsupported())
        }
        async fn create(&self, r: Gvr, ns: Option<&str>, mut obj: Value) -> Result<Value, ClientError> {
            let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
            let k = key(r, ns, &obj);
            if objects.contains_key(&k) {
                return Err(ClientError { code: 409, reason: "AlreadyExists".into(), message: String::new() });
            }
            obj["metadata"]["resourceVersion"] = json!("1");
            objects.insert(k, obj.clone());
            Ok(obj)
        }
        async fn update(&self, r: Gvr, ns: Option<&str>, mut obj: Value) -> Result<Value, ClientError> {
            let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
            let k = key(r, ns, &obj);
            let stored =
                objects.get(&k).ok_or(ClientError { code: 404, reason: "NotFound".into(), message: String::new() })?;
            let rv = stored.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
            if obj.pointer("/metadata/resourceVersion").and_then(Value::as_str) != Some(rv) {
                return Err(ClientError { code: 409, reason: "Conflict".into(), message: String::new() });
            }
            let next = rv.parse::<u64>().unwrap_or(0) + 1;
            obj["metadata"]["resourceVersion"] = json!(next.to_string());
            objects.insert(k, obj.clone());
            Ok(obj)
        }
        async fn update_status(&self, _: Gvr, _: Option<&str>, _: Value) -> Result<Value, ClientError> {
            Err(unsupported())
        }
        async fn merge_patch(&self, _: Gvr, _: Option<&str>, _: &str, _: Value, _: bool) -> Result<Value, ClientError> {
            Err(unsupported())
        }
        async fn delete(&self, _: Gvr, _: Option<&str>, _: &str) -> Result<(), ClientError> {
            Err(unsupported())
        }
    }

    #[tokio::test]
    async fn the_node_lease_is_created_then_renewed() -> Result<(), ClientError> {
        let api = MemoryApi::default();
        renew_lease(&api, "node1", "uid-1").await?;
        let leases = Typed::<Lease>::new(&api);
        let first = leases.get(Some(NODE_LEASE_NAMESPACE), "node1").await?.unwrap_or_default();
        assert_eq!(first.spec.holder_identity.as_deref(), Some("node1"));
        assert_eq!(first.spec.lease_duration_seconds, Some(NODE_LEASE_DURATION_SECONDS));
        assert_eq!(first.spec.acquire_time, first.spec.renew_time);
        let owner = first.metadata.owner_references.first().map(|o| (o.kind.as_str(), o.name.as_str(), o.uid.as_str()));
        assert_eq!(owner, Some(("Node", "node1", "uid-1")), "goes with its Node");

        tokio::time::sleep(Duration::from_millis(5)).await;
        renew_lease(&api, "node1", "uid-1").await?;
        let second = leases.get(Some(NODE_LEASE_NAMESPACE), "node1").await?.unwrap_or_default();
        assert!(second.spec.renew_time > first.spec.renew_time, "renewed");
        assert_eq!(second.spec.acquire_time, first.spec.acquire_time, "still the same holder");
        Ok(())
    }
}
