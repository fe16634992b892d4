//! Disks added to and removed from a running VMI (KubeVirt's volume
//! hotplug): the VMI's spec is the truth, QEMU is made to match it.
//!
//! The volumes of a VMI's spec with `hotpluggable: true` (which the
//! `addvolume`/`removevolume` subresources put there and take away) are
//! not attached at boot: the VMI's runner starts one [`Hotplug`] task,
//! which owns them and reconciles, on every change of the VMI and every
//! [`RECHECK`]:
//!
//! ```text
//!  in the spec, not in QEMU:
//!     Bound ──engine (storage::attach_volume)──▶ AttachedToNode
//!           ──blockdev-add / chardev-add, device_add──▶ Ready
//!     any error: Pending with reason and message (the VM runs on; the
//!     next pass tries again), and a Warning Event
//!  in QEMU, not in the spec (and not a boot disk):
//!     Detaching ──device_del, DEVICE_DELETED──▶ blockdev-del / chardev-remove
//!           ──engine stopped (storage::detach_unused)──▶ gone from volumeStatus
//! ```
//!
//! What QEMU has is read back from QEMU on every pass
//! ([`sheaf_qemu::hotplug::Inventory`]): after an agent restart a disk that
//! is there is adopted (reported Ready), never added twice, and one whose
//! volume left the spec meanwhile is removed. Progress is reported in the
//! VMI's `status.volumeStatus` (KubeVirt's shape: name, target, phase,
//! reason, message, `hotplugVolume`) and as Events on the VMI.
//!
//! Where disks go: bus `scsi` (KubeVirt's default for hotplug) on the
//! machine's virtio-scsi controller; `virtio` on a free PCIe root port
//! (q35) or the root bus (i440fx). A Volume with `frontend: vhost-user` is
//! a vhost-user-blk device when the VM's memory is shared with its
//! engines (it has a vhost-user disk from boot), otherwise it is served
//! over NBD, which the engine always offers too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sheaf_client::{Gvr, Typed};
use sheaf_qemu::hotplug::{self, Backend, HotplugDisk, Inventory};
use sheaf_qemu::machine::{self, DiskBus};
use sheaf_qemu::qmp::{Qmp, QmpError};
use sheaf_types::core::{Event, EventSource};
use sheaf_types::kubevirt::{Disk, VirtualMachineInstance, Volume};
use sheaf_types::meta::ObjectReference;
use sheaf_types::{Kind, ObjectMeta, Time};
use tokio::sync::watch;

use crate::runner::RunnerEnv;

/// A pass runs at least this often, so that a failed attach is retried.
pub const RECHECK: Duration = Duration::from_secs(10);

/// How long a guest may take to release a disk after `device_del`.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);

// volumeStatus phases, KubeVirt's.
const PENDING: &str = "Pending";
const BOUND: &str = "Bound";
const ATTACHED_TO_NODE: &str = "AttachedToNode";
const READY: &str = "Ready";
const DETACHING: &str = "Detaching";

/// The runner's handle on its VMI's hotplug task; the task ends when the
/// handle is dropped.
pub struct Hotplug {
    tx: watch::Sender<Arc<VirtualMachineInstance>>,
}

impl Hotplug {
    /// Starts the task for the VMI whose QEMU `qmp` drives.
    pub fn spawn(env: Arc<RunnerEnv>, qmp: Qmp, vmi: &VirtualMachineInstance) -> Hotplug {
        let (tx, rx) = watch::channel(Arc::new(vmi.clone()));
        let reconciler = Reconciler { env, qmp, status: BTreeMap::new(), warned: HashMap::new(), reported: None };
        tokio::spawn(reconciler.run(rx));
        Hotplug { tx }
    }

    /// The VMI changed (or was read again): reconcile against it.
    pub fn sync(&self, vmi: &VirtualMachineInstance) {
        if self.tx.borrow().metadata.uid == vmi.metadata.uid {
            self.tx.send_replace(Arc::new(vmi.clone()));
        }
    }
}

