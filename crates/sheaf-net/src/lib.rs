//! The node agent's netlink layer for VM networks.
//!
//! Sheaf's VM networks are L2 segments that span nodes: a Linux bridge per
//! network on each node, joined to the other nodes by a VXLAN device (always
//! available) or an 802.1Q VLAN device on an uplink (where the kernel has
//! 8021q, see [`vlan_supported`]), with veth pairs and taps into guests and
//! namespaces. This crate creates, wires, inspects and deletes those devices
//! and the VXLAN forwarding entries (FDB) that point at other nodes' VTEPs.
//!
//! What is owned: only devices Sheaf creates. The [`Netlink`] trait can
//! read every link, but callers must only change or delete devices whose
//! names they made (the agent uses a `sh…` prefix); the uplinks and
//! addresses of the host are only ever *referenced* (as a VLAN parent or a
//! VXLAN underlay).
//!
//! Two implementations:
//! - [`RtNetlink`]: the real kernel, over one rtnetlink socket whose
//!   connection task runs on the current tokio runtime. Every request it sends
//!   is built by the pure, I/O-free [`messages`] module, which is unit tested
//!   attribute by attribute.
//! - [`FakeNetlink`]: an in-memory kernel with the same semantics (indexes,
//!   masters, veth peers, FDB, the same errors for unknown devices and
//!   duplicates) for controller and agent tests; [`FakeNetlink::state`] shows
//!   what it holds.
//!
//! This crate is a leaf: it never depends on the API, the store or other
//! Sheaf crates.

mod error;
mod fake;
pub mod messages;
mod probe;
mod real;

use std::net::Ipv4Addr;
use std::path::Path;

pub use error::NetError;
pub use fake::{FakeLink, FakeNetlink, FakeState};
pub use probe::vlan_supported;
pub use real::RtNetlink;

/// One network device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The driver kind ("bridge", "vxlan", "vlan", "veth", "tun", ...);
    /// `None` for physical devices and loopback.
    pub kind: Option<String>,
    /// The index of the bridge this device is a port of.
    pub master: Option<u32>,
    pub mtu: u32,
    /// Administratively up (IFF_UP), not whether it has carrier.
    pub up: bool,
    pub mac: Option<[u8; 6]>,
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSpec {
    /// A Linux bridge (no STP, no VLAN filtering, the kernel's defaults).
    Bridge,
    /// A VXLAN device with a fixed local VTEP address. Remote VTEPs are
    /// added as FDB entries with [`Netlink::fdb_append`].
    Vxlan {
        /// VXLAN network identifier, 0..2^24.
        vni: u32,
        /// Local VTEP address (source of the encapsulated packets).
        local: Ipv4Addr,
        /// UDP destination port (4789 is the IANA port).
        port: u16,
        /// Name of the underlay device to bind to.
        underlay: Option<String>,
        /// Learn remote MACs from received packets.
        learning: bool,
    },
    /// An 802.1Q device on `parent` with VLAN `id` in 1..=4094.
    Vlan { parent: String, id: u16 },
    /// A veth pair: `name` and its `peer`.
    Veth { peer: String },
}

impl LinkSpec {
    /// The kernel's name for this kind of device (IFLA_INFO_KIND).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Vxlan { .. } => "vxlan",
            Self::Vlan { .. } => "vlan",
            Self::Veth { .. } => "veth",
        }
    }
}

/// The netlink operations the agent needs. Device arguments are names.
#[async_trait::async_trait]
pub trait Netlink: Send + Sync {
    /// Every link in this network namespace, by index.
    async fn links(&self) -> Result<Vec<Link>, NetError>;
    /// The link called `name`, `None` if there is none.
    async fn link(&self, name: &str) -> Result<Option<Link>, NetError>;
    /// Creates `name` as `spec`, administratively down. Ok if `name` already
    /// exists with the same kind (its other settings are not compared);
    /// [`NetError::WrongKind`] if it exists with another kind.
    async fn create(&self, name: &str, spec: &LinkSpec) -> Result<(), NetError>;
    /// Makes `name` a port of bridge `master`, or of none.
    async fn set_master(&self, name: &str, master: Option<&str>) -> Result<(), NetError>;
    async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetError>;
    async fn set_up(&self, name: &str, up: bool) -> Result<(), NetError>;
    /// Deletes `name` (and a veth's peer with it); Ok if already gone.
    async fn delete(&self, name: &str) -> Result<(), NetError>;
    /// Moves `name` into the network namespace bound at `netns_path`
    /// (e.g. `/run/netns/NAME`); it disappears from this namespace.
    async fn move_to_netns(&self, name: &str, netns_path: &Path) -> Result<(), NetError>;
    /// Adds `addr/prefix` to `name`; Ok if it is already there.
    async fn add_address(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), NetError>;
    /// The device's own (NTF_SELF) bridge FDB entries: (mac, destination
    /// VTEP). Entries the enclosing bridge learned for it are not included.
    async fn fdb(&self, dev: &str) -> Result<Vec<([u8; 6], Option<Ipv4Addr>)>, NetError>;
    /// Appends an FDB entry (NLM_F_APPEND semantics, like `bridge fdb append
    /// 00:00:00:00:00:00 dev vx dst IP`); Ok if it is already there.
    async fn fdb_append(&self, dev: &str, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetError>;
    /// Removes that FDB entry; Ok if it is not there.
    async fn fdb_delete(&self, dev: &str, mac: [u8; 6], dst: Ipv4Addr) -> Result<(), NetError>;
}

/// The largest device name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;

/// Checks a device name the way the kernel's `dev_valid_name` does, so a bad
/// name is a clear error instead of an EINVAL.
pub fn validate_name(name: &str) -> Result<(), NetError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "`.` and `..` are reserved"
    } else if name.contains('/') || name.contains(':') || name.chars().any(char::is_whitespace) {
        "contains `/`, `:` or whitespace"
    } else {
        return Ok(());
    };
    Err(NetError::InvalidName { name: name.to_string(), reason })
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":")
}
