//! The VM network controllers (docs/design/networks.md).
//!
//! ClusterNetwork, per cluster network (woken by Nodes and VlanConfigs):
//!
//! ```text
//!  no index ──▶ status.index: mgmt 0, others the lowest free one (VNIs derive from it; never changes)
//!  nodes    ──▶ status.nodes: every node for mgmt; the nodes matching its VlanConfigs otherwise
//!  path     ──▶ status.dataPath: VXLAN for mgmt, when asked, or when a node cannot do 802.1Q; else VLAN
//!  Ready    ──▶ True when every node of it reports its uplink ready (VlanConfig status.nodes)
//! ```
//!
//! IPPool, per pool (woken by VMIs, VMs, Nodes and its network):
//!
//! ```text
//!  every NIC of a VMI on the pool's network ──▶ an allocation (VM, interface, MAC) → lowest free address
//!  VM and VMI gone                          ──▶ its allocations released
//!  status.agentNode                          ──▶ kept while Ready and on the network, else the first Ready node of it
//! ```
//!
//! Allocations are keyed by `namespace/vm` and interface: a VM keeps its
//! addresses across restarts while it exists. The controllers write their
//! status fields with merge patches and never touch `status.leases`, which
//! the serving node's agent owns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::core::Node;
use sheaf_types::kubevirt::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceSpec};
use sheaf_types::meta::{set_condition, Condition, Time};
use sheaf_types::network::{
    nad_key, vm_mac, Allocation, ClusterNetwork, DataPath, IpPool, Ipv4Status, NetworkAttachmentDefinition, VlanConfig,
    MAX_CLUSTER_NETWORK_INDEX, MGMT,
};

use crate::runtime::{Action, Controller, ObjectKey, Reconciler};
use crate::scheduler::node_ready;

/// Runs both controllers until the future is dropped.
pub async fn run(api: Arc<dyn Api>) {
    let all_cns = |_: crate::runtime::Change, _: &Value, store: &crate::runtime::Store| store.keys();
    let cns = Controller::new("clusternetwork", api.clone(), Gvr::of::<ClusterNetwork>())
        .watches(Gvr::of::<Node>(), all_cns)
        .watches(Gvr::of::<VlanConfig>(), all_cns)
        .resync_every(Duration::from_secs(60))
        .run(Arc::new(ClusterNetworkController { api: api.clone() }));
    let all_pools = |_: crate::runtime::Change, _: &Value, store: &crate::runtime::Store| store.keys();
    let pools = Controller::new("ippool", api.clone(), Gvr::of::<IpPool>())
        .watches(Gvr::of::<VirtualMachineInstance>(), all_pools)
        .watches(Gvr::of::<VirtualMachine>(), all_pools)
        .watches(Gvr::of::<Node>(), all_pools)
        .watches(Gvr::of::<ClusterNetwork>(), all_pools)
        .watches(Gvr::of::<NetworkAttachmentDefinition>(), all_pools)
        .resync_every(Duration::from_secs(30))
        .run(Arc::new(IpPoolController { api }));
    tokio::join!(cns, pools);
}

fn labels_match(selector: &BTreeMap<String, String>, node: &Node) -> bool {
    selector.iter().all(|(k, v)| node.metadata.labels.get(k) == Some(v))
}

/// The nodes a cluster network spans, sorted.
pub fn nodes_of(cn: &str, nodes: &[Node], vlan_configs: &[VlanConfig]) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for n in nodes {
        let Some(name) = n.metadata.name.clone() else { continue };
        let on = cn == MGMT
            || vlan_configs.iter().any(|v| v.spec.cluster_network == cn && labels_match(&v.spec.node_selector, n));
        if on {
            out.insert(name);
        }
    }
    out.into_iter().collect()
}

struct ClusterNetworkController {
    api: Arc<dyn Api>,
}

