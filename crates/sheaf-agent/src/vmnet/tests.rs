use super::*;
use serde_json::Value;
use sheaf_client::WatchStream;
use sheaf_net::FakeNetlink;

/// The segment and device logic needs no API: every call fails.
struct NoApi;

fn no() -> ClientError {
    ClientError::other("no API in this test")
}

#[async_trait::async_trait]
impl Api for NoApi {
    async fn get(&self, _: Gvr, _: Option<&str>, _: &str) -> Result<Option<Value>, ClientError> {
        Err(no())
    }
    async fn list(&self, _: Gvr, _: Option<&str>, _: &Selectors) -> Result<(Vec<Value>, String), ClientError> {
        Err(no())
    }
    async fn watch(&self, _: Gvr, _: Option<&str>, _: &Selectors, _: &str) -> Result<WatchStream, ClientError> {
        Err(no())
    }
    async fn create(&self, _: Gvr, _: Option<&str>, _: Value) -> Result<Value, ClientError> {
        Err(no())
    }
    async fn update(&self, _: Gvr, _: Option<&str>, _: Value) -> Result<Value, ClientError> {
        Err(no())
    }
    async fn update_status(&self, _: Gvr, _: Option<&str>, _: Value) -> Result<Value, ClientError> {
        Err(no())
    }
    async fn merge_patch(&self, _: Gvr, _: Option<&str>, _: &str, _: Value, _: bool) -> Result<Value, ClientError> {
        Err(no())
    }
    async fn delete(&self, _: Gvr, _: Option<&str>, _: &str) -> Result<(), ClientError> {
        Err(no())
    }
}

fn node(name: &str, ip: &str, labels: &[(&str, &str)]) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()},
        "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}
    }))
    .expect("node")
}

fn world() -> World {
    let cn = |name: &str, index: u32, path: &str, nodes: &[&str]| -> ClusterNetwork {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"index": index, "dataPath": path, "nodes": nodes}
        }))
        .expect("cn")
    };
    let nad = |name: &str, cn: &str, vlan: u16| -> NetworkAttachmentDefinition {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"network.harvesterhci.io/clusternetwork": cn}},
            "spec": {"config": format!(r#"{{"type":"bridge","vlan":{vlan}}}"#)}
        }))
        .expect("nad")
    };
    let vc: VlanConfig = serde_json::from_value(json!({
        "metadata": {"name": "vc"},
        "spec": {"clusterNetwork": "data", "nodeSelector": {"rack": "a"},
                 "uplink": {"nics": ["eth5"], "linkAttributes": {"mtu": 9000}}}
    }))
    .expect("vc");
    World {
        nads: vec![nad("a", "mgmt", 100), nad("b", "mgmt", 200), nad("v", "data", 7)],
        cns: vec![cn("mgmt", 0, "VXLAN", &["n1", "n2", "n3"]), cn("data", 1, "VLAN", &["n1"])],
        pools: vec![],
        nodes: vec![node("n1", "10.0.0.1", &[("rack", "a")]), node("n2", "10.0.0.2", &[]), node("n3", "10.0.0.3", &[])],
        vcs: vec![vc],
    }
}

fn nets(nl: Arc<FakeNetlink>) -> VmNetworks {
    VmNetworks::new(Arc::new(NoApi), "n1", nl, Path::new("/nonexistent/run"), None, false)
}

#[test]
fn segments_follow_the_cluster_network() {
    let n = nets(Arc::new(FakeNetlink::new()));
    let w = world();
    let a = n.segment(&w, "default/a").expect("a");
    assert_eq!(a.vni, 4096 + 100);
    assert_eq!(a.mtu, 1450, "VXLAN takes 50 bytes of the 1500 default");
    assert_eq!(
        a.path,
        SegmentPath::Vxlan {
            port: 4789,
            local: "10.0.0.1".parse().expect("ip"),
            peers: vec!["10.0.0.2".parse().expect("ip"), "10.0.0.3".parse().expect("ip")]
        }
    );
    let b = n.segment(&w, "default/b").expect("b");
    assert_ne!(a.vni, b.vni, "two VLANs, two segments");
    let v = n.segment(&w, "default/v").expect("v");
    assert_eq!(v.vni, 2 * 4096 + 7);
    assert_eq!((v.path, v.mtu), (SegmentPath::Vlan { uplink: "eth5".into(), id: 7 }, 9000));
    // Unknown networks and nodes off the cluster network are clear errors.
    let e = n.segment(&w, "default/nope").expect_err("unknown").to_string();
    assert!(e.contains("does not exist"), "{e}");
    let n2 = VmNetworks::new(Arc::new(NoApi), "n2", Arc::new(FakeNetlink::new()), Path::new("/x/run"), None, false);
    let e = n2.segment(&w, "default/v").expect_err("n2 has no uplink").to_string();
    assert!(e.contains("VlanConfig"), "{e}");
}

