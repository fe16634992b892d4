//! The management network end to end: the tiny guest gets its address by
//! DHCP from the node's dnsmasq (the one in the VMI's status), the node
//! reaches it on the bridge, its traffic to another network leaves
//! masqueraded as the node, and deleting it removes its tap and lease.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::guest::{apply_running, test_net, tiny_server, tiny_vm, QemuReaper};
use support::{eventually, Server};

fn jsonpath(s: &Server, kind: &str, path: &str) -> String {
    support::guest::jsonpath(s, kind, "net", path)
}

/// A network namespace with a veth to the host: host 198.51.100.1/24, the
/// namespace 198.51.100.2/24, and a small HTTP server there that logs who
/// connects. Removed on drop.
struct Outside {
    ns: String,
    veth: String,
    server: std::process::Child,
    log: std::path::PathBuf,
}

impl Outside {
    fn new(dir: &std::path::Path) -> Outside {
        let pid = std::process::id();
        let (ns, veth, peer) = (format!("shn{pid}"), format!("shv{pid}"), format!("shp{pid}"));
        // TEST-NET-2 must not be a network this host is already on.
        let addrs = Command::new("ip").args(["-4", "-o", "addr"]).output().expect("ip addr");
        assert!(
            !String::from_utf8_lossy(&addrs.stdout).contains(" 198.51.100."),
            "this host already uses 198.51.100.0/24; the test needs it for its own namespace"
        );
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", "198.51.100.1/24", "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&["-n", &ns, "addr", "add", "198.51.100.2/24", "dev", &peer]);
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let log = dir.join("http.log");
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-m", "http.server", "--bind", "198.51.100.2", "8080"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("http server in the namespace");
        Outside { ns, veth, server, log }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn guests_get_dhcp_nat_and_are_cleaned_up() {
    let root = tempfile::tempdir().expect("tempdir");
    // Only root may enter, as in a data directory: dnsmasq, which drops to
    // its own user, must still see every lease.
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let outside = Outside::new(root.path());
    let s = tiny_server(root.path(), &[]);
    let net = test_net();

    // The user data is a script: once the network is up, fetch a page from
    // the outside network and report.
    let vm = tiny_vm("net", "net-test").replace(
        "          userData: |\n            #cloud-config\n            # marker: net-test\n",
        "          userData: |\n            #!/bin/sh\n            ( for i in $(seq 60); do\n                if wget -q -O /tmp/page http://198.51.100.2:8080/; then echo SHEAF-GUEST nat-ok > /dev/ttyS0; break; fi\n                sleep 1\n              done ) &\n",
    );
    assert!(vm.contains("wget"), "{vm}");
    let uid = apply_running(&s, &vm, "net");
    let ip = jsonpath(&s, "vmi", "{.status.interfaces[0].ipAddress}");
    let prefix = net.gateway.rsplit_once('.').map(|(p, _)| p.to_string()).unwrap_or_default();
    assert!(ip.starts_with(&format!("{prefix}.")), "address {ip:?} is not in {}", net.cidr);

    // DHCP gave the guest exactly that address.
    let serial = root.path().join("run").join(&uid).join("serial.log");
    let want = format!("SHEAF-GUEST ip=eth0 {ip}/24");
    assert!(
        eventually(Duration::from_secs(90), || std::fs::read_to_string(&serial).is_ok_and(|l| l.contains(&want))),
        "guest did not get {ip}: {}",
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    // The node reaches the guest on the bridge.
    let ping = Command::new("ping").args(["-c", "2", "-W", "2", &ip]).output().expect("ping");
    assert!(ping.status.success(), "ping {ip}: {}", String::from_utf8_lossy(&ping.stdout));

    // Traffic to another network leaves masqueraded as the node.
    assert!(
        eventually(Duration::from_secs(90), || std::fs::read_to_string(&serial)
            .is_ok_and(|l| l.contains("SHEAF-GUEST nat-ok"))),
        "guest could not reach 198.51.100.2: {}",
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&outside.log).unwrap_or_default();
    assert!(log.contains("198.51.100.1 - -"), "the outside saw the node's address: {log}");
    assert!(!log.contains(&ip), "the guest's own address leaked: {log}");

    // Deleting the VM removes its tap and its DHCP host entry.
    let tap = sheaf_agent::network::tap_name(&uid, 0);
    assert!(std::path::Path::new("/sys/class/net").join(&tap).exists(), "tap {tap} exists while running");
    s.kubectl_ok(&["delete", "vm", "net"]);
    assert!(
        eventually(Duration::from_secs(30), || !std::path::Path::new("/sys/class/net").join(&tap).exists()),
        "tap {tap} left behind"
    );
    let hosts = root.path().join(format!("net-{}", net.bridge)).join("dnsmasq.conf");
    let text = std::fs::read_to_string(&hosts).unwrap_or_default();
    assert!(!text.lines().any(|l| l.starts_with("dhcp-host=") && l.contains(&ip)), "DHCP entry left behind: {text}");
}