#[async_trait::async_trait]
impl Reconciler for ClusterNetworkController {
    type Error = ClientError;
    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let api = self.api.as_ref();
        let cns: Vec<ClusterNetwork> = Typed::new(api).list(None, &Selectors::default()).await?;
        let Some(cn) = cns.iter().find(|c| c.metadata.name.as_deref() == Some(key.name.as_str())) else {
            return Ok(Action::Done);
        };
        let nodes: Vec<Node> = Typed::new(api).list(None, &Selectors::default()).await?;
        let vcs: Vec<VlanConfig> = Typed::new(api).list(None, &Selectors::default()).await?;
        let status = cluster_network_status(cn, &cns, &nodes, &vcs);
        if cn.status.as_ref() != Some(&status) {
            let patch = json!({"status": serde_json::to_value(&status).unwrap_or_default()});
            api.merge_patch(Gvr::of::<ClusterNetwork>(), None, &key.name, patch, true).await?;
        }
        Ok(Action::Done)
    }
}

/// The status a cluster network should have, given every cluster network
/// (for the index), the nodes and the VlanConfigs.
pub fn cluster_network_status(
    cn: &ClusterNetwork,
    all: &[ClusterNetwork],
    nodes: &[Node],
    vcs: &[VlanConfig],
) -> sheaf_types::network::ClusterNetworkStatus {
    let name = cn.metadata.name.clone().unwrap_or_default();
    let old = cn.status.clone().unwrap_or_default();
    let index = old.index.or_else(|| {
        if name == MGMT {
            return Some(0);
        }
        let used: BTreeSet<u32> = all
            .iter()
            .filter(|c| c.metadata.name.as_deref() != Some(name.as_str()))
            .filter_map(|c| c.status.as_ref().and_then(|s| s.index))
            .collect();
        (1..=MAX_CLUSTER_NETWORK_INDEX).find(|i| !used.contains(i))
    });
    let members = nodes_of(&name, nodes, vcs);
    // What each member's agent reported for this cluster network.
    let reports: BTreeMap<String, sheaf_types::network::VlanNodeStatus> = vcs
        .iter()
        .filter(|v| v.spec.cluster_network == name)
        .flat_map(|v| v.status.iter().flat_map(|s| s.nodes.clone()))
        .collect();
    let all_vlan_capable =
        !members.is_empty() && members.iter().all(|m| reports.get(m).is_some_and(|r| r.vlan_capable));
    let want = cn.spec.data_path.unwrap_or_default();
    let path = match want {
        _ if name == MGMT => DataPath::Vxlan,
        DataPath::Vxlan => DataPath::Vxlan,
        DataPath::Vlan => DataPath::Vlan,
        DataPath::Auto if all_vlan_capable => DataPath::Vlan,
        DataPath::Auto => DataPath::Vxlan,
    };
    let mut problems: Vec<String> = Vec::new();
    if index.is_none() {
        problems.push("no cluster network index is free (VNIs are exhausted)".into());
    }
    if name != MGMT {
        if members.is_empty() {
            problems
                .push("no node has an uplink for it yet: create a VlanConfig whose nodeSelector matches nodes".into());
        }
        for m in &members {
            match reports.get(m) {
                None => problems.push(format!("node {m} has not reported its uplink yet")),
                Some(r) if !r.ready => {
                    problems.push(format!("node {m}: {}", r.message.clone().unwrap_or_else(|| "not ready".into())))
                }
                Some(r) if path == DataPath::Vlan && !r.vlan_capable => {
                    problems.push(format!("node {m} cannot make 802.1Q devices; use dataPath VXLAN or Auto"))
                }
                Some(_) => {}
            }
        }
    }
    let now = Time::now();
    let ready = problems.is_empty();
    let message = if ready {
        format!("{} node(s); data path {}", members.len(), if path == DataPath::Vlan { "VLAN" } else { "VXLAN" })
    } else {
        problems.join("; ")
    };
    let cond = Condition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        reason: Some(if ready { "Ready" } else { "NotReady" }.into()),
        message: Some(message),
        ..Default::default()
    };
    let mut conditions = old.conditions.clone();
    set_condition(&mut conditions, cond, now);
    sheaf_types::network::ClusterNetworkStatus { data_path: Some(path), index, nodes: members, conditions }
}

