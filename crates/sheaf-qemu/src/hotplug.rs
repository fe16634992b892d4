//! Disks added to and removed from a running machine over QMP.
//!
//! A hotplugged disk is the same as a boot disk of [`crate::machine`]
//! (device id = the KubeVirt disk name, block nodes `drive-<id>-file` and
//! `drive-<id>`, chardev `vhost-<id>`), so a disk looks the same to QEMU
//! whether it came at boot or later. Where it goes:
//!
//! * `virtio` (virtio-blk-pci) and vhost-user-blk-pci are PCI devices: on
//!   q35 each takes one of the empty `pcie-root-port`s the machine was
//!   started with ([`crate::machine::MachineConfig::hotplug_ports`]), and
//!   the guest's PCIe hotplug driver (pciehp) sees it arrive; on i440fx
//!   they go on the root bus (ACPI hotplug).
//! * `scsi` (scsi-hd) goes on the bus of the machine's virtio-scsi
//!   controller, which needs no free PCI slot; removal is immediate.
//!
//! Adding: `blockdev-add` (NBD client node, then the raw node over it) or
//! `chardev-add` (vhost-user socket), then `device_add`. Removing:
//! `device_del`, wait for `DEVICE_DELETED` (a PCIe unplug waits for the
//! guest to power the slot off, about 5 s with Linux), then `blockdev-del`
//! or `chardev-remove`. The functions here build the arguments and read
//! QEMU's answers; [`crate::qmp::Qmp`] sends them.
//!
//! What a machine has is read back from QEMU ([`Inventory`]: `query-pci`,
//! `qom-list` of the ports' buses, `query-block`, `query-named-block-nodes`,
//! `query-chardev`), so whoever
//! drives it after a restart adopts what is there instead of adding a disk
//! twice.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::machine::{DiskBus, HOTPLUG_PORT_PREFIX, SCSI_CONTROLLER, VHOST_USER_BLK_MAX_QUEUES};

/// How QEMU reaches the disk's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An NBD server on a unix socket (a Sheaf volume engine's export).
    Nbd { socket: PathBuf },
    /// A vhost-user-blk server on a unix socket; guest RAM must be shared.
    VhostUser { socket: PathBuf },
}

/// A disk to add to a running machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotplugDisk {
    /// Device id, unique in the machine (the KubeVirt disk name).
    pub id: String,
    pub backend: Backend,
    /// `Virtio` or `Scsi`; a vhost-user backend is always a
    /// vhost-user-blk-pci device.
    pub bus: DiskBus,
    pub serial: Option<String>,
    pub readonly: bool,
    /// vCPUs of the machine: the queues of a vhost-user-blk device.
    pub vcpus: u32,
}

/// The block node QEMU's device reads (the raw format node).
pub fn node_name(id: &str) -> String {
    format!("drive-{id}")
}

/// The protocol node under [`node_name`] (the NBD client).
pub fn file_node_name(id: &str) -> String {
    format!("drive-{id}-file")
}

/// The chardev of a vhost-user-blk device.
pub fn chardev_id(id: &str) -> String {
    format!("vhost-{id}")
}

impl HotplugDisk {
    /// Whether the device is a PCI device (and so needs a free root port
    /// on q35).
    pub fn is_pci(&self) -> bool {
        matches!(self.backend, Backend::VhostUser { .. }) || self.bus != DiskBus::Scsi
    }

    /// `blockdev-add` arguments, in order (none for vhost-user).
    pub fn blockdev_add(&self) -> Vec<Value> {
        let Backend::Nbd { socket } = &self.backend else { return Vec::new() };
        let file = file_node_name(&self.id);
        vec![
            json!({
                "driver": "nbd", "node-name": file, "discard": "unmap", "read-only": self.readonly,
                "server": {"type": "unix", "path": socket.display().to_string()},
            }),
            json!({
                "driver": "raw", "node-name": node_name(&self.id), "file": file, "discard": "unmap",
                "read-only": self.readonly,
            }),
        ]
    }

