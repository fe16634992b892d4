use super::*;
use serde_json::json;

fn nad(labels: Value, config: &str) -> NetworkAttachmentDefinition {
    serde_json::from_value(json!({
        "metadata": {"name": "vlan100", "namespace": "default", "labels": labels},
        "spec": {"config": config}
    }))
    .expect("nad")
}

fn has(errs: &[FieldError], field: &str, text: &str) -> bool {
    errs.iter().any(|e| e.field == field && e.message.contains(text))
}

#[test]
fn subnets() {
    let s: Subnet = "10.1.0.0/24".parse().expect("subnet");
    assert!(s.contains_host("10.1.0.1".parse().expect("ip")));
    assert!(!s.contains_host("10.1.0.0".parse().expect("ip")));
    assert!(!s.contains_host("10.1.0.255".parse().expect("ip")));
    assert!(!s.contains_host("10.1.1.1".parse().expect("ip")));
    let big: Subnet = "10.0.0.0/8".parse().expect("subnet");
    assert!(s.overlaps(&big) && big.overlaps(&s));
    assert!(!s.overlaps(&"10.1.1.0/24".parse().expect("subnet")));
    for bad in ["10.1.0.1/24", "10.1.0.0", "10.1.0.0/31", "x/24", "10.0.0.0/7"] {
        assert!(bad.parse::<Subnet>().is_err(), "{bad}");
    }
}

