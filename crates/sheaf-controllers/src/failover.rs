//! Failover: the VMs of a node whose agent went silent are started again
//! on healthy nodes, instead of hanging in `Running` or `Terminating` as
//! long as the node is away.
//!
//! ```text
//!  node heartbeat older than the grace (30 s by default)
//!    └─[node lifecycle]─▶ Ready=Unknown, reason NodeStatusUnknown
//!         └─[failover]─▶ every unfinished VMI bound to the node:
//!               phase Failed, reason NodeUnresponsive (as KubeVirt), Ready=False,
//!               its runner finalizer dropped (the node cannot), an Event
//!               (a VMI already being deleted is then gone at once)
//!            └─[vm]─▶ runStrategy Always / RerunOnFailure: a new VMI
//!               └─[scheduler]─▶ a Ready node ─▶ its agent starts the
//!                  volumes' engines there; each claims the replicas it
//!                  reaches with a newer epoch, which fences the engine
//!                  left on the silent node: it can no longer write to them
//! ```
//!
//! When the node comes back its agent finds the VMIs gone or bound
//! elsewhere and stops what it still runs for them at once (no grace
//! period: their engines are fenced), and the new engines rebuild its
//! replicas (a delta, by checksums) from the current ones.
//!
//! Everything here is idempotent and runs again on every pass while the
//! node stays down: a VMI that a write missed is failed over on the next.

use std::sync::Arc;

use chrono::{SubsecRound, Utc};
use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::kubevirt::{migration_state, VirtualMachineInstance};
use sheaf_types::Time;

use crate::events::{reference_to, EventRecorder, EventType};

/// The finalizer a node's agent keeps on the VMIs it runs.
pub const RUNNER_FINALIZER: &str = "sheaf.io/vmi-runner";
/// `status.reason` of a VMI failed over from a silent node.
pub const NODE_UNREACHABLE: &str = "NodeUnresponsive";
/// `source.component` of the Events.
pub const COMPONENT: &str = "sheaf-failover";

fn phase(v: &VirtualMachineInstance) -> &str {
    v.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// Fails over every VMI bound to `node`; returns how many it changed.
/// `since` is the node's last heartbeat, for the messages.
pub async fn fail_over_node(api: &Arc<dyn Api>, node: &str, since: &str) -> Result<usize, ClientError> {
    let vmis = Typed::<VirtualMachineInstance>::new(api.as_ref());
    let sel = Selectors { labels: String::new(), fields: format!("status.nodeName={node}") };
    let events = EventRecorder::new(api.clone(), COMPONENT);
    let mut changed = 0;
    for vmi in vmis.list(None, &sel).await? {
        let finished = matches!(phase(&vmi), "Succeeded" | "Failed");
        let held = vmi.metadata.finalizers.iter().any(|f| f == RUNNER_FINALIZER);
        if finished && !held {
            continue;
        }
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let message = format!(
            "node {node} stopped answering (last heartbeat {since}); the VMI was failed over and its \
             volumes' engines are fenced by the next one to claim them"
        );
        if !finished {
            let now = Time(Utc::now().trunc_subsecs(0));
            let mut transitions: Vec<Value> = vmi
                .status
                .as_ref()
                .map(|s| s.phase_transition_timestamps.iter().filter_map(|t| serde_json::to_value(t).ok()).collect())
                .unwrap_or_default();
            transitions.push(json!({"phase": "Failed", "phaseTransitionTimestamp": now}));
            let status = json!({"status": {
                "phase": "Failed",
                "reason": NODE_UNREACHABLE,
                "conditions": [{
                    "type": "Ready", "status": "False", "reason": NODE_UNREACHABLE,
                    "message": message, "lastTransitionTime": now, "lastProbeTime": null,
                }],
                "phaseTransitionTimestamps": transitions,
            }});
            match vmis.merge_patch(Some(&ns), &name, status, true).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
            events.record(&reference_to(&vmi), EventType::Warning, NODE_UNREACHABLE, message.clone()).await;
            tracing::warn!(%ns, %name, node, "VMI failed over: its node stopped answering");
        }
        if held {
            drop_runner_finalizer(api.as_ref(), &ns, &name, vmi.metadata.uid.as_deref()).await?;
        }
        changed += 1;
    }
    // Migrations to the silent node end: their sources keep the VMs.
    let sel = Selectors { labels: String::new(), fields: format!("status.migrationState.targetNode={node}") };
    for vmi in vmis.list(None, &sel).await? {
        let state = vmi.status.as_ref().and_then(|s| s.migration_state.clone()).unwrap_or(Value::Null);
        if migration_state::ended(&state) {
            continue;
        }
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let reason = format!("the target node {node} stopped answering (last heartbeat {since})");
        let patch = json!({
            "metadata": {"uid": vmi.metadata.uid},
            "status": {"migrationState": migration_state::failure(&reason, Time(Utc::now()))},
        });
        match vmis.merge_patch(Some(&ns), &name, patch, true).await {
            Ok(_) => changed += 1,
            Err(e) if e.is_not_found() || e.is_conflict() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(changed)
}

/// Removes the runner finalizer of VMI `ns/name` (uid `uid`), retrying on
/// conflicts.
async fn drop_runner_finalizer(api: &dyn Api, ns: &str, name: &str, uid: Option<&str>) -> Result<(), ClientError> {
    let gvr = Gvr::of::<VirtualMachineInstance>();
    for _ in 0..10 {
        let Some(cur) = api.get(gvr, Some(ns), name).await? else { return Ok(()) };
        if cur.pointer("/metadata/uid").and_then(Value::as_str) != uid {
            return Ok(());
        }
        let fins: Vec<Value> = cur
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f.as_str() != Some(RUNNER_FINALIZER))
            .collect();
        let rv = cur.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
        match api
            .merge_patch(gvr, Some(ns), name, json!({"metadata": {"finalizers": fins, "resourceVersion": rv}}), false)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ClientError {
        code: 409,
        reason: "Conflict".into(),
        message: format!("VMI {ns}/{name} kept changing while its runner finalizer was dropped"),
    })
}