/// One hotplugged volume's line of `status.volumeStatus`.
#[derive(Clone, Debug, PartialEq)]
struct VolumeState {
    phase: &'static str,
    reason: Option<String>,
    message: Option<String>,
}

impl VolumeState {
    fn new(phase: &'static str) -> VolumeState {
        VolumeState { phase, reason: None, message: None }
    }
    fn failed(reason: &str, message: String) -> VolumeState {
        VolumeState { phase: PENDING, reason: Some(reason.into()), message: Some(message) }
    }
}

struct Reconciler {
    env: Arc<RunnerEnv>,
    qmp: Qmp,
    /// What was last reported per hotplugged volume (by name).
    status: BTreeMap<String, VolumeState>,
    /// The last warning recorded per volume, so a retry that fails the same
    /// way does not repeat the Event.
    warned: HashMap<String, String>,
    /// The volumeStatus last written.
    reported: Option<Value>,
}

/// Why an add or remove failed: a reason and a message for people.
type Failure = (&'static str, String);

impl Reconciler {
    async fn run(mut self, mut rx: watch::Receiver<Arc<VirtualMachineInstance>>) {
        loop {
            let vmi = rx.borrow_and_update().clone();
            if self.qmp.is_connected() {
                self.pass(&vmi).await;
                self.report(&vmi).await;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RECHECK) => {}
                _ = self.qmp.closed() => return,
            }
        }
    }

    async fn inventory(&self) -> Result<Inventory, QmpError> {
        let chardevs = serde_json::to_value(self.qmp.query_chardev().await?).unwrap_or_default();
        let mut inv = Inventory::from_qemu(
            &self.qmp.query_pci().await?,
            &self.qmp.query_block().await?,
            &self.qmp.query_named_block_nodes().await?,
            &chardevs,
        );
        inv.add_peripherals(&self.qmp.qom_list("/machine/peripheral").await?);
        for port in inv.free_ports.clone() {
            inv.add_port_children(&port, &self.qmp.qom_list(&Inventory::port_bus_path(&port)).await?);
        }
        Ok(inv)
    }

    async fn pass(&mut self, vmi: &VirtualMachineInstance) {
        let mut inv = match self.inventory().await {
            Ok(inv) => inv,
            Err(e) => {
                tracing::debug!(vmi = %name_of(vmi), error = %e, "cannot read QEMU's devices");
                return;
            }
        };
        let boot: HashSet<&str> =
            vmi.spec.volumes.iter().filter(|v| !v.hotpluggable()).map(|v| v.name.as_str()).collect();
        let hot: Vec<&Volume> = vmi.spec.volumes.iter().filter(|v| v.hotpluggable()).collect();
        let wanted: HashSet<&str> = hot.iter().map(|v| v.name.as_str()).collect();

        // Gone from the spec: disks QEMU has (a device with the block node
        // or vhost-user chardev of a disk) that are not boot disks.
        let stale: Vec<String> = inv
            .devices
            .iter()
            .filter(|id| inv.nodes.contains(&hotplug::node_name(id)) || inv.chardevs.contains(&hotplug::chardev_id(id)))
            .filter(|id| !boot.contains(id.as_str()) && !wanted.contains(id.as_str()))
            .cloned()
            .collect();
        let (mut removed, mut pending) = (false, false);
        // Removals an earlier pass stopped waiting for, which the guest has
        // finished since: only the backend is left.
        let lingering: Vec<String> = self
            .status
            .iter()
            .filter(|(n, st)| st.phase == DETACHING && !stale.contains(n) && !wanted.contains(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        for id in &lingering {
            self.clean_backend(id, &inv).await;
            self.status.remove(id);
            removed = true;
            self.event(vmi, "Normal", "VolumeDetached", format!("disk {id} was removed from the VM")).await;
        }
        for id in &stale {
            self.status.insert(id.clone(), VolumeState::new(DETACHING));
            self.report(vmi).await;
            match self.remove(id, &inv).await {
                Ok(()) => {
                    removed = true;
                    self.status.remove(id);
                    tracing::info!(vmi = %name_of(vmi), volume = %id, "hotplugged disk removed");
                    self.event(vmi, "Normal", "VolumeDetached", format!("disk {id} was removed from the VM")).await;
                }
                Err((reason, message)) => {
                    pending = true;
                    tracing::warn!(vmi = %name_of(vmi), volume = %id, %message, "cannot remove a hotplugged disk");
                    self.warn(vmi, id, reason, &message).await;
                    self.status.insert(
                        id.clone(),
                        VolumeState { phase: DETACHING, reason: Some(reason.into()), message: Some(message) },
                    );
                }
            }
        }
        // Engines of volumes the spec no longer has (also after a removal
        // done before an agent restart); not while the guest may still be
        // using one of them.
        let unused = if pending { Ok(Vec::new()) } else { self.env.storage.detach_unused(vmi).await };
        match unused {
            Ok(stopped) if !stopped.is_empty() => {
                tracing::info!(vmi = %name_of(vmi), volumes = ?stopped, "engines of removed volumes stopped")
            }
            Ok(_) => {}
            Err(e) if removed => {
                tracing::warn!(vmi = %name_of(vmi), error = %e, "cannot stop the removed volumes' engines yet")
            }
            Err(e) => tracing::debug!(vmi = %name_of(vmi), error = %e, "cannot check the VM's engines"),
        }

        // In the spec: adopt what QEMU has, add what it has not.
        for v in hot {
            let disk = vmi.spec.domain.devices.disks.iter().find(|d| d.name == v.name);
            let is_disk = inv.nodes.contains(&hotplug::node_name(&v.name))
                || inv.chardevs.contains(&hotplug::chardev_id(&v.name));
            if inv.has_device(&v.name) && is_disk {
                // Adopted (after an agent restart) or added by an earlier
                // pass, whose note is kept.
                if self.status.get(&v.name).is_none_or(|s| s.phase != READY) {
                    self.status.insert(v.name.clone(), VolumeState::new(READY));
                }
                continue;
            }
            match self.add(vmi, v, disk, &mut inv).await {
                Ok(note) => {
                    tracing::info!(vmi = %name_of(vmi), volume = %v.name, "volume hotplugged");
                    self.warned.remove(&v.name);
                    let mut state = VolumeState::new(READY);
                    let mut message = format!("volume {} was added to the VM", v.name);
                    if let Some(note) = note {
                        message = format!("{message}; {note}");
                        state.message = Some(note);
                    }
                    self.status.insert(v.name.clone(), state);
                    self.event(vmi, "Normal", "VolumeAttached", message).await;
                }
                Err((reason, message)) => {
                    tracing::warn!(vmi = %name_of(vmi), volume = %v.name, %message, "cannot hotplug a volume");
                    self.warn(vmi, &v.name, reason, &message).await;
                    self.status.insert(v.name.clone(), VolumeState::failed(reason, message));
                }
            }
        }
        self.status.retain(|name, s| wanted.contains(name.as_str()) || s.phase == DETACHING);
    }

    /// Adds volume `v` (its disk `disk`) to QEMU. Ok carries a note for
    /// the status when the disk is not attached as asked.
    async fn add(
        &mut self,
        vmi: &VirtualMachineInstance,
        v: &Volume,
        disk: Option<&Disk>,
        inv: &mut Inventory,
    ) -> Result<Option<String>, Failure> {
        let Some(disk) = disk else {
            return Err(("InvalidSpec", format!("volume {} has no disk of the same name", v.name)));
        };
        let bus = hotplug_bus(disk)?;
        if vmi.spec.domain.devices.disable_hotplug == Some(true) {
            return Err((
                "HotplugDisabled",
                format!(
                    "disk {} cannot be added: the VM runs with devices.disableHotplug, so it has no hotplug ports \
                     and no SCSI controller; unset it and restart the VM",
                    v.name
                ),
            ));
        }
        if v.claim_name().is_none() {
            return Err(("InvalidSpec", format!("volume {} is not a persistentVolumeClaim or dataVolume", v.name)));
        }
        self.status.insert(v.name.clone(), VolumeState::new(BOUND));
        self.report(vmi).await;
        let attached = match self.env.storage.attach_volume(vmi, v).await {
            Ok(Some(a)) => a,
            Ok(None) => return Err(("InvalidSpec", format!("volume {} is not a Sheaf volume", v.name))),
            Err(e) => return Err(("AttachFailed", e.to_string())),
        };
        self.status.insert(v.name.clone(), VolumeState::new(ATTACHED_TO_NODE));
        self.report(vmi).await;
        let readonly = v.persistent_volume_claim.as_ref().and_then(|p| p.read_only) == Some(true);
        let mut note = None;
        let backend = if attached.format == "vhost-user" {
            let shared = self.qmp.query_memdev().await.map(|m| hotplug::shared_memory(&m)).unwrap_or(false);
            if shared && !readonly {
                Backend::VhostUser { socket: attached.socket.clone() }
            } else {
                note = Some(if readonly {
                    "attached over NBD: read-only claims are not served over vhost-user yet".to_string()
                } else {
                    "attached over NBD: the VM's memory is not shared with its volumes (it had no vhost-user \
                     disk at boot); restart the VM to use vhost-user"
                        .to_string()
                });
                Backend::Nbd { socket: attached.socket.with_extension("nbd") }
            }
        } else {
            Backend::Nbd { socket: attached.socket.clone() }
        };
        let cpu = vmi.spec.domain.cpu.as_ref();
        let vcpus = cpu.and_then(|c| c.sockets).unwrap_or(1).max(1)
            * cpu.and_then(|c| c.cores).unwrap_or(1).max(1)
            * cpu.and_then(|c| c.threads).unwrap_or(1).max(1);
        let want = HotplugDisk { id: v.name.clone(), backend, bus, serial: disk.serial.clone(), readonly, vcpus };
        let machine_type =
            vmi.spec.domain.machine.as_ref().and_then(|m| m.type_.clone()).unwrap_or_else(|| "q35".into());
        let port = if want.is_pci() && machine::is_q35(&machine_type) {
            if inv.free_ports.is_empty() {
                return Err((
                    "NoHotplugPort",
                    format!(
                        "no free PCI hotplug port for disk {} (every one of the VM's {} is taken): add it with \
                         --bus=scsi, which needs no port, or remove another hotplugged virtio disk",
                        v.name,
                        inv.used_ports.len()
                    ),
                ));
            }
            Some(inv.free_ports.remove(0))
        } else {
            None
        };
        // Leftovers of an add that did not finish (an agent that died
        // half-way): QEMU would refuse the names.
        self.clean_backend(&v.name, inv).await;
        let result = async {
            if let Some(args) = want.chardev_add() {
                self.qmp.chardev_add(args).await?;
            }
            for node in want.blockdev_add() {
                self.qmp.blockdev_add(node).await?;
            }
            self.qmp.device_add(want.device_add(port.as_deref())).await
        }
        .await;
        if let Err(e) = result {
            let fresh = self.inventory().await.unwrap_or_default();
            self.clean_backend(&v.name, &fresh).await;
            if let Some(port) = port {
                inv.free_ports.insert(0, port);
            }
            return Err(("AttachFailed", format!("QEMU refused disk {}: {e}", v.name)));
        }
        inv.devices.insert(v.name.clone());
        Ok(note)
    }

    /// Removes disk `id` from QEMU: the device (waiting for the guest to
    /// let it go), then its block nodes or chardev.
    async fn remove(&self, id: &str, inv: &Inventory) -> Result<(), Failure> {
        if inv.has_device(id) {
            let mut events = self.qmp.events();
            if let Err(e) = self.qmp.device_del(id).await {
                // A removal already asked for goes on; anything else is
                // reported.
                if !matches!(&e, QmpError::Command { desc, .. } if desc.contains("in progress")) {
                    return Err(("DetachFailed", format!("QEMU refused to remove disk {id}: {e}")));
                }
            }
            let deleted = async {
                loop {
                    match events.recv().await {
                        Ok(ev) if hotplug::is_device_deleted(&ev.event, &ev.data, id) => return true,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                    }
                }
            };
            let gone = tokio::time::timeout(RELEASE_TIMEOUT, deleted).await.unwrap_or(false);
            let still_there = self.inventory().await.map(|i| i.has_device(id)).unwrap_or(true);
            if !gone && still_there {
                return Err((
                    "DetachPending",
                    format!(
                        "the guest has not released disk {id} within {} s (a guest without PCIe hotplug support \
                         never does; stop the VM to remove it); the removal stays requested",
                        RELEASE_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
        let fresh = self.inventory().await.map_err(|e| ("DetachFailed", e.to_string()))?;
        self.clean_backend(id, &fresh).await;
        Ok(())
    }

    /// Deletes the block nodes and chardev of disk `id` that `inv` has.
    async fn clean_backend(&self, id: &str, inv: &Inventory) {
        for node in [hotplug::node_name(id), hotplug::file_node_name(id)] {
            if inv.nodes.contains(&node) {
                if let Err(e) = self.qmp.blockdev_del(&node).await {
                    tracing::warn!(node, error = %e, "cannot delete a block node");
                }
            }
        }
        let chardev = hotplug::chardev_id(id);
        if inv.chardevs.contains(&chardev) {
            if let Err(e) = self.qmp.chardev_remove(&chardev).await {
                tracing::warn!(chardev, error = %e, "cannot remove a chardev");
            }
        }
    }

    /// KubeVirt's `status.volumeStatus`: every volume of the spec, the
    /// hotplugged ones with their phase, and the ones being removed.
    fn volume_status(&self, vmi: &VirtualMachineInstance) -> Value {
        Self::status_of(vmi, &self.status)
    }

    fn status_of(vmi: &VirtualMachineInstance, status: &BTreeMap<String, VolumeState>) -> Value {
        let targets = targets(vmi);
        let mut out = Vec::new();
        for v in &vmi.spec.volumes {
            let mut entry = json!({"name": v.name});
            if let Some(t) = targets.get(&v.name) {
                entry["target"] = json!(t);
            }
            if v.hotpluggable() {
                let state = status.get(&v.name).cloned().unwrap_or_else(|| VolumeState::new(PENDING));
                state.fill(&mut entry);
            }
            out.push(entry);
        }
        for (name, state) in status.iter().filter(|(n, _)| !vmi.spec.volumes.iter().any(|v| &v.name == *n)) {
            let mut entry = json!({"name": name});
            state.fill(&mut entry);
            out.push(entry);
        }
        Value::Array(out)
    }

    /// Writes `status.volumeStatus` if it changed since last written.
    async fn report(&mut self, vmi: &VirtualMachineInstance) {
        let status = self.volume_status(vmi);
        if self.reported.as_ref() != Some(&status) && self.patch_status(vmi, &status).await {
            self.reported = Some(status);
        }
    }

    async fn patch_status(&self, vmi: &VirtualMachineInstance, status: &Value) -> bool {
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let patch = json!({"metadata": {"uid": vmi.metadata.uid}, "status": {"volumeStatus": status}});
        match self.env.api.merge_patch(Gvr::of::<VirtualMachineInstance>(), Some(&ns), &name_of(vmi), patch, true).await
        {
            Ok(_) => true,
            Err(e) => {
                if !e.is_not_found() {
                    tracing::debug!(vmi = %name_of(vmi), error = %e, "cannot update volumeStatus");
                }
                false
            }
        }
    }

    /// A Warning Event, once per distinct message of a volume.
    async fn warn(&mut self, vmi: &VirtualMachineInstance, volume: &str, reason: &str, message: &str) {
        if self.warned.get(volume).map(String::as_str) == Some(message) {
            return;
        }
        self.warned.insert(volume.to_string(), message.to_string());
        self.event(vmi, "Warning", reason, message.to_string()).await;
    }

    async fn event(&self, vmi: &VirtualMachineInstance, type_: &str, reason: &str, message: String) {
        let m = &vmi.metadata;
        let t = Time::now();
        let stamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{stamp:x}", name_of(vmi))),
                namespace: m.namespace.clone(),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(format!("{}/{}", VirtualMachineInstance::GROUP, VirtualMachineInstance::VERSION)),
                kind: Some(VirtualMachineInstance::KIND.into()),
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
                resource_version: None,
                field_path: None,
            },
            reason: Some(reason.into()),
            message: Some(message),
            source: Some(EventSource { component: Some("sheaf-agent".into()), host: Some(self.env.node.clone()) }),
            first_timestamp: Some(t),
            last_timestamp: Some(t),
            count: Some(1),
            type_: Some(type_.into()),
            reporting_component: Some("sheaf-agent".into()),
            ..Default::default()
        };
        if let Err(e) = Typed::<Event>::new(self.env.api.as_ref()).create(&event).await {
            tracing::debug!(reason, error = %e, "cannot record an event");
        }
    }
}

impl VolumeState {
    fn fill(&self, entry: &mut Value) {
        entry["phase"] = json!(self.phase);
        entry["hotplugVolume"] = json!({});
        if let Some(r) = &self.reason {
            entry["reason"] = json!(r);
        }
        if let Some(m) = &self.message {
            entry["message"] = json!(m);
        }
    }
}

fn name_of(vmi: &VirtualMachineInstance) -> String {
    vmi.metadata.name.clone().unwrap_or_default()
}

/// The bus a hotplugged disk goes on: KubeVirt's default is scsi.
pub fn hotplug_bus(disk: &Disk) -> Result<DiskBus, Failure> {
    if disk.cdrom.is_some() || disk.lun.is_some() {
        return Err(("Unsupported", format!("disk {}: only disks (not cdroms or luns) can be hotplugged", disk.name)));
    }
    match disk.disk.as_ref().and_then(|d| d.bus.as_deref()).unwrap_or("") {
        "" | "scsi" => Ok(DiskBus::Scsi),
        "virtio" => Ok(DiskBus::Virtio),
        other => {
            Err(("Unsupported", format!("disk {}: bus {other:?} cannot be hotplugged; use scsi or virtio", disk.name)))
        }
    }
}

/// Guest-style target names (`vda`, `sda`, ...) per disk, in the order a
/// guest usually names them: virtio disks `vd*`, SCSI and SATA `sd*`; boot
/// disks first, then hotplugged ones.
fn targets(vmi: &VirtualMachineInstance) -> HashMap<String, String> {
    let hot: HashSet<&str> = vmi.spec.volumes.iter().filter(|v| v.hotpluggable()).map(|v| v.name.as_str()).collect();
    let disks = &vmi.spec.domain.devices.disks;
    let ordered = disks
        .iter()
        .filter(|d| !hot.contains(d.name.as_str()))
        .chain(disks.iter().filter(|d| hot.contains(d.name.as_str())));
    let (mut vd, mut sd) = (0u32, 0u32);
    let mut out = HashMap::new();
    for d in ordered {
        let bus = if let Some(c) = &d.cdrom {
            c.bus.as_deref().unwrap_or("sata")
        } else if let Some(disk) = &d.disk {
            disk.bus.as_deref().unwrap_or(if hot.contains(d.name.as_str()) { "scsi" } else { "virtio" })
        } else {
            "virtio"
        };
        let (prefix, n) = if bus == "virtio" { ("vd", &mut vd) } else { ("sd", &mut sd) };
        out.insert(d.name.clone(), format!("{prefix}{}", letters(*n)));
        *n += 1;
    }
    out
}

/// 0 → a, 25 → z, 26 → aa (as Linux names disks).
fn letters(n: u32) -> String {
    let mut n = n + 1;
    let mut s = Vec::new();
    while n > 0 {
        n -= 1;
        s.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(spec: Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({"metadata": {"name": "vm1", "uid": "u1"}, "spec": spec})).expect("vmi")
    }

    #[test]
    fn targets_follow_the_bus_and_put_hotplugged_disks_last() {
        let v = vmi(json!({
            "domain": {"devices": {"disks": [
                {"name": "hot1", "disk": {}},
                {"name": "root", "disk": {"bus": "virtio"}},
                {"name": "cd", "cdrom": {}},
                {"name": "hot2", "disk": {"bus": "virtio"}},
            ]}},
            "volumes": [
                {"name": "hot1", "persistentVolumeClaim": {"claimName": "a", "hotpluggable": true}},
                {"name": "root", "persistentVolumeClaim": {"claimName": "b"}},
                {"name": "cd", "containerDisk": {"image": "x"}},
                {"name": "hot2", "dataVolume": {"name": "c", "hotpluggable": true}},
            ],
        }));
        let t = targets(&v);
        assert_eq!(t["root"], "vda");
        assert_eq!(t["cd"], "sda");
        assert_eq!(t["hot1"], "sdb", "scsi is the default bus of a hotplugged disk");
        assert_eq!(t["hot2"], "vdb");
        assert_eq!(
            (letters(0), letters(25), letters(26), letters(27)),
            ("a".into(), "z".into(), "aa".into(), "ab".into())
        );
    }

    #[test]
    fn buses_of_hotplugged_disks() {
        let disk = |d: Value| -> Disk { serde_json::from_value(d).expect("disk") };
        assert_eq!(hotplug_bus(&disk(json!({"name": "a", "disk": {}}))), Ok(DiskBus::Scsi));
        assert_eq!(hotplug_bus(&disk(json!({"name": "a", "disk": {"bus": "virtio"}}))), Ok(DiskBus::Virtio));
        let e = hotplug_bus(&disk(json!({"name": "a", "disk": {"bus": "sata"}}))).expect_err("sata");
        assert!(e.1.contains("use scsi or virtio"), "{e:?}");
        assert!(hotplug_bus(&disk(json!({"name": "a", "cdrom": {}}))).is_err());
    }

    #[test]
    fn volume_status_has_every_volume_and_the_ones_being_removed() {
        let v = vmi(json!({
            "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}, {"name": "hot", "disk": {}}]}},
            "volumes": [
                {"name": "root", "persistentVolumeClaim": {"claimName": "b"}},
                {"name": "hot", "persistentVolumeClaim": {"claimName": "a", "hotpluggable": true}},
            ],
        }));
        let mut status = BTreeMap::new();
        status.insert("hot".to_string(), VolumeState::failed("AttachFailed", "no engine".into()));
        status.insert("old".to_string(), VolumeState::new(DETACHING));
        let r = Reconciler::status_of(&v, &status);
        assert_eq!(
            r,
            json!([
                {"name": "root", "target": "vda"},
                {"name": "hot", "target": "sda", "phase": "Pending", "hotplugVolume": {}, "reason": "AttachFailed",
                 "message": "no engine"},
                {"name": "old", "phase": "Detaching", "hotplugVolume": {}},
            ])
        );
    }
}
