//! `RtNetlink` against the real kernel, inside network namespaces each test
//! creates (`ip netns add sheaf-nettest-PID-TAG`) and removes again, also
//! when it fails. Each body runs on its own thread that has entered the
//! namespace with setns(2), on a current-thread tokio runtime, so the
//! rtnetlink socket lives in that namespace and nothing on the host changes.
//! Needs root and iproute2; skipped (with a message) when not root.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use sheaf_net::{vlan_supported, Link, LinkSpec, NetError, Netlink, RtNetlink};

/// A named network namespace that is deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn create(tag: &str) -> Self {
        let name = format!("sheaf-nettest-{}-{tag}", std::process::id());
        run_ip(&["netns", "add", &name]);
        Self { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let deleted = Command::new("ip").args(["netns", "delete", &self.name]).status();
        if !matches!(deleted, Ok(status) if status.success()) {
            eprintln!("could not delete netns {}: {deleted:?}", self.name);
        }
    }
}

fn run_ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed: {status}");
}

/// These tests need root (they create network namespaces): they fail,
/// rather than pass unrun, without it.
fn is_root() -> bool {
    assert!(nix::unistd::geteuid().is_root(), "these tests create network namespaces: run them as root");
    true
}

/// Runs `body` on a fresh thread inside the namespace at `netns`; a panic in
/// `body` becomes a panic here.
fn in_netns<T, F, Fut>(netns: &Path, body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let netns = netns.to_path_buf();
    let thread = std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(body())
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn link(netlink: &RtNetlink, name: &str) -> Link {
    netlink.link(name).await.expect("get link").unwrap_or_else(|| panic!("{name} exists"))
}

async fn names(netlink: &RtNetlink) -> Vec<String> {
    netlink.links().await.expect("links").into_iter().map(|link| link.name).collect()
}

const LOCAL_VTEP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

#[test]
fn bridge_vxlan_fdb_and_veth_lifecycle() {
    if !is_root() {
        return;
    }
    let netns = TestNetns::create("main");
    let peer_netns = TestNetns::create("peer");
    let peer_path = peer_netns.path();
    in_netns(&netns.path(), move || async move {
        let netlink = RtNetlink::new().expect("connect");
        assert_eq!(names(&netlink).await, vec!["lo".to_string()], "a fresh namespace has only lo");

        // Underlay: a veth pair carrying the local VTEP address.
        netlink.create("shul0", &LinkSpec::Veth { peer: "shul1".into() }).await.expect("underlay veth");
        netlink.add_address("shul0", LOCAL_VTEP, 24).await.expect("address");
        netlink.add_address("shul0", LOCAL_VTEP, 24).await.expect("address again is fine");
        netlink.set_up("shul0", true).await.expect("underlay up");
        let underlay = link(&netlink, "shul0").await;
        assert_eq!(underlay.kind.as_deref(), Some("veth"));
        assert!(underlay.up);
        assert!(underlay.mac.is_some());

        // Bridge.
        netlink.create("shbr0", &LinkSpec::Bridge).await.expect("bridge");
        netlink.create("shbr0", &LinkSpec::Bridge).await.expect("creating it again is fine");
        let bridge = link(&netlink, "shbr0").await;
        assert_eq!(bridge.kind.as_deref(), Some("bridge"));
        assert!(!bridge.up, "created down");

        // VXLAN on the underlay, enslaved to the bridge.
        let vxlan = LinkSpec::Vxlan {
            vni: 4242,
            local: LOCAL_VTEP,
            port: 4789,
            underlay: Some("shul0".into()),
            learning: false,
        };
        netlink.create("shvx0", &vxlan).await.expect("vxlan");
        netlink.create("shvx0", &vxlan).await.expect("creating it again is fine");
        let error = netlink.create("shvx0", &LinkSpec::Bridge).await.expect_err("another kind");
        assert!(matches!(&error, NetError::WrongKind { wanted: "bridge", found, .. } if found == "vxlan"), "{error}");
        netlink.set_master("shvx0", Some("shbr0")).await.expect("enslave");
        netlink.set_mtu("shvx0", 1450).await.expect("mtu");
        netlink.set_up("shvx0", true).await.expect("vxlan up");
        netlink.set_up("shbr0", true).await.expect("bridge up");
        let port = link(&netlink, "shvx0").await;
        assert_eq!(port.kind.as_deref(), Some("vxlan"));
        assert_eq!(port.master, Some(bridge.index));
        assert_eq!(port.mtu, 1450);
        assert!(port.up);
        assert!(link(&netlink, "shbr0").await.up);
        let listed = netlink.links().await.expect("links");
        let listed_port = listed.iter().find(|l| l.name == "shvx0").expect("vxlan listed");
        assert_eq!(listed_port, &port, "links() and link() agree");

        // FDB: flood entries to two remote VTEPs.
        let remote = Ipv4Addr::new(10, 99, 0, 2);
        let other_remote = Ipv4Addr::new(10, 99, 0, 3);
        assert!(netlink.fdb("shvx0").await.expect("fdb").iter().all(|(_, dst)| dst.is_none()));
        netlink.fdb_append("shvx0", [0; 6], remote).await.expect("append");
        netlink.fdb_append("shvx0", [0; 6], remote).await.expect("append again is fine");
        netlink.fdb_append("shvx0", [0; 6], other_remote).await.expect("append a second vtep");
        let mut remotes: Vec<_> = netlink
            .fdb("shvx0")
            .await
            .expect("fdb")
            .into_iter()
            .filter_map(|(mac, dst)| (mac == [0; 6]).then_some(dst))
            .collect();
        remotes.sort();
        assert_eq!(remotes, vec![Some(remote), Some(other_remote)]);
        netlink.fdb_delete("shvx0", [0; 6], remote).await.expect("delete");
        netlink.fdb_delete("shvx0", [0; 6], remote).await.expect("delete again is fine");
        let left: Vec<_> = netlink.fdb("shvx0").await.expect("fdb").into_iter().filter(|(_, d)| d.is_some()).collect();
        assert_eq!(left, vec![([0; 6], Some(other_remote))]);

        // Releasing from the bridge.
        netlink.set_master("shvx0", None).await.expect("release");
        assert_eq!(link(&netlink, "shvx0").await.master, None);
        netlink.set_up("shvx0", false).await.expect("down");
        assert!(!link(&netlink, "shvx0").await.up);

        // A veth pair with one end moved into the second namespace.
        netlink.create("shva0", &LinkSpec::Veth { peer: "shva1".into() }).await.expect("veth");
        netlink.set_master("shva0", Some("shbr0")).await.expect("enslave veth");
        assert!(names(&netlink).await.contains(&"shva1".to_string()));
        netlink.move_to_netns("shva1", &peer_path).await.expect("move");
        assert!(netlink.link("shva1").await.expect("get").is_none(), "gone from this namespace");
        assert_eq!(link(&netlink, "shva0").await.master, Some(bridge.index), "the end here stays a port");
        let missing = netlink.move_to_netns("shva0", Path::new("/run/netns/sheaf-nettest-none")).await;
        assert!(matches!(missing, Err(NetError::Netns { .. })), "{missing:?}");
        let peer_links = in_netns(&peer_path, || async {
            let peer_netlink = RtNetlink::new().expect("connect in peer netns");
            peer_netlink.links().await.expect("links in peer netns")
        });
        let moved = peer_links.iter().find(|l| l.name == "shva1").expect("arrived in the peer namespace");
        assert_eq!(moved.kind.as_deref(), Some("veth"));

        // Deleting everything; deleting twice is fine.
        for name in ["shvx0", "shbr0", "shva0", "shul0"] {
            netlink.delete(name).await.expect("delete");
            netlink.delete(name).await.expect("delete again");
        }
        assert_eq!(names(&netlink).await, vec!["lo".to_string()], "the veth peers went with their ends");
    });
}

#[test]
fn vlan_creation_follows_vlan_supported() {
    if !is_root() {
        return;
    }
    let supported = vlan_supported();
    eprintln!("vlan_supported() = {supported}");
    let netns = TestNetns::create("vlan");
    in_netns(&netns.path(), move || async move {
        let netlink = RtNetlink::new().expect("connect");
        netlink.create("shup0", &LinkSpec::Veth { peer: "shup1".into() }).await.expect("parent veth");

        let bad_id = netlink.create("shvl0", &LinkSpec::Vlan { parent: "shup0".into(), id: 4095 }).await;
        assert!(matches!(bad_id, Err(NetError::InvalidVlanId { id: 4095, .. })), "{bad_id:?}");
        let no_parent = netlink.create("shvl0", &LinkSpec::Vlan { parent: "shnone".into(), id: 10 }).await;
        assert!(matches!(no_parent, Err(NetError::NoSuchDevice { .. })), "{no_parent:?}");

        let result = netlink.create("shvl0", &LinkSpec::Vlan { parent: "shup0".into(), id: 10 }).await;
        if supported {
            result.expect("vlan on a kernel with 8021q");
            let vlan = link(&netlink, "shvl0").await;
            assert_eq!(vlan.kind.as_deref(), Some("vlan"));
            netlink.delete("shvl0").await.expect("delete vlan");
        } else {
            let error = result.expect_err("this kernel has no 8021q");
            eprintln!("vlan creation failed as expected: {error}");
            assert!(matches!(error, NetError::KindUnsupported { kind: "vlan", .. }), "{error:?}");
            assert!(netlink.link("shvl0").await.expect("get").is_none());
        }
        netlink.delete("shup0").await.expect("delete parent");
    });
}

#[test]
fn errors_name_the_operation_and_device() {
    if !is_root() {
        return;
    }
    let netns = TestNetns::create("errors");
    in_netns(&netns.path(), || async {
        let netlink = RtNetlink::new().expect("connect");
        assert!(netlink.link("shnothere").await.expect("get").is_none());
        netlink.delete("shnothere").await.expect("deleting a missing device is fine");

        let error = netlink.set_up("shnothere", true).await.expect_err("missing device");
        assert!(matches!(&error, NetError::NoSuchDevice { .. }), "{error:?}");
        assert_eq!(error.to_string(), "set up \"shnothere\": no such device");

        let error = netlink.create("this-name-is-too-long", &LinkSpec::Bridge).await.expect_err("long name");
        assert!(matches!(error, NetError::InvalidName { .. }), "{error:?}");

        netlink.create("shbr9", &LinkSpec::Bridge).await.expect("bridge");
        let error = netlink.set_mtu("shbr9", 10).await.expect_err("mtu below the minimum");
        assert_eq!(error.errno(), Some(22), "EINVAL: {error}");
        assert!(error.to_string().starts_with("set mtu of \"shbr9\": "), "{error}");

        let error = netlink.set_master("lo", Some("lo")).await.expect_err("lo cannot be a master");
        assert!(error.errno().is_some(), "{error}");

        let error = netlink.fdb_append("shbr9", [0; 6], LOCAL_VTEP).await.expect_err("a bridge has no remote fdb");
        eprintln!("fdb_append on a bridge: {error}");
        netlink.delete("shbr9").await.expect("delete");
    });
}
