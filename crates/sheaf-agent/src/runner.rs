//! The VMI runner: one task per VirtualMachineInstance on this node, owning
//! its QEMU process (see docs/design/vm-runtime.md for the state machine).
//!
//! The task is fed [`Request`]s on a channel by the agent; it never blocks
//! the agent. It launches QEMU daemonized (or adopts one already running
//! from an earlier agent), follows it through QMP, reports the VMI's status,
//! and on exit or deletion cleans up the runtime directory and drops the
//! VMI's finalizer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sheaf_client::{Api, Gvr};
use sheaf_qemu::machine;
use sheaf_qemu::qga::{self, GuestInfo};
use sheaf_qemu::qmp::Qmp;
use sheaf_types::kubevirt::{migration_state, vmi_requests, VirtualMachineInstance};
use sheaf_types::Time;
use tokio::sync::mpsc;

use crate::accel::AccelChoice;
use crate::launch::{self, ImageStore, LaunchContext, LaunchError};
use crate::migration::Sent;

/// Finalizer that keeps a VMI until its QEMU process is gone.
pub const FINALIZER: &str = "sheaf.io/vmi-runner";

/// What the agent asks of a runner.
#[derive(Debug)]
pub enum Request {
    /// The VMI is being deleted: shut down within the grace period.
    Shutdown { grace: Duration },
    /// The VMI changed: carry out what its annotations ask
    /// ([`vmi_requests`]: pause, unpause, soft reboot).
    Sync(Box<VirtualMachineInstance>),
}

/// Settings shared by all runners of a node.
pub struct RunnerEnv {
    pub api: Arc<dyn Api>,
    pub node: String,
    pub run_root: PathBuf,
    pub images: ImageStore,
    pub accel: AccelChoice,
    pub qemu: PathBuf,
    /// The management network; None: QEMU's user-mode NAT.
    pub network: Option<Arc<crate::network::Management>>,
    /// The node's storage: engines for the volumes VMIs use.
    pub storage: Arc<crate::storage::Storage>,
    /// The node's VM networks (None: only the management network).
    pub vmnet: Option<Arc<crate::vmnet::VmNetworks>>,
    /// When VMIs' serial console logs are rotated.
    pub serial_log: crate::serial_log::Policy,
    /// The node's metrics, lent each runner's QMP connection.
    pub metrics: Arc<crate::metrics::AgentMetrics>,
}

pub fn run_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(uid)
}

/// The serial console socket of the VMI `uid`.
pub fn serial_socket(root: &Path, uid: &str) -> PathBuf {
    machine::serial_socket(&run_dir(root, uid))
}

/// The serial console log generations of the VMI `uid`, newest first
/// ([`crate::serial_log`]).
pub fn serial_logs(root: &Path, uid: &str) -> Vec<PathBuf> {
    crate::serial_log::generations(&run_dir(root, uid))
}

/// The VNC socket of the VMI `uid`.
pub fn vnc_socket(root: &Path, uid: &str) -> PathBuf {
    machine::vnc_socket(&run_dir(root, uid))
}

pub(crate) fn ns_name(vmi: &VirtualMachineInstance) -> (String, String) {
    (vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into()), vmi.metadata.name.clone().unwrap_or_default())
}

/// Is the process in `pid_file` a QEMU started for `dir`?
pub fn live_qemu(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(machine::pid_file(dir)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = dir.display().to_string();
    String::from_utf8_lossy(&cmdline).contains(&needle).then_some(pid)
}

/// Patches the status of this very VMI: pinned to its uid, so that a VMI
/// of the same name made meanwhile (after a failover) is left alone.
async fn patch_status(env: &RunnerEnv, vmi: &VirtualMachineInstance, status: Value) {
    let (ns, name) = ns_name(vmi);
    let gvr = Gvr::of::<VirtualMachineInstance>();
    let patch = json!({"metadata": {"uid": vmi.metadata.uid}, "status": status});
    if let Err(e) = env.api.merge_patch(gvr, Some(&ns), &name, patch, true).await {
        if !e.is_not_found() && !e.is_conflict() {
            tracing::warn!(%ns, %name, error = %e, "cannot update VMI status");
        }
    }
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": type_, "status": if status { "True" } else { "False" }, "reason": reason,
        "message": message, "lastTransitionTime": Time::now(), "lastProbeTime": null
    })
}