#[test]
fn nad_configs() {
    let ok = nad(
        json!({CLUSTER_NETWORK_LABEL: "mgmt", NETWORK_TYPE_LABEL: "L2VlanNetwork"}),
        r#"{"cniVersion":"0.3.1","name":"vlan100","type":"bridge","bridge":"mgmt-br","promiscMode":true,"vlan":100,"ipam":{}}"#,
    );
    assert!(ok.validate(None).is_empty(), "{:?}", ok.validate(None));
    assert_eq!(ok.vlan(), Some(100));
    assert_eq!(ok.cluster_network(), "mgmt");
    assert_eq!(ok.key(), "default/vlan100");

    let e = nad(json!({}), r#"{"type":"bridge","vlan":4095}"#).validate(None);
    assert!(has(&e, "spec.config", "1 to 4094"), "{e:?}");
    let e = nad(json!({}), r#"{"type":"macvlan"}"#).validate(None);
    assert!(has(&e, "spec.config", "\"bridge\""), "{e:?}");
    let e = nad(json!({}), "{not json").validate(None);
    assert!(has(&e, "spec.config", "not valid JSON"), "{e:?}");
    let e = nad(json!({}), "").validate(None);
    assert!(e.iter().any(|e| e.field == "spec.config"), "{e:?}");
    let e = nad(json!({}), r#"{"type":"bridge","vlan":5,"ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#)
        .validate(None);
    assert!(has(&e, "spec.config", "IPPool"), "{e:?}");
    let e = nad(json!({NETWORK_TYPE_LABEL: "L2VlanNetwork"}), r#"{"type":"bridge"}"#).validate(None);
    assert!(has(&e, "spec.config", "1 to 4094"), "{e:?}");
    let e = nad(json!({NETWORK_TYPE_LABEL: "Overlay"}), r#"{"type":"bridge","vlan":3}"#).validate(None);
    assert!(!e.is_empty(), "{e:?}");

    // VLAN and cluster network are fixed once created.
    let old = nad(json!({}), r#"{"type":"bridge","vlan":100}"#);
    let new = nad(json!({}), r#"{"type":"bridge","vlan":101}"#);
    assert!(has(&new.validate(Some(&old)), "spec.config", "cannot change"));
    let same = nad(json!({}), r#"{"type":"bridge","vlan":100,"promiscMode":true}"#);
    assert!(same.validate(Some(&old)).is_empty());
}

fn pool(cfg: Value) -> IpPool {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"networkName": "default/vlan100", "ipv4Config": cfg}
    }))
    .expect("pool")
}

#[test]
fn pools() {
    let p = pool(json!({
        "serverIP": "10.9.0.100", "cidr": "10.9.0.0/24", "router": "10.9.0.1", "dns": ["10.9.0.250"],
        "pool": {"start": "10.9.0.101", "end": "10.9.0.110", "exclude": ["10.9.0.105"]}, "leaseTime": 300
    }));
    assert!(p.validate(None).is_empty(), "{:?}", p.validate(None));
    let r = p.range().expect("range");
    assert_eq!(r.capacity(), 9);
    assert_eq!(r.assignable().next(), Some(Ipv4Addr::new(10, 9, 0, 101)));
    assert!(!r.assignable().any(|a| a == Ipv4Addr::new(10, 9, 0, 105)));

    let e = pool(json!({"serverIP": "10.9.0.105", "cidr": "10.9.0.0/24",
        "pool": {"start": "10.9.0.101", "end": "10.9.0.110"}}))
    .validate(None);
    assert!(has(&e, "spec.ipv4Config.serverIP", "inside the pool"), "{e:?}");
    let e = pool(json!({"serverIP": "10.9.1.1", "cidr": "10.9.0.0/24",
        "pool": {"start": "10.9.0.120", "end": "10.9.0.110"}}))
    .validate(None);
    assert!(has(&e, "spec.ipv4Config.serverIP", "not a host address"), "{e:?}");
    assert!(has(&e, "spec.ipv4Config.pool.end", "before"), "{e:?}");
    let e = pool(json!({"cidr": "10.9.0.1/24"})).validate(None);
    assert!(has(&e, "spec.ipv4Config.cidr", "host bits"), "{e:?}");
    assert!(e.iter().any(|e| e.field == "spec.ipv4Config.serverIP"), "{e:?}");
    let e = pool(json!({"serverIP": "10.9.0.2", "cidr": "10.9.0.0/24", "leaseTime": 5, "dns": ["dns.example"],
        "pool": {"start": "10.9.0.10", "end": "10.9.0.20"}}))
    .validate(None);
    assert!(has(&e, "spec.ipv4Config.leaseTime", "120"), "{e:?}");
    assert!(has(&e, "spec.ipv4Config.dns[0]", "IPv4"), "{e:?}");

    let mut bad = p.clone();
    bad.spec.network_name = "vlan100".into();
    assert!(has(&bad.validate(None), "spec.networkName", "NAMESPACE/NAME"));
    let mut moved = p.clone();
    moved.spec.ipv4_config.cidr = "10.8.0.0/24".into();
    assert!(moved.validate(Some(&p)).iter().any(|e| e.field == "spec.ipv4Config.cidr"));
}

#[test]
fn vlan_configs_and_cluster_networks() {
    let vc: VlanConfig = serde_json::from_value(json!({
        "metadata": {"name": "vc"},
        "spec": {"clusterNetwork": "data", "nodeSelector": {"kubernetes.io/hostname": "node1"},
                 "uplink": {"nics": ["eth5"], "linkAttributes": {"mtu": 9000}}}
    }))
    .expect("vc");
    assert!(vc.validate(None).is_empty(), "{:?}", vc.validate(None));
    let mut bad = vc.clone();
    bad.spec.cluster_network = "mgmt".into();
    bad.spec.uplink.nics = vec!["eth/0".into(), "eth1".into()];
    bad.spec.uplink.link_attributes = Some(LinkAttributes { mtu: Some(100), tx_q_len: None });
    let e = bad.validate(None);
    assert!(has(&e, "spec.clusterNetwork", "mgmt"), "{e:?}");
    assert!(has(&e, "spec.uplink.nics[0]", "interface name"), "{e:?}");
    assert!(has(&e, "spec.uplink.nics", "bonding"), "{e:?}");
    assert!(has(&e, "spec.uplink.linkAttributes.mtu", "576"), "{e:?}");

    let cn: ClusterNetwork =
        serde_json::from_value(json!({"metadata": {"name": "mgmt"}, "spec": {"dataPath": "VLAN"}})).expect("cn");
    assert!(has(&cn.validate(None), "spec.dataPath", "no uplink"));
    let cn: ClusterNetwork = serde_json::from_value(json!({"metadata": {"name": "much-too-long-name"}})).expect("cn");
    assert!(has(&cn.validate(None), "metadata.name", "12"));
    assert_eq!(segment_vni(0, 100), 4196);
    assert!(segment_vni(MAX_CLUSTER_NETWORK_INDEX, 4094) < 1 << 24);
}
