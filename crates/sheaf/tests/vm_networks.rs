//! VM networks on one node, end to end with real guests: two guests on one
//! VXLAN VM network get their addresses from the network's DHCP server and
//! reach each other; a guest on a second network reaches neither (nor
//! through the management network's NAT); the addresses show in the VMIs'
//! status; deleting the VMs and then the networks leaves no bridge, tap,
//! VXLAN device, DHCP namespace, dnsmasq or nftables rule behind. Bad
//! input is refused with messages that say what to do.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::guest::{jsonpath, tiny_server, QemuReaper};
use support::vmnet::{console_status, delete_vms_then_networks, guest_ip, network, pool_cidrs, sheaf_links, vm_on};
use support::{eventually, Server};

fn running(s: &Server, name: &str) -> String {
    assert!(
        eventually(Duration::from_secs(90), || jsonpath(s, "vmi", name, "{.status.phase}") == "Running"),
        "VMI {name} not Running: {}\n{}",
        jsonpath(s, "vmi", name, "{.status}"),
        s.log()
    );
    jsonpath(s, "vmi", name, "{.metadata.uid}")
}

#[test]
fn guests_on_one_network_meet_and_other_networks_stay_apart() {
    let root = tempfile::tempdir().expect("tempdir");
    // Only root may enter, as in a data directory: dnsmasq, which drops to
    // its own user, must still see every lease.
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let run = root.path().join("run");
    let s = tiny_server(root.path(), &[]);
    let before = sheaf_links();
    let (pa, pb) = pool_cidrs();
    s.apply(&network("net-a", 10, &pa));
    s.apply(&network("net-b", 20, &pb));
    s.apply(&vm_on("a1", "net-a", None));
    s.apply(&vm_on("a2", "net-a", None));
    s.apply(&vm_on("b1", "net-b", None));
    let (a1, a2, b1) = (running(&s, "a1"), running(&s, "a2"), running(&s, "b1"));

    let diag = || {
        let mut d = format!("pools: {}\n", s.kubectl_ok(&["get", "ippool", "-o", "yaml"]));
        for e in std::fs::read_dir(root.path().join("vmnet/dhcp")).into_iter().flatten().flatten() {
            for f in ["dnsmasq.log", "dnsmasq.conf", "leases"] {
                d.push_str(&format!("{f}: {}\n", std::fs::read_to_string(e.path().join(f)).unwrap_or_default()));
            }
        }
        d + &s.log()
    };
    let ip_a1 = guest_ip(&run, &a1, "eth1", &pa, &diag);
    let ip_a2 = guest_ip(&run, &a2, "eth1", &pa, &diag);
    let ip_b1 = guest_ip(&run, &b1, "eth1", &pb, &diag);
    assert_ne!(ip_a1, ip_a2);
    // The management NIC got its own address too.
    guest_ip(&run, &a1, "eth0", "10", &diag);

    // The leases show in the VMIs' status.
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "vmi", "a1", "{.status.interfaces[1].ipAddress}") == ip_a1),
        "a1's VM network address not in its status: {}",
        jsonpath(&s, "vmi", "a1", "{.status.interfaces}")
    );
    let pool = jsonpath(&s, "ippool", "net-a", "{.status.ipv4.used} {.status.agentNode}");
    assert!(pool.starts_with("2 "), "pool status: {pool}");

    let sock = |uid: &str| run.join(uid).join("serial.sock");
    let reach = |from: &str, to: &str| {
        console_status(&sock(from), &format!("ping -c 2 -W 2 {to} >/dev/null 2>&1"), Duration::from_secs(30))
    };
    assert_eq!(reach(&a1, &ip_a2), Some(0), "a1 cannot reach a2 ({ip_a2}) on net-a");
    assert_eq!(reach(&a2, &ip_a1), Some(0), "a2 cannot reach a1 ({ip_a1}) on net-a");
    assert_eq!(reach(&b1, &ip_a1), Some(1), "b1 (net-b) reached a1's net-a address {ip_a1}");
    assert_eq!(reach(&a1, &ip_b1), Some(1), "a1 reached b1's net-b address {ip_b1}");
    // The guests' management NAT still works: the node answers on its
    // management gateway.
    let gw = support::guest::test_net().gateway;
    assert_eq!(reach(&b1, &gw), Some(0), "b1 cannot reach its management gateway {gw}");

    // A guest that resumes after a pause announces itself (QMP
    // announce-self): the bridge learns its MAC again at once.
    let mac = jsonpath(&s, "vmi", "a2", "{.status.interfaces[1].mac}");
    let tap = sheaf_agent::network::tap_name(&a2, 1);
    let fdb = || {
        let out = std::process::Command::new("bridge").args(["fdb", "show", "dev", &tap]).output().expect("bridge");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    s.cli_ok(&["vm", "pause", "a2"]);
    assert!(
        eventually(Duration::from_secs(20), || jsonpath(&s, "vmi", "a2", "{.status.conditions}").contains("Paused")),
        "a2 not paused"
    );
    let del = std::process::Command::new("bridge")
        .args(["fdb", "del", &mac, "dev", &tap, "master"])
        .output()
        .expect("bridge fdb del");
    assert!(del.status.success() || !fdb().contains(&mac), "{}", String::from_utf8_lossy(&del.stderr));
    assert!(!fdb().contains(&mac), "the paused guest's MAC is still learned: {}", fdb());
    s.cli_ok(&["vm", "unpause", "a2"]);
    assert!(eventually(Duration::from_secs(5), || fdb().contains(&mac)), "no announcement after resume: {}", fdb());

    // A network in use cannot go.
    let e = s.kubectl_err(&["delete", "network-attachment-definitions", "net-a"], None);
    assert!(e.contains("in use by") && e.contains("default/a1") && e.contains("nothing was deleted"), "{e}");

    // VMs, then networks: nothing is left.
    delete_vms_then_networks(&s, &["a1", "a2", "b1"], &["net-a", "net-b"]);
    let state = root.path().join("vmnet");
    assert!(
        eventually(Duration::from_secs(30), || {
            let links: Vec<String> = sheaf_links().into_iter().filter(|l| !before.contains(l)).collect();
            let dhcp_left = std::fs::read_dir(state.join("dhcp")).map(|d| d.count()).unwrap_or(0);
            links.is_empty() && dhcp_left == 0
        }),
        "left behind: devices {:?}, DHCP state {:?}",
        sheaf_links(),
        std::fs::read_dir(state.join("dhcp")).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    let procs = std::process::Command::new("pgrep").args(["-af", "dnsmasq"]).output().expect("pgrep");
    let procs = String::from_utf8_lossy(&procs.stdout).to_string();
    assert!(!procs.contains(&state.display().to_string()), "dnsmasq left: {procs}");
    let tap_dirs: Vec<PathBuf> =
        std::fs::read_dir(&run).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(tap_dirs.is_empty(), "VMI directories left: {tap_dirs:?}");
    let net = support::guest::test_net();
    let rules = || {
        let out = std::process::Command::new("nft")
            .args(["list", "table", "ip", &format!("sheaf-{}", net.bridge)])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    eventually(Duration::from_secs(15), || !rules().contains(&pa));
    let rules = rules();
    assert!(!rules.contains(&pa) && !rules.contains(&pb), "VM network rules left: {rules}");
}

#[test]
fn bad_network_input_is_refused_with_what_to_do() {
    let root = tempfile::tempdir().expect("tempdir");
    let s = tiny_server(root.path(), &[]);
    let (pa, _) = pool_cidrs();
    let nad = |vlan: &str, cn: &str| {
        format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: n{vlan}\n  labels:\n    network.harvesterhci.io/clusternetwork: {cn}\nspec:\n  config: '{{\"type\":\"bridge\",\"vlan\":{vlan}}}'\n"
        )
    };
    let e = s.kubectl_err(&["apply", "-f", "-"], Some(&nad("5000", "mgmt")));
    assert!(e.contains("vlan 5000 is out of range") && e.contains("1 to 4094"), "{e}");
    let e = s.kubectl_err(&["apply", "-f", "-"], Some(&nad("7", "nosuch")));
    assert!(e.contains("cluster network \"nosuch\" does not exist"), "{e}");

    // A pool needs its network; two pools may not overlap.
    let e = s.kubectl_err(
        &["apply", "-f", "-"],
        Some(&network("net-a", 110, &pa).replace("default/net-a", "default/ghost")),
    );
    assert!(e.contains("network default/ghost does not exist"), "{e}");
    s.apply(&network("net-a", 110, &pa));
    let other = network("net-c", 130, &pa).replace(&format!("{pa}.0/24"), &format!("{pa}.128/25"));
    let other = other
        .replace(&format!("{pa}.2\n"), &format!("{pa}.130\n"))
        .replace(&format!("{pa}.10\n"), &format!("{pa}.140\n"))
        .replace(&format!("{pa}.50\n"), &format!("{pa}.150\n"));
    let e = s.kubectl_err(&["apply", "-f", "-"], Some(&other));
    assert!(e.contains("overlaps") && e.contains("IPPool default/net-a"), "{e}");
    // The half of the manifest that was valid went in; nothing else changed.
    assert_eq!(jsonpath(&s, "ippool", "net-a", "{.spec.ipv4Config.cidr}"), format!("{pa}.0/24"));
    let e = s.kubectl_err(&["delete", "clusternetwork", "mgmt"], None);
    assert!(e.contains("built in"), "{e}");

    // A VLAN id cannot change under running guests.
    let changed = network("net-a", 111, &pa);
    let e = s.kubectl_err(&["apply", "-f", "-"], Some(&changed));
    assert!(e.contains("cannot change"), "{e}");

    // An uplink that does not exist is reported by the node's agent.
    s.apply(
        "apiVersion: network.harvesterhci.io/v1beta1\nkind: ClusterNetwork\nmetadata:\n  name: data\n---\napiVersion: network.harvesterhci.io/v1beta1\nkind: VlanConfig\nmetadata:\n  name: data-all\nspec:\n  clusterNetwork: data\n  uplink:\n    nics: [nosuch9]\n",
    );
    let node = s.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "vlanconfig", "data-all", "{.status.nodes}")
            .contains("uplink NIC \\\"nosuch9\\\" does not exist")),
        "no report for {node}: {}",
        jsonpath(&s, "vlanconfig", "data-all", "{.status}")
    );
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(
            &s,
            "clusternetwork",
            "data",
            "{.status.conditions[0].message}"
        )
        .contains("nosuch9")),
        "cluster network status: {}",
        jsonpath(&s, "clusternetwork", "data", "{.status}")
    );
    let e = s.kubectl_err(&["delete", "clusternetwork", "data"], None);
    assert!(e.contains("in use by VlanConfig data-all"), "{e}");
    // One uplink per node and cluster network.
    let e = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: network.harvesterhci.io/v1beta1\nkind: VlanConfig\nmetadata:\n  name: data-again\nspec:\n  clusterNetwork: data\n  uplink:\n    nics: [eth0]\n"),
    );
    assert!(e.contains("already get cluster network data from VlanConfig data-all"), "{e}");

    // An uplink that exists gets its MTU, and gets the old one back when
    // no VlanConfig sets it any more.
    let pid = std::process::id();
    let (up, peer) = (format!("shu{pid}a"), format!("shu{pid}b"));
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).output().expect("ip");
    assert!(ip(&["link", "add", &up, "type", "veth", "peer", "name", &peer]).status.success());
    let _cleanup = DeleteLink(up.clone());
    let mtu = || std::fs::read_to_string(format!("/sys/class/net/{up}/mtu")).unwrap_or_default().trim().to_string();
    assert_eq!(mtu(), "1500");
    s.apply(&format!(
        "apiVersion: network.harvesterhci.io/v1beta1\nkind: ClusterNetwork\nmetadata:\n  name: data2\n---\napiVersion: network.harvesterhci.io/v1beta1\nkind: VlanConfig\nmetadata:\n  name: data2-all\nspec:\n  clusterNetwork: data2\n  uplink:\n    nics: [{up}]\n    linkAttributes:\n      mtu: 1400\n"
    ));
    assert!(eventually(Duration::from_secs(30), || mtu() == "1400"), "MTU of {up}: {}", mtu());
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "vlanconfig", "data2-all", "{.status.nodes}")
            .contains("\"ready\":true")),
        "{}",
        jsonpath(&s, "vlanconfig", "data2-all", "{.status}")
    );
    s.kubectl_ok(&["delete", "vlanconfig", "data2-all"]);
    assert!(eventually(Duration::from_secs(30), || mtu() == "1500"), "MTU of {up} not restored: {}", mtu());

    // A VM on a network that does not exist does not start, and says why.
    s.apply(&vm_on("lost", "nowhere", None));
    assert!(
        eventually(Duration::from_secs(60), || {
            let seen = format!(
                "{}{}",
                s.kubectl_ok(&["get", "events", "-o", "yaml"]),
                jsonpath(&s, "vmi", "lost", "{.status}")
            );
            seen.contains("network default/nowhere does not exist")
        }),
        "{}",
        s.kubectl_ok(&["get", "events"])
    );
}

struct DeleteLink(String);

impl Drop for DeleteLink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.0]).status();
    }
}
