//! The QEMU command line of a virtual machine.
//!
//! [`MachineConfig`] is a plain description of a machine (no API types);
//! [`MachineConfig::argv`] turns it into `qemu-system-x86_64` arguments. The
//! process is started daemonized (`-daemonize -pidfile`) so that it outlives
//! the agent that started it; everything it needs sits in one runtime
//! directory.

use std::path::{Path, PathBuf};

/// Which accelerator QEMU uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Software emulation (`-accel tcg,thread=multi -cpu max`).
    Tcg,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default).
    Bios,
    /// OVMF; `code` and a writable per-VM copy of `vars`.
    Efi { code: PathBuf, vars: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    Sata,
    Scsi,
}

/// One disk or cdrom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Device id, unique in the machine (the KubeVirt disk name).
    pub id: String,
    pub path: PathBuf,
    /// `raw` or `qcow2` for a file; `nbd` when `path` is the unix socket
    /// of a Sheaf volume's NBD server; `vhost-user` when it is the socket
    /// of a volume engine's vhost-user-blk server (`sheaf blk engine
    /// --vhost-user`): the disk is a `vhost-user-blk-pci` device whatever
    /// the bus, guest RAM is shared with the engine, and `serial` and
    /// `readonly` are the engine's to set (`--vhost-user-serial`,
    /// `--vhost-user-read-only`): QEMU has no such properties for it.
    pub format: String,
    pub bus: DiskBus,
    pub cdrom: bool,
    pub readonly: bool,
    pub boot_order: Option<u32>,
    pub serial: Option<String>,
}

/// How a NIC reaches the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NicBackend {
    /// QEMU's user-mode NAT (slirp) with host port forwards (host, guest).
    User { forwards: Vec<(u16, u16)> },
    /// An existing tap device.
    Tap { ifname: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicConfig {
    pub id: String,
    pub mac: String,
    /// `virtio-net-pci`, `e1000`, ...
    pub model: String,
    pub backend: NicBackend,
    pub boot_order: Option<u32>,
    /// The MTU the network carries, told to a virtio guest (`host_mtu`)
    /// so it never sends larger frames (VXLAN networks carry 1450).
    pub mtu: Option<u32>,
}

/// Direct kernel boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// Everything QEMU needs to start one machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// Shown in process lists and QMP (`-name`).
    pub name: String,
    pub uuid: String,
    pub accel: Accel,
    /// `q35` or `pc`, optionally versioned.
    pub machine_type: String,
    pub cpu_model: Option<String>,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    pub memory_mib: u64,
    pub firmware: Firmware,
    pub smbios_serial: Option<String>,
    pub disks: Vec<DiskConfig>,
    pub nics: Vec<NicConfig>,
    pub kernel_boot: Option<KernelBoot>,
    /// The VM's runtime directory: sockets, pidfile and logs live here.
    pub run_dir: PathBuf,
    pub vnc: bool,
    /// Room for disks added while the machine runs ([`crate::hotplug`]):
    /// on q35 this many empty `pcie-root-port`s (native PCIe hotplug),
    /// and a virtio-scsi controller for SCSI disks. 0 (KubeVirt's
    /// `devices.disableHotplug`): neither.
    pub hotplug_ports: u32,
}

/// Files in the runtime directory.
pub fn qmp_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("qmp.sock")
}
pub fn serial_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("serial.sock")
}
pub fn serial_log(run_dir: &Path) -> PathBuf {
    run_dir.join("serial.log")
}
pub fn vnc_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("vnc.sock")
}
pub fn guest_agent_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("qga.sock")
}
pub fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("qemu.pid")
}
pub fn qemu_log(run_dir: &Path) -> PathBuf {
    run_dir.join("qemu.log")
}

/// Queues of a vhost-user-blk disk: one per vCPU, up to what `sheaf blk
/// engine` offers by default (`--vhost-user-queues 4`).
pub const VHOST_USER_BLK_MAX_QUEUES: u32 = 4;

/// The id of the memory backend that holds guest RAM when a disk uses
/// vhost-user (the engine maps it).
const SHARED_RAM: &str = "ram0";

/// Empty PCIe root ports a machine gets for hotplugged disks unless
/// hotplug is disabled.
pub const DEFAULT_HOTPLUG_PORTS: u32 = 4;

