//! The network controllers against a real API (object layer over SQLite):
//! the mgmt cluster network spans every node; an IPPool gives each VMI NIC
//! on its network an address, keeps it while the VM exists and releases it
//! after; the node serving DHCP moves when it stops being Ready.

mod common;

use common::{until, Cluster, Run};
use serde_json::{json, Value};
use sheaf_client::{Gvr, Typed};
use sheaf_controllers::{network, vm};
use sheaf_types::core::Node;
use sheaf_types::network::{ClusterNetwork, IpPool, NetworkAttachmentDefinition};

struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn multus_spec() -> Value {
    json!({
        "domain": {"memory": {"guest": "64Mi"}, "devices": {
            "disks": [{"name": "root", "disk": {}}],
            "interfaces": [{"name": "default", "masquerade": {}}, {"name": "lan", "bridge": {}}]
        }},
        "networks": [{"name": "default", "pod": {}}, {"name": "lan", "multus": {"networkName": "lan"}}],
        "volumes": [{"name": "root", "containerDisk": {"image": "sheaf/tiny"}}],
    })
}

async fn pool(c: &Cluster) -> IpPool {
    Typed::<IpPool>::new(c.api.as_ref()).get(Some("default"), "lan").await.expect("get").expect("pool")
}

async fn set_ready(c: &Cluster, node: &str, ready: bool) {
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "AgentReady"}]}});
    c.api.merge_patch(Gvr::of::<Node>(), None, node, status, true).await.expect("node status");
}

#[tokio::test]
async fn pools_allocate_release_and_move_their_dhcp_node() {
    let c = Cluster::start(Run::Nothing, vm::Config::default()).await.expect("cluster");
    let _r = Running(tokio::spawn(network::run(c.api.clone())));
    c.add_node("n1", "4", "8Gi", true).await.expect("n1");
    c.add_node("n2", "4", "8Gi", true).await.expect("n2");

    // mgmt exists from the start and spans both nodes over VXLAN.
    let mgmt = until("mgmt spans both nodes", || async {
        let cn = Typed::<ClusterNetwork>::new(c.api.as_ref()).get(None, "mgmt").await.ok().flatten()?;
        let st = cn.status.clone()?;
        (st.nodes.len() == 2).then_some(st)
    })
    .await;
    assert_eq!(mgmt.index, Some(0));
    assert_eq!(mgmt.data_path, Some(sheaf_types::network::DataPath::Vxlan));

    let nad = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "lan", "namespace": "default"}, "spec": {"config": r#"{"type":"bridge","vlan":42}"#}});
    c.api.create(Gvr::of::<NetworkAttachmentDefinition>(), Some("default"), nad).await.expect("nad");
    let body = json!({"apiVersion": "network.harvesterhci.io/v1alpha1", "kind": "IPPool",
        "metadata": {"name": "lan", "namespace": "default"},
        "spec": {"networkName": "default/lan", "ipv4Config": {
            "serverIP": "10.42.0.2", "cidr": "10.42.0.0/24", "pool": {"start": "10.42.0.10", "end": "10.42.0.11"}}}});
    c.api.create(Gvr::of::<IpPool>(), Some("default"), body).await.expect("pool");
    let first = until("a DHCP node", || async { pool(&c).await.status?.agent_node }).await;
    assert_eq!(first, "n1", "the first Ready node of the network");

    // Two VMIs on the network: an address each, the lowest first.
    c.create_vmi("web1", "64Mi", multus_spec()).await.expect("web1");
    c.create_vmi("web2", "64Mi", multus_spec()).await.expect("web2");
    let allocs = until("two allocations", || async {
        let a = pool(&c).await.status?.allocations;
        (a.len() == 2).then_some(a)
    })
    .await;
    let ips: Vec<&str> = allocs.iter().map(|a| a.ip.as_str()).collect();
    assert_eq!(ips, ["10.42.0.10", "10.42.0.11"]);
    let web1 = allocs.iter().find(|a| a.vm == "default/web1").expect("web1's");
    assert_eq!(web1.interface, "lan");
    assert_eq!(web1.mac, sheaf_types::network::vm_mac("default", "web1", 1), "the agent's MAC for NIC 1");
    let st = pool(&c).await.status.expect("status");
    assert_eq!(st.ipv4.as_ref().map(|v| (v.used, v.available)), Some((2, 0)));

    // A third finds the pool full: the condition says who and what to do.
    c.create_vmi("web3", "64Mi", multus_spec()).await.expect("web3");
    let cond = until("pool exhausted", || async {
        let c = pool(&c).await.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.reason.as_deref() == Some("PoolExhausted")).then_some(c)
    })
    .await;
    assert!(cond.message.as_deref().unwrap_or("").contains("default/web3"), "{cond:?}");

    // web1 goes (no VM holds it): its address is released and web3 gets it.
    c.api
        .delete(Gvr::of::<sheaf_types::kubevirt::VirtualMachineInstance>(), Some("default"), "web1")
        .await
        .expect("delete");
    until("web3 takes the released address", || async {
        let a = pool(&c).await.status?.allocations;
        a.iter().any(|a| a.vm == "default/web3" && a.ip == "10.42.0.10").then_some(())
    })
    .await;

    // The serving node stops being Ready: DHCP moves to the other one.
    set_ready(&c, "n1", false).await;
    let moved = until("DHCP moves", || async {
        let n = pool(&c).await.status?.agent_node?;
        (n != "n1").then_some(n)
    })
    .await;
    assert_eq!(moved, "n2");
    // And stays there when n1 returns.
    set_ready(&c, "n1", true).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(pool(&c).await.status.and_then(|s| s.agent_node).as_deref(), Some("n2"));
}