struct IpPoolController {
    api: Arc<dyn Api>,
}

/// One NIC that wants an address from a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub vm: String,
    pub interface: String,
    pub mac: String,
}

/// The NICs of `spec` (of VM or VMI `ns/name`) on network `net_key`.
pub fn wants_of(ns: &str, name: &str, spec: &VirtualMachineInstanceSpec, net_key: &str) -> Vec<Want> {
    let mut out = Vec::new();
    for (i, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        let on = spec
            .networks
            .iter()
            .find(|n| n.name == iface.name)
            .and_then(|n| n.multus.as_ref())
            .is_some_and(|m| nad_key(ns, &m.network_name) == net_key);
        if on {
            out.push(Want {
                vm: format!("{ns}/{name}"),
                interface: iface.name.clone(),
                mac: iface.mac_address.clone().unwrap_or_else(|| vm_mac(ns, name, i)),
            });
        }
    }
    out
}

/// The pool's allocations after this pass: existing ones kept while their
/// VM exists (`keep`), running NICs (`wants`) given the lowest free
/// address; the NICs that found no address.
pub fn allocate(
    existing: &[Allocation],
    wants: &[Want],
    keep: &BTreeSet<String>,
    assignable: impl Iterator<Item = Ipv4Addr>,
) -> (Vec<Allocation>, Vec<Want>) {
    let mut out: Vec<Allocation> = Vec::new();
    for a in existing {
        if !keep.contains(&a.vm) || out.iter().any(|o| o.ip == a.ip) {
            continue;
        }
        let mut a = a.clone();
        if let Some(w) = wants.iter().find(|w| w.vm == a.vm && w.interface == a.interface) {
            a.mac = w.mac.clone();
        }
        out.push(a);
    }
    let mut free = assignable.filter(|ip| !existing.iter().any(|a| a.ip == ip.to_string()));
    let mut unplaced = Vec::new();
    for w in wants {
        if out.iter().any(|a| a.vm == w.vm && a.interface == w.interface) {
            continue;
        }
        match free.by_ref().find(|ip| !out.iter().any(|a| a.ip == ip.to_string())) {
            Some(ip) => out.push(Allocation {
                ip: ip.to_string(),
                mac: w.mac.clone(),
                vm: w.vm.clone(),
                interface: w.interface.clone(),
            }),
            None => unplaced.push(w.clone()),
        }
    }
    out.sort_by_key(|a| a.ip.parse::<Ipv4Addr>().map(u32::from).unwrap_or(u32::MAX));
    (out, unplaced)
}

#[async_trait::async_trait]
impl Reconciler for IpPoolController {
    type Error = ClientError;
    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let api = self.api.as_ref();
        let Some(pool) = Typed::<IpPool>::new(api).get(key.namespace(), &key.name).await? else {
            return Ok(Action::Done);
        };
        if pool.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let Ok(range) = pool.range() else { return Ok(Action::Done) };
        let net = pool.spec.network_name.clone();
        let vmis: Vec<VirtualMachineInstance> = Typed::new(api).list(None, &Selectors::default()).await?;
        let vms: Vec<VirtualMachine> = Typed::new(api).list(None, &Selectors::default()).await?;
        let mut wants = Vec::new();
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for vmi in &vmis {
            let (ns, name) =
                (vmi.metadata.namespace.clone().unwrap_or_default(), vmi.metadata.name.clone().unwrap_or_default());
            keep.insert(format!("{ns}/{name}"));
            let finished =
                vmi.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
            if !finished {
                wants.extend(wants_of(&ns, &name, &vmi.spec, &net));
            }
        }
        for vm in &vms {
            let (ns, name) =
                (vm.metadata.namespace.clone().unwrap_or_default(), vm.metadata.name.clone().unwrap_or_default());
            if !wants_of(&ns, &name, &vm.spec.template.spec, &net).is_empty() {
                keep.insert(format!("{ns}/{name}"));
            }
        }
        let old = pool.status.clone().unwrap_or_default();
        let (allocations, unplaced) = allocate(&old.allocations, &wants, &keep, range.assignable());

