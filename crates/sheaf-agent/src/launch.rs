//! From a VirtualMachineInstance to a QEMU machine: resolves images and
//! volumes into files in the VMI's runtime directory and builds the
//! [`MachineConfig`]. Every failure is a [`LaunchError`] whose message says
//! what to fix; the caller removes the runtime directory.

use std::path::{Path, PathBuf};

use sheaf_qemu::machine::{Accel, DiskBus, DiskConfig, Firmware, KernelBoot, MachineConfig, NicBackend, NicConfig};
use sheaf_types::kubevirt::VirtualMachineInstance;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The image is not in the node's image store (ErrImagePull-like).
    #[error("image {image:?} is not available on this node: {detail}")]
    ImageNotFound { image: String, detail: String },
    #[error("volume {volume:?}: {message}")]
    Volume { volume: String, message: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("interface {interface:?}: {message}")]
    Network { interface: String, message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("QEMU refused to start: {0}")]
    Qemu(String),
    #[error("qemu-img failed for {what}: {stderr}")]
    QemuImg { what: String, stderr: String },
}

impl LaunchError {
    /// The Kubernetes-style reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            LaunchError::ImageNotFound { .. } => "ErrImagePull",
            LaunchError::Volume { .. } => "VolumeError",
            LaunchError::Unsupported(_) => "Unsupported",
            LaunchError::Network { .. } => "NetworkError",
            LaunchError::Io { .. } | LaunchError::QemuImg { .. } | LaunchError::Qemu(_) => "LaunchFailed",
        }
    }
}

/// Where images live on this node: one directory per image reference.
#[derive(Clone, Debug)]
pub struct ImageStore {
    pub root: PathBuf,
}

impl ImageStore {
    /// `quay.io/kubevirt/cirros:latest` → `ROOT/quay.io_kubevirt_cirros_latest`.
    pub fn dir(&self, image: &str) -> PathBuf {
        let name: String =
            image.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
        self.root.join(name)
    }

    fn image_dir(&self, image: &str) -> Result<PathBuf, LaunchError> {
        let dir = self.dir(image);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(LaunchError::ImageNotFound {
                image: image.into(),
                detail: format!("expected a directory {} (see docs/guide/vms.md, \"Images on a node\")", dir.display()),
            })
        }
    }

    /// The disk file of a container disk image: `disk.qcow2` or `disk.img`.
    pub fn disk(&self, image: &str) -> Result<(PathBuf, &'static str), LaunchError> {
        let dir = self.image_dir(image)?;
        for (file, format) in [("disk.qcow2", "qcow2"), ("disk.img", "raw"), ("disk.raw", "raw")] {
            let p = dir.join(file);
            if p.is_file() {
                return Ok((p, format));
            }
        }
        Err(LaunchError::ImageNotFound {
            image: image.into(),
            detail: format!("{} has no disk.qcow2 or disk.img", dir.display()),
        })
    }

    /// A file inside an image (kernel boot), by its absolute path in the image.
    pub fn file(&self, image: &str, path_in_image: &str) -> Result<PathBuf, LaunchError> {
        let dir = self.image_dir(image)?;
        let rel = path_in_image.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return Err(LaunchError::Unsupported(format!("path {path_in_image:?} must not contain '..'")));
        }
        let p = dir.join(rel);
        if p.is_file() {
            Ok(p)
        } else {
            Err(LaunchError::ImageNotFound { image: image.into(), detail: format!("{} does not exist", p.display()) })
        }
    }
}

fn qemu_img(args: &[&str], what: &str) -> Result<(), LaunchError> {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| LaunchError::Io { what: "running qemu-img".into(), source: e })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LaunchError::QemuImg { what: what.into(), stderr: String::from_utf8_lossy(&out.stderr).trim().into() })
    }
}

fn bus(name: Option<&str>, default: DiskBus, volume: &str) -> Result<DiskBus, LaunchError> {
    match name.unwrap_or("") {
        "" => Ok(default),
        "virtio" => Ok(DiskBus::Virtio),
        "sata" => Ok(DiskBus::Sata),
        "scsi" => Ok(DiskBus::Scsi),
        other => Err(LaunchError::Unsupported(format!(
            "disk {volume:?}: bus {other:?} is not supported (use virtio, sata or scsi)"
        ))),
    }
}