fn accel_conditions(env: &RunnerEnv) -> Vec<Value> {
    match &env.accel.reason {
        Some(r) => vec![condition("KVMUnavailable", true, "SoftwareEmulation", &format!("running under TCG: {r}"))],
        None => vec![],
    }
}

/// Rewrites the VMI's finalizers with `edit` (given the current object and
/// its finalizers; `None` means nothing to change), retrying on conflicts.
async fn edit_finalizers(
    env: &RunnerEnv,
    vmi: &VirtualMachineInstance,
    what: &str,
    edit: impl Fn(&Value, Vec<Value>) -> Option<Vec<Value>>,
) {
    let (ns, name) = ns_name(vmi);
    let gvr = Gvr::of::<VirtualMachineInstance>();
    for _ in 0..10 {
        let Ok(Some(cur)) = env.api.get(gvr, Some(&ns), &name).await else { return };
        let fins = cur.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
        let Some(fins) = edit(&cur, fins) else { return };
        let rv = cur.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
        let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": rv}});
        match env.api.merge_patch(gvr, Some(&ns), &name, patch, false).await {
            Ok(_) => return,
            Err(e) if e.is_not_found() => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => {
                tracing::warn!(%ns, %name, error = %e, "cannot {what} the runner finalizer");
                return;
            }
        }
    }
}

async fn add_finalizer(env: &RunnerEnv, vmi: &VirtualMachineInstance) {
    let uid = json!(vmi.metadata.uid);
    edit_finalizers(env, vmi, "add", |cur, mut fins| {
        let other_vmi = cur.pointer("/metadata/uid") != Some(&uid);
        let done = fins.iter().any(|f| f.as_str() == Some(FINALIZER));
        if other_vmi || done || cur.pointer("/metadata/deletionTimestamp").is_some() {
            return None;
        }
        fins.push(json!(FINALIZER));
        Some(fins)
    })
    .await
}

async fn remove_finalizer(env: &RunnerEnv, vmi: &VirtualMachineInstance) {
    edit_finalizers(env, vmi, "remove", |_, mut fins| {
        fins.retain(|f| f.as_str() != Some(FINALIZER));
        Some(fins)
    })
    .await
}

async fn patch_annotations(env: &RunnerEnv, vmi: &VirtualMachineInstance, annotations: Value) {
    let (ns, name) = ns_name(vmi);
    let patch = json!({"metadata": {"uid": vmi.metadata.uid, "annotations": annotations}});
    if let Err(e) = env.api.merge_patch(Gvr::of::<VirtualMachineInstance>(), Some(&ns), &name, patch, false).await {
        if !e.is_not_found() && !e.is_conflict() {
            tracing::warn!(%ns, %name, error = %e, "cannot annotate VMI");
        }
    }
}

/// KubeVirt's `status.guestOSInfo` from the guest agent's `guest-get-osinfo`.
fn guest_os_info(info: &GuestInfo) -> Value {
    let os = &info.os;
    let field = |k: &str| os.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "id": field("id"), "name": field("name"), "prettyName": field("pretty-name"), "version": field("version"),
        "versionId": field("version-id"), "kernelRelease": field("kernel-release"),
        "kernelVersion": field("kernel-version"), "machine": field("machine"),
    })
}

/// The parts of `guestosinfo` that have no VMI status field.
fn guest_agent_extra(info: &GuestInfo) -> Value {
    let mut v = json!({ "guestAgentVersion": info.version });
    if let Some(h) = &info.hostname {
        v["hostname"] = json!(h);
    }
    if let Some((zone, offset)) = &info.timezone {
        v["timezone"] = json!(format!("{zone}, {offset}"));
    }
    v
}

