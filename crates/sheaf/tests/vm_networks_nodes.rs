//! A VM network across two nodes (network namespaces joined by a bridge
//! as the physical switch, each with its own `sheaf agent`): the VXLAN
//! overlay between the nodes carries one VM network; its DHCP server runs
//! on one node and serves the guests of both; guests on different nodes
//! reach each other; a guest on a second network reaches neither; each
//! guest's management network NATs out of its own node; and deleting the
//! VMs and then the networks leaves nothing in either node.

mod support;

use std::time::Duration;

use support::eventually;
use support::guest::jsonpath;
use support::nodes::Cluster;
use support::vmnet::{console_status, delete_vms_then_networks, guest_ip, network, pool_cidrs, sheaf_links_in, vm_on};

#[test]
fn a_vxlan_network_spans_nodes_with_dhcp_and_isolation() {
    let root = tempfile::tempdir().expect("tempdir");
    let c = Cluster::start(root.path(), 2);
    let s = &c.server;
    let (pa, pb) = pool_cidrs();
    s.apply(&network("net-a", 10, &pa));
    s.apply(&network("net-b", 20, &pb));
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    s.apply(&vm_on("a1", "net-a", Some(&n0.name)));
    s.apply(&vm_on("a2", "net-a", Some(&n1.name)));
    s.apply(&vm_on("b1", "net-b", Some(&n1.name)));
    let running = |name: &str| {
        assert!(
            eventually(Duration::from_secs(120), || jsonpath(s, "vmi", name, "{.status.phase}") == "Running"),
            "VMI {name} not Running: {}\n{}",
            jsonpath(s, "vmi", name, "{.status}"),
            c.logs()
        );
        jsonpath(s, "vmi", name, "{.metadata.uid}")
    };
    let (a1, a2, b1) = (running("a1"), running("a2"), running("b1"));
    assert_eq!(jsonpath(s, "vmi", "a1", "{.status.nodeName}"), n0.name);
    assert_eq!(jsonpath(s, "vmi", "a2", "{.status.nodeName}"), n1.name);

    let diag = || format!("pools: {}\n{}", s.kubectl_ok(&["get", "ippool", "-o", "yaml"]), c.logs());
    let ip_a1 = guest_ip(&n0.run_dir, &a1, "eth1", &pa, &diag);
    let ip_a2 = guest_ip(&n1.run_dir, &a2, "eth1", &pa, &diag);
    let ip_b1 = guest_ip(&n1.run_dir, &b1, "eth1", &pb, &diag);
    // One DHCP server per network: the guest on the other node was served
    // across the overlay.
    let agent = jsonpath(s, "ippool", "net-a", "{.status.agentNode}");
    assert!(agent == n0.name || agent == n1.name, "net-a served by {agent:?}");
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(s, "vmi", "a2", "{.status.interfaces[1].ipAddress}") == ip_a2),
        "a2's lease not in its status: {}",
        jsonpath(s, "vmi", "a2", "{.status.interfaces}")
    );

    let reach = |run: &std::path::Path, uid: &str, to: &str| {
        console_status(
            &run.join(uid).join("serial.sock"),
            &format!("ping -c 2 -W 2 {to} >/dev/null 2>&1"),
            Duration::from_secs(40),
        )
    };
    assert_eq!(reach(&n0.run_dir, &a1, &ip_a2), Some(0), "a1 ({}) cannot reach a2 ({ip_a2}) on {}", n0.name, n1.name);
    assert_eq!(reach(&n1.run_dir, &a2, &ip_a1), Some(0), "a2 cannot reach a1 ({ip_a1})");
    assert_eq!(reach(&n1.run_dir, &b1, &ip_a1), Some(1), "b1 on net-b reached a1's net-a address {ip_a1}");
    assert_eq!(reach(&n1.run_dir, &b1, &ip_a2), Some(1), "b1 on net-b reached a2 on its own node");
    assert_eq!(reach(&n0.run_dir, &a1, &ip_b1), Some(1), "a1 reached b1's net-b address {ip_b1}");
    // The management network NATs out of each node: the switch (outside
    // every node) answers.
    for (run, uid, who) in [(&n0.run_dir, &a1, "a1"), (&n1.run_dir, &a2, "a2"), (&n1.run_dir, &b1, "b1")] {
        assert_eq!(reach(run, uid, &c.switch_ip), Some(0), "{who} cannot reach {} through its NAT", c.switch_ip);
    }

    // VMs, then networks: nothing is left on either node.
    delete_vms_then_networks(s, &["a1", "a2", "b1"], &["net-a", "net-b"]);
    for (i, n) in c.nodes.iter().enumerate() {
        let links = || {
            let out = c.exec(i, &["ip", "-o", "link", "show"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let names: Vec<String> =
                text.lines().filter_map(|l| l.split(':').nth(1)).map(|w| w.trim().to_string()).collect();
            let mut left = sheaf_links_in(Some(&names.join(" ")));
            left.extend(names.into_iter().filter(|n| n.starts_with("sh") && n.contains('n') && n.len() == 13));
            left
        };
        assert!(eventually(Duration::from_secs(30), || links().is_empty()), "{}: devices left: {:?}", n.name, links());
        let dhcp = n.root.join("vmnet").join("dhcp");
        assert!(
            eventually(Duration::from_secs(15), || std::fs::read_dir(&dhcp).map(|d| d.count()).unwrap_or(0) == 0),
            "{}: DHCP servers left: {:?}",
            n.name,
            std::fs::read_dir(&dhcp).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        );
        let procs = std::process::Command::new("pgrep").args(["-af", "dnsmasq"]).output().expect("pgrep");
        let procs = String::from_utf8_lossy(&procs.stdout).to_string();
        assert!(!procs.contains(&dhcp.display().to_string()), "{}: dnsmasq left: {procs}", n.name);
        let rules = || String::from_utf8_lossy(&c.exec(i, &["nft", "list", "ruleset"]).stdout).to_string();
        assert!(
            eventually(Duration::from_secs(15), || !rules().contains(&pa) && !rules().contains(&pb)),
            "{}: VM network rules left: {}",
            n.name,
            rules()
        );
    }
}
