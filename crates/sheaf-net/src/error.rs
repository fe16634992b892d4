//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// What went wrong, with the operation and the device it concerned.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The rtnetlink socket could not be opened or registered.
    #[error("opening the rtnetlink socket: {source}")]
    Connect {
        #[source]
        source: io::Error,
    },

    /// `RtNetlink::new` was called outside a tokio runtime.
    #[error("RtNetlink::new needs a running tokio runtime to spawn its connection on")]
    NoRuntime,

    /// The kernel answered a request with an error.
    #[error("{operation} {device:?}: {source}")]
    Kernel {
        operation: &'static str,
        device: String,
        /// Built from the kernel's errno; `raw_os_error()` gives the number.
        #[source]
        source: io::Error,
    },

    /// The kernel has no driver for this kind of device (EOPNOTSUPP on
    /// creation), e.g. "vlan" without the 8021q module.
    #[error("{operation} {device:?}: this kernel cannot make {kind:?} devices (EOPNOTSUPP)")]
    KindUnsupported { operation: &'static str, device: String, kind: &'static str },

    /// A device named in the request does not exist.
    #[error("{operation} {device:?}: no such device")]
    NoSuchDevice { operation: &'static str, device: String },

    /// `create` found a device of that name that is of another kind.
    #[error("create {device:?}: it exists as a {found} device, not {wanted}")]
    WrongKind { device: String, wanted: &'static str, found: String },

    /// A device name the kernel would refuse (empty, longer than 15 bytes,
    /// `/`, whitespace, `.` or `..`).
    #[error("invalid device name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// An 802.1Q VLAN id outside 1..=4094.
    #[error("vlan {device:?}: VLAN id {id} is outside 1..=4094")]
    InvalidVlanId { device: String, id: u16 },

    /// A VXLAN network identifier that does not fit in 24 bits.
    #[error("vxlan {device:?}: VNI {vni} does not fit in 24 bits")]
    InvalidVni { device: String, vni: u32 },

    /// An IPv4 prefix length above 32.
    #[error("address on {device:?}: prefix length {prefix} is above 32")]
    InvalidPrefix { device: String, prefix: u8 },

    /// The network namespace file could not be opened.
    #[error("move {device:?} to netns {path:?}: {source}")]
    Netns {
        device: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The netlink exchange itself failed (connection closed, unexpected reply).
    #[error("{operation} {device:?}: netlink protocol error: {detail}")]
    Protocol { operation: &'static str, device: String, detail: String },
}

impl NetError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            Self::KindUnsupported { .. } => Some(EOPNOTSUPP),
            _ => None,
        }
    }

    pub(crate) fn kernel(operation: &'static str, device: &str, errno: i32) -> Self {
        Self::Kernel { operation, device: device.to_string(), source: io::Error::from_raw_os_error(errno) }
    }

    pub(crate) fn no_such_device(operation: &'static str, device: &str) -> Self {
        Self::NoSuchDevice { operation, device: device.to_string() }
    }
}

/// errno values this crate interprets (Linux, all architectures Sheaf runs on).
pub(crate) const ENOENT: i32 = 2;
pub(crate) const EEXIST: i32 = 17;
pub(crate) const ENODEV: i32 = 19;
pub(crate) const EINVAL: i32 = 22;
pub(crate) const ELOOP: i32 = 40;
pub(crate) const EOPNOTSUPP: i32 = 95;
