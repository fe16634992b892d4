//! VM networks with Harvester's and Multus' shapes:
//!
//! - `network.harvesterhci.io/v1beta1` [`ClusterNetwork`]: a physical (or
//!   overlay) network that spans nodes. `mgmt` always exists and runs over
//!   the nodes' own addresses.
//! - `network.harvesterhci.io/v1beta1` [`VlanConfig`]: which uplink NIC the
//!   nodes matching its selector use for a cluster network, and its MTU.
//! - `k8s.cni.cncf.io/v1` [`NetworkAttachmentDefinition`]: a VM network, a
//!   VLAN of a cluster network (its `spec.config` is a CNI `bridge` config
//!   with `vlan`); VMs attach with `networks[].multus.networkName`.
//! - `network.harvesterhci.io/v1alpha1` [`IpPool`]: addresses for one VM
//!   network, served to guests by DHCP (Harvester's managed DHCP shape).
//!
//! A VM network becomes, on each node that needs it, a *segment*: a bridge
//! for the guests' taps plus either an 802.1Q subinterface of the uplink or
//! a VXLAN device towards the other nodes. The segment's id is its VXLAN
//! network identifier ([`segment_vni`]); device names derive from it.
//! See docs/design/networks.md.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::meta::{Condition, ObjectMeta};
use crate::resource::{Column, Kind};
use crate::validation::{self, FieldError};

pub const GROUP: &str = "network.harvesterhci.io";
/// The label of a NetworkAttachmentDefinition naming its ClusterNetwork
/// (`mgmt` when absent).
pub const CLUSTER_NETWORK_LABEL: &str = "network.harvesterhci.io/clusternetwork";
/// The label of a NetworkAttachmentDefinition with its network type.
pub const NETWORK_TYPE_LABEL: &str = "network.harvesterhci.io/type";
/// The built-in cluster network over the nodes' management addresses.
pub const MGMT: &str = "mgmt";
/// The network types a NetworkAttachmentDefinition may declare.
pub const NETWORK_TYPES: &[&str] = &["L2VlanNetwork", "UntaggedNetwork"];
/// The VXLAN UDP port unless a ClusterNetwork sets another (IANA's).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Bytes a VXLAN encapsulation adds (outer Ethernet, IPv4, UDP, VXLAN).
pub const VXLAN_OVERHEAD: u32 = 50;

// ------------------------------------------------------------------ Subnet

/// An IPv4 subnet, `10.53.0.0/20`: no host bits set, prefix /8 to /30.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR such as 10.53.0.0/20"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("prefix /{prefix} must be between /8 and /30"));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "{s} has host bits set; the network is {}/{prefix}",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Subnet { network: addr, prefix })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    /// Host `n` of the subnet (0 is the network address).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(n))
    }
    pub fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }
    /// The first host; the management network's bridge takes it.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - self.prefix))
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        self.host(self.size() - 1)
    }
    /// Whether `ip` is a host address of the subnet (not the network or
    /// broadcast address).
    pub fn contains_host(&self, ip: Ipv4Addr) -> bool {
        let (n, i) = (u32::from(self.network), u32::from(ip));
        i > n && i < n + self.size() - 1
    }
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        let mask = u32::MAX << (32 - p);
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }
}

// ---------------------------------------------------------- ClusterNetwork

/// How a cluster network's VLANs travel between nodes.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DataPath {
    /// 802.1Q on the uplink when every node of the network can, else VXLAN.
    #[default]
    Auto,
    /// 802.1Q subinterfaces of the VlanConfig's uplink.
    #[serde(rename = "VLAN")]
    Vlan,
    /// A VXLAN overlay between the nodes' addresses (VNI per VLAN).
    #[serde(rename = "VXLAN")]
    Vxlan,
}

/// A network that spans nodes; its VLANs are VM networks
/// (NetworkAttachmentDefinitions labelled with its name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetwork {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ClusterNetworkSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ClusterNetworkStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkSpec {
    /// Auto (default), VLAN or VXLAN. `mgmt` has no uplink and is VXLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_path: Option<DataPath>,
    /// UDP port of the VXLAN overlay; 4789 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_port: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkStatus {
    /// The data path in use: VLAN or VXLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_path: Option<DataPath>,
    /// Unique per cluster network: its VLAN `v` is VXLAN network
    /// `(index + 1) * 4096 + v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// The nodes the network spans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The VXLAN network identifier of VLAN `vlan` (0: untagged) of the