    /// `chardev-add` arguments for a vhost-user backend.
    pub fn chardev_add(&self) -> Option<Value> {
        let Backend::VhostUser { socket } = &self.backend else { return None };
        Some(json!({
            "id": chardev_id(&self.id),
            "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": socket.display().to_string()}},
                "server": false, "reconnect": 1,
            }},
        }))
    }

    /// `device_add` arguments; `port` is the free root port of a PCI
    /// device on q35 (None: the root bus, or SCSI).
    pub fn device_add(&self, port: Option<&str>) -> Value {
        let mut dev = match (&self.backend, self.bus) {
            (Backend::VhostUser { .. }, _) => json!({
                "driver": "vhost-user-blk-pci", "id": self.id, "chardev": chardev_id(&self.id),
                "num-queues": self.vcpus.clamp(1, VHOST_USER_BLK_MAX_QUEUES),
            }),
            (Backend::Nbd { .. }, DiskBus::Scsi) => json!({
                "driver": "scsi-hd", "id": self.id, "drive": node_name(&self.id),
                "bus": format!("{SCSI_CONTROLLER}.0"),
            }),
            (Backend::Nbd { .. }, _) => json!({
                "driver": "virtio-blk-pci", "id": self.id, "drive": node_name(&self.id),
            }),
        };
        if let (Some(port), true) = (port, self.is_pci()) {
            dev["bus"] = json!(port);
        }
        // vhost-user-blk has no serial property: the engine answers it.
        if let (Some(serial), Backend::Nbd { .. }) = (&self.serial, &self.backend) {
            dev["serial"] = json!(serial);
        }
        dev
    }
}

/// What a running machine has, as QEMU reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Ids of the devices QEMU has (PCI devices at any depth, and block
    /// devices such as scsi-hd).
    pub devices: BTreeSet<String>,
    /// Hotplug root ports with nothing behind them, in order.
    pub free_ports: Vec<String>,
    /// Hotplug root ports with a device behind them.
    pub used_ports: Vec<String>,
    /// Named block nodes.
    pub nodes: BTreeSet<String>,
    /// Chardev ids.
    pub chardevs: BTreeSet<String>,
}

impl Inventory {
    /// From the answers of `query-pci`, `query-block`,
    /// `query-named-block-nodes` and `query-chardev` (QEMU's shapes;
    /// anything unexpected is skipped).
    pub fn from_qemu(pci: &Value, block: &Value, nodes: &Value, chardevs: &Value) -> Inventory {
        let mut inv = Inventory::default();
        for bus in pci.as_array().into_iter().flatten() {
            inv.pci_devices(bus.get("devices"));
        }
        for b in block.as_array().into_iter().flatten() {
            if let Some(id) = b.get("qdev").and_then(Value::as_str).and_then(qdev_id) {
                inv.devices.insert(id);
            }
        }
        for n in nodes.as_array().into_iter().flatten() {
            if let Some(name) = n.get("node-name").and_then(Value::as_str) {
                inv.nodes.insert(name.to_string());
            }
        }
        for c in chardevs.as_array().into_iter().flatten() {
            if let Some(label) = c.get("label").and_then(Value::as_str) {
                inv.chardevs.insert(label.to_string());
            }
        }
        inv
    }

    fn pci_devices(&mut self, devices: Option<&Value>) {
        for d in devices.and_then(Value::as_array).into_iter().flatten() {
            let id = d.get("qdev_id").and_then(Value::as_str).unwrap_or_default();
            let behind = d.pointer("/pci_bridge/devices").and_then(Value::as_array);
            if id.starts_with(HOTPLUG_PORT_PREFIX) {
                if behind.is_some_and(|b| !b.is_empty()) {
                    self.used_ports.push(id.to_string());
                } else {
                    self.free_ports.push(id.to_string());
                }
            }
            if !id.is_empty() {
                self.devices.insert(id.to_string());
            }
            self.pci_devices(d.pointer("/pci_bridge/devices"));
        }
    }

    /// Takes what `qom-list` says of root port `port`'s bus
    /// (`/machine/peripheral/PORT/PORT`): a `child[N]` link is a device
    /// behind it. `query-pci` alone misses devices behind a port whose bus
    /// the guest has not numbered yet (at boot, or a guest without PCIe
    /// hotplug support).
    pub fn add_port_children(&mut self, port: &str, qom_list: &Value) {
        let has_child = qom_list
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p.get("name").and_then(Value::as_str).is_some_and(|n| n.starts_with("child[")));
        if has_child && !self.used_ports.iter().any(|p| p == port) {
            self.free_ports.retain(|p| p != port);
            self.used_ports.push(port.to_string());
        }
    }

    /// Takes the devices `qom-list /machine/peripheral` names (every device
    /// with an id, wherever it sits, as `child<TYPE>` properties).
    pub fn add_peripherals(&mut self, qom_list: &Value) {
        for p in qom_list.as_array().into_iter().flatten() {
            let is_child = p.get("type").and_then(Value::as_str).is_some_and(|t| t.starts_with("child<"));
            if let (true, Some(name)) = (is_child, p.get("name").and_then(Value::as_str)) {
                self.devices.insert(name.to_string());
            }
        }
    }

    /// The QOM path of root port `port`'s bus, for `qom-list`.
    pub fn port_bus_path(port: &str) -> String {
        format!("/machine/peripheral/{port}/{port}")
    }

    /// Whether a device of this id exists.
    pub fn has_device(&self, id: &str) -> bool {
        self.devices.contains(id)
    }
}