/// What the runner has done of the requests in the VMI's annotations.
#[derive(Default)]
struct RequestState {
    /// The last soft reboot request carried out.
    soft_reboot: Option<String>,
    /// QEMU is set to pause instead of ending on a guest power-off (an
    /// ACPI soft reboot in progress).
    reboot_on_shutdown: bool,
    /// The freeze request holding the guest: its id, how, and since when.
    frozen: Option<(String, Hold, tokio::time::Instant)>,
    /// The last freeze request answered (not carried out again).
    freeze_answered: Option<String>,
}

/// How a freeze request holds the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// The guest agent froze its file systems.
    FsFreeze,
    /// Its vCPUs were paused (no guest agent).
    Paused,
}

impl RequestState {
    async fn apply(
        &mut self,
        env: &RunnerEnv,
        qmp: &Qmp,
        dir: &Path,
        vmi: &VirtualMachineInstance,
        paused: bool,
        agent: bool,
    ) {
        let ann = |k: &str| vmi.metadata.annotations.get(k).map(String::as_str);
        self.freeze(env, qmp, dir, vmi, paused, agent).await;
        let want_paused = ann(vmi_requests::PAUSED) == Some("true");
        let held = self.frozen.as_ref().is_some_and(|f| f.1 == Hold::Paused);
        if held {
            // Paused for a freeze request; let go by it.
        } else if want_paused && !paused {
            if let Err(e) = qmp.stop().await {
                tracing::warn!(error = %e, "cannot pause the guest");
            }
        } else if !want_paused && paused {
            if let Err(e) = qmp.cont().await {
                tracing::warn!(error = %e, "cannot unpause the guest");
            }
        }
        let Some(id) = ann(vmi_requests::SOFT_REBOOT).filter(|id| !id.is_empty()) else { return };
        let done = ann(vmi_requests::SOFT_REBOOT_DONE).unwrap_or("");
        if done.split(": ").next() == Some(id) || self.soft_reboot.as_deref() == Some(id) {
            return;
        }
        self.soft_reboot = Some(id.to_string());
        let result = if paused {
            Err("the guest is paused".to_string())
        } else if agent && qga::reboot(&machine::guest_agent_socket(dir), Duration::from_secs(3)).await.is_ok() {
            Ok(())
        } else {
            // No guest agent: ACPI power button, with QEMU set to pause
            // instead of ending when the guest powers off; the runner then
            // resets and resumes it.
            match qmp.execute("set-action", Some(json!({"shutdown": "pause"}))).await {
                Ok(_) => {
                    self.reboot_on_shutdown = true;
                    qmp.system_powerdown().await.map(|_| ()).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        };
        let done = match result {
            Ok(()) => id.to_string(),
            Err(e) => format!("{id}: {e}"),
        };
        patch_annotations(env, vmi, json!({ vmi_requests::SOFT_REBOOT_DONE: done })).await;
    }

    /// Holds the guest for the freeze request in the annotations, or lets
    /// it go when the request is gone, replaced or too old.
    async fn freeze(
        &mut self,
        env: &RunnerEnv,
        qmp: &Qmp,
        dir: &Path,
        vmi: &VirtualMachineInstance,
        paused: bool,
        agent: bool,
    ) {
        let want = vmi.metadata.annotations.get(vmi_requests::FREEZE).filter(|id| !id.is_empty()).cloned();
        let limit = Duration::from_secs(vmi_requests::FREEZE_LIMIT_SECONDS);
        if let Some((id, hold, since)) = self.frozen.clone() {
            let expired = since.elapsed() > limit;
            if want.as_deref() == Some(id.as_str()) && !expired {
                return;
            }
            self.thaw(qmp, dir, hold).await;
            self.frozen = None;
            let answer = if expired { json!(format!("{id}: let go after {} s", limit.as_secs())) } else { Value::Null };
            if expired || want.is_none() {
                patch_annotations(env, vmi, json!({ vmi_requests::FROZEN: answer })).await;
            }
        }
        let Some(id) = want else { return };
        if self.freeze_answered.as_deref() == Some(id.as_str()) {
            return;
        }
        self.freeze_answered = Some(id.clone());
        let socket = machine::guest_agent_socket(dir);
        let hold = if agent && qga::freeze(&socket, Duration::from_secs(10)).await.is_ok() {
            Ok(Hold::FsFreeze)
        } else if paused {
            Err("the guest is paused already: nothing to hold".to_string())
        } else {
            qmp.stop().await.map(|_| Hold::Paused).map_err(|e| format!("cannot pause the guest: {e}"))
        };
        let answer = match hold {
            Ok(h) => {
                tracing::info!(hold = ?h, request = %id, "guest held for a consistent snapshot");
                self.frozen = Some((id.clone(), h, tokio::time::Instant::now()));
                format!("{id}:{}", if h == Hold::FsFreeze { "fsfreeze" } else { "paused" })
            }
            // A paused guest writes nothing: the snapshots are consistent.
            Err(e) if paused => format!("{id}:paused-already ({e})"),
            Err(e) => format!("{id}: {e}"),
        };
        patch_annotations(env, vmi, json!({ vmi_requests::FROZEN: answer })).await;
    }

    async fn thaw(&self, qmp: &Qmp, dir: &Path, hold: Hold) {
        let r = match hold {
            Hold::FsFreeze => qga::thaw(&machine::guest_agent_socket(dir), Duration::from_secs(10))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Hold::Paused => qmp.cont().await.map(drop).map_err(|e| e.to_string()),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot let the guest go on after a freeze");
        }
    }

    /// The guest rebooted (or is being deleted): power-offs end QEMU again.
    async fn rebooted(&mut self, qmp: &Qmp) {
        if std::mem::take(&mut self.reboot_on_shutdown) {
            if let Err(e) = qmp.execute("set-action", Some(json!({"shutdown": "poweroff"}))).await {
                tracing::warn!(error = %e, "cannot restore QEMU's shutdown action");
            }
        }
    }
}

/// How QEMU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Boots the guest.
    Boot,
    /// Waits for a live migration's stream (`-incoming defer`), with the
    /// volumes' engines on standby.
    Incoming,
}

/// Launches QEMU for the VMI; on failure the caller cleans the directory.
pub(crate) async fn launch(
    env: &RunnerEnv,
    vmi: &VirtualMachineInstance,
    dir: &Path,
    start: Start,
) -> Result<(), LaunchError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LaunchError::Io { what: format!("creating {}", dir.display()), source: e })?;
    let vmi_json = serde_json::to_vec_pretty(vmi).unwrap_or_default();
    std::fs::write(dir.join("vmi.json"), vmi_json)
        .map_err(|e| LaunchError::Io { what: "writing vmi.json".into(), source: e })?;
    let seeds = crate::seed::prepare(env.api.as_ref(), vmi, dir).await?;
    let volumes = env.storage.attach(vmi, start == Start::Incoming).await?;
    let vm_nics = attach_vm_networks(env, vmi, dir).await?;
    let config = {
        let seed = |_: &VirtualMachineInstance, volume: &str| {
            seeds.get(volume).cloned().ok_or_else(|| LaunchError::Volume {
                volume: volume.into(),
                message: "no seed image was prepared".into(),
            })
        };
        let ctx = LaunchContext {
            images: &env.images,
            accel: env.accel.accel,
            run_dir: dir,
            seed: &seed,
            network: env.network.as_deref(),
            volumes: &volumes,
            vm_nics: &vm_nics,
        };
        launch::machine(vmi, &ctx)?
    };
    let mut argv = config.argv();
    if start == Start::Incoming {
        argv.extend(["-incoming".to_string(), "defer".to_string()]);
    }
    let out = tokio::process::Command::new(&env.qemu)
        .args(argv)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| LaunchError::Io { what: format!("starting {}", env.qemu.display()), source: e })?;
    if !out.status.success() {
        let log = std::fs::read_to_string(machine::qemu_log(dir)).unwrap_or_default();
        return Err(LaunchError::Qemu(format!("{} {}", String::from_utf8_lossy(&out.stderr).trim(), log.trim())));
    }
    Ok(())
}

