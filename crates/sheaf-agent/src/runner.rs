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
use sheaf_qemu::qmp::Qmp;
use sheaf_types::kubevirt::VirtualMachineInstance;
use sheaf_types::Time;
use tokio::sync::mpsc;

use crate::accel::AccelChoice;
use crate::launch::{self, ImageStore, LaunchContext, LaunchError};

/// Finalizer that keeps a VMI until its QEMU process is gone.
pub const FINALIZER: &str = "sheaf.io/vmi-runner";

/// What the agent asks of a runner.
#[derive(Debug)]
pub enum Request {
    /// The VMI is being deleted: shut down within the grace period.
    Shutdown {
        grace: Duration,
    },
    Pause,
    Unpause,
    SoftReboot,
}

/// Settings shared by all runners of a node.
pub struct RunnerEnv {
    pub api: Arc<dyn Api>,
    pub node: String,
    pub run_root: PathBuf,
    pub images: ImageStore,
    pub accel: AccelChoice,
    pub qemu: PathBuf,
}

pub fn run_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(uid)
}

fn ns_name(vmi: &VirtualMachineInstance) -> (String, String) {
    (vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into()), vmi.metadata.name.clone().unwrap_or_default())
}

/// Is the process in `pid_file` a QEMU started for `dir`?
pub fn live_qemu(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(machine::pid_file(dir)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = dir.display().to_string();
    String::from_utf8_lossy(&cmdline).contains(&needle).then_some(pid)
}

async fn patch_status(env: &RunnerEnv, vmi: &VirtualMachineInstance, status: Value) {
    let (ns, name) = ns_name(vmi);
    let gvr = Gvr::of::<VirtualMachineInstance>();
    if let Err(e) = env.api.merge_patch(gvr, Some(&ns), &name, json!({ "status": status }), true).await {
        if !e.is_not_found() {
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

/// Launches QEMU for the VMI; on failure cleans the directory.
async fn launch(env: &RunnerEnv, vmi: &VirtualMachineInstance, dir: &Path) -> Result<(), LaunchError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LaunchError::Io { what: format!("creating {}", dir.display()), source: e })?;
    let vmi_json = serde_json::to_vec_pretty(vmi).unwrap_or_default();
    std::fs::write(dir.join("vmi.json"), vmi_json)
        .map_err(|e| LaunchError::Io { what: "writing vmi.json".into(), source: e })?;
    let seeds = crate::seed::prepare(env.api.as_ref(), vmi, dir).await?;
    let config = {
        let seed = |_: &VirtualMachineInstance, volume: &str| {
            seeds.get(volume).cloned().ok_or_else(|| LaunchError::Volume {
                volume: volume.into(),
                message: "no seed image was prepared".into(),
            })
        };
        let ctx = LaunchContext { images: &env.images, accel: env.accel.accel, run_dir: dir, seed: &seed };
        launch::machine(vmi, &ctx)?
    };
    let out = tokio::process::Command::new(&env.qemu)
        .args(config.argv())
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

async fn connect_qmp(dir: &Path) -> Option<Qmp> {
    let sock = machine::qmp_socket(dir);
    for _ in 0..100 {
        if let Ok(q) = Qmp::connect(&sock).await {
            return Some(q);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn cleanup(dir: &Path) {
    if let Some(pid) = live_qemu(dir) {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs one VMI until its QEMU is gone and the VMI is finished or deleted.
pub async fn run(env: Arc<RunnerEnv>, vmi: VirtualMachineInstance, mut requests: mpsc::Receiver<Request>) {
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let (ns, name) = ns_name(&vmi);
    let dir = run_dir(&env.run_root, &uid);
    let finished = matches!(vmi.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    if finished && live_qemu(&dir).is_none() {
        cleanup(&dir);
        remove_finalizer(&env, &vmi).await;
        return;
    }
    if vmi.metadata.deletion_timestamp.is_some() && live_qemu(&dir).is_none() {
        cleanup(&dir);
        remove_finalizer(&env, &vmi).await;
        return;
    }
    let was_running = matches!(vmi.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
    if was_running && live_qemu(&dir).is_none() {
        // QEMU ended while no agent was watching it.
        cleanup(&dir);
        let mut conds = accel_conditions(&env);
        conds.push(condition("Ready", false, "QemuExited", "QEMU exited while the agent was not running"));
        patch_status(&env, &vmi, json!({"phase": "Failed", "reason": "QemuExited", "conditions": conds})).await;
        remove_finalizer(&env, &vmi).await;
        return;
    }
    add_finalizer(&env, &vmi).await;
    let adopted = live_qemu(&dir).is_some();
    if !adopted {
        if let Err(e) = launch(&env, &vmi, &dir).await {
            tracing::warn!(%ns, %name, error = %e, "launch failed");
            cleanup(&dir);
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
        cleanup(&dir);
        patch_status(&env, &vmi, json!({"phase": "Failed", "reason": "LaunchFailed"})).await;
        remove_finalizer(&env, &vmi).await;
        return;
    };
    tracing::info!(%ns, %name, adopted, "VMI running");
    let mut events = qmp.events();
    let interfaces: Vec<Value> = vmi
        .spec
        .domain
        .devices
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, iface)| {
            let mac = iface.mac_address.clone().unwrap_or_else(|| launch::generated_mac(&uid, i));
            // QEMU's user-mode NAT gives every guest this address.
            json!({"name": iface.name, "mac": mac, "ipAddress": "10.0.2.15", "ipAddresses": ["10.0.2.15"],
                   "interfaceName": format!("eth{i}"), "infoSource": "domain"})
        })
        .collect();
    let running_status = |paused: bool| {
        let mut conds = accel_conditions(&env);
        conds.push(condition("Ready", !paused, if paused { "Paused" } else { "Running" }, ""));
        if paused {
            conds.push(condition("Paused", true, "PausedByUser", "VMI was paused by user"));
        }
        json!({
            "phase": "Running", "nodeName": env.node, "conditions": conds, "interfaces": interfaces,
            "qosClass": "Burstable", "phaseTransitionTimestamps": [{"phase": "Running", "phaseTransitionTimestamp": Time::now()}]
        })
    };
    let paused = matches!(qmp.query_status().await, Ok(s) if !s.running);
    patch_status(&env, &vmi, running_status(paused)).await;

    let mut guest_shutdown = false;
    let mut deleting: Option<tokio::time::Instant> = None;
    loop {
        let deadline = deleting.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => match ev.event.as_str() {
                    "SHUTDOWN" if ev.data.get("reason").and_then(Value::as_str) == Some("guest-shutdown") => {
                        guest_shutdown = true;
                    }
                    "STOP" => patch_status(&env, &vmi, running_status(true)).await,
                    "RESUME" => patch_status(&env, &vmi, running_status(false)).await,
                    _ => {}
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            req = requests.recv() => match req {
                Some(Request::Shutdown { grace }) => {
                    if deleting.is_none() {
                        let _ = qmp.system_powerdown().await;
                        deleting = Some(tokio::time::Instant::now() + grace);
                    }
                }
                Some(Request::Pause) => { let _ = qmp.stop().await; }
                Some(Request::Unpause) => { let _ = qmp.cont().await; }
                Some(Request::SoftReboot) => { let _ = qmp.system_powerdown().await; }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline), if deleting.is_some() => {
                tracing::info!(%ns, %name, "grace period over; stopping QEMU");
                let _ = qmp.quit().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                if live_qemu(&dir).is_some() { cleanup(&dir); }
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
    cleanup(&dir);
    remove_finalizer(&env, &vmi).await;
}
