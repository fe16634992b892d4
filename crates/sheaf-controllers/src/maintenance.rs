//! Maintenance mode, as Harvester's: the annotation
//! `harvesterhci.io/maintain-status` on a Node (`sheaf node maintain`).
//!
//! ```text
//!  annotation "running" ─▶ cordon (spec.unschedulable), then every pass:
//!     each unfinished VMI on the node:
//!       migratable, evictionStrategy not None ─▶ a VirtualMachineInstanceMigration
//!                                                 (at most MAX_PARALLEL at once)
//!       else, or 3 of its migrations failed:
//!         evictionStrategy LiveMigrate ─▶ blocked: the progress says why
//!         otherwise ─▶ stopped: the VM's runStrategy becomes Halted (the old
//!                      one is kept in an annotation), a VMI without VM deleted
//!     none left ─▶ annotation "completed"
//!  annotation removed (`sheaf node unmaintain`) ─▶ uncordon, and the VMs it
//!     stopped get their runStrategy back (so they start again)
//! ```
//!
//! Progress is in the annotation `sheaf.io/maintenance-progress` and in
//! Events on the Node.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sheaf_client::{Api, ClientError, Gvr, Selectors, Typed};
use sheaf_types::core::Node;
use sheaf_types::kubevirt::{
    migration_state, EvictionStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
};

use crate::events::{reference_to, EventRecorder, EventType};
use crate::runtime::{Action, Change, Controller, ObjectKey, Reconciler};

/// Harvester's maintenance annotation on a Node: `running`, `completed`.
pub const MAINTAIN_STATUS: &str = "harvesterhci.io/maintain-status";
/// What maintenance is doing, in words.
pub const PROGRESS: &str = "sheaf.io/maintenance-progress";
/// On a VM maintenance stopped: `NODE:PREVIOUS-RUN-STRATEGY`.
pub const STOPPED_FOR: &str = "sheaf.io/stopped-for-maintenance";
/// On the migrations maintenance made: the node.
pub const MIGRATION_LABEL: &str = "sheaf.io/maintenance-node";
/// Migrations off one node at the same time (KubeVirt's
/// parallelOutboundMigrationsPerNode).
pub const MAX_PARALLEL: usize = 2;
/// `source.component` of the Events.
pub const COMPONENT: &str = "sheaf-maintenance";
/// Failed migrations of one VM before maintenance stops it (or, with
/// `evictionStrategy: LiveMigrate`, reports it blocked).
pub const MIGRATION_ATTEMPTS: usize = 3;

pub struct Maintenance {
    api: Arc<dyn Api>,
    events: EventRecorder,
}

/// Runs the controller until the future is dropped.
pub async fn run(api: Arc<dyn Api>) {
    let reconciler = Maintenance { api: api.clone(), events: EventRecorder::new(api.clone(), COMPONENT) };
    Controller::new("maintenance", api, Gvr::of::<Node>())
        // A VMI leaving a node moves its maintenance along.
        .watches(Gvr::of::<VirtualMachineInstance>(), |_: Change, vmi: &Value, _| {
            vmi.pointer("/status/nodeName")
                .and_then(Value::as_str)
                .map(|n| vec![ObjectKey::new(None, n)])
                .unwrap_or_default()
        })
        .resync_every(Duration::from_secs(30))
        .run(Arc::new(reconciler))
        .await
}

