//! VM networks on this node (docs/design/networks.md): the segments
//! (bridge + VXLAN or 802.1Q device) that local guest NICs and local DHCP
//! servers need, the guests' taps on them, the DHCP servers of the IPPools
//! this node serves, and this node's report in each VlanConfig.
//!
//! ```text
//!  VMI starts ──attach──▶ segment ensured ──▶ tap on its bridge ──▶ vnic-<i>.json in the VMI dir
//!  VMI ends   ──detach──▶ taps deleted, vnic files removed ──▶ reconcile
//!  reconcile (on every change of networks, pools, nodes; every 10 s):
//!     wanted segments = those of vnic files ∪ those of pools served here
//!     ensure each (links, FDB towards the other nodes), delete the other segments this agent made
//!     DHCP: a namespace + veth + dnsmasq per pool served here, stopped for the rest; leases → pool status
//!     VlanConfigs matching this node: uplink checked, MTU set (the old one kept and restored when
//!       no VlanConfig sets it any more), status.nodes[this node]
//!     management network: the pools' subnets blocked
//! ```
//!
//! Nothing is kept in memory that is not also in the kernel, the VMI
//! directories or the store: the agent can restart at any point and the
//! next pass converges. Only segments (`shbr`/`shvx`/`shvl`/`shdh` + 6
//! hex digits) and namespaces recorded under this node's state directory
//! (`RUN_ROOT/../vmnet`), taps of VMIs, and the MTU of uplinks named by a
//! VlanConfig are ever changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_net::{LinkSpec, Netlink};
use sheaf_types::core::Node;
use sheaf_types::network::{
    segment_vni, ClusterNetwork, DataPath, IpPool, NetworkAttachmentDefinition, VlanConfig, VlanNodeStatus,
    DEFAULT_VXLAN_PORT, VXLAN_OVERHEAD,
};

use crate::network::run;

#[derive(Debug, thiserror::Error)]
pub enum VmNetError {
    #[error(
        "network {0} does not exist: create its NetworkAttachmentDefinition, or fix networks[].multus.networkName"
    )]
    NoNetwork(String),
    #[error("network {network}: {detail}")]
    NotReady { network: String, detail: String },
    #[error("{0}")]
    Api(#[from] ClientError),
    #[error("{0}")]
    Netlink(#[from] sheaf_net::NetError),
    #[error("{0}")]
    Host(#[from] crate::network::NetError),
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// How one VM network is laid out on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub vni: u32,
    pub path: SegmentPath,
    /// MTU of the bridge and the guests' NICs.
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SegmentPath {
    Vxlan { port: u16, local: Ipv4Addr, peers: Vec<Ipv4Addr> },
    Vlan { uplink: String, id: u16 },
}

pub fn bridge_name(vni: u32) -> String {
    format!("shbr{vni:06x}")
}
fn vxlan_name(vni: u32) -> String {
    format!("shvx{vni:06x}")
}
fn vlan_name(vni: u32) -> String {
    format!("shvl{vni:06x}")
}
fn dhcp_veth_name(vni: u32) -> String {
    format!("shdh{vni:06x}")
}

/// The segment id of a device Sheaf owns (`shbr0011a4` → 0x11a4).
fn owned_vni(name: &str) -> Option<u32> {
    let rest = ["shbr", "shvx", "shvl", "shdh"].iter().find_map(|p| name.strip_prefix(p))?;
    (rest.len() == 6).then(|| u32::from_str_radix(rest, 16).ok()).flatten()
}

/// A VMI NIC on a VM network: `vnic-<i>.json` in the VMI's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VNic {
    pub network: String,
    pub tap: String,
    pub mac: String,
    pub segment: Segment,
}

/// Everything read from the store in one pass.
#[derive(Clone, Default)]
struct World {
    nads: Vec<NetworkAttachmentDefinition>,
    cns: Vec<ClusterNetwork>,
    pools: Vec<IpPool>,
    nodes: Vec<Node>,
    vcs: Vec<VlanConfig>,
}

impl World {
    async fn read(api: &dyn Api) -> Result<World, ClientError> {
        let all = Selectors::default();
        Ok(World {
            nads: Typed::new(api).list(None, &all).await?,
            cns: Typed::new(api).list(None, &all).await?,
            pools: Typed::new(api).list(None, &all).await?,
            nodes: Typed::new(api).list(None, &all).await?,
            vcs: Typed::new(api).list(None, &all).await?,
        })
    }
    fn nad(&self, key: &str) -> Option<&NetworkAttachmentDefinition> {
        self.nads.iter().find(|n| n.key() == key)
    }
    fn cn(&self, name: &str) -> Option<&ClusterNetwork> {
        self.cns.iter().find(|c| c.metadata.name.as_deref() == Some(name))
    }
    fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.metadata.name.as_deref() == Some(name))
    }
    /// The VlanConfig that gives `node` its uplink for cluster network `cn`.
    fn vlan_config(&self, cn: &str, node: &str) -> Option<&VlanConfig> {
        let n = self.node(node)?;
        self.vcs.iter().find(|v| {
            v.spec.cluster_network == cn
                && v.spec.node_selector.iter().all(|(k, val)| n.metadata.labels.get(k) == Some(val))
        })
    }
}

fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status.as_ref()?.addresses.iter().find(|a| a.type_ == "InternalIP").and_then(|a| a.address.parse().ok())
}

/// The node's VM networks.
pub struct VmNetworks {
    api: Arc<dyn Api>,
    node: String,
    nl: Arc<dyn Netlink>,
    run_root: PathBuf,
    state: PathBuf,
    vlan_capable: bool,
    management: Option<Arc<crate::network::Management>>,
    /// Serialises changes to devices.
    lock: tokio::sync::Mutex<()>,
    /// The pools as last read: guest addresses for VMI status.
    pools: RwLock<Vec<IpPool>>,
    changed: Arc<tokio::sync::Notify>,
}

impl VmNetworks {
    pub fn new(
        api: Arc<dyn Api>,
        node: &str,
        nl: Arc<dyn Netlink>,
        run_root: &Path,
        management: Option<Arc<crate::network::Management>>,
        vlan_capable: bool,
    ) -> VmNetworks {
        VmNetworks {
            api,
            node: node.to_string(),
            nl,
            run_root: run_root.to_path_buf(),
            state: run_root.parent().unwrap_or(run_root).join("vmnet"),
            vlan_capable,
            management,
            lock: tokio::sync::Mutex::new(()),
            pools: RwLock::new(Vec::new()),
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// This node's VTEP: its uplink's first IPv4 address for the cluster
    /// network, else its InternalIP.
    fn vtep_of(&self, w: &World, node: &str, cn: &str) -> Option<Ipv4Addr> {
        let reported = w
            .vlan_config(cn, node)
            .and_then(|v| v.status.as_ref())
            .and_then(|s| s.nodes.get(node))
            .and_then(|r| r.vtep.as_ref())
            .and_then(|v| v.parse().ok());
        reported.or_else(|| w.node(node).and_then(internal_ip))
    }

    /// The segment of VM network `key` on this node.
    fn segment(&self, w: &World, key: &str) -> Result<Segment, VmNetError> {
        let nad = w.nad(key).ok_or_else(|| VmNetError::NoNetwork(key.to_string()))?;
        let not_ready = |detail: String| VmNetError::NotReady { network: key.to_string(), detail };
        let vlan = nad.vlan().ok_or_else(|| not_ready("its config is not valid".into()))?;
        let cn_name = nad.cluster_network();
        let cn = w.cn(&cn_name).ok_or_else(|| not_ready(format!("cluster network {cn_name} does not exist")))?;
        let status = cn.status.clone().unwrap_or_default();
        let (Some(index), Some(path)) = (status.index, status.data_path) else {
            return Err(not_ready(format!("cluster network {cn_name} is not set up yet")));
        };
        if !status.nodes.contains(&self.node) {
            return Err(not_ready(format!(
                "cluster network {cn_name} does not reach node {}: give the node an uplink with a VlanConfig",
                self.node
            )));
        }
        let vni = segment_vni(index, vlan);
        let uplink_mtu = w
            .vlan_config(&cn_name, &self.node)
            .and_then(|v| v.spec.uplink.link_attributes.as_ref())
            .and_then(|l| l.mtu)
            .unwrap_or(1500);
        match path {
            DataPath::Vlan => {
                let uplink = w
                    .vlan_config(&cn_name, &self.node)
                    .and_then(|v| v.spec.uplink.nics.first().cloned())
                    .ok_or_else(|| not_ready(format!("node {} has no uplink for {cn_name}", self.node)))?;
                if vlan == 0 {
                    // Untagged on a VLAN path: the uplink itself would join
                    // the bridge; not done, it may carry the host's address.
                    return Err(not_ready("untagged networks need the VXLAN data path".into()));
                }
                Ok(Segment { vni, path: SegmentPath::Vlan { uplink, id: vlan }, mtu: uplink_mtu })
            }
            _ => {
                let local = self.vtep_of(w, &self.node, &cn_name).ok_or_else(|| {
                    not_ready(format!("node {} has no address for the VXLAN overlay (Node InternalIP)", self.node))
                })?;
                let mut peers: Vec<Ipv4Addr> = status
                    .nodes
                    .iter()
                    .filter(|n| **n != self.node)
                    .filter_map(|n| self.vtep_of(w, n, &cn_name))
                    .filter(|ip| *ip != local)
                    .collect();
                peers.sort();
                peers.dedup();
                let port = cn.spec.vxlan_port.unwrap_or(DEFAULT_VXLAN_PORT);
                Ok(Segment {
                    vni,
                    path: SegmentPath::Vxlan { port, local, peers },
                    mtu: uplink_mtu.saturating_sub(VXLAN_OVERHEAD),
                })
            }
        }
    }

    /// Where this agent records the segments it made: only those are ever
    /// deleted (another agent on the host may own others).
    fn owned_dir(&self) -> PathBuf {
        self.state.join("segments")
    }

    fn owned_segments(&self) -> BTreeSet<u32> {
        std::fs::read_dir(self.owned_dir())
            .map(|d| {
                d.flatten().filter_map(|e| u32::from_str_radix(&e.file_name().to_string_lossy(), 16).ok()).collect()
            })
            .unwrap_or_default()
    }

    /// Makes the devices of `seg` exist and agree with it.
    async fn ensure_segment(&self, seg: &Segment) -> Result<(), VmNetError> {
        let nl = self.nl.as_ref();
        let record = self.owned_dir().join(format!("{:06x}", seg.vni));
        if !record.exists() {
            std::fs::create_dir_all(self.owned_dir())
                .and_then(|_| std::fs::write(&record, b""))
                .map_err(|e| VmNetError::Io { what: format!("recording segment {}", seg.vni), source: e })?;
        }
        let br = bridge_name(seg.vni);
        if nl.link(&br).await?.is_none() {
            nl.create(&br, &LinkSpec::Bridge).await?;
        }
        // The host takes no part in VM networks.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{br}/disable_ipv6"), "1");
        nl.set_mtu(&br, seg.mtu).await?;
        let port_dev = match &seg.path {
            SegmentPath::Vxlan { port, local, peers } => {
                let vx = vxlan_name(seg.vni);
                let spec = LinkSpec::Vxlan { vni: seg.vni, local: *local, port: *port, underlay: None, learning: true };
                if nl.link(&vx).await?.is_none() {
                    nl.create(&vx, &spec).await?;
                }
                // Flooding towards every other node; stale ones removed.
                let zero = [0u8; 6];
                let have: BTreeSet<Ipv4Addr> =
                    nl.fdb(&vx).await?.into_iter().filter(|(m, _)| *m == zero).filter_map(|(_, d)| d).collect();
                for p in peers {
                    if !have.contains(p) {
                        nl.fdb_append(&vx, zero, *p).await?;
                    }
                }
                for stale in have.iter().filter(|d| !peers.contains(d)) {
                    nl.fdb_delete(&vx, zero, *stale).await?;
                }
                vx
            }
            SegmentPath::Vlan { uplink, id } => {
                if nl.link(uplink).await?.is_none() {
                    return Err(VmNetError::NotReady {
                        network: format!("segment {}", seg.vni),
                        detail: format!("uplink {uplink} does not exist on this node"),
                    });
                }
                let vl = vlan_name(seg.vni);
                if nl.link(&vl).await?.is_none() {
                    nl.create(&vl, &LinkSpec::Vlan { parent: uplink.clone(), id: *id }).await?;
                }
                vl
            }
        };
        nl.set_mtu(&port_dev, seg.mtu).await?;
        nl.set_master(&port_dev, Some(&br)).await?;
        nl.set_up(&port_dev, true).await?;
        nl.set_up(&br, true).await?;
        Ok(())
    }

    /// Puts NIC `index` of a VMI on VM network `key` (`namespace/name`):
    /// its segment, its tap; returns the tap and the MTU to give QEMU.
    pub async fn attach(
        &self,
        vmi_dir: &Path,
        uid: &str,
        index: usize,
        key: &str,
        mac: &str,
    ) -> Result<(String, u32), VmNetError> {
        let w = World::read(self.api.as_ref()).await?;
        let seg = self.segment(&w, key)?;
        let _g = self.lock.lock().await;
        self.ensure_segment(&seg).await?;
        let tap = crate::network::tap_name(uid, index);
        if self.nl.link(&tap).await?.is_none() {
            run("creating the tap", Command::new("ip").args(["tuntap", "add", "dev", &tap, "mode", "tap"]))?;
        }
        self.nl.set_mtu(&tap, seg.mtu).await?;
        self.nl.set_master(&tap, Some(&bridge_name(seg.vni))).await?;
        self.nl.set_up(&tap, true).await?;
        let vnic = VNic { network: key.to_string(), tap: tap.clone(), mac: mac.to_string(), segment: seg.clone() };
        let file = vmi_dir.join(format!("vnic-{index}.json"));
        std::fs::write(&file, serde_json::to_vec(&vnic).unwrap_or_default())
            .map_err(|e| VmNetError::Io { what: format!("writing {}", file.display()), source: e })?;
        Ok((tap, seg.mtu))
    }

    /// Waits (at most `timeout`) until the IPPool of each network in
    /// `nics` (network, MAC) has an address for the MAC, so that the
    /// guest's first DHCP request is answered; networks without a pool
    /// need nothing.
    pub async fn wait_for_addresses(&self, nics: &[(String, String)], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pools: Vec<IpPool> =
                Typed::new(self.api.as_ref()).list(None, &Selectors::default()).await.unwrap_or_default();
            let missing = nics.iter().filter(|(net, mac)| {
                pools.iter().find(|p| &p.spec.network_name == net).is_some_and(|p| {
                    !p.status.as_ref().is_some_and(|s| s.allocations.iter().any(|a| a.mac.eq_ignore_ascii_case(mac)))
                })
            });
            let missing: Vec<&String> = missing.map(|(net, _)| net).collect();
            if missing.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(networks = ?missing, "no DHCP address allocated yet; starting the VM anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The VM-network NICs recorded in a VMI directory, by index.
    pub fn vnics_of(vmi_dir: &Path) -> BTreeMap<usize, VNic> {
        let mut out = BTreeMap::new();
        let Ok(d) = std::fs::read_dir(vmi_dir) else { return out };
        for f in d.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            let Some(i) = name.strip_prefix("vnic-").and_then(|r| r.strip_suffix(".json")) else { continue };
            let Ok(i) = i.parse::<usize>() else { continue };
            if let Some(v) = std::fs::read(f.path()).ok().and_then(|b| serde_json::from_slice::<VNic>(&b).ok()) {
                out.insert(i, v);
            }
        }
        out
    }

    /// Removes a VMI's taps and records; its segments go at the next pass
    /// if nothing else needs them.
    pub fn detach(&self, vmi_dir: &Path) {
        let vnics = Self::vnics_of(vmi_dir);
        for (i, v) in &vnics {
            if crate::network::link_exists(&v.tap) {
                if let Err(e) = run("deleting the tap", Command::new("ip").args(["link", "del", &v.tap])) {
                    tracing::warn!(tap = %v.tap, error = %e, "cannot delete a VM network tap");
                }
            }
            let _ = std::fs::remove_file(vmi_dir.join(format!("vnic-{i}.json")));
        }
        if !vnics.is_empty() {
            self.changed.notify_one();
        }
    }

    /// Every VM-network NIC of every VMI on this node.
    fn local_vnics(&self) -> Vec<VNic> {
        let Ok(dirs) = std::fs::read_dir(&self.run_root) else { return Vec::new() };
        dirs.flatten().flat_map(|d| Self::vnics_of(&d.path()).into_values()).collect()
    }

    /// The address the DHCP server has leased to `mac` on network `key`.
    pub fn leased_address(&self, key: &str, mac: &str) -> Option<String> {
        let pools = self.pools.read().ok()?;
        let pool = pools.iter().find(|p| p.spec.network_name == key)?;
        let st = pool.status.as_ref()?;
        let a = st.allocations.iter().find(|a| a.mac.eq_ignore_ascii_case(mac))?;
        st.leases.contains_key(&a.ip).then(|| a.ip.clone())
    }

    /// One pass of the reconciler.
    pub async fn reconcile(&self) -> Result<(), VmNetError> {
        let w = World::read(self.api.as_ref()).await?;
        if let Ok(mut p) = self.pools.write() {
            *p = w.pools.clone();
        }
        self.report_uplinks(&w).await;

        let _g = self.lock.lock().await;
        // Segments: those of local NICs (recomputed, so peers follow the
        // cluster; the recorded one if the network cannot be resolved now)
        // and those of the pools served here.
        let mut wanted: BTreeMap<u32, Segment> = BTreeMap::new();
        for v in self.local_vnics() {
            let seg = self.segment(&w, &v.network).unwrap_or(v.segment);
            wanted.insert(seg.vni, seg);
        }
        let mut served: Vec<(IpPool, Segment)> = Vec::new();
        for pool in &w.pools {
            let st = pool.status.as_ref();
            if st.and_then(|s| s.agent_node.as_deref()) != Some(self.node.as_str())
                || pool.metadata.deletion_timestamp.is_some()
                || pool.spec.paused == Some(true)
            {
                continue;
            }
            match self.segment(&w, &pool.spec.network_name) {
                Ok(seg) => {
                    wanted.insert(seg.vni, seg.clone());
                    served.push((pool.clone(), seg));
                }
                Err(e) => tracing::debug!(pool = ?pool.metadata.name, error = %e, "pool's network not ready here"),
            }
        }
        let mut first_error = None;
        for seg in wanted.values() {
            if let Err(e) = self.ensure_segment(seg).await {
                tracing::warn!(vni = seg.vni, error = %e, "cannot set up a VM network segment");
                first_error.get_or_insert(e);
            }
        }
        // DHCP servers: those of served pools up, every other one down.
        let mut keep_dhcp = BTreeSet::new();
        for (pool, seg) in &served {
            let uid = pool.metadata.uid.clone().unwrap_or_default();
            keep_dhcp.insert(uid.clone());
            match self.ensure_dhcp(pool, seg) {
                Ok(()) => self.report_leases(pool).await,
                Err(e) => {
                    tracing::warn!(pool = ?pool.metadata.name, error = %e, "cannot run the pool's DHCP server");
                    first_error.get_or_insert(e);
                }
            }
        }
        self.stop_dhcp_except(&keep_dhcp);
        // Devices of segments nothing wants any more (of those this agent
        // made).
        let wanted_dhcp: BTreeSet<u32> = served.iter().map(|(_, s)| s.vni).collect();
        let owned = self.owned_segments();
        for link in self.nl.links().await? {
            let Some(vni) = owned_vni(&link.name).filter(|v| owned.contains(v)) else { continue };
            let keep =
                if link.name.starts_with("shdh") { wanted_dhcp.contains(&vni) } else { wanted.contains_key(&vni) };
            if !keep {
                tracing::info!(device = %link.name, "removing a VM network device nothing uses");
                self.nl.delete(&link.name).await?;
            }
        }
        for vni in owned.iter().filter(|v| !wanted.contains_key(v)) {
            let _ = std::fs::remove_file(self.owned_dir().join(format!("{vni:06x}")));
        }
        if let Some(m) = &self.management {
            let subnets = w.pools.iter().filter_map(|p| p.spec.ipv4_config.cidr.parse().ok()).collect();
            if let Err(e) = m.set_blocked(subnets) {
                tracing::warn!(error = %e, "cannot isolate the management network from the VM networks");
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Checks this node's uplink of every VlanConfig that matches it, sets
    /// its MTU, and reports in the VlanConfig's `status.nodes`.
    async fn report_uplinks(&self, w: &World) {
        let links = self.nl.links().await.unwrap_or_default();
        let mut configured: BTreeSet<String> = BTreeSet::new();
        for vc in &w.vcs {
            let Some(name) = vc.metadata.name.as_deref() else { continue };
            let mine = w.vlan_config(&vc.spec.cluster_network, &self.node).and_then(|v| v.metadata.name.as_deref())
                == Some(name);
            if !mine {
                continue;
            }
            let mut report = VlanNodeStatus { ready: false, vlan_capable: self.vlan_capable, ..Default::default() };
            let nic = vc.spec.uplink.nics.first().cloned().unwrap_or_default();
            match links.iter().find(|l| l.name == nic) {
                None => {
                    let mut names: Vec<&str> = links
                        .iter()
                        .filter(|l| owned_vni(&l.name).is_none() && !l.name.starts_with("sh") && l.name != "lo")
                        .map(|l| l.name.as_str())
                        .collect();
                    names.sort();
                    report.message =
                        Some(format!("uplink NIC {nic:?} does not exist on this node (it has: {})", names.join(", ")));
                }
                Some(link) => {
                    let mtu = vc.spec.uplink.link_attributes.as_ref().and_then(|l| l.mtu);
                    let set = match mtu {
                        Some(m) => {
                            configured.insert(nic.clone());
                            self.remember_mtu(&nic, link.mtu);
                            self.nl.set_mtu(&nic, m).await.map_err(|e| e.to_string())
                        }
                        None => Ok(()),
                    };
                    match set {
                        Ok(()) => report.ready = true,
                        Err(e) => report.message = Some(format!("cannot set the MTU of {nic}: {e}")),
                    }
                    report.vtep =
                        first_ipv4(&nic).or_else(|| w.node(&self.node).and_then(internal_ip)).map(|ip| ip.to_string());
                }
            }
            let old = vc.status.as_ref().and_then(|s| s.nodes.get(&self.node));
            if old != Some(&report) {
                let patch = json!({"status": {"nodes": {self.node.clone(): report}}});
                if let Err(e) = self.api.merge_patch(Gvr::of::<VlanConfig>(), None, name, patch, true).await {
                    tracing::warn!(vlanconfig = name, error = %e, "cannot report the uplink");
                }
            }
        }
        // Uplinks no VlanConfig sets any more get their MTU back.
        for (nic, mtu) in self.remembered_mtus() {
            if configured.contains(&nic) {
                continue;
            }
            if links.iter().any(|l| l.name == nic) {
                match self.nl.set_mtu(&nic, mtu).await {
                    Ok(()) => tracing::info!(nic, mtu, "uplink MTU restored"),
                    Err(e) => {
                        tracing::warn!(nic, error = %e, "cannot restore the uplink's MTU");
                        continue;
                    }
                }
            }
            let _ = std::fs::remove_file(self.state.join("uplinks").join(&nic));
        }
    }

    /// Records an uplink's MTU before Sheaf first changes it.
    fn remember_mtu(&self, nic: &str, mtu: u32) {
        let dir = self.state.join("uplinks");
        let file = dir.join(nic);
        if !file.exists() {
            let _ = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, mtu.to_string()));
        }
    }

    fn remembered_mtus(&self) -> Vec<(String, u32)> {
        std::fs::read_dir(self.state.join("uplinks"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let mtu = std::fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
                        Some((e.file_name().to_string_lossy().to_string(), mtu))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn dhcp_dir(&self, pool_uid: &str) -> PathBuf {
        self.state.join("dhcp").join(pool_uid)
    }

    /// The network namespace of a pool's DHCP server on this node.
    fn dhcp_netns(&self, pool_uid: &str) -> String {
        let mut h: u32 = 0x811c9dc5;
        for b in self.node.bytes().chain([0]).chain(pool_uid.bytes()) {
            h ^= b as u32;
            h = h.wrapping_mul(0x01000193);
        }
        format!("shd-{h:08x}")
    }

    /// Runs (or updates) the DHCP server of `pool` on its segment.
    fn ensure_dhcp(&self, pool: &IpPool, seg: &Segment) -> Result<(), VmNetError> {
        let uid = pool.metadata.uid.clone().unwrap_or_default();
        let Ok(range) = pool.range() else { return Ok(()) };
        let dir = self.dhcp_dir(&uid);
        std::fs::create_dir_all(&dir)
            .map_err(|e| VmNetError::Io { what: format!("creating {}", dir.display()), source: e })?;
        let ns = self.dhcp_netns(&uid);
        std::fs::write(dir.join("netns"), &ns)
            .map_err(|e| VmNetError::Io { what: "recording the DHCP namespace".into(), source: e })?;
        if !Path::new("/run/netns").join(&ns).exists() {
            run("creating the DHCP namespace", Command::new("ip").args(["netns", "add", &ns]))?;
        }
        let host = dhcp_veth_name(seg.vni);
        let inside_exists = Command::new("ip")
            .args(["-n", &ns, "link", "show", "eth0"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !inside_exists {
            let _ = Command::new("ip").args(["link", "del", &host]).output();
            run(
                "creating the DHCP veth",
                Command::new("ip").args(["link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns]),
            )?;
        }
        let br = bridge_name(seg.vni);
        let mtu = seg.mtu.to_string();
        run(
            "attaching the DHCP veth",
            Command::new("ip").args(["link", "set", &host, "master", &br, "mtu", &mtu, "up"]),
        )?;
        let cidr = format!("{}/{}", range.server, range.subnet.prefix);
        let addrs = run(
            "reading the DHCP address",
            Command::new("ip").args(["-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"]),
        )?;
        if !addrs.contains(&format!(" {cidr} ")) {
            run(
                "addressing the DHCP server",
                Command::new("ip").args(["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]),
            )?;
        }
        run(
            "bringing the DHCP veth up",
            Command::new("ip").args(["-n", &ns, "link", "set", "eth0", "mtu", &mtu, "up"]),
        )?;
        run("bringing lo up", Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;

        // Static leases only: unknown MACs get no answer.
        let hosts: Vec<String> = pool
            .status
            .as_ref()
            .map(|s| s.allocations.iter().map(|a| format!("{},{}", a.mac, a.ip)).collect())
            .unwrap_or_default();
        let c = &pool.spec.ipv4_config;
        let lease = c.lease_time.unwrap_or(3600);
        let mut options: Vec<String> = vec![
            "interface=eth0".into(),
            "bind-interfaces".into(),
            "except-interface=lo".into(),
            format!("listen-address={}", range.server),
            "port=0".into(),
            format!("dhcp-range={},static,{},{lease}s", range.subnet.network, range.subnet.netmask()),
            format!("dhcp-leasefile={}", dir.join("leases").display()),
            format!("dhcp-option=option:mtu,{}", seg.mtu),
            "dhcp-authoritative".into(),
            format!("log-facility={}", dir.join("dnsmasq.log").display()),
        ];
        match range.router {
            Some(r) => options.push(format!("dhcp-option=option:router,{r}")),
            None => options.push("dhcp-option=option:router".into()),
        }
        if !c.dns.is_empty() {
            options.push(format!("dhcp-option=option:dns-server,{}", c.dns.join(",")));
        }
        if let Some(d) = &c.domain_name {
            options.push(format!("dhcp-option=option:domain-name,{d}"));
        }
        if !c.domain_search.is_empty() {
            options.push(format!("dhcp-option=option:domain-search,{}", c.domain_search.join(",")));
        }
        if !c.ntp.is_empty() {
            options.push(format!("dhcp-option=option:ntp-server,{}", c.ntp.join(",")));
        }
        crate::dnsmasq::ensure(&dir, Some(&ns), &options, &hosts)
            .map_err(|detail| VmNetError::Command { what: "running the pool's DHCP server".into(), detail })?;
        Ok(())
    }

    /// Stops the DHCP servers (and removes the namespaces) of every pool
    /// served here before but not in `keep` (pool uids).
    fn stop_dhcp_except(&self, keep: &BTreeSet<String>) {
        let Ok(d) = std::fs::read_dir(self.state.join("dhcp")) else { return };
        for e in d.flatten() {
            let uid = e.file_name().to_string_lossy().to_string();
            if keep.contains(&uid) {
                continue;
            }
            let dir = e.path();
            crate::dnsmasq::stop(&dir);
            if let Ok(ns) = std::fs::read_to_string(dir.join("netns")) {
                let ns = ns.trim();
                if ns.starts_with("shd-") && Path::new("/run/netns").join(ns).exists() {
                    let _ = Command::new("ip").args(["netns", "del", ns]).output();
                }
            }
            tracing::info!(pool_uid = %uid, "stopped a DHCP server this node no longer serves");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// Copies the leases dnsmasq handed out into the pool's status.
    async fn report_leases(&self, pool: &IpPool) {
        let uid = pool.metadata.uid.clone().unwrap_or_default();
        let text = std::fs::read_to_string(self.dhcp_dir(&uid).join("leases")).unwrap_or_default();
        let leases = parse_leases(&text);
        let old = pool.status.as_ref().map(|s| s.leases.clone()).unwrap_or_default();
        if leases == old {
            return;
        }
        // Merge patch: keys that went away are set to null.
        let mut patch = serde_json::Map::new();
        for k in old.keys().filter(|k| !leases.contains_key(*k)) {
            patch.insert(k.clone(), serde_json::Value::Null);
        }
        for (k, v) in &leases {
            patch.insert(k.clone(), json!(v));
        }
        let name = pool.metadata.name.clone().unwrap_or_default();
        let ns = pool.metadata.namespace.clone();
        let body = json!({"status": {"leases": patch}});
        if let Err(e) = self.api.merge_patch(Gvr::of::<IpPool>(), ns.as_deref(), &name, body, true).await {
            tracing::warn!(pool = %name, error = %e, "cannot report DHCP leases");
        }
    }
}

/// dnsmasq's lease file (`expiry mac ip hostname client-id` per line) as
/// address → expiry (RFC 3339).
pub fn parse_leases(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(exp), Some(ip)) = (f.first().and_then(|e| e.parse::<i64>().ok()), f.get(2)) else { continue };
        let when = chrono::DateTime::from_timestamp(exp, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        out.insert(ip.to_string(), when);
    }
    out
}

fn first_ipv4(dev: &str) -> Option<Ipv4Addr> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "dev", dev]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    word.split('/').next()?.parse().ok()
}

/// Runs the reconciler until the task is dropped: on every change of the
/// network kinds and Nodes, and every 10 s.
pub async fn run_loop(nets: Arc<VmNetworks>) {
    for gvr in [
        Gvr::of::<NetworkAttachmentDefinition>(),
        Gvr::of::<ClusterNetwork>(),
        Gvr::of::<IpPool>(),
        Gvr::of::<VlanConfig>(),
        Gvr::of::<Node>(),
    ] {
        tokio::spawn(crate::storage::notify_on_change(nets.api.clone(), gvr, nets.changed.clone()));
    }
    loop {
        if let Err(e) = nets.reconcile().await {
            tracing::debug!(error = %e, "VM network pass incomplete");
        }
        tokio::select! {
            _ = nets.changed.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

#[cfg(test)]
mod tests;