        // The serving node: kept while Ready and on the network.
        let nad = Typed::<NetworkAttachmentDefinition>::new(api)
            .get(net.split_once('/').map(|(ns, _)| ns), net.split_once('/').map(|(_, n)| n).unwrap_or(&net))
            .await?;
        let nodes: Vec<Node> = Typed::new(api).list(None, &Selectors::default()).await?;
        let members: Vec<String> = match &nad {
            None => Vec::new(),
            Some(nad) => {
                let cn = Typed::<ClusterNetwork>::new(api).get(None, &nad.cluster_network()).await?;
                cn.and_then(|c| c.status).map(|s| s.nodes).unwrap_or_default()
            }
        };
        let ready = |n: &str| nodes.iter().any(|x| x.metadata.name.as_deref() == Some(n) && node_ready(x));
        let agent = old
            .agent_node
            .clone()
            .filter(|n| ready(n) && members.contains(n))
            .or_else(|| members.iter().find(|n| ready(n)).cloned());

        let now = Time::now();
        let mut conditions = old.conditions.clone();
        let (ok, reason, message) = if nad.is_none() {
            (false, "NetworkNotFound", format!("network {net} does not exist"))
        } else if agent.is_none() {
            (false, "NoAgentNode", "no Ready node is on the network to serve DHCP".to_string())
        } else if !unplaced.is_empty() {
            let who: Vec<String> = unplaced.iter().map(|w| format!("{} ({})", w.vm, w.interface)).collect();
            (false, "PoolExhausted", format!("no address left for {}; widen the pool", who.join(", ")))
        } else {
            (true, "Ready", format!("DHCP served by node {}", agent.clone().unwrap_or_default()))
        };
        set_condition(
            &mut conditions,
            Condition {
                type_: "Ready".into(),
                status: if ok { "True" } else { "False" }.into(),
                reason: Some(reason.into()),
                message: Some(message),
                ..Default::default()
            },
            now,
        );
        let ipv4 = Ipv4Status {
            allocated: allocations.iter().map(|a| (a.ip.clone(), a.mac.clone())).collect(),
            used: allocations.len() as i64,
            available: (range.capacity() as i64 - allocations.len() as i64).max(0),
        };
        let changed = old.ipv4.as_ref() != Some(&ipv4)
            || old.allocations != allocations
            || old.agent_node != agent
            || old.conditions != conditions;
        if changed {
            let patch = json!({"status": {
                "ipv4": ipv4, "allocations": allocations, "agentNode": agent, "conditions": conditions
            }});
            api.merge_patch(Gvr::of::<IpPool>(), key.namespace(), &key.name, patch, true).await?;
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(ip: &str, vm: &str, iface: &str) -> Allocation {
        Allocation { ip: ip.into(), mac: "02:00:00:00:00:01".into(), vm: vm.into(), interface: iface.into() }
    }

    #[test]
    fn allocation_keeps_releases_and_fills_lowest() {
        let range: Vec<Ipv4Addr> = (10..=13).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        let existing = vec![alloc("10.0.0.11", "default/a", "net"), alloc("10.0.0.10", "default/gone", "net")];
        let wants = vec![
            Want { vm: "default/a".into(), interface: "net".into(), mac: "02:aa:00:00:00:01".into() },
            Want { vm: "default/b".into(), interface: "net".into(), mac: "02:bb:00:00:00:01".into() },
        ];
        let keep: BTreeSet<String> = ["default/a".to_string(), "default/b".to_string()].into();
        let (out, unplaced) = allocate(&existing, &wants, &keep, range.iter().copied());
        assert!(unplaced.is_empty());
        // a keeps .11 (with its current MAC); the gone VM's .10 is released
        // but not reused in the same pass; b gets the lowest free one.
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!((out[0].ip.as_str(), out[0].vm.as_str()), ("10.0.0.11", "default/a"));
        assert_eq!(out[0].mac, "02:aa:00:00:00:01");
        assert_eq!((out[1].ip.as_str(), out[1].vm.as_str()), ("10.0.0.12", "default/b"));
        // Next pass: .10 is free again.
        let wants2 = vec![Want { vm: "default/c".into(), interface: "n".into(), mac: "m".into() }];
        let keep2: BTreeSet<String> = ["default/a".into(), "default/b".into(), "default/c".into()].into();
        let (out2, _) = allocate(&out, &wants2, &keep2, range.iter().copied());
        assert!(out2.iter().any(|a| a.vm == "default/c" && a.ip == "10.0.0.10"), "{out2:?}");
        // Exhausted: more NICs than addresses.
        let many: Vec<Want> =
            (0..6).map(|i| Want { vm: format!("default/v{i}"), interface: "n".into(), mac: "m".into() }).collect();
        let keep3: BTreeSet<String> = many.iter().map(|w| w.vm.clone()).collect();
        let (out3, unplaced3) = allocate(&[], &many, &keep3, range.iter().copied());
        assert_eq!((out3.len(), unplaced3.len()), (4, 2));
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        n
    }

    #[test]
    fn cluster_network_paths_and_indexes() {
        let nodes = vec![node("n1", &[("rack", "a")]), node("n2", &[("rack", "b")])];
        let mut mgmt = ClusterNetwork::default();
        mgmt.metadata.name = Some(MGMT.into());
        let s = cluster_network_status(&mgmt, &[mgmt.clone()], &nodes, &[]);
        assert_eq!((s.index, s.data_path, s.nodes.len()), (Some(0), Some(DataPath::Vxlan), 2));
        assert_eq!(s.conditions[0].status, "True");

        let mut data = ClusterNetwork::default();
        data.metadata.name = Some("data".into());
        let mut taken = ClusterNetwork::default();
        taken.metadata.name = Some("other".into());
        taken.status = Some(sheaf_types::network::ClusterNetworkStatus { index: Some(1), ..Default::default() });
        let mut vc = VlanConfig::default();
        vc.metadata.name = Some("vc".into());
        vc.spec.cluster_network = "data".into();
        vc.spec.node_selector = [("rack".to_string(), "a".to_string())].into();
        // Not reported yet: VXLAN (Auto), not ready.
        let s = cluster_network_status(&data, &[mgmt.clone(), taken.clone(), data.clone()], &nodes, &[vc.clone()]);
        assert_eq!((s.index, s.data_path), (Some(2), Some(DataPath::Vxlan)));
        assert_eq!(s.nodes, vec!["n1".to_string()]);
        assert_eq!(s.conditions[0].status, "False");
        assert!(s.conditions[0].message.as_deref().unwrap_or("").contains("not reported"), "{s:?}");
        // Reported ready and 802.1Q-capable: Auto picks VLAN.
        vc.status = Some(sheaf_types::network::VlanConfigStatus {
            nodes: [(
                "n1".to_string(),
                sheaf_types::network::VlanNodeStatus { ready: true, vlan_capable: true, ..Default::default() },
            )]
            .into(),
            ..Default::default()
        });
        let s = cluster_network_status(&data, &[mgmt, taken, data.clone()], &nodes, &[vc]);
        assert_eq!(s.data_path, Some(DataPath::Vlan));
        assert_eq!(s.conditions[0].status, "True", "{s:?}");
    }
}