/// cluster network with `index`: unique across the cluster.
pub fn segment_vni(index: u32, vlan: u16) -> u32 {
    (index + 1) * 4096 + u32::from(vlan)
}

/// The highest cluster network index (VNIs are 24 bits).
pub const MAX_CLUSTER_NETWORK_INDEX: u32 = (1 << 24) / 4096 - 2;

fn check_network_name(name: Option<&str>, errs: &mut Vec<FieldError>) {
    // Device and namespace names are derived from ids, not names, but
    // Harvester limits cluster network names to 12 characters; so do we,
    // so that manifests move both ways.
    if let Some(n) = name {
        if n.len() > 12 {
            errs.push(FieldError::invalid("metadata.name", "must be at most 12 characters"));
        }
    }
}

impl Kind for ClusterNetwork {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = "v1beta1";
    const KIND: &'static str = "ClusterNetwork";
    const PLURAL: &'static str = "clusternetworks";
    const SHORT_NAMES: &'static [&'static str] = &["cn"];
    const NAMESPACED: bool = false;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        check_network_name(self.metadata.name.as_deref(), &mut errs);
        if self.metadata.name.as_deref() == Some(MGMT) && self.spec.data_path == Some(DataPath::Vlan) {
            errs.push(FieldError::invalid(
                "spec.dataPath",
                "the mgmt cluster network has no uplink and runs over the nodes' addresses: use VXLAN or Auto",
            ));
        }
        if self.spec.vxlan_port == Some(0) {
            errs.push(FieldError::invalid("spec.vxlanPort", "must be a UDP port between 1 and 65535"));
        }
        if let Some(old) = old {
            if old.spec.vxlan_port != self.spec.vxlan_port {
                errs.push(FieldError::forbidden(
                    "spec.vxlanPort",
                    "cannot change while the network exists; create another cluster network",
                ));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Data path", "string", ".status.dataPath"),
            Column::new("Ready", "string", ".status.conditions[0].status"),
        ]
    }
    fn description() -> &'static str {
        "A network that spans nodes (the built-in mgmt, or one per uplink): its VLANs are VM networks, carried \
         by 802.1Q on the uplink or by a VXLAN overlay between the nodes."
    }
}

// -------------------------------------------------------------- VlanConfig

/// Which uplink NIC the nodes matching `nodeSelector` use for a cluster
/// network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VlanConfig {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VlanConfigSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VlanConfigStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VlanConfigSpec {
    /// The ClusterNetwork (not mgmt).
    #[serde(default)]
    pub cluster_network: String,
    /// Nodes (by label) this config applies to; all nodes when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub uplink: Uplink,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Uplink {
    /// The NIC(s) of the uplink, by name on the node.
    #[serde(default)]
    pub nics: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_attributes: Option<LinkAttributes>,
    /// Bonding of several NICs (not available yet: one NIC per uplink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond_options: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkAttributes {
    /// MTU of the uplink (576 to 9000); VM networks on it get this MTU
    /// (minus 50 on the VXLAN path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_q_len: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VlanConfigStatus {
    /// Per node, as its agent reports it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, VlanNodeStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VlanNodeStatus {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The address other nodes send this node's VXLAN traffic to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<String>,
    /// Whether this node's kernel can make 802.1Q devices.
    #[serde(default)]
    pub vlan_capable: bool,
}

/// MTUs an uplink may have.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9000;

/// Linux interface names: 1-15 characters, no '/', ':' or whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 characters (a Linux interface name)".into());
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("is not a Linux interface name (no '/', ':' or spaces)".into());
    }
    Ok(())
}

