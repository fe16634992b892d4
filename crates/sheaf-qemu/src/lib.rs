//! QEMU for Sheaf: an async QMP client, cloud-init seed images (NoCloud
//! and ConfigDrive, as ISO 9660 with Joliet names), and the QEMU command
//! line for a virtual machine, and the QMP arguments of disks added to and
//! removed from a running one. A leaf crate: no API, store or runtime.

pub mod hotplug;
pub mod machine;
pub mod qga;
pub mod qmp;
pub mod seed;