#[tokio::test]
async fn segment_devices_are_made_idempotently_and_follow_peers() {
    let nl = Arc::new(FakeNetlink::new());
    let n = nets(nl.clone());
    let w = world();
    let mut seg = n.segment(&w, "default/a").expect("a");
    n.ensure_segment(&seg).await.expect("first");
    n.ensure_segment(&seg).await.expect("again");
    let st = nl.state();
    let br = st.by_name("shbr001064").expect("bridge");
    let vx = st.by_name("shvx001064").expect("vxlan");
    assert_eq!(vx.link.master, Some(br.link.index));
    assert!(br.link.up && vx.link.up);
    assert_eq!((br.link.mtu, vx.link.mtu), (1450, 1450));
    let dsts: Vec<String> = vx.fdb.iter().map(|(_, d)| d.to_string()).collect();
    assert_eq!(dsts, ["10.0.0.2", "10.0.0.3"]);
    assert!(matches!(vx.spec, Some(LinkSpec::Vxlan { vni: 4196, learning: true, .. })), "{:?}", vx.spec);
    // A node leaves the network: its flooding entry goes.
    if let SegmentPath::Vxlan { peers, .. } = &mut seg.path {
        peers.retain(|p| p.to_string() != "10.0.0.3");
    }
    n.ensure_segment(&seg).await.expect("after a node left");
    let st = nl.state();
    let dsts: Vec<String> = st.by_name("shvx001064").expect("vxlan").fdb.iter().map(|(_, d)| d.to_string()).collect();
    assert_eq!(dsts, ["10.0.0.2"]);
    assert_eq!(st.links.values().filter(|l| l.link.name.starts_with("sh")).count(), 2, "nothing else was made");
}

#[tokio::test]
async fn the_vlan_path_needs_its_uplink_and_puts_a_subinterface_on_the_bridge() {
    let nl = Arc::new(FakeNetlink::new());
    nl.set_vlan_supported(true);
    let n = nets(nl.clone());
    let seg = n.segment(&world(), "default/v").expect("v");
    let e = n.ensure_segment(&seg).await.expect_err("no eth5 yet").to_string();
    assert!(e.contains("uplink eth5 does not exist"), "{e}");
    let eth5 = nl.add_host_device("eth5", None);
    n.ensure_segment(&seg).await.expect("with eth5");
    let st = nl.state();
    let vl = st.by_name("shvl002007").expect("vlan device");
    assert_eq!(vl.parent, Some(eth5));
    assert_eq!(vl.spec, Some(LinkSpec::Vlan { parent: "eth5".into(), id: 7 }));
    assert_eq!(vl.link.master, st.by_name("shbr002007").map(|b| b.link.index));
    assert_eq!(vl.link.mtu, 9000);
}

#[test]
fn leases_and_owned_names() {
    let l = parse_leases("1767225600 02:aa:bb:cc:dd:ee 10.1.0.10 vm1 01:02:aa:bb:cc:dd:ee\nbad line\n");
    assert_eq!(l.get("10.1.0.10").map(String::as_str), Some("2026-01-01T00:00:00Z"));
    assert_eq!(l.len(), 1);
    assert_eq!(owned_vni("shbr001064"), Some(0x1064));
    assert_eq!(owned_vni("shdh001064"), Some(0x1064));
    assert_eq!(owned_vni("shbr0010"), None);
    assert_eq!(owned_vni("eth0"), None);
    assert_eq!(owned_vni("sheaf-br0"), None);
}