impl Kind for VlanConfig {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = "v1beta1";
    const KIND: &'static str = "VlanConfig";
    const PLURAL: &'static str = "vlanconfigs";
    const SHORT_NAMES: &'static [&'static str] = &["vc"];
    const NAMESPACED: bool = false;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let cn = &self.spec.cluster_network;
        if cn.is_empty() {
            errs.push(FieldError::required("spec.clusterNetwork"));
        } else if cn == MGMT {
            errs.push(FieldError::invalid(
                "spec.clusterNetwork",
                "mgmt runs over the nodes' own addresses and takes no uplink; create a ClusterNetwork for the uplink",
            ));
        }
        for (k, v) in &self.spec.node_selector {
            if let Err(e) = validation::qualified_name(k) {
                errs.push(FieldError::invalid(format!("spec.nodeSelector[{k}]"), e));
            }
            if let Err(e) = validation::label_value(v) {
                errs.push(FieldError::invalid(format!("spec.nodeSelector[{k}]"), e));
            }
        }
        let nics = &self.spec.uplink.nics;
        if nics.is_empty() {
            errs.push(FieldError::required("spec.uplink.nics"));
        }
        for (i, n) in nics.iter().enumerate() {
            if let Err(e) = check_ifname(n) {
                errs.push(FieldError::invalid(format!("spec.uplink.nics[{i}]"), format!("{n:?} {e}")));
            }
            if nics[..i].contains(n) {
                errs.push(FieldError::duplicate(format!("spec.uplink.nics[{i}]"), n));
            }
        }
        if nics.len() > 1 {
            errs.push(FieldError::invalid(
                "spec.uplink.nics",
                "bonding several NICs is not available yet: give one NIC (bond it on the host and give the bond)",
            ));
        }
        if let Some(mtu) = self.spec.uplink.link_attributes.as_ref().and_then(|l| l.mtu) {
            if !MTU_RANGE.contains(&mtu) {
                errs.push(FieldError::invalid(
                    "spec.uplink.linkAttributes.mtu",
                    format!("{mtu} is outside {}..={}", MTU_RANGE.start(), MTU_RANGE.end()),
                ));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Cluster network", "string", ".spec.clusterNetwork"),
            Column::new("NICs", "string", ".spec.uplink.nics"),
        ]
    }
    fn description() -> &'static str {
        "The uplink NIC and MTU that the nodes matching nodeSelector use for a cluster network; reconciled by \
         each node's agent, which reports per node in status.nodes."
    }
}

// ---------------------------------------------- NetworkAttachmentDefinition

/// A VM network (Multus): `spec.config` is a CNI `bridge` config whose
/// `vlan` is the VLAN id on the cluster network named by the
/// `network.harvesterhci.io/clusternetwork` label.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAttachmentDefinition {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NetworkAttachmentDefinitionSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAttachmentDefinitionSpec {
    /// CNI configuration as a JSON string, for example
    /// `{"cniVersion":"0.3.1","name":"vlan100","type":"bridge","bridge":"mgmt-br","promiscMode":true,"vlan":100,"ipam":{}}`.
    #[serde(default)]
    pub config: String,
}

/// The fields of a CNI bridge config that Sheaf reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConfig {
    #[serde(default)]
    pub cni_version: Option<String>,
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub vlan: Option<i64>,
    #[serde(default)]
    pub mtu: Option<i64>,
    #[serde(default)]
    pub ipam: Option<Value>,
}