/// Puts the VMI's NICs on VM networks (multus) onto their segments.
async fn attach_vm_networks(
    env: &RunnerEnv,
    vmi: &VirtualMachineInstance,
    dir: &Path,
) -> Result<std::collections::BTreeMap<usize, (String, u32)>, LaunchError> {
    let mut out = std::collections::BTreeMap::new();
    let mut wanted = Vec::new();
    let (ns, _) = ns_name(vmi);
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    for (i, iface) in vmi.spec.domain.devices.interfaces.iter().enumerate() {
        let Some(m) = vmi.spec.networks.iter().find(|n| n.name == iface.name).and_then(|n| n.multus.as_ref()) else {
            continue;
        };
        let Some(vmnet) = &env.vmnet else {
            return Err(LaunchError::Network {
                interface: iface.name.clone(),
                message: "this node's agent cannot manage VM networks (netlink unavailable; see its log)".into(),
            });
        };
        let key = sheaf_types::network::nad_key(&ns, &m.network_name);
        let mac = launch::nic_mac(vmi, i);
        let nic = vmnet
            .attach(dir, &uid, i, &key, &mac)
            .await
            .map_err(|e| LaunchError::Network { interface: iface.name.clone(), message: e.to_string() })?;
        out.insert(i, nic);
        wanted.push((key, mac));
    }
    if let (Some(vmnet), false) = (&env.vmnet, wanted.is_empty()) {
        vmnet.wait_for_addresses(&wanted, Duration::from_secs(10)).await;
    }
    Ok(out)
}

