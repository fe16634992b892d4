//! QEMU for Sheaf: an async QMP client, cloud-init seed images (NoCloud
//! and ConfigDrive, as ISO 9660 with Joliet names), and the QEMU command
//! line for a virtual machine. A leaf crate: no API, store or runtime.

pub mod machine;
pub mod qga;
pub mod qmp;
pub mod seed;