fn mib(q: &sheaf_types::quantity::Quantity) -> u64 {
    q.value().map(|b| (b.max(0) as u64).div_ceil(1024 * 1024)).unwrap_or(0)
}

/// Inputs the launch needs besides the VMI.
pub struct LaunchContext<'a> {
    pub images: &'a ImageStore,
    pub accel: Accel,
    pub run_dir: &'a Path,
    /// Builds a cloud-init seed image for a volume; returns its path.
    pub seed: &'a dyn Fn(&VirtualMachineInstance, &str) -> Result<PathBuf, LaunchError>,
    /// The node's management network (None: QEMU's user-mode NAT).
    pub network: Option<&'a crate::network::Management>,
    /// The attached Sheaf volumes, by VMI volume name.
    pub volumes: &'a std::collections::HashMap<String, crate::storage::AttachedDisk>,
    /// The taps (and MTUs) of the NICs on VM networks, by interface index
    /// ([`crate::vmnet::VmNetworks::attach`]).
    pub vm_nics: &'a std::collections::BTreeMap<usize, (String, u32)>,
}

/// The machine for `vmi`, creating per-VM files (overlays, empty disks,
/// seeds) under `ctx.run_dir`.
pub fn machine(vmi: &VirtualMachineInstance, ctx: &LaunchContext<'_>) -> Result<MachineConfig, LaunchError> {
    let spec = &vmi.spec;
    let domain = &spec.domain;
    let name = format!(
        "{}_{}",
        vmi.metadata.namespace.as_deref().unwrap_or("default"),
        vmi.metadata.name.as_deref().unwrap_or("vmi")
    );
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let cpu = domain.cpu.as_ref();
    let memory_mib = domain
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .or_else(|| domain.resources.requests.get("memory"))
        .or_else(|| domain.resources.limits.get("memory"))
        .map(mib)
        .filter(|m| *m > 0)
        .ok_or_else(|| LaunchError::Unsupported("no memory size: set spec.domain.memory.guest".into()))?;
    let firmware = match domain.firmware.as_ref().and_then(|f| f.bootloader.as_ref()).and_then(|b| b.efi.as_ref()) {
        Some(_) => {
            let code = PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd");
            let vars_src = PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd");
            if !code.exists() {
                return Err(LaunchError::Unsupported("EFI needs OVMF: apt-get install ovmf".into()));
            }
            let vars = ctx.run_dir.join("efivars.fd");
            std::fs::copy(&vars_src, &vars)
                .map_err(|e| LaunchError::Io { what: "copying OVMF vars".into(), source: e })?;
            Firmware::Efi { code, vars }
        }
        None => Firmware::Bios,
    };
    let kernel_boot = match domain.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()) {
        None => None,
        Some(kb) => {
            let container = kb.get("container");
            let image = container
                .and_then(|c| c.get("image"))
                .and_then(|v| v.as_str())
                .ok_or_else(|| LaunchError::Unsupported("firmware.kernelBoot needs container.image".into()))?;
            let kernel_path =
                container.and_then(|c| c.get("kernelPath")).and_then(|v| v.as_str()).unwrap_or("/vmlinuz");
            let kernel = ctx.images.file(image, kernel_path)?;
            let initrd = match container.and_then(|c| c.get("initrdPath")).and_then(|v| v.as_str()) {
                Some(p) => Some(ctx.images.file(image, p)?),
                None => None,
            };
            let args = kb.get("kernelArgs").and_then(|v| v.as_str()).unwrap_or("console=ttyS0");
            Some(KernelBoot { kernel, initrd, cmdline: args.to_string() })
        }
    };

    let mut disks = Vec::new();
    for disk in &domain.devices.disks {
        let vol = spec.volumes.iter().find(|v| v.name == disk.name).ok_or_else(|| LaunchError::Volume {
            volume: disk.name.clone(),
            message: "no volume of this name".into(),
        })?;
        if vol.hotpluggable() {
            // Added by the VMI's runner once QEMU runs (crate::hotplug), on
            // a hotplug port, so that it can be removed again.
            continue;
        }
        let (cdrom, bus_name, readonly) = if let Some(c) = &disk.cdrom {
            (true, c.bus.as_deref(), true)
        } else if let Some(d) = &disk.disk {
            (false, d.bus.as_deref(), d.readonly.unwrap_or(false))
        } else if let Some(l) = &disk.lun {
            (false, l.bus.as_deref(), l.readonly.unwrap_or(false))
        } else {
            (false, None, false)
        };
        let default_bus = if cdrom { DiskBus::Sata } else { DiskBus::Virtio };
        let mut readonly = readonly;
        let (path, format) = if let Some(cd) = &vol.container_disk {
            let (base, base_format) = ctx.images.disk(&cd.image)?;
            // Container disks are ephemeral: writes go to an overlay.
            let overlay = ctx.run_dir.join(format!("{}.overlay.qcow2", disk.name));
            let base_str = base.display().to_string();
            let overlay_str = overlay.display().to_string();
            qemu_img(&["create", "-q", "-f", "qcow2", "-b", &base_str, "-F", base_format, &overlay_str], &disk.name)?;
            (overlay, "qcow2")
        } else if let Some(ed) = &vol.empty_disk {
            let file = ctx.run_dir.join(format!("{}.empty.qcow2", disk.name));
            let bytes = ed.capacity.as_ref().and_then(|c| c.value()).unwrap_or(0).max(0);
            if bytes == 0 {
                return Err(LaunchError::Volume {
                    volume: vol.name.clone(),
                    message: "emptyDisk.capacity must be positive".into(),
                });
            }
            qemu_img(&["create", "-q", "-f", "qcow2", &file.display().to_string(), &bytes.to_string()], &disk.name)?;
            (file, "qcow2")
        } else if let Some(hd) = &vol.host_disk {
            let host_path = hd.path.clone().unwrap_or_default();
            if host_path.is_empty() {
                return Err(LaunchError::Volume {
                    volume: vol.name.clone(),
                    message: "hostDisk.path is required".into(),
                });
            }
            let p = PathBuf::from(&host_path);
            if !p.exists() {
                if hd.type_.as_deref() == Some("DiskOrCreate") {
                    let bytes = hd.capacity.as_ref().and_then(|c| c.value()).unwrap_or(0).max(0);
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| LaunchError::Io {
                            what: format!("creating {}", parent.display()),
                            source: e,
                        })?;
                    }
                    qemu_img(&["create", "-q", "-f", "raw", &host_path, &bytes.to_string()], &disk.name)?;
                } else {
                    return Err(LaunchError::Volume {
                        volume: vol.name.clone(),
                        message: format!("hostDisk {host_path} does not exist"),
                    });
                }
            }
            (p, "raw")
        } else if vol.cloud_init_no_cloud.is_some() || vol.cloud_init_config_drive.is_some() {
            readonly = true;
            ((ctx.seed)(vmi, &vol.name)?, "raw")
        } else if vol.persistent_volume_claim.is_some() || vol.data_volume.is_some() {
            let attached = ctx.volumes.get(&vol.name).ok_or_else(|| LaunchError::Volume {
                volume: vol.name.clone(),
                message: "the volume is not attached to this node".into(),
            })?;
            if cdrom && attached.format == "vhost-user" {
                return Err(LaunchError::Volume {
                    volume: vol.name.clone(),
                    message: "a cdrom cannot be served over the vhost-user frontend (it is a virtio block \
                              device); use a Volume with frontend nbd for it"
                        .into(),
                });
            }
            if vol.persistent_volume_claim.as_ref().and_then(|p| p.read_only) == Some(true) {
                if attached.format == "vhost-user" {
                    return Err(LaunchError::Volume {
                        volume: vol.name.clone(),
                        message: "a read-only claim is not supported on the vhost-user frontend yet; \
                                  use a Volume with frontend nbd for it"
                            .into(),
                    });
                }
                readonly = true;
            }
            (attached.socket.clone(), attached.format)
        } else {
            return Err(LaunchError::Unsupported(format!(
                "volume {:?}: this volume type is not supported yet",
                vol.name
            )));
        };
        disks.push(DiskConfig {
            id: disk.name.clone(),
            path,
            format: format.into(),
            bus: bus(bus_name, default_bus, &disk.name)?,
            cdrom,
            readonly,
            boot_order: disk.boot_order,
            serial: disk.serial.clone(),
        });
    }

    let mut nics = Vec::new();
    for (i, iface) in domain.devices.interfaces.iter().enumerate() {
        let net = spec.networks.iter().find(|n| n.name == iface.name);
        let mac = nic_mac(vmi, i);
        let mut mtu = None;
        let backend = if net.and_then(|n| n.multus.as_ref()).is_some() {
            let (tap, m) = ctx.vm_nics.get(&i).ok_or_else(|| LaunchError::Network {
                interface: iface.name.clone(),
                message: "the VM network was not set up on this node".into(),
            })?;
            mtu = Some(*m);
            NicBackend::Tap { ifname: tap.clone() }
        } else if net.and_then(|n| n.pod.as_ref()).is_none() {
            return Err(LaunchError::Unsupported(format!(
                "interface {:?}: its network is neither the pod network nor a multus network",
                iface.name
            )));
        } else {
            match ctx.network {
                None => NicBackend::User { forwards: Vec::new() },
                Some(net) => {
                    let hostname =
                        spec.hostname.clone().unwrap_or_else(|| vmi.metadata.name.clone().unwrap_or_default());
                    let ports = iface
                        .ports
                        .iter()
                        .filter_map(|p| {
                            Some(crate::network::Port {
                                protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                                port: u16::try_from(p.port).ok()?,
                            })
                        })
                        .collect();
                    // The address the guest has (a migration's target
                    // keeps it when its subnet allows).
                    let had = vmi
                        .status
                        .as_ref()
                        .and_then(|s| s.interfaces.iter().find(|n| n.name.as_deref() == Some(iface.name.as_str())))
                        .and_then(|n| n.ip_address.as_deref()?.parse().ok());
                    let want = crate::network::Nic {
                        name: iface.name.clone(),
                        mac: mac.clone(),
                        ip: had.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                        tap: String::new(),
                        hostname,
                        ports,
                    };
                    let nic = net.attach(ctx.run_dir, &uid, i, want).map_err(|e| {
                        LaunchError::Unsupported(format!("interface {:?}: management network: {e}", iface.name))
                    })?;
                    NicBackend::Tap { ifname: nic.tap }
                }
            }
        };
        nics.push(NicConfig {
            id: iface.name.clone(),
            mac,
            model: match iface.model.as_deref() {
                None | Some("virtio") => "virtio-net-pci".into(),
                Some(m) => m.to_string(),
            },
            backend,
            boot_order: iface.boot_order,
            mtu,
        });
    }

    Ok(MachineConfig {
        name,
        uuid: domain.firmware.as_ref().and_then(|f| f.uuid.clone()).unwrap_or_else(|| uid.clone()),
        accel: ctx.accel,
        machine_type: domain.machine.as_ref().and_then(|m| m.type_.clone()).unwrap_or_else(|| "q35".into()),
        cpu_model: cpu.and_then(|c| c.model.clone()),
        sockets: cpu.and_then(|c| c.sockets).unwrap_or(1).max(1),
        cores: cpu.and_then(|c| c.cores).unwrap_or(1).max(1),
        threads: cpu.and_then(|c| c.threads).unwrap_or(1).max(1),
        memory_mib,
        firmware,
        smbios_serial: domain.firmware.as_ref().and_then(|f| f.serial.clone()),
        disks,
        nics,
        kernel_boot,
        run_dir: ctx.run_dir.to_path_buf(),
        vnc: domain.devices.autoattach_graphics_device != Some(false),
        hotplug_ports: if domain.devices.disable_hotplug == Some(true) {
            0
        } else {
            sheaf_qemu::machine::DEFAULT_HOTPLUG_PORTS
        },
    })
}

/// The MAC of NIC `index` of `vmi`: its `macAddress`, else one derived
/// from the VM's namespace and name (stable across restarts).
pub fn nic_mac(vmi: &VirtualMachineInstance, index: usize) -> String {
    let iface = vmi.spec.domain.devices.interfaces.get(index);
    iface.and_then(|i| i.mac_address.clone()).unwrap_or_else(|| {
        sheaf_types::network::vm_mac(
            vmi.metadata.namespace.as_deref().unwrap_or("default"),
            vmi.metadata.name.as_deref().unwrap_or_default(),
            index,
        )
    })
}
