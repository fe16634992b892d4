//! This node's part of live migrations (docs/design/migration.md): as the
//! **target** it prepares a QEMU waiting for the migration stream (a task
//! per migration, fed by a watch of the VMIs whose
//! `status.migrationState.targetNode` is this node); as the **source** the
//! VMI's runner, which owns the QEMU, sends it ([`send`]).
//!
//! ```text
//!  target: seeds, taps, standby engines, QEMU -incoming defer,
//!          TLS (a PSK derived from the cluster key),
//!          migrate-incoming tcp:NODE-IP:PORT ──▶ targetNodeAddress
//!          ... waits: completed and bound here ─▶ the runner adopts QEMU
//!                     failed / aborted / another migration ─▶ discard
//!  source: TLS, migrate ─▶ query-migrate every 100 ms ─▶ completed: hand the
//!          volumes over, bind the VMI to the target, quit QEMU, clean up
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use sheaf_client::{Gvr, Selectors, WatchEvent};
use sheaf_qemu::qmp::Qmp;
use sheaf_types::kubevirt::{migration_state, VirtualMachineInstance};
use sheaf_types::Time;

use crate::runner::{self, ns_name, RunnerEnv, Start};
use crate::storage::log_tail;

/// The id of QEMU's TLS credentials object for migrations.
const TLS_ID: &str = "sheaf-migration-tls";
/// The PSK identity both sides use.
const TLS_USER: &str = "sheaf";

/// Sets QEMU up to migrate over TLS with a pre-shared key derived from the
/// cluster key (every node derives the same; nothing else has it):
/// `keys.psk` in `dir/migration-tls/` (mode 0600), a `tls-creds-psk`
/// object (`server` on the target, `client` on the source) and the
/// migration's `tls-creds`. The stream is encrypted and both QEMUs prove
/// the key.
async fn use_tls(env: &RunnerEnv, qmp: &Qmp, dir: &std::path::Path, server: bool) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let secret = env.storage.derived_secret("qemu migration psk").ok_or("this node has no cluster key")?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let tls = dir.join("migration-tls");
    std::fs::create_dir_all(&tls).map_err(|e| format!("creating {}: {e}", tls.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tls.join("keys.psk"))
        .and_then(|mut f| f.write_all(format!("{TLS_USER}:{hex}\n").as_bytes()))
        .map_err(|e| format!("writing the migration key: {e}"))?;
    // A failed earlier attempt may have left the object.
    let _ = qmp.execute("object-del", Some(json!({"id": TLS_ID}))).await;
    let mut obj = json!({"qom-type": "tls-creds-psk", "id": TLS_ID, "dir": tls.display().to_string(),
        "endpoint": if server { "server" } else { "client" }});
    if !server {
        obj["username"] = json!(TLS_USER);
    }
    qmp.execute("object-add", Some(obj)).await.map_err(|e| format!("QEMU refused the TLS credentials: {e}"))?;
    qmp.execute("migrate-set-parameters", Some(json!({"tls-creds": TLS_ID})))
        .await
        .map(drop)
        .map_err(|e| format!("QEMU refused TLS for the migration: {e}"))
}

/// How long a prepared target waits for its migration to end.
const TARGET_WAIT: Duration = Duration::from_secs(1800);
/// QEMU's longest pause of the guest at the switch-over it aims for.
const DOWNTIME_LIMIT_MS: u64 = 100;

fn state_of(vmi: &VirtualMachineInstance) -> Value {
    vmi.status.as_ref().and_then(|s| s.migration_state.clone()).unwrap_or(Value::Null)
}

/// Merges `state` into the VMI's `status.migrationState`, pinned to its uid
/// (and `extra` into its status).
async fn patch_state(env: &RunnerEnv, vmi: &VirtualMachineInstance, state: Value, extra: Value) -> bool {
    let (ns, name) = ns_name(vmi);
    let mut status = json!({"migrationState": state});
    if let (Some(s), Some(e)) = (status.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let patch = json!({"metadata": {"uid": vmi.metadata.uid}, "status": status});
    match env.api.merge_patch(Gvr::of::<VirtualMachineInstance>(), Some(&ns), &name, patch, true).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(%ns, %name, error = %e, "cannot record the migration's progress");
            false
        }
    }
}

/// Fails the migration in the VMI with `reason`.
pub(crate) async fn fail(env: &RunnerEnv, vmi: &VirtualMachineInstance, reason: &str) {
    let (ns, name) = ns_name(vmi);
    tracing::warn!(%ns, %name, reason, "migration failed");
    patch_state(env, vmi, migration_state::failure(reason, Time::now()), json!({})).await;
}