fn finished(v: &VirtualMachineInstance) -> bool {
    matches!(v.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn migrating_from(v: &VirtualMachineInstance, node: &str) -> bool {
    let Some(s) = v.status.as_ref().and_then(|s| s.migration_state.as_ref()) else { return false };
    !migration_state::ended(s) && migration_state::text(s, "sourceNode") == Some(node)
}

fn phase_of(m: &VirtualMachineInstanceMigration) -> &str {
    m.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

/// What maintenance does with one VMI on this pass.
enum Step {
    /// Moving (a migration of it runs or was just made).
    Moving,
    /// Waiting for a slot among [`MAX_PARALLEL`] migrations.
    Queued,
    /// Cannot leave: why.
    Blocked(String),
    /// Being stopped.
    Stopping,
}

impl Maintenance {
    async fn annotate_node(&self, node: &Node, annotations: Value, spec: Option<Value>) -> Result<(), ClientError> {
        let mut patch = json!({"metadata": {"annotations": annotations}});
        if let Some(spec) = spec {
            patch["spec"] = spec;
        }
        let name = node.metadata.name.as_deref().unwrap_or_default();
        Typed::<Node>::new(self.api.as_ref()).merge_patch(None, name, patch, false).await.map(|_| ())
    }

    /// Stops `vmi` for maintenance of `node`: its VM Halted (the strategy
    /// it had kept), or the VMI deleted when no VM owns it.
    async fn stop(&self, vmi: &VirtualMachineInstance, node: &str, why: &str) -> Result<(), ClientError> {
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let owner = vmi.metadata.owner_references.iter().find(|o| o.kind == "VirtualMachine").map(|o| o.name.clone());
        let Some(vm_name) = owner else {
            Typed::<VirtualMachineInstance>::new(self.api.as_ref()).delete(Some(&ns), &name).await?;
            return Ok(());
        };
        let vms = Typed::<VirtualMachine>::new(self.api.as_ref());
        let Some(vm) = vms.get(Some(&ns), &vm_name).await? else { return Ok(()) };
        if vm.metadata.annotations.contains_key(STOPPED_FOR) {
            return Ok(());
        }
        let previous = serde_json::to_value(vm.spec.run_strategy)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| if vm.spec.running == Some(true) { "Always".into() } else { "Halted".into() });
        let patch = json!({
            "metadata": {"annotations": {STOPPED_FOR: format!("{node}:{previous}")}, "resourceVersion": vm.metadata.resource_version},
            "spec": {"runStrategy": "Halted", "running": null},
        });
        vms.merge_patch(Some(&ns), &vm_name, patch, false).await?;
        self.events
            .record(
                &reference_to(&vm),
                EventType::Normal,
                "StoppedForMaintenance",
                format!("stopped for the maintenance of node {node}: {why}"),
            )
            .await;
        Ok(())
    }

    /// Gives the VMs maintenance of `node` stopped their run strategy back.
    async fn restart_stopped(&self, node: &str) -> Result<usize, ClientError> {
        let vms = Typed::<VirtualMachine>::new(self.api.as_ref());
        let mut n = 0;
        for vm in vms.list(None, &Selectors::default()).await? {
            let Some(mark) = vm.metadata.annotations.get(STOPPED_FOR) else { continue };
            let Some((from, previous)) = mark.split_once(':') else { continue };
            if from != node {
                continue;
            }
            let ns = vm.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            let name = vm.metadata.name.clone().unwrap_or_default();
            let patch = json!({
                "metadata": {"annotations": {STOPPED_FOR: null}, "resourceVersion": vm.metadata.resource_version},
                "spec": {"runStrategy": previous},
            });
            vms.merge_patch(Some(&ns), &name, patch, false).await?;
            n += 1;
        }
        Ok(n)
    }

    async fn step(
        &self,
        vmi: &VirtualMachineInstance,
        node: &str,
        migrations: &[VirtualMachineInstanceMigration],
        running: &mut usize,
    ) -> Result<Step, ClientError> {
        if migrating_from(vmi, node) {
            return Ok(Step::Moving);
        }
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let strategy = vmi.spec.eviction_strategy;
        let ours: Vec<&VirtualMachineInstanceMigration> = migrations
            .iter()
            .filter(|m| {
                m.metadata.namespace.as_deref() == Some(ns.as_str())
                    && m.spec.vmi_name.as_deref() == Some(name.as_str())
            })
            .collect();
        if ours.iter().any(|m| !matches!(phase_of(m), "Succeeded" | "Failed")) {
            return Ok(Step::Moving);
        }
        // A migration may fail for a passing reason (a busy target): it is
        // tried again, up to MIGRATION_ATTEMPTS times, before giving up.
        let failures: Vec<String> = ours
            .iter()
            .filter(|m| phase_of(m) == "Failed")
            .map(|m| {
                m.status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find_map(|c| c.message.clone()))
                    .unwrap_or_else(|| "its migration failed".into())
            })
            .collect();
        let failed = (failures.len() >= MIGRATION_ATTEMPTS).then(|| {
            format!("{} migrations failed, the last: {}", failures.len(), failures.last().cloned().unwrap_or_default())
        });
        let why_not = match failed {
            Some(f) => Some(f),
            None if strategy == Some(EvictionStrategy::None) => Some("its evictionStrategy is None".into()),
            None => crate::migration::not_migratable(self.api.as_ref(), vmi).await?,
        };
        let Some(why) = why_not else {
            if *running >= MAX_PARALLEL {
                return Ok(Step::Queued);
            }
            *running += 1;
            let body = json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                "metadata": {"generateName": format!("{name}-maintenance-"), "namespace": ns,
                    "labels": {MIGRATION_LABEL: node}},
                "spec": {"vmiName": name},
            });
            self.api.create(Gvr::of::<VirtualMachineInstanceMigration>(), Some(&ns), body).await?;
            return Ok(Step::Moving);
        };
        if strategy == Some(EvictionStrategy::LiveMigrate) {
            return Ok(Step::Blocked(format!(
                "{ns}/{name} cannot be live-migrated ({why}) and its evictionStrategy is LiveMigrate: \
                 stop it, or set evictionStrategy to LiveMigrateIfPossible"
            )));
        }
        self.stop(vmi, node, &why).await?;
        Ok(Step::Stopping)
    }
}