/// Parses a NetworkAttachmentDefinition's config; the error says what to
/// write instead.
pub fn parse_bridge_config(config: &str) -> Result<BridgeConfig, String> {
    let v: Value = serde_json::from_str(config).map_err(|e| format!("is not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err("must be a JSON object (a CNI configuration)".into());
    }
    let c: BridgeConfig = serde_json::from_value(v).map_err(|e| format!("is not a CNI bridge configuration: {e}"))?;
    if c.type_ != "bridge" {
        return Err(format!(
            "type {:?} is not supported: VM networks are CNI \"bridge\" networks (set \"type\":\"bridge\")",
            c.type_
        ));
    }
    if let Some(vlan) = c.vlan {
        if !(0..=4094).contains(&vlan) {
            return Err(format!("vlan {vlan} is out of range: a VLAN id is 1 to 4094 (0 or none: untagged)"));
        }
    }
    if let Some(mtu) = c.mtu {
        if !(576..=9000).contains(&mtu) {
            return Err(format!("mtu {mtu} is outside 576..=9000"));
        }
    }
    if let Some(ipam) = &c.ipam {
        let empty = ipam.as_object().is_some_and(|m| m.is_empty()) || ipam.is_null();
        if !empty {
            return Err("ipam must be empty ({}): addresses on VM networks come from an IPPool \
                 (network.harvesterhci.io/v1alpha1) whose networkName is this network, served by DHCP, or from \
                 the guest's cloud-init network data"
                .into());
        }
    }
    Ok(c)
}

impl NetworkAttachmentDefinition {
    /// Its cluster network (the label; `mgmt` when absent).
    pub fn cluster_network(&self) -> String {
        self.metadata.labels.get(CLUSTER_NETWORK_LABEL).cloned().unwrap_or_else(|| MGMT.to_string())
    }
    /// Its VLAN id (0: untagged), when its config is valid.
    pub fn vlan(&self) -> Option<u16> {
        parse_bridge_config(&self.spec.config).ok().map(|c| c.vlan.unwrap_or(0) as u16)
    }
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

impl Kind for NetworkAttachmentDefinition {
    const GROUP: &'static str = "k8s.cni.cncf.io";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "NetworkAttachmentDefinition";
    const PLURAL: &'static str = "network-attachment-definitions";
    const SHORT_NAMES: &'static [&'static str] = &["net-attach-def"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = false;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        match parse_bridge_config(&self.spec.config) {
            Err(_) if self.spec.config.trim().is_empty() => errs.push(FieldError::required("spec.config")),
            Err(e) => errs.push(FieldError::invalid("spec.config", e)),
            Ok(c) => {
                let ty = self.metadata.labels.get(NETWORK_TYPE_LABEL).map(String::as_str);
                let vlan = c.vlan.unwrap_or(0);
                match ty {
                    None => {}
                    Some("L2VlanNetwork") if vlan == 0 => errs.push(FieldError::invalid(
                        "spec.config",
                        "an L2VlanNetwork needs a vlan id from 1 to 4094; for no VLAN label it UntaggedNetwork",
                    )),
                    Some("UntaggedNetwork") if vlan != 0 => errs.push(FieldError::invalid(
                        "spec.config",
                        format!("an UntaggedNetwork carries no VLAN, but vlan is {vlan}; label it L2VlanNetwork"),
                    )),
                    Some(t) if !NETWORK_TYPES.contains(&t) => errs.push(FieldError::unsupported(
                        format!("metadata.labels[{NETWORK_TYPE_LABEL}]"),
                        t,
                        NETWORK_TYPES,
                    )),
                    Some(_) => {}
                }
            }
        }
        if let Some(cn) = self.metadata.labels.get(CLUSTER_NETWORK_LABEL) {
            if let Err(e) = validation::dns1123_label(cn) {
                errs.push(FieldError::invalid(format!("metadata.labels[{CLUSTER_NETWORK_LABEL}]"), e));
            }
        }
        if let Some(old) = old {
            // A running guest's NIC is on the old segment: moving the
            // network would silently cut it off.
            if old.vlan() != self.vlan() || old.cluster_network() != self.cluster_network() {
                errs.push(FieldError::forbidden(
                    "spec.config",
                    "the VLAN and cluster network of a VM network cannot change; create a new network and move \
                     the VMs to it",
                ));
            }
        }
        errs
    }
    fn description() -> &'static str {
        "A VM network (Multus): a CNI bridge config with the VLAN id on the cluster network named by the \
         network.harvesterhci.io/clusternetwork label (mgmt when absent). VMs attach with \
         networks[].multus.networkName."
    }
}

/// The `namespace/name` of the NetworkAttachmentDefinition that a VMI in
/// `vmi_ns` means by `network_name` (`name` or `namespace/name`).
pub fn nad_key(vmi_ns: &str, network_name: &str) -> String {
    if network_name.contains('/') {
        network_name.to_string()
    } else {
        format!("{vmi_ns}/{network_name}")
    }
}

// ------------------------------------------------------------------ IPPool