/// The VMI's `status.interfaces`: management NICs with their allocation,
/// VM network NICs with the address their DHCP server leased.
fn interface_status(env: &RunnerEnv, vmi: &VirtualMachineInstance, dir: &Path) -> Vec<Value> {
    let nics = env.network.as_ref().map(|_| crate::network::Management::nics_of(dir)).unwrap_or_default();
    let vnics = crate::vmnet::VmNetworks::vnics_of(dir);
    vmi.spec
        .domain
        .devices
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, iface)| {
            let mac = launch::nic_mac(vmi, i);
            let mut v = json!({"name": iface.name, "mac": mac, "interfaceName": format!("eth{i}")});
            if let Some(vn) = vnics.get(&i) {
                v["infoSource"] = json!("domain, multus-status");
                if let Some(ip) = env.vmnet.as_ref().and_then(|n| n.leased_address(&vn.network, &mac)) {
                    v["ipAddress"] = json!(ip);
                    v["ipAddresses"] = json!([ip]);
                }
            } else {
                // The management network's allocation; QEMU's user-mode
                // NAT gives every guest 10.0.2.15.
                let ip = nics
                    .iter()
                    .find(|n| n.name == iface.name)
                    .map(|n| n.ip.to_string())
                    .unwrap_or_else(|| "10.0.2.15".into());
                v["ipAddress"] = json!(ip);
                v["ipAddresses"] = json!([ip]);
                v["infoSource"] = json!("domain");
            }
            v
        })
        .collect()
}