#[async_trait::async_trait]
impl Reconciler for Maintenance {
    type Error = ClientError;

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ClientError> {
        let Some(node) = Typed::<Node>::new(self.api.as_ref()).get(None, &key.name).await? else {
            return Ok(Action::Done);
        };
        let status = node.metadata.annotations.get(MAINTAIN_STATUS).map(String::as_str);
        let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
        let Some(status) = status.filter(|s| matches!(*s, "running" | "completed")) else {
            if node.metadata.annotations.contains_key(PROGRESS) {
                // Maintenance ended: back in service.
                let restarted = self.restart_stopped(&key.name).await?;
                self.annotate_node(&node, json!({PROGRESS: null}), Some(json!({"unschedulable": null}))).await?;
                let message = format!("maintenance ended; the node takes VMs again ({restarted} VMs started again)");
                self.events.record(&reference_to(&node), EventType::Normal, "MaintenanceEnded", message).await;
            }
            return Ok(Action::Done);
        };
        if !cordoned {
            self.annotate_node(&node, json!({}), Some(json!({"unschedulable": true}))).await?;
            self.events
                .record(&reference_to(&node), EventType::Normal, "MaintenanceStarted", "cordoned; moving its VMs away")
                .await;
        }
        let sel = Selectors { labels: String::new(), fields: format!("status.nodeName={}", key.name) };
        let vmis: Vec<VirtualMachineInstance> = Typed::<VirtualMachineInstance>::new(self.api.as_ref())
            .list(None, &sel)
            .await?
            .into_iter()
            .filter(|v| !finished(v))
            .collect();
        let migrations = Typed::<VirtualMachineInstanceMigration>::new(self.api.as_ref())
            .list(None, &Selectors { labels: format!("{MIGRATION_LABEL}={}", key.name), fields: String::new() })
            .await?;
        let mut running = migrations.iter().filter(|m| !matches!(phase_of(m), "Succeeded" | "Failed")).count();
        let (mut moving, mut queued, mut stopping, mut blocked) = (0, 0, 0, Vec::new());
        for vmi in &vmis {
            match self.step(vmi, &key.name, &migrations, &mut running).await? {
                Step::Moving => moving += 1,
                Step::Queued => queued += 1,
                Step::Stopping => stopping += 1,
                Step::Blocked(why) => blocked.push(why),
            }
        }
        let (new_status, progress) = if vmis.is_empty() {
            ("completed", "every VM has left the node".to_string())
        } else {
            let mut parts = vec![format!("{} VMs left on the node", vmis.len())];
            for (n, what) in [(moving, "migrating"), (queued, "waiting to migrate"), (stopping, "stopping")] {
                if n > 0 {
                    parts.push(format!("{n} {what}"));
                }
            }
            parts.extend(blocked.iter().map(|b| format!("blocked: {b}")));
            ("running", parts.join("; "))
        };
        let old_progress = node.metadata.annotations.get(PROGRESS).map(String::as_str);
        if status != new_status || old_progress != Some(progress.as_str()) {
            self.annotate_node(&node, json!({MAINTAIN_STATUS: new_status, PROGRESS: progress}), None).await?;
            if new_status == "completed" && status != "completed" {
                self.events
                    .record(&reference_to(&node), EventType::Normal, "MaintenanceCompleted", progress.clone())
                    .await;
            }
            for b in blocked.iter().filter(|b| !old_progress.is_some_and(|p| p.contains(b.as_str()))) {
                self.events.record(&reference_to(&node), EventType::Warning, "MaintenanceBlocked", b.clone()).await;
            }
        }
        Ok(if vmis.is_empty() { Action::Done } else { Action::RequeueAfter(Duration::from_secs(5)) })
    }
}
