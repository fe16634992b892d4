//! The migration controller: carries each VirtualMachineInstanceMigration
//! (VMIM) out through its VMI's `status.migrationState`, which the source
//! and target agents act on (docs/design/migration.md).
//!
//! ```text
//!  Pending ──checks, target chosen──▶ Scheduled ──target agent ready──▶ TargetReady
//!     │  (VMI not Running, not migratable,           │ (targetNodeAddress)
//!     │   no node fits ─▶ Failed, with why)           ▼
//!     │                                   Running (source started: startTimestamp)
//!     │                                       │ completed          │ failed
//!     └── another migration of the VMI        ▼                    ▼
//!         runs: waits in Pending          Succeeded              Failed
//! ```
//!
//! The VMIM's phase is derived from the VMI's `migrationState` on every
//! pass (level-triggered); the only write this controller makes to the
//! VMI is the one that starts a migration (pinned to the VMI's
//! resourceVersion, so two migrations never both start) and, when the
//! target does not get ready in time, the one that fails it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::core::Node;
use sheaf_types::kubevirt::{migration_state, VirtualMachineInstance, VirtualMachineInstanceMigration};
use sheaf_types::meta::{set_condition, Condition};
use sheaf_types::Time;

use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Change, Controller, ObjectKey, Reconciler};
use crate::scheduler;

/// `source.component` of the Events.
pub const COMPONENT: &str = "sheaf-migration";
/// A target that is not ready this long after it was chosen fails the
/// migration.
pub const TARGET_TIMEOUT: Duration = Duration::from_secs(300);
/// A running migration that has not completed this long is failed (its
/// source agent is gone, or the guest dirties memory faster than it goes).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

const PENDING: &str = "Pending";
const SCHEDULED: &str = "Scheduled";
const TARGET_READY: &str = "TargetReady";
const RUNNING: &str = "Running";
const SUCCEEDED: &str = "Succeeded";
const FAILED: &str = "Failed";

pub struct Migrations {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

/// Runs the controller until the future is dropped.
pub async fn run(api: Arc<dyn Api>) {
    let reconciler = Migrations { api: api.clone(), events: EventRecorder::new(api.clone(), COMPONENT) };
    Controller::new("migration", api, Gvr::of::<VirtualMachineInstanceMigration>())
        // A VMI's migrationState moves its migrations along.
        .watches(Gvr::of::<VirtualMachineInstance>(), |_: Change, vmi: &Value, store| {
            let ns = vmi.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
            let name = vmi.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            store.keys_where(|m| {
                m.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string) == ns
                    && m.pointer("/spec/vmiName").and_then(Value::as_str) == Some(name.as_str())
            })
        })
        .resync_every(Duration::from_secs(30))
        .run(Arc::new(reconciler))
        .await
}

fn now() -> Time {
    Time(Utc::now().trunc_subsecs(0))
}