/// Watches for migrations to this node and prepares a target for each.
pub async fn run_targets(env: Arc<RunnerEnv>, node_ip: IpAddr) {
    let gvr = Gvr::of::<VirtualMachineInstance>();
    let sel = Selectors { labels: String::new(), fields: format!("status.migrationState.targetNode={}", env.node) };
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let (items, rv) = match env.api.list(gvr, None, &sel).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list migrations to this node; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        for item in items {
            consider(&env, node_ip, &mut tasks, item);
        }
        let mut stream = match env.api.watch(gvr, None, &sel, &rv).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch migrations to this node; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => consider(&env, node_ip, &mut tasks, o),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

fn consider(
    env: &Arc<RunnerEnv>,
    node_ip: IpAddr,
    tasks: &mut HashMap<String, tokio::task::JoinHandle<()>>,
    obj: Value,
) {
    tasks.retain(|_, t| !t.is_finished());
    let Ok(vmi) = serde_json::from_value::<VirtualMachineInstance>(obj) else { return };
    let state = state_of(&vmi);
    let Some(id) = migration_state::text(&state, "migrationUid").map(str::to_string) else { return };
    if migration_state::ended(&state)
        || migration_state::text(&state, "targetNodeAddress").is_some()
        || tasks.contains_key(&id)
    {
        return;
    }
    if vmi.metadata.deletion_timestamp.is_some() {
        return;
    }
    let env = env.clone();
    tasks.insert(id.clone(), tokio::spawn(async move { target(env, vmi, node_ip, id).await }));
}

/// A free TCP port on `ip` for QEMU's incoming migration.
fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Prepares this node as the target of migration `id` of `vmi`, then
/// waits for it to end.
async fn target(env: Arc<RunnerEnv>, vmi: VirtualMachineInstance, node_ip: IpAddr, id: String) {
    let (ns, name) = ns_name(&vmi);
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let dir = runner::run_dir(&env.run_root, &uid);
    // Leftovers of an earlier attempt.
    runner::discard(&env, &dir);
    tracing::info!(%ns, %name, migration = %id, "preparing the migration's target");
    if let Err(e) = runner::launch(&env, &vmi, &dir, Start::Incoming).await {
        runner::discard(&env, &dir);
        fail(&env, &vmi, &format!("the target node {} could not start the VM: {e}", env.node)).await;
        return;
    }
    let port = match free_port(node_ip) {
        Ok(p) => p,
        Err(e) => {
            runner::discard(&env, &dir);
            fail(&env, &vmi, &format!("no free port on {node_ip} for the migration: {e}")).await;
            return;
        }
    };
    // Only one QMP client at a time: this one is dropped before the
    // runner adopts the QEMU.
    let listening = match runner::connect_qmp(&dir).await {
        None => Err("QEMU's monitor did not come up".to_string()),
        Some(qmp) => match use_tls(&env, &qmp, &dir, true).await {
            Err(e) => Err(e),
            Ok(()) => qmp
                .execute(
                    "migrate-incoming",
                    Some(json!({"uri": format!("tcp:{}", std::net::SocketAddr::new(node_ip, port))})),
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        },
    };
    if let Err(e) = listening {
        runner::discard(&env, &dir);
        fail(&env, &vmi, &format!("the target QEMU cannot receive the migration: {e}")).await;
        return;
    }
    let ready = json!({
        "targetNodeAddress": node_ip.to_string(),
        "targetDirectMigrationNodePorts": {port.to_string(): 0},
        "targetNodeDomainDetected": true,
        "targetNodeDomainReadyTimestamp": Time::now(),
    });
    if !patch_state(&env, &vmi, ready, json!({})).await {
        runner::discard(&env, &dir);
        return;
    }
    let deadline = tokio::time::Instant::now() + TARGET_WAIT;
    let gvr = Gvr::of::<VirtualMachineInstance>();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cur = match env.api.get(gvr, Some(&ns), &name).await {
            Ok(Some(v)) => serde_json::from_value::<VirtualMachineInstance>(v).ok(),
            Ok(None) => None,
            Err(_) => continue,
        };
        let Some(cur) = cur.filter(|c| c.metadata.uid == vmi.metadata.uid) else {
            runner::discard(&env, &dir);
            return;
        };
        // Bound here: the migration completed and this node's runner owns
        // the QEMU now (even if the next migration has already begun).
        if cur.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(env.node.as_str()) {
            return;
        }
        let state = state_of(&cur);
        if migration_state::text(&state, "migrationUid") != Some(id.as_str()) || migration_state::failed(&state) {
            let log = std::fs::read_to_string(sheaf_qemu::machine::qemu_log(&dir)).unwrap_or_default();
            tracing::warn!(%ns, %name, migration = %id, qemu_log = %log.trim(), "migration failed or replaced; the target is discarded");
            runner::discard(&env, &dir);
            return;
        }
        if runner::live_qemu(&dir).is_none() {
            let tail = log_tail(&sheaf_qemu::machine::qemu_log(&dir));
            runner::discard(&env, &dir);
            fail(&env, &cur, &format!("the target QEMU ended: {tail}")).await;
            return;
        }
        if tokio::time::Instant::now() > deadline {
            runner::discard(&env, &dir);
            fail(&env, &cur, "the migration did not complete in time").await;
            return;
        }
    }
}

/// How a migration sent by the source ended.
pub enum Sent {
    /// The target runs the VM: downtime and total time in milliseconds.
    Completed {
        downtime_ms: u64,
        total_ms: u64,
    },
    Failed(String),
}

/// Sends the VM to the target named in `state` and follows it until it
/// ends. The caller owns `qmp` and records the outcome.
pub async fn send(env: &RunnerEnv, qmp: &Qmp, vmi: &VirtualMachineInstance, state: &Value) -> Sent {
    let dir = runner::run_dir(&env.run_root, vmi.metadata.uid.as_deref().unwrap_or_default());
    let (Some(addr), Some(port)) = (
        migration_state::text(state, "targetNodeAddress"),
        state.get("targetDirectMigrationNodePorts").and_then(Value::as_object).and_then(|p| p.keys().next()),
    ) else {
        return Sent::Failed("the target published no address".into());
    };
    let ip: IpAddr = match addr.parse() {
        Ok(ip) => ip,
        Err(_) => return Sent::Failed(format!("the target's address {addr:?} is not an IP address")),
    };
    let port: u16 = match port.parse() {
        Ok(p) => p,
        Err(_) => return Sent::Failed(format!("the target's port {port:?} is not a port")),
    };
    if migration_state::text(state, "startTimestamp").is_some() {
        // Started before this agent restarted: follow it if QEMU still is
        // at it.
        return match qmp.query_migrate().await {
            Ok(i) if i.status.as_deref().is_some_and(|s| s != "failed" && s != "cancelled" && s != "none") => {
                follow(qmp, &dir).await
            }
            _ => Sent::Failed("the source's agent restarted during the migration, and QEMU was not migrating".into()),
        };
    }
    if let Err(e) = use_tls(env, qmp, &dir, false).await {
        return Sent::Failed(e);
    }
    let params = json!({"downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": 10u64 << 30});
    if let Err(e) = qmp.execute("migrate-set-parameters", Some(params)).await {
        return Sent::Failed(format!("QEMU refused the migration parameters: {e}"));
    }
    if let Err(e) = qmp.migrate(&format!("tcp:{}", std::net::SocketAddr::new(ip, port))).await {
        return Sent::Failed(format!("QEMU cannot start the migration: {e}"));
    }
    // `tls`: the stream is encrypted (both QEMUs have the credentials, or
    // the migration would fail).
    patch_state(env, vmi, json!({"startTimestamp": Time::now(), "tls": "psk"}), json!({})).await;
    follow(qmp, &dir).await
}

/// Follows QEMU's outgoing migration until it ends.
async fn follow(qmp: &Qmp, dir: &std::path::Path) -> Sent {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let info = match qmp.query_migrate().await {
            Ok(i) => i,
            Err(e) => return Sent::Failed(format!("lost QEMU's monitor during the migration: {e}")),
        };
        match info.status.as_deref() {
            Some("completed") => {
                let num = |k: &str| info.other.get(k).and_then(Value::as_u64).unwrap_or(0);
                return Sent::Completed { downtime_ms: num("downtime"), total_ms: num("total-time") };
            }
            Some("failed") | Some("cancelled") => {
                let why = match info.other.get("error-desc").and_then(Value::as_str) {
                    Some(d) => d.to_string(),
                    None => Some(log_tail(&sheaf_qemu::machine::qemu_log(dir)))
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| "QEMU gave no reason".to_string()),
                };
                return Sent::Failed(format!("QEMU's migration failed: {why}"));
            }
            _ => {}
        }
    }
}

/// Records a completed migration: the volumes and the VMI are the
/// target's now. The caller then quits its QEMU and cleans up.
pub async fn completed(env: &RunnerEnv, vmi: &VirtualMachineInstance, state: &Value, downtime_ms: u64, total_ms: u64) {
    let (ns, name) = ns_name(vmi);
    let target = migration_state::text(state, "targetNode").unwrap_or_default().to_string();
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    env.storage.hand_over(&uid, &target).await;
    let done = json!({
        "completed": true,
        "endTimestamp": Time::now(),
        "downtimeMilliseconds": downtime_ms,
        "totalTimeMilliseconds": total_ms,
    });
    patch_state(env, vmi, done, json!({"nodeName": target})).await;
    let label = json!({"metadata": {"uid": vmi.metadata.uid, "labels": {"kubevirt.io/nodeName": target}}});
    if let Err(e) = env.api.merge_patch(Gvr::of::<VirtualMachineInstance>(), Some(&ns), &name, label, false).await {
        tracing::warn!(%ns, %name, error = %e, "cannot relabel the migrated VMI");
    }
    tracing::info!(%ns, %name, %target, downtime_ms, total_ms, "migration completed");
}