pub(crate) async fn connect_qmp(dir: &Path) -> Option<Qmp> {
    let sock = machine::qmp_socket(dir);
    for _ in 0..100 {
        if let Ok(q) = Qmp::connect(&sock).await {
            return Some(q);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// What [`cleanup`] leaves of a VMI's runtime directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    /// The serial console log (the VMI ended but still exists).
    Log,
    Nothing,
}

fn cleanup(env: &RunnerEnv, dir: &Path, leave: Leave) {
    if let Some(pid) = live_qemu(dir) {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    if let Some(net) = &env.network {
        net.detach(dir);
    }
    if let Some(vmnet) = &env.vmnet {
        vmnet.detach(dir);
    }
    if let Some(uid) = dir.file_name().and_then(|n| n.to_str()) {
        env.storage.detach_vmi(uid);
    }
    match leave {
        Leave::Log => crate::serial_log::keep_only_logs(dir),
        Leave::Nothing => {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Stops what runs in `dir` for a VMI that is gone or bound to another
/// node (its QEMU, NICs and engines), without writing anything about it.
pub fn discard(env: &RunnerEnv, dir: &Path) {
    if live_qemu(dir).is_some() {
        tracing::warn!(dir = %dir.display(), "stopping a VM whose VMI is gone or runs elsewhere");
    }
    if live_qemu(dir).is_some() || dir.exists() {
        cleanup(env, dir, Leave::Nothing);
    }
}

/// At agent start: the VM directories of VMIs that are not bound to this
/// node any more (`listed` holds the uids that are) are discarded.
pub fn discard_orphans(env: &RunnerEnv, listed: &std::collections::HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(&env.run_root) else { return };
    for e in entries.flatten() {
        let dir = e.path();
        let Some(uid) = dir.file_name().and_then(|n| n.to_str()).map(String::from) else { continue };
        if listed.contains(&uid) || !dir.join("vmi.json").exists() {
            continue;
        }
        discard(env, &dir);
    }
}

/// The migration state of `vmi` if this node should send it now: it is
/// the source, the target is ready, and it has not ended.
fn to_send(env: &RunnerEnv, vmi: &VirtualMachineInstance) -> Option<Value> {
    let state = vmi.status.as_ref()?.migration_state.clone()?;
    let s = |k: &str| migration_state::text(&state, k);
    let sending = s("sourceNode") == Some(env.node.as_str()) && s("targetNodeAddress").is_some();
    (sending && !migration_state::ended(&state)).then_some(state)
}

/// Sends the VM to the migration's target in a task of its own; the
/// runner keeps handling QEMU's events meanwhile.
fn start_sending(
    env: &Arc<RunnerEnv>,
    qmp: &Qmp,
    vmi: &VirtualMachineInstance,
    state: Value,
) -> (tokio::task::JoinHandle<Sent>, Value) {
    let (env2, qmp2, vmi2, state2) = (env.clone(), qmp.clone(), vmi.clone(), state.clone());
    let task = tokio::spawn(async move { crate::migration::send(&env2, &qmp2, &vmi2, &state2).await });
    (task, state)
}

/// Runs one VMI until its QEMU is gone and the VMI is finished or deleted.
pub async fn run(env: Arc<RunnerEnv>, vmi: VirtualMachineInstance, mut requests: mpsc::Receiver<Request>) {
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let (ns, name) = ns_name(&vmi);
    let dir = run_dir(&env.run_root, &uid);
    let finished = matches!(vmi.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    if finished && live_qemu(&dir).is_none() {
        cleanup(&env, &dir, Leave::Log);
        remove_finalizer(&env, &vmi).await;
        return;
    }
    if vmi.metadata.deletion_timestamp.is_some() && live_qemu(&dir).is_none() {
        cleanup(&env, &dir, Leave::Nothing);
        remove_finalizer(&env, &vmi).await;
        return;
    }
    let was_running = matches!(vmi.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
    if was_running && live_qemu(&dir).is_none() {
        // QEMU ended while no agent was watching it.
        cleanup(&env, &dir, Leave::Log);
        let mut conds = accel_conditions(&env);
        conds.push(condition("Ready", false, "QemuExited", "QEMU exited while the agent was not running"));
        patch_status(&env, &vmi, json!({"phase": "Failed", "reason": "QemuExited", "conditions": conds})).await;
        remove_finalizer(&env, &vmi).await;
        return;
    }
    add_finalizer(&env, &vmi).await;
    let adopted = live_qemu(&dir).is_some();
    if !adopted {
        if let Err(e) = launch(&env, &vmi, &dir, Start::Boot).await {
            tracing::warn!(%ns, %name, error = %e, "launch failed");
            // Nothing ran: nothing worth keeping (and the VMI may be gone
            // already when a stale event started this runner).
            cleanup(&env, &dir, Leave::Nothing);
            let mut conds = accel_conditions(&env);
            conds.push(condition("Ready", false, e.reason(), &e.to_string()));
            conds.push(condition("Synchronized", false, e.reason(), &e.to_string()));
            patch_status(&env, &vmi, json!({"phase": "Failed", "reason": e.reason(), "conditions": conds})).await;
            remove_finalizer(&env, &vmi).await;
            return;
        }
    }
    let Some(qmp) = connect_qmp(&dir).await else {
        tracing::warn!(%ns, %name, "QEMU's monitor did not come up");
        cleanup(&env, &dir, Leave::Nothing);
        patch_status(&env, &vmi, json!({"phase": "Failed", "reason": "LaunchFailed"})).await;
        remove_finalizer(&env, &vmi).await;
        return;
    };
    tracing::info!(%ns, %name, adopted, "VMI running");
    // Rotates the serial console log while the runner runs (stops with it).
    let _rotation = crate::serial_log::spawn_rotation(dir.clone(), env.serial_log);
    // Lends QMP to the metrics while the runner runs (taken back with it).
    let _metrics = env.metrics.watch(&uid, &qmp);
    let mut events = qmp.events();
    let mut interfaces = interface_status(&env, &vmi, &dir);
    let running_status = |paused: bool, agent: Option<&GuestInfo>, interfaces: &[Value]| {
        let mut conds = accel_conditions(&env);
        conds.push(condition("Ready", !paused, if paused { "Paused" } else { "Running" }, ""));
        if paused {
            conds.push(condition("Paused", true, "PausedByUser", "VMI was paused by user"));
        }
        if agent.is_some() {
            conds.push(condition("AgentConnected", true, "GuestAgentConnected", "the guest agent answers"));
        }
        json!({
            "phase": "Running", "nodeName": env.node, "conditions": conds, "interfaces": interfaces,
            "guestOSInfo": agent.map(guest_os_info),
            "qosClass": "Burstable", "phaseTransitionTimestamps": [{"phase": "Running", "phaseTransitionTimestamp": Time::now()}]
        })
    };
    let mut paused = matches!(qmp.query_status().await, Ok(s) if !s.running);
    let mut agent: Option<GuestInfo> = None;
    patch_status(&env, &vmi, running_status(paused, None, &interfaces)).await;
    let mut requests_seen = RequestState::default();
    // Hotplugged disks: their own task, fed every version of the VMI.
    let hotplug = crate::hotplug::Hotplug::spawn(env.clone(), qmp.clone(), &vmi);
    requests_seen.apply(&env, &qmp, &dir, &vmi, paused, agent.is_some()).await;
    // The guest agent is polled, and the VMI re-read, every so often.
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut guest_shutdown = false;
    let mut deleting: Option<tokio::time::Instant> = None;
    // A live migration this node sends: its task and the migration state
    // it started from.
    let mut migrating: Option<(tokio::task::JoinHandle<Sent>, Value)> = None;
    if let Some(state) = to_send(&env, &vmi) {
        migrating = Some(start_sending(&env, &qmp, &vmi, state));
    }
    loop {
        let deadline = deleting.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => match ev.event.as_str() {
                    "SHUTDOWN" if ev.data.get("reason").and_then(Value::as_str) == Some("guest-shutdown") => {
                        if requests_seen.reboot_on_shutdown {
                            // A soft reboot by ACPI: QEMU paused instead of
                            // ending; reset the machine and run it again.
                            let _ = qmp.system_reset().await;
                            let _ = qmp.cont().await;
                            requests_seen.rebooted(&qmp).await;
                        } else {
                            guest_shutdown = true;
                        }
                    }
                    // The switch-over of a migration stops the guest here
                        // last: not a pause.
                    "STOP" if migrating.is_some() => {}
                    "STOP" => {
                        paused = true;
                        patch_status(&env, &vmi, running_status(paused, agent.as_ref(), &interfaces)).await;
                    }
                    "RESUME" => {
                        paused = false;
                        // Bridges forget a silent guest's MAC (300 s);
                        // after a pause (and, the same way, after a
                        // migration) it announces itself at once.
                        if let Err(e) = qmp.announce_self().await {
                            tracing::warn!(%ns, %name, error = %e, "announce-self failed");
                        }
                        patch_status(&env, &vmi, running_status(paused, agent.as_ref(), &interfaces)).await;
                    }
                    "RESET" => {
                        // A reboot, not a power-off.
                        guest_shutdown = false;
                        requests_seen.rebooted(&qmp).await;
                    }
                    _ => {}
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            req = requests.recv() => match req {
                Some(Request::Shutdown { grace }) => {
                    if let Some((task, _)) = migrating.take() {
                        task.abort();
                        let _ = qmp.execute("migrate_cancel", None).await;
                    }
                    if deleting.is_none() {
                        requests_seen.rebooted(&qmp).await;
                        let _ = qmp.system_powerdown().await;
                        deleting = Some(tokio::time::Instant::now() + grace);
                    }
                }
                Some(Request::Sync(cur)) => {
                    if let (None, None, Some(state)) = (&migrating, deleting, to_send(&env, &cur)) {
                        migrating = Some(start_sending(&env, &qmp, &cur, state));
                    }
                    if deleting.is_none() {
                        hotplug.sync(&cur);
                        requests_seen.apply(&env, &qmp, &dir, &cur, paused, agent.is_some()).await;
                    }
                }
                None => break,
            },
            _ = tick.tick(), if deleting.is_none() => {
                let now = qga::guest_info(&machine::guest_agent_socket(&dir), Duration::from_secs(3)).await.ok();
                let now_interfaces = interface_status(&env, &vmi, &dir);
                if now != agent || now_interfaces != interfaces {
                    agent = now;
                    interfaces = now_interfaces;
                    patch_status(&env, &vmi, running_status(paused, agent.as_ref(), &interfaces)).await;
                    let extra = agent.as_ref().map(|a| guest_agent_extra(a).to_string());
                    patch_annotations(&env, &vmi, json!({ vmi_requests::GUEST_AGENT_INFO: extra })).await;
                }
                // Requests whose watch event was missed.
                let (ns, name) = ns_name(&vmi);
                if let Ok(Some(cur)) = env.api.get(Gvr::of::<VirtualMachineInstance>(), Some(&ns), &name).await {
                    if let Ok(cur) = serde_json::from_value::<VirtualMachineInstance>(cur) {
                        if cur.metadata.uid == vmi.metadata.uid {
                            hotplug.sync(&cur);
                            requests_seen.apply(&env, &qmp, &dir, &cur, paused, agent.is_some()).await;
                        }
                    }
                }
            }
            sent = async {
                match migrating.as_mut() {
                    Some((task, _)) => task.await,
                    None => std::future::pending().await,
                }
            }, if migrating.is_some() => {
                let Some((_, state)) = migrating.take() else { continue };
                match sent {
                    Ok(Sent::Completed { downtime_ms, total_ms }) => {
                        crate::migration::completed(&env, &vmi, &state, downtime_ms, total_ms).await;
                        let _ = qmp.quit().await;
                        for _ in 0..50 {
                            if live_qemu(&dir).is_none() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        // The VMI and its log go on on the target node.
                        cleanup(&env, &dir, Leave::Nothing);
                        tracing::info!(%ns, %name, "VMI migrated away");
                        return;
                    }
                    Ok(Sent::Failed(why)) => crate::migration::fail(&env, &vmi, &why).await,
                    Err(e) => crate::migration::fail(&env, &vmi, &format!("the migration's task ended: {e}")).await,
                }
            }
            _ = tokio::time::sleep_until(deadline), if deleting.is_some() => {
                tracing::info!(%ns, %name, "grace period over; stopping QEMU");
                let _ = qmp.quit().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                if live_qemu(&dir).is_some() { cleanup(&env, &dir, Leave::Nothing); }
                break;
            }
        }
        if live_qemu(&dir).is_none() {
            break;
        }
    }
    // QEMU is gone (or going): record how it ended.
    for _ in 0..50 {
        if live_qemu(&dir).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (phase, reason) =
        if guest_shutdown || deleting.is_some() { ("Succeeded", "GuestShutdown") } else { ("Failed", "QemuExited") };
    tracing::info!(%ns, %name, phase, "VMI finished");
    let mut conds = accel_conditions(&env);
    conds.push(condition("Ready", false, reason, ""));
    patch_status(&env, &vmi, json!({"phase": phase, "reason": reason, "conditions": conds, "interfaces": []})).await;
    // A deleted VMI takes its serial log with it; an ended one keeps it.
    cleanup(&env, &dir, if deleting.is_some() { Leave::Nothing } else { Leave::Log });
    remove_finalizer(&env, &vmi).await;
}
