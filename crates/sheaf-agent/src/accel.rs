//! Which accelerator QEMU can use on this host.
//!
//! `/dev/kvm` existing is not enough: some hosts expose it through a
//! software backend (PVM) on which ordinary guest kernels crash. KVM is used
//! only when `/dev/kvm` opens and a hardware backend (`kvm_intel` or
//! `kvm_amd`) is loaded; otherwise QEMU runs under TCG and the reason is
//! reported on every VMI.

use std::path::Path;

use sheaf_qemu::machine::Accel;

/// The probe's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    /// Why KVM is not used, when it is not.
    pub reason: Option<String>,
}

/// Probes `/dev/kvm` and the loaded KVM backends under `sys` (normally `/sys`).
pub fn probe(dev_kvm: &Path, sys: &Path) -> AccelChoice {
    let tcg = |reason: String| AccelChoice { accel: Accel::Tcg, reason: Some(reason) };
    if std::env::var_os("SHEAF_FORCE_TCG").is_some() {
        return tcg("SHEAF_FORCE_TCG is set".into());
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev_kvm) {
        return tcg(format!("{} cannot be opened: {e}", dev_kvm.display()));
    }
    let module = |m: &str| sys.join("module").join(m).exists();
    if module("kvm_intel") || module("kvm_amd") {
        return AccelChoice { accel: Accel::Kvm, reason: None };
    }
    if module("kvm_pvm") {
        return tcg(
            "/dev/kvm is backed by PVM (software nested virtualisation), which crashes ordinary guest kernels".into()
        );
    }
    tcg("no hardware KVM backend (kvm_intel or kvm_amd) is loaded".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_from_device_and_modules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("kvm");
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(sys.join("module/kvm")).expect("mkdir");
        assert_eq!(probe(&dev, &sys).accel, Accel::Tcg, "no device");
        std::fs::write(&dev, b"").expect("device stand-in");
        std::fs::create_dir_all(sys.join("module/kvm_pvm")).expect("mkdir");
        let c = probe(&dev, &sys);
        if std::env::var_os("SHEAF_FORCE_TCG").is_none() {
            assert!(c.reason.as_deref().unwrap_or("").contains("PVM"), "{c:?}");
            std::fs::create_dir_all(sys.join("module/kvm_intel")).expect("mkdir");
            assert_eq!(probe(&dev, &sys), AccelChoice { accel: Accel::Kvm, reason: None });
        }
    }
}