/// Addresses for one VM network, served to its guests by DHCP: every
/// guest NIC on the network gets a fixed address from the pool for as long
/// as its VM exists.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpPool {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IpPoolSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<IpPoolStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    #[serde(default)]
    pub ipv4_config: Ipv4Config,
    /// The VM network, `namespace/name` of its NetworkAttachmentDefinition.
    #[serde(default)]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ipv4Config {
    /// The DHCP server's own address on the network: in `cidr`, outside
    /// the pool.
    #[serde(rename = "serverIP", default)]
    pub server_ip: String,
    #[serde(default)]
    pub cidr: String,
    #[serde(default)]
    pub pool: Pool,
    /// Default gateway handed to guests (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domain_search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<String>,
    /// Lease time in seconds (120 or more; default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_time: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    #[serde(default)]
    pub start: String,
    #[serde(default)]
    pub end: String,
    /// Addresses in the range not to hand out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Status>,
    /// Who holds each allocated address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<Allocation>,
    /// Addresses the DHCP server has handed out: address → expiry (RFC
    /// 3339), written by the serving node's agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub leases: BTreeMap<String, String>,
    /// The node whose agent serves DHCP for the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_node: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ipv4Status {
    /// Address → MAC.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocated: BTreeMap<String, String>,
    #[serde(default)]
    pub used: i64,
    #[serde(default)]
    pub available: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub ip: String,
    pub mac: String,
    /// `namespace/name` of the VM (or VMI without a VM).
    pub vm: String,
    /// The interface of the VM.
    pub interface: String,
}

/// A pool's parsed addresses.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolRange {
    pub subnet: Subnet,
    pub server: Ipv4Addr,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub exclude: Vec<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
}

impl PoolRange {
    /// The addresses that can be handed out, lowest first.
    pub fn assignable(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (u32::from(self.start)..=u32::from(self.end))
            .map(Ipv4Addr::from)
            .filter(|a| *a != self.server && Some(*a) != self.router && !self.exclude.contains(a))
    }
    pub fn capacity(&self) -> usize {
        self.assignable().count()
    }
}

impl IpPool {
    /// The pool's addresses, or the errors of its `spec.ipv4Config`.
    pub fn range(&self) -> Result<PoolRange, Vec<FieldError>> {
        let c = &self.spec.ipv4_config;
        let p = "spec.ipv4Config";
        let mut errs = Vec::new();
        let subnet = match c.cidr.parse::<Subnet>() {
            Ok(s) => Some(s),
            Err(_) if c.cidr.is_empty() => {
                errs.push(FieldError::required(format!("{p}.cidr")));
                None
            }
            Err(e) => {
                errs.push(FieldError::invalid(format!("{p}.cidr"), e));
                None
            }
        };
        let mut addr = |field: &str, v: &str, required: bool| -> Option<Ipv4Addr> {
            if v.is_empty() {
                if required {
                    errs.push(FieldError::required(format!("{p}.{field}")));
                }
                return None;
            }
            match v.parse::<Ipv4Addr>() {
                Ok(a) => {
                    if let Some(s) = subnet {
                        if !s.contains_host(a) {
                            errs.push(FieldError::invalid(
                                format!("{p}.{field}"),
                                format!("{a} is not a host address of {s}"),
                            ));
                        }
                    }
                    Some(a)
                }
                Err(_) => {
                    errs.push(FieldError::invalid(format!("{p}.{field}"), format!("{v:?} is not an IPv4 address")));
                    None
                }
            }
        };
        let server = addr("serverIP", &c.server_ip, true);
        let start = addr("pool.start", &c.pool.start, true);
        let end = addr("pool.end", &c.pool.end, true);
        let router = c.router.as_deref().and_then(|r| addr("router", r, false));
        let exclude: Vec<Ipv4Addr> = c
            .pool
            .exclude
            .iter()
            .enumerate()
            .filter_map(|(i, e)| addr(&format!("pool.exclude[{i}]"), e, true))
            .collect();
        for (i, d) in c.dns.iter().enumerate() {
            if d.parse::<Ipv4Addr>().is_err() {
                errs.push(FieldError::invalid(format!("{p}.dns[{i}]"), format!("{d:?} is not an IPv4 address")));
            }
        }
        for (i, d) in c.ntp.iter().enumerate() {
            if d.parse::<Ipv4Addr>().is_err() {
                errs.push(FieldError::invalid(format!("{p}.ntp[{i}]"), format!("{d:?} is not an IPv4 address")));
            }
        }
        if let Some(d) = &c.domain_name {
            if let Err(e) = validation::dns1123_subdomain(d) {
                errs.push(FieldError::invalid(format!("{p}.domainName"), e));
            }
        }
        if let Some(t) = c.lease_time {
            if t < 120 {
                errs.push(FieldError::invalid(format!("{p}.leaseTime"), "must be at least 120 seconds"));
            }
        }
        let (Some(subnet), Some(server), Some(start), Some(end)) = (subnet, server, start, end) else {
            return Err(errs);
        };
        if u32::from(start) > u32::from(end) {
            errs.push(FieldError::invalid(format!("{p}.pool.end"), format!("{end} is before pool.start {start}")));
        }
        let range = PoolRange { subnet, server, start, end, exclude, router };
        if (u32::from(start)..=u32::from(end)).contains(&u32::from(server)) {
            errs.push(FieldError::invalid(
                format!("{p}.serverIP"),
                format!("{server} is inside the pool {start}-{end}; the server needs an address of its own"),
            ));
        }
        if errs.is_empty() && range.capacity() == 0 {
            errs.push(FieldError::invalid(format!("{p}.pool"), "leaves no address to hand out"));
        }
        if errs.is_empty() {
            Ok(range)
        } else {
            Err(errs)
        }
    }
}