fn phase_of(m: &VirtualMachineInstanceMigration) -> &str {
    m.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn time_at(v: &Value, key: &str) -> Option<DateTime<Utc>> {
    migration_state::text(v, key).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

/// Why `vmi` cannot be live-migrated, if it cannot.
pub(crate) async fn not_migratable(api: &dyn Api, vmi: &VirtualMachineInstance) -> Result<Option<String>, ClientError> {
    let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    for v in &vmi.spec.volumes {
        if v.empty_disk.is_some() || v.host_disk.is_some() {
            return Ok(Some(format!(
                "volume {:?} is an emptyDisk or hostDisk, whose data lives on the node only; \
                 use a PersistentVolumeClaim (a Sheaf volume) to migrate the VM",
                v.name
            )));
        }
        if v.hotpluggable() {
            return Ok(Some(format!(
                "volume {:?} was hotplugged; remove it (sheaf vm removevolume) or add it to the VM's spec \
                 and restart the VM before migrating",
                v.name
            )));
        }
        let Some(claim) = v.claim_name() else { continue };
        let Some(vol) = sheaf_client::claims::volume_for_claim(api, &ns, claim).await? else {
            return Ok(Some(format!("the Volume of claim {ns}/{claim} does not exist")));
        };
        if vol.spec.frontend.as_deref() == Some("vhost-user") {
            return Ok(Some(format!(
                "volume {:?} is served over vhost-user-blk, which cannot be migrated yet; \
                 use a volume with the default NBD frontend",
                v.name
            )));
        }
    }
    Ok(None)
}

impl Migrations {
    /// Writes the VMIM's status: `phase`, the VMI's migrationState, and a
    /// condition saying why when it failed or waits.
    async fn set_status(
        &self,
        m: &VirtualMachineInstanceMigration,
        phase: &str,
        state: Option<&Value>,
        why: Option<(&str, &str)>,
    ) -> Result<(), ClientError> {
        let mut status = m.status.clone().unwrap_or_default();
        let changed_phase = status.phase.as_deref() != Some(phase);
        if changed_phase {
            status.phase = Some(phase.to_string());
            status.phase_transition_timestamps.push(sheaf_types::kubevirt::PhaseTransitionTimestamp {
                phase: Some(phase.to_string()),
                phase_transition_timestamp: Some(now()),
            });
        }
        if let Some(s) = state {
            status.migration_state = Some(s.clone());
        }
        if phase != PENDING {
            // It no longer waits.
            status.conditions.retain(|c| c.reason.as_deref() != Some("MigrationInProgress"));
        }
        if let Some((reason, message)) = why {
            set_condition(
                &mut status.conditions,
                Condition {
                    type_: if phase == FAILED { "Failed".into() } else { "Ready".into() },
                    status: if phase == FAILED { "True".into() } else { "False".into() },
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                    ..Default::default()
                },
                now(),
            );
        }
        if Some(&status) == m.status.as_ref() {
            return Ok(());
        }
        let ns = m.metadata.namespace.as_deref();
        let name = m.metadata.name.as_deref().unwrap_or_default();
        let typed = Typed::<VirtualMachineInstanceMigration>::new(self.api.as_ref());
        typed.merge_patch(ns, name, json!({"status": status}), true).await?;
        if changed_phase {
            let kind = if phase == FAILED { EventType::Warning } else { EventType::Normal };
            let message = why.map(|(_, m)| m.to_string()).unwrap_or_else(|| format!("migration {phase}"));
            self.events.record(&reference_to(m), kind, &format!("Migration{phase}"), message).await;
        }
        Ok(())
    }

    /// Fails the migration recorded in the VMI (so both agents drop it).
    async fn fail_in_vmi(&self, vmi: &VirtualMachineInstance, reason: &str) -> Result<(), ClientError> {
        let ns = vmi.metadata.namespace.as_deref();
        let name = vmi.metadata.name.as_deref().unwrap_or_default();
        let patch = json!({
            "metadata": {"uid": vmi.metadata.uid},
            "status": {"migrationState": migration_state::failure(reason, now())},
        });
        Typed::<VirtualMachineInstance>::new(self.api.as_ref()).merge_patch(ns, name, patch, true).await.map(|_| ())
    }

    /// Chooses the target node, or says why there is none.
    async fn target_for(
        &self,
        m: &VirtualMachineInstanceMigration,
        vmi: &VirtualMachineInstance,
        source: &str,
    ) -> Result<Result<String, String>, ClientError> {
        let nodes: Vec<Node> = Typed::<Node>::new(self.api.as_ref())
            .list(None, &Selectors::default())
            .await?
            .into_iter()
            .filter(|n| n.metadata.name.as_deref() != Some(source))
            .collect();
        if nodes.is_empty() {
            return Ok(Err(format!("there is no node besides {source} to migrate to")));
        }
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref()).list(None, &Selectors::default()).await?;
        let used: HashMap<String, scheduler::Request> = scheduler::usage(&vmis, &[], "");
        let mut wanted = vmi.clone();
        for (k, v) in &m.spec.added_node_selector {
            wanted.spec.node_selector.insert(k.clone(), v.clone());
        }
        // Its VM (anti-)affinity against the other VMIs (not itself, on the
        // source); namespace selectors in those terms match no namespace.
        let peers = scheduler::peers(&vmis, &[], vmi.metadata.uid.as_deref().unwrap_or_default());
        let namespaces = scheduler::NamespaceLabels::new();
        let ctx = scheduler::Context { used: &used, peers: Some(&peers), namespaces: &namespaces, replicas: &[] };
        Ok(scheduler::choose_in(&nodes, &ctx, &wanted))
    }
}

#[async_trait::async_trait]
impl Reconciler for Migrations {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let typed = Typed::<VirtualMachineInstanceMigration>::new(self.api.as_ref());
        let Some(m) = typed.get(key.namespace(), &key.name).await? else { return Ok(Action::Done) };
        if matches!(phase_of(&m), SUCCEEDED | FAILED) {
            return Ok(Action::Done);
        }
        let uid = m.metadata.uid.clone().unwrap_or_default();
        let ns = key.namespace().unwrap_or("default");
        let vmi_name = m.spec.vmi_name.clone().unwrap_or_default();
        let vmis = Typed::<VirtualMachineInstance>::new(self.api.as_ref());
        let Some(vmi) = vmis.get(Some(ns), &vmi_name).await? else {
            let message = format!("VirtualMachineInstance {ns}/{vmi_name} does not exist");
            self.set_status(&m, FAILED, None, Some(("VMINotFound", &message))).await?;
            return Ok(Action::Done);
        };
        let state = vmi.status.as_ref().and_then(|s| s.migration_state.clone()).unwrap_or(Value::Null);
        let ours = migration_state::text(&state, "migrationUid") == Some(uid.as_str());
        if ours {
            if migration_state::failed(&state) {
                let why = migration_state::text(&state, "failureReason").unwrap_or("the migration failed").to_string();
                self.set_status(&m, FAILED, Some(&state), Some(("MigrationFailed", &why))).await?;
                return Ok(Action::Done);
            }
            if migration_state::completed(&state) {
                self.set_status(&m, SUCCEEDED, Some(&state), None).await?;
                return Ok(Action::Done);
            }
            let age = |k: &str| time_at(&state, k).map(|t| (Utc::now() - t).to_std().unwrap_or_default());
            if migration_state::text(&state, "startTimestamp").is_some() {
                if age("startTimestamp").is_some_and(|a| a > RUN_TIMEOUT) {
                    self.fail_in_vmi(&vmi, "the migration did not complete within 30 minutes").await?;
                    return Ok(Action::RequeueAfter(Duration::from_secs(1)));
                }
                self.set_status(&m, RUNNING, Some(&state), None).await?;
                return Ok(Action::RequeueAfter(Duration::from_secs(30)));
            }
            if migration_state::text(&state, "targetNodeAddress").is_some() {
                self.set_status(&m, TARGET_READY, Some(&state), None).await?;
                return Ok(Action::RequeueAfter(Duration::from_secs(30)));
            }
            if age("targetNodeChosenTimestamp").is_some_and(|a| a > TARGET_TIMEOUT) {
                let target = migration_state::text(&state, "targetNode").unwrap_or("?");
                self.fail_in_vmi(&vmi, &format!("the target node {target} did not get ready within 5 minutes")).await?;
                return Ok(Action::RequeueAfter(Duration::from_secs(1)));
            }
            self.set_status(&m, SCHEDULED, Some(&state), None).await?;
            return Ok(Action::RequeueAfter(Duration::from_secs(30)));
        }
        if !matches!(phase_of(&m), "" | PENDING) {
            // Started, but the VMI carries another migration now: the
            // outcome of this one cannot be known any more.
            let message = format!("the VMI {ns}/{vmi_name} no longer carries this migration's state");
            self.set_status(&m, FAILED, None, Some(("MigrationLost", &message))).await?;
            return Ok(Action::Done);
        }
        // Not started yet. Another one goes first while it runs, and until
        // its migration object has recorded how it ended.
        if let Some(other) = migration_state::text(&state, "migrationUid") {
            let recorded = typed
                .list(Some(ns), &Selectors::default())
                .await?
                .into_iter()
                .find(|o| o.metadata.uid.as_deref() == Some(other))
                .is_none_or(|o| matches!(phase_of(&o), SUCCEEDED | FAILED));
            if !migration_state::ended(&state) || !recorded {
                let message = format!("another migration of {ns}/{vmi_name} is in progress; this one waits");
                self.set_status(&m, PENDING, None, Some(("MigrationInProgress", &message))).await?;
                return Ok(Action::RequeueAfter(Duration::from_secs(if migration_state::ended(&state) {
                    1
                } else {
                    5
                })));
            }
        }
        let vmi_phase = vmi.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
        let source = vmi.status.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        if vmi_phase != "Running" || source.is_empty() || vmi.metadata.deletion_timestamp.is_some() {
            let message = format!(
                "VirtualMachineInstance {ns}/{vmi_name} is not running (phase {vmi_phase:?}); \
                 only a running VM can be live-migrated"
            );
            self.set_status(&m, FAILED, None, Some(("VMINotRunning", &message))).await?;
            return Ok(Action::Done);
        }
        if let Some(why) = not_migratable(self.api.as_ref(), &vmi).await? {
            let message = format!("VirtualMachineInstance {ns}/{vmi_name} is not live-migratable: {why}");
            self.set_status(&m, FAILED, None, Some(("NotMigratable", &message))).await?;
            return Ok(Action::Done);
        }
        let target = match self.target_for(&m, &vmi, &source).await? {
            Ok(t) => t,
            Err(why) => {
                let message = format!("no node can take {ns}/{vmi_name}: {why}");
                self.set_status(&m, FAILED, None, Some(("NoTargetNode", &message))).await?;
                return Ok(Action::Done);
            }
        };
        let state = json!({
            "migrationUid": uid,
            "sourceNode": source,
            "targetNode": target,
            "mode": "PreCopy",
            "targetNodeChosenTimestamp": now(),
        });
        // Replaces a finished migration's state whole (its other keys set
        // to null); pinned to the version read, so that of two starts one
        // loses and tries again.
        let mut patch_state = state.clone();
        if let Some(old) = vmi.status.as_ref().and_then(|s| s.migration_state.as_ref()).and_then(Value::as_object) {
            for k in old.keys().filter(|k| state.get(k.as_str()).is_none()) {
                patch_state[k] = Value::Null;
            }
        }
        let patch = json!({
            "metadata": {"resourceVersion": vmi.metadata.resource_version, "uid": vmi.metadata.uid},
            "status": {"migrationState": patch_state},
        });
        vmis.merge_patch(Some(ns), &vmi_name, patch, true).await?;
        tracing::info!(%ns, vmi = %vmi_name, %source, %target, "migration scheduled");
        self.set_status(&m, SCHEDULED, Some(&state), None).await?;
        Ok(Action::RequeueAfter(Duration::from_secs(30)))
    }
}
