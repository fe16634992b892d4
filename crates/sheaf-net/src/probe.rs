//! Whether this kernel can make 802.1Q VLAN devices.

use std::path::Path;

/// Whether this kernel can make 802.1Q ("vlan") devices.
///
/// A static probe that only reads files, so it is cheap, needs no
/// privileges and changes nothing (no device is created, no module loaded).
/// True when any of these holds:
/// 1. `/proc/net/vlan` exists: the 8021q driver is loaded (it makes that
///    directory in every network namespace);
/// 2. `/sys/module/8021q` exists: the driver is loaded or built in;
/// 3. the running kernel ships it as a module that creating a VLAN device
///    would load on demand: `/lib/modules/$(uname -r)/kernel/net/8021q/`
///    holds an `8021q.ko*`, or `modules.builtin` lists it.
///
/// A module that is present but blacklisted still reads as supported; then
/// creating the device fails with [`NetError::KindUnsupported`](crate::NetError::KindUnsupported),
/// which callers must handle anyway.
pub fn vlan_supported() -> bool {
    if Path::new("/proc/net/vlan").exists() || Path::new("/sys/module/8021q").exists() {
        return true;
    }
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let modules = Path::new("/lib/modules").join(release.trim());
    module_file_present(&modules.join("kernel/net/8021q")) || listed_as_builtin(&modules.join("modules.builtin"))
}

fn module_file_present(directory: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| entry.file_name().to_string_lossy().starts_with("8021q.ko"))
}

fn listed_as_builtin(modules_builtin: &Path) -> bool {
    std::fs::read_to_string(modules_builtin)
        .map(|list| list.lines().any(|line| line.ends_with("/8021q.ko")))
        .unwrap_or(false)
}
