//! [`Netlink`] in memory, for controller and agent tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{EEXIST, EINVAL, ELOOP, EOPNOTSUPP};
use crate::messages::{MAX_VLAN_ID, MAX_VNI};
use crate::{validate_name, Link, LinkSpec, NetError, Netlink};

/// An in-memory kernel with one network namespace. It keeps what the real
/// kernel would: indexes in creation order, masters, veth peers, VLAN
/// parents, FDB entries and addresses, and answers with the same errors
/// (unknown devices, duplicates, wrong kinds, out-of-range values). Bridges
/// and veth pairs always work; VLANs only if [`FakeNetlink::set_vlan_supported`]
/// (default true).
#[derive(Debug)]
pub struct FakeNetlink {
    state: Mutex<FakeState>,
}

/// What a [`FakeNetlink`] holds; [`FakeNetlink::state`] returns a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeState {
    /// Devices in this namespace by index.
    pub links: BTreeMap<u32, FakeLink>,
    /// Devices moved away, in order: (name, namespace path).
    pub moved_to_netns: Vec<(String, PathBuf)>,
    /// Whether creating a VLAN works (false: EOPNOTSUPP, like a kernel without 8021q).
    pub vlan_supported: bool,
    next_index: u32,
}

/// One device of a [`FakeNetlink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    pub link: Link,
    /// How it was created; `None` for devices added with [`FakeNetlink::add_host_device`].
    pub spec: Option<LinkSpec>,
    /// The other end of a veth pair (while both are in this namespace).
    pub peer: Option<u32>,
    /// The device a VLAN is stacked on; deleting that deletes the VLAN.
    pub parent: Option<u32>,
    pub addresses: BTreeSet<(Ipv4Addr, u8)>,
    /// FDB entries (mac, dst) of a VXLAN device.
    pub fdb: BTreeSet<([u8; 6], Ipv4Addr)>,
}

impl Default for FakeNetlink {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeNetlink {
    /// A namespace with only `lo` (index 1), like a fresh one.
    pub fn new() -> Self {
        let fake = Self {
            state: Mutex::new(FakeState {
                links: BTreeMap::new(),
                moved_to_netns: Vec::new(),
                vlan_supported: true,
                next_index: 1,
            }),
        };
        let lo = fake.add_host_device("lo", None);
        let mut state = fake.lock();
        if let Some(lo) = state.links.get_mut(&lo) {
            lo.link.mtu = 65536;
            lo.link.up = true;
            lo.link.mac = Some([0; 6]);
        }
        drop(state);
        fake
    }

    /// Adds a device Sheaf did not create (an uplink such as `eth0`, up,
    /// MTU 1500) and returns its index.
    pub fn add_host_device(&self, name: &str, kind: Option<&str>) -> u32 {
        let mut state = self.lock();
        let index = state.allocate_index();
        state.links.insert(
            index,
            FakeLink {
                link: Link {
                    index,
                    name: name.to_string(),
                    kind: kind.map(str::to_string),
                    master: None,
                    mtu: 1500,
                    up: true,
                    mac: Some(mac_for(index)),
                },
                spec: None,
                peer: None,
                parent: None,
                addresses: BTreeSet::new(),
                fdb: BTreeSet::new(),
            },
        );
        index
    }

    /// Makes VLAN creation succeed (true) or fail like a kernel without
    /// 8021q (false).
    pub fn set_vlan_supported(&self, supported: bool) {
        self.lock().vlan_supported = supported;
    }