/// The id of the `n`th (from 0) PCIe root port kept free for hotplug.
pub fn hotplug_port(n: u32) -> String {
    format!("{HOTPLUG_PORT_PREFIX}{n}")
}

/// Ids of the root ports for hotplug start with this.
pub const HOTPLUG_PORT_PREFIX: &str = "hotplug-port";

/// The id of the virtio-scsi controller; its bus is `scsi0.0`.
pub const SCSI_CONTROLLER: &str = "scsi0";

/// Whether `machine_type` is a q35 (PCIe) machine: `q35`, `pc-q35-7.2`.
/// Other machines (`pc`, i440fx) hotplug on their root PCI bus.
pub fn is_q35(machine_type: &str) -> bool {
    machine_type.contains("q35")
}

fn path(p: &Path) -> String {
    // QEMU option values separate with ','; a literal comma is doubled.
    p.display().to_string().replace(',', ",,")
}

impl MachineConfig {
    /// Arguments for `qemu-system-x86_64` (without the program name).
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |parts: &[&str]| a.extend(parts.iter().map(|s| s.to_string()));
        push(&["-name", &format!("guest={},debug-threads=on", self.name)]);
        push(&["-uuid", &self.uuid]);
        push(&["-nodefaults", "-no-user-config"]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm"]),
            Accel::Tcg => push(&["-accel", "tcg,thread=multi"]),
        }
        let cpu = match (&self.cpu_model, self.accel) {
            (Some(m), _) if m != "host-model" && m != "host-passthrough" => m.clone(),
            (_, Accel::Kvm) => "host".to_string(),
            (_, Accel::Tcg) => "max".to_string(),
        };
        // A vhost-user backend reads and writes guest RAM itself: it must
        // be a shared mapping it can map too.
        let vhost_user = self.disks.iter().any(|d| d.format == "vhost-user");
        if vhost_user {
            push(&["-object", &format!("memory-backend-memfd,id={SHARED_RAM},size={}M,share=on", self.memory_mib)]);
            push(&["-machine", &format!("{},usb=off,memory-backend={SHARED_RAM}", self.machine_type)]);
        } else {
            push(&["-machine", &format!("{},usb=off", self.machine_type)]);
        }
        push(&["-cpu", &cpu]);
        let vcpus = self.sockets * self.cores * self.threads;
        push(&["-smp", &format!("{vcpus},sockets={},cores={},threads={}", self.sockets, self.cores, self.threads)]);
        push(&["-m", &format!("{}M", self.memory_mib)]);
        if let Firmware::Efi { code, vars } = &self.firmware {
            push(&["-drive", &format!("if=pflash,format=raw,unit=0,readonly=on,file={}", path(code))]);
            push(&["-drive", &format!("if=pflash,format=raw,unit=1,file={}", path(vars))]);
        }
        if let Some(serial) = &self.smbios_serial {
            push(&["-smbios", &format!("type=1,serial={}", serial.replace(',', ",,"))]);
        }
        if let Some(k) = &self.kernel_boot {
            push(&["-kernel", &path(&k.kernel)]);
            if let Some(i) = &k.initrd {
                push(&["-initrd", &path(i)]);
            }
            push(&["-append", &k.cmdline]);
        }
        // Management: QMP, serial console (socket + log), optional VNC.
        // The serial log is written with or without a console client, and
        // opened O_APPEND (logappend=on), so it can be truncated under QEMU.
        let d = &self.run_dir;
        push(&["-chardev", &format!("socket,id=qmp,path={},server=on,wait=off", path(&qmp_socket(d)))]);
        push(&["-mon", "chardev=qmp,mode=control"]);
        push(&[
            "-chardev",
            &format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
                path(&serial_socket(d)),
                path(&serial_log(d))
            ),
        ]);
        push(&["-serial", "chardev:serial0"]);
        // The guest agent's channel, as KubeVirt gives every VM.
        push(&["-chardev", &format!("socket,id=qga0,path={},server=on,wait=off", path(&guest_agent_socket(d)))]);
        push(&["-device", "virtio-serial-pci,id=virtio-serial0"]);
        push(&["-device", "virtserialport,bus=virtio-serial0.0,chardev=qga0,name=org.qemu.guest_agent.0"]);
        if self.vnc {
            push(&["-vnc", &format!("unix:{}", path(&vnc_socket(d)))]);
            push(&["-device", "VGA"]);
        } else {
            push(&["-display", "none"]);
        }
        push(&["-device", "virtio-rng-pci"]);
        let has_scsi = self.disks.iter().any(|x| x.bus == DiskBus::Scsi);
        if has_scsi || self.hotplug_ports > 0 {
            push(&["-device", &format!("virtio-scsi-pci,id={SCSI_CONTROLLER}")]);
        }
        let has_sata = self.disks.iter().any(|x| x.bus == DiskBus::Sata);
        let sata_bus = if has_sata && self.machine_type.starts_with("pc") && !self.machine_type.contains("q35") {
            push(&["-device", "ahci,id=ahci0"]);
            "ahci0"
        } else {
            // q35 has an AHCI controller built in: ide.0 ... ide.5.
            "ide"
        };
        let mut sata_port = 0;
        for disk in &self.disks {
            let ro = if disk.readonly || disk.cdrom { ",read-only=on" } else { "" };
            let node = format!("drive-{}", disk.id);
            if disk.format == "vhost-user" {
                // reconnect=1: when the engine restarts, QEMU connects again
                // within a second and the guest's I/O resumes.
                let chardev = format!("vhost-{}", disk.id);
                push(&["-chardev", &format!("socket,id={chardev},path={},reconnect=1", path(&disk.path))]);
                let queues = vcpus.clamp(1, VHOST_USER_BLK_MAX_QUEUES);
                let mut dev = format!("vhost-user-blk-pci,chardev={chardev},id={},num-queues={queues}", disk.id);
                if let Some(b) = disk.boot_order {
                    dev.push_str(&format!(",bootindex={b}"));
                }
                push(&["-device", &dev]);
                continue;
            }
            if disk.format == "nbd" {
                push(&[
                    "-blockdev",
                    &format!(
                        "driver=nbd,server.type=unix,server.path={},node-name={node}-file,discard=unmap{ro}",
                        path(&disk.path)
                    ),
                ]);
                push(&["-blockdev", &format!("driver=raw,file={node}-file,node-name={node},discard=unmap{ro}")]);
            } else {
                push(&[
                    "-blockdev",
                    &format!(
                        "driver=file,filename={},node-name={node}-file,cache.direct=off,discard=unmap{ro}",
                        path(&disk.path)
                    ),
                ]);
                push(&["-blockdev", &format!("driver={},file={node}-file,node-name={node}{ro}", disk.format)]);
            }
            let mut dev = match (disk.bus, disk.cdrom) {
                (DiskBus::Virtio, _) => format!("virtio-blk-pci,drive={node},id={}", disk.id),
                (DiskBus::Scsi, true) => format!("scsi-cd,bus=scsi0.0,drive={node},id={}", disk.id),
                (DiskBus::Scsi, false) => format!("scsi-hd,bus=scsi0.0,drive={node},id={}", disk.id),
                (DiskBus::Sata, cdrom) => {
                    let bus =
                        if sata_bus == "ide" { format!("ide.{sata_port}") } else { format!("{sata_bus}.{sata_port}") };
                    sata_port += 1;
                    let kind = if cdrom { "ide-cd" } else { "ide-hd" };
                    format!("{kind},bus={bus},drive={node},id={}", disk.id)
                }
            };
            if let Some(b) = disk.boot_order {
                dev.push_str(&format!(",bootindex={b}"));
            }
            if let Some(s) = &disk.serial {
                if !disk.cdrom {
                    dev.push_str(&format!(",serial={}", s.replace(',', ",,")));
                }
            }
            push(&["-device", &dev]);
        }
        for nic in &self.nics {
            let netdev = match &nic.backend {
                NicBackend::User { forwards } => {
                    let mut n = format!("user,id=net-{}", nic.id);
                    for (host, guest) in forwards {
                        n.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
                    }
                    n
                }
                NicBackend::Tap { ifname } => {
                    format!("tap,id=net-{},ifname={ifname},script=no,downscript=no", nic.id)
                }
            };
            push(&["-netdev", &netdev]);
            let mut dev = format!("{},netdev=net-{},mac={},id={}", nic.model, nic.id, nic.mac, nic.id);
            if let Some(b) = nic.boot_order {
                dev.push_str(&format!(",bootindex={b}"));
            }
            if let Some(mtu) = nic.mtu.filter(|_| nic.model.starts_with("virtio-net")) {
                dev.push_str(&format!(",host_mtu={mtu}"));
            }
            push(&["-device", &dev]);
        }
        if is_q35(&self.machine_type) && self.hotplug_ports > 0 {
            // Native PCIe hotplug (the guest's pciehp): QEMU 6.1+ would
            // otherwise signal hotplug on q35 bridges through ACPI.
            push(&["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]);
            for n in 0..self.hotplug_ports {
                // Chassis numbers must be unique; no I/O window is needed
                // (virtio devices use memory BARs).
                push(&["-device", &format!("pcie-root-port,id={},chassis={},io-reserve=0", hotplug_port(n), n + 1)]);
            }
        }
        push(&["-daemonize", "-pidfile", &path(&pid_file(d))]);
        push(&["-D", &path(&qemu_log(d))]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MachineConfig {
        MachineConfig {
            name: "default_vm1".into(),
            uuid: "5a9b1c3e-0000-4000-8000-000000000001".into(),
            accel: Accel::Tcg,
            machine_type: "q35".into(),
            cpu_model: None,
            sockets: 1,
            cores: 2,
            threads: 1,
            memory_mib: 128,
            firmware: Firmware::Bios,
            smbios_serial: None,
            disks: vec![DiskConfig {
                id: "root".into(),
                path: "/var/lib/x,y/root.qcow2".into(),
                format: "qcow2".into(),
                bus: DiskBus::Virtio,
                cdrom: false,
                readonly: false,
                boot_order: Some(1),
                serial: Some("abc".into()),
            }],
            nics: vec![NicConfig {
                id: "default".into(),
                mac: "52:54:00:00:00:01".into(),
                model: "virtio-net-pci".into(),
                backend: NicBackend::User { forwards: vec![(2222, 22)] },
                mtu: None,
                boot_order: None,
            }],
            kernel_boot: None,
            run_dir: "/run/sheaf/vmi/u1".into(),
            vnc: true,
            hotplug_ports: 0,
        }
    }

    #[test]
    fn argv_has_the_essentials() {
        let argv = base().argv().join(" ");
        assert!(argv.contains("-accel tcg,thread=multi"), "{argv}");
        assert!(argv.contains("-cpu max"), "{argv}");
        assert!(argv.contains("-smp 2,sockets=1,cores=2,threads=1"), "{argv}");
        assert!(argv.contains("-m 128M"), "{argv}");
        assert!(argv.contains("filename=/var/lib/x,,y/root.qcow2"), "commas escaped: {argv}");
        assert!(argv.contains("virtio-blk-pci,drive=drive-root,id=root,bootindex=1,serial=abc"), "{argv}");
        assert!(argv.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{argv}");
        assert!(argv.contains("-daemonize -pidfile /run/sheaf/vmi/u1/qemu.pid"), "{argv}");
        assert!(argv.contains("-vnc unix:/run/sheaf/vmi/u1/vnc.sock"), "{argv}");
        // The serial console is logged by QEMU itself, appending (the agent
        // rotates the file by copy and truncate: sheaf-agent's serial_log).
        assert!(
            argv.contains(
                "socket,id=serial0,path=/run/sheaf/vmi/u1/serial.sock,server=on,wait=off,\
                 logfile=/run/sheaf/vmi/u1/serial.log,logappend=on"
            ),
            "{argv}"
        );
    }

    #[test]
    fn kvm_uses_host_cpu_and_sata_cdrom_on_q35() {
        let mut m = base();
        m.accel = Accel::Kvm;
        m.disks.push(DiskConfig {
            id: "cd".into(),
            path: "/x.iso".into(),
            format: "raw".into(),
            bus: DiskBus::Sata,
            cdrom: true,
            readonly: true,
            boot_order: None,
            serial: None,
        });
        let argv = m.argv().join(" ");
        assert!(argv.contains("-accel kvm") && argv.contains("-cpu host"), "{argv}");
        assert!(argv.contains("ide-cd,bus=ide.0,drive=drive-cd,id=cd"), "{argv}");
        assert!(argv.contains("read-only=on"), "{argv}");
    }

    fn vhost_disk(id: &str, boot_order: Option<u32>) -> DiskConfig {
        DiskConfig {
            id: id.into(),
            path: format!("/run/sheaf/blk/{id},x.vhost").into(),
            format: "vhost-user".into(),
            bus: DiskBus::Virtio,
            cdrom: false,
            readonly: false,
            boot_order,
            serial: Some("ignored".into()),
        }
    }

    #[test]
    fn vhost_user_disks_share_guest_ram_with_the_engine() {
        let mut m = base();
        m.disks.push(vhost_disk("data", Some(2)));
        let argv = m.argv();
        let joined = argv.join(" ");
        let has = |pair: [&str; 2]| argv.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1]);
        assert!(has(["-object", "memory-backend-memfd,id=ram0,size=128M,share=on"]), "{joined}");
        assert!(has(["-machine", "q35,usb=off,memory-backend=ram0"]), "{joined}");
        assert!(has(["-m", "128M"]), "{joined}");
        assert!(has(["-chardev", "socket,id=vhost-data,path=/run/sheaf/blk/data,,x.vhost,reconnect=1"]), "{joined}");
        // Two vCPUs: two queues; the boot order as for virtio-blk; no
        // serial (the engine answers GET_ID) and no -blockdev.
        assert!(has(["-device", "vhost-user-blk-pci,chardev=vhost-data,id=data,num-queues=2,bootindex=2"]), "{joined}");
        assert!(!joined.contains("drive-data"), "{joined}");
        assert!(!joined.contains("ignored"), "{joined}");
        // The file disk is unchanged.
        assert!(joined.contains("virtio-blk-pci,drive=drive-root,id=root,bootindex=1,serial=abc"), "{joined}");
    }

    #[test]
    fn vhost_user_queues_follow_the_vcpus_up_to_the_engine_default() {
        let mut m = base();
        m.cores = 8;
        m.disks = vec![vhost_disk("root", None)];
        let joined = m.argv().join(" ");
        assert!(joined.contains("vhost-user-blk-pci,chardev=vhost-root,id=root,num-queues=4 "), "{joined}");
        assert!(!joined.contains("bootindex"), "{joined}");
        m.cores = 1;
        let joined = m.argv().join(" ");
        assert!(joined.contains("num-queues=1 "), "{joined}");
    }

    #[test]
    fn hotplug_room_is_free_root_ports_and_a_scsi_controller() {
        let mut m = base();
        m.hotplug_ports = 3;
        let argv = m.argv();
        let joined = argv.join(" ");
        let has = |pair: [&str; 2]| argv.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1]);
        assert!(has(["-device", "virtio-scsi-pci,id=scsi0"]), "{joined}");
        assert!(has(["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]), "{joined}");
        for (n, chassis) in [(0, 1), (1, 2), (2, 3)] {
            let port = format!("pcie-root-port,id=hotplug-port{n},chassis={chassis},io-reserve=0");
            assert!(has(["-device", &port]), "{joined}");
        }
        assert_eq!(joined.matches("pcie-root-port").count(), 3, "{joined}");
        // The boot devices come first, so their PCI addresses do not move.
        let first_port = argv.iter().position(|a| a.starts_with("pcie-root-port")).unwrap_or(0);
        let last_boot = argv.iter().rposition(|a| a.starts_with("virtio-net-pci")).unwrap_or(usize::MAX);
        assert!(last_boot < first_port, "{joined}");

        // i440fx hotplugs on its root bus: a controller for SCSI, no ports.
        m.machine_type = "pc-i440fx-7.2".into();
        let joined = m.argv().join(" ");
        assert!(joined.contains("virtio-scsi-pci,id=scsi0") && !joined.contains("pcie-root-port"), "{joined}");
        assert!(!joined.contains("acpi-pci-hotplug"), "{joined}");

        // disableHotplug: nothing extra.
        m.machine_type = "q35".into();
        m.hotplug_ports = 0;
        let joined = m.argv().join(" ");
        assert!(!joined.contains("pcie-root-port") && !joined.contains("virtio-scsi-pci"), "{joined}");
    }

    #[test]
    fn without_vhost_user_guest_ram_is_private() {
        let joined = base().argv().join(" ");
        assert!(!joined.contains("memory-backend"), "{joined}");
        assert!(joined.contains("-machine q35,usb=off "), "{joined}");
    }
}