impl Kind for IpPool {
    const GROUP: &'static str = GROUP;
    const VERSION: &'static str = "v1alpha1";
    const KIND: &'static str = "IPPool";
    const PLURAL: &'static str = "ippools";
    const SHORT_NAMES: &'static [&'static str] = &["ipl"];
    const NAMESPACED: bool = true;
    const HAS_STATUS: bool = true;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn validate(&self, old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = self.range().err().unwrap_or_default();
        let n = &self.spec.network_name;
        if n.is_empty() {
            errs.push(FieldError::required("spec.networkName"));
        } else {
            let ok = n.split_once('/').is_some_and(|(ns, name)| {
                validation::dns1123_label(ns).is_ok() && validation::dns1123_subdomain(name).is_ok()
            });
            if !ok {
                errs.push(FieldError::invalid(
                    "spec.networkName",
                    format!("{n:?} must name a NetworkAttachmentDefinition as NAMESPACE/NAME"),
                ));
            }
        }
        if let Some(old) = old {
            if old.spec.network_name != self.spec.network_name {
                errs.push(FieldError::forbidden("spec.networkName", "cannot change; create another IPPool"));
            }
            if old.spec.ipv4_config.cidr != self.spec.ipv4_config.cidr {
                errs.push(FieldError::forbidden(
                    "spec.ipv4Config.cidr",
                    "cannot change while guests hold addresses of it; create another IPPool",
                ));
            }
        }
        errs
    }
    fn columns() -> Vec<Column> {
        vec![
            Column::new("Network", "string", ".spec.networkName"),
            Column::new("CIDR", "string", ".spec.ipv4Config.cidr"),
            Column::new("Used", "integer", ".status.ipv4.used"),
            Column::new("Available", "integer", ".status.ipv4.available"),
            Column::new("Agent", "string", ".status.agentNode"),
        ]
    }
    fn description() -> &'static str {
        "Addresses for one VM network, handed to its guests by a DHCP server that Sheaf runs on one node of the \
         network: every guest NIC gets a fixed address for as long as its VM exists."
    }
}

#[cfg(test)]
mod tests;

/// The MAC of NIC `index` of the VM `namespace/name` when its interface
/// sets none: stable across restarts and migrations of the VM (so its DHCP
/// address and the guest's interface naming stay), distinct per NIC.
pub fn vm_mac(namespace: &str, name: &str, index: usize) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let key = format!("{namespace}/{name}");
    for b in key.bytes().chain(std::iter::once(0)).chain((index as u32).to_be_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    // Locally administered, unicast: 40 bits of the hash.
    let b = h.to_be_bytes();
    format!("02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4])
}