/// The device id in a `query-block` `qdev`: `disk2` or
/// `/machine/peripheral/disk1/virtio-backend` → `disk1`; anonymous devices
/// (`/machine/peripheral-anon/...`) have none.
fn qdev_id(qdev: &str) -> Option<String> {
    if !qdev.starts_with('/') {
        return (!qdev.is_empty()).then(|| qdev.to_string());
    }
    let rest = qdev.strip_prefix("/machine/peripheral/")?;
    rest.split('/').next().filter(|s| !s.is_empty()).map(str::to_string)
}

/// Whether a QMP event is the `DEVICE_DELETED` of device `id` (QEMU also
/// sends one for a virtio device's backend, with a path but no device).
pub fn is_device_deleted(event: &str, data: &Value, id: &str) -> bool {
    event == "DEVICE_DELETED" && data.get("device").and_then(Value::as_str) == Some(id)
}

/// Whether guest RAM is shared (a memory backend with `share: true` in
/// `query-memdev`), as vhost-user needs.
pub fn shared_memory(memdev: &Value) -> bool {
    memdev.as_array().into_iter().flatten().any(|m| m.get("share").and_then(Value::as_bool) == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(bus: DiskBus, backend: Backend) -> HotplugDisk {
        HotplugDisk { id: "data".into(), backend, bus, serial: Some("S1".into()), readonly: false, vcpus: 2 }
    }

    fn nbd() -> Backend {
        Backend::Nbd { socket: "/run/blk/e-1.nbd".into() }
    }

    #[test]
    fn virtio_on_nbd_is_two_nodes_and_a_pci_device_on_the_port() {
        let d = disk(DiskBus::Virtio, nbd());
        assert!(d.is_pci());
        assert_eq!(
            d.blockdev_add(),
            vec![
                json!({"driver": "nbd", "node-name": "drive-data-file", "discard": "unmap", "read-only": false,
                       "server": {"type": "unix", "path": "/run/blk/e-1.nbd"}}),
                json!({"driver": "raw", "node-name": "drive-data", "file": "drive-data-file", "discard": "unmap",
                       "read-only": false}),
            ]
        );
        assert_eq!(d.chardev_add(), None);
        assert_eq!(
            d.device_add(Some("hotplug-port1")),
            json!({"driver": "virtio-blk-pci", "id": "data", "drive": "drive-data", "bus": "hotplug-port1",
                   "serial": "S1"})
        );
        assert_eq!(d.device_add(None).get("bus"), None);
    }

    #[test]
    fn scsi_goes_on_the_controller_whatever_port_is_offered() {
        let mut d = disk(DiskBus::Scsi, nbd());
        d.readonly = true;
        assert!(!d.is_pci());
        assert_eq!(
            d.device_add(Some("hotplug-port0")),
            json!({"driver": "scsi-hd", "id": "data", "drive": "drive-data", "bus": "scsi0.0", "serial": "S1"})
        );
        assert!(d.blockdev_add().iter().all(|n| n["read-only"] == json!(true)));
    }

    #[test]
    fn vhost_user_is_a_chardev_and_a_device_without_serial() {
        let d = disk(DiskBus::Scsi, Backend::VhostUser { socket: "/run/blk/e-1.vhost".into() });
        assert!(d.is_pci(), "vhost-user-blk is PCI whatever the bus");
        assert!(d.blockdev_add().is_empty());
        assert_eq!(
            d.chardev_add(),
            Some(json!({"id": "vhost-data", "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": "/run/blk/e-1.vhost"}}, "server": false, "reconnect": 1}}}))
        );
        assert_eq!(
            d.device_add(Some("hotplug-port0")),
            json!({"driver": "vhost-user-blk-pci", "id": "data", "chardev": "vhost-data", "num-queues": 2,
                   "bus": "hotplug-port0"})
        );
    }

    /// Trimmed answers of QEMU 7.2 for a q35 machine with a virtio-scsi
    /// controller, two hotplug ports (a disk behind the first), a boot
    /// disk without id, and a scsi disk.
    fn answers() -> (Value, Value, Value, Value) {
        let pci = json!([{"bus": 0, "devices": [
            {"bus": 0, "slot": 0, "qdev_id": "", "class_info": {"class": 1536}},
            {"bus": 0, "slot": 1, "qdev_id": "scsi0", "class_info": {"class": 256}},
            {"bus": 0, "slot": 2, "qdev_id": "hotplug-port0", "class_info": {"class": 1540},
             "pci_bridge": {"bus": {"number": 1}, "devices": [
                {"bus": 1, "slot": 0, "qdev_id": "disk1", "class_info": {"class": 256}}]}},
            {"bus": 0, "slot": 3, "qdev_id": "hotplug-port1", "class_info": {"class": 1540},
             "pci_bridge": {"bus": {"number": 2}}},
            {"bus": 0, "slot": 4, "qdev_id": "root", "class_info": {"class": 256}},
        ]}]);
        let block = json!([
            {"device": "seed", "qdev": "/machine/peripheral-anon/device[0]/virtio-backend",
             "inserted": {"node-name": "#block113"}},
            {"device": "", "qdev": "/machine/peripheral/disk1/virtio-backend", "inserted": {"node-name": "n1"}},
            {"device": "", "qdev": "disk2", "inserted": {"node-name": "n2"}},
        ]);
        let nodes = json!([{"node-name": "n1"}, {"node-name": "drive-left-file"}, {"node-name": "n2"}]);
        let chardevs = json!([{"label": "qmp", "filename": "unix:/x"}, {"label": "vhost-fast", "filename": "y"}]);
        (pci, block, nodes, chardevs)
    }

    #[test]
    fn inventory_reads_devices_ports_nodes_and_chardevs() {
        let (pci, block, nodes, chardevs) = answers();
        let inv = Inventory::from_qemu(&pci, &block, &nodes, &chardevs);
        assert_eq!(inv.free_ports, vec!["hotplug-port1".to_string()]);
        assert_eq!(inv.used_ports, vec!["hotplug-port0".to_string()]);
        for id in ["disk1", "disk2", "scsi0", "root"] {
            assert!(inv.has_device(id), "{id}: {inv:?}");
        }
        assert!(!inv.has_device("seed") && !inv.has_device(""), "{inv:?}");
        assert!(inv.nodes.contains("drive-left-file"));
        assert!(inv.chardevs.contains("vhost-fast"));
        // A device behind a port the guest has not numbered yet.
        let mut inv = inv;
        let qom = json!([{"name": "type", "type": "string"}, {"name": "child[0]", "type": "link<virtio-blk-pci>"}]);
        inv.add_port_children("hotplug-port1", &qom);
        assert!(inv.free_ports.is_empty() && inv.used_ports.len() == 2, "{inv:?}");
        inv.add_port_children("hotplug-port1", &qom);
        assert_eq!(inv.used_ports.len(), 2, "counted once");
        assert_eq!(Inventory::port_bus_path("hotplug-port1"), "/machine/peripheral/hotplug-port1/hotplug-port1");
        inv.add_peripherals(
            &json!([{"name": "type", "type": "string"}, {"name": "fast", "type": "child<vhost-user-blk-pci>"}]),
        );
        assert!(inv.has_device("fast") && !inv.has_device("type"), "{inv:?}");
        // Garbage is skipped, not a panic.
        let empty = Inventory::from_qemu(&json!({"x": 1}), &json!(7), &Value::Null, &json!([1, "a"]));
        assert_eq!(empty, Inventory::default());
    }

    #[test]
    fn events_and_shared_memory() {
        let backend = json!({"path": "/machine/peripheral/data/virtio-backend"});
        assert!(!is_device_deleted("DEVICE_DELETED", &backend, "data"));
        assert!(is_device_deleted("DEVICE_DELETED", &json!({"device": "data", "path": "/x"}), "data"));
        assert!(!is_device_deleted("DEVICE_DELETED", &json!({"device": "other"}), "data"));
        assert!(shared_memory(&json!([{"id": "ram0", "share": true}])));
        assert!(!shared_memory(&json!([{"id": "pc.ram", "share": false}])));
        assert!(!shared_memory(&json!(null)));
    }
}