    /// A copy of everything it holds.
    pub fn state(&self) -> FakeState {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panic while holding the lock leaves consistent data (every
        // change is made after all checks), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl FakeState {
    /// The device called `name`.
    pub fn by_name(&self, name: &str) -> Option<&FakeLink> {
        self.links.values().find(|link| link.link.name == name)
    }

    fn index_of(&self, name: &str, operation: &'static str) -> Result<u32, NetError> {
        self.by_name(name).map(|link| link.link.index).ok_or_else(|| NetError::no_such_device(operation, name))
    }

    fn allocate_index(&mut self) -> u32 {
        let index = self.next_index;
        self.next_index += 1;
        index
    }

    fn insert_created(&mut self, name: &str, kind: &str, spec: Option<LinkSpec>, parent: Option<u32>) -> u32 {
        let index = self.allocate_index();
        let link = Link {
            index,
            name: name.to_string(),
            kind: Some(kind.to_string()),
            master: None,
            mtu: 1500,
            up: false,
            mac: Some(mac_for(index)),
        };
        self.links.insert(
            index,
            FakeLink { link, spec, peer: None, parent, addresses: BTreeSet::new(), fdb: BTreeSet::new() },
        );
        index
    }

    /// Removes `index` and what the kernel removes with it: a veth's peer,
    /// the VLANs stacked on it, its ports' membership.
    fn remove(&mut self, index: u32) {
        let Some(removed) = self.links.remove(&index) else { return };
        if let Some(peer) = removed.peer {
            self.links.remove(&peer);
        }
        let gone = |link: &FakeLink| link.parent == Some(index) || removed.peer.is_some_and(|p| link.parent == Some(p));
        let stacked: Vec<u32> = self.links.values().filter(|link| gone(link)).map(|link| link.link.index).collect();
        for vlan in stacked {
            self.remove(vlan);
        }
        for link in self.links.values_mut() {
            if link.link.master == Some(index) || removed.peer.is_some_and(|p| link.link.master == Some(p)) {
                link.link.master = None;
            }
        }
    }
}

/// A locally administered MAC derived from the index.
fn mac_for(index: u32) -> [u8; 6] {
    let [a, b, c, d] = index.to_be_bytes();
    [0x02, 0x5e, a, b, c, d]
}

#[async_trait::async_trait]
impl Netlink for FakeNetlink {
    async fn links(&self) -> Result<Vec<Link>, NetError> {
        Ok(self.lock().links.values().map(|link| link.link.clone()).collect())
    }

    async fn link(&self, name: &str) -> Result<Option<Link>, NetError> {
        validate_name(name)?;
        Ok(self.lock().by_name(name).map(|link| link.link.clone()))
    }

    async fn create(&self, name: &str, spec: &LinkSpec) -> Result<(), NetError> {
        const OPERATION: &str = "create";
        validate_name(name)?;
        let mut state = self.lock();
        if let Some(existing) = state.by_name(name) {
            return if existing.link.kind.as_deref() == Some(spec.kind()) {
                Ok(())
            } else {
                Err(NetError::WrongKind {
                    device: name.to_string(),
                    wanted: spec.kind(),
                    found: existing.link.kind.clone().unwrap_or_else(|| "kind-less".to_string()),
                })
            };
        }
        match spec {
            LinkSpec::Bridge => {
                state.insert_created(name, "bridge", Some(spec.clone()), None);
            }
            LinkSpec::Vxlan { vni, underlay, .. } => {
                if *vni > MAX_VNI {
                    return Err(NetError::InvalidVni { device: name.to_string(), vni: *vni });
                }
                if let Some(underlay) = underlay {
                    state.index_of(underlay, OPERATION)?;
                }
                state.insert_created(name, "vxlan", Some(spec.clone()), None);
            }
            LinkSpec::Vlan { parent, id } => {
                if !(1..=MAX_VLAN_ID).contains(id) {
                    return Err(NetError::InvalidVlanId { device: name.to_string(), id: *id });
                }
                let parent_index = state.index_of(parent, OPERATION)?;
                if !state.vlan_supported {
                    return Err(NetError::KindUnsupported {
                        operation: OPERATION,
                        device: name.to_string(),
                        kind: "vlan",
                    });
                }
                let duplicate = state.links.values().any(|link| {
                    link.parent == Some(parent_index)
                        && matches!(&link.spec, Some(LinkSpec::Vlan { id: other, .. }) if other == id)
                });
                if duplicate {
                    return Err(NetError::kernel(OPERATION, name, EEXIST));
                }
                state.insert_created(name, "vlan", Some(spec.clone()), Some(parent_index));
            }
            LinkSpec::Veth { peer } => {
                validate_name(peer)?;
                if peer == name || state.by_name(peer).is_some() {
                    return Err(NetError::kernel(OPERATION, name, EEXIST));
                }
                let first = state.insert_created(name, "veth", Some(spec.clone()), None);
                let peer_spec = LinkSpec::Veth { peer: name.to_string() };
                let second = state.insert_created(peer, "veth", Some(peer_spec), None);
                for (end, other) in [(first, second), (second, first)] {
                    if let Some(link) = state.links.get_mut(&end) {
                        link.peer = Some(other);
                    }
                }
            }
        }
        Ok(())
    }

    async fn set_master(&self, name: &str, master: Option<&str>) -> Result<(), NetError> {
        const OPERATION: &str = "set master of";
        let mut state = self.lock();
        let index = state.index_of(name, OPERATION)?;
        let master_index = match master {
            Some(master) => {
                let master_index = state.index_of(master, OPERATION)?;
                if master_index == index {
                    return Err(NetError::kernel(OPERATION, name, ELOOP));
                }
                let is_bridge =
                    state.links.get(&master_index).is_some_and(|m| m.link.kind.as_deref() == Some("bridge"));
                if !is_bridge {
                    return Err(NetError::kernel(OPERATION, name, EOPNOTSUPP));
                }
                Some(master_index)
            }
            None => None,
        };
        if let Some(link) = state.links.get_mut(&index) {
            link.link.master = master_index;
        }
        Ok(())
    }

    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError> {
        const OPERATION: &str = "set mtu of";
        let mut state = self.lock();
        let index = state.index_of(name, OPERATION)?;
        if !(68..=65535).contains(&mtu) {
            return Err(NetError::kernel(OPERATION, name, EINVAL));
        }
        if let Some(link) = state.links.get_mut(&index) {
            link.link.mtu = mtu;
        }
        Ok(())
    }

    async fn set_up(&self, name: &str, up: bool) -> Result<(), NetError> {
        let mut state = self.lock();
        let index = state.index_of(name, if up { "set up" } else { "set down" })?;
        if let Some(link) = state.links.get_mut(&index) {
            link.link.up = up;
        }
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), NetError> {
        validate_name(name)?;
        let mut state = self.lock();
        if let Some(index) = state.by_name(name).map(|link| link.link.index) {
            state.remove(index);
        }
        Ok(())
    }

    async fn move_to_netns(&self, name: &str, netns_path: &Path) -> Result<(), NetError> {
        let mut state = self.lock();
        let index = state.index_of(name, "move to netns")?;
        let Some(moved) = state.links.remove(&index) else { return Ok(()) };
        // The peer stays here and no longer sees its other end; a bridge
        // membership ends with the move.
        if let Some(peer) = moved.peer.and_then(|peer| state.links.get_mut(&peer)) {
            peer.peer = None;
        }
        for link in state.links.values_mut() {
            if link.link.master == Some(index) {
                link.link.master = None;
            }
        }
        state.moved_to_netns.push((name.to_string(), netns_path.to_path_buf()));
        Ok(())
    }

    async fn add_address(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let mut state = self.lock();
        let index = state.index_of(name, "add address to")?;
        if prefix > 32 {
            return Err(NetError::InvalidPrefix { device: name.to_string(), prefix });
        }
        if let Some(link) = state.links.get_mut(&index) {
            link.addresses.insert((addr, prefix));
        }
        Ok(())
    }

    async fn fdb(&self, dev: &str) -> Result<Vec<([u8; 6], Option<Ipv4Addr>)>, NetError> {
        let state = self.lock();
        let index = state.index_of(dev, "list fdb of")?;
        Ok(state
            .links
            .get(&index)
            .map(|link| link.fdb.iter().map(|(mac, dst)| (*mac, Some(*dst))).collect())
            .unwrap_or_default())
    }

    async fn fdb_append(&self, dev: &str, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetError> {
        const OPERATION: &str = "append fdb entry to";
        let mut state = self.lock();
        let index = state.index_of(dev, OPERATION)?;
        let Some(link) = state.links.get_mut(&index) else { return Ok(()) };
        if link.link.kind.as_deref() != Some("vxlan") {
            // Only VXLAN devices keep remote destinations in their own FDB.
            return Err(NetError::kernel(OPERATION, dev, EINVAL));
        }
        link.fdb.insert((mac, dst));
        Ok(())
    }

    async fn fdb_delete(&self, dev: &str, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetError> {
        let mut state = self.lock();
        let index = state.index_of(dev, "delete fdb entry of")?;
        if let Some(link) = state.links.get_mut(&index) {
            link.fdb.remove(&(mac, dst));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn vxlan(underlay: Option<&str>) -> LinkSpec {
        LinkSpec::Vxlan { vni: 4242, local: VTEP, port: 4789, underlay: underlay.map(str::to_string), learning: false }
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(future)
    }

    #[test]
    fn starts_with_loopback_and_indexes_in_creation_order() {
        block_on(async {
            let fake = FakeNetlink::new();
            let eth0 = fake.add_host_device("eth0", None);
            fake.create("shbr1", &LinkSpec::Bridge).await.expect("bridge");
            fake.create("shx1", &vxlan(Some("eth0"))).await.expect("vxlan");
            let links = fake.links().await.expect("links");
            let names: Vec<_> = links.iter().map(|l| (l.index, l.name.as_str(), l.kind.as_deref())).collect();
            assert_eq!(
                names,
                vec![(1, "lo", None), (eth0, "eth0", None), (3, "shbr1", Some("bridge")), (4, "shx1", Some("vxlan"))]
            );
            let bridge = fake.link("shbr1").await.expect("get").expect("exists");
            assert!(!bridge.up, "created down");
            assert_eq!(bridge.mtu, 1500);
            assert!(fake.link("nothere").await.expect("get").is_none());
        });
    }

    #[test]
    fn create_is_idempotent_for_the_same_kind_and_refuses_another() {
        block_on(async {
            let fake = FakeNetlink::new();
            fake.create("shbr1", &LinkSpec::Bridge).await.expect("bridge");
            fake.create("shbr1", &LinkSpec::Bridge).await.expect("again");
            assert_eq!(fake.links().await.expect("links").len(), 2);
            let error = fake.create("shbr1", &vxlan(None)).await.expect_err("other kind");
            assert!(
                matches!(&error, NetError::WrongKind { wanted: "vxlan", found, .. } if found == "bridge"),
                "{error}"
            );
        });
    }

    #[test]
    fn unknown_devices_and_bad_values_are_errors() {
        block_on(async {
            let fake = FakeNetlink::new();
            assert!(matches!(fake.create("shx1", &vxlan(Some("eth9"))).await, Err(NetError::NoSuchDevice { .. })));
            assert!(matches!(fake.set_up("eth9", true).await, Err(NetError::NoSuchDevice { .. })));
            assert!(matches!(fake.set_master("lo", Some("br9")).await, Err(NetError::NoSuchDevice { .. })));
            assert!(matches!(fake.fdb("vx9").await, Err(NetError::NoSuchDevice { .. })));
            assert!(matches!(
                fake.create("a-name-that-is-too-long", &LinkSpec::Bridge).await,
                Err(NetError::InvalidName { .. })
            ));
            let vlan = LinkSpec::Vlan { parent: "lo".into(), id: 4095 };
            assert!(matches!(fake.create("shv1", &vlan).await, Err(NetError::InvalidVlanId { id: 4095, .. })));
            assert!(matches!(fake.add_address("lo", VTEP, 33).await, Err(NetError::InvalidPrefix { .. })));
            assert_eq!(fake.set_mtu("lo", 10).await.expect_err("tiny mtu").errno(), Some(EINVAL));
            fake.delete("never-was").await.expect("deleting a missing device is fine");
        });
    }

    #[test]
    fn masters_mtu_and_up() {
        block_on(async {
            let fake = FakeNetlink::new();
            fake.create("shbr1", &LinkSpec::Bridge).await.expect("bridge");
            fake.create("shx1", &vxlan(None)).await.expect("vxlan");
            fake.set_master("shx1", Some("shbr1")).await.expect("enslave");
            fake.set_mtu("shx1", 1450).await.expect("mtu");
            fake.set_up("shx1", true).await.expect("up");
            let bridge = fake.link("shbr1").await.expect("get").expect("bridge");
            let port = fake.link("shx1").await.expect("get").expect("vxlan");
            assert_eq!((port.master, port.mtu, port.up), (Some(bridge.index), 1450, true));
            assert_eq!(
                fake.set_master("shbr1", Some("shx1")).await.expect_err("not a bridge").errno(),
                Some(EOPNOTSUPP)
            );
            fake.set_master("shx1", None).await.expect("release");
            assert_eq!(fake.link("shx1").await.expect("get").expect("vxlan").master, None);
            fake.set_master("shx1", Some("shbr1")).await.expect("enslave again");
            fake.delete("shbr1").await.expect("delete bridge");
            assert_eq!(fake.link("shx1").await.expect("get").expect("vxlan").master, None, "released with the bridge");
        });
    }

    #[test]
    fn fdb_append_is_idempotent_and_delete_tolerates_absence() {
        block_on(async {
            let fake = FakeNetlink::new();
            fake.create("shx1", &vxlan(None)).await.expect("vxlan");
            let remote = Ipv4Addr::new(10, 0, 0, 2);
            fake.fdb_append("shx1", [0; 6], remote).await.expect("append");
            fake.fdb_append("shx1", [0; 6], remote).await.expect("append again");
            fake.fdb_append("shx1", [0; 6], Ipv4Addr::new(10, 0, 0, 3)).await.expect("second vtep");
            assert_eq!(
                fake.fdb("shx1").await.expect("fdb"),
                vec![([0; 6], Some(remote)), ([0; 6], Some(Ipv4Addr::new(10, 0, 0, 3)))]
            );
            fake.fdb_delete("shx1", [0; 6], remote).await.expect("delete");
            fake.fdb_delete("shx1", [0; 6], remote).await.expect("delete again");
            assert_eq!(fake.fdb("shx1").await.expect("fdb").len(), 1);
            fake.create("shbr1", &LinkSpec::Bridge).await.expect("bridge");
            assert!(fake.fdb_append("shbr1", [0; 6], remote).await.is_err(), "only vxlan devices have remote fdb");
        });
    }

    #[test]
    fn veth_pairs_die_together_and_move_to_netns() {
        block_on(async {
            let fake = FakeNetlink::new();
            fake.create("sha", &LinkSpec::Veth { peer: "shb".into() }).await.expect("veth");
            assert_eq!(
                fake.create("shc", &LinkSpec::Veth { peer: "sha".into() }).await.expect_err("peer exists").errno(),
                Some(EEXIST)
            );
            let state = fake.state();
            let a = state.by_name("sha").expect("sha");
            let b = state.by_name("shb").expect("shb");
            assert_eq!((a.peer, b.peer), (Some(b.link.index), Some(a.link.index)));
            fake.delete("shb").await.expect("delete one end");
            assert!(fake.link("sha").await.expect("get").is_none(), "the other end goes too");

            fake.create("shc", &LinkSpec::Veth { peer: "shd".into() }).await.expect("veth");
            fake.move_to_netns("shd", Path::new("/run/netns/vm1")).await.expect("move");
            assert!(fake.link("shd").await.expect("get").is_none());
            let state = fake.state();
            assert_eq!(state.moved_to_netns, vec![("shd".to_string(), PathBuf::from("/run/netns/vm1"))]);
            assert_eq!(state.by_name("shc").expect("shc").peer, None);
        });
    }

    #[test]
    fn vlans_need_support_and_die_with_their_parent() {
        block_on(async {
            let fake = FakeNetlink::new();
            fake.add_host_device("eth0", None);
            let vlan = LinkSpec::Vlan { parent: "eth0".into(), id: 100 };
            fake.set_vlan_supported(false);
            let error = fake.create("shv100", &vlan).await.expect_err("no 8021q");
            assert!(matches!(error, NetError::KindUnsupported { kind: "vlan", .. }), "{error}");
            assert_eq!(error.errno(), Some(EOPNOTSUPP));

            fake.set_vlan_supported(true);
            fake.create("shv100", &vlan).await.expect("vlan");
            let twin = fake.create("shv100b", &vlan).await.expect_err("same id on same parent");
            assert_eq!(twin.errno(), Some(EEXIST));
            fake.delete("eth0").await.expect("delete parent");
            assert!(fake.link("shv100").await.expect("get").is_none());
        });
    }

    #[test]
    fn addresses_are_idempotent() {
        block_on(async {
            let fake = FakeNetlink::new();
            fake.create("sha", &LinkSpec::Veth { peer: "shb".into() }).await.expect("veth");
            fake.add_address("sha", VTEP, 24).await.expect("address");
            fake.add_address("sha", VTEP, 24).await.expect("again");
            let state = fake.state();
            assert_eq!(state.by_name("sha").expect("sha").addresses, BTreeSet::from([(VTEP, 24)]));
        });
    }
}
